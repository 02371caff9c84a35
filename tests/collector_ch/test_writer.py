# SPDX-License-Identifier: Apache-2.0
"""The writer against a real clickhouse-server that goes away: nothing valid is lost across a
server restart while senders keep sending, nor across a collector restart while the server is
down (spool); the buffer is bounded and its drops counted; health says what is wrong."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import List, Set, Tuple

import pytest

from scitagd.collector.attribution import SPREAD
from scitagd.collector.ch.client import HttpClient, query
from scitagd.collector.ch.rebuild import Rebuilder
from scitagd.collector.ch.rows import FireflyRow
from scitagd.collector.ch.store import ClickHouseStore
from scitagd.collector.ch.writer import ClickHouseWriter

from .chserver import ClickHouseServer, available
from .data import expected, generated

pytestmark = [pytest.mark.skipif(not available(), reason="clickhouse-server not installed (scripts/setup.sh --test)"),
              pytest.mark.slow]  # clickhouse-server and collectors started here


def identities(client: HttpClient, db: str) -> Set[Tuple[int, ...]]:
    return {tuple(r) for r in query(client, f"SELECT DISTINCT toUInt32(start), start_frac, sport, state, t, sent, received "
                                            f"FROM {db}.fireflies")}


def want(rows: List[FireflyRow]) -> Set[Tuple[int, ...]]:
    return {(r.start_us // 10**6, r.start_us % 10**6, r.sport, r.state, r.t_us, r.sent, r.received) for r in rows}


def fast_writer(url: str, **kw: object) -> ClickHouseWriter:
    args = dict(batch_rows=40, interval=0.05, retry_min=0.05, retry_max=0.3, timeout=3.0, stop_timeout=30.0)
    args.update(kw)
    return ClickHouseWriter(url, "w", **args)  # type: ignore[arg-type]


def test_clickhouse_restart_while_writing_loses_nothing(tmp_path: Path) -> None:
    srv = ClickHouseServer(tmp_path / "ch")
    srv.start()
    try:
        client = HttpClient(srv.url)
        store = ClickHouseStore(client, "w")
        rows = generated(seed=5, flows=500)
        third = len(rows) // 3

        async def main() -> ClickHouseWriter:
            w = fast_writer(srv.url)
            await w.start()
            for r in rows[:third]:
                assert w.add(r)
                await asyncio.sleep(0.001)
            srv.stop()  # ClickHouse goes away; the senders keep sending
            t = time.monotonic()
            for r in rows[third:2 * third]:
                assert w.add(r)
                await asyncio.sleep(1.5 / third)
            while time.monotonic() - t < 1.5:
                await asyncio.sleep(0.05)
            assert w.health()["status"] == "unreachable" and w.buffered > 0
            srv.start()
            for r in rows[2 * third:]:
                assert w.add(r)
                await asyncio.sleep(0.001)
            await w.stop()
            return w

        w = asyncio.run(main())
        assert w.errors > 0, "the outage was not noticed: the test proved nothing"
        assert w.dropped == 0 and w.buffered == 0 and w.health()["status"] == "ok"
        assert identities(client, "w") == want(rows)
        Rebuilder(client, "w", SPREAD).run_once()
        got = {(b, k, n) for b, k, n in store.timeseries(0, 4e9, 60)}
        ref = expected(rows, SPREAD)["minute"]
        per_exp: dict = {}
        for (b, e, _), (nb, _) in ref.items():
            per_exp[(b, e)] = per_exp.get((b, e), 0) + nb
        assert got == {(b, e, n) for (b, e), n in per_exp.items() if n}
    finally:
        srv.stop()


def test_collector_restart_while_clickhouse_is_down_spools(tmp_path: Path) -> None:
    srv = ClickHouseServer(tmp_path / "ch")
    srv.start()
    client = HttpClient(srv.url)
    ClickHouseStore(client, "w")
    srv.stop()
    rows = generated(seed=6, flows=100)
    spool = tmp_path / "spool"
    try:
        async def first() -> ClickHouseWriter:
            w = fast_writer(srv.url, spool_dir=str(spool), stop_timeout=0.5)
            await w.start()
            for r in rows:
                w.add(r)
            await w.stop()
            return w

        w1 = asyncio.run(first())
        assert w1.written == 0 and w1.dropped == 0
        files = list(spool.glob("*.rowbinary"))
        assert sum(int(f.stem.rsplit("-", 1)[1]) for f in files) == len(rows)
        srv.start()

        async def second() -> ClickHouseWriter:
            w = fast_writer(srv.url, spool_dir=str(spool))
            await w.start()
            t = time.monotonic()
            while w.buffered and time.monotonic() - t < 30:
                await asyncio.sleep(0.05)
            await w.stop()
            return w

        w2 = asyncio.run(second())
        assert w2.written == len(rows)
        assert not list(spool.iterdir())
        assert identities(client, "w") == want(rows)
    finally:
        srv.stop()


def test_bounded_buffer_and_rejects(tmp_path: Path) -> None:
    rows = generated(seed=7, flows=60)[:150]

    async def main() -> ClickHouseWriter:
        w = fast_writer("http://127.0.0.1:9/", max_buffer_rows=100, stop_timeout=0.3)  # nothing listens
        await w.start()
        for r in rows:
            w.add(r)
        assert not w.add(rows[0]._replace(sent=1 << 61))
        assert not w.add(rows[0]._replace(start_us=-1))
        await asyncio.sleep(0.3)
        h = w.health()
        assert h["status"] == "unreachable" and h["buffered"] == 100 and h["dropped"] == 50
        await w.stop()
        return w

    w = asyncio.run(main())
    assert dict(w.rejected) == {"bad_usage": 1, "bad_time": 1}
    assert w.dropped == 150  # 50 over the bound, then 100 with no spool at stop
