
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * What is said to visitors, kept in the profile zone for the streams of
 * every worker (stream.c): a queue of messages per profile, by its own
 * key, each with a sequence number that is its event id.  A profile
 * keeps at most live= messages (civchat_zone) and its last profile
 * changes for a minute, so a chatty visitor can only push out its own
 * messages, never another visitor's; what goes unsent over a limit is
 * counted.  A ring of hints says which profiles had news, so a worker
 * need not look at all of its streams; when the ring has turned over
 * since it last read, it does look.  Everything here but the text of a
 * profile change runs under the zone's lock (zone.c).  A zone on Redis
 * keeps no messages here: they are in Redis (live_redis.c); only its
 * streams' counts are.
 */


#define NGX_HTTP_CIVCHAT_LIVE_HINTS      1024
#define NGX_HTTP_CIVCHAT_LIVE_CHANGES    16     /* profile changes a key */
#define NGX_HTTP_CIVCHAT_LIVE_CHANGE_TTL 60     /* seconds */

#define ngx_http_civchat_live_class(type)                                    \
    ((type) == NGX_HTTP_CIVCHAT_LIVE_PROFILE ? 1 : 0)


static ngx_http_civchat_live_key_t *ngx_http_civchat_live_key(
    ngx_http_civchat_zone_t *zone, ngx_str_t *profile, ngx_uint_t create);
static void ngx_http_civchat_live_free(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_live_msg_t *m);
static void ngx_http_civchat_live_expire(ngx_http_civchat_zone_t *zone);
static void ngx_http_civchat_live_cap(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_live_key_t *k, ngx_uint_t class);
static void *ngx_http_civchat_live_alloc(ngx_http_civchat_zone_t *zone,
    size_t size);
static ngx_http_civchat_live_name_t *ngx_http_civchat_live_find(
    ngx_rbtree_t *tree, ngx_str_t *name);
static void ngx_http_civchat_live_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);


/* made when the first stream opens: a zone without streams spends nothing */

ngx_int_t
ngx_http_civchat_live_init(ngx_http_civchat_zone_t *zone)
{
    ngx_http_civchat_live_sh_t  *live;

    if (zone->sh->live != NULL) {
        return NGX_OK;
    }

    live = ngx_slab_calloc_locked(zone->shpool,
                                  sizeof(ngx_http_civchat_live_sh_t));
    if (live == NULL) {
        return NGX_ERROR;
    }

    live->hints = ngx_slab_calloc_locked(zone->shpool,
                                 NGX_HTTP_CIVCHAT_LIVE_HINTS
                                 * sizeof(ngx_http_civchat_live_hint_t));
    if (live->hints == NULL) {
        ngx_slab_free_locked(zone->shpool, live);
        return NGX_ERROR;
    }

    ngx_rbtree_init(&live->keys, &live->keys_sentinel,
                    ngx_http_civchat_live_insert);
    ngx_rbtree_init(&live->addrs, &live->addrs_sentinel,
                    ngx_http_civchat_live_insert);
    ngx_queue_init(&live->classes[0]);
    ngx_queue_init(&live->classes[1]);

    zone->sh->live = live;

    return NGX_OK;
}


/*
 * A message for the streams of a profile.  NGX_DECLINED: nobody could
 * hear it (no stream ever opened; a profile change with none open now).
 */

ngx_int_t
ngx_http_civchat_live_add(ngx_http_civchat_zone_t *zone, ngx_str_t *profile,
    ngx_uint_t type, u_char *data, size_t len)
{
    uint64_t                      seq;
    ngx_uint_t                    class;
    ngx_http_civchat_live_sh_t   *live;
    ngx_http_civchat_live_key_t  *k;
    ngx_http_civchat_live_msg_t  *m;
    ngx_http_civchat_live_hint_t *h;

    live = zone->sh->live;

    if (live == NULL || profile->len == 0
        || profile->len > NGX_HTTP_CIVCHAT_KEY_MAX)
    {
        return NGX_DECLINED;
    }

    class = ngx_http_civchat_live_class(type);

    if (class == 1 && live->streams == 0) {
        /*
         * profile changes matter to open widgets only; messages stay for
         * a widget that reconnects with Last-Event-ID
         */
        return NGX_DECLINED;
    }

    ngx_http_civchat_live_expire(zone);

    k = ngx_http_civchat_live_key(zone, profile, 1);
    if (k == NULL) {
        (void) ngx_atomic_fetch_add(&live->dropped, 1);
        return NGX_ERROR;
    }

    ngx_http_civchat_live_cap(zone, k, class);

    m = ngx_http_civchat_live_alloc(zone,
                        offsetof(ngx_http_civchat_live_msg_t, data) + len);
    if (m == NULL) {
        (void) ngx_atomic_fetch_add(&live->dropped, 1);

        if (ngx_queue_empty(&k->messages)) {
            ngx_rbtree_delete(&live->keys, &k->node);
            ngx_slab_free_locked(zone->shpool, k);
        }

        return NGX_ERROR;
    }

    seq = ++live->seq;

    m->seq = seq;
    m->owner = k;
    m->time = (uint32_t) ngx_time();
    m->len = (uint32_t) len;
    m->type = (u_char) type;
    m->sent = 0;
    ngx_memcpy(m->data, data, len);

    ngx_queue_insert_tail(&k->messages, &m->in_key);
    ngx_queue_insert_tail(&live->classes[class], &m->in_class);
    k->count[class]++;
    live->total++;

    h = &live->hints[seq % NGX_HTTP_CIVCHAT_LIVE_HINTS];
    h->seq = seq;
    h->len = k->len;
    ngx_memcpy(h->key, k->key, k->len);

    return NGX_OK;
}


/* a profile keeps live= messages and its last profile changes */

static void
ngx_http_civchat_live_cap(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_live_key_t *k, ngx_uint_t class)
{
    ngx_uint_t                    cap;
    ngx_queue_t                  *q;
    ngx_http_civchat_live_msg_t  *m;

    cap = class ? NGX_HTTP_CIVCHAT_LIVE_CHANGES : zone->sh->live_size;
    m = NULL;

    while (k->count[class] >= cap) {

        for (q = ngx_queue_head(&k->messages);
             q != ngx_queue_sentinel(&k->messages);
             q = ngx_queue_next(q))
        {
            m = ngx_queue_data(q, ngx_http_civchat_live_msg_t, in_key);

            if (ngx_http_civchat_live_class(m->type) == class) {
                break;
            }
        }

        if (q == ngx_queue_sentinel(&k->messages)) {
            return;
        }

        /* the visitor's own oldest goes; counted if no stream had it */
        if (!m->sent) {
            (void) ngx_atomic_fetch_add(&zone->sh->live->dropped, 1);
        }

        ngx_http_civchat_live_free(zone, m);
    }
}


/* profile changes are for open streams: a minute is plenty */

static void
ngx_http_civchat_live_expire(ngx_http_civchat_zone_t *zone)
{
    time_t                        old;
    ngx_queue_t                  *q;
    ngx_http_civchat_live_msg_t  *m;

    old = ngx_time() - NGX_HTTP_CIVCHAT_LIVE_CHANGE_TTL;

    while (!ngx_queue_empty(&zone->sh->live->classes[1])) {
        q = ngx_queue_head(&zone->sh->live->classes[1]);
        m = ngx_queue_data(q, ngx_http_civchat_live_msg_t, in_class);

        if ((time_t) m->time > old) {
            return;
        }

        ngx_http_civchat_live_free(zone, m);
    }
}


/*
 * The zone is full: the oldest message goes before any profile does,
 * profile changes first.
 */

ngx_int_t
ngx_http_civchat_live_drop_oldest(ngx_http_civchat_zone_t *zone)
{
    ngx_uint_t                    class;
    ngx_queue_t                  *q;
    ngx_http_civchat_live_sh_t   *live;
    ngx_http_civchat_live_msg_t  *m;

    live = zone->sh->live;

    if (live == NULL) {
        return NGX_DECLINED;
    }

    for (class = 2; class-- > 0; /* void */) {
        if (ngx_queue_empty(&live->classes[class])) {
            continue;
        }

        q = ngx_queue_head(&live->classes[class]);
        m = ngx_queue_data(q, ngx_http_civchat_live_msg_t, in_class);

        if (!m->sent) {
            (void) ngx_atomic_fetch_add(&live->dropped, 1);
        }

        ngx_http_civchat_live_free(zone, m);

        return NGX_OK;
    }

    return NGX_DECLINED;
}


static void
ngx_http_civchat_live_free(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_live_msg_t *m)
{
    ngx_http_civchat_live_key_t  *k;

    k = m->owner;

    ngx_queue_remove(&m->in_key);
    ngx_queue_remove(&m->in_class);
    k->count[ngx_http_civchat_live_class(m->type)]--;
    zone->sh->live->total--;

    ngx_slab_free_locked(zone->shpool, m);

    if (ngx_queue_empty(&k->messages)) {
        ngx_rbtree_delete(&zone->sh->live->keys, &k->node);
        ngx_slab_free_locked(zone->shpool, k);
    }
}


/* an allocation that gives up the oldest messages, not profiles */

static void *
ngx_http_civchat_live_alloc(ngx_http_civchat_zone_t *zone, size_t size)
{
    void  *p;

    for ( ;; ) {
        p = ngx_slab_alloc_locked(zone->shpool, size);
        if (p != NULL) {
            return p;
        }

        if (ngx_http_civchat_live_drop_oldest(zone) != NGX_OK) {
            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                          "civchat zone \"%V\": no room for a live message",
                          &zone->name);
            return NULL;
        }
    }
}


static ngx_http_civchat_live_key_t *
ngx_http_civchat_live_key(ngx_http_civchat_zone_t *zone, ngx_str_t *profile,
    ngx_uint_t create)
{
    ngx_http_civchat_live_key_t  *k;

    k = (ngx_http_civchat_live_key_t *)
            ngx_http_civchat_live_find(&zone->sh->live->keys, profile);

    if (k != NULL || !create) {
        return k;
    }

    k = ngx_http_civchat_live_alloc(zone,
                                    sizeof(ngx_http_civchat_live_key_t));
    if (k == NULL) {
        return NULL;
    }

    ngx_memzero(k, sizeof(ngx_http_civchat_live_key_t));

    k->node.key = ngx_crc32_short(profile->data, profile->len);
    k->len = (u_char) profile->len;
    ngx_memcpy(k->key, profile->data, profile->len);
    ngx_queue_init(&k->messages);

    ngx_rbtree_insert(&zone->sh->live->keys, &k->node);

    return k;
}


/* the trees of live.c: by the crc32 of a name, then by the name */

static ngx_http_civchat_live_name_t *
ngx_http_civchat_live_find(ngx_rbtree_t *tree, ngx_str_t *name)
{
    uint32_t                       hash;
    ngx_int_t                      rc;
    ngx_rbtree_node_t             *node, *sentinel;
    ngx_http_civchat_live_name_t  *n;

    hash = ngx_crc32_short(name->data, name->len);

    node = tree->root;
    sentinel = tree->sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        n = (ngx_http_civchat_live_name_t *) node;

        rc = ngx_memn2cmp(name->data, n->data, name->len, n->len);

        if (rc == 0) {
            return n;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static void
ngx_http_civchat_live_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t             **p;
    ngx_http_civchat_live_name_t   *n, *t;

    n = (ngx_http_civchat_live_name_t *) node;

    for ( ;; ) {

        if (node->key != temp->key) {
            p = (node->key < temp->key) ? &temp->left : &temp->right;

        } else {
            t = (ngx_http_civchat_live_name_t *) temp;
            p = (ngx_memn2cmp(n->data, t->data, n->len, t->len) < 0)
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


/*
 * The messages of one profile after "from", copied out (out holds
 * ngx_http_civchat_live_copy_t).
 */

ngx_int_t
ngx_http_civchat_live_copy(ngx_http_civchat_zone_t *zone, uint64_t from,
    ngx_str_t *profile, ngx_pool_t *pool, ngx_array_t *out, uint64_t *upto)
{
    ngx_queue_t                   *q;
    ngx_http_civchat_live_key_t   *k;
    ngx_http_civchat_live_msg_t   *m;
    ngx_http_civchat_live_copy_t  *c;

    if (zone->sh->live == NULL) {
        *upto = 0;
        return NGX_OK;
    }

    *upto = zone->sh->live->seq;

    k = ngx_http_civchat_live_key(zone, profile, 0);
    if (k == NULL) {
        return NGX_OK;
    }

    for (q = ngx_queue_head(&k->messages);
         q != ngx_queue_sentinel(&k->messages);
         q = ngx_queue_next(q))
    {
        m = ngx_queue_data(q, ngx_http_civchat_live_msg_t, in_key);

        if (m->seq <= from) {
            continue;
        }

        m->sent = 1;

        c = ngx_array_push(out);
        if (c == NULL) {
            return NGX_ERROR;
        }

        c->seq = m->seq;
        c->type = m->type;
        c->data.len = m->len;
        c->data.data = ngx_pnalloc(pool, m->len);
        if (c->data.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(c->data.data, m->data, m->len);
    }

    return NGX_OK;
}


/*
 * Which profiles had news after "from" (out holds ngx_str_t, each once);
 * NGX_AGAIN: the hints have turned over since, look at every stream.
 */

ngx_int_t
ngx_http_civchat_live_news(ngx_http_civchat_zone_t *zone, uint64_t from,
    ngx_pool_t *pool, ngx_array_t *out, uint64_t *upto)
{
    uint64_t                       seq;
    ngx_str_t                     *k;
    ngx_uint_t                     i;
    ngx_http_civchat_live_sh_t    *live;
    ngx_http_civchat_live_hint_t  *h;

    live = zone->sh->live;

    if (live == NULL) {
        *upto = 0;
        return NGX_OK;
    }

    *upto = live->seq;

    if (live->seq - from > NGX_HTTP_CIVCHAT_LIVE_HINTS) {
        return NGX_AGAIN;
    }

    for (seq = from + 1; seq <= live->seq; seq++) {
        h = &live->hints[seq % NGX_HTTP_CIVCHAT_LIVE_HINTS];

        k = out->elts;

        for (i = 0; i < out->nelts; i++) {
            if (k[i].len == h->len
                && ngx_memcmp(k[i].data, h->key, h->len) == 0)
            {
                break;
            }
        }

        if (i < out->nelts) {
            continue;
        }

        k = ngx_array_push(out);
        if (k == NULL) {
            return NGX_ERROR;
        }

        k->len = h->len;
        k->data = ngx_pnalloc(pool, h->len);
        if (k->data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(k->data, h->key, h->len);
    }

    return NGX_OK;
}


/*
 * A profile change as the profile's streams hear it, from a
 * profile_updated event of the request's own profile: {"name": ...,
 * "old": ..., "new": ...}.  NGX_DECLINED: the event is no such change.
 * (Text only: it needs no lock.)
 */

ngx_int_t
ngx_http_civchat_live_note(ngx_pool_t *pool, ngx_http_civchat_event_t *ev,
    ngx_str_t *note)
{
    u_char  *p;
    size_t   len;

    if (ev->type != NGX_HTTP_CIVCHAT_EV_PROFILE_UPDATED || ev->other
        || ev->attrs.len < 2)
    {
        return NGX_DECLINED;
    }

    len = sizeof("{\"name\":,") + ev->attrs.len
          + ngx_http_civchat_json_quoted_len(ev->name.data, ev->name.len);

    note->data = ngx_pnalloc(pool, len);
    if (note->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(note->data, "{\"name\":", sizeof("{\"name\":") - 1);
    p = ngx_http_civchat_json_quote(p, ev->name.data, ev->name.len);
    *p++ = ',';
    p = ngx_cpymem(p, ev->attrs.data + 1, ev->attrs.len - 1);

    note->len = p - note->data;

    return NGX_OK;
}


/* a profile erased or merged: what was to be said to it goes too */

void
ngx_http_civchat_live_forget(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile)
{
    ngx_queue_t                  *q;
    ngx_http_civchat_live_key_t  *k;
    ngx_http_civchat_live_msg_t  *m;

    if (zone->sh->live == NULL) {
        return;
    }

    k = ngx_http_civchat_live_key(zone, profile, 0);

    while (k != NULL) {
        q = ngx_queue_head(&k->messages);
        m = ngx_queue_data(q, ngx_http_civchat_live_msg_t, in_key);

        /* the last one frees the key */
        k = (k->count[0] + k->count[1] > 1) ? k : NULL;

        ngx_http_civchat_live_free(zone, m);
    }
}


/*
 * Streams open from one client address, in all workers: delta +1 fails
 * with NGX_BUSY at the limit, -1 always succeeds.
 */

ngx_int_t
ngx_http_civchat_live_addr(ngx_http_civchat_zone_t *zone, ngx_str_t *addr,
    ngx_int_t delta, ngx_uint_t limit)
{
    ngx_http_civchat_live_sh_t    *live;
    ngx_http_civchat_live_addr_t  *a;

    live = zone->sh->live;

    if (live == NULL || addr->len == 0 || addr->len > NGX_SOCKADDR_STRLEN) {
        return NGX_OK;
    }

    a = (ngx_http_civchat_live_addr_t *)
            ngx_http_civchat_live_find(&live->addrs, addr);

    if (delta < 0) {
        if (a != NULL && --a->streams == 0) {
            ngx_rbtree_delete(&live->addrs, &a->node);
            ngx_slab_free_locked(zone->shpool, a);
        }

        return NGX_OK;
    }

    if (a == NULL) {
        a = ngx_http_civchat_live_alloc(zone,
                                        sizeof(ngx_http_civchat_live_addr_t));
        if (a == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(a, sizeof(ngx_http_civchat_live_addr_t));
        a->node.key = ngx_crc32_short(addr->data, addr->len);
        a->len = (u_char) addr->len;
        ngx_memcpy(a->addr, addr->data, addr->len);

        ngx_rbtree_insert(&live->addrs, &a->node);
    }

    if (limit && a->streams >= limit) {
        return NGX_BUSY;
    }

    a->streams++;

    return NGX_OK;
}
