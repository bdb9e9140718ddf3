
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The CSV of the server API's import, as RFC 4180 has it and as
 * spreadsheets write it: a header row naming the columns, then a record
 * a row.  Fields are separated by commas and quoted with '"' when they
 * hold a comma, a quote (doubled) or a line break; a record ends with
 * CRLF, LF or a lone CR (what older Mac spreadsheets write); line breaks
 * inside quotes are kept as they are.  The UTF-8 byte order mark Excel
 * writes before the header ("CSV UTF-8") is not part of the first name.
 *
 * What is wrong in a record (a quote not closed, text after a closing
 * quote, more fields than the header has names, a field that is not
 * UTF-8 or holds a NUL byte) makes that record an error and is skipped
 * with it, up to where the record ends: the records after it read as
 * they were sent.  A field is unquoted in place (the body is the
 * import's own) and never past its own record.
 *
 * The import reads a large body a window at a time: where a record ends
 * (outside quotes) is found first by ngx_http_civchat_csv_end(), which
 * reads quotes as the record reader does and carries its state from one
 * window to the next, so that a record is only read whole.
 */


static ngx_int_t ngx_http_civchat_csv_field(u_char **pos, u_char *last,
    ngx_str_t *field, ngx_uint_t *end, const char **err);
static u_char *ngx_http_civchat_csv_closing(u_char *p, u_char *last);
static u_char *ngx_http_civchat_csv_skip(u_char *p, u_char *last,
    ngx_uint_t start);
static u_char *ngx_http_civchat_csv_line(u_char *p, u_char *last);


#define ngx_http_civchat_csv_eol(c)  ((c) == LF || (c) == CR)


/*
 * The header row: its names as an array of strings.  NULL with *err:
 * the header is wrong (the import fails as a whole).
 */

json_t *
ngx_http_civchat_csv_header(u_char **pos, u_char *last, const char **err)
{
    u_char      *p;
    json_t      *names, *name;
    size_t       i;
    ngx_str_t    field;
    ngx_uint_t   end;

    p = *pos;
    *err = NULL;

    if (last - p >= 2
        && ((p[0] == 0xff && p[1] == 0xfe) || (p[0] == 0xfe && p[1] == 0xff)))
    {
        *err = "the body is UTF-16 (save the file as \"CSV UTF-8\")";
        return NULL;
    }

    if (last - p >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
        p += 3;
    }

    if (p == last || ngx_http_civchat_csv_eol(*p)) {
        *err = "the first line is empty";
        return NULL;
    }

    names = json_array();
    if (names == NULL) {
        *err = "no memory";
        return NULL;
    }

    end = 0;

    while (!end) {
        if (ngx_http_civchat_csv_field(&p, last, &field, &end, err)
            != NGX_OK)
        {
            goto failed;
        }

        name = json_stringn((char *) field.data, field.len);
        if (name == NULL) {
            *err = "a name is not valid UTF-8";
            goto failed;
        }

        /* trailing empty columns are common, a name twice is a mistake */

        for (i = 0; field.len && i < json_array_size(names); i++) {
            if (json_equal(json_array_get(names, i), name)) {
                json_decref(name);
                *err = "a column is named twice";
                goto failed;
            }
        }

        if (json_array_append_new(names, name) != 0) {
            *err = "no memory";
            goto failed;
        }
    }

    *pos = p;

    return names;

failed:

    json_decref(names);

    return NULL;
}


/*
 * One record: an object of its non-empty fields, named by the header.
 * NULL with *err NULL: an empty line, or a row of empty fields only (a
 * spreadsheet writes ",,," for an empty row of the sheet); NULL with
 * *err: a record that is wrong.  *pos is past the record either way.
 */

json_t *
ngx_http_civchat_csv_record(u_char **pos, u_char *last, json_t *header,
    const char **err)
{
    u_char      *p;
    json_t      *rec, *name;
    ngx_int_t    rc;
    ngx_str_t    field;
    ngx_uint_t   col, end;

    p = *pos;
    *err = NULL;

    if (p < last && ngx_http_civchat_csv_eol(*p)) {
        *pos = ngx_http_civchat_csv_line(p, last);
        return NULL;
    }

    rec = json_object();
    if (rec == NULL) {
        *err = "no memory";
        *pos = ngx_http_civchat_csv_skip(p, last, 1);
        return NULL;
    }

    col = 0;
    end = 0;

    while (!end) {
        rc = ngx_http_civchat_csv_field(&p, last, &field, &end, err);

        if (rc == NGX_DECLINED) {
            /*
             * a quote not closed: the rest of the body is not this
             * field, the record ends with the quote's line
             */

            p = ngx_http_civchat_csv_line(p, last);
            goto failed;
        }

        if (rc == NGX_ERROR) {
            p = ngx_http_civchat_csv_skip(p, last, 0);
            goto failed;
        }

        name = json_array_get(header, col++);

        if (name == NULL) {
            *err = "more fields than the header has names";
            goto wrong;
        }

        if (field.len == 0) {
            continue;
        }

        if (json_object_set_new(rec, json_string_value(name),
                                json_stringn((char *) field.data, field.len))
            != 0)
        {
            *err = "a field is not valid UTF-8";
            goto wrong;
        }
    }

    *pos = p;

    if (json_object_size(rec) == 0) {
        json_decref(rec);
        return NULL;
    }

    return rec;

wrong:

    if (!end) {
        p = ngx_http_civchat_csv_skip(p, last, 1);
    }

failed:

    *pos = p;
    json_decref(rec);

    return NULL;
}


/*
 * Where the record p is in ends, as ngx_http_civchat_csv_record() reads
 * it: past its line break (a CRLF whole when both are before last), or
 * NULL when it goes on past last.  *state says where p is in the record
 * (NGX_HTTP_CIVCHAT_CSV_*, 0 at its start), and is where last is when
 * NULL is returned.  *eol is set to the first line break in the quotes
 * that are open, when it is found: the record ends with that line if
 * the quote is never closed.
 */

u_char *
ngx_http_civchat_csv_end(u_char *p, u_char *last, ngx_uint_t *state,
    u_char **eol)
{
    u_char      c;
    ngx_uint_t  s;

    s = *state;

    for ( /* void */ ; p < last; p++) {
        c = *p;

        switch (s & ~NGX_HTTP_CIVCHAT_CSV_LINE) {

        case NGX_HTTP_CIVCHAT_CSV_QUOTED:

            if (c == '"') {
                s = NGX_HTTP_CIVCHAT_CSV_QUOTE
                    | (s & NGX_HTTP_CIVCHAT_CSV_LINE);

            } else if (ngx_http_civchat_csv_eol(c)
                       && !(s & NGX_HTTP_CIVCHAT_CSV_LINE))
            {
                s |= NGX_HTTP_CIVCHAT_CSV_LINE;
                *eol = p;
            }

            continue;

        case NGX_HTTP_CIVCHAT_CSV_QUOTE:

            if (c == '"') {
                /* doubled */
                s = NGX_HTTP_CIVCHAT_CSV_QUOTED
                    | (s & NGX_HTTP_CIVCHAT_CSV_LINE);
                continue;
            }

            /* closed: what follows to a comma is not quoted */
            break;

        case NGX_HTTP_CIVCHAT_CSV_FIELD:

            if (c == '"') {
                s = NGX_HTTP_CIVCHAT_CSV_QUOTED;
                continue;
            }

            break;

        default: /* NGX_HTTP_CIVCHAT_CSV_TEXT */
            break;
        }

        if (c == ',') {
            s = NGX_HTTP_CIVCHAT_CSV_FIELD;
            continue;
        }

        if (ngx_http_civchat_csv_eol(c)) {
            *state = NGX_HTTP_CIVCHAT_CSV_FIELD;

            if (c == CR && p + 1 < last && p[1] == LF) {
                p++;
            }

            return p + 1;
        }

        s = NGX_HTTP_CIVCHAT_CSV_TEXT;
    }

    *state = s;

    return NULL;
}


/*
 * One field at *pos, unquoted in place; *end when it ends the record.
 * *pos is then at the next field or record.  NGX_DECLINED: a quote not
 * closed (*pos at it); NGX_ERROR: a wrong field (*pos where it stopped,
 * within the record).
 */

static ngx_int_t
ngx_http_civchat_csv_field(u_char **pos, u_char *last, ngx_str_t *field,
    ngx_uint_t *end, const char **err)
{
    u_char  *p, *q, *close;

    p = *pos;

    if (p < last && *p == '"') {

        /* unquoting rewrites the body: first make sure the quote closes */

        close = ngx_http_civchat_csv_closing(p, last);

        if (close == NULL) {
            *err = "a quoted field is not closed";
            return NGX_DECLINED;
        }

        field->data = ++p;

        for (q = p; p < close; p++) {
            *q++ = *p;

            if (*p == '"') {
                /* doubled */
                p++;
            }
        }

        field->len = q - field->data;
        p = close + 1;

        if (p < last && *p != ',' && !ngx_http_civchat_csv_eol(*p)) {
            *pos = p;
            *err = "text follows the closing quote of a field";
            return NGX_ERROR;
        }

    } else {
        field->data = p;

        while (p < last && *p != ',' && !ngx_http_civchat_csv_eol(*p)) {
            p++;
        }

        field->len = p - field->data;
    }

    if (ngx_strlchr(field->data, field->data + field->len, '\0') != NULL) {
        *pos = p;
        *err = "a field holds a NUL byte";
        return NGX_ERROR;
    }

    if (p == last) {
        *end = 1;

    } else if (*p == ',') {
        p++;

    } else {
        p = ngx_http_civchat_csv_line(p, last);
        *end = 1;
    }

    *pos = p;

    return NGX_OK;
}


/* the closing quote of the field whose opening quote is at p, or NULL */

static u_char *
ngx_http_civchat_csv_closing(u_char *p, u_char *last)
{
    for (p++; p < last; p++) {
        if (*p == '"') {
            if (p + 1 < last && p[1] == '"') {
                p++;
                continue;
            }

            return p;
        }
    }

    return NULL;
}


/*
 * Past the end of the record p is in, without changing it; start: p is
 * where a field starts (a quote there opens it).
 */

static u_char *
ngx_http_civchat_csv_skip(u_char *p, u_char *last, ngx_uint_t start)
{
    u_char  *close;

    while (p < last) {

        if (start && *p == '"') {
            close = ngx_http_civchat_csv_closing(p, last);

            if (close == NULL) {
                return ngx_http_civchat_csv_line(p, last);
            }

            p = close + 1;
            start = 0;
            continue;
        }

        if (ngx_http_civchat_csv_eol(*p)) {
            return ngx_http_civchat_csv_line(p, last);
        }

        start = (*p == ',');
        p++;
    }

    return last;
}


/* past the first line break (CRLF, LF or CR) from p, or the end */

static u_char *
ngx_http_civchat_csv_line(u_char *p, u_char *last)
{
    while (p < last && !ngx_http_civchat_csv_eol(*p)) {
        p++;
    }

    if (p < last && *p++ == CR && p < last && *p == LF) {
        p++;
    }

    return p;
}
