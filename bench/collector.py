# SPDX-License-Identifier: Apache-2.0
"""Collector benchmarks: ingest rate on one core, and dashboard query latency with 1,000,000 flows.

  1. ingest: the collector pinned to CPU 1; a sender process on CPU 0 offers a realistic mix of
     producers' fireflies (XRootD start/end with usage, flowd with syslog-daemon lines, dCache
     with Z times and storage-stats) for --seconds at rising rates; loss = 1 - accounted/sent,
     read from the collector's own counters once its store is flushed. Then the loss at 50 % and
     80 % of the highest lossless rate found.
  2. queries: 1,000,000 flows over 30 days written into a fresh store (its own write path), the
     collector started on it, each dashboard query timed over HTTP (median of --repeat), and the
     collector's RSS.

  python bench/collector.py [--seconds 4] [--flows 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

COLLECTOR_CPU, LOAD_CPU = 1, 0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mix(n: int, seed: int = 1) -> List[bytes]:
    """n fireflies: start and end of n/2 flows, in three producers' dialects."""
    rnd = random.Random(seed)
    out = []
    t0 = 1764000000.0
    for i in range(n // 2):
        kind = i % 3
        sport, dport = 1024 + i % 60000, 2000 + i // 60000
        exp, act = rnd.choice([(2, 3), (2, 16), (3, 4), (3, 1), (5, 10), (8, 1), (1, 1)])
        st = t0 + i * 0.01
        en = st + rnd.uniform(1, 600)
        nbytes = rnd.randint(1 << 20, 4 << 30)
        iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}+00:00"  # noqa: E731
        fid = (f'"flow-id":{{"afi":"ipv6","src-ip":"2001:db8:{i % 50:x}::1","dst-ip":"2001:db8:ff::{i % 200:x}",'
               f'"protocol":"tcp","src-port":{sport},"dst-port":{dport}}}')
        ctx = f'"context":{{"experiment-id":{exp},"activity-id":{act},"application":"xrootd"}}'
        if kind == 0:  # XRootD
            for state, extra in (("start", ""), ("end", f',"end-time":"{iso(en)}"')):
                usage = '{"received":120,"sent":56}' if state == "start" else f'{{"received":300,"sent":{nbytes}}}'
                out.append((f'<134>1 - se{i % 20}.example xrootd - firefly-json - {{"version":1,"flow-lifecycle":'
                            f'{{"state":"{state}","current-time":"{iso(en if extra else st)}","start-time":"{iso(st)}"'
                            f'{extra}}},"usage":{usage},"netlink":{{"rtt":0.2}},{ctx},{fid}}}').encode())
        elif kind == 1:  # flowd through a syslog daemon
            for state, extra in (("start", ""), ("end", f', "end-time": "{iso(en)}"')):
                out.append((f'Feb  1 18:54:27 relay 1 {iso(st)} gridftp{i % 9}.example flowd - firefly-json - '
                            f'{{"flow-id": {{"protocol": "tcp", "afi": "ipv6", "dst-ip": "2001:db8:ff::{i % 200:x}", '
                            f'"src-port": {sport}, "src-ip": "2001:db8:{i % 50:x}::1", "dst-port": {dport}}}, '
                            f'"version": 1, "flow-lifecycle": {{"state": "{state}", "start-time": "{iso(st)}", '
                            f'"current-time": "{iso(st)}"{extra}}}, "context": {{"experiment-id": {exp}, '
                            f'"application": "flowd v1.1", "activity-id": {act}}}}}').encode())
        else:  # dCache
            for state, extra, usage in (("start", "", "{}"),
                                        ("end", f',"end-time":"{iso(en)[:19]}Z"', f'{{"received":0,"sent":{nbytes}}}')):
                out.append((f'<134>1 {iso(st)[:19]}Z 2001:db8:{i % 50:x}::1 dCache - firefly-json - '
                            f'{{"flow-lifecycle":{{"start-time":"{iso(st)[:19]}Z","state":"{state}"{extra}}},{ctx},'
                            f'{fid},"usage":{usage},"storage-stats":{{"bytes-transferred":{nbytes}}},"version":1}}'
                            ).encode())
    return out


SENDER = r"""
import json, os, socket, sys, time
os.sched_setaffinity(0, {int(sys.argv[3])})
port, rate = int(sys.argv[1]), float(sys.argv[2])
grams = [bytes.fromhex(l) for l in open(sys.argv[4]).read().split()]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
t0 = time.monotonic(); i = 0; n = len(grams)
while i < n:
    due = min(n, int((time.monotonic() - t0) * rate) + 1)
    while i < due:
        s.sendto(grams[i], ("127.0.0.1", port)); i += 1
    if i < n:
        time.sleep(0.0002)
print(json.dumps({"sent": n, "seconds": time.monotonic() - t0}))
"""


class Collector:
    def __init__(self, tmp: Path, db: Path, cpu: int = COLLECTOR_CPU) -> None:
        self.udp, self.http = free_port(socket.SOCK_DGRAM), free_port()
        conf = tmp / f"c{self.udp}.yaml"
        conf.write_text(f"""
collector:
  udp: {{bindAddresses: ["127.0.0.1"], port: {self.udp}, receiveBuffer: 33554432}}
  store: {{path: {db}, retentionDays: 36500}}
  http: {{port: {self.http}}}
""")
        self.proc = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-m", "scitagd", "collector",
                                      "--config", str(conf)], stdout=open(tmp / "c.log", "ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(self.url("/healthz"), timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError((tmp / "c.log").read_text()) from None
                time.sleep(0.1)

    def url(self, p: str) -> str:
        return f"http://127.0.0.1:{self.http}{p}"

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(self.url("/metrics")).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def ingest_step(tmp: Path, rate: float, seconds: float) -> Dict[str, float]:
    n = int(rate * seconds) // 2 * 2
    grams = mix(n, seed=int(rate))
    gfile = tmp / "grams.hex"
    gfile.write_text("\n".join(g.hex() for g in grams))
    db = tmp / f"ingest-{int(rate)}.sqlite"
    c = Collector(tmp, db)
    try:
        r = subprocess.run([sys.executable, "-c", SENDER, str(c.udp), str(rate), str(LOAD_CPU), str(gfile)],
                           capture_output=True, text=True, timeout=seconds * 5 + 60)
        sent = json.loads(r.stdout)
        time.sleep(1.5)
        got = c.metric("scitagd_collector_datagrams_total")
        ok = c.metric('scitagd_collector_fireflies_total{outcome="start"}') + c.metric(
            'scitagd_collector_fireflies_total{outcome="end"}')
        rejected = c.metric("scitagd_collector_rejected_total")
    finally:
        c.stop()
    return {"offered": sent["sent"] / sent["seconds"], "sent": sent["sent"], "received": got, "accounted": ok,
            "rejected": rejected, "loss_pct": 100 * (sent["sent"] - ok) / sent["sent"]}


def fill(db: Path, flows: int) -> float:
    """1,000,000 flows over 30 days through the store's own write path and accounting."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from scitagd.collector.account import Accountant

    from scitagd.collector.store import SQLiteStore
    from scitagd.firefly import parse

    t0 = time.monotonic()
    store = SQLiteStore(str(db))
    acct = Accountant([], False)
    rnd = random.Random(5)
    now = time.time()
    tags = [(2, 3), (2, 16), (3, 4), (3, 1), (5, 10), (8, 1), (1, 1), (6, 2), (7, 1), (4, 1)]
    for i in range(flows):
        st = now - 30 * 86400 + i * (30 * 86400 / flows)
        en = st + rnd.uniform(1, 3600)
        exp, act = tags[i % len(tags)]
        # 100 storage hosts, 2,000 remote ones, heavy hitters as in real traffic (the UNL archive:
        # 73 sources, 501 destinations, 1,328 pairs in 10,000 fireflies).
        src = f"2001:db8:{int(rnd.paretovariate(1.2)) % 100:x}::1"
        dst = f"2001:db8:ff::{int(rnd.paretovariate(0.9)) % 2000:x}"
        iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"  # noqa: E731
        for state in ("start", "end"):
            body = (f'{{"version":1,"flow-lifecycle":{{"state":"{state}","start-time":"{iso(st)}"'
                    + (f',"end-time":"{iso(en)}"' if state == "end" else "") + "},"
                    f'"flow-id":{{"afi":"ipv6","src-ip":"{src}","dst-ip":"{dst}","protocol":"tcp",'
                    f'"src-port":{1024 + i % 60000},"dst-port":{1094 + i // 60000}}},'
                    f'"context":{{"experiment-id":{exp},"activity-id":{act}}},'
                    f'"usage":{{"received":100,"sent":{rnd.randint(1 << 20, 1 << 32) if state == "end" else 0}}}}}')
            acct.ingest(parse(body.encode()), f"se{i % 30}")
        if len(acct.rows) >= 50000:
            store.write(*acct.take())
    store.write(*acct.take())
    store.close()
    return time.monotonic() - t0


QUERIES = {
    "timeseries 24h": "/api/v1/timeseries?from=-24h",
    "timeseries 7d": "/api/v1/timeseries?from=-7d",
    "timeseries 30d": "/api/v1/timeseries?from=-30d",
    "timeseries 7d one experiment": "/api/v1/timeseries?from=-7d&experiment=atlas",
    "timeseries 7d one host": "/api/v1/timeseries?from=-7d&host=2001:db8:ff::7",
    "totals by activity 30d": "/api/v1/totals?by=activity&from=-30d",
    "top 10 host pairs 7d": "/api/v1/top?from=-7d&n=10",
    "top 10 host pairs 30d": "/api/v1/top?from=-30d&n=10",
    "recent flows (25) 24h": "/api/v1/flows?from=-24h&limit=25",
    "recent flows one experiment": "/api/v1/flows?from=-7d&experiment=cms&limit=25",
    "recent flows one host": "/api/v1/flows?from=-7d&host=2001:db8:ff::7&limit=25",
    "active flows": "/api/v1/active?limit=200",
}


def queries(tmp: Path, flows: int, repeat: int) -> Dict[str, Any]:
    db = tmp / "million.sqlite"
    fill_s = fill(db, flows)
    c = Collector(tmp, db)
    try:
        out: Dict[str, Any] = {"flows": flows, "fill_seconds": fill_s, "db_mb": db.stat().st_size / 1e6,
                               "queries_ms": {}}
        for name, path in QUERIES.items():
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                urllib.request.urlopen(c.url(path)).read()
                times.append((time.perf_counter() - t0) * 1000)
            out["queries_ms"][name] = {"median": statistics.median(times), "max": max(times)}
            print(f"  {name:32} median {statistics.median(times):7.1f} ms  max {max(times):7.1f} ms", flush=True)
        out["rss_mb"] = c.rss_mb()
    finally:
        c.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rates", default="10000,20000,30000,40000,50000,60000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-queries", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    res: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as d:
        tmp = Path(d)
        if not a.skip_ingest:
            steps = {}
            best = 0.0
            for rate in [float(r) for r in a.rates.split(",")]:
                runs = [ingest_step(tmp, rate, a.seconds) for _ in range(a.runs)]
                loss = statistics.median(r["loss_pct"] for r in runs)
                steps[int(rate)] = {"loss_pct_median": loss, "runs": runs}
                print(f"offered {rate:8.0f}/s: loss {loss:6.2f}% (runs: "
                      + ", ".join(f"{r['loss_pct']:.2f}" for r in runs) + ")", flush=True)
                if loss < 0.1:
                    best = rate
            res["ingest"] = {"steps": steps, "max_lossless": best}
            for frac in (0.5, 0.8):
                rate = best * frac
                runs = [ingest_step(tmp, rate, a.seconds) for _ in range(a.runs)]
                loss = statistics.median(r["loss_pct"] for r in runs)
                res["ingest"][f"loss_at_{int(frac * 100)}pct"] = {"rate": rate, "loss_pct": loss}
                print(f"{int(frac * 100)}% of max ({rate:.0f}/s): loss {loss:.3f}%", flush=True)
        if not a.skip_queries:
            print(f"queries over {a.flows} flows:", flush=True)
            res["queries"] = queries(tmp, a.flows, a.repeat)
            print(f"  store {res['queries']['db_mb']:.0f} MB written in {res['queries']['fill_seconds']:.0f} s; "
                  f"collector RSS {res['queries']['rss_mb']:.0f} MB", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
