#!/usr/bin/perl

# (C) civchat developers

# Tests for requests that wait for Redis on a keep-alive connection.  A
# zone on Redis answers some requests after a round trip (README "More
# than one nginx host": a new visitor is written before the answer, a
# name the cache does not hold is read); when such an answer is the
# last of its request, nginx frees the request (keep-alive: waiting for
# the next one, or reading the next pipelined one) before the module
# runs the connection's posted requests.  Browser requests (init of new
# visitors, a returning visitor's page_hit) and server API reads (a
# profile, a user_id that is nowhere), one after another on one
# connection and pipelined on another, are each answered in order, and
# the new profiles are in Redis.  A worker reading a freed request
# crashes at times under load (the benchmark found it); under valgrind
# (make test-valgrind) and AddressSanitizer, every time: the harness
# fails the file on the report.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;
use Civchat::Redis;

use IO::Socket::INET;
use IO::Select;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();
Civchat::Redis::need();

my $rc = Civchat::Redis->new(dir => $t->testdir());
$rc->start();

my $seeds = $rc->seeds(3);
my $TOKEN = 'api-token-0123456789-abcdef';

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%
worker_processes 1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_redis  c1  $seeds  ping=200ms;
    civchat_zone   users  4m  redis=c1;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  TESTKEY;
            civchat_store    off;
        }

        location /api/ {
            civchat_api        zone=users;
            civchat_api_token  $TOKEN;
        }

        location = /status {
            civchat_status;
        }
    }
}

EOF

my $m = Civchat::Redis::wait_metrics($t, '/status', sub {
	Civchat::Redis::metric($_[0], 'civchat_redis_slots_covered',
		cluster => 'c1') == 16384 });
is(Civchat::Redis::metric($m, 'civchat_redis_slots_covered', cluster => 'c1'),
	16384, 'the worker has the slot map');

###############################################################################

# one request's bytes, keeping the connection open
sub req {
	my ($method, $path, $body, @h) = @_;
	my $raw = "$method $path HTTP/1.1\r\nHost: localhost\r\n";
	while (my ($k, $v) = splice(@h, 0, 2)) {
		$raw .= "$k: $v\r\n";
	}
	$raw .= 'Content-Type: application/json' . "\r\n"
		. 'Content-Length: ' . length($body) . "\r\n" if defined $body;
	return $raw . "\r\n" . ($body // '');
}

sub init {
	my $n = shift;
	return req(POST => '/civchat/init',
		qq/{"apiKey":"TESTKEY","url":"http:\/\/localhost\/ka\/$n"}/);
}

sub page_hit {
	my ($cookie, $n) = @_;
	return req(POST => '/civchat/page_hit',
		qq/{"apiKey":"TESTKEY","url":"http:\/\/localhost\/ka\/$n"}/,
		Cookie => $cookie);
}

sub api_get {
	return req(GET => "/api/users/$_[0]", undef,
		Authorization => "Bearer $TOKEN");
}

# the first whole answer in $$in (a Content-Length body), taken out
sub take_one {
	my ($in) = @_;
	my $h = index($$in, "\r\n\r\n");
	return undef if $h < 0;
	my $len = substr($$in, 0, $h) =~ /^Content-Length:\s*(\d+)/mi ? $1 : 0;
	return undef if length($$in) < $h + 4 + $len;
	return Civchat::Response->parse(substr($$in, 0, $h + 4 + $len, ''), '');
}

# on one connection: each request sent once the answer to the one
# before has come in whole (with $pipelined, all sent at once); returns
# the answers, as many as came before the server closed or went quiet
sub on_one_connection {
	my ($pipelined, @reqs) = @_;

	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1:'
		. $t->port(0)) or die "connect: $!\n";
	my $sel = IO::Select->new($s);
	my ($in, @res) = ('');

	$s->syswrite(join('', @reqs)) if $pipelined;

	for my $raw (@reqs) {
		my $one;

		$s->syswrite($raw) unless $pipelined;

		until (defined($one = take_one(\$in))) {
			last unless $sel->can_read(Civchat::slow(10));
			last unless $s->sysread($in, 65536, length $in);
		}

		last unless defined $one;
		push @res, $one;
	}

	close $s;
	return @res;
}

sub in_redis {
	my ($key) = @_;
	return $rc->cli('EXISTS', "civchat:users:p:{$key}");
}

###############################################################################

# one after another: two new visitors, the first one's page view, an API
# read of the second and of a user_id that no profile has

my @r = on_one_connection(0, init(1), init(2));
is(scalar @r, 2, 'one after another: both init answered');

my @keys = map { $_->key } @r;

for my $i (0 .. 1) {
	is($r[$i]->status, 200, "one after another: init $i: 200");
	ok(Civchat::is_key($keys[$i]), "one after another: init $i: a key");
}

isnt($keys[0], $keys[1], 'one after another: two new profiles');

my $value = $r[0]->cookie_value() // '';
ok(length $value, 'the first visitor\'s cookie');
my $cookie = "__ca__chat=$value";

@r = on_one_connection(0, page_hit($cookie, 3), api_get("key/$keys[1]"),
	api_get('user_id/nobody-at-all'), page_hit($cookie, 4));
is(join(' ', map { $_->status } @r), '200 200 404 200',
	'one after another: page_hit, API read, API 404, page_hit');
is($r[1]->user->{key}, $keys[1],
	'one after another: the API read the second visitor');

# pipelined: three new visitors and two API reads sent at once

@r = on_one_connection(1, init(5), init(6), api_get("key/$keys[0]"),
	api_get('email/nobody%40example.org'), init(7));
is(join(' ', map { $_->status } @r), '200 200 200 404 200',
	'pipelined: init, init, API read, API 404, init');

push @keys, map { $_->key } @r[0, 1, 4];
is(scalar(grep { Civchat::is_key($_ // '') } @keys), 5,
	'pipelined: three more keys');
is($r[2]->user->{key}, $keys[0],
	'pipelined: the API read the first visitor');

is(join(' ', map { in_redis($_) } @keys), '1 1 1 1 1',
	'every new profile is in Redis');

###############################################################################

$t->stop();
$rc->stop();

$t->done_testing();

###############################################################################
