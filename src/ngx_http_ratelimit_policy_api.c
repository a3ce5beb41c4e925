
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * GET / HEAD /v2/session/rate-limit: the instance's effective policy and
 * the policies its account may pick.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_api.h"
#include "ngx_http_ratelimit_policy_json.h"
#include "ngx_http_ratelimit_policy_metrics.h"
#include "ngx_http_ratelimit_policy_sha256.h"
#include "ngx_http_ratelimit_policy_variables.h"


static void ngx_http_ratelimit_policy_api_resume(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_policy_api_respond(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_policy_api_document(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, const char *message);
static ngx_inline ngx_uint_t ngx_http_ratelimit_policy_name(u_char *p,
    const char *name, size_t len);
static void ngx_http_ratelimit_policy_args(ngx_http_request_t *r,
    ngx_str_t *instance, ngx_str_t *token);
static ngx_int_t ngx_http_ratelimit_policy_get_token(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_loc_conf_t *rpcf, ngx_str_t *arg,
    ngx_str_t *token);
static ngx_int_t ngx_http_ratelimit_policy_add_header(ngx_http_request_t *r,
    const char *name, u_char *value, size_t len);
static ngx_int_t ngx_http_ratelimit_policy_patch(ngx_http_request_t *r);
static void ngx_http_ratelimit_policy_patch_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_policy_patch_slug(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, ngx_uint_t *status,
    const char **code, const char **message);
static ngx_chain_t *ngx_http_ratelimit_policy_body_in_memory(
    ngx_http_request_t *r, ngx_chain_t *in, off_t size);
static void ngx_http_ratelimit_policy_patch_resume(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_policy_patch_set(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx);
static void ngx_http_ratelimit_policy_patch_sending(
    ngx_http_ratelimit_policy_pg_query_t *q);
static void ngx_http_ratelimit_policy_patch_done(
    ngx_http_ratelimit_policy_pg_query_t *q);
static ngx_int_t ngx_http_ratelimit_policy_patch_result(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx);
static void ngx_http_ratelimit_policy_patch_store(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, u_char *slug, size_t len);
static ngx_int_t ngx_http_ratelimit_policy_engine_sync(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_policy_engine_synced(
    ngx_http_request_t *sr, void *data, ngx_int_t rc);
static void ngx_http_ratelimit_policy_patch_finish(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_policy_valid_slug(ngx_str_t *slug);


#define NGX_HTTP_RATELIMIT_POLICY_BODY_MAX       16384

/* nginx 1.22 has no status line of its own for it */
#define NGX_HTTP_RATELIMIT_POLICY_UNPROCESSABLE  422


ngx_int_t
ngx_http_ratelimit_policy_api_handler(ngx_http_request_t *r)
{
    ngx_int_t                         rc;
    ngx_uint_t                        status;
    const char                       *code, *message;
    ngx_http_ratelimit_policy_ctx_t  *ctx;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_PATCH))) {

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        if (ngx_http_ratelimit_policy_add_header(r, "Allow",
                                         (u_char *) "GET, HEAD, PATCH", 16)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_NOT_ALLOWED,
                                     "method_not_allowed",
                                     "use GET, HEAD or PATCH", NULL);
    }

    if (r->method == NGX_HTTP_PATCH) {
        return ngx_http_ratelimit_policy_patch(r);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_ratelimit_policy_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_ratelimit_policy_module);

    rc = ngx_http_ratelimit_policy_credentials(r, ctx, &status, &code,
                                               &message);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_ratelimit_policy_send_error(r, status, code, message,
                                                    NULL);
    }

    ctx->lookup.resume = ngx_http_ratelimit_policy_api_resume;

    rc = ngx_http_ratelimit_policy_resolve(r, &ctx->lookup);

    if (rc == NGX_AGAIN) {
        r->main->count++;
        return NGX_DONE;
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_policy_api_respond(r, ctx);
}


static void
ngx_http_ratelimit_policy_api_resume(ngx_http_request_t *r)
{
    ngx_connection_t                 *c;
    ngx_http_ratelimit_policy_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_policy_module);

    ngx_http_finalize_request(r,
                              ngx_http_ratelimit_policy_api_respond(r, ctx));

    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_ratelimit_policy_api_respond(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx)
{
    ngx_int_t    rc;
    ngx_uint_t   status;
    const char  *code, *message;

    rc = ngx_http_ratelimit_policy_authorize(r, ctx, &status, &code, &message);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_ratelimit_policy_send_error(r, status, code, message,
                                                    NULL);
    }

    return ngx_http_ratelimit_policy_api_document(r, ctx, NULL);
}


ngx_int_t
ngx_http_ratelimit_policy_credentials(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, ngx_uint_t *status,
    const char **code, const char **message)
{
    ngx_str_t                               instance, token, arg_instance,
                                            arg_token;
    ngx_http_ratelimit_policy_shctx_t      *shctx;
    ngx_http_ratelimit_policy_loc_conf_t   *rpcf;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    rpcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_policy_module);

    /*
     * from now on the "request:" that nginx adds to every error log line
     * of this request shows no token ($request never does)
     */

    if (ngx_http_ratelimit_policy_mask_log(r) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_ratelimit_policy_args(r, &arg_instance, &arg_token);

    if (rpcf->instance) {
        if (ngx_http_complex_value(r, rpcf->instance, &instance) != NGX_OK) {
            return NGX_ERROR;
        }

    } else {
        instance = arg_instance;
    }

    *status = NGX_HTTP_BAD_REQUEST;

    if (instance.len == 0) {
        *code = "missing_parameter";
        *message = "instance_id is required";
        return NGX_DECLINED;
    }

    if (instance.len != NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN) {
        goto invalid;
    }

    /*
     * the zone's memory for the instance, fetched meanwhile: as early as
     * possible, this is the first of the request's cache misses
     */

    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);
    shctx = rpmcf->shm_zone->data;

    ctx->lookup.hash = ngx_http_ratelimit_policy_shm_prefetch(shctx,
                                       NGX_HTTP_RATELIMIT_POLICY_NODE_INSTANCE,
                                       instance.data, instance.len);

    if (!ngx_http_ratelimit_policy_alnum12(instance.data)) {
        goto invalid;
    }

    if (ngx_http_ratelimit_policy_get_token(r, rpcf, &arg_token, &token)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (token.len == 0) {
        *code = "missing_parameter";
        *message = "access_token is required";
        return NGX_DECLINED;
    }

    ngx_memcpy(ctx->lookup.instance, instance.data, instance.len);

    ctx->instance.data = ctx->lookup.instance;
    ctx->instance.len = instance.len;

    /*
     * the SHA-256 digest waits until a miss or a new token needs it; a
     * token already verified for this entry is known by its keyed hash
     */

    ctx->lookup.token = token;
    ctx->lookup.digest_ready = 0;

    ngx_http_ratelimit_policy_siphash128(ctx->lookup.verifier, shctx->sh->key,
                                         token.data, token.len);

    ngx_http_ratelimit_policy_shm_prefetch_entry(shctx, ctx->lookup.hash);

    return NGX_OK;

invalid:

    *code = "invalid_instance_id";
    *message = "instance_id must be 12 letters or digits";

    return NGX_DECLINED;
}


/*
 * the first "instance_id" and "access_token" arguments, found as
 * ngx_http_arg() finds them (the name case-insensitive, at the start of an
 * argument, then "="), in one pass over the arguments; len 0 and data NULL
 * when there is none
 */

static void
ngx_http_ratelimit_policy_args(ngx_http_request_t *r, ngx_str_t *instance,
    ngx_str_t *token)
{
    u_char  *p, *q, *last;

    ngx_str_null(instance);
    ngx_str_null(token);

    if (r->args.len == 0) {
        /* no query string: r->args.data may be NULL, and NULL + 0 is UB */
        return;
    }

    p = r->args.data;
    last = p + r->args.len;

    for ( /* void */ ; p < last; p = q + 1) {

        q = memchr(p, '&', last - p);
        if (q == NULL) {
            q = last;
        }

        switch (*p | 0x20) {

        case 'i':
            if (instance->data == NULL
                && q - p > (ssize_t) sizeof("instance_id") - 1
                && p[sizeof("instance_id") - 1] == '='
                && ngx_http_ratelimit_policy_name(p, "instance_id",
                                                  sizeof("instance_id") - 1))
            {
                instance->data = p + sizeof("instance_id=") - 1;
                instance->len = q - instance->data;
            }

            break;

        case 'a':
            if (token->data == NULL
                && q - p > (ssize_t) sizeof("access_token") - 1
                && p[sizeof("access_token") - 1] == '='
                && ngx_http_ratelimit_policy_name(p, "access_token",
                                                  sizeof("access_token") - 1))
            {
                token->data = p + sizeof("access_token=") - 1;
                token->len = q - token->data;
            }

            break;
        }

        if (instance->data && token->data) {
            break;
        }
    }
}


/*
 * as ngx_strncasecmp() compares with a lowercase name, inline; a name as
 * clients send it, in lowercase, is one comparison of a few words
 */

static ngx_inline ngx_uint_t
ngx_http_ratelimit_policy_name(u_char *p, const char *name, size_t len)
{
    u_char  c;
    size_t  i;

    if (ngx_memcmp(p, name, len) == 0) {
        return 1;
    }

    for (i = 0; i < len; i++) {
        c = p[i];

        if (c >= 'A' && c <= 'Z') {
            c |= 0x20;
        }

        if (c != (u_char) name[i]) {
            return 0;
        }
    }

    return 1;
}


/* arg: the access_token argument, see ngx_http_ratelimit_policy_args() */

static ngx_int_t
ngx_http_ratelimit_policy_get_token(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_loc_conf_t *rpcf, ngx_str_t *arg,
    ngx_str_t *token)
{
    u_char           *src, *dst;
    ngx_table_elt_t  *h;

    if (rpcf->token) {
        return ngx_http_complex_value(r, rpcf->token, token);
    }

    if (arg->len) {

        if (memchr(arg->data, '%', arg->len) == NULL) {
            /* nothing to unescape: the argument as it is */
            *token = *arg;
            return NGX_OK;
        }

        token->data = ngx_pnalloc(r->pool, arg->len);
        if (token->data == NULL) {
            return NGX_ERROR;
        }

        src = arg->data;
        dst = token->data;

        ngx_unescape_uri(&dst, &src, arg->len, 0);

        token->len = dst - token->data;

        return NGX_OK;
    }

    h = r->headers_in.authorization;

    if (h != NULL
        && h->value.len > sizeof("Bearer ") - 1
        && ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1) == 0)
    {
        token->data = h->value.data + sizeof("Bearer ") - 1;
        token->len = h->value.len - (sizeof("Bearer ") - 1);

        while (token->len && token->data[0] == ' ') {
            token->data++;
            token->len--;
        }

        return NGX_OK;
    }

    token->len = 0;
    token->data = NULL;

    return NGX_OK;
}


ngx_int_t
ngx_http_ratelimit_policy_authorize(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, ngx_uint_t *status,
    const char **code, const char **message)
{
    ngx_uint_t                              stored;
    ngx_http_ratelimit_policy_lookup_t     *lk;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    lk = &ctx->lookup;

    if (lk->catalog == NULL
        || lk->state == NGX_HTTP_RATELIMIT_POLICY_STATE_NONE)
    {
        if (lk->db_rc == NGX_HTTP_RATELIMIT_POLICY_PG_TIMEOUT) {
            *status = NGX_HTTP_GATEWAY_TIME_OUT;
            *code = "database_timeout";
            *message = "the database did not answer in time";

        } else {
            *status = NGX_HTTP_SERVICE_UNAVAILABLE;
            *code = "database_unavailable";
            *message = "the database is unavailable, retry later";
        }

        return NGX_DECLINED;
    }

    if (lk->state == NGX_HTTP_RATELIMIT_POLICY_STATE_MISSING) {

        if (lk->token_known) {
            *status = NGX_HTTP_NOT_FOUND;
            *code = "instance_not_found";
            *message = "no such instance for this account";

        } else {
            *status = NGX_HTTP_UNAUTHORIZED;
            *code = "invalid_token";
            *message = "the access token is not valid for this instance";
        }

        return NGX_DECLINED;
    }

    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);

    if (ngx_http_ratelimit_policy_digest_equal(lk->verifier, lk->node_verifier,
                                        NGX_HTTP_RATELIMIT_POLICY_VERIFIER_LEN))
    {
        /* this very token matched the entry's digest before */

    } else if (ngx_http_ratelimit_policy_digest_equal(
                   ngx_http_ratelimit_policy_lookup_digest(lk),
                   lk->stored_digest, NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN))
    {
        if (!lk->stale) {
            ngx_http_ratelimit_policy_cache_verified(rpmcf->shm_zone, lk);
        }

    } else {
        *status = NGX_HTTP_UNAUTHORIZED;
        *code = "invalid_token";
        *message = "the access token is not valid for this instance";
        return NGX_DECLINED;
    }

    ctx->effective = ngx_http_ratelimit_policy_effective(lk->catalog, rpmcf,
                                        lk->has_slug ? lk->slug : NULL,
                                        lk->slug_len, lk->has_active_plan,
                                        &stored);

    if (ctx->effective == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit_policy: the default policy \"%V\" is "
                      "not in the catalogue", &rpmcf->default_slug);

        ctx->policy = rpmcf->default_slug;
        return NGX_OK;
    }

    /* the catalogue may be replaced before $ratelimit_policy is logged */

    ctx->policy.len = ctx->effective->slug_len;
    ctx->policy.data = ngx_pnalloc(r->pool, ctx->policy.len);
    if (ctx->policy.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ctx->policy.data,
               ngx_http_ratelimit_policy_catalog_str(lk->catalog,
                                                     ctx->effective->slug),
               ctx->policy.len);

    return NGX_OK;
}


/*
 * The effective policy: the stored one (slug, NULL if none) if the
 * catalogue has it and the account may have it (a free policy, or an
 * active plan), else the default one; NULL if the catalogue has neither.
 * *stored: whether it is the stored one.
 */

ngx_http_ratelimit_policy_policy_t *
ngx_http_ratelimit_policy_effective(ngx_http_ratelimit_policy_catalog_t *cat,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf, u_char *slug, size_t len,
    ngx_uint_t plan, ngx_uint_t *stored)
{
    ngx_http_ratelimit_policy_policy_t  *p;

    if (slug != NULL) {
        p = ngx_http_ratelimit_policy_catalog_find(cat, slug, len);

        if (p != NULL && (p->is_free || plan)) {
            *stored = 1;
            return p;
        }
    }

    *stored = 0;

    return ngx_http_ratelimit_policy_catalog_find(cat,
                                                  rpmcf->default_slug.data,
                                                  rpmcf->default_slug.len);
}


static ngx_int_t
ngx_http_ratelimit_policy_api_document(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, const char *message)
{
    size_t                                len;
    ngx_buf_t                            *b;
    ngx_str_t                             current, stored;
    ngx_uint_t                            plan, show_stored;
    ngx_chain_t                           out;
    ngx_http_ratelimit_policy_lookup_t   *lk;
    ngx_http_ratelimit_policy_catalog_t  *cat;

    lk = &ctx->lookup;
    cat = lk->catalog;
    plan = lk->has_active_plan ? 1 : 0;

    if (ctx->effective) {
        current.data = ngx_http_ratelimit_policy_catalog_str(cat,
                                                  ctx->effective->slug_json);
        current.len = ctx->effective->slug_json_len;

    } else if (ngx_http_ratelimit_policy_json_string(r->pool,
                                                     ctx->policy.data,
                                                     ctx->policy.len,
                                                     &current)
               != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a stored policy that is not the effective one is shown too */

    show_stored = lk->has_slug
                  && (ctx->policy.len != lk->slug_len
                      || ngx_memcmp(ctx->policy.data, lk->slug, lk->slug_len)
                         != 0);

    stored.len = 0;

    if (show_stored
        && ngx_http_ratelimit_policy_json_string(r->pool, lk->slug,
                                                 lk->slug_len, &stored)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = sizeof("{\"status\":\"success\",\"current_policy\":") - 1
          + current.len
          + sizeof(",\"has_active_plan\":false") - 1
          + sizeof(",\"free_policies\":") - 1 + cat->free_json_len
          + sizeof(",\"policies\":") - 1 + cat->policies_json_len[plan]
          + sizeof("}") - 1;

    if (show_stored) {
        len += sizeof(",\"stored_policy\":") - 1 + stored.len;
    }

    if (message) {
        len += sizeof(",\"message\":\"\"") - 1 + ngx_strlen(message);
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, "{\"status\":\"success\",\"current_policy\":",
                         sizeof("{\"status\":\"success\",\"current_policy\":")
                         - 1);
    b->last = ngx_cpymem(b->last, current.data, current.len);

    if (plan) {
        b->last = ngx_cpymem(b->last, ",\"has_active_plan\":true",
                             sizeof(",\"has_active_plan\":true") - 1);

    } else {
        b->last = ngx_cpymem(b->last, ",\"has_active_plan\":false",
                             sizeof(",\"has_active_plan\":false") - 1);
    }

    b->last = ngx_cpymem(b->last, ",\"free_policies\":",
                         sizeof(",\"free_policies\":") - 1);
    b->last = ngx_cpymem(b->last,
                         ngx_http_ratelimit_policy_catalog_str(cat,
                                                        cat->free_json),
                         cat->free_json_len);

    b->last = ngx_cpymem(b->last, ",\"policies\":",
                         sizeof(",\"policies\":") - 1);
    b->last = ngx_cpymem(b->last,
                         ngx_http_ratelimit_policy_catalog_str(cat,
                                                  cat->policies_json[plan]),
                         cat->policies_json_len[plan]);

    if (show_stored) {
        b->last = ngx_cpymem(b->last, ",\"stored_policy\":",
                             sizeof(",\"stored_policy\":") - 1);
        b->last = ngx_cpymem(b->last, stored.data, stored.len);
    }

    if (message) {
        /* a constant of ours: nothing to escape */
        b->last = ngx_sprintf(b->last, ",\"message\":\"%s\"", message);
    }

    *b->last++ = '}';

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_ratelimit_policy_send_json(r, NGX_HTTP_OK, &out,
                                               b->last - b->pos);
}


ngx_int_t
ngx_http_ratelimit_policy_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message, ngx_str_t *current_policy)
{
    u_char                                 *p;
    time_t                                  retry;
    ngx_buf_t                              *b;
    ngx_str_t                               body;
    ngx_chain_t                             out;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ratelimit_policy: %ui %s", status, code);

    if (ngx_http_ratelimit_policy_json_error(r->pool, &body, code, message,
                                             current_policy)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        rpmcf = ngx_http_get_module_main_conf(r,
                                            ngx_http_ratelimit_policy_module);

        retry = ngx_http_ratelimit_policy_pg_retry_after(rpmcf->pg);

        p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_http_ratelimit_policy_add_header(r, "Retry-After", p,
                                                 ngx_sprintf(p, "%T", retry)
                                                 - p)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = body.data;
    b->last = body.data + body.len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_ratelimit_policy_send_json(r, status, &out, body.len);
}


ngx_int_t
ngx_http_ratelimit_policy_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_chain_t *out, size_t len)
{
    ngx_int_t  rc;

    ngx_http_ratelimit_policy_metrics_api(r, status);

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;

    if (status == NGX_HTTP_RATELIMIT_POLICY_UNPROCESSABLE) {
        ngx_str_set(&r->headers_out.status_line, "422 Unprocessable Entity");
    }

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = sizeof("application/json") - 1;
    r->headers_out.content_type_lowcase = NULL;

    if (ngx_http_ratelimit_policy_add_header(r, "Cache-Control",
                                             (u_char *) "no-store", 8)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_output_filter(r, out);
}


static ngx_int_t
ngx_http_ratelimit_policy_add_header(ngx_http_request_t *r, const char *name,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}


/*
 * PATCH: the body is read in memory (at most 16 KiB), the instance is
 * authenticated like GET, the change is made by
 * ratelimit.set_instance_policy() in one round trip (the database refuses
 * a paid policy without an active plan, whatever the cache says), the zone
 * is updated at once, and the engine is told through a PUT subrequest.
 */

static ngx_int_t
ngx_http_ratelimit_policy_patch(ngx_http_request_t *r)
{
    ngx_int_t                         rc;
    ngx_http_ratelimit_policy_ctx_t  *ctx;

    if (r->headers_in.content_length_n > NGX_HTTP_RATELIMIT_POLICY_BODY_MAX) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                     "body_too_large",
                                     "the body is larger than 16 KiB", NULL);
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_ratelimit_policy_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_ratelimit_policy_module);

    rc = ngx_http_read_client_request_body(r,
                                        ngx_http_ratelimit_policy_patch_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_ratelimit_policy_patch_body(ngx_http_request_t *r)
{
    ngx_int_t                         rc;
    ngx_uint_t                        status;
    const char                       *code, *message;
    ngx_http_ratelimit_policy_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_policy_module);

    rc = ngx_http_ratelimit_policy_credentials(r, ctx, &status, &code,
                                               &message);

    if (rc == NGX_OK) {
        rc = ngx_http_ratelimit_policy_patch_slug(r, ctx, &status, &code,
                                                  &message);
    }

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r,
                      ngx_http_ratelimit_policy_send_error(r, status, code,
                                                           message, NULL));
        return;
    }

    ctx->lookup.resume = ngx_http_ratelimit_policy_patch_resume;

    rc = ngx_http_ratelimit_policy_resolve(r, &ctx->lookup);

    if (rc == NGX_AGAIN) {
        /* the request stays alive: the body reader's reference is ours */
        return;
    }

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_ratelimit_policy_patch_set(r, ctx);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


static ngx_int_t
ngx_http_ratelimit_policy_patch_slug(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, ngx_uint_t *status,
    const char **code, const char **message)
{
    u_char       *src, *dst;
    off_t         size;
    ngx_str_t     arg, body_slug, *type;
    ngx_int_t     rc;
    ngx_uint_t    in_file;
    ngx_chain_t  *cl, *body;

    body_slug.len = 0;
    body_slug.data = NULL;

    size = 0;
    in_file = 0;
    body = NULL;

    if (r->request_body) {
        body = r->request_body->bufs;

        for (cl = body; cl; cl = cl->next) {
            size += ngx_buf_size(cl->buf);

            if (!ngx_buf_in_memory(cl->buf) && cl->buf->in_file) {
                in_file = 1;
            }
        }
    }

    if (size > NGX_HTTP_RATELIMIT_POLICY_BODY_MAX) {
        *status = NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        *code = "body_too_large";
        *message = "the body is larger than 16 KiB";
        return NGX_DECLINED;
    }

    if (in_file) {
        /* past client_body_buffer_size: at most 16 KiB to read back */

        body = ngx_http_ratelimit_policy_body_in_memory(r, body, size);
        if (body == NULL) {
            return NGX_ERROR;
        }
    }

    if (size > 0) {
        type = r->headers_in.content_type ? &r->headers_in.content_type->value
                                          : NULL;

        if (type != NULL
            && type->len >= sizeof("application/json") - 1
            && ngx_strncasecmp(type->data, (u_char *) "application/json",
                               sizeof("application/json") - 1) == 0
            && (type->len == sizeof("application/json") - 1
                || type->data[sizeof("application/json") - 1] == ';'
                || type->data[sizeof("application/json") - 1] == ' '))
        {
            rc = ngx_http_ratelimit_policy_json_parse_slug(r->pool, body,
                                                   &body_slug, message);

        } else if (type != NULL
                   && type->len
                      >= sizeof("application/x-www-form-urlencoded") - 1
                   && ngx_strncasecmp(type->data,
                              (u_char *) "application/x-www-form-urlencoded",
                              sizeof("application/x-www-form-urlencoded") - 1)
                      == 0)
        {
            rc = ngx_http_ratelimit_policy_form_slug(r->pool, body,
                                                     &body_slug, message);

        } else {
            *status = NGX_HTTP_UNSUPPORTED_MEDIA_TYPE;
            *code = "unsupported_media_type";
            *message = "the body must be application/json or "
                       "application/x-www-form-urlencoded";
            return NGX_DECLINED;
        }

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc != NGX_OK) {
            *status = NGX_HTTP_BAD_REQUEST;
            *code = "invalid_body";
            return NGX_DECLINED;
        }
    }

    /* the query string wins over the body */

    if (ngx_http_arg(r, (u_char *) "policy_slug", 11, &arg) == NGX_OK
        && arg.len)
    {
        ctx->slug.data = ngx_pnalloc(r->pool, arg.len + 1);
        if (ctx->slug.data == NULL) {
            return NGX_ERROR;
        }

        src = arg.data;
        dst = ctx->slug.data;

        ngx_unescape_uri(&dst, &src, arg.len, 0);

        ctx->slug.len = dst - ctx->slug.data;
        *dst = '\0';

    } else {
        ctx->slug = body_slug;
    }

    if (ctx->slug.len == 0) {
        *status = NGX_HTTP_BAD_REQUEST;
        *code = "missing_parameter";
        *message = "policy_slug is required";
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_chain_t *
ngx_http_ratelimit_policy_body_in_memory(ngx_http_request_t *r,
    ngx_chain_t *in, off_t size)
{
    size_t        len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl, *out;

    b = ngx_create_temp_buf(r->pool, (size_t) size + 1);
    if (b == NULL) {
        return NULL;
    }

    for (cl = in; cl; cl = cl->next) {

        if (ngx_buf_in_memory(cl->buf)) {
            b->last = ngx_cpymem(b->last, cl->buf->pos,
                                 cl->buf->last - cl->buf->pos);
            continue;
        }

        if (!cl->buf->in_file) {
            continue;
        }

        len = (size_t) (cl->buf->file_last - cl->buf->file_pos);

        n = ngx_read_file(cl->buf->file, b->last, len, cl->buf->file_pos);

        if (n != (ssize_t) len) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "ratelimit_policy: could not read the request "
                          "body back from \"%V\"", &cl->buf->file->name);
            return NULL;
        }

        b->last += n;
    }

    out = ngx_alloc_chain_link(r->pool);
    if (out == NULL) {
        return NULL;
    }

    out->buf = b;
    out->next = NULL;

    return out;
}


ngx_int_t
ngx_http_ratelimit_policy_form_slug(ngx_pool_t *pool, ngx_chain_t *in,
    ngx_str_t *slug, const char **message)
{
    u_char       *body, *p, *last, *name, *value, *end, *src, *dst;
    size_t        len;
    ngx_chain_t  *cl;

    len = 0;

    for (cl = in; cl; cl = cl->next) {
        len += cl->buf->last - cl->buf->pos;
    }

    body = ngx_pnalloc(pool, len);
    if (body == NULL) {
        return NGX_ERROR;
    }

    p = body;

    for (cl = in; cl; cl = cl->next) {
        p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
    }

    last = p;
    slug->len = 0;
    slug->data = NULL;

    for (p = body; p < last; p = end + 1) {
        name = p;
        end = ngx_strlchr(p, last, '&');

        if (end == NULL) {
            end = last;
        }

        value = ngx_strlchr(name, end, '=');

        if (value == NULL) {
            continue;
        }

        if (value - name != sizeof("policy_slug") - 1
            || ngx_strncmp(name, "policy_slug", sizeof("policy_slug") - 1)
               != 0)
        {
            continue;
        }

        if (slug->data) {
            *message = "the body has policy_slug twice";
            return NGX_DECLINED;
        }

        value++;

        slug->data = ngx_pnalloc(pool, end - value + 1);
        if (slug->data == NULL) {
            return NGX_ERROR;
        }

        src = value;
        dst = slug->data;

        ngx_unescape_uri(&dst, &src, end - value, 0);

        slug->len = dst - slug->data;
        *dst = '\0';
    }

    return NGX_OK;
}


static void
ngx_http_ratelimit_policy_patch_resume(ngx_http_request_t *r)
{
    ngx_int_t                         rc;
    ngx_connection_t                 *c;
    ngx_http_ratelimit_policy_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_policy_module);

    rc = ngx_http_ratelimit_policy_patch_set(r, ctx);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_ratelimit_policy_patch_set(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx)
{
    ngx_int_t                               rc;
    ngx_uint_t                              status;
    const char                             *code, *message;
    ngx_http_ratelimit_policy_pg_query_t   *q;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    rc = ngx_http_ratelimit_policy_authorize(r, ctx, &status, &code,
                                             &message);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_ratelimit_policy_send_error(r, status, code, message,
                                                    NULL);
    }

    if (ngx_http_ratelimit_policy_valid_slug(&ctx->slug) != NGX_OK) {
        return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_RATELIMIT_POLICY_UNPROCESSABLE,
                                     "unknown_policy",
                                     "there is no policy with that slug",
                                     NULL);
    }

    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);

    q = ngx_pcalloc(r->pool, sizeof(ngx_http_ratelimit_policy_pg_query_t));
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->query = q;

    q->stmt = NGX_HTTP_RATELIMIT_POLICY_STMT_SET;
    q->nparams = 2;
    q->values[0] = (const char *) ctx->lookup.instance;
    q->values[1] = (const char *) ctx->slug.data;
    q->handler = ngx_http_ratelimit_policy_patch_done;
    q->sending = ngx_http_ratelimit_policy_patch_sending;
    q->data = r;
    q->log = r->connection->log;

    /* text parameters are NUL-terminated */

    q->values[0] = ngx_pnalloc(r->pool,
                               NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN + 1);
    if (q->values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy((u_char *) q->values[0], ctx->lookup.instance,
               NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);
    ((u_char *) q->values[0])[NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN] = '\0';

    if (ngx_http_ratelimit_policy_pg_send(rpmcf->pg, q) != NGX_OK) {
        return ngx_http_ratelimit_policy_patch_result(r, ctx);
    }

    return NGX_DONE;
}


/* the zone expects the notification of this change from that backend */

static void
ngx_http_ratelimit_policy_patch_sending(ngx_http_ratelimit_policy_pg_query_t *q)
{
    ngx_http_request_t                     *r;
    ngx_http_ratelimit_policy_ctx_t        *ctx;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    r = q->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_policy_module);
    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);

    ngx_http_ratelimit_policy_cache_expect(rpmcf->shm_zone, &ctx->lookup,
                                           q->backend_pid);
}


static void
ngx_http_ratelimit_policy_patch_done(ngx_http_ratelimit_policy_pg_query_t *q)
{
    ngx_int_t                         rc;
    ngx_connection_t                 *c;
    ngx_http_request_t               *r;
    ngx_http_ratelimit_policy_ctx_t  *ctx;

    r = q->data;
    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_policy_module);

    rc = ngx_http_ratelimit_policy_patch_result(r, ctx);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_ratelimit_policy_patch_result(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx)
{
    char                                   *sqlstate;
    ngx_int_t                               rc;
    ngx_uint_t                              status;
    const char                             *code, *message;
    ngx_http_ratelimit_policy_pg_query_t   *q;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    q = ctx->query;
    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);

    /*
     * a failure: an SQL error rolled the change back; a timeout or a lost
     * connection may have come after the commit
     */

    if (q->rc != NGX_HTTP_RATELIMIT_POLICY_PG_OK) {
        ngx_http_ratelimit_policy_cache_abandon(rpmcf->shm_zone, &ctx->lookup,
                            q->rc != NGX_HTTP_RATELIMIT_POLICY_PG_SQL_ERROR);
    }

    switch (q->rc) {

    case NGX_HTTP_RATELIMIT_POLICY_PG_OK:
        break;

    case NGX_HTTP_RATELIMIT_POLICY_PG_TIMEOUT:
        return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_GATEWAY_TIME_OUT,
                                     "database_timeout",
                                     "the database did not answer in time",
                                     NULL);

    case NGX_HTTP_RATELIMIT_POLICY_PG_SQL_ERROR:

        sqlstate = q->result ? PQresultErrorField(q->result,
                                                  PG_DIAG_SQLSTATE)
                             : NULL;

        if (sqlstate && ngx_strcmp(sqlstate, "RLP01") == 0) {
            return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_NOT_FOUND,
                                     "instance_not_found",
                                     "no such instance for this account",
                                     NULL);
        }

        if (sqlstate && ngx_strcmp(sqlstate, "RLP02") == 0) {
            return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_RATELIMIT_POLICY_UNPROCESSABLE,
                                     "unknown_policy",
                                     "there is no policy with that slug",
                                     NULL);
        }

        if (sqlstate && ngx_strcmp(sqlstate, "RLP03") == 0) {
            return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_FORBIDDEN,
                                     "policy_not_available",
                                     "this policy needs an active plan",
                                     NULL);
        }

        if (sqlstate && ngx_strcmp(sqlstate, "57014") == 0) {
            return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_GATEWAY_TIME_OUT,
                                     "database_timeout",
                                     "the database did not answer in time",
                                     NULL);
        }

        /* fall through */

    default:
        return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "database_unavailable",
                                     "the database is unavailable, "
                                     "retry later", NULL);
    }

    if (PQntuples(q->result) != 1 || PQgetisnull(q->result, 0, 0)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit_policy: set_instance_policy() returned "
                      "no slug");
        ngx_http_ratelimit_policy_cache_abandon(rpmcf->shm_zone, &ctx->lookup,
                                                1);
        return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "database_unavailable",
                                     "the database is unavailable, "
                                     "retry later", NULL);
    }

    ngx_http_ratelimit_policy_patch_store(r, ctx,
                                      (u_char *) PQgetvalue(q->result, 0, 0),
                                      PQgetlength(q->result, 0, 0));

    rc = ngx_http_ratelimit_policy_authorize(r, ctx, &status, &code,
                                             &message);
    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "ratelimit_policy: instance \"%V\" now has policy \"%V\"",
                  &ctx->instance, &ctx->policy);

    rc = ngx_http_ratelimit_policy_engine_sync(r, ctx);

    if (rc == NGX_DONE || rc == NGX_ERROR) {
        return rc == NGX_DONE ? NGX_DONE : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_policy_api_document(r, ctx, "policy updated");
}


/* the zone learns the change at once; a lookup in flight will not undo it */

static void
ngx_http_ratelimit_policy_patch_store(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, u_char *slug, size_t len)
{
    ngx_http_ratelimit_policy_policy_t     *p;
    ngx_http_ratelimit_policy_lookup_t     *lk;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    lk = &ctx->lookup;

    if (len > NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX) {
        len = NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX;
    }

    lk->has_slug = 1;
    lk->slug_len = len;
    ngx_memcpy(lk->slug, slug, len);

    /* the database accepted a paid policy: the plan is active */

    p = ngx_http_ratelimit_policy_catalog_find(lk->catalog, slug, len);

    if (p != NULL && !p->is_free) {
        lk->has_active_plan = 1;
    }

    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);

    ngx_http_ratelimit_policy_cache_update(rpmcf->shm_zone, lk);
}


static ngx_int_t
ngx_http_ratelimit_policy_engine_sync(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx)
{
    ngx_buf_t                             *b;
    ngx_str_t                              body;
    ngx_chain_t                           *cl;
    ngx_table_elt_t                       *h;
    ngx_http_request_t                    *sr;
    ngx_http_post_subrequest_t            *ps;
    ngx_http_ratelimit_policy_loc_conf_t  *rpcf;

    rpcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_policy_module);

    if (rpcf->engine_sync.len == 0 || ctx->effective == NULL) {
        return NGX_DECLINED;
    }

    if (ngx_http_ratelimit_policy_json_engine(r->pool, &ctx->instance,
                                              ctx->lookup.catalog,
                                              ctx->effective, &body)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    if (ps == NULL) {
        return NGX_ERROR;
    }

    ps->handler = ngx_http_ratelimit_policy_engine_synced;
    ps->data = ctx;

    if (ngx_http_subrequest(r, &rpcf->engine_sync, NULL, &sr, ps,
                            NGX_HTTP_SUBREQUEST_WAITED)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* only the status matters; the engine's body is not sent anywhere */

    sr->header_only = 1;

    sr->method = NGX_HTTP_PUT;
    ngx_str_set(&sr->method_name, "PUT");

    /* the client's headers (and its token) are not passed on */

    if (ngx_list_init(&sr->headers_in.headers, r->pool, 4,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    sr->headers_in.authorization = NULL;
    sr->headers_in.cookies.nelts = 0;

    h = ngx_list_push(&sr->headers_in.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Content-Type");
    ngx_str_set(&h->value, "application/json");
    h->lowcase_key = (u_char *) "content-type";
    sr->headers_in.content_type = h;

    sr->headers_in.content_length_n = body.len;
    sr->headers_in.content_length = NULL;
    sr->headers_in.chunked = 0;

    sr->request_body = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
    if (sr->request_body == NULL) {
        return NGX_ERROR;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body.data;
    b->last = body.data + body.len;
    b->memory = 1;
    b->last_buf = 1;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    cl->next = NULL;

    sr->request_body->bufs = cl;

    r->write_event_handler = ngx_http_ratelimit_policy_patch_finish;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_ratelimit_policy_engine_synced(ngx_http_request_t *sr, void *data,
    ngx_int_t rc)
{
    ngx_http_ratelimit_policy_ctx_t  *ctx = data;

    ctx->sync_done = 1;
    ctx->sync_status = sr->headers_out.status;

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE || rc == NGX_ERROR) {
        ctx->sync_status = (rc == NGX_ERROR) ? NGX_HTTP_BAD_GATEWAY : rc;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, sr->connection->log, 0,
                   "ratelimit_policy: engine sync done, rc:%i status:%ui",
                   rc, ctx->sync_status);

    return rc;
}


static void
ngx_http_ratelimit_policy_patch_finish(ngx_http_request_t *r)
{
    ngx_http_ratelimit_policy_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_policy_module);

    if (!ctx->sync_done) {
        return;
    }

    r->write_event_handler = ngx_http_request_empty_handler;

    if (ctx->sync_status >= NGX_HTTP_OK
        && ctx->sync_status < NGX_HTTP_SPECIAL_RESPONSE)
    {
        ngx_http_finalize_request(r,
                      ngx_http_ratelimit_policy_api_document(r, ctx,
                                                          "policy updated"));
        return;
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "ratelimit_policy: the engine answered %ui to the policy "
                  "of instance \"%V\"", ctx->sync_status, &ctx->instance);

    ngx_http_finalize_request(r,
                  ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_BAD_GATEWAY,
                                     "engine_sync_failed",
                                     "the policy is saved, but the engine "
                                     "was not updated; retry the request",
                                     &ctx->policy));
}


static ngx_int_t
ngx_http_ratelimit_policy_valid_slug(ngx_str_t *slug)
{
    u_char      c;
    ngx_uint_t  i;

    if (slug->len == 0 || slug->len > NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX) {
        return NGX_DECLINED;
    }

    for (i = 0; i < slug->len; i++) {
        c = slug->data[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
              || (c >= 'A' && c <= 'Z') || c == '_' || c == '-' || c == '.'))
        {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}
