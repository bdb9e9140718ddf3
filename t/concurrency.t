#!/usr/bin/perl

# (C) civchat developers

# Tests for concurrent use with two workers: 20 forked clients each do N
# client.update calls on their own profile and N page_hits on one shared
# profile; afterwards the shared page_views equal the total, every
# update is recorded, no event line is lost or torn, and a user_id sent
# by all clients at once ends up on one profile.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key uniq_id json_decode/;

use POSIX ();
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

$t->config(<<'EOF')->run();

%%TEST_GLOBALS%%
worker_processes 2;

events {
    worker_connections  1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  4m;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  TESTKEY;
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location /ua/ {
            civchat                         zone=users;
            civchat_api_key                 TESTKEY;
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }
    }
}

EOF

is(scalar($t->worker_pids), 2, 'two workers');

my $clients = 20;
my $n = 25;
my $d = $t->testdir;

my $shared = $t->client();
my $r = $shared->init({ user_id => uniq_id('shared') });
my $ks = $r->key;
is($r->user->{page_views}, 1, 'shared profile');

my $race = uniq_id('race');
my $start = time() + 0.5;

my @kids;

for my $i (1 .. $clients) {
	my $pid = fork();
	die "fork: $!" unless defined $pid;

	if ($pid == 0) {
		my $bad = 0;

		# all at once: the same new user_id
		sleep($start - time()) if $start > time();
		my $rc = $t->client();
		my $rr = $rc->init({ user_id => $race });
		$bad++ unless $rr->status == 200;

		# each browser has a key of its own: the profile is the events'
		my $race_key = $rc->profile // '';

		my $own = $t->client();
		$rr = $own->init({ name => "client $i" });
		$bad++ unless $rr->status == 200;
		my $key = $rr->key // '';

		my $sh = $t->client();
		$sh->set_cookie('__ca__chat', $ks);

		for my $j (1 .. $n) {
			$rr = $own->update({ counter => $j });
			$bad++ unless $rr->status == 200 && ($rr->key // '') eq $key;
			$rr = $sh->page_hit({ url => "http://shared.test/$i/$j" });
			$bad++ unless $rr->status == 200 && ($rr->key // '') eq $ks;
		}

		open(my $fh, '>', "$d/kid.$i") or POSIX::_exit(99);
		print $fh "$key $race_key $bad\n";
		close $fh;

		# no DESTROY: the parent owns nginx
		POSIX::_exit(0);
	}

	push @kids, $pid;
}

my $failed = 0;
for (@kids) {
	waitpid($_, 0);
	$failed++ if $?;
}
is($failed, 0, 'all clients finished');

my (%own, %race, $bad);
for my $i (1 .. $clients) {
	my $line = $t->read_file("kid.$i") // '';
	my ($key, $race_key, $b) = split ' ', $line;
	$own{$i} = $key;
	$race{$race_key // ''}++;
	$bad += $b // 1;
}

is($bad, 0, 'every request answered 200 with the right key');
is(scalar(grep { is_key($_) } values %own), $clients, 'own profiles');
is(scalar(keys %{{ map { $_ => 1 } values %own }}), $clients,
	'own profiles: all different');
is(scalar(keys %race), 1, 'one user_id sent at once: one profile')
	or diag(join(' ', %race));

# the shared profile counted every page view

$r = $shared->page_hit({});
is($r->user->{page_views}, 1 + $clients * $n + 1,
	'shared page_views = the total');

my @pv = $t->read_events(count => 1 + $clients * $n + 1, timeout => 10,
	match => { type => 'page_view', user_key => $ks });
is(scalar @pv, 1 + $clients * $n + 1, 'a page_view event for each');

my %urls = map { $_->{url} => 1 } grep { $_->{url} =~ /shared\.test/ } @pv;
is(scalar(keys %urls), $clients * $n, 'each page view recorded once');

# every update recorded, on the right profile, in order of values

my @pu = $t->read_events(count => $clients * $n, timeout => 10,
	match => { type => 'profile_updated', name => 'counter' });
is(scalar @pu, $clients * $n, 'a profile_updated for each update');

my $wrong = 0;
for my $i (1 .. $clients) {
	my @mine = grep { $_->{user_key} eq $own{$i} } @pu;
	my @values = map { json_decode($_->{attrs})->{new} } @mine;
	$wrong++ unless join(',', sort { $a <=> $b } @values)
		eq join(',', 1 .. $n);

	my $c = $t->client();
	$c->set_cookie('__ca__chat', $own{$i});
	my $rr = $c->update({ counter => $n });
	$wrong++ unless $rr->user->{page_views} == 1;
}
is($wrong, 0, 'each client\'s updates on its own profile');

###############################################################################

# all at once: an unknown well-formed key (adopted once), an email under
# unified identification (one holder)

sub together {
	my ($tag, $code) = @_;

	my $at = time() + 0.5;
	my @pids;

	for my $i (1 .. $clients) {
		my $pid = fork();
		die "fork: $!" unless defined $pid;
		if ($pid == 0) {
			sleep($at - time()) if $at > time();
			my $out = eval { $code->($i) } // 'died';
			open(my $fh, '>', "$d/$tag.$i") or POSIX::_exit(99);
			print $fh $out;
			close $fh;
			POSIX::_exit(0);
		}
		push @pids, $pid;
	}

	waitpid($_, 0) for @pids;
	return map { $t->read_file("$tag.$_") // '' } 1 .. $clients;
}

my $adopt = join('', map { ('A' .. 'Z', 'a' .. 'z')[rand 52] } 1 .. 20);

my @got = together('adopt', sub {
	my $c = $t->client();
	$c->set_cookie('__ca__chat', $adopt);
	my $rr = $c->init({});
	return $rr->status . ' ' . ($rr->key // '');
});
is(scalar(grep { $_ eq "200 $adopt" } @got), $clients,
	'one unknown key from all clients at once: adopted by all')
	or diag(join(', ', @got));
my $c = $t->client();
$c->set_cookie('__ca__chat', $adopt);
is($c->init({})->user->{page_views}, $clients + 1,
	'one unknown key: one profile with every page view');

my $em = lc(uniq_id('race')) . '@example.org';
@got = together('email', sub {
	my $ce = $t->client(base => '/ua/');
	my $rr = $ce->init({ email => $em });
	return $rr->status . ' ' . ($ce->profile // '');
});
my %keys = map { $_ => 1 } @got;
is(scalar(keys %keys), 1, 'one email from all clients at once: one profile')
	or diag(join(', ', @got));
like($got[0], qr/^200 /, 'one email at once: 200');

# reloads under load: no failed request, no page view lost

my $load = $t->client();
my $kl = $load->init({})->key;
my $until = time() + 4;

my @kids2;
for my $i (1 .. 8) {
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0) {
		my ($good, $bad) = (0, 0);
		my $cl = $t->client();
		$cl->set_cookie('__ca__chat', $kl);
		while (time() < $until) {
			my $rr = $cl->page_hit({ url => "http://load.test/$i" });
			$rr->status == 200 && ($rr->key // '') eq $kl ? $good++ : $bad++;
		}
		open(my $fh, '>', "$d/load.$i") or POSIX::_exit(99);
		print $fh "$good $bad";
		close $fh;
		POSIX::_exit(0);
	}
	push @kids2, $pid;
}

my $reloads = 0;
for (1 .. 3) {
	sleep 0.8;
	$reloads++ if $t->reload();
}
waitpid($_, 0) for @kids2;

is($reloads, 3, 'three reloads under load');

my ($good, $badl) = (0, 0);
for my $i (1 .. 8) {
	my ($g, $b) = split ' ', $t->read_file("load.$i") // '0 1';
	$good += $g;
	$badl += $b;
}
ok($good > 100, "requests during the reloads ($good)");
is($badl, 0, 'no failed request during the reloads');
is($load->page_hit({})->user->{page_views}, $good + 2,
	'reloads: every page view counted');
my @lv = $t->read_events(count => $good, timeout => 10,
	match => { type => 'page_view', url => qr{^http://load\.test/} });
is(scalar @lv, $good, 'reloads: every page_view event written');

# the file: whole lines only

my @all = $t->parse_events();
is(scalar(grep { $_->{_bad} } @all), 0, 'no torn or mixed lines');
my %ids;
$ids{$_->{id} // ''}++ for @all;
is(scalar(grep { $_ > 1 } values %ids), 0, 'ids unique');

###############################################################################

$t->done_testing();

###############################################################################
