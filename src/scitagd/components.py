# SPDX-License-Identifier: Apache-2.0
"""The contracts between the daemon core and its components: what a component is given (a
`Host`), what it must provide (`Source`, `Sink`, `Enricher`, `MetricsProvider`), and nothing
else. A component never sees the daemon itself.

    sources --submit()--> core: flow table --queue per sink--> sinks
       ^                     |  (an end of a TCP flow waits for the Enricher's last sample)
       +---- Host -----------+--> flows(), flow(), registry, counters(), is_local(), ...

Threads: every method here is called on the event loop's thread, and every Host method returns
at once (no I/O). Anything that blocks for more than ~100 us (netlink, bpf syscalls in bulk,
files) runs in an executor; results come back to the loop (e.g. `loop.call_soon_threadsafe`).
This module imports nothing from the daemon, not even for type checking.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar, Iterable, List, Optional, Protocol

from .events import FlowEvent, FlowKey

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .registry import Registry
    from .stats import Stats

__all__ = ["Counters", "Enricher", "Host", "MetricsProvider", "Sink", "Source"]


class Counters:
    """One component's counters in the daemon's plain-dict stats (read when scraped: a dict
    increment is ~60 ns where a labelled prometheus Counter costs ~1.5 us)."""

    __slots__ = ("_stats", "component")

    def __init__(self, stats: Stats, component: str) -> None:
        self._stats = stats
        self.component = component

    def reject(self, reason: str) -> None:
        """An input refused, by reason (`scitagd_rejected_total`)."""
        self._stats.rejected[(self.component, reason)] += 1

    def ignore(self, why: str) -> None:
        """An input dropped on purpose (`scitagd_ignored_total`), e.g. our own firefly."""
        self._stats.ignored[(self.component, why)] += 1

    def sent(self, destination: str) -> None:
        self._stats.sent[destination] += 1

    def failed(self, destination: str, error: str) -> None:
        self._stats.send_failed[(destination, error)] += 1


class MetricsProvider(Protocol):
    """Anything with prometheus_client's `collect()`: called on a scrape, on the loop's thread;
    it reads live state and must not block (no syscalls per flow)."""

    def collect(self) -> Iterable[Metric]: ...


class Host(Protocol):
    """What a component may use of the daemon: the flow table (read), the registry, its own
    counters, this host's addresses, and `submit` for new events."""

    @property
    def registry(self) -> Registry:
        """The registry in use now (replaced whole on refresh: do not keep it for long)."""
        ...

    def counters(self, component: str) -> Counters: ...

    def submit(self, ev: FlowEvent) -> None:
        """A validated event into the flow table and on to the sinks. Never blocks; a sink
        that cannot keep up drops from its own queue, counted."""
        ...

    def flow(self, key: FlowKey) -> Optional[FlowEvent]:
        """The active flow with this 5-tuple, as it was started (its tags, its start time)."""
        ...

    def flows(self) -> List[FlowEvent]:
        """A snapshot of the active flows, oldest first."""
        ...

    def flow_count(self) -> int:
        """How many flows are active."""
        ...

    def restore(self, ev: FlowEvent) -> bool:
        """A flow known from before a restart (the marker's pinned map): into the table
        without counting as a new start. False when it is known already or the table is full."""
        ...

    def is_local(self, ip: str) -> bool:
        """Whether `ip` (canonical text) is one of this host's addresses (refreshed every 30 s)."""
        ...

    def add_own_port(self, port: int) -> None:
        """A local UDP port this daemon sends fireflies from (the firefly sink's sockets)."""
        ...

    def is_own(self, ip: str, port: int) -> bool:
        """Whether a datagram from ip:port is one of our own fireflies come back to us."""
        ...

    def register_metrics(self, provider: MetricsProvider) -> None:
        """Expose `provider` on /metrics when backends.prometheus is on (ignored otherwise)."""
        ...


class Source:
    """Turns outside input (HTTP, a FIFO, datagrams, kernel events) into FlowEvents for
    `host.submit`. `start` opens and binds everything before it returns: the daemon counts as
    ready once every source's start has returned. `stop` closes it all within 0.5 s."""

    name: ClassVar[str] = "source"

    def __init__(self, host: Host) -> None:
        self.host = host
        self.counters = host.counters(self.name)

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        pass


class Sink:
    """Consumes the dispatched stream through a bounded queue of its own (`queue_size`), so a
    slow sink only ever delays or drops its own events. `consume` gets batches of up to 512
    events on the loop's thread: it must not block (await what must wait). A sink overrides
    either `consume` or `handle` (one event at a time)."""

    name: ClassVar[str] = "sink"
    queue_size: ClassVar[int] = 65536

    def __init__(self, host: Host) -> None:
        self.host = host
        self.counters = host.counters(self.name)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def consume(self, batch: List[FlowEvent]) -> None:
        for ev in batch:
            self.handle(ev)

    def handle(self, ev: FlowEvent) -> None:
        raise NotImplementedError


class Enricher(Protocol):
    """Samples the TCP state of active flows (`enrichers.netlink`, `enrichers.skops`) and
    submits `ongoing` events through the host; it keeps per-flow state only while the flow
    is active (or its end is being finished)."""

    flavour: str  # "netlink" | "skops": the `flavour` label of per-flow metrics

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def end_of(self, ev: FlowEvent) -> asyncio.Future[FlowEvent]:
        """Called on the loop for the end of a TCP flow, before the flow's state may go:
        the returned future gives the end event carrying the flow's final usage (taking one
        last sample off the loop, ~0.4 ms), or `ev` unchanged if the producer sent its own."""
        ...
