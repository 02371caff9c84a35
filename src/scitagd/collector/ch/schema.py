# SPDX-License-Identifier: Apache-2.0
"""ClickHouse schema: DDL for one node or a cluster, and the schema version check.

Only what ClickHouse 18.16 (Debian 12) and current releases (chdb 26.x) both accept: MergeTree
family with the new syntax, PARTITION BY toYYYYMMDD(..), materialized views TO a table,
AggregateFunction(max|argMin, ..) with -State/-Merge, FixedString(16) addresses, Enum8. No TTL,
LowCardinality, DateTime64, CODEC, skip indexes or query parameters.

Tables (all partitioned by the flow's start day, so retention drops whole flows with their
traffic, and a day's traffic can be rebuilt and swapped in atomically):

  fireflies       raw, append-only, duplicates kept (they are harmless downstream)
  flows           AggregatingMergeTree fed by flows_mv: one row per flow after merges; only
                  order-free, duplicate-free aggregates (max, argMin on a total order)
  flows_host      the numbers of `flows`, once per end of the flow, sorted by that address
                  (flows_host_mv): a host's flows are an index range, not a scan of every flow
                  of the period; no app/reporter (string states double the view's cost)
  dirty           start day -> latest insert time (fed by dirty_mv): which days to rebuild
  traffic_minute  SummingMergeTree: bytes and flows started per minute per experiment/activity
  traffic_hour    the same per hour
  pairs_day       bytes and flows per day per host pair and experiment/activity
  pairs_total_day the same over all experiments (5x fewer rows: the dashboard's top pairs); both
                  carry `pair` = cityHash64(src, dst): grouping by 8 bytes instead of 32 makes the
                  top pairs of a week 2.5x quicker (bench/clickhouse.py)
  rebuilds        when each day was last rebuilt and how (ReplacingMergeTree, read with argMax)
  link_traffic    router flow exports per minute per link and tag (SummingMergeTree: rows are
  link_traffic_hour  deltas), and per hour; fed by one INSERT into link_in (Null) through views
  link_paths      where reported flows were seen (link_paths_in, Null, through a view)
  pins            time ranges exempt from retention (`collector import --keep`)
  schema_version  one row per applied version

The traffic tables are not fed by materialized views: the increase of a running total depends
on the flow's other fireflies, which may arrive later or at another receiver, and a sum cannot
ignore duplicates. They are rebuilt per start day from `fireflies` (ch/rebuild.py).
"""

from __future__ import annotations

from typing import List, Optional

SCHEMA_VERSION = 2
FIREFLY_TABLES = ("fireflies", "flows", "flows_host", "dirty", "traffic_minute", "traffic_hour", "pairs_day",
                  "pairs_total_day", "rebuilds")
LINK_TABLES = ("link_traffic", "link_traffic_hour", "link_paths")
TABLES = FIREFLY_TABLES + LINK_TABLES
# Every one of them is partitioned by day (YYYYMMDD): the flow's start day, a link row's minute.
DAY_TABLES = TABLES
REBUILT = ("traffic_minute", "traffic_hour", "pairs_day", "pairs_total_day")

FLOW_KEY = "start, src, dst, sport, dport, proto, start_frac, exp, act"

_LINK = """
  bucket DateTime, exporter String, domain Int64, iface Int64, direction Int8, family UInt8, tagged UInt8,
  exp Int32, act Int32, bytes UInt64, packets UInt64"""
LINK_KEY = "bucket, exporter, domain, iface, direction, family, tagged, exp, act"
PATH_KEY = "src, dst, sport, dport, proto, bucket, exporter, domain, iface, direction, exp, act"

_COLUMNS = {
    "fireflies": """
  start DateTime, start_frac UInt32,
  proto Enum8('tcp' = 6, 'udp' = 17),
  src FixedString(16), sport UInt16, dst FixedString(16), dport UInt16,
  exp UInt32, act UInt32,
  state Enum8('start' = 1, 'ongoing' = 2, 'end' = 3),
  t UInt64,
  sent UInt64, received UInt64,
  app String, reporter String""",
    "flows": """
  start DateTime, start_frac UInt32,
  proto Enum8('tcp' = 6, 'udp' = 17),
  src FixedString(16), sport UInt16, dst FixedString(16), dport UInt16,
  exp UInt32, act UInt32,
  sent AggregateFunction(max, UInt64), received AggregateFunction(max, UInt64),
  end_t AggregateFunction(max, UInt64), last_t AggregateFunction(max, UInt64),
  app AggregateFunction(argMin, String, Tuple(UInt8, UInt64, String)),
  reporter AggregateFunction(argMin, String, Tuple(UInt8, UInt64, String))""",
    "flows_host": "\n  host FixedString(16),",
    "dirty": """
  day Date, ingested AggregateFunction(max, DateTime)""",
    "traffic_minute": """
  day Date, bucket DateTime, exp UInt32, act UInt32, bytes UInt64, flows UInt64""",
    "traffic_hour": """
  day Date, bucket DateTime, exp UInt32, act UInt32, bytes UInt64, flows UInt64""",
    "pairs_day": """
  day Date, bucket DateTime, exp UInt32, act UInt32, pair UInt64, src FixedString(16), dst FixedString(16),
  bytes UInt64, flows UInt64""",
    "pairs_total_day": """
  day Date, bucket DateTime, pair UInt64, src FixedString(16), dst FixedString(16), bytes UInt64, flows UInt64""",
    "rebuilds": """
  day Date, built DateTime, method Enum8('point' = 1, 'spread' = 2), seconds Float32""",
    "link_traffic": _LINK,
    "link_traffic_hour": _LINK,
    "link_paths": """
  src String, dst String, sport UInt16, dport UInt16, proto UInt8, bucket DateTime, exporter String,
  domain Int64, iface Int64, direction Int8, exp Int32, act Int32, bytes UInt64, packets UInt64""",
    "link_in": _LINK.replace("bucket DateTime", "bucket UInt32"),
    "link_paths_in": """
  src String, dst String, sport UInt16, dport UInt16, proto UInt8, bucket UInt32, exporter String,
  domain Int64, iface Int64, direction Int8, exp Int32, act Int32, bytes UInt64, packets UInt64""",
}

_COLUMNS["flows_host"] += _COLUMNS["flows"].split("\n  app AggregateFunction")[0].rstrip(",")

# engine name (single node), partition expression, sort key
_LAYOUT = {
    "fireflies": ("MergeTree()", "start", f"{FLOW_KEY}, t"),
    "flows": ("AggregatingMergeTree()", "start", FLOW_KEY),
    "flows_host": ("AggregatingMergeTree()", "start", f"host, {FLOW_KEY}"),
    "dirty": ("AggregatingMergeTree()", "day", "day"),
    "traffic_minute": ("SummingMergeTree()", "day", "bucket, exp, act"),
    "traffic_hour": ("SummingMergeTree()", "day", "bucket, exp, act"),
    "pairs_day": ("SummingMergeTree()", "day", "bucket, exp, act, pair, src, dst"),
    "pairs_total_day": ("SummingMergeTree()", "day", "bucket, pair, src, dst"),
    "rebuilds": ("ReplacingMergeTree(built)", "day", "day"),
    "link_traffic": ("SummingMergeTree()", "bucket", LINK_KEY),
    "link_traffic_hour": ("SummingMergeTree()", "bucket", LINK_KEY),
    "link_paths": ("SummingMergeTree()", "bucket", PATH_KEY),
}

# Flow rows are looked up by key (the flow list merges only the flows it returns): granules of
# 1024 rows instead of 8192 read 8x fewer aggregate states per lookup.
_SETTINGS = {"flows": " SETTINGS index_granularity = 1024", "flows_host": " SETTINGS index_granularity = 1024"}

_FLOWS_MV = f"""SELECT {{host}}{FLOW_KEY},
  maxState(sent) AS sent, maxState(received) AS received,
  maxState(if(state = 'end', t, toUInt64(0))) AS end_t, maxState(t) AS last_t{{texts}}
FROM {{src}}{{join}} GROUP BY {{host}}{FLOW_KEY}"""
_TEXTS = """,
  argMinState(app, (app = '', t, app)) AS app,
  argMinState(reporter, (reporter = '', t, reporter)) AS reporter"""
_DIRTY_MV = "SELECT toDate(start) AS day, maxState(now()) AS ingested FROM {src} GROUP BY day"


_LINK_MV = """SELECT toDateTime(intDiv(bucket, {w}) * {w}) AS bucket, exporter, domain, iface, direction, family,
  tagged, exp, act, bytes, packets FROM {src}"""
_PATH_MV = """SELECT src, dst, sport, dport, proto, toDateTime(intDiv(bucket, 60) * 60) AS bucket, exporter, domain,
  iface, direction, exp, act, bytes, packets FROM {src}"""


def ddl(database: str = "scitagd", cluster: Optional[str] = None, replicated: bool = True) -> List[str]:
    """CREATE statements, in order. With `cluster`: `<table>_local` tables (Replicated* unless
    `replicated` is False, for a test without ZooKeeper) on every node, and Distributed tables
    with the plain names over them, sharded by flow so that a flow's fireflies, its row in
    `flows` and its traffic live on one shard and each shard rebuilds its own days. Run the
    cluster DDL on every node (18.16 has no usable ON CLUSTER without ZooKeeper either)."""
    db = _ident(database)
    sfx = "_local" if cluster else ""
    out = [f"CREATE DATABASE IF NOT EXISTS {db}",
           f"CREATE TABLE IF NOT EXISTS {db}.schema_version (version UInt32, applied DateTime) "
           "ENGINE = MergeTree() ORDER BY version"]

    def engine_of(name: str, engine: str, zk_name: Optional[str] = None) -> str:
        if not (cluster and replicated):
            return engine
        kind, _, args = engine.partition("(")
        args = args.rstrip(")")
        zk = f"'/clickhouse/tables/{zk_name or '{shard}'}/{database}/{name}', '{{replica}}'"
        return f"Replicated{kind}({zk}{', ' + args if args else ''})"

    for name in TABLES:
        engine, part, order = _LAYOUT[name]
        out.append(f"CREATE TABLE IF NOT EXISTS {db}.{name}{sfx} ({_COLUMNS[name]}\n) ENGINE = "
                   f"{engine_of(name, engine)} PARTITION BY toYYYYMMDD({part}) ORDER BY ({order})"
                   f"{_SETTINGS.get(name, '')}")
    # pins: a handful of rows every node's retention must see (on a cluster one replicated table
    # shared by all shards)
    out.append(f"CREATE TABLE IF NOT EXISTS {db}.pins (lo Float64, hi Float64, note String) ENGINE = "
               f"{engine_of('pins', 'MergeTree()', 'all')} ORDER BY lo")
    for name in ("link_in", "link_paths_in"):
        out.append(f"CREATE TABLE IF NOT EXISTS {db}.{name}{sfx} ({_COLUMNS[name]}\n) ENGINE = Null")
    out.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.flows_mv TO {db}.flows{sfx} AS "
               + _FLOWS_MV.format(src=f"{db}.fireflies{sfx}", host="", join="", texts=_TEXTS))
    out.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.flows_host_mv TO {db}.flows_host{sfx} AS "
               + _FLOWS_MV.format(src=f"{db}.fireflies{sfx}", host="host, ", join=" ARRAY JOIN [src, dst] AS host",
                                  texts=""))
    out.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.dirty_mv TO {db}.dirty{sfx} AS "
               + _DIRTY_MV.format(src=f"{db}.fireflies{sfx}"))
    for view, table, width in (("link_minute_mv", "link_traffic", 60), ("link_hour_mv", "link_traffic_hour", 3600)):
        out.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view} TO {db}.{table}{sfx} AS "
                   + _LINK_MV.format(w=width, src=f"{db}.link_in{sfx}"))
    out.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.link_paths_mv TO {db}.link_paths{sfx} AS "
               + _PATH_MV.format(src=f"{db}.link_paths_in{sfx}"))
    if cluster:
        c = _ident(cluster)
        for name in (*TABLES, "link_in", "link_paths_in"):
            # By flow: the flow key's addresses, ports and start. Other tables are written
            # shard-locally (MVs, rebuilds), never through their Distributed table.
            shard = "cityHash64(src, dst, sport, dport, start)" if name == "fireflies" else "rand()"
            out.append(f"CREATE TABLE IF NOT EXISTS {db}.{name} AS {db}.{name}_local "
                       f"ENGINE = Distributed({c}, {db}, {name}_local, {shard})")
    out.append(f"INSERT INTO {db}.schema_version SELECT {SCHEMA_VERSION}, now() FROM system.one "
               f"WHERE (SELECT count() FROM {db}.schema_version) = 0")
    return out


def plain_table(db: str, name: str, as_name: str) -> str:
    """`name`'s columns and single-node engine under another name: the rebuild's staging tables
    (never `CREATE .. AS` a Replicated table, which would join its replication path)."""
    engine, part, order = _LAYOUT[name]
    return (f"CREATE TABLE IF NOT EXISTS {db}.{as_name} ({_COLUMNS[name]}\n) ENGINE = {engine} "
            f"PARTITION BY toYYYYMMDD({part}) ORDER BY ({order})")


def _ident(name: str) -> str:
    if not name or not (name[0].isalpha() or name[0] == "_") or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"{name!r}: expected a ClickHouse identifier (letters, digits, _)")
    return name


def render(database: str = "scitagd", cluster: Optional[str] = None) -> str:
    """`scitagd collector schema [--cluster NAME]`: the DDL as a script."""
    head = [f"-- scitagd collector schema version {SCHEMA_VERSION}"
            + (f", cluster {cluster}: run on every node" if cluster else "")]
    return "\n".join(head + [s + ";\n" for s in ddl(database, cluster)])


