
/*
 * Copyright (C) civchat developers
 */


#ifndef _NGX_HTTP_CIVCHAT_REDIS_INT_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_REDIS_INT_H_INCLUDED_


/*
 * What the files of the Redis Cluster client share (see
 * ngx_http_civchat_redis.h for what the client does); nothing else
 * includes this.  Connections are made with ngx_event_connect_peer(),
 * timers and backoff as in the HTTP store (http.c, after nginx's OCSP
 * client).
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
 *
 * The files, each calling only those below it (util/layers.pl):
 *
 *   redis_worker.c   starts and stops a worker's client; health PINGs,
 *                    the canary
 *   redis_pubsub.c   subscriptions, on the subscriber connections
 *   redis_command.c  commands: routing, redirections, retries
 *   redis_cluster.c  the nodes and the slot map (CLUSTER SLOTS, MOVED)
 *   redis_conn.c     a node's connections: connect, write, read, lose;
 *                    commands queued, answered, failed
 *
 * and redis_conf.c, the directive and the status page, beside them.  The
 * connections hand what they read, and what they lose, to the layers
 * above through the hooks in ngx_http_civchat_redis_t, set when a worker
 * starts.
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


/* a whole reply read on a connection: redis_command.c, redis_pubsub.c */
typedef void (*ngx_http_civchat_redis_input_pt)(
    ngx_http_civchat_redis_conn_t *conn, u_char *start, size_t len);

/* a node's subscriber connection was lost: redis_pubsub.c */
typedef void (*ngx_http_civchat_redis_lost_pt)(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node);

/* the slot map is to be asked for again: redis_cluster.c */
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
     * what the connections (redis_conn.c) call above them, set by
     * init_process: a reply on a command connection, one on a subscriber
     * connection, a subscriber connection lost, the map to be asked for
     * again
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


/* redis_conn.c: commands and a node's connections */
ngx_http_civchat_redis_cmd_t *ngx_http_civchat_redis_cmd(
    ngx_http_civchat_redis_t *rd, ngx_uint_t argc, ngx_str_t *argv,
    size_t extra);
void ngx_http_civchat_redis_cmd_free(ngx_http_civchat_redis_cmd_t *cmd);
void ngx_http_civchat_redis_deliver(ngx_http_civchat_redis_conn_t *conn,
    ngx_http_civchat_redis_cmd_t *cmd, u_char *start, size_t len);
void ngx_http_civchat_redis_fail_cmd(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd, const char *reason);
void ngx_http_civchat_redis_retry_add(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd);
ngx_int_t ngx_http_civchat_redis_internal(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node, ngx_uint_t sub, ngx_uint_t kind,
    ngx_uint_t argc, ngx_str_t *argv,
    ngx_http_civchat_redis_handler_pt handler, void *data);
ngx_int_t ngx_http_civchat_redis_connect(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_conn_t *conn);
void ngx_http_civchat_redis_append(ngx_http_civchat_redis_conn_t *conn,
    ngx_http_civchat_redis_cmd_t *cmd);
void ngx_http_civchat_redis_close(ngx_http_civchat_redis_conn_t *conn);
void ngx_http_civchat_redis_fail(ngx_http_civchat_redis_conn_t *conn,
    const char *reason);
void ngx_http_civchat_redis_gauges(ngx_http_civchat_redis_t *rd);

/* redis_cluster.c: the nodes and the slot map */
ngx_http_civchat_redis_node_t *ngx_http_civchat_redis_node(
    ngx_http_civchat_redis_t *rd, struct sockaddr *sa, socklen_t socklen,
    ngx_uint_t create);
ngx_http_civchat_redis_node_t *ngx_http_civchat_redis_moved(
    ngx_http_civchat_redis_t *rd, ngx_http_civchat_redis_conn_t *conn,
    u_char *start, size_t len, ngx_uint_t *slotp);
void ngx_http_civchat_redis_refresh(ngx_http_civchat_redis_t *rd);
void ngx_http_civchat_redis_refresh_handler(ngx_event_t *ev);

/* redis_command.c: routing, redirections, retries */
void ngx_http_civchat_redis_reply(ngx_http_civchat_redis_conn_t *conn,
    u_char *start, size_t len);
void ngx_http_civchat_redis_retry_handler(ngx_event_t *ev);

/* redis_pubsub.c: subscriptions */
void ngx_http_civchat_redis_sub_reply(ngx_http_civchat_redis_conn_t *conn,
    u_char *start, size_t len);
void ngx_http_civchat_redis_sub_lost(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node);
void ngx_http_civchat_redis_resub_handler(ngx_event_t *ev);


#endif /* _NGX_HTTP_CIVCHAT_REDIS_INT_H_INCLUDED_ */
