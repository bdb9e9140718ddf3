
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_redis_int.h"


/*
 * A worker's view of the cluster: its nodes (found by address, made as
 * the seeds, the slot map and redirections name them) and the slot map,
 * asked for with CLUSTER SLOTS of one node at a time, at most every
 * NGX_HTTP_CIVCHAT_REDIS_REFRESH ms and with backoff while it fails, and
 * corrected at once by a MOVED.
 */


static ngx_http_civchat_redis_node_t *ngx_http_civchat_redis_node_text(
    ngx_http_civchat_redis_t *rd, u_char *p, size_t len,
    ngx_http_civchat_redis_node_t *from);
static void ngx_http_civchat_redis_slots_done(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static ngx_int_t ngx_http_civchat_redis_slot_map(ngx_http_civchat_redis_t *rd,
    ngx_http_civchat_redis_node_t *from,
    ngx_http_civchat_redis_reply_t *reply);


/* the node at an address, made when create is set and there is room */

ngx_http_civchat_redis_node_t *
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


/* the slot map */

void
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


void
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


/*
 * "-MOVED slot ip:port" or "-ASK slot ip:port": the node named, counted;
 * after MOVED the slot is the node's at once and the whole map is asked
 * for again.  NULL for what is neither.
 */

ngx_http_civchat_redis_node_t *
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
