
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The form body of a PATCH (application/x-www-form-urlencoded,
 * "policy_slug=..."), as a chain of up to four buffers.
 *
 * Properties: NGX_OK or NGX_DECLINED; on NGX_OK the slug is empty or
 * NUL-terminated, no longer than the body, and empty when the body has no
 * "policy_slug=" at all; NGX_DECLINED only with a message.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <string.h>
#include "fuzz_common.h"
#include "ngx_http_ratelimit_policy_api.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t        len;
    u_char       *flat;
    ngx_int_t     rc;
    ngx_str_t     slug;
    ngx_pool_t   *pool;
    const char   *message;
    ngx_chain_t  *in, *cl;

    if (size > 16384 + 8) {
        return 0;
    }

    ngx_fuzz_init();
    pool = ngx_fuzz_pool();

    in = ngx_fuzz_chain(pool, data, size, 4);

    len = 0;
    for (cl = in; cl; cl = cl->next) {
        len += cl->buf->last - cl->buf->pos;
    }

    flat = ngx_pnalloc(pool, len + 1);
    if (flat == NULL) {
        abort();
    }

    len = 0;
    for (cl = in; cl; cl = cl->next) {
        ngx_memcpy(flat + len, cl->buf->pos, cl->buf->last - cl->buf->pos);
        len += cl->buf->last - cl->buf->pos;
    }

    message = NULL;
    rc = ngx_http_ratelimit_policy_form_slug(pool, in, &slug, &message);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);

    if (rc == NGX_OK) {
        if (slug.len) {
            ngx_fuzz_assert(slug.data != NULL);
            ngx_fuzz_assert(slug.data[slug.len] == '\0');
            ngx_fuzz_assert(slug.len <= len);
            ngx_fuzz_assert(memmem(flat, len, "policy_slug=",
                                   sizeof("policy_slug=") - 1) != NULL);
        }

    } else {
        ngx_fuzz_assert(message != NULL && message[0] != '\0');
    }

    ngx_destroy_pool(pool);

    return 0;
}
