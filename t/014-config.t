# Bad configurations: `nginx -t` must refuse them with a message naming
# the directive and the problem (DESIGN.md section 3).  The messages are
# those of ngx_http_ratelimit_policy_module.c and src/..._pg.c; nginx adds
# " in <file>:<line>" after each, on the same line (TEST 16 and 17 check
# that a message of libpq does not break the line).  The last blocks are
# configurations that must be accepted.

use lib 't/lib';
use RLP;

repeat_each(1);

# must_die blocks: 1 + one per error_log pattern; the others: see the end
plan tests => 80;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: ratelimit_policy_api without ratelimit_policy_db
--- http_config
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- must_die
--- error_log
[emerg]
"ratelimit_policy_api" requires "ratelimit_policy_db"



=== TEST 2: ratelimit_policy_api without ratelimit_policy_zone
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- must_die
--- error_log
[emerg]
"ratelimit_policy_api" requires "ratelimit_policy_zone"



=== TEST 3: ratelimit_policy_zone twice
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_zone zone=other:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- must_die
--- error_log
"ratelimit_policy_zone" directive is duplicate



=== TEST 4: a zone that is too small
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:32k;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
--- must_die
--- error_log eval
qr/\[emerg\] .*zone "zone=ratelimit:32k" is too small, it must be at least \d+ bytes/



=== TEST 5: a zone without "zone="
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone ratelimit:8m;
--- config
--- must_die
--- error_log
invalid parameter "ratelimit:8m"



=== TEST 6: a zone without a size
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit;
--- config
--- must_die
--- error_log
invalid zone size "zone=ratelimit"



=== TEST 7: a zone with a bad size
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8x;
--- config
--- must_die
--- error_log
invalid zone size "zone=ratelimit:8x"



=== TEST 8: a zone without a name
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=:8m;
--- config
--- must_die
--- error_log
invalid zone name "zone=:8m"



=== TEST 9: an unknown ratelimit_policy_db parameter
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=2 timeout=1s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
invalid parameter "timeout=1s"



=== TEST 10: pool=0
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=0;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
invalid pool size "pool=0", it must be from 1 to 256



=== TEST 11: pool=257
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=257;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
invalid pool size "pool=257", it must be from 1 to 256



=== TEST 12: a pool size that is not a number
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=four;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
invalid pool size "pool=four"



=== TEST 13: a bad queue size
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" queue=-1;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
invalid queue size "queue=-1", it must be from 0 to 65536



=== TEST 13b: pipeline=0
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pipeline=0;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
invalid pipeline depth "pipeline=0", it must be from 1 to 256



=== TEST 13c: a pipeline depth that is not a number
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pipeline=8x;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
invalid pipeline depth "pipeline=8x"



=== TEST 14: a bad connect_timeout
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" connect_timeout=soon;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
invalid connect_timeout "connect_timeout=soon"



=== TEST 15: query_timeout=0
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=0;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
invalid query_timeout "query_timeout=0"



=== TEST 16: a connection string libpq cannot parse
--- http_config
    ratelimit_policy_db "host=127.0.0.1 port";
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid connection string "host=127\.0\.0\.1 port": missing "=" after "port" in connection info string in \S+:\d+$/



=== TEST 17: an unknown connection string keyword
--- http_config
    ratelimit_policy_db "host=127.0.0.1 no_such_keyword=1";
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid connection string "host=127\.0\.0\.1 no_such_keyword=1": invalid connection option "no_such_keyword" in \S+:\d+$/



=== TEST 18: an empty connection string
--- http_config
    ratelimit_policy_db "";
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
empty connection string



=== TEST 19: ratelimit_policy_db twice
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
--- must_die
--- error_log
"ratelimit_policy_db" directive is duplicate



=== TEST 20: ratelimit_policy_db in a server block
--- http_config
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
--- must_die
--- error_log
"ratelimit_policy_db" directive is not allowed here



=== TEST 21: a cache time that is not a time
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl often;
--- config
--- must_die
--- error_log
invalid cache time "often"



=== TEST 22: a cache time of 0
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 0;
--- config
--- must_die
--- error_log
invalid cache time "0"



=== TEST 22b: a cache time over 24 days (the zone keeps 32-bit milliseconds)
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 25d negative=5s;
--- config
--- must_die
--- error_log
invalid cache time "25d" (1ms to 24d)



=== TEST 23: a bad negative cache time
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 30s negative=never;
--- config
--- must_die
--- error_log
invalid negative cache time "negative=never"



=== TEST 24: an unknown ratelimit_policy_cache_ttl parameter
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 30s stale=1m;
--- config
--- must_die
--- error_log
invalid parameter "stale=1m"



=== TEST 25: a default slug with a space
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_default "standard policy";
--- config
--- must_die
--- error_log
invalid policy slug "standard policy", it must be 1 to 64 letters, digits, "_", "-" or "."



=== TEST 26: a default slug of 65 characters
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_default aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;
--- config
--- must_die
--- error_log
invalid policy slug "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"



=== TEST 27: ratelimit_policy_default twice
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_default strict;
    ratelimit_policy_default standard_policy;
--- config
--- must_die
--- error_log
"ratelimit_policy_default" directive is duplicate



=== TEST 28: ratelimit_policy_engine_sync not starting with "/"
--- config
    location = /v2/session/rate-limit {
        ratelimit_policy_engine_sync engine/metadata;
        ratelimit_policy_api;
    }
--- must_die
--- error_log
ratelimit_policy_engine_sync "engine/metadata" must be a URI starting with "/"



=== TEST 29: ratelimit_policy_api twice in one location
--- config
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
        ratelimit_policy_api;
    }
--- must_die
--- error_log
"ratelimit_policy_api" directive is duplicate



=== TEST 30: ratelimit_policy_api at the server level
--- config
    ratelimit_policy_api;
--- must_die
--- error_log
"ratelimit_policy_api" directive is not allowed here



=== TEST 31: ratelimit_policy_api with an argument
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api on; }
--- must_die
--- error_log
invalid number of arguments in "ratelimit_policy_api" directive



=== TEST 32: a good configuration with every directive is accepted
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=2 queue=16 pipeline=4 connect_timeout=1s query_timeout=2s;
    ratelimit_policy_zone zone=ratelimit:1m;
    ratelimit_policy_cache_ttl 10s negative=2s;
    ratelimit_policy_default strict;
    ratelimit_policy_instance $arg_instance_id;
--- config
    ratelimit_policy_token $arg_access_token;
    location = /v2/session/rate-limit {
        ratelimit_policy_engine_sync /engine;
        ratelimit_policy_api;
    }
    location = /engine { internal; return 204; }
--- request
GET /v2/session/rate-limit?instance_id=FREE00000001&access_token=free-token-1001
--- error_code: 200
--- response_body_like: ^\{"status":"success","current_policy":"strict",
--- no_error_log
[emerg]
[alert]
[error]



=== TEST 33: the module loaded without any of its directives changes nothing
--- http_config
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /t
--- error_code: 200
--- response_body
ok
--- no_error_log
[emerg]
[alert]
[error]
