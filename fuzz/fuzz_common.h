
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * What the libFuzzer targets share: nginx's globals set up once, a pool
 * per input, and a chain of buffers cut from the input.
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_FUZZ_COMMON_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_FUZZ_COMMON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <stdint.h>
#include <stdlib.h>


/* a failed property: a crash libFuzzer saves like any other */
#define ngx_fuzz_assert(expr)                                                \
    do {                                                                     \
        if (!(expr)) {                                                       \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__,        \
                    __LINE__, #expr);                                        \
            abort();                                                         \
        }                                                                    \
    } while (0)


/* once per process: ngx_pagesize, the time cache, a log to /dev/null */
void ngx_fuzz_init(void);

/* the log every target uses: every level, debug included, is formatted */
ngx_log_t *ngx_fuzz_log(void);

/* a fresh pool (and ngx_cycle with it), to destroy after the input */
ngx_pool_t *ngx_fuzz_pool(void);

/*
 * The input as a chain of up to "parts" memory buffers, cut where the
 * first bytes of the input say (so a body split over buffers is fuzzed
 * too); *data / *size are advanced past the bytes used for the cuts.
 */
ngx_chain_t *ngx_fuzz_chain(ngx_pool_t *pool, const uint8_t *data,
    size_t size, ngx_uint_t parts);

/* a copy of data, NUL-terminated, from the pool */
u_char *ngx_fuzz_strdup(ngx_pool_t *pool, const uint8_t *data, size_t len);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_FUZZ_COMMON_H_INCLUDED_ */
