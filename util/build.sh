#!/bin/sh
# Configures a copy of an nginx source tree with this module and builds
# the dynamic module (and, for a full upstream tree, nginx itself).
#
#   NGINX_SRC  nginx tree (default: Debian's nginx-dev in /usr/share/nginx/src)
#   BUILD      build directory (default: build)
#   CC_OPT, LD_OPT  compiler / linker flags (sanitizer builds; for Debian's
#              tree CC_OPT defaults to Debian's own build flags)

set -e

top=$(cd "$(dirname "$0")/.." && pwd)
src=${NGINX_SRC:-/usr/share/nginx/src}
build=${BUILD:-$top/build}
tree=$build/nginx

if [ ! -x "$src/configure" ]; then
    echo "build: no nginx source tree at $src (run 'make deps')" >&2
    exit 1
fi

# Debian's nginx-dev tree: the module is compiled as Debian compiles the
# packaged nginx and its modules (dpkg-buildflags), not with nginx's
# default -O
if [ -f "$src/conf_flags" ] && [ -z "${CC_OPT+set}" ]; then
    CC_OPT="-g -O2 -fstack-protector-strong -Wformat -Werror=format-security"
    CC_OPT="$CC_OPT -D_FORTIFY_SOURCE=2"
fi

if [ -f "$src/conf_flags" ]; then
    # Debian's nginx-dev: the flags the packaged nginx was built with,
    # so the module loads into /usr/sbin/nginx.
    flags=$(sed -e 's/^NGX_CONF_FLAGS=(//' -e 's/)$//' "$src/conf_flags")
    full=no
else
    # a full nginx (the sanitizer and valgrind builds): what the tests
    # need, HTTP/2 for t/live_http2.t among them
    flags="--with-compat --with-debug --with-http_realip_module
           --with-http_ssl_module --with-http_stub_status_module
           --with-http_v2_module --with-threads"
    full=yes
fi

stamp="$src|${CC_OPT:-}|${LD_OPT:-}|$(cksum < "$top/config")|$flags"

if [ ! -f "$tree/objs/Makefile" ] || [ "$(cat "$build/stamp" 2>/dev/null)" != "$stamp" ]
then
    rm -rf "$tree"
    mkdir -p "$build"
    cp -a "$src" "$tree"

    (cd "$tree" && eval ./configure $flags \
        ${CC_OPT:+"--with-cc-opt='$CC_OPT'"} \
        ${LD_OPT:+"--with-ld-opt='$LD_OPT'"} \
        --add-dynamic-module="$top" > "$build/configure.log" 2>&1) || {
        tail -n 30 "$build/configure.log" >&2
        exit 1
    }

    echo "$full" > "$build/full"
    echo "$stamp" > "$build/stamp"
fi

if [ "$(cat "$build/full")" = yes ]; then
    make -C "$tree" -f objs/Makefile -j2 binary modules
else
    make -C "$tree" -f objs/Makefile -j2 modules
fi

cp "$tree/objs/ngx_http_civchat_module.so" "$build/.module.tmp"

# renamed, not overwritten: a running nginx keeps its mapping intact
mv -f "$build/.module.tmp" "$build/ngx_http_civchat_module.so"
