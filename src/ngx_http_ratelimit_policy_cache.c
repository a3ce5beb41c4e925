
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The entitlement cache and the policy catalogue, both in the zone.
 *
 * A request whose entry is fresh never reaches PostgreSQL.  On a miss the
 * entry is marked as loading by this worker; other requests of this worker
 * for the same instance wait on the same query, requests of other workers
 * look at the zone again every few milliseconds until the loader is done
 * (or its deadline passed and they take over).  An invalidation bumps the
 * entry's version, so a lookup that was already in flight does not cache
 * the row it read before the change.  When PostgreSQL cannot answer, an
 * entry that is no longer fresh is still served ("stale if error").
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_cache.h"
#include "ngx_http_ratelimit_policy_json.h"
#include "ngx_http_ratelimit_policy_sha256.h"
#include "ngx_http_ratelimit_policy_usage.h"


#define NGX_HTTP_RATELIMIT_POLICY_POLL       5

/*
 * An instance that does not exist answers 404 to a valid token and 401 to
 * any other, and only the database knows which tokens are valid: tokens
 * looked up for one unknown instance within negative_ttl, beyond which
 * unknown tokens are answered 401 without a query.
 */
#define NGX_HTTP_RATELIMIT_POLICY_PROBES     8
#define NGX_HTTP_RATELIMIT_POLICY_MAX_ROUNDS 4000

/*
 * the echo of a PATCH (see ngx_http_ratelimit_policy_cache_expect()): how
 * long it is waited for once the result is stored, and how long an entry
 * whose echo came first is trusted while its PATCH has not stored yet
 */
#define NGX_HTTP_RATELIMIT_POLICY_ECHO_WAIT   2000
#define NGX_HTTP_RATELIMIT_POLICY_ECHO_TRUST  1000


typedef struct {
    ngx_rbtree_node_t                      node;
    u_char                                 instance[
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN
                                       + 1];
    u_char                                 digest[
                                       NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN];
    ngx_uint_t                             version;
    ngx_uint_t                             epoch;
    ngx_queue_t                            waiters;
    ngx_http_ratelimit_policy_pg_query_t   query;
} ngx_http_ratelimit_policy_pending_t;


typedef struct {
    ngx_http_ratelimit_policy_pg_query_t   query;
    ngx_queue_t                            waiters;
    ngx_uint_t                             active;
    ngx_uint_t                             version;
} ngx_http_ratelimit_policy_catalog_loader_t;


static ngx_int_t ngx_http_ratelimit_policy_catalog_ensure(
    ngx_http_ratelimit_policy_lookup_t *lk);
static void ngx_http_ratelimit_policy_catalog_loaded(
    ngx_http_ratelimit_policy_pg_query_t *q);
static ngx_int_t ngx_http_ratelimit_policy_entitlement(
    ngx_http_ratelimit_policy_lookup_t *lk);
static void ngx_http_ratelimit_policy_entitlement_loaded(
    ngx_http_ratelimit_policy_pg_query_t *q);
static ngx_int_t ngx_http_ratelimit_policy_parse_row(PGresult *res,
    ngx_http_ratelimit_policy_lookup_t *row, ngx_log_t *log);
static void ngx_http_ratelimit_policy_copy_node(
    ngx_http_ratelimit_policy_lookup_t *lk,
    ngx_http_ratelimit_policy_node_t *node);
static void ngx_http_ratelimit_policy_store_node(
    ngx_http_ratelimit_policy_node_t *node,
    ngx_http_ratelimit_policy_lookup_t *row, ngx_msec_t ttl,
    ngx_uint_t epoch);
static ngx_uint_t ngx_http_ratelimit_policy_fresh(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_node_t *node);
static ngx_uint_t ngx_http_ratelimit_policy_echo_live(
    ngx_http_ratelimit_policy_node_t *node);
static ngx_http_ratelimit_policy_node_t *ngx_http_ratelimit_policy_echo_node(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_lookup_t *lk, ngx_uint_t *mine);
static ngx_int_t ngx_http_ratelimit_policy_wait(
    ngx_http_ratelimit_policy_lookup_t *lk);
static void ngx_http_ratelimit_policy_poll_handler(ngx_event_t *ev);
static void ngx_http_ratelimit_policy_again(
    ngx_http_ratelimit_policy_lookup_t *lk);
static ngx_http_ratelimit_policy_pending_t *
    ngx_http_ratelimit_policy_pending_find(u_char *instance);
static void ngx_http_ratelimit_policy_catalog_copy(
    ngx_http_ratelimit_policy_sh_t *sh, ngx_log_t *log);
static ngx_int_t ngx_http_ratelimit_policy_catalog_hold(
    ngx_http_ratelimit_policy_lookup_t *lk,
    ngx_http_ratelimit_policy_catalog_t *cat);
static void ngx_http_ratelimit_policy_catalog_release(void *data);


static ngx_http_ratelimit_policy_main_conf_t  *ngx_http_ratelimit_policy_conf;
static ngx_http_ratelimit_policy_catalog_t    *ngx_http_ratelimit_policy_local;
static ngx_atomic_uint_t                       ngx_http_ratelimit_policy_gen;
static ngx_http_ratelimit_policy_catalog_loader_t
                                            ngx_http_ratelimit_policy_loader;
static ngx_rbtree_t                         ngx_http_ratelimit_policy_pending;
static ngx_rbtree_node_t
                                    ngx_http_ratelimit_policy_pending_sentinel;


ngx_int_t
ngx_http_ratelimit_policy_cache_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf)
{
    ngx_http_ratelimit_policy_conf = rpmcf;
    ngx_http_ratelimit_policy_local = NULL;
    ngx_http_ratelimit_policy_gen = 0;

    ngx_memzero(&ngx_http_ratelimit_policy_loader,
                sizeof(ngx_http_ratelimit_policy_catalog_loader_t));
    ngx_queue_init(&ngx_http_ratelimit_policy_loader.waiters);

    ngx_rbtree_init(&ngx_http_ratelimit_policy_pending,
                    &ngx_http_ratelimit_policy_pending_sentinel,
                    ngx_rbtree_insert_value);

    return NGX_OK;
}


void
ngx_http_ratelimit_policy_cache_exit_process(ngx_cycle_t *cycle)
{
    /*
     * this worker's copy of the catalogue (a request that still holds it
     * frees it with its pool); only the module's static variable points to
     * it, and nginx unloads a dynamic module at exit
     */

    if (ngx_http_ratelimit_policy_local) {
        ngx_http_ratelimit_policy_catalog_release(
                                             ngx_http_ratelimit_policy_local);
        ngx_http_ratelimit_policy_local = NULL;
        ngx_http_ratelimit_policy_gen = 0;
    }
}


ngx_int_t
ngx_http_ratelimit_policy_resolve(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_lookup_t *lk)
{
    ngx_int_t  rc;

    lk->request = r;
    lk->db_rc = NGX_HTTP_RATELIMIT_POLICY_PG_OK;
    lk->stale = 0;
    lk->waiting = 0;

    if (++lk->rounds > NGX_HTTP_RATELIMIT_POLICY_MAX_ROUNDS) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit_policy: gave up waiting for a lookup");
        lk->db_rc = NGX_HTTP_RATELIMIT_POLICY_PG_TIMEOUT;
        return ngx_http_ratelimit_policy_catalog_hold(lk, NULL);
    }

    rc = ngx_http_ratelimit_policy_catalog_ensure(lk);

    if (rc == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (rc != NGX_OK) {
        /* no catalogue at all: lk->db_rc says why */
        return ngx_http_ratelimit_policy_catalog_hold(lk, NULL);
    }

    /* the request keeps this copy until it ends, whatever replaces it */

    if (ngx_http_ratelimit_policy_catalog_hold(lk,
                                             ngx_http_ratelimit_policy_local)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_ratelimit_policy_entitlement(lk);
}


static ngx_int_t
ngx_http_ratelimit_policy_catalog_ensure(ngx_http_ratelimit_policy_lookup_t *lk)
{
    ngx_msec_t                             now;
    ngx_uint_t                             start, have, valid;
    ngx_http_ratelimit_policy_sh_t        *sh;
    ngx_http_ratelimit_policy_shctx_t     *ctx;
    ngx_http_ratelimit_policy_pg_query_t  *q;
    ngx_http_ratelimit_policy_main_conf_t *rpmcf;

    rpmcf = ngx_http_ratelimit_policy_conf;
    ctx = rpmcf->shm_zone->data;
    sh = ctx->sh;

    /* the common case: this worker's copy is current and fresh */

    if (ngx_http_ratelimit_policy_catalog_current() != NULL) {
        return NGX_OK;
    }

    now = ngx_current_msec;
    start = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    /*
     * an expired catalogue serves while it is reloaded; one that was
     * changed (NOTIFY "*") is waited for, and serves only if the reload
     * fails
     */

    valid = (sh->catalog != NULL
             && sh->catalog_version == sh->catalog_loaded_version);

    if ((!valid || (ngx_msec_int_t) (sh->catalog_expires - now) <= 0)
        && (sh->catalog_loading == 0
            || (ngx_msec_int_t) (sh->catalog_loading - now) <= 0)
        && !ngx_http_ratelimit_policy_loader.active)
    {
        sh->catalog_loading = now + rpmcf->query_timeout + 100;
        ngx_http_ratelimit_policy_loader.version = sh->catalog_version;
        start = 1;
    }

    ngx_http_ratelimit_policy_catalog_copy(sh, lk->request->connection->log);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    have = (ngx_http_ratelimit_policy_local != NULL);

    if (start) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, lk->request->connection->log, 0,
                       "ratelimit_policy: loading the catalogue");

        q = &ngx_http_ratelimit_policy_loader.query;

        ngx_memzero(q, sizeof(ngx_http_ratelimit_policy_pg_query_t));
        q->stmt = NGX_HTTP_RATELIMIT_POLICY_STMT_CATALOG;
        q->handler = ngx_http_ratelimit_policy_catalog_loaded;
        q->log = ngx_cycle->log;

        if (ngx_http_ratelimit_policy_pg_send(rpmcf->pg, q) != NGX_OK) {

            ngx_shmtx_lock(&ctx->shpool->mutex);
            sh->catalog_loading = 0;
            ngx_shmtx_unlock(&ctx->shpool->mutex);

            if (!have) {
                lk->db_rc = q->rc;
                return NGX_DECLINED;
            }

            ngx_http_ratelimit_policy_stat(ctx, cache_stale);

            return NGX_OK;
        }

        ngx_http_ratelimit_policy_loader.active = 1;
    }

    if (have && (valid || lk->stale_catalog)) {
        return NGX_OK;
    }

    if (ngx_http_ratelimit_policy_loader.active) {
        ngx_queue_insert_tail(&ngx_http_ratelimit_policy_loader.waiters,
                              &lk->queue);
        lk->waiting = 1;
        return NGX_AGAIN;
    }

    /* another worker is loading it */

    return ngx_http_ratelimit_policy_wait(lk);
}


/* this worker's copy of the catalogue, if current and fresh; or NULL */

ngx_http_ratelimit_policy_catalog_t *
ngx_http_ratelimit_policy_catalog_current(void)
{
    ngx_http_ratelimit_policy_sh_t     *sh;
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    ctx = ngx_http_ratelimit_policy_conf->shm_zone->data;
    sh = ctx->sh;

    if (ngx_http_ratelimit_policy_local != NULL
        && ngx_http_ratelimit_policy_gen == sh->catalog_gen
        && sh->catalog_version == sh->catalog_loaded_version
        && (ngx_msec_int_t) (sh->catalog_expires - ngx_current_msec) > 0)
    {
        return ngx_http_ratelimit_policy_local;
    }

    return NULL;
}


/*
 * With the zone locked: the entry of lk's instance if resolve() would
 * answer from it at once and authorize() would accept lk's token by its
 * keyed hash, that is a fresh entry of an existing instance that this
 * very token was verified for; or NULL
 */

ngx_http_ratelimit_policy_node_t *
ngx_http_ratelimit_policy_cached(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_lookup_t *lk)
{
    ngx_http_ratelimit_policy_node_t  *node;

    node = ngx_http_ratelimit_policy_shm_find(ctx, lk->hash,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       lk->instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

    if (node == NULL
        || node->state != NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND
        || !ngx_http_ratelimit_policy_fresh(ctx, node)
        || !ngx_http_ratelimit_policy_digest_equal(lk->verifier,
                                        node->verifier,
                                        NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN))
    {
        return NULL;
    }

    return node;
}


static void
ngx_http_ratelimit_policy_catalog_loaded(
    ngx_http_ratelimit_policy_pg_query_t *q)
{
    u_char                                *p;
    ngx_msec_t                             now;
    ngx_uint_t                             rc;
    ngx_queue_t                           *qq, waiters;
    ngx_http_ratelimit_policy_sh_t        *sh;
    ngx_http_ratelimit_policy_lookup_t    *lk;
    ngx_http_ratelimit_policy_shctx_t     *ctx;
    ngx_http_ratelimit_policy_catalog_t   *cat;
    ngx_http_ratelimit_policy_main_conf_t *rpmcf;

    rpmcf = ngx_http_ratelimit_policy_conf;
    ctx = rpmcf->shm_zone->data;
    sh = ctx->sh;

    ngx_http_ratelimit_policy_loader.active = 0;

    rc = q->rc;
    cat = NULL;

    if (rc == NGX_HTTP_RATELIMIT_POLICY_PG_OK) {
        cat = ngx_http_ratelimit_policy_json_catalog(q->result, q->log);

        if (cat == NULL) {
            rc = NGX_HTTP_RATELIMIT_POLICY_PG_SQL_ERROR;
        }
    }

    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    sh->catalog_loading = 0;

    if (cat != NULL) {
        p = ngx_http_ratelimit_policy_shm_alloc(ctx, cat->size);

        if (p == NULL) {
            ngx_log_error(NGX_LOG_ERR, q->log, 0,
                          "ratelimit_policy: no room for the policy "
                          "catalogue in the zone");

        } else {
            ngx_memcpy(p, cat, cat->size);

            if (sh->catalog) {
                ngx_slab_free_locked(ctx->shpool, sh->catalog);
            }

            sh->catalog = p;
            sh->catalog_size = cat->size;
            sh->catalog_gen++;

            /* changed while we read it: it is reloaded on next use */
            sh->catalog_loaded_version =
                                      ngx_http_ratelimit_policy_loader.version;
            sh->catalog_expires = now + rpmcf->cache_ttl;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, q->log, 0,
                       "ratelimit_policy: catalogue loaded, %ui policies, "
                       "%uz bytes", cat->npolicies, cat->size);
    }

    ngx_http_ratelimit_policy_catalog_copy(sh, q->log);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (cat) {
        ngx_free(cat);
    }

    /*
     * a waiter may queue itself again (a reload it starts, or the one
     * that a NOTIFY "*" made necessary meanwhile): take the current ones
     * out first, or this loop would spin on it
     */

    ngx_queue_init(&waiters);

    if (!ngx_queue_empty(&ngx_http_ratelimit_policy_loader.waiters)) {
        ngx_queue_add(&waiters, &ngx_http_ratelimit_policy_loader.waiters);
        ngx_queue_init(&ngx_http_ratelimit_policy_loader.waiters);
    }

    while (!ngx_queue_empty(&waiters)) {
        qq = ngx_queue_head(&waiters);
        ngx_queue_remove(qq);

        lk = ngx_queue_data(qq, ngx_http_ratelimit_policy_lookup_t, queue);
        lk->waiting = 0;

        if (rc != NGX_HTTP_RATELIMIT_POLICY_PG_OK) {
            /* stale if error */
            lk->stale_catalog = 1;
        }

        if (ngx_http_ratelimit_policy_local == NULL) {
            (void) ngx_http_ratelimit_policy_catalog_hold(lk, NULL);
            lk->db_rc = (rc == NGX_HTTP_RATELIMIT_POLICY_PG_OK)
                        ? NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE : rc;
            lk->resume(lk->request);
            continue;
        }

        ngx_http_ratelimit_policy_again(lk);
    }
}


static ngx_int_t
ngx_http_ratelimit_policy_entitlement(ngx_http_ratelimit_policy_lookup_t *lk)
{
    ngx_uint_t                              rc, stale, probe;
    ngx_msec_t                              now;
    ngx_http_ratelimit_policy_sh_t         *sh;
    ngx_http_ratelimit_policy_node_t       *node, *tn;
    ngx_http_ratelimit_policy_shctx_t      *ctx;
    ngx_http_ratelimit_policy_pending_t    *pd;
    ngx_http_ratelimit_policy_pg_query_t   *q;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    rpmcf = ngx_http_ratelimit_policy_conf;
    ctx = rpmcf->shm_zone->data;
    sh = ctx->sh;
    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    /* the hash credentials() computed for its prefetch */

    node = ngx_http_ratelimit_policy_shm_find(ctx, lk->hash,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       lk->instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

    if (node != NULL && ngx_http_ratelimit_policy_fresh(ctx, node)) {

        if (node->counters) {
            /* read by the decision, after the token and the catalogue */
            ngx_http_ratelimit_policy_usage_prefetch(node->counters);
        }

        ngx_http_ratelimit_policy_copy_node(lk, node);

        if (node->state == NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            ngx_http_ratelimit_policy_stat(ctx, cache_hits);
            return NGX_OK;
        }

        tn = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_TOKEN,
                               ngx_http_ratelimit_policy_lookup_digest(lk),
                                       NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);

        if (tn != NULL && ngx_http_ratelimit_policy_fresh(ctx, tn)) {
            lk->token_known = tn->token_known;
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            ngx_http_ratelimit_policy_stat(ctx, cache_negative_hits);
            return NGX_OK;
        }

        /* a token never seen for an instance that does not exist */

        if ((uint32_t) now - node->probes_since >= rpmcf->negative_ttl) {
            node->probes_since = (uint32_t) now;
            node->probes = 0;
        }

        if (node->probes >= NGX_HTTP_RATELIMIT_POLICY_PROBES) {
            lk->token_known = 0;
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            ngx_http_ratelimit_policy_stat(ctx, token_probes_refused);
            return NGX_OK;
        }

        probe = 1;

    } else {
        probe = 0;
    }

    /*
     * the database is failing right now: what is cached answers at once,
     * and a load in the background tries the database again
     */

    stale = 0;

    if (node != NULL
        && node->state != NGX_HTTP_RATELIMIT_POLICY_STATE_NONE
        && !ngx_http_ratelimit_policy_pg_available(rpmcf->pg))
    {
        ngx_http_ratelimit_policy_copy_node(lk, node);

        if (node->state == NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND) {
            stale = 1;

        } else {
            tn = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_TOKEN,
                               ngx_http_ratelimit_policy_lookup_digest(lk),
                                       NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);
            if (tn != NULL) {
                lk->token_known = tn->token_known;
                stale = 1;
            }
        }
    }

    if (node != NULL
        && node->loading
        && (int32_t) (node->loading - (uint32_t) now) > 0)
    {
        if (stale) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            lk->stale = 1;
            ngx_http_ratelimit_policy_stat(ctx, cache_stale);
            return NGX_OK;
        }

        if (node->loader == ngx_pid) {
            pd = ngx_http_ratelimit_policy_pending_find(lk->instance);

            if (pd != NULL) {
                ngx_shmtx_unlock(&ctx->shpool->mutex);

                ngx_queue_insert_tail(&pd->waiters, &lk->queue);
                lk->waiting = 1;

                return NGX_AGAIN;
            }
        }

        ngx_shmtx_unlock(&ctx->shpool->mutex);

        return ngx_http_ratelimit_policy_wait(lk);
    }

    /* this worker loads it */

    pd = ngx_calloc(sizeof(ngx_http_ratelimit_policy_pending_t),
                    lk->request->connection->log);
    if (pd == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_ERROR;
    }

    if (node == NULL) {
        node = ngx_http_ratelimit_policy_shm_create(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       lk->instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);
    }

    if (node != NULL) {
        node->loading = (uint32_t) (now + rpmcf->query_timeout + 100);
        node->loader = ngx_pid;
        node->probes += probe;
        pd->version = node->version;

    } else {
        /* the zone has no room even after evictions: look up uncached */
        pd->version = (ngx_uint_t) -1;
    }

    pd->epoch = sh->epoch;

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    ngx_http_ratelimit_policy_stat(ctx, cache_misses);

    ngx_memcpy(pd->instance, lk->instance,
               NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);
    ngx_memcpy(pd->digest, ngx_http_ratelimit_policy_lookup_digest(lk),
               NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);

    ngx_queue_init(&pd->waiters);

    if (!stale) {
        ngx_queue_insert_tail(&pd->waiters, &lk->queue);
        lk->waiting = 1;
    }

    pd->node.key = ngx_crc32_short(pd->instance,
                                   NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);
    ngx_rbtree_insert(&ngx_http_ratelimit_policy_pending, &pd->node);

    q = &pd->query;
    q->stmt = NGX_HTTP_RATELIMIT_POLICY_STMT_LOOKUP;
    q->nparams = 2;
    q->values[0] = (const char *) pd->instance;
    q->lengths[0] = NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN;
    q->formats[0] = 0;
    q->values[1] = (const char *) pd->digest;
    q->lengths[1] = NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN;
    q->formats[1] = 1;
    q->handler = ngx_http_ratelimit_policy_entitlement_loaded;
    q->data = pd;
    q->log = ngx_cycle->log;

    if (ngx_http_ratelimit_policy_pg_send(rpmcf->pg, q) == NGX_OK) {

        if (stale) {
            lk->stale = 1;
            ngx_http_ratelimit_policy_stat(ctx, cache_stale);
            return NGX_OK;
        }

        return NGX_AGAIN;
    }

    /* not sent: answer this request now, from what is cached if anything */

    if (!stale) {
        ngx_queue_remove(&lk->queue);
        lk->waiting = 0;
    }

    rc = q->rc;
    q->result = NULL;

    /* frees pd */
    ngx_http_ratelimit_policy_entitlement_loaded(q);

    ngx_shmtx_lock(&ctx->shpool->mutex);

    node = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       lk->instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

    if (node != NULL
        && node->state == NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND)
    {
        ngx_http_ratelimit_policy_copy_node(lk, node);
        lk->stale = 1;

    } else if (node != NULL
               && node->state == NGX_HTTP_RATELIMIT_POLICY_STATE_MISSING
               && (tn = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_TOKEN,
                               ngx_http_ratelimit_policy_lookup_digest(lk),
                                       NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN))
                  != NULL)
    {
        ngx_http_ratelimit_policy_copy_node(lk, node);
        lk->token_known = tn->token_known;
        lk->stale = 1;

    } else {
        lk->db_rc = rc;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (lk->stale) {
        ngx_http_ratelimit_policy_stat(ctx, cache_stale);
    }

    return NGX_OK;
}


static void
ngx_http_ratelimit_policy_entitlement_loaded(
    ngx_http_ratelimit_policy_pg_query_t *q)
{
    ngx_msec_t                              now, ttl;
    ngx_queue_t                            *qq;
    ngx_http_ratelimit_policy_sh_t         *sh;
    ngx_http_ratelimit_policy_node_t       *node, *tn;
    ngx_http_ratelimit_policy_lookup_t      row, *lk;
    ngx_http_ratelimit_policy_shctx_t      *ctx;
    ngx_http_ratelimit_policy_pending_t    *pd;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    pd = q->data;
    rpmcf = ngx_http_ratelimit_policy_conf;
    ctx = rpmcf->shm_zone->data;
    sh = ctx->sh;

    ngx_rbtree_delete(&ngx_http_ratelimit_policy_pending, &pd->node);

    ngx_memzero(&row, sizeof(ngx_http_ratelimit_policy_lookup_t));
    row.db_rc = q->rc;

    if (q->rc == NGX_HTTP_RATELIMIT_POLICY_PG_OK
        && ngx_http_ratelimit_policy_parse_row(q->result, &row, q->log)
           != NGX_OK)
    {
        row.db_rc = NGX_HTTP_RATELIMIT_POLICY_PG_SQL_ERROR;
    }

    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    node = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       pd->instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

    if (node != NULL && node->loader == ngx_pid) {
        node->loading = 0;
    }

    if (row.db_rc == NGX_HTTP_RATELIMIT_POLICY_PG_OK) {

        if (node != NULL && node->version == pd->version) {
            ttl = (row.state == NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND)
                  ? rpmcf->cache_ttl : rpmcf->negative_ttl;

            ngx_http_ratelimit_policy_store_node(node, &row, ttl, pd->epoch);
        }

        /* the daily counts of all nodes, whatever the entry's version */

        if (node != NULL
            && row.state == NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND)
        {
            ngx_http_ratelimit_policy_usage_fill(ctx, node, row.usage_day,
                                                 row.usage);
        }

        if (row.state == NGX_HTTP_RATELIMIT_POLICY_STATE_MISSING) {
            tn = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_TOKEN,
                                       pd->digest,
                                       NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);
            if (tn == NULL) {
                tn = ngx_http_ratelimit_policy_shm_create(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_TOKEN,
                                       pd->digest,
                                       NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);
            }

            if (tn != NULL) {
                tn->state = NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND;
                tn->token_known = (u_char) row.token_known;
                tn->expires = (uint32_t) (now
                                          + (row.token_known
                                             ? rpmcf->cache_ttl
                                             : rpmcf->negative_ttl));
                tn->epoch = (uint32_t) pd->epoch;
            }
        }

    } else if (node != NULL
               && node->state != NGX_HTTP_RATELIMIT_POLICY_STATE_NONE)
    {
        /* stale if error */
        ngx_http_ratelimit_policy_copy_node(&row, node);

        if (row.state == NGX_HTTP_RATELIMIT_POLICY_STATE_MISSING) {
            tn = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_TOKEN,
                                       pd->digest,
                                       NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);
            if (tn != NULL) {
                row.token_known = tn->token_known;
                row.stale = 1;
            }

        } else {
            row.stale = 1;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    (void) sh;

    while (!ngx_queue_empty(&pd->waiters)) {
        qq = ngx_queue_head(&pd->waiters);
        ngx_queue_remove(qq);

        lk = ngx_queue_data(qq, ngx_http_ratelimit_policy_lookup_t, queue);
        lk->waiting = 0;

        if (row.db_rc == NGX_HTTP_RATELIMIT_POLICY_PG_OK || row.stale) {

            if (row.state == NGX_HTTP_RATELIMIT_POLICY_STATE_MISSING
                && ngx_memcmp(ngx_http_ratelimit_policy_lookup_digest(lk),
                              pd->digest,
                              NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN) != 0)
            {
                /* whether its own token is known is another question */
                ngx_http_ratelimit_policy_again(lk);
                continue;
            }

            ngx_http_ratelimit_policy_copy_node(lk, NULL);
            lk->state = row.state;
            lk->token_known = row.token_known;
            lk->account_id = row.account_id;
            ngx_memcpy(lk->stored_digest, row.stored_digest,
                       NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);
            lk->has_active_plan = row.has_active_plan;
            lk->has_slug = row.has_slug;
            lk->slug_len = row.slug_len;
            ngx_memcpy(lk->slug, row.slug, row.slug_len);
            lk->stale = row.stale;

            if (row.stale) {
                ngx_http_ratelimit_policy_stat(ctx, cache_stale);
            }

        } else {
            lk->db_rc = row.db_rc;
        }

        lk->resume(lk->request);
    }

    ngx_free(pd);
}


static ngx_int_t
ngx_http_ratelimit_policy_parse_row(PGresult *res,
    ngx_http_ratelimit_policy_lookup_t *row, ngx_log_t *log)
{
    u_char      *p, c;
    size_t       len;
    ngx_int_t    n;
    ngx_uint_t   i;

    if (PQntuples(res) != 1 || PQnfields(res) != 9) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ratelimit_policy: lookup returned %d rows of %d "
                      "columns", PQntuples(res), PQnfields(res));
        return NGX_ERROR;
    }

    /* today's usage: the UTC day, then the count of each class */

    n = ngx_atoi((u_char *) PQgetvalue(res, 0, 5), PQgetlength(res, 0, 5));
    row->usage_day = (n == NGX_ERROR) ? 0 : (ngx_uint_t) n;

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_NCLASSES; i++) {
        n = ngx_atoof((u_char *) PQgetvalue(res, 0, 6 + i),
                      PQgetlength(res, 0, 6 + i));
        row->usage[i] = (n == NGX_ERROR) ? 0 : n;
    }

    if (PQgetisnull(res, 0, 0)) {
        row->state = NGX_HTTP_RATELIMIT_POLICY_STATE_MISSING;
        row->token_known = !PQgetisnull(res, 0, 4)
                           && PQgetvalue(res, 0, 4)[0] == 't';
        return NGX_OK;
    }

    row->state = NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND;

    p = (u_char *) PQgetvalue(res, 0, 0);
    len = PQgetlength(res, 0, 0);

    n = ngx_atoof(p, len);
    if (n == NGX_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ratelimit_policy: invalid account_id \"%*s\"", len, p);
        return NGX_ERROR;
    }

    row->account_id = n;

    /* bytea in text form: \x and 64 hex digits */

    p = (u_char *) PQgetvalue(res, 0, 1);
    len = PQgetlength(res, 0, 1);

    if (PQgetisnull(res, 0, 1)
        || len != 2 + 2 * NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN
        || p[0] != '\\' || p[1] != 'x')
    {
        /* no usable digest: no token will ever match */
        ngx_memzero(row->stored_digest, NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);
        row->stored_digest[0] = 1;
        row->stored_digest[1] = 2;

    } else {
        p += 2;

        for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN * 2; i++) {
            c = p[i];

            if (c >= '0' && c <= '9') {
                c -= '0';

            } else if (c >= 'a' && c <= 'f') {
                c = c - 'a' + 10;

            } else {
                return NGX_ERROR;
            }

            if (i & 1) {
                row->stored_digest[i / 2] |= c;

            } else {
                row->stored_digest[i / 2] = (u_char) (c << 4);
            }
        }
    }

    row->has_active_plan = !PQgetisnull(res, 0, 2)
                           && PQgetvalue(res, 0, 2)[0] == 't';

    if (PQgetisnull(res, 0, 3)) {
        row->has_slug = 0;
        row->slug_len = 0;
        return NGX_OK;
    }

    len = PQgetlength(res, 0, 3);

    if (len == 0 || len > NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "ratelimit_policy: policy_slug of %uz bytes ignored",
                      len);
        row->has_slug = 0;
        row->slug_len = 0;
        return NGX_OK;
    }

    row->has_slug = 1;
    row->slug_len = len;
    ngx_memcpy(row->slug, PQgetvalue(res, 0, 3), len);

    return NGX_OK;
}


/* node == NULL: clear the result fields */

static void
ngx_http_ratelimit_policy_copy_node(ngx_http_ratelimit_policy_lookup_t *lk,
    ngx_http_ratelimit_policy_node_t *node)
{
    lk->node = node;

    if (node == NULL) {
        lk->state = NGX_HTTP_RATELIMIT_POLICY_STATE_NONE;
        lk->token_known = 0;
        lk->has_slug = 0;
        lk->slug_len = 0;
        return;
    }

    lk->state = node->state;
    lk->account_id = node->account_id;
    ngx_memcpy(lk->stored_digest, node->digest,
               NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);
    ngx_memcpy(lk->node_verifier, node->verifier,
               NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN);
    lk->has_active_plan = node->has_active_plan;
    lk->has_slug = node->has_slug;
    lk->slug_len = node->slug_len;
    ngx_memcpy(lk->slug, node->slug, node->slug_len);
}


static void
ngx_http_ratelimit_policy_store_node(ngx_http_ratelimit_policy_node_t *node,
    ngx_http_ratelimit_policy_lookup_t *row, ngx_msec_t ttl, ngx_uint_t epoch)
{
    node->state = (u_char) row->state;
    node->account_id = row->account_id;
    ngx_memcpy(node->digest, row->stored_digest,
               NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN);

    /* the token may have changed: verify it again */
    ngx_memzero(node->verifier, NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN);
    node->has_active_plan = (u_char) row->has_active_plan;
    node->has_slug = (u_char) row->has_slug;
    node->slug_len = (u_char) row->slug_len;
    ngx_memcpy(node->slug, row->slug, row->slug_len);
    node->expires = (uint32_t) (ngx_current_msec + ttl);
    node->epoch = (uint32_t) epoch;

    /*
     * the echo came before this lookup started (it bumped the version):
     * the row read includes the change, the PATCH's store is not awaited
     */
    if (node->echo == NGX_HTTP_RATELIMIT_POLICY_ECHO_ECHOED) {
        node->echo = NGX_HTTP_RATELIMIT_POLICY_ECHO_NONE;
    }
}


static ngx_uint_t
ngx_http_ratelimit_policy_fresh(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_node_t *node)
{
    return node->state != NGX_HTTP_RATELIMIT_POLICY_STATE_NONE
           && node->epoch == (uint32_t) ctx->sh->epoch
           && (int32_t) (node->expires - (uint32_t) ngx_current_msec) > 0
           && (node->echo != NGX_HTTP_RATELIMIT_POLICY_ECHO_ECHOED
               || ngx_http_ratelimit_policy_echo_live(node));
}


static ngx_uint_t
ngx_http_ratelimit_policy_echo_live(ngx_http_ratelimit_policy_node_t *node)
{
    return node->echo != NGX_HTTP_RATELIMIT_POLICY_ECHO_NONE
           && (int32_t) (node->echo_until - (uint32_t) ngx_current_msec) > 0;
}


/* NGX_AGAIN: lk is looked at again shortly */

static ngx_int_t
ngx_http_ratelimit_policy_wait(ngx_http_ratelimit_policy_lookup_t *lk)
{
    ngx_event_t  *ev;

    ev = lk->poll;

    if (ev == NULL) {
        /* not in the context: most requests never wait */

        ev = ngx_pcalloc(lk->request->pool, sizeof(ngx_event_t));
        if (ev == NULL) {
            return NGX_ERROR;
        }

        ev->handler = ngx_http_ratelimit_policy_poll_handler;
        ev->data = lk;
        ev->log = lk->request->connection->log;

        lk->poll = ev;
    }

    ngx_add_timer(ev, NGX_HTTP_RATELIMIT_POLICY_POLL);

    return NGX_AGAIN;
}


static void
ngx_http_ratelimit_policy_poll_handler(ngx_event_t *ev)
{
    ngx_http_ratelimit_policy_again(ev->data);
}


/* look again, and resume the request if that settles it */

static void
ngx_http_ratelimit_policy_again(ngx_http_ratelimit_policy_lookup_t *lk)
{
    ngx_int_t  rc;

    rc = ngx_http_ratelimit_policy_resolve(lk->request, lk);

    if (rc == NGX_AGAIN) {
        return;
    }

    if (rc == NGX_ERROR) {
        (void) ngx_http_ratelimit_policy_catalog_hold(lk, NULL);
        lk->db_rc = NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE;
    }

    lk->resume(lk->request);
}


static ngx_http_ratelimit_policy_pending_t *
ngx_http_ratelimit_policy_pending_find(u_char *instance)
{
    uint32_t                              hash;
    ngx_rbtree_node_t                    *node, *sentinel;
    ngx_http_ratelimit_policy_pending_t  *pd;

    hash = ngx_crc32_short(instance, NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

    node = ngx_http_ratelimit_policy_pending.root;
    sentinel = ngx_http_ratelimit_policy_pending.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        pd = (ngx_http_ratelimit_policy_pending_t *) node;

        if (ngx_memcmp(pd->instance, instance,
                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN) == 0)
        {
            return pd;
        }

        /* equal hashes: ngx_rbtree_insert_value() went right */
        node = node->right;
    }

    return NULL;
}


ngx_http_ratelimit_policy_policy_t *
ngx_http_ratelimit_policy_catalog_find(ngx_http_ratelimit_policy_catalog_t *cat,
    u_char *slug, size_t len)
{
    ngx_uint_t                           i;
    ngx_http_ratelimit_policy_policy_t  *p;

    for (i = 0; i < cat->npolicies; i++) {
        p = &cat->policies[i];

        if (p->slug_len == len
            && ngx_memcmp(ngx_http_ratelimit_policy_catalog_str(cat, p->slug),
                          slug, len) == 0)
        {
            return p;
        }
    }

    return NULL;
}


/*
 * The echo of this node's own PATCH.
 *
 * set_instance_policy() changes the instance's row, whose trigger sends
 * NOTIFY ratelimit_policy, '<instance_id>' at commit.  The PATCH stores its
 * result in the zone itself: if the listener invalidated the entry when
 * that notification (the "echo") arrives, the next request of the
 * instance would pay a lookup for nothing.  So the entry keeps a record of
 * the PATCH of this node that is in flight for it:
 *
 *   SENT    its query goes out on the backend echo_pid (recorded before it
 *           is sent, hence before the server can commit and notify);
 *   ECHOED  a notification from echo_pid came before its result was stored;
 *   STORED  its result is stored; notifications from echo_pid are taken
 *           as echoes for 2 s more.
 *
 * A notification for the instance is taken as an echo, and does not
 * invalidate, only if it comes from the backend echo_pid while the record
 * is live and SENT or STORED.  Any other notification invalidates the entry
 * as before, and clears the record.  An echo does not end a STORED record,
 * and a store after ECHOED makes it STORED, not cleared: the echoes of
 * several PATCHes made one after the other on the same backend may all
 * come late (the listener's backend or this worker was slow), and one
 * record stands for all of them.  Why nothing done elsewhere is missed:
 *
 * - A change made elsewhere (psql, the application, another node, another
 *   worker's connection) is notified by another backend: the PIDs of live
 *   backends are distinct, and echo_pid is a connection of this node's
 *   pool.  On those connections only set_instance_policy() changes what
 *   notifies (the lookup, catalogue and usage statements do not), one
 *   transaction at a time, and it changes nothing but the instance's
 *   policy, which the PATCH stores.  The PID of a backend that exited may
 *   be given to a new one: the record lives at most query_timeout + 1 s
 *   (SENT) or 2 s (STORED), and the OS would have to hand that PID over
 *   within that time to a session that changes this very instance.
 * - A notification from echo_pid reports a transaction of that backend
 *   committed no later than the PATCH's own (this PATCH's or an earlier
 *   one's on the same backend): a later one would be another PATCH, whose
 *   record replaces this one before it is sent.  STORED: the entry holds
 *   the PATCH's result, as new as the change notified or newer.  SENT: it
 *   does not hold it yet.  The record becomes ECHOED, the version is
 *   bumped (a lookup in flight may have read the row before the change),
 *   and the PATCH's handler stores its result or, if it failed,
 *   invalidates the entry.  Should that never happen (the worker died),
 *   fresh() stops trusting an ECHOED entry after 1 s.
 * - Notifications come in commit order.  A change committed elsewhere just
 *   before or just after the PATCH's has its own notification, from
 *   another backend, which invalidates the entry whenever it comes, before
 *   or after the PATCH's result is stored (a store never makes an entry
 *   fresh again), and clears the record.  The PATCH then finds its record
 *   gone: it stores its result but expires the entry, since a lookup may
 *   have cached a newer row meanwhile.
 * - Two PATCHes of one instance at once (two workers, or queued on one
 *   worker): the later record replaces the earlier (which invalidates the
 *   entry if the earlier was ECHOED); the earlier's echo then comes from a
 *   backend that is not echo_pid and invalidates, and the earlier's store,
 *   finding another tag, expires the entry.
 * - A PATCH that changes nothing (the same policy again) is not notified:
 *   its STORED record just expires.  A failed PATCH clears its record, and
 *   invalidates the entry if it may have committed (timeout, connection
 *   lost) or if its record was echoed.
 * - The listener reconnected: notifications may have been lost, the epoch
 *   is bumped and every entry is stale anyway.  A reload: the old and the
 *   new worker 0 listen for a while; one takes the echo, the other
 *   invalidates.  Several nodes: another node's PATCH is a change made
 *   elsewhere.
 */

void
ngx_http_ratelimit_policy_cache_expect(ngx_shm_zone_t *zone,
    ngx_http_ratelimit_policy_lookup_t *lk, int pid)
{
    ngx_http_ratelimit_policy_node_t       *node;
    ngx_http_ratelimit_policy_shctx_t      *ctx;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    ctx = zone->data;
    rpmcf = ngx_http_ratelimit_policy_conf;

    lk->echo_tag = 0;
    lk->echo_pid = pid;

    if (pid == 0) {
        /* no backend: the query will not go out */
        return;
    }

    ngx_shmtx_lock(&ctx->shpool->mutex);

    node = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       lk->instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

    if (node != NULL
        && node->state == NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND)
    {
        if (node->echo == NGX_HTTP_RATELIMIT_POLICY_ECHO_ECHOED) {
            /* another PATCH was echoed and has not stored its result */
            node->version++;
            node->expires = (uint32_t) ngx_current_msec;
        }

        if (++ctx->sh->echo_tag == 0) {
            ctx->sh->echo_tag = 1;
        }

        lk->echo_tag = ctx->sh->echo_tag;

        node->echo = NGX_HTTP_RATELIMIT_POLICY_ECHO_SENT;
        node->echo_tag = lk->echo_tag;
        node->echo_pid = pid;
        node->echo_until = (uint32_t) (ngx_current_msec
                                       + rpmcf->query_timeout + 1000);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/* a change this node made: store it, and void lookups in flight */

void
ngx_http_ratelimit_policy_cache_update(ngx_shm_zone_t *zone,
    ngx_http_ratelimit_policy_lookup_t *lk)
{
    ngx_uint_t                          mine;
    ngx_http_ratelimit_policy_node_t   *node;
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    node = ngx_http_ratelimit_policy_echo_node(ctx, lk, &mine);

    if (node != NULL
        && node->state == NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND)
    {
        node->version++;
        node->has_active_plan = (u_char) lk->has_active_plan;
        node->has_slug = (u_char) lk->has_slug;
        node->slug_len = (u_char) lk->slug_len;
        ngx_memcpy(node->slug, lk->slug, lk->slug_len);

        if (!mine) {
            /* another notification or PATCH came between: look again */
            node->expires = (uint32_t) ngx_current_msec;

        } else {
            /*
             * even if ECHOED: that notification may have been the echo
             * of an earlier PATCH on the same backend, this one's is
             * still to come
             */
            node->echo = NGX_HTTP_RATELIMIT_POLICY_ECHO_STORED;
            node->echo_until = (uint32_t) (ngx_current_msec
                                        + NGX_HTTP_RATELIMIT_POLICY_ECHO_WAIT);
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


void
ngx_http_ratelimit_policy_cache_abandon(ngx_shm_zone_t *zone,
    ngx_http_ratelimit_policy_lookup_t *lk, ngx_uint_t committed)
{
    ngx_uint_t                          mine;
    ngx_http_ratelimit_policy_node_t   *node;
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    if (lk->echo_pid == 0) {
        /* never sent */
        return;
    }

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    node = ngx_http_ratelimit_policy_echo_node(ctx, lk, &mine);

    if (node != NULL) {

        if (committed
            || (mine && node->echo == NGX_HTTP_RATELIMIT_POLICY_ECHO_ECHOED))
        {
            node->version++;
            node->expires = (uint32_t) ngx_current_msec;
        }

        if (mine) {
            node->echo = NGX_HTTP_RATELIMIT_POLICY_ECHO_NONE;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/* with the zone locked: the PATCH's entry, and whether its record is live */

static ngx_http_ratelimit_policy_node_t *
ngx_http_ratelimit_policy_echo_node(ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_lookup_t *lk, ngx_uint_t *mine)
{
    ngx_http_ratelimit_policy_node_t  *node;

    node = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       lk->instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

    *mine = node != NULL
            && lk->echo_tag != 0
            && node->echo_tag == lk->echo_tag
            && node->echo_pid == lk->echo_pid
            && (node->echo == NGX_HTTP_RATELIMIT_POLICY_ECHO_SENT
                || node->echo == NGX_HTTP_RATELIMIT_POLICY_ECHO_ECHOED)
            && ngx_http_ratelimit_policy_echo_live(node);

    return node;
}


void
ngx_http_ratelimit_policy_invalidate(ngx_shm_zone_t *zone, u_char *instance,
    size_t len, int pid)
{
    ngx_http_ratelimit_policy_node_t   *node;
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    if (len == 1 && instance[0] == '*') {
        /*
         * the catalogue changed, or tables were truncated: reload the
         * catalogue, and every entitlement on its next use
         */
        ctx->sh->catalog_version++;
        ctx->sh->catalog_expires = ngx_current_msec;
        ctx->sh->epoch++;

    } else if (len == NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN) {
        node = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       instance, len);
        if (node == NULL) {
            goto done;
        }

        if (pid != 0
            && node->echo_pid == pid
            && ngx_http_ratelimit_policy_echo_live(node))
        {
            if (node->echo == NGX_HTTP_RATELIMIT_POLICY_ECHO_STORED) {
                /* the record stays: more echoes may follow (see above) */
                ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                               "ratelimit_policy: echo of the PATCH of "
                               "\"%*s\", entry kept", len, instance);
                goto done;
            }

            if (node->echo == NGX_HTTP_RATELIMIT_POLICY_ECHO_SENT) {
                ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                               "ratelimit_policy: echo of the PATCH of "
                               "\"%*s\" before its result", len, instance);

                node->echo = NGX_HTTP_RATELIMIT_POLICY_ECHO_ECHOED;
                node->echo_until = (uint32_t) (ngx_current_msec
                                       + NGX_HTTP_RATELIMIT_POLICY_ECHO_TRUST);
                node->version++;
                goto done;
            }
        }

        node->version++;
        node->expires = (uint32_t) ngx_current_msec;
        node->echo = NGX_HTTP_RATELIMIT_POLICY_ECHO_NONE;
    }

done:

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/* with the zone locked: refresh this worker's copy of the catalogue */

static void
ngx_http_ratelimit_policy_catalog_copy(ngx_http_ratelimit_policy_sh_t *sh,
    ngx_log_t *log)
{
    ngx_http_ratelimit_policy_catalog_t  *cat;

    if (sh->catalog == NULL || ngx_http_ratelimit_policy_gen == sh->catalog_gen)
    {
        return;
    }

    cat = ngx_alloc(sh->catalog_size, log);
    if (cat == NULL) {
        return;
    }

    ngx_memcpy(cat, sh->catalog, sh->catalog_size);
    cat->refs = 1;

    if (ngx_http_ratelimit_policy_local) {
        ngx_http_ratelimit_policy_catalog_release(
                                             ngx_http_ratelimit_policy_local);
    }

    ngx_http_ratelimit_policy_local = cat;
    ngx_http_ratelimit_policy_gen = sh->catalog_gen;
}


static ngx_int_t
ngx_http_ratelimit_policy_catalog_hold(ngx_http_ratelimit_policy_lookup_t *lk,
    ngx_http_ratelimit_policy_catalog_t *cat)
{
    ngx_pool_cleanup_t  *cln;

    if (lk->catalog == cat) {
        return NGX_OK;
    }

    if (!lk->cleanup) {
        cln = ngx_pool_cleanup_add(lk->request->pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_ratelimit_policy_catalog_release;
        cln->data = NULL;

        lk->cleanup = cln;
    }

    if (lk->catalog) {
        ngx_http_ratelimit_policy_catalog_release(lk->catalog);
    }

    lk->catalog = cat;

    if (cat) {
        cat->refs++;
    }

    lk->cleanup->data = cat;

    return NGX_OK;
}


static void
ngx_http_ratelimit_policy_catalog_release(void *data)
{
    ngx_http_ratelimit_policy_catalog_t  *cat = data;

    if (cat != NULL && --cat->refs == 0) {
        ngx_free(cat);
    }
}


void
ngx_http_ratelimit_policy_resolve_cancel(ngx_http_ratelimit_policy_lookup_t *lk)
{
    if (lk->waiting) {
        /* in a loader's or a pending lookup's waiters */
        ngx_queue_remove(&lk->queue);
        lk->waiting = 0;
    }

    if (lk->poll && lk->poll->timer_set) {
        ngx_del_timer(lk->poll);
    }
}


u_char *
ngx_http_ratelimit_policy_lookup_digest(ngx_http_ratelimit_policy_lookup_t *lk)
{
    if (!lk->digest_ready) {
        ngx_http_ratelimit_policy_sha256(lk->digest, lk->token.data,
                                         lk->token.len);
        lk->digest_ready = 1;
    }

    return lk->digest;
}


void
ngx_http_ratelimit_policy_cache_verified(ngx_shm_zone_t *zone,
    ngx_http_ratelimit_policy_lookup_t *lk)
{
    ngx_http_ratelimit_policy_node_t   *node;
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    node = ngx_http_ratelimit_policy_shm_lookup(ctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       lk->instance,
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);

    /* only if the entry still holds the digest the token was checked with */

    if (node != NULL
        && node->state == NGX_HTTP_RATELIMIT_POLICY_STATE_FOUND
        && ngx_memcmp(node->digest, lk->stored_digest,
                      NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN) == 0)
    {
        ngx_memcpy(node->verifier, lk->verifier,
                   NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}
