#!/usr/bin/perl

# (C) civchat developers

# Tests for the events: the fixed envelope (every field present, right
# types, exactly these fields), unique 32-hex ids, millisecond ts, attrs
# as a JSON string; custom events and their name normalisation, product
# events with all 16 event types, the event piggy-backed on page_hit,
# event data never identifying.

###############################################################################

use warnings;
use strict;
use utf8;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_decode deep_subset is_num is_str num str uniq_id/;

use Time::HiRes qw/time/;

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
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }
    }
}

EOF

my @fields = qw/id ts site type name user_key user_id email url referrer
	title ip country region city user_agent attrs/;

my %types = map { $_ => 1 } qw/user_created page_view event product_event
	profile_updated user_identified user_merged email_claimed auth_reset/;

###############################################################################

# produce one of each kind the module can make here

my $ua = 'Mozilla/5.0 (X11; Linux x86_64) civchat-test/1.0';
my $start = time();

my $c = $t->client(headers => [ 'User-Agent' => $ua ]);
$c->init({ title => 'Start', referrer => 'https://ref.example/' });
my $u = uniq_id('uid');
my $e = lc(uniq_id('ev')) . '@example.org';
$c->page_hit({ user_id => $u, email => $e, title => 'Żółw',
	referrer => 'https://ref.example/' });
$c->update({ plan => 'gold' });
$c->event({ event => 'signup', attributes => { a => 1 } });
$c->product_event({ product_id => 'p1', event_type => 'view' });
$c->reset_auth({});

# a merge: an anonymous browser logs in with the email

my $m = $t->client(headers => [ 'User-Agent' => $ua ]);
$m->init({});
$m->init({ email => $e });

my $end = time();

my @all = $t->read_events(count => 10, settle => 0.3);
my @ev = grep { ($_->{user_agent} // '') eq $ua } @all;

ok(@ev >= 10, 'events written') or diag(scalar @ev);
is(scalar(grep { $_->{_bad} } @all), 0, 'every line is a JSON object');

my %seen_types = map { $_->{type} => 1 } @ev;
for my $type (qw/user_created page_view event product_event profile_updated
	user_identified user_merged auth_reset/)
{
	ok($seen_types{$type}, "a $type event was made");
}

# the envelope

my (%bad, %ids);

for my $x (@ev) {
	my @keys = sort keys %$x;
	$bad{fields}++ unless join(',', @keys) eq join(',', sort @fields);
	$bad{strings}++ if grep { $_ ne 'ts' && !is_str($x->{$_}) } @fields;
	$bad{id}++ unless ($x->{id} // '') =~ /^[0-9a-f]{32}$/;
	$bad{ts}++ unless is_num($x->{ts}) && $x->{ts} == int($x->{ts})
		&& $x->{ts} >= int($start * 1000) - 1000
		&& $x->{ts} <= int($end * 1000) + 1000;
	$bad{type}++ unless $types{$x->{type} // ''};
	$bad{site}++ unless ($x->{site} // '') eq 'TESTKEY';
	$bad{user_key}++ unless ($x->{user_key} // '') =~ /^[A-Za-z0-9]{16}$/;
	$bad{ip}++ unless ($x->{ip} // '') eq '127.0.0.1';
	$bad{geo}++ if grep { ($x->{$_} // 'x') ne '' } qw/country region city/;
	my $a = json_decode($x->{attrs});
	$bad{attrs}++ unless ref $a eq 'HASH';
	$ids{$x->{id} // ''}++;
}

for my $k (qw/fields strings id ts type site user_key ip geo attrs/) {
	is($bad{$k} // 0, 0, "envelope: $k");
}

ok(!grep({ $_ > 1 } values %ids), 'ids unique');

my @all_ids = map { $_->{id} // '' } grep { !$_->{_bad} } @all;
my %uniq = map { $_ => 1 } @all_ids;
is(scalar(keys %uniq), scalar(@all_ids), 'ids unique in the whole file');

# field contents

my ($pv) = grep { $_->{type} eq 'page_view' && $_->{title} eq 'Żółw' } @ev;
ok($pv, 'page_view with a UTF-8 title');
is($pv->{user_id}, $u, 'page_view: user_id');
is($pv->{email}, $e, 'page_view: email');
is($pv->{referrer}, 'https://ref.example/', 'page_view: referrer');
like($pv->{url}, qr{^http://site\.test/}, 'page_view: url');
is($pv->{attrs}, '{}', 'page_view: attrs "{}"');

my ($uc) = grep { $_->{type} eq 'user_created' } @ev;
is($uc->{user_id}, '', 'user_created: user_id "" when unknown');
is($uc->{email}, '', 'user_created: email "" when unknown');
is($uc->{name}, '', 'user_created: name ""');

my ($pu) = grep { $_->{type} eq 'profile_updated' && $_->{name} eq 'plan' }
	@ev;
ok(!deep_subset({ new => 'gold' }, json_decode($pu->{attrs})),
	'profile_updated: attrs {"old", "new"}');
ok(exists json_decode($pu->{attrs})->{old}, 'profile_updated: old present');

my ($um) = grep { $_->{type} eq 'user_merged' } @ev;
is($um->{email}, $e, 'user_merged: the resolved profile');

###############################################################################

# custom events

sub one_event {
	my ($c, $data) = @_;
	my $r = $c->event($data);
	my @e = $r->status == 200 ? $c->events() : ();
	return ($r, $e[0]);
}

$c = $t->client();
$c->init({});

my ($r, $x) = one_event($c, { event => 'Add To Cart',
	attributes => { price => 9.99 } });
is($r->status, 200, 'event: 200');
is($x->{type}, 'event', 'event: type');
is($x->{name}, 'add_to_cart', 'event: name normalised');

($r, $x) = one_event($c, { event => '  Zakup - Udany  ' });
is($x->{name}, 'zakup_udany', 'event: UTF-8 name normalised');
is($x->{attrs}, '{}', 'event without attributes: attrs "{}"');

my $nested = {
	cart => { items => [ { sku => 'a', qty => 2 }, { sku => 'b', qty => 1 } ],
		total => 19.5 },
	tags => [ 'x', [ 'y' ] ],
	flag => JSON::PP::false,
	none => undef,
	text => "line\nbreak \"quoted\" ż",
};
($r, $x) = one_event($c, { event => 'checkout', attributes => $nested });
is($r->status, 200, 'event with nested attributes: 200');
is_deeply(json_decode($x->{attrs}), $nested, 'event attributes kept as sent');
ok(!exists $r->json->{ignored}, 'event attributes: nothing ignored');

# email and user_id in event data are data

my $e2 = lc(uniq_id('data')) . '@example.org';
my $holder = $t->client();
$holder->init({ email => $e2 });

($r, $x) = one_event($c, { event => 'contact',
	attributes => { email => $e2, user_id => 'someone' } });
is($r->status, 200, 'event with email data: 200');
is($r->key, $c->key, 'event data does not switch the user');
is($r->user->{email}, undef, 'event data does not set the email');
is($x->{email}, '', 'event: the profile email, not the data');
is(json_decode($x->{attrs})->{email}, $e2, 'event: the email kept as data');

# the event name limit and characters

($r) = one_event($c, { event => 'x' x 65 });
is($r->status, 400, 'event name of 65 bytes: 400');
is($r->error, 'invalid_event', 'event name of 65 bytes: invalid_event');

($r, $x) = one_event($c, { event => 'x' x 64 });
is($r->status, 200, 'event name of 64 bytes: 200');

###############################################################################

# product events: all 16 types, unknown ones refused

my @ptypes = ('add to cart', 'purchase', 'liking', 'add to observation',
	'order', 'reservation', 'return', 'view', 'click', 'detail', 'add',
	'remove', 'checkout', 'checkout option', 'refund', 'promo click');

$c = $t->client();
$c->init({});

for my $pt (@ptypes) {
	$r = $c->product_event({ product_id => "sku-$pt", event_type => $pt,
		price => 10 });
	is($r->status, 200, "product_event \"$pt\": 200");
}

my @pe = $t->read_events(count => 16, match => { type => 'product_event',
	user_key => $c->key });
is(scalar @pe, 16, 'product events: 16 written');
is_deeply([ sort map { $_->{name} } @pe ], [ sort @ptypes ],
	'product events: name is the event_type');
my ($pe) = grep { $_->{name} eq 'purchase' } @pe;
ok(!deep_subset({ product_id => 'sku-purchase', price => num(10) },
	json_decode($pe->{attrs})), 'product event: its data in attrs');

for my $bad ('buy', 'Purchase!', 'add_to_cart', '', ' ', 'purchases') {
	$r = $c->product_event({ product_id => 'p', event_type => $bad });
	is($r->status, 400, "product_event \"$bad\": 400");
	like($r->error, qr/^(invalid_event|missing_field)$/,
		"product_event \"$bad\": error code");
}

$r = $c->product_event({ product_id => 123, event_type => 'view' });
is($r->status, 200, 'numeric product_id: 200');

###############################################################################

# the event piggy-backed on page_hit

$c = $t->client();
$c->init({});
$r = $c->page_hit({ title => 'Thanks',
	event => { event_name => 'Newsletter Signup', list => 'weekly',
		count => 2 } });
is($r->status, 200, 'page_hit with event: 200');
my @pair = $c->events(count => 2);
is(join(',', map { $_->{type} } @pair), 'page_view,event',
	'page_hit with event: page view first, then the event');
my ($pb) = grep { $_->{type} eq 'event' } @pair;
is($pb->{name}, 'newsletter_signup', 'piggy-backed event: name');
is($pb->{user_key}, $c->key, 'piggy-backed event: the resolved user');
my $pa = json_decode($pb->{attrs}) // {};
ok(!deep_subset({ list => 'weekly', count => num(2) }, $pa),
	'piggy-backed event: attributes');

# with an identity switch in the same request: the event goes to the
# resolved user

my $u3 = uniq_id('pb');
my $owner = $t->client();
my $ko = $owner->init({ user_id => $u3 })->key;

$c = $t->client();
my $kc = $c->init({})->key;
$r = $c->page_hit({ user_id => $u3,
	event => { event_name => 'after_login' } });
is($r->user->{user_id}, $u3, 'piggy-back with a switch: switched');
isnt($r->key, $kc, 'piggy-back with a switch: a new key');
($pb) = grep { $_->{type} eq 'event' } $c->events(count => 3);
is($pb->{user_key}, $ko, 'piggy-backed event: on the resolved user');

###############################################################################

$t->done_testing();

###############################################################################
