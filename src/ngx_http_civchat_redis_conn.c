
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_redis_int.h"


/*
 * The bottom of the Redis Cluster client: commands (their bytes in RESP,
 * their handlers called once, the queue of those that wait to be tried
 * again) and a node's connections: connect (AUTH first), write, read
 * whole replies, time out, and a lost connection's commands failed or
 * routed again, the node reconnected with backoff.  What is read, and a
 * lost subscriber connection, go up through the hooks in the cluster's
 * struct (ngx_http_civchat_redis_int.h): nothing here calls a file above.
 */


static void ngx_http_civchat_redis_auth_done(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_redis_write_handler(ngx_event_t *wev);
static void ngx_http_civchat_redis_send(ngx_http_civchat_redis_conn_t *conn);
static void ngx_http_civchat_redis_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_http_civchat_redis_process(
    ngx_http_civchat_redis_conn_t *conn);
static void ngx_http_civchat_redis_backoff(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *node);


/* commands */

ngx_http_civchat_redis_cmd_t *
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


void
ngx_http_civchat_redis_cmd_free(ngx_http_civchat_redis_cmd_t *cmd)
{
    if (cmd->buf != (u_char *) (cmd + 1)) {
        ngx_free(cmd->buf);
    }

    ngx_free(cmd);
}


/* the reply to its handler, in the command's pool or the conn's */

void
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


void
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


/* commands that wait: for a map, a node, or after TRYAGAIN and such */

void
ngx_http_civchat_redis_retry_add(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_cmd_t *cmd)
{
    ngx_queue_insert_tail(&rd->retry, &cmd->queue);

    if (!rd->retry_ev.timer_set) {
        ngx_add_timer(&rd->retry_ev, NGX_HTTP_CIVCHAT_REDIS_RETRY);
    }
}


/* connections */


/*
 * A command of the client's own to one node: on its command connection
 * (PING, CLUSTER SLOTS) or on its subscriber connection.  One that
 * cannot go now fails later, from the retry queue.
 */

ngx_int_t
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


ngx_int_t
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


/* the command's bytes go to the output; it waits for its reply */

void
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


void
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

void
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


/* this worker's nodes, known and connected, for the status page */

void
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
