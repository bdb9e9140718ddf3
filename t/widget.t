#!/usr/bin/perl

# (C) civchat developers

# Tests for serving widget.js: the bytes are widget/widget.js with its
# %%CIVCHAT_BASE%% replaced by the location's base URL (from the request,
# or civchat_widget_base), ETag, Last-Modified, 304 on If-None-Match and
# If-Modified-Since, HEAD, Cache-Control (civchat_widget_max_age), query
# strings; and static checks of widget/widget.js itself (one marker, no
# eval, under 10 KB gzipped).

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;

use IO::Compress::Gzip qw/gzip $GzipError/;

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
    }

$https
}

EOF

my $port = $t->port(0);
my $js = $t->read_file($t->repo . '/widget/widget.js');
my $mark = '%%CIVCHAT_BASE%%';

sub expected {
	my ($base) = @_;
	(my $s = $js) =~ s/\Q$mark\E/$base/;
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

###############################################################################

# GET

my $r = $t->get('/civchat/widget.js');
is($r->status, 200, 'GET: 200');
like($r->header('Content-Type'), qr{^(application|text)/javascript},
	'GET: javascript');
my $want = expected("http://127.0.0.1:$port/civchat/");
ok($r->body eq $want, 'GET: widget.js with the base written in')
	or diag('got ' . length($r->body) . ' bytes, want ' . length($want)
		. ' (rebuild the module after changing widget.js?)');
is($r->header('Content-Length'), length($want), 'GET: Content-Length');
like($r->header('Cache-Control'), qr/\bmax-age=3600\b/,
	'GET: Cache-Control max-age 1h');

my $etag = $r->header('ETag');
my $lm = $r->header('Last-Modified');
like($etag, qr/^(W\/)?"[^"]+"$/, 'GET: ETag');
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
is($r->status, 200, 'query string: 200');
ok($r->body eq $want, 'query string: same script');

# the base follows the Host header and the location

$r = $t->request(method => 'GET', path => '/civchat/widget.js',
	host => 'shop.example.org:8443');
ok($r->body eq expected('http://shop.example.org:8443/civchat/'),
	'base from the Host header');

$r = $t->request(method => 'GET', path => '/civchat/widget.js',
	host => 'www.example.org');
ok($r->body eq expected('http://www.example.org/civchat/'),
	'base from a Host without a port');

$r = $t->get('/tracking/v2/widget.js');
ok($r->body eq expected("http://127.0.0.1:$port/tracking/v2/"),
	'base from the location');
like($r->header('Cache-Control'), qr/\bmax-age=600\b/,
	'civchat_widget_max_age 10m');

$r = $t->get('/cdn/widget.js');
ok($r->body eq expected('https://www.example.org/civchat/'),
	'civchat_widget_base');

# a Host that would break out of the JavaScript string is not written
# into the script as is

$r = $t->request(method => 'GET', path => '/civchat/widget.js',
	host => 'a"b\'c');
ok($r->status == 400 || index($r->body, 'a"b\'c') < 0,
	'a Host with quotes is not written raw');

# the base URL works with the endpoints it names

$r = $t->post_json('/tracking/v2/init', { apiKey => 'TESTKEY' });
is($r->status, 200, 'the base location answers init');

# https

SKIP: {
	skip 'no openssl tool or IO::Socket::SSL: https not tested', 1
		unless $ssl;

	my $p1 = $t->port(1);
	$r = $t->request(method => 'GET', path => '/civchat/widget.js',
		port => 1, ssl => 1);
	ok($r->body eq expected("https://127.0.0.1:$p1/civchat/"),
		'https: base with https://');
}

###############################################################################

$t->done_testing();

###############################################################################
