# Where the instance id and the token are found in the query string: the
# first "instance_id" and "access_token" arguments, their names matched as
# nginx's $arg_NAME (ngx_http_arg) matches them: case-insensitively, at the
# start of an argument, followed by "=".  The module finds both in one pass
# over the arguments (ngx_http_ratelimit_policy_args); these blocks pin the
# behaviour down.  FREE00000002 holds "strict", FREE00000003
# "standard_policy" (t/fixtures.sql).

use lib 't/lib';
use RLP;
use RLPHelpers;

repeat_each(1);

plan tests => repeat_each() * 2 * 17;

reset_fixtures();

no_shuffle();
run_tests();

__DATA__

=== TEST 1: argument names are case-insensitive
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?INSTANCE_ID=FREE00000002&Access_Token=free-token-1001",
"GET /v2/session/rate-limit?Instance_Id=FREE00000003&ACCESS_TOKEN=free-token-1001",
]
--- error_code eval
[200, 200]
--- response_body_like eval
['"current_policy":"strict"', '"current_policy":"standard_policy"']



=== TEST 2: the first occurrence wins
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000002&instance_id=FREE00000003&access_token=free-token-1001",
"GET /v2/session/rate-limit?access_token=free-token-1001&instance_id=FREE00000003&access_token=other-token-1004&instance_id=FREE00000002",
]
--- error_code eval
[200, 200]
--- response_body_like eval
['"current_policy":"strict"', '"current_policy":"standard_policy"']



=== TEST 3: a name that ends another argument's name, or sits in a value, does not count
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?xinstance_id=FREE00000003&instance_id=FREE00000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?x=instance_id=FREE00000003&instance_id=FREE00000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?my_access_token=free-token-1001&instance_id=FREE00000002",
"GET /v2/session/rate-limit?instance_id=FREE00000002&y=access_token=free-token-1001",
]
--- error_code eval
[200, 200, 400, 400]
--- response_body_like eval
[
'"current_policy":"strict"',
'"current_policy":"strict"',
'"code":"missing_parameter","message":"access_token is required"',
'"code":"missing_parameter","message":"access_token is required"',
]



=== TEST 4: a name without "=" is no argument of that name; an empty first one is
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id&instance_id=FREE00000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=&instance_id=FREE00000002&access_token=free-token-1001",
"GET /v2/session/rate-limit?&&instance_id=FREE00000003&&access_token=free-token-1001&",
]
--- error_code eval
[200, 400, 200]
--- response_body_like eval
[
'"current_policy":"strict"',
'"code":"missing_parameter","message":"instance_id is required"',
'"current_policy":"standard_policy"',
]



=== TEST 5: an empty access_token argument leaves the Authorization header
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?access_token=&instance_id=FREE00000002",
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=wrong-token",
]
--- more_headers eval
[
"Authorization: Bearer free-token-1001",
"Authorization: Bearer free-token-1001",
]
--- error_code eval
[200, 401]
--- response_body_like eval
['"current_policy":"strict"', '"code":"invalid_token"']



=== TEST 6: the token is percent-decoded, the instance id is not
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000002&access_token=free%2Dtoken%2D1001",
"GET /v2/session/rate-limit?instance_id=FREE%300000002&access_token=free-token-1001",
]
--- error_code eval
[200, 400]
--- response_body_like eval
['"current_policy":"strict"', '"code":"invalid_instance_id"']



=== TEST 7: enforcement finds them the same way
--- config
    location /enforced {
        ratelimit_policy_enforce check;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream;
        add_header X-Instance $ratelimit_policy_instance;
    }

    location /upstream {
        return 200 "passed\n";
    }
--- request eval
[
"GET /enforced?Instance_Id=FREE00000003&x=1&ACCESS_TOKEN=free-token-1001",
"GET /enforced?instance_id=FREE00000003&access_token=free-token-1001&instance_id=FREE00000002",
]
--- error_code eval
[200, 200]
--- response_headers eval
["X-Instance: FREE00000003", "X-Instance: FREE00000003"]
