# SPDX-License-Identifier: Apache-2.0
"""`backends.prometheus`: the /metrics endpoint, an exporter that components register their
metrics providers with (`Host.register_metrics`); it never sees a flow event.

Keys (sinks/conf.py): bindAddress, port (flowd-go's `netlinkPort` is the same setting), log
(flowd-go's: false silences the metrics server's log); flowd-go's skopsPort is accepted (a
warning at start says both flavours share one port).
"""

from __future__ import annotations

import logging
from typing import Iterator, List

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .components import MetricsProvider
from .httpserver import HttpServer
from .sinks.conf import PrometheusConfig

__all__ = ["PrometheusExporter"]

log = logging.getLogger("scitagd.prometheus")


class _Providers:
    """What generate_latest() asks for: every provider's metrics, from the host's live list
    (components come and go on a reload)."""

    def __init__(self, providers: List[MetricsProvider]) -> None:
        self.providers = providers

    def collect(self) -> Iterator[Metric]:
        for p in list(self.providers):
            yield from p.collect()


class PrometheusExporter:
    name = "prometheus"

    def __init__(self, conf: PrometheusConfig, providers: List[MetricsProvider]) -> None:
        self.conf = conf
        self._all = _Providers(providers)
        self._server = HttpServer(log)

    async def start(self) -> None:
        if not self.conf.log:
            log.info("log: false: the metrics server logs nothing from here on (as flowd-go's discards its log)")
        log.disabled = not self.conf.log
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        await self._server.start(app, self.conf.bind_address, self.conf.listen_port)

    async def stop(self) -> None:
        await self._server.stop()

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._all)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
