#!/usr/bin/perl

# (C) civchat developers

# Tests for the README's "Installing into your nginx" by hand: the shell
# blocks marked "<!-- t/install.t: step -->" run as written, one after
# the other, in a scratch prefix instead of / (the paths under
# /etc/nginx, /usr/lib/nginx, /var/lib/civchat, /var/spool/civchat and
# /var/log/nginx are moved into it, "sudo" is dropped, "make" is left to
# the suite: the module it built is installed), against a copy of the
# machine's /etc/nginx/nginx.conf (Debian's: user www-data, includes
# modules-enabled, conf.d and sites-enabled) whose default site is a
# server on a spare port holding the block marked "server".  "nginx -t"
# and "systemctl reload nginx" are the suite's nginx with that prefix
# and configuration (the reload starts it).  Then init must answer with a
# key, and the state file must be saved by the www-data workers (the
# test sets state_interval=1s on civchat_zone so as not to wait 10s).
#
# Needs root (www-data workers, install -o) and /etc/nginx/nginx.conf.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_decode is_key/;

use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

plan(skip_all => 'needs root (workers as www-data, install -o)') if $> != 0;
plan(skip_all => 'no /etc/nginx/nginx.conf to start from')
	unless -f '/etc/nginx/nginx.conf' && getpwnam('www-data');
plan(skip_all => 'under valgrind: nginx runs outside the harness here')
	if $ENV{TEST_NGINX_VALGRIND};

my $d = $t->testdir();
my $root = "$d/root";
my $port = $t->port(0);
my $nginx = $t->binary();
my $readme = $t->read_file($t->repo() . '/README.md') // '';

# the marked blocks of the README

my (@steps, @server);

my $block = qr{^<!--\ t/install\.t:\ (step|server)\b[^\n]*-->\n
	```\w*\n(.*?)^```$}msx;

while ($readme =~ /$block/g) {
	push @{$1 eq 'step' ? \@steps : \@server}, $2;
}

ok(@steps >= 3, 'the README marks its install steps (' . @steps . ')');
is(scalar @server, 1, 'and the location for the server block');

my $moved = qr{(?<![\w/.])/(etc/nginx|usr/lib/nginx|var/lib/civchat
	|var/spool/civchat|var/log/nginx|run/nginx\.pid)\b}x;

sub scratch {
	my ($text) = @_;
	$text =~ s{$moved}{$root/$1}g;
	return $text;
}

# the scratch prefix: Debian's configuration and the directories that a
# machine with the nginx package has; no /usr/lib/nginx/modules (it is
# the install step that makes it), and "modules/" of the prefix leading
# there, as /usr/share/nginx/modules does

system('mkdir', '-p', map { "$root/$_" } qw{etc/nginx/modules-enabled
	etc/nginx/conf.d etc/nginx/sites-enabled var/log/nginx run tmp});
system('cp', '/etc/nginx/mime.types', "$root/etc/nginx/");
symlink("$root/usr/lib/nginx/modules", "$root/modules");

my $conf = scratch($t->read_file('/etc/nginx/nginx.conf'));

# where the workers keep request bodies and the like, not the machine's
my $temp = join('', map { "\t${_}_temp_path $root/tmp/$_;\n" }
	qw/client_body proxy fastcgi uwsgi scgi/);
ok($conf =~ s{^(http\s*\{\n)}{$1$temp}m, 'nginx.conf has an http block');

$t->write_file("$root/etc/nginx/nginx.conf", $conf);

$t->write_file("$root/etc/nginx/sites-enabled/default", scratch(<<"END"));
server {
    listen       127.0.0.1:$port;
    server_name  localhost;

@{[ $server[0] // '' ]}
}
END

# the steps as a shell script

my $module = $t->module_path();
my $script = "set -e\n";

for my $step (@steps) {
	my $s = scratch($step);
	$s =~ s/^make\b[^\n]*\n//mg;
	$s =~ s{\bbuild/ngx_http_civchat_module\.so\b}{$module}g;
	$s =~ s/\bsudo //g;
	$s =~ s{\bnginx -t\b}{$nginx -p $root/ -c $root/etc/nginx/nginx.conf -t}g;
	$s =~ s{\bsystemctl reload nginx\b}
		{$nginx -p $root/ -c $root/etc/nginx/nginx.conf}g;
	$s =~ s{http://localhost/}{http://127.0.0.1:$port/}g;
	$s =~ s{^(civchat_zone\s[^;]*state=[^;]*);}{$1 state_interval=1s;}mg;
	$script .= $s;
}

$t->write_file('install.sh', $script);

END {
	my $pid = $t && $t->read_file("$root/run/nginx.pid");
	if ($pid && $pid =~ /(\d+)/) {
		local $?;
		kill('TERM', $1);
	}
}

my $out = `cd $d && sh install.sh 2>&1`;
is($? >> 8, 0, 'the README\'s steps run') or diag("$script\n$out");

like($out, qr/test is successful/, 'nginx -t of the installed module');

my ($json) = $out =~ /(\{"key".*\})\s*$/s;
my $j = eval { json_decode($json // '') } // {};
ok(is_key($j->{key} // ''), 'init answers a key') or diag($out);

ok(-f "$root/usr/lib/nginx/modules/ngx_http_civchat_module.so",
	'the module is where the steps put it');
my @st = stat("$root/var/lib/civchat");
is(@st ? (getpwuid($st[4]))[0] : '', 'www-data',
	'/var/lib/civchat is www-data\'s');

# the workers save the zone in /var/lib/civchat, every state_interval
# (1s here) while the zone changes

my $state = "$root/var/lib/civchat/civchat.state";
my $deadline = time() + 5;
sleep 0.1 while !-s $state && time() < $deadline;
@st = stat($state);
is(@st ? (getpwuid($st[4]))[0] : '', 'www-data',
	'the workers (www-data) save the state in /var/lib/civchat');

my $pid = $t->read_file("$root/run/nginx.pid") // '';
if ($pid =~ /(\d+)/) {
	kill('QUIT', $1);
	my $deadline = time() + 10;
	sleep 0.05 while kill(0, $1) && time() < $deadline;
}

ok(-s $state, 'and when nginx stops');

my $log = $t->read_file("$root/var/log/nginx/error.log") // '';
unlike($log, qr/\[(alert|crit|emerg)\]|Permission denied/,
	'no error in error.log') or diag($log);

done_testing();

###############################################################################
