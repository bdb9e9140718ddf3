
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
 * they come from the visitor cookie, the profile zone and GeoIP.  An
 * application may trust $civchat_user_id: it is set only for a browser
 * that proved its profile, and with civchat_identity_secret only when
 * the user_id itself was proved (README "Identity").
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
    ngx_str_t               *s, none;
    ngx_http_civchat_ctx_t  *ctx;

    ngx_str_null(&none);

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

        if (!ctx->user.proved
            || (ctx->lcf->identity != NULL && !ctx->user.user_id_verified))
        {
            /* a claim: nothing an application should act on */
            s = &none;
        }

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


/* outside a civchat request: the cookie's profile, as the zone has it */

static void
ngx_http_civchat_variable_user(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    ngx_str_t                 key, link_key;
    ngx_http_civchat_zone_t  *zone;

    if (ctx->resolved || ctx->endpoint) {
        return;
    }

    ctx->resolved = 1;

    ngx_http_civchat_read_key(r, ctx, &key, &link_key);

    if (key.len == 0) {
        return;
    }

    ctx->user.key = key;

    zone = ngx_http_civchat_variable_zone(r, ctx->lcf);
    if (zone == NULL) {
        return;
    }

    (void) ngx_http_civchat_zone_lookup(zone, &key, r->pool, &ctx->user);
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
