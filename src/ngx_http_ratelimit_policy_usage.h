
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_USAGE_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_USAGE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_common.h"
#include "ngx_http_ratelimit_policy_shm.h"
#include "ngx_http_ratelimit_policy_window.h"


#define NGX_HTTP_RATELIMIT_POLICY_COUNTERS_CLEAN    0
#define NGX_HTTP_RATELIMIT_POLICY_COUNTERS_DIRTY    1
#define NGX_HTTP_RATELIMIT_POLICY_COUNTERS_WRITING  2
#define NGX_HTTP_RATELIMIT_POLICY_COUNTERS_LAZY     3


/*
 * An instance's counters, allocated in the zone on its first enforced
 * request (or when a cache fill brings a count from the database) and
 * freed with its entry: 512 bytes, a slab chunk of its own size.
 */

struct ngx_http_ratelimit_policy_counters_s {
    ngx_queue_t                           queue;     /* dirty, lazy or
                                                        writing */
    ngx_http_ratelimit_policy_node_t     *node;
    uint16_t                              state;
    uint16_t                              capped;    /* a daily cap applied
                                                        since last written */
    uint32_t                              dirtied;   /* msec, low bits */
    ngx_http_ratelimit_policy_window_t    w;
};

typedef struct ngx_http_ratelimit_policy_counters_s
    ngx_http_ratelimit_policy_counters_t;


/* one request in flight, in the ledger of the process that admitted it */

typedef struct {
    ngx_queue_t                           queue;
    ngx_http_ratelimit_policy_counters_t *counters;
} ngx_http_ratelimit_policy_hold_t;


/* a worker process known to the zone, and what it holds */

typedef struct {
    ngx_queue_t                           queue;
    ngx_queue_t                           holds;
    ngx_pid_t                             pid;
} ngx_http_ratelimit_policy_proc_t;


struct ngx_http_ratelimit_policy_usage_sh_s {
    ngx_queue_t                           dirty;     /* capped: every 1 s */
    ngx_queue_t                           lazy;      /* the others: 10 s */
    ngx_queue_t                           writing;
    ngx_queue_t                           procs;

    /* the batch being written: one at a time in the zone */
    ngx_pid_t                             owner;
    ngx_uint_t                            batch;
    ngx_msec_t                            deadline;
    ngx_msec_t                            next;

    ngx_atomic_t                          batches;
    ngx_atomic_t                          rows;
    ngx_atomic_t                          errors;
    ngx_atomic_t                          reclaimed;
};

typedef struct ngx_http_ratelimit_policy_usage_sh_s
    ngx_http_ratelimit_policy_usage_sh_t;


ngx_int_t ngx_http_ratelimit_policy_usage_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf);
void ngx_http_ratelimit_policy_usage_exit_process(ngx_cycle_t *cycle);

/*
 * a hint, before the decision reads them: what every class reads and the
 * first class but its last three slots, see
 * ngx_http_ratelimit_policy_window.h
 */
#define ngx_http_ratelimit_policy_usage_prefetch(c)                          \
    do {                                                                     \
        ngx_http_ratelimit_policy_prefetch(c);                               \
        ngx_http_ratelimit_policy_prefetch((u_char *) (c) + 64);             \
        ngx_http_ratelimit_policy_prefetch((u_char *) (c) + 128);            \
    } while (0)

/* with the zone locked */
ngx_http_ratelimit_policy_counters_t *ngx_http_ratelimit_policy_usage_counters(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_node_t *node);
ngx_http_ratelimit_policy_hold_t *ngx_http_ratelimit_policy_usage_hold(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_counters_t *c);
void ngx_http_ratelimit_policy_usage_dirty(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_counters_t *c, ngx_uint_t capped);
void ngx_http_ratelimit_policy_usage_fill(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_node_t *node, ngx_uint_t day, int64_t *usage);
ngx_uint_t ngx_http_ratelimit_policy_usage_evictable(
    ngx_http_ratelimit_policy_node_t *node);
void ngx_http_ratelimit_policy_usage_free(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_node_t *node);

/* locks the zone itself */
void ngx_http_ratelimit_policy_usage_release(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_counters_t *c,
    ngx_http_ratelimit_policy_hold_t *h);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_USAGE_H_INCLUDED_ */
