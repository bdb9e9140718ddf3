
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_cluster.h"


/*
 * The profile zone, the shape of limit_req: a plan, checked and written
 * as text outside the lock (plan.c), is applied here under the zone's
 * mutex, with lookups, a diff of the attributes' text and writes only
 * (rules.c, text.c, store.c, live.c), and what the caller needs is
 * copied out before the unlock.  This is the only file that takes the
 * mutex, and nothing here calls up into the request's code: what a
 * request changed reaches the live channel as data in the zone.
 *
 * Another profile store plugs in at this interface: apply a plan, look
 * up a key, publish and read what is said to a visitor, and count
 * streams.
 */


static ngx_int_t ngx_http_civchat_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_civchat_zone_lock(ngx_http_civchat_zone_t *zone);
static void ngx_http_civchat_zone_unlock(ngx_http_civchat_zone_t *zone);
static ngx_int_t ngx_http_civchat_zone_attrs(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res);
static void ngx_http_civchat_zone_visit(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_profile_t *p);
static ngx_int_t ngx_http_civchat_zone_delete(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_result_t *res);
static ngx_int_t ngx_http_civchat_zone_copy(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res);
static ngx_int_t ngx_http_civchat_zone_record(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_result_t *res);
static void ngx_http_civchat_zone_tell(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_result_t *res, ngx_uint_t from);
static ngx_int_t ngx_http_civchat_zone_str(ngx_pool_t *pool, u_char *data,
    size_t len, ngx_str_t *out);
static ngx_int_t ngx_http_civchat_zone_save_piece(
    ngx_http_civchat_zone_t *zone, ngx_log_t *log);
static void ngx_http_civchat_zone_timer_handler(ngx_event_t *ev);


char *
ngx_http_civchat_zone_add(ngx_conf_t *cf, ngx_http_civchat_zone_t *zone,
    size_t size)
{
    ngx_shm_zone_t  *shm_zone;

    shm_zone = ngx_shared_memory_add(cf, &zone->name, size,
                                     &ngx_http_civchat_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "civchat zone \"%V\" is already defined",
                           &zone->name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_civchat_init_zone;
    shm_zone->data = zone;
    zone->shm_zone = shm_zone;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_civchat_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_civchat_zone_t  *ozone = data;

    size_t                    len;
    ngx_http_civchat_zone_t  *zone;

    zone = shm_zone->data;
    zone->log = shm_zone->shm.log;

    if (ozone) {
        if ((ozone->cluster == NULL) != (zone->cluster == NULL)) {
            ngx_log_error(NGX_LOG_EMERG, zone->log, 0,
                          "civchat zone \"%V\" cannot move to or from "
                          "Redis on a reload: give it a new name, or "
                          "restart nginx", &zone->name);
            return NGX_ERROR;
        }

        /* a reload: the old cycle's zone keeps its profiles */
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;
        return NGX_OK;
    }

    zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->sh = zone->shpool->data;
        return NGX_OK;
    }

    zone->sh = ngx_slab_alloc(zone->shpool, sizeof(ngx_http_civchat_shctx_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(zone->sh, sizeof(ngx_http_civchat_shctx_t));
    zone->shpool->data = zone->sh;
    zone->sh->live_size = zone->live_size;

    if (ngx_http_civchat_store_init(zone) != NGX_OK
        || (zone->cluster != NULL
            && ngx_http_civchat_cache_init(zone) != NGX_OK))
    {
        return NGX_ERROR;
    }

    len = sizeof(" in civchat zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in civchat zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* running out of memory is normal: the LRU makes room */
    zone->shpool->log_nomem = 0;

    if (zone->state.len) {
        /* nginx starts: no worker runs yet, nothing to lock against */
        return ngx_http_civchat_state_load(zone);
    }

    return NGX_OK;
}


static void
ngx_http_civchat_zone_lock(ngx_http_civchat_zone_t *zone)
{
    ngx_shmtx_lock(&zone->shpool->mutex);
}


static void
ngx_http_civchat_zone_unlock(ngx_http_civchat_zone_t *zone)
{
    ngx_http_civchat_store_unpin(zone);
    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * Applies a plan: NGX_OK (res filled), NGX_AGAIN (nothing written; the
 * plan needs res->needs first), NGX_BUSY (the browser's key was just
 * replaced), NGX_DECLINED (the server API's profile does not exist).
 */

ngx_int_t
ngx_http_civchat_zone_apply(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res)
{
    ngx_int_t                 rc;
    ngx_uint_t                from;
    ngx_http_civchat_sync_t  *sync;

    from = res->events->nelts;
    sync = res->sync;

    ngx_http_civchat_zone_lock(zone);

    if (sync != NULL) {
        /* on Redis: the plan's profiles must be in the cache, fresh */

        rc = ngx_http_civchat_cache_needs(zone, plan, sync);

        if (rc == NGX_OK) {
            rc = ngx_http_civchat_cache_before(zone, plan, sync);

        } else if (rc == NGX_AGAIN) {
            res->needs = NGX_HTTP_CIVCHAT_NEEDS_REDIS;
        }

        if (rc != NGX_OK) {
            goto done;
        }
    }

    rc = ngx_http_civchat_rules_apply(zone, plan, res);

    if (rc != NGX_OK) {
        goto done;
    }

    if (plan->op == NGX_HTTP_CIVCHAT_OP_DELETE) {
        rc = ngx_http_civchat_zone_delete(zone, res);
        goto written;
    }

    if (plan->op != NGX_HTTP_CIVCHAT_OP_READ
        && plan->op != NGX_HTTP_CIVCHAT_OP_TOUCH)
    {
        rc = ngx_http_civchat_zone_attrs(zone, plan, res);
        if (rc != NGX_OK) {
            goto written;
        }
    }

    if (plan->visit) {
        ngx_http_civchat_zone_visit(zone, plan, res->profile);
    }

    rc = ngx_http_civchat_zone_copy(zone, plan, res);

    if (rc == NGX_OK && plan->live) {
        ngx_http_civchat_zone_tell(zone, res, from);
    }

written:

    if (sync != NULL) {
        /* what must reach Redis before the answer (NGX_AGAIN) */

        switch (rc == NGX_OK
                ? ngx_http_civchat_cache_after(zone, plan, res, sync)
                : NGX_ERROR)
        {
        case NGX_OK:
            break;

        case NGX_AGAIN:
            res->needs = NGX_HTTP_CIVCHAT_NEEDS_WRITE;
            break;

        default:
            ngx_http_civchat_cache_undo(zone, sync);
            rc = NGX_ERROR;
        }
    }

done:

    res->profile = NULL;
    res->session = NULL;

    ngx_http_civchat_zone_unlock(zone);

    return rc;
}


/* the plan's attribute changes and a visit's automatic values */

static ngx_int_t
ngx_http_civchat_zone_attrs(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res)
{
    ngx_str_t                    old, text;
    ngx_uint_t                   changed;
    ngx_http_civchat_profile_t  *p;

    p = res->profile;

    if (plan->changes.nelts == 0) {
        if (!plan->visit) {
            return NGX_OK;
        }

        if (p->auto_sig && p->auto_sig == plan->auto_sig) {
            /* a visit that changes no attribute: they are not read */
            return NGX_OK;
        }
    }

    old.data = ngx_http_civchat_profile_attrs(p);
    old.len = p->attrs_len;

    if (ngx_http_civchat_text_merge(&old, plan, &text, res->pool, res,
                                    &changed)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (changed) {
        if (text.len == 2) {
            /* "{}" */
            text.len = 0;
        }

        if (zone->cluster != NULL) {
            ngx_http_civchat_cache_attrs(zone, p, plan, plan->visit);
        }

        if (ngx_http_civchat_store_set_attrs(zone, p, text.data, text.len)
            != NGX_OK)
        {
            /* the zone cannot hold these attributes: keep the old ones */
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "civchat: attributes of profile \"%*s\" not saved",
                          (size_t) p->key.len, p->key.data);
            return NGX_OK;
        }
    }

    if (plan->visit) {
        /* stored: until they change, the next visits need not read */
        p->auto_sig = plan->auto_sig;
    }

    return NGX_OK;
}


static void
ngx_http_civchat_zone_visit(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_profile_t *p)
{
    uint32_t    ua;
    ngx_uint_t  session;

    session = (p->sessions == 0
               || plan->now - (time_t) p->last_seen >= plan->session_timeout);

    p->sessions += session;
    p->page_views++;
    p->last_seen = (uint32_t) plan->now;

    ua = p->user_agent;

    (void) ngx_http_civchat_store_set_ua(zone, p, &plan->user_agent);

    zone->sh->changes++;

    if (zone->cluster != NULL) {
        ngx_http_civchat_cache_visit(zone, p, session, ua != p->user_agent);
    }
}


/* erasure: the profile, its keys and index entries, what awaits it */

static ngx_int_t
ngx_http_civchat_zone_delete(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_result_t *res)
{
    ngx_http_civchat_profile_t  *p;

    p = res->profile;

    res->user.proved = 1;

    if (ngx_http_civchat_zone_str(res->pool, p->key.data, p->key.len,
                                  &res->user.profile)
        != NGX_OK
        || ngx_http_civchat_zone_str(res->pool, p->user_id.data,
                                     p->user_id.len, &res->user.user_id)
           != NGX_OK
        || ngx_http_civchat_zone_str(res->pool, p->email.data, p->email.len,
                                     &res->user.email)
           != NGX_OK
        || ngx_http_civchat_add_event(res->pool, res->events,
                                      NGX_HTTP_CIVCHAT_EV_USER_DELETED,
                                      NULL, NULL)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    res->user.key = res->user.profile;
    res->user.found = 1;

    ngx_http_civchat_live_forget(zone, &res->user.profile);
    ngx_http_civchat_store_delete(zone, p);

    return NGX_OK;
}


/*
 * The profile copied out for the answer and the events.  Events (to the
 * site's own store) carry it all; an answer to a browser that has not
 * proved the profile is its own (README "Identity"), so the resolver
 * gives it only what the request itself sent.
 */

static ngx_int_t
ngx_http_civchat_zone_copy(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res)
{
    ngx_http_civchat_user_t     *u;
    ngx_http_civchat_profile_t  *p;

    p = res->profile;
    u = &res->user;

    if (ngx_http_civchat_zone_str(res->pool, p->key.data, p->key.len,
                                  &u->profile)
        != NGX_OK
        || ngx_http_civchat_zone_str(res->pool, p->user_id.data,
                                     p->user_id.len, &u->user_id)
           != NGX_OK
        || ngx_http_civchat_zone_str(res->pool, p->email.data, p->email.len,
                                     &u->email)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    u->user_id_verified = (p->user_id.flags & NGX_HTTP_CIVCHAT_ID_VERIFIED)
                          ? 1 : 0;
    u->email_verified = (p->email.flags & NGX_HTTP_CIVCHAT_ID_VERIFIED)
                        ? 1 : 0;
    u->found = 1;

    u->sent_user_id = plan->user_id;
    u->sent_email = plan->email;

    if (!u->proved) {
        u->name = plan->name;
        return NGX_OK;
    }

    if (p->name_len
        && ngx_http_civchat_zone_str(res->pool,
                                     ngx_http_civchat_profile_attrs(p)
                                     + p->name_pos,
                                     p->name_len, &u->name)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    u->first_seen = p->first_seen;
    u->last_seen = p->last_seen;
    u->page_views = p->page_views;
    u->sessions = p->sessions;

    if (res->record != NULL) {
        return ngx_http_civchat_zone_record(zone, p, res);
    }

    return NGX_OK;
}


/* what the server API shows: the attributes, User-Agent, other keys */

static ngx_int_t
ngx_http_civchat_zone_record(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_result_t *res)
{
    ngx_str_t                  ua, *key;
    ngx_queue_t               *q;
    ngx_http_civchat_alias_t  *a;
    ngx_http_civchat_record_t *rec;

    rec = res->record;

    if (p->attrs_len) {
        if (ngx_http_civchat_zone_str(res->pool,
                                      ngx_http_civchat_profile_attrs(p),
                                      p->attrs_len, &rec->attrs)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else {
        ngx_str_set(&rec->attrs, "{}");
    }

    ngx_http_civchat_store_ua(zone, p, &ua);

    if (ngx_http_civchat_zone_str(res->pool, ua.data, ua.len,
                                  &rec->user_agent)
        != NGX_OK
        || ngx_array_init(&rec->keys, res->pool, 2, sizeof(ngx_str_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (q = ngx_queue_head(&p->aliases);
         q != ngx_queue_sentinel(&p->aliases);
         q = ngx_queue_next(q))
    {
        a = ngx_queue_data(q, ngx_http_civchat_alias_t, queue);

        if (a->index.flags & NGX_HTTP_CIVCHAT_KEY_RETIRED) {
            continue;
        }

        key = ngx_array_push(&rec->keys);
        if (key == NULL
            || ngx_http_civchat_zone_str(res->pool, a->index.data,
                                         a->index.len, key)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The visitor's open streams hear of their profile's changes, whoever
 * made them: {"name": ..., "old": ..., "new": ...}.
 */

static void
ngx_http_civchat_zone_tell(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_result_t *res, ngx_uint_t from)
{
    ngx_int_t                  rc;
    ngx_str_t                  note;
    ngx_uint_t                 i;
    ngx_http_civchat_event_t  *ev;

    if (zone->cluster != NULL) {
        /* on Redis: told through Redis once the plan holds (live_redis.c) */
        return;
    }

    if (zone->sh->live == NULL || zone->sh->live->streams == 0) {
        return;
    }

    ev = res->events->elts;

    for (i = from; i < res->events->nelts; i++) {
        rc = ngx_http_civchat_live_note(res->pool, &ev[i], &note);

        if (rc == NGX_DECLINED) {
            continue;
        }

        if (rc != NGX_OK) {
            return;
        }

        (void) ngx_http_civchat_live_add(zone, &res->user.profile,
                                         NGX_HTTP_CIVCHAT_LIVE_PROFILE,
                                         note.data, note.len);
    }
}


/*
 * Outside a civchat request ($civchat_user_id in a proxied location):
 * the profile of a live key, as far as that key may see it.
 */

ngx_int_t
ngx_http_civchat_zone_lookup(ngx_http_civchat_zone_t *zone, ngx_str_t *key,
    ngx_pool_t *pool, ngx_http_civchat_user_t *user)
{
    ngx_int_t                    rc;
    ngx_http_civchat_index_t    *ix;
    ngx_http_civchat_profile_t  *p;

    rc = NGX_DECLINED;

    ngx_http_civchat_zone_lock(zone);

    ix = ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY, key);

    if (ix == NULL || (ix->flags & NGX_HTTP_CIVCHAT_KEY_RETIRED)) {
        goto done;
    }

    p = ngx_http_civchat_store_owner(zone, ix);

    if (zone->cluster != NULL
        && !ngx_http_civchat_cache_fresh(zone,
                                         ngx_http_civchat_cache_of(zone, p)))
    {
        /* a stale copy may hold what the key no longer proves */
        goto done;
    }

    user->proved = !(ix->flags & NGX_HTTP_CIVCHAT_KEY_UNPROVED);
    user->user_id_verified = (p->user_id.flags & NGX_HTTP_CIVCHAT_ID_VERIFIED)
                             ? 1 : 0;

    if (ngx_http_civchat_zone_str(pool, p->key.data, p->key.len,
                                  &user->profile)
        != NGX_OK
        || ngx_http_civchat_zone_str(pool, p->user_id.data, p->user_id.len,
                                     &user->user_id)
           != NGX_OK)
    {
        rc = NGX_ERROR;
        goto done;
    }

    user->key = *key;
    user->found = 1;
    rc = NGX_OK;

done:

    ngx_http_civchat_zone_unlock(zone);

    return rc;
}


/* a message or payload for a profile's streams (the server API) */

ngx_int_t
ngx_http_civchat_zone_publish(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_uint_t type, u_char *data, size_t len)
{
    ngx_int_t  rc;

    ngx_http_civchat_zone_lock(zone);

    rc = ngx_http_civchat_live_add(zone, profile, type, data, len);

    ngx_http_civchat_zone_unlock(zone);

    return rc;
}


/*
 * A stream opens for a key: NGX_OK (user->profile is the profile's own
 * key), NGX_DECLINED (no live key), NGX_ABORT (an unproved session),
 * NGX_BUSY (too many streams on the key or from the address).
 */

ngx_int_t
ngx_http_civchat_zone_stream_open(ngx_http_civchat_zone_t *zone,
    ngx_str_t *key, ngx_str_t *addr, ngx_uint_t per_key,
    ngx_uint_t per_address, ngx_http_civchat_user_t *user, ngx_pool_t *pool)
{
    ngx_int_t                    rc;
    ngx_http_civchat_index_t    *ix;
    ngx_http_civchat_profile_t  *p;

    ngx_http_civchat_zone_lock(zone);

    if (ngx_http_civchat_live_init(zone) != NGX_OK) {
        rc = NGX_ERROR;
        goto done;
    }

    ix = ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY, key);

    if (ix == NULL || (ix->flags & NGX_HTTP_CIVCHAT_KEY_RETIRED)) {
        rc = NGX_DECLINED;
        goto done;
    }

    if (ix->flags & NGX_HTTP_CIVCHAT_KEY_UNPROVED) {
        rc = NGX_ABORT;
        goto done;
    }

    if ((per_key && ix->streams >= per_key) || ix->streams == 0xff) {
        rc = NGX_BUSY;
        goto done;
    }

    rc = ngx_http_civchat_live_addr(zone, addr, 1, per_address);
    if (rc != NGX_OK) {
        goto done;
    }

    p = ngx_http_civchat_store_owner(zone, ix);

    if (ngx_http_civchat_zone_str(pool, p->key.data, p->key.len,
                                  &user->profile)
        != NGX_OK)
    {
        (void) ngx_http_civchat_live_addr(zone, addr, -1, 0);
        rc = NGX_ERROR;
        goto done;
    }

    ix->streams++;
    (void) ngx_atomic_fetch_add(&zone->sh->live->streams, 1);

    user->key = *key;
    user->found = 1;

done:

    ngx_http_civchat_zone_unlock(zone);

    return rc;
}


void
ngx_http_civchat_zone_stream_close(ngx_http_civchat_zone_t *zone,
    ngx_str_t *key, ngx_str_t *addr)
{
    ngx_http_civchat_index_t  *ix;

    ngx_http_civchat_zone_lock(zone);

    ix = ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY, key);

    if (ix != NULL && ix->streams) {
        ix->streams--;
    }

    (void) ngx_http_civchat_live_addr(zone, addr, -1, 0);
    (void) ngx_atomic_fetch_add(&zone->sh->live->streams, -1);

    ngx_http_civchat_zone_unlock(zone);
}


/* what was said to a profile after "from" (a stream's replay) */

ngx_int_t
ngx_http_civchat_zone_live_read(ngx_http_civchat_zone_t *zone,
    uint64_t from, ngx_str_t *profile, ngx_pool_t *pool, ngx_array_t *out,
    uint64_t *upto)
{
    ngx_int_t  rc;

    ngx_http_civchat_zone_lock(zone);

    rc = ngx_http_civchat_live_copy(zone, from, profile, pool, out, upto);

    ngx_http_civchat_zone_unlock(zone);

    return rc;
}


/* which profiles had news after "from"; NGX_AGAIN: look at all */

ngx_int_t
ngx_http_civchat_zone_live_news(ngx_http_civchat_zone_t *zone,
    uint64_t from, ngx_pool_t *pool, ngx_array_t *out, uint64_t *upto)
{
    ngx_int_t  rc;

    if (zone->sh->live == NULL || zone->sh->live->seq == from) {
        /* read without the lock: nothing new is the common case */
        *upto = from;
        return NGX_OK;
    }

    ngx_http_civchat_zone_lock(zone);

    rc = ngx_http_civchat_live_news(zone, from, pool, out, upto);

    ngx_http_civchat_zone_unlock(zone);

    return rc;
}


uint64_t
ngx_http_civchat_zone_live_seq(ngx_http_civchat_zone_t *zone)
{
    return (zone->sh->live != NULL) ? zone->sh->live->seq : 0;
}


/*
 * The state file, a piece at a time (state.c): a few hundred profiles
 * written out under the lock, then to the file outside it.  NGX_AGAIN:
 * more to come; NGX_OK: saved; NGX_DECLINED: nothing changed since the
 * last save.
 */

static ngx_int_t
ngx_http_civchat_zone_save_piece(ngx_http_civchat_zone_t *zone,
    ngx_log_t *log)
{
    ngx_int_t  rc;

    if (zone->state.len == 0 || zone->sh == NULL) {
        return NGX_DECLINED;
    }

    if (zone->save == NULL) {
        zone->save = ngx_http_civchat_state_begin(zone,
                                              NGX_HTTP_CIVCHAT_STATE_PIECE,
                                              log);
        if (zone->save == NULL) {
            return NGX_ERROR;
        }
    }

    ngx_http_civchat_zone_lock(zone);

    rc = ngx_http_civchat_state_piece(zone, zone->save);

    ngx_http_civchat_zone_unlock(zone);

    if (rc == NGX_OK || rc == NGX_AGAIN) {
        rc = ngx_http_civchat_state_write(zone, zone->save, rc);
    }

    if (rc == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (rc == NGX_OK) {
        /* what changed during the save makes the next one */
        ngx_http_civchat_zone_lock(zone);
        zone->sh->saved = ngx_http_civchat_state_changes(zone->save);
        ngx_http_civchat_zone_unlock(zone);
    }

    ngx_http_civchat_state_end(zone->save);
    zone->save = NULL;

    return rc;
}


/* the whole zone at once (at stop), or the rest of a save under way */

ngx_int_t
ngx_http_civchat_zone_save(ngx_http_civchat_zone_t *zone, ngx_log_t *log)
{
    ngx_int_t  rc;

    do {
        rc = ngx_http_civchat_zone_save_piece(zone, log);
    } while (rc == NGX_AGAIN);

    return rc;
}


/*
 * A worker leaving finishes a save it had under way; on a fast stop it
 * drops it instead (the master is about to save the whole zone, and
 * kills a worker that takes too long).
 */

void
ngx_http_civchat_zone_save_exit(ngx_http_civchat_zone_t *zone,
    ngx_log_t *log)
{
    if (zone->save == NULL) {
        return;
    }

    if (ngx_terminate) {
        ngx_http_civchat_state_end(zone->save);
        zone->save = NULL;
        return;
    }

    (void) ngx_http_civchat_zone_save(zone, log);
}


/*
 * One worker saves the zone every state_interval, a piece on each turn
 * of its event loop so that it answers requests in between.
 */

void
ngx_http_civchat_zone_timer(ngx_http_civchat_zone_t *zone,
    ngx_cycle_t *cycle)
{
    ngx_event_t  *ev;

    if (zone->state.len == 0) {
        return;
    }

    ev = &zone->save_event;

    ev->handler = ngx_http_civchat_zone_timer_handler;
    ev->data = zone;
    ev->log = cycle->log;
    ev->cancelable = 1;

    ngx_add_timer(ev, zone->state_interval);
}


static void
ngx_http_civchat_zone_timer_handler(ngx_event_t *ev)
{
    ngx_http_civchat_zone_t  *zone = ev->data;

    if (ngx_http_civchat_zone_save_piece(zone, ev->log) == NGX_AGAIN) {
        /* after the events that are ready now */
        ngx_post_event(ev, &ngx_posted_next_events);
        return;
    }

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(ev, zone->state_interval);
    }
}


/* profiles, bytes used, bytes in all, evictions, live messages dropped */

void
ngx_http_civchat_zone_counts(ngx_http_civchat_zone_t *zone,
    ngx_uint_t *counts)
{
    size_t                          total;
    ngx_http_civchat_cluster_sh_t  *csh;

    ngx_http_civchat_zone_lock(zone);

    total = zone->shpool->end - zone->shpool->start;

    counts[0] = zone->sh->profiles;
    counts[1] = total - ngx_min(total, zone->shpool->pfree * ngx_pagesize);
    counts[2] = total;
    counts[3] = zone->sh->evictions;
    counts[4] = (zone->sh->live != NULL) ? zone->sh->live->dropped : 0;

    csh = zone->sh->cluster;

    if (csh != NULL) {
        counts[5] = csh->ndirty;
        counts[6] = csh->reads;
        counts[7] = csh->writes;
        counts[8] = csh->conflicts;
        counts[9] = csh->down;
        counts[10] = csh->deltas;
    }

    ngx_http_civchat_zone_unlock(zone);
}


static ngx_int_t
ngx_http_civchat_zone_str(ngx_pool_t *pool, u_char *data, size_t len,
    ngx_str_t *out)
{
    if (len == 0) {
        ngx_str_null(out);
        return NGX_OK;
    }

    out->data = ngx_pnalloc(pool, len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, data, len);
    out->len = len;

    return NGX_OK;
}


/*
 * On Redis (cluster.h): what cluster.c and behind.c do to the cache,
 * each under the lock.
 */

void
ngx_http_civchat_zone_install(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync)
{
    ngx_http_civchat_zone_lock(zone);
    ngx_http_civchat_cache_install(zone, sync);
    ngx_http_civchat_zone_unlock(zone);
}


void
ngx_http_civchat_zone_written(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync, ngx_int_t rc)
{
    ngx_http_civchat_zone_lock(zone);

    if (rc == NGX_OK) {
        ngx_http_civchat_cache_commit(zone, sync);

    } else {
        ngx_http_civchat_cache_undo(zone, sync);
    }

    ngx_http_civchat_zone_unlock(zone);
}


ngx_int_t
ngx_http_civchat_zone_take(ngx_http_civchat_zone_t *zone, ngx_str_t *id,
    ngx_pool_t *pool, ngx_http_civchat_write_t *w)
{
    ngx_int_t  rc;

    ngx_http_civchat_zone_lock(zone);
    rc = ngx_http_civchat_cache_take(zone, id, pool, w);
    ngx_http_civchat_zone_unlock(zone);

    return rc;
}


void
ngx_http_civchat_zone_flushed(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_write_t *w, ngx_int_t rc, uint64_t old,
    uint64_t version)
{
    ngx_http_civchat_zone_lock(zone);
    ngx_http_civchat_cache_flushed(zone, w, rc, old, version);
    ngx_http_civchat_zone_unlock(zone);
}


void
ngx_http_civchat_zone_changed(ngx_http_civchat_zone_t *zone, ngx_str_t *id,
    uint64_t version)
{
    ngx_http_civchat_zone_lock(zone);
    ngx_http_civchat_cache_changed(zone, id, version);
    ngx_http_civchat_zone_unlock(zone);
}


void
ngx_http_civchat_zone_listen(ngx_http_civchat_zone_t *zone, ngx_int_t on)
{
    ngx_http_civchat_zone_lock(zone);
    ngx_http_civchat_cache_listen(zone, on);
    ngx_http_civchat_zone_unlock(zone);
}


ngx_int_t
ngx_http_civchat_zone_dirty(ngx_http_civchat_zone_t *zone, ngx_pool_t *pool,
    ngx_array_t *ids, ngx_uint_t max)
{
    ngx_int_t  rc;

    if (((ngx_http_civchat_cluster_sh_t *) zone->sh->cluster)->ndirty == 0) {
        /* read without the lock: nothing to write is the common case */
        return NGX_OK;
    }

    ngx_http_civchat_zone_lock(zone);
    rc = ngx_http_civchat_cache_dirty(zone, pool, ids, max);
    ngx_http_civchat_zone_unlock(zone);

    return rc;
}


/* the channel's name for this host's own writes */

void
ngx_http_civchat_zone_origin(ngx_http_civchat_zone_t *zone, ngx_str_t *origin)
{
    ngx_http_civchat_cluster_sh_t  *csh;

    csh = zone->sh->cluster;

    origin->data = csh->origin;
    origin->len = NGX_HTTP_CIVCHAT_KEY_LEN;
}
