
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * Linked with nginx's own objects (built by util/asan with
 * -DNGX_DEBUG_PALLOC=1, so that every pool allocation is its own malloc()
 * and AddressSanitizer sees an overrun of any of them).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <dlfcn.h>
#include <netdb.h>
#include "fuzz_common.h"


static ngx_log_t        ngx_fuzz_log_;
static ngx_open_file_t  ngx_fuzz_log_file;
static ngx_cycle_t      ngx_fuzz_cycle;


void
ngx_fuzz_init(void)
{
    ngx_uint_t  n;

    if (ngx_fuzz_log_.file != NULL) {
        return;
    }

    ngx_pagesize = getpagesize();
    for (n = ngx_pagesize; n >>= 1; ngx_pagesize_shift++) { /* void */ }
    ngx_cacheline_size = NGX_CPU_CACHE_LINE;
    ngx_ncpu = 1;
    ngx_pid = getpid();
    ngx_use_stderr = 0;

    ngx_time_init();

    if (ngx_strerror_init() != NGX_OK) {
        abort();
    }

    ngx_fuzz_log_file.fd = open("/dev/null", O_WRONLY);
    if (ngx_fuzz_log_file.fd == -1) {
        abort();
    }

    ngx_fuzz_log_.file = &ngx_fuzz_log_file;
    ngx_fuzz_log_.log_level = NGX_LOG_DEBUG_ALL;

    ngx_fuzz_cycle.log = &ngx_fuzz_log_;
    ngx_cycle = &ngx_fuzz_cycle;
}


ngx_log_t *
ngx_fuzz_log(void)
{
    return &ngx_fuzz_log_;
}


ngx_pool_t *
ngx_fuzz_pool(void)
{
    ngx_pool_t  *pool;

    pool = ngx_create_pool(4096, &ngx_fuzz_log_);
    if (pool == NULL) {
        abort();
    }

    ngx_fuzz_cycle.pool = pool;

    if (ngx_list_init(&ngx_fuzz_cycle.shared_memory, pool, 1,
                      sizeof(ngx_shm_zone_t))
        != NGX_OK)
    {
        abort();
    }

    return pool;
}


ngx_chain_t *
ngx_fuzz_chain(ngx_pool_t *pool, const uint8_t *data, size_t size,
    ngx_uint_t parts)
{
    size_t        cut[8], len, from, to;
    ngx_buf_t    *b;
    ngx_uint_t    n, i;
    ngx_chain_t  *head, **ll, *cl;

    n = 1;

    if (size > 0 && parts > 1) {
        n = 1 + data[0] % (parts > 8 ? 8 : parts);
        data++;
        size--;
    }

    /* n - 1 cut points, each a byte scaled to the rest of the input */

    for (i = 0; i + 1 < n && size > 0; i++) {
        cut[i] = data[0];
        data++;
        size--;
    }

    n = i + 1;
    len = size;

    head = NULL;
    ll = &head;
    from = 0;

    for (i = 0; i < n; i++) {
        to = (i + 1 < n) ? cut[i] * len / 255 : len;

        if (to < from) {
            to = from;
        }

        b = ngx_create_temp_buf(pool, to - from ? to - from : 1);
        if (b == NULL) {
            abort();
        }

        b->last = ngx_cpymem(b->pos, data + from, to - from);
        b->memory = 1;
        b->last_buf = (i + 1 == n);

        cl = ngx_alloc_chain_link(pool);
        if (cl == NULL) {
            abort();
        }

        cl->buf = b;
        cl->next = NULL;
        *ll = cl;
        ll = &cl->next;

        from = to;
    }

    return head;
}


u_char *
ngx_fuzz_strdup(ngx_pool_t *pool, const uint8_t *data, size_t len)
{
    u_char  *p;

    p = ngx_pnalloc(pool, len + 1);
    if (p == NULL) {
        abort();
    }

    ngx_memcpy(p, data, len);
    p[len] = '\0';

    return p;
}


/*
 * No name is ever resolved while fuzzing: only numeric addresses, as with
 * AI_NUMERICHOST.  (This definition takes the place of libc's, and of
 * AddressSanitizer's weak interceptor, for nginx and libpq alike.)
 */

int
getaddrinfo(const char *node, const char *service,
    const struct addrinfo *hints, struct addrinfo **res)
{
    struct addrinfo  h;

    static int (*real)(const char *, const char *, const struct addrinfo *,
                       struct addrinfo **);

    if (real == NULL) {
        real = (int (*)(const char *, const char *, const struct addrinfo *,
                        struct addrinfo **)) dlsym(RTLD_NEXT, "getaddrinfo");
        if (real == NULL) {
            abort();
        }
    }

    if (hints) {
        h = *hints;

    } else {
        ngx_memzero(&h, sizeof(struct addrinfo));
        h.ai_family = AF_UNSPEC;
    }

    h.ai_flags |= AI_NUMERICHOST;

    return real(node, service, &h, res);
}
