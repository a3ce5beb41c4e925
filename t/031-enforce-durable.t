# Enforcement state that outlives a request (DESIGN.md section 7): the
# counters survive "nginx -s reload"; daily usage is written behind to
# ratelimit.daily_usage in batches (never one write per request) and read
# back, so a full restart does not reset a daily cap and a second nginx
# node sharing the database does not double it beyond the documented
# bound; a crashed worker's requests in flight are released by the worker
# that replaces it.
#
# nginx runs with a master process here (a reload and a crashed worker
# need one).  The reload, the second node and the crash are made from
# --- init and checked there with Test::More; the block's own request then
# shows the state they left.

use lib 't/lib';
use RLP;
use RLPHelpers;
use File::Temp ();
use Time::HiRes ();

repeat_each(1);
master_on();
workers(2);

# the runner's checks + the Test::More checks made in --- init
plan tests => 44;

no_shuffle();

$RLP::HttpConfig = <<'_EOC_';
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
    log_format upstream_hit "UPSTREAM-HIT $request_uri";
_EOC_

our $Locations = <<'_EOC_';
    location /upstream/ {
        access_log logs/error.log upstream_hit;
        return 200 "upstream\n";
    }

    location /slow-upstream/ {
        limit_rate 50;
        return 200 "slow upstream .................................................................................\n";
    }

    location /send {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }

    location /slow {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/slow-upstream/;
    }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value(config => $Locations . ($block->config // ''));
});

our $Usage = q{%INSERT INTO ratelimit.daily_usage%};

sub q_ {
    my ($loc, $id) = @_;
    my %tok = (FREE => 'free-token-1001', OTHR => 'other-token-1004',
               PAID => 'paid-token-1002');
    return "$loc?instance_id=$id&access_token=$tok{substr $id, 0, 4}";
}

sub today_count {
    my ($id, $class) = @_;
    my $n = psql("SELECT coalesce(sum(count), 0) FROM ratelimit.daily_usage"
                 . " WHERE instance_id = '$id' AND class = '$class'"
                 . " AND day = (now() AT TIME ZONE 'UTC')::date;");
    $n =~ s/\s+//g;
    return $n;
}

# a second nginx node on the same database, with its own zone
our ($Node2Dir, $Node2Port);

sub node2_start {
    $Node2Dir = File::Temp::tempdir('rlp-node2-XXXXXX', TMPDIR => 1,
                                    CLEANUP => 1);
    $Node2Port = free_port();
    mkdir "$Node2Dir/logs";
    mkdir "$Node2Dir/conf";
    open my $out, '>', "$Node2Dir/conf/nginx.conf" or die $!;
    print $out <<"_EOC_";
$RLP::LoadModule
master_process on;
worker_processes 1;
daemon on;
pid logs/nginx.pid;
error_log logs/error.log info;
events { worker_connections 64; }
http {
    access_log off;
    ratelimit_policy_db "$ENV{TEST_NGINX_PG_CONNINFO}";
    ratelimit_policy_zone zone=node2:8m;
    server {
        listen 127.0.0.1:$Node2Port;
        location /send {
            ratelimit_policy_enforce send_message;
            proxy_pass http://127.0.0.1:$Node2Port/upstream/;
        }
        location /upstream/ { return 200 "node2\\n"; }
    }
}
_EOC_
    close $out;
    system($ENV{TEST_NGINX_BINARY} || 'nginx', '-p', "$Node2Dir/",
           '-c', 'conf/nginx.conf') == 0
        or die "node 2 did not start\n";
    wait_until(5, sub { -s "$Node2Dir/logs/nginx.pid" })
        or die "node 2 wrote no pid file\n";
}

sub node2_stop {
    open my $in, '<', "$Node2Dir/logs/nginx.pid" or return;
    chomp(my $pid = <$in>);
    close $in;
    kill 'QUIT', $pid;
    wait_until(10, sub { !kill(0, $pid) || _zombie($pid) });
}

sub _zombie {
    my $pid = shift;
    open my $in, '<', "/proc/$pid/stat" or return 1;
    my $stat = <$in> // '';
    close $in;
    return $stat =~ /\)\s+Z/;
}

sub node2_get {
    my $path = shift;
    local $ENV{TEST_NGINX_SERVER_PORT} = $Node2Port;
    return http_get($path);
}

run_tests();

__DATA__

=== TEST 1: the counters survive nginx -s reload
--- init
reset_fixtures();
my @r = map { http_get(main::q_('/send', 'FREE00000002')) } 1 .. 3;
Test::More::is(join(' ', map { $_->{headers}{'x-ratelimit-remaining'} } @r),
               '7 6 5', 'TEST 1: 3 admitted before the reload');
my $master = main::master_pid();
my @old = main::workers_of($master);
kill 'HUP', $master;
Test::More::ok(wait_until(10, sub {
                   my @now = main::workers_of($master);
                   @now == 2 && !grep { my $o = $_; grep { $_ == $o } @now }
                                      @old;
               }), 'TEST 1: new workers after the reload');
--- config
--- request eval
"GET " . main::q_('/send', 'FREE00000002')
--- response_headers_like
X-RateLimit-Remaining: 4
RateLimit: "minute";r=4;t=(5\d|60), "day";r=196;t=\d+



=== TEST 2: daily usage is written behind, in batches, not once per request
--- init
reset_fixtures();
pg_stat_reset();
my @r = map { http_get(main::q_('/send', 'PAID00000001')) } 1 .. 30;
Test::More::is(scalar(grep { $_->{status} == 200 } @r), 30,
               'TEST 2: 30 admitted');
Test::More::ok(wait_until(5, sub {
                   main::today_count('PAID00000001', 'send_message') == 30
               }), 'TEST 2: all 30 written');
my $writes = pg_query_count($main::Usage);
Test::More::cmp_ok($writes, '<=', 3,
                   "TEST 2: in $writes statements (one batch a second)");
--- config
--- request eval
"GET " . main::q_('/send', 'PAID00000001')
--- response_headers_like
RateLimit: "minute";r=29;t=\d+, "day";r=9969;t=\d+
--- db_check
SELECT count FROM ratelimit.daily_usage WHERE instance_id = 'PAID00000001';
--- db_check_out
31
--- db_check_timeout: 5



=== TEST 3: after a full restart (a new nginx, a new zone) the daily count comes back from the database, the minute starts afresh
--- config
--- request eval
"GET " . main::q_('/send', 'PAID00000001')
--- response_headers_like
RateLimit: "minute";r=59;t=60, "day";r=9968;t=\d+
--- db_check
SELECT count FROM ratelimit.daily_usage WHERE instance_id = 'PAID00000001';
--- db_check_out
32
--- db_check_timeout: 5



=== TEST 4: a graceful stop writes what is pending
--- init
reset_fixtures();
main::node2_start();
my @r = map { main::node2_get(main::q_('/send', 'PAID00000001')) } 1 .. 5;
Test::More::is(join(' ', map { $_->{status} } @r), '200 200 200 200 200',
               'TEST 4: 5 admitted by node 2');
main::node2_stop();
Test::More::is(main::today_count('PAID00000001', 'send_message'), 5,
               'TEST 4: written when node 2 stopped');
--- config
--- request eval
"GET " . main::q_('/send', 'PAID00000001')
--- response_headers_like
RateLimit: "minute";r=59;t=60, "day";r=9994;t=\d+



=== TEST 5: two nodes sharing the database stay within the bound of a daily cap
--- init
reset_fixtures();
psql("INSERT INTO ratelimit.daily_usage VALUES ('OTHR00000001',"
     . " (now() AT TIME ZONE 'UTC')::date, 'send_message', 190);");
main::node2_start();
# strict: 8 a minute, 200 a day, so 10 are left today; the nodes take
# turns, each sending one request a second: either could admit 8 more
# within the minute on its own.  The bound on what both admit beyond the
# cap is nodes x rate x (sync interval + one tick + the write) = 2 x 1/s
# x ~1.5 s: 3; the check allows 4.
my $p = main::q_('/send', 'OTHR00000001');
my ($n1, $n2) = (0, 0);
for my $i (1 .. 12) {
    $n1++ if http_get($p)->{status} == 200;
    Time::HiRes::sleep(0.5);
    $n2++ if main::node2_get($p)->{status} == 200;
    Time::HiRes::sleep(0.5);
}
main::node2_stop();
my $n = $n1 + $n2;
Test::More::cmp_ok($n1 * $n2, '>', 0, "TEST 5: both nodes admitted ($n1, $n2)");
Test::More::cmp_ok($n, '>=', 10, "TEST 5: $n admitted, at least the 10 left");
Test::More::cmp_ok($n, '<=', 14, "TEST 5: $n admitted, within 10 + 4");
Test::More::ok(wait_until(5, sub {
                   main::today_count('OTHR00000001', 'send_message')
                   == 190 + $n
               }), 'TEST 5: the database holds exactly what both admitted');
--- config
--- request eval
"GET " . main::q_('/send', 'OTHR00000001')
--- error_code: 429



=== TEST 6: a crashed worker's request in flight is released by the worker that replaces it
--- init
reset_fixtures();
my $p = main::q_('/slow', 'OTHR00000001');
my $master = main::master_pid();
my @w = main::workers_of($master);
# a client that stays connected while its workers die
system("curl -s -m 10 -o /dev/null"
       . " 'http://127.0.0.1:$ENV{TEST_NGINX_SERVER_PORT}$p' &");
Time::HiRes::sleep(0.4);
my $r = http_get($p);
Test::More::is($r->{status}, 429, 'TEST 6: strict: one in flight at a time');
# stopped first, then killed: a worker still running when the other dies
# would see its upstream or client connection close and end the request
# in flight itself, and nothing would be left for its successor to release
kill 'STOP', @w;
kill 'KILL', @w;
Test::More::ok(wait_until(10, sub {
                   my @now = main::workers_of($master);
                   @now == 2 && !grep { my $o = $_; grep { $_ == $o } @now }
                                      @w;
               }), 'TEST 6: the workers were replaced');
--- config
--- request eval
"GET " . main::q_('/send', 'OTHR00000001')
--- response_headers_like
X-RateLimit-Remaining: 6
--- error_log
[alert]
released 1 requests in flight of



=== TEST 7: counts admitted under no daily cap are written within 10 s, not every second; a cap, or a stop, writes them at once
--- init
reset_fixtures();
my $id = 'PAID00000002';    # unlimited: no daily cap
my $n = sub { main::today_count($id, 'send_message') };
my @r = map { http_get(main::q_('/send', $id)) } 1 .. 20;
Test::More::is(scalar(grep { $_->{status} == 200 } @r), 20, 'TEST 7: 20 admitted');
Time::HiRes::sleep(2.5);
Test::More::is($n->(), 0, 'TEST 7: not written within 2.5 s');
Test::More::ok(wait_until(12, sub { $n->() == 20 }), 'TEST 7: written within 10 s');
# pending again, then a daily cap applies: written within the second
http_get(main::q_('/send', $id)) for 1 .. 5;
psql("UPDATE ratelimit.instances SET policy_slug = 'business' WHERE instance_id = '$id';");
Test::More::ok(wait_until(5, sub {
                   (http_get(main::q_('/send', $id))->{headers}
                    {'ratelimit-policy'} // '') =~ /q=60;/
               }), 'TEST 7: business applies');
my $t0 = Time::HiRes::time();
my $ok = wait_until(5, sub { $n->() >= 26 });
Test::More::ok($ok && Time::HiRes::time() - $t0 < 2.5,
               sprintf 'TEST 7: under a cap, written in %.1f s', Time::HiRes::time() - $t0);
# a graceful stop writes what waits in the lazy queue
psql("UPDATE ratelimit.instances SET policy_slug = 'unlimited' WHERE instance_id = '$id';");
my $before = $n->();
main::node2_start();
my @r2 = map { main::node2_get(main::q_('/send', $id)) } 1 .. 4;
Test::More::is(join(' ', map { $_->{status} } @r2), '200 200 200 200',
               'TEST 7: 4 admitted by node 2');
main::node2_stop();
Test::More::is($n->(), $before + 4, 'TEST 7: written when node 2 stopped');
--- config
--- request eval
"GET " . main::q_('/send', 'PAID00000001')
--- response_headers_like
RateLimit: "minute";r=59;t=60, "day";r=9999;t=\d+



=== TEST 8: requests admitted under no concurrent_limit are not counted in flight by a policy adopted while they run
--- init
reset_fixtures();
my $id = 'PAID00000002';    # unlimited
my $port = $ENV{TEST_NGINX_SERVER_PORT};
my $slower = main::q_('/slower', $id);
system("curl -s -m 15 -o /dev/null 'http://127.0.0.1:$port$slower' &");
Time::HiRes::sleep(0.5);
psql("UPDATE ratelimit.instances SET policy_slug = 'strict' WHERE instance_id = '$id';");
Time::HiRes::sleep(1.5);
my $a = http_get(main::q_('/send', $id));
Test::More::is($a->{status}, 200, 'TEST 8: strict (concurrent_limit 1) admits: the request in flight is not counted');
Test::More::like($a->{headers}{'ratelimit-policy'} // '', qr/q=8;/, 'TEST 8: under strict');
system("curl -s -m 15 -o /dev/null 'http://127.0.0.1:$port$slower' &");
Time::HiRes::sleep(0.5);
my $b = http_get(main::q_('/send', $id));
Test::More::is($b->{status}, 429, 'TEST 8: one admitted under strict is in flight: 429');
Test::More::like($b->{body}, qr/"limit":"concurrent_limit"/, 'TEST 8: the concurrency limit');
system("pkill -f 'curl -s -m 15 -o /dev/null http://127.0.0.1:$port/slower'");
--- config
    location /slower-upstream/ {
        limit_rate 50;
        return 200 "slower upstream ................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................................\n";
    }

    location /slower {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/slower-upstream/;
    }
--- request
GET /upstream/
--- response_body
upstream
