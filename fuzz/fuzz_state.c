
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
 * What was loaded is then saved and loaded again into a fresh zone, and
 * saved again: unless something was evicted, both saved files must be
 * the same, so that a restart never loses or changes a profile.
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


static ngx_http_civchat_zone_t   zone;
static ngx_shm_zone_t           *shm_zone;
static u_char                   *region;
static char                      dir[] = "/dev/shm/civchat-fuzz-XXXXXX";
static u_char                    input[64], saved[64], again[64];


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
    (void) rmdir(dir);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char      *one, *two;
    size_t       pool, n1, n2;
    ngx_uint_t   evictions;

    if (size < 1) {
        return 0;
    }

    pool = (data[0] == '{') ? 1024 * 1024 : 32 * 1024;

    fuzz_write(input, data, size);

    fuzz_load(pool, input);
    evictions = zone.sh->evictions;
    fuzz_save(saved);

    fuzz_load(pool, saved);
    evictions += zone.sh->evictions;
    fuzz_save(again);

    if (evictions) {
        return 0;
    }

    one = fuzz_read(saved, &n1);
    two = fuzz_read(again, &n2);

    if (n1 != n2 || ngx_memcmp(one, two, n1) != 0) {
        ngx_fuzz_fail("saved, loaded and saved again differs:\n"
                      "%.*s\n---\n%.*s", (int) n1, one, (int) n2, two);
    }

    free(one);
    free(two);

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
