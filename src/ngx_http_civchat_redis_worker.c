
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_redis_int.h"


/*
 * A worker's client: started in init_process (its nodes, events and the
 * hooks through which the connections reach the layers above them),
 * stopped in exit_process; the health PINGs every ping= interval, and
 * the canary every canary= interval.
 */


static void ngx_http_civchat_redis_ping_done(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_redis_health_handler(ngx_event_t *ev);
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


/* health */

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
