/*
 * civchat widget.js, the browser side of ngx_http_civchat_module: see the
 * README, "The widget".  ES5, no dependencies, no eval; "make" minifies
 * it (esbuild) into widget.min.js and its source map, which the module
 * serves.
 * The stub for userengage() calls made before this script has loaded:
 *
 *   window.userengage=window.userengage||function(){(userengage.q=userengage.q||[]).push(arguments)};
 */
(function (window, document) {
    'use strict';

    /* Included twice: the first copy wins; after UE.destroy(), a copy
     * included again (a Turbolinks-style page swap) restarts it. */
    var self = window.__civchat_widget__;

    if (self) {
        if (self.destroyed()) {
            self.start();
        }
        return;
    }


    /* 1. state and small helpers ------------------------------------- */

    /* The module writes its location's endpoint base here: its path
     * ("/civchat/"), or civchat_widget_base.  A copy served as a plain
     * file keeps the marker.  See base(). */
    var SERVED = "%%CIVCHAT_BASE%%";

    var KEY_ITEM = 'civchat_key';
    var KEY_RE = /^[A-Za-z0-9]{12,32}$/;
    var STATES = { simple: 1, standard: 1, hidden: 1, expanded: 1 };
    var GREETING = 'Hi! How can we help?';
    var WAIT_MS = 10000;        /* longest wait for window.civchat... */
    var WAIT_AFTER_LOAD = 1000; /* ...or this long after window load */

    /* This script's URL and tag, known only while it first runs (a
     * loader that evaluates its text leaves currentScript null). */
    var ME = document.currentScript;
    var SRC = ME && ME.src || '';
    var TAG = ME || document.querySelector('script[data-civchat-base]');
    var ATTR = TAG && TAG.getAttribute('data-civchat-base') || '';

    var S;                      /* the running instance, see fresh() */
    var UE;
    var memKey = null;          /* the key, if localStorage is blocked */

    function fresh() {
        return {
            started: false,     /* init sent */
            settled: false,     /* init answered, or given up */
            destroyed: false,
            unloading: false,   /* pagehide: requests go by sendBeacon */
            lastUrl: '',        /* of the last page view */
            waited: 0,          /* ms spent waiting for window.civchat */
            sinceLoad: 0,       /* ...of them after window load */
            gaveUp: false,      /* said it is missing; watch() goes on */
            watch: null,        /* the setter of the accessor, see watch() */
            waiting: [],        /* API calls made before init answered */
            queue: [],          /* requests not sent yet, one at a time */
            busy: false,
            listeners: [],
            timer: 0,
            live: null,         /* an EventSource, see hear() */
            liveKey: '',
            ui: null
        };
    }

    function say(level, msg) {
        if (window.console) {
            console[level]('civchat: ' + msg);
        }
    }

    function isFn(v) {
        return typeof v === 'function';
    }

    function isObj(v) {
        return v !== null && typeof v === 'object';
    }

    function config() {
        var c = window.civchat;

        return isObj(c) ? c : {};
    }

    /* The endpoint base, absolute, ending in "/": civchat.base, else the
     * script tag's data-civchat-base (both against the page), else the
     * base the module wrote in (against this script's URL, else the
     * page's); a copy not served by the module uses its own directory. */
    function base() {
        var b = config().base, from = location.href, u;

        if (typeof b !== 'string' || !b) {
            b = ATTR;
        }
        if (!b) {
            b = SERVED.indexOf('%%') === 0 ? (SRC ? './' : '/civchat/')
                                            : SERVED;
            from = SRC || from;
        }
        try {
            u = new URL(b, from).href;
        } catch (e) {
            u = b;              /* no URL(): as written */
        }
        u = u.replace(/[?#].*$/, '');
        return /\/$/.test(u) ? u : u + '/';
    }

    /* Cross-origin the HttpOnly cookie is another site's: the answers'
     * key is kept in localStorage and sent as "key"; bodies go as
     * text/plain, a CORS request with no preflight (still JSON). */
    function cross() {
        return base().indexOf(location.protocol + '//' + location.host +
                              '/') !== 0;
    }

    /* A shallow copy of data's own fields; functions never travel. */
    function fields(data) {
        var out = {}, k;

        if (isObj(data)) {
            for (k in data) {
                if (Object.prototype.hasOwnProperty.call(data, k) &&
                    data[k] !== undefined && !isFn(data[k]))
                {
                    out[k] = data[k];
                }
            }
        }
        return out;
    }

    function apiKey(data) {
        return isObj(data) && (data.apiKey || data.api_key || data.app_key) ||
               config().apiKey;
    }

    /* data, the apiKey and the page context, always the page's own (the
     * server reads url, referrer and title as that, never as attributes) */
    function makeBody(data) {
        var body = fields(data);

        body.apiKey = apiKey(data);
        body.url = location.href;
        body.referrer = document.referrer;
        body.title = document.title;
        return body;
    }

    /* civchat as an init or page_hit body (the server skips "widget") */
    function configBody() {
        var c = config(),
            body = makeBody(c),
            w = c.widget;

        if (isObj(w) && STATES[w.state] === 1) {
            body.state = w.state;   /* civchat.widget.state wins */
        }
        return body;
    }

    function readKey() {
        var k = null;

        try {
            k = window.localStorage.getItem(KEY_ITEM);
        } catch (e) { /* storage blocked */ }
        return KEY_RE.test(k) ? k : memKey;
    }

    function saveKey(k) {
        if (cross() && KEY_RE.test(k)) {
            memKey = k;
            try {
                window.localStorage.setItem(KEY_ITEM, k);
            } catch (e) { /* blocked or full: memKey serves this page */ }
        }
    }

    function forgetKey() {
        memKey = null;
        try {
            window.localStorage.removeItem(KEY_ITEM);
        } catch (e) { /* blocked */ }
    }

    /* A link from a User.com-style e-mail: ?__ca__chat=KEY.  Anyone may
     * have the link, so the key is only sent as link_key, for the
     * store to join the click to the e-mail; it is never the visitor's. */
    function linkKey() {
        var m = /[?&]__ca__chat=([A-Za-z0-9]{12,32})(?:[&#]|$)/
                .exec(location.search);

        return m ? m[1] : null;
    }

    /* Run a site callback; a throwing callback never breaks the widget. */
    function fire(name, arg) {
        var c = config();

        if (isFn(c[name])) {
            try {
                c[name].call(c, arg);
            } catch (e) {
                say('error', name + ' callback failed: ' + e);
            }
        }
    }

    /* JSON text as an object; anything else as {} */
    function parse(text) {
        var v = null;

        try {
            v = JSON.parse(text);
        } catch (e) { /* not JSON */ }
        return isObj(v) ? v : {};
    }

    function listen(target, type, fn) {
        target.addEventListener(type, fn, false);
        S.listeners.push([target, type, fn]);
    }


    /* 2. transport --------------------------------------------------- */

    /* One request at a time, in call order: on a first visit init's
     * answer brings the cookie (or key) every later call needs. */
    function request(path, body, done) {
        var s = S;

        if (!body.apiKey) {
            say('error', path + ' not sent: apiKey is required');
            return;
        }
        if (s.unloading) {
            beacon(path, body);
            return;
        }
        s.queue.push([path, body, done]);
        pump(s);
    }

    function pump(s) {
        var job;

        if (s.busy || !s.queue.length) {
            return;
        }
        job = s.queue.shift();
        s.busy = true;
        post(job[0], job[1], function (data) {
            s.busy = false;
            if (!s.destroyed) {
                if (job[2]) {
                    job[2](data);
                }
                pump(s);
            }
        });
    }

    function encode(path, body) {
        var k = cross() && readKey(), l = path === 'init' && linkKey();

        if (k) {
            body.key = k;
        } else if (l) {
            body.link_key = l;  /* noted by the server, never trusted */
        }
        if (path === 'reset_auth') {
            forgetKey();    /* a lost answer must not bring it back */
        }
        try {
            return JSON.stringify(body);
        } catch (e) {
            say('error', path + ' not sent: ' + e);   /* a cycle */
            return null;
        }
    }

    function post(path, body, done, again) {
        var text = encode(path, body);

        if (text === null) {
            done(null);
            return;
        }
        var url = base() + path;

        transmit(url, text, cross() ? 'text/plain' : 'application/json',
                 function (status, answerText) {
                     /* another tab was just given a new key: once more */
                     if (status === 409 && !again &&
                             parse(answerText).error === 'key_replaced') {
                         delete body.key;
                         delete body.link_key;
                         post(path, body, done, true);
                         return;
                     }
                     answer(path, url, status, answerText, done);
                 });
    }

    /* POSTs text, then done(status, answer), status 0 if unreachable;
     * keepalive (up to 64 KB in flight) outlives the page. */
    function transmit(url, text, type, done) {
        var called = false;

        function finish(status, answerText) {
            if (!called) {
                called = true;
                done(status, answerText);
            }
        }

        window.fetch(url, {
            method: 'POST',
            credentials: 'include',
            keepalive: text.length < 60000,
            headers: { 'Content-Type': type },
            body: text
        }).then(function (res) {
            return res.text().then(function (t) {
                finish(res.status, t);
            });
        }).then(null, function () {
            finish(0, '');
        });
    }

    function answer(path, url, status, text, done) {
        var data = parse(text), i, ign;

        if (status < 200 || status > 299) {
            say('error', path + ' failed: ' + failure(url, status, data));
            done(null);
            return;
        }

        saveKey(data.key);
        hear(data.key);

        ign = data.ignored;
        for (i = 0; ign && i < ign.length; i++) {
            if (isObj(ign[i])) {
                say('warn', path + ': "' + ign[i].name + '" ignored: ' +
                            ign[i].reason);
            }
        }

        done(data);
    }

    /* What went wrong, with the URL: civchat's own errors name the field
     * in their detail; any other answer is not a civchat endpoint. */
    function failure(url, status, data) {
        if (!status) {
            return 'could not reach ' + url + ' (offline, blocked, or a ' +
                   'site civchat_allow_origin does not list)';
        }
        if (data.error) {
            return (data.detail || 'HTTP ' + status) + ' (' + data.error +
                   ') at ' + url;
        }
        return 'HTTP ' + status + ' at ' + url + ': not a civchat ' +
            'endpoint; name it with data-civchat-base="/civchat/" on the ' +
            'script tag or civchat.base' + (SERVED.indexOf('%%') === 0 ?
            ' (this widget.js is a copy civchat does not serve)' : '');
    }

    /* Fire and forget while the page goes away. */
    function beacon(path, body) {
        var url = base() + path, text = encode(path, body);

        if (text === null) {
            return;
        }
        try {
            if (navigator.sendBeacon(url, new Blob([text],
                                                   { type: 'text/plain' })))
            {
                return;
            }
        } catch (e) { /* no sendBeacon */ }
        transmit(url, text, 'text/plain', function () {});
    }

    /* Hidden (it may be killed) or unloading: the queue leaves by
     * beacon; after pagehide so do later and waiting calls. */
    function flush(unloading) {
        var s = S, jobs = s.queue, i;

        s.queue = [];
        for (i = 0; i < jobs.length; i++) {
            beacon(jobs[i][0], jobs[i][1]);
        }
        if (unloading) {
            s.unloading = true;
            if (!s.settled) {
                replay();
            }
        }
    }


    /* The live channel (server-sent events) of the last answer's key;
     * the browser reconnects with Last-Event-ID.  "profile": ignored. */
    function hear(key) {
        var s = S;

        if (KEY_RE.test(key) && key !== s.liveKey && !s.destroyed &&
            window.EventSource)
        {
            if (s.live) {
                s.live.close();
            }
            s.liveKey = key;
            s.live = new window.EventSource(base() + 'stream' +
                (cross() ? '?key=' + key : ''), { withCredentials: true });
            s.live.addEventListener('message', function (e) {
                var text = parse(e.data).content;

                if (typeof text === 'string' && text) {
                    message(text, false);
                }
            }, false);
            s.live.addEventListener('payload', function (e) {
                fire('onPayloadReceived', parse(e.data).content);
            }, false);
        }
    }


    /* 3. the launcher and panel -------------------------------------- */

    var CSS =
        ':host{all:initial!important}' +
        '.w{position:fixed;right:20px;bottom:20px;z-index:2147483000;' +
        'font:14px/1.45 system-ui,sans-serif;color:#1f2330;' +
        'text-align:left}' +
        '.off{display:none!important}' +
        'button,input{font:inherit;color:inherit;margin:0}' +
        'button{cursor:pointer}' +
        '.l{width:56px;height:56px;border-radius:50%;border:0;padding:0;' +
        'background:#3b5bdb;color:#fff;display:flex;align-items:center;' +
        'justify-content:center;box-shadow:0 4px 14px rgba(20,30,80,.3);' +
        'transition:transform .15s}' +
        '.l:hover{transform:scale(1.06)}' +
        ':focus-visible{outline:3px solid #91a7ff;outline-offset:2px}' +
        'svg{width:28px;height:28px;fill:currentColor}' +
        '.c{fill:none;stroke:currentColor;stroke-width:2.4;' +
        'stroke-linecap:round}' +
        '.g,.p{position:absolute;right:0;bottom:70px;background:#fff;' +
        'animation:in .2s ease-out}' +
        '.g,.m{white-space:pre-wrap;overflow-wrap:break-word}' +
        '.g{width:max-content;max-width:260px;border:0;padding:10px 14px;' +
        'border-radius:14px 14px 4px 14px;text-align:left;' +
        'box-shadow:0 4px 18px rgba(20,30,80,.18)}' +
        '.p{width:330px;max-width:calc(100vw - 40px);border-radius:16px;' +
        'overflow:hidden;box-shadow:0 10px 34px rgba(20,30,80,.28)}' +
        '.h{display:flex;align-items:center;justify-content:space-between;' +
        'padding:14px 16px;background:#3b5bdb;color:#fff;font-weight:600;' +
        'font-size:15px}' +
        '.x{border:0;background:none;padding:2px;line-height:0;color:#fff}' +
        '.x svg{width:20px;height:20px}' +
        '.b{display:flex;flex-direction:column;align-items:flex-start;' +
        'gap:8px;padding:16px;min-height:140px;max-height:50vh;' +
        'overflow:auto;background:#f4f6fb}' +
        '.m{max-width:85%;padding:10px 13px;background:#fff;' +
        'border-radius:14px 14px 14px 4px;' +
        'box-shadow:0 1px 3px rgba(20,30,80,.1)}' +
        '.me{align-self:flex-end;background:#3b5bdb;color:#fff;' +
        'border-radius:14px 14px 4px 14px}' +
        '.f{display:flex;gap:8px;padding:10px;border-top:1px solid #e6e9f2}' +
        '.f input{flex:1;min-width:0;padding:9px 12px;border:1px solid ' +
        '#d0d5e2;border-radius:10px;background:#fff}' +
        '.f button{border:0;border-radius:10px;padding:0 14px;' +
        'background:#3b5bdb;color:#fff;font-weight:600}' +
        '@keyframes in{from{opacity:0;transform:translateY(8px)}}' +
        '@media (prefers-reduced-motion:reduce){.g,.p,.l{animation:none;' +
        'transition:none}}';

    var ICON_CHAT = 'M20 2H4a2 2 0 0 0-2 2v18l4-4h14a2 2 0 0 0 2-2V4a2 2 ' +
                    '0 0 0-2-2z';
    var ICON_CLOSE = 'M6 6l12 12M18 6 6 18';     /* stroked: class c */

    function el(tag, cls, role, text) {
        var e = document.createElement(tag);

        if (cls) {
            e.className = cls;
        }
        if (role) {
            e.setAttribute('data-civchat', role);
        }
        if (text) {
            e.textContent = text;   /* server text is text, never HTML */
        }
        return e;
    }

    function button(cls, role, label, text) {
        var b = el('button', cls, role, text);

        b.type = 'button';
        if (label) {
            b.setAttribute('aria-label', label);
        }
        return b;
    }

    function icon(d, cls) {
        var ns = 'http://www.w3.org/2000/svg',
            svg = document.createElementNS(ns, 'svg'),
            path = document.createElementNS(ns, 'path');

        svg.setAttribute('viewBox', '0 0 24 24');
        svg.setAttribute('aria-hidden', 'true');
        path.setAttribute('d', d);
        if (cls) {
            svg.setAttribute('class', cls);
        }
        svg.appendChild(path);
        return svg;
    }

    /* A constructed style sheet: a strict CSP blocks <style>, not the
     * CSSOM. */
    function styles(root) {
        var sheet;

        try {
            sheet = new window.CSSStyleSheet();
            sheet.replaceSync(CSS);
            root.adoptedStyleSheets = [sheet];
            if (root.adoptedStyleSheets.length) {
                return;
            }
        } catch (e) { /* an older browser */ }
        root.appendChild(el('style', 0, 0, CSS));
    }

    function mount(settings) {
        var ui, root, head, greeting = settings.greeting;

        if (S.ui || S.destroyed || !document.documentElement.attachShadow) {
            return;             /* no Shadow DOM: tracking only */
        }
        if (!document.body) {
            listen(document, 'DOMContentLoaded', function () {
                mount(settings);
            });
            return;
        }

        ui = {
            host: el('div'), open: false, visible: true, bubble: false,
            greeting: typeof greeting === 'string' && greeting ? greeting
                                                                : GREETING
        };
        ui.host.id = 'civchat-root';
        root = ui.host.attachShadow({ mode: 'open' });
        styles(root);

        ui.wrap = el('div', 'w', 'widget');
        ui.panel = el('div', 'p', 'panel');
        ui.panel.setAttribute('role', 'dialog');
        ui.panel.setAttribute('aria-label', 'Chat');
        head = el('div', 'h', 0, 'Chat with us');
        ui.close = button('x', 'close', 'Close chat');
        ui.close.appendChild(icon(ICON_CLOSE, 'c'));
        head.appendChild(ui.close);
        ui.body = el('div', 'b', 'messages');
        ui.body.setAttribute('aria-live', 'polite');
        ui.form = el('form', 'f', 'form');
        ui.input = el('input', 0, 'input');
        ui.input.setAttribute('aria-label', 'Your message');
        ui.input.placeholder = 'Write a message\u2026';
        ui.input.maxLength = 1000;
        ui.form.appendChild(ui.input);
        ui.form.appendChild(el('button', 0, 'send', 'Send'));
        ui.panel.appendChild(head);
        ui.panel.appendChild(ui.body);
        ui.panel.appendChild(ui.form);

        ui.bubbleEl = button('g', 'greeting', 0, ui.greeting);
        ui.launcher = button('l', 'launcher');
        ui.iconChat = icon(ICON_CHAT);
        ui.iconClose = icon(ICON_CLOSE, 'c');
        ui.launcher.appendChild(ui.iconChat);
        ui.launcher.appendChild(ui.iconClose);

        ui.wrap.appendChild(ui.panel);
        ui.wrap.appendChild(ui.bubbleEl);
        ui.wrap.appendChild(ui.launcher);
        root.appendChild(ui.wrap);

        listen(ui.launcher, 'click', toggle);
        listen(ui.bubbleEl, 'click', open);
        listen(ui.close, 'click', close);
        listen(ui.form, 'submit', send);
        listen(ui.wrap, 'keydown', function (e) {
            if (e.key === 'Escape' || e.keyCode === 27) {
                close();
                ui.launcher.focus();
            }
        });

        switch (settings.state) {
        case 'standard':
            ui.bubble = true;
            break;
        case 'hidden':
            ui.visible = false;
            break;
        case 'expanded':
            ui.open = true;
            break;
        }

        S.ui = ui;
        render();
        document.body.appendChild(ui.host);
    }

    /* One chat message, rendered as text (no greeting after it). */
    function message(text, mine) {
        var ui = S.ui;

        if (ui) {
            ui.greeted = true;
            ui.body.appendChild(el('div', mine ? 'm me' : 'm', 'message',
                                   text));
            ui.body.scrollTop = ui.body.scrollHeight;
        }
        fire('onMessage', { content: text, isAdmin: !mine });
    }

    function render() {
        var ui = S.ui;

        /* the greeting is the first incoming message, once it shows */
        if (!ui.greeted && (ui.open || ui.bubble && ui.visible)) {
            ui.greeted = true;
            message(ui.greeting, false);
        }
        ui.wrap.classList.toggle('off', !ui.visible && !ui.open);
        ui.launcher.classList.toggle('off', !ui.visible);
        ui.panel.classList.toggle('off', !ui.open);
        ui.bubbleEl.classList.toggle('off', ui.open || !ui.bubble);
        ui.iconChat.classList.toggle('off', ui.open);
        ui.iconClose.classList.toggle('off', !ui.open);
        ui.launcher.setAttribute('aria-expanded', String(ui.open));
        ui.launcher.setAttribute('aria-label', ui.open ? 'Close chat'
                                                       : 'Open chat');
    }

    function open() {
        var ui = S.ui;

        if (ui && !ui.open) {
            ui.open = true;
            ui.bubble = false;      /* the greeting has been read */
            render();
            fire('onOpen');
        }
    }

    function close() {
        var ui = S.ui;

        if (ui && ui.open) {
            ui.open = false;
            render();
            fire('onClose');
        }
    }

    function toggle() {
        if (S.ui && S.ui.open) {
            close();
        } else {
            open();
        }
    }

    /* widget.show / widget.hide: the launcher; hiding closes the panel */
    function show(visible) {
        if (S.ui) {
            if (!visible) {
                close();
            }
            S.ui.visible = visible;
            render();
        }
    }

    /* What the visitor writes: shown and sent (a chat_message event). */
    function send(e) {
        var text = S.ui.input.value.replace(/^\s+|\s+$/g, '');

        e.preventDefault();
        if (text) {
            S.ui.input.value = '';
            message(text, true);
            request('message', makeBody({ content: text }));
        }
    }


    /* 4. the public API ---------------------------------------------- */

    var WIDGET = {
        'widget.show': function () { show(true); },
        'widget.hide': function () { show(false); },
        'widget.open': open,
        'widget.close': close,
        'widget.toggle': toggle
    };

    /* UE.pageHit(data): a page view of location.href (SPAs call it on
     * each route); data: attributes and an "event" object. */
    function pageHit(data) {
        pageView(makeBody(data));
    }

    /* after a route change, the referrer is the route before it */
    function pageView(body) {
        if (S.lastUrl && S.lastUrl !== body.url) {
            body.referrer = S.lastUrl;
        }
        S.lastUrl = body.url;
        request('page_hit', body);
    }

    /* UE.resetAuth(data): logout; the server makes a new identity and the
     * panel forgets what was said in it. */
    function resetAuth(data) {
        var ui = S.ui;

        request('reset_auth', makeBody(data));
        if (ui) {
            ui.body.textContent = '';
            ui.greeted = false;
            render();
        }
    }

    function command(name, data) {
        var body;

        if (typeof name === 'string' && name.indexOf('event.') === 0) {
            body = makeBody(null);
            body.event = name.slice(6);
            body.attributes = isObj(data) ? fields(data) : {};
            request('event', body);

        } else if (name === 'product_event' || name === 'client.update') {
            body = makeBody(data);
            if (isObj(data) && typeof data.url === 'string' && data.url) {
                body.url = data.url;    /* a product's page: the caller's */
            }
            request(name === 'client.update' ? 'update' : name, body);

        } else if (WIDGET.hasOwnProperty(name)) {
            WIDGET[name]();

        } else {
            say('warn', 'unknown command "' + name + '"');
        }
    }

    /* Public entry points: dead after destroy; until init has answered
     * calls wait (for its cookie or key). */
    function api(fn) {
        return function () {
            var args = arguments;

            if (S.destroyed) {
                say('warn', 'destroyed: call ignored (UE.init() restarts)');
                return;
            }
            if (!S.settled) {
                S.waiting.push(function () { fn.apply(null, args); });
                return;
            }
            fn.apply(null, args);
        };
    }

    function replay() {
        var calls = S.waiting, i;

        S.waiting = [];
        for (i = 0; i < calls.length; i++) {
            try {
                calls[i]();
            } catch (e) {
                say('error', 'queued call failed: ' + e);
            }
        }
    }

    /* Removes all the widget added; calls are then refused until
     * UE.init() (or this script included again). */
    function destroy() {
        var l, host = S.ui && S.ui.host;

        if (S.destroyed) {
            say('warn', 'already destroyed');
            return;
        }
        S.destroyed = true;
        UE.isReady = false;
        clearTimeout(S.timer);
        unwatch();
        if (S.live) {
            S.live.close();
        }
        while ((l = S.listeners.pop())) {
            l[0].removeEventListener(l[1], l[2], false);
        }
        if (host && host.parentNode) {
            host.parentNode.removeChild(host);
        }
        S.ui = null;
        S.queue = [];
        S.waiting = [];
    }

    /* Legacy UE.init(options): merges options into window.civchat and
     * starts a widget waiting for it or destroyed; else UE.refresh. */
    function merge(options) {
        var k;

        if (isObj(options)) {
            if (!isObj(window.civchat)) {
                window.civchat = {};
            }
            for (k in options) {
                if (Object.prototype.hasOwnProperty.call(options, k)) {
                    window.civchat[k] = options[k];
                }
            }
        }
    }

    function legacyInit(options) {
        merge(options);
        if (S.destroyed) {
            start();
        } else if (!S.started) {
            clearTimeout(S.timer);
            check(true);
        } else {
            refresh();
        }
    }

    /* Legacy UE.refresh(options): the same merge, then all of civchat
     * as a page view (a civchat changed at run time). */
    function refresh(options) {
        merge(options);
        if (!S.started && !S.destroyed) {
            legacyInit();
        } else {
            api(function () { pageView(configBody()); })();
        }
    }

    /* Another library may own window.UE already: add to it, never
     * replace it. */
    function expose() {
        UE = window.UE;
        if (!isObj(UE) && !isFn(UE)) {
            UE = window.UE = {};
        }
        UE.isReady = false;
        UE.pageHit = api(pageHit);
        UE.resetAuth = api(resetAuth);
        UE.destroy = destroy;       /* acts at once, even before init */
        UE.init = legacyInit;
        UE.refresh = refresh;
    }

    /* The stub's calls, in order; a kept reference to the stub pushes to
     * userengage.q, which now forwards them. */
    function unstub() {
        var stub = window.userengage, q = isFn(stub) && stub.q,
            ue = window.userengage = api(command), i;

        ue.q = { push: function (args) { ue.apply(null, args); } };
        for (i = 0; q && i < q.length; i++) {
            ue.apply(null, q[i]);
        }
    }


    /* 5. start-up ---------------------------------------------------- */

    function init() {
        var s = S, body = configBody();

        /* what the browser knows; the site's own values win */
        function auto(name, value) {
            if (value && !(name in body)) {
                body[name] = value;
            }
        }

        auto('language', navigator.language);
        auto('resolution', window.screen && screen.width + 'x' +
                                            screen.height);
        try {
            auto('timezone', Intl.DateTimeFormat().resolvedOptions()
                                 .timeZone);
        } catch (e) { /* no Intl */ }

        s.started = true;
        unwatch();
        s.lastUrl = body.url;
        request('init', body, function (data) {
            var w = data && isObj(data.widget) ? data.widget : {};

            s.settled = true;
            if (data) {
                mount({
                    state: STATES[w.state] === 1 ? w.state :
                           STATES[body.state] === 1 ? body.state : 'simple',
                    greeting: w.greeting
                });
                UE.isReady = true;
            }
            replay();
            if (data) {
                fire('onLoad');
            }
        });
    }

    /* window.civchat may be defined after this script ran: a short wait
     * (until 1 s after the load event, 10 s at most) for an apiKey added
     * to an object already there, then the console says once that it is
     * missing; an assignment of window.civchat, whenever it comes, is
     * noticed by watch() ("set"). */
    function check(now) {
        var s = S, c = window.civchat;

        if (s.destroyed || s.started) {
            return;
        }
        if (isObj(c) && c.apiKey) {
            clearTimeout(s.timer);
            init();
            return;
        }
        if (now === 'set' || s.gaveUp && now !== true) {
            return;
        }
        if (now !== true) {
            s.waited += 100;
            if (document.readyState === 'complete') {
                s.sinceLoad += 100;
            }
        }
        if (now === true || s.waited >= WAIT_MS ||
            s.sinceLoad >= WAIT_AFTER_LOAD)
        {
            say('error', 'window.civchat.apiKey is required: nothing is ' +
                         'sent until window.civchat has it');
            s.gaveUp = true;
            s.settled = true;   /* calls with their own apiKey still go */
            replay();
            return;
        }
        s.timer = setTimeout(check, 100);
    }

    /* An accessor on window notices window.civchat assigned at any time
     * (after a login call, by a user script, seconds after load); the
     * value stays readable and replaceable, and it is a plain property
     * again once init has gone or the widget is destroyed.  A page that
     * declared "var civchat" cannot be watched: the short wait only. */
    function watch() {
        var s = S, value = window.civchat;

        function set(v) {
            value = v;
            setTimeout(function () { check('set'); }, 0);
        }

        try {
            Object.defineProperty(window, 'civchat', {
                configurable: true,
                enumerable: true,
                get: function () { return value; },
                set: set
            });
            s.watch = set;
        } catch (e) { /* not configurable */ }
    }

    function unwatch() {
        var s = S, d = Object.getOwnPropertyDescriptor(window, 'civchat');

        if (s.watch && d && d.set === s.watch) {
            Object.defineProperty(window, 'civchat', {
                configurable: true,
                enumerable: true,
                writable: true,
                value: d.get()
            });
        }
        s.watch = null;
    }

    function start() {
        S = fresh();
        UE.isReady = false;

        listen(window, 'pagehide', function () { flush(true); });
        listen(window, 'pageshow', function () { S.unloading = false; });
        listen(document, 'visibilitychange', function () {
            if (document.visibilityState === 'hidden') {
                flush(false);
            }
        });

        check();
        if (!S.started) {
            watch();
        }
    }

    window.__civchat_widget__ = {
        version: '1.0.0',
        destroyed: function () { return S.destroyed; },
        start: start
    };

    expose();
    start();
    unstub();

}(window, document));
