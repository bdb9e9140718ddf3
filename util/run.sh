#!/bin/sh
# "make run": nginx with the freshly built module and the demo page on
# http://127.0.0.1:8080/ in the foreground; Ctrl-C stops it.
#
#   PORT    the demo's port (default 8080)
#   RUN     its directory (default build/run)
#   STORE=clickhouse   events to a private ClickHouse instead of a file
#   PROFILES=redis     profiles on a private Redis Cluster (three masters,
#                      three replicas on REDIS_PORT .. +5, default 17000)
#                      instead of the zone's state file
#   MODULE, NGINX   the module and nginx (t/demo.t runs the suite's)

set -e

top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
run=${RUN:-$build/run}
port=${PORT:-8080}
module=${MODULE:-$build/ngx_http_civchat_module.so}

nginx=/usr/sbin/nginx
if [ "$(cat "$build/full" 2>/dev/null)" = yes ]; then
    nginx=$build/nginx/objs/nginx
fi
nginx=${NGINX:-$nginx}

mkdir -p "$run/logs" "$run/tmp" "$run/html" "$run/state"
cp "$top/demo/index.html" "$run/html/index.html"

# the workers (nobody when started as root) save the zone here
chmod 0777 "$run/state"

store="civchat_store file=$run/events.ndjson flush=1s;"
where="$run/events.ndjson   (tail -f it in another terminal)"

if [ "${STORE:-file}" = clickhouse ]; then
    # a private ClickHouse for the demo, stopped with nginx
    ch=$run/clickhouse
    sh "$top/util/clickhouse.sh" start "$ch" 18123 19000
    trap 'sh "$top/util/clickhouse.sh" stop "$ch"' EXIT INT TERM

    q='INSERT%20INTO%20civchat.events%20FORMAT%20JSONEachRow'
    store="civchat_store http://127.0.0.1:18123/?query=$q
                          flush=1s spool=$run/spool;"
    where="ClickHouse on 127.0.0.1:18123, table civchat.events
          clickhouse-client --port 19000 -q \"SELECT type, url FROM civchat.events FINAL\""
fi

zone="civchat_zone users 16m state=$run/state/civchat.state;"
profiles="in: $run/state/civchat.state"

if [ "${PROFILES:-zone}" = redis ]; then
    # a private Redis Cluster for the demo, stopped with nginx (its data
    # stays in the directory for the next run)
    rp=${REDIS_PORT:-17000}
    rd=$run/redis
    sh "$top/util/redis-cluster.sh" start "$rd" "$rp"
    trap 'sh "$top/util/redis-cluster.sh" stop "$rd"' EXIT INT TERM

    zone="civchat_redis demo 127.0.0.1:$rp 127.0.0.1:$((rp + 1))
                       127.0.0.1:$((rp + 2));
    civchat_zone users 16m redis=demo;"
    profiles="on Redis Cluster 127.0.0.1:$rp..$((rp + 5))
          redis-cli -c -p $rp --scan --pattern 'civchat:users:*'"
fi

cat > "$run/nginx.conf" <<END
load_module $module;

daemon off;
worker_processes 2;
pid $run/nginx.pid;
error_log stderr notice;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    access_log off;

    client_body_temp_path $run/tmp/body;
    proxy_temp_path $run/tmp/proxy;
    fastcgi_temp_path $run/tmp/fastcgi;
    uwsgi_temp_path $run/tmp/uwsgi;
    scgi_temp_path $run/tmp/scgi;

    $zone

    server {
        listen 127.0.0.1:$port;

        location / {
            root $run/html;
        }

        location = /favicon.ico {
            return 204;
        }

        location /civchat/ {
            civchat zone=users;
            civchat_api_key DEMOKEY;
            $store
            civchat_unified_identification on;
            civchat_authorize_by_email on;
            civchat_attribute plan fixed;

            # the demo is for people and for screenshots: a headless
            # browser (HeadlessChrome) is on the bot list and would be
            # answered without a key or a profile
            civchat_bot_filter off;
        }
    }
}
END

echo "civchat demo: http://127.0.0.1:$port/   (Ctrl-C stops nginx)"
echo "events go to: $where"
echo "profiles are saved $profiles"

"$nginx" -p "$run" -c "$run/nginx.conf"
