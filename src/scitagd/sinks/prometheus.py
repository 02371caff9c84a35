"""`backends.prometheus`: /metrics with the daemon's own health.

Config keys (flowd-go's, plus extensions):
  bindAddress   address to listen on (default 127.0.0.1)
  port          extension; flowd-go's `netlinkPort` is accepted as the same thing (default 8080)
  log, skopsPort   flowd-go keys, accepted
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Optional

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..components import Sink
from ..netutil import check_bind_address, check_port

log = logging.getLogger("scitagd.prometheus")


class PrometheusConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    bind_address: str = "127.0.0.1"
    port: Optional[int] = None
    netlink_port: Optional[int] = None
    skops_port: Optional[int] = None
    log: bool = True

    def __post_init__(self) -> None:
        check_bind_address("bindAddress", self.bind_address)
        if self.port is not None and self.netlink_port is not None and self.port != self.netlink_port:
            raise ValueError(f"port {self.port} and netlinkPort {self.netlink_port}: they name the "
                             "same setting, give one")
        check_port("port", self.listen_port)

    @property
    def listen_port(self) -> int:
        return self.port if self.port is not None else (self.netlink_port or 8080)


class DaemonCollector:
    """Reads the daemon's plain counters at scrape time (see stats.py for why)."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        st = d.stats
        reg = d.registry.current
        m = CounterMetricFamily("scitagd_events", "Flow events received, by source and state",
                                labels=["source", "state"])
        for (src, state), n in list(st.events.items()):
            m.add_metric([src, state], n)
        yield m
        m = CounterMetricFamily("scitagd_rejected", "Inputs rejected, by source and reason",
                                labels=["source", "reason"])
        for (src, reason), n in list(st.rejected.items()):
            m.add_metric([src, reason], n)
        yield m
        m = CounterMetricFamily("scitagd_ignored", "Inputs ignored on purpose (our own fireflies)",
                                labels=["source", "why"])
        for (src, why), n in list(st.ignored.items()):
            m.add_metric([src, why], n)
        yield m
        g = GaugeMetricFamily("scitagd_active_flows", "Active flows by experiment and activity",
                              labels=["experiment", "activity", "experiment_id", "activity_id"])
        for (e, a), n in list(d.table.active_by_tag.items()):
            g.add_metric([reg.experiment_name(e) or str(e), reg.activity_name(e, a) or str(a),
                          str(e), str(a)], n)
        yield g
        t = d.table
        m = CounterMetricFamily("scitagd_flow_table_events", "Flow table outcomes other than "
                                "a new or ended flow", labels=["kind"])
        for kind, n in (("duplicate_start", t.duplicate_starts), ("unknown_end", t.unknown_ends),
                        ("unknown_ongoing", t.unknown_ongoing), ("expired", t.expired),
                        ("table_full", t.overflow)):
            m.add_metric([kind], n)
        yield m
        m = CounterMetricFamily("scitagd_fireflies_sent", "Fireflies sent, by destination "
                                "('peer' for all transfer peers, host:port for collectors)",
                                labels=["destination"])
        for dest, n in list(st.sent.items()):
            m.add_metric([dest], n)
        yield m
        m = CounterMetricFamily("scitagd_fireflies_failed", "Fireflies not sent, by destination "
                                "and error", labels=["destination", "error"])
        for (dest, err), n in list(st.send_failed.items()):
            m.add_metric([dest, err], n)
        yield m
        m = CounterMetricFamily("scitagd_sink_queue_dropped", "Events dropped because a sink's "
                                "queue was full", labels=["sink"])
        for sink in d.sink_names():
            m.add_metric([sink], st.queue_dropped.get(sink, 0))
        yield m
        m = CounterMetricFamily("scitagd_sink_errors", "Batches a sink failed on", labels=["sink"])
        for sink in d.sink_names():
            m.add_metric([sink], st.sink_errors.get(sink, 0))
        yield m
        g = GaugeMetricFamily("scitagd_sink_queue_length", "Events waiting per sink",
                              labels=["sink"])
        for name, length in d.queue_lengths():
            g.add_metric([name], length)
        yield g
        now = time.time()
        yield GaugeMetricFamily("scitagd_registry_age_seconds", "Seconds since the registry in "
                                "use was fetched (for the bundled snapshot: since its 'modified')",
                                value=max(0.0, now - reg.loaded_at))
        m = CounterMetricFamily("scitagd_registry_refresh", "Registry refresh attempts",
                                labels=["result"])
        m.add_metric(["ok"], d.registry.refresh_ok)
        m.add_metric(["failed"], d.registry.refresh_failures)
        yield m


class PrometheusSink(Sink):
    """Serves metrics; it reads shared counters and needs no per-event work of its own."""

    name = "prometheus"

    def __init__(self, daemon: Any, conf: PrometheusConfig) -> None:
        super().__init__(daemon)
        self.conf = conf
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon))
        self._runner: web.AppRunner | None = None

    def add_collector(self, collector: Any) -> None:
        self.registry.register(collector)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.conf.bind_address, self.conf.listen_port,
                          reuse_address=True).start()
        log.info("listening address=%s port=%d", self.conf.bind_address, self.conf.listen_port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
