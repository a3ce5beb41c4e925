# Lookups in libpq's pipeline mode (ratelimit_policy_db pipeline=N,
# default 8): a lookup that finds no idle connection follows the lookups
# already running on one, up to N per connection; the lookups of one turn
# of the event loop share one Sync.  Other statements run alone on a
# connection, each with a Sync of its own.
#
#   1    pool=1 pipeline=3 queue=1: of five concurrent slow lookups, three
#        run on the one connection and one waits: four served, one fast
#        503; the same again (nothing leaks)
#   2    pipeline=1: one lookup per connection, as without pipelining
#   3    a lookup that followed one that timed out (its backend stopped
#        with SIGSTOP) waits again and is served on a new connection
#        within its own time, not failed with the first
#   4    the connection lost with three lookups in flight: three fast
#        503s, then recovery
#   5    a PATCH never follows a running lookup: it waits, and a lookup
#        that comes after it waits behind it (first come, first served)
#   6    no lookup follows a PATCH that waits for a row lock: lookups go
#        to another connection and are answered at once
#   7    the lookups of one turn of the event loop share one Sync: when
#        the first fails, the server skips the four after it, and they
#        are sent again and answered, not failed with it
#   8    two such groups on one connection, the second sent while the
#        first still runs: each failed lookup fails alone

use lib 't/lib';
use RLP;
use RLPHelpers;
use POSIX ();
use IO::Select;
use IO::Socket::INET;
use Time::HiRes ();

repeat_each(1);

plan tests => 69;

our $Api = '/v2/session/rate-limit';

our %Token = (FREE => 'free-token-1001', PAID => 'paid-token-1002',
              SLOW => 'free-token-1001', POIS => 'free-token-1001');

sub q_ {
    my ($id, $extra) = @_;
    my $p = "$Api?instance_id=$id&access_token=" . $Token{substr $id, 0, 4};
    return defined $extra ? "$p&$extra" : $p;
}

sub metric {
    my ($body, $name) = @_;
    return $body =~ /^nginx_ratelimit_policy_\Q$name\E (\S+)$/m ? $1 : undef;
}

# the pid of the module's pooled connection (pool=1): not the listener's
sub pooled_backend {
    my $pid = RLP::psql(<<'_SQL_');
SELECT pid FROM pg_stat_activity
 WHERE application_name = 'nginx ratelimit_policy'
   AND query NOT IN ('LISTEN ratelimit_policy', 'SELECT 1');
_SQL_
    $pid =~ s/\s+//g;
    die "no pooled connection, or more than one: \"$pid\"\n"
        unless $pid =~ /^\d+$/;
    return $pid;
}

sub module_backends {
    my $n = RLP::psql("SELECT count(*) FROM pg_stat_activity"
                      . " WHERE application_name = 'nginx ratelimit_policy'");
    $n =~ s/\s+//g;
    return $n;
}

sub _response {
    my ($s, $deadline) = @_;
    my $buf = '';
    my $sel = IO::Select->new($s);
    while (Time::HiRes::time() < $deadline) {
        my ($head, $body) = split /\r\n\r\n/, $buf, 2;
        if (defined $body && $head =~ /^Content-Length:\s*(\d+)/mi
            && length($body) >= $1)
        {
            return RLPHelpers::_parse($buf);
        }
        next unless $sel->can_read(0.1);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
    }
    return RLPHelpers::_parse($buf);
}

sub _stop {
    my $pid = shift;
    kill 'STOP', $pid;
    # the signal takes effect asynchronously: wait until it is stopped
    for (1 .. 100) {
        open my $st, '<', "/proc/$pid/stat" or last;
        my $line = <$st> // '';
        close $st;
        return if $line =~ /^\d+ \(.*\) T /;
        Time::HiRes::sleep(0.01);
    }
    kill 'CONT', $pid;
    die "nginx ($pid) did not stop\n";
}

# GET requests written, one per connection, on connections nginx has
# already accepted and served, while its worker is stopped (SIGSTOP): it
# then reads them all in one turn of its event loop, in the order written
sub one_turn {
    return turns([@_]);
}

# the same for several turns, 0.2 s apart; the responses in order
sub turns {
    my @paths = map { @$_ } @_;
    my @s;
    for (@paths) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => RLPHelpers::_port(),
                                      Proto => 'tcp', Timeout => 5)
            or die "connect: $!\n";
        syswrite($s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
        my $r = _response($s, Time::HiRes::time() + 5);
        die "warm-up request: $r->{status}\n" unless $r->{status} == 200;
        push @s, $s;
    }
    # the worker, or the one process of master_process off
    my @w = main::workers_of(main::master_pid());
    @w = (main::master_pid()) unless @w;
    die "more than one worker: @w\n" unless @w == 1;
    my $i = 0;
    for my $turn (@_) {
        Time::HiRes::sleep(0.2) if $i;
        _stop($w[0]);
        for (@$turn) {
            syswrite($s[$i], "GET $paths[$i] HTTP/1.1\r\nHost: localhost\r\n\r\n");
            $i++;
            Time::HiRes::sleep(0.02);
        }
        kill 'CONT', $w[0];
    }
    my $deadline = Time::HiRes::time() + 10;
    return map { _response($_, $deadline) } @s;
}

# after a test of aborted groups: nothing waits, one pooled connection
sub settled {
    my $T = shift;
    my $m = http_get('/metrics')->{body};
    Test::More::is(metric($m, 'db_wait_queue_length'), 0,
                   "$T: nothing left waiting");
    Test::More::is(module_backends(), 2,
                   "$T: the same pooled connection and the listener");
}

# every block: the API and the metrics, fixtures reset, the listener up
add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value(config => <<'EOC') unless defined $block->config;
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /metrics { ratelimit_policy_metrics; }
EOC

    my $init = $block->init // '';
    $block->set_value(init => "reset_fixtures();\nwait_listener();\n$init");
});

run_tests();

__DATA__

=== TEST 1: pool=1 pipeline=3 queue=1: three lookups on the connection, one waiting, a fast 503 beyond
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=1 pipeline=3 queue=1
                        query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
Test::More::is(http_get(main::q_('FREE00000002'))->{status}, 200,
               'TEST 1: warm');
my @ids = map { sprintf 'SLOW%08d', $_ } 1 .. 10;
slow_instance($_, 0.3, 1001) for @ids;
my @r = http_parallel([ map { { path => main::q_($_) } } @ids[0 .. 4] ], 10);
my @st = sort map { $_->{status} } @r;
Test::More::is("@st", '200 200 200 200 503',
               'TEST 1: 3 running + 1 waiting served, 1 refused');
my @fast = grep { $_->{status} == 503 && $_->{elapsed} < 0.25 } @r;
Test::More::is(scalar(@fast), 1, 'TEST 1: the 503 is immediate');
Test::More::like(join(',', map { $_->{headers}{'retry-after'} // '' }
                           grep { $_->{status} == 503 } @r),
                 qr/^\d+$/, 'TEST 1: with Retry-After');
# the lookups ran one after the other on the one connection
my @slow = sort { $a <=> $b } map { $_->{elapsed} }
                                  grep { $_->{status} == 200 } @r;
Test::More::cmp_ok($slow[-1], '>', 1.1, "TEST 1: the last answered after"
                   . " four lookups of 0.3 s ($slow[-1]s)");
# five others, none of them cached by the first burst
@r = http_parallel([ map { { path => main::q_($_) } } @ids[5 .. 9] ], 10);
@st = sort map { $_->{status} } @r;
Test::More::is("@st", '200 200 200 200 503', 'TEST 1: again: the same');
my $m = http_get('/metrics')->{body};
Test::More::is(main::metric($m, 'db_wait_queue_length'), 0,
               'TEST 1: nothing left waiting');
Test::More::like($m, qr/^nginx_ratelimit_policy_db_errors_total\{(?=[^}]*statement="lookup")(?=[^}]*reason="unavailable")[^}]*\} 2$/m,
                 'TEST 1: two lookups refused');
Test::More::is(main::module_backends(), 2,
               'TEST 1: one pooled connection and the listener');
restore_schema();
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- response_body_like: "current_policy":"standard_policy"
--- error_log
database queue is full



=== TEST 2: pipeline=1: one lookup per connection
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=1 pipeline=1 queue=1
                        query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
Test::More::is(http_get(main::q_('FREE00000002'))->{status}, 200,
               'TEST 2: warm');
slow_instance("SLOW0000000$_", 0.3, 1001) for 1 .. 5;
my @r = http_parallel([ map { { path => main::q_("SLOW0000000$_") } } 1 .. 5 ],
                      10);
my @st = sort map { $_->{status} } @r;
Test::More::is("@st", '200 200 503 503 503',
               'TEST 2: 1 running + 1 waiting served, 3 refused');
restore_schema();
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- response_body_like: "current_policy":"standard_policy"
--- error_log
database queue is full



=== TEST 3: a lookup that followed a timed-out one is served on a new connection, within its own time
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=1 pipeline=4
                        query_timeout=1s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
Test::More::is(http_get(main::q_('FREE00000001'))->{status}, 200,
               'TEST 3: warm');
my $pid = main::pooled_backend();
kill 'STOP', $pid or die "kill -STOP $pid: $!";
my @r = eval {
    http_parallel([ { path => main::q_('FREE00000002') },
                    { path => main::q_('FREE00000003'), delay => 0.4 } ], 10);
};
my $err = $@;
kill 'CONT', $pid;
die $err if $err;
Test::More::is($r[0]{status}, 504, 'TEST 3: the first lookup: 504');
Test::More::cmp_ok($r[0]{elapsed}, '<', 1.5,
                   "TEST 3: at query_timeout ($r[0]{elapsed}s)");
Test::More::is($r[1]{status}, 200, 'TEST 3: the one that followed it: 200');
Test::More::cmp_ok($r[1]{elapsed}, '<', 1,
                   "TEST 3: within its own time ($r[1]{elapsed}s)");
Test::More::like($r[1]{body}, qr/"current_policy":"standard_policy"/,
                 'TEST 3: its own answer');
my $m = http_get('/metrics')->{body};
Test::More::is(main::metric($m, 'db_wait_queue_length'), 0,
               'TEST 3: nothing left waiting');
--- request
GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002
--- response_body_like: "current_policy":"business"
--- error_log
query "ratelimit_policy_lookup" timed out



=== TEST 4: the connection lost with three lookups in flight: three fast 503s, then recovery
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=1 pipeline=4
                        query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
Test::More::is(http_get(main::q_('FREE00000002'))->{status}, 200,
               'TEST 4: warm');
slow_instance("SLOW0000000$_", 3, 1001) for 1 .. 3;
my $killer = terminate_lookups_after(0.4);
my @r = http_parallel([ map { { path => main::q_("SLOW0000000$_") } } 1 .. 3 ],
                      10);
waitpid $killer, 0;
my @st = sort map { $_->{status} } @r;
Test::More::is("@st", '503 503 503', 'TEST 4: the three lookups lost: 503');
my @late = grep { $_->{elapsed} >= 1.5 } @r;
Test::More::is(scalar(@late), 0, 'TEST 4: at once, not at query_timeout');
restore_schema();
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- response_body_like: "current_policy":"standard_policy"
--- error_log
database connection lost



=== TEST 5: a PATCH waits for its own connection, and a later lookup waits behind it
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=1 pipeline=4
                        query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
# the PATCH's instance cached: the PATCH sends its statement only
Test::More::is(http_get(main::q_('FREE00000003'))->{status}, 200,
               'TEST 5: warm');
slow_instance('SLOW00000001', 1, 1001);
my @r = http_parallel([
    { path => main::q_('SLOW00000001') },
    { path => main::q_('FREE00000003', 'policy_slug=strict'),
      method => 'PATCH', delay => 0.2 },
    { path => main::q_('FREE00000002'), delay => 0.3 },
    { path => '/metrics', delay => 0.6 },
], 10);
Test::More::is(join(' ', map { $_->{status} } @r), '200 200 200 200',
               'TEST 5: all served');
Test::More::is(main::metric($r[3]{body}, 'db_wait_queue_length'), 2,
               'TEST 5: meanwhile the PATCH and the later lookup waited');
Test::More::cmp_ok($r[1]{elapsed}, '>', 0.5,
                   "TEST 5: the PATCH after the lookup ($r[1]{elapsed}s)");
Test::More::cmp_ok($r[2]{elapsed}, '>', 0.5,
                   "TEST 5: the lookup after the PATCH ($r[2]{elapsed}s)");
Test::More::like($r[1]{body}, qr/"current_policy":"strict"/,
                 'TEST 5: the PATCH took effect');
restore_schema();
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- response_body_like: "current_policy":"strict"
--- no_error_log
[error]



=== TEST 6: no lookup follows a PATCH that waits for a row lock
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=2 pipeline=4
                        query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
Test::More::is(http_get(main::q_('PAID00000001'))->{status}, 200,
               'TEST 6: warm');
my $locker = fork() // die;
if ($locker == 0) {
    RLP::psql("BEGIN; SELECT 1 FROM ratelimit.instances"
              . " WHERE instance_id = 'PAID00000001' FOR UPDATE;"
              . " SELECT pg_sleep(1.5); COMMIT;");
    POSIX::_exit(0);
}
Time::HiRes::sleep(0.2);
my @r = http_parallel([
    { path => main::q_('PAID00000001', 'policy_slug=unlimited'),
      method => 'PATCH' },
    (map { { path => main::q_($_), delay => 0.3 } }
         qw(FREE00000001 FREE00000002 FREE00000003)),
], 10);
waitpid $locker, 0;
Test::More::is(join(' ', map { $_->{status} } @r), '200 200 200 200',
               'TEST 6: all served');
Test::More::cmp_ok($r[0]{elapsed}, '>', 0.8,
                   "TEST 6: the PATCH waited for the lock ($r[0]{elapsed}s)");
my @slow = grep { $_->{elapsed} >= 0.6 } @r[1 .. 3];
Test::More::is(scalar(@slow), 0, 'TEST 6: the lookups did not wait for it ('
               . join(' ', map { sprintf '%.2f', $_->{elapsed} } @r[1 .. 3])
               . ')');
--- request
GET /v2/session/rate-limit?instance_id=PAID00000001&access_token=paid-token-1002
--- response_body_like: "current_policy":"unlimited"
--- no_error_log
[error]



=== TEST 7: the lookups of one turn share a Sync; when the first fails, the others are sent again and answered
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=1 pipeline=8
                        query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
Test::More::is(http_get(main::q_('FREE00000002'))->{status}, 200,
               'TEST 7: warm');
my @ids = ('POIS00000001', map { "SLOW0000007$_" } 1 .. 4);
slow_instance($_, 0, 1001) for @ids;
fail_instance('POIS00000001');
my @r = main::one_turn(map { main::q_($_) } @ids);
Test::More::is(join(' ', map { $_->{status} } @r), '503 200 200 200 200',
               'TEST 7: the failed lookup 503, the four after it served');
Test::More::like($r[$_]{body}, qr/"current_policy":"standard_policy"/,
                 "TEST 7: $ids[$_] answered") for 1 .. 4;
main::settled('TEST 7');
restore_schema();
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- response_body_like: "current_policy":"standard_policy"
--- error_log
rlp_test: poisoned lookup of POIS00000001
lookup skipped after an earlier query of its pipeline failed, sent again



=== TEST 8: two aborted groups on one connection, the second sent while the first runs
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" pool=1 pipeline=8
                        query_timeout=5s;
    ratelimit_policy_zone zone=ratelimit:8m;
--- init
Test::More::is(http_get(main::q_('FREE00000002'))->{status}, 200,
               'TEST 8: warm');
slow_instance('POIS00000001', 0.6, 1001);
slow_instance($_, 0, 1001) for qw(POIS00000002 SLOW00000081 SLOW00000082
                                  SLOW00000083);
fail_instance('POIS00000001', 'POIS00000002');
my @r = main::turns([ map { main::q_($_) } qw(POIS00000001 SLOW00000081
                                              SLOW00000082) ],
                    [ map { main::q_($_) } qw(POIS00000002
                                              SLOW00000083) ]);
Test::More::is(join(' ', map { $_->{status} } @r), '503 200 200 503 200',
               'TEST 8: each failed lookup failed alone');
main::settled('TEST 8');
restore_schema();
--- request
GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001
--- response_body_like: "current_policy":"standard_policy"
--- error_log
rlp_test: poisoned lookup of POIS00000001
rlp_test: poisoned lookup of POIS00000002
