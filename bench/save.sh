#!/bin/sh
# civchat: what saving the profile zone costs (bench/README.md, "Saving
# the zone").  Measures and prints; asserts nothing.
#
#   sh bench/save.sh          (after make)
#
# One nginx (2 workers) with the module and a zone of ZONE with state=,
# filled with PROFILES known visitors (user_id, email, 10 attributes)
# by init requests.  Then ROUNDS pairs of DURATION-second wrk runs of
# page_hit (a returning visitor of a primed pool each request), one with
# saves (state_interval=INTERVAL: page views change the zone, so the
# worker saves it again and again) and one without (state_interval=1h),
# in alternating order, nginx reloaded between them.  Printed:
#   - each save's figures from its info line in error.log: profiles,
#     bytes, pieces, how long it took, and how long it held the zone's
#     lock in all and at most at a time;
#   - memory of the saving worker (sampled every 2 ms from /proc): its
#     peak private memory (RssAnon) and address space (VmSize) during
#     the runs with saves against any worker's during the runs without;
#   - page_hit p99 and max latency and req/s with saves against
#     without, as ratios (medians of the rounds).
#
# Environment: ZONE (128m), PROFILES (150000), DURATION (5), ROUNDS (3),
# INTERVAL (1s), CONNECTIONS (64), THREADS (2), WORKERS (2), POOL
# (2000), NGINX, MODULE, KEEP=1 (keep the work directory).  Builds
# nothing: run "make" first.

set -euf

REPO=$(cd "$(dirname "$0")/.." && pwd)

ZONE=${ZONE:-128m}
PROFILES=${PROFILES:-150000}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
INTERVAL=${INTERVAL:-1s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
POOL=${POOL:-2000}
MODULE=${MODULE:-$REPO/build/ngx_http_civchat_module.so}

if [ -z "${NGINX:-}" ]; then
    NGINX=/usr/sbin/nginx
    if [ "$(cat "$REPO/build/full" 2>/dev/null)" = yes ]; then
        NGINX=$REPO/build/nginx/objs/nginx
    fi
fi

die() { echo "save bench: $*" >&2; exit 1; }

case $MODULE in /*) ;; *) MODULE=$(pwd)/$MODULE ;; esac
case $NGINX in /*) ;; *) NGINX=$(pwd)/$NGINX ;; esac

[ -f "$MODULE" ] || die "no module at $MODULE (run make first)"
[ -x "$NGINX" ] || die "no nginx at $NGINX"
command -v wrk >/dev/null || die "no wrk (make deps)"
command -v curl >/dev/null || die "no curl (make deps)"

W=$(mktemp -d "${TMPDIR:-/tmp}/civchat-save-XXXXXX")
chmod 755 "$W"

cleanup() {
    if [ -f "$W/nginx.pid" ]; then
        kill -TERM "$(cat "$W/nginx.pid")" 2>/dev/null || true
        i=0
        while [ -f "$W/nginx.pid" ] && [ $i -lt 200 ]; do
            sleep 0.05; i=$((i + 1))
        done
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "save bench: kept $W"
    else
        rm -rf "$W"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(perl -MIO::Socket::INET -e '
    print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1",
        LocalPort => 0)->sockport, "\n";')

HOST=shop.example.org
PAGE="https://$HOST/products/espresso-machine-deluxe-3000"
UA="Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"

printf '{"apiKey":"BENCH","url":"%s","referrer":"https://www.google.com/","title":"Espresso Machine"}' \
    "$PAGE" > "$W/page_hit.json"

cat > "$W/post.headers" <<EOF
Host: $HOST
User-Agent: $UA
Accept: */*
Accept-Language: pl-PL,pl;q=0.9,en-US;q=0.8,en;q=0.7
Content-Type: application/json
Origin: http://$HOST
Referer: $PAGE
EOF

user=
[ "$(id -u)" = 0 ] && user="user root;"

conf() {  # $1: state_interval
    cat > "$W/nginx.conf" <<EOF
load_module $MODULE;
pid $W/nginx.pid;
error_log $W/error.log info;
worker_processes $WORKERS;
$user

events {
    worker_connections  8192;
}

http {
    access_log  off;
    keepalive_requests  1000000;
    client_body_temp_path  $W/client_body_temp;
    proxy_temp_path        $W/proxy_temp;
    fastcgi_temp_path      $W/fastcgi_temp;
    uwsgi_temp_path        $W/uwsgi_temp;
    scgi_temp_path         $W/scgi_temp;

    civchat_zone  users  $ZONE  state=$W/civchat.state  state_interval=$1;

    server {
        listen       127.0.0.1:$PORT backlog=4096;
        server_name  $HOST;

        location /civchat/ {
            civchat          zone=users;
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

# the workers of the running nginx, one a line
workers() {
    pgrep -P "$(cat "$W/nginx.pid")" || true
}

# reloads with state_interval $1 and waits for the new workers alone
reload() {
    old=$(workers | sort | paste -sd' ' -)
    conf "$1"
    kill -HUP "$(cat "$W/nginx.pid")"
    i=0
    while :; do
        now=$(workers | sort | paste -sd' ' -)
        n=$(echo "$now" | wc -w)
        gone=1
        for p in $old; do
            case " $now " in *" $p "*) gone=0 ;; esac
        done
        [ "$gone" = 1 ] && [ "$n" -ge "$WORKERS" ] && break
        i=$((i + 1)); [ $i -lt 400 ] || die "the reload did not finish"
        sleep 0.05
    done
}

conf 1h
"$NGINX" -p "$W/" -c "$W/nginx.conf" -e "$W/error.log" \
    || { cat "$W/error.log"; die "nginx did not start"; }

i=0
until curl -s -o /dev/null "http://127.0.0.1:$PORT/"; do
    i=$((i + 1)); [ $i -lt 100 ] || die "nginx does not answer"
    sleep 0.05
done

status() {  # a civchat_status value of the zone
    curl -sS "http://127.0.0.1:$PORT/status" \
        | sed -n "s/^$1{zone=\"users\"} //p"
}

###########################################################################
# the zone: PROFILES known visitors by init, 8 pipelined requests at a
# time on 2 connections; then POOL returning visitors' cookies

cat > "$W/fill.pl" <<'EOF'
use strict;
use utf8;
use IO::Socket::INET;
my ($port, $count, $hf) = @ARGV;
open(my $h, '<', $hf) or die "$hf: $!\n";
my $headers = join('', map { s/\n$//; "$_\r\n" } <$h>);
my @first = qw/Anna Jan Katarzyna Piotr Magdalena Tomasz Agnieszka Michał
    Joanna Krzysztof/;
my @last = qw/Kowalska Nowak Wiśniewska Wójcik Kamińska Lewandowski
    Zielińska Szymański Dąbrowska Woźniak/;
my @cities = qw/Warszawa Kraków Wrocław Poznań Gdańsk Łódź Szczecin Lublin
    Katowice Białystok/;
my @plans = qw/free starter pro business/;
sub request {
    my ($u) = @_;
    my ($f, $l) = ($first[$u % 10], $last[int($u / 10) % 10]);
    my $body = sprintf('{"apiKey":"BENCH","url":"https://shop.example.org/",'
        . '"user_id":"%d","email":"%s.%s.%d@example.org",'
        . '"name":"%s %s","plan":"%s","city":"%s","company":"Acme %d",'
        . '"orders":%d,"newsletter":%s,"language":"pl",'
        . '"lifetime_value":%d.%02d,"signup_date":"2024-%02d-%02d",'
        . '"source":"newsletter"}',
        100000 + $u, lc $f, lc $l, $u, $f, $l, $plans[$u % 4],
        $cities[int($u / 3) % 10], $u % 97, $u % 40,
        $u % 2 ? 'false' : 'true', $u % 900, $u % 100, $u % 12 + 1,
        $u % 28 + 1);
    utf8::encode($body);
    return "POST /civchat/init HTTP/1.1\r\n$headers"
        . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}
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
EOF

cat > "$W/prime.pl" <<'EOF'
use strict;
use IO::Socket::INET;
my ($port, $count, $hf, $bf) = @ARGV;
open(my $h, '<', $hf) or die "$hf: $!\n";
my $headers = join('', map { s/\n$//; "$_\r\n" } <$h>);
open(my $b, '<', $bf) or die; my $body = do { local $/; <$b> };
my $req = "POST /civchat/init HTTP/1.1\r\n$headers"
    . "Content-Length: " . length($body) . "\r\n\r\n$body";
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die "$!\n";
binmode $s;
my $buf = '';
for (1 .. $count) {
    print $s $req;
    my $head;
    while (1) {
        my $i = index($buf, "\r\n\r\n");
        if ($i >= 0) { $head = substr($buf, 0, $i + 4, ''); last; }
        sysread($s, $buf, 65536, length $buf) or die "connection closed\n";
    }
    my $len = $head =~ /^Content-Length:\s*(\d+)/mi ? $1 : 0;
    while (length($buf) < $len) {
        sysread($s, $buf, 65536, length $buf) or die "connection closed\n";
    }
    substr($buf, 0, $len, '');
    $head =~ /^Set-Cookie:\s*(__ca__chat=[^;\r]*)/mi or die "no cookie\n";
    print "$1\n";
}
EOF

T0=$(date +%s)
perl "$W/fill.pl" "$PORT" "$PROFILES" "$W/post.headers" \
    || die "the fill failed"
perl "$W/prime.pl" "$PORT" "$POOL" "$W/post.headers" "$W/page_hit.json" \
    > "$W/cookies" || die "priming the cookies failed"
NPROF=$(status civchat_profiles)
EVICT=$(status civchat_evictions_total)

# one save of the whole zone with no request running
IDLE_FROM=$(wc -c < "$W/error.log")
reload "$INTERVAL"
i=0
until tail -c +$((IDLE_FROM + 1)) "$W/error.log" | grep -q 'saved to'; do
    i=$((i + 1)); [ $i -lt 1200 ] || die "no save within a minute"
    sleep 0.05
done
IDLE=$(tail -c +$((IDLE_FROM + 1)) "$W/error.log" | grep 'saved to' \
       | head -n 1 | sed 's/.*": //')
reload 1h

###########################################################################
# wrk with the cookies of the pool, one request formatted per cookie

cat > "$W/req.lua" <<'EOF'
local threads = 0
local reqs, n, i = {}, 0, 0

function setup(thread)
    thread:set("tid", threads)
    threads = threads + 1
end

function init(args)
    local f = assert(io.open(args[1], "rb"))
    local body = f:read("*a")
    f:close()
    local headers = {}
    for line in io.lines(args[2]) do
        local k, v = line:match("^([^:]+):%s*(.*)$")
        if k then headers[k] = v end
    end
    for line in io.lines(args[3]) do
        if #line > 0 then
            headers["Cookie"] = line
            reqs[#reqs + 1] = wrk.format("POST", "/civchat/page_hit",
                                         headers, body)
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
    io.write(string.format("WRK requests=%d secs=%.3f bad=%d p99=%.3f "
        .. "max=%.3f\n", summary.requests, summary.duration / 1e6,
        e.connect + e.read + e.write + e.timeout + e.status,
        latency:percentile(99) / 1000, latency.max / 1000))
end
EOF

# The memory of every worker of the running nginx, every 2 ms until
# $W/sampling goes: per worker, its peak RssAnon and VmSize in kB
cat > "$W/sample.pl" <<'EOF'
use strict;
use Time::HiRes qw/sleep time/;
my ($pidfile, $flag) = @ARGV;
my (%anon, %size, @pids, $scanned);
while (-e $flag) {
    if (!$scanned || time - $scanned > 0.1) {
        open(my $p, '<', $pidfile) or last;
        my $master = <$p>; chomp $master;
        @pids = ();
        for my $f (glob "/proc/[0-9]*/stat") {
            open(my $h, '<', $f) or next;
            my @F = split ' ', scalar <$h>;
            push @pids, $F[0] if $F[3] == $master;
        }
        $scanned = time;
    }
    for my $pid (@pids) {
        open(my $h, '<', "/proc/$pid/status") or next;
        local $/;
        my $s = <$h>;
        my ($a) = $s =~ /^RssAnon:\s+(\d+)/m;
        my ($v) = $s =~ /^VmSize:\s+(\d+)/m;
        $anon{$pid} = $a if defined $a && $a > ($anon{$pid} // 0);
        $size{$pid} = $v if defined $v && $v > ($size{$pid} // 0);
    }
    sleep 0.002;
}
print "$_ $anon{$_} $size{$_}\n" for sort keys %anon;
EOF

# one timed run; appends "kind round requests secs bad p99 max" to
# $W/runs and the workers' peaks "kind pid anon size" to $W/memory
run() {
    kind=$1 round=$2
    : > "$W/sampling"
    perl "$W/sample.pl" "$W/nginx.pid" "$W/sampling" > "$W/peaks" &
    sampler=$!
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" -s "$W/req.lua" \
        "http://127.0.0.1:$PORT/civchat/page_hit" \
        -- "$W/page_hit.json" "$W/post.headers" "$W/cookies" \
        > "$W/wrk.out" 2>&1 || { cat "$W/wrk.out" >&2; die "wrk failed"; }
    rm -f "$W/sampling"
    wait "$sampler"
    sed -n "s/^WRK /$kind $round /p" "$W/wrk.out" >> "$W/runs"
    sed "s/^/$kind /" "$W/peaks" >> "$W/memory"
}

: > "$W/runs"; : > "$W/memory"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

echo "save bench: $(nproc) CPUs, load $LOAD0; zone $ZONE, $NPROF" \
     "profiles; $ROUNDS rounds of ${DURATION}s with and without saves" >&2

SAVES_FROM=0
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for kind in $( [ $((r % 2)) = 1 ] && echo "saves quiet" \
                   || echo "quiet saves"); do
        if [ "$kind" = saves ]; then
            reload "$INTERVAL"
            # the first save is a whole one after the reload
            sleep 1
            echo "$r $(wc -c < "$W/error.log")" >> "$W/saves_from"
            run saves "$r"
            echo "$r $(wc -c < "$W/error.log")" >> "$W/saves_to"
        else
            reload 1h
            sleep 1
            run quiet "$r"
        fi
    done
    r=$((r + 1))
done
T1=$(date +%s)

###########################################################################
# the saves while wrk ran, from their info lines

perl - "$W/error.log" "$W/saves_from" "$W/saves_to" <<'EOF' > "$W/saves"
use strict;
my ($log, $from, $to) = @ARGV;
open(my $f, '<', $from) or die; my @from = map { (split)[1] } <$f>;
open($f, '<', $to) or die; my @to = map { (split)[1] } <$f>;
open($f, '<', $log) or die;
my $text = do { local $/; <$f> };
for my $i (0 .. $#from) {
    my $part = substr($text, $from[$i], $to[$i] - $from[$i]);
    while ($part =~ /\[info\] (\d+)#\d+: civchat: zone "users" saved to .*?: (\d+) profiles, (\d+) bytes, (\d+) pieces in (\d+)ms(?:, fsync (\d+)ms)?; the lock held (\d+)us in all, at most (\d+)us at a time/g) {
        print "$1 $2 $3 $4 $5 ", $6 // -1, " $7 $8\n";
    }
}
EOF

[ -s "$W/saves" ] || die "no save logged during the runs"

perl - "$W/runs" "$W/memory" "$W/saves" <<'EOF'
use strict;
my ($runs, $memory, $saves) = @ARGV;
sub median { my @v = sort { $a <=> $b } @_; my $n = @v;
    $n % 2 ? $v[$n / 2] : ($v[$n / 2 - 1] + $v[$n / 2]) / 2 }
sub max { my $m = shift; for (@_) { $m = $_ if $_ > $m } $m }

my (@s, %saver);
open(my $f, '<', $saves) or die;
while (<$f>) {
    my %v; @v{qw/pid profiles bytes pieces ms fsync all most/} = split;
    push @s, \%v;
    $saver{$v{pid}} = 1;
}
printf "saves:    %d while wrk ran; each (median) %d profiles, %.1f MiB of"
    . " text in %d pieces, %d ms (fsync %s ms)\n", scalar @s,
    median(map { $_->{profiles} } @s),
    median(map { $_->{bytes} } @s) / 1048576,
    median(map { $_->{pieces} } @s), median(map { $_->{ms} } @s),
    $s[0]{fsync} < 0 ? 'not logged' : median(map { $_->{fsync} } @s);
printf "lock:     held %.1f ms in all a save (median), at most %.3f ms at"
    . " a time (the longest of all saves; median of saves %.3f ms)\n",
    median(map { $_->{all} } @s) / 1000, max(map { $_->{most} } @s) / 1000,
    median(map { $_->{most} } @s) / 1000;

my (@sa, @sv, @qa, @qv);
open($f, '<', $memory) or die;
while (<$f>) {
    my ($kind, $pid, $anon, $size) = split;
    if ($kind eq 'saves' && $saver{$pid}) { push @sa, $anon; push @sv, $size }
    if ($kind eq 'quiet') { push @qa, $anon; push @qv, $size }
}
printf "memory:   the saving worker's peak RssAnon %.1f MiB, VmSize %.1f MiB"
    . " with saves; any worker's without: %.1f MiB, %.1f MiB; ratios %.2f,"
    . " %.2f\n", max(@sa) / 1024, max(@sv) / 1024, max(@qa) / 1024,
    max(@qv) / 1024, max(@sa) / max(@qa), max(@sv) / max(@qv);

my %r;
open($f, '<', $runs) or die;
while (<$f>) {
    my ($kind, $round, @kv) = split;
    my %v = map { split /=/ } @kv;
    $v{rps} = $v{requests} / $v{secs};
    $r{$kind}[$round - 1] = \%v;
}
my @rounds = 0 .. $#{$r{saves}};
my %ratio;
for my $k (qw/p99 max rps/) {
    $ratio{$k} = [ map { $r{saves}[$_]{$k} / $r{quiet}[$_]{$k} } @rounds ];
}
my $bad = 0; $bad += $_->{bad} for @{$r{saves}}, @{$r{quiet}};
printf "page_hit: p99 %.2f ms with saves, %.2f ms without: ratio %.2f"
    . " (rounds: %s)\n", median(map { $_->{p99} } @{$r{saves}}),
    median(map { $_->{p99} } @{$r{quiet}}), median(@{$ratio{p99}}),
    join(' ', map { sprintf '%.2f', $_ } @{$ratio{p99}});
printf "          max %.1f ms with saves, %.1f ms without: ratio %.2f;"
    . " req/s %.0f vs %.0f: ratio %.3f%s\n",
    median(map { $_->{max} } @{$r{saves}}),
    median(map { $_->{max} } @{$r{quiet}}), median(@{$ratio{max}}),
    median(map { $_->{rps} } @{$r{saves}}),
    median(map { $_->{rps} } @{$r{quiet}}), median(@{$ratio{rps}}),
    $bad ? "  ($bad errors or non-2xx!)" : '';
EOF

echo "idle:     a save with no request running: $IDLE"
echo "zone:     $NPROF profiles in $ZONE, $EVICT evicted; state file" \
     "$(( $(wc -c < "$W/civchat.state") / 1048576 )) MiB"
echo "command:  ZONE=$ZONE PROFILES=$PROFILES DURATION=$DURATION" \
     "ROUNDS=$ROUNDS INTERVAL=$INTERVAL CONNECTIONS=$CONNECTIONS" \
     "THREADS=$THREADS WORKERS=$WORKERS sh bench/save.sh" \
     "($(nproc) CPUs, load before $LOAD0, $((T1 - T0))s)"

grep -hE '\[(alert|crit|emerg)\]|exited on signal' "$W/error.log" \
    && echo "save bench: nginx logged problems (above)" || true
