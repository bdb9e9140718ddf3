
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_http.h"


/*
 * "civchat_store http://... [parameters]": the servers (each URL, each
 * of its addresses) in the order they are tried, the batching, timeout
 * and spool parameters, and the spool directory, by default one of its
 * own for each list of URLs.
 */


static char *ngx_http_civchat_http_peer(ngx_conf_t *cf,
    ngx_http_civchat_http_t *h, ngx_str_t *url);
static char *ngx_http_civchat_http_param(ngx_conf_t *cf,
    ngx_http_civchat_http_t *h, ngx_str_t *arg);


ngx_http_civchat_http_t *
ngx_http_civchat_http_create(ngx_conf_t *cf, ngx_str_t *args, ngx_uint_t n)
{
    uint32_t                  crc;
    ngx_uint_t                i;
    ngx_http_civchat_http_t  *h;

    h = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_http_t));
    if (h == NULL) {
        return NULL;
    }

    if (ngx_array_init(&h->peers, cf->pool, 2,
                       sizeof(ngx_http_civchat_peer_t))
        != NGX_OK)
    {
        return NULL;
    }

    h->name = args[0];
    h->counters = &h->unshared;
    h->spool.counters = &h->unshared;
    h->batch_events = 1000;
    h->batch_bytes = 1024 * 1024;
    h->flush = 1000;
    h->timeout = 5000;
    h->keepalive_timeout = 2000;
    h->max_backoff = 30000;
    h->spool.limit = (off_t) 1024 * 1024 * 1024;
    crc = 0;

    for (i = 0; i < n; i++) {

        if (ngx_strncmp(args[i].data, "http://", 7) == 0) {
            if (ngx_http_civchat_http_peer(cf, h, &args[i]) != NGX_CONF_OK) {
                return NULL;
            }

            crc ^= ngx_crc32_long(args[i].data, args[i].len);
            continue;
        }

        if (ngx_http_civchat_http_param(cf, h, &args[i]) != NGX_CONF_OK) {
            return NULL;
        }
    }

    if (h->batch_bytes < 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "civchat_store: batch_size must be at least 1k");
        return NULL;
    }

    if (h->spool.path.len == 0) {
        /* one spool per store: a batch must go back where it was sent */
        h->spool.path.data = ngx_pnalloc(cf->pool,
                                         sizeof("civchat_spool_") + 8);
        if (h->spool.path.data == NULL) {
            return NULL;
        }

        h->spool.path.len = ngx_sprintf(h->spool.path.data,
                                        "civchat_spool_%08xD", crc)
                            - h->spool.path.data;
    }

    if (ngx_conf_full_name(cf->cycle, &h->spool.path, 0) != NGX_OK) {
        return NULL;
    }

    return h;
}


static char *
ngx_http_civchat_http_peer(ngx_conf_t *cf, ngx_http_civchat_http_t *h,
    ngx_str_t *url)
{
    ngx_url_t                 u;
    ngx_uint_t                i;
    ngx_http_civchat_peer_t  *peer;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url.data = url->data + 7;
    u.url.len = url->len - 7;
    u.default_port = 80;
    u.uri_part = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "civchat_store: %s in \"%V\"", u.err, url);
        }

        return NGX_CONF_ERROR;
    }

    if (u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "civchat_store: no address for \"%V\"", url);
        return NGX_CONF_ERROR;
    }

    for (i = 0; i < u.naddrs; i++) {
        peer = ngx_array_push(&h->peers);
        if (peer == NULL) {
            return NGX_CONF_ERROR;
        }

        peer->addr = u.addrs[i];

        /* "host:port" as the client wrote it */
        peer->host.data = u.url.data;
        peer->host.len = (u.uri.len ? (size_t) (u.uri.data - u.url.data)
                                    : u.url.len);

        if (u.uri.len) {
            peer->uri = u.uri;

        } else {
            ngx_str_set(&peer->uri, "/");
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_civchat_http_param(ngx_conf_t *cf, ngx_http_civchat_http_t *h,
    ngx_str_t *arg)
{
    ssize_t     size;
    ngx_int_t   number;
    ngx_str_t   v;
    ngx_msec_t  ms;

    v.data = (u_char *) ngx_strlchr(arg->data, arg->data + arg->len, '=');

    if (v.data == NULL) {
        goto invalid;
    }

    v.data++;
    v.len = arg->data + arg->len - v.data;

    if (ngx_strncmp(arg->data, "batch=", 6) == 0) {
        number = ngx_atoi(v.data, v.len);
        if (number == NGX_ERROR || number == 0) {
            goto invalid;
        }

        h->batch_events = number;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(arg->data, "batch_size=", 11) == 0) {
        size = ngx_parse_size(&v);
        if (size == NGX_ERROR) {
            goto invalid;
        }

        h->batch_bytes = size;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(arg->data, "spool_size=", 11) == 0) {
        h->spool.limit = ngx_parse_offset(&v);
        if (h->spool.limit == NGX_ERROR) {
            goto invalid;
        }

        return NGX_CONF_OK;
    }

    if (ngx_strncmp(arg->data, "spool=", 6) == 0 && v.len) {
        h->spool.path = v;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(arg->data, "on_full=", 8) == 0) {
        if (v.len == 6 && ngx_strncmp(v.data, "reject", 6) == 0) {
            h->drop = 0;
            return NGX_CONF_OK;
        }

        if (v.len == 4 && ngx_strncmp(v.data, "drop", 4) == 0) {
            h->drop = 1;
            return NGX_CONF_OK;
        }

        goto invalid;
    }

    ms = ngx_parse_time(&v, 0);

    if (ms == (ngx_msec_t) NGX_ERROR) {
        goto invalid;
    }

    /* 0: a connection per batch */
    if (ngx_strncmp(arg->data, "keepalive_timeout=", 18) == 0) {
        h->keepalive_timeout = ms;
        return NGX_CONF_OK;
    }

    if (ms == 0) {
        goto invalid;
    }

    if (ngx_strncmp(arg->data, "flush=", 6) == 0) {
        h->flush = ms;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(arg->data, "timeout=", 8) == 0) {
        h->timeout = ms;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(arg->data, "retry=", 6) == 0) {
        h->max_backoff = ms;
        return NGX_CONF_OK;
    }

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "civchat_store: invalid parameter \"%V\"", arg);

    return NGX_CONF_ERROR;
}


ngx_str_t *
ngx_http_civchat_http_spool_dir(ngx_http_civchat_http_t *h)
{
    return &h->spool.path;
}


/* the same servers in the same order */

ngx_int_t
ngx_http_civchat_http_same(ngx_http_civchat_http_t *a,
    ngx_http_civchat_http_t *b)
{
    ngx_uint_t                i;
    ngx_http_civchat_peer_t  *pa, *pb;

    if (a->peers.nelts != b->peers.nelts) {
        return 0;
    }

    pa = a->peers.elts;
    pb = b->peers.elts;

    for (i = 0; i < a->peers.nelts; i++) {
        if (ngx_cmp_sockaddr(pa[i].addr.sockaddr, pa[i].addr.socklen,
                             pb[i].addr.sockaddr, pb[i].addr.socklen, 1)
            != NGX_OK
            || pa[i].uri.len != pb[i].uri.len
            || ngx_strncmp(pa[i].uri.data, pb[i].uri.data, pa[i].uri.len)
               != 0)
        {
            return 0;
        }
    }

    return 1;
}
