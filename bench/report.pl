#!/usr/bin/perl
# bench/report.pl RAW OUT [key=value ...]: the figures of bench/run.
#
# RAW has one measurement a line, tab-separated: kind, name, round, value
#   thr   <name> <round> <req/s or tps>
#   p99   <name> <round> <microseconds>
#   zone  used_bytes|entries 0 <n>
#   note  <figure> <name> <value>     (diagnostics kept with the figure)
# Writes OUT (JSON: one entry per figure, and "meta" from the key=value
# arguments), prints a table, exits 2 when a goal is missed.
#
# bench/report.pl --markdown [bench/results.json]: the table of README.md's
# Performance section, from a results file.

use strict;
use warnings;
use JSON::PP;

if (@ARGV && $ARGV[0] eq '--markdown') {
    markdown($ARGV[1] // 'bench/results.json');
    exit 0;
}

my ($raw, $out, @meta) = @ARGV;
die "usage: report.pl RAW OUT [key=value ...]\n"
    . "       report.pl --markdown [results.json]\n" unless $raw && $out;

my (%m, %notes);
open my $fh, '<', $raw or die "$raw: $!\n";
while (<$fh>) {
    chomp;
    my ($kind, $name, $round, $value) = split /\t/;
    next unless defined $value;
    if ($kind eq 'note') {
        $notes{$name}{$round} = $value =~ /^-?[0-9.]+$/ ? $value + 0 : $value;
    } else {
        push @{ $m{$name} }, $value + 0;
    }
}
close $fh;

sub median {
    my @v = sort { $a <=> $b } @_;
    return undef unless @v;
    return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}
sub r3 { defined $_[0] ? 0 + sprintf('%.3f', $_[0]) : undef }
sub r1 { defined $_[0] ? 0 + sprintf('%.1f', $_[0]) : undef }

my @figures = (
    [ 'enforce_vs_plain', 'enforce', 'plain', '>=', 0.95, 'req/s', 'req/s',
      'enforced proxy_pass, 10,000 instances (unlimited policy, warm zone)',
      'the same proxy_pass without the module' ],
    [ 'enforce_vs_limit_req', 'enforce', 'limit_req', '>=', 0.97, 'req/s',
      'req/s', 'enforced proxy_pass (as above)',
      'limit_req (rate=1000000r/s, keyed by instance) on the same proxy_pass' ],
    [ 'get_cached_vs_static', 'get_cached', 'static', '>=', 0.80, 'req/s',
      'req/s', 'GET /v2/session/rate-limit, cached, 10,000 instances',
      'return 200 of the same bytes' ],
    [ 'get_uncached_vs_pgbench', 'get_uncached', 'pgb_lookup', '>=', 0.70,
      'req/s', 'tps', 'GET /v2/session/rate-limit, every request a cache miss',
      'pgbench -M prepared running the module\'s lookup statement' ],
    [ 'patch_vs_pgbench', 'patch', 'pgb_set', '>=', 0.70, 'req/s', 'tps',
      'PATCH /v2/session/rate-limit, every one a change of policy',
      'pgbench -M prepared running SELECT ratelimit.set_instance_policy($1, $2)' ],
    [ 'zone_bytes_per_instance', 'used_bytes', 'entries', '<=', 1024, 'bytes',
      'entries', 'zone_used_bytes with 100,000 instances cached and counted',
      'zone_entries' ],
    [ 'canary_p99_ratio', 'canary_stopped', 'canary_rest', '<=', 2, 'us', 'us',
      'p99 of a return 200 location, PostgreSQL SIGSTOPped, misses piling up',
      'its p99 at rest' ],
);

my %meta = map { /^([^=]+)=(.*)$/ ? ($1, $2) : () } @meta;
my $res = {};
my $missed = 0;
my @rows;

for my $f (@figures) {
    my ($key, $an, $bn, $op, $goal, $ua, $ub, $adesc, $bdesc) = @$f;
    my @a = @{ $m{$an} || [] };
    my @b = @{ $m{$bn} || [] };
    next unless @a && @b;

    my ($ma, $mb) = (median(@a), median(@b));
    my $ratio = $mb ? $ma / $mb : undef;
    my @rr;
    for my $i (0 .. ($#a < $#b ? $#a : $#b)) {
        push @rr, $b[$i] ? $a[$i] / $b[$i] : 0;
    }
    my $met = defined $ratio
              && ($op eq '>=' ? $ratio >= $goal : $ratio <= $goal);
    $missed++ unless $met;

    my $e = {
        A => r1($ma), B => r1($mb),
        ratio => $key eq 'zone_bytes_per_instance' ? r1($ratio) : r3($ratio),
        goal => "$op $goal",
        met => $met ? JSON::PP::true : JSON::PP::false,
        rounds => scalar(@a),
        spread => {
            A => [ r1((sort { $a <=> $b } @a)[0]), r1((sort { $a <=> $b } @a)[-1]) ],
            B => [ r1((sort { $a <=> $b } @b)[0]), r1((sort { $a <=> $b } @b)[-1]) ],
            ratio => [ r3((sort { $a <=> $b } @rr)[0]),
                       r3((sort { $a <=> $b } @rr)[-1]) ],
        },
        # the median of the ratios of rounds run side by side
        ratio_paired_median => r3(median(@rr)),
        A_rounds => [ map { r1($_) } @a ],
        B_rounds => [ map { r1($_) } @b ],
        units => { A => $ua, B => $ub,
                   ratio => $key eq 'zone_bytes_per_instance'
                            ? 'bytes per entry' : 'A/B' },
        A_is => $adesc,
        B_is => $bdesc,
    };
    # diagnostics: of A's runs, of B's runs, of the figure
    my %n;
    $n{A} = $notes{$an} if $notes{$an};
    $n{B} = $notes{$bn} if $notes{$bn};
    %n = (%n, %{ $notes{$key} }) if $notes{$key};
    $e->{notes} = \%n if %n;
    $res->{$key} = $e;
    push @rows, [ $key, $e ];
}

# a control: nginx's own shared-memory limiter against plain proxy_pass,
# in the same rounds, shows what any such module pays on this machine
if ($res->{enforce_vs_plain} && @{ $m{limit_req} || [] }) {
    my @l = @{ $m{limit_req} };
    my @p = @{ $m{plain} };
    my @rr = map { $p[$_] ? $l[$_] / $p[$_] : 0 }
             0 .. ($#l < $#p ? $#l : $#p);
    $res->{enforce_vs_plain}{notes}{control_limit_req_vs_plain} = {
        ratio => r3(median(@l) / median(@p)),
        ratio_paired_median => r3(median(@rr)),
    };
}

# what else ran meanwhile, per phase (see noise_end in bench/lib.sh)
$meta{other_cpu} = {
    map { (my $k = $_) =~ s/^other_cpu_//; ($k => $notes{meta}{$_}) }
    grep { /^other_cpu_/ } keys %{ $notes{meta} || {} }
};
$res->{meta} = \%meta;

open my $o, '>', $out or die "$out: $!\n";
print $o JSON::PP->new->canonical->pretty->encode($res);
close $o;

# the table
printf "\n%-24s %12s %12s %9s %8s %-17s %s\n", 'figure', 'A', 'B',
       'A/B', 'goal', 'ratio min-max', '';
for my $row (@rows) {
    my ($key, $e) = @$row;
    my $fmt = $key eq 'zone_bytes_per_instance' ? '%.1f' : '%.3f';
    printf "%-24s %12s %12s %9s %8s %-17s %s\n", $key,
           "$e->{A}", "$e->{B}", sprintf($fmt, $e->{ratio}), $e->{goal},
           sprintf("$fmt-$fmt", @{ $e->{spread}{ratio} }),
           $e->{met} ? 'met' : 'MISSED';
}
printf "\nunits: throughput A and B in req/s (pgbench: tps), zone in bytes "
       . "and entries, canary in microseconds; %s rounds of %ss, %s\n",
       $meta{rounds} // '?', $meta{duration_s} // '?', $out;
printf "machine: %s x %s, %s, shmem huge pages %s; load average %s at the "
       . "start, %s at the end\n",
       $meta{nproc} // '?', $meta{cpu} // '?', $meta{memory} // '?',
       $meta{shmem_thp} // '?', $meta{loadavg_start} // '?',
       $meta{loadavg_end} // '?';

my $c = $res->{enforce_vs_plain} && $res->{enforce_vs_plain}{notes}
        && $res->{enforce_vs_plain}{notes}{control_limit_req_vs_plain};
printf "control: limit_req / plain proxy_pass in the same rounds %.3f "
       . "(paired median %.3f)\n", $c->{ratio}, $c->{ratio_paired_median}
    if $c;

my $f = $meta{other_cpu};
printf "other processes' share of the CPUs during each phase: %s\n",
       join('; ', map { "$_ $f->{$_}" } sort keys %$f) if %$f;

exit($missed ? 2 : 0);


sub markdown {
    my ($file) = @_;
    open my $f, '<', $file or die "$file: $!\n";
    local $/;
    my $r = decode_json(<$f>);
    my @keys = qw(enforce_vs_plain enforce_vs_limit_req get_cached_vs_static
                  get_uncached_vs_pgbench patch_vs_pgbench
                  zone_bytes_per_instance canary_p99_ratio);
    print "| figure | A | B | A/B | per-round A/B | goal | |\n";
    print "|---|---:|---:|---:|---|---|---|\n";
    for my $k (@keys) {
        my $e = $r->{$k} or next;
        my $fmt = $k eq 'zone_bytes_per_instance' ? '%.1f' : '%.3f';
        printf "| `%s` | %s %s | %s %s | **$fmt** | $fmt–$fmt | %s | %s |\n",
            $k, $e->{A}, $e->{units}{A}, $e->{B}, $e->{units}{B},
            $e->{ratio}, @{ $e->{spread}{ratio} }, $e->{goal},
            $e->{met} ? 'met' : '**missed**';
    }
}
