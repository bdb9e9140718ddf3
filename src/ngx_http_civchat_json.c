
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <math.h>

#include "ngx_http_civchat.h"


/*
 * A JSON reader and a compact JSON writer for jansson values.
 *
 * jansson's json_loadb() reads a byte at a time through a stream and a
 * UTF-8 decoder, about 150 instructions a byte: half the cost of a page
 * view was the parse of its 300-byte body.  This reader scans runs of
 * plain bytes in a tight loop and hands jansson only finished strings
 * and numbers.  It accepts exactly what json_loadb() with
 * JSON_DECODE_ANY accepts (RFC 8259 in UTF-8, no NUL in strings,
 * integers that fit json_int_t, reals that do not overflow, containers
 * nested at most 2048 deep) and builds the same values;
 * ngx_http_civchat_json_write() writes what json_dumpb() with
 * JSON_COMPACT writes, but for reals in as few digits as read back the
 * same.  fuzz/fuzz_json.c holds both to jansson.
 *
 * A real whose double is a whole number is noted in the pool with what
 * its text says (json_integer.c), so that "1.0000000000000001" is not
 * taken for the integer 1: the pool the reader is given is destroyed,
 * never reset.
 */


#define NGX_HTTP_CIVCHAT_JSON_DEPTH   2048    /* jansson's own limit */
#define NGX_HTTP_CIVCHAT_JSON_NUMBER  64      /* longer ones: scratch */



/*
 * What a byte is in a JSON string: 0 must be escaped (controls, '"',
 * '\\'), 1 is printable ASCII, 2 is part of a UTF-8 sequence.
 */

static const u_char  ngx_http_civchat_json_bytes[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};


typedef struct {
    u_char                       *start;
    u_char                       *pos;
    u_char                       *last;
    ngx_pool_t                   *pool;

    /* decoded strings with escapes, never longer than their text */
    u_char                       *scratch;
    u_char                       *scratch_pos;

    ngx_uint_t                    depth;
    const char                   *error;
} ngx_http_civchat_json_parser_t;



static json_t *ngx_http_civchat_json_value(
    ngx_http_civchat_json_parser_t *ps);
static json_t *ngx_http_civchat_json_object(
    ngx_http_civchat_json_parser_t *ps);
static json_t *ngx_http_civchat_json_array(
    ngx_http_civchat_json_parser_t *ps);
static ngx_int_t ngx_http_civchat_json_open(
    ngx_http_civchat_json_parser_t *ps, u_char close);
static ngx_int_t ngx_http_civchat_json_next(
    ngx_http_civchat_json_parser_t *ps, u_char close);
static ngx_int_t ngx_http_civchat_json_string(
    ngx_http_civchat_json_parser_t *ps, ngx_str_t *s);
static u_char *ngx_http_civchat_json_unescape(
    ngx_http_civchat_json_parser_t *ps, u_char *p, u_char **dst);
static ngx_int_t ngx_http_civchat_json_hex4(u_char *p, u_char *last,
    uint32_t *cp);
static size_t ngx_http_civchat_json_utf8(u_char *p, u_char *last);
static json_t *ngx_http_civchat_json_number(
    ngx_http_civchat_json_parser_t *ps);
static json_t *ngx_http_civchat_json_literal(
    ngx_http_civchat_json_parser_t *ps, const char *text, size_t len,
    json_t *value);
static void ngx_http_civchat_json_space(ngx_http_civchat_json_parser_t *ps);
static json_t *ngx_http_civchat_json_fail(ngx_http_civchat_json_parser_t *ps,
    const char *error);

static size_t ngx_http_civchat_json_real(u_char *buf, double d);


json_t *
ngx_http_civchat_json_parse(ngx_pool_t *pool, u_char *data, size_t len,
    ngx_http_civchat_json_error_t *err)
{
    json_t                          *v;
    ngx_http_civchat_json_parser_t   ps;

    ps.start = data;
    ps.pos = data;
    ps.last = data + len;
    ps.pool = pool;
    ps.scratch = NULL;
    ps.scratch_pos = NULL;
    ps.depth = 0;
    ps.error = NULL;

    ngx_http_civchat_json_space(&ps);

    v = ngx_http_civchat_json_value(&ps);

    if (v != NULL) {
        ngx_http_civchat_json_space(&ps);

        if (ps.pos != ps.last) {
            json_decref(v);
            v = ngx_http_civchat_json_fail(&ps, "end of text expected");
        }
    }

    if (v == NULL && err != NULL) {
        err->text = ps.error;
        err->position = ps.pos - ps.start;
    }

    return v;
}


static json_t *
ngx_http_civchat_json_value(ngx_http_civchat_json_parser_t *ps)
{
    ngx_str_t  s;

    if (ps->pos == ps->last) {
        return ngx_http_civchat_json_fail(ps, "unexpected end of text");
    }

    switch (*ps->pos) {

    case '{':
        return ngx_http_civchat_json_object(ps);

    case '[':
        return ngx_http_civchat_json_array(ps);

    case '"':
        if (ngx_http_civchat_json_string(ps, &s) != NGX_OK) {
            return NULL;
        }

        return json_stringn_nocheck((char *) s.data, s.len);

    case 't':
        return ngx_http_civchat_json_literal(ps, "true", 4, json_true());

    case 'f':
        return ngx_http_civchat_json_literal(ps, "false", 5, json_false());

    case 'n':
        return ngx_http_civchat_json_literal(ps, "null", 4, json_null());

    default:
        return ngx_http_civchat_json_number(ps);
    }
}


static json_t *
ngx_http_civchat_json_object(ngx_http_civchat_json_parser_t *ps)
{
    json_t     *object, *value;
    ngx_int_t   rc;
    ngx_str_t   key;

    object = json_object();
    if (object == NULL) {
        return ngx_http_civchat_json_fail(ps, "out of memory");
    }

    rc = ngx_http_civchat_json_open(ps, '}');

    while (rc == NGX_AGAIN) {
        if (ps->pos == ps->last || *ps->pos != '"') {
            (void) ngx_http_civchat_json_fail(ps, "a string key expected");
            break;
        }

        if (ngx_http_civchat_json_string(ps, &key) != NGX_OK) {
            break;
        }

        ngx_http_civchat_json_space(ps);

        if (ps->pos == ps->last || *ps->pos != ':') {
            (void) ngx_http_civchat_json_fail(ps, "':' expected");
            break;
        }

        ps->pos++;
        ngx_http_civchat_json_space(ps);

        value = ngx_http_civchat_json_value(ps);
        if (value == NULL) {
            break;
        }

        /* a repeated key: the last one wins, as in jansson */
        if (json_object_setn_new_nocheck(object, (char *) key.data, key.len,
                                         value)
            != 0)
        {
            (void) ngx_http_civchat_json_fail(ps, "out of memory");
            break;
        }

        rc = ngx_http_civchat_json_next(ps, '}');
    }

    if (rc == NGX_OK) {
        return object;
    }

    json_decref(object);

    return NULL;
}


static json_t *
ngx_http_civchat_json_array(ngx_http_civchat_json_parser_t *ps)
{
    json_t     *array, *value;
    ngx_int_t   rc;

    array = json_array();
    if (array == NULL) {
        return ngx_http_civchat_json_fail(ps, "out of memory");
    }

    rc = ngx_http_civchat_json_open(ps, ']');

    while (rc == NGX_AGAIN) {
        value = ngx_http_civchat_json_value(ps);
        if (value == NULL) {
            break;
        }

        if (json_array_append_new(array, value) != 0) {
            (void) ngx_http_civchat_json_fail(ps, "out of memory");
            break;
        }

        rc = ngx_http_civchat_json_next(ps, ']');
    }

    if (rc == NGX_OK) {
        return array;
    }

    json_decref(array);

    return NULL;
}


/*
 * Into an object or array at ps->pos: NGX_AGAIN when a member follows,
 * NGX_OK when it is empty and closed, NGX_ERROR when nested too deep.
 */

static ngx_int_t
ngx_http_civchat_json_open(ngx_http_civchat_json_parser_t *ps, u_char close)
{
    if (++ps->depth > NGX_HTTP_CIVCHAT_JSON_DEPTH) {
        (void) ngx_http_civchat_json_fail(ps, "nested too deep");
        return NGX_ERROR;
    }

    ps->pos++;    /* '{' or '[' */
    ngx_http_civchat_json_space(ps);

    if (ps->pos < ps->last && *ps->pos == close) {
        ps->pos++;
        ps->depth--;
        return NGX_OK;
    }

    return NGX_AGAIN;
}


/*
 * After a member or an element: NGX_AGAIN after a ',', NGX_OK after the
 * closing byte, NGX_ERROR on anything else.
 */

static ngx_int_t
ngx_http_civchat_json_next(ngx_http_civchat_json_parser_t *ps, u_char close)
{
    ngx_http_civchat_json_space(ps);

    if (ps->pos < ps->last && *ps->pos == ',') {
        ps->pos++;
        ngx_http_civchat_json_space(ps);
        return NGX_AGAIN;
    }

    if (ps->pos < ps->last && *ps->pos == close) {
        ps->pos++;
        ps->depth--;
        return NGX_OK;
    }

    (void) ngx_http_civchat_json_fail(ps, (close == '}')
                                          ? "',' or '}' expected"
                                          : "',' or ']' expected");
    return NGX_ERROR;
}


/*
 * A string at ps->pos (the opening quote).  Without escapes the result
 * points into the text; with them, into the scratch area.
 */

static ngx_int_t
ngx_http_civchat_json_string(ngx_http_civchat_json_parser_t *ps,
    ngx_str_t *s)
{
    u_char  c, *p, *start, *last, *dst;
    size_t  n;

    start = ps->pos + 1;
    last = ps->last;
    dst = NULL;

    for (p = start; /* void */; /* void */) {

        /* the common case: printable ASCII */

        if (dst == NULL) {
            while (p < last && ngx_http_civchat_json_bytes[*p] == 1) {
                p++;
            }

        } else {
            while (p < last && ngx_http_civchat_json_bytes[*p] == 1) {
                *dst++ = *p++;
            }
        }

        if (p == last) {
            ps->pos = p;
            (void) ngx_http_civchat_json_fail(ps, "unterminated string");
            return NGX_ERROR;
        }

        c = *p;

        if (c == '"') {
            break;
        }

        if (c == '\\') {
            if (dst == NULL) {
                if (ps->scratch == NULL) {
                    ps->scratch = ngx_pnalloc(ps->pool, last - ps->start);
                    if (ps->scratch == NULL) {
                        (void) ngx_http_civchat_json_fail(ps,
                                                          "out of memory");
                        return NGX_ERROR;
                    }

                    ps->scratch_pos = ps->scratch;
                }

                dst = ngx_cpymem(ps->scratch_pos, start, p - start);
            }

            p = ngx_http_civchat_json_unescape(ps, p, &dst);
            if (p == NULL) {
                return NGX_ERROR;
            }

            continue;
        }

        if (c < 0x20) {
            ps->pos = p;
            (void) ngx_http_civchat_json_fail(ps,
                                              "control character in a string");
            return NGX_ERROR;
        }

        n = ngx_http_civchat_json_utf8(p, last);
        if (n == 0) {
            ps->pos = p;
            (void) ngx_http_civchat_json_fail(ps, "invalid UTF-8");
            return NGX_ERROR;
        }

        if (dst) {
            dst = ngx_cpymem(dst, p, n);
        }

        p += n;
    }

    if (dst == NULL) {
        s->data = start;
        s->len = p - start;

    } else {
        s->data = ps->scratch_pos;
        s->len = dst - ps->scratch_pos;
        ps->scratch_pos = dst;
    }

    ps->pos = p + 1;

    return NGX_OK;
}


/* one escape at p (the backslash), decoded to *dst; the next byte */

static u_char *
ngx_http_civchat_json_unescape(ngx_http_civchat_json_parser_t *ps, u_char *p,
    u_char **dst)
{
    u_char    *d;
    uint32_t   cp, low;

    d = *dst;
    ps->pos = p;

    if (p + 1 == ps->last) {
        (void) ngx_http_civchat_json_fail(ps, "unterminated string");
        return NULL;
    }

    switch (p[1]) {

    case '"':
    case '\\':
    case '/':
        *d++ = p[1];
        break;

    case 'b':
        *d++ = '\b';
        break;

    case 'f':
        *d++ = '\f';
        break;

    case 'n':
        *d++ = '\n';
        break;

    case 'r':
        *d++ = '\r';
        break;

    case 't':
        *d++ = '\t';
        break;

    case 'u':
        if (ngx_http_civchat_json_hex4(p + 2, ps->last, &cp) != NGX_OK) {
            (void) ngx_http_civchat_json_fail(ps, "invalid \\u escape");
            return NULL;
        }

        p += 4;

        if (cp >= 0xdc00 && cp <= 0xdfff) {
            (void) ngx_http_civchat_json_fail(ps, "lone low surrogate");
            return NULL;
        }

        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (ps->last - p < 4 || p[2] != '\\' || p[3] != 'u'
                || ngx_http_civchat_json_hex4(p + 4, ps->last, &low)
                   != NGX_OK
                || low < 0xdc00 || low > 0xdfff)
            {
                (void) ngx_http_civchat_json_fail(ps, "lone high surrogate");
                return NULL;
            }

            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            p += 6;
        }

        if (cp == 0) {
            (void) ngx_http_civchat_json_fail(ps, "\\u0000 in a string");
            return NULL;
        }

        if (cp < 0x80) {
            *d++ = (u_char) cp;

        } else if (cp < 0x800) {
            *d++ = (u_char) (0xc0 | (cp >> 6));
            *d++ = (u_char) (0x80 | (cp & 0x3f));

        } else if (cp < 0x10000) {
            *d++ = (u_char) (0xe0 | (cp >> 12));
            *d++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
            *d++ = (u_char) (0x80 | (cp & 0x3f));

        } else {
            *d++ = (u_char) (0xf0 | (cp >> 18));
            *d++ = (u_char) (0x80 | ((cp >> 12) & 0x3f));
            *d++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
            *d++ = (u_char) (0x80 | (cp & 0x3f));
        }

        break;

    default:
        (void) ngx_http_civchat_json_fail(ps, "invalid escape");
        return NULL;
    }

    *dst = d;

    return p + 2;
}


static ngx_int_t
ngx_http_civchat_json_hex4(u_char *p, u_char *last, uint32_t *cp)
{
    u_char      c;
    uint32_t    v;
    ngx_uint_t  i;

    if (last - p < 4) {
        return NGX_ERROR;
    }

    v = 0;

    for (i = 0; i < 4; i++) {
        c = p[i];

        if (c >= '0' && c <= '9') {
            v = (v << 4) | (c - '0');

        } else {
            c |= 0x20;

            if (c < 'a' || c > 'f') {
                return NGX_ERROR;
            }

            v = (v << 4) | (c - 'a' + 10);
        }
    }

    *cp = v;

    return NGX_OK;
}


/*
 * The length of the well-formed UTF-8 sequence at p (its first byte is
 * 0x80 or more), or 0: no overlong forms, no surrogates, nothing above
 * U+10FFFF.
 */

static size_t
ngx_http_civchat_json_utf8(u_char *p, u_char *last)
{
    u_char    c;
    size_t    n, i;
    uint32_t  cp, min;

    c = p[0];

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
        min = 0x80;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
        min = 0x800;

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
        min = 0x10000;

    } else {
        return 0;
    }

    if ((size_t) (last - p) < n) {
        return 0;
    }

    for (i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }

        cp = (cp << 6) | (p[i] & 0x3f);
    }

    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }

    return n;
}


/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */

static json_t *
ngx_http_civchat_json_number(ngx_http_civchat_json_parser_t *ps)
{
    u_char      *p, *last, *text, buf[NGX_HTTP_CIVCHAT_JSON_NUMBER];
    char        *end;
    double       d;
    size_t       len;
    json_t      *v;
    ngx_uint_t   real;
    json_int_t   n;

    p = ps->pos;
    last = ps->last;
    real = 0;

    if (p < last && *p == '-') {
        p++;
    }

    if (p == last || *p < '0' || *p > '9') {
        return ngx_http_civchat_json_fail(ps, "unexpected character");
    }

    if (*p++ != '0') {
        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < last && *p == '.') {
        p++;

        if (p == last || *p < '0' || *p > '9') {
            ps->pos = p;
            return ngx_http_civchat_json_fail(ps, "invalid number");
        }

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }

        real = 1;
    }

    if (p < last && (*p == 'e' || *p == 'E')) {
        p++;

        if (p < last && (*p == '+' || *p == '-')) {
            p++;
        }

        if (p == last || *p < '0' || *p > '9') {
            ps->pos = p;
            return ngx_http_civchat_json_fail(ps, "invalid number");
        }

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }

        real = 1;
    }

    /* strtoll() and strtod() want a terminated string */

    len = p - ps->pos;

    if (len < sizeof(buf)) {
        text = buf;

    } else {
        text = ngx_pnalloc(ps->pool, len + 1);
        if (text == NULL) {
            return ngx_http_civchat_json_fail(ps, "out of memory");
        }
    }

    ngx_memcpy(text, ps->pos, len);
    text[len] = '\0';

    errno = 0;

    if (real) {
        d = strtod((char *) text, &end);

        if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL)) {
            return ngx_http_civchat_json_fail(ps, "real number overflow");
        }

        v = json_real(d);

        /*
         * a whole number (every double from 2^63 up is one): what its
         * text says is noted
         */

        if (v != NULL
            && (d <= -9223372036854775808.0 || d >= 9223372036854775808.0
                || (double) (int64_t) d == d)
            && ngx_http_civchat_json_note(ps->pool, v, text, len) != NGX_OK)
        {
            json_decref(v);
            return ngx_http_civchat_json_fail(ps, "out of memory");
        }

        ps->pos = p;

        return v;
    }

#if (JSON_INTEGER_IS_LONG_LONG)
    n = strtoll((char *) text, &end, 10);
#else
    n = strtol((char *) text, &end, 10);
#endif

    if (errno == ERANGE) {
        return ngx_http_civchat_json_fail(ps, "integer out of range");
    }

    ps->pos = p;

    return json_integer(n);
}


static json_t *
ngx_http_civchat_json_literal(ngx_http_civchat_json_parser_t *ps,
    const char *text, size_t len, json_t *value)
{
    if ((size_t) (ps->last - ps->pos) < len
        || ngx_memcmp(ps->pos, text, len) != 0)
    {
        return ngx_http_civchat_json_fail(ps, "unexpected character");
    }

    ps->pos += len;

    return value;
}


static void
ngx_http_civchat_json_space(ngx_http_civchat_json_parser_t *ps)
{
    u_char  *p;

    for (p = ps->pos; p < ps->last; p++) {
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
            break;
        }
    }

    ps->pos = p;
}


static json_t *
ngx_http_civchat_json_fail(ngx_http_civchat_json_parser_t *ps,
    const char *error)
{
    if (ps->error == NULL) {
        ps->error = error;
    }

    return NULL;
}


/*
 * The writer: ngx_http_civchat_json_size() bytes, then
 * ngx_http_civchat_json_write() them.  The text is json_dumpb()'s with
 * JSON_COMPACT: keys in insertion order, '/' and non-ASCII as they are;
 * only reals are shorter (ngx_http_civchat_json_real()).
 */

size_t
ngx_http_civchat_json_size(json_t *v)
{
    u_char       buf[NGX_HTTP_CIVCHAT_JSON_NUMBER];
    size_t       size, key_len, i;
    json_t      *item;
    const char  *key;

    switch (json_typeof(v)) {

    case JSON_OBJECT:
        size = 1;

        json_object_keylen_foreach(v, key, key_len, item) {
            size += ngx_http_civchat_json_quoted_len((u_char *) key, key_len)
                    + ngx_http_civchat_json_size(item) + 2;
        }

        return (size > 1) ? size : 2;

    case JSON_ARRAY:
        size = 1;

        for (i = 0; i < json_array_size(v); i++) {
            size += ngx_http_civchat_json_size(json_array_get(v, i)) + 1;
        }

        return (size > 1) ? size : 2;

    case JSON_STRING:
        return ngx_http_civchat_json_quoted_len(
                   (u_char *) json_string_value(v), json_string_length(v));

    case JSON_INTEGER:
        return ngx_sprintf(buf, "%L", (int64_t) json_integer_value(v)) - buf;

    case JSON_REAL:
        return ngx_http_civchat_json_real(buf, json_real_value(v));

    case JSON_TRUE:
        return sizeof("true") - 1;

    case JSON_FALSE:
        return sizeof("false") - 1;

    default: /* JSON_NULL */
        return sizeof("null") - 1;
    }
}


u_char *
ngx_http_civchat_json_write(u_char *p, json_t *v)
{
    u_char       buf[NGX_HTTP_CIVCHAT_JSON_NUMBER];
    size_t       key_len, i, n;
    json_t      *item;
    const char  *key;

    switch (json_typeof(v)) {

    case JSON_OBJECT:
        *p++ = '{';

        json_object_keylen_foreach(v, key, key_len, item) {
            p = ngx_http_civchat_json_quote(p, (u_char *) key,
                                                   key_len);
            *p++ = ':';
            p = ngx_http_civchat_json_write(p, item);
            *p++ = ',';
        }

        if (p[-1] == ',') {
            p--;
        }

        *p++ = '}';

        return p;

    case JSON_ARRAY:
        *p++ = '[';
        n = json_array_size(v);

        for (i = 0; i < n; i++) {
            if (i) {
                *p++ = ',';
            }

            p = ngx_http_civchat_json_write(p, json_array_get(v, i));
        }

        *p++ = ']';

        return p;

    case JSON_STRING:
        return ngx_http_civchat_json_quote(p,
                   (u_char *) json_string_value(v), json_string_length(v));

    case JSON_INTEGER:
        return ngx_sprintf(p, "%L", (int64_t) json_integer_value(v));

    case JSON_REAL:
        n = ngx_http_civchat_json_real(buf, json_real_value(v));
        return ngx_cpymem(p, buf, n);

    case JSON_TRUE:
        return ngx_cpymem(p, "true", sizeof("true") - 1);

    case JSON_FALSE:
        return ngx_cpymem(p, "false", sizeof("false") - 1);

    default: /* JSON_NULL */
        return ngx_cpymem(p, "null", sizeof("null") - 1);
    }
}


/* the value as compact JSON text in the pool, or NULL */

ngx_int_t
ngx_http_civchat_json_text(ngx_pool_t *pool, json_t *v, ngx_str_t *text)
{
    size_t  len;

    len = ngx_http_civchat_json_size(v);

    text->data = ngx_pnalloc(pool, len);
    if (text->data == NULL) {
        return NGX_ERROR;
    }

    text->len = ngx_http_civchat_json_write(text->data, v) - text->data;

    return NGX_OK;
}


/*
 * Strings as jansson writes them: '"', '\\' and the control characters
 * escaped (\b \f \n \r \t, the others as \u00XX), the rest verbatim.
 */

size_t
ngx_http_civchat_json_quoted_len(const u_char *p, size_t len)
{
    u_char        c;
    size_t        size;
    const u_char  *last;

    size = len + 2;

    for (last = p + len; p < last; p++) {
        c = *p;

        if (ngx_http_civchat_json_bytes[c]) {
            continue;
        }

        switch (c) {
        case '"':
        case '\\':
        case '\b':
        case '\f':
        case '\n':
        case '\r':
        case '\t':
            size++;
            break;

        default:
            size += 5;
        }
    }

    return size;
}


u_char *
ngx_http_civchat_json_quote(u_char *dst, const u_char *p, size_t len)
{
    u_char         c;
    const u_char  *last, *run;

    static u_char  hex[] = "0123456789ABCDEF";

    *dst++ = '"';

    for (last = p + len; p < last; /* void */) {

        /* copy a run of bytes that need no escape at once */
        for (run = p; p < last && ngx_http_civchat_json_bytes[*p]; p++) {
            /* void */
        }

        dst = ngx_cpymem(dst, run, p - run);

        if (p == last) {
            break;
        }

        c = *p++;
        *dst++ = '\\';

        switch (c) {
        case '"':
        case '\\':
            *dst++ = c;
            break;

        case '\b':
            *dst++ = 'b';
            break;

        case '\f':
            *dst++ = 'f';
            break;

        case '\n':
            *dst++ = 'n';
            break;

        case '\r':
            *dst++ = 'r';
            break;

        case '\t':
            *dst++ = 't';
            break;

        default:
            *dst++ = 'u';
            *dst++ = '0';
            *dst++ = '0';
            *dst++ = hex[c >> 4];
            *dst++ = hex[c & 0xf];
        }
    }

    *dst++ = '"';

    return dst;
}


/*
 * A real in the fewest digits that read back as the same double (15, 16
 * or 17: "49.99", where jansson writes "49.990000000000002"), always
 * with a '.' or an 'e' so that it stays a real, the exponent without
 * '+' or leading zeros as jansson has it; into buf of
 * NGX_HTTP_CIVCHAT_JSON_NUMBER bytes (snprintf() adds a '\0').
 */

static size_t
ngx_http_civchat_json_real(u_char *buf, double d)
{
    u_char      *e, *digits, *p;
    size_t       len;
    ngx_uint_t   precision;

    for (precision = 15; /* void */; precision++) {
        len = snprintf((char *) buf, NGX_HTTP_CIVCHAT_JSON_NUMBER, "%.*g",
                       (int) precision, d);

        if (precision == 17 || strtod((char *) buf, NULL) == d) {
            break;
        }
    }

    e = (u_char *) ngx_strlchr(buf, buf + len, 'e');

    if (e == NULL) {
        if (ngx_strlchr(buf, buf + len, '.') == NULL) {
            buf[len++] = '.';
            buf[len++] = '0';
        }

        return len;
    }

    /* "1e+20" -> "1e20", "1e-05" -> "1e-5" */

    p = e + 1;

    if (*p == '-') {
        p++;
    }

    digits = p;

    while (*digits == '+' || *digits == '0') {
        digits++;
    }

    if (digits == buf + len) {
        digits--;    /* keep one zero */
    }

    ngx_memmove(p, digits, buf + len - digits);

    return len - (digits - p);
}
