/* Test helper, loaded before the snippet: records the widget's callbacks
 * in window.__log, and builds window.civchat from the page's query string
 * (apiKey, user_id, email, name, state, widget_state, plan, phone_number,
 * company).  External, so that the strict-CSP page can use it too. */
(function () {
    'use strict';

    var p = new URLSearchParams(location.search);

    window.__log = [];

    window.__rec = function (name) {
        return function (arg) {
            window.__log.push([name, arg === undefined ? null : arg]);
        };
    };

    window.__count = function (name) {
        return window.__log.filter(function (e) {
            return e[0] === name;
        }).length;
    };

    window.__callbacks = function (c) {
        ['onLoad', 'onOpen', 'onClose', 'onMessage', 'onPayloadReceived']
            .forEach(function (n) { c[n] = window.__rec(n); });
        return c;
    };

    window.__config = function () {
        var c = window.__callbacks({ apiKey: p.get('apiKey') || 'TESTKEY' });

        ['user_id', 'email', 'name', 'state', 'plan', 'phone_number']
            .forEach(function (k) {
                if (p.get(k) !== null) {
                    c[k] = p.get(k);
                }
            });
        if (p.get('widget_state')) {
            c.widget = { state: p.get('widget_state') };
        }
        if (p.get('company')) {
            c.company = { name: p.get('company'), employees: 32 };
        }
        return c;
    };
}());
