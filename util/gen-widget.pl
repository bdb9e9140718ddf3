#!/usr/bin/perl
# Turns widget/widget.js into src/ngx_http_civchat_widget_js.h, the bytes
# the module serves.  The single "%%CIVCHAT_BASE%%" in the script is where
# the module writes the endpoint base URL of the location serving it.

use strict;
use warnings;

my ($in, $out) = @ARGV;
$in  //= 'widget/widget.js';
$out //= 'src/ngx_http_civchat_widget_js.h';

open(my $fh, '<:raw', $in) or die "gen-widget: $in: $!\n";
my $js = do { local $/; <$fh> };
close $fh;

my $mark = '%%CIVCHAT_BASE%%';
my $at = index($js, $mark);

die "gen-widget: $in has no $mark\n" if $at < 0;
die "gen-widget: $in has $mark more than once\n"
    if index($js, $mark, $at + 1) >= 0;

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

my $tmp = "$out.tmp";
open(my $oh, '>', $tmp) or die "gen-widget: $tmp: $!\n";
print $oh <<"END";

/*
 * AUTO-GENERATED from widget/widget.js by util/gen-widget.pl, DO NOT EDIT.
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
close $oh or die "gen-widget: $tmp: $!\n";
rename($tmp, $out) or die "gen-widget: $out: $!\n";
