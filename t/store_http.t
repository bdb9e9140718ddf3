#!/usr/bin/perl

# (C) civchat developers

# Tests for civchat_store http:// against a real ClickHouse (Debian's
# clickhouse-server, started on spare loopback ports with the schema of
# schema/clickhouse.sql), checked through SQL: a lone event arrives
# within the flush interval with no further traffic; thousands of events
# from concurrent clients through two workers arrive exactly once with
# every envelope field as the clients were answered; with two URLs, the
# first a closed port, everything arrives through the second.

###############################################################################

use warnings;
use strict;

use utf8;

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
my ($closed) = Civchat::ClickHouse::free_ports(1);

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
            civchat_api_key  MAIN;
            civchat_store    $store
                             batch=100 flush=200ms
                             spool=%%TESTDIR%%/spool_main;
        }

        location /lone/ {
            civchat          zone=users;
            civchat_api_key  LONE;
            civchat_store    $store
                             flush=500ms spool=%%TESTDIR%%/spool_lone;
        }

        location /failover/ {
            civchat          zone=users;
            civchat_api_key  FAILOVER;
            civchat_store    http://127.0.0.1:$closed/?query=INSERT%20INTO%20civchat.events%20FORMAT%20JSONEachRow
                             $store
                             batch=20 flush=200ms retry=1s
                             spool=%%TESTDIR%%/spool_failover;
        }
    }
}

EOF

my $d = $t->testdir();

is(scalar($t->worker_pids()), 2, 'two workers');

sub count {
	my ($site, $final) = @_;
	return $ch->value("SELECT count() FROM civchat.events "
		. ($final // 'FINAL') . " WHERE site = '$site'") // -1;
}

sub spooled {
	my ($dir) = @_;
	opendir(my $dh, "$d/$dir") or return -1;
	my @f = grep { /^\d/ } readdir $dh;
	closedir $dh;
	return scalar @f;
}

###############################################################################

# a lone event: in ClickHouse within the flush interval (500ms), with no
# further traffic

my $c = $t->client(base => '/lone/', api_key => 'LONE');
my $t0 = time();
my $r = $c->page_hit({ title => 'lone' });
is($r->status, 200, 'lone: accepted');

my $n = $ch->wait_value("SELECT count() FROM civchat.events "
	. "WHERE site = 'LONE' AND type = 'page_view'", 1, 5, 0.02);
my $dt = time() - $t0;

is($n, 1, 'lone: the page view arrived');
cmp_ok($dt, '<', 1.5, sprintf('lone: within the flush interval (%.2fs)',
	$dt));
cmp_ok($dt, '>', 0.3, 'lone: batched, not sent at once');

my @rows = $ch->rows("SELECT * FROM civchat.events WHERE site = 'LONE'");
is_deeply([sort map { $_->{type} } @rows], [qw/page_view user_created/],
	'lone: page view and new user, in one flush');
is(($rows[0]{user_key} // ''), $c->key(), 'lone: the visitor key');

###############################################################################

# exactly once: 10 concurrent clients, each with a few returning
# visitors doing page hits, custom events, product events and updates

$t0 = time();

my $load = Civchat::ClickHouse::Load->start($t, clients => 10,
	requests => 220, visitors => 4, base => '/civchat/',
	api_key => 'MAIN', mix => 'full');
my $res = $load->wait();

my $sent = time() - $t0;
my $want = scalar @{$res->{expected}};

is($res->{failed}, 0, 'clients finished');
is($res->{status}{200}, $res->{requests},
	"all $res->{requests} requests answered 200");
cmp_ok($want, '>=', 2000, "$want events expected");

$n = $ch->wait_value("SELECT count() FROM civchat.events FINAL "
	. "WHERE site = 'MAIN'", $want, 20);
my $drain = time() - $t0 - $sent;

is($n, $want, "all $want events in ClickHouse");
is(count('MAIN', ''), $want, 'no row twice, even before merging');
is($ch->value("SELECT uniqExact(id) FROM civchat.events "
	. "WHERE site = 'MAIN'"), $want, 'distinct ids');

my @diff = $ch->compare($res->{expected}, site => 'MAIN');
ok(!@diff, 'every event once, with the fields the clients were answered')
	or diag(join("\n", @diff[0 .. ($#diff > 30 ? 30 : $#diff)]));

is_deeply({ map { $_->{type} => $_->{n} } $ch->rows("SELECT type, count() "
	. "AS n FROM civchat.events FINAL WHERE site = 'MAIN' GROUP BY type") },
	{ map { my $ty = $_; $ty => scalar grep { $_->{type} eq $ty }
		@{$res->{expected}} } qw/user_created page_view event
		product_event profile_updated/ },
	'counts by type');

is(spooled('spool_main'), 0, 'nothing spooled');

note(sprintf('%d events: sent in %.2fs, drained %.2fs later', $want, $sent,
	$drain));

###############################################################################

# failover: the first server refuses, everything goes to the second

$load = Civchat::ClickHouse::Load->start($t, clients => 2, requests => 100,
	visitors => 2, base => '/failover/', api_key => 'FAILOVER',
	mix => 'page_hit');
$res = $load->wait();
$want = scalar @{$res->{expected}};

is($res->{status}{200}, 200, 'failover: 200 requests accepted');

is($ch->wait_value("SELECT count() FROM civchat.events FINAL "
	. "WHERE site = 'FAILOVER'", $want, 10), $want,
	"failover: all $want events arrived");
is(count('FAILOVER', ''), $want, 'failover: none twice');

@diff = $ch->compare($res->{expected}, site => 'FAILOVER');
ok(!@diff, 'failover: every event once, fields intact')
	or diag(join("\n", @diff[0 .. ($#diff > 30 ? 30 : $#diff)]));

is(spooled('spool_failover'), 0, 'failover: nothing spooled');

like($t->read_file('error.log'),
	qr/\[error\].*civchat_store "http:\/\/127\.0\.0\.1:$closed\//,
	'failover: the refusing server is logged');

###############################################################################

$t->stop();
$ch->stop();

unlike($t->read_file('error.log'),
	qr/civchat_store "\Q$store\E"/, 'no error about the working store');

$t->done_testing();

###############################################################################
