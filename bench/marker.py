# SPDX-License-Identifier: Apache-2.0
"""Marker benchmarks (root): data-path cost, start-up time, event-to-map latency, map capacity.

Two namespaces joined by veth (scitagd.lab.netlab); scitagd runs in A with the marker on a0.

  1. iperf3 A -> B throughput with no program, with `label` and with `destination`,
     interleaved, --rounds each (median); in-kernel ns per packet from the kernel's program
     statistics (kernel.bpf_stats_enabled).
  2. process start -> "attached interface=a0" in the log (marking ready), median of the runs above.
  3. firefly datagram sent -> flow map entry present, at 1,000 flow starts/s: a generator in A
     sends, a poller on the pinned map (other core) stamps; p50/p99.
  4. 100,000 concurrent flows: all in the map, and a sample of them checked on the wire.

  python bench/marker.py [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from scitagd.lab.netlab import A_ADDR, B_ADDR, Lab
from scitagd.tags import decode_flow_label

DAEMON_CPU, LOAD_CPU = 1, 0


class Scitagd:
    def __init__(self, lab: Lab, strategy: str, extra_plugins: str = "", map_size: int = 262144,
                 top: str = "") -> None:
        self.lab = lab
        n = len(lab.procs)
        self.pipe = lab.tmp / f"np{n}"
        self.log = lab.tmp / f"d{n}.log"
        conf = lab.tmp / f"d{n}.yaml"
        conf.write_text(f"""
plugins:
  namedPipe: {{pipePath: {self.pipe}}}
{extra_plugins}
backends:
  marker: {{targetInterfaces: [a0], markingStrategy: {strategy}, pinPath: {lab.pin}, mapSize: {map_size}}}
logging: {{flowEvents: false}}
{top}
""")
        t0 = time.monotonic()
        cmd = lab.a.netonly("taskset", "-c", str(DAEMON_CPU), sys.executable, "-m", "scitagd", "run",
                            "--config", str(conf))
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        lab.procs.append(self.proc)
        self.ready_s = 0.0
        # Marking is ready when the filter is attached; the pipe exists once the daemon says
        # "started" (sinks start before sources): writing to it earlier would create a file.
        while True:
            text = self.log.read_text()
            if not self.ready_s and "attached interface=a0" in text:
                self.ready_s = time.monotonic() - t0
            if "scitagd.daemon started" in text and self.ready_s:
                break
            if self.proc.poll() is not None or time.monotonic() - t0 > 20:
                raise RuntimeError(text)
            time.sleep(0.002)

    def send(self, line: str) -> None:
        with open(self.pipe, "w") as f:
            f.write(line + "\n")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        # Each run starts from empty maps: the bench owns these pins.
        subprocess.run([sys.executable, "-m", "scitagd", "marker", "clean", "--pin-path", self.lab.pin],
                       capture_output=True)


def prog_stats(lab: Lab, handle: int = 0x5C1A) -> Tuple[int, int]:
    code = ("import socket,json,ctypes;from scitagd.bpf import loader, libbpf as lb;"
            f"h=lb.tc_hook(socket.if_nametoindex('a0'));o=lb.tc_opts({handle},1);"
            "lb.check(lb.lib().bpf_tc_query(ctypes.byref(h),ctypes.byref(o)),'query');pid=o.prog_id;"
            "fd=lb.lib().bpf_prog_get_fd_by_id(pid);"
            "i=lb.prog_info(fd);print(json.dumps([i.run_time_ns,i.run_cnt]))")
    r = lab.a.exec(sys.executable, "-c", code, check=False)
    if r.returncode != 0:
        raise RuntimeError(r.stderr + lab.a.exec("tc", "filter", "show", "dev", "a0", "egress").stdout)
    out = r.stdout
    ns, cnt = json.loads(out)
    return int(ns), int(cnt)


def iperf(lab: Lab, cport: int, seconds: float) -> float:
    srv = subprocess.Popen(lab.b.cmd("taskset", "-c", str(LOAD_CPU), "iperf3", "-s", "-1", "-B", B_ADDR,
                                     "-p", "5201"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(srv)
    time.sleep(0.3)
    r = subprocess.run(lab.a.cmd("taskset", "-c", str(DAEMON_CPU), "iperf3", "-c", B_ADDR, "-p", "5201",
                                 "--cport", str(cport), "-t", str(seconds), "-J"),
                       capture_output=True, text=True, timeout=seconds + 30)
    srv.wait(10)
    if r.returncode != 0:
        raise RuntimeError(r.stdout + r.stderr)
    return float(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"])


NOP_C = """#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
SEC("tc") int scitagd_nop(struct __sk_buff *skb) { return TC_ACT_UNSPEC; }
char LICENSE[] SEC("license") = "GPL";
"""


def nop_object(tmp: Path) -> Optional[Path]:
    """An empty tc program: what the kernel's own accounting costs, to subtract."""
    src, obj = tmp / "nop.bpf.c", tmp / "nop.bpf.o"
    src.write_text(NOP_C)
    r = subprocess.run(["clang", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(src),
                        "-o", str(obj)], capture_output=True)
    return obj if r.returncode == 0 else None


def datapath(lab: Lab, rounds: int, seconds: float) -> Dict[str, Any]:
    bps: Dict[str, List[float]] = {"none": [], "label": [], "destination": []}
    ready: List[float] = []
    cport = 42000
    # 1. Throughput, interleaved, with the kernel's program statistics off (they cost time).
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=True)
    for r in range(rounds):
        for mode in ("none", "label", "destination"):
            cport += 1
            d = None
            if mode != "none":
                d = Scitagd(lab, mode)
                ready.append(d.ready_s)
                d.send(f"start tcp {A_ADDR} {cport} {B_ADDR} 5201 2 16")
                time.sleep(0.1)
            bps[mode].append(iperf(lab, cport, seconds))
            if d is not None:
                d.stop()
            print(f"round {r} {mode:12} {bps[mode][-1] / 1e9:6.2f} Gbit/s", flush=True)
    # 2. ns per packet (per skb: a GSO packet is one run), stats on, an empty program as floor.
    nspp: Dict[str, float] = {}
    subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
    try:
        nop = nop_object(lab.tmp)
        if nop is not None:
            lab.a.exec("tc", "qdisc", "add", "dev", "a0", "clsact")
            lab.a.exec("tc", "filter", "add", "dev", "a0", "egress", "prio", "1", "handle", "1", "bpf", "da",
                       "obj", str(nop), "sec", "tc")
            ns0, c0 = prog_stats(lab, handle=1)
            cport += 1
            iperf(lab, cport, seconds)
            ns1, c1 = prog_stats(lab, handle=1)
            nspp["nop"] = (ns1 - ns0) / max(1, c1 - c0)
            lab.a.exec("tc", "qdisc", "del", "dev", "a0", "clsact")
        for mode in ("label", "destination"):
            cport += 1
            d = Scitagd(lab, mode)
            d.send(f"start tcp {A_ADDR} {cport} {B_ADDR} 5201 2 16")
            time.sleep(0.1)
            ns0, c0 = prog_stats(lab)
            iperf(lab, cport, seconds)
            ns1, c1 = prog_stats(lab)
            nspp[mode] = (ns1 - ns0) / max(1, c1 - c0)
            d.stop()
    finally:
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=False)
    print("ns per skb (stats on): " + ", ".join(f"{k} {v:.0f}" for k, v in nspp.items()), flush=True)
    med = {k: statistics.median(v) for k, v in bps.items()}
    return {"gbps": {k: v / 1e9 for k, v in med.items()},
            "rounds_gbps": {k: [round(x / 1e9, 2) for x in v] for k, v in bps.items()},
            "vs_none_pct": {k: 100 * (med[k] / med["none"] - 1) for k in ("label", "destination")},
            "ns_per_skb": nspp,
            "ready_s": {"median": statistics.median(ready), "max": max(ready)}}


POLLER = r"""
import ctypes, json, os, sys, time
from pathlib import Path
os.sched_setaffinity(0, {int(sys.argv[3])})
from scitagd.bpf import loader
from scitagd.bpf.abi import FLOW_TAG
maps = loader.Maps.from_pins(Path(sys.argv[1]))
keys = [bytes.fromhex(k) for k in json.loads(Path(sys.argv[2]).read_text())]
buf = ctypes.create_string_buffer(FLOW_TAG.size)
L = maps.L; fd = maps.fds["flows"]
print("ready", flush=True)
seen = []
mono = time.monotonic_ns
for k in keys:
    deadline = mono() + 5_000_000_000
    while L.bpf_map_lookup_elem(fd, k, buf) != 0:
        if mono() > deadline:
            break
    seen.append(mono())
print(json.dumps(seen), flush=True)
"""

SENDER = r"""
import json, os, socket, sys, time
os.sched_setaffinity(0, {int(sys.argv[4])})
port, n, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
grams = []
for i in range(n):
    grams.append(('<134>1 - bench xrootd - firefly-json - {"version":1,"flow-lifecycle":{"state":"start",'
        '"start-time":"2026-11-25T00:00:00+00:00"},"flow-id":{"afi":"ipv6","src-ip":"%s","dst-ip":"%s",'
        '"protocol":"tcp","src-port":%d,"dst-port":5000},"context":{"experiment-id":2,"activity-id":16}}'
        % (sys.argv[5], sys.argv[6], 10000 + i)).encode())
stamps = []
t0 = time.monotonic()
for i, g in enumerate(grams):
    ahead = t0 + i / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
    stamps.append(time.monotonic_ns())
    s.sendto(g, ("127.0.0.1", port))
print(json.dumps(stamps), flush=True)
"""


def event_latency(lab: Lab, n: int, rate: float) -> Dict[str, float]:
    from scitagd.bpf.abi import flow_key

    d = Scitagd(lab, "label", "  firefly: {bindAddress: 127.0.0.1, bindPort: 29514}")
    keys = [flow_key("tcp", A_ADDR, 10000 + i, B_ADDR, 5000).hex() for i in range(n)]
    keyfile = lab.tmp / "keys.json"
    keyfile.write_text(json.dumps(keys))
    poller = subprocess.Popen([sys.executable, "-c", POLLER, lab.pin, str(keyfile), str(LOAD_CPU)],
                              stdout=subprocess.PIPE)
    lab.procs.append(poller)
    assert poller.stdout is not None and poller.stdout.readline().strip() == b"ready"
    out = subprocess.run(lab.a.cmd(sys.executable, "-c", SENDER, "29514", str(n), str(rate), str(LOAD_CPU),
                                   A_ADDR, B_ADDR), capture_output=True, text=True, timeout=n / rate + 30)
    sent = json.loads(out.stdout)
    seen = json.loads(poller.communicate(timeout=30)[0])
    d.stop()
    lat = sorted((b - a) / 1e6 for a, b in zip(sent, seen))
    return {"n": n, "rate": rate, "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)],
            "max_ms": lat[-1]}


def capacity(lab: Lab, flows: int) -> Dict[str, Any]:
    d = Scitagd(lab, "label", map_size=262144)
    sample = random.Random(7).sample(range(flows), 50)
    t0 = time.monotonic()
    lines = []
    for i in range(flows):
        sport, dport = 1024 + i % 60000, 6000 + i // 60000
        lines.append(f"start udp {A_ADDR} {sport} {B_ADDR} {dport} {1 + i % 500} {i % 64}")
    with open(d.pipe, "w") as f:
        for j in range(0, flows, 1000):
            f.write("\n".join(lines[j:j + 1000]) + "\n")
            f.flush()
    code = ("import json;from pathlib import Path;from scitagd.bpf import loader;"
            f"m=loader.Maps.from_pins(Path('{lab.pin}'));print(m.count_flows())")
    entries = 0
    while time.monotonic() - t0 < 120:
        entries = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
        if entries >= 2 * flows:
            break
        time.sleep(0.5)
    fill_s = time.monotonic() - t0
    cap = lab.capture()
    for i in sample:
        sport, dport = 1024 + i % 60000, 6000 + i // 60000
        lab.tool(lab.a, "udp-send", B_ADDR, str(dport), str(sport), "1", f"s{i}")
    pkts = cap.stop()
    ok = 0
    for i in sample:
        sport = 1024 + i % 60000
        got = [p for p in pkts if p.src == A_ADDR and p.proto == 17 and p.sport == sport
               and p.l4_payload.startswith(f"s{i}:".encode())]
        if got and decode_flow_label(got[0].label) == (1 + i % 500, i % 64):
            ok += 1
    rss = 0
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    d.stop()
    return {"flows": flows, "map_entries": entries, "fill_seconds": fill_s, "sample": len(sample),
            "sample_marked_correctly": ok, "daemon_rss_mb": rss / 1024}


def skops_overhead(lab: Lab, rounds: int, seconds: float) -> Dict[str, Any]:
    """iperf3 through a watched port with and without enrichers.skops (RTT callbacks on every
    connection, one sample per socket per second), interleaved, median."""
    watch = ("  watcher:\n    ignoreNetworks: []\n"
             "    rules: [{remotePorts: '5201', experiment: 2, activity: 2}]")
    bps: Dict[str, List[float]] = {"watcher": [], "watcher+skops": []}
    cport = 43000
    for r in range(rounds):
        for mode in bps:
            cport += 1
            top = "enrichers:\n  period: 1000\n  skops: {}" if mode.endswith("skops") else ""
            d = Scitagd(lab, "label", watch, top=top)
            bps[mode].append(iperf(lab, cport, seconds))
            d.stop()
            print(f"round {r} {mode:14} {bps[mode][-1] / 1e9:6.2f} Gbit/s", flush=True)
    med = {k: statistics.median(v) / 1e9 for k, v in bps.items()}
    return {"gbps": med, "skops_vs_watcher_pct": 100 * (med["watcher+skops"] / med["watcher"] - 1),
            "rounds_gbps": {k: [round(x / 1e9, 2) for x in v] for k, v in bps.items()}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only-skops", action="store_true", help="only the sock_ops sampling overhead")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root")
        return 1
    res: Dict[str, Any] = {}
    lab = Lab(Path(tempfile.mkdtemp(prefix="bench-marker-")))
    try:
        if a.only_skops:
            res["skops"] = skops_overhead(lab, a.rounds, a.seconds)
            print(json.dumps(res["skops"], indent=1), flush=True)
            return 0
        res["datapath"] = datapath(lab, a.rounds, a.seconds)
        print(json.dumps(res["datapath"], indent=1), flush=True)
        res["event_latency"] = event_latency(lab, a.events, 1000.0)
        print(json.dumps(res["event_latency"], indent=1), flush=True)
        res["capacity"] = capacity(lab, a.flows)
        print(json.dumps(res["capacity"], indent=1), flush=True)
    finally:
        lab.close()
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
