
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_widget_js.h"


/*
 * widget.js is served from the bytes compiled into the module (the
 * empty_gif model), in three buffers: the script up to its base-URL
 * placeholder, the endpoint base of this location, and the rest.  The
 * static parts are never copied.
 */


static ngx_int_t ngx_http_civchat_widget_base(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *base);
static u_char *ngx_http_civchat_url_copy(u_char *dst, u_char *src,
    size_t len);
static ngx_int_t ngx_http_civchat_widget_headers(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *base);


ngx_int_t
ngx_http_civchat_widget_handler(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf)
{
    ngx_int_t     rc;
    ngx_str_t     base;
    ngx_buf_t    *b;
    ngx_uint_t    i;
    ngx_chain_t   out[3];

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_civchat_widget_base(r, lcf, &base) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_civchat_widget_headers(r, lcf, &base) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    for (i = 0; i < 3; i++) {
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        b->memory = 1;
        out[i].buf = b;
        out[i].next = (i < 2) ? &out[i + 1] : NULL;
    }

    out[0].buf->pos = ngx_http_civchat_widget_js;
    out[0].buf->last = ngx_http_civchat_widget_js
                       + NGX_HTTP_CIVCHAT_WIDGET_BASE_AT;

    out[1].buf->pos = base.data;
    out[1].buf->last = base.data + base.len;

    out[2].buf->pos = out[0].buf->last + NGX_HTTP_CIVCHAT_WIDGET_BASE_LEN;
    out[2].buf->last = ngx_http_civchat_widget_js
                       + sizeof(ngx_http_civchat_widget_js);
    out[2].buf->last_buf = (r == r->main) ? 1 : 0;
    out[2].buf->last_in_chain = 1;

    return ngx_http_output_filter(r, &out[0]);
}


/*
 * The endpoint base written into the script, so that a copy inserted by
 * a tag manager or with a query string still talks to this location:
 * civchat_widget_base, else the scheme, the Host header and the request's
 * directory.
 */

static ngx_int_t
ngx_http_civchat_widget_base(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *base)
{
    u_char     *p, *dir;
    size_t      len;
    ngx_str_t   host, scheme;

    if (lcf->widget_base.len) {
        len = lcf->widget_base.len * 3;

        p = ngx_pnalloc(r->pool, len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        base->data = p;
        base->len = ngx_http_civchat_url_copy(p, lcf->widget_base.data,
                                              lcf->widget_base.len) - p;
        return NGX_OK;
    }

    for (dir = r->uri.data + r->uri.len; dir > r->uri.data; dir--) {
        if (dir[-1] == '/') {
            break;
        }
    }

    ngx_str_set(&scheme, "http://");

#if (NGX_HTTP_SSL)
    if (r->connection->ssl) {
        ngx_str_set(&scheme, "https://");
    }
#endif

    if (r->headers_in.host) {
        host = r->headers_in.host->value;

    } else {
        ngx_str_null(&host);
    }

    len = scheme.len + host.len * 3 + (dir - r->uri.data) * 3;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    base->data = p;

    if (host.len) {
        p = ngx_cpymem(p, scheme.data, scheme.len);
        p = ngx_http_civchat_url_copy(p, host.data, host.len);
    }

    p = ngx_http_civchat_url_copy(p, r->uri.data, dir - r->uri.data);

    base->len = p - base->data;

    return NGX_OK;
}


/* anything that could end the JavaScript string literal is %-encoded */

static u_char *
ngx_http_civchat_url_copy(u_char *dst, u_char *src, size_t len)
{
    u_char  c;

    static u_char  hex[] = "0123456789ABCDEF";

    while (len--) {
        c = *src++;

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9') || ngx_strchr("-._~:/[]@!$&()*+,;=%",
                                                   c) != NULL)
        {
            *dst++ = c;
            continue;
        }

        *dst++ = '%';
        *dst++ = hex[c >> 4];
        *dst++ = hex[c & 0xf];
    }

    return dst;
}


static ngx_int_t
ngx_http_civchat_widget_headers(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *base)
{
    u_char                        *p;
    ngx_table_elt_t               *h;
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = sizeof(ngx_http_civchat_widget_js)
                                      - NGX_HTTP_CIVCHAT_WIDGET_BASE_LEN
                                      + base->len;

    ngx_str_set(&r->headers_out.content_type,
                "application/javascript; charset=utf-8");
    r->headers_out.content_type_len = sizeof("application/javascript") - 1;
    r->headers_out.content_type_lowcase = NULL;

    /* the script changes only with the module: the ETag is exact */
    r->headers_out.last_modified_time = mcf->loaded;

    /* the ETag covers the script and the base written into it */
    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, sizeof("\"-\"") + 16 + 8);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "ETag");
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "\"%s-%08xD\"",
                               NGX_HTTP_CIVCHAT_WIDGET_HASH,
                               ngx_crc32_short(base->data, base->len))
                   - p;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    r->headers_out.etag = h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, sizeof("public, max-age=") + NGX_TIME_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "public, max-age=%T", lcf->widget_max_age)
                   - p;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}
