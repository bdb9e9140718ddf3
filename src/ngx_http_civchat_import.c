
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The server API's batch import (POST import): NDJSON, one object a
 * line, or CSV (csv.c) whose header row names the attributes.  Each row
 * is its own create-or-update, under its own hold of the zone's lock,
 * so a bad row changes nothing and the others go on.
 *
 * An import may be 100 MB, and must not hold the worker.  nginx has the
 * body (in its buffers or its temporary file); the import reads it a
 * window at a time into one buffer (which also bounds a row), takes
 * only whole records from it (an NDJSON line; a CSV record, whose quoted
 * fields may hold line breaks, found by csv.c's scanner), and applies
 * them a slice at a time: at most IMPORT_ROWS rows, IMPORT_USEC of time
 * or IMPORT_PENDING bytes of answer, then it yields to the event loop
 * (ngx_posted_next_events) and goes on in its next turn.
 *
 * The answer streams: its header goes out once the CSV header row is
 * read, then a result a row as the rows are done, then the counts.
 * Slicing waits while the client has not taken what was sent (the
 * write event says when it has; send_timeout ends the wait), so that
 * the answer's memory is a slice's too.  The write event's timer stays
 * set while the import runs: a worker told to quit waits for it.  A
 * client that goes away ends the import where it is.
 */


#define NGX_HTTP_CIVCHAT_IMPORT_WINDOW   (1024 * 1024)  /* the longest row */
#define NGX_HTTP_CIVCHAT_IMPORT_ROWS     512
#define NGX_HTTP_CIVCHAT_IMPORT_USEC     4000
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
} ngx_http_civchat_import_t;


static ngx_int_t ngx_http_civchat_import_header(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp);
static ngx_int_t ngx_http_civchat_import_answer(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp);
static void ngx_http_civchat_import_slice(ngx_event_t *ev);
static void ngx_http_civchat_import_writer(ngx_http_request_t *r);
static void ngx_http_civchat_import_run(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp);
static ngx_int_t ngx_http_civchat_import_busy(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp);
static ngx_int_t ngx_http_civchat_import_step(ngx_http_civchat_import_t *imp);
static ngx_int_t ngx_http_civchat_import_next(ngx_http_civchat_import_t *imp,
    u_char **end);
static u_char *ngx_http_civchat_import_scan(ngx_http_civchat_import_t *imp);
static ngx_int_t ngx_http_civchat_import_skip(ngx_http_civchat_import_t *imp);
static ngx_int_t ngx_http_civchat_import_fill(ngx_http_civchat_import_t *imp);
static ngx_int_t ngx_http_civchat_import_read(ngx_http_civchat_import_t *imp,
    u_char *dst, size_t len);
static ngx_int_t ngx_http_civchat_import_csv(ngx_http_civchat_import_t *imp,
    u_char *end);
static ngx_int_t ngx_http_civchat_import_ndjson(
    ngx_http_civchat_import_t *imp, u_char *end);
static ngx_int_t ngx_http_civchat_import_apply(
    ngx_http_civchat_import_t *imp, json_t *row, ngx_pool_t *pool);
static ngx_int_t ngx_http_civchat_import_applied(
    ngx_http_civchat_import_t *imp);
static ngx_int_t ngx_http_civchat_import_error(ngx_http_civchat_import_t *imp,
    const char *code, const char *detail);
static u_char *ngx_http_civchat_import_result(ngx_http_civchat_import_t *imp,
    size_t len);
static u_char *ngx_http_civchat_import_room(ngx_http_civchat_import_t *imp,
    size_t len);
static ngx_int_t ngx_http_civchat_import_send(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp, ngx_uint_t last);
static void ngx_http_civchat_import_finish(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp);
static void ngx_http_civchat_import_cleanup(void *data);
static uint64_t ngx_http_civchat_import_usec(void);


/*
 * Starts an import whose body nginx has read: NGX_DONE when it goes on
 * in slices; else what the body handler finalizes with (an error was
 * answered: a body over civchat_body_limit, a CSV header row that
 * cannot be read).
 */

ngx_int_t
ngx_http_civchat_import(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx,
    ngx_uint_t csv)
{
    off_t                       size;
    ngx_int_t                   rc;
    ngx_event_t                *wev;
    ngx_http_cleanup_t         *cln;
    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_civchat_import_t  *imp;

    size = ngx_http_civchat_body_size(r);

    if (size > (off_t) ctx->lcf->body_limit) {
        return ngx_http_civchat_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                      "body_too_large", "%s",
                                      "the request body is over "
                                      "civchat_body_limit");
    }

    imp = ngx_pcalloc(r->pool, sizeof(ngx_http_civchat_import_t));
    if (imp == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_civchat_import_cleanup;
    cln->data = imp;

    imp->request = r;
    imp->pool = r->pool;
    imp->ctx = ctx;
    imp->csv = csv;
    imp->size = size;
    imp->row = 1;
    imp->quote_eol = -1;
    imp->last_out = &imp->out;

    imp->slice.handler = ngx_http_civchat_import_slice;
    imp->slice.data = imp;
    imp->slice.log = r->connection->log;

    /* the whole body when it is smaller than a window */

    size = ngx_min(size, NGX_HTTP_CIVCHAT_IMPORT_WINDOW);

    imp->start = ngx_palloc(r->pool, size ? (size_t) size : 1);
    if (imp->start == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    imp->pos = imp->start;
    imp->last = imp->start;
    imp->scan = imp->start;
    imp->end = imp->start + size;

    if (csv) {
        rc = ngx_http_civchat_import_header(r, imp);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    rc = ngx_http_civchat_import_answer(r, imp);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    ctx->import = imp;

    r->main->count++;
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_civchat_import_writer;

    /* a timer while the import runs: a worker that quits waits for it */

    wev = r->connection->write;
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (!wev->delayed) {
        ngx_add_timer(wev, clcf->send_timeout);
    }

    ngx_post_event(&imp->slice, &ngx_posted_next_events);

    return NGX_DONE;
}


/* the CSV header row: a 400 when it cannot be read */

static ngx_int_t
ngx_http_civchat_import_header(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp)
{
    u_char      *p, *end;
    ngx_int_t    rc;
    const char  *err;

    if (ngx_http_civchat_import_fill(imp) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* csv.c skips Excel's byte order mark itself; its scanner must too */

    if (imp->last - imp->pos >= 3 && imp->pos[0] == 0xef
        && imp->pos[1] == 0xbb && imp->pos[2] == 0xbf)
    {
        imp->scan = imp->pos + 3;
    }

    rc = ngx_http_civchat_import_next(imp, &end);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST, "invalid_csv",
                                      "the header row is unreadable: it is "
                                      "longer than %uz bytes",
                                      (size_t) NGX_HTTP_CIVCHAT_IMPORT_WINDOW);
    }

    if (rc == NGX_DONE) {
        /* an empty body */
        end = imp->last;
    }

    p = imp->pos;

    imp->header = ngx_http_civchat_csv_header(&p, end, &err);

    if (imp->header == NULL) {
        return ngx_http_civchat_error(r, NGX_HTTP_BAD_REQUEST, "invalid_csv",
                                      "the header row is unreadable: %s",
                                      err ? err : "empty");
    }

    imp->pos = p;
    imp->scan = p;
    imp->state = NGX_HTTP_CIVCHAT_CSV_FIELD;

    return NGX_OK;
}


/*
 * The answer's header and its first bytes: its length is not known,
 * and it streams (chunked in HTTP/1.1); a proxy in front must not keep
 * it back either.
 */

static ngx_int_t
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


static void
ngx_http_civchat_import_slice(ngx_event_t *ev)
{
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_civchat_import_t  *imp;

    imp = ev->data;
    r = imp->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ngx_http_civchat_import_run(r, imp);

    ngx_http_run_posted_requests(c);
}


/*
 * The write event: the client took some of the answer (or did not, for
 * send_timeout); slicing goes on once all of it is taken.
 */

static void
ngx_http_civchat_import_writer(ngx_http_request_t *r)
{
    ngx_event_t                *wev;
    ngx_connection_t           *c;
    ngx_http_civchat_ctx_t     *ctx;
    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_civchat_import_t  *imp;

    c = r->connection;
    wev = c->write;
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);
    imp = ctx->import;

    if (wev->timedout) {
        wev->timedout = 0;

        if (!imp->waiting) {
            /* slices keep the timer off; the loop itself was slow */
            ngx_add_timer(wev, clcf->send_timeout);
            return;
        }

        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "civchat: the client of an import timed out");
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    if (!imp->waiting) {
        /* the next slice is posted */
        return;
    }

    if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    ngx_chain_update_chains(imp->pool, &imp->free, &imp->busy, &imp->out,
                            (ngx_buf_tag_t) &ngx_http_civchat_module);

    imp->out = NULL;
    imp->last_out = &imp->out;

    if (ngx_http_civchat_import_busy(r, imp)) {
        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }

        if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
        }

        return;
    }

    imp->waiting = 0;

    ngx_http_civchat_import_run(r, imp);
}


/* one slice, then the next is posted, or waits for the client */

static void
ngx_http_civchat_import_run(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp)
{
    uint64_t                   start;
    ngx_int_t                  rc;
    ngx_uint_t                 n;
    ngx_event_t               *wev;
    ngx_http_core_loc_conf_t  *clcf;

    start = ngx_http_civchat_import_usec();

    for (n = 1; /* void */; n++) {

        rc = ngx_http_civchat_import_step(imp);

        if (rc == NGX_DONE) {
            ngx_http_civchat_import_finish(r, imp);
            return;
        }

        if (rc != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "civchat: the import stopped at row %ui",
                          imp->row);
            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }

        if (n >= NGX_HTTP_CIVCHAT_IMPORT_ROWS
            || imp->pending >= NGX_HTTP_CIVCHAT_IMPORT_PENDING
            || ngx_http_civchat_import_usec() - start
               >= NGX_HTTP_CIVCHAT_IMPORT_USEC)
        {
            break;
        }
    }

    if (ngx_http_civchat_import_send(r, imp, 0) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    wev = r->connection->write;
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (!wev->delayed) {
        ngx_add_timer(wev, clcf->send_timeout);
    }

    if (ngx_http_civchat_import_busy(r, imp)) {
        imp->waiting = 1;

        if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
        }

        return;
    }

    ngx_post_event(&imp->slice, &ngx_posted_next_events);
}


/* the client has not taken all the answer sent so far */

static ngx_int_t
ngx_http_civchat_import_busy(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp)
{
    return imp->busy != NULL || r->buffered || r->postponed
           || r->connection->buffered;
}


/*
 * One row, or one window of a row too long: NGX_OK, NGX_DONE at the end
 * of the body, NGX_ERROR
 */

static ngx_int_t
ngx_http_civchat_import_step(ngx_http_civchat_import_t *imp)
{
    u_char     *end;
    ngx_int_t   rc;

    if (imp->skipping) {
        return ngx_http_civchat_import_skip(imp);
    }

    rc = ngx_http_civchat_import_next(imp, &end);

    if (rc == NGX_DECLINED) {
        /* what is read of it is dropped: the rest, a window at a time */
        imp->skipping = 1;
        imp->pos = imp->last;
        return NGX_OK;
    }

    if (rc != NGX_OK) {
        return rc;
    }

    return imp->csv ? ngx_http_civchat_import_csv(imp, end)
                    : ngx_http_civchat_import_ndjson(imp, end);
}


/*
 * The record at pos: NGX_OK, and *end is where it ends (past its line
 * break, or the body's end); NGX_DONE: the body is read; NGX_DECLINED:
 * it is longer than the window; NGX_ERROR.
 */

static ngx_int_t
ngx_http_civchat_import_next(ngx_http_civchat_import_t *imp, u_char **end)
{
    u_char  *e;

    for ( ;; ) {
        e = ngx_http_civchat_import_scan(imp);

        if (e != NULL) {
            *end = e;
            return NGX_OK;
        }

        if (imp->offset == imp->size) {
            if (imp->pos == imp->last) {
                return NGX_DONE;
            }

            /* the last record, with no line break after it */
            *end = imp->last;
            return NGX_OK;
        }

        if (imp->pos == imp->start && imp->last == imp->end) {
            return NGX_DECLINED;
        }

        if (ngx_http_civchat_import_fill(imp) != NGX_OK) {
            return NGX_ERROR;
        }
    }
}


/* where the record at pos ends, from where scanning it stopped, or NULL */

static u_char *
ngx_http_civchat_import_scan(ngx_http_civchat_import_t *imp)
{
    u_char  *e, *eol;

    if (!imp->csv) {
        e = ngx_strlchr(imp->scan, imp->last, LF);

        if (e == NULL) {
            imp->scan = imp->last;
            return NULL;
        }

        imp->scan = e + 1;

        return e + 1;
    }

    eol = NULL;

    e = ngx_http_civchat_csv_end(imp->scan, imp->last, &imp->state, &eol);

    if (eol != NULL) {
        imp->quote_eol = imp->offset - (imp->last - eol);
    }

    imp->scan = (e != NULL) ? e : imp->last;

    return e;
}


/*
 * A row longer than the window: an error of that row, once its end is
 * found; the rows after it read as they were sent.  A CSV quote never
 * closed ends its record with its own line, as csv.c has it: the body
 * is read again from there.
 */

static ngx_int_t
ngx_http_civchat_import_skip(ngx_http_civchat_import_t *imp)
{
    u_char  *e;

    e = ngx_http_civchat_import_scan(imp);

    if (e != NULL) {
        imp->pos = e;
        imp->state = NGX_HTTP_CIVCHAT_CSV_FIELD;
        imp->skipping = 0;

        return ngx_http_civchat_import_error(imp, "row_too_long",
                                             "the row is longer than "
                                             "1048576 bytes");
    }

    imp->pos = imp->last;

    if (imp->offset < imp->size) {
        return ngx_http_civchat_import_fill(imp);
    }

    /* the body ends in the row */

    imp->skipping = 0;

    if (imp->csv
        && (imp->state & ~NGX_HTTP_CIVCHAT_CSV_LINE)
           == NGX_HTTP_CIVCHAT_CSV_QUOTED)
    {
        if (imp->state & NGX_HTTP_CIVCHAT_CSV_LINE) {
            imp->offset = imp->quote_eol;
            imp->pos = imp->start;
            imp->last = imp->start;
            imp->scan = imp->start;
        }

        imp->state = NGX_HTTP_CIVCHAT_CSV_FIELD;

        return ngx_http_civchat_import_error(imp, "invalid_csv",
                                             "a quoted field is not closed");
    }

    return ngx_http_civchat_import_error(imp, "row_too_long",
                                         "the row is longer than 1048576 "
                                         "bytes");
}


/* more of the body after what is not taken yet, moved to the start */

static ngx_int_t
ngx_http_civchat_import_fill(ngx_http_civchat_import_t *imp)
{
    size_t  n, len;

    n = imp->last - imp->pos;

    if (imp->pos > imp->start) {
        if (n) {
            ngx_memmove(imp->start, imp->pos, n);
        }

        imp->scan -= imp->pos - imp->start;
        imp->pos = imp->start;
        imp->last = imp->start + n;
    }

    len = ngx_min((size_t) (imp->end - imp->last),
                  (size_t) (imp->size - imp->offset));

    if (ngx_http_civchat_import_read(imp, imp->last, len) != NGX_OK) {
        return NGX_ERROR;
    }

    imp->last += len;
    imp->offset += len;

    return NGX_OK;
}


/* len bytes of the body from offset, from nginx's buffers or its file */

static ngx_int_t
ngx_http_civchat_import_read(ngx_http_civchat_import_t *imp, u_char *dst,
    size_t len)
{
    off_t         from, at, size, skip;
    size_t        n;
    ssize_t       got;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    from = imp->offset;
    at = 0;

    for (cl = imp->request->request_body->bufs; cl && len; cl = cl->next) {
        b = cl->buf;
        size = b->in_file ? b->file_last - b->file_pos : b->last - b->pos;

        if (from >= at + size) {
            at += size;
            continue;
        }

        skip = from - at;
        n = (size_t) ngx_min((off_t) len, size - skip);

        if (b->in_file) {
            got = ngx_read_file(b->file, dst, n, b->file_pos + skip);

            if (got != (ssize_t) n) {
                ngx_log_error(NGX_LOG_ERR, imp->request->connection->log, 0,
                              "civchat: reading the request body from "
                              "\"%V\" failed", &b->file->name);
                return NGX_ERROR;
            }

        } else {
            ngx_memcpy(dst, b->pos + skip, n);
        }

        dst += n;
        len -= n;
        from += n;
        at += size;
    }

    return (len == 0) ? NGX_OK : NGX_ERROR;
}


static ngx_int_t
ngx_http_civchat_import_csv(ngx_http_civchat_import_t *imp, u_char *end)
{
    u_char      *p;
    json_t      *row;
    ngx_pool_t  *pool;
    const char  *err;

    p = imp->pos;

    row = ngx_http_civchat_csv_record(&p, end, imp->header, &err);

    /*
     * where the reader stopped: the record's end, or, for a quote never
     * closed, the end of the quote's line
     */

    imp->pos = p;
    imp->scan = p;
    imp->state = NGX_HTTP_CIVCHAT_CSV_FIELD;

    if (row == NULL) {
        if (err == NULL) {
            /* an empty line, or a row of empty fields */
            return NGX_OK;
        }

        return ngx_http_civchat_import_error(imp, "invalid_csv", err);
    }

    pool = ngx_create_pool(4096, imp->request->connection->log);
    if (pool == NULL) {
        json_decref(row);
        return NGX_ERROR;
    }

    return ngx_http_civchat_import_apply(imp, row, pool);
}


static ngx_int_t
ngx_http_civchat_import_ndjson(ngx_http_civchat_import_t *imp, u_char *end)
{
    u_char      *p, *last;
    json_t      *row;
    ngx_pool_t  *pool;

    p = imp->pos;
    last = (end > p && end[-1] == LF) ? end - 1 : end;

    imp->pos = end;
    imp->scan = end;

    if (last == p || (last - p == 1 && *p == CR)) {
        return NGX_OK;
    }

    pool = ngx_create_pool(4096, imp->request->connection->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    row = ngx_http_civchat_json_parse(pool, p, last - p, NULL);

    if (!json_is_object(row)) {
        json_decref(row);
        ngx_destroy_pool(pool);

        return ngx_http_civchat_import_error(imp, "invalid_json",
                                             "a row must be a JSON object");
    }

    return ngx_http_civchat_import_apply(imp, row, pool);
}


/*
 * A row's create-or-update.  What it allocates (its reading, events,
 * copies) is in its own pool, destroyed after it, never reset: json.c
 * notes a row's numbers as the pool's cleanups.
 */

static ngx_int_t
ngx_http_civchat_import_apply(ngx_http_civchat_import_t *imp, json_t *row,
    ngx_pool_t *pool)
{
    u_char                    kind;
    ngx_int_t                 rc;
    ngx_str_t                 id;
    ngx_http_request_t       *r;
    ngx_http_civchat_ctx_t   *ctx;
    ngx_http_civchat_plan_t   plan;

    r = imp->request;
    ctx = imp->ctx;

    r->pool = pool;

    ctx->body = row;
    ctx->events.nelts = 0;
    ctx->ignored.nelts = 0;
    ngx_memzero(&ctx->user, sizeof(ngx_http_civchat_user_t));

    if (ngx_http_civchat_plan_by_body(pool, row, &kind, &id) != NGX_OK) {
        rc = ngx_http_civchat_import_error(imp, "missing_field",
                                           "ID is required: user_id, email "
                                           "or key");

    } else if (ngx_http_civchat_plan_api(r, ctx, &plan,
                                         NGX_HTTP_CIVCHAT_OP_UPSERT, kind,
                                         &id)
               != NGX_OK
               || ngx_http_civchat_resolve(r, ctx, &plan, NULL, NULL)
                  != NGX_OK
               || ngx_http_civchat_emit_events(r, ctx) != NGX_OK)
    {
        rc = ngx_http_civchat_import_error(imp, "internal_error",
                                           "the profile could not be "
                                           "stored");

    } else {
        imp->counts[ctx->user.created ? 0 : 1]++;
        rc = ngx_http_civchat_import_applied(imp);
    }

    r->pool = imp->pool;
    ctx->body = NULL;
    ctx->ignored.nelts = 0;

    json_decref(row);
    ngx_destroy_pool(pool);

    return rc;
}


/*
 * {"row", "result": "created" | "updated", "key"} and the first field
 * ignored, if any, {"name", "reason"}: its name cut to IMPORT_NAME bytes
 * (at a character's start), so that a result stays small
 */

static ngx_int_t
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

static ngx_int_t
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

static u_char *
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

static u_char *
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

static ngx_int_t
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

static void
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


/* the request ends, finished or not */

static void
ngx_http_civchat_import_cleanup(void *data)
{
    ngx_http_civchat_import_t  *imp = data;

    if (imp->slice.posted) {
        ngx_delete_posted_event(&imp->slice);
    }

    json_decref(imp->header);
    imp->header = NULL;

    if (imp->ctx->import == imp) {
        imp->ctx->import = NULL;
    }
}


/* a slice's own clock: nginx's cached time stands still within it */

static uint64_t
ngx_http_civchat_import_usec(void)
{
#if (NGX_HAVE_CLOCK_MONOTONIC)
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
#else
    struct timeval   tv;

    ngx_gettimeofday(&tv);

    return (uint64_t) tv.tv_sec * 1000000 + tv.tv_usec;
#endif
}
