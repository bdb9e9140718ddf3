#!/usr/bin/perl

# (C) civchat developers

# Tests for one profile space on Redis Cluster shared by three nginx
# hosts (t/lib/Civchat/Cluster.pm: a real cluster of three masters and
# three replicas): a visitor's key made on host A is the same profile on
# B and C (the events of all carry its key, the page views counted on
# each add up in Redis and in the server API of each); the identity
# rules of the README's "Identity" (identify, switch to another
# user_id, e-mail claims, reset_auth and the old key's 409, a merge of
# an anonymous profile into an identified one, update's conflicts),
# each sequence run once across the hosts and once on one host's zone
# of its own, with and without civchat_identity_secret, the two giving
# the same outcome; a retired key after its grace; page views written
# behind reaching Redis; the server API of A reading, updating and
# erasing a profile made on B; logins on a profile another host
# writes at the same moment (a write refused for its version applied
# again to a fresh copy); no page view lost by a graceful quit right
# after a burst; a race of two new browsers on two hosts naming
# one user_id at the same moment, 21 times (one profile holds it, both
# browsers land on it, one index entry names it).  Every document and
# index entry is checked, before the race and after it: a user_id is
# held by one profile, an entry names a profile that holds its name.
# The faults are in t/cluster_faults.t.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key uniq_id json_encode user_hash/;
use Civchat::Cluster;

use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

# a zone whose deltas are written only every 2 s: what a quit must
# write itself
my $cl = Civchat::Cluster->new(hosts => 3,
	http => 'civchat_zone  slow  4m  redis=c1 redis_flush=2s;',
	server => "location /s/ {\n            civchat  zone=slow;\n        }");

my ($A, $B, $C) = (0, 1, 2);

sub uid { uniq_id('uid') }
sub email { lc(uniq_id('e')) . '@example.org' }

sub types { join(',', sort map { $_->{type} } @_) }

# the page views of a profile in Redis
sub pv {
	my ($zone, $id) = @_;
	my $d = $cl->doc($zone, $id);
	return $d ? $d->{pv} // 0 : undef;
}

###############################################################################

# a key made on A is the same profile on B and C

subtest 'a key made on A is one profile on every host' => sub {
	my $b = $cl->browser();

	my $r = $b->on($A)->init({});
	is($r->status, 200, 'A: 200');
	my $k = $r->key;
	ok(is_key($k), 'A: a key');
	my @ev = $b->events(count => 2);
	is(types(@ev), 'page_view,user_created', 'A: user_created, page_view');
	is($ev[0]{user_key}, $k, 'A: the events carry the key');

	ok($cl->wait_for(sub { $cl->doc('users', $k) }, 5),
		'the document p:{KEY} is in Redis');
	is($cl->doc('users', $k)->{identity}{key}, $k, '... and names its key');

	my $views = 1;

	for my $h ($B, $C, $A, $B, $C, $B) {
		$r = $b->on($h)->page_hit({});
		$views++;
		is($r->status, 200, "host $h: 200");
		is($r->key, $k, "host $h: the same key");
		is($b->key, $k, "host $h: the cookie keeps it");
		@ev = $b->events();
		is(types(@ev), 'page_view', "host $h: a page_view, no user_created");
		is($ev[0]{user_key}, $k, "host $h: its events carry the key");
	}

	# the counters of three hosts meet in Redis, and in every host's API

	ok($cl->wait_for(sub { (pv('users', $k) // 0) == $views }, 5),
		"Redis: $views page views") or diag(json_encode($cl->doc('users',
		$k)));

	for my $h ($A, $B, $C) {
		my $u;
		ok($cl->wait_for(sub {
			$u = $cl->api_user($h, 'key', $k);
			$u && $u->{page_views} == $views }, 5),
			"API of host $h: $views page views")
			or diag(json_encode($u));
		is($u->{sessions}, 1, "API of host $h: one session");
	}

	# a browser whose key no host knows: adopted once, on one host

	my $c = $cl->browser();
	my $mine = 'Adopt' . substr(uniq_id('x') =~ s/\W//gr, -11);
	$c->set_cookie('__ca__chat', $mine);
	$r = $c->on($B)->page_hit({});
	is($r->key, $mine, 'an unknown well-formed key is adopted on B');
	is(types($c->events(count => 2)), 'page_view,user_created',
		'... a new profile');
	$r = $c->on($C)->page_hit({});
	is($r->key, $mine, '... and kept on C');
	is(types($c->events()), 'page_view', '... which C does not make again');
	is($c->profile, $mine, '... the same profile');
	ok($cl->wait_for(sub { (pv('users', $mine) // 0) == 2 }, 5),
		'... with its two page views in Redis');
};

###############################################################################

# The identity matrix.  Each sequence names, per step, a browser, the
# host it goes to and the location (unified identification, authorize
# by email); run "across" the hosts on zones on Redis, and "local" with
# every step on host A's zone of its own (the single host's rules, as
# t/identity.t checks them).  The two transcripts must be equal: the
# same statuses, keys changed or kept, profiles landed on (named in
# order of appearance), events, user_id and email shown, fields ignored.
#
# A step: { b => browser, on => host, loc => '' | 'u' | 'uo',
#   do => endpoint, data => {...} }; U1.. and E1.. in data are fresh
#   values; replay => [step, browser]: the browser's key before that
#   step, sent by a new browser; api => kind, id => U1 or [step,
#   browser] (a key); want => checks of every run: same => step (the
#   profile of that step), other => step, status, new_key.

my @matrix = (
	{ name => 'identify on A, the same user_id on B, another one on B',
	  steps => [
		{ b => 'x', on => $A, do => 'init', data => {} },
		{ b => 'x', on => $A, do => 'init', data => { user_id => 'U1' },
		  want => { new_key => 1, same => 0 } },
		{ b => 'y', on => $B, do => 'init', data => { user_id => 'U1' },
		  want => { same => 1 } },
		{ b => 'y', on => $C, do => 'page_hit', data => {},
		  want => { same => 1, new_key => 0 } },
		{ b => 'x', on => $B, do => 'page_hit', data => {},
		  want => { same => 1, new_key => 0 } },
		{ b => 'z', on => $C, do => 'init',
		  data => { user_id => 'U1', user_hash => '0' x 64 } },
		{ b => 'y', on => $B, do => 'init', data => { user_id => 'U2' },
		  want => { other => 1, new_key => 1 } },
		{ b => 'r', on => $A, replay => [6, 'y'], do => 'page_hit',
		  want => { status => 409 } },
		{ b => 'y', on => $A, do => 'init', data => { user_id => 'U1' },
		  want => { same => 1, new_key => 1 } },
		{ b => 'y', on => $C, do => 'update',
		  data => { user_id => 'U2', plan => 'p' } },
		{ api => 'user_id', id => 'U1', on => $C },
		{ api => 'user_id', id => 'U2', on => $A },
	  ] },

	{ name => 'reset_auth on B, the old key on A',
	  steps => [
		{ b => 'x', on => $A, do => 'init', data => { user_id => 'U1' } },
		{ b => 'x', on => $B, do => 'page_hit', data => {},
		  want => { same => 0 } },
		{ b => 'x', on => $B, do => 'reset_auth', data => {},
		  want => { other => 0, new_key => 1 } },
		{ b => 'r', on => $A, replay => [2, 'x'], do => 'page_hit',
		  want => { status => 409 } },
		{ b => 'r2', on => $C, replay => [2, 'x'], do => 'init',
		  want => { status => 409 } },
		{ b => 'x', on => $A, do => 'page_hit', data => {},
		  want => { same => 2, new_key => 0 } },
		{ b => 'x', on => $C, do => 'reset_auth',
		  data => { user_id => 'U1' }, want => { same => 0 } },
		{ b => 'r3', on => $B, replay => [6, 'x'], do => 'page_hit',
		  want => { status => 409 } },
		{ api => 'user_id', id => 'U1', on => $B },
		{ api => 'key', id => [2, 'x'], on => $C },
	  ] },

	{ name => 'an email held on A claimed on B (unified on, authorize off)',
	  steps => [
		{ b => 'x', on => $A, loc => 'uo', do => 'init',
		  data => { email => 'E1' } },
		{ b => 'y', on => $B, loc => 'uo', do => 'init', data => {} },
		{ b => 'y', on => $B, loc => 'uo', do => 'init',
		  data => { email => 'E1', plan => 'basic' },
		  want => { same => 1, new_key => 0 } },
		{ b => 'y', on => $C, loc => 'uo', do => 'page_hit',
		  data => { email => 'E1' }, want => { same => 1 } },
		{ b => 'z', on => $C, loc => 'uo', do => 'init',
		  data => { email => 'E1' }, want => { other => 0 } },
		{ b => 'y', on => $A, loc => 'uo', do => 'init',
		  data => { email => 'E2' }, want => { same => 1, new_key => 1 } },
		{ b => 'x', on => $B, loc => 'uo', do => 'init',
		  data => { email => 'E2' }, want => { same => 0 } },
		{ b => 'x', on => $C, loc => 'uo', do => 'init',
		  data => { email => 'E3' }, want => { other => 0 } },
		{ api => 'email', id => 'E1', on => $B },
		{ api => 'email', id => 'E2', on => $C },
		{ api => 'email', id => 'E3', on => $A },
	  ] },

	{ name => 'an email another profile holds, written under unified off',
	  steps => [
		{ b => 'y', on => $A, loc => 'uo', do => 'init', data => {} },
		{ b => 'y', on => $A, loc => 'uo', do => 'init',
		  data => { email => 'E1' }, want => { new_key => 1 } },
		{ b => 'x', on => $B, do => 'init', data => {} },
		{ b => 'x', on => $B, do => 'init', data => { email => 'E1' },
		  want => { new_key => 0, same => 2 } },
		{ api => 'email', id => 'E1', on => $C },
		{ b => 'z', on => $C, loc => 'u', do => 'init',
		  data => { email => 'E1' } },
	  ] },

	{ name => 'an anonymous profile of B merged into one identified on A',
	  steps => [
		{ b => 'x', on => $A, loc => 'u', do => 'init',
		  data => { email => 'E1', user_id => 'U1' } },
		{ b => 'y', on => $B, loc => 'u', do => 'init',
		  data => { plan => 'from_b' } },
		{ b => 'y', on => $B, loc => 'u', do => 'page_hit', data => {} },
		{ b => 'y', on => $A, loc => 'u', do => 'init',
		  data => { email => 'E1' }, want => { same => 0, new_key => 1 } },
		{ b => 'r', on => $B, replay => [3, 'y'], do => 'page_hit',
		  want => { status => 409 } },
		{ b => 'y', on => $C, loc => 'u', do => 'page_hit', data => {},
		  want => { same => 0, new_key => 0 } },
		{ api => 'key', id => [3, 'y'], on => $B },
		{ api => 'user_id', id => 'U1', on => $C },
		# a profile with a user_id is not merged: a switch only
		{ b => 'w', on => $C, loc => 'u', do => 'init',
		  data => { user_id => 'U2' } },
		{ b => 'w', on => $B, loc => 'u', do => 'init',
		  data => { email => 'E1' }, want => { same => 0 } },
		{ api => 'user_id', id => 'U2', on => $A },
	  ] },

	{ name => 'update with a user_id held on another host',
	  steps => [
		{ b => 'x', on => $A, do => 'init', data => { user_id => 'U1' } },
		{ b => 'y', on => $B, do => 'init', data => {} },
		{ b => 'y', on => $B, do => 'update',
		  data => { user_id => 'U1', plan => 'p1' },
		  want => { new_key => 0 } },
		{ b => 'y', on => $C, do => 'update', data => { user_id => 'U2' },
		  want => { new_key => 1 } },
		{ b => 'x', on => $C, do => 'update', data => { user_id => 'U2' } },
		{ api => 'user_id', id => 'U2', on => $A },
		{ api => 'key', id => [2, 'y'], on => $A },
	  ] },
);

# the automatic attributes, left out of the transcript
my %auto = map { $_ => 1 } qw/last_ip browser_language country region city
	timezone/;

sub run_sequence {
	my ($seq, $mode, $where) = @_;

	my $verified = $mode eq 'verified';
	my (%browser, %sym, %value, %name, @out, @steps);

	# keys named in order of appearance; fresh U1, E1 ... values
	my $sym = sub {
		my ($k) = @_;
		return 'none' unless defined $k;
		$sym{$k} //= 'K' . (keys(%sym) + 1);
	};
	my $val = sub {
		my ($v) = @_;
		return $v unless defined $v && $v =~ /^([UE])\d$/;
		$value{$v} //= $1 eq 'U' ? uid() : email();
		$name{$value{$v}} = $v;
		return $value{$v};
	};
	my $back = sub { my ($v) = @_; defined $v ? $name{$v} // $v : 'null' };

	my $base = sub {
		my ($loc, $api) = @_;
		my $p = ($where eq 'local' ? 'l' : '') . ($verified ? 'v' : '');
		return "/${p}api/" if $api;
		return "/$p$loc/" if length $p || length $loc;
		return '/civchat/';
	};

	for my $i (0 .. $#{$seq->{steps}}) {
		my $s = $seq->{steps}[$i];
		my $h = $where eq 'local' ? $A : $s->{on};
		my %rec = (step => $i);

		if ($s->{api}) {
			my $id = ref $s->{id} ? $steps[$s->{id}[0]]{before}{$s->{id}[1]}
				: $val->($s->{id});
			my $r = $cl->api($h, 'GET', "users/$s->{api}/$id", undef,
				base => $base->('', 1));
			my $u = $r->status == 200 ? $r->json->{user} : {};
			%rec = (%rec, api => "$s->{api} "
				. ($s->{api} eq 'key' ? $sym->($id) : $back->($id)),
				status => $r->status, key => $sym->($u->{key}),
				user_id => $back->($u->{user_id}),
				email => $back->($u->{email}),
				aliases => join(',', sort map { $sym->($_) }
					@{$u->{aliases} // []}),
				verified => join(',', grep { $u->{verified}{$_} }
					sort keys %{$u->{verified} // {}}),
				attrs => join(',', map { "$_=$u->{attributes}{$_}" }
					grep { !$auto{$_} } sort keys %{$u->{attributes} // {}}));
			push @out, \%rec;
			push @steps, { before => {} };
			next;
		}

		# what the steps before wrote behind is in Redis: the writes
		# of other hosts at the same moment are another test's
		$cl->settle($verified ? 'signed' : 'users') if $where ne 'local';

		my $b = $browser{$s->{b}} //= $cl->browser(
			$verified ? (secret => $Civchat::Cluster::SECRET) : ());

		if ($s->{replay}) {
			my ($j, $who) = @{$s->{replay}};
			$b->set_cookie('__ca__chat', $steps[$j]{before}{$who});
		}

		my %before = map { $_ => $browser{$_}->key } keys %browser;
		push @steps, { before => \%before };

		my %data = map { $_ => $val->($s->{data}{$_}) }
			keys %{$s->{data} // {}};
		my $r = $b->on($h)->post($s->{do}, \%data,
			base => $base->($s->{loc} // ''));

		my @ev;
		if ($r->status == 200 && $s->{do} ne 'update') {
			@ev = $b->events();
		} elsif ($r->status == 200) {
			@ev = $b->events(count => 0);
		}

		my ($pv) = grep { $_->{type} eq 'page_view' } @ev;
		my $profile = ($pv // $ev[0] // {})->{user_key};

		%rec = (%rec, do => "$s->{b} $s->{do}", status => $r->status,
			error => $r->error // '',
			key => $sym->($r->key),
			new_key => (($before{$s->{b}} // '') ne ($b->key // '')) ? 1 : 0,
			profile => $sym->($profile),
			events => types(@ev),
			user_id => $back->($r->user->{user_id}),
			email => $back->($r->user->{email}),
			ignored => join(',', map { "$_->{name}:$_->{reason}" }
				sort { $a->{name} cmp $b->{name} }
				@{($r->json // {})->{ignored} // []}));

		$steps[$i]{profile} = $profile;
		$steps[$i]{host} = $h;
		push @out, \%rec;

		my $w = $s->{want} // {};
		my $what = "$seq->{name} ($mode, $where), step $i";
		is($r->status, $w->{status} // 200, "$what: status")
			or diag($r->describe);
		is($r->error, 'key_replaced', "$what: key_replaced")
			if ($w->{status} // 0) == 409;
		is($rec{new_key}, $w->{new_key}, "$what: new key: $w->{new_key}")
			if defined $w->{new_key};
		is($profile, $steps[$w->{same}]{profile},
			"$what: the profile of step $w->{same}")
			if defined $w->{same};
		isnt($profile, $steps[$w->{other}]{profile},
			"$what: not the profile of step $w->{other}")
			if defined $w->{other};
	}

	return \@out;
}

sub show_transcript {
	my ($out) = @_;
	return join("\n", map { my $s = $_; join(' ', map { "$_=$s->{$_}" }
		sort keys %$s) } @$out);
}

for my $mode (qw/compat verified/) {
	for my $seq (@matrix) {
		subtest "$mode: $seq->{name}" => sub {
			my $local = run_sequence($seq, $mode, 'local');
			my $across = run_sequence($seq, $mode, 'across');
			is_deeply($across, $local, 'across the hosts as on one host')
				or diag("across:\n" . show_transcript($across)
				. "\none host:\n" . show_transcript($local));
		};
	}
}

###############################################################################

# a retired key after its grace: a new visitor on any host, not adopted.
# Two minutes are not waited: the minute of retirement in the profile's
# document is moved back, as if they had passed, and announced on the
# zone's channel the way a host announces its writes

subtest 'a retired key after its grace is a new visitor on every host' => sub {
	my $x = $cl->browser();
	$x->on($A)->init({ user_id => uid() });
	my $old = $x->key;
	my $p = $x->profile;
	$x->on($B)->reset_auth({});
	isnt($x->key, $old, 'reset_auth on B: a new key');

	my $r = $cl->browser()->on($C)->set_cookie('__ca__chat', $old)
		->page_hit({});
	is($r->status, 409, 'the old key on C, within the grace: 409');

	my $d = $cl->doc('users', $p);
	my $id = $d->{identity};
	my $now = int(time() / 60) % 65536;
	my $ago = ($now - 5) % 65536;
	my $moved = 0;

	if ($id->{key} eq $old && $id->{key_retired}) {
		$id->{key_retired_at} = $ago;
		$moved++;
	}
	for my $i (0 .. $#{$id->{retired} // []}) {
		next unless $id->{retired}[$i] eq $old;
		$id->{retired_at}[$i] = $ago;
		$moved++;
	}
	is($moved, 1, 'the old key is retired in its profile\'s document');

	my $key = "civchat:users:p:{$p}";
	$cl->rcmd('HSET', $key, 'id', json_encode($id));
	my $v = $cl->rcmd('HINCRBY', $key, 'v', 1);
	my $port = $cl->redis()->owner($cl->redis()->keyslot($key));
	$cl->redis()->command($port, 'PUBLISH', 'civchat:users:changed',
		"test0000test0000 $v $p");

	for my $h ($A, $C) {
		my $n = $cl->browser()->on($h)->set_cookie('__ca__chat', $old);
		$r = $n->page_hit({});
		is($r->status, 200, "the old key on host $h after the grace: 200")
			or diag($r->describe);
		ok(is_key($r->key) && $r->key ne $old,
			"host $h: a new key, the old one not adopted");
		my @ev = $n->events(count => 2);
		is(types(@ev), 'page_view,user_created', "host $h: a new visitor");
		isnt($n->profile, $p, "host $h: not the old profile");
	}
};

###############################################################################

# page views written behind

subtest 'page views written behind reach Redis' => sub {
	my @b = map { $cl->browser() } 1 .. 10;
	$_->on($A)->init({}) for @b;

	for my $n (1 .. 10) {
		$_->page_hit({}) for @b;
	}

	my @keys = map { $_->key } @b;
	my $ok = $cl->wait_for(sub { !grep { (pv('users', $_) // 0) != 11 }
		@keys }, 5);
	ok($ok, '110 page views on A: each profile has its 11 in Redis')
		or diag(join(' ', map { pv('users', $_) // 'none' } @keys));

	for my $h ($B, $C) {
		my @views = map { ($cl->api_user($h, 'key', $_) // {})->{page_views}
			// 0 } @keys;
		is(join(' ', @views), join(' ', (11) x 10),
			"API of host $h: 11 page views each");
	}
};

###############################################################################

# every document and index entry, now that all were written: one holder
# for each user_id, and each entry names a profile that holds its name

sub check_space {
	my ($zone) = @_;

	my (%holders, @bad);
	my @docs = $cl->keys_of($zone, 'p:*');
	my @entries = $cl->keys_of($zone, 'i:*');

	for my $k (@docs) {
		my ($id) = $k =~ /p:\{(.*)\}$/;
		my $d = $cl->doc($zone, $id) or next;
		next if defined $d->{merged};
		push @bad, "$k: no identity" unless $d->{identity};
		my $u = $d->{identity}{user_id};
		push @{$holders{$u}}, $id if defined $u;
	}

	for my $u (sort keys %holders) {
		push @bad, "user_id $u held by @{$holders{$u}}"
			if @{$holders{$u}} > 1;
		my $ix = $cl->index($zone, 'u', $u);
		push @bad, "user_id $u: its entry names " . ($ix // 'nobody')
			. ", not $holders{$u}[0]" unless ($ix // '') eq $holders{$u}[0];
	}

	for my $k (@entries) {
		my ($kind, $v) = $k =~ /i:\{([kue]):(.*)\}$/ or next;
		my $id = $cl->index($zone, $kind, $v);
		my $d = $cl->doc($zone, $id);
		next if $d && defined $d->{merged};
		my $i = $d && $d->{identity};
		my $holds = !$i ? 0
			: $kind eq 'u' ? ($i->{user_id} // '') eq $v
			: $kind eq 'e' ? ($i->{email} // '') eq $v
			: grep { $_ eq $v } $i->{key}, @{$i->{aliases}},
				@{$i->{unproved}}, @{$i->{retired}};
		push @bad, "$k names $id, which does not hold it" unless $holds;
	}

	ok(@docs > 10, "zone $zone: " . scalar(@docs) . ' documents, '
		. scalar(@entries) . ' index entries');
	is(join("\n", @bad), '', "zone $zone: each user_id held once, each "
		. 'entry names its holder');
}

check_space('users');
check_space('signed');

###############################################################################

# the server API of A on a profile made on B

subtest 'the server API of A on a profile of B' => sub {
	my ($u, $u2, $e) = (uid(), uid(), email());
	my $x = $cl->browser();

	$x->on($B)->init({ user_id => $u, plan => 'p0' });
	my $p = $x->profile;
	$x->on($B)->page_hit({});
	$x->on($B)->page_hit({});

	my $r = $cl->api($A, 'GET', "users/user_id/$u");
	is($r->status, 200, 'GET on A: 200') or diag($r->describe);
	is($r->json->{user}{key}, $p, 'GET on A: the profile of B');
	is($r->json->{user}{attributes}{plan}, 'p0', 'GET on A: its attribute');

	my $u0;
	ok($cl->wait_for(sub {
		$u0 = $cl->api_user($A, 'user_id', $u);
		$u0 && $u0->{page_views} == 3 }, 5),
		'GET on A: the page views of B, once written')
		or diag(json_encode($u0));

	# PUT on A: written through, seen by B and in Redis

	$r = $cl->api($A, 'PUT', "users/user_id/$u",
		{ plan => 'p1', tier => 'gold', email => $e });
	is($r->status, 200, 'PUT on A: 200') or diag($r->describe);
	is($r->json->{user}{attributes}{plan}, 'p1', 'PUT on A: applied');

	my $d = $cl->doc('users', $p);
	is($d->{'a:"plan"'}, '"p1"', 'PUT on A: the attribute is in Redis');
	is($d->{identity}{email}, $e, 'PUT on A: the email is in Redis');
	is($cl->index('users', 'e', $e), $p, 'PUT on A: so is its index entry');

	my $ub;
	ok($cl->wait_for(sub {
		$ub = $cl->api_user($B, 'email', $e);
		$ub && ($ub->{attributes}{tier} // '') eq 'gold' }, 5),
		'GET on B by the email: the update of A') or diag(json_encode($ub));
	is($ub->{key}, $p, 'GET on B by the email: the profile');

	# POST on A: create-or-update

	$r = $cl->api($A, 'POST', "users/user_id/$u2", { plan => 'new' });
	is($r->status, 201, 'POST on A, a new user_id: 201');
	my $p2 = $r->json->{user}{key};
	is($cl->api_user($B, 'user_id', $u2)->{key}, $p2,
		'POST on A: B finds the new profile');
	is($cl->index('users', 'u', $u2), $p2, 'POST on A: its index entry');

	$r = $cl->api($A, 'POST', "users/key/$p", { plan => 'p2' });
	is($r->status, 200, 'POST on A, the profile of B: 200, updated');
	is($r->json->{created}, JSON::PP::false, 'POST on A: not created');

	$r = $x->on($B)->page_hit({});
	is($x->profile, $p, 'B: the browser still lands on its profile');
	is($cl->api_user($B, 'key', $p)->{attributes}{plan}, 'p2',
		'B: the attribute POSTed on A');

	# DELETE on A: gone from Redis and from B

	my @keys = ($p, $x->key);
	$r = $cl->api($A, 'DELETE', "users/user_id/$u");
	is($r->status, 200, 'DELETE on A: 200') or diag($r->describe);
	is($r->json->{key}, $p, 'DELETE on A: its key');

	is($cl->doc('users', $p), undef, 'DELETE: no document in Redis');

	# the index entries are let go without waiting (an entry naming a
	# profile that does not hold its name is free to take)

	ok($cl->wait_for(sub { !defined $cl->index('users', 'u', $u)
		&& !defined $cl->index('users', 'e', $e)
		&& !grep { defined $cl->index('users', 'k', $_) } @keys }, 5),
		'DELETE: no index entry for its user_id, email or keys');

	# B had the profile in its cache: a name Redis says nobody holds
	# must not be answered from it

	{
		for my $path ("users/user_id/$u", "users/email/$e") {
			is($cl->api($B, 'GET', $path)->status, 404,
				"B: GET $path: 404");
		}

		# (a new profile's user_id is recorded as a profile_updated too,
		# as on one host: t/identity.t)
		my $n = $cl->browser();
		$r = $n->on($B)->init({ user_id => $u });
		is($r->status, 200, 'B: a new browser naming the erased user_id: '
			. '200') or diag($r->describe);
		is(types($n->events(count => 3)),
			'page_view,profile_updated,user_created',
			'B: ... a new profile');
		ok($n->profile && $n->profile ne $p, 'B: ... not the erased one');
		ok($cl->wait_for(sub { ($cl->index('users', 'u', $u) // '')
			eq ($n->profile // '-') }, 2), 'Redis: the user_id is the new '
			. 'profile\'s');
	}

	is($cl->api($B, 'GET', "users/key/$p")->status, 404,
		"B: GET users/key/$p: 404");

	# the browser's key, which the erasure made unknown, is adopted as a
	# new anonymous profile (as on one host, t/api.t)

	$r = $x->on($B)->page_hit({});
	is($r->status, 200, 'B: the erased profile\'s browser: 200');
	my @ev = $x->events(count => 2);
	is(types(@ev), 'page_view,user_created', 'B: a new visitor');
	is($r->user->{user_id}, undef, 'B: without the user_id');
	is($r->user->{page_views}, 1, 'B: counted from 1');
	is($x->profile, $x->key, 'B: the browser\'s key is the new '
		. 'profile\'s own, not the erased one\'s');
};

###############################################################################

# logins on a profile that another host writes at the same moment: a
# document write refused for its version (the profile changed since it
# was read) is applied again to the profile read again (README "More
# than one nginx host"): every login lands on it, and every page view,
# this host's and the other's, is counted once

subtest 'logins on a profile another host writes meanwhile' => sub {
	my $u = uid();
	my $x = $cl->browser();
	$x->on($B)->init({ user_id => $u });
	my $p = $x->profile;
	ok($cl->wait_for(sub { $cl->doc('users', $p) }, 5), 'the profile');

	my $conflicts = sub { Civchat::Redis::metric(scalar(Civchat::Redis::metrics(
		$cl->host($A), '/status')), 'civchat_redis_conflicts_total',
		zone => 'users') };
	my $before = $conflicts->();

	my $stop = $cl->writer('users', $p, 0.01);
	my (%seen, $views);

	for my $n (1 .. 40) {
		my $y = $cl->browser();
		my $r = $y->on($A)->init({ user_id => $u });
		my $on = $r->status == 200 ? $y->profile : undef;
		$views++ if $r->status == 200;
		$seen{$r->status . ' '
			. ($r->error // (($on // '') eq $p ? 'on it' : 'elsewhere'))}++;
	}

	my $written = $stop->();
	my $seen = join(', ', map { "$_: $seen{$_}" } sort keys %seen);
	ok($written >= 10, "another host wrote it $written times meanwhile");
	diag('A\'s writes refused as conflicts: ' . ($conflicts->() - $before));

	is($seen, '200 on it: 40', 'every login answered 200, on it');

	my $want = 1 + $views + $written;
	my $pv;
	ok($cl->wait_for(sub { ($pv = pv('users', $p) // 0) == $want }, 5),
		"Redis: $want page views, each counted once") or diag("Redis: $pv");
};

###############################################################################

# a graceful quit right after a burst: the deltas the worker still has
# are written before it goes (zone slow: written behind every 2 s only)

subtest 'a graceful quit loses no page view' => sub {
	my @b = map { $cl->browser(base => '/s/') } 1 .. 10;
	$_->on($A)->init({}) for @b;
	my @keys = map { $_->key } @b;

	ok($cl->wait_for(sub { !grep { !$cl->doc('slow', $_) } @keys }, 5),
		'the new profiles are in Redis');

	for my $n (1 .. 10) {
		$_->page_hit({}) for @b;
	}

	my $t0 = time();
	ok($cl->quit($A), 'A quits: its master and workers exit');
	my $quit = time() - $t0;

	my @views = map { pv('slow', $_) // 0 } @keys;
	is(join(' ', @views), join(' ', (11) x 10),
		sprintf('after the quit (%.1f s): every page view in Redis', $quit));

};

###############################################################################

# a race: two new browsers, on B and on C, name one user_id at the same
# moment; or two browsers with profiles of their own; or the same signed.
# Each round: both answer, one profile holds the user_id (the API of
# both hosts says which), both browsers' next page views on either host
# are that profile's, and its index entry names it in Redis

subtest 'two hosts, one user_id at the same moment, 21 times' => sub {
	my @on = ($B, $C);
	my (@wrong, @answers);

	for my $round (1 .. 21) {
		my $u = uid();
		my $kind = (qw/new own signed/)[$round % 3];
		my $base = $kind eq 'signed' ? '/v/' : '/civchat/';
		my $zone = $kind eq 'signed' ? 'signed' : 'users';
		my @b = map { $cl->browser(base => $base) } 0, 1;

		if ($kind eq 'own') {
			$b[$_]->on($on[$_])->init({}) for 0, 1;
		}

		my @req = map {
			my $body = { apiKey => 'TESTKEY', user_id => $u,
				url => "http://site.test/race-$round-$_" };
			$body->{user_hash} = user_hash($Civchat::Cluster::SECRET, $u)
				if $kind eq 'signed';
			[ $on[$_], "${base}init", $body,
				$b[$_]->key ? (Cookie => '__ca__chat=' . $b[$_]->key) : () ]
		} 0, 1;

		my @r = $cl->send_together(@req);
		$b[$_]->absorb($r[$_]) for 0, 1;
		push @answers, map { $_->status } @r;

		my $what = "round $round ($kind)";
		my @bad;

		for my $i (0, 1) {
			push @bad, "host $on[$i] answered " . $r[$i]->status . ' '
				. ($r[$i]->error // '') unless $r[$i]->status == 200;
			push @bad, "host $on[$i] showed user_id "
				. ($r[$i]->user->{user_id} // 'null')
				unless ($r[$i]->user->{user_id} // '') eq $u;
		}

		my @holder = map { $cl->api_user($on[$_], 'user_id', $u,
			base => $kind eq 'signed' ? '/vapi/' : '/api/') } 0, 1;
		my @ph = map { $_ ? $_->{key} : 'none' } @holder;
		push @bad, "the API of B names $ph[0], of C $ph[1]"
			unless $ph[0] eq $ph[1];
		my $p = $ph[0];

		for my $i (0, 1) {
			for my $h ($on[$i], $on[1 - $i]) {
				my $r = $b[$i]->on($h)->page_hit({});
				my $landed = $r->status == 200 ? $b[$i]->profile : undef;
				push @bad, "browser $i on host $h: " . $r->status . ', '
					. ($landed // 'no profile')
					unless ($landed // '') eq $p;
			}
		}

		my $ix = $cl->index($zone, 'u', $u) // 'none';
		push @bad, "i:{u:ID} names $ix" unless $ix eq $p;
		my $d = $cl->doc($zone, $p);
		push @bad, "the holder's document has user_id "
			. ($d && $d->{identity}{user_id} // 'none')
			unless $d && ($d->{identity}{user_id} // '') eq $u;

		push @wrong, "$what, holder $p: " . join('; ', @bad) if @bad;
	}

	ok(!grep({ $_ == 0 || $_ == 500 } @answers),
		'every racing request was answered, never with a 500: '
		. join(' ', @answers));

	is(scalar(@wrong), 0, 'every round: one holder, both browsers on it')
		or diag(join("\n", @wrong));
};

ok($cl->settle('users', 5) && $cl->settle('signed', 5), 'after the race: '
	. 'B and C write behind all they have');

###############################################################################

# every document and index entry again, with those of the race

check_space('users');
check_space('signed');

###############################################################################

$cl->done_testing();

###############################################################################
