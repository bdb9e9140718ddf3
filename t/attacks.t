#!/usr/bin/perl

# (C) civchat developers

# The README's threat model, attack by attack, against the module: a
# profile read by naming its user_id (numeric ids counted, through
# init and reset_auth), with and without civchat_identity_secret;
# forged, foreign and malformed user_hash; session fixation through an
# e-mail link's key, a planted cookie and a merge by email; an email
# claimed first; replays of a key after a login and a logout; streams
# for unknown keys, over their limits, idle or not read; one visitor's
# burst against another's undelivered message; Origins with another
# scheme or port; $civchat_user_id for a proxied application.  The
# user_hash compare is checked to take the same number of instructions
# wherever a forged hash differs (callgrind), and the README's test
# vectors and RFC 4231's are checked.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key uniq_id json_decode user_hash/;
use Civchat::Stream;

use Digest::SHA qw/hmac_sha256_hex/;
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $SECRET = 'attack-test-secret-0123456789';
my $TOKEN = 'attack-api-token-0123456789';

my $conf = <<"EOF";

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  safe  4m;
    civchat_zone  open  1m;
    civchat_zone  mail  1m;
    civchat_zone  mailoff  1m;

    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  site.test;

        # a site with a secret, its pages signing user_ids
        location /safe/ {
            civchat                  zone=safe;
            civchat_identity_secret  $SECRET;
            civchat_stream_limit     per_key=2 per_address=6;
            civchat_stream_timeout   2s;
            send_timeout             1s;
            add_header               X-User  "\$civchat_user_id";
        }

        # no idle end: only a client that does not read ends a stream
        location /deaf/ {
            civchat                  zone=safe;
            civchat_identity_secret  $SECRET;
            civchat_stream_limit     per_key=2 per_address=20;
            civchat_stream_timeout   1h;
            send_timeout             1s;
        }

        # the User.com-compatible mode
        location /open/ {
            civchat     zone=open;
            add_header  X-User  "\$civchat_user_id";
        }

        # emails identify, with the secret
        location /mail/ {
            civchat                         zone=mail;
            civchat_identity_secret         $SECRET;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }

        location /mailoff/ {
            civchat                         zone=mailoff;
            civchat_identity_secret         $SECRET;
            civchat_unified_identification  on;
        }

        location /api-safe/ {
            civchat_api              zone=safe;
            civchat_api_token        $TOKEN;
            civchat_identity_secret  $SECRET;
        }

        location /api-open/ {
            civchat_api        zone=open;
            civchat_api_token  $TOKEN;
        }

        location /api-mail/ {
            civchat_api              zone=mail;
            civchat_api_token        $TOKEN;
            civchat_identity_secret  $SECRET;
        }

        location /api-mailoff/ {
            civchat_api              zone=mailoff;
            civchat_api_token        $TOKEN;
            civchat_identity_secret  $SECRET;
        }

        # the site's application trusts \$civchat_user_id (zone "safe",
        # the first)
        location /app/ {
            civchat_identity_secret  $SECRET;
            proxy_pass        http://127.0.0.1:%%PORT_1%%;
            proxy_set_header  X-Civchat-User-Id  \$civchat_user_id;
        }

        location = /status {
            civchat_status;
        }
    }

    server {
        listen       127.0.0.1:%%PORT_1%%;
        server_name  localhost;

        location /app/ {
            default_type  text/plain;
            return        200  "[\$http_x_civchat_user_id]";
        }
    }
}

EOF

$t->config($conf)->run();

sub uid { uniq_id('u') }
sub email { lc(uniq_id('e')) . '@example.org' }

# a browser of a location; "signed" ones send the user_hash of their
# user_id (or email) as the site's backend computes it
sub browser {
	my ($base, %o) = @_;
	return $t->client(base => "/$base/",
		$o{signed} ? (secret => $SECRET) : ());
}

sub api {
	my ($zone, $method, $path, $data) = @_;
	return $t->request(method => $method, path => "/api-$zone/$path",
		headers => [Authorization => "Bearer $TOKEN",
			'Content-Type' => 'application/json'],
		body => defined $data ? Civchat::json_encode($data) : undef);
}

sub say_to {
	my ($zone, $kind, $id, $content) = @_;
	return api($zone, 'POST', "users/$kind/$id/messages",
		{ content => $content });
}

# a stream, read until it is open (200 and retry) or refused (its
# whole error answer); error() is the refusal's error code
sub stream {
	my ($base, $key, %o) = @_;
	my $s = Civchat::Stream->open($t, path => "/$base/stream", key => $key,
		host => 'site.test', %o);
	Civchat::Stream::pump([$s], 3, sub { $s->{status} && ($s->{status} == 200
		? defined $s->{retry} : $s->{eof}) });
	return $s;
}

sub refusal {
	my ($s) = @_;
	my $j = json_decode($s->{body} // '');
	return ref $j eq 'HASH' ? $j->{error} : undef;
}

sub said {
	my ($s, $timeout, $n) = @_;
	Civchat::Stream::pump([$s], $timeout // 1,
		sub { grep({ $_->{event} eq 'message' } @{$s->events}) >= ($n // 1) });
	return map { $_->{data}{content} } grep { $_->{event} eq 'message' }
		@{$s->events};
}

# a request with an old key: refused, no cookie for it
sub refused {
	my ($base, $key, $name) = @_;
	my $c = browser($base);
	$c->set_cookie('__ca__chat', $key);
	my $r = $c->page_hit({});
	ok($r->status == 409 && !$r->set_cookie,
		"$name: 409, no cookie") or diag($r->describe);
}

# a victim: a profile with a user_id, an email and a name, made by the
# victim's own (signed where the site signs) browser
sub victim {
	my ($base, %o) = @_;
	my $c = browser($base, signed => $o{signed});
	my %data = (user_id => $o{user_id} // uid(), email => email(),
		name => 'Vic Tim', phone_number => '+48 600 100 200');
	my $r = $c->init(\%data);
	is($r->status, 200, "victim in /$base/: 200") or diag($r->describe);
	return ($c, \%data, $c->profile);
}

###############################################################################

# naming a user_id: with the secret, an unproved user_id never switches
# and reveals nothing

subtest 'a user_id named without proof (secret)' => sub {
	for my $id ('42' . int(rand(1e6)), int(rand(1e6)) + 4200000) {
		my ($vc, $v, $pv) = victim('safe', signed => 1, user_id => $id);

		my $a = browser('safe');
		my $r = $a->init({ user_id => $id =~ /^\d+$/ ? $id + 0 : $id });
		is($r->status, 200, "id $id: 200");
		is($r->ignored_reason('user_id'), 'unverified',
			"id $id: the user_id is ignored, unverified");
		is($r->user->{user_id}, undef, "id $id: no user_id shown");
		is($r->user->{email}, undef, "id $id: no email shown");
		is($r->user->{name}, undef, "id $id: no name shown");
		isnt($a->profile, $pv, "id $id: not the victim's profile");
		is($r->header('X-User') // '', '', "id $id: no \$civchat_user_id");

		# the victim's messages stay the victim's
		my $s = stream('safe', $a->key);
		is($s->status, 200, "id $id: the attacker's own stream");
		my $vs = stream('safe', $vc->key);
		is(say_to('safe', 'user_id', $id, "for $id")->status, 200,
			"id $id: the site messages the user");
		is(join('|', said($vs, 3)), "for $id", "id $id: the victim gets it");
		is(join('|', said($s, 0.5)), '', "id $id: the attacker does not");
		$_->close() for $s, $vs;

		# through reset_auth too
		$r = browser('safe')->reset_auth({ user_id => $id });
		is($r->ignored_reason('user_id'), 'unverified',
			"id $id: reset_auth, unverified");
		is($r->user->{email}, undef, "id $id: reset_auth shows nothing");

		# the application behind the site sees no user_id either
		$r = $t->request(method => 'GET', path => '/app/x',
			headers => [Cookie => '__ca__chat=' . $a->key]);
		is($r->body, '[]', "id $id: the application gets no user_id");
		$r = $t->request(method => 'GET', path => '/app/x',
			headers => [Cookie => '__ca__chat=' . $vc->key]);
		is($r->body, "[$id]", "id $id: but the victim's browser does");
	}
};

# counting small ids: every answer shows what was sent, nothing more

subtest 'counting user_ids (secret, then without)' => sub {
	my %emails;
	for my $base ('safe', 'open') {
		my @v = map { [ victim($base, signed => $base eq 'safe') ] } 1 .. 5;
		for my $v (@v) {
			my $id = $v->[1]{user_id};
			my $r = browser($base)->init({ user_id => $id });
			$emails{$r->user->{email}}++ if defined $r->user->{email};
			$emails{$r->user->{name}}++ if defined $r->user->{name};
		}
	}
	is(scalar(keys %emails), 0, 'no email or name of anyone read')
		or diag(join(' ', keys %emails));
};

# without the secret (User.com's rule): the claim switches, but the
# session it gets sees nothing of the profile

subtest 'a user_id named without the secret' => sub {
	my ($vc, $v, $pv) = victim('open');
	my $a = browser('open');
	my $r = $a->init({ user_id => $v->{user_id} });
	is($r->status, 200, 'answered 200');
	is($r->user->{user_id}, $v->{user_id}, 'the user_id sent, shown back');
	is($r->user->{email}, undef, 'not the email');
	is($r->user->{name}, undef, 'not the name');
	is($r->user->{page_views}, undef, 'not the visits');
	is($a->profile, $pv, 'the page views go to the profile (User.com\'s '
		. 'rule)');
	is($r->header('X-User') // '', '', 'no $civchat_user_id');
	isnt($a->key, $vc->key, 'a key of its own');

	my $s = stream('open', $a->key);
	is($s->status, 403, 'its stream: 403');
	is(refusal($s), 'unverified', 'its stream: unverified');
	$s->close();

	$r = $a->page_hit({});
	is($r->user->{email}, undef, 'a second request shows nothing either');
	is($r->user->{user_id}, undef, 'not even the user_id, not sent again');

	# the victim's own browser still sees it all
	$r = $vc->page_hit({});
	is($r->user->{email}, $v->{email}, 'the victim sees its email');
};

###############################################################################

# forged hashes

subtest 'forged user_hash' => sub {
	my ($vc, $v) = victim('safe', signed => 1);
	my $id = $v->{user_id};
	my $good = user_hash($SECRET, $id);
	(my $first = $good) =~ s/^(.)/$1 eq 'a' ? 'b' : 'a'/e;
	(my $last = $good) =~ s/(.)$/$1 eq 'a' ? 'b' : 'a'/e;

	my @forged = (
		[ 'random hex', join('', map { (0 .. 9, 'a' .. 'f')[rand 16] }
			1 .. 64) ],
		[ 'another id\'s hash', user_hash($SECRET, $id . '1') ],
		[ 'another secret\'s hash', user_hash($SECRET . 'x', $id) ],
		[ 'first digit wrong', $first ],
		[ 'last digit wrong', $last ],
		[ 'cut short', substr($good, 0, 63) ],
		[ 'one too many', $good . '0' ],
		[ 'not hex', 'z' x 64 ],
		[ 'empty', '' ],
		[ 'a number', 42 ],
		[ 'the email\'s hash for the user_id',
			user_hash($SECRET, $v->{email}) ],
		[ 'base64', 'q' x 43 . '=' ],
	);

	for my $f (@forged) {
		my ($name, $hash) = @$f;
		my $c = browser('safe');
		my $r = $c->init({ user_id => $id, user_hash => $hash });
		is($r->ignored_reason('user_id'), 'unverified', "$name: unverified");
		is($r->user->{email}, undef, "$name: nothing shown");
	}

	my $c = browser('safe');
	my $r = $c->init({ user_id => $id, user_hash => uc $good });
	is($r->user->{email}, $v->{email}, 'upper-case hex: the same proof');

	$r = browser('safe')->init({ user_id => " $id ",
		user_hash => $good });
	is($r->user->{email}, $v->{email}, 'the user_id trimmed before the hash');

	my $st = $t->get('/status')->body;
	like($st, qr/^civchat_unverified_total [1-9]\d*$/m,
		'unverified claims are counted');
};

###############################################################################

# session fixation: the attacker's key never becomes the victim's
# session of an identified profile

subtest 'fixation: an e-mail link\'s key' => sub {
	my $a = browser('safe');
	my $ka = $a->init({})->key;
	my $pa = $a->profile;

	# the victim opens ?__ca__chat=KA: the widget sends it as link_key
	my $v = browser('safe', signed => 1);
	my $r = $v->init({ link_key => $ka });
	isnt($r->key, $ka, 'the victim does not get the link\'s key');
	isnt($v->profile, $pa, 'nor the attacker\'s profile');
	my ($uc) = grep { $_->{type} eq 'user_created' } $v->events(count => 2);
	is(json_decode($uc->{attrs})->{link_key}, $ka,
		'the link\'s key is noted on user_created');

	# the victim logs in; the attacker's key is still only the attacker's
	my $id = uid();
	$v->init({ user_id => $id, email => email() });
	$r = $a->page_hit({});
	is($a->profile, $pa, 'the attacker is still on its own profile');
	is($r->user->{user_id}, undef, 'with no user_id');
};

subtest 'fixation: a planted cookie' => sub {
	my $a = browser('safe');
	my $ka = $a->init({})->key;

	# a cookie set for the site by a sister domain: the victim's browser
	# now sends KA
	my $v = browser('safe', signed => 1);
	$v->set_cookie('__ca__chat', $ka);
	my $id = uid();
	my $r = $v->init({ user_id => $id, email => email() });
	is($r->status, 200, 'the victim logs in');
	isnt($v->key, $ka, 'and gets a new key');
	my $pv = $v->profile;

	refused('safe', $ka, 'the planted key after the login');
	my $s = stream('safe', $ka);
	is($s->status, 403, 'the planted key has no stream');
	$s->close();

	# the victim's second login elsewhere (an existing profile): the same
	my $w = browser('safe', signed => 1);
	$w->init({ user_id => $id });
	my $kb = $w->init({})->key;
	my $v2 = browser('safe', signed => 1);
	$v2->set_cookie('__ca__chat', $kb);
	$v2->init({ user_id => uid() });
	isnt($v2->key, $kb, 'a switch gives a new key too');
	refused('safe', $kb, 'the key before the switch');

	# and a logout
	my $kv = $v->key;
	$r = $v->reset_auth({});
	isnt($r->key, $kv, 'reset_auth: a new key');
	refused('safe', $kv, 'the key before the logout');
	is(api('safe', 'GET', "users/user_id/$id")->json->{user}{key}, $pv,
		'the profile is still there for its user');
};

subtest 'fixation: a planted key merged by email' => sub {
	my $e = email();
	my $o = browser('mail', signed => 1);
	$o->init({ email => $e, name => 'Owner' });
	my $po = $o->profile;

	my $a = browser('mail');
	my $ka = $a->init({ plan => 'planted' })->key;

	my $v = browser('mail', signed => 1);
	$v->set_cookie('__ca__chat', $ka);
	my $r = $v->init({ email => $e });
	is($v->profile, $po, 'the victim\'s login merges the planted profile');
	is($r->user->{name}, 'Owner', 'proved: the victim sees its profile');
	isnt($v->key, $ka, 'with a new key');
	refused('mail', $ka, 'the planted key, now retired in the profile');
	ok(!grep({ $_ eq $ka }
		@{api('mail', 'GET', "users/key/$po")->json->{user}{aliases}}),
		'the planted key is no session of the profile');
};

###############################################################################

# an email claimed first: a claim, never the owner's identity

subtest 'an email claimed first (authorize off)' => sub {
	my $e = email();
	my $a = browser('mailoff');
	my $r = $a->init({ email => $e });
	is($r->user->{email}, $e, 'the unheld email is claimed');
	my $pa = $a->profile;
	is(api('mailoff', 'GET', "users/email/$e")->json->{user}{verified}
		{email}, JSON::PP::false, 'a claim, not verified');

	$r = say_to('mailoff', 'email', $e, 'for the owner');
	is($r->status, 409, 'a message by the claimed email: 409');
	is($r->json && $r->json->{error}, 'unverified', 'unverified');

	# the owner proves it: the email moves
	my $o = browser('mailoff', signed => 1);
	$r = $o->init({ email => $e });
	is($r->user->{email}, $e, 'the owner proves the email');
	my $po = $o->profile;
	isnt($po, $pa, 'on the owner\'s own profile');
	is(api('mailoff', 'GET', "users/key/$pa")->json->{user}{email}, undef,
		'the claimer lost it');
	my ($took) = grep { (json_decode($_->{attrs}) // {})->{old} }
		$t->read_events(count => 2, match => { user_key => $pa,
			type => 'profile_updated', name => 'email' });
	ok($took && json_decode($took->{attrs})->{old} eq $e
		&& !defined json_decode($took->{attrs})->{new},
		'profile_updated on the claimer: the email went');

	my $s = stream('mailoff', $o->key);
	is(say_to('mailoff', 'email', $e, 'for the owner')->status, 200,
		'now the message goes');
	is(join('|', said($s, 3)), 'for the owner', 'to the owner');
	$s->close();
};

subtest 'an email claimed first (authorize on)' => sub {
	my $e = email();
	my $a = browser('mail');
	$a->init({ email => $e, name => 'Squatter' });
	my $ka = $a->key;
	my $pa = $a->profile;

	my $o = browser('mail', signed => 1);
	my $r = $o->init({ email => $e });
	is($o->profile, $pa, 'the owner proves the email: its profile');
	refused('mail', $ka, 'the claimer\'s key');
	my $s = stream('mail', $ka);
	is($s->status, 403, 'the claimer has no stream any more');
	$s->close();
	is(api('mail', 'GET', "users/email/$e")->json->{user}{verified}{email},
		JSON::PP::true, 'the email is verified now');

	# a claim of a held email is refused
	$r = browser('mail')->init({ email => $e });
	is($r->ignored_reason('email'), 'unverified',
		'claiming a held email: unverified');
	is($r->user->{email}, undef, 'nothing shown');
};

###############################################################################

# streams

subtest 'streams: known keys only, limits' => sub {
	my $s = stream('safe', join('', map { ('a' .. 'z')[rand 26] } 1 .. 16));
	is($s->status, 403, 'an unknown key: 403');
	is(refusal($s), 'unknown_key', 'an unknown key: unknown_key');
	$s->close();

	my @keys = map { browser('safe')->init({})->key } 1 .. 7;

	# (the streams of the tests before have ended by now)
	sleep 0.5;

	my @s = map { stream('safe', $_) } @keys[0 .. 5];
	is(scalar(grep { $_->status == 200 } @s), 6, 'six addresses\' worth');
	my $x = stream('safe', $keys[6]);
	is($x->status, 429, 'per address: the seventh stream, 429');
	is(refusal($x), 'too_many_streams', 'too_many_streams');
	$_->close() for @s, $x;

	# the limits are given back as streams end
	Civchat::Stream::pump([], 0.5, sub { 0 });
	my @k = map { stream('safe', $keys[0]) } 1 .. 2;
	is(scalar(grep { $_->status == 200 } @k), 2, 'two streams of a key');
	$x = stream('safe', $keys[0]);
	is($x->status, 429, 'per key: the third, 429');
	$_->close() for @k, $x;
};

subtest 'streams: idle, and a client that does not read' => sub {
	my $k = browser('safe')->init({})->key;
	my $s = stream('safe', $k);
	is($s->status, 200, 'a stream');
	my $t0 = time();
	Civchat::Stream::pump([$s], 8, sub { $s->{eof} || $s->{last_chunk} });
	ok($s->{eof} || $s->{last_chunk}, sprintf('idle for 2s: ended after '
		. '%.1f s', time() - $t0));
	$s->close();

	# a client that never reads while the site sends it much
	my $c = browser('safe');
	$k = $c->init({})->key;
	sleep 0.5;
	my $deaf = Civchat::Stream->open($t, path => '/deaf/stream', key => $k,
		host => 'site.test');
	sleep 0.3;
	my $big = 'x' x 60000;
	for (1 .. 200) {
		api('safe', 'POST', "users/key/$k/messages",
			{ type => 'payload', content => $big });
	}

	# its two streams a key: one held by the deaf client, one free
	my $ok = stream('deaf', $k);
	is($ok->status, 200, 'a second stream of the key meanwhile');
	my $third = stream('deaf', $k);
	is($third->status, 429, 'a third: 429, the deaf one still counts');
	$_->close() for $ok, $third;

	# send_timeout 1s: the deaf stream ends, its place is free again
	my ($a, $b);
	for (1 .. 40) {
		sleep 0.25;
		$a = stream('deaf', $k);
		$b = stream('deaf', $k);
		last if $a->status == 200 && $b->status == 200;
		$_->close() for $a, $b;
	}
	ok($a->status == 200 && $b->status == 200,
		'send_timeout: the deaf stream ended, its place free again');
	$_->close() for $deaf, $a, $b;
};

subtest 'streams: one visitor\'s burst, another\'s waiting message' => sub {
	my $quiet = browser('safe');
	my $kq = $quiet->init({})->key;
	my $pq = $quiet->profile;
	is(api('safe', 'POST', "users/key/$pq/messages",
		{ content => 'waiting for you' })->status, 200,
		'a message for an offline visitor');

	my $loud = browser('safe');
	my $kl = $loud->init({})->key;
	my $ls = stream('safe', $kl);
	for (1 .. 300) {
		api('safe', 'POST', "users/key/$kl/messages", { content => "n$_" });
	}
	for (1 .. 50) {
		$loud->update({ n => $_ });
	}
	$ls->close();

	my $s = stream('safe', $kq, last_id => 0);
	is(join('|', said($s, 3)), 'waiting for you',
		'the quiet visitor still gets its message');
	$s->close();
};

###############################################################################

# Origin: scheme, host and port, all three

subtest 'Origin with another scheme or port' => sub {
	my %cases = (
		'http://site.test' => 200,
		'http://SITE.test' => 200,
		'http://site.test:80' => 200,
		'https://site.test' => 403,
		'ftp://site.test' => 403,
		'http://site.test:8080' => 403,
		'http://site.test.evil.example' => 403,
		'http://evil.example' => 403,
		'null' => 403,
	);

	for my $origin (sort keys %cases) {
		my $r = $t->request(method => 'POST', path => '/safe/init',
			headers => [Host => 'site.test', Origin => $origin,
				'Content-Type' => 'application/json'],
			body => '{"apiKey":"TESTKEY"}');
		is($r->status, $cases{$origin}, "Origin $origin: "
			. $cases{$origin});
	}
};

###############################################################################

# the compare takes the same work wherever a forged hash differs: the
# instructions of ngx_http_civchat_hmac_verify(), counted by callgrind in
# an nginx of one process

SKIP: {
	skip 'no valgrind', 2 unless `sh -c 'command -v valgrind'`;
	skip 'under a sanitizer or valgrind already', 2
		if $ENV{ASAN_OPTIONS} || $ENV{TEST_NGINX_VALGRIND};

	my ($vc, $v) = victim('safe', signed => 1);
	my $id = $v->{user_id};
	my $good = user_hash($SECRET, $id);
	(my $first = $good) =~ s/^(.)/$1 eq 'a' ? 'b' : 'a'/e;
	(my $last = $good) =~ s/(.)$/$1 eq 'a' ? 'b' : 'a'/e;

	my %ir;
	for my $case ([ first => $first ], [ last => $last ], [ valid => $good ])
	{
		$ir{$case->[0]} = verify_instructions($id, $case->[1]);
	}

	ok($ir{first} && $ir{first} == $ir{last}, "a forged hash: $ir{first} "
		. "instructions whether the first or the last digit is wrong");
	is($ir{valid}, $ir{first}, 'a valid one: the same');
}

# one request against a one-process nginx under callgrind: the
# instructions spent in the compare
sub verify_instructions {
	my ($id, $hash) = @_;

	my $d = $t->testdir . '/cg';
	mkdir $d;
	unlink glob("$d/*");
	my $port = $t->port(2);
	my $module = $t->module_path;

	$t->write_file('cg/nginx.conf', <<"EOF");
load_module $module;
daemon off;
master_process off;
error_log $d/error.log;
pid $d/nginx.pid;
events { }
http {
    access_log off;
    client_body_temp_path $d;
    civchat_zone  cg  1m;
    server {
        listen 127.0.0.1:$port;
        location /safe/ {
            civchat                  zone=cg;
            civchat_api_key          TESTKEY;
            civchat_identity_secret  $SECRET;
        }
    }
}
EOF

	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0) {
		open(STDERR, '>', "$d/valgrind.log");
		exec('valgrind', '--tool=callgrind',
			"--callgrind-out-file=$d/callgrind.out",
			'--toggle-collect=ngx_http_civchat_hmac_verify',
			$t->binary, '-p', "$d/", '-c', "$d/nginx.conf");
		exit 1;
	}

	my $up = 0;
	for (1 .. 200) {
		$up = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") and last;
		sleep 0.1;
	}

	my $r = $t->request(method => 'POST', path => '/safe/init',
		port => 2, headers => ['Content-Type' => 'application/json'],
		body => Civchat::json_encode({ apiKey => 'TESTKEY',
			user_id => $id, user_hash => $hash }));

	kill 'QUIT', $pid;
	waitpid($pid, 0);

	my $out = $t->read_file('cg/callgrind.out') // '';
	my ($n) = $out =~ /^(?:summary|totals):\s*(\d+)/m;
	diag("callgrind: $r->{status}, " . ($n // 'no total'))
		if $ENV{TEST_NGINX_VERBOSE};
	return $n;
}

###############################################################################

# the README's user_hash test vectors, and RFC 4231's (the secret in a
# file: they are bytes, not text)

subtest 'test vectors' => sub {
	my $readme = $t->read_file($t->repo . '/README.md') // '';
	my ($secret) = $readme =~ /^\s*secret:\s*(\S+)\s*$/m;
	my @vectors = $readme =~ /^\s*user_hash\("([^"]+)"\)\s*=\s*([0-9a-f]{64})\s*$/mg;
	ok($secret && @vectors >= 4, 'the README has test vectors')
		or return;

	my %v = @vectors;
	for my $id (sort keys %v) {
		is(hmac_sha256_hex($id, $secret), $v{$id},
			"README: user_hash(\"$id\") is HMAC-SHA256");
	}

	# and the module takes them: a proof of each switches to its holder
	(my $c3 = $conf) =~ s{(location = /status \{)}{location /readme/ {
            civchat                         zone=open;
            civchat_identity_secret         $secret;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }

        $1};
	ok($t->reload($c3), 'reload with the README\'s secret');

	for my $id (sort keys %v) {
		my $field = $id =~ /\@/ ? 'email' : 'user_id';
		utf8::decode(my $text = $id);
		my $holder = $t->client(base => '/readme/');
		$holder->update({ $field => $text, title_attr => 'held' });
		my $p = $holder->profile;
		my $c = $t->client(base => '/readme/');
		$c->init({ $field => $text, user_hash => $v{$id} });
		is($c->profile, $p, "README: the module takes user_hash(\"$id\")");
	}
};

{
	my @rfc = (
		[ "\x0b" x 20, 'Hi There',
			'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7' ],
		[ "\xaa" x 131, 'Test Using Larger Than Block-Size Key - Hash Key First',
			'60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54' ],
	);

	my $i = 0;
	for my $v (@rfc) {
		my ($key, $data, $mac) = @$v;
		$i++;
		$t->write_file("rfc$i.key", $key);
	}

	(my $c2 = $conf) =~ s{(location = /status \{)}{location /rfc1/ {
            civchat                  zone=open;
            civchat_identity_secret  file=%%TESTDIR%%/rfc1.key;
        }

        location /rfc2/ {
            civchat                  zone=open;
            civchat_identity_secret  file=%%TESTDIR%%/rfc2.key;
        }

        $1};
	ok($t->reload($c2), 'reload with RFC 4231 keys');

	$i = 0;
	for my $v (@rfc) {
		my ($key, $data, $mac) = @$v;
		$i++;
		is(hmac_sha256_hex($data, $key), $mac, "RFC 4231 case $i: Perl");

		# a holder of the user_id, then a proof of it: the switch shows
		# the holder's email
		my $e = email();
		browser("rfc$i")->update({ user_id => $data, email => $e });
		my $r = browser("rfc$i")->init({ user_id => $data,
			user_hash => $mac });
		is($r->user->{email}, $e, "RFC 4231 case $i: the module agrees");
		$r = browser("rfc$i")->init({ user_id => $data,
			user_hash => user_hash('wrong-secret-0123456789', $data) });
		is($r->ignored_reason('user_id'), 'unverified',
			"RFC 4231 case $i: a wrong key does not");
	}
}

###############################################################################

$t->done_testing();

###############################################################################
