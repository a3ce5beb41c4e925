
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
#include "ngx_http_ratelimit_policy_sha256.h"


static void ngx_http_ratelimit_policy_api_resume(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_policy_api_respond(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_policy_api_document(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, const char *message);
static ngx_int_t ngx_http_ratelimit_policy_get_token(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_loc_conf_t *rpcf, ngx_str_t *token);
static ngx_int_t ngx_http_ratelimit_policy_add_header(ngx_http_request_t *r,
    const char *name, u_char *value, size_t len);


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
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_ratelimit_policy_send_error(r,
                                     NGX_HTTP_NOT_IMPLEMENTED,
                                     "not_implemented",
                                     "changing the policy is not available "
                                     "in this version", NULL);
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
    u_char                                *p;
    ngx_str_t                              instance, token;
    ngx_uint_t                             i;
    ngx_http_ratelimit_policy_loc_conf_t  *rpcf;

    rpcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_policy_module);

    if (rpcf->instance) {
        if (ngx_http_complex_value(r, rpcf->instance, &instance) != NGX_OK) {
            return NGX_ERROR;
        }

    } else if (ngx_http_arg(r, (u_char *) "instance_id", 11, &instance)
               != NGX_OK)
    {
        instance.len = 0;
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

    for (i = 0; i < instance.len; i++) {
        p = &instance.data[i];

        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z')
              || (*p >= 'A' && *p <= 'Z')))
        {
            goto invalid;
        }
    }

    if (ngx_http_ratelimit_policy_get_token(r, rpcf, &token) != NGX_OK) {
        return NGX_ERROR;
    }

    if (token.len == 0) {
        *code = "missing_parameter";
        *message = "access_token is required";
        return NGX_DECLINED;
    }

    ctx->instance.data = ngx_pnalloc(r->pool, instance.len);
    if (ctx->instance.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ctx->instance.data, instance.data, instance.len);
    ctx->instance.len = instance.len;

    ngx_memcpy(ctx->lookup.instance, instance.data, instance.len);

    ngx_http_ratelimit_policy_sha256(ctx->lookup.digest, token.data,
                                     token.len);

    return NGX_OK;

invalid:

    *code = "invalid_instance_id";
    *message = "instance_id must be 12 letters or digits";

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_ratelimit_policy_get_token(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_loc_conf_t *rpcf, ngx_str_t *token)
{
    u_char           *src, *dst;
    ngx_str_t         arg;
    ngx_table_elt_t  *h;

    if (rpcf->token) {
        return ngx_http_complex_value(r, rpcf->token, token);
    }

    if (ngx_http_arg(r, (u_char *) "access_token", 12, &arg) == NGX_OK
        && arg.len)
    {
        token->data = ngx_pnalloc(r->pool, arg.len);
        if (token->data == NULL) {
            return NGX_ERROR;
        }

        src = arg.data;
        dst = token->data;

        ngx_unescape_uri(&dst, &src, arg.len, 0);

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
    ngx_http_ratelimit_policy_policy_t     *stored;
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

    if (!ngx_http_ratelimit_policy_digest_equal(lk->digest, lk->stored_digest,
                                          NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN))
    {
        *status = NGX_HTTP_UNAUTHORIZED;
        *code = "invalid_token";
        *message = "the access token is not valid for this instance";
        return NGX_DECLINED;
    }

    /* the effective policy */

    rpmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_policy_module);

    stored = NULL;

    if (lk->has_slug) {
        stored = ngx_http_ratelimit_policy_catalog_find(lk->catalog, lk->slug,
                                                        lk->slug_len);
    }

    if (stored != NULL && (stored->is_free || lk->has_active_plan)) {
        ctx->effective = stored;

    } else {
        ctx->effective = ngx_http_ratelimit_policy_catalog_find(lk->catalog,
                                                  rpmcf->default_slug.data,
                                                  rpmcf->default_slug.len);

        if (ctx->effective == NULL) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "ratelimit_policy: the default policy \"%V\" is "
                          "not in the catalogue", &rpmcf->default_slug);
        }
    }

    if (ctx->effective == NULL) {
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

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;

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
