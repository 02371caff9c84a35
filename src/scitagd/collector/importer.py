# SPDX-License-Identifier: Apache-2.0
"""`scitagd collector import FILE[.gz] ...`: syslog archives of fireflies into the store.

The same parser and accounting as live traffic, so an imported archive and the same fireflies
received over UDP end up as the same rows.
"""

from __future__ import annotations

import gzip
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Dict, List

from ..errors import CommandError, FireflyError
from ..firefly import parse
from ..netset import NetSet
from .conf import CollectorConfig
from .report import Report, make_report
from .storeapi import IngestResult, StoreError, StoreFull, open_store

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


def import_files(conf: CollectorConfig, files: List[str], progress: bool = True, keep: bool = False) -> Dict[str, Any]:
    """Every line through the same parser and store as live traffic, so an archive and the same
    fireflies received over UDP give the same rows, and importing twice changes nothing."""
    try:
        store = open_store(conf.store, conf.active_timeout, "import")
    except (StoreError, ValueError) as e:
        raise CommandError(f"collector import: collector.store: {e}") from None
    local = NetSet(conf.local_networks) if conf.drop_local_only else NetSet([])
    summary: Dict[str, Any] = {"files": [], "lines": 0, "imported": 0, "rejected": Counter(), "samples": []}
    tags: Counter[str] = Counter()  # experiment/activity/state -> fireflies
    res = IngestResult()
    local_only = 0
    lo, hi = float("inf"), float("-inf")
    batch: List[Report] = []
    now = time.time()

    def write() -> None:
        try:
            res.merge(store.ingest(batch))
        except (StoreFull, StoreError) as e:
            raise CommandError(f"collector import: the store cannot write, stopped after {summary['imported']} "
                               f"fireflies (importing again is harmless: duplicates count once): {e}") from None
        batch.clear()

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
                        # an archive's syslog HOSTNAME is what the relay that wrote it recorded
                        r = make_report(rec, "import", True, now)
                    except FireflyError as e:
                        summary["rejected"][e.reason] += 1
                        if len(summary["samples"]) < 10:
                            summary["samples"].append({"file": name, "line": n, "reason": e.reason,
                                                       "error": str(e)})
                        continue
                    ctx = rec.firefly.context
                    tags[f"{ctx.experiment_id}/{ctx.activity_id}/{rec.firefly.flow_lifecycle.state}"] += 1
                    ok += 1
                    if local and r.src in local and r.dst in local:
                        local_only += 1
                        continue
                    lo, hi = min(lo, r.start, r.t), max(hi, r.t)
                    batch.append(r)
                    if len(batch) >= 20000:
                        write()
                    if n % 1000 == 0:
                        bar.show(raw.tell(), n)
            bar.show(size, n, final=True)
            summary["files"].append({"file": name, "lines": n, "imported": ok})
            summary["lines"] += n
            summary["imported"] += ok
        write()
        try:
            if keep and lo <= hi:
                store.pin(lo, hi, f"import of {', '.join(Path(f).name for f in files)}")
            # flows silent for longer than activeTimeout by their own times are closed now, as live
            res.merge(store.expire(time.time(), conf.max_active_flows))
            store.maintain()  # ClickHouse: the imported days' traffic rebuilt now, not at the next interval
            active = store.active(1)[1]
        except (StoreFull, StoreError) as e:
            raise CommandError(f"collector import: fireflies written, then the store failed: {e}") from None
    finally:
        store.close()
    cut = time.time() - conf.store.retention_days * 86400
    summary["states"] = {k: v for k, v in res.outcomes.items() if k != "duplicate"}
    summary["duplicates"] = res.outcomes.get("duplicate", 0)
    summary["local_only"] = local_only
    summary["flows_started"] = sum(res.started.values())
    summary["flows_ended"] = sum(res.ended.values())
    summary["flows_expired"] = sum(res.expired.values())
    summary["flows_active"] = active
    summary["rejected"] = dict(summary["rejected"])
    summary["fireflies"] = dict(tags)
    summary["time_range"] = [lo, hi] if lo <= hi else None
    summary["older_than_retention"] = bool(lo <= hi and lo < cut)
    summary["kept"] = keep
    summary["retention_days"] = conf.store.retention_days
    return summary


def print_summary(s: Dict[str, Any]) -> None:
    print(f"lines {s['lines']}, imported {s['imported']} fireflies "
          f"({', '.join(f'{k} {v}' for k, v in sorted(s['states'].items()))}), "
          f"duplicates {s['duplicates']} (already in the store: not counted again), "
          f"rejected {sum(s['rejected'].values())}")
    print(f"flows started {s['flows_started']}, ended {s['flows_ended']}, closed without an end "
          f"{s['flows_expired']}, still active {s['flows_active']}")
    for smp in s["samples"]:
        print(f"  rejected {smp['file']}:{smp['line']}: {smp['reason']}: {smp['error']}")
    if s["older_than_retention"]:
        lo = datetime.fromtimestamp(s["time_range"][0], timezone.utc).strftime("%Y-%m-%d %H:%M")
        if s["kept"]:
            print(f"note: data from {lo} UTC is older than retentionDays ({s['retention_days']:g}); it is kept: "
                  "this import's time range is exempt from retention")
        else:
            print(f"warning: data from {lo} UTC is older than collector.store.retentionDays "
                  f"({s['retention_days']:g}): the collector removes it at its next retention pass. "
                  "Import again with --keep to exempt this import's time range from retention.",
                  file=sys.stderr)
