
/*
 * Copyright (C) civchat developers
 */


#ifndef _NGX_HTTP_CIVCHAT_IMPORT_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_IMPORT_H_INCLUDED_


/*
 * What the import (import.c: the body a window at a time, rows in
 * slices) and its answer (import_answer.c: the results streamed) share;
 * nothing else includes this.
 */


#define NGX_HTTP_CIVCHAT_IMPORT_OUT      16384
#define NGX_HTTP_CIVCHAT_IMPORT_PENDING  (4 * NGX_HTTP_CIVCHAT_IMPORT_OUT)
#define NGX_HTTP_CIVCHAT_IMPORT_NAME     256   /* of an ignored field's */


typedef struct {
    ngx_http_request_t           *request;
    ngx_pool_t                   *pool;       /* the request's own */
    ngx_http_civchat_ctx_t       *ctx;
    json_t                       *header;     /* CSV: the column names */

    /* the window: [pos, last) is read and not taken yet */
    u_char                       *start;
    u_char                       *pos;
    u_char                       *last;
    u_char                       *end;
    u_char                       *scan;       /* the record at pos: up to */
    ngx_uint_t                    state;      /* CSV: csv.c's, at scan */
    off_t                         quote_eol;  /* CSV: where the open
                                                 quote's line ends */
    off_t                         offset;     /* of last, in the body */
    off_t                         size;       /* of the body */

    ngx_uint_t                    row;        /* the next row's number */
    ngx_uint_t                    counts[3];  /* created, updated, errors */

    /* the answer: filled, then passed to the filters at a slice's end */
    ngx_chain_t                  *out;
    ngx_chain_t                 **last_out;
    ngx_buf_t                    *buf;        /* being filled */
    ngx_chain_t                  *free;
    ngx_chain_t                  *busy;
    size_t                        pending;    /* bytes in out */

    ngx_event_t                   slice;      /* the next slice */

    unsigned                      csv:1;
    unsigned                      skipping:1; /* a row longer than the
                                                 window */
    unsigned                      results:1;  /* one is written */
    unsigned                      waiting:1;  /* for the client to read */

    /* a row that waits for a zone on Redis, its pool and its JSON */
    ngx_pool_t                   *row_pool;
    json_t                       *row_json;
} ngx_http_civchat_import_t;

ngx_int_t ngx_http_civchat_import_answer(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp);
ngx_int_t ngx_http_civchat_import_busy(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp);
ngx_int_t ngx_http_civchat_import_applied(
    ngx_http_civchat_import_t *imp);
ngx_int_t ngx_http_civchat_import_error(ngx_http_civchat_import_t *imp,
    const char *code, const char *detail);
u_char *ngx_http_civchat_import_result(ngx_http_civchat_import_t *imp,
    size_t len);
u_char *ngx_http_civchat_import_room(ngx_http_civchat_import_t *imp,
    size_t len);
ngx_int_t ngx_http_civchat_import_send(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp, ngx_uint_t last);
void ngx_http_civchat_import_finish(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp);


#endif /* _NGX_HTTP_CIVCHAT_IMPORT_H_INCLUDED_ */
