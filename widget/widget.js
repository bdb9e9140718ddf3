/*
 * civchat widget: the browser side of ngx_http_civchat_module.  Plain ES5,
 * no build step, no dependencies.  The module writes its base URL into BASE.
 * Sections: 1 helpers, 2 transport, 3 launcher UI, 4 API, 5 start-up.
 */
(function (window, document) {
    'use strict';

    /* Included twice: the first copy wins. */
    if (window.__civchat_widget__) {
        return;
    }
    window.__civchat_widget__ = { version: '0.1.0' };


    /* 1. state and small helpers ------------------------------------- */

    var BASE = "%%CIVCHAT_BASE%%";
    var KEY_ITEM = 'civchat_key';
    var KEY_RE = /^[A-Za-z0-9]{12,32}$/;
    var STATES = { simple: 1, standard: 1, hidden: 1, expanded: 1 };
    var GREETING = 'Hi! How can we help you?';
    var WAIT_MS = 10000;        /* longest wait for window.civchat */
    var WAIT_AFTER_LOAD = 500;  /* ...or this long after window load */

    var S = {
        settled: false,     /* init answered or failed */
        destroyed: false,
        hidden: false,      /* page hidden: use sendBeacon */
        loadFired: false,
        key: null,          /* if localStorage is blocked */
        waiting: [],        /* calls made before init answered */
        queue: [],          /* requests not sent yet */
        busy: false,        /* a request is in flight */
        listeners: [],
        timer: null,
        ui: null
    };

    /* Served raw (not by the module): talk to the directory it came from. */
    if (BASE.charAt(0) === '%') {
        BASE = document.currentScript && document.currentScript.src ?
               document.currentScript.src.replace(/[?#].*$/, '')
                                         .replace(/[^\/]*$/, '') :
               '/civchat/';
    }

    var SAME_ORIGIN =
        BASE.indexOf(location.protocol + '//' + location.host + '/') === 0;

    function logError(msg) {
        console.error('civchat: ' + msg);
    }

    function logWarn(msg) {
        console.warn('civchat: ' + msg);
    }

    function isFn(v) {
        return typeof v === 'function';
    }

    function config() {
        var c = window.civchat;
        return c && typeof c === 'object' ? c : {};
    }

    /* A shallow copy of data's own fields; functions never travel. */
    function fields(data) {
        var out = {}, k;

        if (data && typeof data === 'object') {
            for (k in data) {
                if (Object.prototype.hasOwnProperty.call(data, k)
                    && data[k] !== undefined && !isFn(data[k]))
                {
                    out[k] = data[k];
                }
            }
        }
        return out;
    }

    /* The body of a request: data, the apiKey and the page context. */
    function makeBody(data) {
        var body = fields(data);

        body.apiKey = (data && data.apiKey) || config().apiKey;
        body.url = location.href;
        body.referrer = document.referrer;
        body.title = document.title;
        return body;
    }

    function readKey() {
        var k = null;

        try {
            k = window.localStorage.getItem(KEY_ITEM);
        } catch (e) { /* storage blocked */ }
        return k && KEY_RE.test(k) ? k : S.key;
    }

    function saveKey(k) {
        if (typeof k !== 'string' || !KEY_RE.test(k)) {
            return;
        }
        S.key = k;
        try {
            window.localStorage.setItem(KEY_ITEM, k);
        } catch (e) { /* storage blocked: the cookie still works */ }
    }

    /* Run a site callback; a throwing callback never breaks the widget. */
    function fire(name, arg) {
        var c = config();

        if (isFn(c[name])) {
            try {
                c[name].call(c, arg);
            } catch (e) {
                logError(name + ' callback failed: ' + e);
            }
        }
    }

    function listen(target, type, fn) {
        target.addEventListener(type, fn, false);
        S.listeners.push([target, type, fn]);
    }


    /* 2. transport --------------------------------------------------- */

    /* One request at a time, in call order: each carries the key the
     * previous answer gave (a first visit has no cookie yet). */
    function request(path, body, done) {
        if (!body.apiKey) {
            logError('window.civchat.apiKey is required');
            return;
        }
        if (S.hidden && path !== 'init') {
            beacon(path, body);
            return;
        }
        S.queue.push({ path: path, body: body, done: done });
        pump();
    }

    function pump() {
        var job;

        if (S.busy || S.queue.length === 0) {
            return;
        }
        job = S.queue.shift();
        S.busy = true;
        post(job.path, job.body, function (answer) {
            S.busy = false;
            if (job.done && !S.destroyed) {
                job.done(answer);
            }
            pump();
        });
    }

    function serialize(body) {
        var k = readKey();

        if (k) {
            body.key = k;
        }
        return JSON.stringify(body);
    }

    function post(path, body, done) {
        var url = BASE + path, text = serialize(body), called = false;

        function finish(status, answerText) {
            if (called) {
                return;
            }
            called = true;
            if (status === 0) {
                logError('could not reach ' + url);
                done(null);
            } else {
                answer(path, status, answerText, done);
            }
        }

        window.fetch(url, {
            method: 'POST',
            credentials: 'include',
            keepalive: SAME_ORIGIN && text.length < 60000,
            headers: { 'Content-Type': 'application/json' },
            body: text
        }).then(function (res) {
            return res.text().then(function (t) {
                finish(res.status, t);
            });
        }).then(null, function () {
            finish(0, '');
        });
    }

    function answer(path, status, text, done) {
        var data = null, i, ign;

        try {
            data = JSON.parse(text);
        } catch (e) { /* not JSON */ }

        if (status < 200 || status > 299) {
            logError(data && data.detail ? data.detail
                     : path + ' failed with HTTP ' + status);
            done(null);
            return;
        }

        data = data && typeof data === 'object' ? data : {};
        saveKey(data.key);

        ign = data.ignored;
        for (i = 0; ign && i < ign.length; i++) {
            if (ign[i]) {
                logWarn('ignored "' + ign[i].name + '": ' + ign[i].reason);
            }
        }
        done(data);
    }

    /* Fire and forget while the page goes away. */
    function beacon(path, body) {
        var url = BASE + path, text = serialize(body);

        try {
            if (navigator.sendBeacon(url,
                                     new Blob([text], { type: 'text/plain' })))
            {
                return;
            }
        } catch (e) { /* no sendBeacon: keepalive fetch below */ }

        window.fetch(url, {
            method: 'POST', credentials: 'include', keepalive: true,
            headers: { 'Content-Type': 'text/plain' }, body: text
        }).then(null, function () {});
    }

    /* Page hidden: the queue goes by beacon, and so does every request
     * until the page is back; on unload, calls waiting for init too. */
    function onHide(unloading) {
        var jobs = S.queue, i;

        S.hidden = true;
        S.queue = [];
        for (i = 0; i < jobs.length; i++) {
            if (jobs[i].path === 'init') {
                S.queue.push(jobs[i]);
            } else {
                beacon(jobs[i].path, jobs[i].body);
            }
        }
        if (unloading && !S.settled && config().apiKey) {
            replay();
        }
    }

    function onShow() {
        S.hidden = false;
        pump();
    }


    /* 3. the launcher and panel -------------------------------------- */

    var CSS =
        ':host{all:initial!important}' +
        '.w{position:fixed;right:20px;bottom:20px;z-index:2147483000;' +
        'font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,' +
        'sans-serif;color:#1f2330;text-align:left}' +
        '.off{display:none!important}' +
        'button{font:inherit;color:inherit;margin:0;cursor:pointer}' +
        '.l{width:56px;height:56px;border-radius:50%;border:0;padding:0;' +
        'background:#3b5bdb;color:#fff;display:flex;align-items:center;' +
        'justify-content:center;box-shadow:0 4px 14px rgba(20,30,80,.3);' +
        'transition:transform .15s}' +
        '.l:hover{transform:scale(1.06)}' +
        'button:focus-visible{outline:3px solid #91a7ff;outline-offset:2px}' +
        '.l svg{width:28px;height:28px;fill:currentColor}' +
        '.g{position:absolute;right:0;bottom:70px;width:max-content;' +
        'max-width:260px;border:0;padding:10px 14px;background:#fff;' +
        'border-radius:14px 14px 4px 14px;text-align:left;' +
        'box-shadow:0 4px 18px rgba(20,30,80,.18);white-space:pre-wrap;' +
        'overflow-wrap:break-word;animation:in .2s ease-out}' +
        '.p{position:absolute;right:0;bottom:70px;width:330px;' +
        'max-width:calc(100vw - 40px);background:#fff;border-radius:16px;' +
        'overflow:hidden;box-shadow:0 10px 34px rgba(20,30,80,.28);' +
        'animation:in .2s ease-out}' +
        '.h{display:flex;align-items:center;justify-content:space-between;' +
        'padding:14px 16px;background:#3b5bdb;color:#fff;font-weight:600;' +
        'font-size:15px}' +
        '.x{border:0;background:none;padding:2px;line-height:0;color:#fff}' +
        '.x svg{width:20px;height:20px;fill:currentColor}' +
        '.b{padding:16px;min-height:140px;max-height:50vh;overflow:auto;' +
        'background:#f4f6fb}' +
        '.m{display:inline-block;max-width:85%;padding:10px 13px;' +
        'background:#fff;border-radius:14px 14px 14px 4px;' +
        'box-shadow:0 1px 3px rgba(20,30,80,.1);white-space:pre-wrap;' +
        'overflow-wrap:break-word}' +
        '@keyframes in{from{opacity:0;transform:translateY(8px)}}' +
        '@media (prefers-reduced-motion:reduce){.g,.p,.l{animation:none;' +
        'transition:none}}';

    var ICON_CHAT = 'M20 2H4a2 2 0 0 0-2 2v18l4-4h14a2 2 0 0 0 2-2V4a2 2 ' +
                    '0 0 0-2-2z';
    var ICON_CLOSE = 'M19 6.41 17.59 5 12 10.59 6.41 5 5 6.41 10.59 12 5 ' +
                     '17.59 6.41 19 12 13.41 17.59 19 19 17.59 13.41 12z';

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

    function icon(d) {
        var ns = 'http://www.w3.org/2000/svg',
            svg = document.createElementNS(ns, 'svg'),
            path = document.createElementNS(ns, 'path');

        svg.setAttribute('viewBox', '0 0 24 24');
        svg.setAttribute('aria-hidden', 'true');
        path.setAttribute('d', d);
        svg.appendChild(path);
        return svg;
    }

    /* The server's answer decides; civchat.state is the fallback. */
    function pickState(settings) {
        var c = config();

        if (STATES[settings.state] === 1) {
            return settings.state;
        }
        return STATES[c.state] === 1 ? c.state : 'simple';
    }

    function mount(settings) {
        var ui, root, greeting, head;

        if (S.ui || S.destroyed) {
            return;
        }
        if (!document.body) {
            listen(document, 'DOMContentLoaded', function () {
                mount(settings);
            });
            return;
        }

        greeting = typeof settings.greeting === 'string' && settings.greeting
                   ? settings.greeting : GREETING;

        ui = { host: el('div'), open: false, visible: true, bubble: false };
        ui.host.id = 'civchat-root';
        root = ui.host.attachShadow ? ui.host.attachShadow({ mode: 'open' })
                                    : ui.host;

        ui.wrap = el('div', 'w', 'widget');
        ui.panel = el('div', 'p', 'panel');
        ui.panel.setAttribute('role', 'dialog');
        ui.panel.setAttribute('aria-label', 'Chat');
        head = el('div', 'h', null, 'Chat with us');
        ui.close = el('button', 'x', 'close');
        ui.close.type = 'button';
        ui.close.setAttribute('aria-label', 'Close chat');
        ui.close.appendChild(icon(ICON_CLOSE));
        head.appendChild(ui.close);
        ui.body = el('div', 'b', 'messages');
        ui.body.appendChild(el('div', 'm', 'message', greeting));
        ui.panel.appendChild(head);
        ui.panel.appendChild(ui.body);

        ui.greeting = el('button', 'g', 'greeting', greeting);
        ui.greeting.type = 'button';

        ui.launcher = el('button', 'l', 'launcher');
        ui.launcher.type = 'button';
        ui.iconChat = icon(ICON_CHAT);
        ui.iconClose = icon(ICON_CLOSE);
        ui.launcher.appendChild(ui.iconChat);
        ui.launcher.appendChild(ui.iconClose);

        ui.wrap.appendChild(ui.panel);
        ui.wrap.appendChild(ui.greeting);
        ui.wrap.appendChild(ui.launcher);

        root.appendChild(el('style', null, null, CSS));
        root.appendChild(ui.wrap);

        listen(ui.launcher, 'click', toggle);
        listen(ui.greeting, 'click', open);
        listen(ui.close, 'click', close);
        listen(ui.wrap, 'keydown', function (e) {
            if (e.key === 'Escape' || e.keyCode === 27) {
                close();
                ui.launcher.focus();
            }
        });

        switch (pickState(settings)) {
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

    function render() {
        var ui = S.ui;

        ui.wrap.classList.toggle('off', !ui.visible);
        ui.panel.classList.toggle('off', !ui.open);
        ui.greeting.classList.toggle('off', ui.open || !ui.bubble);
        ui.iconChat.classList.toggle('off', ui.open);
        ui.iconClose.classList.toggle('off', !ui.open);
        ui.launcher.setAttribute('aria-expanded', ui.open ? 'true' : 'false');
        ui.launcher.setAttribute('aria-label', ui.open ? 'Close chat'
                                                       : 'Open chat');
    }

    function open() {
        var ui = S.ui;

        if (!ui) {
            return;
        }
        ui.visible = true;
        ui.bubble = false;      /* the greeting has been read */
        if (ui.open) {
            render();
            return;
        }
        ui.open = true;
        render();
        fire('onOpen');
    }

    function close() {
        var ui = S.ui;

        if (!ui || !ui.open) {
            return;
        }
        ui.open = false;
        render();
        fire('onClose');
    }

    function toggle() {
        if (S.ui && S.ui.open) {
            close();
        } else {
            open();
        }
    }

    function show(visible) {
        if (S.ui) {
            S.ui.visible = visible;
            render();
        }
    }

    function unmount() {
        var host = S.ui && S.ui.host;

        if (host && host.parentNode) {
            host.parentNode.removeChild(host);
        }
        S.ui = null;
    }


    /* 4. the public API ---------------------------------------------- */

    var WIDGET_COMMANDS = {
        'widget.show': function () { show(true); },
        'widget.hide': function () { show(false); },
        'widget.open': open,
        'widget.close': close,
        'widget.toggle': toggle
    };

    function pageHit(data) {
        request('page_hit', makeBody(data));
    }

    function resetAuth(data) {
        request('reset_auth', makeBody(data));
    }

    function command(name, data) {
        var body;

        if (typeof name === 'string' && name.indexOf('event.') === 0) {
            body = makeBody(null);
            body.event = name.slice(6);
            body.attributes = data && typeof data === 'object' ? data : {};
            request('event', body);

        } else if (name === 'product_event') {
            request('product_event', makeBody(data));

        } else if (name === 'client.update') {
            request('update', makeBody(data));

        } else if (WIDGET_COMMANDS.hasOwnProperty(name)) {
            WIDGET_COMMANDS[name]();

        } else {
            logWarn('unknown command "' + name + '"');
        }
    }

    /* Public entry points: dead after destroy; before init answered a
     * call waits (to carry init's key), then runs in call order. */
    function api(fn) {
        return function () {
            var args = arguments;

            if (S.destroyed) {
                logWarn('widget destroyed');
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
                logError('queued call failed: ' + e);
            }
        }
    }

    function destroy() {
        var l;

        if (S.destroyed) {
            logWarn('widget destroyed');
            return;
        }
        S.destroyed = true;
        UE.isReady = false;
        clearTimeout(S.timer);
        while ((l = S.listeners.pop())) {
            l[0].removeEventListener(l[1], l[2], false);
        }
        unmount();
        S.waiting = [];
    }

    /* Another library may own window.UE already: add to it, never replace. */
    var UE = window.UE;

    if (!UE || (typeof UE !== 'object' && !isFn(UE))) {
        UE = window.UE = {};
    }

    var stub = window.userengage;

    UE.isReady = false;
    UE.pageHit = api(pageHit);
    UE.resetAuth = api(resetAuth);
    UE.destroy = destroy;      /* acts at once, even before init */
    window.userengage = api(command);

    /* Calls made through the snippet's stub before this script loaded. */
    (function () {
        var q = stub && stub.q, i;

        for (i = 0; q && i < q.length; i++) {
            window.userengage.apply(null, q[i]);
        }
    }());


    /* 5. start-up ---------------------------------------------------- */

    function init() {
        request('init', makeBody(config()), function (data) {
            S.settled = true;
            if (data) {
                mount(data.widget && typeof data.widget === 'object' ?
                      data.widget : {});
                UE.isReady = true;
            }
            replay();
            if (data && !S.loadFired) {
                S.loadFired = true;
                fire('onLoad');
            }
        });
    }

    /* window.civchat may be defined after this script ran: wait a while. */
    function start() {
        var waited = 0, sinceLoad = 0;

        function check() {
            var c = window.civchat;

            if (S.destroyed) {
                return;
            }
            if (c && typeof c === 'object' && c.apiKey) {
                init();
                return;
            }
            if (waited >= WAIT_MS || sinceLoad >= WAIT_AFTER_LOAD) {
                logError('window.civchat.apiKey is required');
                return;
            }
            waited += 100;
            if (document.readyState === 'complete') {
                sinceLoad += 100;
            }
            S.timer = setTimeout(check, 100);
        }

        listen(window, 'pagehide', function () { onHide(true); });
        listen(window, 'pageshow', onShow);
        listen(document, 'visibilitychange', function () {
            if (document.visibilityState === 'hidden') {
                onHide(false);
            } else {
                onShow();
            }
        });

        check();
    }

    start();

}(window, document));
