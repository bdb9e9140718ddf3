#!/bin/sh
# Installs the Debian packages civchat needs to build, package, run its
# demo and run its tests, when any is missing.  Needs root (or sudo) for
# apt-get.
#
# System services: nginx, clickhouse-server and redis-server are among
# the packages (the tests run their own servers, not these).  A service whose package
# was already installed is left exactly as it was, running or not,
# enabled at boot or not.  One that this script installs (Debian starts it
# and enables it at boot on install) is stopped and disabled again, so
# that the machine is as it was before, and the script says so.

set -e

packages="build-essential nginx nginx-dev libjansson-dev libmaxminddb-dev
          zlib1g-dev libbrotli-dev esbuild brotli
          libmaxmind-db-writer-perl libio-socket-ssl-perl openssl perl curl
          chromium clickhouse-server clickhouse-client wrk clang valgrind
          debhelper dpkg-dev redis-server redis-tools"

services="nginx clickhouse-server redis-server"

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null \
        | grep -q 'install ok installed'
}

missing=
for p in $packages; do
    installed "$p" || missing="$missing $p"
done

# the browser tests run playwright-core under Node.js
if ! command -v npm >/dev/null 2>&1; then
    missing="$missing nodejs npm"
fi

[ -z "$missing" ] && exit 0

echo "deps: installing$missing"

sudo=
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi

# the services whose packages come now
new=
for s in $services; do
    case " $missing " in
    *" $s "*) new="$new $s" ;;
    esac
done

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends $missing

for s in $new; do
    $sudo service "$s" stop >/dev/null 2>&1 || true
    if command -v systemctl >/dev/null 2>&1; then
        $sudo systemctl disable --quiet "$s" >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        $sudo update-rc.d "$s" disable >/dev/null 2>&1 || true
    fi
    echo "deps: $s was installed now: its service is stopped and not" \
         "started at boot, as before (civchat's demo and tests run their" \
         "own); 'systemctl enable --now $s' turns it on"
done
