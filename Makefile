# civchat: build, demo, tests.  See README.md.

NGINX_SRC ?= /usr/share/nginx/src
BUILD     ?= $(CURDIR)/build
MODULE    := $(BUILD)/ngx_http_civchat_module.so
WIDGET_H  := src/ngx_http_civchat_widget_js.h
SOURCES   := $(wildcard src/*.c src/*.h) config

export NGINX_SRC BUILD

.PHONY: all deps run test test-style clean

all: $(MODULE)

$(WIDGET_H): widget/widget.js util/gen-widget.pl
	perl util/gen-widget.pl widget/widget.js $@

$(MODULE): $(SOURCES) $(WIDGET_H) util/build.sh
	sh util/build.sh

# Installs every Debian package the build, the demo and the tests need.
deps:
	sh util/deps.sh

run: deps all
	sh util/run.sh

test: deps all t/browser/node_modules/.package-lock.json
	prove -r t/

# playwright-core for the browser tests (t/browser.t), as locked
t/browser/node_modules/.package-lock.json: t/browser/package-lock.json
	cd t/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null

clean:
	rm -rf $(BUILD)
