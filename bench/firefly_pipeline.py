# SPDX-License-Identifier: Apache-2.0
"""Firefly pipeline benchmark: UDP firefly in -> flow table -> firefly out, scitagd vs python flowd.

Each daemon runs pinned to one core (CPU 1); the load generator and the receiver run in their
own processes on the other core (CPU 0). Every figure is the median of --runs runs, scitagd and
flowd interleaved in the same run. flowd 1.1.7 (pip `scitags==1.1.7`) is set up in its own venv
with --setup; its config is Python (PLUGIN='firefly', BACKEND='udp_firefly', FLOW_MAP_API= the
registry served here on loopback). Only loopback addresses are used.

  python bench/firefly_pipeline.py --setup            # once: builds bench/.flowd-venv
  python bench/firefly_pipeline.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).parent))
from udp_tools import make_firefly, receiver, sender

from scitagd.lab.util import serve_json

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SCITAGD_SHARED", REPO.parent / "shared"))
FLOWD_VENV = REPO / "bench" / ".flowd-venv"
DAEMON_CPU, LOAD_CPU = 1, 0
FIREFLY_PORT = 10514  # flowd always sends to the peer's port 10514; scitagd is set the same
PEERS = {"scitagd": "127.0.0.78", "flowd": "127.0.0.77"}


def setup_flowd() -> Path:
    py = FLOWD_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FLOWD_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "scitags==1.1.7", "pyroute2"],
                       check=True)
    return py


def flowd_script(py: Path) -> Path:
    out = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return Path(out) / "usr" / "sbin" / "flowd"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_registry() -> str:
    return serve_json((SHARED / "spec" / "registry-api.json").read_bytes())[0]


class Daemon:
    def __init__(self, kind: str, tmp: Path, registry_url: str, flowd_py: Optional[Path]) -> None:
        self.kind = kind
        self.port = free_udp_port()
        self.api = free_tcp_port()
        self.log = open(tmp / f"{kind}.log", "w")
        pin = lambda: os.sched_setaffinity(0, {DAEMON_CPU})  # noqa: E731
        if kind == "scitagd":
            conf = tmp / "scitagd.yaml"
            conf.write_text(f"""
plugins:
  firefly: {{bindAddress: 127.0.0.1, bindPort: {self.port}}}
  api: {{bindPort: {self.api}}}
backends:
  firefly: {{destinationPort: {FIREFLY_PORT}}}
""")
            cmd = [sys.executable, "-m", "scitagd", "run", "--config", str(conf)]
        else:
            assert flowd_py is not None
            conf = tmp / "flowd.cfg"
            conf.write_text(f"PLUGIN = 'firefly'\nBACKEND = 'udp_firefly'\n"
                            f"FLOW_MAP_API = '{registry_url}'\n"
                            f"FIREFLY_LISTENER_HOST = '127.0.0.1'\nFIREFLY_LISTENER_PORT = {self.port}\n")
            cmd = [str(flowd_py), str(flowd_script(flowd_py)), "-c", str(conf)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=pin,
                                     cwd=tmp)
        self._wait_ready()

    def _wait_ready(self) -> None:
        # Ready when a start firefly comes back out at the peer.
        peer = PEERS[self.kind]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
            r.bind((peer, FIREFLY_PORT))
            r.settimeout(0.2)
            probe = make_firefly(10_000_000, "start", "127.0.0.1", peer)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(100):
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"{self.kind} exited: see its log")
                    s.sendto(probe, ("127.0.0.1", self.port))
                    try:
                        r.recv(4096)
                    except socket.timeout:
                        continue
                    return
        raise RuntimeError(f"{self.kind} did not answer")

    def rss_kb(self) -> int:
        pids = [self.proc.pid, *_children(self.proc.pid)]
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            for pid in _children(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        if self.kind == "flowd":
            pidfile = Path("/var/run/flowd.pid")
            try:
                if pidfile.read_text().strip() == str(self.proc.pid):
                    pidfile.unlink()
            except OSError:
                pass


def _children(pid: int) -> List[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int(Path(p, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(p.name))
                out.extend(_children(int(p.name)))
    return out


def run_load(d: Daemon, rate: float, flows: int, seq0: int, idle: float = 1.5) -> Dict[str, float]:
    """Send `flows` start+end pairs at `rate` datagrams/s; count and time what the peer gets."""
    peer = PEERS[d.kind]
    grams: List[bytes] = []
    keys: List[Tuple[int, bytes]] = []
    for i in range(flows):
        seq = seq0 + i
        for state in ("start", "end"):
            grams.append(make_firefly(seq, state, "127.0.0.1", peer))
            keys.append((seq, state.encode()))
    ctx = mp.get_context("spawn")
    r_ready, r_ready_w = ctx.Pipe(False)
    r_out, r_out_w = ctx.Pipe(False)
    rp = ctx.Process(target=receiver, args=((peer, FIREFLY_PORT), r_ready_w, r_out_w, LOAD_CPU, idle))
    rp.start()
    r_ready.recv()
    s_out, s_out_w = ctx.Pipe(False)
    sp = ctx.Process(target=sender, args=(("127.0.0.1", d.port), grams, rate, s_out_w, LOAD_CPU))
    sp.start()
    stamps, elapsed = s_out.recv()
    got = r_out.recv()
    sp.join()
    rp.join()
    # Only this step's datagrams count: a backlog from the step before may still be arriving.
    lat = [(got[k] - t) / 1e6 for k, t in zip(keys, stamps) if k in got]
    lat.sort()
    n = len(grams)
    return {
        "offered_rate": n / elapsed,
        "sent": n,
        "received": len(lat),
        "loss_pct": 100.0 * (n - len(lat)) / n,
        "p50_ms": lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": lat[int(len(lat) * 0.99)] if lat else float("nan"),
    }


def fill_flows(d: Daemon, n: int, seq0: int, rate: float) -> int:
    """Start n flows (no ends) and return the daemon's RSS in kB once they are in."""
    run_load_starts(d, n, seq0, rate)
    if d.kind == "scitagd":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{d.api}/healthz") as r:
                active = json.loads(r.read())["active_flows"]
            if active >= n:
                break
            time.sleep(0.2)
        print(f"    scitagd active flows: {active}", flush=True)
    time.sleep(1.0)
    return d.rss_kb()


def run_load_starts(d: Daemon, n: int, seq0: int, rate: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.monotonic()
        for i in range(n):
            s.sendto(make_firefly(seq0 + i, "start", "127.0.0.1", PEERS[d.kind]), ("127.0.0.1", d.port))
            ahead = (i + 1) / rate - (time.monotonic() - t0)
            if ahead > 0.001:
                time.sleep(ahead)


def median(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", action="store_true", help="create the flowd venv and exit")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rates", default="4000,8000,16000,32000")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per rate step")
    ap.add_argument("--latency-rate", type=float, default=1000.0)
    ap.add_argument("--latency-seconds", type=float, default=5.0)
    ap.add_argument("--rss-flows", type=int, default=100_000)
    ap.add_argument("--only", choices=["scitagd", "flowd"])
    ap.add_argument("--json", type=Path, help="also write raw results here")
    a = ap.parse_args()
    if a.setup:
        print(setup_flowd())
        return 0
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("needs 2 cores (daemon on one, load on the other)")
        return 1
    flowd_py = None if a.only == "scitagd" else setup_flowd()
    kinds = [a.only] if a.only else ["scitagd", "flowd"]
    rates = [float(r) for r in a.rates.split(",")]
    reg_url = serve_registry()
    results: Dict[str, Dict[str, List[Dict[str, float]]]] = {k: {} for k in kinds}
    rss: Dict[str, List[int]] = {k: [] for k in kinds}
    for run in range(a.runs):
        for kind in kinds:  # interleaved: every run measures both
            with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
                d = Daemon(kind, Path(tmp), reg_url, flowd_py)
                try:
                    seq = 0
                    flows = int(a.latency_rate * a.latency_seconds / 2)
                    r = run_load(d, a.latency_rate, flows, seq)
                    seq += flows
                    results[kind].setdefault("latency", []).append(r)
                    print(f"run {run} {kind:8} latency @{a.latency_rate:.0f}/s: p50 {r['p50_ms']:.3f} ms "
                          f"p99 {r['p99_ms']:.3f} ms loss {r['loss_pct']:.2f}%", flush=True)
                    for rate in rates:
                        flows = int(rate * a.duration / 2)
                        r = run_load(d, rate, flows, seq)
                        seq += flows
                        results[kind].setdefault(f"{rate:.0f}", []).append(r)
                        print(f"run {run} {kind:8} offered {r['offered_rate']:8.0f}/s: received "
                              f"{r['received']}/{r['sent']} loss {r['loss_pct']:6.2f}% "
                              f"p99 {r['p99_ms']:.2f} ms", flush=True)
                    if a.rss_flows:
                        kb = fill_flows(d, a.rss_flows, 20_000_000, 10_000)
                        rss[kind].append(kb)
                        print(f"run {run} {kind:8} RSS with {a.rss_flows} flows started: "
                              f"{kb / 1024:.1f} MB", flush=True)
                finally:
                    d.stop()
    print("\n== medians over", a.runs, "runs")
    print(f"{'':24}" + "".join(f"{k:>22}" for k in kinds))
    lat = {k: results[k]["latency"] for k in kinds}
    print(f"{'p50 @1000/s (ms)':24}" + "".join(f"{median([x['p50_ms'] for x in lat[k]]):22.3f}" for k in kinds))
    print(f"{'p99 @1000/s (ms)':24}" + "".join(f"{median([x['p99_ms'] for x in lat[k]]):22.3f}" for k in kinds))
    for rate in rates:
        key = f"{rate:.0f}"
        print(f"{'loss % @' + key + '/s':24}" + "".join(
            f"{median([x['loss_pct'] for x in results[k][key]]):22.2f}" for k in kinds))
    for rate in rates:
        key = f"{rate:.0f}"
        print(f"{'delivered/s @' + key + '/s':24}" + "".join(
            f"{median([x['received'] / x['sent'] * x['offered_rate'] for x in results[k][key]]):22.0f}"
            for k in kinds))
    if a.rss_flows:
        print(f"{'RSS MB, ' + str(a.rss_flows) + ' flows':24}" + "".join(
            f"{median([v / 1024 for v in rss[k]]):22.1f}" for k in kinds))
    if len(kinds) == 2:
        s, f = (median([x["p99_ms"] for x in lat[k]]) for k in kinds)
        print(f"\np99 latency ratio flowd/scitagd at {a.latency_rate:.0f}/s: {f / s:.1f}x")
        top = f"{rates[-1]:.0f}"
        ds, df = (median([x["received"] / x["sent"] * x["offered_rate"] for x in results[k][top]])
                  for k in kinds)
        print(f"delivered-rate ratio scitagd/flowd at {top}/s offered: {ds / df:.1f}x")
    if a.json:
        a.json.write_text(json.dumps({"results": results, "rss_kb": rss}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
