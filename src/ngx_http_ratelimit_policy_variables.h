
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_VARIABLES_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_VARIABLES_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t ngx_http_ratelimit_policy_add_variables(ngx_conf_t *cf);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_VARIABLES_H_INCLUDED_ */
