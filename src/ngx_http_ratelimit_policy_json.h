
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_JSON_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_JSON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <libpq-fe.h>
#include "ngx_http_ratelimit_policy_cache.h"


/* the catalogue blob, ngx_alloc()ed, from the catalogue query's rows */
ngx_http_ratelimit_policy_catalog_t *ngx_http_ratelimit_policy_json_catalog(
    PGresult *res, ngx_log_t *log);

/* a JSON string, quotes included */
ngx_int_t ngx_http_ratelimit_policy_json_string(ngx_pool_t *pool,
    u_char *data, size_t len, ngx_str_t *out);

/*
 * {"status":"error","code":...,"message":...[,"current_policy":...]
 *  [,"limit":...,"retry_after":N]}
 */
ngx_int_t ngx_http_ratelimit_policy_json_error(ngx_pool_t *pool,
    ngx_str_t *out, const char *code, const char *message,
    ngx_str_t *current_policy);

/*
 * PATCH bodies: {"policy_slug": "..."}.  NGX_OK: *slug is set (len 0 when
 * the key is absent); NGX_DECLINED: *error says what is wrong.
 */
ngx_int_t ngx_http_ratelimit_policy_json_parse_slug(ngx_pool_t *pool,
    ngx_chain_t *in, ngx_str_t *slug, const char **error);

/* {"instance_id":...,"policy_slug":...,"limits":{...}} for the engine */
ngx_int_t ngx_http_ratelimit_policy_json_engine(ngx_pool_t *pool,
    ngx_str_t *instance, ngx_http_ratelimit_policy_catalog_t *cat,
    ngx_http_ratelimit_policy_policy_t *policy, ngx_str_t *out);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_JSON_H_INCLUDED_ */
