
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_SHA256_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_SHA256_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


typedef struct {
    uint64_t  bytes;
    uint32_t  state[8];
    u_char    buffer[64];
} ngx_http_ratelimit_policy_sha256_t;


void ngx_http_ratelimit_policy_sha256_init(
    ngx_http_ratelimit_policy_sha256_t *ctx);
void ngx_http_ratelimit_policy_sha256_update(
    ngx_http_ratelimit_policy_sha256_t *ctx, const void *data, size_t size);
void ngx_http_ratelimit_policy_sha256_final(u_char result[32],
    ngx_http_ratelimit_policy_sha256_t *ctx);
void ngx_http_ratelimit_policy_sha256(u_char result[32], const void *data,
    size_t size);

/*
 * SipHash-2-4 with a 128-bit output, keyed with the zone's random key: a
 * token verified once against its SHA-256 digest is recognised again by
 * this much cheaper keyed hash
 */
void ngx_http_ratelimit_policy_siphash128(u_char out[16], const u_char key[16],
    const u_char *data, size_t len);

/* constant time comparison of two digests */
ngx_uint_t ngx_http_ratelimit_policy_digest_equal(const u_char *a,
    const u_char *b, size_t n);


/*
 * Whether 12 bytes, an instance id, are all ASCII letters or digits, eight
 * bytes at a time.  A byte's high bit after the addition of a constant
 * tells whether it was at least a bound: b + 0x50 >= 0x80 for b >= '0',
 * b + 0x46 >= 0x80 for b > '9'; with the case bit set, b + 0x1f >= 0x80
 * for b >= 'a', b + 0x05 >= 0x80 for b > 'z'.  Below 0xb0 a byte carries
 * into no other; a byte of 0x80 or more fails both tests itself, whatever
 * it carries into the next.
 */

#define NGX_HTTP_RATELIMIT_POLICY_HIGH_BITS  0x8080808080808080ULL
#define ngx_http_ratelimit_policy_bytes(c)   (0x0101010101010101ULL * (c))

static ngx_inline ngx_uint_t
ngx_http_ratelimit_policy_alnum8(uint64_t w)
{
    uint64_t  digit, letter;

    digit = (w + ngx_http_ratelimit_policy_bytes(0x50))
            & ~(w + ngx_http_ratelimit_policy_bytes(0x46));

    w |= ngx_http_ratelimit_policy_bytes(0x20);

    letter = (w + ngx_http_ratelimit_policy_bytes(0x1f))
             & ~(w + ngx_http_ratelimit_policy_bytes(0x05));

    return ((digit | letter) & NGX_HTTP_RATELIMIT_POLICY_HIGH_BITS)
           == NGX_HTTP_RATELIMIT_POLICY_HIGH_BITS;
}


static ngx_inline ngx_uint_t
ngx_http_ratelimit_policy_alnum12(const u_char *p)
{
    uint32_t  w4;
    uint64_t  w8;

    ngx_memcpy(&w8, p, 8);
    ngx_memcpy(&w4, p + 8, 4);

    /* the four bytes after the id's twelve: "0000" */

    return ngx_http_ratelimit_policy_alnum8(w8)
           & ngx_http_ratelimit_policy_alnum8((uint64_t) w4
                                              | 0x3030303000000000ULL);
}


#endif /* _NGX_HTTP_RATELIMIT_POLICY_SHA256_H_INCLUDED_ */
