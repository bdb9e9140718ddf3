
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The HTTP store: events leave nginx as batches of NDJSON lines, one
 * HTTP/1.1 POST a batch, sent from timers in each worker (nginx's OCSP
 * client is the model) over a kept-alive connection (the upstream
 * keepalive module's idle check).  Requests only append lines to the
 * current batch; they never wait on the store.
 *
 * A batch that fails (connection refused, timeout, a non-2xx answer, a
 * close mid-answer) is tried on the next server, then written to the
 * spool directory and retried from there with backoff.  The spool is
 * drained oldest first before newer batches are sent, and it is shared
 * by all workers, so batches spooled by a worker that exited (reload,
 * quit) are sent by the workers that follow.  Every event carries a
 * unique id, so a batch sent twice (its answer lost) is deduplicated by
 * the store (ReplacingMergeTree in ClickHouse).
 */


#define NGX_HTTP_CIVCHAT_HDR_RESERVE    1024
#define NGX_HTTP_CIVCHAT_RESP_MAX       16384
#define NGX_HTTP_CIVCHAT_SPOOL_SCAN     1000
#define NGX_HTTP_CIVCHAT_MEMORY_BATCHES 64


typedef struct {
    ngx_addr_t                    addr;
    ngx_str_t                     host;      /* Host header */
    ngx_str_t                     uri;       /* path and query */
} ngx_http_civchat_peer_t;


typedef struct {
    ngx_queue_t                   queue;
    u_char                       *start;     /* header space, then body */
    size_t                        size;      /* body capacity */
    size_t                        len;       /* body bytes */
    size_t                        hdr_len;   /* request header bytes */
    ngx_uint_t                    events;
    ngx_uint_t                    tries;
    u_char                       *spooled;   /* claimed spool file */
    u_char                       *claimed;
} ngx_http_civchat_batch_t;


struct ngx_http_civchat_http_s {
    /* configuration */
    ngx_array_t                   peers;     /* ngx_http_civchat_peer_t */
    ngx_str_t                     name;      /* the first URL, for logs */
    ngx_uint_t                    batch_events;
    size_t                        batch_bytes;
    ngx_msec_t                    flush;
    ngx_msec_t                    timeout;
    ngx_msec_t                    max_backoff;
    ngx_str_t                     spool;
    off_t                         spool_limit;
    ngx_uint_t                    drop;      /* on_full=drop */

    /* per worker */
    ngx_log_t                    *log;
    ngx_http_civchat_batch_t     *current;
    ngx_queue_t                   sealed;
    ngx_uint_t                    nsealed;
    ngx_http_civchat_batch_t     *inflight;
    ngx_connection_t             *c;
    ngx_uint_t                    peer;
    ngx_event_t                   flush_ev;
    ngx_event_t                   retry_ev;
    ngx_msec_t                    backoff;
    ngx_msec_t                    scanned;
    off_t                         spool_bytes;
    ngx_uint_t                    seq;
    ngx_msec_t                    sent_at;

    unsigned                      failing:1;
    unsigned                      spool_pending:1;
    unsigned                      logged:1;
    unsigned                      idle:1;

    /* the answer being read */
    size_t                        resp_len;
    u_char                        resp[NGX_HTTP_CIVCHAT_RESP_MAX];

    ngx_http_civchat_counters_t  *counters;  /* shared, see status.c */
    ngx_http_civchat_counters_t   unshared;
};


static char *ngx_http_civchat_http_peer(ngx_conf_t *cf,
    ngx_http_civchat_http_t *h, ngx_str_t *url);
static char *ngx_http_civchat_http_param(ngx_conf_t *cf,
    ngx_http_civchat_http_t *h, ngx_str_t *arg);
static ngx_http_civchat_batch_t *ngx_http_civchat_batch_new(
    ngx_http_civchat_http_t *h, size_t size);
static void ngx_http_civchat_batch_free(ngx_http_civchat_batch_t *b);
static void ngx_http_civchat_http_seal(ngx_http_civchat_http_t *h);
static void ngx_http_civchat_http_flush_handler(ngx_event_t *ev);
static void ngx_http_civchat_http_retry_handler(ngx_event_t *ev);
static void ngx_http_civchat_http_next(ngx_http_civchat_http_t *h);
static void ngx_http_civchat_http_send(ngx_http_civchat_http_t *h);
static ngx_int_t ngx_http_civchat_http_connect(ngx_http_civchat_http_t *h);
static void ngx_http_civchat_http_write_handler(ngx_event_t *wev);
static void ngx_http_civchat_http_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_http_civchat_http_parse(ngx_http_civchat_http_t *h,
    ngx_uint_t eof, ngx_uint_t *status, ngx_uint_t *keepalive);
static ngx_int_t ngx_http_civchat_http_chunked(u_char *p, u_char *last);
static void ngx_http_civchat_http_done(ngx_http_civchat_http_t *h,
    ngx_uint_t keepalive);
static void ngx_http_civchat_http_fail(ngx_http_civchat_http_t *h,
    const char *reason, ngx_uint_t status);
static void ngx_http_civchat_http_idle_handler(ngx_event_t *ev);
static void ngx_http_civchat_http_dummy_handler(ngx_event_t *ev);
static void ngx_http_civchat_http_close(ngx_http_civchat_http_t *h);
static ngx_int_t ngx_http_civchat_spool_write(ngx_http_civchat_http_t *h,
    ngx_http_civchat_batch_t *b, ngx_log_t *log, ngx_uint_t force);
static void ngx_http_civchat_spool_sealed(ngx_http_civchat_http_t *h);
static size_t ngx_http_civchat_http_body_text(ngx_http_civchat_http_t *h,
    u_char *text, size_t size);
static ngx_http_civchat_batch_t *ngx_http_civchat_spool_claim(
    ngx_http_civchat_http_t *h);
static ngx_int_t ngx_http_civchat_spool_scan(ngx_http_civchat_http_t *h,
    u_char *oldest);
static void ngx_http_civchat_spool_release(ngx_http_civchat_http_t *h,
    ngx_http_civchat_batch_t *b);


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
    h->batch_events = 1000;
    h->batch_bytes = 1024 * 1024;
    h->flush = 1000;
    h->timeout = 5000;
    h->max_backoff = 30000;
    h->spool_limit = (off_t) 1024 * 1024 * 1024;
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

    if (h->spool.len == 0) {
        /* one spool per store: a batch must go back where it was sent */
        h->spool.data = ngx_pnalloc(cf->pool, sizeof("civchat_spool_") + 8);
        if (h->spool.data == NULL) {
            return NULL;
        }

        h->spool.len = ngx_sprintf(h->spool.data, "civchat_spool_%08xD", crc)
                       - h->spool.data;
    }

    if (ngx_conf_full_name(cf->cycle, &h->spool, 0) != NGX_OK) {
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
        h->spool_limit = ngx_parse_offset(&v);
        if (h->spool_limit == NGX_ERROR) {
            goto invalid;
        }

        return NGX_CONF_OK;
    }

    if (ngx_strncmp(arg->data, "spool=", 6) == 0 && v.len) {
        h->spool = v;
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

    if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
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
    return &h->spool;
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


void
ngx_http_civchat_http_init_process(ngx_http_civchat_http_t *h,
    ngx_cycle_t *cycle)
{
    h->log = cycle->log;
    ngx_queue_init(&h->sealed);

    h->flush_ev.handler = ngx_http_civchat_http_flush_handler;
    h->flush_ev.data = h;
    h->flush_ev.log = cycle->log;

    /*
     * not cancelable: a gracefully exiting worker waits for its last
     * batch to be flushed and sent
     */
    h->flush_ev.cancelable = 0;

    h->retry_ev.handler = ngx_http_civchat_http_retry_handler;
    h->retry_ev.data = h;
    h->retry_ev.log = cycle->log;
    h->retry_ev.cancelable = 1;

    /* batches left in the spool by earlier workers go first */
    h->spool_pending = 1;
    ngx_add_timer(&h->retry_ev, 10);
}


ngx_int_t
ngx_http_civchat_http_full(ngx_http_civchat_http_t *h)
{
    if (!h->failing) {
        return 0;
    }

    return h->nsealed >= NGX_HTTP_CIVCHAT_MEMORY_BATCHES
           || h->spool_bytes >= h->spool_limit;
}


ngx_uint_t
ngx_http_civchat_http_drops(ngx_http_civchat_http_t *h)
{
    return h->drop;
}


ngx_int_t
ngx_http_civchat_http_write(ngx_http_civchat_http_t *h, ngx_log_t *log,
    u_char *line, size_t len)
{
    if (h->drop && ngx_http_civchat_http_full(h)) {
        (void) ngx_atomic_fetch_add(&h->counters->dropped, 1);
        return NGX_DECLINED;
    }

    if (h->current != NULL
        && h->current->len + len > h->current->size)
    {
        ngx_http_civchat_http_seal(h);
    }

    if (h->current == NULL) {
        h->current = ngx_http_civchat_batch_new(h,
                                            ngx_max(h->batch_bytes, len));
        if (h->current == NULL) {
            (void) ngx_atomic_fetch_add(&h->counters->dropped, 1);
            return NGX_ERROR;
        }
    }

    ngx_memcpy(h->current->start + NGX_HTTP_CIVCHAT_HDR_RESERVE
               + h->current->len, line, len);

    h->current->len += len;
    h->current->events++;

    if (h->current->events >= h->batch_events) {
        ngx_http_civchat_http_seal(h);
        ngx_http_civchat_http_next(h);
        return NGX_OK;
    }

    if (!h->flush_ev.timer_set) {
        ngx_add_timer(&h->flush_ev, h->flush);
    }

    return NGX_OK;
}


static ngx_http_civchat_batch_t *
ngx_http_civchat_batch_new(ngx_http_civchat_http_t *h, size_t size)
{
    ngx_http_civchat_batch_t  *b;

    b = ngx_alloc(sizeof(ngx_http_civchat_batch_t), h->log);
    if (b == NULL) {
        return NULL;
    }

    ngx_memzero(b, sizeof(ngx_http_civchat_batch_t));

    b->start = ngx_alloc(NGX_HTTP_CIVCHAT_HDR_RESERVE + size, h->log);
    if (b->start == NULL) {
        ngx_free(b);
        return NULL;
    }

    b->size = size;

    return b;
}


static void
ngx_http_civchat_batch_free(ngx_http_civchat_batch_t *b)
{
    ngx_free(b->spooled);
    ngx_free(b->claimed);
    ngx_free(b->start);
    ngx_free(b);
}


/*
 * A full batch, or the flush interval passed: it is queued to be sent,
 * or, while the store is failing, written to the spool at once so that
 * memory stays small and nothing waits in a worker that may exit.
 */

static void
ngx_http_civchat_http_seal(ngx_http_civchat_http_t *h)
{
    ngx_http_civchat_batch_t  *b;

    b = h->current;
    h->current = NULL;

    if (h->flush_ev.timer_set) {
        ngx_del_timer(&h->flush_ev);
    }

    if (b == NULL || b->events == 0) {
        if (b) {
            ngx_http_civchat_batch_free(b);
        }

        return;
    }

    if (h->failing
        && ngx_http_civchat_spool_write(h, b, h->log, 0) == NGX_OK)
    {
        ngx_http_civchat_batch_free(b);
        return;
    }

    ngx_queue_insert_tail(&h->sealed, &b->queue);
    h->nsealed++;
}


static void
ngx_http_civchat_http_flush_handler(ngx_event_t *ev)
{
    ngx_http_civchat_http_t  *h = ev->data;

    ngx_http_civchat_http_seal(h);
    ngx_http_civchat_http_next(h);
}


static void
ngx_http_civchat_http_retry_handler(ngx_event_t *ev)
{
    ngx_http_civchat_http_t  *h = ev->data;

    if (ngx_current_msec - h->scanned >= NGX_HTTP_CIVCHAT_SPOOL_SCAN) {
        /* batches spooled by other workers, or by exited ones */
        h->spool_pending = 1;
    }

    ngx_http_civchat_http_next(h);

    if (!ev->timer_set && !ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(ev, h->failing ? h->backoff
                                     : NGX_HTTP_CIVCHAT_SPOOL_SCAN);
    }
}


/* the sender: one batch in flight at a time, the spool first */

static void
ngx_http_civchat_http_next(ngx_http_civchat_http_t *h)
{
    ngx_queue_t               *q;
    ngx_http_civchat_batch_t  *b;

    if (h->inflight != NULL) {
        return;
    }

    if (h->failing && h->retry_ev.timer_set) {
        /* backing off: the retry timer calls again */
        return;
    }

    b = NULL;

    if (h->spool_pending) {
        b = ngx_http_civchat_spool_claim(h);
    }

    if (b == NULL && !ngx_queue_empty(&h->sealed)) {
        q = ngx_queue_head(&h->sealed);
        ngx_queue_remove(q);
        h->nsealed--;

        b = ngx_queue_data(q, ngx_http_civchat_batch_t, queue);
    }

    if (b == NULL) {
        return;
    }

    h->inflight = b;

    ngx_http_civchat_http_send(h);
}


static void
ngx_http_civchat_http_send(ngx_http_civchat_http_t *h)
{
    u_char                   *hdr, *p;
    size_t                    len;
    ngx_http_civchat_peer_t  *peer;
    ngx_http_civchat_batch_t *b;

    b = h->inflight;
    b->tries++;

    peer = h->peers.elts;
    peer = &peer[h->peer];

    /* the header goes right before the body: one contiguous write */
    len = sizeof("POST  HTTP/1.1\r\nHost: \r\n"
                 "Content-Type: application/x-ndjson\r\n"
                 "Content-Length: \r\nConnection: keep-alive\r\n\r\n")
          + peer->uri.len + peer->host.len + NGX_SIZE_T_LEN;

    if (len > NGX_HTTP_CIVCHAT_HDR_RESERVE) {
        ngx_http_civchat_http_fail(h, "the store URL is too long", 0);
        return;
    }

    hdr = b->start + NGX_HTTP_CIVCHAT_HDR_RESERVE - len;

    p = ngx_sprintf(hdr, "POST %V HTTP/1.1\r\nHost: %V\r\n"
                    "Content-Type: application/x-ndjson\r\n"
                    "Content-Length: %uz\r\nConnection: keep-alive\r\n\r\n",
                    &peer->uri, &peer->host, b->len);

    /* right-align it against the body */
    b->hdr_len = p - hdr;
    ngx_memmove(b->start + NGX_HTTP_CIVCHAT_HDR_RESERVE - b->hdr_len, hdr,
                b->hdr_len);

    h->resp_len = 0;
    h->sent_at = ngx_current_msec;

    if (h->c != NULL && h->idle && !h->c->read->eof && !h->c->error) {
        h->idle = 0;

    } else {
        ngx_http_civchat_http_close(h);

        if (ngx_http_civchat_http_connect(h) != NGX_OK) {
            return;
        }
    }

    /* what is left to send: from the header start to the body end */
    h->c->sent = 0;
    h->c->data = h;
    h->c->read->handler = ngx_http_civchat_http_read_handler;
    h->c->write->handler = ngx_http_civchat_http_write_handler;

    ngx_add_timer(h->c->write, h->timeout);

    if (h->c->write->ready) {
        ngx_http_civchat_http_write_handler(h->c->write);
    }
}


static ngx_int_t
ngx_http_civchat_http_connect(ngx_http_civchat_http_t *h)
{
    ngx_int_t                 rc;
    ngx_peer_connection_t     pc;
    ngx_http_civchat_peer_t  *peer;

    peer = h->peers.elts;
    peer = &peer[h->peer];

    ngx_memzero(&pc, sizeof(ngx_peer_connection_t));

    pc.sockaddr = peer->addr.sockaddr;
    pc.socklen = peer->addr.socklen;
    pc.name = &peer->addr.name;
    pc.get = ngx_event_get_peer;
    pc.log = h->log;
    pc.log_error = NGX_ERROR_INFO;

    rc = ngx_event_connect_peer(&pc);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        if (pc.connection) {
            ngx_close_connection(pc.connection);
        }

        ngx_http_civchat_http_fail(h, "cannot connect", 0);
        return NGX_ERROR;
    }

    h->c = pc.connection;
    h->c->pool = NULL;
    h->idle = 0;

    return NGX_OK;
}


static void
ngx_http_civchat_http_write_handler(ngx_event_t *wev)
{
    u_char                    *start, *end;
    ssize_t                    n;
    ngx_connection_t          *c;
    ngx_http_civchat_http_t   *h;
    ngx_http_civchat_batch_t  *b;

    c = wev->data;
    h = c->data;
    b = h->inflight;

    if (wev->timedout) {
        ngx_http_civchat_http_fail(h, "timed out sending", 0);
        return;
    }

    /* the header was right-aligned against the body */
    start = b->start + NGX_HTTP_CIVCHAT_HDR_RESERVE - b->hdr_len;
    end = b->start + NGX_HTTP_CIVCHAT_HDR_RESERVE + b->len;

    while (start + c->sent < end) {
        n = c->send(c, start + c->sent, end - start - c->sent);

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_civchat_http_fail(h, "send failed", 0);
            }

            return;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_http_civchat_http_fail(h, "send failed", 0);
            return;
        }

        c->sent += n;
    }

    /* all sent: wait for the answer */
    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    wev->handler = ngx_http_civchat_http_dummy_handler;

    h->resp_len = 0;
    ngx_add_timer(c->read, h->timeout);

    if (c->read->ready) {
        ngx_http_civchat_http_read_handler(c->read);
    }
}


static void
ngx_http_civchat_http_read_handler(ngx_event_t *rev)
{
    ssize_t                   n;
    ngx_int_t                 rc;
    ngx_uint_t                status, keepalive, eof;
    ngx_connection_t         *c;
    ngx_http_civchat_http_t  *h;

    c = rev->data;
    h = c->data;

    if (rev->timedout) {
        ngx_http_civchat_http_fail(h, "timed out waiting for the answer", 0);
        return;
    }

    if (h->inflight == NULL || c->write->timer_set) {
        /* not expecting an answer yet */
        if (ngx_handle_read_event(rev, 0) != NGX_OK) {
            ngx_http_civchat_http_fail(h, "read failed", 0);
        }

        return;
    }

    eof = 0;

    for ( ;; ) {
        if (h->resp_len == sizeof(h->resp)) {
            /* a long answer: its start says enough */
            eof = 1;
            break;
        }

        n = c->recv(c, h->resp + h->resp_len, sizeof(h->resp) - h->resp_len);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            eof = 1;
            break;
        }

        h->resp_len += n;
    }

    rc = ngx_http_civchat_http_parse(h, eof, &status, &keepalive);

    if (rc == NGX_AGAIN) {
        if (ngx_handle_read_event(rev, 0) != NGX_OK) {
            ngx_http_civchat_http_fail(h, "read failed", 0);
        }

        return;
    }

    if (rc == NGX_ERROR) {
        ngx_http_civchat_http_fail(h, "closed the connection or answered "
                                      "what is not HTTP", 0);
        return;
    }

    if (status < 200 || status > 299) {
        ngx_http_civchat_http_fail(h, "answered", status);
        return;
    }

    ngx_http_civchat_http_done(h, keepalive && !eof);
}


/*
 * NGX_OK once the whole answer is in (status, and whether the connection
 * may be kept), NGX_AGAIN before, NGX_ERROR for what is not an answer.
 */

static ngx_int_t
ngx_http_civchat_http_parse(ngx_http_civchat_http_t *h, ngx_uint_t eof,
    ngx_uint_t *status, ngx_uint_t *keepalive)
{
    u_char     *p, *last, *body, *line, *eol;
    off_t       length;
    ngx_int_t   rc;
    ngx_uint_t  chunked;

    p = h->resp;
    last = h->resp + h->resp_len;

    body = ngx_strlcasestrn(p, last, (u_char *) "\r\n\r\n", 4 - 1);

    if (body == NULL) {
        return eof ? NGX_ERROR : NGX_AGAIN;
    }

    body += 4;

    if (last - p < 12 || ngx_strncmp(p, "HTTP/1.", 7) != 0
        || p[8] != ' ')
    {
        return NGX_ERROR;
    }

    *status = ngx_atoi(p + 9, 3);
    if (*status == (ngx_uint_t) NGX_ERROR) {
        return NGX_ERROR;
    }

    *keepalive = (p[7] == '1');
    length = -1;
    chunked = 0;

    for (line = ngx_strlchr(p, body, '\n') + 1; line < body - 2; line = eol + 1)
    {
        eol = ngx_strlchr(line, body, '\n');

        if (eol - line > 15
            && ngx_strncasecmp(line, (u_char *) "content-length:", 15) == 0)
        {
            for (p = line + 15; *p == ' '; p++) { /* void */ }
            length = ngx_atoof(p, eol - 1 - p);
            continue;
        }

        if (eol - line > 18
            && ngx_strncasecmp(line, (u_char *) "transfer-encoding:", 18) == 0
            && ngx_strlcasestrn(line, eol, (u_char *) "chunked", 7 - 1))
        {
            chunked = 1;
            continue;
        }

        if (eol - line > 11
            && ngx_strncasecmp(line, (u_char *) "connection:", 11) == 0
            && ngx_strlcasestrn(line, eol, (u_char *) "close", 5 - 1))
        {
            *keepalive = 0;
        }
    }

    if (chunked) {
        rc = ngx_http_civchat_http_chunked(body, last);

        if (rc == NGX_AGAIN && eof) {
            *keepalive = 0;
            return (h->resp_len == sizeof(h->resp)) ? NGX_OK : NGX_ERROR;
        }

        return rc;
    }

    if (length >= 0) {
        if (last - body >= length) {
            return NGX_OK;
        }

        if (eof) {
            *keepalive = 0;
            return (h->resp_len == sizeof(h->resp)) ? NGX_OK : NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    /* no length: the answer ends with the connection */
    *keepalive = 0;

    return eof ? NGX_OK : NGX_AGAIN;
}


/* NGX_OK when the chunked body ends within [p, last) */

static ngx_int_t
ngx_http_civchat_http_chunked(u_char *p, u_char *last)
{
    u_char  *eol;
    off_t    size;

    for ( ;; ) {
        eol = ngx_strlchr(p, last, '\n');
        if (eol == NULL) {
            return NGX_AGAIN;
        }

        size = 0;

        while (p < eol && ((*p >= '0' && *p <= '9')
                           || ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'f')))
        {
            if (size > NGX_MAX_OFF_T_VALUE / 16) {
                return NGX_ERROR;
            }

            size = size * 16
                   + ((*p <= '9') ? *p - '0' : (*p | 0x20) - 'a' + 10);
            p++;
        }

        p = eol + 1;

        if (size == 0) {
            /* trailers end with an empty line */
            for ( ;; ) {
                eol = ngx_strlchr(p, last, '\n');
                if (eol == NULL) {
                    return NGX_AGAIN;
                }

                if (eol - p <= 1) {
                    return NGX_OK;
                }

                p = eol + 1;
            }
        }

        /* size + 2 may overflow: a chunk this long is never all here */

        if (last - p < 2 || last - p - 2 < size) {
            return NGX_AGAIN;
        }

        p += size + 2;
    }
}


static void
ngx_http_civchat_http_done(ngx_http_civchat_http_t *h, ngx_uint_t keepalive)
{
    ngx_connection_t          *c;
    ngx_http_civchat_batch_t  *b;

    b = h->inflight;
    h->inflight = NULL;
    c = h->c;

    (void) ngx_atomic_fetch_add(&h->counters->forwarded, b->events);
    (void) ngx_atomic_fetch_add(&h->counters->batches, 1);
    (void) ngx_atomic_fetch_add(&h->counters->latency_ms,
                                ngx_current_msec - h->sent_at);

    if (b->claimed != NULL) {
        if (ngx_delete_file(b->claimed) == NGX_FILE_ERROR) {
            ngx_log_error(NGX_LOG_ERR, h->log, ngx_errno,
                          ngx_delete_file_n " \"%s\" failed", b->claimed);
        }
    }

    ngx_http_civchat_batch_free(b);

    if (h->failing) {
        ngx_log_error(NGX_LOG_NOTICE, h->log, 0,
                      "civchat_store \"%V\" answers again", &h->name);
    }

    h->failing = 0;
    h->logged = 0;
    h->backoff = 0;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (keepalive && !ngx_terminate && !ngx_exiting) {
        /* parked: the idle handler closes it if the store does */
        h->idle = 1;
        c->read->handler = ngx_http_civchat_http_idle_handler;
        c->write->handler = ngx_http_civchat_http_dummy_handler;

        if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
            ngx_http_civchat_http_close(h);
        }

    } else {
        ngx_http_civchat_http_close(h);
    }

    ngx_http_civchat_http_next(h);
}


/*
 * A failed attempt: the next server gets the batch at once; when every
 * server has failed it, the batch goes to the spool and the worker backs
 * off before trying again.
 */

static void
ngx_http_civchat_http_fail(ngx_http_civchat_http_t *h, const char *reason,
    ngx_uint_t status)
{
    u_char                    *p, text[300];
    size_t                     len;
    ngx_http_civchat_batch_t  *b;

    b = h->inflight;
    h->inflight = NULL;
    (void) ngx_atomic_fetch_add(&h->counters->errors, 1);

    ngx_http_civchat_http_close(h);

    if (!h->logged) {
        h->logged = 1;

        if (status) {
            /* the store's own words, e.g. ClickHouse's exception text */
            len = ngx_http_civchat_http_body_text(h, text, sizeof(text));

            for (p = text; p < text + len; p++) {
                if (*p < 0x20) {
                    *p = ' ';
                }
            }

            ngx_log_error(NGX_LOG_ERR, h->log, 0,
                          "civchat_store \"%V\" answered %ui: \"%*s\"; "
                          "events are spooled and retried", &h->name,
                          status, len, text);

        } else {
            ngx_log_error(NGX_LOG_ERR, h->log, 0,
                          "civchat_store \"%V\": %s; events are spooled "
                          "and retried", &h->name, reason);
        }
    }

    h->peer = (h->peer + 1) % h->peers.nelts;

    if (b->tries < h->peers.nelts && !h->failing) {
        /* failover: the next server, now */
        h->inflight = b;
        ngx_http_civchat_http_send(h);
        return;
    }

    h->failing = 1;
    h->backoff = h->backoff ? ngx_min(h->backoff * 2, h->max_backoff) : 100;

    if (b->claimed != NULL) {
        ngx_http_civchat_spool_release(h, b);

    } else if (ngx_http_civchat_spool_write(h, b, h->log, 0) != NGX_OK) {
        /* the spool is full: keep it in memory, first in line */
        b->tries = 0;
        ngx_queue_insert_head(&h->sealed, &b->queue);
        h->nsealed++;
        b = NULL;
    }

    if (b != NULL) {
        ngx_http_civchat_batch_free(b);

        /* the batches sealed meanwhile are newer: they follow it */
        ngx_http_civchat_spool_sealed(h);
    }

    if (h->retry_ev.timer_set) {
        ngx_del_timer(&h->retry_ev);
    }

    if (!ngx_exiting && !ngx_terminate) {
        ngx_add_timer(&h->retry_ev, h->backoff);
    }
}


/* the answer's body, without chunked framing, cut to size */

static size_t
ngx_http_civchat_http_body_text(ngx_http_civchat_http_t *h, u_char *text,
    size_t size)
{
    u_char  *p, *last, *eol, *out;
    off_t    chunk;

    last = h->resp + h->resp_len;

    p = ngx_strlcasestrn(h->resp, last, (u_char *) "\r\n\r\n", 4 - 1);
    if (p == NULL) {
        return 0;
    }

    if (ngx_strlcasestrn(h->resp, p, (u_char *) "chunked", 7 - 1) == NULL) {
        size = ngx_min(size, (size_t) (last - p - 4));
        ngx_memcpy(text, p + 4, size);
        return size;
    }

    p += 4;
    out = text;

    while (p < last && out < text + size) {
        eol = ngx_strlchr(p, last, '\n');
        if (eol == NULL) {
            break;
        }

        chunk = ngx_hextoi(p, (eol - p > 0 && eol[-1] == '\r')
                              ? eol - 1 - p : eol - p);
        if (chunk <= 0) {
            break;
        }

        p = eol + 1;
        chunk = ngx_min(chunk, ngx_min(last - p, text + size - out));
        out = ngx_cpymem(out, p, chunk);
        p += chunk + 2;
    }

    return out - text;
}


/*
 * The store fails: the batches waiting in memory go to the spool after
 * the failed one, so that the order of the events survives.
 */

static void
ngx_http_civchat_spool_sealed(ngx_http_civchat_http_t *h)
{
    ngx_queue_t               *q;
    ngx_http_civchat_batch_t  *b;

    while (!ngx_queue_empty(&h->sealed)) {
        q = ngx_queue_head(&h->sealed);
        b = ngx_queue_data(q, ngx_http_civchat_batch_t, queue);

        if (ngx_http_civchat_spool_write(h, b, h->log, 0) != NGX_OK) {
            return;
        }

        ngx_queue_remove(q);
        h->nsealed--;
        ngx_http_civchat_batch_free(b);
    }
}


static void
ngx_http_civchat_http_idle_handler(ngx_event_t *ev)
{
    int                       n;
    char                      buf[1];
    ngx_connection_t         *c;
    ngx_http_civchat_http_t  *h;

    c = ev->data;
    h = c->data;

    if (ev->timedout) {
        goto close;
    }

    n = recv(c->fd, buf, 1, MSG_PEEK);

    if (n == -1 && ngx_socket_errno == NGX_EAGAIN) {
        ev->ready = 0;

        if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
            goto close;
        }

        return;
    }

close:

    /* the store closed the kept connection, or sent what nobody asked */
    ngx_http_civchat_http_close(h);
}


static void
ngx_http_civchat_http_dummy_handler(ngx_event_t *ev)
{
}


static void
ngx_http_civchat_http_close(ngx_http_civchat_http_t *h)
{
    if (h->c != NULL) {
        ngx_close_connection(h->c);
        h->c = NULL;
    }

    h->idle = 0;
}


void
ngx_http_civchat_http_exit_process(ngx_http_civchat_http_t *h,
    ngx_cycle_t *cycle)
{
    ngx_queue_t               *q;
    ngx_uint_t                 lost;
    ngx_http_civchat_batch_t  *b;

    if (h->log == NULL) {
        return;
    }

    /* what this worker still holds goes to the spool for its successors */
    lost = 0;

    if (h->inflight != NULL) {
        b = h->inflight;
        h->inflight = NULL;

        if (b->claimed != NULL) {
            ngx_http_civchat_spool_release(h, b);

        } else if (ngx_http_civchat_spool_write(h, b, cycle->log, 1)
                   != NGX_OK)
        {
            lost += b->events;
        }

        ngx_http_civchat_batch_free(b);
    }

    ngx_http_civchat_http_close(h);

    b = h->current;
    h->current = NULL;

    if (b != NULL) {
        ngx_queue_insert_tail(&h->sealed, &b->queue);
    }

    while (!ngx_queue_empty(&h->sealed)) {
        q = ngx_queue_head(&h->sealed);
        ngx_queue_remove(q);

        b = ngx_queue_data(q, ngx_http_civchat_batch_t, queue);

        /* accepted events are kept even past spool_size */
        if (b->events
            && ngx_http_civchat_spool_write(h, b, cycle->log, 1) != NGX_OK)
        {
            lost += b->events;
        }

        ngx_http_civchat_batch_free(b);
    }

    if (lost) {
        (void) ngx_atomic_fetch_add(&h->counters->dropped, lost);

        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "civchat_store \"%V\": %ui events could not be "
                      "spooled at exit and are lost", &h->name, lost);
    }
}


/*
 * Spool files are named <msec>-<pid>-<seq>.ndjson so that their names
 * sort in the order they were written; one is written as .tmp and
 * renamed, and a worker sending one renames it to .<pid>.sending first.
 */

static ngx_int_t
ngx_http_civchat_spool_write(ngx_http_civchat_http_t *h,
    ngx_http_civchat_batch_t *b, ngx_log_t *log, ngx_uint_t force)
{
    u_char      name[NGX_MAX_PATH], tmp[NGX_MAX_PATH];
    ssize_t     n;
    ngx_fd_t    fd;
    ngx_time_t *tp;

    if (ngx_current_msec - h->scanned >= NGX_HTTP_CIVCHAT_SPOOL_SCAN) {
        (void) ngx_http_civchat_spool_scan(h, NULL);
    }

    if (!force && h->spool_bytes + (off_t) b->len > h->spool_limit) {
        (void) ngx_atomic_fetch_add(&h->counters->spool_full, 1);
        return NGX_DECLINED;
    }

    if (h->spool.len + 64 > NGX_MAX_PATH) {
        return NGX_ERROR;
    }

    tp = ngx_timeofday();

    ngx_sprintf(name, "%V/%010T%03M-%P-%06ui.ndjson%Z", &h->spool,
                tp->sec, tp->msec, ngx_pid, h->seq++);
    ngx_sprintf(tmp, "%s.tmp%Z", name);

    fd = ngx_open_file(tmp, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE,
                       NGX_FILE_DEFAULT_ACCESS);
    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "civchat_store: cannot spool, " ngx_open_file_n
                      " \"%s\" failed", tmp);
        return NGX_ERROR;
    }

    n = ngx_write_fd(fd, b->start + NGX_HTTP_CIVCHAT_HDR_RESERVE, b->len);

    if (n != (ssize_t) b->len) {

        /* a full disk may first cut a write short, without an errno */

        if (n == -1) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                          "civchat_store: cannot spool, writing \"%s\" "
                          "failed", tmp);

        } else {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "civchat_store: cannot spool, writing \"%s\" "
                          "was incomplete, %z of %uz bytes written",
                          tmp, n, b->len);
        }

        ngx_close_file(fd);
        ngx_delete_file(tmp);
        return NGX_ERROR;
    }

    ngx_close_file(fd);

    if (ngx_rename_file(tmp, name) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      ngx_rename_file_n " \"%s\" failed", tmp);
        ngx_delete_file(tmp);
        return NGX_ERROR;
    }

    h->spool_bytes += b->len;
    h->spool_pending = 1;
    (void) ngx_atomic_fetch_add(&h->counters->spooled, b->events);

    return NGX_OK;
}


/* the oldest batch in the spool, read into memory and claimed */

static ngx_http_civchat_batch_t *
ngx_http_civchat_spool_claim(ngx_http_civchat_http_t *h)
{
    u_char                     oldest[NGX_MAX_PATH], *p;
    size_t                     len;
    ssize_t                    n;
    ngx_fd_t                   fd;
    ngx_file_info_t            fi;
    ngx_http_civchat_batch_t  *b;

    if (ngx_http_civchat_spool_scan(h, oldest) != NGX_OK) {
        h->spool_pending = 0;
        return NULL;
    }

    len = ngx_strlen(oldest);

    b = ngx_alloc(sizeof(ngx_http_civchat_batch_t), h->log);
    if (b == NULL) {
        return NULL;
    }

    ngx_memzero(b, sizeof(ngx_http_civchat_batch_t));

    b->spooled = ngx_alloc(len + 1, h->log);
    b->claimed = ngx_alloc(len + sizeof(".-.sending") + NGX_INT_T_LEN,
                           h->log);
    if (b->spooled == NULL || b->claimed == NULL) {
        ngx_http_civchat_batch_free(b);
        return NULL;
    }

    ngx_memcpy(b->spooled, oldest, len + 1);
    ngx_sprintf(b->claimed, "%s.%P.sending%Z", oldest, ngx_pid);

    if (ngx_rename_file(b->spooled, b->claimed) == NGX_FILE_ERROR) {
        /* another worker took it */
        ngx_http_civchat_batch_free(b);
        return NULL;
    }

    fd = ngx_open_file(b->claimed, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE || ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        goto failed;
    }

    b->size = ngx_file_size(&fi);
    b->start = ngx_alloc(NGX_HTTP_CIVCHAT_HDR_RESERVE + b->size + 1, h->log);
    if (b->start == NULL) {
        goto failed;
    }

    n = ngx_read_fd(fd, b->start + NGX_HTTP_CIVCHAT_HDR_RESERVE, b->size);
    ngx_close_file(fd);
    fd = NGX_INVALID_FILE;

    if (n != (ssize_t) b->size) {
        goto failed;
    }

    b->len = b->size;

    /* the count of events, for the counters */
    for (p = b->start + NGX_HTTP_CIVCHAT_HDR_RESERVE;
         p < b->start + NGX_HTTP_CIVCHAT_HDR_RESERVE + b->len;
         p++)
    {
        if (*p == '\n') {
            b->events++;
        }
    }

    h->spool_bytes -= ngx_min(h->spool_bytes, (off_t) b->len);

    return b;

failed:

    ngx_log_error(NGX_LOG_ERR, h->log, ngx_errno,
                  "civchat_store: reading spooled \"%s\" failed", b->claimed);

    if (fd != NGX_INVALID_FILE) {
        ngx_close_file(fd);
    }

    ngx_http_civchat_spool_release(h, b);
    ngx_http_civchat_batch_free(b);

    return NULL;
}


static void
ngx_http_civchat_spool_release(ngx_http_civchat_http_t *h,
    ngx_http_civchat_batch_t *b)
{
    if (ngx_rename_file(b->claimed, b->spooled) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, h->log, ngx_errno,
                      ngx_rename_file_n " \"%s\" failed", b->claimed);
        return;
    }

    h->spool_bytes += b->len;
    h->spool_pending = 1;
}


/*
 * Sizes up the spool and finds its oldest batch.  A batch claimed by a
 * worker that no longer runs is given back.
 */

static ngx_int_t
ngx_http_civchat_spool_scan(ngx_http_civchat_http_t *h, u_char *oldest)
{
    u_char      *name, *p, path[NGX_MAX_PATH], back[NGX_MAX_PATH];
    size_t       len;
    ngx_dir_t    dir;
    ngx_pid_t    pid;
    ngx_int_t    found;
    ngx_uint_t   best;
    u_char       bestname[NGX_MAX_PATH];

    h->scanned = ngx_current_msec;
    h->spool_bytes = 0;
    found = NGX_DECLINED;
    best = 0;

    if (ngx_open_dir(&h->spool, &dir) == NGX_ERROR) {
        return NGX_DECLINED;
    }

    for ( ;; ) {
        ngx_set_errno(0);

        if (ngx_read_dir(&dir) == NGX_ERROR) {
            break;
        }

        name = ngx_de_name(&dir);
        len = ngx_de_namelen(&dir);

        if (len < sizeof("0.ndjson") - 1 || name[0] < '0' || name[0] > '9'
            || h->spool.len + len + 2 > NGX_MAX_PATH)
        {
            continue;
        }

        ngx_sprintf(path, "%V/%*s%Z", &h->spool, len, name);

        if (ngx_de_info(path, &dir) != NGX_FILE_ERROR) {
            h->spool_bytes += ngx_de_size(&dir);
        }

        if (len > sizeof(".sending") - 1
            && ngx_strncmp(name + len - 8, ".sending", 8) == 0)
        {
            /* "<batch>.ndjson.<pid>.sending" */
            p = name + len - 9;
            while (p > name && *p != '.') {
                p--;
            }

            pid = ngx_atoi(p + 1, name + len - 9 - p);

            if (pid > 0 && pid != ngx_pid && kill(pid, 0) == -1
                && ngx_errno == ESRCH)
            {
                ngx_sprintf(back, "%V/%*s%Z", &h->spool, p - name, name);
                (void) ngx_rename_file(path, back);
            }

            continue;
        }

        if (ngx_strncmp(name + len - 7, ".ndjson", 7) != 0) {
            continue;
        }

        if (!best || ngx_strcmp(path, bestname) < 0) {
            ngx_memcpy(bestname, path, h->spool.len + len + 2);
            best = 1;
            found = NGX_OK;
        }
    }

    ngx_close_dir(&dir);

    if (found == NGX_OK && oldest != NULL) {
        ngx_memcpy(oldest, bestname, ngx_strlen(bestname) + 1);
    }

    return found;
}


void
ngx_http_civchat_http_set_counters(ngx_http_civchat_http_t *h,
    ngx_http_civchat_counters_t *counters)
{
    h->counters = counters;
}


ngx_str_t *
ngx_http_civchat_http_name(ngx_http_civchat_http_t *h)
{
    return &h->name;
}
