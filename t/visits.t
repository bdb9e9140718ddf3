#!/usr/bin/perl

# (C) civchat developers

# Tests for visits that change no attribute.  Such a page_hit or p.gif
# does not read the profile's attributes: the profile remembers a hash of
# the automatic values it stored (last_ip, browser_language, geo) and
# where its name is in the attributes' text.  Whatever changes the
# attributes (update, the server API, a visit with attributes, a new
# browser language) must be seen by the next visit, and the name in the
# answer must be the stored one: escaped, inside a nested object, or
# after one.

###############################################################################

use warnings;
use strict;
use utf8;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_encode json_decode/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

my $TOKEN = 'visits-token-0123456789';

$t->config(<<"EOF")->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone  users  1m;

    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat  zone=users;
        }

        location /api/ {
            civchat_api        zone=users;
            civchat_api_token  $TOKEN;
        }
    }
}

EOF

###############################################################################

sub api {
	my ($method, $path, $body) = @_;

	my @h = (Authorization => "Bearer $TOKEN");
	push @h, 'Content-Type' => 'application/json' if defined $body;

	return $t->request(method => $method, path => "/api/$path",
		headers => \@h,
		body => defined $body ? json_encode($body) : undef);
}

sub stored {
	my ($c) = @_;
	my $r = api('GET', 'users/key/' . $c->key);
	return $r->status == 200 ? $r->json->{user} : undef;
}

# a visitor whose browser sends the given Accept-Language
sub browser {
	my ($lang) = @_;
	return $t->client(headers => ['Accept-Language' => $lang]);
}

sub name_of { $_[0]->json->{user}{name} }

###############################################################################

subtest 'the name of a profile comes back on every visit' => sub {
	my $c = browser('pl-PL,pl;q=0.9');
	$c->init({ name => 'Anna Kowalska' });

	for my $n (1 .. 3) {
		my $r = $c->page_hit({});
		is($r->status, 200, "page_hit $n: 200");
		is(name_of($r), 'Anna Kowalska', "page_hit $n: the name");
		is($r->json->{user}{page_views}, 1 + $n, "page_hit $n: counted");
	}

	my $r = $t->request(method => 'GET',
		path => '/civchat/p.gif?apiKey=TESTKEY',
		headers => [Cookie => '__ca__chat=' . $c->key,
			'Accept-Language' => 'pl-PL']);
	is($r->status, 200, 'p.gif: 200');
	is(stored($c)->{page_views}, 5, 'p.gif: counted');
};

subtest 'a name with escapes, and with other scripts' => sub {
	for my $name ('Zoë "Zed" O\'Brien \\ the 2nd', "tab\there",
		'Łukasz Żółć 😀')
	{
		my $c = browser('en-GB');
		$c->init({ name => $name });
		is(name_of($c->page_hit({})), $name, "page_hit: \"$name\"");
		is(name_of($c->page_hit({})), $name, "again: \"$name\"");
	}
};

subtest 'only the top-level name is the name' => sub {
	my $c = browser('en-GB');
	$c->init({ company => { name => 'Acme', id => 'acme' } });
	is(name_of($c->page_hit({})), undef, 'a company\'s name is not hers');
	is(name_of($c->page_hit({})), undef, 'not on the next visit either');

	$c->post('update', { name => 'Real Name' });
	is(name_of($c->page_hit({})), 'Real Name', 'the name after company');
	is(name_of($c->page_hit({})), 'Real Name', 'and again');
};

subtest 'changes between visits are seen by the next visit' => sub {
	my $c = browser('pl-PL');
	$c->init({ name => 'First' });
	$c->page_hit({});
	$c->page_hit({});

	$c->post('update', { name => 'Second' });
	is(name_of($c->page_hit({})), 'Second', 'after update');

	my $r = api('PATCH', 'users/key/' . $c->key, { name => 'Third' });
	is($r->status, 200, 'API PATCH: 200');
	is(name_of($c->page_hit({})), 'Third', 'after the server API');

	$r = api('PATCH', 'users/key/' . $c->key, { name => undef });
	is(name_of($c->page_hit({})), undef, 'after the API removed it');

	$c->page_hit({ name => 'Fourth' });
	is(name_of($c->page_hit({})), 'Fourth', 'after a visit with a name');
};

subtest 'a new browser language is stored' => sub {
	my $c = browser('pl-PL,pl;q=0.9');
	$c->init({});
	$c->page_hit({});
	is(stored($c)->{attributes}{browser_language}, 'pl-PL', 'pl-PL');

	$c->{headers} = ['Accept-Language' => 'de-DE,de;q=0.9'];
	$c->page_hit({});
	is(stored($c)->{attributes}{browser_language}, 'de-DE',
		'then de-DE');

	$c->{headers} = ['Accept-Language' => 'pl-PL'];
	$c->page_hit({});
	is(stored($c)->{attributes}{browser_language}, 'pl-PL',
		'then pl-PL again');

	my $r = api('PATCH', 'users/key/' . $c->key, { plan => 'pro' });
	$c->page_hit({});
	my $u = stored($c);
	is($u->{attributes}{plan}, 'pro', 'an attribute set between visits');
	is($u->{attributes}{browser_language}, 'pl-PL', 'the language kept');
	is($u->{page_views}, 5, 'every visit counted (init and 4 page_hit)');
};

$t->stop();

unlike($t->read_file('error.log'), qr/\[(alert|crit|emerg)\]/,
	'no alerts in error.log');

done_testing();

###############################################################################
