# SPDX-License-Identifier: Apache-2.0
"""What the SQLite store's SQL alone costs per firefly: the floor under any accounting in Python.

The collector's own receive and store run over bench/collector.py's traffic in one process,
batch by batch as the flusher hands it over (every --flush seconds at --rate). During the second half,
every statement the store sends to SQLite is recorded with its parameters; the file as it was
before that half is then opened by the same store class (same PRAGMAs, page cache, WAL) and the
recorded statements alone are replayed into it, batch by batch, with their commits and reads.
Both are timed in this thread's CPU time:

  store   the store's ingest of the batch: Python accounting + SQL (what the collector pays)
  sql     the recorded statements replayed: the rows, indexes, upserts and commits, no Python
          beyond handing SQLite its parameters

`sql` is what this schema costs whatever computes the rows (Python, or set-based SQL: that
adds statements, it cannot remove these). Added to the event loop's CPU per firefly (from
bench/collector.py's capacity step), it bounds from below what a firefly can cost the SQLite
collector on one core.

  python bench/sqlite_floor.py --runs 5 [--rate 14000] [--flush 0.2] [-n 64000] [--cpu 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
Statement = Tuple[str, str, Any]  # (execute | executemany, sql, parameters)


class Recorder:
    """The store's connection, recording what it is asked to run (and running it)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.log: List[Statement] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.log.append(("execute", sql, params))
        return self._db.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> sqlite3.Cursor:
        params = list(params)
        self.log.append(("executemany", sql, params))
        return self._db.executemany(sql, params)


def child(n: int, rate: float, flush: float, tmp: Path) -> Dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "bench"))
    import msgspec
    from collector import DATA, traffic

    from scitagd.collector.conf import CollectorConfig
    from scitagd.collector.service import Collector
    from scitagd.collector.store import SQLiteStore
    from scitagd.registry import RegistryHolder
    from scitagd.runtime import collect_rarely

    grams = traffic(n, seed=7, data=DATA, rate=rate)
    batch = int(rate * flush)  # what the flusher hands over every flushInterval at that rate
    db = tmp / "store.sqlite"
    conf = msgspec.convert({"store": {"path": str(db), "retentionDays": 36500}}, CollectorConfig)
    collect_rarely()  # what `scitagd collector` does before it builds the collector
    c: Any = Collector(conf, RegistryHolder())
    half = len(grams) // 2

    def batches(part: List[bytes]) -> Any:
        for i in range(0, len(part), batch):
            for g in part[i:i + batch]:
                c.receive(g, "127.0.0.1", "udp")
            reports, c.pending = c.pending, []
            yield reports

    for reports in batches(grams[:half]):
        c._account(c.store.ingest(reports))
    c.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    replay_path = tmp / "replay.sqlite"
    shutil.copyfile(db, replay_path)
    rec = Recorder(c.store.db)
    c.store.db = rec
    logs: List[List[Statement]] = []
    store_cpu = 0.0
    for reports in batches(grams[half:]):
        t0 = time.thread_time()
        c._account(c.store.ingest(reports))
        store_cpu += time.thread_time() - t0
        logs.append(rec.log)
        rec.log = []
    c.store.close()
    replay = SQLiteStore(str(replay_path))
    rdb = replay.db
    by: Dict[str, float] = {}
    for log in logs:
        for kind, sql, params in log:
            t0 = time.thread_time()
            if kind == "execute":
                rdb.execute(sql, params).fetchall()
            else:
                rdb.executemany(sql, params)
            what = statement_name(sql)
            by[what] = by.get(what, 0.0) + time.thread_time() - t0
    replay.close()
    stored, replayed = fingerprint(db), fingerprint(replay_path)
    if stored != replayed:  # the replay did other work than the store: no floor
        raise SystemExit(f"replayed file differs: {stored} != {replayed}")
    m = len(grams) - half
    return {"fireflies": m, "batch": batch, "statements": sum(len(x) for x in logs),
            "store_us": store_cpu / m * 1e6, "sql_us": sum(by.values()) / m * 1e6,
            "by_statement_us": {k: v / m * 1e6 for k, v in sorted(by.items(), key=lambda kv: -kv[1])}}


def fingerprint(path: Path) -> List[Any]:
    """What the store's file holds, summed: the replay must end with the very same."""
    with sqlite3.connect(path) as db:
        return [db.execute(q).fetchone() for q in (
            "SELECT COUNT(*), SUM(sent), SUM(received), SUM(end IS NULL), MAX(id) FROM flows",
            "SELECT COUNT(*), SUM(sent) FROM fireflies",
            "SELECT COUNT(*), SUM(bytes), SUM(flows) FROM traffic",
            "SELECT COUNT(*), SUM(bytes), SUM(flows) FROM pairs")]


def statement_name(sql: str) -> str:
    """`INSERT flows`, `UPDATE flows`, `COMMIT`...: the verb and the table."""
    words = sql.split()
    verb = words[0].upper()
    table = next((w for w, prev in zip(words[1:], words) if prev.upper() in ("INTO", "UPDATE", "FROM")), "")
    return f"{verb} {table}".strip()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("-n", type=int, default=64000, help="fireflies (the second half is measured)")
    ap.add_argument("--rate", type=float, default=14000.0, help="fireflies/s the traffic is shaped for (a batch: --flush seconds of it)")
    ap.add_argument("--flush", type=float, default=0.2, help="seconds of traffic per batch (store.flushInterval)")
    ap.add_argument("--cpu", type=int, default=1, help="CPU to run on")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.n, a.rate, a.flush, a.child)))
        return 0
    runs = []
    for i in range(a.runs):
        with tempfile.TemporaryDirectory(prefix="bench-floor-") as d:
            r = subprocess.run(["taskset", "-c", str(a.cpu), sys.executable, __file__, "--child", d, "-n", str(a.n),
                                "--rate", str(a.rate), "--flush", str(a.flush)], capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            got = json.loads(r.stdout)
            runs.append(got)
            print(f"run {i + 1}: store {got['store_us']:.1f} us/firefly (Python + SQL), its SQL replayed alone "
                  f"{got['sql_us']:.1f} us ({got['statements']} statements, {got['fireflies']} fireflies in batches "
                  f"of {got['batch']})", flush=True)
    store = statistics.median(r["store_us"] for r in runs)
    sql = statistics.median(r["sql_us"] for r in runs)
    print(f"median of {a.runs}: store {store:.1f} us/firefly, SQL alone {sql:.1f} us ({sql / store:.0%}), "
          f"Python accounting {store - sql:.1f} us")
    names = sorted({k for r in runs for k in r["by_statement_us"]}, key=lambda k: -runs[0]["by_statement_us"].get(k, 0))
    print("SQL by statement, median us/firefly: " + ", ".join(
        f"{k} {statistics.median(r['by_statement_us'].get(k, 0.0) for r in runs):.2f}" for k in names))
    if a.json:
        a.json.write_text(json.dumps({"runs": runs, "store_us": store, "sql_us": sql}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
