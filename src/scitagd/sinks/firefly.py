# SPDX-License-Identifier: Apache-2.0
"""`backends.firefly`: start/end fireflies to the transfer's peer and to collectors.

Keys (sinks/conf.py): destinationPort, prependSyslog, collectors (+ flowd-go's sendToCollector,
collectorAddress, collectorPort), resolveInterval, sendToPeer, hostname, enrich, enrichmentMode,
stun (this host's public addresses in place of its private ones: publicaddr.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgspec

from ..components import Host, Sink
from ..events import ONGOING, FlowEvent
from ..firefly import build_json, iso, syslog_header
from .conf import FireflySinkConfig

__all__ = ["FireflySink"]

log = logging.getLogger("scitagd.firefly.sink")


class FireflySink(Sink):
    name = "firefly"

    def __init__(self, host: Host, conf: FireflySinkConfig,
                 interfaces: Optional[Callable[[], List[str]]] = None) -> None:
        """`interfaces`: the marker's, whose addresses `stun` maps to public ones."""
        super().__init__(host)
        self.conf = conf
        self.public = None
        if conf.stun is not None:
            from .publicaddr import PublicAddresses

            self.public = PublicAddresses(conf.stun, interfaces or list)
        self.hostname = conf.hostname or socket.getfqdn()
        self._collectors = conf.collector_list()
        # label -> resolved sockaddrs; kept from the last good resolution when DNS fails.
        self._resolved: Dict[str, List[Tuple[int, Tuple[Any, ...]]]] = {}
        self._sock4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        for s, any_addr in ((self._sock4, "0.0.0.0"), (self._sock6, "::")):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.bind((any_addr, 0))
            host.add_own_port(s.getsockname()[1])
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.public is not None:
            await self.public.start()
        await self._resolve_all()
        if self._collectors:
            self._task = asyncio.get_running_loop().create_task(self._resolver())
        log.info("sending to_peer=%s port=%d collectors=%s syslog=%s hostname=%s",
                 self.conf.send_to_peer, self.conf.destination_port,
                 ",".join(f"{h}:{p}" for h, p in self._collectors) or "none",
                 self.conf.prepend_syslog, self.hostname)

    async def stop(self) -> None:
        if self.public is not None:
            await self.public.stop()
        if self._task:
            self._task.cancel()
        self._sock4.close()
        self._sock6.close()

    async def _resolver(self) -> None:
        while True:
            await asyncio.sleep(self.conf.resolve_interval)
            await self._resolve_all()

    async def _resolve_all(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self._collectors:
            label = f"{host}:{port}"
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as e:
                self.counters.failed(label, "resolve")
                log.warning("collector not resolved, keeping previous addresses collector=%s "
                            "error=%r", label, str(e))
                continue
            addrs: List[Tuple[int, Tuple[Any, ...]]] = []
            for fam, _, _, _, sa in infos:
                if (fam, sa) not in addrs:
                    addrs.append((fam, sa))
            # One address per collector (the first, as a resolver orders them): a collector
            # with A and AAAA records would otherwise count every flow twice.
            self._resolved[label] = addrs[:1]

    def peer_of(self, ev: FlowEvent) -> str:
        """The end of the flow that is not this host (dst when it cannot tell)."""
        is_local = self.host.is_local
        if is_local(ev.dst_ip) and not is_local(ev.src_ip):
            return ev.src_ip
        return ev.dst_ip

    async def consume(self, batch: List[FlowEvent]) -> None:
        now = time.time()
        now_iso = iso(now)  # one current-time for the batch: formatting it is ~0.7 us
        header = syslog_header(now_iso, self.hostname) if self.conf.prepend_syslog else ""
        port = self.conf.destination_port
        send_peer = self.conf.send_to_peer
        resolved = self._resolved
        enrich = self.conf.enrich
        public = self.public
        for ev in batch:
            if ev.state == ONGOING and not enrich:
                continue  # ongoing fireflies only with backends.firefly.enrich: true
            shown = ev
            if public is not None:  # this host's public address in the document, not where it goes
                src = public.public(ev.src_ip, self.host.is_local)
                dst = public.public(ev.dst_ip, self.host.is_local)
                if src or dst:
                    shown = msgspec.structs.replace(ev, src_ip=src or ev.src_ip, dst_ip=dst or ev.dst_ip)
            data = (header + build_json(shown, now, None, now_iso)).encode()
            if send_peer:
                peer = self.peer_of(ev)
                self._send(data, socket.AF_INET6 if ":" in peer else socket.AF_INET, (peer, port), "peer")
            for label, addrs in resolved.items():
                for fam, sa in addrs:
                    self._send(data, fam, sa, label)

    def _send(self, data: bytes, fam: int, sa: Tuple[Any, ...], label: str) -> None:
        sock = self._sock6 if fam == socket.AF_INET6 else self._sock4
        try:
            sock.sendto(data, sa)
            self.counters.sent(label)
        except OSError as e:
            # EAGAIN (buffer full), ENETUNREACH, EPERM from a firewall...: counted, never fatal.
            self.counters.failed(label, type(e).__name__)
