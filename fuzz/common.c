
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <stdarg.h>

#include "common.h"


ngx_log_t  *ngx_fuzz_log;

static ngx_log_t         ngx_fuzz_log_s;
static ngx_open_file_t   ngx_fuzz_log_file;
static ngx_cycle_t       ngx_fuzz_cycle;


void
ngx_fuzz_init(void)
{
    ngx_uint_t  n;

    if (ngx_fuzz_log != NULL) {
        return;
    }

    /*
     * errors are not logged (log_level 0): a fuzzer makes millions of
     * them; FUZZ_LOG=1 logs them to stderr
     */

    ngx_fuzz_log_file.fd = ngx_stderr;
    ngx_fuzz_log_s.file = &ngx_fuzz_log_file;
    ngx_fuzz_log_s.log_level = getenv("FUZZ_LOG") ? NGX_LOG_DEBUG : 0;
    ngx_fuzz_log = &ngx_fuzz_log_s;

    ngx_pid = getpid();
    ngx_pagesize = getpagesize();
    ngx_cacheline_size = NGX_CPU_CACHE_LINE;

    for (n = ngx_pagesize; n >>= 1; ngx_pagesize_shift++) { /* void */ }

    ngx_time_init();
    ngx_slab_sizes_init();

    ngx_fuzz_cycle.log = ngx_fuzz_log;
    ngx_cycle = &ngx_fuzz_cycle;
}


ngx_http_request_t *
ngx_fuzz_request(void)
{
    ngx_pool_t          *pool;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    pool = ngx_create_pool(4096, ngx_fuzz_log);
    if (pool == NULL) {
        abort();
    }

    r = ngx_pcalloc(pool, sizeof(ngx_http_request_t));
    c = ngx_pcalloc(pool, sizeof(ngx_connection_t));
    if (r == NULL || c == NULL) {
        abort();
    }

    c->log = ngx_fuzz_log;
    c->pool = pool;
    ngx_str_set(&c->addr_text, "192.0.2.1");

    r->connection = c;
    r->pool = pool;

    return r;
}


void
ngx_fuzz_request_free(ngx_http_request_t *r)
{
    ngx_destroy_pool(r->pool);
}


ngx_uint_t
ngx_fuzz_valid_utf8(u_char *p, size_t len)
{
    u_char    *last;
    size_t     n, i;
    uint32_t   c, min;

    last = p + len;

    while (p < last) {
        c = *p++;

        if (c < 0x80) {
            continue;
        }

        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            c &= 0x1f;
            min = 0x80;

        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            c &= 0x0f;
            min = 0x800;

        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            c &= 0x07;
            min = 0x10000;

        } else {
            return 0;
        }

        if ((size_t) (last - p) < n) {
            return 0;
        }

        for (i = 0; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return 0;
            }

            c = (c << 6) | (p[i] & 0x3f);
        }

        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
            return 0;
        }

        p += n;
    }

    return 1;
}


void
ngx_fuzz_fail(const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    fprintf(stderr, "\n");
    abort();
}
