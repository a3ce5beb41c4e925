
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_SHM_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_SHM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_common.h"


/* bump on any change of the structures below: reload refuses the zone */
#define NGX_HTTP_RATELIMIT_POLICY_ZONE_MAGIC  0x524c5009

#define NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN  16

/* the longest key of an entry: a token's digest */
#define NGX_HTTP_RATELIMIT_POLICY_KEY_MAX  NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN

/* the resolution of the LRU order, msec: see ngx_http_ratelimit_policy_shm.c */
#define NGX_HTTP_RATELIMIT_POLICY_LRU_RESOLUTION  1000

/* times in the zone are 32-bit milliseconds: a TTL is at most 24 days */
#define NGX_HTTP_RATELIMIT_POLICY_TTL_MAX       (24 * 86400 * 1000)

#define NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE  1
#define NGX_HTTP_RATELIMIT_POLICY_NODE_TOKEN     2

#define NGX_HTTP_RATELIMIT_POLICY_STATE_NONE      0
#define NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND     1
#define NGX_HTTP_RATELIMIT_POLICY_STATE_MISSING   2

/* the echo of this node's own PATCH, see ngx_http_ratelimit_policy_cache.c */
#define NGX_HTTP_RATELIMIT_POLICY_ECHO_NONE       0
#define NGX_HTTP_RATELIMIT_POLICY_ECHO_SENT       1
#define NGX_HTTP_RATELIMIT_POLICY_ECHO_ECHOED     2
#define NGX_HTTP_RATELIMIT_POLICY_ECHO_STORED     3

/* the sizes of the counters, see ngx_http_ratelimit_policy_metrics.c */
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_METHODS   4
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_CODES     16
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_STMTS     8
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_BUCKETS   14
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_CLASSES   3
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_VERDICTS  4
#define NGX_HTTP_RATELIMIT_POLICY_METRICS_PROCS     64


typedef struct ngx_http_ratelimit_policy_node_s
    ngx_http_ratelimit_policy_node_t;

struct ngx_http_ratelimit_policy_node_s {
    /*
     * The first 128 bytes, two cache lines of the 256-byte chunk, hold all
     * that a request answered from the zone reads: the lookup (next, hash,
     * type, key_len, key, used), freshness (state, epoch, expires, echo,
     * echo_until), the token (verifier), the policy (slug) and the counters.
     * What only a database lookup, a PATCH or an invalidation reads comes
     * after them.
     */

    /* the next entry of its hash bucket, and its hash */
    ngx_http_ratelimit_policy_node_t  *next;
    uint32_t                      hash;

    u_char                        type;
    u_char                        state;
    u_char                        has_active_plan;
    u_char                        token_known;
    u_char                        slug_len;
    u_char                        has_slug;
    u_char                        key_len;
    u_char                        echo;

    /* msec, low bits: when it last moved to the head of the LRU queue */
    uint32_t                      used;

    /* msec, low bits: compared as (int32_t) (t - (uint32_t) now) */
    uint32_t                      expires;
    uint32_t                      epoch;

    /*
     * the echo of this node's PATCH: its state (echo, above), until when
     * (msec, low bits), the backend that runs it and its tag, see cache.c
     */
    uint32_t                      echo_until;

    /* enforcement, see ngx_http_ratelimit_policy_usage.h; or NULL */
    struct ngx_http_ratelimit_policy_counters_s  *counters;

    /* the keyed hash of a token that matched digest, or all zeroes */
    u_char                        verifier[
                                      NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN];

    /* an instance id, or a token's digest: key_len bytes */
    u_char                        key[NGX_HTTP_RATELIMIT_POLICY_KEY_MAX];

    /* a slug of up to 32 bytes stays in the second line */
    u_char                        slug[NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX];

    ngx_queue_t                   queue;

    uint32_t                      loading;      /* loading until, or 0 */
    ngx_pid_t                     loader;

    /* unknown instance: tokens looked up since probes_since, see cache.c */
    uint32_t                      probes_since; /* msec, low bits */
    uint32_t                      version;      /* bumped by invalidation */

    int32_t                       echo_pid;
    uint16_t                      echo_tag;
    u_char                        probes;

    int64_t                       account_id;
    u_char                        digest[NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN];
};


/* a worker's gauges: its slot is found by pid, a dead pid's is ignored */

typedef struct {
    ngx_atomic_t  pid;
    ngx_atomic_t  waiting;
    ngx_atomic_t  listening;
} ngx_http_ratelimit_policy_proc_stats_t;


/* one prepared statement */

typedef struct {
    ngx_atomic_t  queries;
    ngx_atomic_t  errors;                 /* SQL errors */
    ngx_atomic_t  unavailable;            /* no connection, or lost */
    ngx_atomic_t  timeouts;
    ngx_atomic_t  usec;                   /* sum of the latencies */
    ngx_atomic_t  buckets[NGX_HTTP_RATELIMIT_POLICY_METRICS_BUCKETS];
} ngx_http_ratelimit_policy_stmt_stats_t;


/* one class of enforced requests */

typedef struct {
    ngx_atomic_t  verdicts[NGX_HTTP_RATELIMIT_POLICY_METRICS_VERDICTS];
    ngx_atomic_t  rejected[NGX_HTTP_RATELIMIT_POLICY_NLIMITS][2];
} ngx_http_ratelimit_policy_class_stats_t;


typedef struct {
    ngx_atomic_t                             cache_hits;
    ngx_atomic_t                             cache_misses;
    ngx_atomic_t                             cache_negative_hits;
    ngx_atomic_t                             cache_stale;
    ngx_atomic_t                             token_probes_refused;
    ngx_atomic_t                             evictions;
    ngx_atomic_t                             notifications;

    /* the write-behind of daily usage: batches written, failed */
    ngx_atomic_t                             sync_ok;
    ngx_atomic_t                             sync_failed;
    ngx_atomic_t                             sync_rows;
    ngx_atomic_t                             sync_lag;    /* msec */

    ngx_atomic_t                             api[
                                    NGX_HTTP_RATELIMIT_POLICY_METRICS_METHODS]
                                   [NGX_HTTP_RATELIMIT_POLICY_METRICS_CODES];
    ngx_http_ratelimit_policy_stmt_stats_t   db[
                                    NGX_HTTP_RATELIMIT_POLICY_METRICS_STMTS];
    ngx_http_ratelimit_policy_class_stats_t  enforce[
                                    NGX_HTTP_RATELIMIT_POLICY_METRICS_CLASSES];
    ngx_http_ratelimit_policy_proc_stats_t   procs[
                                    NGX_HTTP_RATELIMIT_POLICY_METRICS_PROCS];
} ngx_http_ratelimit_policy_stats_t;


typedef struct {
    ngx_uint_t                    magic;

    /* the key of the token verifiers, random for each zone */
    u_char                        key[NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN];

    /* the seed of the entries' hash, random for each zone, see shm.c */
    uint64_t                      seed;

    /* the hash index of the entries: mask + 1 buckets, a power of two */
    ngx_http_ratelimit_policy_node_t  **buckets;
    ngx_uint_t                    mask;

    ngx_queue_t                   lru;
    ngx_uint_t                    entries;

    /* entries of an older epoch are stale: bumped after a resync */
    ngx_uint_t                    epoch;
    ngx_pid_t                     listener;

    /* the tag of the last PATCH sent, see ngx_http_ratelimit_policy_cache.c */
    uint16_t                      echo_tag;

    /* the policy catalogue, see ngx_http_ratelimit_policy_cache.h */
    u_char                       *catalog;
    size_t                        catalog_size;
    ngx_atomic_t                  catalog_gen;
    ngx_msec_t                    catalog_expires;
    ngx_msec_t                    catalog_loading;
    ngx_uint_t                    catalog_version;
    ngx_uint_t                    catalog_loaded_version;

    /* the write-behind of daily usage, see ngx_http_ratelimit_policy_usage.h */
    struct ngx_http_ratelimit_policy_usage_sh_s  *usage;

    ngx_http_ratelimit_policy_stats_t  stats;
} ngx_http_ratelimit_policy_sh_t;


typedef struct {
    ngx_http_ratelimit_policy_sh_t   *sh;
    ngx_slab_pool_t                  *shpool;
    ngx_str_t                         name;
} ngx_http_ratelimit_policy_shctx_t;


ngx_int_t ngx_http_ratelimit_policy_shm_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);

/* a hint to the CPU: a line of memory is read soon */
#if (defined __GNUC__ || defined __clang__)
#define ngx_http_ratelimit_policy_prefetch(p)  __builtin_prefetch(p)
#else
#define ngx_http_ratelimit_policy_prefetch(p)
#endif

/* without the lock: hints only, see ngx_http_ratelimit_policy_shm.c */
uint32_t ngx_http_ratelimit_policy_shm_prefetch(
    ngx_http_ratelimit_policy_shctx_t *ctx, ngx_uint_t type, u_char *key,
    size_t len);
void ngx_http_ratelimit_policy_shm_prefetch_entry(
    ngx_http_ratelimit_policy_shctx_t *ctx, uint32_t hash);

/* with the zone locked; _find() with the hash _prefetch() returned */
ngx_http_ratelimit_policy_node_t *ngx_http_ratelimit_policy_shm_lookup(
    ngx_http_ratelimit_policy_shctx_t *ctx, ngx_uint_t type, u_char *key,
    size_t len);
ngx_http_ratelimit_policy_node_t *ngx_http_ratelimit_policy_shm_find(
    ngx_http_ratelimit_policy_shctx_t *ctx, uint32_t hash, ngx_uint_t type,
    u_char *key, size_t len);
ngx_http_ratelimit_policy_node_t *ngx_http_ratelimit_policy_shm_create(
    ngx_http_ratelimit_policy_shctx_t *ctx, ngx_uint_t type, u_char *key,
    size_t len);
void *ngx_http_ratelimit_policy_shm_alloc(
    ngx_http_ratelimit_policy_shctx_t *ctx, size_t size);
ngx_uint_t ngx_http_ratelimit_policy_shm_alive(
    ngx_http_ratelimit_policy_node_t *node, ngx_uint_t type, u_char *key,
    size_t len);


#define ngx_http_ratelimit_policy_stat(ctx, name)                            \
    (void) ngx_atomic_fetch_add(&(ctx)->sh->stats.name, 1)


#endif /* _NGX_HTTP_RATELIMIT_POLICY_SHM_H_INCLUDED_ */
