
/*
 * Copyright (C) civchat developers
 */


/*
 * The HTTP store's answer parser (http_answer.c): the input is one byte
 * of options, then the bytes the store answered.  ngx_http_civchat_http_parse() reads them as the
 * read handler does, once as all that has arrived so far and once at
 * the end of the connection, and a prefix of them before; the bytes
 * beyond what arrived are poisoned, so that reading them is a finding.
 * ngx_http_civchat_http_chunked() also reads the input as a body from
 * a buffer of its exact size.
 */


#include "ngx_http_civchat_http.h"

#include <sanitizer/asan_interface.h>

#include "common.h"


static ngx_int_t fuzz_parse(u_char *resp, const uint8_t *data, size_t len,
    ngx_uint_t eof, ngx_uint_t *status, ngx_uint_t *keepalive);


static u_char  fuzz_resp[NGX_HTTP_CIVCHAT_RESP_MAX];


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ngx_fuzz_init();

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char      *copy;
    size_t       prefix;
    ngx_int_t    rc, rc_prefix, rc_eof;
    ngx_uint_t   status, keepalive, status_prefix, keepalive_prefix;

    if (size < 1) {
        return 0;
    }

    prefix = data[0];

    data++;
    size--;

    if (size > NGX_HTTP_CIVCHAT_RESP_MAX) {
        size = NGX_HTTP_CIVCHAT_RESP_MAX;
    }

    prefix = (size == 0) ? 0 : size * prefix / 256;

    rc_prefix = fuzz_parse(fuzz_resp, data, prefix, 0, &status_prefix,
                           &keepalive_prefix);
    rc = fuzz_parse(fuzz_resp, data, size, 0, &status, &keepalive);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_AGAIN || rc == NGX_ERROR);

    if (rc == NGX_OK) {
        ngx_fuzz_assert(status <= 999 && keepalive <= 1);
    }

    /* more bytes never undo a complete answer */

    if (rc_prefix == NGX_OK) {
        ngx_fuzz_assert(rc == NGX_OK && status == status_prefix);
    }

    /* at the end of the connection, there is no waiting for more */

    rc_eof = fuzz_parse(fuzz_resp, data, size, 1, &status, &keepalive);

    ngx_fuzz_assert(rc_eof == NGX_OK || rc_eof == NGX_ERROR);

    if (rc == NGX_OK) {
        ngx_fuzz_assert(rc_eof == NGX_OK);
    }

    /* a chunked body alone, in a buffer of its exact size */

    copy = malloc(size ? size : 1);
    if (copy == NULL) {
        abort();
    }

    ngx_memcpy(copy, data, size);

    rc = ngx_http_civchat_http_chunked(copy, copy + size);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_AGAIN || rc == NGX_ERROR);

    free(copy);

    return 0;
}


static ngx_int_t
fuzz_parse(u_char *resp, const uint8_t *data, size_t len, ngx_uint_t eof,
    ngx_uint_t *status, ngx_uint_t *keepalive)
{
    ngx_int_t  rc;

    ngx_memcpy(resp, data, len);

    *status = 1000;
    *keepalive = 2;

    ASAN_POISON_MEMORY_REGION(resp + len, NGX_HTTP_CIVCHAT_RESP_MAX - len);

    rc = ngx_http_civchat_http_parse(resp, len, NGX_HTTP_CIVCHAT_RESP_MAX,
                                     eof, status, keepalive);

    ASAN_UNPOISON_MEMORY_REGION(resp + len, NGX_HTTP_CIVCHAT_RESP_MAX - len);

    return rc;
}
