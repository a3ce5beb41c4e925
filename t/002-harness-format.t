# More of the Test::Nginx data format, so that a change to t/compat can be
# checked against the real runner: both must pass this file with the same
# test count (PERL5LIB=/path/to/test-nginx/lib util/test t/002-harness-format.t
# and util/test t/002-harness-format.t).  No block needs the module.

use lib 't/lib';
use RLP;

repeat_each(2);

# tests per block: 5 3 4 2 2 3 2 2 3 6 4 (TEST 9 is skipped)
plan tests => repeat_each() * (blocks() * 2 + 14);

no_shuffle();
run_tests();

__DATA__

=== TEST 1: *_like sections
--- no_module
--- config
    location = /t {
        add_header X-Num 12345;
        return 201 "c\n";
    }
--- request
GET /t
--- error_code_like: ^20[01]$
--- raw_response_headers_like: X-Num: 1
--- response_headers_like
X-Num: \d+
Content-Type: text/.*
--- response_body_like: ^c$



=== TEST 2: HEAD has headers and no body
--- no_module
--- config
    location = /h {
        return 200 "hello\n";
    }
--- request
HEAD /h
--- response_headers
Content-Length: 6
--- response_body



=== TEST 3: one --- more_headers entry per request
--- no_module
--- config
    location = /m {
        return 200 "$http_x_a\n";
    }
--- request eval
["GET /m", "GET /m"]
--- more_headers eval
["X-A: one", "X-A: two"]
--- response_body eval
["one\n", "two\n"]



=== TEST 4: a chunked request body gets no Content-Length
--- no_module
--- config
    location = /c {
        return 200 "te=$http_transfer_encoding cl=$http_content_length\n";
    }
--- more_headers
Transfer-Encoding: chunked
--- request eval
"POST /c\n5\r\nhello\r\n0\r\n\r\n"
--- response_body_unlike: cl=\S



=== TEST 5: $TEST_NGINX_RAND_PORT_1 in http_config and config
--- no_module
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / {
            return 200 "backend\n";
        }
    }
--- config
    location = /p {
        proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/;
    }
--- request
GET /p
--- response_body_like: ^backend$



=== TEST 6: must_die with an exit code, main_config
--- no_module
--- main_config
timer_resolution foo;
--- config
--- must_die: 1
--- error_log
[emerg]
"timer_resolution" directive invalid value



=== TEST 7: server_name and post_main_config sections
--- no_module
--- server_name: example.test
--- post_main_config
worker_rlimit_nofile 2048;
--- config
    location = /s {
        return 200 "$server_name\n";
    }
--- request
GET /s
--- response_body
example.test



=== TEST 8: grep_error_log_out per repetition
--- no_module
--- config
--- request
GET /missing-file
--- error_code: 404
--- grep_error_log eval: qr/No such file or directory/
--- grep_error_log_out eval
["No such file or directory\n", "No such file or directory\n"]



=== TEST 9: a skipped block is not counted
--- SKIP
--- no_module
--- config
--- request
GET /



=== TEST 10: user_files with a date
--- no_module
--- user_files
>>> dated.txt 200901011200
dated
--- config
--- request
GET /dated.txt
--- response_headers
Last-Modified: Thu, 01 Jan 2009 12:00:00 GMT
--- response_body
dated



=== TEST 11: error log checks after every request, with --- wait
--- no_module
--- config
--- request eval
["GET /nope1", "GET /nope2"]
--- error_code eval
[404, 404]
--- wait: 0.1
--- error_log eval
qr/nope\d/
--- no_error_log
[alert]



=== TEST 12: a chunked response is decoded
--- no_module
--- config
    location = /chunked {
        sub_filter_types *;
        sub_filter_once off;
        sub_filter 'a' 'b';
        return 200 "aaa\n";
    }
--- request
GET /chunked
--- response_headers
Transfer-Encoding: chunked
!Content-Length
--- response_body
bbb
