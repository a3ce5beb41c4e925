
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The JSON body of a PATCH, {"policy_slug": "..."}, as the request body
 * reader hands it over: a chain of up to four buffers.
 *
 * Properties: NGX_OK or NGX_DECLINED (never NGX_ERROR: the pool does not
 * run out); on NGX_OK the slug is empty or NUL-terminated; on
 * NGX_DECLINED an error message is set.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "fuzz_common.h"
#include "ngx_http_ratelimit_policy_json.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ngx_int_t     rc;
    ngx_str_t     slug;
    ngx_pool_t   *pool;
    const char   *error;
    ngx_chain_t  *in;

    if (size > 16384 + 8) {
        /* the module refuses bodies over 16 KiB before parsing */
        return 0;
    }

    ngx_fuzz_init();
    pool = ngx_fuzz_pool();

    in = ngx_fuzz_chain(pool, data, size, 4);

    error = NULL;
    rc = ngx_http_ratelimit_policy_json_parse_slug(pool, in, &slug, &error);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);

    if (rc == NGX_OK) {
        if (slug.len) {
            ngx_fuzz_assert(slug.data != NULL);
            ngx_fuzz_assert(slug.data[slug.len] == '\0');
        }

    } else {
        ngx_fuzz_assert(error != NULL && error[0] != '\0');
    }

    ngx_destroy_pool(pool);

    return 0;
}
