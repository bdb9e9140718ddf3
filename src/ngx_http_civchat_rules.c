
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


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


typedef struct {
    ngx_http_civchat_zone_t      *zone;
    ngx_http_civchat_plan_t      *plan;
    ngx_http_civchat_result_t    *res;
    ngx_http_civchat_index_t     *kix;       /* the browser's key entry */
    ngx_http_civchat_profile_t   *k;         /* K: its profile, if live */
    ngx_http_civchat_profile_t   *p;         /* what the request resolves */
    ngx_http_civchat_index_t     *session;   /* the browser's key on p */
    unsigned                      proved:1;
    unsigned                      known:1;   /* the zone knew the key */
    unsigned                      keyed:1;   /* the browser got fresh */
} ngx_http_civchat_rules_t;


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
static ngx_http_civchat_profile_t *ngx_http_civchat_rules_create(
    ngx_http_civchat_rules_t *rc, ngx_uint_t adopt);
static ngx_int_t ngx_http_civchat_rules_switch(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, ngx_uint_t proved);
static ngx_int_t ngx_http_civchat_rules_rotate(ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_prove(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, u_char kind);
static void ngx_http_civchat_rules_leave(ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_give(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *p, u_char flags);
static ngx_int_t ngx_http_civchat_rules_merge(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *into);
static ngx_int_t ngx_http_civchat_rules_set(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *p, u_char kind, ngx_str_t *value,
    ngx_uint_t verified);
static ngx_int_t ngx_http_civchat_rules_take(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, u_char kind);
static ngx_int_t ngx_http_civchat_rules_claimed(ngx_http_civchat_rules_t *rc);
static ngx_int_t ngx_http_civchat_rules_unverified(
    ngx_http_civchat_rules_t *rc, u_char kind);
static ngx_int_t ngx_http_civchat_rules_event(ngx_http_civchat_rules_t *rc,
    ngx_uint_t type, ngx_str_t *name, const char *field, ngx_str_t *value);
static ngx_int_t ngx_http_civchat_index_is(ngx_http_civchat_index_t *ix,
    ngx_str_t *value);
static ngx_int_t ngx_http_civchat_copy_index(ngx_pool_t *pool,
    ngx_http_civchat_index_t *ix, ngx_str_t *out);


#define ngx_http_civchat_rules_valid(rc)                                     \
    ((rc)->plan->trusted                                                     \
     || ((rc)->plan->verify                                                  \
         && (rc)->plan->proof == NGX_HTTP_CIVCHAT_PROOF_VALID))

#define ngx_http_civchat_rules_index(p, kind)                                \
    (((kind) == NGX_HTTP_CIVCHAT_BY_USER_ID) ? &(p)->user_id : &(p)->email)

#define ngx_http_civchat_rules_value(rc, kind)                               \
    (((kind) == NGX_HTTP_CIVCHAT_BY_USER_ID) ? &(rc)->plan->user_id          \
                                             : &(rc)->plan->email)

#define ngx_http_civchat_anonymous(p)                                        \
    ((p)->user_id.len == 0 && (p)->email.len == 0)


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
        r.p = (r.k != NULL) ? r.k : ngx_http_civchat_rules_create(&r, 1);
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

    } else if (ngx_http_civchat_copy_index(res->pool, &r.p->key,
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

    rc->p = (rc->k != NULL) ? rc->k : ngx_http_civchat_rules_create(rc, 1);

    if (rc->p == NULL) {
        return NGX_ERROR;
    }

    if (plan->email.len) {
        /* the legacy behaviour: the email is an attribute, duplicates ok */
        return ngx_http_civchat_rules_set(rc, rc->p,
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

        n = ngx_http_civchat_rules_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                       &plan->user_id,
                                       ngx_http_civchat_rules_valid(rc));
        if (n == NGX_OK) {
            n = ngx_http_civchat_rules_rotate(rc);
        }

    } else if (rc->k != NULL
               && plan->verify && !ngx_http_civchat_rules_valid(rc))
    {
        /* K is someone: only a proof makes it someone else */
        rc->p = rc->k;
        n = ngx_http_civchat_rules_unverified(rc, NGX_HTTP_CIVCHAT_BY_USER_ID);

    } else {
        rc->p = ngx_http_civchat_rules_create(rc, 0);
        if (rc->p == NULL) {
            return NGX_ERROR;
        }

        n = ngx_http_civchat_rules_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                       &plan->user_id,
                                       ngx_http_civchat_rules_valid(rc));

        if (n == NGX_OK && rc->k != NULL) {
            n = ngx_http_civchat_rules_switch(rc, rc->p, 1);
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
            return ngx_http_civchat_rules_prove(rc, x, kind);
        }

        return NGX_OK;
    }

    if (!rc->plan->verify) {
        /* User.com's rule: the claim switches, and sees nothing */
        return ngx_http_civchat_rules_switch(rc, x, 0);
    }

    if (!valid) {
        rc->p = (rc->k != NULL) ? rc->k
                                : ngx_http_civchat_rules_create(rc, 1);

        if (rc->p == NULL) {
            return NGX_ERROR;
        }

        return ngx_http_civchat_rules_unverified(rc, kind);
    }

    if (!(ix->flags & NGX_HTTP_CIVCHAT_ID_VERIFIED)) {
        /* a proof beats a claim: the claimer's sessions end */
        ix->flags |= NGX_HTTP_CIVCHAT_ID_VERIFIED;
        ngx_http_civchat_store_revoke(rc->zone, x, NULL);
        rc->zone->sh->changes++;
    }

    return ngx_http_civchat_rules_switch(rc, x, 1);
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
            if (ngx_http_civchat_rules_merge(rc, k, x) != NGX_OK) {
                return NGX_ERROR;
            }
        }

        return ngx_http_civchat_rules_held(rc, x, NGX_HTTP_CIVCHAT_BY_EMAIL);
    }

    if (valid && plan->verify
        && !(x->email.flags & NGX_HTTP_CIVCHAT_ID_VERIFIED))
    {
        /* a proof beats a claim: the email moves to the prover */
        if (ngx_http_civchat_rules_take(rc, x, NGX_HTTP_CIVCHAT_BY_EMAIL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        return ngx_http_civchat_rules_email_unheld(rc);
    }

    /* knowing an email must not hand over someone's profile */

    rc->p = (k != NULL) ? k : ngx_http_civchat_rules_create(rc, 1);

    if (rc->p == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_civchat_rules_claimed(rc);
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
        rc->p = ngx_http_civchat_rules_create(rc, 0);
        if (rc->p == NULL) {
            return NGX_ERROR;
        }

        return ngx_http_civchat_rules_set(rc, rc->p,
                                          NGX_HTTP_CIVCHAT_BY_EMAIL,
                                          &plan->email, valid);
    }

    if (rc->k->email.len == 0) {
        rc->p = rc->k;

        n = ngx_http_civchat_rules_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                       &plan->email, valid);

        return (n == NGX_OK) ? ngx_http_civchat_rules_rotate(rc) : n;
    }

    if (plan->verify && !valid) {
        rc->p = rc->k;
        return ngx_http_civchat_rules_unverified(rc,
                                                 NGX_HTTP_CIVCHAT_BY_EMAIL);
    }

    /* K has another email: a new profile with this one */

    rc->p = ngx_http_civchat_rules_create(rc, 0);
    if (rc->p == NULL) {
        return NGX_ERROR;
    }

    n = ngx_http_civchat_rules_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                   &plan->email, valid);

    return (n == NGX_OK) ? ngx_http_civchat_rules_switch(rc, rc->p, 1) : n;
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

    ngx_http_civchat_rules_leave(rc);
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
            rc->p = ngx_http_civchat_rules_create(rc, 0);
            if (rc->p == NULL
                || ngx_http_civchat_rules_set(rc, rc->p,
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
        rc->p = ngx_http_civchat_rules_create(rc, 0);
        return (rc->p != NULL) ? NGX_OK : NGX_ERROR;
    }

    x = ngx_http_civchat_store_find(rc->zone, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                    &plan->email);

    if (x != NULL && plan->unified && plan->authorize) {
        return ngx_http_civchat_rules_held(rc, x, NGX_HTTP_CIVCHAT_BY_EMAIL);
    }

    rc->p = ngx_http_civchat_rules_create(rc, 0);
    if (rc->p == NULL) {
        return NGX_ERROR;
    }

    if (x != NULL && plan->unified) {
        return ngx_http_civchat_rules_claimed(rc);
    }

    return ngx_http_civchat_rules_set(rc, rc->p, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                      &plan->email,
                                      ngx_http_civchat_rules_valid(rc));
}


/* client.update: never switches; identities only where free */

static ngx_int_t
ngx_http_civchat_rules_update(ngx_http_civchat_rules_t *rc)
{
    ngx_http_civchat_plan_t  *plan;

    plan = rc->plan;

    rc->p = (rc->k != NULL) ? rc->k : ngx_http_civchat_rules_create(rc, 1);

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
        return ngx_http_civchat_rules_unverified(rc, kind);
    }

    identifies = (kind == NGX_HTTP_CIVCHAT_BY_USER_ID)
                 || (rc->plan->unified && rc->plan->user_id.len == 0);

    n = ngx_http_civchat_rules_set(rc, p, kind, value, valid);

    if (n != NGX_OK || !identifies || rc->plan->op >= NGX_HTTP_CIVCHAT_OP_READ)
    {
        return n;
    }

    return ngx_http_civchat_rules_rotate(rc);
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
            && ngx_http_civchat_rules_set(rc, p, plan->by_kind, &plan->by_id,
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


/*
 * A new profile.  "adopt" takes the browser's well-formed key that the
 * zone has never known, so that identity survives a lost zone and
 * User.com's cookies keep working; otherwise the fresh key.  A key from
 * an e-mail link is only noted on its user_created event.
 */

static ngx_http_civchat_profile_t *
ngx_http_civchat_rules_create(ngx_http_civchat_rules_t *rc, ngx_uint_t adopt)
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

static ngx_int_t
ngx_http_civchat_rules_switch(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, ngx_uint_t proved)
{
    ngx_str_t  from;

    ngx_str_null(&from);

    if (rc->k != NULL
        && ngx_http_civchat_copy_index(rc->res->pool, &rc->k->key, &from)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_civchat_rules_leave(rc);

    if (ngx_http_civchat_rules_give(rc, x,
                                    proved ? 0 : NGX_HTTP_CIVCHAT_KEY_UNPROVED)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc->p = x;
    rc->proved = proved;

    ngx_http_civchat_store_touch(rc->zone, x);

    return ngx_http_civchat_rules_event(rc,
                                        NGX_HTTP_CIVCHAT_EV_USER_IDENTIFIED,
                                        NULL, from.len ? "from" : NULL,
                                        &from);
}


/* K gained an identity: the browser gets a new key, as proved as before */

static ngx_int_t
ngx_http_civchat_rules_rotate(ngx_http_civchat_rules_t *rc)
{
    u_char  flags;

    if (rc->keyed || rc->session == NULL) {
        return NGX_OK;
    }

    flags = rc->proved ? 0 : NGX_HTTP_CIVCHAT_KEY_UNPROVED;

    ngx_http_civchat_rules_leave(rc);

    return ngx_http_civchat_rules_give(rc, rc->p, flags);
}


/*
 * The browser proves the identity of its own profile: the identity is
 * verified, every other session of the profile ends (they may have
 * been got by a mere claim), and the browser gets a proved key.
 */

static ngx_int_t
ngx_http_civchat_rules_prove(ngx_http_civchat_rules_t *rc,
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
        ngx_http_civchat_rules_leave(rc);
    }

    rc->proved = 1;

    return ngx_http_civchat_rules_give(rc, x, 0);
}


/* the browser's key will not resolve again */

static void
ngx_http_civchat_rules_leave(ngx_http_civchat_rules_t *rc)
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

static ngx_int_t
ngx_http_civchat_rules_give(ngx_http_civchat_rules_t *rc,
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

static ngx_int_t
ngx_http_civchat_rules_merge(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *into)
{
    ngx_str_t  name, fa, ia, text;

    if (ngx_http_civchat_copy_index(rc->res->pool, &from->key, &name)
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

    return ngx_http_civchat_rules_event(rc, NGX_HTTP_CIVCHAT_EV_USER_MERGED,
                                        &name, "from", &name);
}


/*
 * user_id or email of a profile, verified or a claim; profile_updated
 * {"old", "new"} when the value changes.
 */

static ngx_int_t
ngx_http_civchat_rules_set(ngx_http_civchat_rules_t *rc,
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

    if (ngx_http_civchat_copy_index(rc->res->pool, ix, &old) != NGX_OK) {
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

static ngx_int_t
ngx_http_civchat_rules_take(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, u_char kind)
{
    ngx_str_t                  old, key, user_id, email, attrs;
    ngx_http_civchat_event_t  *ev;

    if (ngx_http_civchat_copy_index(rc->res->pool, &x->key, &key) != NGX_OK
        || ngx_http_civchat_copy_index(rc->res->pool, &x->user_id, &user_id)
           != NGX_OK
        || ngx_http_civchat_copy_index(rc->res->pool, &x->email, &email)
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

static ngx_int_t
ngx_http_civchat_rules_claimed(ngx_http_civchat_rules_t *rc)
{
    if (ngx_http_civchat_ignore(rc->res->pool, rc->res->ignored, "email", 5,
                                "conflict")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_civchat_rules_event(rc,
                                        NGX_HTTP_CIVCHAT_EV_EMAIL_CLAIMED,
                                        NULL, "email", &rc->plan->email);
}


static ngx_int_t
ngx_http_civchat_rules_unverified(ngx_http_civchat_rules_t *rc, u_char kind)
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

static ngx_int_t
ngx_http_civchat_rules_event(ngx_http_civchat_rules_t *rc, ngx_uint_t type,
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


static ngx_int_t
ngx_http_civchat_index_is(ngx_http_civchat_index_t *ix, ngx_str_t *value)
{
    return ix->len && ix->len == value->len
           && ngx_memcmp(ix->data, value->data, value->len) == 0;
}


static ngx_int_t
ngx_http_civchat_copy_index(ngx_pool_t *pool, ngx_http_civchat_index_t *ix,
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
