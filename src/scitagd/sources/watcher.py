"""`plugins.watcher`: TCP connections reported by the kernel as they are established and closed
(a cgroup sock_ops program, bpf/watcher.bpf.c), tagged by port rules.

A matching connection is put into the marker's map by the kernel itself, before its first data
byte; its end carries the exact byte counts of the socket at close.

Config keys:
  mode         auto (eBPF, else polling), ebpf, or poll (default auto)
  pollInterval seconds between sock_diag polls when polling (default 1)
  cgroupPath   cgroup v2 whose sockets are watched (default /sys/fs/cgroup; /unified tried too)
  rules        list of {localPorts, remotePorts, remoteNetworks, experiment, activity}: ports
               "5201" or "5201-5210" (empty: any); remoteNetworks a CIDR list the remote end must
               be in (empty: any); experiment/activity ids or registry names; first match wins
               uids (names or numbers) and cgroup (a cgroup v2 path, relative to cgroupPath or
               absolute) limit a rule to sockets of those owners or of that cgroup: checked in
               user space on the established event through sock_diag, so such connections are
               marked within about a millisecond of their handshake, not from their first packet
  ignoreNetworks  remote networks no rule applies to (default: internal networks, RFC 1918,
               loopback, link-local, ULA); [] to watch them too
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import msgspec

from ..components import Source
from ..events import END, START, Usage, make_event

log = logging.getLogger("scitagd.watcher")
POLLED = "watcherPoll"  # not written into the marker's map by the kernel: the marker sink does it


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


INTERNAL_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
                     "::1/128", "fc00::/7", "fe80::/10"]


def _check_nets(key: str, nets: List[str]) -> None:
    import ipaddress

    for c in nets:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise ValueError(f"{key} {c!r}: expected a CIDR like 192.0.2.0/24") from None


class WatchRule(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    experiment: Union[int, str]
    activity: Union[int, str]
    local_ports: Union[str, int, None] = None
    remote_ports: Union[str, int, None] = None
    remote_networks: List[str] = msgspec.field(default_factory=list)
    uids: List[Union[int, str]] = msgspec.field(default_factory=list)
    cgroup: Optional[str] = None

    def __post_init__(self) -> None:
        parse_ports("localPorts", self.local_ports)
        parse_ports("remotePorts", self.remote_ports)
        _check_nets("remoteNetworks", self.remote_networks)

    def uid_numbers(self) -> Tuple[int, ...]:
        import pwd

        out = []
        for u in self.uids:
            if isinstance(u, int) or str(u).isdigit():
                out.append(int(u))
                continue
            try:
                out.append(pwd.getpwnam(str(u)).pw_uid)
            except KeyError:
                raise ValueError(f"uids {u!r}: no such user") from None
        return tuple(out)
        if self.local_ports in (None, "") and self.remote_ports in (None, ""):
            raise ValueError("a rule needs localPorts or remotePorts")


class WatcherConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    cgroup_path: str = "/sys/fs/cgroup"
    rules: List[WatchRule] = msgspec.field(default_factory=list)
    mode: str = "auto"
    poll_interval: float = 1.0
    ignore_networks: List[str] = msgspec.field(default_factory=lambda: list(INTERNAL_NETWORKS))

    def __post_init__(self) -> None:
        _check_nets("ignoreNetworks", self.ignore_networks)
        if self.mode not in ("auto", "ebpf", "poll"):
            raise ValueError(f"mode {self.mode!r}: expected auto, ebpf or poll")
        if not 0.05 <= self.poll_interval <= 60:
            raise ValueError(f"pollInterval {self.poll_interval}: expected 0.05..60 seconds")


class WatcherSource(Source):
    name = "watcher"

    def __init__(self, daemon: Any, conf: WatcherConfig) -> None:
        super().__init__(daemon)
        self.conf = conf
        self.w: Any = None
        self.skops: Any = None  # enrichers.skops, fed by this program's samples
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._poll_task: Optional[asyncio.Task[None]] = None
        self._rules: List[Any] = []
        self._seen: dict = {}  # (family, local, remote) -> (last sample, experiment, activity)

    async def start(self) -> None:
        from ..bpf.loader import PIN_DIR
        from ..bpf.watchloader import Rule, Watcher

        reg = self.daemon.registry.current
        rules = []
        for r in self.conf.rules:
            exp, act = reg.resolve(r.experiment, r.activity)
            cg_id = None
            if r.cgroup:
                from ..bpf.watchloader import cgroup2_path

                base = cgroup2_path(self.conf.cgroup_path)
                path = r.cgroup if r.cgroup.startswith(base) else os.path.join(base, r.cgroup.lstrip("/"))
                try:
                    cg_id = os.stat(path).st_ino  # a cgroup v2 id is its directory's inode number
                except OSError as e:
                    raise ValueError(f"cgroup {r.cgroup!r}: {e.strerror}") from None
            rules.append(Rule(parse_ports("localPorts", r.local_ports), parse_ports("remotePorts", r.remote_ports),
                              exp, act, tuple(r.remote_networks), r.uid_numbers(), cg_id))
        self._rules = rules
        marker = self.daemon.conf.backends.marker
        pin = (PIN_DIR if marker is None else Path(marker.pin_path)) / "flows"
        self._loop = asyncio.get_running_loop()
        if self.conf.mode != "poll":
            from ..bpf.libbpf import LibbpfMissing

            w = None
            try:
                w = Watcher(self.conf.cgroup_path, rules, pin if marker is not None else None,
                            tuple(self.conf.ignore_networks))
                await self._loop.run_in_executor(None, w.load)
                await self._loop.run_in_executor(None, w.attach)
                self.w = w
                if self.skops is not None:
                    self.skops.bind(w)
                w.run(self._from_thread)
                return
            except (OSError, LibbpfMissing) as e:
                if w is not None:
                    w.close()
                if self.conf.mode == "ebpf":
                    raise
                log.warning("sock_ops unavailable (%s): polling sock_diag every %gs instead; discovered "
                            "flows are marked from the next poll, not their first packet", e,
                            self.conf.poll_interval)
        else:
            log.info("polling sock_diag every %gs (mode: poll)", self.conf.poll_interval)
        self._poll_task = self._loop.create_task(self._poll(), name="watcher-poll")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
        if self.w is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.w.close)

    async def _candidate(self, e: Any) -> None:
        """Ports and networks matched a rule with uid/cgroup conditions: ask sock_diag for the
        socket's owner and cgroup, then evaluate the rules in order with everything known."""
        from ..enrich.sockdiag import SockDiag

        def look() -> Any:
            d = SockDiag()
            try:
                found = d.lookup(e.family, [(e.local[0], e.local[1], e.remote[0], e.remote[1])])
            finally:
                d.close()
            return found[0] if found else None

        smp = await asyncio.get_running_loop().run_in_executor(None, look)
        if smp is None:
            return  # already gone
        tag = self._match(e.local[1], e.remote[1], e.remote[0], smp.uid, smp.cgroup_id)
        if tag is None:
            return
        import dataclasses

        self._event(dataclasses.replace(e, experiment=tag[0], activity=tag[1], candidate=False), POLLED)

    # --- fallback without eBPF ----------------------------------------------------------

    def _match(self, lport: int, rport: int, raddr: str = "", uid: Optional[int] = None,
               cgroup_id: Optional[int] = None) -> Optional[Tuple[int, int]]:
        import ipaddress

        ip = ipaddress.ip_address(raddr) if raddr else None
        if ip is not None and any(ip in ipaddress.ip_network(c, strict=False) for c in self.conf.ignore_networks):
            return None
        for r in self._rules:
            if r.nets and (ip is None or not any(ip in ipaddress.ip_network(c, strict=False) for c in r.nets)):
                continue
            if r.uids and uid not in r.uids:
                continue
            if r.cgroup_id is not None and cgroup_id != r.cgroup_id:
                continue
            if r.local != (0, 0) and not r.local[0] <= lport <= r.local[1]:
                continue
            if r.remote != (0, 0) and not r.remote[0] <= rport <= r.remote[1]:
                continue
            return r.experiment, r.activity
        return None

    async def _poll(self) -> None:
        import socket as _socket

        from ..bpf.watchloader import Event
        from ..enrich.sockdiag import SockDiag

        diag = SockDiag()
        loop = asyncio.get_running_loop()
        ranges = [(r.local, r.remote) for r in self._rules]
        try:
            while True:
                current: dict = {}
                for fam in (_socket.AF_INET, _socket.AF_INET6):
                    try:
                        found = await loop.run_in_executor(None, diag.established, fam, ranges)
                    except OSError as e:
                        log.warning("sock_diag poll failed error=%r", str(e))
                        found = []
                    for smp in found:
                        tag = self._match(smp.local[1], smp.remote[1], smp.remote[0], smp.uid, smp.cgroup_id)
                        if tag is not None:
                            current[(fam, smp.local, smp.remote)] = (smp, tag)
                for k, (smp, tag) in current.items():
                    if k not in self._seen:
                        self._event(Event(False, k[0], smp.local, smp.remote, tag[0], tag[1], 0, 0, 0, 0, 0),
                                    POLLED)
                for k, (smp, tag) in self._seen.items():
                    if k not in current:  # gone: its last sample is the best count we have
                        info = smp.info
                        self._event(Event(True, k[0], smp.local, smp.remote, tag[0], tag[1], 0,
                                          int(info.get("bytes_acked", 0)), int(info.get("bytes_received", 0)),
                                          int(info.get("rtt", 0)), int(info.get("total_retrans", 0))), POLLED)
                self._seen = current
                await asyncio.sleep(self.conf.poll_interval)
        finally:
            diag.close()

    def _from_thread(self, e: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._event, e)

    def _event(self, e: Any, source: str = "watcher") -> None:
        # A cgroup's sock_ops program sees sockets of every network namespace in it (containers,
        # test namespaces): only connections with one of this namespace's addresses are ours.
        if not self.daemon.is_local(e.local[0]):
            self.daemon.stats.ignored[(self.name, "other_netns")] += 1
            return
        if getattr(e, "sample", False):
            ev = self.skops.on_sample(e) if self.skops is not None else None
            if ev is not None:
                self.daemon.submit(ev)
            return
        if getattr(e, "candidate", False):
            assert self._loop is not None
            self._loop.create_task(self._candidate(e))
            return
        # This host is taken as the supplier (src): what a watched service sends is its data.
        try:
            ev = make_event(END if e.closed else START, "tcp", e.local[0], e.local[1], e.remote[0], e.remote[1],
                            e.experiment or 1, e.activity, "", source,
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

