
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * One CSV record (RFC 4180: quotes, doubled quotes, commas and line
 * breaks inside quotes, CRLF or LF).  Without a header: the header row
 * as an array of names; with one: an object of the record's non-empty
 * fields.  NULL with *err NULL: an empty line.
 */

json_t *
ngx_http_civchat_csv_record(u_char **pos, u_char *last, json_t *header,
    const char **err)
{
    u_char      *p, *field, *q;
    json_t      *rec, *name;
    ngx_uint_t   col, quoted, end;

    p = *pos;
    *err = NULL;
    col = 0;
    end = 0;

    if (p < last && (*p == '\n' || (*p == '\r' && p + 1 < last
                                    && p[1] == '\n')))
    {
        *pos = p + ((*p == '\r') ? 2 : 1);
        return NULL;
    }

    rec = header ? json_object() : json_array();
    if (rec == NULL) {
        *err = "no memory";
        return NULL;
    }

    /* fields are unquoted in place: the body buffer is ours */

    while (!end) {
        quoted = (p < last && *p == '"');

        if (quoted) {

            /*
             * unquoting rewrites the body: a field that is not closed
             * must leave it as it is for the records that follow
             */

            for (q = p + 1; q < last; q++) {
                if (*q == '"') {
                    if (q + 1 < last && q[1] == '"') {
                        q++;
                        continue;
                    }

                    break;
                }
            }

            if (q == last) {
                /*
                 * the rest of the file is not this record's field: the
                 * record ends with the quote's line (the lines before it,
                 * in a closed field, are unquoted already)
                 */
                *err = "a quoted field is not closed";
                goto failed;
            }
        }

        field = quoted ? ++p : p;
        q = field;

        for ( ;; ) {
            if (p == last) {
                end = 1;
                break;
            }

            if (quoted) {
                if (*p == '"') {
                    if (p + 1 < last && p[1] == '"') {
                        *q++ = '"';
                        p += 2;
                        continue;
                    }

                    quoted = 0;
                    p++;
                    continue;
                }

                *q++ = *p++;
                continue;
            }

            if (*p == ',') {
                p++;
                break;
            }

            if (*p == '\n' || (*p == '\r' && p + 1 < last && p[1] == '\n')) {
                p += (*p == '\r') ? 2 : 1;
                end = 1;
                break;
            }

            *q++ = *p++;
        }

        if (header == NULL) {
            if (json_array_append_new(rec, json_stringn((char *) field,
                                                        q - field))
                != 0)
            {
                *err = "a header name is not valid UTF-8";
                goto failed;
            }

            col++;
            continue;
        }

        name = json_array_get(header, col++);

        if (name == NULL) {
            *err = "more fields than the header has names";
            goto failed;
        }

        if (q > field
            && json_object_set_new(rec, json_string_value(name),
                                   json_stringn((char *) field, q - field))
               != 0)
        {
            *err = "a field is not valid UTF-8";
            goto failed;
        }
    }

    *pos = p;

    return rec;

failed:

    /* skip to the end of this record's line, unless it is there already */

    if (!end) {
        while (p < last && *p != '\n') {
            p++;
        }

        p = (p < last) ? p + 1 : last;
    }

    *pos = p;
    json_decref(rec);

    return NULL;
}
