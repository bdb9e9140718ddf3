#!/usr/bin/perl

# (C) civchat developers

# Tests for the live channel (issue 6): GET .../stream as server-sent
# events, read on raw sockets with two workers.  The answer (headers,
# retry, no key 400, live=0 404, POST 405, cookie or ?key=, CORS for an
# allowed origin); the message endpoint; messages posted through the
# server API to many streams on both workers, each delivered exactly once
# to the streams of its key and to no other; payloads; profile changes
# made through the widget endpoints and through the API; reconnects with
# Last-Event-ID and ?last_id= (nothing lost, nothing twice, also when no
# stream at all was open meanwhile), a fresh stream that starts from now,
# a visitor's queue that wrapped (live=), bursts (one visitor's beyond
# its queue, to one stream and to two: the newest kept, what no stream
# read counted; many visitors' at once: all delivered), a stream that
# ends after 1000 events and picks up after them; 1000 idle streams held
# at once (memory and CPU of the workers, nginx still answering, messages
# still arriving; the soft ulimit -n is raised when needed); ": ping"
# every 15 s, on a stream held from the start; nginx reloaded under open
# streams (they end, the reconnects miss nothing); the error log.  About
# 20 s.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat::Stream;
use Civchat qw/is_key json_decode/;

use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $TOKEN = 'live-token-0123456789-abcdef';
my $IDLE = 1000;                # idle streams held at once

# the test holds $IDLE sockets and more

my $nofile = `sh -c 'ulimit -n' 2>/dev/null` // '';
chomp $nofile;

if ($nofile ne 'unlimited' && $nofile < $IDLE + 200
	&& !$ENV{CIVCHAT_LIVE_ULIMIT})
{
	# raise the soft limit (up to the hard one) and run again
	$ENV{CIVCHAT_LIVE_ULIMIT} = 1;
	exec('/bin/sh', '-c', 'ulimit -n ' . ($IDLE + 1000)
		. ' 2>/dev/null; exec "$0" "$@"', $^X,
		"$FindBin::Bin/$FindBin::Script", @ARGV);
}

if ($nofile ne 'unlimited' && $nofile < $IDLE + 200) {
	# the hard limit is lower
	$IDLE = int(($nofile - 200) / 100) * 100;
	diag("ulimit -n is $nofile: $IDLE idle streams only");
}

# the workers' limit: as many, within the hard limit
my $hard = `sh -c 'ulimit -Hn' 2>/dev/null` // '';
chomp $hard;
my $rlimit = $hard =~ /^\d+$/ && $hard < 8192 ? $hard : 8192;

# (valgrind refuses to change it and gives nginx its own, ulimit -n less
# the descriptors it keeps)
my $rlimit_nofile = $ENV{TEST_NGINX_VALGRIND} ? ''
	: "worker_rlimit_nofile  $rlimit;";

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%
worker_processes      2;
$rlimit_nofile

events {
    worker_connections  4096;
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  8m  live=4096;
    civchat_zone  small  1m  live=8;
    civchat_zone  off    1m  live=0;

    log_format  live  '\$pid \$request_method \$uri \$status';

    server {
        listen       127.0.0.1:%%PORT_0%%  reuseport;
        server_name  localhost;

        access_log  %%TESTDIR%%/live.log  live;

        location /civchat/ {
            civchat               zone=users;
            civchat_api_key       TESTKEY;
            civchat_store         file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_allow_origin  http://site.test;

            # every stream of this test comes from 127.0.0.1
            civchat_stream_limit  per_key=0 per_address=0;
        }

        location /api/ {
            civchat_api        zone=users;
            civchat_api_token  $TOKEN;
            civchat_store      file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location /small/ {
            civchat          zone=small;
            civchat_api_key  TESTKEY;
            civchat_store    off;
        }

        location /api-small/ {
            civchat_api        zone=small;
            civchat_api_token  $TOKEN;
            civchat_store      off;
        }

        location /off/ {
            civchat          zone=off;
            civchat_api_key  TESTKEY;
            civchat_store    off;
        }

        location = /status {
            civchat_status;
        }

        location /api-off/ {
            civchat_api        zone=off;
            civchat_api_token  $TOKEN;
            civchat_store      off;
        }
    }
}

EOF

my $t0 = time();

is(scalar($t->worker_pids), 2, 'two workers');

###############################################################################

# an SSE reader on a raw socket (t/lib/Civchat/Stream.pm)

sub stream { Civchat::Stream->open($t, @_) }

# reads the streams until $cond->() holds or $timeout passes
sub pump {
	my ($streams, $timeout, $cond) = @_;
	return Civchat::Stream::pump($streams, $timeout, $cond);
}

# a new visitor (a profile in the zone) and its key
sub visitor {
	my (%o) = @_;
	my $c = $t->client(base => $o{base} // '/civchat/');
	my $r = $c->init($o{data} // {});
	return wantarray ? ($r->key, $c) : $r->key;
}

sub api {
	my ($method, $path, $data, $base) = @_;
	return $t->request(method => $method, path => ($base // '/api/') . $path,
		headers => [Authorization => "Bearer $TOKEN",
			'Content-Type' => 'application/json'],
		body => ref $data ? Civchat::json_encode($data) : $data);
}

# a message (or payload) to a visitor through the server API
sub say_to {
	my ($key, $content, %o) = @_;
	my $base = delete $o{base};
	return api('POST', "users/key/$key/messages",
		{ content => $content, %o }, $base);
}

# the contents of a stream's message events
sub said { map { $_->{data}{content} } grep { $_->{event} eq 'message' }
	@{$_[0]->events} }

sub ids_ascending {
	my @ids = map { $_->{id} } @_;
	for my $i (1 .. $#ids) {
		return 0 unless $ids[$i] > $ids[$i - 1];
	}
	return 1;
}

###############################################################################

# ": ping" every 15 s: a stream opened now, read near the end

my $pinged_key = visitor();
my $pinged = stream(key => $pinged_key);

###############################################################################

# the answer

{
	my $key = visitor();
	my $s = stream(key => $key);
	pump([$s], 3, sub { $s->{retry} });

	is($s->status, 200, 'stream: 200');
	is($s->header('content-type'), 'text/event-stream',
		'stream: Content-Type text/event-stream');
	is($s->header('cache-control'), 'no-store', 'stream: no-store');
	is($s->header('x-accel-buffering'), 'no', 'stream: X-Accel-Buffering no');
	like($s->header('transfer-encoding') // '', qr/chunked/,
		'stream: chunked, no length');
	is($s->{retry}, 3000, 'stream: retry: 3000 first');
	is(scalar @{$s->events}, 0, 'stream: no event yet');
	$s->close();

	# the cookie names the visitor as well as ?key=

	my $c = stream(cookie => $key, path => '/civchat/stream');
	pump([$c], 3, sub { $c->{retry} });
	is($c->status, 200, 'stream by the cookie: 200');
	is(say_to($key, 'by cookie')->status, 200, 'API message: 200');
	pump([$c], 3, sub { said($c) >= 1 });
	is(join('|', said($c)), 'by cookie', 'stream by the cookie: the message');
	$c->close();

	# HTTP/1.0: no chunks, the events as they are (once the workers
	# have read "by cookie": see "a fresh stream starts from now")
	sleep 0.25;
	my $h = stream(key => $key, http => '1.0');
	pump([$h], 3, sub { $h->{retry} });
	say_to($key, 'over 1.0');
	pump([$h], 3, sub { said($h) >= 1 });
	is(join('|', said($h)), 'over 1.0', 'stream over HTTP/1.0');
	$h->close();

	my $r = $t->get('/civchat/stream');
	is($r->status, 400, 'no key: 400');
	is($r->json && $r->json->{error}, 'missing_field', 'no key: missing_field');

	$r = $t->get('/civchat/stream?key=short');
	is($r->status, 400, 'an invalid ?key=: 400');

	$r = $t->get('/civchat/stream?key=', Cookie => '__ca__chat=bad!key');
	is($r->status, 400, 'an invalid cookie and an empty ?key=: 400');

	$r = $t->post_json('/civchat/stream', { apiKey => 'TESTKEY' });
	is($r->status, 405, 'POST stream: 405');
	like($r->header('allow') // '', qr/GET/, 'POST stream: Allow GET');

	$r = $t->get('/off/stream?key=' . $key);
	is($r->status, 404, 'live=0: 404');
	is($r->json && $r->json->{error}, 'not_found', 'live=0: not_found');

	# live=0: the API still records the message
	my $off = visitor(base => '/off/');
	is(say_to($off, 'nobody listens', base => '/api-off/')->status, 200,
		'live=0: an API message still answers 200');

	# a cross-origin page's EventSource (withCredentials) needs CORS
	my $o = stream(key => $key, origin => 'http://site.test');
	pump([$o], 3, sub { $o->{retry} });
	is($o->status, 200, 'stream from an allowed origin: 200');
	is($o->header('access-control-allow-origin'), 'http://site.test',
		'stream from an allowed origin: Access-Control-Allow-Origin');
	is($o->header('access-control-allow-credentials'), 'true',
		'stream from an allowed origin: Access-Control-Allow-Credentials');
	$o->close();
}

###############################################################################

# the message endpoint: what the visitor typed, as a chat_message event

{
	my ($key, $c) = visitor();
	my $r = $c->post('message', { content => 'hello <b>you</b>' });
	is($r->status, 200, 'message: 200');
	is($r->key, $key, 'message: the visitor\'s key');

	my @ev = $t->read_events(count => 1, match => { user_key => $key,
		type => 'chat_message' });
	is(scalar @ev, 1, 'message: a chat_message event');
	my $a = json_decode($ev[0] && $ev[0]{attrs}) // {};
	ok(($a->{content} // '') eq 'hello <b>you</b>'
		&& defined $a->{isAdmin} && !$a->{isAdmin},
		'message: attrs {content, isAdmin: false}');

	$r = $c->post('message', {});
	is($r->status, 400, 'message without content: 400');
	is($r->json && $r->json->{error}, 'missing_field',
		'message without content: missing_field');

	$r = $c->post('message', { content => '' });
	is($r->status, 400, 'message with an empty content: 400');

	# what the visitor says is not echoed to the stream
	my $s = stream(key => $key);
	pump([$s], 3, sub { $s->{retry} });
	$c->post('message', { content => 'not echoed' });
	pump([$s], 0.5, sub { 0 });
	is(scalar @{$s->events}, 0, 'message: nothing on the visitor\'s stream');
	$s->close();

	# the API's chat_message
	say_to($key, 'from an agent');
	@ev = $t->read_events(count => 3, match => { user_key => $key,
		type => 'chat_message' });
	$a = json_decode($ev[2] && $ev[2]{attrs}) // {};
	ok(($a->{content} // '') eq 'from an agent' && $a->{isAdmin},
		'API message: a chat_message event with isAdmin true')
		or diag(explain(\@ev));
}

###############################################################################

# API errors around messages

{
	my $key = visitor();

	my $r = api('POST', "users/key/$key/messages", { type => 'message' });
	is($r->status, 400, 'API message without content: 400');
	$r = api('POST', "users/key/$key/messages", { content => { a => 1 } });
	is($r->status, 400, 'API message with an object as content: 400');
	$r = api('POST', "users/key/$key/messages",
		{ content => 'x', type => 'poke' });
	is($r->status, 400, 'API message of an unknown type: 400');
	$r = api('POST', 'users/key/NoSuchKey0000000/messages',
		{ content => 'x' });
	is($r->status, 404, 'API message to an unknown key: 404');
	$r = $t->request(method => 'POST', path => "/api/users/key/$key/messages",
		headers => ['Content-Type' => 'application/json'],
		body => '{"content":"x"}');
	is($r->status, 401, 'API message without the token: 401');
	$r = api('GET', "users/key/$key/messages");
	is($r->status, 405, 'API messages GET: 405');
}

###############################################################################

# many streams across two workers, many messages: each stream gets each
# message of its key exactly once, in order, and nothing of another key

{
	my $keys = 8;
	my $per = 25;
	my $posters = 4;

	my @keys = map { scalar visitor() } 1 .. $keys;
	my %of;
	my @s;

	# three streams a key (reuseport spreads them over the workers)
	for my $k (@keys) {
		for (1 .. 3) {
			my $s = stream(key => $k);
			$of{$s} = $k;
			push @s, $s;
		}
	}

	pump(\@s, 5, sub { !grep { !$_->{retry} } @s });
	is(scalar(grep { $_->status == 200 } @s), 3 * $keys,
		'many streams: all open');

	# each poster sends every message of its keys, in order; the
	# posters run at once

	my @kids;
	my $d = $t->testdir();

	for my $p (0 .. $posters - 1) {
		my $pid = fork() // die "fork: $!";

		if ($pid == 0) {
			my $bad = 0;
			for my $i (1 .. $per) {
				for my $k (grep { $_ % $posters == $p } 0 .. $#keys) {
					my $r = say_to($keys[$k], "$keys[$k] #$i");
					$bad++ unless $r->status == 200
						&& ($r->json // {})->{sent};
				}
			}
			# a payload to each key last
			for my $k (grep { $_ % $posters == $p } 0 .. $#keys) {
				$bad++ unless say_to($keys[$k], { n => $k, k => $keys[$k] },
					type => 'payload')->status == 200;
			}
			open(my $fh, '>', "$d/poster.$p") or POSIX::_exit(9);
			print $fh "$bad\n";
			close $fh;
			POSIX::_exit(0);
		}

		push @kids, $pid;
	}

	my $want = $per + 1;
	pump(\@s, 15, sub { !grep { @{$_->events} < $want } @s });
	waitpid($_, 0) for @kids;

	my $bad = 0;
	$bad += ($t->read_file("poster.$_") // 1) for 0 .. $posters - 1;
	is($bad, 0, 'many streams: every API post answered sent');

	# a little longer, for any duplicate
	pump(\@s, 0.4, sub { 0 });

	my ($exact, $ordered, $foreign, $payload) = (0, 0, 0, 0);

	for my $s (@s) {
		my $k = $of{$s};
		my @m = said($s);
		my @want = map { "$k #$_" } 1 .. $per;

		$exact++ if join("\n", sort @m) eq join("\n", sort @want);
		$ordered++ if join("\n", @m) eq join("\n", @want)
			&& ids_ascending(@{$s->events});
		$foreign += grep { !/^\Q$k\E #/ } @m;

		my @p = grep { $_->{event} eq 'payload' } @{$s->events};
		$payload++ if @p == 1 && ref $p[0]{data}{content} eq 'HASH'
			&& $p[0]{data}{content}{k} eq $k;
	}

	is($exact, scalar @s, "many streams: each of the " . scalar(@s)
		. " streams got each of its key's $per messages exactly once")
		or diag(join("\n", map { "$of{$_}: " . scalar(said($_))
			. ' messages' } @s));
	is($ordered, scalar @s, 'many streams: in the order sent, ids ascending');
	is($foreign, 0, 'many streams: no message of another key');
	is($payload, scalar @s, 'many streams: the payload, once, as sent');
	is(scalar(grep { grep { $_->{event} !~ /^(message|payload)$/ }
		@{$_->events} } @s), 0, 'many streams: no other event');

	my $first = $s[0]->events->[0];
	ok($first && $first->{data}{isAdmin} eq '1'
		&& JSON::PP::is_bool($first->{data}{isAdmin}),
		'a message event: {"content", "isAdmin": true}');

	$_->close() for @s;

	# who held the streams and who took the posts
	my (%held, %took);
	pump([], 0.3, sub { 0 });
	for my $line (split /\n/, $t->read_file('live.log') // '') {
		my ($pid, $m, $uri) = split / /, $line;
		$held{$pid}++ if $m eq 'GET' && $uri eq '/civchat/stream';
		$took{$pid}++ if $m eq 'POST' && $uri =~ m{/messages$};
	}
	is(scalar(keys %held), 2, 'many streams: both workers held streams');
	is(scalar(keys %took), 2, 'many streams: both workers took messages');
}

###############################################################################

# profile changes reach the visitor's streams, whoever made them

{
	my ($key, $c) = visitor(data => { plan => 'free' });
	my $other = visitor();

	# (the init's own change is older than the stream: see "a fresh
	# stream starts from now" for that case)
	sleep 0.25;

	my $s = stream(key => $key);
	my $o = stream(key => $other);
	pump([$s, $o], 3, sub { $s->{retry} && $o->{retry} });

	is($c->update({ plan => 'gold', seats => 3 })->status, 200,
		'profile: update through the widget endpoint');
	is(api('PUT', "users/key/$key", { score => 7, plan => 'platinum' })
		->status, 200, 'profile: update through the API');
	is($c->event({ event => 'no_change' })->status, 200,
		'profile: an event changes no attribute');
	is(api('PUT', "users/key/$key", { score => 7 })->status, 200,
		'profile: the same value again');
	is(api('POST', 'users', { key => $key, tier => 'b' })->status, 200,
		'profile: create-or-update by the body');

	my $n = 5;
	pump([$s, $o], 5, sub { @{$s->events} >= $n });
	pump([$s, $o], 0.3, sub { 0 });

	my %p = map { $_->{data}{name} => $_->{data} }
		grep { $_->{event} eq 'profile' } @{$s->events};
	is(scalar @{$s->events}, $n, "profile: $n events")
		or diag(explain([map { $_->{data} } @{$s->events}]));
	is_deeply($p{plan}, { name => 'plan', old => 'gold', new => 'platinum' },
		'profile: the last plan change, old and new')
		or diag(explain(\%p));
	is_deeply($p{seats}, { name => 'seats', old => undef, new => 3 },
		'profile: a new attribute from the widget endpoint');
	is_deeply($p{score}, { name => 'score', old => undef, new => 7 },
		'profile: a field only the API may set');
	is_deeply($p{tier}, { name => 'tier', old => undef, new => 'b' },
		'profile: through POST users');
	# (the API body's keys go in JSON order: plan, score)
	is(join(',', map { $_->{data}{name} } @{$s->events}),
		'plan,seats,plan,score,tier', 'profile: in order, once each')
		or diag(join(',', map { $_->{data}{name} } @{$s->events}));
	is(scalar @{$o->events}, 0, 'profile: nothing to another visitor');

	$s->close();
	$o->close();
}

###############################################################################

# reconnects: Last-Event-ID (or ?last_id=) replays what was missed while
# the ring holds it, once

{
	my $key = visitor();
	my $other = visitor();

	# a stream held all along on each worker keeps their timers going,
	# as on a busy server
	my @busy = map { stream(key => $other) } 1 .. 4;

	my $s = stream(key => $key);
	pump([$s, @busy], 3, sub { $s->{retry} });

	say_to($key, "r$_") for 1 .. 3;
	pump([$s], 3, sub { said($s) >= 3 });
	my @got = said($s);
	my $last = $s->events->[-1]{id};
	$s->close();

	my ($lost, $twice, $rounds) = (0, 0, 12);
	my $n = 3;

	for my $round (1 .. $rounds) {
		# missed while away, one for another key among them
		say_to($key, 'r' . ++$n);
		say_to($other, 'not yours');
		say_to($key, 'r' . ++$n);

		# odd rounds by the header, even ones by ?last_id=
		$s = $round % 2
			? stream(key => $key, last_id => $last)
			: stream(key => $key, query => "last_id=$last");

		# and some after reconnecting
		say_to($key, 'r' . ++$n);
		pump([$s, @busy], 3, sub { said($s) >= 3 });
		pump([$s, @busy], 0.25, sub { 0 });

		my @m = said($s);
		my %seen;
		$twice += grep { $seen{$_}++ } @m, @got;
		push @got, @m;
		$last = $s->events->[-1]{id} if @{$s->events};
		$s->close();
	}

	my %have = map { $_ => 1 } @got;
	$lost = grep { !$have{"r$_"} } 1 .. $n;

	is($lost, 0, "reconnect: nothing lost over $rounds reconnects");
	is($twice, 0, 'reconnect: nothing delivered twice')
		or diag(join(' ', @got));
	is(join(' ', @got), join(' ', map { "r$_" } 1 .. $n),
		'reconnect: all in order');

	# a Last-Event-ID ahead of the ring, or not a number: from now on
	$s = stream(key => $key, last_id => 999999999);
	my $u = stream(key => $key, last_id => 'abc');
	pump([$s, $u], 3, sub { $s->{retry} && $u->{retry} });
	say_to($key, 'after');
	pump([$s, $u, @busy], 3, sub { said($s) >= 1 && said($u) >= 1 });
	pump([$s, $u, @busy], 0.25, sub { 0 });
	is(join(' ', said($s)), 'after', 'Last-Event-ID ahead of the ring: '
		. 'only what comes next');
	is(join(' ', said($u)), 'after', 'Last-Event-ID not a number: only '
		. 'what comes next');

	# a fresh stream (no Last-Event-ID) starts from now: what was said
	# just before it opened is not sent to it

	my ($early, $fresh) = (0, 0);

	for my $round (1 .. 10) {
		say_to($key, "before $round");
		$s = stream(key => $key);
		pump([$s, @busy], 3, sub { $s->{retry} });
		say_to($key, "after $round");
		pump([$s, @busy], 3, sub { said($s) >= 1 });
		pump([$s, @busy], 0.15, sub { 0 });
		my @m = said($s);
		$early += grep { /^before/ } @m;
		$fresh++ if "@m" eq "after $round";
		$s->close();
	}

	is($early, 0, 'a fresh stream: nothing said before it opened');
	is($fresh, 10, 'a fresh stream: what is said after it opened, once');

	$_->close() for $s, $u, @busy;

	# the zone "small" has no other stream: the only visitor's connection
	# drops, a message is said before it is back; the reconnect gets it

	my $k8 = visitor(base => '/small/');
	$s = stream(key => $k8, path => '/small/stream');
	pump([$s], 3, sub { $s->{retry} });
	say_to($k8, 'x1', base => '/api-small/');
	pump([$s], 3, sub { said($s) >= 1 });
	$last = @{$s->events} ? $s->events->[-1]{id} : 0;
	$s->close();
	pump([], 0.2, sub { 0 });
	say_to($k8, 'x2', base => '/api-small/');
	$s = stream(key => $k8, last_id => $last, path => '/small/stream');
	pump([$s], 3, sub { said($s) >= 1 });
	pump([$s], 0.2, sub { 0 });
	is(join(' ', said($s)), 'x2', 'reconnect when no stream was open '
		. 'meanwhile: what was said in between');
	$s->close();

	# a visitor's queue of 8 (live=8) that wrapped: the last 8 are
	# replayed (another visitor's stream is open meanwhile)

	my $held = stream(key => scalar visitor(base => '/small/'),
		path => '/small/stream');
	pump([$held], 3, sub { $held->{retry} });
	say_to($k8, "w$_", base => '/api-small/') for 1 .. 20;

	# (once the workers have read the ring: a reconnect racing their
	# poll is tested above)
	pump([$held], 0.3, sub { 0 });
	$s = stream(key => $k8, last_id => 0, path => '/small/stream');
	pump([$s], 3, sub { said($s) >= 8 });
	pump([$s], 0.3, sub { 0 });
	is(join(' ', said($s)), join(' ', map { "w$_" } 13 .. 20),
		'a queue of 8 that wrapped: the last 8 replayed, in order');

	# many visitors' messages at once, far more than one visitor keeps:
	# each reaches its open stream, whatever the others said

	my @many = map { scalar visitor(base => '/small/') } 1 .. 12;
	my @ms = map { stream(key => $_, path => '/small/stream') } @many;
	pump(\@ms, 3, sub { !grep { !$_->{retry} } @ms });
	my $t1 = time();
	for my $i (1 .. 6) {
		say_to($_, "m$i", base => '/api-small/') for @many;
	}
	my $ms = (time() - $t1) * 1000;
	pump(\@ms, 5, sub { !grep { said($_) < 6 } @ms });
	pump(\@ms, 0.3, sub { 0 });
	is(scalar(grep { join(' ', said($_)) eq 'm1 m2 m3 m4 m5 m6' } @ms),
		scalar @many, sprintf('a burst of %d messages to %d visitors in '
		. '%.0f ms (live=8): all reach their streams, in order',
		6 * @many, scalar @many, $ms));
	$_->close() for @ms;

	# one visitor said more than its queue holds before its workers
	# read it: the newest 8 arrive, and each of the others reached a
	# stream of the visitor or is counted as dropped (README "Live
	# channel": dropped is what no stream read).  First a visitor with
	# one stream; then k8, whose replayed stream $s is still open: a
	# message pushed out before the other stream's worker read it may
	# have been read by $s's worker (when they are not the same), and is
	# no drop then.

	my $k9 = visitor(base => '/small/');
	my $dropped0 = live_dropped('small');
	my $b = stream(key => $k9, path => '/small/stream');
	pump([$b], 3, sub { $b->{retry} });
	is(scalar(grep { say_to($k9, "b$_", base => '/api-small/')->status
		== 200 } 1 .. 40), 40, 'a burst of 40 to one visitor: all sent');
	pump([$b], 3, sub { grep { $_ eq 'b40' } said($b) });
	pump([$b], 0.3, sub { 0 });
	@got = said($b);
	ok(@got >= 8 && "@got[-8 .. -1]" eq join(' ', map { "b$_" } 33 .. 40),
		'a burst of 40 to one visitor (live=8): the newest 8 arrive')
		or diag("@got");
	is(live_dropped('small') - $dropped0, 40 - @got,
		'a burst of 40 to one visitor: what did not arrive is counted')
		or diag("dropped before: $dropped0, got: @got");
	$b->close();

	$dropped0 = live_dropped('small');
	$b = stream(key => $k8, path => '/small/stream');
	pump([$s, $b], 3, sub { $b->{retry} });
	is(scalar(grep { say_to($k8, "c$_", base => '/api-small/')->status
		== 200 } 1 .. 40), 40, 'a burst of 40 to a visitor with two '
		. 'streams: all sent');
	pump([$s, $b], 3, sub { (grep { $_ eq 'c40' } said($b))
		&& (grep { $_ eq 'c40' } said($s)) });
	pump([$s, $b], 0.3, sub { 0 });
	my @c = map { [grep { /^c\d+$/ } said($_)] } $s, $b;
	is(scalar(grep { @$_ >= 8 && "@$_[-8 .. -1]"
		eq join(' ', map { "c$_" } 33 .. 40) } @c), 2,
		'a burst of 40 to a visitor with two streams: the newest 8 reach '
		. 'both') or diag(join("\n", map { "@$_" } @c));
	my %either = map { $_ => 1 } map { @$_ } @c;
	is(live_dropped('small') - $dropped0, 40 - keys %either,
		'a burst of 40 to a visitor with two streams: what neither got is '
		. 'counted') or diag("dropped before: $dropped0");

	$_->close() for $s, $b, $held;
}

# civchat_live_dropped_total of a zone, from the status page
sub live_dropped {
	my ($zone) = @_;
	my $r = $t->get('/status');
	return $r->body =~ /^civchat_live_dropped_total\{zone="$zone"\} (\d+)/m
		? $1 : -1;
}

###############################################################################

# a stream ends after 1000 events; the reconnect picks up after them

{
	my $key = visitor();
	my $n = 1100;

	for my $i (1 .. $n) {
		my $r = say_to($key, "e$i");
		if ($r->status != 200) {
			fail("1000 events: message $i answered " . $r->status);
			last;
		}
	}

	my $s = stream(key => $key, last_id => 0);
	pump([$s], 10, sub { $s->{last_chunk} || $s->{eof} });
	pump([$s], 0.3, sub { 0 });
	my @m = said($s);
	ok($s->{last_chunk}, 'a replay over 1000 events: the answer ends '
		. '(the last chunk)');
	is(scalar @m, 1000, 'a replay over 1000 events: after 1000 of them');

	my $last = $s->events->[-1]{id};
	$s = stream(key => $key, last_id => $last);
	pump([$s], 5, sub { said($s) >= $n - 1000 });
	pump([$s], 0.3, sub { 0 });
	push @m, said($s);
	is(join(' ', @m), join(' ', map { "e$_" } 1 .. $n),
		'a replay over 1000 events: the reconnect brings the rest');
	$s->close();
}

###############################################################################

# 1000 idle streams at once

{
	my @w = $t->worker_pids();
	my %rss0 = map { $_ => rss($_) } @w;

	my @keys = map { scalar visitor() } 1 .. 5;
	my @idle = map { scalar visitor() } 1 .. 20;
	my @s;
	my $opened = 0;

	# (streams need a visitor's key: all but five share twenty, with no
	# limit on streams a key in this location)
	for my $i (0 .. $IDLE - 1) {
		my $k = $i < @keys ? $keys[$i] : $idle[$i % @idle];
		my $s = eval { stream(key => $k) };
		last unless $s;
		push @s, $s;
	}

	pump(\@s, 15, sub { !grep { !$_->{retry} } @s });
	is(scalar(grep { $_->{retry} && $_->status == 200 } @s), $IDLE,
		"$IDLE idle streams open");

	# idle: what the workers spend for two seconds
	my %cpu0 = map { $_ => cpu($_) } @w;
	my $since = time();
	sleep 2;
	my $cpu = 0;
	$cpu += cpu($_) - $cpu0{$_} for @w;
	my $secs = time() - $since;
	cmp_ok($cpu / $secs, '<', 0.05, sprintf("$IDLE idle streams: the workers "
		. "use %.1f%% CPU", 100 * $cpu / $secs));

	# (a sanitizer build and valgrind allocate much more)
	my $rss = 0;
	$rss += rss($_) - $rss0{$_} for @w;
	cmp_ok($rss / $IDLE, '<',
		($ENV{ASAN_OPTIONS} || $ENV{TEST_NGINX_VALGRIND} ? 64 : 16) * 1024,
		sprintf("$IDLE idle streams: %.1f KB of worker memory each",
			$rss / $IDLE / 1024));

	# nginx answers meanwhile, and messages still arrive
	my ($k, $c) = visitor();
	ok(is_key($k), "$IDLE idle streams: init still answers");
	say_to($keys[$_], "to $_") for 0 .. $#keys;
	my @mine = @s[0 .. $#keys];
	pump(\@s, 5, sub { !grep { said($_) < 1 } @mine });
	pump(\@s, 0.3, sub { 0 });
	is(join(',', map { join('|', said($mine[$_])) } 0 .. $#keys),
		join(',', map { "to $_" } 0 .. $#keys),
		"$IDLE idle streams: messages still arrive");
	is(scalar(grep { @{$_->events} } @s[@keys .. $#s]), 0,
		"$IDLE idle streams: the others got nothing");
	is(scalar(grep { $_->{eof} } @s), 0,
		"$IDLE idle streams: all still open");

	$_->close() for @s;
}

sub rss {
	my ($pid) = @_;
	my $st = $t->read_file("/proc/$pid/status") // '';
	return $st =~ /^VmRSS:\s+(\d+) kB/m ? $1 * 1024 : 0;
}

sub cpu {
	my ($pid) = @_;
	my $st = $t->read_file("/proc/$pid/stat") // '';
	$st =~ s/^.*\) //;
	my @f = split / /, $st;
	return ($f[11] + $f[12]) / POSIX::sysconf(POSIX::_SC_CLK_TCK());
}

###############################################################################

# ": ping" on the stream opened at the start, once it has been open 15 s

{
	my $wait = $t0 + 15.8 - time();
	pump([$pinged], $wait, sub { 0 }) if $wait > 0;
	pump([$pinged], 3, sub { @{$pinged->{comments}} });

	is($pinged->status, 200, 'ping: the stream opened at the start');
	ok(!$pinged->{eof}, 'ping: still open after ' . int(time() - $t0) . ' s');
	ok(scalar(grep { $_ eq ' ping' } @{$pinged->{comments}}),
		'ping: ": ping" within 16 s') or diag(explain($pinged->{comments}));
	is(scalar @{$pinged->events}, 0, 'ping: a comment, not an event');
	$pinged->close();
}

###############################################################################

# nginx -s reload under open streams: they end; the clients reconnect with
# Last-Event-ID and miss nothing, not even what was said meanwhile

{
	my @keys = map { scalar visitor() } 1 .. 4;
	my @s = map { my $k = $_; map { stream(key => $k) } 1 .. 2 } @keys;
	my %of = map { ($s[$_] => $keys[int($_ / 2)]) } 0 .. $#s;

	pump(\@s, 3, sub { !grep { !$_->{retry} } @s });
	say_to($_, 'before') for @keys;
	pump(\@s, 3, sub { !grep { said($_) < 1 } @s });

	my @old = $t->worker_pids();
	my $pid = fork() // die "fork: $!";

	if ($pid == 0) {
		# said while the workers change
		for my $i (1 .. 20) {
			say_to($_, "during $i") for @keys;
			sleep 0.02;
		}
		POSIX::_exit(0);
	}

	ok($t->reload(), 'reload: new workers, the old ones gone');
	pump(\@s, 5, sub { !grep { !$_->{eof} } @s });
	is(scalar(grep { $_->{eof} } @s), scalar @s, 'reload: the streams end');
	waitpid($pid, 0);

	my @r = map { stream(key => $of{$_}, last_id => $_->events->[-1]{id}) }
		@s;
	say_to($_, 'after') for @keys;
	pump(\@r, 5, sub { !grep { !grep { $_ eq 'after' } said($_) } @r });
	pump(\@r, 0.3, sub { 0 });

	my $ok = 0;
	my $want = join(' ', 'before', (map { "during $_" } 1 .. 20), 'after');
	for my $i (0 .. $#s) {
		my $got = join(' ', said($s[$i]), said($r[$i]));
		$ok++ if $got eq $want;
		diag("$of{$s[$i]}: $got") unless $got eq $want;
	}
	is($ok, scalar @s, 'reload: each stream and its reconnect got every '
		. 'message once, in order');

	my %new = map { $_ => 1 } $t->worker_pids();
	ok(!grep({ $new{$_} } @old), 'reload: served by the new workers');

	$_->close() for @r;
}

my $took = time() - $t0;
cmp_ok($took, '<', 60, sprintf('live.t ran in %.0f s', $took));

$t->done_testing();

###############################################################################
