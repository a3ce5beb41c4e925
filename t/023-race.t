# PATCHes to paid policies racing the revocation of the account's plan by
# psql (DESIGN.md sections 4 and 5, issue 3): once the revocation has
# committed no PATCH to a paid policy succeeds, and the instance never ends
# on a paid policy set after the revocation; the rule is checked inside the
# database (ratelimit.set_instance_policy locks the account row), not from
# the node's cache, which still says "active plan" until the notification
# arrives.
#
# The race runs in --- init: 8 client processes send PATCHes to the test
# nginx back to back for PAID00000003 (account 1002), alternating business
# and high_throughput so that every success really writes the row, each
# recording when it sent the request, when the answer was complete, and the
# status.  Meanwhile a psql session revokes the plan:
#
#   TEST 1  BEGIN; UPDATE accounts ...; (0.4 s with the row lock held)
#           COMMIT;  -- the PATCHes in flight while the lock is held wait
#           for the commit and are then refused, and so is every PATCH
#           sent after the lock was taken
#   TEST 2  three rounds of: plan active, 0.3 s of PATCHes, an autocommit
#           revocation, 0.4 s of PATCHes
#
# The client-side verdict is written to html/race.txt and fetched by the
# block's first request; the database-side verdict is the --- db_check on
# an audit trail kept by triggers of this file (schema rlp_race, removed at
# the end): every change of the instance's slug and every change of the
# account's plan, stamped with clock_timestamp() inside the writing
# transactions, after their row locks were taken.  Since a successful
# set_instance_policy() holds the account row FOR SHARE until it commits,
# and the revocation needs that row, no paid slug may carry a stamp later
# than a revocation's (until a plan is granted again), and the row must
# hold the last change of the trail.

use lib 't/lib';
use RLP;
use RLPHelpers;
use RLPDoc;

use IO::Socket::INET ();
use IPC::Run ();
use POSIX ();
use Time::HiRes ();

repeat_each(1);

our $Clients = 8;
our $Path = '/v2/session/rate-limit?instance_id=PAID00000003'
            . '&access_token=paid-token-1002';
our @Paid = qw(business high_throughput);

sub audit_install {
    psql(<<'_SQL_');
DROP SCHEMA IF EXISTS rlp_race CASCADE;
CREATE SCHEMA rlp_race;
CREATE TABLE rlp_race.audit (
    seq  bigserial PRIMARY KEY,
    slug text,
    at   timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE rlp_race.plan (
    seq    bigserial PRIMARY KEY,
    active bool NOT NULL,
    at     timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION rlp_race.on_instance() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.instance_id = 'PAID00000003' THEN
        INSERT INTO rlp_race.audit (slug) VALUES (NEW.policy_slug);
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION rlp_race.on_account() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.account_id = 1002 THEN
        INSERT INTO rlp_race.plan (active)
            VALUES (coalesce(NEW.plan_active_until > now(), false));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER rlp_race_audit AFTER UPDATE ON ratelimit.instances
    FOR EACH ROW EXECUTE FUNCTION rlp_race.on_instance();
CREATE TRIGGER rlp_race_audit AFTER UPDATE ON ratelimit.accounts
    FOR EACH ROW EXECUTE FUNCTION rlp_race.on_account();
_SQL_
}

sub audit_remove {
    psql('DROP SCHEMA IF EXISTS rlp_race CASCADE;');
}

# --- the clients ---------------------------------------------------------

sub patch_once {
    my ($slug) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $ENV{TEST_NGINX_SERVER_PORT},
                                     Proto => 'tcp', Timeout => 5)
        or return 'connect';
    $sock->timeout(5);
    print $sock "PATCH $Path&policy_slug=$slug HTTP/1.0\r\n"
                . "Host: localhost\r\n\r\n";
    my $resp = '';
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm 5;
    my $ok = eval {
        while (1) {
            my $n = sysread($sock, my $buf, 65536);
            last unless $n;
            $resp .= $buf;
        }
        1;
    };
    alarm 0;
    close $sock;
    return 'timeout' unless $ok;
    return $resp =~ m{^HTTP/1\.\d (\d{3})} ? $1 : 'garbled';
}

# $Clients processes, each sending PATCHes until $until; returns their pids
sub clients_start {
    my ($until, $tag) = @_;
    my @pids;
    for my $i (1 .. $Clients) {
        my $file = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/race-$tag-$i.txt";
        my $pid = fork();
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            open my $out, '>', $file or POSIX::_exit(1);
            my $k = $i;
            while (Time::HiRes::time() < $until) {
                my $slug = $Paid[$k++ % 2];
                my $sent = Time::HiRes::time();
                my $status = patch_once($slug);
                my $got = Time::HiRes::time();
                printf $out "%.6f %.6f %s %s\n", $sent, $got, $status, $slug;
            }
            close $out;
            POSIX::_exit(0);
        }
        push @pids, [$pid, $file];
    }
    return \@pids;
}

sub clients_wait {
    my $pids = shift;
    my @rec;
    my $deadline = Time::HiRes::time() + 15;
    for my $p (@$pids) {
        my ($pid, $file) = @$p;
        while (waitpid($pid, POSIX::WNOHANG()) == 0) {
            if (Time::HiRes::time() > $deadline) {
                kill 'KILL', $pid;
                waitpid($pid, 0);
                last;
            }
            Time::HiRes::sleep(0.01);
        }
        open my $in, '<', $file or die "$file: $!";
        while (<$in>) {
            my ($sent, $got, $status, $slug) = split;
            push @rec, { sent => $sent, got => $got, status => $status,
                         slug => $slug };
        }
        close $in;
    }
    return @rec;
}

# --- a psql session that stays connected ---------------------------------

sub session_open {
    my ($in, $out, $err) = ('', '', '');
    my $h = IPC::Run::start(
        ["$ENV{TEST_NGINX_PG_BIN}/psql", '-X', '-q', '-A', '-t',
         '-v', 'ON_ERROR_STOP=1', '-d', $ENV{TEST_NGINX_PG_CONNINFO}],
        \$in, \$out, \$err, IPC::Run::timeout(60));
    my $s = { h => $h, in => \$in, out => \$out, err => \$err };
    session_do($s, 'SELECT 1;');
    return $s;
}

sub session_do {
    my ($s, $sql) = @_;
    my $mark = 'rlp_mark_' . int(rand(1e9));
    ${ $s->{out} } = '';
    ${ $s->{in} } .= "$sql\nSELECT '$mark';\n";
    my $deadline = Time::HiRes::time() + 10;
    while (${ $s->{out} } !~ /\Q$mark\E/) {
        die "psql session: no answer to $sql (${ $s->{err} })\n"
            if Time::HiRes::time() > $deadline;
        $s->{h}->pump_nb;
        Time::HiRes::sleep(0.001);
    }
    return;
}

sub session_close {
    my $s = shift;
    ${ $s->{in} } .= "\\q\n";
    eval { $s->{h}->finish; 1 } or $s->{h}->kill_kill;
}

# --- the verdict ---------------------------------------------------------

sub verdict {
    my ($lines) = @_;
    my $file = "$ENV{TEST_NGINX_SERVER_ROOT}/html/race.txt";
    open my $out, '>', $file or die "$file: $!";
    print $out map { "$_->[0]=$_->[1]\n" } @$lines;
    close $out;
    Test::More::note(join ' ', map { "$_->[0]=$_->[1]" } @$lines);
}

sub race_with_held_lock {
    my $s = session_open();
    my $t0 = Time::HiRes::time();
    my $clients = clients_start($t0 + 1.6, 'lock');

    Time::HiRes::sleep(0.5);
    my $t_update = Time::HiRes::time();
    session_do($s, "BEGIN; UPDATE ratelimit.accounts"
                   . " SET plan_active_until = now() - interval '1 day'"
                   . " WHERE account_id = 1002;");
    my $t_locked = Time::HiRes::time();
    Time::HiRes::sleep(0.4);
    session_do($s, 'COMMIT;');
    my $t_commit = Time::HiRes::time();
    session_close($s);

    my @r = clients_wait($clients);

    # sent after the lock was surely held
    my @after = grep { $_->{sent} > $t_locked } @r;
    # in flight across most of the window: they waited for the lock
    my @waited = grep { $_->{got} > $t_locked + 0.2
                        && $_->{sent} < $t_commit - 0.05 } @r;
    verdict([
        [after_lock_200     => scalar grep { $_->{status} eq '200' } @after],
        [after_lock_not_403 => scalar grep { $_->{status} ne '403' } @after],
        [waited_not_403     => scalar grep { $_->{status} ne '403' } @waited],
        [errors => scalar grep { $_->{status} !~ /^(?:200|403)$/ } @r],
        [after_lock => scalar(@after) > 0 ? 'some' : 'none'],
        [waited => scalar(@waited) > 0 ? 'some' : 'none'],
        [before_200 => (grep { $_->{got} < $t_update
                               && $_->{status} eq '200' } @r)
                       ? 'some' : 'none'],
    ]);
}

sub race_rounds {
    my $rounds = shift;
    my (@after, @before, @all);
    for my $round (1 .. $rounds) {
        psql("UPDATE ratelimit.accounts"
             . " SET plan_active_until = now() + interval '1 year'"
             . " WHERE account_id = 1002");
        Time::HiRes::sleep(0.1);
        my $t0 = Time::HiRes::time();
        my $clients = clients_start($t0 + 0.7, "round$round");
        Time::HiRes::sleep(0.3);
        my $t_start = Time::HiRes::time();
        psql("UPDATE ratelimit.accounts"
             . " SET plan_active_until = now() - interval '1 day'"
             . " WHERE account_id = 1002");
        my $t_commit = Time::HiRes::time();
        my @r = clients_wait($clients);
        push @all, @r;
        push @after, grep { $_->{sent} > $t_commit } @r;
        push @before, grep { $_->{got} < $t_start } @r;
    }
    verdict([
        [after_commit_200     => scalar grep { $_->{status} eq '200' } @after],
        [after_commit_not_403 => scalar grep { $_->{status} ne '403' } @after],
        [errors => scalar grep { $_->{status} !~ /^(?:200|403)$/ } @all],
        [after_commit => scalar(@after) > 0 ? 'some' : 'none'],
        [before_200 => (grep { $_->{status} eq '200' } @before)
                       ? 'some' : 'none'],
    ]);
}

# paid slugs written while the plan was not active (the plan's state at a
# moment is its last change before it; active before the first one), that
# there was a revocation, that the trail is not empty, and that the row
# holds the last change of the trail
our $AuditCheck = <<'_SQL_';
SELECT (SELECT count(*) FROM rlp_race.audit a
          JOIN ratelimit.policies p ON p.slug = a.slug
         WHERE NOT p.is_free
           AND NOT coalesce((SELECT c.active FROM rlp_race.plan c
                              WHERE c.at < a.at
                              ORDER BY c.at DESC LIMIT 1), true)),
       (SELECT count(*) FROM rlp_race.plan WHERE NOT active) > 0,
       (SELECT count(*) FROM rlp_race.audit) > 0,
       (SELECT policy_slug FROM ratelimit.instances
         WHERE instance_id = 'PAID00000003')
       = (SELECT slug FROM rlp_race.audit ORDER BY seq DESC LIMIT 1);
_SQL_

our $AfterRevocation = qr/\A(?:\Q${\ RLPDoc::doc(current => 'standard_policy',
    plan => 0, stored => 'business')}\E|\Q${\ RLPDoc::doc(
    current => 'standard_policy', plan => 0, stored => 'high_throughput')}\E)\z/;

END {
    eval { audit_remove(); 1 };
    # leave the fixtures as a file finds them
    eval { reset_fixtures(); 1 };
}

add_block_preprocessor(sub {
    my $block = shift;
    my $init = $block->init // '';
    $block->set_value(init => "reset_fixtures();\nmain::audit_install();\n"
                              . "wait_listener();\n$init");
});

reset_fixtures();

plan tests => RLPDoc::count_tests(blocks());

no_shuffle();
run_tests();

__DATA__

=== TEST 1: revocation holding the account row: no paid PATCH succeeds after it took the lock
--- log_level: notice
--- config
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
    }
--- init
main::race_with_held_lock();
--- request eval
["GET /race.txt", "GET $main::Path",
 "PATCH $main::Path&policy_slug=business"]
--- error_code eval
[200, 200, 403]
--- response_body eval
["after_lock_200=0\nafter_lock_not_403=0\nwaited_not_403=0\n"
 . "errors=0\nafter_lock=some\nwaited=some\nbefore_200=some\n",
 $main::AfterRevocation,
 RLPDoc::error_re('policy_not_available')]
--- db_check eval
$main::AuditCheck
--- db_check_out
0|t|t|t



=== TEST 2: three rounds of autocommit revocations: no paid PATCH sent after the commit succeeds
--- log_level: notice
--- config
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
    }
--- init
main::race_rounds(3);
--- request eval
["GET /race.txt", "GET $main::Path",
 "PATCH $main::Path&policy_slug=high_throughput"]
--- error_code eval
[200, 200, 403]
--- response_body eval
["after_commit_200=0\nafter_commit_not_403=0\nerrors=0\n"
 . "after_commit=some\nbefore_200=some\n",
 $main::AfterRevocation,
 RLPDoc::error_re('policy_not_available')]
--- db_check eval
$main::AuditCheck
--- db_check_out
0|t|t|t
