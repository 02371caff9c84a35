# SPDX-License-Identifier: Apache-2.0
"""Collector benchmarks: sustained ingest on one core, side by side; dashboard queries.

  1. ingest: three receivers, each in its own process pinned to CPU 1 (taskset), fed by a
     sender process pinned to CPU 0, at offered-rate steps, in one run:
       baseline  the collector before the ingest work (a git worktree, --baseline; its own src
                 on PYTHONPATH), with its own config
       current   this tree's collector
       ceiling   a bare uvloop + msgspec receiver that only parses (what Python can do here)
       current-ch  with --clickhouse: this tree with store.kind clickhouse, writing to a
                 clickhouse-server started here on CPU 0 beside the sender (its CPU per
                 firefly is shown apart: the database server a collector writes to runs elsewhere)
     The traffic is real fireflies (../shared/data/fireflies, $SCITAGD_SHARED, or --fireflies):
     XRootD, flowd (syslog-daemon archive lines) and dCache templates, made into distinct flows
     (5-tuples varied) with start, sometimes an ongoing, and end, interleaved as concurrent flows.
     Counting is closed: sent = accounted + rejected + kernel drops + still queued + lost inside
     (the current collector's store_dropped) + unexplained, read only once the receiver has
     drained (socket queue empty, nothing pending, counters still and the process under a
     quarter of a core for 1 s: the baseline counts before its store thread writes). Kernel drops and the
     queue come from /proc/net/udp for the receiver's socket (found by its port and inode).
     "Lossless" = nothing dropped, nothing unexplained. "Keeps up" = lossless and done within
     --max-lag seconds of the last datagram sent: a receiver that buffers what it cannot yet
     store (the current collector's pending batch) takes a 4 s step without loss even when it
     processes less than is offered, and only its lag shows it. The sustained rate of a receiver
     is the highest step it keeps up with in the median of --runs runs; its capacity is what it
     processed per second from the first datagram to the end of the drain at a step it does not
     keep up with (its cost per firefly, whatever it buffers), shown with its CPU time per
     firefly by thread (event loop, others) from /proc.
  2. queries: --flows flows over 30 days written through the store's own ingest, the collector
     started on it, each dashboard query timed over HTTP (median of --repeat), and the RSS.

  python bench/collector.py --baseline /tmp/baseline-f1685eb --runs 3 --skip-queries
  python bench/collector.py --skip-ingest --flows 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import marshal
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from scitagd.lab.util import free_port, stop_process
from scitagd.netutil import udp_table

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR_CPU, LOAD_CPU = 1, 0
DATA = Path(os.environ.get("SCITAGD_SHARED", ROOT.parent / "shared")) / "data" / "fireflies"  # as the tests find it
KINDS = ("baseline", "current", "ceiling")

# --- traffic from real fireflies ----------------------------------------------------------

TIME = re.compile(r'"(start-time|end-time|current-time)":(\s*)"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)"')
HEADER_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")


class Template:
    """One real firefly, with the spots where a flow's values go."""

    def __init__(self, wire: str, producer: str) -> None:
        i = wire.index("{")
        self.header, self.body = wire[:i], wire[i:]
        self.producer = producer
        self.afi = re.search(r'"afi":\s*"(ipv[46])"', self.body).group(1)  # type: ignore[union-attr]
        self.state = re.search(r'"state":\s*"(\w+)"', self.body).group(1)  # type: ignore[union-attr]
        self.usage = bool(re.search(r'"usage":\s*\{\s*"', self.body))

    def render(self, state: str, src: str, dst: str, sport: int, dport: int, start: float, t: float,
               end: Optional[float], sent: int, received: int) -> bytes:
        def when(m: re.Match[str]) -> str:
            key, sp, _, frac, zone = m.groups()
            v = start if key == "start-time" else (end if key == "end-time" and end is not None else t)
            return f'"{key}":{sp}"{_fmt(v, frac, zone)}"'

        b = TIME.sub(when, self.body)
        b = re.sub(r'("state":\s*")\w+', lambda m: m.group(1) + state, b)
        b = re.sub(r'("src-ip":\s*")[^"]*', lambda m: m.group(1) + src, b)
        b = re.sub(r'("dst-ip":\s*")[^"]*', lambda m: m.group(1) + dst, b)
        b = re.sub(r'("src-port":\s*)\d+', lambda m: m.group(1) + str(sport), b)
        b = re.sub(r'("dst-port":\s*)\d+', lambda m: m.group(1) + str(dport), b)
        if self.usage:
            b = re.sub(r'("sent":\s*)\d+', lambda m: m.group(1) + str(sent), b)
            b = re.sub(r'("received":\s*)\d+', lambda m: m.group(1) + str(received), b)
        b = re.sub(r'("bytes-transferred":\s*)\d+', lambda m: m.group(1) + str(sent), b)
        if state != "end":  # an ongoing made from an end template has no end-time
            b = re.sub(r',\s*"end-time":\s*"[^"]*"', "", b)
        h = HEADER_TIME.sub(lambda m: _fmt(t, m.group(2), m.group(3)), self.header)
        return (h + b).encode()


def _fmt(t: float, frac: Optional[str], zone: str) -> str:
    d = datetime.fromtimestamp(t, timezone.utc)
    s = d.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        s += f".{d.microsecond:06d}"[: len(frac)]
    return s + ("Z" if zone == "Z" else "+00:00")


def templates(data: Path) -> Dict[str, List[Tuple[Template, Template]]]:
    """(start, end) template pairs per producer, from the real fireflies."""
    out: Dict[str, List[Tuple[Template, Template]]] = {"xrootd": [], "flowd": [], "dcache": []}
    rows = [json.loads(line) for line in (data / "producers.jsonl").read_text().splitlines() if line.strip()]
    by: Dict[str, List[Template]] = {}
    for r in rows:
        p = r["producer"]
        if "\n" in r["wire"] or "flowd-go" in p:
            continue  # pretty-printed test files and flowd-go's odd sample: not what a wire carries
        kind = "xrootd" if p.startswith("xrootd") else "dcache" if p.startswith("dcache") else None
        if kind:
            by.setdefault(kind, []).append(Template(r["wire"], p))
    for kind, ts in by.items():
        starts = [t for t in ts if t.state == "start"]
        ends = [t for t in ts if t.state == "end"]
        for s in starts:
            e = next((e for e in ends if e.producer == s.producer and e.afi == s.afi), None)
            if e is not None:  # a start without its producer's end (dCache before 2024) is left out
                out[kind].append((s, e))
    with gzip.open(data / "unl-flowd-0.1.2-2022.log.gz", "rt") as f:
        lines = [line.rstrip("\n") for _, line in zip(range(2000), f)]
    starts = [Template(x, "flowd-unl") for x in lines if '"state": "start"' in x][:16]
    ends = [Template(x, "flowd-unl") for x in lines if '"state": "end"' in x][:16]
    out["flowd"] = list(zip(starts, ends))
    return out


def traffic(n: int, seed: int, data: Path, rate: float = 10000.0, now: Optional[float] = None) -> List[bytes]:
    """About n datagrams: distinct flows (40 % XRootD, 40 % flowd, 20 % dCache), each a start,
    an ongoing for one in four, an end; concurrent, in event-time order, event time running at
    the pace they are sent (`rate`): flows last 0.25 s + an exponential 0.75 s on average, so a
    flow's start and end fall into different flushes of the collector (0.2 s), as in real
    traffic, where flows last seconds to hours. Times lie within the last two hours (inside
    every collector's clock-skew and retention windows)."""
    rnd = random.Random(seed)
    tpl = templates(data)
    now = time.time() if now is None else now
    flows = max(1, int(n / 2.25))
    span = n / rate  # seconds over which the flows start
    t0 = now - 3600
    events: List[Tuple[float, int, bytes]] = []
    v4 = [f"10.{a}.{b}.1" for a in range(4) for b in range(50)]
    v6 = [f"2001:db8:{a:x}:{b:x}::1" for a in range(4) for b in range(50)]
    remote4 = [f"192.0.2.{i}" for i in range(1, 250)] + [f"198.51.100.{i}" for i in range(1, 250)]
    remote6 = [f"2001:db8:ff:{i:x}::2" for i in range(500)]
    for i in range(flows):
        x = rnd.random()
        kind = "xrootd" if x < 0.4 else "flowd" if x < 0.8 else "dcache"
        s_tpl, e_tpl = rnd.choice(tpl[kind])
        four = s_tpl.afi == "ipv4"
        src = rnd.choice(v4 if four else v6)
        dst = rnd.choice(remote4 if four else remote6)
        sport, dport = 1024 + i % 60000, 1094 + (i // 60000) % 1000
        st = round(t0 + span * i / flows + rnd.random() * 1e-4, 6)
        dur = 0.25 + rnd.expovariate(1 / 0.75)
        en = round(st + dur, 6)
        total = rnd.randint(1 << 20, 4 << 30)
        sent0 = rnd.randint(50, 400)
        evs = [(st + 1e-4, s_tpl.render("start", src, dst, sport, dport, st, st + 1e-4, None, sent0, 200))]
        if i % 4 == 0:
            mid = st + dur / 2
            evs.append((mid, e_tpl.render("ongoing", src, dst, sport, dport, st, mid, None, total // 2, 300)))
        evs.append((en, e_tpl.render("end", src, dst, sport, dport, st, en, en, total, 400)))
        for t, g in evs:
            events.append((t, len(events), g))
    events.sort()
    return [g for _, _, g in events]


# --- receivers ----------------------------------------------------------------------------

def udp_socket_state(port: int, pid: int) -> Tuple[int, int]:
    """(bytes queued, datagrams dropped) of `pid`'s UDP socket on `port`, from /proc/net/udp."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    mine = [u for u in udp_table() if u.port == port and u.inode in inodes]
    if not mine:
        raise RuntimeError(f"no UDP socket of pid {pid} on port {port}")
    return sum(u.queued for u in mine), sum(u.drops for u in mine)


def thread_cpu(pid: int) -> Tuple[float, float]:
    """CPU seconds (user + system) of `pid`'s main thread (the event loop) and of its other
    threads (the store's, queries'), from /proc: where a receiver's time goes, without a profiler."""
    tick = os.sysconf("SC_CLK_TCK")
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # a thread that just ended
        f = stat[stat.rindex(")") + 2:].split()
        cpu = (int(f[11]) + int(f[12])) / tick
        if int(tid) == pid:
            main += cpu
        else:
            other += cpu
    return main, other


CEILING = r"""
# The practical ceiling: receive and parse (msgspec into typed Structs), nothing else.
import asyncio, datetime, json, os, socket, sys
from typing import Any, Dict, Optional
import msgspec, uvloop

class Lifecycle(msgspec.Struct, rename="kebab", gc=False):
    state: str
    start_time: datetime.datetime
    end_time: Optional[datetime.datetime] = None
    current_time: Optional[datetime.datetime] = None

class FlowId(msgspec.Struct, rename="kebab", gc=False):
    afi: str
    src_ip: str
    dst_ip: str
    protocol: str
    src_port: int
    dst_port: int

class Context(msgspec.Struct, rename="kebab", gc=False):
    experiment_id: int
    activity_id: int
    application: Optional[str] = None

class Usage(msgspec.Struct, gc=False):
    received: Optional[int] = None
    sent: Optional[int] = None

class Firefly(msgspec.Struct, rename="kebab", gc=False):
    version: int
    flow_lifecycle: Lifecycle
    flow_id: FlowId
    context: Context
    usage: Optional[Usage] = None
    netlink: Optional[Dict[str, Any]] = None

dec = msgspec.json.Decoder(Firefly)
count = {"accounted": 0, "rejected": 0}

class P(asyncio.DatagramProtocol):
    def datagram_received(self, data, addr):
        i = data.find(b"{")
        try:
            dec.decode(data[i:])
            count["accounted"] += 1
        except (msgspec.DecodeError, ValueError):
            count["rejected"] += 1

async def main():
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(sys.argv[2]))
    s.bind(("127.0.0.1", int(sys.argv[1])))
    await loop.create_datagram_endpoint(P, sock=s)
    def answer():
        line = sys.stdin.readline()
        if not line:
            loop.stop()
            return
        sys.stdout.write(json.dumps(count) + "\n")
        sys.stdout.flush()
    loop.add_reader(sys.stdin.fileno(), answer)
    print("ready", flush=True)
    await asyncio.Event().wait()

uvloop.run(main()) if hasattr(uvloop, "run") else uvloop.install() or asyncio.run(main())
"""


class Receiver:
    """A receiver process pinned to COLLECTOR_CPU; `counts()` gives accounted, rejected,
    pending (inside the process), lost (inside the process)."""

    port: int
    proc: subprocess.Popen[bytes]

    side_pids: Tuple[int, ...] = ()  # processes working for it elsewhere (a ClickHouse server)

    def counts(self) -> Dict[str, float]:
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.proc, 60)


class Collector(Receiver):
    def __init__(self, tmp: Path, src: Path, rcvbuf: int, db: Optional[Path] = None,
                 clickhouse: Optional[Tuple[str, int]] = None, flush_interval: Optional[float] = None) -> None:
        self.port, self.http = free_port(socket.SOCK_DGRAM), free_port()
        db = db or tmp / f"c{self.port}.sqlite"
        conf = tmp / f"c{self.port}.yaml"
        flush = f", flushInterval: {flush_interval}" if flush_interval is not None else ""
        store = f"{{path: {db}, retentionDays: 36500{flush}}}"
        if clickhouse is not None:  # (url, server pid): a database of its own per run
            store = f"{{kind: clickhouse, url: '{clickhouse[0]}', database: b{self.port}, retentionDays: 36500}}"
            self.side_pids = (clickhouse[1],)
        # The keys both versions read alike (the baseline's README: collector.udp/store/http).
        conf.write_text(f"""
collector:
  udp: {{bindAddresses: ["127.0.0.1"], port: {self.port}, receiveBuffer: {rcvbuf}}}
  store: {store}
  http: {{port: {self.http}}}
""")
        env = dict(os.environ, PYTHONPATH=str(src))
        self.log = tmp / f"c{self.port}.log"
        self.proc = subprocess.Popen(["taskset", "-c", str(COLLECTOR_CPU), sys.executable, "-m", "scitagd",
                                      "collector", "--config", str(conf)], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, env=env, cwd=tmp)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(self.url("/healthz"), timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(self.log.read_text()) from None
                time.sleep(0.1)

    def url(self, p: str) -> str:
        return f"http://127.0.0.1:{self.http}{p}"

    def metrics(self) -> Dict[str, float]:
        text = urllib.request.urlopen(self.url("/metrics"), timeout=30).read().decode()
        out: Dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def counts(self) -> Dict[str, float]:
        m = self.metrics()

        def total(name: str) -> float:
            return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))

        return {"accounted": total("scitagd_collector_fireflies_total"),
                "rejected": total("scitagd_collector_rejected_total"),
                # ClickHouse: rows accounted and waiting for their INSERT count as pending too
                "pending": total("scitagd_collector_pending_rows") + total("scitagd_collector_clickhouse_buffered"),
                "lost": total("scitagd_collector_store_dropped_total")}

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


class Ceiling(Receiver):
    def __init__(self, tmp: Path, rcvbuf: int) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        script = tmp / "ceiling.py"
        script.write_text(CEILING)
        self.proc = subprocess.Popen(["taskset", "-c", str(COLLECTOR_CPU), sys.executable, str(script),
                                      str(self.port), str(rcvbuf)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._in: IO[bytes] = self.proc.stdin
        self._out: IO[bytes] = self.proc.stdout
        if self._out.readline().strip() != b"ready":
            raise RuntimeError("ceiling receiver did not start")

    def counts(self) -> Dict[str, float]:
        self._in.write(b"?\n")
        self._in.flush()
        c = json.loads(self._out.readline())
        return {"accounted": c["accounted"], "rejected": c["rejected"], "pending": 0, "lost": 0}


SENDER = r"""
import json, marshal, os, socket, sys, time
os.sched_setaffinity(0, {int(sys.argv[3])})
port, rate = int(sys.argv[1]), float(sys.argv[2])
grams = marshal.load(open(sys.argv[4], "rb"))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
send, dest = s.sendto, ("127.0.0.1", port)
n = len(grams); i = 0
t0 = time.monotonic()
while i < n:
    due = min(n, int((time.monotonic() - t0) * rate) + 1)
    while i < due:
        send(grams[i], dest); i += 1
    if i < n:
        time.sleep(0.0002)   # sleep between bursts: never spin on the collector's core
print(json.dumps({"sent": n, "seconds": time.monotonic() - t0, "t0": t0}))
"""


def run_step(make: Callable[[], Receiver], gfile: Path, n: int, rate: float, drain_timeout: float) -> Dict[str, Any]:
    """One receiver, one step: send, wait for the drain, read everything, close the count."""
    rc = make()
    try:
        _, d0 = udp_socket_state(rc.port, rc.proc.pid)
        cpu0 = thread_cpu(rc.proc.pid)
        side0 = sum(sum(thread_cpu(p)) for p in rc.side_pids)
        r = subprocess.run([sys.executable, "-c", SENDER, str(rc.port), str(rate), str(LOAD_CPU), str(gfile)],
                           capture_output=True, text=True, timeout=n / rate * 5 + 120)
        if r.returncode:
            raise RuntimeError(r.stderr)
        s = json.loads(r.stdout)
        # Drained: nothing in the socket, nothing pending or being written inside, the counters
        # still and the receiver idle. Idle matters: a receiver that counts a firefly when it
        # parses it (the baseline) and hands its rows to a store thread shows still counters and
        # nothing pending while that thread is still writing; its busy time ends when its CPU
        # use falls below a quarter of a core (this loop's own scrapes cost it ~2 %).
        last: Optional[Tuple[float, float]] = None
        still_since = time.monotonic()
        t_busy_end = time.monotonic()
        deadline = time.monotonic() + drain_timeout
        cpu_prev, t_prev = sum(thread_cpu(rc.proc.pid)), time.monotonic()
        while True:
            queued, drops = udp_socket_state(rc.port, rc.proc.pid)
            c = rc.counts()
            now = time.monotonic()
            cpu_now = sum(thread_cpu(rc.proc.pid))
            cur = (c["accounted"], c["rejected"])
            if cur != last or cpu_now - cpu_prev > 0.25 * (now - t_prev):
                last, still_since, t_busy_end = cur, now, now
            cpu_prev, t_prev = cpu_now, now
            closed = c["accounted"] + c["rejected"] + c["lost"] + drops - d0 >= s["sent"]
            # counted in full, or nothing moving for 1 s (3 s while the count is not closed)
            if (queued == 0 and c["pending"] == 0 and now - still_since >= (1.0 if closed else 3.0)) \
                    or now > deadline:
                break
            time.sleep(0.2)
        cpu1 = thread_cpu(rc.proc.pid)
        side = sum(sum(thread_cpu(p)) for p in rc.side_pids) - side0
    finally:
        rc.stop()
    sent = s["sent"]
    drops -= d0
    # queued bytes -> datagrams: an estimate only when the drain timed out (otherwise 0)
    in_queue = max(0.0, sent - c["accounted"] - c["rejected"] - drops - c["lost"] - c["pending"]) if queued else 0.0
    unexplained = sent - c["accounted"] - c["rejected"] - drops - c["lost"] - c["pending"] - in_queue
    processed = c["accounted"] + c["rejected"]
    busy = max(1e-9, t_busy_end - s["t0"])
    return {"sent": sent, "offered": sent / max(1e-9, s["seconds"]), "accounted": c["accounted"],
            "rejected": c["rejected"], "kernel_drops": drops, "queued": in_queue, "pending": c["pending"],
            "lost_inside": c["lost"], "unexplained": unexplained, "drained": not queued and not c["pending"],
            "loss_pct": 100.0 * (sent - processed) / sent if sent else 0.0,
            "capacity": processed / busy, "lag_s": t_busy_end - (s["t0"] + s["seconds"]),
            # CPU per processed firefly, by thread (the count's HTTP scrapes included: ~1 us)
            "loop_us": 1e6 * (cpu1[0] - cpu0[0]) / max(1.0, processed),
            "threads_us": 1e6 * (cpu1[1] - cpu0[1]) / max(1.0, processed),
            "side_us": 1e6 * side / max(1.0, processed)}


def lossless(r: Dict[str, Any]) -> bool:
    return bool(r["kernel_drops"] == 0 and r["lost_inside"] == 0 and abs(r["unexplained"]) < 0.5
                and r["drained"])


def keeps_up(r: Dict[str, Any], max_lag: float) -> bool:
    return lossless(r) and r["lag_s"] <= max_lag


def ingest(tmp: Path, a: argparse.Namespace) -> Dict[str, Any]:
    rcvbuf = a.receive_buffer
    makers: Dict[str, Callable[[], Receiver]] = {
        "baseline": lambda: Collector(tmp, Path(a.baseline) / "src", rcvbuf),
        "current": lambda: Collector(tmp, ROOT / "src", rcvbuf),
        "ceiling": lambda: Ceiling(tmp, rcvbuf),
    }
    if a.clickhouse is not None:
        makers["current-ch"] = lambda: Collector(tmp, ROOT / "src", rcvbuf, clickhouse=a.clickhouse)
    for f in a.flush_interval:  # this tree with another store.flushInterval (SQLite: one commit each)
        makers[f"current-flush{f:g}"] = lambda f=f: Collector(tmp, ROOT / "src", rcvbuf, flush_interval=f)  # type: ignore[misc]
    for spec in a.also:
        name, tree = spec.split("=", 1)
        makers[name] = lambda tree=tree: Collector(tmp, Path(tree) / "src", rcvbuf)  # type: ignore[misc]
    kinds = list(makers) if a.only is None else [k for k in a.only.split(",") if k in makers]
    if "baseline" in kinds and a.baseline is None:
        kinds.remove("baseline")
    rates = [float(r) for r in a.rates.split(",")]
    res: Dict[str, Any] = {"rates": {}, "kinds": kinds}
    losing = {k: 0 for k in kinds}  # consecutive steps not kept up with: stop a receiver after --stop-after

    def step(rate: float, who: List[str]) -> Dict[str, Dict[str, Any]]:
        n = int(rate * a.seconds)
        runs_of: Dict[str, List[Dict[str, Any]]] = {k: [] for k in who}
        for run in range(a.runs):
            gfile = tmp / "grams.marshal"
            gfile.write_bytes(marshal.dumps(traffic(n, seed=run * 1000 + int(rate), data=a.fireflies, rate=rate)))
            order = who[run % len(who):] + who[:run % len(who)]  # rotate who goes first
            for k in order:
                runs_of[k].append(run_step(makers[k], gfile, n, rate, a.drain_timeout))
        got: Dict[str, Dict[str, Any]] = {}
        line = [f"offered {rate:8,.0f}/s"]
        for k in kinds:
            runs = runs_of.get(k)
            if not runs:
                line.append(f"{k}: -")
                continue
            ok = [keeps_up(r, a.max_lag) for r in runs]
            loss = statistics.median(r["loss_pct"] for r in runs)
            lag = statistics.median(r["lag_s"] for r in runs)
            got[k] = {"lossless_median": sum(lossless(r) for r in runs) * 2 > len(runs),
                      "keeps_up_median": sum(ok) * 2 > len(ok), "loss_pct_median": loss, "lag_s_median": lag,
                      "capacity_median": statistics.median(r["capacity"] for r in runs),
                      "loop_us_median": statistics.median(r["loop_us"] for r in runs),
                      "threads_us_median": statistics.median(r["threads_us"] for r in runs),
                      "side_us_median": statistics.median(r["side_us"] for r in runs), "runs": runs}
            line.append(f"{k}: loss {loss:5.2f}% lag {lag:4.1f} s ({sum(ok)}/{len(ok)} kept up) drops "
                        f"{statistics.median(r['kernel_drops'] for r in runs):,.0f}")
        print("  ".join(line), flush=True)
        return got

    for rate in rates:
        got = step(rate, [k for k in kinds if losing[k] < a.stop_after])
        res["rates"][int(rate)] = got
        for k, g in got.items():
            losing[k] = 0 if g["keeps_up_median"] else losing[k] + 1
    # Capacity: every receiver at one overloaded rate, whatever it did at the steps (the steps
    # stop a receiver early, and at a step just above its rate it is not saturated)
    print(f"capacity step ({a.capacity_rate:,.0f}/s offered, every receiver):", flush=True)
    res["capacity_step"] = cap_step = step(a.capacity_rate, kinds)
    summary: Dict[str, Dict[str, Any]] = {}
    for k in kinds:
        best = best_lossless = 0
        for rate, per in sorted(res["rates"].items()):
            got_k = per.get(k)
            if got_k is None:
                break
            below = [res["rates"][r2].get(k, {}) for r2 in res["rates"] if r2 < rate]
            if got_k["keeps_up_median"] and all(b.get("keeps_up_median", False) for b in below):
                best = rate
            if got_k["lossless_median"] and all(b.get("lossless_median", False) for b in below):
                best_lossless = rate
        c = cap_step[k]
        summary[k] = {"sustained": best, "lossless_4s": best_lossless, "capacity": c["capacity_median"],
                      "capacity_saturated": not c["keeps_up_median"], "loop_us": c["loop_us_median"],
                      "threads_us": c["threads_us_median"], "side_us": c["side_us_median"]}
    res["summary"] = summary
    print(f"sustained rate (kept up: lossless, done within {a.max_lag} s of the last datagram; median of runs), "
          "lossless step (a burst of one step lost nothing) and capacity (processed/s from the first datagram to "
          f"the end of the drain at {a.capacity_rate:,.0f}/s offered):")
    for k in kinds:
        s = summary[k]
        cap = f"{s['capacity']:,.0f}/s" + ("" if s["capacity_saturated"] else " (kept up: at least this)")
        print(f"  {k:9} sustained {s['sustained']:>7,}/s   lossless step {s['lossless_4s']:>7,}/s   capacity {cap}"
              f"   CPU per firefly: loop thread {s['loop_us']:.1f} us, other threads {s['threads_us']:.1f} us"
              + (f", ClickHouse server {s['side_us']:.1f} us" if s["side_us"] else ""))
    if "baseline" in summary:
        b = summary["baseline"]
        for k in kinds:
            if k != "baseline":
                print(f"  {k} / baseline: capacity {summary[k]['capacity'] / b['capacity']:.2f}x"
                      + (f", sustained {summary[k]['sustained'] / b['sustained']:.2f}x" if b["sustained"] else ""))
    return res


# --- queries ----------------------------------------------------------------------------

def fill(db: Path, flows: int) -> float:
    """`flows` flows over 30 days through the store's own ingest (parse, report, account)."""
    sys.path.insert(0, str(ROOT / "src"))
    from scitagd.collector.report import make_report
    from scitagd.collector.store import SQLiteStore
    from scitagd.firefly import parse

    t0 = time.monotonic()
    store = SQLiteStore(str(db))
    rnd = random.Random(5)
    now = time.time()
    tags = [(2, 3), (2, 16), (3, 4), (3, 1), (5, 10), (8, 1), (1, 1), (6, 2), (7, 1), (4, 1)]
    batch = []

    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"

    for i in range(flows):
        st = now - 30 * 86400 + i * (30 * 86400 / flows)
        en = min(now - 1, st + rnd.uniform(1, 3600))
        exp, act = tags[i % len(tags)]
        # 100 storage hosts, 2,000 remote ones, heavy hitters as in real traffic (the UNL archive:
        # 73 sources, 501 destinations, 1,328 pairs in 10,000 fireflies).
        src = f"2001:db8:{int(rnd.paretovariate(1.2)) % 100:x}::1"
        dst = f"2001:db8:ff::{int(rnd.paretovariate(0.9)) % 2000:x}"
        for state in ("start", "end"):
            body = (f'{{"version":1,"flow-lifecycle":{{"state":"{state}","start-time":"{iso(st)}"'
                    + (f',"end-time":"{iso(en)}"' if state == "end" else "") + "},"
                    f'"flow-id":{{"afi":"ipv6","src-ip":"{src}","dst-ip":"{dst}","protocol":"tcp",'
                    f'"src-port":{1024 + i % 60000},"dst-port":{1094 + i // 60000}}},'
                    f'"context":{{"experiment-id":{exp},"activity-id":{act}}},'
                    f'"usage":{{"received":100,"sent":{rnd.randint(1 << 20, 1 << 32) if state == "end" else 0}}}}}')
            batch.append(make_report(parse(body.encode()), f"se{i % 30}", False, now))
        if len(batch) >= 50000:
            store.ingest(batch)
            batch = []
    store.ingest(batch)
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


def queries(tmp: Path, flows: int, repeat: int, rcvbuf: int) -> Dict[str, Any]:
    db = tmp / "million.sqlite"
    fill_s = fill(db, flows)
    c = Collector(tmp, ROOT / "src", rcvbuf, db)
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


def context() -> Dict[str, Any]:
    """What the figures depend on: rmem_max, the load beside the run."""
    def read(p: str) -> str:
        try:
            return Path(p).read_text().strip()
        except OSError:
            return "?"

    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True,
                         text=True).stdout.splitlines()[:8]
    return {"rmem_max": read("/proc/sys/net/core/rmem_max"), "loadavg": read("/proc/loadavg"),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "top": [t.strip() for t in top]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0, help="per step")
    ap.add_argument("--rates", default="5000,10000,15000,20000,25000,30000,35000,40000,50000,60000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", help="a git worktree of the version to compare with (its src/ is used)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=TREE",
                    help="another collector version to run beside them (a worktree; its src/ is used)")
    ap.add_argument("--flush-interval", action="append", type=float, default=[], metavar="SECONDS",
                    help="also this tree with store.flushInterval SECONDS (the default is 0.2)")
    ap.add_argument("--only", default=None, help="receivers to run (default: baseline,current,ceiling and --also)")
    ap.add_argument("--receive-buffer", type=int, default=None,
                    help="bytes, the same for every receiver (default: net.core.rmem_max)")
    ap.add_argument("--stop-after", type=int, default=2, help="lossy steps in a row after which a receiver stops")
    ap.add_argument("--drain-timeout", type=float, default=90.0)
    ap.add_argument("--capacity-rate", type=float, default=30000.0,
                    help="fireflies/s offered to every receiver to measure what it processes when saturated")
    ap.add_argument("--max-lag", type=float, default=1.0,
                    help="seconds after the last datagram within which a receiver must be done to keep up")
    ap.add_argument("--fireflies", type=Path, default=DATA, help="folder of the real fireflies")
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-queries", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--clickhouse", action="store_true",
                    help="also this tree with store.kind clickhouse (a clickhouse-server started here, on CPU 0 "
                         "with the sender: the database server a collector writes to runs elsewhere)")
    a = ap.parse_args()
    if a.receive_buffer is None:
        # every receiver gets the same buffer: what SO_RCVBUF may ask for without CAP_NET_ADMIN
        a.receive_buffer = int(Path("/proc/sys/net/core/rmem_max").read_text())
    os.sched_setaffinity(0, {LOAD_CPU})
    res: Dict[str, Any] = {"context_before": context(), "receive_buffer": a.receive_buffer}
    print(f"rmem_max {res['context_before']['rmem_max']}, receive buffer asked {a.receive_buffer}, "
          f"load {res['context_before']['loadavg']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        if a.clickhouse:
            sys.path.insert(0, str(ROOT))
            from tests.collector_ch.chserver import ClickHouseServer

            srv = ClickHouseServer(tmp / "clickhouse")
            srv.start()  # inherits this process's CPU 0
            stack.callback(srv.stop)
            assert srv.proc is not None
            a.clickhouse = (srv.url, srv.proc.pid)
        else:
            a.clickhouse = None
        if not a.skip_ingest:
            res["ingest"] = ingest(tmp, a)
        if not a.skip_queries:
            print(f"queries over {a.flows} flows:", flush=True)
            res["queries"] = queries(tmp, a.flows, a.repeat, a.receive_buffer)
            print(f"  store {res['queries']['db_mb']:.0f} MB written in {res['queries']['fill_seconds']:.0f} s; "
                  f"collector RSS {res['queries']['rss_mb']:.0f} MB", flush=True)
    res["context_after"] = context()
    print(f"load after: {res['context_after']['loadavg']}; busiest processes: "
          + "; ".join(res["context_after"]["top"][:5]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
