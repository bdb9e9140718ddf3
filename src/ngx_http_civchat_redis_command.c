
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_redis_int.h"


/*
 * Commands: queued for the master of their key's slot (any master
 * without a key), their replies matched to them in order, and the
 * errors the client answers itself: MOVED and ASK followed, TRYAGAIN,
 * CLUSTERDOWN, LOADING and MASTERDOWN tried again until the command's
 * time is up, NOSCRIPT answered with EVAL.  What cannot go yet waits in
 * the retry queue.
 */


static void ngx_http_civchat_redis_dispatch(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd, ngx_http_civchat_redis_node_t *ask);
static ngx_int_t ngx_http_civchat_redis_redirect(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_conn_t *conn, ngx_http_civchat_redis_cmd_t *cmd,
    u_char *start, size_t len);


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

    /*
     * EVALSHA sha nkeys argv...; or, for a command whose reply nobody
     * awaits, EVAL with the text: NOSCRIPT would send it again after
     * the commands that follow it, which may depend on its order
     */

    args = ngx_alloc((argc + 3) * sizeof(ngx_str_t), rd->log);
    if (args == NULL) {
        return NULL;
    }

    if (handler == NULL) {
        ngx_str_set(&args[0], "EVAL");
        args[1] = script->text;

    } else {
        ngx_str_set(&args[0], "EVALSHA");
        args[1].data = script->sha;
        args[1].len = 40;
    }

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

    cmd->script = (handler != NULL) ? script : NULL;
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


/* a reply on a command connection: to the command at the head */

void
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


/*
 * The retry queue, every NGX_HTTP_CIVCHAT_REDIS_RETRY ms (or at once when
 * a map arrives): routed again, or failed when their time is up.
 */

void
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
