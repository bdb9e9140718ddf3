
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * A JSON number as its text has it.  jansson holds a real as a double,
 * and "1.0000000000000001" and "1e-400" read as the doubles 1 and 0:
 * right for an amount, wrong for an identity.  The reader (json.c)
 * notes, for each real it makes whose double is a whole number, whether
 * its text is exactly an integer in json_int_t's range and which
 * ("42.0" is 42, "9007199254740993.0" is that integer, which no double
 * holds); ngx_http_civchat_json_integer() answers from the note.
 */


#if (JSON_INTEGER_IS_LONG_LONG)
#define NGX_HTTP_CIVCHAT_JSON_MAX     LLONG_MAX
#else
#define NGX_HTTP_CIVCHAT_JSON_MAX     LONG_MAX
#endif


/*
 * A note is a cleanup of the pool the value was read in, holding a
 * reference to the value so that no other value takes its address while
 * the note lives: a pool the reader is given must be destroyed, never
 * reset.
 */

typedef struct {
    json_t                       *value;
    json_int_t                    n;
    ngx_uint_t                    integer;   /* the text is n */
} ngx_http_civchat_json_note_t;


static ngx_int_t ngx_http_civchat_json_text_integer(u_char *p, u_char *last,
    json_int_t *n);
static void ngx_http_civchat_json_note_cleanup(void *data);


/* a real the reader made from text whose value is a whole number */

ngx_int_t
ngx_http_civchat_json_note(ngx_pool_t *pool, json_t *v, u_char *text,
    size_t len)
{
    ngx_pool_cleanup_t            *cln;
    ngx_http_civchat_json_note_t  *note;

    cln = ngx_pool_cleanup_add(pool, sizeof(ngx_http_civchat_json_note_t));
    if (cln == NULL) {
        return NGX_ERROR;
    }

    note = cln->data;
    note->value = json_incref(v);
    note->integer = (ngx_http_civchat_json_text_integer(text, text + len,
                                                        &note->n)
                     == NGX_OK);

    cln->handler = ngx_http_civchat_json_note_cleanup;

    return NGX_OK;
}


static void
ngx_http_civchat_json_note_cleanup(void *data)
{
    ngx_http_civchat_json_note_t  *note = data;

    json_decref(note->value);
}


/*
 * The integer a JSON number is, exactly, when it is one in json_int_t's
 * range: an integer, or a real read here in this pool whose text is one
 * ("42.0", "4.2e1", "9007199254740993.0").  A real made elsewhere holds
 * one when its value is one a double holds exactly (2^53 at most).
 */

ngx_int_t
ngx_http_civchat_json_integer(ngx_pool_t *pool, json_t *v, json_int_t *n)
{
    double                         d;
    ngx_pool_cleanup_t            *cln;
    ngx_http_civchat_json_note_t  *note;

    if (json_is_integer(v)) {
        *n = json_integer_value(v);
        return NGX_OK;
    }

    if (!json_is_real(v)) {
        return NGX_DECLINED;
    }

    for (cln = pool->cleanup; cln; cln = cln->next) {

        if (cln->handler != ngx_http_civchat_json_note_cleanup) {
            continue;
        }

        note = cln->data;

        if (note->value == v) {
            *n = note->n;
            return note->integer ? NGX_OK : NGX_DECLINED;
        }
    }

    d = json_real_value(v);

    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0)
        || (double) (int64_t) d != d)
    {
        return NGX_DECLINED;
    }

    *n = (json_int_t) d;

    return NGX_OK;
}


/*
 * The text of a number as the reader took it,
 * -?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?, when it is exactly an integer
 * in json_int_t's range: the digits, from the first to the last one
 * that is not 0, times a power of ten that must not be negative.
 */

static ngx_int_t
ngx_http_civchat_json_text_integer(u_char *p, u_char *last, json_int_t *n)
{
    u_char              *s, *point, *end;
    ngx_int_t            digits, first, nonzero, exp, scale, i, e;
    ngx_uint_t           negative, minus;
    unsigned long long   v, cutoff;

    negative = (p < last && *p == '-');
    p += negative;

    point = NULL;

    for (s = p; s < last && ((*s >= '0' && *s <= '9') || *s == '.'); s++) {
        if (*s == '.') {
            point = s;
        }
    }

    end = s;
    exp = 0;

    if (s < last && (*s == 'e' || *s == 'E')) {
        s++;
        minus = (s < last && *s == '-');
        s += (s < last && (*s == '-' || *s == '+'));

        /* the body is shorter than 10^15 digits: a larger one is huge */

        for ( /* void */ ; s < last; s++) {
            if (exp < 1000000000000000) {
                exp = exp * 10 + (*s - '0');
            }
        }

        if (minus) {
            exp = -exp;
        }
    }

    /* the digits as one run, the point taken out: indexes into it */

    digits = 0;
    first = -1;
    nonzero = -1;

    for (s = p; s < end; s++) {
        if (*s == '.') {
            continue;
        }

        if (*s != '0') {
            if (first == -1) {
                first = digits;
            }

            nonzero = digits;
        }

        digits++;
    }

    if (first == -1) {
        *n = 0;
        return NGX_OK;
    }

    /* the value is digits[first .. nonzero] * 10^scale */

    scale = (digits - 1 - nonzero) + exp - (point ? end - point - 1 : 0);

    if (scale < 0 || nonzero - first + 1 + scale > 19) {
        return NGX_DECLINED;
    }

    cutoff = (unsigned long long) NGX_HTTP_CIVCHAT_JSON_MAX + negative;
    v = 0;
    i = 0;

    for (s = p; s < end; s++) {
        if (*s == '.') {
            continue;
        }

        if (i >= first && i <= nonzero) {
            if (v > (cutoff - (*s - '0')) / 10) {
                return NGX_DECLINED;
            }

            v = v * 10 + (*s - '0');
        }

        i++;
    }

    for (e = 0; e < scale; e++) {
        if (v > cutoff / 10) {
            return NGX_DECLINED;
        }

        v *= 10;
    }

    /* the magnitude of the smallest integer does not fit in json_int_t */

    *n = negative ? -(json_int_t) (v - 1) - 1 : (json_int_t) v;

    return NGX_OK;
}
