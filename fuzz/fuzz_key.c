
/*
 * Copyright (C) civchat developers
 */


/*
 * The visitor key (key.c): ngx_http_civchat_read_key() on a request
 * whose Cookie headers and JSON body come from the input, and
 * ngx_http_civchat_valid_key() on the raw input.  The input is the value
 * of one Cookie header a line, an empty line, then the request body.
 *
 * The key taken must be a valid key, and the bytes of one of the cookies
 * named by civchat_cookie or of the body's "key" or "user_key"; so must
 * an e-mail link's key ("link_key"), taken only when there is no other.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "common.h"


#define FUZZ_COOKIES  8


static ngx_http_civchat_loc_conf_t  lcf;


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ngx_fuzz_init();

    ngx_str_set(&lcf.cookie_name, "civchat_key");

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                  *p, *last, *nl;
    size_t                   i;
    ngx_str_t                key, link_key;
    ngx_uint_t               n, valid;
    ngx_table_elt_t         *h;
    ngx_http_request_t      *r;
    ngx_http_civchat_ctx_t   ctx;
#if (nginx_version < 1023000)
    ngx_table_elt_t        **ph;
#endif

    valid = ngx_http_civchat_valid_key((u_char *) data, size);

    ngx_fuzz_assert(valid == 0 || valid == 1);

    if (size >= NGX_HTTP_CIVCHAT_KEY_MIN && size <= NGX_HTTP_CIVCHAT_KEY_MAX) {
        for (i = 0; i < size; i++) {
            if (!isalnum(data[i])) {
                break;
            }
        }

        ngx_fuzz_assert(valid == (i == size));

    } else {
        ngx_fuzz_assert(!valid);
    }

    r = ngx_fuzz_request();

#if (nginx_version < 1023000)
    if (ngx_array_init(&r->headers_in.cookies, r->pool, 2,
                       sizeof(ngx_table_elt_t *))
        != NGX_OK)
    {
        abort();
    }
#endif

    p = (u_char *) data;
    last = p + size;

    for (n = 0; p < last && n < FUZZ_COOKIES; n++) {
        nl = ngx_strlchr(p, last, '\n');
        if (nl == NULL) {
            nl = last;
        }

        if (nl == p) {
            p++;
            break;
        }

        h = ngx_pcalloc(r->pool, sizeof(ngx_table_elt_t));
        if (h == NULL) {
            abort();
        }

        ngx_str_set(&h->key, "Cookie");

        /* as nginx has them: in a buffer of their own, NUL-terminated */

        h->value.len = nl - p;
        h->value.data = ngx_pnalloc(r->pool, h->value.len + 1);
        if (h->value.data == NULL) {
            abort();
        }

        *ngx_cpymem(h->value.data, p, h->value.len) = '\0';

#if (nginx_version >= 1023000)
        h->next = r->headers_in.cookie;
        r->headers_in.cookie = h;
#else
        ph = ngx_array_push(&r->headers_in.cookies);
        if (ph == NULL) {
            abort();
        }

        *ph = h;
#endif

        p = nl + 1;
    }

    ngx_memzero(&ctx, sizeof(ngx_http_civchat_ctx_t));
    ctx.lcf = &lcf;

    if (p < last) {
        ctx.body = json_loadb((char *) p, last - p, 0, NULL);
    }

    ngx_http_civchat_read_key(r, &ctx, &key, &link_key);

    ngx_fuzz_assert(key.len == 0 || link_key.len == 0);

    if (key.len) {
        ngx_fuzz_assert(ngx_http_civchat_valid_key(key.data, key.len));

        /* the key points into a cookie or the body, not elsewhere */

        ngx_fuzz_assert(ngx_strlcasestrn((u_char *) data,
                                         (u_char *) data + size,
                                         key.data, key.len - 1)
                        != NULL
                        || ctx.body != NULL);
    }

    if (link_key.len) {
        ngx_fuzz_assert(ctx.body != NULL
                        && ngx_http_civchat_valid_key(link_key.data,
                                                      link_key.len));
    }

    json_decref(ctx.body);
    ngx_fuzz_request_free(r);

    return 0;
}
