# SPDX-License-Identifier: Apache-2.0
"""Router flow exports through a whole `scitagd collector`: receiver -> decode -> aggregate ->
store (link rows, paths), against the bare receiver (IpfixReceiver + Aggregator, no store: the
soak receiver of bench/flowexport.py) in the same run.

Each target process runs pinned to --cpu; a sender process on the other CPU offers IPFIX at
--rate records/s for --seconds; then the target's socket is let drain. Figures per target:
records decoded per CPU second of the target process (/proc/PID/stat: the cores are shared with
other work, preemption is not our cost), records lost (sent - decoded) and kernel drops. The
collector's CPU includes its store thread and the HTTP side; its records come from /metrics.
Targets: the bare receiver, the collector fed by the exporter alone, and the collector while
fireflies come (one firefly before the load: paths are then kept for tagged records).

Workloads (bench/flowexport.py builds them from the shared OVS capture):
  ovs-mtu   OVS 3.1 records in 1400-byte messages: few links and tags, so few rows per flush
  fixed     a router-like 10-field IPv6 template, 24 records per message, labels over 3
            experiments x 20 activities (half of the records carry a registry pair), 8
            interfaces x 2 directions, 1,000 ports: ~100 link rows per one-second flush and
            ~800 tagged 5-tuples per message cycle

  python bench/links.py [--rate 150000] [--seconds 10] [--runs 3] [--cpu 1] [--workloads ovs-mtu,fixed]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from flowexport import _records_in, fixed_workload, ovs_workload  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
FIREFLY = (b'<134>1 - bench xrootd - firefly-json - {"version":1,"flow-lifecycle":{"state":"start",'
           b'"start-time":"NOW"},"flow-id":{"afi":"ipv6","src-ip":"2001:db8::7","dst-ip":"2001:db8::8",'
           b'"protocol":"tcp","src-port":1094,"dst-port":40000},"context":{"experiment-id":3,"activity-id":14}}')


def workload(name: str) -> Tuple[List[bytes], List[bytes]]:
    templates, data, _ = ovs_workload(1400) if name == "ovs-mtu" else fixed_workload()
    return templates, data


def sender_main(port: int, name: str, rate: float, seconds: float) -> None:
    """The load: templates, then data messages at `rate` records/s, sequence numbers in order."""
    templates, data = workload(name)
    counts = [_records_in(m) if name == "ovs-mtu" else 24 for m in data]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(("127.0.0.1", port))
    for m in templates:
        tx.send(m)
    time.sleep(0.2)
    per_msg = sum(counts) / len(counts)
    msg_rate = rate / per_msg
    sent = records = seq = 0
    t0 = time.perf_counter()
    while True:
        el = time.perf_counter() - t0
        if el >= seconds:
            break
        due = int(el * msg_rate) - sent
        if due <= 0:
            time.sleep(0.0005)
            continue
        for _ in range(min(due, 200)):
            i = sent % len(data)
            # export time now: the collector counts records at their own minute
            tx.send(data[i][:4] + struct.pack("!II", int(time.time()), seq) + data[i][12:])
            seq = (seq + counts[i]) & 0xFFFFFFFF
            records += counts[i]
            sent += 1
    print(json.dumps({"records": records, "datagrams": sent}), flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rx_queue(port: int) -> int:
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        with open(path) as f:
            next(f)
            for line in f:
                cols = line.split()
                if int(cols[1].split(":")[1], 16) == port:
                    return int(cols[4].split(":")[1], 16)
    return 0


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(port: int) -> Dict[str, float]:
    out = {}
    for line in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def offer(port: int, name: str, rate: float, seconds: float, cpu_tx: int) -> Dict[str, Any]:
    r = subprocess.run(["taskset", "-c", str(cpu_tx), sys.executable, __file__, "--sender", str(port), name,
                        str(rate), str(seconds)], capture_output=True, text=True, timeout=seconds + 120)
    if r.returncode:
        raise RuntimeError(f"sender failed: {r.stderr[-500:]}")
    sent: Dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and rx_queue(port) > 0:
        time.sleep(0.2)
    return sent


def run_baseline(name: str, rate: float, seconds: float, cpu: int, cpu_tx: int) -> Dict[str, Any]:
    port = free_port(socket.SOCK_DGRAM)
    rx = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, str(REPO / "bench" / "flowexport.py"),
                           "--receiver", str(port)], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        c0 = cpu_seconds(rx.pid)
        sent = offer(port, name, rate, seconds, cpu_tx)
        time.sleep(0.5)
        cpu = cpu_seconds(rx.pid) - c0
        rx.send_signal(signal.SIGTERM)
        out, _ = rx.communicate(timeout=30)
        got = json.loads(out.strip().splitlines()[-1])
        return {"records": got["records"], "sent": sent["records"], "kernel_drops": got["kernel_drops"], "cpu": cpu}
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()


def run_collector(name: str, rate: float, seconds: float, cpu: int, cpu_tx: int, tmp: Path,
                  fireflies: bool = False) -> Dict[str, Any]:
    port, http, ffport = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    db = tmp / f"links-{time.monotonic_ns()}.sqlite"
    conf = tmp / "collector.yaml"
    conf.write_text(f"collector:\n  udp: {{bindAddresses: [127.0.0.1], port: {ffport}}}\n"
                    f"  http: {{port: {http}}}\n  store: {{path: {db}}}\n"
                    f"  ipfix: {{bindAddresses: [127.0.0.1], port: {port}, receiveBuffer: 67108864}}\n")
    log = open(tmp / "collector.log", "wb")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-m", "scitagd", "collector", "--config",
                             str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((tmp / "collector.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        if fireflies:  # one firefly (another flow): the collector keeps paths while fireflies come
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(FIREFLY.replace(b"NOW", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()),
                         ("127.0.0.1", ffport))
            time.sleep(0.5)
        c0 = cpu_seconds(proc.pid)
        sent = offer(port, name, rate, seconds, cpu_tx)
        time.sleep(2.5)  # two link flushes: what was decoded is written
        cpu = cpu_seconds(proc.pid) - c0
        m = metrics(http)
        return {"records": int(m['scitagd_collector_flowexport_records_total{protocol="ipfix"}']),
                "sent": sent["records"],
                "kernel_drops": int(m['scitagd_collector_flowexport_kernel_drops_total{protocol="ipfix"}']),
                "rows": int(m.get("scitagd_collector_link_rows_written_total", 0)),
                "cpu": cpu}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--sender":
        sender_main(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=150_000, help="records/s offered")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("--workloads", default="ovs-mtu,fixed")
    a = ap.parse_args()
    cpu_tx = 1 - a.cpu if a.cpu in (0, 1) else 0
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="scitagd-bench-links-") as d:
        for name in a.workloads.split(","):
            per: Dict[str, List[Dict[str, Any]]] = {"receiver": [], "collector": [], "collector+fireflies": []}
            for _ in range(a.runs):  # interleaved: all see the same machine load
                per["receiver"].append(run_baseline(name, a.rate, a.seconds, a.cpu, cpu_tx))
                per["collector"].append(run_collector(name, a.rate, a.seconds, a.cpu, cpu_tx, Path(d)))
                per["collector+fireflies"].append(run_collector(name, a.rate, a.seconds, a.cpu, cpu_tx, Path(d),
                                                                fireflies=True))
            summary = {}
            for target, runs in per.items():
                rate = statistics.median(r["records"] / max(r["cpu"], 0.01) for r in runs)
                summary[target] = {"records_per_cpu_s": round(rate),
                                   "lost": statistics.median(r["sent"] - r["records"] for r in runs),
                                   "kernel_drops": statistics.median(r["kernel_drops"] for r in runs),
                                   "sent": statistics.median(r["sent"] for r in runs), "runs": runs}
            base = max(summary["receiver"]["records_per_cpu_s"], 1)
            results[name] = {**summary, "ratio": round(summary["collector"]["records_per_cpu_s"] / base, 2),
                             "ratio_fireflies": round(summary["collector+fireflies"]["records_per_cpu_s"] / base, 2)}
            line = f"{name:8s} offered {a.rate:,.0f}/s for {a.seconds:.0f} s:"
            for target in per:
                sm = summary[target]
                line += (f"  {target} {sm['records_per_cpu_s']:,}/CPU-s (x{sm['records_per_cpu_s'] / base:.2f}, "
                         f"lost {sm['lost']:,.0f})")
            print(line + f"  link rows per run {statistics.median(r['rows'] for r in per['collector']):,.0f}",
                  flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
