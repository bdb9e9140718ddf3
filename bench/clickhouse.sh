#!/bin/sh
# civchat benchmark: page hits through nginx and the module into a local
# ClickHouse, against ClickHouse's own ingest rate for the same NDJSON.
# Measures and prints; asserts nothing.  See bench/README.md.
#
#   sh bench/clickhouse.sh          (or: make bench)
#
# Environment: DURATION (seconds of wrk, default 10), CONNECTIONS (64),
# THREADS (2), WORKERS (nginx workers, 2), BATCH (events a batch, 1000),
# FLUSH (1s), STREAMS (parallel curl streams for the direct insert,
# default WORKERS), NGINX (binary), MODULE (.so), KEEP=1 keeps the work
# directory.  Builds nothing: run "make" first.

set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
BATCH=${BATCH:-1000}
FLUSH=${FLUSH:-1s}
STREAMS=${STREAMS:-$WORKERS}
MODULE=${MODULE:-$REPO/build/ngx_http_civchat_module.so}

if [ -z "${NGINX:-}" ]; then
    NGINX=/usr/sbin/nginx
    [ -x "$REPO/build/nginx/objs/nginx" ] && NGINX=$REPO/build/nginx/objs/nginx
fi

CLICKHOUSE=$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)

die() { echo "bench: $*" >&2; exit 1; }

[ -f "$MODULE" ] || die "no module at $MODULE (run make first)"
[ -x "$NGINX" ] || die "no nginx at $NGINX"
[ -x "$CLICKHOUSE" ] || die "no clickhouse-server (make deps)"
command -v wrk >/dev/null || die "no wrk (make deps)"
command -v curl >/dev/null || die "no curl (make deps)"

W=$(mktemp -d "${TMPDIR:-/tmp}/civchat-bench-XXXXXX")
chmod 755 "$W"
CH_PID=

cleanup() {
    if [ -f "$W/nginx.pid" ]; then
        kill -TERM "$(cat "$W/nginx.pid")" 2>/dev/null || true
    fi
    if [ -n "$CH_PID" ]; then
        kill -TERM "$CH_PID" 2>/dev/null || true
        wait "$CH_PID" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "bench: kept $W"
    else
        rm -rf "$W"
    fi
}
trap cleanup EXIT INT TERM

now() { perl -MTime::HiRes=time -e 'printf "%.3f\n", time'; }

# four free loopback ports: nginx, ClickHouse http, tcp, interserver
set -- $(perl -MIO::Socket::INET -e '
    my @s = map { IO::Socket::INET->new(Listen => 1,
        LocalAddr => "127.0.0.1", LocalPort => 0) or die $! } 1 .. 4;
    print join(" ", map { $_->sockport } @s), "\n";')
PORT=$1 CH_HTTP=$2 CH_TCP=$3 CH_INTER=$4

CH="http://127.0.0.1:$CH_HTTP/"

chq() {  # one statement over HTTP
    curl -sS --fail-with-body --data-binary "$1" "$CH"
}

insert_url() {
    echo "${CH}?query=INSERT%20INTO%20$1%20FORMAT%20JSONEachRow"
}

###########################################################################
# ClickHouse: its own config, data directory and ports

mkdir -p "$W/ch/data" "$W/ch/tmp" "$W/ch/user_files" "$W/ch/format_schemas" \
         "$W/ch/log" "$W/spool" "$W/batches"
cp /etc/clickhouse-server/users.xml "$W/ch/users.xml"

cat > "$W/ch/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$W/ch/log/clickhouse-server.log</log>
        <errorlog>$W/ch/log/clickhouse-server.err.log</errorlog>
        <console>0</console>
    </logger>
    <http_port>$CH_HTTP</http_port>
    <tcp_port>$CH_TCP</tcp_port>
    <interserver_http_port>$CH_INTER</interserver_http_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$W/ch/data/</path>
    <tmp_path>$W/ch/tmp/</tmp_path>
    <user_files_path>$W/ch/user_files/</user_files_path>
    <format_schema_path>$W/ch/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>5368709</mark_cache_size>
</yandex>
EOF

(cd "$W/ch" && exec "$CLICKHOUSE" --config-file="$W/ch/config.xml" \
    > "$W/ch/log/stdout.log" 2>&1) &
CH_PID=$!

i=0
until curl -sf "${CH}ping" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 300 ] || { cat "$W/ch/log/"*; die "clickhouse-server did not start"; }
    kill -0 "$CH_PID" 2>/dev/null \
        || { cat "$W/ch/log/"*; die "clickhouse-server exited"; }
    sleep 0.1
done

# the schema, statement by statement (comments dropped)
perl -e 'open(my $f, "<", $ARGV[0]) or die "$ARGV[0]: $!\n";
    local $/; my $sql = <$f>; $sql =~ s/--[^\n]*//g;
    for my $q (grep { /\S/ } split /;/, $sql) {
        open(my $c, "|-", "curl", "-sS", "--fail-with-body",
            "--data-binary", "\@-", $ARGV[1]) or die "curl: $!\n";
        print $c $q;
        close $c or die "schema statement failed\n";
    }' "$REPO/schema/clickhouse.sql" "$CH" >/dev/null
chq "EXISTS TABLE civchat.events" | grep -q 1 || die "no civchat.events"
chq "CREATE TABLE civchat.events_direct AS civchat.events" >/dev/null

###########################################################################
# nginx with the module, 2 workers, the HTTP store into ClickHouse

user=
[ "$(id -u)" = 0 ] && user="user root;"

cat > "$W/nginx.conf" <<EOF
load_module $MODULE;
pid $W/nginx.pid;
error_log $W/error.log notice;
worker_processes $WORKERS;
$user

events {
    worker_connections  8192;
}

http {
    access_log  off;
    client_body_temp_path  $W/client_body_temp;

    civchat_zone  users  64m;

    server {
        listen       127.0.0.1:$PORT backlog=4096;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  BENCH;
            civchat_store    $(insert_url civchat.events)
                             batch=$BATCH flush=$FLUSH spool=$W/spool;
        }
    }
}
EOF

"$NGINX" -p "$W/" -c "$W/nginx.conf" -e "$W/error.log" \
    || { cat "$W/error.log"; die "nginx did not start"; }

i=0
until curl -s -o /dev/null "http://127.0.0.1:$PORT/"; do
    i=$((i + 1)); [ $i -lt 100 ] || die "nginx does not answer"; sleep 0.05
done

# a returning visitor: the cookie of a first visit
KEY=$(curl -sS -H 'Content-Type: application/json' \
    --data-binary '{"apiKey":"BENCH","url":"http://shop.test/"}' \
    "http://127.0.0.1:$PORT/civchat/init" \
    | perl -ne 'print $1 if /"key":\s*"([A-Za-z0-9]+)"/')
[ -n "$KEY" ] || die "init gave no key"

cat > "$W/page_hit.lua" <<EOF
wrk.method = "POST"
wrk.path = "/civchat/page_hit"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Cookie"] = "__ca__chat=$KEY"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) civchat-bench"
wrk.body = '{"apiKey":"BENCH","url":"http://shop.test/products/42",'
        .. '"title":"Product 42","referrer":"http://shop.test/"}'

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK requests=%d errors=%d non2xx=%d "
        .. "p50=%.2f p99=%.2f\n", summary.requests,
        e.connect + e.read + e.write + e.timeout, e.status,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
EOF

# the first visit's two events arrive within a flush
BEFORE=$(chq "SELECT count() FROM civchat.events FINAL")
i=0
while [ "$BEFORE" -lt 2 ] && [ $i -lt 50 ]; do
    sleep 0.1; i=$((i + 1))
    BEFORE=$(chq "SELECT count() FROM civchat.events FINAL")
done

###########################################################################
# 1. through the module

echo "bench: wrk $DURATION s, $THREADS threads, $CONNECTIONS connections;" \
     "nginx $WORKERS workers; batch=$BATCH flush=$FLUSH"

T0=$(now)
wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" -s "$W/page_hit.lua" \
    "http://127.0.0.1:$PORT/civchat/page_hit" > "$W/wrk.out" 2>&1
T1=$(now)

grep -q '^WRK ' "$W/wrk.out" || { cat "$W/wrk.out"; die "wrk failed"; }
eval "$(sed -n 's/^WRK //p' "$W/wrk.out" | tr ' ' '\n' \
    | sed 's/^/WRK_/')"
ACCEPTED=$((WRK_requests - WRK_non2xx))
WANT=$((BEFORE + ACCEPTED))

# wait for the tail: every accepted page view in ClickHouse
ROWS=$(chq "SELECT count() FROM civchat.events FINAL")
T2=$(now)
i=0
while [ "$ROWS" -lt "$WANT" ] && [ $i -lt 600 ]; do
    sleep 0.05; i=$((i + 1))
    ROWS=$(chq "SELECT count() FROM civchat.events FINAL")
    T2=$(now)
done

ROWS=$((ROWS - BEFORE))
MOD=$(perl -e 'printf "%.0f", $ARGV[0] / ($ARGV[2] - $ARGV[1])' \
    "$ROWS" "$T0" "$T2")
REQ=$(perl -e 'printf "%.0f", $ARGV[0] / ($ARGV[2] - $ARGV[1])' \
    "$WRK_requests" "$T0" "$T1")
TAIL=$(perl -e 'printf "%.2f", $ARGV[1] - $ARGV[0]' "$T1" "$T2")
SECS=$(perl -e 'printf "%.2f", $ARGV[1] - $ARGV[0]' "$T0" "$T2")

###########################################################################
# 2. the same NDJSON straight into ClickHouse: batches of the same size,
#    $STREAMS parallel keep-alive streams (one per nginx worker)

curl -sS -f --data-binary "SELECT * FROM civchat.events FORMAT JSONEachRow" \
    "${CH}?output_format_json_quote_64bit_integers=0" > "$W/events.ndjson"
NDJSON=$(wc -l < "$W/events.ndjson")
BYTES=$(wc -c < "$W/events.ndjson")

(cd "$W/batches" && split -l "$BATCH" -a 5 -d "$W/events.ndjson" b)
NBATCH=$(ls "$W/batches" | wc -l)

URL=$(insert_url civchat.events_direct)
s=0
while [ $s -lt "$STREAMS" ]; do
    # every STREAMS-th batch, one curl with --next: one connection
    ls "$W/batches" | awk -v s=$s -v n="$STREAMS" 'NR % n == s' \
        | while read -r f; do
            printf -- '--next\n-sS\n-f\n-o\n/dev/null\n--data-binary\n@%s\n%s\n' \
                "$W/batches/$f" "$URL"
        done | sed 1d > "$W/stream.$s"
    s=$((s + 1))
done

T3=$(now)
s=0
PIDS=
while [ $s -lt "$STREAMS" ]; do
    if [ -s "$W/stream.$s" ]; then
        tr '\n' '\0' < "$W/stream.$s" | xargs -0 curl &
        PIDS="$PIDS $!"
    fi
    s=$((s + 1))
done
FAIL=0
for p in $PIDS; do wait "$p" || FAIL=1; done
T4=$(now)
[ $FAIL = 0 ] || die "direct inserts failed"

DIRECT_ROWS=$(chq "SELECT count() FROM civchat.events_direct")
[ "$DIRECT_ROWS" = "$NDJSON" ] \
    || die "direct: $DIRECT_ROWS rows for $NDJSON lines"
DIR=$(perl -e 'printf "%.0f", $ARGV[0] / ($ARGV[2] - $ARGV[1])' \
    "$NDJSON" "$T3" "$T4")
DSECS=$(perl -e 'printf "%.2f", $ARGV[1] - $ARGV[0]' "$T3" "$T4")

###########################################################################

# wrk does not count the requests in flight when it stops (at most one
# a connection): nginx answered and kept them all the same
EXTRA=$((ROWS - ACCEPTED))
DUP=$(chq "SELECT count() - uniqExact(id) FROM civchat.events")

echo
printf 'wrk:     %d page_hit requests in %ss (%s/s), %d not 2xx, %d socket errors, latency p50 %sms p99 %sms\n' \
    "$WRK_requests" "$DURATION" "$REQ" "$WRK_non2xx" "$WRK_errors" \
    "$WRK_p50" "$WRK_p99"
printf 'module:  %d events in ClickHouse in %ss (tail drained %ss after wrk): %s events/s\n' \
    "$ROWS" "$SECS" "$TAIL" "$MOD"
printf 'direct:  %d events (%d bytes of NDJSON) in %d batches of %d, %d curl streams: %ss, %s events/s\n' \
    "$NDJSON" "$BYTES" "$NBATCH" "$BATCH" "$STREAMS" "$DSECS" "$DIR"
perl -e 'printf "ratio:   %.3f (module / direct)\n", $ARGV[0] / $ARGV[1]' \
    "$MOD" "$DIR"
if [ "$EXTRA" -lt 0 ]; then
    printf 'check:   %d page views answered 200, %d MISSING in ClickHouse\n' \
        "$ACCEPTED" "$((-EXTRA))"
else
    printf 'check:   %d page views answered 200, all in ClickHouse (+%d in flight when wrk stopped), %d rows twice before merging\n' \
        "$ACCEPTED" "$EXTRA" "$DUP"
fi
grep -E '\[(alert|crit|emerg)\]|exited on signal' "$W/error.log" \
    && echo "bench: nginx logged problems (above)" || true
