
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_attrs.h"


/*
 * Attribute names as they are stored: trimmed, valid UTF-8 without
 * controls, a run of spaces and '-' made one '_', capitals lower-cased.
 * attrs.c normalizes a company's attribute names with
 * ngx_http_civchat_normalize(), into a buffer of its own.
 */


#define NGX_HTTP_CIVCHAT_BAD_UTF8      0xffffffff


static const char *ngx_http_civchat_check_name(u_char *p, u_char *last);
static uint32_t ngx_http_civchat_utf8_decode(u_char **p, u_char *last);
static u_char *ngx_http_civchat_utf8_encode(u_char *p, uint32_t c);
static size_t ngx_http_civchat_utf8_len(uint32_t c);
static uint32_t ngx_http_civchat_lowercase(uint32_t c);
static uint32_t ngx_http_civchat_latin_ext_a_lowercase(uint32_t c);


ngx_int_t
ngx_http_civchat_normalize_name(ngx_pool_t *pool, u_char *name, size_t len,
    ngx_str_t *out, const char **reason)
{
    size_t     n;
    ngx_int_t  rc;
    u_char     buf[NGX_HTTP_CIVCHAT_NAME_MAX];

    rc = ngx_http_civchat_normalize(name, len, buf, &n, reason);

    if (rc != NGX_OK) {
        return rc;
    }

    out->data = ngx_pnalloc(pool, n);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, buf, n);
    out->len = n;

    return NGX_OK;
}


/*
 * Normalizes a name into buf, which holds NGX_HTTP_CIVCHAT_NAME_MAX bytes:
 * the limit is on the name as stored, so one sent with padding or long
 * runs of separators may be longer than that.
 */

ngx_int_t
ngx_http_civchat_normalize(u_char *name, size_t len, u_char *buf, size_t *n,
    const char **reason)
{
    u_char      *p, *q, *last, *end, *start;
    size_t       size;
    uint32_t     c, lc;
    ngx_uint_t   separator;

    *reason = NULL;

    p = name;
    ngx_http_civchat_trim(&p, &len);
    last = p + len;

    if (len == 0) {
        *reason = "invalid_name";
        return NGX_DECLINED;
    }

    /*
     * the whole name is checked first: a broken name is reported as broken
     * even when it is too long as well
     */

    *reason = ngx_http_civchat_check_name(p, last);

    if (*reason != NULL) {
        return NGX_DECLINED;
    }

    q = buf;
    end = buf + NGX_HTTP_CIVCHAT_NAME_MAX;
    separator = 0;

    while (p < last) {

        if (*p == ' ' || *p == '-') {
            separator = 1;
            p++;
            continue;
        }

        if (separator) {
            if (q == end) {
                goto too_long;
            }

            *q++ = '_';
            separator = 0;
        }

        start = p;
        c = ngx_http_civchat_utf8_decode(&p, last);
        lc = ngx_http_civchat_lowercase(c);

        size = (lc == c) ? (size_t) (p - start)
                         : ngx_http_civchat_utf8_len(lc);

        if ((size_t) (end - q) < size) {
            goto too_long;
        }

        if (lc == c) {
            q = ngx_cpymem(q, start, size);

        } else {
            q = ngx_http_civchat_utf8_encode(q, lc);
        }
    }

    /* a name may end with '-': trimming only removes whitespace */

    if (separator) {
        if (q == end) {
            goto too_long;
        }

        *q++ = '_';
    }

    *n = q - buf;

    return NGX_OK;

too_long:

    *reason = "name_too_long";
    return NGX_DECLINED;
}


static const char *
ngx_http_civchat_check_name(u_char *p, u_char *last)
{
    uint32_t  c;

    while (p < last) {
        c = ngx_http_civchat_utf8_decode(&p, last);

        if (c == NGX_HTTP_CIVCHAT_BAD_UTF8) {
            return "invalid_utf8";
        }

        if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) {
            return "control_character";
        }
    }

    return NULL;
}


/*
 * A strict decoder: nginx's ngx_utf8_decode() lets surrogates and code
 * points above U+10FFFF through, which a name must not carry.
 */

static uint32_t
ngx_http_civchat_utf8_decode(u_char **p, u_char *last)
{
    u_char    *s;
    size_t     n, i;
    uint32_t   c, min;

    s = *p;
    c = *s++;

    if (c < 0x80) {
        *p = s;
        return c;
    }

    if (c >= 0xc0 && c < 0xe0) {
        c &= 0x1f;
        n = 1;
        min = 0x80;

    } else if (c >= 0xe0 && c < 0xf0) {
        c &= 0x0f;
        n = 2;
        min = 0x800;

    } else if (c >= 0xf0 && c < 0xf8) {
        c &= 0x07;
        n = 3;
        min = 0x10000;

    } else {
        return NGX_HTTP_CIVCHAT_BAD_UTF8;
    }

    if ((size_t) (last - s) < n) {
        return NGX_HTTP_CIVCHAT_BAD_UTF8;
    }

    for (i = 0; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return NGX_HTTP_CIVCHAT_BAD_UTF8;
        }

        c = (c << 6) | (s[i] & 0x3f);
    }

    /* overlong forms, surrogates and values beyond Unicode */

    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
        return NGX_HTTP_CIVCHAT_BAD_UTF8;
    }

    *p = s + n;

    return c;
}


static u_char *
ngx_http_civchat_utf8_encode(u_char *p, uint32_t c)
{
    if (c < 0x80) {
        *p++ = (u_char) c;
        return p;
    }

    if (c < 0x800) {
        *p++ = (u_char) (0xc0 | (c >> 6));
        *p++ = (u_char) (0x80 | (c & 0x3f));
        return p;
    }

    if (c < 0x10000) {
        *p++ = (u_char) (0xe0 | (c >> 12));
        *p++ = (u_char) (0x80 | ((c >> 6) & 0x3f));
        *p++ = (u_char) (0x80 | (c & 0x3f));
        return p;
    }

    *p++ = (u_char) (0xf0 | (c >> 18));
    *p++ = (u_char) (0x80 | ((c >> 12) & 0x3f));
    *p++ = (u_char) (0x80 | ((c >> 6) & 0x3f));
    *p++ = (u_char) (0x80 | (c & 0x3f));

    return p;
}


static size_t
ngx_http_civchat_utf8_len(uint32_t c)
{
    if (c < 0x80) {
        return 1;
    }

    if (c < 0x800) {
        return 2;
    }

    if (c < 0x10000) {
        return 3;
    }

    return 4;
}


/*
 * Lower-cases the capitals that site owners actually type in attribute
 * labels; a full Unicode case table is not worth its size here.
 */

static uint32_t
ngx_http_civchat_lowercase(uint32_t c)
{
    if (c >= 'A' && c <= 'Z') {
        return c + 0x20;
    }

    /* Latin-1 Supplement: U+00D7 is the multiplication sign */

    if (c >= 0xc0 && c <= 0xde) {
        return (c == 0xd7) ? c : c + 0x20;
    }

    if (c >= 0x100 && c <= 0x17f) {
        return ngx_http_civchat_latin_ext_a_lowercase(c);
    }

    /* Greek: U+03A2 is unassigned, final sigma has no capital */

    if (c >= 0x391 && c <= 0x3a9) {
        return (c == 0x3a2) ? c : c + 0x20;
    }

    if (c >= 0x410 && c <= 0x42f) {
        return c + 0x20;
    }

    if (c >= 0x400 && c <= 0x40f) {
        return c + 0x50;
    }

    return c;
}


static uint32_t
ngx_http_civchat_latin_ext_a_lowercase(uint32_t c)
{
    /*
     * capital I with dot: its lower-case form is an "i" with a combining
     * dot, which nobody types; a plain "i" is what a label means
     */

    if (c == 0x130) {
        return 'i';
    }

    /* kra is lower-case and has no capital */

    if (c == 0x138) {
        return c;
    }

    /* Y with diaeresis pairs with U+00FF in Latin-1 */

    if (c == 0x178) {
        return 0xff;
    }

    /* L with acute .. N with caron, Z with acute .. Z with caron */

    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) {
        return (c & 1) ? c + 1 : c;
    }

    /*
     * the rest pairs even (capital) with odd (small); the unpaired dotless
     * i, apostrophe n and long s are odd and so stay as they are
     */

    return (c & 1) ? c : c + 1;
}
