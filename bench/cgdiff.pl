#!/usr/bin/perl
# bench/cgdiff.pl A.self.txt REQUESTS_A B.self.txt REQUESTS_B [TOP]
#
# Self cost per request of every function, A less B, largest first: where
# the instructions that A spends over B go.  The inputs are
# callgrind_annotate outputs (exclusive costs), as bench/profile writes them
# into build/profile/.

use strict;
use warnings;

my ($fa, $na, $fb, $nb, $top) = @ARGV;
die "usage: cgdiff.pl A.self.txt N B.self.txt N [TOP]\n" unless $nb;
$top ||= 30;

sub load {
    my ($file, $n) = @_;
    my %c;
    open my $f, '<', $file or die "$file: $!\n";
    while (<$f>) {
        next unless /^\s*([0-9,]+)\s+(?:\([ 0-9.]+%\)\s+)?(.*?)\s*$/;
        my ($v, $name) = ($1, $2);
        next if $name =~ /PROGRAM TOTALS|libc-start|libc_start_call_main|below main|:main \[|0x000000000001ab70/;
        $v =~ s/,//g;
        $name =~ s{ \[/tmp/[^\]]*/(ngx_http_ratelimit_policy_module\.so)\]$}{ [$1]};
        $c{$name} += $v / $n;
    }
    return \%c;
}

my $ca = load($fa, $na);
my $cb = load($fb, $nb);
my %all = (%$ca, %$cb);
my ($ta, $tb) = (0, 0);
$ta += $_ for values %$ca;
$tb += $_ for values %$cb;

my @rows = map { [ $_, ($ca->{$_} // 0) - ($cb->{$_} // 0) ] } keys %all;
@rows = sort { $b->[1] <=> $a->[1] } @rows;
printf "%9.0f  per request in A, %.0f in B, %+.0f\n", $ta, $tb, $ta - $tb;
my $k = 0;
for my $r (@rows) {
    last if $k++ >= $top || $r->[1] < 5;
    printf "%+9.0f  %s\n", $r->[1], $r->[0];
}
