# Security (issue 6): what hostile input can and cannot do.
#
#   1-2  SQL only through bound parameters: instance ids, tokens and slugs
#        full of quotes, backslashes, NUL, %00 and SQL change nothing in
#        the database (a fingerprint of every table), and the module's
#        statements carry no literal of the request
#   3    no token, and no SHA-256 digest of one, in the error log on the
#        failure paths (503, 504, 400, 401, 422, enforcement), at any level
#        in the module's lines and in any line above debug
#   4    CR/LF in any parameter (query, JSON, form) injects no header
#   5-7  wrong tokens: 10,000 for a cached instance, 10,000 repeats of one
#        for an unknown instance, and 10,000 distinct ones for an unknown
#        instance, with the database queries they cost
#   8-9  a token of account A never reads or changes an instance of
#        account B (API and enforcement, cached or not, verified or not)
#   10   over-long parameters and bodies are answered (400, 413, 414, 422)
#        without a single database query
#
# Covered elsewhere and not repeated here: the 400 of malformed instance
# ids and the JSON of errors (t/011 TEST 5-9), 401 for another account's
# token on GET and PATCH (t/011 TEST 11, t/020 TEST 45), every 4xx of a
# PATCH leaving the rows unchanged (t/020, --- db_unchanged), the token
# masked in $request and in the debug lines of the module on the success
# paths (t/041), a wrong token refused from the cache (t/012 TEST 3).

use lib 't/lib';
use RLP;
use RLPHelpers;
use Digest::SHA ();
use IO::Select ();
use IO::Socket::INET ();
use URI::Escape ();

$SIG{PIPE} = 'IGNORE';

repeat_each(1);

our $Api = '/v2/session/rate-limit';

our @Tokens = qw(free-token-1001 paid-token-1002 other-token-1004
                 zero-token-1005);
our $DigestRe = join '|', map { Digest::SHA::sha256_hex($_) } @Tokens;

# every row of every table of the data contract
our $FingerprintSql = <<'_SQL_';
SELECT md5(string_agg(t, '|' ORDER BY t)) FROM (
    SELECT 'p' || p::text AS t FROM ratelimit.policies p
    UNION ALL SELECT 'a' || a::text FROM ratelimit.accounts a
    UNION ALL SELECT 'i' || i::text FROM ratelimit.instances i
    UNION ALL SELECT 'u' || u::text FROM ratelimit.daily_usage u
) s;
_SQL_

sub fingerprint {
    my $f = psql($FingerprintSql);
    $f =~ s/\s+//g;
    return $f;
}

# every statement recorded by pg_stat_statements since the last reset (the
# statistics queries and the listener's heartbeat excluded)
sub statements {
    return psql(<<'_SQL_');
SELECT coalesce(sum(calls), 0) || ' ' || coalesce(string_agg(query, ' ;; '), '')
  FROM pg_stat_statements
 WHERE query NOT LIKE '%pg_stat_statements%'
   AND query NOT IN ('SELECT 1', 'SELECT $1', 'LISTEN ratelimit_policy')
   AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database());
_SQL_
}

sub module_queries {
    my $n = statements();
    $n =~ /^(\d+)/;
    return $1 + 0;
}

# $n requests over $conns keep-alive connections, each connection's
# requests written back to back (pipelined); returns { status => count }
sub pipelined {
    my ($reqs, $conns, $timeout) = @_;
    $timeout //= 120;

    my @groups;
    push @{ $groups[$_ % $conns] }, $reqs->[$_] for 0 .. $#$reqs;

    my (%st, %by_fd);
    my $rs = IO::Select->new;
    my $ws = IO::Select->new;

    for my $g (@groups) {
        my $out = '';
        for my $i (0 .. $#$g) {
            my $r = $g->[$i];
            $r = { path => $r } unless ref $r;
            my $close = $i == $#$g ? "Connection: close\r\n" : '';
            my $m = $r->{method} // 'GET';
            $out .= "$m $r->{path} HTTP/1.1\r\nHost: localhost\r\n$close";
            $out .= "$_\r\n" for @{ $r->{headers} // [] };
            if (defined $r->{body}) {
                $out .= 'Content-Length: ' . length($r->{body})
                        . "\r\n\r\n$r->{body}";
            } else {
                $out .= "\r\n";
            }
        }
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => server_port(),
                                      Blocking => 0)
            or die "connect: $!";
        $by_fd{fileno $s} = { sock => $s, out => $out, in => '' };
        $ws->add($s);
        $rs->add($s);
    }

    my $deadline = Time::HiRes::time() + $timeout;
    while ($rs->count && Time::HiRes::time() < $deadline) {
        my ($r, $w) = IO::Select->select($rs, $ws->count ? $ws : undef,
                                         undef, 0.5);
        for my $s (@{ $w // [] }) {
            my $c = $by_fd{fileno $s};
            my $n = syswrite($s, $c->{out}, 65536);
            substr($c->{out}, 0, $n) = '' if $n;
            $ws->remove($s) unless length $c->{out};
        }
        for my $s (@{ $r // [] }) {
            my $c = $by_fd{fileno $s};
            my $n = sysread($s, my $buf, 262144);
            next if !defined $n && $!{EAGAIN};
            if ($n) {
                $c->{in} .= $buf;
                next;
            }
            $rs->remove($s);
            $ws->remove($s);
            close $s;
        }
    }

    for my $c (values %by_fd) {
        $st{$1}++ while $c->{in} =~ m{HTTP/1\.1 (\d{3}) }g;
        $st{lost}++ if $rs->exists($c->{sock});
    }
    return \%st;
}

sub counts {
    my $h = shift;
    return join ' ', map { "$_=$h->{$_}" } sort keys %$h;
}

# the response: status, the raw head, the body
sub req {
    my %o = @_;
    my $r = http_request(%o);
    my ($head) = split /\r\n\r\n/, $r->{raw} // '', 2;
    $r->{head} = $head // '';
    return $r;
}

our $Locations = <<'_EOC_';
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
        keepalive_requests 100000;
    }

    location /send {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }

    location /upstream/ {
        return 200 "upstream\n";
    }

    location = /canary {
        return 200 "canary\n";
    }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value(config => $Locations . ($block->config // ''));
});

reset_fixtures();

END {
    local ($?, $@);
    eval { pg_ensure_up(); reset_fixtures(); 1 };
}

# each block: its --- request (status + body) plus the Test::More checks
# of its --- init (block: checks): 1: 5, 2: 5 (+1 db_check), 3: 4, 4: 5,
# 5: 3, 6: 3, 7: 8, 8: 6, 9: 5, 10: 7, 11: 4
plan tests => blocks() * 2 + 56;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: injection payloads in the query of GET and PATCH change nothing
--- init
reset_fixtures();
wait_listener();
my $before = main::fingerprint();
pg_stat_reset();
my @payloads = ("'", "''", "\\", "\\'", "%00", "x%00y", "%27%3B",
    "' OR '1'='1", "'; DROP TABLE ratelimit.instances; --",
    "\\'; DELETE FROM ratelimit.accounts; --", '"', '$1', "E'\\x00'",
    "rlpinj%27%29%3B%20UPDATE%20ratelimit.instances%20SET%20policy_slug%3D%27unlimited%27%3B--",
    "FREE00000002' --", "%22%5C%00%27", "%C0%A7", "%EF%BC%87");
my (%status, @bad);
for my $p (@payloads) {
    my $e = $p =~ /%/ ? $p : URI::Escape::uri_escape($p);
    for my $q ("instance_id=$e&access_token=free-token-1001",
               "instance_id=FREE00000002&access_token=$e",
               "instance_id=FREE00000002&access_token=free-token-1001&policy_slug=$e",
               "instance_id=NOPE0000000$e&access_token=$e&policy_slug=$e")
    {
        for my $m ('GET', 'PATCH') {
            my $r = http_request(method => $m, path => "$main::Api?$q");
            $status{$r->{status}}++;
            push @bad, "$m $q: $r->{status}" if $r->{status} !~ /^(?:200|4\d\d)$/
                || ($m eq 'PATCH' && $r->{status} == 200);
        }
    }
}
Test::More::is("@bad", '', 'TEST 1: only 4xx for PATCH, 200 or 4xx for GET');
Test::More::ok(!$status{500} && !$status{502} && !$status{503}, 'TEST 1: no 5xx');
Test::More::is(main::fingerprint(), $before, 'TEST 1: the database is unchanged');
my $st = main::statements();
Test::More::unlike($st, qr/rlpinj|DROP|DELETE|FREE0000000|NOPE|free-token/i,
                   'TEST 1: no statement carries a literal of a request');
Test::More::like($st, qr/\$1/, 'TEST 1: the statements take parameters');
--- request
GET /canary
--- response_body
canary



=== TEST 2: injection payloads in JSON bodies, form bodies and Bearer tokens change nothing
--- init
reset_fixtures();
wait_listener();
my $before = main::fingerprint();
pg_stat_reset();
my @slugs = ("'", "\\\\", "\\u0000", "a\\u0000b", "strict\\u0000' OR '1'='1",
             "'; DROP TABLE ratelimit.policies; --", "\\\"", "unlimited'--",
             "business\\u0027");
my (@bad, $n);
for my $s (@slugs) {
    for my $tok ('free-token-1001', "free-token-1001'--", "x\\'y") {
        my $r = http_request(method => 'PATCH',
            path => "$main::Api?instance_id=FREE00000002",
            headers => ["Authorization: Bearer $tok",
                        'Content-Type: application/json'],
            body => qq({"policy_slug":"$s"}));
        $n++;
        push @bad, "json $s $tok: $r->{status}" if $r->{status} !~ /^4/;
        (my $f = $s) =~ s/\\u0000/%00/g;
        $f =~ s/\\u0027/%27/g;
        $f =~ s/\\(.)/$1/g;
        $r = http_request(method => 'PATCH',
            path => "$main::Api?instance_id=FREE00000002",
            headers => ["Authorization: Bearer $tok",
                        'Content-Type: application/x-www-form-urlencoded'],
            body => 'policy_slug=' . ($f =~ /%/ ? $f
                                      : URI::Escape::uri_escape($f)));
        $n++;
        push @bad, "form $f $tok: $r->{status}" if $r->{status} !~ /^4/;
    }
}
Test::More::is("@bad", '', "TEST 2: $n PATCHes, all 4xx");
Test::More::is(main::fingerprint(), $before, 'TEST 2: the database is unchanged');
my $st = main::statements();
Test::More::unlike($st, qr/DROP|unlimited'|business'|FREE0000000|free-token/i,
                   'TEST 2: no statement carries a literal of a request');
Test::More::unlike($st, qr/set_instance_policy/,
                   'TEST 2: no invalid slug reached set_instance_policy()');
my $r = http_request(method => 'PATCH',
                     path => "$main::Api?instance_id=FREE00000002&policy_slug=standard_policy",
                     headers => ['Authorization: Bearer free-token-1001']);
Test::More::is($r->{status}, 200, 'TEST 2: control: a valid PATCH still works');
--- request
GET /canary
--- response_body
canary
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000002';
--- db_check_out
standard_policy



=== TEST 3: failure paths log no token and no digest (503, 504, 400, 401, 422, enforcement)
--- log_level: debug
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=300ms;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
reset_fixtures();
wait_listener();
slow_instance('SLOW00000001', 2, 1001);
my @r;
push @r, http_get("$main::Api?instance_id=SLOW00000001&access_token=free-token-1001");
push @r, http_get("$main::Api?instance_id=FREE0000000%27&access_token=free-token-1001");
push @r, http_get("$main::Api?instance_id=FREE00000002&access_token=paid-token-1002");
push @r, http_request(method => 'PATCH',
    path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001&policy_slug=no%27such");
push @r, http_get("/send?instance_id=OTHR00000001&access_token=zero-token-1005");
push @r, http_get("/send?instance_id=PAID00000001", 'Authorization: Bearer free-token-1001');
push @r, http_get("$main::Api?instance_id=FREE00000002&access_token=%66ree-token-1001");
Test::More::is(join(' ', map { $_->{status} } @r), '504 400 401 422 401 401 200',
               'TEST 3: the failure paths');
pg_stop('fast');
my $r = http_get("$main::Api?instance_id=FREE00000001&access_token=other-token-1004");
pg_start();
Test::More::is($r->{status}, 503, 'TEST 3: 503 with PostgreSQL stopped');
restore_schema();
open my $in, '<', "$ENV{TEST_NGINX_SERVER_ROOT}/logs/error.log" or die $!;
my (@above, @module, @digest);
while (my $l = <$in>) {
    my $tok = $l =~ /(?:free|paid|other|zero)-token-100|%66ree-token/;
    push @above, $l if $tok && $l !~ /^\S+ \S+ \[debug\]/;
    push @module, $l if $tok && $l =~ /ratelimit_policy/;
    push @digest, $l if $l =~ /$main::DigestRe/i;
}
Test::More::is(scalar(@above), 0, 'TEST 3: no token in a line above debug')
    or Test::More::diag(@above[0 .. 2]);
Test::More::is(scalar(@module) + scalar(@digest), 0,
               'TEST 3: no token in a line of the module, no digest anywhere')
    or Test::More::diag(@module[0 .. 2], @digest[0 .. 2]);
--- request
GET /canary
--- response_body
canary



=== TEST 4: CR/LF in any parameter injects no response header
--- init
reset_fixtures();
my $inj = '%0d%0aX-Injected:%201%0d%0aSet-Cookie:%20rlp=1';
my @r = (
    main::req(path => "$main::Api?instance_id=$inj&access_token=free-token-1001"),
    main::req(path => "$main::Api?instance_id=FREE00000002&access_token=x$inj"),
    main::req(method => 'PATCH',
              path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001&policy_slug=strict$inj"),
    main::req(method => 'PATCH',
              path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001",
              headers => ['Content-Type: application/json'],
              body => '{"policy_slug":"strict\r\nX-Injected: 1\r\n"}'),
    main::req(method => 'PATCH',
              path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001",
              headers => ['Content-Type: application/x-www-form-urlencoded'],
              body => "policy_slug=strict$inj"),
    main::req(path => "/send?instance_id=FREE00000002&access_token=free-token-1001&x=$inj"),
);
Test::More::is(join(' ', map { $_->{status} } @r), '400 401 422 422 422 200',
               'TEST 4: statuses');
Test::More::is(join('', map { /^(?:X-Injected|Set-Cookie):.*$/mig } map { $_->{head} } @r), '',
               'TEST 4: no injected header');
Test::More::unlike(join('', map { $_->{body} } @r[0 .. 4]), qr/\r|\n(?!\z)/,
                   'TEST 4: no raw CR/LF in the JSON bodies');
my $b = $r[3]{body};
Test::More::like($b, qr/"code":"unknown_policy"/, 'TEST 4: the JSON slug is refused');
Test::More::like($r[5]{head}, qr/^X-RateLimit-Remaining: 7\r?$/m,
                 'TEST 4: the enforced request still counts');
--- request
GET /canary
--- response_body
canary



=== TEST 5: 10,000 wrong tokens for a cached instance: one lookup
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 60s negative=60s;
--- init
reset_fixtures();
wait_listener();
Test::More::is(http_get("$main::Api?instance_id=FREE00000002&access_token=free-token-1001")->{status},
               200, 'TEST 5: cached');
pg_stat_reset();
my $st = main::pipelined([ map { "$main::Api?instance_id=FREE00000002&access_token=wrong-$_" } 1 .. 10000 ], 20);
Test::More::is(main::counts($st), '401=10000', 'TEST 5: 10,000 x 401');
my $q = main::module_queries();
Test::More::cmp_ok($q, '<=', 1, "TEST 5: $q database queries");
--- request
GET /canary
--- response_body
canary



=== TEST 6: one wrong token 10,000 times for an unknown instance: one lookup
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 60s negative=60s;
--- init
reset_fixtures();
wait_listener();
pg_stat_reset();
my $st = main::pipelined([ map { "$main::Api?instance_id=NOPE00000001&access_token=wrong-token" } 1 .. 10000 ], 20);
Test::More::is(main::counts($st), '401=10000', 'TEST 6: 10,000 x 401');
my $q = main::module_queries();
Test::More::cmp_ok($q, '<=', 2, "TEST 6: $q database queries");
Test::More::ok(1, 'TEST 6: done');
--- request
GET /canary
--- response_body
canary



=== TEST 7: 10,000 distinct wrong tokens for an unknown instance: a bounded number of queries
Only the database knows whether a token is valid (404) or not (401) for
an instance that does not exist: the module asks it for at most 8 tokens
never seen before per unknown instance within negative_ttl, then answers
401 to unknown tokens without a query.  A token already known to be valid
keeps its 404.  Without the bound: 10,001 queries.
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 60s negative=60s;
--- config
    location = /metrics {
        ratelimit_policy_metrics;
    }
--- init
reset_fixtures();
wait_listener();
pg_stat_reset();
my $nope = "$main::Api?instance_id=NOPE00000001";
Test::More::is(http_get("$nope&access_token=free-token-1001")->{status}, 404,
               'TEST 7: a valid token, before: 404');
my $st = main::pipelined([ map { "$nope&access_token=wrong-$_" } 1 .. 10000 ], 20);
Test::More::is(main::counts($st), '401=10000', 'TEST 7: 10,000 x 401');
my $q = main::module_queries();
Test::More::cmp_ok($q, '<=', 10, "TEST 7: $q database queries (the first lookup, 8 tokens, the catalogue)");
Test::More::diag("TEST 7: 10,000 distinct wrong tokens cost $q queries");
Test::More::is(http_get("$nope&access_token=free-token-1001")->{status}, 404,
               'TEST 7: the valid token seen before: still 404');
Test::More::is(http_get("$nope&access_token=paid-token-1002")->{status}, 401,
               'TEST 7: a valid token never seen, lookups spent: 401');
Test::More::is(main::module_queries(), $q, 'TEST 7: no query for either');
my ($refused) = http_get('/metrics')->{body}
    =~ /^nginx_ratelimit_policy_token_probes_refused_total (\d+)$/m;
Test::More::cmp_ok($refused // 0, '>=', 9990, "TEST 7: token_probes_refused_total $refused");
Test::More::ok(1, 'TEST 7: done');
--- request
GET /canary
--- response_body
canary



=== TEST 8: account A's token never reads or changes account B's instance
--- init
reset_fixtures();
wait_listener();
my $before = main::fingerprint();
my $b = 'OTHR00000001';    # account 1004
my @r;
# uncached, then cached by B's own token (verified), then A again
for my $round (1 .. 2) {
    push @r, http_get("$main::Api?instance_id=$b&access_token=free-token-1001");
    push @r, http_get("$main::Api?instance_id=$b", 'Authorization: Bearer paid-token-1002');
    push @r, http_request(method => 'PATCH',
        path => "$main::Api?instance_id=$b&access_token=free-token-1001&policy_slug=standard_policy");
    push @r, http_request(method => 'PATCH', path => "$main::Api?instance_id=$b",
        headers => ['Authorization: Bearer paid-token-1002', 'Content-Type: application/json'],
        body => '{"policy_slug":"standard_policy"}');
    push @r, http_request(method => 'PATCH', path => "$main::Api?instance_id=$b&access_token=zero-token-1005",
        headers => ['Content-Type: application/x-www-form-urlencoded'],
        body => 'policy_slug=standard_policy');
    push @r, http_request(method => 'HEAD', path => "$main::Api?instance_id=$b&access_token=free-token-1001");
    Test::More::is(http_get("$main::Api?instance_id=$b&access_token=other-token-1004")->{status},
                   200, "TEST 8: round $round: B's own token") if $round == 1;
}
Test::More::is(join(' ', map { $_->{status} } @r), join(' ', (401) x 12),
               'TEST 8: every request with another account\'s token: 401');
Test::More::unlike(join('', map { $_->{body} } @r), qr/current_policy|policies/,
                   'TEST 8: nothing of B in the answers');
Test::More::is(main::fingerprint(), $before, 'TEST 8: the database is unchanged');
Test::More::is(http_get("$main::Api?instance_id=FREE00000002&access_token=free-token-1001")->{status},
               200, 'TEST 8: control: A reads its own instance');
Test::More::is(http_get("$main::Api?instance_id=$b&access_token=other-token-1004")->{status},
               200, 'TEST 8: control: B still reads its own');
--- request
GET /canary
--- response_body
canary



=== TEST 9: account A's token is not counted against, nor proxied for, account B's instance
--- init
reset_fixtures();
wait_listener();
my @r = map { http_get("/send?instance_id=OTHR00000001&access_token=$_") }
        qw(free-token-1001 paid-token-1002 zero-token-1005 free-token-1001);
Test::More::is(join(' ', map { $_->{status} } @r), '401 401 401 401',
               'TEST 9: 401 for every other account');
Test::More::unlike(join('', map { $_->{body} } @r), qr/upstream/,
                   'TEST 9: nothing reached the upstream');
my $ok = http_get("/send?instance_id=OTHR00000001&access_token=other-token-1004");
Test::More::is($ok->{status}, 200, "TEST 9: B's own request");
Test::More::is($ok->{headers}{'x-ratelimit-remaining'}, 7,
               'TEST 9: only B\'s own request was counted (strict: 8 a minute)');
Test::More::ok(wait_until(5, sub {
    psql("SELECT coalesce(sum(count), 0) FROM ratelimit.daily_usage"
         . " WHERE instance_id = 'OTHR00000001'") =~ /^1\s*$/
}), 'TEST 9: one request in the daily usage');
--- request
GET /canary
--- response_body
canary



=== TEST 10: over-long parameters and bodies: 400, 413, 414, 422 without a database query
--- init
reset_fixtures();
wait_listener();
Test::More::is(http_get("$main::Api?instance_id=FREE00000002&access_token=free-token-1001")->{status},
               200, 'TEST 10: cached');
pg_stat_reset();
my $long = 'A' x 6000;
my @r = (
    http_get("$main::Api?instance_id=$long&access_token=free-token-1001"),
    http_get("$main::Api?instance_id=FREE000000021&access_token=free-token-1001"),
    http_get("$main::Api?instance_id=$long", "Authorization: Bearer $long"),
    http_request(method => 'PATCH',
        path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001&policy_slug=" . ('a' x 65)),
    http_request(method => 'PATCH',
        path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001&policy_slug=" . ('a' x 5000)),
    http_request(method => 'PATCH',
        path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001",
        headers => ['Content-Type: application/json'],
        body => '{"policy_slug":"' . ('s' x 9000) . '"}'),
    http_request(method => 'PATCH',
        path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001",
        headers => ['Content-Type: application/x-www-form-urlencoded'],
        body => 'policy_slug=' . ('s' x 9000)),
    http_request(method => 'PATCH',
        path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001",
        headers => ['Content-Type: application/json'],
        body => '{"policy_slug":"strict","x":"' . ('x' x 17000) . '"}'),
    http_request(method => 'PATCH',
        path => "$main::Api?instance_id=$long&access_token=free-token-1001",
        headers => ['Content-Type: application/json'],
        body => '{"x":"' . ('x' x 17000) . '"}'),
    http_get("/send?instance_id=$long&access_token=free-token-1001"),
    http_get("$main::Api?instance_id=FREE00000002&access_token=" . ('t' x 40000)),
);
Test::More::is(join(' ', map { $_->{status} } @r),
               '400 400 400 422 422 422 422 413 413 400 414',
               'TEST 10: statuses');
Test::More::is(main::module_queries(), 0, 'TEST 10: no database query');
Test::More::like($r[0]{body}, qr/"invalid_instance_id"/, 'TEST 10: the long id is refused as such');
Test::More::unlike(join('', map { $_->{body} } @r), qr/AAAAAAAAAA|ssssssssss|tttttttttt/,
                   'TEST 10: nothing long is echoed');
my $ok = http_request(method => 'PATCH',
    path => "$main::Api?instance_id=FREE00000002&access_token=free-token-1001&policy_slug=standard_policy");
Test::More::is($ok->{status}, 200, 'TEST 10: control: a valid PATCH');
Test::More::ok(main::module_queries() >= 1, 'TEST 10: control: it reached the database');
--- request
GET /canary
--- response_body
canary



=== TEST 11: once negative_ttl has passed, unknown tokens are looked up again
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 60s negative=1s;
--- init
reset_fixtures();
wait_listener();
my $nope = "$main::Api?instance_id=NOPE00000002";
my $st = main::pipelined([ map { "$nope&access_token=wrong-$_" } 1 .. 200 ], 4);
Test::More::is(main::counts($st), '401=200', 'TEST 11: 200 x 401');
Test::More::is(http_get("$nope&access_token=paid-token-1002")->{status}, 401,
               'TEST 11: lookups spent: a valid token gets 401');
Time::HiRes::sleep(1.2);
Test::More::is(http_get("$nope&access_token=paid-token-1002")->{status}, 404,
               'TEST 11: negative_ttl later: 404');
Test::More::ok(1, 'TEST 11: done');
--- request
GET /canary
--- response_body
canary
