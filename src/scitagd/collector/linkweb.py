# SPDX-License-Identifier: Apache-2.0
"""HTTP side of the link tables (router flow exports): /links (dashboard view), /api/v1/links,
/api/v1/links/timeseries, /api/v1/exporters.

Parameters as in web.py (`from`/`to`, `experiment`, `limit`, `step`) plus the link's parts:
`exporter` (an address, or "other"), `domain` (0..4294967295 or "other"), `interface`
(0..4294967295, "other", or "none": the exporter did not say), `direction` (ingress, egress,
unknown), `measure` (bytes, packets). ASCII only; a bad value is a 400 naming the parameter.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from aiohttp import web

from ..errors import ParamError
from .links import IFACE_NONE, OTHER, place_json
from .web import STATIC, _int

if TYPE_CHECKING:
    from .web import Web

__all__ = ["LinkApi", "path_json"]

_U32 = re.compile(r"^[0-9]{1,10}$")
_ADDR = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")
_DIRECTIONS = {"ingress": 0, "egress": 1, "unknown": -1}


def _u32(q: Any, name: str, words: Dict[str, int]) -> Optional[int]:
    v = q.get(name)
    if v is None or v == "":
        return None
    if v in words:
        return words[v]
    if not _U32.match(v) or int(v) > 0xFFFFFFFF:
        extra = "".join(f", {w}" for w in words)
        raise ParamError(name, f"{v[:40]!r}: expected 0..4294967295{extra}")
    return int(v)


def _exporter(q: Any) -> Optional[str]:
    v = q.get("exporter")
    if v is None or v == "":
        return None
    if v == "other":
        return "other"
    try:
        if not _ADDR.match(v):
            raise ValueError(v)
        ip = ipaddress.ip_address(v)
    except ValueError:
        raise ParamError("exporter", f"{v[:50]!r}: expected an IPv4 or IPv6 address, or other") from None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else ip.compressed


def _direction(q: Any) -> Optional[int]:
    v = q.get("direction")
    if v is None or v == "":
        return None
    if v not in _DIRECTIONS:
        raise ParamError("direction", f"{v[:40]!r}: expected ingress, egress or unknown")
    return _DIRECTIONS[v]


def path_json(p: Dict[str, Any]) -> Dict[str, Any]:
    """A stored path entry as /api/v1/flows shows it."""
    tag = None if not p.get("exp") else {"exp": p["exp"], "act": p["act"]}
    return {"exporter": p["exporter"], **place_json(p["domain"], p["interface"], p["direction"]),
            "reverse": p["reverse"], "bytes": p["bytes"], "packets": p["packets"], "tag": tag,
            "first": p["first"], "last": p["last"]}


class LinkApi:
    def __init__(self, w: Web) -> None:
        self.w = w
        self.c = w.c

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/links", self.page)
        r.add_get("/api/v1/links", self.links)
        r.add_get("/api/v1/links/timeseries", self.timeseries)
        r.add_get("/api/v1/exporters", self.exporters)

    def _place(self, q: Any) -> Tuple[Optional[str], Optional[int], Optional[int], Optional[int]]:
        return (_exporter(q), _u32(q, "domain", {"other": OTHER}),
                _u32(q, "interface", {"other": OTHER, "none": IFACE_NONE}), _direction(q))

    def _fp(self) -> float:
        return self.c.links.false_positive_rate() if self.c.links is not None else 0.0

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=STATIC.joinpath("links.html").read_text(), content_type="text/html")

    async def links(self, request: web.Request) -> web.Response:
        q = request.query
        start, end = self.w._range(q)
        ex, dom, ifc, d = self._place(q)
        limit = _int(q, "limit", 100, 1, 10000)
        rows = await self.c.query(self.c.store.links, start, end, ex, dom, ifc, d, limit)
        p = self._fp()
        reg = self.c.registry.current
        out = []
        for r in rows:
            efp = r["untagged_ipv6_bytes"] * p / (1 - p) if p < 1 else 0.0
            tags = []
            for t in r["tags"]:
                names = ({"experiment": "other", "activity": "other"} if t["exp"] == OTHER else
                         {"experiment": reg.experiment_name(t["exp"]) or str(t["exp"]),
                          "activity": reg.activity_name(t["exp"], t["act"]) or str(t["act"])})
                tags.append({**t, **names})
            out.append({
                "exporter": r["exporter"], **place_json(r["domain"], r["interface"], r["direction"]),
                "bytes": r["bytes"], "packets": r["packets"], "tagged_bytes": r["tagged_bytes"],
                "tagged_share": r["tagged_bytes"] / r["bytes"] if r["bytes"] else None,
                "ipv6_bytes": r["ipv6_bytes"],
                "tagged_share_ipv6": r["tagged_bytes"] / r["ipv6_bytes"] if r["ipv6_bytes"] else None,
                "untagged_ipv6_bytes": r["untagged_ipv6_bytes"],
                "expected_false_positive_bytes": round(efp),
                "expected_false_positive_share": efp / r["tagged_bytes"] if r["tagged_bytes"] else None,
                "first": r["first"], "last": r["last"], "tags": tags})
        return web.json_response({"from": start, "to": end, "false_positive_rate": p, "links": out})

    async def timeseries(self, request: web.Request) -> web.Response:
        q = request.query
        start, end = self.w._range(q)
        ex, dom, ifc, d = self._place(q)
        exp, _act = self.w._tags(q)
        span = end - start
        auto = max(60, int(span / 120) // 60 * 60) if span <= 2 * 86400 else max(3600, int(span / 120) // 3600 * 3600)
        step = _int(q, "step", auto, 60, 86400 * 31)
        measure = q.get("measure", "bytes")
        if measure not in ("bytes", "packets"):
            raise ParamError("measure", f"{measure[:40]!r}: expected bytes or packets")
        rows = await self.c.query(self.c.store.link_timeseries, start, end, step, ex, dom, ifc, d, exp, measure)
        reg = self.c.registry.current
        series: Dict[Tuple[int, int], Dict[int, int]] = {}
        for b, tagged, k, n in rows:
            pts = series.setdefault((tagged, k), {})
            pts[b] = pts.get(b, 0) + n
        out: List[Dict[str, Any]] = []
        for (tagged, k), pts in sorted(series.items(), key=lambda kv: (kv[0][0] == 0, -sum(kv[1].values()))):
            if not tagged:
                name, ident = "untagged", None
            elif k == OTHER:
                name, ident = "other", k
            else:
                name = (reg.activity_name(exp, k) if exp is not None else reg.experiment_name(k)) or str(k)
                ident = k
            out.append({"id": ident, "name": name, "tagged": bool(tagged), "points": sorted(pts.items())})
        link = {k: q[k] for k in ("exporter", "domain", "interface", "direction") if q.get(k)}
        return web.json_response({"from": start, "to": end, "step": step, "measure": measure,
                                  "by": "activity" if exp is not None else "experiment", "link": link,
                                  "series": out})

    async def exporters(self, request: web.Request) -> web.Response:
        if self.c.links is None:
            return web.json_response({"sections": [], "note": "no flow-export section configured "
                                      "(collector.ipfix, collector.netflow, collector.sflow)"})
        return web.json_response(self.c.links.status())
