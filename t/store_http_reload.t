#!/usr/bin/perl

# (C) civchat developers

# Tests for civchat_store http:// across "nginx -s reload" and "nginx -s
# quit" under traffic: the exiting workers send or spool what they hold,
# the next ones (or the next nginx) replay the spool, and every accepted
# event is in ClickHouse exactly once.  Then the same with ClickHouse
# down while nginx quits: everything held goes to the spool, and a new
# nginx delivers it once ClickHouse is back.

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

# a flush interval longer than the gaps between reloads: the workers
# hold events when they are told to exit

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%
worker_processes 2;

events {
    worker_connections  1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  8m  state=%%TESTDIR%%/users.state;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  RELOAD DOWN;
            civchat_store    $store
                             batch=5000 flush=2s timeout=2s retry=500ms
                             spool=%%TESTDIR%%/spool;
        }
    }
}

EOF

my $d = $t->testdir();

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

# a daemon's master is nobody's child here: it may stay a zombie

sub gone {
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/stat") or return 1;
	my $stat = <$fh> // '';
	close $fh;
	return $stat =~ /^\d+ \(.*\) Z/ ? 1 : 0;
}

sub show {
	my ($list) = @_;
	return join("\n", @$list[0 .. ($#$list > 30 ? 30 : $#$list)]);
}

sub check {
	my ($res, $what, $site, $timeout) = @_;

	my $want = scalar @{$res->{expected}};

	is($res->{failed}, 0, "$what: clients finished");
	cmp_ok($res->{status}{200} // 0, '>', 100,
		"$what: " . ($res->{status}{200} // 0) . ' requests accepted');
	is(($res->{status}{200} // 0) + ($res->{status}{0} // 0),
		$res->{requests}, "$what: 200, or refused while nginx was down");

	is($ch->wait_value("SELECT count() FROM civchat.events FINAL "
		. "WHERE site = '$site'", $want, $timeout // 15), $want,
		"$what: all $want events");
	is($ch->value("SELECT uniqExact(id) FROM civchat.events "
		. "WHERE site = '$site'"), $want, "$what: none twice");

	my @diff = $ch->compare($res->{expected}, site => $site);
	ok(!@diff, "$what: every accepted event once, fields intact")
		or diag(show(\@diff));

	my $deadline = time() + 5;
	sleep 0.1 while (spool())[0] != 0 && time() < $deadline;
	is((spool())[0], 0, "$what: the spool is empty");
}

###############################################################################

# two reloads and a quit under traffic, then nginx started again

my $load = Civchat::ClickHouse::Load->start($t, clients => 4, visitors => 3,
	api_key => 'RELOAD', mix => 'full', pause => 0.01);

sleep 1;
ok($t->reload(), 'reload under traffic');
sleep 1;
ok($t->reload(), 'reload under traffic, again');
sleep 1;

my $pid = $t->master_pid();
$t->stop();
ok(gone($pid), 'quit under traffic');

my ($files, $lines) = spool();
note("after quit: $files batches, $lines events spooled");

sleep 0.5;
$t->run();
sleep 1;

$load->stop();
check($load->wait(), 'reload and quit', 'RELOAD');

unlike($t->read_file('error.log'), qr/could not be spooled/,
	'nothing lost at exit');

###############################################################################

# ClickHouse down: nginx quits holding events, they go to the spool; a
# new nginx delivers them when ClickHouse is back

$load = Civchat::ClickHouse::Load->start($t, clients => 4, visitors => 3,
	api_key => 'DOWN', mix => 'full', pause => 0.01);

sleep 1;
$ch->kill();
sleep 1;
ok($t->reload(), 'store down: reload under traffic');
sleep 1;
$t->stop();

($files, $lines) = spool();
cmp_ok($lines, '>', 0, "store down, nginx stopped: $files batches, "
	. "$lines events spooled");

$load->stop();
my $res = $load->wait();

$ch->start();
$t->run();

check($res, 'store down across reload and quit', 'DOWN', 20);

unlike($t->read_file('error.log'), qr/could not be spooled/,
	'nothing lost at exit');

###############################################################################

$t->stop();
$ch->stop();

$t->done_testing();

###############################################################################
