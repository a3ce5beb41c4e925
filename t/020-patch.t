# PATCH /v2/session/rate-limit (DESIGN.md section 5, issue 3): where the
# slug and the token come from, what the answer is, and every error code,
# each error with a check that the database did not change.
#
# Every block starts from t/fixtures.sql (reset_fixtures() is added to its
# --- init below).  --- db_unchanged is a shorthand of this file for a
# --- db_check of every fixture instance row (taken FOR UPDATE, so that it
# waits for any writer still holding the rows); --- db_check asserts the
# row a successful PATCH changed.  Expected documents are rendered by
# t/lib/RLPDoc.pm from the catalogue in PostgreSQL, independently of the
# module.  Engine sync (502) is t/021-engine-sync.t.
#
# Blocks run once (repeat_each(1)): several arrange a database state in
# --- init that only the first request meets.

use lib 't/lib';
use RLP;
use RLPHelpers;
use RLPDoc;

use POSIX ();

# RLP::psql() runs psql through IPC::Run, which writes the SQL to psql's
# stdin; when the server is down psql may exit before reading it, and the
# write then raises SIGPIPE, which kills this test process (seen in the
# --- db_check_timeout loop of the block that stops PostgreSQL).  Until
# t/lib/RLP.pm ignores it itself:
$SIG{PIPE} = 'IGNORE';

repeat_each(1);

our $Api = <<'_EOC_';
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
    }
_EOC_

our $Snapshot = <<'_SQL_';
SELECT instance_id, account_id, coalesce(policy_slug, '-')
  FROM ratelimit.instances
 WHERE account_id BETWEEN 1001 AND 1005
    OR instance_id IN ('NOPE00000001')
 ORDER BY instance_id
   FOR UPDATE;
_SQL_

our $Fixtures = <<'_OUT_';
FREE00000001|1001|-
FREE00000002|1001|strict
FREE00000003|1001|standard_policy
LAPS00000001|1003|high_throughput
OTHR00000001|1004|strict
PAID00000001|1002|business
PAID00000002|1002|unlimited
PAID00000003|1002|-
UNLI00000001|1005|unlimited
ZERO00000001|1005|zero_policy
_OUT_

our $Path = '/v2/session/rate-limit';
our $Free3 = "$Path?instance_id=FREE00000003&access_token=free-token-1001";

# a JSON body of exactly $n bytes that asks for "strict"
sub padded_json {
    my $n = shift;
    my $head = '{"policy_slug":"strict"';
    return $head . (' ' x ($n - length($head) - 1)) . '}';
}

# PostgreSQL comes back $secs seconds from now (in a child process), so
# that a block can send its request while it is down and still check the
# database afterwards (--- db_check_timeout).
our @Children;
sub pg_start_later {
    my $secs = shift;
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        Time::HiRes::sleep($secs);
        eval { RLP::pg_start(); 1 } or print STDERR "pg_start: $@";
        POSIX::_exit(0);
    }
    push @Children, $pid;
    return $pid;
}

# a psql session in the background holding the row of $id FOR UPDATE for
# $secs seconds; returns once the lock is held
sub lock_row_for {
    my ($id, $secs) = @_;
    my $tag = "rlp_lock_$$" . int(rand(1e9));
    my $sql = "BEGIN; SELECT 1 FROM ratelimit.instances"
              . " WHERE instance_id = '$id' FOR UPDATE;"
              . " SELECT '$tag', pg_sleep($secs); COMMIT;";
    system("$ENV{TEST_NGINX_PG_BIN}/psql -X -q -d"
           . " '$ENV{TEST_NGINX_PG_CONNINFO}' -c \"$sql\""
           . " > /dev/null 2>&1 &") == 0
        or die "cannot start psql";
    wait_until(5, sub {
        RLP::psql("SELECT count(*) FROM pg_stat_activity"
                  . " WHERE query LIKE '%$tag%' AND state = 'active'"
                  . " AND pid <> pg_backend_pid()") =~ /^1/;
    }) or die "the locking session did not start\n";
}

END {
    waitpid($_, 0) for @Children;
    # leave the fixtures as a file finds them
    eval { RLPHelpers::pg_ensure_up(); reset_fixtures(); 1 };
}

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value(config => $Api) unless defined $block->config;

    my $init = $block->init // '';
    $block->set_value(init => "reset_fixtures();\n$init");

    if (defined RLPDoc::_sec($block, 'db_unchanged')) {
        $block->set_value(db_check => $Snapshot);
        $block->set_value(db_check_out => $Fixtures);
    }
});

reset_fixtures();

plan tests => RLPDoc::count_tests(blocks());

no_shuffle();
run_tests();

__DATA__

=== TEST 1: slug in the query string: 200, the new document, the row changed
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict
--- no_error_log
[error]



=== TEST 2: slug in a JSON body
--- more_headers
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
{"policy_slug":"strict"}
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 3: JSON body with a charset, white space, other keys and a 2-level value
--- more_headers
Content-Type: application/json; charset=utf-8
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
{ "note" : "x", "policy_slug" : "strict", "n": 1.5, "ok": true, "none": null, "meta": {"k": "v", "l": 2} }
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 4: slug in a form body
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
policy_slug=strict
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 5: form body with other fields and a %-escaped slug
--- more_headers
Content-Type: application/x-www-form-urlencoded; charset=UTF-8
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
a=1&policy_slugx=business&policy_slug=str%69ct&b=
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 6: token in Authorization: Bearer, slug in a JSON body
--- more_headers
Authorization: Bearer free-token-1001
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003
{"policy_slug":"strict"}
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 7: token in Authorization: Bearer, slug in the query
--- more_headers
Authorization: Bearer free-token-1001
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&policy_slug=strict
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 8: %-escaped token in the query
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free%2Dtoken%2D1001&policy_slug=strict
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 9: the query wins over a JSON body
--- more_headers
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
{"policy_slug":"standard_policy"}
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 10: the query wins over a form body
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001&policy_slug=standard_policy
policy_slug=strict
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000002';
--- db_check_out
standard_policy



=== TEST 11: an empty body needs no Content-Type
--- more_headers
Content-Length: 0
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 12: a JSON body of exactly 16 KiB is accepted (default client_body_buffer_size)
--- more_headers
Content-Type: application/json
--- request eval
"PATCH $main::Free3\n" . main::padded_json(16384)
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 13: with client_body_buffer_size 16k: exactly 16 KiB is accepted
--- config
    location = /v2/session/rate-limit {
        client_body_buffer_size 16k;
        ratelimit_policy_api;
    }
--- more_headers
Content-Type: application/json
--- request eval
"PATCH $main::Free3\n" . main::padded_json(16384)
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 14: GET after PATCH shows the new state
--- request eval
["PATCH $main::Free3&policy_slug=strict", "GET $main::Free3"]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 RLPDoc::doc(current => 'strict', plan => 0)]
--- error_code eval
[200, 200]
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 15: HEAD after PATCH: the headers of the new document, no body
--- request eval
["PATCH $main::Free3&policy_slug=strict", "HEAD $main::Free3"]
--- error_code eval
[200, 200]
--- response_headers eval
["Content-Type: application/json",
 "Content-Type: application/json\nCache-Control: no-store\nContent-Length: "
 . length(RLPDoc::doc(current => 'strict', plan => 0))]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'), ""]



=== TEST 16: PATCH is idempotent: the same PATCH twice, the same answer
--- request eval
["PATCH $main::Free3&policy_slug=strict", "PATCH $main::Free3&policy_slug=strict"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')]
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 17: PATCH to the policy already stored: 200, nothing changes
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000002&access_token=free-token-1001&policy_slug=strict
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_unchanged



=== TEST 18: paid policy on an account with an active plan
--- request
PATCH /v2/session/rate-limit?instance_id=PAID00000003&access_token=paid-token-1002&policy_slug=business
--- response_body eval
RLPDoc::doc(current => 'business', plan => 1, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'PAID00000003';
--- db_check_out
business



=== TEST 19: paid to another paid policy (no limits at all), then GET
--- request eval
["PATCH /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002&policy_slug=unlimited",
 "GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'unlimited', plan => 1, message => 'policy updated'),
 RLPDoc::doc(current => 'unlimited', plan => 1)]
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'PAID00000001';
--- db_check_out
unlimited



=== TEST 20: paid account back to a free policy
--- request
PATCH /v2/session/rate-limit?instance_id=PAID00000002&access_token=paid-token-1002&policy_slug=strict
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 1, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'PAID00000002';
--- db_check_out
strict



=== TEST 21: lapsed plan, stored paid policy: PATCH to a free one clears stored_policy
--- request eval
["PATCH /v2/session/rate-limit?instance_id=LAPS00000001&access_token=lapsed-token-1003&policy_slug=strict",
 "GET /v2/session/rate-limit?instance_id=LAPS00000001&access_token=lapsed-token-1003"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 RLPDoc::doc(current => 'strict', plan => 0)]
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'LAPS00000001';
--- db_check_out
strict



=== TEST 22: lapsed plan: PATCH to the default policy stores it
--- request
PATCH /v2/session/rate-limit?instance_id=LAPS00000001&access_token=lapsed-token-1003&policy_slug=standard_policy
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'LAPS00000001';
--- db_check_out
standard_policy



=== TEST 23: 400 missing_parameter: no instance_id
--- request
PATCH /v2/session/rate-limit?access_token=free-token-1001&policy_slug=strict
--- error_code: 400
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body eval
RLPDoc::error_re('missing_parameter')
--- db_unchanged



=== TEST 24: 400 missing_parameter: no token anywhere
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&policy_slug=strict
--- error_code: 400
--- response_body eval
RLPDoc::error_re('missing_parameter')
--- db_unchanged



=== TEST 25: 400 missing_parameter: Authorization that is not Bearer is no token
--- more_headers
Authorization: Basic ZnJlZS10b2tlbi0xMDAx
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&policy_slug=strict
--- error_code: 400
--- response_body eval
RLPDoc::error_re('missing_parameter')
--- db_unchanged



=== TEST 26: 400 missing_parameter: no slug in the query and no body
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- error_code: 400
--- response_body eval
RLPDoc::error_re('missing_parameter')
--- db_unchanged



=== TEST 27: 400 missing_parameter: empty policy_slug= in the query
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=
--- error_code: 400
--- response_body eval
RLPDoc::error_re('missing_parameter')
--- db_unchanged



=== TEST 28: 400 missing_parameter: JSON body without policy_slug
--- more_headers
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
{"slug":"strict","policy":"strict"}
--- error_code: 400
--- response_body eval
RLPDoc::error_re('missing_parameter')
--- db_unchanged



=== TEST 29: 400 missing_parameter: empty policy_slug in a JSON body
--- more_headers
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
{"policy_slug":""}
--- error_code: 400
--- response_body eval
RLPDoc::error_re('missing_parameter')
--- db_unchanged



=== TEST 30: 400 missing_parameter: form body without policy_slug
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
slug=strict&policy_slugs=strict
--- error_code: 400
--- response_body eval
RLPDoc::error_re('missing_parameter')
--- db_unchanged



=== TEST 31: 400 invalid_instance_id: 11, 13 characters, and not [A-Za-z0-9]
--- request eval
["PATCH /v2/session/rate-limit?instance_id=FREE0000003&access_token=free-token-1001&policy_slug=strict",
 "PATCH /v2/session/rate-limit?instance_id=FREE000000033&access_token=free-token-1001&policy_slug=strict",
 "PATCH /v2/session/rate-limit?instance_id=FREE_0000003&access_token=free-token-1001&policy_slug=strict",
 "PATCH /v2/session/rate-limit?instance_id=FREE%300000003&access_token=free-token-1001&policy_slug=strict"]
--- error_code eval
[400, 400, 400, 400]
--- response_body eval
[RLPDoc::error_re('invalid_instance_id'), RLPDoc::error_re('invalid_instance_id'),
 RLPDoc::error_re('invalid_instance_id'), RLPDoc::error_re('invalid_instance_id')]
--- db_unchanged



=== TEST 32: 400 invalid_body: malformed and truncated JSON
--- more_headers
Content-Type: application/json
--- request eval
["PATCH $main::Free3\n{\"policy_slug\":",
 "PATCH $main::Free3\n{\"policy_slug\":\"strict\"",
 "PATCH $main::Free3\n{policy_slug:\"strict\"}",
 "PATCH $main::Free3\n{'policy_slug':'strict'}"]
--- error_code eval
[400, 400, 400, 400]
--- response_body eval
[RLPDoc::error_re('invalid_body'), RLPDoc::error_re('invalid_body'),
 RLPDoc::error_re('invalid_body'), RLPDoc::error_re('invalid_body')]
--- db_unchanged



=== TEST 33: 400 invalid_body: duplicate key
--- more_headers
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
{"policy_slug":"strict","policy_slug":"strict"}
--- error_code: 400
--- response_body eval
RLPDoc::error_re('invalid_body')
--- db_unchanged



=== TEST 34: 400 invalid_body: duplicate key other than policy_slug
--- more_headers
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
{"a":1,"policy_slug":"strict","a":2}
--- error_code: 400
--- response_body eval
RLPDoc::error_re('invalid_body')
--- db_unchanged



=== TEST 35: 400 invalid_body: policy_slug of the wrong type
--- more_headers
Content-Type: application/json
--- request eval
["PATCH $main::Free3\n{\"policy_slug\":1}",
 "PATCH $main::Free3\n{\"policy_slug\":null}",
 "PATCH $main::Free3\n{\"policy_slug\":true}",
 "PATCH $main::Free3\n{\"policy_slug\":[\"strict\"]}",
 "PATCH $main::Free3\n{\"policy_slug\":{\"slug\":\"strict\"}}"]
--- error_code eval
[400, 400, 400, 400, 400]
--- response_body eval
[(RLPDoc::error_re('invalid_body')) x 5]
--- db_unchanged



=== TEST 36: 400 invalid_body: more than two levels deep
--- more_headers
Content-Type: application/json
--- request eval
["PATCH $main::Free3\n{\"policy_slug\":\"strict\",\"m\":{\"k\":{\"x\":1}}}",
 "PATCH $main::Free3\n{\"policy_slug\":\"strict\",\"m\":[[1]]}"]
--- error_code eval
[400, 400]
--- response_body eval
[RLPDoc::error_re('invalid_body'), RLPDoc::error_re('invalid_body')]
--- db_unchanged



=== TEST 37: 400 invalid_body: 4000 nested arrays, no crash
--- more_headers
Content-Type: application/json
--- request eval
"PATCH $main::Free3\n{\"policy_slug\":\"strict\",\"a\":" . ('[' x 4000) . (']' x 4000) . "}"
--- error_code: 400
--- response_body eval
RLPDoc::error_re('invalid_body')
--- db_unchanged
--- no_error_log
[alert]
[crit]



=== TEST 38: 400 invalid_body: trailing garbage, a second value
--- more_headers
Content-Type: application/json
--- request eval
["PATCH $main::Free3\n{\"policy_slug\":\"strict\"} x",
 "PATCH $main::Free3\n{\"policy_slug\":\"strict\"}{}",
 "PATCH $main::Free3\n{\"policy_slug\":\"strict\"},",
 "PATCH $main::Free3\n{\"policy_slug\":\"strict\"}\0"]
--- error_code eval
[400, 400, 400, 400]
--- response_body eval
[(RLPDoc::error_re('invalid_body')) x 4]
--- db_unchanged



=== TEST 39: 400 invalid_body: invalid UTF-8 in a value, in a key, in the slug
--- more_headers
Content-Type: application/json
--- request eval
["PATCH $main::Free3\n{\"policy_slug\":\"strict\",\"note\":\"\xff\"}",
 "PATCH $main::Free3\n{\"policy_slug\":\"strict\",\"n\xc3\x28\":1}",
 "PATCH $main::Free3\n{\"policy_slug\":\"stri\xe9ct\"}"]
--- error_code eval
[400, 400, 400]
--- response_body eval
[(RLPDoc::error_re('invalid_body')) x 3]
--- db_unchanged



=== TEST 40: 400 invalid_body: not an object
--- more_headers
Content-Type: application/json
--- request eval
["PATCH $main::Free3\n\"strict\"",
 "PATCH $main::Free3\n[\"strict\"]",
 "PATCH $main::Free3\n42",
 "PATCH $main::Free3\nnull"]
--- error_code eval
[400, 400, 400, 400]
--- response_body eval
[(RLPDoc::error_re('invalid_body')) x 4]
--- db_unchanged



=== TEST 41: 400 invalid_body: comments are not JSON
--- more_headers
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
{/* c */"policy_slug":"strict"}
--- error_code: 400
--- response_body eval
RLPDoc::error_re('invalid_body')
--- db_unchanged



=== TEST 42: 400 invalid_body: a malformed body is refused even when the query has the slug
--- more_headers
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
{"policy_slug":
--- error_code: 400
--- response_body eval
RLPDoc::error_re('invalid_body')
--- db_unchanged



=== TEST 43: 400 invalid_body: form body with policy_slug twice
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
policy_slug=strict&policy_slug=strict
--- error_code: 400
--- response_body eval
RLPDoc::error_re('invalid_body')
--- db_unchanged



=== TEST 44: 401 invalid_token: wrong token
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=wrong-token&policy_slug=strict
--- error_code: 401
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body eval
RLPDoc::error_re('invalid_token')
--- db_unchanged



=== TEST 45: 401 invalid_token: the token of another account
--- request eval
["PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=other-token-1004&policy_slug=strict",
 "PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=paid-token-1002&policy_slug=business"]
--- error_code eval
[401, 401]
--- response_body eval
[RLPDoc::error_re('invalid_token'), RLPDoc::error_re('invalid_token')]
--- db_unchanged



=== TEST 46: 401 invalid_token: wrong Bearer token
--- more_headers
Authorization: Bearer free-token-1002
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&policy_slug=strict
--- error_code: 401
--- response_body eval
RLPDoc::error_re('invalid_token')
--- db_unchanged



=== TEST 47: 401 invalid_token: unknown instance and unknown token
--- request
PATCH /v2/session/rate-limit?instance_id=NOPE00000001&access_token=wrong-token&policy_slug=strict
--- error_code: 401
--- response_body eval
RLPDoc::error_re('invalid_token')
--- db_unchanged



=== TEST 48: 403 policy_not_available: free account, paid policies
--- request eval
["PATCH $main::Free3&policy_slug=business",
 "PATCH $main::Free3&policy_slug=high_throughput",
 "PATCH $main::Free3&policy_slug=unlimited",
 "PATCH $main::Free3&policy_slug=zero_policy"]
--- error_code eval
[403, 403, 403, 403]
--- response_headers eval
[("Content-Type: application/json\nCache-Control: no-store") x 4]
--- response_body eval
[(RLPDoc::error_re('policy_not_available')) x 4]
--- db_unchanged



=== TEST 49: 403 policy_not_available: lapsed plan, even the paid policy it still stores
--- request eval
["PATCH /v2/session/rate-limit?instance_id=LAPS00000001&access_token=lapsed-token-1003&policy_slug=high_throughput",
 "PATCH /v2/session/rate-limit?instance_id=LAPS00000001&access_token=lapsed-token-1003&policy_slug=business"]
--- error_code eval
[403, 403]
--- response_body eval
[RLPDoc::error_re('policy_not_available'), RLPDoc::error_re('policy_not_available')]
--- db_unchanged



=== TEST 50: 403 policy_not_available: a paid slug in a JSON body
--- more_headers
Authorization: Bearer free-token-1001
Content-Type: application/json
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000001
{"policy_slug":"business"}
--- error_code: 403
--- response_body eval
RLPDoc::error_re('policy_not_available')
--- db_unchanged



=== TEST 51: 404 instance_not_found: valid token, no such instance
--- request
PATCH /v2/session/rate-limit?instance_id=NOPE00000001&access_token=free-token-1001&policy_slug=strict
--- error_code: 404
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body eval
RLPDoc::error_re('instance_not_found')
--- db_unchanged



=== TEST 52: 405 method_not_allowed for PUT, POST and DELETE, with Allow
--- request eval
["PUT $main::Free3&policy_slug=strict", "POST $main::Free3&policy_slug=strict",
 "DELETE $main::Free3&policy_slug=strict"]
--- error_code eval
[405, 405, 405]
--- response_headers eval
[("Allow: GET, HEAD, PATCH\nCache-Control: no-store") x 3]
--- response_body eval
[(RLPDoc::error_re('method_not_allowed')) x 3]
--- db_unchanged



=== TEST 53: 413 body_too_large: Content-Length of 16 KiB + 1
--- more_headers
Content-Type: application/json
--- request eval
"PATCH $main::Free3\n" . main::padded_json(16385)
--- error_code: 413
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body eval
RLPDoc::error_re('body_too_large')
--- db_unchanged



=== TEST 54: 413 body_too_large: a chunked body over 16 KiB
--- more_headers
Content-Type: application/json
Transfer-Encoding: chunked
--- request eval
my $b = main::padded_json(17000);
"PATCH $main::Free3\n" . sprintf("%x\r\n%s\r\n0\r\n\r\n", length $b, $b)
--- error_code: 413
--- response_body eval
RLPDoc::error_re('body_too_large')
--- db_unchanged



=== TEST 55: 413 body_too_large: 16 KiB + 1 in many small chunks
--- more_headers
Content-Type: application/json
Transfer-Encoding: chunked
--- request eval
my $b = main::padded_json(16385);
my $c = '';
$c .= sprintf("%x\r\n%s\r\n", length $1, $1) while $b =~ /(.{1,1000})/gs;
"PATCH $main::Free3\n$c" . "0\r\n\r\n"
--- error_code: 413
--- response_body eval
RLPDoc::error_re('body_too_large')
--- db_unchanged



=== TEST 56: a chunked JSON body under 16 KiB is accepted
--- more_headers
Content-Type: application/json
Transfer-Encoding: chunked
--- request eval
"PATCH $main::Free3\n" . "5\r\n{\"pol\r\n13\r\nicy_slug\":\"strict\"}\r\n0\r\n\r\n"
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')
--- db_check
SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'FREE00000003';
--- db_check_out
strict



=== TEST 57: 415 unsupported_media_type: text/plain
--- more_headers
Content-Type: text/plain
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
{"policy_slug":"strict"}
--- error_code: 415
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body eval
RLPDoc::error_re('unsupported_media_type')
--- db_unchanged



=== TEST 58: 415 unsupported_media_type: a body without Content-Type
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
{"policy_slug":"strict"}
--- error_code: 415
--- response_body eval
RLPDoc::error_re('unsupported_media_type')
--- db_unchanged



=== TEST 59: 415 unsupported_media_type: look-alike and multipart types
--- request eval
["PATCH $main::Free3\n{\"policy_slug\":\"strict\"}",
 "PATCH $main::Free3\n{\"policy_slug\":\"strict\"}",
 "PATCH $main::Free3\npolicy_slug=strict"]
--- more_headers eval
["Content-Type: application/json-patch+json",
 "Content-Type: application/jsonx",
 "Content-Type: multipart/form-data; boundary=x"]
--- error_code eval
[415, 415, 415]
--- response_body eval
[(RLPDoc::error_re('unsupported_media_type')) x 3]
--- db_unchanged



=== TEST 60: 415 even when the query has the slug
--- more_headers
Content-Type: text/plain
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
strict
--- error_code: 415
--- response_body eval
RLPDoc::error_re('unsupported_media_type')
--- db_unchanged



=== TEST 61: 422 unknown_policy: no policy with that slug (slugs are case-sensitive)
--- request eval
["PATCH $main::Free3&policy_slug=nope", "PATCH $main::Free3&policy_slug=STRICT"]
--- error_code eval
[422, 422]
--- response_headers eval
[("Content-Type: application/json\nCache-Control: no-store") x 2]
--- response_body eval
[(RLPDoc::error_re('unknown_policy')) x 2]
--- raw_response_headers_like eval
["^HTTP/1.1 422 Unprocessable Entity\r\n", "^HTTP/1.1 422 "]
--- db_unchanged



=== TEST 62: 422 unknown_policy: slugs outside [A-Za-z0-9_.-]{1,64} in the query
--- request eval
["PATCH $main::Free3&policy_slug=stri%22ct",
 "PATCH $main::Free3&policy_slug=strict%00",
 "PATCH $main::Free3&policy_slug=%00",
 "PATCH $main::Free3&policy_slug=stri%20ct",
 "PATCH $main::Free3&policy_slug=strict'--",
 "PATCH $main::Free3&policy_slug=" . ('a' x 65),
 "PATCH $main::Free3&policy_slug=stri%C3%A7t",
 "PATCH $main::Free3&policy_slug=..%2Fstrict"]
--- error_code eval
[(422) x 8]
--- response_body eval
[(RLPDoc::error_re('unknown_policy')) x 8]
--- db_unchanged
--- no_error_log
[error]



=== TEST 63: 422 unknown_policy: slugs outside [A-Za-z0-9_.-]{1,64} in a JSON body
--- more_headers
Content-Type: application/json
--- request eval
["PATCH $main::Free3\n{\"policy_slug\":\"strict\\u0000\"}",
 "PATCH $main::Free3\n{\"policy_slug\":\"stri\\\"ct\"}",
 "PATCH $main::Free3\n{\"policy_slug\":\"str\\u00efct\"}",
 "PATCH $main::Free3\n{\"policy_slug\":\"str\xc3\xafct\"}"]
--- error_code eval
[422, 422, 422, 422]
--- response_body eval
[(RLPDoc::error_re('unknown_policy')) x 4]
--- db_unchanged
--- no_error_log
[error]



=== TEST 64: 422 unknown_policy: a form slug with %00
--- more_headers
Content-Type: application/x-www-form-urlencoded
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
policy_slug=strict%00
--- error_code: 422
--- response_body eval
RLPDoc::error_re('unknown_policy')
--- db_unchanged



=== TEST 65: 503 database_unavailable with Retry-After: the database refuses connections
--- http_config eval
"ratelimit_policy_db \"host=127.0.0.1 port=" . RLPHelpers::free_port()
. " dbname=ratelimit_test user=postgres\" connect_timeout=1s;\n"
. "ratelimit_policy_zone zone=ratelimit:8m;\n"
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
--- error_code: 503
--- response_headers_like
Retry-After: \d+
Content-Type: application/json
Cache-Control: no-store
--- response_body eval
RLPDoc::error_re('database_unavailable')
--- db_unchanged



=== TEST 66: 504 database_timeout: the row is locked longer than query_timeout; it stays unchanged
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=500ms;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
main::lock_row_for('FREE00000003', 1.5);
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
--- error_code: 504
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- response_body eval
RLPDoc::error_re('database_timeout')
--- db_unchanged



=== TEST 67: 503 database_unavailable: instance cached, PostgreSQL stopped; nothing is stored
--- init
wait_listener();
my $r = http_get("$main::Free3");
die "warm-up GET: $r->{status}\n" unless $r->{status} == 200;
pg_stop('fast');
main::pg_start_later(1.5);
--- request
PATCH /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001&policy_slug=strict
--- error_code: 503
--- response_headers_like
Retry-After: \d+
Cache-Control: no-store
--- response_body eval
RLPDoc::error_re('database_unavailable')
--- db_unchanged
--- db_check_timeout: 20
