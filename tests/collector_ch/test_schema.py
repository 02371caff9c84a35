# SPDX-License-Identifier: Apache-2.0
"""Schema: the same DDL on 18.16 and chdb, the version check, the cluster layout (its
Distributed part, over a one-shard cluster of the test server), retention by partition."""

from __future__ import annotations

from typing import Any

import pytest

from scitagd.collector.attribution import POINT
from scitagd.collector.ch.client import ClickHouseError, HttpClient, query
from scitagd.collector.ch.rebuild import Rebuilder
from scitagd.collector.ch.rows import encode_all
from scitagd.collector.ch.schema import SCHEMA_VERSION, ddl, render
from scitagd.collector.ch.store import ClickHouseStore

from .data import DAY_US, expected, generated


def test_schema_created_once_and_version_checked(backend: Any, dbname: str) -> None:
    client, _ = backend
    with pytest.raises(ClickHouseError, match="no scitagd schema"):
        ClickHouseStore(client, dbname, create=False)
    ClickHouseStore(client, dbname)
    ClickHouseStore(client, dbname, create=False)  # present: checked, not created again
    assert query(client, f"SELECT count() FROM {dbname}.schema_version")[0][0] == 1
    client.execute(f"INSERT INTO {dbname}.schema_version VALUES ({SCHEMA_VERSION + 1}, now())")
    with pytest.raises(ClickHouseError, match=f"schema version {SCHEMA_VERSION + 1}, this scitagd needs"):
        ClickHouseStore(client, dbname)


def test_rendered_ddl() -> None:
    single = render("scitagd")
    assert "ENGINE = AggregatingMergeTree() PARTITION BY toYYYYMMDD(start)" in single
    assert "TTL" not in single and "FINAL" not in single and "LowCardinality" not in single
    cluster = render("scitagd", cluster="ren")
    assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/scitagd/flows', '{replica}')" in cluster
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/scitagd/rebuilds', '{replica}', built)" in cluster
    assert "ENGINE = Distributed(ren, scitagd, fireflies_local, cityHash64(src, dst, sport, dport, start))" in cluster
    with pytest.raises(ValueError, match="identifier"):
        ddl("bad-name; DROP")


def test_cluster_layout_distributed_part(ch_server: Any, dbname: str) -> None:
    """Local tables plain (Replicated needs ZooKeeper), the rest as in production: inserts
    through Distributed `fireflies`, views and rebuilds shard-local, reads through Distributed."""
    client = HttpClient(ch_server.url, settings={"insert_distributed_sync": 1})
    for stmt in ddl(dbname, cluster="one_shard", replicated=False):
        client.execute(stmt)
    rows = generated(seed=9, flows=60)
    client.insert(f"{dbname}.fireflies", encode_all(rows))
    assert query(client, f"SELECT count() FROM {dbname}.fireflies_local")[0][0] == len(rows)
    Rebuilder(client, dbname, POINT, table_suffix="_local").run_once()
    store = ClickHouseStore(client, dbname, create=False)
    want = expected(rows, POINT)
    assert store.count() == len(want["flows"])
    assert sum(b for _, _, b in store.timeseries(0, 4e9, 60)) == sum(v[0] for v in want["minute"].values())
    assert len(store.flows(0, 4e9, limit=10_000)) == len(want["flows"])


def test_retention_drops_whole_start_days(backend: Any, dbname: str) -> None:
    client, _ = backend
    store = ClickHouseStore(client, dbname)
    rows = generated(seed=4, flows=80)  # starts over 2-3 days
    client.insert(f"{dbname}.fireflies", encode_all(rows))
    Rebuilder(client, dbname, POINT).run_once()
    days = store.partitions()
    assert len(days) >= 2
    cut = (min(r.start_us for r in rows) // DAY_US + 1) * 86400
    first_day_flows = {(r.src, r.sport, r.start_us) for r in rows if r.start_us < cut * 10**6}
    assert store.expire(cut) == len(first_day_flows)
    assert store.partitions() == days[1:]
    assert store.count() == len({(r.src, r.sport, r.start_us) for r in rows}) - len(first_day_flows)
    assert store.expire(cut) == 0
