
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_rules.h"


/*
 * A browser's session of a profile and the profile's identity fields,
 * for the identity rules (rules.c), under the zone's lock: a new
 * profile, a switch, a new key for the browser and the old one retired,
 * a merge, a user_id or email set, proved or taken from a claimer, and
 * the events that tell the store.
 */


/*
 * A new profile.  "adopt" takes the browser's well-formed key that the
 * zone has never known, so that identity survives a lost zone and
 * User.com's cookies keep working; otherwise the fresh key.  A key from
 * an e-mail link is only noted on its user_created event.
 */

ngx_http_civchat_profile_t *
ngx_http_civchat_session_create(ngx_http_civchat_rules_t *rc, ngx_uint_t adopt)
{
    u_char                      *p;
    ngx_str_t                    key, attrs;
    ngx_http_civchat_plan_t     *plan;
    ngx_http_civchat_profile_t  *pr;

    plan = rc->plan;

    if (adopt && plan->key.len && !rc->known && !rc->keyed) {
        key = plan->key;

    } else {
        key.data = plan->fresh;
        key.len = NGX_HTTP_CIVCHAT_KEY_LEN;
        rc->keyed = 1;
    }

    pr = ngx_http_civchat_store_create(rc->zone, &key, plan->now);
    if (pr == NULL) {
        return NULL;
    }

    rc->session = &pr->key;
    rc->proved = 1;
    rc->res->user.created = 1;

    ngx_str_null(&attrs);

    if (plan->link_key.len) {
        attrs.data = ngx_pnalloc(rc->res->pool,
                                 sizeof("{\"link_key\":\"\"}")
                                 + plan->link_key.len);
        if (attrs.data == NULL) {
            return NULL;
        }

        p = ngx_sprintf(attrs.data, "{\"link_key\":\"%V\"}", &plan->link_key);
        attrs.len = p - attrs.data;
    }

    if (ngx_http_civchat_add_event(rc->res->pool, rc->res->events,
                                   NGX_HTTP_CIVCHAT_EV_USER_CREATED, NULL,
                                   &attrs)
        != NGX_OK)
    {
        return NULL;
    }

    return pr;
}


/* the browser leaves K for X: user_identified (from K) */

ngx_int_t
ngx_http_civchat_session_switch(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, ngx_uint_t proved)
{
    ngx_str_t  from;

    ngx_str_null(&from);

    if (rc->k != NULL
        && ngx_http_civchat_index_copy(rc->res->pool, &rc->k->key, &from)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_civchat_session_leave(rc);

    if (ngx_http_civchat_session_give(rc, x,
                                    proved ? 0 : NGX_HTTP_CIVCHAT_KEY_UNPROVED)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc->p = x;
    rc->proved = proved;

    ngx_http_civchat_store_touch(rc->zone, x);

    return ngx_http_civchat_session_event(rc,
                                        NGX_HTTP_CIVCHAT_EV_USER_IDENTIFIED,
                                        NULL, from.len ? "from" : NULL,
                                        &from);
}


/* K gained an identity: the browser gets a new key, as proved as before */

ngx_int_t
ngx_http_civchat_session_rotate(ngx_http_civchat_rules_t *rc)
{
    u_char  flags;

    if (rc->keyed || rc->session == NULL) {
        return NGX_OK;
    }

    flags = rc->proved ? 0 : NGX_HTTP_CIVCHAT_KEY_UNPROVED;

    ngx_http_civchat_session_leave(rc);

    return ngx_http_civchat_session_give(rc, rc->p, flags);
}


/*
 * The browser proves the identity of its own profile: the identity is
 * verified, every other session of the profile ends (they may have
 * been got by a mere claim), and the browser gets a proved key.
 */

ngx_int_t
ngx_http_civchat_session_prove(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, u_char kind)
{
    ngx_http_civchat_index_t  *ix;

    ix = ngx_http_civchat_rules_index(x, kind);

    if (!(ix->flags & NGX_HTTP_CIVCHAT_ID_VERIFIED)) {
        ix->flags |= NGX_HTTP_CIVCHAT_ID_VERIFIED;

        /* the browser's key too; retired keys past the limit are freed */
        ngx_http_civchat_store_revoke(rc->zone, x, NULL);
        rc->kix = NULL;
        rc->session = NULL;
        rc->zone->sh->changes++;

    } else {
        ngx_http_civchat_session_leave(rc);
    }

    rc->proved = 1;

    return ngx_http_civchat_session_give(rc, x, 0);
}


/* the browser's key will not resolve again */

void
ngx_http_civchat_session_leave(ngx_http_civchat_rules_t *rc)
{
    ngx_http_civchat_profile_t  *owner;

    if (rc->kix == NULL || (rc->kix->flags & NGX_HTTP_CIVCHAT_KEY_RETIRED)) {
        return;
    }

    owner = ngx_http_civchat_store_owner(rc->zone, rc->kix);

    if (rc->session == rc->kix) {
        rc->session = NULL;
    }

    /* a retired key past the profile's limit is freed at once */
    ngx_http_civchat_store_retire(rc->zone, owner, rc->kix);
    rc->kix = NULL;
}


/* the fresh key becomes the browser's session of p */

ngx_int_t
ngx_http_civchat_session_give(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *p, u_char flags)
{
    ngx_str_t  key;

    if (rc->keyed) {
        return NGX_OK;
    }

    key.data = rc->plan->fresh;
    key.len = NGX_HTTP_CIVCHAT_KEY_LEN;

    if (ngx_http_civchat_store_add_key(rc->zone, p, &key, flags) != NGX_OK) {
        return NGX_ERROR;
    }

    rc->keyed = 1;
    rc->session = ngx_http_civchat_store_index(rc->zone,
                                               NGX_HTTP_CIVCHAT_BY_KEY, &key);

    return NGX_OK;
}


/*
 * An anonymous K merged into X: X keeps its own values and gains the
 * ones only K had; K's key is retired in X; user_merged (from K).
 */

ngx_int_t
ngx_http_civchat_session_merge(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *into)
{
    ngx_str_t  name, fa, ia, text;

    if (ngx_http_civchat_index_copy(rc->res->pool, &from->key, &name)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (from->attrs_len > 2) {
        fa.data = ngx_http_civchat_profile_attrs(from);
        fa.len = from->attrs_len;
        ia.data = ngx_http_civchat_profile_attrs(into);
        ia.len = into->attrs_len;

        if (ngx_http_civchat_text_missing(&ia, &fa, &text, rc->res->pool)
            != NGX_OK
            || ngx_http_civchat_store_set_attrs(rc->zone, into, text.data,
                                                text.len)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /* K's key now lives on retired in X: the browser is not K any more */
    rc->kix = NULL;
    rc->k = NULL;
    rc->session = NULL;

    ngx_http_civchat_live_forget(rc->zone, &name);
    ngx_http_civchat_store_merge(rc->zone, from, into);

    return ngx_http_civchat_session_event(rc, NGX_HTTP_CIVCHAT_EV_USER_MERGED,
                                        &name, "from", &name);
}


/*
 * user_id or email of a profile, verified or a claim; profile_updated
 * {"old", "new"} when the value changes.
 */

ngx_int_t
ngx_http_civchat_session_set(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *p, u_char kind, ngx_str_t *value,
    ngx_uint_t verified)
{
    u_char                    *q;
    ngx_str_t                  name, attrs, old;
    ngx_http_civchat_index_t  *ix;

    ix = ngx_http_civchat_rules_index(p, kind);

    if (ngx_http_civchat_index_is(ix, value)) {
        if (verified) {
            ix->flags |= NGX_HTTP_CIVCHAT_ID_VERIFIED;
        }

        return NGX_OK;
    }

    if (kind == NGX_HTTP_CIVCHAT_BY_USER_ID) {
        ngx_str_set(&name, "user_id");

    } else {
        ngx_str_set(&name, "email");
    }

    if (ngx_http_civchat_index_copy(rc->res->pool, ix, &old) != NGX_OK) {
        return NGX_ERROR;
    }

    attrs.data = ngx_pnalloc(rc->res->pool,
                             sizeof("{\"old\":null,\"new\":}")
                             + ngx_http_civchat_json_quoted_len(old.data,
                                                                old.len)
                             + ngx_http_civchat_json_quoted_len(value->data,
                                                                value->len));
    if (attrs.data == NULL) {
        return NGX_ERROR;
    }

    q = ngx_cpymem(attrs.data, "{\"old\":", sizeof("{\"old\":") - 1);
    q = old.len ? ngx_http_civchat_json_quote(q, old.data, old.len)
                : ngx_cpymem(q, "null", 4);
    q = ngx_cpymem(q, ",\"new\":", sizeof(",\"new\":") - 1);
    q = ngx_http_civchat_json_quote(q, value->data, value->len);
    *q++ = '}';
    attrs.len = q - attrs.data;

    if (ngx_http_civchat_store_set_index(rc->zone, p, kind, value) != NGX_OK) {
        return NGX_ERROR;
    }

    if (verified) {
        ix->flags |= NGX_HTTP_CIVCHAT_ID_VERIFIED;

    } else {
        ix->flags &= ~NGX_HTTP_CIVCHAT_ID_VERIFIED;
    }

    return ngx_http_civchat_add_event(rc->res->pool, rc->res->events,
                                      NGX_HTTP_CIVCHAT_EV_PROFILE_UPDATED,
                                      &name, &attrs);
}


/* a claimed identity leaves X for its prover; X's event says so */

ngx_int_t
ngx_http_civchat_session_take(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, u_char kind)
{
    ngx_str_t                  old, key, user_id, email, attrs;
    ngx_http_civchat_event_t  *ev;

    if (ngx_http_civchat_index_copy(rc->res->pool, &x->key, &key) != NGX_OK
        || ngx_http_civchat_index_copy(rc->res->pool, &x->user_id, &user_id)
           != NGX_OK
        || ngx_http_civchat_index_copy(rc->res->pool, &x->email, &email)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    old = (kind == NGX_HTTP_CIVCHAT_BY_USER_ID) ? user_id : email;

    attrs.data = ngx_pnalloc(rc->res->pool, sizeof("{\"old\":,\"new\":null}")
                             + ngx_http_civchat_json_quoted_len(old.data,
                                                                old.len));
    if (attrs.data == NULL) {
        return NGX_ERROR;
    }

    attrs.len = ngx_cpymem(ngx_http_civchat_json_quote(
                               ngx_cpymem(attrs.data, "{\"old\":", 7),
                               old.data, old.len),
                           ",\"new\":null}", 12)
                - attrs.data;

    if (ngx_http_civchat_store_set_index(rc->zone, x, kind, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_civchat_rules_index(x, kind)->flags = 0;

    if (ngx_http_civchat_add_event(rc->res->pool, rc->res->events,
                                   NGX_HTTP_CIVCHAT_EV_PROFILE_UPDATED,
                                   NULL, &attrs)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ev = rc->res->events->elts;
    ev = &ev[rc->res->events->nelts - 1];

    if (kind == NGX_HTTP_CIVCHAT_BY_USER_ID) {
        ngx_str_set(&ev->name, "user_id");

    } else {
        ngx_str_set(&ev->name, "email");
    }

    ev->other = 1;
    ev->user_key = key;
    ev->user_id = user_id;
    ev->email = email;

    return NGX_OK;
}


/* unified, authorize off, E held: email_claimed, and "conflict" */

ngx_int_t
ngx_http_civchat_session_claimed(ngx_http_civchat_rules_t *rc)
{
    if (ngx_http_civchat_ignore(rc->res->pool, rc->res->ignored, "email", 5,
                                "conflict")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_civchat_session_event(rc,
                                        NGX_HTTP_CIVCHAT_EV_EMAIL_CLAIMED,
                                        NULL, "email", &rc->plan->email);
}


ngx_int_t
ngx_http_civchat_session_unverified(ngx_http_civchat_rules_t *rc, u_char kind)
{
    rc->res->unverified++;

    return ngx_http_civchat_ignore(rc->res->pool, rc->res->ignored,
                                   (kind == NGX_HTTP_CIVCHAT_BY_USER_ID)
                                   ? "user_id" : "email",
                                   (kind == NGX_HTTP_CIVCHAT_BY_USER_ID)
                                   ? 7 : 5,
                                   "unverified");
}


/* an event whose data is {field: value}, or {} */

ngx_int_t
ngx_http_civchat_session_event(ngx_http_civchat_rules_t *rc, ngx_uint_t type,
    ngx_str_t *name, const char *field, ngx_str_t *value)
{
    u_char     *p;
    ngx_str_t   attrs;

    ngx_str_null(&attrs);

    if (field != NULL) {
        attrs.data = ngx_pnalloc(rc->res->pool,
                                 sizeof("{\"\":}") + ngx_strlen(field)
                                 + ngx_http_civchat_json_quoted_len(
                                       value->data, value->len));
        if (attrs.data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_sprintf(attrs.data, "{\"%s\":", field);
        p = ngx_http_civchat_json_quote(p, value->data, value->len);
        *p++ = '}';
        attrs.len = p - attrs.data;
    }

    return ngx_http_civchat_add_event(rc->res->pool, rc->res->events, type,
                                      name, &attrs);
}


ngx_int_t
ngx_http_civchat_index_is(ngx_http_civchat_index_t *ix, ngx_str_t *value)
{
    return ix->len && ix->len == value->len
           && ngx_memcmp(ix->data, value->data, value->len) == 0;
}


ngx_int_t
ngx_http_civchat_index_copy(ngx_pool_t *pool, ngx_http_civchat_index_t *ix,
    ngx_str_t *out)
{
    if (ix->len == 0) {
        ngx_str_null(out);
        return NGX_OK;
    }

    out->len = ix->len;
    out->data = ngx_pnalloc(pool, ix->len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, ix->data, ix->len);

    return NGX_OK;
}
