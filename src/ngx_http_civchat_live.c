
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The live channel: GET <location>/stream holds a server-sent events
 * stream for the visitor's own key.  What is said to a visitor (a
 * message or payload posted through the API, a change of their profile,
 * whoever made it) is published into a ring in the profile zone, under
 * the zone lock, with a sequence number.  Every worker reads the ring on
 * a short timer and writes what is new to the streams it holds, so a
 * message posted to one worker reaches a stream held by another.  The
 * sequence number is the event id: a client that reconnects with
 * Last-Event-ID gets what it missed while the ring still holds it.
 */


#define NGX_HTTP_CIVCHAT_LIVE_POLL      100
#define NGX_HTTP_CIVCHAT_LIVE_PING      15000
#define NGX_HTTP_CIVCHAT_LIVE_MAX_SENT  1000


typedef struct {
    ngx_queue_t                   queue;
    ngx_http_request_t           *r;
    ngx_http_civchat_zone_t      *zone;
    ngx_str_t                     key;
    ngx_uint_t                    sent;
    uint64_t                      last;      /* the last id it was sent */
} ngx_http_civchat_stream_t;


/* a message copied out of the ring, to be written after the unlock */
typedef struct {
    uint64_t                      seq;
    ngx_uint_t                    type;
    ngx_str_t                     key;
    ngx_str_t                     data;
} ngx_http_civchat_copy_t;


static const char  *ngx_http_civchat_live_types[] = {
    "", "message", "payload", "profile"
};


static ngx_int_t ngx_http_civchat_live_ring(ngx_http_civchat_zone_t *zone);
static ngx_int_t ngx_http_civchat_stream_key(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *key);
static void ngx_http_civchat_stream_cleanup(void *data);
static void ngx_http_civchat_stream_write_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_civchat_stream_send(ngx_http_civchat_stream_t *st,
    u_char *text, size_t len);
static ngx_int_t ngx_http_civchat_stream_event(ngx_http_civchat_stream_t *st,
    ngx_http_civchat_copy_t *m);
static void ngx_http_civchat_stream_close(ngx_http_civchat_stream_t *st);
static ngx_array_t *ngx_http_civchat_live_copy(ngx_http_civchat_zone_t *zone,
    uint64_t from, ngx_str_t *key, ngx_pool_t *pool, uint64_t *upto);
static void ngx_http_civchat_live_handler(ngx_event_t *ev);


/* the ring is made when the first stream opens: a zone without */
/* streams spends nothing on it */

ngx_int_t
ngx_http_civchat_live_init(ngx_http_civchat_zone_t *zone)
{
    zone->sh->live_size = zone->live_size;

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_live_ring(ngx_http_civchat_zone_t *zone)
{
    size_t                    size;
    ngx_http_civchat_live_t  *ring;

    if (zone->sh->live != NULL) {
        return NGX_OK;
    }

    size = zone->sh->live_size * sizeof(ngx_http_civchat_live_t);

    ngx_shmtx_lock(&zone->shpool->mutex);

    if (zone->sh->live == NULL) {
        ring = ngx_slab_alloc_locked(zone->shpool, size);

        if (ring != NULL) {
            ngx_memzero(ring, size);
            zone->sh->live = ring;
        }
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return (zone->sh->live != NULL) ? NGX_OK : NGX_ERROR;
}


/*
 * The zone is full: live messages go before profiles do, the oldest
 * first.  The caller holds the lock.
 */

ngx_int_t
ngx_http_civchat_live_drop_oldest(ngx_http_civchat_zone_t *zone)
{
    ngx_http_civchat_live_t  *m;

    if (zone->sh->live == NULL) {
        return NGX_DECLINED;
    }

    while (zone->sh->live_oldest < zone->sh->live_seq) {
        m = &zone->sh->live[++zone->sh->live_oldest % zone->sh->live_size];

        if (m->data != NULL && m->seq == zone->sh->live_oldest) {
            ngx_slab_free_locked(zone->shpool, m->data);
            m->data = NULL;
            m->seq = 0;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* the caller holds the zone lock */

void
ngx_http_civchat_live_publish(ngx_http_civchat_zone_t *zone, ngx_str_t *key,
    ngx_uint_t type, u_char *data, size_t len)
{
    u_char                   *copy;
    uint64_t                  seq;
    ngx_http_civchat_live_t  *m;

    if (zone->sh->live == NULL || key->len == 0
        || key->len > NGX_HTTP_CIVCHAT_KEY_MAX)
    {
        /* no stream ever opened: nothing to tell */
        return;
    }

    if (type == NGX_HTTP_CIVCHAT_LIVE_PROFILE && zone->sh->streams == 0) {
        /*
         * profile changes matter to open widgets only; messages stay in
         * the ring for a widget that reconnects with Last-Event-ID
         */
        return;
    }

    copy = ngx_slab_alloc_locked(zone->shpool, len);
    if (copy == NULL) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "civchat zone \"%V\": no room for a live message",
                      &zone->name);
        return;
    }

    ngx_memcpy(copy, data, len);

    seq = zone->sh->live_seq + 1;
    m = &zone->sh->live[seq % zone->sh->live_size];

    if (m->data != NULL) {
        ngx_slab_free_locked(zone->shpool, m->data);
    }

    if (seq > zone->sh->live_size
        && zone->sh->live_oldest < seq - zone->sh->live_size)
    {
        zone->sh->live_oldest = seq - zone->sh->live_size;
    }

    m->data = copy;
    m->len = (uint32_t) len;
    m->type = (u_char) type;
    m->key_len = (u_char) key->len;
    ngx_memcpy(m->key, key->data, key->len);
    m->seq = seq;

    /* last: readers outside the lock compare against it */
    ngx_memory_barrier();
    zone->sh->live_seq = seq;
}


ngx_int_t
ngx_http_civchat_stream_handler(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf)
{
    u_char                     *p;
    uint64_t                    last;
    ngx_int_t                   rc;
    ngx_str_t                   key, value;
    ngx_uint_t                  i;
    ngx_array_t                *missed;
    ngx_table_elt_t            *h;
    ngx_http_cleanup_t         *cln;
    ngx_http_civchat_zone_t    *zone;
    ngx_http_civchat_copy_t    *m;
    ngx_http_civchat_stream_t  *st;

    zone = lcf->zone;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (zone->sh->live_size == 0) {
        return ngx_http_civchat_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                      "%s", "the live channel is off for "
                                      "this zone (civchat_zone live=0)");
    }

    if (ngx_http_civchat_live_ring(zone) != NGX_OK) {
        return ngx_http_civchat_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "zone_full", "%s", "the zone has no "
                                      "room for the live channel");
    }

    if (ngx_http_civchat_stream_key(r, lcf, &key) != NGX_OK) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "the stream needs the visitor key "
                                      "(cookie or ?key=)");
    }

    last = zone->sh->live_seq;

    /* a reconnect: what the client missed */
    h = ngx_http_civchat_find_header(r, "Last-Event-ID");

    if (h == NULL
        && ngx_http_arg(r, (u_char *) "last_id", 7, &value) == NGX_OK)
    {
        h = ngx_pcalloc(r->pool, sizeof(ngx_table_elt_t));
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->value = value;
    }

    if (h != NULL) {
        rc = ngx_atoof(h->value.data, h->value.len);

        if (rc >= 0 && (uint64_t) rc < last) {
            last = (uint64_t) rc;
        }
    }

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_civchat_stream_t));
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->r = r;
    st->zone = zone;
    st->key = key;
    st->last = last;

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    ngx_str_set(&value, "no-store");

    if (ngx_http_civchat_add_header(r, "Cache-Control", &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* proxies in front must pass each event on at once */
    ngx_str_set(&value, "no");

    if (ngx_http_civchat_add_header(r, "X-Accel-Buffering", &value)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    r->main->count++;
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_civchat_stream_write_handler;

    cln->handler = ngx_http_civchat_stream_cleanup;
    cln->data = st;

    ngx_queue_insert_tail(&zone->streams, &st->queue);
    (void) ngx_atomic_fetch_add(&zone->sh->streams, 1);

    if (!zone->live_ev.timer_set) {
        zone->live_read = zone->sh->live_seq;
        zone->live_pinged = ngx_current_msec;
        ngx_add_timer(&zone->live_ev, NGX_HTTP_CIVCHAT_LIVE_POLL);
    }

    p = (u_char *) "retry: 3000\n\n";

    if (ngx_http_civchat_stream_send(st, p, 13) != NGX_OK) {
        return NGX_DONE;
    }

    if (last < zone->sh->live_seq) {
        missed = ngx_http_civchat_live_copy(zone, last, &key, r->pool,
                                            &last);

        if (missed != NULL) {
            m = missed->elts;

            for (i = 0; i < missed->nelts; i++) {
                if (ngx_http_civchat_stream_event(st, &m[i]) != NGX_OK) {
                    break;
                }
            }
        }
    }

    return NGX_DONE;
}


static ngx_int_t
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
ngx_http_civchat_stream_cleanup(void *data)
{
    ngx_http_civchat_stream_t  *st = data;

    ngx_queue_remove(&st->queue);
    (void) ngx_atomic_fetch_add(&st->zone->sh->streams, -1);
}


static void
ngx_http_civchat_stream_write_handler(ngx_http_request_t *r)
{
    if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
    }
}


static ngx_int_t
ngx_http_civchat_stream_send(ngx_http_civchat_stream_t *st, u_char *text,
    size_t len)
{
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (st->r->connection->buffered & NGX_HTTP_WRITE_BUFFERED
        && st->sent > NGX_HTTP_CIVCHAT_LIVE_MAX_SENT / 10)
    {
        /* a client that does not read: let it reconnect */
        ngx_http_civchat_stream_close(st);
        return NGX_ERROR;
    }

    b = ngx_create_temp_buf(st->r->pool, len);
    if (b == NULL) {
        ngx_http_civchat_stream_close(st);
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->pos, text, len);
    b->flush = 1;

    out.buf = b;
    out.next = NULL;

    if (ngx_http_output_filter(st->r, &out) == NGX_ERROR) {
        ngx_http_civchat_stream_close(st);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_stream_event(ngx_http_civchat_stream_t *st,
    ngx_http_civchat_copy_t *m)
{
    u_char  *text, *p;
    size_t   len;

    len = sizeof("id: \nevent: \ndata: \n\n") + NGX_INT64_LEN + 16
          + m->data.len;

    text = ngx_pnalloc(st->r->pool, len);
    if (text == NULL) {
        ngx_http_civchat_stream_close(st);
        return NGX_ERROR;
    }

    /* the data is one line of JSON: no newline to split */
    p = ngx_sprintf(text, "id: %uL\nevent: %s\ndata: %V\n\n", m->seq,
                    ngx_http_civchat_live_types[m->type], &m->data);

    if (m->seq <= st->last) {
        /* replayed already, or from before the stream opened */
        return NGX_OK;
    }

    st->last = m->seq;

    if (ngx_http_civchat_stream_send(st, text, p - text) != NGX_OK) {
        return NGX_ERROR;
    }

    if (++st->sent >= NGX_HTTP_CIVCHAT_LIVE_MAX_SENT) {
        /* the request pool grows with every event: start afresh */
        ngx_http_civchat_stream_close(st);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_civchat_stream_close(ngx_http_civchat_stream_t *st)
{
    ngx_http_request_t  *r;

    r = st->r;

    /* the cleanup takes it off the list */
    ngx_http_finalize_request(r, ngx_http_send_special(r, NGX_HTTP_LAST));
}


/* the ring's messages after "from", for one key or all, copied out */

static ngx_array_t *
ngx_http_civchat_live_copy(ngx_http_civchat_zone_t *zone, uint64_t from,
    ngx_str_t *key, ngx_pool_t *pool, uint64_t *upto)
{
    uint64_t                  seq, to;
    ngx_array_t              *out;
    ngx_http_civchat_live_t  *m;
    ngx_http_civchat_copy_t  *c;

    out = ngx_array_create(pool, 4, sizeof(ngx_http_civchat_copy_t));
    if (out == NULL) {
        return NULL;
    }

    ngx_shmtx_lock(&zone->shpool->mutex);

    to = zone->sh->live_seq;
    *upto = to;

    if (to - from > zone->sh->live_size) {
        /* older ones are gone */
        from = to - zone->sh->live_size;
    }

    for (seq = from + 1; seq <= to; seq++) {
        m = &zone->sh->live[seq % zone->sh->live_size];

        if (m->seq != seq) {
            continue;
        }

        if (key != NULL
            && (key->len != m->key_len
                || ngx_memcmp(key->data, m->key, m->key_len) != 0))
        {
            continue;
        }

        c = ngx_array_push(out);
        if (c == NULL) {
            break;
        }

        c->seq = seq;
        c->type = m->type;
        c->key.len = m->key_len;
        c->key.data = ngx_pnalloc(pool, m->key_len + m->len);

        if (c->key.data == NULL) {
            out->nelts--;
            break;
        }

        ngx_memcpy(c->key.data, m->key, m->key_len);
        c->data.data = c->key.data + m->key_len;
        c->data.len = m->len;
        ngx_memcpy(c->data.data, m->data, m->len);
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return out;
}


void
ngx_http_civchat_live_init_process(ngx_http_civchat_zone_t *zone,
    ngx_cycle_t *cycle)
{
    ngx_queue_init(&zone->streams);

    zone->live_ev.handler = ngx_http_civchat_live_handler;
    zone->live_ev.data = zone;
    zone->live_ev.log = cycle->log;

    /* streams end with the worker: they do not hold up a reload */
    zone->live_ev.cancelable = 1;
}


static void
ngx_http_civchat_live_handler(ngx_event_t *ev)
{
    ngx_uint_t                  i, ping;
    ngx_pool_t                 *pool;
    ngx_queue_t                *q, *next;
    ngx_array_t                *news;
    ngx_http_civchat_zone_t    *zone;
    ngx_http_civchat_copy_t    *m;
    ngx_http_civchat_stream_t  *st;

    zone = ev->data;

    if (ngx_queue_empty(&zone->streams) || ngx_exiting || ngx_terminate) {
        return;
    }

    ngx_add_timer(ev, NGX_HTTP_CIVCHAT_LIVE_POLL);

    ping = (ngx_current_msec - zone->live_pinged
            >= NGX_HTTP_CIVCHAT_LIVE_PING);

    if (ping) {
        /* comments keep proxies and load balancers from timing out */
        zone->live_pinged = ngx_current_msec;

        for (q = ngx_queue_head(&zone->streams);
             q != ngx_queue_sentinel(&zone->streams);
             q = next)
        {
            next = ngx_queue_next(q);
            st = ngx_queue_data(q, ngx_http_civchat_stream_t, queue);

            (void) ngx_http_civchat_stream_send(st, (u_char *) ": ping\n\n",
                                                8);
        }
    }

    if (zone->sh->live_seq == zone->live_read) {
        return;
    }

    pool = ngx_create_pool(4096, ev->log);
    if (pool == NULL) {
        return;
    }

    news = ngx_http_civchat_live_copy(zone, zone->live_read, NULL, pool,
                                      &zone->live_read);

    if (news != NULL && news->nelts) {
        m = news->elts;

        for (i = 0; i < news->nelts; i++) {
            for (q = ngx_queue_head(&zone->streams);
                 q != ngx_queue_sentinel(&zone->streams);
                 q = next)
            {
                next = ngx_queue_next(q);
                st = ngx_queue_data(q, ngx_http_civchat_stream_t, queue);

                if (st->key.len == m[i].key.len
                    && ngx_memcmp(st->key.data, m[i].key.data, st->key.len)
                       == 0)
                {
                    (void) ngx_http_civchat_stream_event(st, &m[i]);
                }
            }
        }
    }

    ngx_destroy_pool(pool);
}


/*
 * The worker exits (reload, quit): its streams are closed here, before
 * nginx counts open sockets; the browsers reconnect to the new workers.
 */

void
ngx_http_civchat_live_exit_process(ngx_http_civchat_zone_t *zone)
{
    ngx_queue_t                *q;
    ngx_http_civchat_stream_t  *st;

    if (zone->streams.next == NULL) {
        return;
    }

    while (!ngx_queue_empty(&zone->streams)) {
        q = ngx_queue_head(&zone->streams);
        ngx_queue_remove(q);

        st = ngx_queue_data(q, ngx_http_civchat_stream_t, queue);

        (void) ngx_atomic_fetch_add(&zone->sh->streams, -1);

        /* the cleanup must not unlink it again */
        ngx_queue_init(&st->queue);

        ngx_close_connection(st->r->connection);
    }
}
