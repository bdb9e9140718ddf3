#!/usr/bin/perl

# (C) civchat developers

# Tests for what loading the module costs an nginx that does not use it:
# no shared-memory zone (the counters' zone exists only with a civchat,
# civchat_api or civchat_status location), and that the counters' zone
# never takes the name of a zone of the configuration's own (a
# limit_req_zone called civchat_stats).  Shared-memory zones are counted
# in the master's /proc/PID/maps (nginx maps each as /dev/zero, shared).

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

Civchat->new()->need_module();

plan(skip_all => 'no /proc/PID/maps') unless -r "/proc/$$/maps";

my $plain = <<'EOF';

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location / {
            return 204;
        }
    }
}

EOF

# the shared mappings of the running master

sub shared_zones {
	my ($t) = @_;
	open(my $fh, '<', '/proc/' . $t->master_pid() . '/maps') or return -1;
	my $n = grep { m{ rw-s .*/dev/zero \(deleted\)$} } <$fh>;
	close $fh;
	return $n;
}

###############################################################################

# nginx alone, then with the module loaded and not used: the same zones

my $bare = Civchat->new(module => 0);
$bare->config($plain)->run();
my $baseline = shared_zones($bare);
cmp_ok($baseline, '>=', 0, "without the module: $baseline shared mappings");
is($bare->get('/')->status, 204, 'without the module: answers');
$bare->stop();
$bare->check_log();

my $unused = Civchat->new();
$unused->config($plain)->run();
is(shared_zones($unused), $baseline,
	'module loaded, no civchat location: no zone added');
is($unused->get('/')->status, 204, 'module loaded: answers');
$unused->stop();
$unused->check_log();

###############################################################################

# used, beside a limit_req_zone called civchat_stats

my $t = Civchat->new();

$t->config(<<'EOF')->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    limit_req_zone  $binary_remote_addr  zone=civchat_stats:1m  rate=1r/m;

    civchat_zone  users  1m;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  TESTKEY;
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location = /status {
            civchat_status;
        }

        location /limited {
            limit_req  zone=civchat_stats;
            empty_gif;
        }
    }
}

EOF

is(shared_zones($t), $baseline + 3, 'used: the profiles, the counters and '
	. 'the limit_req zone');

my $r = $t->client()->init({});
is($r->status, 200, 'used: init answers');

$r = $t->get('/status');
is($r->status, 200, 'used: the status page answers');
like($r->body, qr/^civchat_requests_total\{endpoint="init",status="200"\} 1$/m,
	'used: and counts');
like($r->body, qr/^civchat_events_total\{type="user_created"\} 1$/m,
	'used: events too');

is($t->get('/limited')->status, 200, 'limit_req zone civchat_stats: the first '
	. 'request passes');
is($t->get('/limited')->status, 503, 'limit_req zone civchat_stats: the '
	. 'second is limited, as its zone says');

###############################################################################

$t->done_testing();

###############################################################################
