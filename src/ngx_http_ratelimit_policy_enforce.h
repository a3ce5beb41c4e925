
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_ENFORCE_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_ENFORCE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_common.h"


/* $ratelimit_policy_status and $ratelimit_policy_remaining */
#define NGX_HTTP_RATELIMIT_POLICY_VAR_STATUS      0
#define NGX_HTTP_RATELIMIT_POLICY_VAR_REMAINING   1


/* postconfiguration: the access phase handler and the header filter */
ngx_int_t ngx_http_ratelimit_policy_enforce_init(ngx_conf_t *cf);
void ngx_http_ratelimit_policy_enforce_exit_process(ngx_cycle_t *cycle);

ngx_int_t ngx_http_ratelimit_policy_enforce_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_ENFORCE_H_INCLUDED_ */
