#!/usr/bin/perl

# (C) civchat developers

# Tests for bad input: malformed and truncated JSON, bodies that are not
# objects, deep nesting, a 1 MB string, NUL bytes, invalid UTF-8, wrong
# types for the request fields, wrong methods and content types, broken
# HTTP.  Each gets a clear 4xx JSON error (or, where the README allows
# it, a 200 with the field ignored), no worker dies, and the store file
# stays valid NDJSON.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key json_encode/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

$t->config(<<'EOF')->run();

%%TEST_GLOBALS%%
worker_processes 2;

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

        location /big/ {
            civchat               zone=users;
            civchat_body_limit    4m;
            client_max_body_size  4m;
        }
    }
}

EOF

my @workers = $t->worker_pids();

my $deep_arrays = '{"apiKey":"TESTKEY","x":' . ('[' x 100000)
	. (']' x 100000) . '}';
my $deep_objects = '{"apiKey":"TESTKEY","x":' . ('{"a":' x 100000) . '1'
	. ('}' x 100000) . '}';
my $deep_open = '{"apiKey":"TESTKEY","x":' . ('[' x 100000);
my $mb = '{"apiKey":"TESTKEY","bio":"' . ('x' x (1024 * 1024)) . '"}';
my $half = '{"apiKey":"TESTKEY","bio":"' . ('x' x (512 * 1024)) . '"}';
my $mb_name = '{"apiKey":"TESTKEY","' . ('n' x (1024 * 1024)) . '":1}';
my $many = '{"apiKey":"TESTKEY",'
	. join(',', map { "\"a$_\":$_" } 1 .. 50000) . '}';
my $dup = '{"apiKey":"TESTKEY",' . join(',', ('"a":1') x 10000) . '}';

# the README's answer for a field it cannot use is a 200 with the field
# in "ignored"; for a body that is not JSON, 400 invalid_json.  NUL and
# invalid UTF-8 inside strings may be refused by the JSON parser (400)
# or skipped per field (200, listed): both are allowed, nothing else.

sub json_or_skipped {
	my ($field, @reasons) = @_;
	my %ok = map { $_ => 1 } @reasons;
	return sub {
		my ($r) = @_;
		return ok($r->status == 400 && $r->error eq 'invalid_json'
			|| $r->status == 200 && $ok{$r->ignored_reason($field) // ''},
			"$field: 400 invalid_json or 200 with $field ignored")
			|| diag($r->describe);
	};
}

$t->run_cases([

	# not JSON, not an object

	{ name => 'garbage', body => 'hello world',
		status => 400, error => 'invalid_json' },
	{ name => 'truncated object', body => '{"apiKey":"TESTKEY","a":{"b":',
		status => 400, error => 'invalid_json' },
	{ name => 'truncated string', body => '{"apiKey":"TEST',
		status => 400, error => 'invalid_json' },
	{ name => 'single quotes', body => "{'apiKey':'TESTKEY'}",
		status => 400, error => 'invalid_json' },
	{ name => 'unquoted keys', body => '{apiKey:"TESTKEY"}',
		status => 400, error => 'invalid_json' },
	{ name => 'a comment', body => '{"apiKey":"TESTKEY"/*x*/}',
		status => 400, error => 'invalid_json' },
	{ name => 'NaN', body => '{"apiKey":"TESTKEY","a":NaN}',
		status => 400, error => 'invalid_json' },
	{ name => 'bad escape', body => '{"apiKey":"TESTKEY","a":"\\q"}',
		status => 400, error => 'invalid_json' },
	{ name => 'lone surrogate', body => '{"apiKey":"TESTKEY","a":"\\ud800"}',
		status => [400, 200] },
	{ name => 'array body', body => '[1,2,3]',
		status => 400, error => 'invalid_json' },
	{ name => 'string body', body => '"hello"',
		status => 400, error => 'invalid_json' },
	{ name => 'number body', body => '12345',
		status => 400, error => 'invalid_json' },
	{ name => 'true body', body => 'true',
		status => 400, error => 'invalid_json' },
	{ name => 'whitespace body', body => "  \r\n\t ",
		status => 400, error => 'invalid_json' },
	{ name => 'array body on event', path => 'event', body => '[]',
		status => 400, error => 'invalid_json' },
	{ name => 'array body on product_event', path => 'product_event',
		body => '[]', status => 400, error => 'invalid_json' },
	{ name => 'array body on reset_auth', path => 'reset_auth',
		body => '[]', status => 400, error => 'invalid_json' },
	{ name => 'array body on update', path => 'update', body => '[]',
		status => 400, error => 'invalid_json' },
	{ name => 'BOM', body => "\xef\xbb\xbf" . '{"apiKey":"TESTKEY"}',
		status => [200, 400] },

	# deep nesting, huge values

	{ name => '100k-deep arrays', path => '/big/init', body => $deep_arrays,
		status => 400, error => 'invalid_json' },
	{ name => '100k-deep objects', path => '/big/init',
		body => $deep_objects, status => 400, error => 'invalid_json' },
	{ name => '100k open brackets', path => '/big/init', body => $deep_open,
		status => 400, error => 'invalid_json' },
	{ name => '100k-deep at the default limit', body => $deep_arrays,
		status => 413, error => 'body_too_large' },
	{ name => '512k string at the default limit', body => $half,
		status => 413, error => 'body_too_large' },
	{ name => '512k string at the default limit, chunked', body => $half,
		chunked => 16384, status => 413, error => 'body_too_large' },

	# over nginx's own client_max_body_size (1m by default): nginx
	# answers 413 before the module runs (README: keep it at least
	# civchat_body_limit)

	{ name => '1 MB string at the default limits', body => $mb,
		status => 413 },
	{ name => '1 MB string', path => '/big/init', body => $mb,
		status => 200, ignored => { bio => 'too_long' } },
	{ name => '1 MB string, chunked', path => '/big/init', body => $mb,
		chunked => 8192, status => 200, ignored => { bio => 'too_long' } },
	{ name => '1 MB name', path => '/big/init', body => $mb_name,
		status => 200, check => sub {
			my ($r) = @_;
			my @i = @{$r->json->{ignored} // []};
			ok(@i == 1 && $i[0]{reason} eq 'name_too_long',
				'1 MB name: name_too_long')
				|| diag(substr($r->body, 0, 300));
		} },
	{ name => '50000 attributes', path => '/big/init', body => $many,
		status => 200, check => sub {
			my ($r) = @_;
			my @i = grep { $_->{reason} eq 'too_many_attributes' }
				@{$r->json->{ignored} // []};
			ok(@i >= 1, '50000 attributes: too_many_attributes')
				|| diag(substr($r->body, 0, 300));
		} },
	{ name => 'a duplicated key 10000 times', path => '/big/init',
		body => $dup, status => [200, 400] },

	# NUL

	{ name => 'escaped NUL in a value',
		body => '{"apiKey":"TESTKEY","bio":"a\\u0000b"}',
		check => json_or_skipped('bio', 'control_character',
			'invalid_value') },
	{ name => 'escaped NUL in a name',
		body => '{"apiKey":"TESTKEY","a\\u0000b":"x"}',
		check => json_or_skipped("a\0b", 'control_character',
			'invalid_name') },
	{ name => 'escaped NUL in the apiKey',
		body => '{"apiKey":"TESTKEY\\u0000x"}',
		status => [400, 403] },
	{ name => 'escaped NUL in user_id',
		body => '{"apiKey":"TESTKEY","user_id":"42\\u0000x"}',
		check => json_or_skipped('user_id', 'control_character',
			'invalid_value') },
	{ name => 'escaped NUL in email',
		body => '{"apiKey":"TESTKEY","email":"a@b.org\\u0000x"}',
		check => json_or_skipped('email', 'invalid_email',
			'control_character') },
	{ name => 'raw NUL in a value',
		body => "{\"apiKey\":\"TESTKEY\",\"bio\":\"a\0b\"}",
		status => 400, error => 'invalid_json' },
	{ name => 'raw NUL after the object',
		body => "{\"apiKey\":\"TESTKEY\"}\0",
		status => 400, error => 'invalid_json' },
	{ name => 'raw NUL first', body => "\0{\"apiKey\":\"TESTKEY\"}",
		status => 400, error => 'invalid_json' },
	{ name => 'all NUL', body => "\0" x 1000,
		status => 400, error => 'invalid_json' },

	# invalid UTF-8

	{ name => 'invalid UTF-8 in a value',
		body => "{\"apiKey\":\"TESTKEY\",\"bio\":\"a\xff\xfeb\"}",
		check => json_or_skipped('bio', 'invalid_utf8') },
	{ name => 'overlong UTF-8 in a value',
		body => "{\"apiKey\":\"TESTKEY\",\"bio\":\"\xc0\xaf\"}",
		check => json_or_skipped('bio', 'invalid_utf8') },
	{ name => 'truncated UTF-8 at the end of a value',
		body => "{\"apiKey\":\"TESTKEY\",\"bio\":\"\xc5\"}",
		check => json_or_skipped('bio', 'invalid_utf8') },
	{ name => 'invalid UTF-8 in a name',
		body => "{\"apiKey\":\"TESTKEY\",\"a\xffb\":\"x\"}",
		status => [400, 200] },
	{ name => 'Latin-1 body', headers =>
		[ 'Content-Type' => 'text/plain; charset=iso-8859-1' ],
		body => "{\"apiKey\":\"TESTKEY\",\"name\":\"\xa3ukasz\"}",
		check => json_or_skipped('name', 'invalid_utf8') },

	# wrong types for the request fields

	(map {
		my ($label, $v) = @$_;
		{ name => "apiKey $label", body => { apiKey => $v },
			status => [400, 403],
			error => ['missing_field', 'invalid_api_key'] }
	} [ number => 123 ], [ array => ['TESTKEY'] ],
		[ object => { key => 'TESTKEY' } ], [ true => JSON::PP::true ],
		[ null => undef ]),

	{ name => 'event a number', path => 'event',
		body => { apiKey => 'TESTKEY', event => 42 },
		status => 400, error => ['invalid_event', 'missing_field'] },
	{ name => 'event an object', path => 'event',
		body => { apiKey => 'TESTKEY', event => { name => 'x' } },
		status => 400, error => ['invalid_event', 'missing_field'] },
	{ name => 'event an array', path => 'event',
		body => { apiKey => 'TESTKEY', event => ['x'] },
		status => 400, error => ['invalid_event', 'missing_field'] },
	{ name => 'event null', path => 'event',
		body => { apiKey => 'TESTKEY', event => undef },
		status => 400, error => 'missing_field' },
	{ name => 'attributes a number', path => 'event',
		body => { apiKey => 'TESTKEY', event => 'x', attributes => 5 },
		status => 400, error => 'invalid_event' },
	{ name => 'attributes true', path => 'event',
		body => { apiKey => 'TESTKEY', event => 'x',
			attributes => JSON::PP::true },
		status => 400, error => 'invalid_event' },
	{ name => 'event_type a number', path => 'product_event',
		body => { apiKey => 'TESTKEY', product_id => 'p', event_type => 1 },
		status => 400, error => ['invalid_event', 'missing_field'] },
	{ name => 'product_id an object', path => 'product_event',
		body => { apiKey => 'TESTKEY', product_id => { a => 1 },
			event_type => 'view' },
		status => 400 },
	{ name => 'user_id an object',
		body => { apiKey => 'TESTKEY', user_id => { id => 1 } },
		status => 200, ignored => { user_id => qr/^invalid/ } },
	{ name => 'user_id an array',
		body => { apiKey => 'TESTKEY', user_id => [ 1 ] },
		status => 200, ignored => { user_id => qr/^invalid/ } },
	{ name => 'user_id true',
		body => { apiKey => 'TESTKEY', user_id => JSON::PP::true },
		status => 200, ignored => { user_id => qr/^invalid/ } },
	{ name => 'user_id a float',
		body => { apiKey => 'TESTKEY', user_id => 1.5 },
		status => 200 },
	{ name => 'user_id 1000 characters',
		body => { apiKey => 'TESTKEY', user_id => 'u' x 1000 },
		status => 200, ignored => { user_id => qr/./ } },
	{ name => 'email a number',
		body => { apiKey => 'TESTKEY', email => 42 },
		status => 200, ignored => { email => qr/^invalid/ } },
	{ name => 'email an object',
		body => { apiKey => 'TESTKEY', email => { a => 'b@c.org' } },
		status => 200, ignored => { email => qr/^invalid/ } },
	{ name => 'email 300 characters',
		body => { apiKey => 'TESTKEY', email => ('e' x 290) . '@x.org' },
		status => 200, ignored => { email => qr/./ } },
	{ name => 'url an object',
		body => { apiKey => 'TESTKEY', url => { a => 1 } },
		status => 200 },
	{ name => 'url 100k',
		path => '/big/init',
		body => { apiKey => 'TESTKEY', url => 'http://x/' . ('a' x 100000) },
		status => 200 },
	{ name => 'page_hit event a string', path => 'page_hit',
		body => { apiKey => 'TESTKEY', event => 'signup' },
		status => [200, 400] },
	{ name => 'page_hit event without event_name', path => 'page_hit',
		body => { apiKey => 'TESTKEY', event => { a => 1 } },
		status => [200, 400] },

	# wrong methods, content types

	{ name => 'TRACE', method => 'TRACE', path => 'init',
		status => [405, 501] },
	{ name => 'OPTIONS without Origin', method => 'OPTIONS', path => 'init',
		status => [200, 204] },
	{ name => 'xml', headers => [ 'Content-Type' => 'text/xml' ],
		body => '<apiKey>TESTKEY</apiKey>',
		status => 415, error => 'unsupported_media_type' },
	{ name => 'json-ish content type',
		headers => [ 'Content-Type' => 'application/jsonx' ],
		body => '{"apiKey":"TESTKEY"}',
		status => 415, error => 'unsupported_media_type' },
	{ name => 'empty content type', headers => [ 'Content-Type' => '' ],
		body => '{"apiKey":"TESTKEY"}', status => [200, 415] },
]);

###############################################################################

# broken HTTP around the body

my $r = Civchat::Response->parse($t->http(
	"POST /civchat/init HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
	. "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
	. '{"apiKey":"TESTKEY"}', timeout => 3));
ok(1, 'short body: the connection ends');

$r = $t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/json',
		'Content-Length' => 'abc' ], body => '{}');
is($r->status, 400, 'bad Content-Length: 400');

$r = Civchat::Response->parse($t->http(
	"POST /civchat/init HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
	. "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
	. "zz\r\n{}\r\n0\r\n\r\n"));
is($r->status, 400, 'bad chunk: 400');

# a user agent and other headers with bytes that are not UTF-8: the
# event is still valid JSON

$r = $t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/json',
		'User-Agent' => "Mozilla/5.0 \xff\xfe\x01 \"quoted\" \\ end",
		'Accept-Language' => "pl-PL\xff,pl;q=0.9" ],
	body => '{"apiKey":"TESTKEY","url":"http://bad-ua.test/"}');
is($r->status, 200, 'binary user agent: 200');

my @ev = $t->read_events(match => { url => 'http://bad-ua.test/' },
	count => 2);
is(scalar @ev, 2, 'binary user agent: events parsed as JSON');
like($ev[0]{user_agent} // '', qr/^Mozilla\/5\.0 .*"quoted" \\ end$/,
	'binary user agent: kept, escaped');

# the request after all that still works, on every worker

for (1 .. 6) {
	$r = $t->client()->init({ name => 'after' });
	is($r->status, 200, "a valid request afterwards ($_)");
}

is_deeply([ $t->worker_pids() ], \@workers, 'no worker was replaced');

# every line in the store is one valid UTF-8 JSON object

my $raw = $t->read_file('events.ndjson') // '';
my @lines = split /\n/, $raw;
my @bad = grep { my $l = $_; !utf8::decode(my $copy = $l)
	|| !Civchat::json_decode($l) } @lines;
ok(@lines > 10, 'events written');
is(scalar @bad, 0, 'every line valid UTF-8 JSON')
	or diag(substr($bad[0], 0, 500));

###############################################################################

$t->done_testing();

###############################################################################
