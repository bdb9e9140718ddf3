#!/usr/bin/perl

# (C) civchat developers

# Tests for a password-protected Redis Cluster (requirepass and
# masterauth on every node): civchat_redis with password= sends AUTH
# first on every connection, command and subscriber alike, and works
# (slot map, canary, pub/sub); a wrong password is logged (the node's
# WRONGPASS) and the canary fails without anything crashing; no password
# at all: the node's NOAUTH is logged, there is no slot map.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;
use Civchat::Redis;

use Time::HiRes qw/sleep/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();
Civchat::Redis::need();

my $PASS = 'civchat-redis-secret';

my $rc = Civchat::Redis->new(dir => $t->testdir(), password => $PASS);
$rc->start();

my $seed = $rc->seeds(1);

is(ref $rc->command(($rc->masters())[0], 'PING'), '',
	'harness: AUTH with the password');

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%
worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_redis  good   $seed  password=$PASS  ping=200ms canary=100ms;
    civchat_redis  wrong  $seed  password=not-the-password  ping=200ms
                          canary=100ms;
    civchat_redis  none   $seed  ping=200ms;

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

my $m = Civchat::Redis::wait_metrics($t, '/status', sub {
	my $m = shift;
	for my $w (0, 1) {
		my %l = (cluster => 'good', worker => $w);
		return 0 unless m_($m, 'civchat_redis_slots_covered', %l) == 16384
			&& m_($m, 'civchat_redis_nodes', %l, state => 'connected') == 6
			&& m_($m, 'civchat_redis_canary_ok', %l) == 1;
	}
	return 1;
}, 15);

for my $w (0, 1) {
	my %l = (cluster => 'good', worker => $w);
	is(m_($m, 'civchat_redis_slots_covered', %l), 16384,
		"password: worker $w has every slot");
	is(m_($m, 'civchat_redis_nodes', %l, state => 'connected'), 6,
		"password: worker $w is connected to the six nodes");
	is(m_($m, 'civchat_redis_canary_ok', %l), 1,
		"password: worker ${w}'s canary works");
}

sleep 1;
$m = Civchat::Redis::metrics($t, '/status');

ok(m_($m, 'civchat_redis_messages_total', cluster => 'good') > 0,
	'password: pub/sub messages (AUTH on the subscriber connections too)');
is(m_($m, 'civchat_redis_canary_total', cluster => 'good',
	result => 'failed'), 0, 'password: no canary round failed');

is(m_($m, 'civchat_redis_canary_total', cluster => 'wrong', result => 'ok'),
	0, 'wrong password: no canary round worked');
ok(m_($m, 'civchat_redis_canary_total', cluster => 'wrong',
	result => 'failed') > 0, 'wrong password: the canary fails');
is(m_($m, 'civchat_redis_slots_covered', cluster => 'wrong'), 0,
	'wrong password: no slot map');
is(m_($m, 'civchat_redis_slots_covered', cluster => 'none'), 0,
	'no password: no slot map');

my $log = $t->read_file('error.log');

like($log, qr/civchat_redis "wrong": AUTH on 127\.0\.0\.1:\d+: WRONGPASS/,
	'wrong password: the node\'s answer is logged');
like($log, qr/civchat_redis "none": CLUSTER SLOTS on 127\.0\.0\.1:\d+: NOAUTH/,
	'no password: the node\'s answer is logged');
unlike($log, qr/civchat_redis "good"/, 'password: nothing logged');
unlike($log, qr/\Q$PASS\E/, 'the password is never logged');

is_deeply([ $t->worker_pids() ], \@workers, 'no worker crashed');

###############################################################################

$t->done_testing();

###############################################################################
