#!/usr/bin/perl

# (C) civchat developers

# Tests for the civchat_redis directive at "nginx -t": no node, a bad
# address, a bad parameter, a duplicate name, the wrong level each fail
# with an [emerg] naming the problem; a full line passes, and nginx
# starts with a cluster that does not answer (nothing listens there),
# answering requests and the status page.  Needs no Redis.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat;

use IO::Socket::INET;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

sub conf {
	my ($http, $server) = @_;
	$server //= '';

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

        $server

        location = /status {
            civchat_status;
        }
    }
}
EOF
}

my @bad = (
	[ 'no argument', 'civchat_redis;', qr/invalid number of arguments/ ],
	[ 'a name only', 'civchat_redis c1;', qr/invalid number of arguments/ ],
	[ 'no node', 'civchat_redis c1 password=secret;',
		qr/civchat_redis "c1" needs the address of at least one node/ ],
	[ 'a port out of range', 'civchat_redis c1 127.0.0.1:99999;',
		qr/civchat_redis "c1": invalid address "127\.0\.0\.1:99999"/ ],
	[ 'a path', 'civchat_redis c1 127.0.0.1:7000/db;',
		qr/invalid address "127\.0\.0\.1:7000\/db"/ ],
	[ 'a unix socket', 'civchat_redis c1 unix:/tmp/redis.sock;',
		qr/invalid address "unix:\/tmp\/redis\.sock"/ ],
	[ 'an empty address', 'civchat_redis c1 "";',
		qr/invalid address ""/ ],
	[ 'an unknown parameter', 'civchat_redis c1 127.0.0.1 db=2;',
		qr/civchat_redis "c1": invalid parameter "db=2"/ ],
	[ 'a bad timeout', 'civchat_redis c1 127.0.0.1 timeout=soon;',
		qr/invalid parameter "timeout=soon"/ ],
	[ 'a zero ping', 'civchat_redis c1 127.0.0.1 ping=0;',
		qr/invalid parameter "ping=0"/ ],
	[ 'a bad canary', 'civchat_redis c1 127.0.0.1 canary=maybe;',
		qr/invalid parameter "canary=maybe"/ ],
	[ 'an empty password', 'civchat_redis c1 127.0.0.1 password=;',
		qr/invalid parameter "password="/ ],
	[ 'a name twice', "civchat_redis c1 127.0.0.1:7000;\n"
		. "    civchat_redis c1 127.0.0.1:7001;",
		qr/duplicate civchat_redis "c1"/ ],
);

for my $case (@bad) {
	my ($name, $http, $re) = @$case;
	my ($rc, $out) = $t->test_config(conf($http));
	isnt($rc, 0, "$name: nginx -t fails");
	like($out, qr/\[emerg\].*$re/, "$name: says why") or diag($out);
}

my ($rc, $out) = $t->test_config(conf('', 'civchat_redis c1 127.0.0.1;'));
isnt($rc, 0, 'in a server block: nginx -t fails');
like($out, qr/"civchat_redis" directive is not allowed here/,
	'in a server block: says why');

# every parameter; two clusters; a name resolved at configuration time

# ports nothing listens on (not %%PORT_n%%: the harness would wait for
# nginx to listen there)
my @none = map { IO::Socket::INET->new(Proto => 'tcp', Listen => 1,
	LocalAddr => '127.0.0.1', LocalPort => 0) } 1 .. 3;
my @ports = map { $_->sockport() } @none;
close $_ for @none;

my $good = "civchat_redis c1 127.0.0.1:$ports[0] localhost:$ports[1]\n"
	. "        password=secret timeout=300ms ping=200ms retry=1s canary=100ms;\n"
	. "    civchat_redis c2 127.0.0.2:$ports[2] canary=off;";

($rc, $out) = $t->test_config(conf($good));
is($rc, 0, 'every parameter: nginx -t passes') or diag($out);

# running against nodes that are not there: nothing blocks, nothing
# crashes, the status page says so

$t->config(conf($good))->run();

my $r = $t->get('/status');
is($r->status, 200, 'no node answers: the status page answers');
like($r->body, qr/^civchat_redis_slots_covered\{cluster="c1",worker="0"\} 0$/m,
	'no node answers: no slot covered');
like($r->body, qr/^civchat_redis_nodes\{cluster="c1",worker="0",role="master",state="connected"\} 0$/m,
	'no node answers: no master connected');

sleep 1;

$r = $t->get('/status');
like($r->body, qr/^civchat_redis_canary_total\{cluster="c1",result="failed"\} [1-9]/m,
	'no node answers: the canary fails');

$t->stop();

like($t->read_file('error.log') // '',
	qr/civchat_redis "c1": (cannot connect to )?127\.0\.0\.1:\d+/,
	'no node answers: logged');

###############################################################################

$t->done_testing();

###############################################################################
