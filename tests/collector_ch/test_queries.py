# SPDX-License-Identifier: Apache-2.0
"""Every read the dashboard, the JSON API and /metrics make of the ClickHouse store, with each
of its filters and table choices (minute, hour and day tables; host, tag and state filters; the
link views), runs on Debian's 18.16 and on chdb (a current ClickHouse) and gives the same
answers on both, from the same fireflies and link rows."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from scitagd.collector.attribution import SPREAD
from scitagd.collector.ch import links as chlinks
from scitagd.collector.ch.client import HttpClient
from scitagd.collector.ch.rebuild import Rebuilder
from scitagd.collector.ch.rows import encode_all
from scitagd.collector.ch.store import ClickHouseStore
from scitagd.collector.links import PathRow
from scitagd.flowexport.aggregate import Row

from .data import generated, producers

T0 = 1_767_000_000  # generated() flows start here, over two days
ALL = (0.0, float(1 << 32))
TWO_DAYS = (float(T0 - 3600), float(T0 + 3 * 86400))


def link_rows() -> Tuple[List[Row], List[PathRow]]:
    rows, paths = [], []
    for i in range(600):
        minute = T0 // 60 * 60 + i * 300
        tagged = i % 3 != 0
        rows.append(Row(minute, f"192.0.2.{1 + i % 2}", i % 2, 7 + i % 3, i % 2, 6 if i % 4 else 4,
                        2 + i % 2 if tagged else None, 1 + i % 5 if tagged else None, 1000 * (i + 1), 10 + i, 1))
    for f in generated(seed=12, flows=40)[::3]:
        paths.append(PathRow(f.start_us // 60_000_000 * 60, 6 if f.proto == "tcp" else 17, f.src, f.dst, f.sport,
                             f.dport, "192.0.2.1", 0, 7, 0, f.exp, f.act, 5000, 5))
    return rows, paths


def answers(client: Any, db: str) -> Dict[str, Any]:
    client.execute(f"DROP DATABASE IF EXISTS {db}")
    store = ClickHouseStore(client, db, active_timeout=1e9)  # generated() flows stay active: no end, no expiry
    client.insert(f"{db}.fireflies", encode_all(generated(seed=12, flows=120) + producers()))
    rows, paths = link_rows()
    chlinks.insert(client, db, rows, paths)
    Rebuilder(client, db, SPREAD).run_once()
    store.pin(T0 + 86400, T0 + 86400 + 3600, "test")  # the second day kept by retention below
    flows = store.flows(*ALL, limit=100_000)
    out: Dict[str, Any] = {
        "count": store.count(), "extent": store.extent(), "partitions": store.partitions(), "pins": store.pins(),
        "flows": flows, "flows_2d": store.flows(*TWO_DAYS, limit=50),
        "flows_exp": store.flows(*ALL, exp=2, limit=1000), "flows_act": store.flows(*ALL, exp=2, act=1, limit=1000),
        "flows_host": store.flows(*ALL, host="2001:db8::1", limit=1000),
        "flows_reporter": store.flows(*ALL, host="site1.example.org", limit=1000),
        "flows_ended": store.flows(*ALL, state="ended", limit=1000),
        "flows_active": store.flows(*ALL, state="active", limit=1000),
        "active": store.active(1000), "active_by_tag": sorted(store.active_by_tag().items()),
    }
    for step in (60, 300, 3600, 86400):
        out[f"series_{step}"] = store.timeseries(*TWO_DAYS, step)
        out[f"series_{step}_exp"] = store.timeseries(*TWO_DAYS, step, exp=2)
        out[f"series_{step}_flows"] = store.timeseries(*TWO_DAYS, step, measure="flows")
        out[f"series_{step}_host"] = store.timeseries(*TWO_DAYS, step, host="10.1.0.1")
    out["series_all_hourly"] = store.timeseries(*ALL, 3600)
    for by in ("experiment", "activity", "pair"):
        out[f"totals_{by}"] = store.totals(by, *ALL, limit=1000)
        out[f"totals_{by}_exp"] = store.totals(by, *ALL, exp=2, limit=1000)
        out[f"totals_{by}_2d"] = store.totals(by, *TWO_DAYS, limit=5)
    out["top_pairs_host"] = store.totals("pair", *ALL, host="10.1.0.2", limit=10)
    for name, (a, b) in {"links_day": (T0, T0 + 86400), "links_all": ALL}.items():
        out[name] = chlinks.links(client, db, a, b)
        out[f"{name}_filtered"] = chlinks.links(client, db, a, b, exporter="192.0.2.1", domain=0, iface=7, direction=0)
    for step in (60, 3600):
        out[f"link_series_{step}"] = chlinks.link_timeseries(client, db, T0, T0 + 86400, step)
        out[f"link_series_{step}_exp"] = chlinks.link_timeseries(client, db, T0, T0 + 86400, step, exp=2)
        out[f"link_series_{step}_packets"] = chlinks.link_timeseries(client, db, T0, T0 + 86400, step,
                                                                     exporter="192.0.2.2", measure="packets")
    out["paths"] = chlinks.paths_for(client, db, [(f["proto"], f["src"], f["sport"], f["dst"], f["dport"], f["start"],
                                                   f["end"]) for f in flows])
    # after the reads: retention drops whole days, the pinned one kept
    out["expired"] = store.expire(T0 + 2 * 86400)
    out["partitions_after"] = store.partitions()
    out["count_after"] = store.count()
    return out


def test_every_read_gives_the_same_answers_on_18_16_and_chdb(ch_server: Any, chdb_client: Any, dbname: str) -> None:
    old = answers(HttpClient(ch_server.url), dbname)
    new = answers(chdb_client, dbname)
    assert old.keys() == new.keys()
    differ = [k for k in old if old[k] != new[k]]
    assert not differ, {k: (str(old[k])[:300], str(new[k])[:300]) for k in differ}
    empty = [k for k, v in old.items() if not v and k != "expired"]
    assert not empty, empty  # every query had something to answer
    assert old["count_after"] < old["count"] and old["flows_active"] and old["flows_ended"]
    assert old["expired"] > 0 and old["partitions_after"] == [d for d in old["partitions"] if d >= 20251230]
    assert any(old["paths"])
