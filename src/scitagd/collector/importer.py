"""`scitagd collector import FILE[.gz] ...`: syslog archives of fireflies into the store.

The same parser and accounting as live traffic, so an imported archive and the same fireflies
received over UDP end up as the same rows.
"""

from __future__ import annotations

import gzip
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any, Dict, List

from ..errors import FireflyError
from ..firefly import parse
from .account import Accountant
from .conf import CollectorConfig
from .store import SQLiteStore

__all__ = ["Progress", "import_files", "print_summary"]


class Progress:
    """One line on stderr, redrawn at most 5 times a second."""

    def __init__(self, name: str, total: int, stream: IO[str] = sys.stderr, live: bool = True,
                 quiet: bool = False) -> None:
        self.name, self.total, self.stream = name, total, stream
        self.live, self.quiet = live, quiet
        self.last = 0.0
        self.t0 = time.monotonic()

    def show(self, done: int, lines: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not final and (not self.live or now - self.last < 0.2)):
            return
        self.last = now
        frac = min(1.0, done / self.total) if self.total else 1.0
        bar = "#" * int(frac * 30)
        rate = lines / max(1e-6, now - self.t0)
        lead = "\r" if self.live else ""
        self.stream.write(f"{lead}{self.name}: [{bar:<30}] {frac * 100:5.1f}%  {lines} lines  {rate:,.0f}/s")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def import_files(conf: CollectorConfig, files: List[str], progress: bool = True) -> Dict[str, Any]:
    store = SQLiteStore(conf.store.path)
    acct = Accountant(conf.local_networks, conf.drop_local_only)
    for row in store.flows(0, 1e12, state="active", limit=10_000_000):
        acct.restore(row)
    summary: Dict[str, Any] = {"files": [], "lines": 0, "imported": 0, "rejected": Counter(),
                               "samples": []}
    tags: Counter[str] = Counter()  # experiment/activity/state -> fireflies
    try:
        for name in files:
            path = Path(name)
            size = path.stat().st_size
            raw = open(path, "rb")
            stream: Any = gzip.open(raw) if name.endswith(".gz") else raw
            bar = Progress(path.name, size, sys.stderr, live=progress and sys.stderr.isatty(),
                           quiet=not progress)
            n = ok = 0
            with stream:
                for line in stream:
                    n += 1
                    line = line.rstrip(b"\r\n")
                    if not line:
                        continue
                    try:
                        rec = parse(line)
                    except FireflyError as e:
                        summary["rejected"][e.reason] += 1
                        if len(summary["samples"]) < 10:
                            summary["samples"].append({"file": name, "line": n, "reason": e.reason,
                                                       "error": str(e)})
                        continue
                    acct.ingest(rec, "import")
                    ctx = rec.firefly.context
                    tags[f"{ctx.experiment_id}/{ctx.activity_id}/{rec.firefly.flow_lifecycle.state}"] += 1
                    ok += 1
                    if len(acct.rows) >= 20000:
                        store.write(*acct.take())
                    if n % 1000 == 0:
                        bar.show(raw.tell(), n)
            bar.show(size, n, final=True)
            summary["files"].append({"file": name, "lines": n, "imported": ok})
            summary["lines"] += n
            summary["imported"] += ok
        store.write(*acct.take())
    finally:
        store.close()
    summary["states"] = dict(acct.states)
    summary["duplicates"] = acct.duplicates
    summary["local_only"] = acct.local_only
    summary["flows_ended"] = sum(acct.ended.values())
    summary["flows_active"] = len(acct.active)
    summary["rejected"] = dict(summary["rejected"])
    summary["fireflies"] = dict(tags)
    return summary


def print_summary(s: Dict[str, Any]) -> None:
    print(f"lines {s['lines']}, imported {s['imported']} fireflies "
          f"({', '.join(f'{k} {v}' for k, v in sorted(s['states'].items()))}), "
          f"duplicates {s['duplicates']}, rejected {sum(s['rejected'].values())}")
    print(f"flows ended {s['flows_ended']}, still active {s['flows_active']}")
    for smp in s["samples"]:
        print(f"  rejected {smp['file']}:{smp['line']}: {smp['reason']}: {smp['error']}")
