package Civchat::Stream;

# (C) civchat developers

# A reader of a live stream (server-sent events) on a raw socket, for
# the tests: open() sends the GET, pump() reads streams as the bytes
# come until a condition holds.

use warnings;
use strict;

use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw/time/;

# a GET of the stream on a raw socket, read as the bytes come:
#   key, path (default /civchat/stream), query, last_id (Last-Event-ID),
#   cookie, origin, http ('1.1' chunked or '1.0'), host (Host header),
#   port (the test's port number n, default 0), hold (all but the blank
#   line that ends the request is sent: send_rest() sends it)

sub open {
	my ($class, $t, %o) = @_;

	my $path = $o{path} // '/civchat/stream';
	my @q;
	push @q, "key=$o{key}" if defined $o{key} && !defined $o{cookie};
	push @q, $o{query} if defined $o{query};
	$path .= '?' . join('&', @q) if @q && $path !~ /\?/;

	my $http = $o{http} // '1.1';
	my $host = $o{host} // 'localhost';
	my $raw = "GET $path HTTP/$http\r\nHost: $host\r\n"
		. "Accept: text/event-stream\r\n";
	$raw .= "Last-Event-ID: $o{last_id}\r\n" if defined $o{last_id};
	$raw .= "Cookie: __ca__chat=$o{cookie}\r\n" if defined $o{cookie};
	$raw .= "Origin: $o{origin}\r\n" if defined $o{origin};
	my $rest = "\r\n";

	if (!$o{hold}) {
		$raw .= $rest;
		$rest = '';
	}

	my $s = IO::Socket::INET->new(Proto => 'tcp',
		PeerAddr => '127.0.0.1:' . $t->port($o{port} // 0), Timeout => 5)
		or die "stream: connect: $!\n";
	$s->autoflush(1);
	syswrite($s, $raw) == length $raw or die "stream: write: $!\n";
	$s->blocking(0);

	return bless { s => $s, in => '', head => undef, headers => {},
		status => 0, chunked => 0, body => '', events => [],
		comments => [], retry => undef, eof => 0, last_chunk => 0,
		rest => $rest }, $class;
}

# the end of a request opened with hold
sub send_rest {
	my ($self) = @_;
	my $rest = $self->{rest};
	$self->{rest} = '';
	return 1 unless length $rest;
	return syswrite($self->{s}, $rest) == length $rest;
}

sub status { $_[0]{status} }
sub events { $_[0]{events} }
sub header { $_[0]{headers}{lc $_[1]} }

sub close {
	my ($self) = @_;
	CORE::close($self->{s}) if $self->{s};
	$self->{s} = undef;
}

sub fh { $_[0]{s} }

# bytes from the socket: headers, then (chunked or not) the body, cut
# into SSE blocks
sub feed {
	my ($self) = @_;

	my $n = sysread($self->{s}, my $buf, 65536);

	if (!defined $n) {
		return if $!{EAGAIN} || $!{EWOULDBLOCK};
		$self->{eof} = 1;
		$self->{reset} = 1;
		return;
	}

	if ($n == 0) {
		$self->{eof} = 1;
		return;
	}

	$self->{in} .= $buf;

	if (!defined $self->{head}) {
		my $end = index($self->{in}, "\r\n\r\n");
		return if $end < 0;
		$self->{head} = substr($self->{in}, 0, $end);
		substr($self->{in}, 0, $end + 4) = '';

		my ($status, @h) = split /\r\n/, $self->{head};
		$self->{status} = $1 if $status =~ /^HTTP\/1\.[01] (\d+)/;
		for (@h) {
			$self->{headers}{lc $1} = $2 if /^([^:]+):\s*(.*)$/;
		}
		$self->{chunked} = ($self->{headers}{'transfer-encoding'} // '')
			=~ /chunked/i;
	}

	if ($self->{chunked}) {
		while ($self->{in} =~ /^([0-9a-fA-F]+)\r\n/) {
			my $size = hex $1;
			my $hl = length($1) + 2;
			if ($size == 0) {
				$self->{last_chunk} = 1;
				$self->{in} = '';
				last;
			}
			last if length($self->{in}) < $hl + $size + 2;
			$self->{body} .= substr($self->{in}, $hl, $size);
			substr($self->{in}, 0, $hl + $size + 2) = '';
		}

	} else {
		$self->{body} .= $self->{in};
		$self->{in} = '';
	}

	take_events($self);
}

# the complete SSE blocks of $self->{body}: events (data parsed as
# JSON), comments, the retry; shared with Civchat::H2, whose streams
# have the same fields

sub take_events {
	my ($self) = @_;

	while ((my $end = index($self->{body}, "\n\n")) >= 0) {
		my $block = substr($self->{body}, 0, $end);
		substr($self->{body}, 0, $end + 2) = '';

		my %e;
		for my $line (split /\n/, $block) {
			if ($line =~ /^:(.*)$/) {
				push @{$self->{comments}}, $1;
				next;
			}
			my ($f, $v) = $line =~ /^([^:]*):? ?(.*)$/;
			if ($f eq 'data') {
				$e{data} = defined $e{data} ? "$e{data}\n$v" : $v;
			} elsif ($f eq 'retry') {
				$self->{retry} = $v;
			} else {
				$e{$f} = $v;
			}
		}

		next unless defined $e{data};
		$e{event} //= 'message';
		$e{raw} = $e{data};
		$e{data} = Civchat::json_decode($e{data}) // { _bad => $e{data} };
		push @{$self->{events}}, \%e;
	}
}

# reads the streams (or Civchat::H2 connections: anything with s, eof and
# feed) until $cond->() holds (1) or $timeout seconds pass (0)

sub pump {
	my ($streams, $timeout, $cond) = @_;

	my $deadline = time() + $timeout;
	my %by = map { fileno($_->{s}) => $_ }
		grep { $_->{s} && !$_->{eof} } @$streams;
	my $sel = IO::Select->new(map { $_->{s} } values %by);

	while (1) {
		return 1 if $cond->();
		my $left = $deadline - time();
		return 0 if $left <= 0;

		if (!$sel->count) {
			Time::HiRes::sleep($left > 0.05 ? 0.05 : $left);
			next;
		}

		for my $fh ($sel->can_read($left > 0.1 ? 0.1 : $left)) {
			my $st = $by{fileno $fh};
			$st->feed();
			$sel->remove($fh) if $st->{eof};
		}
	}
}

1;
