# SPDX-License-Identifier: Apache-2.0
"""Instructions per firefly, stage by stage, of a collector's ingest (callgrind).

Timing on two shared cores is noise; instruction counts are not. The same traffic as
bench/collector.py (real fireflies made into distinct flows) goes through one collector
version's own objects in one process, cumulatively stage by stage, and valgrind's callgrind
counts the instructions of each run. Each stage runs twice, over the first half of the
fireflies and over all of them: the difference, over the second half's count, is the marginal
cost per firefly (imports, compilation, cold caches cancel out); a stage's own cost is that
minus the marginal cost of the stage before it:

  load     read the datagrams, import, build the collector (what the others are measured against)
  parse    firefly.parse of each datagram
  receive  the collector's own receive(): parse, validation, report or accounting, queueing
  store    receive() plus the store's work, batch by batch as the flusher hands it over
           (a flush every 0.2 s at --rate: 1,600 fireflies at 8,000/s), and the metrics' tally

  python bench/collector_cost.py --tree . --tree /tmp/baseline-f1685eb [-n 16000]

The kernel's and the event loop's part of receiving (recvfrom, the protocol callback) is not
here: bench/collector.py's ceiling receiver shows it.
"""

from __future__ import annotations

import argparse
import json
import marshal
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

STAGES = ("load", "parse", "receive", "store")


def child(tree: Path, stage: str, grams_file: Path, batch: int, db: Path, count: int) -> None:
    """One run inside valgrind: the stages up to `stage`, over the first `count` fireflies."""
    sys.path.insert(0, str(tree / "src"))
    import msgspec

    grams: List[bytes] = marshal.loads(grams_file.read_bytes())[:count]
    from scitagd.firefly import parse
    from scitagd.registry import RegistryHolder

    try:
        from scitagd.collector.conf import CollectorConfig
        old = False
    except ImportError:  # the version before the ingest work
        from scitagd.collector.config import CollectorConfig  # type: ignore[no-redef,import-not-found,unused-ignore]
        old = True
    conf = msgspec.convert({"store": {"path": str(db), "retentionDays": 36500}}, CollectorConfig)
    from scitagd.collector.service import Collector

    try:  # what `scitagd collector` does before it builds the collector (GC thresholds)
        from scitagd.runtime import collect_rarely
        collect_rarely()
    except ImportError:
        pass

    c: Any = Collector(conf, RegistryHolder())
    if stage == "load":
        return
    if stage == "parse":
        for g in grams:
            parse(g)
        return
    receive = c.receive
    if stage == "receive":
        for g in grams:
            receive(g, "127.0.0.1", "udp")
        return
    for i in range(0, len(grams), batch):
        for g in grams[i:i + batch]:
            receive(g, "127.0.0.1", "udp")
        if old:
            c.store.write(*c.acct.take())
        else:
            batch_reports, c.pending = c.pending, []
            c._account(c.store.ingest(batch_reports))
    c.store.close()


def instructions(tree: Path, stage: str, grams_file: Path, batch: int, tmp: Path, count: int) -> int:
    out = tmp / f"cg.{os.getpid()}.{stage}.{count}"
    db = tmp / f"cost-{stage}-{time.monotonic_ns()}.sqlite"
    r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
                        "--child", str(tree), stage, str(grams_file), str(batch), str(db), str(count)],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    m = re.search(r"^summary:\s*(\d+)", out.read_text(errors="replace"), re.M)
    if not m:
        m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    assert m, r.stderr[-2000:]
    return int(m.group(1))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        tree, stage, grams_path, batch, db, count = sys.argv[2:8]
        child(Path(tree), stage, Path(grams_path), int(batch), Path(db), int(count))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", type=Path, required=True, help="a collector version's tree")
    ap.add_argument("-n", type=int, default=16000, help="fireflies")
    ap.add_argument("--rate", type=float, default=8000.0, help="fireflies/s the traffic is shaped for")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--jobs", type=int, default=2, help="valgrind runs at a time")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from collector import DATA, traffic

    a.batch = int(a.rate * 0.2)  # what the flusher hands over every flushInterval (0.2 s) at that rate
    res: Dict[str, Any] = {"n": a.n, "rate": a.rate, "batch": a.batch, "trees": {}}
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as d:
        tmp = Path(d)
        gf = tmp / "grams.marshal"
        gf.write_bytes(marshal.dumps(traffic(a.n, seed=7, data=DATA, rate=a.rate)))
        n = len(marshal.loads(gf.read_bytes()))
        half = n // 2
        stages = a.stages.split(",")
        for tree in a.tree:
            jobs = [(s, c) for s in stages for c in (half, n)]
            with ThreadPoolExecutor(a.jobs) as ex:  # valgrind runs are single-threaded
                got = list(ex.map(lambda sc, tree=tree: instructions(tree.resolve(), sc[0], gf, a.batch, tmp, sc[1]), jobs))
            counts = dict(zip(jobs, got))
            marginal = {s: (counts[(s, n)] - counts[(s, half)]) / (n - half) for s in stages}
            per: Dict[str, float] = {}
            for prev, s in zip(stages, stages[1:]):
                per[s] = marginal[s] - marginal[prev]
            res["trees"][str(tree)] = {"marginal": marginal, "per_firefly": per,
                                       "total": sum(per.values())}
            print(f"{tree}: " + ", ".join(f"{s} {v / 1000:,.1f}k" for s, v in per.items())
                  + f"; total {sum(per.values()) / 1000:,.1f}k instructions per firefly (marginal over the "
                  f"second {n - half} of {n}, batches of {a.batch})", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
