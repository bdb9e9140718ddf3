
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_cluster.h"


/*
 * A plan against the cache of a zone on Redis (cluster.h), under the
 * zone's lock (zone.c calls these): which of the plan's names the cache
 * cannot answer fresh (cluster.c reads them, and they are installed
 * here); before the rules, the identities of the profiles they resolve
 * to; after, what the plan changed in those identities, which becomes
 * the writes cluster.c makes before the answer; and what the cache
 * does when they were made, or refused.
 */

static ngx_int_t ngx_http_civchat_cache_stale(ngx_http_civchat_sync_t *sync,
    ngx_array_t *ids, ngx_http_civchat_profile_t *p);
static void ngx_http_civchat_cache_name(ngx_http_civchat_sync_t *sync,
    u_char kind, ngx_str_t *value);
static ngx_http_civchat_before_t *ngx_http_civchat_cache_find(
    ngx_array_t *before, ngx_str_t *id);
static ngx_int_t ngx_http_civchat_cache_profile(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync, ngx_http_civchat_profile_t *p,
    ngx_http_civchat_before_t *b, ngx_uint_t trusted, ngx_array_t *after);
static ngx_int_t ngx_http_civchat_cache_gone(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync, ngx_http_civchat_before_t *b);
static ngx_int_t ngx_http_civchat_cache_claims(ngx_http_civchat_sync_t *sync,
    ngx_http_civchat_before_t *a, ngx_array_t *after);
static ngx_uint_t ngx_http_civchat_cache_kept(ngx_array_t *list,
    ngx_str_t *id, ngx_http_civchat_name_t *n);
static ngx_int_t ngx_http_civchat_cache_releases(
    ngx_http_civchat_sync_t *sync, ngx_array_t *after);
static ngx_http_civchat_name_t *ngx_http_civchat_cache_has(
    ngx_array_t *names, ngx_http_civchat_name_t *n);
static ngx_uint_t ngx_http_civchat_cache_same(ngx_array_t *a,
    ngx_array_t *b);
static ngx_http_civchat_write_t *ngx_http_civchat_cache_write(
    ngx_http_civchat_sync_t *sync, ngx_uint_t type, ngx_str_t *id);
static ngx_int_t ngx_http_civchat_cache_forget(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_doc_t *doc,
    ngx_http_civchat_cached_t *keep);


/*
 * NGX_AGAIN when the plan names what the cache cannot answer fresh:
 * sync->fetch lists the names Redis must be asked, sync->flush the
 * profiles whose deltas must be written before they are read again.
 * The server API's plans read through: what another host changed a
 * moment ago is seen before its change channel message arrives.
 */

ngx_int_t
ngx_http_civchat_cache_needs(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_sync_t *sync)
{
    ngx_uint_t                   i;
    ngx_http_civchat_name_t     *n, **f;
    ngx_http_civchat_index_t    *ix;
    ngx_http_civchat_cached_t   *c;
    ngx_http_civchat_profile_t  *p;

    if (sync->nnames == 0) {
        ngx_http_civchat_cache_name(sync, NGX_HTTP_CIVCHAT_BY_KEY,
                                    &plan->key);
        ngx_http_civchat_cache_name(sync, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                    &plan->user_id);
        ngx_http_civchat_cache_name(sync, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                    &plan->email);
        ngx_http_civchat_cache_name(sync, plan->by_kind, &plan->by_id);
    }

    sync->flush.nelts = 0;
    sync->fetch.nelts = 0;
    sync->stale.nelts = 0;

    for (i = 0; i < sync->nnames; i++) {
        n = &sync->names[i];

        ix = ngx_http_civchat_store_index(zone, n->kind, &n->value);

        if (ix == NULL) {
            if (sync->degraded
                || (n->asked && (n->owner.len == 0 || n->stale)))
            {
                /* Redis answered this request: nobody holds it */
                continue;
            }

            /*
             * Redis named a holder the cache could not take in (its old
             * copy has a delta to write): the delta first, then again
             */

            p = n->asked ? ngx_http_civchat_cache_own(zone, &n->owner)
                         : NULL;
            c = (p != NULL) ? ngx_http_civchat_cache_of(zone, p) : NULL;

            if (c != NULL
                && (ngx_http_civchat_cache_stale(sync, &sync->stale, p)
                    != NGX_OK
                    || ((c->flags & NGX_HTTP_CIVCHAT_CACHE_DIRTY)
                        && ngx_http_civchat_cache_stale(sync, &sync->flush, p)
                           != NGX_OK)))
            {
                return NGX_ERROR;
            }

        } else {
            p = ngx_http_civchat_store_owner(zone, ix);
            c = ngx_http_civchat_cache_of(zone, p);

            if (sync->degraded
                || (ngx_http_civchat_cache_fresh(zone, c) && !plan->trusted))
            {
                continue;
            }

            if (n->asked && c != NULL
                && !(c->flags & NGX_HTTP_CIVCHAT_CACHE_STALE))
            {
                /* read by this request (the channel may not be heard) */
                continue;
            }

            /*
             * its copy is read again (asked or not: a stale copy the last
             * read could not replace is not used), its delta written first
             */

            if (ngx_http_civchat_cache_stale(sync, &sync->stale, p) != NGX_OK
                || (c != NULL
                    && (c->flags & NGX_HTTP_CIVCHAT_CACHE_DIRTY)
                    && ngx_http_civchat_cache_stale(sync, &sync->flush, p)
                       != NGX_OK))
            {
                return NGX_ERROR;
            }
        }

        f = ngx_array_push(&sync->fetch);
        if (f == NULL) {
            return NGX_ERROR;
        }

        *f = n;
    }

    return (sync->fetch.nelts || sync->flush.nelts) ? NGX_AGAIN : NGX_OK;
}


/* a profile's id in a list, once */

static ngx_int_t
ngx_http_civchat_cache_stale(ngx_http_civchat_sync_t *sync,
    ngx_array_t *ids, ngx_http_civchat_profile_t *p)
{
    ngx_str_t   *id;
    ngx_uint_t   i;

    id = ids->elts;

    for (i = 0; i < ids->nelts; i++) {
        if (id[i].len == p->key.len
            && ngx_memcmp(id[i].data, p->key.data, p->key.len) == 0)
        {
            return NGX_OK;
        }
    }

    id = ngx_array_push(ids);
    if (id == NULL) {
        return NGX_ERROR;
    }

    id->len = p->key.len;
    id->data = ngx_pnalloc(sync->pool, id->len);
    if (id->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(id->data, p->key.data, id->len);

    return NGX_OK;
}


static void
ngx_http_civchat_cache_name(ngx_http_civchat_sync_t *sync, u_char kind,
    ngx_str_t *value)
{
    ngx_uint_t                i;
    ngx_http_civchat_name_t  *n;

    if (kind == 0 || value->len == 0 || value->len > 255) {
        return;
    }

    for (i = 0; i < sync->nnames; i++) {
        n = &sync->names[i];

        if (n->kind == kind && n->value.len == value->len
            && ngx_memcmp(n->value.data, value->data, value->len) == 0)
        {
            return;
        }
    }

    n = &sync->names[sync->nnames++];

    ngx_memzero(n, sizeof(ngx_http_civchat_name_t));
    n->kind = kind;
    n->value = *value;
}


/*
 * Before the rules: the identities of the profiles the plan's names
 * resolve to, and their deltas, to see afterwards what changed; and,
 * when the plan may change an identity, the copies themselves, to put
 * back if Redis refuses the change.
 */

ngx_int_t
ngx_http_civchat_cache_before(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_sync_t *sync)
{
    ngx_str_t                    id;
    ngx_uint_t                   i, identity;
    ngx_http_civchat_name_t     *n;
    ngx_http_civchat_index_t    *ix;
    ngx_http_civchat_cached_t   *c;
    ngx_http_civchat_before_t   *b;
    ngx_http_civchat_profile_t  *p;

    sync->before.nelts = 0;
    sync->writes.nelts = 0;

    identity = plan->user_id.len || plan->email.len
               || (plan->op != NGX_HTTP_CIVCHAT_OP_VISIT
                   && plan->op != NGX_HTTP_CIVCHAT_OP_TOUCH
                   && plan->op != NGX_HTTP_CIVCHAT_OP_READ);

    for (i = 0; i < sync->nnames; i++) {
        n = &sync->names[i];

        ix = ngx_http_civchat_store_index(zone, n->kind, &n->value);
        if (ix == NULL) {
            continue;
        }

        p = ngx_http_civchat_store_owner(zone, ix);

        id.data = p->key.data;
        id.len = p->key.len;

        if (ngx_http_civchat_cache_find(&sync->before, &id) != NULL) {
            continue;
        }

        b = ngx_array_push(&sync->before);
        if (b == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(b, sizeof(ngx_http_civchat_before_t));

        b->id.len = id.len;
        b->id.data = ngx_pnalloc(sync->pool, id.len);
        if (b->id.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(b->id.data, id.data, id.len);

        if (ngx_http_civchat_doc_names(p, sync->pool, &b->names) != NGX_OK) {
            return NGX_ERROR;
        }

        c = ngx_http_civchat_cache_part(zone, p);
        if (c == NULL) {
            return NGX_ERROR;
        }

        b->views = c->views;
        b->sessions = c->sessions;

        if (identity && !(c->flags & NGX_HTTP_CIVCHAT_CACHE_NEW)
            && ngx_http_civchat_cache_snapshot(zone, p, c, sync->pool, b)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_http_civchat_before_t *
ngx_http_civchat_cache_find(ngx_array_t *before, ngx_str_t *id)
{
    ngx_uint_t                  i;
    ngx_http_civchat_before_t  *b;

    b = before->elts;

    for (i = 0; i < before->nelts; i++) {
        if (b[i].id.len == id->len
            && ngx_memcmp(b[i].id.data, id->data, id->len) == 0)
        {
            return &b[i];
        }
    }

    return NULL;
}


/*
 * After the rules (and the attributes, the visit, an erasure): what the
 * plan changed in identities becomes sync->writes, in order: the names
 * claimed, the names released, then the documents (NGX_AGAIN: there
 * is something to write).  The server API's changes are written
 * through; a visitor's that touch no identity stay a delta.
 */

ngx_int_t
ngx_http_civchat_cache_after(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res,
    ngx_http_civchat_sync_t *sync)
{
    ngx_str_t                    id;
    ngx_uint_t                   i, trusted;
    ngx_array_t                  after;
    ngx_http_civchat_before_t   *b, *a;
    ngx_http_civchat_profile_t  *p;

    if (ngx_array_init(&after, sync->pool, 4,
                       sizeof(ngx_http_civchat_before_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    trusted = plan->trusted && plan->op != NGX_HTTP_CIVCHAT_OP_READ;

    b = sync->before.elts;

    for (i = 0; i < sync->before.nelts; i++) {
        p = ngx_http_civchat_cache_own(zone, &b[i].id);

        if (p == NULL) {
            if (ngx_http_civchat_cache_gone(zone, sync, &b[i]) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_http_civchat_cache_profile(zone, sync, p, &b[i],
                                           trusted && p == res->profile,
                                           &after)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    p = res->profile;

    if (p != NULL && plan->op != NGX_HTTP_CIVCHAT_OP_DELETE) {
        id.data = p->key.data;
        id.len = p->key.len;

        if (ngx_http_civchat_cache_find(&sync->before, &id) == NULL
            && ngx_http_civchat_cache_profile(zone, sync, p, NULL, trusted,
                                              &after)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    a = after.elts;

    for (i = 0; i < after.nelts; i++) {
        if (a[i].written
            && ngx_http_civchat_cache_claims(sync, &a[i], &after) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ngx_http_civchat_cache_releases(sync, &after) != NGX_OK) {
        return NGX_ERROR;
    }

    return sync->writes.nelts ? NGX_AGAIN : NGX_OK;
}


/*
 * A profile the plan touched, or made (b NULL): its document is written
 * when its identity changed (or it is new, or the server API changed
 * it), with the names it gained claimed first (cache_claims()).
 */

static ngx_int_t
ngx_http_civchat_cache_profile(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync, ngx_http_civchat_profile_t *p,
    ngx_http_civchat_before_t *b, ngx_uint_t trusted, ngx_array_t *after)
{
    u_char                     *last;
    ngx_http_civchat_before_t  *a;
    ngx_http_civchat_cached_t  *c;
    ngx_http_civchat_write_t   *w;

    c = ngx_http_civchat_cache_part(zone, p);
    if (c == NULL) {
        return NGX_ERROR;
    }

    a = ngx_array_push(after);
    if (a == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(a, sizeof(ngx_http_civchat_before_t));

    a->id.len = p->key.len;
    a->id.data = ngx_pnalloc(sync->pool, a->id.len);
    if (a->id.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(a->id.data, p->key.data, a->id.len);

    if (ngx_http_civchat_doc_names(p, sync->pool, &a->names) != NGX_OK) {
        return NGX_ERROR;
    }

    if (b != NULL && !trusted && !(c->flags & NGX_HTTP_CIVCHAT_CACHE_NEW)
        && ngx_http_civchat_cache_same(&b->names, &a->names))
    {
        return NGX_OK;
    }

    /* the names it gained are claimed once every profile is known */
    a->written = 1;

    w = ngx_http_civchat_cache_write(sync, NGX_HTTP_CIVCHAT_WRITE_DOC,
                                     &a->id);
    if (w == NULL) {
        return NGX_ERROR;
    }

    w->fields = ngx_array_create(sync->pool, 16, sizeof(ngx_str_t));
    if (w->fields == NULL
        || ngx_http_civchat_doc_fields(zone, p, sync->pool, w->fields)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    w->base = (c->flags & NGX_HTTP_CIVCHAT_CACHE_NEW) ? 0 : c->version;

    w->expected.data = ngx_pnalloc(sync->pool, NGX_INT64_LEN);
    if (w->expected.data == NULL) {
        return NGX_ERROR;
    }

    last = ngx_sprintf(w->expected.data, "%uL", w->base);
    w->expected.len = last - w->expected.data;

    /* the document carries the counters: the delta is taken with it */
    w->views = c->views;
    w->sessions = c->sessions;
    w->taken = 1;

    if (b != NULL) {
        w->keep_views = b->views;
        w->keep_sessions = b->sessions;
    }

    c->views = 0;
    c->sessions = 0;

    if (c->names == 0 && !(c->flags & NGX_HTTP_CIVCHAT_CACHE_UA)) {
        ngx_http_civchat_cache_dirty_off(zone, c);
    }

    return NGX_OK;
}


/* a profile the plan merged into another, or erased */

static ngx_int_t
ngx_http_civchat_cache_gone(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync, ngx_http_civchat_before_t *b)
{
    ngx_str_t                   *survivor;
    ngx_http_civchat_write_t    *w;
    ngx_http_civchat_index_t    *ix;
    ngx_http_civchat_profile_t  *p;

    ix = ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY, &b->id);

    /* a merged profile's key lives on, retired, in the survivor */

    if (ix != NULL) {
        p = ngx_http_civchat_store_owner(zone, ix);

        w = ngx_http_civchat_cache_write(sync, NGX_HTTP_CIVCHAT_WRITE_MERGED,
                                         &b->id);
        if (w == NULL) {
            return NGX_ERROR;
        }

        w->fields = ngx_array_create(sync->pool, 1, sizeof(ngx_str_t));
        if (w->fields == NULL) {
            return NGX_ERROR;
        }

        survivor = ngx_array_push(w->fields);
        survivor->len = p->key.len;
        survivor->data = ngx_pnalloc(sync->pool, p->key.len);
        if (survivor->data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(survivor->data, p->key.data, p->key.len);

    } else {
        w = ngx_http_civchat_cache_write(sync, NGX_HTTP_CIVCHAT_WRITE_ERASE,
                                         &b->id);
        if (w == NULL) {
            return NGX_ERROR;
        }
    }

    b->gone = 1;

    /* on any version: the plan saw it fresh */
    ngx_str_set(&w->expected, "");

    return NGX_OK;
}


/*
 * The names a profile gained, each claimed: from the profile of the
 * plan that gave it up, or from the holder Redis named when that one
 * does not truly hold it (a stale entry); else from nobody.  A name
 * another profile keeps (an e-mail two profiles hold, with unified
 * identification off) stays with it: the index names one of them.
 */

static ngx_int_t
ngx_http_civchat_cache_claims(ngx_http_civchat_sync_t *sync,
    ngx_http_civchat_before_t *a, ngx_array_t *after)
{
    ngx_uint_t                  i, j, k;
    ngx_http_civchat_name_t    *n, *s;
    ngx_http_civchat_write_t   *w;
    ngx_http_civchat_before_t  *b;

    n = a->names.elts;
    b = sync->before.elts;

    for (i = 0; i < a->names.nelts; i++) {

        if (n[i].own) {
            /* a profile's own key is its document's name, no index */
            continue;
        }

        if (ngx_http_civchat_cache_kept(&sync->before, &a->id, &n[i])) {
            /* it had it */
            continue;
        }

        for (j = 0; j < sync->before.nelts; j++) {
            if (ngx_http_civchat_cache_has(&b[j].names, &n[i]) != NULL) {
                break;
            }
        }

        if (j < sync->before.nelts
            && ngx_http_civchat_cache_kept(after, &b[j].id, &n[i]))
        {
            /* its holder keeps it too */
            continue;
        }

        w = ngx_http_civchat_cache_write(sync, NGX_HTTP_CIVCHAT_WRITE_CLAIM,
                                         &a->id);
        if (w == NULL) {
            return NGX_ERROR;
        }

        w->name = n[i];

        if (j < sync->before.nelts) {
            w->expected = b[j].id;
            continue;
        }

        for (k = 0; k < sync->nnames; k++) {
            s = &sync->names[k];

            if (s->stale && s->kind == n[i].kind
                && s->value.len == n[i].value.len
                && ngx_memcmp(s->value.data, n[i].value.data, s->value.len)
                   == 0)
            {
                w->expected = s->owner;
                break;
            }
        }
    }

    return NGX_OK;
}


/* the profile id in a list (before or after) holds the name */

static ngx_uint_t
ngx_http_civchat_cache_kept(ngx_array_t *list, ngx_str_t *id,
    ngx_http_civchat_name_t *n)
{
    ngx_uint_t                  i;
    ngx_http_civchat_before_t  *b;

    b = list->elts;

    for (i = 0; i < list->nelts; i++) {
        if (b[i].id.len == id->len
            && ngx_memcmp(b[i].id.data, id->data, id->len) == 0)
        {
            return ngx_http_civchat_cache_has(&b[i].names, n) != NULL;
        }
    }

    return 0;
}


/* the names the touched profiles lost, that no profile gained */

static ngx_int_t
ngx_http_civchat_cache_releases(ngx_http_civchat_sync_t *sync,
    ngx_array_t *after)
{
    ngx_uint_t                  i, j, k;
    ngx_http_civchat_name_t    *n;
    ngx_http_civchat_write_t   *w;
    ngx_http_civchat_before_t  *b, *a;

    b = sync->before.elts;
    a = after->elts;

    for (i = 0; i < sync->before.nelts; i++) {
        n = b[i].names.elts;

        for (j = 0; j < b[i].names.nelts; j++) {

            if (n[j].own) {
                continue;
            }

            for (k = 0; k < after->nelts; k++) {
                if (ngx_http_civchat_cache_has(&a[k].names, &n[j]) != NULL) {
                    break;
                }
            }

            if (k < after->nelts) {
                continue;
            }

            w = ngx_http_civchat_cache_write(sync,
                                             NGX_HTTP_CIVCHAT_WRITE_RELEASE,
                                             &b[i].id);
            if (w == NULL) {
                return NGX_ERROR;
            }

            w->name = n[j];
        }
    }

    return NGX_OK;
}


/* a name (kind and value, not flags) among names; own keys count too */

static ngx_http_civchat_name_t *
ngx_http_civchat_cache_has(ngx_array_t *names, ngx_http_civchat_name_t *n)
{
    ngx_uint_t                i;
    ngx_http_civchat_name_t  *m;

    m = names->elts;

    for (i = 0; i < names->nelts; i++) {
        if (m[i].kind == n->kind && m[i].value.len == n->value.len
            && ngx_memcmp(m[i].value.data, n->value.data, n->value.len) == 0)
        {
            return &m[i];
        }
    }

    return NULL;
}


/* the same names with the same flags */

static ngx_uint_t
ngx_http_civchat_cache_same(ngx_array_t *a, ngx_array_t *b)
{
    ngx_uint_t                i;
    ngx_http_civchat_name_t  *n, *m;

    if (a->nelts != b->nelts) {
        return 0;
    }

    n = a->elts;

    for (i = 0; i < a->nelts; i++) {
        m = ngx_http_civchat_cache_has(b, &n[i]);

        if (m == NULL || m->flags != n[i].flags || m->own != n[i].own) {
            return 0;
        }
    }

    return 1;
}


static ngx_http_civchat_write_t *
ngx_http_civchat_cache_write(ngx_http_civchat_sync_t *sync, ngx_uint_t type,
    ngx_str_t *id)
{
    ngx_http_civchat_write_t  *w;

    w = ngx_array_push(&sync->writes);
    if (w == NULL) {
        return NULL;
    }

    ngx_memzero(w, sizeof(ngx_http_civchat_write_t));

    w->type = type;
    w->id = *id;

    return w;
}


/*
 * Documents read from Redis go in the cache, in place of old copies (a
 * copy with a delta not written yet stays: the plan is applied again
 * once it is written) and of the stale holders of their names.
 */

void
ngx_http_civchat_cache_install(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync)
{
    ngx_uint_t                   i;
    ngx_http_civchat_doc_t      *doc;
    ngx_http_civchat_cached_t   *c, keep;
    ngx_http_civchat_profile_t  *p;

    doc = sync->docs.elts;

    for (i = 0; i < sync->docs.nelts; i++) {

        p = ngx_http_civchat_cache_own(zone, &doc[i].id);
        keep.views = 0;
        keep.sessions = 0;

        if (p != NULL
            && ngx_http_civchat_cache_forget(zone, p, &doc[i], &keep)
               != NGX_OK)
        {
            continue;
        }

        if (doc[i].identity == NULL) {
            /* none, or merged: the cache has no copy now */
            continue;
        }

        if (ngx_http_civchat_cache_clear_names(zone, &doc[i]) != NGX_OK) {
            continue;
        }

        p = ngx_http_civchat_doc_install(zone, &doc[i]);
        if (p == NULL) {
            ngx_log_error(NGX_LOG_WARN, sync->log, 0,
                          "civchat zone \"%V\" cannot hold profile \"%V\" "
                          "read from Redis", &zone->name, &doc[i].id);
            continue;
        }

        c = ngx_http_civchat_cache_part(zone, p);
        if (c == NULL) {
            ngx_http_civchat_store_delete(zone, p);
            continue;
        }

        c->flags = 0;
        c->version = doc[i].version;
        c->gen = ngx_http_civchat_cache_sh(zone)->gen;

        if (keep.views || keep.sessions) {
            /* the old copy's counts, still to be written */
            c->views = keep.views;
            c->sessions = keep.sessions;
            ngx_http_civchat_cache_dirty_on(zone, c);
        }
    }
}


/*
 * The old copy of a document read, out.  Its page views and sessions
 * not written yet go to the new copy (in keep); changed attributes
 * not written yet keep it (the plan is applied again once they are);
 * when Redis has no document at all (erased) nothing is kept, a delta
 * has nowhere to go.  One made here and not written yet is kept.
 */

static ngx_int_t
ngx_http_civchat_cache_forget(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_doc_t *doc,
    ngx_http_civchat_cached_t *keep)
{
    ngx_http_civchat_cached_t  *c;

    c = ngx_http_civchat_cache_of(zone, p);

    if (c == NULL) {
        return ngx_http_civchat_cache_remove(zone, p);
    }

    if (c->flags & NGX_HTTP_CIVCHAT_CACHE_NEW) {
        return NGX_DECLINED;
    }

    if (doc->identity != NULL && (c->flags & NGX_HTTP_CIVCHAT_CACHE_DIRTY)) {

        if (c->names || (c->flags & (NGX_HTTP_CIVCHAT_CACHE_ALL
                                     |NGX_HTTP_CIVCHAT_CACHE_UA)))
        {
            c->flags |= NGX_HTTP_CIVCHAT_CACHE_STALE;
            return NGX_DECLINED;
        }

        keep->views = c->views;
        keep->sessions = c->sessions;

    } else if (doc->identity == NULL && doc->merged.len
               && (c->flags & NGX_HTTP_CIVCHAT_CACHE_DIRTY))
    {
        /* merged: its delta goes to the survivor when written */
        c->flags |= NGX_HTTP_CIVCHAT_CACHE_STALE;
        return NGX_DECLINED;
    }

    ngx_http_civchat_cache_dirty_off(zone, c);
    ngx_http_civchat_store_delete(zone, p);

    return NGX_OK;
}


/* the plan's writes were made: the cache's copies are Redis's now */

void
ngx_http_civchat_cache_commit(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync)
{
    ngx_uint_t                   i;
    ngx_http_civchat_write_t    *w;
    ngx_http_civchat_cached_t   *c;
    ngx_http_civchat_profile_t  *p;

    w = sync->writes.elts;

    for (i = 0; i < sync->writes.nelts; i++) {
        if (w[i].type != NGX_HTTP_CIVCHAT_WRITE_DOC) {
            continue;
        }

        p = ngx_http_civchat_cache_own(zone, &w[i].id);
        if (p == NULL) {
            continue;
        }

        c = ngx_http_civchat_cache_of(zone, p);
        if (c == NULL) {
            continue;
        }

        if ((c->flags & NGX_HTTP_CIVCHAT_CACHE_NEW) || c->version == w[i].base)
        {
            c->version = w[i].version;
            c->gen = ngx_http_civchat_cache_sh(zone)->gen;
            c->flags &= ~NGX_HTTP_CIVCHAT_CACHE_NEW;
        }
    }
}


/*
 * The plan's writes were refused (a conflict) or failed: what it did
 * to the cache is forgotten, the deltas its documents took are given
 * back but for the plan's own visit, and its profiles are read again.
 */

void
ngx_http_civchat_cache_undo(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync)
{
    ngx_uint_t                   i;
    ngx_http_civchat_write_t    *w;
    ngx_http_civchat_cached_t   *c;
    ngx_http_civchat_profile_t  *p;
    ngx_http_civchat_before_t   *b;

    w = sync->writes.elts;

    for (i = 0; i < sync->writes.nelts; i++) {
        if (w[i].type != NGX_HTTP_CIVCHAT_WRITE_DOC) {
            continue;
        }

        p = ngx_http_civchat_cache_own(zone, &w[i].id);
        c = (p != NULL) ? ngx_http_civchat_cache_of(zone, p) : NULL;

        if (c == NULL) {
            continue;
        }

        if (w[i].taken && (w[i].keep_views || w[i].keep_sessions)) {
            c->views += w[i].keep_views;
            c->sessions += w[i].keep_sessions;
            ngx_http_civchat_cache_dirty_on(zone, c);
        }

        if ((c->flags & NGX_HTTP_CIVCHAT_CACHE_NEW)
            && ngx_http_civchat_cache_find(&sync->before, &w[i].id) == NULL)
        {
            /* made by the plan: gone with it, its visit too */
            ngx_http_civchat_cache_dirty_off(zone, c);
            ngx_http_civchat_store_delete(zone, p);
            continue;
        }

        c->flags &= ~NGX_HTTP_CIVCHAT_CACHE_NEW;
        c->flags |= NGX_HTTP_CIVCHAT_CACHE_STALE;
    }

    b = sync->before.elts;

    for (i = 0; i < sync->before.nelts; i++) {
        p = ngx_http_civchat_cache_own(zone, &b[i].id);
        c = (p != NULL) ? ngx_http_civchat_cache_of(zone, p) : NULL;

        if (c != NULL) {
            c->flags &= ~NGX_HTTP_CIVCHAT_CACHE_NEW;
            c->flags |= NGX_HTTP_CIVCHAT_CACHE_STALE;
        }
    }

    /* the copies as they were before the plan, stale */
    ngx_http_civchat_cache_restore(zone, sync);

    /* every name is asked again: the stale copies are read again */

    for (i = 0; i < sync->nnames; i++) {
        sync->names[i].asked = 0;
    }
}
