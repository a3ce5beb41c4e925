
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
static ngx_int_t ngx_http_ratelimit_policy_request_line(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_ratelimit_policy_mask_into(ngx_http_request_t *r,
    u_char *buf, size_t size, ngx_str_t *masked);
static ngx_int_t ngx_http_ratelimit_policy_mask_args(ngx_str_t *in,
    u_char *end, ngx_pool_t *pool, u_char *buf, size_t size,
    ngx_str_t *masked);
static u_char *ngx_http_ratelimit_policy_log_error(ngx_http_request_t *r,
    ngx_http_request_t *sr, u_char *buf, size_t len);
static ngx_uint_t ngx_http_ratelimit_policy_token_arg(u_char *p, u_char *last);


/* nginx's own handler of the "request:" in error log lines */
static ngx_http_log_handler_pt  ngx_http_ratelimit_policy_log_next;


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
 * $request masks tokens too, and is masked only when it is used: its
 * handler becomes ngx_http_ratelimit_policy_request_line(), set before
 * nginx indexes the variables (postconfiguration).
 */

ngx_int_t
ngx_http_ratelimit_policy_mask_variable(ngx_conf_t *cf)
{
    ngx_uint_t                  i;
    ngx_hash_key_t             *key;
    ngx_http_variable_t        *v;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    if (cmcf->variables_keys == NULL) {
        return NGX_OK;
    }

    key = cmcf->variables_keys->keys.elts;

    for (i = 0; i < cmcf->variables_keys->keys.nelts; i++) {

        if (key[i].key.len == sizeof("request") - 1
            && ngx_strncmp(key[i].key.data, "request", sizeof("request") - 1)
               == 0)
        {
            v = key[i].value;
            v->get_handler = ngx_http_ratelimit_policy_request_line;
            v->data = 0;

            return NGX_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "ratelimit_policy: no $request variable to mask");

    return NGX_ERROR;
}


/* $request as nginx computes it, then masked */

static ngx_int_t
ngx_http_ratelimit_policy_request_line(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char  *p, *s;

    if (r->request_line.data == NULL) {

        /* a request line not parsed to the end: up to CR or LF */

        s = r->request_start;

        if (s == NULL || r->header_in == NULL) {
            v->not_found = 1;
            return NGX_OK;
        }

        for (p = s; p < r->header_in->last; p++) {
            if (*p == CR || *p == LF) {
                break;
            }
        }

        r->request_line.len = p - s;
        r->request_line.data = s;
    }

    return ngx_http_ratelimit_policy_request_variable(r, v, data);
}


/*
 * From the credentials on, the "request:" that nginx adds to the error
 * log lines of a request shows no token: the request line is masked when
 * such a line is written, not on every request.  Behind a log handler
 * other than nginx's, the request line itself is masked at once.
 */

ngx_int_t
ngx_http_ratelimit_policy_mask_log(ngx_http_request_t *r)
{
    r = r->main;

    if (r->log_handler == ngx_http_ratelimit_policy_log_error) {
        return NGX_OK;
    }

    if (ngx_http_ratelimit_policy_log_next == NULL) {
        ngx_http_ratelimit_policy_log_next = r->log_handler;
    }

    if (r->log_handler != NULL
        && r->log_handler == ngx_http_ratelimit_policy_log_next)
    {
        r->log_handler = ngx_http_ratelimit_policy_log_error;
        return NGX_OK;
    }

    return ngx_http_ratelimit_policy_mask_request(r, &r->request_line);
}


/*
 * The request line, and the URI of the upstream request (proxy_pass
 * passes the query string on), as the "request:" and "upstream:" of an
 * error log line.  Masked, either is left out if longer than a log line.
 */

static u_char *
ngx_http_ratelimit_policy_log_error(ngx_http_request_t *r,
    ngx_http_request_t *sr, u_char *buf, size_t len)
{
    u_char                *p;
    ngx_str_t              line, uri, masked;
    ngx_http_upstream_t   *u;
    u_char                 out[NGX_MAX_ERROR_STR];
    u_char                 uout[NGX_MAX_ERROR_STR];

    line = r->request_line;
    ngx_str_null(&uri);

    if (line.len) {
        if (ngx_http_ratelimit_policy_mask_into(r, out, sizeof(out), &masked)
            != NGX_OK)
        {
            /* left out ("" is not recomputed from request_start) */
            masked.len = 0;
            masked.data = out;
        }

        r->request_line = masked;
    }

    u = (sr != NULL) ? sr->upstream : NULL;

    if (u != NULL && u->uri.len == 0) {
        u = NULL;
    }

    if (u != NULL) {
        uri = u->uri;

        if (ngx_http_ratelimit_policy_mask_args(&uri, uri.data + uri.len,
                                                NULL, uout, sizeof(uout),
                                                &masked)
            != NGX_OK)
        {
            masked.len = 0;
            masked.data = uout;
        }

        u->uri = masked;
    }

    p = ngx_http_ratelimit_policy_log_next(r, sr, buf, len);

    r->request_line = line;

    if (u != NULL) {
        u->uri = uri;
    }

    return p;
}


/*
 * The request line with every "access_token" value masked: the line
 * itself when it has none.  The name is matched as ngx_http_arg() matches
 * it (case-insensitively), so whatever the module would take for a token
 * is masked.
 */

ngx_int_t
ngx_http_ratelimit_policy_mask_request(ngx_http_request_t *r,
    ngx_str_t *masked)
{
    return ngx_http_ratelimit_policy_mask_into(r, NULL, 0, masked);
}


/* into buf of size, or (buf NULL) memory of the request's pool */

static ngx_int_t
ngx_http_ratelimit_policy_mask_into(ngx_http_request_t *r, u_char *buf,
    size_t size, ngx_str_t *masked)
{
    u_char     *p, *end, *last;
    ngx_str_t   line;

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

    return ngx_http_ratelimit_policy_mask_args(&line, end,
                                               buf ? NULL : r->pool,
                                               buf, size, masked);
}


/*
 * line with every access_token value of the query string, which ends at
 * end, masked: into buf of size, or (pool) memory of the pool
 */

static ngx_int_t
ngx_http_ratelimit_policy_mask_args(ngx_str_t *in, u_char *end,
    ngx_pool_t *pool, u_char *buf, size_t size, ngx_str_t *masked)
{
    size_t      len;
    u_char     *p, *q, *a, *last, *out;
    ngx_str_t   line;
    ngx_uint_t  n;

    line = *in;
    last = line.data + line.len;

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

    if (pool != NULL) {
        out = ngx_pnalloc(pool, len);
        if (out == NULL) {
            return NGX_ERROR;
        }

    } else if (len <= size) {
        out = buf;

    } else {
        return NGX_DECLINED;
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
