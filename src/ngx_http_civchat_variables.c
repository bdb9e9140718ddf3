
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * $civchat_user_key, $civchat_user_id, $civchat_country, $civchat_city.
 * In a civchat request they show what the request resolved; in any
 * other request (a page proxied to the application, an access log line)
 * they come from the visitor cookie, the profile zone and GeoIP.
 */


#define NGX_HTTP_CIVCHAT_VAR_KEY       0
#define NGX_HTTP_CIVCHAT_VAR_USER_ID   1
#define NGX_HTTP_CIVCHAT_VAR_COUNTRY   2
#define NGX_HTTP_CIVCHAT_VAR_CITY      3


static ngx_int_t ngx_http_civchat_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_http_civchat_ctx_t *ngx_http_civchat_variable_ctx(
    ngx_http_request_t *r);
static void ngx_http_civchat_variable_user(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_http_civchat_zone_t *ngx_http_civchat_variable_zone(
    ngx_http_request_t *r, ngx_http_civchat_loc_conf_t *lcf);


static ngx_http_variable_t  ngx_http_civchat_vars[] = {

    { ngx_string("civchat_user_key"), NULL, ngx_http_civchat_variable,
      NGX_HTTP_CIVCHAT_VAR_KEY, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("civchat_user_id"), NULL, ngx_http_civchat_variable,
      NGX_HTTP_CIVCHAT_VAR_USER_ID, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("civchat_country"), NULL, ngx_http_civchat_variable,
      NGX_HTTP_CIVCHAT_VAR_COUNTRY, 0, 0 },

    { ngx_string("civchat_city"), NULL, ngx_http_civchat_variable,
      NGX_HTTP_CIVCHAT_VAR_CITY, 0, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_civchat_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_civchat_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t               *s;
    ngx_http_civchat_ctx_t  *ctx;

    ctx = ngx_http_civchat_variable_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    switch (data) {

    case NGX_HTTP_CIVCHAT_VAR_KEY:
        ngx_http_civchat_variable_user(r, ctx);
        s = &ctx->user.key;
        break;

    case NGX_HTTP_CIVCHAT_VAR_USER_ID:
        ngx_http_civchat_variable_user(r, ctx);
        s = &ctx->user.user_id;
        break;

    case NGX_HTTP_CIVCHAT_VAR_COUNTRY:
        s = &ngx_http_civchat_geo(r, ctx)->country;
        break;

    default: /* NGX_HTTP_CIVCHAT_VAR_CITY */
        s = &ngx_http_civchat_geo(r, ctx)->city;
        break;
    }

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->data = s->data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_http_civchat_ctx_t *
ngx_http_civchat_variable_ctx(ngx_http_request_t *r)
{
    ngx_http_civchat_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);

    if (ctx != NULL) {
        return ctx;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_civchat_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    ctx->lcf = ngx_http_get_module_loc_conf(r, ngx_http_civchat_module);

    ngx_http_set_ctx(r, ctx, ngx_http_civchat_module);

    return ctx;
}


/* outside a civchat request: the cookie's profile, read under the lock */

static void
ngx_http_civchat_variable_user(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    u_char                      *p;
    ngx_http_civchat_zone_t     *zone;
    ngx_http_civchat_profile_t  *pr;

    if (ctx->resolved || ctx->endpoint) {
        return;
    }

    ctx->resolved = 1;

    ngx_http_civchat_read_key(r, ctx);

    if (ctx->key.len == 0) {
        return;
    }

    ctx->user.key = ctx->key;

    zone = ngx_http_civchat_variable_zone(r, ctx->lcf);
    if (zone == NULL) {
        return;
    }

    ngx_http_civchat_store_lock(zone);

    pr = ngx_http_civchat_store_find(zone, NGX_HTTP_CIVCHAT_BY_KEY,
                                     &ctx->key);

    if (pr != NULL) {
        p = ngx_pnalloc(r->pool, pr->key.len + pr->user_id.len);
        if (p != NULL) {
            /* an alias shows the profile's own key */
            ctx->user.key.data = p;
            ctx->user.key.len = pr->key.len;
            p = ngx_cpymem(p, pr->key.data, pr->key.len);

            if (pr->user_id.len) {
                ctx->user.user_id.data = p;
                ctx->user.user_id.len = pr->user_id.len;
                ngx_memcpy(p, pr->user_id.data, pr->user_id.len);
            }
        }
    }

    ngx_http_civchat_store_unlock(zone);
}


static ngx_http_civchat_zone_t *
ngx_http_civchat_variable_zone(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf)
{
    ngx_http_civchat_zone_t      **zones;
    ngx_http_civchat_main_conf_t  *mcf;

    if (lcf->enable) {
        return lcf->zone;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);

    if (mcf->zones->nelts == 0) {
        return NULL;
    }

    zones = mcf->zones->elts;

    return zones[0];
}
