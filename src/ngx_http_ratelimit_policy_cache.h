
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_CACHE_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_CACHE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_common.h"
#include "ngx_http_ratelimit_policy_pg.h"
#include "ngx_http_ratelimit_policy_shm.h"
#include "ngx_http_ratelimit_policy_window.h"


/*
 * The policy catalogue is one position-independent blob: this header, the
 * policies in (sort_order, id) order, then the strings they point to by
 * offset, including the JSON fragments of the API document rendered once
 * per change of the catalogue.
 */

typedef struct {
    int64_t                       id;
    int64_t                       limits[NGX_HTTP_RATELIMIT_POLICY_NLIMITS];
    uint32_t                      slug;
    uint32_t                      slug_len;
    uint32_t                      slug_json;
    uint32_t                      slug_json_len;
    ngx_uint_t                    is_free;
} ngx_http_ratelimit_policy_policy_t;


typedef struct {
    size_t                        size;
    ngx_uint_t                    refs;         /* worker copies only */
    ngx_uint_t                    npolicies;
    uint32_t                      free_json;
    uint32_t                      free_json_len;
    uint32_t                      policies_json[2];  /* [has_active_plan] */
    uint32_t                      policies_json_len[2];
    ngx_http_ratelimit_policy_policy_t  policies[1];
} ngx_http_ratelimit_policy_catalog_t;


#define ngx_http_ratelimit_policy_catalog_str(cat, off)                      \
    ((u_char *) (cat) + (off))


/* what a request learned about its instance */

typedef struct {
    u_char                        instance[
                                       NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN];

    /* the hash of the instance's entry in the zone, computed once */
    uint32_t                      hash;

    /*
     * the token, its keyed hash, and its SHA-256 digest, computed only
     * when needed: ngx_http_ratelimit_policy_lookup_digest()
     */
    ngx_str_t                     token;
    u_char                        verifier[
                                       NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN];
    u_char                        digest[NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN];
    u_char                        node_verifier[
                                       NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN];

    ngx_uint_t                    state;        /* FOUND or MISSING */
    ngx_uint_t                    token_known;
    int64_t                       account_id;
    u_char                        stored_digest[
                                       NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN];
    ngx_uint_t                    has_active_plan;
    ngx_uint_t                    has_slug;
    size_t                        slug_len;
    u_char                        slug[NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX];

    ngx_uint_t                    stale;
    ngx_uint_t                    db_rc;        /* why nothing is known */

    ngx_http_ratelimit_policy_catalog_t  *catalog;

    /* the entry found: see ngx_http_ratelimit_policy_shm_alive() */
    ngx_http_ratelimit_policy_node_t     *node;

    /* a fill: the instance's usage on that UTC day, all nodes, per class */
    ngx_uint_t                    usage_day;
    int64_t                       usage[NGX_HTTP_RATELIMIT_POLICY_NCLASSES];

    /* a PATCH: the tag and the backend of its echo, see cache.c */
    int                           echo_pid;
    uint16_t                      echo_tag;

    /* private */
    ngx_http_request_t           *request;
    void                        (*resume)(ngx_http_request_t *r);
    ngx_uint_t                    rounds;
    ngx_pool_cleanup_t           *cleanup;
    ngx_event_t                  *poll;         /* allocated when needed */
    ngx_queue_t                   queue;
    unsigned                      waiting:1;
    unsigned                      stale_catalog:1;
    unsigned                      digest_ready:1;
} ngx_http_ratelimit_policy_lookup_t;


/*
 * NGX_OK: lk is filled (or lk->db_rc says why not);
 * NGX_AGAIN: lk->resume(r) is called later;
 * NGX_ERROR: internal error.
 */
ngx_int_t ngx_http_ratelimit_policy_resolve(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_lookup_t *lk);

/* this worker's copy of the catalogue, if current and fresh; or NULL */
ngx_http_ratelimit_policy_catalog_t *
    ngx_http_ratelimit_policy_catalog_current(void);

/*
 * with the zone locked: lk's entry if resolve() would answer from it at
 * once and its token is known by its keyed hash; or NULL
 */
ngx_http_ratelimit_policy_node_t *ngx_http_ratelimit_policy_cached(
    ngx_http_ratelimit_policy_shctx_t *ctx,
    ngx_http_ratelimit_policy_lookup_t *lk);

/* the request goes away: forget a lookup it waits for */
void ngx_http_ratelimit_policy_resolve_cancel(
    ngx_http_ratelimit_policy_lookup_t *lk);

/* the token's SHA-256 digest, computed on first use */
u_char *ngx_http_ratelimit_policy_lookup_digest(
    ngx_http_ratelimit_policy_lookup_t *lk);

/* the token matched the entry's digest: remember its keyed hash */
void ngx_http_ratelimit_policy_cache_verified(ngx_shm_zone_t *zone,
    ngx_http_ratelimit_policy_lookup_t *lk);

ngx_http_ratelimit_policy_policy_t *ngx_http_ratelimit_policy_catalog_find(
    ngx_http_ratelimit_policy_catalog_t *cat, u_char *slug, size_t len);

/*
 * A PATCH: its set_instance_policy() is about to go out on backend pid
 * (expect), and then either its result is stored (update), or it failed
 * (abandon; committed: it may have changed the database nevertheless).
 */
void ngx_http_ratelimit_policy_cache_expect(ngx_shm_zone_t *zone,
    ngx_http_ratelimit_policy_lookup_t *lk, int pid);
void ngx_http_ratelimit_policy_cache_update(ngx_shm_zone_t *zone,
    ngx_http_ratelimit_policy_lookup_t *lk);
void ngx_http_ratelimit_policy_cache_abandon(ngx_shm_zone_t *zone,
    ngx_http_ratelimit_policy_lookup_t *lk, ngx_uint_t committed);

/*
 * mark an instance ("*": the whole catalogue) as changed; pid: the backend
 * that notified the change, 0 if unknown
 */
void ngx_http_ratelimit_policy_invalidate(ngx_shm_zone_t *zone,
    u_char *instance, size_t len, int pid);

ngx_int_t ngx_http_ratelimit_policy_cache_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf);
void ngx_http_ratelimit_policy_cache_exit_process(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_CACHE_H_INCLUDED_ */
