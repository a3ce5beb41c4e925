
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The credentials of a request: instance_id and access_token from the
 * query string (percent-decoded), or the token from "Authorization:
 * Bearer ...", and the masking of every access_token value in the request
 * line ($request, and the "request:" of error log lines).
 *
 * Input: one flags byte, the URI up to the first "\n" (a space becomes
 * "+": nginx's parser ends the URI there), then the value of the
 * Authorization header.  The request is built as nginx's parser
 * leaves it: request_line "GET <uri>[ HTTP/1.1]", args after the first
 * "?" of the URI, http_protocol inside the line.
 *
 * Properties: NGX_OK or NGX_DECLINED, never NGX_ERROR; on NGX_OK a
 * 12-character alphanumeric instance and a non-empty token; after it, in
 * the request line that an error log line shows (the request's log
 * handler, as nginx calls it), no query argument named access_token (in
 * any case) keeps a value other than "***", and outside the query string
 * it is unchanged; the request line itself is unchanged; masking the
 * logged line again ($ratelimit_policy_request) changes nothing.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "fuzz_common.h"
#include "ngx_http_ratelimit_policy_common.h"
#include "ngx_http_ratelimit_policy_api.h"
#include "ngx_http_ratelimit_policy_shm.h"
#include "ngx_http_ratelimit_policy_variables.h"


#define FUZZ_PROTOCOL    0x01    /* " HTTP/1.1" ends the line */
#define FUZZ_BEARER      0x02    /* an Authorization header */
#define FUZZ_TWICE       0x04    /* credentials read twice */


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check_masked(ngx_str_t *line, ngx_str_t *orig,
    ngx_uint_t protocol);
static u_char *fuzz_log_handler(ngx_http_request_t *r,
    ngx_http_request_t *sr, u_char *buf, size_t len);


/* the request line as nginx's log handler would have printed it */
static u_char     fuzz_logged_data[16384];
static ngx_str_t  fuzz_logged;


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                                 *p, *uri, *nl, *q;
    size_t                                  uri_len;
    ngx_int_t                               rc;
    ngx_str_t                               orig, again;
    ngx_uint_t                              flags, status, i;
    ngx_pool_t                             *pool;
    const char                             *code, *message;
    ngx_table_elt_t                         auth;
    ngx_connection_t                        c;
    ngx_shm_zone_t                          zone;
    ngx_http_request_t                      r;
    ngx_http_ratelimit_policy_sh_t         *sh;
    ngx_http_ratelimit_policy_ctx_t        *ctx;
    ngx_http_ratelimit_policy_shctx_t       shctx;
    ngx_http_ratelimit_policy_loc_conf_t    rpcf;
    ngx_http_ratelimit_policy_main_conf_t   rpmcf;
    void                                   *loc_conf[1], *main_conf[1];

    if (size < 1 || size > 8192) {
        return 0;
    }

    ngx_fuzz_init();
    pool = ngx_fuzz_pool();

    /* the module's configuration: the defaults (no complex values) */

    ngx_http_ratelimit_policy_module.ctx_index = 0;

    ngx_memzero(&rpcf, sizeof(ngx_http_ratelimit_policy_loc_conf_t));
    ngx_memzero(&rpmcf, sizeof(ngx_http_ratelimit_policy_main_conf_t));
    ngx_memzero(&zone, sizeof(ngx_shm_zone_t));
    ngx_memzero(&shctx, sizeof(ngx_http_ratelimit_policy_shctx_t));

    sh = ngx_pcalloc(pool, sizeof(ngx_http_ratelimit_policy_sh_t));
    if (sh == NULL) {
        abort();
    }

    /* an empty hash index, as a new zone has: the lookups prefetch from it */

    sh->buckets = ngx_pcalloc(pool,
                              64 * sizeof(ngx_http_ratelimit_policy_node_t *));
    if (sh->buckets == NULL) {
        abort();
    }

    sh->mask = 63;

    shctx.sh = sh;
    zone.data = &shctx;
    rpmcf.shm_zone = &zone;
    loc_conf[0] = &rpcf;
    main_conf[0] = &rpmcf;

    /* the request */

    flags = data[0];
    data++;
    size--;

    nl = memchr(data, '\n', size);
    uri_len = nl ? (size_t) (nl - data) : size;

    ngx_memzero(&c, sizeof(ngx_connection_t));
    c.log = ngx_fuzz_log();
    c.pool = pool;

    ngx_memzero(&r, sizeof(ngx_http_request_t));
    r.main = &r;
    r.log_handler = fuzz_log_handler;
    r.pool = pool;
    r.connection = &c;
    r.loc_conf = loc_conf;
    r.main_conf = main_conf;

    p = ngx_pnalloc(pool, sizeof("GET ") - 1 + uri_len
                          + sizeof(" HTTP/1.1") - 1);
    if (p == NULL) {
        abort();
    }

    r.request_line.data = p;
    p = ngx_cpymem(p, "GET ", sizeof("GET ") - 1);
    uri = p;
    p = ngx_cpymem(p, data, uri_len);

    /* nginx's parser ends the URI at a space */

    for (q = uri; q < p; q++) {
        if (*q == ' ') {
            *q = '+';
        }
    }

    q = ngx_strlchr(uri, p, '?');
    if (q != NULL) {
        r.args.data = q + 1;
        r.args.len = p - (q + 1);
    }

    if (flags & FUZZ_PROTOCOL) {
        *p++ = ' ';
        r.http_protocol.data = p;
        r.http_protocol.len = sizeof("HTTP/1.1") - 1;
        p = ngx_cpymem(p, "HTTP/1.1", sizeof("HTTP/1.1") - 1);
    }

    r.request_line.len = p - r.request_line.data;
    orig = r.request_line;

    if ((flags & FUZZ_BEARER) && nl != NULL) {
        ngx_memzero(&auth, sizeof(ngx_table_elt_t));
        ngx_str_set(&auth.key, "Authorization");
        auth.value.len = size - uri_len - 1;
        auth.value.data = ngx_fuzz_strdup(pool, nl + 1, auth.value.len);
        auth.hash = 1;
        r.headers_in.authorization = &auth;
    }

    ctx = ngx_pcalloc(pool, sizeof(ngx_http_ratelimit_policy_ctx_t));
    if (ctx == NULL) {
        abort();
    }

    /* the credentials, as the API and the enforcement read them */

    for (i = 0; i < ((flags & FUZZ_TWICE) ? 2 : 1); i++) {
        rc = ngx_http_ratelimit_policy_credentials(&r, ctx, &status, &code,
                                                   &message);

        ngx_fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);

        if (rc == NGX_OK) {
            ngx_fuzz_assert(ctx->instance.len
                            == NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN);
            ngx_fuzz_assert(ctx->lookup.token.len > 0);

            for (p = ctx->instance.data;
                 p < ctx->instance.data + ctx->instance.len;
                 p++)
            {
                ngx_fuzz_assert(isalnum(*p));
            }

        } else {
            ngx_fuzz_assert(status == NGX_HTTP_BAD_REQUEST);
            ngx_fuzz_assert(code != NULL && message != NULL);
        }

        /* an error log line of the request */

        fuzz_logged.len = 0;
        (void) r.log_handler(&r, NULL, fuzz_logged_data, 0);

        ngx_fuzz_assert(r.request_line.data == orig.data
                        && r.request_line.len == orig.len);

        if (fuzz_logged.len == 0) {
            /* left out: masked, it would not fit a log line */
            rc = ngx_http_ratelimit_policy_mask_request(&r, &again);
            ngx_fuzz_assert(rc == NGX_OK && again.len > NGX_MAX_ERROR_STR);
            fuzz_logged = again;
        }

        fuzz_check_masked(&fuzz_logged, &orig, flags & FUZZ_PROTOCOL);
    }

    /* $ratelimit_policy_request of the masked line: the same line */

    r.request_line = fuzz_logged;

    rc = ngx_http_ratelimit_policy_mask_request(&r, &again);
    ngx_fuzz_assert(rc == NGX_OK);
    ngx_fuzz_assert(again.len == fuzz_logged.len);
    ngx_fuzz_assert(ngx_memcmp(again.data, fuzz_logged.data, again.len)
                    == 0);

    ngx_destroy_pool(pool);

    return 0;
}


static void
fuzz_check_masked(ngx_str_t *line, ngx_str_t *orig, ngx_uint_t protocol)
{
    u_char  *p, *q, *a, *end, *last, *oa;
    size_t   tail;

    last = line->data + line->len;
    end = last;

    if (protocol) {
        ngx_fuzz_assert(line->len >= sizeof(" HTTP/1.1") - 1);
        ngx_fuzz_assert(ngx_memcmp(last - (sizeof(" HTTP/1.1") - 1),
                                   " HTTP/1.1", sizeof(" HTTP/1.1") - 1)
                        == 0);
        end = last - (sizeof(" HTTP/1.1") - 1);
    }

    /* up to the "?" the line is the original one */

    a = ngx_strlchr(line->data, end, '?');
    oa = ngx_strlchr(orig->data, orig->data + orig->len, '?');

    if (a == NULL) {
        ngx_fuzz_assert(line->len == orig->len);
        ngx_fuzz_assert(ngx_memcmp(line->data, orig->data, line->len) == 0);
        return;
    }

    ngx_fuzz_assert(oa != NULL && a - line->data == oa - orig->data);
    ngx_fuzz_assert(ngx_memcmp(line->data, orig->data, a - line->data) == 0);

    /* and after the URI too */

    tail = last - end;
    ngx_fuzz_assert(ngx_memcmp(end, orig->data + orig->len - tail, tail)
                    == 0);

    for (p = a + 1; p <= end; p = q + 1) {
        q = ngx_strlchr(p, end, '&');
        if (q == NULL) {
            q = end;
        }

        if ((size_t) (q - p) > sizeof("access_token=") - 1
            && ngx_strncasecmp(p, (u_char *) "access_token=",
                               sizeof("access_token=") - 1) == 0)
        {
            ngx_fuzz_assert(q - p == sizeof("access_token=***") - 1);
            ngx_fuzz_assert(ngx_memcmp(p + sizeof("access_token=") - 1,
                                       "***", 3) == 0);
        }

        if (q == end) {
            break;
        }
    }
}


static u_char *
fuzz_log_handler(ngx_http_request_t *r, ngx_http_request_t *sr, u_char *buf,
    size_t len)
{
    (void) sr;
    (void) len;

    ngx_fuzz_assert(r->request_line.len <= sizeof(fuzz_logged_data));

    fuzz_logged.len = r->request_line.len;
    fuzz_logged.data = ngx_cpymem(fuzz_logged_data, r->request_line.data,
                                  r->request_line.len)
                       - r->request_line.len;

    return buf;
}
