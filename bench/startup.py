# SPDX-License-Identifier: Apache-2.0
"""Start-up benchmark: from exec to the first firefly relayed, scitagd vs python flowd 1.1.7.

A probe firefly is sent to the daemon's listener every millisecond from the moment the daemon
is exec'd; the time is taken when the first relayed firefly reaches the peer. Daemons run pinned
to CPU 1, the probe (sender thread and receiver) on CPU 0, in this process, which is not the
daemon's. Median of --runs starts per configuration, configurations interleaved.

  python bench/startup.py --setup          # once: python flowd in bench/.flowd-venv
  python bench/startup.py --runs 10        # as root, the marker rows run in a network namespace

Configurations:
  scitagd relay        plugins.firefly + backends.firefly (relay-ready without the marker)
  scitagd relay+http   the same plus plugins.api and backends.prometheus (aiohttp imported)
  scitagd marker       relay + backends.marker on lo, in a fresh network namespace (root only)
  flowd                PLUGIN='firefly', BACKEND='udp_firefly', FLOW_MAP_API on loopback
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).parent))
from firefly_pipeline import flowd_script, serve_registry, setup_flowd
from udp_tools import make_firefly

from scitagd.lab.util import free_port

DAEMON_CPU, PROBE_CPU = 1, 0
PEER = "127.0.0.79"
PEER_PORT = 10514  # flowd always sends to the peer's port 10514


def scitagd_config(port: int, http: bool, marker: Optional[str]) -> str:
    plugins = [f"  firefly: {{bindAddress: 127.0.0.1, bindPort: {port}}}"]
    backends = [f"  firefly: {{destinationPort: {PEER_PORT}}}"]
    if http:
        plugins.append(f"  api: {{bindPort: {free_port()}}}")
        backends.append(f"  prometheus: {{port: {free_port()}}}")
    if marker:
        backends.append(f"  marker: {{targetInterfaces: [lo], pinPath: {marker}}}")
    return "plugins:\n" + "\n".join(plugins) + "\nbackends:\n" + "\n".join(backends) + "\n"


def tree_cpu(pid: int) -> float:
    """CPU seconds run so far by a process, its threads and its descendants (schedstat: ns, not ticks).
    Load-independent beside the wall time: other work on the daemon's CPU delays it, not this."""
    parents: Dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {pid}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        grew = bool(more)
        tree |= more
    total = 0
    for p in tree:
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total / 1e9


def one_start(cmd: List[str], port: int, cwd: Path, timeout: float = 10.0) -> Tuple[float, float]:
    """Seconds from exec to the first relayed firefly at PEER:PEER_PORT, and the daemon's CPU
    seconds until then."""
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    recv.bind((PEER, PEER_PORT))
    recv.settimeout(timeout)
    probe = make_firefly(12345, "start", "127.0.0.1", PEER)
    stop = threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop.is_set():
                try:
                    s.sendto(probe, ("127.0.0.1", port))
                except OSError:
                    pass
                time.sleep(0.001)

    t = threading.Thread(target=send, daemon=True)
    log = open(cwd / "daemon.log", "ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                            preexec_fn=lambda: os.sched_setaffinity(0, {DAEMON_CPU}))
    t.start()
    try:
        recv.recv(65535)
        elapsed = time.perf_counter() - t0
        cpu = tree_cpu(proc.pid)
    finally:
        stop.set()
        t.join()
        recv.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return elapsed, cpu


def run_inner(args: argparse.Namespace) -> None:
    """Measure one configuration `args.runs` times (possibly inside a namespace) and print."""
    os.sched_setaffinity(0, {PROBE_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False, capture_output=True)
    times: List[Tuple[float, float]] = []
    for i in range(args.runs):
        port = free_port(socket.SOCK_DGRAM)
        if args.kind == "flowd":
            py = setup_flowd()
            conf = tmp / "flowd.cfg"
            conf.write_text(f"PLUGIN = 'firefly'\nBACKEND = 'udp_firefly'\nFLOW_MAP_API = '{args.registry}'\n"
                            f"FIREFLY_LISTENER_HOST = '127.0.0.1'\nFIREFLY_LISTENER_PORT = {port}\n")
            cmd = [str(py), str(flowd_script(py)), "-c", str(conf)]
        else:
            marker = f"/sys/fs/bpf/scitagd-bench-startup-{os.getpid()}-{i}" if args.kind == "marker" else None
            conf = tmp / "scitagd.yaml"
            conf.write_text(scitagd_config(port, args.kind == "relay+http", marker))
            cmd = [sys.executable, "-m", "scitagd", "run", "--config", str(conf)]
        times.append(one_start(cmd, port, tmp))
        if args.kind == "marker":
            subprocess.run(["rm", "-rf", f"/sys/fs/bpf/scitagd-bench-startup-{os.getpid()}-{i}"], check=False)
        if args.kind == "flowd":
            try:
                Path("/var/run/flowd.pid").unlink()
            except OSError:
                pass
    print(" ".join(f"{t:.4f}:{c:.4f}" for t, c in times), flush=True)


def measure(kind: str, runs: int, registry: str) -> List[Tuple[float, float]]:
    cmd = [sys.executable, __file__, "--inner", kind, "--runs", str(runs), "--registry", registry]
    if kind == "marker":
        from scitagd.lab.netlab import NetNS

        ns = NetNS("startup")
        try:
            out = subprocess.run(ns.netonly(*cmd), capture_output=True, text=True, check=True).stdout
        finally:
            ns.close()
    else:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [(float(x.split(":")[0]), float(x.split(":")[1])) for x in out.split()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", action="store_true")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--inner")
    ap.add_argument("--registry", default="")
    ap.add_argument("--only", help="comma-separated subset of: relay,relay+http,marker,flowd")
    args = ap.parse_args()
    if args.setup:
        setup_flowd()
        return 0
    if args.inner:
        args.kind = args.inner
        run_inner(args)
        return 0
    kinds = ["relay", "relay+http", "flowd"] + (["marker"] if os.geteuid() == 0 else [])
    if args.only:
        kinds = [k for k in kinds if k in args.only.split(",")]
    # A site's install is byte-compiled (pip, the RPM's %py_byte_compile): so is this tree before it is
    # timed, also where PYTHONDONTWRITEBYTECODE is set (compiling 32 modules each start costs ~80 ms)
    import compileall

    import scitagd

    compileall.compile_dir(str(Path(scitagd.__file__).parent), quiet=1)
    registry = serve_registry()
    results: Dict[str, List[Tuple[float, float]]] = {k: [] for k in kinds}
    # interleave: one start of each configuration per round
    for _ in range(args.runs):
        for k in kinds:
            results[k] += measure(k, 1, registry)
    base = statistics.median(t for t, _ in results["flowd"]) if "flowd" in results else None
    cbase = statistics.median(c for _, c in results["flowd"]) if "flowd" in results else None
    print(f"{'configuration':<20} {'median':>8} {'min':>8} {'max':>8} {'vs flowd':>9}  {'CPU':>7} {'vs flowd':>9}"
          f"   ({args.runs} starts each; CPU: the daemon's, exec to ready)")
    for k, pairs in results.items():
        v = [t for t, _ in pairs]
        med, cmed = statistics.median(v), statistics.median(c for _, c in pairs)
        ratio = f"{base / med:8.2f}x" if base and k != "flowd" else " " * 9
        cratio = f"{cbase / cmed:8.2f}x" if cbase and k != "flowd" else ""
        print(f"{('scitagd ' + k) if k != 'flowd' else 'flowd 1.1.7':<20} {med * 1000:6.0f}ms {min(v) * 1000:6.0f}ms "
              f"{max(v) * 1000:6.0f}ms {ratio}  {cmed * 1000:5.0f}ms {cratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
