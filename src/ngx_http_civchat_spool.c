
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_http.h"


/*
 * The HTTP store's spool: a directory of the batches the store did not
 * take, shared by every worker of every configuration (a batch spooled
 * by a worker that exited is sent by the workers that follow), sent
 * again oldest first.
 *
 * A batch is a file named <msec>-<pid>-<seq>.ndjson, so that the names
 * sort in the order the batches were written.  It is written as .tmp
 * and renamed, so that a file with that name is always whole; a worker
 * sending one renames it to .<pid>.sending first, so that no other
 * worker sends it too, and deletes it once the store took it.
 */


struct ngx_http_civchat_claim_s {
    size_t                        len;       /* of the file */
    u_char                       *claimed;   /* its name while sent */
    u_char                        name[1];   /* its name in the spool */
};


static ngx_int_t ngx_http_civchat_spool_scan(ngx_http_civchat_spool_t *sp,
    u_char *oldest);
static void ngx_http_civchat_spool_salvage(ngx_http_civchat_spool_t *sp,
    u_char *path, ngx_pid_t pid);


/*
 * A batch of "events" lines.  NGX_DECLINED: the spool is full (force
 * writes past spool_size, for the events of a worker that exits).
 */

ngx_int_t
ngx_http_civchat_spool_write(ngx_http_civchat_spool_t *sp, u_char *data,
    size_t len, ngx_uint_t events, ngx_log_t *log, ngx_uint_t force)
{
    u_char      name[NGX_MAX_PATH], tmp[NGX_MAX_PATH];
    ssize_t     n;
    ngx_fd_t    fd;
    ngx_time_t *tp;

    if (ngx_current_msec - sp->scanned >= NGX_HTTP_CIVCHAT_SPOOL_SCAN) {
        (void) ngx_http_civchat_spool_scan(sp, NULL);
    }

    if (!force && sp->bytes + (off_t) len > sp->limit) {
        (void) ngx_atomic_fetch_add(&sp->counters->spool_full, 1);
        return NGX_DECLINED;
    }

    if (sp->path.len + 64 > NGX_MAX_PATH) {
        return NGX_ERROR;
    }

    tp = ngx_timeofday();

    ngx_sprintf(name, "%V/%010T%03M-%P-%06ui.ndjson%Z", &sp->path,
                tp->sec, tp->msec, ngx_pid, sp->seq++);
    ngx_sprintf(tmp, "%s.tmp%Z", name);

    fd = ngx_open_file(tmp, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE,
                       NGX_FILE_DEFAULT_ACCESS);
    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "civchat_store: cannot spool, " ngx_open_file_n
                      " \"%s\" failed", tmp);
        return NGX_ERROR;
    }

    n = ngx_write_fd(fd, data, len);

    if (n != (ssize_t) len) {

        /* a full disk may first cut a write short, without an errno */

        if (n == -1) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                          "civchat_store: cannot spool, writing \"%s\" "
                          "failed", tmp);

        } else {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "civchat_store: cannot spool, writing \"%s\" "
                          "was incomplete, %z of %uz bytes written",
                          tmp, n, len);
        }

        ngx_close_file(fd);
        ngx_delete_file(tmp);
        return NGX_ERROR;
    }

    ngx_close_file(fd);

    if (ngx_rename_file(tmp, name) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      ngx_rename_file_n " \"%s\" failed", tmp);
        ngx_delete_file(tmp);
        return NGX_ERROR;
    }

    sp->bytes += len;
    sp->pending = 1;
    (void) ngx_atomic_fetch_add(&sp->counters->spooled, events);

    return NGX_OK;
}


/*
 * The oldest batch in the spool, claimed and read into memory after
 * "reserve" bytes (the request header goes there), with its count of
 * lines.  NULL: none, or it could not be read (it stays in the spool).
 */

ngx_http_civchat_claim_t *
ngx_http_civchat_spool_claim(ngx_http_civchat_spool_t *sp, size_t reserve,
    u_char **start, size_t *len, ngx_uint_t *events)
{
    u_char                    *buf, *p, oldest[NGX_MAX_PATH];
    size_t                     n;
    ssize_t                    got;
    ngx_fd_t                   fd;
    ngx_file_info_t            fi;
    ngx_http_civchat_claim_t  *claim;

    if (ngx_http_civchat_spool_scan(sp, oldest) != NGX_OK) {
        sp->pending = 0;
        return NULL;
    }

    n = ngx_strlen(oldest);

    claim = ngx_alloc(sizeof(ngx_http_civchat_claim_t) + 2 * n
                      + sizeof(".-.sending") + NGX_INT_T_LEN, sp->log);
    if (claim == NULL) {
        return NULL;
    }

    ngx_memcpy(claim->name, oldest, n + 1);
    claim->claimed = claim->name + n + 1;
    ngx_sprintf(claim->claimed, "%s.%P.sending%Z", oldest, ngx_pid);

    if (ngx_rename_file(claim->name, claim->claimed) == NGX_FILE_ERROR) {
        /* another worker took it */
        ngx_free(claim);
        return NULL;
    }

    buf = NULL;

    fd = ngx_open_file(claim->claimed, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE || ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        goto failed;
    }

    claim->len = ngx_file_size(&fi);

    buf = ngx_alloc(reserve + claim->len + 1, sp->log);
    if (buf == NULL) {
        goto failed;
    }

    got = ngx_read_fd(fd, buf + reserve, claim->len);
    ngx_close_file(fd);
    fd = NGX_INVALID_FILE;

    if (got != (ssize_t) claim->len) {
        goto failed;
    }

    sp->bytes -= ngx_min(sp->bytes, (off_t) claim->len);

    *start = buf;
    *len = claim->len;
    *events = 0;

    for (p = buf + reserve; p < buf + reserve + claim->len; p++) {
        if (*p == '\n') {
            (*events)++;
        }
    }

    return claim;

failed:

    ngx_log_error(NGX_LOG_ERR, sp->log, ngx_errno,
                  "civchat_store: reading spooled \"%s\" failed",
                  claim->claimed);

    if (fd != NGX_INVALID_FILE) {
        ngx_close_file(fd);
    }

    if (buf != NULL) {
        ngx_free(buf);
    }

    claim->len = 0;
    ngx_http_civchat_spool_release(sp, claim);

    return NULL;
}


/* a claimed batch the store did not take goes back; the claim is freed */

void
ngx_http_civchat_spool_release(ngx_http_civchat_spool_t *sp,
    ngx_http_civchat_claim_t *claim)
{
    if (ngx_rename_file(claim->claimed, claim->name) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, sp->log, ngx_errno,
                      ngx_rename_file_n " \"%s\" failed", claim->claimed);

    } else {
        sp->bytes += claim->len;
        sp->pending = 1;
    }

    ngx_free(claim);
}


/* the store took a claimed batch; the claim is freed */

void
ngx_http_civchat_spool_sent(ngx_http_civchat_spool_t *sp,
    ngx_http_civchat_claim_t *claim)
{
    if (ngx_delete_file(claim->claimed) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, sp->log, ngx_errno,
                      ngx_delete_file_n " \"%s\" failed", claim->claimed);
    }

    ngx_free(claim);
}


/* batches spooled by other workers, or by exited ones: look again */

void
ngx_http_civchat_spool_poll(ngx_http_civchat_spool_t *sp)
{
    if (ngx_current_msec - sp->scanned >= NGX_HTTP_CIVCHAT_SPOOL_SCAN) {
        sp->pending = 1;
    }
}


ngx_int_t
ngx_http_civchat_spool_full(ngx_http_civchat_spool_t *sp)
{
    return sp->bytes >= sp->limit;
}


/*
 * Sizes up the spool and finds its oldest batch.  A batch claimed by a
 * worker that no longer runs is given back; a batch it did not finish
 * writing is removed (its events were kept in memory, see http.c).
 */

static ngx_int_t
ngx_http_civchat_spool_scan(ngx_http_civchat_spool_t *sp, u_char *oldest)
{
    u_char      *name, *p, *last, path[NGX_MAX_PATH], back[NGX_MAX_PATH];
    size_t       len;
    ngx_dir_t    dir;
    ngx_pid_t    pid;
    ngx_int_t    found;
    ngx_uint_t   best;
    u_char       bestname[NGX_MAX_PATH];

    sp->scanned = ngx_current_msec;
    sp->bytes = 0;
    found = NGX_DECLINED;
    best = 0;

    if (ngx_open_dir(&sp->path, &dir) == NGX_ERROR) {
        return NGX_DECLINED;
    }

    for ( ;; ) {
        ngx_set_errno(0);

        if (ngx_read_dir(&dir) == NGX_ERROR) {
            break;
        }

        name = ngx_de_name(&dir);
        len = ngx_de_namelen(&dir);

        if (len < sizeof("0.ndjson") - 1 || name[0] < '0' || name[0] > '9'
            || sp->path.len + len + 2 > NGX_MAX_PATH)
        {
            continue;
        }

        ngx_sprintf(path, "%V/%*s%Z", &sp->path, len, name);

        if (len > sizeof(".tmp") - 1
            && ngx_strncmp(name + len - 4, ".tmp", 4) == 0)
        {
            /*
             * "<msec>-<pid>-<seq>.ndjson.tmp": a batch its worker is
             * writing, or one that a worker which died (a crash, a
             * kill) left half-written.  Neither counts against
             * spool_size; the second is cleaned up.  This worker writes
             * none while it looks, so one with its pid was left by an
             * earlier process that had the same pid.
             */

            p = ngx_strlchr(name, name + len, '-');
            last = (p == NULL) ? NULL : ngx_strlchr(p + 1, name + len, '-');

            pid = (last == NULL) ? NGX_ERROR : ngx_atoi(p + 1, last - p - 1);

            if (pid > 0
                && (pid == ngx_pid
                    || (kill(pid, 0) == -1 && ngx_errno == ESRCH)))
            {
                ngx_http_civchat_spool_salvage(sp, path, pid);
            }

            continue;
        }

        if (ngx_de_info(path, &dir) != NGX_FILE_ERROR) {
            sp->bytes += ngx_de_size(&dir);
        }

        if (len > sizeof(".sending") - 1
            && ngx_strncmp(name + len - 8, ".sending", 8) == 0)
        {
            /* "<batch>.ndjson.<pid>.sending" */
            p = name + len - 9;
            while (p > name && *p != '.') {
                p--;
            }

            pid = ngx_atoi(p + 1, name + len - 9 - p);

            if (pid > 0 && pid != ngx_pid && kill(pid, 0) == -1
                && ngx_errno == ESRCH)
            {
                ngx_sprintf(back, "%V/%*s%Z", &sp->path, p - name, name);
                (void) ngx_rename_file(path, back);
            }

            continue;
        }

        if (ngx_strncmp(name + len - 7, ".ndjson", 7) != 0) {
            continue;
        }

        if (!best || ngx_strcmp(path, bestname) < 0) {
            ngx_memcpy(bestname, path, sp->path.len + len + 2);
            best = 1;
            found = NGX_OK;
        }
    }

    ngx_close_dir(&dir);

    if (found == NGX_OK && oldest != NULL) {
        ngx_memcpy(oldest, bestname, ngx_strlen(bestname) + 1);
    }

    return found;
}


/*
 * A batch its worker died writing: its whole lines are events that
 * worker accepted, so they become a batch of the spool (renamed without
 * ".tmp"; the line being written when it died is cut off), and a file
 * without a whole line is removed.
 */

static void
ngx_http_civchat_spool_salvage(ngx_http_civchat_spool_t *sp, u_char *path,
    ngx_pid_t pid)
{
    u_char           *p, *name, buf[4096];
    off_t             end, keep;
    size_t            len;
    ssize_t           n;
    ngx_file_t        file;
    ngx_file_info_t   fi;

    ngx_memzero(&file, sizeof(ngx_file_t));

    file.name.data = path;
    file.name.len = ngx_strlen(path);
    file.log = sp->log;

    file.fd = ngx_open_file(path, NGX_FILE_RDWR, NGX_FILE_OPEN, 0);
    if (file.fd == NGX_INVALID_FILE) {
        return;
    }

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR) {
        goto failed;
    }

    /* from the end back to the last line feed */

    keep = 0;

    for (end = ngx_file_size(&fi); end > 0 && keep == 0; end -= n) {
        len = (size_t) ngx_min(end, (off_t) sizeof(buf));

        n = ngx_read_file(&file, buf, len, end - len);
        if (n != (ssize_t) len) {
            goto failed;
        }

        for (p = buf + len; p > buf; p--) {
            if (p[-1] == '\n') {
                keep = end - len + (p - buf);
                break;
            }
        }
    }

    /* another worker may be cleaning the same file up: ENOENT is fine */

    if (keep == 0) {
        ngx_close_file(file.fd);

        if (ngx_delete_file(path) == NGX_FILE_ERROR) {
            if (ngx_errno != NGX_ENOENT) {
                ngx_log_error(NGX_LOG_ERR, sp->log, ngx_errno,
                              ngx_delete_file_n " \"%s\" failed", path);
            }

            return;
        }

        ngx_log_error(NGX_LOG_NOTICE, sp->log, 0,
                      "civchat_store: removed \"%s\", which process %P "
                      "began and did not finish", path, pid);
        return;
    }

    if (keep < ngx_file_size(&fi) && ftruncate(file.fd, keep) == -1) {
        goto failed;
    }

    ngx_close_file(file.fd);

    /* "<batch>.ndjson.tmp" becomes "<batch>.ndjson" */

    name = ngx_alloc(file.name.len, sp->log);
    if (name == NULL) {
        return;
    }

    ngx_memcpy(name, path, file.name.len - 4);
    name[file.name.len - 4] = '\0';

    if (ngx_rename_file(path, name) == NGX_FILE_ERROR) {
        if (ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_ERR, sp->log, ngx_errno,
                          ngx_rename_file_n " \"%s\" failed", path);
        }

    } else {
        ngx_log_error(NGX_LOG_NOTICE, sp->log, 0,
                      "civchat_store: kept the whole lines of \"%s\", "
                      "which process %P began and did not finish", path,
                      pid);

        /* counted by the next scan */
        sp->pending = 1;
    }

    ngx_free(name);

    return;

failed:

    ngx_log_error(NGX_LOG_ERR, sp->log, ngx_errno,
                  "civchat_store: reading unfinished \"%s\" failed", path);

    ngx_close_file(file.fd);
}
