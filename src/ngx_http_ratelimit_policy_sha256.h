
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


#endif /* _NGX_HTTP_RATELIMIT_POLICY_SHA256_H_INCLUDED_ */
