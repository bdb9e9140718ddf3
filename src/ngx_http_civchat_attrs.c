
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/* "first_name" and "last_name" are counted in characters, not bytes */
#define NGX_HTTP_CIVCHAT_NAME_CHARS    40

/* the longest number written as text: "-1.2345678901234567e-308" */
#define NGX_HTTP_CIVCHAT_NUMBER_LEN    32

/* the longest numeric string that is parsed as a real */
#define NGX_HTTP_CIVCHAT_REAL_LEN      64

/* "00" and 15 digits, before "00" becomes '+' */
#define NGX_HTTP_CIVCHAT_PHONE_LEN     17
#define NGX_HTTP_CIVCHAT_PHONE_MIN     8
#define NGX_HTTP_CIVCHAT_PHONE_MAX     15

#define NGX_HTTP_CIVCHAT_DATE_LEN      (sizeof("YYYY-MM-DD") - 1)
#define NGX_HTTP_CIVCHAT_DATETIME_LEN  (sizeof("YYYY-MM-DDTHH:MM:SSZ") - 1)

#define NGX_HTTP_CIVCHAT_DAY           86400
#define NGX_HTTP_CIVCHAT_YEAR_MAX      9999

#define NGX_HTTP_CIVCHAT_BAD_UTF8      0xffffffff

#if (JSON_INTEGER_IS_LONG_LONG)
#define NGX_HTTP_CIVCHAT_JSON_INT_MAX  LLONG_MAX
#define NGX_HTTP_CIVCHAT_JSON_INT_MIN  LLONG_MIN
#else
#define NGX_HTTP_CIVCHAT_JSON_INT_MAX  LONG_MAX
#define NGX_HTTP_CIVCHAT_JSON_INT_MIN  LONG_MIN
#endif

#define ngx_http_civchat_space(c)                                            \
    ((c) == ' ' || (c) == '\t' || (c) == '\r' || (c) == '\n'                 \
     || (c) == '\f' || (c) == '\v')

#define ngx_http_civchat_digit(c)  ((c) >= '0' && (c) <= '9')


typedef json_t *(*ngx_http_civchat_convert_pt)(
    ngx_http_civchat_loc_conf_t *lcf, json_t *value, const char **reason);


typedef struct {
    ngx_str_t                     name;
    ngx_http_civchat_convert_pt   convert;
} ngx_http_civchat_standard_t;


typedef struct {
    ngx_str_t                     name;
    ngx_uint_t                    type;
    ngx_http_civchat_convert_pt   convert;
} ngx_http_civchat_type_t;


typedef struct {
    ngx_str_t                     word;
    ngx_int_t                     value;
} ngx_http_civchat_word_t;


static ngx_int_t ngx_http_civchat_normalize(u_char *name, size_t len,
    u_char *buf, size_t *n, const char **reason);
static const char *ngx_http_civchat_check_name(u_char *p, u_char *last);
static uint32_t ngx_http_civchat_utf8_decode(u_char **p, u_char *last);
static u_char *ngx_http_civchat_utf8_encode(u_char *p, uint32_t c);
static size_t ngx_http_civchat_utf8_len(uint32_t c);
static uint32_t ngx_http_civchat_lowercase(uint32_t c);
static uint32_t ngx_http_civchat_latin_ext_a_lowercase(uint32_t c);

static ngx_uint_t ngx_http_civchat_not_given(json_t *value);
static ngx_int_t ngx_http_civchat_string_data(json_t *value, u_char **p,
    size_t *len);
static void ngx_http_civchat_trim(u_char **p, size_t *len);
static ngx_uint_t ngx_http_civchat_has_control(u_char *p, size_t len);
static size_t ngx_http_civchat_chars(u_char *p, size_t len);
static ngx_uint_t ngx_http_civchat_in_list(const ngx_str_t *list,
    ngx_str_t *name);
static ngx_int_t ngx_http_civchat_word(u_char *p, size_t len,
    const ngx_http_civchat_word_t *words);
static json_t *ngx_http_civchat_created(json_t *value, const char **reason);
static json_t *ngx_http_civchat_new_string(ngx_http_civchat_loc_conf_t *lcf,
    u_char *p, size_t len, const char **reason);

static ngx_int_t ngx_http_civchat_integer(json_t *value, json_int_t *n);
static ngx_int_t ngx_http_civchat_real_integer(double d, json_int_t *n);
static ngx_int_t ngx_http_civchat_parse_integer(u_char *p, size_t len,
    json_int_t *n);
static ngx_int_t ngx_http_civchat_parse_real(u_char *p, size_t len,
    double *d);
static ngx_int_t ngx_http_civchat_number_text(json_t *value, u_char *buf,
    size_t *len);
static u_char *ngx_http_civchat_integer_text(u_char *buf, json_int_t n);
static size_t ngx_http_civchat_real_text(double d, u_char *buf);
static ngx_int_t ngx_http_civchat_enum(json_t *value,
    const ngx_http_civchat_word_t *words, ngx_int_t max);

static ngx_int_t ngx_http_civchat_parse_time(u_char *p, size_t len,
    int64_t *t);
static ngx_int_t ngx_http_civchat_parse_zone(u_char *p, u_char *last,
    int64_t *offset);
static ngx_int_t ngx_http_civchat_digits(u_char *p, ngx_uint_t n);
static ngx_int_t ngx_http_civchat_days_in_month(ngx_int_t year,
    ngx_int_t month);
static int64_t ngx_http_civchat_days_from_civil(int64_t year,
    ngx_int_t month, ngx_int_t day);
static size_t ngx_http_civchat_format_time(int64_t t, u_char *buf,
    ngx_uint_t date_only);
static json_t *ngx_http_civchat_time_value(json_t *value,
    ngx_uint_t date_only, const char **reason);

static ngx_int_t ngx_http_civchat_check_email(json_t *value, u_char *buf,
    size_t *len, const char **reason);

static json_t *ngx_http_civchat_std_name(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_std_part_name(
    ngx_http_civchat_loc_conf_t *lcf, json_t *value, const char **reason);
static json_t *ngx_http_civchat_person_name(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, size_t max_chars, const char **reason);
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

static ngx_uint_t ngx_http_civchat_declared_type(
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *name);
static json_t *ngx_http_civchat_scalar_string(
    ngx_http_civchat_loc_conf_t *lcf, json_t *value, const char **reason);
static json_t *ngx_http_civchat_to_string(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_to_integer(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_to_float(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_to_boolean(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_to_date(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_to_datetime(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_to_fixed(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_to_multi(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_undeclared(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);
static json_t *ngx_http_civchat_undeclared_array(
    ngx_http_civchat_loc_conf_t *lcf, json_t *value, const char **reason);

static json_t *ngx_http_civchat_company_name(
    ngx_http_civchat_loc_conf_t *lcf, json_t *value, const char **reason);
static json_t *ngx_http_civchat_company_object(
    ngx_http_civchat_loc_conf_t *lcf, json_t *value, const char **reason);


static const ngx_str_t  ngx_http_civchat_reserved_names[] = {
    ngx_string("apiKey"),
    ngx_string("api_key"),
    ngx_string("app_key"),
    ngx_string("key"),
    ngx_string("user_key"),
    ngx_string("widget"),
    ngx_string("event"),
    ngx_string("url"),
    ngx_string("referrer"),
    ngx_string("title"),
    ngx_string("source_context"),
    ngx_string("user_hash"),
    ngx_string("link_key"),
    ngx_null_string
};


static const ngx_str_t  ngx_http_civchat_automatic_names[] = {
    ngx_string("key"),
    ngx_string("first_seen"),
    ngx_string("last_seen"),
    ngx_string("page_views"),
    ngx_string("sessions"),
    ngx_string("last_ip"),
    ngx_string("user_agent"),
    ngx_string("browser_language"),
    ngx_null_string
};


/* in the order of their values: "simple" is 1 */
static const ngx_str_t  ngx_http_civchat_widget_states[] = {
    ngx_string("simple"),
    ngx_string("standard"),
    ngx_string("hidden"),
    ngx_string("expanded"),
    ngx_null_string
};


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


static const ngx_http_civchat_type_t  ngx_http_civchat_types[] = {
    { ngx_string("string"), NGX_HTTP_CIVCHAT_TYPE_STRING,
      ngx_http_civchat_to_string },
    { ngx_string("integer"), NGX_HTTP_CIVCHAT_TYPE_INTEGER,
      ngx_http_civchat_to_integer },
    { ngx_string("float"), NGX_HTTP_CIVCHAT_TYPE_FLOAT,
      ngx_http_civchat_to_float },
    { ngx_string("boolean"), NGX_HTTP_CIVCHAT_TYPE_BOOLEAN,
      ngx_http_civchat_to_boolean },
    { ngx_string("date"), NGX_HTTP_CIVCHAT_TYPE_DATE,
      ngx_http_civchat_to_date },
    { ngx_string("datetime"), NGX_HTTP_CIVCHAT_TYPE_DATETIME,
      ngx_http_civchat_to_datetime },
    { ngx_string("fixed"), NGX_HTTP_CIVCHAT_TYPE_FIXED,
      ngx_http_civchat_to_fixed },
    { ngx_string("multi"), NGX_HTTP_CIVCHAT_TYPE_MULTI,
      ngx_http_civchat_to_multi },
    { ngx_null_string, NGX_HTTP_CIVCHAT_TYPE_NONE, NULL }
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


/* the value is 1 + the boolean, so that 0 can mean "not a word" */
static const ngx_http_civchat_word_t  ngx_http_civchat_boolean_words[] = {
    { ngx_string("true"), 2 },
    { ngx_string("false"), 1 },
    { ngx_string("1"), 2 },
    { ngx_string("0"), 1 },
    { ngx_string("yes"), 2 },
    { ngx_string("no"), 1 },
    { ngx_string("on"), 2 },
    { ngx_string("off"), 1 },
    { ngx_null_string, 0 }
};


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

static ngx_int_t
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


json_t *
ngx_http_civchat_attr_value(ngx_http_civchat_loc_conf_t *lcf,
    ngx_str_t *name, json_t *value, const char **reason)
{
    ngx_uint_t                          type;
    const ngx_http_civchat_type_t      *t;
    const ngx_http_civchat_standard_t  *std;

    *reason = NULL;

    if (ngx_http_civchat_not_given(value)) {
        return NULL;
    }

    for (std = ngx_http_civchat_standard; std->name.len; std++) {
        if (name->len == std->name.len
            && ngx_memcmp(name->data, std->name.data, name->len) == 0)
        {
            return std->convert(lcf, value, reason);
        }
    }

    type = ngx_http_civchat_declared_type(lcf, name);

    for (t = ngx_http_civchat_types; t->name.len; t++) {
        if (t->type == type) {
            return t->convert(lcf, value, reason);
        }
    }

    return ngx_http_civchat_undeclared(lcf, value, reason);
}


/* plug-ins send null, "" or [] for every field they know nothing about */

static ngx_uint_t
ngx_http_civchat_not_given(json_t *value)
{
    if (value == NULL || json_is_null(value)) {
        return 1;
    }

    if (json_is_string(value) && json_string_length(value) == 0) {
        return 1;
    }

    if (json_is_array(value) && json_array_size(value) == 0) {
        return 1;
    }

    return 0;
}


/*
 * Returns the bytes of a JSON string; jansson strings may hold NUL bytes,
 * which no stored value may carry.
 */

static ngx_int_t
ngx_http_civchat_string_data(json_t *value, u_char **p, size_t *len)
{
    *p = (u_char *) json_string_value(value);
    *len = json_string_length(value);

    if (ngx_strlchr(*p, *p + *len, '\0') != NULL) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_http_civchat_trim(u_char **p, size_t *len)
{
    u_char  *s, *last;

    s = *p;
    last = s + *len;

    while (s < last && ngx_http_civchat_space(*s)) {
        s++;
    }

    while (last > s && ngx_http_civchat_space(last[-1])) {
        last--;
    }

    *p = s;
    *len = last - s;
}


/* C0 controls, DEL and, in valid UTF-8, the C1 controls U+0080..U+009F */

static ngx_uint_t
ngx_http_civchat_has_control(u_char *p, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f) {
            return 1;
        }

        if (p[i] == 0xc2 && i + 1 < len && p[i + 1] < 0xa0) {
            return 1;
        }
    }

    return 0;
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


static ngx_uint_t
ngx_http_civchat_in_list(const ngx_str_t *list, ngx_str_t *name)
{
    for ( /* void */ ; list->len; list++) {
        if (name->len == list->len
            && ngx_memcmp(name->data, list->data, name->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* a trimmed, case-insensitive word; 0 when none of the words matches */

static ngx_int_t
ngx_http_civchat_word(u_char *p, size_t len,
    const ngx_http_civchat_word_t *words)
{
    ngx_http_civchat_trim(&p, &len);

    for ( /* void */ ; words->word.len; words++) {
        if (len == words->word.len
            && ngx_strncasecmp(p, words->word.data, len) == 0)
        {
            return words->value;
        }
    }

    return 0;
}


/*
 * jansson returns NULL only when it runs out of memory; the field is then
 * reported as ignored rather than failing the whole request
 */

static json_t *
ngx_http_civchat_created(json_t *value, const char **reason)
{
    if (value == NULL) {
        *reason = "no_memory";
    }

    return value;
}


/* a string value to store, within the configured length */

static json_t *
ngx_http_civchat_new_string(ngx_http_civchat_loc_conf_t *lcf, u_char *p,
    size_t len, const char **reason)
{
    if (len > lcf->max_value_len) {
        *reason = "too_long";
        return NULL;
    }

    return ngx_http_civchat_created(json_stringn((char *) p, len), reason);
}


/* an integer, an integer-valued real or a string holding an integer */

static ngx_int_t
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

static ngx_int_t
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

static ngx_int_t
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

static u_char *
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


/*
 * ISO 8601 as sites send it: "YYYY-MM-DD", then 'T' or ' ' and "HH:MM",
 * optional ":SS" and fraction, then an optional zone ("Z", "+HH:MM",
 * "+HHMM", "+HH"; none means UTC).  The result is Unix time.
 */

static ngx_int_t
ngx_http_civchat_parse_time(u_char *p, size_t len, int64_t *t)
{
    u_char     *last;
    int64_t     offset;
    ngx_int_t   year, month, day, hour, min, sec;

    last = p + len;

    if (len < NGX_HTTP_CIVCHAT_DATE_LEN || p[4] != '-' || p[7] != '-') {
        return NGX_DECLINED;
    }

    year = ngx_http_civchat_digits(p, 4);
    month = ngx_http_civchat_digits(p + 5, 2);
    day = ngx_http_civchat_digits(p + 8, 2);

    if (year < 0 || month < 1 || month > 12 || day < 1
        || day > ngx_http_civchat_days_in_month(year, month))
    {
        return NGX_DECLINED;
    }

    p += NGX_HTTP_CIVCHAT_DATE_LEN;

    hour = 0;
    min = 0;
    sec = 0;
    offset = 0;

    if (p < last) {

        if (*p != 'T' && *p != 't' && *p != ' ') {
            return NGX_DECLINED;
        }

        p++;

        if (last - p < 5 || p[2] != ':') {
            return NGX_DECLINED;
        }

        hour = ngx_http_civchat_digits(p, 2);
        min = ngx_http_civchat_digits(p + 3, 2);

        if (hour < 0 || hour > 23 || min < 0 || min > 59) {
            return NGX_DECLINED;
        }

        p += 5;

        if (p < last && *p == ':') {

            if (last - p < 3) {
                return NGX_DECLINED;
            }

            sec = ngx_http_civchat_digits(p + 1, 2);

            if (sec < 0 || sec > 59) {
                return NGX_DECLINED;
            }

            p += 3;

            /* fractions of a second are not kept */

            if (p < last && *p == '.') {
                p++;

                if (p == last || !ngx_http_civchat_digit(*p)) {
                    return NGX_DECLINED;
                }

                while (p < last && ngx_http_civchat_digit(*p)) {
                    p++;
                }
            }
        }

        /* Ruby and others write "2016-01-01 10:00:00 +0100" */

        if (p < last && *p == ' ') {
            p++;
        }

        if (ngx_http_civchat_parse_zone(p, last, &offset) != NGX_OK) {
            return NGX_DECLINED;
        }
    }

    *t = ngx_http_civchat_days_from_civil(year, month, day)
         * NGX_HTTP_CIVCHAT_DAY
         + hour * 3600 + min * 60 + sec - offset;

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_parse_zone(u_char *p, u_char *last, int64_t *offset)
{
    ngx_int_t  sign, hour, min;

    *offset = 0;

    if (p == last) {
        return NGX_OK;
    }

    if (*p == 'Z' || *p == 'z') {
        return (p + 1 == last) ? NGX_OK : NGX_DECLINED;
    }

    if (*p != '+' && *p != '-') {
        return NGX_DECLINED;
    }

    sign = (*p == '-') ? -1 : 1;
    p++;

    if (last - p < 2) {
        return NGX_DECLINED;
    }

    hour = ngx_http_civchat_digits(p, 2);
    p += 2;
    min = 0;

    if (p < last) {

        if (*p == ':') {
            p++;
        }

        if (last - p != 2) {
            return NGX_DECLINED;
        }

        min = ngx_http_civchat_digits(p, 2);
    }

    if (hour < 0 || hour > 23 || min < 0 || min > 59) {
        return NGX_DECLINED;
    }

    *offset = sign * (hour * 3600 + min * 60);

    return NGX_OK;
}


/* n decimal digits as a number, or -1 */

static ngx_int_t
ngx_http_civchat_digits(u_char *p, ngx_uint_t n)
{
    ngx_int_t  v;

    for (v = 0; n; n--, p++) {
        if (!ngx_http_civchat_digit(*p)) {
            return -1;
        }

        v = v * 10 + (*p - '0');
    }

    return v;
}


static ngx_int_t
ngx_http_civchat_days_in_month(ngx_int_t year, ngx_int_t month)
{
    static const u_char  days[] = {
        31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
    };

    if (month == 2
        && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))
    {
        return 29;
    }

    return days[month - 1];
}


/*
 * Days since 1970-01-01 in the proleptic Gregorian calendar, for any year;
 * the year is counted from March so that the leap day comes last.
 */

static int64_t
ngx_http_civchat_days_from_civil(int64_t year, ngx_int_t month,
    ngx_int_t day)
{
    int64_t  era, yoe, doy, doe;

    year -= (month <= 2);
    era = (year >= 0 ? year : year - 399) / 400;
    yoe = year - era * 400;
    doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return era * 146097 + doe - 719468;
}


/*
 * Writes Unix time t as "YYYY-MM-DDTHH:MM:SSZ" or "YYYY-MM-DD" into buf,
 * which holds NGX_HTTP_CIVCHAT_DATETIME_LEN bytes; 0 when the year is
 * outside 0000..9999.  The inverse of ngx_http_civchat_days_from_civil().
 */

static size_t
ngx_http_civchat_format_time(int64_t t, u_char *buf, ngx_uint_t date_only)
{
    u_char     *p;
    int64_t     days, secs, era, doe, yoe, doy, mp, year;
    ngx_int_t   month, day;

    days = t / NGX_HTTP_CIVCHAT_DAY;
    secs = t % NGX_HTTP_CIVCHAT_DAY;

    if (secs < 0) {
        secs += NGX_HTTP_CIVCHAT_DAY;
        days--;
    }

    days += 719468;
    era = (days >= 0 ? days : days - 146096) / 146097;
    doe = days - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    day = (ngx_int_t) (doy - (153 * mp + 2) / 5 + 1);
    month = (ngx_int_t) (mp < 10 ? mp + 3 : mp - 9);
    year = yoe + era * 400 + (month <= 2);

    if (year < 0 || year > NGX_HTTP_CIVCHAT_YEAR_MAX) {
        return 0;
    }

    p = ngx_sprintf(buf, "%04i-%02i-%02i", (ngx_int_t) year, month, day);

    if (!date_only) {
        p = ngx_sprintf(p, "T%02i:%02i:%02iZ", (ngx_int_t) (secs / 3600),
                        (ngx_int_t) (secs / 60 % 60),
                        (ngx_int_t) (secs % 60));
    }

    return p - buf;
}


/*
 * A date or datetime value: an ISO 8601 string, or, for a datetime, Unix
 * seconds; stored in UTC.
 */

static json_t *
ngx_http_civchat_time_value(json_t *value, ngx_uint_t date_only,
    const char **reason)
{
    u_char   *p;
    size_t    len;
    int64_t   t;
    u_char    buf[NGX_HTTP_CIVCHAT_DATETIME_LEN];

    if (json_is_integer(value) && !date_only) {
        t = json_integer_value(value);

    } else if (json_is_string(value)
               && ngx_http_civchat_string_data(value, &p, &len) == NGX_OK)
    {
        ngx_http_civchat_trim(&p, &len);

        if (ngx_http_civchat_parse_time(p, len, &t) != NGX_OK) {
            goto invalid;
        }

    } else {
        goto invalid;
    }

    len = ngx_http_civchat_format_time(t, buf, date_only);

    if (len == 0) {
        goto invalid;
    }

    return ngx_http_civchat_created(json_stringn((char *) buf, len), reason);

invalid:

    *reason = date_only ? "invalid_date" : "invalid_datetime";
    return NULL;
}


/*
 * Validates and lower-cases an address into buf, which holds
 * NGX_HTTP_CIVCHAT_EMAIL_MAX bytes.  NGX_DECLINED with *reason NULL means
 * that no address was given.
 */

static ngx_int_t
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

static json_t *
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


static ngx_uint_t
ngx_http_civchat_declared_type(ngx_http_civchat_loc_conf_t *lcf,
    ngx_str_t *name)
{
    ngx_uint_t                     i;
    ngx_http_civchat_attr_decl_t  *decl;

    if (lcf->attrs == NULL) {
        return NGX_HTTP_CIVCHAT_TYPE_NONE;
    }

    decl = lcf->attrs->elts;

    for (i = 0; i < lcf->attrs->nelts; i++) {
        if (name->len == decl[i].name.len
            && ngx_memcmp(name->data, decl[i].name.data, name->len) == 0)
        {
            return decl[i].type;
        }
    }

    return NGX_HTTP_CIVCHAT_TYPE_NONE;
}


/* a string as is, or a number as its decimal text */

static json_t *
ngx_http_civchat_scalar_string(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason)
{
    u_char  *p;
    size_t   len;
    u_char   buf[NGX_HTTP_CIVCHAT_NUMBER_LEN];

    if (json_is_string(value)) {

        if (ngx_http_civchat_string_data(value, &p, &len) != NGX_OK) {
            *reason = "invalid_value";
            return NULL;
        }

        if (len > lcf->max_value_len) {
            *reason = "too_long";
            return NULL;
        }

        return json_incref(value);
    }

    if (ngx_http_civchat_number_text(value, buf, &len) != NGX_OK) {
        *reason = "invalid_value";
        return NULL;
    }

    return ngx_http_civchat_new_string(lcf, buf, len, reason);
}


static json_t *
ngx_http_civchat_to_string(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    switch (json_typeof(value)) {

    case JSON_STRING:
    case JSON_INTEGER:
    case JSON_REAL:
        return ngx_http_civchat_scalar_string(lcf, value, reason);

    case JSON_TRUE:
        return ngx_http_civchat_new_string(lcf, (u_char *) "true", 4, reason);

    case JSON_FALSE:
        return ngx_http_civchat_new_string(lcf, (u_char *) "false", 5,
                                           reason);

    default:
        *reason = "invalid_type";
        return NULL;
    }
}


static json_t *
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


static json_t *
ngx_http_civchat_to_float(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    u_char  *p;
    size_t   len;
    double   d;

    switch (json_typeof(value)) {

    case JSON_INTEGER:
        d = (double) json_integer_value(value);
        break;

    case JSON_REAL:
        d = json_real_value(value);
        break;

    case JSON_STRING:
        if (ngx_http_civchat_string_data(value, &p, &len) != NGX_OK
            || ngx_http_civchat_parse_real(p, len, &d) != NGX_OK)
        {
            goto invalid;
        }

        break;

    default:
        goto invalid;
    }

    return ngx_http_civchat_created(json_real(d), reason);

invalid:

    *reason = "invalid_value";
    return NULL;
}


static json_t *
ngx_http_civchat_to_boolean(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    u_char      *p;
    size_t       len;
    ngx_int_t    word;
    json_int_t   n;

    switch (json_typeof(value)) {

    case JSON_TRUE:
    case JSON_FALSE:
        return json_incref(value);

    case JSON_INTEGER:
    case JSON_REAL:
        if (ngx_http_civchat_integer(value, &n) != NGX_OK
            || (n != 0 && n != 1))
        {
            goto invalid;
        }

        return json_boolean(n);

    case JSON_STRING:
        if (ngx_http_civchat_string_data(value, &p, &len) != NGX_OK) {
            goto invalid;
        }

        word = ngx_http_civchat_word(p, len, ngx_http_civchat_boolean_words);

        if (word == 0) {
            goto invalid;
        }

        return json_boolean(word - 1);

    default:
        goto invalid;
    }

invalid:

    *reason = "invalid_value";
    return NULL;
}


static json_t *
ngx_http_civchat_to_date(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    return ngx_http_civchat_time_value(value, 1, reason);
}


static json_t *
ngx_http_civchat_to_datetime(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    return ngx_http_civchat_time_value(value, 0, reason);
}


/* one choice: a string, a number, or an array holding exactly one */

static json_t *
ngx_http_civchat_to_fixed(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    if (json_is_array(value)) {

        if (json_array_size(value) != 1) {
            *reason = "invalid_value";
            return NULL;
        }

        value = json_array_get(value, 0);

        if (ngx_http_civchat_not_given(value)) {
            return NULL;
        }
    }

    if (!json_is_string(value) && !json_is_number(value)) {
        *reason = "invalid_value";
        return NULL;
    }

    return ngx_http_civchat_scalar_string(lcf, value, reason);
}


/*
 * Choices as an array of strings; a single choice may come bare.  Empty
 * strings are dropped like any value that was not given.
 */

static json_t *
ngx_http_civchat_to_multi(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    size_t   i, n;
    json_t  *array, *item, *s;

    if (!json_is_array(value)) {

        if (!json_is_string(value) && !json_is_number(value)) {
            *reason = "invalid_value";
            return NULL;
        }

        /* stored as an array of one, within the limit as any array */

        if (lcf->max_array_items == 0) {
            *reason = "too_many_items";
            return NULL;
        }

        s = ngx_http_civchat_scalar_string(lcf, value, reason);
        if (s == NULL) {
            return NULL;
        }

        array = ngx_http_civchat_created(json_array(), reason);
        if (array == NULL) {
            json_decref(s);
            return NULL;
        }

        if (json_array_append_new(array, s) != 0) {
            goto no_memory;
        }

        return array;
    }

    n = json_array_size(value);

    if (n > lcf->max_array_items) {
        *reason = "too_many_items";
        return NULL;
    }

    array = ngx_http_civchat_created(json_array(), reason);
    if (array == NULL) {
        return NULL;
    }

    for (i = 0; i < n; i++) {
        item = json_array_get(value, i);

        if (json_is_string(item) && json_string_length(item) == 0) {
            continue;
        }

        if (!json_is_string(item) && !json_is_number(item)) {
            *reason = "invalid_value";
            goto failed;
        }

        s = ngx_http_civchat_scalar_string(lcf, item, reason);
        if (s == NULL) {
            goto failed;
        }

        /* json_array_append_new() releases s when it fails */

        if (json_array_append_new(array, s) != 0) {
            goto no_memory;
        }
    }

    if (json_array_size(array) == 0) {
        json_decref(array);
        return NULL;
    }

    return array;

no_memory:

    *reason = "no_memory";

failed:

    json_decref(array);
    return NULL;
}


/* undeclared attributes keep their JSON type */

static json_t *
ngx_http_civchat_undeclared(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    u_char  *p;
    size_t   len;

    switch (json_typeof(value)) {

    case JSON_STRING:
        if (ngx_http_civchat_string_data(value, &p, &len) != NGX_OK) {
            *reason = "invalid_value";
            return NULL;
        }

        if (len > lcf->max_value_len) {
            *reason = "too_long";
            return NULL;
        }

        return json_incref(value);

    case JSON_INTEGER:
    case JSON_REAL:
    case JSON_TRUE:
    case JSON_FALSE:
        return json_incref(value);

    case JSON_ARRAY:
        return ngx_http_civchat_undeclared_array(lcf, value, reason);

    case JSON_OBJECT:
        *reason = "nested_object";
        return NULL;

    default:
        return NULL;
    }
}


/*
 * An array of scalars, copied so that the stored value never shares an
 * array with the request body.
 */

static json_t *
ngx_http_civchat_undeclared_array(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason)
{
    u_char  *p;
    size_t   i, n, len;
    json_t  *item, *copy;

    n = json_array_size(value);

    if (n > lcf->max_array_items) {
        *reason = "too_many_items";
        return NULL;
    }

    for (i = 0; i < n; i++) {
        item = json_array_get(value, i);

        switch (json_typeof(item)) {

        case JSON_STRING:
            if (ngx_http_civchat_string_data(item, &p, &len) != NGX_OK) {
                *reason = "invalid_value";
                return NULL;
            }

            if (len > lcf->max_value_len) {
                *reason = "too_long";
                return NULL;
            }

            break;

        case JSON_INTEGER:
        case JSON_REAL:
        case JSON_TRUE:
        case JSON_FALSE:
            break;

        default:
            *reason = "invalid_type";
            return NULL;
        }
    }

    copy = json_copy(value);

    return ngx_http_civchat_created(copy, reason);
}


ngx_int_t
ngx_http_civchat_user_id(ngx_pool_t *pool, json_t *value, ngx_str_t *out,
    const char **reason)
{
    u_char      *p;
    size_t       len;
    json_int_t   n;
    u_char       buf[NGX_INT64_LEN];

    *reason = NULL;

    if (value == NULL) {
        return NGX_DECLINED;
    }

    switch (json_typeof(value)) {

    case JSON_NULL:
        return NGX_DECLINED;

    case JSON_INTEGER:
    case JSON_REAL:

        /*
         * 42.0 is what some serializers make of the integer 42; but
         * 1.0000000000000001 and 1e-400, the doubles 1 and 0, are no
         * identity: the number's text decides (json_integer.c)
         */

        if (ngx_http_civchat_json_integer(pool, value, &n) != NGX_OK) {
            *reason = "invalid_value";
            return NGX_DECLINED;
        }

        p = buf;
        len = ngx_http_civchat_integer_text(buf, n) - buf;
        break;

    case JSON_STRING:
        if (ngx_http_civchat_string_data(value, &p, &len) != NGX_OK) {
            *reason = "invalid_value";
            return NGX_DECLINED;
        }

        ngx_http_civchat_trim(&p, &len);

        if (len == 0) {
            return NGX_DECLINED;
        }

        if (len > NGX_HTTP_CIVCHAT_USER_ID_MAX) {
            *reason = "too_long";
            return NGX_DECLINED;
        }

        if (ngx_http_civchat_has_control(p, len)) {
            *reason = "invalid_value";
            return NGX_DECLINED;
        }

        break;

    default:
        *reason = "invalid_type";
        return NGX_DECLINED;
    }

    out->data = ngx_pnalloc(pool, len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, p, len);
    out->len = len;

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_email(ngx_pool_t *pool, json_t *value, ngx_str_t *out,
    const char **reason)
{
    size_t     len;
    ngx_int_t  rc;
    u_char     buf[NGX_HTTP_CIVCHAT_EMAIL_MAX];

    rc = ngx_http_civchat_check_email(value, buf, &len, reason);

    if (rc != NGX_OK) {
        return rc;
    }

    out->data = ngx_pnalloc(pool, len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, buf, len);
    out->len = len;

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_reserved(ngx_str_t *name)
{
    return ngx_http_civchat_in_list(ngx_http_civchat_reserved_names, name);
}


ngx_int_t
ngx_http_civchat_automatic(ngx_str_t *name)
{
    return ngx_http_civchat_in_list(ngx_http_civchat_automatic_names, name);
}


ngx_int_t
ngx_http_civchat_widget_state(json_t *value)
{
    ngx_str_t         state;
    const ngx_str_t  *s;

    if (value == NULL || !json_is_string(value)) {
        return 0;
    }

    state.data = (u_char *) json_string_value(value);
    state.len = json_string_length(value);

    for (s = ngx_http_civchat_widget_states; s->len; s++) {
        if (state.len == s->len
            && ngx_memcmp(state.data, s->data, state.len) == 0)
        {
            return s - ngx_http_civchat_widget_states + 1;
        }
    }

    return 0;
}


ngx_int_t
ngx_http_civchat_parse_type(ngx_str_t *type)
{
    const ngx_http_civchat_type_t  *t;

    for (t = ngx_http_civchat_types; t->name.len; t++) {
        if (type->len == t->name.len
            && ngx_memcmp(type->data, t->name.data, type->len) == 0)
        {
            return t->type;
        }
    }

    return NGX_ERROR;
}


json_t *
ngx_http_civchat_company(ngx_http_civchat_loc_conf_t *lcf, json_t *value,
    const char **reason)
{
    *reason = NULL;

    if (ngx_http_civchat_not_given(value)) {
        return NULL;
    }

    switch (json_typeof(value)) {

    case JSON_STRING:
        return ngx_http_civchat_company_name(lcf, value, reason);

    case JSON_OBJECT:
        return ngx_http_civchat_company_object(lcf, value, reason);

    default:
        *reason = "invalid_type";
        return NULL;
    }
}


/* a bare string is the company name: {"name": "..."} */

static json_t *
ngx_http_civchat_company_name(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason)
{
    json_t  *company, *name;

    name = ngx_http_civchat_person_name(lcf, value, 0, reason);
    if (name == NULL) {
        return NULL;
    }

    company = ngx_http_civchat_created(json_object(), reason);
    if (company == NULL) {
        json_decref(name);
        return NULL;
    }

    /* json_object_set_new() releases name when it fails */

    if (json_object_set_new(company, "name", name) != 0) {
        json_decref(company);
        *reason = "no_memory";
        return NULL;
    }

    return company;
}


/*
 * Company attributes follow the rules of undeclared profile attributes;
 * a bad one is left out, not the company.  No more than max_attrs are
 * kept, as for a profile.
 */

static json_t *
ngx_http_civchat_company_object(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason)
{
    size_t       n, key_len;
    json_t      *company, *v, *item;
    const char  *key, *why;
    u_char       name[NGX_HTTP_CIVCHAT_NAME_MAX];

    company = ngx_http_civchat_created(json_object(), reason);
    if (company == NULL) {
        return NULL;
    }

    json_object_keylen_foreach(value, key, key_len, v) {

        if (lcf->max_attrs && json_object_size(company) >= lcf->max_attrs) {
            break;
        }

        if (ngx_http_civchat_normalize((u_char *) key, key_len, name, &n,
                                       &why)
            != NGX_OK)
        {
            continue;
        }

        if (ngx_http_civchat_not_given(v)) {
            continue;
        }

        why = NULL;

        item = ngx_http_civchat_undeclared(lcf, v, &why);
        if (item == NULL) {
            continue;
        }

        /* json_object_setn_new() releases item when it fails */

        if (json_object_setn_new(company, (char *) name, n, item) != 0) {
            json_decref(company);
            *reason = "no_memory";
            return NULL;
        }
    }

    if (json_object_size(company) == 0) {
        json_decref(company);
        return NULL;
    }

    return company;
}
