#!/bin/sh
# A private Redis Cluster on 127.0.0.1: three masters and three replicas
# on BASEPORT .. BASEPORT+5 (cluster bus ports BASEPORT+10000 ..), each
# node with its data (append-only file, nodes.conf) in DIR/node-PORT.
#
#   util/redis-cluster.sh start DIR BASEPORT [PASSWORD]
#       starts the six nodes (daemons), creates the cluster the first
#       time, and waits until every node says cluster_state:ok
#   util/redis-cluster.sh stop DIR
#       stops them (SIGTERM: the append-only files are written out), so
#       that the next start finds the same cluster and the same data
#
# With PASSWORD, the nodes require it (requirepass) and use it between
# themselves (masterauth).

set -e

cmd=$1 dir=$2

usage() {
    echo "usage: $0 start DIR BASEPORT [PASSWORD] | stop DIR" >&2
    exit 1
}

[ -n "$dir" ] || usage

case "$cmd" in
start)
    base=$3 password=$4
    [ -n "$base" ] || usage

    auth=
    if [ -n "$password" ]; then
        auth="-a $password --no-auth-warning"
    fi

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    nodes=

    for i in 0 1 2 3 4 5; do
        port=$((base + i))
        d=$dir/node-$port
        mkdir -p "$d"
        nodes="$nodes 127.0.0.1:$port"

        {
            echo "bind 127.0.0.1"
            echo "port $port"
            echo "cluster-port $((port + 10000))"
            echo "protected-mode no"
            echo "daemonize yes"
            echo "pidfile $d/redis.pid"
            echo "dir $d"
            echo "logfile $d/redis.log"
            echo "cluster-enabled yes"
            echo "cluster-config-file nodes.conf"
            echo "cluster-node-timeout 2000"
            echo "appendonly yes"
            echo "save \"\""
            if [ -n "$password" ]; then
                echo "requirepass $password"
                echo "masterauth $password"
            fi
        } > "$d/redis.conf"

        if [ -f "$d/redis.pid" ] && kill -0 "$(cat "$d/redis.pid")" 2>/dev/null
        then
            continue
        fi

        redis-server "$d/redis.conf"
    done

    for i in 0 1 2 3 4 5; do
        port=$((base + i))
        n=0
        until redis-cli $auth -p "$port" ping >/dev/null 2>&1; do
            n=$((n + 1))
            if [ $n -gt 100 ]; then
                echo "redis-cluster: node $port does not answer" >&2
                tail -n 20 "$dir/node-$port/redis.log" >&2
                exit 1
            fi
            sleep 0.1
        done
    done

    # a node that knows only itself: the cluster is not created yet
    known=$(redis-cli $auth -p "$base" cluster info \
            | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')

    if [ "$known" = 1 ]; then
        redis-cli $auth --cluster create $nodes --cluster-replicas 1 \
            --cluster-yes > "$dir/create.log" 2>&1 || {
            cat "$dir/create.log" >&2
            exit 1
        }
    fi

    n=0
    for i in 0 1 2 3 4 5; do
        port=$((base + i))
        until redis-cli $auth -p "$port" cluster info 2>/dev/null \
              | grep -q '^cluster_state:ok'
        do
            n=$((n + 1))
            if [ $n -gt 300 ]; then
                echo "redis-cluster: node $port: cluster not ok" >&2
                exit 1
            fi
            sleep 0.1
        done
    done
    ;;

stop)
    for pidfile in "$dir"/node-*/redis.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || continue
        n=0
        while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do
            n=$((n + 1))
            sleep 0.1
        done
    done
    ;;

*)
    usage
    ;;
esac
