
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_attrs.h"


/*
 * The standard attributes, named alike on every site: name, first_name,
 * last_name, email, phone_number, gender, status and score, each with a
 * conversion of its own that comes before any declared type (attrs.c
 * asks ngx_http_civchat_standard_find() first).
 */


/* "first_name" and "last_name" are counted in characters, not bytes */
#define NGX_HTTP_CIVCHAT_NAME_CHARS    40

/* "00" and 15 digits, before "00" becomes '+' */
#define NGX_HTTP_CIVCHAT_PHONE_LEN     17
#define NGX_HTTP_CIVCHAT_PHONE_MIN     8
#define NGX_HTTP_CIVCHAT_PHONE_MAX     15


static json_t *ngx_http_civchat_std_name(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_std_part_name(
    ngx_http_civchat_loc_conf_t *lcf, json_t *value, const char **reason);
static json_t *ngx_http_civchat_std_email(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_std_phone(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_std_gender(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_std_status(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_std_score(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);

static size_t ngx_http_civchat_chars(u_char *p, size_t len);
static ngx_int_t ngx_http_civchat_enum(json_t *value,
    const ngx_http_civchat_word_t *words, ngx_int_t max);


static const ngx_http_civchat_standard_t  ngx_http_civchat_standard[] = {
    { ngx_string("name"), ngx_http_civchat_std_name },
    { ngx_string("first_name"), ngx_http_civchat_std_part_name },
    { ngx_string("last_name"), ngx_http_civchat_std_part_name },
    { ngx_string("email"), ngx_http_civchat_std_email },
    { ngx_string("phone_number"), ngx_http_civchat_std_phone },
    { ngx_string("gender"), ngx_http_civchat_std_gender },
    { ngx_string("status"), ngx_http_civchat_std_status },
    { ngx_string("score"), ngx_http_civchat_std_score },
    { ngx_null_string, NULL }
};


static const ngx_http_civchat_word_t  ngx_http_civchat_gender_words[] = {
    { ngx_string("unknown"), 1 },
    { ngx_string("u"), 1 },
    { ngx_string("male"), 2 },
    { ngx_string("m"), 2 },
    { ngx_string("female"), 3 },
    { ngx_string("f"), 3 },
    { ngx_null_string, 0 }
};


static const ngx_http_civchat_word_t  ngx_http_civchat_status_words[] = {
    { ngx_string("visitor"), 1 },
    { ngx_string("user"), 2 },
    { ngx_null_string, 0 }
};


/*
 * Validates and lower-cases an address into buf, which holds
 * NGX_HTTP_CIVCHAT_EMAIL_MAX bytes.  NGX_DECLINED with *reason NULL means
 * that no address was given.
 */

ngx_int_t
ngx_http_civchat_check_email(json_t *value, u_char *buf, size_t *len,
    const char **reason)
{
    u_char      *p, *at, *last, *s;
    size_t       n, i;
    ngx_uint_t   ats;

    *reason = NULL;

    if (value == NULL || json_is_null(value)) {
        return NGX_DECLINED;
    }

    if (!json_is_string(value)) {
        *reason = "invalid_type";
        return NGX_DECLINED;
    }

    if (ngx_http_civchat_string_data(value, &p, &n) != NGX_OK) {
        goto invalid;
    }

    ngx_http_civchat_trim(&p, &n);

    if (n == 0) {
        return NGX_DECLINED;
    }

    if (n > NGX_HTTP_CIVCHAT_EMAIL_MAX || ngx_http_civchat_has_control(p, n)) {
        goto invalid;
    }

    ats = 0;
    at = NULL;

    for (i = 0; i < n; i++) {
        if (p[i] == ' ') {
            goto invalid;
        }

        if (p[i] == '@') {
            ats++;
            at = buf + i;
        }

        buf[i] = ngx_tolower(p[i]);
    }

    if (ats != 1 || at == buf) {
        goto invalid;
    }

    /* the domain: dotted, without empty labels */

    s = at + 1;
    last = buf + n;

    if (s == last || *s == '.' || last[-1] == '.'
        || ngx_strlchr(s, last, '.') == NULL)
    {
        goto invalid;
    }

    for ( /* void */ ; s + 1 < last; s++) {
        if (s[0] == '.' && s[1] == '.') {
            goto invalid;
        }
    }

    *len = n;

    return NGX_OK;

invalid:

    *reason = "invalid_email";
    return NGX_DECLINED;
}


static json_t *
ngx_http_civchat_std_name(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    return ngx_http_civchat_person_name(lcf, value, 0, reason);
}


static json_t *
ngx_http_civchat_std_part_name(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason)
{
    return ngx_http_civchat_person_name(lcf, value,
                                        NGX_HTTP_CIVCHAT_NAME_CHARS, reason);
}


/* max_chars: the limit in characters, 0 for none beyond the byte limit */

json_t *
ngx_http_civchat_person_name(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    size_t max_chars, const char **reason)
{
    u_char  *p;
    size_t   len;

    if (!json_is_string(value)) {
        *reason = "invalid_type";
        return NULL;
    }

    if (ngx_http_civchat_string_data(value, &p, &len) != NGX_OK) {
        *reason = "invalid_value";
        return NULL;
    }

    ngx_http_civchat_trim(&p, &len);

    if (len == 0) {
        *reason = "invalid_value";
        return NULL;
    }

    if (max_chars && ngx_http_civchat_chars(p, len) > max_chars) {
        *reason = "too_long";
        return NULL;
    }

    return ngx_http_civchat_new_string(lcf, p, len, reason);
}


static json_t *
ngx_http_civchat_std_email(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    size_t  len;
    u_char  buf[NGX_HTTP_CIVCHAT_EMAIL_MAX];

    if (ngx_http_civchat_check_email(value, buf, &len, reason) != NGX_OK) {

        if (*reason != NULL) {
            *reason = "invalid_email";
        }

        return NULL;
    }

    return ngx_http_civchat_created(json_stringn((char *) buf, len), reason);
}


/*
 * E.164 once the punctuation people type is gone: "+48 (12) 345-67-89"
 * and "0048 12 345 67 89" are both "+48123456789".  A national number
 * cannot be turned into E.164 without knowing the country, so it is not.
 */

static json_t *
ngx_http_civchat_std_phone(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    u_char  *p, *last, *q, *digits;
    size_t   len, n;
    u_char   buf[NGX_HTTP_CIVCHAT_PHONE_LEN];

    if (!json_is_string(value)
        || ngx_http_civchat_string_data(value, &p, &len) != NGX_OK)
    {
        goto invalid;
    }

    q = buf;

    for (last = p + len; p < last; p++) {
        if (*p == ' ' || *p == '.' || *p == '-' || *p == '(' || *p == ')') {
            continue;
        }

        if (q == buf + NGX_HTTP_CIVCHAT_PHONE_LEN) {
            goto invalid;
        }

        *q++ = *p;
    }

    p = buf;
    n = q - buf;

    if (n >= 2 && p[0] == '0' && p[1] == '0') {
        p++;
        n--;
        *p = '+';
    }

    if (n == 0 || *p != '+') {
        goto invalid;
    }

    digits = p + 1;

    if (n - 1 < NGX_HTTP_CIVCHAT_PHONE_MIN
        || n - 1 > NGX_HTTP_CIVCHAT_PHONE_MAX
        || *digits == '0')
    {
        goto invalid;
    }

    for (q = digits; q < p + n; q++) {
        if (!ngx_http_civchat_digit(*q)) {
            goto invalid;
        }
    }

    return ngx_http_civchat_created(json_stringn((char *) p, n), reason);

invalid:

    *reason = "invalid_phone";
    return NULL;
}


static json_t *
ngx_http_civchat_std_gender(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    ngx_int_t  gender;

    gender = ngx_http_civchat_enum(value, ngx_http_civchat_gender_words, 3);

    if (gender == 0) {
        *reason = "invalid_value";
        return NULL;
    }

    return ngx_http_civchat_created(json_integer(gender), reason);
}


static json_t *
ngx_http_civchat_std_status(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    ngx_int_t  status;

    status = ngx_http_civchat_enum(value, ngx_http_civchat_status_words, 2);

    if (status == 0) {
        *reason = "invalid_value";
        return NULL;
    }

    return ngx_http_civchat_created(json_integer(status), reason);
}


static json_t *
ngx_http_civchat_std_score(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    return ngx_http_civchat_to_integer(lcf, value, reason);
}


/* characters of valid UTF-8: every byte that is not a continuation byte */

static size_t
ngx_http_civchat_chars(u_char *p, size_t len)
{
    size_t  i, n;

    n = 0;

    for (i = 0; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            n++;
        }
    }

    return n;
}


/* a number in 1..max, its digits as a string, or one of the words */

static ngx_int_t
ngx_http_civchat_enum(json_t *value, const ngx_http_civchat_word_t *words,
    ngx_int_t max)
{
    u_char      *p;
    size_t       len;
    json_int_t   n;

    if (ngx_http_civchat_integer(value, &n) == NGX_OK) {
        return (n >= 1 && n <= max) ? (ngx_int_t) n : 0;
    }

    if (!json_is_string(value)
        || ngx_http_civchat_string_data(value, &p, &len) != NGX_OK)
    {
        return 0;
    }

    return ngx_http_civchat_word(p, len, words);
}


/* the conversion of a standard attribute, or NULL for any other name */

ngx_http_civchat_convert_pt
ngx_http_civchat_standard_find(ngx_str_t *name)
{
    const ngx_http_civchat_standard_t  *std;

    for (std = ngx_http_civchat_standard; std->name.len; std++) {
        if (name->len == std->name.len
            && ngx_memcmp(name->data, std->name.data, name->len) == 0)
        {
            return std->convert;
        }
    }

    return NULL;
}
