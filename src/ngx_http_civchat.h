
/*
 * Copyright (C) civchat developers
 */


#ifndef _NGX_HTTP_CIVCHAT_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>


#define NGX_HTTP_CIVCHAT_KEY_LEN         16
#define NGX_HTTP_CIVCHAT_KEY_MIN         12
#define NGX_HTTP_CIVCHAT_KEY_MAX         32
#define NGX_HTTP_CIVCHAT_NAME_MAX        64
#define NGX_HTTP_CIVCHAT_USER_ID_MAX     128
#define NGX_HTTP_CIVCHAT_EMAIL_MAX       254
#define NGX_HTTP_CIVCHAT_EVENT_ID_LEN    32
#define NGX_HTTP_CIVCHAT_PINS            8
#define NGX_HTTP_CIVCHAT_UA_MAX          512


/* attribute types declared with civchat_attribute */
#define NGX_HTTP_CIVCHAT_TYPE_NONE       0
#define NGX_HTTP_CIVCHAT_TYPE_STRING     1
#define NGX_HTTP_CIVCHAT_TYPE_INTEGER    2
#define NGX_HTTP_CIVCHAT_TYPE_FLOAT      3
#define NGX_HTTP_CIVCHAT_TYPE_BOOLEAN    4
#define NGX_HTTP_CIVCHAT_TYPE_DATE       5
#define NGX_HTTP_CIVCHAT_TYPE_DATETIME   6
#define NGX_HTTP_CIVCHAT_TYPE_FIXED      7
#define NGX_HTTP_CIVCHAT_TYPE_MULTI      8


/* endpoints */
#define NGX_HTTP_CIVCHAT_INIT            1
#define NGX_HTTP_CIVCHAT_PAGE_HIT        2
#define NGX_HTTP_CIVCHAT_RESET_AUTH      3
#define NGX_HTTP_CIVCHAT_UPDATE          4
#define NGX_HTTP_CIVCHAT_EVENT           5
#define NGX_HTTP_CIVCHAT_PRODUCT_EVENT   6
#define NGX_HTTP_CIVCHAT_PIXEL           7
#define NGX_HTTP_CIVCHAT_STREAM          8
#define NGX_HTTP_CIVCHAT_MESSAGE         9

/* server API operations */
#define NGX_HTTP_CIVCHAT_API_READ        1
#define NGX_HTTP_CIVCHAT_API_UPSERT      2
#define NGX_HTTP_CIVCHAT_API_UPDATE      3
#define NGX_HTTP_CIVCHAT_API_DELETE      4


typedef struct ngx_http_civchat_zone_s   ngx_http_civchat_zone_t;
typedef struct ngx_http_civchat_sink_s   ngx_http_civchat_sink_t;
typedef struct ngx_http_civchat_profile_s  ngx_http_civchat_profile_t;
typedef struct ngx_http_civchat_geoip_s  ngx_http_civchat_geoip_t;
typedef struct ngx_http_civchat_http_s   ngx_http_civchat_http_t;


/* what a store has done, shared by the workers (status.c) */
typedef struct {
    ngx_atomic_t                  forwarded;  /* events the store took */
    ngx_atomic_t                  batches;
    ngx_atomic_t                  latency_ms; /* sum over batches */
    ngx_atomic_t                  errors;     /* failed attempts */
    ngx_atomic_t                  spooled;    /* events written to spool */
    ngx_atomic_t                  dropped;    /* events dropped when full */
    ngx_atomic_t                  spool_full;
} ngx_http_civchat_counters_t;


#define NGX_HTTP_CIVCHAT_ENDPOINTS     12     /* status.c's names */
#define NGX_HTTP_CIVCHAT_STATUSES      12
#define NGX_HTTP_CIVCHAT_EVENT_TYPES   12
#define NGX_HTTP_CIVCHAT_MAX_STORES    32
#define NGX_HTTP_CIVCHAT_WIDGET        100


typedef struct {
    ngx_atomic_t                  requests[NGX_HTTP_CIVCHAT_ENDPOINTS]
                                          [NGX_HTTP_CIVCHAT_STATUSES];
    ngx_atomic_t                  events[NGX_HTTP_CIVCHAT_EVENT_TYPES];
    ngx_atomic_t                  bots;
    ngx_atomic_t                  anonymous;
    ngx_http_civchat_counters_t   stores[NGX_HTTP_CIVCHAT_MAX_STORES];
} ngx_http_civchat_stats_t;


/* what GeoIP knows of the client address */
typedef struct {
    ngx_str_t                     country;
    ngx_str_t                     region;
    ngx_str_t                     city;
    ngx_str_t                     timezone;
} ngx_http_civchat_geo_t;


typedef struct {
    ngx_str_t                     name;      /* normalised */
    ngx_uint_t                    type;
} ngx_http_civchat_attr_decl_t;


/* index kinds: every index entry is one rbtree node in the zone */
#define NGX_HTTP_CIVCHAT_BY_KEY          'k'    /* keys and aliases */
#define NGX_HTTP_CIVCHAT_BY_USER_ID      'u'
#define NGX_HTTP_CIVCHAT_BY_EMAIL        'e'


/*
 * A profile is two allocations: this fixed part (240 bytes, with its
 * three index entries built in, so it never moves) and a blob
 * holding the key, user_id, email and attributes, reallocated when one
 * of them changes.  An alias is an index entry of its own.
 */

typedef struct {
    ngx_rbtree_node_t             node;      /* key: hash of kind+data */
    u_char                       *data;
    u_char                        kind;
    u_char                        len;       /* 0: not set */
    u_char                        alias;     /* in an alias_t */
} ngx_http_civchat_index_t;


/* the profile of an index entry is where it is built in (store.c) */
typedef struct {
    ngx_http_civchat_index_t      index;
    ngx_http_civchat_profile_t   *profile;
    ngx_queue_t                   queue;     /* in the profile's aliases */
    u_char                        data[1];
} ngx_http_civchat_alias_t;


struct ngx_http_civchat_profile_s {
    ngx_queue_t                   lru;
    ngx_queue_t                   aliases;
    ngx_http_civchat_index_t      key;
    ngx_http_civchat_index_t      user_id;
    ngx_http_civchat_index_t      email;
    u_char                       *blob;      /* key user_id email attrs */
    uint32_t                      attrs_len; /* JSON object text */
    uint32_t                      first_seen;
    uint32_t                      last_seen;
    uint32_t                      page_views;
    uint32_t                      sessions;
    uint32_t                      user_agent; /* ua_t, from the pool */

    /*
     * what a visit that changes nothing needs without reading the
     * attributes: the automatic values last stored (a hash, 0: not
     * known) and where the name is in the attributes' text
     */
    uint32_t                      auto_sig;
    uint16_t                      name_pos;  /* 0: none, 0xffff: read */
    uint16_t                      name_len;
};


/*
 * User-Agent strings, shared: most visitors send one of a few hundred,
 * and a profile keeps only a reference to it.
 */

typedef struct {
    ngx_rbtree_node_t             node;      /* key: crc32 of the text */
    uint32_t                      refs;
    uint16_t                      len;
    u_char                        data[1];
} ngx_http_civchat_ua_t;


#define ngx_http_civchat_profile_attrs(p)                                  \
    ((p)->blob + (p)->key.len + (p)->user_id.len + (p)->email.len)


/* a message for a visitor's live stream (live.c) */
#define NGX_HTTP_CIVCHAT_LIVE_MESSAGE    1
#define NGX_HTTP_CIVCHAT_LIVE_PAYLOAD    2
#define NGX_HTTP_CIVCHAT_LIVE_PROFILE    3


typedef struct {
    uint64_t                      seq;       /* 0: empty */
    u_char                       *data;      /* one line of JSON */
    uint32_t                      len;
    u_char                        type;
    u_char                        key_len;
    u_char                        key[NGX_HTTP_CIVCHAT_KEY_MAX];
} ngx_http_civchat_live_t;


/* size classes over slab pages for a zone's profiles (mem.c) */
#define NGX_HTTP_CIVCHAT_MEM_STEP        16
#define NGX_HTTP_CIVCHAT_MEM_MAX         2048
#define NGX_HTTP_CIVCHAT_MEM_CLASSES                                         \
    (NGX_HTTP_CIVCHAT_MEM_MAX / NGX_HTTP_CIVCHAT_MEM_STEP)


typedef struct {
    ngx_queue_t                   free[NGX_HTTP_CIVCHAT_MEM_CLASSES];
    u_char                       *start;      /* the slab's first page */
    ngx_uint_t                    pages;
    u_char                       *page_class; /* class + 1, 0: the slab's */
    uint16_t                     *page_used;  /* chunks in use */
} ngx_http_civchat_mem_t;


typedef struct {
    ngx_http_civchat_mem_t        mem;
    ngx_rbtree_t                  rbtree;
    ngx_rbtree_node_t             sentinel;
    ngx_queue_t                   lru;
    ngx_rbtree_t                  ua_tree;
    ngx_rbtree_node_t             ua_sentinel;
    ngx_uint_t                    profiles;
    ngx_uint_t                    evictions;
    ngx_uint_t                    changes;   /* bumped on every write */
    ngx_uint_t                    saved;     /* changes at last save */
    ngx_uint_t                    full_logged;
    ngx_http_civchat_live_t      *live;      /* the ring, or NULL */
    ngx_uint_t                    live_size;
    uint64_t                      live_seq;  /* the last published */
    uint64_t                      live_oldest; /* the oldest kept */
    ngx_atomic_t                  streams;   /* open, in all workers */
} ngx_http_civchat_shctx_t;


struct ngx_http_civchat_zone_s {
    ngx_str_t                     name;
    ngx_shm_zone_t               *shm_zone;
    ngx_http_civchat_shctx_t     *sh;
    ngx_slab_pool_t              *shpool;
    ngx_str_t                     state;     /* state file, or empty */
    ngx_msec_t                    state_interval;
    ngx_event_t                   save_event;
    ngx_log_t                    *log;
    ngx_uint_t                    live_size; /* civchat_zone live= */

    /* per worker: the live streams it holds */
    ngx_queue_t                   streams;
    ngx_event_t                   live_ev;
    uint64_t                      live_read;
    ngx_msec_t                    live_pinged;

    /* profiles the locked section works on: never evicted under it */
    ngx_uint_t                    npinned;
    ngx_http_civchat_profile_t   *pinned[NGX_HTTP_CIVCHAT_PINS];
};


#define NGX_HTTP_CIVCHAT_UA_SEEN         16


typedef struct {
    uint16_t                      len;       /* 0: empty */
    u_char                        bot;
    u_char                        data[NGX_HTTP_CIVCHAT_UA_MAX];
} ngx_http_civchat_ua_seen_t;


typedef struct {
    ngx_array_t                  *zones;     /* ngx_http_civchat_zone_t * */
    ngx_array_t                  *sinks;     /* ngx_http_civchat_sink_t * */
    ngx_array_t                  *redis;     /* civchat_redis, or NULL */
    time_t                        loaded;    /* configuration load time */
    ngx_http_civchat_geoip_t     *geoip;
    ngx_http_civchat_stats_t     *stats;     /* shared counters */

    /* the first three bytes of every bot fragment, hashed (privacy.c) */
    u_char                        bot_triples[65536 / 8];

    /* per worker: the verdicts on recent User-Agents (privacy.c) */
    ngx_http_civchat_ua_seen_t    ua_seen[NGX_HTTP_CIVCHAT_UA_SEEN];

    /* per worker: getrandom() output not used yet */
    size_t                        random_pos;
    u_char                        random[512];
} ngx_http_civchat_main_conf_t;


typedef struct {
    ngx_flag_t                    enable;
    ngx_flag_t                    api;            /* civchat_api */
    ngx_str_t                     api_token;
    ngx_str_t                     api_site;       /* "site" of its events */
    ngx_http_civchat_zone_t      *zone;
    ngx_array_t                  *api_keys;       /* ngx_str_t */
    ngx_http_civchat_sink_t      *sink;           /* NULL: store off */
    ngx_uint_t                    sink_set;

    ngx_str_t                     cookie_name;
    ngx_str_t                     cookie_domain;
    time_t                        cookie_max_age;
    ngx_flag_t                    cookie_httponly;

    ngx_flag_t                    unified;
    ngx_flag_t                    authorize_by_email;

    ngx_flag_t                    anonymize_ip;
    ngx_flag_t                    respect_gpc;
    ngx_flag_t                    bot_filter;

    ngx_array_t                  *attrs;          /* attr_decl_t */
    size_t                        body_limit;
    ngx_uint_t                    max_attrs;
    size_t                        max_value_len;
    ngx_uint_t                    max_array_items;

    ngx_array_t                  *origins;        /* ngx_str_t */
    ngx_flag_t                    any_origin;

    ngx_uint_t                    widget_state;
    ngx_str_t                     greeting;
    ngx_str_t                     widget_base;
    time_t                        widget_max_age;
    time_t                        session_timeout;

    ngx_str_t                     location;       /* clcf->name */
} ngx_http_civchat_loc_conf_t;


/* one skipped field of a request: {"name", "reason"} in the answer */
typedef struct {
    ngx_str_t                     name;
    const char                   *reason;
} ngx_http_civchat_ignored_t;


/* one event waiting to be written after the zone is unlocked */
typedef struct {
    const char                   *type;
    ngx_str_t                     name;
    ngx_str_t                     user_key;
    ngx_str_t                     user_id;
    ngx_str_t                     email;
    ngx_str_t                     attrs;          /* JSON text */
} ngx_http_civchat_event_t;


/* a profile copied out of the zone for the answer and the events */
typedef struct {
    ngx_str_t                     key;
    ngx_str_t                     user_id;
    ngx_str_t                     email;
    ngx_str_t                     name;
    time_t                        first_seen;
    time_t                        last_seen;
    ngx_uint_t                    page_views;
    ngx_uint_t                    sessions;
} ngx_http_civchat_user_t;


typedef struct {
    ngx_uint_t                    endpoint;
    ngx_http_civchat_loc_conf_t  *lcf;
    json_t                       *body;           /* request object */

    ngx_str_t                     site;           /* apiKey */
    ngx_str_t                     key;            /* cookie or body key */
    ngx_str_t                     url;
    ngx_str_t                     referrer;
    ngx_str_t                     title;
    ngx_str_t                     ip;
    ngx_str_t                     user_agent;
    ngx_str_t                     language;

    ngx_str_t                     user_id;        /* U */
    ngx_str_t                     email;          /* E */

    ngx_http_civchat_geo_t        geo;

    ngx_array_t                   ignored;        /* ignored_t */
    ngx_array_t                   events;         /* event_t */

    ngx_http_civchat_user_t       user;
    ngx_str_t                     state;          /* widget look asked for */
    ngx_int_t                     answer_rc;      /* of an error answer */
    unsigned                      answered:1;
    unsigned                      api:1;          /* the server API */
    unsigned                      resolved:1;     /* user is filled */
    unsigned                      geo_done:1;
    unsigned                      anonymous:1;    /* Sec-GPC or DNT */
    unsigned                      bot:1;
    unsigned                      created:1;
    unsigned                      changed:1;      /* attributes changed */
} ngx_http_civchat_ctx_t;


extern ngx_module_t  ngx_http_civchat_module;


/* handler.c */
ngx_int_t ngx_http_civchat_handler(ngx_http_request_t *r);
ngx_uint_t ngx_http_civchat_endpoint(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);
ngx_http_civchat_ctx_t *ngx_http_civchat_new_ctx(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_uint_t endpoint, size_t extra);
ngx_int_t ngx_http_civchat_read_body(ngx_http_request_t *r, ngx_str_t *body);
ngx_int_t ngx_http_civchat_send_json(ngx_http_request_t *r,
    ngx_uint_t status, u_char *data, size_t len);
ngx_int_t ngx_http_civchat_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *fmt, ...);
ngx_int_t ngx_http_civchat_add_header(ngx_http_request_t *r,
    const char *key, ngx_str_t *value);
ngx_table_elt_t *ngx_http_civchat_find_header(ngx_http_request_t *r,
    const char *name);

/* identity.c */
ngx_int_t ngx_http_civchat_random(ngx_http_request_t *r, u_char *buf,
    size_t len);
ngx_int_t ngx_http_civchat_mint_key(ngx_http_request_t *r, u_char *key);
ngx_int_t ngx_http_civchat_valid_key(u_char *p, size_t len);
void ngx_http_civchat_read_key(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
void ngx_http_civchat_cookie_key(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *key);
ngx_int_t ngx_http_civchat_set_cookie(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
ngx_int_t ngx_http_civchat_resolve(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
ngx_int_t ngx_http_civchat_api_profile(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, u_char kind, ngx_str_t *id, ngx_uint_t op,
    json_t **out);

/* store.c */
char *ngx_http_civchat_zone_add(ngx_conf_t *cf,
    ngx_http_civchat_zone_t *zone, size_t size);
void ngx_http_civchat_store_lock(ngx_http_civchat_zone_t *zone);
void ngx_http_civchat_store_unlock(ngx_http_civchat_zone_t *zone);
ngx_http_civchat_profile_t *ngx_http_civchat_store_find(
    ngx_http_civchat_zone_t *zone, u_char kind, ngx_str_t *value);
ngx_http_civchat_profile_t *ngx_http_civchat_store_create(
    ngx_http_civchat_zone_t *zone, ngx_str_t *key, time_t now);
ngx_int_t ngx_http_civchat_store_set_index(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, u_char kind, ngx_str_t *value);
ngx_int_t ngx_http_civchat_store_add_alias(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *key);
ngx_int_t ngx_http_civchat_store_set_attrs(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, u_char *text, size_t len);
void ngx_http_civchat_store_merge(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *from, ngx_http_civchat_profile_t *into);
void ngx_http_civchat_store_delete(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p);
void ngx_http_civchat_store_touch(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p);
void ngx_http_civchat_store_pin(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p);
ngx_int_t ngx_http_civchat_store_set_ua(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *ua);
void ngx_http_civchat_store_ua(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *ua);

/* sink.c */
ngx_http_civchat_sink_t *ngx_http_civchat_sink_create(ngx_conf_t *cf,
    ngx_http_civchat_main_conf_t *mcf, ngx_str_t *args, ngx_uint_t n);
ngx_int_t ngx_http_civchat_sink_write(ngx_http_civchat_sink_t *sink,
    ngx_log_t *log, u_char *line, size_t len);
void ngx_http_civchat_sink_flush(ngx_http_civchat_sink_t *sink,
    ngx_log_t *log);
ngx_int_t ngx_http_civchat_sink_full(ngx_http_civchat_sink_t *sink);
ngx_str_t *ngx_http_civchat_sink_name(ngx_http_civchat_sink_t *sink);
void ngx_http_civchat_sink_init_process(ngx_http_civchat_sink_t *sink,
    ngx_cycle_t *cycle, ngx_http_civchat_counters_t *counters);
void ngx_http_civchat_sink_exit_process(ngx_http_civchat_sink_t *sink,
    ngx_cycle_t *cycle);

/* http.c */
ngx_http_civchat_http_t *ngx_http_civchat_http_create(ngx_conf_t *cf,
    ngx_str_t *args, ngx_uint_t n);
ngx_str_t *ngx_http_civchat_http_spool_dir(ngx_http_civchat_http_t *h);
ngx_int_t ngx_http_civchat_http_same(ngx_http_civchat_http_t *a,
    ngx_http_civchat_http_t *b);
void ngx_http_civchat_http_init_process(ngx_http_civchat_http_t *h,
    ngx_cycle_t *cycle);
void ngx_http_civchat_http_exit_process(ngx_http_civchat_http_t *h,
    ngx_cycle_t *cycle);
ngx_int_t ngx_http_civchat_http_write(ngx_http_civchat_http_t *h,
    ngx_log_t *log, u_char *line, size_t len);
ngx_int_t ngx_http_civchat_http_full(ngx_http_civchat_http_t *h);
ngx_uint_t ngx_http_civchat_http_drops(ngx_http_civchat_http_t *h);
void ngx_http_civchat_http_set_counters(ngx_http_civchat_http_t *h,
    ngx_http_civchat_counters_t *counters);
ngx_str_t *ngx_http_civchat_http_name(ngx_http_civchat_http_t *h);

/* state.c */
ngx_int_t ngx_http_civchat_state_load(ngx_http_civchat_zone_t *zone);
ngx_int_t ngx_http_civchat_state_save(ngx_http_civchat_zone_t *zone,
    ngx_log_t *log);
void ngx_http_civchat_state_timer(ngx_http_civchat_zone_t *zone,
    ngx_cycle_t *cycle);

/* attrs.c */
ngx_int_t ngx_http_civchat_normalize_name(ngx_pool_t *pool, u_char *name,
    size_t len, ngx_str_t *out, const char **reason);
json_t *ngx_http_civchat_attr_value(ngx_http_civchat_loc_conf_t *lcf,
    ngx_str_t *name, json_t *value, const char **reason);
ngx_int_t ngx_http_civchat_user_id(ngx_pool_t *pool, json_t *value,
    ngx_str_t *out, const char **reason);
ngx_int_t ngx_http_civchat_email(ngx_pool_t *pool, json_t *value,
    ngx_str_t *out, const char **reason);
ngx_int_t ngx_http_civchat_reserved(ngx_str_t *name);
ngx_int_t ngx_http_civchat_automatic(ngx_str_t *name);
ngx_int_t ngx_http_civchat_widget_state(json_t *value);
ngx_int_t ngx_http_civchat_parse_type(ngx_str_t *type);
json_t *ngx_http_civchat_company(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);

/* json.c */
typedef struct {
    const char                   *text;
    size_t                        position;
} ngx_http_civchat_json_error_t;

json_t *ngx_http_civchat_json_parse(ngx_pool_t *pool, u_char *data,
    size_t len, ngx_http_civchat_json_error_t *err);
size_t ngx_http_civchat_json_size(json_t *v);
u_char *ngx_http_civchat_json_write(u_char *p, json_t *v);
ngx_int_t ngx_http_civchat_json_text(ngx_pool_t *pool, json_t *v,
    ngx_str_t *text);
size_t ngx_http_civchat_json_quoted_len(const u_char *p, size_t len);
u_char *ngx_http_civchat_json_quote(u_char *dst, const u_char *p,
    size_t len);

/* mem.c */
ngx_int_t ngx_http_civchat_mem_init(ngx_slab_pool_t *shpool,
    ngx_http_civchat_mem_t *mem);
void *ngx_http_civchat_mem_alloc(ngx_slab_pool_t *shpool,
    ngx_http_civchat_mem_t *mem, size_t size);
void ngx_http_civchat_mem_free(ngx_slab_pool_t *shpool,
    ngx_http_civchat_mem_t *mem, void *chunk);

/* event.c */
ngx_int_t ngx_http_civchat_add_event(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, const char *type, ngx_str_t *name,
    json_t *attrs);
ngx_int_t ngx_http_civchat_emit_events(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);

/* geoip.c */
char *ngx_http_civchat_geoip_conf(ngx_conf_t *cf,
    ngx_http_civchat_geoip_t **gp, ngx_str_t *args, ngx_uint_t n);
void ngx_http_civchat_geoip_init_process(ngx_http_civchat_geoip_t *geo,
    ngx_cycle_t *cycle);
void ngx_http_civchat_geoip_lookup(ngx_http_request_t *r,
    ngx_http_civchat_geoip_t *geo, ngx_http_civchat_geo_t *out);

/* privacy.c */
void ngx_http_civchat_privacy(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
ngx_http_civchat_geo_t *ngx_http_civchat_geo(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
void ngx_http_civchat_bot_triples(u_char *triples);
ngx_int_t ngx_http_civchat_is_bot(u_char *triples, ngx_str_t *ua);
ngx_int_t ngx_http_civchat_is_bot_seen(ngx_http_civchat_main_conf_t *mcf,
    ngx_str_t *ua);
ngx_int_t ngx_http_civchat_add_variables(ngx_conf_t *cf);

/* status.c */
ngx_int_t ngx_http_civchat_stats_add(ngx_conf_t *cf,
    ngx_http_civchat_main_conf_t *mcf);
ngx_uint_t ngx_http_civchat_event_type(const char *type);
void ngx_http_civchat_count_event(ngx_http_request_t *r, const char *type);
ngx_http_civchat_counters_t *ngx_http_civchat_store_counters(
    ngx_cycle_t *cycle, ngx_uint_t index);
char *ngx_http_civchat_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* live.c */
ngx_int_t ngx_http_civchat_live_init(ngx_http_civchat_zone_t *zone);
void ngx_http_civchat_live_publish(ngx_http_civchat_zone_t *zone,
    ngx_str_t *key, ngx_uint_t type, u_char *data, size_t len);
ngx_int_t ngx_http_civchat_live_drop_oldest(ngx_http_civchat_zone_t *zone);
ngx_int_t ngx_http_civchat_stream_handler(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);
void ngx_http_civchat_live_init_process(ngx_http_civchat_zone_t *zone,
    ngx_cycle_t *cycle);
void ngx_http_civchat_live_exit_process(ngx_http_civchat_zone_t *zone);

/* api.c */
ngx_int_t ngx_http_civchat_api_handler(ngx_http_request_t *r);

/* widget.c */
ngx_int_t ngx_http_civchat_widget_handler(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);


/* redis.c, resp.c: the Redis Cluster client */
#include "ngx_http_civchat_redis.h"


#endif /* _NGX_HTTP_CIVCHAT_H_INCLUDED_ */
