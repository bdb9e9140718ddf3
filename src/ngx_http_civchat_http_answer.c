
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_civchat_http.h"


/*
 * What the HTTP store answered a batch with, read from the bytes that
 * have arrived: whether the whole answer is in, its status and whether
 * the connection may be kept (Content-Length, chunked, or the end of
 * the connection), and its body as text for the log.  Plain functions
 * of bytes, so that fuzz/fuzz_http_answer.c can hold them to account.
 */


/*
 * The answer so far, len bytes of a buffer of size bytes (a full buffer
 * is read as the whole answer: its start says enough), eof at the end
 * of the connection.  NGX_OK once the whole answer is in (status, and
 * whether the connection may be kept), NGX_AGAIN before, NGX_ERROR for
 * what is not an answer.
 */

ngx_int_t
ngx_http_civchat_http_parse(u_char *resp, size_t len, size_t size,
    ngx_uint_t eof, ngx_uint_t *status, ngx_uint_t *keepalive)
{
    u_char     *p, *last, *body, *line, *eol;
    off_t       length;
    ngx_int_t   rc;
    ngx_uint_t  chunked;

    p = resp;
    last = resp + len;

    body = ngx_strlcasestrn(p, last, (u_char *) "\r\n\r\n", 4 - 1);

    if (body == NULL) {
        return eof ? NGX_ERROR : NGX_AGAIN;
    }

    body += 4;

    if (last - p < 12 || ngx_strncmp(p, "HTTP/1.", 7) != 0
        || p[8] != ' ')
    {
        return NGX_ERROR;
    }

    *status = ngx_atoi(p + 9, 3);
    if (*status == (ngx_uint_t) NGX_ERROR) {
        return NGX_ERROR;
    }

    *keepalive = (p[7] == '1');
    length = -1;
    chunked = 0;

    for (line = ngx_strlchr(p, body, '\n') + 1; line < body - 2; line = eol + 1)
    {
        eol = ngx_strlchr(line, body, '\n');

        if (eol - line > 15
            && ngx_strncasecmp(line, (u_char *) "content-length:", 15) == 0)
        {
            for (p = line + 15; *p == ' '; p++) { /* void */ }
            length = ngx_atoof(p, eol - 1 - p);
            continue;
        }

        if (eol - line > 18
            && ngx_strncasecmp(line, (u_char *) "transfer-encoding:", 18) == 0
            && ngx_strlcasestrn(line, eol, (u_char *) "chunked", 7 - 1))
        {
            chunked = 1;
            continue;
        }

        if (eol - line > 11
            && ngx_strncasecmp(line, (u_char *) "connection:", 11) == 0
            && ngx_strlcasestrn(line, eol, (u_char *) "close", 5 - 1))
        {
            *keepalive = 0;
        }
    }

    if (chunked) {
        rc = ngx_http_civchat_http_chunked(body, last);

        if (rc == NGX_AGAIN && eof) {
            *keepalive = 0;
            return (len == size) ? NGX_OK : NGX_ERROR;
        }

        return rc;
    }

    if (length >= 0) {
        if (last - body >= length) {
            return NGX_OK;
        }

        if (eof) {
            *keepalive = 0;
            return (len == size) ? NGX_OK : NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    /* no length: the answer ends with the connection */
    *keepalive = 0;

    return eof ? NGX_OK : NGX_AGAIN;
}


/* NGX_OK when the chunked body ends within [p, last) */

ngx_int_t
ngx_http_civchat_http_chunked(u_char *p, u_char *last)
{
    u_char  *eol;
    off_t    size;

    for ( ;; ) {
        eol = ngx_strlchr(p, last, '\n');
        if (eol == NULL) {
            return NGX_AGAIN;
        }

        size = 0;

        while (p < eol && ((*p >= '0' && *p <= '9')
                           || ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'f')))
        {
            if (size > NGX_MAX_OFF_T_VALUE / 16) {
                return NGX_ERROR;
            }

            size = size * 16
                   + ((*p <= '9') ? *p - '0' : (*p | 0x20) - 'a' + 10);
            p++;
        }

        p = eol + 1;

        if (size == 0) {
            /* trailers end with an empty line */
            for ( ;; ) {
                eol = ngx_strlchr(p, last, '\n');
                if (eol == NULL) {
                    return NGX_AGAIN;
                }

                if (eol - p <= 1) {
                    return NGX_OK;
                }

                p = eol + 1;
            }
        }

        /* size + 2 may overflow: a chunk this long is never all here */

        if (last - p < 2 || last - p - 2 < size) {
            return NGX_AGAIN;
        }

        p += size + 2;
    }
}


/* the answer's body, without chunked framing, cut to size */

size_t
ngx_http_civchat_http_body_text(u_char *resp, size_t len, u_char *text,
    size_t size)
{
    u_char  *p, *last, *eol, *out;
    off_t    chunk;

    last = resp + len;

    p = ngx_strlcasestrn(resp, last, (u_char *) "\r\n\r\n", 4 - 1);
    if (p == NULL) {
        return 0;
    }

    if (ngx_strlcasestrn(resp, p, (u_char *) "chunked", 7 - 1) == NULL) {
        size = ngx_min(size, (size_t) (last - p - 4));
        ngx_memcpy(text, p + 4, size);
        return size;
    }

    p += 4;
    out = text;

    while (p < last && out < text + size) {
        eol = ngx_strlchr(p, last, '\n');
        if (eol == NULL) {
            break;
        }

        chunk = ngx_hextoi(p, (eol - p > 0 && eol[-1] == '\r')
                              ? eol - 1 - p : eol - p);
        if (chunk <= 0) {
            break;
        }

        p = eol + 1;
        chunk = ngx_min(chunk, ngx_min(last - p, text + size - out));
        out = ngx_cpymem(out, p, chunk);
        p += chunk + 2;
    }

    return out - text;
}

