
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The state file keeps the profile zone across a full stop and start.
 * It is NDJSON: a header line, then one profile a line.  It is written
 * to a temporary file that is renamed over the old one only once it is
 * complete, so a crash mid-save never leaves a torn state behind.
 *
 * A save goes in pieces: each piece of profiles is written as text
 * into a buffer of its own size under the zone's lock (zone.c takes
 * it), then to the file outside it, then the next piece; the lock is
 * never held for the whole zone, and the memory is that of a piece.
 * The zone changes between pieces, and the LRU order with every
 * request, so the walk follows the index's order instead, which a
 * profile's own key never leaves (store.c): each piece goes on after
 * the last key written.  A profile is saved at most once, and every
 * profile that lives through the whole save is saved.  A profile
 * created, changed or deleted during the save may or may not be in it
 * as it is now; the zone then has changes the file has not, and the
 * next save writes them.
 *
 * The file is in that order, not the LRU's, so loading sorts the lines
 * by when each profile was last seen: the least recently seen are
 * loaded first, as they were evicted first, and if the zone is smaller
 * than the file those are the ones it drops.
 */


#define NGX_HTTP_CIVCHAT_STATE_VERSION  1

#define NGX_HTTP_CIVCHAT_STATE_HEADER                                        \
    (sizeof("{\"civchat_state\":,\"profiles\":}\n") + 2 * NGX_INT_T_LEN)


struct ngx_http_civchat_state_save_s {
    ngx_log_t                    *log;
    ngx_fd_t                      fd;        /* NGX_INVALID_FILE: not yet */
    u_char                       *tmp;       /* the temporary file */
    u_char                       *buf;       /* the piece's text */
    size_t                        size;
    size_t                        len;
    ngx_uint_t                    started;
    ngx_uint_t                    changes;   /* the zone's, at the start */

    /* where the walk goes on: after the own key of the last profile */
    ngx_http_civchat_index_t      after;
    u_char                        key[NGX_HTTP_CIVCHAT_KEY_MAX];

    /* for the log: what was saved, how long the lock was held */
    ngx_uint_t                    profiles;
    ngx_uint_t                    pieces;
    off_t                         bytes;
    uint64_t                      began;     /* microseconds */
    uint64_t                      locked;
    uint64_t                      locked_max;
    uint64_t                      synced;    /* fsync() */
};


/* a profile's line in the file being loaded */
typedef struct {
    u_char                       *data;
    size_t                        len;
    uint32_t                      seen;
} ngx_http_civchat_state_line_t;


static ngx_int_t ngx_http_civchat_state_start(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s);
static ngx_int_t ngx_http_civchat_state_fill(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s);
static size_t ngx_http_civchat_state_bound(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *pr);
static ngx_int_t ngx_http_civchat_state_open(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s);
static ngx_int_t ngx_http_civchat_state_commit(
    ngx_http_civchat_zone_t *zone, ngx_http_civchat_state_save_t *s);
static uint64_t ngx_http_civchat_state_usec(void);
static u_char *ngx_http_civchat_state_profile(u_char *p,
    ngx_http_civchat_zone_t *zone, ngx_http_civchat_profile_t *pr);
static u_char *ngx_http_civchat_state_string(u_char *p, const char *name,
    ngx_http_civchat_index_t *ix);
static u_char *ngx_http_civchat_state_keys(u_char *p, const char *name,
    ngx_http_civchat_profile_t *pr, u_char mask, u_char flags);
static u_char *ngx_http_civchat_state_retired_at(u_char *p,
    ngx_http_civchat_profile_t *pr);
static ngx_http_civchat_state_line_t *ngx_http_civchat_state_lines(
    ngx_http_civchat_zone_t *zone, u_char *buf, u_char *last,
    ngx_uint_t *n);
static uint32_t ngx_http_civchat_state_seen(u_char *line, size_t len);
static uint32_t ngx_http_civchat_state_number(u_char *line, size_t len,
    const char *name, size_t name_len);
static int ngx_libc_cdecl ngx_http_civchat_state_cmp(const void *one,
    const void *two);
static void ngx_http_civchat_state_alias(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *pr, json_t *list, json_t *minutes,
    u_char flags);
static ngx_int_t ngx_http_civchat_state_line(ngx_http_civchat_zone_t *zone,
    u_char *line, size_t len);
static void ngx_http_civchat_state_leftovers(ngx_http_civchat_zone_t *zone);
static ngx_int_t ngx_http_civchat_state_index(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *pr, u_char kind, json_t *value,
    json_t *verified);


/*
 * A save begins: the buffer of a piece of "size" bytes of text
 * (NGX_HTTP_CIVCHAT_STATE_PIECE); nothing is read or written yet.
 */

ngx_http_civchat_state_save_t *
ngx_http_civchat_state_begin(ngx_http_civchat_zone_t *zone, size_t size,
    ngx_log_t *log)
{
    ngx_http_civchat_state_save_t  *s;

    s = ngx_calloc(sizeof(ngx_http_civchat_state_save_t), log);
    if (s == NULL) {
        return NULL;
    }

    /* the first piece begins with the header line */
    size = ngx_max(size, NGX_HTTP_CIVCHAT_STATE_HEADER);

    s->buf = ngx_alloc(size, log);
    if (s->buf == NULL) {
        ngx_free(s);
        return NULL;
    }

    s->size = size;
    s->log = log;
    s->fd = NGX_INVALID_FILE;
    s->after.data = s->key;
    s->began = ngx_http_civchat_state_usec();

    return s;
}


/*
 * The next piece as text, with the lock held by the caller: NGX_AGAIN
 * (more to come), NGX_OK (the last piece), NGX_DECLINED (nothing
 * changed since the last save: nothing to write).
 */

ngx_int_t
ngx_http_civchat_state_piece(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s)
{
    uint64_t   start, spent;
    ngx_int_t  rc;

    start = ngx_http_civchat_state_usec();

    s->len = 0;

    if (!s->started && ngx_http_civchat_state_start(zone, s) != NGX_OK) {
        return NGX_DECLINED;
    }

    rc = ngx_http_civchat_state_fill(zone, s);

    spent = ngx_http_civchat_state_usec() - start;
    s->locked += spent;
    s->locked_max = ngx_max(s->locked_max, spent);
    s->pieces++;

    return rc;
}


static ngx_int_t
ngx_http_civchat_state_start(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s)
{
    if (zone->sh->changes == zone->sh->saved) {
        return NGX_DECLINED;
    }

    /* what the file holds once it is written; later changes are not */
    s->changes = zone->sh->changes;
    s->started = 1;

    s->len = ngx_sprintf(s->buf, "{\"civchat_state\":%d,\"profiles\":%ui}\n",
                         NGX_HTTP_CIVCHAT_STATE_VERSION, zone->sh->profiles)
             - s->buf;

    return NGX_OK;
}


/* profiles after the last one written, as many as the buffer holds */

static ngx_int_t
ngx_http_civchat_state_fill(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s)
{
    u_char                      *buf;
    size_t                       size;
    ngx_http_civchat_profile_t  *pr;

    pr = NULL;

    for ( ;; ) {
        /* the first of the piece is looked up, the others follow it */
        pr = ngx_http_civchat_store_next(zone,
                                         s->after.len ? &s->after : NULL,
                                         pr);
        if (pr == NULL) {
            return NGX_OK;
        }

        size = ngx_http_civchat_state_bound(zone, pr);

        if (size > s->size - s->len) {
            if (s->len) {
                /* this one starts the next piece */
                return NGX_AGAIN;
            }

            /* a profile bigger than a piece is a piece of its own */

            buf = ngx_alloc(size, s->log);
            if (buf == NULL) {
                return NGX_ERROR;
            }

            ngx_free(s->buf);
            s->buf = buf;
            s->size = size;
        }

        s->len = ngx_http_civchat_state_profile(s->buf + s->len, zone, pr)
                 - s->buf;

        s->after.node.key = pr->key.node.key;
        s->after.kind = pr->key.kind;
        s->after.len = pr->key.len;
        ngx_memcpy(s->key, pr->key.data, pr->key.len);

        s->profiles++;
    }
}


/* the longest text of a profile: escaped strings grow at most sixfold */

static size_t
ngx_http_civchat_state_bound(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *pr)
{
    size_t     size;
    ngx_str_t  ua;

    size = ngx_http_civchat_state_identity_size(pr)
           + sizeof(",\"first_seen\":,\"last_seen\":,"
                    "\"page_views\":,\"sessions\":,\"attrs\":{"
                    ",\"user_agent\":\"\"}}\n")
           + 4 * NGX_INT_T_LEN + pr->attrs_len;

    ngx_http_civchat_store_ua(zone, pr, &ua);
    size += 6 * ua.len;

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
    size_t                     size;
    ngx_queue_t               *q;
    ngx_http_civchat_alias_t  *a;

    /* keys need no escaping; escaped strings grow at most sixfold */
    size = sizeof("{\"key\":\"\",\"user_id\":\"\",\"email\":\"\","
                  "\"aliases\":[],\"unproved\":[],\"retired\":[],"
                  "\"retired_at\":[],\"key_retired\":true,"
                  "\"key_retired_at\":,"
                  "\"verified\":[\"user_id\",\"email\"]")
           + NGX_INT_T_LEN + pr->key.len
           + 6 * (pr->user_id.len + pr->email.len);

    for (q = ngx_queue_head(&pr->aliases);
         q != ngx_queue_sentinel(&pr->aliases);
         q = ngx_queue_next(q))
    {
        a = ngx_queue_data(q, ngx_http_civchat_alias_t, queue);
        size += sizeof(",\"\"") + a->index.len + NGX_INT_T_LEN + 1;
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
 * The piece goes to the temporary file, without the lock; after the
 * last one the file is synced and renamed over the old state.  "rc" is
 * what ngx_http_civchat_state_piece() said, and so is the result when
 * all went well.
 */

ngx_int_t
ngx_http_civchat_state_write(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s, ngx_int_t rc)
{
    ssize_t  n;

    if (s->fd == NGX_INVALID_FILE
        && ngx_http_civchat_state_open(zone, s) != NGX_OK)
    {
        return NGX_ERROR;
    }

    n = ngx_write_fd(s->fd, s->buf, s->len);

    if (n != (ssize_t) s->len) {

        /* a full disk may first cut a write short, without an errno */

        if (n == -1) {
            ngx_log_error(NGX_LOG_ERR, s->log, ngx_errno,
                          "civchat: writing state \"%s\" failed", s->tmp);

        } else {
            ngx_log_error(NGX_LOG_ERR, s->log, 0,
                          "civchat: writing state \"%s\" was incomplete, "
                          "%z of %uz bytes written", s->tmp, n, s->len);
        }

        return NGX_ERROR;
    }

    s->bytes += n;

#if (NGX_LINUX)
    /*
     * the disk starts writing each piece now, so that the fsync() at the
     * end, which blocks the worker, finds little left to write
     */
    (void) sync_file_range(s->fd, s->bytes - n, n, SYNC_FILE_RANGE_WRITE);
#endif

    if (rc == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    return ngx_http_civchat_state_commit(zone, s);
}


static ngx_int_t
ngx_http_civchat_state_open(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s)
{
    s->tmp = ngx_alloc(zone->state.len + sizeof(".tmp.") + NGX_INT_T_LEN,
                       s->log);
    if (s->tmp == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(s->tmp, "%V.tmp.%P%Z", &zone->state, ngx_pid);

    s->fd = ngx_open_file(s->tmp, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE,
                          NGX_FILE_DEFAULT_ACCESS);

    if (s->fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, s->log, ngx_errno,
                      "civchat: cannot save the zone, " ngx_open_file_n
                      " \"%s\" failed (the directory of state= must be "
                      "writable by the worker processes' user)", s->tmp);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_state_commit(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s)
{
    uint64_t  start;
    ngx_fd_t  fd;

    start = ngx_http_civchat_state_usec();

    if (fsync(s->fd) == -1) {
        ngx_log_error(NGX_LOG_ERR, s->log, ngx_errno,
                      "civchat: writing state \"%s\" failed", s->tmp);
        return NGX_ERROR;
    }

    s->synced = ngx_http_civchat_state_usec() - start;

    fd = s->fd;
    s->fd = NGX_INVALID_FILE;

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, s->log, ngx_errno,
                      ngx_close_file_n " \"%s\" failed", s->tmp);
        ngx_delete_file(s->tmp);
        return NGX_ERROR;
    }

    if (ngx_rename_file(s->tmp, zone->state.data) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, s->log, ngx_errno,
                      ngx_rename_file_n " \"%s\" to \"%V\" failed",
                      s->tmp, &zone->state);
        ngx_delete_file(s->tmp);
        return NGX_ERROR;
    }

    ngx_log_error(NGX_LOG_INFO, s->log, 0,
                  "civchat: zone \"%V\" saved to \"%V\": %ui profiles, "
                  "%O bytes, %ui pieces in %uLms, fsync %uLms; the lock "
                  "held %uLus in all, at most %uLus at a time",
                  &zone->name, &zone->state, s->profiles, s->bytes,
                  s->pieces, (ngx_http_civchat_state_usec() - s->began) / 1000,
                  s->synced / 1000, s->locked, s->locked_max);

    return NGX_OK;
}


/* what the zone's "changes" were when the save began */

ngx_uint_t
ngx_http_civchat_state_changes(ngx_http_civchat_state_save_t *s)
{
    return s->changes;
}


/* a save ends: a temporary file it did not finish is deleted */

void
ngx_http_civchat_state_end(ngx_http_civchat_state_save_t *s)
{
    if (s->fd != NGX_INVALID_FILE) {
        (void) ngx_close_file(s->fd);

        if (ngx_delete_file(s->tmp) == NGX_FILE_ERROR) {
            ngx_log_error(NGX_LOG_ERR, s->log, ngx_errno,
                          ngx_delete_file_n " \"%s\" failed", s->tmp);
        }
    }

    ngx_free(s->tmp);
    ngx_free(s->buf);
    ngx_free(s);
}


static uint64_t
ngx_http_civchat_state_usec(void)
{
    struct timeval  tv;

    ngx_gettimeofday(&tv);

    return (uint64_t) tv.tv_sec * 1000000 + tv.tv_usec;
}


/*
 * The temporary files of saves a crash cut short (path.tmp.PID): nginx
 * starts, no worker saves yet, none of them will ever be renamed.
 */

static void
ngx_http_civchat_state_leftovers(ngx_http_civchat_zone_t *zone)
{
    u_char      *pattern;
    ngx_str_t    name;
    ngx_glob_t   gl;

    pattern = ngx_alloc(zone->state.len + sizeof(".tmp.*"), zone->log);
    if (pattern == NULL) {
        return;
    }

    ngx_sprintf(pattern, "%V.tmp.*%Z", &zone->state);

    ngx_memzero(&gl, sizeof(ngx_glob_t));
    gl.pattern = pattern;
    gl.log = zone->log;
    gl.test = 1;

    if (ngx_open_glob(&gl) == NGX_OK) {
        while (ngx_read_glob(&gl, &name) == NGX_OK) {
            if (ngx_delete_file(name.data) == NGX_FILE_ERROR) {
                ngx_log_error(NGX_LOG_WARN, zone->log, ngx_errno,
                              ngx_delete_file_n " \"%V\" failed", &name);
                continue;
            }

            ngx_log_error(NGX_LOG_NOTICE, zone->log, 0,
                          "civchat: removed \"%V\", left by a save that "
                          "did not finish", &name);
        }

        ngx_close_glob(&gl);
    }

    ngx_free(pattern);
}


ngx_int_t
ngx_http_civchat_state_load(ngx_http_civchat_zone_t *zone)
{
    u_char                         *buf;
    ssize_t                         n;
    ngx_fd_t                        fd;
    ngx_uint_t                      i, bad, nlines;
    ngx_file_info_t                 fi;
    ngx_http_civchat_state_line_t  *lines;

    ngx_http_civchat_state_leftovers(zone);

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

    lines = ngx_http_civchat_state_lines(zone, buf, buf + n, &nlines);
    if (lines == NULL) {
        ngx_free(buf);
        return NGX_ERROR;
    }

    bad = 0;

    for (i = 0; i < nlines; i++) {
        if (ngx_http_civchat_state_line(zone, lines[i].data, lines[i].len)
            != NGX_OK)
        {
            bad++;
        }
    }

    ngx_free(lines);
    ngx_free(buf);

    if (bad) {
        ngx_log_error(NGX_LOG_WARN, zone->log, 0,
                      "civchat: skipped %ui unreadable profiles in \"%V\"",
                      bad, &zone->state);
    }

    zone->sh->saved = zone->sh->changes;

    return NGX_OK;
}


/*
 * The profiles' lines, least recently seen first (the order of the
 * file's lines among equals), the header line skipped.
 */

static ngx_http_civchat_state_line_t *
ngx_http_civchat_state_lines(ngx_http_civchat_zone_t *zone, u_char *buf,
    u_char *last, ngx_uint_t *n)
{
    u_char                         *p, *nl;
    ngx_uint_t                      i, count;
    ngx_http_civchat_state_line_t  *lines;

    count = 1;

    for (p = buf; p < last; p++) {
        if (*p == '\n') {
            count++;
        }
    }

    lines = ngx_alloc(count * sizeof(ngx_http_civchat_state_line_t),
                      zone->log);
    if (lines == NULL) {
        return NULL;
    }

    i = 0;

    /* the first line is the header */
    p = ngx_strlchr(buf, last, '\n');
    p = (p == NULL) ? last : p + 1;

    while (p < last) {
        nl = ngx_strlchr(p, last, '\n');
        if (nl == NULL) {
            nl = last;
        }

        if (nl > p) {
            lines[i].data = p;
            lines[i].len = nl - p;
            lines[i].seen = ngx_http_civchat_state_seen(p, nl - p);
            i++;
        }

        p = nl + 1;
    }

    ngx_qsort(lines, i, sizeof(ngx_http_civchat_state_line_t),
              ngx_http_civchat_state_cmp);

    *n = i;

    return lines;
}


/*
 * When a profile was last seen, or created if it never was: the line
 * is not parsed, its "first_seen" and "last_seen" are found as text.
 * Where the writer put them, before the attributes, that text cannot
 * be inside a string (its quotes would be escaped); in a line written
 * otherwise the order of loading is all that may differ.
 */

static uint32_t
ngx_http_civchat_state_seen(u_char *line, size_t len)
{
    uint32_t  first, last;

    first = ngx_http_civchat_state_number(line, len, "\"first_seen\":",
                                          sizeof("\"first_seen\":") - 1);
    last = ngx_http_civchat_state_number(line, len, "\"last_seen\":",
                                         sizeof("\"last_seen\":") - 1);

    return ngx_max(first, last);
}


static uint32_t
ngx_http_civchat_state_number(u_char *line, size_t len, const char *name,
    size_t name_len)
{
    u_char    *p, *last;
    uint32_t   value;

    p = ngx_strnstr(line, (char *) name, len);
    if (p == NULL) {
        return 0;
    }

    last = line + len;
    value = 0;

    for (p += name_len; p < last && *p >= '0' && *p <= '9'; p++) {
        if (value > (0xffffffff - 9) / 10) {
            return 0xffffffff;
        }

        value = value * 10 + (*p - '0');
    }

    return value;
}


static int ngx_libc_cdecl
ngx_http_civchat_state_cmp(const void *one, const void *two)
{
    const ngx_http_civchat_state_line_t  *a = one;
    const ngx_http_civchat_state_line_t  *b = two;

    if (a->seen != b->seen) {
        return (a->seen < b->seen) ? -1 : 1;
    }

    /* the order of the file among equals, whatever qsort() does */

    if (a->data != b->data) {
        return (a->data < b->data) ? -1 : 1;
    }

    return 0;
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
