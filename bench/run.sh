#!/bin/sh
# civchat benchmark: the module against nginx's own baseline, from one
# run on one machine.  Measures and prints; asserts nothing.  See
# bench/README.md ("The module against nginx").
#
#   sh bench/run.sh          (make bench runs it, after make)
#
# Two nginx, same binary, 2 workers each: "m" with the module, "b"
# without it.  Pairs, run back to back, A (module) and B (baseline)
# alternating (A B, B A, A B, ...) ROUNDS times, medians printed:
#   page_hit  POST /civchat/page_hit, a ~300-byte body, a returning
#             visitor (a cookie from a primed pool), file store
#             vs nginx "return 204;" to the same request
#   init      POST /civchat/init of a new visitor (no cookie: a new
#             profile per request) vs "return 204;" to the same request
#   p.gif     GET /civchat/p.gif?apiKey=... with the visitor's cookie
#             vs userid on + empty_gif + a JSON access_log (escape=json)
# each then once more with 1 connection (latency of a lone request);
# then, with redis-server installed, a third nginx "r": the module with
# its zone on a private Redis Cluster (util/redis-cluster.sh), and
#   init (Redis), page_hit (Redis)   the same requests on "r" vs the
#             same "return 204;", with redis-server's CPU and the Redis
#             commands per request (their own lines under the table);
# then a fill run: init requests with user_id, email and 10 attributes
# into an empty zone, and zone bytes per profile from civchat_status.
#
# Environment: DURATION (seconds per run, 3), ROUNDS (A/B rounds per
# pair, 5), CONNECTIONS (64), THREADS (wrk threads, 2), WORKERS (nginx
# workers, 2), POOL (returning visitors, 2000), FILL (profiles of the
# fill run, 20000), FILL_ZONE (64m), ZONE (the users zone, 256m),
# NGINX (binary), MODULE (.so), PERF=1 (perf record the workers during
# one page_hit run and print the top functions), KEEP=1 (keep the work
# directory), REDIS (auto: the Redis pairs when redis-server is
# installed; 0: never; 1: fail without it), REDIS_ONLY=1 (only the
# Redis pairs: no page_hit, init, p.gif, perf or fill on "m"),
# REDIS_FLUSH (the zone's redis_flush, 100ms), DRAIN_MAX (seconds a run
# on Redis waits for its page views to be written behind, 60).  Builds
# nothing: run "make" first.

set -euf    # -f: no globbing (request paths carry "?")

REPO=$(cd "$(dirname "$0")/.." && pwd)

DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
POOL=${POOL:-2000}
FILL=${FILL:-20000}
FILL_ZONE=${FILL_ZONE:-64m}
ZONE=${ZONE:-256m}
MODULE=${MODULE:-$REPO/build/ngx_http_civchat_module.so}

if [ -z "${NGINX:-}" ]; then
    NGINX=/usr/sbin/nginx
    if [ "$(cat "$REPO/build/full" 2>/dev/null)" = yes ]; then
        NGINX=$REPO/build/nginx/objs/nginx
    fi
fi

die() { echo "bench: $*" >&2; exit 1; }

# nginx -p changes what a relative path means
case $MODULE in /*) ;; *) MODULE=$(pwd)/$MODULE ;; esac
case $NGINX in /*) ;; *) NGINX=$(pwd)/$NGINX ;; esac

[ -f "$MODULE" ] || die "no module at $MODULE (run make first)"
[ -x "$NGINX" ] || die "no nginx at $NGINX"
command -v wrk >/dev/null || die "no wrk (make deps)"
command -v curl >/dev/null || die "no curl (make deps)"
if [ "${PERF:-0}" = 1 ]; then
    command -v perf >/dev/null || die "PERF=1 needs perf (linux-perf)"
fi

REDIS=${REDIS:-auto}
REDIS_ONLY=${REDIS_ONLY:-0}
REDIS_FLUSH=${REDIS_FLUSH:-100ms}
DRAIN_MAX=${DRAIN_MAX:-60}
if ! command -v redis-server >/dev/null \
    || ! command -v redis-cli >/dev/null
then
    [ "$REDIS" = 1 ] && die "REDIS=1 needs redis-server (make deps)"
    [ "$REDIS" = auto ] && REDIS=0
fi
[ "$REDIS" = 0 ] && [ "$REDIS_ONLY" = 1 ] && die "REDIS_ONLY=1 without Redis"
# "m" runs everything but the Redis pairs
EMBEDDED=1
[ "$REDIS_ONLY" = 1 ] && EMBEDDED=0

CMDLINE="DURATION=$DURATION ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS"
CMDLINE="$CMDLINE THREADS=$THREADS WORKERS=$WORKERS POOL=$POOL FILL=$FILL"
[ "$REDIS_ONLY" = 1 ] && CMDLINE="$CMDLINE REDIS_ONLY=1"
CMDLINE="$CMDLINE sh bench/run.sh"

W=$(mktemp -d "${TMPDIR:-/tmp}/civchat-run-XXXXXX")
chmod 755 "$W"

# stop nginx $1 (m, b or r) if it runs; wait for its master (and so its
# workers) to go
stop_nginx() {
    [ -f "$W/$1/nginx.pid" ] || return 0
    kill -TERM "$(cat "$W/$1/nginx.pid")" 2>/dev/null || true
    i=0
    while [ -f "$W/$1/nginx.pid" ] && [ $i -lt 100 ]; do
        sleep 0.05; i=$((i + 1))
    done
}

cleanup() {
    for d in m b r; do
        stop_nginx $d
    done
    # the cluster's nodes, whatever part of it started
    if [ -d "$W/redis" ]; then
        sh "$REPO/util/redis-cluster.sh" stop "$W/redis" || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "bench: kept $W"
    else
        rm -rf "$W"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# three free loopback ports: nginx with the module, nginx without,
# nginx with the module on Redis
set -- $(perl -MIO::Socket::INET -e '
    my @s = map { IO::Socket::INET->new(Listen => 1,
        LocalAddr => "127.0.0.1", LocalPort => 0) or die $! } 1 .. 3;
    print join(" ", map { $_->sockport } @s), "\n";')
PM=$1 PB=$2 PR=$3

###########################################################################
# the requests: what a browser on a shop page sends

HOST=shop.example.org
PAGE="https://$HOST/products/espresso-machine-deluxe-3000?utm_source=newsletter&utm_medium=email&utm_campaign=spring-sale"
REFERRER="https://$HOST/category/coffee-machines?page=2&sort=price-asc"
TITLE="Espresso Machine Deluxe 3000 | Coffee Machines | Shop Example"
UA="Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"

mkdir -p "$W/m" "$W/b" "$W/r" "$W/lua"

# page_hit as widget.js sends it (UE.pageHit: apiKey and the page)
printf '{"apiKey":"BENCH","url":"%s","referrer":"%s","title":"%s"}' \
    "$PAGE" "$REFERRER" "$TITLE" > "$W/page_hit.json"

# init of a new, anonymous visitor as widget.js sends it
printf '{"apiKey":"BENCH","url":"%s","referrer":"%s","title":"%s","language":"pl-PL","resolution":"1920x1080","timezone":"Europe/Warsaw"}' \
    "$PAGE" "https://www.google.com/" "$TITLE" > "$W/init.json"

# headers of a same-origin fetch() (keepalive) and of an <img>
cat > "$W/post.headers" <<EOF
Host: $HOST
User-Agent: $UA
Accept: */*
Accept-Language: pl-PL,pl;q=0.9,en-US;q=0.8,en;q=0.7
Accept-Encoding: gzip, deflate, br, zstd
Content-Type: application/json
Origin: http://$HOST
Referer: $PAGE
EOF

cat > "$W/img.headers" <<EOF
Host: $HOST
User-Agent: $UA
Accept: image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8
Accept-Language: pl-PL,pl;q=0.9,en-US;q=0.8,en;q=0.7
Accept-Encoding: gzip, deflate, br, zstd
Referer: $PAGE
EOF

# One script for every timed run: requests formatted once in init(),
# one per cookie of the pool (each thread starts elsewhere in it), so
# wrk spends the same little on each request of both sides of a pair.
# args: method path bodyfile|- headersfile cookiefile|-
cat > "$W/lua/req.lua" <<'EOF'
local threads = 0
local reqs, n, i = {}, 0, 0

function setup(thread)
    thread:set("tid", threads)
    threads = threads + 1
end

local function slurp(name)
    local f = assert(io.open(name, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

function init(args)
    local method, path, bodyf, headf, cookief =
        args[1], args[2], args[3], args[4], args[5]
    local body = nil
    if bodyf ~= "-" then body = slurp(bodyf) end
    local headers = {}
    for line in io.lines(headf) do
        local k, v = line:match("^([^:]+):%s*(.*)$")
        if k then headers[k] = v end
    end
    local cookies = {}
    if cookief ~= "-" then
        for line in io.lines(cookief) do
            if #line > 0 then cookies[#cookies + 1] = line end
        end
    end
    if #cookies == 0 then
        reqs[1] = wrk.format(method, path, headers, body)
    else
        for k = 1, #cookies do
            headers["Cookie"] = cookies[k]
            reqs[k] = wrk.format(method, path, headers, body)
        end
    end
    n = #reqs
    i = ((tid or 0) * 7919) % n
end

function request()
    i = i % n + 1
    return reqs[i]
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK requests=%d secs=%.3f errors=%d non2xx=%d "
        .. "p50=%.3f p99=%.3f\n", summary.requests,
        summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
        e.status, latency:percentile(50) / 1000,
        latency:percentile(99) / 1000))
end
EOF

# The fill: COUNT init requests of distinct known users, each with
# user_id, email and 10 attributes, from 2 processes, each pipelining
# 8 requests at a time on one keep-alive connection; prints the rate.
# args: port path count headersfile
cat > "$W/fill.pl" <<'EOF'
use strict;
use utf8;
use IO::Socket::INET;
use Time::HiRes qw/time/;
my ($port, $path, $count, $hf) = @ARGV;
open(my $h, '<', $hf) or die "$hf: $!\n";
my $headers = join('', map { s/\n$//; "$_\r\n" } <$h>);
my @first = qw/Anna Jan Katarzyna Piotr Magdalena Tomasz Agnieszka Michał
    Joanna Krzysztof/;
my @last = qw/Kowalska Nowak Wiśniewska Wójcik Kamińska Lewandowski
    Zielińska Szymański Dąbrowska Woźniak/;
my @cities = qw/Warszawa Kraków Wrocław Poznań Gdańsk Łódź Szczecin Lublin
    Katowice Białystok/;
my @companies = ('Acme Sp. z o.o.', 'Kawa i Spółka S.A.',
    'Northwind Traders', 'Globex Polska', 'Initech');
my @plans = qw/free starter pro business/;
my $page = 'https://shop.example.org/products/espresso-machine-deluxe-3000';
sub request {
    my ($u) = @_;
    my ($f, $l) = ($first[$u % 10], $last[int($u / 10) % 10]);
    my $body = sprintf('{"apiKey":"BENCH","url":"%s",'
        . '"referrer":"https://www.google.com/","title":"Espresso Machine",'
        . '"user_id":"%d","email":"%s.%s.%d@example.org",'
        . '"name":"%s %s","plan":"%s","city":"%s","company":"%s",'
        . '"orders":%d,"newsletter":%s,"language":"pl",'
        . '"lifetime_value":%d.%02d,"signup_date":"2024-%02d-%02d",'
        . '"source":"newsletter"}',
        $page, 100000 + $u, lc $f, lc $l, $u, $f, $l, $plans[$u % 4],
        $cities[int($u / 3) % 10], $companies[$u % 5], $u % 40,
        $u % 2 ? 'false' : 'true', $u % 900, $u % 100, $u % 12 + 1,
        $u % 28 + 1);
    utf8::encode($body);
    return "POST $path HTTP/1.1\r\n$headers"
        . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}
my $t0 = time;
my @kids;
for my $k (0, 1) {
    my $pid = fork() // die "fork: $!\n";
    if ($pid) { push @kids, $pid; next; }
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port")
        or die "$!\n";
    binmode $s;
    my ($buf, $bad) = ('', 0);
    my @mine = grep { $_ % 2 == $k } 1 .. $count;
    while (my @batch = splice(@mine, 0, 8)) {
        print $s join('', map { request($_) } @batch);
        for (@batch) {
            my $head;
            while (1) {
                my $i = index($buf, "\r\n\r\n");
                if ($i >= 0) { $head = substr($buf, 0, $i + 4, ''); last; }
                sysread($s, $buf, 65536, length $buf) or die "closed\n";
            }
            $bad++ unless $head =~ m{^HTTP/1\.1 200 };
            my $len = $head =~ /^Content-Length:\s*(\d+)/mi ? $1 : 0;
            while (length($buf) < $len) {
                sysread($s, $buf, 65536, length $buf) or die "closed\n";
            }
            substr($buf, 0, $len, '');
        }
    }
    exit($bad ? 1 : 0);
}
my $bad = 0;
for (@kids) { waitpid($_, 0); $bad ||= $?; }
die "fill: answers other than 200\n" if $bad;
printf "%.0f\n", $count / (time - $t0);
EOF
# Priming: COUNT requests over one keep-alive connection, printing the
# cookie each answer sets (NAME=VALUE), one a line.
# args: port count cookie-name method path headersfile bodyfile|-
cat > "$W/prime.pl" <<'EOF'
use strict;
use IO::Socket::INET;
my ($port, $count, $name, $method, $path, $hf, $bf) = @ARGV;
open(my $h, '<', $hf) or die "$hf: $!\n";
my $headers = join('', map { s/\n$//; "$_\r\n" } <$h>);
my $body = '';
if ($bf ne '-') { open(my $b, '<', $bf) or die; local $/; $body = <$b>; }
my $req = "$method $path HTTP/1.1\r\n$headers"
    . ($bf ne '-' ? "Content-Length: " . length($body) . "\r\n" : '')
    . "\r\n$body";
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die "$!\n";
binmode $s;
my $buf = '';
for (1 .. $count) {
    print $s $req;
    my ($head, $len);
    while (1) {
        my $i = index($buf, "\r\n\r\n");
        if ($i >= 0) { $head = substr($buf, 0, $i + 4, ''); last; }
        sysread($s, $buf, 65536, length $buf) or die "connection closed\n";
    }
    $head =~ m{^HTTP/1\.1 2\d\d } or die "not 2xx: $head";
    $len = $head =~ /^Content-Length:\s*(\d+)/mi ? $1 : 0;
    while (length($buf) < $len) {
        sysread($s, $buf, 65536, length $buf) or die "connection closed\n";
    }
    substr($buf, 0, $len, '');
    $head =~ /^Set-Cookie:\s*(\Q$name\E=[^;\r]*)/mi
        or die "no $name cookie in: $head";
    print "$1\n";
}
EOF

###########################################################################
# nginx with the module (m) and nginx without it (b), each 2 workers

user=
[ "$(id -u)" = 0 ] && user="user root;"

temp_paths() {
    for t in client_body proxy fastcgi uwsgi scgi; do
        echo "    ${t}_temp_path $1/${t}_temp;"
    done
}

# the module's nginx: m, and r (its users zone on Redis)
# args: directory port users-zone-definition
module_conf() {
    cat > "$W/$1/nginx.conf" <<EOF
load_module $MODULE;
pid $W/$1/nginx.pid;
error_log $W/$1/error.log notice;
worker_processes $WORKERS;
$user

events {
    worker_connections  8192;
}

http {
    access_log  off;
    keepalive_requests  1000000;
$(temp_paths "$W/$1")

    $3
    civchat_zone  fill   $FILL_ZONE;

    server {
        listen       127.0.0.1:$2 backlog=4096;
        server_name  $HOST;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  BENCH;
            civchat_store    file=$W/$1/events.ndjson flush=1s;
        }

        location /fill/ {
            civchat          zone=fill;
            civchat_api_key  BENCH;
            civchat_store    off;
        }

        location = /status {
            civchat_status;
        }
    }
}
EOF
}

module_conf m "$PM" "civchat_zone  users  $ZONE;"

cat > "$W/b/nginx.conf" <<EOF
pid $W/b/nginx.pid;
error_log $W/b/error.log notice;
worker_processes $WORKERS;
$user

events {
    worker_connections  8192;
}

http {
    access_log  off;
    keepalive_requests  1000000;
$(temp_paths "$W/b")

    # the classic do-it-yourself tracker: a cookie, a GIF, a JSON line
    log_format  track  escape=json
        '{"id":"\$request_id","ts":\$msec,"site":"\$arg_apiKey",'
        '"type":"page_view","uid":"\$uid_got\$uid_set",'
        '"url":"\$http_referer","ip":"\$remote_addr",'
        '"user_agent":"\$http_user_agent",'
        '"language":"\$http_accept_language","status":\$status}';

    server {
        listen       127.0.0.1:$PB backlog=4096;
        server_name  $HOST;

        location /civchat/ {
            return  204;
        }

        location = /civchat/p.gif {
            userid          on;
            userid_name     uid;
            userid_expires  365d;
            userid_path     /;
            empty_gif;
            access_log      $W/b/track.ndjson track buffer=64k flush=1s;
        }
    }
}
EOF

# start nginx $1 (m, b or r) on port $2 and wait until it answers
start_nginx() {
    "$NGINX" -p "$W/$1/" -c "$W/$1/nginx.conf" -e "$W/$1/error.log" \
        || { cat "$W/$1/error.log"; die "nginx ($1) did not start"; }
    i=0
    until curl -s -o /dev/null "http://127.0.0.1:$2/"; do
        i=$((i + 1)); [ $i -lt 100 ] || die "nginx ($1) does not answer"
        sleep 0.05
    done
}

start_nginx m "$PM"
start_nginx b "$PB"

status() {  # civchat_status value of one metric for one zone [port]
    curl -sS "http://127.0.0.1:${3:-$PM}/status" \
        | sed -n "s/^$1{zone=\"$2\"} //p"
}

###########################################################################
# returning visitors: POOL first visits each, on both sides

perl "$W/prime.pl" "$PM" "$POOL" __ca__chat POST /civchat/init \
    "$W/post.headers" "$W/init.json" > "$W/civchat.cookies" \
    || die "priming the civchat cookies failed"
perl "$W/prime.pl" "$PB" "$POOL" uid GET /civchat/p.gif \
    "$W/img.headers" - > "$W/uid.cookies" \
    || die "priming the userid cookies failed"

# After a run on r: the profiles whose page views (or a new profile's
# first attributes) wait to be written behind when wrk stops, and the
# seconds until none is left (at most DRAIN_MAX); then 2 redis_flush
# more, for the last deltas on their way.  So each run's counts hold
# all the writes its requests made, and none of the run before.
# Prints "backlog=N,drain=SECONDS,left=N".
drain_r() {
    perl -MTime::HiRes=time,sleep -e '
        my ($url, $flush, $max) = @ARGV;
        my ($n, $u) = $flush =~ /^(\d+)(ms|s)?$/ or die "REDIS_FLUSH?\n";
        my $settle = 2 * $n / ($u && $u eq "ms" ? 1000 : 1);
        sub pending {
            my $s = `curl -sS $url`;
            $s =~ /^civchat_redis_pending_profiles\{zone="users"\} (\d+)/m
                ? $1 : -1;
        }
        my ($t0, $left) = (time);
        my $backlog = pending();
        sleep 0.05 while ($left = pending()) != 0 && time - $t0 < $max;
        my $drain = time - $t0;
        sleep $settle;
        printf "backlog=%d,drain=%.2f,left=%d\n", $backlog, $drain, $left;
    ' "http://127.0.0.1:$PR/status" "$REDIS_FLUSH" "$DRAIN_MAX"
}

# Redis, as r's requests use it, as NAME=VALUE,...: cpu and mcpu,
# seconds of CPU of the six nodes and of the masters; commands and
# messages, what r's workers sent and got (civchat_status
# civchat_redis_*_total{cluster="bench"}); reads, writes, conflicts,
# unavailable, deltas: what the zone's requests did
# (civchat_redis_*_total{zone="users"}); cmd:NAME, INFO commandstats
# summed over the masters (the commands run by scripts included; INFO
# and REPLCONF, ours and the replicas', left out)
redis_counts() {
    {
        curl -sS "http://127.0.0.1:$PR/status"
        for p in $MASTERS; do
            redis-cli -p "$p" info commandstats
        done
    } | HZ=$(getconf CLK_TCK) MASTERS=$MASTERS perl -e '
        my ($dir, %v) = (shift, cpu => 0, mcpu => 0);
        my %master = map { $_ => 1 } split " ", $ENV{MASTERS};
        while (<STDIN>) {
            $v{$1} = $2 if /^civchat_redis_(\w+)_total
                \{(?:cluster="bench"|zone="users")\}\s(\d+)/x;
            $v{"cmd:$1"} += $2 if /^cmdstat_(\S+?):calls=(\d+)/
                && $1 ne "info" && $1 ne "replconf";
        }
        for my $f (glob "$dir/node-*/redis.pid") {
            my ($port) = $f =~ m{node-(\d+)/};
            open(my $p, "<", $f) or next;
            my $pid = <$p>; chomp $pid;
            open(my $h, "<", "/proc/$pid/stat") or next;
            my @F = split " ", (<$h> =~ s/.*\) //r);
            my $t = ($F[11] + $F[12]) / $ENV{HZ};
            $v{cpu} += $t;
            $v{mcpu} += $t if $master{$port};
        }
        print join(",", map { "$_=$v{$_}" } sort keys %v), "\n";' "$W/redis"
}

# CPU seconds the workers of nginx $1 (m, b or r) have used: "user system"
cpu() {
    HZ=$(getconf CLK_TCK) perl -e '
        my ($master, $u, $s) = (shift, 0, 0);
        for my $f (glob "/proc/[0-9]*/stat") {
            open(my $h, "<", $f) or next;
            my @F = split " ", scalar <$h>;
            next unless $F[3] == $master;
            $u += $F[13]; $s += $F[14];
        }
        printf "%.2f %.2f", $u / $ENV{HZ}, $s / $ENV{HZ};' \
        "$(cat "$W/$1/nginx.pid")"
}

# wrk: one timed run; prints "requests secs rps p50 p99 errors non2xx
# nginx-user-seconds nginx-system-seconds wrk-cpu-seconds", then, on r,
# what the run added to what redis_counts prints (else "-")
# args: port method path body headers cookies
run() {
    case $1 in $PM) side=m ;; $PR) side=r ;; *) side=b ;; esac
    rc0=- rc1=-
    [ $side = r ] && rc0=$(redis_counts)
    c0=$(cpu $side)
    # wrk under perl, for the CPU time wrk itself used
    perl -e 'my $rc = system(@ARGV); my @t = times;
        printf STDERR "WRKCPU %.2f\n", $t[2] + $t[3]; exit($rc ? 1 : 0)' \
        wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" \
        -s "$W/lua/req.lua" "http://127.0.0.1:$1$3" \
        -- "$2" "$3" "$4" "$5" "$6" > "$W/wrk.out" 2>&1 \
        || { cat "$W/wrk.out" >&2; die "wrk failed"; }
    drained=
    if [ $side = r ]; then
        drained=$(drain_r)
        c1=$(cpu $side)
        rc1=$(redis_counts)
    else
        c1=$(cpu $side)
    fi
    C0=$c0 C1=$c1 WC=$(sed -n 's/^WRKCPU //p' "$W/wrk.out") \
    RC0=$rc0 RC1=$rc1 DRAINED=$drained perl -ne 'next unless s/^WRK //;
        my %v = map { split /=/ } split;
        my @c0 = split / /, $ENV{C0}; my @c1 = split / /, $ENV{C1};
        my %r0 = map { split /=/ } grep { $_ ne "-" } split /,/, $ENV{RC0};
        my %r1 = map { split /=/ } grep { $_ ne "-" } split /,/, $ENV{RC1};
        my $added = join(",", $ENV{DRAINED} || (),
            map { "$_=" . ($r1{$_} - ($r0{$_} // 0)) } sort keys %r1);
        printf "%d %.3f %.0f %.3f %.3f %d %d %.2f %.2f %.2f %s\n",
            $v{requests}, $v{secs}, $v{requests} / $v{secs}, $v{p50},
            $v{p99}, $v{errors}, $v{non2xx}, $c1[0] - $c0[0],
            $c1[1] - $c0[1], $ENV{WC}, $added || "-";' "$W/wrk.out" \
        | grep . || { cat "$W/wrk.out" >&2; die "no wrk summary"; }
}

WRK_CMD="wrk -t $THREADS -c $CONNECTIONS -d ${DURATION}s -s req.lua URL"
WRK_CMD="$WRK_CMD -- METHOD PATH BODY HEADERS COOKIES"

# one pair: NAME, then module args (6), then baseline args (6);
# appends one line per timed run to $W/runs (name side round, then what
# run prints) and one per side to $W/light (1 connection)
pair() {
    name=$1; shift
    a="$1 $2 $3 $4 $5 $6"; shift 6
    b="$1 $2 $3 $4 $5 $6"

    # a second of each to warm up (not counted)
    save=$DURATION; DURATION=1
    run $a >/dev/null; run $b >/dev/null
    DURATION=$save

    r=1
    while [ $r -le "$ROUNDS" ]; do
        if [ $((r % 2)) = 1 ]; then
            x=$(run $a); echo "$name A $r $x" >> "$W/runs"
            x=$(run $b); echo "$name B $r $x" >> "$W/runs"
        else
            x=$(run $b); echo "$name B $r $x" >> "$W/runs"
            x=$(run $a); echo "$name A $r $x" >> "$W/runs"
        fi
        r=$((r + 1))
    done

    # latency of one request at a time: 1 thread, 1 connection, 1s
    save="$DURATION $THREADS $CONNECTIONS"
    DURATION=1 THREADS=1 CONNECTIONS=1
    x=$(run $a); echo "$name A $x" >> "$W/light"
    x=$(run $b); echo "$name B $x" >> "$W/light"
    set -- $save; DURATION=$1 THREADS=$2 CONNECTIONS=$3

    # the events and log lines are not needed: keep the disk free
    : > "$W/m/events.ndjson"; : > "$W/b/track.ndjson"
    : > "$W/r/events.ndjson"
}

: > "$W/runs"; : > "$W/light"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$(date +%s)

VERSION=$("$NGINX" -v 2>&1 | sed 's/.*\///')
echo "bench: $(nproc) CPUs, load $LOAD0; nginx $VERSION ($NGINX)," \
     "$WORKERS workers; wrk $THREADS threads, $CONNECTIONS connections," \
     "${DURATION}s a run, $ROUNDS A/B rounds a pair" >&2

# init first: the returning visitors are then looked up among as many
# profiles as a busy zone holds, not among the pool alone
if [ "$EMBEDDED" = 1 ]; then
    pair init \
        "$PM" POST /civchat/init "$W/init.json" "$W/post.headers" - \
        "$PB" POST /civchat/init "$W/init.json" "$W/post.headers" -

    pair page_hit \
        "$PM" POST /civchat/page_hit "$W/page_hit.json" "$W/post.headers" \
            "$W/civchat.cookies" \
        "$PB" POST /civchat/page_hit "$W/page_hit.json" "$W/post.headers" \
            "$W/civchat.cookies"

    pair p.gif \
        "$PM" GET "/civchat/p.gif?apiKey=BENCH" - "$W/img.headers" \
            "$W/civchat.cookies" \
        "$PB" GET "/civchat/p.gif?apiKey=BENCH" - "$W/img.headers" \
            "$W/uid.cookies"

    EVICT=$(status civchat_evictions_total users)
fi

###########################################################################
# r: the module with its users zone on a private Redis Cluster, three
# masters and three replicas (util/redis-cluster.sh), started now and
# stopped after its pairs, so that the runs above and below do not
# share the CPUs with it; on six free ports below the ephemeral range,
# so that no connection takes one of them or of their cluster bus ports
# (+10000) meanwhile

MASTERS=
if [ "$REDIS" != 0 ]; then
    RP=$(perl -MIO::Socket::INET -e '
        for (1 .. 200) {
            my $base = 20000 + int(rand(2700));
            my @s = grep { $_ } map { IO::Socket::INET->new(Listen => 1,
                LocalAddr => "127.0.0.1", LocalPort => $_) }
                map { ($_, $_ + 10000) } $base .. $base + 5;
            if (@s == 12) { print "$base\n"; exit 0; }
        }
        exit 1;') || die "no six free ports for Redis"
    sh "$REPO/util/redis-cluster.sh" start "$W/redis" "$RP" \
        > "$W/redis.out" 2>&1 \
        || { cat "$W/redis.out" >&2; die "the Redis Cluster did not start"; }
    for p in $RP $((RP + 1)) $((RP + 2)) $((RP + 3)) $((RP + 4)) \
        $((RP + 5))
    do
        if [ "$(redis-cli -p "$p" role | head -n 1)" = master ]; then
            MASTERS="$MASTERS $p"
        fi
    done

    # ping=60s: the workers' health checks stay out of the counts
    module_conf r "$PR" "civchat_redis  bench  127.0.0.1:$RP \
127.0.0.1:$((RP + 1)) 127.0.0.1:$((RP + 2)) ping=60s;
    civchat_zone  users  $ZONE redis=bench redis_flush=$REDIS_FLUSH;"
    start_nginx r "$PR"

    # every worker has the cluster's slot map before the first visit
    i=0
    until [ "$(curl -sS "http://127.0.0.1:$PR/status" \
        | grep -c '^civchat_redis_slots_covered{cluster="bench".* 16384$')" \
        -ge "$WORKERS" ]
    do
        i=$((i + 1)); [ $i -lt 200 ] || die "r: no slot map of the cluster"
        sleep 0.05
    done
    perl "$W/prime.pl" "$PR" "$POOL" __ca__chat POST /civchat/init \
        "$W/post.headers" "$W/init.json" > "$W/redis.cookies" \
        || die "priming the civchat cookies on Redis failed"

    # the same pairs as on m, in the same order: the returning visitors
    # are then found among the profiles the init runs wrote to Redis
    pair init_redis \
        "$PR" POST /civchat/init "$W/init.json" "$W/post.headers" - \
        "$PB" POST /civchat/init "$W/init.json" "$W/post.headers" -

    pair page_hit_redis \
        "$PR" POST /civchat/page_hit "$W/page_hit.json" "$W/post.headers" \
            "$W/redis.cookies" \
        "$PB" POST /civchat/page_hit "$W/page_hit.json" "$W/post.headers" \
            "$W/redis.cookies"

    REVICT=$(status civchat_evictions_total users "$PR")
    RPROF=$(status civchat_profiles users "$PR")
    RKEYS=0
    for p in $MASTERS; do
        RKEYS=$((RKEYS + $(redis-cli -p "$p" dbsize)))
    done

    stop_nginx r
    sh "$REPO/util/redis-cluster.sh" stop "$W/redis"
fi

###########################################################################
# optional: where a page_hit worker spends its time

if [ "${PERF:-0}" = 1 ] && [ "$EMBEDDED" = 1 ]; then
    WPIDS=$(pgrep -P "$(cat "$W/m/nginx.pid")" | paste -sd, -)
    perf record -q -o "$W/perf.data" -p "$WPIDS" -- sleep "$DURATION" \
        > /dev/null 2>&1 &
    PERF_PID=$!
    sleep 0.2
    run "$PM" POST /civchat/page_hit "$W/page_hit.json" "$W/post.headers" \
        "$W/civchat.cookies" > /dev/null
    wait "$PERF_PID" || true
    perf report -i "$W/perf.data" --no-children --sort dso,symbol \
        --percent-limit 1 --stdio 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | sed 's/[ -]*$//' | head -n 25 \
        > "$W/perf.top"
    perf report -i "$W/perf.data" --no-children --sort dso --stdio \
        2>/dev/null | awk '/^ +[0-9.]+%/ { printf "%s %s; ", $1, $2 }' \
        > "$W/perf.dso"
fi

###########################################################################
# the fill: FILL known users (user_id, email, 10 attributes) into the
# empty zone "fill" (civchat_store off there: memory is the question)

if [ "$EMBEDDED" = 1 ]; then
    USED0=$(status civchat_zone_bytes_used fill)
    TOTAL=$(status civchat_zone_bytes fill)
    FILL_RPS=$(perl "$W/fill.pl" "$PM" /fill/init "$FILL" \
        "$W/post.headers") || die "the fill failed"
    sleep 0.2
    USED1=$(status civchat_zone_bytes_used fill)
    NPROF=$(status civchat_profiles fill)
    FEVICT=$(status civchat_evictions_total fill)
    FILL_ZONE_BYTES=$(perl -e '
        my ($n, $u) = $ARGV[0] =~ /^(\d+)([kKmMgG]?)$/ or die;
        print $n * { "" => 1, k => 1024, m => 1 << 20,
            g => 1 << 30 }->{lc $u}' "$FILL_ZONE")
fi

T1=$(date +%s)

###########################################################################
# the table

perl - "$W/runs" "$W/light" <<'EOF' > "$W/table"
use strict;
my (%r, %tot, %most);
open(my $f, '<', $ARGV[0]) or die;
while (<$f>) {
    my ($name, $side, $round, $req, $secs, $rps, $p50, $p99, $err, $non,
        $nuser, $nsys, $wcpu, $redis) = split;
    my %rv = map { split /=/ } grep { $_ ne '-' } split /,/, $redis;
    push @{$r{$name}{$side}}, { rps => $rps, p50 => $p50, p99 => $p99,
        bad => $err + $non, us => ($nuser + $nsys) * 1e6 / $req,
        uus => $nuser * 1e6 / $req, sus => $nsys * 1e6 / $req,
        wus => $wcpu * 1e6 / $req,
        rus => ($rv{cpu} // 0) * 1e6 / $req,
        rmus => ($rv{mcpu} // 0) * 1e6 / $req };
    next if $side ne 'A';
    # Redis: what the timed runs added, and their requests
    $tot{$name}{$_} += $rv{$_} for keys %rv;
    $tot{$name}{requests} += $req;
    for my $k ('backlog', 'drain', 'left') {
        $most{$name}{$k} = $rv{$k} if ($rv{$k} // 0) > ($most{$name}{$k} // 0);
    }
}
sub median { my @v = sort { $a <=> $b } @_; my $n = @v;
    $n % 2 ? $v[$n / 2] : ($v[$n / 2 - 1] + $v[$n / 2]) / 2 }
my @cpu;
sub med { my ($runs, $k) = @_; median(map { $_->{$k} } @$runs) }
sub sum { my ($runs, $k) = @_; my $s = 0; $s += $_->{$k} for @$runs; $s }
my %base = (page_hit => 'return 204', init => 'return 204',
    'p.gif' => 'userid+empty_gif+log', page_hit_redis => 'return 204',
    init_redis => 'return 204');
my %label = (page_hit_redis => 'page_hit (Redis)',
    init_redis => 'init (Redis)');
sub label { $label{$_[0]} // $_[0] }
# the test and its baseline in 29 columns, a long test name running on
sub head { my ($t, $b) = @_;
    length($t) > 8 ? sprintf("%-29s", "$t $b") : sprintf("%-8s %-20s", $t, $b) }
my @names = grep { $r{$_} }
    'page_hit', 'init', 'p.gif', 'page_hit_redis', 'init_redis';
my @redis = grep { /_redis$/ } @names;
printf "%s|%7s %6s %6s %5s |%7s %6s %6s %5s |%6s %6s | %s\n",
    head('test', 'baseline'), 'req/s', 'p50', 'p99', 'cpu', 'req/s', 'p50',
    'p99', 'cpu', 'ratio', 'cpu', 'ratio per round';
printf "%s|%7s %6s %6s %5s |%7s %6s %6s %5s |%6s %6s |\n",
    head('', ''), '', 'ms', 'ms', 'us', '', 'ms', 'ms', 'us', '', 'ratio';
for my $n (@names) {
    my ($a, $b) = ($r{$n}{A}, $r{$n}{B});
    my @ratios = map { $a->[$_]{rps} / $b->[$_]{rps} } 0 .. $#$a;
    my $bad = 0; $bad += $_->{bad} for @$a, @$b;
    printf "%s|%7.0f %6.2f %6.2f %5.1f |%7.0f %6.2f %6.2f %5.1f "
        . "|%6.3f %6.3f | %s%s\n",
        head(label($n), $base{$n}),
        med($a, 'rps'), med($a, 'p50'), med($a, 'p99'), med($a, 'us'),
        med($b, 'rps'), med($b, 'p50'), med($b, 'p99'), med($b, 'us'),
        median(@ratios), med($b, 'us') / med($a, 'us'),
        join(' ', map { sprintf '%.3f', $_ } @ratios),
        $bad ? "  ($bad errors or non-2xx!)" : '';
    push @cpu, sprintf "%s %.1f+%.1f vs %.1f+%.1f (wrk %.1f vs %.1f)",
        label($n), med($a, 'uus'), med($a, 'sus'), med($b, 'uus'),
        med($b, 'sus'), med($a, 'wus'), med($b, 'wus');
}
print "\ncpu us/request, nginx workers user+kernel, module vs baseline:\n  ",
    join(";\n  ", @cpu), "\n";
my @light;
open($f, '<', $ARGV[1]) or die;
my %l;
while (<$f>) {
    my ($name, $side, $req, $secs, $rps, $p50, $p99) = split;
    $l{$name}{$side} = [$p50, $p99, $rps];
}
print "latency of one request at a time (1 connection), p50/p99 ms, module"
    . " vs baseline:\n  ", join(";\n  ", map { sprintf
        "%s %.3f/%.3f vs %.3f/%.3f", label($_), @{$l{$_}{A}}[0, 1],
        @{$l{$_}{B}}[0, 1] } @names), "\n";
exit 0 unless @redis;
# Redis: per request of the timed runs on r (A)
sub per { my ($n, $k) = @_; ($tot{$n}{$k} // 0) / $tot{$n}{requests} }
print "\nRedis, per request of the timed runs on r (the module, its zone on"
    . " the cluster):\n";
print "  redis-server CPU us (all 6 nodes, masters' share; not in the cpu"
    . " column above):\n    ", join('; ', map { sprintf "%s %.1f (%.1f)",
        label($_), med($r{$_}{A}, 'rus'), med($r{$_}{A}, 'rmus') } @redis),
    "\n";
print "  cpu ratio, redis-server's CPU added to r's workers':\n    ",
    join('; ', map { sprintf "%s %.3f", label($_), med($r{$_}{B}, 'us')
        / (med($r{$_}{A}, 'us') + med($r{$_}{A}, 'rus')) } @redis), "\n";
print "  requests that read Redis, wrote to it before the answer, deltas"
    . " written behind (civchat_redis_*_total):\n    ",
    join('; ', map { my $n = $_; sprintf "%s %s", label($n), join(' ',
        map { sprintf "%s %.2f", $_, per($n, $_) }
        'reads', 'writes', 'deltas',
        grep { per($n, $_) } 'conflicts', 'unavailable') } @redis), "\n";
print "  written behind: profiles waiting when wrk stopped"
    . " (civchat_redis_pending_profiles), seconds until none, at most:\n    ",
    join('; ', map { sprintf "%s %d, %.1f s%s", label($_),
        $most{$_}{backlog} // 0, $most{$_}{drain} // 0, $most{$_}{left}
        ? " ($most{$_}{left} still waiting after DRAIN_MAX)" : '' } @redis),
    "\n";
print "  commands r's workers sent (civchat_redis_commands_total), and"
    . " pub/sub messages they got:\n    ",
    join('; ', map { sprintf "%s %.2f (messages %.2f)", label($_),
        per($_, 'commands'), per($_, 'messages') } @redis), "\n";
print "  commands the masters ran (INFO commandstats calls, scripts'"
    . " included):\n";
for my $n (@redis) {
    my %c = map { /^cmd:(.*)/ ? ($1 => per($n, $_)) : () }
        keys %{$tot{$n}};
    my @k = sort { $c{$b} <=> $c{$a} || $a cmp $b } grep { $c{$_} } keys %c;
    my @few = grep { $c{$_} < 0.005 } @k;
    my $all = 0; $all += $_ for values %c;
    printf "    %s %.2f: %s%s\n", label($n), $all,
        join(' ', map { sprintf "%s %.2f", $_, $c{$_} }
            grep { $c{$_} >= 0.005 } @k) || 'none',
        @few ? " (and under 0.01: @few)" : '';
}
EOF

echo
echo "civchat bench ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs," \
     "load before $LOAD0, $((T1 - T0))s): module (left) vs nginx" \
     "without it (right), medians of $ROUNDS runs each"
cat "$W/table"
echo
if [ "$EMBEDDED" = 1 ]; then
    perl -e '
        my ($used0, $used1, $n, $total, $size, $ev, $rps, $ua) = @ARGV;
        my $bpp = ($used1 - $used0) / $n;
        printf "zone:    %d profiles (user_id, email, 10 attributes,"
            . " %d-byte UA) in %.1f MiB: %.0f bytes/profile -> %.2f million"
            . " profiles per GiB of zone; %d evicted (fill: %d init/s)\n",
            $n, length($ua), ($used1 - $used0) / 1048576, $bpp,
            (1 << 30) * ($total / $size) / $bpp / 1e6, $ev, $rps;
    ' "$USED0" "$USED1" "$NPROF" "$TOTAL" "$FILL_ZONE_BYTES" "$FEVICT" \
        "$FILL_RPS" "$UA"
    printf 'users:   %s profiles after the init runs, %s evicted (zone %s)\n' \
        "$(status civchat_profiles users)" "$EVICT" "$ZONE"
fi
if [ "$REDIS" != 0 ]; then
    printf 'redis:   %s keys on the masters after the runs; r cached %s' \
        "$RKEYS" "$RPROF"
    printf ' profiles, %s evicted (zone %s redis_flush=%s); %s, 3 masters' \
        "$REVICT" "$ZONE" "$REDIS_FLUSH" \
        "$(redis-server --version | sed 's/ sha=.*//')"
    printf ' + 3 replicas, appendonly\n'
else
    echo "redis:   no Redis pairs (REDIS=0, or no redis-server: make deps)"
fi
echo "command: $CMDLINE"
echo "wrk:     $WRK_CMD"
echo "         (bodies, headers, Lua and configs: bench/run.sh;" \
     "KEEP=1 keeps them)"

if [ -s "$W/perf.top" ]; then
    echo
    echo "perf, nginx workers during one page_hit run (self time, >= 1%):"
    echo "  by object: $(cat "$W/perf.dso")"
    cat "$W/perf.top"
fi

grep -sE '\[(alert|crit|emerg)\]|exited on signal' "$W/m/error.log" \
    "$W/b/error.log" "$W/r/error.log" \
    && echo "bench: nginx logged problems (above)" || true
