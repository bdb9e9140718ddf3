
/*
 * Copyright (C) civchat developers
 */


#ifndef _NGX_HTTP_CIVCHAT_HTTP_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_HTTP_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The parts of the HTTP store: its configuration (http_conf.c), the
 * sender (http.c), the spool directory it falls back to (spool.c) and
 * the reader of the store's answers (http_answer.c).  Other files know
 * it as ngx_http_civchat_http_t, through the functions of
 * ngx_http_civchat.h.
 */


/* room for the request header, before a batch's lines */
#define NGX_HTTP_CIVCHAT_HDR_RESERVE    1024

/* the answer read from the store; a longer one is read as far as this */
#define NGX_HTTP_CIVCHAT_RESP_MAX       16384

/* how often a worker looks for batches other workers spooled */
#define NGX_HTTP_CIVCHAT_SPOOL_SCAN     1000


typedef struct {
    ngx_str_t                     path;      /* the directory */
    off_t                         limit;     /* spool_size= */
    ngx_log_t                    *log;
    ngx_http_civchat_counters_t  *counters;  /* the store's */

    /* per worker */
    off_t                         bytes;     /* in it, as last seen */
    ngx_msec_t                    scanned;   /* when it was last read */
    ngx_uint_t                    seq;
    unsigned                      pending:1; /* it may hold batches */
} ngx_http_civchat_spool_t;


/* a spooled batch taken by this worker to be sent (spool.c) */
typedef struct ngx_http_civchat_claim_s  ngx_http_civchat_claim_t;


typedef struct {
    ngx_addr_t                    addr;
    ngx_str_t                     host;      /* Host header */
    ngx_str_t                     uri;       /* path and query */
} ngx_http_civchat_peer_t;


typedef struct {
    ngx_queue_t                   queue;
    u_char                       *start;     /* header space, then body */
    size_t                        size;      /* body capacity */
    size_t                        len;       /* body bytes */
    size_t                        hdr_len;   /* request header bytes */
    ngx_uint_t                    events;
    ngx_uint_t                    tries;
    ngx_http_civchat_claim_t     *claim;     /* from the spool */
} ngx_http_civchat_batch_t;


struct ngx_http_civchat_http_s {
    /* configuration */
    ngx_array_t                   peers;     /* ngx_http_civchat_peer_t */
    ngx_str_t                     name;      /* the first URL, for logs */
    ngx_uint_t                    batch_events;
    size_t                        batch_bytes;
    ngx_msec_t                    flush;
    ngx_msec_t                    timeout;
    ngx_msec_t                    keepalive_timeout;
    ngx_msec_t                    max_backoff;
    ngx_uint_t                    drop;      /* on_full=drop */

    /* per worker */
    ngx_log_t                    *log;
    ngx_http_civchat_batch_t     *current;
    ngx_queue_t                   sealed;
    ngx_uint_t                    nsealed;
    ngx_http_civchat_batch_t     *inflight;
    ngx_connection_t             *c;
    ngx_uint_t                    peer;
    ngx_event_t                   flush_ev;
    ngx_event_t                   retry_ev;
    ngx_msec_t                    backoff;
    ngx_msec_t                    sent_at;
    ngx_http_civchat_spool_t      spool;

    unsigned                      failing:1;
    unsigned                      logged:1;
    unsigned                      idle:1;

    /* the answer being read */
    size_t                        resp_len;
    u_char                        resp[NGX_HTTP_CIVCHAT_RESP_MAX];

    ngx_http_civchat_counters_t  *counters;  /* shared, see status.c */
    ngx_http_civchat_counters_t   unshared;
};


/* spool.c */
ngx_int_t ngx_http_civchat_spool_write(ngx_http_civchat_spool_t *sp,
    u_char *data, size_t len, ngx_uint_t events, ngx_log_t *log,
    ngx_uint_t force);
ngx_http_civchat_claim_t *ngx_http_civchat_spool_claim(
    ngx_http_civchat_spool_t *sp, size_t reserve, u_char **start,
    size_t *len, ngx_uint_t *events);
void ngx_http_civchat_spool_release(ngx_http_civchat_spool_t *sp,
    ngx_http_civchat_claim_t *claim);
void ngx_http_civchat_spool_sent(ngx_http_civchat_spool_t *sp,
    ngx_http_civchat_claim_t *claim);
void ngx_http_civchat_spool_poll(ngx_http_civchat_spool_t *sp);
ngx_int_t ngx_http_civchat_spool_full(ngx_http_civchat_spool_t *sp);

/* http_answer.c */
ngx_int_t ngx_http_civchat_http_parse(u_char *resp, size_t len, size_t size,
    ngx_uint_t eof, ngx_uint_t *status, ngx_uint_t *keepalive);
ngx_int_t ngx_http_civchat_http_chunked(u_char *p, u_char *last);
size_t ngx_http_civchat_http_body_text(u_char *resp, size_t len,
    u_char *text, size_t size);


#endif /* _NGX_HTTP_CIVCHAT_HTTP_H_INCLUDED_ */
