#!/usr/bin/perl

# (C) civchat developers

# Tests for civchat_store http:// when the store answers errors or is
# unreachable for good: ClickHouse refusing the inserts (a table that
# does not exist) gets the batches spooled, not dropped, and its message
# in error.log; reloading nginx with the right URL delivers them all.  A
# full spool answers 503 store_unavailable with Retry-After (on_full=
# reject), or 200 and drops (on_full=drop); the events accepted before
# the spool filled are not lost either.  A batch a crashed worker left
# half-written (.tmp) never counts against spool_size, and its whole
# lines are kept once that worker is gone; a live worker's is left alone.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;
use Civchat::ClickHouse;

use POSIX ();
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();
Civchat::ClickHouse::need();

my $ch = Civchat::ClickHouse->new();
$ch->start()->load_schema();

my $good = $ch->store_url();
my $bad = $ch->store_url('civchat.nosuch');
# closed ports, to tell the locations apart in error.log
my ($closed, $closed2, $closed3) = Civchat::ClickHouse::free_ports(3);
my $down = "http://127.0.0.1:$closed/?query=INSERT%20INTO%20civchat.events"
	. "%20FORMAT%20JSONEachRow";
my $down2 = "http://127.0.0.1:$closed2/?query=INSERT%20INTO%20civchat.events"
	. "%20FORMAT%20JSONEachRow";
my $down3 = "http://127.0.0.1:$closed3/?query=INSERT%20INTO%20civchat.events"
	. "%20FORMAT%20JSONEachRow";

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

        location /bad/ {
            civchat          zone=users;
            civchat_api_key  BAD;
            civchat_store    BAD_URL batch=20 flush=200ms retry=500ms
                             spool=%%TESTDIR%%/spool_bad;
        }

        location /full/ {
            civchat          zone=users;
            civchat_api_key  FULL;
            civchat_store    FULL_URL batch=1 flush=100ms retry=500ms
                             spool=%%TESTDIR%%/spool_full spool_size=4k
                             on_full=reject;
        }

        location /drop/ {
            civchat          zone=users;
            civchat_api_key  DROP;
            civchat_store    DOWN_URL batch=1 flush=100ms retry=500ms
                             spool=%%TESTDIR%%/spool_drop spool_size=4k
                             on_full=drop;
        }

        location /crash/ {
            civchat          zone=users;
            civchat_api_key  CRASH;
            civchat_store    CRASH_URL batch=1 flush=100ms retry=500ms
                             spool=%%TESTDIR%%/spool_crash spool_size=16k
                             on_full=reject;
        }
    }
}

EOF

sub conf {
	my (%url) = @_;
	my $c = $conf;
	$url{CRASH_URL} //= $down3;
	$c =~ s/(BAD_URL|FULL_URL|DOWN_URL|CRASH_URL)/$url{$1}/g;
	return $c;
}

my $d = $t->testdir();

# what workers left in a spool: a batch whose worker died while writing
# it (two whole lines, then the start of a third), one that died before
# a whole line, and a batch that a live process is still writing (78k,
# five times spool_size, so that the spool is full if it counts)

my $dead = fork() // die "fork: $!\n";
POSIX::_exit(0) if $dead == 0;
waitpid($dead, 0);

my $live = fork() // die "fork: $!\n";
if ($live == 0) {
	sleep 1 while 1;
}

my $ev_line = '{"id":"%032d","site":"CRASH","type":"page_view"}' . "\n";

mkdir("$d/spool_crash") or die "spool_crash: $!\n";
my %crash = (
	half => "1700000000000-$dead-000000.ndjson",
	nothing => "1700000000001-$dead-000001.ndjson",
	busy => "1700000000002-$live-000000.ndjson",
);
$t->write_file("spool_crash/$crash{half}.tmp",
	sprintf($ev_line, 1) . sprintf($ev_line, 2) . '{"id":"0000');
$t->write_file("spool_crash/$crash{nothing}.tmp", '{"id":"0000');
$t->write_file("spool_crash/$crash{busy}.tmp",
	join('', map { sprintf($ev_line, $_) } 1 .. 1200));

$t->config(conf(BAD_URL => $bad, FULL_URL => $down, DOWN_URL => $down2))
	->run();

# spooled batches and the events in them (files being sent included)

sub spool {
	my ($dir) = @_;
	opendir(my $dh, "$d/$dir") or return (-1, -1);
	my @f = grep { /^\d/ } readdir $dh;
	closedir $dh;
	my $lines = 0;
	for my $f (@f) {
		open(my $fh, '<', "$d/$dir/$f") or next;
		$lines++ while <$fh>;
		close $fh;
	}
	return (scalar @f, $lines);
}

sub count {
	my ($site) = @_;
	return $ch->value("SELECT count() FROM civchat.events FINAL "
		. "WHERE site = '$site'") // -1;
}

sub show {
	my ($list) = @_;
	return join("\n", @$list[0 .. ($#$list > 30 ? 30 : $#$list)]);
}

###############################################################################

# ClickHouse answers 404 "Table civchat.nosuch doesn't exist"

my $load = Civchat::ClickHouse::Load->start($t, clients => 2, requests => 60,
	visitors => 2, base => '/bad/', api_key => 'BAD', mix => 'full');
my $res = $load->wait();
my $want = scalar @{$res->{expected}};

is($res->{status}{200}, 120, 'bad table: 120 requests accepted');

# every event in the spool (a batch being retried is renamed while it
# is sent, so look until all are seen at once)

my ($files, $lines);
my $deadline = time() + 5;
while (time() < $deadline) {
	($files, $lines) = spool('spool_bad');
	last if $lines == $want;
	sleep 0.1;
}

cmp_ok($files, '>', 0, "bad table: $files batches spooled");
is($lines, $want, "bad table: all $want events in the spool");
is(count('BAD'), 0, 'bad table: nothing in ClickHouse');

my $log = $t->read_file('error.log');
like($log, qr/\[error\].*civchat_store "\Q$bad\E" answered 404: "[^"]*Table civchat\.nosuch doesn't exist/,
	"bad table: error.log names the store and ClickHouse's message");

# the message as ClickHouse wrote it, not its chunked framing
my ($line) = grep { /civchat_store "\Q$bad\E" answered/ } split /\n/, $log;
like($line, qr/answered 404: "Code: 60, /,
	"bad table: the message without the chunk sizes");

my @err = grep { /\[error\].*civchat_store/ } split /\n/, $log;
cmp_ok(scalar @err, '<=', 4, 'bad table: logged once per failure run, '
	. 'not once a batch (' . scalar(@err) . ' lines)');

# still failing a second later: kept, not dropped after some retries

sleep 1.5;
for (1 .. 10) {
	($files, $lines) = spool('spool_bad');
	last if $lines == $want;
	sleep 0.1;
}
is($lines, $want, 'bad table: still all spooled after retries');

# the right URL, same spool: everything arrives, once

ok($t->reload(conf(BAD_URL => $good, FULL_URL => $down,
	DOWN_URL => $down2)), 'reload with the right table');

is($ch->wait_value("SELECT count() FROM civchat.events FINAL "
	. "WHERE site = 'BAD'", $want, 15), $want,
	"bad table fixed: all $want events arrived");
is($ch->value("SELECT count() FROM civchat.events WHERE site = 'BAD'"),
	$want, 'bad table fixed: none twice');

my @diff = $ch->compare($res->{expected}, site => 'BAD');
ok(!@diff, 'bad table fixed: every event once, fields intact')
	or diag(show(\@diff));

$deadline = time() + 5;
sleep 0.1 while (spool('spool_bad'))[0] != 0 && time() < $deadline;
is((spool('spool_bad'))[0], 0, 'bad table fixed: the spool is empty');

###############################################################################

# a full spool, on_full=reject: 503 store_unavailable with Retry-After,
# and nothing crashes

my $c = $t->client(base => '/full/', api_key => 'FULL');
my (%status, $first503, $accepted);

for my $i (1 .. 600) {
	my $r = $c->page_hit({ title => 'x' x 200 });
	$status{$r->status}++;
	$accepted++ if $r->status == 200;
	if ($r->status == 503) {
		$first503 //= $r;
		last if $status{503} >= 20;
	}
	sleep 0.002;
}

ok($first503, 'full spool: 503 after ' . ($status{200} // 0)
	. ' accepted requests');
is(($first503 && $first503->error), 'store_unavailable',
	'full spool: store_unavailable');
like(($first503 && $first503->header('Retry-After')), qr/^\d+$/,
	'full spool: Retry-After');
like(($first503 && $first503->json->{detail}), qr/\w/,
	'full spool: a detail sentence');
cmp_ok((spool('spool_full'))[1], '>', 0, 'full spool: the spool was used');

# ...and when the store answers, what was accepted arrives (the 503s
# were not accepted)

my $kept = $accepted // 0;

ok($t->reload(conf(BAD_URL => $good, FULL_URL => $good,
	DOWN_URL => $down2)), 'reload with a store that answers');

my $n = $ch->wait_value("SELECT count() FROM civchat.events FINAL "
	. "WHERE site = 'FULL' AND type = 'page_view'", $kept, 8);
is($n, $kept, "full spool: the $kept accepted page views arrived");

like($t->read_file('error.log'), qr/\[error\].*civchat_store "\Q$down\E"/,
	'full spool: the refusing store is logged');
my @lost = grep { /civchat_store "\Q$down\E": \d+ events could not be/ }
	split /\n/, $t->read_file('error.log');
ok(!@lost, 'full spool: no accepted event lost at the reload')
	or diag(join("\n", @lost));

###############################################################################

# on_full=drop: 200 while the events are dropped, nothing crashes

my @pids = $t->worker_pids();

$c = $t->client(base => '/drop/', api_key => 'DROP');
%status = ();

for my $i (1 .. 300) {
	my $r = $c->page_hit({ title => 'x' x 200 });
	$status{$r->status}++;
	sleep 0.002;
}

is_deeply(\%status, { 200 => 300 }, 'drop: all 300 answered 200');
is_deeply([$t->worker_pids()], \@pids, 'drop: the same workers');
cmp_ok((spool('spool_drop'))[1], '>', 0, 'drop: the spool was used');
cmp_ok((spool('spool_drop'))[1], '<', 300, 'drop: some were dropped');

###############################################################################

# a crash's leftovers: cleaned up at start, the live writer's left alone
# and never counted against spool_size

# the batch (or the name a worker gives it while it tries to send it)
sub crash_batch {
	my ($name) = @_;
	opendir(my $dh, "$d/spool_crash") or return;
	my ($f) = grep { /^\Q$name\E(\.\d+\.sending)?$/ } readdir $dh;
	closedir $dh;
	return $f && $t->read_file("spool_crash/$f");
}

ok(!-e "$d/spool_crash/$crash{half}.tmp", 'crash: the unfinished batch '
	. 'is gone');
is(crash_batch($crash{half}), sprintf($ev_line, 1) . sprintf($ev_line, 2),
	'crash: its whole lines are a batch of the spool, the cut one is not');
ok(!-e "$d/spool_crash/$crash{nothing}.tmp",
	'crash: a batch without a whole line is removed');
ok(-e "$d/spool_crash/$crash{busy}.tmp",
	'crash: the batch a live process writes is left alone');

$c = $t->client(base => '/crash/', api_key => 'CRASH');
%status = ();
$status{$c->page_hit({ title => "crash $_" })->status}++ for 1 .. 4;
is_deeply(\%status, { 200 => 4 }, 'crash: the store is down and the '
	. 'spool takes the batches: what is being written does not fill it');

# 5 events (user_created, then 4 page views) beside the 2 kept and the
# 1200 lines being written

$deadline = time() + 5;
sleep 0.1 while (spool('spool_crash'))[1] < 1200 + 2 + 5
	&& time() < $deadline;
is((spool('spool_crash'))[1], 1200 + 2 + 5,
	'crash: the new events are spooled');

# the writer dies: its whole lines are kept too

kill('KILL', $live);
waitpid($live, 0);

$deadline = time() + 5;
sleep 0.1 while -e "$d/spool_crash/$crash{busy}.tmp" && time() < $deadline;
ok(!-e "$d/spool_crash/$crash{busy}.tmp", 'crash: once its writer is '
	. 'gone, the other is cleaned up too');
is(length(crash_batch($crash{busy}) // ''),
	1200 * length(sprintf($ev_line, 1)), 'crash: all its lines kept');

$log = $t->read_file('error.log');
like($log, qr/\[notice\].*kept the whole lines of "[^"]*\Q$crash{half}.tmp"/,
	'crash: the kept batch is logged');
like($log, qr/\[notice\].*removed "[^"]*\Q$crash{nothing}.tmp"/,
	'crash: the removed one too');

###############################################################################

$t->stop();
$ch->stop();

$t->done_testing();

###############################################################################
