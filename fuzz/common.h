
/*
 * Copyright (C) civchat developers
 */


#ifndef _NGX_HTTP_CIVCHAT_FUZZ_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_FUZZ_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>


/* what nginx itself sets up before a module runs: time, page size, log */
void ngx_fuzz_init(void);

extern ngx_log_t  *ngx_fuzz_log;

/* a request and its connection, enough for the module's helpers */
ngx_http_request_t *ngx_fuzz_request(void);
void ngx_fuzz_request_free(ngx_http_request_t *r);

/* whether [p, p + len) is UTF-8 as RFC 3629 has it */
ngx_uint_t ngx_fuzz_valid_utf8(u_char *p, size_t len);

/* a finding: the message, then abort() for libFuzzer to catch */
void ngx_fuzz_fail(const char *fmt, ...);

#define ngx_fuzz_assert(cond)                                                \
    if (!(cond)) {                                                           \
        ngx_fuzz_fail("%s:%d: assertion \"%s\" failed",                      \
                      __FILE__, __LINE__, #cond);                            \
    }


#endif /* _NGX_HTTP_CIVCHAT_FUZZ_H_INCLUDED_ */
