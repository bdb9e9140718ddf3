
/*
 * Copyright (C) civchat developers
 */


#ifndef _NGX_HTTP_CIVCHAT_CLUSTER_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_CLUSTER_H_INCLUDED_


/*
 * A zone's profiles on Redis Cluster (README "More than one nginx
 * host"): what cache.c (under the zone's lock, called by zone.c),
 * doc.c, cluster.c, behind.c and live_redis.c share; nothing else
 * includes this.
 *
 * Redis holds the profiles; the zone of each nginx host is a cache of
 * them.  In Redis, under the prefix "civchat:ZONE:":
 *
 *   p:{KEY}     a hash: the profile whose own key is KEY (its id):
 *               v (its version, bumped by every write), id (its
 *               identity as JSON: key, user_id, email, other keys,
 *               verified), fs, ls, pv, ss (first and last seen, page
 *               views, sessions), ua, a:NAME (each attribute's value as
 *               JSON), f (the last write-behind applied: "origin:seq");
 *               or, for a day after a merge, only v and merged (the
 *               survivor's id)
 *   i:{k:KEY}   a string: "ID SECONDS", the id of the profile holding
 *               another key and when it was claimed (Redis's clock)
 *   i:{u:ID}    ... holding a user_id
 *   i:{e:EMAIL} ... holding an e-mail
 *
 * and the channel "civchat:ZONE:changed" where every write publishes
 * "ORIGIN VERSION ID"; for the live channel (live_redis.c):
 *
 *   l:{KEY}     a stream: what is said to the profile whose own key is
 *               KEY, each entry t (its type, NGX_HTTP_CIVCHAT_LIVE_*)
 *               and d (its data, one line of JSON)
 *
 * and the channel "civchat:ZONE:live" where each addition publishes
 * "KEY ENTRY-ID".  An index entry is a hint: a profile holds a
 * name only when its document says so, so an entry left behind by a
 * write that did not finish is taken over by the next claimer, once it
 * is older than NGX_HTTP_CIVCHAT_CLUSTER_GRACE (a younger one may be a
 * claim whose document is on its way).
 *
 * A request's plan is applied to the cache (rules.c, unchanged) once
 * the cache holds, fresh, the profiles of every name the plan names; a
 * change of identity (a profile made, merged, erased, a key, user_id or
 * e-mail gained or lost) is then written to Redis before the answer:
 * the names first (claimed atomically: one profile wins a race), then
 * each changed document, on condition that its version is the one the
 * cache had.  A conflict undoes nothing in Redis: the cache forgets
 * what it applied and the plan is applied again to fresh copies.  Page
 * views and attribute changes go behind: kept as a delta on the
 * profile here and written from a timer (behind.c).
 */


#define NGX_HTTP_CIVCHAT_CACHE_STALE     0x01   /* read it again first */
#define NGX_HTTP_CIVCHAT_CACHE_DIRTY     0x02   /* a delta not written */
#define NGX_HTTP_CIVCHAT_CACHE_FLUSHING  0x04   /* its delta is on its way */
#define NGX_HTTP_CIVCHAT_CACHE_UA        0x08   /* the delta sets the UA */
#define NGX_HTTP_CIVCHAT_CACHE_NEW       0x10   /* not in Redis yet */
#define NGX_HTTP_CIVCHAT_CACHE_ALL       0x20   /* the delta: every attr */

/* what Redis is asked for, at most, for one plan */
#define NGX_HTTP_CIVCHAT_CLUSTER_NAMES   4      /* key, user_id, email, id */
#define NGX_HTTP_CIVCHAT_CLUSTER_TRIES   5

/* seconds an index entry whose document does not hold its name is kept
   for its claimer (whose document write may be on its way) */
#define NGX_HTTP_CIVCHAT_CLUSTER_GRACE   10

/* the longest pause before a plan refused for a conflict is applied
   again (ms) */
#define NGX_HTTP_CIVCHAT_CLUSTER_BACKOFF  50

/* once Redis has not answered, how long requests do not ask it (ms):
   doubled each time it still does not, until the change channel is
   made again */
#define NGX_HTTP_CIVCHAT_CLUSTER_QUIET    1000
#define NGX_HTTP_CIVCHAT_CLUSTER_QUIET_MAX  8000


/* a profile's cache part, in the zone (profile->cache is its offset) */
typedef struct {
    ngx_queue_t                   dirty;     /* in sh->dirty, when DIRTY */
    uint64_t                      version;   /* Redis's, of this copy */
    uint32_t                      profile;   /* its profile's offset */
    uint32_t                      gen;       /* sh->gen when read */
    uint32_t                      views;     /* the delta: page views */
    uint32_t                      sessions;
    uint32_t                      names;     /* changed attributes, or 0 */
    uint16_t                      names_len; /* "name\0name\0..." */
    u_char                        flags;
} ngx_http_civchat_cached_t;


/* what a zone on Redis shares between its workers, in the zone */
typedef struct {
    ngx_queue_t                   dirty;     /* profiles with a delta */
    ngx_uint_t                    ndirty;
    uint32_t                      gen;       /* bumped on a lost channel */
    ngx_atomic_t                  listening; /* workers subscribed */
    uint64_t                      seq;       /* of write-behind batches */
    u_char                        origin[NGX_HTTP_CIVCHAT_KEY_LEN];

    /* for civchat_status */
    ngx_atomic_t                  reads;     /* requests that read first */
    ngx_atomic_t                  writes;    /* that wrote before answering */
    ngx_atomic_t                  conflicts; /* writes refused: applied again */
    ngx_atomic_t                  down;      /* Redis did not answer */
    ngx_atomic_t                  deltas;    /* deltas written behind */
} ngx_http_civchat_cluster_sh_t;


/* civchat_zone ... redis=NAME: in the zone's configuration */
struct ngx_http_civchat_cluster_s {
    ngx_str_t                     redis_name;
    ngx_http_civchat_redis_t     *redis;
    ngx_str_t                     prefix;    /* "civchat:ZONE:" */
    ngx_str_t                     channel;   /* prefix "changed" */
    ngx_uint_t                    down;      /* NGX_HTTP_CIVCHAT_DOWN_* */
    ngx_msec_t                    flush;     /* write-behind interval */

    ngx_http_civchat_redis_script_t  *lookup;
    ngx_http_civchat_redis_script_t  *claim;
    ngx_http_civchat_redis_script_t  *release;
    ngx_http_civchat_redis_script_t  *write;
    ngx_http_civchat_redis_script_t  *delta;

    /* the live channel (live_redis.c) */
    ngx_str_t                     live_channel;  /* prefix "live" */
    ngx_http_civchat_redis_script_t  *live_add;
    ngx_http_civchat_redis_script_t  *live_read;

    /* per worker */
    ngx_http_civchat_zone_t      *zone;
    ngx_http_civchat_redis_sub_t *sub;
    ngx_event_t                   flush_ev;
    ngx_uint_t                    flushing;  /* scripts on their way */
    ngx_msec_t                    exit_start;
    ngx_msec_t                    quiet_at;  /* when Redis did not answer */
    ngx_msec_t                    quiet_for; /* and how long it is let be */
    ngx_log_t                    *log;
    unsigned                      heard:1;   /* subscribed, as far as known */
    unsigned                      quiet:1;   /* ... and has not since */
};


#define ngx_http_civchat_cache_ptr(zone, offset)                             \
    ((u_char *) (zone)->shpool + (offset))

#define ngx_http_civchat_cluster_count(zone, field)                          \
    (void) ngx_atomic_fetch_add(                                             \
        &((ngx_http_civchat_cluster_sh_t *) (zone)->sh->cluster)->field, 1)

#define ngx_http_civchat_cache_of(zone, p)                                   \
    ((p)->cache ? (ngx_http_civchat_cached_t *)                              \
                  ngx_http_civchat_cache_ptr(zone, (p)->cache)               \
                : NULL)


/* a name a plan names, and what Redis said of it */
typedef struct {
    u_char                        kind;      /* k, u, e */
    u_char                        flags;     /* the index entry's */
    ngx_str_t                     value;
    ngx_str_t                     owner;     /* the index's id, or empty */
    unsigned                      asked:1;   /* Redis was asked */
    unsigned                      stale:1;   /* the owner does not hold it */
    unsigned                      young:1;   /* claimed a moment ago */
    unsigned                      own:1;     /* k: a profile's own key */
} ngx_http_civchat_name_t;


/* a profile's identity before the plan was applied (cache.c) */
typedef struct {
    ngx_str_t                     id;
    ngx_array_t                   names;     /* ngx_http_civchat_name_t */
    uint32_t                      views;     /* its delta before */
    uint32_t                      sessions;

    /* the whole copy, as Redis would answer it, to undo an identity
       change (cache_snapshot(), cache_restore()) */
    ngx_http_civchat_redis_reply_t  *snapshot;
    uint64_t                      version;
    uint32_t                      delta_names;
    uint16_t                      delta_names_len;
    u_char                        delta_flags;

    unsigned                      dirty:1;
    unsigned                      gone:1;    /* merged or erased */
    unsigned                      written:1; /* after: its document is */
} ngx_http_civchat_before_t;


/* one write of a plan's outcome */
#define NGX_HTTP_CIVCHAT_WRITE_CLAIM     1
#define NGX_HTTP_CIVCHAT_WRITE_RELEASE   2
#define NGX_HTTP_CIVCHAT_WRITE_DOC       3
#define NGX_HTTP_CIVCHAT_WRITE_MERGED    4
#define NGX_HTTP_CIVCHAT_WRITE_ERASE     5
#define NGX_HTTP_CIVCHAT_WRITE_DELTA     6

typedef struct {
    ngx_uint_t                    type;
    ngx_str_t                     id;        /* the profile's */
    ngx_http_civchat_name_t       name;      /* CLAIM, RELEASE */
    ngx_str_t                     expected;  /* CLAIM: the holder it may
                                                replace; DOC: version */
    ngx_array_t                  *fields;    /* DOC, DELTA: ngx_str_t;
                                                MERGED: the survivor */
    uint64_t                      base;      /* the version it was made on */
    uint64_t                      seq;       /* DELTA: its token's number */
    uint64_t                      version;   /* what it became */
    uint32_t                      views;     /* the delta it took */
    uint32_t                      sessions;
    uint32_t                      keep_views; /* DOC: the delta before */
    uint32_t                      keep_sessions;
    uint32_t                      names;     /* DELTA: the names it took */
    uint16_t                      names_len;
    unsigned                      ua:1;
    unsigned                      taken:1;   /* took a delta */
    unsigned                      claimed:1; /* CLAIM: set by it */
} ngx_http_civchat_write_t;


/* a document read from Redis (doc.c), to be put in the cache */
typedef struct {
    ngx_str_t                     id;
    uint64_t                      version;   /* 0: there is none */
    ngx_str_t                     merged;    /* a tombstone: the survivor */
    ngx_str_t                     identity_text;
    json_t                       *identity;  /* freed with the pool */
    ngx_str_t                     attrs;     /* an object's text */
    ngx_str_t                     ua;
    uint32_t                      first_seen;
    uint32_t                      last_seen;
    uint32_t                      page_views;
    uint32_t                      sessions;
} ngx_http_civchat_doc_t;


/*
 * A request's dealings with Redis: what it needs read (names, and the
 * deltas of stale profiles written first), what its plan's outcome
 * must write.
 */
struct ngx_http_civchat_sync_s {
    ngx_http_civchat_zone_t      *zone;
    ngx_pool_t                   *pool;
    ngx_log_t                    *log;

    ngx_http_civchat_name_t       names[NGX_HTTP_CIVCHAT_CLUSTER_NAMES];
    ngx_uint_t                    nnames;

    ngx_array_t                   flush;     /* ngx_str_t: ids */
    ngx_array_t                   stale;     /* ngx_str_t: ids to read */
    ngx_array_t                   fetch;     /* ngx_http_civchat_name_t * */
    ngx_array_t                   docs;      /* ngx_http_civchat_doc_t */
    ngx_array_t                   before;    /* ngx_http_civchat_before_t */
    ngx_array_t                   writes;    /* ngx_http_civchat_write_t */

    /* the commands on their way, and what to do when all are answered */
    ngx_uint_t                    waiting;
    ngx_uint_t                    phase;
    ngx_int_t                     rc;
    void                        (*done)(void *data, ngx_int_t rc);
    void                         *data;
    ngx_array_t                   cmds;      /* redis_cmd_t *, to cancel */

    ngx_uint_t                    tries;
    ngx_uint_t                    conflicts;
    ngx_event_t                   backoff;   /* before applying again */
    unsigned                      degraded:1; /* Redis is not answering */
    unsigned                      unanswered:1; /* a command got no reply */
    unsigned                      trusted:1;  /* the server API: write
                                                 through */
};


/* cache.c, cache_plan.c: under the zone's lock (zone.c calls these) */
ngx_int_t ngx_http_civchat_cache_init(ngx_http_civchat_zone_t *zone);
ngx_http_civchat_cluster_sh_t *ngx_http_civchat_cache_sh(
    ngx_http_civchat_zone_t *zone);
ngx_http_civchat_profile_t *ngx_http_civchat_cache_own(
    ngx_http_civchat_zone_t *zone, ngx_str_t *id);
ngx_http_civchat_cached_t *ngx_http_civchat_cache_part(
    ngx_http_civchat_zone_t *zone, ngx_http_civchat_profile_t *p);
ngx_uint_t ngx_http_civchat_cache_fresh(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_cached_t *c);
ngx_int_t ngx_http_civchat_cache_remove(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p);
void ngx_http_civchat_cache_dirty_on(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_cached_t *c);
void ngx_http_civchat_cache_dirty_off(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_cached_t *c);
ngx_int_t ngx_http_civchat_cache_needs(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_sync_t *sync);
ngx_int_t ngx_http_civchat_cache_before(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_sync_t *sync);
ngx_int_t ngx_http_civchat_cache_snapshot(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_cached_t *c,
    ngx_pool_t *pool, ngx_http_civchat_before_t *b);
void ngx_http_civchat_cache_restore(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync);
ngx_int_t ngx_http_civchat_cache_clear_names(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_doc_t *doc);
ngx_int_t ngx_http_civchat_cache_after(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_plan_t *plan, ngx_http_civchat_result_t *res,
    ngx_http_civchat_sync_t *sync);
void ngx_http_civchat_cache_install(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync);
void ngx_http_civchat_cache_commit(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync);
void ngx_http_civchat_cache_undo(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync);
void ngx_http_civchat_cache_visit(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_uint_t session, ngx_uint_t ua);
void ngx_http_civchat_cache_attrs(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_plan_t *plan,
    ngx_uint_t autos);
ngx_int_t ngx_http_civchat_cache_take(ngx_http_civchat_zone_t *zone,
    ngx_str_t *id, ngx_pool_t *pool, ngx_http_civchat_write_t *w);
void ngx_http_civchat_cache_flushed(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_write_t *w, ngx_int_t rc, uint64_t old,
    uint64_t version);
void ngx_http_civchat_cache_changed(ngx_http_civchat_zone_t *zone,
    ngx_str_t *id, uint64_t version);
void ngx_http_civchat_cache_listen(ngx_http_civchat_zone_t *zone,
    ngx_int_t on);
ngx_int_t ngx_http_civchat_cache_dirty(ngx_http_civchat_zone_t *zone,
    ngx_pool_t *pool, ngx_array_t *ids, ngx_uint_t max);

/* zone.c: the same, each under the lock */
void ngx_http_civchat_zone_install(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync);
void ngx_http_civchat_zone_written(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_sync_t *sync, ngx_int_t rc);
ngx_int_t ngx_http_civchat_zone_take(ngx_http_civchat_zone_t *zone,
    ngx_str_t *id, ngx_pool_t *pool, ngx_http_civchat_write_t *w);
void ngx_http_civchat_zone_flushed(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_write_t *w, ngx_int_t rc, uint64_t old,
    uint64_t version);
void ngx_http_civchat_zone_changed(ngx_http_civchat_zone_t *zone,
    ngx_str_t *id, uint64_t version);
void ngx_http_civchat_zone_listen(ngx_http_civchat_zone_t *zone,
    ngx_int_t on);
ngx_int_t ngx_http_civchat_zone_dirty(ngx_http_civchat_zone_t *zone,
    ngx_pool_t *pool, ngx_array_t *ids, ngx_uint_t max);
void ngx_http_civchat_zone_origin(ngx_http_civchat_zone_t *zone,
    ngx_str_t *origin);

/* doc.c: a profile as a Redis document, and back */
ngx_int_t ngx_http_civchat_doc_fields(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_pool_t *pool, ngx_array_t *fields);
ngx_int_t ngx_http_civchat_doc_delta(ngx_http_civchat_zone_t *zone,
    ngx_http_civchat_profile_t *p, ngx_http_civchat_cached_t *c,
    ngx_pool_t *pool, ngx_array_t *fields);
ngx_int_t ngx_http_civchat_doc_parse(ngx_pool_t *pool, ngx_str_t *id,
    ngx_http_civchat_redis_reply_t *r, ngx_http_civchat_doc_t *doc);
ngx_http_civchat_profile_t *ngx_http_civchat_doc_install(
    ngx_http_civchat_zone_t *zone, ngx_http_civchat_doc_t *doc);
ngx_int_t ngx_http_civchat_doc_holds(ngx_http_civchat_doc_t *doc,
    ngx_http_civchat_name_t *name);
ngx_int_t ngx_http_civchat_doc_key(ngx_pool_t *pool,
    ngx_http_civchat_cluster_t *cl, u_char kind, ngx_str_t *value,
    ngx_str_t *key);
uint64_t ngx_http_civchat_doc_uint(ngx_http_civchat_redis_reply_t *r);
ngx_int_t ngx_http_civchat_doc_names(ngx_http_civchat_profile_t *p,
    ngx_pool_t *pool, ngx_array_t *names);

/* live_redis.c */
ngx_int_t ngx_http_civchat_live_redis_conf(ngx_conf_t *cf,
    ngx_http_civchat_cluster_t *cl);

/* behind.c */
ngx_int_t ngx_http_civchat_behind_delta(ngx_http_civchat_cluster_t *cl,
    ngx_str_t *id, void (*done)(void *data, ngx_int_t rc), void *data);



#endif /* _NGX_HTTP_CIVCHAT_CLUSTER_H_INCLUDED_ */
