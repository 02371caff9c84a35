"""Load the watcher (watcher.bpf.c), attach it to a cgroup v2, and read its ring buffer."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from . import libbpf as lb

log = logging.getLogger("scitagd.watcher")

BPF_CGROUP_SOCK_OPS, BPF_F_ALLOW_MULTI = 3, 2
RULE = struct.Struct("=HHHHHBB")
EVENT = struct.Struct("=BBBBHHHHI16s16sQQIIIIII")
WCFG = struct.Struct("=QII")
KEY = struct.Struct("=16s16sHHB3x")  # struct flow_key (IPv4 in the first 4 bytes)
MAX_RULES = 64


@dataclass
class Rule:
    local: Tuple[int, int] = (0, 0)  # port range, (0, 0) any
    remote: Tuple[int, int] = (0, 0)
    experiment: int = 1
    activity: int = 1
    nets: Tuple[str, ...] = ()  # remote networks the rule is limited to (none: any)
    uids: Tuple[int, ...] = ()  # owners the rule is limited to (checked in user space)
    cgroup_id: Optional[int] = None  # cgroup v2 id the socket must be in (checked in user space)


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
    (etype, fam, matched, act, exp, lport, rport, _pad, label, la, ra, acked, received, srtt,
     retrans, cwnd, mss, rtt_min, _pad2) = EVENT.unpack_from(raw)
    af = socket.AF_INET6 if fam == 10 else socket.AF_INET
    n = 16 if af == socket.AF_INET6 else 4
    return Event(etype == 2, af, (socket.inet_ntop(af, la[:n]), lport), (socket.inet_ntop(af, ra[:n]), rport),
                 exp, act, label, acked, received, srtt, retrans, cwnd, mss, rtt_min, etype == 3,
                 etype == 1 and matched == 2)


def key(src: str, sport: int, dst: str, dport: int) -> bytes:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    return KEY.pack(socket.inet_pton(fam, src), socket.inet_pton(fam, dst), sport, dport, 6)


class Watcher:
    def __init__(self, cgroup: str, rules: List[Rule], flows_pin: Optional[Path],
                 ignore: Tuple[str, ...] = ()) -> None:
        self.L = lb.lib()
        self.ignore = ignore
        self.cgroup = cgroup2_path(cgroup)
        self.rules = rules
        self.flows_pin = flows_pin
        self.obj: Optional[int] = None
        self.prog_fd = -1
        self.cg_fd = -1
        self.rb: Optional[int] = None
        self._cb: Any = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def load(self) -> None:
        L = self.L
        path = Path(str(resources.files("scitagd.bpf").joinpath("watcher.bpf.o")))
        obj = lb.check_ptr(L.bpf_object__open_file(str(path).encode(), None), f"open {path}")
        try:
            flows = lb.check_ptr(L.bpf_object__find_map_by_name(obj, b"flows"), "map flows")
            if self.flows_pin is not None and self.flows_pin.exists():
                fd = lb.check(L.bpf_obj_get(str(self.flows_pin).encode()), f"open {self.flows_pin}")
                lb.check(L.bpf_map__reuse_fd(flows, fd), "reuse the marker's flow map")
                os.close(fd)
            else:
                lb.check(L.bpf_map__set_max_entries(flows, 1024), "flows size")  # nothing marks: tiny
            lb.recent.clear()
            rc = L.bpf_object__load(obj)
            if rc < 0:
                detail = " | ".join(line for line in lb.recent if line.strip())[-2000:]
                lb.check(rc, f"load watcher ({detail})" if detail else "load watcher")
        except Exception:
            L.bpf_object__close(obj)
            raise
        self.obj = obj
        prog = lb.check_ptr(L.bpf_object__find_program_by_name(obj, b"scitagd_watch"), "scitagd_watch")
        self.prog_fd = lb.check(L.bpf_program__fd(prog), "prog fd")
        rules_fd = lb.check(L.bpf_map__fd(lb.check_ptr(L.bpf_object__find_map_by_name(obj, b"rules"), "rules")),
                            "rules fd")
        nets_fd = lb.check(L.bpf_map__fd(lb.check_ptr(L.bpf_object__find_map_by_name(obj, b"rule_nets"),
                                                      "rule_nets")), "rule_nets fd")
        ignore_fd = lb.check(L.bpf_map__fd(lb.check_ptr(L.bpf_object__find_map_by_name(obj, b"ignore_nets"),
                                                        "ignore_nets")), "ignore_nets fd")
        for i, r in enumerate(self.rules[:MAX_RULES]):
            user_space = bool(r.uids) or r.cgroup_id is not None
            val = RULE.pack(r.local[0], r.local[1], r.remote[0], r.remote[1], r.experiment, r.activity,
                            1 | (2 if r.nets else 0) | (4 if user_space else 0))
            lb.check(L.bpf_map_update_elem(rules_fd, struct.pack("=I", i), val, 0), "rule")
            for cidr in r.nets:
                plen, addr = net16(cidr)
                lb.check(L.bpf_map_update_elem(nets_fd, struct.pack("=II", 32 + plen, i) + addr, b"\x01", 0),
                         f"rule network {cidr}")
        for cidr in self.ignore:
            plen, addr = net16(cidr)
            lb.check(L.bpf_map_update_elem(ignore_fd, struct.pack("=I", plen) + addr, b"\x01", 0),
                     f"ignored network {cidr}")
        self.wcfg_fd = lb.check(L.bpf_map__fd(lb.check_ptr(L.bpf_object__find_map_by_name(obj, b"wcfg"), "wcfg")),
                                "wcfg fd")
        self.watched_fd = lb.check(L.bpf_map__fd(lb.check_ptr(L.bpf_object__find_map_by_name(obj, b"watched"),
                                                              "watched")), "watched fd")
        self.events_fd = lb.check(L.bpf_map__fd(lb.check_ptr(L.bpf_object__find_map_by_name(obj, b"events"),
                                                             "events")), "events fd")

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

    def sampling(self, period_s: float) -> None:
        """enrichers.skops: RTT callbacks on every connection, one sample per socket per period."""
        lb.check(self.L.bpf_map_update_elem(self.wcfg_fd, struct.pack("=I", 0),
                                            WCFG.pack(int(period_s * 1e9), 1, 0), 0), "wcfg")

    def watch(self, k: bytes) -> None:
        lb.check(self.L.bpf_map_update_elem(self.watched_fd, k, b"\x01", 0), "watch")

    def unwatch(self, k: bytes) -> None:
        self.L.bpf_map_delete_elem(self.watched_fd, k)

    def attach(self) -> None:
        self.cg_fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        self._detach_leftovers()
        lb.check(self.L.bpf_prog_attach(self.prog_fd, self.cg_fd, BPF_CGROUP_SOCK_OPS, BPF_F_ALLOW_MULTI),
                 f"attach sock_ops to {self.cgroup}")
        log.info("sock_ops attached cgroup=%s rules=%d", self.cgroup, len(self.rules))

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
        if self.cg_fd >= 0:
            self.L.bpf_prog_detach2(self.prog_fd, self.cg_fd, BPF_CGROUP_SOCK_OPS)
            os.close(self.cg_fd)
            self.cg_fd = -1
        if self.rb:
            self.L.ring_buffer__free(self.rb)
            self.rb = None
        if self.obj:
            self.L.bpf_object__close(self.obj)
            self.obj = None
