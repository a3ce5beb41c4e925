
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_variables.h"
#include "ngx_http_ratelimit_policy_api.h"
#include "ngx_http_ratelimit_policy_enforce.h"


static ngx_int_t ngx_http_ratelimit_policy_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_ratelimit_policy_request_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_uint_t ngx_http_ratelimit_policy_token_arg(u_char *p, u_char *last);


static ngx_http_variable_t  ngx_http_ratelimit_policy_vars[] = {

    { ngx_string("ratelimit_policy"), NULL,
      ngx_http_ratelimit_policy_variable,
      offsetof(ngx_http_ratelimit_policy_ctx_t, policy),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ratelimit_policy_instance"), NULL,
      ngx_http_ratelimit_policy_variable,
      offsetof(ngx_http_ratelimit_policy_ctx_t, instance),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ratelimit_policy_status"), NULL,
      ngx_http_ratelimit_policy_enforce_variable,
      NGX_HTTP_RATELIMIT_POLICY_VAR_STATUS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ratelimit_policy_remaining"), NULL,
      ngx_http_ratelimit_policy_enforce_variable,
      NGX_HTTP_RATELIMIT_POLICY_VAR_REMAINING,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ratelimit_policy_request"), NULL,
      ngx_http_ratelimit_policy_request_variable, 0, 0, 0 },

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


/*
 * $ratelimit_policy_request: $request with the value of every
 * "access_token" query argument replaced by "***".
 */

static ngx_int_t
ngx_http_ratelimit_policy_request_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t  line;

    if (r->request_line.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (ngx_http_ratelimit_policy_mask_request(r, &line) != NGX_OK) {
        return NGX_ERROR;
    }

    v->len = line.len;
    v->data = line.data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * The request line with every "access_token" value masked: the line
 * itself when it has none.  The name is matched as ngx_http_arg() matches
 * it (case-insensitively), so whatever the module would take for a token
 * is masked.  memchr() rather than ngx_strlchr(): this runs on every
 * request that names an instance, and libc's is vectorised.
 */

ngx_int_t
ngx_http_ratelimit_policy_mask_request(ngx_http_request_t *r,
    ngx_str_t *masked)
{
    size_t      len;
    u_char     *p, *q, *a, *end, *last, *out;
    ngx_str_t   line;
    ngx_uint_t  n;

    /* masked may be &r->request_line */

    line = r->request_line;

    if (line.len == 0) {
        *masked = line;
        return NGX_OK;
    }

    last = line.data + line.len;

    /* where the URI ends: before " HTTP/x.y", if there is one */

    end = last;

    if (r->http_protocol.len) {
        if (r->http_protocol.data > line.data
            && r->http_protocol.data < last)
        {
            end = r->http_protocol.data;

        } else {
            /* HTTP/2, or an earlier mask: "... HTTP/x.y" ends the line */
            for (p = last; p > line.data && p[-1] != ' '; p--) {
                /* void */
            }

            if (p > line.data) {
                end = p - 1;
            }
        }

        while (end > line.data && end[-1] == ' ') {
            end--;
        }
    }

    a = memchr(line.data, '?', end - line.data);

    /* the length with every token value masked */

    len = line.len;
    n = 0;

    if (a != NULL) {
        for (p = a + 1; p < end; p = q + 1) {
            q = memchr(p, '&', end - p);
            if (q == NULL) {
                q = end;
            }

            if (ngx_http_ratelimit_policy_token_arg(p, q)) {
                len -= q - (p + sizeof("access_token=") - 1);
                len += sizeof("***") - 1;
                n++;
            }
        }
    }

    if (n == 0) {
        *masked = line;
        return NGX_OK;
    }

    out = ngx_pnalloc(r->pool, len);
    if (out == NULL) {
        return NGX_ERROR;
    }

    masked->data = out;

    out = ngx_cpymem(out, line.data, a + 1 - line.data);

    for (p = a + 1; p < end; p = q + 1) {
        q = memchr(p, '&', end - p);
        if (q == NULL) {
            q = end;
        }

        if (ngx_http_ratelimit_policy_token_arg(p, q)) {
            out = ngx_cpymem(out, p, sizeof("access_token=") - 1);
            out = ngx_cpymem(out, "***", sizeof("***") - 1);

        } else {
            out = ngx_cpymem(out, p, q - p);
        }

        if (q < end) {
            *out++ = '&';
        }
    }

    out = ngx_cpymem(out, end, last - end);

    masked->len = out - masked->data;

    return NGX_OK;
}


/* "access_token=VALUE" with a value to hide */

static ngx_uint_t
ngx_http_ratelimit_policy_token_arg(u_char *p, u_char *last)
{
    u_char          c;
    size_t          i;
    static u_char   name[] = "access_token=";

    if ((size_t) (last - p) <= sizeof(name) - 1) {
        return 0;
    }

    /* as ngx_strncasecmp() compares, inline: this runs on every argument */

    for (i = 0; i < sizeof(name) - 1; i++) {
        c = p[i];

        if (c >= 'A' && c <= 'Z') {
            c |= 0x20;
        }

        if (c != name[i]) {
            return 0;
        }
    }

    return 1;
}
