
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_cluster.h"


/*
 * A profile as a Redis document (the hash p:{KEY}, cluster.h) and back:
 * its identity is the first members of its state file line (state.c),
 * its counters are fields of their own (a delta adds to them), and so
 * is each attribute, named by its name as JSON ("a:\"plan\""), so that
 * two hosts changing two attributes of one profile both keep theirs.
 */


static ngx_int_t ngx_http_civchat_doc_push(ngx_array_t *fields,
    ngx_pool_t *pool, const char *name, ngx_str_t *value);
static ngx_int_t ngx_http_civchat_doc_number(ngx_array_t *fields,
    ngx_pool_t *pool, const char *name, uint64_t n);
static ngx_int_t ngx_http_civchat_doc_attrs(ngx_array_t *fields,
    ngx_pool_t *pool, ngx_http_civchat_profile_t *p);
static ngx_int_t ngx_http_civchat_doc_attrs_text(ngx_pool_t *pool,
    ngx_http_civchat_redis_reply_t *r, ngx_str_t *text);
static void ngx_http_civchat_doc_cleanup(void *data);
static ngx_int_t ngx_http_civchat_doc_listed(json_t *list, ngx_str_t *value);
static ngx_int_t ngx_http_civchat_doc_name(ngx_array_t *names,
    ngx_pool_t *pool, u_char kind, ngx_http_civchat_index_t *ix,
    ngx_uint_t own);


/* "civchat:ZONE:p:{ID}", and "civchat:ZONE:i:{K:VALUE}" of an index */

ngx_int_t
ngx_http_civchat_doc_key(ngx_pool_t *pool, ngx_http_civchat_cluster_t *cl,
    u_char kind, ngx_str_t *value, ngx_str_t *key)
{
    u_char  *p;

    key->len = cl->prefix.len + sizeof("i:{k:}") - 1 + value->len;
    key->data = ngx_pnalloc(pool, key->len);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(key->data, cl->prefix.data, cl->prefix.len);

    if (kind == 'p') {
        p = ngx_cpymem(p, "p:{", 3);

    } else {
        *p++ = 'i';
        *p++ = ':';
        *p++ = '{';
        *p++ = kind;
        *p++ = ':';
    }

    p = ngx_cpymem(p, value->data, value->len);
    *p++ = '}';

    key->len = p - key->data;

    return NGX_OK;
}


/*
 * A whole document's fields, name and value by turn (the write script's
 * arguments), of a profile in the zone, under the lock.
 */

ngx_int_t
ngx_http_civchat_doc_fields(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_pool_t *pool, ngx_array_t *fields)
{
    u_char     *last;
    ngx_str_t   id, ua;

    id.data = ngx_pnalloc(pool, ngx_http_civchat_state_identity_size(p) + 1);
    if (id.data == NULL) {
        return NGX_ERROR;
    }

    last = ngx_http_civchat_state_identity(id.data, p);
    *last++ = '}';
    id.len = last - id.data;

    ngx_http_civchat_store_ua(zone, p, &ua);

    if (ngx_http_civchat_doc_push(fields, pool, "id", &id) != NGX_OK
        || ngx_http_civchat_doc_number(fields, pool, "fs", p->first_seen)
           != NGX_OK
        || ngx_http_civchat_doc_number(fields, pool, "ls", p->last_seen)
           != NGX_OK
        || ngx_http_civchat_doc_number(fields, pool, "pv", p->page_views)
           != NGX_OK
        || ngx_http_civchat_doc_number(fields, pool, "ss", p->sessions)
           != NGX_OK
        || (ua.len
            && ngx_http_civchat_doc_push(fields, pool, "ua", &ua) != NGX_OK))
    {
        return NGX_ERROR;
    }

    return ngx_http_civchat_doc_attrs(fields, pool, p);
}


/* every attribute: "a:" and its name as JSON, its value as JSON */

static ngx_int_t
ngx_http_civchat_doc_attrs(ngx_array_t *fields, ngx_pool_t *pool,
    ngx_http_civchat_profile_t *p)
{
    u_char     *pos, *last;
    ngx_str_t   name, value, *f;

    pos = ngx_http_civchat_profile_attrs(p);
    last = pos + p->attrs_len;

    while (ngx_http_civchat_text_next(&pos, last, &name, &value) == NGX_OK) {

        f = ngx_array_push_n(fields, 2);
        if (f == NULL) {
            return NGX_ERROR;
        }

        f[0].len = 2 + name.len;
        f[0].data = ngx_pnalloc(pool, f[0].len);
        if (f[0].data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(ngx_cpymem(f[0].data, "a:", 2), name.data, name.len);

        f[1].data = ngx_pstrdup(pool, &value);
        if (f[1].data == NULL) {
            return NGX_ERROR;
        }

        f[1].len = value.len;
    }

    return NGX_OK;
}


/*
 * A profile's delta, the delta script's arguments after its first four:
 * page views and sessions to add, last and first seen, the User-Agent
 * ("=" and it, or empty: unchanged), then the count and the names and
 * values of the attributes it set, then the count and names of those it
 * removed.
 */

ngx_int_t
ngx_http_civchat_doc_delta(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_cached_t *c,
    ngx_pool_t *pool, ngx_array_t *fields)
{
    u_char       *name, *end;
    ngx_str_t     ua, quoted, value, *f;
    ngx_uint_t    i;
    ngx_array_t   set, removed;

    if (ngx_array_init(&set, pool, 8, sizeof(ngx_str_t)) != NGX_OK
        || ngx_array_init(&removed, pool, 4, sizeof(ngx_str_t)) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_null(&ua);

    if (c->flags & NGX_HTTP_CIVCHAT_CACHE_UA) {
        ngx_http_civchat_store_ua(zone, p, &value);

        ua.len = 1 + value.len;
        ua.data = ngx_pnalloc(pool, ua.len);
        if (ua.data == NULL) {
            return NGX_ERROR;
        }

        *ua.data = '=';
        ngx_memcpy(ua.data + 1, value.data, value.len);
    }

    if (c->flags & NGX_HTTP_CIVCHAT_CACHE_ALL) {
        /* the list of names overflowed: every attribute it has */

        name = ngx_http_civchat_profile_attrs(p);
        end = name + p->attrs_len;

        while (ngx_http_civchat_text_next(&name, end, &quoted, &value)
               == NGX_OK)
        {
            f = ngx_array_push_n(&set, 2);
            if (f == NULL) {
                return NGX_ERROR;
            }

            f[0] = quoted;
            f[1] = value;
        }

        end = NULL;
        name = NULL;

    } else {
        name = c->names ? ngx_http_civchat_cache_ptr(zone, c->names) : NULL;
        end = (name != NULL) ? name + c->names_len : NULL;
    }

    for ( /* void */ ; name != NULL && name < end; name += quoted.len + 1) {
        quoted.data = name;
        quoted.len = ngx_strlen(name);

        value.data = ngx_http_civchat_profile_attrs(p);
        value.len = p->attrs_len;

        ngx_http_civchat_text_find(&value, (char *) quoted.data, quoted.len,
                                   &value);

        f = (value.len == 0) ? ngx_array_push(&removed)
                             : ngx_array_push_n(&set, 2);
        if (f == NULL) {
            return NGX_ERROR;
        }

        f[0] = quoted;

        if (value.len) {
            f[1] = value;
        }
    }

    if (ngx_http_civchat_doc_number(fields, pool, NULL, c->views) != NGX_OK
        || ngx_http_civchat_doc_number(fields, pool, NULL, c->sessions)
           != NGX_OK
        || ngx_http_civchat_doc_number(fields, pool, NULL, p->last_seen)
           != NGX_OK
        || ngx_http_civchat_doc_number(fields, pool, NULL, p->first_seen)
           != NGX_OK
        || ngx_http_civchat_doc_push(fields, pool, NULL, &ua) != NGX_OK
        || ngx_http_civchat_doc_number(fields, pool, NULL, set.nelts / 2)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    f = set.elts;

    for (i = 0; i < set.nelts; i++) {
        if (ngx_http_civchat_doc_push(fields, pool, NULL, &f[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (ngx_http_civchat_doc_number(fields, pool, NULL, removed.nelts)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    f = removed.elts;

    for (i = 0; i < removed.nelts; i++) {
        if (ngx_http_civchat_doc_push(fields, pool, NULL, &f[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* a field's name (unless NULL) and value, copied */

static ngx_int_t
ngx_http_civchat_doc_push(ngx_array_t *fields, ngx_pool_t *pool,
    const char *name, ngx_str_t *value)
{
    ngx_str_t  *f;

    f = ngx_array_push_n(fields, name ? 2 : 1);
    if (f == NULL) {
        return NGX_ERROR;
    }

    if (name) {
        f->data = (u_char *) name;
        f->len = ngx_strlen(name);
        f++;
    }

    f->len = value->len;
    f->data = value->len ? ngx_pnalloc(pool, value->len) : (u_char *) "";

    if (f->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(f->data, value->data, value->len);

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_doc_number(ngx_array_t *fields, ngx_pool_t *pool,
    const char *name, uint64_t n)
{
    u_char     buf[NGX_INT64_LEN];
    ngx_str_t  value;

    value.data = buf;
    value.len = ngx_sprintf(buf, "%uL", n) - buf;

    return ngx_http_civchat_doc_push(fields, pool, name, &value);
}


/*
 * A document as HGETALL gave it, read outside the lock: no fields is no
 * document (version 0); a tombstone names its survivor.
 */

ngx_int_t
ngx_http_civchat_doc_parse(ngx_pool_t *pool, ngx_str_t *id,
    ngx_http_civchat_redis_reply_t *r, ngx_http_civchat_doc_t *doc)
{
    ngx_str_t                        *name, *value;
    ngx_uint_t                        i;
    ngx_http_civchat_redis_reply_t   *v;
    json_error_t                      err;
    ngx_pool_cleanup_t               *cln;
    ngx_http_civchat_redis_reply_t   *e;

    ngx_memzero(doc, sizeof(ngx_http_civchat_doc_t));

    doc->id = *id;

    if (r->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY || r->nelts % 2) {
        return NGX_ERROR;
    }

    e = r->elts;

    for (i = 0; i < r->nelts; i += 2) {
        name = &e[i].str;
        v = &e[i + 1];
        value = &v->str;

        if (name->len == 1 && name->data[0] == 'v') {
            doc->version = ngx_http_civchat_doc_uint(v);

        } else if (name->len == 2 && name->data[0] == 'i'
                   && name->data[1] == 'd')
        {
            doc->identity_text = *value;

        } else if (name->len == 2 && ngx_strncmp(name->data, "fs", 2) == 0) {
            doc->first_seen = (uint32_t) ngx_http_civchat_doc_uint(v);

        } else if (name->len == 2 && ngx_strncmp(name->data, "ls", 2) == 0) {
            doc->last_seen = (uint32_t) ngx_http_civchat_doc_uint(v);

        } else if (name->len == 2 && ngx_strncmp(name->data, "pv", 2) == 0) {
            doc->page_views = (uint32_t) ngx_http_civchat_doc_uint(v);

        } else if (name->len == 2 && ngx_strncmp(name->data, "ss", 2) == 0) {
            doc->sessions = (uint32_t) ngx_http_civchat_doc_uint(v);

        } else if (name->len == 2 && ngx_strncmp(name->data, "ua", 2) == 0) {
            doc->ua = *value;

        } else if (name->len == 6
                   && ngx_strncmp(name->data, "merged", 6) == 0)
        {
            doc->merged = *value;
        }
    }

    if (doc->version == 0 || doc->merged.len) {
        return NGX_OK;
    }

    doc->identity = json_loadb((char *) doc->identity_text.data,
                               doc->identity_text.len, 0, &err);

    if (!json_is_object(doc->identity)) {
        json_decref(doc->identity);
        doc->identity = NULL;
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        json_decref(doc->identity);
        doc->identity = NULL;
        return NGX_ERROR;
    }

    cln->handler = ngx_http_civchat_doc_cleanup;
    cln->data = doc->identity;

    return ngx_http_civchat_doc_attrs_text(pool, r, &doc->attrs);
}


/* the attributes' fields back into one object's text */

static ngx_int_t
ngx_http_civchat_doc_attrs_text(ngx_pool_t *pool,
    ngx_http_civchat_redis_reply_t *r, ngx_str_t *text)
{
    u_char                          *p;
    size_t                           size;
    ngx_uint_t                       i;
    ngx_http_civchat_redis_reply_t  *e;

    e = r->elts;
    size = 2;

    for (i = 0; i < r->nelts; i += 2) {
        if (e[i].str.len > 2 && e[i].str.data[0] == 'a'
            && e[i].str.data[1] == ':')
        {
            size += e[i].str.len - 2 + 1 + e[i + 1].str.len + 1;
        }
    }

    if (size == 2) {
        ngx_str_null(text);
        return NGX_OK;
    }

    text->data = ngx_pnalloc(pool, size);
    if (text->data == NULL) {
        return NGX_ERROR;
    }

    p = text->data;
    *p++ = '{';

    for (i = 0; i < r->nelts; i += 2) {
        if (e[i].str.len > 2 && e[i].str.data[0] == 'a'
            && e[i].str.data[1] == ':')
        {
            if (p > text->data + 1) {
                *p++ = ',';
            }

            p = ngx_cpymem(p, e[i].str.data + 2, e[i].str.len - 2);
            *p++ = ':';
            p = ngx_cpymem(p, e[i + 1].str.data, e[i + 1].str.len);
        }
    }

    *p++ = '}';
    text->len = p - text->data;

    return NGX_OK;
}


/* a number Redis answered, as an integer or as a string's digits */

uint64_t
ngx_http_civchat_doc_uint(ngx_http_civchat_redis_reply_t *r)
{
    size_t    i;
    uint64_t  n;

    if (r->type == NGX_HTTP_CIVCHAT_REDIS_INTEGER) {
        return (r->integer > 0) ? (uint64_t) r->integer : 0;
    }

    if (r->type != NGX_HTTP_CIVCHAT_REDIS_STRING) {
        return 0;
    }

    n = 0;

    for (i = 0; i < r->str.len && i < 19; i++) {
        if (r->str.data[i] < '0' || r->str.data[i] > '9') {
            return 0;
        }

        n = n * 10 + (r->str.data[i] - '0');
    }

    return n;
}


static void
ngx_http_civchat_doc_cleanup(void *data)
{
    json_decref(data);
}


/* whether a document's identity holds a name (its index may be stale) */

ngx_int_t
ngx_http_civchat_doc_holds(ngx_http_civchat_doc_t *doc,
    ngx_http_civchat_name_t *name)
{
    json_t      *v;
    const char  *field;

    if (doc->identity == NULL) {
        return 0;
    }

    switch (name->kind) {

    case NGX_HTTP_CIVCHAT_BY_USER_ID:
        field = "user_id";
        break;

    case NGX_HTTP_CIVCHAT_BY_EMAIL:
        field = "email";
        break;

    default:
        field = "key";
        break;
    }

    v = json_object_get(doc->identity, field);

    if (json_is_string(v) && json_string_length(v) == name->value.len
        && ngx_memcmp(json_string_value(v), name->value.data,
                      name->value.len) == 0)
    {
        return 1;
    }

    if (name->kind != NGX_HTTP_CIVCHAT_BY_KEY) {
        return 0;
    }

    return ngx_http_civchat_doc_listed(json_object_get(doc->identity,
                                                       "aliases"),
                                       &name->value)
           || ngx_http_civchat_doc_listed(json_object_get(doc->identity,
                                                          "unproved"),
                                          &name->value)
           || ngx_http_civchat_doc_listed(json_object_get(doc->identity,
                                                          "retired"),
                                          &name->value);
}


static ngx_int_t
ngx_http_civchat_doc_listed(json_t *list, ngx_str_t *value)
{
    size_t   i;
    json_t  *v;

    json_array_foreach(list, i, v) {
        if (json_is_string(v) && json_string_length(v) == value->len
            && ngx_memcmp(json_string_value(v), value->data, value->len)
               == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * A document put in the zone, under the lock, as a new profile (the
 * caller has removed any old copy): NULL when the zone cannot hold it.
 */

ngx_http_civchat_profile_t *
ngx_http_civchat_doc_install(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_doc_t *doc)
{
    ngx_http_civchat_profile_t  *p;

    p = ngx_http_civchat_state_install(zone, doc->identity);
    if (p == NULL) {
        return NULL;
    }

    p->first_seen = doc->first_seen;
    p->last_seen = doc->last_seen;
    p->page_views = doc->page_views;
    p->sessions = doc->sessions;

    if (doc->ua.len) {
        (void) ngx_http_civchat_store_set_ua(zone, p, &doc->ua);
    }

    if (doc->attrs.len
        && ngx_http_civchat_store_set_attrs(zone, p, doc->attrs.data,
                                            doc->attrs.len)
           != NGX_OK)
    {
        ngx_http_civchat_store_delete(zone, p);
        return NULL;
    }

    return p;
}


/*
 * A profile's names, copied: its own key, its other keys (with their
 * flags), its user_id and email (with theirs).
 */

ngx_int_t
ngx_http_civchat_doc_names(ngx_http_civchat_profile_t *p, ngx_pool_t *pool,
    ngx_array_t *names)
{
    ngx_queue_t               *q;
    ngx_http_civchat_alias_t  *a;

    if (ngx_array_init(names, pool, 4, sizeof(ngx_http_civchat_name_t))
        != NGX_OK
        || ngx_http_civchat_doc_name(names, pool, NGX_HTTP_CIVCHAT_BY_KEY,
                                     &p->key, 1)
           != NGX_OK
        || ngx_http_civchat_doc_name(names, pool,
                                     NGX_HTTP_CIVCHAT_BY_USER_ID,
                                     &p->user_id, 0)
           != NGX_OK
        || ngx_http_civchat_doc_name(names, pool, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                     &p->email, 0)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (q = ngx_queue_head(&p->aliases);
         q != ngx_queue_sentinel(&p->aliases);
         q = ngx_queue_next(q))
    {
        a = ngx_queue_data(q, ngx_http_civchat_alias_t, queue);

        if (ngx_http_civchat_doc_name(names, pool, NGX_HTTP_CIVCHAT_BY_KEY,
                                      &a->index, 0)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_doc_name(ngx_array_t *names, ngx_pool_t *pool, u_char kind,
    ngx_http_civchat_index_t *ix, ngx_uint_t own)
{
    ngx_http_civchat_name_t  *n;

    if (ix->len == 0) {
        return NGX_OK;
    }

    n = ngx_array_push(names);
    if (n == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(n, sizeof(ngx_http_civchat_name_t));

    n->kind = kind;
    n->flags = ix->flags;
    n->own = own;
    n->value.len = ix->len;
    n->value.data = ngx_pnalloc(pool, ix->len);

    if (n->value.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(n->value.data, ix->data, ix->len);

    return NGX_OK;
}
