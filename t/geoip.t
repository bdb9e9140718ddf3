#!/usr/bin/perl

# (C) civchat developers

# Tests for civchat_geoip: lookups of nginx's client address (through
# X-Forwarded-For and the realip module), IPv4, IPv6 and IPv4-mapped
# addresses, a City-like and a Country-like database (and an IPv4-only
# one), addresses missing from the database, the geo fields of every
# event and the geo attributes of the profile (in the state file);
# nginx -t with a missing, unreadable, corrupt or truncated file; and a
# database replaced on disk under traffic (by rename, in place, by a
# corrupt file, by deleting it), with no failed request and the new data
# visible within two seconds; and two in-place rewrites that keep the
# file's size and whole-second mtime (a good file right after a corrupt
# one, a rewrite without truncation that stalls), which must be picked
# up as well.  The fixtures are made at test time by Civchat::MMDB
# (Debian's libmaxmind-db-writer-perl).

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_encode json_decode/;
use Civchat::MMDB qw/mmdb_build mmdb_write mmdb_random
	mmdb_replace_by_rename mmdb_rewrite_in_place/;

use POSIX ();
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $LONDON = { country => 'GB', region => 'ENG', city => 'London',
	tz => 'Europe/London' };
my $BERLIN = { country => 'DE', region => 'BE', city => 'Berlin',
	tz => 'Europe/Berlin' };
my $LINKOPING = { country => 'SE', region => 'E', city => "Link\x{f6}ping",
	tz => 'Europe/Stockholm' };
my $MILTON = { country => 'US', region => 'WA', city => 'Milton',
	tz => 'America/Los_Angeles' };

# a network with a country and nothing else
my $GB_ONLY = { country => 'GB' };

my @NETWORKS = (
	'81.2.69.0/24' => $LONDON,
	'2001:db8:1234::/48' => $BERLIN,
	'89.160.20.112/28' => $LINKOPING,
	'216.160.83.56/29' => $MILTON,
	'2a02:c7f:1000::/36' => $MILTON,
	'2.125.160.216/29' => $GB_ONLY,
);

# not in any fixture
my $MISSING4 = '203.0.113.5';
my $MISSING6 = '2001:db8:ffff::1';

my $t = Civchat->new()->need_module();

mmdb_write($t->testdir() . '/City.mmdb', layout => 'city',
	record_size => 28, networks => \@NETWORKS);

$t->config(<<'EOF')->run();

%%TEST_GLOBALS%%
worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone     users  1m  state=%%TESTDIR%%/state.json;
    civchat_geoip    %%TESTDIR%%/City.mmdb;
    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    set_real_ip_from  127.0.0.1;
    real_ip_header    X-Forwarded-For;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat  zone=users;
        }
    }
}

EOF

###############################################################################

# helpers

# all the events of the browser's last request: at least $n of them
sub events_of_last {
	my ($c, $n) = @_;
	return $c->events(count => $n, timeout => 5);
}

# every event carries the three geo fields, equal to the expected ones
sub check_event_geo {
	my ($name, $want, @ev) = @_;

	ok(@ev, "$name: events written") or return;

	my @bad;
	for my $e (@ev) {
		for my $f (qw/country region city/) {
			my $have = $e->{$f};
			push @bad, "$e->{type}.$f: " . ($have // 'missing')
				. ", want '" . ($want->{$f} // '') . "'"
				unless defined $have && !ref $have
					&& $have eq ($want->{$f} // '');
		}
	}

	ok(!@bad, "$name: every event (" . join(',', sort map { $_->{type} } @ev)
		. ") has country/region/city") or diag(join("\n", @bad));
}

# the profiles of the state file written at stop: key => profile
sub read_state {
	my ($tt, $file) = @_;

	my $text = $tt->read_file($file // 'state.json') // return undef;
	my @lines = split /\n/, $text;
	my $head = json_decode(shift @lines);
	return undef unless ref $head eq 'HASH';

	my %p;
	for my $line (@lines) {
		my $pr = json_decode($line);
		next unless ref $pr eq 'HASH' && defined $pr->{key};
		$p{$pr->{key}} = $pr;
	}

	return \%p;
}

sub geo_attrs {
	my ($pr) = @_;
	my $a = ref $pr eq 'HASH' && ref $pr->{attrs} eq 'HASH'
		? $pr->{attrs} : {};
	return { map { exists $a->{$_} ? ($_ => $a->{$_}) : () }
		qw/country region city timezone/ };
}

sub want_attrs {
	my ($geo) = @_;
	my %a;
	$a{country} = $geo->{country} if defined $geo->{country};
	$a{region} = $geo->{region} if defined $geo->{region};
	$a{city} = $geo->{city} if defined $geo->{city};
	$a{timezone} = $geo->{tz} if defined $geo->{tz};
	return \%a;
}

sub no_geo_profile_updates {
	my ($name, @ev) = @_;
	my @pu = grep { $_->{type} eq 'profile_updated'
		&& $_->{name} =~ /^(country|region|city|timezone)$/ } @ev;
	ok(!@pu, "$name: geo attributes filled without profile_updated")
		or diag(json_encode(\@pu));
}

###############################################################################

# lookups through X-Forwarded-For (realip): City layout

my %profiles;    # name => [key, expected geo attributes]

my @cases = (
	[ 'IPv4', '81.2.69.160', $LONDON ],
	[ 'IPv6', '2001:db8:1234:5678::1', $BERLIN ],
	[ 'IPv6 (other network)', '2a02:c7f:1234::99', $MILTON ],
	[ 'IPv4-mapped IPv6', '::ffff:81.2.69.161', $LONDON ],
	[ 'IPv4, non-ASCII city', '89.160.20.120', $LINKOPING ],
	[ 'IPv4, another network', '216.160.83.60', $MILTON ],
	[ 'IPv4, country only', '2.125.160.218', $GB_ONLY ],
	[ 'IPv4 missing from the database', $MISSING4, {} ],
	[ 'IPv6 missing from the database', $MISSING6, {} ],
	[ 'the last X-Forwarded-For address', "$MISSING4, 81.2.69.170",
		$LONDON ],
);

for my $case (@cases) {
	my ($name, $xff, $geo) = @$case;

	subtest "lookup: $name ($xff)" => sub {
		my $c = $t->client(headers => ['X-Forwarded-For' => $xff]);
		my $r = $c->init({});
		is($r->status, 200, 'init 200') or diag($r->describe);

		my @ev = events_of_last($c, 2);
		check_event_geo($name, $geo, @ev);
		no_geo_profile_updates($name, @ev);

		my ($pv) = grep { $_->{type} eq 'page_view' } @ev;
		my $ip = $xff =~ /,\s*(\S+)$/ ? $1 : $xff;
		is($pv->{ip}, $ip, 'event ip is the X-Forwarded-For address')
			if $pv && $ip !~ /^::ffff:/;
		like($pv->{ip} // '', qr/81\.2\.69\.161$/, 'event ip (mapped)')
			if $pv && $ip =~ /^::ffff:/;

		# the events of an "event" request carry it as well
		$r = $c->event({ event => 'clicked', attributes => { n => 1 } });
		is($r->status, 200, 'event 200');
		@ev = events_of_last($c, 1);
		check_event_geo("$name, event", $geo, @ev);

		$profiles{$name} = [ $c->key, want_attrs($geo) ];
	};
}

# without X-Forwarded-For: 127.0.0.1, in no database

subtest 'lookup: no X-Forwarded-For' => sub {
	my $c = $t->client();
	is($c->init({})->status, 200, 'init 200');
	check_event_geo('127.0.0.1', {}, events_of_last($c, 2));
	$profiles{'127.0.0.1'} = [ $c->key, {} ];
};

# a site-set country is kept; the rest is filled

subtest 'site-set country is kept, the rest filled' => sub {
	my $c = $t->client(headers => ['X-Forwarded-For' => '81.2.69.180']);
	my $r = $c->init({ country => 'FR' });
	is($r->status, 200, 'init with country FR');

	my @ev = events_of_last($c, 3);
	check_event_geo('site country', $LONDON, @ev);
	my ($pu) = grep { $_->{type} eq 'profile_updated'
		&& $_->{name} eq 'country' } @ev;
	ok($pu, 'the site\'s country is a profile_updated')
		and is_deeply(json_decode($pu->{attrs}),
			{ old => undef, new => 'FR' }, 'its attrs');

	# a second visit from elsewhere does not change it

	my $key = $c->key;
	$c = $t->client(headers => ['X-Forwarded-For' => '2001:db8:1234::7']);
	$c->set_cookie('__ca__chat', $key);
	$r = $c->page_hit({});
	is($r->key, $key, 'the same profile');
	is($r->status, 200, 'page_hit from Berlin');
	@ev = events_of_last($c, 1);
	check_event_geo('second visit', $BERLIN, @ev);
	ok(!(grep { $_->{type} eq 'profile_updated' } @ev),
		'no profile_updated on the second visit');

	$profiles{'site country'} = [ $c->key, { %{want_attrs($LONDON)},
		country => 'FR' } ];
};

subtest 'geo country first, then the site sets it' => sub {
	my $c = $t->client(headers => ['X-Forwarded-For' => '81.2.69.181']);
	is($c->init({})->status, 200, 'first visit');
	events_of_last($c, 2);

	my $r = $c->update({ country => 'IE' });
	is($r->status, 200, 'update country IE');
	my @ev = events_of_last($c, 1);
	my ($pu) = grep { $_->{type} eq 'profile_updated'
		&& $_->{name} eq 'country' } @ev;
	ok($pu, 'profile_updated country')
		and is_deeply(json_decode($pu->{attrs}),
			{ old => 'GB', new => 'IE' }, 'from the geo value to the site\'s');

	is($c->page_hit({})->status, 200, 'another visit');
	@ev = events_of_last($c, 1);
	ok(!(grep { $_->{type} eq 'profile_updated' } @ev),
		'the site\'s country is not overwritten back');

	$profiles{'site country later'} = [ $c->key, { %{want_attrs($LONDON)},
		country => 'IE' } ];
};

# the profiles' geo attributes, from the state file written at stop

$t->stop();

my $state = read_state($t);
ok($state, 'state file written at stop') or diag($t->read_file('state.json'));

for my $name (sort keys %profiles) {
	my ($key, $want) = @{$profiles{$name}};
	my $pr = $state ? $state->{$key} : undef;
	ok($pr, "profile of '$name' in the state") or next;
	is_deeply(geo_attrs($pr), $want, "profile of '$name': geo attributes")
		or diag(json_encode($pr));
}

is_deeply([ $state->{$profiles{'IPv4'}[0]}{attrs}{last_ip} ],
	['81.2.69.160'], 'last_ip is the X-Forwarded-For address') if $state;

###############################################################################

# a Country-like layout (record size 24): country only

my $k = Civchat->new()->need_module();

mmdb_write($k->testdir() . '/Country.mmdb', layout => 'country',
	record_size => 24, networks => \@NETWORKS);

$k->config(<<'EOF')->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone     users  1m  state=%%TESTDIR%%/state.json;
    civchat_geoip    %%TESTDIR%%/Country.mmdb;
    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    set_real_ip_from  127.0.0.1;
    real_ip_header    X-Forwarded-For;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat  zone=users;
        }
    }
}

EOF

my %kprof;

for my $case (['IPv4', '81.2.69.160', { country => 'GB' }],
	['IPv6', '2001:db8:1234:5678::1', { country => 'DE' }],
	['IPv4-mapped IPv6', '::ffff:89.160.20.115', { country => 'SE' }],
	['IPv4 missing', $MISSING4, {}],
	['IPv6 missing', $MISSING6, {}])
{
	my ($name, $xff, $geo) = @$case;

	subtest "Country database: $name ($xff)" => sub {
		my $c = $k->client(headers => ['X-Forwarded-For' => $xff]);
		is($c->init({})->status, 200, 'init 200');
		my @ev = events_of_last($c, 2);
		check_event_geo($name, $geo, @ev);
		no_geo_profile_updates($name, @ev);
		$kprof{$name} = [ $c->key, $geo ];
	};
}

$k->stop();

$state = read_state($k);
ok($state, 'Country database: state file written');

for my $name (sort keys %kprof) {
	my ($key, $geo) = @{$kprof{$name}};
	is_deeply(geo_attrs($state ? $state->{$key} : undef),
		$geo->{country} ? { country => $geo->{country} } : {},
		"Country database: profile of '$name': country only");
}

$k->check_log();

###############################################################################

# an IPv4-only database (ip_version 4, record size 32): an IPv6 client
# is simply not found

my $v4 = Civchat->new()->need_module();

mmdb_write($v4->testdir() . '/V4.mmdb', layout => 'city', ip_version => 4,
	record_size => 32, networks => [ '81.2.69.0/24' => $LONDON ]);

$v4->config(<<'EOF')->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone     users  1m;
    civchat_geoip    %%TESTDIR%%/V4.mmdb;
    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    set_real_ip_from  127.0.0.1;
    real_ip_header    X-Forwarded-For;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat  zone=users;
        }
    }
}

EOF

subtest 'IPv4-only database' => sub {
	my $c = $v4->client(headers => ['X-Forwarded-For' => '81.2.69.160']);
	is($c->init({})->status, 200, 'IPv4 client 200');
	check_event_geo('IPv4 in an IPv4 database', $LONDON,
		events_of_last($c, 2));

	$c = $v4->client(headers => ['X-Forwarded-For' => '2001:db8:1234::1']);
	is($c->init({})->status, 200, 'IPv6 client 200');
	check_event_geo('IPv6 in an IPv4 database', {}, events_of_last($c, 2));
};

$v4->stop();
$v4->check_log();

###############################################################################

# nginx -t: a missing, unreadable, corrupt or truncated database

my $n = Civchat->new()->need_module();
my $nd = $n->testdir();

my $good = mmdb_build(layout => 'city', networks => \@NETWORKS);

sub geoip_conf {
	my ($path) = @_;

	return <<"EOF";

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone     users  1m;
    civchat_geoip    $path;
    civchat_api_key  TESTKEY;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat  zone=users;
        }
    }
}

EOF
}

sub config_fails {
	my ($name, $file, $reason, @prefix) = @_;

	$n->write_file_expand('bad.conf', geoip_conf($file));

	my $cmd = join(' ', @prefix, $n->binary(), '-t', '-p', "$nd/",
		'-c', "$nd/bad.conf", '-e', 'stderr', '2>&1');
	my $out = `$cmd`;
	my $rc = $? >> 8;

	isnt($rc, 0, "nginx -t fails: $name");
	like($out, qr/\[emerg\][^\n]*\Q$file\E/,
		"$name: the message names the file");
	like($out, $reason, "$name: the message gives the reason");
	unlike($out, qr/\[crit\]|\[alert\]|signal/, "$name: no crash");
	diag($out) if $ENV{TEST_NGINX_VERBOSE};
}

# the good file passes, so that the failures below are the file's

$n->write_file('good.mmdb', $good);
$n->write_file_expand('good.conf', geoip_conf("$nd/good.mmdb"));
my ($grc, $gout) = $n->test_config(undef, 'good.conf');
is($grc, 0, 'nginx -t passes with a good file') or diag($gout);

config_fails('missing file', "$nd/missing.mmdb",
	qr/No such file or directory/);

$n->write_file('random.mmdb', mmdb_random(5000));
config_fails('random bytes', "$nd/random.mmdb",
	qr/not a usable MaxMind database: .*(metadata|corrupt|invalid)/i);

$n->write_file('empty.mmdb', '');
config_fails('empty file', "$nd/empty.mmdb",
	qr/not a usable MaxMind database: \S/);

$n->write_file('half.mmdb', substr($good, 0, int(length($good) / 2)));
config_fails('truncated to half', "$nd/half.mmdb",
	qr/not a usable MaxMind database: .*(metadata|corrupt|invalid)/i);

$n->write_file('cut.mmdb', substr($good, 0, length($good) - 20));
config_fails('last 20 bytes cut off', "$nd/cut.mmdb",
	qr/not a usable MaxMind database: .*(metadata|corrupt|invalid|bad data)/i);

$n->write_file('cut1.mmdb', substr($good, 0, length($good) - 1));
config_fails('last byte cut off', "$nd/cut1.mmdb",
	qr/not a usable MaxMind database: \S/);

mkdir("$nd/dir.mmdb");
config_fails('a directory', "$nd/dir.mmdb", qr/(Is a directory|not a usable)/);

# unreadable: as root the permission bits do not apply unless the
# capabilities that bypass them are dropped (setpriv)

SKIP: {
	my @prefix;

	if ($> == 0) {
		my $sp = `sh -c 'command -v setpriv' 2>/dev/null`;
		chomp $sp;
		skip 'running as root without setpriv: permission bits do not '
			. 'apply to root, so an unreadable file cannot be made', 10
			unless $sp;
		@prefix = ($sp, '--bounding-set=-dac_override,-dac_read_search');

		$n->write_file('probe', 'x');
		chmod(0000, "$nd/probe");
		`@prefix cat $nd/probe 2>/dev/null`;
		skip 'setpriv cannot drop CAP_DAC_OVERRIDE here', 10 if $? == 0;
	}

	$n->write_file('mode000.mmdb', $good);
	chmod(0000, "$nd/mode000.mmdb");
	config_fails('unreadable file (mode 000)', "$nd/mode000.mmdb",
		qr/Permission denied/, @prefix);

	mkdir("$nd/locked");
	$n->write_file('locked/City.mmdb', $good);
	chmod(0000, "$nd/locked");
	config_fails('file in a directory without permission',
		"$nd/locked/City.mmdb", qr/Permission denied/, @prefix);
	chmod(0755, "$nd/locked");
}

# a file whose metadata is intact but whose search tree is garbage:
# nginx -t may refuse it (naming the file); if it is accepted, lookups
# must not crash a worker and give no geo data

{
	my $bad = $good;
	my $meta = index($bad, "\xab\xcd\xefMaxMind.com");
	my $tree = int($meta / 2);
	substr($bad, 0, $tree) = mmdb_random($tree);
	$n->write_file('tree.mmdb', $bad);
	$n->write_file_expand('tree.conf', geoip_conf("$nd/tree.mmdb"));

	my ($rc, $out) = $n->test_config(undef, 'tree.conf');

	if ($rc != 0) {
		like($out, qr/\Q$nd\E\/tree\.mmdb/,
			'corrupt search tree: nginx -t names the file');

	} else {
		$n->config(geoip_conf("$nd/tree.mmdb"))->run();
		my $bad_status = 0;
		for my $ip ('81.2.69.160', '2001:db8:1234::1', $MISSING4,
			'1.2.3.4', '::1', '255.255.255.255')
		{
			my $r = $n->client(headers => ['X-Forwarded-For' => $ip])
				->init({});
			$bad_status++ unless $r->status == 200;
		}
		is($bad_status, 0, 'corrupt search tree: requests still answered');
		ok(!$n->log_problems(), 'corrupt search tree: no crash');
		$n->stop();
	}
}

$n->check_log();

###############################################################################

# replacement under traffic: a client sends a steady stream of requests
# for one address while the database is replaced; every answer is 200,
# the country is always the old or the new one, and the new one is
# seen by every request from two seconds after the replacement on

my $r = Civchat->new()->need_module();
my $rd = $r->testdir();
my $DB = "$rd/City.mmdb";

my $STREAM_IP = '175.16.199.5';

# filler networks make a file of about 75k, so that writing it in place
# takes a while
sub stream_db {
	my ($country, %o) = @_;
	return mmdb_build(layout => 'city', filler => $o{filler} // 1500,
		networks => [ @NETWORKS,
			'175.16.199.0/24' => { country => $country,
				region => "R$country", city => "City of $country",
				tz => 'Etc/UTC' } ]);
}

mmdb_write($DB, bytes => stream_db('CN'));

$r->config(<<'EOF')->run();

%%TEST_GLOBALS%%
worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone     users  1m;
    civchat_geoip    %%TESTDIR%%/City.mmdb;
    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    set_real_ip_from  127.0.0.1;
    real_ip_header    X-Forwarded-For;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat     zone=users;
            add_header  X-Geo  "c=$civchat_country";
        }

        location = /geo {
            return  200  "c=$civchat_country";
        }
    }
}

EOF

my @rworkers = $r->worker_pids();
my $STREAM_KEY = 'StreamKey' . join('', map { ('a' .. 'z')[rand 26] } 1 .. 7);

# a child process: page_hit requests until the file $file.stop exists
# (or 30 seconds passed), one line each: "start end status country url"
sub stream_start {
	my ($file, $tag) = @_;

	my $pid = fork();
	die "fork: $!\n" unless defined $pid;
	return $pid if $pid;

	my $ok = eval {
		open(my $fh, '>', $file) or die "$file: $!\n";
		$fh->autoflush(1);
		my $end = time() + 30;
		my $i = 0;

		while (time() < $end && !-e "$file.stop") {
			my $url = "http://site.test/$tag/" . $i++;
			my $t0 = time();
			my $res = $r->request(method => 'POST',
				path => '/civchat/page_hit',
				headers => [
					'Content-Type' => 'application/json',
					'X-Forwarded-For' => $STREAM_IP,
					Cookie => "__ca__chat=$STREAM_KEY",
				],
				body => json_encode({ apiKey => 'TESTKEY', url => $url }),
				timeout => 5);
			my $geo = $res->header('X-Geo') // '';
			$geo =~ s/^c=//;
			printf $fh "%.4f %.4f %s %s %s\n", $t0, time(), $res->status,
				length $geo ? $geo : '-', $url;
			sleep 0.01;
		}

		close $fh;
		1;
	};

	POSIX::_exit($ok ? 0 : 1);
}

# "country from +Ns" for each change of the answers, for diagnostics
sub transitions {
	my ($t_start, $t_done, @a) = @_;
	my ($last, @s) = ('');
	for my $x (@a) {
		next if $x->{country} eq $last;
		$last = $x->{country};
		push @s, sprintf('%s from %+.2fs', $last, $x->{start} - $t_done);
	}
	return sprintf('action took %.2fs; ', $t_done - $t_start)
		. join(', ', @s);
}

sub stream_read {
	my ($file) = @_;
	my @a;
	for my $line (split /\n/, $r->read_file($file) // '') {
		my ($s, $e, $st, $c, $u) = split / /, $line;
		push @a, { start => $s, end => $e, status => $st, country => $c,
			url => $u };
	}
	return @a;
}

# runs $action while the stream goes on; checks the answers
sub under_traffic {
	my (%o) = @_;

	my $name = $o{name};
	my $file = "$rd/stream-$o{tag}.txt";
	my $pid = stream_start($file, $o{tag});

	sleep 0.5;
	my $t_start = time();
	my $t_done = $o{action}->();
	$t_done //= time();

	# two seconds for the switch, then a second to see it hold
	sleep 3;
	$r->write_file("$file.stop", '');
	waitpid($pid, 0);
	is($? >> 8, 0, "$name: the client ran");

	my @a = stream_read($file);
	my @before = grep { $_->{end} < $t_start } @a;
	my @late = grep { $_->{start} > $t_done + 2 } @a;
	my @after = grep { $_->{start} > $t_done } @a;

	cmp_ok(scalar @a, '>=', 50, "$name: a steady stream of requests ("
		. scalar(@a) . ')');
	my @failed = grep { $_->{status} != 200 } @a;
	is(scalar @failed, 0, "$name: every answer 200")
		or diag(join("\n", map { "$_->{start} $_->{status} $_->{url}" }
			@failed[0 .. ($#failed > 9 ? 9 : $#failed)]));

	my ($slowest) = sort { $b <=> $a } map { $_->{end} - $_->{start} } @a;
	cmp_ok($slowest // 0, '<', 1, "$name: no request waited (slowest "
		. sprintf('%.3fs', $slowest // 0) . ')');

	ok(@before && !(grep { $_->{country} ne $o{old} } @before),
		"$name: $o{old} before the replacement");

	my %seen;
	$seen{$_->{country}}++ for @a;
	my @other = grep { $_ ne $o{old} && $_ ne $o{new} } sort keys %seen;
	ok(!@other, "$name: only $o{old} or $o{new} answered throughout")
		or diag(json_encode(\%seen));

	cmp_ok(scalar @late, '>=', 10, "$name: requests after the deadline");
	my @stale = grep { $_->{country} ne $o{new} } @late;
	ok(@late && !@stale, "$name: $o{new} within two seconds of the "
		. "replacement") or diag(scalar(@stale) . " stale answers of "
			. scalar(@late) . ", the last "
			. (@stale ? sprintf('%.2f', $stale[-1]{start} - $t_done) : '-')
			. 's after it; ' . (grep { $_->{country} eq $o{new} } @after)
			. " of " . scalar(@after) . " $o{new} after the replacement; "
			. transitions($t_start, $t_done, @a));

	my ($first) = grep { $_->{start} > $t_done
		&& $_->{country} eq $o{new} } @a;
	diag(sprintf("$name: first $o{new} %.2fs after the replacement",
		$first->{start} - $t_done)) if $first && $ENV{TEST_NGINX_VERBOSE};

	# the events agree with the answers
	my %by_url = map { $_->{url} => $_ } @a;
	my @ev = $r->read_events(count => scalar @a, timeout => 3,
		match => { type => 'page_view', url => qr{/$o{tag}/} });
	is(scalar @ev, scalar @a, "$name: a page_view event for each request");
	my @mismatch = grep { !$by_url{$_->{url}}
		|| $_->{country} ne $by_url{$_->{url}}{country} } @ev;
	ok(!@mismatch, "$name: the events' country is the answer's")
		or diag(json_encode($mismatch[0]));
}

sub log_since {
	my ($offset) = @_;
	my $log = $r->read_file('error.log') // '';
	return substr($log, $offset);
}

sub wait_log {
	my ($offset, $re, $timeout) = @_;
	my $deadline = time() + $timeout;
	while (time() < $deadline) {
		return 1 if log_since($offset) =~ $re;
		sleep 0.05;
	}
	return 0;
}

# the client's visits: one profile for the whole stream
is($r->request(method => 'POST', path => '/civchat/init',
	headers => ['Content-Type' => 'application/json',
		'X-Forwarded-For' => $STREAM_IP, Cookie => "__ca__chat=$STREAM_KEY"],
	body => json_encode({ apiKey => 'TESTKEY' }))->header('X-Geo'),
	'c=CN', 'the first database: CN');

my %db = map { $_ => stream_db($_) } qw/JP KR US BR/;

under_traffic(name => 'atomic rename', tag => 'rename',
	old => 'CN', new => 'JP', action => sub {
		mmdb_replace_by_rename($DB, $db{JP});
		return time();
	});

under_traffic(name => 'overwritten in place', tag => 'inplace',
	old => 'JP', new => 'KR', action => sub {
		mmdb_rewrite_in_place($DB, $db{KR}, chunk => 4096,
			pause => 0.03);
		return time();
	});

ok(!$r->log_problems(), 'no alert or crash after the replacements');

# a corrupt file: the old data stays, an error names the file; then a
# good file in place is picked up

{
	my $off = length($r->read_file('error.log') // '');
	my ($t_err, $err_ok);

	under_traffic(name => 'corrupt, then good', tag => 'corrupt',
		old => 'KR', new => 'US', action => sub {
			mmdb_replace_by_rename($DB, mmdb_random(20000));
			$err_ok = wait_log($off,
				qr/\[error\][^\n]*civchat_geoip[^\n]*\Q$DB\E/, 3);
			sleep 0.6;
			mmdb_rewrite_in_place($DB, $db{US}, chunk => 8192,
				pause => 0.02);
			return time();
		});

	ok($err_ok, 'the corrupt file: an [error] naming the file')
		or diag(log_since($off));
	my @errors = log_since($off) =~ /(\[error\][^\n]*civchat_geoip)/g;
	cmp_ok(scalar @errors, '<=', 2,
		'logged once per worker, not on every check');
}

# the file deleted: the data stays; then put back with other data

{
	unlink($DB);
	sleep 1.2;
	my $res = $r->get('/geo', 'X-Forwarded-For' => $STREAM_IP);
	is($res->body, 'c=US', 'file deleted: the loaded data stays')
		or diag(join("\n", log_since(0) =~ /([^\n]*civchat_geoip[^\n]*)/g));

	mmdb_replace_by_rename($DB, $db{BR});
	my $deadline = time() + 2;
	my $c = '';
	while (time() < $deadline) {
		$c = $r->get('/geo', 'X-Forwarded-For' => $STREAM_IP)->body;
		last if $c eq 'c=BR';
		sleep 0.05;
	}
	is($c, 'c=BR', 'file put back: picked up within two seconds');
}

is_deeply([ $r->worker_pids() ], \@rworkers, 'the same workers throughout');

# graceful stop does not wait on the check timer

{
	my $t0 = time();
	$r->stop();
	cmp_ok(time() - $t0, '<', 5, 'nginx stops promptly (the check timer '
		. 'does not hold the workers)');
}

$r->check_log();

###############################################################################

# a good file written in place in the same second as the corrupt one
# it replaces (same size, so only the sub-second mtime differs) is
# still picked up

my $q = Civchat->new()->need_module();
my $qdb = $q->testdir() . '/City.mmdb';

mmdb_write($qdb, bytes => stream_db('NL', filler => 10));

$q->config(<<'EOF')->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone     users  1m;
    civchat_geoip    %%TESTDIR%%/City.mmdb  check=100ms;

    set_real_ip_from  127.0.0.1;
    real_ip_header    X-Forwarded-For;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location = /geo {
            return  200  "c=$civchat_country";
        }
    }
}

EOF

sub q_geo {
	return $q->get('/geo', 'X-Forwarded-For' => $STREAM_IP)->body;
}

sub q_wait_geo {
	my ($want, $seconds) = @_;
	my $deadline = time() + $seconds;
	my $c = '';
	while (time() < $deadline) {
		last if ($c = q_geo()) eq $want;
		sleep 0.05;
	}
	return $c;
}

# sleeps until just after the start of the next second; returns it
sub next_second {
	sleep(1 - (time() - int(time())) + 0.02);
	return int(time());
}

SKIP: {
	is(q_geo(), 'c=NL', 'same second: the first data');

	my $next = stream_db('BE', filler => 10);

	my $sec = next_second();

	my $off = length($q->read_file('error.log') // '');
	mmdb_rewrite_in_place($qdb, mmdb_random(length $next), pause => 0);

	my $deadline = time() + 0.9;
	my $err = 0;
	while (time() < $deadline) {
		my $log = substr($q->read_file('error.log') // '', $off);
		last if $err = $log =~ /\[error\][^\n]*civchat_geoip/;
		sleep 0.01;
	}

	skip 'the corrupt file was not rejected within its second; cannot '
		. 'build the case', 2 unless $err && int(time()) == $sec;

	mmdb_rewrite_in_place($qdb, $next, pause => 0);
	skip 'the good file was not written within the same second', 2
		unless (stat $qdb)[9] == $sec;

	is(q_geo(), 'c=NL', 'same second: the old data while corrupt');

	is(q_wait_geo('c=BE', 2), 'c=BE', 'same second: the good file is '
		. 'picked up within two seconds');
}

# overwritten in place without truncating it (as dd conv=notrunc does):
# the writer stalls for longer than the check interval, so the worker
# may load the half-written file, but the finished file must be loaded
# once it has stood still

SKIP: {
	mmdb_replace_by_rename($qdb, stream_db('FR', filler => 10));
	is(q_wait_geo('c=FR', 2), 'c=FR', 'not truncated: renamed in first');

	my $next = stream_db('IT', filler => 10);
	my $at = index($next, 'City of IT');
	ok($at > 0, 'not truncated: the record is in the second part');

	my $sec = next_second();

	open(my $fh, '+<:raw', $qdb) or die "$qdb: $!\n";
	syswrite($fh, substr($next, 0, $at));
	sleep 0.6;
	syswrite($fh, substr($next, $at));
	close $fh;

	skip 'the rewrite did not stay within one second', 1
		unless (stat $qdb)[9] == $sec;

	is(q_wait_geo('c=IT', 2), 'c=IT', 'not truncated: the finished file is '
		. 'picked up within two seconds');
}

$q->stop();
$q->check_log();

###############################################################################

$t->done_testing();

###############################################################################
