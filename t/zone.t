#!/usr/bin/perl

# (C) civchat developers

# Tests for the profile zone: profiles survive "nginx -s reload"; with
# state= they survive a stop and start (aliases included) and a killed
# nginx (periodic save); a size change on reload starts the zone empty;
# a corrupt state file does not crash nginx; a tiny zone evicts the
# least recently seen profiles without failing a request, 5xx or alert.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key uniq_id/;

use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $conf = <<'EOF';

%%TEST_GLOBALS%%
worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  1m  state=%%TESTDIR%%/civchat.state
                             state_interval=1s;
    civchat_zone  tiny   64k;
    civchat_zone  other  OTHER_SIZE;

    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat                         zone=users;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }

        location /tiny/ {
            civchat               zone=tiny;
            civchat_body_limit    256k;
            client_max_body_size  256k;
        }

        location /other/ {
            civchat  zone=other;
        }

        location /tinyu/ {
            civchat                         zone=tiny;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }
    }
}

EOF

(my $c1 = $conf) =~ s/OTHER_SIZE/1m/;
$t->config($c1)->run();

my $d = $t->testdir;

# the profile a user_id or a key names (the events carry the profile's
# own key; a browser naming a user_id gets a key of its own): the answer
# and the profile, in list context

sub by_user_id {
	my ($u, $base) = @_;
	my $c = $t->client(base => $base // '/civchat/');
	my $r = $c->init({ user_id => $u });
	return wantarray ? ($r, $r->status == 200 ? $c->profile : undef) : $r;
}

sub profile_of_user_id {
	my (undef, $p) = by_user_id(@_);
	return $p;
}

sub by_key {
	my ($k, $base) = @_;
	my $c = $t->client(base => $base // '/civchat/');
	$c->set_cookie('__ca__chat', $k);
	my $r = $c->init({});
	return wantarray ? ($r, $r->status == 200 ? $c->profile : undef) : $r;
}

###############################################################################

# some profiles: A identified, B anonymous, C merged into A

my $ua = uniq_id('a');
my $ea = lc(uniq_id('a')) . '@example.org';
my $ca = $t->client();
my $r = $ca->init({ user_id => $ua, email => $ea, name => 'Anna' });
my $ka = $r->key;

my $cb = $t->client();
my $kb = $cb->init({ plan => 'gold' })->key;
$cb->page_hit({});

my $pa = $ca->profile;
is($pa, $ka, 'A: its own key names it');

my $cc = $t->client();
my $kc = $cc->init({})->key;
$cc->init({ email => $ea });
is($cc->profile, $pa, 'C merged into A');
my $kc2 = $cc->key;

my $uo = uniq_id('o');
my $po = profile_of_user_id($uo, '/other/');

# reload: the zones are kept

ok($t->reload(), 'reload');

is(profile_of_user_id($ua), $pa, 'reload: A by user_id');
$r = $ca->page_hit({});
is($r->key, $ka, 'reload: A\'s browser keeps its key');
is($r->user->{name}, 'Anna', 'reload: A\'s name');
is($r->user->{email}, $ea, 'reload: A\'s email');
$r = by_key($kb);
is($r->key, $kb, 'reload: B by key');
is($r->user->{page_views}, 3, 'reload: B\'s page views continue');
is(by_key($kc)->status, 409, 'reload: C\'s old key is still retired');
is((by_key($kc2))[1], $pa, 'reload: C\'s new key names A');
is(profile_of_user_id($uo, '/other/'), $po, 'reload: a zone without state');

# reload with another size: that zone starts empty

(my $c2 = $conf) =~ s/OTHER_SIZE/2m/;
ok($t->reload($c2), 'reload with a new size');
isnt(profile_of_user_id($uo, '/other/'), $po,
	'new size: the zone starts empty');
is(profile_of_user_id($ua), $pa, 'new size: the other zones are kept');

# stop and start: the state file

$t->stop();
ok(-s "$d/civchat.state", 'stop: the state file is written');
$t->run();

is(profile_of_user_id($ua), $pa, 'restart: A by user_id');
$r = $ca->page_hit({});
is($r->key, $ka, 'restart: A\'s browser keeps its key');
is($r->user->{name}, 'Anna', 'restart: A\'s name');
my $ce = $t->client();
$ce->init({ email => uc $ea });
is($ce->profile, $pa, 'restart: A by email');
$r = by_key($kb);
is($r->key, $kb, 'restart: B by key');
is($r->user->{page_views}, 4, 'restart: B\'s page views continue');
is((by_key($kc2))[1], $pa, 'restart: C\'s new key still names A');
($r, my $pc) = by_key($kc);
isnt($r->key, $kc, 'restart: C\'s old key is not adopted again');
isnt($pc, $pa, 'restart: C\'s old key is not A\'s');

# the periodic save: a killed nginx keeps what was saved

my $uk = uniq_id('k');
my $kk = profile_of_user_id($uk);

# state_interval=1s: saved within about a second of the change
sleep 2.5;

my @pids = ($t->master_pid, $t->worker_pids);
kill 'KILL', @pids;
sleep 0.3;
$t->{started} = 0;
$t->run();

is(profile_of_user_id($uk), $kk,
	'killed nginx: the periodic save kept the profile');

###############################################################################

# eviction in a tiny zone

my $first = uniq_id('first');
my $kf = profile_of_user_id($first, '/tiny/');
my $keep = uniq_id('keep');
my $ck = $t->client(base => '/tiny/');
my $kkeep = $ck->init({ user_id => $keep })->key;

my %status;
my $pad = 'p' x 200;

for my $i (1 .. 400) {
	my $r = $t->client(base => '/tiny/')->init({
		user_id => uniq_id('fill'),
		map { ("attr_$_" => "$pad $i") } 1 .. 5 });
	$status{$r->status}++;

	# A is seen often, so it is never the least recently seen
	$status{$ck->page_hit({})->status}++ if $i % 5 == 0;
}

is(join(',', map { "$_:$status{$_}" } sort keys %status), '200:480',
	'filling the zone: every answer 200');

($r, my $pf) = by_user_id($first, '/tiny/');
is($r->status, 200, 'after eviction: 200');
isnt($pf, $kf, 'the least recently seen profile was evicted');

$r = $ck->page_hit({});
is($r->key, $kkeep, 'a recently seen profile was kept');
is($r->user->{user_id}, $keep, 'the kept profile has its user_id');
is($r->user->{page_views}, 82, 'the kept profile has its page views');

# one profile bigger than the zone

$r = $t->client(base => '/tiny/')->init({
	map { ("big_$_" => 'b' x 1000) } 1 .. 90 });
like($r->status, qr/^[24]\d\d$/, 'a profile bigger than the zone: no 5xx');
is(by_user_id($keep, '/tiny/')->status, 200, 'the zone still works');

# the zone still works after all that

my $un = uniq_id('new');
my $kn = profile_of_user_id($un, '/tiny/');
is(profile_of_user_id($un, '/tiny/'), $kn, 'new profiles after eviction');

# a profile with other keys is evicted: its keys (sessions, retired
# ones) are then unknown well-formed keys, adopted as new profiles

my $ex = lc(uniq_id('x')) . '@example.org';
my $kx = $t->client(base => '/tinyu/')->init({ email => $ex })->key;
my @aliases;
for (1 .. 5) {
	my $c = $t->client(base => '/tinyu/');
	push @aliases, $c->init({})->key;
	$c->init({ email => $ex });
	push @aliases, $c->key;
}
is((by_key($aliases[-1], '/tinyu/'))[1], $kx,
	'a session before eviction');

%status = ();
for my $i (1 .. 300) {
	my $r = $t->client(base => '/tiny/')->init({
		map { ("attr_$_" => "$pad $i") } 1 .. 5 });
	$status{$r->status}++;
}
is(join(',', map { "$_:$status{$_}" } sort keys %status), '200:300',
	'filling again: every answer 200');

for my $k (@aliases, $kx) {
	$r = by_key($k, '/tinyu/');
	is($r->status, 200, 'evicted alias or key: 200');
	is($r->key, $k, 'evicted alias or key: adopted');
	is($r->user->{email}, undef, 'evicted alias or key: a new profile');
}

$r = $t->client(base => '/tinyu/')->init({ email => $ex });
is($r->status, 200, 'the evicted email: 200');
is($r->user->{email}, $ex, 'the evicted email is free again');

# eviction is logged once per zone

my @evict = grep { /evict/i } split /\n/, $t->read_file('error.log');
ok(@evict <= 1, 'eviction logged at most once') or diag(join("\n", @evict));

###############################################################################

# a corrupt or truncated state file: nginx starts, without a crash

$t->stop();
$t->check_log();

my $state = $t->read_file('civchat.state');

for my $case ([ 'garbage', join('', map { chr(rand 256) } 1 .. 5000) ],
	[ 'truncated', substr($state, 0, int(length($state) / 2)) ],
	[ 'empty', '' ])
{
	my ($name, $bytes) = @$case;
	$t->write_file('civchat.state', $bytes);
	$t->write_file('error.log', '');

	my ($ok, $err) = $t->_start();
	ok($ok, "$name state file: nginx starts") or diag($err);
	next unless $ok;

	$r = $t->client()->init({ user_id => uniq_id('c') });
	is($r->status, 200, "$name state file: requests work");

	$t->stop();
	diag(join("\n", grep { /civchat|state/ } split /\n/,
		$t->read_file('error.log'))) if $ENV{TEST_NGINX_VERBOSE};
	my @crash = grep { /exited on signal|Sanitizer/ }
		split /\n/, $t->read_file('error.log');
	is(scalar @crash, 0, "$name state file: no crash");
}

$t->write_file('error.log', '');

###############################################################################

$t->done_testing();

###############################################################################
