# SPDX-License-Identifier: Apache-2.0
"""ClickHouse store: ingest rate, traffic rebuild cost, and dashboard queries on N generated
flows over D days, side by side with SQLiteStore on the same flows.

  python bench/clickhouse.py generate --flows 10000000 --days 30   # once: RowBinary + SQLite (long)
  python bench/clickhouse.py run                                    # load into 18.16, rebuild A and B, time queries
  python bench/clickhouse.py udp                                    # fireflies/s over UDP, 1 and 2 workers, no loss at 80%

Data live under --dir (default /var/tmp/scitagd-chbench), never in the repository. The
generator is seeded: the RowBinary files (for ClickHouse) and the SQLite file (written with
SQLiteStore.write, traffic spread with attribution.contributions) hold the same flows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from scitagd.collector.attribution import POINT, SPREAD  # noqa: E402
from scitagd.collector.ch.rows import FireflyRow, encode  # noqa: E402

EXPERIMENTS = [(2, 0.35), (3, 0.25), (4, 0.15), (5, 0.1), (6, 0.05), (7, 0.04), (8, 0.03), (9, 0.03)]
CHUNK = 1_000_000  # fireflies per RowBinary file


def generate(n: int, days: int, end: int, seed: int = 7) -> Iterator[Tuple[List[FireflyRow], bool]]:
    """Per flow: its fireflies (start, ongoing every 5 min for scitagd-like producers, end),
    relay copies, and whether it ended. Hosts are a pool of 3000 with skewed pairs."""
    rnd = random.Random(seed)
    hosts = [f"2001:db8:{i // 256:x}:{i % 256:x}::{i % 7 + 1:x}" if i % 3 else f"10.{i // 256}.{i % 256}.1"
             for i in range(3000)]
    reporters = [f"site{i // 20}.example.org" for i in range(3000)]
    exps = [e for e, _ in EXPERIMENTS]
    weights = [w for _, w in EXPERIMENTS]
    t0 = end - days * 86400
    span_us = (days * 86400 - 7200) * 1_000_000
    for _ in range(n):
        si = min(2999, int(rnd.paretovariate(1.2)) * 7 % 3000)
        di = rnd.randrange(3000)
        exp = rnd.choices(exps, weights)[0]
        act = rnd.randint(1, 6)
        start = t0 * 1_000_000 + rnd.randrange(span_us)
        dur = min(2 * 86400, rnd.lognormvariate(math.log(90), 1.6))
        total = int(min(1e13, rnd.lognormvariate(math.log(3e8), 2.0)))
        sent = total * 49 // 50
        recv = total - sent
        scitagd = rnd.random() < 0.4
        app = "scitagd" if scitagd else "xrootd"
        rep = reporters[si]
        src, dst, sport, dport = hosts[si], hosts[di], rnd.randint(1024, 65535), 1094
        proto = "tcp"
        first = rnd.randint(0, 800)
        ff = [FireflyRow(start, proto, src, sport, dst, dport, exp, act, "start", start, first // 2,
                         first - first // 2, app, rep)]
        end_us = start + int(dur * 1e6)
        if scitagd:
            t = start + 300_000_000
            while t < end_us:
                f = (t - start) / (end_us - start)
                ff.append(FireflyRow(start, proto, src, sport, dst, dport, exp, act, "ongoing", t,
                                     int(sent * f), int(recv * f), app, rep))
                t += 300_000_000
        ended = rnd.random() > 0.01
        if ended:
            ff.append(FireflyRow(start, proto, src, sport, dst, dport, exp, act, "end", end_us, sent, recv,
                                 app, rep))
        if rnd.random() < 0.03:  # a relay copy, the syslog header lost: the relay's address
            ff.append(ff[rnd.randrange(len(ff))]._replace(reporter="192.0.2.250"))
        yield ff, ended


def cmd_generate(a: argparse.Namespace) -> None:
    d = Path(a.dir)
    (d / "rowbinary").mkdir(parents=True, exist_ok=True)
    end = int(time.time()) // 86400 * 86400 + 86400  # flows up to the end of today (UTC)
    meta = {"flows": a.flows, "days": a.days, "end": end, "seed": 7}
    old = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    if a.what == "sqlite" and {k: old.get(k) for k in ("flows", "days", "seed")} == \
            {k: meta[k] for k in ("flows", "days", "seed")}:
        meta = old  # the same flows as the RowBinary files: their end and count stay
        end = meta["end"]
    (d / "meta.json").write_text(json.dumps(meta))
    if a.what in ("all", "rowbinary"):
        t = time.monotonic()
        buf: List[bytes] = []
        k = rows = 0
        for ff, _ in generate(a.flows, a.days, end):
            buf += [encode(r) for r in ff]
            if len(buf) >= CHUNK:
                (d / "rowbinary" / f"{k:04d}.bin").write_bytes(b"".join(buf))
                rows += len(buf)
                k, buf = k + 1, []
        if buf:
            (d / "rowbinary" / f"{k:04d}.bin").write_bytes(b"".join(buf))
            rows += len(buf)
        meta["fireflies"] = rows
        (d / "meta.json").write_text(json.dumps(meta))
        print(f"rowbinary: {rows} fireflies in {time.monotonic() - t:.0f} s")
    if a.what in ("all", "sqlite"):
        build_sqlite(d, a.flows, a.days, end)


def build_sqlite(d: Path, n: int, days: int, end: int) -> None:
    """The same fireflies through SQLiteStore.ingest (what the collector does with them), a
    flow's fireflies together, in batches of 5,000 (the collector's flush size at this rate)."""
    from scitagd.collector.report import Report
    from scitagd.collector.store import SQLiteStore

    path = d / "collector.sqlite"
    for p in d.glob("collector.sqlite*"):
        p.unlink()
    store = SQLiteStore(str(path), active_timeout=86400.0)
    t = time.monotonic()
    batch: List[Any] = []
    rows = 0
    for ff, _ in generate(n, days, end):
        for r in ff:
            batch.append(Report(r.proto, r.src, r.sport, r.dst, r.dport, r.start_us / 1e6, r.state,  # type: ignore[arg-type]
                                r.t_us / 1e6, r.sent, r.received, r.exp, r.act, r.app, r.reporter, r.reporter,
                                "192.0.2.1", r.t_us / 1e6))
        if len(batch) >= 5000:
            store.ingest(batch)
            rows += len(batch)
            batch = []
    if batch:
        store.ingest(batch)
        rows += len(batch)
    store.close()
    took = time.monotonic() - t
    print(f"sqlite: {n} flows, {rows} fireflies in {took:.0f} s ({rows / took:,.0f} fireflies/s), "
          f"{path.stat().st_size / 1e9:.2f} GB")


# --- run ---------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], runs: int) -> Tuple[float, Any]:
    out = None
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def queries(store: Any, end: int) -> Dict[str, Callable[[], Any]]:
    now = end - 3600
    return {
        "24 h per-minute series": lambda: store.timeseries(now - 86400, now, 60),
        "24 h per-minute series, one experiment": lambda: store.timeseries(now - 86400, now, 60, exp=2),
        "30-day totals by experiment": lambda: store.totals("experiment", now - 30 * 86400, now),
        "30-day totals by activity": lambda: store.totals("activity", now - 30 * 86400, now),
        "30-day series, hourly": lambda: store.timeseries(now - 30 * 86400, now, 3600),
        "top 10 host pairs, 7 days": lambda: store.totals("pair", now - 7 * 86400, now, limit=10),
        "recent flows (24 h, 100)": lambda: store.flows(now - 86400, now, limit=100),
        "flow lookup by host (24 h)": lambda: store.flows(now - 86400, now, host="10.0.3.1", limit=100),
        "flows of one experiment, ended (24 h)": lambda: store.flows(now - 86400, now, exp=3, state="ended", limit=100),
    }


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def cmd_run(a: argparse.Namespace) -> None:
    from scitagd.collector.ch.client import HttpClient, query
    from scitagd.collector.ch.rebuild import Rebuilder
    from scitagd.collector.ch.store import ClickHouseStore
    from scitagd.collector.store import SQLiteStore
    from tests.collector_ch.chserver import ClickHouseServer

    d = Path(a.dir)
    meta = json.loads((d / "meta.json").read_text())
    end = meta["end"]
    srv = ClickHouseServer(d / "server", http_port=a.port or None)
    srv.start()
    try:
        client = HttpClient(srv.url, timeout=600)
        loaded = int(query(client, "SELECT count() FROM system.tables WHERE database = 'bench' AND name = 'fireflies'")[0][0])
        store = ClickHouseStore(client, "bench", active_timeout=86400)
        if not loaded or a.reload:
            client.execute("DROP DATABASE IF EXISTS bench")
            store = ClickHouseStore(client, "bench", active_timeout=86400)
            files = sorted((d / "rowbinary").glob("*.bin"))
            assert srv.proc is not None
            # baseline in the same run: the same RowBinary into a table without views
            client.execute("DROP DATABASE IF EXISTS bench_plain")
            client.execute("CREATE DATABASE bench_plain")
            client.execute("CREATE TABLE bench_plain.fireflies AS bench.fireflies")
            cpu0, t0, n0 = server_cpu(srv.proc.pid), time.monotonic(), 0
            for f in files[:3]:
                client.insert("bench_plain.fireflies", f.read_bytes())
            n0 = int(query(client, "SELECT count() FROM bench_plain.fireflies")[0][0])
            took0, cpu_0 = time.monotonic() - t0, server_cpu(srv.proc.pid) - cpu0
            print(f"baseline ingest, no views: {n0} fireflies in {took0:.1f} s = {n0 / took0:,.0f} rows/s "
                  f"(server CPU {cpu_0 / n0 * 1e6:.2f} us/firefly)")
            client.execute("DROP DATABASE bench_plain")
            cpu0, t0 = server_cpu(srv.proc.pid), time.monotonic()
            c0 = resource.getrusage(resource.RUSAGE_SELF)

            for f in files:
                client.insert("bench.fireflies", f.read_bytes())
            took = time.monotonic() - t0
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            n = int(query(client, "SELECT count() FROM bench.fireflies")[0][0])
            cpu = server_cpu(srv.proc.pid) - cpu0
            print(f"ingest: {n} fireflies in {took:.1f} s = {n / took:,.0f} rows/s (server CPU {cpu:.1f} s = "
                  f"{cpu / n * 1e6:.2f} us/firefly, client CPU {c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime:.1f} s, "
                  f"with flows_mv, flows_host_mv and dirty_mv)")
        sq = SQLiteStore(str(d / "collector.sqlite")) if (d / "collector.sqlite").exists() and not a.no_sqlite else None
        results: Dict[str, Dict[str, float]] = {}
        if sq is not None:
            for name, fn in queries(sq, end).items():
                results.setdefault(name, {})["sqlite"] = timed(fn, 1 if a.quick else 3)[0]
        for method in (a.methods.split(",")):
            rb = Rebuilder(client, "bench", method)
            days = sorted({int(r[0]) for r in query(client, "SELECT DISTINCT toYYYYMMDD(start) FROM bench.fireflies")})
            per = []
            if not a.skip_rebuild:
                for day in days:
                    per.append(rb.rebuild_day(day))
                print(f"rebuild {method}: {len(days)} days, median {statistics.median(per):.2f} s/day, "
                      f"max {max(per):.2f} s, total {sum(per):.0f} s")
            for name, fn in queries(store, end).items():
                results.setdefault(name, {})[method] = timed(fn, 5)[0]
            if sq is not None and method == SPREAD:
                if sq.count() == meta["flows"]:
                    check_same(store, sq, end)
                else:
                    print(f"SQLite holds {sq.count()} of the {meta['flows']} flows (generation stopped): "
                          "its timings are a lower bound, results not compared")
        cols = [c for c in ("sqlite", POINT, SPREAD) if any(c in r for r in results.values())]
        print("\n| query | " + " | ".join(cols) + " | ratio sqlite/spread |")
        print("|---|" + "---:|" * (len(cols) + 1))
        for name, r in results.items():
            ratio = f"{r['sqlite'] / r[SPREAD]:.1f}x" if "sqlite" in r and SPREAD in r else ""
            print(f"| {name} | " + " | ".join(f"{r[c] * 1000:.0f} ms" if c in r else "" for c in cols) + f" | {ratio} |")
    finally:
        srv.stop()


def cmd_ingest(a: argparse.Namespace) -> None:
    """Server CPU per firefly with the full schema against a table without views (the same
    rows, alternating, median of --runs), and the collector's CPU per firefly to encode."""
    from scitagd.collector.ch.client import HttpClient, query
    from scitagd.collector.ch.rows import check, from_received
    from scitagd.collector.ch.schema import ddl
    from scitagd.firefly import parse
    from tests.collector_ch.chserver import ClickHouseServer

    d = Path(a.dir)
    files = sorted((d / "rowbinary").glob("*.bin"))[: a.files]
    data = [f.read_bytes() for f in files]
    srv = ClickHouseServer(Path(a.tmp), http_port=a.port or None)
    srv.start()
    try:
        assert srv.proc is not None
        client = HttpClient(srv.url, timeout=600)
        res: Dict[str, List[Tuple[float, float]]] = {"no views": [], "scitagd schema": []}
        for run in range(a.runs):
            for name in res:
                db = f"ing{run}{'p' if name == 'no views' else 's'}"
                if name == "no views":
                    client.execute(f"CREATE DATABASE {db}")
                    client.execute(ddl(db)[2].replace(f"{db}.fireflies", f"{db}.fireflies", 1))
                else:
                    for stmt in ddl(db):
                        client.execute(stmt)
                cpu0, t0 = server_cpu(srv.proc.pid), time.monotonic()
                for chunk in data:
                    client.insert(f"{db}.fireflies", chunk)
                took, cpu = time.monotonic() - t0, server_cpu(srv.proc.pid) - cpu0
                n = int(query(client, f"SELECT count() FROM {db}.fireflies")[0][0])
                res[name].append((n / took, cpu / n * 1e6))
                client.execute(f"DROP DATABASE {db}")
        base = statistics.median(c for _, c in res["no views"])
        for name, xs in res.items():
            rate, cpu = statistics.median(r for r, _ in xs), statistics.median(c for _, c in xs)
            print(f"{name}: {rate:,.0f} rows/s, server CPU {cpu:.2f} us/firefly ({cpu / base:.1f}x no views)")
    finally:
        srv.stop()
    wire = (b'<134>1 - host.example.org xrootd - firefly-json - {"version":1,"flow-lifecycle":{"state":"end",'
            b'"current-time":"2026-11-25T16:34:07.449149+00:00","start-time":"2026-11-25T16:34:07.373828+00:00",'
            b'"end-time":"2026-11-25T16:34:07.449149+00:00"},"usage":{"received":289,"sent":20992483},'
            b'"netlink":{"rtt":0.921},"context":{"experiment-id":1,"activity-id":1,"application":"xrdcp"},'
            b'"flow-id":{"afi":"ipv4","src-ip":"127.0.0.1","dst-ip":"127.0.0.1","protocol":"tcp",'
            b'"src-port":21094,"dst-port":39042}}')  # XRootD 5.5.3's, from shared/data/fireflies/producers.jsonl
    recs = [parse(wire)] * 100_000
    t = time.process_time()
    for _ in recs:
        parse(wire)
    t_parse = (time.process_time() - t) / len(recs)
    t = time.process_time()
    for r in recs:
        row = from_received(r, "192.0.2.1")
        check(row)
        encode(row)
    t_enc = (time.process_time() - t) / len(recs)
    print(f"collector CPU per firefly: parse {t_parse * 1e6:.2f} us (existing), to row + check + RowBinary "
          f"{t_enc * 1e6:.2f} us")


# --- udp: the collector's own ingest into ClickHouse, 1 and 2 workers ----------------------

UDP_SENDER = r"""
import json, marshal, socket, sys, time
port, rate, nsock = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
grams = marshal.load(open(sys.argv[4], "rb"))
socks = []
for _ in range(nsock):  # distinct source ports: the kernel hashes each to one worker's socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    socks.append(s)
dest = ("127.0.0.1", port)
n = len(grams); i = 0
t0 = time.monotonic()
while i < n:
    due = min(n, int((time.monotonic() - t0) * rate) + 1)
    while i < due:
        socks[i % nsock].sendto(grams[i], dest); i += 1
    if i < n:
        time.sleep(0.0005)
print(json.dumps({"sent": n, "seconds": time.monotonic() - t0, "t0": t0}))
"""


def proc_cpu(pid: int) -> float:
    try:
        return server_cpu(pid)
    except OSError:
        return 0.0


def port_drops(port: int) -> Tuple[int, int]:
    """(bytes queued, datagrams dropped) over every socket on `port` (all the workers' sockets:
    the port is this run's own), from /proc/net/udp."""
    from scitagd.netutil import udp_table

    mine = [u for u in udp_table() if u.port == port]
    return sum(u.queued for u in mine), sum(u.drops for u in mine)


def udp_step(tmp: Path, url: str, db: str, workers: int, gfile: Path, n: int, rate: float) -> Dict[str, Any]:
    """One collector (collector.workers N, ClickHouse store), one sender process at `rate`;
    waits for the drain (socket queues empty, nothing pending or buffered, counters still 1 s)."""
    import subprocess
    import urllib.request

    sys.path.insert(0, str(REPO / "bench"))
    from collector import free_port  # bench/collector.py

    def metrics() -> Dict[str, float]:
        out: Dict[str, float] = {}
        for line in urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=30).read().decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    udp, http = free_port(2), free_port()
    conf = tmp / f"{db}.yaml"
    conf.write_text(f"""
collector:
  udp: {{bindAddresses: ["127.0.0.1"], port: {udp}, receiveBuffer: {16 << 20}}}
  http: {{port: {http}}}
  workers: {workers}
  store: {{kind: clickhouse, url: '{url}', database: {db}, rebuild: false, retentionDays: 36500}}
""")
    log = open(tmp / f"{db}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "scitagd", "collector", "--config", str(conf)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                h = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2).read())
                if all(w["alive"] for w in h.get("workers", [])):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((tmp / f"{db}.log").read_text()[-3000:])
            time.sleep(0.2)
        pids = [w["pid"] for w in h.get("workers", [])] or [proc.pid]
        _, d0 = port_drops(udp)
        cpu0 = {p: proc_cpu(p) for p in [proc.pid, *pids]}
        r = subprocess.run([sys.executable, "-c", UDP_SENDER, str(udp), str(rate), "64", str(gfile)],
                           capture_output=True, text=True, timeout=n / rate * 5 + 120)
        if r.returncode:
            raise RuntimeError(r.stderr)
        snt = json.loads(r.stdout)
        last = None
        still = busy_end = time.monotonic()
        deadline = time.monotonic() + 120
        while True:
            queued, drops = port_drops(udp)
            m = metrics()
            acc = sum(v for k, v in m.items() if k.startswith("scitagd_collector_fireflies_total{"))
            rej = sum(v for k, v in m.items() if k.startswith("scitagd_collector_rejected_total{"))
            inside = m.get("scitagd_collector_pending_rows", 0) + m.get("scitagd_collector_clickhouse_buffered", 0)
            written = m.get("scitagd_collector_clickhouse_written_total", 0)
            now = time.monotonic()
            # busy until the last INSERT is done, not until the last firefly was counted (a
            # worker counts a firefly before its batch is written: bench/collector.py's baseline)
            if (acc, rej, written) != last:
                last, still, busy_end = (acc, rej, written), now, now
            if (queued == 0 and inside == 0 and now - still >= 1.0) or now > deadline:
                break
            time.sleep(0.2)
        cpu = {p: proc_cpu(p) - c for p, c in cpu0.items()}
        h = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=10).read())
        share = [int(w["datagrams"]) for w in h.get("workers", [])] or [int(acc + rej)]  # each worker's datagrams
    finally:
        proc.send_signal(15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    processed = acc + rej
    worker_cpu = [cpu[p] for p in pids]
    return {"sent": snt["sent"], "offered": snt["sent"] / snt["seconds"], "accounted": acc, "rejected": rej,
            "kernel_drops": drops - d0, "written": written, "lost": m.get("scitagd_collector_store_dropped_total", 0),
            "capacity": processed / max(1e-9, busy_end - snt["t0"]),
            "cpu_us_per_firefly": sum(worker_cpu) / max(1, processed) * 1e6,
            "cpu_us_per_firefly_per_worker": [c / max(1, n) * 1e6 for c, n in zip(worker_cpu, share)],
            "share": share,
            "parent_cpu_us": cpu[proc.pid] / max(1, processed) * 1e6 if pids != [proc.pid] else 0.0}


def cmd_udp(a: argparse.Namespace) -> None:
    """Capacity with 1 and 2 workers (an overloaded step: processed per second from the first
    datagram to the end of the drain), then a run at 80% of it that must lose nothing."""
    import marshal
    import tempfile

    sys.path.insert(0, str(REPO / "bench"))
    from collector import traffic  # bench/collector.py: real producers' fireflies as distinct flows

    from tests.collector_ch.chserver import ClickHouseServer

    data = Path(os.environ.get("SCITAGD_SHARED", REPO.parent / "shared")) / "data" / "fireflies"
    with tempfile.TemporaryDirectory(prefix="scitagd-chudp-") as td:
        tmp = Path(td)
        srv = ClickHouseServer(tmp / "server")
        srv.start()
        try:
            assert srv.proc is not None
            caps: Dict[int, List[Dict[str, Any]]] = {}
            k = 0
            for run in range(a.runs):
                n = int(a.overload * a.seconds)
                gfile = tmp / "grams.marshal"
                gfile.write_bytes(marshal.dumps(traffic(n, seed=run, data=data, rate=a.overload)))
                for w in (1, 2) if run % 2 == 0 else (2, 1):
                    c0 = proc_cpu(srv.proc.pid)
                    r = udp_step(tmp, srv.url, f"u{k}", w, gfile, n, a.overload)
                    r["server_cpu_us"] = (proc_cpu(srv.proc.pid) - c0) / max(1, r["accounted"]) * 1e6
                    k += 1
                    caps.setdefault(w, []).append(r)
                    print(f"run {run} workers {w}: offered {r['offered']:,.0f}/s, processed {r['capacity']:,.0f}/s, "
                          f"kernel drops {r['kernel_drops']:,}, CPU {r['cpu_us_per_firefly']:.1f} us/firefly "
                          f"(per worker {', '.join(f'{x:.1f}' for x in r['cpu_us_per_firefly_per_worker'])}, "
                          f"datagrams {'/'.join(str(x) for x in r['share'])}), "
                          f"parent {r['parent_cpu_us']:.1f} us/firefly, ClickHouse server {r['server_cpu_us']:.1f} "
                          "us/firefly", flush=True)
            print("\n| workers | capacity (fireflies/s, median) | CPU us/firefly, all workers | per worker | "
                  "ClickHouse server us/firefly | at 80%: sent | accounted | written | kernel drops |")
            print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
            base = statistics.median(r["capacity"] for r in caps[1])
            for w in (1, 2):
                cap = statistics.median(r["capacity"] for r in caps[w])
                rate = 0.8 * cap
                n = int(rate * a.seconds)
                gfile = tmp / "grams80.marshal"
                gfile.write_bytes(marshal.dumps(traffic(n, seed=100 + w, data=data, rate=rate)))
                r80 = udp_step(tmp, srv.url, f"u{k}", w, gfile, n, rate)
                k += 1
                per = [statistics.median(r["cpu_us_per_firefly_per_worker"][i] for r in caps[w]) for i in range(w)]
                print(f"| {w} | {cap:,.0f} ({cap / base:.2f}x) | "
                      f"{statistics.median(r['cpu_us_per_firefly'] for r in caps[w]):.1f} | "
                      f"{', '.join(f'{x:.1f}' for x in per)} | "
                      f"{statistics.median(r['server_cpu_us'] for r in caps[w]):.1f} | "
                      f"{r80['sent']:,} at {r80['offered']:,.0f}/s | {r80['accounted']:,.0f} | {r80['written']:,.0f} | "
                      f"{r80['kernel_drops']:,} |", flush=True)
        finally:
            srv.stop()


def check_same(ch: Any, sq: Any, end: int) -> None:
    now = end - 3600
    a = sorted(ch.totals("activity", now - 40 * 86400, end + 86400, limit=1000), key=lambda r: (r["exp"], r["act"]))
    b = sorted(sq.totals("activity", now - 40 * 86400, end + 86400, limit=1000), key=lambda r: (r["exp"], r["act"]))
    print("same 40-day totals by activity on ClickHouse (spread) and SQLite:", a == b)
    s1 = ch.timeseries(now - 86400, now, 60)
    s2 = sorted(sq.timeseries(now - 86400, now, 60))
    print("same 24 h per-minute series:", sorted(s1) == s2, len(s1), "points")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/var/tmp/scitagd-chbench")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--flows", type=int, default=10_000_000)
    g.add_argument("--days", type=int, default=30)
    g.add_argument("--what", choices=("all", "rowbinary", "sqlite"), default="all")
    g.set_defaults(func=cmd_generate)
    r = sub.add_parser("run")
    r.add_argument("--port", type=int, default=0)
    r.add_argument("--reload", action="store_true")
    r.add_argument("--quick", action="store_true", help="SQLite queries once (they take seconds)")
    r.add_argument("--skip-rebuild", action="store_true")
    r.add_argument("--no-sqlite", action="store_true")
    r.add_argument("--methods", default=f"{POINT},{SPREAD}")
    r.set_defaults(func=cmd_run)
    i = sub.add_parser("ingest")
    i.add_argument("--files", type=int, default=2, help="RowBinary files of 1M fireflies")
    i.add_argument("--runs", type=int, default=3)
    i.add_argument("--port", type=int, default=0)
    i.add_argument("--tmp", default="/var/tmp/scitagd-chbench/ingest-server")
    i.set_defaults(func=cmd_ingest)
    u = sub.add_parser("udp")
    u.add_argument("--runs", type=int, default=3)
    u.add_argument("--seconds", type=float, default=8.0, help="sending time per step")
    u.add_argument("--overload", type=float, default=40000.0, help="offered rate for the capacity steps")
    u.set_defaults(func=cmd_udp)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
