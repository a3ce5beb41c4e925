package RLPHelpers;

=pod

=head1 NAME

RLPHelpers - client and database helpers for the module's own suites
(t/010 .. t/015), on top of t/lib/RLP.pm

=head1 SYNOPSIS

    use lib 't/lib';
    use RLP;
    use RLPHelpers;

    # in --- init (package Test::Nginx::Util) or at the top level
    wait_listener();
    my $r = http_get(api_path('FREE00000002', 'free-token-1001'));
    is($r->{status}, 200, 'warmed');
    my @r = http_parallel([{ path => '/slow' },
                           { path => '/canary', delay => 0.05 }]);

=head1 WHY

Test::Nginx sends the requests of a block one after another, and runs
nothing between them.  Blocks that need requests in flight at the same
time, or a database change between two requests of the same nginx, do
that from C<--- init> (which both runners evaluate after nginx started and
before the block's own requests) with the client below, and check the
results there with Test::More (each such check is counted in the plan of
the file).

=head1 HELPERS

    api_path($id, $token)   "/v2/session/rate-limit?instance_id=..&access_token=.."
    http_get($path, @hdrs)  one request (Connection: close); returns
                            { status, headers => {lc name => value},
                              body, elapsed }
    http_request(%o)        method, path, headers (array ref), timeout
    http_parallel(\@reqs [, $timeout])
                            every request on its own connection, all in
                            flight together (each may have a delay in
                            seconds before it is sent); returns the results
                            in the same order
    wait_listener([$secs])  until this nginx's LISTEN connection is idle
                            (its start-up resync has been answered)
    wait_until($secs, $sub) polls $sub every 50 ms; true if it returned true
    lookups() / catalogues()
                            pg_query_count of the module's entitlement
                            lookup / catalogue statements
    install_counters()      creates rlp_test.module_queries(), which gives
                            "lookups=N catalogues=M" for --- db_check
    without_notify($sql)    runs $sql with the NOTIFY triggers of
                            ratelimit.instances and .accounts off, in one
                            transaction (so only cache_ttl can reveal it)
    slow_instance($id, $secs [, $account, $slug])
                            adds the instance if needed and makes the
                            entitlement view sleep $secs for it only
    restore_schema()        re-applies sql/schema.sql (the shipped view)
                            and forgets the slow instances
    terminate_lookups_after($secs)
                            a child process that, after $secs, terminates
                            the module's backends running a lookup
                            (pg_terminate_backend); returns its pid, for
                            waitpid
    pg_is_up()              psql answers (bounded to 5 s)
    pg_ensure_up()          continues a frozen server, starts a stopped one
    free_port()             a TCP port nothing listens on (closed again)

The slow view is built on a helper function in schema C<rlp_test>, which
belongs to the tests only; a file that installed it gets sql/schema.sql
re-applied when it ends.  pg_stat_statements counts utility statements
too, and slow_instance() / restore_schema() mention instance_entitlements:
call pg_stat_reset() after them before counting lookups.  pg_ensure_up()
uses RLP::_postmaster_pid().

=cut

use strict;
use warnings;

use Errno ();
use POSIX ();
use IO::Select ();
use IO::Socket::INET ();
use Socket ();
use Time::HiRes ();

use RLP ();

use base 'Exporter';

our @EXPORT = qw(
    api_path http_get http_request http_parallel wait_listener wait_until
    lookups catalogues slow_instance restore_schema pg_is_up pg_ensure_up
    free_port install_counters without_notify master_pid workers_of
    terminate_lookups_after fail_instance
);

for my $f (@EXPORT) {
    no strict 'refs';
    *{"Test::Nginx::Util::$f"} = \&{"RLPHelpers::$f"}
        unless defined &{"Test::Nginx::Util::$f"};
}

our $LookupLike  = '%instance_entitlements%';
our $CatalogLike = '%FROM ratelimit.policies ORDER BY%';

my $SlowInstalled = 0;


sub api_path {
    my ($id, $token) = @_;
    my @q;
    push @q, "instance_id=$id" if defined $id;
    push @q, "access_token=$token" if defined $token;
    return '/v2/session/rate-limit' . (@q ? '?' . join('&', @q) : '');
}

sub _port {
    return $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
}

sub _request_text {
    my $o = shift;
    my $method = $o->{method} // 'GET';
    my $text = "$method $o->{path} HTTP/1.1\r\nHost: localhost\r\n"
               . "Connection: close\r\n";
    $text .= "$_\r\n" for @{ $o->{headers} // [] };
    if (defined $o->{body}) {
        $text .= 'Content-Length: ' . length($o->{body}) . "\r\n\r\n"
                 . $o->{body};
    } else {
        $text .= "\r\n";
    }
    return $text;
}

sub _parse {
    my ($raw, $method) = @_;
    my %r = (status => 0, headers => {}, body => '', raw => $raw);

    my ($head, $body) = split /\r\n\r\n/, $raw, 2;
    return \%r unless defined $head && $head =~ m{^HTTP/1\.[01] (\d{3})};
    $r{status} = $1;
    for my $line (split /\r\n/, $head) {
        next unless $line =~ /^([^:\s]+):\s*(.*)$/;
        $r{headers}{lc $1} = $2;
    }
    $r{body} = $body // '';
    return \%r;
}

sub http_request {
    my %o = @_;
    my @r = http_parallel([\%o], $o{timeout});
    return $r[0];
}

sub http_get {
    my ($path, @headers) = @_;
    return http_request(path => $path, headers => \@headers);
}

sub http_parallel {
    my ($reqs, $timeout) = @_;
    $timeout //= 10;

    my $t0 = Time::HiRes::time();
    my $deadline = $t0 + $timeout;
    my @st = map {
        { req => $_, out => _request_text($_), buf => '',
          start_at => $t0 + ($_->{delay} // 0) }
    } @$reqs;

    my $sel_r = IO::Select->new;
    my $sel_w = IO::Select->new;
    my %by_fd;
    my $left = @st;

    while ($left) {
        my $now = Time::HiRes::time();
        last if $now >= $deadline;

        my $next_start = $deadline;
        for my $s (@st) {
            next if $s->{sock} || $s->{done};
            if ($s->{start_at} <= $now) {
                my $sock = IO::Socket::INET->new(
                    PeerAddr => '127.0.0.1', PeerPort => _port(),
                    Proto => 'tcp', Blocking => 0);
                if (!$sock) {
                    $s->{error} = "connect: $!";
                    $s->{done} = 1;
                    $left--;
                    next;
                }
                $s->{sock} = $sock;
                $s->{sent_at} = $now;
                $by_fd{fileno $sock} = $s;
                $sel_w->add($sock);
            } elsif ($s->{start_at} < $next_start) {
                $next_start = $s->{start_at};
            }
        }
        last unless $left;

        my $wait = $next_start - Time::HiRes::time();
        $wait = 0.05 if $wait > 0.05;
        $wait = 0 if $wait < 0;

        my ($rd, $wr) = IO::Select->select($sel_r, $sel_w, undef, $wait);

        for my $sock (@{ $wr // [] }) {
            my $s = $by_fd{fileno $sock};
            my $n = syswrite($sock, $s->{out});
            if (!defined $n) {
                next if $!{EAGAIN} || $!{EINPROGRESS};
                $s->{error} = "write: $!";
            } else {
                substr($s->{out}, 0, $n) = '';
                next if length $s->{out};
            }
            $sel_w->remove($sock);
            if ($s->{error}) {
                $s->{done} = 1;
                $left--;
                close $sock;
            } else {
                $sel_r->add($sock);
            }
        }

        for my $sock (@{ $rd // [] }) {
            my $s = $by_fd{fileno $sock};
            my $n = sysread($sock, my $chunk, 65536);
            if (!defined $n) {
                next if $!{EAGAIN};
                $s->{error} = "read: $!";
            } elsif ($n > 0) {
                $s->{buf} .= $chunk;
                next;
            }
            $s->{done} = 1;
            $s->{elapsed} = Time::HiRes::time() - $s->{sent_at};
            $left--;
            $sel_r->remove($sock);
            close $sock;
        }
    }

    my @res;
    for my $s (@st) {
        my $r = _parse($s->{buf}, $s->{req}{method});
        $r->{elapsed} = $s->{elapsed}
                        // (Time::HiRes::time() - ($s->{sent_at} // $t0));
        $r->{error} = $s->{error} // ($s->{done} ? undef : 'timed out');
        close $s->{sock} if $s->{sock} && !$s->{done};
        push @res, $r;
    }
    return @res;
}

sub wait_until {
    my ($secs, $sub) = @_;
    my $deadline = Time::HiRes::time() + $secs;
    while (1) {
        return 1 if $sub->();
        return 0 if Time::HiRes::time() >= $deadline;
        Time::HiRes::sleep(0.05);
    }
}

# The listener of the nginx started for this block: its backend started
# after the pid file was written, and its last statement (LISTEN, or the
# heartbeat) has been answered.
sub wait_listener {
    my $secs = shift // 5;
    my $pidfile = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/nginx.pid";
    my @st = Time::HiRes::stat($pidfile);
    my $since = @st ? $st[9] - 0.5 : 0;

    my $ok = wait_until($secs, sub {
        my $n = RLP::psql(<<"_SQL_");
SELECT count(*) FROM pg_stat_activity
 WHERE application_name = 'nginx ratelimit_policy'
   AND query IN ('LISTEN ratelimit_policy', 'SELECT 1')
   AND state = 'idle'
   AND backend_start >= to_timestamp($since);
_SQL_
        return $n =~ /^\s*[1-9]/;
    });
    die "the module's LISTEN connection did not show up within ${secs}s\n"
        unless $ok;
    return 1;
}

sub lookups    { return RLP::pg_query_count($LookupLike) }
sub catalogues { return RLP::pg_query_count($CatalogLike) }

sub install_counters {
    RLP::psql(<<"_SQL_");
CREATE SCHEMA IF NOT EXISTS rlp_test;
CREATE OR REPLACE FUNCTION rlp_test.module_queries() RETURNS text
    LANGUAGE sql AS \$\$
SELECT 'lookups=' || coalesce(sum(calls) FILTER (WHERE query LIKE '$LookupLike'), 0)
       || ' catalogues='
       || coalesce(sum(calls) FILTER (WHERE query LIKE '$CatalogLike'), 0)
  FROM pg_stat_statements
 WHERE query NOT LIKE '%pg_stat_statements%'
   AND dbid = (SELECT oid FROM pg_database
                WHERE datname = current_database())
\$\$;
_SQL_
    return;
}

sub without_notify {
    my $sql = shift;
    my @trg = (['ratelimit.instances', 'ratelimit_notify_upd'],
               ['ratelimit.instances', 'ratelimit_notify_ins_del'],
               ['ratelimit.accounts', 'ratelimit_notify_upd']);
    RLP::psql(join "\n", 'BEGIN;',
              (map { "ALTER TABLE $_->[0] DISABLE TRIGGER $_->[1];" } @trg),
              $sql =~ /;\s*$/ ? $sql : "$sql;",
              (map { "ALTER TABLE $_->[0] ENABLE ALWAYS TRIGGER $_->[1];" }
                   @trg),
              'COMMIT;');
    return;
}

sub slow_instance {
    my ($id, $secs, $account, $slug) = @_;
    $account //= 1001;
    $slug = defined $slug ? "'$slug'" : 'NULL';

    RLP::psql(<<"_SQL_");
CREATE SCHEMA IF NOT EXISTS rlp_test;
CREATE TABLE IF NOT EXISTS rlp_test.slow_ids (
    instance_id text PRIMARY KEY, secs float8 NOT NULL,
    fail bool NOT NULL DEFAULT false);
CREATE OR REPLACE FUNCTION rlp_test.slow(p_id text) RETURNS bool
    LANGUAGE plpgsql VOLATILE AS \$\$
DECLARE s float8; f bool;
BEGIN
    SELECT secs, fail INTO s, f FROM rlp_test.slow_ids
     WHERE instance_id = p_id;
    IF FOUND THEN
        PERFORM pg_sleep(s);
        IF f THEN
            RAISE EXCEPTION 'rlp_test: poisoned lookup of %', p_id;
        END IF;
    END IF;
    RETURN true;
END
\$\$;
INSERT INTO rlp_test.slow_ids VALUES ('$id', $secs)
    ON CONFLICT (instance_id) DO UPDATE SET secs = EXCLUDED.secs;
INSERT INTO ratelimit.instances (instance_id, account_id, policy_slug)
    VALUES ('$id', $account, $slug) ON CONFLICT (instance_id) DO NOTHING;
CREATE OR REPLACE VIEW ratelimit.instance_entitlements AS
    SELECT i.instance_id,
           i.account_id,
           a.access_token_sha256,
           coalesce(a.plan_active_until > now(), false) AS has_active_plan,
           i.policy_slug
      FROM ratelimit.instances i
      JOIN ratelimit.accounts a ON a.account_id = i.account_id
     WHERE rlp_test.slow(i.instance_id);
_SQL_
    $SlowInstalled = 1;
    return;
}

# the lookups of instances made with slow_instance() raise an error after
# their seconds of sleep
sub fail_instance {
    RLP::psql(join '', map { "UPDATE rlp_test.slow_ids SET fail = true"
                             . " WHERE instance_id = '$_';" } @_);
    return;
}

sub restore_schema {
    my $file = "$RLP::Root/sql/schema.sql";
    open my $in, '<', $file or die "$file: $!\n";
    my $sql = do { local $/; <$in> };
    close $in;
    RLP::psql($sql);
    RLP::psql('DROP FUNCTION IF EXISTS rlp_test.slow(text);'
              . ' DROP TABLE IF EXISTS rlp_test.slow_ids;');
    $SlowInstalled = 0;
    return;
}

sub pg_is_up {
    local $RLP::CommandTimeout = 5;
    return eval { RLP::psql('SELECT 1'); 1 } ? 1 : 0;
}

sub pg_ensure_up {
    my $pm = eval { RLP::_postmaster_pid() };

    # frozen with pg_kill('STOP', ...): continue it (and its children)
    if ($pm && open my $in, '<', "/proc/$pm/stat") {
        my $stat = <$in> // '';
        close $in;
        RLP::pg_kill('CONT', 'all') if $stat =~ /\)\s+T\s/;
    }

    return 1 if pg_is_up();
    RLP::pg_start();
    return pg_is_up();
}

# the pid of the block's nginx master (master_on() blocks)
sub master_pid {
    my $f = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/nginx.pid";
    open my $in, '<', $f or die "$f: $!";
    chomp(my $pid = <$in>);
    close $in;
    return $pid;
}

# the nginx worker processes of a master, sorted (a sanitizer's helper
# process would not be one)
sub workers_of {
    my $ppid = shift;
    return sort(RLP::_children_of($ppid, qr/^\(nginx\)\s+[RSD]$/));
}

sub terminate_lookups_after {
    my $secs = shift;
    my $pid = fork() // die "fork: $!";
    return $pid if $pid;
    Time::HiRes::sleep($secs);
    RLP::psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
              . " WHERE application_name = 'nginx ratelimit_policy'"
              . " AND query LIKE '$LookupLike' AND state = 'active'");
    POSIX::_exit(0);
}

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 1, ReuseAddr => 1)
        or die "no free port: $!\n";
    my $port = $s->sockport;
    close $s;
    return $port;
}

END {
    local ($?, $@);
    if ($SlowInstalled) {
        eval { pg_ensure_up(); restore_schema(); 1 }
            or warn "WARNING: could not restore sql/schema.sql: $@";
    }
}

1;
