
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_attrs.h"


/*
 * Numbers in attribute values: integers and reals from JSON numbers and
 * from the text of strings, and the text of a number stored as a
 * string.
 */


/* the longest numeric string that is parsed as a real */
#define NGX_HTTP_CIVCHAT_REAL_LEN      64

#if (JSON_INTEGER_IS_LONG_LONG)
#define NGX_HTTP_CIVCHAT_JSON_INT_MAX  LLONG_MAX
#define NGX_HTTP_CIVCHAT_JSON_INT_MIN  LLONG_MIN
#else
#define NGX_HTTP_CIVCHAT_JSON_INT_MAX  LONG_MAX
#define NGX_HTTP_CIVCHAT_JSON_INT_MIN  LONG_MIN
#endif


static ngx_int_t ngx_http_civchat_real_integer(double d, json_int_t *n);
static ngx_int_t ngx_http_civchat_parse_integer(u_char *p, size_t len,
    json_int_t *n);
static size_t ngx_http_civchat_real_text(double d, u_char *buf);


/* an integer, an integer-valued real or a string holding an integer */

ngx_int_t
ngx_http_civchat_integer(json_t *value, json_int_t *n)
{
    u_char  *p;
    size_t   len;

    switch (json_typeof(value)) {

    case JSON_INTEGER:
        *n = json_integer_value(value);
        return NGX_OK;

    case JSON_REAL:
        return ngx_http_civchat_real_integer(json_real_value(value), n);

    case JSON_STRING:
        if (ngx_http_civchat_string_data(value, &p, &len) != NGX_OK) {
            return NGX_DECLINED;
        }

        return ngx_http_civchat_parse_integer(p, len, n);

    default:
        return NGX_DECLINED;
    }
}


static ngx_int_t
ngx_http_civchat_real_integer(double d, json_int_t *n)
{
    json_int_t  i;

    /* both bounds are powers of two and so exact; NaN fails the test */

    if (!(d >= (double) NGX_HTTP_CIVCHAT_JSON_INT_MIN
          && d < -(double) NGX_HTTP_CIVCHAT_JSON_INT_MIN))
    {
        return NGX_DECLINED;
    }

    i = (json_int_t) d;

    if ((double) i != d) {
        return NGX_DECLINED;
    }

    *n = i;

    return NGX_OK;
}


/* trimmed, an optional sign, then decimal digits within json_int_t */

static ngx_int_t
ngx_http_civchat_parse_integer(u_char *p, size_t len, json_int_t *n)
{
    u_char              *last;
    ngx_uint_t           negative, digit;
    unsigned long long   v, cutoff;

    ngx_http_civchat_trim(&p, &len);
    last = p + len;

    negative = 0;

    if (p < last && (*p == '+' || *p == '-')) {
        negative = (*p == '-');
        p++;
    }

    if (p == last) {
        return NGX_DECLINED;
    }

    cutoff = (unsigned long long) NGX_HTTP_CIVCHAT_JSON_INT_MAX + negative;

    for (v = 0; p < last; p++) {
        if (!ngx_http_civchat_digit(*p)) {
            return NGX_DECLINED;
        }

        digit = *p - '0';

        if (v > (cutoff - digit) / 10) {
            return NGX_DECLINED;
        }

        v = v * 10 + digit;
    }

    /* the magnitude of the smallest integer does not fit in json_int_t */

    if (negative && v != 0) {
        *n = -(json_int_t) (v - 1) - 1;

    } else {
        *n = (json_int_t) v;
    }

    return NGX_OK;
}


/*
 * A decimal number as JSON writes it, with leniency for a leading '+',
 * ".5" and "5."; strtod() alone would also take "inf", "nan" and hex.
 */

ngx_int_t
ngx_http_civchat_parse_real(u_char *p, size_t len, double *d)
{
    char        *end;
    u_char      *s, *last;
    ngx_uint_t   digits;
    u_char       buf[NGX_HTTP_CIVCHAT_REAL_LEN];

    ngx_http_civchat_trim(&p, &len);

    if (len == 0 || len >= NGX_HTTP_CIVCHAT_REAL_LEN) {
        return NGX_DECLINED;
    }

    s = p;
    last = p + len;
    digits = 0;

    if (*s == '+' || *s == '-') {
        s++;
    }

    while (s < last && ngx_http_civchat_digit(*s)) {
        s++;
        digits++;
    }

    if (s < last && *s == '.') {
        s++;

        while (s < last && ngx_http_civchat_digit(*s)) {
            s++;
            digits++;
        }
    }

    if (digits == 0) {
        return NGX_DECLINED;
    }

    if (s < last && (*s == 'e' || *s == 'E')) {
        s++;

        if (s < last && (*s == '+' || *s == '-')) {
            s++;
        }

        if (s == last) {
            return NGX_DECLINED;
        }

        while (s < last && ngx_http_civchat_digit(*s)) {
            s++;
        }
    }

    if (s != last) {
        return NGX_DECLINED;
    }

    *ngx_cpymem(buf, p, len) = '\0';

    *d = strtod((char *) buf, &end);

    if (end != (char *) buf + len) {
        return NGX_DECLINED;
    }

    /* "1e999" overflows to infinity, and inf - inf is NaN */

    if (*d - *d != 0) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* buf holds NGX_HTTP_CIVCHAT_NUMBER_LEN bytes */

ngx_int_t
ngx_http_civchat_number_text(json_t *value, u_char *buf, size_t *len)
{
    if (json_is_integer(value)) {
        *len = ngx_http_civchat_integer_text(buf, json_integer_value(value))
               - buf;
        return NGX_OK;
    }

    if (json_is_real(value)) {
        *len = ngx_http_civchat_real_text(json_real_value(value), buf);
        return (*len == 0) ? NGX_DECLINED : NGX_OK;
    }

    return NGX_DECLINED;
}


/*
 * ngx_sprintf("%L") negates a negative number as a signed one, which
 * overflows for the smallest one
 */

u_char *
ngx_http_civchat_integer_text(u_char *buf, json_int_t n)
{
    if (n < 0) {
        *buf++ = '-';
        return ngx_sprintf(buf, "%uL", (uint64_t) 0 - (uint64_t) n);
    }

    return ngx_sprintf(buf, "%uL", (uint64_t) n);
}


/*
 * The shortest text that reads back as the same double, so that 49.99 is
 * "49.99" and not "49.990000000000002"; nginx has no such formatter.
 */

static size_t
ngx_http_civchat_real_text(double d, u_char *buf)
{
    int  precision, n;

    n = 0;

    for (precision = 1; precision <= 17; precision++) {
        n = snprintf((char *) buf, NGX_HTTP_CIVCHAT_NUMBER_LEN, "%.*g",
                     precision, d);

        if (n <= 0 || n >= NGX_HTTP_CIVCHAT_NUMBER_LEN) {
            return 0;
        }

        if (strtod((char *) buf, NULL) == d) {
            break;
        }
    }

    return n;
}


json_t *
ngx_http_civchat_to_integer(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    json_int_t  n;

    if (ngx_http_civchat_integer(value, &n) != NGX_OK) {
        *reason = "invalid_value";
        return NULL;
    }

    return ngx_http_civchat_created(json_integer(n), reason);
}
