
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_cluster.h"


/*
 * A request's dealings with Redis (cluster.h), between two applies of
 * its plan to the cache.
 *
 * Reading: the deltas of the stale profiles it names are written first
 * (so that reading them loses nothing), then, at once, each name's
 * index entry and, for a key, the document it may be the own key of;
 * then the documents the entries name; each is checked to hold the
 * name, and all go in the cache.  Two round trips at most, one for a
 * visitor whose key is its profile's own (most are).
 *
 * Writing: the names the plan gave a profile are claimed (a script on
 * the name's slot sets it when it is free, held by the profile that
 * lost it, or by a profile whose document does not hold it), then the
 * documents are written on condition of the version the cache had, then
 * the profiles merged or erased, then the names no profile keeps are
 * let go.  A name held by someone else, or a document changed by
 * another host meanwhile, is a conflict: the request applies its plan
 * again to fresh copies.
 */


#define NGX_HTTP_CIVCHAT_PHASE_FLUSH     1
#define NGX_HTTP_CIVCHAT_PHASE_READ      2
#define NGX_HTTP_CIVCHAT_PHASE_OWNERS    3
#define NGX_HTTP_CIVCHAT_PHASE_CLAIMS    4
#define NGX_HTTP_CIVCHAT_PHASE_DOCS      5
#define NGX_HTTP_CIVCHAT_PHASE_GONE      6

#define NGX_HTTP_CIVCHAT_ASK_INDEX       1
#define NGX_HTTP_CIVCHAT_ASK_DOC         2


typedef struct {
    ngx_http_civchat_sync_t        *sync;
    ngx_http_civchat_name_t        *name;
    ngx_http_civchat_write_t       *w;
    ngx_str_t                       id;
    ngx_uint_t                      what;
    ngx_http_civchat_redis_cmd_t   *cmd;
    unsigned                        flush:1;   /* on the heap */
} ngx_http_civchat_ask_t;


static void ngx_http_civchat_cluster_cleanup(void *data);
static void ngx_http_civchat_cluster_cancel(ngx_http_civchat_sync_t *sync);
static ngx_uint_t ngx_http_civchat_cluster_quiet(
    ngx_http_civchat_cluster_t *cl);
static void ngx_http_civchat_cluster_next(ngx_http_civchat_sync_t *sync);
static void ngx_http_civchat_cluster_finish(ngx_http_civchat_sync_t *sync,
    ngx_int_t rc);
static void ngx_http_civchat_cluster_again(ngx_event_t *ev);
static ngx_int_t ngx_http_civchat_cluster_flush(
    ngx_http_civchat_sync_t *sync);
static void ngx_http_civchat_cluster_flushed(void *data, ngx_int_t rc);
static ngx_int_t ngx_http_civchat_cluster_reads(
    ngx_http_civchat_sync_t *sync);
static ngx_int_t ngx_http_civchat_cluster_owners(
    ngx_http_civchat_sync_t *sync);
static void ngx_http_civchat_cluster_found(ngx_http_civchat_sync_t *sync);
static ngx_http_civchat_doc_t *ngx_http_civchat_cluster_doc(
    ngx_http_civchat_sync_t *sync, ngx_str_t *id);
static ngx_int_t ngx_http_civchat_cluster_ask(ngx_http_civchat_sync_t *sync,
    ngx_uint_t what, ngx_http_civchat_name_t *name, ngx_str_t *id);
static void ngx_http_civchat_cluster_answer(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static ngx_int_t ngx_http_civchat_cluster_claims(
    ngx_http_civchat_sync_t *sync);
static ngx_int_t ngx_http_civchat_cluster_docs(ngx_http_civchat_sync_t *sync,
    ngx_uint_t gone);
static void ngx_http_civchat_cluster_releases(ngx_http_civchat_sync_t *sync,
    ngx_uint_t refused);
static ngx_uint_t ngx_http_civchat_cluster_unwritten(
    ngx_http_civchat_sync_t *sync, ngx_str_t *id);
static ngx_int_t ngx_http_civchat_cluster_eval(ngx_http_civchat_sync_t *sync,
    ngx_http_civchat_write_t *w, ngx_http_civchat_redis_script_t *script,
    ngx_uint_t argc, ngx_str_t *argv);
static void ngx_http_civchat_cluster_wrote(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static ngx_int_t ngx_http_civchat_cluster_index_key(
    ngx_http_civchat_sync_t *sync, ngx_http_civchat_name_t *name,
    ngx_str_t *key);
static void ngx_http_civchat_cluster_entry(ngx_http_civchat_name_t *name,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_cluster_drop(ngx_http_civchat_sync_t *sync,
    ngx_http_civchat_ask_t *ask);


/* a request's dealings, in its pool; cancelled if it goes first */

ngx_http_civchat_sync_t *
ngx_http_civchat_cluster_sync(ngx_http_civchat_zone_t *zone, ngx_pool_t *pool,
    ngx_log_t *log)
{
    ngx_pool_cleanup_t       *cln;
    ngx_http_civchat_sync_t  *sync;

    sync = ngx_pcalloc(pool, sizeof(ngx_http_civchat_sync_t));
    cln = ngx_pool_cleanup_add(pool, 0);

    if (sync == NULL || cln == NULL) {
        return NULL;
    }

    sync->zone = zone;
    sync->pool = pool;
    sync->log = log;

    if (ngx_array_init(&sync->flush, pool, 2, sizeof(ngx_str_t)) != NGX_OK
        || ngx_array_init(&sync->stale, pool, 2, sizeof(ngx_str_t)) != NGX_OK
        || ngx_array_init(&sync->fetch, pool, 4,
                          sizeof(ngx_http_civchat_name_t *))
           != NGX_OK
        || ngx_array_init(&sync->docs, pool, 4,
                          sizeof(ngx_http_civchat_doc_t))
           != NGX_OK
        || ngx_array_init(&sync->before, pool, 2,
                          sizeof(ngx_http_civchat_before_t))
           != NGX_OK
        || ngx_array_init(&sync->writes, pool, 4,
                          sizeof(ngx_http_civchat_write_t))
           != NGX_OK
        || ngx_array_init(&sync->cmds, pool, 4, sizeof(void *)) != NGX_OK)
    {
        return NULL;
    }

    cln->handler = ngx_http_civchat_cluster_cleanup;
    cln->data = sync;

    return sync;
}


static void
ngx_http_civchat_cluster_cleanup(void *data)
{
    ngx_http_civchat_cluster_cancel(data);
}


/*
 * Redis did not answer a read: with redis_down=cache the plan is applied
 * to what the cache has (1), with redis_down=refuse it is not (0).
 */

ngx_uint_t
ngx_http_civchat_cluster_down(ngx_http_civchat_sync_t *sync)
{
    if (sync->zone->cluster->down != NGX_HTTP_CIVCHAT_DOWN_CACHE) {
        return 0;
    }

    if (!sync->degraded) {
        sync->degraded = 1;
        ngx_log_error(NGX_LOG_WARN, sync->log, 0,
                      "civchat zone \"%V\": Redis is not answering, the "
                      "request is answered from the cache",
                      &sync->zone->name);
    }

    return 1;
}


/*
 * What apply() asked for (NGX_HTTP_CIVCHAT_NEEDS_REDIS: read; _WRITE:
 * write): NGX_DONE, and done(data, rc) is called later with NGX_OK,
 * NGX_DECLINED (a conflict: apply again) or NGX_ERROR (Redis did not
 * answer); NGX_ERROR now when nothing could be sent.
 */

ngx_int_t
ngx_http_civchat_cluster_run(ngx_http_civchat_sync_t *sync, ngx_uint_t needs,
    void (*done)(void *data, ngx_int_t rc), void *data)
{
    sync->rc = NGX_OK;
    sync->done = done;
    sync->data = data;
    sync->waiting = 0;
    sync->cmds.nelts = 0;
    sync->unanswered = 0;

    if (ngx_http_civchat_cluster_quiet(sync->zone->cluster)) {
        /* answered from the cache, or refused, at once */
        ngx_http_civchat_cluster_count(sync->zone, down);

        if (needs & NGX_HTTP_CIVCHAT_NEEDS_WRITE) {
            ngx_http_civchat_zone_written(sync->zone, sync, NGX_ERROR);
        }

        return NGX_ERROR;
    }

    if (needs & NGX_HTTP_CIVCHAT_NEEDS_WRITE) {
        ngx_http_civchat_cluster_count(sync->zone, writes);
        sync->phase = NGX_HTTP_CIVCHAT_PHASE_CLAIMS;

        if (ngx_http_civchat_cluster_claims(sync) != NGX_OK) {
            ngx_http_civchat_zone_written(sync->zone, sync, NGX_ERROR);
            return NGX_ERROR;
        }

    } else {
        ngx_http_civchat_cluster_count(sync->zone, reads);
        sync->phase = NGX_HTTP_CIVCHAT_PHASE_FLUSH;
        sync->docs.nelts = 0;

        if (ngx_http_civchat_cluster_flush(sync) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (sync->waiting == 0) {
        /* nothing was sent: the handlers are never called from here */
        ngx_http_civchat_cluster_next(sync);
    }

    return NGX_DONE;
}


/*
 * Redis did not answer a moment ago (NGX_HTTP_CIVCHAT_CLUSTER_QUIET,
 * doubled while it goes on not answering): the requests of that moment
 * do not each wait for the client's timeout; the first one after it
 * asks again, and all do once the change channel is made again.
 */

static ngx_uint_t
ngx_http_civchat_cluster_quiet(ngx_http_civchat_cluster_t *cl)
{
    if (!cl->quiet) {
        return 0;
    }

    if ((ngx_msec_int_t) (ngx_current_msec - cl->quiet_at)
        >= (ngx_msec_int_t) cl->quiet_for)
    {
        cl->quiet = 0;
        return 0;
    }

    return 1;
}


static void
ngx_http_civchat_cluster_next(ngx_http_civchat_sync_t *sync)
{
    for ( ;; ) {

        if (sync->rc != NGX_OK) {
            if (sync->phase >= NGX_HTTP_CIVCHAT_PHASE_CLAIMS) {
                ngx_http_civchat_cluster_releases(sync, 1);
                ngx_http_civchat_zone_written(sync->zone, sync, sync->rc);
            }

            ngx_http_civchat_cluster_finish(sync, sync->rc);
            return;
        }

        switch (sync->phase) {

        case NGX_HTTP_CIVCHAT_PHASE_FLUSH:
            sync->phase = NGX_HTTP_CIVCHAT_PHASE_READ;

            if (ngx_http_civchat_cluster_reads(sync) != NGX_OK) {
                sync->rc = NGX_ERROR;
            }

            break;

        case NGX_HTTP_CIVCHAT_PHASE_READ:
            sync->phase = NGX_HTTP_CIVCHAT_PHASE_OWNERS;

            if (ngx_http_civchat_cluster_owners(sync) != NGX_OK) {
                sync->rc = NGX_ERROR;
            }

            break;

        case NGX_HTTP_CIVCHAT_PHASE_OWNERS:
            ngx_http_civchat_cluster_found(sync);
            ngx_http_civchat_zone_install(sync->zone, sync);
            ngx_http_civchat_cluster_finish(sync, NGX_OK);
            return;

        case NGX_HTTP_CIVCHAT_PHASE_CLAIMS:
            sync->phase = NGX_HTTP_CIVCHAT_PHASE_DOCS;

            if (ngx_http_civchat_cluster_docs(sync, 0) != NGX_OK) {
                sync->rc = NGX_ERROR;
            }

            break;

        case NGX_HTTP_CIVCHAT_PHASE_DOCS:
            sync->phase = NGX_HTTP_CIVCHAT_PHASE_GONE;

            if (ngx_http_civchat_cluster_docs(sync, 1) != NGX_OK) {
                sync->rc = NGX_ERROR;
            }

            break;

        default: /* NGX_HTTP_CIVCHAT_PHASE_GONE */
            ngx_http_civchat_cluster_releases(sync, 0);
            ngx_http_civchat_zone_written(sync->zone, sync, NGX_OK);
            ngx_http_civchat_cluster_finish(sync, NGX_OK);
            return;
        }

        if (sync->waiting) {
            return;
        }
    }
}


/*
 * A conflict is applied again after a pause that doubles each time (1
 * ms to NGX_HTTP_CIVCHAT_CLUSTER_BACKOFF): the other host's writes are
 * likely on their way, and reading before they land only conflicts
 * again.
 */

static void
ngx_http_civchat_cluster_finish(ngx_http_civchat_sync_t *sync, ngx_int_t rc)
{
    ngx_msec_t                   delay;
    ngx_http_civchat_cluster_t  *cl;

    sync->phase = 0;
    cl = sync->zone->cluster;

    if (rc == NGX_ERROR && sync->unanswered) {
        cl->quiet = 1;
        cl->quiet_at = ngx_current_msec;
        cl->quiet_for = cl->quiet_for
                        ? ngx_min(cl->quiet_for * 2,
                                  NGX_HTTP_CIVCHAT_CLUSTER_QUIET_MAX)
                        : NGX_HTTP_CIVCHAT_CLUSTER_QUIET;

    } else if (rc != NGX_ERROR) {
        cl->quiet = 0;
        cl->quiet_for = 0;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_civchat_cluster_count(sync->zone, conflicts);

        delay = (ngx_msec_t) 1 << ngx_min(sync->conflicts, 6);
        sync->conflicts++;

        sync->backoff.handler = ngx_http_civchat_cluster_again;
        sync->backoff.data = sync;
        sync->backoff.log = sync->log;

        ngx_add_timer(&sync->backoff,
                      ngx_min(delay, NGX_HTTP_CIVCHAT_CLUSTER_BACKOFF));
        return;
    }

    if (rc == NGX_ERROR) {
        ngx_http_civchat_cluster_count(sync->zone, down);
    }

    sync->done(sync->data, rc);
}


static void
ngx_http_civchat_cluster_again(ngx_event_t *ev)
{
    ngx_http_civchat_sync_t *sync = ev->data;

    sync->done(sync->data, NGX_DECLINED);
}


/* the request ends first: its commands are dropped, its writes undone */

static void
ngx_http_civchat_cluster_cancel(ngx_http_civchat_sync_t *sync)
{
    ngx_uint_t               i;
    ngx_http_civchat_ask_t **ask;

    if (sync->backoff.timer_set) {
        ngx_del_timer(&sync->backoff);
    }

    if (sync->phase == 0) {
        return;
    }

    ask = sync->cmds.elts;

    for (i = 0; i < sync->cmds.nelts; i++) {
        if (ask[i] == NULL) {
            continue;
        }

        if (ask[i]->flush) {
            /* freed when its delta is answered */
            ask[i]->sync = NULL;

        } else if (ask[i]->cmd != NULL) {
            ngx_http_civchat_redis_cancel(ask[i]->cmd);
            ask[i]->cmd = NULL;
        }
    }

    if (sync->phase >= NGX_HTTP_CIVCHAT_PHASE_CLAIMS) {
        ngx_http_civchat_cluster_releases(sync, 1);
        ngx_http_civchat_zone_written(sync->zone, sync, NGX_ERROR);
    }

    sync->phase = 0;
    sync->waiting = 0;
}


/*
 * The deltas of stale profiles, written before they are read again.  A
 * delta's write outlives the request if it must (behind.c): what it
 * calls back is on the heap, and forgets the request when it goes.
 */

static ngx_int_t
ngx_http_civchat_cluster_flush(ngx_http_civchat_sync_t *sync)
{
    ngx_int_t                 rc;
    ngx_str_t                *ids;
    ngx_uint_t                i;
    ngx_http_civchat_ask_t   *ask, **slot;

    ids = sync->flush.elts;

    for (i = 0; i < sync->flush.nelts; i++) {
        ask = ngx_calloc(sizeof(ngx_http_civchat_ask_t), sync->log);
        slot = ngx_array_push(&sync->cmds);

        if (ask == NULL || slot == NULL) {
            ngx_free(ask);
            return NGX_ERROR;
        }

        ask->sync = sync;

        rc = ngx_http_civchat_behind_delta(sync->zone->cluster, &ids[i],
                                           ngx_http_civchat_cluster_flushed,
                                           ask);
        if (rc != NGX_OK) {
            ngx_free(ask);
            sync->cmds.nelts--;

            if (rc == NGX_ERROR) {
                return NGX_ERROR;
            }

            continue;
        }

        ask->flush = 1;
        *slot = ask;
        sync->waiting++;
    }

    return NGX_OK;
}


static void
ngx_http_civchat_cluster_flushed(void *data, ngx_int_t rc)
{
    ngx_http_civchat_ask_t *ask = data;

    ngx_http_civchat_sync_t  *sync;

    sync = ask->sync;

    if (sync == NULL) {
        /* the request went away */
        ngx_free(ask);
        return;
    }

    ngx_http_civchat_cluster_drop(sync, ask);
    ngx_free(ask);

    if (rc == NGX_ERROR) {
        /* (behind.c: no answer, or one it could not take) */
        sync->rc = NGX_ERROR;
        sync->unanswered = 1;
    }

    if (--sync->waiting == 0) {
        ngx_http_civchat_cluster_next(sync);
    }
}


/*
 * Each name's index entry, and a key's own document; and the documents
 * of the stale copies that hold the names here.
 */

static ngx_int_t
ngx_http_civchat_cluster_reads(ngx_http_civchat_sync_t *sync)
{
    ngx_str_t                 *ids;
    ngx_uint_t                 i, j;
    ngx_http_civchat_name_t  **names, *n;

    names = sync->fetch.elts;

    for (i = 0; i < sync->fetch.nelts; i++) {
        n = names[i];

        ngx_str_null(&n->owner);
        n->own = 0;
        n->stale = 0;
        n->young = 0;

        if (ngx_http_civchat_cluster_ask(sync, NGX_HTTP_CIVCHAT_ASK_INDEX, n,
                                         &n->value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (n->kind == NGX_HTTP_CIVCHAT_BY_KEY
            && ngx_http_civchat_cluster_ask(sync, NGX_HTTP_CIVCHAT_ASK_DOC, n,
                                            &n->value)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    ids = sync->stale.elts;

    for (i = 0; i < sync->stale.nelts; i++) {

        for (j = 0; j < sync->fetch.nelts; j++) {
            n = names[j];

            if (n->kind == NGX_HTTP_CIVCHAT_BY_KEY
                && n->value.len == ids[i].len
                && ngx_memcmp(n->value.data, ids[i].data, ids[i].len) == 0)
            {
                break;
            }
        }

        if (j == sync->fetch.nelts
            && ngx_http_civchat_cluster_ask(sync, NGX_HTTP_CIVCHAT_ASK_DOC,
                                            NULL, &ids[i])
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* the documents the index entries named, that were not read yet */

static ngx_int_t
ngx_http_civchat_cluster_owners(ngx_http_civchat_sync_t *sync)
{
    ngx_uint_t                 i;
    ngx_http_civchat_doc_t    *doc;
    ngx_http_civchat_name_t  **names, *n;

    names = sync->fetch.elts;

    for (i = 0; i < sync->fetch.nelts; i++) {
        n = names[i];

        if (n->owner.len == 0) {
            continue;
        }

        doc = ngx_http_civchat_cluster_doc(sync, &n->value);

        if (n->kind == NGX_HTTP_CIVCHAT_BY_KEY && doc != NULL
            && doc->identity != NULL)
        {
            /* the key is a profile's own */
            continue;
        }

        if (ngx_http_civchat_cluster_doc(sync, &n->owner) != NULL
            || ngx_http_civchat_cluster_ask(sync, NGX_HTTP_CIVCHAT_ASK_DOC,
                                            NULL, &n->owner)
               == NGX_OK)
        {
            continue;
        }

        return NGX_ERROR;
    }

    return NGX_OK;
}


/* what Redis said of each name: held by whom, and whether truly */

static void
ngx_http_civchat_cluster_found(ngx_http_civchat_sync_t *sync)
{
    ngx_uint_t                 i;
    ngx_http_civchat_doc_t    *doc;
    ngx_http_civchat_name_t  **names, *n;

    names = sync->fetch.elts;

    for (i = 0; i < sync->fetch.nelts; i++) {
        n = names[i];
        n->asked = 1;

        if (n->kind == NGX_HTTP_CIVCHAT_BY_KEY) {
            doc = ngx_http_civchat_cluster_doc(sync, &n->value);

            if (doc != NULL && doc->identity != NULL) {
                n->own = 1;
                n->owner = n->value;
                continue;
            }
        }

        if (n->owner.len == 0) {
            continue;
        }

        doc = ngx_http_civchat_cluster_doc(sync, &n->owner);

        /*
         * an entry left by a write that did not finish is free to take;
         * a young one is a claim whose document may be on its way
         */
        n->stale = !n->young
                   && (doc == NULL || !ngx_http_civchat_doc_holds(doc, n));
    }
}


static ngx_http_civchat_doc_t *
ngx_http_civchat_cluster_doc(ngx_http_civchat_sync_t *sync, ngx_str_t *id)
{
    ngx_uint_t               i;
    ngx_http_civchat_doc_t  *doc;

    doc = sync->docs.elts;

    for (i = 0; i < sync->docs.nelts; i++) {
        if (doc[i].id.len == id->len
            && ngx_memcmp(doc[i].id.data, id->data, id->len) == 0)
        {
            return &doc[i];
        }
    }

    return NULL;
}


/* GET of a name's index entry, or HGETALL of a document */

static ngx_int_t
ngx_http_civchat_cluster_ask(ngx_http_civchat_sync_t *sync, ngx_uint_t what,
    ngx_http_civchat_name_t *name, ngx_str_t *id)
{
    ngx_str_t                 argv[2];
    ngx_http_civchat_ask_t   *ask, **slot;

    ask = ngx_pcalloc(sync->pool, sizeof(ngx_http_civchat_ask_t));
    slot = ngx_array_push(&sync->cmds);

    if (ask == NULL || slot == NULL) {
        return NGX_ERROR;
    }

    ask->sync = sync;
    ask->name = name;
    ask->id = *id;
    ask->what = what;

    if (what == NGX_HTTP_CIVCHAT_ASK_INDEX) {
        if (ngx_http_civchat_cluster_index_key(sync, name, &argv[0])
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ask->cmd = ngx_http_civchat_redis_eval(sync->zone->cluster->redis,
                                               sync->zone->cluster->lookup,
                                               1, 1, argv, sync->pool,
                                               ngx_http_civchat_cluster_answer,
                                               ask);

    } else {
        ngx_str_set(&argv[0], "HGETALL");

        if (ngx_http_civchat_doc_key(sync->pool, sync->zone->cluster, 'p',
                                     id, &argv[1])
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ask->cmd = ngx_http_civchat_redis_command(
                       sync->zone->cluster->redis, &argv[1], 2, argv,
                       sync->pool, ngx_http_civchat_cluster_answer, ask);
    }

    if (ask->cmd == NULL) {
        return NGX_ERROR;
    }

    *slot = ask;
    sync->waiting++;

    return NGX_OK;
}


static void
ngx_http_civchat_cluster_answer(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_ask_t *ask = data;

    ngx_http_civchat_doc_t   *doc;
    ngx_http_civchat_sync_t  *sync;

    sync = ask->sync;

    ngx_http_civchat_cluster_drop(sync, ask);

    sync->unanswered |= (rc != NGX_OK);

    if (rc != NGX_OK || reply->type == NGX_HTTP_CIVCHAT_REDIS_ERROR) {
        ngx_log_error(NGX_LOG_ERR, sync->log, 0,
                      "civchat zone \"%V\": reading \"%V\" from Redis "
                      "failed: %V", &sync->zone->name, &ask->id, &reply->str);
        sync->rc = NGX_ERROR;
        goto next;
    }

    if (ask->what == NGX_HTTP_CIVCHAT_ASK_INDEX) {
        ngx_http_civchat_cluster_entry(ask->name, reply);
        goto next;
    }

    doc = ngx_array_push(&sync->docs);
    if (doc == NULL) {
        sync->rc = NGX_ERROR;
        goto next;
    }

    if (ngx_http_civchat_doc_parse(sync->pool, &ask->id, reply, doc)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, sync->log, 0,
                      "civchat zone \"%V\": profile \"%V\" in Redis is "
                      "unreadable, taken as none", &sync->zone->name,
                      &ask->id);

        ngx_memzero(doc, sizeof(ngx_http_civchat_doc_t));
        doc->id = ask->id;
    }

next:

    if (--sync->waiting == 0) {
        ngx_http_civchat_cluster_next(sync);
    }
}


/*
 * lookup's answer: the id an index entry names, and whether it was
 * claimed a moment ago (its claimer may not have written the document
 * that holds the name yet: the entry is not stale, whatever the
 * document says)
 */

static void
ngx_http_civchat_cluster_entry(ngx_http_civchat_name_t *name,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_redis_reply_t  *e;

    if (reply->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY || reply->nelts != 2) {
        return;
    }

    e = reply->elts;

    if (e[0].type != NGX_HTTP_CIVCHAT_REDIS_STRING || e[0].str.len == 0
        || e[0].str.len > NGX_HTTP_CIVCHAT_KEY_MAX
        || e[1].type != NGX_HTTP_CIVCHAT_REDIS_INTEGER)
    {
        return;
    }

    name->owner = e[0].str;
    name->young = (e[1].integer < NGX_HTTP_CIVCHAT_CLUSTER_GRACE);
}


static void
ngx_http_civchat_cluster_drop(ngx_http_civchat_sync_t *sync,
    ngx_http_civchat_ask_t *ask)
{
    ngx_uint_t               i;
    ngx_http_civchat_ask_t **slot;

    ask->cmd = NULL;
    slot = sync->cmds.elts;

    for (i = 0; i < sync->cmds.nelts; i++) {
        if (slot[i] == ask) {
            slot[i] = NULL;
            return;
        }
    }
}


/* the names the plan gave a profile, each claimed at once */

static ngx_int_t
ngx_http_civchat_cluster_claims(ngx_http_civchat_sync_t *sync)
{
    ngx_str_t                  argv[3];
    ngx_uint_t                 i;
    ngx_http_civchat_write_t  *w;

    w = sync->writes.elts;

    for (i = 0; i < sync->writes.nelts; i++) {
        if (w[i].type != NGX_HTTP_CIVCHAT_WRITE_CLAIM) {
            continue;
        }

        if (ngx_http_civchat_cluster_index_key(sync, &w[i].name, &argv[0])
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        argv[1] = w[i].id;
        argv[2] = w[i].expected;

        if (ngx_http_civchat_cluster_eval(sync, &w[i],
                                          sync->zone->cluster->claim, 3, argv)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* the documents (gone: the profiles merged or erased), each at once */

static ngx_int_t
ngx_http_civchat_cluster_docs(ngx_http_civchat_sync_t *sync, ngx_uint_t gone)
{
    ngx_str_t                   *argv, *f, origin;
    ngx_uint_t                   i, j, argc, n;
    ngx_http_civchat_write_t    *w;
    ngx_http_civchat_cluster_t  *cl;

    cl = sync->zone->cluster;
    w = sync->writes.elts;

    ngx_http_civchat_zone_origin(sync->zone, &origin);

    for (i = 0; i < sync->writes.nelts; i++) {

        if (gone ? (w[i].type != NGX_HTTP_CIVCHAT_WRITE_MERGED
                    && w[i].type != NGX_HTTP_CIVCHAT_WRITE_ERASE)
                 : w[i].type != NGX_HTTP_CIVCHAT_WRITE_DOC)
        {
            continue;
        }

        n = (w[i].fields != NULL) ? w[i].fields->nelts : 0;
        argc = 6 + n;

        argv = ngx_palloc(sync->pool, argc * sizeof(ngx_str_t));
        if (argv == NULL
            || ngx_http_civchat_doc_key(sync->pool, cl, 'p', &w[i].id,
                                        &argv[0])
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        argv[1] = origin;
        argv[2] = w[i].expected;
        argv[3] = cl->channel;
        argv[4] = w[i].id;

        switch (w[i].type) {

        case NGX_HTTP_CIVCHAT_WRITE_DOC:
            ngx_str_set(&argv[5], "doc");
            break;

        case NGX_HTTP_CIVCHAT_WRITE_MERGED:
            ngx_str_set(&argv[5], "merged");
            break;

        default:
            ngx_str_set(&argv[5], "erase");
            break;
        }

        f = (n != 0) ? w[i].fields->elts : NULL;

        for (j = 0; j < n; j++) {
            argv[6 + j] = f[j];
        }

        if (ngx_http_civchat_cluster_eval(sync, &w[i], cl->write, argc, argv)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The names no profile keeps: let go, no answer awaited.  Refused: the
 * names this plan claimed for a profile whose document was not
 * written (it does not hold them), so that no entry is left naming it.
 */

static void
ngx_http_civchat_cluster_releases(ngx_http_civchat_sync_t *sync,
    ngx_uint_t refused)
{
    ngx_str_t                  argv[2];
    ngx_uint_t                 i;
    ngx_http_civchat_write_t  *w;

    w = sync->writes.elts;

    for (i = 0; i < sync->writes.nelts; i++) {
        if (refused
            ? (w[i].type != NGX_HTTP_CIVCHAT_WRITE_CLAIM || !w[i].claimed
               || !ngx_http_civchat_cluster_unwritten(sync, &w[i].id))
            : w[i].type != NGX_HTTP_CIVCHAT_WRITE_RELEASE)
        {
            continue;
        }

        w[i].claimed = 0;

        if (ngx_http_civchat_cluster_index_key(sync, &w[i].name, &argv[0])
            != NGX_OK)
        {
            return;
        }

        argv[1] = w[i].id;

        /* the arguments are copied: the request may go first */
        (void) ngx_http_civchat_redis_eval(sync->zone->cluster->redis,
                                           sync->zone->cluster->release, 1, 2,
                                           argv, NULL, NULL, NULL);
    }
}


static ngx_uint_t
ngx_http_civchat_cluster_unwritten(ngx_http_civchat_sync_t *sync,
    ngx_str_t *id)
{
    ngx_uint_t                 i;
    ngx_http_civchat_write_t  *w;

    w = sync->writes.elts;

    for (i = 0; i < sync->writes.nelts; i++) {
        if (w[i].type == NGX_HTTP_CIVCHAT_WRITE_DOC && w[i].version
            && w[i].id.len == id->len
            && ngx_memcmp(w[i].id.data, id->data, id->len) == 0)
        {
            return 0;
        }
    }

    return 1;
}


static ngx_int_t
ngx_http_civchat_cluster_eval(ngx_http_civchat_sync_t *sync,
    ngx_http_civchat_write_t *w, ngx_http_civchat_redis_script_t *script,
    ngx_uint_t argc, ngx_str_t *argv)
{
    ngx_http_civchat_ask_t   *ask, **slot;

    ask = ngx_pcalloc(sync->pool, sizeof(ngx_http_civchat_ask_t));
    slot = ngx_array_push(&sync->cmds);

    if (ask == NULL || slot == NULL) {
        return NGX_ERROR;
    }

    ask->sync = sync;
    ask->w = w;
    ask->id = w->id;

    ask->cmd = ngx_http_civchat_redis_eval(sync->zone->cluster->redis, script,
                                           1, argc, argv, sync->pool,
                                           ngx_http_civchat_cluster_wrote,
                                           ask);
    if (ask->cmd == NULL) {
        return NGX_ERROR;
    }

    *slot = ask;
    sync->waiting++;

    return NGX_OK;
}


/* claim: 1, or who holds it; write: {1, version} or {0, version} */

static void
ngx_http_civchat_cluster_wrote(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_ask_t *ask = data;

    ngx_http_civchat_sync_t         *sync;
    ngx_http_civchat_write_t        *w;
    ngx_http_civchat_redis_reply_t  *e;

    sync = ask->sync;
    w = ask->w;

    ngx_http_civchat_cluster_drop(sync, ask);

    sync->unanswered |= (rc != NGX_OK);

    if (rc != NGX_OK || reply->type == NGX_HTTP_CIVCHAT_REDIS_ERROR) {
        ngx_log_error(NGX_LOG_ERR, sync->log, 0,
                      "civchat zone \"%V\": writing profile \"%V\" to Redis "
                      "failed: %V", &sync->zone->name, &w->id, &reply->str);
        sync->rc = NGX_ERROR;
        goto next;
    }

    if (w->type == NGX_HTTP_CIVCHAT_WRITE_CLAIM) {
        if (reply->type == NGX_HTTP_CIVCHAT_REDIS_INTEGER
            && reply->integer == 2)
        {
            w->claimed = 1;

        } else if (reply->type != NGX_HTTP_CIVCHAT_REDIS_INTEGER) {
            /* held by another profile: the plan saw too old a cache */
            if (sync->rc == NGX_OK) {
                sync->rc = NGX_DECLINED;
            }
        }

        goto next;
    }

    if (reply->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY || reply->nelts < 2) {
        sync->rc = NGX_ERROR;
        goto next;
    }

    e = reply->elts;

    if (ngx_http_civchat_doc_uint(&e[0]) == 1) {
        w->version = ngx_http_civchat_doc_uint(&e[1]);

    } else if (sync->rc == NGX_OK) {
        /* another host wrote it since it was read */
        sync->rc = NGX_DECLINED;
    }

next:

    if (--sync->waiting == 0) {
        ngx_http_civchat_cluster_next(sync);
    }
}


static ngx_int_t
ngx_http_civchat_cluster_index_key(ngx_http_civchat_sync_t *sync,
    ngx_http_civchat_name_t *name, ngx_str_t *key)
{
    return ngx_http_civchat_doc_key(sync->pool, sync->zone->cluster,
                                    name->kind, &name->value, key);
}
