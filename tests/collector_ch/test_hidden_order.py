# SPDX-License-Identifier: Apache-2.0
"""The same fireflies, delivered in any order, split over three writers, with duplicates, give
exactly the flows, bytes and per-minute traffic that one writer in order gives, and what the
reference accountant (attribution.contributions) computes. On ClickHouse 18.16 and on chdb,
for both attributions."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Dict, List

import pytest

from scitagd.collector.attribution import POINT, SPREAD
from scitagd.collector.ch.client import HttpClient, query
from scitagd.collector.ch.rebuild import Rebuilder
from scitagd.collector.ch.rows import FireflyRow, addr_text, encode_all
from scitagd.collector.ch.store import ClickHouseStore
from scitagd.collector.ch.writer import ClickHouseWriter

from .data import expected, generated, producers

ALL = (0, 1 << 32)
HOSTS = ("10.1.0.1", "2001:db8::2", "127.0.0.1")


def fireflies() -> List[FireflyRow]:
    return generated(seed=11) + producers()


def deliver_in_order(client: Any, db: str, rows: List[FireflyRow]) -> None:
    client.insert(f"{db}.fireflies", encode_all(sorted(rows, key=lambda r: (r.t_us, r.state))))


def deliver_scrambled(client: Any, kind: str, url: str, db: str, rows: List[FireflyRow], rnd: random.Random,
                      rebuild_midway: Rebuilder) -> None:
    """Shuffled, every firefly to one of 3 writers at random, 10% sent twice (to any writer),
    and traffic rebuilt halfway (a rebuild may run at any time)."""
    sent = rows + rnd.sample(rows, len(rows) // 10)
    rnd.shuffle(sent)
    parts: List[List[FireflyRow]] = [[], [], []]
    for r in sent:
        parts[rnd.randrange(3)].append(r)
    half = [p[: len(p) // 2] for p in parts], [p[len(p) // 2:] for p in parts]
    for i, chunk in enumerate(half):
        if kind == "server":
            asyncio.run(_three_writers(url, db, chunk))
        else:
            pieces = [(w, p[j:j + 61]) for w, p in enumerate(chunk) for j in range(0, len(p), 61)]
            rnd.shuffle(pieces)
            for _, piece in pieces:
                client.insert(f"{db}.fireflies", encode_all(piece))
        if i == 0:
            rebuild_midway.run_once()


async def _three_writers(url: str, db: str, parts: List[List[FireflyRow]]) -> None:
    writers = [ClickHouseWriter(url, db, batch_rows=37, interval=0.02, stop_timeout=120) for _ in parts]
    for w in writers:
        await w.start()

    async def feed(w: ClickHouseWriter, rows: List[FireflyRow]) -> None:
        for i, r in enumerate(rows):
            assert w.add(r)
            if i % 7 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(feed(w, p) for w, p in zip(writers, parts)))
    for w in writers:
        await w.stop()
        assert w.dropped == 0 and w.poisoned == 0 and not w.rejected


def tables(client: Any, db: str) -> Dict[str, Any]:
    minute = {(int(b), int(e), int(a)): (int(x), int(f)) for b, e, a, x, f in query(
        client, f"SELECT toUInt32(bucket) AS b, exp, act, sum(bytes), sum(flows) FROM {db}.traffic_minute "
                "GROUP BY b, exp, act")}
    pairs = {(int(b), addr_text(bytes.fromhex(s)), addr_text(bytes.fromhex(d)), int(e), int(a)): (int(x), int(f))
             for b, s, d, e, a, x, f in query(
                 client, f"SELECT toUInt32(bucket) AS b, hex(src), hex(dst), exp, act, sum(bytes), sum(flows) "
                         f"FROM {db}.pairs_day GROUP BY bucket, src, dst, exp, act")}
    return {"minute": minute, "pairs": pairs}


def api(store: ClickHouseStore) -> Dict[str, Any]:
    flows = sorted(store.flows(*ALL, limit=1_000_000), key=lambda f: (f["start"], f["src"], f["sport"]))
    return {"flows": flows,
            "series": store.timeseries(*ALL, 60), "series_flows": store.timeseries(*ALL, 60, measure="flows"),
            "hourly": store.timeseries(0, 4e9, 3600),
            "by_activity": store.totals("activity", *ALL, limit=1000),
            "pairs": store.totals("pair", *ALL, limit=1000), "count": store.count(),
            "host": {h: sorted(store.flows(*ALL, host=h, limit=100_000), key=lambda f: (f["start"], f["src"], f["sport"]))
                     for h in HOSTS},
            "host_series": {h: store.timeseries(*ALL, 3600, host=h) for h in HOSTS},
            "host_pairs": {h: store.totals("pair", *ALL, host=h, limit=1000) for h in HOSTS},
            "reporter": sorted(store.flows(*ALL, host="site0.example.org", limit=100_000),
                               key=lambda f: (f["start"], f["src"], f["sport"]))}


@pytest.mark.parametrize("method", [POINT, SPREAD])
def test_order_split_and_duplicates_do_not_matter(backend: Any, dbname: str, method: str) -> None:
    client, kind = backend
    url = client.url if isinstance(client, HttpClient) else ""
    rows = fireflies()
    want = expected(rows, method)
    results = []
    for n, scramble in enumerate((False, True, True)):
        db = f"{dbname}_{n}"
        client.execute(f"DROP DATABASE IF EXISTS {db}")
        store = ClickHouseStore(client, db)
        rb = Rebuilder(client, db, method)
        if scramble:
            deliver_scrambled(client, kind, url, db, rows, random.Random(n), rb)
        else:
            deliver_in_order(client, db, rows)
        assert rb.run_once(), "days with new fireflies must be rebuilt"
        got = tables(client, db)
        assert got["minute"] == want["minute"]
        assert got["pairs"] == want["pairs"]
        results.append(api(store))
        flows = {(f["proto"], f["src"], f["sport"], f["dst"], f["dport"], round(f["start"] * 1e6), f["exp"], f["act"]): f
                 for f in results[-1]["flows"]}
        assert len(flows) == len(want["flows"])
        for k, w in want["flows"].items():
            f = flows[k]
            assert (f["sent"], f["received"]) == (w["sent"], w["received"])
            assert f["state"] == ("ended" if w["end"] else "expired")
            assert round(f["end"] * 1e6) == (w["end"] or w["last"])
    r = results[0]
    for h in HOSTS:
        assert r["host"][h] == [f for f in r["flows"] if h in (f["src"], f["dst"])]
        assert sum(n for _, _, n in r["host_series"][h]) == sum(f["sent"] + f["received"] for f in r["host"][h])
    assert r["reporter"] and r["reporter"] == [f for f in r["flows"] if f["reporter"] == "site0.example.org"]
    assert results[0] == results[1] == results[2]
    assert results[0]["count"] == len(want["flows"])
    assert sum(b for _, _, b in results[0]["series"]) == sum(
        max(f["sent"] + f["received"] for f in [w]) for w in want["flows"].values())


def test_rebuild_is_needed_only_for_days_with_new_fireflies(ch_server: Any, dbname: str) -> None:
    client = HttpClient(ch_server.url)
    ClickHouseStore(client, dbname)
    rows = generated(seed=3, flows=40)
    deliver_in_order(client, dbname, rows)
    rb = Rebuilder(client, dbname, SPREAD)
    rb.in_flight = 0  # no insert in flight here: a day is clean once rebuilt a second after its last insert
    time.sleep(1.1)
    days = rb.dirty_days()
    assert days and rb.run_once() == days
    assert rb.dirty_days() == []
    assert Rebuilder(client, dbname, POINT).dirty_days() == days, "another method rebuilds every day"
    late = rows[0]._replace(state="ongoing", t_us=rows[0].t_us + 1, sent=rows[0].sent + 1)
    client.insert(f"{dbname}.fireflies", encode_all([late]))
    assert len(rb.dirty_days()) == 1
