
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


static void *ngx_http_civchat_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_civchat_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_civchat_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_civchat_merge_zone(ngx_conf_t *cf,
    ngx_http_civchat_loc_conf_t *conf);
static char *ngx_http_civchat_merge_api(ngx_conf_t *cf,
    ngx_http_civchat_loc_conf_t *conf);
static char *ngx_http_civchat(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_civchat_api_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_civchat_store(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_civchat_geoip(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_civchat_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_civchat_preconf(ngx_conf_t *cf);
static ngx_int_t ngx_http_civchat_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_civchat_init_process(ngx_cycle_t *cycle);
static void ngx_http_civchat_exit_process(ngx_cycle_t *cycle);
static void ngx_http_civchat_exit_master(ngx_cycle_t *cycle);
static void ngx_http_civchat_save_zones(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_civchat_states[] = {
    { ngx_string("simple"), 1 },
    { ngx_string("standard"), 2 },
    { ngx_string("hidden"), 3 },
    { ngx_string("expanded"), 4 },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_civchat_commands[] = {

    { ngx_string("civchat_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_civchat_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_geoip"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_civchat_geoip,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_civchat_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_anonymize_ip"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, anonymize_ip),
      NULL },

    { ngx_string("civchat_respect_gpc"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, respect_gpc),
      NULL },

    { ngx_string("civchat_bot_filter"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, bot_filter),
      NULL },

    { ngx_string("civchat_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_civchat,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, api),
      ngx_http_civchat_api_handler },

    { ngx_string("civchat_api_token"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, api_token),
      NULL },

    { ngx_string("civchat_status"),
      NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_civchat_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_civchat,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, enable),
      ngx_http_civchat_handler },

    { ngx_string("civchat_api_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_civchat_api_key,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_store"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_civchat_store,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_cookie_name"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, cookie_name),
      NULL },

    { ngx_string("civchat_cookie_domain"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_civchat_cookie_domain,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_cookie_max_age"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, cookie_max_age),
      NULL },

    { ngx_string("civchat_cookie_httponly"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, cookie_httponly),
      NULL },

    { ngx_string("civchat_unified_identification"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, unified),
      NULL },

    { ngx_string("civchat_identity_secret"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_civchat_identity_secret,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_stream_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_civchat_stream_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_stream_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, stream_idle),
      NULL },

    { ngx_string("civchat_authorize_by_email"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, authorize_by_email),
      NULL },

    { ngx_string("civchat_attribute"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_civchat_attribute,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_body_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, body_limit),
      NULL },

    { ngx_string("civchat_max_attributes"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, max_attrs),
      NULL },

    { ngx_string("civchat_max_value_length"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, max_value_len),
      NULL },

    { ngx_string("civchat_max_array_items"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, max_array_items),
      NULL },

    { ngx_string("civchat_allow_origin"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_civchat_allow_origin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("civchat_widget_state"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, widget_state),
      &ngx_http_civchat_states },

    { ngx_string("civchat_greeting"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, greeting),
      NULL },

    { ngx_string("civchat_widget_base"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, widget_base),
      NULL },

    { ngx_string("civchat_widget_max_age"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, widget_max_age),
      NULL },

    { ngx_string("civchat_session_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_civchat_loc_conf_t, session_timeout),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_civchat_module_ctx = {
    ngx_http_civchat_preconf,              /* preconfiguration */
    ngx_http_civchat_init,                 /* postconfiguration */

    ngx_http_civchat_create_main_conf,     /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_civchat_create_loc_conf,      /* create location configuration */
    ngx_http_civchat_merge_loc_conf        /* merge location configuration */
};


ngx_module_t  ngx_http_civchat_module = {
    NGX_MODULE_V1,
    &ngx_http_civchat_module_ctx,          /* module context */
    ngx_http_civchat_commands,             /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_civchat_init_process,         /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_civchat_exit_process,         /* exit process */
    ngx_http_civchat_exit_master,          /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_http_civchat_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    mcf->zones = ngx_array_create(cf->pool, 2,
                                  sizeof(ngx_http_civchat_zone_t *));
    if (mcf->zones == NULL) {
        return NULL;
    }

    mcf->sinks = ngx_array_create(cf->pool, 2,
                                  sizeof(ngx_http_civchat_sink_t *));
    if (mcf->sinks == NULL) {
        return NULL;
    }

    ngx_http_civchat_bot_triples(mcf->bot_triples);

    return mcf;
}


static void *
ngx_http_civchat_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_civchat_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->zone = NULL;
     *     conf->sink = NULL;
     *     conf->sink_set = 0;
     *     conf->cookie_name = { 0, NULL };
     *     conf->cookie_domain = { 0, NULL };
     *     conf->attrs = NULL;
     *     conf->origins = NULL;
     *     conf->any_origin = 0;
     *     conf->greeting = { 0, NULL };
     *     conf->widget_base = { 0, NULL };
     *     conf->location = { 0, NULL };
     *     conf->identity = NULL;
     *     conf->identity_set = 0;
     *     conf->widget = NULL;
     */

    conf->enable = NGX_CONF_UNSET;
    conf->api = NGX_CONF_UNSET;
    conf->api_keys = NGX_CONF_UNSET_PTR;
    conf->cookie_max_age = NGX_CONF_UNSET;
    conf->cookie_httponly = NGX_CONF_UNSET;
    conf->unified = NGX_CONF_UNSET;
    conf->authorize_by_email = NGX_CONF_UNSET;
    conf->anonymize_ip = NGX_CONF_UNSET;
    conf->respect_gpc = NGX_CONF_UNSET;
    conf->bot_filter = NGX_CONF_UNSET;
    conf->body_limit = NGX_CONF_UNSET_SIZE;
    conf->max_attrs = NGX_CONF_UNSET_UINT;
    conf->max_value_len = NGX_CONF_UNSET_SIZE;
    conf->max_array_items = NGX_CONF_UNSET_UINT;
    conf->widget_state = NGX_CONF_UNSET_UINT;
    conf->widget_max_age = NGX_CONF_UNSET;
    conf->session_timeout = NGX_CONF_UNSET;
    conf->stream_per_key = NGX_CONF_UNSET_UINT;
    conf->stream_per_address = NGX_CONF_UNSET_UINT;
    conf->stream_idle = NGX_CONF_UNSET_MSEC;

    return conf;
}


static char *
ngx_http_civchat_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_civchat_loc_conf_t *prev = parent;
    ngx_http_civchat_loc_conf_t *conf = child;

    ngx_http_civchat_main_conf_t  *mcf;

    /* not inherited: a nested location is not an endpoint location */
    if (conf->enable == NGX_CONF_UNSET) {
        conf->enable = 0;
    }

    if (conf->api == NGX_CONF_UNSET) {
        conf->api = 0;
    }

    ngx_conf_merge_str_value(conf->api_token, prev->api_token, "");

    ngx_conf_merge_ptr_value(conf->api_keys, prev->api_keys, NULL);

    if (!conf->sink_set) {
        conf->sink = prev->sink;
        conf->sink_set = prev->sink_set;
    }

    ngx_conf_merge_str_value(conf->cookie_name, prev->cookie_name,
                             "__ca__chat");
    ngx_conf_merge_str_value(conf->cookie_domain, prev->cookie_domain, "");
    ngx_conf_merge_sec_value(conf->cookie_max_age, prev->cookie_max_age,
                             365 * 86400);
    ngx_conf_merge_value(conf->cookie_httponly, prev->cookie_httponly, 1);
    ngx_conf_merge_value(conf->unified, prev->unified, 0);
    ngx_conf_merge_value(conf->authorize_by_email, prev->authorize_by_email,
                         0);

    if (!conf->identity_set) {
        conf->identity = prev->identity;
        conf->identity_set = prev->identity_set;
    }

    ngx_conf_merge_uint_value(conf->stream_per_key, prev->stream_per_key, 8);
    ngx_conf_merge_uint_value(conf->stream_per_address,
                              prev->stream_per_address, 100);
    ngx_conf_merge_msec_value(conf->stream_idle, prev->stream_idle,
                              10 * 60 * 1000);

    ngx_conf_merge_value(conf->anonymize_ip, prev->anonymize_ip, 0);
    ngx_conf_merge_value(conf->respect_gpc, prev->respect_gpc, 1);
    ngx_conf_merge_value(conf->bot_filter, prev->bot_filter, 1);

    if (conf->attrs == NULL) {
        conf->attrs = prev->attrs;
    }

    ngx_conf_merge_size_value(conf->body_limit, prev->body_limit,
                              64 * 1024);
    ngx_conf_merge_uint_value(conf->max_attrs, prev->max_attrs, 100);
    ngx_conf_merge_size_value(conf->max_value_len, prev->max_value_len,
                              1024);
    ngx_conf_merge_uint_value(conf->max_array_items, prev->max_array_items,
                              32);

    if (conf->origins == NULL && !conf->any_origin) {
        conf->origins = prev->origins;
        conf->any_origin = prev->any_origin;
    }

    ngx_conf_merge_uint_value(conf->widget_state, prev->widget_state, 1);
    ngx_conf_merge_str_value(conf->greeting, prev->greeting,
                             "Hi! How can we help?");
    ngx_conf_merge_str_value(conf->widget_base, prev->widget_base, "");
    ngx_conf_merge_sec_value(conf->widget_max_age, prev->widget_max_age,
                             3600);
    ngx_conf_merge_sec_value(conf->session_timeout, prev->session_timeout,
                             30 * 60);

    if (conf->api) {
        return ngx_http_civchat_merge_api(cf, conf);
    }

    if (!conf->enable) {
        return NGX_CONF_OK;
    }

    if (conf->api_keys == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"civchat\" in location \"%V\" needs at least "
                           "one \"civchat_api_key\"", &conf->location);
        return NGX_CONF_ERROR;
    }

    if (conf->identity == NULL) {
        /* nginx -t says so once, at the end (ngx_http_civchat_init()) */
        mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_civchat_module);
        mcf->unverified_locations++;
    }

    if (ngx_http_civchat_widget_init(cf, conf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_civchat_merge_zone(cf, conf);
}


static char *
ngx_http_civchat_merge_api(ngx_conf_t *cf, ngx_http_civchat_loc_conf_t *conf)
{
    ngx_str_t  *keys;

    if (conf->api_token.len < 16) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"civchat_api\" in location \"%V\" needs a "
                           "\"civchat_api_token\" of at least 16 "
                           "characters", &conf->location);
        return NGX_CONF_ERROR;
    }

    /* the API's events carry the site's key when the location names one */
    if (conf->api_keys != NULL && conf->api_keys->nelts) {
        keys = conf->api_keys->elts;
        conf->api_site = keys[0];

    } else {
        ngx_str_set(&conf->api_site, "api");
    }

    return ngx_http_civchat_merge_zone(cf, conf);
}


/* "civchat zone=NAME" may come before the civchat_zone that defines it */

static char *
ngx_http_civchat_merge_zone(ngx_conf_t *cf, ngx_http_civchat_loc_conf_t *conf)
{
    ngx_uint_t                     i;
    ngx_http_civchat_zone_t      **zones;
    ngx_http_civchat_main_conf_t  *mcf;

    if (conf->zone->shm_zone != NULL) {
        return NGX_CONF_OK;
    }

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_civchat_module);
    zones = mcf->zones->elts;

    for (i = 0; i < mcf->zones->nelts; i++) {
        if (zones[i]->name.len == conf->zone->name.len
            && ngx_strncmp(zones[i]->name.data, conf->zone->name.data,
                           conf->zone->name.len) == 0)
        {
            conf->zone = zones[i];
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "unknown civchat zone \"%V\" (define it with "
                       "\"civchat_zone\" in the http block)",
                       &conf->zone->name);

    return NGX_CONF_ERROR;
}


/*
 * "civchat zone=NAME" (the endpoints) and "civchat_api zone=NAME" (the
 * server API): cmd->offset is the flag, cmd->post the content handler.
 */

static char *
ngx_http_civchat(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_civchat_loc_conf_t *lcf = conf;

    ngx_str_t                 *value;
    ngx_flag_t                *flag;
    ngx_http_core_loc_conf_t  *clcf;

    flag = (ngx_flag_t *) ((u_char *) lcf + cmd->offset);

    if (lcf->enable != NGX_CONF_UNSET || lcf->api != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "zone=", 5) != 0 || value[1].len == 5) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\", expected "
                           "\"zone=name\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    /* resolved against the civchat_zone list when the location merges */
    lcf->zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_zone_t));
    if (lcf->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    lcf->zone->name.data = value[1].data + 5;
    lcf->zone->name.len = value[1].len - 5;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = (ngx_http_handler_pt) cmd->post;

    *flag = 1;
    lcf->location = clcf->name;

    ngx_http_civchat_stats_location(cf);

    return NGX_CONF_OK;
}


/* "civchat_api_key A B;" and repeated directives add up */

static char *
ngx_http_civchat_api_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_civchat_loc_conf_t *lcf = conf;

    ngx_str_t   *value, *key;
    ngx_uint_t   i;

    if (lcf->api_keys == NGX_CONF_UNSET_PTR) {
        lcf->api_keys = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
        if (lcf->api_keys == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        key = ngx_array_push(lcf->api_keys);
        if (key == NULL) {
            return NGX_CONF_ERROR;
        }

        *key = value[i];
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_civchat_store(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_civchat_loc_conf_t *lcf = conf;

    ngx_str_t                      *value;
    ngx_http_civchat_main_conf_t   *mcf;

    if (lcf->sink_set) {
        return "is duplicate";
    }

    value = cf->args->elts;
    lcf->sink_set = 1;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        lcf->sink = NULL;
        return NGX_CONF_OK;
    }

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_civchat_module);

    lcf->sink = ngx_http_civchat_sink_create(cf, mcf, value + 1,
                                             cf->args->nelts - 1);
    if (lcf->sink == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_civchat_geoip(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_civchat_main_conf_t *mcf = conf;

    ngx_str_t  *value;

    value = cf->args->elts;

    return ngx_http_civchat_geoip_conf(cf, &mcf->geoip, value + 1,
                                       cf->args->nelts - 1);
}


/* "civchat_redis NAME host:port ... [password=] [timeout=] ..." */

static char *
ngx_http_civchat_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_civchat_main_conf_t *mcf = conf;

    ngx_str_t  *value;

    value = cf->args->elts;

    return ngx_http_civchat_redis_add(cf, &mcf->redis, value + 1,
                                      cf->args->nelts - 1);
}


static ngx_int_t
ngx_http_civchat_preconf(ngx_conf_t *cf)
{
    return ngx_http_civchat_add_variables(cf);
}


static ngx_int_t
ngx_http_civchat_init(ngx_conf_t *cf)
{
    ngx_uint_t                     i;
    ngx_http_civchat_zone_t      **zones;
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_civchat_module);

    /* Last-Modified of widget.js: when this configuration was loaded */
    mcf->loaded = ngx_time();

    /* civchat_zone ... redis=NAME may come before its civchat_redis */

    zones = mcf->zones->elts;

    for (i = 0; i < mcf->zones->nelts; i++) {
        if (ngx_http_civchat_cluster_resolve(cf, zones[i], mcf->redis)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (mcf->unverified_locations) {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "civchat: %ui location(s) without "
                      "\"civchat_identity_secret\": a user_id or email "
                      "that a browser sends is trusted without proof "
                      "(the User.com-compatible mode, README \"Identity\")",
                      mcf->unverified_locations);
    }

    return ngx_http_civchat_stats_add(cf, mcf);
}


static ngx_int_t
ngx_http_civchat_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                     i;
    ngx_http_civchat_redis_t     **rds;
    ngx_http_civchat_sink_t      **sinks;
    ngx_http_civchat_zone_t      **zones;
    ngx_http_civchat_main_conf_t  *mcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_civchat_module);
    if (mcf == NULL) {
        return NGX_OK;
    }

    /* the random pool was copied at fork: never share it between workers */
    mcf->random_pos = sizeof(mcf->random);

    ngx_http_civchat_geoip_init_process(mcf->geoip, cycle);

    sinks = mcf->sinks->elts;

    for (i = 0; i < mcf->sinks->nelts; i++) {
        ngx_http_civchat_sink_init_process(sinks[i], cycle,
                                   ngx_http_civchat_store_counters(cycle, i));
    }

    if (mcf->redis != NULL) {
        rds = mcf->redis->elts;

        for (i = 0; i < mcf->redis->nelts; i++) {
            ngx_http_civchat_redis_init_process(rds[i], cycle);
        }
    }

    zones = mcf->zones->elts;

    for (i = 0; i < mcf->zones->nelts; i++) {
        ngx_http_civchat_stream_init_process(zones[i], cycle);
        ngx_http_civchat_behind_init_process(zones[i], cycle);

        /* one worker saves the zones periodically, the master at stop */
        if (ngx_worker == 0) {
            ngx_http_civchat_zone_timer(zones[i], cycle);
        }
    }

    return NGX_OK;
}


static void
ngx_http_civchat_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                     i;
    ngx_http_civchat_redis_t     **rds;
    ngx_http_civchat_sink_t      **sinks;
    ngx_http_civchat_zone_t      **zones;
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_civchat_module);
    if (mcf == NULL) {
        return;
    }

    sinks = mcf->sinks->elts;

    for (i = 0; i < mcf->sinks->nelts; i++) {
        ngx_http_civchat_sink_exit_process(sinks[i], cycle);
    }

    zones = mcf->zones->elts;

    for (i = 0; i < mcf->zones->nelts; i++) {
        ngx_http_civchat_stream_exit_process(zones[i]);
        ngx_http_civchat_zone_save_exit(zones[i], cycle->log);
        ngx_http_civchat_behind_exit_process(zones[i]);
    }

    if (mcf->redis != NULL) {
        rds = mcf->redis->elts;

        for (i = 0; i < mcf->redis->nelts; i++) {
            ngx_http_civchat_redis_exit_process(rds[i], cycle);
        }
    }

    if (ngx_process == NGX_PROCESS_SINGLE) {
        ngx_http_civchat_save_zones(cycle);
    }
}


static void
ngx_http_civchat_exit_master(ngx_cycle_t *cycle)
{
    ngx_http_civchat_save_zones(cycle);
}


static void
ngx_http_civchat_save_zones(ngx_cycle_t *cycle)
{
    ngx_uint_t                     i;
    ngx_http_civchat_zone_t      **zones;
    ngx_http_civchat_main_conf_t  *mcf;

    if (cycle->conf_ctx == NULL) {
        return;
    }

    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_civchat_module);
    if (mcf == NULL) {
        return;
    }

    zones = mcf->zones->elts;

    for (i = 0; i < mcf->zones->nelts; i++) {
        (void) ngx_http_civchat_zone_save(zones[i], cycle->log);
    }
}
