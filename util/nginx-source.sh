#!/bin/sh
# Unpacks the full source of the nginx Debian ships (1.22.1) into DIR,
# fetched from Debian's archive with "apt-get source".  Used for the
# sanitizer build (make test-asan), which needs nginx itself rebuilt.
#
#   util/nginx-source.sh DIR     prints the source tree's path

set -e

dir=$1
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

tree=$(ls -d "$dir"/nginx-1.*/ 2>/dev/null | head -n 1)
if [ -n "$tree" ] && [ -x "$tree/configure" ]; then
    echo "${tree%/}"
    exit 0
fi

list=$dir/deb-src.sources
cat > "$list" <<END
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
END

apt_opts="-o Dir::Etc::sourcelist=$list -o Dir::Etc::sourceparts=-
          -o Dir::State::Lists=$dir/lists -o APT::Get::List-Cleanup=0"

mkdir -p "$dir/lists/partial"
apt-get update -qq $apt_opts >&2
(cd "$dir" && apt-get source --download-only -qq $apt_opts nginx >&2)

tar -xzf "$dir"/nginx_*.orig.tar.gz -C "$dir"

tree=$(ls -d "$dir"/nginx-1.*/ | head -n 1)
echo "${tree%/}"
