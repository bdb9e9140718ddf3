
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"
#include "ngx_http_civchat_attrs.h"


/*
 * Dates and datetimes (the "date" and "datetime" types): ISO 8601 text,
 * or Unix seconds for a datetime, read into Unix time and written back
 * in UTC as "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SSZ".
 */


#define NGX_HTTP_CIVCHAT_DATE_LEN      (sizeof("YYYY-MM-DD") - 1)
#define NGX_HTTP_CIVCHAT_DATETIME_LEN  (sizeof("YYYY-MM-DDTHH:MM:SSZ") - 1)

#define NGX_HTTP_CIVCHAT_DAY           86400
#define NGX_HTTP_CIVCHAT_YEAR_MAX      9999


static ngx_int_t ngx_http_civchat_parse_time(u_char *p, size_t len,
    int64_t *t);
static ngx_int_t ngx_http_civchat_parse_zone(u_char *p, u_char *last,
    int64_t *offset);
static ngx_int_t ngx_http_civchat_digits(u_char *p, ngx_uint_t n);
static ngx_int_t ngx_http_civchat_days_in_month(ngx_int_t year,
    ngx_int_t month);
static int64_t ngx_http_civchat_days_from_civil(int64_t year,
    ngx_int_t month, ngx_int_t day);
static size_t ngx_http_civchat_format_time(int64_t t, u_char *buf,
    ngx_uint_t date_only);


/*
 * ISO 8601 as sites send it: "YYYY-MM-DD", then 'T' or ' ' and "HH:MM",
 * optional ":SS" and fraction, then an optional zone ("Z", "+HH:MM",
 * "+HHMM", "+HH"; none means UTC).  The result is Unix time.
 */

static ngx_int_t
ngx_http_civchat_parse_time(u_char *p, size_t len, int64_t *t)
{
    u_char     *last;
    int64_t     offset;
    ngx_int_t   year, month, day, hour, min, sec;

    last = p + len;

    if (len < NGX_HTTP_CIVCHAT_DATE_LEN || p[4] != '-' || p[7] != '-') {
        return NGX_DECLINED;
    }

    year = ngx_http_civchat_digits(p, 4);
    month = ngx_http_civchat_digits(p + 5, 2);
    day = ngx_http_civchat_digits(p + 8, 2);

    if (year < 0 || month < 1 || month > 12 || day < 1
        || day > ngx_http_civchat_days_in_month(year, month))
    {
        return NGX_DECLINED;
    }

    p += NGX_HTTP_CIVCHAT_DATE_LEN;

    hour = 0;
    min = 0;
    sec = 0;
    offset = 0;

    if (p < last) {

        if (*p != 'T' && *p != 't' && *p != ' ') {
            return NGX_DECLINED;
        }

        p++;

        if (last - p < 5 || p[2] != ':') {
            return NGX_DECLINED;
        }

        hour = ngx_http_civchat_digits(p, 2);
        min = ngx_http_civchat_digits(p + 3, 2);

        if (hour < 0 || hour > 23 || min < 0 || min > 59) {
            return NGX_DECLINED;
        }

        p += 5;

        if (p < last && *p == ':') {

            if (last - p < 3) {
                return NGX_DECLINED;
            }

            sec = ngx_http_civchat_digits(p + 1, 2);

            if (sec < 0 || sec > 59) {
                return NGX_DECLINED;
            }

            p += 3;

            /* fractions of a second are not kept */

            if (p < last && *p == '.') {
                p++;

                if (p == last || !ngx_http_civchat_digit(*p)) {
                    return NGX_DECLINED;
                }

                while (p < last && ngx_http_civchat_digit(*p)) {
                    p++;
                }
            }
        }

        /* Ruby and others write "2016-01-01 10:00:00 +0100" */

        if (p < last && *p == ' ') {
            p++;
        }

        if (ngx_http_civchat_parse_zone(p, last, &offset) != NGX_OK) {
            return NGX_DECLINED;
        }
    }

    *t = ngx_http_civchat_days_from_civil(year, month, day)
         * NGX_HTTP_CIVCHAT_DAY
         + hour * 3600 + min * 60 + sec - offset;

    return NGX_OK;
}


static ngx_int_t
ngx_http_civchat_parse_zone(u_char *p, u_char *last, int64_t *offset)
{
    ngx_int_t  sign, hour, min;

    *offset = 0;

    if (p == last) {
        return NGX_OK;
    }

    if (*p == 'Z' || *p == 'z') {
        return (p + 1 == last) ? NGX_OK : NGX_DECLINED;
    }

    if (*p != '+' && *p != '-') {
        return NGX_DECLINED;
    }

    sign = (*p == '-') ? -1 : 1;
    p++;

    if (last - p < 2) {
        return NGX_DECLINED;
    }

    hour = ngx_http_civchat_digits(p, 2);
    p += 2;
    min = 0;

    if (p < last) {

        if (*p == ':') {
            p++;
        }

        if (last - p != 2) {
            return NGX_DECLINED;
        }

        min = ngx_http_civchat_digits(p, 2);
    }

    if (hour < 0 || hour > 23 || min < 0 || min > 59) {
        return NGX_DECLINED;
    }

    *offset = sign * (hour * 3600 + min * 60);

    return NGX_OK;
}


/* n decimal digits as a number, or -1 */

static ngx_int_t
ngx_http_civchat_digits(u_char *p, ngx_uint_t n)
{
    ngx_int_t  v;

    for (v = 0; n; n--, p++) {
        if (!ngx_http_civchat_digit(*p)) {
            return -1;
        }

        v = v * 10 + (*p - '0');
    }

    return v;
}


static ngx_int_t
ngx_http_civchat_days_in_month(ngx_int_t year, ngx_int_t month)
{
    static const u_char  days[] = {
        31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
    };

    if (month == 2
        && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))
    {
        return 29;
    }

    return days[month - 1];
}


/*
 * Days since 1970-01-01 in the proleptic Gregorian calendar, for any year;
 * the year is counted from March so that the leap day comes last.
 */

static int64_t
ngx_http_civchat_days_from_civil(int64_t year, ngx_int_t month,
    ngx_int_t day)
{
    int64_t  era, yoe, doy, doe;

    year -= (month <= 2);
    era = (year >= 0 ? year : year - 399) / 400;
    yoe = year - era * 400;
    doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return era * 146097 + doe - 719468;
}


/*
 * Writes Unix time t as "YYYY-MM-DDTHH:MM:SSZ" or "YYYY-MM-DD" into buf,
 * which holds NGX_HTTP_CIVCHAT_DATETIME_LEN bytes; 0 when the year is
 * outside 0000..9999.  The inverse of ngx_http_civchat_days_from_civil().
 */

static size_t
ngx_http_civchat_format_time(int64_t t, u_char *buf, ngx_uint_t date_only)
{
    u_char     *p;
    int64_t     days, secs, era, doe, yoe, doy, mp, year;
    ngx_int_t   month, day;

    days = t / NGX_HTTP_CIVCHAT_DAY;
    secs = t % NGX_HTTP_CIVCHAT_DAY;

    if (secs < 0) {
        secs += NGX_HTTP_CIVCHAT_DAY;
        days--;
    }

    days += 719468;
    era = (days >= 0 ? days : days - 146096) / 146097;
    doe = days - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    day = (ngx_int_t) (doy - (153 * mp + 2) / 5 + 1);
    month = (ngx_int_t) (mp < 10 ? mp + 3 : mp - 9);
    year = yoe + era * 400 + (month <= 2);

    if (year < 0 || year > NGX_HTTP_CIVCHAT_YEAR_MAX) {
        return 0;
    }

    p = ngx_sprintf(buf, "%04i-%02i-%02i", (ngx_int_t) year, month, day);

    if (!date_only) {
        p = ngx_sprintf(p, "T%02i:%02i:%02iZ", (ngx_int_t) (secs / 3600),
                        (ngx_int_t) (secs / 60 % 60),
                        (ngx_int_t) (secs % 60));
    }

    return p - buf;
}


/*
 * A date or datetime value: an ISO 8601 string, or, for a datetime, Unix
 * seconds; stored in UTC.
 */

json_t *
ngx_http_civchat_time_value(json_t *value, ngx_uint_t date_only,
    const char **reason)
{
    u_char   *p;
    size_t    len;
    int64_t   t;
    u_char    buf[NGX_HTTP_CIVCHAT_DATETIME_LEN];

    if (json_is_integer(value) && !date_only) {
        t = json_integer_value(value);

    } else if (json_is_string(value)
               && ngx_http_civchat_string_data(value, &p, &len) == NGX_OK)
    {
        ngx_http_civchat_trim(&p, &len);

        if (ngx_http_civchat_parse_time(p, len, &t) != NGX_OK) {
            goto invalid;
        }

    } else {
        goto invalid;
    }

    len = ngx_http_civchat_format_time(t, buf, date_only);

    if (len == 0) {
        goto invalid;
    }

    return ngx_http_civchat_created(json_stringn((char *) buf, len), reason);

invalid:

    *reason = date_only ? "invalid_date" : "invalid_datetime";
    return NULL;
}
