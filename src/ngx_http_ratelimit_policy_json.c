
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
#include <yajl/yajl_parse.h>
#include "ngx_http_ratelimit_policy_json.h"


#define NGX_HTTP_RATELIMIT_POLICY_CATALOG_COLUMNS  14

/* a PATCH body is one flat object; one more level is tolerated */
#define NGX_HTTP_RATELIMIT_POLICY_JSON_DEPTH       2
#define NGX_HTTP_RATELIMIT_POLICY_JSON_KEYS        32


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


typedef struct {
    ngx_pool_t                   *pool;
    ngx_uint_t                    depth;
    ngx_uint_t                    values;       /* top-level values seen */
    ngx_uint_t                    want_slug;
    ngx_uint_t                    nkeys;
    ngx_str_t                     keys[NGX_HTTP_RATELIMIT_POLICY_JSON_KEYS];
    ngx_str_t                    *slug;
    const char                   *error;
} ngx_http_ratelimit_policy_body_t;


static int ngx_http_ratelimit_policy_body_null(void *ctx);
static int ngx_http_ratelimit_policy_body_boolean(void *ctx, int b);
static int ngx_http_ratelimit_policy_body_number(void *ctx, const char *s,
    size_t len);
static int ngx_http_ratelimit_policy_body_string(void *ctx,
    const unsigned char *s, size_t len);
static int ngx_http_ratelimit_policy_body_start_map(void *ctx);
static int ngx_http_ratelimit_policy_body_map_key(void *ctx,
    const unsigned char *s, size_t len);
static int ngx_http_ratelimit_policy_body_end(void *ctx);
static int ngx_http_ratelimit_policy_body_start_array(void *ctx);
static int ngx_http_ratelimit_policy_body_scalar(
    ngx_http_ratelimit_policy_body_t *b);


static yajl_callbacks  ngx_http_ratelimit_policy_body_callbacks = {
    ngx_http_ratelimit_policy_body_null,
    ngx_http_ratelimit_policy_body_boolean,
    NULL,
    NULL,
    ngx_http_ratelimit_policy_body_number,
    ngx_http_ratelimit_policy_body_string,
    ngx_http_ratelimit_policy_body_start_map,
    ngx_http_ratelimit_policy_body_map_key,
    ngx_http_ratelimit_policy_body_end,
    ngx_http_ratelimit_policy_body_start_array,
    ngx_http_ratelimit_policy_body_end
};


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


ngx_int_t
ngx_http_ratelimit_policy_json_parse_slug(ngx_pool_t *pool, ngx_chain_t *in,
    ngx_str_t *slug, const char **error)
{
    yajl_handle                        h;
    yajl_status                        st;
    ngx_chain_t                       *cl;
    ngx_http_ratelimit_policy_body_t   body;

    ngx_memzero(&body, sizeof(ngx_http_ratelimit_policy_body_t));
    body.pool = pool;
    body.slug = slug;

    slug->len = 0;
    slug->data = NULL;

    /* yajl's defaults: no comments, UTF-8 checked, no trailing garbage */

    h = yajl_alloc(&ngx_http_ratelimit_policy_body_callbacks, NULL, &body);
    if (h == NULL) {
        *error = "out of memory";
        return NGX_ERROR;
    }

    st = yajl_status_ok;

    for (cl = in; cl && st == yajl_status_ok; cl = cl->next) {
        if (cl->buf->last > cl->buf->pos) {
            st = yajl_parse(h, cl->buf->pos, cl->buf->last - cl->buf->pos);
        }
    }

    if (st == yajl_status_ok) {
        st = yajl_complete_parse(h);
    }

    yajl_free(h);

    if (st != yajl_status_ok) {
        *error = body.error ? body.error : "the body is not valid JSON";
        return NGX_DECLINED;
    }

    if (body.values == 0) {
        *error = "the body is not valid JSON";
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static int
ngx_http_ratelimit_policy_body_scalar(ngx_http_ratelimit_policy_body_t *b)
{
    if (b->depth == 0) {
        b->error = "the body must be a JSON object";
        return 0;
    }

    if (b->want_slug) {
        b->error = "policy_slug must be a string";
        return 0;
    }

    return 1;
}


static int
ngx_http_ratelimit_policy_body_null(void *ctx)
{
    return ngx_http_ratelimit_policy_body_scalar(ctx);
}


static int
ngx_http_ratelimit_policy_body_boolean(void *ctx, int v)
{
    return ngx_http_ratelimit_policy_body_scalar(ctx);
}


static int
ngx_http_ratelimit_policy_body_number(void *ctx, const char *s, size_t len)
{
    return ngx_http_ratelimit_policy_body_scalar(ctx);
}


static int
ngx_http_ratelimit_policy_body_string(void *ctx, const unsigned char *s,
    size_t len)
{
    ngx_http_ratelimit_policy_body_t  *b = ctx;

    if (b->depth == 0) {
        b->error = "the body must be a JSON object";
        return 0;
    }

    if (!b->want_slug) {
        return 1;
    }

    b->want_slug = 0;

    b->slug->data = ngx_pnalloc(b->pool, len + 1);
    if (b->slug->data == NULL) {
        b->error = "out of memory";
        return 0;
    }

    ngx_memcpy(b->slug->data, s, len);
    b->slug->data[len] = '\0';
    b->slug->len = len;

    return 1;
}


static int
ngx_http_ratelimit_policy_body_start_map(void *ctx)
{
    ngx_http_ratelimit_policy_body_t  *b = ctx;

    if (b->want_slug) {
        b->error = "policy_slug must be a string";
        return 0;
    }

    if (b->depth == 0 && b->values++) {
        b->error = "the body must be one JSON object";
        return 0;
    }

    if (++b->depth > NGX_HTTP_RATELIMIT_POLICY_JSON_DEPTH) {
        b->error = "the body is nested too deeply";
        return 0;
    }

    return 1;
}


static int
ngx_http_ratelimit_policy_body_start_array(void *ctx)
{
    ngx_http_ratelimit_policy_body_t  *b = ctx;

    if (b->depth == 0) {
        b->error = "the body must be a JSON object";
        return 0;
    }

    if (b->want_slug) {
        b->error = "policy_slug must be a string";
        return 0;
    }

    if (++b->depth > NGX_HTTP_RATELIMIT_POLICY_JSON_DEPTH) {
        b->error = "the body is nested too deeply";
        return 0;
    }

    return 1;
}


static int
ngx_http_ratelimit_policy_body_end(void *ctx)
{
    ngx_http_ratelimit_policy_body_t  *b = ctx;

    b->depth--;

    return 1;
}


static int
ngx_http_ratelimit_policy_body_map_key(void *ctx, const unsigned char *s,
    size_t len)
{
    ngx_http_ratelimit_policy_body_t  *b = ctx;

    ngx_uint_t  i;

    if (b->depth != 1) {
        return 1;
    }

    for (i = 0; i < b->nkeys; i++) {
        if (b->keys[i].len == len
            && ngx_memcmp(b->keys[i].data, s, len) == 0)
        {
            b->error = "the body has a duplicate key";
            return 0;
        }
    }

    if (b->nkeys == NGX_HTTP_RATELIMIT_POLICY_JSON_KEYS) {
        b->error = "the body has too many keys";
        return 0;
    }

    b->keys[b->nkeys].data = ngx_pnalloc(b->pool, len);
    if (b->keys[b->nkeys].data == NULL) {
        b->error = "out of memory";
        return 0;
    }

    ngx_memcpy(b->keys[b->nkeys].data, s, len);
    b->keys[b->nkeys].len = len;
    b->nkeys++;

    b->want_slug = (len == sizeof("policy_slug") - 1
                    && ngx_memcmp(s, "policy_slug", len) == 0);

    return 1;
}


ngx_int_t
ngx_http_ratelimit_policy_json_engine(ngx_pool_t *pool, ngx_str_t *instance,
    ngx_http_ratelimit_policy_catalog_t *cat,
    ngx_http_ratelimit_policy_policy_t *policy, ngx_str_t *out)
{
    u_char                buf[NGX_INT64_LEN], *last;
    size_t                glen;
    yajl_gen              g;
    ngx_int_t             rc;
    ngx_uint_t            i;
    const unsigned char  *gbuf;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_ERROR;
    }

    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    rc = NGX_ERROR;

    if (yajl_gen_map_open(g) != yajl_gen_status_ok
        || !ngx_yajl_str(g, "instance_id")
        || yajl_gen_string(g, instance->data, instance->len)
           != yajl_gen_status_ok
        || !ngx_yajl_str(g, "policy_slug")
        || yajl_gen_string(g,
                      ngx_http_ratelimit_policy_catalog_str(cat, policy->slug),
                      policy->slug_len)
           != yajl_gen_status_ok
        || !ngx_yajl_str(g, "limits")
        || yajl_gen_map_open(g) != yajl_gen_status_ok)
    {
        goto done;
    }

    for (i = 0; i < NGX_HTTP_RATELIMIT_POLICY_NLIMITS; i++) {
        if (policy->limits[i] == NGX_HTTP_RATELIMIT_POLICY_UNLIMITED) {
            continue;
        }

        last = ngx_sprintf(buf, "%L", policy->limits[i]);

        if (yajl_gen_string(g,
                    (u_char *) ngx_http_ratelimit_policy_limit_names[i],
                    ngx_strlen(ngx_http_ratelimit_policy_limit_names[i]))
            != yajl_gen_status_ok
            || yajl_gen_number(g, (char *) buf, last - buf)
               != yajl_gen_status_ok)
        {
            goto done;
        }
    }

    if (yajl_gen_map_close(g) != yajl_gen_status_ok
        || yajl_gen_map_close(g) != yajl_gen_status_ok
        || yajl_gen_get_buf(g, &gbuf, &glen) != yajl_gen_status_ok)
    {
        goto done;
    }

    out->data = ngx_pnalloc(pool, glen);

    if (out->data != NULL) {
        ngx_memcpy(out->data, gbuf, glen);
        out->len = glen;
        rc = NGX_OK;
    }

done:

    yajl_gen_free(g);

    return rc;
}
