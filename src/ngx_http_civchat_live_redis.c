
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_cluster.h"


/*
 * The live channel of a zone on Redis (README "Live channel"): what is
 * said to a profile is a Redis stream of its own, l:{KEY} (cluster.h),
 * capped at the zone's live= entries and a few profile changes, which
 * goes a day after its last entry.  An addition (a script: the entries,
 * then one PUBLISH) is announced on the channel "civchat:ZONE:live" as
 * "KEY ENTRY-ID", which every worker of every host is subscribed to; a
 * worker holding streams of KEY reads, for each, what follows the last
 * entry that stream was sent (stream.c).  So an event's id is the same
 * on every host: the entry's id, "MS-SEQ" as one number, MS * 2^20 +
 * SEQ, which a browser's Last-Event-ID brings to any host.
 *
 * Nothing here takes the zone's lock: the commands are sent from the
 * worker, after the request's plan was applied and the lock let go.
 */


/* what a profile's stream keeps beyond live=: its last profile changes */
#define NGX_HTTP_CIVCHAT_LIVE_REDIS_CHANGES  16
/* seconds a profile's stream is kept after its last entry */
#define NGX_HTTP_CIVCHAT_LIVE_REDIS_TTL      86400

/* an entry id "MS-SEQ" as an event id: MS * 2^20 + SEQ, under 2^63 */
#define NGX_HTTP_CIVCHAT_LIVE_REDIS_SEQ_BITS 20
#define NGX_HTTP_CIVCHAT_LIVE_REDIS_MS_MAX   ((uint64_t) 1 << 43)


/* a message of the server API, on its way */
typedef struct {
    ngx_http_request_t             *r;
    ngx_http_civchat_resolved_pt    handler;
    ngx_http_civchat_redis_cmd_t   *cmd;
    ngx_http_civchat_zone_t        *zone;
} ngx_http_civchat_live_publish_t;


struct ngx_http_civchat_live_read_s {
    ngx_http_civchat_redis_cmd_t   *cmd;
    ngx_http_civchat_zone_t        *zone;
    ngx_http_civchat_live_read_pt   handler;
    void                           *data;
    ngx_uint_t                      count;
};


/* a worker's subscription to the zone's channel */
typedef struct {
    ngx_http_civchat_zone_t        *zone;
    ngx_http_civchat_live_heard_pt  handler;
    void                           *data;
} ngx_http_civchat_live_listen_t;


static ngx_http_civchat_redis_cmd_t *ngx_http_civchat_live_redis_add(
    ngx_http_civchat_zone_t *zone, ngx_str_t *profile, ngx_array_t *notes,
    ngx_pool_t *pool, ngx_http_civchat_redis_handler_pt handler,
    void *data);
static void ngx_http_civchat_live_redis_published(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_live_redis_publish_cleanup(void *data);
static void ngx_http_civchat_live_redis_told(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static void ngx_http_civchat_live_redis_answer(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply);
static ngx_int_t ngx_http_civchat_live_redis_entries(
    ngx_http_civchat_redis_reply_t *list, ngx_http_civchat_live_copy_t *out,
    ngx_uint_t *n);
static void ngx_http_civchat_live_redis_message(void *data,
    ngx_str_t *channel, ngx_str_t *message);
static ngx_int_t ngx_http_civchat_live_redis_key(ngx_pool_t *pool,
    ngx_http_civchat_cluster_t *cl, ngx_str_t *profile, ngx_str_t *key);
static uint64_t ngx_http_civchat_live_redis_id(ngx_str_t *text);
static void ngx_http_civchat_live_redis_log(ngx_http_civchat_zone_t *zone,
    const char *what, ngx_http_civchat_redis_reply_t *reply);


/*
 * add: KEYS[1] the profile's stream; the cap, the time to keep it, the
 * channel, the profile's key, then each entry's type and data.  read:
 * KEYS[1] the stream; where to start (exclusive; "" none), how many:
 * {the last entry's id ("0-0": none), the entries after the start}.
 */

static ngx_str_t  ngx_http_civchat_live_redis_add_lua = ngx_string(
    "local id\n"
    "for i = 5, #ARGV, 2 do\n"
    "  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*',"
    " 't', ARGV[i], 'd', ARGV[i + 1])\n"
    "end\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[2])\n"
    "redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. id)\n"
    "return id\n");

static ngx_str_t  ngx_http_civchat_live_redis_read_lua = ngx_string(
    "local t = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)\n"
    "local last = t[1] and t[1][1] or '0-0'\n"
    "if ARGV[1] == '' then return {last} end\n"
    "return {last, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+',"
    " 'COUNT', ARGV[2])}\n");


ngx_int_t
ngx_http_civchat_live_redis_conf(ngx_conf_t *cf,
    ngx_http_civchat_cluster_t *cl)
{
    u_char  *p;

    cl->live_channel.len = cl->prefix.len + sizeof("live") - 1;
    cl->live_channel.data = ngx_pnalloc(cf->pool, cl->live_channel.len);
    if (cl->live_channel.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(cl->live_channel.data, cl->prefix.data, cl->prefix.len);
    ngx_memcpy(p, "live", 4);

    cl->live_add = ngx_http_civchat_redis_script(cf,
                                        &ngx_http_civchat_live_redis_add_lua);
    cl->live_read = ngx_http_civchat_redis_script(cf,
                                       &ngx_http_civchat_live_redis_read_lua);

    if (cl->live_add == NULL || cl->live_read == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A message or payload of the server API.  On Redis, NGX_DONE: then
 * handler(r, rc) is called once Redis has it (NGX_OK) or did not take
 * it (NGX_ERROR: not answering, or refused).  A zone of its own has it
 * at once (NGX_OK).
 */

ngx_int_t
ngx_http_civchat_live_redis_publish(ngx_http_request_t *r,
    ngx_http_civchat_zone_t *zone, ngx_str_t *profile, ngx_uint_t type,
    u_char *data, size_t len, ngx_http_civchat_resolved_pt handler)
{
    ngx_str_t                        *note;
    ngx_array_t                       notes;
    ngx_pool_cleanup_t               *cln;
    ngx_http_civchat_live_publish_t  *pub;

    if (zone->cluster == NULL || zone->sh->live_size == 0) {
        /* nobody may hear it when the zone has no stream: still sent */
        (void) ngx_http_civchat_zone_publish(zone, profile, type, data, len);
        return NGX_OK;
    }

    pub = ngx_pcalloc(r->pool, sizeof(ngx_http_civchat_live_publish_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (pub == NULL || cln == NULL
        || ngx_array_init(&notes, r->pool, 2, sizeof(ngx_str_t)) != NGX_OK)
    {
        return NGX_ERROR;
    }

    note = ngx_array_push_n(&notes, 2);
    if (note == NULL) {
        return NGX_ERROR;
    }

    note[0].data = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (note[0].data == NULL) {
        return NGX_ERROR;
    }

    note[0].len = ngx_sprintf(note[0].data, "%ui", type) - note[0].data;
    note[1].data = data;
    note[1].len = len;

    pub->r = r;
    pub->handler = handler;
    pub->zone = zone;

    pub->cmd = ngx_http_civchat_live_redis_add(zone, profile, &notes, NULL,
                                        ngx_http_civchat_live_redis_published,
                                        pub);
    if (pub->cmd == NULL) {
        return NGX_ERROR;
    }

    /* the request may end first (its client went away) */
    cln->handler = ngx_http_civchat_live_redis_publish_cleanup;
    cln->data = pub;

    return NGX_DONE;
}


static void
ngx_http_civchat_live_redis_published(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_live_publish_t *pub = data;

    pub->cmd = NULL;

    if (rc == NGX_OK && reply->type != NGX_HTTP_CIVCHAT_REDIS_STRING) {
        ngx_http_civchat_live_redis_log(pub->zone, "a message", reply);
        rc = NGX_ERROR;
    }

    pub->handler(pub->r, rc);
}


static void
ngx_http_civchat_live_redis_publish_cleanup(void *data)
{
    ngx_http_civchat_live_publish_t *pub = data;

    if (pub->cmd != NULL) {
        ngx_http_civchat_redis_cancel(pub->cmd);
        pub->cmd = NULL;
    }
}


/*
 * The profile changes a request made (its events from "from" on), once
 * its plan holds, for the profile's streams on every host.  Nobody
 * waits for it: a change Redis did not take is logged, not retried.
 */

void
ngx_http_civchat_live_redis_tell(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_array_t *events, ngx_uint_t from,
    ngx_pool_t *pool)
{
    ngx_int_t                  rc;
    ngx_str_t                 *note, text;
    ngx_uint_t                 i;
    ngx_array_t                notes;
    ngx_http_civchat_event_t  *ev;

    if (zone->sh->live_size == 0 || profile->len == 0) {
        return;
    }

    if (ngx_array_init(&notes, pool, 2, sizeof(ngx_str_t)) != NGX_OK) {
        return;
    }

    ev = events->elts;

    for (i = from; i < events->nelts; i++) {
        if (ev[i].type == NGX_HTTP_CIVCHAT_EV_USER_CREATED && !ev[i].other) {
            /*
             * the request made the profile: no stream can be open for
             * it on any host (a stream needs a known key), so a new
             * visitor's changes cost Redis nothing
             */
            return;
        }
    }

    for (i = from; i < events->nelts; i++) {
        rc = ngx_http_civchat_live_note(pool, &ev[i], &text);

        if (rc == NGX_DECLINED) {
            continue;
        }

        note = ngx_array_push_n(&notes, 2);

        if (rc != NGX_OK || note == NULL) {
            return;
        }

        ngx_str_set(&note[0], "3");
        note[1] = text;
    }

    if (notes.nelts == 0) {
        return;
    }

    (void) ngx_http_civchat_live_redis_add(zone, profile, &notes, NULL,
                                           ngx_http_civchat_live_redis_told,
                                           zone);
}


static void
ngx_http_civchat_live_redis_told(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_zone_t *zone = data;

    if (rc == NGX_OK && reply->type != NGX_HTTP_CIVCHAT_REDIS_STRING) {
        ngx_http_civchat_live_redis_log(zone, "a profile change", reply);
    }
}


/* erasure: what was to be said to the profile goes with it */

void
ngx_http_civchat_live_redis_forget(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_pool_t *pool)
{
    ngx_str_t  argv[2];

    if (profile->len == 0
        || ngx_http_civchat_live_redis_key(pool, zone->cluster, profile,
                                           &argv[1])
           != NGX_OK)
    {
        return;
    }

    ngx_str_set(&argv[0], "DEL");

    (void) ngx_http_civchat_redis_command(zone->cluster->redis, &argv[1], 2,
                                          argv, NULL, NULL, NULL);
}


/* the entries, then one announcement of the last (the add script) */

static ngx_http_civchat_redis_cmd_t *
ngx_http_civchat_live_redis_add(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, ngx_array_t *notes, ngx_pool_t *pool,
    ngx_http_civchat_redis_handler_pt handler, void *data)
{
    u_char                      *p;
    ngx_str_t                   *argv, *note;
    ngx_uint_t                   i, argc;
    ngx_pool_t                  *tmp;
    ngx_http_civchat_cluster_t  *cl;
    ngx_http_civchat_redis_cmd_t  *cmd;

    cl = zone->cluster;

    /* the arguments are copied into the command: a pool for them only */
    tmp = ngx_create_pool(1024, ngx_cycle->log);
    if (tmp == NULL) {
        return NULL;
    }

    cmd = NULL;
    argc = 5 + notes->nelts;

    argv = ngx_palloc(tmp, argc * sizeof(ngx_str_t));
    p = ngx_pnalloc(tmp, 2 * NGX_INT_T_LEN);

    if (argv == NULL || p == NULL
        || ngx_http_civchat_live_redis_key(tmp, cl, profile, &argv[0])
           != NGX_OK)
    {
        goto done;
    }

    argv[1].data = p;
    argv[1].len = ngx_sprintf(p, "%ui", zone->sh->live_size
                              + NGX_HTTP_CIVCHAT_LIVE_REDIS_CHANGES) - p;
    p += argv[1].len;

    argv[2].data = p;
    argv[2].len = ngx_sprintf(p, "%d", NGX_HTTP_CIVCHAT_LIVE_REDIS_TTL) - p;

    argv[3] = cl->live_channel;
    argv[4] = *profile;

    note = notes->elts;

    for (i = 0; i < notes->nelts; i++) {
        argv[5 + i] = note[i];
    }

    cmd = ngx_http_civchat_redis_eval(cl->redis, cl->live_add, 1, argc, argv,
                                      pool, handler, data);

done:

    ngx_destroy_pool(tmp);

    return cmd;
}


/*
 * A profile's stream after "from" (given: else only its last id), up to
 * the zone's cap a read: handler(data, rc, last, entries, n, more) is
 * called later, unless ngx_http_civchat_live_redis_cancel() was first.
 * NULL: it cannot be sent.
 */

ngx_http_civchat_live_read_t *
ngx_http_civchat_live_redis_read(ngx_http_civchat_zone_t *zone,
    ngx_str_t *profile, uint64_t from, ngx_uint_t given,
    ngx_http_civchat_live_read_pt handler, void *data)
{
    u_char                        *p, buf[2 * NGX_INT64_LEN + 2];
    u_char                         count[NGX_INT_T_LEN];
    ngx_str_t                      argv[3];
    ngx_pool_t                    *tmp;
    ngx_http_civchat_cluster_t    *cl;
    ngx_http_civchat_live_read_t  *rd;

    cl = zone->cluster;

    rd = ngx_alloc(sizeof(ngx_http_civchat_live_read_t), ngx_cycle->log);
    if (rd == NULL) {
        return NULL;
    }

    tmp = ngx_create_pool(256, ngx_cycle->log);
    if (tmp == NULL) {
        ngx_free(rd);
        return NULL;
    }

    rd->zone = zone;
    rd->handler = handler;
    rd->data = data;
    rd->count = zone->sh->live_size + NGX_HTTP_CIVCHAT_LIVE_REDIS_CHANGES;
    rd->cmd = NULL;

    if (ngx_http_civchat_live_redis_key(tmp, cl, profile, &argv[0])
        == NGX_OK)
    {
        p = buf;

        if (given) {
            p = ngx_sprintf(buf, "%uL-%uL",
                            from >> NGX_HTTP_CIVCHAT_LIVE_REDIS_SEQ_BITS,
                            from & ((1 << NGX_HTTP_CIVCHAT_LIVE_REDIS_SEQ_BITS)
                                    - 1));
        }

        argv[1].data = buf;
        argv[1].len = p - buf;
        argv[2].data = count;
        argv[2].len = ngx_sprintf(count, "%ui", rd->count) - count;

        rd->cmd = ngx_http_civchat_redis_eval(cl->redis, cl->live_read, 1, 3,
                                          argv, NULL,
                                          ngx_http_civchat_live_redis_answer,
                                          rd);
    }

    ngx_destroy_pool(tmp);

    if (rd->cmd == NULL) {
        ngx_free(rd);
        return NULL;
    }

    return rd;
}


void
ngx_http_civchat_live_redis_cancel(ngx_http_civchat_live_read_t *rd)
{
    ngx_http_civchat_redis_cancel(rd->cmd);
    ngx_free(rd);
}


/* {last, {{id, {field, value, ...}}, ...}} */

static void
ngx_http_civchat_live_redis_answer(void *data, ngx_int_t rc,
    ngx_http_civchat_redis_reply_t *reply)
{
    ngx_http_civchat_live_read_t *rd = data;

    void                            *handler_data;
    uint64_t                         last;
    ngx_uint_t                       n, count;
    ngx_http_civchat_zone_t         *zone;
    ngx_http_civchat_live_copy_t    *entries;
    ngx_http_civchat_live_read_pt    handler;
    ngx_http_civchat_redis_reply_t  *e;

    /* the handler may read again: this read is over */

    handler = rd->handler;
    handler_data = rd->data;
    zone = rd->zone;
    count = rd->count;

    ngx_free(rd);

    entries = NULL;
    n = 0;
    last = 0;

    if (rc != NGX_OK) {
        goto failed;
    }

    if (reply->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY || reply->nelts == 0
        || reply->elts[0].type != NGX_HTTP_CIVCHAT_REDIS_STRING)
    {
        ngx_http_civchat_live_redis_log(zone, "a read", reply);
        goto failed;
    }

    e = reply->elts;

    if (!(e[0].str.len == 3 && ngx_strncmp(e[0].str.data, "0-0", 3) == 0)) {
        last = ngx_http_civchat_live_redis_id(&e[0].str);

        if (last == 0) {
            ngx_http_civchat_live_redis_log(zone, "an entry id", &e[0]);
            goto failed;
        }
    }

    if (reply->nelts > 1 && e[1].type == NGX_HTTP_CIVCHAT_REDIS_ARRAY
        && e[1].nelts > 0)
    {
        entries = ngx_alloc(e[1].nelts * sizeof(ngx_http_civchat_live_copy_t),
                            ngx_cycle->log);
        if (entries == NULL) {
            goto failed;
        }

        if (ngx_http_civchat_live_redis_entries(&e[1], entries, &n)
            != NGX_OK)
        {
            ngx_http_civchat_live_redis_log(zone, "an entry", &e[1]);
        }
    }

    handler(handler_data, NGX_OK, last, entries, n,
            reply->nelts > 1 && e[1].type == NGX_HTTP_CIVCHAT_REDIS_ARRAY
            && e[1].nelts >= count);

    if (entries != NULL) {
        ngx_free(entries);
    }

    return;

failed:

    handler(handler_data, NGX_ERROR, 0, NULL, 0, 0);
}


/* the entries of a reply, in order; one not of this module is skipped */

static ngx_int_t
ngx_http_civchat_live_redis_entries(ngx_http_civchat_redis_reply_t *list,
    ngx_http_civchat_live_copy_t *out, ngx_uint_t *n)
{
    ngx_int_t                        type, rc;
    ngx_uint_t                       i, j;
    ngx_http_civchat_redis_reply_t  *e, *f;

    rc = NGX_OK;

    for (i = 0; i < list->nelts; i++) {
        e = &list->elts[i];

        if (e->type != NGX_HTTP_CIVCHAT_REDIS_ARRAY || e->nelts != 2
            || e->elts[0].type != NGX_HTTP_CIVCHAT_REDIS_STRING
            || e->elts[1].type != NGX_HTTP_CIVCHAT_REDIS_ARRAY)
        {
            rc = NGX_ERROR;
            continue;
        }

        out[*n].seq = ngx_http_civchat_live_redis_id(&e->elts[0].str);
        ngx_str_null(&out[*n].data);
        type = NGX_ERROR;

        f = e->elts[1].elts;

        for (j = 0; j + 1 < e->elts[1].nelts; j += 2) {
            if (f[j].type != NGX_HTTP_CIVCHAT_REDIS_STRING
                || f[j + 1].type != NGX_HTTP_CIVCHAT_REDIS_STRING
                || f[j].str.len != 1)
            {
                continue;
            }

            if (f[j].str.data[0] == 't') {
                type = ngx_atoi(f[j + 1].str.data, f[j + 1].str.len);

            } else if (f[j].str.data[0] == 'd') {
                out[*n].data = f[j + 1].str;
            }
        }

        if (out[*n].seq == 0 || out[*n].data.len == 0
            || type < NGX_HTTP_CIVCHAT_LIVE_MESSAGE
            || type > NGX_HTTP_CIVCHAT_LIVE_PROFILE
            || ngx_strlchr(out[*n].data.data,
                           out[*n].data.data + out[*n].data.len, '\n')
               != NULL)
        {
            rc = NGX_ERROR;
            continue;
        }

        out[*n].type = type;
        (*n)++;
    }

    return rc;
}


/*
 * The worker's subscription to the zone's channel: handler(data,
 * profile, id) for each "KEY ENTRY-ID"; with no profile when the
 * subscription was made (id 1: what was said meanwhile may be missing)
 * or lost (id 0).
 */

ngx_int_t
ngx_http_civchat_live_redis_listen(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_live_heard_pt handler, void *data, ngx_cycle_t *cycle)
{
    ngx_http_civchat_live_listen_t  *ls;

    ls = ngx_palloc(cycle->pool, sizeof(ngx_http_civchat_live_listen_t));
    if (ls == NULL) {
        return NGX_ERROR;
    }

    ls->zone = zone;
    ls->handler = handler;
    ls->data = data;

    /* every host may hold streams of any profile: a classic channel */

    if (ngx_http_civchat_redis_subscribe(zone->cluster->redis,
                                         &zone->cluster->live_channel, 0,
                                         ngx_http_civchat_live_redis_message,
                                         ls)
        == NULL)
    {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "civchat zone \"%V\": cannot subscribe to \"%V\"",
                      &zone->name, &zone->cluster->live_channel);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_civchat_live_redis_message(void *data, ngx_str_t *channel,
    ngx_str_t *message)
{
    ngx_http_civchat_live_listen_t *ls = data;

    u_char     *sp;
    uint64_t    id;
    ngx_str_t   profile, text;

    if (message == NULL) {
        ls->handler(ls->data, NULL, channel != NULL);
        return;
    }

    sp = ngx_strlchr(message->data, message->data + message->len, ' ');
    if (sp == NULL) {
        return;
    }

    profile.data = message->data;
    profile.len = sp - message->data;

    text.data = sp + 1;
    text.len = message->data + message->len - text.data;

    id = ngx_http_civchat_live_redis_id(&text);

    if (id == 0 || profile.len == 0
        || profile.len > NGX_HTTP_CIVCHAT_KEY_MAX)
    {
        return;
    }

    ls->handler(ls->data, &profile, id);
}


/* prefix "l:{" KEY "}" */

static ngx_int_t
ngx_http_civchat_live_redis_key(ngx_pool_t *pool,
    ngx_http_civchat_cluster_t *cl, ngx_str_t *profile, ngx_str_t *key)
{
    u_char  *p;

    key->len = cl->prefix.len + sizeof("l:{}") - 1 + profile->len;
    key->data = ngx_pnalloc(pool, key->len);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(key->data, cl->prefix.data, cl->prefix.len);
    p = ngx_cpymem(p, "l:{", 3);
    p = ngx_cpymem(p, profile->data, profile->len);
    *p = '}';

    return NGX_OK;
}


/* "MS-SEQ" as MS * 2^20 + SEQ; 0: not an entry id, or out of range */

static uint64_t
ngx_http_civchat_live_redis_id(ngx_str_t *text)
{
    u_char    *p, *last;
    uint64_t   ms, seq;

    p = text->data;
    last = p + text->len;
    ms = 0;
    seq = 0;

    if (p == last || *p < '0' || *p > '9') {
        return 0;
    }

    while (p < last && *p >= '0' && *p <= '9') {
        ms = ms * 10 + (*p++ - '0');

        if (ms >= NGX_HTTP_CIVCHAT_LIVE_REDIS_MS_MAX) {
            return 0;
        }
    }

    if (p == last || *p++ != '-' || p == last) {
        return 0;
    }

    while (p < last && *p >= '0' && *p <= '9') {
        seq = seq * 10 + (*p++ - '0');

        if (seq >> NGX_HTTP_CIVCHAT_LIVE_REDIS_SEQ_BITS) {
            return 0;
        }
    }

    if (p != last) {
        return 0;
    }

    return (ms << NGX_HTTP_CIVCHAT_LIVE_REDIS_SEQ_BITS) + seq;
}


static void
ngx_http_civchat_live_redis_log(ngx_http_civchat_zone_t *zone,
    const char *what, ngx_http_civchat_redis_reply_t *reply)
{
    ngx_str_t  text;

    if (reply->type == NGX_HTTP_CIVCHAT_REDIS_ERROR
        || reply->type == NGX_HTTP_CIVCHAT_REDIS_STRING)
    {
        text = reply->str;

    } else {
        ngx_str_set(&text, "an unexpected reply");
    }

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "civchat zone \"%V\": %s of the live channel: %V",
                  &zone->name, what, &text);
}
