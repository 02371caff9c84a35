# SPDX-License-Identifier: Apache-2.0
"""HTTP side of the collector: the dashboard (static files bundled, no CDN), a JSON query API
and /metrics. Parameters: `from`/`to` (epoch seconds, or `-6h`-style offsets from now),
`experiment`/`activity` (ids or registry names), `host`, `limit`, `step`, `by`."""

from __future__ import annotations

import logging
import re
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..errors import ParamError, RegistryError
from ..httpserver import HttpServer
from ..logs import Throttle
from ..netutil import drops_of
from ..registry import TAG_LABELS
from .storeapi import StoreError
from .tally import OTHER

if TYPE_CHECKING:
    from .service import Collector

__all__ = ["Web"]

log = logging.getLogger("scitagd.collector.web")
STATIC = resources.files("scitagd.collector").joinpath("static")
# ASCII only: Python's int()/float() also take other scripts' digits, "nan", "inf" and "1e308"
_OFFSET = re.compile(r"^-([0-9]{1,9}(?:\.[0-9]{1,6})?)([smhdw])$")
_EPOCH = re.compile(r"^[0-9]{1,10}(?:\.[0-9]{1,6})?$")
_WHOLE = re.compile(r"^[0-9]{1,9}$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_EPOCH = 4102444800.0  # 2100-01-01
MAX_OFFSET = 20 * 365 * 86400


def _time(q: Any, name: str, default: float) -> float:
    v = q.get(name)
    if v is None or v == "":
        return default
    m = _OFFSET.match(v)
    if m:
        back = float(m.group(1)) * _UNIT[m.group(2)]
        if back > MAX_OFFSET:
            raise ParamError(name, f"{v[:40]!r}: an offset of at most 20 years expected")
        return time.time() - back
    if not _EPOCH.match(v) or float(v) > MAX_EPOCH:
        raise ParamError(name, f"{v[:40]!r}: expected epoch seconds (0..{MAX_EPOCH:.0f}) or an offset like -6h")
    return float(v)


def _int(q: Any, name: str, default: int, lo: int, hi: int) -> int:
    v = q.get(name)
    if v is None or v == "":
        return default
    if not _WHOLE.match(v):
        raise ParamError(name, f"{v[:40]!r}: expected a whole number {lo}..{hi}")
    n = int(v)
    if not lo <= n <= hi:
        raise ParamError(name, f"{n}: expected {lo}..{hi}")
    return n


def _tag_param(name: str, v: str) -> str | int:
    """An id (ASCII digits, 0..65535) or a registry name (bounded, printable)."""
    if v.isdigit() or v.isdecimal() or v.isnumeric():
        if not (v.isascii() and len(v) <= 5 and int(v) <= 65535):
            raise ParamError(name, f"{v[:40]!r}: expected an id 0..65535 or a registry name")
        return int(v)
    if len(v) > 64 or not v.isprintable() or v.strip() != v or not v:
        raise ParamError(name, f"{v[:40]!r}: expected an id 0..65535 or a registry name")
    return v


class Web:
    def __init__(self, c: Collector) -> None:
        self.c = c
        self._server = HttpServer(log)
        self._throttle = Throttle(10.0)
        self.prom = CollectorRegistry(auto_describe=False)
        self.prom.register(_Metrics(c))
        if c.links is not None:
            self.prom.register(c.links)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/static/{name}", self.static)
        r.add_get("/api/v1/flows", self.flows)
        r.add_get("/api/v1/active", self.active)
        r.add_get("/api/v1/timeseries", self.timeseries)
        r.add_get("/api/v1/totals", self.totals)
        r.add_get("/api/v1/top", self.top)
        r.add_get("/api/v1/registry", self.registry)
        r.add_get("/api/v1/extent", self.extent)
        r.add_get("/api/v1/rejected", self.rejected)
        r.add_get("/metrics", self.metrics)
        r.add_get("/healthz", self.healthz)
        from .linkweb import LinkApi

        LinkApi(self).routes(r)
        return app

    async def start(self) -> None:
        h = self.c.conf.http
        await self._server.start(self.app(), h.bind_address, h.port)
        log.info("dashboard http://%s:%d/", h.bind_address if ":" not in h.bind_address
                 else f"[{h.bind_address}]", h.port)

    async def stop(self) -> None:
        await self._server.stop()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except ParamError as e:
            return web.json_response({"error": str(e), "param": e.name}, status=400)
        except StoreError as e:
            if self._throttle.allow("store"):
                log.warning("query failed: store unavailable path=%s error=%r", request.path, str(e)[:300])
            return web.json_response({"error": f"store unavailable: {str(e)[:300]}"}, status=503)

    # --- helpers -----------------------------------------------------------------------

    def _tags(self, q: Any) -> Tuple[Optional[int], Optional[int]]:
        reg = self.c.registry.current
        exp = act = None
        e, a = q.get("experiment"), q.get("activity")
        try:
            if e not in (None, ""):
                exp = reg.resolve(_tag_param("experiment", e), 0)[0]
            if a not in (None, ""):
                av = _tag_param("activity", a)
                if exp is None:
                    if not isinstance(av, int):
                        raise ParamError("activity", "a name needs an experiment")
                    act = av
                else:
                    act = reg.resolve(exp, av)[1]
        except RegistryError as err:
            raise ParamError(err.field or "experiment", str(err)) from None
        return exp, act

    def _range(self, q: Any) -> Tuple[float, float]:
        now = time.time()
        start = _time(q, "from", now - 86400)
        end = _time(q, "to", now)
        if end <= start:
            raise ParamError("to", "must be after from")
        return start, end

    def _names(self, d: Dict[str, Any]) -> Dict[str, Any]:
        reg = self.c.registry.current
        if "exp" in d:
            d["experiment"] = reg.experiment_name(d["exp"]) or str(d["exp"])
            if "act" in d:
                d["activity"] = reg.activity_name(d["exp"], d["act"]) or str(d["act"])
        return d

    # --- handlers ------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=STATIC.joinpath("index.html").read_text(), content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {".js": "application/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        ext = name[name.rfind("."):] if "." in name else ""
        if ext not in types or "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        f = STATIC.joinpath(name)
        if not f.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=f.read_bytes(), content_type=types[ext],
                            headers={"Cache-Control": "max-age=300"})

    async def flows(self, request: web.Request) -> web.Response:
        q = request.query
        start, end = self._range(q)
        exp, act = self._tags(q)
        state = q.get("state") or None
        if state not in (None, "active", "ended", "expired"):
            raise ParamError("state", f"{state!r}: expected active, ended or expired")
        limit = _int(q, "limit", 100, 1, 10000)
        host = q.get("host") or None
        rows = await self.c.query(self.c.store.flows, start, end, exp, act, host, state, limit)
        for r in rows:
            self._names(r)
            dur = (r["end"] - r["start"]) if r["end"] else None
            r["duration"] = dur
            r["throughput_bps"] = ((r["sent"] + r["received"]) * 8 / dur) if dur else None
        if rows and self.c.links is not None:  # where router flow exports saw them
            from .linkweb import path_json

            paths = await self.c.query(self.c.store.paths, [(r["proto"], r["src"], r["sport"], r["dst"], r["dport"],
                                                             r["start"], r["end"]) for r in rows])
            for r, p in zip(rows, paths):
                if p:
                    r["path"] = [path_json(x) for x in p]
        return web.json_response({"flows": rows, "count": len(rows)})

    async def active(self, request: web.Request) -> web.Response:
        limit = _int(request.query, "limit", 200, 1, 100000)
        rows, count = await self.c.query(self.c.store.active, limit)
        for r in rows:
            for k in ("end", "state"):
                r.pop(k, None)
            self._names(r)
        return web.json_response({"flows": rows, "count": count})

    async def timeseries(self, request: web.Request) -> web.Response:
        q = request.query
        start, end = self._range(q)
        exp, act = self._tags(q)
        span = end - start
        # about 120 points; whole hours beyond two days, where the hourly roll-up answers
        auto = max(60, int(span / 120) // 60 * 60) if span <= 2 * 86400 else max(3600, int(span / 120) // 3600 * 3600)
        step = _int(q, "step", auto, 60, 86400 * 31)
        measure = q.get("measure", "bytes")
        if measure not in ("bytes", "flows"):
            raise ParamError("measure", f"{measure!r}: expected bytes or flows")
        rows = await self.c.query(self.c.store.timeseries, start, end, step, exp, act, q.get("host") or None,
                                  measure)
        reg = self.c.registry.current
        series: Dict[int, Dict[int, int]] = {}
        for b, k, n in rows:
            series.setdefault(k, {})[b] = n
        keyname = "activity" if exp is not None else "experiment"
        out = []
        for k, pts in sorted(series.items(), key=lambda kv: -sum(kv[1].values())):
            name = (reg.activity_name(exp, k) if exp is not None else reg.experiment_name(k)) or str(k)
            out.append({"id": k, "name": name, "points": sorted(pts.items())})
        return web.json_response({"from": start, "to": end, "step": step, "by": keyname, "measure": measure,
                                  "series": out})

    async def totals(self, request: web.Request) -> web.Response:
        q = request.query
        by = q.get("by", "experiment")
        if by not in ("experiment", "activity", "pair"):
            raise ParamError("by", f"{by!r}: expected experiment, activity or pair")
        start, end = self._range(q)
        exp, act = self._tags(q)
        limit = _int(q, "limit", 50, 1, 10000)
        rows = await self.c.query(self.c.store.totals, by, start, end, exp, act, q.get("host") or None, limit)
        return web.json_response({"by": by, "totals": [self._names(r) for r in rows]})

    async def top(self, request: web.Request) -> web.Response:
        q = request.query
        start, end = self._range(q)
        exp, act = self._tags(q)
        n = _int(q, "n", 10, 1, 1000)
        rows = await self.c.query(self.c.store.totals, "pair", start, end, exp, act, q.get("host") or None, n)
        return web.json_response({"top": rows})

    async def registry(self, request: web.Request) -> web.Response:
        reg = self.c.registry.current
        return web.json_response({"experiments": [
            {"id": e.exp_id, "name": e.exp_name,
             "activities": [{"id": a.activity_id, "name": a.activity_name} for a in e.activities]}
            for e in reg.experiments]})

    async def extent(self, request: web.Request) -> web.Response:
        lo, hi = await self.c.query(self.c.store.extent)
        return web.json_response({"from": lo, "to": hi})

    async def rejected(self, request: web.Request) -> web.Response:
        return web.json_response({"counts": dict(self.c.rejected), "samples": list(self.c.samples)})

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.prom)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        ok, body = self.c.health()
        return web.json_response(body, status=200 if ok else 503)


_CH_COUNTERS = (
    ("written", "Fireflies written to ClickHouse"),
    ("batches", "INSERTs into ClickHouse that succeeded"),
    ("errors", "INSERTs into ClickHouse that failed (retried with backoff)"),
    ("poisoned", "Fireflies dropped after ClickHouse refused their INSERT 5 times"),
    ("rebuilds", "Days of traffic rebuilt from the fireflies"),
    ("rebuild_seconds", "Seconds spent rebuilding traffic"),
)
_CH_GAUGES = (
    ("buffered", "Fireflies waiting for their INSERT (bounded by store.maxBufferRows)"),
    ("oldest_seconds", "Age of the oldest firefly waiting for its INSERT"),
)


class _Metrics:
    def __init__(self, c: Collector) -> None:
        self.c = c

    def collect(self) -> Iterator[Metric]:
        c, t = self.c, self.c.tally
        reg = c.registry.current
        labels = TAG_LABELS

        def lv(tag: Tuple[int, int]) -> List[str]:
            return ["other"] * 4 if tag == OTHER else reg.tag_labels(*tag)

        for name, doc, data in (("flows_started", "Flows started", t.started),
                                ("flows_ended", "Flows ended", t.ended),
                                ("flows_expired", "Flows closed without an end (silent for activeTimeout, or "
                                 "beyond maxActiveFlows)", t.expired),
                                ("bytes", "Bytes of accounted flows (both directions)", t.bytes)):
            m = CounterMetricFamily(f"scitagd_collector_{name}", doc, labels=labels)
            for tag, n in list(data.items()):
                m.add_metric(lv(tag), n)
            yield m
        g = GaugeMetricFamily("scitagd_collector_active_flows", "Flows started and not ended", labels=labels)
        for tag, n in list(t.active.items()):
            g.add_metric(lv(tag), n)
        yield g
        g = GaugeMetricFamily("scitagd_collector_throughput_bits_per_second",
                              "Bits per second accounted over the last minute", labels=labels)
        for tag, bps in t.throughput().items():
            g.add_metric(lv(tag), bps)
        yield g
        m = CounterMetricFamily("scitagd_collector_udp_drops", "Datagrams the kernel dropped for the collector's "
                                "UDP socket (receive buffer full; see collector.udp.receiveBuffer)", labels=["address"])
        for addr, socks in list(c.udp_sockets.items()):
            m.add_metric([addr], drops_of(socks))  # one socket per worker (SO_REUSEPORT)
        yield m
        m = CounterMetricFamily("scitagd_collector_datagrams", "Messages received", labels=["transport"])
        for tr, n in list(c.datagrams.items()):
            m.add_metric([tr], n)
        yield m
        m = CounterMetricFamily("scitagd_collector_rejected", "Messages rejected", labels=["reason"])
        for r, n in list(c.rejected.items()):
            m.add_metric([r], n)
        yield m
        m = CounterMetricFamily("scitagd_collector_fireflies", "Fireflies accounted, by state or outcome",
                                labels=["outcome"])
        for s, n in list(t.outcomes.items()):
            m.add_metric([s], n)
        if "duplicate" not in t.outcomes:
            m.add_metric(["duplicate"], 0)
        m.add_metric(["local_only"], c.local_only)
        yield m
        m = CounterMetricFamily("scitagd_collector_tcp_refused", "Syslog-TCP connections refused or closed",
                                labels=["reason"])
        for r, n in list(c.tcp_refused.items()):
            m.add_metric([r], n)
        yield m
        yield GaugeMetricFamily("scitagd_collector_tcp_connections", "Open syslog-TCP connections",
                                value=sum(c.tcp_connections.values()))
        yield CounterMetricFamily("scitagd_collector_store_rows", "Fireflies written to the store", value=c.store_rows)
        yield CounterMetricFamily("scitagd_collector_store_errors", "Failed store flushes (batch kept)",
                                  value=c.store_errors)
        st = c.store_stats()
        yield CounterMetricFamily("scitagd_collector_store_dropped", "Fireflies lost because the store could not "
                                  "write and maxPending (SQLite) or maxBufferRows (ClickHouse) was reached",
                                  value=c.store_dropped + st.counters.get("dropped", 0))
        yield CounterMetricFamily("scitagd_collector_store_refused", "Fireflies the database refused (the rest of "
                                  "their batch written)", value=c.store_refused)
        yield GaugeMetricFamily("scitagd_collector_store_up", "1 when the store takes writes (the last flush "
                                "succeeded; ClickHouse: the last INSERT)",
                                value=0 if c.store_problem or st.problems else 1)
        for name, doc in _CH_COUNTERS:
            if name in st.counters:
                yield CounterMetricFamily(f"scitagd_collector_clickhouse_{name}", doc, value=st.counters[name])
        for name, doc in _CH_GAUGES:
            if name in st.gauges:
                yield GaugeMetricFamily(f"scitagd_collector_clickhouse_{name}", doc, value=st.gauges[name])
        yield GaugeMetricFamily("scitagd_collector_store_flows", "Flows in the store (updated every 30 s)",
                                value=c.flows_in_store)
        yield GaugeMetricFamily("scitagd_collector_pending_rows", "Fireflies waiting for the next flush or "
                                "being written (not yet in scitagd_collector_fireflies_total)",
                                value=c.pending_count())
        yield CounterMetricFamily("scitagd_collector_spans_clamped", "Byte intervals longer than 30 days, spread "
                                  "over their last 30 days only", value=t.clamped)
        yield CounterMetricFamily("scitagd_collector_tag_conflicts", "Fireflies of a known flow carrying other "
                                  "tags (the flow keeps its first)", value=t.tag_conflicts)
        yield CounterMetricFamily("scitagd_collector_evicted", "Active flows closed because maxActiveFlows was "
                                  "reached", value=t.evicted)
        m = CounterMetricFamily("scitagd_collector_relayed", "Datagrams relayed", labels=["destination"])
        for d, n in list(c.relay_sent.items()):
            m.add_metric([d], n)
        yield m
        yield CounterMetricFamily("scitagd_collector_relay_loops", "Datagrams not relayed again (loop)",
                                  value=c.relay_loops)
