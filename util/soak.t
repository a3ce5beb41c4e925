# The soak test (util/soak runs it through util/test, which provides the
# throwaway PostgreSQL).  Not in t/: it takes SOAK_SECONDS (default 600).
#
# One nginx (master, two workers, the module) in front of an upstream (a
# second server of the same nginx that counts what it receives), 10,000
# instances over 100 accounts, and wrk sending a mix for the whole time:
# 70% enforced requests (send_message) proxied to the upstream, 25% GET and
# 5% PATCH of the API.  Meanwhile PostgreSQL is restarted twice (-m fast at
# 20%, -m immediate at 50%) and nginx reloaded twice (35%, 70%).
#
# Checked at the end:
#   - no worker crashed ("exited on signal" never in the error log), no
#     [alert] or [crit];
#   - no 5xx but 503/504, and those only in the windows around the
#     PostgreSQL restarts (from the stop until the service answers again,
#     plus a few seconds);
#   - worker RSS and zone usage flat: the last samples within 20% (RSS)
#     and 10% (zone) of those taken once the 10,000 instances were cached;
#   - the daily counts in ratelimit.daily_usage equal what the upstream
#     received, to the request.

use strict;
use warnings;

use lib 't/lib';
use RLP ();
use RLPHelpers ();
use File::Path ();
use File::Spec ();
use File::Temp ();
use IO::Socket::INET ();
use POSIX ();
use Test::More;
use Time::HiRes ();

my $Secs = $ENV{SOAK_SECONDS} || 600;
my $N = 10000;
my $Dir = File::Temp::tempdir('rlp-soak-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $Port = RLPHelpers::free_port();
my $UpPort = RLPHelpers::free_port();
my $Nginx = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';

sub now { Time::HiRes::time() }

diag("soak: $Secs s, $N instances, nginx on $Port, files in $Dir");

# --- data --------------------------------------------------------------------

RLP::psql(<<"_SQL_");
DELETE FROM ratelimit.daily_usage WHERE instance_id LIKE 'SOAK%';
DELETE FROM ratelimit.accounts WHERE account_id BETWEEN 2000 AND 2099;
INSERT INTO ratelimit.accounts (account_id, access_token_sha256, plan_active_until)
SELECT 2000 + a, sha256(convert_to('soak-token-' || a, 'UTF8')),
       now() + interval '1 year'
  FROM generate_series(0, 99) a;
INSERT INTO ratelimit.instances (instance_id, account_id, policy_slug)
SELECT 'SOAK' || lpad(i::text, 8, '0'), 2000 + i % 100,
       CASE WHEN i % 10 < 6 THEN 'high_throughput'
            WHEN i % 10 < 8 THEN 'business'
            WHEN i % 10 < 9 THEN 'unlimited'
            ELSE 'standard_policy' END
  FROM generate_series(1, $N) i;
_SQL_

# --- nginx -------------------------------------------------------------------

File::Path::make_path("$Dir/conf", "$Dir/logs");
my $user = $> == 0 ? 'user root;' : '';
open my $out, '>', "$Dir/conf/nginx.conf" or die $!;
print $out <<"_EOC_";
$RLP::LoadModule
$user
master_process on;
worker_processes 2;
daemon off;
pid logs/nginx.pid;
error_log logs/error.log notice;
worker_rlimit_nofile 4096;
events { worker_connections 2048; }
http {
    client_body_temp_path $Dir/client_body_temp;
    proxy_temp_path $Dir/proxy_temp;
    fastcgi_temp_path $Dir/fastcgi_temp;
    uwsgi_temp_path $Dir/uwsgi_temp;
    scgi_temp_path $Dir/scgi_temp;
    log_format soak '\$msec \$status \$request_method \$uri';
    log_format up '\$arg_instance_id';
    ratelimit_policy_db "$ENV{TEST_NGINX_PG_CONNINFO}" pool=4;
    ratelimit_policy_zone zone=soak:32m;

    upstream engine {
        server 127.0.0.1:$UpPort;
        keepalive 32;
    }

    server {
        listen 127.0.0.1:$Port;
        access_log logs/all.log soak;
        location = /v2/session/rate-limit {
            ratelimit_policy_api;
        }
        location /send/ {
            ratelimit_policy_enforce send_message;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://engine/;
        }
        location = /metrics {
            access_log off;
            ratelimit_policy_metrics;
        }
    }

    server {
        listen 127.0.0.1:$UpPort;
        keepalive_requests 1000000;
        location / {
            access_log logs/upstream.log up;
            return 200 "ok\\n";
        }
    }
}
_EOC_
close $out;

my $nginx = fork() // die "fork: $!";
if ($nginx == 0) {
    open STDOUT, '>', '/dev/null';
    open STDERR, '>>', "$Dir/logs/stderr.log";
    { no warnings 'exec'; exec $Nginx, '-p', "$Dir/", '-c', 'conf/nginx.conf'; }
    POSIX::_exit(127);
}
ok(RLPHelpers::wait_until(10, sub {
    IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $Port)
}), 'nginx started') or BAIL_OUT('nginx did not start');

sub metric {
    my ($m, $name) = @_;
    return $m =~ /^nginx_ratelimit_policy_$name (\S+)$/m ? $1 : -1;
}

sub scrape {
    local $ENV{TEST_NGINX_SERVER_PORT} = $Port;
    return RLPHelpers::http_get('/metrics')->{body} // '';
}

sub workers {
    my @w;
    opendir my $dh, '/proc' or return;
    for my $p (grep { /^\d+$/ } readdir $dh) {
        open my $in, '<', "/proc/$p/stat" or next;
        my $st = <$in> // '';
        close $in;
        push @w, $p if $st =~ /^\d+ \(nginx\) \S+ (\d+)/ && $1 == $nginx;
    }
    return @w;
}

sub rss_kb {
    my $kb = 0;
    for my $p (@_) {
        open my $in, '<', "/proc/$p/status" or next;
        while (<$in>) { $kb += $1 if /^VmRSS:\s+(\d+)/ }
        close $in;
    }
    return $kb;
}

# --- load --------------------------------------------------------------------

open my $lua, '>', "$Dir/mix.lua" or die $!;
print $lua <<"_LUA_";
local n = $N
local counter = 0
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
    counter = counter + 1
    local i = math.random(1, n)
    local id = string.format("SOAK%08d", i)
    local q = "?instance_id=" .. id .. "&access_token=soak-token-" .. (i % 100)
    local r = math.random(100)
    if r <= 70 then
        return wrk.format("GET", "/send/m" .. q)
    elseif r <= 95 then
        return wrk.format("GET", "/v2/session/rate-limit" .. q)
    else
        local slug = (counter % 2 == 0) and "high_throughput" or "business"
        return wrk.format("PATCH", "/v2/session/rate-limit" .. q
                                   .. "&policy_slug=" .. slug)
    end
end
delay = function() return 4 end
_LUA_
close $lua;

my $t0 = now();
my $wrk = fork() // die "fork: $!";
if ($wrk == 0) {
    open STDOUT, '>', "$Dir/wrk.out";
    open STDERR, '>&', \*STDOUT;
    { no warnings 'exec';
      exec 'wrk', '-t2', '-c24', "-d${Secs}s", '--timeout', '10s', '-s',
           "$Dir/mix.lua", "http://127.0.0.1:$Port/"; }
    POSIX::_exit(127);
}

my @events = ([0.20, 'pg_restart', 'fast'], [0.35, 'reload'],
              [0.50, 'pg_restart', 'immediate'], [0.70, 'reload']);
my (@windows, @samples, @reloads);
my $next_sample = $t0 + 5;

while (waitpid($wrk, POSIX::WNOHANG()) == 0) {
    my $t = now();
    if (@events && $t - $t0 >= $events[0][0] * $Secs) {
        my $e = shift @events;
        if ($e->[1] eq 'pg_restart') {
            my $start = now();
            RLP::pg_restart($e->[2]);
            # until a query of the module works again
            local $ENV{TEST_NGINX_SERVER_PORT} = $Port;
            RLPHelpers::wait_until(30, sub {
                RLPHelpers::http_get('/v2/session/rate-limit?instance_id=SOAK00000001'
                                     . '&access_token=soak-token-1')->{status} == 200
            });
            push @windows, [$start, now(), "restart -m $e->[2]"];
            diag(sprintf('soak: %5.1fs PostgreSQL restart -m %s, serving again'
                         . ' after %.2fs', $start - $t0, $e->[2], now() - $start));
        } else {
            kill 'HUP', $nginx;
            push @reloads, now();
            diag(sprintf('soak: %5.1fs nginx reload', now() - $t0));
        }
    }
    if ($t >= $next_sample) {
        my $m = scrape();
        push @samples, [$t - $t0, rss_kb(workers()), metric($m, 'zone_used_bytes'),
                        metric($m, 'zone_entries'), scalar(workers())];
        $next_sample += 10;
    }
    Time::HiRes::sleep(0.05);
}
my $t_end = now();
diag("soak: wrk finished after " . sprintf('%.0f', $t_end - $t0) . " s");

# --- results -----------------------------------------------------------------

open my $w, '<', "$Dir/wrk.out" or die $!;
my $wrk_out = do { local $/; <$w> };
close $w;
my ($total) = $wrk_out =~ /(\d+) requests in/;
diag("soak: wrk: $_") for grep { /requests in|Requests\/sec|Non-2xx|Socket errors|Latency/ }
                             split /\n/, $wrk_out;

# the daily counts are written behind: within a second under a daily cap,
# within 10 s without one (90% of the instances here are on "unlimited")
my $received;
my $counted;
RLPHelpers::wait_until(20, sub {
    open my $in, '<', "$Dir/logs/upstream.log" or return 0;
    $received = 0;
    $received++ while <$in>;
    close $in;
    $counted = RLP::psql("SELECT coalesce(sum(count), 0) FROM ratelimit.daily_usage"
                         . " WHERE instance_id LIKE 'SOAK%' AND class = 'send_message'"
                         . " AND day = (now() AT TIME ZONE 'UTC')::date");
    $counted =~ s/\s+//g;
    $counted == $received;
});
diag("soak: the upstream received $received, ratelimit.daily_usage holds $counted");
is($counted, $received, 'daily counts in the database == requests the upstream received');

# statuses, and 5xx outside the restart windows
my (%status, @outside, $n5xx);
open my $all, '<', "$Dir/logs/all.log" or die $!;
while (<$all>) {
    my ($t, $st) = split;
    $status{$st}++;
    next unless $st >= 500;
    $n5xx++;
    my $in = grep { $t >= $_->[0] - 0.5 && $t <= $_->[1] + 5 } @windows;
    push @outside, $_ if !$in || ($st != 503 && $st != 504);
}
close $all;
diag('soak: statuses ' . join(' ', map { "$_=$status{$_}" } sort keys %status));
is(scalar(@outside), 0, "no 5xx outside the PostgreSQL restart windows ("
                        . ($n5xx // 0) . " 5xx inside)")
    or diag(@outside[0 .. 9]);

open my $el, '<', "$Dir/logs/error.log" or die $!;
my $errlog = do { local $/; <$el> };
close $el;
my $crashes = () = $errlog =~ /exited on signal/g;
my $alerts = () = $errlog =~ /\[(?:alert|crit|emerg)\]/g;
is($crashes, 0, 'no worker exited on a signal');
is($alerts, 0, 'no [alert], [crit] or [emerg]');

# flat: RSS and zone from once everything is cached (after the last reload
# for RSS: the workers are new) to the end
diag(sprintf('soak: %5.0fs workers %d RSS %6d kB zone used %9d B entries %d', @$_[0, 4, 1, 2, 3]))
    for @samples;
my $settle = ($reloads[-1] // $t0) - $t0 + ($Secs >= 300 ? 30 : 5);
my @after = grep { $_->[0] >= $settle } @samples;
if (@after >= 2) {
    ok($after[-1][1] <= $after[0][1] * 1.2,
       sprintf('worker RSS flat after the last reload: %d kB at %.0fs,'
               . ' %d kB at %.0fs', $after[0][1], $after[0][0],
               $after[-1][1], $after[-1][0]));
} else {
    fail('worker RSS: too few samples after the last reload');
}
my @zone = grep { $_->[0] >= 0.3 * $Secs } @samples;
ok(@zone && $zone[-1][2] <= $zone[0][2] * 1.1,
   sprintf('zone usage flat: %d B -> %d B', $zone[0][2], $zone[-1][2]));
ok($total && $total > 0, "wrk sent $total requests");

kill 'QUIT', $nginx;
RLPHelpers::wait_until(30, sub { waitpid($nginx, POSIX::WNOHANG()) == $nginx });

RLP::psql(<<'_SQL_');
DELETE FROM ratelimit.daily_usage WHERE instance_id LIKE 'SOAK%';
DELETE FROM ratelimit.accounts WHERE account_id BETWEEN 2000 AND 2099;
_SQL_

done_testing();
