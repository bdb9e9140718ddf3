#!/usr/bin/perl

# (C) civchat developers

# Tests for civchat_store http:// with a store that hangs: a loopback
# server that accepts, reads the batches and never answers.  The
# endpoints answer as fast as ever while the batches wait for the
# store's timeout (1s), then the batches go to the spool, and reloading
# nginx with a store that answers (ClickHouse) delivers them all, once.
# A burst of small batches while the first one waits for the hanging
# store does not make the endpoints answer 503 later on.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;
use Civchat::ClickHouse;

use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();
Civchat::ClickHouse::need();

my $ch = Civchat::ClickHouse->new();
$ch->start()->load_schema();

my $d = $t->testdir();

# the hanging store: every connection is logged, read and never answered

my $hole = IO::Socket::INET->new(Proto => 'tcp', LocalAddr => '127.0.0.1',
	LocalPort => 0, Listen => 128, ReuseAddr => 1) or die "listen: $!\n";
my $hole_port = $hole->sockport();

my $parent = $$;
my $hole_pid = fork();
die "fork: $!\n" unless defined $hole_pid;

if ($hole_pid == 0) {
	my $sel = IO::Select->new($hole);
	while (getppid() == $parent) {
		for my $s ($sel->can_read(1)) {
			if ($s == $hole) {
				my $c = $hole->accept() or next;
				$sel->add($c);
				open(my $fh, '>>', "$d/hole.log");
				print $fh "connection\n";
				close $fh;
				next;
			}
			my $n = sysread($s, my $buf, 65536);
			if (!$n) {
				$sel->remove($s);
				close $s;
			}
		}
	}
	POSIX::_exit(0);
}

close $hole;

my $slow_url = "http://127.0.0.1:$hole_port/?query=INSERT%20INTO%20"
	. "civchat.events%20FORMAT%20JSONEachRow";

my $conf = <<'EOF';

%%TEST_GLOBALS%%
worker_processes 2;

events {
    worker_connections  1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  8m;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  SLOW;
            civchat_store    STORE_URL batch=10 flush=100ms
                             timeout=1s retry=500ms
                             spool=%%TESTDIR%%/spool;
        }

        location /burst/ {
            civchat          zone=users;
            civchat_api_key  BURST;
            civchat_store    HOLE_URL batch=1 timeout=2s retry=500ms
                             spool=%%TESTDIR%%/spool_burst;
        }
    }
}

EOF

sub conf {
	my ($url) = @_;
	(my $c = $conf) =~ s/STORE_URL/$url/;
	$c =~ s/HOLE_URL/$slow_url/;
	return $c;
}

$t->config(conf($slow_url))->run();

sub spool {
	opendir(my $dh, "$d/spool") or return (-1, -1);
	my @f = grep { /^\d/ } readdir $dh;
	closedir $dh;
	my $lines = 0;
	for my $f (@f) {
		open(my $fh, '<', "$d/spool/$f") or next;
		$lines++ while <$fh>;
		close $fh;
	}
	return (scalar @f, $lines);
}

###############################################################################

# 2.5 seconds of requests while the store hangs: none waits on it.  A
# request held up by the store would take its whole timeout (1s); they
# take a few milliseconds, under 200ms even on a busy machine (the 95th
# percentile is checked, so that a scheduling hiccup of a loaded test
# machine is not taken for the store)

my $t0 = time();

my $load = Civchat::ClickHouse::Load->start($t, clients => 2, visitors => 2,
	api_key => 'SLOW', mix => 'full', pause => 0.02, slow => 0.2);

sleep 0.3;
my ($files) = spool();
is($files, 0, 'nothing spooled before the timeout');

sleep 2.2;
$load->stop();
my $res = $load->wait();
my $want = scalar @{$res->{expected}};

is($res->{failed}, 0, 'clients finished');
is($res->{status}{200}, $res->{requests},
	"all $res->{requests} requests answered 200");
# (not under valgrind, which makes every request slower by itself)
SKIP: {
	skip 'answer times under valgrind', 2 if $ENV{TEST_NGINX_VALGRIND};
	my $p95 = Civchat::ClickHouse::Load::percentile($res, 95);
	cmp_ok($p95, '<', 0.2, sprintf('answered within 200ms (95%%: %.3fs, '
		. 'median %.3fs)', $p95,
		Civchat::ClickHouse::Load::percentile($res, 50)));
	cmp_ok($res->{max_time}, '<', 0.9, sprintf('none waited for the store '
		. '(slowest %.3fs, %d over 200ms)', $res->{max_time}, $res->{slow}));
}

my $conns = () = ($t->read_file('hole.log') // '') =~ /connection/g;
cmp_ok($conns, '>', 0, "the store was connected to ($conns connections)");

# after the timeout everything held goes to the spool

my $lines;
my $deadline = time() + 5;
while (time() < $deadline) {
	($files, $lines) = spool();
	last if $lines == $want;
	sleep 0.1;
}

cmp_ok($files, '>', 0, "spooled after the timeout: $files batches");
is($lines, $want, "all $want events in the spool");

like($t->read_file('error.log'),
	qr/\[error\].*civchat_store "\Q$slow_url\E": timed out/,
	'the timeout is logged');

# a store that answers: everything arrives, once

ok($t->reload(conf($ch->store_url())), 'reload with ClickHouse');

is($ch->wait_value("SELECT count() FROM civchat.events FINAL", $want, 15),
	$want, "all $want events arrived");
is($ch->value("SELECT uniqExact(id) FROM civchat.events"), $want,
	'none twice');

my @diff = $ch->compare($res->{expected});
ok(!@diff, 'every event once, fields intact')
	or diag(join("\n", @diff[0 .. ($#diff > 30 ? 30 : $#diff)]));

$deadline = time() + 5;
sleep 0.1 while (spool())[0] != 0 && time() < $deadline;
is((spool())[0], 0, 'the spool is empty');

###############################################################################

# a burst while the first batch waits for the hanging store: many small
# batches pile up before the store is known to fail; once it is, the
# spool (1g by default) has room for all, so requests keep getting 200

my $c = $t->client(base => '/burst/', api_key => 'BURST');
my %status;

$t0 = time();
for (1 .. 300) {
	$status{$c->page_hit({})->status}++;
}
my $burst = time() - $t0;

is_deeply(\%status, { 200 => 300 }, sprintf('burst: 300 accepted in %.2fs',
	$burst));

sleep(2.5 - $burst) if $burst < 2.5;
%status = ();
for (1 .. 20) {
	$status{$c->page_hit({})->status}++;
	sleep 0.05;
}

is_deeply(\%status, { 200 => 20 }, 'burst: after the timeout, still 200 '
	. '(the spool has room)');

###############################################################################

$t->stop();
$ch->stop();

kill('TERM', $hole_pid);
waitpid($hole_pid, 0);

$t->done_testing();

###############################################################################
