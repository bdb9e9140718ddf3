
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * Events are collected while the zone is locked (with only their own
 * data) and written after it is unlocked, each as one NDJSON line with
 * the fixed envelope of README "Events": every field present, so that
 * one table with fixed columns holds them all.
 */


static size_t ngx_http_civchat_event_size(ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_event_t *ev);
static u_char *ngx_http_civchat_event_line(u_char *p,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_event_t *ev,
    u_char *id, ngx_time_t *tp);
static u_char *ngx_http_civchat_json_field(u_char *p, u_char *name,
    size_t len, ngx_str_t *value);
static size_t ngx_http_civchat_json_len(ngx_str_t *value);


/* ,"name":"value" with the name's text known when compiled */
#define ngx_http_civchat_field(p, name, value)                               \
    ngx_http_civchat_json_field(p, (u_char *) ",\"" name "\":",              \
                                sizeof(",\"" name "\":") - 1, value)


ngx_int_t
ngx_http_civchat_emit_events(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx)
{
    u_char                    *buf, *p, *q, id[16];
    size_t                     size;
    ngx_uint_t                 i;
    ngx_time_t                *tp;
    ngx_http_civchat_event_t  *ev;

    ev = ctx->events.elts;

    for (i = 0; i < ctx->events.nelts; i++) {
        ngx_http_civchat_count_event(r, ev[i].type);

        if (!ev[i].other) {
            /* the profile's own key: the same on all its browsers */
            ev[i].user_key = ctx->user.profile;
            ev[i].user_id = ctx->user.user_id;
            ev[i].email = ctx->user.email;
        }
    }

    if (ctx->lcf->sink == NULL || ctx->events.nelts == 0) {
        return NGX_OK;
    }
    size = 0;

    for (i = 0; i < ctx->events.nelts; i++) {
        size += ngx_http_civchat_event_size(ctx, &ev[i]);
    }

    buf = ngx_pnalloc(r->pool, size);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    tp = ngx_timeofday();
    p = buf;

    for (i = 0; i < ctx->events.nelts; i++) {
        if (ngx_http_civchat_random(r, id, sizeof(id)) != NGX_OK) {
            return NGX_ERROR;
        }

        q = p;
        p = ngx_http_civchat_event_line(p, ctx, &ev[i], id, tp);

        (void) ngx_http_civchat_sink_write(ctx->lcf->sink,
                                           r->connection->log, q, p - q);
    }

    return NGX_OK;
}


static size_t
ngx_http_civchat_event_size(ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_event_t *ev)
{
    size_t  size;

    size = sizeof("{\"id\":\"\",\"ts\":,\"site\":\"\",\"type\":\"\","
                  "\"name\":\"\",\"user_key\":\"\",\"user_id\":\"\","
                  "\"email\":\"\",\"url\":\"\",\"referrer\":\"\","
                  "\"title\":\"\",\"ip\":\"\",\"country\":\"\","
                  "\"region\":\"\",\"city\":\"\",\"user_agent\":\"\","
                  "\"attrs\":\"\"}\n")
           + NGX_HTTP_CIVCHAT_EVENT_ID_LEN + NGX_INT64_LEN
           + ngx_strlen(ngx_http_civchat_event_name(ev->type));

    size += ngx_http_civchat_json_len(&ctx->site)
            + ngx_http_civchat_json_len(&ev->name)
            + ngx_http_civchat_json_len(&ev->user_key)
            + ngx_http_civchat_json_len(&ev->user_id)
            + ngx_http_civchat_json_len(&ev->email)
            + ngx_http_civchat_json_len(&ctx->url)
            + ngx_http_civchat_json_len(&ctx->referrer)
            + ngx_http_civchat_json_len(&ctx->title)
            + ngx_http_civchat_json_len(&ctx->ip)
            + ngx_http_civchat_json_len(&ctx->geo.country)
            + ngx_http_civchat_json_len(&ctx->geo.region)
            + ngx_http_civchat_json_len(&ctx->geo.city)
            + ngx_http_civchat_json_len(&ctx->user_agent)
            + ngx_http_civchat_json_len(&ev->attrs);

    return size;
}


static u_char *
ngx_http_civchat_event_line(u_char *p, ngx_http_civchat_ctx_t *ctx,
    ngx_http_civchat_event_t *ev, u_char *id, ngx_time_t *tp)
{
    p = ngx_cpymem(p, "{\"id\":\"", sizeof("{\"id\":\"") - 1);
    p = ngx_hex_dump(p, id, NGX_HTTP_CIVCHAT_EVENT_ID_LEN / 2);
    p = ngx_sprintf(p, "\",\"ts\":%T%03M", tp->sec, tp->msec);

    p = ngx_http_civchat_field(p, "site", &ctx->site);
    p = ngx_sprintf(p, ",\"type\":\"%s\"",
                    ngx_http_civchat_event_name(ev->type));
    p = ngx_http_civchat_field(p, "name", &ev->name);
    p = ngx_http_civchat_field(p, "user_key", &ev->user_key);
    p = ngx_http_civchat_field(p, "user_id", &ev->user_id);
    p = ngx_http_civchat_field(p, "email", &ev->email);
    p = ngx_http_civchat_field(p, "url", &ctx->url);
    p = ngx_http_civchat_field(p, "referrer", &ctx->referrer);
    p = ngx_http_civchat_field(p, "title", &ctx->title);
    p = ngx_http_civchat_field(p, "ip", &ctx->ip);
    p = ngx_http_civchat_field(p, "country", &ctx->geo.country);
    p = ngx_http_civchat_field(p, "region", &ctx->geo.region);
    p = ngx_http_civchat_field(p, "city", &ctx->geo.city);
    p = ngx_http_civchat_field(p, "user_agent", &ctx->user_agent);
    p = ngx_http_civchat_field(p, "attrs", &ev->attrs);

    return ngx_cpymem(p, "}\n", 2);
}


static u_char *
ngx_http_civchat_json_field(u_char *p, u_char *name, size_t len,
    ngx_str_t *value)
{
    p = ngx_cpymem(p, name, len);

    return ngx_http_civchat_json_quote(p, value->data, value->len);
}


/*
 * Room for the string escaped, its quotes not counted: at most 6 bytes
 * a byte (\u00XX).  Counting exactly would read every field once more;
 * the line lives in the request's pool only until it is copied out.
 */

static size_t
ngx_http_civchat_json_len(ngx_str_t *value)
{
    return 6 * value->len;
}
