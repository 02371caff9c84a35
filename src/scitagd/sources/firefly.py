# SPDX-License-Identifier: Apache-2.0
"""`plugins.firefly`: fireflies from XRootD (`xrootd.pmark ... ffdest`) or dCache become flows.

Keys (sources/conf.py): bindAddress | bindAddresses, bindPort, allowedSources,
fireflyReceivers (each datagram forwarded verbatim before parsing, loop-protected),
receiveBuffer, bufferSize (flowd-go's: longer datagrams refused, `too_large`); flowd-go's
hasSyslogHeader and deadline are accepted (the header is detected per datagram).

Whatever arrives is either an event or a counted rejection with a reason (firefly.parse bounds
sizes, nesting, UTF-8, ids, counters and times); the log gets at most one line per reason per
second. The port is bound without SO_REUSEADDR (netutil.udp_listener): a port in use is a
start-up error, not a silently shared port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from ..components import Host, Source
from ..errors import InputError
from ..firefly import parse, to_event
from ..logs import Throttle
from ..netutil import drops_of, open_udp_endpoint, udp_listener
from ..relay import Relay
from .conf import FireflySourceConfig

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["FireflySource"]

log = logging.getLogger("scitagd.firefly.source")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, source: FireflySource) -> None:
        self.datagram_received = source.datagram_received  # type: ignore[method-assign]
        self._throttle = source._throttle

    def error_received(self, exc: Exception) -> None:
        if self._throttle.allow("socket_error"):
            log.warning("socket error error=%r", str(exc))


class FireflySource(Source):
    name = "firefly"

    def __init__(self, host: Host, conf: FireflySourceConfig) -> None:
        super().__init__(host)
        self.conf = conf
        self._transports: List[asyncio.BaseTransport] = []
        self._nets = conf.networks()
        self._allowed: Dict[str, bool] = {}
        self._relay: Optional[Relay] = None
        if conf.firefly_receivers:
            c = self.counters
            self._relay = Relay([(r.address, r.port) for r in conf.firefly_receivers],
                                lambda dest: c.sent(f"forward:{dest}"),
                                lambda dest, err: c.failed(f"forward:{dest}", err))
        self._throttle = Throttle(1.0)
        self._sockets: Dict[str, socket.socket] = {}
        host.register_metrics(self)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for addr in self.conf.addresses():
            sock = udp_listener(addr, self.conf.bind_port, self.conf.receive_buffer, key="bindPort")
            tr, _ = await open_udp_endpoint(loop, lambda: _Protocol(self), sock)
            self._transports.append(tr)
            self._sockets[addr] = sock
            log.info("listening address=%s port=%d", addr, self.conf.bind_port)

    def collect(self) -> Iterator[Metric]:
        """The kernel's drops for our sockets (receive buffer full): the loss no counter of ours sees."""
        from prometheus_client.core import CounterMetricFamily

        m = CounterMetricFamily("scitagd_firefly_udp_drops", "Datagrams the kernel dropped for the firefly "
                                "listener (receive buffer full; see plugins.firefly.receiveBuffer)", labels=["address"])
        for addr, sock in list(self._sockets.items()):
            if sock.fileno() >= 0:
                m.add_metric([addr], drops_of([sock]))
        yield m

    async def stop(self) -> None:
        for tr in self._transports:
            tr.close()
        self._transports.clear()
        self._sockets.clear()
        if self._relay is not None:
            self._relay.close()

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
        host = self.host
        if host.is_own(addr[0], addr[1]):
            self.counters.ignore("own_firefly")
            return
        if self._nets is not None and not self._is_allowed(addr[0]):
            self._reject("not_allowed", f"source {addr[0]} not in allowedSources", addr, data)
            return
        limit = self.conf.buffer_size
        if limit is not None and len(data) > limit:
            self._reject("too_large", f"{len(data)} bytes: over bufferSize ({limit})", addr, data)
            return
        if self._relay is not None and not self._relay.forward(data):
            self.counters.ignore("relay_loop")
        try:
            ev = to_event(parse(data, header=False).firefly, self.name)
        except InputError as e:
            self._reject(e.reason, str(e), addr, data)
            return
        except Exception as e:  # a bug, not the sender's fault: counted, logged, the listener goes on
            self.counters.reject("internal_error")
            if self._throttle.allow("internal_error"):
                log.error("datagram not handled from=%s error=%r sample=%r", addr[0], f"{type(e).__name__}: {e}",
                          data[:100].decode("utf-8", "replace"), exc_info=True)
            return
        host.submit(ev)

    def _reject(self, reason: str, message: str, addr: Tuple[Any, ...], data: bytes) -> None:
        self.counters.reject(reason)
        if self._throttle.allow(reason):
            log.warning("datagram rejected reason=%s from=%s error=%r sample=%r", reason, addr[0],
                        message, data[:100].decode("utf-8", "replace"))
