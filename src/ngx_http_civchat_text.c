
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * A profile's attributes are kept as one compact JSON object, written
 * only by json.c.  A plan's changes are JSON text too, written the same
 * way, so applying them under the zone's lock is a walk over bytes: an
 * attribute changes when its text differs, and its profile_updated
 * event is made of the old and the new text.  No value is parsed while
 * the lock is held.
 */


/* the automatic attributes of a visit, in plan order */
#define NGX_HTTP_CIVCHAT_AUTOS           6


typedef struct {
    ngx_str_t                     quoted;
    ngx_uint_t                    fill;      /* only when not set yet */
} ngx_http_civchat_auto_t;


static u_char *ngx_http_civchat_text_skip(u_char *p, u_char *last);
static ngx_int_t ngx_http_civchat_text_changed(ngx_pool_t *pool,
    ngx_http_civchat_result_t *res, ngx_http_civchat_change_t *c,
    ngx_str_t *old, ngx_str_t *value);
static u_char *ngx_http_civchat_text_member(u_char *p, u_char *first,
    ngx_str_t *quoted, ngx_str_t *value);
static ngx_uint_t ngx_http_civchat_text_auto(ngx_str_t *quoted);
static ngx_str_t *ngx_http_civchat_text_auto_value(
    ngx_http_civchat_plan_t *plan, ngx_uint_t i);


static ngx_http_civchat_auto_t  ngx_http_civchat_autos[] = {
    { ngx_string("\"last_ip\""), 0 },
    { ngx_string("\"browser_language\""), 0 },
    { ngx_string("\"country\""), 1 },
    { ngx_string("\"region\""), 1 },
    { ngx_string("\"city\""), 1 },
    { ngx_string("\"timezone\""), 1 }
};


/*
 * The old attributes with the plan's changes and, on a visit, its
 * automatic values: *out is the new text (in pool), *changed whether it
 * differs, and every attribute whose value changed has its event.
 */

ngx_int_t
ngx_http_civchat_text_merge(ngx_str_t *old, ngx_http_civchat_plan_t *plan,
    ngx_str_t *out, ngx_pool_t *pool, ngx_http_civchat_result_t *res,
    ngx_uint_t *changed)
{
    u_char                     *p, *first, *pos, *last, *done;
    size_t                      size;
    ngx_str_t                   name, value;
    ngx_str_t                  *v;
    ngx_uint_t                  i, n, a;
    ngx_http_civchat_change_t  *c;

    *changed = 0;
    c = plan->changes.elts;
    n = plan->changes.nelts;

    size = old->len + 2;

    for (i = 0; i < n; i++) {
        size += c[i].quoted.len + c[i].value.len + 2;
    }

    for (a = 0; a < NGX_HTTP_CIVCHAT_AUTOS; a++) {
        v = ngx_http_civchat_text_auto_value(plan, a);

        if (v->len) {
            size += ngx_http_civchat_autos[a].quoted.len + 2
                    + ngx_http_civchat_json_quoted_len(v->data, v->len);
        }
    }

    out->data = ngx_pnalloc(pool, size + n + NGX_HTTP_CIVCHAT_AUTOS);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    /* which changes and automatic values were found among the old ones */
    done = out->data + size;
    ngx_memzero(done, n + NGX_HTTP_CIVCHAT_AUTOS);

    p = out->data;
    *p++ = '{';
    first = p;

    pos = old->data;
    last = old->data + old->len;

    while (ngx_http_civchat_text_next(&pos, last, &name, &value) == NGX_OK) {

        /* an automatic value is never added to a name the text has */
        a = ngx_http_civchat_text_auto(&name);

        if (a < NGX_HTTP_CIVCHAT_AUTOS) {
            done[n + a] = 1;
        }

        for (i = 0; i < n; i++) {
            if (!done[i] && c[i].quoted.len == name.len
                && ngx_memcmp(c[i].quoted.data, name.data, name.len) == 0)
            {
                break;
            }
        }

        if (i < n) {
            done[i] = 1;

            if (c[i].value.len == value.len
                && ngx_memcmp(c[i].value.data, value.data, value.len) == 0)
            {
                p = ngx_http_civchat_text_member(p, first, &name, &value);
                continue;
            }

            *changed = 1;

            if (ngx_http_civchat_text_changed(pool, res, &c[i], &value,
                                              &c[i].value)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            if (c[i].value.len) {
                p = ngx_http_civchat_text_member(p, first, &name,
                                                 &c[i].value);
            }

            continue;
        }

        if (a < NGX_HTTP_CIVCHAT_AUTOS) {
            v = ngx_http_civchat_text_auto_value(plan, a);

            if (v->len && !ngx_http_civchat_autos[a].fill
                && (value.len != v->len + 2
                    || ngx_memcmp(value.data + 1, v->data, v->len) != 0))
            {
                /* a new address or language: no event, by design */
                *changed = 1;
                p = ngx_http_civchat_text_member(p, first, &name, NULL);
                p = ngx_http_civchat_json_quote(p, v->data, v->len);
                continue;
            }
        }

        p = ngx_http_civchat_text_member(p, first, &name, &value);
    }

    /* what is new comes last, in the order it was sent */

    for (i = 0; i < n; i++) {
        if (done[i] || c[i].value.len == 0) {
            continue;
        }

        /* the site's own value of a geo attribute wins over GeoIP's */
        a = ngx_http_civchat_text_auto(&c[i].quoted);

        if (a < NGX_HTTP_CIVCHAT_AUTOS) {
            done[n + a] = 1;
        }

        *changed = 1;

        if (ngx_http_civchat_text_changed(pool, res, &c[i], NULL,
                                          &c[i].value)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = ngx_http_civchat_text_member(p, first, &c[i].quoted,
                                         &c[i].value);
    }

    for (a = 0; a < NGX_HTTP_CIVCHAT_AUTOS; a++) {
        v = ngx_http_civchat_text_auto_value(plan, a);

        if (done[n + a] || v->len == 0) {
            continue;
        }

        *changed = 1;
        p = ngx_http_civchat_text_member(p, first,
                                         &ngx_http_civchat_autos[a].quoted,
                                         NULL);
        p = ngx_http_civchat_json_quote(p, v->data, v->len);
    }

    *p++ = '}';
    out->len = p - out->data;

    return NGX_OK;
}


/* which automatic value a name (as JSON) is, or NGX_HTTP_CIVCHAT_AUTOS */

static ngx_uint_t
ngx_http_civchat_text_auto(ngx_str_t *quoted)
{
    ngx_uint_t  a;

    for (a = 0; a < NGX_HTTP_CIVCHAT_AUTOS; a++) {
        if (ngx_http_civchat_autos[a].quoted.len == quoted->len
            && ngx_memcmp(ngx_http_civchat_autos[a].quoted.data,
                          quoted->data, quoted->len) == 0)
        {
            break;
        }
    }

    return a;
}


static ngx_str_t *
ngx_http_civchat_text_auto_value(ngx_http_civchat_plan_t *plan,
    ngx_uint_t i)
{
    switch (i) {

    case 0:
        return &plan->ip;

    case 1:
        return &plan->language;

    case 2:
        return &plan->geo.country;

    case 3:
        return &plan->geo.region;

    case 4:
        return &plan->geo.city;

    default:
        return &plan->geo.timezone;
    }
}


/* ,"name":value (the comma unless first); value NULL: up to the ':' */

static u_char *
ngx_http_civchat_text_member(u_char *p, u_char *first, ngx_str_t *quoted,
    ngx_str_t *value)
{
    if (p != first) {
        *p++ = ',';
    }

    p = ngx_cpymem(p, quoted->data, quoted->len);
    *p++ = ':';

    if (value != NULL) {
        p = ngx_cpymem(p, value->data, value->len);
    }

    return p;
}


/* profile_updated {"old": OLD, "new": NEW}; no value is null */

static ngx_int_t
ngx_http_civchat_text_changed(ngx_pool_t *pool,
    ngx_http_civchat_result_t *res, ngx_http_civchat_change_t *c,
    ngx_str_t *old, ngx_str_t *value)
{
    u_char     *p;
    ngx_str_t   attrs;

    attrs.data = ngx_pnalloc(pool, sizeof("{\"old\":null,\"new\":null}")
                                   + (old ? old->len : 0) + value->len);
    if (attrs.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(attrs.data, "{\"old\":", sizeof("{\"old\":") - 1);
    p = old ? ngx_cpymem(p, old->data, old->len) : ngx_cpymem(p, "null", 4);
    p = ngx_cpymem(p, ",\"new\":", sizeof(",\"new\":") - 1);
    p = value->len ? ngx_cpymem(p, value->data, value->len)
                   : ngx_cpymem(p, "null", 4);
    *p++ = '}';

    attrs.len = p - attrs.data;

    return ngx_http_civchat_add_event(pool, res->events,
                                      NGX_HTTP_CIVCHAT_EV_PROFILE_UPDATED,
                                      &c->name, &attrs);
}


/* into's members, then those of from whose names into has not */

ngx_int_t
ngx_http_civchat_text_missing(ngx_str_t *into, ngx_str_t *from,
    ngx_str_t *out, ngx_pool_t *pool)
{
    u_char     *p, *first, *pos, *last;
    ngx_str_t   name, value, found;

    out->data = ngx_pnalloc(pool, into->len + from->len + 2);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = out->data;
    *p++ = '{';
    first = p;

    pos = into->data;
    last = into->data + into->len;

    while (ngx_http_civchat_text_next(&pos, last, &name, &value) == NGX_OK) {
        p = ngx_http_civchat_text_member(p, first, &name, &value);
    }

    pos = from->data;
    last = from->data + from->len;

    while (ngx_http_civchat_text_next(&pos, last, &name, &value) == NGX_OK) {
        ngx_http_civchat_text_find(into, (char *) name.data, name.len,
                                   &found);

        if (found.data == NULL) {
            p = ngx_http_civchat_text_member(p, first, &name, &value);
        }
    }

    *p++ = '}';
    out->len = p - out->data;

    return NGX_OK;
}


/* the value of the member named by "quoted" (the name as JSON), or none */

void
ngx_http_civchat_text_find(ngx_str_t *text, const char *quoted, size_t len,
    ngx_str_t *value)
{
    u_char     *pos, *last;
    ngx_str_t   name;

    pos = text->data;
    last = text->data + text->len;

    while (ngx_http_civchat_text_next(&pos, last, &name, value) == NGX_OK) {
        if (name.len == len && ngx_memcmp(name.data, quoted, len) == 0) {
            return;
        }
    }

    ngx_str_null(value);
}


/*
 * The next member of an object's text: *pos is at its '{' or after the
 * previous member.  NGX_DONE at the end.
 */

/*
 * The next member of an object's text: its name as JSON (quoted) and
 * its value's text; NGX_DONE after the last.
 */

ngx_int_t
ngx_http_civchat_text_next(u_char **pos, u_char *last, ngx_str_t *name,
    ngx_str_t *value)
{
    u_char  *p, *q;

    p = *pos;

    if (p < last && (*p == '{' || *p == ',')) {
        p++;
    }

    if (p >= last || *p != '"') {
        return NGX_DONE;
    }

    q = ngx_http_civchat_text_skip(p, last);

    name->data = p;
    name->len = q - p;

    if (q >= last || *q != ':') {
        return NGX_DONE;
    }

    p = q + 1;
    q = ngx_http_civchat_text_skip(p, last);

    value->data = p;
    value->len = q - p;

    *pos = q;

    return (value->len && name->len > 1) ? NGX_OK : NGX_DONE;
}


/* past one JSON value (a string, number, literal, object or array) */

static u_char *
ngx_http_civchat_text_skip(u_char *p, u_char *last)
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
            if (depth == 0) {
                /* the end of the enclosing object */
                return p;
            }

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

    return (p > last) ? last : p;
}


/* a skipped field of the request: {"name", "reason"} in its answer */

ngx_int_t
ngx_http_civchat_ignore(ngx_pool_t *pool, ngx_array_t *ignored,
    const char *name, size_t len, const char *reason)
{
    ngx_http_civchat_ignored_t  *ig;

    ig = ngx_array_push(ignored);
    if (ig == NULL) {
        return NGX_ERROR;
    }

    ig->name.data = ngx_pnalloc(pool, len);
    if (ig->name.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ig->name.data, name, len);
    ig->name.len = len;
    ig->reason = reason;

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_add_event(ngx_pool_t *pool, ngx_array_t *events,
    ngx_uint_t type, ngx_str_t *name, ngx_str_t *attrs)
{
    ngx_http_civchat_event_t  *ev;

    ev = ngx_array_push(events);
    if (ev == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(ev, sizeof(ngx_http_civchat_event_t));

    ev->type = type;

    if (name != NULL) {
        ev->name = *name;
    }

    if (attrs != NULL && attrs->len) {
        ev->attrs = *attrs;

    } else {
        ngx_str_set(&ev->attrs, "{}");
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_add_event_json(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_uint_t type, ngx_str_t *name,
    json_t *attrs)
{
    ngx_str_t  text;

    ngx_str_null(&text);

    if (attrs != NULL
        && ngx_http_civchat_json_text(r->pool, attrs, &text) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_civchat_add_event(r->pool, &ctx->events, type, name,
                                      &text);
}
