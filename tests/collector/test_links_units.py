# SPDX-License-Identifier: Apache-2.0
"""Link tables (links.py through SQLiteStore), the flow-export feed (flowfeed.py) and the config
sections, without processes: additive deltas, roll-ups, retention, queries, paths, bounds."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from scitagd.collector.conf import load_text
from scitagd.collector.flowfeed import MAX_SERIES, LinkFeed, PathRecorder, Watch
from scitagd.collector.links import MAX_ROW_BYTES, PathRow
from scitagd.collector.report import Report, make_report
from scitagd.collector.store import SQLiteStore
from scitagd.errors import ConfigError
from scitagd.firefly import parse
from scitagd.flowexport.aggregate import Row
from scitagd.flowexport.records import FlowRecord
from scitagd.registry import RegistryHolder

from .linkutil import v6_firefly

T0 = 1_790_000_000 // 3600 * 3600  # an hour's start
A6, B6 = "2001:db8::1", "2001:db8::2"


def row(minute: int = T0, exporter: str = "192.0.2.1", iface: Optional[int] = 7, direction: Optional[int] = 0,
        exp: Optional[int] = 3, act: Optional[int] = 14, nbytes: int = 1000, packets: int = 2,
        family: int = 6, domain: int = 0) -> Row:
    return Row(minute, exporter, domain, iface, direction, family, exp, act if exp is not None else None, nbytes,
               packets, 1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "s.sqlite"))
    yield s
    s.close()


def test_deltas_add_up_in_any_order_and_roll_up_by_hour(store: SQLiteStore, tmp_path: Path) -> None:
    rows = [row(), row(nbytes=500), row(minute=T0 + 60), row(exp=None, nbytes=7000, packets=5),
            row(exp=None, family=4, nbytes=300), row(minute=T0 + 3600, nbytes=11)]
    store.ingest_links(rows[:3])
    store.ingest_links(rows[3:])
    store.ingest_links([rows[0]])  # a late delta for a minute already written
    other = SQLiteStore(str(tmp_path / "o.sqlite"))
    other.ingest_links(list(reversed([*rows, rows[0]])))
    q = "SELECT * FROM {} ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9"
    for t in ("link_traffic", "link_traffic_hour"):
        assert store.db.execute(q.format(t)).fetchall() == other.db.execute(q.format(t)).fetchall()
    other.close()
    minutes = store.db.execute("SELECT bucket, tagged, exp, family, bytes, packets FROM link_traffic "
                               "ORDER BY 1, 2, 4").fetchall()
    assert minutes == [(T0, 0, 0, 4, 300, 2), (T0, 0, 0, 6, 7000, 5), (T0, 1, 3, 6, 2500, 6),
                       (T0 + 60, 1, 3, 6, 1000, 2), (T0 + 3600, 1, 3, 6, 11, 2)]
    hours = store.db.execute("SELECT bucket, tagged, family, bytes FROM link_traffic_hour ORDER BY 1, 2, 3").fetchall()
    assert hours == [(T0, 0, 4, 300), (T0, 0, 6, 7000), (T0, 1, 6, 3500), (T0 + 3600, 1, 6, 11)]


def test_links_totals_tagged_share_and_filters(store: SQLiteStore) -> None:
    store.ingest_links([row(), row(exp=2, act=3, nbytes=3000), row(exp=None, nbytes=6000),
                        row(exp=None, family=4, nbytes=10000), row(iface=8, direction=1, nbytes=50),
                        row(exporter="2001:db8::9", iface=None, direction=None, exp=-1, act=-1, nbytes=5),
                        row(minute=T0 - 7200, nbytes=10**6)])  # outside the range asked
    got = store.links(T0, T0 + 600)
    assert [(r["exporter"], r["interface"], r["direction"]) for r in got] == [
        ("192.0.2.1", 7, 0), ("192.0.2.1", 8, 1), ("2001:db8::9", -2, -1)]
    top = got[0]
    assert (top["bytes"], top["tagged_bytes"], top["ipv6_bytes"], top["untagged_ipv6_bytes"]) == (
        20000, 4000, 10000, 6000)
    assert [(t["exp"], t["act"], t["bytes"]) for t in top["tags"]] == [(2, 3, 3000), (3, 14, 1000)]
    assert top["first"] == T0 and top["last"] == T0 + 60
    assert [t["exp"] for t in got[2]["tags"]] == [-1]
    assert [r["interface"] for r in store.links(T0, T0 + 600, iface=8)] == [8]
    assert [r["exporter"] for r in store.links(T0, T0 + 600, exporter="2001:db8::9")] == ["2001:db8::9"]
    assert store.links(T0, T0 + 600, direction=1)[0]["bytes"] == 50
    assert store.links(T0 + 600, T0 + 1200) == []
    assert len(store.links(T0, T0 + 600, limit=1)) == 1
    # beyond two days the hourly roll-up answers, with the same totals
    long = store.links(T0 - 3 * 86400, T0 + 600)
    assert long[0]["bytes"] == 10**6 + 20000 and long[0]["first"] == T0 - 7200


def test_timeseries_by_experiment_and_by_activity(store: SQLiteStore) -> None:
    store.ingest_links([row(), row(minute=T0 + 60, nbytes=10), row(exp=2, act=3, nbytes=7), row(exp=2, act=4, nbytes=5),
                        row(exp=None, nbytes=100), row(exp=None, family=4, nbytes=1), row(iface=9, nbytes=10**6)])
    ts = store.link_timeseries(T0, T0 + 600, 60, "192.0.2.1", 0, 7, 0)
    assert sorted(ts) == [(T0, 0, 0, 101), (T0, 1, 2, 12), (T0, 1, 3, 1000), (T0 + 60, 1, 3, 10)]
    assert sorted(store.link_timeseries(T0, T0 + 600, 600, iface=7)) == [(T0, 0, 0, 101), (T0, 1, 2, 12),
                                                                       (T0, 1, 3, 1010)]
    by_act = store.link_timeseries(T0, T0 + 600, 60, iface=7, exp=2)
    assert sorted(by_act) == [(T0, 0, 0, 101), (T0, 1, 3, 7), (T0, 1, 4, 5)]
    assert sorted(store.link_timeseries(T0, T0 + 600, 60, iface=7, exp=2, measure="packets"))[0] == (T0, 0, 0, 4)


def test_retention_removes_old_link_rows_and_keeps_pins(store: SQLiteStore) -> None:
    old, pinned, new = T0 - 40 * 86400, T0 - 35 * 86400, T0
    path = PathRow(old, 6, A6, B6, 1, 2, "192.0.2.1", 0, 7, 0, 3, 14, 10, 1)
    store.ingest_links([row(minute=old), row(minute=pinned), row(minute=new)],
                       [path, PathRow(new, *[getattr(path, f) for f in path.__struct_fields__[1:]])])
    store.pin(pinned - 3600, pinned + 3600, "test")
    store.retention(T0 - 30 * 86400)
    for t in ("link_traffic", "link_traffic_hour"):
        assert [r[0] for r in store.db.execute(f"SELECT bucket FROM {t} ORDER BY 1")] == [pinned, new]
    assert [r[0] for r in store.db.execute("SELECT bucket FROM link_paths")] == [new]


def test_paths_both_ways_within_the_flow_life(store: SQLiteStore) -> None:
    def p(minute: int, src: str, dst: str, sport: int, dport: int, iface: int, exp: int = 3) -> PathRow:
        return PathRow(minute, 6, src, dst, sport, dport, "192.0.2.1", 0, iface, 0, exp, 14 if exp else 0, 100, 1)

    store.ingest_links([], [p(T0, A6, B6, 1094, 40000, 7), p(T0 + 60, A6, B6, 1094, 40000, 7),
                            p(T0, B6, A6, 40000, 1094, 9, exp=0),  # the reverse, untagged
                            p(T0 + 7200, A6, B6, 1094, 40000, 11),  # the same 5-tuple much later: not this flow
                            p(T0, A6, B6, 1095, 40000, 7)])
    flows = [("tcp", A6, 1094, B6, 40000, T0 + 10.0, T0 + 100.0), ("udp", A6, 1094, B6, 40000, T0 + 10.0, None),
             ("sctp", A6, 1094, B6, 40000, T0, None)]
    got = store.paths(flows)
    assert [(x["interface"], x["reverse"], x["exp"], x["bytes"]) for x in got[0]] == [(7, False, 3, 200),
                                                                                   (9, True, 0, 100)]
    assert got[0][0]["first"] == T0 and got[0][0]["last"] == T0 + 120
    assert got[1] == [] and got[2] == []
    # an active flow (no end) sees everything after its start
    assert {x["interface"] for x in store.paths([("tcp", A6, 1094, B6, 40000, T0 + 10.0, None)])[0]} == {7, 9, 11}
    many = [("tcp", A6, 1094 + i, B6, 40000, T0 + 10.0, None) for i in range(400)]  # chunked queries
    assert sum(1 for x in store.paths(many) if x) == 2


def test_sums_past_2_63_are_answered(store: SQLiteStore) -> None:
    store.ingest_links([row(nbytes=MAX_ROW_BYTES)])
    store.db.executemany("INSERT INTO link_traffic VALUES (?, '192.0.2.1', 0, 7, 0, 6, 1, 3, 14, ?, 1)",
                         [(T0 + 60 * i, 2**62) for i in range(1, 4)])
    got = store.links(T0, T0 + 600)
    assert got[0]["bytes"] >= 3 * 2**62
    assert store.link_timeseries(T0, T0 + 600, 600)[0][3] >= 3 * 2**62


# --- config -------------------------------------------------------------------------------------

def test_sections_on_when_present_and_false_positive_policy() -> None:
    c = load_text("collector:\n  ipfix:\n  sflow: {port: 16343}\n").collector
    assert [n for n, _ in c.flow_exports()] == ["ipfix", "sflow"] and c.netflow is None
    assert c.ipfix is not None and c.ipfix.known_only and c.ipfix.port == 4739
    assert not load_text("collector:\n  netflow: {anyExperiment: true}\n").collector.netflow.known_only
    assert not load_text("collector:\n  sflow: {anyExperiment: true, knownActivitiesOnly: true}\n"
                         ).collector.sflow.known_only  # anyExperiment overrides
    assert not load_text("collector:\n  ipfix: {knownActivitiesOnly: false}\n").collector.ipfix.known_only
    assert load_text("collector: {}\n").collector.flow_exports() == []


@pytest.mark.parametrize("text,needle", [
    ("  ipfix: {port: 10514}", "ipfix.port 10514: already used by udp"),
    ("  ipfix: {port: 6343}\n  sflow: {}", "sflow.port 6343: already used by ipfix"),
    ("  sflow: {markingPrefixes: [2001:db8::/129]}", "markingPrefixes '2001:db8::/129'"),
    ("  ipfix: {allowedSources: [nowhere]}", "allowedSources 'nowhere'"),
    ("  ipfix: {receiveBuffer: 1}", "receiveBuffer 1"),
    ("  ipfix: {port: 0}", "port 0"),
    ("  sflow: {templateTimeout: 10}", "unknown key 'templateTimeout'"),
])
def test_bad_sections(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        load_text(f"collector:\n{text}\n")
    assert needle in str(e.value), str(e.value)


# --- the feed -------------------------------------------------------------------------------------

def rec(exp: Optional[int] = 3, act: Optional[int] = 14, nbytes: int = 100, t: Optional[float] = None,
        src: str = A6, dst: str = B6, sport: int = 1094, dport: int = 40000, iface: int = 7,
        exporter: str = "192.0.2.1", proto: int = 6) -> FlowRecord:
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    return FlowRecord(exporter, 0, iface, None, 0, proto, 6, s, d, sport, dport, None, exp, act, nbytes, 1,
                      time.time() if t is None else t, "label" if exp is not None else "")


def feed(extra: str = "") -> LinkFeed:
    conf = load_text(f"collector:\n  maxClockSkew: 600\n  ipfix: {{port: 14739{extra}}}\n").collector
    return LinkFeed(conf, RegistryHolder())


def test_feed_rows_metrics_and_clock_skew() -> None:
    f = feed()
    s = f.sections[0]
    now = time.time()
    f._records(s, [rec()])  # no firefly came yet: no paths kept at all
    assert f.take(now)[1] == [] and not f.paths.held
    f.note(report("start", A6, 1, B6, 2))  # fireflies come (for another flow)
    f._records(s, [rec(nbytes=0), rec(exp=None, act=None, nbytes=50), rec(exp=7, act=63, nbytes=9)])  # 7/63: unknown
    f._records(s, [rec(t=now - 86400, nbytes=1), rec(t=now - 86400, nbytes=2)])  # an exporter's clock a day off
    f._records(s, [rec(t=4102444800.0, nbytes=4)])  # year 2100
    rows, paths = f.take(now)
    assert sum(r.bytes for r in rows) == 66
    assert {r.minute for r in rows} == {int(now) // 60 * 60}  # all counted now
    assert s.agg.time_replaced == {"192.0.2.1": 3}
    assert paths == []  # no firefly reported the flow (yet): its tagged places are held
    f.note(report("start", A6, 1094, B6, 40000))
    _, paths = f.take(now)
    assert [(p.experiment, p.bytes) for p in sorted(paths, key=lambda p: p.bytes)] == [(3, 7), (7, 9)]
    assert f.take(now) == ([], [])  # deltas: taken once
    metrics = {m.name: m for m in f.collect()}
    got = {(s.labels["experiment"], s.labels["activity"]): s.value
           for s in metrics["scitagd_collector_link_bytes"].samples if s.name.endswith("_total")}
    assert got == {("cms", "Analysis Input"): 107, ("untagged", "untagged"): 50, ("other", "other"): 9}
    share = metrics["scitagd_collector_link_tagged_share"].samples
    assert len(share) == 1 and share[0].value == pytest.approx(116 / 166)
    rej = metrics["scitagd_collector_flowexport_time_replaced"].samples
    assert [(x.labels["exporter"], x.value) for x in rej] == [("192.0.2.1", 3)]


def report(state: str, src: str, sport: int, dst: str, dport: int, proto: str = "tcp") -> Report:
    return make_report(parse(v6_firefly(state, src, sport, dst, dport, proto=proto)), "192.0.2.9", False,
                       time.time(), 3600)


def test_feed_clamps_implausible_counters_and_bounds_series() -> None:
    f = feed()
    s = f.sections[0]
    f.note(report("start", A6, 1094, B6, 40000))
    f._records(s, [rec(nbytes=2**70), rec(nbytes=2**64 - 1, exp=None, act=None)])  # no flow carries that
    assert f.take() == ([], []) and s.agg.implausible == {"192.0.2.1": 2}
    f._records(s, [rec(nbytes=2**43) for _ in range(9)])  # plausible each, too much together
    rows, paths = f.take()
    assert rows[0].bytes == MAX_ROW_BYTES and f.clamped == {"192.0.2.1": 1} and paths[0].bytes == MAX_ROW_BYTES
    rejected = {tuple(x.labels.values()): x.value for m in f.collect() if m.name.endswith("flowexport_rejected")
                for x in m.samples}
    assert rejected == {("ipfix", "192.0.2.1", "implausible_counter"): 2}
    f.series = {(str(i), "0", "1", "ingress", (3, 14)): [1, 1] for i in range(MAX_SERIES)}
    f._records(s, [rec(exporter="198.51.100.1")])
    f.take()
    assert f.series_folded == 1 and ("other", "other", "other", "other", (3, 14)) in f.series
    assert len(f.series) == MAX_SERIES + 1


def test_feed_keeps_what_the_store_could_not_write_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    import scitagd.collector.flowfeed as ff

    monkeypatch.setattr(ff, "MAX_PENDING_ROWS", 5)
    f = feed()
    f.note(report("start", A6, 1094, B6, 40000))
    f._records(f.sections[0], [rec(iface=i) for i in range(4)])
    rows, paths = f.take()
    assert (len(rows), len(paths)) == (4, 4)
    f.keep(rows, paths, "disk full")
    assert f.problem == "disk full" and f.rows_dropped == 3
    rows2, paths2 = f.take()
    assert len(rows2) + len(paths2) == 5
    f.written(rows2, paths2)
    assert f.problem is None


def test_watched_flows_get_paths_untagged_too() -> None:
    f = feed()
    s = f.sections[0]
    f.note(report("start", A6, 1094, B6, 40000))
    f._records(s, [rec(exp=None, act=None), rec(exp=None, act=None, src=B6, dst=A6, sport=40000, dport=1094),
                   rec(exp=None, act=None, sport=1), rec(exp=None, act=None, proto=17)])
    _, paths = f.take()
    assert sorted((p.src, p.sport, p.experiment) for p in paths) == [(A6, 1094, None), (B6, 40000, None)]


def test_watch_and_recorder_bounds() -> None:
    w = Watch(active_timeout=100, max_flows=4, linger=10)
    ff = parse(v6_firefly("end", A6, 1, B6, 2))
    for i in range(3):
        w.add(make_report(parse(v6_firefly("start", A6, 10 + i, B6, 2)), "x", False, time.time(), 3600), now=0)
    assert len(w.flows) == 4 and w.evicted == 2
    w.add(make_report(ff, "x", False, time.time(), 3600), now=0)
    assert w.expire(now=50) == 2 and len(w.flows) == 2  # the ended flow lingers 10 s, the others 100 s
    assert sum(w.sources.values()) == 2 and w.expire(now=200) == 2 and w.sources == {}
    r = PathRecorder(max_pending=3, max_per_minute=2, max_held=2, hold=60)
    r.add([rec(sport=i) for i in range(5)], None)  # tagged, nobody reported them
    assert r.dropped == 2 and r.take(None, now=1000) == [] and len(r.held) == 2 and r.dropped == 3
    w2 = Watch(active_timeout=100)
    r.release(w2.add(report("end", A6, 0, B6, 40000)))  # a firefly after the records
    assert [p.sport for p in r.take(w2, now=1001)] == [0] and len(r.held) == 1 and r.held_keys == 1
    assert r.take(w2, now=1061) == [] and len(r.held) == 0 and r.held_keys == 0  # held 60 s at most
    w2.add(report("start", A6, 10, B6, 2))
    r.add([rec(sport=10, dport=2, iface=i, t=1000.0 + i) for i in range(3)], w2)  # 3 places in one minute
    assert len(r.take(w2, now=1100)) == 2 and r.dropped == 4  # max_per_minute


def test_store_full_is_reported_not_raised_as_sqlite(tmp_path: Path) -> None:
    from scitagd.collector.store import StoreFull

    path = tmp_path / "locked.sqlite"
    s = SQLiteStore(str(path))
    s.db.execute("PRAGMA busy_timeout=50")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreFull):
            s.ingest_links([row()])
    finally:
        other.execute("ROLLBACK")
        other.close()
    s.ingest_links([row()])
    assert s.links(T0, T0 + 60)[0]["bytes"] == 1000
    s.close()
