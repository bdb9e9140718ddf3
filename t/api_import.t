#!/usr/bin/perl

# (C) civchat developers

# Tests for the server API's batch import (README "Server API", issue 6): CSV
# (RFC 4180: quotes, doubled quotes, commas and line breaks inside
# quotes, CRLF) and NDJSON, a result for every row, a bad row (invalid
# JSON, an unclosed quote, more fields than the header, no id) an error
# of that row only that changes nothing, the events of the rows, and a
# 50,000-row import read from nginx's request body temp file: counts, a
# sample of the rows, the events, the worker's memory and health.  A
# large body is read a window of 1 MB at a time: records cut at every
# kind of place by a window's end, from the temporary file and from
# memory, and rows longer than a window (issue 12).  What an import does
# to its worker (slices, the answer streamed) is t/api_import_slices.t.

###############################################################################

use warnings;
use strict;
use utf8;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/is_key deep_subset num str is_num is_str json_encode
	json_decode uniq_id events_of/;

use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $TOKEN = 'import-token-0123456789abcdef';

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  96m;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat          zone=users;
            civchat_api_key  TESTKEY;
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
        }

        location /api/ {
            civchat_api         zone=users;
            civchat_api_token   $TOKEN;
            civchat_store       file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_body_limit  100m;
            client_max_body_size  100m;
        }

        # a large body kept in memory (read a window at a time too)
        location /mem/ {
            civchat_api         zone=users;
            civchat_api_token   $TOKEN;
            civchat_store       file=%%TESTDIR%%/bulk.ndjson flush=100ms;
            civchat_body_limit  100m;
            client_max_body_size  100m;
            client_body_buffer_size  16m;
        }

        # the large imports: their own event file, and a small body
        # buffer, so that the body goes through a temporary file
        location /bulk/ {
            civchat_api         zone=users;
            civchat_api_token   $TOKEN;
            civchat_store       file=%%TESTDIR%%/bulk.ndjson flush=100ms;
            civchat_body_limit  100m;
            client_max_body_size  100m;
            client_body_buffer_size  16k;
        }
    }
}

EOF

my $d = $t->testdir();

###############################################################################

sub api {
	my ($method, $path, $body, %o) = @_;

	my @h = (Authorization => "Bearer $TOKEN");

	if (defined $body) {
		$body = json_encode($body) if ref $body;
		push @h, 'Content-Type' => $o{type} // 'application/json';
	}

	return $t->request(method => $method,
		path => ($o{base} // '/api/') . $path, headers => \@h,
		body => $body, timeout => $o{timeout});
}

sub import_csv {
	my ($csv, %o) = @_;
	return api(POST => 'import', $csv, type => $o{type} // 'text/csv', %o);
}

sub import_ndjson {
	my ($text, %o) = @_;
	return api(POST => 'import', $text,
		type => $o{type} // 'application/x-ndjson', %o);
}

sub by_user_id { api(GET => 'users/user_id/' . enc($_[0])) }

sub enc {
	my ($s) = @_;
	utf8::encode($s) if utf8::is_utf8($s);
	$s =~ s/([^A-Za-z0-9_.\-~])/sprintf('%%%02X', ord $1)/ge;
	return $s;
}

sub show { diag($_[0]->describe()) }

# the answer's shape: counts, and results in row order
sub check_import {
	my ($r, $name, %want) = @_;

	my $j = $r->json;
	my $ok = is($r->status, 200, "$name: 200");
	$ok &= ok(ref $j eq 'HASH' && ref $j->{results} eq 'ARRAY',
		"$name: results") or return show($r);

	for my $c (qw/created updated errors/) {
		$ok &= ok(is_num($j->{$c}) && $j->{$c} == ($want{$c} // 0),
			"$name: $c " . ($want{$c} // 0))
			or diag("$c: " . ($j->{$c} // 'undef'));
	}

	my @res = @{$j->{results}};
	my $n = ($want{created} // 0) + ($want{updated} // 0)
		+ ($want{errors} // 0);
	$ok &= is(scalar @res, $n, "$name: a result for every row");

	$ok &= is(scalar(grep { $_->{result} eq 'created' } @res),
		$want{created} // 0, "$name: created results");
	$ok &= is(scalar(grep { $_->{result} eq 'updated' } @res),
		$want{updated} // 0, "$name: updated results");
	$ok &= is(scalar(grep { $_->{result} eq 'error' } @res),
		$want{errors} // 0, "$name: error results");

	$ok &= ok(!grep({ $_->{result} ne 'error' && !is_key($_->{key}) } @res),
		"$name: a key in every applied row");
	$ok &= ok(!grep({ $_->{result} eq 'error' && !(defined $_->{error}
		&& defined $_->{detail} && length $_->{detail} > 5) } @res),
		"$name: an error code and a detail in every failed row");

	# rows are numbered from 1 in order (only asked for when the body
	# has no blank lines)
	if ($want{numbered}) {
		$ok &= is_deeply([ map { $_->{row} } @res ], [ 1 .. @res ],
			"$name: rows numbered 1 .. " . scalar @res);
	}

	show($r) unless $ok;
	return @res;
}

# events since mark()

my $mark = 0;

sub mark {
	sleep 0.25;
	my @all = $t->parse_events();
	$mark = scalar @all;
}

sub new_events {
	my (%m) = @_;
	sleep 0.35;
	my @all = $t->parse_events();
	return events_of([ @all[$mark .. $#all] ], %m);
}

###############################################################################

# CSV: quotes, doubled quotes, commas, CRLF and LF inside quotes, UTF-8,
# empty fields (not given), names normalised

my $p = uniq_id('csv');
my $csv = "user_id,email,Full Name,note,plan,city\r\n"
	. "$p-1,\u$p-1\@Example.org,\"Kowalski, Jan\",\"He said \"\"hi\"\"\",gold,Kraków\r\n"
	. "$p-2,,\"Nowak\nAnna\",\"line one\r\nline two, with \"\"quotes\"\"\",silver,\r\n"
	. "\"$p-3\",\"$p-3\@example.org\",Zażółć Gęślą,,,\"\"\r\n"
	. "$p-4,,plain,\"\"\"\",\"a,b,c\",\"\n\"\r\n";

mark();
my $r = import_csv($csv);
my @res = check_import($r, 'CSV', created => 4, numbered => 1);

my %key;

for my $i (1 .. 4) {
	my $g = by_user_id("$p-$i");
	is($g->status, 200, "CSV row $i: found by user_id") or next;
	is($g->user->{key}, $res[$i - 1]{key}, "CSV row $i: the key of its result");
	$key{$i} = $g->user->{key};
}

my $u = by_user_id("$p-1")->user;
is($u->{email}, "$p-1\@example.org", 'CSV: email lower case');
is($u->{attributes}{full_name}, 'Kowalski, Jan', 'CSV: a comma inside quotes');
is($u->{attributes}{note}, 'He said "hi"', 'CSV: doubled quotes');
is($u->{attributes}{plan}, 'gold', 'CSV: an unquoted field');
is($u->{attributes}{city}, 'Kraków', 'CSV: UTF-8');
is(api(GET => 'users/email/' . enc("\U$p-1\E\@EXAMPLE.ORG"))->user->{key},
	$key{1}, 'CSV: found by email in any case');

$u = by_user_id("$p-2")->user;
is($u->{email}, undef, 'CSV: an empty email is not given');
is($u->{attributes}{full_name}, "Nowak\nAnna", 'CSV: LF inside quotes');
is($u->{attributes}{note}, "line one\r\nline two, with \"quotes\"",
	'CSV: CRLF, a comma and doubled quotes inside quotes');
ok(!exists $u->{attributes}{city}, 'CSV: an empty last field is not given');

$u = by_user_id("$p-3")->user;
is($u->{email}, "$p-3\@example.org", 'CSV: a quoted email');
is($u->{attributes}{full_name}, 'Zażółć Gęślą', 'CSV: UTF-8 name');
ok(!exists $u->{attributes}{note} && !exists $u->{attributes}{plan}
	&& !exists $u->{attributes}{city}, 'CSV: empty and "" fields not given');

$u = by_user_id("$p-4")->user;
is($u->{attributes}{note}, '"', 'CSV: a field of one quote');
is($u->{attributes}{plan}, 'a,b,c', 'CSV: commas only, quoted');
is($u->{attributes}{city}, "\n", 'CSV: a line break only, quoted');

my @ev = new_events(type => 'user_created');
is(scalar(grep { my $e = $_; grep { $e->{user_key} eq $_ } values %key } @ev),
	4, 'CSV: a user_created for each row');
@ev = new_events(type => 'profile_updated', user_key => $key{1});
my %ch = map { $_->{name} => json_decode($_->{attrs}) } @ev;
is_deeply($ch{full_name}, { old => undef, new => 'Kowalski, Jan' },
	'CSV: profile_updated for an attribute');
is_deeply($ch{user_id}, { old => undef, new => "$p-1" },
	'CSV: profile_updated for the user_id');

# the same rows again: updated; only real changes are events
$csv = "user_id,plan,Full Name\n$p-1,platinum,\"Kowalski, Jan\"\n$p-2,silver,\n";
mark();
$r = import_csv($csv, type => 'text/csv; charset=utf-8');
@res = check_import($r, 'CSV update', updated => 2, numbered => 1);
is($res[0]{key}, $key{1}, 'CSV update: row 1 is the same profile');
is($res[1]{key}, $key{2}, 'CSV update: row 2 is the same profile');
is(by_user_id("$p-1")->user->{attributes}{plan}, 'platinum',
	'CSV update: applied');
is(by_user_id("$p-2")->user->{attributes}{full_name}, "Nowak\nAnna",
	'CSV update: an empty field removes nothing');
@ev = new_events(type => qr/^(profile_updated|user_created)$/);
is(join(',', map { "$_->{type}:$_->{name}" } @ev), 'profile_updated:plan',
	'CSV update: one profile_updated, for the plan only');

# by email, and by key, when there is no user_id column
my $em = lc(uniq_id('csvmail')) . '@example.org';
$csv = "email,plan\n\U$em\E,by-email\n";
$r = import_csv($csv, type => 'TEXT/CSV');
@res = check_import($r, 'CSV by email', created => 1, numbered => 1);
my $ke = $res[0]{key};
$r = api(GET => 'users/email/' . enc($em));
is($r->user->{key}, $ke, 'CSV by email: found by the lower-case email');

$csv = "key,plan\n$ke,by-key\nNewCsvKey" . join('', map { ('a' .. 'z')[rand 26] } 1 .. 7)
	. ",new-key\n";
$r = import_csv($csv);
@res = check_import($r, 'CSV by key', created => 1, updated => 1,
	numbered => 1);
is($res[0]{key}, $ke, 'CSV by key: the existing profile');
is(api(GET => "users/key/$ke")->user->{attributes}{plan}, 'by-key',
	'CSV by key: applied');
like($res[1]{key}, qr/^NewCsvKey/, 'CSV by key: a new profile with that key');

# the header only; blank lines
$r = import_csv("user_id,plan\r\n");
check_import($r, 'CSV header only');
$p = uniq_id('blank');
$r = import_csv("user_id,plan\r\n\r\n$p-1,a\r\n\r\n\n$p-2\n\n");
check_import($r, 'CSV blank lines', created => 2);
$u = by_user_id("$p-2")->user;
is($u->{user_id}, "$p-2", 'CSV: a row with fewer fields than the header');
ok(!exists $u->{attributes}{plan}, 'CSV: the missing field is not given');

###############################################################################

# CSV: a bad row in the middle is an error of that row only

$p = uniq_id('mid');
$csv = "user_id,plan\n"
	. "$p-1,a\n"
	. "$p-2,b,EXTRA\n"		# more fields than the header
	. "$p-3,c\n"
	. "$p-4,d,X,Y\n"		# two more
	. "$p-5,e\n"
	. ",no id\n"			# no user_id, email or key
	. "$p-7,g\n";
mark();
$r = import_csv($csv);
@res = check_import($r, 'CSV bad rows', created => 4, errors => 3,
	numbered => 1);
is_deeply([ map { $_->{result} } @res ],
	[ qw/created error created error created error created/ ],
	'CSV bad rows: the result of each row') or show($r);
is($res[1]{error}, 'invalid_csv', 'CSV more fields: invalid_csv');
like($res[1]{detail} // '', qr/field/, 'CSV more fields: the detail says why');
ok(grep({ ($_->{error} // '') eq 'missing_field' } @res),
	'CSV no id: missing_field');
for my $i (1, 3, 5, 7) {
	is(by_user_id("$p-$i")->status, 200, "CSV bad rows: row $i applied");
}
for my $i (2, 4) {
	is(by_user_id("$p-$i")->status, 404, "CSV bad rows: row $i changed nothing");
}
@ev = new_events(user_id => qr/^\Q$p\E-[24]$/);
is(scalar @ev, 0, 'CSV bad rows: no events for the bad rows');
@ev = new_events(type => 'user_created');
is(scalar(grep { $_->{user_id} =~ /^\Q$p\E-/ } @ev), 4,
	'CSV bad rows: user_created for the 4 good rows');

# an unclosed quote in the last row
$p = uniq_id('uq');
$r = import_csv("user_id,name\n$p-1,Ann\n$p-2,\"Bob\n");
@res = check_import($r, 'CSV unclosed quote at the end', created => 1,
	errors => 1, numbered => 1);
is($res[1]{error}, 'invalid_csv', 'CSV unclosed quote: invalid_csv');
like($res[1]{detail} // '', qr/quote/, 'CSV unclosed quote: the detail says '
	. 'why');
is(by_user_id("$p-2")->status, 404, 'CSV unclosed quote: nothing created');
is(by_user_id("$p-1")->status, 200, 'CSV unclosed quote: row 1 applied');

# an unclosed quote in the middle (no other quote after it): that row is
# an error, the rows after it are applied
$p = uniq_id('uqm');
$r = import_csv("user_id,name\n$p-1,Ann\n$p-2,\"Bob\n$p-3,Cy\n$p-4,Dee\n");
@res = check_import($r, 'CSV unclosed quote in the middle', created => 3,
	errors => 1);
is(by_user_id("$p-2")->status, 404, 'CSV unclosed quote in the middle: row 2 '
	. 'created nothing');
for my $i (1, 3, 4) {
	is(by_user_id("$p-$i")->status, 200,
		"CSV unclosed quote in the middle: row $i applied");
}

# invalid UTF-8 in a field: that row only
$p = uniq_id('utf');
{
	my $body = "user_id,name\n$p-1,Ann\n$p-2,\xff\xfe\n$p-3,Cy\n";
	utf8::downgrade($body);
	$r = import_csv($body);
	@res = check_import($r, 'CSV invalid UTF-8', created => 2, errors => 1,
		numbered => 1);
	is(by_user_id("$p-2")->status, 404, 'CSV invalid UTF-8: row 2 changed '
		. 'nothing');
	is(by_user_id("$p-3")->status, 200, 'CSV invalid UTF-8: row 3 applied');
}

###############################################################################

# CSV as spreadsheets write it: Excel's byte order mark before the
# header, CR line ends (older Mac spreadsheets) beside LF and CRLF, line
# breaks of any kind inside quotes, rows the sheet left empty, trailing
# empty columns; what is wrong is an error of its row (in the header,
# of the import), never silent

sub bytes {
	my ($s) = @_;
	utf8::downgrade($s);
	return $s;
}

$p = uniq_id('bom');
$r = import_csv(bytes("\xef\xbb\xbfuser_id,Plan\r\n$p-1,gold\r\n"
	. "$p-2,silver\r\n"));
check_import($r, 'CSV with a BOM', created => 2, numbered => 1);
$u = by_user_id("$p-1")->user;
is($u->{user_id}, "$p-1", 'CSV with a BOM: the first column is user_id');
is($u->{attributes}{plan}, 'gold', 'CSV with a BOM: the row applied');
ok(!grep(/\x{feff}|user_id/, keys %{$u->{attributes} // {}}),
	'CSV with a BOM: no attribute named after the mark');

$p = uniq_id('bomq');
$r = import_csv(bytes("\xef\xbb\xbf\"user_id\",plan\n$p-1,gold\n"));
check_import($r, 'CSV with a BOM, the name quoted', created => 1);
is(by_user_id("$p-1")->status, 200, 'CSV with a BOM, quoted: found');

$p = uniq_id('cr');
$r = import_csv("user_id,name,note\r$p-1,Ann,\"two\rlines\"\r"
	. "$p-2,Bob,\"lf\nand crlf\r\n\"\r\r$p-3,Cy,\"\"\"q\"\"\"\n"
	. "$p-4,Dee,crlf\r\n$p-5,Ed,last");
check_import($r, 'CSV with CR line ends', created => 5, numbered => 1);
is(by_user_id("$p-1")->user->{attributes}{note}, "two\rlines",
	'CSV CR: a CR inside quotes is kept');
is(by_user_id("$p-2")->user->{attributes}{note}, "lf\nand crlf\r\n",
	'CSV CR: LF and CRLF inside quotes are kept');
is(by_user_id("$p-3")->user->{attributes}{note}, '"q"',
	'CSV CR: after an empty line, doubled quotes');
is(by_user_id("$p-4")->user->{attributes}{note}, 'crlf',
	'CSV CR: an LF line, then a CRLF line');
is(by_user_id("$p-5")->user->{attributes}{name}, 'Ed',
	'CSV CR: the last row without a line end');

$p = uniq_id('empty');
$r = import_csv("user_id,plan,,\r\n$p-1,a,,\r\n,,,\r\n$p-2,b,,\r\n,,,\r\n");
@res = check_import($r, 'CSV rows and columns left empty', created => 2);
is_deeply([ map { $_->{row} } @res ], [ 1, 2 ],
	'CSV rows left empty: skipped like blank lines');

$r = import_csv(bytes("\xff\xfeu\0s\0e\0r\0_\0i\0d\0\n\0"));
is($r->status, 400, 'CSV in UTF-16: 400');
is($r->error, 'invalid_csv', 'CSV in UTF-16: invalid_csv');
like($r->json->{detail} // '', qr/UTF-16/, 'CSV in UTF-16: the detail says so');

$p = uniq_id('nulh');
$r = import_csv(bytes("user\0id,plan\n$p-1,a\n"));
is($r->status, 400, 'CSV NUL in a name: 400, not a name cut short');
is($r->error, 'invalid_csv', 'CSV NUL in a name: invalid_csv');
like($r->json->{detail} // '', qr/NUL/, 'CSV NUL in a name: the detail says so');

$p = uniq_id('dup');
$r = import_csv("user_id,plan,plan\n$p-1,a,b\n");
is($r->status, 400, 'CSV a column named twice: 400');
like($r->json->{detail} // '', qr/twice/, 'CSV a column named twice: the '
	. 'detail says so');
is(by_user_id("$p-1")->status, 404, 'CSV a column named twice: nothing '
	. 'applied');

$p = uniq_id('rowerr');
$r = import_csv(bytes("user_id,name,plan\n"
	. "$p-1,A\0nn,gold\n"			# a NUL byte
	. "$p-2,\"Bob\"by,silver\n"		# text after the closing quote
	. "$p-3,\"Cy\" ,\"x\ny\"\n"		# a space after it, a quoted LF
	. "$p-4,Dee,\"quoted,\nfine\"\n"));
@res = check_import($r, 'CSV wrong rows', created => 1, errors => 3,
	numbered => 1);
is_deeply([ map { $_->{error} // $_->{result} } @res ],
	[ qw/invalid_csv invalid_csv invalid_csv created/ ],
	'CSV wrong rows: each an error of its own');
like($res[0]{detail} // '', qr/NUL/, 'CSV NUL in a field: the detail');
like($res[1]{detail} // '', qr/closing quote/,
	'CSV text after a closing quote: the detail');
for my $i (1 .. 3) {
	is(by_user_id("$p-$i")->status, 404, "CSV wrong row $i: nothing applied");
}
is(by_user_id("$p-4")->user->{attributes}{plan}, "quoted,\nfine",
	'CSV wrong rows: the row after them as it was sent');

###############################################################################

# NDJSON: bad lines, blank lines, CRLF, a numeric user_id, the last line
# without a newline, a row updating an earlier one

$p = uniq_id('nd');
my $num = 700000000 + int(rand(90000000));
my $nd = qq({"user_id":"$p-1","plan":"a","Favourite Colour":"blue"}\n)
	. qq(not json at all\n)
	. qq({"user_id":"$p-2","plan":"b"}\n)
	. qq([{"user_id":"$p-array"}]\n)
	. qq({"plan":"no id","name":"Nobody"}\n)
	. qq(\n)
	. qq({"user_id":$num,"plan":"numeric"}\r\n)
	. qq({"email":"\U$p\E-3\@Example.ORG","plan":"c"}\n)
	. qq({"user_id":"$p-1","plan":"a2"}\n)
	. qq({"user_id":"$p-trunc","plan":\n)
	. qq({"user_id":"$p-4","plan":"d","page_views":99});

mark();
$r = import_ndjson($nd);
@res = check_import($r, 'NDJSON', created => 5, updated => 1, errors => 4);
is_deeply([ map { $_->{result} } @res[0 .. 4] ],
	[ qw/created error created error error/ ],
	'NDJSON: the results of the first rows');
is_deeply([ map { $_->{row} } @res[0 .. 4] ], [ 1 .. 5 ],
	'NDJSON: the first rows numbered 1 .. 5');
is($res[1]{error}, 'invalid_json', 'NDJSON: not JSON: invalid_json');
is($res[3]{error}, 'invalid_json', 'NDJSON: an array: invalid_json');
is($res[4]{error}, 'missing_field', 'NDJSON: no id: missing_field');
like($res[4]{detail} // '', qr/ID is required/, 'NDJSON: no id: the detail');
my ($trunc) = grep { $_->{result} eq 'error' } @res[5 .. $#res];
is($trunc->{error}, 'invalid_json', 'NDJSON: a truncated line: invalid_json');
my ($upd) = grep { $_->{result} eq 'updated' } @res;
is($upd->{key}, $res[0]{key}, 'NDJSON: the updated row is row 1\'s profile');
ok($upd->{row} > $res[0]{row}, 'NDJSON: rows numbered in order');

$u = by_user_id("$p-1")->user;
is($u->{attributes}{plan}, 'a2', 'NDJSON: the later row wins');
is($u->{attributes}{favourite_colour}, 'blue', 'NDJSON: names normalised');
is(by_user_id("$p-2")->user->{attributes}{plan}, 'b', 'NDJSON: row 3');
$u = by_user_id($num)->user;
ok(is_str($u->{user_id}) && $u->{user_id} eq "$num",
	'NDJSON: a numeric user_id, as a string');
is($u->{attributes}{plan}, 'numeric', 'NDJSON: a CRLF line');
$r = api(GET => 'users/email/' . enc("$p-3\@example.org"));
is($r->user->{attributes}{plan}, 'c', 'NDJSON: by email, lower case');
$u = by_user_id("$p-4")->user;
is($u->{attributes}{plan}, 'd', 'NDJSON: the last line without a newline');
is($u->{page_views}, 0, 'NDJSON: page_views is read-only');
is(by_user_id("$p-array")->status, 404, 'NDJSON: the array row changed nothing');
is(by_user_id("$p-trunc")->status, 404, 'NDJSON: the truncated row changed '
	. 'nothing');
@ev = new_events(type => qr/./);
ok(!grep({ ($_->{user_id} // '') =~ /-(array|trunc)$/
	|| ($_->{attrs} // '') =~ /Nobody|no id/ } @ev),
	'NDJSON: no events for the bad rows');
is(scalar(grep { $_->{type} eq 'user_created' } @ev), 5,
	'NDJSON: a user_created for each created row');

# the API's rules in a row: null removes, user_id conflicts
$p = uniq_id('ndr');
api(POST => "users/user_id/$p-1", { plan => 'x', color => 'red' });
api(POST => "users/user_id/$p-2", { plan => 'y' });
mark();
$r = import_ndjson(qq({"user_id":"$p-1","color":null,"plan":""}\n)
	. qq({"user_id":"$p-1","email":"$p\@example.org"}\n)
	. qq({"email":"$p\@example.org","user_id":"$p-2"}\n));
check_import($r, 'NDJSON removal and conflict', updated => 3,
	numbered => 1);
$u = by_user_id("$p-1")->user;
ok(!exists $u->{attributes}{color}, 'NDJSON: null removes');
ok(!exists $u->{attributes}{plan}, 'NDJSON: "" removes');
is($u->{email}, "$p\@example.org", 'NDJSON: email set');
is(by_user_id("$p-2")->user->{email}, undef,
	'NDJSON: another profile\'s email not taken');
@ev = new_events(type => 'profile_updated', name => 'color');
is_deeply(json_decode($ev[0]{attrs}), { old => 'red', new => undef },
	'NDJSON: profile_updated with new null');

# a user_id given as a number is its exact integer, or no id at all:
# 1.0000000000000001 and 1e-400 are not the integers 1 and 0 the doubles
# hold, and an odd integer past 2^53 written as a real is not rounded
api(POST => 'users/user_id/1', { plan => 'one' });
api(POST => 'users/user_id/0', { plan => 'zero' });
my $big = 9007199254740993 + 2 * int(rand(1000000));
mark();
$r = import_ndjson(qq({"user_id":1.0000000000000001,"plan":"x"}\n)
	. qq({"user_id":1e-400,"plan":"x"}\n)
	. qq({"user_id":$big.0,"plan":"big"}\n));
@res = check_import($r, 'NDJSON numbers as user_id', created => 1,
	errors => 2, numbered => 1);
is_deeply([ map { $_->{error} // $_->{result} } @res ],
	[ qw/missing_field missing_field created/ ],
	'NDJSON numbers as user_id: not integers, no id');
is(by_user_id('1')->user->{attributes}{plan}, 'one',
	'NDJSON 1.0000000000000001: profile 1 unchanged');
is(by_user_id('0')->user->{attributes}{plan}, 'zero',
	'NDJSON 1e-400: profile 0 unchanged');
is(by_user_id("$big")->user->{attributes}{plan}, 'big',
	"NDJSON $big.0: the profile of exactly $big");

# an empty body; a body of blank lines
check_import(import_ndjson(''), 'NDJSON empty');
check_import(import_ndjson("\n\n\r\n"), 'NDJSON blank lines');

# without a Content-Type: NDJSON
$p = uniq_id('notype');
$r = $t->request(method => 'POST', path => '/api/import',
	headers => [ Authorization => "Bearer $TOKEN" ],
	body => qq({"user_id":"$p"}\n));
check_import($r, 'NDJSON without a Content-Type', created => 1);

###############################################################################

# A large body is read a window of 1 MB at a time (the longest row), and
# only whole records are taken from a window: the next one starts with
# the record the last one cut.  Records made to be cut at each window's
# end: a quoted field with line breaks (its CRLF cut in two), a doubled
# quote cut in two, a closing quote as a window's last byte, an opening
# quote as one, a CRLF line end cut in two, a CR line end as one; from
# the body's temporary file and from memory.

my $W = 1048576;

sub cut_csv {
	my ($p) = @_;

	my $pad = 'x' x 400;
	my $csv = "user_id,pad,note\r\n";
	my ($f, $window, %want) = (0, 0);

	# rows of 440 bytes up to 560 to 1000 bytes before the window's end
	my $fill = sub {
		$csv .= "$p-f" . ++$f . ",$pad,filler\r\n"
			while length($csv) + 1000 < $window + $W;
	};

	# a row whose byte $at (from the row's start, $at->(length of its
	# id)) is the window's last; the next window starts with this row,
	# or after it when the window holds all of it; $want->(y x k): the
	# row's attributes
	my $row = sub {
		my ($name, $at, $text, $want, $next_at_row) = @_;
		$fill->();
		my $start = length $csv;
		my $k = $window + $W - 1 - $start - $at->(length "$p-$name");
		$csv .= sprintf($text, "$p-$name", 'y' x $k);
		$want{"$p-$name"} = $want->('y' x $k);
		$window = $next_at_row ? $start : $window + $W;
	};

	# the CR of a CRLF in quotes, then its LF in the next window
	$row->('crlf', sub { $_[0] + 19 },
		"%s,p,\"two\nlines\r\nthen%s\r\nend\rx\"\r\n",
		sub { { note => "two\nlines\r\nthen$_[0]\r\nend\rx" } }, 1);

	# the first of a doubled quote
	$row->('dq', sub { $_[0] + 5 },
		"%s,p,\"q%s\"\"quoted\"\"\"\r\n",
		sub { { note => "q$_[0]\"quoted\"" } }, 1);

	# the closing quote, then the line end
	$row->('close', sub { $_[0] + 5 },
		"%s,p,\"c%s\"\r\n", sub { { note => "c$_[0]" } }, 1);

	# the opening quote
	$row->('open', sub { $_[0] + 2 },
		"%s,%s,\"o\npen\"\r\n", sub { { pad => $_[0], note => "o\npen" } },
		1);

	# the CR of a CRLF line end (the window holds the row)
	$row->('lf', sub { $_[0] + 7 },
		"%s,%s,plain\r\n", sub { { pad => $_[0], note => 'plain' } }, 0);

	# a lone CR line end
	$row->('cr', sub { $_[0] + 6 },
		"%s,%s,lone\r", sub { { pad => $_[0], note => 'lone' } }, 0);

	$csv .= "$p-last,p,last\r\n";

	return ($csv, $f + 7, \%want);
}

for my $where ('bulk', 'mem') {
	my $p = uniq_id("cut$where");
	my ($csv, $rows, $want) = cut_csv($p);

	$r = import_csv($csv, base => "/$where/", timeout => 50);
	check_import($r, "CSV cut at windows ($where)", created => $rows,
		numbered => 1);

	for my $id (sort keys %$want) {
		$u = by_user_id($id)->user;
		my @diff = deep_subset($want->{$id}, $u->{attributes});
		is(join('; ', @diff), '', "CSV cut at windows ($where): $id "
			. 'as sent');
	}

	is(by_user_id("$p-last")->user->{attributes}{note}, 'last',
		"CSV cut at windows ($where): the last row");
}

# NDJSON: a CRLF line end cut after its CR
{
	my $p = uniq_id('ndcut');
	my $nd = '';
	my $i = 0;
	$nd .= qq({"user_id":"$p-) . ++$i . qq(","pad":") . ('z' x 900)
		. qq("}\n) while length($nd) + 1100 < $W;
	my $line = qq({"user_id":"$p-cut","plan":"%s"}\r\n);
	my $k = $W - length($nd) - length(sprintf($line, '')) + 1;
	$nd .= sprintf($line, 'w' x $k) . qq({"user_id":"$p-after"}\n);

	$r = import_ndjson($nd, base => '/bulk/', timeout => 50);
	check_import($r, 'NDJSON cut at a window', created => $i + 2,
		numbered => 1);
	is(length(by_user_id("$p-cut")->user->{attributes}{plan} // ''), $k,
		'NDJSON cut at a window: the row cut');
	is(by_user_id("$p-after")->status, 200,
		'NDJSON cut at a window: the row after');
}

# rows longer than the window are errors of their own (row_too_long),
# the rows after them read as they were sent; a quote never closed
# still ends its record with its own line, however long the rest

{
	my $p = uniq_id('long');
	my $many = join('', map { "$p-" . (6 + $_) . ',' . ('v' x 1000) . "\n" }
		1 .. 1100);
	my $csv = "user_id,note\n"
		. "$p-1,short\n"
		. "$p-2,\"" . ("a line in quotes\r\n" x 90000) . "\"\n"
		. "$p-3,short\n"
		. "$p-4," . ('u' x 1200000) . "\r\n"
		. "$p-5,short\n"
		. "$p-6,\"never closed\n"
		. $many;

	$r = import_csv($csv, base => '/bulk/', timeout => 50);
	@res = check_import($r, 'CSV rows too long', created => 1103,
		errors => 3, numbered => 1);
	is_deeply([ map { $_->{error} // $_->{result} } @res[0 .. 6] ],
		[ qw/created row_too_long created row_too_long created
		invalid_csv created/ ], 'CSV rows too long: the results');
	like($res[1]{detail} // '', qr/longer than/,
		'CSV rows too long: the detail says why');
	like($res[5]{detail} // '', qr/quote/,
		'CSV a quote never closed: the detail says why');
	is(by_user_id("$p-2")->status, 404, 'CSV rows too long: a long quoted '
		. 'field changed nothing');
	is(by_user_id("$p-4")->status, 404, 'CSV rows too long: a long line '
		. 'changed nothing');
	for my $i (1, 3, 5, 7, 1106) {
		is(by_user_id("$p-$i")->status, 200,
			"CSV rows too long: row $i applied");
	}

	$p = uniq_id('longnd');
	my $nd = qq({"user_id":"$p-1"}\n)
		. qq({"user_id":"$p-2","note":") . ('n' x 1500000) . qq("}\n)
		. qq({"user_id":"$p-3"}\n)
		. qq({"user_id":"$p-4","note":") . ('n' x 1200000) . qq("});
	$r = import_ndjson($nd, base => '/bulk/', timeout => 50);
	@res = check_import($r, 'NDJSON rows too long', created => 2,
		errors => 2, numbered => 1);
	is_deeply([ map { $_->{error} // $_->{result} } @res ],
		[ qw/created row_too_long created row_too_long/ ],
		'NDJSON rows too long: the results');
	is(by_user_id("$p-2")->status, 404, 'NDJSON rows too long: nothing '
		. 'applied');

	$r = import_csv(('h' x 1100000) . ",user_id\n$p-9,x\n",
		base => '/bulk/', timeout => 50);
	is($r->status, 400, 'CSV a header row too long: 400');
	like($r->json->{detail} // '', qr/longer than/,
		'CSV a header row too long: the detail says why');
}

###############################################################################

# 50,000 rows of CSV through the request body temp file

my $N = 50000;
my ($worker) = $t->worker_pids();

sub vm {
	my ($pid, $what) = @_;
	my $s = $t->read_file("/proc/$pid/status") // '';
	return $s =~ /^$what:\s+(\d+) kB/m ? $1 : 0;
}

my $hwm0 = vm($worker, 'VmHWM');

$p = uniq_id('bulk');
$csv = "user_id,email,name,plan,note\r\n";
for my $i (1 .. $N) {
	$csv .= "$p-$i,$p-$i\@Example.org,\"Name, $i\",p" . ($i % 7)
		. ",\"says \"\"hi\"\"\nto $i\"\r\n";
}

my $start = time();
$r = import_csv($csv, base => '/bulk/', timeout => 50);
my $took = time() - $start;
diag(sprintf('50,000 rows (%.1f MB): %.1f s', length($csv) / 1e6, $took))
	if $ENV{TEST_NGINX_VERBOSE};

@res = check_import($r, "CSV $N rows", created => $N, numbered => 1);

my %uniq = map { ($_->{key} // '') => 1 } @res;
is(scalar keys %uniq, $N, "CSV $N rows: $N different keys");

like($t->read_file('error.log') // '',
	qr/a client request body is buffered to a temporary file/,
	"CSV $N rows: the body went through a temporary file");

# a sample of the rows, by user_id, email and key
my $bad = 0;
for my $i (1, 2, 3, 4999, 25000, 49999, $N, map { 1 + int rand $N } 1 .. 60) {
	my $g = by_user_id("$p-$i");
	my @diff = deep_subset({ key => $res[$i - 1]{key}, user_id => "$p-$i",
		email => lc("$p-$i\@example.org"), attributes => { name => "Name, $i",
		plan => 'p' . ($i % 7), note => "says \"hi\"\nto $i" } }, $g->user);
	$bad++, diag("row $i: " . join('; ', @diff)) if @diff;
}
is($bad, 0, "CSV $N rows: a sample of rows as imported");
is(api(GET => 'users/email/' . enc(uc "$p-777\@example.org"))->user->{user_id},
	"$p-777", "CSV $N rows: found by email");
is(api(GET => "users/key/$res[776]{key}")->user->{user_id}, "$p-777",
	"CSV $N rows: found by key");

# the events: a user_created for every row
sleep 0.5;
my $created = 0;
if (open(my $fh, '<', "$d/bulk.ndjson")) {
	while (<$fh>) {
		$created++ if /"type":"user_created"/ && /"user_id":"\Q$p\E-/;
	}
	close $fh;
}
is($created, $N, "CSV $N rows: $N user_created events");

# healthy: the same worker, answering
my @w = $t->worker_pids();
is_deeply(\@w, [ $worker ], "CSV $N rows: the worker is still the same");
$r = $t->client()->init({ plan => 'after bulk' });
is($r->status, 200, "CSV $N rows: the widget answers");
is(by_user_id("$p-1")->status, 200, "CSV $N rows: the API answers");

# memory: the rows are not each left behind in the request's memory
# (3.5 MB of CSV; results and events are a few tens of MB at most)
# (not under a sanitizer or valgrind, whose allocations are larger by
# design)
my $grew = vm($worker, 'VmHWM') - $hwm0;
SKIP: {
	skip 'memory under a sanitizer or valgrind', 1
		if $ENV{ASAN_OPTIONS} || $ENV{TEST_NGINX_VALGRIND};
	ok($grew < 80 * 1024, "CSV $N rows: the worker's peak memory grew by "
		. int($grew / 1024) . ' MB, less than 80 MB');
}

# the same rows as NDJSON: all updated
my $ndb = '';
for my $i (1 .. $N) {
	$ndb .= qq({"user_id":"$p-$i","plan":"q$i"}\n);
}
$r = import_ndjson($ndb, base => '/bulk/', timeout => 50);
@res = check_import($r, "NDJSON $N rows", updated => $N, numbered => 1);
is(by_user_id("$p-" . (1 + int rand $N))->user->{attributes}{plan} =~ /^q\d+$/
	? 1 : 0, 1, "NDJSON $N rows: applied");
is(by_user_id("$p-4242")->user->{attributes}{plan}, 'q4242',
	"NDJSON $N rows: row 4242");
is_deeply([ $t->worker_pids() ], [ $worker ],
	"NDJSON $N rows: the worker is still the same");

###############################################################################

$t->done_testing();

###############################################################################
