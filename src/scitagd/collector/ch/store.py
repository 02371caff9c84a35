"""ClickHouseStore: the read side of the SQLiteStore interface (flows, timeseries, totals,
extent, count, expire) over the ClickHouse schema, same arguments, same return shapes.

Aggregates are read with -Merge and GROUP BY, never FINAL. Flow state is derived at read time:
`ended` when an end firefly exists (end = its end-time), `expired` when none came within
`active_timeout` of the last report (end = that report's time), else `active` (end None)."""

from __future__ import annotations

import ipaddress
import math
import time
from typing import Any, Dict, List, Optional, Tuple

from ..store import DAY, HOUR, LONG_RANGE, MINUTE
from .client import ClickHouseError, Client, query
from .rows import addr16, addr_text
from .schema import DAY_TABLES, SCHEMA_VERSION, _ident, ddl

FLOW_WINDOWS = (HOUR, 6 * HOUR, DAY, 7 * DAY, 31 * DAY)  # newest flows first, widened as needed
HOST_SERIES_LOOKBACK = 7 * DAY  # a host's series counts flows that started at most this long before `from`
_FLOW_COLS = ("proto", "src", "sport", "dst", "dport", "start", "end", "exp", "act", "app", "reporter",
              "sent", "received", "state")


def _q(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fs(ip: str) -> str:
    return f"unhex('{addr16(ip).hex()}')"


def _t(x: float) -> int:
    """Epoch seconds rounded up, within DateTime's range (1970..2106)."""
    return min(max(0, math.ceil(x)), (1 << 32) - 1)


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


class ClickHouseStore:
    def __init__(self, client: Client, database: str = "scitagd", active_timeout: float = 86400.0,
                 create: bool = True) -> None:
        self.c = client
        self.db = _ident(database)
        self.active_timeout = active_timeout
        self.check_schema(create)

    # --- schema ---------------------------------------------------------------------------

    def check_schema(self, create: bool = True) -> None:
        """Create the single-node schema when the database has none; refuse a different version."""
        have = query(self.c, f"SELECT count() FROM system.tables WHERE database = {_q(self.db)} "
                             "AND name = 'schema_version'")[0][0]
        if not int(have):
            if not create:
                raise ClickHouseError(f"database {self.db}: no scitagd schema (run `scitagd collector schema`)")
            for stmt in ddl(self.db):
                self.c.execute(stmt)
        rows = query(self.c, f"SELECT max(version) FROM {self.db}.schema_version")
        v = int(rows[0][0]) if rows else 0
        if v != SCHEMA_VERSION:
            raise ClickHouseError(f"database {self.db}: schema version {v}, this scitagd needs {SCHEMA_VERSION}")

    # --- flows ----------------------------------------------------------------------------

    def _flow_select(self, where: List[str], having: List[str], now_us: int) -> str:
        db = self.db
        exp_before = now_us - int(self.active_timeout * 1e6)
        return f"""
SELECT proto, hex(src), sport, hex(dst), dport, toUInt32(start), start_frac, exp, act,
  argMinMerge(app) AS app_, argMinMerge(reporter) AS rep, maxMerge(sent) AS s, maxMerge(received) AS r,
  maxMerge(end_t) AS e, maxMerge(last_t) AS l,
  if(e > 0, 'ended', if(l < {exp_before}, 'expired', 'active')) AS st,
  if(e > 0, e, if(l < {exp_before}, l, toUInt64(0))) AS fin,
  toUInt64(start) * 1000000 + start_frac AS sus
FROM {db}.flows WHERE {" AND ".join(where)}
GROUP BY start, src, dst, sport, dport, proto, start_frac, exp, act
{"HAVING " + " AND ".join(having) if having else ""}"""

    def _flow_filters(self, exp: Optional[int], act: Optional[int], host: Optional[str],
                      state: Optional[str]) -> Tuple[List[str], List[str]]:
        where, having = [], []
        if exp is not None:
            where.append(f"exp = {int(exp)}")
        if act is not None:
            where.append(f"act = {int(act)}")
        if host:
            # the reporter is an aggregate: the address test and it are one OR, after the merge
            alts = [f"rep = {_q(host)}"]
            if _is_ip(host):
                alts += [f"src = {_fs(host)}", f"dst = {_fs(host)}"]
            having.append("(" + " OR ".join(alts) + ")")
        if state:
            having.append(f"st = {_q(state)}")
        return where, having

    def _flow_dict(self, r: List[Any]) -> Dict[str, Any]:
        (proto, src, sport, dst, dport, start, frac, exp, act, app, rep, s, rc, _e, _l, st, fin, _sus) = r
        return {"proto": proto, "src": addr_text(bytes.fromhex(src)), "sport": int(sport),
                "dst": addr_text(bytes.fromhex(dst)), "dport": int(dport), "start": int(start) + int(frac) / 1e6,
                "end": fin / 1e6 if fin else None, "exp": int(exp), "act": int(act), "app": app or None,
                "reporter": rep or None, "sent": s, "received": rc, "state": st}

    def flows(self, start: float, end: float, exp: Optional[int] = None, act: Optional[int] = None,
              host: Optional[str] = None, state: Optional[str] = None,
              limit: int = 100) -> List[Dict[str, Any]]:
        """Newest first, like SQLite's; read window by window back from `end` until `limit`."""
        now_us = int(time.time() * 1e6)
        where0, having = self._flow_filters(exp, act, host, state)
        having = [*having, f"(fin = 0 OR fin >= {int(start * 1e6)})"]
        hi = _t(end)
        out: List[Dict[str, Any]] = []
        prev = hi
        for w in (*FLOW_WINDOWS, None):
            lo = 0 if w is None else max(0, hi - w)
            if lo >= prev:
                continue
            where = [*where0, f"start >= toDateTime({lo})", f"start < toDateTime({prev})"]
            if prev == hi:
                where[-1] = f"toUInt64(start) * 1000000 + start_frac < {int(min(end, 1 << 32) * 1e6)}"
                where.append(f"start < toDateTime({prev})")
            sql = (self._flow_select(where, having, now_us) +
                   f" ORDER BY start DESC, start_frac DESC LIMIT {int(limit) - len(out)}")
            out += [self._flow_dict(r) for r in query(self.c, sql)]
            if len(out) >= limit or lo == 0:
                break
            prev = lo
        return out

    # --- series and totals --------------------------------------------------------------

    def timeseries(self, start: float, end: float, step: int, exp: Optional[int] = None,
                   act: Optional[int] = None, host: Optional[str] = None,
                   measure: str = "bytes") -> List[Tuple[int, int, int]]:
        step = int(step)
        key = "act" if exp is not None else "exp"
        tags = "".join(f" AND {k} = {int(v)}" for k, v in (("exp", exp), ("act", act)) if v is not None)
        if host:
            where, having = self._flow_filters(exp, act, host, None)
            where.append(f"start >= toDateTime({max(0, int(start) - HOST_SERIES_LOOKBACK)})")
            where.append(f"start < toDateTime({_t(end)})")
            val = "1" if measure == "flows" else "s + r"
            inner = self._flow_select(where, having, int(time.time() * 1e6))
            sql = (f"SELECT intDiv(intDiv(ts, 1000000), {step}) * {step} AS b, {key}, sum(v) AS n FROM ("
                   f"SELECT {key}, {val} AS v, if(fin > 0, fin, sus) AS ts "
                   f"FROM ({inner})) WHERE ts >= {int(start * 1e6)} AND ts < {int(min(end, 1 << 32) * 1e6)} "
                   f"GROUP BY b, {key} HAVING n > 0 ORDER BY b, {key}")
        else:
            col = "flows" if measure == "flows" else "bytes"
            table, width = (("traffic_hour", HOUR) if end - start > LONG_RANGE and step % HOUR == 0
                            else ("traffic_minute", MINUTE))
            lo = int(start // width) * width
            sql = (f"SELECT intDiv(toUInt32(bucket), {step}) * {step} AS b, {key}, sum({col}) AS n "
                   f"FROM {self.db}.{table} WHERE bucket >= toDateTime({lo}) AND bucket < toDateTime({_t(end)})"
                   f"{tags} GROUP BY b, {key} HAVING n > 0 ORDER BY b, {key}")
        return [(int(b), int(k), int(n)) for b, k, n in query(self.c, sql)]

    def totals(self, by: str, start: float, end: float, exp: Optional[int] = None,
               act: Optional[int] = None, host: Optional[str] = None,
               limit: int = 50) -> List[Dict[str, Any]]:
        tags = "".join(f" AND {k} = {int(v)}" for k, v in (("exp", exp), ("act", act)) if v is not None)
        names = {"pair": ["src", "dst"], "experiment": ["exp"], "activity": ["exp", "act"]}[by]
        if by == "pair" or host:
            if host:
                tags += f" AND (src = {_fs(host)} OR dst = {_fs(host)})" if _is_ip(host) else " AND 0"
            cols = {"pair": "src, dst", "experiment": "exp", "activity": "exp, act"}[by]
            sel = "hex(src), hex(dst)" if by == "pair" else cols
            table, lo = "pairs_day", int(start // DAY) * DAY
        else:
            cols = sel = {"experiment": "exp", "activity": "exp, act"}[by]
            table, width = ("traffic_hour", HOUR) if end - start > LONG_RANGE else ("traffic_minute", MINUTE)
            lo = int(start // width) * width
        n = len(names)
        sql = (f"SELECT {sel}, sum(bytes) AS nb, sum(flows) AS nf FROM {self.db}.{table} "
               f"WHERE bucket >= toDateTime({lo}) AND bucket < toDateTime({_t(end)}){tags} "
               f"GROUP BY {cols} ORDER BY nb DESC, nf DESC, {cols} LIMIT {int(limit)}")
        out = []
        for r in query(self.c, sql):
            d: Dict[str, Any] = dict(zip(names, r))
            if by == "pair":
                d["src"], d["dst"] = addr_text(bytes.fromhex(r[0])), addr_text(bytes.fromhex(r[1]))
            else:
                d.update({k: int(d[k]) for k in names})
            d["bytes"], d["flows"] = int(r[n]), int(r[n + 1])
            out.append(d)
        return out

    # --- housekeeping ---------------------------------------------------------------------

    def extent(self) -> Tuple[Optional[float], Optional[float]]:
        """(first flow start, last report): from the raw table, one column scan each."""
        rows = query(self.c, f"SELECT count(), min(toUInt64(start) * 1000000 + start_frac), max(t) "
                             f"FROM {self.db}.fireflies")
        n, lo, hi = rows[0]
        return (None, None) if not int(n) else (int(lo) / 1e6, int(hi) / 1e6)

    def count(self) -> int:
        """Flows (each counted once by the last rebuild of its day)."""
        return int(query(self.c, f"SELECT sum(flows) FROM {self.db}.traffic_minute")[0][0] or 0)

    def partitions(self) -> List[int]:
        rows = query(self.c, f"SELECT DISTINCT partition FROM system.parts WHERE database = {_q(self.db)} "
                             f"AND active AND table IN ({', '.join(_q(t) for t in DAY_TABLES)})")
        return sorted(int(r[0]) for r in rows)

    def expire(self, before: float) -> int:
        """Retention: drop whole start days before the day of `before` (flows, raw, traffic)."""
        cut = int(query(self.c, f"SELECT toYYYYMMDD(toDateTime({int(before)}))")[0][0])
        old = [p for p in self.partitions() if p < cut]
        if not old:
            return 0
        ids = ", ".join(str(p) for p in old)
        n = int(query(self.c, f"SELECT sum(flows) FROM {self.db}.traffic_minute "
                              f"WHERE toYYYYMMDD(day) IN ({ids})")[0][0] or 0)
        for p in old:
            for t in DAY_TABLES:
                self.c.execute(f"ALTER TABLE {self.db}.{t} DROP PARTITION {p}")
        return n

    def close(self) -> None:
        close = getattr(self.c, "close", None)
        if close:
            close()
