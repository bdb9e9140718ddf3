#!/bin/sh
# civchat benchmark: visitors on the worker that runs a large import.
# Measures and prints; asserts nothing.  See bench/README.md ("Visitors
# during an import").
#
#   sh bench/import.sh       (make bench runs it, after make)
#
# One nginx with the module and WORKERS (1) worker, so that every
# visitor is on the worker that imports.  wrk drives page_hit as a
# returning visitor over CONNECTIONS (16) keep-alive connections, each
# waiting DELAY ms between its requests (a steady load, not a flood):
# first BASELINE seconds alone, then while curl posts a CSV import of
# IMPORT_MB (100) MB to the server API (from the start of the upload to
# the end of the answer).  Prints the visitors' requests, p50, p99 and
# max latency both ways, the import's time and rows, and the worker's
# anonymous memory (RssAnon) before and at its peak during the import.
#
# Environment: IMPORT_MB (100), CONNECTIONS (16), THREADS (2), DELAY
# (10), BASELINE (10 s), WORKERS (1), ZONE (1024m), PROFILES (300000: the
# rows' distinct user_ids; the first pass creates them, the later ones
# change their plan), STORE (file, or off), NGINX, MODULE, KEEP=1.
# Builds nothing: run "make" first.

set -euf

REPO=$(cd "$(dirname "$0")/.." && pwd)

IMPORT_MB=${IMPORT_MB:-100}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
DELAY=${DELAY:-10}
BASELINE=${BASELINE:-10}
WORKERS=${WORKERS:-1}
ZONE=${ZONE:-1024m}
PROFILES=${PROFILES:-300000}
STORE=${STORE:-file}
MODULE=${MODULE:-$REPO/build/ngx_http_civchat_module.so}
TOKEN=bench-import-token-0123456789

if [ -z "${NGINX:-}" ]; then
    NGINX=/usr/sbin/nginx
    if [ "$(cat "$REPO/build/full" 2>/dev/null)" = yes ]; then
        NGINX=$REPO/build/nginx/objs/nginx
    fi
fi

die() { echo "bench: $*" >&2; exit 1; }

case $MODULE in /*) ;; *) MODULE=$(pwd)/$MODULE ;; esac
case $NGINX in /*) ;; *) NGINX=$(pwd)/$NGINX ;; esac

[ -f "$MODULE" ] || die "no module at $MODULE (run make first)"
[ -x "$NGINX" ] || die "no nginx at $NGINX"
command -v wrk >/dev/null || die "no wrk (make deps)"
command -v curl >/dev/null || die "no curl (make deps)"

W=$(mktemp -d "${TMPDIR:-/tmp}/civchat-import-XXXXXX")
chmod 755 "$W"
WRK_PID=

cleanup() {
    if [ -n "$WRK_PID" ]; then
        kill -INT "$WRK_PID" 2>/dev/null || true
    fi
    if [ -f "$W/nginx.pid" ]; then
        kill -TERM "$(cat "$W/nginx.pid")" 2>/dev/null || true
        i=0
        while [ -f "$W/nginx.pid" ] && [ $i -lt 100 ]; do
            sleep 0.05; i=$((i + 1))
        done
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "bench: kept $W"
    else
        rm -rf "$W"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(perl -MIO::Socket::INET -e '
    print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1",
        LocalPort => 0)->sockport, "\n";')

user=
[ "$(id -u)" = 0 ] && user="user root;"

if [ "$STORE" = off ]; then
    store="civchat_store off;"
else
    store="civchat_store file=$W/events.ndjson flush=1s;"
fi

cat > "$W/nginx.conf" <<EOF
load_module $MODULE;
pid $W/nginx.pid;
error_log $W/error.log notice;
worker_processes $WORKERS;
$user

events {
    worker_connections  1024;
}

http {
    access_log  off;
    keepalive_requests  1000000;
    client_body_temp_path  $W/client_body_temp;

    civchat_zone  users  $ZONE;

    server {
        listen       127.0.0.1:$PORT;
        server_name  shop.example.org;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  BENCH;
            $store
        }

        location /api/ {
            civchat_api         zone=users;
            civchat_api_token   $TOKEN;
            $store
            civchat_body_limit  200m;
            client_max_body_size  200m;
        }
    }
}
EOF

"$NGINX" -p "$W/" -c "$W/nginx.conf" -e "$W/error.log" \
    || { cat "$W/error.log"; die "nginx did not start"; }

i=0
until curl -s -o /dev/null "http://127.0.0.1:$PORT/"; do
    i=$((i + 1)); [ $i -lt 100 ] || die "nginx does not answer"
    sleep 0.05
done

MASTER=$(cat "$W/nginx.pid")
WORKER=$(pgrep -P "$MASTER" | head -n 1)

###########################################################################
# the import: user_id, email, name, plan, city; PROFILES distinct users,
# the plan changes with each pass over them (an event a row)

echo "bench: writing a $IMPORT_MB MB CSV" >&2

perl -e '
    my ($mb, $n) = @ARGV;
    my @cities = qw/Warszawa Kraków Wrocław Poznań Gdańsk Łódź Szczecin/;
    my $out = "user_id,email,name,plan,city\n";
    my ($size, $row) = (length $out, 0);
    print $out;
    while ($size < $mb * 1e6) {
        my $u = $row % $n;
        my $pass = int($row / $n);
        $out = sprintf("%d,user%d\@example.org,\"User %d, Jr.\",plan%d,%s\n",
            100000000 + $u, $u, $u, $pass, $cities[$u % 7]);
        print $out;
        $size += length $out;
        $row++;
    }
    print STDERR "$row\n";
' "$IMPORT_MB" "$PROFILES" > "$W/import.csv" 2> "$W/rows"

ROWS=$(cat "$W/rows")

###########################################################################
# the visitors: page_hit of one returning visitor per connection

cookie=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' \
    -d '{"apiKey":"BENCH","url":"https://shop.example.org/"}' \
    "http://127.0.0.1:$PORT/civchat/init" \
    | sed -n 's/^[Ss]et-[Cc]ookie: *\(__ca__chat=[^;]*\).*/\1/p' | tr -d '\r')

[ -n "$cookie" ] || die "no visitor cookie from init"

cat > "$W/visit.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"apiKey":"BENCH","url":"https://shop.example.org/products/1","title":"Product"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Cookie"] = "$cookie"

function delay()
    return $DELAY
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK requests=%d secs=%.3f errors=%d "
        .. "non2xx=%d p50=%.3f p99=%.3f max=%.3f\n", summary.requests,
        summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
        e.status, latency:percentile(50) / 1000,
        latency:percentile(99) / 1000, latency.max / 1000))
end
EOF

URL=http://127.0.0.1:$PORT/civchat/page_hit

anon() {
    awk '/^RssAnon:/ { print $2 }' "/proc/$WORKER/status" 2>/dev/null \
        || echo 0
}

echo "bench: visitors alone for ${BASELINE}s" >&2
# a request stalled by the import must count in the latency, not be
# dropped as a timeout (wrk's default is 2 s)
wrk -t "$THREADS" -c "$CONNECTIONS" -d "${BASELINE}s" --timeout 300s \
    -s "$W/visit.lua" "$URL" > "$W/alone.txt"

echo "bench: visitors while $ROWS rows are imported" >&2
anon0=$(anon)

# until the import's answer has ended (SIGINT: wrk stops and reports)
wrk -t "$THREADS" -c "$CONNECTIONS" -d 3600s --timeout 300s \
    -s "$W/visit.lua" "$URL" > "$W/during.txt" &
WRK_PID=$!
sleep 1

t0=$(date +%s.%N)
curl -s -o "$W/answer.json" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: text/csv' --data-binary "@$W/import.csv" \
    "http://127.0.0.1:$PORT/api/import" &
CURL_PID=$!

peak=$anon0
while kill -0 "$CURL_PID" 2>/dev/null; do
    a=$(anon)
    [ "$a" -gt "$peak" ] && peak=$a
    sleep 0.1
done
wait "$CURL_PID" || die "the import failed"
t1=$(date +%s.%N)

sleep 1
kill -INT "$WRK_PID"
wait "$WRK_PID" || true
WRK_PID=

###########################################################################

# the counts end the answer (they began it before the import streamed)
counts=$({ head -c 200 "$W/answer.json"; echo; tail -c 200 "$W/answer.json"; } \
    | sed -n 's/.*"created":\([0-9]*\),"updated":\([0-9]*\),"errors":\([0-9]*\).*/created \1, updated \2, errors \3/p' \
    | head -n 1)

line() {
    sed -n 's/^WRK requests=\([0-9]*\) secs=\([0-9.]*\) errors=\([0-9]*\) non2xx=\([0-9]*\) p50=\([0-9.]*\) p99=\([0-9.]*\) max=\([0-9.]*\)$/\1 \2 \3 \4 \5 \6 \7/p' "$1"
}

echo
echo "civchat import bench: $(date -u +%Y-%m-%d), $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg) at the end"
echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), $WORKERS worker(s), store $STORE; $CONNECTIONS visitor connections, a page_hit every ${DELAY} ms each"
echo

awk -v mb="$IMPORT_MB" -v rows="$ROWS" -v t0="$t0" -v t1="$t1" \
    -v counts="$counts" -v a0="$anon0" -v ap="$peak" 'BEGIN {
    s = t1 - t0
    printf "import:  %d MB, %d rows in %.1f s (upload included): %.0f rows/s; %s\n",
        mb, rows, s, rows / s, (counts == "" ? "no answer" : counts)
    printf "memory:  worker RssAnon %.1f MB before, %.1f MB at its peak during the import (+%.1f MB)\n",
        a0 / 1024, ap / 1024, (ap - a0) / 1024
}'

echo
printf '%-16s %9s %8s %8s %9s %9s %9s\n' visitors requests errors non2xx \
    'p50 ms' 'p99 ms' 'max ms'
for f in alone during; do
    line "$W/$f.txt" | while read -r n secs e s p50 p99 max; do
        printf '%-16s %9s %8s %8s %9s %9s %9s\n' \
            "$([ $f = alone ] && echo 'no import' || echo 'during import')" \
            "$n" "$e" "$s" "$p50" "$p99" "$max"
    done
done
