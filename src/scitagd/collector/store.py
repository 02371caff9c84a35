"""Where accounted flows live. `Store` is the interface the rest of the collector uses, so a
scale-out backend (ClickHouse, OpenSearch) can be added beside SQLiteStore without touching it.

SQLite: one file, WAL, writes batched in one transaction per flush, and two pre-aggregated
tables (bytes and flows per minute per experiment/activity; per day per host pair) so that the
dashboard's queries read thousands of rows, not the million flows under them. A time series for
one host comes from its flows (indexed by address), their bytes counted at their end.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

__all__ = [
    "FLOW_COLUMNS",
    "LONG_RANGE",
    "PAIR_BUCKET",
    "SCHEMA",
    "UPSERT_FLOW",
    "UPSERT_PAIR",
    "UPSERT_TRAFFIC",
    "UPSERT_TRAFFIC_HOUR",
    "SQLiteStore",
    "Store",
    "spread",
]

MINUTE, HOUR, DAY = 60, 3600, 86400
LONG_RANGE = 2 * DAY  # longer ranges read the hourly roll-up: 60x fewer rows
PAIR_BUCKET = DAY  # host pairs per day: the top-talker query reads days, not hours

FlowRow = Tuple[Any, ...]  # see FLOW_COLUMNS
FLOW_COLUMNS = ("proto", "src", "sport", "dst", "dport", "start", "end", "exp", "act", "app",
                "reporter", "sent", "received", "state")


class Store(Protocol):
    def write(self, flows: Sequence[FlowRow], traffic: Dict[Tuple[int, int, int], Tuple[int, int]],
              pairs: Dict[Tuple[int, str, str, int, int], Tuple[int, int]]) -> None: ...
    def flows(self, start: float, end: float, exp: Optional[int] = None, act: Optional[int] = None,
              host: Optional[str] = None, state: Optional[str] = None,
              limit: int = 100) -> List[Dict[str, Any]]: ...
    def timeseries(self, start: float, end: float, step: int, exp: Optional[int] = None,
                   act: Optional[int] = None, host: Optional[str] = None,
                   measure: str = "bytes") -> List[Tuple[int, int, int]]: ...
    def totals(self, by: str, start: float, end: float, exp: Optional[int] = None,
               act: Optional[int] = None, host: Optional[str] = None,
               limit: int = 50) -> List[Dict[str, Any]]: ...
    def extent(self) -> Tuple[Optional[float], Optional[float]]: ...
    def expire(self, before: float) -> int: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS flows (
  id INTEGER PRIMARY KEY,
  proto TEXT NOT NULL, src TEXT NOT NULL, sport INTEGER NOT NULL, dst TEXT NOT NULL,
  dport INTEGER NOT NULL, start REAL NOT NULL, end REAL, exp INTEGER NOT NULL,
  act INTEGER NOT NULL, app TEXT, reporter TEXT, sent INTEGER NOT NULL DEFAULT 0,
  received INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,
  UNIQUE (proto, src, sport, dst, dport, start)
);
CREATE INDEX IF NOT EXISTS flows_start ON flows (start);
CREATE INDEX IF NOT EXISTS flows_end ON flows (end);
CREATE INDEX IF NOT EXISTS flows_tag ON flows (exp, act, start);
CREATE INDEX IF NOT EXISTS flows_src ON flows (src, start);
CREATE INDEX IF NOT EXISTS flows_dst ON flows (dst, start);
CREATE INDEX IF NOT EXISTS flows_reporter ON flows (reporter, start);
CREATE INDEX IF NOT EXISTS flows_state ON flows (state) WHERE state = 'active';
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
"""

UPSERT_FLOW = """
INSERT INTO flows (proto, src, sport, dst, dport, start, end, exp, act, app, reporter, sent,
                   received, state)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (proto, src, sport, dst, dport, start) DO UPDATE SET
  end = COALESCE(excluded.end, end),
  sent = MAX(sent, excluded.sent), received = MAX(received, excluded.received),
  state = CASE WHEN state = 'active' THEN excluded.state ELSE state END,
  app = COALESCE(excluded.app, app)
"""
UPSERT_TRAFFIC = """
INSERT INTO traffic (bucket, exp, act, bytes, flows) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (bucket, exp, act) DO UPDATE SET bytes = bytes + excluded.bytes,
  flows = flows + excluded.flows
"""
UPSERT_TRAFFIC_HOUR = UPSERT_TRAFFIC.replace("traffic", "traffic_hour")
UPSERT_PAIR = """
INSERT INTO pairs (bucket, src, dst, exp, act, bytes, flows) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (bucket, src, dst, exp, act) DO UPDATE SET bytes = bytes + excluded.bytes,
  flows = flows + excluded.flows
"""


def spread(start: float, end: float, nbytes: int, width: int) -> Dict[int, int]:
    """A flow's bytes over the `width`-second buckets it spans, in proportion to the overlap."""
    if nbytes <= 0:
        return {}
    if end <= start:
        return {int(start // width) * width: nbytes}
    out: Dict[int, int] = {}
    dur = end - start
    b = int(start // width) * width
    given = 0
    while b < end:
        overlap = min(end, b + width) - max(start, b)
        share = int(nbytes * overlap / dur)
        out[b] = share
        given += share
        b += width
    last = max(out)
    out[last] += nbytes - given  # rounding: the total is exact
    return out


def _tag_filter(exp: Optional[int], act: Optional[int]) -> Tuple[str, List[Any]]:
    sql, args = "", []
    if exp is not None:
        sql += " AND exp = ?"
        args.append(exp)
    if act is not None:
        sql += " AND act = ?"
        args.append(act)
    return sql, args


class SQLiteStore:
    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses no commit's integrity
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        check = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"{path}: integrity check failed: {check}")

    def write(self, flows: Sequence[FlowRow], traffic: Dict[Tuple[int, int, int], Tuple[int, int]],
              pairs: Dict[Tuple[int, str, str, int, int], Tuple[int, int]]) -> None:
        with self._lock:
            db = self.db
            db.execute("BEGIN")
            try:
                if flows:
                    db.executemany(UPSERT_FLOW, flows)
                if traffic:
                    db.executemany(UPSERT_TRAFFIC, [(*k, v[0], v[1]) for k, v in traffic.items()])
                    hourly: Dict[Tuple[int, int, int], List[int]] = {}
                    for (b, e, a), (nb, nf) in traffic.items():
                        cur = hourly.setdefault((b // HOUR * HOUR, e, a), [0, 0])
                        cur[0] += nb
                        cur[1] += nf
                    db.executemany(UPSERT_TRAFFIC_HOUR, [(*k, v[0], v[1]) for k, v in hourly.items()])
                if pairs:
                    db.executemany(UPSERT_PAIR, [(*k, v[0], v[1]) for k, v in pairs.items()])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

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
            clauses.append("(src = ? OR dst = ? OR reporter = ?)")
            args += [host, host, host]
        if state:
            clauses.append("state = ?")
            args.append(state)
        return " AND ".join(clauses), args

    def flows(self, start: float, end: float, exp: Optional[int] = None, act: Optional[int] = None,
              host: Optional[str] = None, state: Optional[str] = None,
              limit: int = 100) -> List[Dict[str, Any]]:
        where, args = self._where(start, end, exp, act, host, state)
        order = "start DESC"
        q = f"SELECT {', '.join(FLOW_COLUMNS)} FROM flows WHERE {where} ORDER BY {order} LIMIT ?"
        with self._lock:
            rows = self.db.execute(q, [*args, limit]).fetchall()
        return [dict(zip(FLOW_COLUMNS, r)) for r in rows]

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
            q = (f"SELECT (CAST(COALESCE(end, start) AS INTEGER) / ?) * ?, {key}, SUM({hcol}) FROM flows "
                 f"WHERE (src = ? OR dst = ? OR reporter = ?) AND COALESCE(end, start) >= ? "
                 f"AND COALESCE(end, start) < ?{tag_sql} GROUP BY 1, 2 HAVING SUM({hcol}) > 0 ORDER BY 1")
            args = [step, step, host, host, host, start, end, *tag_args]
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
            lo, hi = self.db.execute("SELECT MIN(start), MAX(COALESCE(end, start)) FROM flows").fetchone()
        return lo, hi

    def count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM flows").fetchone()[0])

    def expire(self, before: float) -> int:
        """Retention: drop flows that ended before `before`, and older aggregates."""
        with self._lock:
            db = self.db
            db.execute("BEGIN")
            n = db.execute("DELETE FROM flows WHERE end IS NOT NULL AND end < ?", (before,)).rowcount
            db.execute("DELETE FROM traffic WHERE bucket < ?", (int(before),))
            db.execute("DELETE FROM traffic_hour WHERE bucket < ?", (int(before) // HOUR * HOUR,))
            db.execute("DELETE FROM pairs WHERE bucket < ?", (int(before),))
            db.execute("COMMIT")
        return int(n)

    def close(self) -> None:
        with self._lock:
            self.db.close()

