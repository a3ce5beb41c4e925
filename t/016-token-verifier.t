# A token that matched an entry's SHA-256 digest is recognised again by a
# keyed hash kept in the entry (no SHA-256 per request).  These blocks
# show that the shortcut never admits any other token, and that it is
# forgotten when the entry is reloaded (a rotated token).

use lib 't/lib';
use RLP;
use RLPHelpers;

repeat_each(1);

# 6 + 3 requests, a status and a body test each; TEST 2's init: 3;
# TEST 3: 8 requests, a status, a header and a body test each
plan tests => repeat_each() * (18 + 24) + 3;

END { reset_fixtures() }

no_shuffle();
run_tests();

__DATA__

=== TEST 1: after a verified token, a wrong token is still refused, on a cached entry
--- init
reset_fixtures();
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
 "GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001",
 "GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001",
 "GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1002",
 "GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-100",
 "GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=other-token-1004",
 "GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001",
]
--- error_code eval
[200, 200, 401, 401, 401, 200]
--- response_body_like eval
[
 qr/"current_policy":"strict"/,
 qr/"current_policy":"strict"/,
 qr/"code":"invalid_token"/,
 qr/"code":"invalid_token"/,
 qr/"code":"invalid_token"/,
 qr/"current_policy":"strict"/,
]



=== TEST 2: a rotated token: once the notification reloads the entry, the old one is refused
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=rl:1m;
    ratelimit_policy_cache_ttl 60s;
--- init
reset_fixtures();
wait_listener();
my $r = http_get(api_path('OTHR00000001', 'other-token-1004'));
Test::More::is($r->{status}, 200, 'the old token is verified and remembered');
$r = http_get(api_path('OTHR00000001', 'other-token-1004'));
Test::More::is($r->{status}, 200, 'and recognised again');
psql("UPDATE ratelimit.accounts SET access_token_sha256 ="
     . " sha256(convert_to('rotated-token-1004', 'UTF8'))"
     . " WHERE account_id = 1004");
Test::More::ok(wait_until(2, sub {
    http_get(api_path('OTHR00000001', 'other-token-1004'))->{status} == 401
}), 'the old token is refused within 2 s');
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
 "GET /v2/session/rate-limit?instance_id=OTHR00000001&access_token=rotated-token-1004",
 "GET /v2/session/rate-limit?instance_id=OTHR00000001&access_token=other-token-1004",
 "GET /v2/session/rate-limit?instance_id=OTHR00000001&access_token=rotated-token-1004",
]
--- error_code eval
[200, 401, 200]
--- response_body_like eval
[
 qr/"current_policy":"strict"/,
 qr/"code":"invalid_token"/,
 qr/"current_policy":"strict"/,
]



=== TEST 3: enforcement: a request answered from the zone checks the token, and sets $ratelimit_policy
The second request of each instance is decided in one critical section
from the zone (the token known by its keyed hash): a wrong token there is
still refused, and $ratelimit_policy is the effective policy on both
paths: the stored one (strict), or the default (standard_policy) for a
paid policy whose plan has ended.
--- config
    location /upstream/ { return 200 "upstream\n"; }
    location /send {
        add_header X-Policy "$ratelimit_policy" always;
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }
--- request eval
[
 "GET /send?instance_id=FREE00000002&access_token=free-token-1001",
 "GET /send?instance_id=FREE00000002&access_token=free-token-1001",
 "GET /send?instance_id=FREE00000002&access_token=free-token-1002",
 "GET /send?instance_id=FREE00000002&access_token=other-token-1004",
 "GET /send?instance_id=FREE00000002&access_token=free-token-1001",
 "GET /send?instance_id=LAPS00000001&access_token=lapsed-token-1003",
 "GET /send?instance_id=LAPS00000001&access_token=lapsed-token-1003",
 "GET /send?instance_id=LAPS00000001&access_token=free-token-1001",
]
--- error_code eval
[200, 200, 401, 401, 200, 200, 200, 401]
--- response_headers eval
[
 "X-Policy: strict",
 "X-Policy: strict",
 "!X-Policy",
 "!X-Policy",
 "X-Policy: strict",
 "X-Policy: standard_policy",
 "X-Policy: standard_policy",
 "!X-Policy",
]
--- response_body_like eval
[
 qr/^upstream$/,
 qr/^upstream$/,
 qr/"code":"invalid_token"/,
 qr/"code":"invalid_token"/,
 qr/^upstream$/,
 qr/^upstream$/,
 qr/^upstream$/,
 qr/"code":"invalid_token"/,
]
