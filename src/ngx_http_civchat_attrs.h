
/*
 * Copyright (C) civchat developers
 */


#ifndef _NGX_HTTP_CIVCHAT_ATTRS_H_INCLUDED_
#define _NGX_HTTP_CIVCHAT_ATTRS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * The parts of attribute handling: the entry points (attrs.c), the
 * helpers all the others read values with (value.c), attribute names
 * (name.c), numbers (number.c), dates and times (time.c) and the
 * standard attributes (standard.c).  Other files know them through the
 * attrs.c functions of ngx_http_civchat.h.
 */


/* the longest number written as text: "-1.2345678901234567e-308" */
#define NGX_HTTP_CIVCHAT_NUMBER_LEN    32

#define ngx_http_civchat_digit(c)  ((c) >= '0' && (c) <= '9')


typedef json_t *(*ngx_http_civchat_convert_pt)(
    ngx_http_civchat_loc_conf_t *lcf, json_t *value, const char **reason);


typedef struct {
    ngx_str_t                     name;
    ngx_http_civchat_convert_pt   convert;
} ngx_http_civchat_standard_t;


typedef struct {
    ngx_str_t                     word;
    ngx_int_t                     value;
} ngx_http_civchat_word_t;


/* value.c */
ngx_int_t ngx_http_civchat_string_data(json_t *value, u_char **p,
    size_t *len);
void ngx_http_civchat_trim(u_char **p, size_t *len);
ngx_uint_t ngx_http_civchat_has_control(u_char *p, size_t len);
ngx_int_t ngx_http_civchat_word(u_char *p, size_t len,
    const ngx_http_civchat_word_t *words);
json_t *ngx_http_civchat_created(json_t *value, const char **reason);
json_t *ngx_http_civchat_new_string(ngx_http_civchat_loc_conf_t *lcf,
    u_char *p, size_t len, const char **reason);

/* name.c */
ngx_int_t ngx_http_civchat_normalize(u_char *name, size_t len, u_char *buf,
    size_t *n, const char **reason);

/* number.c */
ngx_int_t ngx_http_civchat_integer(json_t *value, json_int_t *n);
ngx_int_t ngx_http_civchat_parse_real(u_char *p, size_t len, double *d);
ngx_int_t ngx_http_civchat_number_text(json_t *value, u_char *buf,
    size_t *len);
u_char *ngx_http_civchat_integer_text(u_char *buf, json_int_t n);
json_t *ngx_http_civchat_to_integer(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, const char **reason);

/* time.c */
json_t *ngx_http_civchat_time_value(json_t *value, ngx_uint_t date_only,
    const char **reason);

/* standard.c */
ngx_http_civchat_convert_pt ngx_http_civchat_standard_find(ngx_str_t *name);
ngx_int_t ngx_http_civchat_check_email(json_t *value, u_char *buf,
    size_t *len, const char **reason);
json_t *ngx_http_civchat_person_name(ngx_http_civchat_loc_conf_t *lcf,
    json_t *value, size_t max_chars, const char **reason);


#endif /* _NGX_HTTP_CIVCHAT_ATTRS_H_INCLUDED_ */
