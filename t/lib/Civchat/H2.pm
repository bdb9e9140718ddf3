package Civchat::H2;

# (C) civchat developers

# A small HTTP/2 client for the tests, in core Perl: cleartext HTTP/2
# with prior knowledge (nginx's "listen ... http2" without ssl), one
# connection carrying many GETs at once, read frame by frame as the
# bytes come (Civchat::Stream::pump reads these connections too).
#
# Each stream (get) records its status, its body cut into SSE events as
# Civchat::Stream does (events, comments, retry), and how it ended:
# "end" once a frame with END_STREAM came (the answer is complete), "rst"
# the error code of a RST_STREAM.  The connection records the error code
# of a GOAWAY ("goaway") and the server closing it ("eof"); it then
# closes its side too, as browsers do, so that nginx's lingering close
# ends at once.
#
# Requests are encoded in HPACK without the dynamic table and without
# Huffman; of an answer's header block only :status is read, which
# nginx writes first, from the static table or as a literal.  The
# windows are made as large as HTTP/2 allows, so no WINDOW_UPDATE is
# ever owed.

use warnings;
use strict;

use IO::Select;
use IO::Socket::INET;
use Socket qw/SHUT_WR/;

use Civchat::Stream;

use constant {
	DATA => 0x0, HEADERS => 0x1, RST_STREAM => 0x3, SETTINGS => 0x4,
	PING => 0x6, GOAWAY => 0x7, WINDOW_UPDATE => 0x8,

	END_STREAM => 0x1, ACK => 0x1, END_HEADERS => 0x4, PADDED => 0x8,
	PRIORITY => 0x20,

	SETTINGS_ENABLE_PUSH => 0x2, SETTINGS_INITIAL_WINDOW_SIZE => 0x4,
	MAX_WINDOW => 0x7fffffff,
};

# :status as nginx writes it: the static table's entries 8 to 14
my %STATUS = (0x88 => 200, 0x89 => 204, 0x8a => 206, 0x8b => 304,
	0x8c => 400, 0x8d => 404, 0x8e => 500);

# a connection to the test's port number n (default 0)

sub new {
	my ($class, $t, %o) = @_;

	my $s = IO::Socket::INET->new(Proto => 'tcp',
		PeerAddr => '127.0.0.1:' . $t->port($o{port} // 0), Timeout => 5)
		or die "h2: connect: $!\n";
	$s->autoflush(1);

	my $self = bless { s => $s, in => '', next_id => 1, streams => {},
		goaway => undef, eof => 0, host => $o{host} // 'localhost' },
		$class;

	$self->_send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
		. _frame(SETTINGS, 0, 0,
			pack('nN', SETTINGS_ENABLE_PUSH, 0)
			. pack('nN', SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW))
		. _frame(WINDOW_UPDATE, 0, 0, pack('N', MAX_WINDOW - 65535)));

	$s->blocking(0);

	return $self;
}

# a GET on a new stream of the connection; headers => [name => value]
# (names in lower case, as HTTP/2 wants them)

sub get {
	my ($self, $path, %o) = @_;

	my $id = $self->{next_id};
	$self->{next_id} += 2;

	# :method GET, :scheme http (indexed); :path and :authority
	# (literals with an indexed name, not indexed)
	my $block = "\x82\x86" . _int(4, 4, 0) . _str($path)
		. _int(1, 4, 0) . _str($self->{host});

	my @h = @{$o{headers} // []};
	while (my ($k, $v) = splice(@h, 0, 2)) {
		$block .= "\x00" . _str(lc $k) . _str($v);
	}

	$self->_send(_frame(HEADERS, END_HEADERS | END_STREAM, $id, $block));

	return $self->{streams}{$id} = bless { id => $id, status => 0,
		body => '', events => [], comments => [], retry => undef,
		end => 0, rst => undef }, 'Civchat::H2::Stream';
}

sub streams {
	my ($self) = @_;
	return map { $self->{streams}{$_} } sort { $a <=> $b }
		keys %{$self->{streams}};
}

sub goaway { $_[0]{goaway} }
sub eof { $_[0]{eof} }

sub close {
	my ($self) = @_;
	CORE::close($self->{s}) if $self->{s};
	$self->{s} = undef;
	$self->{eof} = 1;
}

# the bytes there are: every whole frame in them is taken

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
		# the server closed: so does the client (the descriptor stays
		# open for pump's select until close)
		$self->{eof} = 1;
		shutdown($self->{s}, SHUT_WR);
		return;
	}

	$self->{in} .= $buf;

	while (length $self->{in} >= 9) {
		my ($hi, $lo, $type, $flags, $id) = unpack('CnCCN', $self->{in});
		my $len = ($hi << 16) | $lo;

		last if length $self->{in} < 9 + $len;

		my $payload = substr($self->{in}, 9, $len);
		substr($self->{in}, 0, 9 + $len) = '';

		$self->_frame_in($type, $flags, $id & MAX_WINDOW, $payload);
	}
}

sub _frame_in {
	my ($self, $type, $flags, $id, $payload) = @_;

	if ($type == SETTINGS) {
		$self->_send(_frame(SETTINGS, ACK, 0, '')) unless $flags & ACK;
		return;
	}

	if ($type == PING) {
		$self->_send(_frame(PING, ACK, 0, $payload)) unless $flags & ACK;
		return;
	}

	if ($type == GOAWAY) {
		(undef, $self->{goaway}) = unpack('NN', $payload);
		return;
	}

	my $st = $self->{streams}{$id} or return;

	if ($type == RST_STREAM) {
		$st->{rst} = unpack('N', $payload);
		return;
	}

	return unless $type == HEADERS || $type == DATA;

	if ($flags & PADDED) {
		my $pad = ord($payload);
		$payload = substr($payload, 1, length($payload) - 1 - $pad);
	}

	if ($type == HEADERS) {
		$payload = substr($payload, 5) if $flags & PRIORITY;
		$st->{status} = _status($payload) unless $st->{status};

	} else {
		$st->{body} .= $payload;
		Civchat::Stream::take_events($st);
	}

	$st->{end} = 1 if $flags & END_STREAM;
}

# :status from the start of a header block: indexed, or a literal with
# the indexed name :status (incremental indexing or not)
sub _status {
	my ($block) = @_;

	my $first = ord($block);
	return $STATUS{$first} if $STATUS{$first};

	return $1 if $block =~ /^[\x48\x08]\x03(\d{3})/;
	return -1;
}

sub _send {
	my ($self, $bytes) = @_;

	my $sel = IO::Select->new($self->{s});

	while (length $bytes) {
		my $n = syswrite($self->{s}, $bytes);

		if (!defined $n) {
			die "h2: write: $!\n" unless $!{EAGAIN} || $!{EWOULDBLOCK};
			$sel->can_write(1);
			next;
		}

		substr($bytes, 0, $n) = '';
	}
}

sub _frame {
	my ($type, $flags, $id, $payload) = @_;
	my $len = length $payload;
	return pack('CnCCN', $len >> 16, $len & 0xffff, $type, $flags, $id)
		. $payload;
}

# an HPACK integer with an n-bit prefix, the flags in the bits above it
sub _int {
	my ($v, $bits, $flags) = @_;

	my $max = (1 << $bits) - 1;
	return chr($flags | $v) if $v < $max;

	my $s = chr($flags | $max);
	$v -= $max;

	while ($v >= 128) {
		$s .= chr(($v & 127) | 128);
		$v >>= 7;
	}

	return $s . chr($v);
}

# an HPACK string literal, not Huffman-coded
sub _str {
	my ($s) = @_;
	utf8::encode($s) if utf8::is_utf8($s);
	return _int(length $s, 7, 0) . $s;
}

package Civchat::H2::Stream;

sub status { $_[0]{status} }
sub events { $_[0]{events} }
sub retry { $_[0]{retry} }

# ended as an answer should: END_STREAM, no RST_STREAM
sub ended { $_[0]{end} && !defined $_[0]{rst} }

# ended at all
sub done { $_[0]{end} || defined $_[0]{rst} }

1;
