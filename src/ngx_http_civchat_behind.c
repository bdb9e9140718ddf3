
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_cluster.h"


/*
 * A zone on Redis, per worker (cluster.h): the deltas of page views and
 * attributes written behind, from a timer, each with the delta script
 * (applied once however often it is sent: its token is remembered);
 * and the channel on which every host announces the profiles it wrote,
 * so that the others read them again.
 *
 * A delta lives in the zone until Redis has it: one that could not be
 * written goes back and is written later, by any worker of this host
 * (a reload's new ones too).  A worker told to exit writes what there
 * is before it goes, waiting for Redis for a while (NGX_HTTP_CIVCHAT_
 * BEHIND_EXIT) when it does not answer.
 */


#define NGX_HTTP_CIVCHAT_BEHIND_BATCH    1024   /* deltas a tick */
#define NGX_HTTP_CIVCHAT_BEHIND_FLYING   4096   /* on their way, at most */
#define NGX_HTTP_CIVCHAT_BEHIND_EXIT     30000  /* ms an exiting worker
                                                   waits for Redis */
#define NGX_HTTP_CIVCHAT_BEHIND_FOLLOW   3      /* merges followed */


typedef struct {
    ngx_http_civchat_cluster_t   *cl;
    ngx_http_civchat_write_t     *w;
    ngx_str_t                     to;        /* the document written */
    ngx_uint_t                    follow;
    ngx_pool_t                   *pool;
    void                        (*done)(void *data, ngx_int_t rc);
    void                         *data;
} ngx_http_civchat_delta_t;


static void ngx_http_civchat_behind_message(void *data, ngx_str_t *channel,
    ngx_str_t *message);
static void ngx_http_civchat_behind_tick(ngx_event_t *ev);
static void ngx_http_civchat_behind_written(void *data, ngx_int_t rc);
static ngx_int_t ngx_http_civchat_behind_send(ngx_http_civchat_delta_t *d);
static void ngx_http_civchat_behind_reply(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);


void
ngx_http_civchat_behind_init_process(ngx_http_civchat_zone_t *zone,
    ngx_cycle_t *cycle)
{
    ngx_http_civchat_cluster_t  *cl;

    cl = zone->cluster;

    if (cl == NULL) {
        return;
    }

    cl->zone = zone;
    cl->log = cycle->log;

    /* every host hears every write: a classic (not sharded) channel */

    cl->sub = ngx_http_civchat_redis_subscribe(cl->redis, &cl->channel, 0,
                                               ngx_http_civchat_behind_message,
                                               cl);
    if (cl->sub == NULL) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "civchat zone \"%V\": cannot subscribe to \"%V\"",
                      &zone->name, &cl->channel);
    }

    cl->flush_ev.handler = ngx_http_civchat_behind_tick;
    cl->flush_ev.data = cl;
    cl->flush_ev.log = cycle->log;

    /* not cancelable: an exiting worker writes its deltas first */
    ngx_add_timer(&cl->flush_ev, cl->flush);
}


void
ngx_http_civchat_behind_exit_process(ngx_http_civchat_zone_t *zone)
{
    ngx_http_civchat_cluster_t  *cl;

    cl = zone->cluster;

    if (cl == NULL) {
        return;
    }

    if (cl->heard) {
        cl->heard = 0;
        ngx_http_civchat_zone_listen(zone, 0);
    }

    if (cl->flush_ev.timer_set) {
        ngx_del_timer(&cl->flush_ev);
    }
}


/*
 * "ORIGIN VERSION ID": another host wrote a profile.  Without a message
 * the subscription was made (again: what was said meanwhile is lost, so
 * the cache is read again) or lost (channel NULL).
 */

static void
ngx_http_civchat_behind_message(void *data, ngx_str_t *channel,
    ngx_str_t *message)
{
    ngx_http_civchat_cluster_t *cl = data;

    u_char     *p, *sp, *last;
    uint64_t    version;
    ngx_str_t   origin, id;

    if (message == NULL) {
        if (channel != NULL) {
            if (!cl->heard) {
                cl->heard = 1;
            }

            /* Redis answers again: requests ask it at once */
            cl->quiet = 0;
            cl->quiet_for = 0;

            ngx_http_civchat_zone_listen(cl->zone, 1);

        } else if (cl->heard) {
            cl->heard = 0;
            ngx_http_civchat_zone_listen(cl->zone, 0);
        }

        return;
    }

    p = message->data;
    last = p + message->len;

    sp = ngx_strlchr(p, last, ' ');
    if (sp == NULL) {
        return;
    }

    ngx_http_civchat_zone_origin(cl->zone, &origin);

    if ((size_t) (sp - p) == origin.len
        && ngx_memcmp(p, origin.data, origin.len) == 0)
    {
        /* this host's own write */
        return;
    }

    p = sp + 1;
    version = 0;

    while (p < last && *p >= '0' && *p <= '9') {
        version = version * 10 + (*p++ - '0');
    }

    if (p >= last || *p != ' ' || version == 0) {
        return;
    }

    id.data = p + 1;
    id.len = last - id.data;

    ngx_http_civchat_zone_changed(cl->zone, &id, version);
}


/* every cl->flush: the deltas of up to a batch of profiles */

static void
ngx_http_civchat_behind_tick(ngx_event_t *ev)
{
    ngx_http_civchat_cluster_t *cl = ev->data;

    ngx_str_t    *ids;
    ngx_uint_t    i, dirty;
    ngx_pool_t   *pool;
    ngx_array_t   list;

    dirty = 1;

    if (cl->flushing >= NGX_HTTP_CIVCHAT_BEHIND_FLYING) {
        /* Redis is slow: what is on its way first */
        goto again;
    }

    pool = ngx_create_pool(4096, cl->log);
    if (pool == NULL) {
        goto again;
    }

    if (ngx_array_init(&list, pool, 16, sizeof(ngx_str_t)) == NGX_OK
        && ngx_http_civchat_zone_dirty(cl->zone, pool, &list,
                                       NGX_HTTP_CIVCHAT_BEHIND_BATCH)
           == NGX_OK)
    {
        ids = list.elts;
        dirty = list.nelts;

        for (i = 0; i < list.nelts; i++) {
            if (ngx_http_civchat_behind_delta(cl, &ids[i],
                                              ngx_http_civchat_behind_written,
                                              cl)
                == NGX_OK)
            {
                cl->flushing++;
            }
        }
    }

    ngx_destroy_pool(pool);

again:

    if (ngx_exiting || ngx_quit || ngx_terminate) {

        if (cl->exit_start == 0) {
            cl->exit_start = ngx_current_msec;
        }

        if (cl->flushing == 0 && dirty == 0) {
            /* nothing more to write: the worker may go */
            return;
        }

        if (ngx_current_msec - cl->exit_start
            >= NGX_HTTP_CIVCHAT_BEHIND_EXIT)
        {
            ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                          "civchat zone \"%V\": Redis did not take the "
                          "last changes of this worker; they stay in the "
                          "zone for the next workers", &cl->zone->name);
            return;
        }
    }

    ngx_add_timer(&cl->flush_ev, cl->flush);
}


static void
ngx_http_civchat_behind_written(void *data, ngx_int_t rc)
{
    ngx_http_civchat_cluster_t *cl = data;

    cl->flushing--;
}


/*
 * One profile's delta taken from the zone and sent (the request's own
 * flush uses this too), in a pool of its own that lives until Redis has
 * answered: NGX_OK, and done(data, rc) is called then; NGX_DECLINED:
 * there is no delta to send.
 */

ngx_int_t
ngx_http_civchat_behind_delta(ngx_http_civchat_cluster_t *cl, ngx_str_t *id,
    void (*done)(void *data, ngx_int_t rc), void *data)
{
    ngx_int_t                  rc;
    ngx_pool_t                *pool;
    ngx_http_civchat_delta_t  *d;
    ngx_http_civchat_write_t  *w;

    pool = ngx_create_pool(2048, cl->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    d = ngx_pcalloc(pool, sizeof(ngx_http_civchat_delta_t));
    w = ngx_pcalloc(pool, sizeof(ngx_http_civchat_write_t));

    if (d == NULL || w == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    w->id.len = id->len;
    w->id.data = ngx_pstrdup(pool, id);

    rc = (w->id.data != NULL)
         ? ngx_http_civchat_zone_take(cl->zone, &w->id, pool, w)
         : NGX_ERROR;

    if (rc != NGX_OK) {
        ngx_destroy_pool(pool);
        return rc;
    }

    d->cl = cl;
    d->w = w;
    d->to = w->id;
    d->pool = pool;
    d->done = done;
    d->data = data;

    if (ngx_http_civchat_behind_send(d) != NGX_OK) {
        ngx_http_civchat_zone_flushed(cl->zone, w, NGX_ERROR, 0, 0);
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* KEYS[1] the document; origin, channel, id, token, then the delta */

static ngx_int_t
ngx_http_civchat_behind_send(ngx_http_civchat_delta_t *d)
{
    u_char                      *p;
    ngx_str_t                   *argv, *f, origin;
    ngx_uint_t                   i, argc;
    ngx_http_civchat_write_t    *w;
    ngx_http_civchat_cluster_t  *cl;

    cl = d->cl;
    w = d->w;

    argc = 5 + w->fields->nelts;

    argv = ngx_palloc(d->pool, argc * sizeof(ngx_str_t));
    if (argv == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_civchat_doc_key(d->pool, cl, 'p', &d->to, &argv[0])
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_civchat_zone_origin(cl->zone, &origin);

    argv[1] = origin;
    argv[2] = cl->channel;
    argv[3] = d->to;

    argv[4].data = ngx_pnalloc(d->pool, origin.len + 1 + NGX_INT64_LEN);
    if (argv[4].data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(argv[4].data, "%V:%uL", &origin, w->seq);
    argv[4].len = p - argv[4].data;

    f = w->fields->elts;

    for (i = 0; i < w->fields->nelts; i++) {
        argv[5 + i] = f[i];
    }

    if (ngx_http_civchat_redis_eval(cl->redis, cl->delta, 1, argc, argv,
                                    d->pool, ngx_http_civchat_behind_reply, d)
        == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* {1, version, old}: applied; {0}: no such profile; {2, survivor} */

static void
ngx_http_civchat_behind_reply(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_delta_t *d = data;

    uint64_t                         old, version;
    ngx_int_t                        result;
    ngx_http_civchat_redis_reply_t  *e;

    old = 0;
    version = 0;
    result = NGX_ERROR;

    if (rc != NGX_OK || reply->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY
        || reply->nelts == 0)
    {
        if (rc == NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, d->cl->log, 0,
                          "civchat zone \"%V\": the delta of \"%V\" was "
                          "refused: %V", &d->cl->zone->name, &d->w->id,
                          &reply->str);
        }

        goto done;
    }

    e = reply->elts;

    switch (ngx_http_civchat_doc_uint(&e[0])) {

    case 1:
        if (reply->nelts >= 3) {
            version = ngx_http_civchat_doc_uint(&e[1]);
            old = ngx_http_civchat_doc_uint(&e[2]);
            result = NGX_OK;
        }

        break;

    case 2:
        /* merged meanwhile: the survivor gets it */

        if (reply->nelts >= 2 && e[1].type == NGX_HTTP_CIVCHAT_REDIS_STRING
            && d->follow++ < NGX_HTTP_CIVCHAT_BEHIND_FOLLOW)
        {
            d->to.data = ngx_pstrdup(d->pool, &e[1].str);
            d->to.len = e[1].str.len;

            if (d->to.data != NULL && ngx_http_civchat_behind_send(d) == NGX_OK)
            {
                return;
            }
        }

        result = NGX_DECLINED;
        break;

    default:
        result = NGX_DECLINED;
        break;
    }

    if (result == NGX_OK && d->follow) {
        /* written to the survivor: this copy is gone */
        result = NGX_DECLINED;
    }

done:

    if (result != NGX_ERROR) {
        ngx_http_civchat_cluster_count(d->cl->zone, deltas);
    }

    ngx_http_civchat_zone_flushed(d->cl->zone, d->w, result, old, version);

    d->done(d->data, result);

    ngx_destroy_pool(d->pool);
}
