# ratelimit_policy_engine_sync (DESIGN.md sections 3 and 5, issue 3):
# after the database commit of a PATCH, a PUT subrequest carries the new
# policy to the engine; what the engine receives, and what a failing,
# unreachable or silent engine does to the PATCH.
#
# The stand-in engine is a second server of the same nginx
# ($TEST_NGINX_RAND_PORT_1).  It reads the body (proxy_pass to its own
# /answer/ locations, which give the status) and writes one access-log
# line per request, raw (escape=none), into html/engine.log, which the
# blocks then fetch with GET /engine.log:
#
#   METHOD URI|ct=Content-Type|cl=Content-Length|auth=Authorization|
#   cookie=Cookie|x=X-Client-Secret|ua=User-Agent|body=BODY
#
# (an absent header logs as nothing).  Its answer is chosen by flag files in
# html/ (--- user_files): engine-500, engine-404, engine-204 change the
# status; engine-down sends the subrequest to a closed port, engine-slow
# to a socket that accepts connections and never answers (a listening
# socket of this test process that is never accept()ed).  A flag is
# removed in the middle of a block with DELETE /engine-<flag> (WebDAV), so
# that "the engine is back" happens between two requests, deterministically.
#
# Expected bodies come from t/lib/RLPDoc.pm (rendered from the catalogue).
# Every block starts from t/fixtures.sql.

use lib 't/lib';
use RLP;
use RLPHelpers;
use RLPDoc;

use IO::Socket::INET ();

repeat_each(1);

# accepts TCP connections (kernel backlog) and never answers
our $BlackHole = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                       LocalPort => 0, Listen => 128,
                                       ReuseAddr => 1)
    or die "cannot listen: $!";
$ENV{TEST_NGINX_BLACKHOLE_PORT} = $BlackHole->sockport;
$ENV{TEST_NGINX_CLOSED_PORT} = RLPHelpers::free_port();

our $Engine = <<'_EOC_';
    log_format engine escape=none
        '$request_method $request_uri|ct=$content_type|cl=$content_length'
        '|auth=$http_authorization|cookie=$http_cookie'
        '|x=$http_x_client_secret|ua=$http_user_agent|body=$request_body';

    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        root html;

        location /engine/ {
            access_log html/engine.log engine;
            client_body_buffer_size 16k;
            client_body_in_single_buffer on;

            set $answer 200;
            if (-f $document_root/engine-500) { set $answer 500; }
            if (-f $document_root/engine-404) { set $answer 404; }
            if (-f $document_root/engine-204) { set $answer 204; }
            proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/answer/$answer;
        }

        location /answer/ {
            access_log off;
            location = /answer/200 { return 200 "stored\n"; }
            location = /answer/204 { return 204; }
            location = /answer/404 { return 404; }
            location = /answer/500 { return 500; }
        }
    }
_EOC_

our $Api = <<'_EOC_';
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
        ratelimit_policy_engine_sync /_engine;
    }

    location = /_engine {
        internal;
        set $engine 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        if (-f $document_root/engine-slow) {
            set $engine 127.0.0.1:$TEST_NGINX_BLACKHOLE_PORT;
        }
        if (-f $document_root/engine-down) {
            set $engine 127.0.0.1:$TEST_NGINX_CLOSED_PORT;
        }
        proxy_pass http://$engine/engine/policy;
        proxy_connect_timeout 500ms;
        proxy_read_timeout 500ms;
    }

    location ~ ^/engine-(500|404|204|slow|down)$ {
        dav_methods DELETE;
    }
_EOC_

our $Free3 = '/v2/session/rate-limit?instance_id=FREE00000003'
             . '&access_token=free-token-1001';

# the engine.log line of one PUT carrying $slug for $instance
sub put_line {
    my ($instance, $slug, %h) = @_;
    my $body = RLPDoc::engine_body($instance, $slug);
    return 'PUT /engine/policy|ct=application/json|cl=' . length($body)
           . '|auth=|cookie=|x=|ua=|body=' . $body . "\n";
}

# the same for a body spelled out literally in the block
sub literal_put {
    my $body = shift;
    return 'PUT /engine/policy|ct=application/json|cl=' . length($body)
           . '|auth=|cookie=|x=|ua=|body=' . $body . "\n";
}

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value(http_config => $RLP::HttpConfig . $Engine)
        unless defined $block->http_config;
    $block->set_value(config => $Api) unless defined $block->config;
    my $init = $block->init // '';
    $block->set_value(init => "reset_fixtures();\n$init");
});

END {
    # leave the fixtures as a file finds them
    eval { reset_fixtures(); 1 };
}

reset_fixtures();

plan tests => RLPDoc::count_tests(blocks());

no_shuffle();
run_tests();

__DATA__

=== TEST 1: the engine gets PUT, application/json and exactly the documented body
--- request eval
["PATCH $main::Free3&policy_slug=strict", "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::put_line('FREE00000003', 'strict')]
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 2: the documented example of README.md, byte for byte
--- request eval
["PATCH /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001&policy_slug=strict",
 "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::literal_put('{"instance_id":"FREE00000002","policy_slug":"strict","limits":{"send_message_per_minute":8,"send_message_daily_cap":200,"account_protection_seconds":60,"concurrent_limit":1}}')]



=== TEST 3: none of the client's headers, arguments or token reach the engine
--- more_headers
Cookie: session=client-cookie
X-Client-Secret: do-not-forward
User-Agent: client-agent/1.0
--- request eval
["PATCH $main::Free3&policy_slug=strict&extra=1", "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::put_line('FREE00000003', 'strict')]



=== TEST 4: a Bearer token and the client's JSON body are not forwarded
--- more_headers
Authorization: Bearer free-token-1001
Content-Type: application/json
--- request eval
["PATCH /v2/session/rate-limit?instance_id=FREE00000003\n{\"policy_slug\":\"strict\",\"note\":\"client body\"}",
 "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::put_line('FREE00000003', 'strict')]



=== TEST 5: a form PATCH: the engine still gets application/json
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- request eval
["PATCH $main::Free3\npolicy_slug=strict", "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::put_line('FREE00000003', 'strict')]



=== TEST 6: all eight limits, in column order
--- request eval
["PATCH /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001&policy_slug=standard_policy",
 "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'standard_policy', plan => 0, message => 'policy updated'),
 main::literal_put('{"instance_id":"FREE00000002","policy_slug":"standard_policy","limits":{"send_message_per_minute":20,"send_message_daily_cap":1000,"account_protection_seconds":30,"concurrent_limit":2,"group_req_per_minute":10,"group_daily_cap":200,"check_req_per_minute":20,"check_daily_cap":500}}')]



=== TEST 7: a policy without limits: "limits":{}
--- request eval
["PATCH /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002&policy_slug=unlimited",
 "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'unlimited', plan => 1, message => 'policy updated'),
 main::literal_put('{"instance_id":"PAID00000001","policy_slug":"unlimited","limits":{}}')]



=== TEST 8: limits of 0 are sent (0 is not unlimited); an unchanged policy is synced again
--- request eval
["PATCH /v2/session/rate-limit?instance_id=ZERO00000001&access_token=zero-token-1005&policy_slug=zero_policy",
 "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'zero_policy', plan => 1, message => 'policy updated'),
 main::put_line('ZERO00000001', 'zero_policy')]



=== TEST 9: any 2xx of the engine is success (204)
--- user_files
>>> engine-204
--- request eval
["PATCH $main::Free3&policy_slug=strict", "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::put_line('FREE00000003', 'strict')]



=== TEST 10: engine answers 500: 502 engine_sync_failed with current_policy; the database keeps the change
--- user_files
>>> engine-500
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
--- error_code: 502
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body eval
RLPDoc::error_re('engine_sync_failed', current_policy => 'strict')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict
--- error_log
the engine answered 500



=== TEST 11: engine answers 500: it did receive the PUT, and GET shows the saved policy
--- user_files
>>> engine-500
--- request eval
["PATCH $main::Free3&policy_slug=strict", "GET /engine.log", "GET $main::Free3"]
--- error_code eval
[502, 200, 200]
--- response_body eval
[RLPDoc::error_re('engine_sync_failed', current_policy => 'strict'),
 main::put_line('FREE00000003', 'strict'),
 RLPDoc::doc(current => 'strict', plan => 0)]



=== TEST 12: engine answers 404: 502
--- user_files
>>> engine-404
--- request
PATCH /v2/session/rate-limit?instance_id=PAID00000003&access_token=paid-token-1002&policy_slug=business
--- error_code: 502
--- response_body eval
RLPDoc::error_re('engine_sync_failed', current_policy => 'business')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'PAID00000003';
--- db_check_out
business



=== TEST 13: engine down (connection refused): 502, the database keeps the change
--- user_files
>>> engine-down
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
--- error_code: 502
--- response_body eval
RLPDoc::error_re('engine_sync_failed', current_policy => 'strict')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict
--- error_log
connect() failed (111: Connection refused)



=== TEST 14: engine silent (accepts, never answers): 502 after proxy_read_timeout; the database keeps the change
--- user_files
>>> engine-slow
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
--- timeout: 5
--- error_code: 502
--- response_body eval
RLPDoc::error_re('engine_sync_failed', current_policy => 'strict')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict
--- error_log
upstream timed out (110: Connection timed out) while reading response header from upstream



=== TEST 15: engine silent, then back: the retried PATCH is 200 and the engine got it
--- user_files
>>> engine-slow
--- request eval
["PATCH $main::Free3&policy_slug=strict", "DELETE /engine-slow",
 "PATCH $main::Free3&policy_slug=strict", "GET /engine.log"]
--- timeout: 5
--- error_code eval
[502, 204, 200, 200]
--- response_body eval
[RLPDoc::error_re('engine_sync_failed', current_policy => 'strict'), "",
 RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::put_line('FREE00000003', 'strict')]
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 16: engine failing, then fixed: the retry syncs again (two PUTs received)
--- user_files
>>> engine-500
--- request eval
["PATCH $main::Free3&policy_slug=strict", "DELETE /engine-500",
 "PATCH $main::Free3&policy_slug=strict", "GET /engine.log"]
--- error_code eval
[502, 204, 200, 200]
--- response_body eval
[RLPDoc::error_re('engine_sync_failed', current_policy => 'strict'), "",
 RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::put_line('FREE00000003', 'strict') x 2]



=== TEST 17: engine down, then back: the retry is 200
--- user_files
>>> engine-down
--- request eval
["PATCH $main::Free3&policy_slug=strict", "DELETE /engine-down",
 "PATCH $main::Free3&policy_slug=strict", "GET /engine.log"]
--- error_code eval
[502, 204, 200, 200]
--- response_body eval
[RLPDoc::error_re('engine_sync_failed', current_policy => 'strict'), "",
 RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::put_line('FREE00000003', 'strict')]



=== TEST 18: a refused PATCH (403, 422, 401, 400) sends nothing to the engine
--- request eval
["PATCH $main::Free3&policy_slug=business", "PATCH $main::Free3&policy_slug=nope",
 "PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=bad&policy_slug=strict",
 "PATCH $main::Free3", "GET /engine.log"]
--- error_code eval
[403, 422, 401, 400, 200]
--- response_body eval
[RLPDoc::error_re('policy_not_available'), RLPDoc::error_re('unknown_policy'),
 RLPDoc::error_re('invalid_token'), RLPDoc::error_re('missing_parameter'), ""]
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
standard_policy



=== TEST 19: GET and HEAD send nothing to the engine
--- request eval
["GET $main::Free3", "HEAD $main::Free3", "GET /engine.log"]
--- error_code eval
[200, 200, 200]
--- response_body eval
[RLPDoc::doc(current => 'standard_policy', plan => 0), "", ""]



=== TEST 20: ratelimit_policy_engine_sync set at server level is inherited
--- config
    ratelimit_policy_engine_sync /_engine;

    location = /v2/session/rate-limit {
        ratelimit_policy_api;
    }

    location = /_engine {
        internal;
        proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/engine/policy;
    }
--- request eval
["PATCH $main::Free3&policy_slug=strict", "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 main::put_line('FREE00000003', 'strict')]



=== TEST 21: without ratelimit_policy_engine_sync nothing is sent
--- config
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
    }
--- request eval
["PATCH $main::Free3&policy_slug=strict", "GET /engine.log"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'), ""]



=== TEST 22: the client's connection stays usable after a 502 (keep-alive)
--- user_files
>>> engine-500
--- pipelined_requests eval
["PATCH $main::Free3&policy_slug=strict", "GET $main::Free3"]
--- error_code eval
[502, 200]
--- response_body eval
[RLPDoc::error_re('engine_sync_failed', current_policy => 'strict'),
 RLPDoc::doc(current => 'strict', plan => 0)]
