
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The state file keeps the profile zone across a full stop and start.
 * It is NDJSON, one profile a line, least recently seen first so that
 * loading it rebuilds the LRU order.  It is written to a temporary file
 * that is renamed over the old one, so a crash mid-write never leaves a
 * torn state behind.
 */


#define NGX_HTTP_CIVCHAT_STATE_VERSION  1


static size_t ngx_http_civchat_state_size(ngx_http_civchat_zone_t *zone);
static u_char *ngx_http_civchat_state_profile(u_char *p,
    ngx_http_civchat_zone_t *zone, ngx_http_civchat_profile_t *pr);
static u_char *ngx_http_civchat_state_string(u_char *p, const char *name,
    ngx_http_civchat_index_t *ix);
static u_char *ngx_http_civchat_state_keys(u_char *p, const char *name,
    ngx_http_civchat_profile_t *pr, u_char mask, u_char flags);
static u_char *ngx_http_civchat_state_retired_at(u_char *p,
    ngx_http_civchat_profile_t *pr);
static void ngx_http_civchat_state_alias(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *pr, json_t *list, json_t *minutes,
    u_char flags);
static ngx_int_t ngx_http_civchat_state_line(ngx_http_civchat_zone_t *zone,
    u_char *line, size_t len);
static ngx_int_t ngx_http_civchat_state_index(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *pr, u_char kind, json_t *value,
    json_t *verified);


static size_t
ngx_http_civchat_state_size(ngx_http_civchat_zone_t *zone)
{
    size_t                       size;
    ngx_str_t                    ua;
    ngx_queue_t                 *q;
    ngx_http_civchat_profile_t  *pr;

    size = sizeof("{\"civchat_state\":,\"profiles\":}\n") + 2 * NGX_INT_T_LEN;

    for (q = ngx_queue_head(&zone->sh->lru);
         q != ngx_queue_sentinel(&zone->sh->lru);
         q = ngx_queue_next(q))
    {
        pr = ngx_queue_data(q, ngx_http_civchat_profile_t, lru);

        size += ngx_http_civchat_state_identity_size(pr)
                + sizeof(",\"first_seen\":,\"last_seen\":,"
                         "\"page_views\":,\"sessions\":,\"attrs\":}\n")
                + 4 * NGX_INT_T_LEN + pr->attrs_len + 2
                + sizeof(",\"user_agent\":\"\"");

        ngx_http_civchat_store_ua(zone, pr, &ua);
        size += 6 * ua.len;
    }

    return size;
}


static u_char *
ngx_http_civchat_state_string(u_char *p, const char *name,
    ngx_http_civchat_index_t *ix)
{
    p = ngx_sprintf(p, ",\"%s\":", name);

    if (ix->len == 0) {
        return ngx_cpymem(p, "null", 4);
    }

    *p++ = '"';
    p = (u_char *) ngx_escape_json(p, ix->data, ix->len);
    *p++ = '"';

    return p;
}


static u_char *
ngx_http_civchat_state_profile(u_char *p, ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *pr)
{
    ngx_str_t  ua;

    p = ngx_http_civchat_state_identity(p, pr);

    p = ngx_sprintf(p, ",\"first_seen\":%T,\"last_seen\":%T,"
                    "\"page_views\":%ui,\"sessions\":%ui,\"attrs\":",
                    (time_t) pr->first_seen, (time_t) pr->last_seen,
                    (ngx_uint_t) pr->page_views, (ngx_uint_t) pr->sessions);

    if (pr->attrs_len > 2) {
        p = ngx_cpymem(p, ngx_http_civchat_profile_attrs(pr),
                       pr->attrs_len - 1);

    } else {
        *p++ = '{';
    }

    /* the shared User-Agent goes back among the attributes */
    ngx_http_civchat_store_ua(zone, pr, &ua);

    if (ua.len) {
        p = ngx_sprintf(p, "%s\"user_agent\":\"",
                        (pr->attrs_len > 2) ? "," : "");
        p = (u_char *) ngx_escape_json(p, ua.data, ua.len);
        *p++ = '"';
    }

    return ngx_cpymem(p, "}}\n", 3);
}


/*
 * A profile's identity, the first members of its line (and the "id" of
 * its Redis document, doc.c): its own key, user_id, email, its other
 * keys by kind, the minute each retired key was retired, what was
 * verified.  No closing brace.
 */

size_t
ngx_http_civchat_state_identity_size(ngx_http_civchat_profile_t *pr)
{
    size_t        size;
    ngx_queue_t  *a;

    /* escaped strings grow at most sixfold (\u00XX) */
    size = sizeof("{\"key\":\"\",\"user_id\":\"\",\"email\":\"\","
                  "\"aliases\":[],\"unproved\":[],\"retired\":[],"
                  "\"retired_at\":[],\"key_retired\":true,"
                  "\"key_retired_at\":,"
                  "\"verified\":[\"user_id\",\"email\"]")
           + 3 * 6 * 255 + NGX_INT_T_LEN;

    for (a = ngx_queue_head(&pr->aliases);
         a != ngx_queue_sentinel(&pr->aliases);
         a = ngx_queue_next(a))
    {
        size += 255 + 3 + NGX_INT_T_LEN + 1;
    }

    return size;
}


u_char *
ngx_http_civchat_state_identity(u_char *p, ngx_http_civchat_profile_t *pr)
{
    p = ngx_sprintf(p, "{\"key\":\"%*s\"", (size_t) pr->key.len,
                    pr->key.data);
    p = ngx_http_civchat_state_string(p, "user_id", &pr->user_id);
    p = ngx_http_civchat_state_string(p, "email", &pr->email);

    p = ngx_http_civchat_state_keys(p, "aliases", pr,
                                    NGX_HTTP_CIVCHAT_KEY_RETIRED
                                    |NGX_HTTP_CIVCHAT_KEY_UNPROVED, 0);
    p = ngx_http_civchat_state_keys(p, "unproved", pr,
                                    NGX_HTTP_CIVCHAT_KEY_RETIRED
                                    |NGX_HTTP_CIVCHAT_KEY_UNPROVED,
                                    NGX_HTTP_CIVCHAT_KEY_UNPROVED);
    p = ngx_http_civchat_state_keys(p, "retired", pr,
                                    NGX_HTTP_CIVCHAT_KEY_RETIRED,
                                    NGX_HTTP_CIVCHAT_KEY_RETIRED);
    p = ngx_http_civchat_state_retired_at(p, pr);

    if (pr->key.flags & NGX_HTTP_CIVCHAT_KEY_RETIRED) {
        p = ngx_sprintf(p, ",\"key_retired\":true,\"key_retired_at\":%ui",
                        (ngx_uint_t) pr->key.retired);
    }

    if (pr->user_id.flags & NGX_HTTP_CIVCHAT_ID_VERIFIED) {
        p = ngx_cpymem(p, ",\"verified\":[\"user_id\"",
                       sizeof(",\"verified\":[\"user_id\"") - 1);
        p = ngx_cpymem(p, (pr->email.flags & NGX_HTTP_CIVCHAT_ID_VERIFIED)
                          ? ",\"email\"]" : "]",
                       (pr->email.flags & NGX_HTTP_CIVCHAT_ID_VERIFIED)
                       ? sizeof(",\"email\"]") - 1 : 1);

    } else if (pr->email.flags & NGX_HTTP_CIVCHAT_ID_VERIFIED) {
        p = ngx_cpymem(p, ",\"verified\":[\"email\"]",
                       sizeof(",\"verified\":[\"email\"]") - 1);
    }

    return p;
}


/* ,"retired_at":[...]: the minutes of "retired", in its order */

static u_char *
ngx_http_civchat_state_retired_at(u_char *p, ngx_http_civchat_profile_t *pr)
{
    ngx_uint_t                 first;
    ngx_queue_t               *a;
    ngx_http_civchat_alias_t  *alias;

    p = ngx_cpymem(p, ",\"retired_at\":[", sizeof(",\"retired_at\":[") - 1);
    first = 1;

    for (a = ngx_queue_head(&pr->aliases);
         a != ngx_queue_sentinel(&pr->aliases);
         a = ngx_queue_next(a))
    {
        alias = ngx_queue_data(a, ngx_http_civchat_alias_t, queue);

        if (!(alias->index.flags & NGX_HTTP_CIVCHAT_KEY_RETIRED)) {
            continue;
        }

        p = ngx_sprintf(p, "%s%ui", first ? "" : ",",
                        (ngx_uint_t) alias->index.retired);
        first = 0;
    }

    *p++ = ']';

    return p;
}


/* ,"name":[...] of the other keys whose flags & mask are flags */

static u_char *
ngx_http_civchat_state_keys(u_char *p, const char *name,
    ngx_http_civchat_profile_t *pr, u_char mask, u_char flags)
{
    ngx_uint_t                 first;
    ngx_queue_t               *a;
    ngx_http_civchat_alias_t  *alias;

    p = ngx_sprintf(p, ",\"%s\":[", name);
    first = 1;

    for (a = ngx_queue_head(&pr->aliases);
         a != ngx_queue_sentinel(&pr->aliases);
         a = ngx_queue_next(a))
    {
        alias = ngx_queue_data(a, ngx_http_civchat_alias_t, queue);

        if ((alias->index.flags & mask) != flags) {
            continue;
        }

        p = ngx_sprintf(p, "%s\"%*s\"", first ? "" : ",",
                        (size_t) alias->index.len, alias->index.data);
        first = 0;
    }

    *p++ = ']';

    return p;
}


/*
 * The zone as text (ngx_alloc()ed, the caller frees it), with the lock
 * held by the caller; NGX_DECLINED when nothing changed since the last
 * save.
 */

ngx_int_t
ngx_http_civchat_state_dump(ngx_http_civchat_zone_t *zone, ngx_log_t *log,
    ngx_str_t *text, ngx_uint_t *changes)
{
    u_char                      *buf, *p;
    size_t                       size;
    ngx_queue_t                 *q;
    ngx_http_civchat_profile_t  *pr;

    if (zone->sh->changes == zone->sh->saved) {
        return NGX_DECLINED;
    }

    size = ngx_http_civchat_state_size(zone);

    buf = ngx_alloc(size, log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(buf, "{\"civchat_state\":%d,\"profiles\":%ui}\n",
                    NGX_HTTP_CIVCHAT_STATE_VERSION, zone->sh->profiles);

    for (q = ngx_queue_last(&zone->sh->lru);
         q != ngx_queue_sentinel(&zone->sh->lru);
         q = ngx_queue_prev(q))
    {
        pr = ngx_queue_data(q, ngx_http_civchat_profile_t, lru);
        p = ngx_http_civchat_state_profile(p, zone, pr);
    }

    *changes = zone->sh->changes;

    text->data = buf;
    text->len = p - buf;

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_state_write(ngx_http_civchat_zone_t *zone, u_char *buf,
    size_t len, ngx_log_t *log)
{
    u_char    *tmp;
    ssize_t    n;
    ngx_fd_t   fd;

    tmp = ngx_alloc(zone->state.len + sizeof(".tmp.") + NGX_INT_T_LEN, log);
    if (tmp == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(tmp, "%V.tmp.%P%Z", &zone->state, ngx_pid);

    fd = ngx_open_file(tmp, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE,
                       NGX_FILE_DEFAULT_ACCESS);
    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "civchat: cannot save the zone, " ngx_open_file_n
                      " \"%s\" failed (the directory of state= must be "
                      "writable by the worker processes' user)", tmp);
        ngx_free(tmp);
        return NGX_ERROR;
    }

    n = ngx_write_fd(fd, buf, len);

    if (n == (ssize_t) len && fsync(fd) == -1) {
        n = -1;
    }

    if (n != (ssize_t) len) {

        /* a full disk may first cut a write short, without an errno */

        if (n == -1) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                          "civchat: writing state \"%s\" failed", tmp);

        } else {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "civchat: writing state \"%s\" was incomplete, "
                          "%z of %uz bytes written", tmp, n, len);
        }

        ngx_close_file(fd);
        ngx_delete_file(tmp);
        ngx_free(tmp);
        return NGX_ERROR;
    }

    ngx_close_file(fd);

    if (ngx_rename_file(tmp, zone->state.data) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      ngx_rename_file_n " \"%s\" to \"%V\" failed",
                      tmp, &zone->state);
        ngx_delete_file(tmp);
        ngx_free(tmp);
        return NGX_ERROR;
    }

    ngx_free(tmp);

    return NGX_OK;
}


ngx_int_t
ngx_http_civchat_state_load(ngx_http_civchat_zone_t *zone)
{
    u_char           *buf, *p, *last, *nl;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_uint_t        bad;
    ngx_file_info_t   fi;

    fd = ngx_open_file(zone->state.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        if (ngx_errno == NGX_ENOENT) {
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_EMERG, zone->log, ngx_errno,
                      ngx_open_file_n " \"%V\" failed", &zone->state);
        return NGX_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_EMERG, zone->log, ngx_errno,
                      ngx_fd_info_n " \"%V\" failed", &zone->state);
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    buf = ngx_alloc(ngx_file_size(&fi) + 1, zone->log);
    if (buf == NULL) {
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    n = ngx_read_fd(fd, buf, ngx_file_size(&fi));
    ngx_close_file(fd);

    if (n != (ssize_t) ngx_file_size(&fi)) {
        ngx_log_error(NGX_LOG_EMERG, zone->log, ngx_errno,
                      "civchat: reading state \"%V\" failed", &zone->state);
        ngx_free(buf);
        return NGX_ERROR;
    }

    bad = 0;
    last = buf + n;

    /* the first line is the header */
    p = ngx_strlchr(buf, last, '\n');
    p = (p == NULL) ? last : p + 1;

    while (p < last) {
        nl = ngx_strlchr(p, last, '\n');
        if (nl == NULL) {
            nl = last;
        }

        if (nl > p && ngx_http_civchat_state_line(zone, p, nl - p) != NGX_OK)
        {
            bad++;
        }

        p = nl + 1;
    }

    ngx_free(buf);

    if (bad) {
        ngx_log_error(NGX_LOG_WARN, zone->log, 0,
                      "civchat: skipped %ui unreadable profiles in \"%V\"",
                      bad, &zone->state);
    }

    zone->sh->saved = zone->sh->changes;

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_state_line(ngx_http_civchat_zone_t *zone, u_char *line,
    size_t len)
{
    json_t                      *j;
    ngx_http_civchat_profile_t  *pr;

    j = json_loadb((char *) line, len, 0, NULL);
    if (j == NULL || !json_is_object(j)) {
        json_decref(j);
        return NGX_ERROR;
    }

    pr = ngx_http_civchat_state_install(zone, j);

    /* loading runs alone, before any worker: nothing else to protect */
    ngx_http_civchat_store_unpin(zone);
    json_decref(j);

    return (pr != NULL) ? NGX_OK : NGX_ERROR;
}


/*
 * A profile from its line as JSON (a state file's, or one doc.c made of
 * a Redis document), under the lock; NULL when it is not one, or its
 * key is taken.  The "attrs" of the object lose their "user_agent".
 */

ngx_http_civchat_profile_t *
ngx_http_civchat_state_install(ngx_http_civchat_zone_t *zone, json_t *j)
{
    char                        *text;
    json_t                      *v, *ua;
    ngx_str_t                    key;
    ngx_http_civchat_profile_t  *pr;

    text = NULL;

    v = json_object_get(j, "key");
    if (!json_is_string(v)) {
        return NULL;
    }

    key.data = (u_char *) json_string_value(v);
    key.len = json_string_length(v);

    if (!ngx_http_civchat_valid_key(key.data, key.len)
        || ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY, &key))
    {
        return NULL;
    }

    pr = ngx_http_civchat_store_create(zone, &key, 0);
    if (pr == NULL) {
        return NULL;
    }

    pr->first_seen = json_integer_value(json_object_get(j, "first_seen"));
    pr->last_seen = json_integer_value(json_object_get(j, "last_seen"));
    pr->page_views = json_integer_value(json_object_get(j, "page_views"));
    pr->sessions = json_integer_value(json_object_get(j, "sessions"));

    v = json_object_get(j, "verified");

    if (ngx_http_civchat_state_index(zone, pr, NGX_HTTP_CIVCHAT_BY_USER_ID,
                                     json_object_get(j, "user_id"), v)
        != NGX_OK
        || ngx_http_civchat_state_index(zone, pr, NGX_HTTP_CIVCHAT_BY_EMAIL,
                                        json_object_get(j, "email"), v)
           != NGX_OK)
    {
        goto failed;
    }

    if (json_is_true(json_object_get(j, "key_retired"))) {
        pr->key.flags |= NGX_HTTP_CIVCHAT_KEY_RETIRED;
        pr->key.retired = (uint16_t) json_integer_value(
                                     json_object_get(j, "key_retired_at"));
    }

    ngx_http_civchat_state_alias(zone, pr, json_object_get(j, "aliases"),
                                 NULL, 0);
    ngx_http_civchat_state_alias(zone, pr, json_object_get(j, "unproved"),
                                 NULL, NGX_HTTP_CIVCHAT_KEY_UNPROVED);
    ngx_http_civchat_state_alias(zone, pr, json_object_get(j, "retired"),
                                 json_object_get(j, "retired_at"),
                                 NGX_HTTP_CIVCHAT_KEY_RETIRED);

    v = json_object_get(j, "attrs");

    ua = json_object_get(v, "user_agent");

    if (json_is_string(ua)) {
        key.data = (u_char *) json_string_value(ua);
        key.len = json_string_length(ua);

        (void) ngx_http_civchat_store_set_ua(zone, pr, &key);
        json_object_del(v, "user_agent");
    }

    if (json_is_object(v) && json_object_size(v)) {
        text = json_dumps(v, JSON_COMPACT);
        if (text == NULL
            || ngx_http_civchat_store_set_attrs(zone, pr, (u_char *) text,
                                                ngx_strlen(text))
               != NGX_OK)
        {
            goto failed;
        }
    }

    free(text);

    return pr;

failed:

    free(text);
    ngx_http_civchat_store_delete(zone, pr);

    return NULL;
}


static ngx_int_t
ngx_http_civchat_state_index(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *pr, u_char kind, json_t *value,
    json_t *verified)
{
    size_t      i;
    json_t     *v;
    ngx_str_t   s;

    if (!json_is_string(value) || json_string_length(value) == 0) {
        return NGX_OK;
    }

    s.data = (u_char *) json_string_value(value);
    s.len = json_string_length(value);

    if (ngx_http_civchat_store_set_index(zone, pr, kind, &s) != NGX_OK) {
        return NGX_ERROR;
    }

    json_array_foreach(verified, i, v) {
        if (json_is_string(v)
            && ngx_strcmp(json_string_value(v),
                          ((kind == NGX_HTTP_CIVCHAT_BY_USER_ID)
                           ? "user_id" : "email"))
               == 0)
        {
            if (kind == NGX_HTTP_CIVCHAT_BY_USER_ID) {
                pr->user_id.flags |= NGX_HTTP_CIVCHAT_ID_VERIFIED;

            } else {
                pr->email.flags |= NGX_HTTP_CIVCHAT_ID_VERIFIED;
            }
        }
    }

    return NGX_OK;
}


/*
 * Keys of a profile from its line: sessions, unproved or retired ones
 * (with the minutes they were retired, when the line has them).
 */

static void
ngx_http_civchat_state_alias(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *pr, json_t *list, json_t *minutes,
    u_char flags)
{
    size_t                     i;
    json_t                    *v, *m;
    ngx_str_t                  key;
    ngx_http_civchat_index_t  *ix;

    json_array_foreach(list, i, v) {
        key.data = (u_char *) json_string_value(v);
        key.len = json_string_length(v);

        if (key.data == NULL || !ngx_http_civchat_valid_key(key.data, key.len)
            || ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY,
                                            &key) != NULL
            || ngx_http_civchat_store_add_key(zone, pr, &key, flags) != NGX_OK)
        {
            continue;
        }

        m = json_array_get(minutes, i);
        ix = ngx_http_civchat_store_index(zone, NGX_HTTP_CIVCHAT_BY_KEY,
                                          &key);

        if (json_is_integer(m) && ix != NULL) {
            ix->retired = (uint16_t) json_integer_value(m);
        }
    }
}
