#!/usr/bin/env node
/*
 * (C) civchat developers
 *
 * The browser scenarios of t/browser.t: headless Debian chromium driven by
 * playwright-core against the nginx that t/browser.t started.  Each check
 * prints one JSON line {"ok", "name", "diag"}; the last line is
 * {"done": N}.  What is observed: the requests the widget sends and the
 * answers, cookies and localStorage, the DOM (inside the widget's open
 * Shadow DOM), the console, and the events in the NDJSON store.
 *
 * Environment (set by t/browser.t): CIVCHAT_ORIGIN (the nginx serving the
 * pages and /civchat/), CIVCHAT_CROSS (the same pages on another origin),
 * CIVCHAT_STORE (the store file), CIVCHAT_SHOTS (where the screenshot
 * goes), CIVCHAT_CHROMIUM, CIVCHAT_API and CIVCHAT_API_TOKEN (the server
 * API, which sends messages to the live channel), CIVCHAT_NGINX_PID (the
 * master, reloaded by the live channel scenario);
 * CIVCHAT_BROWSER_ONLY=name,... picks scenarios.
 */

'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const ORIGIN = process.env.CIVCHAT_ORIGIN;
const CROSS = process.env.CIVCHAT_CROSS;
const STORE = process.env.CIVCHAT_STORE;
const SHOTS = process.env.CIVCHAT_SHOTS || '.';
const ONLY = (process.env.CIVCHAT_BROWSER_ONLY || '').split(',')
    .filter(Boolean);
const API = process.env.CIVCHAT_API;
const API_TOKEN = process.env.CIVCHAT_API_TOKEN;
const NGINX_PID = +process.env.CIVCHAT_NGINX_PID;

const BLUE = 'rgb(59, 91, 219)';        /* the launcher's background */
const SCENARIO_MS = 30000;

let checks = 0;

function report(ok, name, diag) {
    checks++;
    process.stdout.write(JSON.stringify({
        ok: !!ok, name: name, diag: ok ? undefined : diag
    }) + '\n');
    return !!ok;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* polls fn until it returns a truthy value, or the time is up */
async function until(fn, ms = 5000, every = 50) {
    const end = Date.now() + ms;
    let v;

    for (;;) {
        try {
            v = await fn();
        } catch (e) {
            v = undefined;
        }
        if (v || Date.now() > end) {
            return v;
        }
        await sleep(every);
    }
}

const show = (v) => JSON.stringify(v, null, 1);


/* the store -------------------------------------------------------------- */

function storeEvents() {
    let text = '';

    try {
        text = fs.readFileSync(STORE, 'utf8');
    } catch (e) {
        return [];
    }
    return text.split('\n').filter((l) => l.length).map((l) => {
        try {
            return JSON.parse(l);
        } catch (e) {
            return { _bad: l };
        }
    });
}

function match(ev, m) {
    return Object.keys(m).every((k) => m[k] instanceof RegExp ?
        m[k].test(ev[k]) : typeof m[k] === 'function' ? m[k](ev[k]) :
        ev[k] === m[k]);
}

/* events matching m; waits for at least n (100 ms flushes) */
async function events(m, n = 1, ms = 4000) {
    let list = [];

    await until(() => {
        list = storeEvents().filter((e) => match(e, m));
        return list.length >= n;
    }, ms);
    return list;
}

/* events matching m once the store has settled (for "exactly" checks) */
async function settled(m) {
    await sleep(400);
    return storeEvents().filter((e) => match(e, m));
}


/* a page under observation ----------------------------------------------- */

class Page {
    constructor(ctx, page) {
        this.ctx = ctx;
        this.page = page;
        this.posts = [];        /* {url, path, body, type, contentType} */
        this.answers = [];      /* {path, status, json, headers} */
        this.console = [];      /* {type, text} */
        this.errors = [];       /* uncaught page errors */
        this.streams = [];      /* the live channel: {url, type, headers,
                                   status, ended} a connection */

        page.on('console', (m) => this.console.push({
            type: m.type(), text: m.text()
        }));
        page.on('pageerror', (e) => this.errors.push(String(e)));
        page.on('request', (r) => {
            if (/\/civchat[^/]*\/stream(\?|$)/.test(r.url())) {
                this.streams.push({
                    req: r, url: r.url(), type: r.resourceType(),
                    headers: r.headers(), status: 0, ended: false
                });
            }
        });
        const ended = (r) => {
            const st = this.streams.find((x) => x.req === r);
            if (st) {
                st.ended = true;
            }
        };
        page.on('requestfailed', ended);
        page.on('requestfinished', ended);
        page.on('response', async (res) => {
            const st = this.streams.find((x) => x.req === res.request());
            if (!st) {
                return;
            }

            /*
             * the request's headers with what the network stack added
             * (Last-Event-ID) come a moment after the answer: the
             * connection counts as answered (status, which stream()
             * waits for) only once they are in, or a check could read
             * the headers as the page set them; a page closed meanwhile
             * leaves them so
             */
            let headers = st.headers;
            try {
                headers = await res.request().allHeaders();
            } catch (e) { /* the page went */ }
            st.headers = headers;
            st.responseHeaders = res.headers();
            st.status = res.status();
        });
        page.on('request', (r) => {
            if (r.method() !== 'POST' || !/\/civchat[^/]*\/[a-z_]+$/
                .test(r.url()))
            {
                return;
            }
            let body = null;
            try {
                body = JSON.parse(r.postData());
            } catch (e) { /* not JSON */ }
            this.posts.push({
                url: r.url(), path: r.url().replace(/^.*\//, ''),
                body: body, type: r.resourceType(),
                contentType: r.headers()['content-type'] || ''
            });
        });
        page.on('response', async (res) => {
            const r = res.request();
            if (r.method() !== 'POST' || !/\/civchat/.test(r.url())) {
                return;
            }
            let json = null;
            try {
                json = await res.json();
            } catch (e) { /* a beacon, or the page went */ }
            let headers = res.headers();
            try {
                headers = await res.allHeaders();
            } catch (e) { /* the page went: what was read so far */ }
            this.answers.push({
                path: r.url().replace(/^.*\//, ''), status: res.status(),
                json: json, headers: headers
            });
        });
    }

    eval(fn, arg) {
        return this.page.evaluate(fn, arg);
    }

    /* the civchat console lines of a type ('error', 'warning') */
    said(type) {
        return this.console.filter((m) => m.type === type &&
                                          /^civchat:/.test(m.text))
            .map((m) => m.text);
    }

    calls(p) {
        return this.posts.filter((r) => r.path === p);
    }

    async answer(p, n = 1) {
        await until(() => this.answers.filter((a) => a.path === p)
            .length >= n);
        return this.answers.filter((a) => a.path === p)[n - 1] || {};
    }

    count(name) {
        return this.eval((n) => window.__count(n), name);
    }

    log() {
        return this.eval(() => window.__log);
    }

    async loaded(n = 1) {
        return until(() => this.count('onLoad').then((c) => c >= n), 8000);
    }

    /* an element of the widget (Playwright's CSS pierces open shadow
     * roots) */
    w(role) {
        return this.page.locator('[data-civchat="' + role + '"]');
    }

    async visible(role) {
        const l = this.w(role);
        return (await l.count()) > 0 && l.first().isVisible();
    }

    ue(command, data) {
        return this.eval(([c, d]) => window.userengage(c, d),
                         [command, data]);
    }

    cookie() {
        return this.ctx.cookies(ORIGIN).then((cs) =>
            cs.find((c) => c.name === '__ca__chat'));
    }

    /* the n-th connection of the live channel, once it has answered */
    async stream(n = 1) {
        await until(() => this.streams.length >= n &&
                          this.streams[n - 1].status, 8000);
        return this.streams[n - 1] || {};
    }

    /* the texts of the panel's messages */
    messages() {
        return this.w('message').allTextContents();
    }

    /* the arguments of each call of a callback */
    async fired(name) {
        return (await this.log()).filter((e) => e[0] === name)
            .map((e) => e[1]);
    }
}


/* the server API, as a site's backend calls it --------------------------- */

async function api(ctx, method, path, data) {
    const res = await ctx.request.fetch(API + path, {
        method: method, data: data,
        headers: { Authorization: 'Bearer ' + API_TOKEN }
    });
    let json = null;

    try {
        json = await res.json();
    } catch (e) { /* not JSON */ }
    return { status: res.status(), json: json };
}

/* a message ({content}) or payload ({type: 'payload', content}) */
function sayTo(ctx, key, body) {
    return api(ctx, 'POST', 'users/key/' + key + '/messages', body);
}


/* scenarios -------------------------------------------------------------- */

const scenarios = [];

function scenario(name, fn) {
    scenarios.push({ name: name, fn: fn });
}

async function run(browser, sc) {
    const ctx = await browser.newContext({
        viewport: { width: 1024, height: 700 }
    });
    const tag = sc.name.replace(/\W+/g, '-') + '-' + Date.now();
    const T = {
        ctx: ctx,
        tag: tag,
        ok: (ok, name, diag) => report(ok, sc.name + ': ' + name, diag),
        is: (have, want, name) => report(have === want, sc.name + ': ' +
            name, 'have ' + show(have) + ', want ' + show(want)),
        open: async (url) => {
            const p = new Page(ctx, await ctx.newPage());
            await p.page.goto(/^http/.test(url) ? url : ORIGIN + url);
            return p;
        }
    };
    let timer;

    try {
        await Promise.race([
            sc.fn(T),
            new Promise((_, no) => {
                timer = setTimeout(() => no(new Error('timed out')),
                                   SCENARIO_MS);
            })
        ]);
    } catch (e) {
        report(false, sc.name + ': ran to the end', e.stack || String(e));
    }
    clearTimeout(timer);
    await ctx.close().catch(() => {});
}


/* identity --------------------------------------------------------------- */

scenario('first visit', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag + '&company=Acme');

    T.ok(await p.loaded(), 'onLoad fires once init has answered');
    const init = p.calls('init')[0] || { body: {} };
    const b = init.body || {};
    const a = await p.answer('init');
    const key = a.json && a.json.key;

    T.is(p.calls('init').length, 1, 'one init request');
    T.ok(b.apiKey === 'TESTKEY' && b.url === p.page.url() &&
         b.title === 'basic page' && b.referrer === '',
         'init carries apiKey and the page context', show(b));
    T.ok(typeof b.language === 'string' && b.language &&
         /^\d+x\d+$/.test(b.resolution) && b.timezone,
         'init carries language, resolution and time zone', show(b));
    T.ok(!Object.keys(b).some((k) => /^on[A-Z]/.test(k)),
         'callbacks (functions) are never sent', show(Object.keys(b)));
    T.is(show(b.company), show({ name: 'Acme', employees: 32 }),
         'the company object is sent');
    T.ok(!('key' in b) && /application\/json/.test(init.contentType),
         'same-origin: JSON, no key in the body', show(init));
    T.ok(a.status === 200 && /^[A-Za-z0-9]{16}$/.test(key),
         'init answers a key', show(a));

    const c = await p.cookie();
    T.ok(c && c.value === key && c.httpOnly && c.sameSite === 'Lax',
         'the HttpOnly cookie holds the key', show(c));
    T.is(await p.eval(() => localStorage.getItem('civchat_key')), null,
         'same-origin: nothing in localStorage');
    T.is(await p.eval(() => window.UE.isReady), true, 'UE.isReady');
    T.ok(await p.visible('launcher'), 'the launcher shows');

    const ev = await events({ user_key: key }, 2);
    T.ok(ev.some((e) => e.type === 'user_created') &&
         ev.some((e) => e.type === 'page_view' && e.url === p.page.url() &&
                        e.title === 'basic page'),
         'user_created and page_view in the store', show(ev));
    await sleep(300);
    T.is(await p.count('onLoad'), 1, 'onLoad exactly once');
    T.is(p.said('error').length, 0, 'no console error');
});

scenario('returning visit', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag);
    await p.loaded();
    const k1 = (await p.answer('init')).json.key;

    await p.page.reload();
    await p.loaded();
    const a2 = await p.answer('init', 2);

    T.is(a2.json && a2.json.key, k1, 'the same key on the second visit');
    T.is(a2.json && a2.json.user.page_views, 2, 'two page views');
    const ev = await events({ user_key: k1, type: 'page_view' }, 2);
    T.is(ev.length, 2, 'two page_view events');
    T.is((await settled({ user_key: k1, type: 'user_created' })).length, 1,
         'one user_created');
});

scenario('user_id and email identification', async (T) => {
    const uid = 'uid-' + T.tag;
    const email = T.tag.toLowerCase() + '@example.org';

    let p = await T.open('/basic.html?s=' + T.tag + '&user_id=' + uid +
                         '&name=Jo%20Doe');
    await p.loaded();
    let a = (await p.answer('init')).json;
    const k1 = a.key;
    T.ok(a.user.user_id === uid && a.user.name === 'Jo Doe',
         'civchat.user_id identifies', show(a));
    T.ok((await events({ user_key: k1, user_id: uid, type: 'page_view' }))
         .length === 1, 'the page view carries the user_id');

    /* another browser: anonymous, then UE.pageHit with the user_id */
    const other = await T.ctx.browser().newContext();
    try {
        const q = new Page(other, await other.newPage());
        await q.page.goto(ORIGIN + '/basic.html?s=' + T.tag + '-2');
        await q.loaded();
        const anon = (await q.answer('init')).json;
        T.ok(anon.key !== k1 && anon.user.user_id === null,
             'another browser starts anonymous', show(anon));
        await q.eval((u) => UE.pageHit({ user_id: u }), uid);
        const ph = (await q.answer('page_hit')).json;
        T.ok(ph && ph.user.user_id === uid && ph.key !== anon.key &&
             ph.key !== k1, 'UE.pageHit({user_id}) switches to its ' +
             'profile, with a key of its own', show(ph));
        T.ok(ph && ph.user.name === null && ph.user.page_views === null,
             'unproved (no user_hash): the profile\'s data is not shown',
             show(ph));
        T.is((await q.cookie() || {}).value, ph && ph.key,
             'and the cookie follows');
        T.ok((await events({ type: 'user_identified', user_key: k1 }))
             .length >= 1, 'user_identified in the store');

        /* email */
        p = await T.open('/basic.html?s=' + T.tag + '-3&email=' + email);
        await p.loaded();
        a = (await p.answer('init')).json;
        T.is(a.user.email, email, 'civchat.email is applied');
    } finally {
        await other.close();
    }
});

scenario('e-mail link key', async (T) => {
    /* User.com's e-mail links append ?__ca__chat=KEY: anyone may have
     * the link, so the key only rides along as link_key, noted on the
     * new visitor's user_created event; the browser is not that profile */
    const uid = 'mail-' + T.tag;
    let p = await T.open('/basic.html?s=' + T.tag + '&user_id=' + uid);
    await p.loaded();
    const key = (await p.answer('init')).json.key;

    const other = await T.ctx.browser().newContext();
    try {
        const q = new Page(other, await other.newPage());
        await q.page.goto(ORIGIN + '/basic.html?s=' + T.tag +
                          '&__ca__chat=' + key);
        await q.loaded();
        const a = (await q.answer('init')).json;
        const body = q.calls('init')[0].body;
        T.ok(body.link_key === key && body.key === undefined,
             'init sends the link\'s key as link_key', show(body));
        T.ok(a.key !== key && a.user.user_id === null,
             'the other browser is a new visitor, not that profile',
             show(a));
        T.is((await q.cookie() || {}).value, a.key, 'with its own cookie');
        const created = await events({ type: 'user_created',
                                       user_key: a.key });
        T.ok(created.length === 1 &&
             JSON.parse(created[0].attrs).link_key === key,
             'user_created notes the link\'s key', show(created));
    } finally {
        await other.close();
    }
});

scenario('resetAuth', async (T) => {
    const uid = 'logout-' + T.tag;
    let p = await T.open('/basic.html?s=' + T.tag + '&user_id=' + uid);
    await p.loaded();
    const k1 = (await p.answer('init')).json.key;

    await p.eval(() => UE.resetAuth({}));
    const r = (await p.answer('reset_auth')).json || {};
    T.ok(r.key && r.key !== k1 && r.user.user_id === null,
         'reset_auth answers a new anonymous key', show(r));
    T.is((await p.cookie() || {}).value, r.key, 'the cookie is replaced');
    T.ok((await events({ type: 'auth_reset', user_key: r.key })).length,
         'auth_reset in the store');

    /* the next visit (no user_id on the page) stays with the new key */
    p = await T.open('/basic.html?s=' + T.tag + '-after');
    await p.loaded();
    const a = (await p.answer('init')).json;
    T.ok(a.key === r.key && a.user.user_id === null,
         'the old identity is never reused', show(a));
});

scenario('a key replaced in another tab', async (T) => {
    /* a request that left with the key another tab just replaced is
     * answered 409 key_replaced; the widget sends it once more */
    const p = await T.open('/basic.html?s=' + T.tag);
    await p.loaded();
    const key = (await p.answer('init')).json.key;
    let refused = 0;

    await p.page.route('**/page_hit', async (route) => {
        if (refused++ === 0) {
            await route.fulfill({ status: 409,
                                  contentType: 'application/json',
                                  body: '{"error":"key_replaced",' +
                                        '"detail":"replaced"}' });
            return;
        }
        await route.continue();
    });

    await p.eval(() => UE.pageHit({}));
    const a = (await p.answer('page_hit', 2)).json || {};
    T.is(refused, 2, 'sent once more after the 409');
    T.is(a.key, key, 'and answered', show(a));
    T.ok(!p.said('error').some((m) => /page_hit/.test(m)),
         'no console error for it', show(p.console));
});

scenario('client.update', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag);
    await p.loaded();
    const key = (await p.answer('init')).json.key;

    await p.ue('client.update', { plan: 'gold', phone_number: '12' });
    const a = await p.answer('update');
    T.is(a.status, 200, 'update answered');
    T.ok(p.calls('update')[0].body.plan === 'gold', 'update body');
    const ev = await events({ user_key: key, type: 'profile_updated',
                              name: 'plan' });
    T.ok(ev.length === 1 && JSON.parse(ev[0].attrs).new === 'gold',
         'profile_updated plan in the store', show(ev));
    T.ok(p.said('warning').some((m) => /phone_number.*invalid_phone/
                                       .test(m)),
         'an ignored field is a console warning', show(p.console));
});

scenario('custom and product events', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag);
    await p.loaded();
    const key = (await p.answer('init')).json.key;

    await p.ue('event.Sign up', { plan: 'pro', seats: 3 });
    await p.ue('product_event', { product_id: 'sku-1',
                                  event_type: 'add to cart', price: 9.5 });
    let ev = await events({ user_key: key, type: 'event' });
    T.ok(ev.length === 1 && ev[0].name === 'sign_up' &&      /* normalised */
         ev[0].url === p.page.url() &&
         show(JSON.parse(ev[0].attrs)) === show({ plan: 'pro', seats: 3 }),
         'event.NAME in the store with its attributes and page', show(ev));
    T.is(show(p.calls('event')[0].body.attributes),
         show({ plan: 'pro', seats: 3 }), 'event body: {event, attributes}');
    ev = await events({ user_key: key, type: 'product_event' });
    T.ok(ev.length === 1 && ev[0].name === 'add to cart',
         'product_event in the store', show(ev));

    /* a url in the data is the caller's (a product's page), not the
     * page's */
    const productUrl = 'https://shop.example.org/p/sku-9?ref=mail';
    await p.ue('product_event', { product_id: 'sku-9', event_type: 'view',
                                  url: productUrl });
    await p.answer('product_event', 2);
    T.is((p.calls('product_event')[1] || { body: {} }).body.url, productUrl,
         'product_event: the caller\'s url is sent');
    ev = await events({ user_key: key, type: 'product_event',
                        name: 'view' });
    T.ok(ev.length === 1 && ev[0].url === productUrl,
         'product_event: and is the event\'s url', show(ev));
    await p.ue('client.update', { plan: 'url-kept', url: productUrl });
    await p.answer('update');
    T.is((p.calls('update')[0] || { body: {} }).body.url, productUrl,
         'client.update: the caller\'s url is sent');
    await p.ue('product_event', { product_id: 'sku-10',
                                  event_type: 'click' });
    await p.answer('product_event', 3);
    T.is((p.calls('product_event')[2] || { body: {} }).body.url,
         p.page.url(), 'without one: the page\'s');

    /* a server validation error: its detail reaches the console */
    const direct = await T.ctx.request.post(ORIGIN + '/civchat/product_event',
        { data: { apiKey: 'TESTKEY', product_id: 'sku-2',
                  event_type: 'bogus' } });
    const detail = (await direct.json()).detail;
    await p.ue('product_event', { product_id: 'sku-2', event_type: 'bogus' });
    await p.ue('event.   ', {});
    await p.answer('event', 2);
    await until(() => p.said('error').length >= 2);
    const errs = p.said('error');
    T.ok(detail && errs.some((m) => m.indexOf(detail) >= 0 &&
                                    /invalid_event/.test(m)),
         'product_event error: the server detail on the console',
         show({ detail: detail, console: errs }));
    T.ok(errs.some((m) => /^civchat: event failed: .*invalid_event/
                          .test(m)),
         'event with an empty name: the server error on the console',
         show(errs));
    T.is(p.said('warning').filter((m) => /unknown command/.test(m)).length,
         0, 'no unknown-command warning');
    await p.ue('bogus.command');
    T.ok(p.said('warning').some((m) => /unknown command "bogus.command"/
                                       .test(m)),
         'an unknown command is a console warning');
});


/* a single-page application ----------------------------------------------- */

scenario('SPA pushState and UE.pageHit', async (T) => {
    const p = await T.open('/spa.html?s=' + T.tag);
    await p.loaded();
    const key = (await p.answer('init')).json.key;
    const home = p.page.url();

    await p.page.click('a[data-route=Products]');
    await p.answer('page_hit', 1);
    await p.page.click('a[data-route=Cart]');
    await p.answer('page_hit', 2);
    await p.page.goBack();
    await p.answer('page_hit', 3);

    T.ok(p.calls('page_hit').every((r) => r.body.apiKey === 'TESTKEY'),
         'UE.pageHit without apiKey takes it from civchat');
    const pv = await events({ user_key: key, type: 'page_view' }, 4);
    const want = [home, ORIGIN + '/spa/products', ORIGIN + '/spa/cart',
                  ORIGIN + '/spa/products'];
    T.is(show(pv.map((e) => e.url)), show(want),
         'one page view per route, with its URL');
    T.is(pv[2] && pv[2].referrer, ORIGIN + '/spa/products',
         'the referrer of a route is the route before');
    T.is(pv[2] && pv[2].title, 'SPA Cart', 'the title of the route');

    /* an event object rides along with UE.pageHit */
    await p.eval(() => UE.pageHit({ event: { event_name: 'spa_search',
                                             q: 'shoes' } }));
    const ev = await events({ user_key: key, type: 'event',
                              name: 'spa_search' });
    T.ok(ev.length === 1 && JSON.parse(ev[0].attrs).q === 'shoes',
         'UE.pageHit({event}) records the event', show(ev));
    T.is((await settled({ user_key: key, type: 'page_view' })).length, 5,
         'and its page view');
});


/* looks, commands and callbacks ------------------------------------------ */

const LOOKS = {
    simple: { launcher: true, greeting: false, panel: false },
    standard: { launcher: true, greeting: true, panel: false },
    hidden: { launcher: false, greeting: false, panel: false },
    expanded: { launcher: true, greeting: false, panel: true }
};

async function looks(p) {
    return {
        launcher: await p.visible('launcher'),
        greeting: await p.visible('greeting'),
        panel: await p.visible('panel')
    };
}

scenario('states', async (T) => {
    for (const state of Object.keys(LOOKS)) {
        const p = await T.open('/basic.html?s=' + T.tag + '&state=' + state);
        await p.loaded();
        T.is(p.calls('init')[0].body.state, state, state + ': sent');
        T.is(show(await looks(p)), show(LOOKS[state]), state + ': looks');
        T.is(await p.page.locator('#civchat-root').count(), 1,
             state + ': one host element');
        T.is(await p.count('onOpen'), 0, state + ': no onOpen at start');
        await p.page.close();
    }

    /* civchat.widget.state is read first */
    let p = await T.open('/basic.html?s=' + T.tag +
                         '&state=simple&widget_state=expanded');
    await p.loaded();
    T.is(show(await looks(p)), show(LOOKS.expanded),
         'civchat.widget.state wins over civchat.state');

    /* no state: the location's civchat_widget_state; its greeting is
     * markup, which must show as text */
    p = await T.open('/greeting.html?s=' + T.tag);
    await p.loaded();
    T.is(show(await looks(p)), show(LOOKS.standard),
         'the server default state (standard)');
    const g = '<img src=x onerror=window.__xss=1><b>Hi</b> & welcome';
    T.is(await p.w('greeting').textContent(), g,
         'the greeting is rendered as text');
    T.is(await p.page.locator('#civchat-root img, #civchat-root b').count(),
         0, 'no element made from server text');
    await p.ue('widget.open');
    T.is(await p.w('message').first().textContent(), g,
         'the greeting in the panel is text too');
    await sleep(200);
    T.is(await p.eval(() => window.__xss), undefined, 'nothing ran');
});

scenario('widget commands and callbacks', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag);
    await p.loaded();
    const key = (await p.answer('init')).json.key;
    const counts = async () => {
        const l = await p.log();
        const c = {};
        l.forEach((e) => { c[e[0]] = (c[e[0]] || 0) + 1; });
        return [c.onOpen || 0, c.onClose || 0];
    };
    const step = async (cmd, open, launcher, want, name) => {
        await p.ue(cmd);
        T.ok(await p.visible('panel') === open &&
             await p.visible('launcher') === launcher &&
             show(await counts()) === show(want),
             name, show({ panel: await p.visible('panel'),
                          launcher: await p.visible('launcher'),
                          counts: await counts() }));
    };

    T.is(show(await looks(p)), show(LOOKS.simple), 'starts simple');
    await step('widget.open', true, true, [1, 0], 'widget.open opens, onOpen');
    const greeting = (await p.log()).filter((e) => e[0] === 'onMessage');
    T.ok(greeting.length === 1 && greeting[0][1].isAdmin === true &&
         greeting[0][1].content === 'Hi! How can we help?',
         'the greeting reaches onMessage as an admin message',
         show(greeting));
    await step('widget.open', true, true, [1, 0], 'open again: no onOpen');
    await step('widget.close', false, true, [1, 1],
               'widget.close closes, onClose');
    await step('widget.toggle', true, true, [2, 1], 'widget.toggle opens');
    await step('widget.toggle', false, true, [2, 2], 'widget.toggle closes');
    await step('widget.hide', false, false, [2, 2], 'widget.hide hides');
    await step('widget.show', false, true, [2, 2], 'widget.show shows');

    await p.w('launcher').click();
    T.ok(await p.visible('panel') && show(await counts()) === show([3, 2]),
         'a click on the launcher opens, onOpen');
    await p.page.keyboard.press('Escape');
    T.ok(!await p.visible('panel') && show(await counts()) === show([3, 3]),
         'Escape closes, onClose');

    /* the visitor writes in the panel: text, onMessage, the message
     * endpoint, a chat_message event */
    await p.w('launcher').click();
    await p.w('input').fill('hello <b>there</b>');
    await p.w('input').press('Enter');
    const mine = p.w('message').last();
    T.is(await mine.textContent(), 'hello <b>there</b>',
         'the visitor message shows as text');
    T.is(await mine.getAttribute('class'), 'm me', 'as the visitor\'s');
    const msgs = (await p.log()).filter((e) => e[0] === 'onMessage');
    T.ok(msgs.length === 2 && msgs[1][1].isAdmin === false &&
         msgs[1][1].content === 'hello <b>there</b>',
         'onMessage for the visitor message', show(msgs));
    const sent = await p.answer('message');
    const body = (p.calls('message')[0] || {}).body || {};
    T.ok(sent.status === 200 && body.content === 'hello <b>there</b>' &&
         body.apiKey === 'TESTKEY' && body.url === p.page.url(),
         'it is sent to the message endpoint', show([body, sent]));
    const ev = await events({ user_key: key, type: 'chat_message' });
    T.ok(ev.length === 1 && show(JSON.parse(ev[0].attrs)) ===
         show({ content: 'hello <b>there</b>', isAdmin: false }) &&
         ev[0].url === p.page.url(),
         'it is recorded as a chat_message event', show(ev));
    T.is(p.calls('event').length, 0, 'not through the event endpoint');

    await step('widget.hide', false, false, [4, 4],
               'widget.hide of an open panel closes it, onClose');
    await p.ue('widget.show');

    /* (onPayloadReceived: payloads come by the live channel, see there) */

    /* a throwing callback does not break the widget */
    await p.eval(() => {
        window.civchat.onOpen = () => { throw new Error('site bug'); };
    });
    await p.ue('widget.open');
    T.ok(await p.visible('panel') &&
         p.said('error').some((m) => /onOpen callback failed.*site bug/
                                     .test(m)),
         'a throwing callback is reported, the panel still opens',
         show(p.console));
    T.is(p.errors.length, 0, 'no uncaught error');
});

scenario('destroy and re-init', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag);
    await p.loaded();
    const cdp = await T.ctx.newCDPSession(p.page);
    const listeners = async (expr) => {
        const o = await cdp.send('Runtime.evaluate', { expression: expr });
        const l = await cdp.send('DOMDebugger.getEventListeners',
                                 { objectId: o.result.objectId });
        return l.listeners.map((x) => x.type).sort();
    };

    const before = (await listeners('window')).concat(
        await listeners('document'));
    T.ok(before.indexOf('pagehide') >= 0, 'listeners while running',
         show(before));

    const nodes = () => p.eval(() => document.getElementsByTagName('*')
                                          .length);
    const n0 = await nodes();
    await p.eval(() => UE.destroy());
    T.is(await p.page.locator('#civchat-root').count(), 0,
         'destroy removes the widget from the DOM');
    T.is(await nodes(), n0 - 1, 'and nothing else of it is left');
    const after = (await listeners('window')).concat(
        await listeners('document'));
    T.is(show(after), show([]), 'and every listener it added');
    T.is(await p.eval(() => UE.isReady), false, 'UE.isReady is false');

    const n = p.posts.length;
    await p.ue('event.after_destroy');
    await p.eval(() => UE.pageHit({}));
    await p.eval(() => UE.destroy());
    await sleep(300);
    T.is(p.posts.length, n, 'later calls send nothing');
    T.ok(p.said('warning').filter((m) => /destroyed/.test(m)).length === 3,
         'and say so on the console', show(p.said('warning')));

    /* legacy UE.init starts it again */
    await p.eval(() => UE.init({ name: 'Again' }));
    T.ok(await p.loaded(2), 'UE.init after destroy: onLoad again');
    T.is(p.calls('init').length, 2, 'a second init');
    T.is(p.calls('init')[1].body.name, 'Again', 'with the options');
    T.ok(await p.visible('launcher') && await p.eval(() => UE.isReady),
         'the widget is back');
    await p.ue('event.after_reinit');
    T.ok((await events({ type: 'event', name: 'after_reinit' })).length,
         'calls work again');

    /* and so does the script included again (a Turbolinks-style swap) */
    await p.eval(() => UE.destroy());
    await p.eval(() => {
        const s = document.createElement('script');
        s.src = '/civchat/widget.js';
        document.body.appendChild(s);
    });
    T.ok(await p.loaded(3), 'widget.js included after destroy restarts it');
    T.is(await p.page.locator('#civchat-root').count(), 1, 'one widget');
});


/* the live channel ------------------------------------------------------- */

scenario('live channel', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag + '&state=expanded');
    await p.loaded();
    const key = (await p.answer('init')).json.key;

    const st = await p.stream();
    T.ok(st.status === 200 && st.type === 'eventsource' &&
         /^text\/event-stream/.test(st.responseHeaders['content-type']),
         'an EventSource on stream once init has answered', show(st.url));
    T.is(st.url, ORIGIN + '/civchat/stream',
         'same-origin: no key in its URL (the cookie)');
    T.is(show(await p.messages()), show(['Hi! How can we help?']),
         'the panel shows the greeting');

    /* an agent's message, through the server API */
    const text = 'Hello from <b>support</b> & co\nline two';
    const a = await sayTo(T.ctx, key, { content: text });
    T.ok(a.status === 200 && a.json.sent === true && a.json.key === key,
         'the API sends a message', show(a));
    T.ok(await until(async () => (await p.messages()).length === 2),
         'it appears in the open panel');
    const m = p.w('message').last();
    T.is(await m.textContent(), text, 'as text');
    T.is(await m.getAttribute('class'), 'm', 'as an agent\'s message');
    T.is(await p.page.locator('#civchat-root b').count(), 0,
         'no element made from it');
    T.is(show(await p.fired('onMessage')),
         show([{ content: 'Hi! How can we help?', isAdmin: true },
               { content: text, isAdmin: true }]),
         'onMessage({content, isAdmin: true})');

    /* payloads */
    const payload = { coupon: 'X-1', items: [1, 2], nested: { ok: true } };
    await sayTo(T.ctx, key, { type: 'payload', content: payload });
    await sayTo(T.ctx, key, { type: 'payload', content: 'window.__ran=1' });
    T.ok(await until(async () => (await p.fired('onPayloadReceived'))
        .length === 2), 'payloads fire onPayloadReceived');
    T.is(show(await p.fired('onPayloadReceived')),
         show([payload, 'window.__ran=1']), 'with the content as sent');
    T.is(await p.eval(() => window.__ran), undefined, 'never run');
    T.is((await p.messages()).length, 2, 'a payload shows nothing');

    /* profile changes, by the page and by the API, and another visitor's
     * message: nothing visible; the next message comes after them */
    await p.ue('client.update', { plan: 'gold' });
    await p.answer('update');
    const put = await api(T.ctx, 'PUT', 'users/key/' + key, { score: 3 });
    T.is(put.status, 200, 'the API changes the profile');
    const other = await api(T.ctx, 'POST', 'users',
                            { user_id: 'other-' + T.tag });
    T.ok(other.json && other.json.user && other.json.user.key !== key,
         'another visitor', show(other));
    await sayTo(T.ctx, other.json.user.key, { content: 'not for you' });
    await sayTo(T.ctx, key, { content: 'for you' });
    T.ok(await until(async () => (await p.messages()).length === 3),
         'the next message arrives');
    await sleep(300);
    T.is(show(await p.messages()), show(['Hi! How can we help?', text,
                                         'for you']),
         'profile changes and another visitor\'s message show nothing');
    T.is((await p.fired('onMessage')).length, 3,
         'and fire no onMessage');

    /* the visitor answers */
    await p.w('input').fill('thanks <i>agent</i>');
    await p.w('input').press('Enter');
    const sent = await p.answer('message');
    T.ok(sent.status === 200 && p.calls('message').length === 1 &&
         p.calls('message')[0].body.content === 'thanks <i>agent</i>',
         'what the visitor types goes to the message endpoint', show(sent));
    const ev = await events({ user_key: key, type: 'chat_message',
                              attrs: (x) => /"isAdmin":false/.test(x) });
    T.ok(ev.length === 1 && show(JSON.parse(ev[0].attrs)) ===
         show({ content: 'thanks <i>agent</i>', isAdmin: false }),
         'a chat_message event lands in the store', show(ev));
    const admin = await events({ user_key: key, type: 'chat_message',
                                 name: /^(message|payload)$/ }, 4);
    T.is(admin.length, 4, 'and so do the API\'s messages and payloads');
    const om = await p.fired('onMessage');
    T.ok(om.length === 4 && om[3].isAdmin === false &&
         om[3].content === 'thanks <i>agent</i>',
         'onMessage({content, isAdmin: false})', show(om));
    await sleep(300);
    T.is((await p.messages()).length, 4, 'shown once, not echoed back');

    /* a message while the panel is closed: there when it opens */
    await p.ue('widget.close');
    await sayTo(T.ctx, key, { content: 'while closed' });
    T.ok(await until(async () => (await p.fired('onMessage')).length === 5),
         'a message while the panel is closed fires onMessage');
    await p.ue('widget.open');
    T.is((await p.messages()).pop(), 'while closed',
         'and is in the panel when it opens');

    /* resetAuth: a new identity, a new stream for its key */
    await p.eval(() => UE.resetAuth({}));
    const r = (await p.answer('reset_auth')).json || {};
    const st2 = await p.stream(2);
    T.ok(st2.status === 200 && st.ended,
         'resetAuth: the old stream closed, a new one opened',
         show([st.ended, st2.status]));
    await sayTo(T.ctx, key, { content: 'to the old identity' });
    await sayTo(T.ctx, r.key, { content: 'to the new identity' });
    T.ok(await until(async () => (await p.messages()).indexOf(
        'to the new identity') >= 0), 'resetAuth: the new key\'s message');
    await sleep(300);
    T.is(show(await p.messages()), show(['Hi! How can we help?',
                                         'to the new identity']),
         'resetAuth: not the old key\'s (a new conversation)');

    /* destroy closes it */
    await p.eval(() => UE.destroy());
    T.ok(await until(() => st2.ended), 'UE.destroy() closes the stream');
    const n = (await p.fired('onMessage')).length;
    await sayTo(T.ctx, r.key, { content: 'after destroy' });
    await sleep(500);
    T.is((await p.fired('onMessage')).length, n, 'and no onMessage after');
    T.is(p.streams.length, 2, 'and it does not reconnect');

    T.is(p.said('error').length + p.said('warning').length, 0,
         'no console error or warning', show(p.console));
    T.is(p.errors.length, 0, 'no uncaught error');
});

scenario('live channel across a reload', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag + '&state=expanded');
    await p.loaded();
    const key = (await p.answer('init')).json.key;
    await p.stream();

    await sayTo(T.ctx, key, { content: 'before' });
    T.ok(await until(async () => (await p.messages()).length === 2),
         'a message before the reload');

    /* nginx -s reload: the old worker's streams end; what is said before
     * the browser is back (it waits 3 s, "retry: 3000") reaches it after,
     * by Last-Event-ID */
    process.kill(NGINX_PID, 'SIGHUP');
    T.ok(await until(() => p.streams[0].ended, 10000),
         'the stream ends with the old worker');
    await sayTo(T.ctx, key, { content: 'during' });
    const st = await p.stream(2);
    T.ok(st.status === 200 && /^\d+$/.test(st.headers['last-event-id']),
         'the browser reconnects with Last-Event-ID',
         show(st.headers));
    await sayTo(T.ctx, key, { content: 'after' });
    T.ok(await until(async () => (await p.messages()).length === 4, 6000),
         'what was said meanwhile and after arrives');
    await sleep(400);
    T.is(show(await p.messages()),
         show(['Hi! How can we help?', 'before', 'during', 'after']),
         'once each, in order');
});

scenario('live channel cross-origin', async (T) => {
    const p = await T.open(CROSS + '/cross.html?s=' + T.tag +
                           '&state=expanded');
    await p.loaded();
    const key = (await p.answer('init')).json.key;

    const st = await p.stream();
    T.is(st.url, ORIGIN + '/civchat/stream?key=' + key,
         'the stream carries the stored key in its URL');
    T.is(st.status, 200, 'it answers');
    T.ok(st.responseHeaders && st.responseHeaders[
        'access-control-allow-origin'] === CROSS &&
         st.responseHeaders['access-control-allow-credentials'] === 'true',
         'with CORS headers for the site',
         show(st.responseHeaders));
    await sayTo(T.ctx, key, { content: 'hello over there' });
    T.ok(await until(async () => (await p.messages()).indexOf(
        'hello over there') >= 0), 'an agent\'s message arrives');
    T.is(p.console.filter((m) => /CORS|Access-Control/.test(m.text)).length,
         0, 'no CORS error', show(p.console));
});


/* how real sites load it ------------------------------------------------- */

scenario('civchat defined late', async (T) => {
    const p = await T.open('/late.html?s=' + T.tag);
    T.ok(await p.loaded(), 'initialises once civchat appears');
    await sleep(1500);
    T.is(p.calls('init').length, 1, 'one init');
    T.is(await p.count('onLoad'), 1, 'onLoad once');
    T.is(p.said('error').length, 0, 'no console error');
    T.ok(await p.visible('launcher'), 'the launcher shows');
});

scenario('civchat never defined', async (T) => {
    const p = await T.open('/missing.html?s=' + T.tag);
    await sleep(2500);
    const errs = p.said('error');
    T.ok(errs.length === 1 && /apiKey is required/.test(errs[0]),
         'one console error', show(p.console));
    T.is(p.posts.length, 0, 'no request');
    T.is(await p.page.locator('#civchat-root').count(), 0, 'no widget');

    /* the legacy UE.init({apiKey}) starts it later */
    await p.eval(() => UE.init({ apiKey: 'TESTKEY' }));
    await p.answer('init');
    T.is(p.calls('init').length, 1, 'UE.init({apiKey}) starts it');
    T.ok(await until(() => p.visible('launcher')), 'the launcher shows');
});

scenario('civchat assigned long after load', async (T) => {
    const p = await T.open('/later.html?s=' + T.tag);

    /* the wait is over 1 s after the load event: the console says so
     * once, nothing is sent, and no timer polls any more */
    await until(() => p.said('error').length, 4000);
    T.ok(p.said('error').length === 1 &&
         /apiKey is required/.test(p.said('error')[0]),
         'missing: one console error', show(p.console));
    const timers = await p.eval(() => window.__timers);
    await sleep(700);
    T.is(await p.eval(() => window.__timers), timers,
         'no polling while it is missing');
    T.is(p.posts.length, 0, 'nothing sent before window.civchat exists');
    T.is(await p.eval(() => window.civchat), undefined,
         'window.civchat reads undefined meanwhile');

    /* a login call answering 1.5 s after load assigns it */
    await p.eval(() => window.__login());
    T.ok(await p.loaded(), 'the assignment is noticed: onLoad');
    T.is(p.calls('init').length, 1, 'one init');
    T.is((p.calls('init')[0] || { body: {} }).body.apiKey, 'TESTKEY',
         'with the assigned apiKey');
    T.ok(await p.visible('launcher'), 'the launcher shows');
    T.ok(await p.eval(() => window.civchat === window.__assigned &&
                            window.civchat.apiKey === 'TESTKEY'),
         'window.civchat reads the assigned object');

    /* replaceable, and a plain property again once init has gone */
    T.ok(await p.eval(() => {
        const d = Object.getOwnPropertyDescriptor(window, 'civchat');
        return d.writable === true && !d.get && !d.set;
    }), 'a plain property again after init');
    await p.eval(() => {
        window.civchat = { apiKey: 'OTHERKEY', onOpen: __rec('onOpen2') };
    });
    await p.ue('widget.open');
    T.is(await p.count('onOpen2'), 1, 'a replacing object takes effect');
    await sleep(300);
    T.is(p.calls('init').length, 1, 'and starts nothing again');
    T.is(p.errors.length, 0, 'no uncaught error');
});

scenario('self-hosted copy', async (T) => {
    /* no endpoint named: it posts beside itself, and the console names
     * the URL and what to do */
    let p = await T.open('/selfhost.html?s=' + T.tag);
    await until(() => p.said('error').length);
    const err = p.said('error')[0] || '';
    T.ok(/^civchat: init failed: HTTP 40[45] at /.test(err) &&
         err.indexOf(ORIGIN + '/assets/js/init') >= 0 &&
         /not a civchat endpoint/.test(err) &&
         /data-civchat-base/.test(err) && /civchat\.base/.test(err),
         'the console error names the URL and the cause', err);
    T.is(await p.page.locator('#civchat-root').count(), 0, 'no widget');

    /* data-civchat-base on the script tag (the minified copy) */
    p = await T.open('/selfhost-attr.html?s=' + T.tag);
    T.ok(await p.loaded(), 'data-civchat-base: initialises');
    T.is((p.calls('init')[0] || {}).url, ORIGIN + '/civchat/init',
         'data-civchat-base: talks to the endpoint it names');
    T.ok(await p.visible('launcher'), 'data-civchat-base: the launcher');
    await p.ue('event.self_hosted');
    T.ok((await events({ type: 'event', name: 'self_hosted',
                         url: p.page.url() })).length,
         'data-civchat-base: events reach the store');
    const st = await p.stream();
    T.is(st.url, ORIGIN + '/civchat/stream', 'and so does the live channel');

    /* civchat.base, without its final slash */
    p = await T.open('/selfhost-key.html?s=' + T.tag);
    T.ok(await p.loaded(), 'civchat.base: initialises');
    T.is((p.calls('init')[0] || {}).url, ORIGIN + '/civchat/init',
         'civchat.base: talks to the endpoint it names');
    T.is(p.said('error').length, 0, 'no console error');

    /* the site's copy, civchat on another origin */
    p = await T.open(CROSS + '/selfhost-cross.html?s=' + T.tag);
    T.ok(await p.loaded(), 'cross-origin copy: initialises');
    const init = p.calls('init')[0] || {};
    const key = ((await p.answer('init')).json || {}).key;
    T.ok(init.url === ORIGIN + '/civchat/init' &&
         /^text\/plain/.test(init.contentType),
         'cross-origin copy: a CORS simple request to civchat', show(init));
    T.is(await p.eval(() => localStorage.getItem('civchat_key')), key,
         'cross-origin copy: the key is kept in localStorage');
});

scenario('a request that fails names its URL', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag);
    await p.loaded();
    await p.page.route('**/civchat/event', (route) => route.fulfill({
        status: 404, contentType: 'text/html', body: '<h1>Not Found</h1>'
    }));
    await p.ue('event.lost');
    await until(() => p.said('error').length);
    const err = p.said('error')[0] || '';
    T.ok(/^civchat: event failed: HTTP 404 at /.test(err) &&
         err.indexOf(ORIGIN + '/civchat/event') >= 0 &&
         /not a civchat endpoint/.test(err) &&
         /data-civchat-base/.test(err),
         'an answer that is not civchat\'s: the URL and the cause', err);
    await p.page.unroute('**/civchat/event');
    await p.ue('event.   ');
    await until(() => p.said('error').length >= 2);
    T.ok(/^civchat: event failed: .*\(invalid_event\) at /.test(
        p.said('error')[1] || '') && p.said('error')[1].indexOf(
        ORIGIN + '/civchat/event') >= 0,
         'civchat\'s own error: its detail and the URL',
         show(p.said('error')));
});

scenario('civchat changed at run time', async (T) => {
    const p = await T.open('/basic.html?s=' + T.tag);
    await p.loaded();

    await p.eval(() => {
        window.civchat = { apiKey: 'OTHERKEY', onOpen: __rec('onOpen2') };
    });
    await p.ue('widget.open');
    T.is(await p.count('onOpen2'), 1, 'the new object\'s callback fires');
    T.is(await p.count('onOpen'), 0, 'the old one does not');
    await p.ue('event.changed_key');
    const ev = await events({ type: 'event', name: 'changed_key' });
    T.ok(ev.length === 1 && ev[0].site === 'OTHERKEY',
         'calls use the new apiKey', show(ev));

    /* a login: civchat gets a user_id, UE.refresh() sends it */
    const uid = 'rt-' + T.tag;
    await p.eval((u) => { civchat.user_id = u; UE.refresh(); }, uid);
    const ph = await p.answer('page_hit');
    T.ok(ph.json && ph.json.user.user_id === uid,
         'UE.refresh() identifies with the changed civchat', show(ph));
    await p.eval(() => UE.refresh({ plan: 'silver' }));
    const ph2 = await p.answer('page_hit', 2);
    T.ok(p.calls('page_hit')[1].body.plan === 'silver' &&
         ph2.json.user.user_id === uid,
         'UE.refresh(options) merges them into civchat', show(ph2));
});

scenario('script included twice', async (T) => {
    const p = await T.open('/double.html?s=' + T.tag);
    await p.loaded();
    await until(() => p.eval(() => window.__third));
    await sleep(600);
    T.is(await p.page.locator('#civchat-root').count(), 1, 'one widget');
    T.is(p.calls('init').length, 1, 'one init');
    T.is(await p.count('onLoad'), 1, 'onLoad exactly once');
});

scenario('snippet in head', async (T) => {
    await T.ctx.route('**/slow.js', async (route) => {
        await sleep(800);
        await route.fulfill({ contentType: 'text/javascript', body: '' });
    });
    const p = await T.open('/head.html?s=' + T.tag);
    T.ok(await p.loaded(), 'initialises');
    T.is(await p.eval(() => window.__bodyAtLoad), false,
         'init answered before there was a body');
    T.ok(await p.visible('launcher') && await p.eval(() =>
        document.getElementById('civchat-root').parentNode === document.body),
         'the launcher shows, in the body');
    T.is(await p.page.locator('#civchat-root').count(), 1, 'once');
});

scenario('inserted after load', async (T) => {
    const p = await T.open('/dynamic.html?s=' + T.tag);
    T.ok(await p.loaded(), 'initialises');
    T.is((p.calls('init')[0] || {}).url, ORIGIN + '/civchat/init',
         'talks to the base written into the script');
    T.ok(await p.visible('launcher'), 'the launcher shows');
});

scenario('document.currentScript null', async (T) => {
    const p = await T.open('/deep/dir/nullscript.html?s=' + T.tag);
    T.ok(await p.loaded(), 'initialises');
    T.is(await p.eval(() => window.__currentScript), null,
         'document.currentScript was null');
    T.is((p.calls('init')[0] || {}).url, ORIGIN + '/civchat/init',
         'talks to the base written into the script');
    T.ok(await p.visible('launcher'), 'the launcher shows');
});

scenario('a window.UE already there', async (T) => {
    const p = await T.open('/preue.html?s=' + T.tag);
    await p.loaded();
    T.ok(await p.eval(() => window.UE === window.__theirUE &&
                            UE.library === 'other' && UE.answer() === 42),
         'the object and its methods are kept');
    T.ok(await p.eval(() => typeof UE.pageHit === 'function' &&
                            typeof UE.resetAuth === 'function' &&
                            typeof UE.destroy === 'function' &&
                            UE.isReady === true),
         'the civchat methods are added');
});

scenario('event then navigation', async (T) => {
    for (const ms of [300, 0]) {
        const p = await T.open('/basic.html?s=' + T.tag + '-' + ms);
        await p.loaded();
        const key = (await p.answer('init')).json.key;
        const name = 'bye_' + ms;
        await p.eval(([n, ms]) => {
            userengage('event.' + n, { ms: ms });
            setTimeout(() => { location.href = '/next.html'; }, ms);
        }, [name, ms]);
        await p.page.waitForURL('**/next.html');
        const ev = await events({ user_key: key, type: 'event', name: name });
        T.is(ev.length, 1, 'an event ' + ms + ' ms before navigating away ' +
             'reaches the store');
    }
});

scenario('stub queue', async (T) => {
    const p = await T.open('/stub.html?s=' + T.tag);
    await p.loaded();
    const key = (await p.answer('init')).json.key;

    await events({ user_key: key, name: 'stub_second' });
    const ev = await settled({ user_key: key, type:
        /^(page_view|event|profile_updated)$/, name: (n) =>
        !/^(language|resolution|timezone)$/.test(n) });
    T.is(show(ev.map((e) => e.type + ':' + e.name)),
         show(['page_view:', 'event:stub_first', 'profile_updated:plan',
               'event:stub_second']),
         'queued calls replayed in order, after init');
    T.ok(await p.visible('panel'), 'a queued widget.open applies');
    await p.eval(() => window.__stub('event.via_old_stub'));
    T.ok((await events({ user_key: key, name: 'via_old_stub' })).length,
         'a call through a kept reference to the stub still arrives');
});

scenario('sendBeacon on unload', async (T) => {
    const p = await T.open('/unload.html?s=' + T.tag);
    await p.loaded();
    const key = (await p.answer('init')).json.key;

    await p.page.goto(ORIGIN + '/next.html');
    const ev = await events({ user_key: key, type: 'event',
                              name: 'unloading' });
    T.is(ev.length, 1, 'the event sent on pagehide reaches the store');
    const b = await p.eval(() => [sessionStorage.getItem('beacons'),
                                  sessionStorage.getItem('beacon_url')]);
    T.ok(+b[0] >= 1 && b[1] === ORIGIN + '/civchat/event',
         'it went by navigator.sendBeacon', show(b));
});

scenario('cross-origin', async (T) => {
    const url = CROSS + '/cross.html?s=' + T.tag;
    const p = await T.open(url);
    T.ok(await p.loaded(), 'initialises from another origin');
    const init = p.calls('init')[0] || {};
    const a = await p.answer('init');
    const key = a.json && a.json.key;

    T.is(init.url, ORIGIN + '/civchat/init', 'talks to the civchat origin');
    T.ok(/^text\/plain/.test(init.contentType),
         'a CORS simple request (text/plain, no preflight)', show(init));
    T.is(a.headers['access-control-allow-origin'], CROSS,
         'Access-Control-Allow-Origin');
    T.is(a.headers['access-control-allow-credentials'], 'true',
         'Access-Control-Allow-Credentials');
    T.is(await p.eval(() => localStorage.getItem('civchat_key')), key,
         'the key is kept in localStorage');

    await p.ue('event.cross', { n: 1 });
    await p.answer('event');
    T.is(p.calls('event')[0].body.key, key, 'and sent as key');
    T.ok((await events({ user_key: key, type: 'event', name: 'cross' }))
         .length, 'the event is in the store');

    await p.page.reload();
    await p.loaded();
    const a2 = await p.answer('init', 2);
    T.ok(p.calls('init')[1].body.key === key && a2.json.key === key,
         'the returning visitor keeps the key', show(a2));
    T.is((await settled({ user_key: key, type: 'user_created' })).length,
         1, 'one user_created');

    await p.eval(() => UE.resetAuth({}));
    const r = (await p.answer('reset_auth')).json || {};
    T.ok(r.key && r.key !== key && await p.eval(() =>
        localStorage.getItem('civchat_key')) === r.key,
         'resetAuth replaces the stored key', show(r));

    /* a resetAuth whose answer is lost never brings the old key back */
    await p.page.route('**/civchat/reset_auth', (route) => route.abort());
    await p.eval(() => UE.resetAuth({}));
    T.ok(await until(() => p.said('error').some((m) =>
        /reset_auth failed: could not reach/.test(m))),
         'a lost reset_auth answer is a console error');
    T.is(await p.eval(() => localStorage.getItem('civchat_key')), null,
         'and the stored key is gone');
    await p.page.unroute('**/civchat/reset_auth');
    await p.ue('event.after_lost_reset');
    await p.answer('event', 2);
    T.ok(!('key' in p.calls('event')[1].body), 'later calls send no key');
    const errors = p.said('error').length;
    T.is(errors + p.console.filter((m) =>
        /CORS|Access-Control/.test(m.text)).length, 1,
         'no other console error', show(p.console));
});

scenario('strict CSP', async (T) => {
    const p = await T.open('/csp.html?s=' + T.tag);
    const res = await T.ctx.request.get(ORIGIN + '/csp.html');
    T.ok(/script-src 'self'/.test(res.headers()['content-security-policy']),
         'the page is served with a strict CSP');
    T.ok(await p.loaded(), 'initialises');
    T.is(await p.eval(() => window.__inlineRan), undefined,
         'the CSP refuses inline script');
    T.ok(await p.visible('launcher'), 'the launcher shows');
    T.is(await p.w('launcher').evaluate((e) =>
        getComputedStyle(e).backgroundColor), BLUE, 'and is styled');
    await p.w('launcher').click();
    T.ok(await p.visible('panel'), 'the panel opens on a click');
    await p.ue('event.csp');
    T.ok((await events({ type: 'event', name: 'csp',
                         url: p.page.url() })).length,
         'events reach the store');
    const v = await p.eval(() => window.__violations);
    T.ok(v.length === 1 && /^script-src/.test(v[0]) &&
         / inline$/.test(v[0]),
         'no CSP violation but the page\'s own inline script', show(v));
});

scenario('host CSS restyling everything', async (T) => {
    const p = await T.open('/hostile.html?s=' + T.tag);
    await p.loaded();
    const l = p.w('launcher');
    T.ok(await l.isVisible(), 'the launcher shows');
    const box = await l.boundingBox();
    const vp = p.page.viewportSize();
    T.ok(box && Math.abs(box.width - 56) < 1 &&
         Math.abs(box.height - 56) < 1 &&
         Math.abs(box.x + box.width - (vp.width - 20)) < 2 &&
         Math.abs(box.y + box.height - (vp.height - 20)) < 2,
         'its size and place are its own', show(box));
    T.is(await l.evaluate((e) => getComputedStyle(e).backgroundColor), BLUE,
         'its colour is its own');
    await l.click();
    const panel = p.w('panel');
    T.ok(await panel.isVisible() &&
         Math.abs((await panel.boundingBox()).width - 330) < 1,
         'the panel opens with its own size');
    T.is(await p.w('message').first().evaluate((e) => {
        const s = getComputedStyle(e);
        return [s.fontSize, s.textTransform, s.letterSpacing].join(' ');
    }), '14px none normal', 'the text keeps its own font');
});


/* the demo, with a screenshot kept as an artifact ------------------------ */

scenario('demo screenshot', async (T) => {
    /* here, as on a site, a headless browser is a bot (make run's demo
     * lets it in, t/demo.t): the banner says what init answered and
     * claims no key */
    const other = await T.ctx.browser().newContext({ userAgent:
        'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like ' +
        'Gecko) HeadlessChrome/120.0.0.0 Safari/537.36' });
    try {
        const q = new Page(other, await other.newPage());
        await q.page.goto(ORIGIN + '/demo/index.html');
        await until(() => q.page.locator('#status.ok').count());
        const banner = await q.page.locator('#status').textContent();
        T.ok(/answered as a bot/.test(banner) && !/cookie/.test(banner),
             'a bot: the demo banner says so and claims no key', banner);
    } finally {
        await other.close();
    }

    const p = await T.open('/demo/index.html');
    T.ok(await until(() => p.page.locator('#status.ok').count()),
         'the demo page loads the widget');
    T.ok(/HttpOnly cookie/.test(await p.page.locator('#status')
        .textContent()), 'a visitor: the banner says where the key is');
    await p.page.click('#btn-event');
    T.ok((await events({ type: 'event', name: 'demo_click',
                         url: ORIGIN + '/demo/index.html' })).length,
         'its buttons call the SDK');
    await p.w('launcher').click();
    await until(() => p.visible('panel'));
    await sleep(300);               /* the opening animation */
    const file = path.join(SHOTS, 'demo-open.png');
    const png = await p.page.screenshot({ path: file });
    T.ok(png.length > 5000 && fs.existsSync(file),
         'screenshot saved as ' + path.relative(process.cwd(), file));

    /* look at the picture: the panel header and the launcher are there */
    const at = async (role, dx, dy) => {
        const b = await p.w(role).boundingBox();
        return [Math.round(b.x + dx), Math.round(b.y + dy)];
    };
    const points = [await at('launcher', 7, 28), await at('panel', 12, 12)];
    const px = await p.eval(async ([b64, pts]) => {
        const img = new Image();
        img.src = 'data:image/png;base64,' + b64;
        await img.decode();
        const c = document.createElement('canvas');
        c.width = img.width;
        c.height = img.height;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        return pts.map((q) => Array.from(g.getImageData(q[0], q[1], 1, 1)
                                          .data.slice(0, 3)));
    }, [png.toString('base64'), points]);
    const blue = (c) => Math.abs(c[0] - 59) < 12 && Math.abs(c[1] - 91) < 12 &&
                        Math.abs(c[2] - 219) < 12;
    T.ok(px.every(blue), 'the screenshot shows the launcher and the open ' +
         'panel', show(px));
});


/* main ------------------------------------------------------------------- */

(async () => {
    const t0 = Date.now();
    const launch = (more) => chromium.launch({
        executablePath: process.env.CIVCHAT_CHROMIUM || '/usr/bin/chromium',
        args: ['--no-sandbox', '--disable-gpu',
               '--disable-background-networking',
               '--disable-component-update', '--disable-sync',
               '--no-first-run'].concat(more)
    });

    /* the module counts, but does not profile, bots, and HeadlessChrome
     * is one: the browser gets the user agent of its headed self (set at
     * launch: sendBeacon ignores a per-context user agent) */
    let browser = await launch([]);
    const major = browser.version().split('.')[0];
    await browser.close();
    browser = await launch(['--user-agent=Mozilla/5.0 (X11; Linux x86_64) ' +
        'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/' + major +
        '.0.0.0 Safari/537.36']);

    for (const sc of scenarios) {
        if (ONLY.length && ONLY.indexOf(sc.name) < 0) {
            continue;
        }
        const s0 = Date.now();
        await run(browser, sc);
        process.stderr.write('# ' + sc.name + ': ' + (Date.now() - s0) +
                             ' ms\n');
    }

    await browser.close();
    process.stderr.write('# browser scenarios: ' + (Date.now() - t0) +
                         ' ms\n');
    process.stdout.write(JSON.stringify({ done: checks }) + '\n');
})().catch((e) => {
    process.stderr.write(String(e && e.stack || e) + '\n');
    process.exit(1);
});
