package RLP;

=pod

=head1 NAME

RLP - shared base of the ngx_http_ratelimit_policy_module test suites

=head1 SYNOPSIS

    use lib 't/lib';
    use RLP;

    repeat_each(1);
    plan tests => repeat_each() * (blocks() * 2 + blocks('db_check'));

    no_shuffle();
    run_tests();

    __DATA__

    === TEST 1: PATCH stores the new policy
    --- init
    reset_fixtures();
    --- config
        location = /v2/session/rate-limit { ratelimit_policy_api; }
    --- request
    PATCH /v2/session/rate-limit?instance_id=FREE00000003&policy_slug=strict
    --- more_headers
    Authorization: Bearer free-token-1001
    --- db_check
    SELECT policy_slug FROM ratelimit.instances
     WHERE instance_id = 'FREE00000003';
    --- db_check_out
    strict

Run from the project root, normally through F<util/test>, which builds the
module, starts a throwaway PostgreSQL and exports the C<TEST_NGINX_PG_*>
variables.

=head1 WHICH Test::Nginx

The real Test::Nginx::Socket (openresty/test-nginx) when it can be loaded
from C<@INC> (for example C<PERL5LIB=/path/to/test-nginx/lib>); otherwise
the project's own compatible subset in F<t/compat/>.
C<TEST_NGINX_USE_COMPAT=1> forces the compat runner.  C<$RLP::Runner> says
which one is in use.

=head1 WHAT IT ADDS TO EVERY BLOCK

Unless the block has a C<--- no_module> section:

=over

=item *

C<load_module> of the module under test is prepended to C<--- main_config>
(unless that section already loads it).  The module is the
F<ngx_http_ratelimit_policy_module.so> named in C<TEST_NGINX_LOAD_MODULES>
(which F<util/test> sets), else F<build/ngx_http_ratelimit_policy_module.so>.
It is removed from C<TEST_NGINX_LOAD_MODULES> before the runner reads it,
so it is never loaded twice and C<--- no_module> blocks run without it.
If the file does not exist the run bails out.

=item *

When the block has no C<--- http_config>, C<$RLP::HttpConfig>: the database
(C<$TEST_NGINX_PG_CONNINFO>, expanded by the runner) and the zone.  A block
that gives its own C<--- http_config> (even an empty one) gets nothing.
A test file may change C<$RLP::HttpConfig> before C<run_tests()>.

=back

=head1 AN NGINX WITH THE MODULE COMPILED IN: TEST_NGINX_RLP_BUILTIN

    TEST_NGINX_BINARY=/path/to/nginx TEST_NGINX_RLP_BUILTIN=1 util/test

When C<TEST_NGINX_RLP_BUILTIN> is true the nginx under test
(C<TEST_NGINX_BINARY>) was built with C<--add-module> of this module (as
F<util/asan> builds it): no C<load_module> is added to any block, and a
C<load_module> of F<ngx_http_ratelimit_policy_module.so> written in a
block's C<--- main_config> is removed.  C<$RLP::LoadModule> is the line a
test file puts in an nginx.conf it writes itself (a second node):
C<load_module $RLP::ModulePath;>, or empty in this mode; such a file
starts C<$ENV{TEST_NGINX_BINARY}>, not the C<nginx> on C<PATH>.

=head1 DATABASE STATE AFTER THE REQUESTS: --- db_check

    --- db_check
    SELECT policy_slug FROM ratelimit.instances WHERE instance_id = 'x';
    --- db_check_out
    strict
    --- db_check_timeout: 2

After the last request of the block (in every repetition) the SQL runs
through C<psql> (unaligned, tuples only: one line per row, columns joined
by C<|>) and its output must equal C<--- db_check_out> (a string, a qr//
from C<--- db_check_out eval>, or an array ref indexed by repetition).
With C<--- db_check_timeout> the query is repeated every 0.1 s until it
matches or the time is up (for write-behind).  It counts one test per
repetition: C<plan tests =E<gt> repeat_each() * (... + blocks('db_check'))>.
It is wired with C<add_response_body_check>, which both runners provide,
so it does not run for blocks with C<--- ignore_response>.

=head1 HELPERS

Exported to the test file and installed in package Test::Nginx::Util, where
both runners evaluate C<--- init>.  All of them die on failure and every
command is bounded in time.

    psql($sql)            run SQL in the test database, return the output
    pg_stop([$mode])      pg_ctl stop -m fast (or smart / immediate)
    pg_start()            pg_ctl start
    pg_restart([$mode])   pg_ctl restart -m fast (or $mode)
    pg_kill($sig [, 'all'])  signal the postmaster (or it and all its
                          children: STOP 'all' freezes the server)
    pg_kill($sig, \@pids) signal these backends only (found in
                          pg_stat_activity)
    pg_query_count($like) calls recorded by pg_stat_statements for the
                          statements of this database whose text is LIKE it
    pg_stat_reset()       pg_stat_statements_reset()
    reset_fixtures()      re-apply t/fixtures.sql (must be re-runnable)

When the test file ends, a server left stopped (SIGSTOP) is continued and
a server left down is started again, so the next file finds it running.

=cut

use strict;
use warnings;

use Cwd ();
use File::Basename ();
use File::Spec ();
use IPC::Run ();
use Time::HiRes ();

our ($Root, $ModulePath, $Runner, $Builtin, $LoadModule);

BEGIN {
    $Root = Cwd::abs_path(File::Spec->catdir(
                File::Basename::dirname(__FILE__), '..', '..'));

    my @others;
    for my $so (split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // '') {
        if ($so =~ m{(?:^|/)ngx_http_ratelimit_policy_module\.so$}) {
            $ModulePath = $so;
        } else {
            push @others, $so;
        }
    }

    if (defined $ModulePath) {
        if (@others) {
            $ENV{TEST_NGINX_LOAD_MODULES} = "@others";
        } else {
            delete $ENV{TEST_NGINX_LOAD_MODULES};
        }
    }

    $ModulePath //= "$Root/build/ngx_http_ratelimit_policy_module.so";

    $Builtin = $ENV{TEST_NGINX_RLP_BUILTIN} ? 1 : 0;
    $LoadModule = $Builtin ? '' : "load_module $ModulePath;";

    if ($ENV{TEST_NGINX_USE_COMPAT}
        || !eval { require Test::Nginx::Socket; 1 })
    {
        my $err = $@;
        die $err if !$ENV{TEST_NGINX_USE_COMPAT}
                    && $err !~ m{^Can't locate Test/Nginx/Socket\.pm in \@INC};
        unshift @INC, "$Root/t/compat";
        require Test::Nginx::Socket;
    }

    $Runner = $Test::Nginx::Socket::COMPAT
              ? 'compat' : "real $Test::Nginx::Socket::VERSION";
}

use Test::Nginx::Socket -base;

our @EXPORT = qw(
    psql pg_stop pg_start pg_restart pg_kill pg_query_count pg_stat_reset
    reset_fixtures
);

our $HttpConfig = <<'_EOC_';
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO";
    ratelimit_policy_zone zone=ratelimit:8m;
_EOC_

our $CommandTimeout = 30;   # bound for psql and pg_ctl, seconds

# --- init code runs in package Test::Nginx::Util under both runners.
for my $f (@EXPORT) {
    no strict 'refs';
    *{"Test::Nginx::Util::$f"} = \&{"RLP::$f"}
        unless defined &{"Test::Nginx::Util::$f"};
}

my %Stopped;        # pids we sent SIGSTOP and not yet SIGCONT
my $Touched = 0;    # this file changed the server's state


add_block_preprocessor(sub {
    my $block = shift;
    my $name = $block->name;

    return if defined $block->no_module;

    my $main = $block->main_config // '';
    if ($Builtin) {
        $main =~ s/^\s*load_module\s+\S*ngx_http_ratelimit_policy_module\.so
                   \s*;[ \t]*\n?//mgx;
        $block->set_value(main_config => $main);

    } elsif ($main !~ /^\s*load_module\s+\S*ngx_http_ratelimit_policy_module\.so/m) {
        if (!-f $ModulePath) {
            bail_out("$0 $name - $ModulePath does not exist: build the module"
                     . " with `make` (a block that does not need it can say"
                     . " --- no_module)");
        }
        $block->set_value(main_config => "load_module $ModulePath;\n$main");
    }

    $block->set_value(http_config => $HttpConfig)
        unless defined $block->http_config;

    for my $s (qw(main_config http_config config init)) {
        my $v = $block->$s;
        next unless defined $v && !ref $v;
        for my $var ($v =~ /\$(TEST_NGINX_PG_[A-Z_]+)/g) {
            bail_out("$0 $name - \$$var is not set: run the suite through"
                     . " util/test")
                unless defined $ENV{$var};
        }
    }
});


add_response_body_check(sub {
    my ($block, $body, $req_idx, $rep, $dry_run) = @_;

    my $sql = $block->db_check;
    return unless defined $sql;
    return unless $req_idx == _last_request_index($block);

    my $name = $block->name;

    SKIP: {
        Test::More::skip("$name - db_check - tests skipped due to $dry_run", 1)
            if $dry_run;

        my $expected = $block->db_check_out;
        bail_out("$name - --- db_check needs --- db_check_out")
            unless defined $expected;
        $expected = $expected->[$rep] if ref $expected eq 'ARRAY';

        my $wait = $block->db_check_timeout // 0;
        $wait =~ s/^\s+|\s+$//g;
        my $deadline = Time::HiRes::time() + ($wait || 0);

        my ($got, $err);
        while (1) {
            $got = eval { psql($sql) };
            $err = $@;
            last if !$err && (ref $expected ? $got =~ $expected
                                            : $got eq $expected);
            last if Time::HiRes::time() >= $deadline;
            Time::HiRes::sleep(0.1);
        }

        if ($err) {
            Test::More::fail("$name - db_check (req $rep)");
            Test::More::diag("db_check query failed: $err");
        } else {
            is_str($got, $expected, "$name - db_check (req $rep)");
        }
    }
});

sub _last_request_index {
    my $block = shift;

    if (my $p = $block->pipelined_requests) {
        return ref $p eq 'ARRAY' ? $#$p : 0;
    }
    return 0 if defined $block->raw_request;

    my $r = $block->request;
    return ref $r eq 'ARRAY' ? $#$r : 0;
}


# ---------------------------------------------------------------------------
# Database helpers

sub _env {
    my $var = shift;
    my $v = $ENV{$var};
    die "$var is not set: run the suite through util/test\n"
        unless defined $v && length $v;
    return $v;
}

sub _bin {
    my $prog = shift;
    my $dir = $ENV{TEST_NGINX_PG_BIN} || '/usr/lib/postgresql/15/bin';
    return "$dir/$prog";
}

# Runs a command with a time bound; returns stdout, dies with stderr.
sub _run {
    my ($cmd, $stdin) = @_;
    my ($out, $err) = ('', '');

    local $ENV{PGCONNECT_TIMEOUT} = $ENV{PGCONNECT_TIMEOUT} || 5;

    # psql may exit before reading its input (the server is down)
    local $SIG{PIPE} = 'IGNORE';

    my $ok = eval {
        IPC::Run::run($cmd, \($stdin // ''), \$out, \$err,
                      IPC::Run::timeout($CommandTimeout));
    };
    my $exc = $@;

    die "@$cmd: did not finish within ${CommandTimeout}s\n"
        if $exc =~ /timeout/;
    die "@$cmd: $exc" if $exc;
    die "@$cmd: exit code " . ($? >> 8) . "\n$err" unless $ok;
    return $out;
}

# pg_ctl refuses to run as root: run it as the cluster's owner.
sub _pg_ctl {
    my @args = @_;
    my @cmd = (_bin('pg_ctl'), '-D', _env('TEST_NGINX_PG_DATA'), @args);
    if ($> == 0) {
        my $owner = getpwuid((stat _env('TEST_NGINX_PG_DATA'))[4]);
        unshift @cmd, 'runuser', '-u', $owner, '--';
    }
    $Touched = 1;
    return _run(\@cmd);
}

sub _psql {
    my ($stdin, @args) = @_;
    return _run([_bin('psql'), '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
                 '-d', _env('TEST_NGINX_PG_CONNINFO'), @args], $stdin);
}

sub psql {
    my $sql = shift;
    return _psql($sql, '-f', '-');
}

sub pg_stop {
    my $mode = shift // 'fast';
    return _pg_ctl('-m', $mode, '-w', '-t', $CommandTimeout, 'stop');
}

sub pg_start {
    my $log = _env('TEST_NGINX_PG_DATA') . '/postgresql.log';
    return _pg_ctl('-l', $log, '-w', '-t', $CommandTimeout, 'start');
}

sub pg_restart {
    my $mode = shift // 'fast';
    my $log = _env('TEST_NGINX_PG_DATA') . '/postgresql.log';
    return _pg_ctl('-l', $log, '-m', $mode, '-w', '-t', $CommandTimeout,
                   'restart');
}

sub _postmaster_pid {
    my $file = _env('TEST_NGINX_PG_DATA') . '/postmaster.pid';
    open my $in, '<', $file or die "cannot read $file: $!\n";
    my $pid = <$in>;
    close $in;
    die "no pid in $file\n" unless defined $pid && $pid =~ /^(\d+)/;
    return $1;
}

# the children of a process; with $what, only those whose "(name) state"
# in /proc/PID/stat matches it
sub _children_of {
    my ($ppid, $what) = @_;
    my @pids;
    opendir my $dh, '/proc' or return;
    for my $p (grep { /^\d+$/ } readdir $dh) {
        open my $in, '<', "/proc/$p/stat" or next;
        my $stat = <$in> // '';
        close $in;
        next unless $stat =~ /^\d+ (\(.*\)\s+\S+)\s+(\d+)/ && $2 == $ppid;
        next if defined $what && $1 !~ $what;
        push @pids, $p;
    }
    return @pids;
}

sub pg_kill {
    my ($sig, $scope) = @_;
    $sig =~ s/^SIG//;

    my @done;
    $Touched = 1;

    if (ref $scope eq 'ARRAY') {
        # these backends only; one may have exited meanwhile
        @done = grep { kill $sig, $_ } @$scope;

    } else {
        my $pm = _postmaster_pid();
        kill($sig, $pm) or die "kill -$sig $pm: $!\n";
        @done = ($pm);

        # The postmaster is signalled first: once stopped it forks no more,
        # so the scan below finds every child.  A child may exit meanwhile.
        if (defined $scope && $scope eq 'all') {
            push @done, grep { kill $sig, $_ } _children_of($pm);
        }
    }

    for my $pid (@done) {
        if ($sig eq 'STOP') {
            $Stopped{$pid} = 1;
        } elsif ($sig eq 'CONT') {
            delete $Stopped{$pid};
        }
    }
    return scalar @done;
}

sub pg_query_count {
    my $like = shift;
    my $n = _psql(<<'_SQL_', '-v', "pat=$like", '-f', '-');
SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
 WHERE query LIKE :'pat'
   AND query NOT LIKE '%pg_stat_statements%'
   AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database());
_SQL_
    $n =~ s/\s+//g;
    return $n + 0;
}

sub pg_stat_reset {
    psql('SELECT pg_stat_statements_reset();');
    return;
}

sub reset_fixtures {
    _psql(undef, '-f', "$Root/t/fixtures.sql");
    return;
}

END {
    local ($?, $@);
    kill 'CONT', keys %Stopped if %Stopped;
    if ($Touched && $ENV{TEST_NGINX_PG_DATA}) {
        my $running = eval { _pg_ctl('status'); 1 };
        if (!$running) {
            eval { pg_start(); 1 }
                or warn "WARNING: could not restart PostgreSQL: $@";
        }
    }
}

1;
