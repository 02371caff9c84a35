"""One home for running an aiohttp application (the API, /metrics, the collector's web side):
start, log where it listens, stop. Imported only by the components that serve HTTP, so that a
daemon without them never pays aiohttp's ~250 ms import."""

from __future__ import annotations

import logging
from typing import Optional

from aiohttp import web

__all__ = ["HttpServer"]


class HttpServer:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._runner: Optional[web.AppRunner] = None

    async def start(self, app: web.Application, host: str, port: int) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.log.info("listening address=%s port=%d", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
