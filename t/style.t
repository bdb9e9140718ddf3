#!/usr/bin/perl

# (C) civchat developers

# Tests for the C style of src/*.c and src/*.h (the generated *_js.h
# aside), after nginx's: no line over 80 columns, no tabs, no trailing
# spaces, no "//" comments, a newline at the end of the file; and for
# the shape of the module: no source file over 1,200 lines, and no
# cycle of calls between the files or of #include among the headers
# (util/layers.pl).  Needs no nginx.

###############################################################################

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';

select STDERR; $| = 1;
select STDOUT; $| = 1;

###############################################################################

my $src = "$FindBin::Bin/../src";
my @files = grep { !/_js\.h$/ } sort glob("$src/*.c $src/*.h");

plan(skip_all => 'no sources in src/') unless @files;

for my $path (@files) {
	(my $name = $path) =~ s{.*/}{};

	open(my $fh, '<:raw', $path) or die "$path: $!";
	my $text = do { local $/; <$fh> };
	close $fh;

	my (@long, @tabs, @trailing, @slashes, @cr);
	my $n = 0;

	for my $line (split /\n/, $text, -1) {
		$n++;
		push @cr, $n if $line =~ /\r/;
		push @tabs, $n if $line =~ /\t/;
		push @trailing, $n if $line =~ /[ \t]$/;

		# columns, counting a UTF-8 sequence as one
		(my $chars = $line) =~ s/[\xc0-\xff][\x80-\xbf]*/x/g;
		push @long, $n if length($chars) > 80;

		# "//" outside string and character literals and block comments
		push @slashes, $n if _has_line_comment($line);
	}

	is(join(',', @long), '', "$name: no line over 80 columns");
	is(join(',', @tabs), '', "$name: no tabs");
	is(join(',', @trailing), '', "$name: no trailing spaces");
	is(join(',', @slashes), '', "$name: no // comments");
	is(join(',', @cr), '', "$name: no carriage returns");
	ok($text eq '' || substr($text, -1) eq "\n", "$name: ends with a newline");
}

# the shape: small files, calls in one direction

for my $path (grep { /\.c$/ } @files) {
	(my $name = $path) =~ s{.*/}{};
	open(my $fh, '<', $path) or die "$path: $!";
	my $lines = () = <$fh>;
	close $fh;
	cmp_ok($lines, '<=', 1200, "$name: at most 1,200 lines");
}

my $layers = `perl $FindBin::Bin/../util/layers.pl 2>&1`;
is($?, 0, 'no cycle of calls between the files, or of includes')
	or diag($layers);

done_testing();

###############################################################################

my $in_block = 0;

sub _has_line_comment {
	my ($line) = @_;

	my $i = 0;
	my $len = length $line;

	while ($i < $len) {
		my $c = substr($line, $i, 1);
		my $two = substr($line, $i, 2);

		if ($in_block) {
			if ($two eq '*/') {
				$in_block = 0;
				$i += 2;
				next;
			}
			$i++;
			next;
		}

		if ($two eq '/*') {
			$in_block = 1;
			$i += 2;
			next;
		}

		return 1 if $two eq '//';

		if ($c eq '"' || $c eq "'") {
			$i++;
			while ($i < $len) {
				my $d = substr($line, $i, 1);
				if ($d eq '\\') {
					$i += 2;
					next;
				}
				$i++;
				last if $d eq $c;
			}
			next;
		}

		$i++;
	}

	return 0;
}

###############################################################################
