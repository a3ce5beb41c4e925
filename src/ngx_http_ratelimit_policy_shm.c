
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The shared memory zone: one rbtree of entries (instances and, for
 * unknown instances, token digests) with a least-recently-used queue, and
 * the policy catalogue.  The zone is kept across reloads; a zone left by
 * an incompatible build of the module is refused.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_shm.h"
#include "ngx_http_ratelimit_policy_usage.h"


static void ngx_http_ratelimit_policy_rbtree_insert_value(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_ratelimit_policy_node_cmp(
    ngx_http_ratelimit_policy_node_t *a, ngx_http_ratelimit_policy_node_t *b);
static void ngx_http_ratelimit_policy_shm_random_key(u_char *key, size_t len,
    ngx_log_t *log);
static ngx_uint_t ngx_http_ratelimit_policy_evict(
    ngx_http_ratelimit_policy_shctx_t *ctx);


ngx_int_t
ngx_http_ratelimit_policy_shm_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_ratelimit_policy_shctx_t  *octx = data;

    size_t                              len;
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

    ctx->sh = ngx_slab_calloc(ctx->shpool,
                              sizeof(ngx_http_ratelimit_policy_sh_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    ngx_rbtree_init(&ctx->sh->rbtree, &ctx->sh->sentinel,
                    ngx_http_ratelimit_policy_rbtree_insert_value);

    ngx_queue_init(&ctx->sh->lru);

    ctx->sh->epoch = 1;
    ctx->sh->magic = NGX_HTTP_RATELIMIT_POLICY_ZONE_MAGIC;

    ngx_http_ratelimit_policy_shm_random_key(ctx->sh->key,
                                    NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN,
                                    shm_zone->shm.log);

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


static ngx_int_t
ngx_http_ratelimit_policy_node_cmp(ngx_http_ratelimit_policy_node_t *a,
    ngx_http_ratelimit_policy_node_t *b)
{
    if (a->type != b->type) {
        return (ngx_int_t) a->type - (ngx_int_t) b->type;
    }

    return ngx_memn2cmp(a->key, b->key, a->key_len, b->key_len);
}


static void
ngx_http_ratelimit_policy_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t                 **p;
    ngx_http_ratelimit_policy_node_t   *n, *t;

    for ( ;; ) {

        if (node->key < temp->key) {

            p = &temp->left;

        } else if (node->key > temp->key) {

            p = &temp->right;

        } else { /* node->key == temp->key */

            n = (ngx_http_ratelimit_policy_node_t *) &node->color;
            t = (ngx_http_ratelimit_policy_node_t *) &temp->color;

            p = (ngx_http_ratelimit_policy_node_cmp(n, t) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


ngx_http_ratelimit_policy_node_t *
ngx_http_ratelimit_policy_shm_lookup(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_uint_t type, u_char *key, size_t len)
{
    uint32_t                           hash;
    ngx_int_t                          rc;
    ngx_rbtree_node_t                 *node, *sentinel;
    ngx_http_ratelimit_policy_node_t  *n;

    hash = ngx_crc32_long(key, len) ^ (uint32_t) type;

    node = ctx->sh->rbtree.root;
    sentinel = ctx->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        /* hash == node->key */

        n = (ngx_http_ratelimit_policy_node_t *) &node->color;

        rc = (ngx_int_t) type - (ngx_int_t) n->type;

        if (rc == 0) {
            rc = ngx_memn2cmp(key, n->key, len, (size_t) n->key_len);
        }

        if (rc == 0) {
            ngx_queue_remove(&n->queue);
            ngx_queue_insert_head(&ctx->sh->lru, &n->queue);

            return n;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


ngx_http_ratelimit_policy_node_t *
ngx_http_ratelimit_policy_shm_create(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_uint_t type, u_char *key, size_t len)
{
    size_t                             size;
    ngx_rbtree_node_t                 *node;
    ngx_http_ratelimit_policy_node_t  *n;

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_http_ratelimit_policy_node_t, key)
           + len;

    node = ngx_http_ratelimit_policy_shm_alloc(ctx, size);
    if (node == NULL) {
        return NULL;
    }

    n = (ngx_http_ratelimit_policy_node_t *) &node->color;

    ngx_memzero(n, size - offsetof(ngx_rbtree_node_t, color));

    node->key = ngx_crc32_long(key, len) ^ (uint32_t) type;

    n->type = (u_char) type;
    n->key_len = (u_char) len;
    ngx_memcpy(n->key, key, len);

    ngx_rbtree_insert(&ctx->sh->rbtree, node);
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
    ngx_uint_t                         n;
    ngx_queue_t                       *q;
    ngx_rbtree_node_t                 *node;
    ngx_http_ratelimit_policy_node_t  *rn;

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

        node = (ngx_rbtree_node_t *)
                   ((u_char *) rn - offsetof(ngx_rbtree_node_t, color));

        ngx_rbtree_delete(&ctx->sh->rbtree, node);

        /* see ngx_http_ratelimit_policy_shm_alive() */
        rn->type = 0;

        ngx_slab_free_locked(ctx->shpool, node);

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
                  "the token verifier key is weaker");

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
