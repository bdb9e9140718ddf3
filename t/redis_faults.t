#!/usr/bin/perl

# (C) civchat developers

# Tests for the Redis Cluster client when the cluster fails: a master
# killed (SIGKILL) and its replica promoted, the client following (slot
# map read again, every slot covered by the new master, the canary
# working again, the old master known again once it is back as a
# replica); all of Redis down for a few seconds (the canary fails, nginx
# answers as fast as ever, nothing blocks), then back with its data
# (reconnects, the canary and its subscriptions work again); one node
# restarted; a master frozen (SIGSTOP) for less than the cluster's node
# timeout: the commands sent to it time out and its connection is made
# again.  No worker crashes, error.log has no [alert] or [crit].

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;
use Civchat::Redis;

use Sys::Hostname qw/hostname/;
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();
Civchat::Redis::need();

my $rc = Civchat::Redis->new(dir => $t->testdir());
$rc->start();

my @masters = $rc->masters();
my $seeds = $rc->seeds(3);

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%
worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_redis  c1  $seeds  ping=200ms canary=100ms timeout=500ms
                       retry=500ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location = /status {
            civchat_status;
        }

        location = /hello {
            return 200 "hello\\n";
        }
    }
}

EOF

my @workers = $t->worker_pids();

sub m_ { Civchat::Redis::metric(@_) }

sub healthy {
	my ($m, $replicas) = @_;
	for my $w (0, 1) {
		my %l = (cluster => 'c1', worker => $w);
		return 0 unless m_($m, 'civchat_redis_slots_covered', %l) == 16384
			&& m_($m, 'civchat_redis_nodes', %l, role => 'master',
				state => 'connected') == 3
			&& m_($m, 'civchat_redis_nodes', %l, role => 'master',
				state => 'known') == 3
			&& m_($m, 'civchat_redis_canary_ok', %l) == 1;
		return 0 if defined $replicas
			&& m_($m, 'civchat_redis_nodes', %l, role => 'replica',
				state => 'connected') != $replicas;
	}
	return 1;
}

sub counters {
	my $m = Civchat::Redis::metrics($t, '/status');
	return { (map { $_ => m_($m, "civchat_redis_${_}_total",
		cluster => 'c1') } qw/commands errors failed moved ask retries
		reconnects slot_refreshes script_loads messages/),
		ok => m_($m, 'civchat_redis_canary_total', cluster => 'c1',
			result => 'ok'),
		bad => m_($m, 'civchat_redis_canary_total', cluster => 'c1',
			result => 'failed') };
}

sub wait_healthy {
	my ($what, $replicas, $timeout) = @_;
	my $m = Civchat::Redis::wait_metrics($t, '/status',
		sub { healthy($_[0], $replicas) }, $timeout // 15);
	ok(healthy($m, $replicas), $what) or diag(join("\n",
		map { "$_ $m->{$_}" } grep { /nodes|slots|canary_ok/ } sort keys %$m));
}

wait_healthy('started: all slots, 3 masters and 3 replicas connected, '
	. 'canary ok', 3);

###############################################################################

# a master killed: its replica takes over, the client follows

my $host = lc hostname();
my $slot0 = $rc->keyslot("civchat:canary:{$host:c1:0}");
my $victim = $rc->owner($slot0);

my $c0 = counters();
my $t0 = time();
my $promoted = $rc->kill_master($victim);

ok($promoted, sprintf('master %d killed, replica %d took over in %.1f s',
	$victim, $promoted, time() - $t0));

wait_healthy('after the failover: all slots on three masters, canary ok '
	. 'in both workers');

my $c1 = counters();
ok($c1->{slot_refreshes} > $c0->{slot_refreshes},
	'failover: the slot map was read again');
is($rc->owner($slot0), $promoted, 'failover: the canary slot is on the '
	. 'promoted replica');

sleep 1;
my $c2 = counters();

ok($c2->{ok} - $c1->{ok} >= 10 && $c2->{bad} == $c1->{bad},
	'failover: the canary works on, ' . ($c2->{ok} - $c1->{ok})
	. ' rounds in a second, none failed');
ok($c2->{messages} - $c1->{messages} >= ($c2->{ok} - $c1->{ok}) * 1.5,
	'failover: subscribed again on the promoted replica ('
	. ($c2->{messages} - $c1->{messages}) . ' messages, '
	. ($c2->{ok} - $c1->{ok}) . ' rounds)');
ok($c2->{script_loads} > $c0->{script_loads},
	'failover: the script loaded on the promoted replica');
is_deeply([ $t->worker_pids() ], \@workers, 'failover: no worker crashed');

# the old master back, as a replica: known and connected again (the map
# is read every 10 s while nothing fails)

$rc->start_node($victim);
$rc->wait_ok();

wait_healthy('the old master is back as a replica: 3 replicas connected',
	3, 20);

###############################################################################

# a master that answers nothing for a while (SIGSTOP, shorter than the
# cluster's node timeout): what was sent to it times out, the connection
# is closed, then made again

my $frozen = $rc->owner($slot0);
my $cf = counters();

$rc->pause_node($frozen, 0.8);

wait_healthy('a master frozen for 0.8 s: healthy again', 3);

my $cg = counters();
ok($cg->{failed} > $cf->{failed}, 'frozen: commands timed out ('
	. ($cg->{failed} - $cf->{failed}) . ')');
ok($cg->{reconnects} > $cf->{reconnects}, 'frozen: reconnected');
like($t->read_file('error.log'), qr/127\.0\.0\.1:$frozen: timed out waiting /,
	'frozen: the timeout is logged');

###############################################################################

# all of Redis down for a few seconds, then back with its data

my $key = "civchat:canary:{$host:c1:1}";
my $before = $rc->cli('GET', $key);
is($rc->cli('SET', 'kept:{x}', 'across the outage'), 'OK', 'a key set');

$rc->stop_all();

my $c3 = counters();
my ($slowest, $failed_seen) = (0, 0);

for (1 .. 20) {
	my $t1 = time();
	my $r = $t->get('/hello');
	my $dt = time() - $t1;
	$slowest = $dt if $dt > $slowest;
	is($r->status, 200, 'Redis down: nginx answers') if $_ == 1;
	sleep 0.15;
}

ok($slowest < 0.5, sprintf('Redis down: the slowest answer took %.3f s',
	$slowest));

my $m = Civchat::Redis::metrics($t, '/status');
my $c4 = counters();

ok($c4->{bad} > $c3->{bad}, 'Redis down: canary rounds fail ('
	. ($c4->{bad} - $c3->{bad}) . ')');
is(m_($m, 'civchat_redis_nodes', cluster => 'c1', state => 'connected'), 0,
	'Redis down: no node connected');
ok($c4->{failed} > $c3->{failed}, 'Redis down: commands failed ('
	. ($c4->{failed} - $c3->{failed}) . ')');

$rc->start_all();

wait_healthy('Redis back: all slots, masters and replicas connected, '
	. 'canary ok', 3, 20);

my $c5 = counters();
ok($c5->{reconnects} > $c4->{reconnects}, 'Redis back: reconnected ('
	. ($c5->{reconnects} - $c4->{reconnects}) . ')');

is($rc->cli('GET', 'kept:{x}'), 'across the outage',
	'Redis back: with its data');

my $after = $rc->cli('GET', $key);
like($after, qr/^\d+:\d+$/, "Redis back: the canary key ($before, now "
	. "$after)");

sleep 1;
my $c6 = counters();

ok($c6->{ok} - $c5->{ok} >= 10 && $c6->{bad} == $c5->{bad},
	'Redis back: the canary works on');
ok($c6->{messages} - $c5->{messages} >= ($c6->{ok} - $c5->{ok}) * 1.5,
	'Redis back: subscribed again');
is_deeply([ $t->worker_pids() ], \@workers, 'Redis back: no worker crashed');

###############################################################################

# one replica restarted: reconnected

my ($replica) = $rc->replicas();
$rc->restart_node($replica);

$m = Civchat::Redis::wait_metrics($t, '/status', sub {
	m_($_[0], 'civchat_redis_reconnects_total', cluster => 'c1')
		> $c6->{reconnects} && healthy($_[0], 3) }, 15);

ok(m_($m, 'civchat_redis_reconnects_total', cluster => 'c1')
	> $c6->{reconnects} && healthy($m, 3),
	'a replica restarted: reconnected, all healthy');

my $log = $t->read_file('error.log');
like($log, qr/civchat_redis "c1": 127\.0\.0\.1:\d+: /,
	'error.log: the lost connections');
like($log, qr/civchat_redis "c1": 127\.0\.0\.1:\d+ answers again/,
	'error.log: the node that answers again');

###############################################################################

$t->done_testing();

###############################################################################
