# SPDX-License-Identifier: Apache-2.0
"""Load the marker object, pin its maps, attach it to tc egress, and read/write its maps.

Everything here is a blocking system call of microseconds (map updates) or milliseconds
(load, attach); the marker sink calls the map operations inline and runs the rest in an
executor.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import socket
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import BpfError
from . import libbpf as lb
from .abi import CONFIG, COUNT_KEY, COUNT_VAL, FLOW_KEY, FLOW_TAG, U32, U64

__all__ = [
    "ETHER_LIKE",
    "L3_ONLY",
    "MAPS",
    "PIN_DIR",
    "STATE_DIR",
    "STRATEGY_IDS",
    "TC_HANDLE",
    "TC_PRIORITY",
    "UNMARKED_REASONS",
    "Attachment",
    "KernelMarker",
    "Maps",
    "detach",
    "ensure_bpffs",
    "link_type",
    "object_path",
    "other_filters",
    "prog_name",
    "program_for",
    "query",
    "read_state",
    "remove_qdisc",
    "state_file",
    "write_state",
]

log = logging.getLogger("scitagd.marker")

PIN_DIR = Path("/sys/fs/bpf/scitagd")
STATE_DIR = Path("/run/scitagd")
# Our filter on clsact egress: a fixed handle and priority so that a restart REPLACEs it
# and `marker clean` finds exactly it, never another tool's filter. Priority 1 runs it before
# other filters (which might end the chain); it passes packets on (TC_ACT_UNSPEC) so that
# theirs still run after it. backends.marker.tcPriority changes the priority.
TC_HANDLE = 0x5C1A
TC_PRIORITY = 1
MAPS = ("flows", "config", "marked", "unmarked")
STRATEGY_IDS = {"label": 0, "hopByHop": 1, "destination": 2, "hopByHopDestination": 3}
UNMARKED_REASONS = ("mtu", "no_room", "store_failed", "vlan")

ETHER_LIKE = {1, 772}  # ARPHRD_ETHER, ARPHRD_LOOPBACK (which uses an Ethernet header)
L3_ONLY = {65534, 769, 776, 823}  # ARPHRD_NONE (tun, wireguard), TUNNEL6, SIT, IP6GRE


def object_path() -> Path:
    return Path(str(resources.files("scitagd.bpf").joinpath("marker.bpf.o")))


def ensure_bpffs(path: Path = PIN_DIR) -> None:
    """Mount bpffs on /sys/fs/bpf if nothing is mounted there (systemd usually does it)."""
    base = Path("/sys/fs/bpf")
    mounted = any(line.split()[1] == str(base) and line.split()[2] == "bpf"
                  for line in Path("/proc/mounts").read_text().splitlines() if len(line.split()) > 2)
    if not mounted:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", str(base).encode(), b"bpf", 0, None) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"cannot mount bpffs on {base}: {os.strerror(e)}")
        log.info("mounted bpffs path=%s", base)
    path.mkdir(parents=True, exist_ok=True)


def link_type(ifname: str) -> int:
    """ARPHRD_* of an interface, from SIOCGIFHWADDR: /sys/class/net shows the namespace that
    mounted sysfs, which need not be ours."""
    import fcntl

    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("16s16x", ifname.encode()[:15]))
    return int(struct.unpack_from("=H", ifr, 16)[0])


def program_for(ifname: str) -> str:
    t = link_type(ifname)
    if t in ETHER_LIKE:
        return "scitagd_eth"
    if t in L3_ONLY:
        return "scitagd_l3"
    raise OSError(errno.EOPNOTSUPP, f"{ifname}: link type {t} not supported (Ethernet and L3 only)")


@dataclass
class Attachment:
    ifname: str
    ifindex: int
    program: str
    prog_id: int
    owns_qdisc: bool


class KernelMarker:
    """One loaded marker object with pinned maps."""

    def __init__(self, max_flows: int = 262144, pin_dir: Path = PIN_DIR,
                 obj_path: Optional[Path] = None) -> None:
        self.L = lb.lib()
        self.pin_dir = pin_dir
        self.obj_path = obj_path or object_path()
        self.max_flows = max_flows
        self.obj: Optional[int] = None
        self.fds: Dict[str, int] = {}
        self.progs: Dict[str, int] = {}
        self.ncpus = 0
        self.recreated = False  # the pinned maps were incompatible and made anew (their flows lost)

    # --- loading -----------------------------------------------------------------------

    def load(self) -> None:
        ensure_bpffs(self.pin_dir)
        try:
            self._load_once()
        except BpfError as e:
            if e.errno != errno.EINVAL:
                raise
            # A pinned map from another version (other size or layout) cannot be reused:
            # drop the pins (their flows are lost; the log says so) and load fresh.
            log.warning("pinned maps incompatible, recreating them dir=%s error=%r", self.pin_dir,
                        str(e))
            for name in MAPS:
                try:
                    os.unlink(self.pin_dir / name)
                except FileNotFoundError:
                    pass
            self.recreated = True
            self._load_once()
        self.ncpus = lb.check(self.L.libbpf_num_possible_cpus(), "possible cpus")

    def _load_once(self) -> None:
        L = self.L

        def prepare(obj: int) -> None:
            for name in MAPS:
                lb.check(L.bpf_map__set_pin_path(lb.find_map(obj, name), str(self.pin_dir / name).encode()),
                         f"pin {name}")
            lb.check(L.bpf_map__set_max_entries(lb.find_map(obj, "flows"), self.max_flows), "flows size")

        obj = lb.load_object(str(self.obj_path), prepare, self.obj_path.name)
        self.obj = obj
        self.fds = {n: lb.map_fd(obj, n) for n in MAPS}
        self.progs = {p: lb.prog_fd(obj, p) for p in ("scitagd_eth", "scitagd_l3")}

    def close(self) -> None:
        if self.obj:
            self.L.bpf_object__close(self.obj)
            self.obj = None

    # --- configuration -------------------------------------------------------------------

    def configure(self, strategy: str, match: Optional[Tuple[int, int, int]] = None) -> None:
        """`match` = (experiment, activity, label with zero entropy) for matchAll."""
        exp, act, label = match or (0, 0, 0)
        val = CONFIG.pack(STRATEGY_IDS[strategy], 1 if match else 0, label, exp, act)
        self._update("config", U32.pack(0), val)

    def _update(self, name: str, key: bytes, val: bytes) -> None:
        lb.check(self.L.bpf_map_update_elem(self.fds[name], key, val, lb.BPF_ANY), f"{name} update")

    def maps(self) -> Maps:
        return Maps(dict(self.fds), self.ncpus)

    # --- tc -----------------------------------------------------------------------------

    def attach(self, ifname: str, owns_qdisc: bool = False, priority: int = TC_PRIORITY) -> Attachment:
        ifindex = socket.if_nametoindex(ifname)
        program = program_for(ifname)
        hook = lb.tc_hook(ifindex)
        rc = self.L.bpf_tc_hook_create(ctypes.byref(hook))
        if rc == 0:
            owns_qdisc = True
            log.info("clsact qdisc created interface=%s", ifname)
        elif rc != -errno.EEXIST:
            lb.check(rc, f"clsact qdisc on {ifname}")
        opts = lb.tc_opts(TC_HANDLE, priority, self.progs[program], lb.BPF_TC_F_REPLACE)
        lb.check(self.L.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
                 f"attach to {ifname} egress")
        return Attachment(ifname, ifindex, program, opts.prog_id, owns_qdisc)

    def current_prog_ids(self) -> set[int]:
        ids = set()
        for fd in self.progs.values():
            ids.add(lb.prog_info(fd).id)
        return ids


def query(ifindex: int, priority: int = TC_PRIORITY) -> Optional[int]:
    """The program id of our filter on this interface's egress, or None."""
    L = lb.lib()
    hook = lb.tc_hook(ifindex)
    opts = lb.tc_opts(TC_HANDLE, priority)
    rc = L.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if rc == -errno.ENOENT or rc == -errno.EINVAL or rc == -errno.ENODEV:
        return None
    lb.check(rc, f"query ifindex {ifindex}")
    return int(opts.prog_id)


def prog_name(prog_id: int) -> str:
    L = lb.lib()
    fd = L.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return ""
    try:
        return str(lb.prog_info(fd).name.decode(errors="replace"))
    finally:
        os.close(fd)


def detach(ifindex: int, priority: int = TC_PRIORITY, ours: Optional[set[int]] = None) -> bool:
    """Remove our filter (by handle and priority, and only if it runs one of our programs).
    `ours`: the ids of the programs this process loaded; a filter running one of them is ours
    without asking its name (which needs CAP_SYS_ADMIN: the unit does not have it)."""
    prog_id = query(ifindex, priority)
    if prog_id is None:
        return False
    if (ours is None or prog_id not in ours) and not prog_name(prog_id).startswith("scitagd_"):
        log.warning("filter with our handle runs another program, left alone ifindex=%d prog_id=%d",
                    ifindex, prog_id)
        return False
    L = lb.lib()
    hook = lb.tc_hook(ifindex)
    opts = lb.tc_opts(TC_HANDLE, priority)
    lb.check(L.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts)), f"detach ifindex {ifindex}")
    return True


def other_filters(ifindex: int, priority: int = TC_PRIORITY) -> int:
    """How many tc filters other than ours sit on this interface's clsact (both directions)."""
    from pyroute2 import IPRoute

    n = 0
    with IPRoute() as ipr:
        for parent in (0xFFFFFFF2, 0xFFFFFFF3):  # ingress, egress
            try:
                msgs = ipr.get_filters(index=ifindex, parent=parent)
            except Exception:
                continue
            for m in msgs:
                if m.get_attr("TCA_KIND") is None:
                    continue
                prio = (m["info"] >> 16) & 0xFFFF
                if m["handle"] == TC_HANDLE and prio == priority:
                    continue
                if m["handle"] == 0:
                    continue  # the per-priority chain header that the kernel reports as well
                n += 1
    return n


def remove_qdisc(ifindex: int) -> None:
    L = lb.lib()
    hook = lb.tc_hook(ifindex, lb.BPF_TC_INGRESS | lb.BPF_TC_EGRESS)
    lb.check(L.bpf_tc_hook_destroy(ctypes.byref(hook)), f"remove clsact on ifindex {ifindex}")


# --- map access shared by the daemon and `scitagd marker status` ---------------------------------

class Maps:
    """Map file descriptors, from a loaded object or from the pins of a running daemon."""

    def __init__(self, fds: Dict[str, int], ncpus: int) -> None:
        self.L = lb.lib()
        self.fds = fds
        self.ncpus = ncpus

    @classmethod
    def from_pins(cls, pin_dir: Path = PIN_DIR) -> Maps:
        L = lb.lib()
        fds = {}
        for name in MAPS:
            fds[name] = lb.check(L.bpf_obj_get(str(pin_dir / name).encode()), f"open pinned {name}")
        return cls(fds, lb.check(L.libbpf_num_possible_cpus(), "possible cpus"))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def put_flow(self, key: bytes, tag: bytes) -> None:
        lb.check(self.L.bpf_map_update_elem(self.fds["flows"], key, tag, lb.BPF_ANY), "flow insert")

    def delete_flow(self, key: bytes) -> bool:
        rc = self.L.bpf_map_delete_elem(self.fds["flows"], key)
        if rc == -errno.ENOENT:
            return False
        lb.check(rc, "flow delete")
        return True

    def get_flow(self, key: bytes) -> Optional[bytes]:
        buf = ctypes.create_string_buffer(FLOW_TAG.size)
        rc = self.L.bpf_map_lookup_elem(self.fds["flows"], key, buf)
        if rc == -errno.ENOENT:
            return None
        lb.check(rc, "flow lookup")
        return buf.raw

    def _keys(self, name: str, size: int) -> Iterator[bytes]:
        fd = self.fds[name]
        key = ctypes.create_string_buffer(size)
        nxt = ctypes.create_string_buffer(size)
        rc = self.L.bpf_map_get_next_key(fd, None, nxt)
        while rc == 0:
            yield nxt.raw
            ctypes.memmove(key, nxt, size)
            rc = self.L.bpf_map_get_next_key(fd, key, nxt)

    def flows(self) -> Iterator[Tuple[bytes, bytes]]:
        for k in self._keys("flows", FLOW_KEY.size):
            v = self.get_flow(k)
            if v is not None:
                yield k, v

    def count_flows(self) -> int:
        return sum(1 for _ in self._keys("flows", FLOW_KEY.size))

    def _percpu(self, name: str, key: bytes, vsize: int) -> List[bytes]:
        stride = (vsize + 7) & ~7
        buf = ctypes.create_string_buffer(stride * self.ncpus)
        rc = self.L.bpf_map_lookup_elem(self.fds[name], key, buf)
        if rc < 0:
            return []
        raw = buf.raw
        return [raw[i * stride:i * stride + vsize] for i in range(self.ncpus)]

    def marked(self) -> Dict[Tuple[int, int, int], Tuple[int, int]]:
        """(ifindex, experiment, activity) -> (packets, bytes), summed over CPUs."""
        out = {}
        for k in list(self._keys("marked", COUNT_KEY.size)):
            pk = by = 0
            for v in self._percpu("marked", k, COUNT_VAL.size):
                p, b = COUNT_VAL.unpack(v)
                pk += p
                by += b
            ifindex, exp, act = COUNT_KEY.unpack(k)
            out[(ifindex, exp, act)] = (pk, by)
        return out

    def unmarked(self) -> Dict[str, int]:
        out = {}
        for i, reason in enumerate(UNMARKED_REASONS):
            out[reason] = sum(U64.unpack(v)[0] for v in self._percpu("unmarked", U32.pack(i), 8))
        return out

    def config(self) -> Tuple[str, bool, int, int]:
        buf = ctypes.create_string_buffer(CONFIG.size)
        lb.check(self.L.bpf_map_lookup_elem(self.fds["config"], U32.pack(0), buf), "config")
        strategy, match_all, _label, exp, act = CONFIG.unpack(buf.raw)
        names = {v: k for k, v in STRATEGY_IDS.items()}
        return names.get(strategy, str(strategy)), bool(match_all), exp, act


def state_file(pin_dir: Path) -> Path:
    """Which clsact qdiscs we created, kept across restarts (tmpfs: gone at reboot, as they are)."""
    return STATE_DIR / f"{pin_dir.name}-state.json"


def read_state(path: Path) -> Dict[str, Dict[str, object]]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_state(state: Dict[str, Dict[str, object]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)
