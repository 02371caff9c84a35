# SPDX-License-Identifier: Apache-2.0
"""`backends.marker`: every packet of a tagged IPv6 flow leaves the host carrying its tag.

Start -> two map entries (the flow seen leaving in either direction: the data of a GET, the
ACKs of a PUT), end -> both removed. The kernel side is bpf/marker.bpf.c; config keys are in
sinks/conf.py. Interfaces are checked every `checkInterval` seconds: new ones, and ones
whose filter was removed by someone else, get it (back).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

from ..components import Host, Sink
from ..errors import InputError
from ..events import END, START, FlowEvent, make_event
from ..tags import encode_flow_label, random_entropy
from .conf import MarkerConfig

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from ..bpf.loader import Attachment, KernelMarker, Maps

__all__ = ["MarkerSink", "global_ipv6_interfaces"]

log = logging.getLogger("scitagd.marker")


def _owned(tag: bytes) -> bool:
    """A flow map entry written for the direction its producer reported (flags bit 0)."""
    from ..bpf.abi import FLOW_TAG

    return bool(tag[FLOW_TAG.offsets["flags"]] & 1)


def global_ipv6_interfaces() -> List[str]:
    """Interfaces with a global-scope IPv6 address (/proc/net/if_inet6, scope 00)."""
    out = []
    try:
        for line in open("/proc/net/if_inet6"):
            parts = line.split()
            if len(parts) >= 6 and parts[3] == "00" and parts[5] not in out:
                out.append(parts[5])
    except OSError:
        pass
    return out


class MarkerSink(Sink):
    name = "marker"

    def __init__(self, host: Host, conf: MarkerConfig, match: Optional[Tuple[int, int]] = None) -> None:
        super().__init__(host)
        self.conf = conf
        self.match = match
        self.km: Optional[KernelMarker] = None
        self.maps: Optional[Maps] = None
        self.attached: Dict[str, Attachment] = {}
        self.state: Dict[str, Dict[str, object]] = {}
        self.entries = 0
        self.evictions = 0
        # Reverse-direction keys another report governs (it owns the direction, or took over
        # this flow's reverse entry): missing at this flow's end is no eviction. Bounded by the map.
        self._shared: set[bytes] = set()
        self.not_markable: Dict[str, int] = {}
        self.errors = 0
        self._task: Optional[asyncio.Task[None]] = None
        self._prog_ids: set[int] = set()
        self.state_path = Path("/run/scitagd/scitagd-state.json")
        host.register_metrics(self)

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._load)
        restored = await loop.run_in_executor(None, self._restore)
        for ev in restored:
            self.host.restore(ev)
        if restored:
            log.info("flows restored from the pinned map flows=%d", len(restored))
        await loop.run_in_executor(None, self.check_interfaces)
        self._task = loop.create_task(self._watch(), name="marker-interfaces")

    def _load(self) -> None:
        from ..bpf import loader, objcheck

        obj = objcheck.object_for("marker", self.conf.program_path, self.conf.debug_mode,
                                  "backends.marker.programPath")
        self.km = loader.KernelMarker(max_flows=self.conf.map_size, pin_dir=Path(self.conf.pin_path), obj_path=obj)
        self.state_path = loader.state_file(self.km.pin_dir)
        self.km.load()
        match = None
        if self.match:
            exp, act = self.match
            match = (exp, act, encode_flow_label(exp, act, 0))
        self.km.configure(self.conf.marking_strategy, match)
        self.maps = self.km.maps()
        self._prog_ids = self.km.current_prog_ids()
        self.state = loader.read_state(self.state_path)
        log.info("loaded strategy=%s match_all=%s map_size=%d pins=%s object=%s", self.conf.marking_strategy,
                 bool(match), self.conf.map_size, self.km.pin_dir, obj)
        if self.conf.debug_mode:
            log.warning("debugMode: the marker's debug build reports every packet of a tagged flow in the kernel's "
                        "trace buffer (read it with: cat /sys/kernel/tracing/trace_pipe); it costs time per "
                        "packet, use it to diagnose only object=%s", obj.name)

    def _restore(self) -> List[FlowEvent]:
        """Flows a previous instance (killed, or restarted) left in the pinned map."""
        from ..bpf.abi import FLOW_TAG, unpack_flow_key

        out = []
        n = 0
        assert self.maps is not None
        for raw_key, raw_tag in self.maps.flows():
            n += 1
            _label, exp, act, flags = FLOW_TAG.unpack(raw_tag)
            if not flags & 1:
                continue
            proto, src, sport, dst, dport = unpack_flow_key(raw_key)
            try:
                out.append(make_event(START, proto, src, sport, dst, dport, exp, act, "", "restored"))
            except InputError:
                continue
        self.entries = n
        return out

    def wanted_interfaces(self) -> List[str]:
        names = list(self.conf.target_interfaces)
        if self.conf.discover_interfaces:
            names += [n for n in global_ipv6_interfaces() if n not in names]
        return names

    def check_interfaces(self) -> None:
        """Attach where our filter is missing (new interface, or a filter someone removed)."""
        from ..bpf import loader

        present = {name for _, name in socket.if_nameindex()}
        changed = False
        for name in self.wanted_interfaces():
            if name not in present:
                if self.attached.pop(name, None) is not None:
                    log.warning("interface gone interface=%s", name)
                continue
            try:
                ifindex = socket.if_nametoindex(name)
                current = loader.query(ifindex, self.conf.tc_priority)
                if current is not None and current in self._prog_ids:
                    continue
                prev = self.state.get(name, {})
                owns = bool(prev.get("owns_qdisc")) and prev.get("ifindex") == ifindex
                assert self.km is not None
                att = self.km.attach(name, owns_qdisc=owns, priority=self.conf.tc_priority)
            except OSError as e:
                self.errors += 1
                log.warning("cannot attach interface=%s error=%r", name, str(e))
                continue
            verb = "re-attached" if name in self.attached else "attached"
            self.attached[name] = att
            self.state[name] = {"ifindex": att.ifindex, "owns_qdisc": att.owns_qdisc,
                                "priority": self.conf.tc_priority}
            changed = True
            log.info("%s interface=%s ifindex=%d program=%s prog_id=%d", verb, name, att.ifindex,
                     att.program, att.prog_id)
        if changed:
            loader.write_state(self.state, self.state_path)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.conf.check_interval)
            try:
                await loop.run_in_executor(None, self.check_interfaces)
            except Exception:
                log.exception("interface check failed")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._detach_all)

    async def adopt(self, old: MarkerSink) -> None:
        """Reload: take over from the marker this one replaces. Its filters are REPLACEd by ours
        already (check_interfaces at start); if our map is not its map (another pinPath, or
        one recreated for another size), its entries are copied, tags and entropy as they were."""
        if old.maps is None or self.maps is None:
            return
        if old.conf.pin_path == self.conf.pin_path and not (self.km is not None and self.km.recreated):
            return
        n = 0
        for key, tag in old.maps.flows():
            self.maps.put_flow(key, tag)
            n += 1
        self.entries = n
        log.info("flow map entries carried over on reload entries=%d from=%s to=%s", n, old.conf.pin_path,
                 self.conf.pin_path)

    async def handover(self) -> None:
        """Reload: stop without detaching (our successor's program is attached in our place),
        without removing the qdisc and without touching the shared state file."""
        if self._task:
            self._task.cancel()
        if self.maps:
            self.maps.close()
        if self.km:
            self.km.close()

    def _detach_all(self) -> None:
        from ..bpf import loader

        for name, att in list(self.attached.items()):
            try:
                loader.detach(att.ifindex, self.conf.tc_priority, self._prog_ids)
                log.info("detached interface=%s", name)
                if self.conf.remove_qdisc and att.owns_qdisc:
                    others = loader.other_filters(att.ifindex, self.conf.tc_priority)
                    if others == 0:
                        loader.remove_qdisc(att.ifindex)
                        log.info("clsact qdisc removed interface=%s", name)
                    else:
                        log.info("clsact qdisc kept: other filters on it interface=%s filters=%d",
                                 name, others)
                self.state.pop(name, None)
            except OSError as e:
                log.warning("detach failed interface=%s error=%r", name, str(e))
        self.attached.clear()
        loader.write_state(self.state, self.state_path)
        if self.maps:
            self.maps.close()
        if self.km:
            self.km.close()

    # --- events --------------------------------------------------------------------------

    def handle(self, ev: FlowEvent) -> None:
        if ev.state != START and ev.state != END:
            return
        if ":" not in ev.src_ip:
            self.not_markable["ipv4"] = self.not_markable.get("ipv4", 0) + 1
            return
        if self.match:
            return  # matchAll marks every flow in the kernel; nothing per flow to do
        if ev.source == "watcher":
            return  # the watcher's kernel program wrote (and removes) these entries itself
        from ..bpf.abi import FLOW_TAG, flow_key

        maps = self.maps
        assert maps is not None, "handle() before start()"
        fwd = flow_key(ev.protocol, ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port)
        rev = flow_key(ev.protocol, ev.dst_ip, ev.dst_port, ev.src_ip, ev.src_port)
        # As the watcher's kernel program does: both ends of a connection can be reported here
        # (two local services), each owning its direction (flags bit 0); a flow's reverse entry
        # never replaces nor removes the other report's own direction. Its price, measured: two
        # lookups per start and at most one per end, 3-5 us each (ctypes + bpf syscall): ~1 % of a
        # core at 1,000 flow starts/s.
        shared = self._shared
        if ev.state == START:
            if len(shared) > self.conf.map_size:
                shared.clear()
            label = encode_flow_label(ev.experiment, ev.activity, random_entropy())
            cur = maps.get_flow(fwd)
            if cur is None:
                self.entries += 1
            elif not _owned(cur):
                shared.add(fwd)  # the other report's reverse entry: this report's own now
            maps.put_flow(fwd, FLOW_TAG.pack(label, ev.experiment, ev.activity, 1))
            cur = maps.get_flow(rev)
            if cur is not None and _owned(cur):
                shared.add(rev)  # the other report's own direction: left as it is
            else:
                maps.put_flow(rev, FLOW_TAG.pack(label, ev.experiment, ev.activity, 0))
                self.entries += cur is None
        else:
            self._remove(fwd)
            if rev in shared:
                shared.discard(rev)
                cur = maps.get_flow(rev)
                if cur is None or _owned(cur):
                    return  # the other report's: it marks, or already removed, that direction
            self._remove(rev)

    def _remove(self, key: bytes) -> None:
        assert self.maps is not None
        if self.maps.delete_flow(key):
            self.entries -= 1
        else:
            self.evictions += 1  # gone before its flow's end: the LRU made room for newer flows

    # --- metrics -------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Kernel counters read at scrape time (a per-CPU map walk, ~1 ms per 1,000 tags)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from ..registry import TAG_LABELS

        if self.maps is None:
            return
        reg = self.host.registry
        names: Dict[int, str] = {}
        pk = CounterMetricFamily("scitagd_marked_packets", "Packets marked in the kernel",
                                 labels=["interface", *TAG_LABELS])
        by = CounterMetricFamily("scitagd_marked_bytes", "Bytes of marked packets (GSO packets "
                                 "count once with all their payload)", labels=["interface", *TAG_LABELS])
        for (ifindex, exp, act), (p, b) in self.maps.marked().items():
            if ifindex not in names:
                try:
                    names[ifindex] = socket.if_indextoname(ifindex)
                except OSError:
                    names[ifindex] = str(ifindex)
            labels = [names[ifindex], *reg.tag_labels(exp, act)]
            pk.add_metric(labels, p)
            by.add_metric(labels, b)
        yield pk
        yield by
        um = CounterMetricFamily("scitagd_unmarked_packets", "Packets of tagged flows the kernel "
                                 "left unmarked, by reason", labels=["reason"])
        for reason, n in self.maps.unmarked().items():
            um.add_metric([reason], n)
        yield um
        nm = CounterMetricFamily("scitagd_marker_not_markable", "Flows the marker cannot mark",
                                 labels=["reason"])
        for reason, n in self.not_markable.items():
            nm.add_metric([reason], n)
        yield nm
        yield GaugeMetricFamily("scitagd_marker_map_entries", "Flow map entries (two per flow)",
                                value=self.entries)
        yield GaugeMetricFamily("scitagd_marker_map_capacity", "Flow map size (LRU)",
                                value=self.conf.map_size)
        yield CounterMetricFamily("scitagd_marker_evictions", "Map entries gone before their flow "
                                  "ended (LRU evictions)", value=self.evictions)
        yield CounterMetricFamily("scitagd_marker_attach_errors", "Failed attempts to attach to an "
                                  "interface (retried every checkInterval)", value=self.errors)
        at = GaugeMetricFamily("scitagd_marker_attached", "Interfaces with the marker attached",
                               labels=["interface", "program"])
        for name, att in self.attached.items():
            at.add_metric([name, att.program], 1)
        yield at
