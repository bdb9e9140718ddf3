#!/usr/bin/perl

# (C) civchat developers

# Tests for the demo of "make run" (util/run.sh) as it is: started on a
# free port with the suite's nginx and module, it serves the demo page
# and widget.js, and a headless browser's User-Agent (HeadlessChrome, on
# the bot list) gets a key and a profile there, so that a screenshot of
# the demo shows the real widget.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;

use POSIX qw/setpgid/;
use Time::HiRes qw/sleep/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();
my $d = $t->testdir();
my $port = $t->port(0);

my $pid = fork() // die "fork: $!\n";

if ($pid == 0) {
	setpgid(0, 0);
	open(STDOUT, '>', "$d/run.log");
	open(STDERR, '>&', \*STDOUT);
	$ENV{PORT} = $port;
	$ENV{RUN} = "$d/run";
	$ENV{MODULE} = $t->module_path();
	$ENV{NGINX} = $t->binary();
	exec('sh', $t->repo() . '/util/run.sh') or die "exec: $!\n";
}

END {
	if ($pid) {
		local $?;
		kill('TERM', -$pid);
		waitpid($pid, 0);
	}
}

ok($t->waitforsocket("127.0.0.1:$port"), 'make run\'s nginx listens')
	or diag($t->read_file('run.log'));

like($t->read_file('run.log') // '', qr{civchat demo: http://127\.0\.0\.1},
	'it says where the demo is');

my $r = $t->get('/');
is($r->status, 200, 'the demo page');
like($r->body, qr{<script src="/civchat/widget\.js"></script>},
	'with the snippet');

$r = $t->get('/civchat/widget.js');
is($r->status, 200, 'widget.js');

my $headless = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 '
	. '(KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36';

$r = $t->post_json('/civchat/init', { apiKey => 'DEMOKEY',
	url => "http://127.0.0.1:$port/" }, 'User-Agent' => $headless);
is($r->status, 200, 'init from a headless browser');
ok(defined $r->json && Civchat::is_key($r->json->{key} // ''),
	'a headless browser gets a key in the demo (a screenshot shows the '
	. 'widget)') or diag($r->body);
isnt($r->json && $r->json->{tracking} // '', 'bot', 'and is not a bot there');

$t->done_testing();

###############################################################################
