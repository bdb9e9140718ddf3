
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
#define NGX_HTTP_CIVCHAT_CONTEXT_MAX     4096
#define NGX_HTTP_CIVCHAT_HASH_LEN        64     /* HMAC-SHA256 in hex */


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


/*
 * Endpoints: the index of each one's descriptor in endpoint.c, which is
 * the one place that says what an endpoint takes and does.
 */

#define NGX_HTTP_CIVCHAT_UNKNOWN         0
#define NGX_HTTP_CIVCHAT_INIT            1
#define NGX_HTTP_CIVCHAT_PAGE_HIT        2
#define NGX_HTTP_CIVCHAT_RESET_AUTH      3
#define NGX_HTTP_CIVCHAT_UPDATE          4
#define NGX_HTTP_CIVCHAT_EVENT           5
#define NGX_HTTP_CIVCHAT_PRODUCT_EVENT   6
#define NGX_HTTP_CIVCHAT_PIXEL           7
#define NGX_HTTP_CIVCHAT_STREAM          8
#define NGX_HTTP_CIVCHAT_MESSAGE         9
#define NGX_HTTP_CIVCHAT_WIDGET          10
#define NGX_HTTP_CIVCHAT_OPTIONS         11
#define NGX_HTTP_CIVCHAT_ENDPOINTS       12

/* what an endpoint does: the flags of its descriptor */
#define NGX_HTTP_CIVCHAT_EP_JSON         0x01   /* a JSON body */
#define NGX_HTTP_CIVCHAT_EP_VISIT        0x02   /* a page view */
#define NGX_HTTP_CIVCHAT_EP_ATTRS        0x04   /* other fields: attributes */
#define NGX_HTTP_CIVCHAT_EP_PROFILE      0x08   /* resolves a profile */


/* event types: the index of each one's name in endpoint.c */
#define NGX_HTTP_CIVCHAT_EV_USER_CREATED     0
#define NGX_HTTP_CIVCHAT_EV_PAGE_VIEW        1
#define NGX_HTTP_CIVCHAT_EV_EVENT            2
#define NGX_HTTP_CIVCHAT_EV_PRODUCT_EVENT    3
#define NGX_HTTP_CIVCHAT_EV_PROFILE_UPDATED  4
#define NGX_HTTP_CIVCHAT_EV_USER_IDENTIFIED  5
#define NGX_HTTP_CIVCHAT_EV_USER_MERGED      6
#define NGX_HTTP_CIVCHAT_EV_EMAIL_CLAIMED    7
#define NGX_HTTP_CIVCHAT_EV_AUTH_RESET       8
#define NGX_HTTP_CIVCHAT_EV_USER_DELETED     9
#define NGX_HTTP_CIVCHAT_EV_CHAT_MESSAGE     10
#define NGX_HTTP_CIVCHAT_EV_NONE             11
#define NGX_HTTP_CIVCHAT_EVENT_TYPES         12


typedef struct {
    ngx_str_t                     name;      /* the path's last segment */
    ngx_uint_t                    methods;   /* NGX_HTTP_GET|... */
    ngx_str_t                     allow;     /* the Allow header of a 405 */
    ngx_uint_t                    flags;     /* NGX_HTTP_CIVCHAT_EP_* */
    ngx_uint_t                    event;     /* what it records */
} ngx_http_civchat_endpoint_t;


typedef struct ngx_http_civchat_zone_s   ngx_http_civchat_zone_t;
typedef struct ngx_http_civchat_sink_s   ngx_http_civchat_sink_t;
typedef struct ngx_http_civchat_profile_s  ngx_http_civchat_profile_t;
typedef struct ngx_http_civchat_geoip_s  ngx_http_civchat_geoip_t;
typedef struct ngx_http_civchat_http_s   ngx_http_civchat_http_t;
typedef struct ngx_http_civchat_widget_s  ngx_http_civchat_widget_t;
typedef struct ngx_http_civchat_cluster_s  ngx_http_civchat_cluster_t;
typedef struct ngx_http_civchat_sync_s   ngx_http_civchat_sync_t;
typedef struct ngx_http_civchat_state_save_s
    ngx_http_civchat_state_save_t;


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


#define NGX_HTTP_CIVCHAT_STATUSES      16
#define NGX_HTTP_CIVCHAT_MAX_STORES    32


typedef struct {
    ngx_atomic_t                  requests[NGX_HTTP_CIVCHAT_ENDPOINTS]
                                          [NGX_HTTP_CIVCHAT_STATUSES];
    ngx_atomic_t                  events[NGX_HTTP_CIVCHAT_EVENT_TYPES];
    ngx_atomic_t                  bots;
    ngx_atomic_t                  anonymous;
    ngx_atomic_t                  unverified; /* claims refused or weak */
    ngx_atomic_t                  streams_refused;
    ngx_atomic_t                  live_dropped; /* messages over a limit */
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


/* SHA-256 and HMAC-SHA256 (hmac.c) */
typedef struct {
    uint32_t                      state[8];
    uint64_t                      bytes;
    u_char                        block[64];
} ngx_http_civchat_sha256_t;


typedef struct {
    ngx_http_civchat_sha256_t     inner;     /* after the key ^ ipad block */
    ngx_http_civchat_sha256_t     outer;     /* after the key ^ opad block */
} ngx_http_civchat_hmac_t;


/* index kinds: every index entry is one rbtree node in the zone */
#define NGX_HTTP_CIVCHAT_BY_KEY          'k'    /* keys: sessions, retired */
#define NGX_HTTP_CIVCHAT_BY_USER_ID      'u'
#define NGX_HTTP_CIVCHAT_BY_EMAIL        'e'

/* what an index entry is (its flags) */
#define NGX_HTTP_CIVCHAT_KEY_RETIRED     0x01   /* never resolves again */
#define NGX_HTTP_CIVCHAT_KEY_UNPROVED    0x02   /* a session got unproved */
#define NGX_HTTP_CIVCHAT_ID_VERIFIED     0x04   /* proved or the API's */


/*
 * A profile is two allocations: this fixed part (with its three index
 * entries built in, so it never moves) and a blob holding its own key,
 * user_id, email and attributes, reallocated when one of them changes.
 * Its other keys (the sessions of other browsers, and retired keys kept
 * so that nobody adopts them again) are index entries of their own.
 */

typedef struct {
    ngx_rbtree_node_t             node;      /* key: hash of kind+data */
    u_char                       *data;
    u_char                        kind;
    u_char                        len;       /* 0: not set */
    u_char                        alias;     /* in an alias_t */
    u_char                        flags;     /* NGX_HTTP_CIVCHAT_KEY_* ... */
    u_char                        streams;   /* open on this key, all workers */
    uint16_t                      retired;   /* when, in minutes, mod 2^16 */
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
    ngx_http_civchat_index_t      key;       /* its own key: the events' */
    ngx_http_civchat_index_t      user_id;
    ngx_http_civchat_index_t      email;
    u_char                       *blob;      /* key user_id email attrs */
    uint32_t                      attrs_len; /* JSON object text */
    uint32_t                      first_seen;
    uint32_t                      last_seen;
    uint32_t                      page_views;
    uint32_t                      sessions;
    uint32_t                      user_agent; /* ua_t, from the pool */
    uint32_t                      cache;     /* on Redis: its cached_t */

    /*
     * what a visit that changes nothing needs without reading the
     * attributes: the automatic values last stored (a hash, 0: not
     * known) and where the name's JSON string is in the attributes
     */
    uint32_t                      auto_sig;
    uint16_t                      name_pos;  /* 0: none */
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


/* the live channel: what is said to a visitor (zone.c keeps it) */
#define NGX_HTTP_CIVCHAT_LIVE_MESSAGE    1
#define NGX_HTTP_CIVCHAT_LIVE_PAYLOAD    2
#define NGX_HTTP_CIVCHAT_LIVE_PROFILE    3


/* one message, in its profile's queue and in its class's queue */
typedef struct {
    ngx_queue_t                   in_key;
    ngx_queue_t                   in_class;
    uint64_t                      seq;
    void                         *owner;     /* its live_key_t */
    uint32_t                      time;
    uint32_t                      len;
    u_char                        type;
    u_char                        sent;      /* a stream has read it */
    u_char                        data[1];   /* one line of JSON */
} ngx_http_civchat_live_msg_t;


/* what the trees of live.c hold begins with this: a node and a name */
typedef struct {
    ngx_rbtree_node_t             node;      /* key: crc32 of the name */
    u_char                        len;
    u_char                        data[1];
} ngx_http_civchat_live_name_t;


/* the messages of one profile, by the profile's own key */
typedef struct {
    ngx_rbtree_node_t             node;
    u_char                        len;
    u_char                        key[NGX_HTTP_CIVCHAT_KEY_MAX];
    uint16_t                      count[2];  /* messages, profile changes */
    ngx_queue_t                   messages;  /* live_msg_t, oldest first */
} ngx_http_civchat_live_key_t;


/* which key had news: a worker's hint of where to look */
typedef struct {
    uint64_t                      seq;
    u_char                        len;
    u_char                        key[NGX_HTTP_CIVCHAT_KEY_MAX];
} ngx_http_civchat_live_hint_t;


/* open streams of one client address, in all workers */
typedef struct {
    ngx_rbtree_node_t             node;
    u_char                        len;
    u_char                        addr[NGX_SOCKADDR_STRLEN];
    uint16_t                      streams;
} ngx_http_civchat_live_addr_t;


/* a message copied out of the zone, to be sent after the unlock */
typedef struct {
    uint64_t                      seq;
    ngx_uint_t                    type;
    ngx_str_t                     data;
} ngx_http_civchat_live_copy_t;


typedef struct {
    ngx_rbtree_t                  keys;      /* live_key_t */
    ngx_rbtree_node_t             keys_sentinel;
    ngx_rbtree_t                  addrs;     /* live_addr_t */
    ngx_rbtree_node_t             addrs_sentinel;
    ngx_queue_t                   classes[2]; /* messages, profile changes */
    ngx_uint_t                    total;     /* messages kept */
    ngx_http_civchat_live_hint_t *hints;     /* a ring of live_size */
    uint64_t                      seq;       /* the last published */
    ngx_atomic_t                  streams;   /* open, in all workers */
    ngx_atomic_t                  dropped;   /* dropped before any stream
                                                read it */
} ngx_http_civchat_live_sh_t;


/*
 * Where csv.c's scanner is in a record (ngx_http_civchat_csv_end), from
 * one window of an import to the next; 0 at the start of a record.
 */

#define NGX_HTTP_CIVCHAT_CSV_FIELD       0      /* at a field's start */
#define NGX_HTTP_CIVCHAT_CSV_TEXT        1      /* in a field, not quoted */
#define NGX_HTTP_CIVCHAT_CSV_QUOTED      2      /* in quotes */
#define NGX_HTTP_CIVCHAT_CSV_QUOTE       3      /* a quote in quotes */
#define NGX_HTTP_CIVCHAT_CSV_LINE        0x10   /* the quotes hold a line
                                                   break */


/* what the status page shows of a zone (zone.c); the last, on Redis */
#define NGX_HTTP_CIVCHAT_ZONE_COUNTS     11
#define NGX_HTTP_CIVCHAT_ZONE_LOCAL      5


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
    ngx_uint_t                    live_size; /* civchat_zone live= */
    ngx_http_civchat_live_sh_t   *live;      /* made with the first stream */
    void                         *cluster;   /* on Redis: cluster_sh_t */
} ngx_http_civchat_shctx_t;


struct ngx_http_civchat_zone_s {
    ngx_str_t                     name;
    ngx_shm_zone_t               *shm_zone;
    ngx_http_civchat_shctx_t     *sh;
    ngx_slab_pool_t              *shpool;
    ngx_str_t                     state;     /* state file, or empty */
    ngx_msec_t                    state_interval;
    ngx_event_t                   save_event;
    ngx_http_civchat_state_save_t *save;    /* per process: under way */
    ngx_log_t                    *log;
    ngx_uint_t                    live_size; /* civchat_zone live= */
    ngx_http_civchat_cluster_t   *cluster;   /* redis=: its profiles */

    /* per worker: the live streams it holds */
    ngx_rbtree_t                  streams;
    ngx_rbtree_node_t             streams_sentinel;
    ngx_uint_t                    nstreams;
    ngx_event_t                   live_ev;
    uint64_t                      live_read;
    ngx_msec_t                    live_pinged;
    ngx_msec_t                    live_checked;
    ngx_uint_t                    live_heard; /* on Redis: subscribed */

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
    ngx_uint_t                    unverified_locations;

    /* civchat, civchat_api and civchat_status locations (status.c) */
    ngx_uint_t                    locations;

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

    /* civchat_identity_secret: the HMAC key, precomputed, or NULL */
    ngx_http_civchat_hmac_t      *identity;
    ngx_uint_t                    identity_set;

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
    ngx_http_civchat_widget_t    *widget;         /* widget.js, made once */
    time_t                        session_timeout;

    ngx_uint_t                    stream_per_key;
    ngx_uint_t                    stream_per_address;
    ngx_msec_t                    stream_idle;

    ngx_str_t                     location;       /* clcf->name */
} ngx_http_civchat_loc_conf_t;


/* one skipped field of a request: {"name", "reason"} in the answer */
typedef struct {
    ngx_str_t                     name;
    const char                   *reason;
} ngx_http_civchat_ignored_t;


/* one event, written as a line once the zone is unlocked */
typedef struct {
    ngx_uint_t                    type;           /* EV_* */
    ngx_str_t                     name;
    ngx_str_t                     attrs;          /* JSON text */
    ngx_str_t                     user_key;       /* empty: the request's */
    ngx_str_t                     user_id;
    ngx_str_t                     email;
    unsigned                      other:1;        /* of another profile */
} ngx_http_civchat_event_t;


/* the profile a request resolved, copied out of the zone */
typedef struct {
    ngx_str_t                     key;            /* the browser's own key */
    ngx_str_t                     profile;        /* the profile's key */
    ngx_str_t                     user_id;
    ngx_str_t                     email;
    ngx_str_t                     name;           /* as JSON text */
    ngx_str_t                     sent_user_id;   /* what the request sent */
    ngx_str_t                     sent_email;
    time_t                        first_seen;
    time_t                        last_seen;
    ngx_uint_t                    page_views;
    ngx_uint_t                    sessions;
    unsigned                      proved:1;       /* the browser showed it
                                                     may read the profile */
    unsigned                      user_id_verified:1;
    unsigned                      email_verified:1;
    unsigned                      created:1;
    unsigned                      new_key:1;      /* set the cookie */
    unsigned                      found:1;
} ngx_http_civchat_user_t;


/* what the server API shows of a profile, copied out of the zone */
typedef struct {
    ngx_str_t                     attrs;          /* JSON object text */
    ngx_str_t                     user_agent;
    ngx_array_t                   keys;           /* ngx_str_t: sessions */
} ngx_http_civchat_record_t;


/* one attribute change of a plan */
typedef struct {
    ngx_str_t                     name;           /* normalised */
    ngx_str_t                     quoted;         /* the name as JSON */
    ngx_str_t                     value;          /* JSON; empty: remove */
} ngx_http_civchat_change_t;


/* what a plan asks for */
#define NGX_HTTP_CIVCHAT_OP_VISIT        1      /* init, page_hit, p.gif */
#define NGX_HTTP_CIVCHAT_OP_RESET        2
#define NGX_HTTP_CIVCHAT_OP_UPDATE       3
#define NGX_HTTP_CIVCHAT_OP_TOUCH        4      /* events: resolve only */
#define NGX_HTTP_CIVCHAT_OP_READ         5      /* the server API */
#define NGX_HTTP_CIVCHAT_OP_UPSERT       6
#define NGX_HTTP_CIVCHAT_OP_MODIFY       7
#define NGX_HTTP_CIVCHAT_OP_DELETE       8

/* what a user_hash proves */
#define NGX_HTTP_CIVCHAT_PROOF_NONE      0      /* no user_hash, or no secret */
#define NGX_HTTP_CIVCHAT_PROOF_UNCHECKED 1      /* checked when needed */
#define NGX_HTTP_CIVCHAT_PROOF_VALID     2
#define NGX_HTTP_CIVCHAT_PROOF_INVALID   3


/*
 * A plan: everything a request would change in its profile, checked
 * and written as text before the zone is locked (plan.c).  Applying it
 * (zone.c) is the only work done under the lock.
 */

typedef struct {
    ngx_uint_t                    op;
    ngx_str_t                     key;            /* the browser's key */
    ngx_str_t                     link_key;       /* ?__ca__chat=: noted */
    u_char                        fresh[NGX_HTTP_CIVCHAT_KEY_LEN];

    ngx_str_t                     user_id;        /* U */
    ngx_str_t                     email;          /* E */
    ngx_str_t                     user_hash;
    ngx_uint_t                    proof;          /* of U, else of E */

    u_char                        by_kind;        /* the API names it */
    ngx_str_t                     by_id;

    ngx_array_t                   changes;        /* change_t */
    ngx_str_t                     name;           /* "name" sent, as JSON */

    ngx_str_t                     ip;             /* the automatic values */
    ngx_str_t                     language;
    ngx_http_civchat_geo_t        geo;
    ngx_str_t                     user_agent;
    uint32_t                      auto_sig;

    time_t                        now;
    time_t                        session_timeout;

    unsigned                      fresh_set:1;    /* fresh is minted */
    unsigned                      verify:1;       /* a secret is set */
    unsigned                      unified:1;
    unsigned                      authorize:1;
    unsigned                      trusted:1;      /* the server API */
    unsigned                      visit:1;        /* a page view */
    unsigned                      live:1;         /* tell open streams */
} ngx_http_civchat_plan_t;


/* what applying a plan gave */
typedef struct {
    ngx_http_civchat_user_t       user;
    ngx_array_t                  *ignored;        /* ignored_t */
    ngx_array_t                  *events;         /* event_t */
    ngx_http_civchat_record_t    *record;         /* the API's, or NULL */
    ngx_pool_t                   *pool;
    ngx_uint_t                    unverified;     /* claims refused */
    ngx_uint_t                    needs;          /* NGX_AGAIN: see below */
    ngx_http_civchat_profile_t   *profile;        /* under the lock only */
    ngx_http_civchat_index_t     *session;        /* the browser's key */
    ngx_http_civchat_sync_t      *sync;           /* on Redis, or NULL */
} ngx_http_civchat_result_t;


/* what a plan must bring before it can be applied (NGX_AGAIN) */
#define NGX_HTTP_CIVCHAT_NEEDS_KEY       0x01   /* a fresh key */
#define NGX_HTTP_CIVCHAT_NEEDS_PROOF     0x02   /* the user_hash checked */
#define NGX_HTTP_CIVCHAT_NEEDS_REDIS     0x04   /* profiles read from Redis */
#define NGX_HTTP_CIVCHAT_NEEDS_WRITE     0x08   /* NGX_OK, once written */


typedef struct {
    ngx_uint_t                    endpoint;
    ngx_http_civchat_loc_conf_t  *lcf;
    json_t                       *body;           /* request object */

    ngx_str_t                     site;           /* apiKey */
    ngx_str_t                     url;
    ngx_str_t                     referrer;
    ngx_str_t                     title;
    ngx_str_t                     ip;
    ngx_str_t                     user_agent;
    ngx_str_t                     language;

    ngx_http_civchat_geo_t        geo;

    ngx_array_t                   ignored;        /* ignored_t */
    ngx_array_t                   events;         /* event_t */

    ngx_http_civchat_user_t       user;
    ngx_str_t                     state;          /* widget look asked for */
    void                         *import;         /* import.c's, running */
    ngx_int_t                     answer_rc;      /* of an error answer */
    unsigned                      answered:1;
    unsigned                      api:1;          /* the server API */
    unsigned                      resolved:1;     /* user is filled */
    unsigned                      geo_done:1;
    unsigned                      anonymous:1;    /* Sec-GPC or DNT */
    unsigned                      bot:1;
    unsigned                      waiting:1;      /* for Redis */

    ngx_str_t                     custom_name;    /* custom.c's, kept */
    json_t                       *custom_attrs;   /* across the wait */
} ngx_http_civchat_ctx_t;


extern ngx_module_t  ngx_http_civchat_module;


/* directive.c: the directives that take more than a stock slot */
char *ngx_http_civchat_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_civchat_attribute(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_civchat_allow_origin(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_civchat_cookie_domain(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_civchat_identity_secret(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_civchat_stream_limit(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);

/* endpoint.c */
const ngx_http_civchat_endpoint_t *ngx_http_civchat_endpoint_info(
    ngx_uint_t endpoint);
ngx_uint_t ngx_http_civchat_endpoint(ngx_http_request_t *r,
    ngx_str_t *location);
const char *ngx_http_civchat_event_name(ngx_uint_t type);

/* handler.c */
ngx_int_t ngx_http_civchat_handler(ngx_http_request_t *r);

/* request.c */
ngx_http_civchat_ctx_t *ngx_http_civchat_new_ctx(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_uint_t endpoint, size_t extra);
off_t ngx_http_civchat_body_size(ngx_http_request_t *r);
ngx_int_t ngx_http_civchat_read_body(ngx_http_request_t *r, ngx_str_t *body);
ngx_int_t ngx_http_civchat_parse_body(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *body);
void ngx_http_civchat_json_cleanup(void *data);
void ngx_http_civchat_context(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
void ngx_http_civchat_clean_text(ngx_http_request_t *r, ngx_str_t *in,
    size_t max, ngx_str_t *out);
ngx_int_t ngx_http_civchat_check_origin(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_int_t *answer);
ngx_int_t ngx_http_civchat_origin(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *origin);

/* reply.c */
ngx_int_t ngx_http_civchat_send_json(ngx_http_request_t *r,
    ngx_uint_t status, u_char *data, size_t len);
ngx_int_t ngx_http_civchat_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *fmt, ...);
ngx_int_t ngx_http_civchat_reject(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *detail);
ngx_int_t ngx_http_civchat_not_allowed(ngx_http_request_t *r,
    ngx_uint_t endpoint);
ngx_int_t ngx_http_civchat_add_header(ngx_http_request_t *r,
    const char *key, ngx_str_t *value);
ngx_table_elt_t *ngx_http_civchat_find_header(ngx_http_request_t *r,
    const char *name);
ngx_int_t ngx_http_civchat_answer(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
ngx_int_t ngx_http_civchat_answer_unprofiled(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
ngx_int_t ngx_http_civchat_send_gif(ngx_http_request_t *r);
ngx_int_t ngx_http_civchat_unavailable(ngx_http_request_t *r,
    const char *retry, const char *detail);
ngx_int_t ngx_http_civchat_stream_refuse(ngx_http_request_t *r,
    ngx_int_t rc);
ngx_int_t ngx_http_civchat_stream_headers(ngx_http_request_t *r);

/* custom.c */
ngx_int_t ngx_http_civchat_custom_check(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *name, json_t **attrs);
ngx_int_t ngx_http_civchat_custom_piggyback(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);

/* key.c */
ngx_int_t ngx_http_civchat_random(ngx_http_request_t *r, u_char *buf,
    size_t len);
ngx_int_t ngx_http_civchat_mint_key(ngx_http_request_t *r, u_char *key);
ngx_int_t ngx_http_civchat_valid_key(u_char *p, size_t len);
void ngx_http_civchat_cookie_key(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *key);
void ngx_http_civchat_read_key(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_str_t *key, ngx_str_t *link_key);
ngx_int_t ngx_http_civchat_set_cookie(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx);
ngx_int_t ngx_http_civchat_stream_key(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf, ngx_str_t *key);

/* hmac.c */
void ngx_http_civchat_sha256_init(ngx_http_civchat_sha256_t *ctx);
void ngx_http_civchat_sha256_update(ngx_http_civchat_sha256_t *ctx,
    const u_char *data, size_t len);
void ngx_http_civchat_sha256_final(ngx_http_civchat_sha256_t *ctx,
    u_char *digest);
void ngx_http_civchat_hmac_key(ngx_http_civchat_hmac_t *hk,
    const u_char *key, size_t len);
void ngx_http_civchat_hmac(ngx_http_civchat_hmac_t *hk, const u_char *msg,
    size_t len, u_char *mac);
ngx_int_t ngx_http_civchat_hmac_verify(ngx_http_civchat_hmac_t *hk,
    ngx_str_t *msg, ngx_str_t *hex);

/* plan.c */
ngx_int_t ngx_http_civchat_plan(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan);
ngx_int_t ngx_http_civchat_plan_api(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan,
    ngx_uint_t op, u_char kind, ngx_str_t *id);
ngx_int_t ngx_http_civchat_plan_by_body(ngx_pool_t *pool, json_t *body,
    u_char *kind, ngx_str_t *id);
void ngx_http_civchat_plan_prove(ngx_http_civchat_plan_t *plan,
    ngx_http_civchat_loc_conf_t *lcf);
typedef void (*ngx_http_civchat_resolved_pt)(ngx_http_request_t *r,
    ngx_int_t rc);

ngx_int_t ngx_http_civchat_resolve(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_http_civchat_plan_t *plan,
    ngx_http_civchat_record_t *record, ngx_http_civchat_resolved_pt handler);

/* zone.c: the only file that takes the zone's lock */
char *ngx_http_civchat_zone_add(ngx_conf_t *cf,
    ngx_http_civchat_zone_t *zone, size_t size);
ngx_int_t ngx_http_civchat_zone_apply(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res);
ngx_int_t ngx_http_civchat_zone_lookup(ngx_http_civchat_zone_t *zone,
    ngx_str_t *key, ngx_pool_t *pool, ngx_http_civchat_user_t *user);
ngx_int_t ngx_http_civchat_zone_publish(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_uint_t type, u_char *data, size_t len);
ngx_int_t ngx_http_civchat_zone_stream_open(ngx_http_civchat_zone_t *zone,
    ngx_str_t *key, ngx_str_t *addr, ngx_uint_t per_key,
    ngx_uint_t per_address, ngx_http_civchat_user_t *user, ngx_pool_t *pool);
void ngx_http_civchat_zone_stream_close(ngx_http_civchat_zone_t *zone,
    ngx_str_t *key, ngx_str_t *addr);
ngx_int_t ngx_http_civchat_zone_live_read(ngx_http_civchat_zone_t *zone,
    uint64_t from, ngx_str_t *profile, ngx_pool_t *pool, ngx_array_t *out,
    uint64_t *upto);
ngx_int_t ngx_http_civchat_zone_live_news(ngx_http_civchat_zone_t *zone,
    uint64_t from, ngx_pool_t *pool, ngx_array_t *out, uint64_t *upto);
uint64_t ngx_http_civchat_zone_live_seq(ngx_http_civchat_zone_t *zone);
ngx_int_t ngx_http_civchat_zone_save(ngx_http_civchat_zone_t *zone,
    ngx_log_t *log);
void ngx_http_civchat_zone_save_exit(ngx_http_civchat_zone_t *zone,
    ngx_log_t *log);
void ngx_http_civchat_zone_timer(ngx_http_civchat_zone_t *zone,
    ngx_cycle_t *cycle);
void ngx_http_civchat_zone_counts(ngx_http_civchat_zone_t *zone,
    ngx_uint_t *counts);

/* rules.c: the identity rules, under the lock (zone.c calls them) */
ngx_int_t ngx_http_civchat_rules_apply(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res);

/* text.c: the stored attributes as JSON text */
ngx_int_t ngx_http_civchat_text_merge(ngx_str_t *old,
    ngx_http_civchat_plan_t *plan, ngx_str_t *out, ngx_pool_t *pool,
    ngx_http_civchat_result_t *res, ngx_uint_t *changed);
ngx_int_t ngx_http_civchat_text_missing(ngx_str_t *into, ngx_str_t *from,
    ngx_str_t *out, ngx_pool_t *pool);
void ngx_http_civchat_text_find(ngx_str_t *text, const char *quoted,
    size_t len, ngx_str_t *value);
ngx_int_t ngx_http_civchat_text_next(u_char **pos, u_char *last,
    ngx_str_t *name, ngx_str_t *value);
ngx_int_t ngx_http_civchat_ignore(ngx_pool_t *pool, ngx_array_t *ignored,
    const char *name, size_t len, const char *reason);
ngx_int_t ngx_http_civchat_add_event(ngx_pool_t *pool, ngx_array_t *events,
    ngx_uint_t type, ngx_str_t *name, ngx_str_t *attrs);
ngx_int_t ngx_http_civchat_add_event_json(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_uint_t type, ngx_str_t *name,
    json_t *attrs);

/* store.c: the zone's data, under the lock */
ngx_int_t ngx_http_civchat_store_init(ngx_http_civchat_zone_t *zone);
ngx_http_civchat_index_t *ngx_http_civchat_store_index(
    ngx_http_civchat_zone_t *zone, u_char kind, ngx_str_t *value);
ngx_http_civchat_profile_t *ngx_http_civchat_store_owner(
    ngx_http_civchat_zone_t *zone, ngx_http_civchat_index_t *ix);
ngx_http_civchat_profile_t *ngx_http_civchat_store_find(
    ngx_http_civchat_zone_t *zone, u_char kind, ngx_str_t *value);
ngx_http_civchat_profile_t *ngx_http_civchat_store_next(
    ngx_http_civchat_zone_t *zone, ngx_http_civchat_index_t *after,
    ngx_http_civchat_profile_t *prev);
ngx_http_civchat_profile_t *ngx_http_civchat_store_create(
    ngx_http_civchat_zone_t *zone, ngx_str_t *key, time_t now);
ngx_int_t ngx_http_civchat_store_set_index(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, u_char kind, ngx_str_t *value);
ngx_int_t ngx_http_civchat_store_add_key(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *key, u_char flags);
void ngx_http_civchat_store_retire(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_index_t *ix);
void ngx_http_civchat_store_revoke(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_index_t *keep);
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
void ngx_http_civchat_store_unpin(ngx_http_civchat_zone_t *zone);
void *ngx_http_civchat_store_alloc(ngx_http_civchat_zone_t *zone,
    size_t size);
void ngx_http_civchat_store_free(ngx_http_civchat_zone_t *zone, void *p);
ngx_int_t ngx_http_civchat_store_set_ua(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *ua);
void ngx_http_civchat_store_ua(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_str_t *ua);

/* live.c: the zone's queues of what is said to visitors, under the lock */
ngx_int_t ngx_http_civchat_live_init(ngx_http_civchat_zone_t *zone);
ngx_int_t ngx_http_civchat_live_add(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_uint_t type, u_char *data, size_t len);
ngx_int_t ngx_http_civchat_live_drop_oldest(ngx_http_civchat_zone_t *zone);
ngx_int_t ngx_http_civchat_live_copy(ngx_http_civchat_zone_t *zone,
    uint64_t from, ngx_str_t *profile, ngx_pool_t *pool, ngx_array_t *out,
    uint64_t *upto);
ngx_int_t ngx_http_civchat_live_news(ngx_http_civchat_zone_t *zone,
    uint64_t from, ngx_pool_t *pool, ngx_array_t *out, uint64_t *upto);
void ngx_http_civchat_live_forget(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile);
ngx_int_t ngx_http_civchat_live_note(ngx_pool_t *pool,
    ngx_http_civchat_event_t *ev, ngx_str_t *note);
ngx_int_t ngx_http_civchat_live_addr(ngx_http_civchat_zone_t *zone,
    ngx_str_t *addr, ngx_int_t delta, ngx_uint_t limit);

/* stream.c: the visitors' server-sent event streams, per worker */
ngx_int_t ngx_http_civchat_stream_handler(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);
void ngx_http_civchat_stream_init_process(ngx_http_civchat_zone_t *zone,
    ngx_cycle_t *cycle);
void ngx_http_civchat_stream_exit_process(ngx_http_civchat_zone_t *zone);

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

/* http_conf.c, http.c: the HTTP store (ngx_http_civchat_http.h) */
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

/* state.c: the state file (zone.c calls it, holding the lock for a piece) */
#define NGX_HTTP_CIVCHAT_STATE_PIECE     (64 * 1024)  /* bytes of text */

ngx_int_t ngx_http_civchat_state_load(ngx_http_civchat_zone_t *zone);
ngx_http_civchat_state_save_t *ngx_http_civchat_state_begin(
    ngx_http_civchat_zone_t *zone, size_t size, ngx_log_t *log);
ngx_int_t ngx_http_civchat_state_piece(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s);
ngx_int_t ngx_http_civchat_state_write(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_state_save_t *s, ngx_int_t rc);
ngx_uint_t ngx_http_civchat_state_changes(ngx_http_civchat_state_save_t *s);
void ngx_http_civchat_state_end(ngx_http_civchat_state_save_t *s);
size_t ngx_http_civchat_state_identity_size(ngx_http_civchat_profile_t *pr);
u_char *ngx_http_civchat_state_identity(u_char *p,
    ngx_http_civchat_profile_t *pr);
ngx_http_civchat_profile_t *ngx_http_civchat_state_install(
    ngx_http_civchat_zone_t *zone, json_t *j);

/* attrs.c, name.c: attributes (ngx_http_civchat_attrs.h) */
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

/* json_integer.c */
ngx_int_t ngx_http_civchat_json_note(ngx_pool_t *pool, json_t *v,
    u_char *text, size_t len);
ngx_int_t ngx_http_civchat_json_integer(ngx_pool_t *pool, json_t *v,
    json_int_t *n);

/* mem.c */
ngx_int_t ngx_http_civchat_mem_init(ngx_slab_pool_t *shpool,
    ngx_http_civchat_mem_t *mem);
void *ngx_http_civchat_mem_alloc(ngx_slab_pool_t *shpool,
    ngx_http_civchat_mem_t *mem, size_t size);
void ngx_http_civchat_mem_free(ngx_slab_pool_t *shpool,
    ngx_http_civchat_mem_t *mem, void *chunk);

/* event.c */
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

/* variables.c */
ngx_int_t ngx_http_civchat_add_variables(ngx_conf_t *cf);

/* status.c */
void ngx_http_civchat_stats_location(ngx_conf_t *cf);
ngx_int_t ngx_http_civchat_stats_add(ngx_conf_t *cf,
    ngx_http_civchat_main_conf_t *mcf);
void ngx_http_civchat_count_event(ngx_http_request_t *r, ngx_uint_t type);
void ngx_http_civchat_count(ngx_http_request_t *r, ngx_atomic_t *counter,
    ngx_uint_t n);
ngx_http_civchat_stats_t *ngx_http_civchat_stats(ngx_http_request_t *r);
ngx_http_civchat_counters_t *ngx_http_civchat_store_counters(
    ngx_cycle_t *cycle, ngx_uint_t index);
char *ngx_http_civchat_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* api.c */
ngx_int_t ngx_http_civchat_api_handler(ngx_http_request_t *r);

/* import.c */
ngx_int_t ngx_http_civchat_import(ngx_http_request_t *r,
    ngx_http_civchat_ctx_t *ctx, ngx_uint_t csv);

/* csv.c */
json_t *ngx_http_civchat_csv_header(u_char **pos, u_char *last,
    const char **err);
json_t *ngx_http_civchat_csv_record(u_char **pos, u_char *last,
    json_t *header, const char **err);
u_char *ngx_http_civchat_csv_end(u_char *p, u_char *last, ngx_uint_t *state,
    u_char **eol);

/* widget.c */
ngx_int_t ngx_http_civchat_widget_init(ngx_conf_t *cf,
    ngx_http_civchat_loc_conf_t *lcf);
ngx_int_t ngx_http_civchat_widget_handler(ngx_http_request_t *r,
    ngx_http_civchat_loc_conf_t *lcf);


/* redis_*.c, resp.c: the Redis Cluster client */
#include "ngx_http_civchat_redis.h"


/* cluster.c, behind.c: a zone's profiles on Redis (cluster.h) */
#define NGX_HTTP_CIVCHAT_DOWN_CACHE      0      /* redis_down=cache */
#define NGX_HTTP_CIVCHAT_DOWN_REFUSE     1      /* redis_down=refuse */

char *ngx_http_civchat_cluster_conf(ngx_conf_t *cf,
    ngx_http_civchat_zone_t *zone, ngx_str_t *name, ngx_uint_t down,
    ngx_msec_t flush);
ngx_int_t ngx_http_civchat_cluster_resolve(ngx_conf_t *cf,
    ngx_http_civchat_zone_t *zone, ngx_array_t *clusters);
ngx_http_civchat_sync_t *ngx_http_civchat_cluster_sync(
    ngx_http_civchat_zone_t *zone, ngx_pool_t *pool, ngx_log_t *log);
ngx_int_t ngx_http_civchat_cluster_run(ngx_http_civchat_sync_t *sync,
    ngx_uint_t needs, void (*done)(void *data, ngx_int_t rc), void *data);
ngx_uint_t ngx_http_civchat_cluster_down(ngx_http_civchat_sync_t *sync);
void ngx_http_civchat_behind_init_process(ngx_http_civchat_zone_t *zone,
    ngx_cycle_t *cycle);
void ngx_http_civchat_behind_exit_process(ngx_http_civchat_zone_t *zone);

/* live_redis.c: the live channel of a zone on Redis */
typedef struct ngx_http_civchat_live_read_s  ngx_http_civchat_live_read_t;

/*
 * A read of a profile's stream: NGX_OK with the id of its last entry (0:
 * none) and the entries asked for (more: there may be more after them),
 * which live until the handler returns; or NGX_ERROR.
 */
typedef void (*ngx_http_civchat_live_read_pt)(void *data, ngx_int_t rc,
    uint64_t last, ngx_http_civchat_live_copy_t *entries, ngx_uint_t n,
    ngx_uint_t more);
/* news of a profile; without one, the subscription was made (1) or lost */
typedef void (*ngx_http_civchat_live_heard_pt)(void *data,
    ngx_str_t *profile, uint64_t id);

ngx_int_t ngx_http_civchat_live_redis_publish(ngx_http_request_t *r,
    ngx_http_civchat_zone_t *zone, ngx_str_t *profile, ngx_uint_t type,
    u_char *data, size_t len, ngx_http_civchat_resolved_pt handler);
void ngx_http_civchat_live_redis_tell(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_array_t *events, ngx_uint_t from,
    ngx_pool_t *pool);
void ngx_http_civchat_live_redis_forget(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_pool_t *pool);
ngx_http_civchat_live_read_t *ngx_http_civchat_live_redis_read(
    ngx_http_civchat_zone_t *zone, ngx_str_t *profile, uint64_t from,
    ngx_uint_t given, ngx_http_civchat_live_read_pt handler, void *data);
void ngx_http_civchat_live_redis_cancel(ngx_http_civchat_live_read_t *rd);
ngx_int_t ngx_http_civchat_live_redis_listen(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_live_heard_pt handler, void *data, ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_CIVCHAT_H_INCLUDED_ */
