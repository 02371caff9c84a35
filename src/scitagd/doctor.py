# SPDX-License-Identifier: Apache-2.0
"""`scitagd doctor [--collector] [--config FILE]`: is this host ready for what the config asks?
One line per check, PASS / WARN / FAIL, each problem with its fix; exit status 1 when something
fails.

It reads, never changes: no program is loaded, no filter attached, nothing bound but for the
moment of the bind test.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .collector.conf import CollectorFile
from .confbase import RegistryConfig
from .config import Config

__all__ = ["CAPABILITIES", "Check", "collector_checks", "main", "run_checks"]

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

# capability name -> bit (linux/capability.h)
CAP_BITS = {"CAP_DAC_OVERRIDE": 1, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
            "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}
# what each feature needs (tests/site/test_capabilities.py shows each one necessary): without
# CAP_BPF or CAP_NET_ADMIN the program does not load; without CAP_PERFMON it loads with Spectre
# barriers that double its cost per packet (bench/marker_perfmon.py), so that one is a warning
CAPABILITIES: Dict[str, Tuple[str, ...]] = {
    "backends.marker": ("CAP_BPF", "CAP_NET_ADMIN"),
    "plugins.watcher": ("CAP_BPF", "CAP_NET_ADMIN"),
}
RECOMMENDED: Dict[str, Tuple[str, ...]] = {"backends.marker": ("CAP_PERFMON",), "plugins.watcher": ("CAP_PERFMON",)}


@dataclass
class Check:
    status: str
    what: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.what}: {self.detail}" + (f"  -> {self.fix}" if self.fix else "")


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def kernel() -> List[Check]:
    rel = platform.release()
    nums = [int(x) for x in rel.split("-")[0].split(".")[:2] if x.isdigit()]
    out = []
    if len(nums) == 2 and tuple(nums) >= (5, 8):
        out.append(Check(PASS, "kernel", f"{rel} (5.8+: CAP_BPF, ring buffers, sock_ops storage)"))
    else:
        out.append(Check(FAIL, "kernel", f"{rel}: older than 5.8", "EL9's 5.14 or newer"))
    if Path("/sys/kernel/btf/vmlinux").exists():
        out.append(Check(PASS, "BTF", "/sys/kernel/btf/vmlinux present"))
    else:
        out.append(Check(WARN, "BTF", "no /sys/kernel/btf/vmlinux", "a kernel built with CONFIG_DEBUG_INFO_BTF "
                         "(the shipped objects need no CO-RE relocation today, so this is a warning)"))
    return out


def bpffs() -> Check:
    mounts = _read("/proc/mounts") or ""
    if any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in mounts.splitlines() if len(line.split()) > 2):
        return Check(PASS, "bpffs", "mounted on /sys/fs/bpf")
    return Check(WARN, "bpffs", "not mounted on /sys/fs/bpf (scitagd mounts it when it has the right)",
                 "mount -t bpf bpf /sys/fs/bpf (systemd does at boot)")


def cgroup(path: str) -> Check:
    for p in (path, os.path.join(path, "unified")):
        if os.path.exists(os.path.join(p, "cgroup.controllers")):
            return Check(PASS, "cgroup v2", f"at {p}")
    return Check(FAIL, "cgroup v2", f"no cgroup v2 hierarchy at {path} (nor {path}/unified)",
                 "boot with systemd.unified_cgroup_hierarchy=1 (EL9's default), or set plugins.watcher.cgroupPath")


def libbpf() -> Check:
    try:
        from .bpf import libbpf as lb

        L = lb.lib()
        return Check(PASS, "libbpf", f"{L.libbpf_major_version()}.{L.libbpf_minor_version()}")
    except Exception as e:  # LibbpfMissing carries the package to install
        return Check(FAIL, "libbpf", str(e), "dnf install libbpf / apt-get install libbpf1")


def capabilities(needed: Dict[str, Tuple[str, ...]]) -> List[Check]:
    status = _read("/proc/self/status") or ""
    eff = next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapEff:")), 0)
    have = {name for name, bit in CAP_BITS.items() if eff >> bit & 1}
    out = []
    for feature, caps in needed.items():
        missing = [c for c in caps if c not in have]
        nice = [c for c in RECOMMENDED.get(feature, ()) if c not in have]
        every = " ".join((*caps, *RECOMMENDED.get(feature, ())))
        if missing:
            out.append(Check(FAIL, f"capabilities for {feature}", f"missing {', '.join(missing)}",
                             f"run as root, or with AmbientCapabilities={every} (the shipped unit)"))
        elif nice:
            out.append(Check(WARN, f"capabilities for {feature}", f"missing {', '.join(nice)}: the eBPF programs "
                             "load with Spectre barriers, about twice the cost per packet",
                             f"AmbientCapabilities={every}"))
        elif caps:
            out.append(Check(PASS, f"capabilities for {feature}", ", ".join((*caps, *RECOMMENDED.get(feature, ())))))
    return out


def interfaces(conf: Config) -> List[Check]:
    m = conf.backends.marker
    if m is None:
        return []
    from .sinks.marker import global_ipv6_interfaces

    names = list(m.target_interfaces) + ([n for n in global_ipv6_interfaces() if n not in m.target_interfaces]
                                         if m.discover_interfaces else [])
    present = {name for _, name in socket.if_nameindex()}
    room = {"label": 0, "hopByHop": 8, "destination": 8, "hopByHopDestination": 16}[m.marking_strategy]
    out = []
    for name in names:
        if name not in present:
            out.append(Check(WARN, f"interface {name}", "not present now (attached when it appears)",
                             "check backends.marker.targetInterfaces"))
            continue
        mtu = int(_read(f"/sys/class/net/{name}/mtu") or 0) if Path(f"/sys/class/net/{name}").exists() else 0
        detail = [f"mtu {mtu}" if mtu else "mtu unknown"]
        status, fix = PASS, ""
        try:
            from .bpf import loader

            idx = socket.if_nametoindex(name)
            ours = loader.query(idx, m.tc_priority)
            detail.append(f"our filter {'attached (prog ' + str(ours) + ')' if ours else 'not attached'}")
            others = loader.other_filters(idx, m.tc_priority)
            if others:
                detail.append(f"{others} other tc filter(s) on its clsact")
                status, fix = WARN, "other tools' filters run after ours (we pass every packet on); check their order"
        except Exception as e:  # no privileges to query tc, no libbpf: say so, not fail the whole run
            detail.append(f"tc state unknown ({e})")
        if room and mtu and mtu < 1280 + room:
            status, fix = FAIL, f"an MTU under {1280 + room} leaves no room for the {room}-byte extension header"
        elif room:
            detail.append(f"extension headers take {room} bytes: a packet over {mtu - room} bytes leaves unmarked "
                          "(counted as reason=mtu) unless TCP segments for it")
        out.append(Check(status, f"interface {name}", "; ".join(detail), fix))
    return out


def sysctls(conf: Config) -> List[Check]:
    out = []
    for key, good, note in (("net/ipv6/auto_flowlabels", None, "labels of unmarked flows (kernel's own)"),
                            ("net/ipv6/flowlabel_reflect", None, "whether replies reflect a peer's label"),
                            ("net/ipv6/flowlabel_state_ranges", "0", "1 reserves labels with bit 19 set for "
                             "the kernel's own: scitagd's entropy uses that bit")):
        v = _read(f"/proc/sys/{key}")
        name = key.replace("/", ".")
        if v is None:
            continue
        if good is not None and v != good:
            out.append(Check(WARN, name, f"{v}: {note}", f"sysctl -w {name}={good}"))
        else:
            out.append(Check(PASS, name, f"{v} ({note})"))
    if conf.plugins.firefly is not None:
        out += receive_buffers([("plugins.firefly.receiveBuffer", conf.plugins.firefly.receive_buffer)])
    return out


def receive_buffers(buffers: List[Tuple[str, int]]) -> List[Check]:
    """net.core.rmem_max against each configured UDP receive buffer."""
    out: List[Check] = []
    rmem = _read("/proc/sys/net/core/rmem_max")
    if rmem is not None:
        for key, want in buffers:
            if int(rmem) < want:
                out.append(Check(WARN, "net.core.rmem_max", f"{rmem} is below {key} ({want}): the kernel caps the "
                                 "receive buffer (bursts are dropped sooner) unless scitagd has CAP_NET_ADMIN",
                                 f"sysctl -w net.core.rmem_max={want} (and in /etc/sysctl.d/)"))
            else:
                out.append(Check(PASS, "net.core.rmem_max", f"{rmem} >= {key} ({want})"))
    return out


def registry_cache(r: RegistryConfig) -> List[Check]:
    if not r.url:
        return [Check(PASS, "registry", "the bundled snapshot (no registry.url)")]
    p = Path(r.cache_file)
    if not p.exists():
        return [Check(WARN, "registry", f"no cache at {p} yet (fetched from {r.url} at start)",
                      "scitagd registry --config FILE --refresh")]
    age = time.time() - p.stat().st_mtime
    status = PASS if age < 3 * r.refresh_interval else WARN
    return [Check(status, "registry", f"cache {p} is {age / 3600:.1f} h old",
                  "" if status == PASS else f"refreshes failing? check {r.url}")]


def listeners(conf: Config) -> List[Check]:
    wanted: List[Tuple[str, str, int, int]] = []  # what, address, port, socket type
    p, b = conf.plugins, conf.backends
    if p.api is not None:
        wanted.append(("plugins.api", p.api.bind_address, p.api.bind_port, socket.SOCK_STREAM))
    if p.firefly is not None:
        wanted += [("plugins.firefly", a, p.firefly.bind_port, socket.SOCK_DGRAM) for a in p.firefly.addresses()]
    if b.prometheus is not None:
        wanted.append(("backends.prometheus", b.prometheus.bind_address, b.prometheus.listen_port,
                       socket.SOCK_STREAM))
    out = bindable(wanted)
    if p.namedPipe is not None:
        d = os.path.dirname(p.namedPipe.pipe_path)
        while not os.path.isdir(d) and d not in ("", "/"):  # created at start if missing: its parent must let us
            d = os.path.dirname(d)
        ok = os.access(d, os.W_OK)
        state = "writable" if ok else "not writable"
        out.append(Check(PASS if ok else FAIL, "plugins.namedPipe", f"{p.namedPipe.pipe_path}: directory {d} {state}",
                         "" if ok else "RuntimeDirectory=scitagd in the unit, or a pipePath in a writable directory"))
    return out


def bindable(wanted: List[Tuple[str, str, int, int]]) -> List[Check]:
    """(what, address, port, socket type): can each be bound now?"""
    out = []
    for what, addr, port, kind in wanted:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            with socket.socket(fam, kind) as s:
                s.bind((addr, port))
            out.append(Check(PASS, f"{what} listener", f"{addr} port {port} bindable"))
        except OSError as e:
            out.append(Check(WARN, f"{what} listener", f"{addr} port {port}: {e.strerror}",
                             "in use: is scitagd already running? else change the port"))
    return out


def collector_checks(cf: CollectorFile) -> List[Check]:
    """A collector host: receive buffers, listeners, the store's directory and disk, the registry."""
    c = cf.collector
    buffers = [("collector.udp.receiveBuffer", c.udp.receive_buffer)]
    buffers += [(f"collector.{name}.receiveBuffer", sec.receive_buffer) for name, sec in c.flow_exports()]
    wanted: List[Tuple[str, str, int, int]] = [("collector.udp", a, c.udp.port, socket.SOCK_DGRAM)
                                               for a in c.udp.bind_addresses]
    if c.syslog_tcp is not None:
        wanted.append(("collector.syslogTcp", c.syslog_tcp.bind_address, c.syslog_tcp.port, socket.SOCK_STREAM))
    wanted.append(("collector.http", c.http.bind_address, c.http.port, socket.SOCK_STREAM))
    for name, sec in c.flow_exports():
        wanted += [(f"collector.{name}", a, sec.port, socket.SOCK_DGRAM) for a in sec.bind_addresses]
    out = receive_buffers(buffers) + bindable(wanted) + store_checks(c.store.path)
    return out + registry_cache(cf.registry)


def store_checks(path: str) -> List[Check]:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        return [Check(FAIL, "collector.store", f"{d} does not exist",
                      "StateDirectory=scitagd in the unit, or create it for the collector's user")]
    if not os.access(d, os.W_OK):
        return [Check(FAIL, "collector.store", f"{d} not writable (SQLite keeps its journal beside {path})",
                      "StateDirectory=scitagd in the unit, or give the collector's user the directory")]
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    status = PASS if free >= 1 << 30 else WARN
    return [Check(status, "collector.store", f"{path}: {free / (1 << 30):.1f} GiB free in {d}",
                  "" if status == PASS else "less than 1 GiB free: retentionDays lower, or more disk")]


def collectors(conf: Config) -> List[Check]:
    f = conf.backends.firefly
    if f is None:
        return []
    out = []
    for host, port in f.collector_list():
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            out.append(Check(PASS, f"collector {host}:{port}", "resolves to " + ", ".join(
                sorted({str(i[4][0]) for i in infos}))))
        except OSError as e:
            out.append(Check(FAIL, f"collector {host}:{port}", f"does not resolve: {e}", "check DNS or the name"))
    return out


def run_checks(conf: Config) -> List[Check]:
    needed = {k: v for k, v in CAPABILITIES.items() if _configured(conf, k)}
    checks: List[Check] = []
    ebpf = any(_configured(conf, k) for k in ("backends.marker", "plugins.watcher"))
    checks += kernel()
    if ebpf:
        checks.append(bpffs())
        checks.append(libbpf())
    if _configured(conf, "plugins.watcher") or (conf.enrichers is not None and conf.enrichers.skops is not None):
        cg = conf.plugins.watcher.cgroup_path if conf.plugins.watcher is not None else "/sys/fs/cgroup"
        checks.append(cgroup(cg))
    checks += capabilities(needed)
    checks += interfaces(conf)
    checks += sysctls(conf)
    checks += registry_cache(conf.registry)
    checks += listeners(conf)
    checks += collectors(conf)
    return checks


def _configured(conf: Config, key: str) -> bool:
    section, _, name = key.partition(".")
    if section == "enrichers":
        return conf.enrichers is not None and getattr(conf.enrichers, name, None) is not None
    return getattr(getattr(conf, section), name, None) is not None


def main(conf: Config | CollectorFile, as_json: bool = False, out: Callable[[str], None] = print) -> int:
    checks = collector_checks(conf) if isinstance(conf, CollectorFile) else run_checks(conf)
    if as_json:
        out(json.dumps([asdict(c) for c in checks]))
    else:
        for c in checks:
            out(c.line())
        n = {s: sum(1 for c in checks if c.status == s) for s in (PASS, WARN, FAIL)}
        out(f"{n[PASS]} passed, {n[WARN]} warnings, {n[FAIL]} failed")
    return 1 if any(c.status == FAIL for c in checks) else 0
