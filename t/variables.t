#!/usr/bin/perl

# (C) civchat developers

# Tests for the variables $civchat_user_key, $civchat_user_id,
# $civchat_country and $civchat_city: through add_header and an access
# log line in the civchat location (what the request resolved, the first
# visit included), and in other locations (read from the visitor cookie,
# the profile zone and GeoIP): add_header, an access log line, and
# proxy_set_header to a backend that echoes the header back.  The
# user_id is only shown to a browser that proved its profile: a switch
# by a bare user_id (no civchat_identity_secret) or a merged key shows
# none.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_encode is_key uniq_id/;
use Civchat::MMDB qw/mmdb_write/;

use Time::HiRes qw/sleep time/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $t = Civchat->new()->need_module();

mmdb_write($t->testdir() . '/City.mmdb', layout => 'city', networks => [
	'81.2.69.0/24' => { country => 'GB', region => 'ENG', city => 'London',
		tz => 'Europe/London' },
	'2001:db8:1234::/48' => { country => 'DE', region => 'BE',
		city => 'Berlin', tz => 'Europe/Berlin' },
	'89.160.20.112/28' => { country => 'SE', region => 'E',
		city => "Link\x{f6}ping", tz => 'Europe/Stockholm' },
	'2.125.160.216/29' => { country => 'GB' },
]);

$t->config(<<'EOF')->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    log_format  vars  't=$http_x_test k=$civchat_user_key u=$civchat_user_id '
                      'c=$civchat_country city=$civchat_city s=$status';

    civchat_zone     users  1m;
    civchat_geoip    %%TESTDIR%%/City.mmdb;
    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    set_real_ip_from  127.0.0.1;
    real_ip_header    X-Forwarded-For;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        location /civchat/ {
            civchat     zone=users;
            add_header  X-Civchat
                "k=$civchat_user_key;u=$civchat_user_id;c=$civchat_country;city=$civchat_city";
            access_log  %%TESTDIR%%/civchat.log  vars;
        }

        # unified identification with authorization: merges make aliases
        location /ua/ {
            civchat                         zone=users;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
            add_header  X-Civchat
                "k=$civchat_user_key;u=$civchat_user_id;c=$civchat_country;city=$civchat_city";
        }

        location = /page {
            add_header  X-U
                "k=$civchat_user_key;u=$civchat_user_id;c=$civchat_country;city=$civchat_city";
            access_log  %%TESTDIR%%/page.log  vars;
            return      200  "page";
        }

        location /app/ {
            proxy_pass        http://127.0.0.1:%%PORT_1%%;
            proxy_set_header  X-Civchat-User
                "k=$civchat_user_key;u=$civchat_user_id;c=$civchat_country;city=$civchat_city";
        }
    }

    # the application behind the proxy: echoes the header back
    server {
        listen       127.0.0.1:%%PORT_1%%;
        server_name  localhost;

        location /app/ {
            default_type  text/plain;
            return        200  $http_x_civchat_user;
        }
    }
}

EOF

###############################################################################

# "k=..;u=..;c=..;city=.." into a hash
sub parse_vars {
	my ($s) = @_;
	return undef unless defined $s;
	my %h;
	for my $kv (split /;/, $s, -1) {
		my ($k, $v) = split /=/, $kv, 2;
		$h{$k} = $v // '';
	}
	return \%h;
}

sub vars {
	my (%v) = @_;
	return { k => $v{k} // '', u => $v{u} // '', c => $v{c} // '',
		city => $v{city} // '' };
}

# the access log line of the request tagged $tag
sub log_line {
	my ($file, $tag) = @_;

	my $deadline = time() + 3;
	while (time() < $deadline) {
		for my $line (split /\n/, $t->read_file($file) // '') {
			next unless $line =~ /^t=\Q$tag\E /;
			my %h = $line =~ /(\w+)=(\S*)/g;
			$h{$_} = '' for grep { $h{$_} eq '-' } keys %h;
			return \%h;
		}
		sleep 0.05;
	}

	return undef;
}

sub log_vars {
	my ($h) = @_;
	return undef unless $h;
	return { map { $_ => $h->{$_} } qw/k u c city/ };
}

sub page {
	my (%o) = @_;
	my @h;
	push @h, Cookie => "__ca__chat=$o{cookie}" if defined $o{cookie};
	push @h, Cookie => $o{raw_cookie} if defined $o{raw_cookie};
	push @h, 'X-Forwarded-For' => $o{xff} if defined $o{xff};
	push @h, 'X-Test' => $o{tag} if defined $o{tag};
	return $t->request(method => 'GET', path => $o{path} // '/page',
		headers => \@h);
}

###############################################################################

# in the civchat location: what the request resolved

subtest 'civchat location, first visit: the key just minted' => sub {
	my $tag = uniq_id('first');
	my $uid = uniq_id('uid');
	my $c = $t->client(headers => ['X-Forwarded-For' => '81.2.69.160',
		'X-Test' => $tag]);
	my $r = $c->init({ user_id => $uid });

	is($r->status, 200, 'init 200');
	ok(is_key($r->key), 'a new key');
	is_deeply(parse_vars($r->header('X-Civchat')),
		vars(k => $r->key, u => $uid, c => 'GB', city => 'London'),
		'add_header: key, user_id, country, city')
		or diag($r->describe);
	is_deeply(log_vars(log_line('civchat.log', $tag)),
		vars(k => $r->key, u => $uid, c => 'GB', city => 'London'),
		'access log line: the same');
};

subtest 'civchat location, anonymous first visit, IPv6' => sub {
	my $tag = uniq_id('anon');
	my $c = $t->client(headers => ['X-Forwarded-For' => '2001:db8:1234::5',
		'X-Test' => $tag]);
	my $r = $c->init({});
	is_deeply(parse_vars($r->header('X-Civchat')),
		vars(k => $r->key, c => 'DE', city => 'Berlin'),
		'add_header: the key, no user_id') or diag($r->describe);
	is_deeply(log_vars(log_line('civchat.log', $tag)),
		vars(k => $r->key, c => 'DE', city => 'Berlin'), 'access log line');

	# the user_id set by this very request
	my $uid = uniq_id('uid');
	$r = $c->update({ user_id => $uid });
	is_deeply(parse_vars($r->header('X-Civchat')),
		vars(k => $c->key, u => $uid, c => 'DE', city => 'Berlin'),
		'update: the user_id it just set');
};

subtest 'civchat location, a switch: the resolved profile' => sub {
	my $uid = uniq_id('uid');
	my $x = $t->client(headers => ['X-Forwarded-For' => '81.2.69.161']);
	my $kx = $x->init({ user_id => $uid })->key;

	my $c = $t->client(headers => ['X-Forwarded-For' => '81.2.69.162']);
	my $kb = $c->init({})->key;
	isnt($kb, $kx, 'another profile first');

	my $r = $c->init({ user_id => $uid });
	is($r->user->{user_id}, $uid, 'switched');
	isnt($r->key, $kx, 'switched: a key of its own');
	is_deeply(parse_vars($r->header('X-Civchat')),
		vars(k => $r->key, u => '', c => 'GB', city => 'London'),
		'add_header: the new key, and no user_id the request did not '
		. 'prove');
	is_deeply(parse_vars($x->page_hit({})->header('X-Civchat')),
		vars(k => $kx, u => $uid, c => 'GB', city => 'London'),
		'add_header: X\'s own browser has its user_id');

	$r = $c->reset_auth({});
	ok(is_key($r->key) && $r->key ne $kx, 'reset_auth: a new key');
	is(parse_vars($r->header('X-Civchat'))->{k}, $r->key,
		'reset_auth: the new key');
};

subtest 'civchat location, Sec-GPC and a bot: no key' => sub {
	my $c = $t->client(headers => ['X-Forwarded-For' => '81.2.69.163',
		'Sec-GPC' => '1']);
	my $r = $c->init({ user_id => 'gpc-user' });
	is($r->json->{tracking}, 'anonymous', 'anonymous');
	my $v = parse_vars($r->header('X-Civchat'));
	is($v->{k}, '', 'no key') or diag($r->describe);
	is($v->{u}, '', 'no user_id');

	$c = $t->client(headers => ['User-Agent' => 'Googlebot/2.1']);
	$r = $c->init({ user_id => 'bot-user' });
	is($r->json->{tracking}, 'bot', 'bot');
	$v = parse_vars($r->header('X-Civchat'));
	is($v->{k}, '', 'bot: no key') or diag($r->describe);
	is($v->{u}, '', 'bot: no user_id');
};

###############################################################################

# other locations: from the cookie, the zone and GeoIP

my $uid = uniq_id('uid');
my $c = $t->client(headers => ['X-Forwarded-For' => '81.2.69.170']);
my $key = $c->init({ user_id => $uid })->key;
ok(is_key($key), 'a profile with a user_id');

subtest 'another location: add_header and the access log' => sub {
	my $tag = uniq_id('page');
	my $r = page(cookie => $key, xff => '81.2.69.171', tag => $tag);
	is($r->status, 200, 'status 200');
	is_deeply(parse_vars($r->header('X-U')),
		vars(k => $key, u => $uid, c => 'GB', city => 'London'),
		'add_header: the cookie\'s profile, the address\'s geo')
		or diag($r->describe);
	is_deeply(log_vars(log_line('page.log', $tag)),
		vars(k => $key, u => $uid, c => 'GB', city => 'London'),
		'access log line');

	$r = page(cookie => $key, xff => '2001:db8:1234:1::1');
	is_deeply(parse_vars($r->header('X-U')),
		vars(k => $key, u => $uid, c => 'DE', city => 'Berlin'),
		'IPv6: the geo of this request\'s address');

	$r = page(cookie => $key, xff => '2.125.160.217');
	is_deeply(parse_vars($r->header('X-U')),
		vars(k => $key, u => $uid, c => 'GB'), 'country only: no city');

	$r = page(cookie => $key, xff => '203.0.113.1');
	is_deeply(parse_vars($r->header('X-U')), vars(k => $key, u => $uid),
		'an address missing from the database: no country, no city');

	$r = page(cookie => $key, xff => '89.160.20.120');
	is($r->header('X-U'), "k=$key;u=$uid;c=SE;city=Link\xc3\xb6ping",
		'a non-ASCII city as UTF-8');

	$r = page(raw_cookie => "a=1; __ca__chat=$key; b=2", xff => '81.2.69.1');
	is(parse_vars($r->header('X-U'))->{k}, $key,
		'the cookie among others');
};

subtest 'another location: no cookie, a malformed cookie' => sub {
	my $tag = uniq_id('nocookie');
	my $r = page(xff => '81.2.69.172', tag => $tag);
	is_deeply(parse_vars($r->header('X-U')),
		vars(c => 'GB', city => 'London'), 'no cookie: geo only')
		or diag($r->describe);
	is_deeply(log_vars(log_line('page.log', $tag)),
		vars(c => 'GB', city => 'London'), 'access log line');

	$r = page(cookie => 'abc', xff => '81.2.69.172');
	is_deeply(parse_vars($r->header('X-U')),
		vars(c => 'GB', city => 'London'), 'a malformed key: no key');
};

subtest 'another location: a merged key, an unproved session' => sub {
	my $email = lc(uniq_id('e')) . '@example.org';

	my $x = $t->client(base => '/ua/',
		headers => ['X-Forwarded-For' => '81.2.69.180']);
	my $xuid = uniq_id('xuid');
	my $kx = $x->init({ user_id => $xuid, email => $email })->key;
	ok(is_key($kx), 'X holds the email');

	my $b = $t->client(base => '/ua/',
		headers => ['X-Forwarded-For' => '81.2.69.181']);
	my $kb = $b->init({})->key;
	ok(is_key($kb) && $kb ne $kx, 'an anonymous B');

	my $r = $b->init({ email => $email });
	my @ev = $b->events(count => 2);
	ok((grep { $_->{type} eq 'user_merged' } @ev), 'B identifies as X: merged')
		or diag(json_encode(\@ev));
	my $fb = $b->key;
	isnt($fb, $kb, 'B has a new key');

	# the merged key is retired: it names nobody

	$r = page(cookie => $kb, xff => '81.2.69.182');
	is_deeply(parse_vars($r->header('X-U')),
		vars(k => $kb, c => 'GB', city => 'London'),
		'the merged key shows no user_id') or diag($r->describe);

	$r = $t->request(method => 'GET', path => '/app/x',
		headers => [Cookie => "__ca__chat=$kb"]);
	is(parse_vars($r->body)->{u}, '', 'proxied: no user_id');

	# B's new key is X's, but B only knew X's email: unproved

	$r = page(cookie => $fb, xff => '81.2.69.182');
	is_deeply(parse_vars($r->header('X-U')),
		vars(k => $fb, c => 'GB', city => 'London'),
		'an unproved session shows no user_id') or diag($r->describe);

	$r = page(cookie => $kx, xff => '81.2.69.182');
	is(parse_vars($r->header('X-U'))->{u}, $xuid,
		'X\'s own browser shows its user_id');

	# in the civchat location, the merged key is refused

	my $a = $t->client(base => '/ua/',
		headers => ['X-Forwarded-For' => '81.2.69.183']);
	$a->set_cookie('__ca__chat', $kb);
	$r = $a->page_hit({});
	is($r->status, 409, 'civchat location: the merged key is refused');
};

subtest 'proxy_set_header to the application' => sub {
	my $r = $t->request(method => 'GET', path => '/app/x',
		headers => [Cookie => "__ca__chat=$key",
			'X-Forwarded-For' => '81.2.69.173']);
	is($r->status, 200, 'status 200');
	is_deeply(parse_vars($r->body),
		vars(k => $key, u => $uid, c => 'GB', city => 'London'),
		'the backend got the key, user_id, country and city')
		or diag($r->describe);

	$r = $t->request(method => 'GET', path => '/app/y',
		headers => ['X-Forwarded-For' => '2001:db8:1234::9']);
	is_deeply(parse_vars($r->body), vars(c => 'DE', city => 'Berlin'),
		'no cookie: geo only');

	# the user_id changes: the next request sees the new one
	my $uid2 = uniq_id('uid2');
	my $u = $t->client();
	my $k2 = $u->init({})->key;
	$r = $t->request(method => 'GET', path => '/app/z',
		headers => [Cookie => "__ca__chat=$k2"]);
	is_deeply(parse_vars($r->body), vars(k => $k2),
		'an anonymous profile: no user_id');
	$u->update({ user_id => $uid2 });
	my $k3 = $u->key;
	isnt($k3, $k2, 'the update gave the browser a new key');
	$r = $t->request(method => 'GET', path => '/app/z',
		headers => [Cookie => "__ca__chat=$k3"]);
	is_deeply(parse_vars($r->body), vars(k => $k3, u => $uid2),
		'after update: the new user_id');
	$r = $t->request(method => 'GET', path => '/app/z',
		headers => [Cookie => "__ca__chat=$k2"]);
	is(parse_vars($r->body)->{u}, '', 'the key before: no user_id');
};

$t->done_testing();

###############################################################################
