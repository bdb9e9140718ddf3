#!/usr/bin/perl

# (C) civchat developers

# Tests for the privacy directives: civchat_anonymize_ip (event ip and
# profile last_ip masked, geo from the full address), civchat_respect_gpc
# (Sec-GPC / DNT: no cookie, no profile, an anonymous page view) and
# civchat_bot_filter (crawlers, monitors, headless browsers and HTTP
# libraries answered without a profile or an event).  Checked in the
# answers, the events written by the store and the profiles of the state
# file written at stop.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Civchat qw/json_encode json_decode is_key uniq_id/;
use Civchat::MMDB qw/mmdb_write/;

use Time::HiRes qw/sleep/;

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $LONDON = { country => 'GB', region => 'ENG', city => 'London',
	tz => 'Europe/London' };
my $DUBLIN = { country => 'IE', region => 'L', city => 'Dublin',
	tz => 'Europe/Dublin' };
my $BERLIN = { country => 'DE', region => 'BE', city => 'Berlin',
	tz => 'Europe/Berlin' };
my $VIENNA = { country => 'AT', region => '9', city => 'Vienna',
	tz => 'Europe/Vienna' };

my $t = Civchat->new()->need_module();

# the anonymised address falls in another network than the full one, so
# that the events show which one was looked up

mmdb_write($t->testdir() . '/City.mmdb', layout => 'city', networks => [
	'81.2.69.128/25' => $LONDON,
	'81.2.69.0/25' => $DUBLIN,
	'2001:db8:1234:5678::/64' => $BERLIN,
	'2001:db8:1234::/64' => $VIENNA,
	'2001:db8:abcd:ef00::/56' => $BERLIN,
	'2001:db8:abcd::/64' => $VIENNA,
]);

$t->config(<<'EOF')->run();

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_zone     users  1m  state=%%TESTDIR%%/state.json;
    civchat_geoip    %%TESTDIR%%/City.mmdb;
    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=100ms;

    set_real_ip_from  127.0.0.1;
    real_ip_header    X-Forwarded-For;

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

        # the defaults: anonymize off, respect_gpc on, bot_filter on
        location /civchat/ {
            civchat  zone=users;
        }

        location /anon/ {
            civchat               zone=users;
            civchat_anonymize_ip  on;
        }

        location /anonoff/ {
            civchat               zone=users;
            civchat_anonymize_ip  off;
        }

        location /nogpc/ {
            civchat              zone=users;
            civchat_respect_gpc  off;
        }

        location /nobot/ {
            civchat             zone=users;
            civchat_bot_filter  off;
        }
    }

    # the three set at server level, inherited by the location
    server {
        listen       127.0.0.1:%%PORT_1%%;
        server_name  localhost;

        civchat_anonymize_ip  on;
        civchat_respect_gpc   off;
        civchat_bot_filter    off;

        location /civchat/ {
            civchat  zone=users;
        }
    }
}

EOF

###############################################################################

# every profile this file makes: key => { name, last_ip, page_views, ua }
my %profiled;

sub profiled {
	my ($name, $key, %want) = @_;
	ok(is_key($key), "$name: a profile key") or return;
	$profiled{$key} = { name => $name, %want };
}

# an answer that resolved nobody: 200, no cookie, the tracking mode
sub unprofiled_answer {
	my ($name, $r, $tracking, $endpoint) = @_;

	is($r->status, 200, "$name: 200") or diag($r->describe);
	is(scalar $r->set_cookies(), 0, "$name: no Set-Cookie")
		or diag(join("\n", $r->set_cookies()));
	like($r->header('Content-Type') // '', qr{application/json},
		"$name: JSON");

	my $j = $r->json;
	ok(ref $j eq 'HASH', "$name: a JSON object") or return;

	if ($endpoint eq 'init') {
		# init adds the widget settings
		my %rest = %$j;
		delete $rest{widget};
		is_deeply(\%rest, { key => undef, user => undef,
			tracking => $tracking }, "$name: {key:null, user:null, "
			. "tracking:$tracking}") or diag($r->body);
	} else {
		is_deeply($j, { key => undef, user => undef, tracking => $tracking },
			"$name: exactly {key:null, user:null, tracking:$tracking}")
			or diag($r->body);
	}
}

sub profiled_answer {
	my ($name, $r) = @_;
	is($r->status, 200, "$name: 200") or diag($r->describe);
	ok(is_key($r->key), "$name: a key");
	is($r->cookie_value(), $r->key, "$name: the cookie is set");
	ok(!exists $r->json->{tracking} || !defined $r->json->{tracking},
		"$name: no tracking mode") if ref $r->json eq 'HASH';
}

my $FIREFOX = 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 '
	. 'Firefox/128.0';
my $CHROME = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 '
	. '(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36';

###############################################################################

# civchat_anonymize_ip

for my $case (
	[ '/anon/', '81.2.69.160', '81.2.69.0', $LONDON ],
	[ '/anon/', '81.2.69.255', '81.2.69.0', $LONDON ],
	[ '/anon/', '2001:db8:1234:5678::1', '2001:db8:1234::', $BERLIN ],
	[ '/anon/', '2001:db8:abcd:ef01:2345:6789:abcd:ef01', '2001:db8:abcd::',
		$BERLIN ],
	[ '/anonoff/', '81.2.69.160', '81.2.69.160', $LONDON ],
	[ '/anonoff/', '2001:db8:1234:5678::1', '2001:db8:1234:5678::1',
		$BERLIN ],
	[ '/civchat/', '81.2.69.161', '81.2.69.161', $LONDON ],
	[ '/civchat/', '2001:db8:1234:5678::2', '2001:db8:1234:5678::2',
		$BERLIN ],
	[ '/civchat/ (server level on)', '81.2.69.162', '81.2.69.0', $LONDON,
		1 ],
	[ '/civchat/ (server level on)', '2001:db8:1234:5678::3',
		'2001:db8:1234::', $BERLIN, 1 ],
)
{
	my ($where, $addr, $ip, $geo, $port) = @$case;
	my $base = $where =~ m{^(/\w+/)} ? $1 : $where;
	my $name = "anonymize $where $addr";

	subtest $name => sub {
		my $c = $t->client(base => $base, port => $port,
			headers => ['X-Forwarded-For' => $addr, 'User-Agent' => $FIREFOX]);

		my $r = $c->init({});
		profiled_answer('init', $r);

		my @ev = $c->events(count => 2);
		is(scalar @ev, 2, 'user_created and page_view');
		is_deeply([ map { $_->{ip} } @ev ], [ ($ip) x @ev ], "ip is $ip");
		is_deeply([ map { "$_->{country}/$_->{city}" } @ev ],
			[ ("$geo->{country}/$geo->{city}") x @ev ],
			'geo from the full address');

		$r = $c->event({ event => 'clicked' });
		is($r->status, 200, 'event 200');
		@ev = $c->events(count => 1);
		is($ev[0]{ip}, $ip, "event endpoint: ip is $ip");

		profiled($name, $c->key, last_ip => $ip);
	};
}

subtest 'anonymize an IPv4-mapped IPv6 address' => sub {
	my $c = $t->client(base => '/anon/',
		headers => ['X-Forwarded-For' => '::ffff:81.2.69.170']);
	profiled_answer('init', $c->init({}));
	my @ev = $c->events(count => 2);
	ok(@ev && !(grep { $_->{ip} !~ /^(::ffff:)?81\.2\.69\.0$/ } @ev),
		'ip is 81.2.69.0') or diag(json_encode([ map { $_->{ip} } @ev ]));
	is($ev[0]{city}, 'London', 'geo from the full address');
	profiled('anonymize mapped', $c->key,
		last_ip => qr/^(::ffff:)?81\.2\.69\.0$/);
};

###############################################################################

# civchat_respect_gpc

my $n = 0;

for my $case (
	[ 'Sec-GPC: 1', ['Sec-GPC' => '1'] ],
	[ 'DNT: 1', ['DNT' => '1'] ],
	[ 'sec-gpc: 1 (lower case name)', ['sec-gpc' => '1'] ],
	[ 'Sec-GPC: 1 and DNT: 0', ['Sec-GPC' => '1', 'DNT' => '0'] ],
)
{
	my ($name, $h) = @$case;

	for my $endpoint (qw/init page_hit/) {
		subtest "$name, $endpoint: anonymous" => sub {
			my $c = $t->client(headers => [@$h,
				'X-Forwarded-For' => '81.2.69.163',
				'User-Agent' => "$FIREFOX gpc-marker"]);
			my $uid = uniq_id('gpc-uid');
			my $email = lc(uniq_id('gpc')) . '@example.org';

			my $r = $c->post($endpoint, { user_id => $uid, email => $email,
				name => 'Opted Out', plan => 'pro' });
			unprofiled_answer($name, $r, 'anonymous', $endpoint);

			my @ev = $c->events(count => 1, timeout => 3);
			@ev = $t->read_events(settle => 0.2,
				match => { url => $c->last_url });
			is(join(',', map { $_->{type} } @ev), 'page_view',
				'one page_view event, nothing else');
			my $e = $ev[0] // {};
			for my $f (qw/user_key user_id email ip user_agent/) {
				is($e->{$f}, '', "page_view: empty $f");
			}
			is($e->{site}, 'TESTKEY', 'page_view: the site');
			unlike(json_encode($e),
				qr/\Q$uid\E|\Q$email\E|gpc-marker|81\.2\.69/,
				'nothing of the visitor in the event');
		};
	}
}

subtest 'Sec-GPC: 1 on update, reset_auth, product_event: no profile' => sub {
	my $c = $t->client(headers => ['Sec-GPC' => '1',
		'X-Forwarded-For' => '81.2.69.164']);
	my $uid = uniq_id('gpc-uid');

	my $r = $c->update({ user_id => $uid, plan => 'gpc-plan' });
	is($r->status, 200, 'update: 200');
	is(scalar $r->set_cookies(), 0, 'update: no Set-Cookie');
	is($r->key, undef, 'update: key null');
	is($r->json->{tracking}, 'anonymous', 'update: tracking anonymous');

	$r = $c->reset_auth({ user_id => $uid });
	is($r->status, 200, 'reset_auth: 200');
	is(scalar $r->set_cookies(), 0, 'reset_auth: no Set-Cookie');
	is($r->key, undef, 'reset_auth: key null');
	my @ev = $t->read_events(settle => 0.3, match => { url => $c->last_url });
	ok(!(grep { $_->{user_key} ne '' || $_->{type} ne 'page_view'
		&& $_->{type} ne 'event' } @ev), 'reset_auth: no identity event')
		or diag(json_encode(\@ev));

	$r = $c->product_event({ product_id => 'p1', event_type => 'view' });
	is($r->status, 200, 'product_event: 200');
	is($r->key, undef, 'product_event: key null');
	@ev = $c->events(count => 1);
	is($ev[0]{type}, 'product_event', 'an anonymous product_event');
	is($ev[0]{user_key}, '', 'product_event: no key');
	is($ev[0]{ip}, '', 'product_event: no address');
};

subtest 'Sec-GPC: 1 on the event endpoint: an anonymous event' => sub {
	my $c = $t->client(headers => ['Sec-GPC' => '1',
		'X-Forwarded-For' => '81.2.69.164']);
	my $r = $c->event({ event => 'signup_clicked', attributes => { x => 1 } });
	unprofiled_answer('event', $r, 'anonymous', 'event');
	my @ev = $c->events(count => 1);
	is(scalar @ev, 1, 'one event');
	is($ev[0]{type}, 'event', 'type event');
	is($ev[0]{name}, 'signup_clicked', 'its name');
	is($ev[0]{user_key}, '', 'no key');
	is($ev[0]{ip}, '', 'no address');
};

subtest 'a known visitor who sends Sec-GPC: 1' => sub {
	my $c = $t->client(headers => ['X-Forwarded-For' => '81.2.69.165']);
	my $r = $c->init({});
	profiled_answer('first visit', $r);
	my $key = $c->key;

	my $g = $t->client(headers => ['Sec-GPC' => '1',
		'X-Forwarded-For' => '81.2.69.165']);
	$g->set_cookie('__ca__chat', $key);
	$r = $g->page_hit({ plan => 'gpc-plan' });
	unprofiled_answer('with the cookie', $r, 'anonymous', 'page_hit');
	my @ev = $g->events(count => 1);
	is($ev[0]{user_key}, '', 'the page view is not the profile\'s');

	$r = $c->page_hit({});
	is($r->key, $key, 'later, without GPC: the same profile');
	is($r->user->{page_views}, 2, 'the opted-out page view was not counted '
		. 'on the profile');

	profiled('known visitor', $key, page_views => 2, no_attr => 'plan');
};

for my $case (
	[ 'DNT: 0', '/civchat/', ['DNT' => '0'] ],
	[ 'Sec-GPC: 0', '/civchat/', ['Sec-GPC' => '0'] ],
	[ 'no header', '/civchat/', [] ],
	[ 'Sec-GPC: 1, respect_gpc off', '/nogpc/', ['Sec-GPC' => '1'] ],
	[ 'DNT: 1, respect_gpc off', '/nogpc/', ['DNT' => '1'] ],
	[ 'Sec-GPC: 1, respect_gpc off at server level', '/civchat/',
		['Sec-GPC' => '1'], 1 ],
)
{
	my ($name, $base, $h, $port) = @$case;

	# the server with respect_gpc off at server level anonymises too
	my $ip = $port ? '81.2.69.0' : '81.2.69.166';

	subtest "$name: profiled" => sub {
		my $c = $t->client(base => $base, port => $port,
			headers => [@$h, 'X-Forwarded-For' => '81.2.69.166',
				'User-Agent' => $CHROME]);
		my $uid = uniq_id('ok-uid');
		my $r = $c->init({ user_id => $uid });
		profiled_answer($name, $r);
		is($r->user->{user_id}, $uid, 'the user_id');

		my @ev = $c->events(count => 3);
		my ($pv) = grep { $_->{type} eq 'page_view' } @ev;
		is($pv->{user_key}, $r->key, 'page_view: the key');
		is($pv->{ip}, $ip, 'page_view: the address');
		is($pv->{user_agent}, $CHROME, 'page_view: the User-Agent');

		profiled($name, $c->key, last_ip => $ip, user_id => $uid);
	};
}

###############################################################################

# civchat_bot_filter

my @BOTS = (
	'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
	'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; '
		. 'Googlebot/2.1; +http://www.google.com/bot.html) Chrome/124.0 '
		. 'Safari/537.36',
	'Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)',
	'Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)',
	'Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)',
	'Baiduspider+(+http://www.baidu.com/search/spider.htm)',
	'Mozilla/5.0 (compatible; Yahoo! Slurp; '
		. 'http://help.yahoo.com/help/us/ysearch/slurp)',
	'facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)',
	'Twitterbot/1.0',
	'Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)',
	'WhatsApp/2.23.20.0',
	'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) '
		. 'HeadlessChrome/124.0.0.0 Safari/537.36',
	'Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) '
		. 'PhantomJS/2.1.1 Safari/538.1',
	'Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 '
		. '(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 '
		. 'Chrome-Lighthouse',
	'Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)',
	'Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)',
	'StatusCake_Pagespeed_indev',
	'Datadog Agent/7.50.0',
	'check_http/v2.3.3 (monitoring-plugins 2.3.3)',
	'python-requests/2.31.0',
	'Python-urllib/3.11',
	'Go-http-client/1.1',
	'Java/17.0.9',
	'okhttp/4.12.0',
	'Apache-HttpClient/4.5.14 (Java/17.0.9)',
	'libwww-perl/6.72',
	'Wget/1.21.3',
	'Scrapy/2.11.0 (+https://scrapy.org)',
	'node-fetch/1.0 (+https://github.com/bitinn/node-fetch)',
	'axios/1.6.8',
	'GOOGLEBOT (upper case)',
	'bot',
	'Mozilla/5.0 (X11; Linux x86_64) selenium',
);

my @NOT_BOTS = (
	$FIREFOX,
	$CHROME,
	'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) '
		. 'AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 '
		. 'Mobile/15E148 Safari/604.1',
	'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like '
		. 'Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51',
	'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 '
		. '(KHTML, like Gecko) Version/17.4 Safari/605.1.15',
	'Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/126.0 bo',
	'b',
);

my @bot_urls;
my @bot_uids;

for my $ua (@BOTS) {
	subtest "bot: $ua" => sub {
		my $c = $t->client(headers => ['User-Agent' => $ua,
			'X-Forwarded-For' => '81.2.69.167']);
		my $uid = uniq_id('bot-uid');
		push @bot_uids, $uid;

		for my $endpoint (qw/init page_hit/) {
			my $r = $c->post($endpoint, { user_id => $uid });
			unprofiled_answer($endpoint, $r, 'bot', $endpoint);
			push @bot_urls, $c->last_url;
		}

		my $r = $c->event({ event => 'bot_event' });
		unprofiled_answer('event', $r, 'bot', 'event');
		push @bot_urls, $c->last_url;

		for my $endpoint (qw/update reset_auth/) {
			$r = $c->post($endpoint, { user_id => $uid, plan => 'bot-plan' });
			is($r->status, 200, "$endpoint: 200");
			is(scalar $r->set_cookies(), 0, "$endpoint: no Set-Cookie");
			is($r->key, undef, "$endpoint: key null");
			is($r->json->{tracking}, 'bot', "$endpoint: tracking bot");
			push @bot_urls, $c->last_url;
		}

		$r = $c->product_event({ product_id => 'p1', event_type => 'view' });
		unprofiled_answer('product_event', $r, 'bot', 'product_event');
	};
}

subtest 'a known visitor with a bot User-Agent' => sub {
	my $c = $t->client(headers => ['User-Agent' => $FIREFOX]);
	my $r = $c->init({});
	profiled_answer('first visit', $r);
	my $key = $c->key;

	my $b = $t->client(headers => ['User-Agent' => $BOTS[0]]);
	$b->set_cookie('__ca__chat', $key);
	$r = $b->page_hit({ plan => 'bot-plan' });
	unprofiled_answer('with the cookie', $r, 'bot', 'page_hit');
	push @bot_urls, $b->last_url;

	$r = $c->page_hit({});
	is($r->user->{page_views}, 2, 'the bot\'s page view was not counted');
	profiled('known visitor, bot UA', $key, page_views => 2,
		no_attr => 'plan', ua => $FIREFOX);
};

subtest 'Sec-GPC and a bot User-Agent: no profile either way' => sub {
	my $c = $t->client(headers => ['User-Agent' => $BOTS[0],
		'Sec-GPC' => '1']);
	my $r = $c->page_hit({ user_id => 'gpc-and-bot' });
	is($r->status, 200, 'status 200');
	is(scalar $r->set_cookies(), 0, 'no cookie');
	is($r->key, undef, 'key null');
	like($r->json->{tracking} // '', qr/^(bot|anonymous)$/, 'tracking');
	my @ev = $t->read_events(settle => 0.3, match => { url => $c->last_url });
	ok(!(grep { $_->{user_key} ne '' || $_->{user_agent} ne '' } @ev),
		'no key or User-Agent in any event');
	push @bot_uids, 'gpc-and-bot';
};

# no event for any bot request
{
	my %urls = map { $_ => 1 } @bot_urls;
	my @ev = grep { $urls{$_->{url}} } $t->read_events(settle => 0.4);
	is(scalar @ev, 0, 'bots: no event in the store')
		or diag(json_encode($ev[0]));

	# the product events carry no url: find them by User-Agent (the
	# bot_filter off cases below come from another address)
	my %bots = map { $_ => 1 } @BOTS;
	@ev = grep { $bots{$_->{user_agent}}
		&& ($_->{ip} eq '81.2.69.167' || $_->{ip} eq '127.0.0.1') }
		$t->read_events(settle => 0);
	is(scalar @ev, 0, 'bots: no event with a bot\'s User-Agent')
		or diag(json_encode($ev[0]));
}

for my $ua (@NOT_BOTS, undef) {
	my $name = defined $ua ? $ua : 'no User-Agent';
	subtest "not a bot: $name" => sub {
		my $c = $t->client(headers => [
			(defined $ua ? ('User-Agent' => $ua) : ()),
			'X-Forwarded-For' => '81.2.69.168']);
		my $r = $c->init({});
		profiled_answer('init', $r);
		my @ev = $c->events(count => 2);
		is(join(',', sort map { $_->{type} } @ev), 'page_view,user_created',
			'events');
		is($ev[0]{user_agent}, $ua // '', 'the User-Agent in the events');
		profiled("not a bot: $name", $c->key, ua => $ua);
	};
}

# a worker remembers its verdicts on recent User-Agents in 16 slots
# chosen by the length, the middle byte and the last but one: these two
# share a slot, so each must evict the other's verdict, never take it

subtest 'recent User-Agents: each keeps its own verdict' => sub {
	my $bot = 'Mozilla/5.0 (X11; Linux x86_64) a-bot/1.0 Gecko/20100101 1.0';
	(my $browser = $bot) =~ s/a-bot/a-bat/;
	my $mid = int(length($bot) / 2);
	ok(substr($bot, $mid, 1) eq substr($browser, $mid, 1)
		&& substr($bot, -2, 1) eq substr($browser, -2, 1),
		'the two share a slot');

	for my $round (1 .. 3) {
		my $b = $t->client(headers => ['User-Agent' => $bot]);
		unprofiled_answer("round $round: the bot", $b->init({}), 'bot',
			'init');

		my $c = $t->client(headers => ['User-Agent' => $browser]);
		my $r = $c->init({});
		profiled_answer("round $round: the browser", $r);
		profiled("round $round: the browser", $c->key, ua => $browser);
	}
};

for my $case ([ '/nobot/', undef ], [ '/civchat/ (server level off)', 1 ]) {
	my ($where, $port) = @$case;
	my $base = $where =~ m{^(/\w+/)} ? $1 : $where;

	for my $ua (@BOTS[0, 11, 19]) {
		subtest "bot_filter off $where: $ua" => sub {
			my $c = $t->client(base => $base, port => $port,
				headers => ['User-Agent' => $ua,
					'X-Forwarded-For' => '81.2.69.169']);
			my $r = $c->init({});
			profiled_answer('init', $r);
			my @ev = $c->events(count => 2);
			is(scalar @ev, 2, 'user_created and page_view');
			is($ev[0]{user_agent}, $ua, 'the User-Agent in the events');
			profiled("bot_filter off $where: $ua", $c->key, ua => $ua);
		};
	}
}

###############################################################################

# the zone, from the state file written at stop: exactly the profiles
# made above

$t->stop();

my %state;
{
	my @lines = split /\n/, $t->read_file('state.json') // '';
	my $head = json_decode(shift(@lines) // '');
	ok(ref $head eq 'HASH', 'state file: header line');
	for my $line (@lines) {
		my $p = json_decode($line);
		$state{$p->{key}} = $p if ref $p eq 'HASH' && defined $p->{key};
	}
	is($head->{profiles}, scalar keys %state, 'state file: profile count')
		if ref $head eq 'HASH';
}

{
	my @extra = grep { !$profiled{$_} } sort keys %state;
	my @missing = grep { !$state{$_} } sort keys %profiled;

	ok(!@extra, 'no profile made by an opted-out or bot request')
		or diag(join("\n", map { json_encode($state{$_}) } @extra));
	ok(!@missing, 'every profiled visitor is in the zone')
		or diag(join("\n", map { $profiled{$_}{name} } @missing));

	my %uids = map { $_ => 1 } @bot_uids;
	my @leak = grep { my $p = $_;
		(defined $p->{user_id} && ($uids{$p->{user_id}}
			|| $p->{user_id} =~ /^gpc-uid/))
		|| (defined $p->{email} && $p->{email} =~ /^gpc/)
		|| json_encode($p->{attrs}) =~ /gpc-marker|gpc-plan|bot-plan/ }
		values %state;
	ok(!@leak, 'no opted-out or bot data in any profile')
		or diag(join("\n", map { json_encode($_) } @leak));
}

for my $key (sort { $profiled{$a}{name} cmp $profiled{$b}{name} }
	keys %profiled)
{
	my $want = $profiled{$key};
	my $p = $state{$key} or next;
	my $a = ref $p->{attrs} eq 'HASH' ? $p->{attrs} : {};
	my $name = "profile '$want->{name}'";

	if (ref $want->{last_ip} eq 'Regexp') {
		like($a->{last_ip}, $want->{last_ip}, "$name: last_ip");
	} elsif (defined $want->{last_ip}) {
		is($a->{last_ip}, $want->{last_ip}, "$name: last_ip");
	}

	is($p->{page_views}, $want->{page_views}, "$name: page_views")
		if defined $want->{page_views};
	ok(!exists $a->{$want->{no_attr}}, "$name: no $want->{no_attr}")
		if defined $want->{no_attr};
	is($p->{user_id}, $want->{user_id}, "$name: user_id")
		if defined $want->{user_id};
	is($a->{user_agent}, $want->{ua}, "$name: user_agent")
		if defined $want->{ua};
}

$t->done_testing();

###############################################################################
