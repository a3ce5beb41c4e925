# Sanity of the test harness itself: plain nginx features, so that the
# runner (the real Test::Nginx or t/compat) and t/lib/RLP.pm are proven
# before the module's own suites run.  Only the last block needs the module
# (it must load into the packaged nginx); the others say --- no_module.

use lib 't/lib';
use RLP;

repeat_each(2);

# tests per block: 3 3 6 2 4 2 6 4 1 4
plan tests => repeat_each() * (blocks() * 2 + 15);

no_shuffle();
run_tests();

__DATA__

=== TEST 1: return 200 from a plain location
--- no_module
--- config
    location = /t {
        return 200 "hello\n";
    }
--- request
GET /t
--- response_body
hello
--- no_error_log
[error]



=== TEST 2: nginx -t fails on an unknown directive
--- no_module
--- config
    location = /t {
        no_such_directive on;
    }
--- must_die
--- error_log
[emerg]
unknown directive "no_such_directive"



=== TEST 3: several requests: status, headers and body per request
--- no_module
--- config
    location = /a {
        add_header X-Which a;
        return 200 "a\n";
    }
    location = /b {
        return 404;
    }
--- request eval
["GET /a", "GET /b"]
--- error_code eval
[200, 404]
--- response_headers eval
["X-Which: a", "!X-Which"]
--- response_body eval
["a\n", qr/404 Not Found/]



=== TEST 4: a request body gets its Content-Length; more_headers are sent
--- no_module
--- config
    location = /len {
        return 200 "len=$content_length auth=$http_authorization\n";
    }
--- more_headers
Authorization: Bearer s3cret
--- request
POST /len
hello
--- response_body
len=5 auth=Bearer s3cret



=== TEST 5: pipelined requests share one connection
--- no_module
--- config
    location = /p {
        return 200 "n=$arg_n r=$connection_requests\n";
    }
--- pipelined_requests eval
["GET /p?n=1", "GET /p?n=2"]
--- response_body eval
["n=1 r=1\n", "n=2 r=2\n"]



=== TEST 6: raw_request is sent as it is
--- no_module
--- config
    location = /raw {
        return 200 "proto=$server_protocol\n";
    }
--- raw_request eval
"GET /raw HTTP/1.0\r\nHost: localhost\r\n\r\n"
--- response_body
proto=HTTP/1.0



=== TEST 7: $TEST_NGINX_* expansion, user_files and --- init
--- no_module
--- init
my $file = html_dir() . "/from-init.txt";
open my $out, '>', $file or die "$file: $!";
print $out "from init\n";
close $out;
--- user_files
>>> static.txt
static file
--- config
    location = /port {
        return 200 "port=$TEST_NGINX_SERVER_PORT\n";
    }
--- request eval
["GET /port", "GET /static.txt", "GET /from-init.txt"]
--- response_body eval
['port=$TEST_NGINX_SERVER_PORT' . "\n", "static file\n", "from init\n"]



=== TEST 8: error_log, grep_error_log and a block's own log_level
--- no_module
--- log_level: error
--- config
--- request
GET /nope.txt
--- error_code: 404
--- error_log
No such file or directory
--- grep_error_log: (2: No such file or directory)
--- grep_error_log_out
(2: No such file or directory)
--- no_error_log
[debug]



=== TEST 9: a client timeout is no failure with --- abort
--- no_module
--- config
    location = /slow {
        limit_rate 1;
        return 200 "....................";
    }
--- request
GET /slow
--- timeout: 0.3
--- abort
--- ignore_response
--- no_error_log
[alert]



=== TEST 10: the module under test loads into the packaged nginx
--- http_config
--- config
    location = /t {
        return 200 "loaded\n";
    }
--- request
GET /t
--- response_body
loaded
--- no_error_log
[emerg]
[alert]
