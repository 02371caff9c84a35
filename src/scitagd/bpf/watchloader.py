# SPDX-License-Identifier: Apache-2.0
"""Load the watcher (watcher.bpf.c), attach it to a cgroup v2, and read its ring buffer."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from . import libbpf as lb
from .abi import EVENT, NET_KEY, RULE, RULE_NET_KEY, RULE_TAG, U32, WCFG, flow_key

__all__ = [
    "MAX_RULES",
    "Event",
    "Rule",
    "Watcher",
    "attached_programs",
    "cgroup2_path",
    "key",
    "net16",
    "parse_event",
]

log = logging.getLogger("scitagd.watcher")

BPF_CGROUP_SOCK_OPS = 3
MAX_RULES = 64  # the size of the kernel's rules array (watcher.bpf.c)
MAX_RULE_TAGS = 4096  # the size of its rule_tags array: all rules' tag lists together
R_USED, R_NETS, R_USER, R_RANDOM, R_ALL_NETS = 1, 2, 4, 8, 16  # struct rule's `used` bits


@dataclass
class Rule:
    local: Tuple[int, int] = (0, 0)  # port range, (0, 0) any
    remote: Tuple[int, int] = (0, 0)
    experiment: int = 1
    activity: int = 1
    nets: Tuple[str, ...] = ()  # remote networks the rule is limited to (none: any)
    uids: Tuple[int, ...] = ()  # owners the rule is limited to (checked in user space)
    cgroup_id: Optional[int] = None  # cgroup v2 id the socket must be in (checked in user space)
    tags: Tuple[Tuple[int, int], ...] = ()  # several (experiment, activity) handed out in turn
    random: bool = False  # ... or at random
    all_networks: bool = False  # ignoreNetworks does not apply (flowd-go's iperf3 plugin)


def net16(cidr: str) -> Tuple[int, bytes]:
    """(prefix length, 16 bytes) with IPv4 mapped into ::ffff:0:0/96, as the kernel side keys it."""
    import ipaddress

    n = ipaddress.ip_network(cidr, strict=False)
    if n.version == 4:
        return n.prefixlen + 96, b"\0" * 10 + b"\xff\xff" + n.network_address.packed
    return n.prefixlen, n.network_address.packed


@dataclass
class Event:
    closed: bool
    family: int
    local: Tuple[str, int]
    remote: Tuple[str, int]
    experiment: int
    activity: int
    label: int
    bytes_acked: int
    bytes_received: int
    srtt_us: int
    retrans: int
    cwnd: int = 0
    mss: int = 0
    rtt_min: int = 0
    sample: bool = False
    candidate: bool = False  # a rule with uid/cgroup conditions matched ports and networks


def cgroup2_path(path: str) -> str:
    """The cgroup v2 hierarchy: `path` itself, or its unified/ part on hybrid hosts."""
    for p in (path, os.path.join(path, "unified")):
        if os.path.exists(os.path.join(p, "cgroup.controllers")):
            return p
    raise OSError(errno.ENOENT, f"{path}: no cgroup v2 hierarchy here (nor at {path}/unified)")


def parse_event(raw: bytes) -> Event:
    (etype, fam, matched, act, exp, lport, rport, label, la, ra, acked, received, srtt,
     retrans, cwnd, mss, rtt_min) = EVENT.unpack_from(raw)
    af = socket.AF_INET6 if fam == 10 else socket.AF_INET
    n = 16 if af == socket.AF_INET6 else 4
    return Event(etype == 2, af, (socket.inet_ntop(af, la[:n]), lport), (socket.inet_ntop(af, ra[:n]), rport),
                 exp, act, label, acked, received, srtt, retrans, cwnd, mss, rtt_min, etype == 3,
                 etype == 1 and matched == 2)


def key(src: str, sport: int, dst: str, dport: int) -> bytes:
    return flow_key("tcp", src, sport, dst, dport)


def attached_programs(cgroup: str) -> List[Tuple[int, str]]:
    """(id, name) of the sock_ops programs on a cgroup (naming them needs CAP_SYS_ADMIN: "" without)."""
    L = lb.lib()
    fd = os.open(cgroup2_path(cgroup), os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (ctypes.c_uint32 * 64)()
        cnt, flags = ctypes.c_uint32(64), ctypes.c_uint32(0)
        lb.check(L.bpf_prog_query(fd, BPF_CGROUP_SOCK_OPS, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)),
                 f"query sock_ops programs on {cgroup}")
        out = []
        for i in range(cnt.value):
            pfd = L.bpf_prog_get_fd_by_id(ids[i])
            name = ""
            if pfd >= 0:
                try:
                    name = lb.prog_info(pfd).name.decode(errors="replace")
                finally:
                    os.close(pfd)
            out.append((int(ids[i]), name))
        return out
    finally:
        os.close(fd)


class Watcher:
    """`sample_period`: enrichers.skops's period in seconds (RTT callbacks on every connection,
    one sample per socket and period), or None for no sampling: fixed at load, read-only to
    the program."""

    def __init__(self, cgroup: str, rules: List[Rule], flows_pin: Optional[Path],
                 ignore: Tuple[str, ...] = (), sample_period: Optional[float] = None,
                 obj_path: Optional[Path] = None) -> None:
        self.L = lb.lib()
        self.obj_path = obj_path
        self.sample_period = sample_period
        self.ignore = ignore
        self.cgroup = cgroup2_path(cgroup)
        self.rules = rules
        self.flows_pin = flows_pin
        self.obj: Optional[int] = None
        self.prog_fd = -1
        self.cg_fd = -1
        self.link: Optional[int] = None
        self.rb: Optional[int] = None
        self._cb: Any = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def load(self) -> None:
        L = self.L
        if len(self.rules) > MAX_RULES:
            raise ValueError(f"{len(self.rules)} rules: the watcher takes at most {MAX_RULES}")
        ntags = sum(len(r.tags) for r in self.rules)
        if ntags > MAX_RULE_TAGS:
            raise ValueError(f"{ntags} tags in the rules' lists: the watcher takes at most {MAX_RULE_TAGS}")
        path = str(self.obj_path or resources.files("scitagd.bpf").joinpath("watcher.bpf.o"))

        def prepare(obj: int) -> None:
            flows = lb.find_map(obj, "flows")
            if self.flows_pin is not None and self.flows_pin.exists():
                fd = lb.check(L.bpf_obj_get(str(self.flows_pin).encode()), f"open {self.flows_pin}")
                try:
                    lb.check(L.bpf_map__reuse_fd(flows, fd), "reuse the marker's flow map")
                finally:
                    os.close(fd)
            else:
                lb.check(L.bpf_map__set_max_entries(flows, 1024), "flows size")  # nothing marks: tiny
            period = self.sample_period
            lb.set_rodata(obj, WCFG.pack(int(period * 1e9), 1) if period is not None else WCFG.pack(0, 0))

        obj = self.obj = lb.load_object(path, prepare, "watcher" if self.obj_path is None else path)
        self.prog_fd = lb.prog_fd(obj, "scitagd_watch")
        rules_fd, nets_fd, ignore_fd, tags_fd = (lb.map_fd(obj, n) for n in ("rules", "rule_nets", "ignore_nets",
                                                                             "rule_tags"))
        first = 0
        for i, r in enumerate(self.rules):
            user_space = bool(r.uids) or r.cgroup_id is not None
            used = (R_USED | (R_NETS if r.nets else 0) | (R_USER if user_space else 0)
                    | (R_RANDOM if r.random else 0) | (R_ALL_NETS if r.all_networks else 0))
            val = RULE.pack(r.local[0], r.local[1], r.remote[0], r.remote[1], r.experiment, r.activity, used,
                            first, len(r.tags), 0)
            for j, (exp, act) in enumerate(r.tags):
                lb.check(L.bpf_map_update_elem(tags_fd, U32.pack(first + j), RULE_TAG.pack(exp, act), 0),
                         "rule tag")
            first += len(r.tags)
            lb.check(L.bpf_map_update_elem(rules_fd, U32.pack(i), val, 0), "rule")
            for cidr in r.nets:
                plen, addr = net16(cidr)
                lb.check(L.bpf_map_update_elem(nets_fd, RULE_NET_KEY.pack(32 + plen, i, addr), b"\x01", 0),
                         f"rule network {cidr}")
        for cidr in self.ignore:
            plen, addr = net16(cidr)
            lb.check(L.bpf_map_update_elem(ignore_fd, NET_KEY.pack(plen, addr), b"\x01", 0),
                     f"ignored network {cidr}")
        self.watched_fd = lb.map_fd(obj, "watched")
        self.events_fd = lb.map_fd(obj, "events")

    def _detach_leftovers(self) -> int:
        """A cgroup keeps a sock_ops program after its loader died (kill -9): take ours off, so
        that a restart replaces it as the marker's REPLACE does, and never touch others'."""
        ids = (ctypes.c_uint32 * 64)()
        cnt = ctypes.c_uint32(64)
        flags = ctypes.c_uint32(0)
        rc = self.L.bpf_prog_query(self.cg_fd, BPF_CGROUP_SOCK_OPS, 0, ctypes.byref(flags), ids, ctypes.byref(cnt))
        if rc < 0:
            return 0
        n = 0
        for i in range(cnt.value):
            fd = self.L.bpf_prog_get_fd_by_id(ids[i])
            if fd < 0:
                continue
            try:
                ours = lb.prog_info(fd).name.decode(errors="replace") == "scitagd_watch"
                if ours and self.L.bpf_prog_detach2(fd, self.cg_fd, BPF_CGROUP_SOCK_OPS) == 0:
                    n += 1
            finally:
                os.close(fd)
        if n:
            log.info("detached sock_ops programs left by an earlier scitagd cgroup=%s programs=%d", self.cgroup, n)
        return n

    def watch(self, k: bytes) -> None:
        lb.check(self.L.bpf_map_update_elem(self.watched_fd, k, b"\x01", 0), "watch")

    def unwatch(self, k: bytes) -> None:
        self.L.bpf_map_delete_elem(self.watched_fd, k)

    def attach(self) -> None:
        """Through a bpf_link, not pinned: it lives as long as this process holds it, so a
        watcher killed with -9 leaves nothing on the cgroup (no privilege needed to clean up).
        Programs attached the older way by an earlier scitagd are taken off when we may."""
        self.cg_fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        self._detach_leftovers()
        assert self.obj is not None
        self.link = lb.check_ptr(self.L.bpf_program__attach_cgroup(lb.find_prog(self.obj, "scitagd_watch"),
                                                                    self.cg_fd), f"attach sock_ops to {self.cgroup}")
        log.info("sock_ops attached cgroup=%s rules=%d link=yes", self.cgroup, len(self.rules))

    def run(self, on_event: Callable[[Event], None]) -> None:
        """Poll the ring buffer in a thread; `on_event` is called there."""
        def cb(_ctx: int, data: int, size: int) -> int:
            try:
                on_event(parse_event(ctypes.string_at(data, size)))
            except Exception:
                log.exception("watcher event not handled")
            return 0

        self._cb = lb.RingCallback(cb)
        self.rb = lb.ring_buffer_new(self.events_fd, self._cb)

        def loop() -> None:
            while not self._stop.is_set():
                self.L.ring_buffer__poll(self.rb, 100)

        self._thread = threading.Thread(target=loop, name="watcher-ringbuf", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        if self.link:
            self.L.bpf_link__destroy(self.link)
            self.link = None
        if self.cg_fd >= 0:
            os.close(self.cg_fd)
            self.cg_fd = -1
        if self.rb:
            self.L.ring_buffer__free(self.rb)
            self.rb = None
        if self.obj:
            self.L.bpf_object__close(self.obj)
            self.obj = None
