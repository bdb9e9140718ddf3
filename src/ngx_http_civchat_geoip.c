
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
 * Each worker checks the file's identity (inode, size, mtime) on a
 * cancelable timer and loads a new copy once the file has stopped
 * changing for one interval, so a half-written file is never loaded;
 * a file that does not open is logged and the old database kept.
 * Requests only ever read the mapping: no request waits on file I/O.
 */


struct ngx_http_civchat_geoip_s {
    ngx_str_t                     path;
    MMDB_s                       *mmdb;
    ngx_msec_t                    interval;
    ngx_event_t                   timer;
    ngx_log_t                    *log;

    ngx_file_uniq_t               uniq;       /* of the loaded file */
    off_t                         size;
    time_t                        mtime;

    ngx_file_uniq_t               seen_uniq;  /* at the previous check */
    off_t                         seen_size;
    time_t                        seen_mtime;
    ngx_uint_t                    failed;     /* unsigned: 1 */
};


static MMDB_s *ngx_http_civchat_geoip_open(ngx_str_t *path, ngx_log_t *log,
    ngx_uint_t level);
static ngx_int_t ngx_http_civchat_geoip_copy(ngx_str_t *path, u_char *tmp,
    ngx_log_t *log, ngx_uint_t level);
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

    geo->uniq = ngx_file_uniq(&fi);
    geo->size = ngx_file_size(&fi);
    geo->mtime = ngx_file_mtime(&fi);
    geo->seen_uniq = geo->uniq;
    geo->seen_size = geo->size;
    geo->seen_mtime = geo->mtime;

    *gp = geo;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &args[i]);

    return NGX_CONF_ERROR;
}


static MMDB_s *
ngx_http_civchat_geoip_open(ngx_str_t *path, ngx_log_t *log,
    ngx_uint_t level)
{
    int        rc;
    u_char     tmp[NGX_MAX_PATH];
    MMDB_s    *mmdb;

    if (ngx_http_civchat_geoip_copy(path, tmp, log, level) != NGX_OK) {
        return NULL;
    }

    mmdb = ngx_alloc(sizeof(MMDB_s), log);
    if (mmdb == NULL) {
        ngx_delete_file(tmp);
        return NULL;
    }

    rc = MMDB_open((char *) tmp, MMDB_MODE_MMAP, mmdb);

    /* the mapping outlives the name: nothing is left on disk */
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
ngx_http_civchat_geoip_copy(ngx_str_t *path, u_char *tmp, ngx_log_t *log,
    ngx_uint_t level)
{
    u_char      buf[65536];
    char       *dir;
    ssize_t     n;
    ngx_fd_t    in, out;
    ngx_int_t   rc;

    dir = getenv("TMPDIR");
    if (dir == NULL || *dir == '\0') {
        dir = "/tmp";
    }

    if (ngx_strlen(dir) + sizeof("/civchat-geoip-XXXXXX") > NGX_MAX_PATH) {
        ngx_log_error(level, log, 0, "civchat_geoip: TMPDIR is too long");
        return NGX_ERROR;
    }

    ngx_sprintf(tmp, "%s/civchat-geoip-XXXXXX%Z", dir);

    in = ngx_open_file(path->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (in == NGX_INVALID_FILE) {
        ngx_log_error(level, log, ngx_errno,
                      "civchat_geoip: " ngx_open_file_n " \"%V\" failed",
                      path);
        return NGX_ERROR;
    }

    out = mkstemp((char *) tmp);
    if (out == -1) {
        ngx_log_error(level, log, ngx_errno,
                      "civchat_geoip: mkstemp(\"%s\") failed", tmp);
        ngx_close_file(in);
        return NGX_ERROR;
    }

    rc = NGX_OK;

    for ( ;; ) {
        n = ngx_read_fd(in, buf, sizeof(buf));

        if (n == 0) {
            break;
        }

        if (n == -1 || ngx_write_fd(out, buf, n) != n) {
            ngx_log_error(level, log, ngx_errno,
                          "civchat_geoip: copying \"%V\" to \"%s\" failed",
                          path, tmp);
            rc = NGX_ERROR;
            break;
        }
    }

    ngx_close_file(in);
    ngx_close_file(out);

    if (rc != NGX_OK) {
        ngx_delete_file(tmp);
    }

    return rc;
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

    geo->log = cycle->log;
    geo->timer.handler = ngx_http_civchat_geoip_check;
    geo->timer.data = geo;
    geo->timer.log = cycle->log;
    geo->timer.cancelable = 1;

    ngx_add_timer(&geo->timer, geo->interval);
}


static void
ngx_http_civchat_geoip_check(ngx_event_t *ev)
{
    MMDB_s                    *mmdb;
    ngx_file_info_t            fi;
    ngx_http_civchat_geoip_t  *geo;

    geo = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_add_timer(ev, geo->interval);

    if (ngx_file_info(geo->path.data, &fi) == NGX_FILE_ERROR) {
        /* gone for a moment (being replaced): keep what we have */
        return;
    }

    if (ngx_file_uniq(&fi) == geo->uniq && ngx_file_size(&fi) == geo->size
        && ngx_file_mtime(&fi) == geo->mtime)
    {
        return;
    }

    if (ngx_file_uniq(&fi) != geo->seen_uniq
        || ngx_file_size(&fi) != geo->seen_size
        || ngx_file_mtime(&fi) != geo->seen_mtime)
    {
        /* still changing: load it once it has stood still a while */
        geo->seen_uniq = ngx_file_uniq(&fi);
        geo->seen_size = ngx_file_size(&fi);
        geo->seen_mtime = ngx_file_mtime(&fi);
        geo->failed = 0;
        return;
    }

    if (geo->failed) {
        return;
    }

    mmdb = ngx_http_civchat_geoip_open(&geo->path, ev->log, NGX_LOG_ERR);

    if (mmdb == NULL) {
        /* logged once per version of the file; the old data stays */
        geo->failed = 1;
        return;
    }

    ngx_http_civchat_geoip_close(geo->mmdb);

    geo->mmdb = mmdb;
    geo->uniq = ngx_file_uniq(&fi);
    geo->size = ngx_file_size(&fi);
    geo->mtime = ngx_file_mtime(&fi);

    ngx_log_error(NGX_LOG_NOTICE, ev->log, 0,
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
