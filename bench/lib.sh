# bench/lib.sh: what bench/run and bench/profile share (sourced, not run):
# the throwaway PostgreSQL with the bench data, the nginx configuration,
# small helpers.  The caller sets root, T (its temporary directory),
# DURATION and POOL, and defines its own cleanup trap.

PG_BIN=/usr/lib/postgresql/15/bin
NGINX=/usr/sbin/nginx
DB=rlp_bench
DB_PGB=rlp_bench_pgb
E_LO=1;     E_HI=10000       # enforcement, cached GET
P_LO=10001; P_HI=20000       # PATCH
U_LO=30001; U_HI=100000      # uncached GET, the canary's misses
N_INSTANCES=100000

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "${0##*/}: $*"; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

free_port() {
    perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1",
                                      LocalPort => 0, Listen => 1)
            or die "no free port: $!\n";
        print $s->sockport, "\n";'
}

# the postmaster and its children
pg_procs() {
    local pm=$1 f st
    echo "$pm"
    for f in /proc/[0-9]*/stat; do
        read -r st 2>/dev/null < "$f" || continue
        st=${st##*) }
        set -- $st
        [ "${2:-}" = "$pm" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
    return 0
}

PGDATA_=
PG_PORT=

pg_cont() {
    local pm
    [ -n "$PGDATA_" ] && [ -f "$PGDATA_/postmaster.pid" ] || return 0
    pm=$(head -n 1 "$PGDATA_/postmaster.pid")
    kill -CONT $(pg_procs "$pm") 2>/dev/null || true
}

pg_stop_signal() {
    local pm
    pm=$(head -n 1 "$PGDATA_/postmaster.pid")
    kill -STOP $(pg_procs "$pm")
}

# pg_shutdown: stop the cluster, whatever state it is in
pg_shutdown() {
    local pm
    [ -n "$PGDATA_" ] && [ -f "$PGDATA_/postmaster.pid" ] || return 0
    pg_cont
    pm=$(head -n 1 "$PGDATA_/postmaster.pid")
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_" -m immediate -w -t 20 stop \
        >/dev/null 2>&1 \
        || kill -KILL $(pg_procs "$pm") 2>/dev/null || true
}

psql_() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" \
        -U postgres "$@"
}
psql_val() { psql_ -At "$@"; }

# pg_setup: initdb in $T/pg, start, load the bench data, write the pgbench
# scripts $T/pgb-lookup.sql and $T/pgb-set.sql; sets PG_PORT, DIGEST
pg_setup() {
    mkdir -p "$T/pg"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$T/pg"
    PGDATA_=$T/pg/data

    log "PostgreSQL: initdb"
    as_pg "$PG_BIN/initdb" -D "$PGDATA_" -A trust -U postgres -E UTF8 \
        --locale=C.UTF-8 --no-sync > "$T/initdb.log" 2>&1 \
        || { cat "$T/initdb.log" >&2; die "initdb failed"; }

    cat >> "$PGDATA_/postgresql.conf" <<EOF

# bench/run
listen_addresses = '127.0.0.1'
unix_socket_directories = '$T/pg'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
max_connections = 50
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
include_if_exists = 'port.conf'
EOF

    started=
    for attempt in 1 2 3; do
        PG_PORT=$(free_port)
        echo "port = $PG_PORT" > "$PGDATA_/port.conf"
        if as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_" -l "$T/pg/postgresql.log" -w \
            -t 30 start > /dev/null
        then
            started=1
            break
        fi
    done
    [ -n "$started" ] || { tail -n 20 "$T/pg/postgresql.log" >&2;
                           die "PostgreSQL did not start"; }

    log "PostgreSQL on 127.0.0.1:$PG_PORT: schema, seed, $N_INSTANCES instances"
    psql_ -d postgres -c "CREATE DATABASE $DB"
    psql_ -d "$DB" -c 'CREATE EXTENSION pg_stat_statements'
    psql_ -d "$DB" -f sql/schema.sql > /dev/null
    psql_ -d "$DB" -f sql/seed.sql > /dev/null
    psql_ -d "$DB" > /dev/null <<EOF
BEGIN;
INSERT INTO ratelimit.accounts (account_id, access_token_sha256,
                                plan_active_until)
SELECT a, sha256(convert_to('bench-token-' || a, 'UTF8')),
       now() + interval '1 year'
  FROM generate_series(1, $N_INSTANCES / 10) AS a;
INSERT INTO ratelimit.instances (instance_id, account_id, policy_slug)
SELECT '1' || lpad(n::text, 11, '0'), (n - 1) / 10 + 1, 'unlimited'
  FROM generate_series(1, $N_INSTANCES) AS n;
COMMIT;
VACUUM ANALYZE;
EOF
    psql_ -d postgres -c "CREATE DATABASE $DB_PGB TEMPLATE $DB"

    # the module's own statements, for pgbench
    perl -e '
        local $/; my $c = <STDIN>;
        for my $name (qw(lookup set)) {
            $c =~ /\{\s*"ratelimit_policy_\Q$name\E",\s*((?:"(?:[^"\\]|\\.)*"\s*)+),/
                or die "statement ratelimit_policy_$name not found\n";
            my $lits = $1; my $sql = "";
            $sql .= $1 while $lits =~ /"((?:[^"\\]|\\.)*)"/g;
            $sql =~ s/\\(.)/$1/g;
            open my $f, ">", "$ARGV[0]/$name.sql" or die;
            print $f "$sql\n";
        }' "$T" < src/ngx_http_ratelimit_policy_pg.c \
        || die "cannot take the statements from src/ngx_http_ratelimit_policy_pg.c"

    LOOKUP_SQL=$(cat "$T/lookup.sql")
    SET_SQL=$(cat "$T/set.sql")
    case $LOOKUP_SQL in *'$1'*) ;; *) die "lookup statement: no \$1" ;; esac
    case $LOOKUP_SQL in *'$2'*) ;; *) die "lookup statement: no \$2" ;; esac

    # pgbench: $1 -> :id (text), $2 -> :dg (bytea, the token's digest)
    {
        echo "\\set n random($U_LO, $U_HI)"
        echo "\\set id 100000000000 + :n"
        printf '%s;\n' "$(printf '%s' "$LOOKUP_SQL" \
            | sed -e 's/\$1/:id/g' -e 's/\$2/:dg/g')"
    } > "$T/pgb-lookup.sql"

    # the clients walk the PATCH range together, in bench/ids.lua's order
    # (index j * 7919 mod N), and set the other slug on every pass, as
    # bench/ids.lua does for the module: every call is a real change; :k
    # carries on from round to round (-D k=...)
    {
        echo "\\set k :k + 1"
        echo "\\set j :k * $POOL + :client_id"
        echo "\\set id 100000000000 + $P_LO + mod(:j * 7919, $((P_HI - P_LO + 1)))"
        echo "\\set pass mod(:j / $((P_HI - P_LO + 1)), 2)"
        echo "\\if :pass"
        printf '%s;\n' "$(printf '%s' "$SET_SQL" \
            | sed -e 's/\$1/:id/g' -e 's/\$2/:s1/g')"
        echo "\\else"
        printf '%s;\n' "$(printf '%s' "$SET_SQL" \
            | sed -e 's/\$1/:id/g' -e 's/\$2/:s0/g')"
        echo "\\endif"
    } > "$T/pgb-set.sql"

    DIGEST=$(psql_val -d "$DB" -c \
        "SELECT '\\x' || encode(sha256(convert_to('bench-token-3001', 'UTF8')), 'hex')")
}

# run_pgbench NAME SCRIPT [pgbench args...]: sets PGB_TPS, PGB_TX
run_pgbench() {
    local name=$1 script=$2 out
    shift 2
    out=$T/pgbench-$name.log
    timeout $((DURATION + 30)) "$PG_BIN/pgbench" -n -M prepared -c "$POOL" \
        -j 1 -T "$DURATION" -h 127.0.0.1 -p "$PG_PORT" -U postgres \
        -f "$script" "$@" "${PGB_DB:-$DB_PGB}" > "$out" 2>&1 \
        || { cat "$out" >&2; die "pgbench $name failed"; }
    if grep -q '^number of failed transactions: [1-9]' "$out"; then
        cat "$out" >&2
        die "pgbench $name: failed transactions"
    fi
    PGB_TPS=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' \
              "$out")
    PGB_TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' \
             "$out")
    [ -n "$PGB_TPS" ] && [ -n "$PGB_TX" ] \
        || { cat "$out" >&2; die "pgbench $name: no tps"; }
}

# statements run by the module (database rlp_bench), from pg_stat_statements
stmt_calls() {
    psql_val -d "$DB" -c "SELECT coalesce(sum(calls), 0)::bigint
        FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
       WHERE d.datname = '$DB' AND s.query LIKE '$1'"
}
# ... and the time the server spent executing them, in milliseconds
stmt_ms() {
    psql_val -d "$DB" -c "SELECT round(coalesce(sum(total_exec_time), 0))::bigint
        FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
       WHERE d.datname = '$DB' AND s.query LIKE '$1'"
}
LOOKUP_LIKE='%LEFT JOIN ratelimit.instance_entitlements e%'
SET_LIKE='SELECT ratelimit.set_instance_policy($1, $2)%'
USAGE_LIKE='INSERT INTO ratelimit.daily_usage%'

# nginx_prepare: $T/nginx with a copy of the module; sets PORT, UPORT, BASE
nginx_prepare() {
    mkdir -p "$T/nginx/logs" "$T/nginx/tmp"
    cp "$root/build/ngx_http_ratelimit_policy_module.so" "$T/nginx/"
    PORT=$(free_port)
    UPORT=$(free_port)
    while [ "$UPORT" = "$PORT" ]; do UPORT=$(free_port); done
    BASE=http://127.0.0.1:$PORT
    [ -f "$T/nginx/static.conf" ] \
        || echo "return 200 'static';" > "$T/nginx/static.conf"
}

# nginx_conf TTL [MASTER]: $T/nginx/nginx.conf, cache_ttl TTL; MASTER "off"
# for a single process (valgrind)
nginx_conf() {
    cat > "$T/nginx/nginx.conf" <<EOF
load_module $T/nginx/ngx_http_ratelimit_policy_module.so;

worker_processes 1;
daemon off;
master_process ${2:-on};
pid $T/nginx/nginx.pid;
error_log $T/nginx/logs/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;

    client_body_temp_path $T/nginx/tmp/body;
    proxy_temp_path $T/nginx/tmp/proxy;
    fastcgi_temp_path $T/nginx/tmp/fastcgi;
    uwsgi_temp_path $T/nginx/tmp/uwsgi;
    scgi_temp_path $T/nginx/tmp/scgi;

    ratelimit_policy_db "host=127.0.0.1 port=$PG_PORT dbname=$DB user=postgres"
                        pool=$POOL queue=256 query_timeout=3s
                        connect_timeout=3s;
    ratelimit_policy_zone zone=rlp:256m;
    ratelimit_policy_cache_ttl $1 negative=$1;

    limit_req_zone \$arg_instance_id zone=lr:32m rate=1000000r/s;

    upstream backend {
        server 127.0.0.1:$UPORT;
        keepalive 64;
        keepalive_requests 1000000;
    }

    proxy_http_version 1.1;
    proxy_set_header Connection "";

    # the stand-in engine
    server {
        listen 127.0.0.1:$UPORT;
        location / {
            return 200 "ok\n";
        }
    }

    server {
        listen 127.0.0.1:$PORT reuseport;

        location = /v2/session/rate-limit {
            ratelimit_policy_api;
        }

        # the API document as static bytes, on a path of the same length
        location = /v2/session/static-doc {
            default_type application/json;
            add_header Cache-Control no-store;
            include $T/nginx/static.conf;
        }

        location /plain/ {
            proxy_pass http://backend;
        }

        location /enforce/ {
            ratelimit_policy_enforce send_message;
            proxy_pass http://backend;
        }

        location /limitreq/ {
            limit_req zone=lr burst=1000 nodelay;
            proxy_pass http://backend;
        }

        location = /canary {
            return 200 "ok\n";
        }

        location = /metrics {
            ratelimit_policy_metrics;
        }
    }
}
EOF
}

# nginx_start TTL
nginx_start() {
    local i
    nginx_conf "$1"
    "$NGINX" -p "$T/nginx" -c "$T/nginx/nginx.conf" -t -q \
        2> "$T/nginx-t.log" || { cat "$T/nginx-t.log" >&2;
                                 die "nginx -t failed"; }
    "$NGINX" -p "$T/nginx" -c "$T/nginx/nginx.conf" \
        >> "$T/nginx/logs/stderr.log" 2>&1 &
    NGINX_PID=$!
    for i in $(seq 1 100); do
        curl -sf -o /dev/null "$BASE/canary" && break
        kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited"
        sleep 0.1
    done
    curl -sf -o /dev/null "$BASE/canary" || die "nginx does not answer"
    api_ok 1 || die "the API does not answer 200 for instance 1"
}

nginx_reload() {
    local old i
    old=$(pgrep -P "$NGINX_PID" | head -n 1)
    kill -HUP "$NGINX_PID"
    for i in $(seq 1 100); do
        kill -0 "$old" 2>/dev/null || break
        sleep 0.1
    done
    api_ok 1 || die "the API does not answer after a reload"
}

nginx_stop() {
    local i
    [ -n "$NGINX_PID" ] || return 0
    kill -QUIT "$NGINX_PID" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$NGINX_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -KILL "$NGINX_PID" 2>/dev/null || true
        # its worker, should the master be gone first
        pkill -KILL -P "$NGINX_PID" 2>/dev/null || true
    fi
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=
}

inst() { printf '1%011d' "$1"; }
tok() { echo "bench-token-$(( ($1 - 1) / 10 + 1 ))"; }

# api_ok N: GET of instance N answers 200 (retried for up to 15 s)
api_ok() {
    local i
    for i in $(seq 1 75); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' \
              "$BASE/v2/session/rate-limit?instance_id=$(inst "$1")&access_token=$(tok "$1")")" \
          = 200 ] && return 0
        sleep 0.2
    done
    return 1
}

# metric NAME [LABELS]: the value of one sample of the metrics endpoint
metric() {
    local n=nginx_ratelimit_policy_$1
    [ -n "${2:-}" ] && n="$n{$2}"
    curl -sf "$BASE/metrics" | awk -v n="$n" \
        '$1 == n { v = $2 } END { print (v == "" ? 0 : v) }'
}

# run_wrk NAME THREADS CONNS SECONDS METHOD PATH LO HI [OFFSET [SLUGS]]
#   sets W_RPS, W_REQ, W_P99 (µs), W_STATUS (non-2xx/3xx answers),
#   W_SOCK (socket errors); fails on socket errors.  W_SCRIPT=slices.lua
#   in the environment: that script instead of ids.lua (its arguments
#   then), the output in $T/wrk-NAME.log
run_wrk() {
    local name=$1 t=$2 c=$3 d=$4 out line
    shift 4
    out=$T/wrk-$name.log
    timeout $((d + 30)) wrk -t"$t" -c"$c" -d"${d}s" --timeout 10s \
        -s "$root/bench/${W_SCRIPT:-ids.lua}" "$BASE" -- "$@" > "$out" 2>&1 \
        || { cat "$out" >&2; die "wrk $name failed"; }
    line=$(grep '^BENCH ' "$out") || { cat "$out" >&2; die "wrk $name: no summary"; }
    W_REQ=$(sed 's/.* requests=\([0-9]*\).*/\1/' <<< "$line")
    local dur=$(sed 's/.* duration_us=\([0-9]*\).*/\1/' <<< "$line")
    W_STATUS=$(sed 's/.* status=\([0-9]*\).*/\1/' <<< "$line")
    W_P99=$(sed 's/.* p99_us=\([0-9]*\).*/\1/' <<< "$line")
    W_SOCK=$(awk '{ for (i = 1; i <= NF; i++) {
                        split($i, kv, "=");
                        if (kv[1] ~ /^(connect|read|write|timeout)$/) s += kv[2] }
                    print s + 0 }' <<< "$line")
    W_RPS=$(awk -v r="$W_REQ" -v d="$dur" 'BEGIN { printf "%.1f", r * 1e6 / d }')
}

# a throughput run that must answer 200 only
wrk_ok() {
    local name=$1
    run_wrk "$@"
    [ "$W_SOCK" = 0 ] || { cat "$T/wrk-$name.log" >&2;
                           die "wrk $name: socket errors"; }
    [ "$W_STATUS" = 0 ] || { cat "$T/wrk-$name.log" >&2;
                             tail -n 5 "$T/nginx/logs/error.log" >&2;
                             die "wrk $name: $W_STATUS answers not 2xx"; }
}

# CPU time, in clock ticks, for the figures' notes: where a request's time
# goes.  proc_ticks PID...: user + system of live processes; with "+c"
# first, also of their reaped children (a postmaster's exited backends).
proc_ticks() {
    local kids=0 p st t=0
    [ "${1:-}" = "+c" ] && { kids=1; shift; }
    for p in "$@"; do
        read -r st 2>/dev/null < "/proc/$p/stat" || continue
        st=${st##*) }
        set -- $st
        t=$((t + ${12} + ${13}))
        [ "$kids" = 1 ] && t=$((t + ${14} + ${15}))
    done
    echo "$t"
}

cpu_pg() {
    local pm
    pm=$(head -n 1 "$PGDATA_/postmaster.pid")
    echo $(( $(proc_ticks +c "$pm") + $(proc_ticks $(pg_procs "$pm" | tail -n +2)) ))
}

cpu_nginx() {
    [ -n "${NGINX_PID:-}" ] || { echo 0; return; }
    echo $(( $(proc_ticks +c "$NGINX_PID") \
             + $(proc_ticks $(pgrep -P "$NGINX_PID")) ))
}

# the children this shell waited for (wrk, pgbench, through timeout)
cpu_children() {
    proc_ticks +c $$
}

# cpu_begin / cpu_end: sets CPU_NGX, CPU_PG, CPU_CLI (ticks) for what ran
# in between
# in between (the client's window holds nothing but the client)
cpu_begin() {
    C0_NGX=$(cpu_nginx); C0_PG=$(cpu_pg); C0_CLI=$(cpu_children)
}
cpu_end() {
    CPU_CLI=$(( $(cpu_children) - C0_CLI ))
    CPU_NGX=$(( $(cpu_nginx) - C0_NGX ))
    CPU_PG=$(( $(cpu_pg) - C0_PG ))
}

# cpu_account KIND REQUESTS: adds the last cpu_begin/cpu_end to $T/cpu.tsv
cpu_account() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$CPU_NGX" "$CPU_PG" "$CPU_CLI" \
        >> "$T/cpu.tsv"
}

# cpu_per_request KIND: "nginx N, postgres N, client N" in microseconds of
# CPU per request (or transaction) over every run of KIND
cpu_per_request() {
    [ -f "$T/cpu.tsv" ] || return 0
    awk -F'\t' -v k="$1" -v hz="$(getconf CLK_TCK)" '
        $1 == k { n += $2; a += $3; b += $4; c += $5 }
        END { if (n) printf "nginx %.1f, postgres %.1f, client %.1f",
                             a * 1e6 / hz / n, b * 1e6 / hz / n,
                             c * 1e6 / hz / n }' "$T/cpu.tsv" 2>/dev/null
}

# What else ran on the machine: the CPU time of all processes at nice 0
# (user + system) less that of this run's own (this shell and what it
# waited for, nginx, PostgreSQL), the time of niced processes (which
# mostly fill idle time), and the time the hypervisor gave to others
# (steal), as shares of all CPUs.  noise_begin; ...; noise_end prints
# "N% competing, N% niced, N% stolen".
stat_ticks() {
    awk '$1 == "cpu" { print $2 + $4, $3, $9; exit }' /proc/stat
}
mine_ticks() {
    echo $(( $(proc_ticks +c $$) + $(cpu_pg) + $(cpu_nginx) ))
}
noise_begin() {
    N0_STAT=$(stat_ticks); N0_MINE=$(mine_ticks); N0_T=$(date +%s.%N)
}
noise_end() {
    local st mine t
    mine=$(mine_ticks); st=$(stat_ticks); t=$(date +%s.%N)
    awk -v s0="$N0_STAT" -v s1="$st" -v m=$((mine - N0_MINE)) -v t0="$N0_T" \
        -v t1="$t" -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" '
        BEGIN { split(s0, a, " "); split(s1, b, " ");
                all = (t1 - t0) * hz * n;
                f = (b[1] - a[1] - m) / all * 100;
                printf "%.0f%% competing, %.0f%% niced, %.0f%% stolen\n",
                       f < 0 ? 0 : f, (b[2] - a[2]) / all * 100,
                       (b[3] - a[3]) / all * 100 }'
}
