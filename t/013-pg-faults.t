# PostgreSQL faults (DESIGN.md section 7, POSTGRES-NOTES.md "What a test
# suite must prove" 2-6): PostgreSQL stopped, restarted (fast, immediate,
# mid-query), frozen (SIGSTOP), its connections terminated, a slow
# statement, a refused port and a port that accepts and never answers.
# Cached instances keep being served, uncached ones get 503 (504 when
# query_timeout passes), the module reconnects by itself without a reload,
# and an unrelated `return 200` location (the canary) stays fast meanwhile.
#
# A fault has to happen while one nginx runs, between its requests, so the
# blocks cause it from --- init (between requests sent there with
# t/lib/RLPHelpers.pm) and check those answers with Test::More; the block's
# own request then checks the state the fault left.  Every block starts by
# bringing PostgreSQL back if an earlier one left it stopped or frozen.
#
# Bounds: the canary must answer within $Canary seconds, a "fast" error
# within $Fast; both are far above the ~1 ms these take on an idle machine
# and far below the timeouts that a blocked worker would show.

use lib 't/lib';
use RLP;
use RLPHelpers;
use IO::Socket::INET;
use List::Util ();
use POSIX ();

repeat_each(1);

# runner checks + the Test::More checks made in --- init
plan tests => 95;

our $Canary = 0.25;
our $Fast   = 0.5;

our $Silent = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                    Listen => 64, ReuseAddr => 1)
    or die "cannot listen: $!";
$ENV{TEST_NGINX_SILENT_PORT} = $Silent->sockport;
$ENV{TEST_NGINX_REFUSED_PORT} = free_port();

our $Unavailable = '{"status":"error","code":"database_unavailable",'
                   . '"message":"the database is unavailable, retry later"}';
our $Timeout = '{"status":"error","code":"database_timeout",'
               . '"message":"the database did not answer in time"}';

sub nginx_pid {
    my $f = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/nginx.pid";
    open my $in, '<', $f or return 0;
    my $pid = <$in> // 0;
    close $in;
    chomp $pid;
    return $pid;
}

# checks made from --- init, named after the block
sub t_status {
    my ($name, $r, $status, $body, $max) = @_;
    Test::More::is("$r->{status} $r->{body}", "$status $body",
                   "$name: $status $body");
    if (defined $max) {
        Test::More::cmp_ok($r->{elapsed}, '<', $max,
                           sprintf("%s: answered within %.2fs (%.3fs)",
                                   $name, $max, $r->{elapsed}));
    }
}

sub t_canaries {
    my ($name, @r) = @_;
    my $bad = join ',', map { "$_->{status}/" . sprintf('%.3f', $_->{elapsed}) }
                        grep { $_->{status} != 200 || $_->{elapsed} >= $Canary }
                        @r;
    Test::More::is($bad, '', "$name: " . scalar(@r)
                             . " canaries answered 200 within ${Canary}s");
}

sub canaries {
    my ($from, $n, $step) = @_;
    return map { { path => '/canary', delay => $from + $_ * $step } }
           0 .. $n - 1;
}

reset_fixtures();

END {
    local ($?, $@);
    eval { pg_ensure_up(); reset_fixtures(); 1 };
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: PostgreSQL stopped: a cached instance is still served
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
pg_ensure_up();
wait_listener();
my $r = http_get(api_path('FREE00000002', 'free-token-1001'));
Test::More::is($r->{status}, 200, 'TEST 1: cached while PostgreSQL is up');
pg_stop('fast');
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",.*"available":false\}\}\}$



=== TEST 2: PostgreSQL stopped: an expired entry is served stale, at once
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 500ms;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
pg_ensure_up();
wait_listener();
my $p = api_path('PAID00000001', 'paid-token-1002');
Test::More::is(http_get($p)->{status}, 200, 'TEST 2: cached while up');
pg_stop('fast');
Time::HiRes::sleep(0.7);
my $r = http_get($p);
Test::More::like($r->{body}, qr/"current_policy":"business"/,
                 'TEST 2: stale entry served');
Test::More::cmp_ok($r->{elapsed}, '<', $main::Fast, 'TEST 2: at once');
--- request
GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"business","has_active_plan":true,



=== TEST 3: PostgreSQL stopped: an uncached instance gets a fast 503 with Retry-After
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
pg_ensure_up();
wait_listener();
Test::More::is(http_get(api_path('FREE00000002', 'free-token-1001'))->{status},
               200, 'TEST 3: catalogue and one instance cached');
pg_stop('fast');
my @r = http_parallel([
    { path => api_path('FREE00000003', 'free-token-1001') },
    { path => api_path('PAID00000003', 'paid-token-1002'), delay => 0.05 },
    main::canaries(0, 5, 0.02),
]);
main::t_status('TEST 3 (first)', shift @r, 503, $main::Unavailable, $main::Fast);
main::t_status('TEST 3 (second)', shift @r, 503, $main::Unavailable, $main::Fast);
main::t_canaries('TEST 3', @r);
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- timeout: 2
--- error_code: 503
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_headers_like
Retry-After: \d+
--- response_body eval
$main::Unavailable



=== TEST 4: PostgreSQL started again: the module recovers by itself, without a reload
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
pg_ensure_up();
wait_listener();
my $pid = main::nginx_pid();
my $p = api_path('FREE00000003', 'free-token-1001');
Test::More::is(http_get(api_path('FREE00000002', 'free-token-1001'))->{status},
               200, 'TEST 4: warm');
pg_stop('fast');
Test::More::is(http_get($p)->{status}, 503, 'TEST 4: 503 while down');
pg_start();
my $t0 = Time::HiRes::time();
Test::More::ok(wait_until(10, sub { http_get($p)->{status} == 200 }),
               sprintf('TEST 4: 200 again after pg_start (%.2fs)',
                       Time::HiRes::time() - $t0));
Test::More::is(main::nginx_pid(), $pid, 'TEST 4: the same nginx process');
--- request
GET /v2/session/rate-limit?instance_id=PAID00000003&access_token=paid-token-1002
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"standard_policy","has_active_plan":true,



=== TEST 5: restart -m immediate while idle: the next uncached requests recover
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
pg_ensure_up();
wait_listener();
Test::More::is(http_get(api_path('FREE00000002', 'free-token-1001'))->{status},
               200, 'TEST 5: warm');
pg_restart('immediate');
my $p = api_path('FREE00000001', 'free-token-1001');
my $first = http_get($p);
Test::More::ok($first->{status} == 200 || $first->{status} == 503,
               "TEST 5: first request after the restart: 200 or 503"
               . " ($first->{status})");
Test::More::ok(wait_until(10, sub { http_get($p)->{status} == 200 }),
               'TEST 5: 200 within 10 s');
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001",
"GET /canary",
]
--- error_code eval
[200, 200]
--- response_body_like eval
[qr/"current_policy":"standard_policy"/, qr/^ok$/]



=== TEST 6: after a restart the listener LISTENs again and changes arrive
The entry of FREE00000003 is fresh for 30 s; only a notification received
on the new LISTEN connection (or its resync) can show the change.
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
pg_ensure_up();
reset_fixtures();
wait_listener();
my $p = api_path('FREE00000003', 'free-token-1001');
Test::More::like(http_get($p)->{body}, qr/"current_policy":"standard_policy"/,
                 'TEST 6: cached');
pg_restart('fast');
Test::More::ok(eval { wait_listener(10) }, 'TEST 6: listening again');
Test::More::ok(wait_until(10, sub {
    http_get(api_path('FREE00000001', 'free-token-1001'))->{status} == 200
}), 'TEST 6: lookups work again');
psql("UPDATE ratelimit.instances SET policy_slug = 'strict'"
     . " WHERE instance_id = 'FREE00000003'");
Test::More::ok(wait_until(1.5, sub {
    http_get($p)->{body} =~ /"current_policy":"strict"/
}), 'TEST 6: the change arrives within 1.5 s');
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",



=== TEST 7: PostgreSQL restarted while a lookup is in flight: a fast 503, then recovery
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
pg_ensure_up();
reset_fixtures();
slow_instance('SLOW00000001', 3, 1001, 'strict');
wait_listener();
Test::More::is(http_get(api_path('FREE00000002', 'free-token-1001'))->{status},
               200, 'TEST 7: warm');
my $child = fork();
die "fork: $!" unless defined $child;
if ($child == 0) {
    Time::HiRes::sleep(0.3);
    eval { pg_restart('immediate') };
    POSIX::_exit(0);
}
my @r = http_parallel([
    { path => api_path('SLOW00000001', 'free-token-1001') },
    main::canaries(0.05, 10, 0.1),
], 15);
waitpid($child, 0);
my $slow = shift @r;
Test::More::is("$slow->{status} $slow->{body}", "503 $main::Unavailable",
               'TEST 7: the lookup in flight ends in 503');
Test::More::cmp_ok($slow->{elapsed}, '<', 2.5,
                   sprintf('TEST 7: ... before the statement would have'
                           . ' finished (%.2fs)', $slow->{elapsed}));
main::t_canaries('TEST 7', @r);
restore_schema();
# util/test runs PostgreSQL with synchronous_commit off: an immediate
# shutdown may lose the instance added just before it
psql("INSERT INTO ratelimit.instances VALUES ('SLOW00000001', 1001, 'strict')"
     . " ON CONFLICT (instance_id) DO NOTHING");
Test::More::ok(wait_until(10, sub {
    http_get(api_path('FREE00000003', 'free-token-1001'))->{status} == 200
}), 'TEST 7: 200 again within 10 s');
--- request
GET /v2/session/rate-limit?instance_id=SLOW00000001&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",



=== TEST 8: every module connection terminated: requests are served, the listener comes back
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
pg_ensure_up();
reset_fixtures();
wait_listener();
my $p = api_path('FREE00000003', 'free-token-1001');
Test::More::like(http_get($p)->{body}, qr/"current_policy":"standard_policy"/,
                 'TEST 8: cached');
my $n = psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
             . " WHERE application_name = 'nginx ratelimit_policy'");
Test::More::cmp_ok($n, '>=', 2, 'TEST 8: pool and listener terminated');
Time::HiRes::sleep(0.2);
Test::More::ok(wait_until(3, sub {
    http_get(api_path('FREE00000001', 'free-token-1001'))->{status} == 200
}), 'TEST 8: an uncached instance is served within 3 s');
Test::More::ok(eval { wait_listener(5) }, 'TEST 8: listening again');
psql("UPDATE ratelimit.instances SET policy_slug = 'strict'"
     . " WHERE instance_id = 'FREE00000003'");
Test::More::ok(wait_until(1.5, sub {
    http_get($p)->{body} =~ /"current_policy":"strict"/
}), 'TEST 8: a change arrives within 1.5 s');
--- request
GET /v2/session/rate-limit?instance_id=PAID00000003&access_token=paid-token-1002
--- error_code: 200
--- response_body_like: "current_policy":"standard_policy","has_active_plan":true,



=== TEST 9: a slow statement: 504 at query_timeout, other instances and the canary unaffected
SLOW00000001's lookup sleeps 3 s in PostgreSQL; query_timeout is 500 ms.
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=500ms;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
pg_ensure_up();
reset_fixtures();
slow_instance('SLOW00000001', 3, 1001, 'strict');
wait_listener();
Test::More::is(http_get(api_path('FREE00000001', 'free-token-1001'))->{status},
               200, 'TEST 9: catalogue loaded');
my @r = http_parallel([
    { path => api_path('SLOW00000001', 'free-token-1001') },
    { path => api_path('FREE00000002', 'free-token-1001'), delay => 0.1 },
    { path => api_path('PAID00000001', 'paid-token-1002'), delay => 0.2 },
    main::canaries(0.05, 8, 0.05),
], 10);
my $slow = shift @r;
main::t_status('TEST 9 (slow)', $slow, 504, $main::Timeout, 1.5);
Test::More::cmp_ok($slow->{elapsed}, '>', 0.3,
                   'TEST 9 (slow): not before the timeout');
my $f1 = shift @r;
my $f2 = shift @r;
Test::More::ok($f1->{status} == 200 && $f1->{elapsed} < $main::Fast,
               sprintf('TEST 9: another instance meanwhile: %s in %.3fs',
                       $f1->{status}, $f1->{elapsed}));
Test::More::ok($f2->{status} == 200 && $f2->{elapsed} < $main::Fast,
               sprintf('TEST 9: a third instance meanwhile: %s in %.3fs',
                       $f2->{status}, $f2->{elapsed}));
main::t_canaries('TEST 9', @r);
--- request
GET /v2/session/rate-limit?instance_id=SLOW00000001&access_token=free-token-1001
--- timeout: 3
--- error_code: 504
--- response_headers
Cache-Control: no-store
--- response_body eval
$main::Timeout
--- error_log eval
qr/timed out|statement timeout/



=== TEST 10: PostgreSQL frozen (SIGSTOP): cached served, uncached 504 at query_timeout, canary fast
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=500ms;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
pg_ensure_up();
restore_schema();
wait_listener();
Test::More::is(http_get(api_path('FREE00000002', 'free-token-1001'))->{status},
               200, 'TEST 10: warm');
pg_kill('STOP', 'all');
my @r = http_parallel([
    { path => api_path('FREE00000003', 'free-token-1001') },
    { path => api_path('FREE00000002', 'free-token-1001'), delay => 0.05 },
    main::canaries(0.05, 8, 0.05),
], 10);
main::t_status('TEST 10 (uncached)', shift @r, 504, $main::Timeout, 1.5);
my $c = shift @r;
Test::More::ok($c->{status} == 200 && $c->{elapsed} < $main::Fast,
               sprintf('TEST 10: cached instance: %s in %.3fs',
                       $c->{status}, $c->{elapsed}));
main::t_canaries('TEST 10', @r);
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",



=== TEST 11: PostgreSQL continued after SIGSTOP: served again without a reload
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=500ms;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
pg_ensure_up();
wait_listener();
Test::More::is(http_get(api_path('FREE00000002', 'free-token-1001'))->{status},
               200, 'TEST 11: warm');
pg_kill('STOP', 'all');
Test::More::is(http_get(api_path('FREE00000003', 'free-token-1001'))->{status},
               504, 'TEST 11: 504 while frozen');
pg_kill('CONT', 'all');
Test::More::ok(wait_until(5, sub {
    http_get(api_path('FREE00000003', 'free-token-1001'))->{status} == 200
}), 'TEST 11: 200 within 5 s of SIGCONT');
--- request
GET /v2/session/rate-limit?instance_id=FREE00000001&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"standard_policy",



=== TEST 12: a refused port: a fast 503, the canary unaffected
--- http_config
    ratelimit_policy_db "host=127.0.0.1 port=$TEST_NGINX_REFUSED_PORT dbname=ratelimit_test user=postgres";
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
my @r = http_parallel([
    { path => api_path('FREE00000002', 'free-token-1001') },
    { path => api_path('FREE00000003', 'free-token-1001'), delay => 0.1 },
    main::canaries(0, 5, 0.03),
]);
main::t_status('TEST 12 (first)', shift @r, 503, $main::Unavailable, $main::Fast);
main::t_status('TEST 12 (second)', shift @r, 503, $main::Unavailable, $main::Fast);
main::t_canaries('TEST 12', @r);
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- timeout: 1
--- error_code: 503
--- response_headers_like
Retry-After: \d+
--- response_body eval
$main::Unavailable



=== TEST 13: a port that accepts and never answers: 503 at connect_timeout, the canary unaffected
--- http_config
    ratelimit_policy_db "host=127.0.0.1 port=$TEST_NGINX_SILENT_PORT dbname=ratelimit_test user=postgres" connect_timeout=400ms query_timeout=3s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
my @r = http_parallel([
    { path => api_path('FREE00000002', 'free-token-1001') },
    main::canaries(0.05, 8, 0.05),
]);
my $x = shift @r;
main::t_status('TEST 13', $x, 503, $main::Unavailable, 1.2);
Test::More::cmp_ok($x->{elapsed}, '>', 0.3, 'TEST 13: not before connect_timeout');
main::t_canaries('TEST 13', @r);
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- timeout: 2
--- error_code: 503
--- response_body eval
$main::Unavailable
--- error_log
connecting to the database timed out



=== TEST 14: a port that accepts and never answers, query_timeout first: 504 at query_timeout
--- http_config
    ratelimit_policy_db "host=127.0.0.1 port=$TEST_NGINX_SILENT_PORT dbname=ratelimit_test user=postgres" connect_timeout=5s query_timeout=400ms;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
my @r = http_parallel([
    { path => api_path('FREE00000002', 'free-token-1001') },
    main::canaries(0.05, 8, 0.05),
]);
my $x = shift @r;
main::t_status('TEST 14', $x, 504, $main::Timeout, 1.2);
Test::More::cmp_ok($x->{elapsed}, '>', 0.3, 'TEST 14: not before query_timeout');
main::t_canaries('TEST 14', @r);
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- timeout: 2
--- error_code: 504
--- response_body eval
$main::Timeout
