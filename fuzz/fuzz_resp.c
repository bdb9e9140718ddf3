
/*
 * Copyright (C) civchat developers
 */


/*
 * The Redis reply parser (resp.c) and the key slot.  The input is one
 * byte placing a split, then what a Redis server (or anyone between it
 * and nginx) sent, in a buffer of its exact size, so that a read past
 * the end is a finding.
 *
 * ngx_http_civchat_redis_scan() reads it whole, and again resumed after
 * the bytes up to the split: both must agree (a reply is complete, with
 * the same length; incomplete; not RESP).  A complete reply is built
 * (strings in the buffer, and copied) and written back as RESP, which
 * must give exactly the bytes it was read from (integers have one
 * spelling), with at most NGX_HTTP_CIVCHAT_REDIS_ELTS elements nested
 * at most NGX_HTTP_CIVCHAT_REDIS_DEPTH deep.  The input is also a key:
 * its slot is compared with Redis's CRC16 done another way (by table).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"

#include "common.h"


static ngx_uint_t fuzz_scan(u_char *p, size_t len, size_t split,
    size_t *pos);
static u_char *fuzz_write(u_char *out, u_char *base, u_char *end,
    u_char *in, ngx_http_civchat_redis_reply_t *r, ngx_uint_t depth,
    ngx_uint_t *elts);
static ngx_uint_t fuzz_slot(u_char *key, size_t len);


static uint16_t  fuzz_crc16[256];


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    uint16_t    crc;
    ngx_uint_t  i, bit;

    ngx_fuzz_init();

    /* the table of CRC16/XMODEM, as Redis's cluster.c has it */

    for (i = 0; i < 256; i++) {
        crc = (uint16_t) (i << 8);

        for (bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }

        fuzz_crc16[i] = crc;
    }

    /* the check value of CRC16/XMODEM, and Redis's own examples */

#define slot(s)  ngx_http_civchat_redis_keyslot((u_char *) s, sizeof(s) - 1)

    ngx_fuzz_assert(slot("123456789") == (0x31c3 & 16383));
    ngx_fuzz_assert(slot("") == 0);
    ngx_fuzz_assert(slot("foo") == 12182);
    ngx_fuzz_assert(slot("user:{42}:x") == 8000);
    ngx_fuzz_assert(slot("{user1000}.following")
                    == slot("{user1000}.followers"));
    ngx_fuzz_assert(slot("foo{}{bar}") != slot("bar"));
    ngx_fuzz_assert(slot("foo{{bar}}zap") == slot("{bar"));
    ngx_fuzz_assert(slot("foo{bar}{zap}") == slot("bar"));
    ngx_fuzz_assert(slot("{b") == 6215);

#undef slot

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                          *in, *out, *end;
    size_t                           split, pos, pos2;
    ngx_uint_t                       rc, rc2, copy, elts;
    ngx_pool_t                      *pool;
    ngx_http_civchat_redis_reply_t  *r;

    if (size < 1) {
        return 0;
    }

    split = data[0];
    data++;
    size--;

    split = (size == 0) ? 0 : size * split / 256;

    in = malloc(size ? size : 1);
    if (in == NULL) {
        abort();
    }

    ngx_memcpy(in, data, size);

    /* the slot, by table */

    ngx_fuzz_assert(ngx_http_civchat_redis_keyslot(in, size)
                    == fuzz_slot(in, size));

    /* whole, and resumed after the split */

    rc = fuzz_scan(in, size, size, &pos);
    rc2 = fuzz_scan(in, size, split, &pos2);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_AGAIN || rc == NGX_ERROR);
    ngx_fuzz_assert(rc == rc2);

    if (rc != NGX_OK) {
        free(in);
        return 0;
    }

    ngx_fuzz_assert(pos == pos2 && pos > 0 && pos <= size);

    pool = ngx_create_pool(4096, ngx_fuzz_log);
    if (pool == NULL) {
        abort();
    }

    out = malloc(pos);
    if (out == NULL) {
        abort();
    }

    for (copy = 0; copy < 2; copy++) {
        r = ngx_http_civchat_redis_build(pool, in, pos, copy);
        ngx_fuzz_assert(r != NULL);

        elts = 0;
        end = fuzz_write(out, out, out + pos, in, r, 0, &elts);

        ngx_fuzz_assert(end == out + pos);
        ngx_fuzz_assert(ngx_memcmp(out, in, pos) == 0);
        ngx_fuzz_assert(elts <= NGX_HTTP_CIVCHAT_REDIS_ELTS);
    }

    free(out);
    ngx_destroy_pool(pool);
    free(in);

    return 0;
}


/* the scan, resumed after the first "split" bytes when split < len */

static ngx_uint_t
fuzz_scan(u_char *p, size_t len, size_t split, size_t *pos)
{
    ngx_int_t                      rc;
    ngx_http_civchat_redis_scan_t  s;

    ngx_http_civchat_redis_scan_init(&s);

    if (split < len) {
        rc = ngx_http_civchat_redis_scan(&s, p, p + split);

        if (rc != NGX_AGAIN) {
            /* the prefix decided: the whole says the same */
            *pos = s.pos;
            return rc;
        }
    }

    rc = ngx_http_civchat_redis_scan(&s, p, p + len);
    *pos = s.pos;

    return rc;
}


/*
 * The reply as RESP into [base, end), never past the end; a nil is
 * spelled as the input spelled it where it stands ($-1 or *-1).
 */

static u_char *
fuzz_write(u_char *out, u_char *base, u_char *end, u_char *in,
    ngx_http_civchat_redis_reply_t *r, ngx_uint_t depth, ngx_uint_t *elts)
{
    u_char      buf[64], *p;
    size_t      n;
    ngx_uint_t  i;

    ngx_fuzz_assert(depth <= NGX_HTTP_CIVCHAT_REDIS_DEPTH);

    switch (r->type) {

    case NGX_HTTP_CIVCHAT_REDIS_STATUS:
    case NGX_HTTP_CIVCHAT_REDIS_ERROR:
        n = 1 + r->str.len + 2;
        ngx_fuzz_assert((size_t) (end - out) >= n);
        *out++ = (r->type == NGX_HTTP_CIVCHAT_REDIS_STATUS) ? '+' : '-';
        out = ngx_cpymem(out, r->str.data, r->str.len);
        *out++ = CR; *out++ = LF;
        break;

    case NGX_HTTP_CIVCHAT_REDIS_INTEGER:
        p = ngx_sprintf(buf, ":%L\r\n", r->integer);
        ngx_fuzz_assert(end - out >= p - buf);
        out = ngx_cpymem(out, buf, p - buf);
        break;

    case NGX_HTTP_CIVCHAT_REDIS_STRING:
        p = ngx_sprintf(buf, "$%uz\r\n", r->str.len);
        ngx_fuzz_assert((size_t) (end - out) >= (p - buf) + r->str.len + 2);
        out = ngx_cpymem(out, buf, p - buf);
        out = ngx_cpymem(out, r->str.data, r->str.len);
        *out++ = CR; *out++ = LF;
        break;

    case NGX_HTTP_CIVCHAT_REDIS_NIL:
        ngx_fuzz_assert(end - out >= 5);
        *out = (in[out - base] == '*') ? '*' : '$';
        out = ngx_cpymem(out + 1, "-1\r\n", 4);
        break;

    case NGX_HTTP_CIVCHAT_REDIS_ARRAY:
        *elts += r->nelts;
        p = ngx_sprintf(buf, "*%ui\r\n", r->nelts);
        ngx_fuzz_assert(end - out >= p - buf);
        out = ngx_cpymem(out, buf, p - buf);

        for (i = 0; i < r->nelts; i++) {
            out = fuzz_write(out, base, end, in, &r->elts[i], depth + 1,
                             elts);
        }

        break;

    default:
        ngx_fuzz_fail("reply type %d", (int) r->type);
    }

    return out;
}


static ngx_uint_t
fuzz_slot(u_char *key, size_t len)
{
    size_t    i, s, e;
    uint16_t  crc;

    for (s = 0; s < len && key[s] != '{'; s++) { /* void */ }

    if (s < len) {
        for (e = s + 1; e < len && key[e] != '}'; e++) { /* void */ }

        if (e < len && e != s + 1) {
            key += s + 1;
            len = e - s - 1;
        }
    }

    crc = 0;

    for (i = 0; i < len; i++) {
        crc = (uint16_t) (crc << 8) ^ fuzz_crc16[((crc >> 8) ^ key[i]) & 0xff];
    }

    return crc & 16383;
}
