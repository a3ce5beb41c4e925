
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_METRICS_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_METRICS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_common.h"


/* verdicts of ngx_http_ratelimit_policy_metrics_enforced() */
#define NGX_HTTP_RATELIMIT_POLICY_VERDICT_ADMITTED   0
#define NGX_HTTP_RATELIMIT_POLICY_VERDICT_REJECTED   1
#define NGX_HTTP_RATELIMIT_POLICY_VERDICT_DRY_RUN    2
#define NGX_HTTP_RATELIMIT_POLICY_VERDICT_ERROR      3

/* the "limit" of an admitted request or of an error */
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_NO_LIMIT                           \
    NGX_HTTP_RATELIMIT_POLICY_NLIMITS


/*
 * The counters live in the zone (ngx_http_ratelimit_policy_stats_t in
 * ngx_http_ratelimit_policy_shm.h), so a scrape of any worker shows the
 * whole node, and they survive "nginx -s reload".  Every function below
 * is a few atomic word updates, takes no lock, may be called from any
 * worker once init_process ran, and does nothing in a process without the
 * zone.
 */

/* the content handler of "ratelimit_policy_metrics" */
ngx_int_t ngx_http_ratelimit_policy_metrics_handler(ngx_http_request_t *r);

/* a process slot for the per-worker gauges (wait queue, listener) */
ngx_int_t ngx_http_ratelimit_policy_metrics_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf);
void ngx_http_ratelimit_policy_metrics_exit_process(ngx_cycle_t *cycle);

/* an API answer (counted only in a "ratelimit_policy_api" location) */
void ngx_http_ratelimit_policy_metrics_api(ngx_http_request_t *r,
    ngx_uint_t status);

/*
 * The database client: ..._clock() is a monotonic time in microseconds,
 * taken when a query is submitted; ..._query() is called once per query
 * when it is answered, times out, or is refused (started = 0: no latency
 * sample), rc being one of NGX_HTTP_RATELIMIT_POLICY_PG_*.
 */
uint64_t ngx_http_ratelimit_policy_metrics_clock(void);
void ngx_http_ratelimit_policy_metrics_query(ngx_uint_t stmt, ngx_uint_t rc,
    uint64_t started);
void ngx_http_ratelimit_policy_metrics_waiting(ngx_uint_t n);
void ngx_http_ratelimit_policy_metrics_listening(ngx_uint_t on);
void ngx_http_ratelimit_policy_metrics_notified(void);

/*
 * Enforcement: one call per enforced request, when it is decided.
 * cls: NGX_HTTP_RATELIMIT_POLICY_SEND_MESSAGE / _GROUP / _CHECK;
 * verdict: NGX_HTTP_RATELIMIT_POLICY_VERDICT_*;
 * limit: for a rejection (real or dry run) the limit that refused it, an
 * index of a policy's limits[] (NGX_HTTP_RATELIMIT_POLICY_SEND_PER_MINUTE,
 * ..._PROTECTION, ..._CONCURRENT, ...); else ..._METRICS_NO_LIMIT.
 */
void ngx_http_ratelimit_policy_metrics_enforced(ngx_uint_t cls,
    ngx_uint_t limit, ngx_uint_t verdict);

/*
 * The write-behind of daily usage: one call per batch when its write
 * ends; rows written, ok = 0 when the write failed, lag = milliseconds
 * from the oldest count the batch carries to the end of the write.
 */
void ngx_http_ratelimit_policy_metrics_sync_batch(ngx_uint_t rows,
    ngx_uint_t ok, ngx_msec_t lag);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_METRICS_H_INCLUDED_ */
