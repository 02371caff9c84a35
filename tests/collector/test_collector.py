# SPDX-License-Identifier: Apache-2.0
"""The collector for real: a subprocess on loopback, fed by real producers, checked through its
API, its SQLite file and its metrics."""

from __future__ import annotations

import gzip
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from scitagd.lab.util import stop_process, wait_for
from scitagd.runtime import GC_THRESHOLD

from ..conftest import ARCHIVE, PRODUCERS, DaemonProc, free_port, http, metrics, require_shared


class CollectorProc:
    def __init__(self, tmp: Path, extra: str = "", name: str = "c") -> None:
        self.tmp = tmp
        self.udp = free_port(socket.SOCK_DGRAM)
        self.tcp = free_port()
        self.http = free_port()
        self.db = tmp / f"{name}.sqlite"
        self.conf = tmp / f"{name}.yaml"
        self.conf.write_text(f"""
collector:
  udp: {{bindAddresses: ["::"], port: {self.udp}}}
  syslogTcp: {{bindAddress: "127.0.0.1", port: {self.tcp}}}
  store: {{path: {self.db}, retentionDays: 36500, flushInterval: 0.05}}
  http: {{port: {self.http}}}
  trustedRelays: ["127.0.0.0/8", "::1/128"]  # the tests' senders: their syslog HOSTNAME is believed
{extra}
""")
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "scitagd", "collector", "--config",
                                          str(self.conf)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if http("GET", self.url("/healthz"))[0] == 200:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(self.log.read_text())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def api(self, path: str) -> Any:
        status, body = http("GET", self.url(path))
        assert status == 200, body
        return body

    def send(self, data: bytes, host: str = "127.0.0.1") -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.sendto(data, (host, self.udp))

    def metrics(self) -> Dict[str, float]:
        return metrics(self.http)

    def wait(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        wait_for(cond, timeout, detail=lambda: f"log:\n{self.log.read_text()}")

    def stop(self) -> int:
        assert self.proc is not None
        stop_process(self.proc, 10)
        return int(self.proc.returncode)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Callable[..., CollectorProc]]:
    made: List[CollectorProc] = []

    def make(extra: str = "", name: str = "c") -> CollectorProc:
        c = CollectorProc(tmp_path, extra, name)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def samples() -> List[Dict[str, Any]]:
    return [json.loads(line) for line in require_shared(PRODUCERS).read_text().splitlines() if line]


def test_import_unl_archive(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    db = tmp_path / "c.sqlite"
    conf.write_text(f"collector:\n  store: {{path: {db}, retentionDays: 36500}}\n")
    r = subprocess.run([sys.executable, "-m", "scitagd", "collector", "import", "--config", str(conf), "--json",
                        "--quiet", str(require_shared(ARCHIVE))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["lines"], s["imported"], s["rejected"]) == (10_000, 9_999, {"no_json": 1})
    assert "syslog-ng" in s["samples"][0]["error"] and s["samples"][0]["line"] == 1404
    # An independent count of the file: regular expressions, no scitagd code.
    indep: Counter[str] = Counter()
    ends = set()
    for raw in gzip.open(ARCHIVE).read().decode().splitlines():
        e = re.search(r'"experiment-id": (\d+)', raw)
        a = re.search(r'"activity-id": (\d+)', raw)
        st = re.search(r'"state": "(\w+)"', raw)
        if e and a and st:
            indep[f"{e.group(1)}/{a.group(1)}/{st.group(1)}"] += 1
            if st.group(1) == "end":
                fid = json.loads(raw[raw.index("{"):])["flow-id"]
                start = re.search(r'"start-time": "([^"]+)"', raw)
                ends.add((fid["src-ip"], fid["src-port"], fid["dst-ip"], fid["dst-port"], start.group(1) if start else ""))
    assert s["fireflies"] == dict(indep)
    assert s["states"] == {"start": sum(v for k, v in indep.items() if k.endswith("/start")),
                           "end": sum(v for k, v in indep.items() if k.endswith("/end"))}
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ended = con.execute("SELECT COUNT(*) FROM flows WHERE state = 'ended'").fetchone()[0]
        assert ended == len(ends)
        per_tag = dict(((e, a), n) for e, a, n in con.execute("SELECT exp, act, SUM(flows) FROM traffic GROUP BY 1, 2"))
        hourly = dict(((e, a), n) for e, a, n in con.execute("SELECT exp, act, SUM(flows) FROM traffic_hour GROUP BY 1, 2"))
        assert hourly == per_tag  # the roll-up long ranges read agrees with the minutes
    starts_by_tag: Counter[tuple[int, int]] = Counter()
    for k, v in indep.items():
        e, a, st = k.split("/")
        if st == "start":
            starts_by_tag[(int(e), int(a))] += v
    # Every flow counted once in the per-minute table: started ones plus ends whose start is not in the file.
    assert sum(per_tag.values()) >= sum(starts_by_tag.values())


def test_every_producer_is_accounted(collector: Callable[..., CollectorProc]) -> None:
    c = collector()
    # the process users run collects garbage rarely (runtime.collect_rarely: its ingest figures)
    assert "gc_threshold=" + ",".join(map(str, GC_THRESHOLD)) in c.log.read_text()
    wires = [s["wire"].encode() for s in samples()]
    for i, w in enumerate(wires):
        c.send(w, "::1" if i % 2 else "127.0.0.1")  # over IPv6 and IPv4
    c.send(wires[1])  # the same firefly again (from a relay): counted once
    c.wait(lambda: c.metrics().get('scitagd_collector_fireflies_total{outcome="duplicate"}', 0) >= 1)
    time.sleep(0.2)
    flows = c.api("/api/v1/flows?from=0&limit=100")["flows"]
    by_port = {(f["src"], f["sport"], f["dport"]): f for f in flows}
    x1 = by_port[("127.0.0.1", 21094, 39042)]  # XRootD 5.5.3 GET, scitag 65
    assert (x1["state"], x1["experiment"], x1["activity"], x1["sent"]) == ("ended", "default", "default", 20992483)
    assert x1["reporter"] == "vm" and x1["duration"] == pytest.approx(0.075321, abs=1e-5)
    assert x1["throughput_bps"] == pytest.approx((20992483 + 289) * 8 / 0.075321, rel=1e-3)
    x2 = by_port[("127.0.0.1", 21094, 39048)]
    assert (x2["experiment"], x2["activity"], x2["received"]) == ("atlas", "perfSONAR", 20992346)
    xv6 = by_port[("::1", 57236, 1094)]
    assert (xv6["experiment"], xv6["activity"], xv6["sent"]) == ("atlas", "Production Output", 524801863)
    dc = by_port[("2001:db8::10", 44321, 2880)]
    assert dc["reporter"] == "2001:db8::10" and dc["sent"] == 1048576 and dc["state"] == "ended"
    old = by_port[("192.0.2.10", 33000, 1094)]  # header-less dCache: the sender is the reporter
    # a start from 2023 and nothing since: silent for longer than activeTimeout by its own times
    assert old["state"] == "expired" and old["reporter"] in ("127.0.0.1", "::1")
    odd = by_port[("10.99.0.1", 4321, 0)]  # flowd-go test data: experiment 3333 kept as a number
    assert odd["experiment"] == "3333"
    m = c.metrics()
    assert m['scitagd_collector_fireflies_total{outcome="duplicate"}'] == 1
    assert m['scitagd_collector_bytes_total{activity="default",activity_id="1",experiment="default",experiment_id="1"}'] == 20992483 + 289
    ts = c.api("/api/v1/timeseries?from=1773000000&to=1774000000&host=2001:db8::10")
    assert [(x["name"], sum(v for _, v in x["points"])) for x in ts["series"]] == [("atlas", 1048576)]
    totals = c.api("/api/v1/totals?from=0&by=experiment")["totals"]
    atlas = next(t for t in totals if t["experiment"] == "atlas")
    assert atlas["bytes"] == 20992346 + 345 + 524801863 + 2278 + 1048576


def test_syslog_over_tcp(collector: Callable[..., CollectorProc]) -> None:
    c = collector()
    w = [s["wire"].encode() for s in samples()]
    with socket.create_connection(("127.0.0.1", c.tcp)) as s:
        # octet counting (RFC 6587 3.4.1), split across writes
        framed = f"{len(w[0])} ".encode() + w[0] + f"{len(w[1])} ".encode() + w[1]
        s.sendall(framed[:50])
        time.sleep(0.1)
        s.sendall(framed[50:])
        # newline framing, as rsyslog's omfwd sends by default
        s.sendall(w[7] + b"\n" + w[8] + b"\n")
    c.wait(lambda: c.metrics().get('scitagd_collector_datagrams_total{transport="tcp"}', 0) == 4)
    c.wait(lambda: len(c.api("/api/v1/flows?from=0&state=ended")["flows"]) == 2)


def test_invalid_input_is_counted_and_sampled(collector: Callable[..., CollectorProc]) -> None:
    c = collector()
    c.send(b"garbage")
    c.send(b'<134>1 - h x - firefly-json - {"version":1,')
    c.send(samples()[0]["wire"].encode())
    c.wait(lambda: c.metrics().get('scitagd_collector_fireflies_total{outcome="start"}', 0) == 1)
    rej = c.api("/api/v1/rejected")
    assert rej["counts"] == {"no_json": 1, "truncated": 1}
    assert [s["reason"] for s in rej["samples"]] == ["no_json", "truncated"]
    assert rej["samples"][0]["data"] == "garbage"
    status, body = http("GET", c.url("/api/v1/flows?experiment=nosuch"))
    assert status == 400 and body["param"] == "experiment"
    assert "Traceback" not in c.log.read_text()


def test_local_only_flows_dropped(collector: Callable[..., CollectorProc]) -> None:
    c = collector('  localNetworks: ["127.0.0.0/8", "::1/128"]\n  dropLocalOnly: true')
    w = [s["wire"].encode() for s in samples()]
    c.send(w[0])  # 127.0.0.1 -> 127.0.0.1: dropped
    c.send(w[9])  # 2001:db8::10 -> 2001:db8::20: kept
    c.wait(lambda: c.metrics().get('scitagd_collector_fireflies_total{outcome="local_only"}', 0) == 1)
    c.wait(lambda: len(c.api("/api/v1/flows?from=0")["flows"]) == 1)


def test_relay_and_loop_protection(collector: Callable[..., CollectorProc], udp_receiver: Any) -> None:
    downstream = udp_receiver("127.0.0.1")
    c = collector(f'  relay: ["127.0.0.1:{downstream.port}"]')
    w = samples()[0]["wire"].encode()
    c.send(w)
    assert downstream.recv(1) == [w]  # verbatim
    # The regional collector sends it back (a loop): it is neither relayed nor counted again.
    c.send(w)
    assert downstream.quiet() == []
    c.wait(lambda: c.metrics().get("scitagd_collector_relay_loops_total", 0) == 1)
    assert c.metrics()['scitagd_collector_fireflies_total{outcome="start"}'] == 1


def test_scitagd_firefly_sink_reaches_collector(collector: Callable[..., CollectorProc],
                                                run_daemon: Callable[..., DaemonProc]) -> None:
    c = collector()
    api = free_port()
    run_daemon(f"""
plugins:
  api: {{bindPort: {api}}}
backends:
  firefly: {{sendToPeer: false, collectors: ["127.0.0.1:{c.udp}"], hostname: storage.test}}
""")
    flow = {"state": "start", "protocol": "tcp", "src-ip": "::1", "src-port": 1094, "dst-ip": "::1",
            "dst-port": 50000, "experiment": "cms", "activity": "Data Challenge"}
    assert http("POST", f"http://127.0.0.1:{api}/api/v1/flows", flow)[0] == 202
    c.wait(lambda: len(c.api("/api/v1/active")["flows"]) == 1)
    a = c.api("/api/v1/active")["flows"][0]
    assert (a["experiment"], a["activity"], a["reporter"]) == ("cms", "Data Challenge", "storage.test")
    assert http("POST", f"http://127.0.0.1:{api}/api/v1/flows", {**flow, "state": "end"})[0] == 202
    c.wait(lambda: len(c.api("/api/v1/flows?from=0&state=ended")["flows"]) == 1)
    assert c.api("/api/v1/active")["count"] == 0


def test_real_xrootd_to_collector(collector: Callable[..., CollectorProc]) -> None:
    import shutil
    import tempfile

    if not (shutil.which("xrootd") and shutil.which("xrdcp")):
        pytest.skip("xrootd-server/xrootd-client not installed")
    from ..core.test_xrootd import start_xrootd

    c = collector()
    base = Path(tempfile.mkdtemp(prefix="scitagd-xrd-"))
    base.chmod(0o755)
    xport = free_port()
    xrd = start_xrootd(base, xport, f"127.0.0.1:{c.udp}")
    try:
        r = subprocess.run(["xrdcp", "-f", "-s", f"root://127.0.0.1:{xport}//data/file1?scitag.flow=206",
                            str(base / "out")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        c.wait(lambda: len(c.api("/api/v1/flows?from=-1h&state=ended")["flows"]) == 1)
        f = c.api("/api/v1/flows?from=-1h&state=ended")["flows"][0]
        assert (f["experiment"], f["activity"], f["app"]) == ("cms", "Analysis Input", "xrdcp")
        assert f["sport"] == xport and f["sent"] >= 3 << 20
    finally:
        xrd.terminate()
        xrd.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def test_restart_while_datagrams_arrive(collector: Callable[..., CollectorProc]) -> None:
    c = collector()
    stop = threading.Event()
    sent: List[int] = []

    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # active: recent by its own time

    def sender() -> None:
        i = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop.is_set():
                w = ('<134>1 - gen scitagd - firefly-json - {"version":1,"flow-lifecycle":{"state":"start",'
                     f'"start-time":"{started_at}"}},"flow-id":{{"afi":"ipv4","src-ip":"127.0.0.1",'
                     f'"dst-ip":"127.0.0.2","protocol":"tcp","src-port":{1 + i % 60000},"dst-port":{1000 + i // 60000}}},'
                     '"context":{"experiment-id":2,"activity-id":1}}').encode()
                s.sendto(w, ("127.0.0.1", c.udp))
                sent.append(i)
                i += 1
                time.sleep(0.0005)

    t = threading.Thread(target=sender)
    t.start()
    try:
        time.sleep(1.0)
        assert c.stop() == 0
        first = re.findall(r"flows_started=(\d+)", c.log.read_text())
        time.sleep(0.3)
        c.start()
        time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    time.sleep(0.3)
    assert c.stop() == 0
    started = [int(x) for x in re.findall(r"flows_started=(\d+)", c.log.read_text())]
    assert len(started) == 2 and int(first[0]) == started[0] > 500
    with sqlite3.connect(c.db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = con.execute("SELECT COUNT(*) FROM flows").fetchone()[0]
    # Everything either instance accounted is in the store; nothing else was invented.
    assert stored == sum(started) <= len(sent)
    # Flows active before the restart are still known after it.
    c.start()
    assert c.api("/api/v1/active")["count"] == stored


def test_prometheus_server_scrapes_the_collector(collector: Callable[..., CollectorProc], tmp_path: Path) -> None:
    import shutil

    prom = shutil.which("prometheus")
    if not prom:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    c = collector()
    for s in samples()[:4]:
        c.send(s["wire"].encode())
    c.wait(lambda: c.metrics().get('scitagd_collector_fireflies_total{outcome="end"}', 0) == 2)
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: scitagd-collector
    static_configs: [{{targets: ["127.0.0.1:{c.http}"]}}]
""")
    p = subprocess.Popen([prom, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        q = (f"http://127.0.0.1:{port}/api/v1/query?query="
             + "scitagd_collector_bytes_total%7Bexperiment%3D%22atlas%22%7D")
        value = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and value is None:
            try:
                status, body = http("GET", q)
                res = body["data"]["result"] if status == 200 else []
                if res:
                    value = float(res[0]["value"][1])
            except OSError:
                pass
            time.sleep(0.5)
        assert value == 20992346 + 345, value
    finally:
        p.terminate()
        p.wait(10)


def test_grafana_dashboard_uses_exported_metrics(collector: Callable[..., CollectorProc]) -> None:
    from ..grafana_check import check_structure, exported, load, metric_names

    dash = load("scitagd-collector.json")
    check_structure(dash)
    used = metric_names(dash)
    assert len(used) >= 10
    c = collector()
    for s in samples()[:5]:  # two whole transfers and one that is still going on
        c.send(s["wire"].encode())
    c.send(b"garbage")
    with socket.create_connection(("127.0.0.1", c.tcp)) as conn:  # a TCP sender, to see its metrics
        conn.sendall(samples()[5]["wire"].encode() + b"\n")
    c.wait(lambda: c.metrics().get('scitagd_collector_fireflies_total{outcome="end"}', 0) == 2)
    c.wait(lambda: c.metrics().get('scitagd_collector_datagrams_total{transport="tcp"}', 0) >= 1)
    have = exported(c.metrics())
    # counters that have seen nothing yet are exported without samples; take them from the text
    text = urllib.request.urlopen(c.url("/metrics")).read().decode()
    have |= {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    have |= {n + "_total" for n in list(have)}
    assert used <= have, used - have


def test_collector_reload(collector: Callable[..., CollectorProc], udp_receiver: Any) -> None:
    c = collector()
    w = samples()[0]["wire"].encode()
    c.send(w)
    c.wait(lambda: c.metrics().get('scitagd_collector_fireflies_total{outcome="start"}', 0) == 1)
    downstream = udp_receiver("127.0.0.1")
    text = c.conf.read_text()
    c.conf.write_text(text.replace("  http:", f'  relay: ["127.0.0.1:{downstream.port}"]\n  http:'))
    assert c.proc is not None
    c.proc.send_signal(signal.SIGHUP)
    c.wait(lambda: "scitagd.collector reloaded" in c.log.read_text())
    assert "changed=relay" in c.log.read_text()
    w2 = samples()[1]["wire"].encode()
    c.send(w2)
    assert downstream.recv(1) == [w2]  # the new relay list is in force
    assert c.metrics()['scitagd_collector_fireflies_total{outcome="start"}'] == 1  # accounting went on
    c.conf.write_text(text.replace("retentionDays", "retentionDayz"))
    c.proc.send_signal(signal.SIGHUP)
    c.wait(lambda: "config not reloaded" in c.log.read_text())
    assert c.proc.poll() is None and "Traceback" not in c.log.read_text()
