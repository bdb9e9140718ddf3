
/*
 * Copyright (C) civchat developers
 */


/*
 * The text cleaner of request headers and p.gif arguments (handler.c,
 * compiled in here for its static function): the input is one byte
 * choosing the limit, then the header's value.
 *
 * ngx_http_civchat_clean_text() promises text that JSON can carry: valid
 * UTF-8 without control characters, within the limit; and text that
 * already is such is kept as it is.
 */


#include "ngx_http_civchat_handler.c"

#include "common.h"


static const size_t  fuzz_max[] = {
    NGX_HTTP_CIVCHAT_UA_MAX, NGX_HTTP_CIVCHAT_CONTEXT_MAX, 1, 3, 7, 64
};


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ngx_fuzz_init();

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t               max, i;
    json_t              *s;
    ngx_str_t            in, out;
    ngx_uint_t           clean;
    ngx_http_request_t  *r;

    if (size < 1) {
        return 0;
    }

    max = fuzz_max[data[0] % (sizeof(fuzz_max) / sizeof(fuzz_max[0]))];

    r = ngx_fuzz_request();

    /* in a buffer of its exact size */

    in.len = size - 1;
    in.data = ngx_pnalloc(r->pool, in.len ? in.len : 1);
    if (in.data == NULL) {
        abort();
    }

    ngx_memcpy(in.data, data + 1, in.len);

    ngx_http_civchat_clean_text(r, &in, max, &out);

    ngx_fuzz_assert(out.len <= max);
    ngx_fuzz_assert(out.len == 0 || out.data != NULL);
    ngx_fuzz_assert(ngx_fuzz_valid_utf8(out.data, out.len));

    for (i = 0; i < out.len; i++) {
        ngx_fuzz_assert(out.data[i] >= 0x20 && out.data[i] != 0x7f);
    }

    /* what it gives JSON is taken */

    s = json_stringn((char *) out.data, out.len);
    ngx_fuzz_assert(s != NULL);
    json_decref(s);

    /* clean text within the limit is kept */

    clean = ngx_fuzz_valid_utf8(in.data, in.len);

    for (i = 0; clean && i < in.len; i++) {
        clean = (in.data[i] >= 0x20 && in.data[i] != 0x7f);
    }

    if (clean && in.len <= max) {
        ngx_fuzz_assert(out.len == in.len
                        && ngx_memcmp(out.data, in.data, in.len) == 0);
    }

    ngx_fuzz_request_free(r);

    return 0;
}
