# SPDX-License-Identifier: Apache-2.0
"""`enrichers.skops`: samples taken by the watcher's sock_ops program on RTT callbacks, at most
one per socket and period (rate-limited in the kernel with per-socket storage), delivered over
its ring buffer. Same output as the netlink enricher: ongoing events, per-flow metrics (flavour
"skops"), the last sample for the end. Sockets established before scitagd started have no RTT
callbacks and are not sampled (the netlink enricher covers them)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Dict, Optional, Set, Tuple

import msgspec

from ..components import Host
from ..events import ONGOING, TCP, FlowEvent, FlowKey
from .netlink import LastSamples, netlink_fields, sample_usage
from .sockdiag import Sample

if TYPE_CHECKING:
    from ..bpf.watchloader import Event, Watcher

__all__ = ["SkopsEnricher"]

log = logging.getLogger("scitagd.enrich.skops")


class SkopsEnricher(LastSamples):
    flavour = "skops"

    def __init__(self, host: Host, period_ms: int, mode: str = "lean") -> None:
        self.host = host
        self.period = period_ms / 1000.0
        self.mode = mode
        self.last: Dict[FlowKey, Tuple[Sample, bool]] = {}
        self.samples = 0
        self.ending: Set[FlowKey] = set()
        self.watcher: Optional[Watcher] = None
        self._in_map: Set[bytes] = set()
        self._task: Optional[asyncio.Task[None]] = None

    def bind(self, watcher: Watcher) -> None:
        """The watcher, loaded with sampling at this period: its `watched` map is ours to fill."""
        self.watcher = watcher

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sync(), name="enrich-skops")
        log.info("sampling on RTT callbacks period_ms=%d", int(self.period * 1000))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def _sync(self) -> None:
        """Keep the kernel's `watched` map equal to the active TCP flows (both directions)."""
        from ..bpf.watchloader import key

        while True:
            if self.watcher is not None:
                want: Dict[bytes, FlowKey] = {}
                for ev in self.host.flows():
                    if ev.protocol == TCP:
                        want[key(ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port)] = ev.key
                        want[key(ev.dst_ip, ev.dst_port, ev.src_ip, ev.src_port)] = ev.key
                for k in set(want) - self._in_map:
                    self.watcher.watch(k)
                for k in self._in_map - set(want):
                    self.watcher.unwatch(k)
                self._in_map = set(want)
                current = set(want.values()) | self.ending
                for fk in [fk for fk in self.last if fk not in current]:
                    del self.last[fk]
            await asyncio.sleep(min(self.period, 1.0))

    def on_sample(self, e: Event) -> Optional[FlowEvent]:
        """A ring buffer sample -> the ongoing event of its flow (None if not a watched flow)."""
        flow = self.host.flow
        ev = flow((TCP, e.local[0], e.local[1], e.remote[0], e.remote[1]))
        local_is_src = True
        if ev is None:
            ev = flow((TCP, e.remote[0], e.remote[1], e.local[0], e.local[1]))
            local_is_src = False
        if ev is None:
            return None
        info = {"rtt": e.srtt_us, "min_rtt": e.rtt_min, "snd_cwnd": e.cwnd, "snd_mss": e.mss,
                "bytes_acked": e.bytes_acked, "bytes_received": e.bytes_received, "total_retrans": e.retrans}
        s = Sample(e.local, e.remote, info=info)
        self.last[ev.key] = (s, local_is_src)
        self.samples += 1
        return msgspec.structs.replace(ev, state=ONGOING, source="skops", end_time=None, usage=sample_usage(s),
                                       netlink=netlink_fields(s, self.mode))
