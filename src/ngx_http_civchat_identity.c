
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/random.h>

#include "ngx_http_civchat.h"


/*
 * Identity (SPEC §3): the visitor key and its cookie, and the rules that
 * decide which profile a request belongs to.  The whole resolution, the
 * attribute changes and the page view happen under one hold of the zone
 * mutex, so two workers never interleave their changes to one profile.
 */


static void ngx_http_civchat_read_cookie(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *value);
static void ngx_http_civchat_body_key(ngx_http_civchat_ctx_t *ctx);
static void ngx_http_civchat_identity_fields(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_http_civchat_profile_t *ngx_http_civchat_current(
    ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx);
static ngx_http_civchat_profile_t *ngx_http_civchat_visit(
    ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_profile_t *k);
static ngx_http_civchat_profile_t *ngx_http_civchat_visit_email(
    ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_profile_t *k);
static ngx_http_civchat_profile_t *ngx_http_civchat_reset(
    ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx);
static ngx_http_civchat_profile_t *ngx_http_civchat_create(
    ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx, ngx_uint_t adopt);
static ngx_http_civchat_profile_t *ngx_http_civchat_switch(
    ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *to);
static ngx_int_t ngx_http_civchat_merge(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_profile_t *from,
    ngx_http_civchat_profile_t *into);
static ngx_int_t ngx_http_civchat_set_identity(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_profile_t *p,
    u_char kind, ngx_str_t *value);
static void ngx_http_civchat_apply_identity(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_profile_t *p);
static ngx_int_t ngx_http_civchat_index_is(ngx_http_civchat_index_t *ix,
    ngx_str_t *value);
static ngx_int_t ngx_http_civchat_claimed(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_ignore(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, const char *name, size_t len,
    const char *reason);
static json_t *ngx_http_civchat_load_attrs(ngx_http_request_t *r,
    ngx_http_civchat_profile_t *p);
static ngx_int_t ngx_http_civchat_apply_attrs(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, json_t *attrs);
static ngx_int_t ngx_http_civchat_apply_one(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, json_t *attrs, const char *raw,
    json_t *value, ngx_uint_t *count);
static ngx_int_t ngx_http_civchat_remove(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, json_t *attrs, const char *raw);
static json_t *ngx_http_civchat_profile_json(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, json_t *attrs);
static ngx_int_t ngx_http_civchat_change(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, json_t *attrs, ngx_str_t *name,
    json_t *value);
static void ngx_http_civchat_set_automatic(ngx_http_civchat_ctx_t *ctx,
    json_t *attrs, const char *name, ngx_str_t *value);
static void ngx_http_civchat_fill_geo(ngx_http_civchat_ctx_t *ctx,
    json_t *attrs);
static void ngx_http_civchat_page_view(ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_profile_t *p);
static uint32_t ngx_http_civchat_auto_sig(ngx_http_civchat_ctx_t *ctx);
static ngx_uint_t ngx_http_civchat_attribute_key(ngx_str_t *name);
static ngx_uint_t ngx_http_civchat_body_attrs(ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_save_attrs(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_profile_t *p,
    json_t *attrs);
static ngx_int_t ngx_http_civchat_copy_user(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_profile_t *p,
    json_t *attrs);
static void ngx_http_civchat_publish_changes(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_copy_index(ngx_http_request_t *r,
    ngx_http_civchat_index_t *ix, ngx_str_t *out);


#define ngx_http_civchat_visits(ctx)                                       \
    ((ctx)->endpoint == NGX_HTTP_CIVCHAT_INIT                              \
     || (ctx)->endpoint == NGX_HTTP_CIVCHAT_PAGE_HIT                       \
     || (ctx)->endpoint == NGX_HTTP_CIVCHAT_PIXEL)

#define ngx_http_civchat_takes_attrs(ctx)                                  \
    ((ctx)->endpoint <= NGX_HTTP_CIVCHAT_UPDATE)


ngx_int_t
ngx_http_civchat_random(ngx_http_request_t *r, u_char *buf, size_t len)
{
    ssize_t                        n;
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);

    if (len > sizeof(mcf->random)) {
        return NGX_ERROR;
    }

    if (sizeof(mcf->random) - mcf->random_pos < len) {
        n = getrandom(mcf->random, sizeof(mcf->random), 0);

        if (n != (ssize_t) sizeof(mcf->random)) {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, ngx_errno,
                          "getrandom() failed");
            return NGX_ERROR;
        }

        mcf->random_pos = 0;
    }

    ngx_memcpy(buf, mcf->random + mcf->random_pos, len);

    /* bytes handed out are never handed out again */
    ngx_memzero(mcf->random + mcf->random_pos, len);
    mcf->random_pos += len;

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_mint_key(ngx_http_request_t *r, u_char *key)
{
    u_char      bytes[NGX_HTTP_CIVCHAT_KEY_LEN * 2];
    ngx_uint_t  i, n;

    static u_char  alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "abcdefghijklmnopqrstuvwxyz0123456789";

    n = 0;

    while (n < NGX_HTTP_CIVCHAT_KEY_LEN) {
        if (ngx_http_civchat_random(r, bytes, sizeof(bytes)) != NGX_OK) {
            return NGX_ERROR;
        }

        /* rejection sampling keeps the 62 characters equally likely */
        for (i = 0; i < sizeof(bytes) && n < NGX_HTTP_CIVCHAT_KEY_LEN; i++) {
            if (bytes[i] < 248) {
                key[n++] = alphabet[bytes[i] % 62];
            }
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_valid_key(u_char *p, size_t len)
{
    size_t  i;

    if (len < NGX_HTTP_CIVCHAT_KEY_MIN || len > NGX_HTTP_CIVCHAT_KEY_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z')
              || (p[i] >= '0' && p[i] <= '9')))
        {
            return 0;
        }
    }

    return 1;
}


void
ngx_http_civchat_cookie_key(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *key)
{
    ngx_http_civchat_read_cookie(r, lcf, key);

    if (!ngx_http_civchat_valid_key(key->data, key->len)) {
        ngx_str_null(key);
    }
}


void
ngx_http_civchat_read_key(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    ngx_str_t  value;

    ngx_http_civchat_read_cookie(r, ctx->lcf, &value);

    if (value.len && ngx_http_civchat_valid_key(value.data, value.len)) {
        ctx->key = value;
        return;
    }

    if (value.len) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "civchat: client sent invalid cookie \"%V\", ignored",
                      &value);
    }

    ngx_http_civchat_body_key(ctx);
}


/* the one place where nginx's cookie API differs between versions */

static void
ngx_http_civchat_read_cookie(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *value)
{
    ngx_str_null(value);

#if (nginx_version >= 1023000)

    (void) ngx_http_parse_multi_header_lines(r, r->headers_in.cookie,
                                             &lcf->cookie_name, value);
#else

    (void) ngx_http_parse_multi_header_lines(&r->headers_in.cookies,
                                             &lcf->cookie_name, value);
#endif
}


static void
ngx_http_civchat_body_key(ngx_http_civchat_ctx_t *ctx)
{
    json_t  *v;

    v = json_object_get(ctx->body, "key");

    if (!json_is_string(v)) {
        v = json_object_get(ctx->body, "user_key");
    }

    if (json_is_string(v)
        && ngx_http_civchat_valid_key((u_char *) json_string_value(v),
                                      json_string_length(v)))
    {
        ctx->key.data = (u_char *) json_string_value(v);
        ctx->key.len = json_string_length(v);
    }
}


ngx_int_t
ngx_http_civchat_set_cookie(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    u_char                       *cookie, *p;
    size_t                        len;
    ngx_uint_t                    secure;
    ngx_table_elt_t              *set_cookie;
    ngx_http_civchat_loc_conf_t  *lcf;

    lcf = ctx->lcf;
    secure = 0;

#if (NGX_HTTP_SSL)
    secure = (r->connection->ssl != NULL);
#endif

    len = lcf->cookie_name.len + 1 + ctx->user.key.len
          + sizeof("; Path=/; Max-Age=; SameSite=Lax") - 1 + NGX_TIME_T_LEN;

    if (lcf->cookie_httponly) {
        len += sizeof("; HttpOnly") - 1;
    }

    if (secure) {
        len += sizeof("; Secure") - 1;
    }

    if (lcf->cookie_domain.len) {
        len += sizeof("; Domain=") - 1 + lcf->cookie_domain.len;
    }

    cookie = ngx_pnalloc(r->pool, len);
    if (cookie == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(cookie, "%V=%V; Path=/; Max-Age=%T; SameSite=Lax",
                    &lcf->cookie_name, &ctx->user.key, lcf->cookie_max_age);

    if (lcf->cookie_domain.len) {
        p = ngx_sprintf(p, "; Domain=%V", &lcf->cookie_domain);
    }

    if (lcf->cookie_httponly) {
        p = ngx_cpymem(p, "; HttpOnly", sizeof("; HttpOnly") - 1);
    }

    if (secure) {
        p = ngx_cpymem(p, "; Secure", sizeof("; Secure") - 1);
    }

    set_cookie = ngx_list_push(&r->headers_out.headers);
    if (set_cookie == NULL) {
        return NGX_ERROR;
    }

    set_cookie->hash = 1;
    ngx_str_set(&set_cookie->key, "Set-Cookie");
    set_cookie->value.len = p - cookie;
    set_cookie->value.data = cookie;

#if (nginx_version >= 1023000)
    set_cookie->next = NULL;
#endif

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_resolve(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    json_t                      *attrs;
    uint32_t                     sig;
    ngx_int_t                    rc;
    ngx_http_civchat_zone_t     *zone;
    ngx_http_civchat_profile_t  *k, *p;

    zone = ctx->lcf->zone;
    attrs = NULL;
    rc = NGX_ERROR;
    sig = 0;

    if (ngx_http_civchat_takes_attrs(ctx)) {
        ngx_http_civchat_identity_fields(r, ctx);
    }

    ngx_http_civchat_store_lock(zone);

    k = ngx_http_civchat_current(r, ctx);

    switch (ctx->endpoint) {

    case NGX_HTTP_CIVCHAT_INIT:
    case NGX_HTTP_CIVCHAT_PAGE_HIT:
    case NGX_HTTP_CIVCHAT_PIXEL:
        p = ngx_http_civchat_visit(r, ctx, k);
        break;

    case NGX_HTTP_CIVCHAT_RESET_AUTH:
        p = ngx_http_civchat_reset(r, ctx);
        break;

    default: /* update, event, product_event: never switch */
        p = (k != NULL) ? k : ngx_http_civchat_create(r, ctx, 1);
        break;
    }

    if (p == NULL) {
        goto done;
    }

    ngx_http_civchat_store_touch(zone, p);

    if (ngx_http_civchat_visits(ctx)) {
        sig = ngx_http_civchat_auto_sig(ctx);

        if (sig == p->auto_sig && p->name_pos != 0xffff
            && !ngx_http_civchat_body_attrs(ctx))
        {
            /* a visit that changes no attribute: they are not read */
            ngx_http_civchat_page_view(ctx, p);
            (void) ngx_http_civchat_store_set_ua(zone, p, &ctx->user_agent);
            rc = ngx_http_civchat_copy_user(r, ctx, p, NULL);
            goto done;
        }
    }

    if (ctx->endpoint == NGX_HTTP_CIVCHAT_UPDATE) {
        ngx_http_civchat_apply_identity(r, ctx, p);
    }

    attrs = ngx_http_civchat_load_attrs(r, p);
    if (attrs == NULL) {
        goto done;
    }

    if (ngx_http_civchat_takes_attrs(ctx)) {
        if (ngx_http_civchat_apply_attrs(r, ctx, attrs) != NGX_OK) {
            goto done;
        }
    }

    if (ngx_http_civchat_visits(ctx)) {
        ngx_http_civchat_page_view(ctx, p);
        ngx_http_civchat_set_automatic(ctx, attrs, "last_ip", &ctx->ip);
        (void) ngx_http_civchat_store_set_ua(zone, p, &ctx->user_agent);
        ngx_http_civchat_set_automatic(ctx, attrs, "browser_language",
                                       &ctx->language);
        ngx_http_civchat_fill_geo(ctx, attrs);
    }

    rc = ngx_http_civchat_save_attrs(r, ctx, p, attrs);

    if (rc == NGX_ERROR) {
        goto done;
    }

    if (rc == NGX_OK && ngx_http_civchat_visits(ctx)) {
        /* stored: until they change, the next visits need not read */
        p->auto_sig = sig;
    }

    rc = ngx_http_civchat_copy_user(r, ctx, p, attrs);

    if (rc == NGX_OK) {
        ngx_http_civchat_publish_changes(r, ctx);
    }

done:

    ngx_http_civchat_store_unlock(zone);

    json_decref(attrs);

    return rc;
}


/*
 * The automatic attributes a visit stores (last_ip, browser_language,
 * the geo ones), hashed: equal to the profile's auto_sig, they are
 * stored already.
 */

static uint32_t
ngx_http_civchat_auto_sig(ngx_http_civchat_ctx_t *ctx)
{
    u_char      len;
    uint32_t    crc;
    ngx_str_t  *v;
    ngx_uint_t  i;

    ngx_str_t  *values[] = { &ctx->ip, &ctx->language, &ctx->geo.country,
                             &ctx->geo.region, &ctx->geo.city,
                             &ctx->geo.timezone };

    ngx_crc32_init(crc);

    for (i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        v = values[i];
        len = (u_char) v->len;

        ngx_crc32_update(&crc, &len, 1);
        ngx_crc32_update(&crc, v->data, v->len);
    }

    ngx_crc32_final(crc);

    /* 0 is "not known" */
    return crc ? crc : 1;
}


/* a body key that may name an attribute: not identity, not reserved */

static ngx_uint_t
ngx_http_civchat_attribute_key(ngx_str_t *name)
{
    return !ngx_http_civchat_reserved(name)
           && ngx_strcmp(name->data, "user_id") != 0
           && ngx_strcmp(name->data, "email") != 0;
}


/* whether the body has anything for the attributes (apply_one()) */

static ngx_uint_t
ngx_http_civchat_body_attrs(ngx_http_civchat_ctx_t *ctx)
{
    json_t      *value;
    ngx_str_t    name;
    const char  *key;

    if (ctx->body == NULL) {
        return 0;
    }

    json_object_foreach(ctx->body, key, value) {
        name.data = (u_char *) key;
        name.len = ngx_strlen(key);

        if (!ngx_http_civchat_attribute_key(&name)
            || json_is_null(value)
            || (json_is_string(value) && json_string_length(value) == 0))
        {
            continue;
        }

        return 1;
    }

    return 0;
}


/* U and E of SPEC §3.2, read before the zone is locked */

static void
ngx_http_civchat_identity_fields(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    json_t      *v;
    const char  *reason;

    v = json_object_get(ctx->body, "user_id");

    if (v != NULL
        && ngx_http_civchat_user_id(r->pool, v, &ctx->user_id, &reason)
           != NGX_OK)
    {
        ngx_str_null(&ctx->user_id);

        if (reason) {
            (void) ngx_http_civchat_ignore(r, ctx, "user_id", 7, reason);
        }
    }

    v = json_object_get(ctx->body, "email");

    if (v != NULL
        && ngx_http_civchat_email(r->pool, v, &ctx->email, &reason) != NGX_OK)
    {
        ngx_str_null(&ctx->email);

        if (reason) {
            (void) ngx_http_civchat_ignore(r, ctx, "email", 5, reason);
        }
    }
}


/* K: the profile of the request's key; an alias resolves to its owner */

static ngx_http_civchat_profile_t *
ngx_http_civchat_current(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    ngx_http_civchat_profile_t  *k;

    if (ctx->key.len == 0) {
        return NULL;
    }

    k = ngx_http_civchat_store_find(ctx->lcf->zone, NGX_HTTP_CIVCHAT_BY_KEY,
                                    &ctx->key);
    if (k != NULL) {
        ngx_http_civchat_store_touch(ctx->lcf->zone, k);
    }

    return k;
}


static ngx_http_civchat_profile_t *
ngx_http_civchat_visit(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_profile_t *k)
{
    ngx_http_civchat_profile_t  *x, *p;

    if (ctx->user_id.len == 0) {
        if (ctx->email.len) {
            return ngx_http_civchat_visit_email(r, ctx, k);
        }

        return (k != NULL) ? k : ngx_http_civchat_create(r, ctx, 1);
    }

    /* user_id beats the email, which is then only an attribute */

    x = ngx_http_civchat_store_find(ctx->lcf->zone,
                                    NGX_HTTP_CIVCHAT_BY_USER_ID,
                                    &ctx->user_id);
    if (x != NULL) {
        p = (x == k) ? k : ngx_http_civchat_switch(r, ctx, k, x);

    } else if (k != NULL && k->user_id.len == 0) {
        p = k;

        if (ngx_http_civchat_set_identity(r, ctx, p,
                                          NGX_HTTP_CIVCHAT_BY_USER_ID,
                                          &ctx->user_id)
            != NGX_OK)
        {
            return NULL;
        }

    } else {
        p = ngx_http_civchat_create(r, ctx, k == NULL);
        if (p == NULL
            || ngx_http_civchat_set_identity(r, ctx, p,
                                             NGX_HTTP_CIVCHAT_BY_USER_ID,
                                             &ctx->user_id)
               != NGX_OK)
        {
            return NULL;
        }

        if (k != NULL) {
            p = ngx_http_civchat_switch(r, ctx, k, p);
        }
    }

    if (p != NULL && ctx->email.len) {
        ngx_http_civchat_apply_identity(r, ctx, p);
    }

    return p;
}


static ngx_http_civchat_profile_t *
ngx_http_civchat_visit_email(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_profile_t *k)
{
    ngx_http_civchat_profile_t   *x, *p;
    ngx_http_civchat_loc_conf_t  *lcf;

    lcf = ctx->lcf;

    if (k != NULL && ngx_http_civchat_index_is(&k->email, &ctx->email)) {
        return k;
    }

    if (!lcf->unified) {
        /* the legacy behaviour: the email is only an attribute */
        p = (k != NULL) ? k : ngx_http_civchat_create(r, ctx, 1);
        goto write_email;
    }

    x = ngx_http_civchat_store_find(lcf->zone, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                    &ctx->email);

    if (x != NULL && lcf->authorize_by_email) {

        if (k != NULL && k->email.len == 0 && k->user_id.len == 0) {
            return (ngx_http_civchat_merge(r, ctx, k, x) == NGX_OK)
                   ? ngx_http_civchat_switch(r, ctx, NULL, x) : NULL;
        }

        return ngx_http_civchat_switch(r, ctx, k, x);
    }

    if (x != NULL) {
        /* knowing an email must not hand over someone's profile */
        if (ngx_http_civchat_claimed(r, ctx) != NGX_OK) {
            return NULL;
        }

        return (k != NULL) ? k : ngx_http_civchat_create(r, ctx, 1);
    }

    if (k == NULL || k->email.len == 0) {
        p = (k != NULL) ? k : ngx_http_civchat_create(r, ctx, 1);
        goto write_email;
    }

    p = ngx_http_civchat_create(r, ctx, 0);
    if (p == NULL) {
        return NULL;
    }

    p = ngx_http_civchat_switch(r, ctx, k, p);

write_email:

    if (p == NULL
        || ngx_http_civchat_set_identity(r, ctx, p, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                         &ctx->email)
           != NGX_OK)
    {
        return NULL;
    }

    return p;
}


/* SPEC §3.3: the request's key is never used again */

static ngx_http_civchat_profile_t *
ngx_http_civchat_reset(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    ngx_http_civchat_zone_t      *zone;
    ngx_http_civchat_profile_t   *x, *p;
    ngx_http_civchat_loc_conf_t  *lcf;

    lcf = ctx->lcf;
    zone = lcf->zone;
    p = NULL;

    if (ngx_http_civchat_add_event(r, ctx, "auth_reset", NULL, NULL)
        != NGX_OK)
    {
        return NULL;
    }

    if (ctx->user_id.len) {
        p = ngx_http_civchat_store_find(zone, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                        &ctx->user_id);
        if (p == NULL) {
            p = ngx_http_civchat_create(r, ctx, 0);
            if (p == NULL
                || ngx_http_civchat_set_identity(r, ctx, p,
                                                 NGX_HTTP_CIVCHAT_BY_USER_ID,
                                                 &ctx->user_id)
                   != NGX_OK)
            {
                return NULL;
            }
        }

        if (ctx->email.len) {
            ngx_http_civchat_apply_identity(r, ctx, p);
        }

        return p;
    }

    if (ctx->email.len == 0) {
        return ngx_http_civchat_create(r, ctx, 0);
    }

    x = ngx_http_civchat_store_find(zone, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                    &ctx->email);

    if (x != NULL && lcf->unified && lcf->authorize_by_email) {
        return x;
    }

    p = ngx_http_civchat_create(r, ctx, 0);
    if (p == NULL) {
        return NULL;
    }

    if (x != NULL && lcf->unified) {
        return (ngx_http_civchat_claimed(r, ctx) == NGX_OK) ? p : NULL;
    }

    if (ngx_http_civchat_set_identity(r, ctx, p, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                      &ctx->email)
        != NGX_OK)
    {
        return NULL;
    }

    return p;
}


/*
 * A new profile.  "adopt" takes the request's well-formed but unknown
 * key, so that identity survives a lost zone; otherwise a fresh key.
 */

static ngx_http_civchat_profile_t *
ngx_http_civchat_create(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_uint_t adopt)
{
    u_char                      *fresh;
    ngx_str_t                    key;
    ngx_http_civchat_profile_t  *p;

    if (adopt && ctx->key.len
        && ctx->endpoint != NGX_HTTP_CIVCHAT_RESET_AUTH
        && ngx_http_civchat_store_find(ctx->lcf->zone,
                                       NGX_HTTP_CIVCHAT_BY_KEY, &ctx->key)
           == NULL)
    {
        key = ctx->key;

    } else {
        fresh = ngx_pnalloc(r->pool, NGX_HTTP_CIVCHAT_KEY_LEN);
        if (fresh == NULL) {
            return NULL;
        }

        if (ngx_http_civchat_mint_key(r, fresh) != NGX_OK) {
            return NULL;
        }

        key.data = fresh;
        key.len = NGX_HTTP_CIVCHAT_KEY_LEN;
    }

    p = ngx_http_civchat_store_create(ctx->lcf->zone, &key, ngx_time());
    if (p == NULL) {
        return NULL;
    }

    ctx->created = 1;

    if (ngx_http_civchat_add_event(r, ctx, "user_created", NULL, NULL)
        != NGX_OK)
    {
        return NULL;
    }

    return p;
}


static ngx_http_civchat_profile_t *
ngx_http_civchat_switch(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *to)
{
    json_t     *data;
    ngx_int_t   rc;

    ngx_http_civchat_store_touch(ctx->lcf->zone, to);

    data = json_object();
    if (data == NULL) {
        return NULL;
    }

    if (from != NULL) {
        json_object_set_new(data, "from",
                            json_stringn((char *) from->key.data,
                                         from->key.len));
    }

    rc = ngx_http_civchat_add_event(r, ctx, "user_identified", NULL, data);

    json_decref(data);

    return (rc == NGX_OK) ? to : NULL;
}


/*
 * An anonymous K merged into X: X keeps its own values, gains the ones
 * only K had, and K's key becomes an alias of X.
 */

static ngx_int_t
ngx_http_civchat_merge(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *into)
{
    char        *text;
    json_t      *fa, *ia, *data;
    ngx_int_t    rc;
    ngx_str_t    name;

    fa = ngx_http_civchat_load_attrs(r, from);
    ia = ngx_http_civchat_load_attrs(r, into);
    data = json_object();
    text = NULL;
    rc = NGX_ERROR;

    if (fa == NULL || ia == NULL || data == NULL) {
        goto done;
    }

    if (json_object_size(fa)) {
        json_object_update_missing(ia, fa);

        text = json_dumps(ia, JSON_COMPACT);
        if (text == NULL
            || ngx_http_civchat_store_set_attrs(ctx->lcf->zone, into,
                                                (u_char *) text,
                                                ngx_strlen(text))
               != NGX_OK)
        {
            goto done;
        }
    }

    name.len = from->key.len;
    name.data = ngx_pnalloc(r->pool, name.len);
    if (name.data == NULL) {
        goto done;
    }

    ngx_memcpy(name.data, from->key.data, name.len);
    json_object_set_new(data, "from", json_stringn((char *) name.data,
                                                   name.len));

    ngx_http_civchat_store_merge(ctx->lcf->zone, from, into);

    rc = ngx_http_civchat_add_event(r, ctx, "user_merged", &name, data);

done:

    free(text);
    json_decref(fa);
    json_decref(ia);
    json_decref(data);

    return rc;
}


static ngx_int_t
ngx_http_civchat_set_identity(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_profile_t *p, u_char kind,
    ngx_str_t *value)
{
    json_t                    *data, *old;
    ngx_str_t                  name;
    ngx_int_t                  rc;
    ngx_http_civchat_index_t  *ix;

    ix = (kind == NGX_HTTP_CIVCHAT_BY_USER_ID) ? &p->user_id : &p->email;

    if (ngx_http_civchat_index_is(ix, value)) {
        return NGX_OK;
    }

    if (kind == NGX_HTTP_CIVCHAT_BY_USER_ID) {
        ngx_str_set(&name, "user_id");

    } else {
        ngx_str_set(&name, "email");
    }

    old = ix->len ? json_stringn((char *) ix->data, ix->len) : json_null();

    data = json_pack("{s:o,s:s%}", "old", old, "new",
                     (char *) value->data, value->len);
    if (data == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_civchat_store_set_index(ctx->lcf->zone, p, kind, value);

    if (rc == NGX_OK) {
        rc = ngx_http_civchat_add_event(r, ctx, "profile_updated", &name,
                                        data);
    }

    json_decref(data);

    return rc;
}


/*
 * user_id and email as attributes of a resolved profile (update, and
 * the email beside a user_id): a value another profile owns is refused.
 */

static void
ngx_http_civchat_apply_identity(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_profile_t *p)
{
    ngx_http_civchat_zone_t     *zone;
    ngx_http_civchat_profile_t  *x;

    zone = ctx->lcf->zone;

    if (ctx->endpoint == NGX_HTTP_CIVCHAT_UPDATE && ctx->user_id.len
        && !ngx_http_civchat_index_is(&p->user_id, &ctx->user_id))
    {
        x = ngx_http_civchat_store_find(zone, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                        &ctx->user_id);
        if (x != NULL && x != p) {
            (void) ngx_http_civchat_ignore(r, ctx, "user_id", 7,
                                           "conflict");

        } else {
            (void) ngx_http_civchat_set_identity(r, ctx, p,
                                                 NGX_HTTP_CIVCHAT_BY_USER_ID,
                                                 &ctx->user_id);
        }
    }

    if (ctx->email.len == 0
        || ngx_http_civchat_index_is(&p->email, &ctx->email))
    {
        return;
    }

    if (ctx->endpoint == NGX_HTTP_CIVCHAT_UPDATE || ctx->lcf->unified) {
        x = ngx_http_civchat_store_find(zone, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                        &ctx->email);
        if (x != NULL && x != p) {
            (void) ngx_http_civchat_ignore(r, ctx, "email", 5, "conflict");
            return;
        }
    }

    (void) ngx_http_civchat_set_identity(r, ctx, p, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                         &ctx->email);
}


static ngx_int_t
ngx_http_civchat_index_is(ngx_http_civchat_index_t *ix, ngx_str_t *value)
{
    return ix->len && ix->len == value->len
           && ngx_memcmp(ix->data, value->data, value->len) == 0;
}


static ngx_int_t
ngx_http_civchat_claimed(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    json_t     *data;
    ngx_int_t   rc;

    /* the visitor is told the email was not taken */
    if (ngx_http_civchat_ignore(r, ctx, "email", 5, "conflict") != NGX_OK) {
        return NGX_ERROR;
    }

    data = json_pack("{s:s%}", "email", (char *) ctx->email.data,
                     ctx->email.len);
    if (data == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_civchat_add_event(r, ctx, "email_claimed", NULL, data);

    json_decref(data);

    return rc;
}


static ngx_int_t
ngx_http_civchat_ignore(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    const char *name, size_t len, const char *reason)
{
    ngx_http_civchat_ignored_t  *ig;

    ig = ngx_array_push(&ctx->ignored);
    if (ig == NULL) {
        return NGX_ERROR;
    }

    ig->name.data = ngx_pnalloc(r->pool, len);
    if (ig->name.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ig->name.data, name, len);
    ig->name.len = len;
    ig->reason = reason;

    return NGX_OK;
}


static json_t *
ngx_http_civchat_load_attrs(ngx_http_request_t *r,
    ngx_http_civchat_profile_t *p)
{
    json_t  *attrs;

    if (p->attrs_len == 0) {
        return json_object();
    }

    attrs = ngx_http_civchat_json_parse(r->pool,
                                        ngx_http_civchat_profile_attrs(p),
                                        p->attrs_len, NULL);

    if (!json_is_object(attrs)) {
        /* cannot happen: only json.c's own output is stored */
        json_decref(attrs);
        return json_object();
    }

    return attrs;
}


static ngx_int_t
ngx_http_civchat_apply_attrs(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, json_t *attrs)
{
    json_t      *value;
    const char  *raw;
    ngx_uint_t   count;

    count = 0;

    json_object_foreach(ctx->body, raw, value) {
        if (ngx_http_civchat_apply_one(r, ctx, attrs, raw, value, &count)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_apply_one(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    json_t *attrs, const char *raw, json_t *value, ngx_uint_t *count)
{
    json_t      *v;
    ngx_int_t    rc;
    ngx_str_t    rname, name;
    const char  *reason;

    rname.data = (u_char *) raw;
    rname.len = ngx_strlen(raw);

    if (!ngx_http_civchat_attribute_key(&rname)) {
        /* not attributes */
        return NGX_OK;
    }

    if (json_is_null(value)
        || (json_is_string(value) && json_string_length(value) == 0))
    {
        /* "not given" in the browser; the server API removes with it */
        return ctx->api ? ngx_http_civchat_remove(r, ctx, attrs, raw) : NGX_OK;
    }

    if (ngx_strcmp(raw, "state") == 0
        && ngx_http_civchat_widget_state(value))
    {
        ctx->state.data = (u_char *) json_string_value(value);
        ctx->state.len = json_string_length(value);
        return NGX_OK;
    }

    rc = ngx_http_civchat_normalize_name(r->pool, rname.data, rname.len,
                                         &name, &reason);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_civchat_ignore(r, ctx, raw, rname.len, reason);
    }

    if (ngx_http_civchat_automatic(&name)) {
        return ngx_http_civchat_ignore(r, ctx, raw, rname.len, "read_only");
    }

    if ((name.len == 7 && ngx_strncmp(name.data, "user_id", 7) == 0)
        || (name.len == 5 && ngx_strncmp(name.data, "email", 5) == 0))
    {
        /* "Email" or " user_id": a spelling of an identity field */
        return ngx_http_civchat_ignore(r, ctx, raw, rname.len, "reserved");
    }

    if (*count >= ctx->lcf->max_attrs) {
        return ngx_http_civchat_ignore(r, ctx, raw, rname.len,
                                       "too_many_attributes");
    }

    if (name.len == 7 && ngx_strncmp(name.data, "company", 7) == 0) {
        v = ngx_http_civchat_company(ctx->lcf, value, &reason);

    } else {
        v = ngx_http_civchat_attr_value(ctx->lcf, &name, value, &reason);
    }

    if (v == NULL) {
        if (reason == NULL) {
            return NGX_OK;
        }

        return ngx_http_civchat_ignore(r, ctx, raw, rname.len, reason);
    }

    (*count)++;

    rc = ngx_http_civchat_change(r, ctx, attrs, &name, v);

    json_decref(v);

    return rc;
}


static ngx_int_t
ngx_http_civchat_remove(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    json_t *attrs, const char *raw)
{
    json_t      *old, *data;
    ngx_int_t    rc;
    ngx_str_t    name;
    const char  *reason;

    rc = ngx_http_civchat_normalize_name(r->pool, (u_char *) raw,
                                         ngx_strlen(raw), &name, &reason);
    if (rc != NGX_OK) {
        return (rc == NGX_ERROR) ? NGX_ERROR
               : ngx_http_civchat_ignore(r, ctx, raw, ngx_strlen(raw),
                                         reason);
    }

    old = json_object_getn(attrs, (char *) name.data, name.len);
    if (old == NULL) {
        return NGX_OK;
    }

    data = json_pack("{s:O,s:n}", "old", old, "new");
    if (data == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_civchat_add_event(r, ctx, "profile_updated", &name, data);

    json_decref(data);

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    json_object_deln(attrs, (char *) name.data, name.len);
    ctx->changed = 1;

    return NGX_OK;
}


/* one profile_updated event per attribute whose value really changes */

static ngx_int_t
ngx_http_civchat_change(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    json_t *attrs, ngx_str_t *name, json_t *value)
{
    json_t     *old, *data;
    ngx_int_t   rc;

    old = json_object_getn(attrs, (char *) name->data, name->len);

    if (old != NULL && json_equal(old, value)) {
        return NGX_OK;
    }

    data = json_pack("{s:O?,s:O}", "old", old, "new", value);
    if (data == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_civchat_add_event(r, ctx, "profile_updated", name, data);

    json_decref(data);

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    if (json_object_setn(attrs, (char *) name->data, name->len, value) != 0) {
        return NGX_ERROR;
    }

    ctx->changed = 1;

    return NGX_OK;
}


/* automatic attributes change with every visit and emit no event */

static void
ngx_http_civchat_set_automatic(ngx_http_civchat_ctx_t *ctx, json_t *attrs,
    const char *name, ngx_str_t *value)
{
    json_t  *old;

    if (value->len == 0) {
        return;
    }

    old = json_object_get(attrs, name);

    if (json_is_string(old) && json_string_length(old) == value->len
        && ngx_memcmp(json_string_value(old), value->data, value->len) == 0)
    {
        return;
    }

    json_object_set_new(attrs, name,
                        json_stringn((char *) value->data, value->len));
    ctx->changed = 1;
}


/* GeoIP fills the geo attributes the site has not set itself */

static void
ngx_http_civchat_fill_geo(ngx_http_civchat_ctx_t *ctx, json_t *attrs)
{
    ngx_uint_t   i;
    ngx_str_t   *value;

    static const char  *names[] = { "country", "region", "city",
                                    "timezone" };

    for (i = 0; i < 4; i++) {
        value = &ctx->geo.country + i;

        if (value->len && json_object_get(attrs, names[i]) == NULL) {
            json_object_set_new(attrs, names[i],
                                json_stringn((char *) value->data,
                                             value->len));
            ctx->changed = 1;
        }
    }
}


static void
ngx_http_civchat_page_view(ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_profile_t *p)
{
    time_t  now;

    now = ngx_time();

    if (p->sessions == 0 || now - p->last_seen >= ctx->lcf->session_timeout) {
        p->sessions++;
    }

    p->page_views++;
    p->last_seen = (uint32_t) now;

    ctx->lcf->zone->sh->changes++;
}


static ngx_int_t
ngx_http_civchat_save_attrs(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_profile_t *p,
    json_t *attrs)
{
    size_t  len;
    u_char  *text;

    if (!ctx->changed) {
        /* a page view of a profile whose attributes stay as they are */
        return NGX_OK;
    }

    len = ngx_http_civchat_json_size(attrs);

    if (len == 2) {
        /* "{}" */
        return ngx_http_civchat_store_set_attrs(ctx->lcf->zone, p, NULL, 0);
    }

    if (len == p->attrs_len) {
        /* an unchanged profile is the common case of a page view */
        text = ngx_pnalloc(r->pool, len);
        if (text == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_http_civchat_json_write(text, attrs);

        if (ngx_memcmp(text, ngx_http_civchat_profile_attrs(p), len) == 0) {
            return NGX_OK;
        }

        return ngx_http_civchat_store_set_attrs(ctx->lcf->zone, p, text, len);
    }

    text = ngx_pnalloc(r->pool, len);
    if (text == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_http_civchat_json_write(text, attrs);

    if (ngx_http_civchat_store_set_attrs(ctx->lcf->zone, p, text, len)
        != NGX_OK)
    {
        /* the zone cannot hold these attributes: keep the old ones */
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "civchat: attributes of profile \"%*s\" not saved",
                      (size_t) p->key.len, p->key.data);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_copy_user(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_profile_t *p, json_t *attrs)
{
    json_t                   *name;
    ngx_http_civchat_user_t  *u;

    u = &ctx->user;

    if (ngx_http_civchat_copy_index(r, &p->key, &u->key) != NGX_OK
        || ngx_http_civchat_copy_index(r, &p->user_id, &u->user_id) != NGX_OK
        || ngx_http_civchat_copy_index(r, &p->email, &u->email) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (attrs == NULL) {
        /* the name as it is in the attributes' text: no escapes */
        if (p->name_pos) {
            u->name.len = p->name_len;
            u->name.data = ngx_pnalloc(r->pool, u->name.len);
            if (u->name.data == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(u->name.data,
                       ngx_http_civchat_profile_attrs(p) + p->name_pos,
                       u->name.len);
        }

        name = NULL;

    } else {
        name = json_object_get(attrs, "name");
    }

    if (json_is_string(name)) {
        u->name.len = json_string_length(name);
        u->name.data = ngx_pnalloc(r->pool, u->name.len);
        if (u->name.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(u->name.data, json_string_value(name), u->name.len);
    }

    u->first_seen = p->first_seen;
    u->last_seen = p->last_seen;
    u->page_views = p->page_views;
    u->sessions = p->sessions;

    return NGX_OK;
}


/*
 * A visitor's open streams hear of their profile's changes, whoever
 * made them: {"name": ..., "old": ..., "new": ...}.  The zone is locked.
 */

static void
ngx_http_civchat_publish_changes(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    u_char                    *data, *p;
    size_t                     len;
    ngx_uint_t                 i;
    ngx_http_civchat_event_t  *ev;

    if (ctx->lcf->zone->sh->live == NULL) {
        return;
    }

    ev = ctx->events.elts;

    for (i = 0; i < ctx->events.nelts; i++) {
        if (ngx_strcmp(ev[i].type, "profile_updated") != 0
            || ev[i].attrs.len < 2)
        {
            continue;
        }

        len = sizeof("{\"name\":\"\",") + ev[i].name.len
              + ngx_escape_json(NULL, ev[i].name.data, ev[i].name.len)
              + ev[i].attrs.len;

        data = ngx_pnalloc(r->pool, len);
        if (data == NULL) {
            return;
        }

        p = ngx_cpymem(data, "{\"name\":\"", sizeof("{\"name\":\"") - 1);
        p = (u_char *) ngx_escape_json(p, ev[i].name.data, ev[i].name.len);
        p = ngx_cpymem(p, "\",", 2);
        p = ngx_cpymem(p, ev[i].attrs.data + 1, ev[i].attrs.len - 1);

        ngx_http_civchat_live_publish(ctx->lcf->zone, &ctx->user.key,
                                      NGX_HTTP_CIVCHAT_LIVE_PROFILE, data,
                                      p - data);
    }
}


static ngx_int_t
ngx_http_civchat_copy_index(ngx_http_request_t *r,
    ngx_http_civchat_index_t *ix, ngx_str_t *out)
{
    if (ix->len == 0) {
        ngx_str_null(out);
        return NGX_OK;
    }

    out->len = ix->len;
    out->data = ngx_pnalloc(r->pool, ix->len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, ix->data, ix->len);

    return NGX_OK;
}


/*
 * The server API (api.c): read, create-or-update, update or delete the
 * profile a key, user_id or email names, all under one hold of the lock.
 * NGX_DECLINED: no such profile.  *out gets the profile as JSON.
 */

ngx_int_t
ngx_http_civchat_api_profile(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, u_char kind, ngx_str_t *id, ngx_uint_t op,
    json_t **out)
{
    json_t                      *attrs;
    ngx_int_t                    rc;
    ngx_http_civchat_zone_t     *zone;
    ngx_http_civchat_profile_t  *p;

    zone = ctx->lcf->zone;
    attrs = NULL;
    *out = NULL;

    ctx->api = 1;

    if (op != NGX_HTTP_CIVCHAT_API_READ && op != NGX_HTTP_CIVCHAT_API_DELETE)
    {
        ngx_http_civchat_identity_fields(r, ctx);
    }

    ngx_http_civchat_store_lock(zone);

    p = ngx_http_civchat_store_find(zone, kind, id);

    if (p == NULL) {
        if (op != NGX_HTTP_CIVCHAT_API_UPSERT) {
            rc = NGX_DECLINED;
            goto done;
        }

        ctx->key.len = 0;

        if (kind == NGX_HTTP_CIVCHAT_BY_KEY
            && ngx_http_civchat_valid_key(id->data, id->len))
        {
            ctx->key = *id;
        }

        rc = NGX_ERROR;

        p = ngx_http_civchat_create(r, ctx, 1);
        if (p == NULL) {
            goto done;
        }

        if (kind != NGX_HTTP_CIVCHAT_BY_KEY
            && ngx_http_civchat_set_identity(r, ctx, p, kind, id) != NGX_OK)
        {
            goto done;
        }
    }

    rc = NGX_ERROR;

    if (op == NGX_HTTP_CIVCHAT_API_DELETE) {
        if (ngx_http_civchat_copy_user(r, ctx, p, NULL) != NGX_OK
            || ngx_http_civchat_add_event(r, ctx, "user_deleted", NULL, NULL)
               != NGX_OK)
        {
            goto done;
        }

        /* erasure: the profile, its aliases and its index entries */
        ngx_http_civchat_store_delete(zone, p);
        rc = NGX_OK;
        goto done;
    }

    ngx_http_civchat_store_touch(zone, p);

    if (op != NGX_HTTP_CIVCHAT_API_READ) {
        ngx_http_civchat_apply_identity(r, ctx, p);
    }

    attrs = ngx_http_civchat_load_attrs(r, p);
    if (attrs == NULL) {
        goto done;
    }

    if (op != NGX_HTTP_CIVCHAT_API_READ) {
        if (ngx_http_civchat_apply_attrs(r, ctx, attrs) != NGX_OK
            || ngx_http_civchat_save_attrs(r, ctx, p, attrs) == NGX_ERROR)
        {
            goto done;
        }
    }

    if (ngx_http_civchat_copy_user(r, ctx, p, attrs) != NGX_OK) {
        goto done;
    }

    *out = ngx_http_civchat_profile_json(zone, p, attrs);
    rc = (*out != NULL) ? NGX_OK : NGX_ERROR;

    ngx_http_civchat_publish_changes(r, ctx);

done:

    ngx_http_civchat_store_unlock(zone);

    json_decref(attrs);

    return rc;
}


static json_t *
ngx_http_civchat_profile_json(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, json_t *attrs)
{
    json_t                    *j, *aliases, *all;
    ngx_str_t                  ua;
    ngx_queue_t               *q;
    ngx_http_civchat_alias_t  *a;

    aliases = json_array();
    all = json_deep_copy(attrs);

    ngx_http_civchat_store_ua(zone, p, &ua);

    if (all != NULL && ua.len) {
        json_object_set_new(all, "user_agent",
                            json_stringn((char *) ua.data, ua.len));
    }

    for (q = ngx_queue_head(&p->aliases);
         aliases != NULL && q != ngx_queue_sentinel(&p->aliases);
         q = ngx_queue_next(q))
    {
        a = ngx_queue_data(q, ngx_http_civchat_alias_t, queue);
        json_array_append_new(aliases,
                              json_stringn((char *) a->index.data,
                                           a->index.len));
    }

    j = json_pack("{s:s%,s:o,s:o,s:o,s:I,s:I,s:I,s:I,s:o}",
                  "key", (char *) p->key.data, (size_t) p->key.len,
                  "user_id", p->user_id.len
                             ? json_stringn((char *) p->user_id.data,
                                            p->user_id.len)
                             : json_null(),
                  "email", p->email.len
                           ? json_stringn((char *) p->email.data,
                                          p->email.len)
                           : json_null(),
                  "aliases", aliases,
                  "first_seen", (json_int_t) p->first_seen,
                  "last_seen", (json_int_t) p->last_seen,
                  "page_views", (json_int_t) p->page_views,
                  "sessions", (json_int_t) p->sessions,
                  "attributes", all);

    return j;
}
