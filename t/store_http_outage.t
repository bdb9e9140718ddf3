#!/usr/bin/perl

# (C) civchat developers

# Tests for civchat_store http:// when ClickHouse goes away under
# traffic: stopped (SIGTERM, then SIGKILL), started again, then killed
# (SIGKILL, inserts in flight or not) and started again on the same port
# and data directory.  The endpoints keep answering 200 at once, the
# batches go to the spool meanwhile, and after recovery every accepted
# event is in ClickHouse exactly once (FINAL), the spool empty.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;
use Civchat::ClickHouse;

use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();
Civchat::ClickHouse::need();

my $ch = Civchat::ClickHouse->new();
$ch->start()->load_schema();

my $store = $ch->store_url();

$t->config(<<"EOF")->run();

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
            civchat_api_key  OUTAGE;
            civchat_store    $store
                             batch=50 flush=200ms timeout=2s retry=500ms
                             spool=%%TESTDIR%%/spool;
        }
    }
}

EOF

my $d = $t->testdir();

# spooled batches and the events in them (files being sent included)

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

sub rows_now {
	return $ch->value("SELECT count() FROM civchat.events FINAL") // -1;
}

###############################################################################

my $load = Civchat::ClickHouse::Load->start($t, clients => 4, visitors => 3,
	api_key => 'OUTAGE', mix => 'full', pause => 0.02);

sleep 1.5;
my $before = rows_now();
cmp_ok($before, '>', 0, "events arrive ($before)");

# a clean stop: ClickHouse refuses new connections at once and keeps
# answering on the kept-alive ones while they are busy (that is, for as
# long as the traffic lasts), so it is killed after 3 seconds of that;
# the batches go to the spool

$ch->stop(3);
sleep 2;

my ($files, $lines) = spool();
cmp_ok($files, '>', 0, "stopped: $files batches spooled ($lines events)");

$ch->start();
sleep 2;

cmp_ok(rows_now(), '>', $before, 'started: the spool drains');

# killed: whatever was in flight is retried

$ch->kill();
sleep 2.5;

($files, $lines) = spool();
cmp_ok($files, '>', 0, "killed: $files batches spooled ($lines events)");

$ch->start();
sleep 1.5;

$load->stop();
my $res = $load->wait();
my $want = scalar @{$res->{expected}};

is($res->{failed}, 0, 'clients finished');
is($res->{status}{200}, $res->{requests},
	"all $res->{requests} requests answered 200 while the store was away");
cmp_ok($res->{max_time}, '<', 1.5, sprintf('none waited for the store '
	. '(slowest %.3fs, 95%%: %.3fs)', $res->{max_time},
	Civchat::ClickHouse::Load::percentile($res, 95)));

my $n = $ch->wait_value("SELECT count() FROM civchat.events FINAL", $want,
	20);
is($n, $want, "after recovery: all $want events");
is($ch->value("SELECT uniqExact(id) FROM civchat.events"), $want,
	'after recovery: none doubled');

my @diff = $ch->compare($res->{expected});
ok(!@diff, 'every accepted event once, fields intact')
	or diag(join("\n", @diff[0 .. ($#diff > 30 ? 30 : $#diff)]));

note('rows before merging: '
	. $ch->value("SELECT count() FROM civchat.events")
	. " for $want events");

my $deadline = time() + 5;
sleep 0.1 while (spool())[0] != 0 && time() < $deadline;
is((spool())[0], 0, 'the spool is empty');

like($t->read_file('error.log'), qr/\[error\].*civchat_store "\Q$store\E"/,
	'the outage is logged');
like($t->read_file('error.log'),
	qr/\[notice\].*civchat_store "\Q$store\E" answers again/,
	'and the recovery');

###############################################################################

$t->stop();
$ch->stop();

$t->done_testing();

###############################################################################
