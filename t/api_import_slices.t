#!/usr/bin/perl

# (C) civchat developers

# Tests for imports that never hold their worker (issue 12): with one
# worker, page hits sent while a 50 MB import runs are answered before
# the import's answer ends, and their events fall between the import's
# own; the worker's memory during it stays far below the body's size;
# the answer streams, and the import waits while its client does not
# read; a client that goes away mid-import ends it, and nothing leaks
# or crashes; a reload during an import lets the old worker finish it.
# The rules of rows (CSV, NDJSON, errors) are t/api_import.t's.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_decode uniq_id/;

use IO::Select;
use POSIX ();
use Socket qw/PF_INET SOCK_STREAM SOL_SOCKET SO_RCVBUF inet_aton
	sockaddr_in/;
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $TOKEN = 'slices-token-0123456789abcdef';

# under valgrind or a sanitizer everything is slower and allocations
# are larger by design: smaller bodies, and no memory figures
my $SLOW = $ENV{TEST_NGINX_VALGRIND} || $ENV{ASAN_OPTIONS};

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%

worker_processes  1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  128m;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  TESTKEY;
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location /api/ {
            civchat_api         zone=users;
            civchat_api_token   $TOKEN;
            civchat_store       file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_body_limit  200m;
            client_max_body_size  200m;
        }
    }

    # a small send buffer: an answer the client does not read fills it
    server {
        listen       127.0.0.1:%%PORT_1%% sndbuf=16k;
        server_name  localhost;

        location /api/ {
            civchat_api         zone=users;
            civchat_api_token   $TOKEN;
            civchat_store       file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_body_limit  200m;
            client_max_body_size  200m;
            send_timeout        30s;
        }
    }
}

EOF

my $d = $t->testdir();
my ($worker) = $t->worker_pids();

###############################################################################

# an import in a child process: it sends the request, says "sent", then
# reads the answer as it comes (or first waits for a word from the
# parent: "read" or "close"; or closes once it has some of the answer),
# keeps it in a file and says "done FIRST END" (the times of the
# answer's first and last bytes)

my $imports = 0;

sub start_import {
	my ($body, %o) = @_;

	my $n = ++$imports;
	my $port = $t->port($o{port} // 0);
	my $head = "POST /api/import HTTP/1.1\r\nHost: localhost\r\n"
		. "Connection: close\r\nAuthorization: Bearer $TOKEN\r\n"
		. 'Content-Type: ' . ($o{type} // 'text/csv') . "\r\n"
		. 'Content-Length: ' . length($body) . "\r\n\r\n";

	pipe(my $up_r, my $up_w) or die "pipe: $!";
	pipe(my $down_r, my $down_w) or die "pipe: $!";

	my $pid = fork() // die "fork: $!";

	if ($pid == 0) {
		close $up_r;
		close $down_w;
		$up_w->autoflush(1);

		socket(my $s, PF_INET, SOCK_STREAM, 0) or POSIX::_exit(2);
		setsockopt($s, SOL_SOCKET, SO_RCVBUF, $o{rcvbuf})
			if $o{rcvbuf};
		connect($s, sockaddr_in($port, inet_aton('127.0.0.1')))
			or POSIX::_exit(3);
		binmode $s;

		my $out = $head . $body;
		while (length $out) {
			my $w = syswrite($s, $out, 1 << 20);
			POSIX::_exit(4) unless defined $w;
			substr($out, 0, $w, '');
		}

		print $up_w 'sent ' . time() . "\n";

		if ($o{wait}) {
			my $word = <$down_r> // 'close';
			if ($word =~ /close/) {
				close $s;
				print $up_w "done 0 0\n";
				POSIX::_exit(0);
			}
		}

		my ($in, $first) = ('', 0);
		while (1) {
			my $r = sysread($s, my $buf, 65536);
			last unless $r;
			$first ||= time();
			$in .= $buf;
			if ($o{close_after} && length $in >= $o{close_after}) {
				close $s;
				last;
			}
		}
		my $end = time();

		open(my $fh, '>:raw', "$d/import.$n") or POSIX::_exit(5);
		print $fh $in;
		close $fh;

		print $up_w "done $first $end\n";
		POSIX::_exit(0);
	}

	close $up_w;
	close $down_r;
	$down_w->autoflush(1);

	return { n => $n, pid => $pid, up => $up_r, down => $down_w };
}

# a line from the child, or undef after $timeout seconds
sub from_child {
	my ($imp, $timeout) = @_;

	return undef
		unless IO::Select->new($imp->{up})->can_read($timeout // 60);

	my $line = readline($imp->{up});
	return defined $line && $line =~ /^(\w+)((?: \S+)*)$/
		? [ $1, split(' ', $2) ] : undef;
}

sub tell_child {
	my ($imp, $word) = @_;
	print { $imp->{down} } "$word\n";
}

# the child has said "done": its answer, parsed
sub finish_import {
	my ($imp) = @_;

	waitpid($imp->{pid}, 0);

	my $raw = $t->read_file("$d/import.$imp->{n}") // '';
	return Civchat::Response->parse($raw, 'POST');
}

sub vm {
	my ($what) = @_;
	my $s = $t->read_file("/proc/$worker/status") // '';
	return $s =~ /^$what:\s+(\d+) kB/m ? $1 : 0;
}

sub by_user_id {
	my ($id, %o) = @_;
	return $t->request(method => 'GET', path => "/api/users/user_id/$id",
		headers => [ Authorization => "Bearer $TOKEN" ]);
}

sub counts_ok {
	my ($r, $name, %want) = @_;

	my $j = $r->json // {};
	my @res = @{$j->{results} // []};

	is($r->status, 200, "$name: 200");
	is(join(' ', map { $j->{$_} // 'undef' } qw/created updated errors/),
		join(' ', map { $want{$_} // 0 } qw/created updated errors/),
		"$name: created, updated, errors");
	is_deeply([ map { $_->{row} } @res ], [ 1 .. $want{rows} ],
		"$name: a result for every row, in order");

	return @res;
}

# the rows: every 100th a new profile (a user_created event each), the
# others update one of 200 profiles with what they have already (no
# event); a note of 960 bytes makes each row about 1 KB

sub big_csv {
	my ($p, $bytes) = @_;

	my $note = join(' ', map { "word$_" } 1 .. 160);
	$note = substr($note, 0, 960);

	my $csv = "user_id,plan,note\r\n";
	my ($rows, $new, %old) = (0, 0);

	while (length $csv < $bytes) {
		$rows++;
		my $id = $rows % 100 == 1 ? "$p-new-" . ++$new : "$p-" . $rows % 200;
		$old{$id} = 1 unless $id =~ /-new-/;
		$csv .= "$id,gold,\"$note\"\r\n";
	}

	# rows, profiles new, the profiles the others update
	return ($csv, $rows, $new, scalar keys %old);
}

###############################################################################

# a 50 MB import while page hits come in: they are answered while the
# import runs, the worker's memory stays far below the body's size

{
	my $p = uniq_id('big');
	my ($csv, $rows, $new) = big_csv($p, $SLOW ? 4e6 : 50e6);

	# the 200 profiles exist already: the rows that update them change
	# nothing
	my $seed = "user_id,plan,note\r\n";
	$seed .= $_ for grep { !/-new-/ } (split /(?<=\r\n)/, $csv)[1 .. 400];
	my $s = start_import($seed);
	from_child($s, 60) for 1 .. 2;
	finish_import($s);

	my $c = $t->client();
	$c->init();

	my $anon0 = vm('RssAnon');
	my $imp = start_import($csv);
	my $sent = from_child($imp, 120) // [];
	is($sent->[0], 'sent', 'big: the body is sent');

	my ($peak, @hits, $done) = ($anon0);
	my $sel = IO::Select->new($imp->{up});
	my $deadline = time() + 600;

	until ($done || time() > $deadline) {
		my $t0 = time();
		my $r = $c->page_hit();
		push @hits, [ $t0, time(), $r->status ];

		my $anon = vm('RssAnon');
		$peak = $anon if $anon > $peak;

		# "done", or the child is gone without a word
		$done = from_child($imp, 0) // [ 'lost', 0, 0 ]
			if $sel->can_read(0);
		sleep 0.005;
	}

	$done //= [ 'late', 0, 0 ];
	is($done->[0], 'done', 'big: the answer ended');
	my (undef, $first, $end) = @$done;
	my $r = finish_import($imp);

	counts_ok($r, 'big', created => $new, updated => $rows - $new,
		rows => $rows);

	# sent once the answer had begun (the import was running), answered
	# before it ended
	my @during = grep { $_->[2] == 200 && $_->[0] > $first
		&& $_->[1] < $end } @hits;
	cmp_ok(scalar @during, '>=', 3, 'big: page hits answered while the '
		. 'import\'s answer streamed (' . scalar(@during) . ' of '
		. scalar(@hits) . ')');
	is(scalar(grep { $_->[2] != 200 } @hits), 0, 'big: every page hit 200');

	# in the worker's order of work: page views between the import's rows
	sleep 0.3;
	my @ev = $t->parse_events();
	my @mine = grep { ($ev[$_]{user_id} // '') =~ /^\Q$p\E-new-/ } 0 .. $#ev;
	my @views = grep { $ev[$_]{type} eq 'page_view' && $_ > $mine[0]
		&& $_ < $mine[-1] } 0 .. $#ev;
	cmp_ok(scalar @views, '>', 0, 'big: page views among the import\'s '
		. 'events (' . scalar(@views) . ')');

	SKIP: {
		skip 'memory under a sanitizer or valgrind', 1 if $SLOW;

		my $grew = ($peak - $anon0) / 1024;
		diag(sprintf('big: %.0f MB, %d rows, %.2f s; worker RssAnon '
			. '+%.1f MB', length($csv) / 1e6, $rows, $end - $sent->[1],
			$grew)) if $ENV{TEST_NGINX_VERBOSE};
		cmp_ok($grew, '<', 16, sprintf('big: the worker\'s memory grew by '
			. '%.1f MB during a %.0f MB import', $grew,
			length($csv) / 1e6));
	}

	is_deeply([ $t->worker_pids() ], [ $worker ], 'big: the same worker');
}

###############################################################################

# the answer streams, and the import waits for its client: one that
# reads nothing (a small receive buffer, a small send buffer on the
# server's side) holds the import once the buffers are full; the rows
# after stay unapplied until it reads, then the answer is whole

sub small_csv {
	my ($p, $n) = @_;
	return "user_id,plan\n" . join('', map { "$p-$_,p$_\n" } 1 .. $n);
}

my $N = $SLOW ? 5000 : 20000;

{
	my $p = uniq_id('wait');
	my $imp = start_import(small_csv($p, $N), port => 1, rcvbuf => 4096,
		wait => 1);

	is((from_child($imp) // [])->[0], 'sent', 'waits: sent');

	my $deadline = time() + 10;
	sleep 0.1 until by_user_id("$p-1")->status == 200 || time() > $deadline;
	is(by_user_id("$p-1")->status, 200, 'waits: the first rows are applied');

	# a 20,000-row import takes a fraction of a second when read
	sleep($SLOW ? 3 : 1.5);
	is(by_user_id("$p-$N")->status, 404, 'waits: the last row waits for '
		. 'the client to read');

	tell_child($imp, 'read');
	is((from_child($imp, 60) // [])->[0], 'done', 'waits: read');
	counts_ok(finish_import($imp), 'waits', created => $N, rows => $N);
	is(by_user_id("$p-$N")->status, 200, 'waits: the last row is applied');
}

# a client that goes away mid-import: while the import waits for it to
# read, and while it runs (it closes once it has some of the answer)

{
	my $p = uniq_id('gone');
	my $imp = start_import(small_csv($p, $N), port => 1, rcvbuf => 4096,
		wait => 1);
	from_child($imp);

	my $deadline = time() + 10;
	sleep 0.1 until by_user_id("$p-1")->status == 200 || time() > $deadline;
	tell_child($imp, 'close');
	from_child($imp, 60);
	finish_import($imp);

	$p = uniq_id('gone');
	$imp = start_import(small_csv($p, $N), port => 1, rcvbuf => 4096,
		close_after => 8192);
	from_child($imp);
	my $done = from_child($imp, 60) // [];
	finish_import($imp);
	ok($done->[2], 'gone: the client closed after some of the answer');

	sleep($SLOW ? 3 : 1);
	is(by_user_id("$p-1")->status, 200, 'gone: the first rows are applied');
	is(by_user_id("$p-$N")->status, 404, 'gone: the import ended with its '
		. 'client');

	is_deeply([ $t->worker_pids() ], [ $worker ], 'gone: the same worker');

	$p = uniq_id('after');
	$imp = start_import(small_csv($p, 100));
	from_child($imp) for 1 .. 2;
	counts_ok(finish_import($imp), 'an import after them', created => 100,
		rows => 100);
}

# HTTP/1.0: no chunks, the end of the connection ends the answer

{
	my $p = uniq_id('ten');
	my $r = $t->request(method => 'POST', path => '/api/import',
		http => '1.0', body => small_csv($p, 3), headers => [
			Authorization => "Bearer $TOKEN",
			'Content-Type' => 'text/csv' ]);
	counts_ok($r, 'HTTP/1.0', created => 3, rows => 3);
	ok(!defined $r->header('transfer-encoding'), 'HTTP/1.0: not chunked');
}

###############################################################################

# a reload while an import runs, and while one waits for its client:
# the old worker finishes it, then exits (no socket left open)

sub reload_during {
	my ($name, $imp, $before, $after) = @_;

	my ($old) = $t->worker_pids();
	kill('HUP', $t->master_pid()) or die "HUP: $!";

	$before->() if $before;

	my $done = from_child($imp, 120) // [];
	is($done->[0], 'done', "$name: the import ended");
	$after->(finish_import($imp));

	my $deadline = time() + 10;
	sleep 0.1 while kill(0, $old) && !is_zombie($old) && time() < $deadline;
	ok(!kill(0, $old) || is_zombie($old), "$name: then the old worker "
		. 'exits');

	$deadline = time() + 10;
	sleep 0.1 until $t->worker_pids() || time() > $deadline;
}

{
	my $p = uniq_id('reload');
	my ($csv, $rows, $new, $old) = big_csv($p, $SLOW ? 4e6 : 30e6);

	my $imp = start_import($csv);
	from_child($imp);

	reload_during('reload, running', $imp, undef, sub {
		counts_ok($_[0], 'reload, running', created => $new + $old,
			updated => $rows - $new - $old, rows => $rows);
	});

	$p = uniq_id('reloadw');
	$imp = start_import(small_csv($p, $N), port => 1, rcvbuf => 4096,
		wait => 1);
	from_child($imp);

	my ($w) = $t->worker_pids();

	reload_during('reload, waiting', $imp, sub {
		sleep 0.5;
		ok(kill(0, $w) && !is_zombie($w), 'reload, waiting: the old '
			. 'worker waits for the import\'s client');
		tell_child($imp, 'read');
	}, sub {
		counts_ok($_[0], 'reload, waiting', created => $N, rows => $N);
	});

	like($t->read_file('error.log') // '', qr/gracefully shutting down/,
		'reload: the workers shut down gracefully');
}

sub is_zombie {
	my ($pid) = @_;
	my $stat = $t->read_file("/proc/$pid/stat") // '';
	return $stat =~ /^\d+ \(.*\) Z/ ? 1 : 0;
}

###############################################################################

$t->done_testing();

###############################################################################
