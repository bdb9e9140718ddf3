
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The directives that take more than one of nginx's stock slots: a
 * zone with its parameters, attribute types, allowed origins, the
 * cookie's domain, the identity secret (inline or from a file) and the
 * stream limits.  The table of all directives is module.c's.
 */


static ngx_int_t ngx_http_civchat_read_secret(ngx_conf_t *cf,
    ngx_str_t *name, ngx_str_t *secret);


char *
ngx_http_civchat_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_civchat_main_conf_t *mcf = conf;

    ssize_t                    size;
    ngx_int_t                  n;
    ngx_str_t                 *value, s;
    ngx_str_t                  redis;
    ngx_uint_t                 i, down;
    ngx_msec_t                 interval, flush;
    ngx_http_civchat_zone_t   *zone, **zp;

    value = cf->args->elts;

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zone->name = value[1];
    zone->state_interval = 10000;
    zone->live_size = 64;

    ngx_str_null(&redis);
    down = NGX_HTTP_CIVCHAT_DOWN_CACHE;
    flush = 100;

    size = ngx_parse_size(&value[2]);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", &value[2]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (16 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "civchat zone \"%V\" is too small, the minimum "
                           "is %uzk", &value[1], 16 * ngx_pagesize / 1024);
        return NGX_CONF_ERROR;
    }

    for (i = 3; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "state=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            if (s.len == 0) {
                goto invalid;
            }

            if (ngx_conf_full_name(cf->cycle, &s, 0) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            zone->state = s;
            continue;
        }

        if (ngx_strncmp(value[i].data, "live=", 5) == 0) {
            n = ngx_atoi(value[i].data + 5, value[i].len - 5);
            if (n == NGX_ERROR || n > 65536) {
                goto invalid;
            }

            zone->live_size = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "state_interval=", 15) == 0) {
            s.data = value[i].data + 15;
            s.len = value[i].len - 15;

            interval = ngx_parse_time(&s, 0);
            if (interval == (ngx_msec_t) NGX_ERROR || interval == 0) {
                goto invalid;
            }

            zone->state_interval = interval;
            continue;
        }

        if (ngx_strncmp(value[i].data, "redis=", 6) == 0) {
            redis.data = value[i].data + 6;
            redis.len = value[i].len - 6;

            if (redis.len == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strcmp(value[i].data, "redis_down=cache") == 0) {
            down = NGX_HTTP_CIVCHAT_DOWN_CACHE;
            continue;
        }

        if (ngx_strcmp(value[i].data, "redis_down=refuse") == 0) {
            down = NGX_HTTP_CIVCHAT_DOWN_REFUSE;
            continue;
        }

        if (ngx_strncmp(value[i].data, "redis_flush=", 12) == 0) {
            s.data = value[i].data + 12;
            s.len = value[i].len - 12;

            flush = ngx_parse_time(&s, 0);
            if (flush == (ngx_msec_t) NGX_ERROR || flush == 0) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (redis.len) {
        if (zone->state.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "civchat zone \"%V\": \"state=\" and "
                               "\"redis=\" exclude each other (Redis keeps "
                               "the profiles)", &zone->name);
            return NGX_CONF_ERROR;
        }

        if (ngx_http_civchat_cluster_conf(cf, zone, &redis, down, flush)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_http_civchat_zone_add(cf, zone, size) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    zp = ngx_array_push(mcf->zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = zone;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


char *
ngx_http_civchat_attribute(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_civchat_loc_conf_t *lcf = conf;

    ngx_int_t                      type;
    ngx_str_t                     *value, name;
    ngx_uint_t                     i;
    const char                    *reason;
    ngx_http_civchat_attr_decl_t  *decl;

    value = cf->args->elts;

    if (ngx_http_civchat_normalize_name(cf->pool, value[1].data, value[1].len,
                                        &name, &reason)
        != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid attribute name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    type = ngx_http_civchat_parse_type(&value[2]);

    if (type == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid attribute type \"%V\", expected "
                           "string, integer, float, boolean, date, "
                           "datetime, fixed or multi", &value[2]);
        return NGX_CONF_ERROR;
    }

    if (lcf->attrs == NULL) {
        lcf->attrs = ngx_array_create(cf->pool, 4,
                                      sizeof(ngx_http_civchat_attr_decl_t));
        if (lcf->attrs == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    decl = lcf->attrs->elts;

    for (i = 0; i < lcf->attrs->nelts; i++) {
        if (decl[i].name.len == name.len
            && ngx_strncmp(decl[i].name.data, name.data, name.len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "attribute \"%V\" is already declared",
                               &name);
            return NGX_CONF_ERROR;
        }
    }

    decl = ngx_array_push(lcf->attrs);
    if (decl == NULL) {
        return NGX_CONF_ERROR;
    }

    decl->name = name;
    decl->type = type;

    return NGX_CONF_OK;
}


char *
ngx_http_civchat_allow_origin(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_civchat_loc_conf_t *lcf = conf;

    ngx_str_t   *value, *origin;
    ngx_uint_t   i;

    if (lcf->origins != NULL || lcf->any_origin) {
        return "is duplicate";
    }

    value = cf->args->elts;

    lcf->origins = ngx_array_create(cf->pool, cf->args->nelts,
                                    sizeof(ngx_str_t));
    if (lcf->origins == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (value[i].len == 1 && value[i].data[0] == '*') {
            lcf->any_origin = 1;
            continue;
        }

        if (ngx_strncmp(value[i].data, "http://", 7) != 0
            && ngx_strncmp(value[i].data, "https://", 8) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid origin \"%V\", expected "
                               "\"https://host[:port]\" or \"*\"",
                               &value[i]);
            return NGX_CONF_ERROR;
        }

        origin = ngx_array_push(lcf->origins);
        if (origin == NULL) {
            return NGX_CONF_ERROR;
        }

        *origin = value[i];

        /* "https://shop.example.org/" and without the slash are one */
        if (origin->data[origin->len - 1] == '/') {
            origin->len--;
        }
    }

    return NGX_CONF_OK;
}


char *
ngx_http_civchat_cookie_domain(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_civchat_loc_conf_t *lcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i;

    if (lcf->cookie_domain.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        ngx_str_set(&lcf->cookie_domain, "");
        return NGX_CONF_OK;
    }

    for (i = 0; i < value[1].len; i++) {
        if (value[1].data[i] <= ' ' || value[1].data[i] == ';'
            || value[1].data[i] == ',' || value[1].data[i] >= 0x7f)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid cookie domain \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    lcf->cookie_domain = value[1];

    return NGX_CONF_OK;
}


/*
 * civchat_identity_secret SECRET | file=PATH: the key of the HMAC a
 * site's backend signs user_ids and emails with.  Only its hashed key
 * blocks are kept.
 */

char *
ngx_http_civchat_identity_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_civchat_loc_conf_t *lcf = conf;

    ngx_str_t  *value, secret, name;

    if (lcf->identity_set) {
        return "is duplicate";
    }

    value = cf->args->elts;
    secret = value[1];

    if (ngx_strncmp(secret.data, "file=", 5) == 0) {
        name.data = secret.data + 5;
        name.len = secret.len - 5;

        if (ngx_http_civchat_read_secret(cf, &name, &secret) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (secret.len < 16) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"civchat_identity_secret\" must be at least 16 "
                           "bytes long (a random secret of 32 or more is "
                           "best)");
        return NGX_CONF_ERROR;
    }

    lcf->identity = ngx_palloc(cf->pool, sizeof(ngx_http_civchat_hmac_t));
    if (lcf->identity == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_http_civchat_hmac_key(lcf->identity, secret.data, secret.len);

    if (secret.data != value[1].data) {
        ngx_explicit_memzero(secret.data, secret.len);
    }

    lcf->identity_set = 1;

    return NGX_CONF_OK;
}


/* the secret is the file's content, a final line break left out */

static ngx_int_t
ngx_http_civchat_read_secret(ngx_conf_t *cf, ngx_str_t *name,
    ngx_str_t *secret)
{
    ssize_t          n;
    ngx_fd_t         fd;
    ngx_file_info_t  fi;

    if (ngx_conf_full_name(cf->cycle, name, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    fd = ngx_open_file(name->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", name);
        return NGX_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > 4096)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "civchat_identity_secret file \"%V\" is not a "
                           "file of at most 4096 bytes", name);
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    secret->data = ngx_pnalloc(cf->temp_pool, ngx_file_size(&fi) + 1);
    if (secret->data == NULL) {
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    n = ngx_read_fd(fd, secret->data, ngx_file_size(&fi));
    ngx_close_file(fd);

    if (n != (ssize_t) ngx_file_size(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "reading \"%V\" failed", name);
        return NGX_ERROR;
    }

    while (n && (secret->data[n - 1] == '\n' || secret->data[n - 1] == '\r'))
    {
        n--;
    }

    secret->len = n;

    return NGX_OK;
}


/* civchat_stream_limit [per_key=N] [per_address=N] (0: no limit) */

char *
ngx_http_civchat_stream_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_civchat_loc_conf_t *lcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value;
    ngx_uint_t   i;

    if (lcf->stream_per_key != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    lcf->stream_per_key = 8;
    lcf->stream_per_address = 100;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "per_key=", 8) == 0) {
            n = ngx_atoi(value[i].data + 8, value[i].len - 8);
            if (n == NGX_ERROR || n > 255) {
                goto invalid;
            }

            lcf->stream_per_key = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "per_address=", 12) == 0) {
            n = ngx_atoi(value[i].data + 12, value[i].len - 12);
            if (n == NGX_ERROR || n > 65535) {
                goto invalid;
            }

            lcf->stream_per_address = n;
            continue;
        }

        goto invalid;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}
