#!/usr/bin/perl

# (C) civchat developers

# Tests for civchat_store http:// keepalive_timeout: the connection the
# store keeps open between batches is closed by nginx once it has been
# idle that long (default 2s), before the store would close it (a batch
# sent just as the store hangs up fails), against a ClickHouse that
# keeps idle connections for 30s; it is still reused while batches keep
# coming, and keepalive_timeout=0 opens a connection per batch.  The
# connections are watched in /proc/net/tcp.  What is timed holds on a
# loaded machine: a connection cannot close before its timeout has
# passed since the batch, and closes long before ClickHouse's 30s; the
# reuse is watched with a timeout far longer than the gaps.

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

plan(skip_all => 'no /proc/net/tcp') unless -r '/proc/net/tcp';

my $ch = Civchat::ClickHouse->new(keep_alive => 30);
$ch->start()->load_schema();

my $store = $ch->store_url();

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%
worker_processes 1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  8m;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /short/ {
            civchat          zone=users;
            civchat_api_key  SHORT;
            civchat_store    $store flush=100ms keepalive_timeout=1s
                             spool=%%TESTDIR%%/spool_short;
        }

        location /default/ {
            civchat          zone=users;
            civchat_api_key  DEFAULT;
            civchat_store    $store flush=100ms
                             spool=%%TESTDIR%%/spool_default;
        }

        location /long/ {
            civchat          zone=users;
            civchat_api_key  LONG;
            civchat_store    $store flush=100ms keepalive_timeout=20s
                             spool=%%TESTDIR%%/spool_long;
        }

        location /never/ {
            civchat          zone=users;
            civchat_api_key  NEVER;
            civchat_store    $store flush=100ms keepalive_timeout=0
                             spool=%%TESTDIR%%/spool_never;
        }
    }
}

EOF

my $port = $ch->http_port();

# the local ports of the open connections to ClickHouse's HTTP port (the
# tests' own queries do not keep theirs)

sub open_to_store {
	my @ports;
	for my $file ('/proc/net/tcp', '/proc/net/tcp6') {
		open(my $fh, '<', $file) or next;
		while (<$fh>) {
			my (undef, $local, $remote, $st) = split;
			next unless defined $st && $st eq '01';
			next unless $remote =~ /:([0-9A-F]{4})$/ && hex($1) == $port;
			push @ports, hex($1) if $local =~ /:([0-9A-F]{4})$/;
		}
		close $fh;
	}
	return @ports;
}

sub wait_closed {
	my ($timeout) = @_;
	my $deadline = time() + $timeout;
	sleep 0.02 while open_to_store() && time() < $deadline;
	return !open_to_store();
}

# one page view through a location: when a connection to the store was
# first seen open, and when none was any longer (undef: still open
# after $watch seconds)

sub idle_for {
	my ($base, $key, $watch) = @_;

	my $c = $t->client(base => $base, api_key => $key);
	my $t0 = time();
	my $r = $c->page_hit({ title => 'idle' });

	my ($opened, $closed);
	while (time() < $t0 + $watch) {
		if (open_to_store()) {
			$opened //= time();
		} elsif (defined $opened) {
			$closed = time();
			last;
		}
		sleep 0.02;
	}

	# the batch left after the answer: its connection, a while later
	return ($r->status, $opened, $closed, $t0);
}

sub site_count {
	my ($site) = @_;
	return $ch->wait_value("SELECT count() FROM civchat.events "
		. "WHERE site = '$site'", $_[1], 5);
}

ok(wait_closed(5), 'no connection to the store before the tests');

###############################################################################

# keepalive_timeout=1s: the kept connection is closed by nginx a second
# after the batch, where ClickHouse would have kept it for 30

my ($status, $opened, $closed, $t0) = idle_for('/short/', 'SHORT', 15);

is($status, 200, '1s: accepted');
ok(defined $opened, '1s: the batch went over a connection');
ok(defined $closed, '1s: the idle connection was closed, long before '
	. 'the store would have');
SKIP: {
	skip 'no connection seen, or not closed', 1
		unless defined $opened && defined $closed;
	ok($closed - $t0 >= 1,
		sprintf('1s: not before a second idle (%.2fs after the hit)',
			$closed - $t0));
}
is(site_count('SHORT', 2), 2, '1s: the events arrived');

# batches 0.4s apart, well within a 20s timeout: one connection for all

my %seen;
my $c = $t->client(base => '/long/', api_key => 'LONG');
for my $i (1 .. 5) {
	is($c->page_hit({ title => "again $i" })->status, 200, "20s: hit $i");
	my $until = time() + 0.4;
	while (time() < $until) {
		$seen{$_} = 1 for open_to_store();
		sleep 0.02;
	}
}
is(site_count('LONG', 1 + 5), 1 + 5, '20s: those events arrived');
is(scalar keys %seen, 1, '20s: over one kept connection');

# close it: no test below sees it
$t->reload();
ok(wait_closed(10), '20s: closed by the reload');

###############################################################################

# the default: 2s, below what stores commonly keep (ClickHouse 3s to 10s
# depending on its release, Node.js and Apache 5s)

($status, $opened, $closed, $t0) = idle_for('/default/', 'DEFAULT', 15);

is($status, 200, 'default: accepted');
ok(defined $opened && defined $closed,
	'default: the idle connection was closed, long before the store '
	. 'would have');
SKIP: {
	skip 'no connection seen, or not closed', 1
		unless defined $opened && defined $closed;
	ok($closed - $t0 >= 2,
		sprintf('default: not before 2 seconds idle (%.2fs after the hit)',
			$closed - $t0));
}
is(site_count('DEFAULT', 2), 2, 'default: the events arrived');

###############################################################################

# keepalive_timeout=0: closed as soon as the batch is answered

$c = $t->client(base => '/never/', api_key => 'NEVER');
is($c->page_hit({ title => 'never' })->status, 200, '0: accepted');
is(site_count('NEVER', 2), 2, '0: the events arrived');
ok(wait_closed(0.3), '0: no connection kept after the batch');

unlike($t->read_file('error.log'), qr/\[error\].*civchat_store/,
	'no batch failed');

###############################################################################

$t->stop();
$ch->stop();

$t->done_testing();

###############################################################################
