#!/usr/bin/perl

# (C) civchat developers

# Tests for the civchat endpoints: init, page_hit, update, event,
# product_event, reset_auth; the shape of their answers, the accepted
# body types, apiKey aliases, widget settings, page views and sessions.

###############################################################################

use warnings;
use strict;
use utf8;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key deep_subset num str is_num json_encode uniq_id/;

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
            civchat_api_key  TESTKEY OTHERKEY;
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location /w/ {
            civchat               zone=users;
            civchat_api_key       TESTKEY;
            civchat_store         file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_widget_state  hidden;
            civchat_greeting      "Witaj! W czym pomóc?";
        }

        location /s/ {
            civchat                  zone=users;
            civchat_api_key          TESTKEY;
            civchat_store            file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_session_timeout  1s;
        }

        location /big/ {
            civchat                  zone=users;
            civchat_api_key          TESTKEY;
            civchat_store            file=%%TESTDIR%%/events.ndjson flush=100ms;
            client_body_buffer_size  1k;
            civchat_body_limit       64k;
        }

        location /off/ {
            civchat          zone=users;
            civchat_api_key  TESTKEY;
            civchat_store    off;
        }
    }
}

EOF

my $now = time();

###############################################################################

# init, first visit

my $c = $t->client();
my $r = $c->init({ title => 'Home', referrer => 'https://google.com/' });

is($r->status, 200, 'init: 200');
like($r->header('Content-Type'), qr{^application/json}, 'init: json');
ok(is_key($r->key), 'init: a 16-character key');
is($r->cookie_value, $r->key, 'init: cookie holds the key');
is($c->key, $r->key, 'init: client keeps the cookie');

my $key = $r->key;

ok(!deep_subset({
	key => $key,
	user => {
		key => $key,
		user_id => undef,
		email => undef,
		name => undef,
		first_seen => sub { is_num($_[0]) && abs($_[0] - $now) < 60 },
		last_seen => sub { is_num($_[0]) && abs($_[0] - $now) < 60 },
		page_views => num(1),
		sessions => num(1),
	},
	widget => {
		state => 'simple',
		greeting => 'Hi! How can we help?',
	},
}, $r->json), 'init: answer') or diag($r->describe);

ok(!exists $r->json->{ignored}, 'init: no "ignored" when nothing skipped');

my @ev = $c->events(count => 2);
is(join(',', sort map { $_->{type} } @ev), 'page_view,user_created',
	'init: user_created and page_view');

my ($pv) = grep { $_->{type} eq 'page_view' } @ev;
is($pv->{user_key}, $key, 'page_view: user_key');
is($pv->{title}, 'Home', 'page_view: title');
is($pv->{referrer}, 'https://google.com/', 'page_view: referrer');
is($pv->{url}, $c->last_url, 'page_view: url');
is($pv->{site}, 'TESTKEY', 'page_view: site');
is($pv->{ip}, '127.0.0.1', 'page_view: ip');

# init again: same profile, one more page view, nothing created

$r = $c->init({});
is($r->key, $key, 'init again: same key');
is($r->user->{page_views}, 2, 'init again: page_views 2');
is($r->user->{sessions}, 1, 'init again: same session');
@ev = $c->events();
is(join(',', map { $_->{type} } @ev), 'page_view', 'init again: page_view');

# page_hit

$r = $c->page_hit({ title => 'Product' });
is($r->status, 200, 'page_hit: 200');
is($r->key, $key, 'page_hit: same key');
is($r->user->{page_views}, 3, 'page_hit: page_views 3');
ok(!exists $r->json->{widget}, 'page_hit: no widget settings');
@ev = $c->events();
is(join(',', map { $_->{type} } @ev), 'page_view', 'page_hit: page_view');
is($ev[0]{title}, 'Product', 'page_hit: title');

# update: attributes, no page view

$r = $c->update({ plan => 'pro' });
is($r->status, 200, 'update: 200');
is($r->key, $key, 'update: same key');
is($r->user->{page_views}, 3, 'update: no page view');
@ev = $c->events();
is(join(',', map { $_->{type} } @ev), 'profile_updated',
	'update: profile_updated only');
is($ev[0]{name}, 'plan', 'update: attribute name');
ok(!deep_subset({ new => 'pro' }, Civchat::json_decode($ev[0]{attrs})),
	'update: new value');

# the same value again changes nothing

$r = $c->update({ plan => 'pro' });
is($r->status, 200, 'update same: 200');
@ev = $c->events(count => 0);
is(scalar @ev, 0, 'update same value: no event');

# event

$r = $c->event({ event => 'signup', attributes => { plan => 'pro' } });
is($r->status, 200, 'event: 200');
is($r->key, $key, 'event: key');
is($r->user->{key}, $key, 'event: user');
@ev = $c->events();
is(scalar @ev, 1, 'event: one event');
is($ev[0]{type}, 'event', 'event: type');
is($ev[0]{name}, 'signup', 'event: name');
like($ev[0]{id}, qr/^[0-9a-f]{32}$/, 'event: id');
is($r->user->{page_views}, 3, 'event: no page view');

# product_event

$r = $c->product_event({ product_id => 'SKU-1', event_type => 'purchase',
	price => 9.99 });
is($r->status, 200, 'product_event: 200');
is($r->key, $key, 'product_event: key');
@ev = $t->read_events(count => 1, match => { type => 'product_event',
	user_key => $key });
is(scalar @ev, 1, 'product_event: one event');
is($ev[0]{url}, $c->last_url, 'product_event: url (page context)');
is($ev[0]{type}, 'product_event', 'product_event: type');
is($ev[0]{name}, 'purchase', 'product_event: name is the event_type');
my $pa = Civchat::json_decode($ev[0]{attrs}) // {};
is($pa->{product_id}, 'SKU-1', 'product_event: product_id in attrs');
is($pa->{price}, 9.99, 'product_event: data in attrs');

# reset_auth

$r = $c->reset_auth({});
is($r->status, 200, 'reset_auth: 200');
ok(is_key($r->key), 'reset_auth: a key');
isnt($r->key, $key, 'reset_auth: a new key');
is($r->cookie_value, $r->key, 'reset_auth: new cookie');
is($r->user->{user_id}, undef, 'reset_auth: an anonymous profile');
@ev = $c->events();
ok((grep { $_->{type} eq 'auth_reset' } @ev), 'reset_auth: auth_reset');

###############################################################################

# apiKey aliases and several keys

for my $alias (qw/apiKey api_key app_key/) {
	$r = $t->post_json('/civchat/init', { $alias => 'TESTKEY' });
	is($r->status, 200, "apiKey as $alias");
}

$c = $t->client(api_key => 'OTHERKEY');
$r = $c->init({});
is($r->status, 200, 'second api key accepted');
@ev = $c->events();
is($ev[0]{site}, 'OTHERKEY', 'second api key: site');

# the key from the body when there is no cookie

my $k = $t->client()->init({})->key;

for my $field (qw/key user_key/) {
	$r = $t->post_json('/civchat/page_hit',
		{ apiKey => 'TESTKEY', $field => $k });
	is($r->key, $k, "key from the body's $field");
}

# body types: JSON, text/plain (sendBeacon), none

for my $ct ('application/json', 'application/json; charset=utf-8',
	'text/plain', 'text/plain;charset=UTF-8', undef)
{
	$r = $t->request(method => 'POST', path => '/civchat/init',
		headers => [ 'Content-Type' => $ct ],
		body => '{"apiKey":"TESTKEY"}');
	is($r->status, 200, 'content type ' . ($ct // 'none'));
	ok(is_key($r->key), 'content type ' . ($ct // 'none') . ': key');
}

# HTTP/1.0

$r = $t->request(method => 'POST', path => '/civchat/init', http => '1.0',
	headers => [ 'Content-Type' => 'application/json' ],
	body => '{"apiKey":"TESTKEY"}');
is($r->status, 200, 'HTTP/1.0');

# a body nginx writes to a temporary file (client_body_buffer_size 1k)

my %big = map { sprintf('field_%02d', $_) => 'v' x 800 } 1 .. 25;
$c = $t->client(base => '/big/');
$r = $c->init(\%big);
ok(length(json_encode(\%big)) > 19000, 'big body is ~20k');
is($r->status, 200, 'body in a temporary file: 200');
ok(is_key($r->key), 'body in a temporary file: key');
@ev = $c->events(match => { type => 'profile_updated' });
is(scalar @ev, 25, 'body in a temporary file: all attributes applied');

# widget settings

$r = $t->client()->init({ state => 'expanded' });
is($r->json->{widget}{state}, 'expanded', 'widget state from the snippet');

for my $s (qw/simple standard hidden expanded/) {
	$r = $t->client()->init({ state => $s });
	is($r->json->{widget}{state}, $s, "widget state $s");
}

$r = $t->client(base => '/w/')->init({});
is($r->json->{widget}{state}, 'hidden', 'civchat_widget_state');
is($r->json->{widget}{greeting}, 'Witaj! W czym pomóc?',
	'civchat_greeting (UTF-8)');

$r = $t->client(base => '/w/')->init({ state => 'standard' });
is($r->json->{widget}{state}, 'standard', 'snippet state wins');

# sessions: a new one after civchat_session_timeout of silence

$c = $t->client(base => '/s/');
$r = $c->init({});
is($r->user->{sessions}, 1, 'session 1');
my $first_seen = $r->user->{first_seen};
$r = $c->page_hit({});
is($r->user->{sessions}, 1, 'still session 1');
sleep 3;
$r = $c->page_hit({});
is($r->user->{sessions}, 2, 'session 2 after the timeout');
is($r->user->{page_views}, 3, 'page views across sessions');
is($r->user->{first_seen}, $first_seen, 'first_seen kept');
ok($r->user->{last_seen} >= $first_seen + 2, 'last_seen moves');

# civchat_store off: answers, no events

$c = $t->client(base => '/off/');
$r = $c->init({});
is($r->status, 200, 'store off: 200');
@ev = $c->events(count => 0);
is(scalar @ev, 0, 'store off: no events in the file');

###############################################################################

$t->done_testing();

###############################################################################
