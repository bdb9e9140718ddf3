#!/usr/bin/perl

# (C) civchat developers

# Tests for the Debian package: "make deb" builds libnginx-mod-http-civchat
# from the current sources (into this test's directory), which is
# installed into the machine's own nginx with apt-get: the module, its
# mod-http-civchat.conf enabled in /etc/nginx/modules-enabled like
# Debian's own module packages, /var/lib/civchat and /var/spool/civchat
# owned by www-data, a dependency on the nginx ABI it was built for.  Then
# "nginx -t" of the stock /etc/nginx/nginx.conf and of conf.example, and
# the packaged nginx (/usr/sbin/nginx, its workers www-data) on a spare
# loopback port with the enabled snippet: init answers, the workers save
# the state in /var/lib/civchat.  Last the package is purged and the
# machine is as it was (the files of nginx's directories, their owners
# and modes, nginx running or not).
#
# Needs root, apt-get and Debian's nginx; skipped without them, or when
# the package is installed already (it is not touched then).  Runs of
# this file on one machine take turns (a lock in /run/lock).

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';

# the packaged nginx, whatever nginx the rest of the suite runs
BEGIN { $ENV{TEST_NGINX_BINARY} = '/usr/sbin/nginx'; }

use Civchat qw/is_key/;

use Fcntl qw/:flock/;
use File::Find qw/find/;
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $pkg = 'libnginx-mod-http-civchat';

plan(skip_all => 'needs root (apt-get, dpkg)') if $> != 0;
plan(skip_all => 'no Debian nginx (/usr/sbin/nginx, nginx-dev)')
	unless -x '/usr/sbin/nginx' && -d '/usr/share/nginx/src';
plan(skip_all => 'under valgrind: the packaged nginx is not the one '
	. 'tested') if $ENV{TEST_NGINX_VALGRIND};

open(my $lock, '>', '/run/lock/civchat-deb-test.lock')
	or die "lock: $!\n";
flock($lock, LOCK_EX) or die "lock: $!\n";

sub installed {
	return `dpkg-query -W -f='\${Status}' $pkg 2>/dev/null`
		=~ /install ok installed/;
}

plan(skip_all => "$pkg is installed on this machine: left alone")
	if installed();

my $t = Civchat->new(module => 0);
my $d = $t->testdir();
my $repo = $t->repo();

sub apt {
	my $out = `DEBIAN_FRONTEND=noninteractive apt-get -y -q \\
		-o DPkg::Lock::Timeout=300 --no-install-recommends @_ 2>&1`;
	return ($? >> 8, $out);
}

# what the package may touch: every path under these, with owner and mode

my @watched = qw{/etc/nginx /usr/lib/nginx /usr/share/nginx/modules-available
	/var/lib/civchat /var/spool/civchat /var/log/nginx};

sub snapshot {
	my %s;

	for my $top (@watched) {
		next unless -e $top || -l $top;
		find({ no_chdir => 1, wanted => sub {
			my @st = lstat($_);
			my $what = -l _ ? 'link ' . readlink($_) : -d _ ? 'dir'
				: 'file';
			$s{$_} = sprintf('%s %o %d:%d', $what, $st[2] & 07777,
				$st[4], $st[5]);
		} }, $top);
	}

	return \%s;
}

sub nginx_running {
	my $pid = $t->read_file('/run/nginx.pid') // '';
	return $pid =~ /(\d+)/ && kill(0, $1) ? 1 : 0;
}

my $before = snapshot();
my $running = nginx_running();
my $log_existed = -e '/var/log/nginx/civchat.ndjson';

# the package, built from the sources as they are

my $out = `make -C $repo deb BUILD=$d/build 2>&1`;
is($? >> 8, 0, 'make deb') or diag($out);

my ($deb) = glob("$d/build/deb/${pkg}_*.deb");
ok($deb && -s $deb, 'the .deb is built') or diag($out);
$deb //= "$d/none.deb";

my $control = `dpkg-deb -f $deb Depends 2>&1`;
my $abi = ($t->read_file('/usr/share/nginx/src/debian/'
	. 'libnginx-mod.abisubstvars') // '') =~ /^nginx:abi=(\S+)/m ? $1
	: 'no abi';
like($control, qr/(^|, )\Q$abi\E(,|$)/m,
	"it depends on the nginx ABI it was built for ($abi)");
like(`dpkg -s nginx 2>/dev/null`, qr/^Provides:.*\b\Q$abi\E\b/m,
	'which the installed nginx provides');

# install

my $did_install;

END {
	if ($did_install && installed()) {
		local $?;
		apt('purge', $pkg);
	}
}

my $rc;
($rc, $out) = apt('install', $deb);
$did_install = 1;
is($rc, 0, 'apt-get install the .deb') or diag($out);
ok(installed(), "$pkg is installed");

ok(-f '/usr/lib/nginx/modules/ngx_http_civchat_module.so',
	'the module is in /usr/lib/nginx/modules');
is($t->read_file('/usr/share/nginx/modules-available/mod-http-civchat.conf'),
	"load_module modules/ngx_http_civchat_module.so;\n",
	'mod-http-civchat.conf in /usr/share/nginx/modules-available');
is(readlink('/etc/nginx/modules-enabled/50-mod-http-civchat.conf') // '',
	'/usr/share/nginx/modules-available/mod-http-civchat.conf',
	'enabled in /etc/nginx/modules-enabled, as Debian\'s modules are');

for my $dir (qw{/var/lib/civchat /var/spool/civchat}) {
	my @st = stat($dir);
	ok(@st && (getpwuid($st[4]))[0] eq 'www-data'
		&& (getgrgid($st[5]))[0] eq 'www-data',
		"$dir is www-data's");
}

# nginx -t: the machine's nginx.conf (which includes modules-enabled),
# and conf.example as it is

$out = `/usr/sbin/nginx -t 2>&1`;
ok($? == 0 && $out =~ /test is successful/,
	'nginx -t of /etc/nginx/nginx.conf with the module enabled')
	or diag($out);

$out = `/usr/sbin/nginx -t -c $repo/conf.example 2>&1`;
ok($? == 0 && $out =~ /test is successful/,
	'nginx -t -c conf.example on this machine') or diag($out);

unlink('/var/log/nginx/civchat.ndjson') unless $log_existed;

# the packaged nginx on a spare port, with the package's snippet and
# directories: init answers, and the workers (www-data) save the state

my $state = "/var/lib/civchat/deb-test-$$.state";

# the harness gives nginx this directory as its prefix, where
# "load_module modules/..." looks: a link to the modules, as Debian's
# prefix /usr/share/nginx has
symlink('/usr/lib/nginx/modules', "$d/modules");

$t->config(<<"END");

include /etc/nginx/modules-enabled/*.conf;

user www-data;
pid $d/nginx.pid;
error_log $d/error.log info;
daemon on;
master_process on;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  1m  state=$state  state_interval=1s;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  SITEKEY;
            civchat_store    file=$d/events.ndjson flush=100ms;
        }
    }
}
END

my ($ok, $err) = $t->_start();
ok($ok, 'the packaged nginx starts with the module') or diag($err);

SKIP: {
	skip 'nginx did not start', 5 unless $ok;

	my $r = $t->post_json('/civchat/init', { apiKey => 'SITEKEY',
		url => 'http://localhost/' });
	is($r->status, 200, 'init answers');
	ok(is_key($r->key // ''), 'with a key');

	my $deadline = time() + 10;
	sleep 0.1 while !-s $state && time() < $deadline;
	ok(-s $state, 'the workers save the state in /var/lib/civchat');
	my @st = stat($state);
	is(@st ? (getpwuid($st[4]))[0] : '', 'www-data', 'as www-data');

	$r = $t->get('/civchat/widget.js', 'Accept-Encoding' => 'br');
	is($r->header('Content-Encoding'), 'br',
		'widget.js in brotli from the package');
}

$t->stop();
unlink($state, glob("$state.*"));

ok(!grep({ /\[(alert|crit|emerg)\]/ } split /\n/,
	$t->read_file('error.log') // ''), 'no alert in error.log')
	or diag($t->read_file('error.log'));

# remove: the machine as it was

($rc, $out) = apt('purge', $pkg);
is($rc, 0, 'apt-get purge') or diag($out);
ok(!installed(), "$pkg is gone");
$did_install = 0;

my $after = snapshot();
my %seen;
my @diff = grep { !$seen{$_}++ && ($before->{$_} // '-')
	ne ($after->{$_} // '-') } sort(keys %$before, keys %$after);
is(join("\n", map { "$_: " . ($before->{$_} // '-') . ' -> '
	. ($after->{$_} // '-') } @diff), '',
	'every file of nginx\'s directories as before');
is(nginx_running(), $running, 'the system nginx running or not as before');

done_testing();

###############################################################################
