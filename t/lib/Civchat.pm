package Civchat;

# (C) civchat developers

# A small test harness for the civchat module, modelled on the API of
# nginx-tests' lib/Test/Nginx.pm (new, write_file_expand, run, try_run,
# reload, stop, testdir, read_file, port) but written for this project,
# with core Perl only.  See t/README.md for the environment variables.

###############################################################################

use warnings;
use strict;

use B ();
use Cwd qw/abs_path/;
use Digest::SHA ();
use Exporter qw/import/;
use File::Basename qw/dirname/;
use File::Temp qw/tempdir/;
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw/:sys_wait_h/;
use Socket qw/SOL_SOCKET SO_REUSEADDR/;
use Test::More ();
use Time::HiRes qw/sleep time/;

our @EXPORT_OK = qw/json_encode json_decode is_key uniq_id deep_subset
	user_hash
	ignored_reason events_of is_num is_str num str slow/;

$SIG{PIPE} = 'IGNORE';

binmode(Test::More->builder->$_, ':utf8')
	for qw/output failure_output todo_output/;

our $JSON = JSON::PP->new->utf8->canonical->allow_nonref;

my $REPO = abs_path(dirname(__FILE__) . '/../..');

# how many times slower than usual nginx runs here (under valgrind or a
# sanitizer): the harness's waits for nginx and for answers and events
# are multiplied by it, what the tests assert is not

our $SLOW = $ENV{TEST_NGINX_SLOW} || ($ENV{TEST_NGINX_VALGRIND} ? 5 : 1);

# seconds scaled by $SLOW
sub slow { $_[0] * $SLOW }

###############################################################################

sub new {
	my ($class, %opts) = @_;

	my $self = bless {
		module_wanted => exists $opts{module} ? $opts{module} : 1,
		ports => {},
		started => 0,
		log_offset => 0,
		checked => 0,
	}, $class;

	$self->{_testdir} = tempdir('civchat-test-XXXXXXXXXX',
		TMPDIR => 1, CLEANUP => !$ENV{TEST_NGINX_LEAVE});
	chmod(0755, $self->{_testdir});

	my $bin = $ENV{TEST_NGINX_BINARY};
	if (!defined $bin) {
		$bin = "$REPO/build/nginx/objs/nginx";
		$bin = '/usr/sbin/nginx' unless -f $bin && -x $bin;
	}
	Test::More::BAIL_OUT("no nginx binary at $bin") unless -x $bin;
	$self->{binary} = $bin;

	$self->{module} = $ENV{TEST_NGINX_MODULE}
		// "$REPO/build/ngx_http_civchat_module.so";

	Test::More::diag("testdir $self->{_testdir}") if $ENV{TEST_NGINX_LEAVE};

	return $self;
}

sub DESTROY {
	my ($self) = @_;
	local $?;
	$self->stop_fast() if $self->{started};
}

sub repo { $REPO }
sub testdir { $_[0]->{_testdir} }
sub binary { $_[0]->{binary} }
sub module_path { $_[0]->{module} }

sub has_module {
	my ($self) = @_;
	return -f $self->{module};
}

# skip the whole file when the module is not built yet
sub need_module {
	my ($self) = @_;
	return $self if $self->has_module();
	Test::More::plan(skip_all => "no module at $self->{module} "
		. "(build it, or set TEST_NGINX_MODULE)");
}

sub has_debug {
	my ($self) = @_;
	$self->{_V} //= `$self->{binary} -V 2>&1`;
	return $self->{_V} =~ /--with-debug/;
}

###############################################################################

# a free loopback port, chosen once per test file by binding port 0

sub port {
	my ($self, $n) = @_;
	$n //= 0;

	return $self->{ports}{$n} if $self->{ports}{$n};

	for (1 .. 50) {
		my $s = IO::Socket::INET->new(
			Proto => 'tcp',
			LocalAddr => '127.0.0.1',
			LocalPort => 0,
			Listen => 1,
		) or die "port: $!\n";
		my $port = $s->sockport();
		close $s;
		next if grep { $_ == $port } values %{$self->{ports}};
		return $self->{ports}{$n} = $port;
	}

	die "port: no free port\n";
}

sub base_url {
	my ($self, $path, $n) = @_;
	return 'http://127.0.0.1:' . $self->port($n) . ($path // '/civchat/');
}

###############################################################################

sub test_globals {
	my ($self) = @_;

	my $d = $self->{_testdir};
	my $level = $ENV{TEST_NGINX_DEBUG} && $self->has_debug()
		? 'debug' : 'info';
	my $s = '';

	$s .= "load_module $self->{module};\n"
		if $self->{module_wanted};
	$s .= "pid $d/nginx.pid;\n";
	$s .= "error_log $d/error.log $level;\n";
	$s .= "daemon on;\nmaster_process on;\n"
		unless $self->{no_daemon_globals};
	$s .= "user root;\n" if $> == 0;
	$s .= $ENV{TEST_NGINX_GLOBALS} . "\n" if $ENV{TEST_NGINX_GLOBALS};

	return $s;
}

sub test_globals_http {
	my ($self) = @_;

	my $d = $self->{_testdir};
	my $s = '';

	$s .= "access_log $d/access.log;\n";
	$s .= "client_body_temp_path $d/client_body_temp;\n";
	$s .= "proxy_temp_path $d/proxy_temp;\n";
	$s .= "fastcgi_temp_path $d/fastcgi_temp;\n";
	$s .= "uwsgi_temp_path $d/uwsgi_temp;\n";
	$s .= "scgi_temp_path $d/scgi_temp;\n";
	$s .= $ENV{TEST_NGINX_GLOBALS_HTTP} . "\n"
		if $ENV{TEST_NGINX_GLOBALS_HTTP};

	return $s;
}

sub expand {
	my ($self, $content) = @_;

	my $d = $self->{_testdir};

	$content =~ s/%%TEST_GLOBALS%%/$self->test_globals()/ge;
	$content =~ s/%%TEST_GLOBALS_HTTP%%/$self->test_globals_http()/ge;
	$content =~ s/%%TESTDIR%%/$d/g;
	$content =~ s/%%REPO%%/$REPO/g;
	$content =~ s/%%MODULE%%/$self->{module}/g;
	$content =~ s/%%PORT_(\d+)%%/$self->port($1)/ge;

	return $content;
}

sub write_file {
	my ($self, $name, $content) = @_;

	my $path = $name =~ m{^/} ? $name : "$self->{_testdir}/$name";
	utf8::encode($content) if utf8::is_utf8($content);
	open(my $fh, '>:raw', $path) or die "write_file $path: $!\n";
	print $fh $content;
	close $fh;

	return $path;
}

sub write_file_expand {
	my ($self, $name, $content) = @_;
	return $self->write_file($name, $self->expand($content));
}

# the nginx.conf of this test file; remembered for test_config/reload
sub config {
	my ($self, $content) = @_;
	$self->{config} = $content;
	$self->write_file_expand('nginx.conf', $content);
	return $self;
}

sub read_file {
	my ($self, $name) = @_;

	my $path = $name =~ m{^/} ? $name : "$self->{_testdir}/$name";
	open(my $fh, '<:raw', $path) or return undef;
	local $/;
	my $content = <$fh>;
	close $fh;

	return $content;
}

###############################################################################

# nginx -t on a config (the remembered one, or the given text);
# returns (exit code, output)

sub test_config {
	my ($self, $content, $name) = @_;

	my $named = defined $name;
	$name //= 'nginx.conf';
	my $d = $self->{_testdir};

	# the messages of a test go to test_config.log, not to the error.log
	# that the running nginx writes and check_log reads

	$content //= $named ? $self->read_file($name)
		: $self->{config} // $self->read_file($name);
	$content = $self->expand($content);
	$content =~ s{\Q$d\E/error\.log}{$d/test_config.log}g;
	$name = 'nginx-test.conf' if $name eq 'nginx.conf';
	$self->write_file($name, $content);

	my $cmd = $self->_command();
	my $out = `$cmd -t -p $d/ -c $d/$name -e stderr 2>&1`;
	my $rc = $? >> 8;

	return wantarray ? ($rc, $out) : $rc;
}

# the nginx command; with TEST_NGINX_VALGRIND, nginx under valgrind's
# memcheck, one log per process (forked workers are traced too), leaks
# not looked for: nginx frees its pools at exit or never, by design

sub _command {
	my ($self) = @_;

	my $v = $ENV{TEST_NGINX_VALGRIND};
	return $self->{binary} unless $v;

	my $d = $self->{_testdir};
	my $cmd = 'valgrind --tool=memcheck --leak-check=no'
		. ' --error-exitcode=97 --num-callers=30'
		. " --log-file=$d/valgrind.%p.log";
	$cmd .= " --suppressions=$REPO/t/valgrind.supp"
		if -f "$REPO/t/valgrind.supp";
	$cmd .= " $v" if $v =~ /^-/;

	return "$cmd $self->{binary}";
}

sub _pid {
	my ($self) = @_;
	my $pid = $self->read_file('nginx.pid');
	return undef unless defined $pid && $pid =~ /(\d+)/;
	return $1;
}

sub master_pid { $_[0]->_pid() }

sub _start {
	my ($self) = @_;

	die "no config written\n" unless -f "$self->{_testdir}/nginx.conf";

	my $d = $self->{_testdir};
	my $log = "$d/error.log";
	$self->{log_offset} = -s $log // 0;

	unlink("$d/nginx.pid");

	my $cmd = $self->_command();
	my $out = `$cmd -p $d/ -c $d/nginx.conf -e $log 2>&1`;
	my $rc = $? >> 8;

	return (0, $out || $self->_log_tail()) if $rc != 0;

	# the daemon is listening once the parent exited; wait for the pid
	# file and for all the workers (one can start well after another
	# under valgrind)

	my $want = $self->_workers_wanted();

	for (1 .. 100 * $SLOW) {
		last if $self->_pid() && $self->worker_pids() >= $want;
		sleep 0.05;
	}

	return (0, "nginx did not start: " . $self->_log_tail())
		unless $self->_pid();

	$self->{started} = 1;

	for my $n (@{$self->{wait_ports} // [sort keys %{$self->{ports}}]}) {
		$self->waitforsocket('127.0.0.1:' . $self->port($n));
	}

	return (1, '');
}

# the workers nginx.conf asks for (worker_processes, 1 by default)

sub _workers_wanted {
	my ($self) = @_;

	my $conf = $self->read_file('nginx.conf') // '';
	return 1 unless $conf =~ /^\s*worker_processes\s+(\w+)\s*;/m;

	my $n = $1;
	return $n if $n =~ /^\d+$/;

	$n = `getconf _NPROCESSORS_ONLN 2>/dev/null` // '';
	return $n =~ /^(\d+)/ ? $1 : 1;
}

sub _log_tail {
	my ($self) = @_;
	my $log = $self->read_file('error.log') // '';
	$log = substr($log, $self->{log_offset}) if length $log
		>= $self->{log_offset};
	return $log;
}

sub run {
	my ($self) = @_;
	my ($ok, $err) = $self->_start();
	die "nginx failed to start:\n$err" unless $ok;
	return $self;
}

# a config that fails to start skips the whole file (as in nginx-tests)
sub try_run {
	my ($self, $message) = @_;
	my ($ok, $err) = $self->_start();
	return $self if $ok;
	Test::More::plan(skip_all => $message // "cannot start nginx: $err");
}

sub waitforsocket {
	my ($self, $peer) = @_;

	for (1 .. 100 * $SLOW) {
		my $s = IO::Socket::INET->new(Proto => 'tcp', PeerAddr => $peer);
		return 1 if $s;
		sleep 0.05;
	}

	return 0;
}

sub _alive {
	my ($pid) = @_;
	return 0 unless kill(0, $pid);
	my $stat = '';
	if (open(my $fh, '<', "/proc/$pid/stat")) {
		$stat = <$fh> // '';
		close $fh;
	}
	return $stat =~ /^\d+ \(.*\) Z/ ? 0 : 1;
}

# the pids of those given that are running (not gone, not zombies)
sub alive {
	my ($self, @pids) = @_;
	return grep { _alive($_) } @pids;
}

sub worker_pids {
	my ($self) = @_;

	my $master = $self->_pid() or return ();
	my @pids;

	opendir(my $dh, '/proc') or return ();
	for my $pid (grep { /^\d+$/ } readdir $dh) {
		open(my $fh, '<', "/proc/$pid/stat") or next;
		my $stat = <$fh> // '';
		close $fh;
		next unless $stat =~ /^\d+ \((.*)\) (\S) (\d+)/;
		next unless $3 == $master && $2 ne 'Z';
		my $cmd = $self->read_file("/proc/$pid/cmdline") // '';
		next if $cmd =~ /cache/;
		push @pids, $pid;
	}
	closedir $dh;

	@pids = sort { $a <=> $b } @pids;
	return @pids;
}

sub _signal {
	my ($self, $sig) = @_;
	my $pid = $self->_pid() or die "no nginx master\n";
	kill($sig, $pid) or die "kill $sig $pid: $!\n";
	return $pid;
}

# HUP, then wait until the old workers are gone and all the new ones run;
# with a new config text, writes it first

sub reload {
	my ($self, $content) = @_;

	$self->config($content) if defined $content;

	my %old = map { $_ => 1 } $self->worker_pids();
	my $want = $self->_workers_wanted();
	$self->_signal('HUP');

	my $deadline = time() + slow(15);
	while (time() < $deadline) {
		my @now = $self->worker_pids();
		my $gone = !grep { _alive($_) } keys %old;
		my @new = grep { !$old{$_} } @now;
		return 1 if $gone && @new >= $want;
		sleep 0.05;
	}

	return 0;
}

sub reopen {
	my ($self) = @_;
	$self->_signal('USR1');
	return $self;
}

sub _wait_exit {
	my ($self, $pid, $timeout) = @_;

	my $deadline = time() + slow($timeout);
	while (time() < $deadline) {
		return 1 unless _alive($pid);
		sleep 0.05;
	}

	return 0;
}

sub stop {
	my ($self) = @_;

	return $self unless $self->{started};

	my $pid = $self->_pid();
	if ($pid) {
		kill('QUIT', $pid);
		unless ($self->_wait_exit($pid, 20)) {
			kill('KILL', $pid);
			$self->_wait_exit($pid, 5);
		}
	}

	$self->{started} = 0;
	return $self;
}

sub stop_fast {
	my ($self) = @_;

	return $self unless $self->{started};

	my $pid = $self->_pid();
	if ($pid) {
		kill('TERM', $pid);
		unless ($self->_wait_exit($pid, 10)) {
			kill('KILL', $pid);
			$self->_wait_exit($pid, 5);
		}
	}

	$self->{started} = 0;
	return $self;
}

sub restart {
	my ($self) = @_;
	$self->stop();
	return $self->run();
}

###############################################################################

# error.log since the last start: no alert, crit or emerg, no crashed
# worker, no sanitizer report

sub log_problems {
	my ($self) = @_;

	my $log = $self->read_file('error.log') // '';
	my @bad;

	for my $line (split /\n/, $log) {
		push @bad, $line if $line =~ /\[(alert|crit|emerg)\]/
			|| $line =~ /exited on signal/
			|| $line =~ /worker process \d+ exited with (fatal )?code [1-9]/
			|| $line =~ /Sanitizer|runtime error:/;
	}

	return @bad;
}

# under valgrind: the reports of every nginx process of this file
# (invalid reads and writes, frees, uses of uninitialised values), each
# with its first lines

sub valgrind_problems {
	my ($self) = @_;

	# the first line of each kind of memcheck report
	my $kinds = join('|', 'Invalid (?:read|write|free)', 'Mismatched free',
		'Conditional jump', 'Use of uninitialised', 'Syscall param',
		'Source and destination overlap', 'Argument .* fishy',
		'Process terminating');
	my $report = qr/^==\d+== (?:$kinds)/m;

	my @bad;

	for my $f (sort glob("$self->{_testdir}/valgrind.*.log")) {
		my $log = $self->read_file($f) // next;
		next unless $log =~ /ERROR SUMMARY: [1-9]/ || $log =~ $report;

		my @lines = split /\n/, $log;
		my ($first) = grep { $lines[$_] =~ $report } 0 .. $#lines;
		$first //= 0;
		my $last = $first + 25 > $#lines ? $#lines : $first + 25;
		push @bad, "$f:", @lines[$first .. $last];
	}

	return @bad;
}

sub check_log {
	my ($self) = @_;

	my @bad = $self->log_problems();
	Test::More::ok(!@bad, 'error.log: no alert, crit, emerg or crashed worker')
		or Test::More::diag(join("\n", @bad[0 .. ($#bad > 20 ? 20 : $#bad)]));

	if ($ENV{TEST_NGINX_VALGRIND}) {
		@bad = $self->valgrind_problems();
		Test::More::ok(!@bad, 'valgrind: no memory errors')
			or Test::More::diag(join("\n", @bad[0 .. ($#bad > 80 ? 80 : $#bad)]));
	}

	$self->{checked} = 1;
}

# stops nginx, checks the error log and ends the plan
sub done_testing {
	my ($self) = @_;

	$self->stop();
	$self->check_log();

	if ($ENV{TEST_NGINX_CATLOG}) {
		Test::More::diag($self->read_file('error.log') // '');
	}

	Test::More::done_testing();
}

###############################################################################

# requests

sub json_encode { $JSON->encode($_[0]) }

sub json_decode {
	my ($text) = @_;
	return undef unless defined $text && length $text;
	utf8::encode($text) if utf8::is_utf8($text);
	my $v = eval { $JSON->decode($text) };
	return $v;
}

# the user_hash a site's backend computes: HMAC-SHA256 (hex) of the
# user_id, or of the email (trimmed, lower case) where the email
# identifies
sub user_hash {
	my ($secret, $id) = @_;
	$id = "$id";
	$id =~ s/^\s+|\s+$//g;
	$id = lc $id if $id =~ /\@/;
	return Digest::SHA::hmac_sha256_hex($id, $secret);
}

# the profile a client's last request resolved to: its events carry
# the profile's own key, the same on all of the profile's browsers
sub Civchat::Client::profile {
	my ($self, %o) = @_;
	my ($ev) = grep { $_->{type} eq 'page_view' } $self->events(%o);
	($ev) = $self->events(%o) unless $ev;
	return $ev ? $ev->{user_key} : undef;
}

sub is_key {
	my ($k) = @_;
	return defined $k && !ref $k && $k =~ /^[A-Za-z0-9]{16}$/ ? 1 : 0;
}

my $uniq = 0;

sub uniq_id {
	my ($prefix) = @_;
	$uniq++;
	return ($prefix // 'u') . "-$$-" . int(time() * 1000) % 100000000
		. "-$uniq";
}

# one request on a new connection; returns a Civchat::Response
#   method, path, headers => [name => value, ...], body, chunked => size,
#   host, port (an index for port()), http => '1.0'|'1.1', raw, timeout

sub request {
	my ($self, %o) = @_;

	my $raw = $o{raw};

	unless (defined $raw) {
		my $method = $o{method} // 'GET';
		my $ver = $o{http} // '1.1';
		my @h = @{$o{headers} // []};
		my %have = map { lc $h[$_ * 2] => 1 } 0 .. int(@h / 2) - 1;
		my $body = $o{body};
		utf8::encode($body) if defined $body && utf8::is_utf8($body);

		$raw = "$method $o{path} HTTP/$ver\r\n";
		$raw .= "Host: " . ($o{host} // '127.0.0.1:'
			. $self->port($o{port})) . "\r\n" unless $have{host};
		$raw .= "Connection: close\r\n"
			if $ver eq '1.1' && !$have{connection};

		while (my ($k, $v) = splice(@h, 0, 2)) {
			next unless defined $v;
			$raw .= "$k: $v\r\n";
		}

		if (defined $body && $o{chunked}) {
			$raw .= "Transfer-Encoding: chunked\r\n\r\n";
			my $n = $o{chunked} > 1 ? $o{chunked} : 4096;
			for (my $i = 0; $i < length $body; $i += $n) {
				my $c = substr($body, $i, $n);
				$raw .= sprintf("%x\r\n%s\r\n", length $c, $c);
			}
			$raw .= "0\r\n\r\n";

		} elsif (defined $body) {
			$raw .= "Content-Length: " . length($body) . "\r\n"
				unless $have{'content-length'};
			$raw .= "\r\n" . $body;

		} else {
			$raw .= "\r\n";
		}
	}

	my $text = $self->http($raw, port => $o{port}, timeout => $o{timeout},
		ssl => $o{ssl});

	return Civchat::Response->parse($text, $o{method} // '');
}

# sends raw bytes, returns the raw answer (until the server closes)

sub http {
	my ($self, $raw, %o) = @_;

	my $peer = '127.0.0.1:' . $self->port($o{port});
	my $timeout = slow($o{timeout} // 10);
	my $s;

	if ($o{ssl}) {
		require IO::Socket::SSL;
		$s = IO::Socket::SSL->new(PeerAddr => $peer,
			SSL_verify_mode => 0, Timeout => $timeout)
			or return '';
	} else {
		$s = IO::Socket::INET->new(Proto => 'tcp', PeerAddr => $peer,
			Timeout => $timeout) or return '';
	}

	warn "# >>> $raw\n" if $ENV{TEST_NGINX_VERBOSE};

	# write and read interleaved: the server may answer (413) before
	# it has read the whole body

	my $out = $raw;
	my $in = '';
	my $deadline = time() + $timeout;
	$s->blocking(0) unless $o{ssl};

	if ($o{ssl}) {
		$s->syswrite($out);
		$out = '';
		$s->blocking(1);
		local $SIG{ALRM} = sub { die "timeout\n" };
		alarm($timeout);
		eval {
			while (1) {
				my $n = $s->sysread(my $buf, 65536);
				last unless $n;
				$in .= $buf;
			}
		};
		alarm(0);

	} else {
		my $sel = IO::Select->new($s);

		while (time() < $deadline) {
			my ($r, $w) = IO::Select->select($sel,
				length $out ? $sel : undef, undef, 0.5);

			if ($w && @$w && length $out) {
				my $n = syswrite($s, $out, 65536);
				if (defined $n) {
					substr($out, 0, $n) = '';
					shutdown($s, 1) if !length $out && $o{half_close};
				} elsif (!$!{EAGAIN}) {
					$out = '';
				}
			}

			if ($r && @$r) {
				my $n = sysread($s, my $buf, 65536);
				if (!defined $n) {
					next if $!{EAGAIN};
					last;
				}
				last if $n == 0;
				$in .= $buf;
			}
		}
	}

	close $s;

	warn "# <<< $in\n" if $ENV{TEST_NGINX_VERBOSE};

	return $in;
}

sub get {
	my ($self, $uri, %headers) = @_;
	return $self->request(method => 'GET', path => $uri,
		headers => [%headers]);
}

sub head {
	my ($self, $uri, %headers) = @_;
	return $self->request(method => 'HEAD', path => $uri,
		headers => [%headers]);
}

# $data: a Perl structure (JSON-encoded) or a string sent as is

sub post_json {
	my ($self, $uri, $data, %headers) = @_;

	my $body = ref $data ? json_encode($data) : $data;
	my %lc = map { lc $_ => 1 } keys %headers;
	my @h = %headers;
	unshift @h, 'Content-Type' => 'application/json'
		unless $lc{'content-type'};

	return $self->request(method => 'POST', path => $uri, headers => \@h,
		body => $body);
}

sub client {
	my ($self, %o) = @_;
	return Civchat::Client->new($self, %o);
}

###############################################################################

# events from the NDJSON store file: read_events([$file,] %opts)
#   file => path (default TESTDIR/events.ndjson), count => N (wait until
#   at least N matching events), match => {field => value|qr//} or sub,
#   timeout => seconds (5), settle => seconds to wait before the last
#   read (default 0.35 when no count is given: time for a 100ms flush)

sub read_events {
	my $self = shift;
	unshift @_, 'file' if @_ % 2;
	my %o = @_;

	my $file = $o{file} // "$self->{_testdir}/events.ndjson";
	my $timeout = slow($o{timeout} // 5);
	my $deadline = time() + $timeout;
	my @ev;

	if (!defined $o{count}) {
		sleep(slow($o{settle} // 0.35));
	}

	while (1) {
		@ev = $self->_matching($file, $o{match});
		last if !defined $o{count} || @ev >= $o{count};
		last if time() >= $deadline;
		sleep 0.02;
	}

	if (defined $o{count} && $o{settle}) {
		sleep slow($o{settle});
		@ev = $self->_matching($file, $o{match});
	}

	return @ev;
}

sub _matching {
	my ($self, $file, $match) = @_;
	my @all = $self->parse_events($file);
	return @all unless $match;
	return grep { $match->($_) } @all if ref $match eq 'CODE';
	return events_of(\@all, %$match);
}

# all complete lines; a line that is not JSON is kept as
# { _bad => $line } so that tests can see it

sub parse_events {
	my ($self, $file) = @_;

	$file //= "$self->{_testdir}/events.ndjson";

	# incremental: only the bytes appended since the last call are
	# parsed; a file replaced or truncated is read again

	my @st = stat($file);
	my $cache = $self->{_ev_cache}{$file};

	if (!@st) {
		delete $self->{_ev_cache}{$file};
		return ();
	}

	if (!$cache || $cache->{ino} != $st[1] || $st[7] < $cache->{offset}) {
		$cache = $self->{_ev_cache}{$file} =
			{ ino => $st[1], offset => 0, events => [] };
	}

	if ($st[7] > $cache->{offset}) {
		open(my $fh, '<:raw', $file) or return @{$cache->{events}};
		seek($fh, $cache->{offset}, 0);
		local $/;
		my $text = <$fh> // '';
		close $fh;

		my $end = rindex($text, "\n");
		if ($end >= 0) {
			for my $line (split /\n/, substr($text, 0, $end + 1)) {
				my $e = json_decode($line);
				push @{$cache->{events}},
					ref $e eq 'HASH' ? $e : { _bad => $line };
			}
			$cache->{offset} += $end + 1;
		}
	}

	return @{$cache->{events}};
}

sub events_of {
	my ($events, %m) = @_;

	return grep {
		my $e = $_;
		!grep {
			my $want = $m{$_};
			my $have = $e->{$_};
			!defined $have ? 1
			: ref $want eq 'Regexp' ? $have !~ $want
			: $have ne $want;
		} keys %m;
	} @$events;
}

###############################################################################

# one loop for a list of cases:
#   { name, method (POST), path (relative to base), body (data or raw
#     string), headers (hash or pairs), cookie, chunked, status, error,
#     detail (regexp), header => {name => value|qr//|undef},
#     json_like (subset match), ignored => {name => reason|qr//},
#     no_ignored => [names], check => sub($res, $case) }

sub run_cases {
	my ($self, $cases, %o) = @_;

	my $base = $o{base} // '/civchat/';

	for my $c (@$cases) {
		my $name = $c->{name};
		my $method = $c->{method} // 'POST';
		my @h = ref $c->{headers} eq 'HASH' ? %{$c->{headers}}
			: @{$c->{headers} // []};

		push @h, Cookie => $c->{cookie} if defined $c->{cookie};

		my %lc = map { lc $h[$_ * 2] => 1 } 0 .. int(@h / 2) - 1;
		my $body = $c->{body};
		$body = json_encode($body) if ref $body;

		if (defined $body && !$lc{'content-type'}
			&& !$c->{no_content_type})
		{
			unshift @h, 'Content-Type' => 'application/json';
		}

		my $path = $c->{path} // 'init';
		$path = $base . $path unless $path =~ m{^/};

		my $r = $self->request(method => $method, path => $path,
			headers => \@h, body => $body, chunked => $c->{chunked},
			raw => $c->{raw}, port => $c->{port});

		$r->check($c, $name);
	}
}

###############################################################################

package Civchat::Response;

use Test::More;

sub parse {
	my ($class, $raw, $method) = @_;

	my $self = bless { raw => $raw, status => 0, headers => {},
		body => '', json => undef }, $class;

	return $self unless defined $raw
		&& $raw =~ /^HTTP\/1\.[01] (\d{3})([^\r\n]*)\r?\n/;

	$self->{status} = $1;
	$self->{reason} = $2;

	my $end = index($raw, "\r\n\r\n");
	my $head = $end >= 0 ? substr($raw, 0, $end) : $raw;
	my $body = $end >= 0 ? substr($raw, $end + 4) : '';

	for my $line (split /\r\n/, $head) {
		next unless $line =~ /^([^:\s]+):\s*(.*?)\s*$/;
		push @{$self->{headers}{lc $1}}, $2;
	}

	if (($self->header('transfer-encoding') // '') =~ /chunked/i) {
		my $decoded = '';
		while ($body =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
			my $n = hex $1;
			last if $n == 0;
			$decoded .= substr($body, 0, $n);
			substr($body, 0, $n + 2) = '';
		}
		$body = $decoded;
	}

	$self->{body} = $body;
	$self->{json} = Civchat::json_decode($body)
		if ($self->header('content-type') // '') =~ /json/i
		|| $body =~ /^\s*[\{\[]/;

	return $self;
}

# a keep-alive exchange: several answers in one byte stream; $methods
# (optional) names the method of each request, for HEAD

sub parse_many {
	my ($class, $raw, @methods) = @_;

	my @res;

	while (defined $raw && length $raw) {
		my $end = index($raw, "\r\n\r\n");
		last if $end < 0;

		my $head = substr($raw, 0, $end + 4);
		my $rest = substr($raw, $end + 4);
		my $method = shift(@methods) // 'GET';
		my $r = $class->parse($head, $method);
		my $len;

		if ($method eq 'HEAD' || $r->{status} =~ /^(1\d\d|204|304)$/) {
			$len = 0;

		} elsif (($r->header('transfer-encoding') // '') =~ /chunked/i) {
			my $body = '';
			my $pos = 0;
			while ($rest =~ /\G([0-9a-fA-F]+)[^\r\n]*\r\n/gc) {
				my $n = hex $1;
				$pos = pos($rest);
				if ($n == 0) {
					$pos += 2;
					last;
				}
				$body .= substr($rest, $pos, $n);
				$pos += $n + 2;
				pos($rest) = $pos;
			}
			(my $plain = $head) =~ s/^Transfer-Encoding:[^\r\n]*\r\n//mi;
			$r = $class->parse($plain . $body, $method);
			push @res, $r;
			$raw = substr($rest, $pos);
			next;

		} elsif (defined $r->header('content-length')) {
			$len = $r->header('content-length');

		} else {
			$len = length $rest;
		}

		$r = $class->parse($head . substr($rest, 0, $len), $method);
		push @res, $r;
		$raw = substr($rest, $len);
	}

	return @res;
}

sub status { $_[0]->{status} }
sub body { $_[0]->{body} }
sub json { $_[0]->{json} }
sub raw { $_[0]->{raw} }

# the first value of a header (or all of them in list context)
sub header {
	my ($self, $name) = @_;
	my $v = $self->{headers}{lc $name} // [];
	return wantarray ? @$v : $v->[0];
}

sub set_cookies {
	my ($self) = @_;
	return @{$self->{headers}{'set-cookie'} // []};
}

# the Set-Cookie line for a cookie name
sub set_cookie {
	my ($self, $name) = @_;
	$name //= '__ca__chat';
	my @c = grep { /^\Q$name\E=/ } $self->set_cookies();
	return $c[0];
}

sub cookie_value {
	my ($self, $name) = @_;
	my $c = $self->set_cookie($name) // return undef;
	return $c =~ /^[^=]+=([^;]*)/ ? $1 : undef;
}

# {"name" => ..., } attributes of a Set-Cookie line, lower-cased names
sub cookie_attrs {
	my ($self, $name) = @_;
	my $c = $self->set_cookie($name) // return undef;
	my (undef, @parts) = split /;\s*/, $c;
	my %a;
	for (@parts) {
		my ($k, $v) = split /=/, $_, 2;
		$a{lc $k} = $v // 1;
	}
	return \%a;
}

sub key { my $j = $_[0]->{json}; ref $j eq 'HASH' ? $j->{key} : undef }

sub user {
	my $j = $_[0]->{json};
	return ref $j eq 'HASH' && ref $j->{user} eq 'HASH' ? $j->{user} : {};
}

sub ignored_reason {
	my ($self, $name) = @_;
	return Civchat::ignored_reason($self->{json}, $name);
}

sub error { my $j = $_[0]->{json}; ref $j eq 'HASH' ? $j->{error} : undef }

sub describe {
	my ($self) = @_;
	my $raw = $self->{raw} // '';
	$raw = substr($raw, 0, 1500) . '...' if length $raw > 1500;
	return "response:\n$raw";
}

# the checks of one run_cases entry
sub check {
	my ($r, $c, $name) = @_;

	my $ok = 1;

	if (defined $c->{status}) {
		if (ref $c->{status} eq 'ARRAY') {
			$ok &= ok((grep { $r->{status} == $_ } @{$c->{status}}),
				"$name: status $r->{status} in @{$c->{status}}");
		} else {
			$ok &= is($r->{status}, $c->{status}, "$name: status");
		}
	}

	if (defined $c->{error}) {
		my $j = $r->{json};
		my $err = ref $j eq 'HASH' ? $j->{error} : undef;
		if (ref $c->{error} eq 'ARRAY') {
			$ok &= ok(defined $err && (grep { $err eq $_ } @{$c->{error}}),
				"$name: error " . ($err // 'undef')
				. " in @{$c->{error}}");
		} else {
			$ok &= is($err, $c->{error}, "$name: error code");
		}
		$ok &= ok(ref $j eq 'HASH' && defined $j->{detail}
			&& !ref $j->{detail} && length $j->{detail} > 5,
			"$name: detail sentence");
		$ok &= like($j->{detail}, $c->{detail}, "$name: detail names it")
			if $c->{detail} && ref $j eq 'HASH';
		$ok &= like($r->header('content-type') // '', qr/json/,
			"$name: error is JSON");
	}

	for my $h (sort keys %{$c->{header} // {}}) {
		my $want = $c->{header}{$h};
		my $have = join(', ', $r->header($h));
		$have = undef unless length $have;
		if (!defined $want) {
			$ok &= ok(!defined $have, "$name: no $h header");
		} elsif (ref $want eq 'Regexp') {
			$ok &= like($have, $want, "$name: $h header");
		} else {
			$ok &= is($have, $want, "$name: $h header");
		}
	}

	if ($c->{json_like}) {
		my @diff = Civchat::deep_subset($c->{json_like}, $r->{json});
		$ok &= ok(!@diff, "$name: json") or diag(join("\n", @diff));
	}

	for my $f (sort keys %{$c->{ignored} // {}}) {
		my $want = $c->{ignored}{$f};
		my $have = $r->ignored_reason($f);
		if (ref $want eq 'Regexp') {
			$ok &= like($have, $want, "$name: $f ignored");
		} else {
			$ok &= is($have, $want, "$name: $f ignored");
		}
	}

	for my $f (@{$c->{no_ignored} // []}) {
		$ok &= ok(!defined $r->ignored_reason($f),
			"$name: $f not ignored");
	}

	$ok &= $c->{check}->($r, $c) if $c->{check};

	diag($r->describe()) unless $ok;

	return $ok;
}

###############################################################################

package Civchat::Client;

# a browser: keeps the cookie jar between calls, adds the apiKey and a
# page url unique to each request (so the events of one request can be
# found by their url)

sub new {
	my ($class, $t, %o) = @_;

	return bless {
		t => $t,
		base => $o{base} // '/civchat/',
		api_key => exists $o{api_key} ? $o{api_key} : 'TESTKEY',
		jar => {},
		headers => $o{headers} // [],
		port => $o{port},
		ssl => $o{ssl},
		cookie_name => $o{cookie_name} // '__ca__chat',
		secret => $o{secret},
		last_url => undef,
	}, $class;
}

sub jar { $_[0]->{jar} }

sub cookie {
	my ($self, $name) = @_;
	return $self->{jar}{$name // $self->{cookie_name}};
}

sub set_cookie {
	my ($self, $name, $value) = @_;
	if (defined $value) {
		$self->{jar}{$name} = $value;
	} else {
		delete $self->{jar}{$name};
	}
	return $self;
}

sub key { $_[0]->cookie() }
sub last_url { $_[0]->{last_url} }

# post(endpoint, data, %opts): base => '/x/', headers => [...],
# no_api_key => 1, url => ...

sub post {
	my ($self, $endpoint, $data, %o) = @_;

	$data = { %{$data // {}} };

	unless ($o{no_api_key} || grep { exists $data->{$_} }
		qw/apiKey api_key app_key/)
	{
		$data->{apiKey} = $self->{api_key} if defined $self->{api_key};
	}

	unless (exists $data->{url} || $o{no_url}) {
		$data->{url} = 'http://site.test/' . Civchat::uniq_id('page');
	}

	# a site with civchat_identity_secret: its pages sign the identity
	if (defined $self->{secret} && !exists $data->{user_hash}) {
		my $id = $data->{user_id} // $data->{email};
		$data->{user_hash} = Civchat::user_hash($self->{secret}, $id)
			if defined $id && !ref $id && length $id;
	}

	$self->{last_url} = $data->{url};

	my @h = ('Content-Type' => 'application/json',
		@{$self->{headers}}, @{$o{headers} // []});

	my $cookie = join('; ', map { "$_=$self->{jar}{$_}" }
		sort keys %{$self->{jar}});
	push @h, Cookie => $cookie if length $cookie;

	my $r = $self->{t}->request(method => 'POST',
		path => ($o{base} // $self->{base}) . $endpoint,
		headers => \@h, body => Civchat::json_encode($data),
		port => $o{port} // $self->{port}, ssl => $self->{ssl});

	$self->absorb($r);
	return $r;
}

sub absorb {
	my ($self, $r) = @_;

	for my $c ($r->set_cookies()) {
		next unless $c =~ /^([^=;\s]+)=([^;]*)/;
		my ($n, $v) = ($1, $2);
		if ($c =~ /max-age=0\b/i || $v eq '') {
			delete $self->{jar}{$n};
		} else {
			$self->{jar}{$n} = $v;
		}
	}
}

sub init { my $s = shift; $s->post('init', @_) }
sub page_hit { my $s = shift; $s->post('page_hit', @_) }
sub reset_auth { my $s = shift; $s->post('reset_auth', @_) }
sub update { my $s = shift; $s->post('update', @_) }
sub event { my $s = shift; $s->post('event', @_) }
sub product_event { my $s = shift; $s->post('product_event', @_) }

# events written by the last request (they all carry its url): waits
# for the first (or for count => N), then reads once more, since the
# events of one request are written together; count => 0 waits for a
# flush interval instead (a request expected to write nothing)

sub events {
	my ($self, %o) = @_;

	my $url = $self->{last_url};
	my %m = (url => $url, %{delete $o{match} // {}});
	my $t = $self->{t};

	if (defined $o{count} && $o{count} == 0) {
		return $t->read_events(settle => 0.3, match => \%m);
	}

	$t->read_events(count => 1, timeout => $o{timeout} // 5,
		match => { url => $url });

	return $t->read_events(count => $o{count} // 1,
		timeout => $o{timeout} // 1, match => \%m);
}

###############################################################################

package Civchat;

sub ignored_reason {
	my ($json, $name) = @_;
	return undef unless ref $json eq 'HASH'
		&& ref $json->{ignored} eq 'ARRAY';
	for my $i (@{$json->{ignored}}) {
		next unless ref $i eq 'HASH';
		return $i->{reason} if defined $i->{name} && $i->{name} eq $name;
	}
	return undef;
}

# is $want a subset of $have?  returns the differences (empty: yes);
# a Regexp in $want matches a scalar, undef matches null, a CODE
# reference is called with the value

sub deep_subset {
	my ($want, $have, $path) = @_;
	$path //= '$';

	if (ref $want eq 'HASH') {
		return ("$path: not an object") unless ref $have eq 'HASH';
		return map {
			exists $have->{$_}
				? deep_subset($want->{$_}, $have->{$_}, "$path.$_")
				: ("$path.$_: missing")
		} sort keys %$want;
	}

	if (ref $want eq 'ARRAY') {
		return ("$path: not an array") unless ref $have eq 'ARRAY';
		return ("$path: " . scalar(@$have) . " items, want "
			. scalar(@$want)) unless @$have == @$want;
		return map { deep_subset($want->[$_], $have->[$_], "$path\[$_\]") }
			0 .. $#$want;
	}

	if (ref $want eq 'Regexp') {
		return () if defined $have && !ref $have && $have =~ $want;
		return ("$path: " . _show($have) . " !~ $want");
	}

	if (ref $want eq 'CODE') {
		return () if $want->($have);
		return ("$path: " . _show($have) . " rejected");
	}

	if (!defined $want) {
		return () if !defined $have;
		return ("$path: " . _show($have) . ", want null");
	}

	if (JSON::PP::is_bool($want)) {
		return () if JSON::PP::is_bool($have) && !!$have == !!$want;
		return ("$path: " . _show($have) . ", want "
			. ($want ? 'true' : 'false'));
	}

	return ("$path: " . _show($have) . ", want " . _show($want))
		if !defined $have || ref $have;

	return () if $have eq $want;
	return ("$path: " . _show($have) . ", want " . _show($want));
}

# JSON type of a decoded scalar: a number or a string?

sub is_num {
	my ($v) = @_;
	return 0 if !defined $v || ref $v;
	my $flags = B::svref_2object(\$v)->FLAGS;
	return ($flags & (B::SVp_IOK() | B::SVp_NOK()))
		&& !($flags & B::SVp_POK()) ? 1 : 0;
}

sub is_str {
	my ($v) = @_;
	return 0 if !defined $v || ref $v;
	return is_num($v) ? 0 : 1;
}

# matchers for deep_subset: a JSON number equal to $n, a JSON string
# equal to $s

sub num {
	my ($n) = @_;
	return sub { is_num($_[0]) && abs($_[0] - $n) < 1e-9 };
}

sub str {
	my ($s) = @_;
	return sub { is_str($_[0]) && $_[0] eq $s };
}

sub _show {
	my ($v) = @_;
	return 'undef' unless defined $v;
	return ref $v ? json_encode($v) : "\"$v\"";
}

1;

###############################################################################
