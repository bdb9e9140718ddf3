#!/usr/bin/perl

# (C) civchat developers

# Tests for attributes: the conversion table of every civchat_attribute
# type, undeclared attributes keeping their JSON type, the standard
# attributes (name, first_name, last_name, email, phone_number, gender,
# status, score), name normalisation, value limits and their directives,
# read-only and reserved fields, and the profile_updated events.

###############################################################################

use warnings;
use strict;
use utf8;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_decode deep_subset num str/;

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

    civchat_zone  users  4m;

    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat            zone=users;
            civchat_attribute  visits     integer;
            civchat_attribute  ltv        float;
            civchat_attribute  vip        boolean;
            civchat_attribute  birthday   date;
            civchat_attribute  signed_up  datetime;
            civchat_attribute  plan       fixed;
            civchat_attribute  interests  multi;
            civchat_attribute  nickname   string;
        }

        location /small/ {
            civchat                   zone=users;
            civchat_max_attributes    3;
            civchat_max_value_length  10;
            civchat_max_array_items   2;
        }
    }
}

EOF

# one fresh visitor sends the fields; returns the answer and the new
# values of its profile_updated events by attribute name

sub apply {
	my ($data, %o) = @_;

	my $c = $t->client(base => $o{base} // '/civchat/');
	my $r = $c->init($data);
	my %new;

	for my $e ($c->events(count => 2)) {
		next unless $e->{type} eq 'profile_updated';
		my $a = json_decode($e->{attrs});
		$new{$e->{name}} = ref $a eq 'HASH' ? [ $a->{new} ] : [ undef ];
	}

	return ($r, \%new);
}

# rows: [ field, value, expectation ] where the expectation is
#   [ '=' => matcher ]   applied, with this new value
#   [ '!' => reason ]    not applied, listed in "ignored" with a reason
#                        matching this (a string or a regexp)
#   [ '-' ]              not applied and not listed ("not given")

sub check_row {
	my ($field, $value, $want, $label) = @_;

	my ($r, $new) = apply({ $field => $value });
	my $show = ref $value ? Civchat::json_encode($value)
		: defined $value ? "\"$value\"" : 'null';
	my $name = $label // "$field $show";
	my $key = $want->[2] // $field;

	is($r->status, 200, "$name: 200") or return;

	if ($want->[0] eq '=') {
		my @d = exists $new->{$key}
			? deep_subset($want->[1], $new->{$key}[0]) : ('not applied');
		ok(!@d, "$name: applied as wanted") or diag(join("\n", @d),
			"\n", $r->describe);
		ok(!defined $r->ignored_reason($field), "$name: not ignored");

	} elsif ($want->[0] eq '!') {
		ok(!exists $new->{$key}, "$name: not applied");
		my $reason = $r->ignored_reason($field);
		if (ref $want->[1]) {
			like($reason, $want->[1], "$name: ignored");
		} else {
			is($reason, $want->[1], "$name: ignored");
		}

	} else {
		ok(!exists $new->{$key}, "$name: not applied");
		ok(!defined $r->ignored_reason($field), "$name: not listed");
	}
}

my $bad = qr/^(invalid_value|invalid_type)$/;

###############################################################################

# declared types

my @declared = (
	[ visits => '123', [ '=' => num(123) ] ],
	[ visits => 123, [ '=' => num(123) ] ],
	[ visits => '-5', [ '=' => num(-5) ] ],
	[ visits => 'abc', [ '!' => $bad ] ],
	[ visits => '12abc', [ '!' => $bad ] ],

	[ ltv => '49.9900', [ '=' => num(49.99) ] ],
	[ ltv => 3, [ '=' => num(3) ] ],
	[ ltv => '0.5', [ '=' => num(0.5) ] ],
	[ ltv => 'x', [ '!' => $bad ] ],

	[ vip => JSON::PP::true, [ '=' => JSON::PP::true ] ],
	[ vip => JSON::PP::false, [ '=' => JSON::PP::false ] ],
	[ vip => 'true', [ '=' => JSON::PP::true ] ],
	[ vip => 'false', [ '=' => JSON::PP::false ] ],
	[ vip => 'maybe', [ '!' => $bad ] ],

	[ birthday => '2024-03-05', [ '=' => str('2024-03-05') ] ],
	[ birthday => '2024-02-30', [ '!' => 'invalid_date' ] ],
	[ birthday => '2024-13-01', [ '!' => 'invalid_date' ] ],
	[ birthday => 'yesterday', [ '!' => 'invalid_date' ] ],

	[ signed_up => '2024-03-05T10:20:30Z',
		[ '=' => str('2024-03-05T10:20:30Z') ] ],
	[ signed_up => '2024-03-05 10:20:30',
		[ '=' => str('2024-03-05T10:20:30Z') ] ],
	[ signed_up => '2024-03-05T12:20:30+02:00',
		[ '=' => str('2024-03-05T10:20:30Z') ] ],
	[ signed_up => '2024-03-05T00:20:30-01:00',
		[ '=' => str('2024-03-05T01:20:30Z') ] ],
	[ signed_up => '2024-03-05T25:00:00Z', [ '!' => 'invalid_datetime' ] ],
	[ signed_up => 'soon', [ '!' => 'invalid_datetime' ] ],

	[ plan => 'gold', [ '=' => str('gold') ] ],
	[ interests => [ 'ski', 'golf' ], [ '=' => [ 'ski', 'golf' ] ] ],

	[ nickname => 'jd', [ '=' => str('jd') ] ],
	[ nickname => 123, [ '=' => str('123') ] ],
);

# undeclared attributes keep their JSON type

my @undeclared = (
	[ color => '123', [ '=' => str('123') ] ],
	[ color2 => 123, [ '=' => num(123) ] ],
	[ color3 => 1.5, [ '=' => num(1.5) ] ],
	[ color4 => JSON::PP::true, [ '=' => JSON::PP::true ] ],
	[ color5 => [ 1, 'a', JSON::PP::true ],
		[ '=' => [ num(1), str('a'), JSON::PP::true ] ] ],
	[ color6 => 'zielony', [ '=' => str('zielony') ] ],
);

# standard attributes

my @standard = (
	[ gender => 'male', [ '=' => num(2) ] ],
	[ gender => 'm', [ '=' => num(2) ] ],
	[ gender => 'female', [ '=' => num(3) ] ],
	[ gender => 'f', [ '=' => num(3) ] ],
	[ gender => 'Male', [ '=' => num(2) ] ],
	[ gender => 'F', [ '=' => num(3) ] ],
	[ gender => 1, [ '=' => num(1) ] ],
	[ gender => 2, [ '=' => num(2) ] ],
	[ gender => 3, [ '=' => num(3) ] ],
	[ gender => '3', [ '=' => num(3) ] ],
	[ gender => 0, [ '!' => qr/^invalid/ ] ],
	[ gender => 4, [ '!' => qr/^invalid/ ] ],
	[ gender => 9, [ '!' => qr/^invalid/ ] ],
	[ gender => 'other', [ '!' => qr/^invalid/ ] ],

	[ phone_number => '+48 754-123-434', [ '=' => str('+48754123434') ] ],
	[ phone_number => '+48 (754) 123.434', [ '=' => str('+48754123434') ] ],
	[ phone_number => '+1 202 555 0143', [ '=' => str('+12025550143') ] ],
	[ phone_number => 'call me', [ '!' => 'invalid_phone' ] ],
	[ phone_number => '+48 754 ext 5', [ '!' => 'invalid_phone' ] ],
	[ phone_number => '+', [ '!' => 'invalid_phone' ] ],

	[ status => 1, [ '=' => num(1) ] ],
	[ status => 2, [ '=' => num(2) ] ],
	[ status => 3, [ '!' => qr/^invalid/ ] ],
	[ status => 'vip', [ '!' => qr/^invalid/ ] ],

	[ score => 10, [ '=' => num(10) ] ],
	[ score => '15', [ '=' => num(15) ] ],
	[ score => 'high', [ '!' => qr/^invalid/ ] ],

	[ first_name => 'Jan', [ '=' => str('Jan') ] ],
	[ first_name => 'x' x 40, [ '=' => str('x' x 40) ] ],
	[ first_name => 'x' x 41, [ '!' => qr/^(too_long|invalid_value)$/ ] ],
	[ first_name => '   ', [ '!' => qr/^invalid/ ] ],
	[ last_name => 'Kowalski-Ćwik', [ '=' => str('Kowalski-Ćwik') ] ],
	[ last_name => 'y' x 41, [ '!' => qr/^(too_long|invalid_value)$/ ] ],
	[ name => 'John Doe', [ '=' => str('John Doe') ] ],
	[ name => " \t ", [ '!' => qr/^invalid/ ] ],

	[ email => 'John@Example.ORG', [ '=' => str('john@example.org') ] ],
	[ email => '  ann@example.org ', [ '=' => str('ann@example.org') ] ],
	[ email => 'ann+tag@sub.example.co.uk',
		[ '=' => str('ann+tag@sub.example.co.uk') ] ],
	[ email => 'not-an-email', [ '!' => 'invalid_email' ] ],
	[ email => 'a@', [ '!' => 'invalid_email' ] ],
	[ email => '@example.org', [ '!' => 'invalid_email' ] ],
	[ email => 'a b@example.org', [ '!' => 'invalid_email' ] ],
);

for my $row (@declared, @undeclared, @standard) {
	check_row(@$row);
}

# the email a unique one, so that rows do not meet each other: done
# above with fresh visitors in a location without unified
# identification, where duplicates are allowed

# name in the answer

my ($r) = apply({ name => 'Anna Nowak' });
is($r->user->{name}, 'Anna Nowak', 'user.name in the answer');

###############################################################################

# names: trimmed, lower-cased, runs of spaces and "-" made "_"

for my $row (
	[ 'Favourite Colour', 'favourite_colour' ],
	[ '  Lead-Source  ', 'lead_source' ],
	[ 'a - b', 'a_b' ],
	[ 'UPPER', 'upper' ],
	[ 'Źródło Ruchu', 'źródło_ruchu' ],
	[ 'ulubiony kolor', 'ulubiony_kolor' ],
	[ '色', '色' ],
	[ 'n' x 64, 'n' x 64 ],
) {
	my ($sent, $norm) = @$row;
	check_row($sent, 'v', [ '=' => str('v'), $norm ], "name \"$sent\"");
}

check_row('n' x 65, 'v', [ '!' => 'name_too_long' ], 'name of 65 bytes');
check_row('ż' x 33, 'v', [ '!' => 'name_too_long' ],
	'name of 66 bytes in 33 letters');
check_row("a\x01b", 'v', [ '!' => 'control_character' ],
	'name with a control character');
check_row('', 'v', [ '!' => 'invalid_name' ], 'empty name');
check_row('   ', 'v', [ '!' => 'invalid_name' ], 'blank name');

###############################################################################

# values: limits

check_row(bio => 'b' x 1024, [ '=' => str('b' x 1024) ], '1024 bytes');
check_row(bio => 'b' x 1025, [ '!' => 'too_long' ], '1025 bytes');
check_row(bio => 'ż' x 512, [ '=' => str('ż' x 512) ], '1024 bytes in 512');
check_row(bio => 'ż' x 513, [ '!' => 'too_long' ], '1026 bytes in 513');
check_row(tags => [ 1 .. 32 ], [ '=' => [ map { num($_) } 1 .. 32 ] ],
	'32 items');
check_row(tags => [ 1 .. 33 ], [ '!' => 'too_many_items' ], '33 items');
check_row(tags => [ 'a', { b => 1 } ],
	[ '!' => qr/^(nested_object|invalid_value|invalid_type)$/ ],
	'an object in an array');
check_row(tags => [ 'a', [ 'b' ] ],
	[ '!' => qr/^(nested_object|invalid_value|invalid_type)$/ ],
	'an array in an array');
check_row(prefs => { a => 1 }, [ '!' => 'nested_object' ], 'nested object');
check_row(nothing => undef, [ '-' ], 'null');
check_row(nothing => '', [ '-' ], 'empty string');

# 100 attributes per request

my %hundred = map { ("attr_$_" => $_) } 1 .. 101;
my $new;
($r, $new) = apply(\%hundred);
is($r->status, 200, '101 attributes: 200');
is(scalar(keys %$new), 100, '101 attributes: 100 applied');
my @many = grep { $_->{reason} eq 'too_many_attributes' }
	@{$r->json->{ignored} // []};
is(scalar @many, 1, '101 attributes: one too_many_attributes');

# the limit directives

($r, $new) = apply({ a1 => 1, a2 => 2, a3 => 3, a4 => 4 }, base => '/small/');
is(scalar(keys %$new), 3, 'civchat_max_attributes 3');
@many = grep { $_->{reason} eq 'too_many_attributes' }
	@{$r->json->{ignored} // []};
is(scalar @many, 1, 'civchat_max_attributes: one ignored');

($r, $new) = apply({ s1 => 'x' x 10, s2 => 'x' x 11 }, base => '/small/');
ok($new->{s1} && !$new->{s2}, 'civchat_max_value_length 10');
is($r->ignored_reason('s2'), 'too_long', 'civchat_max_value_length: reason');

($r, $new) = apply({ l1 => [ 1, 2 ], l2 => [ 1, 2, 3 ] }, base => '/small/');
ok($new->{l1} && !$new->{l2}, 'civchat_max_array_items 2');
is($r->ignored_reason('l2'), 'too_many_items',
	'civchat_max_array_items: reason');

###############################################################################

# read-only and reserved fields

for my $f (qw/page_views sessions first_seen last_seen last_ip user_agent
	browser_language/)
{
	check_row($f => 1000, [ '!' => 'read_only' ], "read-only $f");
}

for my $f (qw/widget source_context/) {
	my ($r, $new) = apply({ $f => 'x' });
	ok(!exists $new->{$f}, "reserved $f: not applied");
	my $reason = $r->ignored_reason($f);
	ok(!defined $reason || $reason eq 'reserved', "reserved $f: reason");
}

for my $f (qw/url referrer title/) {
	my ($r, $new) = apply({ $f => 'x' });
	ok(!exists $new->{$f}, "page context $f: not an attribute");
	ok(!defined $r->ignored_reason($f), "page context $f: not listed");
}

# a request field spelled otherwise ("URL", "Api Key"...) is read as a
# name first, then refused as reserved, and said so: never an attribute
# "url" or "api_key"

for my $case ([ 'URL', 'url' ], [ 'Title', 'title' ],
	[ 'Referrer', 'referrer' ], [ 'Event', 'event' ],
	[ 'Api Key', 'api_key' ], [ 'User_Key', 'user_key' ],
	[ 'APIKEY', 'apikey' ], [ ' Link-Key ', 'link_key' ],
	[ 'User Hash', 'user_hash' ], [ 'E-mail', 'e_mail' ],
	[ 'Source Context', 'source_context' ])
{
	my ($sent, $name) = @$case;
	my ($r, $new) = apply({ $sent => 'x', tier => 'kept' });
	is($new->{tier} && $new->{tier}[0], 'kept', "'$sent': the rest applied");

	if ($name eq 'e_mail') {
		# not a request field: an ordinary attribute
		is($new->{e_mail} && $new->{e_mail}[0], 'x', "'$sent': an attribute e_mail");
		ok(!defined $r->ignored_reason($sent), "'$sent': not ignored");
		next;
	}

	ok(!exists $new->{$name}, "'$sent': no attribute '$name'");

	is($r->ignored_reason($sent), 'reserved', "'$sent': ignored, reserved");
}

# page_views cannot be set through update either

my $c = $t->client();
$c->init({});
$r = $c->update({ page_views => 1000, plan => 'gold' });
is($r->ignored_reason('page_views'), 'read_only', 'update: read_only');
is($r->user->{page_views}, 1, 'update: page_views kept');

###############################################################################

# profile_updated: old and new, only on a real change

$c = $t->client();
$c->init({ color => 'red', size => 3 });
$r = $c->update({ color => 'blue', size => 3 });
my @ev = $c->events();
is(scalar @ev, 1, 'one event: only the changed attribute');
is($ev[0]{name}, 'color', 'profile_updated: name');
ok(!deep_subset({ old => 'red', new => 'blue' }, json_decode($ev[0]{attrs})),
	'profile_updated: old and new');

$r = $c->update({ color => '', size => undef });
@ev = $c->events(count => 0);
is(scalar @ev, 0, '"" and null erase nothing');

$r = $c->update({ visits => '7' });
$r = $c->update({ visits => 7 });
@ev = $c->events(count => 0);
is(scalar @ev, 0, 'the same converted value: no change');

###############################################################################

###############################################################################

# README "Names": every row of its table is what a request gets

{
	open(my $fh, '<:encoding(UTF-8)', $t->repo . '/README.md')
		or die "README.md: $!";
	my $readme = join('', <$fh>);
	close($fh);

	my ($section) = $readme =~ /^### Names\n(.*?)^#/ms;
	my @rows = ($section // '') =~ /^\| `([^`]+)` \| `([^`]+)` \|$/mg;

	ok(@rows >= 16, 'README "Names": its examples') or diag($section);

	while (my ($sent, $stored) = splice(@rows, 0, 2)) {
		my ($r, $new) = apply({ $sent => 'x' });
		ok(exists $new->{$stored}, "README \"Names\": \"$sent\" is "
			. "stored as \"$stored\"") or diag($r->describe);
	}

	for my $sent ('URL', 'Api Key', 'User-Key') {
		my ($r, $new) = apply({ $sent => 'x' });
		is($r->ignored_reason($sent), 'reserved',
			"README \"Names\": \"$sent\" is reserved");
	}
}

$t->done_testing();

###############################################################################
