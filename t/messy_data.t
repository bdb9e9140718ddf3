#!/usr/bin/perl

# (C) civchat developers

# Tests for the messy but valid data real sites and plug-ins send: every
# unknown field as "", nulls, user_id as a number, labels with spaces,
# capitals and Polish letters as names, out-of-range standard values,
# nested objects, reserved names used for something else.  Each request
# succeeds; the right fields are applied and the right ones listed in
# "ignored".

###############################################################################

use warnings;
use strict;
use utf8;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_decode deep_subset num str is_key uniq_id/;

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
            civchat            zone=users;
            civchat_api_key    TESTKEY;
            civchat_store      file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_attribute  plan  fixed;
            civchat_attribute  age   integer;
        }
    }
}

EOF

# sends one request as a fresh visitor (or the given client); returns
# the answer and the profile_updated values by name
sub send_as {
	my ($c, $ep, $data) = @_;

	my $r = $c->post($ep, $data);
	my %new;

	my @ev = $c->events(count => $ep =~ /^(init|page_hit)$/ ? 1 : 0);
	for my $e (@ev) {
		next unless $e->{type} eq 'profile_updated';
		my $a = json_decode($e->{attrs});
		$new{$e->{name}} = ref $a eq 'HASH' ? $a->{new} : undef;
	}

	return ($r, \%new, \@ev);
}

sub ignored_names {
	my ($r) = @_;
	return join(',', sort map { $_->{name} } @{$r->json->{ignored} // []});
}

###############################################################################

# a WordPress-like plug-in on an anonymous visit: every field as "" or
# null

my $c = $t->client();
my ($r, $new, $ev) = send_as($c, 'init', {
	name => '', email => '', user_id => '', phone_number => '',
	gender => '', first_name => undef, last_name => undef, status => '',
	score => '', company => '', city_name => '', plan => '', age => '',
	custom_field_1 => '', state => '',
});

is($r->status, 200, 'all "": 200');
ok(is_key($r->key), 'all "": a key');
is($r->user->{user_id}, undef, 'all "": no user_id');
is($r->user->{email}, undef, 'all "": no email');
is($r->user->{name}, undef, 'all "": no name');
ok(!exists $r->json->{ignored}, 'all "": nothing listed as ignored')
	or diag(ignored_names($r));
is(scalar(keys %$new), 0, 'all "": nothing applied');
is($r->json->{widget}{state}, 'simple', 'state "": the default look');

# "" and null never erase

($r) = send_as($c, 'init', { name => 'Jan Kowalski', plan => 'gold' });
($r, $new) = send_as($c, 'page_hit', { name => '', plan => undef,
	email => '' });
is($r->status, 200, '"" after values: 200');
is($r->user->{name}, 'Jan Kowalski', '"" does not erase the name');
is(scalar(keys %$new), 0, '"" and null change nothing');

###############################################################################

# user_id as a number

$c = $t->client();
my $n = 300000 + int(rand(600000000));
($r, $new) = send_as($c, 'init', { user_id => $n, email => '' });
is($r->status, 200, 'numeric user_id: 200');
is($r->user->{user_id}, "$n", 'numeric user_id: the decimal string');
ok(!defined $r->ignored_reason('user_id'), 'numeric user_id: not ignored');
my $pn = $c->profile;
my $cn = $t->client();
$cn->init({ user_id => "$n" });
is($cn->profile, $pn, 'numeric user_id: found by its string');

# user_id 0 and negative numbers are given values, not "not given"

for my $v (0, -7, '0') {
	($r) = send_as($t->client(), 'init', { user_id => $v });
	is($r->user->{user_id}, "$v", "user_id $v kept as \"$v\"");
}

# a user_id that is a number but not an integer in range is ignored, not
# rounded to one: 1e-400 reads as the double 0 and 1.0000000000000001 as
# 1, both held by profiles here; an integer written as a real is that
# integer exactly, past what a double holds

# init with a body written as it is (numbers JSON::PP cannot write)
sub init_raw {
	my ($c, $user_id) = @_;
	my $url = 'http://site.test/' . uniq_id('page');
	my $r = $t->request(method => 'POST', path => '/civchat/init',
		headers => [ 'Content-Type' => 'application/json',
			defined $c->key ? (Cookie => '__ca__chat=' . $c->key) : () ],
		body => qq({"apiKey":"TESTKEY","url":"$url","plan":"raw",)
			. qq("user_id":$user_id}));
	$c->absorb($r);
	return ($r, [ $t->read_events(settle => 0.3, match => { url => $url }) ]);
}

my $one = $t->client();
$one->init({ user_id => '1' });

for my $text (qw/1e-400 -1e-400 1.0000000000000001 0.99999999999999999
	1.5 1e-1 12345678901234567.5 9.3e18 -9.3e18 1e300/)
{
	$c = $t->client();
	my $key = $c->init({ plan => 'before' })->key;
	my ($r, $ev) = init_raw($c, $text);
	is($r->status, 200, "user_id $text: 200");
	is($r->ignored_reason('user_id'), 'invalid_value',
		"user_id $text: ignored, invalid_value");
	is($r->key, $key, "user_id $text: the same profile");
	is($r->user->{user_id}, undef, "user_id $text: the profile has none");
	is(join(',', sort grep { $_ ne 'page_view' } map { $_->{type} } @$ev),
		'profile_updated', "user_id $text: no other profile, only the "
		. 'plan changed');
}

for my $case ([ '42.0', '42' ], [ '4.2e1', '42' ], [ '1e3', '1000' ],
	[ '-7.0', '-7' ], [ '-0.0', '0' ],
	[ '9007199254740993.0', '9007199254740993' ],
	[ '9223372036854775807.0', '9223372036854775807' ],
	[ '-9.223372036854775808e18', '-9223372036854775808' ])
{
	my ($text, $want) = @$case;
	my ($r) = init_raw($t->client(), $text);
	is($r->user->{user_id}, $want, "user_id $text: \"$want\"");
	ok(!defined $r->ignored_reason('user_id'), "user_id $text: not ignored");
}

# labels as names

$c = $t->client();
($r, $new) = send_as($c, 'init', {
	'Ulubiony Kolor' => 'zielony',
	'Plan-Type' => 'business',
	'  Lead Source ' => 'google',
	'ŹRÓDŁO' => 'newsletter',
	'Number of Kids' => 2,
	'Newsletter?' => JSON::PP::true,
});
is($r->status, 200, 'labels: 200');
ok(!deep_subset({
	ulubiony_kolor => 'zielony',
	plan_type => 'business',
	lead_source => 'google',
	'źródło' => 'newsletter',
	number_of_kids => num(2),
	'newsletter?' => JSON::PP::true,
}, $new), 'labels: normalised names') or diag(Civchat::json_encode($new));
ok(!exists $r->json->{ignored}, 'labels: nothing ignored')
	or diag(ignored_names($r));

# out-of-range and junk standard values: skipped, the rest applied

$c = $t->client();
($r, $new) = send_as($c, 'init', {
	gender => 7, status => 0, score => 'lots', phone_number => 'n/a',
	email => 'brak', first_name => 'Zbigniew', plan => 'gold',
	age => 'forty',
});
is($r->status, 200, 'junk standard values: 200');
is(ignored_names($r), 'age,email,gender,phone_number,score,status',
	'junk standard values: the right ones listed');
is($r->ignored_reason('email'), 'invalid_email', 'email: invalid_email');
is($r->ignored_reason('phone_number'), 'invalid_phone',
	'phone: invalid_phone');
ok(!deep_subset({ first_name => 'Zbigniew', plan => 'gold' }, $new),
	'junk standard values: the rest applied');
is(join(',', sort keys %$new), 'first_name,plan', 'only those applied');

# nested objects

$c = $t->client();
($r, $new) = send_as($c, 'init', {
	prefs => { theme => 'dark', lang => 'pl' },
	address => { city => 'Kraków', zip => '30-001' },
	tags => [ 'a', 'b' ],
	company => { name => 'ACME', size => 50 },
	plan => 'pro',
});
is($r->status, 200, 'nested: 200');
is($r->ignored_reason('prefs'), 'nested_object', 'nested: prefs');
is($r->ignored_reason('address'), 'nested_object', 'nested: address');
ok(!defined $r->ignored_reason('company'), 'nested: company object kept');
ok(!defined $r->ignored_reason('tags'), 'nested: array of scalars kept');
ok(!deep_subset({ tags => [ 'a', 'b' ], plan => 'pro' }, $new),
	'nested: the rest applied');
ok(!exists $new->{prefs} && !exists $new->{address},
	'nested: objects not applied');

# company as a string

($r, $new) = send_as($t->client(), 'init', { company => 'ACME Sp. z o.o.' });
is($r->status, 200, 'company string: 200');
ok(!defined $r->ignored_reason('company'), 'company string: kept');

# reserved names used for something else

$c = $t->client();
($r, $new) = send_as($c, 'init', {
	state => 'paying',
	event => 'x',
	widget => { color => 'red' },
	source_context => { a => 1 },
	key => 'not a key',
});
is($r->status, 200, 'reserved: 200');
is($r->json->{widget}{state}, 'simple', 'state "paying": not a look');
is($new->{state}, 'paying', 'state "paying": an ordinary attribute');
ok(!exists $new->{widget} && !exists $new->{source_context}
	&& !exists $new->{event} && !exists $new->{key},
	'reserved: not attributes');

# state that is a look is not an attribute

($r, $new) = send_as($t->client(), 'init', { state => 'standard' });
is($r->json->{widget}{state}, 'standard', 'state standard: the look');
ok(!exists $new->{state}, 'state standard: not an attribute');

# a real-world mix in one request

$c = $t->client();
my $u = uniq_id('wp');
($r, $new) = send_as($c, 'init', {
	apiKey => 'TESTKEY',
	name => '  Łukasz Żółć  ',
	email => ' Lukasz.Zolc@Example.PL ',
	user_id => $u,
	phone_number => '+48 (12) 345-67-89',
	gender => 'M',
	'Data Urodzenia' => '1990-01-01',
	'Ulubiony kolor' => '',
	cart_value => 149.99,
	is_vip => JSON::PP::false,
	extra => undef,
	debug => { raw => [ 1, 2 ] },
	url => 'https://shop.example.pl/koszyk?utm_source=x',
	title => 'Koszyk – Sklep',
	referrer => '',
});
is($r->status, 200, 'mix: 200');
is($r->user->{user_id}, $u, 'mix: user_id');
is($r->user->{email}, 'lukasz.zolc@example.pl', 'mix: email');
is($r->user->{name}, 'Łukasz Żółć', 'mix: name trimmed');
is(ignored_names($r), 'debug', 'mix: only the object ignored');
ok(!deep_subset({
	phone_number => '+48123456789',
	gender => num(2),
	data_urodzenia => '1990-01-01',
	cart_value => num(149.99),
	is_vip => JSON::PP::false,
}, $new), 'mix: applied') or diag(Civchat::json_encode($new));
ok(!exists $new->{ulubiony_kolor} && !exists $new->{extra},
	'mix: "" and null not applied');
my ($pv) = grep { $_->{type} eq 'page_view' } $t->read_events(
	match => { user_key => $r->key, type => 'page_view' }, count => 1);
is($pv->{title}, 'Koszyk – Sklep', 'mix: UTF-8 title in the event');

# the same messy request on update and page_hit

for my $ep (qw/update page_hit reset_auth/) {
	($r) = send_as($t->client(), $ep, {
		name => '', email => '', user_id => '', gender => 9,
		'Some Label' => 'x', prefs => { a => 1 },
	});
	is($r->status, 200, "messy $ep: 200");
	is(ignored_names($r), 'gender,prefs', "messy $ep: ignored");
}

###############################################################################

$t->done_testing();

###############################################################################
