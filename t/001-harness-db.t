# The database side of the harness (t/lib/RLP.pm): psql() and the pg_*
# helpers from top-level code and from --- init, and --- db_check after the
# requests.  Needs the throwaway cluster of util/test.  No block needs the
# module.

use lib 't/lib';
use RLP;

repeat_each(2);

# blocks: 3 5 3 3 tests (TEST 2 makes two requests); top level: 8 tests
plan tests => repeat_each() * (blocks() * 2 + blocks('db_check') + 2) + 8;

psql(<<'_SQL_');
DROP TABLE IF EXISTS rlp_harness;
CREATE TABLE rlp_harness (k text PRIMARY KEY, v text);
INSERT INTO rlp_harness VALUES ('a', 'kept');
_SQL_

is(psql("SELECT v FROM rlp_harness WHERE k = 'a'"), "kept\n",
   'psql returns the rows');

ok(!eval { psql('SELECT no_such_column FROM rlp_harness'); 1 }
   && $@ =~ /no_such_column/, 'psql dies on an SQL error');

pg_stat_reset();
psql("SELECT v FROM rlp_harness WHERE k = 'a'") for 1 .. 3;
is(pg_query_count('%FROM rlp_harness WHERE k%'), 3,
   'pg_query_count counts the calls since pg_stat_reset');

pg_restart('fast');
is(psql('SELECT 1'), "1\n", 'pg_restart: the server answers again');

pg_kill('STOP', 'all');
{
    local $RLP::CommandTimeout = 1;
    ok(!eval { psql('SELECT 1'); 1 }, 'pg_kill STOP: no answer');
}
pg_kill('CONT', 'all');
is(psql('SELECT 2'), "2\n", 'pg_kill CONT: the server answers again');

pg_stop();
ok(!eval { psql('SELECT 1'); 1 }, 'pg_stop: the server is down');
pg_start();

reset_fixtures();
is(psql("SELECT policy_slug FROM ratelimit.instances"
        . " WHERE instance_id = 'FREE00000002'"),
   "strict\n", 'reset_fixtures');

no_shuffle();
run_tests();

__DATA__

=== TEST 1: --- db_check sees the table after the request
--- no_module
--- config
    location = /t {
        return 200 "ok\n";
    }
--- request
GET /t
--- response_body
ok
--- db_check
SELECT v FROM rlp_harness WHERE k = 'a';
--- db_check_out
kept



=== TEST 2: --- init runs first; --- db_check after the last request
--- no_module
--- init
psql("UPDATE rlp_harness SET v = 'from init' WHERE k = 'a'");
--- config
    location = /t {
        return 200 "ok\n";
    }
--- request eval
["GET /t", "GET /t"]
--- response_body eval
["ok\n", "ok\n"]
--- db_check
SELECT k, v FROM rlp_harness ORDER BY k;
--- db_check_out
a|from init



=== TEST 3: --- db_check_timeout waits for a change made later
--- no_module
--- init
system(qq{$ENV{TEST_NGINX_PG_BIN}/psql -X -q -d "$ENV{TEST_NGINX_PG_CONNINFO}"}
       . q{ -c "SELECT pg_sleep(0.5); UPDATE rlp_harness SET v = 'later'}
       . q{ WHERE k = 'a'" > /dev/null 2>&1 &}) == 0
    or die "cannot start psql";
--- config
    location = /t {
        return 200 "ok\n";
    }
--- request
GET /t
--- response_body
ok
--- db_check
SELECT v FROM rlp_harness WHERE k = 'a';
--- db_check_out
later
--- db_check_timeout: 3



=== TEST 4: --- db_check_out eval takes a regex
--- no_module
--- config
    location = /t {
        return 200 "ok\n";
    }
--- request
GET /t
--- response_body
ok
--- db_check
SELECT to_char(now(), 'YYYY-MM-DD');
--- db_check_out eval
qr/^\d{4}-\d\d-\d\d$/
