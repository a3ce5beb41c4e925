
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


#endif /* _NGX_HTTP_RATELIMIT_POLICY_JSON_H_INCLUDED_ */
