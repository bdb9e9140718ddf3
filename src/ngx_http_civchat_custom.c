
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * What a request records besides its page view, checked before anything
 * is resolved: a custom event ({"event": NAME, "attributes": {...}}), a
 * product event, what the visitor typed in the chat panel, and the
 * event that may ride along with a page_hit.  Event data is kept as
 * sent, nested values included; it never identifies anyone.
 */


static ngx_int_t ngx_http_civchat_check_event(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs);
static ngx_int_t ngx_http_civchat_check_product(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs);
static ngx_int_t ngx_http_civchat_check_message(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs);


static ngx_str_t  ngx_http_civchat_product_types[] = {
    ngx_string("add to cart"),
    ngx_string("purchase"),
    ngx_string("liking"),
    ngx_string("add to observation"),
    ngx_string("order"),
    ngx_string("reservation"),
    ngx_string("return"),
    ngx_string("view"),
    ngx_string("click"),
    ngx_string("detail"),
    ngx_string("add"),
    ngx_string("remove"),
    ngx_string("checkout"),
    ngx_string("checkout option"),
    ngx_string("refund"),
    ngx_string("promo click"),
    ngx_null_string
};


/*
 * The event an endpoint records from its body, or nothing (*attrs stays
 * NULL); an error answer was sent when this returns other than NGX_OK.
 */

ngx_int_t
ngx_http_civchat_custom_check(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs)
{
    ngx_str_null(name);
    *attrs = NULL;

    switch (ctx->endpoint) {

    case NGX_HTTP_CIVCHAT_EVENT:
        return ngx_http_civchat_check_event(r, ctx, name, attrs);

    case NGX_HTTP_CIVCHAT_PRODUCT_EVENT:
        return ngx_http_civchat_check_product(r, ctx, name, attrs);

    case NGX_HTTP_CIVCHAT_MESSAGE:
        return ngx_http_civchat_check_message(r, ctx, name, attrs);

    default:
        return NGX_OK;
    }
}


static ngx_int_t
ngx_http_civchat_check_event(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs)
{
    json_t      *v;
    const char  *reason;

    v = json_object_get(ctx->body, "event");

    if (v == NULL || json_is_null(v)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "event is required");
    }

    if (!json_is_string(v)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "event must be a string");
    }

    if (ngx_http_civchat_normalize_name(r->pool,
                                        (u_char *) json_string_value(v),
                                        json_string_length(v), name, &reason)
        != NGX_OK)
    {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event",
                                      "event name is not usable (%s)",
                                      reason ? reason : "no memory");
    }

    v = json_object_get(ctx->body, "attributes");

    if (v == NULL || json_is_null(v)) {
        *attrs = json_object();
        return (*attrs != NULL) ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!json_is_object(v)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "attributes must be a JSON object");
    }

    /* event data is kept as sent, nested values included */
    *attrs = json_incref(v);

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_check_product(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs)
{
    json_t      *id, *type, *v;
    ngx_str_t   *t, field;
    const char  *key;

    id = json_object_get(ctx->body, "product_id");

    if (id == NULL || json_is_null(id)
        || (json_is_string(id) && json_string_length(id) == 0))
    {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "product_id is required");
    }

    if (!json_is_string(id) && !json_is_integer(id)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "product_id must be a string or "
                                      "an integer");
    }

    type = json_object_get(ctx->body, "event_type");

    if (type == NULL || json_is_null(type)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "event_type is required");
    }

    for (t = ngx_http_civchat_product_types; t->len; t++) {
        if (json_is_string(type) && json_string_length(type) == t->len
            && ngx_strncasecmp((u_char *) json_string_value(type), t->data,
                               t->len) == 0)
        {
            break;
        }
    }

    if (t->len == 0) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "event_type must be one of: add to "
                                      "cart, purchase, liking, add to "
                                      "observation, order, reservation, "
                                      "return, view, click, detail, add, "
                                      "remove, checkout, checkout option, "
                                      "refund, promo click");
    }

    *name = *t;

    /* the product data without the request's own fields */
    *attrs = json_deep_copy(ctx->body);
    if (*attrs == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_foreach(ctx->body, key, v) {
        field.data = (u_char *) key;
        field.len = ngx_strlen(key);

        if (ngx_http_civchat_reserved(&field)
            && ngx_strcmp(key, "event") != 0)
        {
            json_object_del(*attrs, key);
        }
    }

    return NGX_OK;
}


/* what the visitor typed in the chat panel */

static ngx_int_t
ngx_http_civchat_check_message(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs)
{
    json_t  *v;

    v = json_object_get(ctx->body, "content");

    if (!json_is_string(v) || json_string_length(v) == 0) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "content is required");
    }

    if (json_string_length(v) > NGX_HTTP_CIVCHAT_CONTEXT_MAX) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "content is longer than 4096 bytes");
    }

    *attrs = json_pack("{s:O,s:b}", "content", v, "isAdmin", 0);

    return (*attrs != NULL) ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* page_hit's optional {"event": {"event_name": ..., ...}} */

ngx_int_t
ngx_http_civchat_custom_piggyback(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    json_t      *ev, *v, *data;
    ngx_int_t    rc;
    ngx_str_t    name;
    const char  *reason;

    ev = json_object_get(ctx->body, "event");

    if (ev == NULL || json_is_null(ev)) {
        return NGX_OK;
    }

    v = json_object_get(ev, "event_name");

    if (!json_is_object(ev) || !json_is_string(v)
        || ngx_http_civchat_normalize_name(r->pool,
                                           (u_char *) json_string_value(v),
                                           json_string_length(v), &name,
                                           &reason)
           != NGX_OK)
    {
        return ngx_http_civchat_ignore(r->pool, &ctx->ignored, "event", 5,
                                       "invalid_event");
    }

    data = json_deep_copy(ev);
    if (data == NULL) {
        return NGX_ERROR;
    }

    json_object_del(data, "event_name");

    rc = ngx_http_civchat_add_event_json(r, ctx, NGX_HTTP_CIVCHAT_EV_EVENT,
                                         &name, data);

    json_decref(data);

    return rc;
}
