
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * Where event lines go.  The file sink follows the buffered access_log:
 * a buffer allocated at configuration time (so every worker has its own
 * copy after fork), flushed when the next line would not fit, by a
 * cancelable timer, before nginx reopens the file on "nginx -s reopen",
 * and when the worker exits.  Lines are only ever written whole.
 */


struct ngx_http_civchat_sink_s {
    ngx_http_civchat_http_t      *http;      /* an HTTP store, or */
    ngx_open_file_t              *file;      /* a file */
    u_char                       *start;
    u_char                       *pos;
    u_char                       *last;
    ngx_msec_t                    flush;
    ngx_event_t                   event;
    ngx_uint_t                    failed;    /* unsigned: 1 */
    ngx_http_civchat_counters_t  *counters;
    ngx_http_civchat_counters_t   unshared;  /* before init_process */
};


static ngx_http_civchat_sink_t *ngx_http_civchat_sink_http(ngx_conf_t *cf,
    ngx_http_civchat_main_conf_t *mcf, ngx_str_t *args, ngx_uint_t n);
static ngx_int_t ngx_http_civchat_sink_params(ngx_conf_t *cf,
    ngx_str_t *args, ngx_uint_t n, ngx_str_t *path, size_t *buffer,
    ngx_msec_t *flush);
static void ngx_http_civchat_sink_reopen_flush(ngx_open_file_t *file,
    ngx_log_t *log);
static void ngx_http_civchat_sink_timer(ngx_event_t *ev);
static void ngx_http_civchat_sink_write_fd(ngx_http_civchat_sink_t *sink,
    ngx_log_t *log, u_char *data, size_t len);


ngx_http_civchat_sink_t *
ngx_http_civchat_sink_create(ngx_conf_t *cf,
    ngx_http_civchat_main_conf_t *mcf, ngx_str_t *args, ngx_uint_t n)
{
    size_t                     buffer;
    ngx_str_t                  path;
    ngx_uint_t                 i;
    ngx_msec_t                 flush;
    ngx_open_file_t           *file;
    ngx_http_civchat_sink_t   *sink, **sinks, **sp;

    if (ngx_strncmp(args[0].data, "http://", 7) == 0) {
        return ngx_http_civchat_sink_http(cf, mcf, args, n);
    }

    if (ngx_http_civchat_sink_params(cf, args, n, &path, &buffer, &flush)
        != NGX_OK)
    {
        return NULL;
    }

    file = ngx_conf_open_file(cf->cycle, &path);
    if (file == NULL) {
        return NULL;
    }

    /* locations naming one file share its buffer */
    sinks = mcf->sinks->elts;

    for (i = 0; i < mcf->sinks->nelts; i++) {
        if (sinks[i]->file == file) {
            return sinks[i];
        }
    }

    sink = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_sink_t));
    if (sink == NULL) {
        return NULL;
    }

    sink->start = ngx_pnalloc(cf->pool, buffer);
    if (sink->start == NULL) {
        return NULL;
    }

    sink->file = file;
    sink->counters = &sink->unshared;
    sink->pos = sink->start;
    sink->last = sink->start + buffer;
    sink->flush = flush;

    sink->event.handler = ngx_http_civchat_sink_timer;
    sink->event.data = sink;
    sink->event.log = &cf->cycle->new_log;
    sink->event.cancelable = 1;

    file->flush = ngx_http_civchat_sink_reopen_flush;
    file->data = sink;

    sp = ngx_array_push(mcf->sinks);
    if (sp == NULL) {
        return NULL;
    }

    *sp = sink;

    return sink;
}


/*
 * An HTTP store.  Its spool directory is registered as an nginx path,
 * so the master creates it, owned by the workers' user.
 */

static ngx_http_civchat_sink_t *
ngx_http_civchat_sink_http(ngx_conf_t *cf, ngx_http_civchat_main_conf_t *mcf,
    ngx_str_t *args, ngx_uint_t n)
{
    ngx_str_t                *spool, *other;
    ngx_uint_t                i;
    ngx_path_t               *path;
    ngx_http_civchat_sink_t  *sink, **sp, **sinks;

    sink = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_sink_t));
    if (sink == NULL) {
        return NULL;
    }

    sink->http = ngx_http_civchat_http_create(cf, args, n);
    if (sink->http == NULL) {
        return NULL;
    }

    spool = ngx_http_civchat_http_spool_dir(sink->http);
    sinks = mcf->sinks->elts;

    for (i = 0; i < mcf->sinks->nelts; i++) {
        if (sinks[i]->http == NULL) {
            continue;
        }

        other = ngx_http_civchat_http_spool_dir(sinks[i]->http);

        if (other->len != spool->len
            || ngx_strncmp(other->data, spool->data, spool->len) != 0)
        {
            continue;
        }

        /* the same store named in several locations is one store */
        if (ngx_http_civchat_http_same(sinks[i]->http, sink->http)) {
            return sinks[i];
        }

        /* batches in a spool are replayed to that spool's store */
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "civchat_store: spool \"%V\" is already "
                               "used by another civchat_store", spool);
            return NULL;
        }
    }

    path = ngx_pcalloc(cf->pool, sizeof(ngx_path_t));
    if (path == NULL) {
        return NULL;
    }

    path->name = *spool;
    path->conf_file = cf->conf_file->file.name.data;
    path->line = cf->conf_file->line;

    if (ngx_add_path(cf, &path) != NGX_OK) {
        return NULL;
    }

    sp = ngx_array_push(mcf->sinks);
    if (sp == NULL) {
        return NULL;
    }

    *sp = sink;

    return sink;
}


static ngx_int_t
ngx_http_civchat_sink_params(ngx_conf_t *cf, ngx_str_t *args, ngx_uint_t n,
    ngx_str_t *path, size_t *buffer, ngx_msec_t *flush)
{
    ssize_t     size;
    ngx_str_t   s;
    ngx_uint_t  i;

    ngx_str_null(path);
    *buffer = 64 * 1024;
    *flush = 1000;

    for (i = 0; i < n; i++) {

        if (ngx_strncmp(args[i].data, "file=", 5) == 0 && args[i].len > 5) {
            path->data = args[i].data + 5;
            path->len = args[i].len - 5;
            continue;
        }

        if (ngx_strncmp(args[i].data, "buffer=", 7) == 0) {
            s.data = args[i].data + 7;
            s.len = args[i].len - 7;

            size = ngx_parse_size(&s);
            if (size == NGX_ERROR || size < 1024) {
                goto invalid;
            }

            *buffer = size;
            continue;
        }

        if (ngx_strncmp(args[i].data, "flush=", 6) == 0) {
            s.data = args[i].data + 6;
            s.len = args[i].len - 6;

            *flush = ngx_parse_time(&s, 0);
            if (*flush == (ngx_msec_t) NGX_ERROR || *flush == 0) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (path->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "civchat_store needs \"file=path\" or \"off\"");
        return NGX_ERROR;
    }

    return NGX_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &args[i]);

    return NGX_ERROR;
}


ngx_int_t
ngx_http_civchat_sink_write(ngx_http_civchat_sink_t *sink, ngx_log_t *log,
    u_char *line, size_t len)
{
    if (sink->http) {
        return ngx_http_civchat_http_write(sink->http, log, line, len);
    }

    (void) ngx_atomic_fetch_add(&sink->counters->forwarded, 1);

    if (len > (size_t) (sink->last - sink->pos)) {
        ngx_http_civchat_sink_flush(sink, log);
    }

    if (len > (size_t) (sink->last - sink->pos)) {
        /* larger than the whole buffer: straight to the file */
        ngx_http_civchat_sink_write_fd(sink, log, line, len);
        return NGX_OK;
    }

    sink->pos = ngx_cpymem(sink->pos, line, len);

    if (!sink->event.timer_set) {
        ngx_add_timer(&sink->event, sink->flush);
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_sink_full(ngx_http_civchat_sink_t *sink)
{
    return sink->http && !ngx_http_civchat_http_drops(sink->http)
           && ngx_http_civchat_http_full(sink->http);
}


void
ngx_http_civchat_sink_init_process(ngx_http_civchat_sink_t *sink,
    ngx_cycle_t *cycle, ngx_http_civchat_counters_t *counters)
{
    if (sink->http) {
        if (counters != NULL) {
            ngx_http_civchat_http_set_counters(sink->http, counters);
        }

        ngx_http_civchat_http_init_process(sink->http, cycle);
        return;
    }

    if (counters != NULL) {
        sink->counters = counters;
    }
}


ngx_str_t *
ngx_http_civchat_sink_name(ngx_http_civchat_sink_t *sink)
{
    if (sink->http) {
        return ngx_http_civchat_http_name(sink->http);
    }

    return &sink->file->name;
}


void
ngx_http_civchat_sink_exit_process(ngx_http_civchat_sink_t *sink,
    ngx_cycle_t *cycle)
{
    if (sink->http) {
        ngx_http_civchat_http_exit_process(sink->http, cycle);
        return;
    }

    ngx_http_civchat_sink_flush(sink, cycle->log);
}


void
ngx_http_civchat_sink_flush(ngx_http_civchat_sink_t *sink, ngx_log_t *log)
{
    if (sink->event.timer_set) {
        ngx_del_timer(&sink->event);
    }

    if (sink->pos == sink->start) {
        return;
    }

    ngx_http_civchat_sink_write_fd(sink, log, sink->start,
                                   sink->pos - sink->start);
    sink->pos = sink->start;
}


static void
ngx_http_civchat_sink_write_fd(ngx_http_civchat_sink_t *sink, ngx_log_t *log,
    u_char *data, size_t len)
{
    ssize_t  n;

    n = ngx_write_fd(sink->file->fd, data, len);

    if (n == (ssize_t) len) {
        sink->failed = 0;
        return;
    }

    (void) ngx_atomic_fetch_add(&sink->counters->errors, 1);

    /* a full disk is logged once per failure run, not once a line */
    if (!sink->failed) {
        sink->failed = 1;

        if (n == -1) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                          "civchat: writing events to \"%s\" failed",
                          sink->file->name.data);

        } else {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "civchat: writing events to \"%s\" was "
                          "incomplete, %z of %uz bytes written",
                          sink->file->name.data, n, len);
        }
    }
}


static void
ngx_http_civchat_sink_reopen_flush(ngx_open_file_t *file, ngx_log_t *log)
{
    ngx_http_civchat_sink_flush(file->data, log);
}


static void
ngx_http_civchat_sink_timer(ngx_event_t *ev)
{
    ngx_http_civchat_sink_flush(ev->data, ev->log);
}
