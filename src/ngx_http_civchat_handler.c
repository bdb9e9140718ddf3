
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The endpoint plumbing: dispatch by path and method, CORS, media type
 * and size checks, reading the body (in memory or in a temporary file),
 * and the JSON answers.  Requests are strict only where the request as
 * a whole is wrong; a bad field is the attribute code's business.
 */


#define NGX_HTTP_CIVCHAT_CONTEXT_MAX     4096


typedef struct {
    ngx_str_t                     name;
    ngx_uint_t                    endpoint;
} ngx_http_civchat_endpoint_t;


static ngx_int_t ngx_http_civchat_origin(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *origin);
static ngx_int_t ngx_http_civchat_preflight(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);
static ngx_int_t ngx_http_civchat_media_type(ngx_http_request_t *r);
static ngx_int_t ngx_http_civchat_reject(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *detail);
static void ngx_http_civchat_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_civchat_process(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_process_parsed(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_check_origin(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_int_t *answer);
static ngx_int_t ngx_http_civchat_pixel(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);
static ngx_int_t ngx_http_civchat_pixel_arg(ngx_http_request_t *r,
    json_t *body, const char *name, const char *arg);
static ngx_int_t ngx_http_civchat_send_gif(ngx_http_request_t *r);
static ngx_int_t ngx_http_civchat_parse(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *body);
static void ngx_http_civchat_json_cleanup(void *data);
static ngx_int_t ngx_http_civchat_api_key(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static void ngx_http_civchat_context(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static void ngx_http_civchat_context_field(ngx_http_civchat_ctx_t *ctx,
    const char *name, ngx_str_t *out);
static void ngx_http_civchat_header_text(ngx_http_request_t *r,
    ngx_table_elt_t *h, size_t max, ngx_str_t *out);
static void ngx_http_civchat_clean_text(ngx_http_request_t *r,
    ngx_str_t *in, size_t max, ngx_str_t *out);
static void ngx_http_civchat_language(ngx_http_request_t *r, ngx_str_t *out);
static ngx_int_t ngx_http_civchat_check_event(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs);
static ngx_int_t ngx_http_civchat_check_product(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs);
static ngx_int_t ngx_http_civchat_check_message(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs);
static ngx_int_t ngx_http_civchat_piggyback(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_unprofiled(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t *attrs);
static ngx_int_t ngx_http_civchat_answer(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_answer_pixel(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static u_char *ngx_http_civchat_json_string(u_char *p, ngx_str_t *s);
static size_t ngx_http_civchat_json_string_len(ngx_str_t *s);
static void ngx_http_civchat_short_name(ngx_str_t *name);


static ngx_http_civchat_endpoint_t  ngx_http_civchat_endpoints[] = {
    { ngx_string("widget.js"), NGX_HTTP_CIVCHAT_WIDGET },
    { ngx_string("init"), NGX_HTTP_CIVCHAT_INIT },
    { ngx_string("page_hit"), NGX_HTTP_CIVCHAT_PAGE_HIT },
    { ngx_string("reset_auth"), NGX_HTTP_CIVCHAT_RESET_AUTH },
    { ngx_string("update"), NGX_HTTP_CIVCHAT_UPDATE },
    { ngx_string("event"), NGX_HTTP_CIVCHAT_EVENT },
    { ngx_string("product_event"), NGX_HTTP_CIVCHAT_PRODUCT_EVENT },
    { ngx_string("p.gif"), NGX_HTTP_CIVCHAT_PIXEL },
    { ngx_string("stream"), NGX_HTTP_CIVCHAT_STREAM },
    { ngx_string("message"), NGX_HTTP_CIVCHAT_MESSAGE },
    { ngx_null_string, 0 }
};


static ngx_str_t  ngx_http_civchat_product_types[] = {
    ngx_string("add to cart"),
    ngx_string("purchase"),
    ngx_string("liking"),
    ngx_string("add to observation"),
    ngx_string("order"),
    ngx_string("reservation"),
    ngx_string("return"),
    ngx_string("view"),
    ngx_string("click"),
    ngx_string("detail"),
    ngx_string("add"),
    ngx_string("remove"),
    ngx_string("checkout"),
    ngx_string("checkout option"),
    ngx_string("refund"),
    ngx_string("promo click"),
    ngx_null_string
};


/* a transparent 1x1 GIF */
static u_char  ngx_http_civchat_gif[] = {
    'G', 'I', 'F', '8', '9', 'a', 0x01, 0x00, 0x01, 0x00, 0x80, 0x00,
    0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b
};


static const char  *ngx_http_civchat_state_names[] = {
    "", "simple", "standard", "hidden", "expanded"
};


ngx_int_t
ngx_http_civchat_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_uint_t                    endpoint;
    ngx_http_civchat_ctx_t       *ctx;
    ngx_http_civchat_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_civchat_module);

    endpoint = ngx_http_civchat_endpoint(r, lcf);

    if (r->method == NGX_HTTP_OPTIONS) {
        return ngx_http_civchat_preflight(r, lcf);
    }

    if (endpoint == NGX_HTTP_CIVCHAT_WIDGET) {
        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            return ngx_http_civchat_reject(r, NGX_HTTP_NOT_ALLOWED,
                                           "method_not_allowed",
                                           "widget.js takes GET or HEAD");
        }

        return ngx_http_civchat_widget_handler(r, lcf);
    }

    if (endpoint == 0) {
        return ngx_http_civchat_reject(r, NGX_HTTP_NOT_FOUND, "not_found",
                                       "unknown civchat endpoint");
    }

    if (endpoint == NGX_HTTP_CIVCHAT_STREAM) {
        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            return ngx_http_civchat_reject(r, NGX_HTTP_NOT_ALLOWED,
                                           "method_not_allowed",
                                           "stream takes GET");
        }

        /* a widget on another site reads its stream with CORS too */
        if (ngx_http_civchat_check_origin(r, lcf, &rc) != NGX_OK) {
            return rc;
        }

        return ngx_http_civchat_stream_handler(r, lcf);
    }

    if (endpoint == NGX_HTTP_CIVCHAT_PIXEL) {
        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            return ngx_http_civchat_reject(r, NGX_HTTP_NOT_ALLOWED,
                                           "method_not_allowed",
                                           "p.gif takes GET or HEAD");
        }

        return ngx_http_civchat_pixel(r, lcf);
    }

    if (r->method != NGX_HTTP_POST) {
        return ngx_http_civchat_reject(r, NGX_HTTP_NOT_ALLOWED,
                                       "method_not_allowed",
                                       "this endpoint takes POST");
    }

    if (ngx_http_civchat_check_origin(r, lcf, &rc) != NGX_OK) {
        return rc;
    }

    if (ngx_http_civchat_media_type(r) != NGX_OK) {
        return ngx_http_civchat_reject(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                       "unsupported_media_type",
                                       "send the body as application/json "
                                       "or text/plain");
    }

    if (r->headers_in.content_length_n > (off_t) lcf->body_limit) {
        return ngx_http_civchat_reject(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                       "body_too_large",
                                       "the request body is over "
                                       "civchat_body_limit");
    }

    ctx = ngx_http_civchat_new_ctx(r, lcf, endpoint, 0);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_civchat_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/*
 * NGX_OK: the Origin may call; else NGX_DECLINED, and *answer is what
 * the content handler returns (the 403 was sent, or a 500 is due)
 */

static ngx_int_t
ngx_http_civchat_check_origin(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_int_t *answer)
{
    ngx_int_t  rc;
    ngx_str_t  origin;

    rc = ngx_http_civchat_origin(r, lcf, &origin);

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    *answer = (rc == NGX_DECLINED)
              ? ngx_http_civchat_reject(r, NGX_HTTP_FORBIDDEN,
                                        "origin_not_allowed",
                                        "this Origin may not call civchat")
              : NGX_HTTP_INTERNAL_SERVER_ERROR;

    return NGX_DECLINED;
}


/* the request's context; "extra" bytes follow it for the caller's use */

ngx_http_civchat_ctx_t *
ngx_http_civchat_new_ctx(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_uint_t endpoint, size_t extra)
{
    ngx_http_civchat_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_civchat_ctx_t) + extra);
    if (ctx == NULL) {
        return NULL;
    }

    ctx->endpoint = endpoint;
    ctx->lcf = lcf;

    if (ngx_array_init(&ctx->ignored, r->pool, 4,
                       sizeof(ngx_http_civchat_ignored_t))
        != NGX_OK
        || ngx_array_init(&ctx->events, r->pool, 4,
                          sizeof(ngx_http_civchat_event_t))
           != NGX_OK)
    {
        return NULL;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_civchat_module);

    return ctx;
}


/*
 * The no-JavaScript page view: <img src="/civchat/p.gif?apiKey=KEY">.
 * The query stands in for the body (apiKey, url, referrer, title; the
 * page defaults to the Referer) and the answer is a GIF with the cookie.
 */

static ngx_int_t
ngx_http_civchat_pixel(ngx_http_request_t *r, ngx_http_civchat_loc_conf_t *lcf)
{
    ngx_int_t                rc;
    ngx_pool_cleanup_t      *cln;
    ngx_http_civchat_ctx_t  *ctx;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_http_civchat_new_ctx(r, lcf, NGX_HTTP_CIVCHAT_PIXEL, 0);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->body = json_object();
    if (ctx->body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_civchat_json_cleanup;
    cln->data = ctx->body;

    if (ngx_http_civchat_pixel_arg(r, ctx->body, "apiKey", "apiKey")
        != NGX_OK
        || ngx_http_civchat_pixel_arg(r, ctx->body, "url", "url") != NGX_OK
        || ngx_http_civchat_pixel_arg(r, ctx->body, "referrer", "referrer")
           != NGX_OK
        || ngx_http_civchat_pixel_arg(r, ctx->body, "title", "title")
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_civchat_process_parsed(r, ctx);

    if (rc == NGX_DONE && ctx->answered) {
        rc = ctx->answer_rc;
    }

    return rc;
}


static ngx_int_t
ngx_http_civchat_pixel_arg(ngx_http_request_t *r, json_t *body,
    const char *name, const char *arg)
{
    u_char     *dst, *src;
    ngx_str_t   value, text;

    if (ngx_http_arg(r, (u_char *) arg, ngx_strlen(arg), &value) != NGX_OK
        || value.len == 0)
    {
        return NGX_OK;
    }

    dst = ngx_pnalloc(r->pool, value.len);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    /*
     * form encoding: '+' is a space; replaced in a copy, so that the
     * request's own arguments ($args) stay as they came
     */
    for (src = value.data; src < value.data + value.len; src++) {
        *dst++ = (*src == '+') ? ' ' : *src;
    }

    dst -= value.len;
    src = dst;
    value.data = dst;
    ngx_unescape_uri(&dst, &src, value.len, 0);
    value.len = dst - value.data;

    /* whatever the query held, only valid UTF-8 goes on */
    ngx_http_civchat_clean_text(r, &value, NGX_HTTP_CIVCHAT_CONTEXT_MAX,
                                &text);

    if (text.len
        && json_object_set_new(body, name,
                               json_stringn((char *) text.data, text.len))
           != 0)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_send_gif(ngx_http_request_t *r)
{
    ngx_str_t                  type, cache;
    ngx_http_complex_value_t   cv;

    ngx_str_set(&cache, "no-store");

    if (ngx_http_civchat_add_header(r, "Cache-Control", &cache) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memzero(&cv, sizeof(ngx_http_complex_value_t));

    cv.value.len = sizeof(ngx_http_civchat_gif);
    cv.value.data = ngx_http_civchat_gif;

    ngx_str_set(&type, "image/gif");

    return ngx_http_send_response(r, NGX_HTTP_OK, &type, &cv);
}


ngx_uint_t
ngx_http_civchat_endpoint(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf)
{
    u_char                       *p, *last;
    ngx_str_t                     name;
    ngx_http_civchat_endpoint_t  *e;

    last = r->uri.data + r->uri.len;

    if (r->uri.len > lcf->location.len
        && ngx_strncmp(r->uri.data, lcf->location.data, lcf->location.len)
           == 0
        && lcf->location.data[lcf->location.len - 1] == '/')
    {
        p = r->uri.data + lcf->location.len;

    } else {
        /* a regex or exact location: the last path segment names it */
        for (p = last; p > r->uri.data && p[-1] != '/'; p--) {
            /* void */
        }
    }

    name.data = p;
    name.len = last - p;

    for (e = ngx_http_civchat_endpoints; e->name.len; e++) {
        if (e->name.len == name.len
            && ngx_strncmp(e->name.data, name.data, name.len) == 0)
        {
            return e->endpoint;
        }
    }

    return 0;
}


/*
 * NGX_OK: same-origin, no Origin, or an allowed one (then *origin is it
 * and the answer carries CORS headers); NGX_DECLINED: not allowed.
 */

static ngx_int_t
ngx_http_civchat_origin(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *origin)
{
    u_char           *host;
    ngx_str_t        *allowed, cred;
    ngx_uint_t        i;
    ngx_table_elt_t  *h;

    ngx_str_null(origin);

    h = ngx_http_civchat_find_header(r, "Origin");
    if (h == NULL) {
        return NGX_OK;
    }

    *origin = h->value;

    host = ngx_strlcasestrn(origin->data, origin->data + origin->len,
                            (u_char *) "://", 2);

    if (host != NULL && r->headers_in.host != NULL) {
        host += 3;

        if ((size_t) (origin->data + origin->len - host)
                == r->headers_in.host->value.len
            && ngx_strncasecmp(host, r->headers_in.host->value.data,
                               r->headers_in.host->value.len) == 0)
        {
            ngx_str_null(origin);
            return NGX_OK;
        }
    }

    if (lcf->any_origin) {
        goto allowed;
    }

    if (lcf->origins) {
        allowed = lcf->origins->elts;

        for (i = 0; i < lcf->origins->nelts; i++) {
            if (allowed[i].len == origin->len
                && ngx_strncasecmp(allowed[i].data, origin->data,
                                   origin->len) == 0)
            {
                goto allowed;
            }
        }
    }

    return NGX_DECLINED;

allowed:

    ngx_str_set(&cred, "true");

    if (ngx_http_civchat_add_header(r, "Access-Control-Allow-Origin", origin)
        != NGX_OK
        || ngx_http_civchat_add_header(r, "Access-Control-Allow-Credentials",
                                       &cred)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_set(&cred, "Origin");

    return ngx_http_civchat_add_header(r, "Vary", &cred);
}


static ngx_int_t
ngx_http_civchat_preflight(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf)
{
    ngx_int_t         rc;
    ngx_str_t         origin, value;
    ngx_table_elt_t  *h;

    rc = ngx_http_civchat_origin(r, lcf, &origin);

    if (rc == NGX_DECLINED) {
        return ngx_http_civchat_reject(r, NGX_HTTP_FORBIDDEN,
                                       "origin_not_allowed",
                                       "this Origin may not call civchat");
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_str_set(&value, "GET, HEAD, POST, OPTIONS");

    if (ngx_http_civchat_add_header(r, "Allow", &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (origin.len) {
        ngx_str_set(&value, "86400");

        if (ngx_http_civchat_add_header(r, "Access-Control-Max-Age", &value)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_str_set(&value, "GET, POST, OPTIONS");

        if (ngx_http_civchat_add_header(r, "Access-Control-Allow-Methods",
                                        &value)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_str_set(&value, "Content-Type");

        h = ngx_http_civchat_find_header(r, "Access-Control-Request-Headers");
        if (h != NULL) {
            value = h->value;
        }

        if (ngx_http_civchat_add_header(r, "Access-Control-Allow-Headers",
                                        &value)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


ngx_table_elt_t *
ngx_http_civchat_find_header(ngx_http_request_t *r, const char *name)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    len = ngx_strlen(name);
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i];
        }
    }
}


ngx_int_t
ngx_http_civchat_add_header(ngx_http_request_t *r, const char *key,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value = *value;

#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


/* JSON as application/json or, from sendBeacon, text/plain; or untyped */

static ngx_int_t
ngx_http_civchat_media_type(ngx_http_request_t *r)
{
    u_char     *p, *last;
    ngx_str_t  *type;

    if (r->headers_in.content_type == NULL) {
        return NGX_OK;
    }

    type = &r->headers_in.content_type->value;
    last = type->data + type->len;

    for (p = type->data; p < last && *p != ';' && *p != ' '; p++) {
        /* void */
    }

    if ((p - type->data == sizeof("application/json") - 1
         && ngx_strncasecmp(type->data, (u_char *) "application/json",
                            p - type->data) == 0)
        || (p - type->data == sizeof("text/plain") - 1
            && ngx_strncasecmp(type->data, (u_char *) "text/plain",
                               p - type->data) == 0))
    {
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/* an error before the body is read: the body is discarded first */

static ngx_int_t
ngx_http_civchat_reject(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *detail)
{
    ngx_int_t   rc;
    ngx_str_t   allow;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (status == NGX_HTTP_NOT_ALLOWED) {
        if (ngx_strncmp(detail, "widget.js", 9) == 0
            || ngx_strncmp(detail, "p.gif", 5) == 0
            || ngx_strncmp(detail, "stream", 6) == 0)
        {
            ngx_str_set(&allow, "GET, HEAD, OPTIONS");

        } else {
            ngx_str_set(&allow, "POST, OPTIONS");
        }

        if (ngx_http_civchat_add_header(r, "Allow", &allow) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_civchat_error(r, status, code, "%s", detail);
}


static void
ngx_http_civchat_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_http_civchat_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);

    rc = ngx_http_civchat_process(r, ctx);

    if (rc == NGX_DONE && ctx->answered) {
        /* an error answer was sent on the way */
        rc = ctx->answer_rc;
    }

    ngx_http_finalize_request(r, rc);
}


static ngx_int_t
ngx_http_civchat_process(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    ngx_int_t   rc;
    ngx_str_t   body;

    rc = ngx_http_civchat_read_body(r, &body);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_civchat_parse(r, ctx, &body);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_civchat_process_parsed(r, ctx);
}


static ngx_int_t
ngx_http_civchat_process_parsed(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    json_t     *attrs;
    ngx_int_t   rc;
    ngx_str_t   name, retry;

    rc = ngx_http_civchat_api_key(r, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    attrs = NULL;

    if (ctx->endpoint == NGX_HTTP_CIVCHAT_EVENT) {
        rc = ngx_http_civchat_check_event(r, ctx, &name, &attrs);

    } else if (ctx->endpoint == NGX_HTTP_CIVCHAT_PRODUCT_EVENT) {
        rc = ngx_http_civchat_check_product(r, ctx, &name, &attrs);

    } else if (ctx->endpoint == NGX_HTTP_CIVCHAT_MESSAGE) {
        rc = ngx_http_civchat_check_message(r, ctx, &name, &attrs);
    }

    if (rc != NGX_OK) {
        json_decref(attrs);
        return rc;
    }

    if (ctx->lcf->sink != NULL && ngx_http_civchat_sink_full(ctx->lcf->sink))
    {
        /* back-pressure: nothing is accepted that could not be kept */
        json_decref(attrs);
        ngx_str_set(&retry, "5");

        if (ngx_http_civchat_add_header(r, "Retry-After", &retry) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_civchat_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "store_unavailable", "%s",
                                      "the event store is down and the "
                                      "spool is full, retry later");
    }

    ngx_http_civchat_context(r, ctx);
    ngx_http_civchat_privacy(r, ctx);

    if (ctx->anonymous || ctx->bot) {
        rc = ngx_http_civchat_unprofiled(r, ctx, &name, attrs);
        json_decref(attrs);
        return rc;
    }

    ngx_http_civchat_read_key(r, ctx);

    if (ngx_http_civchat_resolve(r, ctx) != NGX_OK) {
        json_decref(attrs);
        return ngx_http_civchat_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "internal_error", "%s",
                                      "the profile could not be stored");
    }

    switch (ctx->endpoint) {

    case NGX_HTTP_CIVCHAT_INIT:
    case NGX_HTTP_CIVCHAT_PAGE_HIT:
    case NGX_HTTP_CIVCHAT_PIXEL:
        rc = ngx_http_civchat_add_event(r, ctx, "page_view", NULL, NULL);

        if (rc == NGX_OK && ctx->endpoint == NGX_HTTP_CIVCHAT_PAGE_HIT) {
            rc = ngx_http_civchat_piggyback(r, ctx);
        }

        break;

    case NGX_HTTP_CIVCHAT_EVENT:
        rc = ngx_http_civchat_add_event(r, ctx, "event", &name, attrs);
        break;

    case NGX_HTTP_CIVCHAT_PRODUCT_EVENT:
        rc = ngx_http_civchat_add_event(r, ctx, "product_event", &name,
                                        attrs);
        break;

    case NGX_HTTP_CIVCHAT_MESSAGE:
        rc = ngx_http_civchat_add_event(r, ctx, "chat_message", NULL,
                                        attrs);
        break;

    default:
        break;
    }

    json_decref(attrs);

    if (rc != NGX_OK || ngx_http_civchat_emit_events(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_civchat_answer(r, ctx);
}


ngx_int_t
ngx_http_civchat_read_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    size_t        len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? (size_t) (b->file_last - b->file_pos)
                          : (size_t) (b->last - b->pos);
    }

    if (len > ((ngx_http_civchat_ctx_t *)
               ngx_http_get_module_ctx(r, ngx_http_civchat_module))
              ->lcf->body_limit)
    {
        return ngx_http_civchat_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                      "body_too_large", "%s",
                                      "the request body is over "
                                      "civchat_body_limit");
    }

    body->data = ngx_pnalloc(r->pool, len + 1);
    if (body->data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = body->data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            if (b->last > b->pos) {
                p = ngx_cpymem(p, b->pos, b->last - b->pos);
            }

            continue;
        }

        /* a large body that nginx kept in a temporary file */
        n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                          b->file_pos);

        if (n != b->file_last - b->file_pos) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "civchat: reading the request body from \"%V\" "
                          "failed", &b->file->name);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p += n;
    }

    body->len = p - body->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_parse(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_str_t *body)
{
    ngx_pool_cleanup_t             *cln;
    ngx_http_civchat_json_error_t   err;

    if (body->len == 0) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_json", "%s",
                                      "the request body is empty, "
                                      "expected a JSON object");
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->body = ngx_http_civchat_json_parse(r->pool, body->data, body->len,
                                            &err);

    if (ctx->body == NULL) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_json",
                                      "the body is not valid JSON: %s "
                                      "at position %uz", err.text,
                                      err.position);
    }

    cln->handler = ngx_http_civchat_json_cleanup;
    cln->data = ctx->body;

    if (!json_is_object(ctx->body)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_json", "%s",
                                      "the body must be a JSON object");
    }

    return NGX_OK;
}


static void
ngx_http_civchat_json_cleanup(void *data)
{
    json_decref(data);
}


static ngx_int_t
ngx_http_civchat_api_key(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    json_t      *v;
    ngx_str_t   *keys;
    ngx_uint_t   i;

    v = json_object_get(ctx->body, "apiKey");

    if (v == NULL) {
        v = json_object_get(ctx->body, "api_key");
    }

    if (v == NULL) {
        v = json_object_get(ctx->body, "app_key");
    }

    if (v == NULL || json_is_null(v)
        || (json_is_string(v) && json_string_length(v) == 0))
    {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "apiKey is required");
    }

    if (json_is_string(v)) {
        keys = ctx->lcf->api_keys->elts;

        for (i = 0; i < ctx->lcf->api_keys->nelts; i++) {
            if (keys[i].len == json_string_length(v)
                && ngx_memcmp(keys[i].data, json_string_value(v),
                              keys[i].len) == 0)
            {
                ctx->site = keys[i];
                return NGX_OK;
            }
        }
    }

    return ngx_http_civchat_error(r, NGX_HTTP_FORBIDDEN, "invalid_api_key",
                                  "%s", "apiKey is not configured for "
                                  "this site");
}


static void
ngx_http_civchat_context(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    ngx_http_civchat_context_field(ctx, "url", &ctx->url);
    ngx_http_civchat_context_field(ctx, "referrer", &ctx->referrer);
    ngx_http_civchat_context_field(ctx, "title", &ctx->title);

    if (ctx->url.len == 0 && r->headers_in.referer) {
        /* an event sent without its page: the page is the Referer */
        ngx_http_civchat_header_text(r, r->headers_in.referer,
                                     NGX_HTTP_CIVCHAT_CONTEXT_MAX,
                                     &ctx->url);
    }

    ctx->ip = r->connection->addr_text;

    ngx_http_civchat_header_text(r, r->headers_in.user_agent,
                                 NGX_HTTP_CIVCHAT_UA_MAX, &ctx->user_agent);
    ngx_http_civchat_language(r, &ctx->language);
}


static void
ngx_http_civchat_context_field(ngx_http_civchat_ctx_t *ctx, const char *name,
    ngx_str_t *out)
{
    json_t  *v;

    v = json_object_get(ctx->body, name);

    if (json_is_string(v)
        && json_string_length(v) <= NGX_HTTP_CIVCHAT_CONTEXT_MAX)
    {
        out->data = (u_char *) json_string_value(v);
        out->len = json_string_length(v);
    }
}


/*
 * Header text goes into JSON lines: bytes that are not valid UTF-8
 * become '?', so one odd client cannot make a batch unreadable.
 */

static void
ngx_http_civchat_header_text(ngx_http_request_t *r, ngx_table_elt_t *h,
    size_t max, ngx_str_t *out)
{
    if (h == NULL || h->value.len == 0) {
        ngx_str_null(out);
        return;
    }

    ngx_http_civchat_clean_text(r, &h->value, max, out);
}


static void
ngx_http_civchat_clean_text(ngx_http_request_t *r, ngx_str_t *in,
    size_t max, ngx_str_t *out)
{
    u_char    *p, *q, *s, *t, *last, *dst;
    size_t     len;
    uint32_t   c;

    ngx_str_null(out);

    len = ngx_min(in->len, max);

    /* the common case, printable ASCII, needs no copy */

    for (p = in->data, last = p + len; p < last; p++) {
        if (*p < 0x20 || *p >= 0x7f) {
            break;
        }
    }

    if (p == last) {
        out->data = in->data;
        out->len = len;
        return;
    }

    dst = ngx_pnalloc(r->pool, len);
    if (dst == NULL) {
        return;
    }

    p = in->data;
    last = p + len;
    q = dst;

    while (p < last) {
        if (*p < 0x80) {
            *q++ = (*p >= 0x20 && *p != 0x7f) ? *p : '?';
            p++;
            continue;
        }

        s = p;
        c = ngx_utf8_decode(&p, last - p);

        /*
         * ngx_utf8_decode() also takes lead bytes beyond 0xf4, any byte
         * from 0x80 as a continuation byte, and surrogates
         */

        for (t = s + 1; t < p && (*t & 0xc0) == 0x80; t++) { /* void */ }

        if (c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff) || *s > 0xf4
            || t != p)
        {
            *q++ = '?';
            p = s + 1;
            continue;
        }

        q = ngx_cpymem(q, s, p - s);
    }

    out->data = dst;
    out->len = q - dst;
}


/* browser_language: the first tag of Accept-Language, e.g. "pl-PL" */

static void
ngx_http_civchat_language(ngx_http_request_t *r, ngx_str_t *out)
{
    u_char           *p, *last, *start;
    ngx_table_elt_t  *h;

    ngx_str_null(out);

#if (NGX_HTTP_HEADERS)
    h = r->headers_in.accept_language;
#else
    h = NULL;
#endif

    if (h == NULL) {
        return;
    }

    p = h->value.data;
    last = p + h->value.len;

    while (p < last && *p == ' ') {
        p++;
    }

    start = p;

    while (p < last && p - start < 35
           && ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
               || (*p >= '0' && *p <= '9') || *p == '-'))
    {
        p++;
    }

    if (p > start && (p == last || *p == ',' || *p == ';' || *p == ' ')) {
        out->data = start;
        out->len = p - start;
    }
}


static ngx_int_t
ngx_http_civchat_check_event(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs)
{
    json_t      *v;
    const char  *reason;

    v = json_object_get(ctx->body, "event");

    if (v == NULL || json_is_null(v)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "event is required");
    }

    if (!json_is_string(v)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "event must be a string");
    }

    if (ngx_http_civchat_normalize_name(r->pool,
                                        (u_char *) json_string_value(v),
                                        json_string_length(v), name, &reason)
        != NGX_OK)
    {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event",
                                      "event name is not usable (%s)",
                                      reason ? reason : "no memory");
    }

    v = json_object_get(ctx->body, "attributes");

    if (v == NULL || json_is_null(v)) {
        *attrs = json_object();
        return (*attrs != NULL) ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!json_is_object(v)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "attributes must be a JSON object");
    }

    /* event data is kept as sent, nested values included */
    *attrs = json_incref(v);

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_check_product(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs)
{
    json_t      *id, *type, *v;
    ngx_str_t   *t;
    const char  *field;

    id = json_object_get(ctx->body, "product_id");

    if (id == NULL || json_is_null(id)
        || (json_is_string(id) && json_string_length(id) == 0))
    {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "product_id is required");
    }

    if (!json_is_string(id) && !json_is_integer(id)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "product_id must be a string or "
                                      "an integer");
    }

    type = json_object_get(ctx->body, "event_type");

    if (type == NULL || json_is_null(type)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "event_type is required");
    }

    for (t = ngx_http_civchat_product_types; t->len; t++) {
        if (json_is_string(type) && json_string_length(type) == t->len
            && ngx_strncasecmp((u_char *) json_string_value(type), t->data,
                               t->len) == 0)
        {
            break;
        }
    }

    if (t->len == 0) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "event_type must be one of: add to "
                                      "cart, purchase, liking, add to "
                                      "observation, order, reservation, "
                                      "return, view, click, detail, add, "
                                      "remove, checkout, checkout option, "
                                      "refund, promo click");
    }

    *name = *t;

    /* the product data without the request's own fields */
    *attrs = json_deep_copy(ctx->body);
    if (*attrs == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_foreach_safe(ctx->body, v, field, id) {
        ngx_str_t  f = { ngx_strlen(field), (u_char *) field };

        if (ngx_http_civchat_reserved(&f)
            && ngx_strcmp(field, "event") != 0)
        {
            json_object_del(*attrs, field);
        }
    }

    return NGX_OK;
}


/* what the visitor typed in the chat panel */

static ngx_int_t
ngx_http_civchat_check_message(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs)
{
    json_t  *v;

    ngx_str_null(name);

    v = json_object_get(ctx->body, "content");

    if (!json_is_string(v) || json_string_length(v) == 0) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "content is required");
    }

    if (json_string_length(v) > NGX_HTTP_CIVCHAT_CONTEXT_MAX) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "content is longer than 4096 bytes");
    }

    *attrs = json_pack("{s:O,s:b}", "content", v, "isAdmin", 0);

    return (*attrs != NULL) ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* page_hit's optional {"event": {"event_name": ..., ...}} */

static ngx_int_t
ngx_http_civchat_piggyback(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    json_t                      *ev, *v, *data;
    ngx_int_t                    rc;
    ngx_str_t                    name;
    const char                  *reason;
    ngx_http_civchat_ignored_t  *ig;

    ev = json_object_get(ctx->body, "event");

    if (ev == NULL || json_is_null(ev)) {
        return NGX_OK;
    }

    v = json_object_get(ev, "event_name");

    if (!json_is_object(ev) || !json_is_string(v)
        || ngx_http_civchat_normalize_name(r->pool,
                                           (u_char *) json_string_value(v),
                                           json_string_length(v), &name,
                                           &reason)
           != NGX_OK)
    {
        ig = ngx_array_push(&ctx->ignored);
        if (ig == NULL) {
            return NGX_ERROR;
        }

        ngx_str_set(&ig->name, "event");
        ig->reason = "invalid_event";

        return NGX_OK;
    }

    data = json_deep_copy(ev);
    if (data == NULL) {
        return NGX_ERROR;
    }

    json_object_del(data, "event_name");

    rc = ngx_http_civchat_add_event(r, ctx, "event", &name, data);

    json_decref(data);

    return rc;
}


/*
 * Sec-GPC / DNT (with civchat_respect_gpc) and bots: no cookie, no
 * profile.  An opted-out visitor's page views and events are still
 * counted, with no key, address or User-Agent; bots are only counted.
 */

static ngx_int_t
ngx_http_civchat_unprofiled(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t *attrs)
{
    u_char                        *buf;
    size_t                         len;
    ngx_int_t                      rc;
    const char                    *state;
    ngx_http_civchat_stats_t      *st;
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);
    st = mcf->stats;
    rc = NGX_OK;

    if (ctx->bot) {
        (void) ngx_atomic_fetch_add(&st->bots, 1);

    } else {
        ngx_str_null(&ctx->ip);
        ngx_str_null(&ctx->user_agent);

        switch (ctx->endpoint) {

        case NGX_HTTP_CIVCHAT_INIT:
        case NGX_HTTP_CIVCHAT_PAGE_HIT:
        case NGX_HTTP_CIVCHAT_PIXEL:
            (void) ngx_atomic_fetch_add(&st->anonymous, 1);
            rc = ngx_http_civchat_add_event(r, ctx, "page_view", NULL, NULL);
            break;

        case NGX_HTTP_CIVCHAT_EVENT:
            rc = ngx_http_civchat_add_event(r, ctx, "event", name, attrs);
            break;

        case NGX_HTTP_CIVCHAT_PRODUCT_EVENT:
            rc = ngx_http_civchat_add_event(r, ctx, "product_event", name,
                                            attrs);
            break;

        case NGX_HTTP_CIVCHAT_MESSAGE:
            rc = ngx_http_civchat_add_event(r, ctx, "chat_message", NULL,
                                            attrs);
            break;

        default:
            break;
        }

        if (rc != NGX_OK || ngx_http_civchat_emit_events(r, ctx) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (ctx->endpoint == NGX_HTTP_CIVCHAT_PIXEL) {
        return ngx_http_civchat_send_gif(r);
    }

    state = ngx_http_civchat_state_names[ctx->lcf->widget_state];

    buf = ngx_pnalloc(r->pool, sizeof("{\"key\":null,\"user\":null,"
                                      "\"tracking\":\"anonymous\","
                                      "\"widget\":{\"state\":\"\","
                                      "\"greeting\":\"\"}}\n")
                               + sizeof("expanded")
                               + ctx->lcf->greeting.len * 6);
    if (buf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_sprintf(buf, "{\"key\":null,\"user\":null,\"tracking\":\"%s\"",
                      ctx->bot ? "bot" : "anonymous") - buf;

    if (ctx->endpoint == NGX_HTTP_CIVCHAT_INIT) {
        len = ngx_sprintf(buf + len, ",\"widget\":{\"state\":\"%s\","
                          "\"greeting\":\"", state) - buf;
        len = (u_char *) ngx_escape_json(buf + len,
                                         ctx->lcf->greeting.data,
                                         ctx->lcf->greeting.len) - buf;
        len = ngx_cpymem(buf + len, "\"}", 2) - buf;
    }

    len = ngx_cpymem(buf + len, "}\n", 2) - buf;

    return ngx_http_civchat_send_json(r, NGX_HTTP_OK, buf, len);
}


/*
 * The answer is written with ngx_sprintf() and JSON escaping: it is on
 * every page view, and building it with jansson cost more than the rest.
 */

static ngx_int_t
ngx_http_civchat_answer(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    u_char                      *buf, *p;
    size_t                       len;
    ngx_str_t                    state, *name;
    ngx_uint_t                   i;
    ngx_http_civchat_user_t     *u;
    ngx_http_civchat_ignored_t  *ig;

    if (ctx->endpoint == NGX_HTTP_CIVCHAT_PIXEL) {
        return ngx_http_civchat_answer_pixel(r, ctx);
    }

    u = &ctx->user;
    ig = ctx->ignored.elts;

    if (ctx->state.len) {
        state = ctx->state;

    } else {
        state.data = (u_char *)
                     ngx_http_civchat_state_names[ctx->lcf->widget_state];
        state.len = ngx_strlen(state.data);
    }

    len = sizeof("{\"key\":\"\",\"user\":{\"key\":\"\",\"user_id\":,"
                 "\"email\":,\"name\":,\"first_seen\":,\"last_seen\":,"
                 "\"page_views\":,\"sessions\":},\"ignored\":[],"
                 "\"widget\":{\"state\":\"\",\"greeting\":\"\"}}\n")
          + 2 * u->key.len + 4 * NGX_TIME_T_LEN
          + ngx_http_civchat_json_string_len(&u->user_id)
          + ngx_http_civchat_json_string_len(&u->email)
          + ngx_http_civchat_json_string_len(&u->name)
          + ngx_http_civchat_json_string_len(&state)
          + ngx_http_civchat_json_string_len(&ctx->lcf->greeting);

    for (i = 0; i < ctx->ignored.nelts; i++) {
        ngx_http_civchat_short_name(&ig[i].name);

        len += sizeof("{\"name\":,\"reason\":\"\"},")
               + ngx_http_civchat_json_string_len(&ig[i].name)
               + ngx_strlen(ig[i].reason);
    }

    buf = ngx_pnalloc(r->pool, len);
    if (buf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(buf, "{\"key\":\"%V\",\"user\":{\"key\":\"%V\","
                    "\"user_id\":", &u->key, &u->key);
    p = ngx_http_civchat_json_string(p, &u->user_id);
    p = ngx_cpymem(p, ",\"email\":", sizeof(",\"email\":") - 1);
    p = ngx_http_civchat_json_string(p, &u->email);
    p = ngx_cpymem(p, ",\"name\":", sizeof(",\"name\":") - 1);
    p = ngx_http_civchat_json_string(p, &u->name);
    p = ngx_sprintf(p, ",\"first_seen\":%T,\"last_seen\":%T,"
                    "\"page_views\":%ui,\"sessions\":%ui}",
                    u->first_seen, u->last_seen, u->page_views,
                    u->sessions);

    if (ctx->ignored.nelts) {
        p = ngx_cpymem(p, ",\"ignored\":[", sizeof(",\"ignored\":[") - 1);

        for (i = 0; i < ctx->ignored.nelts; i++) {
            name = &ig[i].name;
            p = ngx_cpymem(p, i ? ",{\"name\":" : "{\"name\":",
                           i ? sizeof(",{\"name\":") - 1
                             : sizeof("{\"name\":") - 1);
            p = ngx_http_civchat_json_quote(p, name->data, name->len);
            p = ngx_sprintf(p, ",\"reason\":\"%s\"}", ig[i].reason);
        }

        *p++ = ']';
    }

    if (ctx->endpoint == NGX_HTTP_CIVCHAT_INIT) {
        p = ngx_cpymem(p, ",\"widget\":{\"state\":",
                       sizeof(",\"widget\":{\"state\":") - 1);
        p = ngx_http_civchat_json_string(p, &state);
        p = ngx_cpymem(p, ",\"greeting\":", sizeof(",\"greeting\":") - 1);
        p = ngx_http_civchat_json_string(p, &ctx->lcf->greeting);
        *p++ = '}';
    }

    p = ngx_cpymem(p, "}\n", 2);

    if (ngx_http_civchat_set_cookie(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_civchat_send_json(r, NGX_HTTP_OK, buf, p - buf);
}


/* a JSON string, or null for an empty one */

static u_char *
ngx_http_civchat_json_string(u_char *p, ngx_str_t *s)
{
    if (s->len == 0) {
        return ngx_cpymem(p, "null", 4);
    }

    return ngx_http_civchat_json_quote(p, s->data, s->len);
}


static size_t
ngx_http_civchat_json_string_len(ngx_str_t *s)
{
    return ngx_max(ngx_http_civchat_json_quoted_len(s->data, s->len),
                   sizeof("null") - 1);
}


/* an ignored field's name is echoed cut to 128 bytes of whole letters */

static void
ngx_http_civchat_short_name(ngx_str_t *name)
{
    if (name->len <= 128) {
        return;
    }

    name->len = 128;

    while (name->len && (name->data[name->len] & 0xc0) == 0x80) {
        name->len--;
    }
}


static ngx_int_t
ngx_http_civchat_answer_pixel(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    if (ngx_http_civchat_set_cookie(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_civchat_send_gif(r);
}


ngx_int_t
ngx_http_civchat_send_json(ngx_http_request_t *r, ngx_uint_t status,
    u_char *data, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_str_t     cache;
    ngx_chain_t   out;

    ngx_str_set(&cache, "no-store");

    if (ngx_http_civchat_add_header(r, "Cache-Control", &cache) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = data;
    b->last = data + len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_civchat_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *fmt, ...)
{
    u_char                  *buf, *p, detail[512], *last;
    size_t                   len;
    va_list                  args;
    ngx_int_t                rc;
    ngx_http_civchat_ctx_t  *ctx;

    va_start(args, fmt);
    last = ngx_vslprintf(detail, detail + sizeof(detail), fmt, args);
    va_end(args);

    len = sizeof("{\"error\":\"\",\"detail\":\"\"}\n") + ngx_strlen(code)
          + (last - detail) + ngx_escape_json(NULL, detail, last - detail);

    buf = ngx_pnalloc(r->pool, len);
    if (buf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(buf, "{\"error\":\"%s\",\"detail\":\"", code);
    p = (u_char *) ngx_escape_json(p, detail, last - detail);
    p = ngx_cpymem(p, "\"}\n", 3);

    if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "civchat: %s: %*s", code, last - detail, detail);
    }

    rc = ngx_http_civchat_send_json(r, status, buf, p - buf);

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);

    if (ctx == NULL) {
        return rc;
    }

    /* after the body was read: unwind to the body handler */
    ctx->answered = 1;
    ctx->answer_rc = rc;

    return NGX_DONE;
}
