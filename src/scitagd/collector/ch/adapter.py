# SPDX-License-Identifier: Apache-2.0
"""The ClickHouse store behind the collector's Store interface (storeapi.Store).

Writes: every accepted firefly becomes one row of `fireflies` (rows.encode_report), handed to
the batching writer (writer.py: RowBinary INSERTs, retried with backoff, a bounded buffer, a
spool at stop). Flows are assembled in the database (flows_mv), per-minute traffic is rebuilt
from the fireflies per start day (rebuild.py) every `rebuildInterval` by the collector that has
`rebuild: true`; reads (store.py) take the aggregates with -Merge and GROUP BY, never FINAL.

What the collector's counters need (/metrics: flows started, ended, bytes, duplicates) is worked
out here in memory, per process (`Memo`): the database is the truth for the dashboard and the
API; a process only knows the fireflies it received, so with several receivers a flow whose
fireflies reached two of them counts in both processes' counters. The active-flows gauge is
read back from the database every 30 s (Collector housekeeping).

Roles: "single" (one collector process: writes, reads, rebuilds, retention), "worker" (one of
collector.workers: writes only), "reader" (their parent: reads, rebuilds, retention), "import"
(`collector import`: synchronous INSERTs, then the touched days rebuilt).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ...logs import Throttle
from ...runtime import cancel_and_wait
from ..attribution import SPREAD
from ..storeapi import IngestResult, StoreFull, StoreStats, Tag
from . import links as chlinks
from .client import ClickHouseError, HttpClient
from .rebuild import Rebuilder
from .rows import RowError, encode_report
from .store import ClickHouseStore, SchemaError
from .writer import ClickHouseWriter

if TYPE_CHECKING:
    from ...flowexport.aggregate import Row
    from ..conf import StoreConfig
    from ..links import PathRow
    from ..report import Report

__all__ = ["ClickHouseAdapter", "Memo"]

log = logging.getLogger("scitagd.collector.ch")

ACTIVE, ENDED, EXPIRED = 0, 1, 2
SEEN_MAX = 64  # report identities remembered per flow (duplicates are near in time)


class Memo:
    """Flows this process saw, for its counters: [largest total, state, last event time, seen
    report identities]; at most `size`, the oldest first out (a flow seen again afterwards
    counts as started again, in the counters only)."""

    def __init__(self, size: int, active_timeout: float) -> None:
        self.size = size
        self.active_timeout = active_timeout
        self.flows: Dict[Tuple[Any, ...], List[Any]] = {}

    def account(self, r: Report, res: IngestResult) -> None:
        key = (r.proto, r.src, r.sport, r.dst, r.dport, r.start, r.exp, r.act)
        state, t, total = r.state, r.t, r.sent + r.received
        ident = (state, t, r.sent, r.received)
        tag = (r.exp, r.act)
        outcomes = res.outcomes
        f = self.flows.get(key)
        if f is None:
            flows = self.flows
            if len(flows) >= self.size:
                del flows[next(iter(flows))]
            ended = state == "end"
            flows[key] = [total, ENDED if ended else ACTIVE, t, {ident}]
            res.add(res.started, tag)
            res.add(res.ended if ended else res.active, tag)
            if total:
                res.add(res.bytes, tag, total)
            outcomes[state] = outcomes.get(state, 0) + 1
            return
        seen = f[3]
        if ident in seen:
            outcomes["duplicate"] = outcomes.get("duplicate", 0) + 1
            return
        if len(seen) >= SEEN_MAX:
            seen.clear()
        seen.add(ident)
        outcomes[state] = outcomes.get(state, 0) + 1
        if total > f[0]:
            res.add(res.bytes, tag, total - f[0])
            f[0] = total
        if t > f[2]:
            f[2] = t
        if state == "end":
            if f[1] != ENDED:
                if f[1] == ACTIVE:
                    res.add(res.active, tag, -1)
                res.add(res.ended, tag)
                f[1] = ENDED
        elif f[1] == EXPIRED and t >= f[2]:
            f[1] = ACTIVE  # a report after it was closed for silence: alive after all
            res.add(res.active, tag)

    def expire(self, now: float, max_active: int) -> IngestResult:
        res = IngestResult()
        cut = now - self.active_timeout
        active = []
        for key, f in self.flows.items():
            if f[1] != ACTIVE:
                continue
            if f[2] < cut:
                f[1] = EXPIRED
                res.add(res.expired, (key[6], key[7]))
                res.add(res.active, (key[6], key[7]), -1)
            else:
                active.append((f[2], key))
        if len(active) > max_active:
            active.sort()
            for _, key in active[:len(active) - max_active]:
                self.flows[key][1] = EXPIRED
                res.add(res.expired, (key[6], key[7]))
                res.add(res.active, (key[6], key[7]), -1)
                res.evicted += 1
        return res


class ClickHouseAdapter:
    kind = "clickhouse"

    def __init__(self, conf: StoreConfig, active_timeout: float, role: str = "single") -> None:
        if role not in ("single", "worker", "reader", "import"):
            raise ValueError(f"role {role!r}")
        self.conf = conf
        self.role = role
        password = conf.read_password()
        self.client = HttpClient(conf.url, conf.user, password, timeout=conf.timeout)
        self.db = conf.database
        # on a cluster: reads through the Distributed tables, retention on this node's _local ones
        self.local = "_local" if conf.cluster else ""
        self.reader = ClickHouseStore(self.client, conf.database, active_timeout, local=self.local, check=False)
        self.memo = Memo(conf.cache_flows, active_timeout)
        self._lock = threading.Lock()  # the memo: ingest and expire may run on different threads
        self.writer: Optional[ClickHouseWriter] = None
        if role in ("single", "worker"):
            self.writer = ClickHouseWriter(conf.url, conf.database, conf.user, password,
                                           batch_rows=conf.batch_rows, interval=conf.batch_interval,
                                           max_buffer_rows=conf.max_buffer_rows, timeout=conf.timeout,
                                           spool_dir=conf.spool_dir, stop_timeout=min(30.0, conf.timeout))
        self.rebuilder: Optional[Rebuilder] = None
        if role in ("single", "reader", "import") and conf.rebuild:
            # its own staging tables: several collectors (or a collector and an import) may
            # rebuild the same database at once, and shared staging tables would mix their days
            self.rebuilder = Rebuilder(self.client, conf.database, SPREAD, tag=f"{role}_{secrets.token_hex(4)}",
                                      table_suffix=self.local)
        self.schema_ok = False
        self.schema_problem: Optional[str] = None
        self.rebuild_problem: Optional[str] = None
        self.sync_dropped = 0  # import: rows not written (never: the import stops with an error instead)
        self.sync_written = 0
        self._tasks: List[asyncio.Task[None]] = []
        self._pool: Optional[ThreadPoolExecutor] = None
        self._throttle = Throttle(60.0)
        if role != "worker":
            self._check_schema(create=True, at_start=True)

    @property
    def active_timeout(self) -> float:
        return self.reader.active_timeout

    @active_timeout.setter
    def active_timeout(self, v: float) -> None:
        self.reader.active_timeout = v
        self.memo.active_timeout = v

    # --- schema ---------------------------------------------------------------------------

    def _check_schema(self, create: bool, at_start: bool = False) -> bool:
        """True when the schema is there in this version. A schema of another version is fatal
        at start (SchemaError out of the constructor) and a stated problem later; an unreachable
        server is a problem to retry (writes queue meanwhile)."""
        try:
            self.reader.check_schema(create and not self.conf.cluster)  # a cluster's: made on every node
        except SchemaError as e:
            missing = "no scitagd schema" in str(e)
            if at_start and not (missing and self.role == "worker"):
                raise
            self.schema_problem = str(e)
            return False
        except ClickHouseError as e:
            if self.role == "import":
                raise
            self.schema_problem = f"schema not checked: {e}"
            if at_start:
                log.warning("clickhouse unreachable at start, fireflies are kept until it answers url=%s error=%r",
                            self.conf.url, str(e))
            return False
        if self.schema_problem is not None:
            log.info("clickhouse schema checked database=%s problem_was=%r", self.db, self.schema_problem)
        self.schema_ok, self.schema_problem = True, None
        return True

    # --- life cycle (loop) ----------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        if self.writer is not None:
            self.writer.gate = asyncio.Event()
            if self.schema_ok:
                self.writer.gate.set()
            await self.writer.start()
        if not self.schema_ok:
            self._tasks.append(loop.create_task(self._schema_loop(), name="clickhouse-schema"))
        if self.rebuilder is not None:
            self._tasks.append(loop.create_task(self._rebuild_loop(), name="clickhouse-rebuild"))

    async def _schema_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 1.0
        while True:
            ok = await loop.run_in_executor(self._pool, self._check_schema, self.role != "worker")
            if ok:
                if self.writer is not None and self.writer.gate is not None:
                    self.writer.gate.set()
                return
            if self._throttle.allow("schema"):
                log.error("clickhouse schema not usable, fireflies kept (not written) problem=%r", self.schema_problem)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)

    async def _rebuild_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.conf.rebuild_interval)
            if self.schema_ok:
                await loop.run_in_executor(self._pool, self.maintain)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self.writer is not None:
            await self.writer.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # a rebuild under way finishes (its swap is atomic)
            self._pool = None
        self._drop_stage()

    def _drop_stage(self) -> None:
        if self.rebuilder is None:
            return
        try:
            self.rebuilder.drop_stage()
        except ClickHouseError as e:
            log.warning("clickhouse staging tables left behind (DROP TABLE <db>.*_stage_<tag> by hand) "
                        "tag=%s error=%r", self.rebuilder.tag, str(e))

    def stats(self) -> StoreStats:
        st = StoreStats()
        w = self.writer
        problems = []
        if self.schema_problem is not None:
            problems.append(f"clickhouse: {self.schema_problem}")
        if w is not None:
            h = w.health()
            st.counters.update(written=w.written, batches=w.batches, dropped=w.dropped + w.poisoned,
                               poisoned=w.poisoned, errors=w.errors)
            st.gauges.update(buffered=w.buffered, oldest_seconds=float(h["oldest_seconds"]))  # type: ignore[arg-type]
            if h["status"] == "unreachable":
                problems.append(f"clickhouse unreachable, {w.buffered} fireflies buffered: {w.last_error}")
            elif h["status"] == "behind":
                problems.append(f"clickhouse behind: {w.buffered} fireflies buffered, the oldest for "
                                f"{h['oldest_seconds']:.0f} s")
        if self.rebuilder is not None:
            st.counters.update(rebuilds=self.rebuilder.rebuilt, rebuild_seconds=round(self.rebuilder.seconds, 3))
            if self.rebuild_problem is not None:
                problems.append(f"clickhouse traffic rebuild failing: {self.rebuild_problem}")
        st.problems = problems
        return st

    # --- writes (the store's thread) --------------------------------------------------------

    def ingest(self, reports: Sequence[Report]) -> IngestResult:
        res = IngestResult()
        rows: List[bytes] = []
        with self._lock:
            memo = self.memo
            for r in reports:
                try:
                    rows.append(encode_report(r))
                except RowError as e:
                    res.rejected.append((r, str(e)))
                    continue
                memo.account(r, res)
        if not rows:
            return res
        if self.writer is not None:
            self.writer.add_rows(rows)  # full buffer: counted there (dropped)
        else:
            self._insert_now(b"".join(rows), len(rows))
        return res

    def _insert_now(self, data: bytes, n: int) -> None:
        """`collector import`: synchronous, three tries over ~7 s, then StoreFull (the import
        stops and says why; importing again is harmless: duplicates change nothing)."""
        delay = 1.0
        for attempt in range(3):
            try:
                self.client.insert(f"{self.db}.fireflies", data)
                self.sync_written += n
                return
            except ClickHouseError as e:
                if attempt == 2:
                    raise StoreFull(f"clickhouse: {e}") from None
                time.sleep(delay)
                delay *= 2

    def expire(self, now: float, max_active: int) -> IngestResult:
        with self._lock:
            return self.memo.expire(now, max_active)

    def retention(self, before: float) -> int:
        if self.role == "worker":
            return 0
        try:
            return self.reader.expire(before)
        except ClickHouseError as e:
            raise StoreFull(f"clickhouse retention: {e}") from None

    def maintain(self) -> None:
        """Rebuild the traffic of the days that got fireflies since their last rebuild."""
        rb = self.rebuilder
        if rb is None:
            return
        try:
            days = rb.run_once()
        except ClickHouseError as e:
            if self.rebuild_problem is None or self._throttle.allow("rebuild"):
                log.error("clickhouse traffic rebuild failed, tried again in %gs error=%r", self.conf.rebuild_interval,
                          str(e))
            self.rebuild_problem = str(e)[:300]
            return
        if self.rebuild_problem is not None:
            log.info("clickhouse traffic rebuilt again days=%d", len(days))
        self.rebuild_problem = None

    def pin(self, lo: float, hi: float, note: str) -> None:
        self.reader.pin(lo, hi, note)

    def close(self) -> None:
        self._drop_stage()

    # --- reads ----------------------------------------------------------------------------

    def flows(self, start: float, end: float, exp: Optional[int] = None, act: Optional[int] = None,
              host: Optional[str] = None, state: Optional[str] = None,
              limit: int = 100) -> List[Dict[str, Any]]:
        return self.reader.flows(start, end, exp, act, host, state, limit)

    def active(self, limit: int) -> Tuple[List[Dict[str, Any]], int]:
        return self.reader.active(limit)

    def active_by_tag(self) -> Dict[Tag, int]:
        if self.role == "worker" or not self.schema_ok:
            return {}
        return self.reader.active_by_tag()

    def timeseries(self, start: float, end: float, step: int, exp: Optional[int] = None,
                   act: Optional[int] = None, host: Optional[str] = None,
                   measure: str = "bytes") -> List[Tuple[int, int, int]]:
        return self.reader.timeseries(start, end, step, exp, act, host, measure)

    def totals(self, by: str, start: float, end: float, exp: Optional[int] = None,
               act: Optional[int] = None, host: Optional[str] = None,
               limit: int = 50) -> List[Dict[str, Any]]:
        return self.reader.totals(by, start, end, exp, act, host, limit)

    def extent(self) -> Tuple[Optional[float], Optional[float]]:
        return self.reader.extent()

    def count(self) -> int:
        if self.role == "worker" or not self.schema_ok:
            return 0
        return self.reader.count()

    # --- links ----------------------------------------------------------------------------

    def ingest_links(self, rows: Sequence[Row], paths: Sequence[PathRow] = ()) -> None:
        try:
            chlinks.insert(self.client, self.db, rows, paths)
        except ClickHouseError as e:
            raise StoreFull(f"clickhouse: {e}") from None

    def links(self, start: float, end: float, exporter: Optional[str] = None, domain: Optional[int] = None,
              iface: Optional[int] = None, direction: Optional[int] = None,
              limit: int = 100) -> List[Dict[str, Any]]:
        return chlinks.links(self.client, self.db, start, end, exporter, domain, iface, direction, limit)

    def link_timeseries(self, start: float, end: float, step: int, exporter: Optional[str] = None,
                        domain: Optional[int] = None, iface: Optional[int] = None, direction: Optional[int] = None,
                        exp: Optional[int] = None, measure: str = "bytes") -> List[Tuple[int, int, int, int]]:
        return chlinks.link_timeseries(self.client, self.db, start, end, step, exporter, domain, iface, direction,
                                       exp, measure)

    def paths(self, flows: Sequence[Tuple[str, str, int, str, int, float, Optional[float]]]
              ) -> List[List[Dict[str, Any]]]:
        return chlinks.paths_for(self.client, self.db, flows)
