# GET / HEAD /v2/session/rate-limit: the success document of DESIGN.md
# section 5, byte for byte, for every kind of account in t/fixtures.sql,
# where the instance id and the token come from, the response headers and
# the module's variables.
#
# Two documents (TEST 1 and TEST 5) are spelled out literally; the others
# are put together by doc() below from the same literal policy objects, so
# that a change of one policy shows in one place.  Each block runs twice
# (repeat_each): once from PostgreSQL, once from the cache.

use lib 't/lib';
use RLP;
use RLPHelpers;

repeat_each(2);

# runner: per repetition a status and a body test per request, one per
# response_headers line, one per error_log / no_error_log pattern;
# TEST 16's --- init makes 2 more tests (once).
plan tests => repeat_each() * 66 + 2;

our %Policy = (
    strict => '{"id":1,"name":"Strict","slug":"strict","description":'
        . '"Conservative limits for fresh or sensitive accounts.","limits":'
        . '{"send_message_per_minute":8,"send_message_daily_cap":200,'
        . '"account_protection_seconds":60,"concurrent_limit":1},'
        . '"available":true}',
    standard_policy => '{"id":2,"name":"Standard","slug":"standard_policy",'
        . '"description":"Balanced limits for everyday messaging; the default'
        . ' for new sessions.","limits":{"send_message_per_minute":20,'
        . '"send_message_daily_cap":1000,"account_protection_seconds":30,'
        . '"concurrent_limit":2,"group_req_per_minute":10,'
        . '"group_daily_cap":200,"check_req_per_minute":20,'
        . '"check_daily_cap":500},"available":true}',
    business => '{"id":3,"name":"Business","slug":"business","description":'
        . '"Higher limits for established business accounts with an active'
        . ' plan.","limits":{"send_message_per_minute":60,'
        . '"send_message_daily_cap":10000,"account_protection_seconds":15,'
        . '"concurrent_limit":5,"group_req_per_minute":30,'
        . '"group_daily_cap":2000,"check_req_per_minute":60,'
        . '"check_daily_cap":5000},"available":PLAN}',
    high_throughput => '{"id":4,"name":"High throughput","slug":'
        . '"high_throughput","description":"Bulk-capable limits for'
        . ' high-volume senders with a warmed-up number.","limits":'
        . '{"send_message_per_minute":300,"send_message_daily_cap":100000,'
        . '"account_protection_seconds":5,"concurrent_limit":20,'
        . '"group_req_per_minute":120,"group_daily_cap":20000,'
        . '"check_req_per_minute":300,"check_daily_cap":50000},'
        . '"available":PLAN}',
    unlimited => '{"id":5,"name":"Unlimited","slug":"unlimited",'
        . '"description":"No limits enforced by the gateway; use with care.",'
        . '"limits":{},"available":PLAN}',
    zero_policy => '{"id":100,"name":"Zero","slug":"zero_policy",'
        . '"description":"Test policy: every limit is 0, nothing is allowed.",'
        . '"limits":{"send_message_per_minute":0,"send_message_daily_cap":0,'
        . '"account_protection_seconds":0,"concurrent_limit":0,'
        . '"group_req_per_minute":0,"group_daily_cap":0,'
        . '"check_req_per_minute":0,"check_daily_cap":0},"available":PLAN}',
);

# in (sort_order, id) order
our @Order = qw(strict standard_policy business high_throughput unlimited
                zero_policy);

sub doc {
    my ($current, $plan, $stored) = @_;
    my $b = $plan ? 'true' : 'false';
    my $i = 0;
    my $policies = join ',', map {
        (my $p = $Policy{$_}) =~ s/PLAN/$b/;
        '"' . $i++ . '":' . $p;
    } @Order;
    return qq({"status":"success","current_policy":"$current",)
           . qq("has_active_plan":$b,)
           . qq("free_policies":{"0":"strict","1":"standard_policy"},)
           . qq("policies":{$policies})
           . (defined $stored ? qq(,"stored_policy":"$stored") : '')
           . '}';
}

reset_fixtures();

END {
    local ($?, $@);
    eval { reset_fixtures(); 1 };
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: free account, stored free policy: the exact document
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 200
--- response_headers
Content-Type: application/json
Cache-Control: no-store
Content-Length: 2024
--- response_body chomp
{"status":"success","current_policy":"strict","has_active_plan":false,"free_policies":{"0":"strict","1":"standard_policy"},"policies":{"0":{"id":1,"name":"Strict","slug":"strict","description":"Conservative limits for fresh or sensitive accounts.","limits":{"send_message_per_minute":8,"send_message_daily_cap":200,"account_protection_seconds":60,"concurrent_limit":1},"available":true},"1":{"id":2,"name":"Standard","slug":"standard_policy","description":"Balanced limits for everyday messaging; the default for new sessions.","limits":{"send_message_per_minute":20,"send_message_daily_cap":1000,"account_protection_seconds":30,"concurrent_limit":2,"group_req_per_minute":10,"group_daily_cap":200,"check_req_per_minute":20,"check_daily_cap":500},"available":true},"2":{"id":3,"name":"Business","slug":"business","description":"Higher limits for established business accounts with an active plan.","limits":{"send_message_per_minute":60,"send_message_daily_cap":10000,"account_protection_seconds":15,"concurrent_limit":5,"group_req_per_minute":30,"group_daily_cap":2000,"check_req_per_minute":60,"check_daily_cap":5000},"available":false},"3":{"id":4,"name":"High throughput","slug":"high_throughput","description":"Bulk-capable limits for high-volume senders with a warmed-up number.","limits":{"send_message_per_minute":300,"send_message_daily_cap":100000,"account_protection_seconds":5,"concurrent_limit":20,"group_req_per_minute":120,"group_daily_cap":20000,"check_req_per_minute":300,"check_daily_cap":50000},"available":false},"4":{"id":5,"name":"Unlimited","slug":"unlimited","description":"No limits enforced by the gateway; use with care.","limits":{},"available":false},"5":{"id":100,"name":"Zero","slug":"zero_policy","description":"Test policy: every limit is 0, nothing is allowed.","limits":{"send_message_per_minute":0,"send_message_daily_cap":0,"account_protection_seconds":0,"concurrent_limit":0,"group_req_per_minute":0,"group_daily_cap":0,"check_req_per_minute":0,"check_daily_cap":0},"available":false}}}
--- no_error_log
[error]



=== TEST 2: free account, NULL policy: the default standard_policy, no stored_policy
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=FREE00000001&access_token=free-token-1001
--- error_code: 200
--- response_body eval
main::doc('standard_policy', 0)
--- no_error_log
[error]



=== TEST 3: paid account with an active plan: business, every policy available
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002
--- error_code: 200
--- response_body eval
main::doc('business', 1)
--- no_error_log
[error]



=== TEST 4: active plan, NULL policy: the default, and no stored_policy
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=PAID00000003&access_token=paid-token-1002
--- error_code: 200
--- response_body eval
main::doc('standard_policy', 1)
--- no_error_log
[error]



=== TEST 5: lapsed plan: the default is effective, the paid one is stored_policy
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=LAPS00000001&access_token=lapsed-token-1003
--- error_code: 200
--- response_headers
Content-Length: 2067
--- response_body chomp
{"status":"success","current_policy":"standard_policy","has_active_plan":false,"free_policies":{"0":"strict","1":"standard_policy"},"policies":{"0":{"id":1,"name":"Strict","slug":"strict","description":"Conservative limits for fresh or sensitive accounts.","limits":{"send_message_per_minute":8,"send_message_daily_cap":200,"account_protection_seconds":60,"concurrent_limit":1},"available":true},"1":{"id":2,"name":"Standard","slug":"standard_policy","description":"Balanced limits for everyday messaging; the default for new sessions.","limits":{"send_message_per_minute":20,"send_message_daily_cap":1000,"account_protection_seconds":30,"concurrent_limit":2,"group_req_per_minute":10,"group_daily_cap":200,"check_req_per_minute":20,"check_daily_cap":500},"available":true},"2":{"id":3,"name":"Business","slug":"business","description":"Higher limits for established business accounts with an active plan.","limits":{"send_message_per_minute":60,"send_message_daily_cap":10000,"account_protection_seconds":15,"concurrent_limit":5,"group_req_per_minute":30,"group_daily_cap":2000,"check_req_per_minute":60,"check_daily_cap":5000},"available":false},"3":{"id":4,"name":"High throughput","slug":"high_throughput","description":"Bulk-capable limits for high-volume senders with a warmed-up number.","limits":{"send_message_per_minute":300,"send_message_daily_cap":100000,"account_protection_seconds":5,"concurrent_limit":20,"group_req_per_minute":120,"group_daily_cap":20000,"check_req_per_minute":300,"check_daily_cap":50000},"available":false},"4":{"id":5,"name":"Unlimited","slug":"unlimited","description":"No limits enforced by the gateway; use with care.","limits":{},"available":false},"5":{"id":100,"name":"Zero","slug":"zero_policy","description":"Test policy: every limit is 0, nothing is allowed.","limits":{"send_message_per_minute":0,"send_message_daily_cap":0,"account_protection_seconds":0,"concurrent_limit":0,"group_req_per_minute":0,"group_daily_cap":0,"check_req_per_minute":0,"check_daily_cap":0},"available":false}},"stored_policy":"high_throughput"}



=== TEST 6: active plan, unlimited policy: current_policy unlimited
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=PAID00000002&access_token=paid-token-1002
--- error_code: 200
--- response_body eval
main::doc('unlimited', 1)



=== TEST 7: ratelimit_policy_default strict replaces the default everywhere it applies
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_default strict;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000001&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=LAPS00000001&access_token=lapsed-token-1003",
"GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001",
]
--- error_code eval
[200, 200, 200]
--- response_body eval
[
main::doc('strict', 0),
main::doc('strict', 0, 'high_throughput'),
main::doc('standard_policy', 0),
]



=== TEST 8: HEAD: the headers of GET, the same Content-Length, no body
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
HEAD /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 200
--- response_headers
Content-Type: application/json
Cache-Control: no-store
Content-Length: 2024
--- response_body



=== TEST 9: the token from Authorization: Bearer
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=PAID00000001
--- more_headers
Authorization: Bearer paid-token-1002
--- error_code: 200
--- response_body eval
main::doc('business', 1)



=== TEST 10: the Bearer scheme name is case-insensitive
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002
--- more_headers
Authorization: bearer free-token-1001
--- error_code: 200
--- response_body eval
main::doc('strict', 0)



=== TEST 11: the access_token query argument wins over Authorization
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=paid-token-1002",
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001",
]
--- more_headers eval
[
"Authorization: Bearer free-token-1001",
"Authorization: Bearer paid-token-1002",
]
--- error_code eval
[401, 200]
--- response_body eval
[
'{"status":"error","code":"invalid_token","message":"the access token is not valid for this instance"}',
main::doc('strict', 0),
]



=== TEST 12: a %-escaped token in the query is unescaped before it is hashed
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free%2Dtoken%2d1001
--- error_code: 200
--- response_body eval
main::doc('strict', 0)



=== TEST 13: ratelimit_policy_instance / _token take the values from elsewhere
--- config
    location = /v2/session/rate-limit {
        ratelimit_policy_instance $http_x_instance;
        ratelimit_policy_token $http_x_token;
        ratelimit_policy_api;
    }
--- request eval
[
"GET /v2/session/rate-limit",
"GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002",
]
--- more_headers eval
[
"X-Instance: PAID00000001\nX-Token: paid-token-1002",
"",
]
--- error_code eval
[200, 400]
--- response_body eval
[
main::doc('business', 1),
'{"status":"error","code":"missing_parameter","message":"instance_id is required"}',
]



=== TEST 14: ratelimit_policy_instance / _token inherited from the server level
--- config
    ratelimit_policy_instance $cookie_inst;
    ratelimit_policy_token $cookie_tok;
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
    }
--- request
GET /v2/session/rate-limit
--- more_headers
Cookie: inst=LAPS00000001; tok=lapsed-token-1003
--- error_code: 200
--- response_body eval
main::doc('standard_policy', 0, 'high_throughput')



=== TEST 15: $ratelimit_policy is the effective policy, $ratelimit_policy_instance the id
--- config
    location = /v2/session/rate-limit {
        add_header X-Policy "$ratelimit_policy" always;
        add_header X-Instance "$ratelimit_policy_instance" always;
        ratelimit_policy_api;
    }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=LAPS00000001&access_token=lapsed-token-1003",
"GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=bad&access_token=free-token-1001",
]
--- error_code eval
[200, 401, 400]
--- response_headers eval
[
"X-Policy: standard_policy\nX-Instance: LAPS00000001",
"!X-Policy\nX-Instance: PAID00000001",
"!X-Policy\n!X-Instance",
]
--- response_body_like eval
[qr/^\{"status":"success"/, qr/"invalid_token"/, qr/"invalid_instance_id"/]



=== TEST 16: a policy changed in the database is served by the next request
Between the two requests (the first one in --- init) the instance's policy
changes with psql.  The cached entry is fresh (30 s), so the change must
arrive through the NOTIFY trigger and the module's LISTEN connection.
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- init
reset_fixtures();
wait_listener();
my $path = api_path('FREE00000003', 'free-token-1001');
my $r = http_get($path);
Test::More::is($r->{body}, main::doc('standard_policy', 0),
               'TEST 16: before the change');
psql("UPDATE ratelimit.instances SET policy_slug = 'strict'"
     . " WHERE instance_id = 'FREE00000003'");
Test::More::ok(wait_until(1.5, sub {
    http_get($path)->{body} =~ /"current_policy":"strict"/
}), 'TEST 16: the change arrives within 1.5 s');
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- error_code: 200
--- response_body eval
main::doc('strict', 0)
--- no_error_log
[error]



=== TEST 17: two requests on one keepalive connection
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- pipelined_requests eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002",
]
--- error_code eval
[200, 200]
--- response_body eval
[main::doc('strict', 0), main::doc('business', 1)]
