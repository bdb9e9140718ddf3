
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <ngx_sha1.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_redis_int.h"


/*
 * The Redis Cluster client's configuration: "civchat_redis NAME
 * host:port ... [password=] [timeout=] [ping=] [retry=] [canary=]" at the
 * http level, its shared memory zone (counters, and what each worker
 * sees), scripts, and its part of civchat_status.
 */


static char *ngx_http_civchat_redis_param(ngx_conf_t *cf,
    ngx_http_civchat_redis_t *rd, ngx_str_t *arg);
static ngx_int_t ngx_http_civchat_redis_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static u_char *ngx_http_civchat_redis_label(u_char *p, ngx_str_t *value);


static ngx_str_t  ngx_http_civchat_redis_canary_lua =
    ngx_string("return redis.call('GET', KEYS[1])");


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
