#!/usr/bin/perl

# (C) civchat developers

# Tests for the live channel of a zone on Redis Cluster (issue 13): a
# real cluster (three masters, three replicas) and two nginx hosts, A
# and B, of two workers each, sharing it.  A stream on B for a key
# minted on A (B never saw it) opens, an unknown key's does not; an API
# message posted on A reaches B's stream; a burst, posted on both hosts,
# arrives whole and in order; a browser that reconnects to the other
# host with Last-Event-ID gets exactly what it missed (nothing twice,
# also when it reconnects back); a profile with streams on both hosts
# hears each message on both, with the same id; a profile change made
# on one host reaches the other's stream; the profile's stream in Redis
# is capped at live= and a few profile changes, and goes with the
# profile's erasure; a reload of A under its streams loses nothing for
# their reconnects; a message posted while Redis is down answers 503
# store_unavailable with Retry-After, a stream opened then ends at once
# (its browser comes back), and the streams held through the outage
# hear what is said once Redis is back; the error logs.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key json_decode/;
use Civchat::Redis;
use Civchat::Stream;

use POSIX ();
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $ta = Civchat->new()->need_module();
my $tb = Civchat->new();
Civchat::Redis::need();

my $rc = Civchat::Redis->new(dir => $ta->testdir());
$rc->start();

my $TOKEN = 'live-cluster-token-0123456789';
my $LIVE = 8;
my $CAP = $LIVE + 16;       # live= and the profile changes
my $seeds = $rc->seeds();

for my $t ($ta, $tb) {
	$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%
worker_processes  2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_redis  c1  $seeds  timeout=1s ping=200ms retry=500ms;
    civchat_zone   users  8m  redis=c1  live=$LIVE  redis_flush=100ms;

    server {
        listen       127.0.0.1:%%PORT_0%%  reuseport;
        server_name  localhost;

        location /civchat/ {
            civchat               zone=users;
            civchat_api_key       TESTKEY;
            civchat_store         off;
            civchat_stream_limit  per_key=0 per_address=0;
        }

        location /api/ {
            civchat_api        zone=users;
            civchat_api_token  $TOKEN;
            civchat_store      off;
        }
    }
}

EOF
}

# every worker of both hosts is subscribed to the zone's channel (a
# classic channel: each node counts its own subscribers)

sub subscribed {
	my $n = 0;
	for my $port ($rc->ports()) {
		my $r = eval { $rc->command($port, 'PUBSUB', 'NUMSUB',
			'civchat:users:live') };
		$n += $r->[1] if ref $r eq 'ARRAY' && defined $r->[1];
	}
	return $n;
}

sub wait_for {
	my ($timeout, $cond) = @_;
	my $deadline = time() + $timeout;
	while (time() < $deadline) {
		return 1 if $cond->();
		sleep 0.1;
	}
	return $cond->();
}

ok(wait_for(15, sub { subscribed() >= 4 }),
	'the four workers of both hosts are subscribed to the live channel')
	or diag('subscribed: ' . subscribed());

###############################################################################

sub stream {
	my ($t, %o) = @_;
	return Civchat::Stream->open($t, %o);
}

sub pump { Civchat::Stream::pump(@_) }

sub api {
	my ($t, $method, $path, $data) = @_;
	return $t->request(method => $method, path => "/api/$path",
		headers => [Authorization => "Bearer $TOKEN",
			'Content-Type' => 'application/json'],
		body => ref $data ? Civchat::json_encode($data) : $data);
}

sub say_to {
	my ($t, $key, $content, %o) = @_;
	return api($t, 'POST', "users/key/$key/messages",
		{ content => $content, %o });
}

sub said { map { $_->{data}{content} } grep { $_->{event} eq 'message' }
	@{$_[0]->events} }

sub ids { map { $_->{id} } @{$_[0]->events} }

sub ascending {
	my @ids = @_;
	for my $i (1 .. $#ids) {
		return 0 unless $ids[$i] > $ids[$i - 1];
	}
	return 1;
}

# a visitor minted on host $t
sub visitor {
	my ($t, %o) = @_;
	my $c = $t->client();
	my $r = $c->init($o{data} // {});
	return wantarray ? ($r->key, $c) : $r->key;
}

sub opened {
	my (@s) = @_;
	pump(\@s, 10, sub { !grep { !$_->{retry} && !$_->{eof} } @s });
	return scalar grep { $_->status == 200 && $_->{retry} } @s;
}

###############################################################################

# a stream on B for a key minted on A: B reads the profile from Redis

my ($key, $c) = visitor($ta);
ok(is_key($key), 'a visitor minted on A');

my $sb = stream($tb, key => $key);
is(opened($sb), 1, 'a stream on B for a key B never saw: 200, retry');
is($sb->header('content-type'), 'text/event-stream',
	'... as server-sent events');

my $r = $tb->get('/civchat/stream?key=NoSuchKey000000000');
is($r->status, 403, 'a stream on B for a key nobody minted: 403');
is($r->json && $r->json->{error}, 'unknown_key', '... unknown_key');

# an API message posted on A reaches B's stream

$r = say_to($ta, $key, 'hello from A');
is($r->status, 200, 'an API message on A: 200');
ok($r->json && $r->json->{sent}, '... sent');
pump([$sb], 10, sub { said($sb) >= 1 });
is(join('|', said($sb)), 'hello from A', 'the message reaches the stream '
	. 'on B');
like(($sb->events->[0] // {})->{id} // '', qr/^\d+$/,
	'the event has a numeric id');

###############################################################################

# a burst, posted on both hosts in turn: all of it, in order

my $n = 30;
my $bad = 0;
for my $i (1 .. $n) {
	$r = say_to($i % 2 ? $ta : $tb, $key, "m$i");
	$bad++ unless $r->status == 200;
}
is($bad, 0, "a burst of $n messages, posted on A and B in turn: all 200");
pump([$sb], 15, sub { said($sb) >= $n + 1 });
pump([$sb], 0.5, sub { 0 });
is(join(' ', said($sb)), join(' ', 'hello from A', map { "m$_" } 1 .. $n),
	'the burst reaches the stream on B whole, in order, once');
ok(ascending(ids($sb)), '... with ids ascending');

###############################################################################

# a reconnect to the other host with Last-Event-ID: what was missed

my @got = said($sb);
my $last = (ids($sb))[-1];
$sb->close();

my ($lost, $twice) = (0, 0);
my $sent = 0;
my @want = @got;
my $on = $ta;

for my $round (1 .. 6) {
	# missed while away, said on either host
	for my $j (1 .. 3) {
		my $m = "r$round.$j";
		say_to($j % 2 ? $ta : $tb, $key, $m);
		push @want, $m;
	}

	my $s = $round % 2
		? stream($on, key => $key, last_id => $last)
		: stream($on, key => $key, query => "last_id=$last");

	# and one after reconnecting
	pump([$s], 5, sub { $s->{retry} });
	say_to($on == $ta ? $tb : $ta, $key, "r$round.after");
	push @want, "r$round.after";

	pump([$s], 10, sub { said($s) >= 4 });
	pump([$s], 0.3, sub { 0 });

	push @got, said($s);
	$last = (ids($s))[-1] // $last;
	$s->close();

	$on = $on == $ta ? $tb : $ta;
}

my %seen;
$twice = grep { $seen{$_}++ } @got;
is($twice, 0, 'reconnects to the other host: nothing twice');
is(join(' ', @got), join(' ', @want),
	'reconnects to the other host with Last-Event-ID (or ?last_id=): '
	. 'exactly what was missed, in order');

###############################################################################

# a profile with streams on both hosts: each message reaches both, with
# the same id

{
	my $k = visitor($tb);
	my @s = ((map { stream($ta, key => $k) } 1 .. 2),
		(map { stream($tb, key => $k) } 1 .. 2));
	is(opened(@s), 4, 'two streams on each host for one profile');

	for my $i (1 .. 5) {
		say_to($i % 2 ? $tb : $ta, $k, "both $i");
	}

	pump(\@s, 10, sub { !grep { said($_) < 5 } @s });
	pump(\@s, 0.3, sub { 0 });

	my $want = join(' ', map { "both $_" } 1 .. 5);
	is(scalar(grep { join(' ', said($_)) eq $want } @s), 4,
		'each of the four streams: each message once, in order');
	is(scalar(grep { join(',', ids($_)) eq join(',', ids($s[0])) } @s), 4,
		'the same ids on both hosts');

	# a reconnect to either host with one host's id: nothing missed
	my $mid = (ids($s[0]))[1];
	my @re = (stream($ta, key => $k, last_id => $mid),
		stream($tb, key => $k, last_id => $mid));
	pump(\@re, 10, sub { !grep { said($_) < 3 } @re });
	pump(\@re, 0.3, sub { 0 });
	is(scalar(grep { join(' ', said($_)) eq 'both 3 both 4 both 5' } @re),
		2, 'an id of one host means the same on the other');

	$_->close() for @s, @re;
}

###############################################################################

# a profile change made on A reaches the profile's stream on B

{
	my ($k, $kc) = visitor($ta, data => { plan => 'free' });

	# the init made the profile: its own changes are told to nobody (no
	# stream can be open for a key its request made), so Redis has no
	# stream for it (what it would write goes after the answer: a moment)
	sleep 0.3;
	is($rc->cli('EXISTS', "civchat:users:l:{$k}"), 0,
		'a new visitor\'s own changes cost Redis no stream');

	my $s = stream($tb, key => $k);
	is(opened($s), 1, 'a stream on B');

	my $r = $kc->update({ plan => 'gold' });
	is($r->status, 200, 'a profile change through the widget on A')
		or diag($r->status . ' ' . $r->body);
	$r = api($tb, 'PUT', "users/key/$k", { seats => 3 });
	is($r->status, 200, 'and one through the API on B')
		or diag($r->status . ' ' . $r->body);

	pump([$s], 10, sub { @{$s->events} >= 2 });
	pump([$s], 0.3, sub { 0 });

	my @p = map { $_->{data} } grep { $_->{event} eq 'profile' }
		@{$s->events};
	is_deeply(\@p, [{ name => 'plan', old => 'free', new => 'gold' },
		{ name => 'seats', old => undef, new => 3 }],
		'both changes reach the stream on B, in order')
		or diag(explain(\@p));
	$s->close();
}

###############################################################################

# the profile's stream in Redis: capped, gone with the profile

{
	my $k = visitor($ta);
	my $rkey = "civchat:users:l:{$k}";

	say_to($ta, $k, "c$_") for 1 .. $CAP + 10;
	is($rc->cli('XLEN', $rkey), $CAP, "the stream in Redis keeps $CAP "
		. "entries (live=$LIVE and 16 profile changes)");
	cmp_ok($rc->cli('TTL', $rkey), '>', 3600, '... and expires');

	# a replay from the start: what Redis keeps
	my $s = stream($tb, key => $k, last_id => 0);
	pump([$s], 10, sub { said($s) >= $CAP });
	pump([$s], 0.3, sub { 0 });
	is(join(' ', said($s)), join(' ', map { "c$_" } 11 .. $CAP + 10),
		'a replay from 0 on the other host: what the stream keeps');
	$s->close();

	is(api($tb, 'DELETE', "users/key/$k")->status, 200, 'the profile erased');
	ok(wait_for(5, sub { !$rc->cli('EXISTS', $rkey) }),
		'its stream in Redis goes with it');
}

###############################################################################

# nginx -s reload on A under its streams: they end; the reconnects, to
# A's new workers, miss nothing of what B was told to say meanwhile

{
	my $k = visitor($ta);
	my @s = map { stream($ta, key => $k) } 1 .. 2;
	is(opened(@s), 2, 'streams on A before a reload');
	say_to($tb, $k, 'before');
	pump(\@s, 10, sub { !grep { said($_) < 1 } @s });

	my $pid = fork() // die "fork: $!";

	if ($pid == 0) {
		for my $i (1 .. 10) {
			say_to($tb, $k, "during $i");
			sleep 0.05;
		}
		POSIX::_exit(0);
	}

	ok($ta->reload(), 'A reloaded');
	pump(\@s, 10, sub { !grep { !$_->{eof} } @s });
	waitpid($pid, 0);

	ok(wait_for(15, sub { subscribed() == 4 }),
		'A\'s new workers are subscribed, the old ones gone');

	my @r = map { stream($ta, key => $k, last_id => (ids($_))[-1]) } @s;
	is(opened(@r), 2, 'the reconnects to A');
	say_to($tb, $k, 'after');
	pump(\@r, 10, sub { !grep { !grep { $_ eq 'after' } said($_) } @r });
	pump(\@r, 0.3, sub { 0 });

	my $want = join(' ', 'before', (map { "during $_" } 1 .. 10), 'after');
	is(scalar(grep { join(' ', said($s[$_]), said($r[$_])) eq $want }
		0 .. 1), 2, 'each stream and its reconnect: every message once, '
		. 'in order') or diag(join("\n", map { join(' ', said($s[$_]),
		said($r[$_])) } 0 .. 1));

	$_->close() for @s, @r;
}

###############################################################################

# Redis down: a message is refused, not lost quietly; a stream opened then
# ends at once; streams held through the outage hear what is said after

{
	my $k = visitor($ta);
	my @held = (stream($ta, key => $k), stream($tb, key => $k));
	is(opened(@held), 2, 'streams on both hosts, held through an outage');

	say_to($tb, $k, 'before');
	pump(\@held, 10, sub { !grep { said($_) < 1 } @held });

	$rc->stop_all();

	$r = say_to($ta, $k, 'while down');
	is($r->status, 503, 'a message while Redis is down: 503');
	is($r->json && $r->json->{error}, 'store_unavailable',
		'... store_unavailable');
	ok(defined $r->header('retry-after'), '... with Retry-After');

	my $s = stream($tb, key => $k);
	pump([$s], 10, sub { $s->{eof} || $s->{last_chunk} });
	ok($s->status == 200 && $s->{retry} && !@{$s->events}
		&& ($s->{eof} || $s->{last_chunk}),
		'a stream opened while Redis is down: its retry, and it ends');
	$s->close();

	$rc->start_all();
	ok(wait_for(20, sub { subscribed() >= 4 }),
		'back: the workers are subscribed again');

	# posted once every worker is subscribed again; the streams held
	# through the outage hear it (or, if their worker missed it, read it
	# within the 15 s of the poll)
	ok(wait_for(20, sub { say_to($tb, $k, 'after')->status == 200 }),
		'a message once Redis is back: 200');
	pump(\@held, 25, sub { !grep { !grep { $_ eq 'after' } said($_) }
		@held });
	is(scalar(grep { join(' ', said($_)) eq 'before after' } @held), 2,
		'the streams held through the outage hear it, once')
		or diag(join("\n", map { join(' ', said($_)) } @held));

	$_->close() for @held;
}

###############################################################################

$tb->stop();
$tb->check_log();
$ta->done_testing();

###############################################################################
