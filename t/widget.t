#!/usr/bin/perl

# (C) civchat developers

# Tests for serving widget.js: the bytes are widget/widget.min.js (the
# build's minified widget/widget.js) with its %%CIVCHAT_BASE%% replaced by
# the location's base (its path, or civchat_widget_base), never anything
# from the request (the Host header: a cache shared by sites must not be
# poisoned); gzip and brotli copies chosen by Accept-Encoding whatever
# the site's gzip settings, with Vary, each with its own ETag; ETag,
# Last-Modified, 304 on If-None-Match and If-Modified-Since, HEAD,
# Cache-Control (civchat_widget_max_age), query strings; and static checks
# of widget/widget.js itself (one marker, no eval, under 10 KB gzipped).

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;

use IO::Compress::Gzip qw/gzip $GzipError/;
use IO::Uncompress::Gunzip qw/gunzip $GunzipError/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $ssl = eval { require IO::Socket::SSL; 1 }
	&& system('openssl version >/dev/null 2>&1') == 0;

if ($ssl) {
	my $d = $t->testdir;
	$ssl = system("openssl req -x509 -newkey rsa:2048 -nodes -days 2 "
		. "-subj /CN=localhost -keyout $d/cert.key -out $d/cert.crt "
		. ">/dev/null 2>&1") == 0;
}

# CI (CI=true) has everything util/deps.sh installs: https is tested there
Test::More::fail('https tested: IO::Socket::SSL and the openssl tool are '
	. 'there (util/deps.sh installs libio-socket-ssl-perl and openssl)')
	if !$ssl && $ENV{CI};

my $https = $ssl ? <<'EOF' : '';
    server {
        listen               127.0.0.1:%%PORT_1%% ssl;
        server_name          localhost;
        ssl_certificate      %%TESTDIR%%/cert.crt;
        ssl_certificate_key  %%TESTDIR%%/cert.key;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  TESTKEY;
        }
    }
EOF

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  1m;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  TESTKEY;
        }

        location /tracking/v2/ {
            civchat                 zone=users;
            civchat_api_key         TESTKEY;
            civchat_widget_max_age  10m;
        }

        location /cdn/ {
            civchat              zone=users;
            civchat_api_key      TESTKEY;
            civchat_widget_base  https://www.example.org/civchat/;
        }

        location /quoted/ {
            civchat              zone=users;
            civchat_api_key      TESTKEY;
            civchat_widget_base  "/a\\\"b'c\\\\d</script>/";
        }

        location ~ ^/rx/[a-z]+/(widget\\.js|init)\$ {
            civchat              zone=users;
            civchat_api_key      TESTKEY;
        }

        location /sitegzip/ {
            civchat              zone=users;
            civchat_api_key      TESTKEY;

            gzip             on;
            gzip_types       application/javascript;
            gzip_min_length  1;
            gzip_vary        on;
        }
    }

$https
}

EOF

my $port = $t->port(0);
my $js = $t->read_file($t->repo . '/widget/widget.js');
my $min = $t->read_file($t->repo . '/widget/widget.min.js');
my $mark = '%%CIVCHAT_BASE%%';

sub expected {
	my ($base) = @_;
	(my $s = $min // '') =~ s/\Q$mark\E/$base/;
	return $s;
}

###############################################################################

# the script itself

ok(defined $js && length $js, 'widget/widget.js exists');
is(scalar(() = $js =~ /\Q$mark\E/g), 1, 'one %%CIVCHAT_BASE%% marker');
ok($js !~ /\beval\s*\(/, 'no eval(');
ok($js !~ /\bnew\s+Function\s*\(/, 'no new Function(');
ok($js !~ /\bdocument\.write\s*\(/, 'no document.write(');
gzip(\$js => \my $gz) or die "gzip: $GzipError";
ok(length($gz) < 10240, 'under 10 KB gzipped (' . length($gz) . ')');
ok(defined $min && length $min, 'widget/widget.min.js exists');
is(scalar(() = ($min // '') =~ /\Q$mark\E/g), 1,
	'one marker in the minified script');

###############################################################################

# GET

my $r = $t->get('/civchat/widget.js');
is($r->status, 200, 'GET: 200');
like($r->header('Content-Type'), qr{^(application|text)/javascript},
	'GET: javascript');
my $want = expected('/civchat/');
ok($r->body eq $want, 'GET: widget.min.js with the base written in')
	or diag('got ' . length($r->body) . ' bytes, want ' . length($want)
		. ' (rebuild the module after changing widget.js?)');
is($r->header('Content-Length'), length($want), 'GET: Content-Length');
like($r->header('Cache-Control'), qr/^public, max-age=3600$/,
	'GET: Cache-Control public, max-age 1h');
is($r->header('Vary'), 'Accept-Encoding', 'GET: Vary: Accept-Encoding');
ok(!defined $r->header('Content-Encoding'),
	'GET without Accept-Encoding: not encoded');

my $etag = $r->header('ETag');
my $lm = $r->header('Last-Modified');
like($etag, qr/^"[^"]+"$/, 'GET: a strong ETag');
like($lm, qr/^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$/,
	'GET: Last-Modified');
ok(!defined $r->set_cookie, 'GET: no cookie');

# the same again: the same validators

my $r2 = $t->get('/civchat/widget.js');
is($r2->header('ETag'), $etag, 'ETag stable');
is($r2->header('Last-Modified'), $lm, 'Last-Modified stable');

# conditional requests

$r = $t->get('/civchat/widget.js', 'If-None-Match' => $etag);
is($r->status, 304, 'If-None-Match: 304');
is($r->body, '', '304: no body');
is($r->header('ETag'), $etag, '304: ETag');

$r = $t->get('/civchat/widget.js', 'If-None-Match' => '"other"');
is($r->status, 200, 'If-None-Match other: 200');

$r = $t->get('/civchat/widget.js', 'If-None-Match' => "\"x\", $etag");
is($r->status, 304, 'If-None-Match list: 304');

$r = $t->get('/civchat/widget.js', 'If-Modified-Since' => $lm);
is($r->status, 304, 'If-Modified-Since: 304');

$r = $t->get('/civchat/widget.js',
	'If-Modified-Since' => 'Mon, 01 Jan 2001 00:00:00 GMT');
is($r->status, 200, 'If-Modified-Since old: 200');

# HEAD

$r = $t->head('/civchat/widget.js');
is($r->status, 200, 'HEAD: 200');
is($r->body, '', 'HEAD: no body');
is($r->header('Content-Length'), length($want), 'HEAD: Content-Length');
is($r->header('ETag'), $etag, 'HEAD: ETag');

# a query string (cache busting, tag managers)

$r = $t->get('/civchat/widget.js?v=2&x=%20y');
is($r->status, 200, 'query string: same script');
ok($r->body eq $want, 'query string: same script');

###############################################################################

# the base depends on the location alone: the same bytes whatever the
# Host header says, so that a shared cache keeping the answer (it is
# public) hands no site another's base

my @hosts = ('shop.example.org:8443', 'www.example.org', 'evil.example',
	"127.0.0.1:$port");
my %bodies;

for my $host (@hosts) {
	$r = $t->request(method => 'GET', path => '/civchat/widget.js',
		host => $host);
	$bodies{$r->body}++;
	is($r->header('ETag'), $etag, "Host $host: the same ETag");
	like($r->header('Cache-Control') // '', qr/^public\b/,
		"Host $host: Cache-Control public");
}

is(scalar(keys %bodies), 1, 'different Host headers: byte-identical '
	. 'widget.js');
ok(defined $bodies{$want}, 'and it is the script with the location\'s '
	. 'path');

for my $host (@hosts) {
	$r = $t->request(method => 'GET', path => '/civchat/widget.js',
		host => $host, headers => ['Accept-Encoding' => 'gzip, br']);
	$bodies{'enc ' . $r->body}++;
}

is(scalar(keys %bodies), 2, 'and byte-identical compressed');

# a Host that would break out of the JavaScript string is nowhere in it

$r = $t->request(method => 'GET', path => '/civchat/widget.js',
	host => 'a"b\'c');
ok($r->status == 400 || $r->body eq $want,
	'a Host with quotes changes nothing');

$r = $t->get('/tracking/v2/widget.js');
ok($r->body eq expected('/tracking/v2/'), 'the base is the location');
like($r->header('Cache-Control'), qr/\bmax-age=600\b/,
	'civchat_widget_max_age 10m');
isnt($r->header('ETag'), $etag, 'another base, another ETag');

$r = $t->get('/cdn/widget.js');
ok($r->body eq expected('https://www.example.org/civchat/'),
	'civchat_widget_base');

$r = $t->get('/quoted/widget.js');
ok($r->body eq expected('/a%22b%27c%5Cd%3C/script%3E/'),
	'civchat_widget_base: what could end the string is %-encoded')
	or diag(substr($r->body, 0, 200));

$r = $t->get('/rx/x/widget.js');
ok($r->body eq expected('./'), 'a regex location: "./", the script\'s '
	. 'own directory');
$r = $t->post_json('/rx/x/init', { apiKey => 'TESTKEY' });
is($r->status, 200, 'whose init answers beside it');

# the base URL works with the endpoints it names

$r = $t->post_json('/tracking/v2/init', { apiKey => 'TESTKEY' });
is($r->status, 200, 'the base location answers init');

###############################################################################

# compressed from memory: gzip and brotli copies, chosen by
# Accept-Encoding (q-values, "*", x-gzip), in any location; each coding
# has its own ETag and Content-Length

my %want_size;

sub brotli_decode {
	my ($data) = @_;
	my $f = $t->testdir() . '/in.br';
	$t->write_file($f, $data);
	my $out = `brotli -d -c $f 2>&1`;
	return $? == 0 ? $out : undef;
}

sub coded {
	my ($path, $ae) = @_;
	my $r = $t->get($path, defined $ae ? ('Accept-Encoding' => $ae) : ());
	return ($r->header('Content-Encoding') // 'identity', $r);
}

my @cases = (
	[ 'gzip', 'gzip' ],
	[ 'GZIP', 'gzip' ],
	[ 'x-gzip', 'gzip' ],
	[ 'br', 'br' ],
	[ 'gzip, deflate, br', 'br' ],
	[ 'gzip, deflate, br, zstd', 'br' ],
	[ 'br;q=0.5, gzip', 'gzip' ],
	[ 'br;q=0.5, gzip;q=0.4', 'br' ],
	[ 'gzip;q=0, br;q=0', 'identity' ],
	[ 'gzip;q=0.000', 'identity' ],
	[ 'gzip; q=0.001', 'gzip' ],
	[ '*', 'br' ],
	[ '*;q=0, gzip', 'gzip' ],
	[ 'br;q=0, *', 'gzip' ],
	[ 'identity', 'identity' ],
	[ 'deflate', 'identity' ],
	[ 'gzipx, xbr', 'identity' ],
	[ '', 'identity' ],
);

for my $c (@cases) {
	my ($coding, $r) = coded('/civchat/widget.js', $c->[0]);
	is($coding, $c->[1], "Accept-Encoding '$c->[0]': $c->[1]");
}

my %etags;

for my $coding (qw/gzip br/) {
	my ($got, $r) = coded('/civchat/widget.js', $coding);
	my $body = $r->body;
	my $plain;

	if ($coding eq 'gzip') {
		gunzip(\$body => \$plain) or diag("gunzip: $GunzipError");
	} else {
		$plain = brotli_decode($body);
		ok(defined $plain, 'the brotli tool decodes it') or diag(
			'no brotli tool? (util/deps.sh installs Debian\'s brotli)');
	}

	ok(defined $plain && $plain eq $want, "$coding: decodes to the script");
	is($r->header('Content-Length'), length($body),
		"$coding: Content-Length of the $coding copy");
	cmp_ok(length($body), '<=', 6144, "$coding: at most 6 KB as served ("
		. length($body) . ' bytes)');
	is($r->header('Vary'), 'Accept-Encoding', "$coding: Vary");
	like($r->header('Cache-Control') // '', qr/^public, /,
		"$coding: Cache-Control public");
	like($r->header('Content-Type') // '', qr{^application/javascript},
		"$coding: Content-Type");

	my $e = $r->header('ETag') // '';
	like($e, qr/^"[^"]+"$/, "$coding: a strong ETag");
	$etags{$e}++;

	$r = $t->get('/civchat/widget.js', 'Accept-Encoding' => $coding,
		'If-None-Match' => $e);
	is($r->status, 304, "$coding: its ETag: 304");
	is($r->header('ETag') // '', $e, "$coding: 304 with its ETag");

	$r = $t->get('/civchat/widget.js', 'Accept-Encoding' => $coding,
		'If-None-Match' => $etag);
	is($r->status, 200, "$coding: the unencoded script's ETag: 200");

	$r = $t->get('/civchat/widget.js', 'If-None-Match' => $e);
	is($r->status, 200, "$coding: its ETag without $coding: 200");

	$r = $t->head('/civchat/widget.js', 'Accept-Encoding' => $coding);
	ok($r->header('Content-Length') == length($body) && $r->body eq '',
		"$coding: HEAD");
}

$etags{$etag}++;
is(scalar(keys %etags), 3, 'three codings, three ETags');

# nginx's own gzip on in the location: the answer is encoded once

my ($coding, $sg) = coded('/sitegzip/widget.js', 'gzip');
my $plain = '';
gunzip(\$sg->body => \$plain);
ok($coding eq 'gzip' && $plain eq expected('/sitegzip/'),
	'with the site\'s gzip on: gzipped once');
($coding, $sg) = coded('/sitegzip/widget.js', 'br');
is($coding, 'br', 'with the site\'s gzip on: brotli still');

# https: the same script (the base does not name the scheme)

SKIP: {
	skip 'no openssl tool or IO::Socket::SSL: https not tested', 1
		unless $ssl;

	$r = $t->request(method => 'GET', path => '/civchat/widget.js',
		port => 1, ssl => 1);
	ok($r->body eq $want, 'https: the same script');
}

###############################################################################

$t->done_testing();

###############################################################################
