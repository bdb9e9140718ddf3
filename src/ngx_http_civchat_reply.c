
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * What the endpoints send back: JSON answers and errors, the pixel, and
 * response headers.  An answer shows a profile only as far as the
 * request proved it may see it (README "Identity"): the resolver leaves
 * out what it must not show, and counters of an unproved profile are
 * null here.
 */


static ngx_int_t ngx_http_civchat_same(ngx_str_t *a, ngx_str_t *b);
static u_char *ngx_http_civchat_json_string(u_char *p, ngx_str_t *s);
static size_t ngx_http_civchat_json_string_len(ngx_str_t *s);
static u_char *ngx_http_civchat_json_raw(u_char *p, ngx_str_t *s);
static void ngx_http_civchat_short_name(ngx_str_t *name);
static u_char *ngx_http_civchat_answer_user(u_char *p,
    ngx_http_civchat_user_t *u);
static u_char *ngx_http_civchat_answer_ignored(u_char *p,
    ngx_array_t *ignored);
static size_t ngx_http_civchat_answer_size(ngx_http_civchat_ctx_t *ctx,
    ngx_str_t *state);


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


/* an error before the body is read: the body is discarded first */

ngx_int_t
ngx_http_civchat_reject(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *detail)
{
    ngx_int_t  rc;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_civchat_error(r, status, code, "%s", detail);
}


/* 405 with the methods the endpoint's descriptor names */

ngx_int_t
ngx_http_civchat_not_allowed(ngx_http_request_t *r, ngx_uint_t endpoint)
{
    ngx_str_t                           allow;
    const ngx_http_civchat_endpoint_t  *ep;

    ep = ngx_http_civchat_endpoint_info(endpoint);
    allow = ep->allow;

    if (ngx_http_civchat_add_header(r, "Allow", &allow) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_civchat_reject(r, NGX_HTTP_NOT_ALLOWED,
                                   "method_not_allowed",
                                   (ep->methods & NGX_HTTP_POST)
                                   ? "this endpoint takes POST"
                                   : "this endpoint takes GET or HEAD");
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


ngx_int_t
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


/*
 * The answer is written with ngx_sprintf() and JSON escaping: it is on
 * every page view, and building it with jansson cost more than the rest.
 */

ngx_int_t
ngx_http_civchat_answer(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    u_char     *buf, *p;
    ngx_str_t   state;

    if (ngx_http_civchat_set_cookie(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->endpoint == NGX_HTTP_CIVCHAT_PIXEL) {
        return ngx_http_civchat_send_gif(r);
    }

    if (ctx->state.len) {
        state = ctx->state;

    } else {
        state.data = (u_char *)
                     ngx_http_civchat_state_names[ctx->lcf->widget_state];
        state.len = ngx_strlen(state.data);
    }

    buf = ngx_pnalloc(r->pool, ngx_http_civchat_answer_size(ctx, &state));
    if (buf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(buf, "{\"key\":\"%V\",", &ctx->user.key);
    p = ngx_http_civchat_answer_user(p, &ctx->user);

    if (ctx->ignored.nelts) {
        p = ngx_http_civchat_answer_ignored(p, &ctx->ignored);
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

    return ngx_http_civchat_send_json(r, NGX_HTTP_OK, buf, p - buf);
}


static size_t
ngx_http_civchat_answer_size(ngx_http_civchat_ctx_t *ctx, ngx_str_t *state)
{
    size_t                       len;
    ngx_uint_t                   i;
    ngx_http_civchat_user_t     *u;
    ngx_http_civchat_ignored_t  *ig;

    u = &ctx->user;
    ig = ctx->ignored.elts;

    len = sizeof("{\"key\":\"\",\"user\":{\"key\":\"\",\"user_id\":,"
                 "\"email\":,\"name\":,\"first_seen\":,\"last_seen\":,"
                 "\"page_views\":,\"sessions\":},\"ignored\":[],"
                 "\"widget\":{\"state\":\"\",\"greeting\":\"\"}}\n")
          + 2 * u->key.len + 4 * NGX_TIME_T_LEN
          + ngx_http_civchat_json_string_len(&u->user_id)
          + ngx_http_civchat_json_string_len(&u->email)
          + u->name.len + sizeof("null")
          + ngx_http_civchat_json_string_len(state)
          + ngx_http_civchat_json_string_len(&ctx->lcf->greeting);

    for (i = 0; i < ctx->ignored.nelts; i++) {
        ngx_http_civchat_short_name(&ig[i].name);

        len += sizeof("{\"name\":,\"reason\":\"\"},")
               + ngx_http_civchat_json_string_len(&ig[i].name)
               + ngx_strlen(ig[i].reason);
    }

    return len;
}


static u_char *
ngx_http_civchat_answer_user(u_char *p, ngx_http_civchat_user_t *u)
{
    ngx_str_t  *user_id, *email, none;

    ngx_str_null(&none);

    user_id = &u->user_id;
    email = &u->email;

    if (!u->proved) {
        /* what the request itself sent and the profile holds, no more */

        if (!ngx_http_civchat_same(&u->sent_user_id, user_id)) {
            user_id = &none;
        }

        if (!ngx_http_civchat_same(&u->sent_email, email)) {
            email = &none;
        }
    }

    p = ngx_sprintf(p, "\"user\":{\"key\":\"%V\",\"user_id\":", &u->key);
    p = ngx_http_civchat_json_string(p, user_id);
    p = ngx_cpymem(p, ",\"email\":", sizeof(",\"email\":") - 1);
    p = ngx_http_civchat_json_string(p, email);
    p = ngx_cpymem(p, ",\"name\":", sizeof(",\"name\":") - 1);
    p = ngx_http_civchat_json_raw(p, &u->name);

    if (!u->proved) {
        /* the visits of a profile this browser has not proved are not its */
        return ngx_cpymem(p, ",\"first_seen\":null,\"last_seen\":null,"
                          "\"page_views\":null,\"sessions\":null}",
                          sizeof(",\"first_seen\":null,\"last_seen\":null,"
                                 "\"page_views\":null,\"sessions\":null}")
                          - 1);
    }

    return ngx_sprintf(p, ",\"first_seen\":%T,\"last_seen\":%T,"
                       "\"page_views\":%ui,\"sessions\":%ui}",
                       u->first_seen, u->last_seen, u->page_views,
                       u->sessions);
}


static u_char *
ngx_http_civchat_answer_ignored(u_char *p, ngx_array_t *ignored)
{
    ngx_str_t                   *name;
    ngx_uint_t                   i;
    ngx_http_civchat_ignored_t  *ig;

    ig = ignored->elts;

    p = ngx_cpymem(p, ",\"ignored\":[", sizeof(",\"ignored\":[") - 1);

    for (i = 0; i < ignored->nelts; i++) {
        name = &ig[i].name;

        if (i) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, "{\"name\":", sizeof("{\"name\":") - 1);
        p = ngx_http_civchat_json_quote(p, name->data, name->len);
        p = ngx_sprintf(p, ",\"reason\":\"%s\"}", ig[i].reason);
    }

    *p++ = ']';

    return p;
}


/*
 * Sec-GPC / DNT (with civchat_respect_gpc) and bots: no cookie, no
 * profile, and an answer that says so.
 */

ngx_int_t
ngx_http_civchat_answer_unprofiled(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    u_char      *buf;
    size_t       len;
    const char  *state;

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


static ngx_int_t
ngx_http_civchat_same(ngx_str_t *a, ngx_str_t *b)
{
    return a->len == b->len && ngx_memcmp(a->data, b->data, a->len) == 0;
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


/* JSON text as it is, or null */

static u_char *
ngx_http_civchat_json_raw(u_char *p, ngx_str_t *s)
{
    if (s->len == 0) {
        return ngx_cpymem(p, "null", 4);
    }

    return ngx_cpymem(p, s->data, s->len);
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


/* a live stream refused (stream.c): why, as the zone said */

ngx_int_t
ngx_http_civchat_stream_refuse(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_str_t  retry;

    switch (rc) {

    case NGX_DECLINED:
        return ngx_http_civchat_error(r, NGX_HTTP_FORBIDDEN, "unknown_key",
                                      "%s", "this key is no visitor's "
                                      "(init gives the browser one)");

    case NGX_ABORT:
        return ngx_http_civchat_error(r, NGX_HTTP_FORBIDDEN, "unverified",
                                      "%s", "this key's profile was "
                                      "claimed, not proved: its stream is "
                                      "not this browser's to read");

    case NGX_BUSY:
        ngx_str_set(&retry, "30");

        if (ngx_http_civchat_add_header(r, "Retry-After", &retry) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_civchat_error(r, 429, "too_many_streams", "%s",
                                      "too many streams are open for this "
                                      "key or from this address "
                                      "(civchat_stream_limit)");

    default:
        return ngx_http_civchat_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "zone_full", "%s", "the zone has no "
                                      "room for the live channel");
    }
}


/* a live stream's headers: events as they come, through any proxy */

ngx_int_t
ngx_http_civchat_stream_headers(ngx_http_request_t *r)
{
    ngx_str_t  value;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    ngx_str_set(&value, "no-store");

    if (ngx_http_civchat_add_header(r, "Cache-Control", &value) != NGX_OK) {
        return NGX_ERROR;
    }

    /* proxies in front must pass each event on at once */
    ngx_str_set(&value, "no");

    if (ngx_http_civchat_add_header(r, "X-Accel-Buffering", &value)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_send_header(r);
}


/* 503 store_unavailable, with when to try again */

ngx_int_t
ngx_http_civchat_unavailable(ngx_http_request_t *r, const char *retry,
    const char *detail)
{
    ngx_str_t  value;

    value.data = (u_char *) retry;
    value.len = ngx_strlen(retry);

    if (ngx_http_civchat_add_header(r, "Retry-After", &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_civchat_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                  "store_unavailable", "%s", detail);
}
