
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_cluster.h"


/*
 * A zone on Redis Cluster (cluster.h) as configured: "civchat_zone ...
 * redis=NAME", its keys' prefix and change channel, and the Lua scripts
 * cluster.c and behind.c run (live_redis.c makes its own).
 *
 * The scripts, each on one slot.  An index entry is "ID SECONDS": the
 * profile named and when it was claimed, by Redis's clock.  lookup:
 * KEYS[1] an entry; its id and age in seconds, or nil.  claim: the
 * entry, ARGV the id and the holder it may replace; 2 when it set it,
 * 1 when the id had it.  release: the entry, the id it must still
 * have.  write: KEYS[1] a document; origin, version it must
 * have ("" any), channel, id, what ("doc", "merged" or "erase"), then
 * the fields (or the survivor).  delta: see doc.c and behind.c.
 */

static ngx_str_t  ngx_http_civchat_cluster_lookup_lua = ngx_string(
    "local cur = redis.call('GET', KEYS[1])\n"
    "if not cur then return false end\n"
    "local id, at = string.match(cur, '^([^ ]+) ?(%d*)$')\n"
    "if not id then return false end\n"
    "if at == '' then return {id, 86400} end\n"
    "return {id, tonumber(redis.call('TIME')[1]) - tonumber(at)}\n");

static ngx_str_t  ngx_http_civchat_cluster_claim_lua = ngx_string(
    "local cur = redis.call('GET', KEYS[1])\n"
    "local id = cur and string.match(cur, '^[^ ]+')\n"
    "if id == ARGV[1] then return 1 end\n"
    "if (not cur) or id == ARGV[2] then\n"
    "  redis.call('SET', KEYS[1],"
    " ARGV[1] .. ' ' .. redis.call('TIME')[1])\n"
    "  return 2\n"
    "end\n"
    "return id\n");

static ngx_str_t  ngx_http_civchat_cluster_release_lua = ngx_string(
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur and string.match(cur, '^[^ ]+') == ARGV[1] then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "end\n"
    "return 1\n");

static ngx_str_t  ngx_http_civchat_cluster_write_lua = ngx_string(
    "local cur = redis.call('HGET', KEYS[1], 'v')\n"
    "if ARGV[2] ~= '' and (cur or '0') ~= ARGV[2] then\n"
    "  return {0, cur or '0'}\n"
    "end\n"
    "local f = redis.call('HGET', KEYS[1], 'f')\n"
    "redis.call('DEL', KEYS[1])\n"
    "local v = (tonumber(cur) or 0) + 1\n"
    "if ARGV[5] == 'doc' then\n"
    "  redis.call('HSET', KEYS[1], 'v', v, unpack(ARGV, 6))\n"
    "  if f then redis.call('HSET', KEYS[1], 'f', f) end\n"
    "elseif ARGV[5] == 'merged' then\n"
    "  redis.call('HSET', KEYS[1], 'v', v, 'merged', ARGV[6])\n"
    "  redis.call('EXPIRE', KEYS[1], 86400)\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' ' .. v .. ' ' .. ARGV[4])\n"
    "return {1, v}\n");

static ngx_str_t  ngx_http_civchat_cluster_delta_lua = ngx_string(
    "local h = redis.call('HMGET', KEYS[1], 'v', 'merged', 'f')\n"
    "if not h[1] then return {0} end\n"
    "if h[2] then return {2, h[2]} end\n"
    "if h[3] == ARGV[4] then return {1, h[1], h[1]} end\n"
    "if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[1], 'pv', ARGV[5])"
    " end\n"
    "if ARGV[6] ~= '0' then redis.call('HINCRBY', KEYS[1], 'ss', ARGV[6])"
    " end\n"
    "local t = redis.call('HMGET', KEYS[1], 'ls', 'fs')\n"
    "if tonumber(ARGV[7]) > (tonumber(t[1]) or 0) then\n"
    "  redis.call('HSET', KEYS[1], 'ls', ARGV[7])\n"
    "end\n"
    "local fs = tonumber(ARGV[8])\n"
    "if fs > 0 and (not t[2] or tonumber(t[2]) == 0"
    " or fs < tonumber(t[2])) then\n"
    "  redis.call('HSET', KEYS[1], 'fs', ARGV[8])\n"
    "end\n"
    "if ARGV[9] ~= '' then\n"
    "  redis.call('HSET', KEYS[1], 'ua', string.sub(ARGV[9], 2))\n"
    "end\n"
    "local i = 11\n"
    "for j = 1, tonumber(ARGV[10]) do\n"
    "  redis.call('HSET', KEYS[1], 'a:' .. ARGV[i], ARGV[i + 1])\n"
    "  i = i + 2\n"
    "end\n"
    "local n = tonumber(ARGV[i])\n"
    "i = i + 1\n"
    "for j = 1, n do\n"
    "  redis.call('HDEL', KEYS[1], 'a:' .. ARGV[i])\n"
    "  i = i + 1\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'f', ARGV[4])\n"
    "local v = redis.call('HINCRBY', KEYS[1], 'v', 1)\n"
    "redis.call('PUBLISH', ARGV[2], ARGV[1] .. ' ' .. v .. ' ' .. ARGV[3])\n"
    "return {1, v, h[1]}\n");


/* "civchat_zone ... redis=NAME": the zone's profiles on that cluster */

char *
ngx_http_civchat_cluster_conf(ngx_conf_t *cf, ngx_http_civchat_zone_t *zone,
    ngx_str_t *name, ngx_uint_t down, ngx_msec_t flush)
{
    u_char                      *p;
    ngx_http_civchat_cluster_t  *cl;

    cl = ngx_pcalloc(cf->pool, sizeof(ngx_http_civchat_cluster_t));
    if (cl == NULL) {
        return NGX_CONF_ERROR;
    }

    cl->redis_name = *name;
    cl->down = down;
    cl->flush = flush;

    cl->prefix.len = sizeof("civchat::") - 1 + zone->name.len;
    cl->prefix.data = ngx_pnalloc(cf->pool, cl->prefix.len);

    cl->channel.len = cl->prefix.len + sizeof("changed") - 1;
    cl->channel.data = ngx_pnalloc(cf->pool, cl->channel.len);

    if (cl->prefix.data == NULL || cl->channel.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(cl->prefix.data, "civchat:", 8);
    p = ngx_cpymem(p, zone->name.data, zone->name.len);
    *p = ':';

    p = ngx_cpymem(cl->channel.data, cl->prefix.data, cl->prefix.len);
    ngx_memcpy(p, "changed", 7);

    cl->lookup = ngx_http_civchat_redis_script(cf,
                                      &ngx_http_civchat_cluster_lookup_lua);
    cl->claim = ngx_http_civchat_redis_script(cf,
                                      &ngx_http_civchat_cluster_claim_lua);
    cl->release = ngx_http_civchat_redis_script(cf,
                                      &ngx_http_civchat_cluster_release_lua);
    cl->write = ngx_http_civchat_redis_script(cf,
                                      &ngx_http_civchat_cluster_write_lua);
    cl->delta = ngx_http_civchat_redis_script(cf,
                                      &ngx_http_civchat_cluster_delta_lua);

    if (cl->lookup == NULL || cl->claim == NULL || cl->release == NULL
        || cl->write == NULL || cl->delta == NULL
        || ngx_http_civchat_live_redis_conf(cf, cl) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    zone->cluster = cl;

    return NGX_CONF_OK;
}


/* once every civchat_redis is known: the zone's cluster by name */

ngx_int_t
ngx_http_civchat_cluster_resolve(ngx_conf_t *cf,
    ngx_http_civchat_zone_t *zone, ngx_array_t *clusters)
{
    ngx_http_civchat_cluster_t  *cl;

    cl = zone->cluster;

    if (cl == NULL) {
        return NGX_OK;
    }

    cl->redis = (clusters != NULL)
                ? ngx_http_civchat_redis_find(clusters, &cl->redis_name)
                : NULL;

    if (cl->redis == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "civchat zone \"%V\": no \"civchat_redis %V\"",
                           &zone->name, &cl->redis_name);
        return NGX_ERROR;
    }

    return NGX_OK;
}
