
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/random.h>

#include "ngx_http_civchat.h"


/*
 * Visitor keys and their cookie.  A key is a bearer credential: whoever
 * holds a session key of a profile acts as that profile, so keys come
 * only from the kernel's CSPRNG, travel only in the HttpOnly cookie or
 * in an answer to the browser that holds them, and a browser is given a
 * new one whenever what its key may do changes (README "Identity").
 */


static void ngx_http_civchat_read_cookie(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *value);
static void ngx_http_civchat_body_key(json_t *body, const char *name,
    ngx_str_t *key);


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


/*
 * The browser's key: the cookie, else the body's "key" or "user_key"
 * (a widget on another site keeps it in localStorage).  A key from an
 * e-mail link ("link_key", ?__ca__chat=KEY) is no credential: anyone
 * may have the link.  It is only noted on the new profile's event.
 */

void
ngx_http_civchat_read_key(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_str_t *key, ngx_str_t *link_key)
{
    ngx_str_t  value;

    ngx_str_null(key);
    ngx_str_null(link_key);

    ngx_http_civchat_read_cookie(r, ctx->lcf, &value);

    if (value.len && ngx_http_civchat_valid_key(value.data, value.len)) {
        *key = value;
        return;
    }

    if (value.len) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "civchat: client sent invalid cookie \"%V\", ignored",
                      &value);
    }

    if (ctx->body == NULL) {
        return;
    }

    ngx_http_civchat_body_key(ctx->body, "key", key);

    if (key->len == 0) {
        ngx_http_civchat_body_key(ctx->body, "user_key", key);
    }

    if (key->len == 0) {
        ngx_http_civchat_body_key(ctx->body, "link_key", link_key);
    }
}


/* the one place where nginx's cookie API differs between versions */

/* the key a live stream is asked for (stream.c) */

ngx_int_t
ngx_http_civchat_stream_key(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *key)
{
    ngx_str_t  value;

    /* the cookie; cross-origin pages send ?key= (EventSource has no body) */
    ngx_http_civchat_cookie_key(r, lcf, key);

    if (key->len) {
        return NGX_OK;
    }

    if (ngx_http_arg(r, (u_char *) "key", 3, &value) == NGX_OK
        && ngx_http_civchat_valid_key(value.data, value.len))
    {
        *key = value;
        return NGX_OK;
    }

    return NGX_DECLINED;
}


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
ngx_http_civchat_body_key(json_t *body, const char *name, ngx_str_t *key)
{
    json_t  *v;

    v = json_object_get(body, name);

    if (json_is_string(v)
        && ngx_http_civchat_valid_key((u_char *) json_string_value(v),
                                      json_string_length(v)))
    {
        key->data = (u_char *) json_string_value(v);
        key->len = json_string_length(v);
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
