#!/usr/bin/perl

# (C) civchat developers

# Tests for the configuration: bad directives make "nginx -t" fail with a
# clear [emerg] naming the problem; good ones pass; conf.example passes
# "nginx -t" once its paths point into the test directory, as it is (no
# GeoIP database, as on a stock machine) and with its commented
# civchat_geoip line enabled.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

# a config with pieces added at the http, server and location levels

sub conf {
	my (%o) = @_;

	my $http = $o{http} // "civchat_zone  users  1m;";
	my $server = $o{server} // '';
	my $secret = exists $o{secret} ? $o{secret}
		: 'civchat_identity_secret  config-test-secret-0123456789;';
	my $loc = $o{location} // "civchat zone=users;\n"
		. "            civchat_api_key TESTKEY;";

	return <<"EOF";
%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    $http

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        $secret
        $server

        location /civchat/ {
            $loc
        }
    }
}
EOF
}

my $base = "civchat zone=users;\n            civchat_api_key TESTKEY;";

my @good = (
	[ 'baseline', conf() ],
	[ 'every directive', conf(location => <<'EOF') ],
civchat zone=users;
            civchat_api_key TESTKEY OTHER;
            civchat_store file=%%TESTDIR%%/ev.ndjson buffer=32k flush=500ms;
            civchat_cookie_name vid;
            civchat_cookie_domain example.org;
            civchat_cookie_max_age 30d;
            civchat_cookie_httponly off;
            civchat_unified_identification on;
            civchat_authorize_by_email on;
            civchat_attribute plan fixed;
            civchat_attribute tags multi;
            civchat_attribute n integer;
            civchat_attribute f float;
            civchat_attribute b boolean;
            civchat_attribute d date;
            civchat_attribute dt datetime;
            civchat_attribute s string;
            civchat_body_limit 128k;
            civchat_max_attributes 50;
            civchat_max_value_length 2k;
            civchat_max_array_items 10;
            civchat_allow_origin https://a.example.org https://b.example.org;
            civchat_widget_state expanded;
            civchat_greeting "Hello there";
            civchat_widget_base https://www.example.org/civchat/;
            civchat_widget_max_age 5m;
            civchat_session_timeout 1h;
            civchat_anonymize_ip on;
            civchat_respect_gpc off;
            civchat_bot_filter off;
            civchat_stream_limit per_key=2 per_address=500;
            civchat_stream_timeout 2m;
EOF
	[ 'the identity secret from a file', conf(secret => '',
		location => "$base\n            "
			. 'civchat_identity_secret file=%%TESTDIR%%/secret;') ],
	[ 'stream limits off', conf(location => "$base\n            "
		. 'civchat_stream_limit per_key=0 per_address=0;') ],
	[ 'state file and interval', conf(http => 'civchat_zone users 1m '
		. 'state=%%TESTDIR%%/s.state state_interval=30s;') ],
	[ 'the minimum zone size', conf(http => 'civchat_zone users 64k;') ],
	[ 'api key and store at the http level', conf(
		http => "civchat_zone users 1m;\n    civchat_api_key TESTKEY;\n"
			. "    civchat_store file=%%TESTDIR%%/ev.ndjson;",
		location => 'civchat zone=users;') ],
	[ 'api key at the server level', conf(
		server => 'civchat_api_key TESTKEY;',
		location => 'civchat zone=users;') ],
	[ 'store off', conf(location => "$base\n            civchat_store off;") ],
	[ 'allow origin *',
		conf(location => "$base\n            civchat_allow_origin *;") ],
	[ 'two zones, two locations', conf(
		http => "civchat_zone a 1m;\n    civchat_zone b 1m;",
		location => "civchat zone=a;\n            civchat_api_key K;\n"
			. "        }\n        location /other/ {\n"
			. "            civchat zone=b;\n            civchat_api_key K;") ],
	[ 'a zone nobody uses', conf(http => "civchat_zone users 1m;\n"
		. "    civchat_zone spare 1m;") ],
	[ 'http store with every parameter', conf(location => "$base\n"
		. "            civchat_store http://127.0.0.1:8123/?q=1 "
		. "batch=10 batch_size=64k flush=2s timeout=3s "
		. "keepalive_timeout=1s retry=1m spool=%%TESTDIR%%/spool "
		. "spool_size=10m on_full=drop;") ],
	[ 'http store, a connection per batch', conf(location => "$base\n"
		. "            civchat_store http://127.0.0.1:8123/ "
		. "keepalive_timeout=0 spool=%%TESTDIR%%/spool;") ],
);

$t->write_file('secret', "a-secret-in-a-file-0123456789\n");
$t->write_file('short', "short\n");

for my $g (@good) {
	my ($name, $text) = @$g;
	my ($rc, $out) = $t->test_config($text, 'good.conf');
	is($rc, 0, "good: $name") or diag($out);
	unlike($out, qr/\[(emerg|alert|crit|warn)\]/, "good: $name: no warning")
		or diag($out);
}

# each bad config: nginx -t fails with an [emerg] that matches (the
# value, or for nginx's standard number, size and time parsers, which
# print no value, the directive); with the file and line, except for
# files opened when the configuration is applied (as nginx's own
# access_log)

my @bad = (
	[ 'unknown zone', conf(location => "civchat zone=nope;\n"
		. "            civchat_api_key TESTKEY;"), qr/nope/ ],
	[ 'zone too small', conf(http => 'civchat_zone users 10k;'),
		qr/users|small|minimum|64k/ ],
	[ 'zone size not a size', conf(http => 'civchat_zone users big;'),
		qr/big|size/ ],
	[ 'zone size missing', conf(http => 'civchat_zone users;'),
		qr/civchat_zone/ ],
	[ 'zone defined twice', conf(http => "civchat_zone users 1m;\n"
		. "    civchat_zone users 2m;"), qr/users/ ],
	[ 'zone state_interval bad', conf(http => 'civchat_zone users 1m '
		. 'state=%%TESTDIR%%/s state_interval=soon;'), qr/soon|interval/ ],
	[ 'zone unknown parameter', conf(http => 'civchat_zone users 1m '
		. 'colour=red;'), qr/colour/ ],
	[ 'zone state empty', conf(http => 'civchat_zone users 1m state=;'),
		qr/state/ ],
	[ 'civchat without zone=', conf(location => "civchat users;\n"
		. "            civchat_api_key TESTKEY;"), qr/users|zone/ ],
	[ 'civchat zone= empty', conf(location => "civchat zone=;\n"
		. "            civchat_api_key TESTKEY;"), qr/zone/ ],
	[ 'civchat without api key', conf(location => 'civchat zone=users;'),
		qr/civchat_api_key|api.?key/i ],
	[ 'civchat in http', conf(http => "civchat_zone users 1m;\n"
		. "    civchat zone=users;"), qr/not allowed here/ ],
	[ 'civchat_zone in a location', conf(location =>
		"$base\n            civchat_zone other 1m;"), qr/not allowed here/ ],
	[ 'civchat twice', conf(location => "$base\n            civchat zone=users;"),
		qr/duplicate|civchat/ ],
	[ 'attribute type unknown', conf(location =>
		"$base\n            civchat_attribute plan money;"), qr/money/ ],
	[ 'attribute without type', conf(location =>
		"$base\n            civchat_attribute plan;"), qr/civchat_attribute/ ],
	[ 'store bogus', conf(location =>
		"$base\n            civchat_store somewhere;"), qr/somewhere/ ],
	[ 'store flush bad', conf(location => "$base\n            "
		. "civchat_store file=%%TESTDIR%%/e flush=often;"), qr/often|flush/ ],
	[ 'store buffer bad', conf(location => "$base\n            "
		. "civchat_store file=%%TESTDIR%%/e buffer=lots;"), qr/lots|buffer/ ],
	[ 'store keepalive_timeout bad', conf(location => "$base\n            "
		. "civchat_store http://127.0.0.1:8123/ keepalive_timeout=idle;"),
		qr/keepalive_timeout=idle/ ],
	[ 'store timeout 0', conf(location => "$base\n            "
		. "civchat_store http://127.0.0.1:8123/ timeout=0;"),
		qr/timeout=0/ ],
	[ 'store in a missing directory', conf(location => "$base\n            "
		. "civchat_store file=/nonexistent/dir/e.ndjson;"),
		qr{/nonexistent/dir/e\.ndjson}, 'no line' ],
	[ 'widget state unknown', conf(location =>
		"$base\n            civchat_widget_state huge;"), qr/huge/ ],
	[ 'cookie max age bad', conf(location =>
		"$base\n            civchat_cookie_max_age forever;"),
		qr/forever|"civchat_cookie_max_age" directive invalid/ ],
	[ 'unified not on/off', conf(location =>
		"$base\n            civchat_unified_identification maybe;"),
		qr/maybe/ ],
	[ 'authorize not on/off', conf(location =>
		"$base\n            civchat_authorize_by_email yes;"), qr/yes/ ],
	[ 'httponly not on/off', conf(location =>
		"$base\n            civchat_cookie_httponly 1;"), qr/"1"|on.*off/ ],
	[ 'body limit bad', conf(location =>
		"$base\n            civchat_body_limit huge;"),
		qr/huge|"civchat_body_limit" directive invalid/ ],
	[ 'max attributes bad', conf(location =>
		"$base\n            civchat_max_attributes many;"),
		qr/many|"civchat_max_attributes" directive invalid/ ],
	[ 'max value length bad', conf(location =>
		"$base\n            civchat_max_value_length long;"),
		qr/long|"civchat_max_value_length" directive invalid/ ],
	[ 'max array items bad', conf(location =>
		"$base\n            civchat_max_array_items -1;"),
		qr/-1|"civchat_max_array_items" directive invalid/ ],
	[ 'session timeout bad', conf(location =>
		"$base\n            civchat_session_timeout later;"),
		qr/later|"civchat_session_timeout" directive invalid/ ],
	[ 'widget max age bad', conf(location =>
		"$base\n            civchat_widget_max_age old;"),
		qr/old|"civchat_widget_max_age" directive invalid/ ],
	[ 'allow origin without value', conf(location =>
		"$base\n            civchat_allow_origin;"), qr/civchat_allow_origin/ ],
	[ 'api key without value', conf(location =>
		"civchat zone=users;\n            civchat_api_key;"),
		qr/civchat_api_key/ ],
	[ 'geoip missing file', conf(http => "civchat_zone users 1m;\n"
		. "    civchat_geoip %%TESTDIR%%/missing.mmdb;"), qr/missing\.mmdb/ ],
	[ 'geoip corrupt file', conf(http => "civchat_zone users 1m;\n"
		. "    civchat_geoip %%TESTDIR%%/corrupt.mmdb;"), qr/corrupt\.mmdb/,
		'no line' ],
	[ 'anonymize not on/off', conf(location =>
		"$base\n            civchat_anonymize_ip half;"), qr/half/ ],
	[ 'identity secret too short', conf(secret => '', location =>
		"$base\n            civchat_identity_secret tooshort;"),
		qr/civchat_identity_secret.*16/ ],
	[ 'identity secret file too short', conf(secret => '', location =>
		"$base\n            civchat_identity_secret "
		. 'file=%%TESTDIR%%/short;'), qr/civchat_identity_secret.*16/ ],
	[ 'identity secret file missing', conf(secret => '', location =>
		"$base\n            civchat_identity_secret "
		. 'file=%%TESTDIR%%/nope;'), qr{/nope} ],
	[ 'identity secret twice', conf(location =>
		"$base\n            civchat_identity_secret "
		. "another-secret-0123456789;\n            civchat_identity_secret "
		. 'another-secret-0123456789;'), qr/duplicate/ ],
	[ 'stream limit bad', conf(location =>
		"$base\n            civchat_stream_limit per_key=many;"),
		qr/per_key=many/ ],
	[ 'stream limit unknown', conf(location =>
		"$base\n            civchat_stream_limit per_tab=1;"),
		qr/per_tab=1/ ],
	[ 'stream timeout bad', conf(location =>
		"$base\n            civchat_stream_timeout soon;"),
		qr/soon|"civchat_stream_timeout" directive invalid/ ],
);

$t->write_file('corrupt.mmdb', 'this is not a MaxMind database' x 100);

for my $b (@bad) {
	my ($name, $text, $re, $noline) = @$b;
	my ($rc, $out) = $t->test_config($text, 'bad.conf');
	isnt($rc, 0, "bad: $name: nginx -t fails");
	my ($emerg) = grep { /\[emerg\]/ } split /\n/, $out;
	like($emerg // '', $re, "bad: $name: [emerg] says why")
		or diag($out);
	like($emerg // '', qr/bad\.conf:\d+/, "bad: $name: with the line")
		or diag($out) unless $noline;
}

###############################################################################

# without a secret, the User.com-compatible mode: nginx -t says so once,
# however many locations

{
	my ($rc, $out) = $t->test_config(conf(secret => '', location => "$base\n"
		. "        }\n        location /second/ {\n"
		. "            civchat zone=users;\n"
		. "            civchat_api_key TESTKEY;"), 'compat.conf');
	is($rc, 0, 'no secret: nginx -t passes');
	my @warn = grep { /\[warn\]/ } split /\n/, $out;
	is(scalar @warn, 1, 'no secret: one warning') or diag($out);
	like($warn[0] // '', qr/2 location.*civchat_identity_secret.*without proof/,
		'no secret: it says what that means');
}

###############################################################################

# conf.example: as it is (GeoIP commented out, as on a stock machine
# that has no MaxMind database), then with the civchat_geoip line its
# comment points at uncommented and a database where it says

my $example = $t->read_file($t->repo . '/conf.example');

ok(defined $example, 'conf.example exists');
$example //= '';

unlike($example, qr/^\s*civchat_geoip\b/m,
	'conf.example: civchat_geoip is commented out');
my ($geoline) = $example =~ /^\s*# (civchat_geoip\s+\S+[^\n]*;)\s*$/m;
ok($geoline, 'conf.example: the civchat_geoip line to uncomment');

my $d = $t->testdir;

# paths into the test directory, free ports, our module

sub example {
	my ($text) = @_;

	$text =~ s{^\s*load_module\s+[^;]+;}{load_module %%MODULE%%;}m
		or $text = "load_module %%MODULE%%;\n$text";
	$text =~ s{^(\s*)((?:error_log|pid)\b[^;]*;)}{$1# $2}mg;
	$text = "pid %%TESTDIR%%/example.pid;\n"
		. "error_log %%TESTDIR%%/example.log;\n" . $text;
	$text =~ s{(\s)/((?:var|usr|etc|srv|run|tmp)/[^\s;'"]+)}
		{$1%%TESTDIR%%/root/$2}g;
	$text =~ s{\blisten(\s+)(?:[\d.]+:)?\d+}
		{listen${1}127.0.0.1:%%PORT_9%%}g;

	return $text;
}

# the directories the package makes, the log directory nginx has; an
# nginx built from upstream source logs to <prefix>/logs/access.log by
# default (Debian's to /var/log/nginx): that directory too

for my $dir (qw{root root/var root/var/lib root/var/lib/civchat root/var/log
	root/var/log/nginx logs})
{
	mkdir("$d/$dir");
}

my ($rc, $out) = $t->test_config(example($example), 'example.conf');
is($rc, 0, 'conf.example passes nginx -t') or diag($out);
unlike($out, qr/\[(emerg|alert|crit)\]/, 'conf.example: no errors');
like($out, qr/test is successful/, 'conf.example: successful');

SKIP: {
	skip 'no civchat_geoip line in conf.example', 2 unless $geoline;

	my $text = $example;
	$text =~ s/^(\s*)# (civchat_geoip\s)/$1$2/m;
	$text = example($text);

	my ($path) = $text =~ /^\s*civchat_geoip\s+(\S+)/m;
	$path = $t->expand($path);
	system('mkdir', '-p', $path =~ s{/[^/]+$}{}r);

	my $made = eval {
		require Civchat::MMDB;
		Civchat::MMDB::mmdb_write($path, networks => [
			'81.2.69.0/24' => { country => 'GB', city => 'London',
				region => 'ENG', tz => 'Europe/London' } ]);
		-s $path;
	};

	skip 'no MaxMind::DB::Writer to make a database', 2 unless $made;

	($rc, $out) = $t->test_config($text, 'example-geoip.conf');
	is($rc, 0, 'conf.example with its civchat_geoip line uncommented '
		. 'passes nginx -t') or diag($out);
	like($out, qr/test is successful/, 'and a database where it says');
}

###############################################################################

# the check of this file: nothing was started, so only the log check
$t->done_testing();

###############################################################################
