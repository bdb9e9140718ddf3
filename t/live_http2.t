#!/usr/bin/perl

# (C) civchat developers

# The live channel over HTTP/2 (issue 12), and how its streams end when
# their worker exits (README, "Live channel"): nginx with two workers
# listens for HTTP/1.1 and, on a second port, for cleartext HTTP/2
# ("listen ... http2"), read by a small HTTP/2 client
# (t/lib/Civchat/H2.pm) that carries several streams on one connection.
#
# A stream over HTTP/2: status, "retry:", messages.  A reload under open
# streams (four on one HTTP/2 connection, one on another, one over
# HTTP/1.1): the old workers exit, each HTTP/2 stream ends with
# END_STREAM (never reset), each connection with GOAWAY (no error) and a
# close, the HTTP/1.1 stream with its last chunk; no [alert] (an "open
# socket left" with "aborting") nor [crit] in error.log; the reconnects,
# with Last-Event-ID, get what was said meanwhile.  A stream asked of a
# worker that is already exiting (its connection accepted before the
# reload, the request sent after): headers and "retry:" at once, then
# the end, nothing held; the worker then exits.  nginx -s quit under open
# streams: the same clean ends, nginx gone.  About 2 s.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat::H2;
use Civchat::Stream;
use Civchat qw/slow/;

use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $TOKEN = 'live-h2-token-0123456789-abcdef';

$t->config(<<"EOF")->try_run('no http2 in this nginx (--with-http_v2_module)');

%%TEST_GLOBALS%%
worker_processes  2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  4m  live=64;

    log_format  live  '\$pid \$server_protocol \$request_uri \$status';

    server {
        listen       127.0.0.1:%%PORT_0%%;
        listen       127.0.0.1:%%PORT_1%%  http2;
        server_name  localhost;

        access_log  %%TESTDIR%%/live.log  live;

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

is(scalar($t->worker_pids), 2, 'two workers');

###############################################################################

# a new visitor's key
sub visitor {
	return $t->client()->init({})->key;
}

sub say_to {
	my ($key, $content) = @_;
	return $t->request(method => 'POST',
		path => "/api/users/key/$key/messages",
		headers => [Authorization => "Bearer $TOKEN",
			'Content-Type' => 'application/json'],
		body => Civchat::json_encode({ content => $content }));
}

# the contents of a stream's message events
sub said { map { $_->{data}{content} } grep { $_->{event} eq 'message' }
	@{$_[0]->events} }

sub last_id { my $ev = $_[0]->events; @$ev ? $ev->[-1]{id} : undef }

# streams over HTTP/1.1 (port 0), connections over HTTP/2 (port 1)
sub h1 { Civchat::Stream->open($t, @_) }
sub h2 { Civchat::H2->new($t, port => 1) }

sub h2_get {
	my ($c, $key, $last_id) = @_;
	return $c->get("/civchat/stream?key=$key", headers => [
		accept => 'text/event-stream',
		defined $last_id ? ('last-event-id' => $last_id) : ()]);
}

sub pump { Civchat::Stream::pump(@_) }

# an HTTP/1.1 stream has ended as an answer ends: its last chunk, the close
sub ended_h1 { $_[0]{last_chunk} && $_[0]{eof} && !$_[0]{reset} }

sub alive { $t->alive(@_) }

# the worker of a pid is on its way out: it said so in error.log
sub exiting {
	my ($pid) = @_;
	my $log = $t->read_file('error.log') // '';
	return $log =~ /\[notice\] $pid#\d+: gracefully shutting down/;
}

# the error log's [alert], [crit] and [emerg] lines and crashed workers
# since the last look
my $seen = 0;

sub problems {
	my @bad = $t->log_problems();
	my @new = @bad[$seen .. $#bad];
	$seen = @bad;
	return join("\n", @new);
}

###############################################################################

# a stream over HTTP/2

{
	my $key = visitor();
	my $c = h2();
	my $s = h2_get($c, $key);
	pump([$c], slow(3), sub { defined $s->retry });

	is($s->status, 200, 'http2: 200');
	is($s->retry, 3000, 'http2: retry: 3000 first');

	say_to($key, 'over h2');
	pump([$c], slow(3), sub { said($s) >= 1 });
	is(join('|', said($s)), 'over h2', 'http2: the message');

	my $bad = $c->get('/civchat/stream');
	pump([$c], slow(3), sub { $bad->done });
	is($bad->status, 400, 'http2: no key, 400, on the same connection');
	ok(!$s->done, 'http2: the stream still open beside it');

	$c->close();
}

###############################################################################

# nginx -s reload under open streams (the master's HUP, as nginx -s
# reload sends it), read while the workers change

{
	my @keys = map { visitor() } 1 .. 3;

	# four streams on one connection (two of the first key), one on
	# another, one over HTTP/1.1
	my $c1 = h2();
	my @s1 = map { h2_get($c1, $_) } @keys, $keys[0];
	my $c2 = h2();
	my $s2 = h2_get($c2, $keys[1]);
	my $h = h1(key => $keys[2]);

	my @h2 = (@s1, $s2);
	my @all = (@h2, $h);
	my @key_of = (@keys, $keys[0], $keys[1], $keys[2]);
	my %key_of = map { ($all[$_] => $key_of[$_]) } 0 .. $#all;
	my @conns = ($c1, $c2, $h);

	pump(\@conns, slow(5), sub { !grep { !defined $_->{retry} } @all });
	is(scalar(grep { ($_->{retry} // '') eq '3000' } @all), scalar @all,
		'reload: each stream opened with retry: 3000');
	is(join(' ', map { $_->status } @all), join(' ', (200) x @all),
		'reload: each stream 200');

	say_to($_, 'before') for @keys;
	pump(\@conns, slow(5), sub { !grep { said($_) < 1 } @all });

	my @old = $t->worker_pids();
	my $master = $t->master_pid();
	kill('HUP', $master) or die "kill HUP: $!\n";

	my $gone = pump(\@conns, slow(20), sub {
		my $open = grep { !$_->done } @h2;
		!alive(@old) && !$open && ended_h1($h) && $c1->eof && $c2->eof
	});
	ok($gone, 'reload: the old workers exit, every stream ends')
		or diag(explain({ old_alive => [alive(@old)],
			h2 => [map { [$_->{end}, $_->{rst}] } @h2],
			h1 => [$h->{last_chunk}, $h->{eof}],
			eof => [$c1->eof, $c2->eof] }));

	my %old = map { $_ => 1 } @old;
	my $new = pump([], slow(10), sub {
		grep({ !$old{$_} } $t->worker_pids()) >= 2
	});
	ok($new, 'reload: two new workers');

	is(scalar(grep { $_->ended } @h2), scalar @h2,
		'reload: each HTTP/2 stream ends with END_STREAM, none reset')
		or diag(explain([map { [$_->{id}, $_->{end}, $_->{rst}] } @h2]));
	is(join(' ', map { $_->goaway // 'none' } $c1, $c2), '0 0',
		'reload: each HTTP/2 connection gets GOAWAY (NO_ERROR)');
	ok($c1->eof && $c2->eof && !$c1->{reset} && !$c2->{reset},
		'reload: then nginx closes it, without a reset');
	ok(ended_h1($h), 'reload: the HTTP/1.1 stream ends with its last chunk');

	is(problems(), '', 'reload: no alert or crit in error.log');

	# said before the browsers are back: they reconnect (after the
	# retry) with Last-Event-ID

	say_to($_, 'during') for @keys;

	my $c3 = h2();
	my %again = map { ($_ => h2_get($c3, $key_of{$_}, last_id($_))) } @h2;
	$again{$h} = h1(key => $keys[2], last_id => last_id($h));
	my @again = values %again;

	pump([$c3, $again{$h}], slow(5),
		sub { !grep { !grep { $_ eq 'during' } said($_) } @again });
	say_to($_, 'after') for @keys;
	pump([$c3, $again{$h}], slow(5),
		sub { !grep { !grep { $_ eq 'after' } said($_) } @again });

	my @wrong = grep { join(' ', said($_), said($again{$_}))
		ne 'before during after' } @all;
	is(scalar @wrong, 0, 'reload: each stream and its reconnect got '
		. 'every message once, in order')
		or diag(explain([map { [said($_), '|', said($again{$_})] }
			@wrong]));

	$_->close() for $c1, $c2, $c3, $h, $again{$h};
}

###############################################################################

# a stream asked of a worker already on its way out: its connection was
# accepted before the reload (a request line that waits for its blank
# line keeps the worker), the request is complete after

{
	my $key = visitor();
	say_to($key, 'missed');

	my $late = h1(key => $key, last_id => 0, query => 'late=1',
		hold => 1);

	# answered: the connection before it was accepted too (one queue)
	is($t->get('/civchat/widget.js')->status, 200, 'exiting: nginx answers');

	my @old = $t->worker_pids();
	my %old = map { $_ => 1 } @old;
	kill('HUP', $t->master_pid()) or die "kill HUP: $!\n";

	# the old worker without the connection exits, the other stays
	my $ready = pump([], slow(15), sub {
		my @left = alive(@old);
		@left == 1 && exiting($left[0])
			&& grep({ !$old{$_} } $t->worker_pids()) >= 2
	});
	ok($ready, 'exiting: one old worker left, shutting down, with the '
		. 'connection');
	my ($holder) = alive(@old);

	ok($late->send_rest(), 'exiting: the request completed');
	pump([$late], slow(5), sub { $late->{eof} });

	is($late->status, 200, 'exiting: 200');
	is($late->header('content-type'), 'text/event-stream',
		'exiting: text/event-stream');
	is($late->{retry}, 3000, 'exiting: retry: 3000');
	ok(ended_h1($late), 'exiting: ended at once with the last chunk');
	is(scalar @{$late->events}, 0,
		'exiting: no event (the next worker replays them)');

	my ($line) = grep { /late=1/ } split /\n/,
		$t->read_file('live.log') // '';
	like($line // '', qr/^(\d+) HTTP\/1\.1 \S+ 200$/,
		'exiting: logged as a complete answer');
	is(($line // '') =~ /^(\d+)/ ? $1 : 0, $holder // -1,
		'exiting: answered by the old worker');

	ok(pump([], slow(10), sub { !alive(@old) }),
		'exiting: then the old worker exits');

	my $again = h1(key => $key, last_id => 0);
	pump([$again], slow(5), sub { said($again) >= 1 });
	is(join('|', said($again)), 'missed',
		'exiting: the reconnect to a new worker gets what it missed');
	$again->close();
	$late->close();

	is(problems(), '', 'exiting: no alert or crit in error.log');
}

###############################################################################

# nginx -s quit under open streams

{
	my @keys = map { visitor() } 1 .. 2;

	my $c = h2();
	my @s = map { h2_get($c, $_) } @keys, @keys;
	my $h = h1(key => $keys[0]);

	pump([$c, $h], slow(5),
		sub { !grep { !defined $_->{retry} } @s, $h });
	say_to($_, 'before quit') for @keys;
	pump([$c, $h], slow(5), sub { !grep { said($_) < 1 } @s, $h });

	my $master = $t->master_pid();
	my @workers = $t->worker_pids();
	kill('QUIT', $master) or die "kill QUIT: $!\n";

	ok(pump([$c, $h], slow(20), sub { !alive($master, @workers) }),
		'quit: nginx exits');
	pump([$c, $h], slow(2), sub { $c->eof && $h->{eof} });

	is(scalar(grep { $_->ended } @s), scalar @s,
		'quit: each HTTP/2 stream ends with END_STREAM, none reset')
		or diag(explain([map { [$_->{id}, $_->{end}, $_->{rst}] } @s]));
	is($c->goaway // 'none', 0, 'quit: GOAWAY (NO_ERROR)');
	ok($c->eof && !$c->{reset}, 'quit: then the connection closes');
	ok(ended_h1($h), 'quit: the HTTP/1.1 stream ends with its last chunk');

	is(problems(), '', 'quit: no alert or crit in error.log');

	$_->close() for $c, $h;
}

$t->done_testing();

###############################################################################
