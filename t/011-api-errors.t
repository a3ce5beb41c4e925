# GET /v2/session/rate-limit: every error that applies to GET (DESIGN.md
# section 5), each with its status, its exact JSON body and its headers.
#
# The database errors use two ports of this test process:
# $TEST_NGINX_REFUSED_PORT, where nothing listens (connection refused), and
# $TEST_NGINX_SILENT_PORT, a socket that completes the TCP handshake (the
# kernel does it from the listen backlog) and never says a word; it is
# closed when this file ends.

use lib 't/lib';
use RLP;
use RLPHelpers;
use IO::Socket::INET;

repeat_each(2);

# per repetition: status + body per request, one per response_headers(_like)
# line, one per error_log / no_error_log pattern
plan tests => repeat_each() * 103;

our $Silent = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                    Listen => 64, ReuseAddr => 1)
    or die "cannot listen: $!";
$ENV{TEST_NGINX_SILENT_PORT} = $Silent->sockport;
$ENV{TEST_NGINX_REFUSED_PORT} = free_port();

reset_fixtures();

no_shuffle();
run_tests();

__DATA__

=== TEST 1: no query arguments: missing_parameter (instance_id)
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit
--- error_code: 400
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body chomp
{"status":"error","code":"missing_parameter","message":"instance_id is required"}
--- no_error_log
[error]



=== TEST 2: instance_id without a token: missing_parameter (access_token)
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000002",
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=",
]
--- error_code eval
[400, 400]
--- response_headers eval
["Cache-Control: no-store", "Cache-Control: no-store"]
--- response_body eval
[
'{"status":"error","code":"missing_parameter","message":"access_token is required"}',
'{"status":"error","code":"missing_parameter","message":"access_token is required"}',
]



=== TEST 3: a token without instance_id, or an empty one: missing_parameter (instance_id)
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=&access_token=free-token-1001",
]
--- error_code eval
[400, 400]
--- response_body eval
[
'{"status":"error","code":"missing_parameter","message":"instance_id is required"}',
'{"status":"error","code":"missing_parameter","message":"instance_id is required"}',
]



=== TEST 4: an Authorization header that is not "Bearer <token>" gives no token
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000002",
"GET /v2/session/rate-limit?instance_id=FREE00000002",
]
--- more_headers eval
[
"Authorization: Basic ZnJlZS10b2tlbi0xMDAx",
"Authorization: Bearer ",
]
--- error_code eval
[400, 400]
--- response_body eval
[
'{"status":"error","code":"missing_parameter","message":"access_token is required"}',
'{"status":"error","code":"missing_parameter","message":"access_token is required"}',
]



=== TEST 5: an instance id of 11 characters: invalid_instance_id
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=FREE0000002&access_token=free-token-1001
--- error_code: 400
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body chomp
{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}



=== TEST 6: an instance id of 13 characters: invalid_instance_id
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=FREE000000021&access_token=free-token-1001
--- error_code: 400
--- response_body chomp
{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}



=== TEST 7: 12 characters that are not all letters or digits: invalid_instance_id
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE-0000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE_0000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE.0000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE%C3%A900002&access_token=free-token-1001",
]
--- error_code eval
[400, 400, 400, 400]
--- response_body eval
[
'{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
'{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
'{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
'{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
]



=== TEST 8: %00 in the instance id: invalid_instance_id, nothing echoed
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000%00&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE0000000%00&access_token=free-token-1001",
]
--- error_code eval
[400, 400]
--- response_body eval
[
'{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
'{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
]



=== TEST 9: quotes in the instance id: invalid_instance_id, the JSON stays intact
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE0000000'&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE00000%22&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE0000000\"&access_token=free-token-1001",
]
--- error_code eval
[400, 400, 400]
--- response_body eval
[
'{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
'{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
'{"status":"error","code":"invalid_instance_id","message":"instance_id must be 12 letters or digits"}',
]



=== TEST 10: a wrong token for an existing instance: 401 invalid_token
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-100",
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=FREE-TOKEN-1001",
]
--- error_code eval
[401, 401]
--- response_headers eval
["Content-Type: application/json\nCache-Control: no-store",
 "Content-Type: application/json\nCache-Control: no-store"]
--- response_body eval
[
'{"status":"error","code":"invalid_token","message":"the access token is not valid for this instance"}',
'{"status":"error","code":"invalid_token","message":"the access token is not valid for this instance"}',
]
--- no_error_log
[error]



=== TEST 11: the token of another account: 401 invalid_token
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=OTHR00000001&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=lapsed-token-1003",
]
--- error_code eval
[401, 401]
--- response_body eval
[
'{"status":"error","code":"invalid_token","message":"the access token is not valid for this instance"}',
'{"status":"error","code":"invalid_token","message":"the access token is not valid for this instance"}',
]



=== TEST 12: an unknown instance with a valid token: 404 instance_not_found
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE0000000X&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE0000000X&access_token=paid-token-1002",
]
--- error_code eval
[404, 404]
--- response_headers eval
["Content-Type: application/json\nCache-Control: no-store",
 "Content-Type: application/json\nCache-Control: no-store"]
--- response_body eval
[
'{"status":"error","code":"instance_not_found","message":"no such instance for this account"}',
'{"status":"error","code":"instance_not_found","message":"no such instance for this account"}',
]



=== TEST 13: an unknown instance with an unknown token: 401, not 404
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=FREE0000000X&access_token=no-such-token
--- error_code: 401
--- response_body chomp
{"status":"error","code":"invalid_token","message":"the access token is not valid for this instance"}



=== TEST 14: a wrong Bearer token: 401 invalid_token
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=PAID00000001
--- more_headers
Authorization: Bearer free-token-1001
--- error_code: 401
--- response_body chomp
{"status":"error","code":"invalid_token","message":"the access token is not valid for this instance"}



=== TEST 15: POST: 405 method_not_allowed with Allow, the body is discarded
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
POST /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
{"policy_slug":"strict"}
--- more_headers
Content-Type: application/json
--- error_code: 405
--- response_headers
Allow: GET, HEAD, PATCH
Content-Type: application/json
Cache-Control: no-store
--- response_body chomp
{"status":"error","code":"method_not_allowed","message":"use GET, HEAD or PATCH"}



=== TEST 16: PUT, DELETE and OPTIONS: 405 method_not_allowed with Allow
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"PUT /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001",
"DELETE /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001",
"OPTIONS /v2/session/rate-limit",
]
--- error_code eval
[405, 405, 405]
--- response_headers eval
["Allow: GET, HEAD, PATCH", "Allow: GET, HEAD, PATCH", "Allow: GET, HEAD, PATCH"]
--- response_body eval
[
'{"status":"error","code":"method_not_allowed","message":"use GET, HEAD or PATCH"}',
'{"status":"error","code":"method_not_allowed","message":"use GET, HEAD or PATCH"}',
'{"status":"error","code":"method_not_allowed","message":"use GET, HEAD or PATCH"}',
]



=== TEST 17: database refused, nothing cached: 503 database_unavailable with Retry-After
--- http_config
    ratelimit_policy_db "host=127.0.0.1 port=$TEST_NGINX_REFUSED_PORT dbname=ratelimit_test user=postgres";
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 503
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_headers_like
Retry-After: \d+
--- response_body chomp
{"status":"error","code":"database_unavailable","message":"the database is unavailable, retry later"}



=== TEST 18: request errors are answered without the database
--- http_config
    ratelimit_policy_db "host=127.0.0.1 port=$TEST_NGINX_REFUSED_PORT dbname=ratelimit_test user=postgres";
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000002",
"GET /v2/session/rate-limit?instance_id=FREE0000002&access_token=x",
"DELETE /v2/session/rate-limit",
]
--- error_code eval
[400, 400, 405]
--- response_body_like eval
[qr/"missing_parameter"/, qr/"invalid_instance_id"/, qr/"method_not_allowed"/]



=== TEST 19: the database does not answer within query_timeout: 504 database_timeout
The server accepts the TCP connection and never answers; the query waits
for a connection longer than query_timeout (300 ms < connect_timeout).
--- http_config
    ratelimit_policy_db "host=127.0.0.1 port=$TEST_NGINX_SILENT_PORT dbname=ratelimit_test user=postgres" connect_timeout=5s query_timeout=300ms;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001
--- error_code: 504
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body chomp
{"status":"error","code":"database_timeout","message":"the database did not answer in time"}
--- error_log
timed out



=== TEST 20: HEAD with an error: the status and headers, no body
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request
HEAD /v2/session/rate-limit?instance_id=FREE00000002&access_token=wrong
--- error_code: 401
--- response_headers
Content-Type: application/json
Cache-Control: no-store
Content-Length: 101
--- response_body
