package Civchat::Redis;

# (C) civchat developers

# A real Redis Cluster for the tests (Debian's redis-server 7.0): three
# masters and three replicas on free loopback ports, each with its own
# directory, configuration and append-only file under a test directory,
# created with "redis-cli --cluster create --cluster-replicas 1".  Core
# Perl only; redis-cli is used for what it does best (--cluster create,
# reshard, check, and -c to follow redirections), a small RESP client
# here for the rest.
#
#   use Civchat::Redis;
#
#   Civchat::Redis::need();                 # skip_all without redis-server
#   my $rc = Civchat::Redis->new(dir => $t->testdir());
#   $rc->start();                           # six nodes, cluster ok
#   $rc->seeds()                            # "127.0.0.1:P1 127.0.0.1:P2 ..."
#   $rc->cli('SET', 'k', 'v')               # redis-cli -c: the right node
#   $rc->command($port, 'CLUSTER', 'INFO')  # one node; the reply as Perl
#   $rc->keyslot('user:{42}')               # CRC16 slot, computed here
#   $rc->owner($slot)                       # the port of the slot's master
#   $rc->masters(), $rc->replicas()         # ports, from CLUSTER NODES
#   $rc->node_id($port)
#   $rc->kill_master($port)                 # SIGKILL; waits until a
#                                           # replica took its slots;
#                                           # returns the new master's port
#   $rc->stop_all(); sleep N; $rc->start_all()  # down and back, data kept
#   $rc->outage($seconds)                   # the same in one call
#   $rc->restart_node($port)
#   $rc->pause_node($port, $seconds)        # SIGSTOP, then SIGCONT
#   $rc->flush_scripts()                    # SCRIPT FLUSH on every master
#   $rc->wait_ok($timeout)                  # cluster_state:ok everywhere
#   $rc->stop()                             # every node (also at exit,
#                                           # and when the test dies)
#
#   my $m = Civchat::Redis::metrics($t, '/status');   # civchat_status
#   Civchat::Redis::metric($m, 'civchat_redis_moved_total',
#       cluster => 'c1')                    # summed over matching series
#   Civchat::Redis::wait_metrics($t, '/status', sub { my $m = shift; ... },
#       $timeout)                           # polls until the sub is true
#
# Options of new(): dir (a parent directory; default a new temporary
# directory), password (requirepass and masterauth, and what cli() and
# command() send), node_timeout (cluster-node-timeout, default 1000 ms:
# a killed master's replica takes over within two or three seconds),
# ports (six client ports; default free ones, with cluster bus ports of
# their own, also free).

###############################################################################

use warnings;
use strict;

use File::Path qw/make_path/;
use File::Temp qw/tempdir/;
use IO::Socket::INET;
use POSIX qw/:sys_wait_h/;
use Scalar::Util ();
use Time::HiRes qw/sleep time/;

use Civchat ();

my %LIVE;    # every cluster not stopped yet, for END

###############################################################################

sub binary {
	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/bin', '/usr/sbin') {
		next unless length $dir;
		return "$dir/redis-server" if -x "$dir/redis-server";
	}
	return undef;
}

sub cli_binary {
	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/bin') {
		next unless length $dir;
		return "$dir/redis-cli" if -x "$dir/redis-cli";
	}
	return undef;
}

sub need {
	return 1 if defined binary() && defined cli_binary();
	require Test::More;
	Test::More::plan(skip_all => 'no redis-server or redis-cli (make deps)');
}

sub new {
	my ($class, %o) = @_;

	my $parent = $o{dir} // tempdir('civchat-redis-XXXXXXXXXX', TMPDIR => 1,
		CLEANUP => !$ENV{TEST_NGINX_LEAVE});

	my $self = bless {
		binary => binary(),
		cli => cli_binary(),
		password => $o{password},
		node_timeout => $o{node_timeout} // 1000,
		owner => $$,
		pids => {},
	}, $class;

	die "no redis-server binary\n" unless defined $self->{binary};

	$self->{dir} = "$parent/redis";
	make_path($self->{dir});

	my @free = _free_ports(12);
	$self->{ports} = $o{ports} // [ @free[0 .. 5] ];
	$self->{bus} = { map { $self->{ports}[$_] => $free[6 + $_] } 0 .. 5 };

	$self->_write_config($_) for @{$self->{ports}};

	return $self;
}

sub DESTROY {
	my ($self) = @_;
	local ($?, $!, $@);
	$self->stop() if $$ == $self->{owner};
}

END {
	local $?;
	for my $self (values %LIVE) {
		$self->stop() if $self && $$ == $self->{owner};
	}
}

sub dir { $_[0]->{dir} }
sub ports { @{$_[0]->{ports}} }
sub password { $_[0]->{password} }

# "127.0.0.1:P1 127.0.0.1:P2 ...": all six, for a civchat_redis line
sub seeds {
	my ($self, $n) = @_;
	my @p = @{$self->{ports}};
	@p = @p[0 .. $n - 1] if defined $n;
	return join(' ', map { "127.0.0.1:$_" } @p);
}

sub _free_ports {
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

sub _node_dir { "$_[0]->{dir}/node-$_[1]" }

sub _write_config {
	my ($self, $port) = @_;

	my $d = $self->_node_dir($port);
	make_path($d);

	my $auth = '';
	if (defined $self->{password}) {
		$auth = "requirepass $self->{password}\n"
			. "masterauth $self->{password}\n";
	}

	open(my $fh, '>', "$d/redis.conf") or die "redis.conf: $!\n";
	print $fh <<"EOF";
bind 127.0.0.1
port $port
cluster-port $self->{bus}{$port}
protected-mode no
daemonize no
dir $d
logfile $d/redis.log
loglevel notice
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout $self->{node_timeout}
cluster-replica-validity-factor 0
cluster-allow-replica-migration no
appendonly yes
appendfsync everysec
save ""
$auth
EOF
	close $fh;
}

###############################################################################

# processes

sub _spawn {
	my ($self, $port) = @_;

	my $d = $self->_node_dir($port);

	my $pid = fork();
	die "fork: $!\n" unless defined $pid;

	if ($pid == 0) {
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', "$d/stdout.log");
		open(STDERR, '>&', \*STDOUT);
		chdir($d);
		exec($self->{binary}, "$d/redis.conf") or POSIX::_exit(127);
	}

	$self->{pids}{$port} = $pid;
	$LIVE{"$self"} = $self;
	Scalar::Util::weaken($LIVE{"$self"});
}

sub running {
	my ($self, $port) = @_;
	my $pid = $self->{pids}{$port} or return 0;
	my $r = waitpid($pid, WNOHANG);
	if ($r == $pid || $r == -1) {
		delete $self->{pids}{$port};
		return 0;
	}
	return 1;
}

sub _wait_answer {
	my ($self, $port, $timeout) = @_;

	my $deadline = time() + Civchat::slow($timeout // 10);
	while (time() < $deadline) {
		die "redis-server on $port exited:\n" . $self->log_tail($port)
			unless $self->running($port);
		my $r = eval { $self->command($port, 'PING') };
		return 1 if defined $r && !ref $r && $r eq 'PONG';
		sleep 0.05;
	}
	die "redis-server on $port does not answer:\n" . $self->log_tail($port);
}

sub _signal_wait {
	my ($self, $port, $sig, $timeout) = @_;

	my $pid = $self->{pids}{$port} or return 1;
	kill($sig, $pid);

	my $deadline = time() + $timeout;
	while (time() < $deadline) {
		my $r = waitpid($pid, WNOHANG);
		if ($r == $pid || $r == -1) {
			delete $self->{pids}{$port};
			return 1;
		}
		sleep 0.02;
	}
	return 0;
}

# SIGTERM is a clean shutdown: the append-only file is written out
sub stop_node {
	my ($self, $port) = @_;
	$self->_signal_wait($port, 'KILL', 10)
		unless $self->_signal_wait($port, 'TERM', 20);
	return $self;
}

sub kill_node {
	my ($self, $port) = @_;
	$self->_signal_wait($port, 'KILL', 10);
	return $self;
}

sub start_node {
	my ($self, $port) = @_;
	$self->_spawn($port) unless $self->running($port);
	$self->_wait_answer($port);
	return $self;
}

# SIGSTOP, $seconds, SIGCONT: a node that takes connections and answers
# nothing (below cluster-node-timeout, no failover starts)
sub pause_node {
	my ($self, $port, $seconds) = @_;
	my $pid = $self->{pids}{$port} or die "node $port does not run\n";
	kill('STOP', $pid);
	sleep $seconds;
	kill('CONT', $pid);
	return $self;
}

sub restart_node {
	my ($self, $port, %o) = @_;
	$self->stop_node($port);
	$self->start_node($port);
	$self->wait_ok($o{timeout}) unless $o{no_wait};
	return $self;
}

# six nodes, the cluster created on the first start, ok everywhere
sub start {
	my ($self, %o) = @_;

	$self->_spawn($_) for @{$self->{ports}};
	$self->_wait_answer($_) for @{$self->{ports}};

	unless ($self->{created}) {
		my @cmd = ($self->{cli}, $self->_auth_args(), '--cluster', 'create',
			(map { "127.0.0.1:$_" } @{$self->{ports}}),
			'--cluster-replicas', '1', '--cluster-yes');
		my $out = _run(@cmd);
		die "redis-cli --cluster create failed:\n$out\n"
			unless $out =~ /All 16384 slots covered/;
		$self->{created} = 1;
	}

	$self->wait_ok($o{timeout});
	return $self;
}

sub start_all {
	my ($self, %o) = @_;
	return $self->start(%o);
}

sub stop_all {
	my ($self) = @_;
	$self->stop_node($_) for grep { $self->running($_) } @{$self->{ports}};
	return $self;
}

# every node down for $seconds, then back with its data
sub outage {
	my ($self, $seconds, %o) = @_;
	$self->stop_all();
	sleep $seconds;
	return $self->start_all(%o);
}

sub stop {
	my ($self) = @_;
	for my $port (keys %{$self->{pids}}) {
		$self->_signal_wait($port, 'KILL', 5)
			unless $self->_signal_wait($port, 'TERM', 10);
	}
	delete $LIVE{"$self"};
	return $self;
}

sub log_tail {
	my ($self, $port, $bytes) = @_;
	$bytes //= 2000;
	my $d = $self->_node_dir($port);
	my $s = '';
	for my $f ("$d/redis.log", "$d/stdout.log") {
		open(my $fh, '<', $f) or next;
		local $/;
		my $text = <$fh> // '';
		close $fh;
		$text = substr($text, -$bytes) if length $text > $bytes;
		$s .= "--- $f\n$text\n" if length $text;
	}
	return $s;
}

sub _run {
	my (@cmd) = @_;
	my $pid = open(my $fh, '-|') // die "fork: $!\n";
	if ($pid == 0) {
		open(STDERR, '>&', \*STDOUT);
		exec(@cmd) or POSIX::_exit(127);
	}
	local $/;
	my $out = <$fh> // '';
	close $fh;
	return $out;
}

sub _auth_args {
	my ($self) = @_;
	return () unless defined $self->{password};
	return ('-a', $self->{password}, '--no-auth-warning');
}

###############################################################################

# commands

# redis-cli -c against a master that runs: the command goes to the node
# owning its key (redirections followed); returns redis-cli's output
sub cli {
	my ($self, @args) = @_;
	my ($port) = grep { $self->running($_) } $self->masters();
	($port) = grep { $self->running($_) } @{$self->{ports}} unless $port;
	die "no redis node runs\n" unless $port;
	my $out = _run($self->{cli}, $self->_auth_args(), '-c', '-h', '127.0.0.1',
		'-p', $port, @args);
	$out =~ s/\n\z//;
	return $out;
}

# "redis-cli --cluster SUBCOMMAND 127.0.0.1:PORT ARGS"
sub cluster_tool {
	my ($self, $sub, @args) = @_;
	my ($port) = grep { $self->running($_) } @{$self->{ports}};
	return _run($self->{cli}, $self->_auth_args(), '--cluster', $sub,
		"127.0.0.1:$port", @args);
}

# one command to one node over RESP; the reply as Perl: a string, an
# integer, undef for nil, an array reference, or { error => TEXT }
sub command {
	my ($self, $port, @args) = @_;

	my $s = IO::Socket::INET->new(Proto => 'tcp',
		PeerAddr => "127.0.0.1:$port", Timeout => 5)
		or die "connect $port: $!\n";

	my $buf = '';
	my @pipeline = (@args);

	if (defined $self->{password}) {
		_send($s, 'AUTH', $self->{password});
		my $r = _read_reply($s, \$buf);
		die "AUTH on $port: $r->{error}\n" if ref $r eq 'HASH';
	}

	_send($s, @pipeline);
	my $r = _read_reply($s, \$buf);
	close $s;

	return $r;
}

sub _send {
	my ($s, @args) = @_;
	my $req = '*' . scalar(@args) . "\r\n";
	for my $a (@args) {
		utf8::encode($a) if utf8::is_utf8($a);
		$req .= '$' . length($a) . "\r\n$a\r\n";
	}
	print $s $req;
}

sub _fill {
	my ($s, $buf, $need) = @_;
	while (length($$buf) < $need) {
		my $n = sysread($s, $$buf, 65536, length $$buf);
		die "redis: connection closed\n" unless $n;
	}
}

sub _line {
	my ($s, $buf) = @_;
	while ((my $i = index($$buf, "\r\n")) < 0) {
		_fill($s, $buf, length($$buf) + 1);
	}
	my $i = index($$buf, "\r\n");
	my $line = substr($$buf, 0, $i);
	substr($$buf, 0, $i + 2) = '';
	return $line;
}

sub _read_reply {
	my ($s, $buf) = @_;

	my $line = _line($s, $buf);
	my ($t, $v) = (substr($line, 0, 1), substr($line, 1));

	return $v if $t eq '+';
	return { error => $v } if $t eq '-';
	return $v + 0 if $t eq ':';

	if ($t eq '$') {
		return undef if $v < 0;
		_fill($s, $buf, $v + 2);
		my $data = substr($$buf, 0, $v);
		substr($$buf, 0, $v + 2) = '';
		return $data;
	}

	if ($t eq '*') {
		return undef if $v < 0;
		return [ map { _read_reply($s, $buf) } 1 .. $v ];
	}

	die "redis: unexpected reply \"$line\"\n";
}

###############################################################################

# the cluster's state

# CRC16 (XMODEM, as Redis has it) of the key's hash tag, modulo 16384
sub keyslot {
	my ($self, $key) = @_;

	my $s = index($key, '{');
	if ($s >= 0) {
		my $e = index($key, '}', $s + 1);
		$key = substr($key, $s + 1, $e - $s - 1) if $e > $s + 1;
	}

	my $crc = 0;
	for my $c (unpack('C*', $key)) {
		$crc ^= $c << 8;
		for (1 .. 8) {
			$crc = $crc & 0x8000 ? (($crc << 1) ^ 0x1021) : ($crc << 1);
			$crc &= 0xffff;
		}
	}

	return $crc % 16384;
}

# CLUSTER NODES from a node that runs, as hashes: id, port, flags,
# master (id or '-'), slots ([from, to] pairs), connected
sub nodes {
	my ($self, $port) = @_;

	($port) = grep { $self->running($_) } @{$self->{ports}}
		unless defined $port;
	my $text = $self->command($port, 'CLUSTER', 'NODES');
	die "CLUSTER NODES: $text->{error}\n" if ref $text;

	my @nodes;
	for my $line (split /\n/, $text) {
		my ($id, $addr, $flags, $master, undef, undef, undef, $link, @slots)
			= split / /, $line;
		next unless defined $link;
		my ($p) = $addr =~ /:(\d+)/;
		push @nodes, {
			id => $id, port => $p + 0, flags => $flags, master => $master,
			connected => $link eq 'connected',
			slots => [ map { /^(\d+)(?:-(\d+))?$/ ? [$1, $2 // $1] : () }
				@slots ],
		};
	}

	return @nodes;
}

sub masters {
	my ($self) = @_;
	return map { $_->{port} } grep { $_->{flags} =~ /master/
		&& $_->{flags} !~ /fail/ && @{$_->{slots}} } $self->nodes();
}

sub replicas {
	my ($self) = @_;
	return map { $_->{port} } grep { $_->{flags} =~ /slave/
		&& $_->{flags} !~ /fail/ } $self->nodes();
}

sub node_id {
	my ($self, $port) = @_;
	my ($n) = grep { $_->{port} == $port } $self->nodes();
	return $n ? $n->{id} : undef;
}

# the port of the master serving a slot
sub owner {
	my ($self, $slot) = @_;
	for my $n ($self->nodes()) {
		next unless $n->{flags} =~ /master/ && $n->{flags} !~ /fail/;
		for my $r (@{$n->{slots}}) {
			return $n->{port} if $slot >= $r->[0] && $slot <= $r->[1];
		}
	}
	return undef;
}

# the slot ranges of a master, [from, to] pairs
sub slots_of {
	my ($self, $port) = @_;
	my ($n) = grep { $_->{port} == $port } $self->nodes();
	return $n ? @{$n->{slots}} : ();
}

# CLUSTER INFO of one node as a hash
sub info {
	my ($self, $port) = @_;
	my $text = $self->command($port, 'CLUSTER', 'INFO');
	return {} if ref $text;
	return { map { /^(\w+):(\S*)/ ? ($1 => $2) : () } split /\r?\n/, $text };
}

# every running node: cluster_state ok, all slots ok, every running
# node known and connected, every replica's link to its master up
sub wait_ok {
	my ($self, $timeout) = @_;

	my $deadline = time() + Civchat::slow($timeout // 30);
	my $why = '';

	while (time() < $deadline) {
		$why = $self->_not_ok();
		return $self unless length $why;
		sleep 0.1;
	}

	die "redis cluster not ok: $why\n";
}

sub _not_ok {
	my ($self) = @_;

	my @up = grep { $self->running($_) } @{$self->{ports}};

	for my $port (@up) {
		my $i = eval { $self->info($port) } // {};
		return "$port: cluster_state " . ($i->{cluster_state} // '?')
			unless ($i->{cluster_state} // '') eq 'ok';
		return "$port: slots_ok $i->{cluster_slots_ok}"
			unless $i->{cluster_slots_ok} == 16384;

		my @nodes = eval { $self->nodes($port) };
		for my $n (@nodes) {
			my $alive = grep { $_ == $n->{port} } @up;
			next unless $alive;
			return "$port sees $n->{port} as $n->{flags}"
				if $n->{flags} =~ /fail|handshake|noaddr/;
			return "$port: link to $n->{port} down"
				unless $n->{connected} || $n->{flags} =~ /myself/;
		}

		my $repl = eval { $self->command($port, 'INFO', 'replication') }
			// '';
		next if ref $repl;
		return "$port: replica link down"
			if $repl =~ /role:slave/ && $repl !~ /master_link_status:up/;

		# CLUSTER SLOTS lists a replica once its offset is known
		my $running = grep { $_->{flags} =~ /slave/
			&& $_->{flags} !~ /fail/ && $self->running($_->{port}) } @nodes;
		my $slots = eval { $self->command($port, 'CLUSTER', 'SLOTS') };
		next unless ref $slots eq 'ARRAY';
		my %listed;
		for my $range (@$slots) {
			$listed{$_->[1]} = 1 for @{$range}[3 .. $#$range];
		}
		return "$port: CLUSTER SLOTS lists " . scalar(keys %listed)
			. " of $running replicas" if keys(%listed) < $running;
	}

	return '';
}

# SIGKILL a master; waits until one of its replicas serves its slots and
# the cluster is ok again; returns that replica's port
sub kill_master {
	my ($self, $port, %o) = @_;

	my $id = $self->node_id($port);
	my @replicas = map { $_->{port} }
		grep { $_->{master} eq $id } $self->nodes();

	$self->kill_node($port);

	my $deadline = time() + Civchat::slow($o{timeout} // 30);
	while (time() < $deadline) {
		for my $r (@replicas) {
			my ($n) = grep { $_->{port} == $r }
				eval { $self->nodes($r) };
			if ($n && $n->{flags} =~ /master/ && @{$n->{slots}}) {
				$self->wait_ok($o{timeout});
				return $r;
			}
		}
		sleep 0.1;
	}

	die "no replica of $port took over\n";
}

###############################################################################

# the civchat_status page as { 'name{labels}' => value }; also the lines
# that are not the Prometheus text format, as a second value
sub metrics {
	my ($t, $path) = @_;
	my $r = $t->get($path // '/status');
	my (%m, @bad);
	for my $line (split /\n/, $r->body // '') {
		next if $line =~ /^# (HELP|TYPE) /;
		if ($line =~ /^([a-z_]+)(\{(?:[a-z_]+="[^"\\]*"(?:,|(?=\})))*\})? (-?\d+(?:\.\d+)?)$/) {
			$m{$1 . ($2 // '')} = $3;
			next;
		}
		push @bad, $line;
	}
	return wantarray ? (\%m, \@bad) : \%m;
}

# the sum over the series of a metric whose labels include these
sub metric {
	my ($m, $name, %labels) = @_;
	my $sum = 0;
	for my $k (keys %$m) {
		next unless $k =~ /^\Q$name\E(\{.*\})?$/;
		my $l = $1 // '';
		next if grep { $l !~ /\b$_="\Q$labels{$_}\E"/ } keys %labels;
		$sum += $m->{$k};
	}
	return $sum;
}

# the series of a metric whose labels include these, as label hashes
# with the value under "value"
sub series {
	my ($m, $name, %labels) = @_;
	my @s;
	for my $k (sort keys %$m) {
		next unless $k =~ /^\Q$name\E\{(.*)\}$/;
		my %l = $1 =~ /([a-z_]+)="([^"]*)"/g;
		next if grep { ($l{$_} // '') ne $labels{$_} } keys %labels;
		push @s, { %l, value => $m->{$k} };
	}
	return @s;
}

# polls the status page until $check->($metrics) is true; returns the
# last metrics (the caller tests $check again to report)
sub wait_metrics {
	my ($t, $path, $check, $timeout) = @_;
	my $deadline = time() + Civchat::slow($timeout // 10);
	my $m;
	while (1) {
		$m = metrics($t, $path);
		return $m if $check->($m);
		last if time() >= $deadline;
		sleep 0.1;
	}
	return $m;
}

sub flush_scripts {
	my ($self) = @_;
	$self->command($_, 'SCRIPT', 'FLUSH')
		for grep { $self->running($_) } @{$self->{ports}};
	return $self;
}

1;

###############################################################################
