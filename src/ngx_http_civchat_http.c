
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_http.h"


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


#define NGX_HTTP_CIVCHAT_MEMORY_BATCHES 64


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
static void ngx_http_civchat_http_done(ngx_http_civchat_http_t *h,
    ngx_uint_t keepalive);
static void ngx_http_civchat_http_fail(ngx_http_civchat_http_t *h,
    const char *reason, ngx_uint_t status);
static void ngx_http_civchat_http_idle_handler(ngx_event_t *ev);
static void ngx_http_civchat_http_dummy_handler(ngx_event_t *ev);
static void ngx_http_civchat_http_close(ngx_http_civchat_http_t *h);
static void ngx_http_civchat_http_spool_sealed(ngx_http_civchat_http_t *h);
static ngx_int_t ngx_http_civchat_http_spool(ngx_http_civchat_http_t *h,
    ngx_http_civchat_batch_t *b, ngx_log_t *log, ngx_uint_t force);
static ngx_http_civchat_batch_t *ngx_http_civchat_http_unspool(
    ngx_http_civchat_http_t *h);


void
ngx_http_civchat_http_init_process(ngx_http_civchat_http_t *h,
    ngx_cycle_t *cycle)
{
    h->log = cycle->log;
    h->spool.log = cycle->log;
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
    h->spool.pending = 1;
    ngx_add_timer(&h->retry_ev, 10);
}


ngx_int_t
ngx_http_civchat_http_full(ngx_http_civchat_http_t *h)
{
    if (!h->failing) {
        return 0;
    }

    return h->nsealed >= NGX_HTTP_CIVCHAT_MEMORY_BATCHES
           || ngx_http_civchat_spool_full(&h->spool);
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
    if (b->claim != NULL) {
        ngx_free(b->claim);
    }

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
        && ngx_http_civchat_http_spool(h, b, h->log, 0) == NGX_OK)
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

    ngx_http_civchat_spool_poll(&h->spool);

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

    if (h->spool.pending) {
        b = ngx_http_civchat_http_unspool(h);
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

        if (h->c->read->timer_set) {
            ngx_del_timer(h->c->read);
        }

        /* an exiting worker waits for the answer (see done()) */
        h->c->read->cancelable = 0;

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

    rc = ngx_http_civchat_http_parse(h->resp, h->resp_len, sizeof(h->resp),
                                     eof, &status, &keepalive);

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

    if (b->claim != NULL) {
        ngx_http_civchat_spool_sent(&h->spool, b->claim);
        b->claim = NULL;
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

    if (keepalive && h->keepalive_timeout && !ngx_terminate && !ngx_exiting)
    {
        /*
         * parked: the idle handler closes it if the store does, or
         * after keepalive_timeout, before the store would (a batch
         * sent just as the store closes an idle connection fails)
         */

        h->idle = 1;
        c->read->handler = ngx_http_civchat_http_idle_handler;
        c->write->handler = ngx_http_civchat_http_dummy_handler;

        /* an idle connection does not keep an exiting worker */
        c->read->cancelable = 1;
        ngx_add_timer(c->read, h->keepalive_timeout);

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
            len = ngx_http_civchat_http_body_text(h->resp, h->resp_len,
                                                  text, sizeof(text));

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

    if (b->claim != NULL) {
        ngx_http_civchat_spool_release(&h->spool, b->claim);
        b->claim = NULL;

    } else if (ngx_http_civchat_http_spool(h, b, h->log, 0) != NGX_OK) {
        /* the spool is full: keep it in memory, first in line */
        b->tries = 0;
        ngx_queue_insert_head(&h->sealed, &b->queue);
        h->nsealed++;
        b = NULL;
    }

    if (b != NULL) {
        ngx_http_civchat_batch_free(b);

        /* the batches sealed meanwhile are newer: they follow it */
        ngx_http_civchat_http_spool_sealed(h);
    }

    if (h->retry_ev.timer_set) {
        ngx_del_timer(&h->retry_ev);
    }

    if (!ngx_exiting && !ngx_terminate) {
        ngx_add_timer(&h->retry_ev, h->backoff);
    }
}


/*
 * The store fails: the batches waiting in memory go to the spool after
 * the failed one, so that the order of the events survives.
 */

static void
ngx_http_civchat_http_spool_sealed(ngx_http_civchat_http_t *h)
{
    ngx_queue_t               *q;
    ngx_http_civchat_batch_t  *b;

    while (!ngx_queue_empty(&h->sealed)) {
        q = ngx_queue_head(&h->sealed);
        b = ngx_queue_data(q, ngx_http_civchat_batch_t, queue);

        if (ngx_http_civchat_http_spool(h, b, h->log, 0) != NGX_OK) {
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

        if (b->claim != NULL) {
            ngx_http_civchat_spool_release(&h->spool, b->claim);
            b->claim = NULL;

        } else if (ngx_http_civchat_http_spool(h, b, cycle->log, 1)
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
            && ngx_http_civchat_http_spool(h, b, cycle->log, 1) != NGX_OK)
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


/* a batch to the spool: its lines, after the room for the header */

static ngx_int_t
ngx_http_civchat_http_spool(ngx_http_civchat_http_t *h,
    ngx_http_civchat_batch_t *b, ngx_log_t *log, ngx_uint_t force)
{
    return ngx_http_civchat_spool_write(&h->spool,
                                        b->start
                                        + NGX_HTTP_CIVCHAT_HDR_RESERVE,
                                        b->len, b->events, log, force);
}


/* the oldest batch of the spool, as a batch to send */

static ngx_http_civchat_batch_t *
ngx_http_civchat_http_unspool(ngx_http_civchat_http_t *h)
{
    ngx_http_civchat_batch_t  *b;

    b = ngx_alloc(sizeof(ngx_http_civchat_batch_t), h->log);
    if (b == NULL) {
        return NULL;
    }

    ngx_memzero(b, sizeof(ngx_http_civchat_batch_t));

    b->claim = ngx_http_civchat_spool_claim(&h->spool,
                                            NGX_HTTP_CIVCHAT_HDR_RESERVE,
                                            &b->start, &b->len, &b->events);
    if (b->claim == NULL) {
        ngx_free(b);
        return NULL;
    }

    b->size = b->len;

    return b;
}


void
ngx_http_civchat_http_set_counters(ngx_http_civchat_http_t *h,
    ngx_http_civchat_counters_t *counters)
{
    h->counters = counters;
    h->spool.counters = counters;
}


ngx_str_t *
ngx_http_civchat_http_name(ngx_http_civchat_http_t *h)
{
    return &h->name;
}
