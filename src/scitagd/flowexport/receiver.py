# SPDX-License-Identifier: Apache-2.0
"""asyncio UDP receivers for IPFIX, NetFlow v9 and sFlow: datagram -> decoder -> callback.

`Receiver.start()` binds every `bindAddresses` entry (SO_RCVBUF = receiveBuffer; "::" takes
IPv4 too), drops datagrams from outside `allowedSources` (counted), hands each datagram's
records to `callback(records)`. `drops()` reads the kernel's per-socket drop counter (the
`drops` column of /proc/net/udp and udp6 for our sockets' inodes): datagrams lost because the
receive buffer was full, which no user-space counter can see.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..netutil import drops_of, socket_drops, udp_listener
from .conf import IpfixConfig, NetflowConfig, SflowConfig
from .ipfix import IpfixDecoder
from .netflow9 import NetflowV9Decoder
from .records import FlowRecord
from .sflow import SflowDecoder
from .tagging import TagMatcher

__all__ = ["IpfixReceiver", "NetflowReceiver", "Receiver", "SflowReceiver", "matcher_for", "socket_drops",
           "source_host"]

log = logging.getLogger("scitagd.flowexport")

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
Callback = Callable[[List[FlowRecord]], None]
Decoder = Union[IpfixDecoder, NetflowV9Decoder, SflowDecoder]
Config = Union[IpfixConfig, NetflowConfig, SflowConfig]


def source_host(addr: Tuple[Any, ...]) -> str:
    """The exporter's address as text: scope id dropped, IPv4-mapped IPv6 shown as IPv4."""
    host = str(addr[0]).split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


class Receiver:
    protocol = ""

    def __init__(self, conf: Config, decoder: Decoder, callback: Callback) -> None:
        self.conf = conf
        self.decoder = decoder
        self.callback = callback
        self.nets = [ipaddress.ip_network(c, strict=False) for c in conf.allowed_sources] or None
        self._allowed: Dict[str, bool] = {}
        self._hosts: Dict[str, str] = {}
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)
        self._readers: List[Tuple[asyncio.AbstractEventLoop, int]] = []
        self.sockets: List[socket.socket] = []
        self.datagrams = 0
        self.not_allowed = 0
        self.callback_errors = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for addr in self.conf.bind_addresses:
                sock = udp_listener(addr, self.conf.port, self.conf.receive_buffer, key="port")
                self.sockets.append(sock)
                # a reader that drains the socket into one reused buffer: no transport, no bytes
                # object per datagram (~25% of the receive path at 4 records per datagram)
                loop.add_reader(sock.fileno(), self._drain, sock)
                self._readers.append((loop, sock.fileno()))
                log.info("%s listening address=%s port=%d receive_buffer=%d", self.protocol, addr,
                         sock.getsockname()[1], sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        except OSError:
            await self.stop()
            raise

    async def stop(self) -> None:
        for loop, fd in self._readers:
            loop.remove_reader(fd)
        self._readers.clear()
        for s in self.sockets:
            s.close()
        self.sockets.clear()

    @property
    def ports(self) -> List[int]:
        return [s.getsockname()[1] for s in self.sockets]

    def _is_allowed(self, host: str) -> bool:
        ok = self._allowed.get(host)
        if ok is None:
            try:
                ip = ipaddress.ip_address(host)
                ok = any(ip in n for n in self.nets or ())
            except ValueError:
                ok = False
            if len(self._allowed) > 65536:
                self._allowed.clear()
            self._allowed[host] = ok
        return ok

    def _drain(self, sock: socket.socket) -> None:
        """Up to 256 datagrams per wake-up (then the loop runs other work), decoded in place."""
        view = self._view
        for _ in range(256):
            try:
                n, addr = sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("%s socket error error=%r", self.protocol, str(e))
                return
            self.datagram_received(view[:n], addr)

    def datagram_received(self, data: bytes | memoryview, addr: Tuple[Any, ...]) -> None:
        """One datagram (also usable without sockets: tests, replays). `data` is only read
        during the call."""
        self.datagrams += 1
        host = self._hosts.get(addr[0])
        if host is None:
            if len(self._hosts) > 65536:
                self._hosts.clear()
            host = self._hosts[addr[0]] = source_host(addr)
        if self.nets is not None and not self._is_allowed(host):
            self.not_allowed += 1
            self.decoder.rejects.add(host, "not_allowed", f"source {host} not in allowedSources")
            return
        records = self.decoder.decode(data, host)
        if records:
            try:
                self.callback(records)
            except Exception:  # a consumer bug must not stop the socket
                self.callback_errors += 1
                log.exception("%s callback failed records=%d", self.protocol, len(records))

    def drops(self) -> int:
        """Kernel drops (receive buffer full) of this receiver's sockets since they opened."""
        return drops_of(self.sockets)


class IpfixReceiver(Receiver):
    protocol = "ipfix"

    def __init__(self, conf: IpfixConfig, matcher: TagMatcher, callback: Callback) -> None:
        super().__init__(conf, IpfixDecoder(matcher, conf.limits()), callback)


class NetflowReceiver(Receiver):
    protocol = "netflow9"

    def __init__(self, conf: NetflowConfig, matcher: TagMatcher, callback: Callback) -> None:
        super().__init__(conf, NetflowV9Decoder(matcher, conf.limits()), callback)


class SflowReceiver(Receiver):
    protocol = "sflow"

    def __init__(self, conf: SflowConfig, matcher: TagMatcher, callback: Callback) -> None:
        super().__init__(conf, SflowDecoder(matcher, conf.max_exporters), callback)


def matcher_for(conf: Config, registry: Optional[Any] = None) -> TagMatcher:
    """The tag matcher a section asks for (registry: scitagd.registry.Registry, bundled if None)."""
    from ..registry import Registry

    reg = registry or Registry.bundled()
    return TagMatcher.from_registry(reg, conf.any_experiment, conf.known_only)
