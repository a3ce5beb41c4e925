
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * JSON with yajl.  The catalogue's parts of the API document are rendered
 * once, when the catalogue is loaded; a response only joins them.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <yajl/yajl_gen.h>
#include "ngx_http_ratelimit_policy_json.h"


#define NGX_HTTP_RATELIMIT_POLICY_CATALOG_COLUMNS  14


typedef struct {
    u_char                       *data;
    size_t                        len;
    size_t                        size;
    ngx_uint_t                    failed;
} ngx_http_ratelimit_policy_strbuf_t;


static ngx_int_t ngx_http_ratelimit_policy_json_policies(yajl_gen g,
    PGresult *res, ngx_uint_t plan);
static ngx_int_t ngx_http_ratelimit_policy_json_free(yajl_gen g,
    PGresult *res);
static ngx_int_t ngx_http_ratelimit_policy_json_key(yajl_gen g,
    ngx_uint_t n);
static ngx_int_t ngx_http_ratelimit_policy_json_take(yajl_gen g,
    ngx_http_ratelimit_policy_strbuf_t *sb, uint32_t *off, uint32_t *len);
static void ngx_http_ratelimit_policy_strbuf_add(
    ngx_http_ratelimit_policy_strbuf_t *sb, const u_char *p, size_t len);
static ngx_int_t ngx_http_ratelimit_policy_json_int(u_char *p, size_t len,
    int64_t *out);


#define ngx_yajl_str(g, s)                                                   \
    (yajl_gen_string(g, (const unsigned char *) s, sizeof(s) - 1)            \
     == yajl_gen_status_ok)


static const char  *ngx_http_ratelimit_policy_limit_names[] = {
    "send_message_per_minute",
    "send_message_daily_cap",
    "account_protection_seconds",
    "concurrent_limit",
    "group_req_per_minute",
    "group_daily_cap",
    "check_req_per_minute",
    "check_daily_cap"
};


ngx_http_ratelimit_policy_catalog_t *
ngx_http_ratelimit_policy_json_catalog(PGresult *res, ngx_log_t *log)
{
    int                                   n, i, j;
    u_char                               *v;
    size_t                                head, len;
    yajl_gen                              g;
    ngx_uint_t                            plan;
    ngx_http_ratelimit_policy_policy_t   *p;
    ngx_http_ratelimit_policy_strbuf_t    sb;
    ngx_http_ratelimit_policy_catalog_t  *cat;

    n = PQntuples(res);

    if (PQnfields(res) != NGX_HTTP_RATELIMIT_POLICY_CATALOG_COLUMNS) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ratelimit_policy: the catalogue query returned %d "
                      "columns", PQnfields(res));
        return NULL;
    }

    head = offsetof(ngx_http_ratelimit_policy_catalog_t, policies)
           + (n ? n : 1) * sizeof(ngx_http_ratelimit_policy_policy_t);

    ngx_memzero(&sb, sizeof(ngx_http_ratelimit_policy_strbuf_t));
    sb.size = head + 4096;
    sb.data = ngx_alloc(sb.size, log);
    if (sb.data == NULL) {
        return NULL;
    }

    ngx_memzero(sb.data, head);
    sb.len = head;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        ngx_free(sb.data);
        return NULL;
    }

    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    /* the policies themselves */

    for (i = 0; i < n; i++) {
        p = &((ngx_http_ratelimit_policy_catalog_t *) sb.data)->policies[i];

        if (PQgetisnull(res, i, 0) || PQgetisnull(res, i, 1)
            || ngx_http_ratelimit_policy_json_int(
                   (u_char *) PQgetvalue(res, i, 0), PQgetlength(res, i, 0),
                   &p->id) != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "ratelimit_policy: policy row %d has no id or slug",
                          i);
            goto failed;
        }

        v = (u_char *) PQgetvalue(res, i, 1);
        len = PQgetlength(res, i, 1);

        if (len == 0 || len > NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX) {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "ratelimit_policy: policy %L has a slug of %uz "
                          "bytes", p->id, len);
            goto failed;
        }

        p->is_free = !PQgetisnull(res, i, 4) && PQgetvalue(res, i, 4)[0] == 't';

        for (j = 0; j < NGX_HTTP_RATELIMIT_POLICY_NLIMITS; j++) {
            if (PQgetisnull(res, i, 6 + j)) {
                p->limits[j] = NGX_HTTP_RATELIMIT_POLICY_UNLIMITED;
                continue;
            }

            if (ngx_http_ratelimit_policy_json_int(
                    (u_char *) PQgetvalue(res, i, 6 + j),
                    PQgetlength(res, i, 6 + j), &p->limits[j])
                != NGX_OK)
            {
                ngx_log_error(NGX_LOG_ERR, log, 0,
                              "ratelimit_policy: policy %L has an invalid "
                              "%s", p->id,
                              ngx_http_ratelimit_policy_limit_names[j]);
                goto failed;
            }
        }

        p->slug = (uint32_t) sb.len;
        p->slug_len = (uint32_t) len;
        ngx_http_ratelimit_policy_strbuf_add(&sb, v, len);

        if (yajl_gen_string(g, v, len) != yajl_gen_status_ok) {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "ratelimit_policy: policy %L has a slug that is "
                          "not UTF-8", p->id);
            goto failed;
        }

        /* sb.data may move: p is looked up again */

        if (ngx_http_ratelimit_policy_json_take(g, &sb, NULL, NULL)
            != NGX_OK)
        {
            goto failed;
        }

        p = &((ngx_http_ratelimit_policy_catalog_t *) sb.data)->policies[i];
        p->slug_json_len = (uint32_t) (sb.len - p->slug_len - p->slug);
        p->slug_json = p->slug + p->slug_len;
    }

    cat = (ngx_http_ratelimit_policy_catalog_t *) sb.data;

    if (ngx_http_ratelimit_policy_json_free(g, res) != NGX_OK) {
        goto invalid;
    }

    if (ngx_http_ratelimit_policy_json_take(g, &sb, &cat->free_json,
                                            &cat->free_json_len)
        != NGX_OK)
    {
        goto failed;
    }

    for (plan = 0; plan < 2; plan++) {
        cat = (ngx_http_ratelimit_policy_catalog_t *) sb.data;

        if (ngx_http_ratelimit_policy_json_policies(g, res, plan) != NGX_OK) {
            goto invalid;
        }

        cat = (ngx_http_ratelimit_policy_catalog_t *) sb.data;

        if (ngx_http_ratelimit_policy_json_take(g, &sb,
                                               &cat->policies_json[plan],
                                               &cat->policies_json_len[plan])
            != NGX_OK)
        {
            goto failed;
        }
    }

    if (sb.failed) {
        goto failed;
    }

    yajl_gen_free(g);

    cat = (ngx_http_ratelimit_policy_catalog_t *) sb.data;
    cat->npolicies = n;
    cat->size = ngx_align(sb.len, sizeof(uint64_t));

    if (cat->size > sb.size) {
        cat->size = sb.len;
    }

    return cat;

invalid:

    ngx_log_error(NGX_LOG_ERR, log, 0,
                  "ratelimit_policy: the policy catalogue has text that is "
                  "not valid UTF-8");

failed:

    yajl_gen_free(g);
    ngx_free(sb.data);

    return NULL;
}


static ngx_int_t
ngx_http_ratelimit_policy_json_free(yajl_gen g, PGresult *res)
{
    int         i, n;
    ngx_uint_t  k;

    if (yajl_gen_map_open(g) != yajl_gen_status_ok) {
        return NGX_ERROR;
    }

    n = PQntuples(res);
    k = 0;

    for (i = 0; i < n; i++) {
        if (PQgetisnull(res, i, 4) || PQgetvalue(res, i, 4)[0] != 't') {
            continue;
        }

        if (ngx_http_ratelimit_policy_json_key(g, k++) != NGX_OK
            || yajl_gen_string(g, (u_char *) PQgetvalue(res, i, 1),
                               PQgetlength(res, i, 1))
               != yajl_gen_status_ok)
        {
            return NGX_ERROR;
        }
    }

    if (yajl_gen_map_close(g) != yajl_gen_status_ok) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_policy_json_policies(yajl_gen g, PGresult *res,
    ngx_uint_t plan)
{
    int         i, j, n;
    ngx_uint_t  is_free;

    if (yajl_gen_map_open(g) != yajl_gen_status_ok) {
        return NGX_ERROR;
    }

    n = PQntuples(res);

    for (i = 0; i < n; i++) {
        is_free = !PQgetisnull(res, i, 4) && PQgetvalue(res, i, 4)[0] == 't';

        if (ngx_http_ratelimit_policy_json_key(g, i) != NGX_OK
            || yajl_gen_map_open(g) != yajl_gen_status_ok
            || !ngx_yajl_str(g, "id")
            || yajl_gen_number(g, PQgetvalue(res, i, 0),
                               PQgetlength(res, i, 0))
               != yajl_gen_status_ok
            || !ngx_yajl_str(g, "name")
            || yajl_gen_string(g, (u_char *) PQgetvalue(res, i, 2),
                               PQgetlength(res, i, 2))
               != yajl_gen_status_ok
            || !ngx_yajl_str(g, "slug")
            || yajl_gen_string(g, (u_char *) PQgetvalue(res, i, 1),
                               PQgetlength(res, i, 1))
               != yajl_gen_status_ok
            || !ngx_yajl_str(g, "description")
            || yajl_gen_string(g, (u_char *) PQgetvalue(res, i, 3),
                               PQgetlength(res, i, 3))
               != yajl_gen_status_ok
            || !ngx_yajl_str(g, "limits")
            || yajl_gen_map_open(g) != yajl_gen_status_ok)
        {
            return NGX_ERROR;
        }

        for (j = 0; j < NGX_HTTP_RATELIMIT_POLICY_NLIMITS; j++) {
            if (PQgetisnull(res, i, 6 + j)) {
                continue;
            }

            if (yajl_gen_string(g,
                    (u_char *) ngx_http_ratelimit_policy_limit_names[j],
                    ngx_strlen(ngx_http_ratelimit_policy_limit_names[j]))
                != yajl_gen_status_ok
                || yajl_gen_number(g, PQgetvalue(res, i, 6 + j),
                                   PQgetlength(res, i, 6 + j))
                   != yajl_gen_status_ok)
            {
                return NGX_ERROR;
            }
        }

        if (yajl_gen_map_close(g) != yajl_gen_status_ok
            || !ngx_yajl_str(g, "available")
            || yajl_gen_bool(g, is_free || plan) != yajl_gen_status_ok
            || yajl_gen_map_close(g) != yajl_gen_status_ok)
        {
            return NGX_ERROR;
        }
    }

    if (yajl_gen_map_close(g) != yajl_gen_status_ok) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_policy_json_key(yajl_gen g, ngx_uint_t n)
{
    u_char  buf[NGX_INT_T_LEN], *last;

    last = ngx_sprintf(buf, "%ui", n);

    if (yajl_gen_string(g, buf, last - buf) != yajl_gen_status_ok) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* move what the generator holds into the buffer, and reset it */

static ngx_int_t
ngx_http_ratelimit_policy_json_take(yajl_gen g,
    ngx_http_ratelimit_policy_strbuf_t *sb, uint32_t *off, uint32_t *len)
{
    size_t                glen;
    const unsigned char  *buf;

    if (yajl_gen_get_buf(g, &buf, &glen) != yajl_gen_status_ok) {
        return NGX_ERROR;
    }

    if (off) {
        *off = (uint32_t) sb->len;
        *len = (uint32_t) glen;
    }

    ngx_http_ratelimit_policy_strbuf_add(sb, buf, glen);

    yajl_gen_clear(g);
    yajl_gen_reset(g, NULL);

    return sb->failed ? NGX_ERROR : NGX_OK;
}


static void
ngx_http_ratelimit_policy_strbuf_add(ngx_http_ratelimit_policy_strbuf_t *sb,
    const u_char *p, size_t len)
{
    u_char  *n;
    size_t   size;

    if (sb->failed) {
        return;
    }

    if (sb->len + len + sizeof(uint64_t) > sb->size) {
        size = ngx_max(sb->size * 2, sb->len + len + 4096);

        n = ngx_alloc(size, ngx_cycle->log);
        if (n == NULL) {
            sb->failed = 1;
            return;
        }

        ngx_memcpy(n, sb->data, sb->len);
        ngx_free(sb->data);

        sb->data = n;
        sb->size = size;
    }

    ngx_memcpy(sb->data + sb->len, p, len);
    sb->len += len;
}


static ngx_int_t
ngx_http_ratelimit_policy_json_int(u_char *p, size_t len, int64_t *out)
{
    off_t  n;

    if (len && p[0] == '-') {
        return NGX_ERROR;
    }

    n = ngx_atoof(p, len);
    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    *out = (int64_t) n;

    return NGX_OK;
}


ngx_int_t
ngx_http_ratelimit_policy_json_string(ngx_pool_t *pool, u_char *data,
    size_t len, ngx_str_t *out)
{
    size_t                glen;
    yajl_gen              g;
    ngx_int_t             rc;
    const unsigned char  *buf;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_ERROR;
    }

    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    rc = NGX_ERROR;

    if (yajl_gen_string(g, data, len) == yajl_gen_status_ok
        && yajl_gen_get_buf(g, &buf, &glen) == yajl_gen_status_ok)
    {
        out->data = ngx_pnalloc(pool, glen);

        if (out->data != NULL) {
            ngx_memcpy(out->data, buf, glen);
            out->len = glen;
            rc = NGX_OK;
        }
    }

    yajl_gen_free(g);

    return rc;
}


ngx_int_t
ngx_http_ratelimit_policy_json_error(ngx_pool_t *pool, ngx_str_t *out,
    const char *code, const char *message, ngx_str_t *current_policy)
{
    size_t                glen;
    yajl_gen              g;
    ngx_int_t             rc;
    const unsigned char  *buf;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_ERROR;
    }

    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    rc = NGX_ERROR;

    if (yajl_gen_map_open(g) != yajl_gen_status_ok
        || !ngx_yajl_str(g, "status")
        || !ngx_yajl_str(g, "error")
        || !ngx_yajl_str(g, "code")
        || yajl_gen_string(g, (u_char *) code, ngx_strlen(code))
           != yajl_gen_status_ok
        || !ngx_yajl_str(g, "message")
        || yajl_gen_string(g, (u_char *) message, ngx_strlen(message))
           != yajl_gen_status_ok)
    {
        goto done;
    }

    if (current_policy
        && (!ngx_yajl_str(g, "current_policy")
            || yajl_gen_string(g, current_policy->data, current_policy->len)
               != yajl_gen_status_ok))
    {
        goto done;
    }

    if (yajl_gen_map_close(g) != yajl_gen_status_ok
        || yajl_gen_get_buf(g, &buf, &glen) != yajl_gen_status_ok)
    {
        goto done;
    }

    out->data = ngx_pnalloc(pool, glen);

    if (out->data != NULL) {
        ngx_memcpy(out->data, buf, glen);
        out->len = glen;
        rc = NGX_OK;
    }

done:

    yajl_gen_free(g);

    return rc;
}
