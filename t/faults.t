#!/usr/bin/perl

# (C) civchat developers

# Faults: a reload every second under load loses and doubles nothing;
# a full disk under the file store and under the spool gives a clear
# error and no crash, and the store recovers when there is room again;
# slow clients do not starve others; 10,000 keep-alive connections are
# held at once.  CIVCHAT_RELOAD_SECONDS sets the reload run (default 60,
# a reload every second for a minute).

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/uniq_id json_decode/;

use IO::Select;
use IO::Socket::INET;
use POSIX qw/:sys_wait_h/;
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

plan(skip_all => 'mounting a small tmpfs needs root') if $> != 0;

my $t = Civchat->new()->need_module();
my $d = $t->testdir;

mkdir("$d/full");
mkdir("$d/spoolfs");

system("mount -t tmpfs -o size=64k,mode=0777 tmpfs $d/full") == 0
	or BAIL_OUT("cannot mount a tmpfs on $d/full");
system("mount -t tmpfs -o size=64k,mode=0777 tmpfs $d/spoolfs") == 0
	or BAIL_OUT("cannot mount a tmpfs on $d/spoolfs");

END {
	# nginx first, when the test died before done_testing(): a tmpfs
	# with its file open is busy and stays mounted
	$t->stop_fast() if defined $t;
	system("umount $d/full $d/spoolfs 2>/dev/null") if defined $d;
}

$t->config(<<'EOF')->run();

%%TEST_GLOBALS%%
worker_processes 2;
worker_rlimit_nofile 19500;

events {
    worker_connections 16384;
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  32m;
    civchat_api_key  TESTKEY;

    client_header_timeout  2s;
    client_body_timeout    2s;
    keepalive_requests     100;
    keepalive_timeout      60s;

    server {
        listen       127.0.0.1:%%PORT_0%% backlog=16384;
        server_name  localhost;

        location /civchat/ {
            civchat        zone=users;
            civchat_store  file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location /full/ {
            civchat        zone=users;
            civchat_store  file=%%TESTDIR%%/full/events.ndjson buffer=4k
                           flush=100ms;
        }

        location /spool/ {
            civchat        zone=users;
            civchat_store  http://127.0.0.1:%%PORT_1%%/ flush=100ms
                           batch=20 timeout=1s retry=200ms
                           spool=%%TESTDIR%%/spoolfs/s spool_size=1m;
        }
    }
}

EOF

my $body = '{"apiKey":"TESTKEY","url":"http://faults/"}';

sub hit {
	my ($base, %o) = @_;
	my $r = $t->post_json("${base}page_hit", $o{body} // $body,
		'User-Agent' => 'Mozilla/5.0 (X11) faults');
	return $r->status;
}

###############################################################################

# a reload every second under load: every accepted page view is written
# once

my $seconds = $ENV{CIVCHAT_RELOAD_SECONDS} // 60;
my $tag = uniq_id('reload');
my @kids;

for my $k (1 .. 2) {
	my $pid = fork() // die "fork: $!";

	if ($pid == 0) {
		my ($ok, $n) = (0, 0);
		while (!-e "$d/stop") {
			my $st = hit('/civchat/',
				body => qq({"apiKey":"TESTKEY","url":"http://$tag/$k/$n"}));
			$ok++ if $st == 200;
			$n++;
		}
		open(my $fh, '>', "$d/count.$k") or die;
		print $fh $ok;
		close $fh;

		# not exit(): the harness object would stop nginx
		POSIX::_exit(0);
	}

	push @kids, $pid;
}

# one reload on each second from the start: the time a reload takes
# (until the old workers are gone) does not push the next ones back

my $reloads = 0;
my $t0 = time();

for my $s (1 .. $seconds) {
	my $wait = $t0 + $s - time();
	sleep $wait if $wait > 0;
	$reloads++ if $t->reload();
}

my $took = time() - $t0;

open(my $stop, '>', "$d/stop") or die;
close $stop;
waitpid($_, 0) for @kids;

my $accepted = 0;
$accepted += $t->read_file("$d/count.$_") for 1 .. 2;

is($reloads, $seconds,
	sprintf('a reload every second: %d in %.1f s', $reloads, $took));
ok($accepted > 100, "$accepted page views accepted under the reloads");

# a minute writes some 200,000 events: the file is read on from where
# the last look stopped, and only this run's page views are decoded and
# kept (as their ids), not every event as read_events() would

my ($views, %ids) = (0);
open(my $ev, '<', "$d/events.ndjson") or die "events.ndjson: $!";

sub more_views {
	while (1) {
		my $at = tell($ev);
		my $line = <$ev>;
		last unless defined $line;

		if ($line !~ /\n\z/) {
			# still being written: read again next time
			seek($ev, $at, 0);
			last;
		}

		next if index($line, '"type":"page_view"') < 0
			|| index($line, "\"url\":\"http://$tag/") < 0;

		my $e = json_decode($line) or next;
		next unless $e->{type} eq 'page_view'
			&& $e->{url} =~ m{^http://\Q$tag\E/};

		$views++;
		$ids{$e->{id}} = 1;
	}

	seek($ev, 0, 1);
	return $views;
}

my $until = time() + 10;
sleep 0.1 while more_views() < $accepted && time() < $until;

# a copy written late would show now
sleep 1;
more_views();
close $ev;

is($views, $accepted, 'every accepted page view written');
is(scalar keys %ids, $views, 'none written twice');

###############################################################################

# a full disk under the file store: a clear error, answers go on, and
# events are written again once there is room

open(my $filler, '>', "$d/full/filler") or die;
print $filler 'x' x (40 * 1024);
close $filler;

my $big = '{"apiKey":"TESTKEY","url":"http://full/' . ('y' x 2000) . '"}';
my %st;
$st{hit('/full/', body => $big)}++ for 1 .. 40;

is(join(',', keys %st), '200', 'a full disk: every answer still 200');

sleep 0.5;
like($t->read_file("$d/error.log"),
	qr/\[error\].*writing events to ".*full\/events\.ndjson".*failed/,
	'a full disk: the error names the file');

unlink("$d/full/filler");

$tag = uniq_id('room');
hit('/full/', body => qq({"apiKey":"TESTKEY","url":"http://$tag/"}))
	for 1 .. 3;

is(scalar $t->read_events(file => "$d/full/events.ndjson", count => 3,
	match => { type => 'page_view', url => "http://$tag/" }), 3,
	'room again: written again');

###############################################################################

# a full disk under the spool while the store is down: no crash, a
# clear error, and everything accepted reaches the store when it is back

$tag = uniq_id('spool');
my ($ok503, $ok200) = (0, 0);

for my $i (1 .. 400) {
	my $st = hit('/spool/', body => qq({"apiKey":"TESTKEY",)
		. qq("url":"http://$tag/$i","note":") . ('z' x 300) . '"}');
	$ok200++ if $st == 200;
	$ok503++ if $st == 503;
}

ok($ok200 > 0, "spool disk full: $ok200 accepted");
ok($ok200 + $ok503 == 400, "spool disk full: 200 or 503 only ($ok503 503s)");

sleep 0.5;
like($t->read_file("$d/error.log"), qr/\[error\].*cannot spool/,
	'spool disk full: the error says so');

# the store comes back: a collector that keeps each event id once

my $collector = fork() // die "fork: $!";

if ($collector == 0) {
	my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1:'
		. $t->port(1), Listen => 64, ReuseAddr => 1) or die "listen: $!";

	open(my $out, '>>', "$d/collected") or die;
	$out->autoflush(1);

	$SIG{CHLD} = 'IGNORE';

	while (my $c = $srv->accept()) {

		# each worker keeps its connection: one process a connection
		if (fork()) {
			close $c;
			next;
		}

		while (1) {
			my $head = '';
			while ($head !~ /\r\n\r\n/) {
				my $n = $c->sysread($head, 4096, length $head);
				last unless $n;
			}
			last unless $head =~ /\r\n\r\n/;

			my ($h, $rest) = split(/\r\n\r\n/, $head, 2);
			my ($len) = $h =~ /Content-Length: (\d+)/i;
			$len //= 0;

			while (length $rest < $len) {
				my $n = $c->sysread($rest, $len - length $rest,
					length $rest);
				last unless $n;
			}

			# a batch cut short is not answered, so it is sent
			# again; kept, its last line would run into the next
			# batch's first
			last if length $rest < $len;

			# one write a batch: O_APPEND keeps two collectors'
			# batches from interleaving (print may split a long one)
			if ((syswrite($out, $rest) // -1) != length $rest) {
				# not die(): END would unmount the tmpfs
				print STDERR "# collector: writing a batch: $!\n";
				POSIX::_exit(1);
			}

			print $c "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
		}

		POSIX::_exit(0);
	}

	POSIX::_exit(0);
}

my %seen;
my $deadline = time() + 15;

while (time() < $deadline) {
	%seen = ();
	for my $line (split /\n/, $t->read_file("$d/collected") // '') {
		my $e = eval { json_decode($line) } or next;
		$seen{$e->{id}} = 1
			if $e->{type} eq 'page_view' && $e->{url} =~ m{^http://\Q$tag\E/};
	}
	last if keys %seen >= $ok200;
	sleep 0.25;
}

is(scalar keys %seen, $ok200,
	'the store is back: every accepted page view arrives');

is(hit('/spool/'), 200, 'and new events are accepted again');

kill 'TERM', $collector;
waitpid($collector, 0);

###############################################################################

# slow clients (headers trickling in) do not starve a normal one

my @slow;

for (1 .. 300) {
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $t->port(0))
		or last;
	print $s "POST /civchat/init HTTP/1.1\r\nHost: x\r\n";
	push @slow, $s;
}

is(scalar @slow, 300, '300 slow clients connected');

my $t1 = time();
is(hit('/civchat/'), 200, 'a normal client is answered');
ok(time() - $t1 < 1, 'at once');

sleep 2.5;

my $closed = grep {
	my $buf; !defined($_->sysread($buf, 1)) || length($buf) == 0
		|| $buf eq 'H';
} @slow;

is($closed, 300, 'the slow clients were timed out (client_header_timeout)');
close $_ for @slow;

###############################################################################

# 10,000 keep-alive connections at once, each answered, then used again

my $n = $ENV{CIVCHAT_CONNECTIONS} // 10000;
my (@conns, $answered, $again);

my $req = "POST /civchat/page_hit HTTP/1.1\r\nHost: x\r\n"
	. "Content-Type: application/json\r\nContent-Length: "
	. length($body) . "\r\n\r\n$body";

for (1 .. $n) {
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1:' . $t->port(0),
		Blocking => 1) or last;

	# asked at once: a new connection that sends nothing is closed
	# after client_header_timeout (2s, for the slow clients), and
	# opening them all can take longer than that
	$s->syswrite($req);
	push @conns, $s;
}

is(scalar @conns, $n, "$n connections open");

sub answers {
	my ($conns, $asked) = @_;
	my %buf;
	my $sel = IO::Select->new(@$conns);
	my $done = 0;
	my $until = time() + 60;

	$_->syswrite($req) for $asked ? () : @$conns;

	while ($sel->count && time() < $until) {
		for my $s ($sel->can_read(1)) {
			my $n = $s->sysread($buf{$s}, 4096, length($buf{$s} // ''));
			if (!$n || $buf{$s} =~ /\r\n\r\n.*\}\n/s) {
				$done++ if ($buf{$s} // '') =~ m{^HTTP/1\.1 200 };
				$sel->remove($s);
			}
		}
	}

	return $done;
}

$answered = answers(\@conns, 1);
is($answered, $n, "all $n answered 200");

my @some = @conns[0 .. ($n < 1000 ? $n : 1000) - 1];
$again = answers(\@some);
is($again, scalar @some, 'kept alive: ' . @some . ' of them answered again');

close $_ for @conns;

###############################################################################

$t->done_testing();

###############################################################################
