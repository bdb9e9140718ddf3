
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The live channel: GET <location>/stream holds a server-sent events
 * stream for a visitor's own key.  Only a live, proved key of a profile
 * gets one, at most civchat_stream_limit of them per key and per client
 * address across all workers.  What is said to the profile is kept in
 * the zone (live.c); every worker looks for news on a short timer and
 * writes them to the streams it holds, so a message posted to one worker
 * reaches a stream held by another.  The message's sequence number is
 * the event id: a client that reconnects with Last-Event-ID gets what
 * it missed while the zone still holds it.
 *
 * A zone on Redis keeps what is said in Redis instead (live_redis.c), in
 * a stream per profile whose entry ids are the event ids on every host:
 * the profile is read from Redis first, then where its stream stands
 * (or what followed the Last-Event-ID); a stream reads what follows its
 * last event whenever the channel announces news of its profile, when
 * the worker's subscription was made again, and, while the subscription
 * is not known to be there, every 15 seconds.
 *
 * A stream ends after civchat_stream_timeout without an event, when its
 * client does not read for send_timeout, after 1000 events, and when its
 * worker exits: then from the event loop, as a request should end, so
 * that an HTTP/2 connection closes cleanly with it.
 */


#define NGX_HTTP_CIVCHAT_LIVE_POLL      100
#define NGX_HTTP_CIVCHAT_LIVE_IDLE      1000     /* how often idle is seen */
#define NGX_HTTP_CIVCHAT_LIVE_PING      15000
#define NGX_HTTP_CIVCHAT_LIVE_MAX_SENT  1000

/* how long a browser waits before it reconnects, first on every stream */
#define NGX_HTTP_CIVCHAT_LIVE_RETRY     "retry: 3000\n\n"


typedef struct {
    ngx_rbtree_node_t             node;      /* key: crc32 of the profile */
    ngx_http_request_t           *r;
    ngx_http_civchat_zone_t      *zone;
    ngx_str_t                     key;       /* the browser's */
    ngx_str_t                     addr;
    ngx_str_t                     profile;   /* the profile's own key */
    ngx_uint_t                    sent;
    uint64_t                      last;      /* the last id it was sent */
    ngx_msec_t                    active;    /* when it last had news */
    ngx_msec_t                    idle;
    ngx_http_civchat_live_read_t *read;      /* on Redis: on its way */
    uint64_t                      asked;     /* its Last-Event-ID */
    unsigned                      given:1;   /* ... was sent */
    unsigned                      again:1;   /* news during a read */
    unsigned                      counted:1; /* in the zone's counts */
    unsigned                      listed:1;  /* in the worker's tree */
} ngx_http_civchat_stream_t;


/* on Redis, the request's context holds its stream while it opens */
#define ngx_http_civchat_stream_of(ctx)                                      \
    (*(ngx_http_civchat_stream_t **) ((ctx) + 1))


static const char  *ngx_http_civchat_live_types[] = {
    "", "message", "payload", "profile"
};


static ngx_int_t ngx_http_civchat_stream_open(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_http_civchat_stream_t *st,
    ngx_int_t *answer);
static ngx_int_t ngx_http_civchat_stream_asked(ngx_http_request_t *r,
    uint64_t *id);
static ngx_int_t ngx_http_civchat_stream_start(ngx_http_request_t *r,
    ngx_http_civchat_stream_t *st, ngx_http_civchat_live_copy_t *entries,
    ngx_uint_t n);
static ngx_int_t ngx_http_civchat_stream_redis(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_http_civchat_stream_t *st);
static void ngx_http_civchat_stream_resolved(ngx_http_request_t *r,
    ngx_int_t rc);
static ngx_int_t ngx_http_civchat_stream_checked(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_stream_t *st,
    ngx_int_t rc);
static void ngx_http_civchat_stream_first(void *data, ngx_int_t rc,
    uint64_t last, ngx_http_civchat_live_copy_t *entries, ngx_uint_t n,
    ngx_uint_t more);
static ngx_int_t ngx_http_civchat_stream_wait(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static void ngx_http_civchat_stream_resume(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc);
static ngx_int_t ngx_http_civchat_stream_later(ngx_http_request_t *r);
static void ngx_http_civchat_stream_fetch(ngx_http_civchat_stream_t *st);
static void ngx_http_civchat_stream_fetched(void *data, ngx_int_t rc,
    uint64_t last, ngx_http_civchat_live_copy_t *entries, ngx_uint_t n,
    ngx_uint_t more);
static void ngx_http_civchat_stream_heard(void *data, ngx_str_t *profile,
    uint64_t id);
static ngx_int_t ngx_http_civchat_stream_retry_only(ngx_http_request_t *r);
static void ngx_http_civchat_stream_cleanup(void *data);
static void ngx_http_civchat_stream_write_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_civchat_stream_send(ngx_http_civchat_stream_t *st,
    u_char *text, size_t len);
static ngx_int_t ngx_http_civchat_stream_event(ngx_http_civchat_stream_t *st,
    ngx_http_civchat_live_copy_t *m);
static void ngx_http_civchat_stream_deliver(ngx_http_civchat_stream_t *st,
    ngx_pool_t *pool);
static void ngx_http_civchat_stream_close(ngx_http_civchat_stream_t *st);
static void ngx_http_civchat_stream_release(ngx_http_civchat_stream_t *st);
static void ngx_http_civchat_stream_timer(ngx_event_t *ev);
static void ngx_http_civchat_stream_ping(ngx_http_civchat_zone_t *zone);
static void ngx_http_civchat_stream_news(ngx_http_civchat_zone_t *zone);
static void ngx_http_civchat_stream_all(ngx_http_civchat_zone_t *zone,
    ngx_pool_t *pool);
static void ngx_http_civchat_stream_profile(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_pool_t *pool, uint64_t id);


ngx_int_t
ngx_http_civchat_stream_handler(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf)
{
    uint64_t                    seq;
    ngx_int_t                   rc;
    ngx_http_cleanup_t         *cln;
    ngx_http_civchat_zone_t    *zone;
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

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_civchat_stream_t));
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->r = r;
    st->zone = zone;
    st->idle = lcf->stream_idle;

    /* the counts the zone keeps are given back when the request ends */
    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_civchat_stream_cleanup;
    cln->data = st;

    if (ngx_http_civchat_stream_key(r, lcf, &st->key) != NGX_OK) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "the stream needs the visitor key "
                                      "(cookie or ?key=)");
    }

    st->given = (ngx_http_civchat_stream_asked(r, &st->asked) == NGX_OK);

    if (zone->cluster != NULL) {
        return ngx_http_civchat_stream_redis(r, lcf, st);
    }

    if (ngx_http_civchat_stream_open(r, lcf, st, &rc) != NGX_OK) {
        return rc;
    }

    /* Last-Event-ID, else now; one ahead of the zone is now */

    seq = ngx_http_civchat_zone_live_seq(zone);
    st->last = (st->given && st->asked < seq) ? st->asked : seq;

    return ngx_http_civchat_stream_start(r, st, NULL, 0);
}


/*
 * The stream begins: its headers and retry, what it missed (entries
 * read from Redis, or what the zone holds), then news as they come.
 */

static ngx_int_t
ngx_http_civchat_stream_start(ngx_http_request_t *r,
    ngx_http_civchat_stream_t *st, ngx_http_civchat_live_copy_t *entries,
    ngx_uint_t n)
{
    ngx_int_t                 rc;
    ngx_uint_t                i;
    ngx_pool_t               *pool;
    ngx_http_civchat_zone_t  *zone;

    zone = st->zone;

    rc = ngx_http_civchat_stream_headers(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return ngx_http_civchat_stream_retry_only(r);
    }

    r->main->count++;
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_civchat_stream_write_handler;

    st->node.key = ngx_crc32_short(st->profile.data, st->profile.len);
    ngx_rbtree_insert(&zone->streams, &st->node);
    st->listed = 1;
    zone->nstreams++;

    st->active = ngx_current_msec;

    if (!zone->live_ev.timer_set) {
        zone->live_read = ngx_http_civchat_zone_live_seq(zone);
        zone->live_pinged = ngx_current_msec;
        zone->live_checked = ngx_current_msec;
        ngx_add_timer(&zone->live_ev, NGX_HTTP_CIVCHAT_LIVE_POLL);
    }

    if (ngx_http_civchat_stream_send(st,
                                     (u_char *) NGX_HTTP_CIVCHAT_LIVE_RETRY,
                                     sizeof(NGX_HTTP_CIVCHAT_LIVE_RETRY) - 1)
        != NGX_OK)
    {
        return NGX_DONE;
    }

    /* a reconnect: what the client missed */

    if (zone->cluster == NULL) {
        pool = ngx_create_pool(4096, r->connection->log);
        if (pool != NULL) {
            ngx_http_civchat_stream_deliver(st, pool);
            ngx_destroy_pool(pool);
        }

        return NGX_DONE;
    }

    for (i = 0; i < n; i++) {
        if (ngx_http_civchat_stream_event(st, &entries[i]) != NGX_OK) {
            return NGX_DONE;
        }
    }

    /*
     * news announced before the stream was listed here went unheard:
     * whatever followed the read is read now
     */
    ngx_http_civchat_stream_fetch(st);

    return NGX_DONE;
}


/*
 * On Redis: the key's profile is read first (this host may never have
 * seen it), then, once the key may have a stream, its stream in Redis.
 * Redis not answering: the stream ends at once, and the browser comes
 * back after its retry.
 */

static ngx_int_t
ngx_http_civchat_stream_redis(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_http_civchat_stream_t *st)
{
    ngx_int_t                 rc;
    ngx_http_civchat_ctx_t   *ctx;
    ngx_http_civchat_plan_t  *plan;

    ctx = ngx_http_civchat_new_ctx(r, lcf, NGX_HTTP_CIVCHAT_STREAM,
                                   sizeof(ngx_http_civchat_stream_t *));
    plan = ngx_palloc(r->pool, sizeof(ngx_http_civchat_plan_t));

    if (ctx == NULL || plan == NULL
        || ngx_http_civchat_plan_api(r, ctx, plan, NGX_HTTP_CIVCHAT_OP_READ,
                                     NGX_HTTP_CIVCHAT_BY_KEY, &st->key)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_civchat_stream_of(ctx) = st;

    rc = ngx_http_civchat_resolve(r, ctx, plan, NULL,
                                  ngx_http_civchat_stream_resolved);

    if (rc == NGX_DONE) {
        return ngx_http_civchat_stream_wait(r, ctx);
    }

    rc = ngx_http_civchat_stream_checked(r, ctx, st, rc);

    if (rc == NGX_DONE && ctx->answered) {
        rc = ctx->answer_rc;
    }

    return rc;
}


static void
ngx_http_civchat_stream_resolved(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_http_civchat_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);

    ctx->waiting = 0;

    rc = ngx_http_civchat_stream_checked(r, ctx,
                                         ngx_http_civchat_stream_of(ctx), rc);

    ngx_http_civchat_stream_resume(r, ctx, rc);
}


/* the profile is read: the zone's checks, then the stream's place */

static ngx_int_t
ngx_http_civchat_stream_checked(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_stream_t *st,
    ngx_int_t rc)
{
    if (rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
        return ngx_http_civchat_stream_later(r);
    }

    if (rc != NGX_OK && rc != NGX_DECLINED) {
        /* NGX_DECLINED, no such profile: the zone says so below */
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_civchat_stream_open(r, ctx->lcf, st, &rc) != NGX_OK) {
        return rc;
    }

    st->read = ngx_http_civchat_live_redis_read(st->zone, &st->profile,
                                                st->asked, st->given,
                                                ngx_http_civchat_stream_first,
                                                st);
    if (st->read == NULL) {
        return ngx_http_civchat_stream_later(r);
    }

    return ngx_http_civchat_stream_wait(r, ctx);
}


/* Redis said where the profile's stream stands, and what followed */

static void
ngx_http_civchat_stream_first(void *data, ngx_int_t rc, uint64_t last,
    ngx_http_civchat_live_copy_t *entries, ngx_uint_t n, ngx_uint_t more)
{
    ngx_http_civchat_stream_t *st = data;

    ngx_http_request_t      *r;
    ngx_http_civchat_ctx_t  *ctx;

    r = st->r;
    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);

    st->read = NULL;
    ctx->waiting = 0;

    if (rc != NGX_OK) {
        rc = ngx_http_civchat_stream_later(r);

    } else {
        /* the Last-Event-ID, else now; one ahead of Redis is now */
        st->last = (st->given && st->asked < last) ? st->asked : last;

        rc = ngx_http_civchat_stream_start(r, st, entries, n);
    }

    ngx_http_civchat_stream_resume(r, ctx, rc);
}


/* the request waits for Redis: finalized in ngx_http_civchat_stream_resume */

static ngx_int_t
ngx_http_civchat_stream_wait(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    ctx->waiting = 1;
    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_civchat_stream_resume(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc)
{
    ngx_connection_t  *c;

    if (rc == NGX_DONE && ctx->answered) {
        rc = ctx->answer_rc;
    }

    c = r->connection;

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/* the stream cannot start now: its retry and its end */

static ngx_int_t
ngx_http_civchat_stream_later(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    rc = ngx_http_civchat_stream_headers(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_civchat_stream_retry_only(r);
}


/*
 * The key may have a stream: counted in the zone (NGX_OK); otherwise
 * the answer says why, and *answer is what the handler returns.
 */

static ngx_int_t
ngx_http_civchat_stream_open(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_http_civchat_stream_t *st,
    ngx_int_t *answer)
{
    ngx_int_t                  rc;
    ngx_http_civchat_user_t    user;
    ngx_http_civchat_stats_t  *stats;

    st->addr = r->connection->addr_text;

    ngx_memzero(&user, sizeof(ngx_http_civchat_user_t));

    rc = ngx_http_civchat_zone_stream_open(st->zone, &st->key, &st->addr,
                                           lcf->stream_per_key,
                                           lcf->stream_per_address, &user,
                                           r->pool);
    if (rc == NGX_OK) {
        st->counted = 1;
        st->profile = user.profile;
        return NGX_OK;
    }

    stats = ngx_http_civchat_stats(r);

    if (stats != NULL) {
        ngx_http_civchat_count(r, &stats->streams_refused, 1);
    }

    *answer = ngx_http_civchat_stream_refuse(r, rc);

    return NGX_DECLINED;
}


/* Last-Event-ID (browsers send it themselves), else ?last_id= */

static ngx_int_t
ngx_http_civchat_stream_asked(ngx_http_request_t *r, uint64_t *id)
{
    off_t             n;
    ngx_str_t         value;
    ngx_table_elt_t  *h;

    h = ngx_http_civchat_find_header(r, "Last-Event-ID");

    if (h != NULL) {
        value = h->value;

    } else if (ngx_http_arg(r, (u_char *) "last_id", 7, &value) != NGX_OK) {
        return NGX_DECLINED;
    }

    n = ngx_atoof(value.data, value.len);

    if (n < 0) {
        /* not a number: from now on */
        return NGX_DECLINED;
    }

    *id = (uint64_t) n;

    return NGX_OK;
}


/*
 * A worker on its way out (a reload, a quit) holds no new stream: a
 * connection it accepted before may ask for one only now.  The retry and
 * the end at once, as its other streams end (README, "Live channel"):
 * the browser comes back to the next workers with its Last-Event-ID and
 * gets there what it missed.  The zone's counts go back with the request.
 */

static ngx_int_t
ngx_http_civchat_stream_retry_only(ngx_http_request_t *r)
{
    ngx_buf_t    *b;
    ngx_chain_t   out;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = (u_char *) NGX_HTTP_CIVCHAT_LIVE_RETRY;
    b->last = b->pos + sizeof(NGX_HTTP_CIVCHAT_LIVE_RETRY) - 1;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static void
ngx_http_civchat_stream_cleanup(void *data)
{
    ngx_http_civchat_stream_t  *st = data;

    if (st->read != NULL) {
        ngx_http_civchat_live_redis_cancel(st->read);
        st->read = NULL;
    }

    if (st->listed) {
        ngx_rbtree_delete(&st->zone->streams, &st->node);
        st->listed = 0;
        st->zone->nstreams--;
    }

    ngx_http_civchat_stream_release(st);
}


/* the zone's counts of this key's and address's streams */

static void
ngx_http_civchat_stream_release(ngx_http_civchat_stream_t *st)
{
    if (st->counted) {
        st->counted = 0;
        ngx_http_civchat_zone_stream_close(st->zone, &st->key, &st->addr);
    }
}


/* a client that does not read for send_timeout is let go */

static void
ngx_http_civchat_stream_write_handler(ngx_http_request_t *r)
{
    ngx_event_t               *wev;
    ngx_http_core_loc_conf_t  *clcf;

    wev = r->connection->write;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, NGX_ETIMEDOUT,
                      "civchat: the client of a stream timed out");
        r->connection->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (r->connection->buffered & NGX_HTTP_WRITE_BUFFERED) {
        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }

    } else if (wev->timer_set) {
        ngx_del_timer(wev);
    }
}


static ngx_int_t
ngx_http_civchat_stream_send(ngx_http_civchat_stream_t *st, u_char *text,
    size_t len)
{
    ngx_buf_t                 *b;
    ngx_chain_t                out;
    ngx_connection_t          *c;
    ngx_http_core_loc_conf_t  *clcf;

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

    c = st->r->connection;

    if ((c->buffered & NGX_HTTP_WRITE_BUFFERED) && !c->write->timer_set) {
        clcf = ngx_http_get_module_loc_conf(st->r, ngx_http_core_module);
        ngx_add_timer(c->write, clcf->send_timeout);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_stream_event(ngx_http_civchat_stream_t *st,
    ngx_http_civchat_live_copy_t *m)
{
    u_char  *text, *p;
    size_t   len;

    if (m->seq <= st->last) {
        /* replayed already, or from before the stream opened */
        return NGX_OK;
    }

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

    st->last = m->seq;
    st->active = ngx_current_msec;

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


/* what the zone holds for the stream's profile since it last had news */

static void
ngx_http_civchat_stream_deliver(ngx_http_civchat_stream_t *st,
    ngx_pool_t *pool)
{
    uint64_t                       upto;
    ngx_uint_t                     i;
    ngx_array_t                    messages;
    ngx_http_civchat_live_copy_t  *m;

    if (ngx_array_init(&messages, pool, 4,
                       sizeof(ngx_http_civchat_live_copy_t))
        != NGX_OK)
    {
        return;
    }

    if (ngx_http_civchat_zone_live_read(st->zone, st->last, &st->profile,
                                        pool, &messages, &upto)
        != NGX_OK)
    {
        return;
    }

    m = messages.elts;

    for (i = 0; i < messages.nelts; i++) {
        if (ngx_http_civchat_stream_event(st, &m[i]) != NGX_OK) {
            return;
        }
    }
}


static void
ngx_http_civchat_stream_close(ngx_http_civchat_stream_t *st)
{
    ngx_http_request_t  *r;

    r = st->r;

    /*
     * off the worker's list at once: the request may end only once its
     * output is out; the cleanup gives back the zone's counts then
     */

    if (st->listed) {
        ngx_rbtree_delete(&st->zone->streams, &st->node);
        st->listed = 0;
        st->zone->nstreams--;
    }

    if (st->read != NULL) {
        ngx_http_civchat_live_redis_cancel(st->read);
        st->read = NULL;
    }

    ngx_http_finalize_request(r, ngx_http_send_special(r, NGX_HTTP_LAST));
}


void
ngx_http_civchat_stream_init_process(ngx_http_civchat_zone_t *zone,
    ngx_cycle_t *cycle)
{
    ngx_rbtree_init(&zone->streams, &zone->streams_sentinel,
                    ngx_rbtree_insert_value);

    zone->live_ev.handler = ngx_http_civchat_stream_timer;
    zone->live_ev.data = zone;
    zone->live_ev.log = cycle->log;

    /*
     * not cancelable: a worker that exits (a reload, a quit) ends its
     * streams from this timer first
     */
    zone->live_ev.cancelable = 0;

    zone->live_heard = 0;

    if (zone->cluster != NULL && zone->sh->live_size) {
        (void) ngx_http_civchat_live_redis_listen(zone,
                                                ngx_http_civchat_stream_heard,
                                                zone, cycle);
    }
}


static void
ngx_http_civchat_stream_timer(ngx_event_t *ev)
{
    ngx_rbtree_node_t          *node;
    ngx_http_civchat_zone_t    *zone;
    ngx_http_civchat_stream_t  *st;

    zone = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        /* the browsers reconnect to the new workers */

        while (zone->streams.root != zone->streams.sentinel) {
            node = ngx_rbtree_min(zone->streams.root,
                                  zone->streams.sentinel);
            st = (ngx_http_civchat_stream_t *) node;
            ngx_http_civchat_stream_close(st);
        }

        return;
    }

    if (zone->nstreams == 0) {
        return;
    }

    ngx_add_timer(ev, NGX_HTTP_CIVCHAT_LIVE_POLL);

    if (ngx_current_msec - zone->live_checked >= NGX_HTTP_CIVCHAT_LIVE_IDLE) {
        zone->live_checked = ngx_current_msec;
        ngx_http_civchat_stream_ping(zone);
    }

    ngx_http_civchat_stream_news(zone);
}


/*
 * Every second: a stream with no news for its idle time ends (its
 * browser comes back); every 15 seconds, a comment on each of the
 * others keeps proxies and load balancers from timing out.
 */

static void
ngx_http_civchat_stream_ping(ngx_http_civchat_zone_t *zone)
{
    ngx_uint_t                  ping;
    ngx_rbtree_node_t          *node, *next, *sentinel;
    ngx_http_civchat_stream_t  *st;

    sentinel = zone->streams.sentinel;

    if (zone->streams.root == sentinel) {
        return;
    }

    ping = (ngx_current_msec - zone->live_pinged
            >= NGX_HTTP_CIVCHAT_LIVE_PING);

    if (ping) {
        zone->live_pinged = ngx_current_msec;
    }

    for (node = ngx_rbtree_min(zone->streams.root, sentinel);
         node != NULL;
         node = next)
    {
        next = ngx_rbtree_next(&zone->streams, node);
        st = (ngx_http_civchat_stream_t *) node;

        if (st->idle && ngx_current_msec - st->active >= st->idle) {
            ngx_http_civchat_stream_close(st);
            continue;
        }

        if (ping && zone->cluster != NULL && !zone->live_heard) {
            /* news may have gone unheard: what followed is read */
            ngx_http_civchat_stream_fetch(st);
        }

        if (ping) {
            (void) ngx_http_civchat_stream_send(st, (u_char *) ": ping\n\n",
                                                8);
        }
    }
}


static void
ngx_http_civchat_stream_news(ngx_http_civchat_zone_t *zone)
{
    uint64_t     upto;
    ngx_int_t    rc;
    ngx_str_t   *profile;
    ngx_uint_t   i;
    ngx_pool_t  *pool;
    ngx_array_t  news;

    if (ngx_http_civchat_zone_live_seq(zone) == zone->live_read) {
        return;
    }

    pool = ngx_create_pool(4096, zone->live_ev.log);
    if (pool == NULL) {
        return;
    }

    if (ngx_array_init(&news, pool, 8, sizeof(ngx_str_t)) != NGX_OK) {
        ngx_destroy_pool(pool);
        return;
    }

    rc = ngx_http_civchat_zone_live_news(zone, zone->live_read, pool, &news,
                                         &upto);
    zone->live_read = upto;

    if (rc == NGX_AGAIN) {
        /* more news than the hints hold: every stream looks for itself */
        ngx_http_civchat_stream_all(zone, pool);

    } else if (rc == NGX_OK) {
        profile = news.elts;

        for (i = 0; i < news.nelts; i++) {
            ngx_http_civchat_stream_profile(zone, &profile[i], pool, 0);
        }
    }

    ngx_destroy_pool(pool);
}


static void
ngx_http_civchat_stream_all(ngx_http_civchat_zone_t *zone, ngx_pool_t *pool)
{
    ngx_rbtree_node_t  *node, *next, *sentinel;

    sentinel = zone->streams.sentinel;

    if (zone->streams.root == sentinel) {
        return;
    }

    for (node = ngx_rbtree_min(zone->streams.root, sentinel);
         node != NULL;
         node = next)
    {
        next = ngx_rbtree_next(&zone->streams, node);

        ngx_http_civchat_stream_deliver((ngx_http_civchat_stream_t *) node,
                                        pool);
    }
}


/*
 * The worker's streams of one profile, by the crc32 of its key: what the
 * zone holds is delivered (pool), or, on Redis, each stream that was not
 * sent entry "id" yet reads what follows its last.
 */

static void
ngx_http_civchat_stream_profile(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_pool_t *pool, uint64_t id)
{
    uint32_t                    hash;
    ngx_rbtree_node_t          *node, *first, *next, *sentinel;
    ngx_http_civchat_stream_t  *st;

    hash = ngx_crc32_short(profile->data, profile->len);

    node = zone->streams.root;
    sentinel = zone->streams.sentinel;
    first = NULL;

    /* the leftmost node of this hash: equal ones go to the right */

    while (node != sentinel) {
        if (hash < node->key) {
            node = node->left;

        } else if (hash > node->key) {
            node = node->right;

        } else {
            first = node;
            node = node->left;
        }
    }

    for (node = first; node != NULL && node->key == hash; node = next) {
        next = ngx_rbtree_next(&zone->streams, node);
        st = (ngx_http_civchat_stream_t *) node;

        if (st->profile.len != profile->len
            || ngx_memcmp(st->profile.data, profile->data, profile->len) != 0)
        {
            continue;
        }

        if (pool != NULL) {
            ngx_http_civchat_stream_deliver(st, pool);

        } else if (st->last < id) {
            ngx_http_civchat_stream_fetch(st);
        }
    }
}


/* on Redis: the channel's news, or its subscription made or lost */

static void
ngx_http_civchat_stream_heard(void *data, ngx_str_t *profile, uint64_t id)
{
    ngx_http_civchat_zone_t *zone = data;

    ngx_rbtree_node_t  *node, *sentinel;

    if (profile != NULL) {
        ngx_http_civchat_stream_profile(zone, profile, NULL, id);
        return;
    }

    zone->live_heard = id;

    if (!id || zone->streams.root == zone->streams.sentinel) {
        return;
    }

    /* subscribed (again): what was said meanwhile went unheard */

    sentinel = zone->streams.sentinel;

    for (node = ngx_rbtree_min(zone->streams.root, sentinel);
         node != NULL;
         node = ngx_rbtree_next(&zone->streams, node))
    {
        ngx_http_civchat_stream_fetch((ngx_http_civchat_stream_t *) node);
    }
}


/* on Redis: what follows the stream's last event (one read at a time) */

static void
ngx_http_civchat_stream_fetch(ngx_http_civchat_stream_t *st)
{
    if (!st->listed) {
        return;
    }

    if (st->read != NULL) {
        /* read again once this read is answered */
        st->again = 1;
        return;
    }

    st->again = 0;

    /* NULL: no memory; the next news, or the poll, reads */
    st->read = ngx_http_civchat_live_redis_read(st->zone, &st->profile,
                                                st->last, 1,
                                                ngx_http_civchat_stream_fetched,
                                                st);
}


static void
ngx_http_civchat_stream_fetched(void *data, ngx_int_t rc, uint64_t last,
    ngx_http_civchat_live_copy_t *entries, ngx_uint_t n, ngx_uint_t more)
{
    ngx_http_civchat_stream_t *st = data;

    ngx_uint_t  i;

    st->read = NULL;

    if (rc == NGX_OK) {
        if (last < st->last) {
            /* the profile's stream was made anew (erased, expired) */
            st->last = last;
        }

        for (i = 0; i < n; i++) {
            if (ngx_http_civchat_stream_event(st, &entries[i]) != NGX_OK) {
                /* the stream ended, and may be freed */
                return;
            }
        }

    } else {
        /* Redis is not answering: the poll reads later */
        more = 0;
    }

    if (more || st->again) {
        ngx_http_civchat_stream_fetch(st);
    }
}


/*
 * A worker that ends without its event loop (SIGTERM) gives back the
 * zone's counts of its streams, so that their keys and addresses may
 * open new ones on the next workers.
 */

void
ngx_http_civchat_stream_exit_process(ngx_http_civchat_zone_t *zone)
{
    ngx_rbtree_node_t          *node, *sentinel;
    ngx_http_civchat_stream_t  *st;

    if (zone->streams.sentinel == NULL) {
        return;
    }

    sentinel = zone->streams.sentinel;

    while (zone->streams.root != sentinel) {
        node = ngx_rbtree_min(zone->streams.root, sentinel);
        st = (ngx_http_civchat_stream_t *) node;

        ngx_rbtree_delete(&zone->streams, node);
        st->listed = 0;
        zone->nstreams--;

        ngx_http_civchat_stream_release(st);
    }
}
