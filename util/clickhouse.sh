#!/bin/sh
# Starts a private ClickHouse server for the demo (make run STORE=clickhouse):
#   util/clickhouse.sh start DIR HTTP_PORT TCP_PORT   (prints nothing, waits)
#   util/clickhouse.sh stop DIR
# It listens on 127.0.0.1 only, keeps its data in DIR and loads
# schema/clickhouse.sql.

set -e

top=$(cd "$(dirname "$0")/.." && pwd)
cmd=$1 dir=$2

case "$cmd" in
start)
    http=$3 tcp=$4
    mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
    cp /etc/clickhouse-server/users.xml "$dir/users.xml"

    cat > "$dir/config.xml" <<END
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/server.log</log>
        <errorlog>$dir/server.err.log</errorlog>
        <console>0</console>
    </logger>
    <http_port>$http</http_port>
    <tcp_port>$tcp</tcp_port>
    <interserver_http_port>$((tcp + 1))</interserver_http_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>5368709</mark_cache_size>
</yandex>
END

    clickhouse-server --config-file="$dir/config.xml" \
        > "$dir/stdout.log" 2>&1 &
    echo $! > "$dir/clickhouse.pid"

    for i in $(seq 1 100); do
        if curl -s "http://127.0.0.1:$http/ping" >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done

    clickhouse-client --host 127.0.0.1 --port "$tcp" --multiquery < "$top/schema/clickhouse.sql"
    ;;

stop)
    if [ -f "$dir/clickhouse.pid" ]; then
        kill "$(cat "$dir/clickhouse.pid")" 2>/dev/null || true
    fi
    ;;

*)
    echo "usage: $0 start DIR HTTP_PORT TCP_PORT | stop DIR" >&2
    exit 1
    ;;
esac
