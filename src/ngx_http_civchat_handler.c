
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The content handler of a civchat location: dispatch by path and
 * method (endpoint.c says which endpoint takes what), CORS, media type
 * and size checks, then the body, and for each request the same steps:
 * what it records (custom.c), its plan and its profile (plan.c, which
 * applies the plan to the zone), its events and its answer.  Requests
 * are strict only where the request as a whole is wrong; a bad field is
 * the plan's business.
 */


static ngx_int_t ngx_http_civchat_preflight(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);
static ngx_int_t ngx_http_civchat_media_type(ngx_http_request_t *r);
static void ngx_http_civchat_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_civchat_process(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_process_parsed(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static void ngx_http_civchat_resolved(ngx_http_request_t *r, ngx_int_t rc);
static ngx_int_t ngx_http_civchat_process_resolved(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc);
static ngx_int_t ngx_http_civchat_back_pressure(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_record(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t *attrs);
static ngx_int_t ngx_http_civchat_pixel(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);
static ngx_int_t ngx_http_civchat_pixel_arg(ngx_http_request_t *r,
    json_t *body, const char *name, const char *arg);
static ngx_int_t ngx_http_civchat_api_key(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
static ngx_int_t ngx_http_civchat_unprofiled(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t *attrs);


ngx_int_t
ngx_http_civchat_handler(ngx_http_request_t *r)
{
    ngx_int_t                           rc;
    ngx_uint_t                          endpoint;
    ngx_http_civchat_ctx_t             *ctx;
    ngx_http_civchat_loc_conf_t        *lcf;
    const ngx_http_civchat_endpoint_t  *ep;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_civchat_module);

    if (r->method == NGX_HTTP_OPTIONS) {
        return ngx_http_civchat_preflight(r, lcf);
    }

    endpoint = ngx_http_civchat_endpoint(r, &lcf->location);

    if (endpoint == NGX_HTTP_CIVCHAT_UNKNOWN) {
        return ngx_http_civchat_reject(r, NGX_HTTP_NOT_FOUND, "not_found",
                                       "unknown civchat endpoint");
    }

    ep = ngx_http_civchat_endpoint_info(endpoint);

    if (!(r->method & ep->methods)) {
        return ngx_http_civchat_not_allowed(r, endpoint);
    }

    if (endpoint == NGX_HTTP_CIVCHAT_WIDGET) {
        return ngx_http_civchat_widget_handler(r, lcf);
    }

    /* a widget on another site calls, and reads its stream, with CORS */
    if (ngx_http_civchat_check_origin(r, lcf, &rc) != NGX_OK) {
        return rc;
    }

    if (endpoint == NGX_HTTP_CIVCHAT_STREAM) {
        return ngx_http_civchat_stream_handler(r, lcf);
    }

    if (endpoint == NGX_HTTP_CIVCHAT_PIXEL) {
        return ngx_http_civchat_pixel(r, lcf);
    }

    if (ngx_http_civchat_media_type(r) != NGX_OK) {
        return ngx_http_civchat_reject(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                       "unsupported_media_type",
                                       "send the body as application/json "
                                       "or text/plain");
    }

    if (r->headers_in.content_length_n > (off_t) lcf->body_limit) {
        return ngx_http_civchat_reject(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                       "body_too_large",
                                       "the request body is over "
                                       "civchat_body_limit");
    }

    ctx = ngx_http_civchat_new_ctx(r, lcf, endpoint, 0);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_civchat_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/*
 * The no-JavaScript page view: <img src="/civchat/p.gif?apiKey=KEY">.
 * The query stands in for the body (apiKey, url, referrer, title; the
 * page defaults to the Referer) and the answer is a GIF with the cookie.
 */

static ngx_int_t
ngx_http_civchat_pixel(ngx_http_request_t *r, ngx_http_civchat_loc_conf_t *lcf)
{
    ngx_int_t                rc;
    ngx_pool_cleanup_t      *cln;
    ngx_http_civchat_ctx_t  *ctx;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_http_civchat_new_ctx(r, lcf, NGX_HTTP_CIVCHAT_PIXEL, 0);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->body = json_object();
    if (ctx->body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_civchat_json_cleanup;
    cln->data = ctx->body;

    if (ngx_http_civchat_pixel_arg(r, ctx->body, "apiKey", "apiKey")
        != NGX_OK
        || ngx_http_civchat_pixel_arg(r, ctx->body, "url", "url") != NGX_OK
        || ngx_http_civchat_pixel_arg(r, ctx->body, "referrer", "referrer")
           != NGX_OK
        || ngx_http_civchat_pixel_arg(r, ctx->body, "title", "title")
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_civchat_process_parsed(r, ctx);

    if (ctx->waiting) {
        /* for the profile's store: finalized when it has answered */
        r->main->count++;
        return NGX_DONE;
    }

    if (rc == NGX_DONE && ctx->answered) {
        rc = ctx->answer_rc;
    }

    return rc;
}


static ngx_int_t
ngx_http_civchat_pixel_arg(ngx_http_request_t *r, json_t *body,
    const char *name, const char *arg)
{
    u_char     *dst, *src;
    ngx_str_t   value, text;

    if (ngx_http_arg(r, (u_char *) arg, ngx_strlen(arg), &value) != NGX_OK
        || value.len == 0)
    {
        return NGX_OK;
    }

    dst = ngx_pnalloc(r->pool, value.len);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    /*
     * form encoding: '+' is a space; replaced in a copy, so that the
     * request's own arguments ($args) stay as they came
     */
    for (src = value.data; src < value.data + value.len; src++) {
        *dst++ = (*src == '+') ? ' ' : *src;
    }

    dst -= value.len;
    src = dst;
    value.data = dst;
    ngx_unescape_uri(&dst, &src, value.len, 0);
    value.len = dst - value.data;

    /* whatever the query held, only valid UTF-8 goes on */
    ngx_http_civchat_clean_text(r, &value, NGX_HTTP_CIVCHAT_CONTEXT_MAX,
                                &text);

    if (text.len
        && json_object_set_new(body, name,
                               json_stringn((char *) text.data, text.len))
           != 0)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_preflight(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf)
{
    ngx_int_t         rc;
    ngx_str_t         origin, value;
    ngx_table_elt_t  *h;

    rc = ngx_http_civchat_origin(r, lcf, &origin);

    if (rc == NGX_DECLINED) {
        return ngx_http_civchat_reject(r, NGX_HTTP_FORBIDDEN,
                                       "origin_not_allowed",
                                       "this Origin may not call civchat");
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_str_set(&value, "GET, HEAD, POST, OPTIONS");

    if (ngx_http_civchat_add_header(r, "Allow", &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (origin.len) {
        ngx_str_set(&value, "86400");

        if (ngx_http_civchat_add_header(r, "Access-Control-Max-Age", &value)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_str_set(&value, "GET, POST, OPTIONS");

        if (ngx_http_civchat_add_header(r, "Access-Control-Allow-Methods",
                                        &value)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_str_set(&value, "Content-Type");

        h = ngx_http_civchat_find_header(r, "Access-Control-Request-Headers");
        if (h != NULL) {
            value = h->value;
        }

        if (ngx_http_civchat_add_header(r, "Access-Control-Allow-Headers",
                                        &value)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/* JSON as application/json or, from sendBeacon, text/plain; or untyped */

static ngx_int_t
ngx_http_civchat_media_type(ngx_http_request_t *r)
{
    u_char     *p, *last;
    ngx_str_t  *type;

    if (r->headers_in.content_type == NULL) {
        return NGX_OK;
    }

    type = &r->headers_in.content_type->value;
    last = type->data + type->len;

    for (p = type->data; p < last && *p != ';' && *p != ' '; p++) {
        /* void */
    }

    if ((p - type->data == sizeof("application/json") - 1
         && ngx_strncasecmp(type->data, (u_char *) "application/json",
                            p - type->data) == 0)
        || (p - type->data == sizeof("text/plain") - 1
            && ngx_strncasecmp(type->data, (u_char *) "text/plain",
                               p - type->data) == 0))
    {
        return NGX_OK;
    }

    return NGX_DECLINED;
}


static void
ngx_http_civchat_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_http_civchat_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);

    rc = ngx_http_civchat_process(r, ctx);

    if (ctx->waiting) {
        /* the profile's store answers later (ngx_http_civchat_resolved) */
        return;
    }

    if (rc == NGX_DONE && ctx->answered) {
        /* an error answer was sent on the way */
        rc = ctx->answer_rc;
    }

    ngx_http_finalize_request(r, rc);
}


static ngx_int_t
ngx_http_civchat_process(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    ngx_int_t   rc;
    ngx_str_t   body;

    rc = ngx_http_civchat_read_body(r, &body);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_civchat_parse_body(r, ctx, &body);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_civchat_process_parsed(r, ctx);
}


static ngx_int_t
ngx_http_civchat_process_parsed(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    json_t                   *attrs;
    ngx_int_t                 rc;
    ngx_pool_cleanup_t       *cln;
    ngx_http_civchat_plan_t  *plan;

    rc = ngx_http_civchat_api_key(r, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_civchat_custom_check(r, ctx, &ctx->custom_name, &attrs);

    if (attrs != NULL) {
        /* kept until the answer, which may come after a round trip */
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            json_decref(attrs);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_http_civchat_json_cleanup;
        cln->data = attrs;
        ctx->custom_attrs = attrs;
    }

    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_civchat_back_pressure(r, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_http_civchat_context(r, ctx);
    ngx_http_civchat_privacy(r, ctx);

    if (ctx->anonymous || ctx->bot) {
        return ngx_http_civchat_unprofiled(r, ctx, &ctx->custom_name,
                                           ctx->custom_attrs);
    }

    plan = ngx_palloc(r->pool, sizeof(ngx_http_civchat_plan_t));
    if (plan == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_civchat_plan(r, ctx, plan);

    if (rc == NGX_OK) {
        rc = ngx_http_civchat_resolve(r, ctx, plan, NULL,
                                      ngx_http_civchat_resolved);

        if (rc == NGX_DONE) {
            ctx->waiting = 1;
            return NGX_DONE;
        }
    }

    return ngx_http_civchat_process_resolved(r, ctx, rc);
}


/* the profile's store answered after a round trip (a zone on Redis) */

static void
ngx_http_civchat_resolved(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t        *c;
    ngx_http_civchat_ctx_t  *ctx;

    /* finalizing may free the request: its connection is kept first */
    c = r->connection;

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);

    ctx->waiting = 0;

    rc = ngx_http_civchat_process_resolved(r, ctx, rc);

    if (rc == NGX_DONE && ctx->answered) {
        rc = ctx->answer_rc;
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_civchat_process_resolved(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc)
{
    if (rc == NGX_BUSY) {
        /* another tab was given the new key a moment ago */
        return ngx_http_civchat_error(r, NGX_HTTP_CONFLICT, "key_replaced",
                                      "%s", "this visitor key was just "
                                      "replaced; send the request again "
                                      "with the new one");
    }

    if (rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
        return ngx_http_civchat_unavailable(r, "1", "the profile store "
                                            "(Redis) is not answering, retry "
                                            "later");
    }

    if (rc != NGX_OK) {
        return ngx_http_civchat_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "internal_error", "%s",
                                      "the profile could not be stored");
    }

    rc = ngx_http_civchat_record(r, ctx, &ctx->custom_name,
                                 ctx->custom_attrs);

    if (rc != NGX_OK || ngx_http_civchat_emit_events(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_civchat_answer(r, ctx);
}


/* nothing is accepted that could not be kept */

static ngx_int_t
ngx_http_civchat_back_pressure(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    if (ctx->lcf->sink == NULL || !ngx_http_civchat_sink_full(ctx->lcf->sink))
    {
        return NGX_OK;
    }

    return ngx_http_civchat_unavailable(r, "5", "the event store is down "
                                        "and the spool is full, retry "
                                        "later");
}


/* the event the endpoint records, after what resolving it recorded */

static ngx_int_t
ngx_http_civchat_record(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_str_t *name, json_t *attrs)
{
    ngx_int_t                           rc;
    const ngx_http_civchat_endpoint_t  *ep;

    ep = ngx_http_civchat_endpoint_info(ctx->endpoint);

    if (ep->event == NGX_HTTP_CIVCHAT_EV_NONE) {
        return NGX_OK;
    }

    rc = ngx_http_civchat_add_event_json(r, ctx, ep->event,
                                         name->len ? name : NULL, attrs);

    if (rc == NGX_OK && ctx->endpoint == NGX_HTTP_CIVCHAT_PAGE_HIT) {
        rc = ngx_http_civchat_custom_piggyback(r, ctx);
    }

    return rc;
}


static ngx_int_t
ngx_http_civchat_api_key(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    json_t      *v;
    ngx_str_t   *keys;
    ngx_uint_t   i;

    v = json_object_get(ctx->body, "apiKey");

    if (v == NULL) {
        v = json_object_get(ctx->body, "api_key");
    }

    if (v == NULL) {
        v = json_object_get(ctx->body, "app_key");
    }

    if (v == NULL || json_is_null(v)
        || (json_is_string(v) && json_string_length(v) == 0))
    {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "apiKey is required");
    }

    if (json_is_string(v)) {
        keys = ctx->lcf->api_keys->elts;

        for (i = 0; i < ctx->lcf->api_keys->nelts; i++) {
            if (keys[i].len == json_string_length(v)
                && ngx_memcmp(keys[i].data, json_string_value(v),
                              keys[i].len) == 0)
            {
                ctx->site = keys[i];
                return NGX_OK;
            }
        }
    }

    return ngx_http_civchat_error(r, NGX_HTTP_FORBIDDEN, "invalid_api_key",
                                  "%s", "apiKey is not configured for "
                                  "this site");
}


/*
 * Sec-GPC / DNT (with civchat_respect_gpc) and bots: no cookie, no
 * profile.  An opted-out visitor's page views and events are still
 * counted, with no key, address or User-Agent; bots are only counted.
 */

static ngx_int_t
ngx_http_civchat_unprofiled(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t *attrs)
{
    ngx_uint_t                          counted;
    ngx_http_civchat_stats_t           *st;
    const ngx_http_civchat_endpoint_t  *ep;

    st = ngx_http_civchat_stats(r);

    if (ctx->bot) {
        if (st != NULL) {
            ngx_http_civchat_count(r, &st->bots, 1);
        }

        return ngx_http_civchat_answer_unprofiled(r, ctx);
    }

    ngx_str_null(&ctx->ip);
    ngx_str_null(&ctx->user_agent);

    ep = ngx_http_civchat_endpoint_info(ctx->endpoint);
    counted = (ep->flags & NGX_HTTP_CIVCHAT_EP_VISIT) != 0;

    if (counted && st != NULL) {
        ngx_http_civchat_count(r, &st->anonymous, 1);
    }

    if (ep->event != NGX_HTTP_CIVCHAT_EV_NONE
        && ngx_http_civchat_add_event_json(r, ctx, ep->event,
                                           name->len ? name : NULL, attrs)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_civchat_emit_events(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_civchat_answer_unprofiled(r, ctx);
}
