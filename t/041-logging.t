# Token-safe logging: $ratelimit_policy_request is the request line with
# every access_token value masked, for log_format; where the module is
# configured $request is masked as well (in every location), and so is the
# "request:" that nginx adds to the error log lines of the module's
# locations; and at debug level no line the module writes, and no line
# above debug at all, carries a token or its SHA-256 digest.
#
# Only nginx core's own debug lines ("http request line", "http args",
# "http finalize request", ...) show the raw request: they are written
# while the request is read, before any module runs, and only by an nginx
# built --with-debug with "error_log ... debug".

use lib 't/lib';
use RLP;
use RLPHelpers;
use Digest::SHA ();

repeat_each(1);

# TEST 1: 6 requests x (status + body); TEST 2: 6 x (status + body +
# 5 no_error_log patterns, checked after every request); TEST 3: 3 x
# (status + body); TEST 4: status + body + 2 error_log + 2 no_error_log
# + 3 checks in --- init
plan tests => 12 + 42 + 6 + 9;

our @Digests = map { Digest::SHA::sha256_hex($_) }
               qw(free-token-1001 paid-token-1002 zero-token-1005);

$ENV{TEST_NGINX_DIGEST_RE} = join '|', @Digests;

reset_fixtures();

END {
    local ($?, $@);
    eval { reset_fixtures(); 1 };
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: access_log with $ratelimit_policy_request, and $request on the API
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    log_format safe '$status "$ratelimit_policy_request"';
    log_format raw '$status "$request"';
--- config
    access_log logs/safe.log safe;

    location = /v2/session/rate-limit {
        ratelimit_policy_api;
        access_log logs/safe.log safe;
        access_log logs/raw.log raw;
    }

    location = /other {
        return 200 "other\n";
    }

    location = /safe.log {
        access_log off;
        default_type text/plain;
        alias logs/safe.log;
    }

    location = /raw.log {
        access_log off;
        default_type text/plain;
        alias logs/raw.log;
    }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000001&access_token=free-token-1001",
"GET /v2/session/rate-limit?access_token=free%2Dtoken%2D1001&instance_id=FREE00000001&Access_Token=free-token-1001&x=access_token&y=1",
"PATCH /v2/session/rate-limit?instance_id=FREE00000001&policy_slug=strict&access_token=free-token-1001",
"GET /other?access_token=second-secret&ACCESS_TOKEN=third-secret&access_token=&access_tokens=x",
"GET /safe.log",
"GET /raw.log",
]
--- error_code eval
[200, 200, 200, 200, 200, 200]
--- response_body eval
[
qr/^\{"status":"success"/,
qr/^\{"status":"success"/,
qr/"message":"policy updated"\}$/,
"other\n",
qr{\A200 "GET /v2/session/rate-limit\?instance_id=FREE00000001&access_token=\*\*\* HTTP/1\.[01]"
200 "GET /v2/session/rate-limit\?access_token=\*\*\*&instance_id=FREE00000001&Access_Token=\*\*\*&x=access_token&y=1 HTTP/1\.[01]"
200 "PATCH /v2/session/rate-limit\?instance_id=FREE00000001&policy_slug=strict&access_token=\*\*\* HTTP/1\.[01]"
200 "GET /other\?access_token=\*\*\*&ACCESS_TOKEN=\*\*\*&access_token=&access_tokens=x HTTP/1\.[01]"
\z},
qr{\A200 "GET /v2/session/rate-limit\?instance_id=FREE00000001&access_token=\*\*\* HTTP/1\.[01]"
200 "GET /v2/session/rate-limit\?access_token=\*\*\*&instance_id=FREE00000001&Access_Token=\*\*\*&x=access_token&y=1 HTTP/1\.[01]"
200 "PATCH /v2/session/rate-limit\?instance_id=FREE00000001&policy_slug=strict&access_token=\*\*\* HTTP/1\.[01]"
\z},
]



=== TEST 2: at debug level, no token and no digest in a line of the module
--- log_level: debug
--- config
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
        ratelimit_policy_engine_sync /_engine_sync;
    }

    location = /_engine_sync {
        internal;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/_engine/sync;
    }

    location /_engine/ {
        return 200;
    }

    location /v1/ {
        ratelimit_policy_enforce send_message;
        ratelimit_policy_log_level error;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/_engine/;
    }
--- request eval
[
"GET /v2/session/rate-limit?instance_id=FREE00000001&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=FREE00000001&access_token=free-token-1001",
"PATCH /v2/session/rate-limit?instance_id=FREE00000001&policy_slug=strict&access_token=free-token-1001",
"GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=free-token-1001",
"GET /v1/send?instance_id=PAID00000001&access_token=paid-token-1002",
"GET /v1/send?instance_id=ZERO00000001&access_token=zero-token-1005",
]
--- error_code eval
[200, 200, 200, 401, 200, 429]
--- response_body eval
[qr/success/, qr/success/, qr/policy updated/, qr/invalid_token/, "",
 qr/rate_limited/]
--- no_error_log eval
[
qr{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(?!debug\])[a-z]+\].*(?:free|paid|zero)-token-100},
qr/ratelimit_policy.*(?:free|paid|zero)-token-100/,
qr/(?:free|paid|zero)-token-100.*ratelimit_policy/,
qr/$ENV{TEST_NGINX_DIGEST_RE}/i,
qr/\[(?:alert|crit|emerg)\]/,
]



=== TEST 3: the token in the Authorization header is never in the request line
--- log_level: debug
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    log_format safe '$status "$ratelimit_policy_request"';
--- config
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
        access_log logs/bearer.log safe;
    }

    location = /bearer.log {
        access_log off;
        default_type text/plain;
        alias logs/bearer.log;
    }
--- request eval
["GET /v2/session/rate-limit?instance_id=PAID00000002",
 "GET /v2/session/rate-limit?instance_id=PAID00000002",
 "GET /bearer.log"]
--- more_headers eval
["Authorization: Bearer paid-token-1002", "Authorization: Bearer paid-token-1002", ""]
--- error_code eval
[200, 200, 200]
--- response_body eval
[qr/"current_policy":"unlimited"/, qr/"current_policy":"unlimited"/,
qr{\A200 "GET /v2/session/rate-limit\?instance_id=PAID00000002 HTTP/1\.[01]"
200 "GET /v2/session/rate-limit\?instance_id=PAID00000002 HTTP/1\.[01]"
\z}]



=== TEST 4: $request is masked in any location; the "request:" and "upstream:" of an error log line when it is written
The request line itself is not rewritten: it is masked when $request is
evaluated and when an error log line is written, and so is the URI that
proxy_pass sends on; masked, a line longer than a log line is left out.
--- log_level: info
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    log_format raw '$status "$request"';
--- config
    location = /other {
        access_log logs/raw4.log raw;
        return 200 "other\n";
    }

    location /refused/ {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:1/;
    }

    location = /raw4.log {
        access_log off;
        default_type text/plain;
        alias logs/raw4.log;
    }
--- init
my $pad = 'a' x 3000;
Test::More::is(http_get('/other?access_token=plain-secret-1&x=1')->{status}, 200,
               'TEST 4: /other');
Test::More::is(http_get('/refused/x?instance_id=PAID00000001&access_token=paid-token-1002')->{status},
               502, 'TEST 4: refused upstream');
Test::More::is(http_get("/refused/y?instance_id=PAID00000001&access_token=paid-token-1002&pad=$pad")->{status},
               502, 'TEST 4: refused upstream, a long request line');
--- request
GET /raw4.log
--- response_body_like chomp
\A200 "GET /other\?access_token=\*\*\*&x=1 HTTP/1\.[01]"\n\z
--- error_log
request: "GET /refused/x?instance_id=PAID00000001&access_token=*** HTTP/1.1"
upstream: "http://127.0.0.1:1/x?instance_id=PAID00000001&access_token=***"
--- no_error_log
paid-token-1002
plain-secret-1
