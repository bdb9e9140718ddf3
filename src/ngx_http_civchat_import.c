
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_import.h"


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


static ngx_int_t ngx_http_civchat_import_header(ngx_http_request_t *r,
    ngx_http_civchat_import_t *imp);
static void ngx_http_civchat_import_slice(ngx_event_t *ev);
static void ngx_http_civchat_import_writer(ngx_http_request_t *r);
static void ngx_http_civchat_import_run(ngx_http_request_t *r,
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
static void ngx_http_civchat_import_resolved(ngx_http_request_t *r,
    ngx_int_t rc);
static ngx_int_t ngx_http_civchat_import_row_done(
    ngx_http_civchat_import_t *imp, ngx_int_t rc);
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

    if (imp->row_pool != NULL) {
        /* a row waits for Redis: ngx_http_civchat_import_resolved */
        return;
    }

    start = ngx_http_civchat_import_usec();

    for (n = 1; /* void */; n++) {

        rc = ngx_http_civchat_import_step(imp);

        if (rc == NGX_DONE) {
            ngx_http_civchat_import_finish(r, imp);
            return;
        }

        if (rc == NGX_AGAIN) {
            /* what is done so far goes out meanwhile */
            break;
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

    if (imp->row_pool == NULL) {
        ngx_post_event(&imp->slice, &ngx_posted_next_events);
    }
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
    ngx_http_civchat_plan_t  *plan;

    r = imp->request;
    ctx = imp->ctx;

    r->pool = pool;
    imp->row_pool = pool;
    imp->row_json = row;

    ctx->body = row;
    ctx->events.nelts = 0;
    ctx->ignored.nelts = 0;
    ngx_memzero(&ctx->user, sizeof(ngx_http_civchat_user_t));

    if (ngx_http_civchat_plan_by_body(pool, row, &kind, &id) != NGX_OK) {
        return ngx_http_civchat_import_row_done(imp, NGX_DECLINED);
    }

    plan = ngx_palloc(pool, sizeof(ngx_http_civchat_plan_t));

    rc = (plan != NULL
          && ngx_http_civchat_plan_api(r, ctx, plan,
                                       NGX_HTTP_CIVCHAT_OP_UPSERT, kind, &id)
             == NGX_OK)
         ? ngx_http_civchat_resolve(r, ctx, plan, NULL,
                                    ngx_http_civchat_import_resolved)
         : NGX_ERROR;

    if (rc == NGX_DONE) {
        /* a zone on Redis answers later: the slices wait for it */
        r->pool = imp->pool;
        return NGX_AGAIN;
    }

    return ngx_http_civchat_import_row_done(imp, rc);
}


static void
ngx_http_civchat_import_resolved(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t           *c;
    ngx_http_civchat_ctx_t     *ctx;
    ngx_http_civchat_import_t  *imp;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_civchat_module);
    imp = ctx->import;

    r->pool = imp->row_pool;

    if (ngx_http_civchat_import_row_done(imp, rc) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_ERROR);

    } else {
        ngx_http_civchat_import_run(r, imp);
    }

    ngx_http_run_posted_requests(c);
}


/*
 * A row's result (rc: resolve's, or NGX_DECLINED for a row that names no
 * profile), then its pool and JSON go.
 */

static ngx_int_t
ngx_http_civchat_import_row_done(ngx_http_civchat_import_t *imp,
    ngx_int_t rc)
{
    ngx_http_request_t      *r;
    ngx_http_civchat_ctx_t  *ctx;

    r = imp->request;
    ctx = imp->ctx;

    if (rc == NGX_DECLINED) {
        rc = ngx_http_civchat_import_error(imp, "missing_field",
                                           "ID is required: user_id, email "
                                           "or key");

    } else if (rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
        rc = ngx_http_civchat_import_error(imp, "store_unavailable",
                                           "the profile store (Redis) is "
                                           "not answering");

    } else if (rc != NGX_OK || ngx_http_civchat_emit_events(r, ctx) != NGX_OK)
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

    json_decref(imp->row_json);
    ngx_destroy_pool(imp->row_pool);

    imp->row_json = NULL;
    imp->row_pool = NULL;

    return rc;
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

    if (imp->row_pool != NULL) {
        /* a row that waited for Redis: its commands are cancelled */
        json_decref(imp->row_json);
        ngx_destroy_pool(imp->row_pool);
        imp->row_pool = NULL;
    }

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
