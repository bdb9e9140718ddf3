
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * A request's plan, made before the zone is locked: its key, the
 * identity it claims (user_id, email, the user_hash that may prove it),
 * its attribute changes, checked and converted (attrs.c) and written as
 * JSON text, and a visit's automatic values.  zone.c applies it; when
 * it needs a fresh key or the user_hash checked (only when an identity
 * could change: a returning visitor's page view needs neither), it says
 * so without writing anything, and the plan is applied again.
 */


/* a fresh key, a user_hash checked, reads and conflicts on Redis */
#define NGX_HTTP_CIVCHAT_APPLY_TRIES     12


typedef struct {
    ngx_http_request_t               *request;
    ngx_http_civchat_ctx_t           *ctx;
    ngx_http_civchat_plan_t          *plan;
    ngx_http_civchat_result_t         res;
    ngx_http_civchat_resolved_pt      handler;
    ngx_uint_t                        tries;
    ngx_uint_t                        ignored;   /* before the first apply */
    ngx_uint_t                        events;
    unsigned                          wrote:1;
} ngx_http_civchat_resolving_t;


static void ngx_http_civchat_plan_identity(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan);
static ngx_int_t ngx_http_civchat_plan_attrs(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan);
static ngx_int_t ngx_http_civchat_plan_one(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan,
    const char *raw, json_t *value);
static ngx_int_t ngx_http_civchat_plan_change(ngx_http_request_t *r,
    ngx_http_civchat_plan_t *plan, ngx_str_t *name, json_t *value);
static ngx_uint_t ngx_http_civchat_attribute_key(ngx_str_t *name);
static ngx_uint_t ngx_http_civchat_request_field(ngx_str_t *name);
static void ngx_http_civchat_plan_visit(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan);
static uint32_t ngx_http_civchat_auto_sig(ngx_http_civchat_plan_t *plan);
static ngx_int_t ngx_http_civchat_resolve_step(
    ngx_http_civchat_resolving_t *rs);
static void ngx_http_civchat_resolve_redis(void *data, ngx_int_t rc);
static ngx_int_t ngx_http_civchat_resolve_failed(
    ngx_http_civchat_resolving_t *rs);
static ngx_int_t ngx_http_civchat_resolve_done(
    ngx_http_civchat_resolving_t *rs, ngx_int_t rc);


/*
 * The request fields of every endpoint, as their names read once
 * normalised: "URL" or "Api Key" in a body is no attribute either, and
 * is reported as reserved.
 */

static ngx_str_t  ngx_http_civchat_request_fields[] = {
    ngx_string("apikey"),
    ngx_string("api_key"),
    ngx_string("app_key"),
    ngx_string("key"),
    ngx_string("user_key"),
    ngx_string("link_key"),
    ngx_string("user_hash"),
    ngx_string("widget"),
    ngx_string("event"),
    ngx_string("url"),
    ngx_string("referrer"),
    ngx_string("title"),
    ngx_string("source_context"),
    ngx_string("user_id"),
    ngx_string("email"),
    ngx_null_string
};


ngx_int_t
ngx_http_civchat_plan(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_plan_t *plan)
{
    ngx_http_civchat_loc_conf_t        *lcf;
    const ngx_http_civchat_endpoint_t  *ep;

    lcf = ctx->lcf;
    ep = ngx_http_civchat_endpoint_info(ctx->endpoint);

    ngx_memzero(plan, sizeof(ngx_http_civchat_plan_t));

    switch (ctx->endpoint) {

    case NGX_HTTP_CIVCHAT_RESET_AUTH:
        plan->op = NGX_HTTP_CIVCHAT_OP_RESET;
        break;

    case NGX_HTTP_CIVCHAT_UPDATE:
        plan->op = NGX_HTTP_CIVCHAT_OP_UPDATE;
        break;

    default:
        plan->op = (ep->flags & NGX_HTTP_CIVCHAT_EP_VISIT)
                   ? NGX_HTTP_CIVCHAT_OP_VISIT : NGX_HTTP_CIVCHAT_OP_TOUCH;
        break;
    }

    ngx_http_civchat_read_key(r, ctx, &plan->key, &plan->link_key);

    plan->verify = (lcf->identity != NULL);
    plan->unified = lcf->unified;
    plan->authorize = lcf->authorize_by_email;
    plan->now = ngx_time();
    plan->session_timeout = lcf->session_timeout;
    plan->live = 1;

    if (ngx_array_init(&plan->changes, r->pool, 4,
                       sizeof(ngx_http_civchat_change_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ep->flags & NGX_HTTP_CIVCHAT_EP_ATTRS) {
        ngx_http_civchat_plan_identity(r, ctx, plan);

        if (ngx_http_civchat_plan_attrs(r, ctx, plan) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (ep->flags & NGX_HTTP_CIVCHAT_EP_VISIT) {
        ngx_http_civchat_plan_visit(r, ctx, plan);
    }

    return NGX_OK;
}


/*
 * The server API's plan: trusted (its user_id and email are verified),
 * for the profile a key, user_id or email names.
 */

ngx_int_t
ngx_http_civchat_plan_api(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_plan_t *plan, ngx_uint_t op, u_char kind, ngx_str_t *id)
{
    ngx_memzero(plan, sizeof(ngx_http_civchat_plan_t));

    plan->op = op;
    plan->by_kind = kind;
    plan->by_id = *id;
    plan->trusted = 1;
    plan->unified = ctx->lcf->unified;
    plan->now = ngx_time();
    plan->live = 1;

    if (ngx_array_init(&plan->changes, r->pool, 4,
                       sizeof(ngx_http_civchat_change_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (op == NGX_HTTP_CIVCHAT_OP_UPSERT) {
        if (ngx_http_civchat_mint_key(r, plan->fresh) != NGX_OK) {
            return NGX_ERROR;
        }

        plan->fresh_set = 1;
    }

    if (op == NGX_HTTP_CIVCHAT_OP_READ || op == NGX_HTTP_CIVCHAT_OP_DELETE) {
        return NGX_OK;
    }

    ngx_http_civchat_plan_identity(r, ctx, plan);

    return ngx_http_civchat_plan_attrs(r, ctx, plan);
}


/*
 * Which profile a server API body names: user_id, else email, else key,
 * read as the widget reads them (trimmed; a number is its decimal text;
 * an email in lower case and checked).
 */

ngx_int_t
ngx_http_civchat_plan_by_body(ngx_pool_t *pool, json_t *body, u_char *kind,
    ngx_str_t *id)
{
    json_t      *v;
    const char  *reason;

    v = json_object_get(body, "user_id");

    if (v != NULL
        && ngx_http_civchat_user_id(pool, v, id, &reason) == NGX_OK)
    {
        *kind = NGX_HTTP_CIVCHAT_BY_USER_ID;
        return NGX_OK;
    }

    v = json_object_get(body, "email");

    if (v != NULL && ngx_http_civchat_email(pool, v, id, &reason) == NGX_OK) {
        *kind = NGX_HTTP_CIVCHAT_BY_EMAIL;
        return NGX_OK;
    }

    v = json_object_get(body, "key");

    if (json_is_string(v)
        && ngx_http_civchat_valid_key((u_char *) json_string_value(v),
                                      json_string_length(v)))
    {
        id->data = (u_char *) json_string_value(v);
        id->len = json_string_length(v);
        *kind = NGX_HTTP_CIVCHAT_BY_KEY;
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/* U, E and the user_hash; a bad one is skipped with its reason */

static void
ngx_http_civchat_plan_identity(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan)
{
    json_t      *v;
    const char  *reason;

    v = json_object_get(ctx->body, "user_id");

    if (v != NULL
        && ngx_http_civchat_user_id(r->pool, v, &plan->user_id, &reason)
           != NGX_OK)
    {
        ngx_str_null(&plan->user_id);

        if (reason) {
            (void) ngx_http_civchat_ignore(r->pool, &ctx->ignored,
                                           "user_id", 7, reason);
        }
    }

    v = json_object_get(ctx->body, "email");

    if (v != NULL
        && ngx_http_civchat_email(r->pool, v, &plan->email, &reason)
           != NGX_OK)
    {
        ngx_str_null(&plan->email);

        if (reason) {
            (void) ngx_http_civchat_ignore(r->pool, &ctx->ignored, "email",
                                           5, reason);
        }
    }

    if (!plan->verify) {
        /* no secret: a user_hash proves nothing, and is not kept */
        return;
    }

    v = json_object_get(ctx->body, "user_hash");

    if (v == NULL || json_is_null(v)
        || (plan->user_id.len == 0 && plan->email.len == 0))
    {
        return;
    }

    if (json_is_string(v)) {
        plan->user_hash.data = (u_char *) json_string_value(v);
        plan->user_hash.len = json_string_length(v);
        plan->proof = NGX_HTTP_CIVCHAT_PROOF_UNCHECKED;
        return;
    }

    plan->proof = NGX_HTTP_CIVCHAT_PROOF_INVALID;
}


/*
 * Whether the user_hash is the HMAC of the user_id, or of the email
 * where the email identifies; compared in constant time (hmac.c).
 */

void
ngx_http_civchat_plan_prove(ngx_http_civchat_plan_t *plan,
    ngx_http_civchat_loc_conf_t *lcf)
{
    ngx_str_t  *msg;

    if (plan->proof != NGX_HTTP_CIVCHAT_PROOF_UNCHECKED) {
        return;
    }

    msg = plan->user_id.len ? &plan->user_id : &plan->email;

    plan->proof = (lcf->identity != NULL
                   && ngx_http_civchat_hmac_verify(lcf->identity, msg,
                                                   &plan->user_hash)
                      == NGX_OK)
                  ? NGX_HTTP_CIVCHAT_PROOF_VALID
                  : NGX_HTTP_CIVCHAT_PROOF_INVALID;
}


static ngx_int_t
ngx_http_civchat_plan_attrs(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan)
{
    json_t      *value;
    const char  *raw;

    json_object_foreach(ctx->body, raw, value) {
        if (ngx_http_civchat_plan_one(r, ctx, plan, raw, value) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * One body field: an attribute change, the widget's look, or a field
 * that is skipped, said why in the answer (README "Attributes").
 */

static ngx_int_t
ngx_http_civchat_plan_one(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_plan_t *plan, const char *raw, json_t *value)
{
    json_t      *v;
    ngx_int_t    rc;
    ngx_str_t    rname, name;
    const char  *reason;

    rname.data = (u_char *) raw;
    rname.len = ngx_strlen(raw);

    if (!ngx_http_civchat_attribute_key(&rname)) {
        /* the request's own fields, and the identity: not attributes */
        return NGX_OK;
    }

    if (json_is_null(value)
        || (json_is_string(value) && json_string_length(value) == 0))
    {
        if (!plan->trusted) {
            /* "not given" in the browser; the server API removes with it */
            return NGX_OK;
        }

        value = NULL;
    }

    if (value != NULL && ngx_strcmp(raw, "state") == 0
        && ngx_http_civchat_widget_state(value))
    {
        ctx->state.data = (u_char *) json_string_value(value);
        ctx->state.len = json_string_length(value);
        return NGX_OK;
    }

    rc = ngx_http_civchat_normalize_name(r->pool, rname.data, rname.len,
                                         &name, &reason);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_civchat_ignore(r->pool, &ctx->ignored, raw,
                                       rname.len, reason);
    }

    /* "URL", "Api Key", "E-mail"...: a spelling of a request field */
    if (ngx_http_civchat_request_field(&name)) {
        return ngx_http_civchat_ignore(r->pool, &ctx->ignored, raw,
                                       rname.len, "reserved");
    }

    if (ngx_http_civchat_automatic(&name)) {
        return ngx_http_civchat_ignore(r->pool, &ctx->ignored, raw,
                                       rname.len, "read_only");
    }

    if (value == NULL) {
        return ngx_http_civchat_plan_change(r, plan, &name, NULL);
    }

    if (plan->changes.nelts >= ctx->lcf->max_attrs) {
        return ngx_http_civchat_ignore(r->pool, &ctx->ignored, raw,
                                       rname.len, "too_many_attributes");
    }

    if (name.len == 7 && ngx_strncmp(name.data, "company", 7) == 0) {
        v = ngx_http_civchat_company(ctx->lcf, value, &reason);

    } else {
        v = ngx_http_civchat_attr_value(ctx->lcf, &name, value, &reason);
    }

    if (v == NULL) {
        if (reason == NULL) {
            return NGX_OK;
        }

        return ngx_http_civchat_ignore(r->pool, &ctx->ignored, raw,
                                       rname.len, reason);
    }

    rc = ngx_http_civchat_plan_change(r, plan, &name, v);

    json_decref(v);

    return rc;
}


/* a change as text; a name sent twice ("Plan" and "plan") keeps the last */

static ngx_int_t
ngx_http_civchat_plan_change(ngx_http_request_t *r,
    ngx_http_civchat_plan_t *plan, ngx_str_t *name, json_t *value)
{
    ngx_uint_t                  i;
    ngx_http_civchat_change_t  *c;

    c = plan->changes.elts;

    for (i = 0; i < plan->changes.nelts; i++) {
        if (c[i].name.len == name->len
            && ngx_memcmp(c[i].name.data, name->data, name->len) == 0)
        {
            break;
        }
    }

    if (i == plan->changes.nelts) {
        c = ngx_array_push(&plan->changes);
        if (c == NULL) {
            return NGX_ERROR;
        }

        c->name = *name;
        c->quoted.data = ngx_pnalloc(r->pool,
                             ngx_http_civchat_json_quoted_len(name->data,
                                                              name->len));
        if (c->quoted.data == NULL) {
            return NGX_ERROR;
        }

        c->quoted.len = ngx_http_civchat_json_quote(c->quoted.data,
                                                    name->data, name->len)
                        - c->quoted.data;

    } else {
        c = &c[i];
    }

    ngx_str_null(&c->value);

    if (value != NULL
        && ngx_http_civchat_json_text(r->pool, value, &c->value) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (name->len == 4 && ngx_strncmp(name->data, "name", 4) == 0) {
        plan->name = c->value;
    }

    return NGX_OK;
}


/* a body key that may name an attribute: not a request field as sent */

static ngx_uint_t
ngx_http_civchat_attribute_key(ngx_str_t *name)
{
    return !ngx_http_civchat_reserved(name)
           && !(name->len == 7 && ngx_strncmp(name->data, "user_id", 7) == 0)
           && !(name->len == 5 && ngx_strncmp(name->data, "email", 5) == 0);
}


static ngx_uint_t
ngx_http_civchat_request_field(ngx_str_t *name)
{
    ngx_str_t  *f;

    for (f = ngx_http_civchat_request_fields; f->len; f++) {
        if (f->len == name->len
            && ngx_strncmp(f->data, name->data, name->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * A visit's automatic values: the address (as anonymised), the
 * browser's language, GeoIP's place, the User-Agent; their hash tells
 * whether the profile has them already.
 */

static void
ngx_http_civchat_plan_visit(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan)
{
    plan->visit = 1;
    plan->ip = ctx->ip;
    plan->language = ctx->language;
    plan->geo = ctx->geo;
    plan->user_agent = ctx->user_agent;
    plan->auto_sig = ngx_http_civchat_auto_sig(plan);
}


static uint32_t
ngx_http_civchat_auto_sig(ngx_http_civchat_plan_t *plan)
{
    u_char      len;
    uint32_t    crc;
    ngx_str_t  *v;
    ngx_uint_t  i;

    ngx_str_t  *values[] = { &plan->ip, &plan->language, &plan->geo.country,
                             &plan->geo.region, &plan->geo.city,
                             &plan->geo.timezone };

    ngx_crc32_init(crc);

    for (i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        v = values[i];
        len = (u_char) v->len;

        ngx_crc32_update(&crc, &len, 1);
        ngx_crc32_update(&crc, v->data, v->len);
    }

    ngx_crc32_final(crc);

    /* 0 is "not known" */
    return crc ? crc : 1;
}


/*
 * Applies a request's plan to its zone, minting a key or checking the
 * user_hash first when the zone says it needs them, and, on a zone on
 * Redis, reading the plan's profiles or writing what it changed (which
 * takes a round trip: NGX_DONE, and handler(r, rc) is called later).
 * NGX_BUSY: the browser's key was replaced a moment ago; NGX_DECLINED:
 * the server API's profile does not exist; NGX_HTTP_SERVICE_UNAVAILABLE:
 * Redis is needed and does not answer.
 */

ngx_int_t
ngx_http_civchat_resolve(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_record_t *record,
    ngx_http_civchat_resolved_pt handler)
{
    ngx_http_civchat_resolving_t  *rs;

    rs = ngx_pcalloc(r->pool, sizeof(ngx_http_civchat_resolving_t));
    if (rs == NULL) {
        return NGX_ERROR;
    }

    rs->request = r;
    rs->ctx = ctx;
    rs->plan = plan;
    rs->handler = handler;
    rs->res.ignored = &ctx->ignored;
    rs->res.events = &ctx->events;
    rs->res.record = record;
    rs->res.pool = r->pool;
    rs->ignored = ctx->ignored.nelts;
    rs->events = ctx->events.nelts;

    if (ctx->lcf->zone->cluster != NULL) {
        if (handler == NULL) {
            /* a caller that cannot wait cannot use Redis */
            return NGX_HTTP_SERVICE_UNAVAILABLE;
        }

        rs->res.sync = ngx_http_civchat_cluster_sync(ctx->lcf->zone, r->pool,
                                                     r->connection->log);
        if (rs->res.sync == NULL) {
            return NGX_ERROR;
        }
    }

    return ngx_http_civchat_resolve_step(rs);
}


static ngx_int_t
ngx_http_civchat_resolve_step(ngx_http_civchat_resolving_t *rs)
{
    ngx_int_t                   rc;
    ngx_uint_t                  needs;
    ngx_http_civchat_plan_t    *plan;
    ngx_http_civchat_result_t  *res;

    plan = rs->plan;
    res = &rs->res;

    for ( ;; ) {

        if (rs->tries++ == NGX_HTTP_CIVCHAT_APPLY_TRIES) {
            /* Redis kept changing under the plan */
            return ngx_http_civchat_resolve_done(rs,
                                                 res->sync
                                                 ? NGX_HTTP_SERVICE_UNAVAILABLE
                                                 : NGX_ERROR);
        }

        /* an apply that was undone leaves nothing behind */
        rs->ctx->ignored.nelts = rs->ignored;
        rs->ctx->events.nelts = rs->events;
        res->unverified = 0;
        res->needs = 0;

        rc = ngx_http_civchat_zone_apply(rs->ctx->lcf->zone, plan, res);

        needs = res->needs;

        if (rc == NGX_AGAIN && (needs & NGX_HTTP_CIVCHAT_NEEDS_KEY)
            && !plan->fresh_set)
        {
            if (ngx_http_civchat_mint_key(rs->request, plan->fresh)
                != NGX_OK)
            {
                return ngx_http_civchat_resolve_done(rs, NGX_ERROR);
            }

            plan->fresh_set = 1;
        }

        if (rc == NGX_AGAIN && (needs & NGX_HTTP_CIVCHAT_NEEDS_PROOF)) {
            ngx_http_civchat_plan_prove(plan, rs->ctx->lcf);
        }

        if ((rc == NGX_AGAIN && (needs & NGX_HTTP_CIVCHAT_NEEDS_REDIS))
            || (rc == NGX_OK && (needs & NGX_HTTP_CIVCHAT_NEEDS_WRITE)))
        {
            rs->wrote = (rc == NGX_OK);

            rc = ngx_http_civchat_cluster_run(res->sync, needs,
                                              ngx_http_civchat_resolve_redis,
                                              rs);
            if (rc == NGX_DONE) {
                return NGX_DONE;
            }

            if (ngx_http_civchat_resolve_failed(rs) != NGX_OK) {
                return ngx_http_civchat_resolve_done(rs,
                                                NGX_HTTP_SERVICE_UNAVAILABLE);
            }

            continue;
        }

        if (rc != NGX_AGAIN) {
            return ngx_http_civchat_resolve_done(rs, rc);
        }
    }
}


/* Redis answered (NGX_OK), found a conflict (NGX_DECLINED), or failed */

static void
ngx_http_civchat_resolve_redis(void *data, ngx_int_t rc)
{
    ngx_http_civchat_resolving_t *rs = data;

    if (rc == NGX_OK && rs->wrote) {
        /* written: the apply that made the writes was the answer */
        rc = ngx_http_civchat_resolve_done(rs, NGX_OK);

    } else if (rc == NGX_ERROR
               && ngx_http_civchat_resolve_failed(rs) != NGX_OK)
    {
        rc = ngx_http_civchat_resolve_done(rs, NGX_HTTP_SERVICE_UNAVAILABLE);

    } else {
        rc = ngx_http_civchat_resolve_step(rs);

        if (rc == NGX_DONE) {
            return;
        }
    }

    rs->handler(rs->request, rc);
}


/*
 * Redis does not answer: with redis_down=cache, what the cache holds is
 * used (and what must be written still fails); else nothing is.
 */

static ngx_int_t
ngx_http_civchat_resolve_failed(ngx_http_civchat_resolving_t *rs)
{
    if (rs->wrote || !ngx_http_civchat_cluster_down(rs->res.sync)) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_resolve_done(ngx_http_civchat_resolving_t *rs,
    ngx_int_t rc)
{
    ngx_http_civchat_stats_t  *st;

    if (rc != NGX_OK) {
        return rc;
    }

    rs->ctx->user = rs->res.user;
    rs->ctx->resolved = 1;

    if (rs->res.sync != NULL) {
        /* on Redis, now that the plan holds: the live channel hears it */

        if (rs->plan->op == NGX_HTTP_CIVCHAT_OP_DELETE) {
            ngx_http_civchat_live_redis_forget(rs->ctx->lcf->zone,
                                               &rs->res.user.profile,
                                               rs->request->pool);

        } else if (rs->plan->live) {
            ngx_http_civchat_live_redis_tell(rs->ctx->lcf->zone,
                                             &rs->res.user.profile,
                                             &rs->ctx->events, rs->events,
                                             rs->request->pool);
        }
    }

    if (rs->res.unverified) {
        st = ngx_http_civchat_stats(rs->request);

        if (st != NULL) {
            ngx_http_civchat_count(rs->request, &st->unverified,
                                   rs->res.unverified);
        }
    }

    return NGX_OK;
}
