#!/usr/bin/perl

# (C) civchat developers

# The widget SDK (widget.js) in a real browser: headless Debian chromium
# driven by playwright-core (t/browser/run.js), against nginx with the
# built module.  This file starts nginx with the test pages of
# t/browser/pages/ (a second server on another loopback port is the
# "other site" of the cross-origin case), checks the served script (the
# minified build, up to date, its endpoint base written in, at most 6 KB
# gzipped), then runs the browser scenarios, each of which prints one
# JSON line per check, turned here into ok / not ok.  The server API
# location (/civchat-api/) lets them send messages and payloads to a
# visitor's live channel; one scenario reloads nginx (the master's pid
# is passed) to see the browser reconnect.  The demo screenshot is kept
# in build/browser/.
#
# Needs node, /usr/bin/chromium and t/browser/node_modules (make test
# installs them: util/deps.sh and npm ci); skipped without them.
# CIVCHAT_BROWSER_ONLY=name,... runs only the scenarios so named.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_decode/;

use File::Find qw/find/;
use File::Path qw/make_path/;
use IO::Uncompress::Gunzip qw/gunzip/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();
my $repo = $t->repo();
my $src = $t->read_file("$repo/widget/widget.js");

my $chromium = $ENV{CIVCHAT_CHROMIUM} // '/usr/bin/chromium';
my $node = `command -v node 2>/dev/null`;
chomp $node;

plan(skip_all => 'no node (make deps installs it)') unless $node;
plan(skip_all => "no chromium at $chromium (make deps installs it)")
	unless -x $chromium;
plan(skip_all => 'no t/browser/node_modules/playwright-core '
	. '(make test runs npm ci)')
	unless -d "$repo/t/browser/node_modules/playwright-core";

# the pages, with their %%PORT_n%% written in, under TESTDIR/html

my $pages = "$repo/t/browser/pages";

find({ no_chdir => 1, wanted => sub {
	return unless -f $_;
	(my $rel = $_) =~ s{^\Q$pages\E/}{};
	my $dir = $t->testdir() . '/html/' . $rel;
	$dir =~ s{/[^/]+$}{};
	make_path($dir);
	$t->write_file_expand("html/$rel", $t->read_file($_));
} }, $pages);

# a site's own copies of the script, as sites keep them (README,
# "Self-hosted copy")

make_path($t->testdir() . '/html/assets/js');
$t->write_file("html/assets/js/$_", $t->read_file("$repo/widget/$_"))
	for qw/widget.js widget.min.js/;

$t->config(<<'EOF')->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    include  /etc/nginx/mime.types;

    civchat_zone  users  4m;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        root  %%TESTDIR%%/html;

        location /civchat/ {
            civchat               zone=users;
            civchat_api_key       TESTKEY OTHERKEY DEMOKEY;
            civchat_store         file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_allow_origin  http://localhost:%%PORT_1%%;
            civchat_attribute     plan  fixed;

            gzip        on;
            gzip_types  application/javascript;
        }

        location /civchat-api/ {
            civchat_api        zone=users;
            civchat_api_token  browser-test-token-0123456789;
            civchat_store      file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location /civchat-g/ {
            civchat               zone=users;
            civchat_api_key       TESTKEY;
            civchat_store         file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_widget_state  standard;
            civchat_greeting      "<img src=x onerror=window.__xss=1><b>Hi</b> & welcome";
        }

        location = /csp.html {
            add_header  Content-Security-Policy  "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; require-trusted-types-for 'script'; trusted-types 'none'";
        }

        location /demo/ {
            alias  %%REPO%%/demo/;
        }
    }

    server {
        listen       127.0.0.1:%%PORT_1%%;
        server_name  localhost;

        root  %%TESTDIR%%/html;
    }
}

EOF

###############################################################################

# the served script: esbuild's minified widget/widget.min.js with the
# endpoint base written in once; widget.min.js, its source map and the
# header compiled into the module are what util/gen-widget.pl makes from
# widget/widget.js now (the browser scenarios below then run the minified
# script)

my $base = '/civchat/';
my $min = $t->read_file("$repo/widget/widget.min.js");
my $r = $t->get('/civchat/widget.js');

is($r->status, 200, 'widget.js served');
like($r->header('Content-Type') // '', qr{javascript}, 'widget.js type');

(my $want = $min // '') =~ s/%%CIVCHAT_BASE%%/$base/;
ok(defined $min && $r->body eq $want,
	'served widget.js is widget/widget.min.js with the base')
	or diag('rebuild the module (make): the served script differs');

my $gen = $t->testdir() . '/gen';
mkdir($gen);
system('perl', "$repo/util/gen-widget.pl", "$repo/widget/widget.js",
	"$gen/widget_js.h", "$gen/widget.min.js") == 0
	or diag('util/gen-widget.pl failed');

for my $f (['widget_js.h', 'src/ngx_http_civchat_widget_js.h'],
	['widget.min.js', 'widget/widget.min.js'],
	['widget.min.js.map', 'widget/widget.min.js.map'])
{
	ok(($t->read_file("$gen/$f->[0]") // 'a')
		eq ($t->read_file("$repo/$f->[1]") // 'b'),
		"$f->[1] is up to date with widget/widget.js (make)");
}

# the map leads back to the readable source beside it

my $map = json_decode($t->read_file("$repo/widget/widget.min.js.map")
	// '{}');
is_deeply([$map->{sources}, $map->{file}], [['widget.js'], 'widget.min.js'],
	'the source map maps widget.min.js to widget.js');
cmp_ok(length($min // ''), '<', length($src // '') / 2,
	'minified: under half the source (' . length($min // '') . ' of '
	. length($src // '') . ' bytes)');

# gzipped as served, at most 6 KB, in this location where the site has
# nginx's own gzip on too: one encoding, of the same script

$r = $t->get('/civchat/widget.js', 'Accept-Encoding' => 'gzip');
is($r->header('Content-Encoding'), 'gzip', 'widget.js gzipped');
cmp_ok(length($r->body), '<=', 6144, 'widget.js at most 6 KB gzipped as '
	. 'served: ' . length($r->body) . ' bytes');
my $plain = '';
gunzip(\$r->body => \$plain);
ok($plain eq $want, 'gzipped once: it unzips to the script');

###############################################################################

# the browser scenarios

my $shots = "$repo/build/browser";
make_path($shots);

$ENV{CIVCHAT_ORIGIN} = 'http://127.0.0.1:' . $t->port(0);
$ENV{CIVCHAT_CROSS} = 'http://localhost:' . $t->port(1);
$ENV{CIVCHAT_STORE} = $t->testdir() . '/events.ndjson';
$ENV{CIVCHAT_SHOTS} = $shots;
$ENV{CIVCHAT_CHROMIUM} = $chromium;
$ENV{CIVCHAT_API} = 'http://127.0.0.1:' . $t->port(0) . '/civchat-api/';
$ENV{CIVCHAT_API_TOKEN} = 'browser-test-token-0123456789';
$ENV{CIVCHAT_NGINX_PID} = $t->master_pid();

my $timeout = $ENV{CIVCHAT_BROWSER_TIMEOUT} // 300;
my ($done, $checks) = (undef, 0);

my $pid = open(my $fh, '-|', "exec '$node' '$repo/t/browser/run.js' 2>&1")
	// die "cannot run node: $!\n";

eval {
	local $SIG{ALRM} = sub { die "timeout\n" };
	alarm($timeout);

	while (my $line = <$fh>) {
		chomp $line;
		my $j = $line =~ /^\{/ ? json_decode($line) : undef;

		if (ref $j ne 'HASH') {
			diag($line) if length $line;
			next;
		}

		if (defined $j->{done}) {
			$done = $j->{done};
			next;
		}

		$checks++;
		ok($j->{ok}, $j->{name}) or diag($j->{diag} // '');
	}

	alarm(0);
};

if ($@) {
	kill('TERM', $pid);
	fail("browser scenarios ran in time ($timeout s)");
}

close $fh;
my $rc = $? >> 8;

ok(defined $done && $checks == $done, "run.js finished: $checks checks")
	or diag("run.js exited with $rc");
SKIP: {
	my @only = split /,/, $ENV{CIVCHAT_BROWSER_ONLY} // '';
	skip('the demo screenshot scenario not run (CIVCHAT_BROWSER_ONLY)', 1)
		if @only && !grep { $_ eq 'demo screenshot' } @only;
	ok(-s "$shots/demo-open.png", 'demo screenshot kept in build/browser/');
}

$t->done_testing();

###############################################################################
