# SPDX-License-Identifier: Apache-2.0
"""Where accounted flows live. `Store` is the interface the rest of the collector uses (the
service, the web side, the importer); SQLiteStore is the embedded one.

SQLite: one file, WAL, one transaction per batch. Every firefly is kept once (`fireflies`,
unique by identity: the same firefly received again, before or after a restart or by an import,
changes nothing); flows are assembled from them (`flows`), and their bytes attributed to time
(attribution.py) into pre-aggregated tables (per minute and per hour per experiment/activity; per
day per host pair) so the dashboard reads thousands of rows, not the millions under them. All of
it is order-independent: the same fireflies in any order give the same rows.

Everything here runs on the store's own thread (the service's executor); nothing blocks the loop.
"""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..flowexport.aggregate import Row
from . import links as linktables
from .attribution import DAY, HOUR, KEEP, MINUTE, FlowReports
from .links import PathRow
from .report import Report
from .storeapi import IngestResult, Store, StoreFull, StoreStats

__all__ = ["DAY", "FLOW_COLUMNS", "HOUR", "LONG_RANGE", "MINUTE", "PAIR_BUCKET", "IngestResult", "SQLiteStore",
           "Store", "StoreFull"]

log = logging.getLogger("scitagd.collector.store")

LONG_RANGE = 2 * DAY  # longer ranges read the hourly roll-up: 60x fewer rows
PAIR_BUCKET = DAY  # host pairs per day: the top-talker query reads days, not hours
SCHEMA_VERSION = 2
CHUNK = 900  # host parameters per statement: under SQLite's older limit of 999
# SQLite's page cache (KiB; the default is 2 MiB). Flows are indexed by host, tag and time, so a
# batch's inserts touch pages all over the indexes: with 2 MiB they are read back from the OS
# for every batch. 64 MiB: the SQL part of a firefly 38 -> 25 us CPU (bench/collector_cost.py's
# traffic, 128,000 fireflies). Memory: at most this much, in use only as the file grows.
PAGE_CACHE_KIB = 65536
# Pages the write-ahead log may hold before they are copied into the file (SQLite's default:
# 1,000, 4 MB). A batch dirties pages all over the indexes: at the default nearly every commit
# copied them all back (3.6 of the 10 us a firefly's commit cost); with 64 MiB a page written by
# several commits is copied once. Disk: the WAL file stays up to this size.
WAL_PAGES = 16384

FLOW_COLUMNS = ("proto", "src", "sport", "dst", "dport", "start", "end", "exp", "act", "app",
                "reporter", "sent", "received", "state")
Tag = Tuple[int, int]
FlowKey = Tuple[str, str, int, str, int, float]


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flows (
  id INTEGER PRIMARY KEY,
  proto TEXT NOT NULL, src TEXT NOT NULL, sport INTEGER NOT NULL, dst TEXT NOT NULL,
  dport INTEGER NOT NULL, start REAL NOT NULL, end REAL, exp INTEGER NOT NULL,
  act INTEGER NOT NULL, app TEXT, reporter TEXT, sent INTEGER NOT NULL DEFAULT 0,
  received INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, last REAL,
  UNIQUE (proto, src, sport, dst, dport, start)
);
CREATE INDEX IF NOT EXISTS flows_start ON flows (start);
CREATE INDEX IF NOT EXISTS flows_tag ON flows (exp, act, start);
CREATE INDEX IF NOT EXISTS flows_src ON flows (src, start);
CREATE INDEX IF NOT EXISTS flows_dst ON flows (dst, start);
CREATE INDEX IF NOT EXISTS flows_reporter ON flows (reporter, start);
CREATE INDEX IF NOT EXISTS flows_state ON flows (state) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS fireflies (
  flow INTEGER NOT NULL, t REAL NOT NULL, state TEXT NOT NULL, sent INTEGER NOT NULL,
  received INTEGER NOT NULL, hostname TEXT, sender TEXT, at REAL NOT NULL,
  PRIMARY KEY (flow, t, state, sent, received)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS traffic (
  bucket INTEGER NOT NULL, exp INTEGER NOT NULL, act INTEGER NOT NULL, bytes INTEGER NOT NULL,
  flows INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (bucket, exp, act)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS traffic_hour (
  bucket INTEGER NOT NULL, exp INTEGER NOT NULL, act INTEGER NOT NULL, bytes INTEGER NOT NULL,
  flows INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (bucket, exp, act)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pairs (
  bucket INTEGER NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL, exp INTEGER NOT NULL,
  act INTEGER NOT NULL, bytes INTEGER NOT NULL, flows INTEGER NOT NULL,
  PRIMARY KEY (bucket, src, dst, exp, act)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pins (lo REAL NOT NULL, hi REAL NOT NULL, note TEXT NOT NULL);
"""

ADD = """
INSERT INTO {table} (bucket, exp, act, bytes, flows) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (bucket, exp, act) DO UPDATE SET bytes = bytes + excluded.bytes, flows = flows + excluded.flows
"""
ADD_PAIR = """
INSERT INTO pairs (bucket, src, dst, exp, act, bytes, flows) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (bucket, src, dst, exp, act) DO UPDATE SET bytes = bytes + excluded.bytes,
  flows = flows + excluded.flows
"""
INSERT_FLOW = ("INSERT INTO flows (id, proto, src, sport, dst, dport, start, end, exp, act, app, reporter, sent, "
               "received, state, last) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# A flow's row is rewritten only in the columns that changed: each indexed column set costs an
# index update even when its value stays (flows_reporter, flows_state).
UPDATE_TOTALS = "UPDATE flows SET sent = ?, received = ?, last = ? WHERE id = ?"
UPDATE_STATE = "UPDATE flows SET end = ?, state = ?, sent = ?, received = ?, last = ? WHERE id = ?"
UPDATE_FLOW = ("UPDATE flows SET end = ?, state = ?, sent = ?, received = ?, last = ?, reporter = ?, app = ? "
               "WHERE id = ?")
TOTALS, STATE, ORIGIN = 1, 2, 4  # what changed in a flow's row since it was written


Ident = Tuple[str, float, int, int]  # a report within its flow: state, event time, sent, received


class Flow:
    """A flow the store thread has in memory: its row's values, its reports, and the identities
    of the reports kept (older ones are looked up in the file, rarely)."""

    __slots__ = ("act", "app", "app_t", "changed", "end", "exp", "id", "last", "received", "reporter", "reporter_t",
                 "reports", "seen", "sent", "state")

    def __init__(self, fid: int, exp: int, act: int, state: str, end: Optional[float], sent: int, received: int,
                 reporter: str, reporter_t: float, app: Optional[str], app_t: float, last: float,
                 reports: FlowReports, seen: Optional[set[Ident]] = None) -> None:
        self.id, self.exp, self.act, self.state, self.end = fid, exp, act, state, end
        self.sent, self.received, self.last = sent, received, last
        self.reporter, self.reporter_t, self.app, self.app_t = reporter, reporter_t, app, app_t
        self.reports = reports
        self.seen: set[Ident] = seen if seen is not None else set()
        self.changed = 0  # TOTALS | STATE | ORIGIN: the columns to write at the end of the batch

    def known(self, ident: Ident, db: sqlite3.Connection) -> bool:
        if ident in self.seen:
            return True
        if ident[1] >= self.reports.base_t:
            return False
        # older than what memory keeps: the file knows (rare: a replay of an old report)
        return db.execute("SELECT 1 FROM fireflies WHERE flow = ? AND t = ? AND state = ? AND sent = ? AND "
                          "received = ?", (self.id, ident[1], ident[0], ident[2], ident[3])).fetchone() is not None

    def remember(self, ident: Ident) -> None:
        seen = self.seen
        seen.add(ident)
        if len(seen) > 2 * KEEP:  # forget what the reports no longer keep (the file has it)
            base = self.reports.base_t
            self.seen = {i for i in seen if i[1] >= base}


class SQLiteStore:
    """`cache_size`: flows kept in memory between their fireflies (the active ones and the most
    recently touched); others are read back from the file when a firefly of theirs comes."""

    def __init__(self, path: str, cache_size: int = 200_000, active_timeout: float = 86400.0) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses no commit's integrity
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        check = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"{path}: integrity check failed: {check}")
        self._migrate()
        self.cache: OrderedDict[FlowKey, Flow] = OrderedDict()
        self.cache_size = cache_size
        # Flows the file may hold and memory does not (written before this start, evicted from the
        # cache, or by another process such as an import) all start at or before `_uncached`: a
        # flow starting later that is not in memory is new, with no need to ask the file.
        # None: not known (read again, inside the next write transaction).
        self._uncached: Optional[float] = None
        self._data_version: Optional[int] = None  # PRAGMA data_version: commits of other connections
        self.active_timeout = active_timeout
        self.pinned: List[Tuple[float, float]] = [(lo, hi) for lo, hi in self.db.execute("SELECT lo, hi FROM pins")]

    def _migrate(self) -> None:
        db = self.db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "flows" in tables and "meta" not in tables:  # schema 1 (no fireflies, no `last`): keep every row
            cols = {r[1] for r in db.execute("PRAGMA table_info(flows)")}
            if "last" not in cols:
                db.execute("ALTER TABLE flows ADD COLUMN last REAL")
                db.execute("UPDATE flows SET last = COALESCE(end, start)")
            log.info("store upgraded from schema 1 to %d path=%s", SCHEMA_VERSION, self.path)
        db.executescript(SCHEMA + linktables.SCHEMA)
        # No query reads flows by `end` (ranges go by start; retention by COALESCE(end, ...), which no
        # index serves): the index only cost every end of a flow an index update.
        db.execute("DROP INDEX IF EXISTS flows_end")
        got = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if got is None:
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(got[0]) > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"{self.path}: schema version {got[0]} is newer than this scitagd's "
                                        f"({SCHEMA_VERSION}): upgrade scitagd or use another store path")

    # --- ingest ---------------------------------------------------------------------------

    def ingest(self, reports: Sequence[Report]) -> IngestResult:
        """Account a batch in one transaction. A report the database refuses (which validation
        should make impossible) is taken out and reported, the rest is written; a store that
        cannot write now raises StoreFull with nothing changed."""
        with self._lock:
            try:
                return self._ingest(reports)
            except sqlite3.OperationalError as e:  # disk full, I/O error, locked: nothing is wrong with the batch
                self._abort()
                raise StoreFull(str(e)) from None
            except (sqlite3.DatabaseError, OverflowError, ValueError) as e:
                self._abort()
                if len(reports) <= 1:
                    res = IngestResult()
                    res.rejected += [(r, f"{type(e).__name__}: {e}") for r in reports]
                    return res
        # one bad report must not keep the good ones out: halves, down to the bad one
        mid = len(reports) // 2
        res = self.ingest(reports[:mid])
        res.merge(self.ingest(reports[mid:]))
        return res

    def _abort(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error as e:
                log.warning("rollback failed error=%r", str(e))
        self.cache.clear()  # memory may hold what the file does not: read it back when needed
        self._uncached = None

    def _ingest(self, reports: Sequence[Report]) -> IngestResult:
        """Set-based: flows of the batch that may be in the file and not in memory are asked for
        once (a temporary table joined on the unique index; none at all for flows starting after
        everything the file holds beyond memory: live traffic), duplicates are found in memory
        (each flow's report identities), a new flow's row is inserted once with its values at the
        end of the batch, a known flow's row rewritten only in the columns that changed, all with
        executemany; fireflies are clustered by flow, so their inserts append."""
        res = IngestResult()
        outcomes, started, active, nbytes = res.outcomes, res.started, res.active, res.bytes
        db = self.db
        cache = self.cache
        minutes: Dict[Tuple[int, int, int], List[int]] = {}
        pairs: Dict[Tuple[int, str, str, int, int], List[int]] = {}
        dirty: Dict[int, Flow] = {}
        new: Dict[int, Tuple[FlowKey, Flow]] = {}
        db.execute("BEGIN IMMEDIATE")  # the write lock first: no upgrade deadlock with an import running
        uncached = self._uncached_bound()
        keys = [(r.proto, r.src, r.sport, r.dst, r.dport, r.start) for r in reports]
        missing = {k for k in keys if k[5] <= uncached and k not in cache}
        if missing:
            self._load(missing)
        new_fireflies: List[Tuple[Any, ...]] = []
        next_id = 0
        for r, key in zip(reports, keys):
            t, state = r.t, r.state
            flow = cache.get(key)
            if flow is None:
                if not next_id:
                    next_id = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM flows").fetchone()[0]) + 1
                exp, act = r.exp, r.act
                flow = Flow(next_id, exp, act, "active", None, 0, 0, r.reporter, t, r.app, t, t,
                            FlowReports(r.start))
                new[next_id] = (key, flow)
                next_id += 1
                cache[key] = flow
                tag = (exp, act)
                started[tag] = started.get(tag, 0) + 1
                active[tag] = active.get(tag, 0) + 1
                mk = (int(r.start // MINUTE) * MINUTE, exp, act)
                cur = minutes.get(mk)
                if cur is None:
                    minutes[mk] = [0, 1]
                else:
                    cur[1] += 1
                pk = (int(r.start // PAIR_BUCKET) * PAIR_BUCKET, r.src, r.dst, exp, act)
                cur = pairs.get(pk)
                if cur is None:
                    pairs[pk] = [0, 1]
                else:
                    cur[1] += 1
                flow.seen.add((state, t, r.sent, r.received))
            else:
                ident = (state, t, r.sent, r.received)
                if ident in flow.seen or (t < flow.reports.base_t and flow.known(ident, db)):
                    outcomes["duplicate"] = outcomes.get("duplicate", 0) + 1
                    # a relay's copy counts once, but its reporter competes as any other (the
                    # earliest report's, then the smallest): so the order of arrival cannot matter
                    if r.t == flow.reporter_t and r.reporter < flow.reporter:
                        flow.reporter = r.reporter
                        flow.changed |= ORIGIN
                        dirty[flow.id] = flow
                    continue
                exp, act = flow.exp, flow.act
                if r.exp != exp or r.act != act:
                    res.tag_conflicts += 1
                flow.remember(ident)
                dirty[flow.id] = flow
            new_fireflies.append((flow.id, t, state, r.sent, r.received, r.hostname, r.sender, r.at))
            outcomes[state] = outcomes.get(state, 0) + 1
            # the report's effect on its flow: totals, state, first reporter, bytes in time
            changed = flow.changed
            sent, received = r.sent, r.received
            if sent > flow.sent:
                flow.sent = sent
                changed |= TOTALS
            if received > flow.received:
                flow.received = received
                changed |= TOTALS
            if t > flow.last:
                flow.last = t
                changed |= TOTALS
            # deterministic whatever the arrival order: the earliest report's reporter and application
            if t < flow.reporter_t or (t == flow.reporter_t and r.reporter < flow.reporter):
                flow.reporter_t, flow.reporter = t, r.reporter
                changed |= ORIGIN
            if r.app and (not flow.app or t < flow.app_t or (t == flow.app_t and r.app < flow.app)):
                flow.app_t, flow.app = t, r.app
                changed |= ORIGIN
            if state == "end":
                if flow.end is None or t > flow.end:
                    flow.end = t
                    changed |= STATE
                if flow.state != "ended":
                    tag = (exp, act)
                    if flow.state == "active":
                        active[tag] = active.get(tag, 0) - 1
                    res.add(res.ended, tag)
                    flow.state = "ended"
                    changed |= STATE
            elif flow.state == "expired" and t > (flow.end or 0):
                # a report after it was closed for silence: it was alive after all
                flow.state, flow.end = "active", None
                res.add(active, (exp, act))
                changed |= STATE
            flow.changed = changed
            reports_ = flow.reports
            before = reports_.clamped
            m = reports_.add(t, sent + received)
            if not m:
                continue
            res.clamped += reports_.clamped - before
            total = 0
            days: Dict[int, int] = {}
            for minute, n in m.items():
                b = minute * MINUTE
                k = (b, exp, act)
                cur = minutes.get(k)
                if cur is None:
                    minutes[k] = [n, 0]
                else:
                    cur[0] += n
                total += n
                d = b - b % PAIR_BUCKET
                days[d] = days.get(d, 0) + n
            if total:
                tag = (exp, act)
                nbytes[tag] = nbytes.get(tag, 0) + total
            for d, n in days.items():
                if not n:
                    continue
                pk = (d, key[1], key[3], exp, act)
                cur = pairs.get(pk)
                if cur is None:
                    pairs[pk] = [n, 0]
                else:
                    cur[0] += n
        silent = time.time() - self.active_timeout
        for _, f in new.values():
            self._expire_silent(f, silent, res)
        for f in dirty.values():
            self._expire_silent(f, silent, res)
        if new:
            db.executemany(INSERT_FLOW, [(fid, *key, f.end, f.exp, f.act, f.app, f.reporter, f.sent, f.received,
                                          f.state, f.last) for fid, (key, f) in new.items()])
            for _, f in new.values():
                f.changed = 0
        if new_fireflies:
            db.executemany("INSERT INTO fireflies VALUES (?, ?, ?, ?, ?, ?, ?, ?)", new_fireflies)
        if minutes:
            rows = [(b, e, a, v[0], v[1]) for (b, e, a), v in minutes.items() if v[0] or v[1]]
            db.executemany(ADD.format(table="traffic"), rows)
            hourly: Dict[Tuple[int, int, int], List[int]] = {}
            for b, e, a, nb, nf in rows:
                cur = hourly.setdefault((b // HOUR * HOUR, e, a), [0, 0])
                cur[0] += nb
                cur[1] += nf
            db.executemany(ADD.format(table="traffic_hour"), [(*k, v[0], v[1]) for k, v in hourly.items()])
        if pairs:
            db.executemany(ADD_PAIR, [(*k, v[0], v[1]) for k, v in pairs.items() if v[0] or v[1]])
        if dirty:
            self._write_changed([f for fid, f in dirty.items() if fid not in new])
        db.execute("COMMIT")
        self._trim_cache()
        return res

    def _uncached_bound(self) -> float:
        """The latest start among flows the file may hold beyond memory (inside the write
        transaction, so no other writer can add one meanwhile)."""
        db = self.db
        version = int(db.execute("PRAGMA data_version").fetchone()[0])
        if self._uncached is None or version != self._data_version:  # unknown, or another process wrote
            latest = db.execute("SELECT MAX(start) FROM flows").fetchone()[0]
            latest = float("-inf") if latest is None else float(latest)
            self._uncached = latest if self._uncached is None else max(self._uncached, latest)
            self._data_version = version
        return self._uncached

    @staticmethod
    def _expire_silent(f: Flow, silent: float, res: IngestResult) -> None:
        if f.state == "active" and f.last < silent:  # already silent for activeTimeout by its own times
            f.state, f.end = "expired", f.last
            f.changed |= STATE
            res.add(res.active, (f.exp, f.act), -1)
            res.add(res.expired, (f.exp, f.act))

    def _write_changed(self, flows: List[Flow]) -> None:
        """Rewrite what changed in known flows' rows, by the narrowest statement that covers it."""
        totals: List[Tuple[Any, ...]] = []
        states: List[Tuple[Any, ...]] = []
        full: List[Tuple[Any, ...]] = []
        for f in flows:
            c = f.changed
            if not c:
                continue
            if c & ORIGIN:
                full.append((f.end, f.state, f.sent, f.received, f.last, f.reporter, f.app, f.id))
            elif c & STATE:
                states.append((f.end, f.state, f.sent, f.received, f.last, f.id))
            else:
                totals.append((f.sent, f.received, f.last, f.id))
            f.changed = 0
        db = self.db
        if totals:
            db.executemany(UPDATE_TOTALS, totals)
        if states:
            db.executemany(UPDATE_STATE, states)
        if full:
            db.executemany(UPDATE_FLOW, full)

    def _load(self, keys: set[FlowKey]) -> None:
        """Flows of this batch not in memory: those the file has come back into memory (rare:
        after a restart, or beyond the cache); the rest are new. Through a temporary table
        joined on the unique index: a row-value IN list makes SQLite scan the whole index."""
        db = self.db
        db.execute("CREATE TEMP TABLE IF NOT EXISTS batch_keys (proto TEXT, src TEXT, sport INTEGER, dst TEXT, "
                   "dport INTEGER, start REAL)")
        db.execute("DELETE FROM batch_keys")
        db.executemany("INSERT INTO batch_keys VALUES (?, ?, ?, ?, ?, ?)", keys)
        found = db.execute(
            "SELECT f.proto, f.src, f.sport, f.dst, f.dport, f.start FROM batch_keys k CROSS JOIN flows f ON "
            "f.proto = k.proto AND f.src = k.src AND f.sport = k.sport AND f.dst = k.dst AND f.dport = k.dport "
            "AND f.start = k.start").fetchall()
        for proto, src, sport, dst, dport, start in found:
            self._flow((proto, src, sport, dst, dport, start))

    def _flow(self, key: FlowKey) -> Optional[Flow]:
        cached = self.cache.get(key)
        if cached is not None:
            self.cache.move_to_end(key)
            return cached
        row = self.db.execute(
            "SELECT id, exp, act, state, end, sent, received, reporter, app, last FROM flows WHERE proto = ? AND "
            "src = ? AND sport = ? AND dst = ? AND dport = ? AND start = ?", key).fetchone()
        if row is None:
            return None
        fid, exp, act, state, end, sent, received, reporter, app, last = row
        kept = self.db.execute("SELECT t, sent, received, state FROM fireflies WHERE flow = ? ORDER BY t DESC "
                               "LIMIT ?", (fid, KEEP)).fetchall()
        floor, floor_t = 0, None
        if len(kept) == KEEP:  # more are stored: the older ones become the base
            older = self.db.execute("SELECT MAX(sent + received), MAX(t) FROM fireflies WHERE flow = ? AND t < ?",
                                    (fid, kept[-1][0])).fetchone()
            if older[0] is not None:
                floor, floor_t = older
        elif not kept:  # a flow from before fireflies were kept (schema 1): its bytes are the base
            floor, floor_t = sent + received, last
        reports = FlowReports(key[5], [(t, s + r) for t, s, r, _ in kept], floor, floor_t)
        first = self.db.execute("SELECT t FROM fireflies WHERE flow = ? ORDER BY t LIMIT 1", (fid,)).fetchone()
        t0 = first[0] if first else key[5]
        flow = Flow(fid, exp, act, state, end, sent, received, reporter or "", t0, app, t0, last or key[5], reports,
                    {(st, t, s, r) for t, s, r, st in kept})
        self.cache[key] = flow
        return flow

    def _trim_cache(self) -> None:
        cache = self.cache
        if len(cache) <= self.cache_size:
            return
        latest = self._uncached if self._uncached is not None else float("-inf")
        while len(cache) > self.cache_size:
            key, _ = cache.popitem(last=False)
            if key[5] > latest:
                latest = key[5]
        if self._uncached is not None:
            self._uncached = latest

    # --- expiry, retention ------------------------------------------------------------------

    def expire(self, now: float, max_active: int) -> IngestResult:
        """Close active flows silent for activeTimeout by their own event times (so a restart
        changes nothing), and the longest-silent ones beyond `max_active`."""
        res = IngestResult()
        with self._lock:
            db = self.db
            try:
                db.execute("BEGIN")
                rows = db.execute("SELECT id, exp, act, last FROM flows WHERE state = 'active' AND last < ? "
                                  "LIMIT 100000", (now - self.active_timeout,)).fetchall()
                n_active = db.execute("SELECT COUNT(*) FROM flows WHERE state = 'active'").fetchone()[0] - len(rows)
                over = n_active - max_active
                if over > 0:
                    extra = db.execute("SELECT id, exp, act, last FROM flows WHERE state = 'active' AND last >= ? "
                                       "ORDER BY last LIMIT ?", (now - self.active_timeout, over)).fetchall()
                    res.evicted = len(extra)
                    rows += extra
                db.executemany("UPDATE flows SET state = 'expired', end = last WHERE id = ?", [(r[0],) for r in rows])
                db.execute("COMMIT")
            except sqlite3.Error as e:
                self._abort()
                raise StoreFull(str(e)) from None
            gone = {r[0] for r in rows}
            for k in [k for k, f in self.cache.items() if f.id in gone]:
                f = self.cache[k]
                f.state, f.end = "expired", f.last
            for _id, exp, act, _last in rows:
                res.add(res.expired, (exp, act))
                res.add(res.active, (exp, act), -1)
        return res

    def pin(self, lo: float, hi: float, note: str) -> None:
        """Exempt [lo, hi] from retention (`collector import --keep`)."""
        with self._lock:
            self.db.execute("INSERT INTO pins VALUES (?, ?, ?)", (lo, hi, note))
            self.pinned.append((lo, hi))

    def retention(self, before: float) -> int:
        """Drop flows whose last activity is before `before` (with their fireflies) and older
        aggregates, except pinned ranges. In slices, so readers never wait long."""
        pins = " ".join(f"AND NOT ({{col}} BETWEEN {lo!r} AND {hi!r})" for lo, hi in self.pinned)
        gone = 0
        with self._lock:
            db = self.db
            while True:
                db.execute("BEGIN")
                ids = [r[0] for r in db.execute(
                    f"SELECT id FROM flows WHERE COALESCE(end, last, start) < ? {pins.format(col='start')} LIMIT 5000",
                    (before,))]
                if ids:
                    marks = ",".join("?" * len(ids))
                    db.execute(f"DELETE FROM fireflies WHERE flow IN ({marks})", ids)
                    db.execute(f"DELETE FROM flows WHERE id IN ({marks})", ids)
                db.execute("COMMIT")
                gone += len(ids)
                if len(ids) < 5000:
                    break
            db.execute("BEGIN")
            for table, width in (("traffic", MINUTE), ("traffic_hour", HOUR), ("pairs", PAIR_BUCKET),
                                 *linktables.RETAINED):
                db.execute(f"DELETE FROM {table} WHERE bucket < ? {pins.format(col='bucket')}",
                           (int(before) // width * width,))
            db.execute("COMMIT")
            if gone:
                self.cache.clear()  # some of them may be gone: read back what is needed
                self._uncached = None
        return gone

    # --- queries ----------------------------------------------------------------------------

    def _where(self, start: float, end: float, exp: Optional[int], act: Optional[int],
               host: Optional[str], state: Optional[str]) -> Tuple[str, List[Any]]:
        clauses = ["start < ?", "(end IS NULL OR end >= ?)"]
        args: List[Any] = [end, start]
        if exp is not None:
            clauses.append("exp = ?")
            args.append(exp)
        if act is not None:
            clauses.append("act = ?")
            args.append(act)
        if host:
            sql, hargs = _host_filter(host)
            clauses.append(sql)
            args += hargs
        if state:
            clauses.append("state = ?")
            args.append(state)
        return " AND ".join(clauses), args

    def flows(self, start: float, end: float, exp: Optional[int] = None, act: Optional[int] = None,
              host: Optional[str] = None, state: Optional[str] = None,
              limit: int = 100) -> List[Dict[str, Any]]:
        cols = ', '.join(FLOW_COLUMNS)
        with self._lock:
            if exp is not None and act is None and not host:
                rows = self._flows_of_experiment(cols, start, end, exp, state, limit)
            else:
                where, args = self._where(start, end, exp, act, host, state)
                rows = self.db.execute(f"SELECT {cols} FROM flows WHERE {where} ORDER BY start DESC LIMIT ?",
                                       [*args, limit]).fetchall()
        return [dict(zip(FLOW_COLUMNS, r)) for r in rows]

    def _flows_of_experiment(self, cols: str, start: float, end: float, exp: int, state: Optional[str],
                             limit: int) -> List[Tuple[Any, ...]]:
        """One experiment's latest flows, activity by activity: flows_tag (exp, act, start) gives
        each activity's flows in start order, but one experiment's only sorted by activity first,
        so a single query sorted all of them (218 ms for 100,000 of 1,000,000 flows); a query per
        activity reads `limit` rows from each (the activities found by skipping through the index)."""
        acts = [a for (a,) in self.db.execute(
            "WITH RECURSIVE a(act) AS (SELECT MIN(act) FROM flows WHERE exp = ?1 UNION ALL "
            "SELECT (SELECT MIN(act) FROM flows WHERE exp = ?1 AND act > a.act) FROM a WHERE a.act IS NOT NULL) "
            "SELECT act FROM a WHERE act IS NOT NULL", (exp,))]
        rows: List[Tuple[Any, ...]] = []
        for a in acts:
            where, args = self._where(start, end, exp, a, None, state)
            rows += self.db.execute(f"SELECT {cols} FROM flows WHERE {where} ORDER BY start DESC LIMIT ?",
                                    [*args, limit]).fetchall()
        i = FLOW_COLUMNS.index("start")
        rows.sort(key=lambda r: r[i], reverse=True)
        return rows[:limit]

    def active(self, limit: int) -> Tuple[List[Dict[str, Any]], int]:
        with self._lock:
            rows = self.db.execute(f"SELECT {', '.join(FLOW_COLUMNS)} FROM flows WHERE state = 'active' "
                                   "ORDER BY start DESC LIMIT ?", (limit,)).fetchall()
            n = self.db.execute("SELECT COUNT(*) FROM flows WHERE state = 'active'").fetchone()[0]
        return [dict(zip(FLOW_COLUMNS, r)) for r in rows], int(n)

    def active_by_tag(self) -> Dict[Tag, int]:
        with self._lock:
            return {(e, a): n for e, a, n in self.db.execute(
                "SELECT exp, act, COUNT(*) FROM flows WHERE state = 'active' GROUP BY exp, act")}

    def timeseries(self, start: float, end: float, step: int, exp: Optional[int] = None,
                   act: Optional[int] = None, host: Optional[str] = None,
                   measure: str = "bytes") -> List[Tuple[int, int, int]]:
        """(bucket, key, bytes or flows started): key is the experiment, or the activity when
        `exp` is given."""
        col = "flows" if measure == "flows" else "bytes"
        key = "act" if exp is not None else "exp"
        tag_sql, tag_args = _tag_filter(exp, act)
        args: List[Any]
        if host:
            hcol = "1" if measure == "flows" else "sent + received"
            hsql, hargs = _host_filter(host)
            q = (f"SELECT (CAST(COALESCE(end, start) AS INTEGER) / ?) * ?, {key}, SUM({hcol}) FROM flows "
                 f"WHERE {hsql} AND COALESCE(end, start) >= ? "
                 f"AND COALESCE(end, start) < ?{tag_sql} GROUP BY 1, 2 HAVING SUM({hcol}) > 0 ORDER BY 1")
            args = [step, step, *hargs, start, end, *tag_args]
        else:
            table, width = ("traffic_hour", HOUR) if end - start > LONG_RANGE and step % HOUR == 0 \
                else ("traffic", MINUTE)
            q = (f"SELECT (bucket / ?) * ?, {key}, SUM({col}) FROM {table} "
                 f"WHERE bucket >= ? AND bucket < ?{tag_sql} GROUP BY 1, 2 HAVING SUM({col}) > 0 ORDER BY 1")
            args = [step, step, int(start // width) * width, end, *tag_args]
        with self._lock:
            return [(int(r[0]), int(r[1]), int(r[2])) for r in self.db.execute(q, args)]

    def totals(self, by: str, start: float, end: float, exp: Optional[int] = None,
               act: Optional[int] = None, host: Optional[str] = None,
               limit: int = 50) -> List[Dict[str, Any]]:
        extra, args = _tag_filter(exp, act)
        if by == "pair" or host:
            if host:
                extra += " AND (src = ? OR dst = ?)"
                args += [host, host]
            cols = {"pair": "src, dst", "experiment": "exp", "activity": "exp, act"}[by]
            nbytes = len(cols.split(",")) + 1  # the SUM(bytes) column, by position
            q = (f"SELECT {cols}, SUM(bytes), SUM(flows) FROM pairs WHERE bucket >= ? AND bucket < ?"
                 f"{extra} GROUP BY {cols} ORDER BY {nbytes} DESC LIMIT ?")
            lo = int(start // PAIR_BUCKET) * PAIR_BUCKET
        else:
            cols = {"experiment": "exp", "activity": "exp, act"}[by]
            table, width = ("traffic_hour", HOUR) if end - start > LONG_RANGE else ("traffic", MINUTE)
            q = (f"SELECT {cols}, SUM(bytes), SUM(flows) FROM {table} WHERE bucket >= ? AND bucket < ?{extra} "
                 f"GROUP BY {cols} ORDER BY {len(cols.split(','))+1} DESC, {len(cols.split(','))+2} DESC LIMIT ?")
            lo = int(start // width) * width
        with self._lock:
            rows = self.db.execute(q, [lo, end, *args, limit]).fetchall()
        names = {"pair": ["src", "dst"], "experiment": ["exp"], "activity": ["exp", "act"]}[by]
        out = []
        for r in rows:
            d = dict(zip(names, r))
            d["bytes"] = r[len(names)]
            if len(r) > len(names) + 1:
                d["flows"] = r[len(names) + 1]
            out.append(d)
        return out

    def extent(self) -> Tuple[Optional[float], Optional[float]]:
        with self._lock:
            lo, hi = self.db.execute("SELECT MIN(start), MAX(COALESCE(end, last, start)) FROM flows").fetchone()
        return lo, hi

    def count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM flows").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # --- the rest of the Store interface: nothing to do for an embedded file ----------------

    kind = "sqlite"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def stats(self) -> StoreStats:
        return StoreStats()

    def maintain(self) -> None:
        pass

    # --- links (router flow exports; the SQL is in links.py) ------------------------------

    def ingest_links(self, rows: Sequence[Row], paths: Sequence[PathRow] = ()) -> None:
        """Add link deltas in one transaction; StoreFull (nothing written) when it cannot."""
        with self._lock:
            try:
                self.db.execute("BEGIN")
                linktables.write(self.db, rows, paths)
                self.db.execute("COMMIT")
            except sqlite3.Error as e:
                self._abort()
                raise StoreFull(str(e)) from None

    def links(self, start: float, end: float, exporter: Optional[str] = None, domain: Optional[int] = None,
              iface: Optional[int] = None, direction: Optional[int] = None,
              limit: int = 100) -> List[Dict[str, Any]]:
        with self._lock:
            return linktables.links(self.db, start, end, exporter, domain, iface, direction, limit)

    def link_timeseries(self, start: float, end: float, step: int, exporter: Optional[str] = None,
                        domain: Optional[int] = None, iface: Optional[int] = None, direction: Optional[int] = None,
                        exp: Optional[int] = None, measure: str = "bytes") -> List[Tuple[int, int, int, int]]:
        with self._lock:
            return linktables.link_timeseries(self.db, start, end, step, exporter, domain, iface, direction, exp,
                                              measure)

    def paths(self, flows: Sequence[Tuple[str, str, int, str, int, float, Optional[float]]]
              ) -> List[List[Dict[str, Any]]]:
        with self._lock:
            return linktables.paths_for(self.db, flows)


def _host_filter(host: str) -> Tuple[str, List[Any]]:
    """`host=`: an address matches either end of a flow, a name its reporter (the rule of both
    stores: a reporter's address is a relay's or the flow's own end)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "reporter = ?", [host]
    return "(src = ? OR dst = ?)", [host, host]


def _tag_filter(exp: Optional[int], act: Optional[int]) -> Tuple[str, List[Any]]:
    sql, args = "", []
    if exp is not None:
        sql += " AND exp = ?"
        args.append(exp)
    if act is not None:
        sql += " AND act = ?"
        args.append(act)
    return sql, args
