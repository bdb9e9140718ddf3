#!/usr/bin/perl

# The module's files call each other in one direction only: prints the
# calls between src/*.c files as a graph, and every cycle in it (a
# group of files each of which, through the others, calls itself), and
# the same for #include among src/*.h.  Exits 1 on a cycle.
#
#   perl util/layers.pl [-v]     (-v: the graph, file -> files it calls)
#
# t/style.t runs it.

use warnings;
use strict;

use FindBin;

my $src = "$FindBin::Bin/../src";
my $verbose = @ARGV && $ARGV[0] eq '-v';

opendir(my $d, $src) or die "$src: $!\n";
my @c = sort grep { /^ngx_http_civchat.*\.c$/ } readdir $d;
closedir $d;

my (%text, %defined_in);

for my $f (@c) {
	open(my $fh, '<', "$src/$f") or die "$f: $!\n";
	local $/;
	my $t = <$fh>;
	close $fh;

	# comments and strings are no calls
	$t =~ s{/\*.*?\*/}{ }gs;
	$t =~ s{"(?:\\.|[^"\\])*"}{""}g;
	$text{$f} = $t;

	# a definition: the name at the start of a line, then "("
	while ($t =~ /^(ngx_http_civchat_\w+)\(/mg) {
		$defined_in{$1} //= $f;
	}
}

my %calls;

for my $f (@c) {
	while ($text{$f} =~ /\b(ngx_http_civchat_\w+)\s*\(/g) {
		my $g = $defined_in{$1};
		next unless defined $g && $g ne $f;
		$calls{$f}{$g}{$1} = 1;
	}
}

if ($verbose) {
	for my $f (@c) {
		printf "%-34s -> %s\n", $f, join(' ', sort keys %{$calls{$f} // {}});
	}
}

my $bad = 0;

for my $scc (components(\@c, sub { keys %{$calls{$_[0]} // {}} })) {
	next unless @$scc > 1;
	$bad++;
	print "call cycle: ", join(' ', sort @$scc), "\n";
	for my $f (sort @$scc) {
		for my $g (sort keys %{$calls{$f}}) {
			next unless grep { $_ eq $g } @$scc;
			print "    $f -> $g: ",
				join(' ', sort keys %{$calls{$f}{$g}}), "\n";
		}
	}
}

# includes among the module's own headers

opendir($d, $src) or die "$src: $!\n";
my @h = sort grep { /\.h$/ } readdir $d;
closedir $d;

my %inc;

for my $f (@h, @c) {
	open(my $fh, '<', "$src/$f") or die "$f: $!\n";
	while (<$fh>) {
		$inc{$f}{$1} = 1 if /^#include\s+"([^"]+)"/;
	}
	close $fh;
}

for my $scc (components([ @h, @c ], sub { keys %{$inc{$_[0]} // {}} })) {
	next unless @$scc > 1 || $inc{$scc->[0]}{$scc->[0]};
	$bad++;
	print "include cycle: ", join(' ', sort @$scc), "\n";
}

exit($bad ? 1 : 0);

# Tarjan's strongly connected components
sub components {
	my ($nodes, $edges) = @_;
	my ($i, %index, %low, %on, @stack, @out) = (0);

	my $visit;
	$visit = sub {
		my ($v) = @_;
		$index{$v} = $low{$v} = $i++;
		push @stack, $v;
		$on{$v} = 1;

		for my $w ($edges->($v)) {
			if (!defined $index{$w}) {
				$visit->($w);
				$low{$v} = $low{$w} if $low{$w} < $low{$v};
			} elsif ($on{$w}) {
				$low{$v} = $index{$w} if $index{$w} < $low{$v};
			}
		}

		if ($low{$v} == $index{$v}) {
			my @scc;
			my $w;
			do {
				$w = pop @stack;
				$on{$w} = 0;
				push @scc, $w;
			} while ($w ne $v);
			push @out, \@scc;
		}
	};

	for my $v (@$nodes) {
		$visit->($v) unless defined $index{$v};
	}

	return @out;
}
