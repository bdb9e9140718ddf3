#!/usr/bin/perl

# (C) civchat developers

# Tests for the state file written in pieces (README "civchat_zone"):
# thousands of profiles (other keys, escapes, UTF-8, one bigger than a
# piece) saved in many pieces by the worker and by the master at stop
# come back after a restart as the server API read them, byte for byte;
# saves interleaved with updates, creations and deletions each leave a
# file that loads, with every profile once and every profile that lived
# through the save, and the last values after the save at stop; nginx
# killed during a save, a fast stop and a reload during one leave a
# complete state and no temporary file of theirs; and the file is
# loaded least recently seen first, so a smaller zone keeps the most
# recently seen profiles.

###############################################################################

use warnings;
use strict;
use utf8;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_encode json_decode uniq_id is_key slow/;

use POSIX qw/_exit/;
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $TOKEN = 'state-token-0123456789abcdef';

my $conf = <<"EOF";

%%TEST_GLOBALS%%
worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  ZONE_SIZE  state=%%TESTDIR%%/civchat.state
                                    state_interval=INTERVAL;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat                         zone=users;
            civchat_api_key                 TESTKEY;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }

        location /api/ {
            civchat_api           zone=users;
            civchat_api_token     $TOKEN;
            civchat_body_limit    10m;
            client_max_body_size  10m;
        }
    }
}

EOF

sub conf {
	my (%o) = @_;
	(my $c = $conf) =~ s/ZONE_SIZE/$o{size} \/\/ '32m'/e;
	$c =~ s/INTERVAL/$o{interval}/;
	return $c;
}

$t->config(conf(interval => '300ms'))->run();

my $d = $t->testdir();

###############################################################################

sub api {
	my ($method, $path, $body) = @_;

	my @h = (Authorization => "Bearer $TOKEN");

	if (defined $body) {
		$body = json_encode($body) if ref $body;
		push @h, 'Content-Type' => 'application/json';
	}

	return $t->request(method => $method, path => "/api/$path",
		headers => \@h, body => $body, timeout => 60);
}

sub import_rows {
	my (@rows) = @_;

	my $r = $t->request(method => 'POST', path => '/api/import',
		headers => [ Authorization => "Bearer $TOKEN",
			'Content-Type' => 'application/x-ndjson' ],
		body => join("\n", map { json_encode($_) } @rows) . "\n",
		timeout => 60);

	die 'import: ' . $r->status . ' ' . substr($r->body // '', 0, 200)
		unless $r->status == 200;

	return map { $_->{key} } @{$r->json->{results}};
}

# the saves in error.log since an offset: pid, profiles, pieces

sub saves {
	my ($from) = @_;

	my $log = $t->read_file('error.log') // '';
	$log = substr($log, $from // 0);

	my @saves;
	my $re = qr/\[info\] (\d+)#\d+: civchat: zone "users" saved to .*?: /
		. qr/(\d+) profiles, (\d+) bytes, (\d+) pieces/;

	while ($log =~ /$re/g) {
		push @saves, { pid => $1, profiles => $2, bytes => $3,
			pieces => $4 };
	}

	return @saves;
}

sub log_size { -s "$d/error.log" // 0 }

# waits until a save began after this call and none follows it: the
# zone and the file then hold the same

sub wait_saved {
	my ($interval) = @_;

	my $from = log_size();
	my $last = time();
	my $n = 0;
	my $deadline = time() + slow(60);

	while (time() < $deadline) {
		my @s = saves($from);
		if (@s != $n) {
			$n = @s;
			$last = time();
		}

		if (time() - $last > 5 * $interval) {
			# none at all: the last save was before this call
			return $n ? $s[-1] : (saves(0))[-1];
		}

		sleep 0.05;
	}

	return undef;
}

sub tmp_files {
	opendir(my $dh, $d) or return ();
	my @f = grep { /^civchat\.state\.tmp\./ } readdir $dh;
	closedir $dh;
	return @f;
}

sub ntmp { my @f = tmp_files(); return scalar @f }

sub kill_all {
	my @pids = @_ ? @_ : ($t->master_pid, $t->worker_pids);
	kill 'KILL', @pids;
	for (1 .. 100) {
		last unless grep { kill 0, $_ } @pids;
		sleep 0.02;
	}
	$t->{started} = 0;
}

# every profile as the server API reads it, by the path that names it

sub read_all {
	my (@paths) = @_;
	return { map { $_ => api(GET => $_)->body } @paths };
}

sub compare_all {
	my ($before, $name) = @_;

	my $after = read_all(keys %$before);
	my @differ = grep { ($after->{$_} // '') ne $before->{$_} }
		sort keys %$before;

	is(scalar @differ, 0, "$name: every profile read as before")
		or diag(join("\n", map { "$_:\n  $before->{$_}\n  "
			. ($after->{$_} // 'none') } @differ[0 .. 2]));
}

sub no_skipped {
	my ($name) = @_;
	my @bad = grep { /skipped|unreadable|civchat.*state/i
		&& !/\[(info|notice)\]/ }
		split /\n/, $t->read_file('error.log') // '';
	is(join("\n", @bad), '', "$name: the state loads without a complaint");
}

###############################################################################

# thousands of profiles: many pieces

my $N = 2000;
my $p = uniq_id('s');

my @rows = map { {
	user_id => "$p-$_",
	email => "$p-$_\@example.org",
	name => "Zażółć \"gęślą\" \\ jaźń $_",
	plan => ('free', 'gold', 'silver')[$_ % 3],
	orders => $_,
	newsletter => ($_ % 2 ? JSON::PP::true : JSON::PP::false),
	note => "line one\nline two\t\x{1F600} $_",
	tags => [ "t$_", 'x' ],
	city => 'Kraków',
} } 1 .. $N;

my @keys;
push @keys, import_rows(@rows[$_ * 500 .. $_ * 500 + 499]) for 0 .. 3;
is(scalar(grep { is_key($_) } @keys), $N, "$N profiles imported");

# one profile bigger than a piece (64 KiB of text)

my $big = "$p-big";
is(api(POST => "users/user_id/$big",
	{ map { ("big_$_" => ('é' x 400) . $_) } 1 .. 90 })->status, 201,
	'a profile bigger than a piece');

# browsers: sessions of one profile (other keys), a User-Agent to escape

my @browsers;
for my $i (1 .. 20) {
	my $email = lc("$p-b$i\@example.org");
	for (1 .. 3) {
		my $c = $t->client(headers =>
			[ 'User-Agent' => "Mozilla/5.0 (\"quoted\" \\ $i)" ]);
		$c->init({});
		$c->init({ email => $email, visits => $i });
		push @browsers, $c->key;
	}
}

my $r = api(GET => "users/email/$p-b7\@example.org");
ok(@{$r->json->{user}{aliases} // []} >= 2, 'a profile with other keys')
	or diag($r->body);

my @paths = ((map { "users/user_id/$p-$_" } 1 .. $N),
	"users/user_id/$big", (map { "users/key/$_" } @browsers));

# the worker's periodic save, in pieces; then nginx is killed, so the
# master does not save at stop

my $s = wait_saved(0.3);
ok($s, 'the worker saved the zone');

my $before = read_all(@paths);
is(scalar(grep { /"user"/ } values %$before), scalar @paths,
	'every profile read');

ok($s && $s->{pieces} > 10, "in many pieces ($s->{pieces})") if $s;
is($s && $s->{profiles}, $N + 1 + 20, 'every profile saved') if $s;

kill_all();
$t->write_file('error.log', '');
$t->run();

compare_all($before, 'the worker\'s save');
no_skipped('the worker\'s save');

# the master's save at stop, of the whole zone (the worker's next one
# is an hour away)

$t->reload(conf(interval => '1h'));

is(api(PATCH => "users/user_id/$p-1", { plan => 'platinum' })->status, 200,
	'a change before the stop');
$before->{"users/user_id/$p-1"} = api(GET => "users/user_id/$p-1")->body;

my $master = $t->master_pid;
my $from = log_size();
$t->stop();

my ($ms) = grep { $_->{pid} == $master } saves($from);
ok($ms && $ms->{pieces} > 10, 'stop: the master saved in pieces');
is(ntmp(), 0, 'stop: no temporary file left');

$t->write_file('error.log', '');
$t->run();

compare_all($before, 'stop and start');
no_skipped('stop and start');

###############################################################################

# saves interleaved with writes: updates of profiles that live through
# every save, creations and deletions (which move the index around the
# walk)

$t->reload(conf(interval => '100ms'));

my $doomed = uniq_id('doomed');
my @doomed = map { "$doomed-$_" } 1 .. 300;
import_rows(map { { user_id => $_, plan => 'doomed' } } @doomed);

my $ROUNDS = 6;
my $UPDATED = 200;

# child processes; each writes what it did into a file of its own

sub spawn {
	my ($name, $code) = @_;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0) {
		my $out = $code->();
		$t->write_file("$name.done", json_encode($out));
		_exit(0);
	}
	return $pid;
}

sub updater {
	my ($forever) = @_;
	return sub {
		my %last;
		for (my $round = 1; $forever || $round <= $ROUNDS; $round++) {
			for my $i (1 .. $UPDATED) {
				my $r = api(PATCH => "users/user_id/$p-$i",
					{ round => $round });
				$last{$i} = $round if $r->status == 200;
				return \%last if $forever && -e "$d/stop";
			}
		}
		return \%last;
	};
}

my $born = uniq_id('born');

my @kids = (spawn('updater', updater(0)),
	spawn('churn', sub {
		for my $i (0 .. 5) {
			import_rows(map { { user_id => "$born-$_", plan => 'new' } }
				$i * 50 + 1 .. $i * 50 + 50);
			api(DELETE => "users/user_id/$_")
				for @doomed[$i * 50 .. $i * 50 + 49];
		}
		return {};
	}));

# the state file while they run: each a complete file (renamed)

my (@snapshots, %seen_file);
$from = log_size();

while (grep { waitpid($_, POSIX::WNOHANG()) == 0 } @kids) {
	my $text = $t->read_file('civchat.state');
	if (defined $text && !$seen_file{$text}++ && @snapshots < 4) {
		push @snapshots, $text;
	}
	sleep 0.05;
}

my $during = saves($from);
ok($during >= 2, "saves while writing ($during)");
ok(@snapshots >= 2, 'state files taken while writing (' . @snapshots . ')');

my $lived = { map { ("$p-$_" => 1) } 1 .. $N };

for my $i (0 .. $#snapshots) {
	my @lines = split /\n/, $snapshots[$i];
	my $head = json_decode(shift @lines);

	my (%keys, %users, $bad, $twice);

	for my $line (@lines) {
		my $j = eval { json_decode($line) };
		if (ref $j ne 'HASH' || !is_key($j->{key})) {
			$bad++;
			next;
		}
		$twice++ if $keys{$j->{key}}++;
		$users{$j->{user_id}} = 1 if defined $j->{user_id};
	}

	ok(ref $head eq 'HASH' && $head->{civchat_state} == 1,
		"file $i: the header");
	ok(!$bad, "file $i: every line a profile");
	ok(!$twice, "file $i: every profile once");
	is(scalar(grep { !$users{$_} } keys %$lived), 0,
		"file $i: every profile that lived through the save");
}

my $last = json_decode($t->read_file('updater.done'));
is(scalar(grep { $last->{$_} == $ROUNDS } 1 .. $UPDATED), $UPDATED,
	'every update answered');

$t->stop();
is(ntmp(), 0, 'after the writes: no temporary file left');
$t->write_file('error.log', '');
$t->run();
no_skipped('after the writes');

my @rounds = grep { my $r = api(GET => "users/user_id/$p-$_");
	($r->json->{user}{attributes}{round} // 0) == $ROUNDS } 1 .. $UPDATED;
is(scalar @rounds, $UPDATED, 'after the writes: the last values');

is(scalar(grep { api(GET => "users/user_id/$born-$_")->status == 200 }
	1 .. 300), 300, 'after the writes: the new profiles');
is(scalar(grep { api(GET => "users/user_id/$_")->status == 404 } @doomed),
	300, 'after the writes: the deleted ones are gone');

###############################################################################

# catching a save under way: its temporary file appears, a profile that
# lives through it keeps changing so that the saves go on

sub during_save {
	my ($action) = @_;

	unlink("$d/stop");
	my $kid = spawn('busy', updater(1));
	my @pids = ($t->master_pid, $t->worker_pids);

	my $caught;
	my $deadline = time() + slow(20);

	while (time() < $deadline) {
		my @tmp = tmp_files();
		if (@tmp) {
			$caught = $action->(\@pids, @tmp);
			last;
		}
		sleep 0.002;
	}

	$t->write_file('stop', '');
	waitpid($kid, 0);

	return $caught;
}

# killed during a save: the previous state is still whole

my $tries = 0;
my $left;

for (1 .. 10) {
	$tries++;
	$left = during_save(sub {
		kill_all(@{$_[0]});
		return [ tmp_files() ];
	});

	last if $left && @$left;

	# the save ended before nginx did: again
	$t->write_file('error.log', '');
	$t->run();
}

ok($left && @$left, "killed during a save ($tries tries)");

$t->write_file('error.log', '');
$t->run();
no_skipped('killed during a save');
ok(!grep({ -e "$d/$_" } @{$left // []}),
	'killed during a save: its temporary file is removed at the next start');
like($t->read_file('error.log') // '',
	qr/\[notice\].*civchat: removed "[^"]*\.tmp\.\d+", left by a save/,
	'killed during a save: the removal is logged');
is(scalar(grep { api(GET => "users/user_id/$p-$_")->status == 200 }
	1 .. $N), $N, 'killed during a save: every profile');
# the profiles no updater changed since they were read
my @still = grep { !/$p-(\d+)$/ || $1 > $UPDATED } @paths;
compare_all({ map { $_ => $before->{$_} } @still }, 'killed during a save');

# a fast stop during a save: the worker drops its file, the master
# saves the whole zone

my $acked;
$master = $t->master_pid;
my $caught = during_save(sub {
	my (undef, @tmp) = @_;
	kill 'TERM', $master;
	return \@tmp;
});
for (1 .. 200) { last unless kill 0, $master; sleep 0.05 }
$t->{started} = 0;
ok($caught, 'a fast stop during a save');
$acked = json_decode($t->read_file('busy.done'));
is(ntmp(), 0, 'fast stop: no temporary file left');

$t->write_file('error.log', '');
$t->run();
no_skipped('fast stop');

my @behind = grep {
	(api(GET => "users/user_id/$p-$_")->json->{user}{attributes}{round}
		// 0) < $acked->{$_} } keys %$acked;
is(scalar @behind, 0, 'fast stop: every answered update saved');

# a reload during a save: the old worker finishes it

my @old = $t->worker_pids();
$caught = during_save(sub {
	my (undef, @tmp) = @_;
	$t->reload();
	return \@tmp;
});
ok($caught, 'a reload during a save');
my %old = map { $_ => 1 } @old;
is(scalar(grep { /\.(\d+)$/ && $old{$1} } tmp_files()), 0,
	'reload: no temporary file of the old workers left');

###############################################################################

# loading: least recently seen first, so that a smaller zone keeps the
# most recently seen

my $old_id = uniq_id('old');
$t->client()->init({ user_id => "$old_id-$_" }) for 1 .. 40;
sleep 1.1;

my $new_id = uniq_id('new');
import_rows(map { { user_id => "$new_id-$_", plan => 'recent' } }
	1 .. 1000);

$t->stop();
$t->write_file('error.log', '');
$t->config(conf(size => '128k', interval => '1h'))->run();

my $olds = grep { api(GET => "users/user_id/$old_id-$_")->status == 200 }
	1 .. 40;
my $news = grep { api(GET => "users/user_id/$new_id-$_")->status == 200 }
	1 .. 1000;

is($olds, 0, 'a smaller zone: the least recently seen were dropped');
ok($news >= 100, "a smaller zone: recent profiles kept ($news)");

###############################################################################

$t->done_testing();

###############################################################################
