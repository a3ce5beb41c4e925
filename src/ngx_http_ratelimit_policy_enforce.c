
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * ratelimit_policy_enforce: the access phase handler, the rate-limit
 * response headers, the rejection.
 *
 * A request is authenticated like the API does it, its instance's
 * effective policy looked up (from the zone; on a miss the lookup may
 * answer later, and the handler then runs again from the phase engine),
 * and the limits of its class checked and committed in one step under the
 * zone lock (see ngx_http_ratelimit_policy_window.c).  An admitted request
 * holds one unit of its instance's concurrency until its pool is
 * destroyed: finalization, client abort, upstream error alike.
 *
 * One decision per request: only the main request is enforced, and its
 * state lives in a pool cleanup, which an internal redirect (error_page,
 * try_files, named locations) does not clear as it clears the module
 * contexts; the redirected request finds it there and is not counted
 * again.  A header filter adds the headers to whatever response the
 * request ends with: the upstream's, an error page, or the rejection.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <yajl/yajl_gen.h>
#include "ngx_http_ratelimit_policy_enforce.h"
#include "ngx_http_ratelimit_policy_api.h"
#include "ngx_http_ratelimit_policy_cache.h"
#include "ngx_http_ratelimit_policy_metrics.h"
#include "ngx_http_ratelimit_policy_shm.h"
#include "ngx_http_ratelimit_policy_usage.h"
#include "ngx_http_ratelimit_policy_window.h"


#define NGX_HTTP_RATELIMIT_POLICY_ENFORCE_NEW       0
#define NGX_HTTP_RATELIMIT_POLICY_ENFORCE_WAITING   1
#define NGX_HTTP_RATELIMIT_POLICY_ENFORCE_RESOLVED  2
#define NGX_HTTP_RATELIMIT_POLICY_ENFORCE_DONE      3

/* $ratelimit_policy_status */
#define NGX_HTTP_RATELIMIT_POLICY_PASSED            1
#define NGX_HTTP_RATELIMIT_POLICY_REJECTED          2
#define NGX_HTTP_RATELIMIT_POLICY_REJECTED_DRY_RUN  3
#define NGX_HTTP_RATELIMIT_POLICY_ERROR             4


typedef struct {
    /* first: the module's request context, as the API and variables see it */
    ngx_http_ratelimit_policy_ctx_t             base;

    ngx_http_ratelimit_policy_shctx_t          *shctx;
    ngx_http_ratelimit_policy_counters_t       *counters;   /* in flight */
    ngx_http_ratelimit_policy_hold_t           *hold;
    ngx_http_ratelimit_policy_window_limits_t   lim;
    ngx_http_ratelimit_policy_window_result_t   res;
    ngx_msec_t                                  decided;
    ngx_uint_t                                  state;
    ngx_uint_t                                  cls;
    ngx_uint_t                                  limit;    /* rejected by */
    ngx_uint_t                                  status;
    unsigned                                    decision:1;
    unsigned                                    headers:1;
    unsigned                                    headers_done:1;

    /* in the free list, see below */
    void                                       *free_next;
} ngx_http_ratelimit_policy_enforce_ctx_t;


/*
 * The contexts of finished requests, kept by each worker for the next
 * ones.  A context is some 600 bytes: taken from the request's pool, it
 * needed a pool block of its own whenever less was left in the pool's
 * last block, one more allocation and free for the request; with the
 * bench's proxied requests, for every one.  Up to _FREE_MAX are kept,
 * about 160 KB; none under AddressSanitizer, which then still sees any
 * use of a context after its request.
 */

#if (defined __has_feature)
#if (__has_feature(address_sanitizer))
#define NGX_HTTP_RATELIMIT_POLICY_ENFORCE_ASAN      1
#endif
#endif

#if (defined __SANITIZE_ADDRESS__                                            \
     || defined NGX_HTTP_RATELIMIT_POLICY_ENFORCE_ASAN)
#define NGX_HTTP_RATELIMIT_POLICY_ENFORCE_FREE_MAX  0
#else
#define NGX_HTTP_RATELIMIT_POLICY_ENFORCE_FREE_MAX  256
#endif


static ngx_int_t ngx_http_ratelimit_policy_enforce_handler(
    ngx_http_request_t *r);
static void ngx_http_ratelimit_policy_enforce_resume(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_policy_enforce_cached(
    ngx_http_request_t *r, ngx_http_ratelimit_policy_enforce_ctx_t *ectx);
static ngx_int_t ngx_http_ratelimit_policy_enforce_decide(
    ngx_http_request_t *r, ngx_http_ratelimit_policy_enforce_ctx_t *ectx);
static void ngx_http_ratelimit_policy_enforce_limits(
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx,
    ngx_http_ratelimit_policy_policy_t *p);
static void ngx_http_ratelimit_policy_enforce_count(
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx,
    ngx_http_ratelimit_policy_counters_t *c);
static ngx_int_t ngx_http_ratelimit_policy_enforce_verdict(
    ngx_http_request_t *r, ngx_http_ratelimit_policy_enforce_ctx_t *ectx);
static ngx_int_t ngx_http_ratelimit_policy_enforce_fail(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx, ngx_uint_t status,
    const char *code, const char *message);
static ngx_int_t ngx_http_ratelimit_policy_enforce_reject(
    ngx_http_request_t *r, ngx_http_ratelimit_policy_enforce_ctx_t *ectx,
    ngx_http_ratelimit_policy_loc_conf_t *rpcf);
static ngx_int_t ngx_http_ratelimit_policy_enforce_body(ngx_pool_t *pool,
    ngx_str_t *out, const char *limit, int64_t retry, const char *message);
static ngx_uint_t ngx_http_ratelimit_policy_enforce_limit(
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx, int64_t *value);
static void ngx_http_ratelimit_policy_enforce_log(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx,
    ngx_http_ratelimit_policy_loc_conf_t *rpcf, int64_t value);
static ngx_http_ratelimit_policy_enforce_ctx_t *
    ngx_http_ratelimit_policy_enforce_create_ctx(ngx_http_request_t *r);
static void ngx_http_ratelimit_policy_enforce_cleanup(void *data);
static ngx_http_ratelimit_policy_enforce_ctx_t *
    ngx_http_ratelimit_policy_enforce_get_ctx(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_policy_enforce_header_filter(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_policy_enforce_headers(
    ngx_http_request_t *r, ngx_http_ratelimit_policy_enforce_ctx_t *ectx);
static u_char *ngx_http_ratelimit_policy_enforce_num(u_char *p, int64_t n);
static ngx_uint_t ngx_http_ratelimit_policy_enforce_tightest(
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx, int64_t *limit,
    int64_t *remaining, int64_t *reset);
static ngx_int_t ngx_http_ratelimit_policy_enforce_add_header(
    ngx_http_request_t *r, ngx_str_t *name, u_char *value, size_t len);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;

static ngx_http_ratelimit_policy_enforce_ctx_t
                         *ngx_http_ratelimit_policy_enforce_free;
static ngx_uint_t         ngx_http_ratelimit_policy_enforce_nfree;


/* the limits of each class, as indexes of a policy's limits[] */

static ngx_uint_t  ngx_http_ratelimit_policy_minute_limit[] = {
    NGX_HTTP_RATELIMIT_POLICY_SEND_PER_MINUTE,
    NGX_HTTP_RATELIMIT_POLICY_GROUP_PER_MINUTE,
    NGX_HTTP_RATELIMIT_POLICY_CHECK_PER_MINUTE
};

static ngx_uint_t  ngx_http_ratelimit_policy_daily_limit[] = {
    NGX_HTTP_RATELIMIT_POLICY_SEND_DAILY,
    NGX_HTTP_RATELIMIT_POLICY_GROUP_DAILY,
    NGX_HTTP_RATELIMIT_POLICY_CHECK_DAILY
};

static const char  *ngx_http_ratelimit_policy_limit_field[] = {
    "send_message_per_minute",
    "send_message_daily_cap",
    "account_protection_seconds",
    "concurrent_limit",
    "group_req_per_minute",
    "group_daily_cap",
    "check_req_per_minute",
    "check_daily_cap"
};

static const char  *ngx_http_ratelimit_policy_class_name[] = {
    "send_message",
    "group",
    "check"
};

static ngx_str_t  ngx_http_ratelimit_policy_status_name[] = {
    ngx_null_string,
    ngx_string("PASSED"),
    ngx_string("REJECTED"),
    ngx_string("REJECTED_DRY_RUN"),
    ngx_string("ERROR")
};

static ngx_str_t  ngx_http_ratelimit_policy_h_limit =
    ngx_string("X-RateLimit-Limit");
static ngx_str_t  ngx_http_ratelimit_policy_h_remaining =
    ngx_string("X-RateLimit-Remaining");
static ngx_str_t  ngx_http_ratelimit_policy_h_reset =
    ngx_string("X-RateLimit-Reset");
static ngx_str_t  ngx_http_ratelimit_policy_h_policy =
    ngx_string("RateLimit-Policy");
static ngx_str_t  ngx_http_ratelimit_policy_h_ratelimit =
    ngx_string("RateLimit");
static ngx_str_t  ngx_http_ratelimit_policy_h_retry_after =
    ngx_string("Retry-After");


#define ngx_yajl_str(g, s)                                                   \
    (yajl_gen_string(g, (const unsigned char *) s, ngx_strlen(s))            \
     == yajl_gen_status_ok)


ngx_int_t
ngx_http_ratelimit_policy_enforce_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_ratelimit_policy_enforce_handler;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter =
                              ngx_http_ratelimit_policy_enforce_header_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_policy_enforce_handler(ngx_http_request_t *r)
{
    ngx_int_t                                 rc;
    ngx_uint_t                                status;
    const char                               *code, *message;
    ngx_http_ratelimit_policy_loc_conf_t     *rpcf;
    ngx_http_ratelimit_policy_main_conf_t    *rpmcf;
    ngx_http_ratelimit_policy_enforce_ctx_t  *ectx;

    rpcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_policy_module);

    if (rpcf->enforce == 0 || r != r->main) {
        return NGX_DECLINED;
    }

    ectx = ngx_http_ratelimit_policy_enforce_get_ctx(r);

    if (ectx != NULL) {

        switch (ectx->state) {

        case NGX_HTTP_RATELIMIT_POLICY_ENFORCE_WAITING:
            /* the phases ran for another reason: still waiting */
            return NGX_AGAIN;

        case NGX_HTTP_RATELIMIT_POLICY_ENFORCE_RESOLVED:
            return ngx_http_ratelimit_policy_enforce_decide(r, ectx);

        default:
            /* decided before an internal redirect: counted once */
            return NGX_DECLINED;
        }
    }

    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);

    if (rpmcf->shm_zone == NULL) {
        return NGX_DECLINED;
    }

    ectx = ngx_http_ratelimit_policy_enforce_create_ctx(r);
    if (ectx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the resume handler tells this context from the API's */
    ectx->base.lookup.resume = ngx_http_ratelimit_policy_enforce_resume;
    ectx->shctx = rpmcf->shm_zone->data;
    ectx->cls = rpcf->enforce - 1;
    ectx->state = NGX_HTTP_RATELIMIT_POLICY_ENFORCE_DONE;

    ngx_http_set_ctx(r, ectx, ngx_http_ratelimit_policy_module);

    rc = ngx_http_ratelimit_policy_credentials(r, &ectx->base, &status, &code,
                                               &message);

    if (rc == NGX_ERROR) {
        ectx->status = NGX_HTTP_RATELIMIT_POLICY_ERROR;
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_ratelimit_policy_enforce_fail(r, ectx, status, code,
                                                      message);
    }

    if (ngx_http_ratelimit_policy_enforce_cached(r, ectx) == NGX_OK) {
        return ngx_http_ratelimit_policy_enforce_verdict(r, ectx);
    }

    rc = ngx_http_ratelimit_policy_resolve(r, &ectx->base.lookup);

    if (rc == NGX_AGAIN) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "ratelimit_policy: waiting for the lookup of \"%V\"",
                       &ectx->base.instance);

        /* a client that goes away meanwhile is noticed, see the cleanup */

        ectx->state = NGX_HTTP_RATELIMIT_POLICY_ENFORCE_WAITING;
        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;

        return NGX_AGAIN;
    }

    if (rc == NGX_ERROR) {
        ectx->status = NGX_HTTP_RATELIMIT_POLICY_ERROR;
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_policy_enforce_decide(r, ectx);
}


static void
ngx_http_ratelimit_policy_enforce_resume(ngx_http_request_t *r)
{
    ngx_connection_t                         *c;
    ngx_http_ratelimit_policy_enforce_ctx_t  *ectx;

    c = r->connection;

    ectx = ngx_http_ratelimit_policy_enforce_get_ctx(r);

    if (ectx == NULL
        || ectx->state != NGX_HTTP_RATELIMIT_POLICY_ENFORCE_WAITING)
    {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "ratelimit_policy: unexpected lookup result");
        return;
    }

    ectx->state = NGX_HTTP_RATELIMIT_POLICY_ENFORCE_RESOLVED;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);

    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_ratelimit_policy_enforce_decide(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx)
{
    ngx_int_t                              rc;
    ngx_uint_t                             status;
    const char                            *code, *message;
    ngx_http_ratelimit_policy_node_t      *node;
    ngx_http_ratelimit_policy_policy_t    *p;
    ngx_http_ratelimit_policy_shctx_t     *ctx;
    ngx_http_ratelimit_policy_counters_t  *c;

    ectx->state = NGX_HTTP_RATELIMIT_POLICY_ENFORCE_DONE;

    rc = ngx_http_ratelimit_policy_authorize(r, &ectx->base, &status, &code,
                                             &message);

    if (rc == NGX_ERROR) {
        ectx->status = NGX_HTTP_RATELIMIT_POLICY_ERROR;
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_ratelimit_policy_enforce_fail(r, ectx, status, code,
                                                      message);
    }

    p = ectx->base.effective;

    if (p == NULL) {
        return ngx_http_ratelimit_policy_enforce_fail(r, ectx,
                                        NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "policy_unavailable",
                                        "no policy applies to this instance, "
                                        "retry later");
    }

    ngx_http_ratelimit_policy_enforce_limits(ectx, p);

    ctx = ectx->shctx;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    /* the entry the lookup found, unless it was evicted since */

    node = ectx->base.lookup.node;

    if (node == NULL
        || !ngx_http_ratelimit_policy_shm_alive(node,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       ectx->base.lookup.instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN))
    {
        node = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       ectx->base.lookup.instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);
    }

    if (node == NULL) {
        /* evicted since the lookup: counting starts again */
        node = ngx_http_ratelimit_policy_shm_create(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       ectx->base.lookup.instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);
    }

    c = (node != NULL) ? ngx_http_ratelimit_policy_usage_counters(ctx, node)
                       : NULL;

    if (c == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);

        /* a request is never failed because the zone is full */

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "ratelimit_policy: no room in the zone for the "
                      "counters of instance \"%V\", request not counted",
                      &ectx->base.instance);

        ngx_http_ratelimit_policy_metrics_enforced(ectx->cls,
                                   NGX_HTTP_RATELIMIT_POLICY_METRICS_NO_LIMIT,
                                   NGX_HTTP_RATELIMIT_POLICY_VERDICT_ADMITTED);

        ectx->status = NGX_HTTP_RATELIMIT_POLICY_PASSED;
        return NGX_DECLINED;
    }

    ngx_http_ratelimit_policy_enforce_count(ectx, c);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return ngx_http_ratelimit_policy_enforce_verdict(r, ectx);
}


/*
 * The common case in one critical section, without the lookup's copy of
 * the entry: resolve() would answer from the zone at once, authorize()
 * would accept the token by its keyed hash (see
 * ngx_http_ratelimit_policy_cached()), and the instance has its counters.
 * NGX_DECLINED: not so, the lookup and decide() take over.
 */

static ngx_int_t
ngx_http_ratelimit_policy_enforce_cached(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx)
{
    ngx_uint_t                              stored;
    ngx_http_ratelimit_policy_node_t       *node;
    ngx_http_ratelimit_policy_policy_t     *p;
    ngx_http_ratelimit_policy_lookup_t     *lk;
    ngx_http_ratelimit_policy_shctx_t      *ctx;
    ngx_http_ratelimit_policy_catalog_t    *cat;
    ngx_http_ratelimit_policy_counters_t   *c;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    /* the worker's copy of the catalogue, current: it cannot go meanwhile */

    cat = ngx_http_ratelimit_policy_catalog_current();

    if (cat == NULL) {
        return NGX_DECLINED;
    }

    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);

    ctx = ectx->shctx;
    lk = &ectx->base.lookup;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    node = ngx_http_ratelimit_policy_cached(ctx, lk);

    if (node == NULL || node->counters == NULL) {
        goto declined;
    }

    c = node->counters;

    ngx_http_ratelimit_policy_usage_prefetch(c);

    p = ngx_http_ratelimit_policy_effective(cat, rpmcf,
                                        node->has_slug ? node->slug : NULL,
                                        node->slug_len, node->has_active_plan,
                                        &stored);
    if (p == NULL) {
        /* decide() logs it, and answers */
        goto declined;
    }

    /* what $ratelimit_policy shows, as authorize() sets it */

    if (stored) {
        ngx_memcpy(lk->slug, node->slug, node->slug_len);

        ectx->base.policy.data = lk->slug;
        ectx->base.policy.len = node->slug_len;

    } else {
        ectx->base.policy = rpmcf->default_slug;
    }

    ngx_http_ratelimit_policy_enforce_limits(ectx, p);
    ngx_http_ratelimit_policy_enforce_count(ectx, c);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_http_ratelimit_policy_stat(ctx, cache_hits);

    return NGX_OK;

declined:

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return NGX_DECLINED;
}


/* the limits of the request's class */

static void
ngx_http_ratelimit_policy_enforce_limits(
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx,
    ngx_http_ratelimit_policy_policy_t *p)
{
    ngx_uint_t  cls;

    cls = ectx->cls;

    ectx->lim.per_minute =
                      p->limits[ngx_http_ratelimit_policy_minute_limit[cls]];
    ectx->lim.daily = p->limits[ngx_http_ratelimit_policy_daily_limit[cls]];
    ectx->lim.protection = p->limits[NGX_HTTP_RATELIMIT_POLICY_PROTECTION];
    ectx->lim.concurrent = p->limits[NGX_HTTP_RATELIMIT_POLICY_CONCURRENT];
}


/* with the zone locked: the decision, and what an admission holds */

static void
ngx_http_ratelimit_policy_enforce_count(
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx,
    ngx_http_ratelimit_policy_counters_t *c)
{
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    ctx = ectx->shctx;

    /* the monotonic clock for the minute and the cool-down, UTC for days */

    (void) ngx_http_ratelimit_policy_window_decide(&c->w,
                                                  (unsigned) ectx->cls,
                                                  &ectx->lim,
                                                  (uint64_t) ngx_current_msec,
                                                  (int64_t) ngx_time(),
                                                  &ectx->res);

    if (ectx->res.verdict != NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS) {
        return;
    }

    if (ectx->lim.concurrent >= 0) {
        ectx->counters = c;
        ectx->hold = ngx_http_ratelimit_policy_usage_hold(ctx, c);

    } else {
        /* no concurrency limit: nothing to hold while in flight */
        ngx_http_ratelimit_policy_window_release(&c->w);
    }

    ngx_http_ratelimit_policy_usage_dirty(ctx, c, ectx->lim.daily >= 0);
}


/* after the decision: the request goes on, or is rejected */

static ngx_int_t
ngx_http_ratelimit_policy_enforce_verdict(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx)
{
    int64_t                                value;
    ngx_uint_t                             cls;
    ngx_http_ratelimit_policy_loc_conf_t  *rpcf;

    rpcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_policy_module);

    cls = ectx->cls;

    ectx->decision = 1;
    ectx->decided = ngx_current_msec;
    ectx->headers = rpcf->headers
                    && (ectx->res.minute_limit >= 0
                        || ectx->res.day_limit >= 0);

    if (ectx->res.verdict == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS) {
        ngx_http_ratelimit_policy_metrics_enforced(cls,
                                   NGX_HTTP_RATELIMIT_POLICY_METRICS_NO_LIMIT,
                                   NGX_HTTP_RATELIMIT_POLICY_VERDICT_ADMITTED);

        ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "ratelimit_policy: passed \"%V\" %s, minute left %L, "
                       "day left %L", &ectx->base.instance,
                       ngx_http_ratelimit_policy_class_name[cls],
                       ectx->res.minute_remaining, ectx->res.day_remaining);

        ectx->status = NGX_HTTP_RATELIMIT_POLICY_PASSED;
        return NGX_DECLINED;
    }

    ectx->limit = ngx_http_ratelimit_policy_enforce_limit(ectx, &value);

    ngx_http_ratelimit_policy_enforce_log(r, ectx, rpcf, value);

    if (rpcf->dry_run) {
        ngx_http_ratelimit_policy_metrics_enforced(cls, ectx->limit,
                                   NGX_HTTP_RATELIMIT_POLICY_VERDICT_DRY_RUN);

        ectx->status = NGX_HTTP_RATELIMIT_POLICY_REJECTED_DRY_RUN;
        return NGX_DECLINED;
    }

    ngx_http_ratelimit_policy_metrics_enforced(cls, ectx->limit,
                                   NGX_HTTP_RATELIMIT_POLICY_VERDICT_REJECTED);

    ectx->status = NGX_HTTP_RATELIMIT_POLICY_REJECTED;

    return ngx_http_ratelimit_policy_enforce_reject(r, ectx, rpcf);
}


/*
 * the limit a rejection is about: an index of a policy's limits[], and
 * its value
 */

static ngx_uint_t
ngx_http_ratelimit_policy_enforce_limit(
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx, int64_t *value)
{
    switch (ectx->res.verdict) {

    case NGX_HTTP_RATELIMIT_POLICY_WINDOW_PROTECTION:
        *value = ectx->lim.protection;
        return NGX_HTTP_RATELIMIT_POLICY_PROTECTION;

    case NGX_HTTP_RATELIMIT_POLICY_WINDOW_CONCURRENCY:
        *value = ectx->lim.concurrent;
        return NGX_HTTP_RATELIMIT_POLICY_CONCURRENT;

    case NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE:
        *value = ectx->lim.per_minute;
        return ngx_http_ratelimit_policy_minute_limit[ectx->cls];

    default:
        *value = ectx->lim.daily;
        return ngx_http_ratelimit_policy_daily_limit[ectx->cls];
    }
}


static void
ngx_http_ratelimit_policy_enforce_log(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx,
    ngx_http_ratelimit_policy_loc_conf_t *rpcf, int64_t value)
{
    ngx_log_error(rpcf->log_level, r->connection->log, 0,
                  "ratelimit_policy: limiting requests%s, instance \"%V\", "
                  "class %s, %s %L%s, retry after %Ls",
                  rpcf->dry_run ? ", dry run" : "",
                  &ectx->base.instance,
                  ngx_http_ratelimit_policy_class_name[ectx->cls],
                  ngx_http_ratelimit_policy_limit_field[ectx->limit], value,
                  ectx->res.protection_started ? ", cool-down started" : "",
                  ectx->res.retry_after);
}


/* an error of the API's kind: not authenticated, no database */

static ngx_int_t
ngx_http_ratelimit_policy_enforce_fail(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx, ngx_uint_t status,
    const char *code, const char *message)
{
    ngx_int_t  rc;

    ectx->status = NGX_HTTP_RATELIMIT_POLICY_ERROR;

    ngx_http_ratelimit_policy_metrics_enforced(ectx->cls,
                                   NGX_HTTP_RATELIMIT_POLICY_METRICS_NO_LIMIT,
                                   NGX_HTTP_RATELIMIT_POLICY_VERDICT_ERROR);

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    rc = ngx_http_ratelimit_policy_send_error(r, status, code, message, NULL);

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


static ngx_int_t
ngx_http_ratelimit_policy_enforce_reject(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx,
    ngx_http_ratelimit_policy_loc_conf_t *rpcf)
{
    u_char       *p;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_str_t     body;
    ngx_chain_t   out;
    const char   *message;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    switch (ectx->res.verdict) {

    case NGX_HTTP_RATELIMIT_POLICY_WINDOW_PROTECTION:
        message = "the instance is in its account protection cool-down";
        break;

    case NGX_HTTP_RATELIMIT_POLICY_WINDOW_CONCURRENCY:
        message = "too many requests of the instance are in progress";
        break;

    case NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE:
        message = "the per-minute limit of the instance is reached";
        break;

    default:
        message = "the daily cap of the instance is reached";
        break;
    }

    if (ngx_http_ratelimit_policy_enforce_body(r->pool, &body,
                            ngx_http_ratelimit_policy_limit_field[ectx->limit],
                            ectx->res.retry_after, message)
        != NGX_OK)
    {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    if (ngx_http_ratelimit_policy_enforce_add_header(r,
                                   &ngx_http_ratelimit_policy_h_retry_after, p,
                                   ngx_sprintf(p, "%L", ectx->res.retry_after)
                                   - p)
        != NGX_OK)
    {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto done;
    }

    b->pos = body.data;
    b->last = body.data + body.len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    rc = ngx_http_ratelimit_policy_send_json(r, rpcf->status, &out, body.len);

done:

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


static ngx_int_t
ngx_http_ratelimit_policy_enforce_body(ngx_pool_t *pool, ngx_str_t *out,
    const char *limit, int64_t retry, const char *message)
{
    u_char                num[NGX_INT64_LEN];
    size_t                glen;
    yajl_gen              g;
    ngx_int_t             rc;
    const unsigned char  *buf;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (yajl_gen_map_open(g) != yajl_gen_status_ok
        || !ngx_yajl_str(g, "status")
        || !ngx_yajl_str(g, "error")
        || !ngx_yajl_str(g, "code")
        || !ngx_yajl_str(g, "rate_limited")
        || !ngx_yajl_str(g, "limit")
        || !ngx_yajl_str(g, limit)
        || !ngx_yajl_str(g, "retry_after")
        || yajl_gen_number(g, (const char *) num,
                           ngx_sprintf(num, "%L", retry) - num)
           != yajl_gen_status_ok
        || !ngx_yajl_str(g, "message")
        || !ngx_yajl_str(g, message)
        || yajl_gen_map_close(g) != yajl_gen_status_ok
        || yajl_gen_get_buf(g, &buf, &glen) != yajl_gen_status_ok)
    {
        goto done;
    }

    out->data = ngx_pnalloc(pool, glen);

    if (out->data != NULL) {
        ngx_memcpy(out->data, buf, glen);
        out->len = glen;
        rc = NGX_OK;
    }

done:

    yajl_gen_free(g);

    return rc;
}


/* a zeroed context, from the free list, and its cleanup */

static ngx_http_ratelimit_policy_enforce_ctx_t *
ngx_http_ratelimit_policy_enforce_create_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t                       *cln;
    ngx_http_ratelimit_policy_enforce_ctx_t  *ectx;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    ectx = ngx_http_ratelimit_policy_enforce_free;

    if (ectx != NULL) {
        ngx_http_ratelimit_policy_enforce_free = ectx->free_next;
        ngx_http_ratelimit_policy_enforce_nfree--;

    } else {
        ectx = ngx_alloc(sizeof(ngx_http_ratelimit_policy_enforce_ctx_t),
                         r->connection->log);
        if (ectx == NULL) {
            return NULL;
        }
    }

    ngx_memzero(ectx, sizeof(ngx_http_ratelimit_policy_enforce_ctx_t));

    cln->handler = ngx_http_ratelimit_policy_enforce_cleanup;
    cln->data = ectx;

    return ectx;
}


/* the worker exits: what the free list holds */

void
ngx_http_ratelimit_policy_enforce_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_ratelimit_policy_enforce_ctx_t  *ectx;

    while (ngx_http_ratelimit_policy_enforce_free != NULL) {
        ectx = ngx_http_ratelimit_policy_enforce_free;
        ngx_http_ratelimit_policy_enforce_free = ectx->free_next;
        ngx_free(ectx);
    }

    ngx_http_ratelimit_policy_enforce_nfree = 0;
}


static void
ngx_http_ratelimit_policy_enforce_cleanup(void *data)
{
    ngx_http_ratelimit_policy_enforce_ctx_t  *ectx = data;

    if (ectx->state == NGX_HTTP_RATELIMIT_POLICY_ENFORCE_WAITING) {
        /* the client went away while the lookup was running */
        ngx_http_ratelimit_policy_resolve_cancel(&ectx->base.lookup);
        ectx->state = NGX_HTTP_RATELIMIT_POLICY_ENFORCE_DONE;
    }

    if (ectx->counters != NULL) {
        ngx_http_ratelimit_policy_usage_release(ectx->shctx, ectx->counters,
                                                ectx->hold);
        ectx->counters = NULL;
        ectx->hold = NULL;
    }

    if (ngx_http_ratelimit_policy_enforce_nfree
        < NGX_HTTP_RATELIMIT_POLICY_ENFORCE_FREE_MAX)
    {
        ectx->free_next = ngx_http_ratelimit_policy_enforce_free;
        ngx_http_ratelimit_policy_enforce_free = ectx;
        ngx_http_ratelimit_policy_enforce_nfree++;

    } else {
        ngx_free(ectx);
    }
}


static ngx_http_ratelimit_policy_enforce_ctx_t *
ngx_http_ratelimit_policy_enforce_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t               *cln;
    ngx_http_ratelimit_policy_ctx_t  *ctx;

    r = r->main;

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_policy_module);

    if (ctx != NULL
        && ctx->lookup.resume == ngx_http_ratelimit_policy_enforce_resume)
    {
        return (ngx_http_ratelimit_policy_enforce_ctx_t *) ctx;
    }

    if (ctx == NULL && !r->internal) {
        return NULL;
    }

    /* an internal redirect cleared the module contexts, not the cleanup */

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_ratelimit_policy_enforce_cleanup) {

            if (ctx == NULL) {
                ngx_http_set_ctx(r, cln->data,
                                 ngx_http_ratelimit_policy_module);
            }

            return cln->data;
        }
    }

    return NULL;
}


static ngx_int_t
ngx_http_ratelimit_policy_enforce_header_filter(ngx_http_request_t *r)
{
    ngx_http_ratelimit_policy_enforce_ctx_t  *ectx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ectx = ngx_http_ratelimit_policy_enforce_get_ctx(r);

    if (ectx == NULL || !ectx->headers || ectx->headers_done) {
        return ngx_http_next_header_filter(r);
    }

    ectx->headers_done = 1;

    if (ngx_http_ratelimit_policy_enforce_headers(r, ectx) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


/*
 * X-RateLimit-* for the tightest window, and the IETF httpapi structured
 * fields for each window that has a limit:
 *
 *   RateLimit-Policy: "minute";q=8;w=60, "day";q=200;w=86400
 *   RateLimit: "minute";r=3;t=41, "day";r=150;t=30000
 *
 * as decided, the reset times less the time the response took.
 */

static ngx_int_t
ngx_http_ratelimit_policy_enforce_headers(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx)
{
    u_char                                     *p, *start;
    int64_t                                     limit, remaining, reset;
    int64_t                                     elapsed, mreset, dreset;
    ngx_http_ratelimit_policy_window_result_t  *res;

    res = &ectx->res;

    elapsed = (int64_t) ((ngx_current_msec - ectx->decided) / 1000);

    mreset = ngx_max(res->minute_reset - elapsed, 0);
    dreset = ngx_max(res->day_reset - elapsed, 0);

    /* all the values, formatted by hand: this runs on every response */

    p = ngx_pnalloc(r->pool,
                    3 * NGX_INT64_LEN
                    + sizeof("\"minute\";q=;w=60, \"day\";q=;w=86400") - 1
                    + sizeof("\"minute\";r=;t=, \"day\";r=;t=") - 1
                    + 6 * NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_ratelimit_policy_enforce_tightest(ectx, &limit, &remaining,
                                                   &reset))
    {
        reset = ngx_max(reset - elapsed, 0);

        start = p;
        p = ngx_http_ratelimit_policy_enforce_num(p, limit);

        if (ngx_http_ratelimit_policy_enforce_add_header(r,
                                          &ngx_http_ratelimit_policy_h_limit,
                                          start, p - start)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        start = p;
        p = ngx_http_ratelimit_policy_enforce_num(p, remaining);

        if (ngx_http_ratelimit_policy_enforce_add_header(r,
                                       &ngx_http_ratelimit_policy_h_remaining,
                                       start, p - start)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        start = p;
        p = ngx_http_ratelimit_policy_enforce_num(p, reset);

        if (ngx_http_ratelimit_policy_enforce_add_header(r,
                                           &ngx_http_ratelimit_policy_h_reset,
                                           start, p - start)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /* RateLimit-Policy */

    start = p;

    if (res->minute_limit >= 0) {
        p = ngx_cpymem(p, "\"minute\";q=", sizeof("\"minute\";q=") - 1);
        p = ngx_http_ratelimit_policy_enforce_num(p, res->minute_limit);
        p = ngx_cpymem(p, ";w=60", sizeof(";w=60") - 1);
    }

    if (res->day_limit >= 0) {
        if (p != start) {
            *p++ = ',';
            *p++ = ' ';
        }

        p = ngx_cpymem(p, "\"day\";q=", sizeof("\"day\";q=") - 1);
        p = ngx_http_ratelimit_policy_enforce_num(p, res->day_limit);
        p = ngx_cpymem(p, ";w=86400", sizeof(";w=86400") - 1);
    }

    if (ngx_http_ratelimit_policy_enforce_add_header(r,
                                          &ngx_http_ratelimit_policy_h_policy,
                                          start, p - start)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* RateLimit */

    start = p;

    if (res->minute_limit >= 0) {
        p = ngx_cpymem(p, "\"minute\";r=", sizeof("\"minute\";r=") - 1);
        p = ngx_http_ratelimit_policy_enforce_num(p, res->minute_remaining);
        p = ngx_cpymem(p, ";t=", sizeof(";t=") - 1);
        p = ngx_http_ratelimit_policy_enforce_num(p, mreset);
    }

    if (res->day_limit >= 0) {
        if (p != start) {
            *p++ = ',';
            *p++ = ' ';
        }

        p = ngx_cpymem(p, "\"day\";r=", sizeof("\"day\";r=") - 1);
        p = ngx_http_ratelimit_policy_enforce_num(p, res->day_remaining);
        p = ngx_cpymem(p, ";t=", sizeof(";t=") - 1);
        p = ngx_http_ratelimit_policy_enforce_num(p, dreset);
    }

    return ngx_http_ratelimit_policy_enforce_add_header(r,
                                       &ngx_http_ratelimit_policy_h_ratelimit,
                                       start, p - start);
}


/* a non-negative decimal number, without ngx_sprintf()'s generality */

static u_char *
ngx_http_ratelimit_policy_enforce_num(u_char *p, int64_t n)
{
    u_char    buf[NGX_INT64_LEN], *b;
    uint64_t  v;

    v = (n < 0) ? 0 : (uint64_t) n;
    b = buf + NGX_INT64_LEN;

    do {
        *--b = (u_char) ('0' + v % 10);
        v /= 10;
    } while (v);

    return ngx_cpymem(p, b, buf + NGX_INT64_LEN - b);
}


/* the window with the fewest requests left; the later reset on a tie */

static ngx_uint_t
ngx_http_ratelimit_policy_enforce_tightest(
    ngx_http_ratelimit_policy_enforce_ctx_t *ectx, int64_t *limit,
    int64_t *remaining, int64_t *reset)
{
    ngx_http_ratelimit_policy_window_result_t  *res;

    res = &ectx->res;

    if (res->minute_limit >= 0
        && (res->day_limit < 0
            || res->minute_remaining < res->day_remaining
            || (res->minute_remaining == res->day_remaining
                && res->minute_reset >= res->day_reset)))
    {
        *limit = res->minute_limit;
        *remaining = res->minute_remaining;
        *reset = res->minute_reset;
        return 1;
    }

    if (res->day_limit >= 0) {
        *limit = res->day_limit;
        *remaining = res->day_remaining;
        *reset = res->day_reset;
        return 1;
    }

    return 0;
}


static ngx_int_t
ngx_http_ratelimit_policy_enforce_add_header(ngx_http_request_t *r,
    ngx_str_t *name, u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *name;
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}


ngx_int_t
ngx_http_ratelimit_policy_enforce_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                                   *p;
    int64_t                                   limit, remaining, reset;
    ngx_http_ratelimit_policy_enforce_ctx_t  *ectx;

    ectx = ngx_http_ratelimit_policy_enforce_get_ctx(r);

    if (ectx == NULL || ectx->status == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (data == NGX_HTTP_RATELIMIT_POLICY_VAR_STATUS) {
        v->data = ngx_http_ratelimit_policy_status_name[ectx->status].data;
        v->len = ngx_http_ratelimit_policy_status_name[ectx->status].len;

    } else {
        if (!ectx->decision
            || !ngx_http_ratelimit_policy_enforce_tightest(ectx, &limit,
                                                        &remaining, &reset))
        {
            v->not_found = 1;
            return NGX_OK;
        }

        p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->data = p;
        v->len = ngx_http_ratelimit_policy_enforce_num(p, remaining) - p;
    }

    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}
