"""`plugins.firefly`: fireflies from XRootD (`xrootd.pmark ... ffdest`) or dCache become flows.

Config keys (flowd-go's, plus extensions):
  bindAddress       one address (default: 127.0.0.1 and ::1 both)
  bindAddresses     extension: a list of addresses
  bindPort          UDP port (default 10514)
  allowedSources    extension: CIDR list; datagrams from elsewhere are counted and dropped
  fireflyReceivers  list of {address, port}: forward each datagram verbatim before parsing
  receiveBuffer     extension: SO_RCVBUF bytes (default 8 MiB) to ride out bursts
  hasSyslogHeader, deadline   flowd-go keys, accepted; the header is detected per datagram
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import msgspec

from ..components import Source
from ..firefly import FireflyError, parse, to_event
from ..netutil import check_bind_address, check_host, check_port, udp_listener

log = logging.getLogger("scitagd.firefly.source")

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class Receiver(msgspec.Struct, forbid_unknown_fields=True):
    address: str
    port: int = 10514

    def __post_init__(self) -> None:
        check_host("address", self.address)
        check_port("port", self.port)


class FireflySourceConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    bind_address: Optional[str] = None
    bind_addresses: Optional[List[str]] = None
    bind_port: int = 10514
    allowed_sources: Optional[List[str]] = None
    firefly_receivers: List[Receiver] = []
    receive_buffer: int = 8 << 20
    has_syslog_header: Optional[bool] = None
    deadline: int = 0

    def __post_init__(self) -> None:
        for a in self.addresses():
            check_bind_address("bindAddress", a)
        check_port("bindPort", self.bind_port)
        for c in self.allowed_sources or []:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"allowedSources {c!r}: expected a CIDR like 192.0.2.0/24") from None

    def addresses(self) -> List[str]:
        if self.bind_addresses:
            return list(self.bind_addresses)
        if self.bind_address:
            return [self.bind_address]
        return ["127.0.0.1", "::1"]

    def networks(self) -> List[IPNetwork] | None:
        if self.allowed_sources is None:
            return None
        return [ipaddress.ip_network(c, strict=False) for c in self.allowed_sources]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, source: FireflySource) -> None:
        self.datagram_received = source.datagram_received  # type: ignore[method-assign]

    def error_received(self, exc: Exception) -> None:
        log.warning("socket error error=%r", str(exc))


class FireflySource(Source):
    name = "firefly"

    def __init__(self, daemon: Any, conf: FireflySourceConfig) -> None:
        super().__init__(daemon)
        self.conf = conf
        self._transports: List[asyncio.DatagramTransport] = []
        self._nets = conf.networks()
        self._allowed: Dict[str, bool] = {}
        self._fwd: List[Tuple[str, int]] = [(r.address, r.port) for r in conf.firefly_receivers]
        self._fwd_sock: socket.socket | None = None
        self._fwd_sock6: socket.socket | None = None
        self._last_log: Dict[str, float] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for addr in self.conf.addresses():
            sock = udp_listener(addr, self.conf.bind_port, self.conf.receive_buffer)
            tr, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
            self._transports.append(tr)
            log.info("listening address=%s port=%d", addr, self.conf.bind_port)
        if self._fwd:
            self._fwd_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._fwd_sock6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            for s in (self._fwd_sock, self._fwd_sock6):
                s.setblocking(False)

    async def stop(self) -> None:
        for tr in self._transports:
            tr.close()
        self._transports.clear()
        for s in (self._fwd_sock, self._fwd_sock6):
            if s is not None:
                s.close()

    def _is_allowed(self, host: str) -> bool:
        ok = self._allowed.get(host)
        if ok is None:
            ip = ipaddress.ip_address(host.split("%")[0])
            mapped = getattr(ip, "ipv4_mapped", None)
            ok = any((mapped or ip) in n for n in self._nets or ())
            if len(self._allowed) > 65536:
                self._allowed.clear()
            self._allowed[host] = ok
        return ok

    def datagram_received(self, data: bytes, addr: Tuple[Any, ...]) -> None:
        daemon = self.daemon
        if addr[1] in daemon.own_ports and daemon.is_local(addr[0]):
            daemon.stats.ignored[(self.name, "own_firefly")] += 1
            return
        if self._nets is not None and not self._is_allowed(addr[0]):
            self._reject("not_allowed", f"source {addr[0]} not in allowedSources", addr, data)
            return
        if self._fwd:
            self._forward(data)
        try:
            ev = to_event(parse(data, header=False).firefly, self.name)
        except FireflyError as e:
            self._reject(e.reason, str(e), addr, data)
            return
        daemon.submit(ev)

    def _forward(self, data: bytes) -> None:
        for host, port in self._fwd:
            sock = self._fwd_sock6 if ":" in host else self._fwd_sock
            try:
                sock.sendto(data, (host, port))  # type: ignore[union-attr]
                self.daemon.stats.sent[f"forward:{host}:{port}"] += 1
            except OSError as e:
                self.daemon.stats.send_failed[(f"forward:{host}:{port}", type(e).__name__)] += 1

    def _reject(self, reason: str, message: str, addr: Tuple[Any, ...], data: bytes) -> None:
        self.daemon.stats.reject(self.name, reason)
        # A flood of garbage must not become a flood of log lines: one per reason per second.
        now = time.monotonic()
        if now - self._last_log.get(reason, 0.0) >= 1.0:
            self._last_log[reason] = now
            log.warning("datagram rejected reason=%s from=%s error=%r sample=%r", reason, addr[0],
                        message, data[:100].decode("utf-8", "replace"))
