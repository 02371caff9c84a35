# SPDX-License-Identifier: Apache-2.0
"""Link tables: traffic seen by routers' flow exports (IPFIX, NetFlow v9, sFlow), per link and tag.

A link is (exporter, observation domain, interface, direction). Rows are per minute (and per
hour, a roll-up for long ranges) and per (family, tagged, experiment, activity), with bytes and
packets. Rows arrive as deltas (flowexport.aggregate.Row): writing adds them to what the key
holds, so a minute can be written many times, in any order, and restarts lose nothing written.
`link_paths` keeps where a flow's 5-tuple was seen (tagged flows, and flows fireflies reported),
per minute, with the tag it carried there (experiment = activity = 0: untagged), so
/api/v1/flows can show a reported flow's observed path.

Keys carry no NULLs (portable to ClickHouse's ORDER BY keys): an untagged row has tagged = 0 and
experiment = activity = 0; tags folded past the aggregator's bound are experiment = activity = -1;
a domain or interface folded into "other" is -1, an interface the exporter did not say is -2, an
unknown direction -1. Queries are plain GROUP BY sums. This module holds the SQL; SQLiteStore
calls it under its lock, on its thread.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import msgspec

from ..flowexport.aggregate import Row
from .attribution import HOUR, MINUTE

__all__ = [
    "DIRECTIONS",
    "IFACE_NONE",
    "LONG_RANGE",
    "MAX_ROW_BYTES",
    "MAX_ROW_PACKETS",
    "OTHER",
    "RETAINED",
    "SCHEMA",
    "FlowSpec",
    "LinkKey",
    "PathRow",
    "PathWant",
    "clamp",
    "link_timeseries",
    "links",
    "path_wants",
    "paths_for",
    "paths_from_rows",
    "place_json",
    "write",
]

OTHER = -1  # domain/interface/tag folded into "other" (flowexport.aggregate.OTHER)
IFACE_NONE = -2  # the exporter said no interface
DIRECTIONS = {0: "ingress", 1: "egress", -1: "unknown"}
LONG_RANGE = 2 * 86400  # longer ranges read the hourly roll-up, as the firefly traffic tables
# No real link carries 2**46 bytes (~9 Tb/s for a minute) in one row of one write; bigger values
# come from broken or hostile exporters and are clamped (counted by the caller), so that sums
# stay far from 2**63.
MAX_ROW_BYTES = 1 << 46
MAX_ROW_PACKETS = 1 << 40
PROTO_NAMES = {6: "tcp", 17: "udp"}
PROTO_NUMBERS = {"tcp": 6, "udp": 17}

LinkKey = Tuple[str, int, int, int]  # exporter, domain, interface, direction (as stored)

SCHEMA = """
CREATE TABLE IF NOT EXISTS link_traffic (
  bucket INTEGER NOT NULL, exporter TEXT NOT NULL, domain INTEGER NOT NULL, iface INTEGER NOT NULL,
  direction INTEGER NOT NULL, family INTEGER NOT NULL, tagged INTEGER NOT NULL, exp INTEGER NOT NULL,
  act INTEGER NOT NULL, bytes INTEGER NOT NULL, packets INTEGER NOT NULL,
  PRIMARY KEY (bucket, exporter, domain, iface, direction, family, tagged, exp, act)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS link_traffic_hour (
  bucket INTEGER NOT NULL, exporter TEXT NOT NULL, domain INTEGER NOT NULL, iface INTEGER NOT NULL,
  direction INTEGER NOT NULL, family INTEGER NOT NULL, tagged INTEGER NOT NULL, exp INTEGER NOT NULL,
  act INTEGER NOT NULL, bytes INTEGER NOT NULL, packets INTEGER NOT NULL,
  PRIMARY KEY (bucket, exporter, domain, iface, direction, family, tagged, exp, act)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS link_paths (
  src TEXT NOT NULL, dst TEXT NOT NULL, sport INTEGER NOT NULL, dport INTEGER NOT NULL,
  proto INTEGER NOT NULL, bucket INTEGER NOT NULL, exporter TEXT NOT NULL, domain INTEGER NOT NULL,
  iface INTEGER NOT NULL, direction INTEGER NOT NULL, exp INTEGER NOT NULL, act INTEGER NOT NULL,
  bytes INTEGER NOT NULL, packets INTEGER NOT NULL,
  PRIMARY KEY (src, dst, sport, dport, proto, bucket, exporter, domain, iface, direction, exp, act)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS link_paths_bucket ON link_paths (bucket);
"""

# (table, bucket width) for retention
RETAINED = (("link_traffic", MINUTE), ("link_traffic_hour", HOUR), ("link_paths", MINUTE))

_KEY = "bucket, exporter, domain, iface, direction, family, tagged, exp, act"
ADD = (f"INSERT INTO {{table}} ({_KEY}, bytes, packets) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
       f"ON CONFLICT ({_KEY}) DO UPDATE SET bytes = bytes + excluded.bytes, packets = packets + excluded.packets")
_PKEY = "src, dst, sport, dport, proto, bucket, exporter, domain, iface, direction, exp, act"
ADD_PATH = (f"INSERT INTO link_paths ({_PKEY}, bytes, packets) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT ({_PKEY}) DO UPDATE SET bytes = bytes + excluded.bytes, "
            "packets = packets + excluded.packets")


class PathRow(msgspec.Struct, gc=False):
    """Where one 5-tuple was seen in one minute (a delta, like Row)."""

    minute: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    exporter: str
    domain: int
    interface: Optional[int]
    direction: Optional[int]
    experiment: Optional[int]
    activity: Optional[int]
    bytes: int
    packets: int


def clamp(nbytes: int, packets: int) -> Tuple[int, int, bool]:
    """(bytes, packets, clamped) within MAX_ROW_*."""
    if nbytes <= MAX_ROW_BYTES and packets <= MAX_ROW_PACKETS:
        return nbytes, packets, False
    return min(nbytes, MAX_ROW_BYTES), min(packets, MAX_ROW_PACKETS), True


def place_json(domain: int, iface: int, direction: int) -> Dict[str, Any]:
    """A stored place as the API shows it: "other" for folded, null for unknown."""
    return {"domain": "other" if domain == OTHER else domain,
            "interface": None if iface == IFACE_NONE else "other" if iface == OTHER else iface,
            "direction": DIRECTIONS.get(direction, str(direction))}


def _iface(i: Optional[int]) -> int:
    return IFACE_NONE if i is None else i


def _dir(d: Optional[int]) -> int:
    return -1 if d is None else d


def _key(r: Row) -> Tuple[Any, ...]:
    exp = r.experiment
    if exp is None:
        return (r.exporter, r.domain, _iface(r.interface), _dir(r.direction), r.family, 0, 0, 0)
    return (r.exporter, r.domain, _iface(r.interface), _dir(r.direction), r.family, 1, exp,
            r.activity if r.activity is not None else 0)


def write(db: sqlite3.Connection, rows: Sequence[Row], paths: Sequence[PathRow]) -> None:
    """Add the deltas (inside the caller's transaction): minutes, their hourly roll-up, paths."""
    minutes: Dict[Tuple[Any, ...], List[int]] = {}
    hours: Dict[Tuple[Any, ...], List[int]] = {}
    for r in rows:
        k = _key(r)
        for d, b in ((minutes, r.minute // MINUTE * MINUTE), (hours, r.minute // HOUR * HOUR)):
            bk = (b, *k)
            cur = d.get(bk)
            if cur is None:
                d[bk] = [r.bytes, r.packets]
            else:
                cur[0] += r.bytes
                cur[1] += r.packets
    if minutes:
        db.executemany(ADD.format(table="link_traffic"), [(*k, *v) for k, v in minutes.items()])
        db.executemany(ADD.format(table="link_traffic_hour"), [(*k, *v) for k, v in hours.items()])
    if paths:
        db.executemany(ADD_PATH, [
            (p.src, p.dst, p.sport, p.dport, p.proto, p.minute // MINUTE * MINUTE, p.exporter, p.domain,
             _iface(p.interface), _dir(p.direction), p.experiment or 0, p.activity or 0, p.bytes, p.packets)
            for p in paths])


def _run(db: sqlite3.Connection, q: str, args: Sequence[Any]) -> List[Tuple[Any, ...]]:
    """SUMs past 2**63 (only absurd input could get there: rows are clamped) are read as floats
    rather than failing the request."""
    try:
        return db.execute(q, args).fetchall()
    except sqlite3.OperationalError as e:
        if "integer overflow" not in str(e):
            raise
        return [tuple(int(v) if isinstance(v, float) else v for v in row)
                for row in db.execute(q.replace("SUM(", "TOTAL("), args).fetchall()]


def _table(start: float, end: float, step: int = HOUR) -> Tuple[str, int]:
    if end - start > LONG_RANGE and step % HOUR == 0:
        return "link_traffic_hour", HOUR
    return "link_traffic", MINUTE


def _link_filter(exporter: Optional[str], domain: Optional[int], iface: Optional[int],
                 direction: Optional[int]) -> Tuple[str, List[Any]]:
    sql = ""
    args: List[Any] = []
    for col, v in (("exporter", exporter), ("domain", domain), ("iface", iface), ("direction", direction)):
        if v is not None:
            sql += f" AND {col} = ?"
            args.append(v)
    return sql, args


def links(db: sqlite3.Connection, start: float, end: float, exporter: Optional[str] = None,
          domain: Optional[int] = None, iface: Optional[int] = None, direction: Optional[int] = None,
          limit: int = 100) -> List[Dict[str, Any]]:
    """Links seen in [start, end) with their totals, by bytes: all, IPv6, tagged, untagged IPv6,
    and the tagged bytes per (experiment, activity)."""
    table, width = _table(start, end)
    lo = int(start // width) * width
    extra, args = _link_filter(exporter, domain, iface, direction)
    rows = _run(db, f"SELECT exporter, domain, iface, direction, SUM(bytes), SUM(packets), "
                    f"SUM(CASE WHEN tagged = 1 THEN bytes ELSE 0 END), "
                    f"SUM(CASE WHEN family = 6 THEN bytes ELSE 0 END), "
                    f"SUM(CASE WHEN family = 6 AND tagged = 0 THEN bytes ELSE 0 END), MIN(bucket), MAX(bucket) "
                    f"FROM {table} WHERE bucket >= ? AND bucket < ?{extra} "
                    f"GROUP BY exporter, domain, iface, direction ORDER BY 5 DESC, 1, 2, 3, 4 LIMIT ?",
                [lo, end, *args, limit])
    out: Dict[LinkKey, Dict[str, Any]] = {}
    for ex, dom, ifc, d, nb, npk, tagged, v6, untagged_v6, first, last in rows:
        out[(ex, dom, ifc, d)] = {
            "exporter": ex, "domain": dom, "interface": ifc, "direction": d, "bytes": int(nb),
            "packets": int(npk), "tagged_bytes": int(tagged), "ipv6_bytes": int(v6),
            "untagged_ipv6_bytes": int(untagged_v6), "first": int(first), "last": int(last) + width,
            "tags": []}
    if out:
        tags = _run(db, f"SELECT exporter, domain, iface, direction, exp, act, SUM(bytes), SUM(packets) "
                        f"FROM {table} WHERE bucket >= ? AND bucket < ? AND tagged = 1{extra} "
                        f"GROUP BY exporter, domain, iface, direction, exp, act", [lo, end, *args])
        for ex, dom, ifc, d, e, a, nb, npk in tags:
            link = out.get((ex, dom, ifc, d))
            if link is not None:
                link["tags"].append({"exp": e, "act": a, "bytes": int(nb), "packets": int(npk)})
        for link in out.values():
            link["tags"].sort(key=lambda t: (-t["bytes"], t["exp"], t["act"]))
    return list(out.values())


def link_timeseries(db: sqlite3.Connection, start: float, end: float, step: int, exporter: Optional[str] = None,
                    domain: Optional[int] = None, iface: Optional[int] = None, direction: Optional[int] = None,
                    exp: Optional[int] = None, measure: str = "bytes") -> List[Tuple[int, int, int, int]]:
    """(bucket, tagged, key, bytes or packets): key is the experiment, or the activity when `exp`
    is given; untagged rows have tagged 0 (and key 0), summed over families."""
    col = "packets" if measure == "packets" else "bytes"
    table, width = _table(start, end, step)
    extra, args = _link_filter(exporter, domain, iface, direction)
    key = "exp"
    if exp is not None:
        extra += " AND (tagged = 0 OR exp = ?)"
        args.append(exp)
        key = "act"
    q = (f"SELECT (bucket / ?) * ?, tagged, CASE WHEN tagged = 1 THEN {key} ELSE 0 END, SUM({col}) FROM {table} "
         f"WHERE bucket >= ? AND bucket < ?{extra} GROUP BY 1, 2, 3 HAVING SUM({col}) > 0 ORDER BY 1")
    return [(int(b), int(t), int(k), int(n)) for b, t, k, n in
            _run(db, q, [step, step, int(start // width) * width, end, *args])]


FlowSpec = Tuple[str, str, int, str, int, float, Optional[float]]
PathWant = Dict[Tuple[str, str, int, int, int], List[Tuple[int, bool]]]


def path_wants(flows: Sequence[FlowSpec]) -> PathWant:
    """The 5-tuples to look up for each flow (proto, src, sport, dst, dport, start, end), both
    ways: key -> [(flow index, reverse)]."""
    want: PathWant = {}
    for i, (proto, src, sport, dst, dport, _s, _e) in enumerate(flows):
        p = PROTO_NUMBERS.get(proto)
        if p is None:
            continue
        want.setdefault((src, dst, sport, dport, p), []).append((i, False))
        want.setdefault((dst, src, dport, sport, p), []).append((i, True))
    return want


def paths_from_rows(flows: Sequence[FlowSpec], want: PathWant, rows: Iterable[Sequence[Any]],
                    slack: float) -> List[List[Dict[str, Any]]]:
    """Each flow's places from link_paths rows (src, dst, sport, dport, proto, bucket, exporter,
    domain, iface, direction, exp, act, bytes, packets) of either store, kept within the flow's
    life (`slack` s either side)."""
    places: List[Dict[Tuple[str, int, int, int, bool, int, int], List[int]]] = [{} for _ in flows]
    for src, dst, sport, dport, p, bucket, ex, dom, ifc, d, e, a, nb, npk in rows:
        bucket = int(bucket)
        for i, rev in want.get((src, dst, int(sport), int(dport), int(p)), ()):
            start, end = flows[i][5], flows[i][6]
            if bucket + MINUTE < start - slack or (end is not None and bucket > end + slack):
                continue
            cur = places[i].setdefault((ex, int(dom), int(ifc), int(d), rev, int(e), int(a)), [0, 0, bucket, bucket])
            cur[0] += int(nb)
            cur[1] += int(npk)
            cur[2] = min(cur[2], bucket)
            cur[3] = max(cur[3], bucket)
    return [[{"exporter": ex, "domain": dom, "interface": ifc, "direction": d, "reverse": rev, "exp": e,
              "act": a, "bytes": v[0], "packets": v[1], "first": v[2], "last": v[3] + MINUTE}
             for (ex, dom, ifc, d, rev, e, a), v in sorted(pl.items(), key=lambda kv: (kv[0][4], kv[1][2], kv[0]))]
            for pl in places]


def paths_for(db: sqlite3.Connection, flows: Sequence[FlowSpec],
              slack: float = 180.0) -> List[List[Dict[str, Any]]]:
    """For each flow (proto, src, sport, dst, dport, start, end or None), where its 5-tuple was
    seen, either way (`reverse`), with which tag (exp = act = 0: untagged), between its start and
    end (`slack` s either side: exporters report after the fact, and minutes are whole)."""
    want = path_wants(flows)
    keys = list(want)

    def rows() -> Iterator[Sequence[Any]]:
        for n in range(0, len(keys), 150):  # 5 values each: well within SQLite's variable limit
            chunk = keys[n:n + 150]
            marks = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
            q = (f"SELECT src, dst, sport, dport, proto, bucket, exporter, domain, iface, direction, exp, act, "
                 f"bytes, packets FROM link_paths WHERE (src, dst, sport, dport, proto) IN (VALUES {marks})")
            yield from _run(db, q, [v for k in chunk for v in k])

    return paths_from_rows(flows, want, rows(), slack)
