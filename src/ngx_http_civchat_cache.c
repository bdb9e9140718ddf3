
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_cluster.h"


/*
 * The zone as a cache of the profiles on Redis (cluster.h), under the
 * zone's lock (zone.c calls these): each cached profile's part (its
 * version, its freshness), the delta kept for write-behind (behind.c
 * takes it and says how its write went), and what the channel says;
 * cache_plan.c works out a plan's reads and writes with these.
 *
 * A cached profile is fresh while no write of another host was
 * announced for it (a newer version on the channel marks it stale), and
 * while the channel is heard: a worker that subscribes again (messages
 * may have been lost meanwhile) bumps the generation, and every profile
 * read before is stale; with no worker subscribed, nothing is fresh.
 */


#define NGX_HTTP_CIVCHAT_CACHE_NAMES     16384  /* at most, in the list */


static void ngx_http_civchat_cache_add_name(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_cached_t *c, ngx_str_t *quoted);


/* the automatic values of a visit (text.c), as their names' JSON */
static ngx_str_t  ngx_http_civchat_cache_autos[] = {
    ngx_string("\"last_ip\""),
    ngx_string("\"browser_language\""),
    ngx_string("\"country\""),
    ngx_string("\"region\""),
    ngx_string("\"city\""),
    ngx_string("\"timezone\""),
    ngx_null_string
};


/* the zone's shared part, made once with the zone */

ngx_int_t
ngx_http_civchat_cache_init(ngx_http_civchat_zone_t *zone)
{
    ngx_uint_t                      i;
    ngx_http_civchat_cluster_sh_t  *csh;

    csh = ngx_slab_calloc(zone->shpool, sizeof(ngx_http_civchat_cluster_sh_t));
    if (csh == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_init(&csh->dirty);
    csh->gen = 1;

    /* this host's name on the channel: its own writes are not news */
    for (i = 0; i < NGX_HTTP_CIVCHAT_KEY_LEN; i++) {
        csh->origin[i] = "0123456789abcdef"[ngx_random() & 0xf];
    }

    zone->sh->cluster = csh;

    return NGX_OK;
}


ngx_http_civchat_cluster_sh_t *
ngx_http_civchat_cache_sh(ngx_http_civchat_zone_t *zone)
{
    return zone->sh->cluster;
}


/* the profile whose own key is id */

ngx_http_civchat_profile_t *
ngx_http_civchat_cache_own(ngx_http_civchat_zone_t *zone, ngx_str_t *id)
{
    ngx_http_civchat_index_t  *ix;

    ix = ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY, id);

    if (ix == NULL || ix->alias) {
        return NULL;
    }

    return ngx_http_civchat_store_owner(zone, ix);
}


ngx_http_civchat_cached_t *
ngx_http_civchat_cache_part(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p)
{
    ngx_http_civchat_cached_t  *c;

    c = ngx_http_civchat_cache_of(zone, p);

    if (c != NULL) {
        return c;
    }

    c = ngx_http_civchat_store_alloc(zone, sizeof(ngx_http_civchat_cached_t));
    if (c == NULL) {
        return NULL;
    }

    ngx_memzero(c, sizeof(ngx_http_civchat_cached_t));

    c->gen = ngx_http_civchat_cache_sh(zone)->gen;
    c->flags = NGX_HTTP_CIVCHAT_CACHE_NEW;
    c->profile = (uint32_t) ((u_char *) p - (u_char *) zone->shpool);

    p->cache = (uint32_t) ((u_char *) c - (u_char *) zone->shpool);

    return c;
}


ngx_uint_t
ngx_http_civchat_cache_fresh(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_cached_t *c)
{
    ngx_http_civchat_cluster_sh_t  *csh;

    csh = ngx_http_civchat_cache_sh(zone);

    if (c == NULL) {
        return 0;
    }

    if (c->flags & NGX_HTTP_CIVCHAT_CACHE_NEW) {
        /* made here, written or not yet: nobody else has it */
        return 1;
    }

    return !(c->flags & NGX_HTTP_CIVCHAT_CACHE_STALE)
           && c->gen == csh->gen && csh->listening;
}


/*
 * An old copy out of the cache, unless it has a delta to write (a delta
 * on its way is not: cache_flushed() finds the copy that replaced it).
 */

ngx_int_t
ngx_http_civchat_cache_remove(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p)
{
    ngx_http_civchat_cached_t  *c;

    c = ngx_http_civchat_cache_of(zone, p);

    if (c != NULL && (c->flags & NGX_HTTP_CIVCHAT_CACHE_DIRTY)) {
        c->flags |= NGX_HTTP_CIVCHAT_CACHE_STALE;
        return NGX_DECLINED;
    }

    ngx_http_civchat_store_delete(zone, p);

    return NGX_OK;
}


/* a visit counted, attributes changed: the delta (zone.c) */

void
ngx_http_civchat_cache_visit(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_uint_t session, ngx_uint_t ua)
{
    ngx_http_civchat_cached_t  *c;

    c = ngx_http_civchat_cache_part(zone, p);
    if (c == NULL) {
        return;
    }

    c->views++;
    c->sessions += session;

    if (ua) {
        c->flags |= NGX_HTTP_CIVCHAT_CACHE_UA;
    }

    ngx_http_civchat_cache_dirty_on(zone, c);
}


void
ngx_http_civchat_cache_attrs(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_plan_t *plan,
    ngx_uint_t autos)
{
    ngx_uint_t                  i;
    ngx_http_civchat_change_t  *ch;
    ngx_http_civchat_cached_t  *c;

    c = ngx_http_civchat_cache_part(zone, p);
    if (c == NULL) {
        return;
    }

    ch = plan->changes.elts;

    for (i = 0; i < plan->changes.nelts; i++) {
        ngx_http_civchat_cache_add_name(zone, c, &ch[i].quoted);
    }

    for (i = 0; autos && ngx_http_civchat_cache_autos[i].len; i++) {
        ngx_http_civchat_cache_add_name(zone, c,
                                        &ngx_http_civchat_cache_autos[i]);
    }

    ngx_http_civchat_cache_dirty_on(zone, c);
}


/* a name in the delta's list, once; "ALL" when the list cannot grow */

static void
ngx_http_civchat_cache_add_name(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_cached_t *c, ngx_str_t *quoted)
{
    u_char  *old, *p, *last, *list;
    size_t   len;

    if (c->flags & NGX_HTTP_CIVCHAT_CACHE_ALL) {
        return;
    }

    old = c->names ? ngx_http_civchat_cache_ptr(zone, c->names) : NULL;
    last = (old != NULL) ? old + c->names_len : NULL;

    for (p = old; p != NULL && p < last; p += ngx_strlen(p) + 1) {
        if (ngx_strlen(p) == quoted->len
            && ngx_memcmp(p, quoted->data, quoted->len) == 0)
        {
            return;
        }
    }

    len = c->names_len + quoted->len + 1;

    list = (len <= NGX_HTTP_CIVCHAT_CACHE_NAMES)
           ? ngx_http_civchat_store_alloc(zone, len) : NULL;

    if (list == NULL) {
        c->flags |= NGX_HTTP_CIVCHAT_CACHE_ALL;
        return;
    }

    p = list;

    if (old != NULL) {
        /* (a memcpy() from NULL would let the compiler drop the test) */
        p = ngx_cpymem(p, old, c->names_len);
        ngx_http_civchat_store_free(zone, old);
    }

    p = ngx_cpymem(p, quoted->data, quoted->len);
    *p = '\0';

    c->names = (uint32_t) (list - (u_char *) zone->shpool);
    c->names_len = (uint16_t) len;
}


void
ngx_http_civchat_cache_dirty_on(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_cached_t *c)
{
    ngx_http_civchat_cluster_sh_t  *csh;

    if (c->flags & NGX_HTTP_CIVCHAT_CACHE_DIRTY) {
        return;
    }

    csh = ngx_http_civchat_cache_sh(zone);

    c->flags |= NGX_HTTP_CIVCHAT_CACHE_DIRTY;
    ngx_queue_insert_tail(&csh->dirty, &c->dirty);
    csh->ndirty++;
}


void
ngx_http_civchat_cache_dirty_off(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_cached_t *c)
{
    if (!(c->flags & NGX_HTTP_CIVCHAT_CACHE_DIRTY)) {
        return;
    }

    c->flags &= ~NGX_HTTP_CIVCHAT_CACHE_DIRTY;
    ngx_queue_remove(&c->dirty);
    ngx_http_civchat_cache_sh(zone)->ndirty--;
}


/*
 * Write-behind (behind.c): a dirty profile's delta taken for a write,
 * its arguments in w->fields (after the script's first four), the
 * profile marked as flushing until cache_flushed().  NGX_DECLINED: no
 * delta (or one on its way).
 */

ngx_int_t
ngx_http_civchat_cache_take(ngx_http_civchat_zone_t *zone, ngx_str_t *id,
    ngx_pool_t *pool, ngx_http_civchat_write_t *w)
{
    ngx_http_civchat_cached_t   *c;
    ngx_http_civchat_profile_t  *p;

    p = ngx_http_civchat_cache_own(zone, id);
    c = (p != NULL) ? ngx_http_civchat_cache_of(zone, p) : NULL;

    if (c == NULL || !(c->flags & NGX_HTTP_CIVCHAT_CACHE_DIRTY)
        || (c->flags & NGX_HTTP_CIVCHAT_CACHE_FLUSHING))
    {
        return NGX_DECLINED;
    }

    w->fields = ngx_array_create(pool, 16, sizeof(ngx_str_t));
    if (w->fields == NULL
        || ngx_http_civchat_doc_delta(zone, p, c, pool, w->fields) != NGX_OK)
    {
        return NGX_ERROR;
    }

    w->type = NGX_HTTP_CIVCHAT_WRITE_DELTA;
    w->seq = ++ngx_http_civchat_cache_sh(zone)->seq;
    w->base = c->version;
    w->views = c->views;
    w->sessions = c->sessions;
    w->names = c->names;
    w->names_len = c->names_len;
    w->ua = (c->flags & NGX_HTTP_CIVCHAT_CACHE_UA) ? 1 : 0;
    w->taken = 1;

    c->views = 0;
    c->sessions = 0;
    c->names = 0;
    c->names_len = 0;
    c->flags &= ~(NGX_HTTP_CIVCHAT_CACHE_UA|NGX_HTTP_CIVCHAT_CACHE_ALL);

    ngx_http_civchat_cache_dirty_off(zone, c);
    c->flags |= NGX_HTTP_CIVCHAT_CACHE_FLUSHING;

    return NGX_OK;
}


/*
 * A delta's write answered: rc NGX_OK (applied: from version "old" to
 * "version"), NGX_DECLINED (the profile is gone from Redis: erased, or
 * merged and the delta went to the survivor), NGX_ERROR (not written:
 * the delta goes back, to be written again).
 */

void
ngx_http_civchat_cache_flushed(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_write_t *w, ngx_int_t rc, uint64_t old,
    uint64_t version)
{
    u_char                      *name, *end;
    ngx_str_t                    quoted;
    ngx_http_civchat_cached_t   *c;
    ngx_http_civchat_profile_t  *p;

    p = ngx_http_civchat_cache_own(zone, &w->id);
    c = (p != NULL) ? ngx_http_civchat_cache_of(zone, p) : NULL;

    if (c == NULL) {
        goto done;
    }

    if (!(c->flags & NGX_HTTP_CIVCHAT_CACHE_FLUSHING) && rc != NGX_ERROR) {
        /*
         * the copy it was taken from was replaced by one read from Redis,
         * before or after the delta: read it again
         */
        c->flags |= NGX_HTTP_CIVCHAT_CACHE_STALE;
        goto done;
    }

    c->flags &= ~NGX_HTTP_CIVCHAT_CACHE_FLUSHING;

    if (rc == NGX_ERROR) {
        c->views += w->views;
        c->sessions += w->sessions;

        if (w->ua) {
            c->flags |= NGX_HTTP_CIVCHAT_CACHE_UA;
        }

        name = w->names ? ngx_http_civchat_cache_ptr(zone, w->names) : NULL;
        end = (name != NULL) ? name + w->names_len : NULL;

        for ( /* void */ ; name != NULL && name < end;
             name += quoted.len + 1)
        {
            quoted.data = name;
            quoted.len = ngx_strlen(name);
            ngx_http_civchat_cache_add_name(zone, c, &quoted);
        }

        ngx_http_civchat_cache_dirty_on(zone, c);
        goto done;
    }

    if (rc == NGX_DECLINED) {
        c->flags |= NGX_HTTP_CIVCHAT_CACHE_STALE;
        (void) ngx_http_civchat_cache_remove(zone, p);
        goto done;
    }

    if (c->version == old) {
        c->version = version;

    } else {
        /* another host wrote it in between: read it again */
        c->flags |= NGX_HTTP_CIVCHAT_CACHE_STALE;
    }

done:

    if (w->names) {
        ngx_http_civchat_store_free(zone,
                                    ngx_http_civchat_cache_ptr(zone,
                                                               w->names));
        w->names = 0;
    }
}


/* the channel: another host wrote a profile */

void
ngx_http_civchat_cache_changed(ngx_http_civchat_zone_t *zone, ngx_str_t *id,
    uint64_t version)
{
    ngx_http_civchat_cached_t   *c;
    ngx_http_civchat_profile_t  *p;

    p = ngx_http_civchat_cache_own(zone, id);
    c = (p != NULL) ? ngx_http_civchat_cache_of(zone, p) : NULL;

    if (c != NULL && !(c->flags & NGX_HTTP_CIVCHAT_CACHE_NEW)
        && version > c->version)
    {
        c->flags |= NGX_HTTP_CIVCHAT_CACHE_STALE;
    }
}


/* the channel was lost and is back, or is heard by one worker less */

void
ngx_http_civchat_cache_listen(ngx_http_civchat_zone_t *zone, ngx_int_t on)
{
    ngx_http_civchat_cluster_sh_t  *csh;

    csh = ngx_http_civchat_cache_sh(zone);

    if (on) {
        csh->gen++;
        csh->listening++;

    } else if (csh->listening) {
        csh->listening--;
    }
}


/* the ids of up to max profiles with a delta to write */

ngx_int_t
ngx_http_civchat_cache_dirty(ngx_http_civchat_zone_t *zone, ngx_pool_t *pool,
    ngx_array_t *ids, ngx_uint_t max)
{
    ngx_str_t                       *id, own;
    ngx_queue_t                     *q, *next;
    ngx_http_civchat_cached_t       *c;
    ngx_http_civchat_profile_t      *p;
    ngx_http_civchat_cluster_sh_t   *csh;

    csh = ngx_http_civchat_cache_sh(zone);

    for (q = ngx_queue_head(&csh->dirty);
         q != ngx_queue_sentinel(&csh->dirty) && ids->nelts < max;
         q = next)
    {
        next = ngx_queue_next(q);
        c = ngx_queue_data(q, ngx_http_civchat_cached_t, dirty);

        if (c->flags & NGX_HTTP_CIVCHAT_CACHE_FLUSHING) {
            continue;
        }

        p = (ngx_http_civchat_profile_t *)
                ngx_http_civchat_cache_ptr(zone, c->profile);

        own.data = p->key.data;
        own.len = p->key.len;

        /* (not cache_own(): it pins, and this walks many profiles) */
        if (ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY, &own)
            != &p->key)
        {
            /* its key names another profile now: no write can find it */
            ngx_http_civchat_cache_dirty_off(zone, c);
            continue;
        }

        id = ngx_array_push(ids);
        if (id == NULL) {
            return NGX_ERROR;
        }

        id->len = p->key.len;
        id->data = ngx_pnalloc(pool, id->len);
        if (id->data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(id->data, p->key.data, id->len);
    }

    return NGX_OK;
}


/* the cached profiles that hold a name of the document, out */

ngx_int_t
ngx_http_civchat_cache_clear_names(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_doc_t *doc)
{
    size_t                       i, k;
    json_t                      *v, *list;
    ngx_str_t                    value;
    ngx_http_civchat_index_t    *ix;
    ngx_http_civchat_profile_t  *p;

    static const char  *lists[] = { "aliases", "unproved", "retired" };

    static struct {
        const char  *field;
        u_char       kind;
    } singles[] = {
        { "key", NGX_HTTP_CIVCHAT_BY_KEY },
        { "user_id", NGX_HTTP_CIVCHAT_BY_USER_ID },
        { "email", NGX_HTTP_CIVCHAT_BY_EMAIL }
    };

    for (i = 0; i < sizeof(singles) / sizeof(singles[0]); i++) {
        v = json_object_get(doc->identity, singles[i].field);

        if (!json_is_string(v)) {
            continue;
        }

        value.data = (u_char *) json_string_value(v);
        value.len = json_string_length(v);

        ix = ngx_http_civchat_store_index(zone, singles[i].kind, &value);

        if (ix != NULL) {
            p = ngx_http_civchat_store_owner(zone, ix);

            if (ngx_http_civchat_cache_remove(zone, p) != NGX_OK) {
                return NGX_DECLINED;
            }
        }
    }

    for (k = 0; k < sizeof(lists) / sizeof(lists[0]); k++) {
        list = json_object_get(doc->identity, lists[k]);

        json_array_foreach(list, i, v) {
            if (!json_is_string(v)) {
                continue;
            }

            value.data = (u_char *) json_string_value(v);
            value.len = json_string_length(v);

            ix = ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY,
                                              &value);

            if (ix != NULL) {
                p = ngx_http_civchat_store_owner(zone, ix);

                if (ngx_http_civchat_cache_remove(zone, p) != NGX_OK) {
                    return NGX_DECLINED;
                }
            }
        }
    }

    return NGX_OK;
}


/*
 * A copy as Redis would answer it (HGETALL), to put back when the plan
 * that changes it is refused: its identity is then as it was, not as
 * the plan left it (with Redis down, the copy is used as it is).
 */

ngx_int_t
ngx_http_civchat_cache_snapshot(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_cached_t *c,
    ngx_pool_t *pool, ngx_http_civchat_before_t *b)
{
    u_char                          *last;
    ngx_str_t                       *f;
    ngx_uint_t                       i;
    ngx_array_t                     *fields;
    ngx_http_civchat_redis_reply_t  *r, *e;

    fields = ngx_array_create(pool, 16, sizeof(ngx_str_t));
    if (fields == NULL
        || ngx_http_civchat_doc_fields(zone, p, pool, fields) != NGX_OK)
    {
        return NGX_ERROR;
    }

    r = ngx_pcalloc(pool, sizeof(ngx_http_civchat_redis_reply_t));
    e = ngx_pcalloc(pool, (fields->nelts + 2)
                          * sizeof(ngx_http_civchat_redis_reply_t));
    if (r == NULL || e == NULL) {
        return NGX_ERROR;
    }

    e[0].type = NGX_HTTP_CIVCHAT_REDIS_STRING;
    ngx_str_set(&e[0].str, "v");

    /* a version that parses: the real one is kept in b->version */
    e[1].type = NGX_HTTP_CIVCHAT_REDIS_STRING;
    e[1].str.data = ngx_pnalloc(pool, NGX_INT64_LEN);
    if (e[1].str.data == NULL) {
        return NGX_ERROR;
    }

    last = ngx_sprintf(e[1].str.data, "%uL", c->version ? c->version : 1);
    e[1].str.len = last - e[1].str.data;

    f = fields->elts;

    for (i = 0; i < fields->nelts; i++) {
        e[2 + i].type = NGX_HTTP_CIVCHAT_REDIS_STRING;
        e[2 + i].str = f[i];
    }

    r->type = NGX_HTTP_CIVCHAT_REDIS_ARRAY;
    r->elts = e;
    r->nelts = fields->nelts + 2;

    b->snapshot = r;
    b->version = c->version;

    return NGX_OK;
}


/*
 * The copies of a refused plan put back as they were, each keeping the
 * delta it has now (the plan's own visit was taken out already, other
 * requests may have added theirs meanwhile), marked stale.
 */

void
ngx_http_civchat_cache_restore(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync)
{
    ngx_str_t                    id;
    ngx_uint_t                   i;
    ngx_http_civchat_doc_t       doc;
    ngx_http_civchat_before_t   *b;
    ngx_http_civchat_cached_t   *c;
    ngx_http_civchat_profile_t  *p;

    b = sync->before.elts;

    /* the copies as the plan left them, out, their deltas kept */

    for (i = 0; i < sync->before.nelts; i++) {
        if (b[i].snapshot == NULL) {
            continue;
        }

        b[i].delta_names = 0;
        b[i].delta_names_len = 0;
        b[i].delta_flags = 0;

        p = ngx_http_civchat_cache_own(zone, &b[i].id);
        c = (p != NULL) ? ngx_http_civchat_cache_of(zone, p) : NULL;

        /* (gone with the plan, a merged profile keeps its counts before) */

        if (c != NULL) {
            b[i].views = c->views;
            b[i].sessions = c->sessions;
            b[i].delta_names = c->names;
            b[i].delta_names_len = c->names_len;
            b[i].delta_flags = c->flags & (NGX_HTTP_CIVCHAT_CACHE_UA
                                           |NGX_HTTP_CIVCHAT_CACHE_ALL);

            /* (the list of names moves to the copy put back) */
            c->names = 0;
            ngx_http_civchat_cache_dirty_off(zone, c);
        }

        if (p != NULL) {
            ngx_http_civchat_store_delete(zone, p);
        }
    }

    /* the copies before the plan, in */

    for (i = 0; i < sync->before.nelts; i++) {
        if (b[i].snapshot == NULL) {
            continue;
        }

        p = NULL;
        id = b[i].id;

        if (ngx_http_civchat_doc_parse(sync->pool, &id, b[i].snapshot, &doc)
            == NGX_OK
            && ngx_http_civchat_cache_clear_names(zone, &doc) == NGX_OK)
        {
            p = ngx_http_civchat_doc_install(zone, &doc);
        }

        c = (p != NULL) ? ngx_http_civchat_cache_part(zone, p) : NULL;

        if (c == NULL) {
            /* not put back: it is read from Redis when next needed */
            ngx_log_error(NGX_LOG_WARN, sync->log, 0,
                          "civchat zone \"%V\" cannot put back profile "
                          "\"%V\" after a refused change", &zone->name, &id);

            if (b[i].delta_names) {
                ngx_http_civchat_store_free(zone,
                              ngx_http_civchat_cache_ptr(zone,
                                                         b[i].delta_names));
            }

            continue;
        }

        c->flags = NGX_HTTP_CIVCHAT_CACHE_STALE | b[i].delta_flags;
        c->version = b[i].version;
        c->gen = ngx_http_civchat_cache_sh(zone)->gen;
        c->views = b[i].views;
        c->sessions = b[i].sessions;
        c->names = b[i].delta_names;
        c->names_len = b[i].delta_names_len;

        if (c->views || c->sessions || c->names || b[i].delta_flags) {
            ngx_http_civchat_cache_dirty_on(zone, c);
        }
    }
}
