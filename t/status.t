#!/usr/bin/perl

# (C) civchat developers

# Tests for civchat_status: the Prometheus text format, and counters
# that agree with the traffic sent and with the store file (requests by
# endpoint and status, events by type, store events, profiles, zone
# bytes, evictions, bots, anonymous page views), shared by two workers
# and kept across a reload.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/uniq_id/;

use Time::HiRes qw/sleep/;

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

    civchat_zone  users  1m;
    civchat_zone  tiny   64k;

    civchat_api_key  TESTKEY;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat               zone=users;
            civchat_store         file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_allow_origin  https://shop.example.org;
        }

        location /tiny/ {
            civchat        zone=tiny;
            civchat_store  file=%%TESTDIR%%/tiny.ndjson flush=100ms;
        }

        location = /status {
            civchat_status;
        }

        location = /status-local {
            civchat_status;
            allow 10.0.0.1;
            deny all;
        }
    }
}

EOF

my $d = $t->testdir;

# metrics as { 'name{labels}' => value }, with a format check
sub metrics {
	my $r = $t->get('/status');
	my (%m, @bad, %typed);

	for my $line (split /\n/, $r->body) {
		if ($line =~ /^# (HELP|TYPE) ([a-z_]+) (.+)$/) {
			$typed{$2} = $3 if $1 eq 'TYPE';
			next;
		}
		if ($line =~ /^([a-z_]+)(\{(?:[a-z_]+="[^"\\]*"(?:,|(?=\})))*\})? (-?\d+(?:\.\d+)?)$/)
		{
			$m{$1 . ($2 // '')} = $3;
			push @bad, "no TYPE: $line" unless $typed{$1};
			next;
		}
		push @bad, $line;
	}

	return (\%m, \@bad, $r);
}

# the sum over the series of a metric whose labels include these
sub metric {
	my ($m, $name, %labels) = @_;
	my $sum = 0;
	for my $k (keys %$m) {
		next unless $k =~ /^\Q$name\E(\{.*\})?$/;
		my $l = $1 // '';
		next if grep { $l !~ /\b$_="\Q$labels{$_}\E"/ } keys %labels;
		$sum += $m->{$k};
	}
	return $sum;
}

###############################################################################

my ($m0, $bad, $r) = metrics();
is($r->status, 200, 'status: 200');
like($r->header('Content-Type'), qr{^text/plain}, 'status: text/plain');
is(scalar @$bad, 0, 'Prometheus text format') or diag(join("\n", @$bad));

for my $name (qw/civchat_requests_total civchat_events_total
	civchat_bots_total civchat_anonymous_total civchat_store_events_total
	civchat_profiles civchat_zone_bytes_used civchat_zone_bytes
	civchat_evictions_total/)
{
	like($r->body, qr/^# TYPE \Q$name\E (counter|gauge)$/m, "metric $name");
}

ok(metric($m0, 'civchat_zone_bytes', zone => 'tiny') <= 65536
	&& metric($m0, 'civchat_zone_bytes', zone => 'tiny') > 32768,
	'zone bytes: about the configured size');
ok(metric($m0, 'civchat_zone_bytes_used', zone => 'users')
	<= metric($m0, 'civchat_zone_bytes', zone => 'users'),
	'zone bytes used <= zone bytes');

# traffic: 30 new visitors (on both workers), some errors

for (1 .. 30) {
	my $c = $t->client();
	$c->init({ plan => 'x' });
	$c->page_hit({});
}
my $c = $t->client();
$c->init({});
$c->event({ event => 'signup' });
$c->product_event({ product_id => 'p', event_type => 'view' });
$c->update({ plan => 'y' });
$c->reset_auth({});

$t->post_json('/civchat/init', '{');
$t->post_json('/civchat/init', '[]');
$t->post_json('/civchat/init', { apiKey => 'WRONG' });
$t->get('/civchat/nope');
$t->get('/civchat/init');
$t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/x-www-form-urlencoded' ],
	body => 'a=b');
$t->get('/civchat/widget.js');
$t->request(method => 'OPTIONS', path => '/civchat/init', headers => [
	Origin => 'https://shop.example.org',
	'Access-Control-Request-Method' => 'POST' ]);

# a bot and a GPC page view

$t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/json',
		'User-Agent' => 'Mozilla/5.0 (compatible; Googlebot/2.1)' ],
	body => '{"apiKey":"TESTKEY"}');
$t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/json', 'Sec-GPC' => '1' ],
	body => '{"apiKey":"TESTKEY"}');

sleep 0.5;
my ($m) = metrics();

# init 200: 31 visitors and the GPC page view; the bot's answer may be
# counted there too
my %want = (
	'init 200' => 31 + 1,
	'page_hit 200' => 30,
	'event 200' => 1,
	'product_event 200' => 1,
	'update 200' => 1,
	'reset_auth 200' => 1,
	'init 400' => 2,
	'init 403' => 1,
	'unknown 404' => 1,
	'init 405' => 1,
	'init 415' => 1,
	'widget.js 200' => 1,
);

for my $k (sort keys %want) {
	my ($ep, $st) = split ' ', $k;
	my $delta = metric($m, 'civchat_requests_total', endpoint => $ep,
		status => $st) - metric($m0, 'civchat_requests_total',
		endpoint => $ep, status => $st);
	ok($delta == $want{$k} || $k eq 'init 200' && $delta == $want{$k} + 1,
		"requests $ep $st: $want{$k}") or diag("got $delta");
}

ok(metric($m, 'civchat_requests_total', endpoint => 'options') >= 1,
	'requests: the preflight');
is(metric($m, 'civchat_bots_total') - metric($m0, 'civchat_bots_total'), 1,
	'bots: 1');
is(metric($m, 'civchat_anonymous_total')
	- metric($m0, 'civchat_anonymous_total'), 1, 'anonymous: 1');

# events by type agree with the file

my @ev = $t->parse_events();
my %bytype;
$bytype{$_->{type}}++ for grep { !$_->{_bad} } @ev;

for my $type (qw/user_created page_view event product_event
	profile_updated auth_reset/)
{
	ok($bytype{$type}, "file has $type events");
	is(metric($m, 'civchat_events_total', type => $type),
		$bytype{$type} // 0, "events $type: as in the file");
}

is(metric($m, 'civchat_store_events_total', store => "$d/events.ndjson"),
	scalar @ev, 'store events: the lines in the file');

# profiles: one per user_created

is(metric($m, 'civchat_profiles', zone => 'users'),
	$bytype{user_created}, 'profiles: one per user_created');
ok(metric($m, 'civchat_zone_bytes_used', zone => 'users')
	> metric($m0, 'civchat_zone_bytes_used', zone => 'users'),
	'zone bytes used grew');

# evictions in the tiny zone

my $pad = 'p' x 200;
for my $i (1 .. 200) {
	$t->client(base => '/tiny/')->init({
		map { ("attr_$_" => "$pad $i") } 1 .. 5 });
}
($m) = metrics();
my $evicted = metric($m, 'civchat_evictions_total', zone => 'tiny');
my $profiles = metric($m, 'civchat_profiles', zone => 'tiny');
ok($evicted > 0, "evictions counted ($evicted)");
is($profiles + $evicted, 200, 'tiny: profiles + evictions = created');
is(metric($m, 'civchat_evictions_total', zone => 'users'), 0,
	'no evictions in the big zone');
ok(metric($m, 'civchat_zone_bytes_used', zone => 'tiny')
	<= metric($m, 'civchat_zone_bytes', zone => 'tiny'),
	'tiny: used <= size');

# across a reload

my $before = metric($m, 'civchat_requests_total');
ok($t->reload(), 'reload');
my ($m2) = metrics();
ok(metric($m2, 'civchat_requests_total') >= $before,
	'counters run on across a reload');
is(metric($m2, 'civchat_evictions_total', zone => 'tiny'), $evicted,
	'evictions kept across a reload');

# access to the status location follows allow/deny

is($t->get('/status-local')->status, 403, 'deny all: 403');

###############################################################################

$t->done_testing();

###############################################################################
