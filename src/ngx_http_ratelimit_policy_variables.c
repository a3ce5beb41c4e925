
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_variables.h"
#include "ngx_http_ratelimit_policy_api.h"


static ngx_int_t ngx_http_ratelimit_policy_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_variable_t  ngx_http_ratelimit_policy_vars[] = {

    { ngx_string("ratelimit_policy"), NULL,
      ngx_http_ratelimit_policy_variable,
      offsetof(ngx_http_ratelimit_policy_ctx_t, policy),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ratelimit_policy_instance"), NULL,
      ngx_http_ratelimit_policy_variable,
      offsetof(ngx_http_ratelimit_policy_ctx_t, instance),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_ratelimit_policy_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_ratelimit_policy_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_policy_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                        *s;
    ngx_http_ratelimit_policy_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_ratelimit_policy_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((u_char *) ctx + data);

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = s->data;

    return NGX_OK;
}
