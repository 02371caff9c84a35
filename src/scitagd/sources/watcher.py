"""`plugins.watcher`: TCP connections reported by the kernel as they are established and closed
(a cgroup sock_ops program, bpf/watcher.bpf.c), tagged by port rules.

A matching connection is put into the marker's map by the kernel itself, before its first data
byte; its end carries the exact byte counts of the socket at close.

Config keys:
  cgroupPath   cgroup v2 whose sockets are watched (default /sys/fs/cgroup; /unified tried too)
  rules        list of {localPorts, remotePorts, experiment, activity}: ports "5201" or
               "5201-5210" (empty: any); experiment/activity ids or registry names; first match wins
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import msgspec

from ..components import Source
from ..events import END, START, Usage, make_event

log = logging.getLogger("scitagd.watcher")


def parse_ports(key: str, v: Union[str, int, None]) -> Tuple[int, int]:
    if v in (None, ""):
        return (0, 0)
    text = str(v)
    lo, _, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"{key} {v!r}: expected a port or a range like 5201-5210") from None
    if not (1 <= a <= b <= 65535):
        raise ValueError(f"{key} {v!r}: expected ports 1..65535, low before high")
    return (a, b)


class WatchRule(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    experiment: Union[int, str]
    activity: Union[int, str]
    local_ports: Union[str, int, None] = None
    remote_ports: Union[str, int, None] = None

    def __post_init__(self) -> None:
        parse_ports("localPorts", self.local_ports)
        parse_ports("remotePorts", self.remote_ports)
        if self.local_ports in (None, "") and self.remote_ports in (None, ""):
            raise ValueError("a rule needs localPorts or remotePorts")


class WatcherConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    cgroup_path: str = "/sys/fs/cgroup"
    rules: List[WatchRule] = msgspec.field(default_factory=list)


class WatcherSource(Source):
    name = "watcher"

    def __init__(self, daemon: Any, conf: WatcherConfig) -> None:
        super().__init__(daemon)
        self.conf = conf
        self.w: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def start(self) -> None:
        from ..bpf.loader import PIN_DIR
        from ..bpf.watchloader import Rule, Watcher

        reg = self.daemon.registry.current
        rules = []
        for r in self.conf.rules:
            exp, act = reg.resolve(r.experiment, r.activity)
            rules.append(Rule(parse_ports("localPorts", r.local_ports), parse_ports("remotePorts", r.remote_ports),
                              exp, act))
        marker = self.daemon.conf.backends.marker
        pin = (PIN_DIR if marker is None else Path(marker.pin_path)) / "flows"
        self._loop = asyncio.get_running_loop()
        self.w = Watcher(self.conf.cgroup_path, rules, pin if marker is not None else None)
        await self._loop.run_in_executor(None, self.w.load)
        await self._loop.run_in_executor(None, self.w.attach)
        self.w.run(self._from_thread)

    async def stop(self) -> None:
        if self.w is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.w.close)

    def _from_thread(self, e: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._event, e)

    def _event(self, e: Any) -> None:
        # A cgroup's sock_ops program sees sockets of every network namespace in it (containers,
        # test namespaces): only connections with one of this namespace's addresses are ours.
        if not self.daemon.is_local(e.local[0]):
            self.daemon.stats.ignored[(self.name, "other_netns")] += 1
            return
        # This host is taken as the supplier (src): what a watched service sends is its data.
        try:
            ev = make_event(END if e.closed else START, "tcp", e.local[0], e.local[1], e.remote[0], e.remote[1],
                            e.experiment or 1, e.activity, "", self.name,
                            usage=Usage(received=e.bytes_received, sent=e.bytes_acked) if e.closed else None)
        except ValueError as err:
            self.daemon.stats.reject(self.name, "bad_event")
            log.warning("event not usable error=%r", str(err))
            return
        if e.closed:
            known = self.daemon.table.get(ev.key)
            if known is None:
                return  # a close of a connection no rule matched
            ev = msgspec.structs.replace(ev, experiment=known.experiment, activity=known.activity,
                                         end_time=time.time())
        self.daemon.submit(ev)

