
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_cluster.h"


/*
 * The profile zone's data follows limit_req: a slab pool holding one
 * rbtree of index entries (keys, user_ids, emails, each pointing at its
 * profile) and an LRU queue of profiles.  zone.c holds the zone mutex
 * around all that is done here.
 *
 * A profile's keys: its own (the first, which names it in events and
 * the server API) and those of the other browsers that hold it, each a
 * session, and keys retired at a change of identity, kept a while so
 * that no browser can adopt them again (README "Identity").
 *
 * Making room evicts the least recently seen profile, so every profile
 * a locked section has found or created is pinned until the unlock:
 * an allocation for one profile never frees another still in use.
 */


#define NGX_HTTP_CIVCHAT_SESSIONS_MAX    16     /* live keys a profile */
#define NGX_HTTP_CIVCHAT_RETIRED_MAX     4      /* retired keys it keeps */


static void ngx_http_civchat_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static uint32_t ngx_http_civchat_hash(u_char kind, u_char *data, size_t len);
static ngx_http_civchat_profile_t *ngx_http_civchat_index_profile(
    ngx_http_civchat_index_t *ix);
static ngx_int_t ngx_http_civchat_index_cmp(ngx_http_civchat_index_t *a,
    u_char kind, u_char *data, size_t len);
#define ngx_http_civchat_alloc  ngx_http_civchat_store_alloc

#define ngx_http_civchat_free(zone, p)                                       \
    ngx_http_civchat_mem_free((zone)->shpool, &(zone)->sh->mem, p)

static ngx_int_t ngx_http_civchat_evict_one(ngx_http_civchat_zone_t *zone);
static void ngx_http_civchat_index_insert(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_index_t *ix);
static void ngx_http_civchat_find_name(ngx_http_civchat_profile_t *p);
static ngx_int_t ngx_http_civchat_rebuild(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *user_id, ngx_str_t *email,
    u_char *attrs, size_t attrs_len);
static void ngx_http_civchat_relink(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_index_t *ix, u_char *data, ngx_str_t *value);
static ngx_http_civchat_alias_t *ngx_http_civchat_alias_new(
    ngx_http_civchat_zone_t *zone, ngx_http_civchat_profile_t *p,
    u_char *data, size_t len, u_char flags);
static void ngx_http_civchat_alias_free(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_alias_t *a);
static void ngx_http_civchat_keys_cap(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p);
static void ngx_http_civchat_retire_stamp(ngx_http_civchat_index_t *ix);
static void ngx_http_civchat_ua_release(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p);
static ngx_uint_t ngx_http_civchat_evictable(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p);
static void ngx_http_civchat_cache_free(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p);

/* a fresh zone's data (zone.c has mapped it and holds no lock yet) */

ngx_int_t
ngx_http_civchat_store_init(ngx_http_civchat_zone_t *zone)
{
    if (ngx_http_civchat_mem_init(zone->shpool, &zone->sh->mem) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_civchat_rbtree_insert);
    ngx_rbtree_init(&zone->sh->ua_tree, &zone->sh->ua_sentinel,
                    ngx_rbtree_insert_value);
    ngx_queue_init(&zone->sh->lru);

    return NGX_OK;
}


static uint32_t
ngx_http_civchat_hash(u_char kind, u_char *data, size_t len)
{
    uint32_t  crc;

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, &kind, 1);
    ngx_crc32_update(&crc, data, len);
    ngx_crc32_final(crc);

    return crc;
}


static ngx_int_t
ngx_http_civchat_index_cmp(ngx_http_civchat_index_t *a, u_char kind,
    u_char *data, size_t len)
{
    if (a->kind != kind) {
        return (ngx_int_t) a->kind - (ngx_int_t) kind;
    }

    return ngx_memn2cmp(a->data, data, a->len, len);
}


static void
ngx_http_civchat_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t         **p;
    ngx_http_civchat_index_t   *n, *t;

    n = (ngx_http_civchat_index_t *) node;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            t = (ngx_http_civchat_index_t *) temp;

            /*
             * equal entries are allowed: with unified identification off
             * several profiles may hold one email
             */
            p = (ngx_http_civchat_index_cmp(n, t->kind, t->data, t->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static ngx_http_civchat_profile_t *
ngx_http_civchat_index_profile(ngx_http_civchat_index_t *ix)
{
    if (ix->alias) {
        return ((ngx_http_civchat_alias_t *) ix)->profile;
    }

    switch (ix->kind) {

    case NGX_HTTP_CIVCHAT_BY_USER_ID:
        return (ngx_http_civchat_profile_t *)
                   ((u_char *) ix - offsetof(ngx_http_civchat_profile_t,
                                             user_id));

    case NGX_HTTP_CIVCHAT_BY_EMAIL:
        return (ngx_http_civchat_profile_t *)
                   ((u_char *) ix - offsetof(ngx_http_civchat_profile_t,
                                             email));

    default: /* NGX_HTTP_CIVCHAT_BY_KEY */
        return (ngx_http_civchat_profile_t *)
                   ((u_char *) ix - offsetof(ngx_http_civchat_profile_t,
                                             key));
    }
}


/* the index entry of a key, user_id or email, retired keys included */

ngx_http_civchat_index_t *
ngx_http_civchat_store_index(ngx_http_civchat_zone_t *zone, u_char kind,
    ngx_str_t *value)
{
    uint32_t                   hash;
    ngx_int_t                  rc;
    ngx_rbtree_node_t         *node, *sentinel;
    ngx_http_civchat_index_t  *ix, *found;

    if (value->len == 0 || value->len > 255) {
        return NULL;
    }

    hash = ngx_http_civchat_hash(kind, value->data, value->len);

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;
    found = NULL;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        ix = (ngx_http_civchat_index_t *) node;

        rc = ngx_http_civchat_index_cmp(ix, kind, value->data, value->len);

        if (rc == 0) {
            /*
             * equal entries (an email several profiles hold) lie in the
             * order they were made: the first one's holder answers,
             * as the index entry of a zone on Redis does
             */
            found = ix;
            node = node->left;
            continue;
        }

        node = (rc > 0) ? node->left : node->right;
    }

    return found;
}


ngx_http_civchat_profile_t *
ngx_http_civchat_store_owner(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_index_t *ix)
{
    ngx_http_civchat_profile_t  *p;

    p = ngx_http_civchat_index_profile(ix);
    ngx_http_civchat_store_pin(zone, p);

    return p;
}


/* the profile holding a user_id or email, or a live key */

ngx_http_civchat_profile_t *
ngx_http_civchat_store_find(ngx_http_civchat_zone_t *zone, u_char kind,
    ngx_str_t *value)
{
    ngx_http_civchat_index_t  *ix;

    ix = ngx_http_civchat_store_index(zone, kind, value);

    if (ix == NULL || (ix->flags & NGX_HTTP_CIVCHAT_KEY_RETIRED)) {
        return NULL;
    }

    return ngx_http_civchat_store_owner(zone, ix);
}


/*
 * The profile whose own key comes next in the index's order: hash,
 * kind, then the bytes, as ngx_http_civchat_rbtree_insert() sorts.
 * After "prev", a profile in the zone, while the lock is held since it
 * was found; else after "after" (NULL: the first of all), which need
 * not be in the zone any more.  A profile's own key never moves in that
 * order, so a walk over all profiles that lets go of the lock between
 * steps (state.c) goes on from the last key it saw.
 */

ngx_http_civchat_profile_t *
ngx_http_civchat_store_next(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_index_t *after, ngx_http_civchat_profile_t *prev)
{
    ngx_rbtree_node_t         *node, *next, *sentinel;
    ngx_http_civchat_index_t  *ix;

    if (prev != NULL) {
        next = ngx_rbtree_next(&zone->sh->rbtree, &prev->key.node);
        goto found;
    }

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;
    next = NULL;

    /* the least entry greater than "after" */

    while (node != sentinel) {
        ix = (ngx_http_civchat_index_t *) node;

        if (after == NULL
            || after->node.key < node->key
            || (after->node.key == node->key
                && ngx_http_civchat_index_cmp(ix, after->kind, after->data,
                                              after->len)
                   > 0))
        {
            next = node;
            node = node->left;

        } else {
            node = node->right;
        }
    }

found:

    /* user_ids, emails and a profile's other keys are passed over */

    while (next != NULL) {
        ix = (ngx_http_civchat_index_t *) next;

        if (ix->kind == NGX_HTTP_CIVCHAT_BY_KEY && !ix->alias) {
            return ngx_http_civchat_index_profile(ix);
        }

        next = ngx_rbtree_next(&zone->sh->rbtree, next);
    }

    return NULL;
}


/*
 * Allocation never fails a request while there is something to evict:
 * the least recently seen profile goes first, except the ones the
 * current request works on.
 */

void *
ngx_http_civchat_store_alloc(ngx_http_civchat_zone_t *zone, size_t size)
{
    void  *p;

    for ( ;; ) {
        p = ngx_http_civchat_mem_alloc(zone->shpool, &zone->sh->mem, size);
        if (p != NULL) {
            return p;
        }

        if (ngx_http_civchat_live_drop_oldest(zone) == NGX_OK) {
            continue;
        }

        if (ngx_http_civchat_evict_one(zone) != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "civchat zone \"%V\" cannot hold %uz bytes",
                          &zone->name, size);
            return NULL;
        }
    }
}


static ngx_int_t
ngx_http_civchat_evict_one(ngx_http_civchat_zone_t *zone)
{
    ngx_uint_t                   i;
    ngx_queue_t                 *q;
    ngx_http_civchat_profile_t  *p;

    for (q = ngx_queue_last(&zone->sh->lru);
         q != ngx_queue_sentinel(&zone->sh->lru);
         q = ngx_queue_prev(q))
    {
        p = ngx_queue_data(q, ngx_http_civchat_profile_t, lru);

        for (i = 0; i < zone->npinned; i++) {
            if (zone->pinned[i] == p) {
                break;
            }
        }

        if (i < zone->npinned || !ngx_http_civchat_evictable(zone, p)) {
            continue;
        }

        if (!zone->sh->full_logged) {
            zone->sh->full_logged = 1;
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "civchat zone \"%V\" is full, evicting the least "
                          "recently seen profiles (logged once)",
                          &zone->name);
        }

        zone->sh->evictions++;
        ngx_http_civchat_store_delete(zone, p);

        return NGX_OK;
    }

    return NGX_DECLINED;
}


/*
 * On Redis, a profile with a delta not written yet stays until it is
 * written, and one made here until Redis has it.
 */

static ngx_uint_t
ngx_http_civchat_evictable(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p)
{
    ngx_http_civchat_cached_t  *c;

    c = ngx_http_civchat_cache_of(zone, p);

    return c == NULL
           || !(c->flags & (NGX_HTTP_CIVCHAT_CACHE_DIRTY
                            |NGX_HTTP_CIVCHAT_CACHE_FLUSHING
                            |NGX_HTTP_CIVCHAT_CACHE_NEW));
}


void
ngx_http_civchat_store_free(ngx_http_civchat_zone_t *zone, void *p)
{
    ngx_http_civchat_free(zone, p);
}


/* a profile's cache part (cluster.h) goes with it, delta and all */

static void
ngx_http_civchat_cache_free(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p)
{
    ngx_http_civchat_cached_t      *c;
    ngx_http_civchat_cluster_sh_t  *csh;

    c = ngx_http_civchat_cache_of(zone, p);

    if (c == NULL) {
        return;
    }

    if (c->flags & NGX_HTTP_CIVCHAT_CACHE_DIRTY) {
        csh = zone->sh->cluster;
        ngx_queue_remove(&c->dirty);
        csh->ndirty--;
    }

    if (c->names) {
        ngx_http_civchat_free(zone, ngx_http_civchat_cache_ptr(zone,
                                                                c->names));
    }

    ngx_http_civchat_free(zone, c);
    p->cache = 0;
}


static void
ngx_http_civchat_index_insert(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_index_t *ix)
{
    ix->node.key = ngx_http_civchat_hash(ix->kind, ix->data, ix->len);
    ngx_rbtree_insert(&zone->sh->rbtree, &ix->node);
}


ngx_http_civchat_profile_t *
ngx_http_civchat_store_create(ngx_http_civchat_zone_t *zone, ngx_str_t *key,
    time_t now)
{
    ngx_http_civchat_profile_t  *p;

    if (key->len == 0 || key->len > NGX_HTTP_CIVCHAT_KEY_MAX) {
        return NULL;
    }

    p = ngx_http_civchat_alloc(zone, sizeof(ngx_http_civchat_profile_t));
    if (p == NULL) {
        return NULL;
    }

    ngx_memzero(p, sizeof(ngx_http_civchat_profile_t));
    ngx_queue_init(&p->aliases);
    ngx_queue_insert_head(&zone->sh->lru, &p->lru);

    /* the new profile must survive the allocation of its own blob */
    ngx_http_civchat_store_pin(zone, p);

    p->blob = ngx_http_civchat_alloc(zone, key->len);
    if (p->blob == NULL) {
        ngx_queue_remove(&p->lru);
        ngx_http_civchat_free(zone, p);
        return NULL;
    }

    ngx_memcpy(p->blob, key->data, key->len);

    p->key.kind = NGX_HTTP_CIVCHAT_BY_KEY;
    p->key.data = p->blob;
    p->key.len = (u_char) key->len;
    ngx_http_civchat_index_insert(zone, &p->key);

    p->user_id.kind = NGX_HTTP_CIVCHAT_BY_USER_ID;
    p->email.kind = NGX_HTTP_CIVCHAT_BY_EMAIL;

    p->first_seen = (uint32_t) now;
    zone->sh->profiles++;
    zone->sh->changes++;

    return p;
}


ngx_int_t
ngx_http_civchat_store_set_index(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, u_char kind, ngx_str_t *value)
{
    ngx_str_t   user_id, email, none;

    ngx_str_null(&none);

    if (value == NULL) {
        value = &none;
    }

    if (value->len > 255) {
        return NGX_ERROR;
    }

    user_id.data = p->user_id.data;
    user_id.len = p->user_id.len;
    email.data = p->email.data;
    email.len = p->email.len;

    return ngx_http_civchat_rebuild(zone, p,
                       (kind == NGX_HTTP_CIVCHAT_BY_USER_ID) ? value : &user_id,
                       (kind == NGX_HTTP_CIVCHAT_BY_EMAIL) ? value : &email,
                       ngx_http_civchat_profile_attrs(p), p->attrs_len);
}


ngx_int_t
ngx_http_civchat_store_set_attrs(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, u_char *text, size_t len)
{
    ngx_str_t  user_id, email;

    user_id.data = p->user_id.data;
    user_id.len = p->user_id.len;
    email.data = p->email.data;
    email.len = p->email.len;

    if (ngx_http_civchat_rebuild(zone, p, &user_id, &email, text, len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* the next visit reads and checks the attributes again */
    p->auto_sig = 0;

    ngx_http_civchat_find_name(p);

    return NGX_OK;
}


/*
 * Where the top-level "name" string is in the attributes' text, which
 * only json.c writes (compact, valid): the answer copies it as it is,
 * quotes and escapes included.
 */

static void
ngx_http_civchat_find_name(ngx_http_civchat_profile_t *p)
{
    u_char     *text;
    ngx_str_t   attrs, value;

    p->name_pos = 0;
    p->name_len = 0;

    text = ngx_http_civchat_profile_attrs(p);

    attrs.data = text;
    attrs.len = p->attrs_len;

    ngx_http_civchat_text_find(&attrs, "\"name\"", sizeof("\"name\"") - 1,
                               &value);

    if (value.len > 1 && value.data[0] == '"'
        && value.data - text < 0xffff && value.len < 0xffff)
    {
        p->name_pos = (uint16_t) (value.data - text);
        p->name_len = (uint16_t) value.len;
    }
}


/*
 * A new blob: the key, then the given user_id, email and attributes
 * (any of which may point into the old blob, freed only at the end).
 */

static ngx_int_t
ngx_http_civchat_rebuild(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *user_id, ngx_str_t *email,
    u_char *attrs, size_t attrs_len)
{
    u_char  *blob, *q, *old;

    blob = ngx_http_civchat_alloc(zone, p->key.len + user_id->len
                                        + email->len + attrs_len);
    if (blob == NULL) {
        return NGX_ERROR;
    }

    q = ngx_cpymem(blob, p->key.data, p->key.len);

    ngx_http_civchat_relink(zone, &p->key, blob, NULL);

    ngx_memcpy(q, user_id->data, user_id->len);
    ngx_http_civchat_relink(zone, &p->user_id, q, user_id);
    q += user_id->len;

    ngx_memcpy(q, email->data, email->len);
    ngx_http_civchat_relink(zone, &p->email, q, email);
    q += email->len;

    ngx_memcpy(q, attrs, attrs_len);
    p->attrs_len = (uint32_t) attrs_len;

    old = p->blob;
    p->blob = blob;
    ngx_http_civchat_free(zone, old);

    zone->sh->changes++;

    return NGX_OK;
}


/*
 * An index entry follows its string into the new blob; if the string
 * itself changes, the entry moves in the tree (or leaves it, or joins).
 */

static void
ngx_http_civchat_relink(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_index_t *ix, u_char *data, ngx_str_t *value)
{
    if (value == NULL
        || (value->len == ix->len
            && ngx_memcmp(value->data, ix->data, ix->len) == 0))
    {
        /* same content, same place in the tree */
        ix->data = data;
        return;
    }

    if (ix->len) {
        ngx_rbtree_delete(&zone->sh->rbtree, &ix->node);
    }

    ix->data = data;
    ix->len = (u_char) value->len;

    if (ix->len) {
        ngx_http_civchat_index_insert(zone, ix);
    }
}


/*
 * Another key of a profile: the session of another browser, or one
 * kept retired.  The oldest go when a profile has too many.
 */

ngx_int_t
ngx_http_civchat_store_add_key(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *key, u_char flags)
{
    ngx_http_civchat_alias_t  *a;

    if (key->len == 0 || key->len > NGX_HTTP_CIVCHAT_KEY_MAX) {
        return NGX_ERROR;
    }

    a = ngx_http_civchat_alias_new(zone, p, key->data, key->len, flags);
    if (a == NULL) {
        return NGX_ERROR;
    }

    ngx_http_civchat_keys_cap(zone, p);

    return NGX_OK;
}


static ngx_http_civchat_alias_t *
ngx_http_civchat_alias_new(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, u_char *data, size_t len, u_char flags)
{
    ngx_http_civchat_alias_t  *a;

    a = ngx_http_civchat_alloc(zone,
                       offsetof(ngx_http_civchat_alias_t, data) + len);
    if (a == NULL) {
        return NULL;
    }

    ngx_memzero(a, offsetof(ngx_http_civchat_alias_t, data));
    ngx_memcpy(a->data, data, len);

    a->index.kind = NGX_HTTP_CIVCHAT_BY_KEY;
    a->index.alias = 1;
    a->index.flags = flags;
    a->profile = p;
    a->index.data = a->data;
    a->index.len = (u_char) len;
    ngx_http_civchat_index_insert(zone, &a->index);

    if (flags & NGX_HTTP_CIVCHAT_KEY_RETIRED) {
        ngx_http_civchat_retire_stamp(&a->index);
    }

    ngx_queue_insert_tail(&p->aliases, &a->queue);
    zone->sh->changes++;

    return a;
}


static void
ngx_http_civchat_alias_free(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_alias_t *a)
{
    ngx_queue_remove(&a->queue);
    ngx_rbtree_delete(&zone->sh->rbtree, &a->index.node);
    ngx_http_civchat_free(zone, a);
    zone->sh->changes++;
}


/*
 * At most NGX_HTTP_CIVCHAT_SESSIONS_MAX live keys (unproved sessions go
 * first, then the oldest) and NGX_HTTP_CIVCHAT_RETIRED_MAX retired ones
 * besides the profile's own key.
 */

static void
ngx_http_civchat_keys_cap(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p)
{
    ngx_uint_t                 live, retired;
    ngx_queue_t               *q;
    ngx_http_civchat_alias_t  *a, *oldest, *unproved, *old_retired;

    for ( ;; ) {
        live = (p->key.flags & NGX_HTTP_CIVCHAT_KEY_RETIRED) ? 0 : 1;
        retired = 0;
        oldest = NULL;
        unproved = NULL;
        old_retired = NULL;

        for (q = ngx_queue_head(&p->aliases);
             q != ngx_queue_sentinel(&p->aliases);
             q = ngx_queue_next(q))
        {
            a = ngx_queue_data(q, ngx_http_civchat_alias_t, queue);

            if (a->index.flags & NGX_HTTP_CIVCHAT_KEY_RETIRED) {
                retired++;

                if (old_retired == NULL) {
                    old_retired = a;
                }

                continue;
            }

            live++;

            if (oldest == NULL) {
                oldest = a;
            }

            if (unproved == NULL
                && (a->index.flags & NGX_HTTP_CIVCHAT_KEY_UNPROVED))
            {
                unproved = a;
            }
        }

        if (retired > NGX_HTTP_CIVCHAT_RETIRED_MAX) {
            ngx_http_civchat_alias_free(zone, old_retired);
            continue;
        }

        if (live > NGX_HTTP_CIVCHAT_SESSIONS_MAX && oldest != NULL) {
            ngx_http_civchat_alias_free(zone, unproved ? unproved : oldest);
            continue;
        }

        return;
    }
}


/* a key that never resolves again; when, to the minute (zone.c's grace) */

void
ngx_http_civchat_store_retire(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_index_t *ix)
{
    if (ix->flags & NGX_HTTP_CIVCHAT_KEY_RETIRED) {
        return;
    }

    ix->flags |= NGX_HTTP_CIVCHAT_KEY_RETIRED;
    ngx_http_civchat_retire_stamp(ix);

    zone->sh->changes++;

    ngx_http_civchat_keys_cap(zone, p);
}


static void
ngx_http_civchat_retire_stamp(ngx_http_civchat_index_t *ix)
{
    ix->retired = (uint16_t) (ngx_time() / 60);
}


/* every live key of a profile retired but "keep" */

void
ngx_http_civchat_store_revoke(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_index_t *keep)
{
    ngx_queue_t               *q, *next;
    ngx_http_civchat_alias_t  *a;

    if (&p->key != keep) {
        ngx_http_civchat_store_retire(zone, p, &p->key);
    }

    for (q = ngx_queue_head(&p->aliases);
         q != ngx_queue_sentinel(&p->aliases);
         q = next)
    {
        next = ngx_queue_next(q);
        a = ngx_queue_data(q, ngx_http_civchat_alias_t, queue);

        if (&a->index == keep
            || (a->index.flags & NGX_HTTP_CIVCHAT_KEY_RETIRED))
        {
            continue;
        }

        /* retired sessions past the cap are freed at once */
        a->index.flags |= NGX_HTTP_CIVCHAT_KEY_RETIRED;
        ngx_http_civchat_retire_stamp(&a->index);
    }

    zone->sh->changes++;

    ngx_http_civchat_keys_cap(zone, p);
}


/*
 * An anonymous profile merged into another: its keys are kept retired
 * by the survivor (a merged key never resolves again, and nobody may
 * adopt it), which also inherits its counters.  The caller has already
 * carried the attributes over.
 */

void
ngx_http_civchat_store_merge(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *into)
{
    u_char                     buf[NGX_HTTP_CIVCHAT_KEY_MAX];
    ngx_str_t                  key;
    ngx_queue_t               *q;
    ngx_http_civchat_alias_t  *a;

    key.len = from->key.len;
    key.data = ngx_cpymem(buf, from->key.data, key.len) - key.len;

    while (!ngx_queue_empty(&from->aliases)) {
        q = ngx_queue_head(&from->aliases);
        a = ngx_queue_data(q, ngx_http_civchat_alias_t, queue);
        ngx_http_civchat_alias_free(zone, a);
    }

    into->page_views += from->page_views;
    into->sessions += from->sessions;

    if (from->first_seen && from->first_seen < into->first_seen) {
        into->first_seen = from->first_seen;
    }

    if (from->last_seen > into->last_seen) {
        into->last_seen = from->last_seen;
    }

    /* the key goes with the profile, then comes back as a retired one */

    ngx_http_civchat_store_delete(zone, from);

    if (ngx_http_civchat_store_add_key(zone, into, &key,
                                       NGX_HTTP_CIVCHAT_KEY_RETIRED)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "civchat zone \"%V\" cannot keep the merged key "
                      "\"%V\" as a retired key", &zone->name, &key);
    }
}


void
ngx_http_civchat_store_delete(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p)
{
    ngx_queue_t               *q;
    ngx_http_civchat_alias_t  *a;

    while (!ngx_queue_empty(&p->aliases)) {
        q = ngx_queue_head(&p->aliases);
        ngx_queue_remove(q);

        a = ngx_queue_data(q, ngx_http_civchat_alias_t, queue);
        ngx_rbtree_delete(&zone->sh->rbtree, &a->index.node);
        ngx_http_civchat_free(zone, a);
    }

    ngx_rbtree_delete(&zone->sh->rbtree, &p->key.node);

    if (p->user_id.len) {
        ngx_rbtree_delete(&zone->sh->rbtree, &p->user_id.node);
    }

    if (p->email.len) {
        ngx_rbtree_delete(&zone->sh->rbtree, &p->email.node);
    }

    ngx_http_civchat_free(zone, p->blob);
    ngx_http_civchat_ua_release(zone, p);
    ngx_http_civchat_cache_free(zone, p);

    ngx_queue_remove(&p->lru);
    ngx_http_civchat_free(zone, p);

    zone->sh->profiles--;
    zone->sh->changes++;
}


void
ngx_http_civchat_store_touch(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p)
{
    ngx_queue_remove(&p->lru);
    ngx_queue_insert_head(&zone->sh->lru, &p->lru);

    ngx_http_civchat_store_pin(zone, p);
}


void
ngx_http_civchat_store_unpin(ngx_http_civchat_zone_t *zone)
{
    zone->npinned = 0;
}


void
ngx_http_civchat_store_pin(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p)
{
    ngx_uint_t  i;

    for (i = 0; i < zone->npinned; i++) {
        if (zone->pinned[i] == p) {
            return;
        }
    }

    if (zone->npinned < NGX_HTTP_CIVCHAT_PINS) {
        zone->pinned[zone->npinned++] = p;
        return;
    }

    /* cannot happen: a request works on at most three profiles */
    ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                  "civchat zone \"%V\": too many pinned profiles",
                  &zone->name);
}


ngx_int_t
ngx_http_civchat_store_set_ua(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *ua)
{
    uint32_t                hash;
    ngx_rbtree_node_t      *node, *sentinel;
    ngx_http_civchat_ua_t  *u;

    if (ua->len == 0 || ua->len > 0xffff) {
        return NGX_OK;
    }

    /* the same browser as last time: no hash needed */

    if (p->user_agent) {
        u = (ngx_http_civchat_ua_t *) ((u_char *) zone->shpool
                                       + p->user_agent);

        if (u->len == ua->len
            && ngx_memcmp(u->data, ua->data, ua->len) == 0)
        {
            return NGX_OK;
        }
    }

    hash = ngx_crc32_short(ua->data, ua->len);

    node = zone->sh->ua_tree.root;
    sentinel = zone->sh->ua_tree.sentinel;
    u = NULL;

    while (node != sentinel) {
        u = (ngx_http_civchat_ua_t *) node;

        if (hash == node->key && u->len == ua->len
            && ngx_memcmp(u->data, ua->data, ua->len) == 0)
        {
            break;
        }

        /*
         * equal hashes were inserted to the right; after rotations a
         * crc32 collision may be missed, which only costs a second entry
         */
        node = (hash < node->key) ? node->left : node->right;
        u = NULL;
    }

    if (u == NULL) {
        u = ngx_http_civchat_alloc(zone,
                         offsetof(ngx_http_civchat_ua_t, data) + ua->len);
        if (u == NULL) {
            return NGX_ERROR;
        }

        u->node.key = hash;
        u->refs = 0;
        u->len = (uint16_t) ua->len;
        ngx_memcpy(u->data, ua->data, ua->len);

        ngx_rbtree_insert(&zone->sh->ua_tree, &u->node);
    }

    u->refs++;

    ngx_http_civchat_ua_release(zone, p);
    p->user_agent = (uint32_t) ((u_char *) u - (u_char *) zone->shpool);
    zone->sh->changes++;

    return NGX_OK;
}


void
ngx_http_civchat_store_ua(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *ua)
{
    ngx_http_civchat_ua_t  *u;

    if (p->user_agent == 0) {
        ngx_str_null(ua);
        return;
    }

    u = (ngx_http_civchat_ua_t *) ((u_char *) zone->shpool + p->user_agent);

    ua->data = u->data;
    ua->len = u->len;
}


static void
ngx_http_civchat_ua_release(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p)
{
    ngx_http_civchat_ua_t  *u;

    if (p->user_agent == 0) {
        return;
    }

    u = (ngx_http_civchat_ua_t *) ((u_char *) zone->shpool + p->user_agent);
    p->user_agent = 0;

    if (--u->refs == 0) {
        ngx_rbtree_delete(&zone->sh->ua_tree, &u->node);
        ngx_http_civchat_free(zone, u);
    }
}
