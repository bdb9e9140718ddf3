#!/usr/bin/perl

# (C) civchat developers

# Tests for the Redis Cluster client against a real cluster (three
# masters, three replicas): civchat_redis discovers the slot map from one
# seed (a master, or a replica), connects to every node, covers all
# slots; the per-worker canary writes its key, reads it back through a
# script and gets its own sharded pub/sub messages; its key's slot is
# the one Redis computes (and no command is ever redirected while
# nothing moves); SCRIPT FLUSH is answered by loading the script again;
# a slot migrated by hand (SETSLOT MIGRATING/IMPORTING, MIGRATE) is
# followed through ASK, then MOVED, and a slot resharded with redis-cli
# through MOVED, the canary and its subscription working on; a reload
# starts new workers that do the same.

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

my $d = $t->testdir();
my @masters = $rc->masters();
my @replicas = $rc->replicas();

is(scalar @masters, 3, 'harness: three masters');
is(scalar @replicas, 3, 'harness: three replicas');

# the harness's own CRC16 against Redis's

for my $key ('', 'foo', '123456789', 'user:{42}:x', '{user1000}.following',
	'foo{}{bar}', 'foo{{bar}}zap', 'foo{bar}{zap}', '{b', "\xff\x00{\x01}")
{
	is($rc->keyslot($key), $rc->command($masters[0], 'CLUSTER', 'KEYSLOT',
		$key), "harness: slot of \"$key\" as CLUSTER KEYSLOT");
}

# the canary key of worker W is civchat:canary:{HOST:NAME:W}: a name for
# which worker 1's slot is among the first 30 slots of its master (a
# reshard that moves that few slots moves it), and worker 0's slot on
# another master

my $host = lc hostname();
my %range_of;

for my $m (@masters) {
	$range_of{$m} = [ $rc->slots_of($m) ];
}

sub master_of {
	my ($slot) = @_;
	for my $m (keys %range_of) {
		for my $r (@{$range_of{$m}}) {
			return ($m, $r->[0]) if $slot >= $r->[0] && $slot <= $r->[1];
		}
	}
	return;
}

my ($name, $slot0, $slot1);

for my $n (1 .. 100000) {
	my $s1 = $rc->keyslot("civchat:canary:{$host:rc$n:1}");
	my $s0 = $rc->keyslot("civchat:canary:{$host:rc$n:0}");
	my ($m1, $start1) = master_of($s1);
	my ($m0) = master_of($s0);
	next unless $s1 - $start1 < 30 && $m0 != $m1;
	($name, $slot0, $slot1) = ("rc$n", $s0, $s1);
	last;
}

ok($name, "a cluster name with the canary slots wanted: $name");

my $seed = $masters[0];
my $replica_seed = $replicas[0];

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%
worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_redis  $name  127.0.0.1:$seed  ping=200ms canary=100ms
                          timeout=1s;
    civchat_redis  other  127.0.0.1:$replica_seed  ping=200ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location = /status {
            civchat_status;
        }
    }
}

EOF

my @workers = $t->worker_pids();

sub m_ { Civchat::Redis::metric(@_) }

sub healthy {
	my ($m, $cluster, $canary) = @_;
	for my $w (0, 1) {
		my %l = (cluster => $cluster, worker => $w);
		return 0 unless m_($m, 'civchat_redis_slots_covered', %l) == 16384
			&& m_($m, 'civchat_redis_nodes', %l, role => 'master',
				state => 'known') == 3
			&& m_($m, 'civchat_redis_nodes', %l, role => 'master',
				state => 'connected') == 3
			&& m_($m, 'civchat_redis_nodes', %l, role => 'replica',
				state => 'known') == 3
			&& m_($m, 'civchat_redis_nodes', %l, role => 'replica',
				state => 'connected') == 3;
		return 0 if $canary
			&& !m_($m, 'civchat_redis_canary_ok', %l);
	}
	return 1;
}

my $m = Civchat::Redis::wait_metrics($t, '/status',
	sub { healthy($_[0], $name, 1) && healthy($_[0], 'other', 0) }, 15);

ok(healthy($m, $name, 1), 'from a master seed: every slot, 3 masters and '
	. '3 replicas known and connected in both workers, canary ok')
	or diag(join("\n", map { "$_ $m->{$_}" } grep { /$name/ } sort keys %$m));
ok(healthy($m, 'other', 0), 'from a replica seed: the same');

my ($all, $bad) = Civchat::Redis::metrics($t, '/status');
is(scalar @$bad, 0, 'status: Prometheus text format')
	or diag(join("\n", @$bad));

for my $w (0, 1) {
	my ($c) = Civchat::Redis::series($m, 'civchat_redis_canary_ok',
		cluster => $name, worker => $w);
	my $key = "civchat:canary:{$host:$name:$w}";
	is($c && $c->{key}, $key, "worker $w: its canary key");
	is($c && $c->{slot}, $rc->keyslot($key),
		"worker $w: the key's slot, computed by the module, is Redis's");
	is($c && $c->{slot}, $rc->command($seed, 'CLUSTER', 'KEYSLOT', $key),
		"worker $w: ... and CLUSTER KEYSLOT's");
	like($rc->cli('GET', $key), qr/^(\d+):\d+$/, "worker $w: the key is "
		. 'in Redis') and ok(grep({ $rc->cli('GET', $key) =~ /^$_:/ }
		@workers), "worker $w: written by a worker");

	my $rtt = m_($m, 'civchat_redis_rtt_seconds', cluster => $name,
		worker => $w);
	ok($rtt > 0 && $rtt < 1, "worker $w: a round trip time ($rtt s)");
}

is($slot0, $rc->keyslot("civchat:canary:{$host:$name:0}"), 'slot 0');

# a second's traffic: every command went to the right node at once

sub counters {
	my $m = Civchat::Redis::metrics($t, '/status');
	return { (map { $_ => m_($m, "civchat_redis_${_}_total",
		cluster => $name) } qw/commands errors failed moved ask retries
		reconnects slot_refreshes script_loads messages/),
		ok => m_($m, 'civchat_redis_canary_total', cluster => $name,
			result => 'ok'),
		bad => m_($m, 'civchat_redis_canary_total', cluster => $name,
			result => 'failed') };
}

my $c0 = counters();
sleep 1;
my $c1 = counters();

ok($c1->{ok} - $c0->{ok} >= 10, 'canary: rounds in a second: '
	. ($c1->{ok} - $c0->{ok}));
is($c1->{bad}, 0, 'canary: no round failed');
ok($c1->{commands} > $c0->{commands}, 'commands are counted');
is($c1->{moved} + $c1->{ask}, 0, 'no redirection: the slots are right');
is($c1->{errors} + $c1->{failed}, 0, 'no error, no failed command');
is($c1->{reconnects}, 0, 'no reconnect');
ok($c1->{script_loads} >= 1, 'the script was loaded (NOSCRIPT, then EVAL)');
# two messages a round (SPUBLISH, PUBLISH): a ratio under 1.5 is a
# subscription lost
ok($c1->{messages} - $c0->{messages} >= ($c1->{ok} - $c0->{ok}) * 1.5,
	'pub/sub: the canary hears what it publishes, sharded or not ('
	. ($c1->{messages} - $c0->{messages}) . ' messages, '
	. ($c1->{ok} - $c0->{ok}) . ' rounds)');

# SCRIPT FLUSH: NOSCRIPT is answered by loading the script again

$rc->flush_scripts();

$m = Civchat::Redis::wait_metrics($t, '/status', sub {
	m_($_[0], 'civchat_redis_script_loads_total', cluster => $name)
		> $c1->{script_loads} });
sleep 0.5;
my $c2 = counters();

ok($c2->{script_loads} > $c1->{script_loads}, 'SCRIPT FLUSH: loaded again');
ok($c2->{ok} > $c1->{ok} && $c2->{bad} == 0,
	'SCRIPT FLUSH: the canary goes on');

###############################################################################

# a slot migrated by hand: worker 0's canary slot from its master to
# another; the canary follows ASK while the slot migrates, then MOVED

my $src = $rc->owner($slot0);
my ($dst) = grep { $_ != $src } @masters;
my ($third) = grep { $_ != $src && $_ != $dst } @masters;
my ($src_id, $dst_id) = ($rc->node_id($src), $rc->node_id($dst));
my $key0 = "civchat:canary:{$host:$name:0}";

is($rc->command($dst, 'CLUSTER', 'SETSLOT', $slot0, 'IMPORTING', $src_id),
	'OK', 'SETSLOT IMPORTING');
is($rc->command($src, 'CLUSTER', 'SETSLOT', $slot0, 'MIGRATING', $dst_id),
	'OK', 'SETSLOT MIGRATING');
my $mig = $rc->command($src, 'MIGRATE', '127.0.0.1', $dst, '', 0, 5000,
	'KEYS', $key0);
ok(!ref $mig && ($mig eq 'OK' || $mig eq 'NOKEY'), "MIGRATE: $mig");

sleep 1;
my $c3 = counters();

ok($c3->{ask} > $c2->{ask}, 'migrating: ASK redirections: '
	. ($c3->{ask} - $c2->{ask}));
ok($c3->{ok} - $c2->{ok} >= 8, 'migrating: the canary goes on: '
	. ($c3->{ok} - $c2->{ok}) . ' rounds');
is($c3->{bad}, 0, 'migrating: no canary round failed');
is($c3->{moved}, $c2->{moved}, 'migrating: no MOVED yet');
like($rc->cli('GET', $key0), qr/^\d+:\d+$/,
	'migrating: the key, on its new node');

for my $p ($dst, $src, $third) {
	$rc->command($p, 'CLUSTER', 'SETSLOT', $slot0, 'NODE', $dst_id);
}

$m = Civchat::Redis::wait_metrics($t, '/status', sub {
	m_($_[0], 'civchat_redis_moved_total', cluster => $name)
		> $c3->{moved} });
sleep 1;
my $c4 = counters();

ok($c4->{moved} > $c3->{moved}, 'migrated: MOVED: '
	. ($c4->{moved} - $c3->{moved}));
ok($c4->{slot_refreshes} > $c3->{slot_refreshes},
	'migrated: the slot map was read again');
is($rc->owner($slot0), $dst, 'migrated: the slot is on its new master');

my $c5 = counters();
sleep 1;
my $c6 = counters();

is($c6->{moved}, $c5->{moved}, 'migrated: no MOVED once the map is read');
is($c6->{ask}, $c5->{ask}, 'migrated: no ASK either');
ok($c6->{ok} - $c5->{ok} >= 10 && $c6->{bad} == 0,
	'migrated: the canary goes on');
ok($c6->{messages} - $c5->{messages} >= ($c6->{ok} - $c5->{ok}) * 1.5,
	'migrated: worker 0 subscribed again where its channel went ('
	. ($c6->{messages} - $c5->{messages}) . ' messages, '
	. ($c6->{ok} - $c5->{ok}) . ' rounds)');

###############################################################################

# redis-cli --cluster reshard moves worker 1's canary slot (and the few
# before it) to another master

my $src1 = $rc->owner($slot1);
my ($dst1) = grep { $_ != $src1 } @masters;

# redis-cli takes a source's slots lowest first
my $n1 = 0;
for my $r ($rc->slots_of($src1)) {
	$n1 += ($slot1 < $r->[1] ? $slot1 : $r->[1]) - $r->[0] + 1
		if $r->[0] <= $slot1;
}

my $t0 = time();
my $out = $rc->cluster_tool('reshard', '--cluster-from', $rc->node_id($src1),
	'--cluster-to', $rc->node_id($dst1), '--cluster-slots', $n1,
	'--cluster-yes');
$rc->wait_ok();

is($rc->owner($slot1), $dst1, "reshard: $n1 slots moved in "
	. sprintf('%.1f', time() - $t0) . ' s, worker 1\'s among them')
	or diag($out);

$m = Civchat::Redis::wait_metrics($t, '/status', sub {
	m_($_[0], 'civchat_redis_moved_total', cluster => $name)
		> $c6->{moved} });
sleep 1;
my $c7 = counters();
sleep 1;
my $c8 = counters();

ok($c7->{moved} > $c6->{moved}, 'resharded: MOVED: '
	. ($c7->{moved} - $c6->{moved}));
is($c8->{moved}, $c7->{moved}, 'resharded: no MOVED once the map is read');
ok($c8->{ok} - $c7->{ok} >= 10, 'resharded: the canary goes on');
ok($c8->{messages} - $c7->{messages} >= ($c8->{ok} - $c7->{ok}) * 1.5,
	'resharded: the subscriptions followed');
is($c8->{failed}, 0, 'resharded: no command ever failed');

###############################################################################

# a reload: new workers, their own connections and map; counters go on

ok($t->reload(), 'reload');

$m = Civchat::Redis::wait_metrics($t, '/status',
	sub { healthy($_[0], $name, 1) }, 15);
ok(healthy($m, $name, 1), 'reload: the new workers are connected, canary ok');
ok(m_($m, 'civchat_redis_commands_total', cluster => $name)
	>= $c8->{commands}, 'reload: the counters went on');

my @alive = $t->worker_pids();
is(scalar @alive, 2, 'reload: two workers');

###############################################################################

$t->done_testing();

###############################################################################
