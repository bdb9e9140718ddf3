
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_attrs.h"


/*
 * The entry points for attributes from request JSON:
 * ngx_http_civchat_attr_value() sends a value to its standard attribute
 * (standard.c), to its declared type or to the rules of undeclared
 * attributes; user_id, email, company, the reserved and automatic names,
 * the widget's state and civchat_attribute's type names have functions
 * of their own.  The helpers that the attribute files share are here
 * too (ngx_http_civchat_attrs.h); names are normalized in name.c,
 * numbers read and written in number.c, dates and times in time.c.
 */



typedef struct {
    ngx_str_t                     name;
    ngx_uint_t                    type;
    ngx_http_civchat_convert_pt   convert;
} ngx_http_civchat_type_t;


static ngx_uint_t ngx_http_civchat_not_given(json_t *value);
static ngx_uint_t ngx_http_civchat_in_list(const ngx_str_t *list,
    ngx_str_t *name);

static ngx_uint_t ngx_http_civchat_declared_type(
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *name);
static json_t *ngx_http_civchat_scalar_string(
    ngx_http_civchat_loc_conf_t *lcf, json_t *value, const char **reason);
static json_t *ngx_http_civchat_to_string(ngx_http_civchat_loc_conf_t *lcf,
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


json_t *
ngx_http_civchat_attr_value(ngx_http_civchat_loc_conf_t *lcf,
    ngx_str_t *name, json_t *value, const char **reason)
{
    ngx_uint_t                      type;
    ngx_http_civchat_convert_pt     convert;
    const ngx_http_civchat_type_t  *t;

    *reason = NULL;

    if (ngx_http_civchat_not_given(value)) {
        return NULL;
    }

    convert = ngx_http_civchat_standard_find(name);

    if (convert != NULL) {
        return convert(lcf, value, reason);
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
