#!/usr/bin/perl

# (C) civchat developers

# Tests for the error answers: every error code of the README with its
# status and {"error", "detail"} body, the Allow header of 405, 413 by
# Content-Length and by chunked body, 415, and CORS (preflight from an
# allowed and from a forbidden origin).

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

$t->config(<<'EOF')->run();

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
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location /small/ {
            civchat             zone=users;
            civchat_api_key     TESTKEY;
            civchat_store       file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_body_limit  1k;
        }

        location /cors/ {
            civchat               zone=users;
            civchat_api_key       TESTKEY;
            civchat_store         file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_allow_origin  https://shop.example.org
                                  https://www.example.org;
        }

        location /any/ {
            civchat               zone=users;
            civchat_api_key       TESTKEY;
            civchat_store         file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_allow_origin  *;
        }
    }
}

EOF

my $ok = '{"apiKey":"TESTKEY"}';
my $big = '{"apiKey":"TESTKEY","pad":"' . ('x' x 70000) . '"}';

###############################################################################

$t->run_cases([

	# 400 invalid_json

	{ name => 'malformed', body => '{"apiKey":"TESTKEY",',
		status => 400, error => 'invalid_json' },
	{ name => 'truncated', body => '{"apiKey":"TESTKEY","name":"Jo',
		status => 400, error => 'invalid_json' },
	{ name => 'trailing comma', body => '{"apiKey":"TESTKEY",}',
		status => 400, error => 'invalid_json' },
	{ name => 'empty body', body => '',
		status => 400, error => 'invalid_json' },
	{ name => 'no body', body => undef,
		status => 400, error => 'invalid_json' },
	{ name => 'array', body => '[{"apiKey":"TESTKEY"}]',
		status => 400, error => 'invalid_json' },
	{ name => 'string', body => '"TESTKEY"',
		status => 400, error => 'invalid_json' },
	{ name => 'number', body => '42',
		status => 400, error => 'invalid_json' },
	{ name => 'null', body => 'null',
		status => 400, error => 'invalid_json' },
	{ name => 'two objects', body => $ok . $ok,
		status => 400, error => 'invalid_json' },
	{ name => 'invalid_json on update', path => 'update', body => '{',
		status => 400, error => 'invalid_json' },
	{ name => 'invalid_json on event', path => 'event', body => '{',
		status => 400, error => 'invalid_json' },

	# 400 missing_field, the detail names the field

	{ name => 'no apiKey', body => {},
		status => 400, error => 'missing_field', detail => qr/apiKey/ },
	{ name => 'no apiKey on page_hit', path => 'page_hit',
		body => { name => 'x' },
		status => 400, error => 'missing_field', detail => qr/apiKey/ },
	{ name => 'no apiKey on reset_auth', path => 'reset_auth', body => {},
		status => 400, error => 'missing_field', detail => qr/apiKey/ },
	{ name => 'no apiKey on update', path => 'update', body => {},
		status => 400, error => 'missing_field', detail => qr/apiKey/ },
	{ name => 'empty apiKey', body => { apiKey => '' },
		status => 400, error => 'missing_field', detail => qr/apiKey/ },
	{ name => 'no event', path => 'event',
		body => { apiKey => 'TESTKEY', attributes => {} },
		status => 400, error => 'missing_field', detail => qr/event/ },
	{ name => 'no product_id', path => 'product_event',
		body => { apiKey => 'TESTKEY', event_type => 'purchase' },
		status => 400, error => 'missing_field', detail => qr/product_id/ },
	{ name => 'no event_type', path => 'product_event',
		body => { apiKey => 'TESTKEY', product_id => 'p1' },
		status => 400, error => 'missing_field', detail => qr/event_type/ },

	# 400 invalid_event

	{ name => 'blank event name', path => 'event',
		body => { apiKey => 'TESTKEY', event => '   ' },
		status => 400, error => 'invalid_event', detail => qr/event/ },
	{ name => 'unknown event_type', path => 'product_event',
		body => { apiKey => 'TESTKEY', product_id => 'p1',
			event_type => 'buy' },
		status => 400, error => 'invalid_event', detail => qr/event_type/ },
	{ name => 'attributes an array', path => 'event',
		body => { apiKey => 'TESTKEY', event => 'x', attributes => [1] },
		status => 400, error => 'invalid_event', detail => qr/attributes/ },
	{ name => 'attributes a string', path => 'event',
		body => { apiKey => 'TESTKEY', event => 'x', attributes => 'a=1' },
		status => 400, error => 'invalid_event', detail => qr/attributes/ },

	# 403 invalid_api_key

	{ name => 'unknown apiKey', body => { apiKey => 'WRONGKEY' },
		status => 403, error => 'invalid_api_key' },
	{ name => 'apiKey of another case', body => { apiKey => 'testkey' },
		status => 403, error => 'invalid_api_key' },
	{ name => 'unknown api_key', body => { api_key => 'WRONGKEY' },
		status => 403, error => 'invalid_api_key' },
	{ name => 'unknown apiKey on event', path => 'event',
		body => { apiKey => 'WRONGKEY', event => 'x' },
		status => 403, error => 'invalid_api_key' },

	# 404 not_found

	{ name => 'unknown endpoint', path => 'nope', body => $ok,
		status => 404, error => 'not_found' },
	{ name => 'unknown endpoint GET', method => 'GET', path => 'nope',
		status => 404, error => 'not_found' },
	{ name => 'location root', method => 'GET', path => '',
		status => 404, error => 'not_found' },
	{ name => 'endpoint with a suffix', path => 'init/x', body => $ok,
		status => 404, error => 'not_found' },
	{ name => 'endpoint prefix', path => 'ini', body => $ok,
		status => 404, error => 'not_found' },

	# 405 method_not_allowed, with Allow

	(map {
		my ($m, $p) = @$_;
		{ name => "$m $p", method => $m, path => $p,
			status => 405, error => 'method_not_allowed',
			header => { Allow => qr/\bPOST\b/ } }
	} [GET => 'init'], [GET => 'page_hit'], [PUT => 'update'],
		[DELETE => 'event'], [PATCH => 'product_event'],
		[GET => 'reset_auth']),

	{ name => 'HEAD init (no body)', method => 'HEAD', path => 'init',
		status => 405, header => { Allow => qr/\bPOST\b/ } },

	{ name => 'POST widget.js', path => 'widget.js', body => $ok,
		status => 405, error => 'method_not_allowed',
		header => { Allow => qr/^(?=.*\bGET\b)(?=.*\bHEAD\b)/ } },
	{ name => 'DELETE widget.js', method => 'DELETE', path => 'widget.js',
		status => 405, error => 'method_not_allowed',
		header => { Allow => qr/\bGET\b/ } },

	# 413 body_too_large

	{ name => 'over the limit, Content-Length', body => $big,
		status => 413, error => 'body_too_large' },
	{ name => 'over the limit, chunked', body => $big, chunked => 4096,
		status => 413, error => 'body_too_large' },
	{ name => 'over the limit, one big chunk', body => $big,
		chunked => 100000,
		status => 413, error => 'body_too_large' },
	{ name => 'over a 1k limit', path => '/small/init',
		body => '{"apiKey":"TESTKEY","pad":"' . ('x' x 2000) . '"}',
		status => 413, error => 'body_too_large' },
	{ name => 'over a 1k limit, chunked', path => '/small/init',
		body => '{"apiKey":"TESTKEY","pad":"' . ('x' x 2000) . '"}',
		chunked => 100,
		status => 413, error => 'body_too_large' },
	{ name => 'under a 1k limit', path => '/small/init',
		body => '{"apiKey":"TESTKEY","pad":"' . ('x' x 900) . '"}',
		status => 200 },
	{ name => 'under a 1k limit, chunked', path => '/small/init',
		body => '{"apiKey":"TESTKEY","pad":"' . ('x' x 900) . '"}',
		chunked => 100, status => 200 },

	# 415 unsupported_media_type

	(map {
		{ name => "content type $_", body => $ok,
			headers => [ 'Content-Type' => $_ ],
			status => 415, error => 'unsupported_media_type' }
	} 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x',
		'image/png', 'application/octet-stream', 'text/html'),

	{ name => 'form-urlencoded body', headers =>
		[ 'Content-Type' => 'application/x-www-form-urlencoded' ],
		body => 'apiKey=TESTKEY&name=x',
		status => 415, error => 'unsupported_media_type' },
]);

# the error answers carry no cookie and write no event

my $r = $t->post_json('/civchat/init', { apiKey => 'WRONGKEY' });
ok(!defined $r->set_cookie, 'error: no cookie');

###############################################################################

# CORS

my $allowed = 'https://shop.example.org';

# preflight from an allowed origin

$r = $t->request(method => 'OPTIONS', path => '/cors/init', headers => [
	Origin => $allowed,
	'Access-Control-Request-Method' => 'POST',
	'Access-Control-Request-Headers' => 'content-type',
]);
like($r->status, qr/^20[04]$/, 'preflight allowed: 2xx');
is($r->header('Access-Control-Allow-Origin'), $allowed,
	'preflight allowed: Allow-Origin echoes the origin');
is($r->header('Access-Control-Allow-Credentials'), 'true',
	'preflight allowed: credentials');
like($r->header('Access-Control-Allow-Methods'), qr/\bPOST\b/,
	'preflight allowed: POST');
like($r->header('Access-Control-Allow-Headers') // '', qr/content-type/i,
	'preflight allowed: Content-Type header');
ok(!defined $r->set_cookie, 'preflight: no cookie');

# the second allowed origin, on another endpoint

$r = $t->request(method => 'OPTIONS', path => '/cors/event', headers => [
	Origin => 'https://www.example.org',
	'Access-Control-Request-Method' => 'POST',
]);
like($r->status, qr/^20[04]$/, 'preflight second origin');
is($r->header('Access-Control-Allow-Origin'), 'https://www.example.org',
	'preflight second origin: Allow-Origin');

# preflight from a forbidden origin

$r = $t->request(method => 'OPTIONS', path => '/cors/init', headers => [
	Origin => 'https://evil.example.com',
	'Access-Control-Request-Method' => 'POST',
]);
is($r->status, 403, 'preflight forbidden: 403');
is($r->error, 'origin_not_allowed', 'preflight forbidden: code');
ok(!defined $r->header('Access-Control-Allow-Origin'),
	'preflight forbidden: no Allow-Origin');

# an origin that only starts like an allowed one

$r = $t->request(method => 'OPTIONS', path => '/cors/init', headers => [
	Origin => 'https://shop.example.org.evil.com',
	'Access-Control-Request-Method' => 'POST',
]);
is($r->status, 403, 'preflight look-alike origin: 403');

# the actual requests

my $c = $t->client(base => '/cors/', headers => [ Origin => $allowed ]);
$r = $c->init({});
is($r->status, 200, 'cross-origin allowed: 200');
is($r->header('Access-Control-Allow-Origin'), $allowed,
	'cross-origin allowed: Allow-Origin');
is($r->header('Access-Control-Allow-Credentials'), 'true',
	'cross-origin allowed: credentials');
ok(is_key($r->key), 'cross-origin allowed: key');

$c = $t->client(base => '/cors/',
	headers => [ Origin => 'https://evil.example.com' ]);
$r = $c->init({});
is($r->status, 403, 'cross-origin forbidden: 403');
is($r->error, 'origin_not_allowed', 'cross-origin forbidden: code');
like($r->json->{detail} // '', qr/\w+ \w+/, 'cross-origin forbidden: detail');
ok(!defined $r->set_cookie, 'cross-origin forbidden: no cookie');

# no allow list: other origins are refused, the same origin is not

$c = $t->client(headers => [ Origin => $allowed ]);
$r = $c->init({});
is($r->status, 403, 'no allow list: cross-origin 403');
is($r->error, 'origin_not_allowed', 'no allow list: code');

my $port = $t->port(0);
$c = $t->client(headers => [ Origin => "http://127.0.0.1:$port" ]);
$r = $c->init({});
is($r->status, 200, 'same origin: 200');

$c = $t->client();
is($c->init({})->status, 200, 'no Origin: 200');

# "*": any origin, echoed (credentials forbid "*")

$c = $t->client(base => '/any/',
	headers => [ Origin => 'https://anything.example.net' ]);
$r = $c->init({});
is($r->status, 200, 'allow *: 200');
is($r->header('Access-Control-Allow-Origin'),
	'https://anything.example.net', 'allow *: origin echoed');

###############################################################################

# keep-alive: an error answered before the body was read must not leave
# the body to be read as the next request on the connection

sub ka {
	my ($method, $path, $ct, $body, %h) = @_;
	my $r = "$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\n";
	$r .= "Content-Type: $ct\r\n" if defined $ct;
	$r .= "$_: $h{$_}\r\n" for sort keys %h;
	$r .= "Content-Length: " . length($body) . "\r\n" if defined $body;
	return $r . "\r\n" . ($body // '');
}

my $last = "GET /civchat/widget.js HTTP/1.1\r\nHost: 127.0.0.1\r\n"
	. "Connection: close\r\n\r\n";

# a body that is itself a request, to show a body taken for one
my $evil = "GET /civchat/nope HTTP/1.1\r\nHost: x\r\n\r\n";

for my $case (
	[ 'valid init', ka('POST', '/civchat/init', 'application/json', $ok),
		200 ],
	[ '415', ka('POST', '/civchat/init', 'application/x-www-form-urlencoded',
		$evil), 415 ],
	[ '405', ka('PUT', '/civchat/init', 'application/json', $evil), 405 ],
	[ '404', ka('POST', '/civchat/nope', 'application/json', $evil), 404 ],
	[ '403 origin', ka('POST', '/civchat/init', 'application/json', $evil,
		Origin => 'https://evil.example.com'), 403 ],
	[ '403 api key', ka('POST', '/civchat/init', 'application/json',
		'{"apiKey":"WRONG"}'), 403 ],
	[ '400 json', ka('POST', '/civchat/init', 'application/json', $evil),
		400 ],
	[ 'preflight with a body', ka('OPTIONS', '/cors/init', 'text/plain',
		$evil, Origin => $allowed,
		'Access-Control-Request-Method' => 'POST'), qr/^20[04]$/ ],
	[ 'widget.js with a body', ka('GET', '/civchat/widget.js', 'text/plain',
		$evil), 200 ],
) {
	my ($name, $req, $status) = @$case;
	my @r = Civchat::Response->parse_many($t->http($req . $last));
	my $want = ref $status ? $status : qr/^$status$/;
	like($r[0] ? $r[0]->status : 0, $want, "keep-alive $name: answer");
	my $next = $r[1];
	ok($next && $next->status == 200 && $next->body =~ /\S/
		&& ($next->header('Content-Type') // '') =~ /javascript/,
		"keep-alive $name: the next request answered")
		or diag(join("\n---\n", map { $_->describe } @r));
	is(scalar @r, 2, "keep-alive $name: two answers");
}

# two valid requests on one connection, with the cookie of the first

my @ka = Civchat::Response->parse_many($t->http(
	ka('POST', '/civchat/init', 'application/json', $ok)
	. ka('POST', '/civchat/page_hit', 'text/plain', $ok) . $last));
is(join(",", map { $_->status } @ka), "200,200,200",
	"keep-alive: init, page_hit, widget.js");

###############################################################################

$t->done_testing();

###############################################################################
