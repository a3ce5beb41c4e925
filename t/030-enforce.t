# ratelimit_policy_enforce (DESIGN.md section 6): each limit of each class,
# the cool-down, the headers, Retry-After and the 429 body, dry run, a
# custom status, headers off, unlimited and zero limits, authentication
# (no unauthenticated request reaches the upstream), concurrency with a
# slow upstream, client aborts (also while the lookup runs), internal
# redirects and subrequests counted once, and the configuration errors.
#
# Every enforced location proxies to /upstream/ of the same server, which
# writes "UPSTREAM-HIT <uri>" into error.log (its access_log), so the
# blocks can tell whether a request reached it.  Sequences that must come
# before the block's own request are sent from --- init and checked there
# with Test::More.  The window arithmetic itself (random arrivals checked
# by brute force, midnight, cool-down, clocks moving back) is tested by
# t/unit/window_test.c.

use lib 't/lib';
use RLP;
use RLPHelpers;

repeat_each(1);

# the runner's checks + the Test::More checks made in --- init
plan tests => 207;

no_shuffle();

$RLP::HttpConfig = <<'_EOC_';
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    log_format upstream_hit "UPSTREAM-HIT $request_uri";
_EOC_

our $Locations = <<'_EOC_';
    add_header X-RLP-Status $ratelimit_policy_status always;
    add_header X-RLP-Remaining $ratelimit_policy_remaining always;

    location /upstream/ {
        access_log logs/error.log upstream_hit;
        return 200 "upstream\n";
    }

    location /slow-upstream/ {
        access_log logs/error.log upstream_hit;
        limit_rate 100;
        return 200 "slow upstream .................................................................................\n";
    }

    location /send {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }

    location /group {
        ratelimit_policy_enforce group;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }

    location /check {
        ratelimit_policy_enforce check;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }

    location /slow {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/slow-upstream/;
    }
_EOC_

# the common locations go before each block's own
add_block_preprocessor(sub {
    my $block = shift;
    return if defined $block->no_module || defined $block->must_die;
    $block->set_value(config => $Locations . ($block->config // ''));
});

our %Tok = (
    FREE => 'free-token-1001', PAID => 'paid-token-1002',
    OTHR => 'other-token-1004', ZERO => 'zero-token-1005',
    UNLI => 'zero-token-1005', SLOW => 'free-token-1001',
);

# "/send?instance_id=...&access_token=..." for an instance of t/fixtures.sql
sub q_ {
    my ($loc, $id) = @_;
    return "$loc?instance_id=$id&access_token=$Tok{substr $id, 0, 4}";
}

# the 429 body
sub limited {
    my ($limit, $retry, $message) = @_;
    return qq({"status":"error","code":"rate_limited","limit":"$limit",)
           . qq("retry_after":$retry,"message":"$message"});
}

our $Minute = 'the per-minute limit of the instance is reached';
our $Daily = 'the daily cap of the instance is reached';
our $Cool = 'the instance is in its account protection cool-down';
our $Busy = 'too many requests of the instance are in progress';

# seconds until the next UTC midnight, as the module computes it
sub to_midnight { return 86400 - time() % 86400 }

# n requests from --- init, all expected to get $status
sub send_n {
    my ($name, $n, $path, $status) = @_;
    my @got = map { http_get($path)->{status} } 1 .. $n;
    Test::More::is("@got", join(' ', ($status) x $n),
                   "$name: $n x $status from init");
}

# today's count in ratelimit.daily_usage
sub seed_usage {
    my ($id, $class, $count) = @_;
    psql("INSERT INTO ratelimit.daily_usage VALUES ('$id',"
         . " (now() AT TIME ZONE 'UTC')::date, '$class', $count)"
         . " ON CONFLICT (instance_id, day, class)"
         . " DO UPDATE SET count = EXCLUDED.count;");
}

run_tests();

__DATA__

=== TEST 1: an admitted request reaches the upstream and carries the headers
--- init
reset_fixtures();
--- config
--- request eval
"GET " . main::q_('/send', 'FREE00000002')
--- response_headers_like
X-RateLimit-Limit: 8
X-RateLimit-Remaining: 7
X-RateLimit-Reset: 60
RateLimit-Policy: "minute";q=8;w=60, "day";q=200;w=86400
RateLimit: "minute";r=7;t=60, "day";r=199;t=\d+
X-RLP-Status: PASSED
X-RLP-Remaining: 7
--- response_body
upstream
--- error_log
UPSTREAM-HIT /upstream/?instance_id=FREE00000002
--- no_error_log
[alert]
[crit]



=== TEST 2: the 9th send_message of a minute: 429, Retry-After, the JSON body, the log line
--- init
reset_fixtures();
main::send_n('TEST 2', 8, main::q_('/send', 'FREE00000002'), 200);
--- config
--- request eval
"GET " . main::q_('/send', 'FREE00000002')
--- error_code: 429
--- response_headers_like
Content-Type: application/json
Retry-After: 60
X-RateLimit-Limit: 8
X-RateLimit-Remaining: 0
X-RateLimit-Reset: (59|60)
RateLimit: "minute";r=0;t=(59|60), "day";r=192;t=\d+
X-RLP-Status: REJECTED
X-RLP-Remaining: 0
--- response_body eval
main::limited('send_message_per_minute', 60, $main::Minute)
--- error_log eval
[qr/\[error\] .*ratelimit_policy: limiting requests, instance "FREE00000002", class send_message, send_message_per_minute 8, cool-down started, retry after 60s/]



=== TEST 3: during the cool-down every class of the instance is refused
--- init
reset_fixtures();
main::send_n('TEST 3', 8, main::q_('/send', 'FREE00000002'), 200);
main::send_n('TEST 3', 1, main::q_('/send', 'FREE00000002'), 429);
--- config
--- request eval
[map { "GET $_" } main::q_('/group', 'FREE00000002'), main::q_('/check', 'FREE00000002'),
 main::q_('/send', 'FREE00000002')]
--- error_code eval
[429, 429, 429]
--- response_body eval
[qr/^\{"status":"error","code":"rate_limited","limit":"account_protection_seconds","retry_after":(59|60),"message":"the instance is in its account protection cool-down"\}$/,
 qr/"limit":"account_protection_seconds","retry_after":(59|60),/,
 qr/"limit":"account_protection_seconds","retry_after":(59|60),/]



=== TEST 4: group: standard_policy admits 10 a minute, the 11th is refused by group_req_per_minute
--- init
reset_fixtures();
main::send_n('TEST 4', 10, main::q_('/group', 'FREE00000003'), 200);
--- config
--- request eval
"GET " . main::q_('/group', 'FREE00000003')
--- error_code: 429
--- response_headers_like
RateLimit-Policy: "minute";q=10;w=60, "day";q=200;w=86400
RateLimit: "minute";r=0;t=(59|60), "day";r=190;t=\d+
Retry-After: (59|60)
--- response_body_like: ^\{"status":"error","code":"rate_limited","limit":"group_req_per_minute","retry_after":(59|60),"message":"the per-minute limit of the instance is reached"\}$



=== TEST 5: check: standard_policy admits 20 a minute, the 21st is refused by check_req_per_minute
--- init
reset_fixtures();
main::send_n('TEST 5', 20, main::q_('/check', 'FREE00000003'), 200);
--- config
--- request eval
"GET " . main::q_('/check', 'FREE00000003')
--- error_code: 429
--- response_headers_like
RateLimit-Policy: "minute";q=20;w=60, "day";q=500;w=86400
X-RateLimit-Limit: 20
--- response_body_like: "limit":"check_req_per_minute"



=== TEST 6: send_message daily cap: usage already in the database counts, the cap refuses until midnight
--- init
reset_fixtures();
main::seed_usage('FREE00000002', 'send_message', 199);
--- config
--- request eval
[map { "GET $_" } main::q_('/send', 'FREE00000002'), main::q_('/send', 'FREE00000002')]
--- error_code eval
[200, 429]
--- response_headers_like eval
["X-RateLimit-Limit: 200\nX-RateLimit-Remaining: 0\nRateLimit: \"minute\";r=7;t=60, \"day\";r=0;t=\\d+",
 "X-RateLimit-Limit: 200\nX-RateLimit-Remaining: 0\nRetry-After: \\d+"]
--- response_body eval
["upstream\n", qr/^\{"status":"error","code":"rate_limited","limit":"send_message_daily_cap","retry_after":\d+,"message":"the daily cap of the instance is reached"\}$/]
--- db_check
SELECT count FROM ratelimit.daily_usage WHERE instance_id = 'FREE00000002';
--- db_check_out
200
--- db_check_timeout: 5



=== TEST 7: the daily cap's Retry-After is the seconds until UTC midnight
--- init
reset_fixtures();
main::seed_usage('PAID00000001', 'group', 2000);
my $r = http_get(main::q_('/group', 'PAID00000001'));
my $want = main::to_midnight();
Test::More::ok($r->{status} == 429
               && abs($r->{headers}{'retry-after'} - $want) <= 2
               && $r->{body} =~ /"limit":"group_daily_cap","retry_after":$r->{headers}{'retry-after'},/,
               "TEST 7: 429 group_daily_cap, Retry-After $r->{headers}{'retry-after'} ~ $want");
--- config
--- request eval
"GET " . main::q_('/send', 'PAID00000001')
--- error_code: 429
--- response_body_like: "limit":"account_protection_seconds"



=== TEST 8: dry run: counted and logged, never refused, the upstream gets them all
--- init
reset_fixtures();
main::send_n('TEST 8', 8, main::q_('/dry', 'OTHR00000001'), 200);
--- config
    location /dry {
        ratelimit_policy_enforce send_message;
        ratelimit_policy_dry_run on;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }
--- request eval
[map { "GET $_" } main::q_('/dry', 'OTHR00000001'), main::q_('/dry', 'OTHR00000001')]
--- response_headers_like eval
["X-RLP-Status: REJECTED_DRY_RUN\nX-RateLimit-Remaining: 0",
 "X-RLP-Status: REJECTED_DRY_RUN"]
--- response_body eval
["upstream\n", "upstream\n"]
--- error_log eval
[qr/\[error\] .*limiting requests, dry run, instance "OTHR00000001", class send_message, /]



=== TEST 9: ratelimit_policy_status 503 and ratelimit_policy_log_level warn
--- init
reset_fixtures();
main::send_n('TEST 9', 8, main::q_('/s503', 'OTHR00000001'), 200);
--- config
    location /s503 {
        ratelimit_policy_enforce send_message;
        ratelimit_policy_status 503;
        ratelimit_policy_log_level warn;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }
--- request eval
"GET " . main::q_('/s503', 'OTHR00000001')
--- error_code: 503
--- response_headers_like
Retry-After: 60
--- response_body eval
main::limited('send_message_per_minute', 60, $main::Minute)
--- error_log eval
[qr/\[warn\] .*limiting requests, instance "OTHR00000001"/]
--- no_error_log
[error]



=== TEST 10: ratelimit_policy_headers off: no rate-limit headers, Retry-After stays on the rejection
--- init
reset_fixtures();
main::send_n('TEST 10', 7, main::q_('/quiet', 'OTHR00000001'), 200);
--- config
    location /quiet {
        ratelimit_policy_enforce send_message;
        ratelimit_policy_headers off;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }
--- request eval
[map { "GET $_" } main::q_('/quiet', 'OTHR00000001'), main::q_('/quiet', 'OTHR00000001')]
--- error_code eval
[200, 429]
--- response_headers eval
["!X-RateLimit-Limit\n!X-RateLimit-Remaining\n!X-RateLimit-Reset\n!RateLimit\n!RateLimit-Policy\n!Retry-After\nX-RLP-Status: PASSED",
 "!X-RateLimit-Limit\n!RateLimit\n!RateLimit-Policy\nRetry-After: 60\nX-RLP-Status: REJECTED"]



=== TEST 11: an unlimited policy: admitted, no rate-limit headers, no remaining
--- init
reset_fixtures();
main::send_n('TEST 11', 30, main::q_('/send', 'UNLI00000001'), 200);
--- config
--- request eval
"GET " . main::q_('/send', 'UNLI00000001')
--- response_headers
!X-RateLimit-Limit
!RateLimit
!RateLimit-Policy
!X-RLP-Remaining
X-RLP-Status: PASSED
--- response_body
upstream



=== TEST 12: the zero policy admits nothing: concurrency 0 is checked first, retry after midnight
--- init
reset_fixtures();
--- config
--- request eval
[map { "GET $_" } main::q_('/send', 'ZERO00000001'), main::q_('/group', 'ZERO00000001')]
--- error_code eval
[429, 429]
--- response_headers_like eval
["X-RateLimit-Limit: 0\nX-RateLimit-Remaining: 0\nRateLimit-Policy: \"minute\";q=0;w=60, \"day\";q=0;w=86400",
 "X-RateLimit-Limit: 0"]
--- response_body_like eval
[qr/^\{"status":"error","code":"rate_limited","limit":"concurrent_limit","retry_after":\d{3,5},/,
 qr/"limit":"concurrent_limit"/]
--- no_error_log
UPSTREAM-HIT



=== TEST 13: unauthenticated requests get the API's errors and never reach the upstream
--- init
reset_fixtures();
--- config
--- request eval
["GET /send?instance_id=FREE00000002&access_token=wrong-token",
 "GET /send?instance_id=FREE00000002",
 "GET /send?access_token=free-token-1001",
 "GET /send?instance_id=FREE-0000002&access_token=free-token-1001",
 "GET /send?instance_id=NONE00000001&access_token=free-token-1001"]
--- error_code eval
[401, 400, 400, 400, 404]
--- response_body eval
['{"status":"error","code":"invalid_token","message":"the access token is not valid for this instance"}',
 '{"status":"error","code":"missing_parameter","message":"access_token is required"}',
 '{"status":"error","code":"missing_parameter","message":"instance_id is required"}',
 '{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
 '{"status":"error","code":"instance_not_found","message":"no such instance for this account"}']
--- response_headers eval
["X-RLP-Status: ERROR\n!X-RateLimit-Limit", "X-RLP-Status: ERROR",
 "X-RLP-Status: ERROR", "X-RLP-Status: ERROR", "X-RLP-Status: ERROR"]
--- no_error_log
UPSTREAM-HIT



=== TEST 14: the token may come as Authorization: Bearer
--- init
reset_fixtures();
--- config
--- request
GET /send?instance_id=FREE00000002
--- more_headers
Authorization: Bearer free-token-1001
--- response_headers
X-RLP-Status: PASSED
X-RateLimit-Remaining: 7
--- response_body
upstream



=== TEST 15: concurrency with a slow upstream: standard_policy allows 2 in flight, the 3rd is refused, released when they finish
--- init
reset_fixtures();
my $p = main::q_('/slow', 'FREE00000003');
my @r = http_parallel([{ path => $p }, { path => $p, delay => 0.05 },
                       { path => $p, delay => 0.4 }]);
Test::More::is(join(' ', map { $_->{status} } @r), '200 200 429',
               'TEST 15: two in flight admitted, the third refused');
Test::More::is($r[2]{body},
               main::limited('concurrent_limit', 1, $main::Busy),
               'TEST 15: refused by concurrent_limit, retry after 1 s');
Test::More::cmp_ok($r[0]{elapsed}, '>', 0.5,
                   'TEST 15: the upstream was slow');
--- config
--- request eval
"GET " . main::q_('/slow', 'FREE00000003')
--- response_body_like: slow upstream
--- response_headers_like
X-RateLimit-Remaining: 17



=== TEST 16: a client that aborts while proxied releases its request in flight
--- init
reset_fixtures();
my $p = main::q_('/slow', 'FREE00000003');
my @r = http_parallel([{ path => $p }, { path => $p }], 0.3);
Test::More::is(join(' ', map { $_->{error} // 'done' } @r),
               'timed out timed out', 'TEST 16: both aborted by the client');
Time::HiRes::sleep(0.3);
--- config
--- request eval
"GET " . main::q_('/slow', 'FREE00000003')
--- response_body_like: slow upstream
--- error_log
client prematurely closed connection
--- no_error_log
[alert]
[crit]



=== TEST 17: a client that aborts while its lookup runs: no crash, nothing counted, nothing proxied
--- init
reset_fixtures();
slow_instance('SLOW00000001', 0.8, 1001, 'strict');
my $p = main::q_('/send', 'SLOW00000001');
my @r = http_parallel([{ path => $p }, { path => $p }, { path => $p }], 0.2);
Test::More::is(join(' ', map { $_->{error} // 'done' } @r),
               'timed out timed out timed out',
               'TEST 17: all three aborted while waiting');
Time::HiRes::sleep(1);
restore_schema();
--- config
--- request eval
"GET " . main::q_('/send', 'SLOW00000001')
--- response_headers
X-RateLimit-Remaining: 7
--- response_body
upstream
--- grep_error_log eval
qr/UPSTREAM-HIT \S+SLOW00000001/
--- grep_error_log_out
UPSTREAM-HIT /upstream/?instance_id=SLOW00000001
--- no_error_log
[alert]
[crit]



=== TEST 18: an internal redirect (try_files, error_page) and a subrequest (mirror) are counted once
--- init
reset_fixtures();
psql("DELETE FROM ratelimit.instances WHERE instance_id = 'SLOW00000001';");
--- config
    location /tf {
        ratelimit_policy_enforce send_message;
        try_files /nonexistent @send;
    }

    location @send {
        ratelimit_policy_enforce send_message;
        rewrite ^ /upstream/ break;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT;
    }

    location /teapot {
        ratelimit_policy_enforce send_message;
        proxy_intercept_errors on;
        error_page 418 = @send;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/teapot-upstream/;
    }

    location /teapot-upstream/ {
        return 418;
    }

    location /mirrored {
        ratelimit_policy_enforce send_message;
        mirror /send;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }
--- request eval
[map { "GET $_" } main::q_('/tf', 'FREE00000003'), main::q_('/teapot', 'FREE00000003'),
 main::q_('/mirrored', 'FREE00000003'), main::q_('/send', 'FREE00000003')]
--- response_headers eval
["X-RateLimit-Remaining: 19\nX-RLP-Status: PASSED",
 "X-RateLimit-Remaining: 18\nX-RLP-Status: PASSED",
 "X-RateLimit-Remaining: 17\nX-RLP-Status: PASSED",
 "X-RateLimit-Remaining: 16\nX-RLP-Status: PASSED"]



=== TEST 19: an upstream error releases the request in flight (strict: 1 at a time)
--- init
reset_fixtures();
--- config
    location /down {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:1/;
    }
--- request eval
[map { "GET $_" } main::q_('/down', 'OTHR00000001'), main::q_('/down', 'OTHR00000001'),
 main::q_('/send', 'OTHR00000001')]
--- error_code eval
[502, 502, 200]
--- response_headers eval
["X-RateLimit-Remaining: 7", "X-RateLimit-Remaining: 6",
 "X-RateLimit-Remaining: 5"]



=== TEST 20: HEAD is enforced like GET, the rejection has no body
--- init
reset_fixtures();
main::send_n('TEST 20', 8, main::q_('/send', 'OTHR00000001'), 200);
--- config
--- request eval
"HEAD " . main::q_('/send', 'OTHR00000001')
--- error_code: 429
--- response_headers
Retry-After: 60
X-RateLimit-Remaining: 0
--- response_body



=== TEST 20b: one keepalive connection: each request starts with a clean context
The module reuses the contexts of finished requests: a rejection's
decision, headers and status must not show on the next request of the
connection, nor an unlimited request's absence of them on the one after.
--- init
reset_fixtures();
--- config
--- pipelined_requests eval
["GET " . main::q_('/send', 'ZERO00000001'),
 "GET " . main::q_('/send', 'UNLI00000001'),
 "GET " . main::q_('/send', 'FREE00000002')]
--- error_code eval
[429, 200, 200]
--- response_headers eval
["X-RateLimit-Limit: 0\nX-RLP-Status: REJECTED",
 "!X-RateLimit-Limit\n!RateLimit-Policy\n!X-RLP-Remaining\nX-RLP-Status: PASSED",
 "X-RateLimit-Limit: 8\nX-RateLimit-Remaining: 7\nX-RLP-Status: PASSED\nX-RLP-Remaining: 7"]
--- response_body_like eval
[qr/"limit":"concurrent_limit"/, qr/^upstream$/, qr/^upstream$/]



=== TEST 21: nginx -t: an unknown class
--- http_config
    ratelimit_policy_db "host=127.0.0.1";
    ratelimit_policy_zone zone=ratelimit:1m;
--- config
    location /x { ratelimit_policy_enforce sms; }
--- must_die
--- error_log
[emerg]
invalid value "sms" in "ratelimit_policy_enforce" directive, it must be "send_message", "group" or "check"



=== TEST 22: nginx -t: enforcement without ratelimit_policy_db
--- http_config
    ratelimit_policy_zone zone=ratelimit:1m;
--- config
    location /x { ratelimit_policy_enforce group; }
--- must_die
--- error_log
[emerg]
"ratelimit_policy_enforce" requires "ratelimit_policy_db"



=== TEST 23: nginx -t: enforcement without ratelimit_policy_zone
--- http_config
    ratelimit_policy_db "host=127.0.0.1";
--- config
    location /x { ratelimit_policy_enforce check; }
--- must_die
--- error_log
[emerg]
"ratelimit_policy_enforce" requires "ratelimit_policy_zone"



=== TEST 24: nginx -t: ratelimit_policy_status out of 400-599
--- http_config
    ratelimit_policy_db "host=127.0.0.1";
    ratelimit_policy_zone zone=ratelimit:1m;
    ratelimit_policy_status 302;
--- config
--- must_die
--- error_log
[emerg]
value must be between 400 and 599



=== TEST 25: nginx -t: ratelimit_policy_enforce only in a location, once
--- http_config
    ratelimit_policy_db "host=127.0.0.1";
    ratelimit_policy_zone zone=ratelimit:1m;
--- config
    location /x {
        ratelimit_policy_enforce check;
        ratelimit_policy_enforce group;
    }
--- must_die
--- error_log
[emerg]
"ratelimit_policy_enforce" directive is duplicate



=== TEST 26: nginx -t: an unknown log level
--- http_config
    ratelimit_policy_db "host=127.0.0.1";
    ratelimit_policy_zone zone=ratelimit:1m;
    ratelimit_policy_log_level debug;
--- config
--- must_die
--- error_log
[emerg]
invalid value "debug"
