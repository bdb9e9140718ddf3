
/*
 * Copyright (C) civchat developers
 */


#ifndef _NGX_HTTP_CIVCHAT_REDIS_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/*
 * An asynchronous client for Redis Cluster on nginx's event loop
 * (redis_*.c, which share ngx_http_civchat_redis_int.h; the RESP2 reply
 * parser and the key slot are in resp.c).
 *
 * A cluster is defined with "civchat_redis NAME host:port ...;" at the
 * http level.  Each worker keeps its own slot map (CLUSTER SLOTS, asked
 * of the seed nodes, then of any node it knows) and one connection to
 * each node it talks to, on which commands are pipelined: many commands
 * of many requests are outstanding at once and the replies are matched
 * to them in order.  Nothing blocks: a command is queued and its handler
 * is called later from the event loop, never from inside the call that
 * queued it.
 *
 * What the client does by itself:
 *
 *   - routes a command to the master of its key's slot (CRC16 of the
 *     key, or of its {hash tag}); without a key, to any master;
 *   - MOVED: the slot is taken from the answer at once, the map is asked
 *     again (at most every 100 ms), the command is sent to the new node;
 *   - ASK: ASKING, then the command, on the node named, map unchanged;
 *   - TRYAGAIN, CLUSTERDOWN, LOADING, MASTERDOWN: the command is tried
 *     again every 100 ms until its time is up;
 *   - AUTH first on every connection when a password is configured;
 *   - connect, send and read timeouts (timeout=): a connection on which
 *     a reply is due and nothing arrives for that long is closed;
 *   - a lost connection: the commands it had sent get NGX_ERROR (they may
 *     or may not have been carried out), those it had not sent yet are
 *     routed again; the node is reconnected with backoff (100 ms,
 *     doubling up to retry=);
 *   - a command that no node took within timeout gets NGX_ERROR, so a
 *     handler is called within about twice timeout in the worst case;
 *   - EVALSHA answered NOSCRIPT is sent again as EVAL (which loads the
 *     script on that node);
 *   - subscriptions (SSUBSCRIBE, sharded pub/sub, or SUBSCRIBE) on a
 *     connection of their own per node, subscribed again after that
 *     connection is lost, after a failover, and when the server says
 *     the channel's slot moved;
 *   - health: every ping= interval each worker PINGs every node of the
 *     map (masters and replicas), and asks for the map again when slots
 *     are missing or a master fails (and every 10 s in any case).
 *
 * A request that waits for Redis does what a proxied one does: count
 * r->main->count++, return NGX_DONE, finalize in the handler; and add a
 * pool cleanup that calls ngx_http_civchat_redis_cancel() in case the
 * request ends first (the handler clears the command it kept: a command
 * is freed once its handler has been called).
 *
 * When a worker exits, the commands still waiting are dropped without
 * their handlers being called: write-behind code flushes when it sees
 * ngx_exiting, and the client keeps a gracefully exiting worker alive
 * until what was sent is answered or has failed.
 */


typedef struct ngx_http_civchat_redis_s  ngx_http_civchat_redis_t;
typedef struct ngx_http_civchat_redis_cmd_s  ngx_http_civchat_redis_cmd_t;
typedef struct ngx_http_civchat_redis_script_s
    ngx_http_civchat_redis_script_t;
typedef struct ngx_http_civchat_redis_sub_s  ngx_http_civchat_redis_sub_t;
typedef struct ngx_http_civchat_redis_reply_s
    ngx_http_civchat_redis_reply_t;


/* reply types, RESP2 */
#define NGX_HTTP_CIVCHAT_REDIS_STATUS    1    /* +OK */
#define NGX_HTTP_CIVCHAT_REDIS_ERROR     2    /* -ERR ... */
#define NGX_HTTP_CIVCHAT_REDIS_INTEGER   3    /* :42 */
#define NGX_HTTP_CIVCHAT_REDIS_STRING    4    /* $3 abc */
#define NGX_HTTP_CIVCHAT_REDIS_ARRAY     5    /* *2 ... */
#define NGX_HTTP_CIVCHAT_REDIS_NIL       6    /* $-1 or *-1 */


struct ngx_http_civchat_redis_reply_s {
    ngx_uint_t                        type;
    int64_t                           integer;  /* INTEGER */
    ngx_str_t                         str;      /* STATUS, ERROR, STRING */
    ngx_uint_t                        nelts;    /* ARRAY */
    ngx_http_civchat_redis_reply_t   *elts;
};


/*
 * A command's handler, called once (unless the command was cancelled):
 *
 *   rc NGX_OK     reply is what Redis answered, which may be an ERROR
 *                 reply (WRONGTYPE, a script's error, ...): redirections
 *                 never reach the handler, and the retried errors
 *                 (TRYAGAIN, ...) only once the command's time is up;
 *   rc NGX_ERROR  no answer: the connection was lost after the command
 *                 was sent, no node took it within timeout, no memory;
 *                 reply is an ERROR reply saying why.
 *
 * The reply is built in the pool the command was given, or, with none,
 * in a pool of the connection (its strings pointing into the read
 * buffer) that lives only until the handler returns: copy what you keep.
 */

typedef void (*ngx_http_civchat_redis_handler_pt)(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);

/*
 * A message on a subscribed channel; both strings live until return.
 * Called with message NULL when the subscription is made (again), with
 * channel set, or lost (channel NULL): what was published in between
 * did not arrive.
 */
typedef void (*ngx_http_civchat_redis_message_pt)(void *data,
    ngx_str_t *channel, ngx_str_t *message);


/*
 * A command: argv[0 .. argc - 1] (argv[0] the command's name), sent to
 * the master of slot_key's slot (NULL: any master).  pool: where the
 * reply is built (NULL: see above); handler may be NULL (the reply is
 * dropped).  Returns the command, valid until its handler is called or
 * it is cancelled, or NULL when it cannot be queued (no memory, or the
 * cluster does not run in this process: at configuration time).
 */
ngx_http_civchat_redis_cmd_t *ngx_http_civchat_redis_command(
    ngx_http_civchat_redis_t *rd, ngx_str_t *slot_key, ngx_uint_t argc,
    ngx_str_t *argv, ngx_pool_t *pool,
    ngx_http_civchat_redis_handler_pt handler, void *data);

/*
 * A Lua script, made at configuration time (its SHA1 computed once),
 * and EVALSHA of it: argv[0 .. nkeys - 1] are its keys (the first one
 * routes it; all must be in one slot), the rest its arguments.  NOSCRIPT
 * is answered by sending EVAL with the script's text.
 */
ngx_http_civchat_redis_script_t *ngx_http_civchat_redis_script(
    ngx_conf_t *cf, ngx_str_t *text);
ngx_http_civchat_redis_cmd_t *ngx_http_civchat_redis_eval(
    ngx_http_civchat_redis_t *rd, ngx_http_civchat_redis_script_t *script,
    ngx_uint_t nkeys, ngx_uint_t argc, ngx_str_t *argv, ngx_pool_t *pool,
    ngx_http_civchat_redis_handler_pt handler, void *data);

/* the handler will not be called; the reply, if any, is dropped */
void ngx_http_civchat_redis_cancel(ngx_http_civchat_redis_cmd_t *cmd);

/*
 * Subscribes to a channel: sharded (SSUBSCRIBE, on the master of the
 * channel's slot, Redis 7) or not (SUBSCRIBE, on any master).  Several
 * subscribers of one channel in a worker share one subscription.  The
 * channel is copied.  Returns NULL without memory or outside a worker.
 */
ngx_http_civchat_redis_sub_t *ngx_http_civchat_redis_subscribe(
    ngx_http_civchat_redis_t *rd, ngx_str_t *channel, ngx_uint_t sharded,
    ngx_http_civchat_redis_message_pt handler, void *data);
void ngx_http_civchat_redis_unsubscribe(ngx_http_civchat_redis_sub_t *sub);

/* a cluster by name, at configuration time (NULL: none so named) */
ngx_http_civchat_redis_t *ngx_http_civchat_redis_find(ngx_array_t *clusters,
    ngx_str_t *name);

/* the slot of a key: CRC16 (XMODEM) of it or of its {hash tag} */
ngx_uint_t ngx_http_civchat_redis_keyslot(u_char *key, size_t len);


/* the module's glue (module.c, status.c) */
char *ngx_http_civchat_redis_add(ngx_conf_t *cf, ngx_array_t **clusters,
    ngx_str_t *args, ngx_uint_t n);
void ngx_http_civchat_redis_init_process(ngx_http_civchat_redis_t *rd,
    ngx_cycle_t *cycle);
void ngx_http_civchat_redis_exit_process(ngx_http_civchat_redis_t *rd,
    ngx_cycle_t *cycle);
size_t ngx_http_civchat_redis_status_size(ngx_array_t *clusters);
u_char *ngx_http_civchat_redis_status(u_char *p, ngx_array_t *clusters);


/*
 * The reply parser (resp.c), safe against any bytes: sizes are bounded,
 * nesting is bounded and walked without recursion.  scan() finds where
 * a reply ends, resumably (its state survives between reads, so a long
 * reply is not scanned again from its start); build() makes the tree of
 * a reply that scan() accepted.
 */

#define NGX_HTTP_CIVCHAT_REDIS_DEPTH     32          /* nested arrays */
#define NGX_HTTP_CIVCHAT_REDIS_ELTS      (1 << 20)   /* elements a reply */
#define NGX_HTTP_CIVCHAT_REDIS_BULK      (64 << 20)  /* bytes a string */
#define NGX_HTTP_CIVCHAT_REDIS_LINE      65536       /* a status line */


typedef struct {
    size_t                            pos;      /* bytes of the reply */
    ngx_uint_t                        depth;
    ngx_uint_t                        elts;
    int64_t                           left[NGX_HTTP_CIVCHAT_REDIS_DEPTH + 1];
} ngx_http_civchat_redis_scan_t;


void ngx_http_civchat_redis_scan_init(ngx_http_civchat_redis_scan_t *s);
/* NGX_OK: [start, start + s->pos) is one reply; NGX_AGAIN; NGX_ERROR */
ngx_int_t ngx_http_civchat_redis_scan(ngx_http_civchat_redis_scan_t *s,
    u_char *start, u_char *last);
/* copy: strings copied into the pool, else pointing into [start, ...) */
ngx_http_civchat_redis_reply_t *ngx_http_civchat_redis_build(
    ngx_pool_t *pool, u_char *start, size_t len, ngx_uint_t copy);


#endif /* _NGX_HTTP_CIVCHAT_REDIS_H_INCLUDED_ */
