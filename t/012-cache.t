# The entitlement cache and the policy catalogue in the zone (DESIGN.md
# section 7): hits never reach PostgreSQL, misses make one query however
# many requests wait for it, negative answers are remembered for the
# negative TTL, entries expire after cache_ttl, and changes made in the
# database arrive through NOTIFY or, failing that, after cache_ttl.
#
# Queries are counted by pg_stat_statements (util/test preloads it):
# rlp_test.module_queries() gives "lookups=N catalogues=M" for the
# module's two read statements.  Every block waits for the module's LISTEN
# connection first (its start-up resync invalidates the whole cache once),
# then resets the statistics.
#
# nginx runs with a master and two workers sharing the zone, so hits,
# misses and waits also cross workers.
#
# Requests that must be in flight together are sent from --- init by
# http_parallel() (t/lib/RLPHelpers.pm), each on its own connection, all
# written before any answer is read; the lookup of that instance is made
# slow (rlp_test.slow() in the entitlement view), so they really overlap
# the one query that serves them all.

use lib 't/lib';
use RLP;
use RLPHelpers;
use List::Util ();

master_on();
workers(2);
repeat_each(1);

# runner tests: status + body per request, one per response_headers line,
# one per db_check; plus the Test::More checks made in --- init (36)
plan tests => 120;

reset_fixtures();
install_counters();

END {
    local ($?, $@);
    eval { pg_ensure_up(); reset_fixtures(); 1 };
}

# a full zone: unknown instances NOPE<n> (n from $n + 1), each its own
# lookup and entry, until the first eviction; returns how many it took
sub main::evictions {
    my ($n) = http_get('/metrics')->{body}
        =~ /^nginx_ratelimit_policy_zone_evictions_total (\d+)$/m;
    return $n;
}

sub main::fill_until_eviction {
    my ($n) = @_;
    my $i = $n;
    while (main::evictions() == 0 && $i < $n + 3000) {
        $i++;
        http_get(api_path(sprintf('NOPE%08d', $i), 'free-token-1001'));
    }
    return $i - $n;
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: ten GETs of one instance make one lookup and one catalogue query
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
wait_listener();
pg_stat_reset();
--- request eval
[ map { "GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001" } 1 .. 10 ]
--- error_code eval
[ (200) x 10 ]
--- response_body_like eval
[ (qr/^\{"status":"success","current_policy":"strict",/) x 10 ]
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=1 catalogues=1



=== TEST 2: one catalogue query serves every instance
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
wait_listener();
pg_stat_reset();
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000001&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002",
"GET /v2/session/rate-limit?instance_id=LAPS00000001&access_token=lapsed-token-1003",
"GET /v2/session/rate-limit?instance_id=FREE00000001&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002",
]
--- error_code eval
[ (200) x 6 ]
--- response_body_like eval
[
qr/"current_policy":"standard_policy"/,
qr/"current_policy":"strict"/,
qr/"current_policy":"business"/,
qr/"current_policy":"standard_policy".*"stored_policy":"high_throughput"\}$/,
qr/"current_policy":"standard_policy"/,
qr/"current_policy":"business"/,
]
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=4 catalogues=1



=== TEST 3: a wrong token for a cached instance is refused from the cache
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
wait_listener();
pg_stat_reset();
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=wrong-1",
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=wrong-2",
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=paid-token-1002",
]
--- error_code eval
[200, 401, 401, 401]
--- response_body_like eval
[qr/"success"/, qr/"invalid_token"/, qr/"invalid_token"/, qr/"invalid_token"/]
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=1 catalogues=1



=== TEST 4: an unknown instance with an unknown token is looked up once (negative cache)
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 30s negative=30s;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
wait_listener();
pg_stat_reset();
--- request eval
[ map { "GET /v2/session/rate-limit?instance_id=NONE00000001&access_token=no-such-token" } 1 .. 5 ]
--- error_code eval
[ (401) x 5 ]
--- response_body_like eval
[ (qr/"invalid_token"/) x 5 ]
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=1 catalogues=1



=== TEST 5: an unknown instance with a valid token is looked up once (404 cached)
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
wait_listener();
pg_stat_reset();
--- request eval
[ map { "GET /v2/session/rate-limit?instance_id=NONE00000002&access_token=free-token-1001" } 1 .. 4 ]
--- error_code eval
[ (404) x 4 ]
--- response_body_like eval
[ (qr/"instance_not_found"/) x 4 ]
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=1 catalogues=1



=== TEST 6: after the negative TTL the unknown instance is looked up again
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 30s negative=500ms;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
wait_listener();
pg_stat_reset();
my $p = api_path('NONE00000003', 'no-such-token');
Test::More::is(http_get($p)->{status}, 401, 'TEST 6: first 401');
Test::More::is(http_get($p)->{status}, 401, 'TEST 6: second 401');
Test::More::is(lookups(), 1, 'TEST 6: one lookup within the negative TTL');
Time::HiRes::sleep(0.7);
--- request
GET /v2/session/rate-limit?instance_id=NONE00000003&access_token=no-such-token
--- error_code: 401
--- response_body_like: "invalid_token"
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=2 catalogues=1



=== TEST 7: after cache_ttl a cached instance is looked up again
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 700ms;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
wait_listener();
pg_stat_reset();
my $p = api_path('FREE00000002', 'free-token-1001');
Test::More::is(http_get($p)->{status}, 200, 'TEST 7: first 200');
Test::More::is(http_get($p)->{status}, 200, 'TEST 7: second 200');
Test::More::is(lookups(), 1, 'TEST 7: one lookup within cache_ttl');
Time::HiRes::sleep(0.9);
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 200
--- response_body_like: "current_policy":"strict"
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=2 catalogues=2



=== TEST 8: a change made without NOTIFY shows once cache_ttl has passed, not before
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 1s;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
psql("INSERT INTO ratelimit.instances VALUES ('TTLC00000001', 1001, 'standard_policy')"
     . " ON CONFLICT (instance_id) DO UPDATE SET policy_slug = 'standard_policy'");
wait_listener();
my $p = api_path('TTLC00000001', 'free-token-1001');
Test::More::like(http_get($p)->{body}, qr/"current_policy":"standard_policy"/,
                 'TEST 8: before the change');
without_notify("UPDATE ratelimit.instances SET policy_slug = 'strict'"
               . " WHERE instance_id = 'TTLC00000001'");
Test::More::like(http_get($p)->{body}, qr/"current_policy":"standard_policy"/,
                 'TEST 8: the fresh entry is still served');
Time::HiRes::sleep(1.2);
--- request
GET /v2/session/rate-limit?instance_id=TTLC00000001&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",



=== TEST 9: an instance created after a 404 is found at once (NOTIFY), not after the negative TTL
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 60s negative=60s;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
psql("DELETE FROM ratelimit.instances WHERE instance_id = 'NEWW00000001'");
wait_listener();
my $p = api_path('NEWW00000001', 'free-token-1001');
Test::More::is(http_get($p)->{status}, 404, 'TEST 9: 404 before');
psql("INSERT INTO ratelimit.instances VALUES ('NEWW00000001', 1001, 'strict')");
Test::More::ok(wait_until(1.5, sub { http_get($p)->{status} == 200 }),
               'TEST 9: 200 within 1.5 s');
--- request
GET /v2/session/rate-limit?instance_id=NEWW00000001&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",



=== TEST 10: a catalogue change (NOTIFY "*") reloads the catalogue
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
reset_fixtures();
wait_listener();
my $p = api_path('ZERO00000001', 'zero-token-1005');
Test::More::like(http_get($p)->{body}, qr/"name":"Zero",/,
                 'TEST 10: before the change');
psql("UPDATE ratelimit.policies SET name = 'Zero (renamed)'"
     . " WHERE slug = 'zero_policy'");
Test::More::ok(wait_until(1.5, sub { http_get($p)->{body} =~ /"Zero \(renamed\)"/ }),
               'TEST 10: the new name within 1.5 s');
--- request
GET /v2/session/rate-limit?instance_id=ZERO00000001&access_token=zero-token-1005
--- error_code: 200
--- response_body_like: "current_policy":"zero_policy".*"name":"Zero \(renamed\)","slug":"zero_policy"



=== TEST 11: ten concurrent requests for one uncached instance make one lookup
The lookup of CONC00000001 takes 0.5 s, so all ten requests are in flight
while the one query runs; the catalogue is loaded before.
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
reset_fixtures();
slow_instance('CONC00000001', 0.5, 1001, 'strict');
wait_listener();
Test::More::is(http_get(api_path('FREE00000001', 'free-token-1001'))->{status},
               200, 'TEST 11: catalogue loaded');
pg_stat_reset();
my $p = api_path('CONC00000001', 'free-token-1001');
my @r = http_parallel([ map { { path => $p } } 1 .. 10 ]);
Test::More::is(join(',', map { $_->{status} } @r), join(',', (200) x 10),
               'TEST 11: ten 200s');
Test::More::is(scalar(grep { $_->{body} =~ /"current_policy":"strict"/ } @r),
               10, 'TEST 11: ten documents');
Test::More::is(lookups(), 1, 'TEST 11: one lookup for ten requests');
my $max = List::Util::max(map { $_->{elapsed} } @r);
Test::More::cmp_ok($max, '<', 2, "TEST 11: all answered within 2 s ($max)");
--- request
GET /v2/session/rate-limit?instance_id=CONC00000001&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=1 catalogues=0



=== TEST 12: concurrent requests with right and wrong tokens share one lookup
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
slow_instance('CONC00000002', 0.5, 1002, 'business');
wait_listener();
Test::More::is(http_get(api_path('FREE00000001', 'free-token-1001'))->{status},
               200, 'TEST 12: catalogue loaded');
pg_stat_reset();
my @r = http_parallel([ map {
    { path => api_path('CONC00000002',
                       $_ % 2 ? 'paid-token-1002' : 'free-token-1001') }
} 1 .. 8 ]);
Test::More::is(join(',', map { $_->{status} } @r),
               '200,401,200,401,200,401,200,401', 'TEST 12: statuses');
Test::More::is(lookups(), 1, 'TEST 12: one lookup for eight requests');
restore_schema();
--- request
GET /v2/session/rate-limit?instance_id=CONC00000002&access_token=paid-token-1002
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"business","has_active_plan":true,



=== TEST 13: a full zone evicts the least recently used entries
In a 64 KB zone: FREE00000002 (A), then FREE00000003 (B), then ten unknown
instances; more than a second later, A is read again, so it moves to the
head of the LRU queue.  Unknown instances then fill the zone until the
first eviction: B, the oldest entry nobody used since, goes, and A stays.
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=lru13:64k;
    ratelimit_policy_cache_ttl 60s negative=60s;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /metrics { ratelimit_policy_metrics; }
--- init
wait_listener();
pg_stat_reset();
my $a = api_path('FREE00000002', 'free-token-1001');
my $b = api_path('FREE00000003', 'free-token-1001');
my @st = map { http_get($_)->{status} } $a, $b,
    map { api_path(sprintf('NOPE%08d', $_), 'free-token-1001') } 1 .. 10;
Test::More::is("@st", '200 200' . ' 404' x 10, 'TEST 13: A, B, ten unknown');
Time::HiRes::sleep(1.2);
Test::More::is(http_get($a)->{status}, 200, 'TEST 13: A read again');
my $before = lookups();
Test::More::is($before, 12, 'TEST 13: a hit, no lookup');
my $n = main::fill_until_eviction(10);
Test::More::cmp_ok(main::evictions(), '>', 0,
                   "TEST 13: evictions after $n more unknown instances");
my $l = lookups();
Test::More::is(http_get($a)->{status}, 200, 'TEST 13: A');
Test::More::is(lookups(), $l, 'TEST 13: A still cached');
Test::More::is(http_get($b)->{status}, 200, 'TEST 13: B');
Test::More::is(lookups(), $l + 1, 'TEST 13: B was evicted, looked up again');
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",



=== TEST 14: an entry moves in the LRU queue at most once a second
A read again within a second of its lookup stays where it was, at the
tail of the queue behind ten unknown instances: the first eviction takes
it.  Moving every entry on every hit would write, each time, two other
entries (its neighbours in the queue), cache misses nearly every time.
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=lru14:64k;
    ratelimit_policy_cache_ttl 60s negative=60s;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /metrics { ratelimit_policy_metrics; }
--- init
wait_listener();
pg_stat_reset();
my $a = api_path('FREE00000002', 'free-token-1001');
my $t0 = Time::HiRes::time();
my @st = map { http_get($_)->{status} } $a,
    map { api_path(sprintf('NOPE%08d', $_), 'free-token-1001') } 1 .. 10;
push @st, http_get($a)->{status};
my $t = Time::HiRes::time() - $t0;
Test::More::is("@st", '200' . ' 404' x 10 . ' 200',
               'TEST 14: A, ten unknown, A again');
main::fill_until_eviction(10);
Test::More::cmp_ok(main::evictions(), '>', 0, 'TEST 14: evictions');
my $l = lookups();
Test::More::is(http_get($a)->{status}, 200, 'TEST 14: A');
SKIP: {
    Test::More::skip(sprintf('A was read again %.2f s after its lookup', $t), 1)
        if $t >= 0.9;
    Test::More::is(lookups(), $l + 1, 'TEST 14: A was evicted first, looked up again');
}
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",



=== TEST 15: the zone asks for huge pages
The zone's mapping (2 MB here, the only shared mapping of that size:
under AddressSanitizer, nginx has private ones of 2 MB too) is advised
MADV_HUGEPAGE ("hg" in VmFlags), made before the master forks the
workers, which share it: where shmem_enabled is "advise", it is then
backed by huge pages, and the instances in use take fewer TLB entries.
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=huge15:2m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
my $pid = master_pid();
SKIP: {
    Test::More::skip('no transparent huge pages in this kernel', 2)
        unless -d '/sys/kernel/mm/transparent_hugepage';
    open my $in, '<', "/proc/$pid/smaps" or die "/proc/$pid/smaps: $!";
    my ($size, @flags);
    while (<$in>) {
        $size = $1 if /^Size:\s+(\d+) kB/;
        push @flags, $1 if /^VmFlags:\s*(.*\bsh\b.*)$/ && $size == 2048;
    }
    close $in;
    Test::More::is(scalar(@flags), 1, 'TEST 15: one shared mapping of 2 MB');
    Test::More::like($flags[0] // '', qr/\bhg\b/,
                     'TEST 15: advised MADV_HUGEPAGE');
}
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",
