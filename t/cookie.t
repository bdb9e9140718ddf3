#!/usr/bin/perl

# (C) civchat developers

# Tests for the visitor key and cookie: which incoming keys are accepted
# (12 to 32 of [A-Za-z0-9]) or ignored, adoption of unknown keys, cookie
# before body key, and the cookie attributes with every cookie directive
# (name, domain, max-age, httponly; Secure only on https).

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

# https needs a certificate made by the openssl tool and IO::Socket::SSL
# on the client side; without them the https cases are skipped, except
# in CI (CI=true), which has all that util/deps.sh installs

my $ssl = eval { require IO::Socket::SSL; 1 }
	&& system('openssl version >/dev/null 2>&1') == 0;

if ($ssl) {
	my $d = $t->testdir;
	$ssl = system("openssl req -x509 -newkey rsa:2048 -nodes -days 2 "
		. "-subj /CN=localhost -keyout $d/cert.key -out $d/cert.crt "
		. ">/dev/null 2>&1") == 0;
}

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
            civchat  zone=users;
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

    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat  zone=users;
        }

        location /dom/ {
            civchat                zone=users;
            civchat_cookie_domain  example.org;
        }

        location /named/ {
            civchat                  zone=users;
            civchat_cookie_name      vid;
            civchat_cookie_max_age   1d;
            civchat_cookie_httponly  off;
        }

        location /nodom/ {
            civchat                zone=users;
            civchat_cookie_domain  off;
        }
    }

$https
}

EOF

###############################################################################

# the default cookie

my $c = $t->client();
my $r = $c->init({});
my $key = $r->key;
my $line = $r->set_cookie;

like($line, qr/^__ca__chat=\Q$key\E;/, 'cookie name and value first');
my $a = $r->cookie_attrs;
is($a->{path}, '/', 'Path=/');
is($a->{'max-age'}, 31536000, 'Max-Age one year');
is($a->{samesite}, 'Lax', 'SameSite=Lax');
ok($a->{httponly}, 'HttpOnly');
ok(!exists $a->{secure}, 'no Secure on http');
ok(!exists $a->{domain}, 'no Domain by default');
ok(!exists $a->{expires} || $a->{expires} =~ /GMT/, 'Expires, if any');
is(scalar(grep { /^__ca__chat=/ } $r->set_cookies), 1, 'one cookie');

# set on every answer that resolves a user

for my $ep (qw/page_hit update/) {
	$r = $c->post($ep, {});
	is($r->cookie_value, $key, "$ep sets the cookie");
}

$r = $c->event({ event => 'x' });
is($r->cookie_value, $key, 'event sets the cookie');

$r = $c->product_event({ product_id => 'p', event_type => 'view' });
is($r->cookie_value, $key, 'product_event sets the cookie');

# cookie directives

$r = $t->client(base => '/dom/')->init({});
is($r->cookie_attrs->{domain}, 'example.org', 'civchat_cookie_domain');

$r = $t->client(base => '/nodom/')->init({});
ok(!exists $r->cookie_attrs->{domain}, 'civchat_cookie_domain off');

$c = $t->client(base => '/named/', cookie_name => 'vid');
$r = $c->init({});
ok(!defined $r->set_cookie('__ca__chat'), 'custom name: no __ca__chat');
is($r->cookie_value('vid'), $r->key, 'civchat_cookie_name vid');
$a = $r->cookie_attrs('vid');
is($a->{'max-age'}, 86400, 'civchat_cookie_max_age 1d');
ok(!exists $a->{httponly}, 'civchat_cookie_httponly off');
is($a->{samesite}, 'Lax', 'custom cookie: SameSite=Lax');
is($a->{path}, '/', 'custom cookie: Path=/');

$key = $r->key;
$r = $c->init({});
is($r->key, $key, 'custom name read back');

# a __ca__chat cookie is not the custom cookie

$r = $t->request(method => 'POST', path => '/named/init',
	headers => [ 'Content-Type' => 'application/json',
		Cookie => "__ca__chat=$key" ],
	body => '{"apiKey":"TESTKEY"}');
isnt($r->key, $key, 'custom name: __ca__chat not read');

###############################################################################

# incoming keys

sub with_cookie {
	my ($value, $path) = @_;
	return $t->request(method => 'POST', path => $path // '/civchat/init',
		headers => [ 'Content-Type' => 'application/json',
			Cookie => "__ca__chat=$value" ],
		body => '{"apiKey":"TESTKEY"}');
}

sub rand_key {
	my ($n) = @_;
	my @c = ('A' .. 'Z', 'a' .. 'z', 0 .. 9);
	return join('', map { $c[rand @c] } 1 .. $n);
}

for my $n (12, 16, 32) {
	my $k = rand_key($n);
	$r = with_cookie($k);
	is($r->status, 200, "$n characters: 200");
	is($r->key, $k, "$n characters: adopted");
	is($r->cookie_value, $k, "$n characters: cookie kept");

	$r = with_cookie($k);
	is($r->key, $k, "$n characters: known now");
	is($r->user->{page_views}, 2, "$n characters: same profile");
}

my $digits = rand_key(12);
$digits =~ tr/A-Za-z/0-9/;
$r = with_cookie('Ab' . substr($digits, 2));
is($r->key, 'Ab' . substr($digits, 2), 'letters and digits');

for my $bad (
	[ '11 characters', rand_key(11) ],
	[ '33 characters', rand_key(33) ],
	[ 'with a dash', rand_key(8) . '-' . rand_key(8) ],
	[ 'with an underscore', rand_key(8) . '_' . rand_key(8) ],
	[ 'with a dot', rand_key(8) . '.' . rand_key(8) ],
	[ 'non-ASCII letters', rand_key(10) . "\xc5\xbc\xc3\xb3" ],
	[ 'html', '<script>alert(1)</script>' ],
	[ 'quoted', '"' . rand_key(16) . '"' ],
	[ 'percent-encoded', rand_key(8) . '%41' . rand_key(8) ],
	[ 'oversized', rand_key(4000) ],
	[ 'empty', '' ],
	[ 'spaces', rand_key(8) . ' ' . rand_key(8) ],
) {
	my ($name, $value) = @$bad;
	$r = with_cookie($value);
	is($r->status, 200, "$name: 200");
	ok(is_key($r->key), "$name: a new key minted");
	isnt($r->key, $value, "$name: not adopted");
	is($r->cookie_value, $r->key, "$name: cookie replaced");
}

# the same in the body

for my $bad (rand_key(11), rand_key(33), rand_key(8) . '-' . rand_key(8)) {
	$r = $t->post_json('/civchat/init', { apiKey => 'TESTKEY', key => $bad });
	ok(is_key($r->key) && $r->key ne $bad, 'bad body key ignored');
}

$r = $t->post_json('/civchat/init', { apiKey => 'TESTKEY', key => 12345 });
ok(is_key($r->key), 'numeric body key ignored');

$r = $t->post_json('/civchat/init',
	{ apiKey => 'TESTKEY', key => { k => 1 } });
is($r->status, 200, 'object body key: 200');

# the cookie wins over the body

my ($k1, $k2) = (rand_key(16), rand_key(16));
$r = $t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/json',
		Cookie => "__ca__chat=$k1" ],
	body => qq|{"apiKey":"TESTKEY","key":"$k2"}|);
is($r->key, $k1, 'cookie before body key');

# a bad cookie lets the body key through

$r = $t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/json',
		Cookie => "__ca__chat=bad-key" ],
	body => qq|{"apiKey":"TESTKEY","user_key":"$k2"}|);
is($r->key, $k2, 'bad cookie, body key used');

# the cookie among others, and the first of two

$r = $t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/json',
		Cookie => "a=1; __ca__chat=$k1; b=2", Cookie => "c=3" ],
	body => '{"apiKey":"TESTKEY"}');
is($r->key, $k1, 'cookie among others');

$r = $t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/json',
		Cookie => "x__ca__chat=$k2; __ca__chat=$k1" ],
	body => '{"apiKey":"TESTKEY"}');
is($r->key, $k1, 'cookie name not matched as a suffix');

###############################################################################

# https: Secure

SKIP: {
	skip 'no openssl tool or IO::Socket::SSL: https not tested', 4
		unless $ssl;

	$c = $t->client(port => 1, ssl => 1);
	$r = $c->init({});
	is($r->status, 200, 'https: 200');
	$a = $r->cookie_attrs;
	ok($a->{secure}, 'https: Secure');
	ok($a->{httponly}, 'https: HttpOnly');
	is($a->{samesite}, 'Lax', 'https: SameSite=Lax');
}

###############################################################################

$t->done_testing();

###############################################################################
