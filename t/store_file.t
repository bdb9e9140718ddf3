#!/usr/bin/perl

# (C) civchat developers

# Tests for civchat_store file=: the flush interval with no further
# traffic, the buffer flushed when full, the file reopened after a
# rename and "nginx -s reopen", and no event lost across "nginx -s
# reload" and "nginx -s quit" (with a flush interval far longer than the
# test, so only the exit flush can have written them).

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/uniq_id/;

use Time::HiRes qw/sleep time/;

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

    civchat_api_key  TESTKEY;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat        zone=users;
            civchat_store  file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location /slow/ {
            civchat        zone=users;
            civchat_store  file=%%TESTDIR%%/slow.ndjson buffer=1m flush=1h;
        }

        location /small/ {
            civchat        zone=users;
            civchat_store  file=%%TESTDIR%%/small.ndjson buffer=4k flush=1h;
        }
    }
}

EOF

my $d = $t->testdir;

# N visits to a location, each page view with a url under $tag
sub visits {
	my ($base, $tag, $n) = @_;
	my $ok = 0;
	for my $i (1 .. $n) {
		my $r = $t->client(base => $base)->init({
			url => "http://$tag/$i", name => 'x' x 100 });
		$ok++ if $r->status == 200;
	}
	return $ok;
}

sub page_views {
	my ($file, $tag, %o) = @_;
	return scalar $t->read_events(file => "$d/$file", %o,
		match => { type => 'page_view', url => qr{^http://\Q$tag\E/} });
}

###############################################################################

# the flush interval: written with no further traffic

my $tag = uniq_id('flush');
my $t0 = time();
is(visits('/civchat/', $tag, 1), 1, 'one visit');
is(page_views('events.ndjson', $tag, count => 1, timeout => 3), 1,
	'flushed by the interval');
ok(time() - $t0 < 2, 'within the interval');

# a full buffer is written before the interval

$tag = uniq_id('full');
is(visits('/small/', $tag, 20), 20, '20 visits, over 4k of events');
ok(page_views('small.ndjson', $tag, count => 5, timeout => 2) >= 5,
	'a full buffer is written at once');

# the slow location writes nothing yet

$tag = uniq_id('reload');
is(visits('/slow/', $tag, 30), 30, '30 visits before the reload');
is(page_views('slow.ndjson', $tag, settle => 0.5), 0,
	'buffered: not written before the flush interval');

# reload: the old workers flush on exit

ok($t->reload(), 'reload');
is(page_views('slow.ndjson', $tag, count => 30, timeout => 5), 30,
	'reload: all 30 page views written');
is(page_views('small.ndjson', uniq_id('none')), 0, 'nothing else');

my $full = $tag;

###############################################################################

# reopen: rename the file, signal, and the events go to a new file

$tag = uniq_id('reopen');
is(visits('/civchat/', $tag, 5), 5, '5 visits before the rename');
page_views('events.ndjson', $tag, count => 5, timeout => 3);

rename("$d/events.ndjson", "$d/events.ndjson.1") or die "rename: $!";
is(visits('/civchat/', $tag, 5), 5, '5 visits after the rename');

$t->reopen();
sleep 0.5;
ok(-f "$d/events.ndjson", 'reopen: a new file');

is(visits('/civchat/', $tag, 5), 5, '5 visits after the reopen');

my $old = page_views('events.ndjson.1', $tag, settle => 0.3);
my $new = page_views('events.ndjson', $tag, count => 5, timeout => 3);
is($old + $new, 15, 'reopen: no page view lost');
ok($new >= 5, 'reopen: the new file gets the new events');
is($old, page_views('events.ndjson.1', $tag, settle => 0.3),
	'reopen: the old file is closed');

# reopen also flushes the buffers

$tag = uniq_id('reopen-flush');
is(visits('/slow/', $tag, 10), 10, '10 visits, buffered');
$t->reopen();
is(page_views('slow.ndjson', $tag, count => 10, timeout => 3), 10,
	'reopen flushes the buffer');

###############################################################################

# an event bigger than the buffer is written whole

$tag = uniq_id('big');
my $c = $t->client(base => '/small/');
$c->init({ url => "http://$tag/0" });
my $r = $c->event({ event => 'big', url => "http://$tag/1",
	attributes => { blob => 'z' x 20000, list => [ 1 .. 1000 ] } });
is($r->status, 200, 'an event of 25k with a 4k buffer: 200');
$c->init({ url => "http://$tag/2" });
$t->reopen();
my @big = $t->read_events(file => "$d/small.ndjson", count => 1, timeout => 3,
	match => { type => 'event', url => "http://$tag/1" });
is(scalar @big, 1, 'the big event is one line');
my $ba = Civchat::json_decode($big[0]{attrs} // '') // {};
is(length($ba->{blob} // ''), 20000, 'the big event is whole');
is(scalar @{$ba->{list} // []}, 1000, 'the big event is whole (list)');
is(page_views('small.ndjson', $tag, count => 2, timeout => 3), 2,
	'the events around it are there');

###############################################################################

# quit: everything accepted is written before nginx exits

$tag = uniq_id('quit');
is(visits('/slow/', $tag, 40), 40, '40 visits before quit');
is(visits('/small/', $tag, 3), 3, '3 more in the small buffer');
$t->stop();
is(page_views('slow.ndjson', $tag, settle => 0), 40,
	'quit: all 40 page views written');
is(page_views('small.ndjson', $tag, settle => 0), 3,
	'quit: the small buffer too');

# every line of every file is whole

for my $f (qw/events.ndjson events.ndjson.1 slow.ndjson small.ndjson/) {
	my $raw = $t->read_file($f) // '';
	ok($raw eq '' || substr($raw, -1) eq "\n", "$f ends with a newline");
	my @bad = grep { $_->{_bad} } $t->parse_events("$d/$f");
	is(scalar @bad, 0, "$f: every line JSON");
}

# a restart appends to the files

$t->run();
$tag = uniq_id('restart');
is(visits('/civchat/', $tag, 2), 2, 'visits after a restart');
is(page_views('events.ndjson', $tag, count => 2, timeout => 3), 2,
	'written after a restart');
is(page_views('slow.ndjson', $full, settle => 0), 30,
	'the earlier events are still there');

###############################################################################

$t->done_testing();

###############################################################################
