-- civchat events in ClickHouse (works on 18.16, Debian 12's package, and
-- on current releases).  One row per event line, every field of the
-- envelope a column (README "Events").
--
--   clickhouse-client --multiquery < schema/clickhouse.sql
--
-- Retries can deliver a batch twice; each event's `id` is unique, and the
-- ReplacingMergeTree keeps one row per (site, ts, id) when parts merge.
-- Query with FINAL (or count DISTINCT id) to see each event exactly once:
--
--   SELECT count() FROM civchat.events FINAL WHERE type = 'page_view';

CREATE DATABASE IF NOT EXISTS civchat;

CREATE TABLE IF NOT EXISTS civchat.events
(
    id          FixedString(32),
    ts          UInt64,
    site        String,
    type        String,
    name        String,
    user_key    String,
    user_id     String,
    email       String,
    url         String,
    referrer    String,
    title       String,
    ip          String,
    country     String,
    region      String,
    city        String,
    user_agent  String,
    attrs       String,
    time        DateTime MATERIALIZED toDateTime(intDiv(ts, 1000))
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (site, ts, id);
