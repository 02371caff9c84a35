# SPDX-License-Identifier: Apache-2.0
"""The store interface: what the collector's service, web side, importer and link feed need of
a store, so that SQLite (embedded, one writer) and ClickHouse (a server, many writers) can stand
behind the same dashboard, JSON API, /metrics and `collector import` unchanged.

Threads: the write and read methods run on the store's executor threads, never on the event loop
(SQLite and the ClickHouse HTTP client block); `start`/`stop` run on the loop (the ClickHouse
writer is asyncio). `open_store` builds the configured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol, Sequence, Tuple

if TYPE_CHECKING:
    from ..flowexport.aggregate import Row
    from .conf import StoreConfig
    from .links import PathRow
    from .report import Report

__all__ = ["IngestResult", "Store", "StoreError", "StoreFull", "StoreStats", "Tag", "open_store"]

Tag = Tuple[int, int]
FlowArgs = Tuple[str, str, int, str, int, float, Optional[float]]  # proto, src, sport, dst, dport, start, end


class StoreFull(Exception):
    """The store cannot write now (disk full, I/O error, locked): keep the batch, retry later."""


class StoreError(Exception):
    """The store could not answer (a database server unreachable or refusing): a 503 for the
    request that asked, never a traceback."""


@dataclass
class IngestResult:
    """What a batch (or an expiry pass) changed, for the counters and metrics on the loop."""

    outcomes: Dict[str, int] = field(default_factory=dict)  # start/ongoing/end accounted, duplicate
    started: Dict[Tag, int] = field(default_factory=dict)  # new flows
    ended: Dict[Tag, int] = field(default_factory=dict)
    expired: Dict[Tag, int] = field(default_factory=dict)
    active: Dict[Tag, int] = field(default_factory=dict)  # change of active flows
    bytes: Dict[Tag, int] = field(default_factory=dict)  # attributed
    rejected: List[Tuple[Report, str]] = field(default_factory=list)  # a report the store refused
    clamped: int = 0  # intervals spread over only their last 24 hours
    tag_conflicts: int = 0  # a firefly of a known flow with other tags (the first ones stay)
    evicted: int = 0  # active flows closed early: collector.maxActiveFlows reached

    def add(self, d: Dict[Any, int], k: Any, n: int = 1) -> None:
        d[k] = d.get(k, 0) + n

    def merge(self, o: IngestResult) -> None:
        self.merge_counts(o)
        self.rejected += o.rejected

    def merge_counts(self, o: IngestResult) -> None:
        """Add `o`'s counts (everything but its rejected reports)."""
        for name in ("outcomes", "started", "ended", "expired", "active", "bytes"):
            mine = getattr(self, name)
            for k, v in getattr(o, name).items():
                mine[k] = mine.get(k, 0) + v
        self.clamped += o.clamped
        self.tag_conflicts += o.tag_conflicts
        self.evicted += o.evicted

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.started or self.ended or self.expired or self.active or self.bytes
                    or self.rejected or self.clamped or self.tag_conflicts or self.evicted)


@dataclass
class StoreStats:
    """A store's own figures for /metrics and /healthz: `counters` only grow (summed over
    workers as deltas), `gauges` are current values (summed over workers), `problems` are
    reasons the store is behind or unreachable (503 on /healthz)."""

    counters: Dict[str, float] = field(default_factory=dict)
    gauges: Dict[str, float] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)


class Store(Protocol):
    """Both stores give the same answers to the same fireflies (tests/collector_ch); where they
    differ is listed in README (Collector, "Stores")."""

    active_timeout: float
    kind: str  # "sqlite" or "clickhouse"

    # --- life cycle, on the event loop -------------------------------------------------------
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def stats(self) -> StoreStats: ...

    # --- writes, on the store's thread ------------------------------------------------------
    def ingest(self, reports: Sequence[Report]) -> IngestResult: ...
    def expire(self, now: float, max_active: int) -> IngestResult: ...
    def retention(self, before: float) -> int: ...
    def maintain(self) -> None: ...  # periodic work of the store's own (ClickHouse: rebuild traffic)
    def pin(self, lo: float, hi: float, note: str) -> None: ...
    def close(self) -> None: ...

    # --- reads ----------------------------------------------------------------------------
    def flows(self, start: float, end: float, exp: Optional[int] = None, act: Optional[int] = None,
              host: Optional[str] = None, state: Optional[str] = None,
              limit: int = 100) -> List[Dict[str, Any]]: ...
    def active(self, limit: int) -> Tuple[List[Dict[str, Any]], int]: ...
    def active_by_tag(self) -> Dict[Tag, int]: ...
    def timeseries(self, start: float, end: float, step: int, exp: Optional[int] = None,
                   act: Optional[int] = None, host: Optional[str] = None,
                   measure: str = "bytes") -> List[Tuple[int, int, int]]: ...
    def totals(self, by: str, start: float, end: float, exp: Optional[int] = None,
               act: Optional[int] = None, host: Optional[str] = None,
               limit: int = 50) -> List[Dict[str, Any]]: ...
    def extent(self) -> Tuple[Optional[float], Optional[float]]: ...
    def count(self) -> int: ...

    # --- router flow exports (links.py): additive deltas, and queries by link ---------------
    def ingest_links(self, rows: Sequence[Row], paths: Sequence[PathRow] = ()) -> None: ...
    def links(self, start: float, end: float, exporter: Optional[str] = None, domain: Optional[int] = None,
              iface: Optional[int] = None, direction: Optional[int] = None,
              limit: int = 100) -> List[Dict[str, Any]]: ...
    def link_timeseries(self, start: float, end: float, step: int, exporter: Optional[str] = None,
                        domain: Optional[int] = None, iface: Optional[int] = None, direction: Optional[int] = None,
                        exp: Optional[int] = None, measure: str = "bytes") -> List[Tuple[int, int, int, int]]: ...
    def paths(self, flows: Sequence[FlowArgs]) -> List[List[Dict[str, Any]]]: ...


def open_store(conf: StoreConfig, active_timeout: float, role: str = "single") -> Store:
    """The configured store. `role`: "single" (one process: writes, reads, housekeeping),
    "worker" (writes only: a receiver of collector.workers), "reader" (the parent of workers:
    reads and housekeeping), "import" (`collector import`: synchronous writes)."""
    if conf.kind == "clickhouse":
        from .ch.adapter import ClickHouseAdapter

        return ClickHouseAdapter(conf, active_timeout, role)
    from .store import SQLiteStore

    return SQLiteStore(conf.path, conf.cache_flows, active_timeout)
