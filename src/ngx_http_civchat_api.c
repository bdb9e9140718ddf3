
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The server API (README "Server API"): a token-protected location where
 * a backend reads, updates and erases profiles and imports many at once.
 *
 *   GET|PUT|POST|DELETE  users/key/ID, users/user_id/ID, users/email/ID
 *   POST                 users            create-or-update by the body
 *   POST                 import           NDJSON or CSV, a result a row
 *                        (import.c: in slices, the answer streamed)
 *   POST                 users/KIND/ID/messages
 *                        {"content": ..., "type": "message" | "payload"}
 *                        to the visitor's live stream (live.c)
 *
 * PUT updates an existing profile, POST creates it when missing.  The
 * attribute rules are the widget's, except that the API may also set
 * user_id and email and remove an attribute with null.
 */


#define NGX_HTTP_CIVCHAT_API_USERS       1
#define NGX_HTTP_CIVCHAT_API_ONE         2
#define NGX_HTTP_CIVCHAT_API_IMPORT      3
#define NGX_HTTP_CIVCHAT_API_MESSAGES    4


typedef struct {
    ngx_uint_t                    route;
    u_char                        kind;
    ngx_str_t                     id;

    /* kept while a zone on Redis answers (ngx_http_civchat_api_resolved) */
    ngx_uint_t                    op;
    ngx_http_civchat_record_t     rec;
    ngx_http_civchat_plan_t       plan;
    json_t                       *data;      /* a message's, then freed */
    ngx_uint_t                    live;
    ngx_str_t                     name;
    unsigned                      publishing:1; /* to Redis */
} ngx_http_civchat_route_t;


static ngx_int_t ngx_http_civchat_api_token(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);
static ngx_int_t ngx_http_civchat_api_route(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_http_civchat_route_t *rt);
static void ngx_http_civchat_api_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_civchat_api_run(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_route_t *rt);
static ngx_int_t ngx_http_civchat_api_one(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, u_char kind, ngx_str_t *id, ngx_uint_t op);
static ngx_int_t ngx_http_civchat_api_one_done(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc);
static void ngx_http_civchat_api_resolved(ngx_http_request_t *r,
    ngx_int_t rc);
static ngx_int_t ngx_http_civchat_api_profile(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, u_char kind, ngx_str_t *id, ngx_uint_t op,
    ngx_http_civchat_resolved_pt handler);
static json_t *ngx_http_civchat_api_user(ngx_http_request_t *r,
    ngx_http_civchat_user_t *u, ngx_http_civchat_record_t *rec);
static json_t *ngx_http_civchat_api_string(ngx_str_t *s);
static ngx_uint_t ngx_http_civchat_api_claimed(ngx_http_civchat_ctx_t *ctx,
    u_char kind);
static ngx_int_t ngx_http_civchat_api_message(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_route_t *rt);
static ngx_int_t ngx_http_civchat_api_message_done(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc);
static ngx_int_t ngx_http_civchat_api_message_sent(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc);
static ngx_int_t ngx_http_civchat_api_url_id(ngx_http_request_t *r,
    ngx_http_civchat_route_t *rt);
static void ngx_http_civchat_api_cleanup(void *data);
static ngx_int_t ngx_http_civchat_api_send(ngx_http_request_t *r,
    ngx_uint_t status, json_t *answer);
static ngx_int_t ngx_http_civchat_api_type_is(ngx_http_request_t *r,
    const char *type);


ngx_int_t
ngx_http_civchat_api_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_str_t                     challenge;
    ngx_http_civchat_ctx_t       *ctx;
    ngx_http_civchat_route_t     *rt;
    ngx_http_civchat_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_civchat_module);

    if (ngx_http_civchat_api_token(r, lcf) != NGX_OK) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        ngx_str_set(&challenge, "Bearer realm=\"civchat\"");

        if (ngx_http_civchat_add_header(r, "WWW-Authenticate", &challenge)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_civchat_error(r, NGX_HTTP_UNAUTHORIZED,
                                      "unauthorized", "%s",
                                      "a valid API token is required "
                                      "(Authorization: Bearer TOKEN)");
    }

    ctx = ngx_http_civchat_new_ctx(r, lcf, NGX_HTTP_CIVCHAT_UPDATE,
                                   sizeof(ngx_http_civchat_route_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rt = (ngx_http_civchat_route_t *) (ctx + 1);

    if (ngx_http_civchat_api_route(r, lcf, rt) != NGX_OK) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        rc = ngx_http_civchat_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                    "%s", "unknown API route");

        /* with a context, an error answer reports how it was sent */
        return ctx->answered ? ctx->answer_rc : rc;
    }

    ctx->api = 1;
    ctx->site = lcf->api_site;

    rc = ngx_http_read_client_request_body(r, ngx_http_civchat_api_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* Authorization: Bearer TOKEN, compared in constant time */

static ngx_int_t
ngx_http_civchat_api_token(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf)
{
    u_char      diff;
    ngx_str_t   got;
    ngx_uint_t  i;

    if (r->headers_in.authorization == NULL || lcf->api_token.len == 0) {
        return NGX_DECLINED;
    }

    got = r->headers_in.authorization->value;

    if (got.len < 7 || ngx_strncasecmp(got.data, (u_char *) "Bearer ", 7)
                       != 0)
    {
        return NGX_DECLINED;
    }

    got.data += 7;
    got.len -= 7;

    diff = (u_char) (got.len != lcf->api_token.len);

    for (i = 0; i < lcf->api_token.len; i++) {
        diff |= lcf->api_token.data[i] ^ got.data[i % (got.len ? got.len : 1)];
    }

    return diff ? NGX_DECLINED : NGX_OK;
}


static ngx_int_t
ngx_http_civchat_api_route(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_http_civchat_route_t *rt)
{
    u_char     *p, *last, *dst, *src;
    ngx_str_t   path;

    if (r->uri.len < lcf->location.len
        || ngx_strncmp(r->uri.data, lcf->location.data, lcf->location.len)
           != 0)
    {
        return NGX_DECLINED;
    }

    path.data = r->uri.data + lcf->location.len;
    path.len = r->uri.len - lcf->location.len;

    if (path.len && path.data[0] == '/') {
        path.data++;
        path.len--;
    }

    last = path.data + path.len;

    if (path.len == 5 && ngx_strncmp(path.data, "users", 5) == 0) {
        rt->route = NGX_HTTP_CIVCHAT_API_USERS;
        return NGX_OK;
    }

    if (path.len == 6 && ngx_strncmp(path.data, "import", 6) == 0) {
        rt->route = NGX_HTTP_CIVCHAT_API_IMPORT;
        return NGX_OK;
    }

    if (path.len < 6 || ngx_strncmp(path.data, "users/", 6) != 0) {
        return NGX_DECLINED;
    }

    p = path.data + 6;

    if (last - p >= 4 && ngx_strncmp(p, "key/", 4) == 0) {
        rt->kind = NGX_HTTP_CIVCHAT_BY_KEY;
        p += 4;

    } else if (last - p >= 8 && ngx_strncmp(p, "user_id/", 8) == 0) {
        rt->kind = NGX_HTTP_CIVCHAT_BY_USER_ID;
        p += 8;

    } else if (last - p >= 6 && ngx_strncmp(p, "email/", 6) == 0) {
        rt->kind = NGX_HTTP_CIVCHAT_BY_EMAIL;
        p += 6;

    } else {
        return NGX_DECLINED;
    }

    rt->route = NGX_HTTP_CIVCHAT_API_ONE;

    if (last - p > 9 && ngx_strncmp(last - 9, "/messages", 9) == 0) {
        rt->route = NGX_HTTP_CIVCHAT_API_MESSAGES;
        last -= 9;
    }

    /* r->uri is already decoded; an email is compared in lower case */
    rt->id.len = last - p;
    rt->id.data = ngx_pnalloc(r->pool, rt->id.len + 1);
    if (rt->id.data == NULL) {
        return NGX_ERROR;
    }

    src = p;
    dst = rt->id.data;

    while (src < last) {
        *dst++ = (rt->kind == NGX_HTTP_CIVCHAT_BY_EMAIL)
                 ? ngx_tolower(*src) : *src;
        src++;
    }

    return NGX_OK;
}


static void
ngx_http_civchat_api_body(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_civchat_ctx_t    *ctx;
    ngx_http_civchat_route_t  *rt;

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);
    rt = (ngx_http_civchat_route_t *) (ctx + 1);

    rc = ngx_http_civchat_api_run(r, ctx, rt);

    if (ctx->waiting) {
        /* a zone on Redis answers later: ngx_http_civchat_api_resolved */
        return;
    }

    if (rc == NGX_DONE && ctx->answered) {
        rc = ctx->answer_rc;
    }

    ngx_http_finalize_request(r, rc);
}


static void
ngx_http_civchat_api_resolved(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t          *c;
    ngx_http_civchat_ctx_t    *ctx;
    ngx_http_civchat_route_t  *rt;

    /* finalizing may free the request: its connection is kept first */
    c = r->connection;

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);
    rt = (ngx_http_civchat_route_t *) (ctx + 1);

    ctx->waiting = 0;

    if (rt->route != NGX_HTTP_CIVCHAT_API_MESSAGES) {
        rc = ngx_http_civchat_api_one_done(r, ctx, rc);

    } else {
        rc = rt->publishing ? ngx_http_civchat_api_message_sent(r, ctx, rc)
                            : ngx_http_civchat_api_message_done(r, ctx, rc);

        if (ctx->waiting) {
            /* Redis takes the message now */
            return;
        }
    }

    if (rc == NGX_DONE && ctx->answered) {
        rc = ctx->answer_rc;
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_civchat_api_run(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_route_t *rt)
{
    u_char               kind;
    ngx_int_t            rc;
    ngx_str_t            body, id;
    ngx_uint_t           op, csv;
    ngx_pool_cleanup_t  *cln;

    if (rt->route == NGX_HTTP_CIVCHAT_API_IMPORT) {
        if (r->method != NGX_HTTP_POST) {
            return ngx_http_civchat_error(r, NGX_HTTP_NOT_ALLOWED,
                                          "method_not_allowed", "%s",
                                          "import takes POST");
        }

        csv = ngx_http_civchat_api_type_is(r, "text/csv");

        /* read from nginx's buffers a window at a time, in slices */
        return ngx_http_civchat_import(r, ctx, csv);
    }

    rc = ngx_http_civchat_read_body(r, &body);
    if (rc != NGX_OK) {
        return rc;
    }

    if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_DELETE)) {
        ctx->body = json_object();

    } else if (r->method & (NGX_HTTP_POST|NGX_HTTP_PUT|NGX_HTTP_PATCH)) {
        ctx->body = body.len ? ngx_http_civchat_json_parse(r->pool, body.data,
                                                           body.len, NULL)
                             : json_object();

        if (!json_is_object(ctx->body)) {
            json_decref(ctx->body);
            ctx->body = NULL;

            return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                          "invalid_json", "%s",
                                          "the body must be a JSON object");
        }

    } else {
        return ngx_http_civchat_error(r, NGX_HTTP_NOT_ALLOWED,
                                      "method_not_allowed", "%s",
                                      "use GET, PUT, POST or DELETE");
    }

    if (ctx->body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        json_decref(ctx->body);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_civchat_api_cleanup;
    cln->data = ctx->body;

    if (rt->route == NGX_HTTP_CIVCHAT_API_USERS) {
        if (r->method != NGX_HTTP_POST) {
            return ngx_http_civchat_error(r, NGX_HTTP_NOT_ALLOWED,
                                          "method_not_allowed", "%s",
                                          "users takes POST");
        }

        if (ngx_http_civchat_plan_by_body(r->pool, ctx->body, &kind, &id)
            != NGX_OK)
        {
            return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                          "missing_field", "%s",
                                          "ID is required: user_id, email "
                                          "or key");
        }

        return ngx_http_civchat_api_one(r, ctx, kind, &id,
                                        NGX_HTTP_CIVCHAT_OP_UPSERT);
    }

    if (rt->id.len == 0) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "ID is required");
    }

    if (ngx_http_civchat_api_url_id(r, rt) != NGX_OK) {
        if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_DELETE)) {
            /* no profile can have such an ID */
            return ngx_http_civchat_error(r, NGX_HTTP_NOT_FOUND,
                                          "not_found", "%s",
                                          "User with this ID does not "
                                          "exist");
        }

        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_attribute", "%s",
                                      "the ID is not a valid key, user_id "
                                      "or email");
    }

    if (rt->route == NGX_HTTP_CIVCHAT_API_MESSAGES) {
        if (r->method != NGX_HTTP_POST) {
            return ngx_http_civchat_error(r, NGX_HTTP_NOT_ALLOWED,
                                          "method_not_allowed", "%s",
                                          "messages takes POST");
        }

        return ngx_http_civchat_api_message(r, ctx, rt);
    }

    switch (r->method) {

    case NGX_HTTP_GET:
    case NGX_HTTP_HEAD:
        op = NGX_HTTP_CIVCHAT_OP_READ;
        break;

    case NGX_HTTP_DELETE:
        op = NGX_HTTP_CIVCHAT_OP_DELETE;
        break;

    case NGX_HTTP_POST:
        op = NGX_HTTP_CIVCHAT_OP_UPSERT;
        break;

    default: /* PUT, PATCH */
        op = NGX_HTTP_CIVCHAT_OP_MODIFY;
        break;
    }

    return ngx_http_civchat_api_one(r, ctx, rt->kind, &rt->id, op);
}


static ngx_int_t
ngx_http_civchat_api_one(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    u_char kind, ngx_str_t *id, ngx_uint_t op)
{
    ngx_int_t                  rc;
    ngx_http_civchat_route_t  *rt;

    rt = (ngx_http_civchat_route_t *) (ctx + 1);
    rt->op = op;

    rc = ngx_http_civchat_api_profile(r, ctx, kind, id, op,
                                      ngx_http_civchat_api_resolved);
    if (rc == NGX_DONE) {
        return NGX_DONE;
    }

    return ngx_http_civchat_api_one_done(r, ctx, rc);
}


static ngx_int_t
ngx_http_civchat_api_one_done(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc)
{
    json_t                      *user, *answer, *ignored;
    ngx_uint_t                   i;
    ngx_http_civchat_route_t    *rt;
    ngx_http_civchat_ignored_t  *ig;

    rt = (ngx_http_civchat_route_t *) (ctx + 1);

    if (rc == NGX_DECLINED) {
        return ngx_http_civchat_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                      "%s", "User with this ID does not "
                                      "exist");
    }

    if (rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
        return ngx_http_civchat_unavailable(r, "1", "the profile store "
                                            "(Redis) is not answering, retry "
                                            "later");
    }

    user = NULL;

    if (rc == NGX_OK && rt->op != NGX_HTTP_CIVCHAT_OP_DELETE) {
        user = ngx_http_civchat_api_user(r, &ctx->user, &rt->rec);
        rc = (user != NULL) ? NGX_OK : NGX_ERROR;
    }

    if (rc != NGX_OK || ngx_http_civchat_emit_events(r, ctx) != NGX_OK) {
        json_decref(user);
        return ngx_http_civchat_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "internal_error", "%s",
                                      "the profile could not be stored");
    }

    if (rt->op == NGX_HTTP_CIVCHAT_OP_DELETE) {
        answer = json_pack("{s:b,s:s%}", "deleted", 1, "key",
                           (char *) ctx->user.profile.data,
                           ctx->user.profile.len);

    } else {
        answer = json_pack("{s:o,s:b}", "user", user, "created",
                           (int) ctx->user.created);
        user = NULL;
    }

    json_decref(user);

    if (answer != NULL && ctx->ignored.nelts) {
        ignored = json_array();
        json_object_set_new(answer, "ignored", ignored);

        ig = ctx->ignored.elts;

        for (i = 0; i < ctx->ignored.nelts; i++) {
            json_array_append_new(ignored,
                                  json_pack("{s:s%,s:s}", "name",
                                            (char *) ig[i].name.data,
                                            ig[i].name.len,
                                            "reason", ig[i].reason));
        }
    }

    return ngx_http_civchat_api_send(r, ctx->user.created ? 201 : NGX_HTTP_OK,
                                     answer);
}


/*
 * A message to a visitor's widget: an agent's message ("onMessage" with
 * isAdmin) or a payload ("onPayloadReceived"), published for the
 * streams of that profile's key and recorded as a chat_message event.
 */

static ngx_int_t
ngx_http_civchat_api_message(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_route_t *rt)
{
    json_t              *content, *type, *data;
    ngx_int_t            rc;
    ngx_str_t            name;
    ngx_uint_t           live;
    ngx_pool_cleanup_t  *cln;

    content = json_object_get(ctx->body, "content");
    type = json_object_get(ctx->body, "type");

    if (content == NULL || json_is_null(content)) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "missing_field", "%s",
                                      "content is required");
    }

    if (type == NULL || (json_is_string(type)
                         && ngx_strcmp(json_string_value(type), "message")
                            == 0))
    {
        if (!json_is_string(content)) {
            return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                          "invalid_event", "%s",
                                          "a message's content is a "
                                          "string");
        }

        live = NGX_HTTP_CIVCHAT_LIVE_MESSAGE;
        ngx_str_set(&name, "message");
        data = json_pack("{s:O,s:b}", "content", content, "isAdmin", 1);

    } else if (json_is_string(type)
               && ngx_strcmp(json_string_value(type), "payload") == 0)
    {
        live = NGX_HTTP_CIVCHAT_LIVE_PAYLOAD;
        ngx_str_set(&name, "payload");
        data = json_pack("{s:O}", "content", content);

    } else {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST,
                                      "invalid_event", "%s",
                                      "type is \"message\" or \"payload\"");
    }

    if (data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        json_decref(data);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_civchat_json_cleanup;
    cln->data = data;

    rt->data = data;
    rt->live = live;
    rt->name = name;

    rc = ngx_http_civchat_api_profile(r, ctx, rt->kind, &rt->id,
                                      NGX_HTTP_CIVCHAT_OP_READ,
                                      ngx_http_civchat_api_resolved);
    if (rc == NGX_DONE) {
        return NGX_DONE;
    }

    return ngx_http_civchat_api_message_done(r, ctx, rc);
}


static ngx_int_t
ngx_http_civchat_api_message_done(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc)
{
    u_char                    *buf;
    size_t                     len;
    ngx_http_civchat_route_t  *rt;

    rt = (ngx_http_civchat_route_t *) (ctx + 1);

    if (rc == NGX_DECLINED) {
        return ngx_http_civchat_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                      "%s", "User with this ID does not "
                                      "exist");
    }

    if (rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
        return ngx_http_civchat_unavailable(r, "1", "the profile store "
                                            "(Redis) is not answering, retry "
                                            "later");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_civchat_api_claimed(ctx, rt->kind)) {
        return ngx_http_civchat_error(r, NGX_HTTP_CONFLICT, "unverified",
                                      "%s", "the profile holding this ID "
                                      "only claimed it (no user_hash): "
                                      "message it by its key");
    }

    len = json_dumpb(rt->data, NULL, 0, JSON_COMPACT);

    buf = ngx_pnalloc(r->pool, len);
    if (buf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = json_dumpb(rt->data, (char *) buf, len, JSON_COMPACT);

    rt->publishing = 1;

    rc = ngx_http_civchat_live_redis_publish(r, ctx->lcf->zone,
                                             &ctx->user.profile, rt->live,
                                             buf, len,
                                             ngx_http_civchat_api_resolved);
    if (rc == NGX_DONE) {
        /* on Redis: answered once Redis has it (README "Live channel") */
        ctx->waiting = 1;
        return NGX_DONE;
    }

    return ngx_http_civchat_api_message_sent(r, ctx, rc);
}


static ngx_int_t
ngx_http_civchat_api_message_sent(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_int_t rc)
{
    ngx_http_civchat_route_t  *rt;

    rt = (ngx_http_civchat_route_t *) (ctx + 1);

    if (rc != NGX_OK) {
        return ngx_http_civchat_unavailable(r, "1", "the live channel "
                                            "(Redis) did not take the "
                                            "message, retry later");
    }

    rc = ngx_http_civchat_add_event_json(r, ctx,
                                         NGX_HTTP_CIVCHAT_EV_CHAT_MESSAGE,
                                         &rt->name, rt->data);

    if (rc != NGX_OK || ngx_http_civchat_emit_events(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_civchat_api_send(r, NGX_HTTP_OK,
                                     json_pack("{s:b,s:s%}", "sent", 1,
                                               "key",
                                               (char *) ctx->user.profile.data,
                                               ctx->user.profile.len));
}


/* an ID in the URL, read as the same field in a body would be */

static ngx_int_t
ngx_http_civchat_api_url_id(ngx_http_request_t *r,
    ngx_http_civchat_route_t *rt)
{
    json_t      *v;
    ngx_int_t    rc;
    const char  *reason;

    if (rt->kind == NGX_HTTP_CIVCHAT_BY_KEY) {
        return ngx_http_civchat_valid_key(rt->id.data, rt->id.len)
               ? NGX_OK : NGX_DECLINED;
    }

    v = json_stringn((char *) rt->id.data, rt->id.len);
    if (v == NULL) {
        return NGX_DECLINED;
    }

    rc = (rt->kind == NGX_HTTP_CIVCHAT_BY_USER_ID)
         ? ngx_http_civchat_user_id(r->pool, v, &rt->id, &reason)
         : ngx_http_civchat_email(r->pool, v, &rt->id, &reason);

    json_decref(v);

    return (rc == NGX_OK) ? NGX_OK : NGX_DECLINED;
}


/*
 * Reads, creates-or-updates, updates or erases the profile a key,
 * user_id or email names, through the same plan and zone as the
 * widget's requests; the route keeps the plan and the record, which the
 * answer is made of (NGX_DONE: handler is called when a zone on Redis
 * has answered).  NGX_DECLINED: no such profile.
 */

static ngx_int_t
ngx_http_civchat_api_profile(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, u_char kind, ngx_str_t *id, ngx_uint_t op,
    ngx_http_civchat_resolved_pt handler)
{
    ngx_int_t                  rc;
    ngx_http_civchat_route_t  *rt;

    rt = (ngx_http_civchat_route_t *) (ctx + 1);

    ngx_memzero(&rt->rec, sizeof(ngx_http_civchat_record_t));

    if (ngx_http_civchat_plan_api(r, ctx, &rt->plan, op, kind, id) != NGX_OK) {
        return NGX_ERROR;
    }

    rc = ngx_http_civchat_resolve(r, ctx, &rt->plan,
                                  (op == NGX_HTTP_CIVCHAT_OP_DELETE)
                                  ? NULL : &rt->rec, handler);

    if (rc == NGX_DONE) {
        ctx->waiting = 1;
    }

    return rc;
}


static json_t *
ngx_http_civchat_api_user(ngx_http_request_t *r, ngx_http_civchat_user_t *u,
    ngx_http_civchat_record_t *rec)
{
    json_t      *aliases, *attrs;
    ngx_str_t   *keys;
    ngx_uint_t   i;

    aliases = json_array();
    attrs = ngx_http_civchat_json_parse(r->pool, rec->attrs.data,
                                        rec->attrs.len, NULL);

    if (aliases == NULL || !json_is_object(attrs)) {
        json_decref(aliases);
        json_decref(attrs);
        return NULL;
    }

    if (rec->user_agent.len) {
        json_object_set_new(attrs, "user_agent",
                            ngx_http_civchat_api_string(&rec->user_agent));
    }

    keys = rec->keys.elts;

    for (i = 0; i < rec->keys.nelts; i++) {
        json_array_append_new(aliases,
                              ngx_http_civchat_api_string(&keys[i]));
    }

    return json_pack("{s:o,s:o,s:o,s:o,s:{s:b,s:b},s:I,s:I,s:I,s:I,s:o}",
                     "key", ngx_http_civchat_api_string(&u->profile),
                     "user_id", ngx_http_civchat_api_string(&u->user_id),
                     "email", ngx_http_civchat_api_string(&u->email),
                     "aliases", aliases,
                     "verified",
                         "user_id", (int) u->user_id_verified,
                         "email", (int) u->email_verified,
                     "first_seen", (json_int_t) u->first_seen,
                     "last_seen", (json_int_t) u->last_seen,
                     "page_views", (json_int_t) u->page_views,
                     "sessions", (json_int_t) u->sessions,
                     "attributes", attrs);
}


/*
 * With civchat_identity_secret, a message by user_id or email goes only
 * to a profile that proved it: a browser may claim an unheld email
 * first, and must not get its owner's messages.
 */

static ngx_uint_t
ngx_http_civchat_api_claimed(ngx_http_civchat_ctx_t *ctx, u_char kind)
{
    if (ctx->lcf->identity == NULL) {
        return 0;
    }

    switch (kind) {

    case NGX_HTTP_CIVCHAT_BY_USER_ID:
        return !ctx->user.user_id_verified;

    case NGX_HTTP_CIVCHAT_BY_EMAIL:
        return !ctx->user.email_verified;

    default:
        return 0;
    }
}


/* a string, or null when empty */

static json_t *
ngx_http_civchat_api_string(ngx_str_t *s)
{
    if (s->len == 0) {
        return json_null();
    }

    return json_stringn((char *) s->data, s->len);
}


static void
ngx_http_civchat_api_cleanup(void *data)
{
    json_decref(data);
}


static ngx_int_t
ngx_http_civchat_api_send(ngx_http_request_t *r, ngx_uint_t status,
    json_t *answer)
{
    u_char  *buf;
    size_t   len;

    if (answer == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = json_dumpb(answer, NULL, 0, JSON_COMPACT);

    buf = ngx_pnalloc(r->pool, len + 1);
    if (buf == NULL) {
        json_decref(answer);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = json_dumpb(answer, (char *) buf, len, JSON_COMPACT);
    buf[len++] = '\n';

    json_decref(answer);

    return ngx_http_civchat_send_json(r, status, buf, len);
}


static ngx_int_t
ngx_http_civchat_api_type_is(ngx_http_request_t *r, const char *type)
{
    size_t  len;

    if (r->headers_in.content_type == NULL) {
        return 0;
    }

    len = ngx_strlen(type);

    return r->headers_in.content_type->value.len >= len
           && ngx_strncasecmp(r->headers_in.content_type->value.data,
                              (u_char *) type, len) == 0;
}
