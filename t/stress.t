#!/usr/bin/perl

# (C) civchat developers

# A randomised mix under eviction: 10 clients for a few seconds on two
# workers and a 64k zone with unified identification and authorize by
# email, drawing user_ids and emails from small pools (so that switches,
# merges, aliases, conflicts and evictions meet), with reset_auth,
# update, events and junk bodies in between.  No answer is a 5xx, no
# worker crashes, nothing is logged above [error], the store file stays
# valid, and the zone answers afterwards.  CIVCHAT_STRESS_SEED repeats a
# run; CIVCHAT_STRESS_SECONDS makes it longer.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key/;

use POSIX ();
use Time::HiRes qw/time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

$t->config(<<'EOF')->run();

%%TEST_GLOBALS%%
worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  tiny  64k  state=%%TESTDIR%%/tiny.state state_interval=1s;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat                         zone=tiny;
            civchat_api_key                 TESTKEY;
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
            civchat_attribute               n  integer;
        }

        location /legacy/ {
            civchat          zone=tiny;
            civchat_api_key  TESTKEY;
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
        }
    }
}

EOF

my $seed = $ENV{CIVCHAT_STRESS_SEED} // int(rand(1_000_000));
my $seconds = $ENV{CIVCHAT_STRESS_SECONDS} // 5;
my $d = $t->testdir;
diag("seed $seed");

my @workers = $t->worker_pids();
my $until = time() + $seconds;

my @pids;

for my $i (1 .. 10) {
	my $pid = fork();
	die "fork: $!" unless defined $pid;

	if ($pid == 0) {
		srand($seed + $i);
		my (%st, $n);
		my $c = $t->client();

		while (time() < $until) {
			$n++;
			$c = $t->client() if rand() < 0.1;
			$c->{base} = rand() < 0.2 ? '/legacy/' : '/civchat/';

			my $u = 'u' . int(rand(30));
			my $e = 'e' . int(rand(30)) . '@example.org';
			my $x = rand();
			my $pad = 'x' x int(rand(600));
			my $r;

			if ($x < 0.30) {
				$r = $c->init({ user_id => $u, n => $n, pad => $pad });
			} elsif ($x < 0.50) {
				$r = $c->page_hit({ email => uc $e, pad => $pad,
					event => { event_name => 'pb', k => $n } });
			} elsif ($x < 0.60) {
				$r = $c->reset_auth(rand() < 0.5 ? { email => $e }
					: { user_id => $u });
			} elsif ($x < 0.75) {
				$r = $c->update({ email => $e, user_id => $u, n => "$n",
					tags => [ 1 .. int(rand(40)) ] });
			} elsif ($x < 0.85) {
				$r = $c->event({ event => "ev $n",
					attributes => { deep => { a => [ $n ] } } });
			} elsif ($x < 0.90) {
				$r = $c->product_event({ product_id => $n,
					event_type => rand() < 0.5 ? 'view' : 'bogus' });
			} elsif ($x < 0.95) {
				my $k = join('', map { ('a' .. 'z')[rand 26] }
					1 .. 10 + int(rand(25)));
				$c->set_cookie('__ca__chat', $k);
				$r = $c->init({});
			} else {
				$r = $t->post_json('/civchat/init',
					substr('{"apiKey":"TESTKEY","user_id":"' . $u
						. '","x":[1,2,{"y":"z"}]}', 0, int(rand(50))));
			}

			$st{$r->status}++;
		}

		open(my $fh, '>', "$d/stress.$i") or POSIX::_exit(99);
		print $fh join(' ', map { "$_:$st{$_}" } sort keys %st);
		close $fh;
		POSIX::_exit(0);
	}

	push @pids, $pid;
}

waitpid($_, 0) for @pids;

my %all;
for my $i (1 .. 10) {
	for (split ' ', $t->read_file("stress.$i") // 'none:1') {
		my ($s, $n) = split /:/;
		$all{$s} += $n;
	}
}

my $total = 0;
$total += $_ for values %all;
diag(join(' ', map { "$_:$all{$_}" } sort keys %all));

ok($total > 200, "requests made ($total)");
is(scalar(grep { !/^[234]\d\d$/ } keys %all), 0, 'no 5xx, no lost answer')
	or diag(join(' ', %all));
ok($all{200}, 'mostly 200');
is_deeply([ $t->worker_pids() ], \@workers, 'no worker replaced');

# the zone answers, the profile pools are consistent

# (a browser naming them gets a key of its own: the events tell the
# profile)

sub profile_of {
	my (%data) = @_;
	my $c = $t->client();
	my $r = $c->init(\%data);
	return $r->status == 200 ? $c->profile : 'status ' . $r->status;
}

my $k = profile_of(user_id => 'u1');
ok(is_key($k), 'afterwards: 200');
is(profile_of(user_id => 'u1'), $k,
	'afterwards: a user_id names one profile');
my $ke = profile_of(email => 'e1@example.org');
is(profile_of(email => 'e1@example.org'), $ke,
	'afterwards: an email names one profile');

# the store file

my @ev = $t->read_events(settle => 0.4);
ok(@ev > 100, 'events written');
is(scalar(grep { $_->{_bad} } @ev), 0, 'every line valid JSON');

# the state file loads again

$t->stop();
ok(-s "$d/tiny.state", 'state saved');
$t->run();
is(profile_of(user_id => 'u1'), $k,
	'after a restart: the same profile for u1');

###############################################################################

$t->done_testing();

###############################################################################
