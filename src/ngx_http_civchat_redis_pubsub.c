
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_redis_int.h"


/*
 * Pub/sub: a worker's channels (several subscribers of one share it),
 * each subscribed on the subscriber connection of one node, sharded
 * (SSUBSCRIBE, on the master of its slot) or not (SUBSCRIBE, on any
 * master); messages handed to the subscribers; a channel subscribed
 * again when that connection is lost, the subscription is refused, or
 * the server says its slot moved.
 */


static ngx_http_civchat_redis_channel_t *ngx_http_civchat_redis_channel(
    ngx_http_civchat_redis_t *rd, ngx_str_t *name);
static void ngx_http_civchat_redis_cmd_arg(ngx_http_civchat_redis_cmd_t *cmd,
    ngx_uint_t index, ngx_str_t *arg);
static void ngx_http_civchat_redis_channel_lost(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_channel_t *ch, ngx_msec_t delay);
static void ngx_http_civchat_redis_channel_tell(
    ngx_http_civchat_redis_channel_t *ch, ngx_str_t *message);
static void ngx_http_civchat_redis_channel_free(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_channel_t *ch);


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

void
ngx_http_civchat_redis_sub_reply(ngx_http_civchat_redis_conn_t *conn,
    u_char *start, size_t len)
{
    ngx_str_t                          *kind, name, arg, argv[2];
    ngx_uint_t                          slot;
    ngx_http_civchat_redis_t           *rd;
    ngx_http_civchat_redis_cmd_t       *head;
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

        ngx_http_civchat_redis_channel_tell(ch, &reply->elts[2].str);

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

            /* what was said while it was not subscribed is lost: say so */
            ngx_http_civchat_redis_channel_tell(ch, NULL);

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


/*
 * A channel's subscribers are told a message, or (message NULL) that
 * the channel was subscribed (state ACTIVE) or is not any more: what is
 * published meanwhile is lost.  A handler may unsubscribe anyone: they
 * are freed after; the channel itself stays.
 */

static void
ngx_http_civchat_redis_channel_tell(ngx_http_civchat_redis_channel_t *ch,
    ngx_str_t *message)
{
    ngx_str_t                     *name;
    ngx_queue_t                   *q;
    ngx_http_civchat_redis_sub_t  *sub;

    name = (message != NULL || ch->state == NGX_HTTP_CIVCHAT_REDIS_ACTIVE)
           ? &ch->sn.str : NULL;

    ch->delivering = 1;

    for (q = ngx_queue_head(&ch->subs);
         q != ngx_queue_sentinel(&ch->subs);
         q = ngx_queue_next(q))
    {
        sub = ngx_queue_data(q, ngx_http_civchat_redis_sub_t, queue);

        if (sub->handler != NULL) {
            sub->handler(sub->data, name, message);
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
}


/* a node's subscriber connection is lost: its channels, again, soon */

void
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
    if (ch->state == NGX_HTTP_CIVCHAT_REDIS_ACTIVE) {
        ch->state = NGX_HTTP_CIVCHAT_REDIS_NONE;
        ngx_http_civchat_redis_channel_tell(ch, NULL);
    }

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

void
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
