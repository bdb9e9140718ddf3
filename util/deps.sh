#!/bin/sh
# Installs the Debian packages civchat needs to build, run its demo and
# run its tests, when any is missing.  Needs root (or sudo) for apt-get.

set -e

packages="build-essential nginx nginx-dev libjansson-dev libmaxminddb-dev
          libmaxmind-db-writer-perl perl curl chromium
          clickhouse-server clickhouse-client wrk clang valgrind
          redis-server redis-tools"

missing=
for p in $packages; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
         | grep -q 'install ok installed'
    then
        missing="$missing $p"
    fi
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

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends $missing

# Debian starts the packaged nginx (port 80), ClickHouse (8123, 9000,
# 9009) and Redis (6379) as services; civchat's demo and tests run their
# own.
if command -v service >/dev/null 2>&1; then
    $sudo service nginx stop >/dev/null 2>&1 || true
    $sudo service clickhouse-server stop >/dev/null 2>&1 || true
    $sudo service redis-server stop >/dev/null 2>&1 || true
fi
