
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * A non-blocking PostgreSQL client living in an nginx worker.
 *
 * Each worker keeps up to "pool" libpq connections.  They are opened with
 * PQconnectStartParams() / PQconnectPoll() and driven by level-triggered
 * nginx events on the libpq socket; queries are sent with
 * PQsendQueryPrepared() and read with PQconsumeInput() / PQisBusy() /
 * PQgetResult(), never blocking.  Host names are resolved at configuration
 * time and passed as "hostaddr", so libpq does no DNS lookup in a worker.
 * A query that waits for a connection sits in a bounded queue; every query
 * has its own timer covering the wait and the execution.  A timed out
 * query's connection is closed, never reused.
 *
 * In libpq's pipeline mode ("pipeline=" above 1) lookups follow one
 * another on a connection without waiting for the answers, and the
 * lookups sent in one turn of the event loop share one Sync, sent at the
 * end of the turn (a posted event): one write and one read for all of
 * them, one write and one implicit transaction for the server.  A lookup
 * is answered as soon as its own results are in.  When a lookup of such
 * a group fails, the server skips the rest of the group
 * (PGRES_PIPELINE_ABORTED): those lookups wait again, first in line,
 * within their own time.  Other statements run alone, each with its own
 * Sync, and are answered at it, when their transaction has ended.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_pg.h"
#include "ngx_http_ratelimit_policy_metrics.h"


#define NGX_HTTP_RATELIMIT_POLICY_PG_FREE        0
#define NGX_HTTP_RATELIMIT_POLICY_PG_CONNECTING  1
#define NGX_HTTP_RATELIMIT_POLICY_PG_PREPARING   2
#define NGX_HTTP_RATELIMIT_POLICY_PG_IDLE        3
#define NGX_HTTP_RATELIMIT_POLICY_PG_BUSY        4

#define NGX_HTTP_RATELIMIT_POLICY_PG_BACKOFF_MIN  50
#define NGX_HTTP_RATELIMIT_POLICY_PG_BACKOFF_MAX  2000

/* how often the listener proves that its peer is alive */
#define NGX_HTTP_RATELIMIT_POLICY_PG_HEARTBEAT    2000

#define NGX_HTTP_RATELIMIT_POLICY_PG_CHANNEL      "ratelimit_policy"


typedef struct {
    ngx_http_ratelimit_policy_pg_t         *pg;
    PGconn                                 *conn;
    ngx_connection_t                       *c;
    ngx_uint_t                              state;
    ngx_uint_t                              prepared;

    /* the queries sent, in order; more than one only in pipeline mode */
    ngx_queue_t                             inflight;
    ngx_uint_t                              ninflight;

    PGresult                               *result;
    ngx_event_t                             connect_timer;

    /* lookups sent since the last Sync, which the posted event sends */
    ngx_uint_t                              unsynced;
    ngx_event_t                             sync;

    /* Syncs sent whose PGRES_PIPELINE_SYNC is yet to be read */
    ngx_uint_t                              syncs;

    unsigned                                listener:1;

    /* in libpq's pipeline mode, see the top of this file */
    unsigned                                pipeline:1;

    /* a query other than a lookup is in flight: nothing follows it */
    unsigned                                exclusive:1;

    /*
     * the results of the first query in flight, not a lookup, are in:
     * its Sync is next
     */
    unsigned                                results:1;

    /* a query could not be sent: closed at the next event */
    unsigned                                broken:1;
} ngx_http_ratelimit_policy_pg_conn_t;


struct ngx_http_ratelimit_policy_pg_s {
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;
    ngx_log_t                              *log;
    ngx_http_ratelimit_policy_pg_conn_t    *conns;
    ngx_uint_t                              nconns;
    ngx_queue_t                             waiting;
    ngx_uint_t                              nwaiting;
    ngx_msec_t                              backoff;
    ngx_msec_t                              next_connect;
    ngx_uint_t                              failed;

    /* LISTEN ratelimit_policy, in one worker */
    ngx_http_ratelimit_policy_pg_conn_t     listener;
    ngx_event_t                             listen_timer;
    ngx_msec_t                              listen_backoff;
    ngx_http_ratelimit_policy_pg_notify_pt  notify;
    void                                   *notify_data;
    ngx_uint_t                              listening;
    ngx_uint_t                              listened;
    ngx_uint_t                              notifications;
};


typedef struct {
    const char                             *name;
    const char                             *sql;
    int                                     nparams;
    Oid                                     types[2];
} ngx_http_ratelimit_policy_stmt_t;


static ngx_int_t ngx_http_ratelimit_policy_pg_connect(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_pg_connect_poll(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_pg_connect_failed(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_pg_connect_timeout(ngx_event_t *ev);
static ngx_int_t ngx_http_ratelimit_policy_pg_watch(
    ngx_http_ratelimit_policy_pg_conn_t *pc, ngx_uint_t rd, ngx_uint_t wr);
static void ngx_http_ratelimit_policy_pg_event_handler(ngx_event_t *ev);
static void ngx_http_ratelimit_policy_pg_read(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_pg_sync(ngx_event_t *ev);
static ngx_uint_t ngx_http_ratelimit_policy_pg_fatal(PGresult *res);
static void ngx_http_ratelimit_policy_pg_again(
    ngx_http_ratelimit_policy_pg_conn_t *pc, ngx_queue_t **after);
static void ngx_http_ratelimit_policy_pg_settle(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_pg_read_pipeline(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static ngx_http_ratelimit_policy_pg_conn_t *ngx_http_ratelimit_policy_pg_pick(
    ngx_http_ratelimit_policy_pg_t *pg, ngx_http_ratelimit_policy_pg_query_t *q,
    ngx_uint_t follow);
static void ngx_http_ratelimit_policy_pg_arm(ngx_http_ratelimit_policy_pg_t *pg,
    ngx_http_ratelimit_policy_pg_query_t *q);
static void ngx_http_ratelimit_policy_pg_flush(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_pg_prepare_next(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_pg_prepared(
    ngx_http_ratelimit_policy_pg_conn_t *pc, PGresult *res);
static ngx_int_t ngx_http_ratelimit_policy_pg_run(
    ngx_http_ratelimit_policy_pg_conn_t *pc,
    ngx_http_ratelimit_policy_pg_query_t *q);
static void ngx_http_ratelimit_policy_pg_done(
    ngx_http_ratelimit_policy_pg_conn_t *pc, PGresult *res);
static void ngx_http_ratelimit_policy_pg_broken(
    ngx_http_ratelimit_policy_pg_conn_t *pc, const char *what);
static void ngx_http_ratelimit_policy_pg_close(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_pg_complete(
    ngx_http_ratelimit_policy_pg_query_t *q, ngx_uint_t rc, PGresult *res);
static void ngx_http_ratelimit_policy_pg_query_timeout(ngx_event_t *ev);
static void ngx_http_ratelimit_policy_pg_dispatch(
    ngx_http_ratelimit_policy_pg_t *pg);
static void ngx_http_ratelimit_policy_pg_fail_waiting(
    ngx_http_ratelimit_policy_pg_t *pg, ngx_uint_t rc);
static ngx_uint_t ngx_http_ratelimit_policy_pg_count(
    ngx_http_ratelimit_policy_pg_t *pg, ngx_uint_t state);
static void ngx_http_ratelimit_policy_pg_notice(void *arg,
    const char *message);
static void ngx_http_ratelimit_policy_pg_notifies(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_listen_start(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_listen_done(
    ngx_http_ratelimit_policy_pg_conn_t *pc, PGresult *res);
static void ngx_http_ratelimit_policy_listen_failed(
    ngx_http_ratelimit_policy_pg_conn_t *pc);
static void ngx_http_ratelimit_policy_listen_timer(ngx_event_t *ev);
static ngx_int_t ngx_http_ratelimit_policy_pg_identity(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf);
static ngx_int_t ngx_http_ratelimit_policy_pg_add_param(ngx_conf_t *cf,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf, const char *key,
    const char *value);


#define BYTEAOID  17
#define TEXTOID   25


static ngx_http_ratelimit_policy_stmt_t
    ngx_http_ratelimit_policy_stmts[NGX_HTTP_RATELIMIT_POLICY_NSTMTS] =
{
    /*
     * one row always: the instance's entitlement, or NULLs and whether
     * the token belongs to any account (to tell 404 from 401); then the
     * UTC day (days since 1970-01-01) and the instance's daily usage of
     * each class on that day, all nodes together
     */
    { "ratelimit_policy_lookup",
      "SELECT e.account_id, e.access_token_sha256, e.has_active_plan,"
      " e.policy_slug,"
      " CASE WHEN e.instance_id IS NULL THEN EXISTS (SELECT 1 FROM"
      " ratelimit.instance_entitlements t WHERE t.access_token_sha256 = $2)"
      " END,"
      " u.day, u.send_message, u.grp, u.chk"
      " FROM (SELECT 1) AS one LEFT JOIN ratelimit.instance_entitlements e"
      " ON e.instance_id = $1"
      " CROSS JOIN (SELECT"
      " (now() AT TIME ZONE 'UTC')::date - date '1970-01-01' AS day,"
      " coalesce(sum(d.count) FILTER (WHERE d.class = 'send_message'), 0)"
      " AS send_message,"
      " coalesce(sum(d.count) FILTER (WHERE d.class = 'group'), 0) AS grp,"
      " coalesce(sum(d.count) FILTER (WHERE d.class = 'check'), 0) AS chk"
      " FROM ratelimit.daily_usage d WHERE d.instance_id = $1"
      " AND d.day = (now() AT TIME ZONE 'UTC')::date) AS u",
      2, { TEXTOID, BYTEAOID } },

    { "ratelimit_policy_catalog",
      "SELECT id, slug, name, description, is_free, sort_order,"
      " send_message_per_minute, send_message_daily_cap,"
      " account_protection_seconds, concurrent_limit,"
      " group_req_per_minute, group_daily_cap,"
      " check_req_per_minute, check_daily_cap"
      " FROM ratelimit.policies ORDER BY sort_order, id",
      0, { 0, 0 } },

    { "ratelimit_policy_set",
      "SELECT ratelimit.set_instance_policy($1, $2)",
      2, { TEXTOID, TEXTOID } },

    /*
     * the write-behind of daily usage: one row per instance, day and
     * class, added to what all nodes wrote; the new totals come back.
     * The rows are taken in key order, so that two nodes writing the same
     * rows lock them in the same order.  The parameter types come from
     * the casts.
     */
    { "ratelimit_policy_usage",
      "INSERT INTO ratelimit.daily_usage AS u (instance_id, day, class,"
      " count)"
      " SELECT t.i, date '1970-01-01' + t.d, t.c, t.n"
      " FROM unnest($1::text[], $2::int[], $3::text[], $4::bigint[])"
      " AS t (i, d, c, n) ORDER BY t.i, t.c"
      " ON CONFLICT (instance_id, day, class)"
      " DO UPDATE SET count = u.count + excluded.count"
      " RETURNING u.instance_id, u.day - date '1970-01-01', u.class,"
      " u.count",
      0, { 0, 0 } },
};


ngx_int_t
ngx_http_ratelimit_policy_pg_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf)
{
    ngx_uint_t                       i;
    ngx_http_ratelimit_policy_pg_t  *pg;

    pg = ngx_pcalloc(cycle->pool, sizeof(ngx_http_ratelimit_policy_pg_t));
    if (pg == NULL) {
        return NGX_ERROR;
    }

    pg->conns = ngx_pcalloc(cycle->pool,
                            rpmcf->pool_size
                            * sizeof(ngx_http_ratelimit_policy_pg_conn_t));
    if (pg->conns == NULL) {
        return NGX_ERROR;
    }

    pg->rpmcf = rpmcf;
    pg->log = cycle->log;
    pg->nconns = rpmcf->pool_size;
    ngx_queue_init(&pg->waiting);

    for (i = 0; i < pg->nconns; i++) {
        pg->conns[i].pg = pg;
        ngx_queue_init(&pg->conns[i].inflight);
        pg->conns[i].connect_timer.handler =
                                  ngx_http_ratelimit_policy_pg_connect_timeout;
        pg->conns[i].connect_timer.data = &pg->conns[i];
        pg->conns[i].connect_timer.log = cycle->log;
        pg->conns[i].connect_timer.cancelable = 1;
        pg->conns[i].sync.handler = ngx_http_ratelimit_policy_pg_sync;
        pg->conns[i].sync.data = &pg->conns[i];
        pg->conns[i].sync.log = cycle->log;
    }

    rpmcf->pg = pg;

    return ngx_http_ratelimit_policy_pg_identity(cycle, rpmcf);
}


/*
 * Without "user" and "passfile", libpq looks the process's user up
 * (getpwuid()) at every connection, which may mean a network lookup on
 * hosts with LDAP or SSSD.  Do it once, when the worker starts, as the
 * user the worker runs as.
 */

static ngx_int_t
ngx_http_ratelimit_policy_pg_identity(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf)
{
    u_char          *file;
    size_t           len;
    ngx_uint_t       i, has_user, has_passfile;
    const char     **kw, **val, **nkw, **nval;
    struct passwd   *pw;

    kw = rpmcf->pg_keywords->elts;

    has_user = 0;
    has_passfile = 0;

    for (i = 0; kw[i]; i++) {
        if (ngx_strcmp(kw[i], "user") == 0) {
            has_user = 1;

        } else if (ngx_strcmp(kw[i], "passfile") == 0) {
            has_passfile = 1;
        }
    }

    if (has_user && has_passfile) {
        return NGX_OK;
    }

    pw = getpwuid(geteuid());
    if (pw == NULL) {
        /* libpq will say what is missing when it connects */
        return NGX_OK;
    }

    nkw = ngx_pcalloc(cycle->pool, (i + 3) * sizeof(char *));
    nval = ngx_pcalloc(cycle->pool, (i + 3) * sizeof(char *));
    if (nkw == NULL || nval == NULL) {
        return NGX_ERROR;
    }

    val = rpmcf->pg_values->elts;

    ngx_memcpy(nkw, kw, i * sizeof(char *));
    ngx_memcpy(nval, val, i * sizeof(char *));

    if (!has_user && pw->pw_name) {
        len = ngx_strlen(pw->pw_name) + 1;

        file = ngx_pnalloc(cycle->pool, len);
        if (file == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(file, pw->pw_name, len);

        nkw[i] = "user";
        nval[i] = (const char *) file;
        i++;
    }

    if (!has_passfile && pw->pw_dir) {
        len = ngx_strlen(pw->pw_dir) + sizeof("/.pgpass");

        file = ngx_pnalloc(cycle->pool, len);
        if (file == NULL) {
            return NGX_ERROR;
        }

        ngx_sprintf(file, "%s/.pgpass%Z", pw->pw_dir);

        nkw[i] = "passfile";
        nval[i] = (const char *) file;
    }

    rpmcf->pg_keywords->elts = nkw;
    rpmcf->pg_values->elts = nval;

    return NGX_OK;
}


void
ngx_http_ratelimit_policy_pg_exit_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf)
{
    ngx_uint_t                       i;
    ngx_http_ratelimit_policy_pg_t  *pg;

    pg = rpmcf->pg;

    if (pg == NULL) {
        return;
    }

    for (i = 0; i < pg->nconns; i++) {
        if (pg->conns[i].state != NGX_HTTP_RATELIMIT_POLICY_PG_FREE) {
            ngx_http_ratelimit_policy_pg_close(&pg->conns[i]);
        }
    }

    if (pg->listen_timer.timer_set) {
        ngx_del_timer(&pg->listen_timer);
    }

    if (pg->listener.state != NGX_HTTP_RATELIMIT_POLICY_PG_FREE) {
        ngx_http_ratelimit_policy_pg_close(&pg->listener);
    }
}


ngx_int_t
ngx_http_ratelimit_policy_pg_send(ngx_http_ratelimit_policy_pg_t *pg,
    ngx_http_ratelimit_policy_pg_query_t *q)
{
    ngx_uint_t                            i, connecting;
    ngx_http_ratelimit_policy_pg_conn_t  *pc;

    q->result = NULL;
    q->conn = NULL;
    q->queued = 0;
    q->backend_pid = 0;

    if (pg == NULL) {
        q->rc = NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE;
        return NGX_DECLINED;
    }

    q->pg = pg;
    q->started = ngx_http_ratelimit_policy_metrics_clock();

    /* an idle connection; for a lookup, one running lookups, if none waits */

    pc = ngx_http_ratelimit_policy_pg_pick(pg, q,
                                           ngx_queue_empty(&pg->waiting));

    if (pc != NULL) {
        ngx_http_ratelimit_policy_pg_arm(pg, q);

        if (ngx_http_ratelimit_policy_pg_run(pc, q) == NGX_OK) {
            return NGX_OK;
        }

        /* never call the handler from within the send */

        ngx_del_timer(&q->timer);
        q->rc = NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE;
        ngx_http_ratelimit_policy_metrics_query(q->stmt, q->rc, 0);
        return NGX_DECLINED;
    }

    if (pg->nwaiting >= pg->rpmcf->queue_size) {
        ngx_log_error(NGX_LOG_WARN, q->log, 0,
                      "ratelimit_policy: database queue is full (%ui)",
                      pg->nwaiting);
        q->rc = NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE;
        ngx_http_ratelimit_policy_metrics_query(q->stmt, q->rc, 0);
        return NGX_DECLINED;
    }

    connecting = ngx_http_ratelimit_policy_pg_count(pg,
                                      NGX_HTTP_RATELIMIT_POLICY_PG_CONNECTING)
                 + ngx_http_ratelimit_policy_pg_count(pg,
                                      NGX_HTTP_RATELIMIT_POLICY_PG_PREPARING);

    if (connecting <= pg->nwaiting
        && !ngx_exiting
        && (ngx_msec_int_t) (ngx_current_msec - pg->next_connect) >= 0)
    {
        for (i = 0; i < pg->nconns; i++) {
            pc = &pg->conns[i];

            if (pc->state == NGX_HTTP_RATELIMIT_POLICY_PG_FREE) {
                if (ngx_http_ratelimit_policy_pg_connect(pc) == NGX_OK) {
                    connecting++;
                }

                break;
            }
        }
    }

    if (connecting == 0
        && ngx_http_ratelimit_policy_pg_count(pg,
                                      NGX_HTTP_RATELIMIT_POLICY_PG_BUSY) == 0)
    {
        /* nothing will ever free up: fail now, do not wait for a timer */
        q->rc = NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE;
        ngx_http_ratelimit_policy_metrics_query(q->stmt, q->rc, 0);
        return NGX_DECLINED;
    }

    ngx_http_ratelimit_policy_pg_arm(pg, q);

    ngx_queue_insert_tail(&pg->waiting, &q->queue);
    pg->nwaiting++;
    q->queued = 1;

    ngx_http_ratelimit_policy_metrics_waiting(pg->nwaiting);

    return NGX_OK;
}


/*
 * The connection for a query: an idle one; failing that, with "follow",
 * for a lookup, the connection in pipeline mode that runs the fewest
 * lookups, fewer than "pipeline=", and nothing else.  Other statements
 * (a PATCH that may wait for a lock, the usage write-behind) run alone,
 * so that no lookup waits behind them.
 */

static ngx_http_ratelimit_policy_pg_conn_t *
ngx_http_ratelimit_policy_pg_pick(ngx_http_ratelimit_policy_pg_t *pg,
    ngx_http_ratelimit_policy_pg_query_t *q, ngx_uint_t follow)
{
    ngx_uint_t                            i;
    ngx_http_ratelimit_policy_pg_conn_t  *pc, *best;

    for (i = 0; i < pg->nconns; i++) {
        if (pg->conns[i].state == NGX_HTTP_RATELIMIT_POLICY_PG_IDLE) {
            return &pg->conns[i];
        }
    }

    if (!follow || q->stmt != NGX_HTTP_RATELIMIT_POLICY_STMT_LOOKUP) {
        return NULL;
    }

    best = NULL;

    for (i = 0; i < pg->nconns; i++) {
        pc = &pg->conns[i];

        if (pc->state == NGX_HTTP_RATELIMIT_POLICY_PG_BUSY
            && pc->pipeline
            && !pc->exclusive
            && !pc->broken
            && pc->ninflight < pg->rpmcf->pipeline
            && (best == NULL || pc->ninflight < best->ninflight))
        {
            best = pc;
        }
    }

    return best;
}


/* the query's time, from now: waiting for a connection, then running */

static void
ngx_http_ratelimit_policy_pg_arm(ngx_http_ratelimit_policy_pg_t *pg,
    ngx_http_ratelimit_policy_pg_query_t *q)
{
    ngx_memzero(&q->timer, sizeof(ngx_event_t));
    q->timer.handler = ngx_http_ratelimit_policy_pg_query_timeout;
    q->timer.data = q;
    q->timer.log = q->log;
    ngx_add_timer(&q->timer, pg->rpmcf->query_timeout);
}


ngx_uint_t
ngx_http_ratelimit_policy_pg_available(ngx_http_ratelimit_policy_pg_t *pg)
{
    if (pg == NULL) {
        return 0;
    }

    if (!pg->failed) {
        return 1;
    }

    if (ngx_http_ratelimit_policy_pg_count(pg,
                                      NGX_HTTP_RATELIMIT_POLICY_PG_IDLE)
        || ngx_http_ratelimit_policy_pg_count(pg,
                                      NGX_HTTP_RATELIMIT_POLICY_PG_BUSY))
    {
        return 1;
    }

    return 0;
}


time_t
ngx_http_ratelimit_policy_pg_retry_after(ngx_http_ratelimit_policy_pg_t *pg)
{
    ngx_msec_int_t  left;

    if (pg == NULL) {
        return 1;
    }

    left = (ngx_msec_int_t) (pg->next_connect - ngx_current_msec);

    if (left <= 1000) {
        return 1;
    }

    return (time_t) ((left + 999) / 1000);
}


static ngx_uint_t
ngx_http_ratelimit_policy_pg_count(ngx_http_ratelimit_policy_pg_t *pg,
    ngx_uint_t state)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < pg->nconns; i++) {
        if (pg->conns[i].state == state) {
            n++;
        }
    }

    return n;
}


static ngx_int_t
ngx_http_ratelimit_policy_pg_connect(ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    ngx_socket_t                     fd;
    ngx_connection_t                *c;
    ngx_http_ratelimit_policy_pg_t  *pg;

    pg = pc->pg;

    pc->conn = PQconnectStartParams(pg->rpmcf->pg_keywords->elts,
                                    pg->rpmcf->pg_values->elts, 0);

    if (pc->conn == NULL) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "ratelimit_policy: PQconnectStartParams() failed");
        goto failed;
    }

    if (PQstatus(pc->conn) == CONNECTION_BAD) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "ratelimit_policy: could not connect to the database: %s",
                      PQerrorMessage(pc->conn));
        goto failed;
    }

    if (PQsetnonblocking(pc->conn, 1) == -1) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "ratelimit_policy: PQsetnonblocking() failed: %s",
                      PQerrorMessage(pc->conn));
        goto failed;
    }

    PQsetNoticeProcessor(pc->conn, ngx_http_ratelimit_policy_pg_notice, pg);

    fd = PQsocket(pc->conn);

    if (fd == (ngx_socket_t) -1) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "ratelimit_policy: libpq gave no socket: %s",
                      PQerrorMessage(pc->conn));
        goto failed;
    }

    c = ngx_get_connection(fd, pg->log);
    if (c == NULL) {
        goto failed;
    }

    c->data = pc;
    c->read->handler = ngx_http_ratelimit_policy_pg_event_handler;
    c->write->handler = ngx_http_ratelimit_policy_pg_event_handler;
    c->read->log = pg->log;
    c->write->log = pg->log;

    pc->c = c;
    pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_CONNECTING;

    ngx_add_timer(&pc->connect_timer, pg->rpmcf->connect_timeout);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pg->log, 0,
                   "ratelimit_policy: connecting, fd:%d", fd);

    /* as libpq says: behave as if PQconnectPoll() returned WRITING */

    if (ngx_http_ratelimit_policy_pg_watch(pc, 0, 1) != NGX_OK) {
        ngx_http_ratelimit_policy_pg_connect_failed(pc);
        return NGX_ERROR;
    }

    return NGX_OK;

failed:

    pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_CONNECTING;
    ngx_http_ratelimit_policy_pg_connect_failed(pc);

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_ratelimit_policy_pg_watch(ngx_http_ratelimit_policy_pg_conn_t *pc,
    ngx_uint_t rd, ngx_uint_t wr)
{
    ngx_connection_t  *c;

    c = pc->c;

    /* level-triggered: a result larger than one read never stalls */

    if (rd && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!rd && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (wr && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!wr && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_ratelimit_policy_pg_event_handler(ngx_event_t *ev)
{
    ngx_connection_t                     *c;
    ngx_http_ratelimit_policy_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    switch (pc->state) {

    case NGX_HTTP_RATELIMIT_POLICY_PG_CONNECTING:
        ngx_http_ratelimit_policy_pg_connect_poll(pc);
        return;

    case NGX_HTTP_RATELIMIT_POLICY_PG_PREPARING:
    case NGX_HTTP_RATELIMIT_POLICY_PG_BUSY:

        if (pc->broken) {
            ngx_http_ratelimit_policy_pg_broken(pc, "sending");
            return;
        }

        if (ev->write) {
            ngx_http_ratelimit_policy_pg_flush(pc);
            return;
        }

        ngx_http_ratelimit_policy_pg_read(pc);
        return;

    case NGX_HTTP_RATELIMIT_POLICY_PG_IDLE:

        if (ev->write) {
            (void) ngx_http_ratelimit_policy_pg_watch(pc, 1, 0);
            return;
        }

        /* an idle connection only reads notices, or learns it is closed */

        if (!PQconsumeInput(pc->conn)
            || PQstatus(pc->conn) == CONNECTION_BAD)
        {
            ngx_http_ratelimit_policy_pg_broken(pc, "idle connection");
            return;
        }

        ngx_http_ratelimit_policy_pg_notifies(pc);

        return;

    default:
        return;
    }
}


static void
ngx_http_ratelimit_policy_pg_connect_poll(
    ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    ngx_socket_t                     fd;
    ngx_connection_t                *c;
    PostgresPollingStatusType        st;
    ngx_http_ratelimit_policy_pg_t  *pg;

    pg = pc->pg;

    st = PQconnectPoll(pc->conn);

    fd = PQsocket(pc->conn);

    if (fd != pc->c->fd && fd != (ngx_socket_t) -1) {

        /*
         * libpq moved on to another address and closed the old socket,
         * which took it out of epoll: forget the old connection without
         * touching the descriptor
         */

        pc->c->read->active = 0;
        pc->c->write->active = 0;
        pc->c->shared = 1;
        ngx_close_connection(pc->c);

        c = ngx_get_connection(fd, pg->log);
        if (c == NULL) {
            pc->c = NULL;
            ngx_http_ratelimit_policy_pg_connect_failed(pc);
            return;
        }

        c->data = pc;
        c->read->handler = ngx_http_ratelimit_policy_pg_event_handler;
        c->write->handler = ngx_http_ratelimit_policy_pg_event_handler;
        c->read->log = pg->log;
        c->write->log = pg->log;
        pc->c = c;
    }

    switch (st) {

    case PGRES_POLLING_READING:
        if (ngx_http_ratelimit_policy_pg_watch(pc, 1, 0) != NGX_OK) {
            ngx_http_ratelimit_policy_pg_connect_failed(pc);
        }
        return;

    case PGRES_POLLING_WRITING:
        if (ngx_http_ratelimit_policy_pg_watch(pc, 0, 1) != NGX_OK) {
            ngx_http_ratelimit_policy_pg_connect_failed(pc);
        }
        return;

    case PGRES_POLLING_OK:
        break;

    default: /* PGRES_POLLING_FAILED */
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "ratelimit_policy: could not connect to the database: %s",
                      PQerrorMessage(pc->conn));
        ngx_http_ratelimit_policy_pg_connect_failed(pc);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pg->log, 0,
                   "ratelimit_policy: connected, fd:%d", pc->c->fd);

    if (ngx_http_ratelimit_policy_pg_watch(pc, 1, 0) != NGX_OK) {
        ngx_http_ratelimit_policy_pg_connect_failed(pc);
        return;
    }

    if (pc->listener) {
        ngx_http_ratelimit_policy_listen_start(pc);
        return;
    }

    pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_PREPARING;
    pc->prepared = 0;

    ngx_http_ratelimit_policy_pg_prepare_next(pc);
}


static void
ngx_http_ratelimit_policy_pg_prepare_next(
    ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    ngx_http_ratelimit_policy_pg_t    *pg;
    ngx_http_ratelimit_policy_stmt_t  *st;

    pg = pc->pg;

    if (pc->prepared == NGX_HTTP_RATELIMIT_POLICY_NSTMTS) {

        if (pc->connect_timer.timer_set) {
            ngx_del_timer(&pc->connect_timer);
        }

        /* lookups follow one another without waiting for the answers */

        if (pg->rpmcf->pipeline > 1) {
            if (!PQenterPipelineMode(pc->conn)) {
                ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                              "ratelimit_policy: PQenterPipelineMode() "
                              "failed: %s", PQerrorMessage(pc->conn));
                ngx_http_ratelimit_policy_pg_connect_failed(pc);
                return;
            }

            pc->pipeline = 1;
        }

        pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_IDLE;
        pg->failed = 0;
        pg->backoff = 0;

        ngx_http_ratelimit_policy_pg_dispatch(pg);
        return;
    }

    st = &ngx_http_ratelimit_policy_stmts[pc->prepared];

    if (!PQsendPrepare(pc->conn, st->name, st->sql, st->nparams, st->types)) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "ratelimit_policy: PQsendPrepare() failed: %s",
                      PQerrorMessage(pc->conn));
        ngx_http_ratelimit_policy_pg_connect_failed(pc);
        return;
    }

    ngx_http_ratelimit_policy_pg_flush(pc);
}


static void
ngx_http_ratelimit_policy_pg_prepared(ngx_http_ratelimit_policy_pg_conn_t *pc,
    PGresult *res)
{
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        ngx_log_error(NGX_LOG_ERR, pc->pg->log, 0,
                      "ratelimit_policy: could not prepare \"%s\": %s",
                      ngx_http_ratelimit_policy_stmts[pc->prepared].name,
                      res ? PQresultErrorMessage(res)
                          : PQerrorMessage(pc->conn));

        if (res) {
            PQclear(res);
        }

        ngx_http_ratelimit_policy_pg_connect_failed(pc);
        return;
    }

    PQclear(res);

    pc->prepared++;

    ngx_http_ratelimit_policy_pg_prepare_next(pc);
}


static void
ngx_http_ratelimit_policy_pg_connect_timeout(ngx_event_t *ev)
{
    ngx_http_ratelimit_policy_pg_conn_t  *pc;

    pc = ev->data;

    ngx_log_error(NGX_LOG_ERR, pc->pg->log, NGX_ETIMEDOUT,
                  "ratelimit_policy: connecting to the database timed out");

    ngx_http_ratelimit_policy_pg_connect_failed(pc);
}


static void
ngx_http_ratelimit_policy_pg_connect_failed(
    ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    ngx_http_ratelimit_policy_pg_t  *pg;

    if (pc->listener) {
        ngx_http_ratelimit_policy_listen_failed(pc);
        return;
    }

    pg = pc->pg;

    ngx_http_ratelimit_policy_pg_close(pc);

    pg->failed = 1;

    if (pg->backoff == 0) {
        pg->backoff = NGX_HTTP_RATELIMIT_POLICY_PG_BACKOFF_MIN;

    } else {
        pg->backoff = ngx_min(pg->backoff * 2,
                              NGX_HTTP_RATELIMIT_POLICY_PG_BACKOFF_MAX);
    }

    pg->next_connect = ngx_current_msec + pg->backoff;

    /* queries wait only as long as some connection may serve them */

    if (ngx_http_ratelimit_policy_pg_count(pg,
                                       NGX_HTTP_RATELIMIT_POLICY_PG_FREE)
        == pg->nconns)
    {
        ngx_http_ratelimit_policy_pg_fail_waiting(pg,
                                     NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE);
    }
}


static void
ngx_http_ratelimit_policy_pg_flush(ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    int  rc;

    rc = PQflush(pc->conn);

    if (rc == -1) {
        ngx_http_ratelimit_policy_pg_broken(pc, "sending");
        return;
    }

    if (ngx_http_ratelimit_policy_pg_watch(pc, 1, rc == 1) != NGX_OK) {
        ngx_http_ratelimit_policy_pg_broken(pc, "watching");
    }
}


static void
ngx_http_ratelimit_policy_pg_read(ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    PGresult  *res;

    if (!PQconsumeInput(pc->conn)) {
        ngx_http_ratelimit_policy_pg_broken(pc, "reading");
        return;
    }

    ngx_http_ratelimit_policy_pg_notifies(pc);

    if (pc->pipeline) {
        ngx_http_ratelimit_policy_pg_read_pipeline(pc);
        return;
    }

    for ( ;; ) {

        if (PQisBusy(pc->conn)) {
            /* level-triggered: the next read event comes by itself */
            return;
        }

        res = PQgetResult(pc->conn);

        if (res == NULL) {
            break;
        }

        if (pc->result == NULL) {
            pc->result = res;

        } else {
            PQclear(res);
        }
    }

    res = pc->result;
    pc->result = NULL;

    if (pc->state == NGX_HTTP_RATELIMIT_POLICY_PG_PREPARING) {
        ngx_http_ratelimit_policy_pg_prepared(pc, res);
        return;
    }

    if (pc->listener) {
        ngx_http_ratelimit_policy_listen_done(pc, res);
        return;
    }

    ngx_http_ratelimit_policy_pg_done(pc, res);
}


/*
 * In pipeline mode each query in flight yields its results, then a NULL;
 * a Sync yields a PGRES_PIPELINE_SYNC after the last query it follows.  A
 * lookup is answered at its NULL, or waits again if its group was
 * aborted; any other query, alone on the connection, at its Sync.
 */

static void
ngx_http_ratelimit_policy_pg_read_pipeline(
    ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    PGresult                              *res;
    ngx_queue_t                           *after;
    ngx_http_ratelimit_policy_pg_t        *pg;
    ngx_http_ratelimit_policy_pg_query_t  *q;

    pg = pc->pg;
    after = NULL;

    while ((pc->ninflight || pc->syncs)
           && pc->state == NGX_HTTP_RATELIMIT_POLICY_PG_BUSY
           && !pc->broken)
    {
        if (PQisBusy(pc->conn)) {
            /* level-triggered: the next read event comes by itself */
            return;
        }

        res = PQgetResult(pc->conn);

        if (res != NULL && PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);

            if (pc->syncs == 0) {
                ngx_http_ratelimit_policy_pg_broken(pc,
                                                    "pipeline out of step");
                return;
            }

            pc->syncs--;

            if (pc->results) {
                pc->results = 0;

                res = pc->result;
                pc->result = NULL;

                ngx_http_ratelimit_policy_pg_done(pc, res);
                after = NULL;
                continue;
            }

            /* the lookups of an aborted group can go out again */

            ngx_http_ratelimit_policy_pg_settle(pc);
            ngx_http_ratelimit_policy_pg_dispatch(pg);

            /* what waited may be on a connection now */
            after = NULL;
            continue;
        }

        if (pc->results || pc->ninflight == 0) {
            /* only a Sync may come now */

            if (res) {
                PQclear(res);
            }

            ngx_http_ratelimit_policy_pg_broken(pc, "pipeline out of step");
            return;
        }

        if (res != NULL) {
            if (pc->result == NULL) {
                pc->result = res;

            } else {
                PQclear(res);
            }

            continue;
        }

        /* the first query in flight has all its results */

        q = ngx_queue_data(ngx_queue_head(&pc->inflight),
                           ngx_http_ratelimit_policy_pg_query_t, queue);

        if (q->stmt != NGX_HTTP_RATELIMIT_POLICY_STMT_LOOKUP) {
            pc->results = 1;
            continue;
        }

        res = pc->result;
        pc->result = NULL;

        if (ngx_http_ratelimit_policy_pg_fatal(res)) {
            /*
             * the server ends the session (pg_terminate_backend(), a
             * shutdown): this query and those after it are lost with the
             * connection, not sent again
             */
            PQclear(res);
            ngx_http_ratelimit_policy_pg_broken(pc, "the server ended it");
            return;
        }

        if (res && PQresultStatus(res) == PGRES_PIPELINE_ABORTED) {
            PQclear(res);
            ngx_http_ratelimit_policy_pg_again(pc, &after);
            continue;
        }

        ngx_http_ratelimit_policy_pg_done(pc, res);
        after = NULL;
    }
}


static ngx_uint_t
ngx_http_ratelimit_policy_pg_fatal(PGresult *res)
{
    char  *severity;

    if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR) {
        return 0;
    }

    severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);

    return severity != NULL
           && (ngx_strcmp(severity, "FATAL") == 0
               || ngx_strcmp(severity, "PANIC") == 0);
}


/*
 * The first lookup in flight, skipped by the server after an earlier
 * query of its group failed, waits again at the head of the queue (after
 * the others of the group, in order: "after" is the last of them, until
 * a dispatch may have taken it), within its own time.
 */

static void
ngx_http_ratelimit_policy_pg_again(ngx_http_ratelimit_policy_pg_conn_t *pc,
    ngx_queue_t **after)
{
    ngx_queue_t                           *qq;
    ngx_http_ratelimit_policy_pg_t        *pg;
    ngx_http_ratelimit_policy_pg_query_t  *q;

    pg = pc->pg;

    qq = ngx_queue_head(&pc->inflight);
    ngx_queue_remove(qq);
    pc->ninflight--;

    q = ngx_queue_data(qq, ngx_http_ratelimit_policy_pg_query_t, queue);
    q->conn = NULL;
    q->queued = 1;

    if (*after == NULL) {
        ngx_queue_insert_head(&pg->waiting, qq);

    } else {
        ngx_queue_insert_after(*after, qq);
    }

    *after = qq;

    pg->nwaiting++;
    ngx_http_ratelimit_policy_metrics_waiting(pg->nwaiting);

    ngx_log_error(NGX_LOG_INFO, q->log, 0,
                  "ratelimit_policy: lookup skipped after an earlier query "
                  "of its pipeline failed, sent again");
}


/* nothing in flight any more: pooled, if outside of a transaction */

static void
ngx_http_ratelimit_policy_pg_settle(ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    if (pc->ninflight || pc->syncs || pc->unsynced) {
        return;
    }

    if (PQtransactionStatus(pc->conn) == PQTRANS_IDLE) {
        pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_IDLE;

    } else {
        ngx_http_ratelimit_policy_pg_close(pc);
    }
}


/* the Sync after the lookups a connection was sent in this turn */

static void
ngx_http_ratelimit_policy_pg_sync(ngx_event_t *ev)
{
    int                                   rc;
    ngx_http_ratelimit_policy_pg_conn_t  *pc;

    pc = ev->data;

    if (pc->unsynced == 0 || pc->conn == NULL || pc->broken) {
        return;
    }

    pc->unsynced = 0;

    if (!PQpipelineSync(pc->conn)) {
        ngx_http_ratelimit_policy_pg_broken(pc, "sending a Sync");
        return;
    }

    pc->syncs++;

    rc = PQflush(pc->conn);

    if (rc == -1
        || ngx_http_ratelimit_policy_pg_watch(pc, 1, rc == 1) != NGX_OK)
    {
        ngx_http_ratelimit_policy_pg_broken(pc, "sending");
    }
}


static ngx_int_t
ngx_http_ratelimit_policy_pg_run(ngx_http_ratelimit_policy_pg_conn_t *pc,
    ngx_http_ratelimit_policy_pg_query_t *q)
{
    int  rc;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, q->log, 0,
                   "ratelimit_policy: query \"%s\" on fd:%d",
                   ngx_http_ratelimit_policy_stmts[q->stmt].name, pc->c->fd);

    /* before the server can run it, and notify */

    q->backend_pid = PQbackendPID(pc->conn);

    if (q->sending) {
        q->sending(q);
    }

    if (!PQsendQueryPrepared(pc->conn,
                             ngx_http_ratelimit_policy_stmts[q->stmt].name,
                             q->nparams, q->values, q->lengths, q->formats, 0))
    {
        goto failed;
    }

    if (pc->pipeline && q->stmt == NGX_HTTP_RATELIMIT_POLICY_STMT_LOOKUP) {

        /* the Sync follows this turn's lookups, see pg_sync() */

        pc->unsynced++;

        if (!pc->sync.posted) {
            ngx_post_event(&pc->sync, &ngx_posted_events);
        }

    } else {

        /* a Sync of its own: answered when its transaction has ended */

        if (pc->pipeline) {
            if (!PQpipelineSync(pc->conn)) {
                goto failed;
            }

            pc->syncs++;
        }

        rc = PQflush(pc->conn);

        if (rc == -1
            || ngx_http_ratelimit_policy_pg_watch(pc, 1, rc == 1) != NGX_OK)
        {
            goto failed;
        }
    }

    pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_BUSY;

    ngx_queue_insert_tail(&pc->inflight, &q->queue);
    pc->ninflight++;

    if (q->stmt != NGX_HTTP_RATELIMIT_POLICY_STMT_LOOKUP) {
        pc->exclusive = 1;
    }

    q->conn = pc;

    return NGX_OK;

failed:

    /* the caller answers the query */

    ngx_log_error(NGX_LOG_ERR, pc->pg->log, 0,
                  "ratelimit_policy: could not send a query: %s",
                  PQerrorMessage(pc->conn));

    pc->pg->failed = 1;

    if (pc->ninflight) {
        /*
         * the queries in flight on it are answered from the event loop,
         * not from within this call
         */

        pc->broken = 1;
        ngx_post_event(pc->c->read, &ngx_posted_events);
        return NGX_ERROR;
    }

    ngx_http_ratelimit_policy_pg_close(pc);

    return NGX_ERROR;
}


static void
ngx_http_ratelimit_policy_pg_done(ngx_http_ratelimit_policy_pg_conn_t *pc,
    PGresult *res)
{
    ngx_uint_t                             rc;
    ngx_queue_t                           *qq;
    ExecStatusType                         st;
    ngx_http_ratelimit_policy_pg_t        *pg;
    ngx_http_ratelimit_policy_pg_query_t  *q;

    pg = pc->pg;
    q = NULL;

    if (pc->ninflight) {
        qq = ngx_queue_head(&pc->inflight);
        ngx_queue_remove(qq);
        pc->ninflight--;

        q = ngx_queue_data(qq, ngx_http_ratelimit_policy_pg_query_t, queue);
    }

    /* the only query in flight when it is not a lookup */
    pc->exclusive = 0;

    st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        rc = NGX_HTTP_RATELIMIT_POLICY_PG_OK;

    } else {
        rc = NGX_HTTP_RATELIMIT_POLICY_PG_SQL_ERROR;
    }

    ngx_http_ratelimit_policy_pg_settle(pc);

    /*
     * the next waiting query goes out before this one's handler runs (it
     * may render and send a whole response meanwhile), so the server
     * works while the worker does
     */

    ngx_http_ratelimit_policy_pg_dispatch(pg);

    if (q != NULL) {
        q->conn = NULL;
        ngx_http_ratelimit_policy_pg_complete(q, rc, res);

    } else if (res) {
        PQclear(res);
    }

    ngx_http_ratelimit_policy_pg_dispatch(pg);
}


static void
ngx_http_ratelimit_policy_pg_broken(ngx_http_ratelimit_policy_pg_conn_t *pc,
    const char *what)
{
    ngx_uint_t                             level;
    ngx_queue_t                            lost, *qq;
    ngx_http_ratelimit_policy_pg_t        *pg;
    ngx_http_ratelimit_policy_pg_query_t  *q;

    pg = pc->pg;

    if (pc->state == NGX_HTTP_RATELIMIT_POLICY_PG_PREPARING
        || pc->listener)
    {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "ratelimit_policy: database connection%s lost "
                      "(%s): %s", pc->listener ? " of the listener" : "",
                      what, PQerrorMessage(pc->conn));
        ngx_http_ratelimit_policy_pg_connect_failed(pc);
        return;
    }

    level = (pc->state == NGX_HTTP_RATELIMIT_POLICY_PG_IDLE) ? NGX_LOG_WARN
                                                             : NGX_LOG_ERR;

    ngx_log_error(level, pg->log, 0,
                  "ratelimit_policy: database connection lost (%s): %s",
                  what, PQerrorMessage(pc->conn));

    /* the queries in flight on it are lost with it */

    ngx_queue_init(&lost);

    if (!ngx_queue_empty(&pc->inflight)) {
        ngx_queue_add(&lost, &pc->inflight);
    }

    ngx_http_ratelimit_policy_pg_close(pc);

    /* reconnect at once, the next failure will back off */
    pg->failed = 1;

    while (!ngx_queue_empty(&lost)) {
        qq = ngx_queue_head(&lost);
        ngx_queue_remove(qq);

        q = ngx_queue_data(qq, ngx_http_ratelimit_policy_pg_query_t, queue);
        q->conn = NULL;

        ngx_http_ratelimit_policy_pg_complete(q,
                                     NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE,
                                     NULL);
    }

    ngx_http_ratelimit_policy_pg_dispatch(pg);
}


static void
ngx_http_ratelimit_policy_pg_close(ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    if (pc->connect_timer.timer_set) {
        ngx_del_timer(&pc->connect_timer);
    }

    if (pc->sync.posted) {
        ngx_delete_posted_event(&pc->sync);
    }

    if (pc->c) {
        /*
         * libpq owns the descriptor: PQfinish() closes it, which also
         * takes it out of epoll
         */
        pc->c->shared = 1;
        ngx_close_connection(pc->c);
        pc->c = NULL;
    }

    if (pc->result) {
        PQclear(pc->result);
        pc->result = NULL;
    }

    if (pc->conn) {
        PQfinish(pc->conn);
        pc->conn = NULL;
    }

    /* the callers answered or moved the queries in flight */

    ngx_queue_init(&pc->inflight);
    pc->ninflight = 0;
    pc->unsynced = 0;
    pc->syncs = 0;
    pc->pipeline = 0;
    pc->exclusive = 0;
    pc->results = 0;
    pc->broken = 0;

    pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_FREE;
}


static void
ngx_http_ratelimit_policy_pg_complete(ngx_http_ratelimit_policy_pg_query_t *q,
    ngx_uint_t rc, PGresult *res)
{
    char        *sqlstate;
    ngx_uint_t   level, refusal;

    if (q->timer.timer_set) {
        ngx_del_timer(&q->timer);
    }

    refusal = 0;

    if (rc == NGX_HTTP_RATELIMIT_POLICY_PG_SQL_ERROR && res != NULL) {

        /* the refusals of ratelimit.set_instance_policy() are answers */

        sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        refusal = (sqlstate && ngx_strncmp(sqlstate, "RLP", 3) == 0);
        level = refusal ? NGX_LOG_INFO : NGX_LOG_ERR;

        ngx_log_error(level, q->log, 0,
                      "ratelimit_policy: query \"%s\" failed: %s",
                      ngx_http_ratelimit_policy_stmts[q->stmt].name,
                      PQresultErrorMessage(res));

        /* statement_timeout (just below query_timeout) fired: a timeout */

        if (sqlstate && ngx_strcmp(sqlstate, "57014") == 0) {
            rc = NGX_HTTP_RATELIMIT_POLICY_PG_TIMEOUT;
        }
    }

    q->rc = rc;
    q->result = res;

    /* a refusal is an answer, not a database error */
    ngx_http_ratelimit_policy_metrics_query(q->stmt,
                                refusal ? NGX_HTTP_RATELIMIT_POLICY_PG_OK : rc,
                                q->started);

    q->handler(q);

    if (res) {
        PQclear(res);
    }
}


static void
ngx_http_ratelimit_policy_pg_query_timeout(ngx_event_t *ev)
{
    ngx_queue_t                           *qq;
    ngx_http_ratelimit_policy_pg_t        *pg;
    ngx_http_ratelimit_policy_pg_conn_t   *pc;
    ngx_http_ratelimit_policy_pg_query_t  *q, *o;

    q = ev->data;

    if (q->queued) {
        pc = NULL;
        ngx_queue_remove(&q->queue);
        q->queued = 0;

        q->pg->nwaiting--;
        ngx_http_ratelimit_policy_metrics_waiting(q->pg->nwaiting);

        ngx_log_error(NGX_LOG_ERR, q->log, NGX_ETIMEDOUT,
                      "ratelimit_policy: query \"%s\" timed out waiting "
                      "for a database connection",
                      ngx_http_ratelimit_policy_stmts[q->stmt].name);

    } else {
        pc = q->conn;

        ngx_log_error(NGX_LOG_ERR, q->log, NGX_ETIMEDOUT,
                      "ratelimit_policy: query \"%s\" timed out",
                      ngx_http_ratelimit_policy_stmts[q->stmt].name);
    }

    pg = NULL;

    if (pc != NULL) {
        /* the connection is in an unknown state: never reuse it */
        pg = pc->pg;

        ngx_queue_remove(&q->queue);
        q->conn = NULL;

        /*
         * the lookups that followed it wait again, first in line, within
         * their own time
         */

        while (!ngx_queue_empty(&pc->inflight)) {
            qq = ngx_queue_last(&pc->inflight);
            ngx_queue_remove(qq);

            o = ngx_queue_data(qq, ngx_http_ratelimit_policy_pg_query_t,
                               queue);
            o->conn = NULL;
            o->queued = 1;

            ngx_queue_insert_head(&pg->waiting, qq);
            pg->nwaiting++;
        }

        ngx_http_ratelimit_policy_metrics_waiting(pg->nwaiting);

        ngx_http_ratelimit_policy_pg_close(pc);
    }

    q->rc = NGX_HTTP_RATELIMIT_POLICY_PG_TIMEOUT;
    q->result = NULL;

    ngx_http_ratelimit_policy_metrics_query(q->stmt, q->rc, q->started);

    q->handler(q);

    if (pg) {
        ngx_http_ratelimit_policy_pg_dispatch(pg);
    }
}


static void
ngx_http_ratelimit_policy_pg_dispatch(ngx_http_ratelimit_policy_pg_t *pg)
{
    ngx_uint_t                             i, busy;
    ngx_queue_t                           *qq;
    ngx_http_ratelimit_policy_pg_conn_t   *pc;
    ngx_http_ratelimit_policy_pg_query_t  *q;

    while (!ngx_queue_empty(&pg->waiting)) {

        qq = ngx_queue_head(&pg->waiting);
        q = ngx_queue_data(qq, ngx_http_ratelimit_policy_pg_query_t, queue);

        pc = ngx_http_ratelimit_policy_pg_pick(pg, q, 1);
        if (pc == NULL) {
            break;
        }

        ngx_queue_remove(qq);
        pg->nwaiting--;
        ngx_http_ratelimit_policy_metrics_waiting(pg->nwaiting);

        q->queued = 0;

        if (ngx_http_ratelimit_policy_pg_run(pc, q) != NGX_OK) {
            ngx_http_ratelimit_policy_pg_complete(q,
                                     NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE,
                                     NULL);
        }
    }

    if (ngx_queue_empty(&pg->waiting)) {
        return;
    }

    /* queries still wait: open a connection for them if none is coming */

    busy = ngx_http_ratelimit_policy_pg_count(pg,
                                      NGX_HTTP_RATELIMIT_POLICY_PG_BUSY);

    if (ngx_http_ratelimit_policy_pg_count(pg,
                                      NGX_HTTP_RATELIMIT_POLICY_PG_CONNECTING)
        + ngx_http_ratelimit_policy_pg_count(pg,
                                      NGX_HTTP_RATELIMIT_POLICY_PG_PREPARING)
        > 0)
    {
        return;
    }

    if (!ngx_exiting
        && (ngx_msec_int_t) (ngx_current_msec - pg->next_connect) >= 0)
    {
        for (i = 0; i < pg->nconns; i++) {
            if (pg->conns[i].state == NGX_HTTP_RATELIMIT_POLICY_PG_FREE) {
                if (ngx_http_ratelimit_policy_pg_connect(&pg->conns[i])
                    == NGX_OK)
                {
                    return;
                }

                break;
            }
        }
    }

    if (busy == 0
        && ngx_http_ratelimit_policy_pg_count(pg,
                                      NGX_HTTP_RATELIMIT_POLICY_PG_FREE)
           == pg->nconns)
    {
        ngx_http_ratelimit_policy_pg_fail_waiting(pg,
                                     NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE);
    }
}


static void
ngx_http_ratelimit_policy_pg_fail_waiting(ngx_http_ratelimit_policy_pg_t *pg,
    ngx_uint_t rc)
{
    ngx_queue_t                           *qq;
    ngx_http_ratelimit_policy_pg_query_t  *q;

    while (!ngx_queue_empty(&pg->waiting)) {
        qq = ngx_queue_head(&pg->waiting);
        ngx_queue_remove(qq);
        pg->nwaiting--;
        ngx_http_ratelimit_policy_metrics_waiting(pg->nwaiting);

        q = ngx_queue_data(qq, ngx_http_ratelimit_policy_pg_query_t, queue);
        q->queued = 0;

        ngx_http_ratelimit_policy_pg_complete(q, rc, NULL);
    }
}


static void
ngx_http_ratelimit_policy_pg_notice(void *arg, const char *message)
{
    ngx_http_ratelimit_policy_pg_t  *pg = arg;

    ngx_log_error(NGX_LOG_NOTICE, pg->log, 0,
                  "ratelimit_policy: database says: %s", message);
}


/*
 * Configuration time: parse the connection string with libpq, resolve
 * host names now (blocking is fine in the master) and hand libpq numeric
 * "hostaddr" values, turn off GSSAPI encryption negotiation (Kerberos may
 * read files and resolve names), and bound every statement on the server
 * just below the module's query timeout.
 */

char *
ngx_http_ratelimit_policy_pg_conninfo(ngx_conf_t *cf,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf, ngx_str_t *conninfo)
{
    u_char             *p, *last, *host, *hostaddr, *options;
    size_t              len;
    char               *err, *s;
    const char        **kw, **val;
    ngx_uint_t          i, has_gss, has_app;
    ngx_str_t           name;
    ngx_url_t           u;
    PQconninfoOption   *opts, *o;

    err = NULL;
    opts = PQconninfoParse((char *) conninfo->data, &err);

    if (opts == NULL) {
        if (err) {
            for (p = (u_char *) err + ngx_strlen(err);
                 p > (u_char *) err && (p[-1] == '\n' || p[-1] == ' ');
                 p--)
            { /* void */ }
            *p = '\0';
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid connection string \"%V\": %s", conninfo,
                           err ? err : "out of memory");
        if (err) {
            PQfreemem(err);
        }

        return NGX_CONF_ERROR;
    }

    rpmcf->pg_keywords = ngx_array_create(cf->pool, 16, sizeof(char *));
    rpmcf->pg_values = ngx_array_create(cf->pool, 16, sizeof(char *));

    if (rpmcf->pg_keywords == NULL || rpmcf->pg_values == NULL) {
        goto failed;
    }

    host = NULL;
    hostaddr = NULL;
    options = NULL;
    has_gss = 0;
    has_app = 0;

    for (o = opts; o->keyword; o++) {

        if (o->val == NULL || o->val[0] == '\0') {
            continue;
        }

        if (ngx_strcmp(o->keyword, "host") == 0) {
            host = (u_char *) o->val;

        } else if (ngx_strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = (u_char *) o->val;
            continue;

        } else if (ngx_strcmp(o->keyword, "options") == 0) {
            options = (u_char *) o->val;
            continue;

        } else if (ngx_strcmp(o->keyword, "gssencmode") == 0) {
            has_gss = 1;

        } else if (ngx_strcmp(o->keyword, "application_name") == 0) {
            has_app = 1;
        }

        if (ngx_http_ratelimit_policy_pg_add_param(cf, rpmcf, o->keyword,
                                                   o->val)
            != NGX_OK)
        {
            goto failed;
        }
    }

    if (hostaddr == NULL && host != NULL) {

        /* resolve every comma-separated host that is not a socket path */

        len = 0;

        for (p = host; ; p++) {
            if (*p == ',' || *p == '\0') {
                len += NGX_SOCKADDR_STRLEN + 1;
            }

            if (*p == '\0') {
                break;
            }
        }

        hostaddr = ngx_pnalloc(cf->pool, len + 1);
        if (hostaddr == NULL) {
            goto failed;
        }

        last = hostaddr;
        p = host;

        for ( ;; ) {
            name.data = p;

            while (*p != ',' && *p != '\0') {
                p++;
            }

            name.len = p - name.data;

            if (name.len && name.data[0] != '/' && name.data[0] != '@') {

                ngx_memzero(&u, sizeof(ngx_url_t));
                u.host = name;
                u.port = 5432;

                if (ngx_inet_resolve_host(cf->pool, &u) != NGX_OK
                    || u.naddrs == 0)
                {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "host \"%V\" of \"%V\" not found",
                                       &name, conninfo);
                    goto failed;
                }

                last += ngx_sock_ntop(u.addrs[0].sockaddr,
                                      u.addrs[0].socklen, last,
                                      NGX_SOCKADDR_STRLEN, 0);
            }

            if (*p == '\0') {
                break;
            }

            *last++ = ',';
            p++;
        }

        *last = '\0';

        /* only socket paths: libpq needs no hostaddr */

        for (p = hostaddr; *p == ','; p++) { /* void */ }

        if (*p == '\0') {
            hostaddr = NULL;
        }
    }

    if (hostaddr) {
        if (ngx_http_ratelimit_policy_pg_add_param(cf, rpmcf, "hostaddr",
                                                   (char *) hostaddr)
            != NGX_OK)
        {
            goto failed;
        }
    }

    if (!has_gss) {
        if (ngx_http_ratelimit_policy_pg_add_param(cf, rpmcf, "gssencmode",
                                                   "disable")
            != NGX_OK)
        {
            goto failed;
        }
    }

    if (!has_app) {
        if (ngx_http_ratelimit_policy_pg_add_param(cf, rpmcf,
                                                   "application_name",
                                                   "nginx ratelimit_policy")
            != NGX_OK)
        {
            goto failed;
        }
    }

    len = (options ? ngx_strlen(options) : 0)
          + sizeof(" -c statement_timeout=") + NGX_INT_T_LEN;

    s = ngx_pnalloc(cf->pool, len);
    if (s == NULL) {
        goto failed;
    }

    i = rpmcf->query_timeout > 200 ? rpmcf->query_timeout - 100
                                   : rpmcf->query_timeout;

    *ngx_snprintf((u_char *) s, len - 1, "%s%s-c statement_timeout=%ui",
                  options ? (char *) options : "", options ? " " : "", i)
        = '\0';

    if (ngx_http_ratelimit_policy_pg_add_param(cf, rpmcf, "options", s)
        != NGX_OK)
    {
        goto failed;
    }

    kw = ngx_array_push(rpmcf->pg_keywords);
    val = ngx_array_push(rpmcf->pg_values);

    if (kw == NULL || val == NULL) {
        goto failed;
    }

    *kw = NULL;
    *val = NULL;

    PQconninfoFree(opts);

    return NGX_CONF_OK;

failed:

    PQconninfoFree(opts);

    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_ratelimit_policy_pg_add_param(ngx_conf_t *cf,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf, const char *key,
    const char *value)
{
    u_char       *k, *v;
    size_t        len;
    const char  **kw, **val;

    len = ngx_strlen(key) + 1;
    k = ngx_pnalloc(cf->pool, len);
    if (k == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(k, key, len);

    len = ngx_strlen(value) + 1;
    v = ngx_pnalloc(cf->pool, len);
    if (v == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(v, value, len);

    kw = ngx_array_push(rpmcf->pg_keywords);
    val = ngx_array_push(rpmcf->pg_values);

    if (kw == NULL || val == NULL) {
        return NGX_ERROR;
    }

    *kw = (const char *) k;
    *val = (const char *) v;

    return NGX_OK;
}


static void
ngx_http_ratelimit_policy_pg_notifies(ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    size_t                           len;
    PGnotify                        *n;
    ngx_http_ratelimit_policy_pg_t  *pg;

    pg = pc->pg;

    while ((n = PQnotifies(pc->conn)) != NULL) {

        if (pc->listener && pg->notify) {
            len = ngx_strlen(n->extra);

            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pg->log, 0,
                           "ratelimit_policy: notification \"%*s\"",
                           len, n->extra);

            pg->notifications++;
            ngx_http_ratelimit_policy_metrics_notified();
            pg->notify(pg->notify_data, (u_char *) n->extra, len, n->be_pid);
        }

        PQfreemem(n);
    }
}


/*
 * The listener: one connection per nginx node, in worker 0.  It runs
 * LISTEN, then asks for a resync (what changed while it was not listening
 * is unknown), answers notifications as they come, and sends "SELECT 1"
 * every two seconds so that a dead peer is noticed within the query
 * timeout.  It reconnects by itself with a growing backoff.
 */

ngx_int_t
ngx_http_ratelimit_policy_pg_listen(ngx_http_ratelimit_policy_pg_t *pg,
    ngx_http_ratelimit_policy_pg_notify_pt notify, void *data)
{
    ngx_http_ratelimit_policy_pg_conn_t  *pc;

    pg->notify = notify;
    pg->notify_data = data;

    pc = &pg->listener;
    pc->pg = pg;
    pc->listener = 1;
    ngx_queue_init(&pc->inflight);
    pc->connect_timer.handler = ngx_http_ratelimit_policy_pg_connect_timeout;
    pc->connect_timer.data = pc;
    pc->connect_timer.log = pg->log;
    pc->connect_timer.cancelable = 1;

    pg->listen_timer.handler = ngx_http_ratelimit_policy_listen_timer;
    pg->listen_timer.data = pg;
    pg->listen_timer.log = pg->log;
    pg->listen_timer.cancelable = 1;

    ngx_add_timer(&pg->listen_timer, 1);

    return NGX_OK;
}


ngx_uint_t
ngx_http_ratelimit_policy_pg_listening(ngx_http_ratelimit_policy_pg_t *pg)
{
    return pg ? pg->listening : 0;
}


const char *
ngx_http_ratelimit_policy_pg_statement(ngx_uint_t stmt)
{
    return ngx_http_ratelimit_policy_stmts[stmt].name;
}


static void
ngx_http_ratelimit_policy_listen_start(ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    ngx_http_ratelimit_policy_pg_t  *pg;

    pg = pc->pg;

    if (pc->connect_timer.timer_set) {
        ngx_del_timer(&pc->connect_timer);
    }

    pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_BUSY;

    if (!PQsendQuery(pc->conn, "LISTEN " NGX_HTTP_RATELIMIT_POLICY_PG_CHANNEL))
    {
        ngx_http_ratelimit_policy_pg_broken(pc, "LISTEN");
        return;
    }

    ngx_http_ratelimit_policy_pg_flush(pc);

    if (pc->state != NGX_HTTP_RATELIMIT_POLICY_PG_FREE) {
        ngx_add_timer(&pg->listen_timer, pg->rpmcf->query_timeout);
    }
}


static void
ngx_http_ratelimit_policy_listen_done(ngx_http_ratelimit_policy_pg_conn_t *pc,
    PGresult *res)
{
    ngx_uint_t                       ok;
    ngx_http_ratelimit_policy_pg_t  *pg;

    pg = pc->pg;

    ok = (res != NULL && (PQresultStatus(res) == PGRES_COMMAND_OK
                          || PQresultStatus(res) == PGRES_TUPLES_OK));

    if (!ok) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "ratelimit_policy: the listener's query failed: %s",
                      res ? PQresultErrorMessage(res)
                          : PQerrorMessage(pc->conn));
    }

    if (res) {
        PQclear(res);
    }

    if (!ok) {
        ngx_http_ratelimit_policy_listen_failed(pc);
        return;
    }

    pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_IDLE;

    if (!pg->listening) {
        pg->listening = 1;
        ngx_http_ratelimit_policy_metrics_listening(1);
        pg->listen_backoff = 0;

        ngx_log_error(NGX_LOG_NOTICE, pg->log, 0,
                      "ratelimit_policy: listening on \""
                      NGX_HTTP_RATELIMIT_POLICY_PG_CHANNEL "\"");

        /* the caller decides whether notifications may have been missed */
        pg->notify(pg->notify_data, NULL, pg->listened, 0);
        pg->listened = 1;
    }

    ngx_add_timer(&pg->listen_timer, NGX_HTTP_RATELIMIT_POLICY_PG_HEARTBEAT);
}


static void
ngx_http_ratelimit_policy_listen_failed(ngx_http_ratelimit_policy_pg_conn_t *pc)
{
    ngx_http_ratelimit_policy_pg_t  *pg;

    pg = pc->pg;

    ngx_http_ratelimit_policy_pg_close(pc);

    if (pg->listening) {
        ngx_log_error(NGX_LOG_WARN, pg->log, 0,
                      "ratelimit_policy: stopped listening, reconnecting");
    }

    pg->listening = 0;
    ngx_http_ratelimit_policy_metrics_listening(0);

    if (pg->listen_backoff == 0) {
        pg->listen_backoff = NGX_HTTP_RATELIMIT_POLICY_PG_BACKOFF_MIN;

    } else {
        pg->listen_backoff = ngx_min(pg->listen_backoff * 2,
                                     NGX_HTTP_RATELIMIT_POLICY_PG_BACKOFF_MAX);
    }

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_add_timer(&pg->listen_timer, pg->listen_backoff);
}


static void
ngx_http_ratelimit_policy_listen_timer(ngx_event_t *ev)
{
    ngx_http_ratelimit_policy_pg_t       *pg;
    ngx_http_ratelimit_policy_pg_conn_t  *pc;

    pg = ev->data;
    pc = &pg->listener;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    switch (pc->state) {

    case NGX_HTTP_RATELIMIT_POLICY_PG_FREE:
        if (ngx_http_ratelimit_policy_pg_connect(pc) != NGX_OK) {
            /* listen_failed() set the next attempt */
            return;
        }

        return;

    case NGX_HTTP_RATELIMIT_POLICY_PG_IDLE:

        /* heartbeat */

        pc->state = NGX_HTTP_RATELIMIT_POLICY_PG_BUSY;

        if (!PQsendQuery(pc->conn, "SELECT 1")) {
            ngx_http_ratelimit_policy_pg_broken(pc, "heartbeat");
            return;
        }

        ngx_http_ratelimit_policy_pg_flush(pc);

        if (pc->state != NGX_HTTP_RATELIMIT_POLICY_PG_FREE) {
            ngx_add_timer(&pg->listen_timer, pg->rpmcf->query_timeout);
        }

        return;

    default:
        ngx_log_error(NGX_LOG_ERR, pg->log, NGX_ETIMEDOUT,
                      "ratelimit_policy: the listener's database did not "
                      "answer in time");
        ngx_http_ratelimit_policy_listen_failed(pc);
        return;
    }
}
