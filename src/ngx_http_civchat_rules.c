
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_rules.h"


/*
 * The identity rules (README "Identity"), applied to the zone under its
 * lock by zone.c: which profile a request belongs to, and what it may
 * do to identities.  They rest on three rules.
 *
 * A key is a credential: a browser gets a new one whenever the profile
 * it resolves to changes or gains or proves the identity it identifies
 * by, and its old key never resolves again (retired).
 *
 * Identity is granted on proof: with civchat_identity_secret, a
 * user_id (or an identifying e-mail) switches, merges or takes over only
 * with a valid user_hash; without it is a claim, set only where nobody
 * holds it.  Without a secret (the User.com-compatible mode) a claim
 * still switches, but the session it gets is unproved: the browser acts
 * as the profile and sees nothing of it.
 *
 * A proof beats a claim: proving an identity that was only claimed
 * retires every session of its profile but the prover's.
 */


/* a retired key answers 409 for this long (minutes), then is forgotten */
#define NGX_HTTP_CIVCHAT_GRACE           2


static ngx_uint_t ngx_http_civchat_rules_needs(ngx_http_civchat_rules_t *rc);
static ngx_uint_t ngx_http_civchat_rules_settled(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_index_t *ix, ngx_str_t *value);
static ngx_int_t ngx_http_civchat_rules_visit(ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_user_id(ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_email(ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_email_unheld(
    ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_reset(ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_update(ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_api(ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_held(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, u_char kind);
static ngx_int_t ngx_http_civchat_rules_beside(ngx_http_civchat_rules_t *rc,
    u_char kind, ngx_str_t *value);
static ngx_int_t ngx_http_civchat_rules_current(
    ngx_http_civchat_rules_t *rc);


/*
 * NGX_OK: resolved (res->profile, res->session, res->user's key and
 * flags); NGX_AGAIN: nothing was written and the plan needs what
 * res->needs says; NGX_BUSY: the browser's key was replaced a moment
 * ago (another tab); NGX_DECLINED: the server API's profile does not
 * exist.
 */

ngx_int_t
ngx_http_civchat_rules_apply(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res)
{
    ngx_int_t                 rc;
    ngx_http_civchat_rules_t  r;

    ngx_memzero(&r, sizeof(ngx_http_civchat_rules_t));

    r.zone = zone;
    r.plan = plan;
    r.res = res;

    if (plan->op >= NGX_HTTP_CIVCHAT_OP_READ) {
        rc = ngx_http_civchat_rules_api(&r);
        goto done;
    }

    rc = ngx_http_civchat_rules_current(&r);
    if (rc != NGX_OK) {
        return rc;
    }

    res->needs = ngx_http_civchat_rules_needs(&r);

    if (res->needs) {
        return NGX_AGAIN;
    }

    switch (plan->op) {

    case NGX_HTTP_CIVCHAT_OP_VISIT:
        rc = ngx_http_civchat_rules_visit(&r);
        break;

    case NGX_HTTP_CIVCHAT_OP_RESET:
        rc = ngx_http_civchat_rules_reset(&r);
        break;

    case NGX_HTTP_CIVCHAT_OP_UPDATE:
        rc = ngx_http_civchat_rules_update(&r);
        break;

    default: /* NGX_HTTP_CIVCHAT_OP_TOUCH: events never switch */
        r.p = (r.k != NULL) ? r.k : ngx_http_civchat_session_create(&r, 1);
        rc = (r.p != NULL) ? NGX_OK : NGX_ERROR;
        break;
    }

done:

    if (rc != NGX_OK) {
        return rc;
    }

    if (r.p == NULL) {
        return NGX_ERROR;
    }

    ngx_http_civchat_store_touch(zone, r.p);

    res->profile = r.p;
    res->session = r.session;
    res->user.proved = r.proved;
    res->user.new_key = r.keyed;

    if (r.keyed) {
        res->user.key.data = plan->fresh;
        res->user.key.len = NGX_HTTP_CIVCHAT_KEY_LEN;

    } else if (plan->op < NGX_HTTP_CIVCHAT_OP_READ) {
        res->user.key = plan->key;

    } else if (ngx_http_civchat_index_copy(res->pool, &r.p->key,
                                           &res->user.key)
               != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* K: the profile of the browser's key, if the key is live */

static ngx_int_t
ngx_http_civchat_rules_current(ngx_http_civchat_rules_t *rc)
{
    uint16_t                   now;
    ngx_http_civchat_index_t  *ix;

    if (rc->plan->key.len == 0) {
        return NGX_OK;
    }

    ix = ngx_http_civchat_store_index(rc->zone, NGX_HTTP_CIVCHAT_BY_KEY,
                                      &rc->plan->key);
    rc->kix = ix;

    if (ix == NULL) {
        return NGX_OK;
    }

    rc->known = 1;

    if (!(ix->flags & NGX_HTTP_CIVCHAT_KEY_RETIRED)) {
        rc->k = ngx_http_civchat_store_owner(rc->zone, ix);
        rc->session = ix;
        rc->proved = !(ix->flags & NGX_HTTP_CIVCHAT_KEY_UNPROVED);
        return NGX_OK;
    }

    now = (uint16_t) (ngx_time() / 60);

    if (rc->plan->op != NGX_HTTP_CIVCHAT_OP_RESET
        && (uint16_t) (now - ix->retired) < NGX_HTTP_CIVCHAT_GRACE)
    {
        /* another tab got the new key a moment ago: it may try again */
        return NGX_BUSY;
    }

    /* an old key: the browser is new here, but the key is not adopted */
    return NGX_OK;
}


/* what must be minted or checked outside the lock first */

static ngx_uint_t
ngx_http_civchat_rules_needs(ngx_http_civchat_rules_t *rc)
{
    ngx_uint_t                change;
    ngx_http_civchat_plan_t  *plan;

    plan = rc->plan;
    change = 0;

    if (rc->k == NULL) {
        /* a new profile: under the browser's unknown key, or a fresh one */
        change = (plan->key.len == 0 || rc->known
                  || plan->op == NGX_HTTP_CIVCHAT_OP_RESET
                  || plan->user_id.len
                  || (plan->email.len && plan->unified));

    } else if (plan->op == NGX_HTTP_CIVCHAT_OP_RESET) {
        change = 1;

    } else if (plan->op == NGX_HTTP_CIVCHAT_OP_TOUCH) {
        change = 0;

    } else if (plan->user_id.len) {
        change = !ngx_http_civchat_rules_settled(rc, &rc->k->user_id,
                                                 &plan->user_id);

    } else if (plan->email.len && plan->unified) {
        change = !ngx_http_civchat_rules_settled(rc, &rc->k->email,
                                                 &plan->email);
    }

    if (!change) {
        return 0;
    }

    return (plan->fresh_set ? 0 : NGX_HTTP_CIVCHAT_NEEDS_KEY)
           | ((plan->proof == NGX_HTTP_CIVCHAT_PROOF_UNCHECKED)
              ? NGX_HTTP_CIVCHAT_NEEDS_PROOF : 0);
}


/*
 * Whether K holds the identity asked for as well as the request could
 * prove it: then a user_hash changes nothing (and is not checked).
 */

static ngx_uint_t
ngx_http_civchat_rules_settled(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_index_t *ix, ngx_str_t *value)
{
    if (!ngx_http_civchat_index_is(ix, value)) {
        return 0;
    }

    if (!rc->plan->verify || rc->plan->proof == NGX_HTTP_CIVCHAT_PROOF_NONE)
    {
        return 1;
    }

    return (ix->flags & NGX_HTTP_CIVCHAT_ID_VERIFIED) && rc->proved;
}


static ngx_int_t
ngx_http_civchat_rules_visit(ngx_http_civchat_rules_t *rc)
{
    ngx_http_civchat_plan_t  *plan;

    plan = rc->plan;

    if (plan->user_id.len) {
        /* user_id beats the email, which is then only an attribute */
        return ngx_http_civchat_rules_user_id(rc);
    }

    if (plan->email.len && plan->unified) {
        return ngx_http_civchat_rules_email(rc);
    }

    rc->p = (rc->k != NULL) ? rc->k : ngx_http_civchat_session_create(rc, 1);

    if (rc->p == NULL) {
        return NGX_ERROR;
    }

    if (plan->email.len) {
        /* the legacy behaviour: the email is an attribute, duplicates ok */
        return ngx_http_civchat_session_set(rc, rc->p,
                                          NGX_HTTP_CIVCHAT_BY_EMAIL,
                                          &plan->email, 0);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_rules_user_id(ngx_http_civchat_rules_t *rc)
{
    ngx_int_t                    n;
    ngx_http_civchat_plan_t     *plan;
    ngx_http_civchat_profile_t  *x;

    plan = rc->plan;

    x = ngx_http_civchat_store_find(rc->zone, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                    &plan->user_id);

    if (x != NULL) {
        n = ngx_http_civchat_rules_held(rc, x, NGX_HTTP_CIVCHAT_BY_USER_ID);

    } else if (rc->k != NULL && rc->k->user_id.len == 0) {
        rc->p = rc->k;

        n = ngx_http_civchat_session_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                       &plan->user_id,
                                       ngx_http_civchat_rules_valid(rc));
        if (n == NGX_OK) {
            n = ngx_http_civchat_session_rotate(rc);
        }

    } else if (rc->k != NULL
               && plan->verify && !ngx_http_civchat_rules_valid(rc))
    {
        /* K is someone: only a proof makes it someone else */
        rc->p = rc->k;
        n = ngx_http_civchat_session_unverified(rc,
                                                NGX_HTTP_CIVCHAT_BY_USER_ID);

    } else {
        rc->p = ngx_http_civchat_session_create(rc, 0);
        if (rc->p == NULL) {
            return NGX_ERROR;
        }

        n = ngx_http_civchat_session_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                       &plan->user_id,
                                       ngx_http_civchat_rules_valid(rc));

        if (n == NGX_OK && rc->k != NULL) {
            n = ngx_http_civchat_session_switch(rc, rc->p, 1);
        }
    }

    if (n != NGX_OK || plan->email.len == 0) {
        return n;
    }

    return ngx_http_civchat_rules_beside(rc, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                         &plan->email);
}


/*
 * X holds the identity asked for.  K itself: a proof may make it
 * verified.  Another profile: only a proof switches, or, without a
 * secret, a claim switches to an unproved session.
 */

static ngx_int_t
ngx_http_civchat_rules_held(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, u_char kind)
{
    ngx_uint_t                 valid;
    ngx_http_civchat_index_t  *ix;

    ix = ngx_http_civchat_rules_index(x, kind);
    valid = ngx_http_civchat_rules_valid(rc);

    if (x == rc->k) {
        rc->p = x;

        if (valid && (!(ix->flags & NGX_HTTP_CIVCHAT_ID_VERIFIED)
                      || !rc->proved))
        {
            return ngx_http_civchat_session_prove(rc, x, kind);
        }

        return NGX_OK;
    }

    if (!rc->plan->verify) {
        /* User.com's rule: the claim switches, and sees nothing */
        return ngx_http_civchat_session_switch(rc, x, 0);
    }

    if (!valid) {
        rc->p = (rc->k != NULL) ? rc->k
                                : ngx_http_civchat_session_create(rc, 1);

        if (rc->p == NULL) {
            return NGX_ERROR;
        }

        return ngx_http_civchat_session_unverified(rc, kind);
    }

    if (!(ix->flags & NGX_HTTP_CIVCHAT_ID_VERIFIED)) {
        /* a proof beats a claim: the claimer's sessions end */
        ix->flags |= NGX_HTTP_CIVCHAT_ID_VERIFIED;
        ngx_http_civchat_store_revoke(rc->zone, x, NULL);
        rc->zone->sh->changes++;
    }

    return ngx_http_civchat_session_switch(rc, x, 1);
}


/* E identifies: unified identification, no user_id */

static ngx_int_t
ngx_http_civchat_rules_email(ngx_http_civchat_rules_t *rc)
{
    ngx_uint_t                   valid;
    ngx_http_civchat_plan_t     *plan;
    ngx_http_civchat_profile_t  *x, *k;

    plan = rc->plan;
    k = rc->k;
    valid = ngx_http_civchat_rules_valid(rc);

    x = ngx_http_civchat_store_find(rc->zone, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                    &plan->email);

    if (x == NULL) {
        return ngx_http_civchat_rules_email_unheld(rc);
    }

    if (x == k) {
        return ngx_http_civchat_rules_held(rc, x, NGX_HTTP_CIVCHAT_BY_EMAIL);
    }

    if (plan->authorize) {

        if (plan->verify && !valid) {
            return ngx_http_civchat_rules_held(rc, x,
                                               NGX_HTTP_CIVCHAT_BY_EMAIL);
        }

        if (k != NULL && ngx_http_civchat_anonymous(k)) {
            /* an anonymous K becomes part of X, its key retired there */
            if (ngx_http_civchat_session_merge(rc, k, x) != NGX_OK) {
                return NGX_ERROR;
            }
        }

        return ngx_http_civchat_rules_held(rc, x, NGX_HTTP_CIVCHAT_BY_EMAIL);
    }

    if (valid && plan->verify
        && !(x->email.flags & NGX_HTTP_CIVCHAT_ID_VERIFIED))
    {
        /* a proof beats a claim: the email moves to the prover */
        if (ngx_http_civchat_session_take(rc, x, NGX_HTTP_CIVCHAT_BY_EMAIL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        return ngx_http_civchat_rules_email_unheld(rc);
    }

    /* knowing an email must not hand over someone's profile */

    rc->p = (k != NULL) ? k : ngx_http_civchat_session_create(rc, 1);

    if (rc->p == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_civchat_session_claimed(rc);
}


static ngx_int_t
ngx_http_civchat_rules_email_unheld(ngx_http_civchat_rules_t *rc)
{
    ngx_int_t                 n;
    ngx_uint_t                valid;
    ngx_http_civchat_plan_t  *plan;

    plan = rc->plan;
    valid = ngx_http_civchat_rules_valid(rc);

    if (rc->k == NULL) {
        rc->p = ngx_http_civchat_session_create(rc, 0);
        if (rc->p == NULL) {
            return NGX_ERROR;
        }

        return ngx_http_civchat_session_set(rc, rc->p,
                                          NGX_HTTP_CIVCHAT_BY_EMAIL,
                                          &plan->email, valid);
    }

    if (rc->k->email.len == 0) {
        rc->p = rc->k;

        n = ngx_http_civchat_session_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                       &plan->email, valid);

        return (n == NGX_OK) ? ngx_http_civchat_session_rotate(rc) : n;
    }

    if (plan->verify && !valid) {
        rc->p = rc->k;
        return ngx_http_civchat_session_unverified(rc,
                                                 NGX_HTTP_CIVCHAT_BY_EMAIL);
    }

    /* K has another email: a new profile with this one */

    rc->p = ngx_http_civchat_session_create(rc, 0);
    if (rc->p == NULL) {
        return NGX_ERROR;
    }

    n = ngx_http_civchat_session_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                   &plan->email, valid);

    return (n == NGX_OK) ? ngx_http_civchat_session_switch(rc, rc->p, 1) : n;
}


/*
 * reset_auth: the browser's key is retired first, whatever follows, and
 * the browser always gets a new one.
 */

static ngx_int_t
ngx_http_civchat_rules_reset(ngx_http_civchat_rules_t *rc)
{
    ngx_http_civchat_plan_t     *plan;
    ngx_http_civchat_profile_t  *x;

    plan = rc->plan;

    if (ngx_http_civchat_add_event(rc->res->pool, rc->res->events,
                                   NGX_HTTP_CIVCHAT_EV_AUTH_RESET, NULL, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_civchat_session_leave(rc);
    rc->k = NULL;
    rc->session = NULL;
    rc->proved = 1;

    if (plan->user_id.len) {
        x = ngx_http_civchat_store_find(rc->zone, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                        &plan->user_id);
        if (x != NULL) {
            if (ngx_http_civchat_rules_held(rc, x,
                                            NGX_HTTP_CIVCHAT_BY_USER_ID)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

        } else {
            rc->p = ngx_http_civchat_session_create(rc, 0);
            if (rc->p == NULL
                || ngx_http_civchat_session_set(rc, rc->p,
                                              NGX_HTTP_CIVCHAT_BY_USER_ID,
                                              &plan->user_id,
                                              ngx_http_civchat_rules_valid(rc))
                   != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        return plan->email.len
               ? ngx_http_civchat_rules_beside(rc, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                               &plan->email)
               : NGX_OK;
    }

    if (plan->email.len == 0) {
        rc->p = ngx_http_civchat_session_create(rc, 0);
        return (rc->p != NULL) ? NGX_OK : NGX_ERROR;
    }

    x = ngx_http_civchat_store_find(rc->zone, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                    &plan->email);

    if (x != NULL && plan->unified && plan->authorize) {
        return ngx_http_civchat_rules_held(rc, x, NGX_HTTP_CIVCHAT_BY_EMAIL);
    }

    rc->p = ngx_http_civchat_session_create(rc, 0);
    if (rc->p == NULL) {
        return NGX_ERROR;
    }

    if (x != NULL && plan->unified) {
        return ngx_http_civchat_session_claimed(rc);
    }

    return ngx_http_civchat_session_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                      &plan->email,
                                      ngx_http_civchat_rules_valid(rc));
}


/* client.update: never switches; identities only where free */

static ngx_int_t
ngx_http_civchat_rules_update(ngx_http_civchat_rules_t *rc)
{
    ngx_http_civchat_plan_t  *plan;

    plan = rc->plan;

    rc->p = (rc->k != NULL) ? rc->k : ngx_http_civchat_session_create(rc, 1);

    if (rc->p == NULL) {
        return NGX_ERROR;
    }

    if (plan->user_id.len
        && ngx_http_civchat_rules_beside(rc, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                         &plan->user_id)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (plan->email.len
        && ngx_http_civchat_rules_beside(rc, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                         &plan->email)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * An identity field on the resolved profile without switching (update,
 * the email beside a user_id): a value another profile owns is
 * refused; so is replacing a verified value by an unproved one.
 */

static ngx_int_t
ngx_http_civchat_rules_beside(ngx_http_civchat_rules_t *rc, u_char kind,
    ngx_str_t *value)
{
    ngx_int_t                    n;
    ngx_uint_t                   valid, identifies;
    ngx_http_civchat_index_t    *ix;
    ngx_http_civchat_profile_t  *x, *p;

    p = rc->p;
    ix = ngx_http_civchat_rules_index(p, kind);

    if (ngx_http_civchat_index_is(ix, value)) {
        return NGX_OK;
    }

    /* the user_hash is of the user_id when there is one */
    valid = ngx_http_civchat_rules_valid(rc)
            && (kind == NGX_HTTP_CIVCHAT_BY_USER_ID
                || rc->plan->user_id.len == 0);

    if (kind == NGX_HTTP_CIVCHAT_BY_USER_ID
        || rc->plan->op == NGX_HTTP_CIVCHAT_OP_UPDATE
        || rc->plan->op >= NGX_HTTP_CIVCHAT_OP_READ
        || rc->plan->unified)
    {
        x = ngx_http_civchat_store_find(rc->zone, kind, value);

        if (x != NULL && x != p) {
            return ngx_http_civchat_ignore(rc->res->pool, rc->res->ignored,
                                   (kind == NGX_HTTP_CIVCHAT_BY_USER_ID)
                                   ? "user_id" : "email",
                                   (kind == NGX_HTTP_CIVCHAT_BY_USER_ID)
                                   ? 7 : 5,
                                   "conflict");
        }
    }

    if (rc->plan->verify && !valid && ix->len
        && (ix->flags & NGX_HTTP_CIVCHAT_ID_VERIFIED))
    {
        return ngx_http_civchat_session_unverified(rc, kind);
    }

    identifies = (kind == NGX_HTTP_CIVCHAT_BY_USER_ID)
                 || (rc->plan->unified && rc->plan->user_id.len == 0);

    n = ngx_http_civchat_session_set(rc, p, kind, value, valid);

    if (n != NGX_OK || !identifies || rc->plan->op >= NGX_HTTP_CIVCHAT_OP_READ)
    {
        return n;
    }

    return ngx_http_civchat_session_rotate(rc);
}


/*
 * The server API: the profile a key (any of its keys), user_id or
 * email names; created by POST when missing.
 */

static ngx_int_t
ngx_http_civchat_rules_api(ngx_http_civchat_rules_t *rc)
{
    ngx_str_t                    key;
    ngx_http_civchat_plan_t     *plan;
    ngx_http_civchat_index_t    *ix;
    ngx_http_civchat_profile_t  *p;

    plan = rc->plan;
    rc->proved = 1;

    ix = ngx_http_civchat_store_index(rc->zone, plan->by_kind, &plan->by_id);

    p = (ix != NULL) ? ngx_http_civchat_store_owner(rc->zone, ix) : NULL;

    if (p == NULL) {
        if (plan->op != NGX_HTTP_CIVCHAT_OP_UPSERT) {
            return NGX_DECLINED;
        }

        if (plan->by_kind == NGX_HTTP_CIVCHAT_BY_KEY) {
            /* a key the site chose, say from its old widget: a session */
            key = plan->by_id;

        } else {
            key.data = plan->fresh;
            key.len = NGX_HTTP_CIVCHAT_KEY_LEN;
        }

        p = ngx_http_civchat_store_create(rc->zone, &key, plan->now);
        if (p == NULL) {
            return NGX_ERROR;
        }

        rc->p = p;
        rc->res->user.created = 1;

        if (ngx_http_civchat_add_event(rc->res->pool, rc->res->events,
                                       NGX_HTTP_CIVCHAT_EV_USER_CREATED,
                                       NULL, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (plan->by_kind != NGX_HTTP_CIVCHAT_BY_KEY
            && ngx_http_civchat_session_set(rc, p, plan->by_kind, &plan->by_id,
                                          1)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    rc->p = p;

    if (plan->op == NGX_HTTP_CIVCHAT_OP_READ
        || plan->op == NGX_HTTP_CIVCHAT_OP_DELETE)
    {
        return NGX_OK;
    }

    if (plan->user_id.len
        && ngx_http_civchat_rules_beside(rc, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                         &plan->user_id)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (plan->email.len
        && ngx_http_civchat_rules_beside(rc, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                         &plan->email)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


