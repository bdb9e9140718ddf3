
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The profile zone follows limit_req: a slab pool holding one rbtree of
 * index entries (keys, aliases, user_ids, emails, each pointing at its
 * profile) and an LRU queue of profiles.  Callers hold the zone mutex
 * around a whole request's work; every function here expects it held.
 *
 * Making room evicts the least recently seen profile, so every profile
 * a locked section has found or created is pinned until the unlock:
 * an allocation for one profile never frees another still in use.
 */


static ngx_int_t ngx_http_civchat_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_civchat_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static uint32_t ngx_http_civchat_hash(u_char kind, u_char *data, size_t len);
static ngx_http_civchat_profile_t *ngx_http_civchat_index_profile(
    ngx_http_civchat_index_t *ix);
static ngx_int_t ngx_http_civchat_index_cmp(ngx_http_civchat_index_t *a,
    u_char kind, u_char *data, size_t len);
static void *ngx_http_civchat_alloc(ngx_http_civchat_zone_t *zone,
    size_t size);

#define ngx_http_civchat_free(zone, p)                                       \
    ngx_http_civchat_mem_free((zone)->shpool, &(zone)->sh->mem, p)

static ngx_int_t ngx_http_civchat_evict_one(ngx_http_civchat_zone_t *zone);
static void ngx_http_civchat_index_insert(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_index_t *ix);
static void ngx_http_civchat_find_name(ngx_http_civchat_profile_t *p);
static u_char *ngx_http_civchat_skip_value(u_char *p, u_char *last);
static ngx_int_t ngx_http_civchat_rebuild(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *user_id, ngx_str_t *email,
    u_char *attrs, size_t attrs_len);
static void ngx_http_civchat_relink(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_index_t *ix, u_char *data, ngx_str_t *value);
static ngx_int_t ngx_http_civchat_alias_new(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, u_char *data, size_t len);
static void ngx_http_civchat_ua_release(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p);

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

    if (ngx_http_civchat_mem_init(zone->shpool, &zone->sh->mem) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_civchat_rbtree_insert);
    ngx_rbtree_init(&zone->sh->ua_tree, &zone->sh->ua_sentinel,
                    ngx_rbtree_insert_value);
    ngx_queue_init(&zone->sh->lru);

    len = sizeof(" in civchat zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in civchat zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* running out of memory is normal: the LRU makes room */
    zone->shpool->log_nomem = 0;

    if (ngx_http_civchat_live_init(zone) != NGX_OK) {
        return NGX_ERROR;
    }

    if (zone->state.len) {
        return ngx_http_civchat_state_load(zone);
    }

    return NGX_OK;
}


void
ngx_http_civchat_store_lock(ngx_http_civchat_zone_t *zone)
{
    ngx_shmtx_lock(&zone->shpool->mutex);
}


void
ngx_http_civchat_store_unlock(ngx_http_civchat_zone_t *zone)
{
    zone->npinned = 0;
    ngx_shmtx_unlock(&zone->shpool->mutex);
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


ngx_http_civchat_profile_t *
ngx_http_civchat_store_find(ngx_http_civchat_zone_t *zone, u_char kind,
    ngx_str_t *value)
{
    uint32_t                     hash;
    ngx_int_t                    rc;
    ngx_rbtree_node_t           *node, *sentinel;
    ngx_http_civchat_index_t    *ix;
    ngx_http_civchat_profile_t  *p;

    if (value->len == 0 || value->len > 255) {
        return NULL;
    }

    hash = ngx_http_civchat_hash(kind, value->data, value->len);

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;

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
            p = ngx_http_civchat_index_profile(ix);
            ngx_http_civchat_store_pin(zone, p);
            return p;
        }

        node = (rc > 0) ? node->left : node->right;
    }

    return NULL;
}


/*
 * Allocation never fails a request while there is something to evict:
 * the least recently seen profile goes first, except the ones the
 * current request works on.
 */

static void *
ngx_http_civchat_alloc(ngx_http_civchat_zone_t *zone, size_t size)
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

        if (i < zone->npinned) {
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
 * only json.c writes (compact, valid): a name with escapes, or too far
 * in, is read from the parsed attributes instead (name_pos 0xffff).
 */

static void
ngx_http_civchat_find_name(ngx_http_civchat_profile_t *p)
{
    u_char  *text, *q, *last, *key, *value;

    p->name_pos = 0;
    p->name_len = 0;

    if (p->attrs_len < 2) {
        return;
    }

    text = ngx_http_civchat_profile_attrs(p);
    last = text + p->attrs_len - 1;    /* the closing '}' */

    for (q = text + 1; q < last; /* void */) {
        key = q;
        q = ngx_http_civchat_skip_value(q, last);
        value = ++q;                   /* after ':' */
        q = ngx_http_civchat_skip_value(q, last);

        if (q - key > 0 && value - key == sizeof("\"name\":") - 1
            && ngx_strncmp(key, "\"name\":", sizeof("\"name\":") - 1) == 0
            && *value == '"')
        {
            value++;

            if (ngx_strlchr(value, q - 1, '\\') != NULL
                || value - text >= 0xffff || q - 1 - value >= 0xffff)
            {
                p->name_pos = 0xffff;
                return;
            }

            p->name_pos = (uint16_t) (value - text);
            p->name_len = (uint16_t) (q - 1 - value);
            return;
        }

        if (q < last && *q == ',') {
            q++;
        }
    }
}


/* past one JSON value (a string, number, literal, object or array) */

static u_char *
ngx_http_civchat_skip_value(u_char *p, u_char *last)
{
    ngx_uint_t  depth;

    depth = 0;

    while (p < last) {
        switch (*p) {

        case '"':
            for (p++; p < last && *p != '"'; p++) {
                if (*p == '\\') {
                    p++;
                }
            }

            p++;
            break;

        case '{':
        case '[':
            depth++;
            p++;
            continue;

        case '}':
        case ']':
            depth--;
            p++;
            break;

        case ',':
        case ':':
            if (depth == 0) {
                return p;
            }

            p++;
            continue;

        default:
            p++;
            continue;
        }

        if (depth == 0) {
            return p;
        }
    }

    return p;
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


ngx_int_t
ngx_http_civchat_store_add_alias(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *key)
{
    if (key->len == 0 || key->len > NGX_HTTP_CIVCHAT_KEY_MAX) {
        return NGX_ERROR;
    }

    return ngx_http_civchat_alias_new(zone, p, key->data, key->len);
}


static ngx_int_t
ngx_http_civchat_alias_new(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, u_char *data, size_t len)
{
    ngx_http_civchat_alias_t  *a;

    a = ngx_http_civchat_alloc(zone,
                       offsetof(ngx_http_civchat_alias_t, data) + len);
    if (a == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(a->data, data, len);

    a->index.kind = NGX_HTTP_CIVCHAT_BY_KEY;
    a->index.alias = 1;
    a->profile = p;
    a->index.data = a->data;
    a->index.len = (u_char) len;
    ngx_http_civchat_index_insert(zone, &a->index);

    ngx_queue_insert_tail(&p->aliases, &a->queue);
    zone->sh->changes++;

    return NGX_OK;
}


/*
 * An anonymous profile merged into another: its key and aliases become
 * aliases of the survivor, which also inherits its counters.  The caller
 * has already carried the attributes over.
 */

void
ngx_http_civchat_store_merge(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *into)
{
    ngx_queue_t               *q;
    ngx_http_civchat_alias_t  *a;

    if (ngx_http_civchat_alias_new(zone, into, from->key.data, from->key.len)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "civchat zone \"%V\" cannot keep the merged key "
                      "\"%*s\" as an alias", &zone->name,
                      (size_t) from->key.len, from->key.data);
    }

    while (!ngx_queue_empty(&from->aliases)) {
        q = ngx_queue_head(&from->aliases);
        ngx_queue_remove(q);

        a = ngx_queue_data(q, ngx_http_civchat_alias_t, queue);
        a->profile = into;
        ngx_queue_insert_tail(&into->aliases, q);
    }

    into->page_views += from->page_views;
    into->sessions += from->sessions;

    if (from->first_seen && from->first_seen < into->first_seen) {
        into->first_seen = from->first_seen;
    }

    if (from->last_seen > into->last_seen) {
        into->last_seen = from->last_seen;
    }

    ngx_http_civchat_store_delete(zone, from);
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
