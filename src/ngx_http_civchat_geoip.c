
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <maxminddb.h>

#include "ngx_http_civchat.h"


/*
 * GeoIP with libmaxminddb.  libmaxminddb maps the database file; a file
 * that is overwritten in place under that mapping changes (or shrinks)
 * beneath the reader, which is how other modules crash.  So the module
 * never maps the operator's file: it copies it to a private temporary
 * file, opens the copy and unlinks it at once.  The mapping then belongs
 * to this process alone and nothing can change it.
 *
 * Each worker checks the file's identity (inode, size, modification and
 * change times to the nanosecond) on a cancelable timer and copies a new
 * version once it has stopped changing for one interval, a megabyte per
 * turn of the event loop so that requests are served in between; a
 * file that changed during the copy is copied again, one that does not
 * open is logged and the old database kept.  Requests only ever read
 * the mapping.
 */


/* what tells one version of the database file from another */
typedef struct {
    ngx_file_uniq_t               uniq;
    off_t                         size;
    time_t                        mtime;
    long                          mtime_ns;
    time_t                        ctime;
    long                          ctime_ns;
} ngx_http_civchat_file_id_t;


struct ngx_http_civchat_geoip_s {
    ngx_str_t                     path;
    MMDB_s                       *mmdb;
    ngx_msec_t                    interval;
    ngx_event_t                   timer;

    ngx_http_civchat_file_id_t    loaded;    /* the version in use */
    ngx_http_civchat_file_id_t    seen;      /* at the previous check */
    ngx_uint_t                    failed;    /* unsigned: 1 */

    /* a copy in progress, a slice per event loop turn */
    ngx_fd_t                      copy_in;
    ngx_fd_t                      copy_out;
    ngx_http_civchat_file_id_t    copy_id;
    u_char                        copy_tmp[NGX_MAX_PATH];
};


static void ngx_http_civchat_geoip_id(ngx_file_info_t *fi,
    ngx_http_civchat_file_id_t *id);
static MMDB_s *ngx_http_civchat_geoip_open(ngx_str_t *path, ngx_log_t *log,
    ngx_uint_t level);
static MMDB_s *ngx_http_civchat_geoip_map(ngx_str_t *path, u_char *tmp,
    ngx_log_t *log, ngx_uint_t level);
static ngx_int_t ngx_http_civchat_geoip_start_copy(ngx_str_t *path,
    u_char *tmp, ngx_fd_t *in, ngx_fd_t *out, ngx_log_t *log,
    ngx_uint_t level);
static ngx_int_t ngx_http_civchat_geoip_copy_slice(ngx_fd_t in, ngx_fd_t out,
    size_t max);
static void ngx_http_civchat_geoip_step(ngx_http_civchat_geoip_t *geo,
    ngx_log_t *log);
static void ngx_http_civchat_geoip_finish(ngx_http_civchat_geoip_t *geo,
    ngx_log_t *log);
static void ngx_http_civchat_geoip_cleanup(void *data);
static void ngx_http_civchat_geoip_close(MMDB_s *mmdb);
static void ngx_http_civchat_geoip_check(ngx_event_t *ev);
static void ngx_http_civchat_geoip_string(ngx_http_request_t *r,
    MMDB_entry_s *entry, ngx_str_t *out, const char *const *path);


static const char *const  ngx_http_civchat_geo_country[] =
    { "country", "iso_code", NULL };
static const char *const  ngx_http_civchat_geo_region[] =
    { "subdivisions", "0", "iso_code", NULL };
static const char *const  ngx_http_civchat_geo_city[] =
    { "city", "names", "en", NULL };
static const char *const  ngx_http_civchat_geo_timezone[] =
    { "location", "time_zone", NULL };


char *
ngx_http_civchat_geoip_conf(ngx_conf_t *cf, ngx_http_civchat_geoip_t **gp,
    ngx_str_t *args, ngx_uint_t n)
{
    ngx_str_t                  s;
    ngx_uint_t                 i;
    ngx_file_info_t            fi;
    ngx_pool_cleanup_t        *cln;
    ngx_http_civchat_geoip_t  *geo;

    if (*gp != NULL) {
        return "is duplicate";
    }

    geo = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_geoip_t));
    if (geo == NULL) {
        return NGX_CONF_ERROR;
    }

    geo->path = args[0];
    geo->interval = 500;

    if (ngx_conf_full_name(cf->cycle, &geo->path, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < n; i++) {
        if (ngx_strncmp(args[i].data, "check=", 6) == 0) {
            s.data = args[i].data + 6;
            s.len = args[i].len - 6;

            geo->interval = ngx_parse_time(&s, 0);
            if (geo->interval == (ngx_msec_t) NGX_ERROR
                || geo->interval == 0)
            {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (ngx_file_info(geo->path.data, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "civchat_geoip: cannot use \"%V\"", &geo->path);
        return NGX_CONF_ERROR;
    }

    geo->mmdb = ngx_http_civchat_geoip_open(&geo->path, cf->log,
                                            NGX_LOG_EMERG);
    if (geo->mmdb == NULL) {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_http_civchat_geoip_close(geo->mmdb);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_civchat_geoip_cleanup;
    cln->data = geo;

    ngx_http_civchat_geoip_id(&fi, &geo->loaded);
    geo->seen = geo->loaded;
    geo->copy_in = NGX_INVALID_FILE;
    geo->copy_out = NGX_INVALID_FILE;

    *gp = geo;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &args[i]);

    return NGX_CONF_ERROR;
}


static void
ngx_http_civchat_geoip_id(ngx_file_info_t *fi, ngx_http_civchat_file_id_t *id)
{
    ngx_memzero(id, sizeof(ngx_http_civchat_file_id_t));

    /* nanoseconds: a rewrite within one second is still a change */
    id->uniq = ngx_file_uniq(fi);
    id->size = ngx_file_size(fi);
    id->mtime = fi->st_mtim.tv_sec;
    id->mtime_ns = fi->st_mtim.tv_nsec;
    id->ctime = fi->st_ctim.tv_sec;
    id->ctime_ns = fi->st_ctim.tv_nsec;
}


/* at configuration time: the whole copy at once */

static MMDB_s *
ngx_http_civchat_geoip_open(ngx_str_t *path, ngx_log_t *log,
    ngx_uint_t level)
{
    u_char     tmp[NGX_MAX_PATH];
    ngx_fd_t   in, out;
    ngx_int_t  rc;

    if (ngx_http_civchat_geoip_start_copy(path, tmp, &in, &out, log, level)
        != NGX_OK)
    {
        return NULL;
    }

    do {
        rc = ngx_http_civchat_geoip_copy_slice(in, out, 1024 * 1024);
    } while (rc == NGX_AGAIN);

    ngx_close_file(in);
    ngx_close_file(out);

    if (rc != NGX_OK) {
        ngx_log_error(level, log, ngx_errno,
                      "civchat_geoip: copying \"%V\" to \"%s\" failed",
                      path, tmp);
        ngx_delete_file(tmp);
        return NULL;
    }

    return ngx_http_civchat_geoip_map(path, tmp, log, level);
}


/* opens the private copy; its name goes at once, the mapping stays */

static MMDB_s *
ngx_http_civchat_geoip_map(ngx_str_t *path, u_char *tmp, ngx_log_t *log,
    ngx_uint_t level)
{
    int      rc;
    MMDB_s  *mmdb;

    mmdb = ngx_alloc(sizeof(MMDB_s), log);
    if (mmdb == NULL) {
        ngx_delete_file(tmp);
        return NULL;
    }

    rc = MMDB_open((char *) tmp, MMDB_MODE_MMAP, mmdb);

    ngx_delete_file(tmp);

    if (rc != MMDB_SUCCESS) {
        ngx_log_error(level, log, 0,
                      "civchat_geoip: \"%V\" is not a usable MaxMind "
                      "database: %s", path, MMDB_strerror(rc));
        ngx_free(mmdb);
        return NULL;
    }

    return mmdb;
}


static ngx_int_t
ngx_http_civchat_geoip_start_copy(ngx_str_t *path, u_char *tmp,
    ngx_fd_t *in, ngx_fd_t *out, ngx_log_t *log, ngx_uint_t level)
{
    char  *dir;

    dir = getenv("TMPDIR");
    if (dir == NULL || *dir == '\0') {
        dir = "/tmp";
    }

    if (ngx_strlen(dir) + sizeof("/civchat-geoip-XXXXXX") > NGX_MAX_PATH) {
        ngx_log_error(level, log, 0, "civchat_geoip: TMPDIR is too long");
        return NGX_ERROR;
    }

    ngx_sprintf(tmp, "%s/civchat-geoip-XXXXXX%Z", dir);

    *in = ngx_open_file(path->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (*in == NGX_INVALID_FILE) {
        ngx_log_error(level, log, ngx_errno,
                      "civchat_geoip: " ngx_open_file_n " \"%V\" failed",
                      path);
        return NGX_ERROR;
    }

    *out = mkstemp((char *) tmp);
    if (*out == -1) {
        ngx_log_error(level, log, ngx_errno,
                      "civchat_geoip: mkstemp(\"%s\") failed", tmp);
        ngx_close_file(*in);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* NGX_AGAIN: more to copy; NGX_OK: done; NGX_ERROR */

static ngx_int_t
ngx_http_civchat_geoip_copy_slice(ngx_fd_t in, ngx_fd_t out, size_t max)
{
    u_char   buf[65536];
    size_t   copied;
    ssize_t  n;

    for (copied = 0; copied < max; copied += n) {
        n = ngx_read_fd(in, buf, sizeof(buf));

        if (n == 0) {
            return NGX_OK;
        }

        if (n == -1 || ngx_write_fd(out, buf, n) != n) {
            return NGX_ERROR;
        }
    }

    return NGX_AGAIN;
}


static void
ngx_http_civchat_geoip_cleanup(void *data)
{
    ngx_http_civchat_geoip_t  *geo = data;

    ngx_http_civchat_geoip_close(geo->mmdb);
    geo->mmdb = NULL;
}


static void
ngx_http_civchat_geoip_close(MMDB_s *mmdb)
{
    if (mmdb != NULL) {
        MMDB_close(mmdb);
        ngx_free(mmdb);
    }
}


void
ngx_http_civchat_geoip_init_process(ngx_http_civchat_geoip_t *geo,
    ngx_cycle_t *cycle)
{
    if (geo == NULL) {
        return;
    }

    geo->timer.handler = ngx_http_civchat_geoip_check;
    geo->timer.data = geo;
    geo->timer.log = cycle->log;
    geo->timer.cancelable = 1;

    ngx_add_timer(&geo->timer, geo->interval);
}


static void
ngx_http_civchat_geoip_check(ngx_event_t *ev)
{
    ngx_file_info_t              fi;
    ngx_http_civchat_file_id_t   id;
    ngx_http_civchat_geoip_t    *geo;

    geo = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        if (geo->copy_in != NGX_INVALID_FILE) {
            ngx_close_file(geo->copy_in);
            ngx_close_file(geo->copy_out);
            ngx_delete_file(geo->copy_tmp);
            geo->copy_in = NGX_INVALID_FILE;
        }

        return;
    }

    if (geo->copy_in != NGX_INVALID_FILE) {
        /* a slice per turn of the event loop: requests go in between */
        ngx_http_civchat_geoip_step(geo, ev->log);
        ngx_add_timer(ev, (geo->copy_in != NGX_INVALID_FILE)
                          ? 1 : geo->interval);
        return;
    }

    ngx_add_timer(ev, geo->interval);

    if (ngx_file_info(geo->path.data, &fi) == NGX_FILE_ERROR) {
        /* gone for a moment (being replaced): keep what we have */
        return;
    }

    ngx_http_civchat_geoip_id(&fi, &id);

    if (ngx_memcmp(&id, &geo->loaded, sizeof(id)) == 0) {
        return;
    }

    if (ngx_memcmp(&id, &geo->seen, sizeof(id)) != 0) {
        /* still changing: load it once it has stood still a while */
        geo->seen = id;
        geo->failed = 0;
        return;
    }

    if (geo->failed) {
        return;
    }

    if (ngx_http_civchat_geoip_start_copy(&geo->path, geo->copy_tmp,
                                          &geo->copy_in, &geo->copy_out,
                                          ev->log, NGX_LOG_ERR)
        != NGX_OK)
    {
        geo->copy_in = NGX_INVALID_FILE;
        geo->failed = 1;
        return;
    }

    geo->copy_id = id;

    ngx_del_timer(ev);
    ngx_add_timer(ev, 1);
}


static void
ngx_http_civchat_geoip_step(ngx_http_civchat_geoip_t *geo, ngx_log_t *log)
{
    ngx_int_t  rc;

    rc = ngx_http_civchat_geoip_copy_slice(geo->copy_in, geo->copy_out,
                                           1024 * 1024);
    if (rc == NGX_AGAIN) {
        return;
    }

    ngx_close_file(geo->copy_in);
    ngx_close_file(geo->copy_out);
    geo->copy_in = NGX_INVALID_FILE;

    if (rc == NGX_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "civchat_geoip: copying \"%V\" failed", &geo->path);
        ngx_delete_file(geo->copy_tmp);
        geo->failed = 1;
        return;
    }

    ngx_http_civchat_geoip_finish(geo, log);
}


static void
ngx_http_civchat_geoip_finish(ngx_http_civchat_geoip_t *geo, ngx_log_t *log)
{
    MMDB_s                      *mmdb;
    ngx_file_info_t              fi;
    ngx_http_civchat_file_id_t   id;

    if (ngx_file_info(geo->path.data, &fi) == NGX_FILE_ERROR) {
        ngx_delete_file(geo->copy_tmp);
        return;
    }

    ngx_http_civchat_geoip_id(&fi, &id);

    if (ngx_memcmp(&id, &geo->copy_id, sizeof(id)) != 0) {
        /* written to while we copied: wait for it to settle again */
        ngx_delete_file(geo->copy_tmp);
        geo->seen = id;
        return;
    }

    mmdb = ngx_http_civchat_geoip_map(&geo->path, geo->copy_tmp, log,
                                      NGX_LOG_ERR);

    if (mmdb == NULL) {
        /* logged once per version of the file; the old data stays */
        geo->failed = 1;
        return;
    }

    ngx_http_civchat_geoip_close(geo->mmdb);

    geo->mmdb = mmdb;
    geo->loaded = id;

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "civchat_geoip: loaded the new \"%V\"", &geo->path);
}


void
ngx_http_civchat_geoip_lookup(ngx_http_request_t *r,
    ngx_http_civchat_geoip_t *geo, ngx_http_civchat_geo_t *out)
{
    int                    mmdb_error;
    MMDB_lookup_result_s   res;

    ngx_memzero(out, sizeof(ngx_http_civchat_geo_t));

    if (geo == NULL || geo->mmdb == NULL) {
        return;
    }

    res = MMDB_lookup_sockaddr(geo->mmdb, r->connection->sockaddr,
                               &mmdb_error);

    if (mmdb_error != MMDB_SUCCESS || !res.found_entry) {
        return;
    }

    ngx_http_civchat_geoip_string(r, &res.entry, &out->country,
                                  ngx_http_civchat_geo_country);
    ngx_http_civchat_geoip_string(r, &res.entry, &out->region,
                                  ngx_http_civchat_geo_region);
    ngx_http_civchat_geoip_string(r, &res.entry, &out->city,
                                  ngx_http_civchat_geo_city);
    ngx_http_civchat_geoip_string(r, &res.entry, &out->timezone,
                                  ngx_http_civchat_geo_timezone);
}


static void
ngx_http_civchat_geoip_string(ngx_http_request_t *r, MMDB_entry_s *entry,
    ngx_str_t *out, const char *const *path)
{
    MMDB_entry_data_s  data;

    if (MMDB_aget_value(entry, &data, path) != MMDB_SUCCESS
        || !data.has_data || data.type != MMDB_DATA_TYPE_UTF8_STRING
        || data.data_size == 0)
    {
        return;
    }

    out->data = ngx_pnalloc(r->pool, data.data_size);
    if (out->data == NULL) {
        return;
    }

    ngx_memcpy(out->data, data.utf8_string, data.data_size);
    out->len = data.data_size;
}
