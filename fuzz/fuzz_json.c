
/*
 * Copyright (C) civchat developers
 */


/*
 * The JSON reader and writer (json.c) against jansson, which they stand
 * in for: on any input, ngx_http_civchat_json_parse() must fail exactly
 * when json_loadb() with JSON_DECODE_ANY fails and otherwise build an
 * equal value; ngx_http_civchat_json_write() must write exactly
 * ngx_http_civchat_json_size() bytes, which read back as the same value
 * (every real to the bit) and, for values without reals (json.c writes
 * them shorter), are byte for byte what json_dumpb() with JSON_COMPACT
 * writes.
 *
 * One difference is meant: jansson skips a NUL byte that directly
 * follows a number ("0\0" is 0 to it), json.c rejects every NUL byte
 * outside a string as it does inside one.
 *
 * ngx_http_civchat_json_integer() (what user_id takes a number as) says
 * a real is an integer only when the real's value is that integer; and
 * of a real read back from json.c's own text, which is exactly its
 * double up to 2^53 (past it, the shortest text that reads back as the
 * double is not always the double's integer), that it is one exactly
 * when the double is a whole number.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "common.h"


static void fuzz_compare_text(json_t *v, ngx_pool_t *pool);
static ngx_uint_t fuzz_has_real(json_t *v);
static void fuzz_integers(json_t *v, ngx_pool_t *pool, ngx_uint_t exact);


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ngx_fuzz_init();

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                         *copy;
    json_t                         *mine, *theirs;
    ngx_pool_t                     *pool;
    json_error_t                    jerr;
    ngx_http_civchat_json_error_t   err;

    pool = ngx_create_pool(1024, ngx_fuzz_log);
    ngx_fuzz_assert(pool != NULL);

    /* a copy of exactly size bytes, for ASan to see any overread */
    copy = malloc(size ? size : 1);
    ngx_fuzz_assert(copy != NULL);
    ngx_memcpy(copy, data, size);

    err.text = NULL;
    mine = ngx_http_civchat_json_parse(pool, copy, size, &err);
    theirs = json_loadb((char *) data, size, JSON_DECODE_ANY, &jerr);

    if (theirs != NULL && memchr(data, '\0', size) != NULL) {
        ngx_fuzz_assert(mine == NULL);
        json_decref(theirs);
        theirs = NULL;
    }

    if ((mine == NULL) != (theirs == NULL)) {
        ngx_fuzz_fail("json.c %s (%s at %zu), jansson %s (%s at %d)",
                      mine ? "accepts" : "rejects",
                      err.text ? err.text : "-", err.position,
                      theirs ? "accepts" : "rejects",
                      theirs ? "-" : jerr.text, jerr.position);
    }

    if (mine == NULL) {
        ngx_fuzz_assert(err.text != NULL);
        ngx_fuzz_assert(err.position <= size);

    } else {
        ngx_fuzz_assert(json_equal(mine, theirs));
        fuzz_integers(mine, pool, 0);
        fuzz_compare_text(theirs, pool);
    }

    json_decref(mine);
    json_decref(theirs);
    free(copy);
    ngx_destroy_pool(pool);

    return 0;
}


static void
fuzz_compare_text(json_t *v, ngx_pool_t *pool)
{
    char       *dumped;
    json_t     *back;
    u_char     *text, *last;
    size_t      size, len;

    size = ngx_http_civchat_json_size(v);

    /* one byte more than promised, to catch a write past the size */
    text = ngx_pnalloc(pool, size + 1);
    ngx_fuzz_assert(text != NULL);
    text[size] = 0xA5;

    last = ngx_http_civchat_json_write(text, v);

    ngx_fuzz_assert((size_t) (last - text) == size);
    ngx_fuzz_assert(text[size] == 0xA5);

    len = json_dumpb(v, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
    dumped = malloc(len + 1);
    ngx_fuzz_assert(dumped != NULL);
    (void) json_dumpb(v, dumped, len, JSON_COMPACT | JSON_ENCODE_ANY);

    if (!fuzz_has_real(v)
        && (len != size || ngx_memcmp(dumped, text, len) != 0))
    {
        ngx_fuzz_fail("json.c wrote \"%.*s\", jansson \"%.*s\"",
                      (int) size, text, (int) len, dumped);
    }

    free(dumped);

    back = ngx_http_civchat_json_parse(pool, text, size, NULL);
    ngx_fuzz_assert(back != NULL && json_equal(back, v));
    fuzz_integers(back, pool, 1);
    json_decref(back);
}


static void
fuzz_integers(json_t *v, ngx_pool_t *pool, ngx_uint_t exact)
{
    double       d;
    size_t       i;
    json_t      *item;
    ngx_int_t    rc;
    json_int_t   n;
    const char  *key;
    ngx_uint_t   whole, big;

    switch (json_typeof(v)) {

    case JSON_REAL:
        d = json_real_value(v);
        whole = (d >= -9223372036854775808.0 && d < 9223372036854775808.0
                 && (double) (int64_t) d == d);

        big = (d > 9007199254740992.0 || d < -9007199254740992.0);

        rc = ngx_http_civchat_json_integer(pool, v, &n);

        if (rc == NGX_OK && !(whole && (n > 9007199254740992LL
                                        || n < -9007199254740992LL
                                        || (double) n == d)))
        {
            ngx_fuzz_fail("the real %.17g read as the integer %lld", d,
                          (long long) n);
        }

        if (exact && !big && (rc == NGX_OK) != whole) {
            ngx_fuzz_fail("the real %.17g, written and read back, %s an "
                          "integer", d, whole ? "is not" : "is");
        }

        if (exact && !big && whole) {
            ngx_fuzz_assert(n == (json_int_t) d);
        }

        return;

    case JSON_ARRAY:
        json_array_foreach(v, i, item) {
            fuzz_integers(item, pool, exact);
        }

        return;

    case JSON_OBJECT:
        json_object_foreach(v, key, item) {
            fuzz_integers(item, pool, exact);
        }

        return;

    default:
        return;
    }
}


static ngx_uint_t
fuzz_has_real(json_t *v)
{
    size_t       i;
    json_t      *item;
    const char  *key;

    switch (json_typeof(v)) {

    case JSON_REAL:
        return 1;

    case JSON_ARRAY:
        json_array_foreach(v, i, item) {
            if (fuzz_has_real(item)) {
                return 1;
            }
        }

        return 0;

    case JSON_OBJECT:
        json_object_foreach(v, key, item) {
            if (fuzz_has_real(item)) {
                return 1;
            }
        }

        return 0;

    default:
        return 0;
    }
}
