
/*
 * Copyright (C) civchat developers
 */


#ifndef _NGX_HTTP_CIVCHAT_RULES_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_RULES_H_INCLUDED_


/*
 * What the identity rules (rules.c) and the browser's sessions of a
 * profile (session.c) share, under the zone's lock; nothing else
 * includes this.
 */


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


#define ngx_http_civchat_rules_valid(rc)                                     \
    ((rc)->plan->trusted                                                     \
     || ((rc)->plan->verify                                                  \
         && (rc)->plan->proof == NGX_HTTP_CIVCHAT_PROOF_VALID))

#define ngx_http_civchat_rules_index(p, kind)                                \
    (((kind) == NGX_HTTP_CIVCHAT_BY_USER_ID) ? &(p)->user_id : &(p)->email)

#define ngx_http_civchat_anonymous(p)                                        \
    ((p)->user_id.len == 0 && (p)->email.len == 0)


ngx_http_civchat_profile_t *ngx_http_civchat_session_create(
    ngx_http_civchat_rules_t *rc, ngx_uint_t adopt);
ngx_int_t ngx_http_civchat_session_switch(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, ngx_uint_t proved);
ngx_int_t ngx_http_civchat_session_rotate(ngx_http_civchat_rules_t *rc);
ngx_int_t ngx_http_civchat_session_prove(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, u_char kind);
void ngx_http_civchat_session_leave(ngx_http_civchat_rules_t *rc);
ngx_int_t ngx_http_civchat_session_give(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *p, u_char flags);
ngx_int_t ngx_http_civchat_session_merge(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *into);
ngx_int_t ngx_http_civchat_session_set(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *p, u_char kind, ngx_str_t *value,
    ngx_uint_t verified);
ngx_int_t ngx_http_civchat_session_take(ngx_http_civchat_rules_t *rc,
    ngx_http_civchat_profile_t *x, u_char kind);
ngx_int_t ngx_http_civchat_session_claimed(ngx_http_civchat_rules_t *rc);
ngx_int_t ngx_http_civchat_session_unverified(
    ngx_http_civchat_rules_t *rc, u_char kind);
ngx_int_t ngx_http_civchat_session_event(ngx_http_civchat_rules_t *rc,
    ngx_uint_t type, ngx_str_t *name, const char *field, ngx_str_t *value);
ngx_int_t ngx_http_civchat_index_is(ngx_http_civchat_index_t *ix,
    ngx_str_t *value);
ngx_int_t ngx_http_civchat_index_copy(ngx_pool_t *pool,
    ngx_http_civchat_index_t *ix, ngx_str_t *out);


#endif /* _NGX_HTTP_CIVCHAT_RULES_H_INCLUDED_ */
