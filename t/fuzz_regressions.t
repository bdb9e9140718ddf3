#!/usr/bin/perl

# (C) civchat developers

# Regressions for what the libFuzzer targets (fuzz/) found, each over
# HTTP: header and p.gif text that is not UTF-8 after all (a 500 from
# p.gif, events that are not JSON, a profile lost at restart), the
# smallest integer as a user_id and as a string attribute (undefined
# behaviour in ngx_sprintf, seen under make test-asan), a bare choice
# for a multi attribute beyond civchat_max_array_items, the HTTP store
# answering a chunk size near 2^63 (undefined behaviour, which make
# test-asan reports), the CSV import losing or rewriting the rows after
# a bad one, and CSV as spreadsheets write it (a byte order mark, CR line
# ends, a NUL byte in a name).

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_decode uniq_id/;

use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $d = $t->testdir();
my $TOKEN = 'fuzz-token-0123456789abcdef';

# the HTTP store: answers every batch with a chunk "7fffffffffffffff"
# and closes the connection half a second later

my $store = IO::Socket::INET->new(Proto => 'tcp', LocalAddr => '127.0.0.1',
	LocalPort => 0, Listen => 16, ReuseAddr => 1) or die "listen: $!\n";
my $store_port = $store->sockport();

my $parent = $$;
my $store_pid = fork();
die "fork: $!\n" unless defined $store_pid;

if ($store_pid == 0) {
	my $sel = IO::Select->new($store);
	my %open;

	while (getppid() == $parent) {
		for my $s ($sel->can_read(0.1)) {
			if ($s == $store) {
				my $c = $store->accept() or next;
				$sel->add($c);
				next;
			}

			my $n = sysread($s, my $buf, 65536);

			if (!$n) {
				$sel->remove($s);
				delete $open{$s};
				close $s;
				next;
			}

			next if $open{$s};

			open(my $fh, '>>', "$d/store.log");
			print $fh "batch\n";
			close $fh;

			syswrite($s, "HTTP/1.1 200 OK\r\n"
				. "Transfer-Encoding: chunked\r\n\r\n"
				. "7fffffffffffffff\r\nab\r\n");
			$open{$s} = time();
		}

		for my $s (keys %open) {
			next if time() - $open{$s} < 0.5;
			my ($c) = grep { $_ eq $s } $sel->handles();
			delete $open{$s};
			next unless $c;
			$sel->remove($c);
			close $c;
		}
	}

	POSIX::_exit(0);
}

close $store;

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  4m  state=%%TESTDIR%%/civchat.state;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat            zone=users;
            civchat_api_key    TESTKEY;
            civchat_store      file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_attribute  nickname   string;
            civchat_attribute  interests  multi;
        }

        location /noarrays/ {
            civchat                  zone=users;
            civchat_api_key          TESTKEY;
            civchat_attribute        interests  multi;
            civchat_max_array_items  0;
        }

        location /fwd/ {
            civchat          zone=users;
            civchat_api_key  FWD;
            civchat_store    http://127.0.0.1:$store_port/ batch=1
                             flush=100ms timeout=2s retry=1s
                             spool=%%TESTDIR%%/spool;
        }

        location /api/ {
            civchat_api        zone=users;
            civchat_api_token  $TOKEN;
            civchat_store      file=%%TESTDIR%%/events.ndjson flush=100ms;
        }
    }
}

EOF

my @workers = $t->worker_pids();

sub api {
	my ($method, $path, $body, $type) = @_;

	my @h = (Authorization => "Bearer $TOKEN");
	push @h, 'Content-Type' => $type if defined $body;

	return $t->request(method => $method, path => "/api/$path",
		headers => \@h, body => $body);
}

###############################################################################

# header_text: p.gif arguments that are not UTF-8 (a byte that is not a
# continuation byte, taken as one by ngx_utf8_decode()) made json_stringn()
# fail: 500

my $r = $t->request(method => 'GET', path => '/civchat/p.gif?apiKey=TESTKEY'
	. '&url=http%3A%2F%2Fpixel.test%2Fa%C5%C3%B3b'
	. '&title=%ED%A0%80%F8%90%80%80');
is($r->status, 200, 'p.gif, url not UTF-8: 200');
like($r->header('Content-Type') // '', qr{^image/gif}, 'p.gif: the GIF');

my @ev = $t->read_events(count => 1,
	match => { url => "http://pixel.test/a?\x{f3}b", type => 'page_view' });
is(scalar @ev, 1, 'p.gif, url not UTF-8: the event, with "?" for the byte');
is($ev[0]{title}, '???????', 'p.gif, a surrogate and a 0xf8 lead: "?"s')
	if @ev;

# header_text: a User-Agent the same way made events that are not JSON,
# and a state file line that does not load (the profile lost at restart)

my $ua = "Mozilla/5.0 \xc5\xc3\xb3 \xed\xa0\x80 \xf8\x90\x80\x80 end";
my $c = $t->client(headers => [ 'User-Agent' => $ua ]);
$r = $c->init({ name => 'Bad UA' });
is($r->status, 200, 'User-Agent not UTF-8: 200');
my $ua_key = $c->key();

@ev = $c->events(count => 1, match => { type => 'page_view' });
is(scalar @ev, 1, 'User-Agent not UTF-8: the event is JSON');
is($ev[0]{user_agent}, "Mozilla/5.0 ?\x{f3} ??? ???? end",
	'User-Agent not UTF-8: "?" for what is not') if @ev;

ok(!grep({ $_->{_bad} } $t->parse_events()), 'every event line is JSON');

# attrs: the smallest integer (ngx_sprintf("%L") negated it as a signed
# number: undefined behaviour, reported under make test-asan)

$c = $t->client();
$r = $t->request(method => 'POST', path => '/civchat/init',
	headers => [ 'Content-Type' => 'application/json' ],
	body => '{"apiKey":"TESTKEY","url":"http://int.test/",'
		. '"user_id":-9223372036854775808,'
		. '"nickname":-9223372036854775808}');
is($r->status, 200, 'user_id -2^63: 200');
is($r->user->{user_id}, '-9223372036854775808', 'user_id -2^63: its text');

@ev = $t->read_events(count => 2, match => { url => 'http://int.test/' });
my ($nick) = grep { $_->{type} eq 'profile_updated'
	&& $_->{name} eq 'nickname' } @ev;
is($nick && json_decode($nick->{attrs})->{new}, '-9223372036854775808',
	'a string attribute from -2^63: its text');

# attrs: a bare choice for a multi attribute is an array of one, beyond
# civchat_max_array_items 0

$c = $t->client(base => '/noarrays/');
$r = $c->init({ interests => 'golf' });
is($r->status, 200, 'multi, max 0 items, a bare choice: 200');
is($r->ignored_reason('interests'), 'too_many_items',
	'multi, max 0 items, a bare choice: too_many_items');

$r = $c->init({ interests => [ 'golf' ] });
is($r->ignored_reason('interests'), 'too_many_items',
	'multi, max 0 items, an array of one: too_many_items, the same');

# csv: more fields than the header in the last field of a row skipped
# the row after it

my $p = uniq_id('fz');
$r = api(POST => 'import', "user_id,plan\n$p-1,a,EXTRA\n$p-2,b\n",
	'text/csv');
is($r->status, 200, 'CSV extra last field: 200');
is_deeply([ map { $_->{result} } @{($r->json // {})->{results} // []} ],
	[ qw/error created/ ], 'CSV extra last field: the next row is created');
is(api(GET => "users/user_id/$p-2")->status, 200,
	'CSV extra last field: the next row is there');

# csv: an unclosed quote was unquoted in place up to the end of the body,
# rewriting the rows after it

$p = uniq_id('fz');
$r = api(POST => 'import', "user_id,name\n$p-1,\"Bob\n"
	. "$p-2,say \"\"hi\"\"\n$p-3,Cy\n", 'text/csv');
is_deeply([ map { $_->{result} } @{($r->json // {})->{results} // []} ],
	[ qw/error created created/ ], 'CSV unclosed quote: the rows after it');
is(api(GET => "users/user_id/$p-2")->user->{attributes}{name},
	'say ""hi""', 'CSV unclosed quote: the next row as it was sent');
is(api(GET => "users/user_id/$p-3")->user->{attributes}{name}, 'Cy',
	'CSV unclosed quote: the row after that as it was sent');

# csv: Excel's byte order mark was part of the first name, CR line ends
# made the whole body one header row, a NUL byte cut a name short

$p = uniq_id('fz');
$r = api(POST => 'import', "\xef\xbb\xbfuser_id,plan\r\n$p-1,a\r\n",
	'text/csv');
is(($r->json // {})->{created}, 1, 'CSV byte order mark: the row created');
is(api(GET => "users/user_id/$p-1")->user->{attributes}{plan}, 'a',
	'CSV byte order mark: by its user_id');

$p = uniq_id('fz');
$r = api(POST => 'import', "user_id,plan\r$p-1,a\r$p-2,\"b\rc\"\r\r$p-3,c",
	'text/csv');
is(($r->json // {})->{created}, 3, 'CSV CR line ends: 3 rows created');
is(api(GET => "users/user_id/$p-2")->user->{attributes}{plan}, "b\rc",
	'CSV CR line ends: a CR inside quotes kept');

$r = api(POST => 'import', "user\0id,plan\n1,a\n", 'text/csv');
is($r->status, 400, 'CSV NUL in a name: the header is refused');

# http_answer: a chunk size near 2^63 overflowed "size + 2" (undefined
# behaviour) and moved the parser's pointer 2^63 bytes away

$c = $t->client(base => '/fwd/', api_key => 'FWD');
$r = $c->init({ name => 'chunked' });
is($r->status, 200, 'HTTP store: the request is answered');

my $deadline = time() + 5;
sleep 0.1 until -s "$d/store.log" || time() > $deadline;
ok(-s "$d/store.log", 'HTTP store: the batch was sent');

sleep 1.5;
is_deeply([ $t->worker_pids() ], \@workers,
	'HTTP store, a chunk of 2^63 bytes: no worker crashed');
like($t->read_file('error.log') // '', qr/civchat_store.*closed the /,
	'HTTP store, a chunk of 2^63 bytes: the batch failed');

# the profile with the User-Agent that is not UTF-8 is still there after
# a restart (its state file line loads)

$t->stop();

my $state = $t->read_file('civchat.state') // '';
my @bad = grep { !ref json_decode($_) } split /\n/, $state;
ok(length $state && !@bad, 'state file: every line is JSON')
	or diag(join("\n", @bad));

$t->run();

$r = api(GET => "users/key/$ua_key");
is($r->status, 200, 'User-Agent not UTF-8: the profile is there after a '
	. 'restart');

###############################################################################

$t->done_testing();

kill 'TERM', $store_pid;
waitpid($store_pid, 0);

###############################################################################
