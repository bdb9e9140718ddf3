
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * Size classes in 16-byte steps for what a profile zone holds, carved
 * from whole slab pages.
 *
 * ngx_slab rounds every request up to a power of two: a profile's blob
 * of 330 bytes (its key, user_id, email and ten attributes) took 512.
 * Here a page carved for a class holds as many chunks of that size as
 * fit; a table beside the pages says which class each page was carved
 * for and how many of its chunks are in use.  Free chunks wait in their
 * class's list; a page goes back to the slab when its last chunk is
 * freed, so memory moves between classes as profiles come and go.
 * Requests above NGX_HTTP_CIVCHAT_MEM_MAX go to the slab as they are.
 *
 * Every function here runs with the zone locked.
 */


#define ngx_http_civchat_mem_page(mem, p)                                    \
    (((u_char *) (p) - (mem)->start) >> ngx_pagesize_shift)


ngx_int_t
ngx_http_civchat_mem_init(ngx_slab_pool_t *shpool, ngx_http_civchat_mem_t *mem)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_CIVCHAT_MEM_CLASSES; i++) {
        ngx_queue_init(&mem->free[i]);
    }

    mem->start = shpool->start;
    mem->pages = (shpool->end - shpool->start) >> ngx_pagesize_shift;

    mem->page_class = ngx_slab_calloc_locked(shpool, mem->pages);
    mem->page_used = ngx_slab_calloc_locked(shpool,
                                       mem->pages * sizeof(uint16_t));

    if (mem->page_class == NULL || mem->page_used == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


void *
ngx_http_civchat_mem_alloc(ngx_slab_pool_t *shpool,
    ngx_http_civchat_mem_t *mem, size_t size)
{
    u_char       *page, *p, *last;
    ngx_uint_t    n, c;
    ngx_queue_t  *list, *q;

    if (size > NGX_HTTP_CIVCHAT_MEM_MAX) {
        return ngx_slab_alloc_locked(shpool, size);
    }

    size = ngx_align(ngx_max(size, 1), NGX_HTTP_CIVCHAT_MEM_STEP);
    c = size / NGX_HTTP_CIVCHAT_MEM_STEP - 1;
    list = &mem->free[c];

    if (ngx_queue_empty(list)) {
        page = ngx_slab_alloc_locked(shpool, ngx_pagesize);
        if (page == NULL) {
            return NULL;
        }

        n = ngx_http_civchat_mem_page(mem, page);
        mem->page_class[n] = (u_char) (c + 1);
        mem->page_used[n] = 0;

        last = page + ngx_pagesize;

        for (p = page; p + size <= last; p += size) {
            ngx_queue_insert_tail(list, (ngx_queue_t *) p);
        }
    }

    q = ngx_queue_head(list);
    ngx_queue_remove(q);

    mem->page_used[ngx_http_civchat_mem_page(mem, q)]++;

    return q;
}


void
ngx_http_civchat_mem_free(ngx_slab_pool_t *shpool,
    ngx_http_civchat_mem_t *mem, void *chunk)
{
    u_char      *page, *p, *last;
    size_t       size;
    ngx_uint_t   n, c;

    n = ngx_http_civchat_mem_page(mem, chunk);

    if (mem->page_class[n] == 0) {
        /* larger than NGX_HTTP_CIVCHAT_MEM_MAX: the slab's own */
        ngx_slab_free_locked(shpool, chunk);
        return;
    }

    c = mem->page_class[n] - 1;
    size = (c + 1) * NGX_HTTP_CIVCHAT_MEM_STEP;

    /* the last freed is the first reused: its page is likely warm */
    ngx_queue_insert_head(&mem->free[c], (ngx_queue_t *) chunk);

    if (--mem->page_used[n] != 0) {
        return;
    }

    /* every chunk of the page is free: the page goes back to the slab */

    page = mem->start + (n << ngx_pagesize_shift);
    last = page + ngx_pagesize;

    for (p = page; p + size <= last; p += size) {
        ngx_queue_remove((ngx_queue_t *) p);
    }

    mem->page_class[n] = 0;

    ngx_slab_free_locked(shpool, page);
}
