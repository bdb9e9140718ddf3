
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <zlib.h>

#if (NGX_HTTP_CIVCHAT_BROTLI)
#include <brotli/encode.h>
#endif

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_widget_js.h"


/*
 * widget.js is served from memory (the empty_gif model): the minified
 * script compiled into the module (widget/widget.min.js) with the
 * location's endpoint base written in.  The base depends on the location
 * alone, never on the request, so each location's script is made once,
 * when the configuration is read, together with a gzip copy and, when
 * the module was built with libbrotli, a brotli copy; a request picks one
 * by its Accept-Encoding.  The copies are made at configuration time and
 * not at build time because the base is only known then; it costs a few
 * milliseconds per location in the master, and the workers share the
 * result.
 */


#define NGX_HTTP_CIVCHAT_IDENTITY  0
#define NGX_HTTP_CIVCHAT_GZIP      1
#define NGX_HTTP_CIVCHAT_BR        2
#define NGX_HTTP_CIVCHAT_CODINGS   3


struct ngx_http_civchat_widget_s {
    ngx_str_t                     data[NGX_HTTP_CIVCHAT_CODINGS];
    ngx_str_t                     etag[NGX_HTTP_CIVCHAT_CODINGS];
    ngx_str_t                     cache_control;
};


static ngx_int_t ngx_http_civchat_widget_base(ngx_conf_t *cf,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *base);
static u_char *ngx_http_civchat_url_copy(u_char *dst, u_char *src,
    size_t len);
static ngx_int_t ngx_http_civchat_widget_gzip(ngx_conf_t *cf,
    ngx_str_t *in, ngx_str_t *out);
#if (NGX_HTTP_CIVCHAT_BROTLI)
static ngx_int_t ngx_http_civchat_widget_brotli(ngx_conf_t *cf,
    ngx_str_t *in, ngx_str_t *out);
#endif
static ngx_uint_t ngx_http_civchat_widget_coding(ngx_http_request_t *r,
    ngx_http_civchat_widget_t *w);
static void ngx_http_civchat_accept(ngx_str_t *value, ngx_uint_t *q);
static ngx_uint_t ngx_http_civchat_qvalue(u_char *p, u_char *last);
static ngx_int_t ngx_http_civchat_widget_header(ngx_http_request_t *r,
    const char *key, ngx_str_t *value, ngx_table_elt_t **set);


static ngx_str_t  ngx_http_civchat_codings[] = {
    ngx_null_string,
    ngx_string("gzip"),
    ngx_string("br")
};


ngx_int_t
ngx_http_civchat_widget_init(ngx_conf_t *cf, ngx_http_civchat_loc_conf_t *lcf)
{
    u_char                     *p, *js;
    size_t                      tail;
    uint32_t                    crc;
    ngx_str_t                   base;
    ngx_uint_t                  i;
    ngx_http_civchat_widget_t  *w;

    w = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_widget_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_civchat_widget_base(cf, lcf, &base) != NGX_OK) {
        return NGX_ERROR;
    }

    js = ngx_http_civchat_widget_js;
    tail = sizeof(ngx_http_civchat_widget_js)
           - NGX_HTTP_CIVCHAT_WIDGET_BASE_AT - NGX_HTTP_CIVCHAT_WIDGET_BASE_LEN;

    w->data[0].len = NGX_HTTP_CIVCHAT_WIDGET_BASE_AT + base.len + tail;
    w->data[0].data = ngx_pnalloc(cf->pool, w->data[0].len);
    if (w->data[0].data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(w->data[0].data, js, NGX_HTTP_CIVCHAT_WIDGET_BASE_AT);
    p = ngx_cpymem(p, base.data, base.len);
    ngx_memcpy(p, js + NGX_HTTP_CIVCHAT_WIDGET_BASE_AT
                  + NGX_HTTP_CIVCHAT_WIDGET_BASE_LEN, tail);

    if (ngx_http_civchat_widget_gzip(cf, &w->data[0], &w->data[1])
        != NGX_OK)
    {
        return NGX_ERROR;
    }

#if (NGX_HTTP_CIVCHAT_BROTLI)
    if (ngx_http_civchat_widget_brotli(cf, &w->data[0], &w->data[2])
        != NGX_OK)
    {
        return NGX_ERROR;
    }
#endif

    /* one strong ETag per script (module and base) and coding */

    crc = ngx_crc32_short(base.data, base.len);

    for (i = 0; i < NGX_HTTP_CIVCHAT_CODINGS; i++) {
        if (w->data[i].len == 0) {
            continue;
        }

        p = ngx_pnalloc(cf->pool, sizeof("\"--\"") + 16 + 8 + 4);
        if (p == NULL) {
            return NGX_ERROR;
        }

        w->etag[i].data = p;

        if (i == NGX_HTTP_CIVCHAT_IDENTITY) {
            w->etag[i].len = ngx_sprintf(p, "\"%s-%08xD\"",
                                         NGX_HTTP_CIVCHAT_WIDGET_HASH, crc)
                             - p;

        } else {
            w->etag[i].len = ngx_sprintf(p, "\"%s-%08xD-%V\"",
                                         NGX_HTTP_CIVCHAT_WIDGET_HASH, crc,
                                         &ngx_http_civchat_codings[i])
                             - p;
        }
    }

    p = ngx_pnalloc(cf->pool, sizeof("public, max-age=") + NGX_TIME_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    w->cache_control.data = p;
    w->cache_control.len = ngx_sprintf(p, "public, max-age=%T",
                                       lcf->widget_max_age)
                           - p;

    lcf->widget = w;

    return NGX_OK;
}


/*
 * The endpoint base written into the script: civchat_widget_base, else
 * the path of a prefix location ending in "/" ("/civchat/"), else "./"
 * (a regex or exact location: the endpoints sit beside widget.js).  A
 * relative base is resolved by the script against its own URL, or the
 * page's when it has none.
 */

static ngx_int_t
ngx_http_civchat_widget_base(ngx_conf_t *cf,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *base)
{
    u_char                    *p;
    ngx_str_t                  src;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (lcf->widget_base.len) {
        src = lcf->widget_base;

    } else if (lcf->location.len
               && lcf->location.data[0] == '/'
               && lcf->location.data[lcf->location.len - 1] == '/'
               && !clcf->exact_match
#if (NGX_PCRE)
               && clcf->regex == NULL
#endif
               )
    {
        src = lcf->location;

    } else {
        ngx_str_set(&src, "./");
    }

    p = ngx_pnalloc(cf->pool, src.len * 3);
    if (p == NULL) {
        return NGX_ERROR;
    }

    base->data = p;
    base->len = ngx_http_civchat_url_copy(p, src.data, src.len) - p;

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


/* gzip at level 9, no file name, no time: the same bytes on every start */

static ngx_int_t
ngx_http_civchat_widget_gzip(ngx_conf_t *cf, ngx_str_t *in, ngx_str_t *out)
{
    int       rc;
    size_t    size;
    z_stream  zs;

    ngx_memzero(&zs, sizeof(z_stream));

    rc = deflateInit2(&zs, 9, Z_DEFLATED, MAX_WBITS + 16, MAX_MEM_LEVEL,
                      Z_DEFAULT_STRATEGY);
    if (rc != Z_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "widget.js: deflateInit2() failed: %d", rc);
        return NGX_ERROR;
    }

    size = deflateBound(&zs, in->len);

    out->data = ngx_pnalloc(cf->pool, size);
    if (out->data == NULL) {
        deflateEnd(&zs);
        return NGX_ERROR;
    }

    zs.next_in = in->data;
    zs.avail_in = in->len;
    zs.next_out = out->data;
    zs.avail_out = size;

    rc = deflate(&zs, Z_FINISH);

    out->len = size - zs.avail_out;

    deflateEnd(&zs);

    if (rc != Z_STREAM_END) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "widget.js: deflate() failed: %d", rc);
        return NGX_ERROR;
    }

    return NGX_OK;
}


#if (NGX_HTTP_CIVCHAT_BROTLI)

/* brotli at its best quality, 11: about 20 ms for the 12 KB script */

static ngx_int_t
ngx_http_civchat_widget_brotli(ngx_conf_t *cf, ngx_str_t *in,
    ngx_str_t *out)
{
    size_t  size;

    size = BrotliEncoderMaxCompressedSize(in->len);

    out->data = ngx_pnalloc(cf->pool, size);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    if (!BrotliEncoderCompress(BROTLI_MAX_QUALITY, BROTLI_DEFAULT_WINDOW,
                               BROTLI_MODE_TEXT, in->len, in->data, &size,
                               out->data))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "widget.js: BrotliEncoderCompress() failed");
        return NGX_ERROR;
    }

    out->len = size;

    return NGX_OK;
}

#endif


ngx_int_t
ngx_http_civchat_widget_handler(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf)
{
    ngx_int_t                     rc;
    ngx_buf_t                    *b;
    ngx_str_t                     vary;
    ngx_uint_t                    coding;
    ngx_chain_t                   out;
    ngx_table_elt_t              *h;
    ngx_http_civchat_widget_t    *w;
    ngx_http_civchat_main_conf_t  *mcf;

    w = lcf->widget;

    if (w == NULL) {
        return NGX_HTTP_NOT_FOUND;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);

    coding = ngx_http_civchat_widget_coding(r, w);

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = w->data[coding].len;

    ngx_str_set(&r->headers_out.content_type,
                "application/javascript; charset=utf-8");
    r->headers_out.content_type_len = sizeof("application/javascript") - 1;
    r->headers_out.content_type_lowcase = NULL;

    /* the script changes only with the module and the configuration */
    r->headers_out.last_modified_time = mcf->loaded;

    if (ngx_http_civchat_widget_header(r, "ETag", &w->etag[coding],
                                       &r->headers_out.etag)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the same bytes whoever asks: shared caches may keep them */
    if (ngx_http_civchat_widget_header(r, "Cache-Control",
                                       &w->cache_control, NULL)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* ...one copy per coding */
    ngx_str_set(&vary, "Accept-Encoding");

    if (ngx_http_civchat_widget_header(r, "Vary", &vary, NULL) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (coding != NGX_HTTP_CIVCHAT_IDENTITY) {
        /* nginx's gzip filter leaves an encoded answer alone */
        if (ngx_http_civchat_widget_header(r, "Content-Encoding",
                                           &ngx_http_civchat_codings[coding],
                                           &h)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        r->headers_out.content_encoding = h;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = w->data[coding].data;
    b->last = b->pos + w->data[coding].len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * The coding of the answer: of those the module holds, the one with the
 * highest q in Accept-Encoding ("*" stands for the unnamed ones), brotli
 * before gzip at the same q; identity when neither is acceptable.
 */

static ngx_uint_t
ngx_http_civchat_widget_coding(ngx_http_request_t *r,
    ngx_http_civchat_widget_t *w)
{
    ngx_uint_t        i, best, coding, q[NGX_HTTP_CIVCHAT_CODINGS + 1];
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    /* q in thousandths, NGX_CONF_UNSET_UINT: not named; the last is "*" */
    for (i = 0; i < NGX_HTTP_CIVCHAT_CODINGS + 1; i++) {
        q[i] = NGX_CONF_UNSET_UINT;
    }

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("Accept-Encoding") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Accept-Encoding",
                               sizeof("Accept-Encoding") - 1) == 0)
        {
            ngx_http_civchat_accept(&h[i].value, q);
        }
    }

    best = 0;
    coding = NGX_HTTP_CIVCHAT_IDENTITY;

    for (i = NGX_HTTP_CIVCHAT_BR; i > NGX_HTTP_CIVCHAT_IDENTITY; i--) {
        if (w->data[i].len == 0) {
            continue;
        }

        if (q[i] == NGX_CONF_UNSET_UINT) {
            q[i] = q[NGX_HTTP_CIVCHAT_CODINGS];
        }

        if (q[i] != NGX_CONF_UNSET_UINT && q[i] > best) {
            best = q[i];
            coding = i;
        }
    }

    return coding;
}


/* one Accept-Encoding value: "gzip, deflate;q=0.5, br;q=1.0, *;q=0" */

static void
ngx_http_civchat_accept(ngx_str_t *value, ngx_uint_t *q)
{
    u_char      *p, *last, *name, *end;
    size_t       len;
    ngx_uint_t   i, v;

    p = value->data;
    last = p + value->len;

    while (p < last) {

        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        name = p;

        while (p < last && *p != ',' && *p != ';' && *p != ' '
               && *p != '\t')
        {
            p++;
        }

        len = p - name;

        for (end = p; end < last && *end != ','; end++) {
            /* void */
        }

        v = ngx_http_civchat_qvalue(p, end);
        p = end;

        if (len == 0) {
            continue;
        }

        if (len == 1 && name[0] == '*') {
            q[NGX_HTTP_CIVCHAT_CODINGS] = v;
            continue;
        }

        for (i = 1; i < NGX_HTTP_CIVCHAT_CODINGS; i++) {
            if (len == ngx_http_civchat_codings[i].len
                && ngx_strncasecmp(name, ngx_http_civchat_codings[i].data,
                                   len) == 0)
            {
                q[i] = v;
            }
        }

        if (len == sizeof("x-gzip") - 1
            && ngx_strncasecmp(name, (u_char *) "x-gzip", len) == 0)
        {
            q[NGX_HTTP_CIVCHAT_GZIP] = v;
        }
    }
}


/* the q of one element's parameters (";q=0.5"), in thousandths */

static ngx_uint_t
ngx_http_civchat_qvalue(u_char *p, u_char *last)
{
    ngx_uint_t  v, scale;

    for ( ;; ) {
        while (p < last && *p != ';') {
            p++;
        }

        if (p == last) {
            return 1000;
        }

        p++;

        while (p < last && (*p == ' ' || *p == '\t')) {
            p++;
        }

        if (last - p >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
            p += 2;
            break;
        }
    }

    if (p < last && *p == '1') {
        return 1000;
    }

    if (p == last || *p++ != '0') {
        return 0;
    }

    v = 0;

    if (p < last && *p == '.') {
        p++;

        for (scale = 100; scale && p < last && *p >= '0' && *p <= '9'; p++)
        {
            v += (*p - '0') * scale;
            scale /= 10;
        }
    }

    return v;
}


static ngx_int_t
ngx_http_civchat_widget_header(ngx_http_request_t *r, const char *key,
    ngx_str_t *value, ngx_table_elt_t **set)
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

    if (set) {
        *set = h;
    }

    return NGX_OK;
}
