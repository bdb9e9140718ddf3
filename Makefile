# civchat: build, demo, tests.  See README.md.

NGINX_SRC ?= /usr/share/nginx/src
BUILD     ?= $(CURDIR)/build
MODULE    := $(BUILD)/ngx_http_civchat_module.so
WIDGET_H  := src/ngx_http_civchat_widget_js.h
SOURCES   := $(wildcard src/*.c src/*.h) config

export NGINX_SRC BUILD

.PHONY: all deps run test test-asan test-valgrind deb clean

all: $(MODULE)

# widget.js minified (esbuild) into widget/widget.min.js and its source
# map, and compiled into the module as that header; all three committed
$(WIDGET_H): widget/widget.js util/gen-widget.pl
	perl util/gen-widget.pl widget/widget.js $@ widget/widget.min.js

$(MODULE): $(SOURCES) $(WIDGET_H) util/build.sh
	sh util/build.sh

# Installs every Debian package the build, the demo and the tests need.
deps:
	sh util/deps.sh

run: deps all
	sh util/run.sh

test: deps all t/browser/node_modules/.package-lock.json
	prove -r t/

# The Debian package libnginx-mod-http-civchat (debian/), built with
# debhelper from a copy of the sources in build/deb/ (dpkg-buildpackage
# writes beside its source tree) and none of this make's variables; the
# .deb lands in build/deb/.
DEB_DIR := $(BUILD)/deb

deb: deps
	rm -rf $(DEB_DIR)
	mkdir -p $(DEB_DIR)/civchat
	cp -a config src util widget debian conf.example README.md \
	    $(DEB_DIR)/civchat/
	cd $(DEB_DIR)/civchat && env -u MAKEFLAGS -u MAKELEVEL -u BUILD \
	    -u NGINX_SRC dpkg-buildpackage -b -us -uc \
	    >$(DEB_DIR)/build.log 2>&1 \
	    || { tail -n 30 $(DEB_DIR)/build.log; exit 1; }
	@ls $(DEB_DIR)/*.deb

# playwright-core for the browser tests (t/browser.t), as locked
t/browser/node_modules/.package-lock.json: t/browser/package-lock.json
	cd t/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null

# The module and nginx itself (Debian's 1.22.1 source, fetched with
# apt-get source) built with AddressSanitizer and UndefinedBehaviorSanitizer
# and every pool allocation a malloc of its own, then the whole suite.
# A sanitizer report lands in error.log, which fails the test.
ASAN_BUILD := $(BUILD)/asan
ASAN_CC    := -fsanitize=address,undefined \
              -fno-sanitize=nonnull-attribute,alignment \
              -fno-omit-frame-pointer -DNGX_DEBUG_PALLOC=1 -O1 -g
ASAN_LD    := -fsanitize=address,undefined

test-asan: deps $(WIDGET_H) t/browser/node_modules/.package-lock.json
	mkdir -p $(BUILD)
	NGINX_SRC=$$(sh util/nginx-source.sh $(BUILD)/nginx-source) \
	BUILD=$(ASAN_BUILD) CC_OPT="$(ASAN_CC)" LD_OPT="$(ASAN_LD)" \
	    sh util/build.sh >$(BUILD)/asan-build.log 2>&1 \
	    || { tail -n 30 $(BUILD)/asan-build.log; exit 1; }
	ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 \
	UBSAN_OPTIONS=print_stacktrace=1 \
	TEST_NGINX_BINARY=$(ASAN_BUILD)/nginx/objs/nginx \
	TEST_NGINX_MODULE=$(ASAN_BUILD)/ngx_http_civchat_module.so \
	    prove -r t/

# The files that run the module (all but browser.t and faults.t) with
# nginx under valgrind's memcheck: nginx (Debian's 1.22.1 source) and
# the module built with -O1 -g and every pool allocation a malloc of its
# own.  An invalid read, write or free or a use of an uninitialised value
# in any nginx process fails the test (the harness reads valgrind's
# logs); leaks are not looked for.
VALGRIND_BUILD := $(BUILD)/valgrind
VALGRIND_CC    := -O1 -g -fno-omit-frame-pointer -DNGX_DEBUG_PALLOC=1
VALGRIND_TESTS ?= t/endpoints.t t/identity.t t/attributes.t t/events.t \
                  t/bad_input.t t/cookie.t t/errors.t t/messy_data.t \
                  t/privacy.t t/variables.t t/visits.t t/widget.t \
                  t/live.t t/live_http2.t t/api.t t/api_import.t \
                  t/api_import_slices.t t/status.t t/status_zone.t t/zone.t \
                  t/store_file.t t/store_http.t t/store_http_errors.t \
                  t/store_http_outage.t t/store_http_reload.t \
                  t/store_http_slow.t t/store_http_idle.t \
                  t/concurrency.t t/stress.t \
                  t/geoip.t t/config.t t/fuzz_regressions.t \
                  t/redis.t t/redis_auth.t t/redis_faults.t \
                  t/redis_config.t t/redis_keepalive.t t/cluster.t \
                  t/cluster_faults.t t/live_cluster.t

test-valgrind: deps $(WIDGET_H)
	mkdir -p $(BUILD)
	NGINX_SRC=$$(sh util/nginx-source.sh $(BUILD)/nginx-source) \
	BUILD=$(VALGRIND_BUILD) CC_OPT="$(VALGRIND_CC)" \
	    sh util/build.sh >$(BUILD)/valgrind-build.log 2>&1 \
	    || { tail -n 30 $(BUILD)/valgrind-build.log; exit 1; }
	TEST_NGINX_VALGRIND=1 \
	TEST_NGINX_BINARY=$(VALGRIND_BUILD)/nginx/objs/nginx \
	TEST_NGINX_MODULE=$(VALGRIND_BUILD)/ngx_http_civchat_module.so \
	    prove $(VALGRIND_TESTS)

# The module against nginx's own baseline (page_hit, init, p.gif, zone
# bytes per profile), instructions per request counted by callgrind,
# visitors' latency on a worker during a 100 MB import, then page hits
# through nginx into a local ClickHouse against ClickHouse's own ingest
# rate for the same NDJSON, then page hits with and without saves of a
# 128m zone (bench/README.md); builds first.
.PHONY: bench
bench: deps all
	sh bench/run.sh
	sh bench/instructions.sh
	sh bench/import.sh
	sh bench/clickhouse.sh
	sh bench/save.sh

# libFuzzer targets for the parsers that see client bytes (fuzz/README.md):
# the reproducers of fixed bugs first, then FUZZ_SECONDS of fuzzing each.
FUZZ_SECONDS ?= 30

.PHONY: fuzz
fuzz: deps $(WIDGET_H)
	FUZZ_SECONDS=$(FUZZ_SECONDS) sh fuzz/run.sh

clean:
	rm -rf $(BUILD)
