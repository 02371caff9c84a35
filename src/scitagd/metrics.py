"""`backends.prometheus`: the /metrics endpoint, an exporter that components register their
metrics providers with (`Host.register_metrics`); it never sees a flow event.

Keys (sinks/conf.py): bindAddress, port (flowd-go's `netlinkPort` is the same setting);
flowd-go's log and skopsPort are accepted.
"""

from __future__ import annotations

import logging
from typing import List

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .components import MetricsProvider
from .httpserver import HttpServer
from .sinks.conf import PrometheusConfig

__all__ = ["PrometheusExporter"]

log = logging.getLogger("scitagd.prometheus")


class PrometheusExporter:
    name = "prometheus"

    def __init__(self, conf: PrometheusConfig, providers: List[MetricsProvider]) -> None:
        self.conf = conf
        self.registry = CollectorRegistry(auto_describe=False)
        self._providers = providers  # the host's list: providers registered later still count
        self._registered: List[MetricsProvider] = []
        self._server = HttpServer(log)

    def _sync(self) -> None:
        for p in self._providers[len(self._registered):]:
            self.registry.register(p)
            self._registered.append(p)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        await self._server.start(app, self.conf.bind_address, self.conf.listen_port)

    async def stop(self) -> None:
        await self._server.stop()

    async def metrics(self, request: web.Request) -> web.Response:
        self._sync()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
