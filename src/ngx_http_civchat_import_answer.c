
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_import.h"


/*
 * The import's answer (README "Server API"): its header once the body's
 * first row is read, then a result a row, written into buffers of
 * IMPORT_OUT bytes and passed to the filters at a slice's end, then the
 * counts.  import.c stops slicing while the client has not taken what
 * was sent (ngx_http_civchat_import_busy).
 */



/*
 * The answer's header and its first bytes: its length is not known,
 * and it streams (chunked in HTTP/1.1); a proxy in front must not keep
 * it back either.
 */

ngx_int_t
ngx_http_civchat_import_answer(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp)
{
    u_char     *p;
    ngx_int_t   rc;
    ngx_str_t   value;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    ngx_str_set(&value, "no-store");

    if (ngx_http_civchat_add_header(r, "Cache-Control", &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&value, "no");

    if (ngx_http_civchat_add_header(r, "X-Accel-Buffering", &value)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    p = ngx_http_civchat_import_room(imp, sizeof("{\"results\":[") - 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    imp->buf->last = ngx_cpymem(p, "{\"results\":[",
                                sizeof("{\"results\":[") - 1);

    return NGX_OK;
}


/* the client has not taken all the answer sent so far */

ngx_int_t
ngx_http_civchat_import_busy(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp)
{
    return imp->busy != NULL || r->buffered || r->postponed
           || r->connection->buffered;
}


/*
 * {"row", "result": "created" | "updated", "key"} and the first field
 * ignored, if any, {"name", "reason"}: its name cut to IMPORT_NAME bytes
 * (at a character's start), so that a result stays small
 */

ngx_int_t
ngx_http_civchat_import_applied(ngx_http_civchat_import_t *imp)
{
    u_char                      *p;
    size_t                       len, name_len;
    ngx_http_civchat_ctx_t      *ctx;
    ngx_http_civchat_ignored_t  *ig;

    ctx = imp->ctx;
    ig = ctx->ignored.nelts ? ctx->ignored.elts : NULL;

    len = sizeof("{\"row\":,\"result\":\"updated\",\"key\":}")
          + NGX_INT_T_LEN
          + ngx_http_civchat_json_quoted_len(ctx->user.profile.data,
                                             ctx->user.profile.len);

    name_len = 0;

    if (ig != NULL) {
        name_len = ig->name.len;

        if (name_len > NGX_HTTP_CIVCHAT_IMPORT_NAME) {
            name_len = NGX_HTTP_CIVCHAT_IMPORT_NAME;

            while (name_len && (ig->name.data[name_len] & 0xc0) == 0x80) {
                name_len--;
            }
        }

        len += sizeof(",\"ignored\":{\"name\":,\"reason\":}")
               + ngx_http_civchat_json_quoted_len(ig->name.data, name_len)
               + ngx_http_civchat_json_quoted_len((u_char *) ig->reason,
                                                  ngx_strlen(ig->reason));
    }

    p = ngx_http_civchat_import_result(imp, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(p, "{\"row\":%ui,\"result\":\"%s\",\"key\":",
                    imp->row++, ctx->user.created ? "created" : "updated");
    p = ngx_http_civchat_json_quote(p, ctx->user.profile.data,
                                    ctx->user.profile.len);

    if (ig != NULL) {
        p = ngx_cpymem(p, ",\"ignored\":{\"name\":",
                       sizeof(",\"ignored\":{\"name\":") - 1);
        p = ngx_http_civchat_json_quote(p, ig->name.data, name_len);
        p = ngx_cpymem(p, ",\"reason\":", sizeof(",\"reason\":") - 1);
        p = ngx_http_civchat_json_quote(p, (u_char *) ig->reason,
                                        ngx_strlen(ig->reason));
        *p++ = '}';
    }

    *p++ = '}';

    imp->pending += p - imp->buf->last;
    imp->buf->last = p;

    return NGX_OK;
}


/* {"row", "result": "error", "error", "detail"} */

ngx_int_t
ngx_http_civchat_import_error(ngx_http_civchat_import_t *imp,
    const char *code, const char *detail)
{
    u_char  *p;
    size_t   len;

    imp->counts[2]++;

    len = sizeof("{\"row\":,\"result\":\"error\",\"error\":,\"detail\":}")
          + NGX_INT_T_LEN
          + ngx_http_civchat_json_quoted_len((u_char *) code,
                                             ngx_strlen(code))
          + ngx_http_civchat_json_quoted_len((u_char *) detail,
                                             ngx_strlen(detail));

    p = ngx_http_civchat_import_result(imp, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(p, "{\"row\":%ui,\"result\":\"error\",\"error\":",
                    imp->row++);
    p = ngx_http_civchat_json_quote(p, (u_char *) code, ngx_strlen(code));
    p = ngx_cpymem(p, ",\"detail\":", sizeof(",\"detail\":") - 1);
    p = ngx_http_civchat_json_quote(p, (u_char *) detail, ngx_strlen(detail));
    *p++ = '}';

    imp->pending += p - imp->buf->last;
    imp->buf->last = p;

    return NGX_OK;
}


/* room for a result of at most len bytes, after ",\n" or "\n" */

u_char *
ngx_http_civchat_import_result(ngx_http_civchat_import_t *imp, size_t len)
{
    u_char  *p;

    p = ngx_http_civchat_import_room(imp, len + 2);
    if (p == NULL) {
        return NULL;
    }

    if (imp->results) {
        *p++ = ',';
    }

    *p++ = LF;

    imp->results = 1;

    return p;
}


/*
 * Room for len bytes (at most a buffer's: a result is far smaller) at
 * the end of the answer's last buffer, or in a new one; buffers the
 * client has taken are used again.
 */

u_char *
ngx_http_civchat_import_room(ngx_http_civchat_import_t *imp, size_t len)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    b = imp->buf;

    if (b != NULL && (size_t) (b->end - b->last) >= len) {
        return b->last;
    }

    cl = ngx_chain_get_free_buf(imp->pool, &imp->free);
    if (cl == NULL) {
        return NULL;
    }

    b = cl->buf;

    if (b->start == NULL) {
        b->start = ngx_palloc(imp->pool, NGX_HTTP_CIVCHAT_IMPORT_OUT);
        if (b->start == NULL) {
            return NULL;
        }

        b->end = b->start + NGX_HTTP_CIVCHAT_IMPORT_OUT;
        b->temporary = 1;
        b->tag = (ngx_buf_tag_t) &ngx_http_civchat_module;
    }

    b->pos = b->start;
    b->last = b->start;
    b->flush = 0;
    b->last_buf = 0;
    b->last_in_chain = 0;

    *imp->last_out = cl;
    imp->last_out = &cl->next;
    imp->buf = b;

    return b->last;
}


/* what the slice wrote, to the filters, flushed (last: the end) */

ngx_int_t
ngx_http_civchat_import_send(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp, ngx_uint_t last)
{
    ngx_int_t  rc;

    if (imp->out == NULL) {
        return NGX_OK;
    }

    if (last) {
        imp->buf->last_buf = (r == r->main) ? 1 : 0;
        imp->buf->last_in_chain = 1;

    } else {
        imp->buf->flush = 1;
    }

    rc = ngx_http_output_filter(r, imp->out);

    ngx_chain_update_chains(imp->pool, &imp->free, &imp->busy, &imp->out,
                            (ngx_buf_tag_t) &ngx_http_civchat_module);

    imp->out = NULL;
    imp->last_out = &imp->out;
    imp->buf = NULL;
    imp->pending = 0;

    return rc;
}


/* the counts end the answer, and the request */

void
ngx_http_civchat_import_finish(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp)
{
    u_char     *p;
    ngx_int_t   rc;

    p = ngx_http_civchat_import_room(imp, sizeof("\n],\"created\":,"
                                                 "\"updated\":,"
                                                 "\"errors\":}\n")
                                          + 3 * NGX_INT_T_LEN);
    if (p == NULL) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    p = ngx_sprintf(p, "%s],\"created\":%ui,\"updated\":%ui,\"errors\":%ui}"
                    "\n", imp->results ? "\n" : "", imp->counts[0],
                    imp->counts[1], imp->counts[2]);

    imp->buf->last = p;

    rc = ngx_http_civchat_import_send(r, imp, 1);

    ngx_http_finalize_request(r, rc);
}
