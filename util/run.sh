#!/bin/sh
# "make run": nginx with the freshly built module and the demo page on
# http://127.0.0.1:8080/ in the foreground; Ctrl-C stops it.

set -e

top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
run=$build/run
port=${PORT:-8080}

nginx=/usr/sbin/nginx
if [ "$(cat "$build/full" 2>/dev/null)" = yes ]; then
    nginx=$build/nginx/objs/nginx
fi

mkdir -p "$run/logs" "$run/tmp" "$run/html"
cp "$top/demo/index.html" "$run/html/index.html"

cat > "$run/nginx.conf" <<END
load_module $build/ngx_http_civchat_module.so;

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

    civchat_zone users 16m state=$run/civchat.state;

    server {
        listen 127.0.0.1:$port;

        location / {
            root $run/html;
        }

        location /civchat/ {
            civchat zone=users;
            civchat_api_key DEMOKEY;
            civchat_store file=$run/events.ndjson flush=1s;
            civchat_unified_identification on;
            civchat_authorize_by_email on;
            civchat_attribute plan fixed;
        }
    }
}
END

echo "civchat demo: http://127.0.0.1:$port/   (Ctrl-C stops nginx)"
echo "events go to: $run/events.ndjson   (tail -f it in another terminal)"
echo "profiles are saved in: $run/civchat.state"

exec "$nginx" -p "$run" -c "$run/nginx.conf"
