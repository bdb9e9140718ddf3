
/*
 * Copyright (C) civchat developers
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_civchat.h"


/*
 * Enrichment and privacy decisions made before identity (README
 * "Privacy and enrichment"): the GeoIP lookup on the full client
 * address, then its anonymisation, Global Privacy Control / Do Not
 * Track, and the bot classifier.
 */


static ngx_int_t ngx_http_civchat_opted_out(ngx_http_request_t *r);
static ngx_int_t ngx_http_civchat_header_is_1(ngx_table_elt_t *h,
    const char *name, size_t len);
static void ngx_http_civchat_anonymize(ngx_http_request_t *r,
    ngx_str_t *ip);


/*
 * User-Agent fragments (lower case) of crawlers, link previewers,
 * uptime monitors, headless or automated browsers and HTTP libraries.
 * README "Bots" lists them for operators.
 */

static ngx_str_t  ngx_http_civchat_bots[] = {
    ngx_string("bot"),
    ngx_string("crawl"),
    ngx_string("spider"),
    ngx_string("slurp"),
    ngx_string("mediapartners-google"),
    ngx_string("facebookexternalhit"),
    ngx_string("bingpreview"),
    ngx_string("ia_archiver"),
    ngx_string("embedly"),
    ngx_string("whatsapp"),
    ngx_string("pingdom"),
    ngx_string("uptimerobot"),
    ngx_string("statuscake"),
    ngx_string("site24x7"),
    ngx_string("newrelicpinger"),
    ngx_string("datadog"),
    ngx_string("nagios"),
    ngx_string("zabbix"),
    ngx_string("check_http"),
    ngx_string("headlesschrome"),
    ngx_string("phantomjs"),
    ngx_string("puppeteer"),
    ngx_string("playwright"),
    ngx_string("selenium"),
    ngx_string("webdriver"),
    ngx_string("lighthouse"),
    ngx_string("gtmetrix"),
    ngx_string("python-requests"),
    ngx_string("python-urllib"),
    ngx_string("aiohttp"),
    ngx_string("go-http-client"),
    ngx_string("java/"),
    ngx_string("okhttp"),
    ngx_string("apache-httpclient"),
    ngx_string("libwww-perl"),
    ngx_string("wget"),
    ngx_string("scrapy"),
    ngx_string("node-fetch"),
    ngx_string("axios/"),
    ngx_null_string
};


void
ngx_http_civchat_privacy(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    ngx_http_civchat_main_conf_t  *mcf;

    /* geo first: it uses the full address */
    (void) ngx_http_civchat_geo(r, ctx);

    if (ctx->lcf->anonymize_ip) {
        ngx_http_civchat_anonymize(r, &ctx->ip);
    }

    if (ctx->lcf->respect_gpc && ngx_http_civchat_opted_out(r)) {
        ctx->anonymous = 1;
        return;
    }

    if (ctx->lcf->bot_filter) {
        mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);

        if (ngx_http_civchat_is_bot_seen(mcf, &ctx->user_agent)) {
            ctx->bot = 1;
        }
    }
}


ngx_http_civchat_geo_t *
ngx_http_civchat_geo(ngx_http_request_t *r, ngx_http_civchat_ctx_t *ctx)
{
    ngx_http_civchat_main_conf_t  *mcf;

    if (!ctx->geo_done) {
        mcf = ngx_http_get_module_main_conf(r, ngx_http_civchat_module);
        ngx_http_civchat_geoip_lookup(r, mcf->geoip, &ctx->geo);
        ctx->geo_done = 1;
    }

    return &ctx->geo;
}


static ngx_int_t
ngx_http_civchat_opted_out(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (ngx_http_civchat_header_is_1(&h[i], "sec-gpc", 7)
            || ngx_http_civchat_header_is_1(&h[i], "dnt", 3))
        {
            return 1;
        }
    }
}


static ngx_int_t
ngx_http_civchat_header_is_1(ngx_table_elt_t *h, const char *name,
    size_t len)
{
    return h->key.len == len
           && ngx_strncasecmp(h->key.data, (u_char *) name, len) == 0
           && h->value.len == 1 && h->value.data[0] == '1';
}


/*
 * A bit for the first three bytes of each fragment, hashed to 16 bits
 * with the case bit set: a browser's User-Agent has few such triples,
 * if any, and only there are the fragments compared.
 */

#define ngx_http_civchat_bot_hash(p)                                         \
    (((((ngx_uint_t) (p)[0] | 0x20) << 12)                                   \
      ^ (((ngx_uint_t) (p)[1] | 0x20) << 6)                                  \
      ^ ((ngx_uint_t) (p)[2] | 0x20))                                        \
     & 0xffff)


void
ngx_http_civchat_bot_triples(u_char *triples)
{
    ngx_uint_t   h;
    ngx_str_t   *b;

    ngx_memzero(triples, 65536 / 8);

    for (b = ngx_http_civchat_bots; b->len; b++) {
        h = ngx_http_civchat_bot_hash(b->data);
        triples[h >> 3] |= (u_char) (1 << (h & 7));
    }
}


ngx_int_t
ngx_http_civchat_is_bot(u_char *triples, ngx_str_t *ua)
{
    u_char      *p, *last;
    ngx_str_t   *b;
    ngx_uint_t   h;

    if (ua->len < 3) {
        return 0;
    }

    last = ua->data + ua->len;

    /*
     * the hash rolls: a byte shifted out by the third one after it is
     * gone, so each byte is read and folded in once
     */
    h = ((ua->data[0] | 0x20) << 6) ^ (ua->data[1] | 0x20);

    for (p = ua->data; p + 2 < last; p++) {
        h = ((h << 6) ^ (p[2] | 0x20)) & 0xffff;

        if (!(triples[h >> 3] & (1 << (h & 7)))) {
            continue;
        }

        for (b = ngx_http_civchat_bots; b->len; b++) {
            if (b->data[0] == ngx_tolower(p[0])
                && b->len <= (size_t) (last - p)
                && ngx_strncasecmp(p, b->data, b->len) == 0)
            {
                return 1;
            }
        }
    }

    return 0;
}


/*
 * Most requests come from a few browsers, each sending its User-Agent
 * on every request: a worker remembers the verdicts on the last ones in
 * a small table (a slot chosen by the length and a few bytes, the whole
 * string compared), so a known User-Agent is not searched again.
 */

ngx_int_t
ngx_http_civchat_is_bot_seen(ngx_http_civchat_main_conf_t *mcf,
    ngx_str_t *ua)
{
    ngx_uint_t                   slot;
    ngx_http_civchat_ua_seen_t  *seen;

    if (ua->len < 3 || ua->len > NGX_HTTP_CIVCHAT_UA_MAX) {
        return ngx_http_civchat_is_bot(mcf->bot_triples, ua);
    }

    slot = (ua->len ^ (ua->data[ua->len / 2] << 1) ^ ua->data[ua->len - 2])
           % NGX_HTTP_CIVCHAT_UA_SEEN;
    seen = &mcf->ua_seen[slot];

    if (seen->len == ua->len && ngx_memcmp(seen->data, ua->data, ua->len) == 0)
    {
        return seen->bot;
    }

    seen->bot = (u_char) ngx_http_civchat_is_bot(mcf->bot_triples, ua);
    seen->len = (uint16_t) ua->len;
    ngx_memcpy(seen->data, ua->data, ua->len);

    return seen->bot;
}


/*
 * The last IPv4 octet, or the last 80 bits of an IPv6 address, are
 * zeroed before the address is stored or forwarded.
 */

static void
ngx_http_civchat_anonymize(ngx_http_request_t *r, ngx_str_t *ip)
{
    u_char               *text, *a;
    struct sockaddr_in   *sin;
#if (NGX_HAVE_INET6)
    u_char                masked[16];
    struct sockaddr_in6  *sin6;
#endif

    text = ngx_pnalloc(r->pool, NGX_SOCKADDR_STRLEN);
    if (text == NULL) {
        ngx_str_null(ip);
        return;
    }

    switch (r->connection->sockaddr->sa_family) {

    case AF_INET:
        sin = (struct sockaddr_in *) r->connection->sockaddr;
        a = (u_char *) &sin->sin_addr.s_addr;
        break;

#if (NGX_HAVE_INET6)
    case AF_INET6:
        sin6 = (struct sockaddr_in6 *) r->connection->sockaddr;
        a = sin6->sin6_addr.s6_addr;

        if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
            a += 12;
            break;
        }

        ngx_memcpy(masked, a, 6);
        ngx_memzero(masked + 6, 10);

        ip->len = ngx_inet6_ntop(masked, text, NGX_SOCKADDR_STRLEN);
        ip->data = text;
        return;
#endif

    default:
        /* a unix socket has no address to hide */
        return;
    }

    ip->len = ngx_sprintf(text, "%ud.%ud.%ud.0", a[0], a[1], a[2]) - text;
    ip->data = text;
}
