
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The shared memory zone: entries (instances and, for unknown instances,
 * token digests) in a hash index of chained buckets, with a
 * least-recently-used queue, and the policy catalogue.  A lookup reads a
 * bucket and the entries of its chain, about one: an rbtree walk read a
 * dozen nodes scattered in memory, most of them cache misses.  The zone
 * is kept across reloads; a zone left by an incompatible build of the
 * module is refused.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_shm.h"
#include "ngx_http_ratelimit_policy_usage.h"


static uint32_t ngx_http_ratelimit_policy_shm_hash(
    ngx_http_ratelimit_policy_shctx_t *ctx, ngx_uint_t type, u_char *key,
    size_t len);
static void ngx_http_ratelimit_policy_shm_random_key(u_char *key, size_t len,
    ngx_log_t *log);
static ngx_uint_t ngx_http_ratelimit_policy_evict(
    ngx_http_ratelimit_policy_shctx_t *ctx);


ngx_int_t
ngx_http_ratelimit_policy_shm_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_ratelimit_policy_shctx_t  *octx = data;

    u_char                              rnd[
                                    NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN
                                    + sizeof(uint64_t)];
    size_t                              len;
    ngx_uint_t                          n;
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    ctx = shm_zone->data;

    if (octx) {
        if (octx->sh->magic != NGX_HTTP_RATELIMIT_POLICY_ZONE_MAGIC) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "ratelimit_policy_zone \"%V\" was made by an "
                          "incompatible version of the module, "
                          "restart nginx instead of reloading it",
                          &shm_zone->shm.name);
            return NGX_ERROR;
        }

        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;

        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;

        if (ctx->sh->magic != NGX_HTTP_RATELIMIT_POLICY_ZONE_MAGIC) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "ratelimit_policy_zone \"%V\" has an incompatible "
                          "layout", &shm_zone->shm.name);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

#if (NGX_LINUX && defined MADV_HUGEPAGE)

    /*
     * Huge pages for the zone, where the system gives them to shared
     * memory that asks (shmem_enabled "advise" in
     * /sys/kernel/mm/transparent_hugepage): with 4 KB pages, the memory
     * of the instances in use outgrows what the TLB maps (measured: the
     * cost of 10,000 instances over a few follows their number, not how
     * many of the zone's pages a request reads; see README).  Before the
     * buckets are zeroed, so that they are faulted in huge.
     */

    if (madvise(shm_zone->shm.addr, shm_zone->shm.size, MADV_HUGEPAGE) != 0)
    {
        ngx_log_error(NGX_LOG_INFO, shm_zone->shm.log, ngx_errno,
                      "madvise(MADV_HUGEPAGE) of ratelimit_policy_zone "
                      "\"%V\" failed, it keeps small pages",
                      &shm_zone->shm.name);
    }

#endif

    ctx->sh = ngx_slab_calloc(ctx->shpool,
                              sizeof(ngx_http_ratelimit_policy_sh_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    /*
     * a bucket for every 512 bytes of the zone, a power of two: entries
     * take at least a 256-byte chunk, so chains stay short even when the
     * zone is full
     */

    for (n = 64; n < shm_zone->shm.size / 512; n <<= 1) { /* void */ }

    ctx->sh->buckets = ngx_slab_calloc(ctx->shpool,
                                n * sizeof(ngx_http_ratelimit_policy_node_t *));
    if (ctx->sh->buckets == NULL) {
        return NGX_ERROR;
    }

    ctx->sh->mask = n - 1;

    ngx_queue_init(&ctx->sh->lru);

    ctx->sh->epoch = 1;
    ctx->sh->magic = NGX_HTTP_RATELIMIT_POLICY_ZONE_MAGIC;

    /* the key of the token verifiers, and the seed of the hash */

    ngx_http_ratelimit_policy_shm_random_key(rnd, sizeof(rnd),
                                             shm_zone->shm.log);

    ngx_memcpy(ctx->sh->key, rnd, NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN);
    ngx_memcpy(&ctx->sh->seed, rnd + NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN,
               sizeof(uint64_t));

    len = sizeof(" in ratelimit_policy_zone \"\"") + shm_zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in ratelimit_policy_zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* running out of memory is expected: the oldest entries are evicted */
    ctx->shpool->log_nomem = 0;

    return NGX_OK;
}


/*
 * The bucket of a key: a multiply-xorshift of its 8-byte words (in the
 * host's byte order: the zone never leaves the host), seeded with the
 * zone's random seed, so that which ids share a bucket cannot be worked
 * out from outside (CRC32, used before, is linear and unkeyed, and costs
 * a table lookup per byte).  The low bits taken by the mask depend on
 * every bit of the key.
 */

static uint32_t
ngx_http_ratelimit_policy_shm_hash(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_uint_t type, u_char *key, size_t len)
{
    uint32_t  w4;
    uint64_t  h, w;
    unsigned  shift;

    h = ctx->sh->seed ^ ((uint64_t) len << 8 | type);

    for ( /* void */ ; len >= 8; len -= 8, key += 8) {
        ngx_memcpy(&w, key, 8);
        h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 32;
    }

    if (len) {

        /* copies of a constant size, no call: an instance id ends so */

        w = 0;
        shift = 0;

        if (len >= 4) {
            ngx_memcpy(&w4, key, 4);
            w = w4;
            shift = 32;
            key += 4;
            len -= 4;
        }

        while (len--) {
            w |= (uint64_t) *key++ << shift;
            shift += 8;
        }

        h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 32;
    }

    h *= 0xd6e8feb86659fd93ULL;
    h ^= h >> 32;

    return (uint32_t) h;
}


/*
 * Without the lock, hints only: the bucket of a key, then the entry at
 * the head of its chain, are brought into the cache while the request
 * does other work (the token's keyed hash, the catalogue) before it takes
 * the lock and reads them.  Both are, with 10,000 instances, cache misses
 * nearly every time.  A pointer read while another process changes the
 * chain may be stale: a prefetch never faults, and nothing else uses it.
 */

uint32_t
ngx_http_ratelimit_policy_shm_prefetch(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_uint_t type, u_char *key, size_t len)
{
    uint32_t  hash;

    hash = ngx_http_ratelimit_policy_shm_hash(ctx, type, key, len);

    ngx_http_ratelimit_policy_prefetch(
                                  &ctx->sh->buckets[hash & ctx->sh->mask]);

    return hash;
}


void
ngx_http_ratelimit_policy_shm_prefetch_entry(
    ngx_http_ratelimit_policy_shctx_t *ctx, uint32_t hash)
{
    u_char                             *p;
    ngx_http_ratelimit_policy_node_t  **bucket;

    bucket = &ctx->sh->buckets[hash & ctx->sh->mask];

    /* read once, whatever the compiler would make of it */
    p = (u_char *) *(ngx_http_ratelimit_policy_node_t *volatile *) bucket;

    if (p == NULL) {
        return;
    }

    /* what a request answered from the zone reads: the first two lines */

    ngx_http_ratelimit_policy_prefetch(p);
    ngx_http_ratelimit_policy_prefetch(p + 64);
}


ngx_http_ratelimit_policy_node_t *
ngx_http_ratelimit_policy_shm_lookup(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_uint_t type, u_char *key, size_t len)
{
    return ngx_http_ratelimit_policy_shm_find(ctx,
                        ngx_http_ratelimit_policy_shm_hash(ctx, type, key, len),
                        type, key, len);
}


ngx_http_ratelimit_policy_node_t *
ngx_http_ratelimit_policy_shm_find(ngx_http_ratelimit_policy_shctx_t *ctx,
    uint32_t hash, ngx_uint_t type, u_char *key, size_t len)
{
    uint32_t                           now;
    ngx_http_ratelimit_policy_node_t  *n;

    for (n = ctx->sh->buckets[hash & ctx->sh->mask]; n; n = n->next) {

        if (n->hash == hash
            && n->type == type
            && n->key_len == len
            && ngx_memcmp(n->key, key, len) == 0)
        {
            /*
             * the LRU order at a resolution of a second: an entry moves to
             * the head at most once a second.  A move writes the entry's
             * neighbours in the queue, the entries used just before and
             * after it the last time it moved, cache misses nearly every
             * time; an entry in use stays within the second's worth of
             * entries nearest the head, and only a zone that turns over
             * within a second could evict it
             */

            now = (uint32_t) ngx_current_msec;

            if ((uint32_t) (now - n->used)
                >= NGX_HTTP_RATELIMIT_POLICY_LRU_RESOLUTION)
            {
                n->used = now;
                ngx_queue_remove(&n->queue);
                ngx_queue_insert_head(&ctx->sh->lru, &n->queue);
            }

            return n;
        }
    }

    return NULL;
}


ngx_http_ratelimit_policy_node_t *
ngx_http_ratelimit_policy_shm_create(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_uint_t type, u_char *key, size_t len)
{
    ngx_http_ratelimit_policy_node_t  *n, **bucket;

    if (len > NGX_HTTP_RATELIMIT_POLICY_KEY_MAX) {
        return NULL;
    }

    n = ngx_http_ratelimit_policy_shm_alloc(ctx,
                                     sizeof(ngx_http_ratelimit_policy_node_t));
    if (n == NULL) {
        return NULL;
    }

    ngx_memzero(n, sizeof(ngx_http_ratelimit_policy_node_t));

    n->hash = ngx_http_ratelimit_policy_shm_hash(ctx, type, key, len);
    n->type = (u_char) type;
    n->key_len = (u_char) len;
    n->used = (uint32_t) ngx_current_msec;
    ngx_memcpy(n->key, key, len);

    bucket = &ctx->sh->buckets[n->hash & ctx->sh->mask];

    n->next = *bucket;
    *bucket = n;

    ngx_queue_insert_head(&ctx->sh->lru, &n->queue);
    ctx->sh->entries++;

    return n;
}


/* allocate with the zone locked, evicting the least recently used entries */

void *
ngx_http_ratelimit_policy_shm_alloc(ngx_http_ratelimit_policy_shctx_t *ctx,
    size_t size)
{
    void        *p;
    ngx_uint_t   i;

    for (i = 0; i < 64; i++) {
        p = ngx_slab_alloc_locked(ctx->shpool, size);
        if (p != NULL) {
            return p;
        }

        if (ngx_http_ratelimit_policy_evict(ctx) == 0) {
            break;
        }
    }

    return NULL;
}


static ngx_uint_t
ngx_http_ratelimit_policy_evict(ngx_http_ratelimit_policy_shctx_t *ctx)
{
    ngx_uint_t                          n;
    ngx_queue_t                        *q;
    ngx_http_ratelimit_policy_node_t   *rn, **p;

    n = 0;

    for (q = ngx_queue_last(&ctx->sh->lru);
         q != ngx_queue_sentinel(&ctx->sh->lru) && n < 8;
         /* void */)
    {
        rn = ngx_queue_data(q, ngx_http_ratelimit_policy_node_t, queue);
        q = ngx_queue_prev(q);

        if (rn->loading
            && (int32_t) (rn->loading - (uint32_t) ngx_current_msec) > 0)
        {
            /* a lookup in flight will write into it */
            continue;
        }

        if (!ngx_http_ratelimit_policy_usage_evictable(rn)) {
            /* requests in flight, or usage not yet written */
            continue;
        }

        ngx_http_ratelimit_policy_usage_free(ctx, rn);

        ngx_queue_remove(&rn->queue);

        for (p = &ctx->sh->buckets[rn->hash & ctx->sh->mask];
             *p != rn;
             p = &(*p)->next)
        {
            /* void */
        }

        *p = rn->next;

        /* see ngx_http_ratelimit_policy_shm_alive() */
        rn->type = 0;

        ngx_slab_free_locked(ctx->shpool, rn);

        ctx->sh->entries--;
        ngx_http_ratelimit_policy_stat(ctx, evictions);
        n++;
    }

    return n;
}


/* in the master, when the zone is made */

static void
ngx_http_ratelimit_policy_shm_random_key(u_char *key, size_t len,
    ngx_log_t *log)
{
    ssize_t     n;
    ngx_fd_t    fd;
    ngx_uint_t  i;

    n = 0;

    fd = ngx_open_file("/dev/urandom", NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd != NGX_INVALID_FILE) {
        n = ngx_read_fd(fd, key, len);
        ngx_close_file(fd);
    }

    if (n == (ssize_t) len) {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                  "ratelimit_policy: could not read /dev/urandom, "
                  "the zone's keys are weaker");

    for (i = 0; i < len; i++) {
        key[i] = (u_char) (ngx_random() ^ (ngx_pid << (i % 8)) ^ ngx_time());
    }
}


/*
 * With the zone locked: whether a node found earlier, with the zone
 * unlocked since, is still the entry of that key.  An evicted node's type
 * is cleared before its memory is freed; memory reused since holds either
 * another entry (another key, or this key's new entry, as good as any) or
 * something that is not an entry and holds no key.
 */

ngx_uint_t
ngx_http_ratelimit_policy_shm_alive(ngx_http_ratelimit_policy_node_t *node,
    ngx_uint_t type, u_char *key, size_t len)
{
    return node->type == type
           && node->key_len == len
           && ngx_memcmp(node->key, key, len) == 0;
}
