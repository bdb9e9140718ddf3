#!/bin/sh
# civchat: instructions per request, counted by callgrind: the same
# three requests as bench/run.sh (page_hit, p.gif, init) against nginx
# with the module and nginx without it.  Unlike a rate on a shared
# machine these counts do not move from run to run, so they show what a
# change to the code did.  Measures and prints; asserts nothing.
#
#   sh bench/instructions.sh        (after make; needs valgrind)
#
# Each nginx runs as one process (master_process off) under
# valgrind --tool=callgrind; a Perl client sends COUNT requests (1000) of
# each kind over one keep-alive connection between callgrind_control -z
# (zero the counters) and -d (dump them), so start-up is not counted.
# Printed per request: every instruction of the process (nginx, the
# module, libc, the kernel not counted) and those under the module's
# handler.  Environment: COUNT, NGINX, MODULE, KEEP=1.

set -euf

REPO=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-1000}
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${MODULE:-$REPO/build/ngx_http_civchat_module.so}

die() { echo "instructions: $*" >&2; exit 1; }

[ -f "$MODULE" ] || die "no module at $MODULE (run make first)"
command -v valgrind >/dev/null || die "no valgrind (apt-get install valgrind)"
command -v callgrind_control >/dev/null || die "no callgrind_control"

W=$(mktemp -d "${TMPDIR:-/tmp}/civchat-insn-XXXXXX")
chmod 755 "$W"

cleanup() {
    for d in m b; do
        [ -f "$W/$d/nginx.pid" ] && kill "$(cat "$W/$d/nginx.pid")" \
            2>/dev/null || true
    done
    sleep 1
    if [ "${KEEP:-0}" = 1 ]; then echo "instructions: kept $W"; else
        rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

set -- $(perl -MIO::Socket::INET -e '
    my @s = map { IO::Socket::INET->new(Listen => 1,
        LocalAddr => "127.0.0.1", LocalPort => 0) or die $! } 1 .. 2;
    print join(" ", map { $_->sockport } @s), "\n";')
PM=$1 PB=$2

user=
[ "$(id -u)" = 0 ] && user="user root;"

# one nginx: $1 directory, $2 port, $3 load_module line, $4 locations
conf() {
    mkdir -p "$W/$1"
    cat > "$W/$1/nginx.conf" <<EOF
$3
pid $W/$1/nginx.pid;
error_log $W/$1/error.log notice;
master_process off;
daemon off;
$user
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $W/$1/body;
    proxy_temp_path $W/$1/proxy;
    fastcgi_temp_path $W/$1/fastcgi;
    uwsgi_temp_path $W/$1/uwsgi;
    scgi_temp_path $W/$1/scgi;
    log_format track escape=json '{"id":"\$request_id","ts":\$msec,'
        '"site":"\$arg_apiKey","type":"page_view","uid":"\$uid_got\$uid_set",'
        '"url":"\$http_referer","ip":"\$remote_addr",'
        '"user_agent":"\$http_user_agent",'
        '"language":"\$http_accept_language","status":\$status}';
    $5
    server {
        listen 127.0.0.1:$2;
        server_name shop.example.org;
$4
    }
}
EOF
}

conf m "$PM" "load_module $MODULE;" "
        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  BENCH;
            civchat_store    file=$W/m/events.ndjson flush=1s;
        }" "civchat_zone users 64m;"

conf b "$PB" "" "
        location /civchat/ {
            return 204;
        }
        location = /civchat/p.gif {
            userid          on;
            userid_name     uid;
            userid_expires  365d;
            empty_gif;
            access_log      $W/b/track.ndjson track buffer=64k flush=1s;
        }" ""

# the client: COUNT requests of one kind over one connection; with a
# cookie file, one cookie of it a request in turn; without, the cookies
# the answers set are printed (the visitors for the next kinds)
cat > "$W/drive.pl" <<'EOF'
use strict;
use IO::Socket::INET;
my ($port, $count, $method, $path, $body, $cookies, $name) = @ARGV;
my $ua = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 '
    . '(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36';
my $page = 'https://shop.example.org/products/espresso-machine-deluxe-3000'
    . '?utm_source=newsletter&utm_medium=email&utm_campaign=spring-sale';
my @c = ('');
if ($cookies ne '-') {
    open(my $f, '<', $cookies) or die "$cookies: $!\n";
    @c = grep { length } map { chomp; $_ } <$f>;
}
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die "$!\n";
binmode $s;
my $buf = '';
for my $i (1 .. $count) {
    my $ck = $c[$i % @c];
    print $s "$method $path HTTP/1.1\r\nHost: shop.example.org\r\n"
        . "User-Agent: $ua\r\nAccept: */*\r\n"
        . "Accept-Language: pl-PL,pl;q=0.9,en-US;q=0.8,en;q=0.7\r\n"
        . "Origin: http://shop.example.org\r\nReferer: $page\r\n"
        . ($ck ne '' ? "Cookie: $ck\r\n" : '')
        . ($body ne '-' ? "Content-Type: application/json\r\n"
            . 'Content-Length: ' . length($body) . "\r\n" : '')
        . "\r\n" . ($body ne '-' ? $body : '');
    my $head;
    while (1) {
        my $k = index($buf, "\r\n\r\n");
        if ($k >= 0) { $head = substr($buf, 0, $k + 4, ''); last; }
        sysread($s, $buf, 65536, length $buf) or die "closed\n";
    }
    $head =~ m{^HTTP/1\.1 2} or die "not 2xx: $head";
    print "$1\n" if $cookies eq '-' && $name ne '-'
        && $head =~ /^Set-Cookie:\s*(\Q$name\E=[^;\r]*)/mi;
    my $len = $head =~ /^Content-Length:\s*(\d+)/mi ? $1 : 0;
    while (length($buf) < $len) {
        sysread($s, $buf, 65536, length $buf) or die "closed\n";
    }
    substr($buf, 0, $len, '');
}
EOF

PAGE='https://shop.example.org/products/espresso-machine-deluxe-3000?utm_source=newsletter&utm_medium=email&utm_campaign=spring-sale'
HIT="{\"apiKey\":\"BENCH\",\"url\":\"$PAGE\",\"referrer\":\"https://shop.example.org/category/coffee-machines?page=2&sort=price-asc\",\"title\":\"Espresso Machine Deluxe 3000 | Coffee Machines | Shop Example\"}"
INIT="{\"apiKey\":\"BENCH\",\"url\":\"$PAGE\",\"referrer\":\"https://www.google.com/\",\"title\":\"Espresso Machine Deluxe 3000 | Coffee Machines | Shop Example\",\"language\":\"pl-PL\",\"resolution\":\"1920x1080\",\"timezone\":\"Europe/Warsaw\"}"

for d in m b; do
    port=$PM; [ $d = b ] && port=$PB
    valgrind --tool=callgrind --callgrind-out-file="$W/$d/callgrind.%p" \
        "$NGINX" -p "$W/$d/" -c "$W/$d/nginx.conf" > "$W/$d/valgrind.log" 2>&1 &
    i=0
    until curl -s -o /dev/null "http://127.0.0.1:$port/"; do
        i=$((i + 1)); [ $i -lt 600 ] || die "nginx ($d) does not answer"
        sleep 0.1
    done
done

# visitors first (not counted): the module's and userid's cookies
perl "$W/drive.pl" "$PM" 200 POST /civchat/init "$INIT" - __ca__chat \
    > "$W/m.cookies"
perl "$W/drive.pl" "$PB" 200 GET "/civchat/p.gif?apiKey=BENCH" - - uid \
    > "$W/b.cookies"

# one kind on one side: $1 side, $2 name, then the client's arguments
count() {
    side=$1 name=$2; shift 2
    pid=$(cat "$W/$side/nginx.pid")
    callgrind_control -z "$pid" > /dev/null
    perl "$W/drive.pl" "$@" > /dev/null
    callgrind_control -d "$name" "$pid" > /dev/null
}

count m page_hit "$PM" "$COUNT" POST /civchat/page_hit "$HIT" "$W/m.cookies" -
count b page_hit "$PB" "$COUNT" POST /civchat/page_hit "$HIT" "$W/m.cookies" -
count m pixel "$PM" "$COUNT" GET "/civchat/p.gif?apiKey=BENCH" - \
    "$W/m.cookies" -
count b pixel "$PB" "$COUNT" GET "/civchat/p.gif?apiKey=BENCH" - \
    "$W/b.cookies" -
count m init "$PM" "$COUNT" POST /civchat/init "$INIT" - -
count b init "$PB" "$COUNT" POST /civchat/init "$INIT" - -

# per request: all instructions, and those under the module's handler
per_request() {
    f=$(find "$W/$1" -name 'callgrind.*' \
        -exec grep -l "^desc: Trigger: dump $2$" {} + | head -n 1)
    callgrind_annotate --inclusive=yes "$f" 2>/dev/null | perl -ne '
        BEGIN { ($n, $t, $h) = (shift, 0, 0) }
        next unless /^\s*([\d,]+) /;
        (my $v = $1) =~ s/,//g;
        $t ||= $v if /PROGRAM TOTALS/;
        $h ||= $v if /ngx_http_civchat_handler /;
        END { printf "%d %d\n", $t / $n, $h / $n }' "$COUNT"
}

echo "civchat instructions per request (callgrind, $COUNT requests each," \
     "$(date -u +%Y-%m-%dT%H:%MZ)): nginx with the module vs without"
printf '%-9s %-21s %9s %9s  %9s  %s\n' test baseline module handler \
    baseline 'module / baseline'

for t in page_hit:return_204 pixel:userid+empty_gif+log init:return_204; do
    name=${t%%:*} base=$(echo "${t#*:}" | tr _ ' ')
    set -- $(per_request m "$name") $(per_request b "$name")
    printf '%-9s %-21s %9d %9d  %9d  %.2f\n' "$name" "$base" "$1" "$2" \
        "$3" "$(echo "$1 $3" | awk '{ print $1 / $2 }')"
done

echo "command: COUNT=$COUNT sh bench/instructions.sh"
