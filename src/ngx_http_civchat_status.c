
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * Counters shared by all workers (a small shared-memory zone of atomic
 * counters, so the request path takes no lock) and the civchat_status
 * page that shows them in Prometheus' text format.
 *
 * The zone and the log-phase handler that counts requests exist only
 * where a civchat, civchat_api or civchat_status location does: loading
 * the module into an nginx that does not use it adds nothing to it.
 * The zone's name is the module's, with a ':' that the zone=name:size
 * of limit_req_zone, proxy_cache_path and the like cannot hold, so that
 * it never takes a name a configuration gives a zone of its own.
 */


#define NGX_HTTP_CIVCHAT_STATS_SIZE  (64 * 1024)
#define NGX_HTTP_CIVCHAT_STATS_ZONE  "ngx_http_civchat_module:stats"


static ngx_int_t ngx_http_civchat_stats_init(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_civchat_log_handler(ngx_http_request_t *r);
static ngx_uint_t ngx_http_civchat_status_index(ngx_uint_t status);
static ngx_int_t ngx_http_civchat_status_handler(ngx_http_request_t *r);
static size_t ngx_http_civchat_status_size(ngx_http_civchat_main_conf_t *mcf);
static u_char *ngx_http_civchat_status_requests(u_char *p,
    ngx_http_civchat_stats_t *st);
static u_char *ngx_http_civchat_status_events(u_char *p,
    ngx_http_civchat_stats_t *st);
static u_char *ngx_http_civchat_status_stores(u_char *p,
    ngx_http_civchat_main_conf_t *mcf);
static u_char *ngx_http_civchat_status_zones(u_char *p,
    ngx_http_civchat_main_conf_t *mcf);
static u_char *ngx_http_civchat_label(u_char *p, ngx_str_t *value);


typedef struct {
    const char                   *name;
    const char                   *help;
    size_t                        offset;
} ngx_http_civchat_family_t;


static ngx_uint_t  ngx_http_civchat_statuses[] = {
    200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 413, 415, 429, 500,
    503, 0
};


/* a civchat, civchat_api or civchat_status location */

void
ngx_http_civchat_stats_location(ngx_conf_t *cf)
{
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_civchat_module);
    mcf->locations++;
}


/* at the end of the http block: the zone and the handler, when used */

ngx_int_t
ngx_http_civchat_stats_add(ngx_conf_t *cf, ngx_http_civchat_main_conf_t *mcf)
{
    ngx_str_t                   name;
    ngx_shm_zone_t             *shm_zone;
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    if (mcf->locations == 0) {
        return NGX_OK;
    }

    ngx_str_set(&name, NGX_HTTP_CIVCHAT_STATS_ZONE);

    shm_zone = ngx_shared_memory_add(cf, &name, NGX_HTTP_CIVCHAT_STATS_SIZE,
                                     &ngx_http_civchat_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_civchat_stats_init;
    shm_zone->data = mcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_civchat_log_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_stats_init(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_civchat_main_conf_t  *omcf = data;

    ngx_slab_pool_t               *shpool;
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = shm_zone->data;

    if (omcf != NULL) {
        /* counters run on across reloads */
        mcf->stats = omcf->stats;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        mcf->stats = shpool->data;
        return NGX_OK;
    }

    mcf->stats = ngx_slab_alloc(shpool, sizeof(ngx_http_civchat_stats_t));
    if (mcf->stats == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(mcf->stats, sizeof(ngx_http_civchat_stats_t));
    shpool->data = mcf->stats;

    return NGX_OK;
}


ngx_http_civchat_stats_t *
ngx_http_civchat_stats(ngx_http_request_t *r)
{
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);

    return mcf->stats;
}


void
ngx_http_civchat_count(ngx_http_request_t *r, ngx_atomic_t *counter,
    ngx_uint_t n)
{
    (void) ngx_atomic_fetch_add(counter, n);
}


void
ngx_http_civchat_count_event(ngx_http_request_t *r, ngx_uint_t type)
{
    ngx_http_civchat_stats_t  *st;

    st = ngx_http_civchat_stats(r);

    if (st != NULL && type < NGX_HTTP_CIVCHAT_EVENT_TYPES) {
        (void) ngx_atomic_fetch_add(&st->events[type], 1);
    }
}


/* requests by endpoint and status, counted when they are logged */

static ngx_int_t
ngx_http_civchat_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                     endpoint, status;
    ngx_http_civchat_loc_conf_t   *lcf;
    ngx_http_civchat_main_conf_t  *mcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_civchat_module);

    if (!lcf->enable || r != r->main) {
        return NGX_OK;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);

    if (mcf->stats == NULL) {
        return NGX_OK;
    }

    endpoint = (r->method == NGX_HTTP_OPTIONS)
               ? NGX_HTTP_CIVCHAT_OPTIONS
               : ngx_http_civchat_endpoint(r, &lcf->location);

    status = r->err_status ? r->err_status : r->headers_out.status;

    (void) ngx_atomic_fetch_add(
                     &mcf->stats->requests[endpoint]
                                   [ngx_http_civchat_status_index(status)], 1);

    return NGX_OK;
}


static ngx_uint_t
ngx_http_civchat_status_index(ngx_uint_t status)
{
    ngx_uint_t  i;

    for (i = 0; ngx_http_civchat_statuses[i]; i++) {
        if (ngx_http_civchat_statuses[i] == status) {
            return i;
        }
    }

    return i;
}


ngx_http_civchat_counters_t *
ngx_http_civchat_store_counters(ngx_cycle_t *cycle, ngx_uint_t index)
{
    ngx_http_civchat_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_civchat_module);

    if (mcf == NULL || mcf->stats == NULL
        || index >= NGX_HTTP_CIVCHAT_MAX_STORES)
    {
        return NULL;
    }

    return &mcf->stats->stores[index];
}


char *
ngx_http_civchat_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_civchat_status_handler;

    ngx_http_civchat_stats_location(cf);

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_civchat_status_handler(ngx_http_request_t *r)
{
    u_char                        *buf, *p;
    size_t                         size;
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_chain_t                    out;
    ngx_http_civchat_main_conf_t  *mcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);

    if (mcf->stats == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    size = ngx_http_civchat_status_size(mcf);

    buf = ngx_pnalloc(r->pool, size);
    if (buf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_http_civchat_status_requests(buf, mcf->stats);
    p = ngx_http_civchat_status_events(p, mcf->stats);
    p = ngx_http_civchat_status_stores(p, mcf);
    p = ngx_http_civchat_status_zones(p, mcf);
    p = ngx_http_civchat_redis_status(p, mcf->redis);

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = p - buf;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = buf;
    b->last = p;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static size_t
ngx_http_civchat_status_size(ngx_http_civchat_main_conf_t *mcf)
{
    size_t                     size;
    ngx_uint_t                 i;
    ngx_http_civchat_zone_t  **zones;
    ngx_http_civchat_sink_t  **sinks;

    /* generous per line: names, labels and a 20-digit value */
    size = 2048
           + NGX_HTTP_CIVCHAT_ENDPOINTS * NGX_HTTP_CIVCHAT_STATUSES * 96
           + NGX_HTTP_CIVCHAT_EVENT_TYPES * 96;

    sinks = mcf->sinks->elts;

    for (i = 0; i < mcf->sinks->nelts; i++) {
        size += 10 * (128 + 6 * ngx_http_civchat_sink_name(sinks[i])->len);
    }

    /* the zones' families: HELP and TYPE, then a line a zone */

    size += NGX_HTTP_CIVCHAT_ZONE_COUNTS * 256;

    zones = mcf->zones->elts;

    for (i = 0; i < mcf->zones->nelts; i++) {
        size += NGX_HTTP_CIVCHAT_ZONE_COUNTS * (128 + 6 * zones[i]->name.len);
    }

    size += ngx_http_civchat_redis_status_size(mcf->redis);

    return size;
}


static u_char *
ngx_http_civchat_status_requests(u_char *p, ngx_http_civchat_stats_t *st)
{
    ngx_uint_t    e, s;
    ngx_atomic_t  n;

    p = ngx_sprintf(p, "# HELP civchat_requests_total Requests to civchat "
                    "endpoints by endpoint and status.\n"
                    "# TYPE civchat_requests_total counter\n");

    for (e = 0; e < NGX_HTTP_CIVCHAT_ENDPOINTS; e++) {
        for (s = 0; s < NGX_HTTP_CIVCHAT_STATUSES; s++) {
            n = st->requests[e][s];

            if (n == 0) {
                continue;
            }

            if (ngx_http_civchat_statuses[s]) {
                p = ngx_sprintf(p, "civchat_requests_total{endpoint=\"%V\","
                                "status=\"%ui\"} %uA\n",
                                &ngx_http_civchat_endpoint_info(e)->name,
                                ngx_http_civchat_statuses[s], n);

            } else {
                p = ngx_sprintf(p, "civchat_requests_total{endpoint=\"%V\","
                                "status=\"other\"} %uA\n",
                                &ngx_http_civchat_endpoint_info(e)->name, n);
            }
        }
    }

    return p;
}


static u_char *
ngx_http_civchat_status_events(u_char *p, ngx_http_civchat_stats_t *st)
{
    ngx_uint_t  i;

    p = ngx_sprintf(p, "# HELP civchat_events_total Events emitted, by "
                    "type.\n# TYPE civchat_events_total counter\n");

    for (i = 0; i < NGX_HTTP_CIVCHAT_EVENT_TYPES; i++) {
        p = ngx_sprintf(p, "civchat_events_total{type=\"%s\"} %uA\n",
                        ngx_http_civchat_event_name(i), st->events[i]);
    }

    p = ngx_sprintf(p, "# HELP civchat_bots_total Bot requests answered "
                    "without a profile.\n# TYPE civchat_bots_total counter\n"
                    "civchat_bots_total %uA\n"
                    "# HELP civchat_anonymous_total Page views counted "
                    "anonymously (Sec-GPC, DNT).\n"
                    "# TYPE civchat_anonymous_total counter\n"
                    "civchat_anonymous_total %uA\n"
                    "# HELP civchat_unverified_total Identities a browser "
                    "claimed without the proof civchat_identity_secret "
                    "asks for.\n"
                    "# TYPE civchat_unverified_total counter\n"
                    "civchat_unverified_total %uA\n"
                    "# HELP civchat_streams_refused_total Live streams "
                    "refused: an unknown or unproved key, or over "
                    "civchat_stream_limit.\n"
                    "# TYPE civchat_streams_refused_total counter\n"
                    "civchat_streams_refused_total %uA\n",
                    st->bots, st->anonymous, st->unverified,
                    st->streams_refused);

    return p;
}


/* one metric family at a time, as the text format wants */

static u_char *
ngx_http_civchat_status_stores(u_char *p, ngx_http_civchat_main_conf_t *mcf)
{
    ngx_uint_t                    f, i;
    ngx_atomic_uint_t             v;
    ngx_http_civchat_sink_t     **sinks;
    ngx_http_civchat_counters_t  *c;

    static ngx_http_civchat_family_t  families[] = {
        { "civchat_store_events_total",
          "Events the store took (written to the file, or answered 2xx).",
          offsetof(ngx_http_civchat_counters_t, forwarded) },
        { "civchat_store_batches_total",
          "Batches an HTTP store took.",
          offsetof(ngx_http_civchat_counters_t, batches) },
        { "civchat_store_latency_seconds_total",
          "Time the HTTP store took for its batches, summed.",
          offsetof(ngx_http_civchat_counters_t, latency_ms) },
        { "civchat_store_errors_total",
          "Failed file writes or HTTP attempts.",
          offsetof(ngx_http_civchat_counters_t, errors) },
        { "civchat_store_spooled_total",
          "Events written to the spool while the store failed.",
          offsetof(ngx_http_civchat_counters_t, spooled) },
        { "civchat_store_dropped_total",
          "Events dropped (on_full=drop, or no memory).",
          offsetof(ngx_http_civchat_counters_t, dropped) },
        { "civchat_store_spool_full_total",
          "Batches that found the spool full.",
          offsetof(ngx_http_civchat_counters_t, spool_full) }
    };

    sinks = mcf->sinks->elts;

    for (f = 0; f < sizeof(families) / sizeof(families[0]); f++) {
        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s counter\n",
                        families[f].name, families[f].help,
                        families[f].name);

        for (i = 0;
             i < mcf->sinks->nelts && i < NGX_HTTP_CIVCHAT_MAX_STORES;
             i++)
        {
            c = &mcf->stats->stores[i];
            v = *(ngx_atomic_t *) ((u_char *) c + families[f].offset);

            p = ngx_sprintf(p, "%s{store=\"", families[f].name);
            p = ngx_http_civchat_label(p,
                                       ngx_http_civchat_sink_name(sinks[i]));

            if (families[f].offset
                == offsetof(ngx_http_civchat_counters_t, latency_ms))
            {
                p = ngx_sprintf(p, "\"} %uA.%03uA\n", v / 1000, v % 1000);

            } else {
                p = ngx_sprintf(p, "\"} %uA\n", v);
            }
        }
    }

    return p;
}


static u_char *
ngx_http_civchat_status_zones(u_char *p, ngx_http_civchat_main_conf_t *mcf)
{
    ngx_uint_t                 f, i;
    ngx_uint_t                 counts[NGX_HTTP_CIVCHAT_ZONE_COUNTS];
    ngx_http_civchat_zone_t  **zones;

    static const char  *families[] = {
        "civchat_profiles", "gauge", "Profiles in the zone.",
        "civchat_zone_bytes_used", "gauge", "Zone memory in use.",
        "civchat_zone_bytes", "gauge", "Zone memory in all.",
        "civchat_evictions_total", "counter",
        "Profiles evicted to make room.",
        "civchat_live_dropped_total", "counter",
        "Live messages dropped before any stream read them.",
        "civchat_redis_pending_profiles", "gauge",
        "Profiles whose changes are not written to Redis yet.",
        "civchat_redis_reads_total", "counter",
        "Requests that read their profiles from Redis first.",
        "civchat_redis_writes_total", "counter",
        "Requests that wrote an identity change before answering.",
        "civchat_redis_conflicts_total", "counter",
        "Writes refused (another host was first), applied again.",
        "civchat_redis_unavailable_total", "counter",
        "Requests for which Redis did not answer.",
        "civchat_redis_deltas_total", "counter",
        "Page views and attribute changes written behind (per profile)."
    };

    zones = mcf->zones->elts;

    for (f = 0; f < NGX_HTTP_CIVCHAT_ZONE_COUNTS; f++) {
        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s %s\n",
                        families[f * 3], families[f * 3 + 2],
                        families[f * 3], families[f * 3 + 1]);

        for (i = 0; i < mcf->zones->nelts; i++) {
            if (zones[i]->shpool == NULL
                || (f >= NGX_HTTP_CIVCHAT_ZONE_LOCAL
                    && zones[i]->cluster == NULL))
            {
                continue;
            }

            ngx_http_civchat_zone_counts(zones[i], counts);

            p = ngx_sprintf(p, "%s{zone=\"", families[f * 3]);
            p = ngx_http_civchat_label(p, &zones[i]->name);
            p = ngx_sprintf(p, "\"} %ui\n", counts[f]);
        }
    }

    return p;
}


/* a Prometheus label value: backslash, quote and newline escaped */

static u_char *
ngx_http_civchat_label(u_char *p, ngx_str_t *value)
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
