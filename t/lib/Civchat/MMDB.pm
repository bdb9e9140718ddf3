package Civchat::MMDB;

# (C) civchat developers

# MaxMind DB fixtures for the tests, made at test time with Debian's
# libmaxmind-db-writer-perl (MaxMind::DB::Writer::Tree): a City-like
# layout (country.iso_code, subdivisions[0].iso_code, city.names.en,
# location.time_zone) and a Country-like layout (country.iso_code only),
# IPv6 trees with IPv4 aliased into ::ffff:0:0/96 (and the ::/96 IPv4
# subtree libmaxminddb uses), or plain IPv4 trees.
#
#   use Civchat::MMDB qw/mmdb_build mmdb_write/;
#
#   my $bytes = mmdb_build(layout => 'city', networks => [
#       '81.2.69.0/24' => { country => 'GB', region => 'ENG',
#                           city => 'London', tz => 'Europe/London' },
#       '2001:db8:1234::/48' => { country => 'DE' },
#       ...]);
#   mmdb_write($path, layout => ..., networks => [...]);
#
# Options: layout ('city' or 'country', default 'city'), networks (pairs
# of network => geo hash: country, region, city, tz, and optionally
# country_name, city_de, lat, lon; any may be left out), ip_version
# (6 or 4, default 6), record_size (24, 28 or 32; default 28 for city, 24
# for country), filler (a number of extra /24 networks in 100.64.0.0/10
# with their own cities, to make the file larger), description.
#
# Also: random bytes of a length (no metadata: a corrupt file), a
# replacement by rename, and an in-place rewrite of an existing file in
# chunks.  Reserved networks (2001:db8::/32, 203.0.113.0/24, ...) are
# kept, so that the tests can use documentation addresses.

###############################################################################

use warnings;
use strict;

use Exporter qw/import/;
use Fcntl qw/SEEK_SET/;
use IO::Handle;
use Time::HiRes qw/sleep/;

use MaxMind::DB::Writer::Tree;

our @EXPORT_OK = qw/mmdb_build mmdb_write mmdb_random mmdb_rewrite_in_place
	mmdb_replace_by_rename/;

###############################################################################

my %TYPES = (
	country => 'map',
	iso_code => 'utf8_string',
	geoname_id => 'uint32',
	subdivisions => ['array', 'map'],
	city => 'map',
	names => 'map',
	en => 'utf8_string',
	de => 'utf8_string',
	location => 'map',
	time_zone => 'utf8_string',
	latitude => 'double',
	longitude => 'double',
	continent => 'map',
	code => 'utf8_string',
);

sub _record {
	my ($layout, $geo) = @_;

	my %r;

	if (defined $geo->{country}) {
		$r{country} = { iso_code => $geo->{country} };
		$r{country}{names} = { en => $geo->{country_name} }
			if defined $geo->{country_name};
	}

	return \%r if $layout eq 'country';

	$r{subdivisions} = [ { iso_code => $geo->{region} } ]
		if defined $geo->{region};
	$r{city} = { names => { en => $geo->{city},
		(defined $geo->{city_de} ? (de => $geo->{city_de}) : ()) } }
		if defined $geo->{city};

	if (defined $geo->{tz}) {
		$r{location} = { time_zone => $geo->{tz},
			latitude => 0 + ($geo->{lat} // 51.5),
			longitude => 0 + ($geo->{lon} // -0.1) };
	}

	return \%r;
}

sub mmdb_build {
	my (%o) = @_;

	my $layout = $o{layout} // 'city';
	my $ipv = $o{ip_version} // 6;
	my $rs = $o{record_size} // ($layout eq 'country' ? 24 : 28);

	my $tree = MaxMind::DB::Writer::Tree->new(
		ip_version => $ipv,
		record_size => $rs,
		database_type => $layout eq 'country'
			? 'Civchat-Test-Country' : 'Civchat-Test-City',
		languages => ['en'],
		description => { en => $o{description}
			// "civchat test $layout database" },
		map_key_type_callback => sub {
			my $t = $TYPES{$_[0]};
			die "Civchat::MMDB: no type for key $_[0]\n" unless $t;
			return $t;
		},
		alias_ipv6_to_ipv4 => $ipv == 6 ? 1 : 0,
		remove_reserved_networks => 0,
	);

	my @n = @{$o{networks} // []};

	while (my ($net, $geo) = splice(@n, 0, 2)) {
		$tree->insert_network($net, _record($layout, $geo));
	}

	for my $i (0 .. ($o{filler} // 0) - 1) {
		my $net = sprintf('100.%d.%d.0/24', 64 + int($i / 256) % 64,
			$i % 256);
		$tree->insert_network($net, _record($layout, {
			country => 'ZZ', region => "R$i", city => "Filler $i",
			tz => 'Etc/UTC' }));
	}

	my $bytes = '';
	open(my $fh, '>:raw', \$bytes) or die "mmdb_build: $!\n";
	$tree->write_tree($fh);
	close $fh;

	return $bytes;
}

# writes a database to a new file (not over an existing one: see
# mmdb_replace_by_rename and mmdb_rewrite_in_place)
sub mmdb_write {
	my ($path, %o) = @_;
	_put($path, $o{bytes} // mmdb_build(%o));
	return $path;
}

sub _put {
	my ($path, $bytes) = @_;
	open(my $fh, '>:raw', $path) or die "write $path: $!\n";
	print $fh $bytes or die "write $path: $!\n";
	close $fh or die "close $path: $!\n";
}

# $n random bytes (no "MaxMind.com" marker, so no metadata)
sub mmdb_random {
	my ($n) = @_;
	my $s = '';
	$s .= pack('N', int(rand(2**32))) while length $s < $n;
	$s = substr($s, 0, $n);
	$s =~ s/\xab\xcd\xefMaxMind\.com/XXXXXXXXXXXXXX/g;
	return $s;
}

# write to a temporary name beside $path, then rename over it
sub mmdb_replace_by_rename {
	my ($path, $bytes) = @_;
	my $tmp = "$path.tmp.$$";
	_put($tmp, $bytes);
	rename($tmp, $path) or die "rename $tmp $path: $!\n";
}

# opens the existing file for writing (same inode), truncates it unless
# notrunc => 1, and writes $bytes in chunks of chunk bytes (default 4k)
# with a sleep of pause seconds (default 0.02) after each one
sub mmdb_rewrite_in_place {
	my ($path, $bytes, %o) = @_;

	my $chunk = $o{chunk} // 4096;
	my $pause = $o{pause} // 0.02;

	open(my $fh, '+<:raw', $path) or die "open $path: $!\n";
	$fh->autoflush(1);

	unless ($o{notrunc}) {
		truncate($fh, 0) or die "truncate $path: $!\n";
	}

	seek($fh, 0, SEEK_SET);

	for (my $i = 0; $i < length $bytes; $i += $chunk) {
		print $fh substr($bytes, $i, $chunk) or die "write $path: $!\n";
		sleep $pause if $pause;
	}

	truncate($fh, length $bytes) if $o{notrunc};
	close $fh or die "close $path: $!\n";
}

1;

###############################################################################
