# SPDX-License-Identifier: Apache-2.0
"""The least privilege of packaging/systemd/scitagd.service, proven on the wire.

The daemon runs as the unit would (unitsandbox.py: a dedicated uid, exactly the unit's
capabilities, NoNewPrivileges, MemoryDenyWriteExecute, a read-only system with only the unit's
writable paths, bpffs as systemd mounts it) in namespace A of a lab, with the marker, the
watcher (attached to a child cgroup made here, never the root cgroup), sock_diag enrichment
and the per-CPU counters read for /metrics; B captures. Then each capability is dropped in turn
and the run must fail, or, for CAP_PERFMON, the kernel must treat the programs as unprivileged.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from scitagd.lab.netlab import A_ADDR, B_ADDR, TOOLS, Lab
from scitagd.lab.tools import Packet
from scitagd.lab.util import wait_for
from scitagd.tags import decode_flow_label

from ..conftest import IS_ROOT
from .unitsandbox import REPO, Sandbox, free_id, parse_unit, seccomp_missing, system_python_matches, unit_caps

COLLECTOR_UNIT = REPO / "packaging" / "systemd" / "scitagd-collector.service"
CAPS = unit_caps()
MB = 1 << 20


def _why_not() -> Optional[str]:
    if not IS_ROOT:
        return "needs root (network namespaces, eBPF, setpriv to another uid)"
    for tool in ("setpriv", "unshare", "nsenter", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} missing (util-linux / iproute2)"
    return system_python_matches()


pytestmark = [pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())), pytest.mark.slow]


def cgroup2_root() -> str:
    for p in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.exists(os.path.join(p, "cgroup.controllers")):
            return p
    pytest.skip("no cgroup v2 hierarchy")


class UnitDaemon:
    """`scitagd run` started through the sandbox in the lab's namespace A."""

    def __init__(self, site: Site, sb: Sandbox, args: List[str]) -> None:
        self.site = site
        self.log = site.tmp / f"unit-{len(site.lab.procs)}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(sb.argv(site.lab.a.name, args), stdout=out,
                                         stderr=subprocess.STDOUT, env=sb.env())
        site.lab.procs.append(self.proc)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.text()
            if needle in t:
                return t
            if self.proc.poll() is not None:
                raise AssertionError(f"scitagd exited {self.proc.returncode}:\n{t}")
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in log:\n{self.text()}")

    def wait_exit(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s:\n{self.text()}") from None

    def path(self, p: str) -> str:
        """A path as the daemon sees it (its private mount namespace), for root here."""
        return f"/proc/{self.proc.pid}/root{p}"

    def send(self, *lines: str) -> None:
        with open(self.path("/run/scitagd/flowd"), "w") as f:
            f.write("".join(line + "\n" for line in lines))

    def metrics(self) -> Dict[str, float]:
        code = ("import urllib.request;print(urllib.request.urlopen("
                "'http://127.0.0.1:9464/metrics').read().decode())")
        r = self.site.lab.a.exec(sys.executable, "-c", code)
        out = {}
        for line in r.stdout.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(15)


class Site:
    """A lab, a child cgroup for the watcher and a uid for the dedicated user."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.uid = free_id()
        self.cgroup = os.path.join(cgroup2_root(), f"scitagd-capstest-{os.getpid()}-{tmp.name[-8:]}")
        self.lab = Lab(tmp)
        try:
            os.mkdir(self.cgroup)
        except OSError:
            self.lab.close()
            raise

    def config(self, marker: bool = True, watcher: bool = True) -> Path:
        conf = self.tmp / f"scitagd-{len(self.lab.procs)}.yaml"
        lines = ["plugins:", "  namedPipe: {pipePath: /run/scitagd/flowd}"]
        if watcher:
            lines.append(f"  watcher: {{mode: ebpf, cgroupPath: {self.cgroup}, ignoreNetworks: [], "
                         "rules: [{localPorts: '40500-40599', experiment: cms, activity: 'Analysis Input'}]}")
        lines += ["enrichers: {period: 50, netlink: {}}", "backends:",
                  "  prometheus: {bindAddress: 127.0.0.1, port: 9464}"]
        if marker:
            lines.append("  marker: {targetInterfaces: [a0], checkInterval: 0.5, markingStrategy: label}")
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def daemon(self, caps: List[str], conf: Optional[Path] = None, **sandbox: object) -> UnitDaemon:
        sb = Sandbox(self.uid, self.uid, caps, files={"scitagd.yaml": conf or self.config()},
                     **sandbox)  # type: ignore[arg-type]
        return UnitDaemon(self, sb, ["/usr/bin/python3", "-m", "scitagd", "run", "--config",
                                     "/run/scitagd-code/scitagd.yaml"])

    def in_cgroup(self, *cmd: str) -> List[str]:
        """A command in namespace A whose sockets belong to the watched child cgroup."""
        inner = " ".join(map(repr, self.lab.a.cmd(*cmd)))
        return ["sh", "-c", f"echo $$ > {self.cgroup}/cgroup.procs && exec {inner}"]

    def close(self) -> None:
        self.lab.close()
        for _ in range(100):  # the cgroup empties once its processes are reaped
            try:
                os.rmdir(self.cgroup)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


# --- kernel facts read as root --------------------------------------------------------------

def prog_xlated(prog_id: int) -> bytes:
    """The program as the verifier rewrote it (what the JIT compiles)."""
    from scitagd.bpf import libbpf as lb

    L = lb.lib()
    fd = L.bpf_prog_get_fd_by_id(prog_id)
    assert fd >= 0, f"program {prog_id} gone"
    try:
        n = lb.prog_info(fd).xlated_prog_len
        buf = ctypes.create_string_buffer(n)
        info = lb.ProgInfo()
        info.xlated_prog_len = n
        info.xlated_prog_insns = ctypes.addressof(buf)
        size = ctypes.c_uint32(ctypes.sizeof(info))
        lb.check(L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "prog info")
        return buf.raw
    finally:
        os.close(fd)


BPF_ST_NOSPEC = 0xC2  # BPF_ST | BPF_NOSPEC: a speculation barrier the verifier inserted


def nospec_barriers(prog_id: int) -> int:
    raw = prog_xlated(prog_id)
    return Counter(raw[i] for i in range(0, len(raw), 8))[BPF_ST_NOSPEC]


def cgroup_prog_ids(path: str) -> List[int]:
    from scitagd.bpf import libbpf as lb

    L = lb.lib()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (ctypes.c_uint32 * 64)()
        cnt, flags = ctypes.c_uint32(64), ctypes.c_uint32(0)
        lb.check(L.bpf_prog_query(fd, 3, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)), "query")
        return [ids[i] for i in range(cnt.value)]
    finally:
        os.close(fd)


def proc_status(pid: int) -> Dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


CAP_BITS = {"net_admin": 12, "sys_admin": 21, "perfmon": 38, "bpf": 39, "dac_override": 1,
            "dac_read_search": 2, "sys_resource": 24}


def sent_by_a(pkts: List[Packet], sport: int) -> List[Packet]:
    return [p for p in pkts if p.src == A_ADDR and p.proto == 6 and p.sport == sport]


# --- the unit's set: everything works -------------------------------------------------------

HOLD = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), source_address=("", int(sys.argv[3])))
for _ in range(int(sys.argv[4])):
    s.sendall(b"x" * 65536); time.sleep(0.05)
s.close()
"""


def test_unit_capabilities_mark_on_the_wire(site: Site) -> None:
    assert sorted(CAPS) == ["bpf", "net_admin", "perfmon"], CAPS
    d = site.daemon(CAPS)
    log = d.wait_log("scitagd.daemon started")
    assert "sock_ops attached" in log and "attached interface=a0" in log

    # The process as systemd would leave it.
    st = proc_status(d.proc.pid)
    assert st["Uid"].split()[:2] == [str(site.uid)] * 2 and st["Groups"] == ""
    eff = int(st["CapEff"], 16)
    assert eff == sum(1 << CAP_BITS[c] for c in CAPS), st["CapEff"]
    assert int(st["CapBnd"], 16) == eff and st["NoNewPrivs"] == "1"
    if seccomp_missing() is None:  # the system call and address family filters
        assert (st["Seccomp"], st["Seccomp_filters"]) == ("2", "2"), st
    maps = Path(f"/proc/{d.proc.pid}/maps").read_text().splitlines()
    assert not [m for m in maps if "wx" in m.split()[1]], "a writable+executable mapping exists"
    assert any("memfd:libffi" in m for m in maps), "ctypes callbacks not mapped through libffi's memfd"
    # bpffs as the daemon sees it: only its own directory, owned by it; the pins are its own.
    assert os.listdir(d.path("/sys/fs/bpf")) == ["scitagd"]
    pins = d.path("/sys/fs/bpf/scitagd")
    assert sorted(os.listdir(pins)) == ["config", "flows", "marked", "unmarked"]
    assert {os.stat(os.path.join(pins, p)).st_uid for p in os.listdir(pins)} == {site.uid}

    lab = site.lab
    cap = lab.capture()
    srv = {p: lab.server(p) for p in (5001, 5002, 5003)}
    # 1. The watcher (sock_ops in the child cgroup) tags a connection in the kernel.
    r = subprocess.run(site.in_cgroup(*TOOLS, "tcp-client", B_ADDR, "5001", "40501", str(2 * MB)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # 2. The named pipe: user space writes the pinned map.
    d.send(f"start tcp {A_ADDR} 40600 {B_ADDR} 5002 2 16", f"start tcp {A_ADDR} 40601 {B_ADDR} 5003 4 2")
    d.wait_log("src=[fd5c:17::1]:40601")
    lab.tool(lab.a, "tcp-client", B_ADDR, "5002", "40600", str(2 * MB))
    # 3. sock_diag samples a connection that stays open for a second.
    hold = lab.start(lab.a, [sys.executable, "-c", HOLD, B_ADDR, "5003", "40601", "20"])
    deadline = time.monotonic() + 10
    sampled: Dict[str, float] = {}
    while time.monotonic() < deadline and not sampled:
        time.sleep(0.2)
        sampled = {k: v for k, v in d.metrics().items()
                   if k.startswith("flow_tcp_bytes_acked_total") and 'flavour="netlink"' in k and v > 0}
    assert hold.wait(20) == 0
    # seen once in ~15 runs (2026-11-28, full suite), not reproduced under load: say what the
    # enricher saw and what the daemon logged, should it happen again
    assert sampled, ("no sock_diag sample as the unprivileged user; enricher: "
                     + str({k: v for k, v in d.metrics().items() if k.startswith("scitagd_enricher")})
                     + "; log tail:\n" + d.text()[-3000:])
    for p in srv.values():
        lab.result(p)
    pkts = cap.stop()

    watched = sent_by_a(pkts, 40501)
    # Tagged at ESTABLISHED, in the kernel: everything after the SYN carries the tag.
    assert len(watched) >= 10 and {decode_flow_label(p.label) for p in watched[1:]} == {(3, 14)}
    piped = sent_by_a(pkts, 40600)
    assert len(piped) >= 10 and {decode_flow_label(p.label) for p in piped} == {(2, 16)}
    # The per-CPU counter maps, read for /metrics.
    m = d.metrics()
    marked = {k: v for k, v in m.items() if k.startswith("scitagd_marked_packets_total")}
    assert sum(marked.values()) >= len(watched) + len(piped), marked
    # With CAP_PERFMON the verifier inserts no speculation barriers.
    ids = [int(x) for x in re.findall(r"prog_id=(\d+)", d.text())]
    ids += cgroup_prog_ids(site.cgroup)
    assert ids and all(nospec_barriers(i) == 0 for i in ids)

    assert d.stop() == 0, d.text()
    assert lab.a.exec("tc", "filter", "show", "dev", "a0", "egress").stdout.strip() == ""
    assert cgroup_prog_ids(site.cgroup) == []
    assert "Traceback" not in d.text()


# --- each capability dropped ----------------------------------------------------------------

# (feature, capability) -> what the daemon says without it
FAILS = {
    ("marker", "bpf"): r"scitagd: error: backends\.marker: cannot start: \[Errno 1\] load marker\.bpf\.o .*"
                       r"Couldn't load trivial BPF program.*EPERM \(Operation not permitted\)",
    ("marker", "net_admin"): r"scitagd: error: backends\.marker: cannot start: \[Errno 1\] load marker\.bpf\.o "
                             r".*prog 'scitagd_eth': BPF program load failed: Operation not permitted",
    ("watcher", "bpf"): r"scitagd: error: plugins\.watcher: cannot start: \[Errno 1\] load watcher .*"
                        r"EPERM \(Operation not permitted\)",
    ("watcher", "net_admin"): r"scitagd: error: plugins\.watcher: cannot start: \[Errno 1\] load watcher "
                              r".*prog 'scitagd_watch': BPF program load failed: Operation not permitted",
}


@pytest.mark.parametrize("feature", ["marker", "watcher"])
@pytest.mark.parametrize("dropped", CAPS)
def test_each_capability_is_needed(site: Site, dropped: str, feature: str) -> None:
    caps = [c for c in CAPS if c != dropped]
    d = site.daemon(caps, site.config(marker=feature == "marker", watcher=feature == "watcher"))
    if (feature, dropped) in FAILS:
        rc = d.wait_exit()
        text = d.text()
        assert rc == 2, text
        assert re.search(FAILS[(feature, dropped)], text), text
        assert "Traceback" not in text
        return
    # CAP_PERFMON: the programs load, but as unprivileged code (Spectre v1/v4 mitigations):
    # speculation barriers all through the per-packet path (older verifiers may reject parts
    # of it instead).
    assert dropped == "perfmon"
    text = d.wait_log("scitagd.daemon started")
    ids = ([int(x) for x in re.findall(r"prog_id=(\d+)", text)] if feature == "marker"
           else cgroup_prog_ids(site.cgroup))
    assert ids
    barriers = {i: nospec_barriers(i) for i in ids}
    assert all(n >= 20 for n in barriers.values()), barriers
    assert d.stop() == 0


def test_sock_diag_needs_no_capability(site: Site) -> None:
    """enrichers.netlink (and the watcher's polling fallback) read tcp_info through sock_diag,
    which the kernel answers for any user: sampled here with an empty capability set."""
    conf = site.tmp / "netlink-only.yaml"
    conf.write_text("plugins:\n  namedPipe: {pipePath: /run/scitagd/flowd}\n"
                    "enrichers: {period: 50, netlink: {}}\n"
                    "backends:\n  prometheus: {bindAddress: 127.0.0.1, port: 9464}\n")
    d = site.daemon([], conf)
    d.wait_log("scitagd.daemon started")
    assert int(proc_status(d.proc.pid)["CapEff"], 16) == 0
    lab = site.lab
    srv = lab.server(5003)
    d.send(f"start tcp {A_ADDR} 40601 {B_ADDR} 5003 4 2")
    d.wait_log("flow start")
    hold = lab.start(lab.a, [sys.executable, "-c", HOLD, B_ADDR, "5003", "40601", "20"])
    deadline = time.monotonic() + 10
    sampled: Dict[str, float] = {}
    while time.monotonic() < deadline and not sampled:
        time.sleep(0.2)
        sampled = {k: v for k, v in d.metrics().items()
                   if k.startswith("flow_tcp_bytes_acked_total") and 'flavour="netlink"' in k and v > 0}
    assert hold.wait(20) == 0 and sampled, d.text()
    lab.result(srv)
    assert d.stop() == 0


# --- what the unit's file-system directives are for ------------------------------------------

def test_bpffs_as_systemd_mounts_it_needs_the_bound_pin_directory(site: Site) -> None:
    """bpffs is mode 0700 root: without TemporaryFileSystem=+BindPaths= the user cannot even
    reach its pin directory (the alternative would be CAP_DAC_OVERRIDE)."""
    unit = parse_unit()
    for k in ("Service.TemporaryFileSystem", "Service.BindPaths"):
        unit.pop(k)
    d = site.daemon(CAPS, site.config(watcher=False), unit=unit)
    assert d.wait_exit() == 2
    assert "backends.marker: cannot start: [Errno 13] Permission denied: '/sys/fs/bpf/scitagd'" in d.text()


def test_pins_left_by_root_are_handed_over(site: Site) -> None:
    """Maps a root-run scitagd pinned are 0600 root: the unit's ExecStartPre=+ chown hands them
    to the user; without it the load fails."""
    leave = ("/usr/bin/python3 -c 'import sys; sys.path.insert(0, \"/run/scitagd-code/src\"); "
             "from pathlib import Path; from scitagd.bpf.loader import KernelMarker; "
             "KernelMarker(pin_dir=Path(\"/sys/fs/bpf/scitagd\")).load()'")
    # The code is bound in after the setup lines run: load from the repository instead.
    leave = leave.replace("/run/scitagd-code/src", str(REPO / "src"))
    unit = parse_unit()
    pre = unit.pop("Service.ExecStartPre")
    unit["Service.ExecStartPre"] = [p for p in pre if "chown" not in p]
    d = site.daemon(CAPS, site.config(watcher=False), unit=unit, setup=[leave])
    assert d.wait_exit() == 2
    assert re.search(r"couldn't retrieve pinned map '/sys/fs/bpf/scitagd/\w+': Permission denied", d.text())

    d = site.daemon(CAPS, site.config(watcher=False), setup=[leave])
    d.wait_log("scitagd.daemon started")
    assert d.stop() == 0


def test_bpffs_missing_would_need_cap_sys_admin(site: Site) -> None:
    """systemd mounts bpffs at boot; were it missing, mounting it needs CAP_SYS_ADMIN, which the
    unit deliberately lacks: a clear error, not a silent fallback."""
    d = site.daemon(CAPS, site.config(watcher=False), bpffs="missing")
    assert d.wait_exit() == 2
    assert ("backends.marker: cannot start: [Errno 1] cannot mount bpffs on /sys/fs/bpf: "
            "Operation not permitted") in d.text()


def test_sandbox_is_the_unit(site: Site, tmp_path: Path) -> None:
    """The emulation itself: read-only system, the unit's writable paths, no home, W^X."""
    probe = tmp_path / "probe.py"
    probe.write_text("""
import ctypes, errno, json, mmap, os
out = {}
for p in ("/etc/probe", "/usr/probe", "/var/probe", "/run/probe", "/sys/fs/cgroup/probe",
          "/run/scitagd/probe", "/var/lib/scitagd/probe", "/var/cache/scitagd/probe", "/tmp/probe",
          "/sys/fs/bpf/probe", "/sys/fs/bpf/scitagd/probe"):
    try:
        os.mkdir(p); os.rmdir(p); out[p] = "rw"
    except OSError as e:
        out[p] = errno.errorcode[e.errno]
out["/root"] = os.listdir("/root") if os.path.isdir("/root") else None
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC); out["wx"] = "allowed"
except OSError as e:
    out["wx"] = errno.errorcode[e.errno]
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace(2, os.getppid(), None, None)  # PTRACE_PEEKDATA of a process not traced: ESRCH, or the filter's EPERM
out["ptrace"] = errno.errorcode[ctypes.get_errno()]
import socket
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW); out["af_packet"] = "allowed"
except OSError as e:
    out["af_packet"] = errno.errorcode[e.errno]
cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
out["callback"] = ctypes.cast(cb, ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int))(41)
print(json.dumps(out))
""")
    sb = Sandbox(site.uid, site.uid, CAPS, files={"probe.py": probe})
    r = subprocess.run(sb.argv(site.lab.a.name, ["/usr/bin/python3", "/run/scitagd-code/probe.py"]),
                       capture_output=True, text=True, env=sb.env(), timeout=30)
    assert r.returncode == 0, r.stderr
    import json

    got = json.loads(r.stdout)
    for p in ("/etc/probe", "/usr/probe", "/var/probe", "/run/probe", "/sys/fs/cgroup/probe", "/sys/fs/bpf/probe"):
        assert got[p] == "EROFS", (p, got[p])
    for p in ("/run/scitagd/probe", "/var/lib/scitagd/probe", "/var/cache/scitagd/probe", "/tmp/probe",
              "/sys/fs/bpf/scitagd/probe"):
        assert got[p] == "rw", (p, got[p])
    assert got["/root"] == []
    assert got["wx"] == "EACCES" and got["callback"] == 42
    if seccomp_missing() is None:  # SystemCallFilter=@system-service bpf, RestrictAddressFamilies=
        assert got["ptrace"] == "EPERM" and got["af_packet"] == "EAFNOSUPPORT", got
    else:
        assert got["ptrace"] == "ESRCH" and got["af_packet"] == "EPERM", got


# --- what works without CAP_SYS_ADMIN: stop and restart after kill -9 ---------------------------------------------

def test_stop_detaches_from_a_clsact_it_did_not_create(site: Site) -> None:
    site.lab.a.exec("tc", "qdisc", "add", "dev", "a0", "clsact")
    d = site.daemon(CAPS, site.config(watcher=False))
    d.wait_log("attached interface=a0")
    assert d.stop() == 0
    assert site.lab.a.exec("tc", "filter", "show", "dev", "a0", "egress").stdout.strip() == ""


def test_restart_after_kill_replaces_the_watcher(site: Site) -> None:
    d = site.daemon(CAPS, site.config(marker=False))
    d.wait_log("scitagd.daemon started")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    d = site.daemon(CAPS, site.config(marker=False))
    d.wait_log("scitagd.daemon started")
    try:
        assert len(cgroup_prog_ids(site.cgroup)) == 1
    finally:
        d.stop()
        from scitagd.bpf import libbpf as lb

        L = lb.lib()  # the killed daemon's program: detach it here, as root
        fd = os.open(site.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        for pid in cgroup_prog_ids(site.cgroup):
            pfd = L.bpf_prog_get_fd_by_id(pid)
            L.bpf_prog_detach2(pfd, fd, 3)
            os.close(pfd)
        os.close(fd)


# --- the collector: no capability at all ------------------------------------------------------

def test_collector_runs_without_capabilities(site: Site, tmp_path: Path) -> None:
    unit = parse_unit(COLLECTOR_UNIT)
    assert not unit.get("Service.AmbientCapabilities") and unit["Service.CapabilityBoundingSet"] == []
    conf = tmp_path / "collector.yaml"
    conf.write_text("collector:\n  store: {flushInterval: 0.05}\n")
    sb = Sandbox(site.uid, site.uid, [], files={"collector.yaml": conf}, unit=unit)
    log = tmp_path / "collector.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(sb.argv(site.lab.a.name, ["/usr/bin/python3", "-m", "scitagd", "collector",
                                                       "--config", "/run/scitagd-code/collector.yaml"]),
                             stdout=out, stderr=subprocess.STDOUT, env=sb.env())
    site.lab.procs.append(p)
    get = ("import sys,urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8088'+sys.argv[1])"
           ".read().decode())")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert p.poll() is None, log.read_text()
        if site.lab.a.exec(sys.executable, "-c", get, "/healthz", check=False).returncode == 0:
            break
        time.sleep(0.1)
    assert int(proc_status(p.pid)["CapEff"], 16) == 0
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # active by its own time
    ff = ('<134>1 - gen scitagd - firefly-json - {"version":1,"flow-lifecycle":{"state":"start",'
          f'"start-time":"{now}"}},"flow-id":{{"afi":"ipv6","src-ip":"fd5c:17::2",'
          '"dst-ip":"fd5c:17::1","protocol":"tcp","src-port":2811,"dst-port":40000},'
          '"context":{"experiment-id":2,"activity-id":1}}')
    send = "import socket,sys;socket.socket(socket.AF_INET6,socket.SOCK_DGRAM).sendto(sys.argv[1].encode(),('fd5c:17::1',10514))"
    site.lab.b.exec(sys.executable, "-c", send, ff)
    deadline = time.monotonic() + 10
    body = ""
    while time.monotonic() < deadline and "2811" not in body:
        time.sleep(0.1)
        body = site.lab.a.exec(sys.executable, "-c", get, "/api/v1/active").stdout
    assert "2811" in body, log.read_text()
    assert os.path.exists(f"/proc/{p.pid}/root/var/lib/scitagd/collector.sqlite")
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0, log.read_text()


# --- MemoryDenyWriteExecute= as systemd < 256 enforces it (seccomp) -------------------------------

@pytest.mark.skipif(shutil.which("strace") is None, reason="strace missing")
def test_no_call_that_seccomp_write_execute_filter_refuses(site: Site, tmp_path: Path) -> None:
    """EL9's systemd enforces MemoryDenyWriteExecute= with seccomp, not PR_SET_MDWE: it refuses
    mmap(PROT_WRITE|PROT_EXEC), mprotect/pkey_mprotect(PROT_EXEC) and shmat(SHM_EXEC) with
    EPERM. Traced through a run with the marker, the watcher's ring buffer and libbpf's print
    callback, the only such call must be libffi's W+X probe, refused here and handled (it falls
    back to a memfd mapped twice, which both variants allow)."""
    trace = tmp_path / "strace.txt"
    sb = Sandbox(site.uid, site.uid, CAPS, files={"scitagd.yaml": site.config()})
    argv = sb.argv(site.lab.a.name, ["/usr/bin/python3", "-m", "scitagd", "run", "--config",
                                     "/run/scitagd-code/scitagd.yaml"])
    log = tmp_path / "traced.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(["strace", "-f", "-qq", "-o", str(trace), "-e",
                              "trace=mmap,mprotect,pkey_mprotect,shmat", *argv],
                             stdout=out, stderr=subprocess.STDOUT, env=sb.env())
    site.lab.procs.append(p)
    deadline = time.monotonic() + 60
    while "scitagd.daemon started" not in log.read_text(errors="replace"):
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    pid = int(re.findall(r"started pid=(\d+)", log.read_text())[0])  # strace's tracee, not strace
    try:
        srv = site.lab.server(5001)
        r = subprocess.run(site.in_cgroup(*TOOLS, "tcp-client", B_ADDR, "5001", "40502", "1000"),
                           capture_output=True, text=True)  # through the ring buffer callback
        site.lab.result(srv)
        wait_for(lambda: "flow end source=watcher" in log.read_text(), 10)
        os.kill(pid, signal.SIGTERM)
        assert p.wait(30) == 0, log.read_text()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    calls = trace.read_text().splitlines()
    wx = [c for c in calls if re.search(r"mmap\(.*PROT_WRITE\|PROT_EXEC", c)]
    exec_gain = [c for c in calls if re.search(r"(mprotect|pkey_mprotect)\(.*PROT_EXEC", c)]
    shm = [c for c in calls if "SHM_EXEC" in c]
    assert exec_gain == [] and shm == [], exec_gain + shm
    assert wx and all(c.endswith("= -1 EACCES (Permission denied)") for c in wx), wx
    assert r.returncode == 0
