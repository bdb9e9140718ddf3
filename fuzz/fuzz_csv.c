
/*
 * Copyright (C) civchat developers
 */


/*
 * The CSV import of the server API (csv.c): the input is a CSV body,
 * its header read by ngx_http_civchat_csv_header() and then record by
 * record by ngx_http_civchat_csv_record() as the import does, from a
 * buffer of its exact size.
 *
 * Every call consumes something and stays within the body; the header
 * is valid UTF-8 names without a NUL, none non-empty twice; a record is
 * an object of non-empty valid UTF-8 strings without a NUL, named by the
 * header; and it reads the same from a fresh copy of the body (the
 * records before it were unquoted in place, and must not have touched
 * its bytes).  A record that fails on its own line (more fields than the
 * header has names) must end where the same record read with a wide
 * header ends, so that the rows after a bad one are never skipped.
 *
 * The whole reading (the header, then each record or error) is the
 * same with a UTF-8 byte order mark before the body; and a body without
 * quotes reads as its lines split at CRLF, LF or CR and its fields at
 * commas, checked against a reading written here for that.
 *
 * The import reads a large body a window at a time and takes only the
 * records that end in it: ngx_http_civchat_csv_end(), fed the body from
 * a record's start in pieces (of 1 to 16 bytes, from the input), must
 * say the record ends where ngx_http_civchat_csv_record() ends it (a
 * CRLF cut between two pieces aside), or, finding no end, that a quote
 * is open whose line the record ends with, or that it runs to the end.
 */


#include "ngx_http_civchat.h"

#include "common.h"


#define FUZZ_WIDE  64


static json_t *fuzz_read(const uint8_t *data, size_t size,
    ngx_uint_t *complete);
static json_t *fuzz_reference(const uint8_t *data, size_t size);
static json_t *fuzz_line(json_t *header, const u_char *p, const u_char *last);
static ngx_uint_t fuzz_twice(json_t *header);
static void fuzz_end(const uint8_t *data, size_t size, size_t start,
    size_t end);
static void fuzz_check_string(json_t *v);


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
    size_t       i;
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

    header = ngx_http_civchat_csv_header(&p, last, &err);

    ngx_fuzz_assert(p >= one && p <= last);

    if (header == NULL) {
        ngx_fuzz_assert(err != NULL);
        goto done;
    }

    ngx_fuzz_assert(json_is_array(header) && json_array_size(header) > 0);

    names = json_array_size(header);

    json_array_foreach(header, n, v) {
        fuzz_check_string(v);

        json_array_foreach(header, i, w) {
            ngx_fuzz_assert(i == n || json_string_length(v) == 0
                            || !json_equal(v, w));
        }
    }

    for (n = 0; p < last && n < 1000; n++) {
        start = p;

        rec = ngx_http_civchat_csv_record(&p, last, header, &err);

        ngx_fuzz_assert(p > start && p <= last);

        fuzz_end(data, size, start - one, p - one);

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
                fuzz_check_string(v);
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

    /* a byte order mark before the body changes nothing */

    if (!(size >= 3 && data[0] == 0xef && data[1] == 0xbb && data[2] == 0xbf)
        && !(size >= 2 && ((data[0] == 0xff && data[1] == 0xfe)
                           || (data[0] == 0xfe && data[1] == 0xff))))
    {
        two = malloc(size + 3);
        if (two == NULL) {
            abort();
        }

        ngx_memcpy(two, "\xef\xbb\xbf", 3);
        ngx_memcpy(two + 3, data, size);

        v = fuzz_read(data, size, &n);
        w = fuzz_read(two, size + 3, &n);

        if (!json_equal(v, w)) {
            ngx_fuzz_fail("the body reads differently after a byte order "
                          "mark");
        }

        json_decref(v);
        json_decref(w);
        free(two);
    }

    /* without quotes: lines and commas */

    if (ngx_strlchr((u_char *) data, (u_char *) data + size, '"') == NULL) {
        v = fuzz_read(data, size, &n);

        if (n) {
            w = fuzz_reference(data, size);

            if (!json_equal(v, w)) {
                ngx_fuzz_fail("a body without quotes is not read as its "
                              "lines and commas");
            }

            json_decref(w);
        }

        json_decref(v);
    }

    return 0;
}


/*
 * The whole reading of a body, from a copy: [header or null, then each
 * record, or "error" for a wrong one]; *complete: to its end
 */

static json_t *
fuzz_read(const uint8_t *data, size_t size, ngx_uint_t *complete)
{
    u_char      *copy, *p, *last;
    json_t      *out, *header, *rec;
    ngx_uint_t   n;
    const char  *err;

    copy = malloc(size ? size : 1);
    out = json_array();
    if (copy == NULL || out == NULL) {
        abort();
    }

    ngx_memcpy(copy, data, size);

    p = copy;
    last = copy + size;

    header = ngx_http_civchat_csv_header(&p, last, &err);

    json_array_append_new(out, header ? header : json_null());

    for (n = 0; header != NULL && p < last && n < 10000; n++) {
        rec = ngx_http_civchat_csv_record(&p, last, header, &err);

        if (rec != NULL) {
            json_array_append_new(out, rec);

        } else if (err != NULL) {
            json_array_append_new(out, json_string("error"));
        }
    }

    *complete = (header == NULL || p == last);

    free(copy);

    return out;
}


/* the same, for a body without quotes, by lines and commas */

static json_t *
fuzz_reference(const uint8_t *data, size_t size)
{
    u_char        *eol, *next, *f, *comma;
    json_t        *out, *header, *rec, *name;
    const u_char  *p, *last;

    out = json_array();
    if (out == NULL) {
        abort();
    }

    p = data;
    last = data + size;

    if (size >= 2 && ((p[0] == 0xff && p[1] == 0xfe)
                      || (p[0] == 0xfe && p[1] == 0xff)))
    {
        json_array_append_new(out, json_null());
        return out;
    }

    if (size >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
        p += 3;
    }

    header = NULL;

    do {
        for (eol = (u_char *) p; eol < last && *eol != '\n' && *eol != '\r';
             eol++)
        {
            /* void */
        }

        next = eol;

        if (next < last) {
            next += (*next == '\r' && next + 1 < last && next[1] == '\n')
                    ? 2 : 1;
        }

        if (header == NULL) {

            /* names: UTF-8 without a NUL, none non-empty twice */

            header = json_array();
            f = (u_char *) p;

            for ( ;; ) {
                comma = ngx_strlchr(f, eol, ',');
                if (comma == NULL) {
                    comma = eol;
                }

                name = json_stringn((char *) f, comma - f);

                if (eol == p || name == NULL
                    || ngx_strlchr(f, comma, '\0') != NULL)
                {
                    json_decref(name);
                    json_decref(header);
                    json_array_append_new(out, json_null());
                    return out;
                }

                json_array_append_new(header, name);

                if (comma == eol) {
                    break;
                }

                f = comma + 1;
            }

            if (fuzz_twice(header)) {
                json_decref(header);
                json_array_append_new(out, json_null());
                return out;
            }

            json_array_append(out, header);

        } else if (eol > p) {
            rec = fuzz_line(header, p, eol);

            if (rec != NULL) {
                json_array_append_new(out, rec);
            }
        }

        p = next;

    } while (p < last);

    json_decref(header);

    return out;
}


/* a line of fields against the header: a record, "error", or NULL */

static json_t *
fuzz_line(json_t *header, const u_char *p, const u_char *last)
{
    u_char      *f, *comma;
    json_t      *rec, *v;
    ngx_uint_t   col;

    rec = json_object();
    f = (u_char *) p;

    for (col = 0; ; col++) {
        comma = ngx_strlchr(f, (u_char *) last, ',');
        if (comma == NULL) {
            comma = (u_char *) last;
        }

        if (col >= json_array_size(header)
            || ngx_strlchr(f, comma, '\0') != NULL)
        {
            json_decref(rec);
            return json_string("error");
        }

        if (comma > f) {
            v = json_stringn((char *) f, comma - f);

            if (v == NULL) {
                json_decref(rec);
                return json_string("error");
            }

            json_object_set_new(rec,
                                json_string_value(json_array_get(header, col)),
                                v);
        }

        if (comma == last) {
            break;
        }

        f = comma + 1;
    }

    if (json_object_size(rec) == 0) {
        json_decref(rec);
        return NULL;
    }

    return rec;
}


/*
 * Where the scanner, fed data from start in pieces, says the record
 * ends, against where the reader ended it (end)
 */

static void
fuzz_end(const uint8_t *data, size_t size, size_t start, size_t end)
{
    u_char      *p, *q, *last, *e, *eol, *want;
    size_t       piece;
    ngx_uint_t   state;

    last = (u_char *) data + size;
    piece = 1 + (start * 7 + size) % 16;
    state = NGX_HTTP_CIVCHAT_CSV_FIELD;
    eol = NULL;
    e = NULL;

    for (p = (u_char *) data + start; p < last && e == NULL; p = q) {
        q = (size_t) (last - p) > piece ? p + piece : last;
        e = ngx_http_civchat_csv_end(p, q, &state, &eol);

        ngx_fuzz_assert(e == NULL || (e > p && e <= q));
    }

    if (e != NULL) {
        if (e == data + end
            || (e + 1 == data + end && e[-1] == CR && *e == LF))
        {
            return;
        }

        ngx_fuzz_fail("the record at %d ends at %d, the scanner says %d",
                      (int) start, (int) end, (int) (e - data));
    }

    want = last;

    if ((state & ~NGX_HTTP_CIVCHAT_CSV_LINE) == NGX_HTTP_CIVCHAT_CSV_QUOTED
        && (state & NGX_HTTP_CIVCHAT_CSV_LINE))
    {
        /* a quote never closed: the record ends with the quote's line */

        ngx_fuzz_assert(eol != NULL && eol >= data + start && eol < last);

        want = eol + 1;

        if (*eol == CR && want < last && *want == LF) {
            want++;
        }
    }

    if (want != data + end) {
        ngx_fuzz_fail("the record at %d ends at %d; the scanner found no "
                      "end, so %d", (int) start, (int) end,
                      (int) (want - data));
    }
}


/* a non-empty name twice */

static ngx_uint_t
fuzz_twice(json_t *header)
{
    size_t   i, j;
    json_t  *v, *w;

    json_array_foreach(header, i, v) {
        json_array_foreach(header, j, w) {
            if (i != j && json_string_length(v) && json_equal(v, w)) {
                return 1;
            }
        }
    }

    return 0;
}


/* valid UTF-8 without a NUL */

static void
fuzz_check_string(json_t *v)
{
    ngx_fuzz_assert(json_is_string(v));
    ngx_fuzz_assert(ngx_fuzz_valid_utf8((u_char *) json_string_value(v),
                                        json_string_length(v)));
    ngx_fuzz_assert(ngx_strlen(json_string_value(v))
                    == json_string_length(v));
}
