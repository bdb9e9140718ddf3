#!/usr/bin/perl

# (C) civchat developers

# Tests for the test harness itself, against plain nginx (no module):
# start, requests, response parsing, cookies, reload, reopen, stop, and
# the error.log check.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_decode deep_subset is_num is_str num str/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new(module => 0);

$t->config(<<'EOF');

%%TEST_GLOBALS%%
worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location = /empty {
            return 204;
        }

        location = /json {
            default_type application/json;
            add_header Set-Cookie "a=1; Path=/";
            add_header Set-Cookie "__ca__chat=ABCDEFGHIJKLmnop; Path=/; Max-Age=60; HttpOnly";
            return 200 '{"key":"ABCDEFGHIJKLmnop","n":42,"s":"42","ok":true}';
        }

        location = /echo {
            default_type text/plain;
            return 200 "cookie=$http_cookie;ct=$content_type;cl=$content_length;te=$http_transfer_encoding";
        }

        location = /body {
            client_body_buffer_size 1k;
            client_max_body_size 1k;
            proxy_pass http://127.0.0.1:%%PORT_1%%/;
        }
    }

    server {
        listen       127.0.0.1:%%PORT_1%%;
        location / {
            return 200 "got $request_method";
        }
    }
}

EOF

my ($rc, $out) = $t->test_config();
is($rc, 0, 'nginx -t passes') or diag($out);
like($out, qr/test is successful/, 'nginx -t output');

$t->run();

# requests and responses

my $r = $t->get('/empty');
is($r->status, 204, 'get 204');

$r = $t->get('/json');
is($r->status, 200, 'get json');
is(scalar($r->set_cookies), 2, 'both Set-Cookie lines');
is($r->cookie_value, 'ABCDEFGHIJKLmnop', 'cookie value');
is($r->cookie_attrs->{'max-age'}, 60, 'cookie attribute');
ok($r->cookie_attrs->{httponly}, 'cookie flag');
ok(!deep_subset({ key => qr/^[A-Z]/, n => num(42), s => str('42') },
	$r->json), 'json subset with types');
ok(deep_subset({ n => str('42') }, $r->json), 'number is not a string');
ok(is_num($r->json->{n}) && is_str($r->json->{s}), 'json types');

$r = $t->head('/json');
is($r->status, 200, 'head');
is($r->body, '', 'head no body');

$r = $t->post_json('/echo', { a => 1 });
like($r->body, qr/ct=application\/json;cl=7;/, 'post_json headers');

$r = $t->post_json('/echo', 'raw', 'Content-Type' => 'text/plain');
like($r->body, qr/ct=text\/plain;cl=3;/, 'post_json raw string');

$r = $t->request(method => 'POST', path => '/echo', body => 'x' x 10000,
	chunked => 1000, headers => [ 'Content-Type' => 'text/plain' ]);
like($r->body, qr/te=chunked/, 'chunked request');

$r = $t->request(method => 'POST', path => '/body', body => 'x' x 2000);
is($r->status, 413, 'large body answer read');

$r = $t->request(method => 'POST', path => '/body', body => 'x' x 900);
is($r->body, 'got POST', 'body proxied');

# the client keeps cookies

my $c = $t->client(base => '/');
$c->post('json', {});
is($c->cookie, 'ABCDEFGHIJKLmnop', 'client jar');
$r = $c->post('echo', {});
like($r->body, qr/cookie=__ca__chat=ABCDEFGHIJKLmnop; a=1;/, 'client sends');

# workers, reload, reopen

my @w = $t->worker_pids();
is(scalar @w, 2, 'two workers');
ok($t->reload(), 'reload');
my @w2 = $t->worker_pids();
is(scalar @w2, 2, 'two new workers');
ok(!(grep { my $p = $_; grep { $_ == $p } @w } @w2), 'workers replaced');
$t->reopen();
is($t->get('/empty')->status, 204, 'alive after reopen');

# events file parsing

$t->write_file('ev.ndjson', qq|{"type":"a","n":1}\n{"type":"b"}\nnot json\n|
	. qq|{"type":"a"}\n{"type":"partial|);
my @ev = $t->read_events(file => $t->testdir . '/ev.ndjson', settle => 0);
is(scalar @ev, 4, 'complete lines only');
ok($ev[2]{_bad}, 'bad line kept');
is(scalar(Civchat::events_of(\@ev, type => 'a')), 2, 'events_of');
@ev = $t->read_events(file => $t->testdir . '/ev.ndjson', count => 5,
	timeout => 0.3);
is(scalar @ev, 4, 'count wait times out');

# restart, then the log check sees a worker crash

$t->restart();
is($t->get('/empty')->status, 204, 'restarted');
is(scalar($t->log_problems), 0, 'clean log');

my ($victim) = $t->worker_pids();
kill 'SEGV', $victim;
for (1 .. 50) {
	last if $t->log_problems;
	select undef, undef, undef, 0.1;
}
like(join("\n", $t->log_problems),
	qr/exited on signal 11|AddressSanitizer: SEGV/,
	'crash detected');

# the config check sees an [emerg]

($rc, $out) = $t->test_config("events {}\nhttp { bogus_directive; }\n",
	'bad.conf');
isnt($rc, 0, 'bad config fails');
like($out, qr/\[emerg\].*unknown directive "bogus_directive"/, 'emerg');

$t->stop();
ok(!$t->master_pid || !kill(0, $t->master_pid), 'stopped');

# the valgrind check (TEST_NGINX_VALGRIND) sees memcheck's reports

my $v = Civchat->new(module => 0);
$v->write_file('valgrind.101.log', <<'END');
==101== Memcheck, a memory error detector
==101== Command: nginx -p /tmp/x/
==101== ERROR SUMMARY: 0 errors from 0 contexts (suppressed: 0 from 0)
END
is(scalar($v->valgrind_problems), 0, 'valgrind: a clean log');
$v->write_file('valgrind.102.log', <<'END');
==102== Memcheck, a memory error detector
==102== Conditional jump or move depends on uninitialised value(s)
==102==    at 0x4849DC3: ngx_http_civchat_handler (ngx_http_civchat_handler.c:10)
END
like(join("\n", $v->valgrind_problems),
	qr/valgrind\.102\.log:\n==102== Conditional jump.*\n.*handler\.c:10/,
	'valgrind: a report without a summary (a killed worker)');
$v->write_file('valgrind.102.log', "==102== ERROR SUMMARY: 1 errors from 1"
	. " contexts (suppressed: 0 from 0)\n");
ok(scalar($v->valgrind_problems), 'valgrind: errors in the summary');

done_testing();

###############################################################################
