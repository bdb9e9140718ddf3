
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The one table of what each endpoint is: its path under the location,
 * the methods it takes, what it does with a body and which event it
 * records.  The dispatcher, the plan, the answers and the status page
 * read it; the names of the event types are here too.
 */


#define NGX_HTTP_CIVCHAT_GET_HEAD  (NGX_HTTP_GET|NGX_HTTP_HEAD)


static const ngx_http_civchat_endpoint_t  ngx_http_civchat_endpoints[] = {

    /* NGX_HTTP_CIVCHAT_UNKNOWN: 404s are counted under this name */
    { ngx_string("unknown"), 0, ngx_null_string, 0,
      NGX_HTTP_CIVCHAT_EV_NONE },

    { ngx_string("init"), NGX_HTTP_POST, ngx_string("POST, OPTIONS"),
      NGX_HTTP_CIVCHAT_EP_JSON|NGX_HTTP_CIVCHAT_EP_VISIT
      |NGX_HTTP_CIVCHAT_EP_ATTRS|NGX_HTTP_CIVCHAT_EP_PROFILE,
      NGX_HTTP_CIVCHAT_EV_PAGE_VIEW },

    { ngx_string("page_hit"), NGX_HTTP_POST, ngx_string("POST, OPTIONS"),
      NGX_HTTP_CIVCHAT_EP_JSON|NGX_HTTP_CIVCHAT_EP_VISIT
      |NGX_HTTP_CIVCHAT_EP_ATTRS|NGX_HTTP_CIVCHAT_EP_PROFILE,
      NGX_HTTP_CIVCHAT_EV_PAGE_VIEW },

    { ngx_string("reset_auth"), NGX_HTTP_POST, ngx_string("POST, OPTIONS"),
      NGX_HTTP_CIVCHAT_EP_JSON|NGX_HTTP_CIVCHAT_EP_ATTRS
      |NGX_HTTP_CIVCHAT_EP_PROFILE,
      NGX_HTTP_CIVCHAT_EV_NONE },

    { ngx_string("update"), NGX_HTTP_POST, ngx_string("POST, OPTIONS"),
      NGX_HTTP_CIVCHAT_EP_JSON|NGX_HTTP_CIVCHAT_EP_ATTRS
      |NGX_HTTP_CIVCHAT_EP_PROFILE,
      NGX_HTTP_CIVCHAT_EV_NONE },

    { ngx_string("event"), NGX_HTTP_POST, ngx_string("POST, OPTIONS"),
      NGX_HTTP_CIVCHAT_EP_JSON|NGX_HTTP_CIVCHAT_EP_PROFILE,
      NGX_HTTP_CIVCHAT_EV_EVENT },

    { ngx_string("product_event"), NGX_HTTP_POST,
      ngx_string("POST, OPTIONS"),
      NGX_HTTP_CIVCHAT_EP_JSON|NGX_HTTP_CIVCHAT_EP_PROFILE,
      NGX_HTTP_CIVCHAT_EV_PRODUCT_EVENT },

    { ngx_string("p.gif"), NGX_HTTP_CIVCHAT_GET_HEAD,
      ngx_string("GET, HEAD, OPTIONS"),
      NGX_HTTP_CIVCHAT_EP_VISIT|NGX_HTTP_CIVCHAT_EP_PROFILE,
      NGX_HTTP_CIVCHAT_EV_PAGE_VIEW },

    { ngx_string("stream"), NGX_HTTP_CIVCHAT_GET_HEAD,
      ngx_string("GET, HEAD, OPTIONS"), 0,
      NGX_HTTP_CIVCHAT_EV_NONE },

    { ngx_string("message"), NGX_HTTP_POST, ngx_string("POST, OPTIONS"),
      NGX_HTTP_CIVCHAT_EP_JSON|NGX_HTTP_CIVCHAT_EP_PROFILE,
      NGX_HTTP_CIVCHAT_EV_CHAT_MESSAGE },

    { ngx_string("widget.js"), NGX_HTTP_CIVCHAT_GET_HEAD,
      ngx_string("GET, HEAD, OPTIONS"), 0,
      NGX_HTTP_CIVCHAT_EV_NONE },

    /* NGX_HTTP_CIVCHAT_OPTIONS: CORS preflights of any path */
    { ngx_string("options"), NGX_HTTP_OPTIONS, ngx_null_string, 0,
      NGX_HTTP_CIVCHAT_EV_NONE }
};


static const char  *ngx_http_civchat_event_types[] = {
    "user_created",
    "page_view",
    "event",
    "product_event",
    "profile_updated",
    "user_identified",
    "user_merged",
    "email_claimed",
    "auth_reset",
    "user_deleted",
    "chat_message",
    "other"
};


const ngx_http_civchat_endpoint_t *
ngx_http_civchat_endpoint_info(ngx_uint_t endpoint)
{
    if (endpoint >= NGX_HTTP_CIVCHAT_ENDPOINTS) {
        endpoint = NGX_HTTP_CIVCHAT_UNKNOWN;
    }

    return &ngx_http_civchat_endpoints[endpoint];
}


const char *
ngx_http_civchat_event_name(ngx_uint_t type)
{
    if (type >= NGX_HTTP_CIVCHAT_EVENT_TYPES) {
        type = NGX_HTTP_CIVCHAT_EV_NONE;
    }

    return ngx_http_civchat_event_types[type];
}


/*
 * Which endpoint a URI names: the rest of the URI after a prefix
 * location ("/civchat/init"), or the last path segment of a regex or
 * exact location.
 */

ngx_uint_t
ngx_http_civchat_endpoint(ngx_http_request_t *r, ngx_str_t *location)
{
    u_char      *p, *last;
    ngx_str_t    name;
    ngx_uint_t   i;

    last = r->uri.data + r->uri.len;

    if (r->uri.len > location->len && location->len
        && ngx_strncmp(r->uri.data, location->data, location->len) == 0
        && location->data[location->len - 1] == '/')
    {
        p = r->uri.data + location->len;

    } else {
        for (p = last; p > r->uri.data && p[-1] != '/'; p--) {
            /* void */
        }
    }

    name.data = p;
    name.len = last - p;

    /* the first and the last are no paths */

    for (i = 1; i < NGX_HTTP_CIVCHAT_OPTIONS; i++) {
        if (ngx_http_civchat_endpoints[i].name.len == name.len
            && ngx_strncmp(ngx_http_civchat_endpoints[i].name.data,
                           name.data, name.len)
               == 0)
        {
            return i;
        }
    }

    return NGX_HTTP_CIVCHAT_UNKNOWN;
}
