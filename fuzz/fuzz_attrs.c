
/*
 * Copyright (C) civchat developers
 */


/*
 * Request JSON to attributes and identity fields (attrs.c and the files
 * of ngx_http_civchat_attrs.h: name.c, number.c, time.c, standard.c):
 * the input is one byte choosing the limits, then JSON text.  Every
 * object key goes through ngx_http_civchat_normalize_name(), every value
 * through ngx_http_civchat_attr_value() under each standard name and
 * each declared type, and through _user_id(), _email() and _company();
 * the raw bytes also go to ngx_http_civchat_normalize_name() as a name.
 *
 * Besides memory errors, what comes out is checked: names within the
 * limit, valid UTF-8, no separators left; values of the declared JSON
 * type, without NUL bytes, valid UTF-8; and every conversion idempotent
 * (a stored value sent again is stored unchanged).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "common.h"


#define FUZZ_DEPTH  8


static void fuzz_name(ngx_pool_t *pool, u_char *p, size_t len);
static void fuzz_value(ngx_pool_t *pool, json_t *value, ngx_uint_t depth);
static void fuzz_attr(ngx_str_t *name, ngx_uint_t type, json_t *value);
static void fuzz_check_type(ngx_str_t *name, ngx_uint_t type, json_t *v);
static void fuzz_check_strings(json_t *v);
static void fuzz_identity(ngx_pool_t *pool, json_t *value);
static void fuzz_company(json_t *value);


static ngx_http_civchat_loc_conf_t  lcf;
static ngx_array_t                  decls;


/* the names every value is tried under; type 0: standard or undeclared */

static struct {
    ngx_str_t   name;
    ngx_uint_t  type;
} fuzz_names[] = {
    { ngx_string("name"), 0 },
    { ngx_string("first_name"), 0 },
    { ngx_string("last_name"), 0 },
    { ngx_string("email"), 0 },
    { ngx_string("phone_number"), 0 },
    { ngx_string("gender"), 0 },
    { ngx_string("status"), 0 },
    { ngx_string("score"), 0 },
    { ngx_string("undeclared"), 0 },
    { ngx_string("t_string"), NGX_HTTP_CIVCHAT_TYPE_STRING },
    { ngx_string("t_integer"), NGX_HTTP_CIVCHAT_TYPE_INTEGER },
    { ngx_string("t_float"), NGX_HTTP_CIVCHAT_TYPE_FLOAT },
    { ngx_string("t_boolean"), NGX_HTTP_CIVCHAT_TYPE_BOOLEAN },
    { ngx_string("t_date"), NGX_HTTP_CIVCHAT_TYPE_DATE },
    { ngx_string("t_datetime"), NGX_HTTP_CIVCHAT_TYPE_DATETIME },
    { ngx_string("t_fixed"), NGX_HTTP_CIVCHAT_TYPE_FIXED },
    { ngx_string("t_multi"), NGX_HTTP_CIVCHAT_TYPE_MULTI },
    { ngx_null_string, 0 }
};


static const size_t      value_lens[] = { 0, 8, 255, 4096 };
static const ngx_uint_t  array_items[] = { 0, 1, 5, 100 };
static const ngx_uint_t  max_attrs[] = { 0, 1, 3, 100 };


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ngx_uint_t                     i;
    ngx_http_civchat_attr_decl_t  *d;

    ngx_fuzz_init();

    if (ngx_array_init(&decls, ngx_create_pool(4096, ngx_fuzz_log), 8,
                       sizeof(ngx_http_civchat_attr_decl_t))
        != NGX_OK)
    {
        abort();
    }

    for (i = 0; fuzz_names[i].name.len; i++) {
        if (fuzz_names[i].type == 0) {
            continue;
        }

        d = ngx_array_push(&decls);
        if (d == NULL) {
            abort();
        }

        d->name = fuzz_names[i].name;
        d->type = fuzz_names[i].type;
    }

    lcf.attrs = &decls;

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t      *root;
    ngx_pool_t  *pool;

    if (size < 1) {
        return 0;
    }

    lcf.max_value_len = value_lens[data[0] & 3];
    lcf.max_array_items = array_items[(data[0] >> 2) & 3];
    lcf.max_attrs = max_attrs[(data[0] >> 4) & 3];

    data++;
    size--;

    pool = ngx_create_pool(4096, ngx_fuzz_log);
    if (pool == NULL) {
        abort();
    }

    fuzz_name(pool, (u_char *) data, size);

    root = json_loadb((const char *) data, size,
                      JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);

    if (root != NULL) {
        fuzz_value(pool, root, 0);
        json_decref(root);
    }

    ngx_destroy_pool(pool);

    return 0;
}


static void
fuzz_name(ngx_pool_t *pool, u_char *p, size_t len)
{
    size_t       i;
    ngx_int_t    rc;
    ngx_str_t    name, again;
    const char  *reason;

    reason = "unset";

    rc = ngx_http_civchat_normalize_name(pool, p, len, &name, &reason);

    if (rc != NGX_OK) {
        ngx_fuzz_assert(rc == NGX_DECLINED && reason != NULL);
        return;
    }

    ngx_fuzz_assert(name.len > 0 && name.len <= NGX_HTTP_CIVCHAT_NAME_MAX);
    ngx_fuzz_assert(ngx_fuzz_valid_utf8(name.data, name.len));

    for (i = 0; i < name.len; i++) {
        ngx_fuzz_assert(name.data[i] != ' ' && name.data[i] != '-'
                        && name.data[i] >= 0x20 && name.data[i] != 0x7f);
        ngx_fuzz_assert(name.data[i] < 'A' || name.data[i] > 'Z');
    }

    /* a normalized name is its own normal form */

    rc = ngx_http_civchat_normalize_name(pool, name.data, name.len, &again,
                                         &reason);

    ngx_fuzz_assert(rc == NGX_OK);
    ngx_fuzz_assert(again.len == name.len
                    && ngx_memcmp(again.data, name.data, name.len) == 0);
}


static void
fuzz_value(ngx_pool_t *pool, json_t *value, ngx_uint_t depth)
{
    size_t       i, key_len;
    json_t      *v;
    ngx_str_t    name;
    ngx_uint_t   n;
    const char  *key, *reason;

    for (n = 0; fuzz_names[n].name.len; n++) {
        fuzz_attr(&fuzz_names[n].name, fuzz_names[n].type, value);
    }

    fuzz_identity(pool, value);
    fuzz_company(value);
    (void) ngx_http_civchat_widget_state(value);

    if (depth == FUZZ_DEPTH) {
        return;
    }

    if (json_is_array(value)) {
        json_array_foreach(value, i, v) {
            fuzz_value(pool, v, depth + 1);
        }

        return;
    }

    if (!json_is_object(value)) {
        return;
    }

    json_object_keylen_foreach(value, key, key_len, v) {
        fuzz_name(pool, (u_char *) key, key_len);

        /* the key as the handler sees it: a C string */

        if (ngx_http_civchat_normalize_name(pool, (u_char *) key,
                                            ngx_strlen(key), &name, &reason)
            == NGX_OK)
        {
            fuzz_attr(&name, 0, v);
        }

        fuzz_value(pool, v, depth + 1);
    }
}


static void
fuzz_attr(ngx_str_t *name, ngx_uint_t type, json_t *value)
{
    json_t      *v, *again;
    const char  *reason;

    reason = "unset";

    v = ngx_http_civchat_attr_value(&lcf, name, value, &reason);

    if (v == NULL) {
        return;
    }

    ngx_fuzz_assert(reason == NULL);

    fuzz_check_type(name, type, v);
    fuzz_check_strings(v);

    /* the value stored, sent again, is stored unchanged */

    again = ngx_http_civchat_attr_value(&lcf, name, v, &reason);

    if (again == NULL || !json_equal(again, v)) {
        ngx_fuzz_fail("\"%.*s\": %s, then %s", (int) name->len, name->data,
                      json_dumps(v, JSON_ENCODE_ANY),
                      again ? json_dumps(again, JSON_ENCODE_ANY) : reason);
    }

    json_decref(again);
    json_decref(v);
}


static void
fuzz_check_type(ngx_str_t *name, ngx_uint_t type, json_t *v)
{
    size_t   i, len;
    json_t  *item;

    switch (type) {

    case NGX_HTTP_CIVCHAT_TYPE_STRING:
    case NGX_HTTP_CIVCHAT_TYPE_FIXED:
        ngx_fuzz_assert(json_is_string(v));
        ngx_fuzz_assert(json_string_length(v) <= lcf.max_value_len);
        break;

    case NGX_HTTP_CIVCHAT_TYPE_INTEGER:
        ngx_fuzz_assert(json_is_integer(v));
        break;

    case NGX_HTTP_CIVCHAT_TYPE_FLOAT:
        ngx_fuzz_assert(json_is_real(v));
        break;

    case NGX_HTTP_CIVCHAT_TYPE_BOOLEAN:
        ngx_fuzz_assert(json_is_boolean(v));
        break;

    case NGX_HTTP_CIVCHAT_TYPE_DATE:
    case NGX_HTTP_CIVCHAT_TYPE_DATETIME:
        len = (type == NGX_HTTP_CIVCHAT_TYPE_DATE)
              ? sizeof("YYYY-MM-DD") - 1 : sizeof("YYYY-MM-DDTHH:MM:SSZ") - 1;
        ngx_fuzz_assert(json_is_string(v) && json_string_length(v) == len);
        break;

    case NGX_HTTP_CIVCHAT_TYPE_MULTI:
        ngx_fuzz_assert(json_is_array(v) && json_array_size(v) > 0);
        ngx_fuzz_assert(json_array_size(v) <= lcf.max_array_items);

        json_array_foreach(v, i, item) {
            ngx_fuzz_assert(json_is_string(item)
                            && json_string_length(item) > 0
                            && json_string_length(item)
                               <= lcf.max_value_len);
        }

        break;

    default:
        /* standard and undeclared attributes: never an object */
        ngx_fuzz_assert(!json_is_object(v));

        if (json_is_array(v)) {
            ngx_fuzz_assert(json_array_size(v) <= lcf.max_array_items);

            json_array_foreach(v, i, item) {
                ngx_fuzz_assert(!json_is_object(item)
                                && !json_is_array(item));
            }
        }
    }
}


/* no NUL bytes, valid UTF-8, in every string of a value */

static void
fuzz_check_strings(json_t *v)
{
    size_t       i;
    json_t      *item;
    u_char      *p;
    size_t       len;
    const char  *key;

    switch (json_typeof(v)) {

    case JSON_STRING:
        p = (u_char *) json_string_value(v);
        len = json_string_length(v);

        ngx_fuzz_assert(ngx_strlchr(p, p + len, '\0') == NULL);
        ngx_fuzz_assert(ngx_fuzz_valid_utf8(p, len));
        break;

    case JSON_ARRAY:
        json_array_foreach(v, i, item) {
            fuzz_check_strings(item);
        }

        break;

    case JSON_OBJECT:
        json_object_foreach(v, key, item) {
            fuzz_check_strings(item);
        }

        break;

    default:
        break;
    }
}


static void
fuzz_identity(ngx_pool_t *pool, json_t *value)
{
    size_t       i, ats;
    json_t      *s;
    ngx_int_t    rc;
    ngx_str_t    out, again;
    const char  *reason;

    reason = "unset";

    rc = ngx_http_civchat_user_id(pool, value, &out, &reason);

    if (rc == NGX_OK) {
        ngx_fuzz_assert(out.len > 0
                        && out.len <= NGX_HTTP_CIVCHAT_USER_ID_MAX);

        for (i = 0; i < out.len; i++) {
            ngx_fuzz_assert(out.data[i] >= 0x20 && out.data[i] != 0x7f);
        }

        ngx_fuzz_assert(out.data[0] != ' ' && out.data[out.len - 1] != ' ');

        /* the stored user_id, sent again as a string, is the same */

        s = json_stringn((char *) out.data, out.len);
        ngx_fuzz_assert(s != NULL);

        rc = ngx_http_civchat_user_id(pool, s, &again, &reason);

        ngx_fuzz_assert(rc == NGX_OK && again.len == out.len
                        && ngx_memcmp(again.data, out.data, out.len) == 0);
        json_decref(s);

    } else {
        ngx_fuzz_assert(rc == NGX_DECLINED);
    }

    reason = "unset";

    rc = ngx_http_civchat_email(pool, value, &out, &reason);

    if (rc != NGX_OK) {
        ngx_fuzz_assert(rc == NGX_DECLINED);
        return;
    }

    ngx_fuzz_assert(out.len > 2 && out.len <= NGX_HTTP_CIVCHAT_EMAIL_MAX);
    ngx_fuzz_assert(ngx_fuzz_valid_utf8(out.data, out.len));

    for (i = 0, ats = 0; i < out.len; i++) {
        ngx_fuzz_assert(out.data[i] > 0x20 && out.data[i] != 0x7f);
        ngx_fuzz_assert(out.data[i] < 'A' || out.data[i] > 'Z');
        ats += (out.data[i] == '@');
    }

    ngx_fuzz_assert(ats == 1);

    s = json_stringn((char *) out.data, out.len);
    ngx_fuzz_assert(s != NULL);

    rc = ngx_http_civchat_email(pool, s, &again, &reason);

    ngx_fuzz_assert(rc == NGX_OK && again.len == out.len
                    && ngx_memcmp(again.data, out.data, out.len) == 0);
    json_decref(s);
}


static void
fuzz_company(json_t *value)
{
    json_t      *v, *again, *item;
    const char  *reason, *key;

    reason = "unset";

    v = ngx_http_civchat_company(&lcf, value, &reason);

    if (v == NULL) {
        return;
    }

    ngx_fuzz_assert(reason == NULL);
    ngx_fuzz_assert(json_is_object(v) && json_object_size(v) > 0);
    ngx_fuzz_assert(lcf.max_attrs == 0
                    || json_object_size(v) <= lcf.max_attrs);

    json_object_foreach(v, key, item) {
        ngx_fuzz_assert(!json_is_object(item));
    }

    fuzz_check_strings(v);

    again = ngx_http_civchat_company(&lcf, v, &reason);

    if (again == NULL || !json_equal(again, v)) {
        ngx_fuzz_fail("company: %s, then %s", json_dumps(v, JSON_ENCODE_ANY),
                      again ? json_dumps(again, JSON_ENCODE_ANY) : reason);
    }

    json_decref(again);
    json_decref(v);
}
