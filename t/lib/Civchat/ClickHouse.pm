package Civchat::ClickHouse;

# (C) civchat developers

# A real clickhouse-server for the store tests (Debian's 18.16 package,
# or any later release): its own configuration and data directory in a
# temporary directory, free loopback ports, the schema of
# schema/clickhouse.sql, and SQL over its HTTP interface.  Core Perl only.
#
#   use Civchat::ClickHouse;
#
#   Civchat::ClickHouse::need();            # skip_all when not installed
#   my $ch = Civchat::ClickHouse->new();    # nothing runs yet
#   $ch->start()->load_schema();
#
#   $ch->store_url()           # http://127.0.0.1:P/?query=INSERT%20INTO
#                              #   %20civchat.events%20FORMAT%20JSONEachRow
#   $ch->store_url('civchat.nosuch')
#   $ch->query($sql)           # the answer's text; dies on an error
#   $ch->rows($sql)            # JSONEachRow rows as hash references
#   $ch->value($sql)           # the first column of the first row
#   $ch->wait_value($sql, $want, $timeout)  # polls until equal
#   $ch->insert($table, $ndjson)            # POSTs lines as JSONEachRow
#   $ch->rows($sql, settings => { name => value })  # as URL parameters
#   $ch->compare(\@expected, site => 'KEY')  # rows against what the
#                              # clients were answered (see below)
#   $ch->stop($wait)           # SIGTERM, then SIGKILL after $wait s
#   $ch->kill()                # SIGKILL
#   $ch->start()               # again: same ports, same data
#
# Civchat::ClickHouse::Load (below) forks clients that drive a location
# and records the events each accepted request must produce.
#
# Options of new(): dir (default a new temporary directory), http_port,
# tcp_port (default free ports), binary (default clickhouse-server from
# $PATH or /usr/sbin), users (default /etc/clickhouse-server/users.xml),
# level (log level, default information), keep_alive (seconds an idle
# HTTP connection is kept, default 3: a clean stop waits that long for
# idle clients), schema (default the repository's schema/clickhouse.sql).
#
# TEST_CLICKHOUSE_BINARY names another server binary; TEST_NGINX_LEAVE
# keeps the directory (as for the nginx harness).

###############################################################################

use warnings;
use strict;

use Cwd qw/abs_path/;
use File::Basename qw/dirname/;
use File::Copy qw/copy/;
use File::Path qw/make_path/;
use File::Temp qw/tempdir/;
use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw/:sys_wait_h/;
use Time::HiRes qw/sleep time/;

use Civchat ();

my $REPO = abs_path(dirname(__FILE__) . '/../../..');

our $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

# the attrs column: JSON text inside a decoded row, already characters
my $INNER = JSON::PP->new->canonical->allow_nonref;

###############################################################################

sub binary {
	my $bin = $ENV{TEST_CLICKHOUSE_BINARY};
	return $bin if defined $bin;

	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/sbin', '/usr/bin') {
		next unless length $dir;
		return "$dir/clickhouse-server" if -x "$dir/clickhouse-server";
	}

	return undef;
}

# the whole test file is skipped without a server to run

sub need {
	return 1 if defined binary();
	require Test::More;
	Test::More::plan(skip_all => 'no clickhouse-server (make deps, or set '
		. 'TEST_CLICKHOUSE_BINARY)');
}

sub new {
	my ($class, %o) = @_;

	my $self = bless {
		binary => $o{binary} // binary(),
		users => $o{users} // '/etc/clickhouse-server/users.xml',
		level => $o{level} // 'information',
		keep_alive => $o{keep_alive} // 3,
		schema => $o{schema} // "$REPO/schema/clickhouse.sql",
		owner => $$,
		pid => undef,
	}, $class;

	die "no clickhouse-server binary\n" unless defined $self->{binary};

	$self->{dir} = $o{dir} // tempdir('civchat-ch-XXXXXXXXXX', TMPDIR => 1,
		CLEANUP => !$ENV{TEST_NGINX_LEAVE});
	make_path($self->{dir});

	my @ports = free_ports(3);
	$self->{http_port} = $o{http_port} // $ports[0];
	$self->{tcp_port} = $o{tcp_port} // $ports[1];
	$self->{interserver_port} = $o{interserver_port} // $ports[2];

	$self->{http} = HTTP::Tiny->new(keep_alive => 0, timeout => 30);

	$self->_write_config();

	return $self;
}

sub DESTROY {
	my ($self) = @_;
	local ($?, $!, $@);
	# forked test clients leave the server to the process that started it
	$self->stop() if $$ == $self->{owner} && $self->{pid};
}

sub dir { $_[0]->{dir} }
sub http_port { $_[0]->{http_port} }
sub tcp_port { $_[0]->{tcp_port} }
sub pid { $_[0]->{pid} }
sub base_url { 'http://127.0.0.1:' . $_[0]->{http_port} . '/' }

# distinct free loopback ports: bound at once, then released

sub free_ports {
	my ($n) = @_;
	my @socks;
	for (1 .. $n) {
		my $s = IO::Socket::INET->new(Proto => 'tcp',
			LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
			or die "free_ports: $!\n";
		push @socks, $s;
	}
	my @ports = map { $_->sockport() } @socks;
	close $_ for @socks;
	return @ports;
}

sub _write_config {
	my ($self) = @_;

	my $d = $self->{dir};

	make_path("$d/$_") for qw/data tmp user_files format_schemas log/;

	copy($self->{users}, "$d/users.xml")
		or die "copy $self->{users}: $!\n";

	open(my $fh, '>', "$d/config.xml") or die "config.xml: $!\n";
	print $fh <<"EOF";
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>$self->{level}</level>
        <log>$d/log/clickhouse-server.log</log>
        <errorlog>$d/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
        <console>0</console>
    </logger>
    <http_port>$self->{http_port}</http_port>
    <tcp_port>$self->{tcp_port}</tcp_port>
    <interserver_http_port>$self->{interserver_port}</interserver_http_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$d/data/</path>
    <tmp_path>$d/tmp/</tmp_path>
    <user_files_path>$d/user_files/</user_files_path>
    <format_schema_path>$d/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>5368709</mark_cache_size>
    <uncompressed_cache_size>8388608</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <keep_alive_timeout>$self->{keep_alive}</keep_alive_timeout>
</yandex>
EOF
	close $fh;
}

###############################################################################

sub running {
	my ($self) = @_;
	return 0 unless $self->{pid};
	my $r = waitpid($self->{pid}, WNOHANG);
	if ($r == $self->{pid} || $r == -1) {
		$self->{pid} = undef;
		return 0;
	}
	return 1;
}

# starts the server (again: same ports, same data) and waits until it
# answers; dies with the end of its logs when it does not

sub start {
	my ($self, %o) = @_;

	die "clickhouse-server already runs\n" if $self->running();

	my $d = $self->{dir};
	my $timeout = $o{timeout} // 60;

	my $pid = fork();
	die "fork: $!\n" unless defined $pid;

	if ($pid == 0) {
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', "$d/log/stdout.log");
		open(STDERR, '>&', \*STDOUT);
		chdir($d);
		exec($self->{binary}, "--config-file=$d/config.xml")
			or POSIX::_exit(127);
	}

	$self->{pid} = $pid;
	$self->{owner} = $$;

	my $deadline = time() + $timeout;

	while (time() < $deadline) {
		unless ($self->running()) {
			die "clickhouse-server exited at start:\n" . $self->log_tail();
		}

		my $r = $self->{http}->get($self->base_url() . 'ping');
		return $self if $r->{status} == 200 && $r->{content} =~ /^Ok/;

		sleep 0.1;
	}

	$self->kill();
	die "clickhouse-server did not answer within ${timeout}s:\n"
		. $self->log_tail();
}

sub _signal_wait {
	my ($self, $sig, $timeout) = @_;

	my $pid = $self->{pid} or return $self;
	CORE::kill($sig, $pid);

	my $deadline = time() + $timeout;
	while (time() < $deadline) {
		my $r = waitpid($pid, WNOHANG);
		if ($r == $pid || $r == -1) {
			$self->{pid} = undef;
			return 1;
		}
		sleep 0.05;
	}

	return 0;
}

# SIGTERM: a clean shutdown, SIGKILL after $wait seconds (default 30).
# ClickHouse refuses new connections at once but keeps answering on
# kept-alive ones until they have been idle for keep_alive seconds, so
# under steady traffic a clean stop lasts as long as the traffic does.

sub stop {
	my ($self, $wait) = @_;
	return $self unless $self->{pid};
	$self->_signal_wait('KILL', 10)
		unless $self->_signal_wait('TERM', $wait // 30);
	return $self;
}

# SIGKILL: gone at once, inserts in flight or not

sub kill {
	my ($self) = @_;
	return $self unless $self->{pid};
	$self->_signal_wait('KILL', 10);
	return $self;
}

sub restart {
	my ($self) = @_;
	return $self->stop()->start();
}

sub log_tail {
	my ($self, $bytes) = @_;
	$bytes //= 3000;
	my $s = '';
	for my $f (qw/stdout.log clickhouse-server.err.log/) {
		open(my $fh, '<', "$self->{dir}/log/$f") or next;
		local $/;
		my $text = <$fh> // '';
		close $fh;
		$text = substr($text, -$bytes) if length $text > $bytes;
		$s .= "--- $f\n$text\n" if length $text;
	}
	return $s;
}

###############################################################################

# SQL

sub _uri_escape {
	my ($s) = @_;
	$s =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord $1)/ge;
	return $s;
}

# the civchat_store URL inserting into a table (civchat.events)

sub store_url {
	my ($self, $table) = @_;
	$table //= 'civchat.events';
	return $self->base_url() . '?query='
		. _uri_escape("INSERT INTO $table FORMAT JSONEachRow");
}

# one statement in the POST body; returns the answer's text, dies with
# ClickHouse's message (or returns undef with soft => 1)

sub query {
	my ($self, $sql, %o) = @_;

	utf8::encode($sql) if utf8::is_utf8($sql);

	my $url = $self->base_url();
	my $set = $o{settings} // {};
	$url .= '?' . join('&', map { "$_=" . _uri_escape($set->{$_}) }
		sort keys %$set) if %$set;

	my $r = $self->{http}->request('POST', $url, {
		content => $sql,
		headers => { 'Content-Type' => 'text/plain' },
	});

	return $r->{content} if $r->{success};

	my $msg = "ClickHouse $r->{status}: " . ($r->{content} // '')
		. "\n  in: $sql\n";
	return undef if $o{soft};
	die $msg;
}

# rows as hash references (FORMAT JSONEachRow is added); 64-bit
# integers come back as numbers

sub rows {
	my ($self, $sql, %o) = @_;

	$sql .= ' FORMAT JSONEachRow' unless $sql =~ /\bFORMAT\s+\w+\s*$/i;
	my $text = $self->query($sql, %o, settings => {
		output_format_json_quote_64bit_integers => 0,
		%{$o{settings} // {}} });
	return () unless defined $text;

	my @rows;
	for my $line (split /\n/, $text) {
		next unless length $line;
		push @rows, $JSON->decode($line);
	}

	return @rows;
}

# the first column of the first row, as text (undef: no row, or an
# error with soft => 1)

sub value {
	my ($self, $sql, %o) = @_;

	my $text = $self->query("$sql FORMAT TabSeparated", %o);
	return undef unless defined $text && length $text;

	my ($first) = split /\n/, $text;
	my ($v) = split /\t/, $first;
	return $v;
}

# polls a query (errors are retried) until its value equals $want or the
# timeout passes; returns the last value

sub wait_value {
	my ($self, $sql, $want, $timeout, $interval) = @_;

	my $deadline = time() + ($timeout // 10);
	my $v;

	while (1) {
		$v = $self->value($sql, soft => 1);
		return $v if defined $v && $v eq $want;
		last if time() >= $deadline;
		sleep($interval // 0.1);
	}

	return $v;
}

# polls until the value stops changing for $quiet seconds; returns it

sub wait_stable {
	my ($self, $sql, $quiet, $timeout) = @_;

	my $deadline = time() + ($timeout // 30);
	my $last = $self->value($sql, soft => 1);
	my $since = time();

	while (time() < $deadline) {
		sleep 0.1;
		my $v = $self->value($sql, soft => 1);
		if (!defined $v || !defined $last || $v ne $last) {
			$last = $v;
			$since = time();
			next;
		}
		return $v if time() - $since >= $quiet;
	}

	return $last;
}

# NDJSON lines (one string, or an array of hash references) into a table

sub insert {
	my ($self, $table, $data) = @_;

	my $body = ref $data ? join('', map { $JSON->encode($_) . "\n" } @$data)
		: $data;

	my $r = $self->{http}->request('POST', $self->store_url($table),
		{ content => $body });

	die "ClickHouse $r->{status}: " . ($r->{content} // '') . "\n"
		unless $r->{success};

	return $self;
}

# the statements of a schema file (default schema/clickhouse.sql),
# comments dropped, one by one

sub load_schema {
	my ($self, $file) = @_;

	$file //= $self->{schema};

	open(my $fh, '<', $file) or die "$file: $!\n";
	local $/;
	my $text = <$fh>;
	close $fh;

	$text =~ s/--[^\n]*//g;

	for my $sql (split /;/, $text) {
		next unless $sql =~ /\S/;
		$self->query($sql);
	}

	return $self;
}

###############################################################################

# delivered rows against what the clients were answered: every expected
# event (Civchat::ClickHouse::Load) is one row with the same fields, and
# no row is left over; returns the differences (empty: all there, once)
#   site => apiKey of the rows, final => 0 to read without FINAL

sub compare {
	my ($self, $expected, %o) = @_;

	my $final = ($o{final} // 1) ? 'FINAL' : '';
	my @rows = $self->rows("SELECT * FROM civchat.events $final"
		. (defined $o{site} ? " WHERE site = '$o{site}'" : ''));

	my (%want, %have, %ids, @diff);

	for my $e (@$expected) {
		push @{$want{_match_key($e)}}, $e;
	}

	for my $r (@rows) {
		push @diff, "row $r->{id}: id twice" if $ids{$r->{id}}++;
		push @diff, "row $r->{id}: not 32 hex characters"
			unless $r->{id} =~ /^[0-9a-f]{32}$/;
		push @{$have{_match_key($r)}}, $r;
	}

	for my $k (sort keys %want) {
		my @rs = @{$have{$k} // []};

		for my $e (@{$want{$k}}) {
			my $found;
			for my $i (0 .. $#rs) {
				next unless $rs[$i]{type} eq $e->{type}
					&& $rs[$i]{name} eq ($e->{name} // '');
				$found = splice(@rs, $i, 1);
				last;
			}

			unless ($found) {
				push @diff, "missing: $e->{type} $k";
				next;
			}

			push @diff, _compare_row($e, $found);
		}

		push @diff, map { "extra: $_->{type} $k id $_->{id}" } @rs;
		delete $have{$k};
	}

	for my $k (sort keys %have) {
		push @diff, map { "unexpected: $_->{type} $k id $_->{id}" }
			@{$have{$k}};
	}

	return @diff;
}

# events of one request share a url; product events are told apart by
# their product_id (they carry no page context)

sub _match_key {
	my ($e) = @_;

	if ($e->{type} eq 'product_event') {
		my $a = ref $e->{attrs} ? $e->{attrs}
			: eval { $INNER->decode($e->{attrs}) } // {};
		return 'product ' . ($a->{product_id} // '?');
	}

	return 'url ' . ($e->{url} // '');
}

sub _compare_row {
	my ($e, $r) = @_;

	my @diff;
	my $what = "$e->{type} " . _match_key($e);

	for my $f (sort keys %$e) {
		next if $f =~ /^(attrs|attrs_subset|ts_min|ts_max)$/;
		my $want = $e->{$f} // '';
		my $have = $r->{$f};
		push @diff, "$what: $f is " . (defined $have ? "\"$have\"" : 'missing')
			. ", want \"$want\"" unless defined $have && $have eq $want;
	}

	if (exists $e->{attrs}) {
		my $have = eval { $INNER->decode($r->{attrs}) };
		if (!defined $have) {
			push @diff, "$what: attrs not JSON: $r->{attrs}";
		} else {
			push @diff, map { "$what: attrs $_" }
				Civchat::deep_subset($e->{attrs}, $have);
			if (!$e->{attrs_subset}) {
				my $n = scalar keys %$have;
				my $m = scalar keys %{$e->{attrs}};
				push @diff, "$what: attrs has $n keys, want $m"
					unless $n == $m;
			}
		}
	}

	if (defined $e->{ts_min}
		&& !($r->{ts} >= $e->{ts_min} && $r->{ts} <= $e->{ts_max}))
	{
		push @diff, "$what: ts $r->{ts} not in [$e->{ts_min}, $e->{ts_max}]";
	}

	return @diff;
}

###############################################################################

package Civchat::ClickHouse::Load;

# Forked clients driving a civchat location, each a few returning
# visitors (cookie kept), and the events each accepted request must
# produce (for Civchat::ClickHouse::compare):
#
#   my $load = Civchat::ClickHouse::Load->start($t,
#       clients => 8, base => '/civchat/', api_key => 'MAIN',
#       requests => 250,        # per client; or until stop()
#       visitors => 4,          # per client
#       mix => 'full',          # init, page_hit, event, product_event,
#                               # update; or 'page_hit' (init once)
#       pause => 0.01);         # between requests
#   $load->stop();              # (for open-ended runs)
#   my $res = $load->wait();
#   $res->{expected}            # events the clients were promised
#   $res->{status}{200}         # answers by status (0: no answer)
#   $res->{slow}                # answers slower than slow => seconds
#   $res->{times}               # every answer's time, sorted
#   percentile($res, 95)        # seconds
#
# The children leave nginx and ClickHouse to the parent (POSIX::_exit).

use warnings;
use strict;

use utf8;

use Civchat ();
use POSIX ();
use Time::HiRes qw/sleep time/;

my $seq = 0;

sub start {
	my ($class, $t, %o) = @_;

	my $self = bless {
		t => $t,
		clients => $o{clients} // 4,
		base => $o{base} // '/civchat/',
		api_key => $o{api_key} // 'TESTKEY',
		requests => $o{requests},
		visitors => $o{visitors} // 3,
		mix => $o{mix} // 'full',
		pause => $o{pause} // 0,
		slow => $o{slow} // 1,
		tag => "load$$-" . ++$seq,
		dir => $t->testdir(),
		kids => [],
	}, $class;

	unlink($self->_stopfile());

	for my $i (1 .. $self->{clients}) {
		my $pid = fork();
		die "fork: $!\n" unless defined $pid;

		if ($pid == 0) {
			my $ok = eval { $self->_child($i); 1 };
			print STDERR "load client $i: $@" unless $ok;
			POSIX::_exit($ok ? 0 : 1);
		}

		push @{$self->{kids}}, $pid;
	}

	return $self;
}

sub percentile {
	my ($res, $p) = @_;
	my $t = $res->{times};
	return 0 unless @$t;
	my $i = int(@$t * $p / 100 + 0.5) - 1;
	$i = 0 if $i < 0;
	$i = $#$t if $i > $#$t;
	return $t->[$i];
}

sub _stopfile { "$_[0]->{dir}/$_[0]->{tag}.stop" }

sub stop {
	my ($self) = @_;
	if (open(my $fh, '>', $self->_stopfile())) {
		close $fh;
	}
	return $self;
}

sub running {
	my ($self) = @_;
	return scalar grep { !waitpid($_, POSIX::WNOHANG()) } @{$self->{kids}};
}

sub wait {
	my ($self) = @_;

	my %res = (expected => [], status => {}, requests => 0, slow => 0,
		failed => 0, max_time => 0, times => []);

	for my $pid (@{$self->{kids}}) {
		waitpid($pid, 0);
		$res{failed}++ if $?;
	}

	$self->{kids} = [];

	for my $i (1 .. $self->{clients}) {
		my $text = $self->{t}->read_file("$self->{tag}.$i") // '';
		my $r = Civchat::json_decode($text);
		unless (ref $r eq 'HASH') {
			$res{failed}++;
			next;
		}
		push @{$res{expected}}, @{$r->{expected}};
		$res{status}{$_} += $r->{status}{$_} for keys %{$r->{status}};
		$res{requests} += $r->{requests};
		$res{slow} += $r->{slow};
		$res{max_time} = $r->{max_time} if $r->{max_time} > $res{max_time};
		push @{$res{times}}, @{$r->{times}};
	}

	$res{times} = [sort { $a <=> $b } @{$res{times}}];

	return \%res;
}

sub _child {
	my ($self, $i) = @_;

	my $t = $self->{t};
	my $ua = "Mozilla/5.0 (civchat-test $self->{tag}.$i)";
	my @visitors = map {
		{ c => $t->client(base => $self->{base},
			api_key => $self->{api_key}, headers => ['User-Agent' => $ua]),
		  n => 0, plan => undef }
	} 1 .. $self->{visitors};

	my (@expected, %status, @times);
	my ($n, $slow, $max) = (0, 0, 0);
	my $stopfile = $self->_stopfile();

	while (1) {
		last if defined $self->{requests} && $n >= $self->{requests};
		last if !defined $self->{requests} && -e $stopfile;

		my $v = $visitors[$n % @visitors];
		my $c = $v->{c};
		my $step = $v->{n}++;
		my $id = "$self->{tag}-$i-$n";
		my $url = "http://shop.test/$id";
		my $t0 = time();
		my ($r, @ev);

		# what every event of this request carries
		my %page = (url => $url, title => '', referrer => '', name => '',
			user_agent => $ua, ip => '127.0.0.1', site => $self->{api_key},
			user_id => '', email => '', country => '', region => '',
			city => '', ts_min => int($t0 * 1000) - 1000);

		my $action = !defined $c->key() ? 'init'
			: $self->{mix} eq 'page_hit' ? 'page_hit'
			: (qw/page_hit page_hit event product_event update/)[$step % 5];

		if ($action eq 'init' || $action eq 'page_hit') {
			my $title = "Zażółć \"gęślą\" jaźń \\ $id";
			my $ref = "http://ref.test/?q=$id&x=ü";
			$r = $c->post($action, { url => $url, title => $title,
				referrer => $ref });
			my %ctx = (%page, title => $title, referrer => $ref);
			push @ev, { %ctx, type => 'user_created', attrs => {} }
				if $action eq 'init';
			push @ev, { %ctx, type => 'page_view', attrs => {} };

		} elsif ($action eq 'event') {
			my $attrs = { n => $n, nested => { list => [1, 'two',
				{ three => 3.5 }], empty => {} }, text => "ünï \"q\" \\ </script>",
				flag => JSON::PP::true, none => undef };
			$r = $c->event({ url => $url, event => "checkout_$step",
				attributes => $attrs });
			push @ev, { %page, type => 'event', name => "checkout_$step",
				attrs => $attrs };

		} elsif ($action eq 'product_event') {
			$r = $c->product_event({ url => $url, product_id => $id,
				event_type => 'purchase', price => 12.5 });
			# no page context in product events: not compared
			my %p = %page;
			delete @p{qw/url title referrer/};
			push @ev, { %p, type => 'product_event', name => 'purchase',
				attrs => { product_id => $id, price => 12.5 },
				attrs_subset => 1 };

		} else {
			my $plan = "plan-$id";
			$r = $c->update({ url => $url, plan => $plan });
			push @ev, { %page, type => 'profile_updated', name => 'plan',
				attrs => { old => $v->{plan}, new => $plan } };
			$v->{pending_plan} = $plan;
		}

		my $dt = time() - $t0;
		$n++;
		$status{$r->status}++;
		$slow++ if $dt > $self->{slow};
		push @times, sprintf('%.4f', $dt);
		$max = $dt if $dt > $max;

		if ($r->status == 200) {
			my $key = $r->key() // '';
			my $ts_max = int(time() * 1000) + 1000;
			for my $e (@ev) {
				$e->{user_key} = $key;
				$e->{ts_max} = $ts_max;
			}
			push @expected, @ev;
			$v->{plan} = delete $v->{pending_plan}
				if exists $v->{pending_plan};
		} else {
			delete $v->{pending_plan};
		}

		sleep $self->{pause} if $self->{pause};
	}

	$t->write_file("$self->{tag}.$i", Civchat::json_encode({
		expected => \@expected, status => \%status, requests => $n,
		slow => $slow, max_time => $max, times => \@times }));
}

1;

###############################################################################
