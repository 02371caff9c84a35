# SPDX-License-Identifier: Apache-2.0
"""SQLiteStore.flows answers one experiment's latest flows activity by activity (an index
walk per activity, merged): the same rows a plain filter and sort over every flow gives."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from scitagd.collector.report import Report
from scitagd.collector.store import FLOW_COLUMNS, SQLiteStore

T0 = 1_780_000_000.0


def _reports(n: int, seed: int) -> List[Report]:
    rnd = random.Random(seed)
    out: List[Report] = []
    for i in range(n):
        start = round(T0 + rnd.uniform(0, 7 * 86400), 6)
        exp, act = rnd.choice((2, 3, 9)), rnd.choice((1, 4, 5, 17, 33))
        src, dst = f"10.0.{i % 7}.1", f"10.1.{i % 11}.2"
        out.append(Report("tcp", src, 1024 + i, dst, 1094, start, "start", start, 0, 0, exp, act, None,
                          "127.0.0.1", None, "127.0.0.1", T0))
        if rnd.random() < 0.7:  # most end, some stay active
            end = start + rnd.uniform(1, 7200)
            out.append(Report("tcp", src, 1024 + i, dst, 1094, start, "end", end, 5000, 10, exp, act, None,
                              "127.0.0.1", None, "127.0.0.1", T0))
    return out


def _brute(rows: List[Dict[str, Any]], lo: float, hi: float, exp: int, state: Optional[str],
           limit: int) -> List[Dict[str, Any]]:
    got = [r for r in rows if r["start"] < hi and (r["end"] is None or r["end"] >= lo) and r["exp"] == exp
           and (state is None or r["state"] == state)]
    got.sort(key=lambda r: r["start"], reverse=True)
    return got[:limit]


@pytest.mark.parametrize("state", [None, "active", "ended"])
def test_one_experiments_flows_equal_a_plain_filter(tmp_path: Path, state: Optional[str]) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite"), active_timeout=1e12)
    try:
        store.ingest(_reports(3000, seed=5))
        every = [dict(zip(FLOW_COLUMNS, r)) for r in store.db.execute(f"SELECT {', '.join(FLOW_COLUMNS)} FROM flows")]
        assert len(every) == 3000
        windows = [(T0, T0 + 7 * 86400), (T0 + 3 * 86400, T0 + 4 * 86400), (T0 + 86400, T0 + 86400 + 600)]
        for lo, hi in windows:
            for exp in (2, 3, 9, 4):  # 4: no flows at all
                for limit in (1, 25, 5000):
                    want = _brute(every, lo, hi, exp, state, limit)
                    got = store.flows(lo, hi, exp=exp, state=state, limit=limit)
                    assert got == want, (lo, hi, exp, limit)
        assert store.flows(T0, T0 + 7 * 86400, exp=3, state=state, limit=25), "the windows select nothing"
    finally:
        store.close()
