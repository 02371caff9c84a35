"""`backends.firefly`: start/end fireflies to the transfer's peer and to collectors.

Config keys (flowd-go's, plus extensions):
  destinationPort   UDP port on the peer (default 10514)
  prependSyslog     RFC 5424 header in front of the JSON (default true)
  sendToCollector, collectorAddress, collectorPort   flowd-go's single collector
  collectors        extension: list of "host:port" ("[v6]:port"); hostnames re-resolved
  resolveInterval   extension: seconds between re-resolving collector names (default 300)
  sendToPeer        extension: false sends to collectors only (default true)
  hostname          extension: syslog HOSTNAME (default: this host's FQDN)
  enrich, enrichmentMode, stun   flowd-go keys, accepted (ongoing fireflies come with enrichers)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Dict, List, Optional, Tuple

import msgspec

from ..components import Sink
from ..events import FlowEvent
from ..firefly import DEFAULT_PORT, build_json, iso, syslog_header
from ..netutil import check_host, check_port, parse_hostport

log = logging.getLogger("scitagd.firefly.sink")


class FireflySinkConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    destination_port: int = DEFAULT_PORT
    prepend_syslog: bool = True
    send_to_collector: bool = False
    collector_address: str = "127.0.0.1"
    collector_port: int = DEFAULT_PORT
    collectors: List[str] = []
    resolve_interval: float = 300.0
    send_to_peer: bool = True
    hostname: Optional[str] = None
    enrich: bool = False
    enrichment_mode: str = "lean"
    stun: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        check_port("destinationPort", self.destination_port)
        check_port("collectorPort", self.collector_port)
        check_host("collectorAddress", self.collector_address)
        for c in self.collectors:
            parse_hostport("collectors", c, DEFAULT_PORT)
        if self.resolve_interval < 1:
            raise ValueError(f"resolveInterval {self.resolve_interval}: expected >= 1 second")
        if self.enrichment_mode not in ("lean", "full", "compatible"):
            raise ValueError(f"enrichmentMode {self.enrichment_mode!r}: expected lean, full or "
                             "compatible")

    def collector_list(self) -> List[Tuple[str, int]]:
        out = [parse_hostport("collectors", c, DEFAULT_PORT) for c in self.collectors]
        if self.send_to_collector:
            out.append((self.collector_address, self.collector_port))
        return out


class FireflySink(Sink):
    name = "firefly"

    def __init__(self, daemon: Any, conf: FireflySinkConfig) -> None:
        super().__init__(daemon)
        self.conf = conf
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
            daemon.own_ports.add(s.getsockname()[1])
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._resolve_all()
        if self._collectors:
            self._task = asyncio.get_running_loop().create_task(self._resolver())
        log.info("sending to_peer=%s port=%d collectors=%s syslog=%s hostname=%s",
                 self.conf.send_to_peer, self.conf.destination_port,
                 ",".join(f"{h}:{p}" for h, p in self._collectors) or "none",
                 self.conf.prepend_syslog, self.hostname)

    async def stop(self) -> None:
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
                self.daemon.stats.send_failed[(label, "resolve")] += 1
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
        is_local = self.daemon.is_local
        if is_local(ev.dst_ip) and not is_local(ev.src_ip):
            return ev.src_ip
        return ev.dst_ip

    async def consume(self, batch: List[FlowEvent]) -> None:
        now = time.time()
        now_iso = iso(now)  # one current-time for the batch: formatting it is ~0.7 us
        header = syslog_header(now_iso, self.hostname) if self.conf.prepend_syslog else ""
        stats = self.daemon.stats
        port = self.conf.destination_port
        send_peer = self.conf.send_to_peer
        resolved = self._resolved
        enrich = self.conf.enrich
        for ev in batch:
            if ev.state == "ongoing" and not enrich:
                continue  # ongoing fireflies only with backends.firefly.enrich: true
            data = (header + build_json(ev, now, None, now_iso)).encode()
            if send_peer:
                peer = self.peer_of(ev)
                self._send(data, socket.AF_INET6 if ":" in peer else socket.AF_INET, (peer, port),
                           "peer", stats)
            for label, addrs in resolved.items():
                for fam, sa in addrs:
                    self._send(data, fam, sa, label, stats)

    def _send(self, data: bytes, fam: int, sa: Tuple[Any, ...], label: str, stats: Any) -> None:
        sock = self._sock6 if fam == socket.AF_INET6 else self._sock4
        try:
            sock.sendto(data, sa)
            stats.sent[label] += 1
        except OSError as e:
            # EAGAIN (buffer full), ENETUNREACH, EPERM from a firewall...: counted, never fatal.
            stats.send_failed[(label, type(e).__name__)] += 1
