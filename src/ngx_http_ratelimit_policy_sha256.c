
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * SHA-256 (FIPS 180-4).  Access tokens are only ever kept as their digests,
 * which is what ratelimit.accounts.access_token_sha256 stores.  In an
 * nginx built with OpenSSL, ngx_http_ratelimit_policy_sha256() is
 * OpenSSL's (its SHA_NI / AVX2 code: a tenth of the instructions of the
 * portable code below, which is what a build without OpenSSL uses).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_ratelimit_policy_sha256.h"

#if (NGX_OPENSSL)
/* SHA256_Init() and the others: deprecated in 3.0, not removed */
#ifndef OPENSSL_SUPPRESS_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED
#endif
#include <openssl/sha.h>
#endif


#define ROTR(x, n)  (((x) >> (n)) | ((x) << (32 - (n))))
#define CH(x, y, z)   (((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x, y, z)  (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define S0(x)  (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define S1(x)  (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define G0(x)  (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define G1(x)  (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))


#define ROTL64(x, b)  (uint64_t) (((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND                                                             \
    do {                                                                     \
        v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);        \
        v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                             \
        v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                             \
        v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);        \
    } while (0)


static ngx_inline uint64_t ngx_http_ratelimit_policy_le64(const u_char *p);
static ngx_inline void ngx_http_ratelimit_policy_put_le64(u_char *p,
    uint64_t v);
static void ngx_http_ratelimit_policy_sha256_block(
    ngx_http_ratelimit_policy_sha256_t *ctx, const u_char *p);


static const uint32_t  ngx_http_ratelimit_policy_sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};


void
ngx_http_ratelimit_policy_sha256_init(ngx_http_ratelimit_policy_sha256_t *ctx)
{
    ctx->bytes = 0;

    ctx->state[0] = 0x6a09e667;
    ctx->state[1] = 0xbb67ae85;
    ctx->state[2] = 0x3c6ef372;
    ctx->state[3] = 0xa54ff53a;
    ctx->state[4] = 0x510e527f;
    ctx->state[5] = 0x9b05688c;
    ctx->state[6] = 0x1f83d9ab;
    ctx->state[7] = 0x5be0cd19;
}


void
ngx_http_ratelimit_policy_sha256_update(ngx_http_ratelimit_policy_sha256_t *ctx,
    const void *data, size_t size)
{
    size_t        used, free;
    const u_char  *p;

    p = data;
    used = (size_t) (ctx->bytes & 0x3f);
    ctx->bytes += size;

    if (used) {
        free = 64 - used;

        if (size < free) {
            ngx_memcpy(&ctx->buffer[used], p, size);
            return;
        }

        ngx_memcpy(&ctx->buffer[used], p, free);
        p += free;
        size -= free;
        ngx_http_ratelimit_policy_sha256_block(ctx, ctx->buffer);
    }

    while (size >= 64) {
        ngx_http_ratelimit_policy_sha256_block(ctx, p);
        p += 64;
        size -= 64;
    }

    if (size) {
        ngx_memcpy(ctx->buffer, p, size);
    }
}


void
ngx_http_ratelimit_policy_sha256_final(u_char result[32],
    ngx_http_ratelimit_policy_sha256_t *ctx)
{
    size_t      used, free;
    uint64_t    bits;
    ngx_uint_t  i;

    used = (size_t) (ctx->bytes & 0x3f);
    ctx->buffer[used++] = 0x80;
    free = 64 - used;

    if (free < 8) {
        ngx_memzero(&ctx->buffer[used], free);
        ngx_http_ratelimit_policy_sha256_block(ctx, ctx->buffer);
        used = 0;
        free = 64;
    }

    ngx_memzero(&ctx->buffer[used], free - 8);

    bits = ctx->bytes << 3;

    for (i = 0; i < 8; i++) {
        ctx->buffer[56 + i] = (u_char) (bits >> (56 - i * 8));
    }

    ngx_http_ratelimit_policy_sha256_block(ctx, ctx->buffer);

    for (i = 0; i < 8; i++) {
        result[i * 4] = (u_char) (ctx->state[i] >> 24);
        result[i * 4 + 1] = (u_char) (ctx->state[i] >> 16);
        result[i * 4 + 2] = (u_char) (ctx->state[i] >> 8);
        result[i * 4 + 3] = (u_char) ctx->state[i];
    }

    ngx_memzero(ctx, sizeof(ngx_http_ratelimit_policy_sha256_t));
}


void
ngx_http_ratelimit_policy_sha256(u_char result[32], const void *data,
    size_t size)
{
    ngx_http_ratelimit_policy_sha256_t  pctx;
#if (NGX_OPENSSL)
    SHA256_CTX                          ctx;

    /* the low-level calls: SHA256() fetches the algorithm at every call */

    if (SHA256_Init(&ctx) == 1
        && SHA256_Update(&ctx, data, size) == 1
        && SHA256_Final(result, &ctx) == 1)
    {
        return;
    }

    /* cannot happen with OpenSSL's own SHA-256; the portable code then */

#endif

    ngx_http_ratelimit_policy_sha256_init(&pctx);
    ngx_http_ratelimit_policy_sha256_update(&pctx, data, size);
    ngx_http_ratelimit_policy_sha256_final(result, &pctx);
}


ngx_uint_t
ngx_http_ratelimit_policy_digest_equal(const u_char *a, const u_char *b,
    size_t n)
{
    size_t    i;
    uint64_t  x, y, diff;

    /* no early exit: eight bytes at a time, all of them */

    diff = 0;

    for (i = 0; i + 8 <= n; i += 8) {
        ngx_memcpy(&x, a + i, 8);
        ngx_memcpy(&y, b + i, 8);
        diff |= x ^ y;
    }

    for ( /* void */ ; i < n; i++) {
        diff |= (uint64_t) (a[i] ^ b[i]);
    }

    return diff == 0;
}


static void
ngx_http_ratelimit_policy_sha256_block(ngx_http_ratelimit_policy_sha256_t *ctx,
    const u_char *p)
{
    uint32_t    a, b, c, d, e, f, g, h, t1, t2, w[64];
    ngx_uint_t  i;

    for (i = 0; i < 16; i++) {
        w[i] = ((uint32_t) p[i * 4] << 24) | ((uint32_t) p[i * 4 + 1] << 16)
               | ((uint32_t) p[i * 4 + 2] << 8) | (uint32_t) p[i * 4 + 3];
    }

    for (i = 16; i < 64; i++) {
        w[i] = G1(w[i - 2]) + w[i - 7] + G0(w[i - 15]) + w[i - 16];
    }

    a = ctx->state[0];
    b = ctx->state[1];
    c = ctx->state[2];
    d = ctx->state[3];
    e = ctx->state[4];
    f = ctx->state[5];
    g = ctx->state[6];
    h = ctx->state[7];

    for (i = 0; i < 64; i++) {
        t1 = h + S1(e) + CH(e, f, g) + ngx_http_ratelimit_policy_sha256_k[i]
             + w[i];
        t2 = S0(a) + MAJ(a, b, c);
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }

    ctx->state[0] += a;
    ctx->state[1] += b;
    ctx->state[2] += c;
    ctx->state[3] += d;
    ctx->state[4] += e;
    ctx->state[5] += f;
    ctx->state[6] += g;
    ctx->state[7] += h;
}


void
ngx_http_ratelimit_policy_siphash128(u_char out[16], const u_char key[16],
    const u_char *data, size_t len)
{
    size_t    left;
    uint64_t  k0, k1, v0, v1, v2, v3, m, b;

    k0 = ngx_http_ratelimit_policy_le64(key);
    k1 = ngx_http_ratelimit_policy_le64(key + 8);

    v0 = k0 ^ 0x736f6d6570736575ULL;
    v1 = k1 ^ 0x646f72616e646f6dULL ^ 0xee;
    v2 = k0 ^ 0x6c7967656e657261ULL;
    v3 = k1 ^ 0x7465646279746573ULL;

    b = (uint64_t) len << 56;

    for (left = len; left >= 8; left -= 8, data += 8) {
        m = ngx_http_ratelimit_policy_le64(data);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }

    /* the last partial word, without a copy to the stack */

    switch (left) {
    case 7:
        b |= (uint64_t) data[6] << 48;
        /* fall through */
    case 6:
        b |= (uint64_t) data[5] << 40;
        /* fall through */
    case 5:
        b |= (uint64_t) data[4] << 32;
        /* fall through */
    case 4:
        b |= (uint64_t) data[3] << 24;
        /* fall through */
    case 3:
        b |= (uint64_t) data[2] << 16;
        /* fall through */
    case 2:
        b |= (uint64_t) data[1] << 8;
        /* fall through */
    case 1:
        b |= (uint64_t) data[0];
    }

    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;

    v2 ^= 0xee;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;

    ngx_http_ratelimit_policy_put_le64(out, v0 ^ v1 ^ v2 ^ v3);

    v1 ^= 0xdd;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;

    ngx_http_ratelimit_policy_put_le64(out + 8, v0 ^ v1 ^ v2 ^ v3);
}


static ngx_inline uint64_t
ngx_http_ratelimit_policy_le64(const u_char *p)
{
    return (uint64_t) p[0] | ((uint64_t) p[1] << 8) | ((uint64_t) p[2] << 16)
           | ((uint64_t) p[3] << 24) | ((uint64_t) p[4] << 32)
           | ((uint64_t) p[5] << 40) | ((uint64_t) p[6] << 48)
           | ((uint64_t) p[7] << 56);
}


static ngx_inline void
ngx_http_ratelimit_policy_put_le64(u_char *p, uint64_t v)
{
    p[0] = (u_char) v;
    p[1] = (u_char) (v >> 8);
    p[2] = (u_char) (v >> 16);
    p[3] = (u_char) (v >> 24);
    p[4] = (u_char) (v >> 32);
    p[5] = (u_char) (v >> 40);
    p[6] = (u_char) (v >> 48);
    p[7] = (u_char) (v >> 56);
}
