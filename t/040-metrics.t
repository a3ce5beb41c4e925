# ratelimit_policy_metrics: the Prometheus text exposition format 0.0.4.
#
# Every scrape is parsed whole by parse_exposition() below, a strict parser
# of the text format written from its specification: every line is
# "# HELP name text", "# TYPE name type" or a sample
# "name{label="value",...} value"; names, label names, label value escapes
# and float values are checked; a family's TYPE comes before its samples
# and its samples form one group; no series appears twice; counters end in
# _total and are not negative; histograms have increasing "le" bounds,
# cumulative buckets, a +Inf bucket equal to _count, and a _sum.  On top
# of the format, every family documented in README.md must be there, and
# nothing else.
#
# Then the counters must move as the traffic says: the blocks send API
# requests from --- init (t/lib/RLPHelpers.pm) between scrapes and compare
# the scrapes.

use lib 't/lib';
use RLP;
use RLPHelpers;

repeat_each(1);

# runner checks (see each block) + the Test::More checks made in --- init
# parser self-test 7; TEST 1: 24 + 4; TEST 2: 9; TEST 3: 3 + 2;
# TEST 4: 5 + 1; TEST 5: 6 + 1; TEST 6 and 7: 2 each; TEST 8: 10 + 1
plan tests => 7 + 28 + 9 + 5 + 6 + 7 + 2 + 2 + 11;

# every family, with its type, as README.md lists them
our %Families = (
    api_requests_total            => 'counter',
    cache_hits_total              => 'counter',
    cache_misses_total            => 'counter',
    cache_negative_hits_total     => 'counter',
    cache_stale_total             => 'counter',
    token_probes_refused_total    => 'counter',
    db_queries_total              => 'counter',
    db_errors_total               => 'counter',
    db_timeouts_total             => 'counter',
    db_query_duration_seconds     => 'histogram',
    db_pool_size                  => 'gauge',
    db_wait_queue_length          => 'gauge',
    listener_up                   => 'gauge',
    notifications_total           => 'counter',
    enforced_requests_total       => 'counter',
    rejections_total              => 'counter',
    usage_sync_batches_total      => 'counter',
    usage_sync_rows_total         => 'counter',
    usage_sync_lag_seconds        => 'gauge',
    zone_size_bytes               => 'gauge',
    zone_used_bytes               => 'gauge',
    zone_free_bytes               => 'gauge',
    zone_entries                  => 'gauge',
    zone_evictions_total          => 'counter',
);

our $Prefix = 'nginx_ratelimit_policy_';

my $NAME  = qr/[a-zA-Z_:][a-zA-Z0-9_:]*/;
my $LNAME = qr/[a-zA-Z_][a-zA-Z0-9_]*/;
my $FLOAT = qr/(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?
                 |[+-]?Inf|NaN)/x;

sub _num {
    my $v = shift;
    return 9**9**9 if $v =~ /^\+?Inf$/;
    return -9**9**9 if $v eq '-Inf';
    return $v + 0;
}

sub _key {
    my ($name, $labels) = @_;
    return $name unless %$labels;
    return "$name\{"
           . join(',', map { "$_=\"$labels->{$_}\"" } sort keys %$labels)
           . '}';
}

# Returns (\@errors, \%samples): samples keyed by name{sorted labels}.
sub parse_exposition {
    my $text = shift;
    my (@err, %help, %type, %samples, %seen_family, %hist);
    my $cur = '';

    push @err, 'the exposition does not end with a newline'
        unless $text =~ /\n\z/;
    (my $body = $text) =~ s/\n\z//;

    my $n = 0;
    for my $line (split /\n/, $body, -1) {
        $n++;
        my $at = "line $n \"$line\"";

        if ($line eq '') {
            push @err, "$at: empty line";
            next;
        }

        if ($line =~ /^#/) {
            my ($kind, $name, $rest);
            if ($line =~ /^# (HELP) ($NAME) (.*)$/
                || $line =~ /^# (TYPE) ($NAME) (\S+)$/)
            {
                ($kind, $name, $rest) = ($1, $2, $3);
            } else {
                push @err, "$at: a comment that is neither HELP nor TYPE";
                next;
            }

            if ($name ne $cur) {
                push @err, "$at: family $name appears in two groups"
                    if $seen_family{$name}++;
                $cur = $name;
            }

            if ($kind eq 'HELP') {
                push @err, "$at: second HELP for $name" if $help{$name}++;
                push @err, "$at: bad escape in the docstring"
                    if $rest =~ /\\(?![\\n])/;
                push @err, "$at: empty docstring" if $rest eq '';
                push @err, "$at: HELP after TYPE" if $type{$name};
            } else {
                push @err, "$at: second TYPE for $name" if $type{$name};
                push @err, "$at: unknown type $rest"
                    unless $rest =~ /^(?:counter|gauge|histogram|summary
                                        |untyped)$/x;
                push @err, "$at: TYPE after samples of $name"
                    if grep { /^\Q$name\E(?:_bucket|_sum|_count)?(?:\{|$)/ }
                       keys %samples;
                $type{$name} = $rest;
            }
            next;
        }

        # a sample

        my $s = $line;
        my %labels;

        unless ($s =~ s/^($NAME)//) {
            push @err, "$at: no metric name";
            next;
        }
        my $name = $1;
        my $ok = 1;

        if ($s =~ s/^\{//) {
            while ($ok && $s !~ s/^\}//) {
                unless ($s =~ s/^($LNAME)="//) {
                    push @err, "$at: bad label name";
                    $ok = 0;
                    last;
                }
                my $l = $1;
                push @err, "$at: reserved label name $l" if $l =~ /^__/;
                unless ($s =~ s/^((?:[^"\\\n]|\\[\\"n])*)"//) {
                    push @err, "$at: bad label value of $l";
                    $ok = 0;
                    last;
                }
                (my $v = $1) =~ s/\\(.)/$1 eq 'n' ? "\n" : $1/ge;
                push @err, "$at: label $l twice" if exists $labels{$l};
                $labels{$l} = $v;
                next if $s =~ s/^,(?=[a-zA-Z_])//;
                if ($s !~ /^\}/) {
                    push @err, "$at: expected \",\" or \"}\"";
                    $ok = 0;
                }
            }
        }
        next unless $ok;

        unless ($s =~ /^ ($FLOAT)(?: (-?[0-9]+))?$/) {
            push @err, "$at: bad value or timestamp";
            next;
        }
        my $value = $1;

        # the family it belongs to: its TYPE must have come first

        my ($family, $base, $suffix);
        ($base, $suffix) = ($1, $2) if $name =~ /^(.*)_(bucket|sum|count)$/;

        if ($type{$name} && $type{$name} =~ /^(?:counter|gauge|untyped)$/) {
            $family = $name;
        } elsif (defined $base
                 && ($type{$base} // '') =~ /^(?:histogram|summary)$/)
        {
            $family = $base;
            push @err, "$at: _bucket in a summary"
                if $suffix eq 'bucket' && $type{$base} eq 'summary';
        } elsif (($type{$name} // '') eq 'summary') {
            $family = $name;
        } else {
            push @err, "$at: sample before (or without) the TYPE of its"
                       . " family";
            next;
        }

        if ($family ne $cur) {
            push @err, "$at: family $family appears in two groups"
                if $seen_family{$family}++;
            $cur = $family;
        }

        push @err, "$at: name without the $Prefix prefix"
            unless index($name, $Prefix) == 0;

        if ($type{$family} eq 'counter') {
            push @err, "$at: counter $family does not end in _total"
                unless $family =~ /_total$/;
            push @err, "$at: negative or NaN counter"
                if $value eq 'NaN' || _num($value) < 0;
        }

        if ($type{$family} eq 'histogram') {
            my %rest = %labels;
            my $le = delete $rest{le};
            my $hk = _key($family, \%rest);
            if ($name =~ /_bucket$/) {
                if (!defined $le || $le !~ /^$FLOAT$/ || $le eq 'NaN') {
                    push @err, "$at: bucket without a valid le";
                } else {
                    push @{ $hist{$hk}{buckets} }, [_num($le), _num($value)];
                }
            } elsif ($name =~ /_(sum|count)$/) {
                push @err, "$at: le on _$1" if defined $le;
                $hist{$hk}{$1} = _num($value);
            }
        } elsif (exists $labels{le} && $type{$family} ne 'histogram') {
            # allowed by the format, never used here
        }

        my $key = _key($name, \%labels);
        push @err, "$at: series $key appears twice" if exists $samples{$key};
        $samples{$key} = _num($value);
    }

    for my $hk (sort keys %hist) {
        my $h = $hist{$hk};
        my @b = @{ $h->{buckets} // [] };
        if (!@b) {
            push @err, "histogram $hk: no buckets";
            next;
        }
        for my $i (1 .. $#b) {
            push @err, "histogram $hk: le bounds not increasing"
                unless $b[$i][0] > $b[$i - 1][0];
            push @err, "histogram $hk: buckets not cumulative"
                unless $b[$i][1] >= $b[$i - 1][1];
        }
        push @err, "histogram $hk: no +Inf bucket"
            unless $b[-1][0] == 9**9**9;
        push @err, "histogram $hk: no _count" unless defined $h->{count};
        push @err, "histogram $hk: no _sum" unless defined $h->{sum};
        push @err, "histogram $hk: _count differs from the +Inf bucket"
            if defined $h->{count} && $h->{count} != $b[-1][1];
    }

    for my $f (sort keys %type) {
        push @err, "family $f has no HELP" unless $help{$f};
    }
    for my $f (sort keys %help) {
        push @err, "family $f has HELP but no TYPE" unless $type{$f};
    }

    # the documented families, nothing more, nothing less
    my %want = map { ("$Prefix$_" => $Families{$_}) } keys %Families;
    for my $f (sort keys %want) {
        push @err, "family $f is missing"
                   . ($type{$f} ? " (has type $type{$f})" : '')
            unless ($type{$f} // '') eq $want{$f};
    }
    for my $f (sort keys %type) {
        push @err, "family $f is not documented" unless $want{$f};
    }

    return (\@err, \%samples);
}

# Scrapes /metrics, checks the whole text (one test), returns the samples.
sub scrape {
    my $what = shift;
    my $r = http_get('/metrics');
    my ($err, $samples) = parse_exposition($r->{body});
    unshift @$err, "status $r->{status}" unless $r->{status} == 200;
    Test::More::is(join("\n", @$err), '',
                   "$what: the scrape is valid exposition format 0.0.4");
    return $samples;
}

# the value of one series, 0 when it is absent
sub v {
    my ($m, $name, %labels) = @_;
    return $m->{ _key("$Prefix$name", \%labels) } // 0;
}

sub delta {
    my ($what, $a, $b, $want, $name, %labels) = @_;
    Test::More::is(v($b, $name, %labels) - v($a, $name, %labels), $want,
                   "$what: " . _key($name, \%labels) . " moved by $want");
}

for my $f (qw(parse_exposition scrape v delta)) {
    no strict 'refs';
    *{"Test::Nginx::Util::$f"} = \&{"main::$f"};
}

reset_fixtures();

END {
    local ($?, $@);
    eval { pg_ensure_up(); reset_fixtures(); 1 };
}

# the parser itself must refuse what it should (7 tests)

{
    my @bad = (
        [ "x_total 1\n", 'sample before (or without) the TYPE' ],
        [ "# TYPE ${Prefix}a_total counter\n# HELP ${Prefix}a_total h\n",
          'HELP after TYPE' ],
        [ "# HELP ${Prefix}a h\n# TYPE ${Prefix}a gauge\n${Prefix}a{b=\"\\x\"}"
          . " 1\n", 'bad label value' ],
        [ "# HELP ${Prefix}a h\n# TYPE ${Prefix}a gauge\n${Prefix}a 1\n"
          . "${Prefix}a 2\n", 'appears twice' ],
        [ "# HELP ${Prefix}a h\n# TYPE ${Prefix}a counter\n${Prefix}a 1\n",
          'does not end in _total' ],
        [ "# HELP ${Prefix}a h\n# TYPE ${Prefix}a gauge\n${Prefix}a 1e\n",
          'bad value' ],
        [ "# HELP ${Prefix}h h\n# TYPE ${Prefix}h histogram\n"
          . "${Prefix}h_bucket{le=\"1\"} 2\n${Prefix}h_bucket{le=\"+Inf\"} 1\n"
          . "${Prefix}h_sum 1\n${Prefix}h_count 1\n", 'not cumulative' ],
    );
    for my $b (@bad) {
        my ($err) = parse_exposition($b->[0]);
        Test::More::ok((grep { index($_, $b->[1]) >= 0 } @$err),
                       "the parser refuses: $b->[1]");
    }
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a scrape after API traffic is valid, and the counters moved
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /metrics { ratelimit_policy_metrics; }
--- init
pg_ensure_up();
reset_fixtures();
wait_listener();
my $T = 'TEST 1';
my $api = api_path('FREE00000001', 'free-token-1001');

my $m0 = scrape("$T before");

Test::More::is(http_get($api)->{status}, 200, "$T: first GET");
my $m1 = scrape("$T after one GET");
delta("$T first GET", $m0, $m1, 1, 'cache_misses_total');
delta("$T first GET", $m0, $m1, 0, 'cache_hits_total');
delta("$T first GET", $m0, $m1, 1, 'db_queries_total', statement => 'lookup');
delta("$T first GET", $m0, $m1, 1, 'db_query_duration_seconds_count',
      statement => 'lookup');
delta("$T first GET", $m0, $m1, 1, 'api_requests_total',
      method => 'GET', code => '200');

Test::More::is(http_get($api)->{status}, 200, "$T: second GET");
my $m2 = scrape("$T after two GETs");
delta("$T second GET", $m1, $m2, 1, 'cache_hits_total');
delta("$T second GET", $m1, $m2, 0, 'cache_misses_total');
delta("$T second GET", $m1, $m2, 0, 'db_queries_total', statement => 'lookup');

Test::More::is(http_request(method => 'PATCH',
                            path => "$api&policy_slug=strict")->{status},
               200, "$T: PATCH");
Test::More::is(http_get(api_path('FREE00000001', 'wrong'))->{status}, 401,
               "$T: wrong token");
Test::More::is(http_request(method => 'DELETE', path => $api)->{status}, 405,
               "$T: DELETE");

# the PATCH's NOTIFY comes back through the listener
my $m3;
wait_until(5, sub {
    my (undef, $m) = parse_exposition(http_get('/metrics')->{body});
    return v($m, 'notifications_total') > v($m2, 'notifications_total');
});
$m3 = scrape("$T after PATCH, 401, 405");
delta("$T PATCH", $m2, $m3, 1, 'db_queries_total', statement => 'set');
delta("$T PATCH", $m2, $m3, 1, 'api_requests_total',
      method => 'PATCH', code => '200');
delta("$T 401", $m2, $m3, 1, 'api_requests_total',
      method => 'GET', code => '401');
delta("$T 405", $m2, $m3, 1, 'api_requests_total',
      method => 'other', code => '405');
Test::More::cmp_ok(v($m3, 'notifications_total'), '>',
                   v($m2, 'notifications_total'),
                   "$T: the PATCH's notification was counted");
Test::More::is(v($m3, 'listener_up'), 1, "$T: the listener is up");
Test::More::is(v($m3, 'zone_used_bytes') + v($m3, 'zone_free_bytes'),
               v($m3, 'zone_size_bytes'), "$T: zone used + free = size");
--- request
GET /metrics
--- error_code: 200
--- response_headers_like
Content-Type: ^text/plain; version=0\.0\.4(?:; charset=utf-8)?$
--- response_body_like
(?m)^# HELP nginx_ratelimit_policy_api_requests_total .*\n# TYPE nginx_ratelimit_policy_api_requests_total counter\n.*^nginx_ratelimit_policy_zone_entries [1-9][0-9]*$
--- no_error_log
[error]



=== TEST 2: HEAD answers the headers only; other methods get 405 and Allow
--- config
    location = /metrics { ratelimit_policy_metrics; }
--- request eval
["HEAD /metrics", "POST /metrics\nx=1", "DELETE /metrics"]
--- error_code eval
[200, 405, 405]
--- response_headers eval
["Content-Type: text/plain; version=0.0.4; charset=utf-8", "Allow: GET, HEAD",
 "Allow: GET, HEAD"]
--- response_body eval
["", qr/405 Not Allowed/, qr/405 Not Allowed/]



=== TEST 3: without enforced locations the enforcement counters stay 0, every series is there
--- config
    location = /metrics { ratelimit_policy_metrics; }
--- init
my (undef, $m) = parse_exposition(http_get('/metrics')->{body});
my @zero = grep { $_ =~ /^nginx_ratelimit_policy_(?:enforced_requests|rejections)_total/ && $m->{$_} != 0 } keys %$m;
Test::More::is("@zero", '', 'TEST 3: enforcement counters are 0');
Test::More::is(scalar(grep { /^nginx_ratelimit_policy_rejections_total\{/ }
                       keys %$m), 24,
               'TEST 3: 3 classes x 4 limits x dry_run true/false');
Test::More::is(scalar(grep { /^nginx_ratelimit_policy_enforced_requests_total\{/ }
                       keys %$m), 12,
               'TEST 3: 3 classes x 4 verdicts');
--- request
GET /metrics
--- response_body_like
(?m)^nginx_ratelimit_policy_rejections_total\{class="send_message",limit="account_protection_seconds",dry_run="false"\} 0$



=== TEST 4: PostgreSQL down: unavailable queries and 503 answers are counted
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /metrics { ratelimit_policy_metrics; }
--- init
pg_ensure_up();
wait_listener();
my $T = 'TEST 4';
my $m0 = scrape("$T before");
pg_stop('fast');
Test::More::is(http_get(api_path('PAID00000001', 'paid-token-1002'))->{status},
               503, "$T: 503 while PostgreSQL is down");
my $m1 = scrape("$T PostgreSQL down");
my $un = 0;
$un += v($m1, 'db_errors_total', statement => $_, reason => 'unavailable')
       - v($m0, 'db_errors_total', statement => $_, reason => 'unavailable')
    for qw(lookup catalog set usage);
Test::More::cmp_ok($un, '>=', 1, "$T: unavailable queries counted");
delta("$T", $m0, $m1, 1, 'api_requests_total', method => 'GET',
      code => '503');
pg_start();
--- request
GET /metrics
--- error_code: 200



=== TEST 5: a query that exceeds query_timeout is counted, with its latency
(the server cancels it at statement_timeout, query_timeout - 100ms)
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=300ms;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /metrics { ratelimit_policy_metrics; }
--- init
pg_ensure_up();
wait_listener();
my $T = 'TEST 5';
# the catalogue first, so that the slow statement is the lookup
Test::More::is(http_get(api_path('FREE00000002', 'free-token-1001'))->{status},
               200, "$T: warm-up");
slow_instance('SLOW00000001', 2);
my $m0 = scrape("$T before");
Test::More::is(http_get(api_path('SLOW00000001', 'free-token-1001'))->{status},
               504, "$T: 504 after query_timeout");
my $m1 = scrape("$T after the timeout");
delta("$T", $m0, $m1, 1, 'db_timeouts_total', statement => 'lookup');
Test::More::cmp_ok(
    v($m1, 'db_query_duration_seconds_bucket', statement => 'lookup',
      le => '+Inf')
    - v($m1, 'db_query_duration_seconds_bucket', statement => 'lookup',
        le => '0.1'),
    '>=', 1, "$T: the timed-out query is in a bucket above 0.1s");
restore_schema();
--- request
GET /metrics
--- error_code: 200



=== TEST 6: ratelimit_policy_metrics needs ratelimit_policy_db
--- http_config
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /metrics { ratelimit_policy_metrics; }
--- must_die
--- error_log
"ratelimit_policy_metrics" requires "ratelimit_policy_db"



=== TEST 7: ratelimit_policy_metrics twice in a location
--- config
    location = /metrics {
        ratelimit_policy_metrics;
        ratelimit_policy_metrics;
    }
--- must_die
--- error_log
"ratelimit_policy_metrics" directive is duplicate



=== TEST 8: enforced requests are counted by class, verdict and limit
--- config
    location = /metrics { ratelimit_policy_metrics; }

    location /_engine/ {
        return 200;
    }

    location /v2/messages/ {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/_engine/;
    }

    location /v2/groups/ {
        ratelimit_policy_enforce group;
        ratelimit_policy_dry_run on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/_engine/;
    }
--- init
pg_ensure_up();
reset_fixtures();
wait_listener();
my $T = 'TEST 8';
my $m0 = scrape("$T before");
my $paid = 'instance_id=PAID00000001&access_token=paid-token-1002';
my $zero = 'instance_id=ZERO00000001&access_token=zero-token-1005';
Test::More::is(http_get("/v2/messages/send?$paid")->{status}, 200,
               "$T: admitted");
Test::More::is(http_get("/v2/messages/send?$paid")->{status}, 200,
               "$T: admitted again");
Test::More::is(http_get("/v2/messages/send?$zero")->{status}, 429,
               "$T: zero_policy is rejected");
Test::More::is(http_get("/v2/groups/list?$zero")->{status}, 200,
               "$T: dry run lets it pass");
my $m1 = scrape("$T after");
delta($T, $m0, $m1, 2, 'enforced_requests_total',
      class => 'send_message', verdict => 'admitted');
delta($T, $m0, $m1, 1, 'enforced_requests_total',
      class => 'send_message', verdict => 'rejected');
delta($T, $m0, $m1, 1, 'enforced_requests_total',
      class => 'group', verdict => 'dry_run_rejected');
my ($real, $dry) = (0, 0);
for my $k (keys %$m1) {
    my $d = $m1->{$k} - ($m0->{$k} // 0);
    $real += $d if $k =~ /^nginx_ratelimit_policy_rejections_total\{class="send_message",dry_run="false",/;
    $dry += $d if $k =~ /^nginx_ratelimit_policy_rejections_total\{class="group",dry_run="true",/;
}
Test::More::is("$real $dry", '1 1',
               "$T: one rejection by a send_message limit, one dry-run"
               . " rejection by a group limit");
--- request
GET /metrics
--- error_code: 200
