# Changes made outside this nginx reach it through LISTEN ratelimit_policy
# (DESIGN.md section 7, issue 3): psql changes of instances, accounts and
# the catalogue; a second nginx node sharing the database; PostgreSQL
# restarted (fast, immediate) under a listening node; a change made while
# the node could not listen; an invalidation racing a lookup in flight.
#
# ratelimit_policy_cache_ttl is 60s (negative too), so within a block only
# a notification (or the resync after a reconnection) can make a change
# visible; TEST 2 and TEST 13 are the controls: the same change made with
# the notify trigger disabled stays invisible.
#
# How a block runs: --- init (after this block's nginx started) waits for
# the node's LISTEN ("listening on" in its error.log), lets the
# notifications of the fixture reset go by, loads the entry into the cache
# with a GET (dies, i.e. bails out, if that answer is not the expected old
# state), makes the change, and returns 0.9 s after the change committed;
# the block's request then asserts the new state: "visible within one
# second".
#
# TEST 21-27: the notification of this node's own PATCH (its "echo") does not
# throw away the entry that the PATCH stored (no lookup after it), while a
# change made elsewhere just before or just after the PATCH, or by node B
# right after it, is still seen within one second; also when the PATCH
# changed nothing and so sends no notification at all (TEST 26, 27: a
# notification merely counted against an expected echo would be lost).
# TEST 21b, 21c hold the notifications back (the module's LISTEN backends
# stopped with SIGSTOP) while three PATCHes commit: all three echoes come
# after the last PATCH's result, and none may invalidate (21b), while a
# psql change committed after them is still seen (21c).
#
# Node B: a second nginx with the module, started from this file
# (t/servroot2, its own port, its own zone, master_process off, daemon off,
# as a child of `timeout -s KILL 300`, stopped at the end of the file).
# The blocks reach it through /nodeb/ on the test nginx (a plain
# proxy_pass), so that its answers are checked like any other response.

use lib 't/lib';
use RLP;
use RLPHelpers;
use RLPDoc;

use File::Path ();
use HTTP::Tiny ();
use IO::Socket::INET ();
use IPC::Run ();
use POSIX ();

# RLP::psql() runs psql through IPC::Run, which writes the SQL to psql's
# stdin; when the server is down psql may exit before reading it, and the
# write then raises SIGPIPE, which kills this test process (seen in the
# --- db_check_timeout loop of the block that stops PostgreSQL).  Until
# t/lib/RLP.pm ignores it itself:
$SIG{PIPE} = 'IGNORE';
use Time::HiRes ();

repeat_each(1);

$ENV{TEST_NGINX_NODE_B_PORT} = RLPHelpers::free_port();

our $Http = <<'_EOC_';
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" connect_timeout=1s;
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 60s negative=60s;
_EOC_

our $Api = <<'_EOC_';
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
    }

    location /nodeb/ {
        proxy_pass http://127.0.0.1:$TEST_NGINX_NODE_B_PORT/;
    }
_EOC_

# TEST 21, 21b: the API, and an enforced location proxied to this nginx
our $ApiSend = <<'_EOC_';
    location = /v2/session/rate-limit {
        ratelimit_policy_api;
    }

    location /upstream/ {
        return 200 "upstream\n";
    }

    location /send {
        ratelimit_policy_enforce send_message;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/upstream/;
    }
_EOC_

our $Path = '/v2/session/rate-limit';
our $Free3 = "$Path?instance_id=FREE00000003&access_token=free-token-1001";
our $Paid1 = "$Path?instance_id=PAID00000001&access_token=paid-token-1002";
our $Laps1 = "$Path?instance_id=LAPS00000001&access_token=lapsed-token-1003";

our $Dirty = 0;      # the catalogue or the view was changed by a block
our %B;              # node B: pid, root, port


# --- clients -------------------------------------------------------------

sub get_on {
    my ($port, $path) = @_;
    my $r = HTTP::Tiny->new(timeout => 5)
                      ->get("http://127.0.0.1:$port$path");
    return $r;
}

sub get_a { return get_on($ENV{TEST_NGINX_SERVER_PORT}, @_) }
sub get_b { return get_on($B{port}, @_) }

# GET must answer 200 with this effective policy (the entry is then cached)
sub prime {
    my ($getter, $path, $current) = @_;
    my $r = $getter->($path);
    die "priming GET $path: $r->{status} $r->{content}\n"
        unless $r->{status} == 200
               && $r->{content} =~ /"current_policy":"\Q$current\E"/;
    return;
}

# PATCH on a node: must answer 200 with this effective policy
sub patch_on {
    my ($port, $path, $current) = @_;
    my $r = HTTP::Tiny->new(timeout => 10)
                      ->request('PATCH', "http://127.0.0.1:$port$path");
    die "PATCH $path: $r->{status} $r->{content}\n"
        unless $r->{status} == 200
               && $r->{content} =~ /"current_policy":"\Q$current\E"/;
    return;
}

sub patch_a { return patch_on($ENV{TEST_NGINX_SERVER_PORT}, @_) }
sub patch_b { return patch_on($B{port}, @_) }

# TEST 21-21c: FREE00000003 to strict, back, and to strict again
sub patch_three {
    patch_a("$Free3&policy_slug=strict", 'strict');
    patch_a("$Free3&policy_slug=standard_policy", 'standard_policy');
    patch_a("$Free3&policy_slug=strict", 'strict');
    return;
}

sub current_is {
    my ($getter, $path, $current) = @_;
    my $r = $getter->($path);
    return $r->{status} == 200
           && $r->{content} =~ /"current_policy":"\Q$current\E"/;
}


# --- waiting -------------------------------------------------------------

# polls GET FREE00000003 on this node until it shows "strict" (at most
# $secs seconds; the block's own request then asserts it)
sub picked_up {
    my $secs = shift;
    my $t0 = Time::HiRes::time();
    my $ok = RLPHelpers::wait_until($secs, sub {
        current_is(\&get_a, $Free3, 'strict') });
    Test::More::note(sprintf("change %s after %.2fs",
                             $ok ? 'seen' : 'NOT seen',
                             Time::HiRes::time() - $t0));
    return $ok;
}

sub log_count {
    my ($file, $re) = @_;
    open my $in, '<', $file or return 0;
    my $n = grep { $_ =~ $re } <$in>;
    close $in;
    return $n;
}

sub wait_log {
    my ($file, $re, $secs, $min) = @_;
    $min //= 1;
    RLPHelpers::wait_until($secs, sub { log_count($file, $re) >= $min })
        or die "no \"$re\" in $file within ${secs}s\n";
    return;
}

our $Listening = qr/ratelimit_policy: listening on "ratelimit_policy"/;

sub a_log { return "$ENV{TEST_NGINX_SERVER_ROOT}/logs/error.log" }

# this block's nginx LISTENs, and the fixture reset's notifications are over
sub settle {
    wait_log(a_log(), $Listening, 5);
    wait_log("$B{root}/logs/error.log", $Listening, 5) if $B{pid};
    Time::HiRes::sleep(0.3);
    return;
}

# Every notification committed so far has reached this node: a barrier.
# Notifications come in commit order, so once one sent now for PAID00000001
# (cached first) has voided its entry, the fixture reset's have come too.
# settle()'s pause is enough for a change to be seen; a block that counts
# lookups needs this, or a late one voids the entry it counts on.
sub drained {
    prime(\&get_a, $Paid1, 'business');
    my $n = RLPHelpers::lookups();
    psql("NOTIFY ratelimit_policy, 'PAID00000001';");
    RLPHelpers::wait_until(5, sub {
        prime(\&get_a, $Paid1, 'business');
        return RLPHelpers::lookups() > $n;
    }) or die "the barrier notification did not come within 5 s\n";
    return;
}

# settle(), the notifications drained, FREE00000003 cached with its policy,
# the module's query counts at zero (rlp_test.module_queries() for
# --- db_check).  The entry is then read again 0.2 s later, until that
# costs no lookup.  A CI run once counted one lookup more in TEST 21, whose
# cause is not known (20 runs of this file did not repeat it); should
# something void the entry after the barrier, it is over before the counts
# start.
sub counted {
    settle();
    drained();
    RLPHelpers::install_counters();
    prime(\&get_a, $Free3, 'standard_policy');
    RLPHelpers::wait_until(5, sub {
        my $n = RLPHelpers::lookups();
        Time::HiRes::sleep(0.2);
        prime(\&get_a, $Free3, 'standard_policy');
        return RLPHelpers::lookups() == $n;
    }) or die "FREE00000003 does not stay cached\n";
    RLP::pg_stat_reset();
    return;
}

# run $sql, then return 0.9 s after it committed
sub change {
    my $sql = shift;
    psql($sql);
    my $t = Time::HiRes::time();
    Time::HiRes::sleep(0.9 - (Time::HiRes::time() - $t));
    return;
}

# the same without notification: the notify triggers are off for it
sub change_silently {
    my $sql = shift;
    change(<<"_SQL_");
BEGIN;
ALTER TABLE ratelimit.instances DISABLE TRIGGER ratelimit_notify_upd;
ALTER TABLE ratelimit.accounts DISABLE TRIGGER ratelimit_notify_upd;
$sql
ALTER TABLE ratelimit.instances ENABLE ALWAYS TRIGGER ratelimit_notify_upd;
ALTER TABLE ratelimit.accounts ENABLE ALWAYS TRIGGER ratelimit_notify_upd;
COMMIT;
_SQL_
}


# --- the second node -----------------------------------------------------

sub node_b_start {
    return if $B{pid} && kill(0, $B{pid});

    my $root = Test::Nginx::Socket::server_root() . '2';
    File::Path::remove_tree($root);
    File::Path::make_path("$root/conf", "$root/logs", "$root/html");
    my $port = $ENV{TEST_NGINX_NODE_B_PORT};
    my $user = $> == 0 ? 'user root;' : '';

    open my $out, '>', "$root/conf/nginx.conf" or die "$root: $!";
    print $out <<"_EOC_";
$RLP::LoadModule
$user
worker_processes 1;
daemon off;
master_process off;
error_log $root/logs/error.log info;
pid $root/logs/nginx.pid;

events {
    worker_connections 64;
}

http {
    access_log $root/logs/access.log;
    client_body_temp_path $root/client_body_temp;
    proxy_temp_path $root/proxy_temp;
    fastcgi_temp_path $root/fastcgi_temp;
    uwsgi_temp_path $root/uwsgi_temp;
    scgi_temp_path $root/scgi_temp;

    ratelimit_policy_db "$ENV{TEST_NGINX_PG_CONNINFO}" connect_timeout=1s;
    ratelimit_policy_zone zone=ratelimit_b:8m;
    ratelimit_policy_cache_ttl 60s negative=60s;

    server {
        listen 127.0.0.1:$port;

        location = /v2/session/rate-limit {
            ratelimit_policy_api;
        }
    }
}
_EOC_
    close $out;

    my $nginx = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        setpgrp(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>>', "$root/logs/stderr.log";
        { no warnings 'exec';
          exec 'timeout', '-s', 'KILL', '300', $nginx, '-p', "$root/",
               '-c', "$root/conf/nginx.conf", '-e', "$root/logs/error.log"; }
        POSIX::_exit(127);
    }
    %B = (pid => $pid, root => $root, port => $port);

    RLPHelpers::wait_until(10, sub {
        IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                              Proto => 'tcp')
    }) or die "node B did not listen on $port (see $root/logs)\n";
    wait_log("$root/logs/error.log", $Listening, 5);
    return;
}

sub node_b_stop {
    my $pid = $B{pid} or return;
    kill 'TERM', -$pid;
    my $ok = RLPHelpers::wait_until(5, sub {
        waitpid($pid, POSIX::WNOHANG()) == $pid
    });
    if (!$ok) {
        kill 'KILL', -$pid;
        waitpid($pid, 0);
    }
    delete $B{pid};
    return;
}


# --- holding notifications back ------------------------------------------

# The module's idle LISTEN backends (this node's, and node B's when it
# runs), stopped with SIGSTOP: the notifications of what commits meanwhile
# wait in the server's queue, and come in commit order once they are
# continued.  Every hold is released in the same block (and, should the
# file die, by RLP's END, which continues whatever pg_kill() stopped).
our @Held;

sub hold_notifications {
    my @pids;
    # not while one is answering its keepalive (every 2 s, for a moment)
    RLPHelpers::wait_until(5, sub {
        @pids = grep { /^\d+$/ } split /\s+/, psql(<<'_SQL_');
SELECT pid FROM pg_stat_activity
 WHERE application_name = 'nginx ratelimit_policy'
   AND query IN ('LISTEN ratelimit_policy', 'SELECT 1')
   AND state = 'idle';
_SQL_
        return scalar @pids;
    }) or die "no idle LISTEN backend to hold\n";
    pg_kill('STOP', \@pids);
    push @Held, @pids;
    return;
}

sub release_notifications {
    pg_kill('CONT', \@Held) if @Held;
    @Held = ();
    return;
}

# @steps (code refs) with the notifications held back, released even when
# a step dies
sub while_held {
    my @steps = @_;
    hold_notifications();
    my $ok = eval { $_->() for @steps; 1 };
    my $err = $@;
    release_notifications();
    die $err unless $ok;
    return;
}


# --- a psql session that stays connected ---------------------------------

sub session_open {
    my ($in, $out, $err) = ('', '', '');
    my $h = IPC::Run::start(
        ["$ENV{TEST_NGINX_PG_BIN}/psql", '-X', '-q', '-A', '-t',
         '-d', $ENV{TEST_NGINX_PG_CONNINFO}],
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
        Time::HiRes::sleep(0.01);
    }
    (my $o = ${ $s->{out} }) =~ s/\Q$mark\E\n?//;
    return $o;
}

sub session_close {
    my $s = shift;
    ${ $s->{in} } .= "\\q\n";
    eval { $s->{h}->finish; 1 } or $s->{h}->kill_kill;
    return;
}


# --- restoring what blocks change ----------------------------------------

sub restore {
    if ($Dirty) {
        RLPHelpers::restore_schema();
        psql("DELETE FROM ratelimit.policies WHERE slug LIKE 'rlp_%';");
        my $seed = "$RLP::Root/sql/seed.sql";
        open my $in, '<', $seed or die "$seed: $!";
        psql(do { local $/; <$in> });
        close $in;
        $Dirty = 0;
    }
    reset_fixtures();
}

END {
    node_b_stop();
    # the catalogue, the view and the fixtures as a file finds them
    eval { RLPHelpers::pg_ensure_up(); restore(); 1 }
        or warn "WARNING: could not restore the catalogue: $@";
}

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value(http_config => $Http)
        unless defined $block->http_config;
    $block->set_value(config => $Api) unless defined $block->config;
    my $init = $block->init // '';
    $block->set_value(init => "main::restore();\n$init");
});

restore();

plan tests => RLPDoc::count_tests(blocks());

no_shuffle();
run_tests();

__DATA__

=== TEST 1: psql changes an instance's policy: GET shows it within one second
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
main::change("UPDATE ratelimit.instances SET policy_slug = 'strict'"
             . " WHERE instance_id = 'FREE00000003'");
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0)



=== TEST 2: control: the same change without NOTIFY stays invisible (cache_ttl 60s)
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
main::change_silently("UPDATE ratelimit.instances SET policy_slug = 'strict'"
                      . " WHERE instance_id = 'FREE00000003';");
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0)



=== TEST 3: psql revokes the plan: the paid policy is no longer effective, stored_policy shows it
--- init
main::settle();
main::prime(\&main::get_a, $main::Paid1, 'business');
main::change("UPDATE ratelimit.accounts"
             . " SET plan_active_until = now() - interval '1 day'"
             . " WHERE account_id = 1002");
--- request eval
"GET $main::Paid1"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0, stored => 'business')



=== TEST 4: psql grants a plan: paid policies become available
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
main::change("UPDATE ratelimit.accounts"
             . " SET plan_active_until = now() + interval '1 day'"
             . " WHERE account_id = 1001");
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 1)



=== TEST 5: psql renews a lapsed plan: the stored paid policy is effective again
--- init
main::settle();
main::prime(\&main::get_a, $main::Laps1, 'standard_policy');
main::change("UPDATE ratelimit.accounts"
             . " SET plan_active_until = now() + interval '1 day'"
             . " WHERE account_id = 1003");
--- request eval
"GET $main::Laps1"
--- response_body eval
RLPDoc::doc(current => 'high_throughput', plan => 1)



=== TEST 6: psql rotates the token: the old one is refused, the new one works
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
main::change("UPDATE ratelimit.accounts SET access_token_sha256 ="
             . " sha256(convert_to('rotated-token-1001', 'UTF8'))"
             . " WHERE account_id = 1001");
--- request eval
["GET $main::Free3",
 "GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=rotated-token-1001"]
--- error_code eval
[401, 200]
--- response_body eval
[RLPDoc::error_re('invalid_token'), RLPDoc::doc(current => 'standard_policy', plan => 0)]



=== TEST 7: psql deletes the instance: 404
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
main::change("DELETE FROM ratelimit.instances WHERE instance_id = 'FREE00000003'");
--- request eval
"GET $main::Free3"
--- error_code: 404
--- response_body eval
RLPDoc::error_re('instance_not_found')



=== TEST 8: psql moves the instance to another account: the old token is refused
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
main::change("UPDATE ratelimit.instances SET account_id = 1004"
             . " WHERE instance_id = 'FREE00000003'");
--- request eval
["GET $main::Free3",
 "GET /v2/session/rate-limit?instance_id=FREE00000003&access_token=other-token-1004"]
--- error_code eval
[401, 200]
--- response_body eval
[RLPDoc::error_re('invalid_token'), RLPDoc::doc(current => 'standard_policy', plan => 0)]



=== TEST 9: psql changes a policy of the catalogue: the document shows it
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
$main::Dirty = 1;
main::change("UPDATE ratelimit.policies SET name = 'Strict (new)',"
             . " send_message_per_minute = 9, group_daily_cap = 7"
             . " WHERE slug = 'strict'");
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0, edit => sub {
    for (@_) {
        next unless $_->{slug} eq 'strict';
        $_->{name} = 'Strict (new)';
        $_->{limits}[0] = 9;
        $_->{limits}[5] = 7;
    }
    return @_;
})



=== TEST 10: psql adds a policy to the catalogue: it is listed in its place
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
$main::Dirty = 1;
main::change("INSERT INTO ratelimit.policies (id, slug, name, description,"
             . " is_free, sort_order, send_message_per_minute)"
             . " VALUES (200, 'rlp_extra', 'Extra', 'Added by psql.',"
             . " true, 15, 3)");
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0, edit => sub {
    my @p = @_;
    splice @p, 1, 0, { id => 200, slug => 'rlp_extra', name => 'Extra',
                       description => 'Added by psql.', is_free => 1,
                       limits => [3, (undef) x 7] };
    return @p;
})



=== TEST 11: two nodes: a PATCH on this node is visible on node B within one second
--- init
main::node_b_start();
main::settle();
main::prime(\&main::get_b, $main::Free3, 'standard_policy');
--- request eval
["PATCH $main::Free3&policy_slug=strict", "GET /nodeb$main::Free3"]
--- wait: 0.9
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated'),
 RLPDoc::doc(current => 'strict', plan => 0)]



=== TEST 12: two nodes: a psql change is visible on both within one second
--- init
main::node_b_start();
main::settle();
main::prime(\&main::get_a, $main::Paid1, 'business');
main::prime(\&main::get_b, $main::Paid1, 'business');
main::change("UPDATE ratelimit.instances SET policy_slug = 'high_throughput'"
             . " WHERE instance_id = 'PAID00000001'");
--- request eval
["GET $main::Paid1", "GET /nodeb$main::Paid1"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'high_throughput', plan => 1),
 RLPDoc::doc(current => 'high_throughput', plan => 1)]



=== TEST 13: two nodes, control: node B caches (without NOTIFY it keeps the old answer)
--- init
main::node_b_start();
main::settle();
main::prime(\&main::get_b, $main::Paid1, 'business');
main::change_silently("UPDATE ratelimit.instances SET policy_slug = 'unlimited'"
                      . " WHERE instance_id = 'PAID00000001';");
--- request eval
"GET /nodeb$main::Paid1"
--- response_body eval
RLPDoc::doc(current => 'business', plan => 1)



=== TEST 14: two nodes: a plan revoked by psql is seen by node B
--- init
main::node_b_start();
main::settle();
main::prime(\&main::get_b, $main::Paid1, 'business');
main::change("UPDATE ratelimit.accounts"
             . " SET plan_active_until = now() - interval '1 day'"
             . " WHERE account_id = 1002");
--- request eval
"GET /nodeb$main::Paid1"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0, stored => 'business')



=== TEST 15: PostgreSQL restarted (-m fast) while listening: a change right after is picked up
--- init
main::node_b_stop();
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
pg_restart('fast');
psql("UPDATE ratelimit.instances SET policy_slug = 'strict'"
     . " WHERE instance_id = 'FREE00000003'");
main::picked_up(3);
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0)
--- grep_error_log eval: qr/ratelimit_policy: (?:listening on "ratelimit_policy"|stopped listening, reconnecting)/
--- grep_error_log_out
ratelimit_policy: listening on "ratelimit_policy"
ratelimit_policy: stopped listening, reconnecting
ratelimit_policy: listening on "ratelimit_policy"



=== TEST 16: PostgreSQL restarted (-m immediate) while listening: a change right after is picked up
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
pg_restart('immediate');
psql("UPDATE ratelimit.instances SET policy_slug = 'strict'"
     . " WHERE instance_id = 'FREE00000003'");
main::picked_up(3);
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0)
--- grep_error_log eval: qr/ratelimit_policy: (?:listening on "ratelimit_policy"|stopped listening, reconnecting)/
--- grep_error_log_out
ratelimit_policy: listening on "ratelimit_policy"
ratelimit_policy: stopped listening, reconnecting
ratelimit_policy: listening on "ratelimit_policy"



=== TEST 17: the listener's backend terminated: it reconnects and a change right after is picked up
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
     . " WHERE application_name = 'nginx ratelimit_policy'"
     . " AND query IN ('LISTEN ratelimit_policy', 'SELECT 1')");
psql("UPDATE ratelimit.instances SET policy_slug = 'strict'"
     . " WHERE instance_id = 'FREE00000003'");
main::picked_up(3);
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0)
--- grep_error_log eval: qr/ratelimit_policy: (?:listening on "ratelimit_policy"|stopped listening, reconnecting)/
--- grep_error_log_out
ratelimit_policy: listening on "ratelimit_policy"
ratelimit_policy: stopped listening, reconnecting
ratelimit_policy: listening on "ratelimit_policy"



=== TEST 18: a change made while the node could not listen is picked up once it can
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
my $s = main::session_open();
# new connections hang (the postmaster is stopped), this session works
pg_kill('STOP');
my $ok = eval {
    main::session_do($s, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        . " WHERE application_name = 'nginx ratelimit_policy'"
        . " AND query IN ('LISTEN ratelimit_policy', 'SELECT 1');");
    main::wait_log(main::a_log(), qr/stopped listening/, 5);
    main::session_do($s, "UPDATE ratelimit.instances SET policy_slug = 'strict'"
                         . " WHERE instance_id = 'FREE00000003';");
    # the node has no listener for a while: nothing tells it
    Time::HiRes::sleep(1.5);
    1;
};
my $err = $@;
pg_kill('CONT');
main::session_close($s);
die $err unless $ok;
main::picked_up(5);
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0)
--- grep_error_log eval: qr/ratelimit_policy: (?:listening on "ratelimit_policy"|stopped listening, reconnecting)/
--- grep_error_log_out
ratelimit_policy: listening on "ratelimit_policy"
ratelimit_policy: stopped listening, reconnecting
ratelimit_policy: listening on "ratelimit_policy"



=== TEST 19: an invalidation during a lookup in flight: the old row read by that lookup is not cached
--- init
$main::Dirty = 1;
RLPHelpers::slow_instance('FREE00000003', 1.0);
main::settle();
# 0.4 s into the first GET's 1 s lookup, psql changes the policy
system("(sleep 0.4; $ENV{TEST_NGINX_PG_BIN}/psql -X -q -d"
       . " '$ENV{TEST_NGINX_PG_CONNINFO}' -c \"UPDATE ratelimit.instances"
       . " SET policy_slug = 'strict' WHERE instance_id = 'FREE00000003';"
       . " DELETE FROM rlp_test.slow_ids\") > /dev/null 2>&1 &") == 0
    or die "cannot start psql";
--- request eval
["GET $main::Free3", "GET $main::Free3"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'standard_policy', plan => 0),
 RLPDoc::doc(current => 'strict', plan => 0)]



=== TEST 20: NOTIFY "*" while the catalogue is being loaded: the request gets the reloaded catalogue
--- http_config
    # the new connection's statements are prepared behind the 1 s lock:
    # its connect timeout must outlast the lock, even on a busy machine
    ratelimit_policy_db "$TEST_NGINX_PG_CONNINFO" connect_timeout=10s;
    ratelimit_policy_zone zone=ratelimit:8m;
    ratelimit_policy_cache_ttl 60s negative=60s;
--- init
main::settle();
# the catalogue query of the first request waits for this lock (1 s)
system("$ENV{TEST_NGINX_PG_BIN}/psql -X -q -d '$ENV{TEST_NGINX_PG_CONNINFO}'"
       . " -c \"BEGIN; LOCK TABLE ratelimit.policies IN ACCESS EXCLUSIVE MODE;"
       . " SELECT 'rlp_catalogue_lock', pg_sleep(1.0); COMMIT;\""
       . " > /dev/null 2>&1 &") == 0
    or die "cannot start psql";
RLPHelpers::wait_until(5, sub {
    psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE"
         . " '%rlp_catalogue_lock%' AND state = 'active'"
         . " AND pid <> pg_backend_pid()") =~ /^1/ })
    or die "the locking session did not start\n";
# 0.4 s into that wait, a catalogue change is announced
system("(sleep 0.4; $ENV{TEST_NGINX_PG_BIN}/psql -X -q -d"
       . " '$ENV{TEST_NGINX_PG_CONNINFO}' -c \"NOTIFY ratelimit_policy, '*'\")"
       . " > /dev/null 2>&1 &") == 0
    or die "cannot start psql";
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0)
--- no_error_log
gave up waiting



=== TEST 21: the echo of this node's PATCH keeps the entry: no lookup for the next PATCH, GET or enforced request
--- config eval: $main::ApiSend
--- init
main::counted();
main::patch_three();
# the three notifications have come back meanwhile
Time::HiRes::sleep(0.5);
--- request eval
["GET $main::Free3",
 "GET /send?instance_id=FREE00000003&access_token=free-token-1001"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0), "upstream\n"]
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=0 catalogues=0



=== TEST 21b: three echoes held back until the last PATCH stored its result: all three are taken as echoes, no lookup
--- config eval: $main::ApiSend
--- init
main::counted();
# the first echo comes after the third PATCH's result was stored: one
# record per entry that forgot the earlier PATCHes would invalidate
main::while_held(\&main::patch_three);
Time::HiRes::sleep(0.5);
--- request eval
["GET $main::Free3",
 "GET /send?instance_id=FREE00000003&access_token=free-token-1001"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'strict', plan => 0), "upstream\n"]
--- db_check
SELECT rlp_test.module_queries();
--- db_check_out
lookups=0 catalogues=0



=== TEST 21c: echoes held back, then psql sets the policy back after the PATCHes: seen within one second
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
main::while_held(\&main::patch_three,
    sub { psql("UPDATE ratelimit.instances SET policy_slug ="
               . " 'standard_policy' WHERE instance_id = 'FREE00000003';") });
Time::HiRes::sleep(0.9);
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0)



=== TEST 22: psql revokes the plan, committed just before the PATCH's change (which waits for its lock): seen
--- init
main::settle();
main::prime(\&main::get_a, $main::Paid1, 'business');
# the revocation holds the account's row lock for 0.5 s: the FOR SHARE of
# set_instance_policy() waits for it, so it commits (and notifies) first
system("$ENV{TEST_NGINX_PG_BIN}/psql -X -q -d '$ENV{TEST_NGINX_PG_CONNINFO}'"
       . " -c \"BEGIN; UPDATE ratelimit.accounts"
       . " SET plan_active_until = now() - interval '1 day'"
       . " WHERE account_id = 1002;"
       . " SELECT 'rlp_revoke_lock', pg_sleep(0.5); COMMIT;\""
       . " > /dev/null 2>&1 &") == 0
    or die "cannot start psql";
RLPHelpers::wait_until(5, sub {
    psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE"
         . " '%rlp_revoke_lock%' AND state = 'active'"
         . " AND pid <> pg_backend_pid()") =~ /^1/ })
    or die "the revoking session did not start\n";
my $t0 = Time::HiRes::time();
main::patch_a("$main::Paid1&policy_slug=strict", 'strict');
my $waited = Time::HiRes::time() - $t0;
Test::More::note(sprintf("the PATCH took %.2fs", $waited));
Time::HiRes::sleep(0.9);
--- request eval
"GET $main::Paid1"
--- response_body eval
RLPDoc::doc(current => 'strict', plan => 0)



=== TEST 23: psql revokes the plan right after a PATCH: seen within one second
--- init
main::settle();
main::prime(\&main::get_a, $main::Paid1, 'business');
main::patch_a("$main::Paid1&policy_slug=high_throughput", 'high_throughput');
main::change("UPDATE ratelimit.accounts"
             . " SET plan_active_until = now() - interval '1 day'"
             . " WHERE account_id = 1002");
--- request eval
"GET $main::Paid1"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0,
            stored => 'high_throughput')



=== TEST 24: psql sets the policy back right after a PATCH: seen within one second
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
my $s = main::session_open();
main::patch_a("$main::Free3&policy_slug=strict", 'strict');
# from a session already open: within milliseconds of the PATCH's answer
main::session_do($s, "UPDATE ratelimit.instances SET policy_slug ="
                     . " 'standard_policy' WHERE instance_id = 'FREE00000003';");
main::session_close($s);
Time::HiRes::sleep(0.9);
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 0)



=== TEST 25: two nodes: node B's PATCH right after this node's PATCH reaches this node
--- init
main::node_b_start();
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
main::prime(\&main::get_b, $main::Free3, 'standard_policy');
main::patch_a("$main::Free3&policy_slug=strict", 'strict');
main::patch_b("$main::Free3&policy_slug=standard_policy", 'standard_policy');
Time::HiRes::sleep(0.9);
--- request eval
["GET $main::Free3", "GET /nodeb$main::Free3"]
--- error_code eval
[200, 200]
--- response_body eval
[RLPDoc::doc(current => 'standard_policy', plan => 0),
 RLPDoc::doc(current => 'standard_policy', plan => 0)]



=== TEST 26: a PATCH that changes nothing (no notification of its own) waits for a plan granted by psql: seen
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
# the grant holds account 1001's row lock for 0.5 s; the PATCH, which sets
# the policy the instance already has, waits for it: the grant's
# notification comes while the PATCH is in flight, and none of its own
system("$ENV{TEST_NGINX_PG_BIN}/psql -X -q -d '$ENV{TEST_NGINX_PG_CONNINFO}'"
       . " -c \"BEGIN; UPDATE ratelimit.accounts"
       . " SET plan_active_until = now() + interval '1 day'"
       . " WHERE account_id = 1001;"
       . " SELECT 'rlp_grant_lock', pg_sleep(0.5); COMMIT;\""
       . " > /dev/null 2>&1 &") == 0
    or die "cannot start psql";
RLPHelpers::wait_until(5, sub {
    psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE"
         . " '%rlp_grant_lock%' AND state = 'active'"
         . " AND pid <> pg_backend_pid()") =~ /^1/ })
    or die "the granting session did not start\n";
main::patch_a("$main::Free3&policy_slug=standard_policy", 'standard_policy');
Time::HiRes::sleep(0.9);
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 1)



=== TEST 27: a PATCH that changes nothing, then psql grants a plan right after: seen within one second
--- init
main::settle();
main::prime(\&main::get_a, $main::Free3, 'standard_policy');
main::patch_a("$main::Free3&policy_slug=standard_policy", 'standard_policy');
main::change("UPDATE ratelimit.accounts"
             . " SET plan_active_until = now() + interval '1 day'"
             . " WHERE account_id = 1001");
--- request eval
"GET $main::Free3"
--- response_body eval
RLPDoc::doc(current => 'standard_policy', plan => 1)
