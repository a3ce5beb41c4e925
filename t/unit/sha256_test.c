
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * Tests of src/ngx_http_ratelimit_policy_sha256.c: the SHA-256 digest of
 * the tokens (FIPS 180-4 examples) and the SipHash-2-4-128 verifiers (the
 * reference implementation's vectors: key 00..0f, message 00..n-1), which
 * no test through nginx could tell from another keyed hash.  Every length
 * of 0 to 16 bytes covers each length of the last partial word.  And the
 * test of an instance id's characters, eight bytes at a time.
 *
 * The last line of the output is "N passed, M failed"; the exit code is
 * non-zero when anything failed.
 */


#include <stdio.h>
#include <string.h>
#include "ngx_http_ratelimit_policy_sha256.h"


static unsigned  passed, failed;


static void check_alnum12(void);


static void
hex(char *out, const u_char *p, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
}


static void
check_hex(const char *what, const u_char *got, size_t n, const char *want)
{
    char  buf[2 * 32 + 1];

    hex(buf, got, n);

    if (strcmp(buf, want) == 0) {
        passed++;

    } else {
        failed++;
        printf("FAIL %s: %s, expected %s\n", what, buf, want);
    }
}


static const struct {
    size_t       len;
    const char  *hash;
} sip_vectors[] = {
    {  0, "a3817f04ba25a8e66df67214c7550293" },
    {  1, "da87c1d86b99af44347659119b22fc45" },
    {  2, "8177228da4a45dc7fca38bdef60affe4" },
    {  3, "9c70b60c5267a94e5f33b6b02985ed51" },
    {  4, "f88164c12d9c8faf7d0f6e7c7bcd5579" },
    {  5, "1368875980776f8854527a07690e9627" },
    {  6, "14eeca338b208613485ea0308fd7a15e" },
    {  7, "a1f1ebbed8dbc153c0b84aa61ff08239" },
    {  8, "3b62a9ba6258f5610f83e264f31497b4" },
    {  9, "264499060ad9baabc47f8b02bb6d71ed" },
    { 10, "00110dc378146956c95447d3f3d0fbba" },
    { 11, "0151c568386b6677a2b4dc6f81e5dc18" },
    { 12, "d626b266905ef35882634df68532c125" },
    { 13, "9869e247e9c08b10d029934fc4b952f7" },
    { 14, "31fcefac66d7de9c7ec7485fe4494902" },
    { 15, "5493e99933b0a8117e08ec0f97cfc3d9" },
    { 16, "6ee2a4ca67b054bbfd3315bf85230577" },
    { 63, "5150d1772f50834a503e069a973fbd7c" },
};


static const struct {
    const char  *msg;
    size_t       repeat;
    const char  *digest;
} sha_vectors[] = {
    { "", 1,
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
    { "abc", 1,
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
    { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1,
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
    { "a", 1000,
      "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3" },
};


int
main(void)
{
    char     what[64];
    u_char   key[16], msg[64], out[32], buf[1024], *p;
    size_t   i, j, n;

    for (i = 0; i < sizeof(key); i++) {
        key[i] = (u_char) i;
    }

    for (i = 0; i < sizeof(msg); i++) {
        msg[i] = (u_char) i;
    }

    for (i = 0; i < sizeof(sip_vectors) / sizeof(sip_vectors[0]); i++) {

        /* an unaligned copy too: the words are read a byte at a time */

        for (j = 0; j < 2; j++) {
            p = buf + j;
            memcpy(p, msg, sip_vectors[i].len);

            memset(out, 0xa5, sizeof(out));
            ngx_http_ratelimit_policy_siphash128(out, key, p,
                                                 sip_vectors[i].len);

            snprintf(what, sizeof(what), "siphash128 of %zu bytes%s",
                     sip_vectors[i].len, j ? ", unaligned" : "");
            check_hex(what, out, 16, sip_vectors[i].hash);

            /* 16 bytes written, not one more */
            snprintf(what, sizeof(what), "siphash128 of %zu bytes, bound",
                     sip_vectors[i].len);
            check_hex(what, out + 16, 1, "a5");
        }
    }

    for (i = 0; i < sizeof(sha_vectors) / sizeof(sha_vectors[0]); i++) {
        n = strlen(sha_vectors[i].msg);

        for (j = 0; j < sha_vectors[i].repeat; j++) {
            memcpy(buf + j * n, sha_vectors[i].msg, n);
        }

        ngx_http_ratelimit_policy_sha256(out, buf, n * sha_vectors[i].repeat);

        snprintf(what, sizeof(what), "sha256 vector %zu", i);
        check_hex(what, out, 32, sha_vectors[i].digest);
    }

    memset(buf, 0, 32);
    memset(buf + 32, 0, 32);
    buf[63] = 1;

    if (ngx_http_ratelimit_policy_digest_equal(buf, buf + 32, 32)) {
        failed++;
        printf("FAIL digest_equal: differing digests equal\n");

    } else {
        passed++;
    }

    if (ngx_http_ratelimit_policy_digest_equal(buf, buf + 32, 31)) {
        passed++;

    } else {
        failed++;
        printf("FAIL digest_equal: equal digests differ\n");
    }

    check_alnum12();

    printf("%u passed, %u failed\n", passed, failed);

    return failed ? 1 : 0;
}


/*
 * ngx_http_ratelimit_policy_alnum12() against a plain test of each byte:
 * every byte value at every position, the other eleven bytes taken in turn
 * from the edges of the ranges, then every pair of values of neighbours
 * (positions 0-1, 3-4, 7-8, 10-11).  One check per position, one for the
 * pairs.
 */

static int
alnum(u_char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
           || (c >= 'a' && c <= 'z');
}


static void
check_alnum12(void)
{
    int           want, bad;
    u_char        id[13];
    size_t        pos, k, v, j;
    static const  u_char  edges[] = "09AZaz5Mm";
    static const  u_char  firsts[] = { 0, 3, 7, 10 };

    for (pos = 0; pos < 12; pos++) {
        bad = 0;

        for (k = 0; k < sizeof(edges) - 1; k++) {
            for (v = 0; v < 256; v++) {
                for (j = 0; j < 12; j++) {
                    id[j] = edges[(k + j) % (sizeof(edges) - 1)];
                }

                id[pos] = (u_char) v;
                id[12] = 0xff;    /* a byte after the id is not read */

                want = alnum((u_char) v);

                if ((ngx_http_ratelimit_policy_alnum12(id) != 0) != want) {
                    bad++;

                    if (bad < 4) {
                        printf("FAIL alnum12: byte 0x%02zx at %zu: %s\n",
                               v, pos, want ? "refused" : "accepted");
                    }
                }
            }
        }

        if (bad) {
            failed++;
            printf("FAIL alnum12, byte %zu: %d wrong\n", pos, bad);

        } else {
            passed++;
        }
    }

    /*
     * every pair of values of two neighbours, the carry of the first into
     * the second: at the start, the end and across the two words
     */

    bad = 0;

    for (j = 0; j < sizeof(firsts); j++) {
        pos = firsts[j];

        for (v = 0; v < 256; v++) {
            for (k = 0; k < 256; k++) {
                memcpy(id, "a1B2c3D4e5F6", 12);
                id[pos] = (u_char) v;
                id[pos + 1] = (u_char) k;

                want = alnum((u_char) v) && alnum((u_char) k);

                if ((ngx_http_ratelimit_policy_alnum12(id) != 0) != want) {
                    bad++;
                }
            }
        }
    }

    if (bad) {
        failed++;
        printf("FAIL alnum12, neighbours: %d wrong\n", bad);

    } else {
        passed++;
    }
}
