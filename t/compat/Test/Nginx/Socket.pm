package Test::Nginx::Socket;

=pod

=head1 NAME

Test::Nginx::Socket (compat) - a small, self-written stand-in for the
subset of OpenResty's Test::Nginx::Socket data format that this project's
suites use.

=head1 WHY

Debian 12 does not package Test::Nginx.  t/lib/RLP.pm puts F<t/compat> on
C<@INC> only when the real Test::Nginx::Socket cannot be loaded, so the same
F<t/*.t> files run unchanged under either runner.  This file was written for
this project from the documented behaviour of the data format; it contains
no code of openresty/test-nginx.  Whatever it does not implement it refuses
loudly (bail out) instead of ignoring, so a block that passes here does not
silently mean something else under the real runner.

=head1 SUPPORTED

Functions (exported, same prototypes as the real module):
C<run_tests>, C<run_test>, C<repeat_each>, C<no_shuffle>, C<workers>,
C<master_on>, C<master_off>, C<master_process_enabled>, C<log_level>,
C<no_long_string>, C<env_to_nginx>, C<timeout>, C<add_block_preprocessor>,
C<add_response_body_check>, C<add_cleanup_handler>,
C<add_test_cleanup_handler>, C<bail_out>, C<is_str>, C<server_port>,
C<server_addr>, C<server_name>, C<server_root>, C<html_dir>,
C<worker_connections>, C<config_preamble>, C<no_root_location>,
C<check_accum_error_log>; everything Test::Base exports (C<plan>,
C<blocks>, C<is>, ...); C<ONLY>, C<SKIP>, C<LAST> (handled by Test::Base).

Sections:
C<main_config>, C<post_main_config>, C<http_config>, C<config>,
C<server_name>, C<init> (Perl code evaluated in package Test::Nginx::Util
once per block, after nginx started, before the requests),
C<user_files> (C<< >>> name [date] >>> lines), C<request> (string: the
first line is C<METHOD [URI [HTTP/x.y]]>, following lines are the body;
or C<request eval> returning an array ref of such strings),
C<more_headers> (string or array ref, one per request),
C<pipelined_requests> (array ref), C<raw_request> (string or array ref of
pieces), C<error_code>, C<error_code_like>, C<response_headers>
(C<Name: value>; C<!Name> means absent), C<response_headers_like>,
C<raw_response_headers_like>, C<raw_response_headers_unlike>,
C<response_body>, C<response_body eval> (string, array ref, or qr//),
C<response_body_like>, C<response_body_unlike>, C<ignore_response>,
C<error_log>, C<no_error_log>, C<grep_error_log> + C<grep_error_log_out>,
C<must_die> (optionally an exit code), C<wait>, C<timeout>, C<abort>,
C<log_level>, C<no_check_leak> (accepted, no effect).
C<$TEST_NGINX_*> variables are expanded in the config sections,
C<user_files>, C<pipelined_requests>, C<response_body> and
C<grep_error_log_out>; C<$TEST_NGINX_RAND_PORT_N> gives a free port per
block.

Every block needs a C<--- config> section (it may be empty).
C<no_long_string> is accepted; a failed comparison always shows a unified
diff (multi-line text) or the first differing offset (one line).

Test counting follows the real runner: per repetition and per request one
test for the status code, one per C<response_headers> line, one for the
body section, plus what C<add_response_body_check> callbacks emit; after
every request (the last one after C<wait>) one test per C<error_log> and
C<no_error_log> pattern and one for C<grep_error_log>.  A C<must_die> block
counts one test plus its error-log checks per repetition.

Environment: C<TEST_NGINX_PORT> / C<TEST_NGINX_SERVER_PORT> (default 1984),
C<TEST_NGINX_BINARY> (default C<nginx> on C<PATH>, else /usr/sbin/nginx),
C<TEST_NGINX_LOAD_MODULES>, C<TEST_NGINX_USE_VALGRIND> (1, or the valgrind
options), C<TEST_NGINX_NO_SHUFFLE>, C<TEST_NGINX_TIMEOUT>,
C<TEST_NGINX_LOG_LEVEL>, C<TEST_NGINX_MASTER_PROCESS>,
C<TEST_NGINX_SERVROOT>, C<TEST_NGINX_SLEEP>, C<TEST_NGINX_VERBOSE>,
C<TEST_NGINX_CHECK_ACCUM_ERR_LOG>.  C<TEST_NGINX_SERVER_PORT> and
C<TEST_NGINX_SERVER_ROOT> are set for the blocks.

=head1 HOW IT RUNS NGINX (differences from the real runner)

The configuration is written to F<t/servroot/conf/nginx.conf> with logs in
F<t/servroot/logs/>.  nginx runs with C<daemon off> as a child of the test
process in its own process group (C<master_process off> unless
C<master_on()>), listens on 127.0.0.1 only, and is started afresh for
every block and stopped when the block ends (SIGQUIT, then SIGKILL to the
group after a bound).  Readiness is detected from F</proc/net/tcp>
(Linux), so no probe connection shows up in the logs.  C<must_die> runs
C<nginx -t> (bounded) and checks that it fails; its error-log checks see
F<error.log> plus the stderr lines that are not already in it.  Every wait
is bounded: start, client I/O (C<timeout>, default 3 s, idle), C<nginx -t>
and stop.  SIGINT/SIGTERM stop nginx before the test process exits.

=head1 NOT SUPPORTED (the block bails out)

HTTP/2 and HTTP/3, curl, embedded TCP/UDP servers, stap, C<skip_*> and
C<todo*>, access-log checks, shutdown error-log checks, response body
filters, requests given as arrays of packets, and the check-leak,
benchmark, HUP-reload and randomize modes.

=cut

use Test::Base -base;

use File::Path ();
use File::Spec ();
use IO::Select ();
use IO::Socket::INET ();
use List::Util ();
use POSIX ();
use Scalar::Util ();
use Time::HiRes ();
use Errno ();

sub run_test ($);
sub cleanup ();
sub bail_out (@);
sub is_str (@);

our $VERSION = '0.01-compat';
our $COMPAT = 1;

our @EXPORT = qw(
    run_tests run_test repeat_each no_shuffle workers master_on master_off
    master_process_enabled log_level no_long_string env_to_nginx timeout
    add_block_preprocessor add_response_body_check add_cleanup_handler
    add_test_cleanup_handler bail_out is_str server_port server_addr
    server_name server_root html_dir worker_connections config_preamble
    no_root_location check_accum_error_log
);

# Settings (same defaults as the real runner where it has one).

our $RepeatEach        = 1;
our $NoShuffle         = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $Workers           = 1;
our $WorkerConnections = 64;
our $MasterProcess     = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $LogLevel          = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $NoLongString      = 0;
our $NoRootLocation    = 0;
our $CheckAccumErrLog  = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG} || 0;
our $Timeout           = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $Sleep             = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $Verbose           = $ENV{TEST_NGINX_VERBOSE} || 0;
our $ServerPort        = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT}
                         || 1984;
our $ServerAddr        = '127.0.0.1';
our $ServerName        = 'localhost';
our $LoadModules       = $ENV{TEST_NGINX_LOAD_MODULES};
our $UseValgrind       = $ENV{TEST_NGINX_USE_VALGRIND};
our $ConfigPreamble    = '';
our $NginxBinary       = $ENV{TEST_NGINX_BINARY} || _default_binary();
our @EnvToNginx;

our $ServRoot   = $ENV{TEST_NGINX_SERVROOT}
                  || File::Spec->rel2abs('t/servroot');
our $LogDir     = "$ServRoot/logs";
our $ErrLogFile = "$LogDir/error.log";
our $AccLogFile = "$LogDir/access.log";
our $PidFile    = "$LogDir/nginx.pid";
our $HtmlDir    = "$ServRoot/html";
our $ConfDir    = "$ServRoot/conf";
our $ConfFile   = "$ConfDir/nginx.conf";

$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;

our @BlockPreprocessors;
our @ResponseBodyChecks;
our @CleanupHandlers;
our @TestCleanupHandlers;

# Bounds (seconds) for waits that the blocks do not choose.
my $StartBound  = $UseValgrind ? 60 : 10;
my $StopBound   = $UseValgrind ? 60 : 5;
my $MustDieBound = 30;

# Real-runner sections this file does not implement.
my @Unsupported = qw(
    http2 http3 curl curl_protocol curl_options
    tcp_listen tcp_reply tcp_query tcp_query_len tcp_reply_delay
    tcp_shutdown tcp_no_close udp_listen udp_reply udp_query
    stap stap_out stap_out_like stap_out_unlike
    skip_nginx skip_nginx2 skip_openssl skip_eval skip_slave todo todo_nginx
    shutdown_error_log no_shutdown_error_log access_log no_access_log
    response_body_filters response_body_json_sort reload_fails
    raw_request_middle_delay charset write_resp_body_file error_log_file
    post_setup_server_root server_addr_for_client request_eval
    response_body_eval shutdown http09 no_mockeagain suppress_stderr
    quic_max_idle_timeout
);

my @UnsupportedEnv = qw(
    TEST_NGINX_CHECK_LEAK TEST_NGINX_BENCHMARK TEST_NGINX_USE_HUP
    TEST_NGINX_USE_STAP TEST_NGINX_USE_HTTP2 TEST_NGINX_USE_HTTP3
    TEST_NGINX_RANDOMIZE TEST_NGINX_NO_NGINX_MANAGER TEST_NGINX_USE_RR
);

# Per-run state.
my $NginxPid;          # the nginx child of this process, if running
my $ErrLogPos = 0;     # error.log offset already examined
my $RandPorts = {};    # $TEST_NGINX_RAND_PORT_N of the current block
my $NginxV;            # cached `nginx -V` output
my $InChild = 0;


# ---------------------------------------------------------------------------
# Settings API

sub repeat_each (@) {
    $RepeatEach = shift if @_;
    return $RepeatEach;
}

sub no_shuffle () { $NoShuffle = 1 }

sub workers (@) {
    $Workers = shift if @_;
    return $Workers;
}

sub worker_connections (@) {
    $WorkerConnections = shift if @_;
    return $WorkerConnections;
}

sub master_on ()  { $MasterProcess = 'on' }
sub master_off () { $MasterProcess = 'off' }

sub master_process_enabled (@) {
    $MasterProcess = shift() ? 'on' : 'off' if @_;
    return $MasterProcess;
}

sub log_level (@) {
    $LogLevel = shift if @_;
    return $LogLevel;
}

sub no_long_string () { $NoLongString = 1 }
sub no_root_location () { $NoRootLocation = 1 }
sub check_accum_error_log () { $CheckAccumErrLog = 1 }

sub timeout (@) {
    $Timeout = shift if @_;
    return $Timeout;
}

sub env_to_nginx (@) {
    Carp::croak("env_to_nginx: no arguments specified") unless @_;
    for my $v (@_) {
        Carp::croak("env_to_nginx: bad argument value: $v")
            if $v !~ /^[A-Za-z_]/ || $v =~ /\n/;
        push @EnvToNginx, $v;
    }
}

sub server_port (@) {
    $ServerPort = shift if @_;
    return $ServerPort;
}

sub server_addr (@) {
    $ServerAddr = shift if @_;
    return $ServerAddr;
}

sub server_name (@) {
    $ServerName = shift if @_;
    return $ServerName;
}

sub server_root () { $ServRoot }
sub html_dir ()    { $HtmlDir }

sub config_preamble ($) { $ConfigPreamble = shift }

# Like the real runner: the preprocessor added last runs first.
sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }
sub add_response_body_check ($) { push @ResponseBodyChecks, shift }
sub add_cleanup_handler ($) { unshift @CleanupHandlers, shift }
sub add_test_cleanup_handler ($) { unshift @TestCleanupHandlers, shift }

sub bail_out (@) {
    cleanup();
    Test::More::BAIL_OUT(join '', @_);
}

# String comparison honouring qr// and showing a readable difference.
sub is_str (@) {
    my ($got, $expected, $desc) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    if (ref $expected && ref $expected eq 'Regexp') {
        return Test::More::like($got, $expected, $desc);
    }

    my $ok = (defined $got && defined $expected) ? $got eq $expected
             : !defined $got && !defined $expected;
    Test::More::ok($ok, $desc);
    Test::More::diag(_describe_difference($got, $expected)) unless $ok;
    return $ok;
}


# ---------------------------------------------------------------------------
# Running the blocks

sub run_tests () {
    for my $var (@UnsupportedEnv) {
        bail_out("$var is not supported by the compat Test::Nginx::Socket")
            if $ENV{$var};
    }

    if (!-x $NginxBinary && !_which($NginxBinary)) {
        bail_out("Cannot find the nginx executable \"$NginxBinary\"");
    }

    $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort
        unless defined $ENV{TEST_NGINX_SERVER_PORT};

    _install_signal_handlers();

    my @blocks = Test::Base::blocks();
    @blocks = List::Util::shuffle(@blocks) unless $NoShuffle;

    for my $block (@blocks) {
        $_->($block) for @BlockPreprocessors;
        $block->set_value(name => "$0 " . $block->name);
        run_test($block);
        $_->($block) for @TestCleanupHandlers;
    }

    cleanup();
}

sub run_test ($) {
    my $block = shift;

    return if defined $block->SKIP;

    my $name = $block->name;

    for my $s (@Unsupported) {
        bail_out("$name - section \"--- $s\" is not supported by the compat"
                 . " Test::Nginx::Socket (install the real Test::Nginx)")
            if exists $block->{$s};
    }

    $RandPorts = {};

    local $LogLevel = $LogLevel;
    if (my $lvl = $block->log_level) {
        ($LogLevel = $lvl) =~ s/^\s+|\s+$//g;
    }

    # (the real runner would reuse the previous block's running nginx)
    my $config = $block->config;
    bail_out("$name - no \"--- config\" section (the compat runner needs one"
             . " in every block)")
        unless defined $config;
    $config = _expand_env($config, $name);

    _setup_server_root($name);
    _write_user_files($block);
    _write_config($block, $config);

    if (defined $block->must_die) {
        _run_must_die($block);
        return;
    }

    _start_nginx($name);

    if (my $init = $block->init) {
        my $err = _eval_init($init);
        bail_out("$name - init failed: $err") if $err;
    }

    $ErrLogPos = 0;

    for my $rep (0 .. $RepeatEach - 1) {
        _write_user_files($block) if $rep > 0;
        _run_requests($block, $rep);
    }

    _stop_nginx($name);
}

sub cleanup () {
    $_->() for @CleanupHandlers;
    _stop_nginx('cleanup') if defined $NginxPid;
}

# The real runner evaluates --- init in package Test::Nginx::Util (with
# strict), so helpers meant for it are installed there (see t/lib/RLP.pm),
# and these functions of the real Test::Nginx::Util are available to it.
for my $f (qw(html_dir server_root server_port server_addr bail_out timeout
              repeat_each log_level is_str))
{
    no strict 'refs';
    *{"Test::Nginx::Util::$f"} = \&{"Test::Nginx::Socket::$f"};
}

sub _eval_init {
    my $code = shift;
    my $ok = eval "package Test::Nginx::Util; use strict; use warnings;\n"
                  . "$code\n;1";
    return $ok ? undef : ($@ || 'unknown error');
}


# ---------------------------------------------------------------------------
# Server root and nginx.conf

sub _setup_server_root {
    my $name = shift;

    _kill_stale_nginx();

    if (-d $ServRoot) {
        File::Path::remove_tree($ConfDir, $LogDir, $HtmlDir,
                                glob("$ServRoot/*_temp"),
                                glob("$ServRoot/*_cache"));
    }

    for my $dir ($ServRoot, $LogDir, $HtmlDir, $ConfDir) {
        next if -d $dir;
        mkdir $dir or bail_out("$name - cannot create $dir: $!");
    }

    _write_file("$HtmlDir/index.html",
                "<html><head><title>It works!</title></head>"
                . "<body>It works!</body></html>");
}

sub _write_user_files {
    my $block = shift;
    my $name = $block->name;
    my $files = $block->user_files;

    return unless $files;

    if (!ref $files) {
        my @list;
        for my $line (split /^/, $files) {
            if ($line =~ /^>>> (\S+)(?:\s+(.+))?/) {
                push @list, [$1, undef, $2];
            } elsif (@list) {
                $list[-1][1] .= $line;
            }
        }
        $files = \@list;

    } elsif (ref $files ne 'ARRAY') {
        bail_out("$name - user_files must be a string or an array ref");
    }

    for my $f (@$files) {
        my ($fname, $body, $date) = @$f;
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        (my $dir = $path) =~ s{/[^/]*$}{};
        File::Path::make_path($dir) unless -d $dir;
        _write_file($path, _expand_env($body // '', $name));
        if ($date) {
            local $ENV{TZ} = 'GMT';
            system('touch', '-t', $date, $path) == 0
                or bail_out("$name - touch -t '$date' $path failed");
        }
    }
}

sub _write_config {
    my ($block, $config) = @_;
    my $name = $block->name;

    my $main = $block->main_config // '';
    if ($LoadModules) {
        my @mods = map { "load_module $_;" } grep { length } split /\s+/,
                   $LoadModules;
        $main = join ' ', @mods, $main if @mods;
    }
    $main = _expand_env($main, $name);

    my $http = _expand_env($block->http_config // '', $name);
    my $post_main = _expand_env($block->post_main_config // '', $name);

    my $server_name = $block->server_name // $ServerName;
    $server_name =~ s/^\s+|\s+$//g;

    my $env = '';
    for my $v (@EnvToNginx) {
        $env .= $v =~ /\s/ ? "env '$v';\n" : "env $v;\n";
    }

    my $v = _nginx_V();
    my $temp = '';
    $temp .= " client_body_temp_path $ServRoot/client_body_temp;"
        unless $http =~ /\bclient_body_temp_path\b/;
    $temp .= " proxy_temp_path $ServRoot/proxy_temp;"
        unless $http =~ /\bproxy_temp_path\b/;
    for my $m (qw(fastcgi scgi uwsgi)) {
        $temp .= " ${m}_temp_path $ServRoot/${m}_temp;"
            unless $v =~ /--without-http_${m}_module/;
    }

    my $root_location = $NoRootLocation ? '' : <<"_EOC_";
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
_EOC_

    my $user = $> == 0 ? "user root;\n" : '';

    _write_file($ConfFile, <<"_EOC_");
# generated by the compat Test::Nginx::Socket for: $name
worker_processes  $Workers;
daemon off;
master_process $MasterProcess;
error_log $ErrLogFile $LogLevel;
pid       $PidFile;
$env
$main

http {
    access_log $AccLogFile;$temp

    default_type text/plain;
    keepalive_timeout  68;

$http
    server {
        listen          $ServerAddr:$ServerPort;
        server_name     '$server_name';
        client_max_body_size 30M;

        # Begin preamble config...
$ConfigPreamble
        # End preamble config...

        # Begin test case config...
$config
        # End test case config.

$root_location    }
}

$post_main

events {
    accept_mutex off;
    worker_connections  $WorkerConnections;
}

$user
_EOC_
}


# ---------------------------------------------------------------------------
# Starting and stopping nginx

sub _nginx_cmd {
    my @cmd = ($NginxBinary, '-p', "$ServRoot/", '-c', $ConfFile,
               '-e', $ErrLogFile);
    return @cmd;
}

sub _valgrind_prefix {
    return () unless $UseValgrind;

    bail_out("TEST_NGINX_USE_VALGRIND is set but valgrind is not installed")
        unless _which('valgrind');

    if ($UseValgrind =~ /^\d+$/) {
        my @opts = qw(valgrind -q --num-callers=100 --tool=memcheck
                      --leak-check=full --show-possibly-lost=no
                      --gen-suppressions=all);
        push @opts, '--suppressions=valgrind.suppress'
            if -f 'valgrind.suppress';
        return @opts;
    }

    return ('valgrind', '-q', split ' ', $UseValgrind);
}

sub _spawn {
    my ($stderr_file, @cmd) = @_;

    my $pid = fork();
    bail_out("fork() failed: $!") unless defined $pid;

    if ($pid == 0) {
        $InChild = 1;
        setpgrp(0, 0);
        _set_parent_death_signal();
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        if (defined $stderr_file) {
            open STDERR, '>', $stderr_file;
        }
        { no warnings 'exec'; exec { $cmd[0] } @cmd; }
        print STDERR "exec $cmd[0] failed: $!\n";
        POSIX::_exit(127);
    }

    return $pid;
}

sub _start_nginx {
    my $name = shift;

    my @cmd = (_valgrind_prefix(), _nginx_cmd());
    warn "starting: @cmd\n" if $Verbose;
    warn "$name\n" if $UseValgrind;

    $NginxPid = _spawn(undef, @cmd);

    my $deadline = Time::HiRes::time() + $StartBound;

    while (1) {
        my $r = waitpid($NginxPid, POSIX::WNOHANG());
        if ($r == $NginxPid) {
            my $status = $?;
            undef $NginxPid;
            Test::More::diag(_error_log_tail());
            bail_out("$name - nginx exited at start-up ("
                     . _status_text($status) . "), see $ErrLogFile");
        }

        return if _is_listening($NginxPid);

        if (Time::HiRes::time() > $deadline) {
            _stop_nginx($name);
            Test::More::diag(_error_log_tail());
            bail_out("$name - nginx did not listen on $ServerAddr:$ServerPort"
                     . " within ${StartBound}s, see $ErrLogFile");
        }

        Time::HiRes::sleep(0.005);
    }
}

# Does process $pid hold a socket listening on our port?  Reads /proc so
# that no probe request appears in the logs.
sub _is_listening {
    my $pid = shift;

    my %inodes;
    for my $file ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $in, '<', $file or next;
        <$in>;
        while (my $line = <$in>) {
            my @f = split ' ', $line;
            next unless $f[3] eq '0A';
            my ($port) = $f[1] =~ /:([0-9A-F]+)$/;
            $inodes{$f[9]} = 1 if hex($port) == $ServerPort;
        }
        close $in;
    }

    return 0 unless %inodes;

    # the (master) process opens the listening sockets itself; under
    # valgrind the tool runs nginx inside the same process
    opendir my $dh, "/proc/$pid/fd" or return 0;
    for my $fd (readdir $dh) {
        my $link = readlink "/proc/$pid/fd/$fd" or next;
        return 1 if $link =~ /^socket:\[(\d+)\]$/ && $inodes{$1};
    }

    return 0;
}

sub _stop_nginx {
    my $name = shift;
    my $pid = $NginxPid;

    return unless defined $pid;

    kill 'QUIT', $pid;

    my $deadline = Time::HiRes::time() + $StopBound;
    while (Time::HiRes::time() < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            warn "WARNING: $name - nginx exited with " . _status_text($?)
                 . "\n" if $?;
            last;
        }
        Time::HiRes::sleep(0.005);
    }

    if (kill 0, $pid) {
        warn "WARNING: $name - nginx $pid did not exit within ${StopBound}s"
             . " after SIGQUIT; sending SIGKILL\n";
        kill 'KILL', -$pid;
        my $kill_deadline = Time::HiRes::time() + 5;
        while (Time::HiRes::time() < $kill_deadline) {
            last if waitpid($pid, POSIX::WNOHANG()) != 0;
            Time::HiRes::sleep(0.005);
        }
    }

    # workers left behind by a master that died
    kill 'KILL', -$pid if kill 0, -$pid;

    undef $NginxPid;
    unlink $PidFile;
}

# An nginx from an interrupted earlier run of this suite (its pid file is in
# our server root and its command line names our server root).
sub _kill_stale_nginx {
    open my $in, '<', $PidFile or return;
    my $pid = <$in>;
    close $in;
    return unless defined $pid && $pid =~ /^(\d+)\s*$/;
    $pid = $1;
    return if defined $NginxPid && $pid == $NginxPid;

    open my $cmd, '<', "/proc/$pid/cmdline" or return;
    my $cmdline = do { local $/; <$cmd> } // '';
    close $cmd;
    return unless index($cmdline, "$ServRoot/") >= 0;

    warn "WARNING: stopping a stale nginx ($pid) of $ServRoot\n";
    kill 'QUIT', $pid;
    my $deadline = Time::HiRes::time() + $StopBound;
    Time::HiRes::sleep(0.01) while kill(0, $pid)
                                   && Time::HiRes::time() < $deadline;
    kill 'KILL', $pid if kill 0, $pid;
}

sub _set_parent_death_signal {
    # prctl(PR_SET_PDEATHSIG, SIGKILL): nginx dies with the test process
    # even when that one is SIGKILLed.
    my $nr = eval { require 'syscall.ph'; &SYS_prctl() };
    syscall($nr, 1, 9) if defined $nr;
}

sub _install_signal_handlers {
    for my $sig (qw(INT TERM HUP)) {
        $SIG{$sig} = sub {
            return if $InChild;
            cleanup();
            Test::More->builder->no_ending(1);
            POSIX::_exit($sig eq 'INT' ? 130 : $sig eq 'TERM' ? 143 : 129);
        };
    }
}

END {
    if (!$InChild) {
        local $?;
        cleanup();
    }
}


# ---------------------------------------------------------------------------
# must_die: nginx -t must fail

sub _run_must_die {
    my $block = shift;
    my $name = $block->name;
    my $must_die = $block->must_die;
    $must_die =~ s/^\s+|\s+$//g;

    my $stderr_file = "$LogDir/must_die.stderr";
    $ErrLogPos = 0;

    for my $rep (0 .. $RepeatEach - 1) {
        my $pid = _spawn($stderr_file, _nginx_cmd(), '-t');
        my $status = _wait_bounded($pid, $MustDieBound);

        if (!defined $status) {
            Test::More::fail("$name - nginx -t did not finish within"
                             . " ${MustDieBound}s");

        } elsif (($status & 127) && ($status & 127) != POSIX::SIGKILL()) {
            Test::More::fail("$name - nginx -t was killed by signal "
                             . ($status & 127)
                             . (($status & 128) ? ' (core dumped)' : ''));

        } elsif (length $must_die
                 && Scalar::Util::looks_like_number($must_die))
        {
            Test::More::is($must_die, $status >> 8,
                           "$name - die with the expected exit code");

        } else {
            Test::More::isnt($status, 0, "$name - die as expected");
        }

        my $lines = _error_log_lines();
        push @$lines, _stderr_extra_lines($stderr_file, $lines);
        _check_error_log($block, $rep, 0, $lines);
    }
}

sub _wait_bounded {
    my ($pid, $bound) = @_;
    my $deadline = Time::HiRes::time() + $bound;

    while (Time::HiRes::time() < $deadline) {
        return $? if waitpid($pid, POSIX::WNOHANG()) == $pid;
        Time::HiRes::sleep(0.005);
    }

    kill 'KILL', -$pid;
    waitpid($pid, 0);
    return undef;
}

# stderr lines of nginx -t that error.log does not already hold.
sub _stderr_extra_lines {
    my ($file, $log_lines) = @_;
    my @extra;

    open my $in, '<', $file or return;
    while (my $line = <$in>) {
        (my $msg = $line) =~ s/^nginx: \[\w+\] //;
        $msg =~ s/\s+$//;
        next if length $msg
                && List::Util::any { index($_, $msg) >= 0 } @$log_lines;
        push @extra, $line;
    }
    close $in;
    return @extra;
}


# ---------------------------------------------------------------------------
# Requests and checks

sub _run_requests {
    my ($block, $rep) = @_;
    my $name = $block->name;

    my $reqs = _requests_from_block($block);
    bail_out("$name - request empty") unless @$reqs;

    my $timeout = _parse_time($block->timeout) // $Timeout;
    my $pipelined = $block->pipelined_requests;
    my $need_array = $pipelined ? 1 : @$reqs > 1;
    my $req_idx = 0;
    my $res;

    for my $i (0 .. $#$reqs) {
        my $req = $reqs->[$i];
        my $raw = _send_request($block, $req, $timeout) // '';
        my $n = $pipelined ? scalar @$pipelined : 1;

        for my $k (1 .. $n) {
            my $left;
            ($res, $left) = _parse_response($name, $raw, $req->{head});

            if ($k < $n) {
                $raw = $left // '';
            } elsif (defined $left && length $left) {
                (my $shown = $left) =~
                    s/([\0-\037\200-\377])/sprintf('\x{%02x}', ord $1)/eg;
                warn "WARNING: $name - unexpected extra bytes after the"
                     . " response: \"$shown\"\n";
            }

            if (!defined $block->ignore_response) {
                _check_error_code($block, $res, $req_idx, $need_array);
                _check_raw_headers($block, $res, $req_idx, $need_array);
                _check_headers($block, $res, $req_idx, $need_array);
                _check_body($block, $res, $req_idx, $rep, $need_array);
            }

            if ($k < $n || $i < $#$reqs) {
                _wait($block);
                _check_error_log($block, $rep, $need_array);
            }

            $req_idx++;
        }
    }

    _wait($block);
    _check_error_log($block, $rep, $need_array);
}

sub _wait {
    my $block = shift;
    my $t = _parse_time($block->wait);
    Time::HiRes::sleep($t) if $t;
}

# Returns [ { chunks => [bytes...], head => bool }, ... ]
sub _requests_from_block {
    my $block = shift;
    my $name = $block->name;

    if (defined(my $raw = $block->raw_request)) {
        my @chunks = ref $raw eq 'ARRAY' ? @$raw : ($raw);
        my $all = join '', @chunks;
        return [{ chunks => \@chunks, head => scalar($all =~ /^\s*HEAD\s/) }];
    }

    my $more = $block->more_headers // '';

    my $headers_for = sub {
        my ($i, $what) = @_;
        return $more unless ref $more eq 'ARRAY';
        my $h = $more->[$i];
        bail_out("$name - --- more_headers lacks data for $what")
            unless defined $h;
        return $h;
    };

    if (my $list = $block->pipelined_requests) {
        bail_out("$name - invalid entries in --- pipelined_requests")
            unless ref $list eq 'ARRAY';
        my $data = '';
        for my $i (0 .. $#$list) {
            my $text = _expand_env($list->[$i], $name);
            $data .= _build_request($name, $text,
                                    $headers_for->($i, "pipelined request $i"),
                                    $i == $#$list ? 'close' : 'keep-alive');
        }
        return [{ chunks => [$data], head => 0 }];
    }

    my $request = $block->request;
    bail_out("$name - no --- request section") unless defined $request;

    my @texts;
    if (!ref $request) {
        @texts = ($request);
    } elsif (ref $request eq 'ARRAY') {
        @texts = @$request;
        for (@texts) {
            bail_out("$name - requests given as arrays of packets are not"
                     . " supported by the compat Test::Nginx::Socket")
                if ref;
        }
    } else {
        bail_out("$name - invalid --- request: must be a string or an"
                 . " array ref of strings");
    }

    my @reqs;
    for my $i (0 .. $#texts) {
        my $text = $texts[$i];
        # leading blank and comment lines are not part of the request
        1 while $text =~ s/\A\s*#[^\n]*\n//s || $text =~ s/\A\s+//s;
        push @reqs, {
            chunks => [_build_request($name, $text,
                                      $headers_for->($i, "request $i"),
                                      'close')],
            head   => scalar($text =~ /^HEAD\s/),
        };
    }

    return \@reqs;
}

# "METHOD [URI [VERSION]]\n[body]" plus --- more_headers -> HTTP/1.x bytes
sub _build_request {
    my ($name, $text, $more, $conn) = @_;

    bail_out("$name - Request line should be non-empty")
        unless defined $text && $text =~ /\S/;

    $text =~ s/\A\s+//;
    my ($line, $body) = split /\n/, $text, 2;
    $body //= '';

    my ($method, $uri, $ver) = $line =~ /^(\S+)(?: +(\S+))?(?: +(\S+))?\s*$/
        or bail_out("$name - Request line is not valid. Should be"
                    . " 'meth [url [version]]' but got \"$line\".");
    $uri //= '/';
    $ver //= 'HTTP/1.1';

    my $headers = '';
    my $chunked = 0;
    for my $h (split /\n+/, $more) {
        next if $h =~ /^\s*#/;
        my ($k, $v) = split /:\s*/, $h, 2;
        $v //= '';
        $chunked = 1 if lc $k eq 'transfer-encoding' && $v eq 'chunked';
        $headers .= "$k: $v\r\n";
    }

    my $prefix = '';
    $prefix .= "Host: $ServerName\r\n" unless $headers =~ /(?:^|\n)Host:/i;
    $prefix .= "Connection: $conn\r\n"
        unless $headers =~ /(?:^|\n)Connection/i;

    my $len = '';
    if (!$chunked && length $body && $headers !~ /(?:^|\n)Content-Length:/) {
        $body =~ s/^\s+|\s+$//gs;
        $len = "Content-Length: " . length($body) . "\r\n";
    }

    return "$method $uri $ver\r\n$prefix$headers$len\r\n$body";
}

sub _send_request {
    my ($block, $req, $timeout) = @_;
    my $name = $block->name;

    my $sock;
    my $deadline = Time::HiRes::time() + $timeout;
    while (1) {
        $sock = IO::Socket::INET->new(PeerAddr => $ServerAddr,
                                      PeerPort => $ServerPort,
                                      Proto    => 'tcp',
                                      Timeout  => $timeout);
        last if $sock;

        my $err = $!;
        my $gone = !defined $NginxPid ? 'nginx is not running'
                 : waitpid($NginxPid, POSIX::WNOHANG()) != 0
                   ? 'nginx exited with ' . _status_text($?) : '';
        if ($gone || Time::HiRes::time() > $deadline) {
            Test::More->builder->no_ending(1);
            Test::More::fail("$name - Can't connect to $ServerAddr:$ServerPort:"
                             . " $err" . ($gone ? " ($gone)" : '')
                             . " (aborted)\n");
            Test::More::diag(_error_log_tail()) if $gone;
            undef $NginxPid if $gone;
            return undef;
        }
        Time::HiRes::sleep(0.05);
    }

    $sock->blocking(0);

    my @chunks = @{ $req->{chunks} };
    my $out = shift @chunks;
    my $resp = '';
    my $sel_r = IO::Select->new($sock);
    my $sel_w = IO::Select->new($sock);
    my $hard_deadline = Time::HiRes::time() + 10 * $timeout;

    while ($sel_r->count || $sel_w->count) {
        $! = 0;
        my ($r, $w) = IO::Select->select($sel_r->count ? $sel_r : undef,
                                         $sel_w->count ? $sel_w : undef,
                                         undef, $timeout);
        my $idle = (!$r || !@$r) && (!$w || !@$w);
        my $late = Time::HiRes::time() > $hard_deadline;

        next if $idle && !$late && $! == Errno::EINTR();

        if ($idle || $late) {
            close $sock;
            if (!defined $block->abort) {
                Test::More->builder->no_ending(1);
                Test::More::fail("ERROR: client socket timed out - $name\n");
            }
            return $resp;
        }

        if ($w && @$w) {
            while (defined $out) {
                my $n = syswrite($sock, $out);
                if (!defined $n) {
                    last if $! == Errno::EAGAIN() || $! == Errno::EWOULDBLOCK();
                    warn "WARNING: $name - write failed: $!\n";
                    undef $out;
                    @chunks = ();
                    last;
                }
                substr($out, 0, $n) = '';
                $out = shift @chunks unless length $out;
            }
            $sel_w->remove($sock) unless defined $out;
        }

        if ($r && @$r) {
            while (1) {
                my $n = sysread($sock, my $buf, 65536);
                if (!defined $n) {
                    last if $! == Errno::EAGAIN() || $! == Errno::EWOULDBLOCK();
                    warn "WARNING: $name - HTTP response read failure: $!\n";
                    $sel_r->remove($sock);
                    $sel_w->remove($sock);
                    last;
                }
                if ($n == 0) {
                    $sel_r->remove($sock);
                    $sel_w->remove($sock);
                    last;
                }
                $resp .= $buf;
            }
        }
    }

    close $sock;
    return $resp;
}

# Returns (response, bytes left over after it).
sub _parse_response {
    my ($name, $raw, $head) = @_;

    my $res = bless { code => undef, headers => [], raw_headers => '',
                      content => '' }, 'Test::Nginx::Socket::Response';

    my $end = index $raw, "\r\n\r\n";
    if ($end < 0) {
        # no complete header: whatever came is the status line at best
        $res->{code} = $1 if $raw =~ m{^HTTP/\d\.\d\s+(\d{3})};
        return ($res, undef);
    }

    $res->{raw_headers} = substr($raw, 0, $end + 2);
    my $rest = substr($raw, $end + 4);

    my ($status, @lines) = split /\r\n/, $res->{raw_headers};
    $res->{code} = $1 if $status =~ m{^HTTP/\d\.\d\s+(\d{3})};
    for my $l (@lines) {
        if ($l =~ /^[ \t]/ && @{ $res->{headers} }) {
            $res->{headers}[-1][1] .= " $l";
        } elsif ($l =~ /^([^:]+):[ \t]*(.*?)[ \t]*$/) {
            push @{ $res->{headers} }, [$1, $2];
        }
    }

    my $code = $res->{code} // 0;
    return ($res, $rest) if $head || $code == 304 || $code == 204
                            || $code =~ /^1/;

    my $te = $res->header('Transfer-Encoding') // '';
    my $cl = $res->header('Content-Length');

    if (lc $te eq 'chunked') {
        my $body = '';
        pos($rest) = 0;
        while (1) {
            if ($rest =~ /\G[ \t]*([0-9A-Fa-f]+)[^\r\n]*\r\n/gc) {
                my $size = hex $1;
                if ($size == 0) {
                    # trailers up to the empty line
                    $rest =~ /\G(?:[^\r\n]+\r\n)*\r\n/gc
                        or return _bad_chunked($name, $res,
                                               'no end of the last chunk');
                    last;
                }
                my $at = pos($rest);
                return _bad_chunked($name, $res, 'truncated chunk')
                    if length($rest) < $at + $size + 2;
                $body .= substr($rest, $at, $size);
                pos($rest) = $at + $size;
                $rest =~ /\G\r\n/gc
                    or return _bad_chunked($name, $res,
                                           'no CRLF after chunk data');
            } else {
                return _bad_chunked($name, $res, 'no last chunk found');
            }
        }
        $res->{content} = $body;
        return ($res, substr($rest, pos($rest)));
    }

    if (defined $cl && $cl =~ /^\d+$/) {
        if (length $rest < $cl) {
            warn "WARNING: $name - response body truncated: $cl expected,"
                 . " but got " . length($rest) . "\n";
            $res->{content} = $rest;
            return ($res, undef);
        }
        $res->{content} = substr($rest, 0, $cl);
        return ($res, substr($rest, $cl));
    }

    $res->{content} = $rest;
    return ($res, undef);
}

sub _bad_chunked {
    my ($name, $res, $why) = @_;
    Test::More->builder->no_ending(1);
    Test::More::fail("$name - invalid chunked body received: $why");
    return ($res, undef);
}

sub _indexed {
    my ($name, $value, $idx, $need_array) = @_;

    if ($need_array) {
        return $value->[$idx] if ref $value eq 'ARRAY';
        bail_out("$name - You asked for many requests, the expected results"
                 . " should be arrays as well.");
    }

    return $value->[0] if ref $value eq 'ARRAY';
    return $value;
}

sub _check_error_code {
    my ($block, $res, $idx, $need_array) = @_;
    my $name = $block->name;
    my $code = $res->code // '';

    if (defined $block->error_code_like) {
        my $pat = _indexed($name, $block->error_code_like, $idx, $need_array);
        Test::More::like($code, qr/$pat/sm, "$name - status code ok");

    } elsif (defined $block->error_code) {
        Test::More::is($code, _indexed($name, $block->error_code, $idx,
                                       $need_array),
                       "$name - status code ok");

    } else {
        Test::More::is($code, 200, "$name - status code ok");
    }
}

sub _check_raw_headers {
    my ($block, $res, $idx, $need_array) = @_;
    my $name = $block->name;

    if (defined $block->raw_response_headers_like) {
        my $pat = _indexed($name, $block->raw_response_headers_like, $idx,
                           $need_array);
        Test::More::like($res->{raw_headers}, qr/$pat/s,
                         "$name - raw resp headers like");
    }

    if (defined $block->raw_response_headers_unlike) {
        my $pat = _indexed($name, $block->raw_response_headers_unlike, $idx,
                           $need_array);
        Test::More::unlike($res->{raw_headers}, qr/$pat/s,
                           "$name - raw resp headers unlike");
    }
}

# "Name: value" / "!Name" lines -> ordered [name, value-or-undef] pairs,
# one per distinct name (the last line for a name wins).
sub _header_spec {
    my $text = shift;
    my (@order, %val);
    for my $l (split /\n/, $text // '') {
        $l =~ s/^\s+|\s+$//g;
        my ($k, $v);
        if ($l =~ s/^!\s*//) {
            $k = $l;
        } else {
            ($k, $v) = split /\s*:\s*/, $l, 2;
        }
        push @order, $k unless exists $val{$k};
        $val{$k} = $v;
    }
    return map { [$_, $val{$_}] } @order;
}

sub _check_headers {
    my ($block, $res, $idx, $need_array) = @_;
    my $name = $block->name;

    if (defined $block->response_headers) {
        for my $h (_header_spec(_indexed($name, $block->response_headers,
                                         $idx, $need_array)))
        {
            my ($k, $v) = @$h;
            if (!defined $v) {
                Test::More::unlike($res->{raw_headers}, qr/^\s*\Q$k\E\s*:/ms,
                    "$name - header $k not present in the raw headers");
                next;
            }
            $v =~ s/\$ServerPort\b/$ServerPort/g;
            Test::More::is($res->header($k) // '', $v,
                           "$name - header $k ok");
        }

    } elsif (defined $block->response_headers_like) {
        for my $h (_header_spec(_indexed($name, $block->response_headers_like,
                                         $idx, $need_array)))
        {
            my ($k, $v) = @$h;
            $v //= '';
            Test::More::like($res->header($k) // '', qr/^$v$/,
                             "$name - header $k like ok");
        }
    }
}

sub _check_body {
    my ($block, $res, $idx, $rep, $need_array) = @_;
    my $name = $block->name;
    my $content = $res->content;

    if (defined $block->response_body) {
        my $expected = _indexed($name, $block->response_body, $idx,
                                $need_array);
        if (defined $expected && !ref $expected) {
            $expected =~ s/\$ServerPort\b/$ServerPort/g;
            $expected = _expand_env($expected, $name);
        }

        if (ref $expected) {
            Test::More::like($content, $expected,
                             "$name - response_body - like (repeated req"
                             . " $rep, req $idx)");
        } else {
            is_str($content, $expected,
                   "$name - response_body - response is expected (repeated"
                   . " req $rep, req $idx)");
        }

    } elsif (defined $block->response_body_like
             || defined $block->response_body_unlike)
    {
        my $like = defined $block->response_body_like;
        my $pat = _indexed($name, $like ? $block->response_body_like
                                        : $block->response_body_unlike,
                           $idx, $need_array);
        $pat =~ s/\$ServerPort\b/$ServerPort/g unless ref $pat;
        my $summary = _summary($content);
        my $desc = "$name - response_body_" . ($like ? 'like' : 'unlike')
                   . " - response is expected ($summary)";
        if ($like) {
            Test::More::like($content, qr/$pat/s, $desc);
        } else {
            Test::More::unlike($content, qr/$pat/s, $desc);
        }
    }

    for my $check (@ResponseBodyChecks) {
        $check->($block, $content, $idx, $rep, 0);
    }
}

sub _error_log_lines {
    Time::HiRes::sleep($Sleep * 3);

    open my $in, '<', $ErrLogFile or return [];
    seek $in, $ErrLogPos, 0 if !$CheckAccumErrLog && $ErrLogPos > 0;
    my @lines = <$in>;
    $ErrLogPos = tell $in unless $CheckAccumErrLog;
    close $in;
    return \@lines;
}

sub _patterns {
    my $pats = shift;
    return [$pats] if ref $pats eq 'Regexp';
    return [@$pats] if ref $pats eq 'ARRAY';
    chomp(my $s = $pats);
    return [split /\n+/, $s];
}

sub _matches {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ $pat : index($line, $pat) >= 0;
}

sub _check_error_log {
    my ($block, $rep, $need_array, $lines) = @_;
    my $name = $block->name;
    my %mentioned;

    my $get = sub { $lines //= _error_log_lines() };

    my $grep = $block->grep_error_log;
    if (defined $grep) {
        $grep = $grep->[$rep] if ref $grep eq 'ARRAY';
        my $expected = $block->grep_error_log_out;
        bail_out("$name - No --- grep_error_log_out defined but"
                 . " --- grep_error_log is defined")
            unless defined $expected;
        $expected = $expected->[$rep] if ref $expected eq 'ARRAY';
        $expected = _expand_env($expected, $name) unless ref $expected;

        my $got = '';
        for my $line (@{ $get->() }) {
            if (ref $grep ? $line =~ $grep : $line =~ /\Q$grep\E/) {
                my $m = $&;
                $got .= "$m\n" unless $m =~ /\n/;
            }
        }
        is_str($got, $expected, "$name - grep_error_log_out (req $rep)");

    } elsif (defined $block->grep_error_log_out) {
        bail_out("$name - No --- grep_error_log defined but"
                 . " --- grep_error_log_out is defined");
    }

    if (defined $block->error_log) {
        my $pats = _patterns($block->error_log);
        for my $p (@$pats) {
            $mentioned{$1} = 1 if !ref $p && $p =~ /\[(alert|crit|emerg)/;
        }
        my @left = grep { defined } @$pats;
        for my $line (@{ $get->() }) {
            for my $p (@left) {
                next unless defined $p && _matches($line, $p);
                Test::More::pass("$name - pattern \"$p\" matches a line in"
                                 . " error.log (req $rep)");
                undef $p;
            }
        }
        for my $p (grep { defined } @left) {
            Test::More::fail("$name - pattern \"$p\" should match a line in"
                             . " error.log (req $rep)");
        }
    }

    if (defined $block->no_error_log) {
        my $pats = _patterns($block->no_error_log);
        for my $p (@$pats) {
            $mentioned{$1} = 1 if !ref $p && $p =~ /\[(alert|crit|emerg)/;
        }
        my %found;
        for my $line (@{ $get->() }) {
            for my $p (@$pats) {
                next unless defined $p && _matches($line, $p);
                Test::More->builder->no_ending(1) if $found{$p}++;
                Test::More::fail("$name - pattern \"" . _visible($p)
                                 . "\" should not match any line in error.log"
                                 . " but matches line \"" . _visible($line)
                                 . "\" (req $rep)");
            }
        }
        for my $p (grep { defined && !$found{$_} } @$pats) {
            Test::More::pass("$name - pattern \"" . _visible($p)
                             . "\" does not match a line in error.log"
                             . " (req $rep)");
        }
    }

    for my $line (@{ $get->() }) {
        if ($line =~ /\[(alert|crit|emerg)\]/ && !$mentioned{$1}) {
            chomp(my $l = $line);
            warn "WARNING: $name - $l\n";
        }
        if ($line =~ /\bAssertion .*?failed\b/) {
            Test::More->builder->no_ending(1);
            chomp(my $l = $line);
            Test::More::fail("$name - $l");
        }
    }
}


# ---------------------------------------------------------------------------
# Helpers

sub _expand_env {
    my ($text, $name) = @_;
    return undef unless defined $text;
    $text =~ s/\$(TEST_NGINX_[_A-Z0-9]+)/_env_value($1, $name)/ge;
    return $text;
}

sub _env_value {
    my ($var, $name) = @_;

    if ($var =~ /^TEST_NGINX_RAND_PORT_\d+$/) {
        my $port = $RandPorts->{$var} // _free_port();
        return $RandPorts->{$var} = $port;
    }

    bail_out("$name - No environment $var defined.\n")
        unless defined $ENV{$var};
    return $ENV{$var};
}

sub _free_port {
    my %used = map { $_ => 1 } $ServerPort, values %$RandPorts;
    for (1 .. 100) {
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                      LocalPort => 0, Proto => 'tcp',
                                      Listen => 1)
            or next;
        my $port = $s->sockport;
        close $s;
        return $port unless $used{$port};
    }
    bail_out("cannot find a free TCP port");
}

sub _parse_time {
    my $t = shift;
    return undef unless defined $t;
    $t =~ s/^\s+|\s+$//g;
    return $1 / 1000 if $t =~ /^([\d.]+)ms$/;
    return $1 if $t =~ /^([\d.]+)s?$/;
    return $t;
}

sub _write_file {
    my ($path, $data) = @_;
    open my $out, '>', $path or bail_out("cannot write $path: $!");
    binmode $out;
    print $out $data;
    close $out or bail_out("cannot write $path: $!");
}

sub _which {
    my $prog = shift;
    return $prog if $prog =~ m{/} && -x $prog;
    for my $dir (split /:/, $ENV{PATH} // '') {
        return "$dir/$prog" if length $dir && -x "$dir/$prog";
    }
    return undef;
}

sub _default_binary {
    return _which('nginx') ? 'nginx' : '/usr/sbin/nginx';
}

sub _nginx_V {
    return $NginxV //= `$NginxBinary -V 2>&1` // '';
}

sub _status_text {
    my $st = shift;
    return 'exit code ' . ($st >> 8) unless $st & 127;
    return 'signal ' . ($st & 127) . (($st & 128) ? ', core dumped' : '');
}

sub _error_log_tail {
    open my $in, '<', $ErrLogFile or return "(no $ErrLogFile)";
    my @lines = <$in>;
    close $in;
    @lines = grep { !/\[debug\]/ } @lines;
    splice @lines, 0, @lines - 20 if @lines > 20;
    return "last lines of $ErrLogFile:\n" . join '', @lines;
}

sub _visible {
    my $s = shift;
    $s = "$s";
    $s =~ s/\n/\\n/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\t/\\t/g;
    return $s;
}

sub _summary {
    my $s = shift // '';
    $s =~ s/^\s+|\s+$//g;
    $s =~ s/\s+/ /g;
    return length $s > 60 ? substr($s, 0, 57) . '...' : $s;
}

# A readable explanation of why two strings differ: a unified diff for
# multi-line text, the first differing position for a single line.
sub _describe_difference {
    my ($got, $exp) = @_;

    return "     got: undef\nexpected: " . _visible($exp // 'undef')
        if !defined $got || !defined $exp;

    my $multi = ($got =~ /\n./s || $exp =~ /\n./s);
    if ($multi && eval { require Text::Diff; 1 }) {
        return "--- expected\n+++ got\n"
               . Text::Diff::diff(\$exp, \$got, { STYLE => 'Unified' });
    }

    my $i = 0;
    my $max = length($got) < length($exp) ? length($got) : length($exp);
    $i++ while $i < $max && substr($got, $i, 1) eq substr($exp, $i, 1);

    my $from = $i > 30 ? $i - 30 : 0;
    my $show = sub {
        my $s = shift;
        my $part = substr($s, $from, 80);
        return ($from ? '...' : '') . _visible($part)
               . ($from + 80 < length $s ? '...' : '');
    };

    return sprintf("     got: \"%s\"\nexpected: \"%s\"\n"
                   . "  length: got %d, expected %d; they first differ at"
                   . " offset %d",
                   $show->($got), $show->($exp), length $got, length $exp,
                   $i);
}


package Test::Nginx::Socket::Response;

sub code    { $_[0]{code} }
sub content { $_[0]{content} }

# like HTTP::Headers: several fields of one name are joined with ", "
sub header {
    my ($self, $name) = @_;
    my @v = map { $_->[1] } grep { lc $_->[0] eq lc $name }
            @{ $self->{headers} };
    return @v ? join(', ', @v) : undef;
}

1;
