#!/bin/sh
# Builds the libFuzzer targets fuzz/fuzz_*.c (fuzz/README.md).
#
# nginx 1.22.1 (util/nginx-source.sh) is configured with this module as a
# static module and built with clang, ASan, UBSan and libFuzzer's coverage
# instrumentation; every object but main() goes into one archive, which
# each target is linked against.
#
#   fuzz/build.sh [name ...]     builds build/fuzz/fuzz_<name> (default: all)
#
#   FUZZ_BUILD   build directory (default: build/fuzz)
#   FUZZ_NGINX_SRC  a full nginx source tree (default: Debian's 1.22.1,
#                fetched by util/nginx-source.sh into build/nginx-source)
#   CC           clang (default: clang)

set -e

top=$(cd "$(dirname "$0")/.." && pwd)
build=${FUZZ_BUILD:-$top/build/fuzz}
cc=${CC:-clang}

case "$cc" in
    *clang*) ;;
    *) cc=clang ;;
esac

san="-fsanitize=address,undefined -fno-sanitize-recover=all
     -fno-sanitize=nonnull-attribute"
cflags="-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $san"
cflags=$(echo $cflags)

# not NGINX_SRC: the Makefile sets that to Debian's nginx-dev headers
src=$FUZZ_NGINX_SRC

if [ -z "$src" ]; then
    mkdir -p "$top/build"
    src=$(sh "$top/util/nginx-source.sh" "$top/build/nginx-source")
fi

tree=$build/nginx
stamp="$src|$cc|$cflags|$(cksum < "$top/config")"

mkdir -p "$build"

if [ ! -f "$tree/objs/Makefile" ] \
   || [ "$(cat "$build/stamp" 2>/dev/null)" != "$stamp" ]
then
    echo "fuzz: configuring nginx in $tree" >&2
    rm -rf "$tree"
    cp -a "$src" "$tree"

    (cd "$tree" && ./configure --with-cc="$cc" --with-cc-opt="$cflags" \
         --with-ld-opt="-fsanitize=address,undefined" \
         --add-module="$top" > "$build/configure.log" 2>&1) || {
        tail -n 30 "$build/configure.log" >&2
        exit 1
    }

    echo "$stamp" > "$build/stamp"
fi

echo "fuzz: building nginx and the module" >&2

make -C "$tree" -f objs/Makefile -j2 objs/nginx > "$build/make.log" 2>&1 || {
    tail -n 30 "$build/make.log" >&2
    exit 1
}

# the objects of nginx, main() renamed so that libFuzzer's is used

lib=$build/libnginx.a

if [ ! -f "$lib" ] || [ -n "$(find "$tree/objs" -name '*.o' -newer "$lib")" ]
then
    objcopy --redefine-sym main=ngx_fuzz_nginx_main \
        "$tree/objs/src/core/nginx.o" "$build/nginx_main.o"

    rm -f "$lib"
    (cd "$tree" && find objs -name '*.o' ! -path objs/src/core/nginx.o \
                      | sort | xargs ar rcs "$lib")
    ar rs "$lib" "$build/nginx_main.o"
fi

# the libraries nginx is linked with (jansson, libmaxminddb, ...)

libs=$(sed -n '/$(LINK) -o objs\/nginx/,/^$/p' "$tree/objs/Makefile" \
       | tr ' \t\\' '\n\n\n' | grep '^-l' | tr '\n' ' ')

incs="-I$tree/objs -I$tree/src/core -I$tree/src/event
      -I$tree/src/event/modules -I$tree/src/os/unix -I$tree/src/http
      -I$tree/src/http/modules -I$top/src -I$top/fuzz"

cc_fuzz="$cc $cflags -Wall -Wno-unused-parameter -Werror $incs"

if [ $# -eq 0 ]; then
    set -- $(cd "$top/fuzz" && ls fuzz_*.c | sed -e 's/^fuzz_//' -e 's/\.c$//')
fi

$cc_fuzz -c "$top/fuzz/common.c" -o "$build/common.o"

for name in "$@"; do
    echo "fuzz: building fuzz_$name" >&2
    $cc_fuzz -c "$top/fuzz/fuzz_$name.c" -o "$build/fuzz_$name.o"
    $cc -fsanitize=fuzzer,address,undefined -o "$build/fuzz_$name" \
        "$build/fuzz_$name.o" "$build/common.o" "$lib" $libs
done
