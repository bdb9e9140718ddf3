
/*
 * Copyright (C) civchat developers
 */


/*
 * The state file loader (state.c): the input is a state file, loaded
 * into a profile zone in plain memory by the zone's own init function,
 * as nginx does at start.  The zone is 1m when the file starts with '{'
 * as a saved one does, and 32k otherwise (the header line is skipped
 * anyway), so that loading also evicts.
 *
 * What was loaded is then saved (zone.c's save, in pieces of 64k),
 * loaded again into a fresh zone and saved again in pieces of a size
 * the input's last byte chooses (state.c's steps, as zone.c takes
 * them): unless something was evicted, both saved files must be the
 * same, so that a restart never loses or changes a profile, whatever
 * the pieces.
 *
 * That zone is then saved once more while it changes between the
 * pieces, as requests change it between the saving worker's turns:
 * the least or the most recently seen profile deleted, a profile
 * created, as the input's bytes say.  The file must hold each profile
 * at most once, and every profile that lived through the save.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "common.h"


static void fuzz_cleanup(void);
static void fuzz_write(u_char *path, const uint8_t *data, size_t size);
static u_char *fuzz_read(u_char *path, size_t *size);
static void fuzz_load(size_t size, u_char *path);
static void fuzz_save(u_char *path);
static void fuzz_save_pieces(u_char *path, size_t piece,
    const uint8_t *ops, size_t nops);
static void fuzz_change(uint8_t op);
static ngx_str_t *fuzz_keys(ngx_uint_t *n);
static int fuzz_key_cmp(const void *one, const void *two);
static void fuzz_check_walk(u_char *path, ngx_str_t *keys, ngx_uint_t n);


static ngx_http_civchat_zone_t   zone;
static ngx_shm_zone_t           *shm_zone;
static u_char                   *region;
static char                      dir[] = "/dev/shm/civchat-fuzz-XXXXXX";
static u_char                    input[64], saved[64], again[64];
static u_char                    moving[64];
static ngx_uint_t                created;


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ngx_conf_t    cf;
    ngx_cycle_t  *cycle;

    ngx_fuzz_init();

    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        abort();
    }

    /* FUZZ_KEEP=1 keeps the files of the last input, for a look */

    if (getenv("FUZZ_KEEP") == NULL) {
        atexit(fuzz_cleanup);

    } else {
        fprintf(stderr, "fuzz_state: files in %s\n", dir);
    }

    ngx_sprintf(input, "%s/input%Z", dir);
    ngx_sprintf(saved, "%s/saved%Z", dir);
    ngx_sprintf(again, "%s/again%Z", dir);
    ngx_sprintf(moving, "%s/moving%Z", dir);

    cycle = (ngx_cycle_t *) ngx_cycle;
    cycle->pool = ngx_create_pool(4096, ngx_fuzz_log);

    if (cycle->pool == NULL
        || ngx_list_init(&cycle->shared_memory, cycle->pool, 1,
                         sizeof(ngx_shm_zone_t))
           != NGX_OK)
    {
        abort();
    }

    ngx_memzero(&cf, sizeof(ngx_conf_t));
    cf.cycle = cycle;
    cf.pool = cycle->pool;
    cf.log = ngx_fuzz_log;

    ngx_str_set(&zone.name, "fuzz");

    if (ngx_http_civchat_zone_add(&cf, &zone, 1024 * 1024) != NGX_CONF_OK) {
        abort();
    }

    shm_zone = zone.shm_zone;

    region = ngx_memalign(ngx_pagesize, 1024 * 1024, ngx_fuzz_log);
    if (region == NULL) {
        abort();
    }

    return 0;
}


static void
fuzz_cleanup(void)
{
    (void) unlink((char *) input);
    (void) unlink((char *) saved);
    (void) unlink((char *) again);
    (void) unlink((char *) moving);
    (void) rmdir(dir);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char      *one, *two;
    size_t       pool, n1, n2, piece;
    ngx_str_t   *keys;
    ngx_uint_t   evictions, n;

    if (size < 1) {
        return 0;
    }

    pool = (data[0] == '{') ? 1024 * 1024 : 32 * 1024;

    /* 1 to 2041 bytes: a profile or a few a piece, or one bigger */
    piece = 1 + data[size - 1] * 8;

    fuzz_write(input, data, size);

    fuzz_load(pool, input);
    evictions = zone.sh->evictions;
    fuzz_save(saved);

    fuzz_load(pool, saved);
    evictions += zone.sh->evictions;
    fuzz_save_pieces(again, piece, NULL, 0);

    if (evictions == 0) {
        one = fuzz_read(saved, &n1);
        two = fuzz_read(again, &n2);

        if (n1 != n2 || ngx_memcmp(one, two, n1) != 0) {
            ngx_fuzz_fail("saved, loaded and saved again in pieces of %zu "
                          "differs:\n%.*s\n---\n%.*s",
                          piece, (int) n1, one, (int) n2, two);
        }

        free(one);
        free(two);
    }

    /* the zone as loaded from "saved", changing while it is saved */

    keys = fuzz_keys(&n);
    fuzz_save_pieces(moving, piece, data, size);
    fuzz_check_walk(moving, keys, n);

    free(keys);

    return 0;
}


static void
fuzz_load(size_t size, u_char *path)
{
    ngx_slab_pool_t  *sp;

    /* what ngx_init_zone_pool() does for a new zone */

    sp = (ngx_slab_pool_t *) region;
    ngx_memzero(sp, sizeof(ngx_slab_pool_t));

    sp->end = region + size;
    sp->min_shift = 3;
    sp->addr = region;

    if (ngx_shmtx_create(&sp->mutex, &sp->lock, NULL) != NGX_OK) {
        abort();
    }

    ngx_slab_init(sp);

    shm_zone->shm.addr = region;
    shm_zone->shm.size = size;
    shm_zone->shm.exists = 0;
    shm_zone->shm.log = ngx_fuzz_log;

    zone.sh = NULL;
    zone.shpool = NULL;
    zone.npinned = 0;
    zone.state.data = path;
    zone.state.len = ngx_strlen(path);

    /* a state file that cannot be read is an error; one that can never is */

    if (shm_zone->init(shm_zone, NULL) != NGX_OK) {
        ngx_fuzz_fail("the zone's init failed");
    }

    ngx_fuzz_assert(zone.npinned == 0);
}


static void
fuzz_save(u_char *path)
{
    /* as if a request changed something since the load */

    zone.sh->saved = zone.sh->changes + 1;

    zone.state.data = path;
    zone.state.len = ngx_strlen(path);

    if (ngx_http_civchat_zone_save(&zone, ngx_fuzz_log) != NGX_OK) {
        ngx_fuzz_fail("saving the state failed");
    }
}


/* state.c's steps as zone.c takes them, the zone changing in between */

static void
fuzz_save_pieces(u_char *path, size_t piece, const uint8_t *ops,
    size_t nops)
{
    ngx_int_t                       rc;
    ngx_uint_t                      i;
    ngx_http_civchat_state_save_t  *s;

    zone.sh->saved = zone.sh->changes + 1;

    zone.state.data = path;
    zone.state.len = ngx_strlen(path);

    s = ngx_http_civchat_state_begin(&zone, piece, ngx_fuzz_log);
    ngx_fuzz_assert(s != NULL);

    for (i = 0; /* void */; i++) {
        rc = ngx_http_civchat_state_piece(&zone, s);
        ngx_fuzz_assert(rc == NGX_OK || rc == NGX_AGAIN);

        rc = ngx_http_civchat_state_write(&zone, s, rc);
        ngx_fuzz_assert(rc == NGX_OK || rc == NGX_AGAIN);

        if (rc == NGX_OK) {
            break;
        }

        if (nops) {
            fuzz_change(ops[i % nops]);
        }
    }

    ngx_http_civchat_state_end(s);
}


/* what requests do between two pieces */

static void
fuzz_change(uint8_t op)
{
    u_char                       buf[NGX_HTTP_CIVCHAT_KEY_LEN + 1];
    ngx_str_t                    key;
    ngx_queue_t                 *q;
    ngx_http_civchat_profile_t  *pr;

    switch (op & 3) {

    case 1:
    case 2:
        if (ngx_queue_empty(&zone.sh->lru)) {
            return;
        }

        q = (op & 1) ? ngx_queue_last(&zone.sh->lru)
                     : ngx_queue_head(&zone.sh->lru);
        pr = ngx_queue_data(q, ngx_http_civchat_profile_t, lru);

        ngx_http_civchat_store_delete(&zone, pr);
        return;

    case 3:
        key.data = buf;
        key.len = ngx_sprintf(buf, "fuzznew%09ui", created++ % 1000000000)
                  - buf;

        if (ngx_http_civchat_store_index(&zone, NGX_HTTP_CIVCHAT_BY_KEY,
                                         &key)
            == NULL)
        {
            (void) ngx_http_civchat_store_create(&zone, &key, ngx_time());
            ngx_http_civchat_store_unpin(&zone);
        }

        return;

    default:
        return;
    }
}


/* the own keys of the zone's profiles, copied */

static ngx_str_t *
fuzz_keys(ngx_uint_t *n)
{
    u_char                      *p;
    ngx_uint_t                   i;
    ngx_str_t                   *keys;
    ngx_queue_t                 *q;
    ngx_http_civchat_profile_t  *pr;

    keys = malloc((zone.sh->profiles + 1)
                  * (sizeof(ngx_str_t) + NGX_HTTP_CIVCHAT_KEY_MAX));
    if (keys == NULL) {
        abort();
    }

    p = (u_char *) (keys + zone.sh->profiles + 1);
    i = 0;

    for (q = ngx_queue_head(&zone.sh->lru);
         q != ngx_queue_sentinel(&zone.sh->lru);
         q = ngx_queue_next(q))
    {
        pr = ngx_queue_data(q, ngx_http_civchat_profile_t, lru);

        keys[i].data = p;
        keys[i].len = pr->key.len;
        p = ngx_cpymem(p, pr->key.data, pr->key.len);
        i++;
    }

    ngx_fuzz_assert(i == zone.sh->profiles);

    *n = i;

    return keys;
}


static int
fuzz_key_cmp(const void *one, const void *two)
{
    const ngx_str_t  *a = one;
    const ngx_str_t  *b = two;

    return ngx_memn2cmp(a->data, b->data, a->len, b->len);
}


/*
 * The file saved while the zone changed: each profile at most once, and
 * every one of "keys" (the zone's before the save) that is still in the
 * zone.
 */

static void
fuzz_check_walk(u_char *path, ngx_str_t *keys, ngx_uint_t n)
{
    u_char                    *text, *p, *last, *end;
    size_t                     len;
    ngx_uint_t                 i, nlines;
    ngx_str_t                 *lines;
    ngx_http_civchat_index_t  *ix;

    text = fuzz_read(path, &len);
    last = text + len;

    lines = malloc((len / 2 + 1) * sizeof(ngx_str_t));
    if (lines == NULL) {
        abort();
    }

    nlines = 0;

    p = ngx_strlchr(text, last, '\n');
    ngx_fuzz_assert(p != NULL);

    for (p++; p < last; p = end + 1) {
        end = ngx_strlchr(p, last, '\n');
        ngx_fuzz_assert(end != NULL);

        ngx_fuzz_assert(end - p > 8
                        && ngx_strncmp(p, "{\"key\":\"", 8) == 0);

        lines[nlines].data = p + 8;
        p = ngx_strlchr(p + 8, end, '"');
        ngx_fuzz_assert(p != NULL);

        lines[nlines].len = p - lines[nlines].data;
        nlines++;
    }

    qsort(lines, nlines, sizeof(ngx_str_t), fuzz_key_cmp);

    for (i = 1; i < nlines; i++) {
        if (fuzz_key_cmp(&lines[i - 1], &lines[i]) == 0) {
            ngx_fuzz_fail("profile \"%.*s\" saved twice",
                          (int) lines[i].len, lines[i].data);
        }
    }

    for (i = 0; i < n; i++) {
        ix = ngx_http_civchat_store_index(&zone, NGX_HTTP_CIVCHAT_BY_KEY,
                                          &keys[i]);

        if (ix == NULL || ix->alias) {
            /* deleted or evicted during the save */
            continue;
        }

        if (bsearch(&keys[i], lines, nlines, sizeof(ngx_str_t),
                    fuzz_key_cmp)
            == NULL)
        {
            ngx_fuzz_fail("profile \"%.*s\" lived through the save but "
                          "is not in it", (int) keys[i].len, keys[i].data);
        }
    }

    free(lines);
    free(text);
}


static void
fuzz_write(u_char *path, const uint8_t *data, size_t size)
{
    FILE  *f;

    f = fopen((char *) path, "w");

    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
        perror("fuzz_write");
        abort();
    }
}


static u_char *
fuzz_read(u_char *path, size_t *size)
{
    long     n;
    FILE    *f;
    u_char  *buf;

    f = fopen((char *) path, "r");

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0) {
        perror("fuzz_read");
        abort();
    }

    rewind(f);

    buf = malloc(n + 1);

    if (buf == NULL || fread(buf, 1, n, f) != (size_t) n) {
        perror("fuzz_read");
        abort();
    }

    fclose(f);

    *size = n;

    return buf;
}
