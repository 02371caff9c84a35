"""What a source and a sink look like to the daemon, and the bounded queue between them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Deque, List

from .events import FlowEvent

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("scitagd.dispatch")


class Source:
    """Produces FlowEvents and hands them to `daemon.submit`."""

    name = "source"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        pass


class Sink:
    """Consumes the dispatched stream. `consume` must not block the loop; await if it must wait."""

    name = "sink"
    queue_size = 65536

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def consume(self, batch: List[FlowEvent]) -> None:
        for ev in batch:
            self.handle(ev)

    def handle(self, ev: FlowEvent) -> None:
        raise NotImplementedError


class SinkRunner:
    """A bounded queue and one task per sink: a slow sink only ever delays (and drops) its own."""

    BATCH = 512

    def __init__(self, sink: Sink, daemon: Daemon) -> None:
        self.sink = sink
        self.stats = daemon.stats
        self.queue: Deque[FlowEvent] = deque()
        self.limit = sink.queue_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = 0.0
        self._drops_since_log = 0

    def put(self, ev: FlowEvent) -> None:
        q = self.queue
        if len(q) >= self.limit:
            self.stats.queue_dropped[self.sink.name] += 1
            self._drops_since_log += 1
            now = time.monotonic()
            if now - self._last_drop_log > 5:
                log.warning("sink queue full, events dropped sink=%s dropped=%d limit=%d",
                            self.sink.name, self._drops_since_log, self.limit)
                self._last_drop_log = now
                self._drops_since_log = 0
            return
        q.append(ev)
        if len(q) == 1:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sink-{self.sink.name}")

    async def _run(self) -> None:
        q, wake, name, stats = self.queue, self._wake, self.sink.name, self.stats
        while True:
            if not q:
                wake.clear()
                await wake.wait()
            n = min(len(q), self.BATCH)
            batch = [q.popleft() for _ in range(n)]
            try:
                await self.sink.consume(batch)
                stats.dispatched[name] += n
            except asyncio.CancelledError:
                raise
            except Exception:
                stats.sink_errors[name] += 1
                log.exception("sink failed on a batch sink=%s events=%d", name, n)
            # Let sources run between batches even when this sink is never idle.
            await asyncio.sleep(0)

    async def drain(self, timeout: float) -> None:
        """Give the sink a chance to send what is queued (end fireflies at shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue and time.monotonic() < deadline and self._task and not self._task.done():
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
