package Civchat::Cluster;

# (C) civchat developers

# Several nginx hosts sharing one profile space on a real Redis Cluster
# (README "More than one nginx host"): each host is a Civchat of its own
# (its directory, port, error.log and events.ndjson), all with the same
# zones on one Civchat::Redis (three masters, three replicas), and each
# with zones of its own (no redis=) answering the same locations, so
# that what happens across hosts can be compared with what one host
# does alone.  Core Perl only.
#
#   use Civchat::Cluster;
#
#   my $cl = Civchat::Cluster->new(hosts => 2);   # skip_all without Redis
#   $cl->host(0)                  # host A: a Civchat (request, get, ...)
#   $cl->redis()                  # the Civchat::Redis
#   my $b = $cl->browser(base => '/civchat/', secret => ...);
#   $b->on(1)->init({...})        # a browser (Civchat::Client) that goes
#                                 # to any host, its cookie jar with it
#   $cl->api(0, 'GET', 'users/key/KEY')        # the server API of a host
#   $cl->doc('users', $id)        # p:{ID} as a hash (HGETALL), or undef
#   $cl->index('users', 'u', $v)  # i:{u:V}: the id it names, or undef
#   $cl->rcmd('GET', $key)        # one command on the key's master
#   $cl->send_together([$h, $path, $body, @headers], ...)
#                                 # requests sent at the same moment
#   $cl->settle('users')          # nothing left to write behind
#   my $stop = $cl->writer('users', $id, 0.02)
#                                 # another host writing the profile
#   $stop->()                     # ... stopped: how many writes
#   $cl->quit(0, 1)               # hosts stopped (QUIT): exited by
#                                 # themselves? (killed if not)
#   $cl->done_testing(todo => { 1 => 'why' })
#                                 # every host quits (or, known, does
#                                 # not: the why), its log checked
#
# The locations of every host (zone, mode): /civchat/ (users, unified
# identification off), /u/ (users, unified and authorize by email on),
# /uo/ (users, unified on, authorize off), /api/ (its server API); /v/,
# /vu/, /vuo/ and /vapi/ the same on the zone signed, with
# civchat_identity_secret $Civchat::Cluster::SECRET; /r/ and /rapi/ on
# the zone refuse (redis_down=refuse); /l/, /lu/, /luo/, /lapi/, /lv/,
# /lvu/, /lvapi/ ... the same as the first ones on zones of the host
# alone (local, lsigned); /status.  Options of new(): hosts (default 2),
# workers (worker_processes, default 2), flush (redis_flush, default
# 100ms), redis (options of Civchat::Redis->new), http and server (more
# directives for every host).

###############################################################################

use warnings;
use strict;

use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Test::More ();
use Time::HiRes qw/sleep time/;

use Civchat qw/json_encode json_decode slow/;
use Civchat::Redis;

our $SECRET = 'cluster-test-secret-0123456789';
our $TOKEN = 'cluster-api-token-0123456789';
our $TODO;    # Test::More's, for the checks made here

###############################################################################

sub new {
	my ($class, %o) = @_;

	my $first = Civchat->new()->need_module();
	Civchat::Redis::need();

	my $self = bless {
		hosts => [ $first ],
		workers => $o{workers} // 2,
		flush => $o{flush} // '100ms',
		http => $o{http} // '',
		server => $o{server} // '',
	}, $class;

	push @{$self->{hosts}}, Civchat->new() for 2 .. ($o{hosts} // 2);

	$self->{rc} = Civchat::Redis->new(dir => $first->testdir(),
		%{$o{redis} // {}});
	$self->{rc}->start();

	for my $t (@{$self->{hosts}}) {
		$t->config($self->conf());
		$t->run();
	}

	$self->wait_subscribed();

	return $self;
}

sub redis { $_[0]->{rc} }
sub host { $_[0]->{hosts}[$_[1]] }

# the configuration of every host
sub conf {
	my ($self) = @_;

	my $seeds = $self->{rc}->seeds(3);
	my $flush = $self->{flush};

	my $zones = <<"EOF";
    civchat_zone  users   4m  redis=c1 redis_flush=$flush;
    civchat_zone  signed  4m  redis=c1 redis_flush=$flush;
    civchat_zone  refuse  1m  redis=c1 redis_down=refuse
                              redis_flush=$flush;
    civchat_zone  local   4m;
    civchat_zone  lsigned 4m;
EOF

	my $locations = '';
	for my $l (['', 'users', 'lo'], ['l', 'local', 'lo'],
		['v', 'signed', 'lo'], ['lv', 'lsigned', 'lo'],
		['r', 'refuse', ''])
	{
		my ($p, $zone, $more) = @$l;
		my $secret = $zone =~ /signed/
			? "civchat_identity_secret  $SECRET;" : '';
		my $base = $p eq '' ? 'civchat' : $p;

		$locations .= <<"EOF";
        location /$base/ {
            civchat  zone=$zone;
            $secret
        }

        location /${p}api/ {
            civchat_api        zone=$zone;
            civchat_api_token  $TOKEN;
        }
EOF

		next unless $more;

		$locations .= <<"EOF";
        location /${p}u/ {
            civchat                         zone=$zone;
            civchat_unified_identification  on;
            civchat_authorize_by_email      on;
            $secret
        }

        location /${p}uo/ {
            civchat                         zone=$zone;
            civchat_unified_identification  on;
            $secret
        }
EOF
	}

	return <<"EOF";

%%TEST_GLOBALS%%
worker_processes  $self->{workers};

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    civchat_redis  c1  $seeds  ping=200ms timeout=1s retry=500ms;

$zones
    civchat_api_key  TESTKEY;
    civchat_store    file=%%TESTDIR%%/events.ndjson flush=50ms;

$self->{http}

    server {
        listen       127.0.0.1:%%PORT_0%%;
        server_name  localhost;

$locations
        location = /status {
            civchat_status;
        }

$self->{server}
    }
}

EOF
}

# every worker of every host connected to every master
sub wait_subscribed {
	my ($self, $timeout) = @_;

	for my $t (@{$self->{hosts}}) {
		next unless $t->{started};
		my $n = $self->{workers};
		my $m = Civchat::Redis::wait_metrics($t, '/status', sub {
			my $m = shift;
			for my $w (0 .. $n - 1) {
				return 0 unless Civchat::Redis::metric($m,
					'civchat_redis_slots_covered', cluster => 'c1',
					worker => $w) == 16384
					&& Civchat::Redis::metric($m, 'civchat_redis_nodes',
					cluster => 'c1', worker => $w, role => 'master',
					state => 'connected') == 3;
			}
			return 1;
		}, $timeout // 15);
	}
}

###############################################################################

# a browser that goes to any host with its cookie jar

sub browser {
	my ($self, %o) = @_;
	my $b = Civchat::Cluster::Browser->new($self->{hosts}[$o{host} // 0],
		%o);
	$b->{cluster} = $self;
	$b->{secret} = $SECRET if ($o{base} // '') =~ m{^/l?v};
	return $b;
}

# the server API of a host: (status, json); $base the API location
sub api {
	my ($self, $h, $method, $path, $body, %o) = @_;

	my @h = (Authorization => "Bearer $TOKEN");
	push @h, 'Content-Type' => 'application/json' if defined $body;

	my $r = $self->{hosts}[$h]->request(method => $method,
		path => ($o{base} // '/api/') . $path, headers => \@h,
		body => defined $body ? json_encode($body) : undef,
		timeout => $o{timeout});

	return $r;
}

# the profile of a user_id, email or key as a host's API sees it
sub api_user {
	my ($self, $h, $kind, $id, %o) = @_;
	my $r = $self->api($h, 'GET', "users/$kind/$id", undef, %o);
	return $r->status == 200 ? $r->json->{user} : undef;
}

###############################################################################

# Redis: one command on the master of its key (its first argument
# after the command's name), redirections followed

sub rcmd {
	my ($self, @cmd) = @_;

	my $rc = $self->{rc};
	my $port = $rc->owner($rc->keyslot($cmd[1]));

	for (1 .. 5) {
		my $r = $rc->command($port, @cmd);
		return $r unless ref $r eq 'HASH'
			&& $r->{error} =~ /^(?:MOVED|ASK) \d+ [\d.]+:(\d+)/;
		$port = $1;
	}

	die "rcmd @cmd: redirected too often\n";
}

# the document p:{ID} of a zone as a hash; undef when there is none
sub doc {
	my ($self, $zone, $id) = @_;
	my $r = $self->rcmd('HGETALL', "civchat:$zone:p:{$id}");
	return undef unless ref $r eq 'ARRAY' && @$r;
	my %h = @$r;
	$h{identity} = json_decode($h{id}) if defined $h{id};
	return \%h;
}

# i:{KIND:VALUE}: the id of the profile it names
sub index {
	my ($self, $zone, $kind, $value) = @_;
	my $r = $self->rcmd('GET', "civchat:$zone:i:{$kind:$value}");
	return undef if !defined $r || ref $r;
	return $r =~ /^(\S+) \d+$/ ? $1 : "malformed: $r";
}

# every key of a zone in Redis (SCAN on every master)
sub keys_of {
	my ($self, $zone, $pattern) = @_;

	my @keys;
	for my $port ($self->{rc}->masters()) {
		my $cursor = 0;
		do {
			my $r = $self->{rc}->command($port, 'SCAN', $cursor, 'MATCH',
				"civchat:$zone:" . ($pattern // '*'), 'COUNT', 1000);
			($cursor, my $page) = @$r;
			push @keys, @$page;
		} while ($cursor);
	}

	return @keys;
}

# another host writing a profile behind, as behind.c does, from a child
# process: every $interval seconds a page view added to p:{ID} of the
# zone, its version bumped, the change announced on the zone's channel;
# returns a sub that stops it and says how many it wrote

sub writer {
	my ($self, $zone, $id, $interval) = @_;

	my $rc = $self->{rc};
	my $key = "civchat:$zone:p:{$id}";
	my $file = $self->{hosts}[0]->testdir() . '/writer.' . Civchat::uniq_id();
	my $script = "redis.call('HINCRBY', KEYS[1], 'pv', 1)\n"
		. "local v = redis.call('HINCRBY', KEYS[1], 'v', 1)\n"
		. "redis.call('PUBLISH', ARGV[1], 'writer0000000000 ' .. v .. ' ' "
		. ".. ARGV[2])\n"
		. "return v\n";

	# (the child must not run the parent's destructors: they stop nginx)
	my $port = $rc->owner($rc->keyslot($key));
	my $pid = fork();
	die "fork: $!\n" unless defined $pid;

	if ($pid == 0) {
		my $n = 0;
		eval {
			my $deadline = time() + 60;
			while (!-e "$file.stop" && time() < $deadline) {
				my $r = $rc->command($port, 'EVAL', $script, 1, $key,
					"civchat:$zone:changed", $id);
				$n++ if defined $r && !ref $r;
				sleep $interval;
			}
		};
		if (open(my $fh, '>', $file)) {
			print $fh $n;
			close $fh;
		}
		POSIX::_exit(0);
	}

	return sub {
		open(my $fh, '>', "$file.stop");
		close $fh;
		waitpid($pid, 0);
		open($fh, '<', $file) or return 0;
		my $n = <$fh>;
		close $fh;
		return $n;
	};
}

# until no host has a change of the zone left to write behind (the
# status page's civchat_redis_pending_profiles), or the timeout
sub settle {
	my ($self, $zone, $timeout) = @_;
	return $self->wait_for(sub {
		!grep { $_->{started} && Civchat::Redis::metric(
			scalar(Civchat::Redis::metrics($_, '/status')),
			'civchat_redis_pending_profiles', zone => $zone) }
			@{$self->{hosts}};
	}, $timeout // 2);
}

# polls until $check->() is true (or the timeout); returns its value
sub wait_for {
	my ($self, $check, $timeout) = @_;
	my $deadline = time() + slow($timeout // 10);
	while (1) {
		my $v = $check->();
		return $v if $v;
		return $v if time() >= $deadline;
		sleep 0.05;
	}
}

###############################################################################

# requests on their own connections, each written whole but its last
# byte, then every last byte at once: the hosts get them at the same
# moment.  Each is [host, path, body, headers...]; returns the
# Civchat::Responses in the same order.

sub send_together {
	my ($self, @reqs) = @_;

	my (@socks, @raw, @in);

	for my $q (@reqs) {
		my ($h, $path, $body, @headers) = @$q;
		my $t = $self->{hosts}[$h];
		$body = json_encode($body) if ref $body;

		my $raw = "POST $path HTTP/1.1\r\nHost: localhost\r\n"
			. "Connection: close\r\nContent-Type: application/json\r\n";
		while (my ($k, $v) = splice(@headers, 0, 2)) {
			$raw .= "$k: $v\r\n";
		}
		$raw .= 'Content-Length: ' . length($body) . "\r\n\r\n$body";

		my $s = IO::Socket::INET->new(Proto => 'tcp',
			PeerAddr => '127.0.0.1:' . $t->port(0), Timeout => 5)
			or die "send_together: connect: $!\n";
		$s->autoflush(1);
		syswrite($s, $raw, length($raw) - 1) == length($raw) - 1
			or die "send_together: write: $!\n";

		push @socks, $s;
		push @raw, $raw;
		push @in, '';
	}

	# every request but its last byte is in; let the hosts read them
	sleep 0.05;

	syswrite($socks[$_], substr($raw[$_], -1)) for 0 .. $#socks;

	my $sel = IO::Select->new(@socks);
	my %idx = map { ("$socks[$_]" => $_) } 0 .. $#socks;
	my $deadline = time() + slow(15);

	while ($sel->count() && time() < $deadline) {
		for my $s ($sel->can_read(0.5)) {
			my $n = sysread($s, my $buf, 65536);
			if (!$n) {
				$sel->remove($s);
				close $s;
				next;
			}
			$in[$idx{"$s"}] .= $buf;
		}
	}

	return map { Civchat::Response->parse($_, 'POST') } @in;
}

###############################################################################

# hosts stopped at once, gracefully (QUIT: each worker writes what it
# has before it goes); returns, per host, whether its master and every
# worker exited by themselves within $timeout seconds (default 10);
# those that did not are killed (SIGKILL)

sub quit {
	my ($self, @h) = @_;

	my $timeout = ref $h[-1] eq 'HASH' ? pop(@h)->{timeout} : undef;
	my (%pids, %ok);

	for my $h (@h) {
		my $t = $self->{hosts}[$h];
		next unless $t->{started};
		my $master = $t->master_pid() or next;
		$pids{$h} = [ $master, $t->worker_pids() ];
		kill('QUIT', $master);
	}

	my $deadline = time() + slow($timeout // 10);
	while (time() < $deadline) {
		last unless grep { $self->{hosts}[$_]->alive(@{$pids{$_}}) }
			keys %pids;
		sleep 0.05;
	}

	for my $h (@h) {
		my $t = $self->{hosts}[$h];
		my @left = $t->alive(@{$pids{$h} // []});
		$ok{$h} = !@left;
		kill('KILL', @left) if @left;
		$t->{started} = 0;
	}

	return wantarray ? map { $ok{$_} } @h : $ok{$h[0]};
}

sub name { chr(ord('A') + $_[1]) }

# every host quits (a worker that does not is a failure: $o{todo}{$h}
# says why that is known), its error.log is checked; then the plan ends

sub done_testing {
	my ($self, %o) = @_;

	my @h = 0 .. $#{$self->{hosts}};
	my @running = grep { $self->{hosts}[$_]{started} } @h;
	my %quit;
	@quit{@running} = $self->quit(@running);

	for my $h (@h) {
		my $t = $self->{hosts}[$h];
		my $name = $self->name($h);

		if (exists $quit{$h}) {
			local $TODO = $o{todo}{$h};
			Test::More::ok($quit{$h}, "host $name: a graceful quit ends "
				. 'every process');
		}

		my @bad = grep { !/exited on signal 9/ || !$o{todo}{$h} }
			$t->log_problems();
		Test::More::ok(!@bad, "host $name: error.log has no alert, crit, "
			. 'emerg or crashed worker')
			or Test::More::diag(join("\n", @bad[0 .. ($#bad > 20 ? 20
			: $#bad)]));

		if ($ENV{TEST_NGINX_VALGRIND}) {
			@bad = $t->valgrind_problems();
			Test::More::ok(!@bad, "host $name: valgrind: no memory errors")
				or Test::More::diag(join("\n",
				@bad[0 .. ($#bad > 80 ? 80 : $#bad)]));
		}

		$t->{checked} = 1;

		Test::More::diag($t->read_file('error.log') // '')
			if $ENV{TEST_NGINX_CATLOG};
	}

	$self->{rc}->stop();

	Test::More::done_testing();
}

###############################################################################

package Civchat::Cluster::Browser;

use parent -norequire, 'Civchat::Client';

# this browser's next requests go to host $h
sub on {
	my ($self, $h) = @_;
	$self->{t} = $self->{cluster}{hosts}[$h];
	return $self;
}

1;

###############################################################################
