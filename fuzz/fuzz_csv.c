
/*
 * Copyright (C) civchat developers
 */


/*
 * The CSV import of the server API (csv.c): the input is a CSV body,
 * read record by record by ngx_http_civchat_csv_record() as the import
 * does, each record from a buffer of its exact size.
 *
 * Every call consumes something and stays within the body; a record is
 * an object of non-empty valid UTF-8 strings named by the header; and it
 * reads the same from a fresh copy of the body (the records before it
 * were unquoted in place, and must not have touched its bytes).  A
 * record that fails on its own line (more fields than the header has
 * names) must end where the same record read with a wide header ends,
 * so that the rows after a bad one are never skipped.
 */


#include "ngx_http_civchat.h"

#include "common.h"


#define FUZZ_WIDE  64


static json_t  *wide;


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char        name[16];
    ngx_uint_t  i;

    ngx_fuzz_init();

    wide = json_array();
    if (wide == NULL) {
        abort();
    }

    for (i = 0; i < FUZZ_WIDE; i++) {
        snprintf(name, sizeof(name), "c%u", (unsigned) i);

        if (json_array_append_new(wide, json_string(name)) != 0) {
            abort();
        }
    }

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char      *one, *two, *p, *last, *q, *start, *nl;
    json_t      *header, *rec, *v, *w;
    ngx_uint_t   n, names;
    const char  *err, *werr, *key;

    /* records are unquoted in place: a copy for each reading */

    one = malloc(size ? size : 1);
    two = malloc(size ? size : 1);
    if (one == NULL || two == NULL) {
        abort();
    }

    ngx_memcpy(one, data, size);

    p = one;
    last = one + size;

    header = ngx_http_civchat_csv_record(&p, last, NULL, &err);

    ngx_fuzz_assert(p >= one && p <= last);

    if (header == NULL) {
        goto done;
    }

    ngx_fuzz_assert(json_is_array(header) && json_array_size(header) > 0);

    names = json_array_size(header);

    for (n = 0; p < last && n < 1000; n++) {
        start = p;

        rec = ngx_http_civchat_csv_record(&p, last, header, &err);

        ngx_fuzz_assert(p > start && p <= last);

        /*
         * the records before left this one's bytes as they came: read
         * from a fresh copy, it is the same
         */

        ngx_memcpy(two, data, size);
        q = two + (start - one);

        w = ngx_http_civchat_csv_record(&q, two + size, header, &werr);

        if (q - two != p - one || (w == NULL) != (rec == NULL)
            || (w != NULL && !json_equal(w, rec)))
        {
            ngx_fuzz_fail("the record at %d reads differently after the "
                          "records before it", (int) (start - one));
        }

        json_decref(w);

        if (rec != NULL) {
            ngx_fuzz_assert(err == NULL && json_is_object(rec));
            ngx_fuzz_assert(json_object_size(rec) <= names);

            json_object_foreach(rec, key, v) {
                ngx_fuzz_assert(json_is_string(v)
                                && json_string_length(v) > 0);
                ngx_fuzz_assert(ngx_fuzz_valid_utf8(
                                    (u_char *) json_string_value(v),
                                    json_string_length(v)));
            }

            json_decref(rec);
            continue;
        }

        if (err == NULL || ngx_strcmp(err, "more fields than the header "
                                           "has names") != 0
            || names >= FUZZ_WIDE)
        {
            continue;
        }

        /* the same record, read from a fresh copy with a wide header */

        ngx_memcpy(two, data, size);
        q = two + (start - one);

        w = ngx_http_civchat_csv_record(&q, two + size, wide, &werr);

        if (w == NULL) {
            continue;
        }

        json_decref(w);

        /* a record on a line of its own (in the input as it came) */

        nl = ngx_strlchr((u_char *) data + (start - one),
                         (u_char *) data + size, '\n');

        if (nl != NULL && nl + 1 - data == q - two && p - one != q - two) {
            ngx_fuzz_fail("a bad record ends at %d, not at %d: the next "
                          "one is lost", (int) (p - one), (int) (q - two));
        }
    }

    json_decref(header);

done:

    free(one);
    free(two);

    return 0;
}
