
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) for verified
 * identification: a site's backend signs a user_id or an e-mail with
 * civchat_identity_secret, and the module checks the "user_hash" the
 * page sends.  The key's inner and outer blocks are hashed once, when
 * the configuration is read, so a check costs two compressions.  The
 * comparison takes the same time wherever the hashes differ.
 */


#define ngx_http_civchat_ror(x, n)  (((x) >> (n)) | ((x) << (32 - (n))))


static void ngx_http_civchat_sha256_block(ngx_http_civchat_sha256_t *ctx,
    const u_char *p);


static const uint32_t  ngx_http_civchat_sha256_k[64] = {
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
ngx_http_civchat_sha256_init(ngx_http_civchat_sha256_t *ctx)
{
    ctx->state[0] = 0x6a09e667;
    ctx->state[1] = 0xbb67ae85;
    ctx->state[2] = 0x3c6ef372;
    ctx->state[3] = 0xa54ff53a;
    ctx->state[4] = 0x510e527f;
    ctx->state[5] = 0x9b05688c;
    ctx->state[6] = 0x1f83d9ab;
    ctx->state[7] = 0x5be0cd19;
    ctx->bytes = 0;
}


void
ngx_http_civchat_sha256_update(ngx_http_civchat_sha256_t *ctx,
    const u_char *data, size_t len)
{
    size_t  used, n;

    used = (size_t) (ctx->bytes & 63);
    ctx->bytes += len;

    if (used) {
        n = ngx_min(64 - used, len);
        ngx_memcpy(ctx->block + used, data, n);
        data += n;
        len -= n;

        if (used + n < 64) {
            return;
        }

        ngx_http_civchat_sha256_block(ctx, ctx->block);
    }

    while (len >= 64) {
        ngx_http_civchat_sha256_block(ctx, data);
        data += 64;
        len -= 64;
    }

    if (len) {
        ngx_memcpy(ctx->block, data, len);
    }
}


void
ngx_http_civchat_sha256_final(ngx_http_civchat_sha256_t *ctx,
    u_char *digest)
{
    u_char      pad[72];
    size_t      used, n;
    uint64_t    bits;
    ngx_uint_t  i;

    bits = ctx->bytes * 8;
    used = (size_t) (ctx->bytes & 63);

    /* 0x80, zeros up to 56 bytes into a block, the length in bits */
    n = (used < 56) ? 56 - used : 120 - used;

    ngx_memzero(pad, sizeof(pad));
    pad[0] = 0x80;

    for (i = 0; i < 8; i++) {
        pad[n + i] = (u_char) (bits >> (56 - 8 * i));
    }

    ngx_http_civchat_sha256_update(ctx, pad, n + 8);

    for (i = 0; i < 8; i++) {
        digest[4 * i] = (u_char) (ctx->state[i] >> 24);
        digest[4 * i + 1] = (u_char) (ctx->state[i] >> 16);
        digest[4 * i + 2] = (u_char) (ctx->state[i] >> 8);
        digest[4 * i + 3] = (u_char) ctx->state[i];
    }
}


static void
ngx_http_civchat_sha256_block(ngx_http_civchat_sha256_t *ctx,
    const u_char *p)
{
    uint32_t    w[64], a, b, c, d, e, f, g, h, s0, s1, t1, t2;
    ngx_uint_t  i;

    for (i = 0; i < 16; i++) {
        w[i] = ((uint32_t) p[4 * i] << 24) | ((uint32_t) p[4 * i + 1] << 16)
               | ((uint32_t) p[4 * i + 2] << 8) | (uint32_t) p[4 * i + 3];
    }

    for (i = 16; i < 64; i++) {
        s0 = ngx_http_civchat_ror(w[i - 15], 7)
             ^ ngx_http_civchat_ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        s1 = ngx_http_civchat_ror(w[i - 2], 17)
             ^ ngx_http_civchat_ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
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
        s1 = ngx_http_civchat_ror(e, 6) ^ ngx_http_civchat_ror(e, 11)
             ^ ngx_http_civchat_ror(e, 25);
        t1 = h + s1 + ((e & f) ^ (~e & g)) + ngx_http_civchat_sha256_k[i]
             + w[i];
        s0 = ngx_http_civchat_ror(a, 2) ^ ngx_http_civchat_ror(a, 13)
             ^ ngx_http_civchat_ror(a, 22);
        t2 = s0 + ((a & b) ^ (a & c) ^ (b & c));

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
ngx_http_civchat_hmac_key(ngx_http_civchat_hmac_t *hk, const u_char *key,
    size_t len)
{
    u_char                     block[64], digest[32];
    ngx_uint_t                 i;
    ngx_http_civchat_sha256_t  sha;

    ngx_memzero(block, sizeof(block));

    if (len > 64) {
        /* a key longer than a block is its hash */
        ngx_http_civchat_sha256_init(&sha);
        ngx_http_civchat_sha256_update(&sha, key, len);
        ngx_http_civchat_sha256_final(&sha, digest);
        ngx_memcpy(block, digest, 32);

    } else {
        ngx_memcpy(block, key, len);
    }

    for (i = 0; i < 64; i++) {
        block[i] ^= 0x36;
    }

    ngx_http_civchat_sha256_init(&hk->inner);
    ngx_http_civchat_sha256_update(&hk->inner, block, 64);

    for (i = 0; i < 64; i++) {
        block[i] ^= 0x36 ^ 0x5c;
    }

    ngx_http_civchat_sha256_init(&hk->outer);
    ngx_http_civchat_sha256_update(&hk->outer, block, 64);

    ngx_explicit_memzero(block, sizeof(block));
}


void
ngx_http_civchat_hmac(ngx_http_civchat_hmac_t *hk, const u_char *msg,
    size_t len, u_char *mac)
{
    u_char                     inner[32];
    ngx_http_civchat_sha256_t  sha;

    sha = hk->inner;
    ngx_http_civchat_sha256_update(&sha, msg, len);
    ngx_http_civchat_sha256_final(&sha, inner);

    sha = hk->outer;
    ngx_http_civchat_sha256_update(&sha, inner, 32);
    ngx_http_civchat_sha256_final(&sha, mac);
}


/*
 * Whether hex (64 hexadecimal digits, either case) is the HMAC of msg.
 * Every digit is compared whatever the others are: how long this takes
 * tells nothing about how much of a forged hash was right.
 */

ngx_int_t
ngx_http_civchat_hmac_verify(ngx_http_civchat_hmac_t *hk, ngx_str_t *msg,
    ngx_str_t *hex)
{
    u_char      mac[32], want[NGX_HTTP_CIVCHAT_HASH_LEN], c, diff;
    ngx_uint_t  i;

    ngx_http_civchat_hmac(hk, msg->data, msg->len, mac);
    ngx_hex_dump(want, mac, sizeof(mac));

    diff = (u_char) (hex->len != NGX_HTTP_CIVCHAT_HASH_LEN);

    for (i = 0; i < NGX_HTTP_CIVCHAT_HASH_LEN; i++) {
        c = (i < hex->len) ? hex->data[i] : 0;

        /* upper-case hex digits count as their lower-case selves */
        if (c >= 'A' && c <= 'F') {
            c |= 0x20;
        }

        diff |= c ^ want[i];
    }

    return diff ? NGX_DECLINED : NGX_OK;
}
