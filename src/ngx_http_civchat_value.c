
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_attrs.h"


#define ngx_http_civchat_space(c)                                            \
    ((c) == ' ' || (c) == '\t' || (c) == '\r' || (c) == '\n'                 \
     || (c) == '\f' || (c) == '\v')


/*
 * What every part of attribute handling reads values with: the bytes of
 * a string, trimmed, checked for control characters, looked up among
 * words, and the string values they make.  It calls none of them.
 */


/*
 * Returns the bytes of a JSON string; jansson strings may hold NUL bytes,
 * which no stored value may carry.
 */

ngx_int_t
ngx_http_civchat_string_data(json_t *value, u_char **p, size_t *len)
{
    *p = (u_char *) json_string_value(value);
    *len = json_string_length(value);

    if (ngx_strlchr(*p, *p + *len, '\0') != NULL) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


void
ngx_http_civchat_trim(u_char **p, size_t *len)
{
    u_char  *s, *last;

    s = *p;
    last = s + *len;

    while (s < last && ngx_http_civchat_space(*s)) {
        s++;
    }

    while (last > s && ngx_http_civchat_space(last[-1])) {
        last--;
    }

    *p = s;
    *len = last - s;
}


/* C0 controls, DEL and, in valid UTF-8, the C1 controls U+0080..U+009F */

ngx_uint_t
ngx_http_civchat_has_control(u_char *p, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f) {
            return 1;
        }

        if (p[i] == 0xc2 && i + 1 < len && p[i + 1] < 0xa0) {
            return 1;
        }
    }

    return 0;
}


/* a trimmed, case-insensitive word; 0 when none of the words matches */

ngx_int_t
ngx_http_civchat_word(u_char *p, size_t len,
    const ngx_http_civchat_word_t *words)
{
    ngx_http_civchat_trim(&p, &len);

    for ( /* void */ ; words->word.len; words++) {
        if (len == words->word.len
            && ngx_strncasecmp(p, words->word.data, len) == 0)
        {
            return words->value;
        }
    }

    return 0;
}


/*
 * jansson returns NULL only when it runs out of memory; the field is then
 * reported as ignored rather than failing the whole request
 */

json_t *
ngx_http_civchat_created(json_t *value, const char **reason)
{
    if (value == NULL) {
        *reason = "no_memory";
    }

    return value;
}


/* a string value to store, within the configured length */

json_t *
ngx_http_civchat_new_string(ngx_http_civchat_loc_conf_t *lcf, u_char *p,
    size_t len, const char **reason)
{
    if (len > lcf->max_value_len) {
        *reason = "too_long";
        return NULL;
    }

    return ngx_http_civchat_created(json_stringn((char *) p, len), reason);
}
