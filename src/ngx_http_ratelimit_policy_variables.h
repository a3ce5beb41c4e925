
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_VARIABLES_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_VARIABLES_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t ngx_http_ratelimit_policy_add_variables(ngx_conf_t *cf);

/* the request line with every access_token value replaced by "***" */
ngx_int_t ngx_http_ratelimit_policy_mask_request(ngx_http_request_t *r,
    ngx_str_t *masked);
/* the same in the "request:" of the error log lines of r */
ngx_int_t ngx_http_ratelimit_policy_mask_log(ngx_http_request_t *r);
/* and in $request, at postconfiguration */
ngx_int_t ngx_http_ratelimit_policy_mask_variable(ngx_conf_t *cf);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_VARIABLES_H_INCLUDED_ */
