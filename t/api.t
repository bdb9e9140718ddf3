#!/usr/bin/perl

# (C) civchat developers

# Tests for the server API (README "Server API", issue 6): the token
# (nginx -t and every way a request can fail it), reading a profile by
# key, user_id and email, PUT/PATCH updates with the widget's attribute
# rules plus user_id, email and removal with null, POST create-or-update
# on a URL and on /users, numeric user_ids, emails in any case,
# conflicts, the profile_updated, user_created and user_deleted events,
# and erasure: the profile, its aliases and index entries gone from the
# zone and the state file. The batch import is in t/api_import.t.

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

my $TOKEN = 'api-token-0123456789-abcdef';

sub conf {
	my ($token) = @_;

	my $tok = defined $token ? "civchat_api_token  $token;" : '';

	return <<"EOF";

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
            civchat          zone=users;
            civchat_api_key  TESTKEY;
            civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
        }

        location /api/ {
            civchat_api         zone=users;
            $tok
            civchat_store       file=%%TESTDIR%%/events.ndjson flush=100ms;
            civchat_body_limit  100m;
            client_max_body_size  100m;
        }
    }
}

EOF
}

###############################################################################

# nginx -t: the token is required and at least 16 characters long

{
	my ($rc, $out) = $t->test_config(conf(), 'notoken.conf');
	isnt($rc, 0, 'nginx -t: civchat_api without a token fails');
	like($out, qr/civchat_api_token/, 'nginx -t: the message names '
		. 'civchat_api_token');

	($rc, $out) = $t->test_config(conf('a' x 15), 'short.conf');
	isnt($rc, 0, 'nginx -t: a 15-character token fails');
	like($out, qr/16/, 'nginx -t: the message says 16 characters');

	($rc, $out) = $t->test_config(conf('a' x 16), 'sixteen.conf');
	is($rc, 0, 'nginx -t: a 16-character token is fine') or diag($out);
}

$t->config(conf($TOKEN))->run();

my $d = $t->testdir();

###############################################################################

# an API request: api(METHOD, PATH under /api/, BODY, headers => [...],
# token => ..., type => ...); a reference BODY is sent as JSON

sub api {
	my ($method, $path, $body, %o) = @_;

	my @h;
	push @h, Authorization => 'Bearer ' . ($o{token} // $TOKEN)
		unless exists $o{token} && !defined $o{token};
	push @h, @{$o{headers} // []};

	if (defined $body) {
		$body = json_encode($body) if ref $body;
		push @h, 'Content-Type' => $o{type} // 'application/json';
	}

	return $t->request(method => $method, path => "/api/$path",
		headers => \@h, body => $body);
}

sub enc {
	my ($s) = @_;
	$s =~ s/([^A-Za-z0-9_.\-~])/sprintf('%%%02X', ord $1)/ge;
	return $s;
}

# events since mark(): mark() waits for the pending lines to be written
# (flush=100ms) and remembers how many there are

my $mark = 0;

sub mark {
	sleep 0.25;
	my @all = $t->parse_events();
	$mark = scalar @all;
}

# the new events of a profile (by user_key) of one type: waits for
# count => N (1), then settle => seconds (0.3) and reads once more
sub events_for {
	my ($key, $type, %o) = @_;

	my %m = (user_key => $key, type => $type, %{$o{match} // {}});
	my $want = $o{count} // 1;
	my $deadline = time() + ($o{timeout} // 3);
	my @ev;

	my $read = sub {
		my @all = $t->parse_events();
		return events_of([ @all[$mark .. $#all] ], %m);
	};

	while (1) {
		@ev = $read->();
		last if @ev >= $want || time() >= $deadline;
		sleep 0.05;
	}

	sleep($o{settle} // 0.3);

	return $read->();
}

# attrs of profile_updated events by attribute name: { name => {old, new} }
sub changes {
	my (@ev) = @_;
	my %c;
	for my $e (@ev) {
		next unless $e->{type} eq 'profile_updated';
		$c{$e->{name}} = json_decode($e->{attrs});
	}
	return \%c;
}

sub show { diag($_[0]->describe()) }

###############################################################################

# a visitor of the widget, identified, with attributes: A; another: B

my $ua = uniq_id('ua');
my $ea = lc(uniq_id('ea')) . '@example.org';
my $ca = $t->client();
my $r = $ca->init({ user_id => $ua, email => $ea, plan => 'gold',
	city_name => 'Kraków' });
is($r->status, 200, 'widget: A identified');
my $ka = $ca->key();
ok(is_key($ka), 'widget: A has a key');
$ca->page_hit({});

my $ub = uniq_id('ub');
my $eb = lc(uniq_id('eb')) . '@example.org';
my $cb = $t->client();
$cb->init({ user_id => $ub, email => $eb });
my $kb = $cb->key();
ok(is_key($kb) && $kb ne $ka, 'widget: B has another key');

# wait until their events are written: later reads should only see the
# API's own
$t->read_events(count => 1, match => { user_key => $kb,
	type => 'profile_updated', name => 'email' });

###############################################################################

# authorization: every route, every way to get the token wrong

{
	my $same_len = $TOKEN;
	substr($same_len, -1, 1) = substr($TOKEN, -1) eq 'x' ? 'y' : 'x';

	my @bad = (
		[ 'no header', undef ],
		[ 'Basic scheme', 'Basic ' . 'YWRtaW46cGFzc3dvcmQ=' ],
		[ 'Basic scheme with the token', "Basic $TOKEN" ],
		[ 'token without a scheme', $TOKEN ],
		[ 'Bearer without a token', 'Bearer' ],
		[ 'Bearer and a space', 'Bearer ' ],
		[ 'wrong token, same length', "Bearer $same_len" ],
		[ 'wrong token, shorter', 'Bearer ' . substr($TOKEN, 0, -1) ],
		[ 'the token plus one character', "Bearer ${TOKEN}x" ],
		[ 'a prefix of the token', 'Bearer ' . substr($TOKEN, 0, 4) ],
		[ 'wrong token, much longer', 'Bearer ' . ($TOKEN x 4) ],
		[ 'a token of other characters', 'Bearer ' . ('z' x 16) ],
		[ 'two spaces after Bearer', "Bearer  $TOKEN" ],
	);

	my @routes = (
		[ GET => "users/key/$ka" ],
		[ GET => "users/user_id/$ua" ],
		[ GET => 'users/email/' . enc($ea) ],
		[ PUT => "users/key/$ka", { plan => 'stolen' } ],
		[ PATCH => "users/key/$ka", { plan => 'stolen' } ],
		[ POST => "users/user_id/$ua", { plan => 'stolen' } ],
		[ POST => 'users', { user_id => $ua, plan => 'stolen' } ],
		[ DELETE => "users/key/$ka" ],
		[ POST => 'import', qq({"user_id":"$ua","plan":"stolen"}\n) ],
		[ GET => 'nowhere' ],
	);

	for my $b (@bad) {
		my ($name, $auth) = @$b;
		for my $rt (@routes) {
			my ($m, $p, $body) = @$rt;
			my $res = api($m, $p, $body, token => undef,
				headers => [ defined $auth
					? (Authorization => $auth) : () ]);
			my $ok = is($res->status, 401, "auth $name: $m $p: 401");
			$ok &= is($res->error, 'unauthorized',
				"auth $name: $m $p: error unauthorized");
			$ok &= ok(ref $res->json eq 'HASH'
				&& defined $res->json->{detail}
				&& length $res->json->{detail} > 5,
				"auth $name: $m $p: a detail");
			show($res) unless $ok;
		}
	}

	# nothing of that was applied
	$r = api(GET => "users/key/$ka");
	is($r->status, 200, 'auth: A is still there');
	is($r->user->{attributes}{plan}, 'gold', 'auth: A\'s plan unchanged');

	# the scheme is case-insensitive (RFC 7235), the token is not
	$r = api(GET => "users/key/$ka", undef, token => undef,
		headers => [ Authorization => "bearer $TOKEN" ]);
	is($r->status, 200, 'auth: "bearer" in lower case is the scheme');
	$r = api(GET => "users/key/$ka", undef, token => undef,
		headers => [ Authorization => 'Bearer ' . uc $TOKEN ]);
	is($r->status, 401, 'auth: the token in upper case is another token');
}

###############################################################################

# GET by key, user_id and email

my $ra = api(GET => "users/key/$ka");
is($ra->status, 200, 'GET by key: 200');
like($ra->header('content-type') // '', qr{application/json},
	'GET by key: JSON');
my @d = deep_subset({
	user => {
		key => $ka, user_id => $ua, email => $ea, aliases => [],
		first_seen => sub { is_num($_[0]) && $_[0] > 1e9 },
		last_seen => sub { is_num($_[0]) && $_[0] > 1e9 },
		page_views => num(2), sessions => num(1),
		attributes => { plan => 'gold', city_name => 'Kraków' },
	},
	created => JSON::PP::false,
}, $ra->json);
ok(!@d, 'GET by key: the profile') or do { diag(join("\n", @d)); show($ra) };
is_deeply([ sort keys %{$ra->json} ], [ 'created', 'user' ],
	'GET by key: user and created only');
is_deeply([ sort keys %{$ra->user} ], [ sort qw/key user_id email aliases
	verified first_seen last_seen page_views sessions attributes/ ],
	'GET by key: the profile\'s fields');
is_deeply($ra->user->{verified},
	{ user_id => JSON::PP::false, email => JSON::PP::false },
	'GET by key: a browser\'s user_id and email are claims');

$r = api(GET => "users/user_id/$ua");
is($r->status, 200, 'GET by user_id: 200');
is_deeply($r->user, $ra->user, 'GET by user_id: the same profile');

$r = api(GET => 'users/email/' . enc($ea));
is($r->status, 200, 'GET by email: 200');
is($r->user->{key}, $ka, 'GET by email: A');

$r = api(GET => 'users/email/' . enc(uc $ea));
is($r->status, 200, 'GET by email in upper case: 200');
is($r->user->{key}, $ka, 'GET by email in upper case: A');

$r = api(GET => "users/email/$ea");
is($r->user->{key}, $ka, 'GET by email: "@" not percent-encoded works too');

$r = api(HEAD => "users/key/$ka");
is($r->status, 200, 'HEAD by key: 200');
is($r->body, '', 'HEAD: no body');

# a GET changes nothing
$r = api(GET => "users/key/$ka");
is($r->user->{page_views}, 2, 'GET: page_views unchanged');
is($r->user->{last_seen}, $ra->user->{last_seen}, 'GET: last_seen unchanged');


# run_cases has no token: these go through api() instead
sub cases {
	my ($list) = @_;
	for my $c (@$list) {
		my $res = api($c->{method}, $c->{path}, $c->{body},
			%{$c->{opts} // {}});
		$res->check($c, $c->{name});
	}
}

cases([
	{ name => 'GET absent key', method => 'GET',
		path => 'users/key/AAAAAAAAAAAAAAAA', status => 404,
		error => 'not_found', detail => qr/^User with this ID does not exist$/ },
	{ name => 'GET absent user_id', method => 'GET',
		path => 'users/user_id/' . uniq_id('nobody'), status => 404,
		error => 'not_found', detail => qr/^User with this ID does not exist$/ },
	{ name => 'GET absent email', method => 'GET',
		path => 'users/email/nobody-' . uniq_id('x') . '@example.org',
		status => 404, error => 'not_found',
		detail => qr/^User with this ID does not exist$/ },
	{ name => 'GET malformed key', method => 'GET',
		path => 'users/key/not-a-key', status => 404,
		error => 'not_found' },
	{ name => 'GET a user_id by the key route', method => 'GET',
		path => "users/key/$ua", status => 404, error => 'not_found' },
	{ name => 'GET an email by the user_id route', method => 'GET',
		path => "users/user_id/$ea", status => 404, error => 'not_found' },
	{ name => 'GET empty key', method => 'GET', path => 'users/key/',
		status => 400, error => 'missing_field',
		detail => qr/^ID is required$/ },
	{ name => 'GET empty user_id', method => 'GET',
		path => 'users/user_id/', status => 400, error => 'missing_field',
		detail => qr/^ID is required$/ },
	{ name => 'GET empty email', method => 'GET', path => 'users/email/',
		status => 400, error => 'missing_field',
		detail => qr/^ID is required$/ },
	{ name => 'PUT empty user_id', method => 'PUT', path => 'users/user_id/',
		body => { plan => 'x' }, status => 400, error => 'missing_field',
		detail => qr/ID is required/ },
	{ name => 'PATCH empty key', method => 'PATCH', path => 'users/key/',
		body => { plan => 'x' }, status => 400, error => 'missing_field',
		detail => qr/ID is required/ },
	{ name => 'POST empty email', method => 'POST', path => 'users/email/',
		body => { plan => 'x' }, status => 400, error => 'missing_field',
		detail => qr/ID is required/ },
	{ name => 'DELETE empty key', method => 'DELETE', path => 'users/key/',
		status => 400, error => 'missing_field',
		detail => qr/ID is required/ },
	{ name => 'unknown kind', method => 'GET', path => "users/name/$ua",
		status => 404, error => 'not_found' },
	{ name => 'unknown route', method => 'GET', path => 'profiles',
		status => 404, error => 'not_found' },
	{ name => 'the location itself', method => 'GET', path => '',
		status => 404, error => 'not_found' },
	{ name => 'users/ with a slash', method => 'POST', path => 'users/',
		body => { user_id => $ua }, status => 404 },
	{ name => 'users/user_id without a slash', method => 'GET',
		path => 'users/user_id', status => 404 },
	{ name => 'GET users', method => 'GET', path => 'users',
		status => 405, error => 'method_not_allowed' },
	{ name => 'PUT users', method => 'PUT', path => 'users',
		body => { user_id => $ua }, status => 405,
		error => 'method_not_allowed' },
	{ name => 'DELETE users', method => 'DELETE', path => 'users',
		status => 405, error => 'method_not_allowed' },
	{ name => 'GET import', method => 'GET', path => 'import',
		status => 405, error => 'method_not_allowed' },
	{ name => 'PUT import', method => 'PUT', path => 'import',
		body => qq({"user_id":"$ua"}\n), status => 405,
		error => 'method_not_allowed' },
	{ name => 'OPTIONS on a profile', method => 'OPTIONS',
		path => "users/key/$ka", status => 405,
		error => 'method_not_allowed' },
	{ name => 'PUT invalid JSON', method => 'PUT', path => "users/key/$ka",
		body => '{"plan": ', status => 400, error => 'invalid_json' },
	{ name => 'PUT a JSON array', method => 'PUT', path => "users/key/$ka",
		body => '[{"plan": "x"}]', status => 400, error => 'invalid_json' },
	{ name => 'PUT a JSON string', method => 'PUT', path => "users/key/$ka",
		body => '"plan"', status => 400, error => 'invalid_json' },
	{ name => 'POST users invalid JSON', method => 'POST', path => 'users',
		body => '{user_id: 1}', status => 400, error => 'invalid_json' },
	{ name => 'POST users without an id', method => 'POST', path => 'users',
		body => { plan => 'x', name => 'Nobody' }, status => 400,
		error => 'missing_field', detail => qr/ID is required/ },
	{ name => 'POST users with an empty body', method => 'POST',
		path => 'users', body => '', status => 400,
		error => 'missing_field', detail => qr/ID is required/ },
	{ name => 'POST users with empty ids', method => 'POST', path => 'users',
		body => { user_id => '', email => '', key => '' }, status => 400,
		error => 'missing_field', detail => qr/ID is required/ },
	{ name => 'POST users with null ids', method => 'POST', path => 'users',
		body => { user_id => undef, email => undef }, status => 400,
		error => 'missing_field', detail => qr/ID is required/ },
	{ name => 'POST users with an object user_id', method => 'POST',
		path => 'users', body => { user_id => { id => 1 } }, status => 400,
		error => 'missing_field', detail => qr/ID is required/ },
	{ name => 'POST users with a malformed key only', method => 'POST',
		path => 'users', body => { key => 'short', plan => 'x' },
		status => 400, error => 'missing_field' },
	{ name => 'PUT absent user_id', method => 'PUT',
		path => 'users/user_id/' . uniq_id('nobody'), body => { plan => 'x' },
		status => 404, error => 'not_found',
		detail => qr/^User with this ID does not exist$/ },
	{ name => 'PATCH absent email', method => 'PATCH',
		path => 'users/email/' . uniq_id('nobody') . '@example.org',
		body => { plan => 'x' }, status => 404, error => 'not_found',
		detail => qr/^User with this ID does not exist$/ },
	{ name => 'PUT absent key', method => 'PUT',
		path => 'users/key/BBBBBBBBBBBBBBBB', body => { plan => 'x' },
		status => 404, error => 'not_found' },
	{ name => 'DELETE absent user_id', method => 'DELETE',
		path => 'users/user_id/' . uniq_id('nobody'), status => 404,
		error => 'not_found',
		detail => qr/^User with this ID does not exist$/ },
]);

# the 404s and 400s of PUT and POST created nothing
is(api(GET => 'users/key/BBBBBBBBBBBBBBBB')->status, 404,
	'PUT of an absent key created nothing');

###############################################################################

# PUT: the widget's attribute rules, plus removal and identity

mark();
$r = api(PUT => "users/key/$ka", {
	plan => 'platinum',			# changed
	city_name => 'Kraków',			# unchanged: no event
	'Favourite Colour' => 'blue',		# a name normalised
	score => 7,
	page_views => 1000,			# read-only
	first_seen => 1,			# read-only
	nested => { a => 1 },			# a nested object
	long => 'x' x 2000,			# too long
	'' => 'empty name',
});
is($r->status, 200, 'PUT: 200') or show($r);
is($r->json->{created}, JSON::PP::false, 'PUT: created false');
is($r->user->{key}, $ka, 'PUT: A');
is($r->user->{attributes}{plan}, 'platinum', 'PUT: plan changed');
is($r->user->{attributes}{favourite_colour}, 'blue',
	'PUT: the name normalised');
is($r->user->{attributes}{score}, 7, 'PUT: score');
is($r->user->{page_views}, 2, 'PUT: page_views not writable');
is($r->user->{first_seen}, $ra->user->{first_seen},
	'PUT: first_seen not writable');
ok(!exists $r->user->{attributes}{nested}, 'PUT: no nested object');
ok(!exists $r->user->{attributes}{long}, 'PUT: no over-long value');
is($r->ignored_reason('page_views'), 'read_only', 'PUT: page_views ignored');
is($r->ignored_reason('first_seen'), 'read_only', 'PUT: first_seen ignored');
ok(defined $r->ignored_reason('nested'), 'PUT: nested listed as ignored');
ok(defined $r->ignored_reason('long'), 'PUT: long listed as ignored');
ok(!defined $r->ignored_reason('plan'), 'PUT: plan not ignored');

my @ev = events_for($ka, 'profile_updated', count => 3);
my $ch = changes(@ev);
is_deeply($ch->{plan}, { old => 'gold', new => 'platinum' },
	'PUT: profile_updated plan old and new');
is_deeply($ch->{favourite_colour}, { old => undef, new => 'blue' },
	'PUT: profile_updated for a new attribute, old null');
ok(exists $ch->{score}, 'PUT: profile_updated score');
ok(!exists $ch->{city_name}, 'PUT: no profile_updated for an unchanged value');
ok(!grep({ defined $ch->{$_} } qw/page_views first_seen nested long/),
	'PUT: no profile_updated for ignored fields');
is(scalar events_for($ka, qr/^(?!profile_updated$)/, count => 0,
	settle => 0), 0, 'PUT: no other events');
my ($pe) = grep { $_->{name} eq 'plan' } @ev;
is($pe->{user_id}, $ua, 'PUT: the event has the user_id');
is($pe->{email}, $ea, 'PUT: the event has the email');

# the widget's visitor is still A
$r = $ca->init({});
is($r->key, $ka, 'widget after PUT: still A');

# PATCH is PUT
mark();
$r = api(PATCH => "users/user_id/$ua", { plan => 'silver' });
is($r->status, 200, 'PATCH by user_id: 200') or show($r);
is($r->user->{attributes}{plan}, 'silver', 'PATCH: plan');
@ev = events_for($ka, 'profile_updated', match => { name => 'plan',
	attrs => qr/silver/ });
is_deeply(changes(@ev)->{plan}, { old => 'platinum', new => 'silver' },
	'PATCH: profile_updated');

$r = api(PUT => 'users/email/' . enc(uc $ea), { plan => 'bronze' });
is($r->status, 200, 'PUT by email in upper case: 200') or show($r);
is($r->user->{key}, $ka, 'PUT by email: A');
is($r->user->{attributes}{plan}, 'bronze', 'PUT by email: plan');

# an empty object: nothing changes
$r = api(PUT => "users/key/$ka", {});
is($r->status, 200, 'PUT {}: 200');
is($r->user->{attributes}{plan}, 'bronze', 'PUT {}: unchanged');
$r = api(PUT => "users/key/$ka", '');
is($r->status, 200, 'PUT without a body: 200');

# null and "" remove an attribute
mark();
$r = api(PUT => "users/key/$ka", { favourite_colour => undef, score => '',
	never_set => undef });
is($r->status, 200, 'PUT null: 200') or show($r);
ok(!exists $r->user->{attributes}{favourite_colour}, 'PUT null: removed');
ok(!exists $r->user->{attributes}{score}, 'PUT "": removed');
ok(!exists $r->user->{attributes}{never_set}, 'PUT null of nothing: nothing');
is($r->user->{attributes}{plan}, 'bronze', 'PUT null: the rest kept');
@ev = events_for($ka, 'profile_updated', count => 2,
	match => { attrs => qr/"new":null/ });
$ch = changes(@ev);
is_deeply($ch->{favourite_colour}, { old => 'blue', new => undef },
	'PUT null: profile_updated with new null');
is_deeply($ch->{score}, { old => 7, new => undef },
	'PUT "": profile_updated with new null');
ok(!exists $ch->{never_set}, 'PUT null of nothing: no event');
$r = api(GET => "users/key/$ka");
ok(!exists $r->user->{attributes}{favourite_colour},
	'GET after removal: gone');

# a removal by a spelling of the name
api(PUT => "users/key/$ka", { nickname => 'Ala' });
$r = api(PUT => "users/key/$ka", { ' NickName ' => undef });
ok(!exists $r->user->{attributes}{nickname},
	'PUT null: the name is normalised for a removal too');

###############################################################################

# user_id and email through PUT: set, changed, and refused when another
# profile owns them

my $cc = $t->client();
$cc->init({ plan => 'anon' });
my $kc = $cc->key();
my $uc = uniq_id('uc');
my $ec = lc(uniq_id('ec')) . '@example.org';

mark();
$r = api(PUT => "users/key/$kc", { user_id => $uc, email => uc $ec,
	name => 'Cecylia' });
is($r->status, 200, 'PUT identity on an anonymous profile: 200') or show($r);
is($r->user->{user_id}, $uc, 'PUT: user_id set');
is($r->user->{email}, $ec, 'PUT: email set, lower case');
ok(!exists $r->user->{attributes}{user_id}, 'PUT: user_id not an attribute');
ok(!exists $r->user->{attributes}{email}, 'PUT: email not an attribute');
ok(!$r->json->{ignored}, 'PUT: nothing ignored');
@ev = events_for($kc, 'profile_updated', count => 3);
$ch = changes(@ev);
is_deeply($ch->{user_id}, { old => undef, new => $uc },
	'PUT: profile_updated user_id');
is_deeply($ch->{email}, { old => undef, new => $ec },
	'PUT: profile_updated email');
is(api(GET => "users/user_id/$uc")->user->{key}, $kc,
	'PUT: found by the new user_id');
is(api(GET => "users/email/$ec")->user->{key}, $kc,
	'PUT: found by the new email');
is(api(GET => "users/user_id/$uc")->user->{verified}{user_id},
	JSON::PP::true, 'PUT: the API\'s user_id is verified');
my $cw = $t->client();
$r = $cw->init({ user_id => $uc });
is($cw->profile, $kc, 'widget: the user_id set by the API identifies C');

# conflicts: B's user_id and email on C
$r = api(PUT => "users/key/$kc", { user_id => $ub, email => $eb,
	plan => 'conflicted' });
is($r->status, 200, 'PUT conflicts: 200') or show($r);
is($r->ignored_reason('user_id'), 'conflict', 'PUT: B\'s user_id: conflict');
is($r->ignored_reason('email'), 'conflict', 'PUT: B\'s email: conflict');
is($r->user->{user_id}, $uc, 'PUT conflict: C keeps its user_id');
is($r->user->{email}, $ec, 'PUT conflict: C keeps its email');
is($r->user->{attributes}{plan}, 'conflicted', 'PUT conflict: the rest applied');
is(api(GET => "users/user_id/$ub")->user->{key}, $kb,
	'PUT conflict: B keeps its user_id');
is(api(GET => 'users/email/' . enc($eb))->user->{key}, $kb,
	'PUT conflict: B keeps its email');
is(ref $r->json->{ignored}, 'ARRAY', 'PUT conflict: "ignored" is a list');

# an email conflict in another case is a conflict too
$r = api(PUT => "users/key/$kc", { email => uc $eb });
is($r->ignored_reason('email'), 'conflict', 'PUT: B\'s email in upper case: '
	. 'conflict');

# a profile's own values are not a conflict
$r = api(PUT => "users/user_id/$uc", { user_id => $uc, email => $ec });
ok(!$r->json->{ignored}, 'PUT own user_id and email: nothing ignored')
	or show($r);

# a new user_id replaces the old one in the index
my $uc2 = uniq_id('uc2');
mark();
$r = api(PUT => "users/user_id/$uc", { user_id => $uc2 });
is($r->user->{user_id}, $uc2, 'PUT: user_id changed');
@ev = events_for($kc, 'profile_updated', match => { name => 'user_id',
	attrs => qr/\Q$uc2\E/ });
is_deeply(changes(@ev)->{user_id}, { old => $uc, new => $uc2 },
	'PUT: profile_updated user_id old and new');
is(api(GET => "users/user_id/$uc")->status, 404,
	'PUT: the old user_id no longer finds C');
is(api(GET => "users/user_id/$uc2")->user->{key}, $kc,
	'PUT: the new user_id finds C');
$uc = $uc2;

# the old user_id is free again
$r = api(POST => "users/user_id/$uc", { plan => 'x' });
is($r->json->{created}, JSON::PP::false, 'POST by the new user_id: updated');

# an invalid email is ignored, not stored
$r = api(PUT => "users/key/$kc", { email => 'not an email' });
ok(defined $r->ignored_reason('email'), 'PUT: an invalid email ignored');
is($r->user->{email}, $ec, 'PUT: the invalid email not stored');

###############################################################################

# POST on a URL: create-or-update

my $ud = uniq_id('ud');
mark();
$r = api(POST => "users/user_id/$ud", { plan => 'new', name => 'Dorota' });
is($r->status, 201, 'POST new user_id: 201') or show($r);
is($r->json->{created}, JSON::PP::true, 'POST new user_id: created true');
my $kd = $r->user->{key};
ok(is_key($kd), 'POST new user_id: a key');
ok(!grep({ $_ eq $kd } $ka, $kb, $kc), 'POST new user_id: a new profile');
is($r->user->{user_id}, $ud, 'POST new user_id: the user_id');
is($r->user->{attributes}{plan}, 'new', 'POST new user_id: attributes');
is($r->user->{page_views}, 0, 'POST new user_id: no page views');
is_deeply($r->user->{aliases}, [], 'POST new user_id: no aliases');

@ev = events_for($kd, 'user_created');
is(scalar @ev, 1, 'POST new user_id: one user_created');
@ev = events_for($kd, 'profile_updated', count => 3);
$ch = changes(@ev);
is_deeply($ch->{user_id}, { old => undef, new => $ud },
	'POST new user_id: profile_updated user_id');
is_deeply($ch->{plan}, { old => undef, new => 'new' },
	'POST new user_id: profile_updated plan');

mark();
$r = api(POST => "users/user_id/$ud", { plan => 'again' });
is($r->status, 200, 'POST existing user_id: 200');
is($r->json->{created}, JSON::PP::false, 'POST existing: created false');
is($r->user->{key}, $kd, 'POST existing: the same profile');
is($r->user->{attributes}{plan}, 'again', 'POST existing: updated');
is($r->user->{attributes}{name}, 'Dorota', 'POST existing: the rest kept');
@ev = events_for($kd, 'user_created', count => 0);
is(scalar @ev, 0, 'POST existing: no second user_created');
@ev = events_for($kd, 'profile_updated');
is_deeply(changes(@ev), { plan => { old => 'new', new => 'again' } },
	'POST existing: profile_updated for plan only');

# POST by email creates with the email (lower case)
my $ee = 'New.' . uniq_id('Ee') . '@Example.ORG';
$r = api(POST => 'users/email/' . enc($ee), { plan => 'e' });
is($r->status, 201, 'POST new email: 201') or show($r);
my $ke = $r->user->{key};
is($r->user->{email}, lc $ee, 'POST new email: stored in lower case');
is($r->user->{user_id}, undef, 'POST new email: no user_id');
$r = api(POST => 'users/email/' . enc(lc $ee), { plan => 'e2' });
is($r->status, 200, 'POST same email in lower case: 200');
is($r->user->{key}, $ke, 'POST same email in lower case: the same profile');
$r = api(GET => 'users/email/' . enc(uc $ee));
is($r->user->{key}, $ke, 'GET same email in upper case: the same profile');

# POST by key: a well-formed unknown key is taken as the profile's key
my $kf = 'ApiKey' . join('', map { ('a' .. 'z')[rand 26] } 1 .. 10);
$r = api(POST => "users/key/$kf", { plan => 'f' });
is($r->status, 201, 'POST new key: 201') or show($r);
is($r->user->{key}, $kf, 'POST new key: the profile has that key');
$r = api(POST => "users/key/$kf", { plan => 'f2' });
is($r->status, 200, 'POST same key: 200');
is($r->user->{key}, $kf, 'POST same key: the same profile');

# a key that cannot be a key creates nothing (a second POST to the same
# URL would otherwise make yet another profile)
$r = api(POST => 'users/key/not-a-key', { plan => 'x' });
ok($r->status == 400 || $r->status == 404,
	'POST malformed key: 400 or 404, not a new profile')
	or show($r);

# POST with an identity owned by another profile: conflict
$r = api(POST => "users/user_id/$ud", { email => $eb });
is($r->ignored_reason('email'), 'conflict', 'POST: B\'s email: conflict');
isnt($r->user->{email} // '', $eb, 'POST: B\'s email not taken');

my $ug = uniq_id('ug');
$r = api(POST => "users/user_id/$ug", { user_id => $ub, plan => 'g' });
is($r->status, 201, 'POST new user_id naming B\'s in the body: 201');
is($r->user->{user_id}, $ug, 'POST: the URL\'s user_id kept');
is($r->ignored_reason('user_id'), 'conflict', 'POST: B\'s user_id: conflict');

###############################################################################

# POST /api/users: the body names the profile (user_id, else email,
# else key)

my $uh = uniq_id('uh');
mark();
$r = api(POST => 'users', { user_id => $uh, name => 'Halina',
	email => 'Halina.' . lc(uniq_id('h')) . '@Example.org' });
is($r->status, 201, 'POST users by user_id: 201') or show($r);
is($r->json->{created}, JSON::PP::true, 'POST users: created true');
my $kh = $r->user->{key};
my $eh = $r->user->{email};
is($r->user->{user_id}, $uh, 'POST users: user_id');
like($eh, qr/^halina\..*\@example\.org$/, 'POST users: email, lower case');
is($r->user->{attributes}{name}, 'Halina', 'POST users: attribute');
@ev = events_for($kh, 'user_created');
is(scalar @ev, 1, 'POST users: user_created');

$r = api(POST => 'users', { user_id => $uh, plan => 'h' });
is($r->status, 200, 'POST users again: 200');
is($r->user->{key}, $kh, 'POST users again: the same profile');
is($r->user->{attributes}{plan}, 'h', 'POST users again: updated');

# by email when there is no user_id, in any case
$r = api(POST => 'users', { email => uc $eh, plan => 'h2' });
is($r->status, 200, 'POST users by email in upper case: 200') or show($r);
is($r->user->{key}, $kh, 'POST users by email: the same profile');

# by key when there is neither
$r = api(POST => 'users', { key => $kh, plan => 'h3' });
is($r->status, 200, 'POST users by key: 200') or show($r);
is($r->user->{key}, $kh, 'POST users by key: the same profile');
is($r->user->{attributes}{plan}, 'h3', 'POST users by key: updated');
ok(!exists $r->user->{attributes}{key}, 'POST users: key not an attribute');

# user_id beats email: a body with a new user_id and B's email
my $ui = uniq_id('ui');
$r = api(POST => 'users', { user_id => $ui, email => $eb });
is($r->status, 201, 'POST users new user_id with B\'s email: 201');
isnt($r->user->{key}, $kb, 'POST users: not B');
is($r->ignored_reason('email'), 'conflict', 'POST users: B\'s email: conflict');

# numeric user_id: compared as its decimal string
my $num = 900000000 + int(rand(90000000));
$r = api(POST => 'users', qq({"user_id": $num, "plan": "numeric"}));
is($r->status, 201, 'POST users numeric user_id: 201') or show($r);
my $kn = $r->user->{key};
ok(is_str($r->user->{user_id}) && $r->user->{user_id} eq "$num",
	'numeric user_id: stored as a string');
$r = api(POST => 'users', qq({"user_id": "$num", "plan": "numeric2"}));
is($r->status, 200, 'the same user_id as a string: 200');
is($r->user->{key}, $kn, 'the same user_id as a string: the same profile');
$r = api(GET => "users/user_id/$num");
is($r->user->{key}, $kn, 'GET by the numeric user_id');
$r = api(POST => 'users', qq({"user_id": $num.0, "plan": "numeric3"}));
is($r->status, 200, 'user_id $num.0 (a serializer\'s integer): 200')
	or show($r);
is($r->user->{key}, $kn, 'user_id as n.0: the same profile');
$cw = $t->client();
$r = $cw->init({ user_id => $num + 0 });
is($cw->profile, $kn, 'widget with the numeric user_id: the same profile');
$r = api(POST => 'users', qq({"user_id": -42, "plan": "neg"}));
is($r->status, 201, 'a negative numeric user_id: 201');
is($r->user->{user_id}, '-42', 'a negative numeric user_id: "-42"');

# the widget trims a user_id and an email: the API finds the same
# profile for the same padded identifier every time
my $up = uniq_id('up');
$r = api(POST => 'users', { user_id => "  $up ", plan => 'pad' });
is($r->status, 201, 'POST users padded user_id: 201') or show($r);
my $kp = $r->user->{key};
is($r->user->{user_id}, $up, 'padded user_id: stored trimmed');
$r = api(POST => 'users', { user_id => "  $up ", plan => 'pad2' });
is($r->status, 200, 'POST users padded user_id again: 200, not a new '
	. 'profile') or show($r);
is($r->user->{key}, $kp, 'padded user_id again: the same profile');
$r = api(GET => "users/user_id/$up");
is($r->user->{key}, $kp, 'GET by the trimmed user_id: that profile');

my $epad = lc(uniq_id('pad')) . '@example.org';
$r = api(POST => 'users', { email => "  \u$epad ", plan => 'pad' });
is($r->status, 201, 'POST users padded email: 201') or show($r);
my $kq = $r->user->{key};
is($r->user->{email}, $epad, 'padded email: stored trimmed, lower case');
$r = api(POST => 'users', { email => "  \u$epad ", plan => 'pad2' });
is($r->status, 200, 'POST users padded email again: 200, not a new '
	. 'profile') or show($r);
is($r->user->{key}, $kq, 'padded email again: the same profile');

# an email the widget would refuse is no identifier either
for my $bad ([ 'POST users', 'users', { email => 'not an email', plan => 'x' } ],
	[ 'POST users/email', 'users/email/' . enc('not an email'),
		{ plan => 'x' } ],
	[ 'POST users/email without a dot', 'users/email/nobody', {} ])
{
	$r = api(POST => $bad->[1], $bad->[2]);
	ok($r->status == 400 || $r->status == 404
		|| ($r->user->{email} // '') =~ /^[^\s\@]+\@[^\s\@]+\.[^\s\@]+$/,
		"$bad->[0] with an invalid email: refused, not a profile "
		. 'indexed by it') or show($r);
}

# a new profile by key
my $kk = 'BodyKey' . join('', map { ('A' .. 'Z')[rand 26] } 1 .. 9);
$r = api(POST => 'users', { key => $kk, plan => 'k' });
is($r->status, 201, 'POST users new key: 201') or show($r);
is($r->user->{key}, $kk, 'POST users new key: that key');

###############################################################################

# DELETE: erasure of the profile, its aliases and its index entries

# an alias of B: an anonymous visitor who logs in with B's email
my $cz = $t->client();
$cz->init({ plan => 'alias' });
my $kz = $cz->key();
$r = $cz->init({ email => $eb });
is($cz->profile, $kb, 'widget: the anonymous visitor merged into B');
isnt($cz->key, $kz, 'widget: with a new key');
$r = api(GET => "users/key/$kb");
is_deeply($r->user->{aliases}, [ $cz->key ],
	'GET: B\'s aliases: the sessions of its other browsers');
$r = api(GET => "users/key/$kz");
is($r->status, 200, 'GET by the merged (retired) key: 200');
is($r->user->{key}, $kb, 'GET by the merged key: B');

mark();
$r = api(DELETE => "users/user_id/$ub");
is($r->status, 200, 'DELETE by user_id: 200') or show($r);
is_deeply($r->json, { deleted => JSON::PP::true, key => $kb },
	'DELETE: {"deleted": true, "key": ...}');

for my $p ("users/key/$kb", "users/key/$kz", "users/user_id/$ub",
	'users/email/' . enc($eb))
{
	$r = api(GET => $p);
	is($r->status, 404, "after DELETE: GET $p: 404");
	is($r->error, 'not_found', "after DELETE: GET $p: not_found");
}

@ev = events_for($kb, 'user_deleted');
is(scalar @ev, 1, 'DELETE: one user_deleted event');
is($ev[0]{user_id}, $ub, 'user_deleted: the user_id');
is($ev[0]{email}, $eb, 'user_deleted: the email');

$r = api(DELETE => "users/user_id/$ub");
is($r->status, 404, 'DELETE again: 404');
is($r->error, 'not_found', 'DELETE again: not_found');
$r = api(PUT => "users/key/$kb", { plan => 'ghost' });
is($r->status, 404, 'PUT after DELETE: 404');

# the identifiers are free again: B's user_id and email can be taken
$r = api(PUT => "users/key/$kc", { email => $eb });
ok(!defined $r->ignored_reason('email'), 'after DELETE: B\'s email is free')
	or show($r);
is($r->user->{email}, $eb, 'after DELETE: C took B\'s email');
api(PUT => "users/key/$kc", { email => $ec });

# the widget's cookie of the erased key gets a fresh profile
mark();
$r = $cb->init({});
is($r->status, 200, 'widget with B\'s cookie: 200');
is($r->user->{user_id}, undef, 'widget with B\'s cookie: no user_id');
is($r->user->{email}, undef, 'widget with B\'s cookie: no email');
is($r->user->{page_views}, 1, 'widget with B\'s cookie: a fresh profile');
my $kb2 = $cb->key();
@ev = events_for($kb2, 'user_created');
is(scalar @ev, 1, 'widget with B\'s cookie: user_created');
$r = api(GET => "users/key/$kb2");
is($r->user->{user_id}, undef, 'API: the fresh profile has no user_id');
ok(!exists $r->user->{attributes}{plan}, 'API: nor B\'s attributes');
is_deeply($r->user->{aliases}, [], 'API: nor B\'s alias');

$r = $cz->set_cookie('__ca__chat', $kz)->init({});
is($r->user->{page_views}, 1, 'widget with the alias cookie: fresh');
ok(!exists $r->user->{plan}, 'widget with the alias cookie: no old plan');

# DELETE by email and by key
mark();
$r = api(DELETE => 'users/email/' . enc(uc $ee));
is($r->status, 200, 'DELETE by email in upper case: 200') or show($r);
is($r->json->{key}, $ke, 'DELETE by email: its key');
is(api(GET => 'users/email/' . enc($ee))->status, 404,
	'DELETE by email: gone');
@ev = events_for($ke, 'user_deleted');
is(scalar @ev, 1, 'DELETE by email: user_deleted');

mark();
$r = api(DELETE => "users/key/$kd");
is($r->status, 200, 'DELETE by key: 200') or show($r);
is($r->json->{key}, $kd, 'DELETE by key: its key');
is(api(GET => "users/user_id/$ud")->status, 404,
	'DELETE by key: the user_id is gone too');
@ev = events_for($kd, 'user_deleted');
is(scalar @ev, 1, 'DELETE by key: user_deleted');
is($ev[0]{user_id}, $ud, 'DELETE by key: the event has the user_id');

# an erased user_id is created anew by POST
$r = api(POST => "users/user_id/$ud", { plan => 'reborn' });
is($r->status, 201, 'POST after DELETE: 201');
isnt($r->user->{key}, $kd, 'POST after DELETE: another key');
ok(!exists $r->user->{attributes}{name}, 'POST after DELETE: nothing old');
my $kd2 = $r->user->{key};
api(DELETE => "users/key/$kd2");

# the events of erasure carry no attribute values
for my $e ($t->read_events(settle => 0, match => { type => 'user_deleted' })) {
	my $a = json_decode($e->{attrs});
	ok(ref $a eq 'HASH' && !grep({ /plan|name/ } keys %$a),
		"user_deleted $e->{user_key}: no attributes in the event");
}

###############################################################################

# the state file: a stop writes it, without the erased profiles

$t->stop();

my $state = $t->read_file('civchat.state') // '';
ok(length $state, 'state file written at stop');

for my $gone ([ 'B\'s user_id', $ub ], [ 'B\'s email', $eb ],
	[ 'E\'s key', $ke ], [ 'E\'s email', lc $ee ], [ 'D\'s key', $kd ],
	[ 'D\'s second key', $kd2 ], [ 'D\'s user_id', $ud ])
{
	unlike($state, qr/\Q$gone->[1]\E/, "state file: $gone->[0] is not there");
}

# B's key and alias came back as fresh profiles (the widget's cookies):
# nothing of B's is in them
my %line = map { my $j = json_decode($_); ref $j eq 'HASH' && $j->{key}
	? ($j->{key} => $j) : () } split /\n/, $state;
for my $k ([ 'B\'s key', $kb ], [ 'B\'s alias', $kz ]) {
	my $p = $line{$k->[1]};
	ok(!$p || (!defined $p->{user_id} && !defined $p->{email}
		&& !@{$p->{aliases} // []} && !exists $p->{attrs}{plan}),
		"state file: $k->[0] is gone or a fresh profile")
		or diag(json_encode($p));
}
ok(!grep({ grep { $_ eq $kz } @{$_->{aliases} // []} } values %line),
	'state file: B\'s alias is no profile\'s alias');
ok($line{$ka}, 'state file: A is there');
ok($line{$kc}, 'state file: C is there');

$t->run();

is(api(GET => "users/user_id/$ub")->status, 404, 'restart: B still gone');
is(api(GET => 'users/email/' . enc($eb))->status, 404,
	'restart: B\'s email still gone');
is(api(GET => "users/user_id/$ud")->status, 404, 'restart: D still gone');
$r = api(GET => "users/user_id/$ua");
is($r->user->{key}, $ka, 'restart: A by user_id');
is($r->user->{attributes}{plan}, 'bronze', 'restart: A\'s plan');
is(api(GET => "users/user_id/$uc")->user->{key}, $kc, 'restart: C');
is(api(GET => "users/key/$kf")->user->{key}, $kf, 'restart: F by its key');

###############################################################################

$t->done_testing();

###############################################################################
