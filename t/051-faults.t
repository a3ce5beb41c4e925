# Faults (issue 6), each with a latency canary (an unrelated "return 200"
# location that must stay fast while the fault lasts).
#
#   1    pool exhaustion: pool=1 queue=2 pipeline=1 (no lookup follows
#        another on the connection, see t/024) and slow lookups: the
#        fourth and fifth concurrent lookups get an immediate 503, the
#        queued ones are served; no connection slot leaks (the same burst
#        again behaves the same, the wait queue gauge is back at 0)
#   2    pg_terminate_backend() of the pooled connection while idle: the
#        listener stays, the pool reconnects
#   3    pg_terminate_backend() of the pooled connection in the middle of a
#        lookup: a fast 503 for that request, then recovery
#   4    pg_terminate_backend() of the listener under load: every request
#        served, it LISTENs again
#   5    an upstream engine that resets the connection before answering
#        (502) and in the middle of its body: the concurrency slot of the
#        enforced request is released both times (strict: 1 in flight)
#   6    nginx -s reload (SIGHUP) under load: no request fails, the old
#        workers exit promptly, the new worker 0 LISTENs, and the daily
#        usage in the database equals what the upstream received
#   7    nginx -s quit (SIGQUIT) with requests in flight: they complete,
#        nginx exits promptly, and what it admitted is in the database
#
# Covered elsewhere and not repeated: PostgreSQL stopped, restarted
# (fast, immediate, mid-query), frozen by SIGSTOP, a refused port, a silent
# port, a slow statement (t/013); every module connection terminated at
# once (t/013 TEST 8); a change made right after the listener's backend
# was terminated (t/022 TEST 17);
# an upstream that refuses the connection (t/030 TEST 19); counters across
# a reload and the write on a graceful stop (t/031 TEST 1, 4); no blocking
# system call during faults (t/015).

use lib 't/lib';
use RLP;
use RLPHelpers;
use File::Path ();
use File::Spec ();
use IO::Socket::INET ();
use POSIX ();
use Socket ();

$SIG{PIPE} = 'IGNORE';

master_on();
workers(2);
repeat_each(1);

our $Api = '/v2/session/rate-limit';

sub q_ {
    my ($loc, $id, $tok) = @_;
    $tok //= { FREE => 'free-token-1001', PAID => 'paid-token-1002',
               OTHR => 'other-token-1004', SLOW => 'free-token-1001',
               HIGH => 'paid-token-1002' }->{substr $id, 0, 4};
    return "$loc?instance_id=$id&access_token=$tok";
}

# latency of the canary while $sub runs: the worst of requests sent every
# 50 ms (on their own connections, from a child process)
sub canary_during {
    my ($sub, $secs) = @_;
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        close $r;
        my $worst = 0;
        my $end = Time::HiRes::time() + $secs;
        while (Time::HiRes::time() < $end) {
            my $t = Time::HiRes::time();
            my $res = RLPHelpers::http_get('/canary');
            my $e = $res->{status} == 200 ? Time::HiRes::time() - $t : 99;
            $worst = $e if $e > $worst;
            Time::HiRes::sleep(0.05);
        }
        printf $w "%.3f\n", $worst;
        close $w;
        POSIX::_exit(0);
    }
    close $w;
    my @ret = $sub->();
    my $worst = <$r>;
    waitpid $pid, 0;
    chomp $worst;
    return ($worst, @ret);
}

sub module_backends {
    my $where = shift // '';
    my $n = psql("SELECT count(*) FROM pg_stat_activity"
                 . " WHERE application_name = 'nginx ratelimit_policy' $where");
    $n =~ s/\s+//g;
    return $n;
}

sub today_count {
    my $id = shift;
    my $n = psql("SELECT coalesce(sum(count), 0) FROM ratelimit.daily_usage"
                 . " WHERE instance_id = '$id'"
                 . " AND day = (now() AT TIME ZONE 'UTC')::date;");
    $n =~ s/\s+//g;
    return $n;
}

# An engine on a port of this process (a child): "/ok" answers 200,
# "/slow" after 300 ms, "/rst" resets the connection before answering,
# "/rst-body" resets it in the middle of the body.  Every request it
# received is one line in $EngineLog.
our ($EnginePid, $EnginePort, $EngineLog);

sub engine_start {
    return if $EnginePid;
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                    LocalPort => 0, Listen => 128,
                                    ReuseAddr => 1)
        or die "engine: $!";
    $EnginePort = $srv->sockport;
    $EngineLog = File::Spec->catfile(File::Spec->tmpdir, "rlp-engine-$$.log");
    unlink $EngineLog;
    $EnginePid = fork() // die "fork: $!";
    if ($EnginePid) {
        close $srv;
        return;
    }
    $SIG{CHLD} = 'IGNORE';
    while (my $c = $srv->accept) {
        my $pid = fork();
        next if !defined $pid || $pid;
        my $req = '';
        while ($req !~ /\r\n\r\n/) {
            my $n = sysread($c, my $buf, 4096);
            last unless $n;
            $req .= $buf;
        }
        my ($path) = $req =~ m{^\S+ (\S+)};
        $path //= '';
        if (open my $log, '>>', $EngineLog) {
            print $log "$path\n";
            close $log;
        }
        if ($path =~ m{/rst(-body)?}) {
            if ($1) {
                syswrite $c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
                             . ('x' x 100);
                Time::HiRes::sleep(0.1);
            }
            setsockopt($c, Socket::SOL_SOCKET(), Socket::SO_LINGER(),
                       pack('ii', 1, 0));
            close $c;
            POSIX::_exit(0);
        }
        Time::HiRes::sleep(0.3) if $path =~ m{/slow};
        syswrite $c, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n"
                     . "Connection: close\r\n\r\nengine\n";
        close $c;
        POSIX::_exit(0);
    }
    POSIX::_exit(0);
}

sub engine_requests {
    my $re = shift;
    open my $in, '<', $EngineLog or return 0;
    my $n = grep { /$re/ } <$in>;
    close $in;
    return $n;
}

engine_start();
$ENV{TEST_NGINX_ENGINE_PORT} = $EnginePort;

our $Locations = <<'_EOC_';
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
    }

    location /send/ {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_ENGINE_PORT/;
    }

    location = /canary {
        return 200 "canary\n";
    }
_EOC_

# --- one_worker: this block runs with one worker (the pool is per worker)
add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value(config => $Locations . ($block->config // ''));
    workers(defined $block->one_worker ? 1 : 2);
});

# an instance of account 1002 with high_throughput (20 in flight, 300 a
# minute); t/fixtures.sql removes it again (ON DELETE CASCADE)
sub high_instance {
    psql("DELETE FROM ratelimit.daily_usage WHERE instance_id = 'HIGH00000001';"
         . " INSERT INTO ratelimit.instances VALUES"
         . " ('HIGH00000001', 1002, 'high_throughput')"
         . " ON CONFLICT (instance_id) DO UPDATE SET account_id = 1002,"
         . " policy_slug = 'high_throughput'");
}

# A second nginx (master, two workers, daemon off, a child of this
# process) with the module and /send/ to the engine, for the block that
# stops it; returns the master's pid.
our ($NodeDir, $NodePort);

sub node_start {
    $NodeDir = File::Spec->catdir(File::Spec->tmpdir, "rlp-051-node-$$");
    File::Path::remove_tree($NodeDir);
    File::Path::make_path("$NodeDir/conf", "$NodeDir/logs");
    $NodePort = free_port();
    my $user = $> == 0 ? 'user root;' : '';
    open my $out, '>', "$NodeDir/conf/nginx.conf" or die $!;
    print $out <<"_EOC_";
$RLP::LoadModule
$user
master_process on;
worker_processes 2;
daemon off;
pid logs/nginx.pid;
error_log logs/error.log info;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $NodeDir/client_body_temp;
    proxy_temp_path $NodeDir/proxy_temp;
    fastcgi_temp_path $NodeDir/fastcgi_temp;
    uwsgi_temp_path $NodeDir/uwsgi_temp;
    scgi_temp_path $NodeDir/scgi_temp;
    ratelimit_policy_db "$ENV{TEST_NGINX_PG_CONNINFO}";
    ratelimit_policy_zone zone=node:8m;
    server {
        listen 127.0.0.1:$NodePort;
        location /send/ {
            ratelimit_policy_enforce send_message;
            proxy_pass http://127.0.0.1:$EnginePort/;
        }
    }
}
_EOC_
    close $out;
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>>', "$NodeDir/logs/stderr.log";
        { no warnings 'exec';
          exec $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx',
               '-p', "$NodeDir/", '-c', 'conf/nginx.conf'; }
        POSIX::_exit(127);
    }
    my $up = wait_until(10, sub {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $NodePort);
        $s ? (close($s), 1) : 0;
    });
    die "the second nginx did not start\n" unless $up;
    return $pid;
}

reset_fixtures();

END {
    local ($?, $@);
    kill 'KILL', $EnginePid if $EnginePid;
    unlink $EngineLog if $EngineLog;
    File::Path::remove_tree($NodeDir) if $NodeDir;
    eval { pg_ensure_up(); restore_schema(); reset_fixtures(); 1 };
}

# each block: --- request (status + body) + the checks of its --- init
# (1: 9, 2: 4, 3: 4, 4: 3, 5: 6, 6: 7, 7: 6) + its error_log /
# no_error_log (5)
plan tests => blocks() * 2 + 44;

no_shuffle();
run_tests();

__DATA__

=== TEST 1: pool=1 queue=2 pipeline=1: beyond the queue a fast 503, no slot leaks
--- one_worker
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=1 queue=2 pipeline=1
                        query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /metrics { ratelimit_policy_metrics; }
--- init
reset_fixtures();
wait_listener();
# the catalogue and one instance, so that only the slow lookups remain
Test::More::is(http_get(main::q_($main::Api, 'FREE00000002'))->{status}, 200,
               'TEST 1: warm');
slow_instance("SLOW0000000$_", 0.8, 1001) for 1 .. 5;
my $burst = sub {
    http_parallel([ map { { path => main::q_($main::Api, "SLOW0000000$_") } } 1 .. 5 ], 10);
};
my ($worst, @r) = main::canary_during($burst, 3);
my @st = sort map { $_->{status} } @r;
Test::More::is("@st", '200 200 200 503 503', 'TEST 1: 1 running + 2 queued served, 2 refused');
my @fast = grep { $_->{status} == 503 && $_->{elapsed} < 0.5 } @r;
Test::More::is(scalar(@fast), 2, 'TEST 1: the 503s are immediate');
Test::More::like(join(',', map { $_->{headers}{'retry-after'} // '' } grep { $_->{status} == 503 } @r),
                 qr/^\d+,\d+$/, 'TEST 1: with Retry-After');
Test::More::cmp_ok($worst, '<', 0.5, "TEST 1: canary worst ${worst}s");
# the same burst again, on other instances: the slots came back
slow_instance($_, 0.8, 1001) for qw(SLOW00000006 SLOW00000007 SLOW00000008
                                    SLOW00000009 SLOW00000010);
@r = http_parallel([ map { { path => main::q_($main::Api, $_) } }
                     qw(SLOW00000006 SLOW00000007 SLOW00000008 SLOW00000009 SLOW00000010) ], 10);
@st = sort map { $_->{status} } @r;
Test::More::is("@st", '200 200 200 503 503', 'TEST 1: again: the same');
Test::More::is(http_get(main::q_($main::Api, 'FREE00000003'))->{status}, 200,
               'TEST 1: then an uncached instance at once');
my $m = http_get('/metrics')->{body};
Test::More::like($m, qr/^nginx_ratelimit_policy_db_wait_queue_length 0$/m,
                 'TEST 1: nothing left waiting');
Test::More::like($m, qr/^nginx_ratelimit_policy_db_errors_total\{(?=[^}]*statement="lookup")(?=[^}]*reason="unavailable")[^}]*\} 4$/m,
                 'TEST 1: four lookups refused');
restore_schema();
--- request
GET /canary
--- response_body
canary
--- error_log
database queue is full



=== TEST 2: the pooled connection terminated while idle: the listener stays, the pool reconnects
--- init
reset_fixtures();
wait_listener();
Test::More::is(http_get(main::q_($main::Api, 'FREE00000002'))->{status}, 200,
               'TEST 2: a pooled connection exists');
my $n = psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
             . " WHERE application_name = 'nginx ratelimit_policy'"
             . " AND query NOT IN ('LISTEN ratelimit_policy', 'SELECT 1')");
Test::More::cmp_ok($n, '>=', 1, "TEST 2: $n pooled connection(s) terminated");
Time::HiRes::sleep(0.1);
my ($worst, $ok) = main::canary_during(sub {
    wait_until(3, sub {
        http_get(main::q_($main::Api, 'FREE00000001'))->{status} == 200
    });
}, 1);
Test::More::ok($ok, 'TEST 2: an uncached instance is served again');
Test::More::cmp_ok($worst, '<', 0.5, "TEST 2: canary worst ${worst}s");
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- response_body_like: "current_policy":"standard_policy"
--- no_error_log
[crit]



=== TEST 3: the pooled connection terminated in the middle of a lookup: a fast 503, then recovery
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
reset_fixtures();
wait_listener();
Test::More::is(http_get(main::q_($main::Api, 'FREE00000002'))->{status}, 200,
               'TEST 3: warm');
slow_instance('SLOW00000001', 3, 1001);
my $killer = terminate_lookups_after(0.4);
my ($worst, $r) = main::canary_during(sub {
    http_get(main::q_($main::Api, 'SLOW00000001'));
}, 1.5);
waitpid $killer, 0;
Test::More::is($r->{status}, 503, 'TEST 3: the request of the lost query: 503');
Test::More::cmp_ok($r->{elapsed}, '<', 1.5, "TEST 3: after $r->{elapsed}s, not at query_timeout");
Test::More::cmp_ok($worst, '<', 0.5, "TEST 3: canary worst ${worst}s");
restore_schema();
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- response_body_like: "current_policy":"standard_policy"
--- error_log
database connection lost



=== TEST 4: the listener's backend terminated under load: requests and the canary unaffected, it LISTENs again
(t/022 TEST 17 shows that a change made right after is picked up.)
--- init
reset_fixtures();
wait_listener();
my $killer = fork() // die;
if ($killer == 0) {
    Time::HiRes::sleep(0.3);
    RLP::psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
              . " WHERE application_name = 'nginx ratelimit_policy'"
              . " AND query IN ('LISTEN ratelimit_policy', 'SELECT 1')");
    POSIX::_exit(0);
}
my @ids = qw(FREE00000001 FREE00000002 FREE00000003 PAID00000001
             PAID00000002 PAID00000003);
my ($worst, @r) = main::canary_during(sub {
    http_parallel([ map { { path => main::q_($main::Api, $ids[$_ % 6]),
                            delay => $_ * 0.03 } } 0 .. 29 ], 10);
}, 1);
waitpid $killer, 0;
Test::More::is(join(' ', grep { $_ != 200 } map { $_->{status} } @r), '',
               'TEST 4: 30 requests across it, all 200');
Test::More::cmp_ok($worst, '<', 0.5, "TEST 4: canary worst ${worst}s");
Test::More::ok(eval { wait_listener(5) }, 'TEST 4: listening again');
--- request
GET /canary
--- response_body
canary
--- error_log
stopped listening, reconnecting



=== TEST 5: an engine that resets connections: the concurrency slot is released each time
--- config
    location /rst/ {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_ENGINE_PORT/rst/;
    }
    location /rst-body/ {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_ENGINE_PORT/rst-body/;
    }
--- init
reset_fixtures();
# FREE00000002 is strict: one request in flight, 8 a minute
my ($worst, @r) = main::canary_during(sub {
    (http_get(main::q_('/rst/x', 'FREE00000002')),
     http_get(main::q_('/send/ok', 'FREE00000002')),
     http_get(main::q_('/rst-body/x', 'FREE00000002')),
     http_get(main::q_('/send/ok', 'FREE00000002')));
}, 1);
Test::More::is($r[0]{status}, 502, 'TEST 5: reset before the answer: 502');
Test::More::is($r[1]{status}, 200, 'TEST 5: the next request is admitted');
Test::More::ok($r[2]{status} == 200 && length($r[2]{body}) < 1000,
               'TEST 5: reset in the body: the answer is cut short');
Test::More::is($r[3]{status}, 200, 'TEST 5: the next request is admitted again');
Test::More::is($r[3]{headers}{'x-ratelimit-remaining'}, 4,
               'TEST 5: four counted, none twice');
Test::More::cmp_ok($worst, '<', 0.5, "TEST 5: canary worst ${worst}s");
--- request
GET /canary
--- response_body
canary



=== TEST 6: nginx -s reload under load: no request fails, old workers exit, the listener comes back, nothing double-counted
--- init
reset_fixtures();
main::high_instance();
wait_listener();
my $master = main::master_pid();
my @old = main::workers_of($master);
my $before = main::engine_requests(qr{^/slow});
# 40 requests over 2 s, each held 300 ms by the engine, the reload at 0.8 s
my $hup = fork() // die;
if ($hup == 0) {
    Time::HiRes::sleep(0.8);
    kill 'HUP', $master;
    POSIX::_exit(0);
}
my ($worst, @r) = main::canary_during(sub {
    http_parallel([ map { { path => main::q_('/send/slow', 'HIGH00000001'),
                            delay => $_ * 0.05 } } 0 .. 39 ], 15);
}, 2.5);
waitpid $hup, 0;
my @bad = grep { $_->{status} != 200 } @r;
Test::More::is(scalar(@bad), 0, 'TEST 6: 40 requests across the reload, all 200')
    or Test::More::diag(join ' ', map { $_->{status} . ($_->{error} // '') } @bad);
Test::More::cmp_ok($worst, '<', 0.5, "TEST 6: canary worst ${worst}s");
my $t0 = Time::HiRes::time();
my $gone = wait_until(5, sub {
    my @now = main::workers_of($master);
    @now == 2 && !grep { my $o = $_; grep { $_ == $o } @now } @old;
});
Test::More::ok($gone, sprintf('TEST 6: old workers gone %.1fs after the load',
                              Time::HiRes::time() - $t0));
Test::More::ok(eval { wait_listener(5) }, 'TEST 6: the new worker 0 LISTENs');
my $got = main::engine_requests(qr{^/slow}) - $before;
Test::More::is($got, 40, 'TEST 6: the engine got 40');
Test::More::ok(wait_until(5, sub { main::today_count('HIGH00000001') == 40 }),
               'TEST 6: daily usage 40 in the database');
Test::More::is(main::today_count('HIGH00000001'), 40, 'TEST 6: exactly 40');
--- request
GET /canary
--- response_body
canary
--- no_error_log
exited on signal



=== TEST 7: nginx -s quit with requests in flight: they complete, nginx exits promptly, usage written
--- init
reset_fixtures();
main::high_instance();
wait_listener();
my $node = main::node_start();
my $quit = fork() // die;
if ($quit == 0) {
    Time::HiRes::sleep(0.5);
    kill 'QUIT', $node;
    POSIX::_exit(0);
}
local $ENV{TEST_NGINX_SERVER_PORT} = $main::NodePort;
my @r = http_parallel([ map { { path => main::q_('/send/slow', 'HIGH00000001'),
                                delay => $_ * 0.02 } } 0 .. 19 ], 10);
waitpid $quit, 0;
my @bad = grep { $_->{status} != 200 } @r;
Test::More::is(scalar(@bad), 0, 'TEST 7: 20 requests, in flight at the quit, all 200')
    or Test::More::diag(join ' ', map { $_->{status} . ($_->{error} // '') } @bad);
my $t0 = Time::HiRes::time();
my $exited = wait_until(5, sub { waitpid($node, POSIX::WNOHANG()) == $node });
Test::More::ok($exited, sprintf('TEST 7: the node exited %.1fs after its last answer',
                                Time::HiRes::time() - $t0));
Test::More::is($? >> 8, 0, 'TEST 7: with status 0');
Test::More::is(main::today_count('HIGH00000001'), 20,
               'TEST 7: the 20 admitted are in the database');
open my $in, '<', "$main::NodeDir/logs/error.log" or die;
my $log = do { local $/; <$in> };
Test::More::unlike($log, qr/exited on signal|\[alert\]|\[crit\]/, 'TEST 7: no crash, no alert');
Test::More::ok(!IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $main::NodePort),
               'TEST 7: no worker left (nothing accepts on its port)');
--- request
GET /canary
--- response_body
canary
