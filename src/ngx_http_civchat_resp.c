
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * RESP2, the Redis protocol's replies, read from bytes a server (or
 * anyone between it and nginx) sent: a type byte, a line ending in
 * CRLF, and for a bulk string its bytes and CRLF.  Everything is
 * bounded (a line, a string, the elements of a reply, the nesting) and
 * no function recurses: scan() counts the elements still due at each
 * level of nesting, build() keeps a stack of the arrays being filled.
 * Integers are read strictly (no sign but a leading '-', no leading
 * zeros, no overflow), so that a reply has one spelling.
 */


#define NGX_HTTP_CIVCHAT_REDIS_INT64_MAX  0x7fffffffffffffffULL


static ngx_int_t ngx_http_civchat_redis_line(u_char *p, u_char *last,
    u_char **cr);
static ngx_int_t ngx_http_civchat_redis_int(u_char *p, u_char *last,
    int64_t *value);


void
ngx_http_civchat_redis_scan_init(ngx_http_civchat_redis_scan_t *s)
{
    s->pos = 0;
    s->depth = 0;
    s->elts = 0;
    s->left[0] = 1;
}


ngx_int_t
ngx_http_civchat_redis_scan(ngx_http_civchat_redis_scan_t *s, u_char *start,
    u_char *last)
{
    u_char     *p, *cr;
    int64_t     n;
    ngx_int_t   rc;

    for ( ;; ) {
        p = start + s->pos;

        if (p >= last) {
            return NGX_AGAIN;
        }

        rc = ngx_http_civchat_redis_line(p + 1, last, &cr);
        if (rc != NGX_OK) {
            return rc;
        }

        switch (*p) {

        case '+':
        case '-':
            s->pos = cr + 2 - start;
            break;

        case ':':
            if (ngx_http_civchat_redis_int(p + 1, cr, &n) != NGX_OK) {
                return NGX_ERROR;
            }

            s->pos = cr + 2 - start;
            break;

        case '$':
            if (ngx_http_civchat_redis_int(p + 1, cr, &n) != NGX_OK
                || n < -1 || n > NGX_HTTP_CIVCHAT_REDIS_BULK)
            {
                return NGX_ERROR;
            }

            if (n == -1) {
                s->pos = cr + 2 - start;
                break;
            }

            /* the string and its CRLF */

            if (last - (cr + 2) < n + 2) {
                return NGX_AGAIN;
            }

            if (cr[2 + n] != CR || cr[3 + n] != LF) {
                return NGX_ERROR;
            }

            s->pos = cr + 4 + n - start;
            break;

        case '*':
            if (ngx_http_civchat_redis_int(p + 1, cr, &n) != NGX_OK
                || n < -1 || n > NGX_HTTP_CIVCHAT_REDIS_ELTS)
            {
                return NGX_ERROR;
            }

            s->pos = cr + 2 - start;

            if (n <= 0) {
                break;
            }

            s->elts += n;

            if (s->elts > NGX_HTTP_CIVCHAT_REDIS_ELTS
                || s->depth == NGX_HTTP_CIVCHAT_REDIS_DEPTH)
            {
                return NGX_ERROR;
            }

            /* the array is an element of its parent; its own follow */
            s->left[s->depth]--;
            s->left[++s->depth] = n;

            continue;

        default:
            return NGX_ERROR;
        }

        /* one element done; the arrays it completes are done too */

        s->left[s->depth]--;

        while (s->depth > 0 && s->left[s->depth] == 0) {
            s->depth--;
        }

        if (s->depth == 0 && s->left[0] == 0) {
            return NGX_OK;
        }
    }
}


/* the CR of the line starting at p: NGX_AGAIN when it is not all here */

static ngx_int_t
ngx_http_civchat_redis_line(u_char *p, u_char *last, u_char **cr)
{
    u_char  *end, *q;

    end = last;

    if (end - p > NGX_HTTP_CIVCHAT_REDIS_LINE + 1) {
        end = p + NGX_HTTP_CIVCHAT_REDIS_LINE + 1;
    }

    q = ngx_strlchr(p, end, CR);

    if (q == NULL) {
        return (end < last) ? NGX_ERROR : NGX_AGAIN;
    }

    if (q + 1 == last) {
        return NGX_AGAIN;
    }

    if (q[1] != LF) {
        return NGX_ERROR;
    }

    *cr = q;

    return NGX_OK;
}


/* -?[1-9][0-9]*|0 in [p, last), within int64_t */

static ngx_int_t
ngx_http_civchat_redis_int(u_char *p, u_char *last, int64_t *value)
{
    uint64_t    n, max;
    ngx_uint_t  neg;

    neg = 0;

    if (p < last && *p == '-') {
        neg = 1;
        p++;
    }

    if (p == last || (*p == '0' && (last - p > 1 || neg))) {
        return NGX_ERROR;
    }

    max = NGX_HTTP_CIVCHAT_REDIS_INT64_MAX + neg;
    n = 0;

    for ( /* void */ ; p < last; p++) {
        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        if (n > (max - (*p - '0')) / 10) {
            return NGX_ERROR;
        }

        n = n * 10 + (*p - '0');
    }

    if (neg) {
        *value = (n == NGX_HTTP_CIVCHAT_REDIS_INT64_MAX + 1)
                 ? (int64_t) -NGX_HTTP_CIVCHAT_REDIS_INT64_MAX - 1
                 : -(int64_t) n;

    } else {
        *value = (int64_t) n;
    }

    return NGX_OK;
}


/*
 * The tree of a reply scan() accepted.  Arrays being filled are kept on
 * a stack with the index of their next element.
 */

ngx_http_civchat_redis_reply_t *
ngx_http_civchat_redis_build(ngx_pool_t *pool, u_char *start, size_t len,
    ngx_uint_t copy)
{
    u_char                          *p, *last, *cr, *s;
    int64_t                          n;
    ngx_uint_t                       sp;
    ngx_http_civchat_redis_reply_t  *root, *r;

    struct {
        ngx_http_civchat_redis_reply_t  *array;
        ngx_uint_t                       next;
    } stack[NGX_HTTP_CIVCHAT_REDIS_DEPTH + 1];

    root = ngx_pcalloc(pool, sizeof(ngx_http_civchat_redis_reply_t));
    if (root == NULL) {
        return NULL;
    }

    p = start;
    last = start + len;
    r = root;
    sp = 0;

    for ( ;; ) {
        if (p >= last
            || ngx_http_civchat_redis_line(p + 1, last, &cr) != NGX_OK)
        {
            return NULL;
        }

        switch (*p) {

        case '+':
        case '-':
            r->type = (*p == '+') ? NGX_HTTP_CIVCHAT_REDIS_STATUS
                                  : NGX_HTTP_CIVCHAT_REDIS_ERROR;
            r->str.data = p + 1;
            r->str.len = cr - (p + 1);
            p = cr + 2;
            break;

        case ':':
            if (ngx_http_civchat_redis_int(p + 1, cr, &n) != NGX_OK) {
                return NULL;
            }

            r->type = NGX_HTTP_CIVCHAT_REDIS_INTEGER;
            r->integer = n;
            p = cr + 2;
            break;

        case '$':
            if (ngx_http_civchat_redis_int(p + 1, cr, &n) != NGX_OK
                || n < -1 || n > last - (cr + 2))
            {
                return NULL;
            }

            if (n == -1) {
                r->type = NGX_HTTP_CIVCHAT_REDIS_NIL;
                p = cr + 2;
                break;
            }

            r->type = NGX_HTTP_CIVCHAT_REDIS_STRING;
            r->str.data = cr + 2;
            r->str.len = n;
            p = cr + 4 + n;
            break;

        case '*':
            if (ngx_http_civchat_redis_int(p + 1, cr, &n) != NGX_OK
                || n < -1 || n > NGX_HTTP_CIVCHAT_REDIS_ELTS)
            {
                return NULL;
            }

            p = cr + 2;

            if (n == -1) {
                r->type = NGX_HTTP_CIVCHAT_REDIS_NIL;
                break;
            }

            r->type = NGX_HTTP_CIVCHAT_REDIS_ARRAY;

            if (n == 0) {
                break;
            }

            if (sp == NGX_HTTP_CIVCHAT_REDIS_DEPTH) {
                return NULL;
            }

            r->elts = ngx_pcalloc(pool,
                              n * sizeof(ngx_http_civchat_redis_reply_t));
            if (r->elts == NULL) {
                return NULL;
            }

            r->nelts = n;

            stack[sp].array = r;
            stack[sp].next = 0;
            sp++;

            break;

        default:
            return NULL;
        }

        if (copy && r->str.len) {
            s = ngx_pnalloc(pool, r->str.len);
            if (s == NULL) {
                return NULL;
            }

            ngx_memcpy(s, r->str.data, r->str.len);
            r->str.data = s;
        }

        /* the next element to fill: of the innermost unfinished array */

        while (sp > 0 && stack[sp - 1].next == stack[sp - 1].array->nelts) {
            sp--;
        }

        if (sp == 0) {
            return root;
        }

        r = &stack[sp - 1].array->elts[stack[sp - 1].next++];
    }
}


/*
 * The slot of a key, as Redis Cluster has it: CRC16 (XMODEM: polynomial
 * 0x1021, no reflection, initial value 0) of the key modulo 16384, or
 * of what is between the first "{" and the first "}" after it, if that
 * is not empty.
 */

ngx_uint_t
ngx_http_civchat_redis_keyslot(u_char *key, size_t len)
{
    u_char      *open, *close;
    uint16_t     crc;
    ngx_uint_t   i, bit;

    open = ngx_strlchr(key, key + len, '{');

    if (open != NULL) {
        close = ngx_strlchr(open + 1, key + len, '}');

        if (close != NULL && close > open + 1) {
            key = open + 1;
            len = close - key;
        }
    }

    crc = 0;

    for (i = 0; i < len; i++) {
        crc ^= (uint16_t) (key[i] << 8);

        for (bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000) ? (uint16_t) ((crc << 1) ^ 0x1021)
                                 : (uint16_t) (crc << 1);
        }
    }

    return crc & 16383;
}
