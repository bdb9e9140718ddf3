
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <ngx_sha1.h>

#include "ngx_http_civchat.h"


/*
 * The Redis Cluster client (see ngx_http_civchat_redis.h for what it
 * does): connections made with ngx_event_connect_peer(), timers and
 * backoff as in the HTTP store (http.c, after nginx's OCSP client).
 *
 * Each node has a command connection and, when channels are subscribed
 * there, a subscriber connection.  A connection has an output buffer
 * (commands are copied into it as they are queued, and written when the
 * event loop gets to the posted write event, so the commands of many
 * requests go out in one write) and an input buffer read into until it
 * holds whole replies.  The commands waiting for their replies are a
 * queue in the order they were written.  Offsets into the output are
 * counted from the connection's start, so a command knows whether any
 * of it was sent when the connection is lost.
 *
 * The shared memory zone of a cluster holds its counters (summed by all
 * workers) and, per worker, what the worker sees (nodes, slots, the
 * last round trip, the canary), for civchat_status.
 */


#define NGX_HTTP_CIVCHAT_REDIS_SLOTS     16384
#define NGX_HTTP_CIVCHAT_REDIS_NODES     1024
#define NGX_HTTP_CIVCHAT_REDIS_WORKERS   32
#define NGX_HTTP_CIVCHAT_REDIS_REDIRECTS 5
#define NGX_HTTP_CIVCHAT_REDIS_RETRY     100     /* ms between retries */
#define NGX_HTTP_CIVCHAT_REDIS_REFRESH   100     /* ms between slot maps */
#define NGX_HTTP_CIVCHAT_REDIS_REMAP     10000   /* ms: the map anyway */
#define NGX_HTTP_CIVCHAT_REDIS_IN        16384   /* first input buffer */
#define NGX_HTTP_CIVCHAT_REDIS_IN_MAX    (NGX_HTTP_CIVCHAT_REDIS_BULK + 65536)
#define NGX_HTTP_CIVCHAT_REDIS_OUT_MAX   (256 << 20)
#define NGX_HTTP_CIVCHAT_REDIS_KEEP      (1 << 20)  /* buffers kept idle */
#define NGX_HTTP_CIVCHAT_REDIS_KEY_MAX   128

#define NGX_HTTP_CIVCHAT_REDIS_MASTER    1
#define NGX_HTTP_CIVCHAT_REDIS_REPLICA   2

/* what a command is, for the client */
#define NGX_HTTP_CIVCHAT_REDIS_USER      0
#define NGX_HTTP_CIVCHAT_REDIS_INTERNAL  1    /* AUTH, ASKING, PING, ... */
#define NGX_HTTP_CIVCHAT_REDIS_SUB       2    /* on a subscriber conn */
#define NGX_HTTP_CIVCHAT_REDIS_UNSUB     3
#define NGX_HTTP_CIVCHAT_REDIS_SUBPING   4

/* a channel's state */
#define NGX_HTTP_CIVCHAT_REDIS_NONE      0
#define NGX_HTTP_CIVCHAT_REDIS_PENDING   1
#define NGX_HTTP_CIVCHAT_REDIS_ACTIVE    2


typedef struct ngx_http_civchat_redis_node_s  ngx_http_civchat_redis_node_t;
typedef struct ngx_http_civchat_redis_conn_s  ngx_http_civchat_redis_conn_t;


/* a whole reply read on a connection: to the command or pub/sub code */
typedef void (*ngx_http_civchat_redis_input_pt)(
    ngx_http_civchat_redis_conn_t *conn, u_char *start, size_t len);

/* a node's subscriber connection was lost: to the pub/sub code */
typedef void (*ngx_http_civchat_redis_lost_pt)(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node);

/* the slot map is to be asked for again */
typedef void (*ngx_http_civchat_redis_remap_pt)(ngx_http_civchat_redis_t *rd);


/* what one worker sees, for the status page */
typedef struct {
    ngx_atomic_t                      pid;       /* 0: no worker */
    ngx_atomic_t                      masters;
    ngx_atomic_t                      replicas;
    ngx_atomic_t                      masters_up;
    ngx_atomic_t                      replicas_up;
    ngx_atomic_t                      slots;
    ngx_atomic_t                      rtt_us;
    ngx_atomic_t                      canary_ok;
    ngx_atomic_t                      canary_slot;
    ngx_atomic_t                      canary_len;
    u_char                            canary[NGX_HTTP_CIVCHAT_REDIS_KEY_MAX];
} ngx_http_civchat_redis_worker_t;


typedef struct {
    ngx_atomic_t                      commands;
    ngx_atomic_t                      errors;
    ngx_atomic_t                      failed;
    ngx_atomic_t                      moved;
    ngx_atomic_t                      ask;
    ngx_atomic_t                      retries;
    ngx_atomic_t                      reconnects;
    ngx_atomic_t                      refreshes;
    ngx_atomic_t                      script_loads;
    ngx_atomic_t                      messages;
    ngx_atomic_t                      canary_ok;
    ngx_atomic_t                      canary_failed;
    ngx_http_civchat_redis_worker_t   workers[NGX_HTTP_CIVCHAT_REDIS_WORKERS];
} ngx_http_civchat_redis_stats_t;


struct ngx_http_civchat_redis_conn_s {
    ngx_connection_t                 *c;
    ngx_http_civchat_redis_node_t    *node;
    ngx_uint_t                        sub;       /* the subscriber conn */
    ngx_uint_t                        ready;     /* connected */
    ngx_uint_t                        connected; /* ever, in this worker */
    ngx_uint_t                        gen;       /* closes so far */

    u_char                           *out;
    size_t                            out_size;
    size_t                            out_len;
    size_t                            out_sent;
    uint64_t                          out_base;  /* offset of out[0] */

    u_char                           *in;
    size_t                            in_size;
    size_t                            in_pos;
    size_t                            in_last;
    ngx_http_civchat_redis_scan_t     scan;

    ngx_queue_t                       waiting;   /* cmd_t, in order */
    ngx_pool_t                       *pool;      /* replies, reset */
};


struct ngx_http_civchat_redis_node_s {
    ngx_http_civchat_redis_t         *rd;
    ngx_str_t                         name;      /* ip:port */
    ngx_addr_t                        addr;
    ngx_uint_t                        role;      /* 0: not in the map */
    ngx_http_civchat_redis_conn_t     cmd;
    ngx_http_civchat_redis_conn_t     sub;
    ngx_msec_t                        retry_at;  /* no connect before */
    ngx_msec_t                        backoff;
    uint64_t                          ping_us;   /* when the PING left */
    unsigned                          seed:1;
    unsigned                          failed:1;  /* since the last reply */
    unsigned                          ping:1;    /* a PING is due */
};


struct ngx_http_civchat_redis_cmd_s {
    ngx_queue_t                        queue;
    ngx_http_civchat_redis_t          *rd;
    ngx_http_civchat_redis_handler_pt  handler;
    void                              *data;
    ngx_pool_t                        *pool;
    ngx_http_civchat_redis_script_t   *script;   /* EVALSHA of it */
    ngx_http_civchat_redis_node_t     *node;     /* a fixed node */
    u_char                            *buf;      /* the command in RESP */
    size_t                             len;
    size_t                             rest;     /* EVALSHA: after sha */
    uint64_t                           start;    /* its offset on conn */
    ngx_msec_t                         deadline;
    ngx_int_t                          slot;     /* -1: any master */
    ngx_uint_t                         kind;
    ngx_uint_t                         redirects;
};


struct ngx_http_civchat_redis_script_s {
    ngx_str_t                         text;
    u_char                            sha[40];
};


typedef struct {
    ngx_str_node_t                    sn;        /* in rd->channels */
    ngx_http_civchat_redis_t         *rd;
    ngx_queue_t                       all;       /* rd->channel_list */
    ngx_queue_t                       subs;      /* sub_t */
    ngx_http_civchat_redis_node_t    *node;      /* subscribed there */
    ngx_uint_t                        state;
    ngx_uint_t                        sharded;
    ngx_uint_t                        delivering;
    ngx_int_t                         slot;
} ngx_http_civchat_redis_channel_t;


struct ngx_http_civchat_redis_sub_s {
    ngx_queue_t                        queue;
    ngx_http_civchat_redis_channel_t  *channel;
    ngx_http_civchat_redis_message_pt  handler;  /* NULL: unsubscribed */
    void                              *data;
};


struct ngx_http_civchat_redis_s {
    /* configuration */
    ngx_str_t                         name;
    ngx_array_t                       seeds;     /* ngx_addr_t */
    ngx_str_t                         password;
    ngx_msec_t                        timeout;
    ngx_msec_t                        ping;
    ngx_msec_t                        canary;    /* 0: off */
    ngx_msec_t                        max_backoff;
    ngx_shm_zone_t                   *shm_zone;
    ngx_http_civchat_redis_stats_t   *stats;
    ngx_http_civchat_redis_script_t  *canary_script;

    /* per worker */
    ngx_log_t                        *log;
    ngx_pool_t                       *pool;
    ngx_http_civchat_redis_node_t   **slots;     /* masters, by slot */
    ngx_array_t                       nodes;     /* node_t * */
    ngx_uint_t                        slots_covered;
    ngx_uint_t                        next_master;
    ngx_uint_t                        next_refresh;
    ngx_msec_t                        refreshed; /* the last map, or 0 */
    ngx_msec_t                        refresh_sent;
    ngx_msec_t                        map_backoff;
    ngx_queue_t                       retry;     /* cmd_t */
    ngx_event_t                       retry_ev;
    ngx_event_t                       refresh_ev;
    ngx_event_t                       health_ev;
    ngx_event_t                       resub_ev;
    ngx_event_t                       canary_ev;
    ngx_rbtree_t                      channels;
    ngx_rbtree_node_t                 sentinel;
    ngx_queue_t                       channel_list;
    ngx_http_civchat_redis_worker_t  *worker;    /* in stats, or NULL */
    ngx_http_civchat_redis_worker_t   unshared;

    /*
     * what the connections call above them, set by init_process: a
     * reply on a command connection, one on a subscriber connection, a
     * subscriber connection lost, the map to be asked for again
     */
    ngx_http_civchat_redis_input_pt   cmd_input;
    ngx_http_civchat_redis_input_pt   sub_input;
    ngx_http_civchat_redis_lost_pt    sub_lost;
    ngx_http_civchat_redis_remap_pt   remap;

    ngx_str_t                         canary_key;
    ngx_str_t                         canary_channel;
    ngx_str_t                         canary_broadcast;
    u_char                            canary_value[64];
    size_t                            canary_len;
    ngx_uint_t                        canary_round;

    unsigned                          running:1;
    unsigned                          refreshing:1;
    unsigned                          canary_busy:1;
    unsigned                          logged_nodes:1;
    unsigned                          map_failed:1;
};


static char *ngx_http_civchat_redis_param(ngx_conf_t *cf,
    ngx_http_civchat_redis_t *rd, ngx_str_t *arg);
static ngx_int_t ngx_http_civchat_redis_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_civchat_redis_node_t *ngx_http_civchat_redis_node(
    ngx_http_civchat_redis_t *rd, struct sockaddr *sa, socklen_t socklen,
    ngx_uint_t create);
static ngx_http_civchat_redis_node_t *ngx_http_civchat_redis_node_text(
    ngx_http_civchat_redis_t *rd, u_char *p, size_t len,
    ngx_http_civchat_redis_node_t *from);
static ngx_http_civchat_redis_cmd_t *ngx_http_civchat_redis_cmd(
    ngx_http_civchat_redis_t *rd, ngx_uint_t argc, ngx_str_t *argv,
    size_t extra);
static void ngx_http_civchat_redis_cmd_free(ngx_http_civchat_redis_cmd_t *cmd);
static void ngx_http_civchat_redis_dispatch(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd, ngx_http_civchat_redis_node_t *ask);
static ngx_int_t ngx_http_civchat_redis_internal(
    ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node, ngx_uint_t sub, ngx_uint_t kind,
    ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_civchat_redis_handler_pt handler, void *data);
static ngx_int_t ngx_http_civchat_redis_connect(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_conn_t *conn);
static void ngx_http_civchat_redis_append(ngx_http_civchat_redis_conn_t *conn,
    ngx_http_civchat_redis_cmd_t *cmd);
static void ngx_http_civchat_redis_write_handler(ngx_event_t *wev);
static void ngx_http_civchat_redis_send(ngx_http_civchat_redis_conn_t *conn);
static void ngx_http_civchat_redis_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_http_civchat_redis_process(
    ngx_http_civchat_redis_conn_t *conn);
static void ngx_http_civchat_redis_reply(ngx_http_civchat_redis_conn_t *conn,
    u_char *start, size_t len);
static ngx_http_civchat_redis_node_t *ngx_http_civchat_redis_moved(
    ngx_http_civchat_redis_t *rd, ngx_http_civchat_redis_conn_t *conn,
    u_char *start, size_t len, ngx_uint_t *slotp);
static ngx_int_t ngx_http_civchat_redis_redirect(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_conn_t *conn, ngx_http_civchat_redis_cmd_t *cmd,
    u_char *start, size_t len);
static void ngx_http_civchat_redis_deliver(
    ngx_http_civchat_redis_conn_t *conn, ngx_http_civchat_redis_cmd_t *cmd,
    u_char *start, size_t len);
static void ngx_http_civchat_redis_fail_cmd(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd, const char *reason);
static void ngx_http_civchat_redis_close(ngx_http_civchat_redis_conn_t *conn);
static void ngx_http_civchat_redis_fail(ngx_http_civchat_redis_conn_t *conn,
    const char *reason);
static void ngx_http_civchat_redis_backoff(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node);
static void ngx_http_civchat_redis_retry_add(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd);
static void ngx_http_civchat_redis_retry_handler(ngx_event_t *ev);
static void ngx_http_civchat_redis_refresh(ngx_http_civchat_redis_t *rd);
static void ngx_http_civchat_redis_refresh_handler(ngx_event_t *ev);
static void ngx_http_civchat_redis_slots_done(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static ngx_int_t ngx_http_civchat_redis_slot_map(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *from,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_redis_auth_done(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_redis_ping_done(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_redis_health_handler(ngx_event_t *ev);
static void ngx_http_civchat_redis_gauges(ngx_http_civchat_redis_t *rd);
static void ngx_http_civchat_redis_cmd_arg(ngx_http_civchat_redis_cmd_t *cmd,
    ngx_uint_t index, ngx_str_t *arg);
static void ngx_http_civchat_redis_sub_reply(
    ngx_http_civchat_redis_conn_t *conn, u_char *start, size_t len);
static ngx_http_civchat_redis_channel_t *ngx_http_civchat_redis_channel(
    ngx_http_civchat_redis_t *rd, ngx_str_t *name);
static void ngx_http_civchat_redis_sub_lost(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node);
static void ngx_http_civchat_redis_channel_lost(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_channel_t *ch, ngx_msec_t delay);
static void ngx_http_civchat_redis_channel_free(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_channel_t *ch);
static void ngx_http_civchat_redis_resub_handler(ngx_event_t *ev);
static void ngx_http_civchat_redis_canary_handler(ngx_event_t *ev);
static void ngx_http_civchat_redis_canary_set(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_redis_canary_get(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_redis_canary_done(ngx_http_civchat_redis_t *rd,
    ngx_uint_t ok);
static void ngx_http_civchat_redis_canary_message(void *data,
    ngx_str_t *channel, ngx_str_t *message);
static uint64_t ngx_http_civchat_redis_usec(void);
static u_char *ngx_http_civchat_redis_label(u_char *p, ngx_str_t *value);


static ngx_str_t  ngx_http_civchat_redis_canary_lua =
    ngx_string("return redis.call('GET', KEYS[1])");


/* configuration */

char *
ngx_http_civchat_redis_add(ngx_conf_t *cf, ngx_array_t **clusters,
    ngx_str_t *args, ngx_uint_t n)
{
    u_char                     *p;
    ngx_url_t                   u;
    ngx_str_t                   zone;
    ngx_uint_t                  i, k;
    ngx_addr_t                 *seed;
    ngx_http_civchat_redis_t   *rd, **rdp;

    if (*clusters == NULL) {
        *clusters = ngx_array_create(cf->pool, 2,
                                     sizeof(ngx_http_civchat_redis_t *));
        if (*clusters == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_http_civchat_redis_find(*clusters, &args[0]) != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate civchat_redis \"%V\"", &args[0]);
        return NGX_CONF_ERROR;
    }

    rd = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_redis_t));
    if (rd == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ngx_array_init(&rd->seeds, cf->pool, 4, sizeof(ngx_addr_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    rd->name = args[0];
    rd->timeout = 1000;
    rd->ping = 1000;
    rd->max_backoff = 2000;

    for (i = 1; i < n; i++) {

        if (ngx_strlchr(args[i].data, args[i].data + args[i].len, '=')
            != NULL)
        {
            if (ngx_http_civchat_redis_param(cf, rd, &args[i])
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_memzero(&u, sizeof(ngx_url_t));

        u.url = args[i];
        u.default_port = 6379;

        if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.uri.len
            || u.family == AF_UNIX)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "civchat_redis \"%V\": invalid address "
                               "\"%V\"%s%s", &rd->name, &args[i],
                               u.err ? ", " : "", u.err ? u.err : "");
            return NGX_CONF_ERROR;
        }

        for (k = 0; k < u.naddrs; k++) {
            seed = ngx_array_push(&rd->seeds);
            if (seed == NULL) {
                return NGX_CONF_ERROR;
            }

            *seed = u.addrs[k];
        }
    }

    if (rd->seeds.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "civchat_redis \"%V\" needs the address of at "
                           "least one node", &rd->name);
        return NGX_CONF_ERROR;
    }

    if (rd->canary) {
        rd->canary_script = ngx_http_civchat_redis_script(cf,
                                     &ngx_http_civchat_redis_canary_lua);
        if (rd->canary_script == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    /*
     * counters and what each worker sees, for civchat_status; named like
     * the stats zone, which no "zone=name:size" of a user's can name
     */

    zone.len = sizeof("ngx_http_civchat_module:redis:") - 1 + rd->name.len;
    zone.data = ngx_pnalloc(cf->pool, zone.len);
    if (zone.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(zone.data, "ngx_http_civchat_module:redis:",
                   sizeof("ngx_http_civchat_module:redis:") - 1);
    ngx_memcpy(p, rd->name.data, rd->name.len);

    rd->shm_zone = ngx_shared_memory_add(cf, &zone, 16 * ngx_pagesize,
                                         &ngx_http_civchat_module);
    if (rd->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (rd->shm_zone->data != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "civchat_redis \"%V\": the shared memory zone "
                           "\"%V\" is already in use", &rd->name, &zone);
        return NGX_CONF_ERROR;
    }

    rd->shm_zone->init = ngx_http_civchat_redis_init_zone;
    rd->shm_zone->data = rd;

    rdp = ngx_array_push(*clusters);
    if (rdp == NULL) {
        return NGX_CONF_ERROR;
    }

    *rdp = rd;

    return NGX_CONF_OK;
}


static char *
ngx_http_civchat_redis_param(ngx_conf_t *cf, ngx_http_civchat_redis_t *rd,
    ngx_str_t *arg)
{
    ngx_str_t    v;
    ngx_msec_t   ms, *field;

    v.data = (u_char *) ngx_strlchr(arg->data, arg->data + arg->len, '=')
             + 1;
    v.len = arg->data + arg->len - v.data;

    if (ngx_strncmp(arg->data, "password=", 9) == 0) {
        if (v.len == 0) {
            goto invalid;
        }

        rd->password = v;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(arg->data, "timeout=", 8) == 0) {
        field = &rd->timeout;

    } else if (ngx_strncmp(arg->data, "ping=", 5) == 0) {
        field = &rd->ping;

    } else if (ngx_strncmp(arg->data, "retry=", 6) == 0) {
        field = &rd->max_backoff;

    } else if (ngx_strncmp(arg->data, "canary=", 7) == 0) {
        field = &rd->canary;

        if (v.len == 3 && ngx_strncmp(v.data, "off", 3) == 0) {
            rd->canary = 0;
            return NGX_CONF_OK;
        }

    } else {
        goto invalid;
    }

    ms = ngx_parse_time(&v, 0);

    if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
        goto invalid;
    }

    *field = ms;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "civchat_redis \"%V\": invalid parameter \"%V\"",
                       &rd->name, arg);

    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_civchat_redis_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_civchat_redis_t  *ord = data;

    ngx_slab_pool_t           *shpool;
    ngx_http_civchat_redis_t  *rd;

    rd = shm_zone->data;

    if (ord != NULL) {
        /* counters run on across reloads */
        rd->stats = ord->stats;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        rd->stats = shpool->data;
        return NGX_OK;
    }

    rd->stats = ngx_slab_calloc(shpool,
                                sizeof(ngx_http_civchat_redis_stats_t));
    if (rd->stats == NULL) {
        return NGX_ERROR;
    }

    shpool->data = rd->stats;

    return NGX_OK;
}


ngx_http_civchat_redis_t *
ngx_http_civchat_redis_find(ngx_array_t *clusters, ngx_str_t *name)
{
    ngx_uint_t                  i;
    ngx_http_civchat_redis_t  **rds;

    if (clusters == NULL) {
        return NULL;
    }

    rds = clusters->elts;

    for (i = 0; i < clusters->nelts; i++) {
        if (rds[i]->name.len == name->len
            && ngx_strncmp(rds[i]->name.data, name->data, name->len) == 0)
        {
            return rds[i];
        }
    }

    return NULL;
}


ngx_http_civchat_redis_script_t *
ngx_http_civchat_redis_script(ngx_conf_t *cf, ngx_str_t *text)
{
    u_char                            digest[20];
    ngx_sha1_t                        sha1;
    ngx_http_civchat_redis_script_t  *script;

    script = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_redis_script_t));
    if (script == NULL) {
        return NULL;
    }

    script->text = *text;

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, text->data, text->len);
    ngx_sha1_final(digest, &sha1);

    ngx_hex_dump(script->sha, digest, 20);

    return script;
}


/* the worker's client */

void
ngx_http_civchat_redis_init_process(ngx_http_civchat_redis_t *rd,
    ngx_cycle_t *cycle)
{
    u_char                            *p;
    size_t                             len;
    ngx_uint_t                         i;
    ngx_addr_t                        *seeds;
    ngx_http_civchat_redis_node_t     *node;
    ngx_http_civchat_redis_worker_t   *w;

    rd->log = cycle->log;

    /* the hooks through which the connections reach the layers above */
    rd->cmd_input = ngx_http_civchat_redis_reply;
    rd->sub_input = ngx_http_civchat_redis_sub_reply;
    rd->sub_lost = ngx_http_civchat_redis_sub_lost;
    rd->remap = ngx_http_civchat_redis_refresh;

    rd->pool = ngx_create_pool(4096, cycle->log);
    if (rd->pool == NULL) {
        return;
    }

    rd->slots = ngx_pcalloc(rd->pool,
                            NGX_HTTP_CIVCHAT_REDIS_SLOTS
                            * sizeof(ngx_http_civchat_redis_node_t *));
    if (rd->slots == NULL) {
        return;
    }

    if (ngx_array_init(&rd->nodes, rd->pool, 8,
                       sizeof(ngx_http_civchat_redis_node_t *))
        != NGX_OK)
    {
        return;
    }

    ngx_queue_init(&rd->retry);
    ngx_queue_init(&rd->channel_list);
    ngx_rbtree_init(&rd->channels, &rd->sentinel, ngx_str_rbtree_insert_value);

    seeds = rd->seeds.elts;

    for (i = 0; i < rd->seeds.nelts; i++) {
        node = ngx_http_civchat_redis_node(rd, seeds[i].sockaddr,
                                           seeds[i].socklen, 1);
        if (node == NULL) {
            return;
        }

        node->seed = 1;
    }

    rd->worker = &rd->unshared;

    if (rd->stats != NULL && ngx_worker < NGX_HTTP_CIVCHAT_REDIS_WORKERS) {
        rd->worker = &rd->stats->workers[ngx_worker];
    }

    w = rd->worker;
    ngx_memzero(w, sizeof(ngx_http_civchat_redis_worker_t));
    w->pid = ngx_pid;

    rd->retry_ev.handler = ngx_http_civchat_redis_retry_handler;
    rd->retry_ev.data = rd;
    rd->retry_ev.log = cycle->log;

    rd->refresh_ev.handler = ngx_http_civchat_redis_refresh_handler;
    rd->refresh_ev.data = rd;
    rd->refresh_ev.log = cycle->log;
    rd->refresh_ev.cancelable = 1;

    rd->health_ev.handler = ngx_http_civchat_redis_health_handler;
    rd->health_ev.data = rd;
    rd->health_ev.log = cycle->log;
    rd->health_ev.cancelable = 1;

    rd->resub_ev.handler = ngx_http_civchat_redis_resub_handler;
    rd->resub_ev.data = rd;
    rd->resub_ev.log = cycle->log;
    rd->resub_ev.cancelable = 1;

    rd->running = 1;

    ngx_http_civchat_redis_refresh(rd);
    ngx_add_timer(&rd->health_ev, rd->ping);

    if (!rd->canary) {
        return;
    }

    /* the canary: a key and a channel of this worker, one slot */

    len = sizeof("civchat:canary:{::}:broadcast") - 1 + cycle->hostname.len
          + rd->name.len + NGX_INT_T_LEN;

    if (len > NGX_HTTP_CIVCHAT_REDIS_KEY_MAX) {
        len = NGX_HTTP_CIVCHAT_REDIS_KEY_MAX;
    }

    p = ngx_pnalloc(rd->pool, 3 * len);
    if (p == NULL) {
        return;
    }

    rd->canary_key.data = p;
    rd->canary_key.len = ngx_snprintf(p, len, "civchat:canary:{%V:%V:%ui}",
                                      &cycle->hostname, &rd->name,
                                      ngx_worker)
                         - p;

    rd->canary_channel.data = p + len;
    rd->canary_channel.len = ngx_snprintf(p + len, len, "%V:messages",
                                          &rd->canary_key)
                             - (p + len);

    rd->canary_broadcast.data = p + 2 * len;
    rd->canary_broadcast.len = ngx_snprintf(p + 2 * len, len, "%V:broadcast",
                                            &rd->canary_key)
                               - (p + 2 * len);

    w->canary_len = rd->canary_key.len;
    ngx_memcpy(w->canary, rd->canary_key.data, rd->canary_key.len);
    w->canary_slot = ngx_http_civchat_redis_keyslot(rd->canary_key.data,
                                                    rd->canary_key.len);

    /* its own sharded channel, and a channel of the whole cluster */

    if (ngx_http_civchat_redis_subscribe(rd, &rd->canary_channel, 1,
                                         ngx_http_civchat_redis_canary_message,
                                         rd)
        == NULL
        || ngx_http_civchat_redis_subscribe(rd, &rd->canary_broadcast, 0,
                                         ngx_http_civchat_redis_canary_message,
                                         rd)
           == NULL)
    {
        return;
    }

    rd->canary_ev.handler = ngx_http_civchat_redis_canary_handler;
    rd->canary_ev.data = rd;
    rd->canary_ev.log = cycle->log;
    rd->canary_ev.cancelable = 1;

    ngx_add_timer(&rd->canary_ev, rd->canary);
}


void
ngx_http_civchat_redis_exit_process(ngx_http_civchat_redis_t *rd,
    ngx_cycle_t *cycle)
{
    ngx_uint_t                       i;
    ngx_queue_t                     *q;
    ngx_event_t                     *ev;
    ngx_http_civchat_redis_cmd_t    *cmd;
    ngx_http_civchat_redis_node_t  **nodes;

    if (!rd->running) {
        return;
    }

    rd->running = 0;

    /* what is still waiting is dropped, without its handlers */

    nodes = rd->nodes.elts;

    for (i = 0; i < rd->nodes.nelts; i++) {
        ngx_http_civchat_redis_close(&nodes[i]->cmd);
        ngx_http_civchat_redis_close(&nodes[i]->sub);

        ngx_queue_add(&rd->retry, &nodes[i]->cmd.waiting);
        ngx_queue_add(&rd->retry, &nodes[i]->sub.waiting);
        ngx_queue_init(&nodes[i]->cmd.waiting);
        ngx_queue_init(&nodes[i]->sub.waiting);
    }

    for (i = 0; i < 5; i++) {
        ev = (i == 0) ? &rd->retry_ev : (i == 1) ? &rd->refresh_ev
             : (i == 2) ? &rd->health_ev : (i == 3) ? &rd->resub_ev
             : &rd->canary_ev;

        if (ev->timer_set) {
            ngx_del_timer(ev);
        }

        if (ev->posted) {
            ngx_delete_posted_event(ev);
        }
    }

    while (!ngx_queue_empty(&rd->retry)) {
        q = ngx_queue_head(&rd->retry);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_civchat_redis_cmd_t, queue);
        ngx_http_civchat_redis_cmd_free(cmd);
    }

    if (rd->worker != NULL && rd->worker->pid == (ngx_atomic_t) ngx_pid) {
        ngx_memzero(rd->worker, sizeof(ngx_http_civchat_redis_worker_t));
    }

    ngx_destroy_pool(rd->pool);
    rd->pool = NULL;
}


/* the node at an address, made when create is set and there is room */

static ngx_http_civchat_redis_node_t *
ngx_http_civchat_redis_node(ngx_http_civchat_redis_t *rd, struct sockaddr *sa,
    socklen_t socklen, ngx_uint_t create)
{
    u_char                          text[NGX_SOCKADDR_STRLEN];
    ngx_uint_t                      i;
    ngx_http_civchat_redis_node_t  *node, **nodes, **np;

    nodes = rd->nodes.elts;

    for (i = 0; i < rd->nodes.nelts; i++) {
        if (ngx_cmp_sockaddr(nodes[i]->addr.sockaddr, nodes[i]->addr.socklen,
                             sa, socklen, 1)
            == NGX_OK)
        {
            return nodes[i];
        }
    }

    if (!create) {
        return NULL;
    }

    if (rd->nodes.nelts >= NGX_HTTP_CIVCHAT_REDIS_NODES) {
        if (!rd->logged_nodes) {
            rd->logged_nodes = 1;
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "civchat_redis \"%V\": more than %d nodes, the "
                          "rest are not used", &rd->name,
                          NGX_HTTP_CIVCHAT_REDIS_NODES);
        }

        return NULL;
    }

    node = ngx_pcalloc(rd->pool, sizeof(ngx_http_civchat_redis_node_t));
    if (node == NULL) {
        return NULL;
    }

    node->addr.sockaddr = ngx_palloc(rd->pool, socklen);
    if (node->addr.sockaddr == NULL) {
        return NULL;
    }

    ngx_memcpy(node->addr.sockaddr, sa, socklen);
    node->addr.socklen = socklen;

    node->name.len = ngx_sock_ntop(sa, socklen, text, NGX_SOCKADDR_STRLEN, 1);
    node->name.data = ngx_pnalloc(rd->pool, node->name.len);
    if (node->name.data == NULL) {
        return NULL;
    }

    ngx_memcpy(node->name.data, text, node->name.len);
    node->addr.name = node->name;
    node->rd = rd;

    node->cmd.node = node;
    node->sub.node = node;
    node->sub.sub = 1;
    ngx_queue_init(&node->cmd.waiting);
    ngx_queue_init(&node->sub.waiting);

    np = ngx_array_push(&rd->nodes);
    if (np == NULL) {
        return NULL;
    }

    *np = node;

    return node;
}


/*
 * "ip:port" of a MOVED or ASK, or an ip and a port from CLUSTER SLOTS
 * (as "ip:port" too); an empty ip is the address of the node that said
 * it.  Names that are not addresses are not followed: a worker does not
 * resolve names.
 */

static ngx_http_civchat_redis_node_t *
ngx_http_civchat_redis_node_text(ngx_http_civchat_redis_t *rd, u_char *p,
    size_t len, ngx_http_civchat_redis_node_t *from)
{
    u_char          *colon;
    in_addr_t        inaddr;
    ngx_int_t        port;
    socklen_t        socklen;
    ngx_sockaddr_t   sa;

    for (colon = p + len; colon > p; colon--) {
        if (colon[-1] == ':') {
            break;
        }
    }

    if (colon == p) {
        return NULL;
    }

    port = ngx_atoi(colon, p + len - colon);

    if (port < 1 || port > 65535) {
        return NULL;
    }

    len = colon - 1 - p;

    ngx_memzero(&sa, sizeof(ngx_sockaddr_t));

    if (len == 0) {
        if (from == NULL || from->addr.socklen > sizeof(ngx_sockaddr_t)) {
            return NULL;
        }

        ngx_memcpy(&sa, from->addr.sockaddr, from->addr.socklen);
        socklen = from->addr.socklen;

        goto found;
    }

    if (len > 2 && p[0] == '[' && p[len - 1] == ']') {
        p++;
        len -= 2;
    }

    inaddr = ngx_inet_addr(p, len);

    if (inaddr != INADDR_NONE) {
        sa.sockaddr_in.sin_family = AF_INET;
        sa.sockaddr_in.sin_addr.s_addr = inaddr;
        socklen = sizeof(struct sockaddr_in);
        goto found;
    }

#if (NGX_HAVE_INET6)

    if (ngx_inet6_addr(p, len, sa.sockaddr_in6.sin6_addr.s6_addr) == NGX_OK) {
        sa.sockaddr_in6.sin6_family = AF_INET6;
        socklen = sizeof(struct sockaddr_in6);
        goto found;
    }

#endif

    return NULL;

found:

    ngx_inet_set_port(&sa.sockaddr, (in_port_t) port);

    return ngx_http_civchat_redis_node(rd, &sa.sockaddr, socklen, 1);
}


/* commands */

static ngx_http_civchat_redis_cmd_t *
ngx_http_civchat_redis_cmd(ngx_http_civchat_redis_t *rd, ngx_uint_t argc,
    ngx_str_t *argv, size_t extra)
{
    u_char                        *p;
    size_t                         len;
    ngx_uint_t                     i;
    ngx_http_civchat_redis_cmd_t  *cmd;

    len = 1 + NGX_INT_T_LEN + 2 + extra;

    for (i = 0; i < argc; i++) {
        len += 1 + NGX_SIZE_T_LEN + 2 + argv[i].len + 2;
    }

    cmd = ngx_alloc(sizeof(ngx_http_civchat_redis_cmd_t) + len, rd->log);
    if (cmd == NULL) {
        return NULL;
    }

    ngx_memzero(cmd, sizeof(ngx_http_civchat_redis_cmd_t));

    cmd->rd = rd;
    cmd->slot = -1;
    cmd->deadline = ngx_current_msec + rd->timeout;
    cmd->buf = (u_char *) (cmd + 1);

    p = ngx_sprintf(cmd->buf, "*%ui\r\n", argc);

    for (i = 0; i < argc; i++) {
        p = ngx_sprintf(p, "$%uz\r\n", argv[i].len);
        p = ngx_cpymem(p, argv[i].data, argv[i].len);
        *p++ = CR; *p++ = LF;
    }

    cmd->len = p - cmd->buf;

    return cmd;
}


static void
ngx_http_civchat_redis_cmd_free(ngx_http_civchat_redis_cmd_t *cmd)
{
    if (cmd->buf != (u_char *) (cmd + 1)) {
        ngx_free(cmd->buf);
    }

    ngx_free(cmd);
}


ngx_http_civchat_redis_cmd_t *
ngx_http_civchat_redis_command(ngx_http_civchat_redis_t *rd,
    ngx_str_t *slot_key, ngx_uint_t argc, ngx_str_t *argv, ngx_pool_t *pool,
    ngx_http_civchat_redis_handler_pt handler, void *data)
{
    ngx_http_civchat_redis_cmd_t  *cmd;

    if (!rd->running || argc == 0) {
        return NULL;
    }

    cmd = ngx_http_civchat_redis_cmd(rd, argc, argv, 0);
    if (cmd == NULL) {
        return NULL;
    }

    if (slot_key != NULL) {
        cmd->slot = ngx_http_civchat_redis_keyslot(slot_key->data,
                                                   slot_key->len);
    }

    cmd->pool = pool;
    cmd->handler = handler;
    cmd->data = data;

    ngx_http_civchat_redis_dispatch(rd, cmd, NULL);

    return cmd;
}


ngx_http_civchat_redis_cmd_t *
ngx_http_civchat_redis_eval(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_script_t *script, ngx_uint_t nkeys,
    ngx_uint_t argc, ngx_str_t *argv, ngx_pool_t *pool,
    ngx_http_civchat_redis_handler_pt handler, void *data)
{
    u_char                         n[NGX_INT_T_LEN], head[NGX_INT_T_LEN + 3];
    ngx_str_t                     *args;
    ngx_http_civchat_redis_cmd_t  *cmd;

    if (!rd->running || nkeys > argc) {
        return NULL;
    }

    /* EVALSHA sha nkeys argv... */

    args = ngx_alloc((argc + 3) * sizeof(ngx_str_t), rd->log);
    if (args == NULL) {
        return NULL;
    }

    ngx_str_set(&args[0], "EVALSHA");
    args[1].data = script->sha;
    args[1].len = 40;
    args[2].data = n;
    args[2].len = ngx_sprintf(n, "%ui", nkeys) - n;
    ngx_memcpy(&args[3], argv, argc * sizeof(ngx_str_t));

    cmd = ngx_http_civchat_redis_cmd(rd, argc + 3, args, 0);

    ngx_free(args);

    if (cmd == NULL) {
        return NULL;
    }

    /* where the arguments after the sha start, for EVAL on NOSCRIPT */
    cmd->rest = ngx_sprintf(head, "*%ui\r\n", argc + 3) - head
                + sizeof("$7\r\nEVALSHA\r\n$40\r\n\r\n") - 1 + 40;

    if (nkeys > 0) {
        cmd->slot = ngx_http_civchat_redis_keyslot(argv[0].data,
                                                   argv[0].len);
    }

    cmd->script = script;
    cmd->pool = pool;
    cmd->handler = handler;
    cmd->data = data;

    ngx_http_civchat_redis_dispatch(rd, cmd, NULL);

    return cmd;
}


void
ngx_http_civchat_redis_cancel(ngx_http_civchat_redis_cmd_t *cmd)
{
    cmd->handler = NULL;
    cmd->pool = NULL;
}


/*
 * To the master of the command's slot (or any master, or the command's
 * own node), or with ASKING to the node an ASK named.  What cannot go
 * now (no map yet, the node backing off, a connect failing at once) goes
 * to the retry queue: a handler is never called from here.
 */

static void
ngx_http_civchat_redis_dispatch(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd, ngx_http_civchat_redis_node_t *ask)
{
    ngx_uint_t                       i, n;
    ngx_http_civchat_redis_cmd_t    *asking;
    ngx_http_civchat_redis_conn_t   *conn;
    ngx_http_civchat_redis_node_t   *node, **nodes;

    static ngx_str_t  asking_argv[] = { ngx_string("ASKING") };

    node = cmd->node;

    if (ask != NULL) {
        node = ask;

    } else if (node == NULL && cmd->slot >= 0) {
        node = rd->slots[cmd->slot];

    } else if (node == NULL) {
        /* any master, in turn; before there is a map, any node */
        nodes = rd->nodes.elts;
        n = rd->nodes.nelts;

        for (i = 0; i < n; i++) {
            node = nodes[(rd->next_master + i) % n];

            if ((node->role == NGX_HTTP_CIVCHAT_REDIS_MASTER
                 || rd->slots_covered == 0)
                && (node->cmd.c != NULL
                    || (ngx_msec_int_t) (ngx_current_msec - node->retry_at)
                       >= 0))
            {
                rd->next_master = (rd->next_master + i + 1) % n;
                break;
            }

            node = NULL;
        }
    }

    if (node == NULL) {
        /* no map yet, or a slot nobody serves */
        ngx_http_civchat_redis_refresh(rd);
        ngx_http_civchat_redis_retry_add(rd, cmd);
        return;
    }

    conn = &node->cmd;

    if (conn->c == NULL
        && ((ngx_msec_int_t) (ngx_current_msec - node->retry_at) < 0
            || ngx_http_civchat_redis_connect(rd, conn) != NGX_OK))
    {
        ngx_http_civchat_redis_retry_add(rd, cmd);
        return;
    }

    if (ask != NULL) {
        asking = ngx_http_civchat_redis_cmd(rd, 1, asking_argv, 0);
        if (asking == NULL) {
            ngx_http_civchat_redis_retry_add(rd, cmd);
            return;
        }

        asking->kind = NGX_HTTP_CIVCHAT_REDIS_INTERNAL;
        asking->node = node;

        ngx_http_civchat_redis_append(conn, asking);
    }

    ngx_http_civchat_redis_append(conn, cmd);
}


/*
 * A command of the client's own to one node: on its command connection
 * (PING, CLUSTER SLOTS) or on its subscriber connection.  One that
 * cannot go now fails later, from the retry queue.
 */

static ngx_int_t
ngx_http_civchat_redis_internal(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node, ngx_uint_t sub, ngx_uint_t kind,
    ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_civchat_redis_handler_pt handler, void *data)
{
    ngx_http_civchat_redis_cmd_t   *cmd;
    ngx_http_civchat_redis_conn_t  *conn;

    conn = sub ? &node->sub : &node->cmd;

    if (conn->c == NULL
        && ((ngx_msec_int_t) (ngx_current_msec - node->retry_at) < 0
            || ngx_http_civchat_redis_connect(rd, conn) != NGX_OK))
    {
        return NGX_DECLINED;
    }

    cmd = ngx_http_civchat_redis_cmd(rd, argc, argv, 0);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->kind = kind;
    cmd->node = node;
    cmd->handler = handler;
    cmd->data = data;

    ngx_http_civchat_redis_append(conn, cmd);

    return NGX_OK;
}


/* connections */

static ngx_int_t
ngx_http_civchat_redis_connect(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_conn_t *conn)
{
    ngx_int_t                       rc;
    ngx_str_t                       argv[2];
    ngx_connection_t               *c;
    ngx_peer_connection_t           pc;
    ngx_http_civchat_redis_cmd_t   *cmd;
    ngx_http_civchat_redis_node_t  *node;

    node = conn->node;

    if (conn->pool == NULL) {
        conn->pool = ngx_create_pool(4096, rd->log);
        if (conn->pool == NULL) {
            return NGX_ERROR;
        }
    }

    ngx_memzero(&pc, sizeof(ngx_peer_connection_t));

    pc.sockaddr = node->addr.sockaddr;
    pc.socklen = node->addr.socklen;
    pc.name = &node->name;
    pc.get = ngx_event_get_peer;
    pc.log = rd->log;
    pc.log_error = NGX_ERROR_INFO;

    rc = ngx_event_connect_peer(&pc);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        if (pc.connection) {
            ngx_close_connection(pc.connection);
        }

        if (!node->failed) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "civchat_redis \"%V\": cannot connect to %V",
                          &rd->name, &node->name);
        }

        node->failed = 1;
        ngx_http_civchat_redis_backoff(rd, node);

        return NGX_ERROR;
    }

    c = pc.connection;
    c->data = conn;
    c->pool = NULL;
    c->read->handler = ngx_http_civchat_redis_read_handler;
    c->write->handler = ngx_http_civchat_redis_write_handler;

    conn->c = c;
    conn->ready = 0;
    conn->out_base = 0;
    conn->out_len = 0;
    conn->out_sent = 0;
    conn->in_pos = 0;
    conn->in_last = 0;
    ngx_http_civchat_redis_scan_init(&conn->scan);

    /* the connect timeout */
    ngx_add_timer(c->write, rd->timeout);

    if (rc == NGX_OK) {
        /* connected at once: the write handler sees it */
        ngx_post_event(c->write, &ngx_posted_events);
    }

    if (rd->password.len) {
        ngx_str_set(&argv[0], "AUTH");
        argv[1] = rd->password;

        cmd = ngx_http_civchat_redis_cmd(rd, 2, argv, 0);
        if (cmd == NULL) {
            ngx_http_civchat_redis_close(conn);
            return NGX_ERROR;
        }

        cmd->kind = NGX_HTTP_CIVCHAT_REDIS_INTERNAL;
        cmd->node = node;
        cmd->handler = ngx_http_civchat_redis_auth_done;
        cmd->data = conn;

        ngx_http_civchat_redis_append(conn, cmd);
    }

    return NGX_OK;
}


/* the command's bytes go to the output; it waits for its reply */

static void
ngx_http_civchat_redis_append(ngx_http_civchat_redis_conn_t *conn,
    ngx_http_civchat_redis_cmd_t *cmd)
{
    u_char                    *out;
    size_t                     size;
    ngx_http_civchat_redis_t  *rd;

    rd = cmd->rd;

    if (conn->out_len + cmd->len > conn->out_size) {
        size = ngx_max(conn->out_size * 2, 16384);

        while (size < conn->out_len + cmd->len) {
            size *= 2;
        }

        if (size > NGX_HTTP_CIVCHAT_REDIS_OUT_MAX) {
            cmd->deadline = ngx_current_msec;
            ngx_http_civchat_redis_retry_add(rd, cmd);
            return;
        }

        out = ngx_alloc(size, rd->log);
        if (out == NULL) {
            cmd->deadline = ngx_current_msec;
            ngx_http_civchat_redis_retry_add(rd, cmd);
            return;
        }

        if (conn->out) {
            ngx_memcpy(out, conn->out, conn->out_len);
            ngx_free(conn->out);
        }

        conn->out = out;
        conn->out_size = size;
    }

    cmd->start = conn->out_base + conn->out_len;
    ngx_memcpy(conn->out + conn->out_len, cmd->buf, cmd->len);
    conn->out_len += cmd->len;

    ngx_queue_insert_tail(&conn->waiting, &cmd->queue);

    if (rd->stats) {
        (void) ngx_atomic_fetch_add(&rd->stats->commands, 1);
    }

    if (conn->ready) {
        ngx_post_event(conn->c->write, &ngx_posted_events);
    }
}


static void
ngx_http_civchat_redis_write_handler(ngx_event_t *wev)
{
    int                              err;
    socklen_t                        len;
    ngx_connection_t                *c;
    ngx_http_civchat_redis_conn_t   *conn;
    ngx_http_civchat_redis_node_t   *node;

    c = wev->data;
    conn = c->data;
    node = conn->node;

    if (wev->timedout) {
        ngx_http_civchat_redis_fail(conn, conn->ready ? "timed out sending"
                                                      : "timed out connecting");
        return;
    }

    if (!conn->ready) {
        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_http_civchat_redis_fail(conn, "cannot connect");
            return;
        }

        conn->ready = 1;

        if (wev->timer_set) {
            ngx_del_timer(wev);
        }

        if (conn->connected && node->rd->stats) {
            (void) ngx_atomic_fetch_add(&node->rd->stats->reconnects, 1);
        }

        conn->connected = 1;
        ngx_http_civchat_redis_gauges(node->rd);
    }

    ngx_http_civchat_redis_send(conn);
}


static void
ngx_http_civchat_redis_send(ngx_http_civchat_redis_conn_t *conn)
{
    ssize_t                    n;
    ngx_event_t               *wev;
    ngx_connection_t          *c;
    ngx_http_civchat_redis_t  *rd;

    c = conn->c;
    wev = c->write;
    rd = conn->node->rd;

    while (conn->out_sent < conn->out_len) {
        n = c->send(c, conn->out + conn->out_sent,
                    conn->out_len - conn->out_sent);

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_civchat_redis_fail(conn, "send failed");
                return;
            }

            if (!wev->timer_set) {
                ngx_add_timer(wev, rd->timeout);
            }

            return;
        }

        if (n == NGX_ERROR || n == 0) {
            ngx_http_civchat_redis_fail(conn, "send failed");
            return;
        }

        conn->out_sent += n;
    }

    /* all sent */

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    conn->out_base += conn->out_len;
    conn->out_len = 0;
    conn->out_sent = 0;

    if (conn->out_size > NGX_HTTP_CIVCHAT_REDIS_KEEP) {
        /* a burst is over: its memory goes */
        ngx_free(conn->out);
        conn->out = NULL;
        conn->out_size = 0;
    }

    if (!ngx_queue_empty(&conn->waiting) && !c->read->timer_set) {
        ngx_add_timer(c->read, rd->timeout);
    }
}


static void
ngx_http_civchat_redis_read_handler(ngx_event_t *rev)
{
    u_char                          *in;
    size_t                           size;
    ssize_t                          n;
    ngx_uint_t                       eof;
    ngx_connection_t                *c;
    ngx_http_civchat_redis_t        *rd;
    ngx_http_civchat_redis_conn_t   *conn;

    c = rev->data;
    conn = c->data;
    rd = conn->node->rd;

    if (rev->timedout) {
        ngx_http_civchat_redis_fail(conn, "timed out waiting for a reply");
        return;
    }

    eof = 0;

    for ( ;; ) {

        if (conn->in_last == conn->in_size) {
            /* room: the replies read are gone, or a bigger buffer */

            if (conn->in_pos > 0) {
                ngx_memmove(conn->in, conn->in + conn->in_pos,
                            conn->in_last - conn->in_pos);
                conn->in_last -= conn->in_pos;
                conn->in_pos = 0;

            } else {
                size = conn->in_size ? conn->in_size * 2
                                     : NGX_HTTP_CIVCHAT_REDIS_IN;

                if (size > NGX_HTTP_CIVCHAT_REDIS_IN_MAX) {
                    ngx_http_civchat_redis_fail(conn, "a reply too long");
                    return;
                }

                in = ngx_alloc(size, rd->log);
                if (in == NULL) {
                    ngx_http_civchat_redis_fail(conn, "no memory");
                    return;
                }

                if (conn->in) {
                    ngx_memcpy(in, conn->in, conn->in_last);
                    ngx_free(conn->in);
                }

                conn->in = in;
                conn->in_size = size;
            }
        }

        n = c->recv(c, conn->in + conn->in_last,
                    conn->in_size - conn->in_last);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR || n == 0) {
            eof = 1;
            break;
        }

        conn->in_last += n;

        if (ngx_http_civchat_redis_process(conn) != NGX_OK) {
            /* closed meanwhile */
            return;
        }
    }

    if (eof) {
        ngx_http_civchat_redis_fail(conn, conn->ready
                                          ? "the connection was closed"
                                          : "cannot connect");
        return;
    }

    /* a reply is due: it has timeout from the last bytes read */

    if (!ngx_queue_empty(&conn->waiting) && conn->out_len == 0) {
        ngx_add_timer(rev, rd->timeout);

    } else if (rev->timer_set) {
        ngx_del_timer(rev);
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_civchat_redis_fail(conn, "read failed");
    }
}


/* the whole replies in the input; NGX_DONE when the conn was closed */

static ngx_int_t
ngx_http_civchat_redis_process(ngx_http_civchat_redis_conn_t *conn)
{
    u_char                    *start;
    size_t                     len;
    ngx_int_t                  rc;
    ngx_uint_t                 gen;
    ngx_http_civchat_redis_t  *rd;

    rd = conn->node->rd;
    gen = conn->gen;

    while (conn->in_pos < conn->in_last) {
        rc = ngx_http_civchat_redis_scan(&conn->scan, conn->in + conn->in_pos,
                                         conn->in + conn->in_last);

        if (rc == NGX_AGAIN) {
            break;
        }

        if (rc == NGX_ERROR) {
            ngx_http_civchat_redis_fail(conn, "the server sent what is not "
                                              "RESP");
            return NGX_DONE;
        }

        start = conn->in + conn->in_pos;
        len = conn->scan.pos;

        conn->in_pos += len;
        ngx_http_civchat_redis_scan_init(&conn->scan);

        if (conn->sub) {
            rd->sub_input(conn, start, len);

        } else {
            rd->cmd_input(conn, start, len);
        }

        if (conn->gen != gen) {
            /* a handler closed it (and may have made a new one) */
            return NGX_DONE;
        }
    }

    if (conn->in_pos == conn->in_last) {
        conn->in_pos = 0;
        conn->in_last = 0;

        if (conn->in_size > NGX_HTTP_CIVCHAT_REDIS_KEEP) {
            ngx_free(conn->in);
            conn->in = NULL;
            conn->in_size = 0;
        }
    }

    return NGX_OK;
}


/* a reply on a command connection: to the command at the head */

static void
ngx_http_civchat_redis_reply(ngx_http_civchat_redis_conn_t *conn,
    u_char *start, size_t len)
{
    ngx_queue_t                    *q;
    ngx_http_civchat_redis_t       *rd;
    ngx_http_civchat_redis_cmd_t   *cmd;
    ngx_http_civchat_redis_node_t  *node;

    node = conn->node;
    rd = node->rd;

    if (ngx_queue_empty(&conn->waiting)) {
        ngx_http_civchat_redis_fail(conn, "the server sent a reply to no "
                                          "command");
        return;
    }

    q = ngx_queue_head(&conn->waiting);
    ngx_queue_remove(q);
    cmd = ngx_queue_data(q, ngx_http_civchat_redis_cmd_t, queue);

    if (start[0] != '-') {
        if (node->failed) {
            ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                          "civchat_redis \"%V\": %V answers again",
                          &rd->name, &node->name);
            node->failed = 0;
        }

        node->backoff = 0;

    } else if (cmd->kind == NGX_HTTP_CIVCHAT_REDIS_USER
               && ngx_http_civchat_redis_redirect(rd, conn, cmd, start, len)
                  == NGX_OK)
    {
        /* sent elsewhere, or to be tried again */
        return;
    }

    ngx_http_civchat_redis_deliver(conn, cmd, start, len);
}


/*
 * "-MOVED slot ip:port" or "-ASK slot ip:port": the node named, counted;
 * after MOVED the slot is the node's at once and the whole map is asked
 * for again.  NULL for what is neither.
 */

static ngx_http_civchat_redis_node_t *
ngx_http_civchat_redis_moved(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_conn_t *conn, u_char *start, size_t len,
    ngx_uint_t *slotp)
{
    u_char                         *p, *last, *sp;
    ngx_int_t                       slot;
    ngx_uint_t                      ask;
    ngx_http_civchat_redis_node_t  *node;

    p = start + 1;
    last = start + len - 2;

    if (last - p > 6 && ngx_strncmp(p, "MOVED ", 6) == 0) {
        ask = 0;
        p += 6;

    } else if (last - p > 4 && ngx_strncmp(p, "ASK ", 4) == 0) {
        ask = 1;
        p += 4;

    } else {
        return NULL;
    }

    sp = ngx_strlchr(p, last, ' ');
    if (sp == NULL) {
        return NULL;
    }

    slot = ngx_atoi(p, sp - p);

    if (slot == NGX_ERROR || slot >= NGX_HTTP_CIVCHAT_REDIS_SLOTS) {
        return NULL;
    }

    node = ngx_http_civchat_redis_node_text(rd, sp + 1, last - sp - 1,
                                            conn->node);
    if (node == NULL) {
        return NULL;
    }

    if (rd->stats) {
        (void) ngx_atomic_fetch_add(ask ? &rd->stats->ask
                                        : &rd->stats->moved, 1);
    }

    if (!ask) {
        /* the slot moved: its new master now, the whole map soon */
        rd->slots[slot] = node;
        node->role = NGX_HTTP_CIVCHAT_REDIS_MASTER;
        ngx_http_civchat_redis_refresh(rd);
    }

    *slotp = slot;

    return node;
}


/*
 * The errors the client answers itself: NGX_OK when the command was sent
 * elsewhere or queued to be tried again, NGX_DECLINED for an error that
 * is the command's.
 */

static ngx_int_t
ngx_http_civchat_redis_redirect(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_conn_t *conn, ngx_http_civchat_redis_cmd_t *cmd,
    u_char *start, size_t len)
{
    u_char                         *p, *last, *sp, *buf;
    size_t                          size;
    ngx_uint_t                      ask, slot;
    ngx_http_civchat_redis_node_t  *node;

    p = start + 1;
    last = start + len - 2;

    if ((last - p > 6 && ngx_strncmp(p, "MOVED ", 6) == 0)
        || (last - p > 4 && ngx_strncmp(p, "ASK ", 4) == 0))
    {
        ask = (p[1] == 'S');

        node = ngx_http_civchat_redis_moved(rd, conn, start, len, &slot);
        if (node == NULL) {
            return NGX_DECLINED;
        }

        if (++cmd->redirects > NGX_HTTP_CIVCHAT_REDIS_REDIRECTS) {
            ngx_http_civchat_redis_fail_cmd(rd, cmd, "too many redirections");
            return NGX_OK;
        }

        ngx_http_civchat_redis_dispatch(rd, cmd, ask ? node : NULL);

        return NGX_OK;
    }

    if ((last - p >= 8 && ngx_strncmp(p, "TRYAGAIN", 8) == 0)
        || (last - p >= 11 && ngx_strncmp(p, "CLUSTERDOWN", 11) == 0)
        || (last - p >= 7 && ngx_strncmp(p, "LOADING", 7) == 0)
        || (last - p >= 10 && ngx_strncmp(p, "MASTERDOWN", 10) == 0))
    {
        if (rd->stats) {
            (void) ngx_atomic_fetch_add(&rd->stats->retries, 1);
        }

        if (p[0] == 'C') {
            ngx_http_civchat_redis_refresh(rd);
        }

        if ((ngx_msec_int_t) (ngx_current_msec - cmd->deadline) >= 0) {
            return NGX_DECLINED;
        }

        ngx_http_civchat_redis_retry_add(rd, cmd);
        return NGX_OK;
    }

    if (cmd->script != NULL
        && last - p >= 8 && ngx_strncmp(p, "NOSCRIPT", 8) == 0)
    {
        /* EVAL with the text: the node loads the script */

        size = sizeof("*\r\n$4\r\nEVAL\r\n$\r\n\r\n") + 2 * NGX_SIZE_T_LEN
               + cmd->script->text.len + cmd->len - cmd->rest;

        buf = ngx_alloc(size, rd->log);
        if (buf == NULL) {
            return NGX_DECLINED;
        }

        /* the count of arguments is the same: EVAL for EVALSHA */
        p = cmd->buf + 1;
        while (*p != CR) {
            p++;
        }

        sp = ngx_sprintf(buf, "*%*s\r\n$4\r\nEVAL\r\n$%uz\r\n%V\r\n",
                         (size_t) (p - cmd->buf - 1), cmd->buf + 1,
                         cmd->script->text.len, &cmd->script->text);
        sp = ngx_cpymem(sp, cmd->buf + cmd->rest, cmd->len - cmd->rest);

        if (cmd->buf != (u_char *) (cmd + 1)) {
            ngx_free(cmd->buf);
        }

        cmd->buf = buf;
        cmd->len = sp - buf;
        cmd->script = NULL;

        if (rd->stats) {
            (void) ngx_atomic_fetch_add(&rd->stats->script_loads, 1);
        }

        ngx_http_civchat_redis_dispatch(rd, cmd, NULL);

        return NGX_OK;
    }

    return NGX_DECLINED;
}


/* the reply to its handler, in the command's pool or the conn's */

static void
ngx_http_civchat_redis_deliver(ngx_http_civchat_redis_conn_t *conn,
    ngx_http_civchat_redis_cmd_t *cmd, u_char *start, size_t len)
{
    void                               *data;
    ngx_pool_t                         *pool;
    ngx_http_civchat_redis_t           *rd;
    ngx_http_civchat_redis_reply_t     *reply, err;
    ngx_http_civchat_redis_handler_pt   handler;

    rd = cmd->rd;
    handler = cmd->handler;
    data = cmd->data;
    pool = cmd->pool;

    ngx_http_civchat_redis_cmd_free(cmd);

    if (start[0] == '-' && rd->stats) {
        (void) ngx_atomic_fetch_add(&rd->stats->errors, 1);
    }

    if (handler == NULL) {
        return;
    }

    reply = ngx_http_civchat_redis_build(pool ? pool : conn->pool, start, len,
                                         pool != NULL);

    if (reply == NULL) {
        ngx_memzero(&err, sizeof(ngx_http_civchat_redis_reply_t));
        err.type = NGX_HTTP_CIVCHAT_REDIS_ERROR;
        ngx_str_set(&err.str, "civchat: no memory for the reply");

        handler(data, NGX_ERROR, &err);

    } else {
        handler(data, NGX_OK, reply);
    }

    if (pool == NULL && conn->pool != NULL) {
        ngx_reset_pool(conn->pool);
    }
}


static void
ngx_http_civchat_redis_fail_cmd(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd, const char *reason)
{
    void                               *data;
    ngx_http_civchat_redis_reply_t      err;
    ngx_http_civchat_redis_handler_pt   handler;

    handler = cmd->handler;
    data = cmd->data;

    if (cmd->kind == NGX_HTTP_CIVCHAT_REDIS_USER && rd->stats) {
        (void) ngx_atomic_fetch_add(&rd->stats->failed, 1);
    }

    ngx_http_civchat_redis_cmd_free(cmd);

    if (handler == NULL) {
        return;
    }

    ngx_memzero(&err, sizeof(ngx_http_civchat_redis_reply_t));
    err.type = NGX_HTTP_CIVCHAT_REDIS_ERROR;
    err.str.data = (u_char *) reason;
    err.str.len = ngx_strlen(reason);

    handler(data, NGX_ERROR, &err);
}


static void
ngx_http_civchat_redis_close(ngx_http_civchat_redis_conn_t *conn)
{
    if (conn->c != NULL) {
        ngx_close_connection(conn->c);
        conn->c = NULL;
        conn->gen++;
    }

    conn->ready = 0;

    if (conn->in != NULL) {
        ngx_free(conn->in);
        conn->in = NULL;
        conn->in_size = 0;
    }

    if (conn->out != NULL) {
        ngx_free(conn->out);
        conn->out = NULL;
        conn->out_size = 0;
    }

    conn->in_pos = 0;
    conn->in_last = 0;
    conn->out_len = 0;
    conn->out_sent = 0;

    if (conn->pool != NULL) {
        ngx_destroy_pool(conn->pool);
        conn->pool = NULL;
    }
}


/*
 * A connection is lost (or never made): the commands it sent fail, those
 * it had not sent yet are routed again; the node backs off; the map is
 * asked again, since a master that goes away may be failing over.
 */

static void
ngx_http_civchat_redis_fail(ngx_http_civchat_redis_conn_t *conn,
    const char *reason)
{
    uint64_t                         sent;
    ngx_queue_t                      waiting, *q;
    ngx_http_civchat_redis_t        *rd;
    ngx_http_civchat_redis_cmd_t    *cmd;
    ngx_http_civchat_redis_node_t   *node;

    node = conn->node;
    rd = node->rd;

    if (!node->failed) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "civchat_redis \"%V\": %V: %s", &rd->name,
                      &node->name, reason);
    }

    node->failed = 1;

    sent = conn->out_base + conn->out_sent;

    ngx_queue_init(&waiting);

    if (!ngx_queue_empty(&conn->waiting)) {
        waiting = conn->waiting;
        waiting.next->prev = &waiting;
        waiting.prev->next = &waiting;
        ngx_queue_init(&conn->waiting);
    }

    ngx_http_civchat_redis_close(conn);
    ngx_http_civchat_redis_backoff(rd, node);

    if (conn->sub) {
        /* its channels are to be subscribed again */
        rd->sub_lost(rd, node);
    }

    while (!ngx_queue_empty(&waiting)) {
        q = ngx_queue_head(&waiting);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_civchat_redis_cmd_t, queue);

        if (cmd->kind == NGX_HTTP_CIVCHAT_REDIS_USER && cmd->start >= sent) {
            /* not sent: it may go to another node, or later */
            if (rd->stats) {
                (void) ngx_atomic_fetch_add(&rd->stats->retries, 1);
            }

            ngx_http_civchat_redis_retry_add(rd, cmd);
            continue;
        }

        ngx_http_civchat_redis_fail_cmd(rd, cmd, reason);
    }

    rd->remap(rd);
    ngx_http_civchat_redis_gauges(rd);
}


static void
ngx_http_civchat_redis_backoff(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node)
{
    node->backoff = node->backoff ? ngx_min(node->backoff * 2,
                                            rd->max_backoff)
                                  : NGX_HTTP_CIVCHAT_REDIS_RETRY;
    node->retry_at = ngx_current_msec + node->backoff;
}


/* commands that wait: for a map, a node, or after TRYAGAIN and such */

static void
ngx_http_civchat_redis_retry_add(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd)
{
    ngx_queue_insert_tail(&rd->retry, &cmd->queue);

    if (!rd->retry_ev.timer_set) {
        ngx_add_timer(&rd->retry_ev, NGX_HTTP_CIVCHAT_REDIS_RETRY);
    }
}


static void
ngx_http_civchat_redis_retry_handler(ngx_event_t *ev)
{
    ngx_queue_t                    queue, *q;
    ngx_http_civchat_redis_t      *rd;
    ngx_http_civchat_redis_cmd_t  *cmd;

    rd = ev->data;

    if (ngx_queue_empty(&rd->retry)) {
        return;
    }

    queue = rd->retry;
    queue.next->prev = &queue;
    queue.prev->next = &queue;
    ngx_queue_init(&rd->retry);

    while (!ngx_queue_empty(&queue)) {
        q = ngx_queue_head(&queue);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_civchat_redis_cmd_t, queue);

        if ((ngx_msec_int_t) (ngx_current_msec - cmd->deadline) >= 0
            || (cmd->node != NULL && cmd->node->cmd.c == NULL
                && (ngx_msec_int_t) (ngx_current_msec - cmd->node->retry_at)
                   < 0))
        {
            ngx_http_civchat_redis_fail_cmd(rd, cmd,
                                            "no node answered in time");
            continue;
        }

        ngx_http_civchat_redis_dispatch(rd, cmd, NULL);
    }
}


/* the slot map */

static void
ngx_http_civchat_redis_refresh(ngx_http_civchat_redis_t *rd)
{
    ngx_uint_t                       i, n;
    ngx_msec_t                       wait;
    ngx_msec_int_t                   since;
    ngx_http_civchat_redis_node_t   *node, *best, **nodes;

    static ngx_str_t  argv[] = { ngx_string("CLUSTER"), ngx_string("SLOTS") };

    if (!rd->running || rd->refreshing) {
        return;
    }

    since = ngx_current_msec - rd->refresh_sent;
    wait = ngx_max(rd->map_backoff, NGX_HTTP_CIVCHAT_REDIS_REFRESH);

    if (rd->refresh_sent && since < (ngx_msec_int_t) wait) {
        if (!rd->refresh_ev.timer_set) {
            ngx_add_timer(&rd->refresh_ev, wait - since);
        }

        return;
    }

    /* a node connected, else one that may be tried, in turn */

    nodes = rd->nodes.elts;
    n = rd->nodes.nelts;
    best = NULL;

    for (i = 0; i < n; i++) {
        node = nodes[(rd->next_refresh + i) % n];

        if (node->role == 0 && !node->seed && rd->slots_covered) {
            continue;
        }

        if (node->cmd.ready) {
            best = node;
            break;
        }

        if (best == NULL && node->cmd.c == NULL
            && (ngx_msec_int_t) (ngx_current_msec - node->retry_at) >= 0)
        {
            best = node;
        }
    }

    rd->next_refresh++;

    if (best == NULL) {
        /* every node backs off: later */
        if (!rd->refresh_ev.timer_set) {
            ngx_add_timer(&rd->refresh_ev, NGX_HTTP_CIVCHAT_REDIS_REFRESH);
        }

        return;
    }

    rd->refresh_sent = ngx_current_msec;

    if (ngx_http_civchat_redis_internal(rd, best, 0,
                                    NGX_HTTP_CIVCHAT_REDIS_INTERNAL, 2, argv,
                                    ngx_http_civchat_redis_slots_done, best)
        != NGX_OK)
    {
        if (!rd->refresh_ev.timer_set) {
            ngx_add_timer(&rd->refresh_ev, NGX_HTTP_CIVCHAT_REDIS_REFRESH);
        }

        return;
    }

    rd->refreshing = 1;
}


static void
ngx_http_civchat_redis_refresh_handler(ngx_event_t *ev)
{
    ngx_http_civchat_redis_t  *rd = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_http_civchat_redis_refresh(rd);
}


static void
ngx_http_civchat_redis_slots_done(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_redis_node_t  *from = data;

    ngx_http_civchat_redis_t  *rd;

    rd = from->rd;
    rd->refreshing = 0;

    if (rc != NGX_OK || reply->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY
        || ngx_http_civchat_redis_slot_map(rd, from, reply) != NGX_OK)
    {
        if (rc == NGX_OK && reply->type == NGX_HTTP_CIVCHAT_REDIS_ERROR
            && !rd->map_failed)
        {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "civchat_redis \"%V\": CLUSTER SLOTS on %V: %V",
                          &rd->name, &from->name, &reply->str);
        }

        /* another node, later and later */

        rd->map_failed = 1;
        rd->map_backoff = rd->map_backoff
                          ? ngx_min(rd->map_backoff * 2, rd->max_backoff)
                          : NGX_HTTP_CIVCHAT_REDIS_REFRESH;

        if (!rd->refresh_ev.timer_set && !ngx_exiting) {
            ngx_add_timer(&rd->refresh_ev, rd->map_backoff);
        }

        return;
    }

    rd->map_failed = 0;
    rd->map_backoff = 0;
    rd->refreshed = ngx_current_msec;

    if (rd->stats) {
        (void) ngx_atomic_fetch_add(&rd->stats->refreshes, 1);
    }

    ngx_http_civchat_redis_gauges(rd);

    /* what waited for a map goes now */

    if (!ngx_queue_empty(&rd->retry)) {
        if (rd->retry_ev.timer_set) {
            ngx_del_timer(&rd->retry_ev);
        }

        ngx_post_event(&rd->retry_ev, &ngx_posted_events);
    }

    if (!rd->resub_ev.timer_set && !ngx_exiting) {
        ngx_add_timer(&rd->resub_ev, 1);
    }
}


/*
 * CLUSTER SLOTS: [[start, end, [ip, port, id, ...], [replica...], ...]
 * ...].  Anything that is not that is refused whole.
 */

static ngx_int_t
ngx_http_civchat_redis_slot_map(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *from, ngx_http_civchat_redis_reply_t *reply)
{
    u_char                           text[NGX_SOCKADDR_STRLEN + 16], *p;
    int64_t                          s;
    ngx_uint_t                       i, j, covered;
    ngx_http_civchat_redis_node_t   *node, **nodes;
    ngx_http_civchat_redis_reply_t  *range, *n;

    /* all of it is checked before any of it is used */

    for (i = 0; i < reply->nelts; i++) {
        range = &reply->elts[i];

        if (range->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY || range->nelts < 3
            || range->elts[0].type != NGX_HTTP_CIVCHAT_REDIS_INTEGER
            || range->elts[1].type != NGX_HTTP_CIVCHAT_REDIS_INTEGER
            || range->elts[0].integer < 0
            || range->elts[0].integer > range->elts[1].integer
            || range->elts[1].integer >= NGX_HTTP_CIVCHAT_REDIS_SLOTS)
        {
            goto invalid;
        }

        for (j = 2; j < range->nelts; j++) {
            n = &range->elts[j];

            if (n->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY || n->nelts < 2
                || n->elts[0].type != NGX_HTTP_CIVCHAT_REDIS_STRING
                || n->elts[1].type != NGX_HTTP_CIVCHAT_REDIS_INTEGER
                || n->elts[0].str.len > NGX_SOCKADDR_STRLEN
                || n->elts[1].integer < 1 || n->elts[1].integer > 65535)
            {
                goto invalid;
            }
        }
    }

    nodes = rd->nodes.elts;

    for (i = 0; i < rd->nodes.nelts; i++) {
        nodes[i]->role = 0;
    }

    ngx_memzero(rd->slots, NGX_HTTP_CIVCHAT_REDIS_SLOTS
                           * sizeof(ngx_http_civchat_redis_node_t *));

    for (i = 0; i < reply->nelts; i++) {
        range = &reply->elts[i];

        for (j = 2; j < range->nelts; j++) {
            n = &range->elts[j];

            /* "?": a node that does not know its address yet */
            if (n->elts[0].str.len == 1 && n->elts[0].str.data[0] == '?') {
                continue;
            }

            p = ngx_cpymem(text, n->elts[0].str.data, n->elts[0].str.len);
            p = ngx_sprintf(p, ":%L", n->elts[1].integer);

            node = ngx_http_civchat_redis_node_text(rd, text, p - text, from);
            if (node == NULL) {
                continue;
            }

            if (j > 2) {
                if (node->role == 0) {
                    node->role = NGX_HTTP_CIVCHAT_REDIS_REPLICA;
                }

                continue;
            }

            node->role = NGX_HTTP_CIVCHAT_REDIS_MASTER;

            for (s = range->elts[0].integer; s <= range->elts[1].integer; s++)
            {
                rd->slots[s] = node;
            }
        }
    }

    covered = 0;

    for (i = 0; i < NGX_HTTP_CIVCHAT_REDIS_SLOTS; i++) {
        if (rd->slots[i] != NULL) {
            covered++;
        }
    }

    rd->slots_covered = covered;

    return NGX_OK;

invalid:

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "civchat_redis \"%V\": %V answered CLUSTER SLOTS with "
                  "what is not a slot map", &rd->name, &from->name);

    return NGX_ERROR;
}


static void
ngx_http_civchat_redis_auth_done(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_redis_conn_t  *conn = data;

    ngx_http_civchat_redis_t  *rd;

    if (rc != NGX_OK || reply->type != NGX_HTTP_CIVCHAT_REDIS_ERROR
        || conn->c == NULL)
    {
        return;
    }

    rd = conn->node->rd;

    if (!conn->node->failed) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "civchat_redis \"%V\": AUTH on %V: %V", &rd->name,
                      &conn->node->name, &reply->str);
    }

    /* what follows it would be refused: the connection is given up */
    conn->node->failed = 1;
    ngx_http_civchat_redis_fail(conn, "AUTH failed");
}


static void
ngx_http_civchat_redis_ping_done(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_redis_node_t  *node = data;

    ngx_http_civchat_redis_t  *rd;

    rd = node->rd;
    node->ping = 0;

    if (rc != NGX_OK || reply->type == NGX_HTTP_CIVCHAT_REDIS_ERROR) {
        return;
    }

    rd->worker->rtt_us = (ngx_atomic_t) (ngx_http_civchat_redis_usec()
                                         - node->ping_us);
}


/*
 * Every ping= interval: a PING to every node of the map (and to the
 * seeds while there is none), the subscriber connections too, the map
 * asked again when it is not whole or a master fails, and every
 * NGX_HTTP_CIVCHAT_REDIS_REMAP anyway.
 */

static void
ngx_http_civchat_redis_health_handler(ngx_event_t *ev)
{
    ngx_uint_t                       i, remap;
    ngx_http_civchat_redis_t        *rd;
    ngx_http_civchat_redis_node_t   *node, **nodes;

    static ngx_str_t  ping[] = { ngx_string("PING") };

    rd = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    remap = (rd->slots_covered < NGX_HTTP_CIVCHAT_REDIS_SLOTS
             || ngx_current_msec - rd->refreshed
                >= NGX_HTTP_CIVCHAT_REDIS_REMAP);

    nodes = rd->nodes.elts;

    for (i = 0; i < rd->nodes.nelts; i++) {
        node = nodes[i];

        if (node->role == NGX_HTTP_CIVCHAT_REDIS_MASTER && node->failed) {
            remap = 1;
        }

        if ((node->role == 0 && (rd->slots_covered || !node->seed))
            || (node->cmd.c == NULL
                && (ngx_msec_int_t) (ngx_current_msec - node->retry_at) < 0))
        {
            continue;
        }

        if (!node->ping) {
            node->ping_us = ngx_http_civchat_redis_usec();

            if (ngx_http_civchat_redis_internal(rd, node, 0,
                                    NGX_HTTP_CIVCHAT_REDIS_INTERNAL, 1, ping,
                                    ngx_http_civchat_redis_ping_done, node)
                == NGX_OK)
            {
                node->ping = 1;
            }
        }

        if (node->sub.ready && ngx_queue_empty(&node->sub.waiting)) {
            (void) ngx_http_civchat_redis_internal(rd, node, 1,
                                    NGX_HTTP_CIVCHAT_REDIS_SUBPING, 1, ping,
                                    NULL, NULL);
        }
    }

    if (remap) {
        ngx_http_civchat_redis_refresh(rd);
    }

    ngx_http_civchat_redis_gauges(rd);

    if (!rd->resub_ev.timer_set) {
        ngx_add_timer(&rd->resub_ev, 1);
    }

    ngx_add_timer(ev, rd->ping);
}


static void
ngx_http_civchat_redis_gauges(ngx_http_civchat_redis_t *rd)
{
    ngx_uint_t                        i, m, r, mu, ru;
    ngx_http_civchat_redis_node_t   **nodes;
    ngx_http_civchat_redis_worker_t  *w;

    if (!rd->running) {
        return;
    }

    m = r = mu = ru = 0;
    nodes = rd->nodes.elts;

    for (i = 0; i < rd->nodes.nelts; i++) {
        if (nodes[i]->role == NGX_HTTP_CIVCHAT_REDIS_MASTER) {
            m++;
            mu += nodes[i]->cmd.ready;

        } else if (nodes[i]->role == NGX_HTTP_CIVCHAT_REDIS_REPLICA) {
            r++;
            ru += nodes[i]->cmd.ready;
        }
    }

    w = rd->worker;
    w->masters = m;
    w->replicas = r;
    w->masters_up = mu;
    w->replicas_up = ru;
    w->slots = rd->slots_covered;
}


/* pub/sub */

ngx_http_civchat_redis_sub_t *
ngx_http_civchat_redis_subscribe(ngx_http_civchat_redis_t *rd,
    ngx_str_t *channel, ngx_uint_t sharded,
    ngx_http_civchat_redis_message_pt handler, void *data)
{
    ngx_http_civchat_redis_sub_t      *sub;
    ngx_http_civchat_redis_channel_t  *ch;

    if (!rd->running) {
        return NULL;
    }

    ch = ngx_http_civchat_redis_channel(rd, channel);

    if (ch == NULL) {
        ch = ngx_alloc(sizeof(ngx_http_civchat_redis_channel_t)
                       + channel->len, rd->log);
        if (ch == NULL) {
            return NULL;
        }

        ngx_memzero(ch, sizeof(ngx_http_civchat_redis_channel_t));

        ch->sn.str.data = (u_char *) (ch + 1);
        ch->sn.str.len = channel->len;
        ngx_memcpy(ch->sn.str.data, channel->data, channel->len);
        ch->sn.node.key = ngx_crc32_long(channel->data, channel->len);

        ch->rd = rd;
        ch->sharded = sharded;
        ch->slot = ngx_http_civchat_redis_keyslot(channel->data,
                                                  channel->len);
        ngx_queue_init(&ch->subs);

        ngx_rbtree_insert(&rd->channels, &ch->sn.node);
        ngx_queue_insert_tail(&rd->channel_list, &ch->all);

        if (!rd->resub_ev.timer_set) {
            ngx_add_timer(&rd->resub_ev, 1);
        }
    }

    sub = ngx_alloc(sizeof(ngx_http_civchat_redis_sub_t), rd->log);
    if (sub == NULL) {
        if (ngx_queue_empty(&ch->subs)) {
            ngx_http_civchat_redis_channel_free(rd, ch);
        }

        return NULL;
    }

    sub->channel = ch;
    sub->handler = handler;
    sub->data = data;

    ngx_queue_insert_tail(&ch->subs, &sub->queue);

    return sub;
}


void
ngx_http_civchat_redis_unsubscribe(ngx_http_civchat_redis_sub_t *sub)
{
    ngx_http_civchat_redis_channel_t  *ch;

    ch = sub->channel;

    if (ch->delivering) {
        /* freed once the message has been delivered */
        sub->handler = NULL;
        return;
    }

    ngx_queue_remove(&sub->queue);
    ngx_free(sub);

    if (ngx_queue_empty(&ch->subs)) {
        ngx_http_civchat_redis_channel_free(ch->rd, ch);
    }
}


static ngx_http_civchat_redis_channel_t *
ngx_http_civchat_redis_channel(ngx_http_civchat_redis_t *rd, ngx_str_t *name)
{
    ngx_str_node_t  *sn;

    sn = ngx_str_rbtree_lookup(&rd->channels, name,
                               ngx_crc32_long(name->data, name->len));

    if (sn == NULL) {
        return NULL;
    }

    return (ngx_http_civchat_redis_channel_t *) sn;
}


/* an argument of a command the client built: its own well-formed RESP */

static void
ngx_http_civchat_redis_cmd_arg(ngx_http_civchat_redis_cmd_t *cmd,
    ngx_uint_t index, ngx_str_t *arg)
{
    u_char      *p;
    ngx_int_t    len;
    ngx_uint_t   i;

    p = ngx_strlchr(cmd->buf, cmd->buf + cmd->len, LF) + 1;

    for (i = 0; ; i++) {
        len = ngx_atoi(p + 1, ngx_strlchr(p, cmd->buf + cmd->len, CR)
                              - (p + 1));
        p = ngx_strlchr(p, cmd->buf + cmd->len, LF) + 1;

        if (i == index) {
            arg->data = p;
            arg->len = len;
            return;
        }

        p += len + 2;
    }
}


/*
 * A reply on a subscriber connection: a message, the confirmation of a
 * command at the head of the queue, or the server saying that a channel
 * is no longer subscribed there (its slot moved).
 */

static void
ngx_http_civchat_redis_sub_reply(ngx_http_civchat_redis_conn_t *conn,
    u_char *start, size_t len)
{
    ngx_str_t                          *kind, name, arg, argv[2];
    ngx_uint_t                          slot;
    ngx_queue_t                        *q;
    ngx_http_civchat_redis_t           *rd;
    ngx_http_civchat_redis_cmd_t       *head;
    ngx_http_civchat_redis_sub_t       *sub;
    ngx_http_civchat_redis_node_t      *node;
    ngx_http_civchat_redis_reply_t     *reply;
    ngx_http_civchat_redis_channel_t   *ch;

    node = conn->node;
    rd = node->rd;
    head = NULL;

    if (!ngx_queue_empty(&conn->waiting)) {
        head = ngx_queue_data(ngx_queue_head(&conn->waiting),
                              ngx_http_civchat_redis_cmd_t, queue);
    }

    if (start[0] != '*') {
        /* AUTH's +OK or error, +PONG before a subscription, an error */

        if (head == NULL) {
            ngx_http_civchat_redis_fail(conn, "the server sent a reply to "
                                              "no command");
            return;
        }

        ngx_queue_remove(&head->queue);

        if (head->kind == NGX_HTTP_CIVCHAT_REDIS_INTERNAL) {
            ngx_http_civchat_redis_deliver(conn, head, start, len);
            return;
        }

        if (start[0] == '-' && head->kind == NGX_HTTP_CIVCHAT_REDIS_SUB) {
            ngx_http_civchat_redis_cmd_arg(head, 1, &name);
            ch = ngx_http_civchat_redis_channel(rd, &name);

            if (rd->stats) {
                (void) ngx_atomic_fetch_add(&rd->stats->errors, 1);
            }

            if (ngx_http_civchat_redis_moved(rd, conn, start, len, &slot)
                != NULL)
            {
                /* the channel's slot has another master: there, soon */
                if (ch != NULL && ch->node == node) {
                    ngx_http_civchat_redis_channel_lost(rd, ch,
                                                NGX_HTTP_CIVCHAT_REDIS_RETRY);
                }

            } else {
                ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                              "civchat_redis \"%V\": subscribing to \"%V\" "
                              "on %V: %*s", &rd->name, &name, &node->name,
                              len - 3, start + 1);

                if (ch != NULL && ch->node == node) {
                    ngx_http_civchat_redis_channel_lost(rd, ch, rd->ping);
                }
            }
        }

        ngx_http_civchat_redis_cmd_free(head);
        return;
    }

    reply = ngx_http_civchat_redis_build(conn->pool, start, len, 0);

    if (reply == NULL) {
        ngx_http_civchat_redis_fail(conn, "no memory");
        return;
    }

    if (reply->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY || reply->nelts < 2
        || reply->elts[0].type != NGX_HTTP_CIVCHAT_REDIS_STRING)
    {
        goto done;
    }

    kind = &reply->elts[0].str;

    if (reply->elts[1].type != NGX_HTTP_CIVCHAT_REDIS_STRING) {
        goto done;
    }

    name = reply->elts[1].str;

    if ((kind->len == 7 && ngx_strncmp(kind->data, "message", 7) == 0)
        || (kind->len == 8 && ngx_strncmp(kind->data, "smessage", 8) == 0))
    {
        if (reply->nelts != 3
            || reply->elts[2].type != NGX_HTTP_CIVCHAT_REDIS_STRING)
        {
            goto done;
        }

        if (rd->stats) {
            (void) ngx_atomic_fetch_add(&rd->stats->messages, 1);
        }

        ch = ngx_http_civchat_redis_channel(rd, &name);

        if (ch == NULL) {
            goto done;
        }

        /* a handler may unsubscribe anyone: they are freed after */

        ch->delivering = 1;

        for (q = ngx_queue_head(&ch->subs);
             q != ngx_queue_sentinel(&ch->subs);
             q = ngx_queue_next(q))
        {
            sub = ngx_queue_data(q, ngx_http_civchat_redis_sub_t, queue);

            if (sub->handler != NULL) {
                sub->handler(sub->data, &ch->sn.str, &reply->elts[2].str);
            }
        }

        ch->delivering = 0;

        q = ngx_queue_head(&ch->subs);

        while (q != ngx_queue_sentinel(&ch->subs)) {
            sub = ngx_queue_data(q, ngx_http_civchat_redis_sub_t, queue);
            q = ngx_queue_next(q);

            if (sub->handler == NULL) {
                ngx_queue_remove(&sub->queue);
                ngx_free(sub);
            }
        }

        if (ngx_queue_empty(&ch->subs)) {
            ngx_http_civchat_redis_channel_free(rd, ch);
        }

        goto done;
    }

    if ((kind->len == 9 && ngx_strncmp(kind->data, "subscribe", 9) == 0)
        || (kind->len == 10 && ngx_strncmp(kind->data, "ssubscribe", 10) == 0))
    {
        if (head != NULL && head->kind == NGX_HTTP_CIVCHAT_REDIS_SUB) {
            ngx_queue_remove(&head->queue);
            ngx_http_civchat_redis_cmd_free(head);
        }

        node->failed = 0;
        node->backoff = 0;

        ch = ngx_http_civchat_redis_channel(rd, &name);

        if (ch != NULL && ch->node == node) {
            ch->state = NGX_HTTP_CIVCHAT_REDIS_ACTIVE;

        } else {
            /* nobody wants it here any more */

            if (kind->len == 9) {
                ngx_str_set(&argv[0], "UNSUBSCRIBE");

            } else {
                ngx_str_set(&argv[0], "SUNSUBSCRIBE");
            }

            argv[1] = name;

            (void) ngx_http_civchat_redis_internal(rd, node, 1,
                                        NGX_HTTP_CIVCHAT_REDIS_UNSUB, 2, argv,
                                        NULL, NULL);
        }

        goto done;
    }

    if ((kind->len == 11 && ngx_strncmp(kind->data, "unsubscribe", 11) == 0)
        || (kind->len == 12
            && ngx_strncmp(kind->data, "sunsubscribe", 12) == 0))
    {
        if (head != NULL && head->kind == NGX_HTTP_CIVCHAT_REDIS_UNSUB) {
            ngx_http_civchat_redis_cmd_arg(head, 1, &arg);

            if (arg.len == name.len
                && ngx_strncmp(arg.data, name.data, name.len) == 0)
            {
                ngx_queue_remove(&head->queue);
                ngx_http_civchat_redis_cmd_free(head);
                goto done;
            }
        }

        /*
         * not asked for: the channel's slot moved away from this node;
         * subscribed again at once, where the map says (a MOVED, if the
         * map is stale, corrects it)
         */

        ch = ngx_http_civchat_redis_channel(rd, &name);

        if (ch != NULL && ch->node == node) {
            ngx_http_civchat_redis_channel_lost(rd, ch, 0);
        }

        goto done;
    }

    if (kind->len == 4 && ngx_strncmp(kind->data, "pong", 4) == 0
        && head != NULL && head->kind == NGX_HTTP_CIVCHAT_REDIS_SUBPING)
    {
        ngx_queue_remove(&head->queue);
        ngx_http_civchat_redis_cmd_free(head);
    }

done:

    if (conn->pool != NULL) {
        ngx_reset_pool(conn->pool);
    }
}


/* a node's subscriber connection is lost: its channels, again, soon */

static void
ngx_http_civchat_redis_sub_lost(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node)
{
    ngx_queue_t                       *q;
    ngx_http_civchat_redis_channel_t  *ch;

    for (q = ngx_queue_head(&rd->channel_list);
         q != ngx_queue_sentinel(&rd->channel_list);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_civchat_redis_channel_t, all);

        if (ch->node == node) {
            ngx_http_civchat_redis_channel_lost(rd, ch,
                                                NGX_HTTP_CIVCHAT_REDIS_RETRY);
        }
    }
}


static void
ngx_http_civchat_redis_channel_lost(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_channel_t *ch, ngx_msec_t delay)
{
    ch->state = NGX_HTTP_CIVCHAT_REDIS_NONE;
    ch->node = NULL;

    if (!rd->running) {
        return;
    }

    if (delay == 0) {
        if (rd->resub_ev.timer_set) {
            ngx_del_timer(&rd->resub_ev);
        }

        ngx_post_event(&rd->resub_ev, &ngx_posted_events);
        return;
    }

    if (!rd->resub_ev.timer_set && !rd->resub_ev.posted) {
        ngx_add_timer(&rd->resub_ev, delay);
    }
}


static void
ngx_http_civchat_redis_channel_free(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_channel_t *ch)
{
    ngx_str_t  argv[2];

    /* a subscription still pending is undone when it is confirmed */

    if (ch->state == NGX_HTTP_CIVCHAT_REDIS_ACTIVE && ch->node != NULL
        && rd->running)
    {
        if (ch->sharded) {
            ngx_str_set(&argv[0], "SUNSUBSCRIBE");

        } else {
            ngx_str_set(&argv[0], "UNSUBSCRIBE");
        }

        argv[1] = ch->sn.str;

        (void) ngx_http_civchat_redis_internal(rd, ch->node, 1,
                                        NGX_HTTP_CIVCHAT_REDIS_UNSUB, 2, argv,
                                        NULL, NULL);
    }

    ngx_rbtree_delete(&rd->channels, &ch->sn.node);
    ngx_queue_remove(&ch->all);
    ngx_free(ch);
}


/* channels not subscribed anywhere: on the node that should have them */

static void
ngx_http_civchat_redis_resub_handler(ngx_event_t *ev)
{
    ngx_str_t                          argv[2];
    ngx_uint_t                         i, waiting;
    ngx_queue_t                       *q;
    ngx_http_civchat_redis_t          *rd;
    ngx_http_civchat_redis_node_t     *node, **nodes;
    ngx_http_civchat_redis_channel_t  *ch;

    rd = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    waiting = 0;

    for (q = ngx_queue_head(&rd->channel_list);
         q != ngx_queue_sentinel(&rd->channel_list);
         q = ngx_queue_next(q))
    {
        ch = ngx_queue_data(q, ngx_http_civchat_redis_channel_t, all);

        if (ch->state != NGX_HTTP_CIVCHAT_REDIS_NONE) {
            continue;
        }

        node = NULL;

        if (ch->sharded) {
            node = rd->slots[ch->slot];

        } else {
            nodes = rd->nodes.elts;

            for (i = 0; i < rd->nodes.nelts; i++) {
                if (nodes[i]->role == NGX_HTTP_CIVCHAT_REDIS_MASTER
                    && !nodes[i]->failed)
                {
                    node = nodes[i];
                    break;
                }
            }
        }

        if (node == NULL) {
            ngx_http_civchat_redis_refresh(rd);
            waiting = 1;
            continue;
        }

        if (ch->sharded) {
            ngx_str_set(&argv[0], "SSUBSCRIBE");

        } else {
            ngx_str_set(&argv[0], "SUBSCRIBE");
        }

        argv[1] = ch->sn.str;

        if (ngx_http_civchat_redis_internal(rd, node, 1,
                                            NGX_HTTP_CIVCHAT_REDIS_SUB, 2,
                                            argv, NULL, NULL)
            != NGX_OK)
        {
            waiting = 1;
            continue;
        }

        ch->state = NGX_HTTP_CIVCHAT_REDIS_PENDING;
        ch->node = node;
    }

    if (waiting && !ev->timer_set) {
        ngx_add_timer(ev, NGX_HTTP_CIVCHAT_REDIS_RETRY);
    }
}


/*
 * The canary: every canary= interval each worker writes its own key
 * (SET with an expiry), reads it back through a script (EVALSHA, so
 * that NOSCRIPT is answered too), and publishes what it wrote on its
 * own sharded channel (SPUBLISH) and on a channel of the whole cluster
 * (PUBLISH), to both of which it is subscribed.
 */

static void
ngx_http_civchat_redis_canary_handler(ngx_event_t *ev)
{
    ngx_str_t                  argv[5];
    ngx_http_civchat_redis_t  *rd;

    rd = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    if (!rd->canary_busy) {
        rd->canary_round++;
        rd->canary_len = ngx_sprintf(rd->canary_value, "%P:%ui", ngx_pid,
                                     rd->canary_round)
                         - rd->canary_value;

        ngx_str_set(&argv[0], "SET");
        argv[1] = rd->canary_key;
        argv[2].data = rd->canary_value;
        argv[2].len = rd->canary_len;
        ngx_str_set(&argv[3], "PX");
        ngx_str_set(&argv[4], "60000");

        if (ngx_http_civchat_redis_command(rd, &rd->canary_key, 5, argv, NULL,
                                           ngx_http_civchat_redis_canary_set,
                                           rd)
            != NULL)
        {
            rd->canary_busy = 1;
        }
    }

    ngx_add_timer(ev, rd->canary);
}


static void
ngx_http_civchat_redis_canary_set(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_redis_t  *rd = data;

    if (rc != NGX_OK || reply->type != NGX_HTTP_CIVCHAT_REDIS_STATUS) {
        ngx_http_civchat_redis_canary_done(rd, 0);
        return;
    }

    if (ngx_http_civchat_redis_eval(rd, rd->canary_script, 1, 1,
                                    &rd->canary_key, NULL,
                                    ngx_http_civchat_redis_canary_get, rd)
        == NULL)
    {
        ngx_http_civchat_redis_canary_done(rd, 0);
    }
}


static void
ngx_http_civchat_redis_canary_get(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_redis_t  *rd = data;

    ngx_str_t   argv[3];
    ngx_uint_t  ok;

    ok = (rc == NGX_OK && reply->type == NGX_HTTP_CIVCHAT_REDIS_STRING
          && reply->str.len == rd->canary_len
          && ngx_strncmp(reply->str.data, rd->canary_value, rd->canary_len)
             == 0);

    if (ok) {
        ngx_str_set(&argv[0], "SPUBLISH");
        argv[1] = rd->canary_channel;
        argv[2].data = rd->canary_value;
        argv[2].len = rd->canary_len;

        (void) ngx_http_civchat_redis_command(rd, &rd->canary_channel, 3,
                                              argv, NULL, NULL, NULL);

        ngx_str_set(&argv[0], "PUBLISH");
        argv[1] = rd->canary_broadcast;

        (void) ngx_http_civchat_redis_command(rd, NULL, 3, argv, NULL, NULL,
                                              NULL);

    } else if (rc == NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "civchat_redis \"%V\": the canary read back what it "
                      "did not write", &rd->name);
    }

    ngx_http_civchat_redis_canary_done(rd, ok);
}


static void
ngx_http_civchat_redis_canary_done(ngx_http_civchat_redis_t *rd,
    ngx_uint_t ok)
{
    rd->canary_busy = 0;
    rd->worker->canary_ok = ok;

    if (rd->stats) {
        (void) ngx_atomic_fetch_add(ok ? &rd->stats->canary_ok
                                       : &rd->stats->canary_failed, 1);
    }
}


static void
ngx_http_civchat_redis_canary_message(void *data, ngx_str_t *channel,
    ngx_str_t *message)
{
}


static uint64_t
ngx_http_civchat_redis_usec(void)
{
    struct timeval  tv;

    ngx_gettimeofday(&tv);

    return (uint64_t) tv.tv_sec * 1000000 + tv.tv_usec;
}


/* civchat_status */

size_t
ngx_http_civchat_redis_status_size(ngx_array_t *clusters)
{
    size_t                      size, line;
    ngx_uint_t                  i;
    ngx_http_civchat_redis_t  **rds;

    if (clusters == NULL) {
        return 0;
    }

    /* generous per line: a name, labels escaped, a 20-digit value */

    size = 4096;
    rds = clusters->elts;

    for (i = 0; i < clusters->nelts; i++) {
        line = 256 + 6 * rds[i]->name.len;

        size += 16 * line
                + NGX_HTTP_CIVCHAT_REDIS_WORKERS
                  * (8 * line + line + 6 * NGX_HTTP_CIVCHAT_REDIS_KEY_MAX);
    }

    return size;
}


u_char *
ngx_http_civchat_redis_status(u_char *p, ngx_array_t *clusters)
{
    ngx_str_t                         key;
    ngx_uint_t                        f, i, w, k;
    ngx_atomic_uint_t                 v;
    ngx_http_civchat_redis_t        **rds;
    ngx_http_civchat_redis_worker_t  *wk;

    static struct {
        const char  *name;
        const char  *help;
        size_t       offset;
    } counters[] = {
        { "civchat_redis_commands_total",
          "Commands written to Redis nodes (retries, redirections and the "
          "client's own included).",
          offsetof(ngx_http_civchat_redis_stats_t, commands) },
        { "civchat_redis_errors_total",
          "Error replies (redirections and retried errors aside).",
          offsetof(ngx_http_civchat_redis_stats_t, errors) },
        { "civchat_redis_failed_total",
          "Commands answered NGX_ERROR: connection lost after sending, "
          "no node in time.",
          offsetof(ngx_http_civchat_redis_stats_t, failed) },
        { "civchat_redis_moved_total",
          "MOVED redirections.",
          offsetof(ngx_http_civchat_redis_stats_t, moved) },
        { "civchat_redis_ask_total",
          "ASK redirections.",
          offsetof(ngx_http_civchat_redis_stats_t, ask) },
        { "civchat_redis_retries_total",
          "Commands tried again (TRYAGAIN, CLUSTERDOWN, LOADING, "
          "MASTERDOWN, or not sent on a lost connection).",
          offsetof(ngx_http_civchat_redis_stats_t, retries) },
        { "civchat_redis_reconnects_total",
          "Connections made again to a node.",
          offsetof(ngx_http_civchat_redis_stats_t, reconnects) },
        { "civchat_redis_slot_refreshes_total",
          "Slot maps read (CLUSTER SLOTS).",
          offsetof(ngx_http_civchat_redis_stats_t, refreshes) },
        { "civchat_redis_script_loads_total",
          "EVALSHA answered NOSCRIPT and sent again as EVAL.",
          offsetof(ngx_http_civchat_redis_stats_t, script_loads) },
        { "civchat_redis_messages_total",
          "Pub/sub messages received.",
          offsetof(ngx_http_civchat_redis_stats_t, messages) }
    };

    static struct {
        const char  *name;
        const char  *help;
        const char  *labels;
        size_t       offset;
    } gauges[] = {
        { "civchat_redis_nodes",
          "Nodes of the slot map a worker knows and is connected to.",
          "role=\"master\",state=\"known\"",
          offsetof(ngx_http_civchat_redis_worker_t, masters) },
        { NULL, NULL, "role=\"master\",state=\"connected\"",
          offsetof(ngx_http_civchat_redis_worker_t, masters_up) },
        { NULL, NULL, "role=\"replica\",state=\"known\"",
          offsetof(ngx_http_civchat_redis_worker_t, replicas) },
        { NULL, NULL, "role=\"replica\",state=\"connected\"",
          offsetof(ngx_http_civchat_redis_worker_t, replicas_up) },
        { "civchat_redis_slots_covered",
          "Slots with a master in a worker's slot map.", NULL,
          offsetof(ngx_http_civchat_redis_worker_t, slots) },
        { "civchat_redis_rtt_seconds",
          "The last PING's round trip, per worker.", NULL,
          offsetof(ngx_http_civchat_redis_worker_t, rtt_us) }
    };

    if (clusters == NULL) {
        return p;
    }

    rds = clusters->elts;

    for (f = 0; f < sizeof(counters) / sizeof(counters[0]); f++) {
        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s counter\n",
                        counters[f].name, counters[f].help, counters[f].name);

        for (i = 0; i < clusters->nelts; i++) {
            if (rds[i]->stats == NULL) {
                continue;
            }

            v = *(ngx_atomic_t *) ((u_char *) rds[i]->stats
                                   + counters[f].offset);

            p = ngx_sprintf(p, "%s{cluster=\"", counters[f].name);
            p = ngx_http_civchat_redis_label(p, &rds[i]->name);
            p = ngx_sprintf(p, "\"} %uA\n", v);
        }
    }

    p = ngx_sprintf(p, "# HELP civchat_redis_canary_total Canary rounds "
                    "(write, read back through a script), by result.\n"
                    "# TYPE civchat_redis_canary_total counter\n");

    for (i = 0; i < clusters->nelts; i++) {
        if (rds[i]->stats == NULL) {
            continue;
        }

        for (k = 0; k < 2; k++) {
            p = ngx_sprintf(p, "civchat_redis_canary_total{cluster=\"");
            p = ngx_http_civchat_redis_label(p, &rds[i]->name);
            p = ngx_sprintf(p, "\",result=\"%s\"} %uA\n",
                            k ? "failed" : "ok",
                            k ? rds[i]->stats->canary_failed
                              : rds[i]->stats->canary_ok);
        }
    }

    for (f = 0; f < sizeof(gauges) / sizeof(gauges[0]); f++) {
        if (gauges[f].name != NULL) {
            p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s gauge\n",
                            gauges[f].name, gauges[f].help, gauges[f].name);
        }

        for (i = 0; i < clusters->nelts; i++) {
            if (rds[i]->stats == NULL) {
                continue;
            }

            for (w = 0; w < NGX_HTTP_CIVCHAT_REDIS_WORKERS; w++) {
                wk = &rds[i]->stats->workers[w];

                if (wk->pid == 0) {
                    continue;
                }

                v = *(ngx_atomic_t *) ((u_char *) wk + gauges[f].offset);

                p = ngx_sprintf(p, "%s{cluster=\"",
                                gauges[f].name ? gauges[f].name
                                               : "civchat_redis_nodes");
                p = ngx_http_civchat_redis_label(p, &rds[i]->name);
                p = ngx_sprintf(p, "\",worker=\"%ui\"", w);

                if (gauges[f].labels) {
                    p = ngx_sprintf(p, ",%s", gauges[f].labels);
                }

                if (gauges[f].offset
                    == offsetof(ngx_http_civchat_redis_worker_t, rtt_us))
                {
                    p = ngx_sprintf(p, "} %uA.%06uA\n", v / 1000000,
                                    v % 1000000);

                } else {
                    p = ngx_sprintf(p, "} %uA\n", v);
                }
            }
        }
    }

    p = ngx_sprintf(p, "# HELP civchat_redis_canary_ok Whether a worker's "
                    "last canary round succeeded (its key and slot as "
                    "labels).\n# TYPE civchat_redis_canary_ok gauge\n");

    for (i = 0; i < clusters->nelts; i++) {
        if (rds[i]->stats == NULL || !rds[i]->canary) {
            continue;
        }

        for (w = 0; w < NGX_HTTP_CIVCHAT_REDIS_WORKERS; w++) {
            wk = &rds[i]->stats->workers[w];

            if (wk->pid == 0 || wk->canary_len == 0) {
                continue;
            }

            key.data = wk->canary;
            key.len = ngx_min(wk->canary_len, NGX_HTTP_CIVCHAT_REDIS_KEY_MAX);

            p = ngx_sprintf(p, "civchat_redis_canary_ok{cluster=\"");
            p = ngx_http_civchat_redis_label(p, &rds[i]->name);
            p = ngx_sprintf(p, "\",worker=\"%ui\",key=\"", w);
            p = ngx_http_civchat_redis_label(p, &key);
            p = ngx_sprintf(p, "\",slot=\"%uA\"} %uA\n", wk->canary_slot,
                            wk->canary_ok);
        }
    }

    return p;
}


/* a Prometheus label value: backslash, quote and newline escaped */

static u_char *
ngx_http_civchat_redis_label(u_char *p, ngx_str_t *value)
{
    u_char  *s, *last;

    last = value->data + value->len;

    for (s = value->data; s < last; s++) {
        if (*s == '\\' || *s == '"') {
            *p++ = '\\';
            *p++ = *s;

        } else if (*s == '\n') {
            *p++ = '\\';
            *p++ = 'n';

        } else {
            *p++ = *s;
        }
    }

    return p;
}
