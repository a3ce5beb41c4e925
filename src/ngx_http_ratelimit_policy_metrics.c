
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * ratelimit_policy_metrics: the module's counters in the Prometheus text
 * exposition format, version 0.0.4.
 *
 * Every counter lives in the zone and is updated with one atomic add, so
 * a scrape of any worker shows the whole node and the counters survive a
 * reload.  Gauges that belong to one worker (its database wait queue, its
 * listener) sit in a slot of the zone that the worker claims by its pid
 * when it starts; a scrape adds up the slots of the processes alive, so a
 * crashed worker's slot counts for nothing and the old and the new
 * workers of a reload never share one.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_metrics.h"
#include "ngx_http_ratelimit_policy_pg.h"
#include "ngx_http_ratelimit_policy_shm.h"
#include "ngx_http_ratelimit_policy_window.h"


#if (NGX_HTTP_RATELIMIT_POLICY_NSTMTS > NGX_HTTP_RATELIMIT_POLICY_METRICS_STMTS)
#error "NGX_HTTP_RATELIMIT_POLICY_METRICS_STMTS is too small"
#endif

#if (NGX_HTTP_RATELIMIT_POLICY_NCLASSES                                      \
     != NGX_HTTP_RATELIMIT_POLICY_METRICS_CLASSES)
#error "NGX_HTTP_RATELIMIT_POLICY_METRICS_CLASSES is not the number of classes"
#endif


#define NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX  "nginx_ratelimit_policy_"

/* no line is longer: each buffer keeps this much room */
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_LINE    512
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_BUF     8192


typedef struct {
    ngx_pool_t                      *pool;
    ngx_chain_t                     *out;
    ngx_chain_t                    **last;
    ngx_buf_t                       *buf;
    off_t                            size;
    ngx_uint_t                       error;
} ngx_http_ratelimit_policy_metrics_out_t;


static ngx_int_t ngx_http_ratelimit_policy_metrics_render(
    ngx_http_request_t *r, ngx_http_ratelimit_policy_metrics_out_t *m);
static void ngx_http_ratelimit_policy_metrics_api_out(
    ngx_http_ratelimit_policy_metrics_out_t *m,
    ngx_http_ratelimit_policy_stats_t *st);
static void ngx_http_ratelimit_policy_metrics_db_out(
    ngx_http_ratelimit_policy_metrics_out_t *m,
    ngx_http_ratelimit_policy_stats_t *st);
static void ngx_http_ratelimit_policy_metrics_enforce_out(
    ngx_http_ratelimit_policy_metrics_out_t *m,
    ngx_http_ratelimit_policy_stats_t *st);
static void ngx_http_ratelimit_policy_metrics_family(
    ngx_http_ratelimit_policy_metrics_out_t *m, const char *name,
    const char *type, const char *help);
static void ngx_http_ratelimit_policy_metrics_printf(
    ngx_http_ratelimit_policy_metrics_out_t *m, const char *fmt, ...);
static ngx_uint_t ngx_http_ratelimit_policy_metrics_alive(ngx_atomic_t pid);
static const char *ngx_http_ratelimit_policy_metrics_stmt_name(ngx_uint_t i);


/* this process: the zone's counters and its own slot */
static ngx_http_ratelimit_policy_stats_t       *ngx_http_ratelimit_policy_stats;
static ngx_http_ratelimit_policy_proc_stats_t  *ngx_http_ratelimit_policy_proc;


static const char  *ngx_http_ratelimit_policy_metrics_methods[] = {
    "GET", "HEAD", "PATCH", "other"
};


/* the statuses the API answers with; the last slot counts any other */

static ngx_uint_t  ngx_http_ratelimit_policy_metrics_codes[] = {
    200, 204, 400, 401, 403, 404, 405, 413, 415, 422, 429, 500, 502, 503, 504
};


/* the upper bounds of the latency buckets; the last bucket is +Inf */

static uint64_t  ngx_http_ratelimit_policy_metrics_bounds[] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000
};

static const char  *ngx_http_ratelimit_policy_metrics_le[] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "0.5", "1", "2.5", "5", "+Inf"
};


static const char  *ngx_http_ratelimit_policy_metrics_classes[] = {
    "send_message", "group", "check"
};

static const char  *ngx_http_ratelimit_policy_metrics_verdicts[] = {
    "admitted", "rejected", "dry_run_rejected", "error"
};

/* the limits of ratelimit.policies, in its column order */

static const char  *ngx_http_ratelimit_policy_metrics_limits[] = {
    "send_message_per_minute",
    "send_message_daily_cap",
    "account_protection_seconds",
    "concurrent_limit",
    "group_req_per_minute",
    "group_daily_cap",
    "check_req_per_minute",
    "check_daily_cap"
};

/* the limits that apply to each class, in the order they are checked */

static ngx_uint_t  ngx_http_ratelimit_policy_metrics_class_limits[][4] = {
    { NGX_HTTP_RATELIMIT_POLICY_PROTECTION,
      NGX_HTTP_RATELIMIT_POLICY_CONCURRENT,
      NGX_HTTP_RATELIMIT_POLICY_SEND_PER_MINUTE,
      NGX_HTTP_RATELIMIT_POLICY_SEND_DAILY },

    { NGX_HTTP_RATELIMIT_POLICY_PROTECTION,
      NGX_HTTP_RATELIMIT_POLICY_CONCURRENT,
      NGX_HTTP_RATELIMIT_POLICY_GROUP_PER_MINUTE,
      NGX_HTTP_RATELIMIT_POLICY_GROUP_DAILY },

    { NGX_HTTP_RATELIMIT_POLICY_PROTECTION,
      NGX_HTTP_RATELIMIT_POLICY_CONCURRENT,
      NGX_HTTP_RATELIMIT_POLICY_CHECK_PER_MINUTE,
      NGX_HTTP_RATELIMIT_POLICY_CHECK_DAILY }
};


ngx_int_t
ngx_http_ratelimit_policy_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t                                rc;
    ngx_table_elt_t                         *h;
    ngx_http_ratelimit_policy_metrics_out_t  m;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");
        ngx_str_set(&h->value, "GET, HEAD");

        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_memzero(&m, sizeof(ngx_http_ratelimit_policy_metrics_out_t));
    m.pool = r->pool;
    m.last = &m.out;

    if (ngx_http_ratelimit_policy_metrics_render(r, &m) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = m.size;

    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    m.buf->last_buf = (r == r->main) ? 1 : 0;
    m.buf->last_in_chain = 1;

    return ngx_http_output_filter(r, m.out);
}


static ngx_int_t
ngx_http_ratelimit_policy_metrics_render(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_metrics_out_t *m)
{
    size_t                                   size, pfree;
    ngx_uint_t                               i, waiting, listening, entries;
    ngx_http_ratelimit_policy_sh_t          *sh;
    ngx_http_ratelimit_policy_stats_t       *st;
    ngx_http_ratelimit_policy_shctx_t       *ctx;
    ngx_http_ratelimit_policy_main_conf_t   *rpmcf;
    ngx_http_ratelimit_policy_proc_stats_t  *p;

    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);

    ctx = rpmcf->shm_zone->data;
    sh = ctx->sh;
    st = &sh->stats;

    ngx_shmtx_lock(&ctx->shpool->mutex);
    pfree = ctx->shpool->pfree << ngx_pagesize_shift;
    entries = sh->entries;
    ngx_shmtx_unlock(&ctx->shpool->mutex);

    size = rpmcf->shm_zone->shm.size;

    waiting = 0;
    listening = 0;

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_METRICS_PROCS; i++) {
        p = &st->procs[i];

        if (p->pid == 0 || !ngx_http_ratelimit_policy_metrics_alive(p->pid)) {
            continue;
        }

        waiting += p->waiting;

        if (p->listening) {
            listening = 1;
        }
    }

    ngx_http_ratelimit_policy_metrics_api_out(m, st);

    /* the entitlement cache */

    ngx_http_ratelimit_policy_metrics_family(m, "cache_hits_total", "counter",
        "Lookups answered from a fresh entry of the zone.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "cache_hits_total %uA\n",
        st->cache_hits);

    ngx_http_ratelimit_policy_metrics_family(m, "cache_misses_total",
        "counter", "Lookups that queried the database.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "cache_misses_total %uA\n",
        st->cache_misses);

    ngx_http_ratelimit_policy_metrics_family(m, "cache_negative_hits_total",
        "counter",
        "Lookups answered from a remembered unknown instance or token.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
        "cache_negative_hits_total %uA\n", st->cache_negative_hits);

    ngx_http_ratelimit_policy_metrics_family(m, "cache_stale_total",
        "counter",
        "Answers served from an entry that was no longer fresh "
        "(the database failing, or a reload under way).");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "cache_stale_total %uA\n",
        st->cache_stale);

    ngx_http_ratelimit_policy_metrics_family(m,
        "token_probes_refused_total", "counter",
        "Unknown tokens for an instance that does not exist answered 401 "
        "without a query, the instance's lookups being spent.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
        "token_probes_refused_total %uA\n", st->token_probes_refused);

    ngx_http_ratelimit_policy_metrics_db_out(m, st);

    ngx_http_ratelimit_policy_metrics_family(m, "db_pool_size", "gauge",
        "Database connections each worker may open "
        "(ratelimit_policy_db pool=).");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "db_pool_size %ui\n",
        rpmcf->pool_size);

    ngx_http_ratelimit_policy_metrics_family(m, "db_wait_queue_length",
        "gauge",
        "Queries waiting for a database connection, all workers together.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "db_wait_queue_length %ui\n",
        waiting);

    ngx_http_ratelimit_policy_metrics_family(m, "listener_up", "gauge",
        "1 while a worker of this node listens on the ratelimit_policy "
        "channel, else 0.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "listener_up %ui\n",
        listening);

    ngx_http_ratelimit_policy_metrics_family(m, "notifications_total",
        "counter", "Notifications received on the ratelimit_policy channel.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "notifications_total %uA\n",
        st->notifications);

    ngx_http_ratelimit_policy_metrics_enforce_out(m, st);

    /* the write-behind of daily usage */

    ngx_http_ratelimit_policy_metrics_family(m, "usage_sync_batches_total",
        "counter", "Batches of daily usage written to the database.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
        "usage_sync_batches_total{result=\"ok\"} %uA\n"
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
        "usage_sync_batches_total{result=\"failed\"} %uA\n",
        st->sync_ok, st->sync_failed);

    ngx_http_ratelimit_policy_metrics_family(m, "usage_sync_rows_total",
        "counter", "Daily usage rows written to the database.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "usage_sync_rows_total %uA\n",
        st->sync_rows);

    ngx_http_ratelimit_policy_metrics_family(m, "usage_sync_lag_seconds",
        "gauge",
        "Age of the oldest count of the last batch when its write ended.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
        "usage_sync_lag_seconds %uA.%03uA\n",
        st->sync_lag / 1000, st->sync_lag % 1000);

    /* the zone */

    ngx_http_ratelimit_policy_metrics_family(m, "zone_size_bytes", "gauge",
        "Size of the shared memory zone.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "zone_size_bytes %uz\n",
        size);

    ngx_http_ratelimit_policy_metrics_family(m, "zone_used_bytes", "gauge",
        "Bytes of the zone not in free pages.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "zone_used_bytes %uz\n",
        size > pfree ? size - pfree : 0);

    ngx_http_ratelimit_policy_metrics_family(m, "zone_free_bytes", "gauge",
        "Bytes of the zone in free pages (free pages times the page size).");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "zone_free_bytes %uz\n",
        pfree);

    ngx_http_ratelimit_policy_metrics_family(m, "zone_entries", "gauge",
        "Entries cached in the zone (instances and unknown tokens).");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "zone_entries %ui\n",
        entries);

    ngx_http_ratelimit_policy_metrics_family(m, "zone_evictions_total",
        "counter",
        "Entries evicted, least recently used first, to make room.");
    ngx_http_ratelimit_policy_metrics_printf(m,
        NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "zone_evictions_total %uA\n",
        st->evictions);

    if (m->error || m->buf == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_ratelimit_policy_metrics_api_out(
    ngx_http_ratelimit_policy_metrics_out_t *m,
    ngx_http_ratelimit_policy_stats_t *st)
{
    ngx_uint_t    i, j;
    ngx_atomic_t  n;

    ngx_http_ratelimit_policy_metrics_family(m, "api_requests_total",
        "counter",
        "Answers of the rate-limit API, by method and status code.");

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_METRICS_METHODS; i++) {
        for (j = 0; j < NGX_HTTP_RATELIMIT_POLICY_METRICS_CODES; j++) {

            n = st->api[i][j];

            if (n == 0) {
                continue;
            }

            if (j < NGX_HTTP_RATELIMIT_POLICY_METRICS_CODES - 1) {
                ngx_http_ratelimit_policy_metrics_printf(m,
                    NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
                    "api_requests_total{method=\"%s\",code=\"%ui\"} %uA\n",
                    ngx_http_ratelimit_policy_metrics_methods[i],
                    ngx_http_ratelimit_policy_metrics_codes[j], n);

            } else {
                ngx_http_ratelimit_policy_metrics_printf(m,
                    NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
                    "api_requests_total{method=\"%s\",code=\"other\"} %uA\n",
                    ngx_http_ratelimit_policy_metrics_methods[i], n);
            }
        }
    }
}


static void
ngx_http_ratelimit_policy_metrics_db_out(
    ngx_http_ratelimit_policy_metrics_out_t *m,
    ngx_http_ratelimit_policy_stats_t *st)
{
    ngx_uint_t                               i, j;
    const char                              *name;
    ngx_atomic_uint_t                        n;
    ngx_http_ratelimit_policy_stmt_stats_t  *db;

    ngx_http_ratelimit_policy_metrics_family(m, "db_queries_total", "counter",
        "Database queries, by prepared statement, whatever their outcome.");

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_NSTMTS; i++) {
        ngx_http_ratelimit_policy_metrics_printf(m,
            NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
            "db_queries_total{statement=\"%s\"} %uA\n",
            ngx_http_ratelimit_policy_metrics_stmt_name(i),
            st->db[i].queries);
    }

    ngx_http_ratelimit_policy_metrics_family(m, "db_errors_total", "counter",
        "Failed database queries: reason \"sql\" for an error the server "
        "answered, \"unavailable\" for no connection or a lost one.");

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_NSTMTS; i++) {
        name = ngx_http_ratelimit_policy_metrics_stmt_name(i);

        ngx_http_ratelimit_policy_metrics_printf(m,
            NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
            "db_errors_total{statement=\"%s\",reason=\"sql\"} %uA\n"
            NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
            "db_errors_total{statement=\"%s\",reason=\"unavailable\"} %uA\n",
            name, st->db[i].errors, name, st->db[i].unavailable);
    }

    ngx_http_ratelimit_policy_metrics_family(m, "db_timeouts_total",
        "counter", "Database queries that exceeded query_timeout.");

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_NSTMTS; i++) {
        ngx_http_ratelimit_policy_metrics_printf(m,
            NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
            "db_timeouts_total{statement=\"%s\"} %uA\n",
            ngx_http_ratelimit_policy_metrics_stmt_name(i),
            st->db[i].timeouts);
    }

    ngx_http_ratelimit_policy_metrics_family(m,
        "db_query_duration_seconds", "histogram",
        "Time from the submission of a query (including any wait for a "
        "connection) to its answer or timeout.");

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_NSTMTS; i++) {
        name = ngx_http_ratelimit_policy_metrics_stmt_name(i);
        db = &st->db[i];
        n = 0;

        for (j = 0; j < NGX_HTTP_RATELIMIT_POLICY_METRICS_BUCKETS; j++) {
            n += db->buckets[j];

            ngx_http_ratelimit_policy_metrics_printf(m,
                NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
                "db_query_duration_seconds_bucket"
                "{statement=\"%s\",le=\"%s\"} %uA\n",
                name, ngx_http_ratelimit_policy_metrics_le[j], n);
        }

        ngx_http_ratelimit_policy_metrics_printf(m,
            NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
            "db_query_duration_seconds_sum{statement=\"%s\"} %uA.%06uA\n"
            NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
            "db_query_duration_seconds_count{statement=\"%s\"} %uA\n",
            name, db->usec / 1000000, db->usec % 1000000, name, n);
    }
}


static void
ngx_http_ratelimit_policy_metrics_enforce_out(
    ngx_http_ratelimit_policy_metrics_out_t *m,
    ngx_http_ratelimit_policy_stats_t *st)
{
    ngx_uint_t                                i, j, k, limit;
    ngx_http_ratelimit_policy_class_stats_t  *cs;

    ngx_http_ratelimit_policy_metrics_family(m, "enforced_requests_total",
        "counter",
        "Requests decided by ratelimit_policy_enforce, by class and verdict.");

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_METRICS_CLASSES; i++) {
        for (j = 0; j < NGX_HTTP_RATELIMIT_POLICY_METRICS_VERDICTS; j++) {
            ngx_http_ratelimit_policy_metrics_printf(m,
                NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
                "enforced_requests_total{class=\"%s\",verdict=\"%s\"} %uA\n",
                ngx_http_ratelimit_policy_metrics_classes[i],
                ngx_http_ratelimit_policy_metrics_verdicts[j],
                st->enforce[i].verdicts[j]);
        }
    }

    ngx_http_ratelimit_policy_metrics_family(m, "rejections_total",
        "counter",
        "Enforced requests refused (dry_run=\"true\": would have been), "
        "by class and by the limit that refused them.");

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_METRICS_CLASSES; i++) {
        cs = &st->enforce[i];

        for (j = 0; j < 4; j++) {
            limit = ngx_http_ratelimit_policy_metrics_class_limits[i][j];

            for (k = 0; k < 2; k++) {
                ngx_http_ratelimit_policy_metrics_printf(m,
                    NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX
                    "rejections_total{class=\"%s\",limit=\"%s\","
                    "dry_run=\"%s\"} %uA\n",
                    ngx_http_ratelimit_policy_metrics_classes[i],
                    ngx_http_ratelimit_policy_metrics_limits[limit],
                    k ? "true" : "false", cs->rejected[limit][k]);
            }
        }
    }
}


static void
ngx_http_ratelimit_policy_metrics_family(
    ngx_http_ratelimit_policy_metrics_out_t *m, const char *name,
    const char *type, const char *help)
{
    ngx_http_ratelimit_policy_metrics_printf(m,
        "# HELP " NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "%s %s\n"
        "# TYPE " NGX_HTTP_RATELIMIT_POLICY_METRICS_PREFIX "%s %s\n",
        name, help, name, type);
}


static void
ngx_http_ratelimit_policy_metrics_printf(
    ngx_http_ratelimit_policy_metrics_out_t *m, const char *fmt, ...)
{
    u_char       *p;
    va_list       args;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    if (m->error) {
        return;
    }

    b = m->buf;

    if (b == NULL
        || (size_t) (b->end - b->last) < NGX_HTTP_RATELIMIT_POLICY_METRICS_LINE)
    {
        b = ngx_create_temp_buf(m->pool, NGX_HTTP_RATELIMIT_POLICY_METRICS_BUF);
        cl = ngx_alloc_chain_link(m->pool);

        if (b == NULL || cl == NULL) {
            m->error = 1;
            return;
        }

        cl->buf = b;
        cl->next = NULL;

        *m->last = cl;
        m->last = &cl->next;
        m->buf = b;
    }

    va_start(args, fmt);
    p = ngx_vslprintf(b->last, b->end, fmt, args);
    va_end(args);

    m->size += p - b->last;
    b->last = p;
}


static ngx_uint_t
ngx_http_ratelimit_policy_metrics_alive(ngx_atomic_t pid)
{
    if (kill((ngx_pid_t) pid, 0) == 0) {
        return 1;
    }

    /* EPERM: alive, under another user */

    return ngx_errno != NGX_ESRCH;
}


static const char *
ngx_http_ratelimit_policy_metrics_stmt_name(ngx_uint_t i)
{
    const char  *name;

    name = ngx_http_ratelimit_policy_pg_statement(i);

    if (ngx_strncmp(name, "ratelimit_policy_", 17) == 0) {
        return name + 17;
    }

    return name;
}


ngx_int_t
ngx_http_ratelimit_policy_metrics_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf)
{
    ngx_uint_t                               i;
    ngx_atomic_t                             pid;
    ngx_http_ratelimit_policy_stats_t       *st;
    ngx_http_ratelimit_policy_shctx_t       *ctx;
    ngx_http_ratelimit_policy_proc_stats_t  *p;

    ctx = rpmcf->shm_zone->data;
    st = &ctx->sh->stats;

    ngx_http_ratelimit_policy_stats = st;

    /* claim a free slot, or the slot of a process that is gone */

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_METRICS_PROCS; i++) {
        p = &st->procs[i];
        pid = p->pid;

        if (pid != 0
            && pid != (ngx_atomic_t) ngx_pid
            && ngx_http_ratelimit_policy_metrics_alive(pid))
        {
            continue;
        }

        if (ngx_atomic_cmp_set(&p->pid, pid, (ngx_atomic_t) ngx_pid)) {
            p->waiting = 0;
            p->listening = 0;
            ngx_http_ratelimit_policy_proc = p;
            return NGX_OK;
        }
    }

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "ratelimit_policy: no metrics slot left for this worker, "
                  "its wait queue and listener are not shown");

    return NGX_OK;
}


void
ngx_http_ratelimit_policy_metrics_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_ratelimit_policy_proc_stats_t  *p;

    p = ngx_http_ratelimit_policy_proc;

    if (p == NULL) {
        return;
    }

    p->waiting = 0;
    p->listening = 0;
    p->pid = 0;

    ngx_http_ratelimit_policy_proc = NULL;
}


void
ngx_http_ratelimit_policy_metrics_api(ngx_http_request_t *r,
    ngx_uint_t status)
{
    ngx_uint_t                             i, method;
    ngx_http_ratelimit_policy_stats_t     *st;
    ngx_http_ratelimit_policy_loc_conf_t  *rpcf;

    if (ngx_http_ratelimit_policy_stats == NULL || r != r->main) {
        return;
    }

    rpcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_policy_module);

    if (!rpcf->api) {
        return;
    }

    switch (r->method) {

    case NGX_HTTP_GET:
        method = 0;
        break;

    case NGX_HTTP_HEAD:
        method = 1;
        break;

    case NGX_HTTP_PATCH:
        method = 2;
        break;

    default:
        method = 3;
        break;
    }

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_METRICS_CODES - 1; i++) {
        if (ngx_http_ratelimit_policy_metrics_codes[i] == status) {
            break;
        }
    }

    st = ngx_http_ratelimit_policy_stats;

    (void) ngx_atomic_fetch_add(&st->api[method][i], 1);
}


uint64_t
ngx_http_ratelimit_policy_metrics_clock(void)
{
    struct timespec  ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1) {
        return 0;
    }

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}


void
ngx_http_ratelimit_policy_metrics_query(ngx_uint_t stmt, ngx_uint_t rc,
    uint64_t started)
{
    uint64_t                                 usec, now;
    ngx_uint_t                               i;
    ngx_http_ratelimit_policy_stmt_stats_t  *db;

    if (ngx_http_ratelimit_policy_stats == NULL
        || stmt >= NGX_HTTP_RATELIMIT_POLICY_METRICS_STMTS)
    {
        return;
    }

    db = &ngx_http_ratelimit_policy_stats->db[stmt];

    (void) ngx_atomic_fetch_add(&db->queries, 1);

    switch (rc) {

    case NGX_HTTP_RATELIMIT_POLICY_PG_OK:
        break;

    case NGX_HTTP_RATELIMIT_POLICY_PG_TIMEOUT:
        (void) ngx_atomic_fetch_add(&db->timeouts, 1);
        break;

    case NGX_HTTP_RATELIMIT_POLICY_PG_SQL_ERROR:
        (void) ngx_atomic_fetch_add(&db->errors, 1);
        break;

    default: /* NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE */
        (void) ngx_atomic_fetch_add(&db->unavailable, 1);
        break;
    }

    if (started == 0) {
        return;
    }

    now = ngx_http_ratelimit_policy_metrics_clock();
    usec = (now > started) ? now - started : 0;

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_METRICS_BUCKETS - 1; i++) {
        if (usec <= ngx_http_ratelimit_policy_metrics_bounds[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&db->buckets[i], 1);
    (void) ngx_atomic_fetch_add(&db->usec, (ngx_atomic_int_t) usec);
}


void
ngx_http_ratelimit_policy_metrics_waiting(ngx_uint_t n)
{
    if (ngx_http_ratelimit_policy_proc) {
        ngx_http_ratelimit_policy_proc->waiting = n;
    }
}


void
ngx_http_ratelimit_policy_metrics_listening(ngx_uint_t on)
{
    if (ngx_http_ratelimit_policy_proc) {
        ngx_http_ratelimit_policy_proc->listening = on;
    }
}


void
ngx_http_ratelimit_policy_metrics_notified(void)
{
    if (ngx_http_ratelimit_policy_stats) {
        (void) ngx_atomic_fetch_add(
                          &ngx_http_ratelimit_policy_stats->notifications, 1);
    }
}


void
ngx_http_ratelimit_policy_metrics_enforced(ngx_uint_t cls, ngx_uint_t limit,
    ngx_uint_t verdict)
{
    ngx_http_ratelimit_policy_class_stats_t  *cs;

    if (ngx_http_ratelimit_policy_stats == NULL
        || cls >= NGX_HTTP_RATELIMIT_POLICY_METRICS_CLASSES
        || verdict >= NGX_HTTP_RATELIMIT_POLICY_METRICS_VERDICTS)
    {
        return;
    }

    cs = &ngx_http_ratelimit_policy_stats->enforce[cls];

    (void) ngx_atomic_fetch_add(&cs->verdicts[verdict], 1);

    if ((verdict == NGX_HTTP_RATELIMIT_POLICY_VERDICT_REJECTED
         || verdict == NGX_HTTP_RATELIMIT_POLICY_VERDICT_DRY_RUN)
        && limit < NGX_HTTP_RATELIMIT_POLICY_NLIMITS)
    {
        (void) ngx_atomic_fetch_add(
            &cs->rejected[limit]
                [verdict == NGX_HTTP_RATELIMIT_POLICY_VERDICT_DRY_RUN], 1);
    }
}


void
ngx_http_ratelimit_policy_metrics_sync_batch(ngx_uint_t rows, ngx_uint_t ok,
    ngx_msec_t lag)
{
    ngx_http_ratelimit_policy_stats_t  *st;

    st = ngx_http_ratelimit_policy_stats;

    if (st == NULL) {
        return;
    }

    if (!ok) {
        (void) ngx_atomic_fetch_add(&st->sync_failed, 1);
        return;
    }

    (void) ngx_atomic_fetch_add(&st->sync_ok, 1);
    (void) ngx_atomic_fetch_add(&st->sync_rows, rows);

    st->sync_lag = lag;
}
