#!/usr/bin/perl

# (C) civchat developers

# Tests for identity resolution: every row of the README identity table
# (unified identification on/off x authorize by email on/off), each in
# both modes: the User.com-compatible one (no civchat_identity_secret,
# a user_id or email is taken as sent) and the verified one (the pages
# sign them with the secret, user_hash).  For each: the profile the
# request lands on (its events carry the profile's own key), the
# browser's key (a new one at every change of identity, the old one
# never resolving again), what the answer shows (all of it when the
# browser proved the profile, only what it sent when it did not), and
# the events; user_id priority over email, numeric user_id, reset_auth
# rotation, update never switching.  The attacks are in t/attacks.t.

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

my $SECRET = 'identity-test-secret-0123456789';
my $TOKEN = 'identity-api-token-0123456789';

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  1m;
    civchat_zone  signed  1m;

    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        # the User.com-compatible mode

        location /civchat/ {
            civchat  zone=users;
        }

        location /a/ {
            civchat                     zone=users;
            civchat_authorize_by_email  on;
        }

        location /u/ {
            civchat                         zone=users;
            civchat_unified_identification  on;
        }

        location /ua/ {
            civchat                         zone=users;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }

        location /api/ {
            civchat_api        zone=users;
            civchat_api_token  $TOKEN;
        }

        # verified: the same four, signed

        location /v/ {
            civchat                  zone=signed;
            civchat_identity_secret  $SECRET;
        }

        location /va/ {
            civchat                     zone=signed;
            civchat_identity_secret     $SECRET;
            civchat_authorize_by_email  on;
        }

        location /vu/ {
            civchat                         zone=signed;
            civchat_identity_secret         $SECRET;
            civchat_unified_identification  on;
        }

        location /vua/ {
            civchat                         zone=signed;
            civchat_identity_secret         $SECRET;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }

        location /vapi/ {
            civchat_api        zone=signed;
            civchat_api_token  $TOKEN;
        }
    }
}

EOF

# the four flag combinations of each mode, by location
my %modes = (
	compat => { off_off => '/civchat/', off_on => '/a/', on_off => '/u/',
		on_on => '/ua/', api => '/api/' },
	verified => { off_off => '/v/', off_on => '/va/', on_off => '/vu/',
		on_on => '/vua/', api => '/vapi/' },
);

my %flags = (
	off_off => 'unified off, authorize off',
	off_on => 'unified off, authorize on',
	on_off => 'unified on, authorize off',
	on_on => 'unified on, authorize on',
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

# a browser of a mode's location; a verified site's pages sign
sub browser {
	my ($mode, $flag) = @_;
	return $t->client(base => $modes{$mode}{$flag},
		$mode eq 'verified' ? (secret => $SECRET) : ());
}

# a profile holding these fields, made by its own browser: the client,
# the profile's own key
sub holder {
	my ($mode, $flag, %data) = @_;
	my $c = browser($mode, $flag);
	$c->init({ %data, name => 'Holder ' . uid() });
	return ($c, $c->profile());
}

# the profile holding a user_id or email, or one a key names, as the
# server API sees it
sub api {
	my ($mode, $kind, $id) = @_;
	my $r = $t->get("$modes{$mode}{api}users/$kind/$id",
		Authorization => "Bearer $TOKEN");
	return $r->status == 200 ? $r->json->{user} : undef;
}

sub holds {
	my ($mode, $kind, $id) = @_;
	my $u = api($mode, $kind, $id);
	return $u ? $u->{key} : undef;
}

# a request with a key the browser no longer has: refused, the key
# replaced a moment ago (another tab may retry with the new one)
sub replaced {
	my ($mode, $key, $name) = @_;
	my $c = browser($mode, 'off_off');
	$c->set_cookie('__ca__chat', $key);
	my $r = $c->page_hit({});
	is($r->status, 409, "$name: the old key is refused")
		or diag($r->describe);
	is($r->error, 'key_replaced', "$name: key_replaced");
	ok(!$r->set_cookie, "$name: no cookie for it");
}

# the answer of a request that landed on a profile; proved: the browser
# may see it all, else only what it sent
sub check_answer {
	my ($r, $name, %want) = @_;

	is($r->status, 200, "$name: 200") or diag($r->describe);
	ok(is_key($r->key), "$name: a key");
	is($r->cookie_value, $r->key, "$name: cookie is the key");
	is($r->user->{key}, $r->key, "$name: user.key");
	is($r->user->{user_id}, $want{user_id}, "$name: user_id")
		if exists $want{user_id};
	is($r->user->{email}, $want{email}, "$name: email")
		if exists $want{email};

	if (exists $want{proved}) {
		if ($want{proved}) {
			ok(defined $r->user->{page_views}, "$name: proved, counters");
		} else {
			ok(!defined $r->user->{page_views}
				&& !defined $r->user->{first_seen},
				"$name: unproved, no counters");
			ok(!defined $r->user->{name} || $want{name_sent},
				"$name: unproved, no name");
		}
	}
}

###############################################################################

for my $mode (qw/compat verified/) {

my $proof = $mode eq 'verified';

# no K, nothing matches: a new anonymous profile, new key

for my $f (sort keys %flags) {
	subtest "$mode: no K, nothing matches ($flags{$f})" => sub {
		my $c = browser($mode, $f);
		my $r = $c->init({});
		check_answer($r, 'first visit', user_id => undef, email => undef,
			proved => 1);
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,user_created', 'events');
		is($ev[0]{user_key}, $r->key, 'the events carry the new key');

		my $r2 = browser($mode, $f)->init({});
		isnt($r2->key, $r->key, 'another browser: another key');

		$r2 = $c->page_hit({});
		is($r2->key, $r->key, 'a visit without identity: the same key');
	};
}

# U held by X: switch to X with a key of its own; proved only by a proof

for my $f (sort keys %flags) {
	subtest "$mode: U held by X ($flags{$f})" => sub {
		my $u = uid();
		my $ex = email();
		my ($hx, $px) = holder($mode, $f, user_id => $u, email => $ex);

		my $c = browser($mode, $f);
		my $kb = $c->init({})->key;
		isnt($c->profile, $px, 'B has its own profile first');

		my $r = $c->init({ user_id => $u });
		check_answer($r, 'switch', user_id => $u, proved => $proof);
		is($r->user->{email}, $proof ? $ex : undef,
			$proof ? 'proved: X\'s email' : 'unproved: not X\'s email');
		isnt($r->key, $kb, 'a new key');
		isnt($r->key, $hx->key, 'not X\'s own browser\'s key');
		is($c->key, $r->key, 'the cookie is the new key');
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,user_identified', 'events');
		my ($ui) = of_type('user_identified', @ev);
		is($ui->{user_key}, $px, 'user_identified: X');
		is($ui->{user_id}, $u, 'user_identified: user_id');
		like($ui->{attrs}, qr/"from":"[^"]+"/, 'user_identified: from B');

		# the new key is X's; B's old one never resolves again

		$r = $c->page_hit({});
		is($c->profile, $px, 'the new key resolves to X');
		replaced($mode, $kb, 'B\'s old key');

		# X's own browser still has its own key

		$r = $hx->page_hit({});
		is($r->status, 200, 'X\'s browser: 200');
		is($hx->profile, $px, 'X\'s browser: still X');

		# no K at all: straight to X, no throwaway profile

		$c = browser($mode, $f);
		$r = $c->init({ user_id => $u });
		check_answer($r, 'first visit with U', user_id => $u,
			proved => $proof);
		@ev = $c->events();
		ok(!of_type('user_created', @ev), 'no throwaway profile');
		is($c->profile, $px, 'first visit with U: X');
	};
}

# U unheld, K has no user_id: U written onto K, and a new key

for my $f (sort keys %flags) {
	subtest "$mode: U unheld, K has no user_id ($flags{$f})" => sub {
		my $u = uid();
		my $c = browser($mode, $f);
		my $k = $c->init({})->key;

		my $r = $c->init({ user_id => $u });
		check_answer($r, 'set U', user_id => $u, proved => 1);
		isnt($r->key, $k, 'a new key');
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,profile_updated', 'events');
		my ($pu) = of_type('profile_updated', @ev);
		is($pu->{name}, 'user_id', 'profile_updated: user_id');
		is(json_decode($pu->{attrs})->{new}, $u, 'profile_updated: new');
		is($pu->{user_key}, $k, 'the same profile: its own key');
		is(holds($mode, 'user_id', $u), $k, 'U now on K');
		is(api($mode, 'user_id', $u)->{verified}{user_id},
			$proof ? JSON::PP::true : JSON::PP::false,
			$proof ? 'U proved' : 'U claimed');
		replaced($mode, $k, 'K\'s old key');

		# first visit with an unheld U: one new profile holding U

		$u = uid();
		$c = browser($mode, $f);
		$r = $c->init({ user_id => $u });
		check_answer($r, 'first visit, unheld U', user_id => $u,
			proved => 1);
		@ev = $c->events();
		is(scalar(of_type('user_created', @ev)), 1, 'one user_created');
		is(holds($mode, 'user_id', $u), $c->profile, 'U on it');
	};
}

# U unheld, K has another user_id: a new profile with U, switch

for my $f (sort keys %flags) {
	subtest "$mode: U unheld, K has another user_id ($flags{$f})" => sub {
		my ($u1, $u2) = (uid(), uid());
		my $c = browser($mode, $f);
		my $k1 = $c->init({ user_id => $u1 })->key;
		my $p1 = $c->profile;

		my $r = $c->init({ user_id => $u2 });
		check_answer($r, 'new profile', user_id => $u2, proved => 1);
		isnt($r->key, $k1, 'a new key');
		my @ev = $c->events(count => 3);
		is(types_new(@ev), 'page_view,user_created,user_identified',
			'events');
		is(holds($mode, 'user_id', $u1), $p1, 'U1 still on K');
		is(holds($mode, 'user_id', $u2), $c->profile,
			'U2 on the new profile');
		isnt($c->profile, $p1, 'the new profile is not K');
		replaced($mode, $k1, 'K\'s old key');
	};
}

# E, unified off: E written onto K, duplicates allowed, no new key (the
# email identifies nobody)

for my $f ('off_off', 'off_on') {
	subtest "$mode: E, unified off ($flags{$f})" => sub {
		my $e = email();
		my (undef, $px) = holder($mode, $f, email => $e);

		my $c = browser($mode, $f);
		my $kb = $c->init({})->key;
		my $pb = $c->profile;
		my $r = $c->init({ email => $e });
		check_answer($r, 'duplicate email', email => $e, proved => 1);
		is($r->key, $kb, 'the same key');
		is($c->profile, $pb, 'not switched to the other holder');
		ok(!defined $r->ignored_reason('email'), 'email not ignored');
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,profile_updated', 'events');
		my ($pu) = of_type('profile_updated', @ev);
		is($pu->{name}, 'email', 'profile_updated: email');

		is(api($mode, 'key', $px)->{email}, $e, 'X keeps its email');
	};
}

# E, K.email == E: just update K

for my $f (sort keys %flags) {
	subtest "$mode: E, K.email == E ($flags{$f})" => sub {
		my $e = email();
		my $c = browser($mode, $f);
		$c->init({ email => $e });
		my $k = $c->key;

		my $r = $c->init({ email => '  ' . uc($e) . ' ', plan => 'gold' });
		check_answer($r, 'same email', email => $e, proved => 1);
		is($r->key, $k, 'the same key');
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,profile_updated', 'events');
		my ($pu) = of_type('profile_updated', @ev);
		is($pu->{name}, 'plan', 'only the other attribute changed');
	};
}

# E held by X, unified on, authorize on: switch to X; an anonymous K is
# merged into X, and its key is retired there

subtest "$mode: E held by X, unified on, authorize on, anonymous K" => sub {
	my $e = email();
	my (undef, $px) = holder($mode, 'on_on', email => $e);

	my $c = browser($mode, 'on_on');
	my $kb = $c->init({ plan => 'from_b' })->key;
	my $pb = $c->profile;
	my $r = $c->init({ email => $e });
	check_answer($r, 'switch', email => $e, proved => $proof);
	isnt($r->key, $kb, 'a new key');
	is($c->profile, $px, 'X');

	my @ev = $c->events(count => 3);
	is(types(@ev), 'page_view,user_identified,user_merged', 'events');
	my ($um) = of_type('user_merged', @ev);
	is($um->{user_key}, $px, 'user_merged: into X');
	like($um->{attrs}, qr/\Q$pb\E/, 'user_merged: names K');

	# K's key is X's now, retired: it resolves to nothing

	replaced($mode, $kb, 'K\'s key');
	is(api($mode, 'key', $kb)->{key}, $px,
		'the server API still finds X by K\'s key');
	is(api($mode, 'key', $px)->{attributes}{plan}, 'from_b',
		'K\'s attributes merged into X');
	ok(!grep({ $_ eq $kb } @{api($mode, 'key', $px)->{aliases}}),
		'K\'s key is no session of X');
};

subtest "$mode: E held by X, unified on, authorize on, K with another email"
	=> sub
{
	my ($e, $e2) = (email(), email());
	my (undef, $px) = holder($mode, 'on_on', email => $e);

	my $c = browser($mode, 'on_on');
	$c->init({ email => $e2 });
	my $pc = $c->profile;
	my $r = $c->init({ email => $e });
	check_answer($r, 'switch', email => $e, proved => $proof);
	is($c->profile, $px, 'X');
	my @ev = $c->events(count => 2);
	is(types(@ev), 'page_view,user_identified', 'events: no merge');

	is(holds($mode, 'email', $e2), $pc, 'K keeps its email');
};

subtest "$mode: E held by X, unified on, authorize on, K with a user_id"
	=> sub
{
	my ($e, $u) = (email(), uid());
	my (undef, $px) = holder($mode, 'on_on', email => $e);

	my $c = browser($mode, 'on_on');
	$c->init({ user_id => $u });
	my $pc = $c->profile;
	my $r = $c->init({ email => $e });
	check_answer($r, 'switch', email => $e, proved => $proof);
	is($c->profile, $px, 'X');
	my @ev = $c->events(count => 2);
	is(types(@ev), 'page_view,user_identified', 'events: no merge');
	is(holds($mode, 'user_id', $u), $pc, 'U still on K');
};

# E held by X, unified on, authorize off: keep K, E not written,
# email_claimed

subtest "$mode: E held by X, unified on, authorize off" => sub {
	my $e = email();
	my (undef, $px) = holder($mode, 'on_off', email => $e);

	my $c = browser($mode, 'on_off');
	my $kb = $c->init({})->key;
	my $pb = $c->profile;
	my $r = $c->init({ email => $e, plan => 'basic' });
	check_answer($r, 'no switch', email => undef, proved => 1);
	is($r->key, $kb, 'the same key');
	is($r->ignored_reason('email'), 'conflict', 'email ignored: conflict');
	my @ev = $c->events(count => 3);
	is(types(@ev), 'email_claimed,page_view,profile_updated', 'events');
	my ($pu) = of_type('profile_updated', @ev);
	is($pu->{name}, 'plan', 'the other attribute applied');
	my ($ec) = of_type('email_claimed', @ev);
	is($ec->{user_key}, $pb, 'email_claimed: on K');

	is(holds($mode, 'email', $e), $px, 'X still holds E');
	is(api($mode, 'key', $pb)->{email}, undef, 'K has no email');

	# a first visit does not get X either

	$c = browser($mode, 'on_off');
	$r = $c->init({ email => $e });
	check_answer($r, 'first visit', email => undef);
	isnt($c->profile, $px, 'first visit: not X');
};

# E unheld, unified on, K has no email: E written onto K, a new key

for my $f ('on_off', 'on_on') {
	subtest "$mode: E unheld, K has no email ($flags{$f})" => sub {
		my $e = email();
		my $c = browser($mode, $f);
		my $k = $c->init({})->key;
		my $r = $c->init({ email => $e });
		check_answer($r, 'E written', email => $e, proved => 1);
		isnt($r->key, $k, 'a new key');
		my @ev = $c->events(count => 2);
		is(types(@ev), 'page_view,profile_updated', 'events');
		is(holds($mode, 'email', $e), $k, 'E now identifies K');
		replaced($mode, $k, 'K\'s old key');
	};
}

# E unheld, unified on, K has another email: new profile with E, switch

for my $f ('on_off', 'on_on') {
	subtest "$mode: E unheld, K has another email ($flags{$f})" => sub {
		my ($e1, $e2) = (email(), email());
		my $c = browser($mode, $f);
		my $k1 = $c->init({ email => $e1 })->key;
		my $p1 = $c->profile;
		my $r = $c->init({ email => $e2 });
		check_answer($r, 'new profile', email => $e2, proved => 1);
		isnt($r->key, $k1, 'a new key');
		my @ev = $c->events(count => 3);
		is(types_new(@ev), 'page_view,user_created,user_identified',
			'events');
		is(holds($mode, 'email', $e1), $p1, 'K keeps its email');
		is(holds($mode, 'email', $e2), $c->profile,
			'E2 on the new profile');
	};
}

###############################################################################

# U and E together: U identifies, E is an ordinary attribute

subtest "$mode: user_id priority over email" => sub {
	my ($e, $u) = (email(), uid());
	my (undef, $px) = holder($mode, 'on_on', email => $e);

	# unified on: E held by X is not applied to K

	my $c = browser($mode, 'on_on');
	$c->init({});
	my $pb = $c->profile;
	my $r = $c->init({ user_id => $u, email => $e });
	check_answer($r, 'unified', user_id => $u, email => undef);
	is($c->profile, $pb, 'unified: still K');
	is($r->ignored_reason('email'), 'conflict', 'unified: email conflict');
	my @ev = $c->events();
	ok(!of_type('user_identified', @ev), 'unified: no switch');

	# U held by Y, E held by X: Y

	my $u2 = uid();
	my (undef, $py) = holder($mode, 'on_on', user_id => $u2);
	$c = browser($mode, 'on_on');
	$r = $c->init({ user_id => $u2, email => $e });
	is($c->profile, $py, 'U held by Y, E by X: Y');

	# unified off: both applied

	($u, $e) = (uid(), email());
	holder($mode, 'off_off', email => $e);
	$c = browser($mode, 'off_off');
	$c->init({});
	$pb = $c->profile;
	$r = $c->init({ user_id => $u, email => $e });
	check_answer($r, 'unified off', user_id => $u, email => $e);
	is($c->profile, $pb, 'unified off: still K');

	# unified on, E unheld: applied with U

	($u, $e) = (uid(), email());
	$c = browser($mode, 'on_off');
	$r = $c->init({ user_id => $u, email => $e });
	check_answer($r, 'unified, E unheld', user_id => $u, email => $e);
};

subtest "$mode: numeric user_id 42 is \"42\"" => sub {
	my $n = 100000 + int(rand(800000000));
	my (undef, $px) = holder($mode, 'off_off', user_id => $n);
	my $c = browser($mode, 'off_off');
	my $r = $c->init({ user_id => "$n" });
	is($c->profile, $px, 'string finds the number');
	is($r->user->{user_id}, "$n", 'user_id is a string');

	$n++;
	(undef, $px) = holder($mode, 'off_off', user_id => "$n");
	$c = browser($mode, 'off_off');
	$r = $c->init({ user_id => $n + 0 });
	is($c->profile, $px, 'number finds the string');
	is($r->user->{user_id}, "$n", 'user_id given as a number is a string');
};

###############################################################################

# reset_auth: the old key is never used again

subtest "$mode: reset_auth rotation" => sub {
	my $u = uid();
	my $c = browser($mode, 'off_off');
	$c->init({ user_id => $u });
	my $k1 = $c->key;
	my $p1 = $c->profile;

	my $r = $c->reset_auth({});
	check_answer($r, 'anonymous', user_id => undef, email => undef,
		proved => 1);
	isnt($r->key, $k1, 'new key');
	is($c->key, $r->key, 'new cookie');
	my @ev = $c->events();
	ok(of_type('auth_reset', @ev), 'auth_reset');
	is((of_type('auth_reset', @ev))[0]{user_key}, $r->key,
		'auth_reset: the new profile');
	replaced($mode, $k1, 'the key before');

	my %seen = ($k1 => 1, $r->key => 1);
	for (1 .. 3) {
		$r = $c->reset_auth({});
		ok(!$seen{$r->key}++, "reset $_: never a key seen before");
	}

	is(holds($mode, 'user_id', $u), $p1, 'the old profile is still there');

	# the key in the body is retired too

	my $d = browser($mode, 'off_off');
	my $kd = $d->init({})->key;
	$r = $t->post_json("$modes{$mode}{off_off}reset_auth",
		{ apiKey => 'TESTKEY', key => $kd });
	is($r->status, 200, 'body key: 200');
	isnt($r->key, $kd, 'body key: not reused');
	replaced($mode, $kd, 'the body\'s key');
};

subtest "$mode: reset_auth with U" => sub {
	my $u = uid();
	my (undef, $py) = holder($mode, 'off_off', user_id => $u);

	my $c = browser($mode, 'off_off');
	my $k = $c->init({})->key;
	my $r = $c->reset_auth({ user_id => $u });
	check_answer($r, 'held', user_id => $u, proved => $proof);
	isnt($r->key, $k, 'held: a new key');
	is($c->profile, $py, 'held: the holder');
	ok(of_type('auth_reset', $c->events()), 'auth_reset');

	my $u2 = uid();
	$r = $c->reset_auth({ user_id => $u2, plan => 'x' });
	check_answer($r, 'unheld', user_id => $u2, proved => 1);
	isnt($c->profile, $py, 'unheld: a new profile');
	is(holds($mode, 'user_id', $u2), $c->profile,
		'unheld: U on the new profile');
};

subtest "$mode: reset_auth with E" => sub {
	my $e = email();
	my (undef, $px) = holder($mode, 'on_on', email => $e);

	# unified and authorize on: switch to the holder

	my $c = browser($mode, 'on_on');
	$c->init({});
	my $r = $c->reset_auth({ email => $e });
	check_answer($r, 'unified, authorize', email => $e, proved => $proof);
	is($c->profile, $px, 'unified, authorize: X');

	# authorize off: a new profile without E

	$c = browser($mode, 'on_off');
	$c->init({});
	my $pk = $c->profile;
	$r = $c->reset_auth({ email => $e });
	check_answer($r, 'unified, no authorize', email => undef);
	ok($c->profile ne $px && $c->profile ne $pk,
		'unified, no authorize: new');

	# an unheld E: a new profile with E

	my $e2 = email();
	$r = browser($mode, 'on_off')->reset_auth({ email => $e2 });
	check_answer($r, 'unheld', email => $e2);

	# unified off: a new profile that gets E (duplicates allowed)

	$c = browser($mode, 'off_off');
	$c->init({});
	$pk = $c->profile;
	$r = $c->reset_auth({ email => $e });
	check_answer($r, 'unified off', email => $e);
	ok($c->profile ne $px && $c->profile ne $pk, 'unified off: new');
};

###############################################################################

# update never switches

for my $f ('off_off', 'on_on') {
	subtest "$mode: update never switches ($flags{$f})" => sub {
		my ($u, $e) = (uid(), email());
		my (undef, $px) = holder($mode, $f, user_id => $u, email => $e);

		my $c = browser($mode, $f);
		my $kb = $c->init({})->key;
		my $pb = $c->profile;
		my $r = $c->update({ user_id => $u, email => $e, plan => 'p1' });
		check_answer($r, 'update', user_id => undef, email => undef);
		is($r->key, $kb, 'the same key');
		is($r->ignored_reason('user_id'), 'conflict', 'user_id: conflict');
		is($r->ignored_reason('email'), 'conflict', 'email: conflict');
		my @ev = $c->events();
		is(types(@ev), 'profile_updated', 'events');
		is($ev[0]{name}, 'plan', 'the rest applied');
		is($ev[0]{user_key}, $pb, 'on K');
		is(holds($mode, 'user_id', $u), $px, 'X keeps U');

		# a numeric user_id owned by X is a conflict as well

		my $n = 200000 + int(rand(800000000));
		holder($mode, $f, user_id => "$n");
		$r = $c->update({ user_id => $n });
		is($r->ignored_reason('user_id'), 'conflict', 'numeric: conflict');

		# unheld: applied, still no switch, a new key (an identity)

		my ($u2, $e2) = (uid(), email());
		$r = $c->update({ user_id => $u2, email => $e2 });
		check_answer($r, 'unheld', user_id => $u2, email => $e2);
		isnt($r->key, $kb, 'unheld: a new key');
		is(holds($mode, 'user_id', $u2), $pb, 'unheld: on K');
		my $k2 = $r->key;

		# its own values again: no conflict, no new key

		$r = $c->update({ user_id => $u2, email => uc $e2 });
		ok(!defined $r->ignored_reason('user_id'), 'own user_id: fine');
		ok(!defined $r->ignored_reason('email'), 'own email: fine');
		is($r->key, $k2, 'own values: same key');
	};
}

}

###############################################################################

$t->done_testing();

###############################################################################
