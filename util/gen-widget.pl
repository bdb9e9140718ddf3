#!/usr/bin/perl
# Minifies widget/widget.js with esbuild (Debian's esbuild package) into
# widget/widget.min.js and its source map widget/widget.min.js.map, and
# turns the minified script into src/ngx_http_civchat_widget_js.h, the
# bytes the module serves.  The single "%%CIVCHAT_BASE%%" in the script is
# where the module writes the endpoint base of the location serving it.
#
#   perl util/gen-widget.pl [widget.js [header.h [widget.min.js]]]
#
# The three outputs are committed; t/browser.t checks that they are what
# this script makes from widget/widget.js now.  The map names its source
# "widget.js" (beside it) and does not carry the source's text.

use strict;
use warnings;

use MIME::Base64 qw/decode_base64/;

my ($in, $out, $min) = @ARGV;
$in  //= 'widget/widget.js';
$out //= 'src/ngx_http_civchat_widget_js.h';
$min //= 'widget/widget.min.js';

my $esbuild = $ENV{ESBUILD} // 'esbuild';

open(my $fh, '<:raw', $in) or die "gen-widget: $in: $!\n";
my $src = do { local $/; <$fh> };
close $fh;

# ES5 in, ES5 out (esbuild refuses newer syntax with this target), ASCII
# only; the map comes inline on stdout and is split off below, so that
# neither file depends on where this runs

my $pid = open(my $es, '-|') // die "gen-widget: fork: $!\n";

if ($pid == 0) {
	open(STDIN, '<', $in) or die "gen-widget: $in: $!\n";
	exec($esbuild, '--minify', '--target=es5', '--sourcemap=inline',
		'--sources-content=false', '--sourcefile=widget.js',
		'--legal-comments=none', '--log-level=warning')
		or die "gen-widget: cannot run $esbuild ($!): install Debian's "
			. "esbuild package (make deps)\n";
}

my $js = do { local $/; <$es> };
close $es or die "gen-widget: $esbuild failed on $in\n";

$js =~ s{//# sourceMappingURL=data:application/json;base64,(\S+)\n\z}{}
	or die "gen-widget: no inline source map in esbuild's output\n";
my $map = decode_base64($1);

# the map is JSON text from esbuild; only "file" is added
$map =~ s/^\{/{\n  "file": "widget.min.js",/
	or die "gen-widget: unexpected source map\n";

my $mark = '%%CIVCHAT_BASE%%';
my $at = index($js, $mark);

die "gen-widget: $in has no $mark (or the minifier changed it)\n"
	if $at < 0;
die "gen-widget: $mark is more than once in the minified script\n"
	if index($js, $mark, $at + 1) >= 0;
die "gen-widget: the minified script is not ASCII\n"
	if $js =~ /[^\x00-\x7f]/;

# a short content hash for the ETag (FNV-1a, 32 bits, twice with seeds)
my ($h1, $h2) = (0x811c9dc5, 0x01000193 ^ 0x5bd1e995);
for my $c (unpack('C*', $js)) {
	$h1 = (($h1 ^ $c) * 0x01000193) & 0xffffffff;
	$h2 = (($h2 ^ $c) * 0x01000193) & 0xffffffff;
}
my $etag = sprintf('%08x%08x', $h1, $h2);

my @bytes = unpack('C*', $js);
my $body = '';
while (my @line = splice(@bytes, 0, 12)) {
	$body .= '    ' . join(', ', map { sprintf('0x%02x', $_) } @line) . ",\n";
}

sub put {
	my ($path, $text) = @_;
	my $tmp = "$path.tmp";
	open(my $oh, '>:raw', $tmp) or die "gen-widget: $tmp: $!\n";
	print $oh $text;
	close $oh or die "gen-widget: $tmp: $!\n";
	rename($tmp, $path) or die "gen-widget: $path: $!\n";
}

put($min, $js);
put("$min.map", $map);

put($out, <<"END");

/*
 * AUTO-GENERATED from widget/widget.js by util/gen-widget.pl, DO NOT EDIT:
 * widget/widget.min.js, esbuild's minified script.
 */


#ifndef _NGX_HTTP_CIVCHAT_WIDGET_JS_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_WIDGET_JS_H_INCLUDED_


#define NGX_HTTP_CIVCHAT_WIDGET_BASE_AT    $at
#define NGX_HTTP_CIVCHAT_WIDGET_BASE_LEN   @{[length $mark]}
#define NGX_HTTP_CIVCHAT_WIDGET_HASH       "$etag"


static u_char  ngx_http_civchat_widget_js[] = {
$body};


#endif /* _NGX_HTTP_CIVCHAT_WIDGET_JS_H_INCLUDED_ */
END
