# SPDX-License-Identifier: Apache-2.0
"""The link tables (router flow exports) in ClickHouse: the same rows and answers as
collector/links.py gives on SQLite.

Rows are deltas. One INSERT into `link_in` (Null engine) fills the per-minute and per-hour
tables through their views, so a minute and its hour are written together; SummingMergeTree
adds the deltas up in merges and reads sum them (GROUP BY, never FINAL). Unlike SQLite's
transaction, an INSERT that timed out after ClickHouse committed it and is sent again counts
twice: rare, and said in README.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ...flowexport.aggregate import Row
from ..attribution import HOUR, MINUTE
from ..links import LONG_RANGE, FlowSpec, LinkKey, PathRow, _dir, _iface, _key, path_wants, paths_from_rows
from .client import Client, query

__all__ = ["insert", "link_timeseries", "links", "paths_for"]


def _q(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def insert(client: Client, db: str, rows: Sequence[Row], paths: Sequence[PathRow]) -> None:
    """Add the deltas: one INSERT for the minute and hour tables, one for the paths."""
    if rows:
        lines = []
        for r in rows:
            ex, dom, ifc, d, fam, tagged, exp, act = _key(r)
            lines.append(json.dumps({"bucket": r.minute // MINUTE * MINUTE, "exporter": ex, "domain": dom,
                                     "iface": ifc, "direction": d, "family": fam, "tagged": tagged, "exp": exp,
                                     "act": act, "bytes": r.bytes, "packets": r.packets}))
        client.insert_text(f"{db}.link_in", "JSONEachRow", "\n".join(lines).encode())
    if paths:
        lines = [json.dumps({"src": p.src, "dst": p.dst, "sport": p.sport, "dport": p.dport, "proto": p.proto,
                             "bucket": p.minute // MINUTE * MINUTE, "exporter": p.exporter, "domain": p.domain,
                             "iface": _iface(p.interface), "direction": _dir(p.direction),
                             "exp": p.experiment or 0, "act": p.activity or 0, "bytes": p.bytes,
                             "packets": p.packets}) for p in paths]
        client.insert_text(f"{db}.link_paths_in", "JSONEachRow", "\n".join(lines).encode())


def _table(start: float, end: float, step: int = HOUR) -> Tuple[str, int]:
    if end - start > LONG_RANGE and step % HOUR == 0:
        return "link_traffic_hour", HOUR
    return "link_traffic", MINUTE


def _filter(exporter: Optional[str], domain: Optional[int], iface: Optional[int], direction: Optional[int]) -> str:
    sql = ""
    for col, v in (("domain", domain), ("iface", iface), ("direction", direction)):
        if v is not None:
            sql += f" AND {col} = {int(v)}"
    if exporter is not None:
        sql += f" AND exporter = {_q(exporter)}"
    return sql


def _range(start: float, end: float, width: int) -> str:
    lo = max(0, int(start // width) * width)
    hi = min(max(0, int(end) + (0 if end == int(end) else 1)), (1 << 32) - 1)
    return f"bucket >= toDateTime({lo}) AND bucket < toDateTime({hi})"


def links(client: Client, db: str, start: float, end: float, exporter: Optional[str] = None,
          domain: Optional[int] = None, iface: Optional[int] = None, direction: Optional[int] = None,
          limit: int = 100) -> List[Dict[str, Any]]:
    table, width = _table(start, end)
    where = _range(start, end, width) + _filter(exporter, domain, iface, direction)
    rows = query(client, f"SELECT exporter, domain, iface, direction, sum(bytes) AS nb, sum(packets), "
                         f"sumIf(bytes, tagged = 1), sumIf(bytes, family = 6), "
                         f"sumIf(bytes, family = 6 AND tagged = 0), toUInt32(min(bucket)), toUInt32(max(bucket)) "
                         f"FROM {db}.{table} WHERE {where} GROUP BY exporter, domain, iface, direction "
                         f"ORDER BY nb DESC, exporter, domain, iface, direction LIMIT {int(limit)}")
    out: Dict[LinkKey, Dict[str, Any]] = {}
    for ex, dom, ifc, d, nb, npk, tagged, v6, untagged_v6, first, last in rows:
        out[(ex, int(dom), int(ifc), int(d))] = {
            "exporter": ex, "domain": int(dom), "interface": int(ifc), "direction": int(d), "bytes": int(nb),
            "packets": int(npk), "tagged_bytes": int(tagged), "ipv6_bytes": int(v6),
            "untagged_ipv6_bytes": int(untagged_v6), "first": int(first), "last": int(last) + width, "tags": []}
    if out:
        tags = query(client, f"SELECT exporter, domain, iface, direction, exp, act, sum(bytes), sum(packets) "
                             f"FROM {db}.{table} WHERE {where} AND tagged = 1 "
                             f"GROUP BY exporter, domain, iface, direction, exp, act")
        for ex, dom, ifc, d, e, a, nb, npk in tags:
            link = out.get((ex, int(dom), int(ifc), int(d)))
            if link is not None:
                link["tags"].append({"exp": int(e), "act": int(a), "bytes": int(nb), "packets": int(npk)})
        for link in out.values():
            link["tags"].sort(key=lambda t: (-t["bytes"], t["exp"], t["act"]))
    return list(out.values())


def link_timeseries(client: Client, db: str, start: float, end: float, step: int, exporter: Optional[str] = None,
                    domain: Optional[int] = None, iface: Optional[int] = None, direction: Optional[int] = None,
                    exp: Optional[int] = None, measure: str = "bytes") -> List[Tuple[int, int, int, int]]:
    col = "packets" if measure == "packets" else "bytes"
    step = int(step)
    table, width = _table(start, end, step)
    where = _range(start, end, width) + _filter(exporter, domain, iface, direction)
    key = "exp"
    if exp is not None:
        where += f" AND (tagged = 0 OR exp = {int(exp)})"
        key = "act"
    rows = query(client, f"SELECT intDiv(toUInt32(bucket), {step}) * {step} AS b, tagged, "
                         f"if(tagged = 1, {key}, 0) AS k, sum({col}) AS n FROM {db}.{table} WHERE {where} "
                         f"GROUP BY b, tagged, k HAVING n > 0 ORDER BY b, tagged, k")
    return [(int(b), int(t), int(k), int(n)) for b, t, k, n in rows]


def paths_for(client: Client, db: str, flows: Sequence[FlowSpec],
              slack: float = 180.0) -> List[List[Dict[str, Any]]]:
    """As links.paths_for: where each flow's 5-tuple was seen, either way, between its start
    and end (`slack` s either side)."""
    want = path_wants(flows)
    keys = list(want)

    def rows() -> Iterator[Sequence[Any]]:
        for n in range(0, len(keys), 500):
            chunk = keys[n:n + 500]
            tuples = ", ".join(f"({_q(s)}, {_q(d)}, {int(sp)}, {int(dp)}, {int(p)})" for s, d, sp, dp, p in chunk)
            yield from query(client, f"SELECT src, dst, sport, dport, proto, toUInt32(bucket), exporter, domain, "
                                     f"iface, direction, exp, act, sum(bytes), sum(packets) FROM {db}.link_paths "
                                     f"WHERE (src, dst, sport, dport, proto) IN ({tuples}) "
                                     f"GROUP BY src, dst, sport, dport, proto, bucket, exporter, domain, iface, "
                                     f"direction, exp, act")

    return paths_from_rows(flows, want, rows(), slack)
