
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * What a request brings: its context, its body (in memory or in a
 * temporary file), its page and browser, and whether its Origin may
 * call at all.  Text from headers and bodies goes into JSON lines, so
 * it is made valid UTF-8 here.
 */


typedef struct {
    ngx_str_t                     scheme;
    ngx_str_t                     host;      /* host[:port], no default port */
} ngx_http_civchat_origin_t;


static void ngx_http_civchat_context_field(ngx_http_civchat_ctx_t *ctx,
    const char *name, ngx_str_t *out);
static void ngx_http_civchat_header_text(ngx_http_request_t *r,
    ngx_table_elt_t *h, size_t max, ngx_str_t *out);
static void ngx_http_civchat_language(ngx_http_request_t *r, ngx_str_t *out);
static ngx_int_t ngx_http_civchat_origin_split(u_char *p, size_t len,
    ngx_http_civchat_origin_t *o);
static ngx_int_t ngx_http_civchat_origin_same(ngx_http_civchat_origin_t *a,
    ngx_http_civchat_origin_t *b);
static ngx_int_t ngx_http_civchat_same_origin(ngx_http_request_t *r,
    ngx_http_civchat_origin_t *origin);
static ngx_int_t ngx_http_civchat_allowed_origin(
    ngx_http_civchat_loc_conf_t *lcf, ngx_http_civchat_origin_t *origin);


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


/* the size of the body nginx has read, in its buffers or its file */

off_t
ngx_http_civchat_body_size(ngx_http_request_t *r)
{
    off_t         size;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    if (r->request_body == NULL) {
        return 0;
    }

    size = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        size += b->in_file ? b->file_last - b->file_pos : b->last - b->pos;
    }

    return size;
}


ngx_int_t
ngx_http_civchat_read_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char                  *p;
    size_t                   len;
    ssize_t                  n;
    ngx_buf_t               *b;
    ngx_chain_t             *cl;
    ngx_http_civchat_ctx_t  *ctx;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = (size_t) ngx_http_civchat_body_size(r);

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);

    if (len > ctx->lcf->body_limit) {
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


ngx_int_t
ngx_http_civchat_parse_body(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *body)
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


/* a pool cleanup: the jansson value data goes with the pool */

void
ngx_http_civchat_json_cleanup(void *data)
{
    json_decref(data);
}


void
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


void
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


/*
 * NGX_OK: the Origin may call; else NGX_DECLINED, and *answer is what
 * the content handler returns (the 403 was sent, or a 500 is due)
 */

ngx_int_t
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


/*
 * NGX_OK: no Origin, the request's own origin (scheme, host and port
 * all equal), or an allowed one (then *origin is it and the answer
 * carries CORS headers); NGX_DECLINED: not allowed.
 */

ngx_int_t
ngx_http_civchat_origin(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *origin)
{
    ngx_str_t                  value;
    ngx_table_elt_t           *h;
    ngx_http_civchat_origin_t  o;

    ngx_str_null(origin);

    h = ngx_http_civchat_find_header(r, "Origin");
    if (h == NULL) {
        return NGX_OK;
    }

    if (ngx_http_civchat_origin_split(h->value.data, h->value.len, &o)
        != NGX_OK)
    {
        /* "null", a file: page, anything not http(s)://host[:port] */
        return lcf->any_origin ? NGX_OK : NGX_DECLINED;
    }

    if (ngx_http_civchat_same_origin(r, &o)) {
        return NGX_OK;
    }

    if (!lcf->any_origin && !ngx_http_civchat_allowed_origin(lcf, &o)) {
        return NGX_DECLINED;
    }

    *origin = h->value;

    ngx_str_set(&value, "true");

    if (ngx_http_civchat_add_header(r, "Access-Control-Allow-Origin", origin)
        != NGX_OK
        || ngx_http_civchat_add_header(r, "Access-Control-Allow-Credentials",
                                       &value)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_set(&value, "Origin");

    return ngx_http_civchat_add_header(r, "Vary", &value);
}


/* "https://Host:443" as ("https", "host"); only http and https count */

static ngx_int_t
ngx_http_civchat_origin_split(u_char *p, size_t len,
    ngx_http_civchat_origin_t *o)
{
    u_char  *host, *colon, *last;

    last = p + len;

    if (len > 7 && ngx_strncasecmp(p, (u_char *) "http://", 7) == 0) {
        ngx_str_set(&o->scheme, "http");
        host = p + 7;

    } else if (len > 8 && ngx_strncasecmp(p, (u_char *) "https://", 8) == 0) {
        ngx_str_set(&o->scheme, "https");
        host = p + 8;

    } else {
        return NGX_DECLINED;
    }

    if (ngx_strlchr(host, last, '/') != NULL
        || ngx_strlchr(host, last, '@') != NULL)
    {
        return NGX_DECLINED;
    }

    o->host.data = host;
    o->host.len = last - host;

    /* the scheme's own port is the same origin as no port */

    colon = (*host == '[') ? ngx_strlchr(host, last, ']') : host;
    colon = (colon == NULL) ? NULL : ngx_strlchr(colon, last, ':');

    if (colon != NULL
        && ((o->scheme.len == 4 && last - colon == 3
             && ngx_strncmp(colon, ":80", 3) == 0)
            || (o->scheme.len == 5 && last - colon == 4
                && ngx_strncmp(colon, ":443", 4) == 0)))
    {
        o->host.len = colon - host;
    }

    return (o->host.len == 0) ? NGX_DECLINED : NGX_OK;
}


static ngx_int_t
ngx_http_civchat_origin_same(ngx_http_civchat_origin_t *a,
    ngx_http_civchat_origin_t *b)
{
    return a->scheme.len == b->scheme.len
           && a->host.len == b->host.len
           && ngx_strncasecmp(a->host.data, b->host.data, a->host.len) == 0;
}


/* the origin of the request itself: its scheme and its Host */

static ngx_int_t
ngx_http_civchat_same_origin(ngx_http_request_t *r,
    ngx_http_civchat_origin_t *origin)
{
    u_char                     *p;
    size_t                      len;
    ngx_http_civchat_origin_t   own;

    if (r->headers_in.host == NULL) {
        return 0;
    }

    len = sizeof("https://") - 1 + r->headers_in.host->value.len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return 0;
    }

#if (NGX_HTTP_SSL)
    if (r->connection->ssl) {
        len = ngx_sprintf(p, "https://%V", &r->headers_in.host->value) - p;

    } else
#endif
    {
        len = ngx_sprintf(p, "http://%V", &r->headers_in.host->value) - p;
    }

    return ngx_http_civchat_origin_split(p, len, &own) == NGX_OK
           && ngx_http_civchat_origin_same(origin, &own);
}


static ngx_int_t
ngx_http_civchat_allowed_origin(ngx_http_civchat_loc_conf_t *lcf,
    ngx_http_civchat_origin_t *origin)
{
    ngx_str_t                  *allowed;
    ngx_uint_t                  i;
    ngx_http_civchat_origin_t   o;

    if (lcf->origins == NULL) {
        return 0;
    }

    allowed = lcf->origins->elts;

    for (i = 0; i < lcf->origins->nelts; i++) {
        if (ngx_http_civchat_origin_split(allowed[i].data, allowed[i].len,
                                          &o)
            == NGX_OK
            && ngx_http_civchat_origin_same(origin, &o))
        {
            return 1;
        }
    }

    return 0;
}
