
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The counters in the zone: their allocation, the ledger of requests in
 * flight, and the write-behind of daily usage to ratelimit.daily_usage.
 *
 * Requests in flight.  Each instance's counters hold the number of its
 * requests in flight; each admitted request also leaves a record in the
 * ledger of the worker process that admitted it, and the request's pool
 * cleanup takes both back.  A worker that dies cannot do that: every
 * worker, when it starts and then every few seconds, looks for ledgers of
 * processes that no longer exist and releases what they held.
 *
 * Write-behind.  An admission adds to the counters' "pending" count and
 * queues them as dirty.  About once a second one worker (the zone says
 * which: one batch at a time) takes what is pending, up to a batch's size,
 * and sends it in one statement that adds it to ratelimit.daily_usage and
 * returns the new totals, which include what the other nodes wrote; they
 * become the counters' daily count.  A failed write puts the count back.
 * Only a daily cap needs the other nodes' counts soon: counters admitted
 * under no daily cap since they were last written wait in the lazy queue
 * and are written once they have been dirty for 10 s (or on shutdown),
 * which spares the database a row per busy instance every second.
 * A batch whose worker died or hung is taken over after query_timeout +
 * 1 s, its counts put back: written twice at worst, never lost.  On a
 * graceful shutdown a worker stays until it has tried a last write.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_usage.h"
#include "ngx_http_ratelimit_policy_metrics.h"
#include "ngx_http_ratelimit_policy_pg.h"


#define NGX_HTTP_RATELIMIT_POLICY_USAGE_TICK       250
#define NGX_HTTP_RATELIMIT_POLICY_USAGE_INTERVAL   1000
#define NGX_HTTP_RATELIMIT_POLICY_USAGE_LAZY       10000
#define NGX_HTTP_RATELIMIT_POLICY_USAGE_RECLAIM    20      /* ticks */
#define NGX_HTTP_RATELIMIT_POLICY_USAGE_ROWS       8192
#define NGX_HTTP_RATELIMIT_POLICY_USAGE_PROCS      256


typedef struct {
    ngx_http_ratelimit_policy_counters_t  *counters;
    u_char                                 instance[
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN];
    uint32_t                               day;
    uint32_t                               count;
    unsigned                               cls:2;
    unsigned                               written:1;
} ngx_http_ratelimit_policy_usage_row_t;


typedef struct {
    ngx_http_ratelimit_policy_pg_query_t   query;
    ngx_http_ratelimit_policy_usage_row_t *rows;
    ngx_uint_t                             nrows;
    ngx_uint_t                             seq;
    ngx_msec_t                             started;
    uint32_t                               age;      /* of the oldest row */
    u_char                                *params;
    unsigned                               active:1;
} ngx_http_ratelimit_policy_batch_t;


static void ngx_http_ratelimit_policy_usage_tick(ngx_event_t *ev);
static void ngx_http_ratelimit_policy_usage_arm(void);
static void ngx_http_ratelimit_policy_usage_start(ngx_uint_t force);
static ngx_uint_t ngx_http_ratelimit_policy_usage_due(
    ngx_http_ratelimit_policy_usage_sh_t *u, ngx_msec_t now,
    ngx_uint_t force);
static void ngx_http_ratelimit_policy_usage_take(
    ngx_http_ratelimit_policy_batch_t *b,
    ngx_http_ratelimit_policy_usage_sh_t *u,
    ngx_http_ratelimit_policy_counters_t *c, ngx_msec_t now);
static ngx_int_t ngx_http_ratelimit_policy_usage_params(
    ngx_http_ratelimit_policy_batch_t *b);
static void ngx_http_ratelimit_policy_usage_written(
    ngx_http_ratelimit_policy_pg_query_t *q);
static void ngx_http_ratelimit_policy_usage_finish(
    ngx_http_ratelimit_policy_batch_t *b, PGresult *res);
static ngx_http_ratelimit_policy_usage_row_t *
    ngx_http_ratelimit_policy_usage_find(ngx_http_ratelimit_policy_batch_t *b,
    u_char *instance, size_t len, ngx_uint_t cls);
static int ngx_libc_cdecl ngx_http_ratelimit_policy_usage_cmp(const void *one,
    const void *two);
static void ngx_http_ratelimit_policy_usage_recover(
    ngx_http_ratelimit_policy_shctx_t *ctx);
static void ngx_http_ratelimit_policy_usage_settle(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_counters_t *c, ngx_uint_t keep_age);
static void ngx_http_ratelimit_policy_usage_reclaim(ngx_log_t *log);


static ngx_str_t  ngx_http_ratelimit_policy_class_names[] = {
    ngx_string("send_message"),
    ngx_string("group"),
    ngx_string("check")
};


static ngx_http_ratelimit_policy_main_conf_t  *ngx_http_ratelimit_policy_uconf;
static ngx_http_ratelimit_policy_proc_t       *ngx_http_ratelimit_policy_proc;
static ngx_http_ratelimit_policy_batch_t       ngx_http_ratelimit_policy_batch;
static ngx_event_t                             ngx_http_ratelimit_policy_tick;
static ngx_uint_t                              ngx_http_ratelimit_policy_ticks;
static ngx_uint_t                              ngx_http_ratelimit_policy_final;
static ngx_pid_t                               ngx_http_ratelimit_policy_pids[
                                       NGX_HTTP_RATELIMIT_POLICY_USAGE_PROCS];


ngx_int_t
ngx_http_ratelimit_policy_usage_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf)
{
    ngx_http_ratelimit_policy_proc_t      *proc;
    ngx_http_ratelimit_policy_shctx_t     *ctx;
    ngx_http_ratelimit_policy_usage_sh_t  *u;

    ctx = rpmcf->shm_zone->data;

    ngx_http_ratelimit_policy_uconf = rpmcf;
    ngx_http_ratelimit_policy_proc = NULL;
    ngx_http_ratelimit_policy_ticks = 0;
    ngx_http_ratelimit_policy_final = 0;

    ngx_memzero(&ngx_http_ratelimit_policy_batch,
                sizeof(ngx_http_ratelimit_policy_batch_t));

    ngx_http_ratelimit_policy_batch.rows =
        ngx_alloc(NGX_HTTP_RATELIMIT_POLICY_USAGE_ROWS
                  * sizeof(ngx_http_ratelimit_policy_usage_row_t), cycle->log);
    if (ngx_http_ratelimit_policy_batch.rows == NULL) {
        return NGX_ERROR;
    }

    ngx_shmtx_lock(&ctx->shpool->mutex);

    u = ctx->sh->usage;

    if (u == NULL) {
        u = ngx_slab_calloc_locked(ctx->shpool,
                                sizeof(ngx_http_ratelimit_policy_usage_sh_t));
        if (u == NULL) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "ratelimit_policy: no room in the zone");
            return NGX_ERROR;
        }

        ngx_queue_init(&u->dirty);
        ngx_queue_init(&u->lazy);
        ngx_queue_init(&u->writing);
        ngx_queue_init(&u->procs);

        ctx->sh->usage = u;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    /* what a crashed predecessor held, or a process of our pid did */

    ngx_http_ratelimit_policy_usage_reclaim(cycle->log);

    ngx_shmtx_lock(&ctx->shpool->mutex);

    proc = ngx_http_ratelimit_policy_shm_alloc(ctx,
                                     sizeof(ngx_http_ratelimit_policy_proc_t));
    if (proc != NULL) {
        proc->pid = ngx_pid;
        ngx_queue_init(&proc->holds);
        ngx_queue_insert_tail(&u->procs, &proc->queue);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (proc == NULL) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "ratelimit_policy: no room in the zone for the ledger "
                      "of this process, requests in flight are not released "
                      "should it crash");
    }

    ngx_http_ratelimit_policy_proc = proc;

    ngx_memzero(&ngx_http_ratelimit_policy_tick, sizeof(ngx_event_t));
    ngx_http_ratelimit_policy_tick.handler =
                                         ngx_http_ratelimit_policy_usage_tick;
    ngx_http_ratelimit_policy_tick.log = cycle->log;
    ngx_http_ratelimit_policy_tick.data = ctx;
    ngx_http_ratelimit_policy_tick.cancelable = 1;

    /* spread the workers' ticks */

    ngx_add_timer(&ngx_http_ratelimit_policy_tick,
                  NGX_HTTP_RATELIMIT_POLICY_USAGE_TICK
                  + (ngx_worker * 61) % NGX_HTTP_RATELIMIT_POLICY_USAGE_TICK);

    return NGX_OK;
}


void
ngx_http_ratelimit_policy_usage_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_ratelimit_policy_batch_t  *b;

    /* a batch in flight is put back by whoever writes next */

    b = &ngx_http_ratelimit_policy_batch;

    if (ngx_http_ratelimit_policy_tick.timer_set) {
        ngx_del_timer(&ngx_http_ratelimit_policy_tick);
    }

    if (b->params) {
        ngx_free(b->params);
        b->params = NULL;
    }

    if (b->rows) {
        ngx_free(b->rows);
        b->rows = NULL;
    }
}


static void
ngx_http_ratelimit_policy_usage_tick(ngx_event_t *ev)
{
    if (ngx_exiting) {

        /* one last write of what is pending, then let the worker go */

        if (!ngx_http_ratelimit_policy_final) {
            ngx_http_ratelimit_policy_final = 1;

            if (!ngx_http_ratelimit_policy_batch.active) {
                ngx_http_ratelimit_policy_usage_start(1);
            }
        }

        return;
    }

    if (++ngx_http_ratelimit_policy_ticks
        % NGX_HTTP_RATELIMIT_POLICY_USAGE_RECLAIM == 0)
    {
        ngx_http_ratelimit_policy_usage_reclaim(ev->log);
    }

    if (!ngx_http_ratelimit_policy_batch.active) {
        ngx_http_ratelimit_policy_usage_start(0);
    }

    ngx_http_ratelimit_policy_usage_arm();
}


/*
 * The tick is cancelable while nothing waits to be written, so that an
 * idle worker exits at once; otherwise a worker shutting down gracefully
 * waits for one more tick, which writes.
 */

static void
ngx_http_ratelimit_policy_usage_arm(void)
{
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    ctx = ngx_http_ratelimit_policy_tick.data;

    /* an unlocked look is enough for a hint */

    ngx_http_ratelimit_policy_tick.cancelable =
                                    ngx_queue_empty(&ctx->sh->usage->dirty)
                                    && ngx_queue_empty(&ctx->sh->usage->lazy);

    ngx_add_timer(&ngx_http_ratelimit_policy_tick,
                  NGX_HTTP_RATELIMIT_POLICY_USAGE_TICK);
}


static void
ngx_http_ratelimit_policy_usage_start(ngx_uint_t force)
{
    ngx_msec_t                              now;
    ngx_uint_t                              took_over;
    ngx_queue_t                            *q;
    ngx_http_ratelimit_policy_batch_t      *b;
    ngx_http_ratelimit_policy_counters_t   *c;
    ngx_http_ratelimit_policy_shctx_t      *ctx;
    ngx_http_ratelimit_policy_usage_sh_t   *u;
    ngx_http_ratelimit_policy_pg_query_t   *pq;

    ctx = ngx_http_ratelimit_policy_tick.data;
    u = ctx->sh->usage;
    b = &ngx_http_ratelimit_policy_batch;

    if (ngx_queue_empty(&u->dirty) && ngx_queue_empty(&u->lazy)
        && u->owner == 0)
    {
        return;
    }

    now = ngx_current_msec;
    took_over = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    if (u->owner) {

        if ((ngx_msec_int_t) (now - u->deadline) < 0) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            return;
        }

        took_over = u->owner;
        ngx_http_ratelimit_policy_usage_recover(ctx);
    }

    if ((!force && (ngx_msec_int_t) (now - u->next) < 0)
        || !ngx_http_ratelimit_policy_usage_due(u, now, force))
    {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        goto done;
    }

    b->nrows = 0;
    b->started = now;
    b->age = 0;

    while (!ngx_queue_empty(&u->dirty)
           && b->nrows + NGX_HTTP_RATELIMIT_POLICY_NCLASSES
              <= NGX_HTTP_RATELIMIT_POLICY_USAGE_ROWS)
    {
        q = ngx_queue_head(&u->dirty);
        c = ngx_queue_data(q, ngx_http_ratelimit_policy_counters_t, queue);

        ngx_http_ratelimit_policy_usage_take(b, u, c, now);
    }

    /* the lazy queue is in the order of dirtying: its head is the oldest */

    while (!ngx_queue_empty(&u->lazy)
           && b->nrows + NGX_HTTP_RATELIMIT_POLICY_NCLASSES
              <= NGX_HTTP_RATELIMIT_POLICY_USAGE_ROWS)
    {
        q = ngx_queue_head(&u->lazy);
        c = ngx_queue_data(q, ngx_http_ratelimit_policy_counters_t, queue);

        if (!force
            && (uint32_t) now - c->dirtied
               < NGX_HTTP_RATELIMIT_POLICY_USAGE_LAZY)
        {
            break;
        }

        ngx_http_ratelimit_policy_usage_take(b, u, c, now);
    }

    u->owner = ngx_pid;
    b->seq = ++u->batch;
    u->deadline = now + ngx_http_ratelimit_policy_uconf->query_timeout + 1000;

    /* a backlog that does not fit in a batch goes on at the next tick */

    u->next = now + (ngx_http_ratelimit_policy_usage_due(u, now, force)
                     ? 0 : NGX_HTTP_RATELIMIT_POLICY_USAGE_INTERVAL);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    b->active = 1;

    if (b->nrows == 0) {
        ngx_http_ratelimit_policy_usage_finish(b, NULL);
        goto done;
    }

    ngx_qsort(b->rows, b->nrows, sizeof(ngx_http_ratelimit_policy_usage_row_t),
              ngx_http_ratelimit_policy_usage_cmp);

    if (ngx_http_ratelimit_policy_usage_params(b) != NGX_OK) {
        ngx_http_ratelimit_policy_usage_finish(b, NULL);
        goto done;
    }

    pq = &b->query;
    pq->stmt = NGX_HTTP_RATELIMIT_POLICY_STMT_USAGE;
    pq->handler = ngx_http_ratelimit_policy_usage_written;
    pq->data = b;
    pq->log = ngx_cycle->log;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pq->log, 0,
                   "ratelimit_policy: writing %ui usage rows, batch %ui",
                   b->nrows, b->seq);

    if (ngx_http_ratelimit_policy_pg_send(ngx_http_ratelimit_policy_uconf->pg,
                                          pq)
        != NGX_OK)
    {
        ngx_http_ratelimit_policy_usage_finish(b, NULL);
    }

done:

    if (took_over) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "ratelimit_policy: took over the usage write of "
                      "process %P, which did not finish it in time",
                      (ngx_pid_t) took_over);
    }
}


/* with the zone locked: whether a write is due */

static ngx_uint_t
ngx_http_ratelimit_policy_usage_due(ngx_http_ratelimit_policy_usage_sh_t *u,
    ngx_msec_t now, ngx_uint_t force)
{
    ngx_queue_t                           *q;
    ngx_http_ratelimit_policy_counters_t  *c;

    if (!ngx_queue_empty(&u->dirty)) {
        return 1;
    }

    if (ngx_queue_empty(&u->lazy)) {
        return 0;
    }

    q = ngx_queue_head(&u->lazy);
    c = ngx_queue_data(q, ngx_http_ratelimit_policy_counters_t, queue);

    return force
           || (uint32_t) now - c->dirtied
              >= NGX_HTTP_RATELIMIT_POLICY_USAGE_LAZY;
}


/* with the zone locked: the counters' pending counts into the batch */

static void
ngx_http_ratelimit_policy_usage_take(ngx_http_ratelimit_policy_batch_t *b,
    ngx_http_ratelimit_policy_usage_sh_t *u,
    ngx_http_ratelimit_policy_counters_t *c, ngx_msec_t now)
{
    uint32_t                                day, n;
    ngx_uint_t                              k;
    ngx_http_ratelimit_policy_usage_row_t  *row;

    ngx_queue_remove(&c->queue);
    ngx_queue_insert_tail(&u->writing, &c->queue);
    c->state = NGX_HTTP_RATELIMIT_POLICY_COUNTERS_WRITING;

    if ((uint32_t) now - c->dirtied > b->age) {
        b->age = (uint32_t) now - c->dirtied;
    }

    for (k = 0; k < NGX_HTTP_RATELIMIT_POLICY_NCLASSES; k++) {
        n = ngx_http_ratelimit_policy_window_take(&c->w.cls[k], &day);

        if (n == 0) {
            continue;
        }

        row = &b->rows[b->nrows++];
        row->counters = c;
        ngx_memcpy(row->instance, c->node->key,
                   NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);
        row->day = day;
        row->count = n;
        row->cls = k;
        row->written = 0;
    }
}


/* the four arrays as text: ids and classes need no quoting */

static ngx_int_t
ngx_http_ratelimit_policy_usage_params(ngx_http_ratelimit_policy_batch_t *b)
{
    u_char                                 *p, *start[4];
    size_t                                  size;
    ngx_str_t                              *name;
    ngx_uint_t                              i, k;
    ngx_http_ratelimit_policy_usage_row_t  *row;
    ngx_http_ratelimit_policy_pg_query_t   *q;

    size = b->nrows * (NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN + 1
                       + NGX_INT32_LEN + 1
                       + sizeof("send_message")
                       + NGX_INT32_LEN + 1)
           + 4 * sizeof("{}");

    if (b->params) {
        ngx_free(b->params);
    }

    b->params = ngx_alloc(size, ngx_cycle->log);
    if (b->params == NULL) {
        return NGX_ERROR;
    }

    p = b->params;

    for (k = 0; k < 4; k++) {
        start[k] = p;
        *p++ = '{';

        for (i = 0; i < b->nrows; i++) {
            row = &b->rows[i];

            if (i) {
                *p++ = ',';
            }

            switch (k) {
            case 0:
                p = ngx_cpymem(p, row->instance,
                               NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);
                break;
            case 1:
                p = ngx_sprintf(p, "%uD", row->day);
                break;
            case 2:
                name = &ngx_http_ratelimit_policy_class_names[row->cls];
                p = ngx_cpymem(p, name->data, name->len);
                break;
            default:
                p = ngx_sprintf(p, "%uD", row->count);
                break;
            }
        }

        *p++ = '}';
        *p++ = '\0';
    }

    q = &b->query;
    ngx_memzero(q, sizeof(ngx_http_ratelimit_policy_pg_query_t));
    q->nparams = 4;

    for (k = 0; k < 4; k++) {
        q->values[k] = (const char *) start[k];
        q->lengths[k] = 0;
        q->formats[k] = 0;
    }

    return NGX_OK;
}


static void
ngx_http_ratelimit_policy_usage_written(ngx_http_ratelimit_policy_pg_query_t *q)
{
    ngx_http_ratelimit_policy_batch_t  *b;

    b = q->data;

    if (q->rc != NGX_HTTP_RATELIMIT_POLICY_PG_OK) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "ratelimit_policy: could not write daily usage "
                      "(%ui rows), will retry", b->nrows);

        ngx_http_ratelimit_policy_usage_finish(b, NULL);
        return;
    }

    ngx_http_ratelimit_policy_usage_finish(b, q->result);
}


/* res == NULL: nothing was written */

static void
ngx_http_ratelimit_policy_usage_finish(ngx_http_ratelimit_policy_batch_t *b,
    PGresult *res)
{
    int                                     i, n;
    u_char                                 *v;
    size_t                                  len;
    int64_t                                 total;
    ngx_int_t                               day;
    ngx_uint_t                              k, written, more;
    ngx_http_ratelimit_policy_shctx_t      *ctx;
    ngx_http_ratelimit_policy_usage_sh_t   *u;
    ngx_http_ratelimit_policy_usage_row_t  *row;

    ctx = ngx_http_ratelimit_policy_tick.data;
    u = ctx->sh->usage;

    b->active = 0;
    written = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    if (u->owner != ngx_pid || u->batch != b->seq) {
        /* taken over: the counts were put back, nothing to do */
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return;
    }

    n = res ? PQntuples(res) : 0;

    if (res && PQnfields(res) != 4) {
        n = 0;
    }

    for (i = 0; i < n; i++) {

        for (k = 0; k < NGX_HTTP_RATELIMIT_POLICY_NCLASSES; k++) {
            if ((size_t) PQgetlength(res, i, 2)
                    == ngx_http_ratelimit_policy_class_names[k].len
                && ngx_strncmp(PQgetvalue(res, i, 2),
                               ngx_http_ratelimit_policy_class_names[k].data,
                               ngx_http_ratelimit_policy_class_names[k].len)
                   == 0)
            {
                break;
            }
        }

        row = ngx_http_ratelimit_policy_usage_find(b,
                                             (u_char *) PQgetvalue(res, i, 0),
                                             PQgetlength(res, i, 0), k);

        day = ngx_atoi((u_char *) PQgetvalue(res, i, 1),
                       PQgetlength(res, i, 1));

        v = (u_char *) PQgetvalue(res, i, 3);
        len = PQgetlength(res, i, 3);
        total = ngx_atoof(v, len);

        if (row == NULL || row->written || day != (ngx_int_t) row->day
            || total == NGX_ERROR)
        {
            continue;
        }

        ngx_http_ratelimit_policy_window_written(
                                     &row->counters->w.cls[row->cls],
                                     row->day, total);
        row->written = 1;
        written++;
    }

    for (k = 0; k < b->nrows; k++) {
        row = &b->rows[k];

        if (!row->written) {
            ngx_http_ratelimit_policy_window_unwritten(
                                     &row->counters->w.cls[row->cls]);
        }
    }

    for (k = 0; k < b->nrows; k++) {
        ngx_http_ratelimit_policy_usage_settle(ctx, b->rows[k].counters,
                                               !b->rows[k].written);
    }

    /* what was taken but had no row (nothing to write) settles too */

    ngx_http_ratelimit_policy_usage_recover(ctx);

    u->owner = 0;
    more = !ngx_queue_empty(&u->dirty) || !ngx_queue_empty(&u->lazy);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    (void) ngx_atomic_fetch_add(&u->batches, 1);
    (void) ngx_atomic_fetch_add(&u->rows, written);

    if (written < b->nrows) {
        (void) ngx_atomic_fetch_add(&u->errors, 1);
    }

    if (b->nrows) {
        ngx_http_ratelimit_policy_metrics_sync_batch(written,
                                                     written == b->nrows,
                                                     b->age + ngx_current_msec
                                                     - b->started);
    }

    if (b->params) {
        ngx_free(b->params);
        b->params = NULL;
    }

    /* shutting down: write everything while writes succeed */

    if (ngx_exiting && more && written == b->nrows && b->nrows) {
        ngx_http_ratelimit_policy_usage_start(1);
    }
}


static ngx_http_ratelimit_policy_usage_row_t *
ngx_http_ratelimit_policy_usage_find(ngx_http_ratelimit_policy_batch_t *b,
    u_char *instance, size_t len, ngx_uint_t cls)
{
    ngx_int_t                               rc;
    ngx_uint_t                              lo, hi, mid;
    ngx_http_ratelimit_policy_usage_row_t  *row;

    if (len != NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN
        || cls >= NGX_HTTP_RATELIMIT_POLICY_NCLASSES)
    {
        return NULL;
    }

    lo = 0;
    hi = b->nrows;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        row = &b->rows[mid];

        rc = ngx_memcmp(instance, row->instance,
                        NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

        if (rc == 0) {
            rc = (ngx_int_t) cls - (ngx_int_t) row->cls;
        }

        if (rc == 0) {
            return row;
        }

        if (rc < 0) {
            hi = mid;

        } else {
            lo = mid + 1;
        }
    }

    return NULL;
}


static int ngx_libc_cdecl
ngx_http_ratelimit_policy_usage_cmp(const void *one, const void *two)
{
    int                                     rc;
    ngx_http_ratelimit_policy_usage_row_t  *a, *b;

    a = (ngx_http_ratelimit_policy_usage_row_t *) one;
    b = (ngx_http_ratelimit_policy_usage_row_t *) two;

    rc = ngx_memcmp(a->instance, b->instance,
                    NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

    if (rc == 0) {
        rc = (int) a->cls - (int) b->cls;
    }

    return rc;
}


/* with the zone locked: every counters being written back to pending */

static void
ngx_http_ratelimit_policy_usage_recover(ngx_http_ratelimit_policy_shctx_t *ctx)
{
    ngx_uint_t                             k;
    ngx_queue_t                           *q;
    ngx_http_ratelimit_policy_counters_t  *c;
    ngx_http_ratelimit_policy_usage_sh_t  *u;

    u = ctx->sh->usage;

    while (!ngx_queue_empty(&u->writing)) {
        q = ngx_queue_head(&u->writing);
        c = ngx_queue_data(q, ngx_http_ratelimit_policy_counters_t, queue);

        for (k = 0; k < NGX_HTTP_RATELIMIT_POLICY_NCLASSES; k++) {
            ngx_http_ratelimit_policy_window_unwritten(&c->w.cls[k]);
        }

        ngx_http_ratelimit_policy_usage_settle(ctx, c, 1);
    }

    u->owner = 0;
}


/* with the zone locked: out of the writing queue, dirty again if need be */

static void
ngx_http_ratelimit_policy_usage_settle(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_counters_t *c, ngx_uint_t keep_age)
{
    uint32_t  dirtied;

    if (c->state != NGX_HTTP_RATELIMIT_POLICY_COUNTERS_WRITING) {
        return;
    }

    ngx_queue_remove(&c->queue);
    c->state = NGX_HTTP_RATELIMIT_POLICY_COUNTERS_CLEAN;

    dirtied = c->dirtied;

    ngx_http_ratelimit_policy_usage_dirty(ctx, c, 0);

    if (c->state == NGX_HTTP_RATELIMIT_POLICY_COUNTERS_CLEAN) {
        /* all written: the next admission says whether a cap applies */
        c->capped = 0;

    } else if (keep_age) {
        /* a count that failed to be written keeps its age */
        c->dirtied = dirtied;
    }
}


ngx_http_ratelimit_policy_counters_t *
ngx_http_ratelimit_policy_usage_counters(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_node_t *node)
{
    uint32_t                               loading;
    ngx_http_ratelimit_policy_counters_t  *c;

    if (node->counters != NULL) {
        return node->counters;
    }

    /*
     * making room may evict entries: not this one, which looks like it
     * is being loaded while the allocation runs (the zone is locked, so
     * nobody else sees that)
     */

    loading = node->loading;
    node->loading = (uint32_t) (ngx_current_msec + 3600000);

    c = ngx_http_ratelimit_policy_shm_alloc(ctx,
                                 sizeof(ngx_http_ratelimit_policy_counters_t));

    node->loading = loading;

    if (c == NULL) {
        return NULL;
    }

    ngx_memzero(c, sizeof(ngx_http_ratelimit_policy_counters_t));

    c->node = node;
    c->state = NGX_HTTP_RATELIMIT_POLICY_COUNTERS_CLEAN;
    node->counters = c;

    return c;
}


ngx_http_ratelimit_policy_hold_t *
ngx_http_ratelimit_policy_usage_hold(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_counters_t *c)
{
    ngx_http_ratelimit_policy_hold_t  *h;

    if (ngx_http_ratelimit_policy_proc == NULL) {
        return NULL;
    }

    /* the counters hold a request in flight: they are not evicted */

    h = ngx_http_ratelimit_policy_shm_alloc(ctx,
                                     sizeof(ngx_http_ratelimit_policy_hold_t));
    if (h == NULL) {
        return NULL;
    }

    h->counters = c;
    ngx_queue_insert_tail(&ngx_http_ratelimit_policy_proc->holds, &h->queue);

    return h;
}


void
ngx_http_ratelimit_policy_usage_release(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_counters_t *c,
    ngx_http_ratelimit_policy_hold_t *h)
{
    ngx_shmtx_lock(&ctx->shpool->mutex);

    ngx_http_ratelimit_policy_window_release(&c->w);

    if (h != NULL) {
        ngx_queue_remove(&h->queue);
        ngx_slab_free_locked(ctx->shpool, h);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/* capped: the admission had a daily cap, its count is written within 1 s */

void
ngx_http_ratelimit_policy_usage_dirty(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_counters_t *c, ngx_uint_t capped)
{
    ngx_http_ratelimit_policy_usage_sh_t  *u;

    u = ctx->sh->usage;

    if (capped) {
        c->capped = 1;
    }

    if (u == NULL) {
        return;
    }

    if (c->state == NGX_HTTP_RATELIMIT_POLICY_COUNTERS_LAZY) {

        if (c->capped) {
            ngx_queue_remove(&c->queue);
            ngx_queue_insert_tail(&u->dirty, &c->queue);
            c->state = NGX_HTTP_RATELIMIT_POLICY_COUNTERS_DIRTY;
        }

        return;
    }

    if (c->state != NGX_HTTP_RATELIMIT_POLICY_COUNTERS_CLEAN
        || ngx_http_ratelimit_policy_window_clean(&c->w))
    {
        return;
    }

    if (c->capped) {
        ngx_queue_insert_tail(&u->dirty, &c->queue);
        c->state = NGX_HTTP_RATELIMIT_POLICY_COUNTERS_DIRTY;

    } else {
        ngx_queue_insert_tail(&u->lazy, &c->queue);
        c->state = NGX_HTTP_RATELIMIT_POLICY_COUNTERS_LAZY;
    }

    c->dirtied = (uint32_t) ngx_current_msec;

    /* this worker, should it be told to quit now, first ticks once more */
    ngx_http_ratelimit_policy_tick.cancelable = 0;
}


void
ngx_http_ratelimit_policy_usage_fill(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_node_t *node, ngx_uint_t day, int64_t *usage)
{
    uint32_t                               today;
    ngx_uint_t                             k;
    ngx_http_ratelimit_policy_counters_t  *c;

    c = node->counters;

    if (c == NULL) {
        for (k = 0; k < NGX_HTTP_RATELIMIT_POLICY_NCLASSES; k++) {
            if (usage[k] > 0) {
                break;
            }
        }

        if (k == NGX_HTTP_RATELIMIT_POLICY_NCLASSES) {
            /* nothing used today: the counters come with the first use */
            return;
        }

        c = ngx_http_ratelimit_policy_usage_counters(ctx, node);

        if (c == NULL) {
            return;
        }
    }

    today = ngx_http_ratelimit_policy_window_today(ngx_time());

    for (k = 0; k < NGX_HTTP_RATELIMIT_POLICY_NCLASSES; k++) {
        ngx_http_ratelimit_policy_window_day(&c->w.cls[k], today);
        ngx_http_ratelimit_policy_window_fill(&c->w.cls[k], (uint32_t) day,
                                              usage[k]);
    }
}


ngx_uint_t
ngx_http_ratelimit_policy_usage_evictable(
    ngx_http_ratelimit_policy_node_t *node)
{
    ngx_http_ratelimit_policy_counters_t  *c;

    c = node->counters;

    if (c == NULL) {
        return 1;
    }

    return c->w.inflight == 0
           && c->state == NGX_HTTP_RATELIMIT_POLICY_COUNTERS_CLEAN
           && ngx_http_ratelimit_policy_window_clean(&c->w);
}


void
ngx_http_ratelimit_policy_usage_free(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_node_t *node)
{
    if (node->counters != NULL) {
        ngx_slab_free_locked(ctx->shpool, node->counters);
        node->counters = NULL;
    }
}


/*
 * Releases what processes that are gone held in flight.  A process of our
 * own pid that is not us is gone too (the pid was reused).
 */

static void
ngx_http_ratelimit_policy_usage_reclaim(ngx_log_t *log)
{
    ngx_err_t                              err;
    ngx_uint_t                             i, n, dead, held;
    ngx_pid_t                             *pids;
    ngx_queue_t                           *q, *next, *hq;
    ngx_http_ratelimit_policy_hold_t      *h;
    ngx_http_ratelimit_policy_proc_t      *proc;
    ngx_http_ratelimit_policy_shctx_t     *ctx;
    ngx_http_ratelimit_policy_usage_sh_t  *u;

    ctx = ngx_http_ratelimit_policy_uconf->shm_zone->data;
    u = ctx->sh->usage;
    pids = ngx_http_ratelimit_policy_pids;
    n = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    for (q = ngx_queue_head(&u->procs);
         q != ngx_queue_sentinel(&u->procs)
         && n < NGX_HTTP_RATELIMIT_POLICY_USAGE_PROCS;
         q = ngx_queue_next(q))
    {
        proc = ngx_queue_data(q, ngx_http_ratelimit_policy_proc_t, queue);

        if (proc != ngx_http_ratelimit_policy_proc) {
            pids[n++] = proc->pid;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    /* signal 0 tells whether the process exists; outside of the lock */

    for (i = 0; i < n; i++) {
        if (pids[i] == ngx_pid) {
            continue;
        }

        if (kill(pids[i], 0) == -1) {
            err = ngx_errno;

            if (err == NGX_ESRCH) {
                continue;
            }
        }

        /* alive */
        pids[i] = 0;
    }

    dead = 0;
    held = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    for (q = ngx_queue_head(&u->procs);
         q != ngx_queue_sentinel(&u->procs);
         q = next)
    {
        next = ngx_queue_next(q);
        proc = ngx_queue_data(q, ngx_http_ratelimit_policy_proc_t, queue);

        if (proc == ngx_http_ratelimit_policy_proc) {
            continue;
        }

        for (i = 0; i < n; i++) {
            if (pids[i] != 0 && pids[i] == proc->pid) {
                break;
            }
        }

        if (i == n) {
            continue;
        }

        while (!ngx_queue_empty(&proc->holds)) {
            hq = ngx_queue_head(&proc->holds);
            h = ngx_queue_data(hq, ngx_http_ratelimit_policy_hold_t, queue);

            ngx_http_ratelimit_policy_window_release(&h->counters->w);

            ngx_queue_remove(hq);
            ngx_slab_free_locked(ctx->shpool, h);
            held++;
        }

        ngx_queue_remove(q);
        ngx_slab_free_locked(ctx->shpool, proc);
        dead++;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (held) {
        (void) ngx_atomic_fetch_add(&u->reclaimed, held);

        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "ratelimit_policy: released %ui requests in flight "
                      "of %ui exited processes", held, dead);
    }
}
