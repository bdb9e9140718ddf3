#!/usr/bin/perl

# (C) civchat developers

# Tests for profiles on Redis Cluster when the cluster fails, with two
# nginx hosts (t/lib/Civchat/Cluster.pm) under a steady load from
# another process (page views of known visitors on both hosts, new
# visitors identifying, server API writes): a master killed and its
# replica promoted, then a node restarted: every request is answered
# (a 503 store_unavailable with Retry-After while the slots move, never
# a 500, never a hang), every page view answered 200 is counted once in
# Redis, every user_id and attribute written with a 200 is there, and
# the event store has the events of every 200.  All of Redis down for
# 30 seconds: with redis_down=cache a visitor whose profile is cached
# is answered 200 and its page views reach Redis once it is back, a new
# visitor or an identity change gets 503 with Retry-After, the zone with
# redis_down=refuse answers 503, a visitor whose identity change got a
# 503 is answered from its copy as it was before; error.log has no
# [alert].
# And the configuration's errors: redis= naming no civchat_redis,
# state= with redis=, a zone moved to or from Redis by a reload
# (refused, the old configuration goes on).

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/uniq_id json_encode json_decode/;
use Civchat::Cluster;

use POSIX ();
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $cl = Civchat::Cluster->new(hosts => 2);
my $rc = $cl->redis();
my ($A, $B) = (0, 1);

sub uid { uniq_id('uid') }

sub pv {
	my ($zone, $id) = @_;
	my $d = $cl->doc($zone, $id);
	return $d ? $d->{pv} // 0 : undef;
}

###############################################################################

# The load: from a child process, round after round until told to stop,
# each known visitor's page view on one host then the other, a new
# visitor identifying with a fresh user_id, a server API write of an
# attribute (a number that grows); each answer is a line of $file.

sub load {
	my ($name, $visitors) = @_;

	my $file = $cl->host($A)->testdir() . "/load-$name.ndjson";
	my $stop = "$file.stop";

	my $pid = fork();
	die "fork: $!\n" unless defined $pid;

	# (the child must not run the parent's destructors: they stop nginx)
	if ($pid == 0) {
		eval { load_child($file, $stop, $visitors) };
		POSIX::_exit(0);
	}

	return { pid => $pid, file => $file, stop => $stop };
}

sub load_child {
	my ($file, $stop, $visitors) = @_;

	open(my $out, '>', $file) or return;
	$out->autoflush(1);

	my $round = 0;
	my $deadline = time() + 120;

	while (!-e $stop && time() < $deadline) {
		$round++;
		sleep 0.02;

		for my $v (@$visitors) {
			my $h = ($round + $v->{n}) % 2;
			my $t0 = time();
			my $r = $v->{b}->on($h)->page_hit({});
			print $out json_encode({ kind => 'view', host => $h,
				id => $v->{id}, status => $r->status, error => $r->error,
				retry => scalar($r->header('Retry-After')),
				url => $v->{b}->last_url, took => time() - $t0 }) . "\n";
		}

		my $u = uid();
		my $n = $cl->browser();
		my $h = $round % 2;
		my $r = $n->on($h)->init({ user_id => $u });
		print $out json_encode({ kind => 'identify', host => $h,
			user_id => $u, status => $r->status, error => $r->error,
			retry => scalar($r->header('Retry-After')),
			url => $n->last_url }) . "\n";

		my $v = $visitors->[$round % @$visitors];
		$r = $cl->api(1 - $h, 'PUT', "users/key/$v->{id}",
			{ round => $round });
		print $out json_encode({ kind => 'put', host => 1 - $h,
			id => $v->{id}, round => $round, status => $r->status,
			error => $r->error,
			retry => scalar($r->header('Retry-After')) }) . "\n";
	}

	close $out;
}

sub load_stop {
	my ($l) = @_;

	open(my $fh, '>', $l->{stop}) or die "stop: $!\n";
	close $fh;
	waitpid($l->{pid}, 0);

	open($fh, '<', $l->{file}) or die "load: $!\n";
	my @lines = map { json_decode($_) } <$fh>;
	close $fh;

	return @lines;
}

# known visitors, each with a profile of its own made on a host
sub visitors {
	my ($n) = @_;
	my @v;
	for my $i (1 .. $n) {
		my $b = $cl->browser();
		my $r = $b->on($i % 2)->init({});
		die "visitor: " . $r->status . "\n" unless $r->status == 200;
		push @v, { n => $i, b => $b, id => $r->key, views => 1 };
	}
	return @v;
}

# what the load's answers say must be in Redis, and in the event store
sub check_load {
	my ($name, $visitors, @lines) = @_;

	my %status;
	$status{$_->{status}}++ for @lines;

	ok(@lines > 20, "$name: " . scalar(@lines) . ' requests answered: '
		. join(', ', map { "$status{$_} $_" } sort keys %status));

	my @bad = grep { $_->{status} != 200 && $_->{status} != 503 } @lines;
	is(scalar(@bad), 0, "$name: every answer is a 200 or a 503")
		or diag(join("\n", map { json_encode($_) } @bad[0 .. ($#bad > 10
		? 10 : $#bad)]));

	@bad = grep { $_->{status} == 503 && (($_->{error} // '') ne
		'store_unavailable' || ($_->{retry} // '') !~ /^\d+$/) } @lines;
	is(scalar(@bad), 0, "$name: each 503 is store_unavailable with "
		. 'Retry-After');

	# page views: each 200 counted once

	my %views = map { $_->{id} => $_->{views} } @$visitors;
	$views{$_->{id}}++ for grep { $_->{kind} eq 'view'
		&& $_->{status} == 200 } @lines;

	my %have;
	$cl->wait_for(sub {
		%have = map { $_ => pv('users', $_) // 0 } keys %views;
		!grep { $have{$_} != $views{$_} } keys %views;
	}, 10);

	my @wrong = map { "$_: $have{$_} in Redis, $views{$_} answered 200" }
		grep { $have{$_} != $views{$_} } sort keys %views;
	is(scalar(@wrong), 0, "$name: each visitor's page views answered 200 "
		. 'are in Redis, once') or diag(join("\n", @wrong));

	$_->{views} = $views{$_->{id}} for @$visitors;

	# identities written with a 200 are there

	my @ids = grep { $_->{kind} eq 'identify' && $_->{status} == 200 }
		@lines;
	@wrong = ();
	for my $l (@ids) {
		my $ix = $cl->index('users', 'u', $l->{user_id});
		my $d = $ix ? $cl->doc('users', $ix) : undef;
		push @wrong, "$l->{user_id}: " . ($ix // 'no entry')
			unless $d && ($d->{identity}{user_id} // '') eq $l->{user_id};
	}
	ok(@ids > 0 && !@wrong, "$name: the " . scalar(@ids) . ' user_ids '
		. 'written with a 200 are in Redis') or diag(join("\n", @wrong));

	# server API writes: the last one answered 200 (or a later one)

	my %last;
	for my $l (grep { $_->{kind} eq 'put' } @lines) {
		$last{$l->{id}} = { ok => 0, rounds => [] } unless $last{$l->{id}};
		push @{$last{$l->{id}}{rounds}}, $l->{round};
		$last{$l->{id}}{ok} = $l->{round} if $l->{status} == 200;
	}
	@wrong = ();
	for my $id (sort keys %last) {
		my $d = $cl->doc('users', $id);
		my $have = $d ? $d->{'a:"round"'} // 0 : 0;
		push @wrong, "$id: round $have in Redis, $last{$id}{ok} answered 200"
			unless $have >= $last{$id}{ok}
			&& grep { $_ == $have } 0, @{$last{$id}{rounds}};
	}
	is(scalar(@wrong), 0, "$name: each server API write answered 200 is "
		. 'in Redis (or one after it)') or diag(join("\n", @wrong));

	# the event store has the page_view of every 200, none of a 503

	my %urls;
	for my $h ($A, $B) {
		my $t = $cl->host($h);
		$t->read_events(count => 1, timeout => 1);
		$urls{$_->{url}}{$_->{type}}++ for grep { defined $_->{url} }
			$t->parse_events();
	}

	my @lost = grep { $_->{status} == 200 && $_->{kind} ne 'put'
		&& !$urls{$_->{url}}{page_view} } @lines;
	is(scalar(@lost), 0, "$name: the event store has the page_view of "
		. 'every 200') or diag(join("\n", map { json_encode($_) }
		@lost[0 .. ($#lost > 10 ? 10 : $#lost)]));

	my @extra = grep { $_->{status} == 503 && $_->{kind} ne 'put'
		&& $urls{$_->{url}}{page_view} } @lines;
	is(scalar(@extra), 0, "$name: and none of a 503");
}

my @visitors = visitors(8);

ok($cl->wait_for(sub { !grep { !defined pv('users', $_->{id}) }
	@visitors }, 5), 'the visitors\' profiles are in Redis');

###############################################################################

# a master killed: its replica takes over

subtest 'a master killed under load' => sub {
	my $l = load('kill', \@visitors);
	sleep 1;

	my ($victim) = $rc->masters();
	my $t0 = time();
	my $promoted = $rc->kill_master($victim);
	ok($promoted, sprintf('master %d killed, replica %d took over in %.1f s',
		$victim, $promoted, time() - $t0));

	sleep 2;
	my @lines = load_stop($l);

	my @after = grep { $_->{kind} eq 'view' } @lines[-16 .. -1];
	is(scalar(grep { $_->{status} == 200 } @after), scalar(@after),
		'after the failover: the page views are answered 200 again');

	check_load('failover', \@visitors, @lines);

	$rc->start_node($victim);
	$rc->wait_ok();
};

###############################################################################

# a node restarted (SIGTERM: its append-only file written, then back)

subtest 'a node restarted under load' => sub {
	my $l = load('restart', \@visitors);
	sleep 1;

	my ($node) = $rc->masters();
	$rc->restart_node($node);
	pass("master $node restarted");

	sleep 2;
	my @lines = load_stop($l);
	check_load('restart', \@visitors, @lines);
};

###############################################################################

# all of Redis down for 30 s

subtest 'all of Redis down for 30 s' => sub {

	# v: a visitor cached on both hosts; w: another, who will try to
	# identify while Redis is down; vr: one of the zone with
	# redis_down=refuse

	my ($v, $w) = map { $cl->browser() } 1, 2;
	my $vr = $cl->browser(base => '/r/');

	for my $b ($v, $w, $vr) {
		$b->on($A)->init({});
		$b->on($B)->page_hit({});
	}

	my $id = $v->key;
	my $views = 2;
	ok($cl->wait_for(sub { (pv('users', $id) // 0) == $views }, 5),
		'before: the visitor\'s page views are in Redis');

	$rc->stop_all();
	my $t0 = time();

	my (%seen, %first, @w409, @took);
	while (time() - $t0 < 30) {
		for my $h ($A, $B) {
			my $t1 = time();
			my $r = $v->on($h)->page_hit({});
			push @took, time() - $t1;
			$seen{'cached ' . $r->status}++;
			$views++ if $r->status == 200;
			$seen{'cached key'}++ if ($r->key // '') ne $id;

			$r = $cl->browser()->on($h)->init({});
			$seen{'new ' . $r->status . ' ' . ($r->error // '') . ' '
				. ($r->header('Retry-After') // 'none')}++;

			# (once on each host; @w409: never answered but 503)
			$r = $w->on($h)->init({ user_id => uid() });
			$seen{'identify ' . $r->status . ' ' . ($r->error // '')}++
				unless $first{$h}++;
			push @w409, $h . ':' . $r->status unless $r->status == 503;
			$r = $w->on($h)->page_hit({});
			push @w409, $h . ':' . $r->status unless $r->status == 200;

			$r = $vr->on($h)->page_hit({});
			$seen{'refuse ' . $r->status . ' ' . ($r->error // '') . ' '
				. ($r->header('Retry-After') // 'none')}++;
		}
		sleep 1;
	}

	@took = sort { $a <=> $b } @took;
	diag('Redis down: ' . join(', ', map { "$_: $seen{$_}" } sort keys %seen)
		. sprintf('; the cached visitor\'s answers took %.2f s (median), '
		. '%.2f s at most', $took[$#took / 2], $took[-1]));

	ok($seen{'cached 200'} && !grep(/^cached (?!200)/, keys %seen),
		'outage, redis_down=cache: the cached visitor is answered 200 on '
		. 'both hosts, with its key, every time');
	ok($seen{'new 503 store_unavailable 1'}
		&& !grep(/^new (?!503 store_unavailable 1$)/, keys %seen),
		'outage: a new visitor gets 503 store_unavailable, Retry-After: 1');
	is($seen{'identify 503 store_unavailable'}, 2, 'outage: an identity '
		. 'change of a cached visitor gets 503 store_unavailable on each '
		. 'host');
	ok($seen{'refuse 503 store_unavailable 1'}
		&& !grep(/^refuse (?!503 store_unavailable 1$)/, keys %seen),
		'outage, redis_down=refuse: 503 store_unavailable, Retry-After: 1');
	ok(!grep(/^\w+ 0 /, keys %seen), 'outage: every request answered');

	is(join(' ', @w409), '', 'outage: the visitor whose identity change '
		. 'got a 503 is answered 200 after it, and 503 again (the change '
		. 'undone in the cache)');

	$rc->start_all();
	$cl->wait_subscribed(20);

	my $have;
	ok($cl->wait_for(sub { ($have = pv('users', $id) // 0) == $views }, 15),
		"Redis back: the $views page views of the cached visitor are in "
		. 'Redis') or diag("Redis has $have");

	my $r = $cl->browser()->on($B)->init({});
	is($r->status, 200, 'Redis back: a new visitor is answered 200');
	ok($cl->wait_for(sub { $cl->doc('users', $r->key) }, 5),
		'Redis back: ... and is in Redis');
	$r = $vr->on($A)->page_hit({});
	is($r->status, 200, 'Redis back, redis_down=refuse: answered 200');
	$r = $v->on($B)->init({ user_id => uid() });
	is($r->status, 200, 'Redis back: the cached visitor identifies');

	for my $h ($A, $B) {
		my $said = 'civchat zone "users": Redis is not answering, the '
			. 'request is answered from the cache';
		like($cl->host($h)->read_file('error.log'), qr/\Q$said\E/,
			'host ' . $cl->name($h) . ': answers from the cache are logged');
	}
};

###############################################################################

# the configuration

my $t = Civchat->new();

sub conf {
	my ($http, $zone) = @_;
	return <<"EOF";
%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    $http

    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=50ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat  zone=$zone;
        }

        location /back/ {
            civchat  zone=back;
        }
    }
}
EOF
}

my $seeds = $rc->seeds(3);
my $redis = "civchat_redis  c1  $seeds;";

my @bad = (
	[ 'redis= naming no civchat_redis', "civchat_zone  users  1m  redis=c9;"
		. "\n    civchat_zone  back  1m;",
		qr/civchat zone "users": no "civchat_redis c9"/ ],
	[ 'redis= and no civchat_redis at all', "civchat_zone  users  1m  "
		. "redis=c1;\n    civchat_zone  back  1m;",
		qr/civchat zone "users": no "civchat_redis c1"/ ],
	[ 'state= with redis=', "$redis\n    civchat_zone  users  1m  redis=c1 "
		. "state=%%TESTDIR%%/users.state;\n    civchat_zone  back  1m;",
		qr/civchat zone "users": "state=" and "redis=" exclude each other/ ],
	[ 'an empty redis=', "$redis\n    civchat_zone  users  1m  redis=;"
		. "\n    civchat_zone  back  1m;",
		qr/invalid parameter "redis="/ ],
	[ 'redis_down= unknown', "$redis\n    civchat_zone  users  1m  redis=c1"
		. " redis_down=wait;\n    civchat_zone  back  1m;",
		qr/invalid parameter "redis_down=wait"/ ],
	[ 'redis_flush=0', "$redis\n    civchat_zone  users  1m  redis=c1"
		. " redis_flush=0;\n    civchat_zone  back  1m;",
		qr/invalid parameter "redis_flush=0"/ ],
);

for my $case (@bad) {
	my ($name, $http, $re) = @$case;
	my ($code, $out) = $t->test_config(conf($http, 'users'));
	isnt($code, 0, "$name: nginx -t fails");
	like($out, qr/\[emerg\].*$re/, "$name: says why") or diag($out);
}

my ($code, $out) = $t->test_config(conf("civchat_zone  users  1m  redis=c1;"
	. "\n    civchat_zone  back  1m  redis=c1;\n    $redis", 'users'));
is($code, 0, 'civchat_redis after the zone naming it: nginx -t passes')
	or diag($out);

# a zone moved to Redis by a reload, and one moved off it: refused, the
# old configuration answers on

my $before = "$redis\n    civchat_zone  moving  1m;\n"
	. "    civchat_zone  back  1m  redis=c1;";
$t->config(conf($before, 'moving'))->run();

my @workers = $t->worker_pids();
my $m = $t->client();
$m->init({});
my $mk = $m->key;
my $bk = $t->client(base => '/back/');
$bk->init({});

for my $case (
	[ 'to Redis', "$redis\n    civchat_zone  moving  1m  redis=c1;\n"
		. "    civchat_zone  back  1m  redis=c1;", 'moving' ],
	[ 'off Redis', "$redis\n    civchat_zone  moving  1m;\n"
		. "    civchat_zone  back  1m;", 'back' ])
{
	my ($name, $http, $zone) = @$case;
	my $offset = length($t->read_file('error.log') // '');

	$t->write_file_expand('nginx.conf', conf($http, 'moving'));
	kill('HUP', $t->master_pid());

	my $said;
	$cl->wait_for(sub {
		my $log = substr($t->read_file('error.log') // '', $offset);
		my $why = "civchat zone \"$zone\" cannot move to or from Redis on "
			. 'a reload';
		$said = $log =~ /\[emerg\][^\n]*\Q$why\E/;
	}, 10);
	ok($said, "a zone moved $name by a reload: refused, with why");

	sleep 0.5;
	is_deeply([ $t->alive(@workers) ], \@workers,
		"moved $name: the old workers go on");
	is_deeply([ $t->worker_pids() ], \@workers, "moved $name: no new ones");

	my $r = $m->init({});
	is($r->status, 200, "moved $name: the zone answers");
	is($r->key, $mk, "moved $name: with the profiles it had");
	$r = $bk->init({});
	is($r->key, $bk->key, "moved $name: the zone on Redis too");
}

is(scalar($cl->keys_of('moving')), 0, 'Redis has nothing of the zone that '
	. 'stayed in memory');
ok(scalar($cl->keys_of('back')) > 0, 'the zone on Redis is there');

$t->stop();

my @problems = grep { !/\[emerg\].*cannot move to or from Redis on a reload/ }
	$t->log_problems();
is(join("\n", @problems), '', 'error.log: no alert, crit or crashed worker, '
	. 'no emerg but the refused reloads');

###############################################################################

$cl->done_testing();

###############################################################################
