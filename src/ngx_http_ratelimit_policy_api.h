
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_API_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_API_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_common.h"
#include "ngx_http_ratelimit_policy_cache.h"


typedef struct {
    ngx_http_ratelimit_policy_lookup_t   lookup;

    ngx_str_t                            instance;   /* validated */
    ngx_str_t                            policy;     /* effective slug */
    ngx_http_ratelimit_policy_policy_t  *effective;

    /* PATCH; the query allocated only then, not for every request */
    ngx_str_t                            slug;       /* NUL-terminated */
    ngx_http_ratelimit_policy_pg_query_t *query;
    ngx_uint_t                           sync_status;
    unsigned                             sync_done:1;
} ngx_http_ratelimit_policy_ctx_t;


ngx_int_t ngx_http_ratelimit_policy_api_handler(ngx_http_request_t *r);

/*
 * Reads and checks the instance id and the token of a request; on failure
 * *code / *message / *status say why.
 */
ngx_int_t ngx_http_ratelimit_policy_credentials(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, ngx_uint_t *status,
    const char **code, const char **message);

/* after the lookup: NGX_OK, or the error to answer with */
ngx_int_t ngx_http_ratelimit_policy_authorize(ngx_http_request_t *r,
    ngx_http_ratelimit_policy_ctx_t *ctx, ngx_uint_t *status,
    const char **code, const char **message);

/*
 * the effective policy of a stored slug (NULL: none) in cat; NULL if
 * neither it nor the default is there; *stored: whether it is the stored
 */
ngx_http_ratelimit_policy_policy_t *ngx_http_ratelimit_policy_effective(
    ngx_http_ratelimit_policy_catalog_t *cat,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf, u_char *slug, size_t len,
    ngx_uint_t plan, ngx_uint_t *stored);

ngx_int_t ngx_http_ratelimit_policy_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message,
    ngx_str_t *current_policy);

ngx_int_t ngx_http_ratelimit_policy_send_json(ngx_http_request_t *r,
    ngx_uint_t status, ngx_chain_t *out, size_t len);

/*
 * A PATCH form body (application/x-www-form-urlencoded): NGX_OK with *slug
 * the percent-decoded, NUL-terminated policy_slug (len 0 when absent);
 * NGX_DECLINED when it is there twice (*message says so).
 */
ngx_int_t ngx_http_ratelimit_policy_form_slug(ngx_pool_t *pool,
    ngx_chain_t *in, ngx_str_t *slug, const char **message);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_API_H_INCLUDED_ */
