# No blocking call in the worker (POSTGRES-NOTES.md "What a test suite
# must prove" 1): strace follows the running nginx (one process: master
# off, as both runners start it) while it serves uncached and cached GETs
# and PostgreSQL is stopped (refused connects), started and restarted (the
# pool and the LISTEN connection reconnect) -- TEST 1 -- or statements time
# out, the server is frozen with SIGSTOP and every connection of the module
# is terminated -- TEST 2.  The trace must show
#
#   * no poll / ppoll / select / pselect6 that can wait (timeout not 0).
#     nginx itself waits only in epoll_wait (its event module), so such a
#     call would be a library waiting on its own: libpq's pqSocketCheck()
#     (PQconnectdb, PQexec, PQgetResult while busy, a blocking PQflush) or
#     glibc's resolver.  Calls with a zero timeout are readiness probes
#     that return at once (libpq's pqReadReady() when a read found no
#     data); they are counted in a note, not failed;
#   * no open of /etc/hosts, /etc/resolv.conf, /etc/nsswitch.conf,
#     /etc/host.conf or /etc/gai.conf (name resolution in the worker);
#   * every connect() to PostgreSQL on a socket already made non-blocking
#     (SOCK_NONBLOCK, or fcntl F_SETFL with O_NONBLOCK, before it);
#   * and, so that the trace is known to cover what matters: epoll_wait
#     calls, connect() calls to PostgreSQL's port, and both successes and
#     errors answered while tracing.
#
# The note also lists every file the worker opened (libpq reads
# /etc/passwd through getpwuid() on each connect, to find ~/.pgpass).
#
# strace attaches after nginx started (configuration time, when the
# master may resolve names and block, is not traced) and is stopped
# before the block's own requests.  Every wait is bounded.

use lib 't/lib';
use RLP;
use RLPHelpers;
use POSIX ();
use List::Util ();

master_off();
repeat_each(1);

# per block: check_trace() 7 + 2 more in --- init, and 2 requests x
# (status + body)
plan tests => blocks() * 13;

our $Strace = '/usr/bin/strace';
our @Calls = qw(poll ppoll select pselect6 epoll_wait epoll_pwait openat open
                connect socket fcntl);
our @ResolverFiles = qw(/etc/hosts /etc/resolv.conf /etc/nsswitch.conf
                        /etc/host.conf /etc/gai.conf);

sub nginx_pid {
    my $f = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/nginx.pid";
    open my $in, '<', $f or die "$f: $!";
    my $pid = <$in>;
    close $in;
    chomp $pid;
    return $pid;
}

sub traced_by {
    my $pid = shift;
    open my $in, '<', "/proc/$pid/status" or return 0;
    while (<$in>) {
        return $1 if /^TracerPid:\s+(\d+)/;
    }
    return 0;
}

# starts strace on $pid; returns (strace pid, trace file)
sub strace_start {
    my $pid = shift;
    -x $Strace or die "$Strace is missing: util/deps installs strace\n";

    my $out = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/strace.out";
    unlink $out;
    my $child = fork();
    die "fork: $!" unless defined $child;
    if ($child == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', "$out.stderr";
        { exec $Strace, '-f', '-qq', '-tt', '-o', $out,
                '-e', 'trace=' . join(',', @Calls), '-p', $pid; }
        POSIX::_exit(127);
    }
    wait_until(5, sub { traced_by($pid) == $child })
        or die "strace did not attach to nginx $pid within 5 s\n";
    return ($child, $out);
}

sub strace_stop {
    my $child = shift;
    kill 'INT', $child;
    for (1 .. 100) {
        return 1 if waitpid($child, POSIX::WNOHANG()) == $child;
        Time::HiRes::sleep(0.05);
    }
    kill 'KILL', $child;
    waitpid($child, 0);
    return 0;
}

# a poll/select that can wait: a timeout other than zero (-1 or NULL: for ever)
sub can_wait {
    my ($call, $rest) = @_;
    if ($call eq 'poll') {
        return !($rest =~ /\],\s*\d+,\s*(-?\d+)\s*(?:\)|<unfinished)/ && $1 == 0);
    }
    return $rest !~ /\{tv_sec=0, tv_u?n?sec=0\}/;
}

sub analyse {
    my ($file, $port) = @_;
    open my $in, '<', $file or die "$file: $!";
    my (%count, @waits, @probes, @resolver, %files, @blocking_connects);
    my %nonblock;    # "pid fd" => 1
    my $pg_connects = 0;
    while (my $line = <$in>) {
        next unless $line =~ /^(\d+)\s+\S+\s+(\w+)\((.*)$/;
        my ($pid, $call, $rest) = ($1, $2, $3);
        $count{$call}++;

        if ($call =~ /^(?:poll|ppoll|select|pselect6)$/) {
            if (can_wait($call, $rest)) {
                push @waits, $line;
            } else {
                push @probes, $line;
            }

        } elsif ($call =~ /^open(?:at)?$/) {
            my ($f) = $rest =~ /"([^"]*)"/;
            $files{$f // '?'}++;
            for my $r (@main::ResolverFiles) {
                push @resolver, $line if defined $f && $f eq $r;
            }

        } elsif ($call eq 'socket') {
            if ($rest =~ /=\s*(\d+)\s*$/) {
                my $fd = $1;
                $nonblock{"$pid $fd"} = $rest =~ /SOCK_NONBLOCK/ ? 1 : 0;
            }

        } elsif ($call eq 'fcntl') {
            if ($rest =~ /^(\d+),\s*F_SETFL,\s*([^)]*)\)\s*=\s*0/) {
                my ($fd, $flags) = ($1, $2);
                $nonblock{"$pid $fd"} = $flags =~ /O_NONBLOCK/ ? 1 : 0;
            }

        } elsif ($call eq 'connect') {
            if ($rest =~ /^(\d+),.*sin_port=htons\($port\)/) {
                my $fd = $1;
                $pg_connects++;
                push @blocking_connects, $line unless $nonblock{"$pid $fd"};
            }
        }
    }
    close $in;
    return { count => \%count, waits => \@waits, probes => \@probes,
             resolver => \@resolver, files => \%files,
             blocking => \@blocking_connects, pg_connects => $pg_connects };
}

# the checks made on every trace: 7 tests
sub check_trace {
    my ($name, $stopped, $file, $seen) = @_;
    my $an = analyse($file, $ENV{TEST_NGINX_PG_PORT});
    my $count = $an->{count};

    Test::More::ok($stopped, "$name: strace detached when asked");
    Test::More::cmp_ok(($count->{epoll_wait} // 0)
                       + ($count->{epoll_pwait} // 0),
                       '>', 0, "$name: the trace shows the event loop");
    Test::More::cmp_ok($an->{pg_connects}, '>=', 2,
                       "$name: the trace shows connects to PostgreSQL");
    Test::More::is(scalar(@{ $an->{waits} }), 0,
                   "$name: no poll/ppoll/select/pselect6 that can wait")
        or Test::More::diag(join '', @{ $an->{waits} });
    Test::More::is(scalar(@{ $an->{resolver} }), 0,
                   "$name: no resolver file opened after start")
        or Test::More::diag(join '', @{ $an->{resolver} });
    Test::More::is(scalar(@{ $an->{blocking} }), 0,
                   "$name: every connect to PostgreSQL is non-blocking")
        or Test::More::diag(join '', @{ $an->{blocking} });
    Test::More::ok((grep { $_ >= 500 } @$seen) && (grep { $_ == 200 } @$seen),
                   "$name: errors and successes were served under strace ("
                   . join(' ', @$seen) . ')');

    # for the record (not failures): zero-timeout readiness probes (libpq's
    # pqReadReady() when a read finds no data) and the files opened
    Test::More::note("$name: " . scalar(@{ $an->{probes} })
                     . ' zero-timeout poll/select probes; opened: '
                     . join(', ', map { "$_ x$an->{files}{$_}" }
                                  sort keys %{ $an->{files} })
                     . '; syscalls: '
                     . join(', ', map { "$_ $count->{$_}" } sort keys %$count));
    return;
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: strace while PostgreSQL is stopped, started, restarted
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
pg_ensure_up();
reset_fixtures();
wait_listener();
my $pid = main::nginx_pid();
my ($st, $file) = main::strace_start($pid);

my @seen;
my $get = sub { my $r = http_get(@_); push @seen, $r->{status}; $r };

# uncached, cached, a wrong token, the canary
$get->(api_path('FREE00000001', 'free-token-1001'));
$get->(api_path('FREE00000001', 'free-token-1001'));
$get->(api_path('PAID00000001', 'paid-token-1002'));
$get->(api_path('FREE00000001', 'wrong-token'));
$get->('/canary');

# PostgreSQL down: cached served, uncached refused (fast 503)
pg_stop('fast');
$get->(api_path('FREE00000001', 'free-token-1001'));
$get->(api_path('FREE00000003', 'free-token-1001'));
Time::HiRes::sleep(0.3);
$get->(api_path('PAID00000003', 'paid-token-1002'));

# back, then restarted: the pool and the listener reconnect
pg_start();
my $up1 = wait_until(10, sub {
    $get->(api_path('FREE00000003', 'free-token-1001'))->{status} == 200 });
pg_restart('fast');
my $up2 = wait_until(10, sub {
    $get->(api_path('PAID00000003', 'paid-token-1002'))->{status} == 200 });
my $listening = eval { wait_listener(10) };
$get->(api_path('FREE00000002', 'free-token-1001'));
$get->(api_path('FREE00000002', 'free-token-1001'));

my $stopped = main::strace_stop($st);
main::check_trace('TEST 1', $stopped, $file, \@seen);
Test::More::ok($up1 && $up2, 'TEST 1: served again after start and restart ('
                             . join(' ', @seen) . ')');
Test::More::ok($listening, 'TEST 1: listening again after the restart');
--- request eval
[
"GET /canary",
"GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=free-token-1001",
]
--- error_code eval
[200, 200]
--- response_body_like eval
[qr/^ok$/, qr/^\{"status":"success","current_policy":"standard_policy",/]



=== TEST 2: strace while statements time out, PostgreSQL freezes and connections are killed
--- http_config
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" query_timeout=500ms;
    ratelimit_policy_zone zone=ratelimit:8m;
--- config
    location = /v2/session/rate-limit { ratelimit_policy_api; }
    location = /canary { return 200 "ok\n"; }
--- init
pg_ensure_up();
reset_fixtures();
slow_instance('SLOW00000001', 2, 1001, 'strict');
wait_listener();
my ($st, $file) = main::strace_start(main::nginx_pid());

my @seen;
my $get = sub { my $r = http_get(@_); push @seen, $r->{status}; $r };

# statement_timeout / query_timeout while the worker waits for the answer
$get->(api_path('FREE00000001', 'free-token-1001'));
$get->(api_path('SLOW00000001', 'free-token-1001'));
$get->('/canary');

# a frozen server: the module's own timer ends the query, PQfinish()
pg_kill('STOP', 'all');
$get->(api_path('FREE00000003', 'free-token-1001'));
$get->(api_path('FREE00000001', 'free-token-1001'));
pg_kill('CONT', 'all');

# every connection of the module killed by the server
psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
     . " WHERE application_name = 'nginx ratelimit_policy'");
my $up = wait_until(10, sub {
    $get->(api_path('PAID00000001', 'paid-token-1002'))->{status} == 200 });
my $listening = eval { wait_listener(10) };

my $stopped = main::strace_stop($st);
restore_schema();

main::check_trace('TEST 2', $stopped, $file, \@seen);
Test::More::ok($up, 'TEST 2: served again after the connections were killed');
Test::More::ok($listening, 'TEST 2: listening again');
--- request eval
[
"GET /canary",
"GET /v2/session/rate-limit?instance_id=PAID00000003&access_token=paid-token-1002",
]
--- error_code eval
[200, 200]
--- response_body_like eval
[qr/^ok$/, qr/^\{"status":"success","current_policy":"standard_policy",/]
