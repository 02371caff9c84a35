# SPDX-License-Identifier: Apache-2.0
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

from ..attribution import DAY, HOUR, MINUTE
from .client import ClickHouseError, Client, query
from .rows import addr16, addr_text
from .schema import DAY_TABLES, SCHEMA_VERSION, _ident, ddl

LONG_RANGE = 2 * DAY  # longer ranges read the hourly roll-up, as on SQLite
FLOW_WINDOWS = (HOUR, 6 * HOUR, DAY, 7 * DAY, 31 * DAY)  # newest flows first, widened as needed
# A flow overlapping [from, to) is looked for among flows that started at most this long before
# `from` (flows, host series): the merge cost stays bounded by the window, not by the retention.
MAX_FLOW_AGE = 7 * DAY
ACTIVE_CANDIDATES = 20_000  # flows listed by key to the merge of the active ones; beyond, a join
_FLOW_COLS = ("proto", "src", "sport", "dst", "dport", "start", "end", "exp", "act", "app", "reporter",
              "sent", "received", "state")


_SUS = "(toUInt64(start) * 1000000 + start_frac)"
_KEY_COLS = "start, src, dst, sport, dport, proto, start_frac, exp, act"
_KEY_HASH = "cityHash64(src, dst, sport, dport, toUInt32(start), start_frac, proto, exp, act)"


class SchemaError(ClickHouseError):
    """The database holds no scitagd schema where one is required, or one of another version."""


def _q(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fs(ip: str) -> str:
    return f"unhex('{addr16(ip).hex()}')"


def _t(x: float) -> int:
    """Epoch seconds rounded up, within DateTime's range (1970..2106)."""
    return min(max(0, math.ceil(x)), (1 << 32) - 1)


def _ymd(day: int) -> str:
    return f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}"


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


class ClickHouseStore:
    def __init__(self, client: Client, database: str = "scitagd", active_timeout: float = 86400.0,
                 create: bool = True, local: str = "", check: bool = True) -> None:
        self.c = client
        self.db = _ident(database)
        self.active_timeout = active_timeout
        self.local = local  # "_local" on a cluster node: retention drops this node's partitions
        if check:
            self.check_schema(create)

    # --- schema ---------------------------------------------------------------------------

    def check_schema(self, create: bool = True) -> None:
        """Create the single-node schema when the database has none; refuse a different version."""
        have = query(self.c, f"SELECT count() FROM system.tables WHERE database = {_q(self.db)} "
                             "AND name = 'schema_version'")[0][0]
        if not int(have):
            if not create:
                raise SchemaError(f"database {self.db}: no scitagd schema (create it with the statements "
                                  "`scitagd collector schema` prints; on a cluster `scitagd collector schema "
                                  "--cluster NAME`, on every node)")
            for stmt in ddl(self.db):
                self.c.execute(stmt)
        rows = query(self.c, f"SELECT max(version) FROM {self.db}.schema_version")
        v = int(rows[0][0] or 0) if rows else 0
        if v != SCHEMA_VERSION:
            raise SchemaError(f"database {self.db}: schema version {v}, this scitagd needs {SCHEMA_VERSION}: "
                              f"point collector.store.database at a new database (the collector creates it), or "
                              f"create version {SCHEMA_VERSION} with `scitagd collector schema`")

    # --- flows ----------------------------------------------------------------------------

    def _flow_select(self, where: List[str], having: List[str], now_us: int, table: str = "flows") -> str:
        db = self.db
        exp_before = now_us - int(self.active_timeout * 1e6)
        texts = ("'' AS app_, '' AS rep" if table == "flows_host"
                 else "argMinMerge(app) AS app_, argMinMerge(reporter) AS rep")
        return f"""
SELECT proto, hex(src), sport, hex(dst), dport, toUInt32(start), start_frac, exp, act,
  {texts}, maxMerge(sent) AS s, maxMerge(received) AS r,
  maxMerge(end_t) AS e, maxMerge(last_t) AS l,
  if(e > 0, 'ended', if(l < {exp_before}, 'expired', 'active')) AS st,
  if(e > 0, e, if(l < {exp_before}, l, toUInt64(0))) AS fin,
  toUInt64(start) * 1000000 + start_frac AS sus
FROM {db}.{table} WHERE {" AND ".join(where)}
GROUP BY start, src, dst, sport, dport, proto, start_frac, exp, act
{"HAVING " + " AND ".join(having) if having else ""}"""

    def _flow_filters(self, exp: Optional[int], act: Optional[int], host: Optional[str],
                      state: Optional[str]) -> Tuple[str, List[str], List[str], List[str]]:
        """(table, where, having, the same host test on raw fireflies)."""
        where, having, raw = [], [], []
        table = "flows"
        if exp is not None:
            where.append(f"exp = {int(exp)}")
        if act is not None:
            where.append(f"act = {int(act)}")
        if host:
            # An address is matched against the flow's ends (a key: filtered before the merge),
            # a name against the reporter (an aggregate: after it).
            if _is_ip(host):
                table = "flows_host"
                where.append(f"host = {_fs(host)}")
                raw.append(f"(src = {_fs(host)} OR dst = {_fs(host)})")
            else:
                having.append(f"rep = {_q(host)}")
        if state:
            having.append(f"st = {_q(state)}")
        return table, where, having, raw

    def _flow_dict(self, r: List[Any]) -> Dict[str, Any]:
        (proto, src, sport, dst, dport, start, frac, exp, act, app, rep, s, rc, _e, _l, st, fin, _sus) = r
        return {"proto": proto, "src": addr_text(bytes.fromhex(src)), "sport": int(sport),
                "dst": addr_text(bytes.fromhex(dst)), "dport": int(dport), "start": int(start) + int(frac) / 1e6,
                "end": fin / 1e6 if fin else None, "exp": int(exp), "act": int(act), "app": app or None,
                "reporter": rep or None, "sent": s, "received": rc, "state": st}

    def flows(self, start: float, end: float, exp: Optional[int] = None, act: Optional[int] = None,
              host: Optional[str] = None, state: Optional[str] = None,
              limit: int = 100) -> List[Dict[str, Any]]:
        """Newest first, like SQLite's. Merging aggregate states costs ~5 us a flow on 18.16, so
        only flows that can be in the answer are merged: first those that started in the range,
        newest first, window by window back from `end`, keys picked before any merge (batches
        growing 4x while filters on merged values reject them); then those that started before
        it (at most MAX_FLOW_AGE) and have a firefly since its start, or one recent enough to be
        active. Rows are narrowed by start second (PREWHERE) before any key is hashed."""
        now_us = int(time.time() * 1e6)
        s_us, e_us = int(start * 1e6), int(min(end, 1 << 32) * 1e6)
        table, where0, having, raw = self._flow_filters(exp, act, host, state)
        having = [*having, f"(fin = 0 OR fin >= {s_us})"]
        out: List[Dict[str, Any]] = []
        prev = e_us
        for w in (*FLOW_WINDOWS, None):
            lo_us = s_us if w is None else max(s_us, e_us - w * 1_000_000)
            if lo_us >= prev:
                continue
            rng = [f"start >= toDateTime({lo_us // 1_000_000})", f"start <= toDateTime({prev // 1_000_000})",
                   f"{_SUS} >= {lo_us}", f"{_SUS} < {prev}"]
            offset, batch = 0, max(2 * limit, 256)
            while len(out) < limit:
                keys = query(self.c, f"SELECT DISTINCT {_KEY_HASH} AS h, toUInt32(start) AS st, start_frac "
                                     f"FROM {self.db}.{table} WHERE {' AND '.join(where0 + rng)} "
                                     f"ORDER BY st DESC, start_frac DESC, h LIMIT {batch} OFFSET {offset}")
                if not keys:
                    break
                lo, hi = min(int(k[1]) for k in keys), max(int(k[1]) for k in keys)
                where = [*where0, *rng, f"start >= toDateTime({lo})", f"start <= toDateTime({hi})",
                         f"{_KEY_HASH} IN ({', '.join(str(int(k[0])) for k in keys)})"]
                sql = self._flow_select(where, having, now_us, table) + " ORDER BY start DESC, start_frac DESC"
                out += [self._flow_dict(r) for r in query(self.c, sql)][: limit - len(out)]
                if len(keys) < batch:
                    break
                offset, batch = offset + batch, batch * 4
            if len(out) >= limit or lo_us == s_us:
                break
            prev = lo_us
        floor = max(0, int(start) - MAX_FLOW_AGE)
        if len(out) < limit and s_us > floor * 1_000_000:
            since = max(0, min(s_us, now_us - int(self.active_timeout * 1e6)))
            cond = f"start >= toDateTime({floor}) AND start <= toDateTime({_t(start)}) AND {_SUS} < {s_us}"
            # a host's flows are an index range of flows_host: merge them all; otherwise only those
            # with a firefly since `start` (or recent enough to be active)
            sub = (f"SELECT {_KEY_HASH} FROM {self.db}.fireflies PREWHERE t >= {since} WHERE {cond}"
                   + "".join(f" AND {r}" for r in raw))
            narrow = [] if table == "flows_host" else [f"{_KEY_HASH} IN ({sub})"]
            sql = (self._flow_select([*where0, cond, *narrow], having, now_us, table)
                   + f" ORDER BY start DESC, start_frac DESC LIMIT {limit - len(out)}")
            out += [self._flow_dict(r) for r in query(self.c, sql)]
        if table == "flows_host" and out:
            self._texts(out)
        return out

    def _texts(self, flows: List[Dict[str, Any]]) -> None:
        """app and reporter of flows read from flows_host, from `flows`, by key (the start
        seconds select granules of 1024 rows through the primary key)."""
        starts = ", ".join(f"toDateTime({s})" for s in sorted({int(f["start"]) for f in flows}))
        want = {(addr16(f["src"]).hex(), addr16(f["dst"]).hex(), f["sport"], f["dport"], f["proto"],
                 round(f["start"] * 1e6), f["exp"], f["act"]): f for f in flows}
        rows = query(self.c, f"SELECT lower(hex(src)), lower(hex(dst)), sport, dport, proto, {_SUS}, exp, act, "
                             f"argMinMerge(app), argMinMerge(reporter) FROM {self.db}.flows "
                             f"WHERE start IN ({starts}) GROUP BY {_KEY_COLS}")
        for r in rows:
            f = want.get((r[0], r[1], int(r[2]), int(r[3]), r[4], int(r[5]), int(r[6]), int(r[7])))
            if f is not None:
                f["app"], f["reporter"] = r[8] or None, r[9] or None

    # --- series and totals --------------------------------------------------------------

    def timeseries(self, start: float, end: float, step: int, exp: Optional[int] = None,
                   act: Optional[int] = None, host: Optional[str] = None,
                   measure: str = "bytes") -> List[Tuple[int, int, int]]:
        step = int(step)
        key = "act" if exp is not None else "exp"
        tags = "".join(f" AND {k} = {int(v)}" for k, v in (("exp", exp), ("act", act)) if v is not None)
        if host:
            table, where, having, raw = self._flow_filters(exp, act, host, None)
            floor = max(0, int(start) - MAX_FLOW_AGE)
            since = min(int(start * 1e6), int((time.time() - self.active_timeout) * 1e6))
            sub = (f"SELECT {_KEY_HASH} FROM {self.db}.fireflies PREWHERE t >= {max(0, since)} WHERE "
                   f"start >= toDateTime({floor}) AND {_SUS} < {int(start * 1e6)}"
                   + "".join(f" AND {r}" for r in raw))
            where += [f"start >= toDateTime({floor})", f"start < toDateTime({_t(end)})",
                      f"({_SUS} >= {int(start * 1e6)} OR {_KEY_HASH} IN ({sub}))"]
            val = "1" if measure == "flows" else "s + r"
            inner = self._flow_select(where, having, int(time.time() * 1e6), table)
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
        if host:
            tags += f" AND (src = {_fs(host)} OR dst = {_fs(host)})" if _is_ip(host) else " AND 0"
        if by == "pair":
            return self._top_pairs(start, end, tags, exp is None and act is None, limit)
        if host:
            table, lo = "pairs_day", int(start // DAY) * DAY
        else:
            table, width = ("traffic_hour", HOUR) if end - start > LONG_RANGE else ("traffic_minute", MINUTE)
            lo = int(start // width) * width
        cols = {"experiment": "exp", "activity": "exp, act"}[by]
        n = len(names)
        sql = (f"SELECT {cols}, sum(bytes) AS nb, sum(flows) AS nf FROM {self.db}.{table} "
               f"WHERE bucket >= toDateTime({max(0, lo)}) AND bucket < toDateTime({_t(end)}){tags} "
               f"GROUP BY {cols} ORDER BY nb DESC, nf DESC, {cols} LIMIT {int(limit)}")
        out = []
        for r in query(self.c, sql):
            d: Dict[str, Any] = {k: int(v) for k, v in zip(names, r)}
            d["bytes"], d["flows"] = int(r[n]), int(r[n + 1])
            out.append(d)
        return out

    def _top_pairs(self, start: float, end: float, tags: str, untagged: bool, limit: int) -> List[Dict[str, Any]]:
        """Host pairs by bytes, grouped by `pair` (cityHash64 of the two addresses: 8 bytes to
        hash and compare instead of 32), then the addresses of only the winners."""
        table = "pairs_total_day" if untagged and "exp" not in tags else "pairs_day"
        where = (f"bucket >= toDateTime({max(0, int(start // DAY) * DAY)}) AND bucket < toDateTime({_t(end)})"
                 f"{tags}")
        top = query(self.c, f"SELECT pair, sum(bytes) AS nb, sum(flows) AS nf FROM {self.db}.{table} WHERE {where} "
                            f"GROUP BY pair ORDER BY nb DESC, nf DESC, pair LIMIT {int(limit)}")
        if not top:
            return []
        addrs = {int(p): (s, d) for p, s, d in query(
            self.c, f"SELECT pair, hex(any(src)), hex(any(dst)) FROM {self.db}.{table} WHERE {where} "
                    f"AND pair IN ({', '.join(str(int(r[0])) for r in top)}) GROUP BY pair")}
        out = []
        for p, nb, nf in top:
            s, d = addrs[int(p)]
            out.append({"src": addr_text(bytes.fromhex(s)), "dst": addr_text(bytes.fromhex(d)), "bytes": int(nb),
                        "flows": int(nf)})
        return out

    # --- active flows ------------------------------------------------------------------------

    def _active_where(self, now_us: int) -> List[str]:
        """Flows that can be active: a firefly within activeTimeout and no end among those,
        started at most MAX_FLOW_AGE (or activeTimeout, if longer) ago; by start second and key
        hash (the index picks the granules), the exact state from the merge."""
        since = now_us - int(self.active_timeout * 1e6)
        floor = max(0, now_us // 1_000_000 - max(MAX_FLOW_AGE, int(self.active_timeout)))
        cand = query(self.c, f"SELECT {_KEY_HASH} AS h, toUInt32(start) AS s FROM {self.db}.fireflies "
                             f"PREWHERE t >= {max(0, since)} WHERE start >= toDateTime({floor}) "
                             f"GROUP BY h, s HAVING max(state = 'end') = 0 LIMIT {ACTIVE_CANDIDATES + 1}")
        if len(cand) > ACTIVE_CANDIDATES:  # too many to list: let ClickHouse join them
            return [f"start >= toDateTime({floor})",
                    f"{_KEY_HASH} IN (SELECT {_KEY_HASH} FROM {self.db}.fireflies PREWHERE t >= {max(0, since)} "
                    f"WHERE start >= toDateTime({floor}))"]
        if not cand:
            return ["0"]
        starts = ", ".join(f"toDateTime({s})" for s in sorted({int(r[1]) for r in cand}))
        return [f"start IN ({starts})", f"{_KEY_HASH} IN ({', '.join(str(int(r[0])) for r in cand)})"]

    def active(self, limit: int) -> Tuple[List[Dict[str, Any]], int]:
        now_us = int(time.time() * 1e6)
        inner = self._flow_select(self._active_where(now_us), ["st = 'active'"], now_us)
        rows = [self._flow_dict(r) for r in query(self.c, inner + f" ORDER BY start DESC, start_frac DESC "
                                                               f"LIMIT {int(limit)}")]
        n = len(rows) if len(rows) < limit else int(query(self.c, f"SELECT count() FROM ({inner})")[0][0])
        return rows, n

    def active_by_tag(self) -> Dict[Tuple[int, int], int]:
        now_us = int(time.time() * 1e6)
        inner = self._flow_select(self._active_where(now_us), ["st = 'active'"], now_us)
        return {(int(e), int(a)): int(n) for e, a, n in query(
            self.c, f"SELECT exp, act, count() FROM ({inner}) GROUP BY exp, act")}

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
        """Days (YYYYMMDD) with data in any day table (this node's, on a cluster)."""
        names = ", ".join(_q(t + self.local) for t in DAY_TABLES)
        rows = query(self.c, f"SELECT DISTINCT partition FROM system.parts WHERE database = {_q(self.db)} "
                             f"AND active AND table IN ({names})")
        return sorted(int(r[0]) for r in rows)

    def pins(self) -> List[Tuple[float, float]]:
        return [(float(lo), float(hi)) for lo, hi in query(self.c, f"SELECT lo, hi FROM {self.db}.pins")]

    def pin(self, lo: float, hi: float, note: str) -> None:
        self.c.execute(f"INSERT INTO {self.db}.pins VALUES ({float(lo)!r}, {float(hi)!r}, {_q(note[:1000])})")

    def expire(self, before: float) -> int:
        """Retention: drop whole days before the day of `before` from every day table (flows by
        their start day: a flow goes with its fireflies and traffic), except days that overlap
        a pinned range (`collector import --keep`). Returns the flows dropped."""
        cut = int(query(self.c, f"SELECT toYYYYMMDD(toDateTime({max(0, int(before))}))")[0][0])
        pins = self.pins()
        old = []
        for p in self.partitions():
            if p >= cut:
                continue
            lo = int(query(self.c, f"SELECT toUInt32(toDateTime(toDate('{_ymd(p)}')))")[0][0])
            if not any(a < lo + DAY and b >= lo for a, b in pins):
                old.append(p)
        if not old:
            return 0
        ids = ", ".join(str(p) for p in old)
        n = int(query(self.c, f"SELECT sum(flows) FROM {self.db}.traffic_minute{self.local} "
                              f"WHERE toYYYYMMDD(day) IN ({ids})")[0][0] or 0)
        for p in old:
            for t in DAY_TABLES:
                self.c.execute(f"ALTER TABLE {self.db}.{t}{self.local} DROP PARTITION {p}")
        return n

    def close(self) -> None:
        close = getattr(self.c, "close", None)
        if close:
            close()
