# SPDX-License-Identifier: Apache-2.0
"""`plugins.watcher`: TCP connections reported by the kernel as they are established and closed
(a cgroup sock_ops program, bpf/watcher.bpf.c), tagged by port rules.

A matching connection is put into the marker's map by the kernel itself, before its first data
byte; its end carries the exact byte counts of the socket at close.

Keys (sources/conf.py):
  mode         auto (eBPF, else polling), ebpf, or poll (default auto)
  pollInterval seconds between sock_diag polls when polling (default 1)
  cgroupPath   cgroup v2 whose sockets are watched (default /sys/fs/cgroup; /unified tried too)
  rules        list of {localPorts, remotePorts, remoteNetworks, experiment, activity}: ports
               "5201" or "5201-5210" (empty: any); remoteNetworks a CIDR list the remote end must
               be in (empty: any); experiment/activity ids or registry names; first match wins
               uids (names or numbers) and cgroup (a cgroup v2 path, relative to cgroupPath or
               absolute) limit a rule to sockets of those owners or of that cgroup: checked in
               user space on the established event through sock_diag, so such connections are
               marked within about a millisecond of their handshake, not from their first packet.
               A rule needs at least one condition.
  ignoreNetworks  remote networks no rule applies to (default: internal networks, RFC 1918,
               loopback, link-local, ULA); [] to watch them too
  programPath  a site's build of watcher.bpf.c, checked before loading (bpf/objcheck.py)
  debugMode    load the debug build: each decision in the kernel's trace buffer

plugins.iperf3 (flowd-go's) is a rule of this watcher that hands out a list of tags, in turn or
at random, chosen in the kernel (wiring/sources.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import msgspec

from ..components import Host, Source
from ..errors import BpfError, InputError
from ..events import END, START, TCP, Usage, make_event
from .conf import WatcherConfig, parse_ports

if TYPE_CHECKING:
    from ..bpf.watchloader import Event, Rule, Watcher
    from ..enrich.skops import SkopsEnricher
    from ..enrich.sockdiag import Sample

__all__ = ["POLLED", "WatcherSource"]

log = logging.getLogger("scitagd.watcher")
POLLED = "watcherPoll"  # not written into the marker's map by the kernel: the marker sink does it


class WatcherSource(Source):
    """`flows_pin`: the marker's pinned flow map, which the kernel program writes matching
    connections into (None without the marker); `skops`: enrichers.skops, fed by this
    program's samples."""

    name = "watcher"

    def __init__(self, host: Host, conf: WatcherConfig, flows_pin: Optional[Path] = None,
                 skops: Optional[SkopsEnricher] = None) -> None:
        super().__init__(host)
        self.conf = conf
        self.flows_pin = flows_pin
        self.skops = skops
        self.w: Optional[Watcher] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._poll_task: Optional[asyncio.Task[None]] = None
        self._rules: List[Rule] = []
        self._seen: Dict[Tuple[int, Tuple[str, int], Tuple[str, int]], Tuple[Sample, Tuple[int, int]]] = {}
        self._ignore = [ipaddress.ip_network(c, strict=False) for c in conf.ignore_networks]
        self._tasks: set[asyncio.Task[None]] = set()
        self._next: Dict[int, int] = {}  # rule index -> the next of its tag list (polling)

    async def start(self) -> None:
        from ..bpf.watchloader import Rule, Watcher, cgroup2_path

        reg = self.host.registry
        rules = []
        for r in self.conf.rules:
            exp, act = reg.resolve(r.experiment, r.activity)
            cg_id = None
            if r.cgroup:
                base = cgroup2_path(self.conf.cgroup_path)
                path = r.cgroup if r.cgroup.startswith(base) else os.path.join(base, r.cgroup.lstrip("/"))
                try:
                    cg_id = os.stat(path).st_ino  # a cgroup v2 id is its directory's inode number
                except OSError as e:
                    raise ValueError(f"cgroup {r.cgroup!r}: {e.strerror}") from None
            rules.append(Rule(parse_ports("localPorts", r.local_ports), parse_ports("remotePorts", r.remote_ports),
                              exp, act, tuple(r.remote_networks), r.uid_numbers(), cg_id,
                              tuple(getattr(r, "tags", ())), bool(getattr(r, "random", False)),
                              bool(getattr(r, "all_networks", False))))
        self._rules = rules
        self._loop = asyncio.get_running_loop()
        if self.conf.mode != "poll":
            from ..bpf.objcheck import object_for

            # a programPath that is not a watcher object stops the start (no quiet fallback to polling)
            obj = object_for("watcher", self.conf.program_path, self.conf.debug_mode) if (
                self.conf.program_path or self.conf.debug_mode) else None
            w = None
            try:
                w = Watcher(self.conf.cgroup_path, rules, self.flows_pin, tuple(self.conf.ignore_networks),
                            self.skops.period if self.skops is not None else None, obj)
                await self._loop.run_in_executor(None, w.load)
                await self._loop.run_in_executor(None, w.attach)
                self.w = w
                if self.skops is not None:
                    self.skops.bind(w)
                w.run(self._from_thread)
                if self.conf.debug_mode:
                    log.warning("debugMode: the watcher's debug build reports each connection it sees in the "
                                "kernel's trace buffer (read it with: cat /sys/kernel/tracing/trace_pipe) "
                                "object=%s", obj.name if obj else "?")
                return
            except (OSError, BpfError) as e:
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
        for t in list(self._tasks):
            t.cancel()
        if self.w is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.w.close)

    async def _candidate(self, e: Event) -> None:
        """Ports and networks matched a rule with uid/cgroup conditions: ask sock_diag for the
        socket's owner and cgroup, then evaluate the rules in order with everything known."""
        from ..enrich.sockdiag import SockDiag

        def look() -> Optional[Sample]:
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
        self._event(dataclasses.replace(e, experiment=tag[0], activity=tag[1], candidate=False), POLLED)

    # --- fallback without eBPF ----------------------------------------------------------

    def _match(self, lport: int, rport: int, raddr: str = "", uid: Optional[int] = None,
               cgroup_id: Optional[int] = None) -> Optional[Tuple[int, int]]:
        ip = ipaddress.ip_address(raddr) if raddr else None
        ignored = ip is not None and any(ip in n for n in self._ignore)
        for i, r in enumerate(self._rules):
            if ignored and not r.all_networks:
                continue
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
            if r.tags:  # as the kernel does: the next of the rule's list, or one at random
                if r.random:
                    return r.tags[random.randrange(len(r.tags))]
                n = self._next.get(i, 0)
                self._next[i] = n + 1
                return r.tags[n % len(r.tags)]
            return r.experiment, r.activity
        return None

    async def _poll(self) -> None:
        import socket

        from ..bpf.watchloader import Event
        from ..enrich.sockdiag import SockDiag

        diag = SockDiag()
        loop = asyncio.get_running_loop()
        ranges = [(r.local, r.remote) for r in self._rules]
        try:
            while True:
                current: Dict[Tuple[int, Tuple[str, int], Tuple[str, int]], Tuple[Sample, Tuple[int, int]]] = {}
                for fam in (socket.AF_INET, socket.AF_INET6):
                    try:
                        found = await loop.run_in_executor(None, diag.established, fam, ranges)
                    except OSError as e:
                        log.warning("sock_diag poll failed error=%r", str(e))
                        found = []
                    for smp in found:
                        key = (int(fam), smp.local, smp.remote)
                        seen = self._seen.get(key)
                        # a connection keeps the tag it got (a rule's list moves on once per connection)
                        tag = seen[1] if seen is not None else self._match(smp.local[1], smp.remote[1], smp.remote[0],
                                                                           smp.uid, smp.cgroup_id)
                        if tag is not None:
                            current[key] = (smp, tag)
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

    def _from_thread(self, e: Event) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._event, e)

    def _event(self, e: Event, source: str = "watcher") -> None:
        # A cgroup's sock_ops program sees sockets of every network namespace in it (containers,
        # test namespaces): only connections with one of this namespace's addresses are ours.
        host = self.host
        if not host.is_local(e.local[0]):
            self.counters.ignore("other_netns")
            return
        if e.sample:
            ev = self.skops.on_sample(e) if self.skops is not None else None
            if ev is not None:
                host.submit(ev)
            return
        if e.candidate:
            assert self._loop is not None
            task = self._loop.create_task(self._candidate(e))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        # This host is taken as the supplier (src): what a watched service sends is its data.
        try:
            ev = make_event(END if e.closed else START, TCP, e.local[0], e.local[1], e.remote[0], e.remote[1],
                            e.experiment or 1, e.activity, "", source,
                            usage=Usage(received=e.bytes_received, sent=e.bytes_acked) if e.closed else None)
        except InputError as err:
            self.counters.reject("bad_event")
            log.warning("event not usable error=%r", str(err))
            return
        if e.closed:
            known = host.flow(ev.key)
            if known is None:
                return  # a close of a connection no rule matched
            ev = msgspec.structs.replace(ev, experiment=known.experiment, activity=known.activity,
                                         end_time=time.time())
        host.submit(ev)
