#!/usr/bin/perl

# (C) civchat developers

# Tests for identity resolution: every row of the README identity table
# (unified identification on/off x authorize by email on/off) as its own
# case, with the answer's key, the cookie, the profile and the events;
# user_id priority over email, numeric user_id, reset_auth rotation and
# update never switching.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key uniq_id json_decode/;

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

    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        # unified off, authorize off (the defaults)
        location /civchat/ {
            civchat  zone=users;
        }

        # unified off, authorize on
        location /a/ {
            civchat                     zone=users;
            civchat_authorize_by_email  on;
        }

        # unified on, authorize off
        location /u/ {
            civchat                         zone=users;
            civchat_unified_identification  on;
        }

        # unified on, authorize on
        location /ua/ {
            civchat                         zone=users;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }
    }
}

EOF

my %flags = (
	'/civchat/' => 'unified off, authorize off',
	'/a/' => 'unified off, authorize on',
	'/u/' => 'unified on, authorize off',
	'/ua/' => 'unified on, authorize on',
);

sub uid { uniq_id('uid') }
sub email { lc(uniq_id('e')) . '@example.org' }

sub types {
	return join(',', sort map { $_->{type} } @_);
}

# the same, without the profile_updated of the identity fields of a new
# profile (the README's table names user_created and user_identified for
# "new profile with U/E, switch"; that the new profile's user_id or
# email changed from none may be recorded as well)
sub types_new {
	return types(grep { !($_->{type} eq 'profile_updated'
		&& $_->{name} =~ /^(user_id|email)$/) } @_);
}

sub of_type {
	my ($type, @ev) = @_;
	return grep { $_->{type} eq $type } @ev;
}

# a profile holding these fields, made by its own browser
sub holder {
	my ($base, %data) = @_;
	my $c = $t->client(base => $base);
	my $r = $c->init(\%data);
	return ($c, $r->key);
}

# which key a user_id or email resolves to now (through /ua/, where
# both identify); a fresh browser, so nothing else is merged
sub resolve {
	my (%data) = @_;
	return $t->client(base => '/ua/')->init(\%data)->key;
}

# which profile a key resolves to, and its fields
sub lookup {
	my ($key) = @_;
	my $c = $t->client(base => '/civchat/');
	$c->set_cookie('__ca__chat', $key);
	return $c->init({});
}

sub check_answer {
	my ($r, $name, %want) = @_;

	is($r->status, 200, "$name: 200") or diag($r->describe);
	is($r->key, $want{key}, "$name: key") if exists $want{key};
	is($r->cookie_value, $r->key, "$name: cookie is the key");
	is($r->user->{key}, $r->key, "$name: user.key");
	is($r->user->{user_id}, $want{user_id}, "$name: user_id")
		if exists $want{user_id};
	is($r->user->{email}, $want{email}, "$name: email")
		if exists $want{email};
}

###############################################################################

# no K, nothing matches: a new anonymous profile, new key

for my $base (sort keys %flags) {
	subtest "no K, nothing matches ($flags{$base})" => sub {
		my $c = $t->client(base => $base);
		my $r = $c->init({});
		check_answer($r, 'first visit', user_id => undef, email => undef);
		ok(is_key($r->key), 'a 16-character key');
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,user_created', 'events');
		is($ev[0]{user_key}, $r->key, 'events carry the key');

		my $r2 = $t->client(base => $base)->init({});
		isnt($r2->key, $r->key, 'another browser: another key');
	};
}

# U held by X: switch to X, user_identified

for my $base (sort keys %flags) {
	subtest "U held by X ($flags{$base})" => sub {
		my $u = uid();
		my (undef, $kx) = holder($base, user_id => $u);

		my $c = $t->client(base => $base);
		my $kb = $c->init({})->key;
		isnt($kb, $kx, 'B has its own key first');

		my $r = $c->init({ user_id => $u });
		check_answer($r, 'switch', key => $kx, user_id => $u);
		is($c->key, $kx, 'the cookie becomes X\'s key');
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,user_identified', 'events');
		my ($ui) = of_type('user_identified', @ev);
		is($ui->{user_key}, $kx, 'user_identified: X\'s key');
		is($ui->{user_id}, $u, 'user_identified: user_id');

		# no K at all: straight to X, no throwaway profile

		$c = $t->client(base => $base);
		$r = $c->init({ user_id => $u });
		check_answer($r, 'first visit with U', key => $kx, user_id => $u);
		@ev = $c->events();
		ok(!of_type('user_created', @ev), 'no throwaway profile');
	};
}

# U unheld, K has no user_id: U written onto K

for my $base (sort keys %flags) {
	subtest "U unheld, K has no user_id ($flags{$base})" => sub {
		my $u = uid();
		my $c = $t->client(base => $base);
		my $k = $c->init({})->key;

		my $r = $c->init({ user_id => $u });
		check_answer($r, 'set U', key => $k, user_id => $u);
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,profile_updated', 'events');
		my ($pu) = of_type('profile_updated', @ev);
		is($pu->{name}, 'user_id', 'profile_updated: user_id');
		is(json_decode($pu->{attrs})->{new}, $u, 'profile_updated: new');
		is(resolve(user_id => $u), $k, 'U now resolves to K');

		# first visit with an unheld U: one new profile holding U

		$u = uid();
		$c = $t->client(base => $base);
		$r = $c->init({ user_id => $u });
		check_answer($r, 'first visit, unheld U', user_id => $u);
		@ev = $c->events();
		is(scalar(of_type('user_created', @ev)), 1, 'one user_created');
	};
}

# U unheld, K has another user_id: a new profile with U, switch

for my $base (sort keys %flags) {
	subtest "U unheld, K has another user_id ($flags{$base})" => sub {
		my ($u1, $u2) = (uid(), uid());
		my $c = $t->client(base => $base);
		my $k1 = $c->init({ user_id => $u1 })->key;

		my $r = $c->init({ user_id => $u2 });
		check_answer($r, 'new profile', user_id => $u2);
		ok(is_key($r->key), 'a new key');
		isnt($r->key, $k1, 'not K');
		my @ev = $c->events(count => 3);
		is(types_new(@ev), 'page_view,user_created,user_identified',
			'events');
		is(resolve(user_id => $u1), $k1, 'U1 still on K');
		is(resolve(user_id => $u2), $r->key, 'U2 on the new profile');
	};
}

# E, unified off: E written onto K, duplicates allowed

for my $base ('/civchat/', '/a/') {
	subtest "E, unified off ($flags{$base})" => sub {
		my $e = email();
		my (undef, $kx) = holder($base, email => $e);

		my $c = $t->client(base => $base);
		my $kb = $c->init({})->key;
		my $r = $c->init({ email => $e });
		check_answer($r, 'duplicate email', key => $kb, email => $e);
		isnt($kb, $kx, 'not switched to the other holder');
		ok(!defined $r->ignored_reason('email'), 'email not ignored');
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,profile_updated', 'events');
		my ($pu) = of_type('profile_updated', @ev);
		is($pu->{name}, 'email', 'profile_updated: email');

		is(lookup($kx)->user->{email}, $e, 'X keeps its email');
	};
}

# E, K.email == E: just update K

for my $base (sort keys %flags) {
	subtest "E, K.email == E ($flags{$base})" => sub {
		my $e = email();
		my $c = $t->client(base => $base);
		my $k = $c->init({ email => $e })->key;

		my $r = $c->init({ email => '  ' . uc($e) . ' ', plan => 'gold' });
		check_answer($r, 'same email', key => $k, email => $e);
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,profile_updated', 'events');
		my ($pu) = of_type('profile_updated', @ev);
		is($pu->{name}, 'plan', 'only the other attribute changed');
	};
}

# E held by X, unified on, authorize on: switch to X; an anonymous K is
# merged into X and its key becomes an alias of X

subtest 'E held by X, unified on, authorize on, anonymous K' => sub {
	my $e = email();
	my (undef, $kx) = holder('/ua/', email => $e);

	my $c = $t->client(base => '/ua/');
	my $kb = $c->init({})->key;
	my $r = $c->init({ email => $e });
	check_answer($r, 'switch', key => $kx, email => $e);
	is($c->key, $kx, 'the cookie becomes X\'s key');

	my @ev = $c->events(count => 3);
	is(types(@ev), 'page_view,user_identified,user_merged', 'events');
	my ($um) = of_type('user_merged', @ev);
	is($um->{user_key}, $kx, 'user_merged: into X');
	like(join(' ', values %{$um // {}}), qr/\Q$kb\E/,
		'user_merged: names the old key');

	# the old key is now an alias of X

	$r = lookup($kb);
	is($r->key, $kx, 'old key (cookie) resolves to X');
	is($r->user->{email}, $e, 'old key: X\'s profile');

	$r = $t->post_json('/civchat/init', { apiKey => 'TESTKEY', key => $kb });
	is($r->key, $kx, 'old key (body) resolves to X');
	is($r->cookie_value, $kx, 'old key: the cookie is set to X\'s key');

	# every endpoint resolves the alias

	for my $ep (qw/update event page_hit/) {
		my $ca = $t->client(base => '/ua/');
		$ca->set_cookie('__ca__chat', $kb);
		my $ra = $ca->post($ep, { event => 'x' });
		is($ra->key, $kx, "old key on $ep: X");
		is($ca->key, $kx, "old key on $ep: the cookie becomes X's key");
	}
	my $ca = $t->client(base => '/ua/');
	$ca->set_cookie('__ca__chat', $kb);
	$ca->event({ event => 'via_alias' });
	my ($va) = $ca->events();
	is($va->{user_key}, $kx, 'an event through the old key is X\'s');
};

subtest 'E held by X, unified on, authorize on, K with another email' => sub {
	my ($e, $e2) = (email(), email());
	my (undef, $kx) = holder('/ua/', email => $e);

	my $c = $t->client(base => '/ua/');
	my $kc = $c->init({ email => $e2 })->key;
	my $r = $c->init({ email => $e });
	check_answer($r, 'switch', key => $kx, email => $e);
	my @ev = $c->events(count => 2);
	is(types(@ev), 'page_view,user_identified', 'events: no merge');

	$r = lookup($kc);
	is($r->key, $kc, 'K is not an alias');
	is($r->user->{email}, $e2, 'K keeps its email');
};

subtest 'E held by X, unified on, authorize on, K with a user_id' => sub {
	my ($e, $u) = (email(), uid());
	my (undef, $kx) = holder('/ua/', email => $e);

	my $c = $t->client(base => '/ua/');
	my $kc = $c->init({ user_id => $u })->key;
	my $r = $c->init({ email => $e });
	check_answer($r, 'switch', key => $kx, email => $e);
	my @ev = $c->events(count => 2);
	is(types(@ev), 'page_view,user_identified', 'events: no merge');
	is(lookup($kc)->key, $kc, 'K is not an alias');
	is(resolve(user_id => $u), $kc, 'U still on K');
};

# E held by X, unified on, authorize off: keep K, E not written,
# email_claimed

subtest 'E held by X, unified on, authorize off' => sub {
	my $e = email();
	my (undef, $kx) = holder('/u/', email => $e);

	my $c = $t->client(base => '/u/');
	my $kb = $c->init({})->key;
	my $r = $c->init({ email => $e, plan => 'basic' });
	check_answer($r, 'no switch', key => $kb, email => undef);
	is($r->ignored_reason('email'), 'conflict', 'email ignored: conflict');
	my @ev = $c->events(count => 3);
	is(types(@ev), 'email_claimed,page_view,profile_updated', 'events');
	my ($pu) = of_type('profile_updated', @ev);
	is($pu->{name}, 'plan', 'the other attribute applied');
	my ($ec) = of_type('email_claimed', @ev);
	is($ec->{user_key}, $kb, 'email_claimed: on K');

	is(resolve(email => $e), $kx, 'X still holds E');
	is(lookup($kb)->user->{email}, undef, 'K has no email');

	# a first visit does not get X either

	$c = $t->client(base => '/u/');
	$r = $c->init({ email => $e });
	check_answer($r, 'first visit', email => undef);
	isnt($r->key, $kx, 'first visit: not X');
};

# E unheld, unified on, K has no email: E written onto K

for my $base ('/u/', '/ua/') {
	subtest "E unheld, K has no email ($flags{$base})" => sub {
		my $e = email();
		my $c = $t->client(base => $base);
		my $k = $c->init({})->key;
		my $r = $c->init({ email => $e });
		check_answer($r, 'E written', key => $k, email => $e);
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,profile_updated', 'events');
		is(resolve(email => $e), $k, 'E now identifies K');
	};
}

# E unheld, unified on, K has another email: new profile with E, switch

for my $base ('/u/', '/ua/') {
	subtest "E unheld, K has another email ($flags{$base})" => sub {
		my ($e1, $e2) = (email(), email());
		my $c = $t->client(base => $base);
		my $k1 = $c->init({ email => $e1 })->key;
		my $r = $c->init({ email => $e2 });
		check_answer($r, 'new profile', email => $e2);
		isnt($r->key, $k1, 'a new key');
		my @ev = $c->events(count => 3);
		is(types_new(@ev), 'page_view,user_created,user_identified',
			'events');
		is(lookup($k1)->user->{email}, $e1, 'K keeps its email');
		is(resolve(email => $e2), $r->key, 'E2 on the new profile');
	};
}

###############################################################################

# U and E together: U identifies, E is an ordinary attribute

subtest 'user_id priority over email' => sub {
	my ($e, $u) = (email(), uid());
	my (undef, $kx) = holder('/ua/', email => $e);

	# unified on: E held by X is not applied to K

	my $c = $t->client(base => '/ua/');
	my $kb = $c->init({})->key;
	my $r = $c->init({ user_id => $u, email => $e });
	check_answer($r, 'unified', key => $kb, user_id => $u, email => undef);
	is($r->ignored_reason('email'), 'conflict', 'unified: email conflict');
	my @ev = $c->events();
	ok(!of_type('user_identified', @ev), 'unified: no switch');

	# U held by Y, E held by X: Y

	my $u2 = uid();
	my (undef, $ky) = holder('/ua/', user_id => $u2);
	$c = $t->client(base => '/ua/');
	$r = $c->init({ user_id => $u2, email => $e });
	is($r->key, $ky, 'U held by Y, E by X: Y');

	# unified off: both applied

	($u, $e) = (uid(), email());
	holder('/civchat/', email => $e);
	$c = $t->client(base => '/civchat/');
	$kb = $c->init({})->key;
	$r = $c->init({ user_id => $u, email => $e });
	check_answer($r, 'unified off', key => $kb, user_id => $u, email => $e);

	# unified on, E unheld: applied with U

	($u, $e) = (uid(), email());
	$c = $t->client(base => '/u/');
	$r = $c->init({ user_id => $u, email => $e });
	check_answer($r, 'unified, E unheld', user_id => $u, email => $e);
};

subtest 'numeric user_id 42 is "42"' => sub {
	my $n = 100000 + int(rand(800000000));
	my (undef, $kx) = holder('/civchat/', user_id => $n);
	my $c = $t->client();
	my $r = $c->init({ user_id => "$n" });
	is($r->key, $kx, 'string finds the number');
	is($r->user->{user_id}, "$n", 'user_id is a string');

	$n++;
	(undef, $kx) = holder('/civchat/', user_id => "$n");
	$r = $t->client()->init({ user_id => $n + 0 });
	is($r->key, $kx, 'number finds the string');
	is($r->user->{user_id}, "$n", 'user_id given as a number is a string');
};

###############################################################################

# reset_auth: the old key is never reused

subtest 'reset_auth rotation' => sub {
	my $u = uid();
	my $c = $t->client();
	my $k1 = $c->init({ user_id => $u })->key;

	my $r = $c->reset_auth({});
	check_answer($r, 'anonymous', user_id => undef, email => undef);
	ok(is_key($r->key), 'a key');
	isnt($r->key, $k1, 'new key');
	is($c->key, $r->key, 'new cookie');
	my @ev = $c->events();
	ok(of_type('auth_reset', @ev), 'auth_reset');
	is((of_type('auth_reset', @ev))[0]{user_key}, $r->key,
		'auth_reset: the new key');

	my %seen = ($k1 => 1, $r->key => 1);
	for (1 .. 3) {
		$r = $c->reset_auth({});
		ok(!$seen{$r->key}++, "reset $_: never a key seen before");
	}

	is(resolve(user_id => $u), $k1, 'the old profile is still there');

	# the key in the body is discarded too

	$r = $t->post_json('/civchat/reset_auth',
		{ apiKey => 'TESTKEY', key => $k1 });
	is($r->status, 200, 'body key: 200');
	isnt($r->key, $k1, 'body key: not reused');
};

subtest 'reset_auth with U' => sub {
	my $u = uid();
	my (undef, $ky) = holder('/civchat/', user_id => $u);

	my $c = $t->client();
	my $k = $c->init({})->key;
	my $r = $c->reset_auth({ user_id => $u });
	check_answer($r, 'held', key => $ky, user_id => $u);
	ok(of_type('auth_reset', $c->events()), 'auth_reset');

	my $u2 = uid();
	$r = $c->reset_auth({ user_id => $u2, plan => 'x' });
	check_answer($r, 'unheld', user_id => $u2);
	ok($r->key ne $ky && $r->key ne $k, 'unheld: a new profile');
	is(resolve(user_id => $u2), $r->key, 'unheld: U on the new profile');
};

subtest 'reset_auth with E' => sub {
	my $e = email();
	my (undef, $kx) = holder('/ua/', email => $e);

	# unified and authorize on: switch to the holder

	my $c = $t->client(base => '/ua/');
	$c->init({});
	my $r = $c->reset_auth({ email => $e });
	check_answer($r, 'unified, authorize', key => $kx, email => $e);

	# authorize off: a new profile without E

	$c = $t->client(base => '/u/');
	my $k = $c->init({})->key;
	$r = $c->reset_auth({ email => $e });
	check_answer($r, 'unified, no authorize', email => undef);
	ok($r->key ne $kx && $r->key ne $k, 'unified, no authorize: new');

	# an unheld E: a new profile with E

	my $e2 = email();
	$r = $t->client(base => '/u/')->reset_auth({ email => $e2 });
	check_answer($r, 'unheld', email => $e2);

	# unified off: a new profile that gets E (duplicates allowed)

	$c = $t->client(base => '/civchat/');
	$k = $c->init({})->key;
	$r = $c->reset_auth({ email => $e });
	check_answer($r, 'unified off', email => $e);
	ok($r->key ne $kx && $r->key ne $k, 'unified off: new');
};

###############################################################################

# update never switches

for my $base ('/civchat/', '/ua/') {
	subtest "update never switches ($flags{$base})" => sub {
		my ($u, $e) = (uid(), email());
		my (undef, $kx) = holder($base, user_id => $u, email => $e);

		my $c = $t->client(base => $base);
		my $kb = $c->init({})->key;
		my $r = $c->update({ user_id => $u, email => $e, plan => 'p1' });
		check_answer($r, 'update', key => $kb, user_id => undef,
			email => undef);
		is($r->ignored_reason('user_id'), 'conflict', 'user_id: conflict');
		is($r->ignored_reason('email'), 'conflict', 'email: conflict');
		my @ev = $c->events();
		is(types(@ev), 'profile_updated', 'events');
		is($ev[0]{name}, 'plan', 'the rest applied');
		is(resolve(user_id => $u), $kx, 'X keeps U');

		# a numeric user_id owned by X is a conflict as well

		my $n = 200000 + int(rand(800000000));
		holder($base, user_id => "$n");
		$r = $c->update({ user_id => $n });
		is($r->ignored_reason('user_id'), 'conflict', 'numeric: conflict');

		# unheld: applied, still no switch

		my ($u2, $e2) = (uid(), email());
		$r = $c->update({ user_id => $u2, email => $e2 });
		check_answer($r, 'unheld', key => $kb, user_id => $u2,
			email => $e2);

		# its own values again: no conflict

		$r = $c->update({ user_id => $u2, email => uc $e2 });
		ok(!defined $r->ignored_reason('user_id'), 'own user_id: fine');
		ok(!defined $r->ignored_reason('email'), 'own email: fine');
		is($r->key, $kb, 'own values: same key');
	};
}

###############################################################################

$t->done_testing();

###############################################################################
