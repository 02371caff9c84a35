# SPDX-License-Identifier: Apache-2.0
"""`backends.firefly.stun`: this host's public addresses, for the fireflies of a host behind NAT.

Which addresses: every address of the interfaces the marker uses (backends.marker), of those
`interfaces` names, and the source addresses of the default IPv4 and IPv6 routes (flowd-go looks
at the default IPv4 route's interface only). Loopback, link-local and multicast addresses are
left out; public ones need no mapping. A private address is mapped by `manualMapping` if listed,
else discovered: the HTTP echoes, then the STUN servers, each asked from that very address.

When: in the background, never holding up the start (fireflies leave unmapped until an address is
known); every `checkInterval` the addresses are looked at and a new one is discovered at once;
every `refreshInterval` all are discovered again (a NAT's public address can change; flowd-go
resolves once). A discovery that fails keeps the last public address found for that address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from ..errors import InputError
from ..netutil import parse_hostport
from .conf import StunConfig

__all__ = ["PublicAddresses", "default_route_sources", "mappable"]

log = logging.getLogger("scitagd.stun")

# Destinations of a route lookup only (a UDP connect() sends nothing): Quad9's, as flowd-go uses.
_ROUTE_PROBES = ((socket.AF_INET, "9.9.9.9"), (socket.AF_INET6, "2620:fe::fe"))


def default_route_sources() -> List[str]:
    """The source address this host would use towards the Internet, per family (none without a route)."""
    out = []
    for fam, probe in _ROUTE_PROBES:
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.connect((probe, 53))
                out.append(ipaddress.ip_address(s.getsockname()[0].split("%")[0]).compressed)
        except OSError:
            continue
    return out


def mappable(addr: str) -> bool:
    """Whether `addr` may need a public address: not loopback, link-local, multicast or
    unspecified, and not public already."""
    ip = ipaddress.ip_address(addr)
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    return not ip.is_global


class PublicAddresses:
    """`interfaces()` names the interfaces to look at (the marker's, read when looking)."""

    def __init__(self, conf: StunConfig, interfaces: Callable[[], List[str]]) -> None:
        self.conf = conf
        self.interfaces = interfaces
        self.found: Dict[str, str] = {}  # private -> public, discovered
        self.mapping: Dict[str, str] = {}  # what fireflies use: found, then manualMapping on top
        self.wildcards: Dict[int, str] = {}  # 4 / 6 -> public, from manualMapping's 0.0.0.0 / ::
        self.method: Dict[str, str] = {}  # private -> how its public address was found
        self.lookups = {"ok": 0, "failed": 0}
        self._known: Set[str] = set()
        self._task: Optional[asyncio.Task[None]] = None
        self._stun = [parse_hostport("stunServers", s, 3478) for s in conf.stun_servers]
        for priv, pub in conf.manual_mapping.items():
            ip = ipaddress.ip_address(priv)
            if ip.is_unspecified:
                self.wildcards[ip.version] = pub
        self._rebuild()

    def _rebuild(self) -> None:
        m = {k: v for k, v in self.found.items() if k != v}
        m.update({k: v for k, v in self.conf.manual_mapping.items() if not ipaddress.ip_address(k).is_unspecified})
        self.mapping = m

    def public(self, addr: str, is_local: Callable[[str], bool]) -> Optional[str]:
        """The public address to show for `addr`, or None to leave it as it is."""
        pub = self.mapping.get(addr)
        if pub is not None:
            return pub
        if self.wildcards:
            wild = self.wildcards.get(6 if ":" in addr else 4)
            if wild is not None and is_local(addr) and not ipaddress.ip_address(addr).is_loopback:
                return wild
        return None

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stun")
        log.info("public addresses: discovery in the background http=%s stun=%s manual=%d refresh=%gs",
                 ",".join(self.conf.http_servers) or "none", ",".join(self.conf.stun_servers) or "none",
                 len(self.conf.manual_mapping), self.conf.refresh_interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def candidates(self) -> Set[str]:
        from ..addresses import interface_addresses

        names = set(self.interfaces()) | set(self.conf.interfaces)
        indexes = set()
        for name in names:
            try:
                indexes.add(socket.if_nametoindex(name))
            except OSError:
                continue
        routes = default_route_sources()
        try:
            all_addrs = interface_addresses()
        except OSError as e:
            log.warning("addresses not read error=%r", str(e))
            all_addrs = []
        # the default routes' interfaces, every address on them (as flowd-go takes its default interface)
        indexes.update(idx for idx, addr in all_addrs if addr in routes)
        found = {addr for idx, addr in all_addrs if idx in indexes}
        found.update(routes)
        return {a for a in found if mappable(a)}

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = 0.0
        while True:
            try:
                addrs = await loop.run_in_executor(None, self.candidates)
            except Exception as e:  # never let a look at the addresses end the discovery
                log.warning("addresses not read error=%r", str(e))
                addrs = set(self._known)
            now = time.monotonic()
            if now >= next_refresh:
                todo = addrs
                next_refresh = now + self.conf.refresh_interval
            else:
                todo = addrs - self._known
            gone = self._known - addrs
            for a in gone:
                self.found.pop(a, None)
                log.info("address gone, its mapping dropped address=%s", a)
            self._known = addrs
            for a in sorted(todo):
                await self.resolve(a)
            if gone or todo:
                self._rebuild()
            await asyncio.sleep(self.conf.check_interval)

    async def resolve(self, addr: str) -> Optional[str]:
        """Discover `addr`'s public address (manualMapping first); keep the last one on failure."""
        if addr in self.conf.manual_mapping:
            self.method[addr] = "manual"
            return self.conf.manual_mapping[addr]
        from ..stun import hostport, http_echo, other_family, stun_query

        loop = asyncio.get_running_loop()
        tried: List[str] = []
        for url in self.conf.http_servers:
            if other_family(url, addr):
                continue
            try:
                pub = await loop.run_in_executor(None, http_echo, url, addr, self.conf.timeout)
                return self._learn(addr, pub, f"http {url}")
            except (OSError, InputError, ValueError) as e:
                tried.append(f"{url}: {e}")
        for host, port in self._stun:
            if other_family(host, addr):
                continue
            try:
                pub, _port = await stun_query((host, port), addr, self.conf.timeout)
                return self._learn(addr, pub, f"stun {hostport(host, port)}")
            except (OSError, InputError, ValueError) as e:
                tried.append(f"{hostport(host, port)}: {e}")
        self.lookups["failed"] += 1
        keep = self.found.get(addr)
        log.warning("public address not found address=%s kept=%s tried=%r", addr, keep or "none",
                    "; ".join(tried)[:600] or "no servers configured")
        return keep

    def _learn(self, addr: str, pub: str, how: str) -> str:
        if (":" in pub) != (":" in addr):
            raise InputError(f"answer {pub} is not of the family of {addr}", "bad_family")
        self.lookups["ok"] += 1
        before = self.found.get(addr)
        self.found[addr] = pub
        self.method[addr] = how
        if before != pub:
            if pub == addr:
                log.info("address is not translated, left as it is address=%s via=%s", addr, how)
            else:
                log.info("public address %s address=%s public=%s via=%s", "changed" if before else "found", addr,
                         pub, how)
        return pub

    def snapshot(self) -> List[Tuple[str, str, str]]:
        return [(a, p, self.method.get(a, "")) for a, p in sorted(self.found.items())]
