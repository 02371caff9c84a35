# SPDX-License-Identifier: Apache-2.0
"""`scitagd demo`: the daemon for real, on loopback, with every source and sink it has.

It starts `scitagd run` as a child process, reports flows through the REST API, the named pipe
and a firefly, shows the fireflies the transfer's peer and a collector receive, the metrics,
then stops the daemon with SIGTERM. Nothing leaves the machine: peers are 127.0.0.x.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..firefly import parse
from .util import drain, free_port, post, wait_http

__all__ = ["DEMO_FLOWS", "DemoCollector", "loopback_demo", "main", "marking_demo"]


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(args: argparse.Namespace | None = None) -> int:
    col = DemoCollector()
    try:
        rc = loopback_demo(args, col.udp)
        if rc == 0 and not (args and getattr(args, "keep", False)):
            rc = marking_demo(col.udp)
        if rc == 0:
            rc = col.show()
    finally:
        col.stop()
    return rc


class DemoCollector:
    """Part 3's collector, started first so that both other parts report to it."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="scitagd-demo-collector-"))
        self.udp = free_port(socket.SOCK_DGRAM)
        self.http = free_port()
        conf = self.tmp / "collector.yaml"
        conf.write_text(f"""\
collector:
  udp: {{bindAddresses: ["::"], port: {self.udp}}}
  store: {{path: {self.tmp}/collector.sqlite}}
  http: {{bindAddress: 127.0.0.1, port: {self.http}}}
""")
        self.log = self.tmp / "collector.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "scitagd", "collector", "--config", str(conf)],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{self.http}/healthz")

    def show(self) -> int:
        url = f"http://127.0.0.1:{self.http}/"
        _say("part 3: the collector received every firefly of parts 1 and 2")
        time.sleep(0.5)
        with urllib.request.urlopen(url + "api/v1/totals?from=-1h&by=activity") as r:
            for t in json.loads(r.read())["totals"]:
                print(f"  {t['experiment']}/{t['activity']}: {t['flows']} flows, {t['bytes']} bytes")
        print("  (bytes are what fireflies report in `usage`; these flows were announced by API and named-pipe\n"
              "   lines, which carry no byte counts: part 2's marked bytes above are the kernel's counters)")
        with urllib.request.urlopen(url + "api/v1/flows?from=-1h&limit=20") as r:
            flows = json.loads(r.read())["flows"]
        print(f"  {len(flows)} flows stored, e.g.:")
        for f in flows[:4]:
            print(f"    {f['experiment']}/{f['activity']} {f['src']}:{f['sport']} -> {f['dst']}:{f['dport']} "
                  f"{f['state']}, reported by {f['reporter']}")
        print(f"\ndashboard: {url}?range=3600")
        if sys.stdin is not None and sys.stdin.isatty():
            input("press Enter to stop the collector and end the demo ")
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def loopback_demo(args: argparse.Namespace | None = None, collector_port: int = 0) -> int:
    """Part 1: every source and sink of the daemon, on loopback."""
    keep = bool(args and getattr(args, "keep", False))
    tmp = Path(tempfile.mkdtemp(prefix="scitagd-demo-"))
    api_port, prom_port = free_port(), free_port()
    ff_port = free_port(socket.SOCK_DGRAM)
    peer_host = "127.0.0.2"
    peer_port = free_port(socket.SOCK_DGRAM, peer_host)
    coll_port = free_port(socket.SOCK_DGRAM)
    pipe = tmp / "np"
    conf = tmp / "scitagd.yaml"
    conf.write_text(f"""\
plugins:
  api: {{bindPort: {api_port}}}
  namedPipe: {{pipePath: {pipe}}}
  firefly: {{bindAddress: 127.0.0.1, bindPort: {ff_port}}}
backends:
  firefly:
    destinationPort: {peer_port}
    collectors: ["127.0.0.1:{coll_port}", "127.0.0.1:{collector_port}"]
  prometheus: {{port: {prom_port}}}
""")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((peer_host, peer_port))
    coll = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    coll.bind(("127.0.0.1", coll_port))

    _say(f"config {conf}")
    print(conf.read_text(), end="")
    log_path = tmp / "scitagd.log"
    logf = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "scitagd", "run", "--config", str(conf)],
                            stdout=logf, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{api_port}/healthz")
        base = f"http://127.0.0.1:{api_port}/api/v1/flows"

        _say("REST API: an ATLAS 'Data Brokering' transfer starts (names resolved by the registry)")
        flow = {"state": "start", "protocol": "tcp", "src-ip": "127.0.0.1", "src-port": 1094,
                "dst-ip": peer_host, "dst-port": 51000, "experiment": "atlas",
                "activity": "Data Brokering", "application": "demo"}
        status, body = post(base, flow)
        print(f"POST {base} -> {status} {json.dumps(body)}")
        status, body = post(base, {**flow, "src-port": "x"})
        print(f"a bad request  -> {status} {json.dumps(body)}")

        _say("named pipe: StoRM-style lines, one of them garbage")
        with open(pipe, "w") as f:
            f.write(f"start tcp 127.0.0.1 8443 {peer_host} 51001 3 14\n")
            f.write("start tcp not-an-address 8443\n")
            f.write(f"start udp 127.0.0.1 8443 {peer_host} 51002 5 10\n")
        print(f"wrote 3 lines to {pipe}")

        _say("firefly listener: an XRootD-style firefly for a CMS transfer")
        ff = (f'<134>1 - xrootd.local xrootd - firefly-json - {{"version":1,"flow-lifecycle":'
              f'{{"state":"start","start-time":"2026-01-01T00:00:00+00:00"}},"flow-id":'
              f'{{"afi":"ipv4","src-ip":"127.0.0.1","dst-ip":"{peer_host}","protocol":"tcp",'
              f'"src-port":1094,"dst-port":51003}},"context":{{"experiment-id":3,'
              f'"activity-id":1,"application":"xrootd"}}}}')
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(ff.encode(), ("127.0.0.1", ff_port))
        print(f"sent one datagram to 127.0.0.1:{ff_port}")

        _say("the peer's view: fireflies received at " f"{peer_host}:{peer_port}")
        got = drain(peer, 4)
        for d in got:
            r = parse(d)
            f_ = r.firefly
            print(f"  {f_.flow_lifecycle.state:<5} exp={f_.context.experiment_id} "
                  f"act={f_.context.activity_id} {f_.flow_id.protocol} "
                  f"{f_.flow_id.src_ip}:{f_.flow_id.src_port} -> "
                  f"{f_.flow_id.dst_ip}:{f_.flow_id.dst_port} from host={r.hostname} app={r.app_name}")
        print(f"collector received {len(drain(coll, 4))} copies")
        print("one datagram as sent:\n  " + got[0].decode() if got else "  (none!)")

        _say("active flows (GET /api/v1/flows)")
        with urllib.request.urlopen(base) as r:
            for fl in json.loads(r.read())["flows"]:
                print(f"  {fl['protocol']} {fl['src-ip']}:{fl['src-port']} -> "
                      f"{fl['dst-ip']}:{fl['dst-port']}  {fl['experiment']}/{fl['activity']} "
                      f"scitag={fl['scitag']} via {fl['source']}")

        _say("the transfers end")
        post(base, {**flow, "state": "end"})
        with open(pipe, "w") as f:
            f.write(f"end tcp 127.0.0.1 8443 {peer_host} 51001 3 14\n")
        ends = drain(peer, 2)
        print(f"peer received {len(ends)} end fireflies")

        _say(f"metrics (http://127.0.0.1:{prom_port}/metrics, excerpt)")
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/metrics") as r:
            for line in r.read().decode().splitlines():
                if line.startswith("scitagd_") and not line.rstrip().endswith(" 0.0"):
                    print("  " + line)
        if keep:
            print(f"\ndaemon left running, pid {proc.pid}; config {conf}")
            return 0
    finally:
        if not keep:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            _say(f"SIGTERM: daemon exited with status {rc} in {time.monotonic() - t0:.2f}s")
        logf.close()
        peer.close()
        coll.close()
    _say(f"the daemon's log ({log_path})")
    print(log_path.read_text(), end="")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())


DEMO_FLOWS = [  # (experiment, activity) by name, MiB, client port
    ("atlas", "Data Brokering", 8, 40001),
    ("cms", "Data Challenge", 4, 40002),
    ("dune", "default", 2, 40003),
]


def marking_demo(collector_port: int = 0) -> int:
    """Part 2: two hosts (network namespaces joined by veth); scitagd marks real transfers in
    the kernel and a raw capture on the receiving host shows the bits."""
    import os

    _say("part 2: packet marking in the kernel (eBPF, tc egress)")
    if os.geteuid() != 0:
        print("skipped: needs root (network namespaces and eBPF); run the README command as root")
        return 0
    try:
        from ..bpf import libbpf

        libbpf.lib()
    except RuntimeError as e:
        print(f"skipped: {e}")
        return 0
    from ..registry import Registry
    from ..tags import decode_flow_label, gather_entropy
    from .netlab import A_ADDR, B_ADDR, TOOLS, Lab

    reg = Registry.bundled()
    tmp = Path(tempfile.mkdtemp(prefix="scitagd-demo-mark-"))
    lab = Lab(tmp)
    try:
        print(f"host A = namespace {lab.a.name} ({A_ADDR}, a0), host B = {lab.b.name} ({B_ADDR}, b0)")
        # A third link, this host <-> A, so that A's scitagd reaches the collector of part 3.
        subprocess.run(["ip", "link", "add", "sctd-c0", "type", "veth", "peer", "name", "c1", "netns",
                        lab.a.name], check=True)
        subprocess.run(["ip", "addr", "add", "fd5c:18::1/64", "dev", "sctd-c0", "nodad"], check=True)
        subprocess.run(["ip", "link", "set", "sctd-c0", "up"], check=True)
        lab.a.exec("ip", "addr", "add", "fd5c:18::2/64", "dev", "c1", "nodad")
        lab.a.exec("ip", "link", "set", "c1", "up")
        pipe = tmp / "np"
        conf = tmp / "scitagd.yaml"
        conf.write_text(f"""\
plugins:
  namedPipe: {{pipePath: {pipe}}}
backends:
  marker: {{targetInterfaces: [a0], markingStrategy: label, pinPath: {lab.pin}}}
  firefly: {{destinationPort: 10514, collectors: ["[fd5c:18::1]:{collector_port}"]}}
  prometheus: {{bindAddress: 127.0.0.1, port: 9464}}
""")
        print(conf.read_text(), end="")
        log_path = tmp / "scitagd.log"
        d = lab.start(lab.a, [sys.executable, "-m", "scitagd", "run", "--config", str(conf)],
                      out=log_path, netonly=True)
        deadline = time.monotonic() + 15
        while "scitagd.daemon started" not in log_path.read_text():
            if d.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text())
                return 1
            time.sleep(0.05)
        cap = lab.capture()
        ff = lab.start(lab.b, [*TOOLS, "udp-recv", B_ADDR, "10514", str(2 * len(DEMO_FLOWS)),
                               "--timeout", "15"])
        assert ff.stdout is not None
        ff.stdout.readline()
        _say("tagged transfers A -> B (reported through the named pipe, as StoRM does)")
        servers = {}
        for exp_name, act_name, mib, sport in DEMO_FLOWS:
            exp, act = reg.resolve(exp_name, act_name)
            servers[sport] = lab.server(sport + 1000)
            with open(pipe, "w") as f:
                f.write(f"start tcp {A_ADDR} {sport} {B_ADDR} {sport + 1000} {exp} {act}\n")
            time.sleep(0.05)
            out = lab.tool(lab.a, "tcp-client", B_ADDR, str(sport + 1000), str(sport), str(mib << 20))
            ok = lab.result(servers[sport]) == out
            with open(pipe, "w") as f:
                f.write(f"end tcp {A_ADDR} {sport} {B_ADDR} {sport + 1000} {exp} {act}\n")
            print(f"  {exp_name}/{act_name}: {mib} MiB from port {sport}, content "
                  f"{'intact' if ok else 'CORRUPTED'}")
        srv = lab.server(41999)
        lab.tool(lab.a, "tcp-client", B_ADDR, "41999", "40009", str(1 << 20))
        lab.result(srv)
        print("  and 1 MiB untagged from port 40009")
        pkts = cap.stop()
        _say("what host B captured on b0 (flow label bits of the packets A sent)")
        for _exp, _act, _mib, sport in [*DEMO_FLOWS, ("-", "-", 1, 40009)]:
            flow = [p for p in pkts if p.src == A_ADDR and p.sport == sport]
            tags = {decode_flow_label(p.label) for p in flow}
            ents = {gather_entropy(p.label) for p in flow}
            shown = ", ".join(f"{reg.experiment_name(e) or e}/{reg.activity_name(e, a) or a}"
                              for e, a in sorted(tags))
            if sport == 40009:
                shown += " (untagged: the kernel's own label, left alone)"
            labels = ", ".join(f"{p:#07x}" for p in sorted({p.label for p in flow})[:2])
            print(f"  port {sport}: {len(flow):4} packets, label {labels}, decodes to {shown}, "
                  f"entropy {sorted(ents)}")
        got = lab.result(ff, timeout=20)["datagrams"]
        print(f"host B also received {len(got)} fireflies from scitagd on port 10514")
        _say("marked bytes per experiment/activity (scitagd_marked_bytes_total)")
        code = ("import urllib.request;print(urllib.request.urlopen("
                "'http://127.0.0.1:9464/metrics').read().decode())")
        metrics = lab.a.exec(sys.executable, "-c", code).stdout
        for line in metrics.splitlines():
            if line.startswith(("scitagd_marked_bytes_total", "scitagd_unmarked_packets_total")):
                print("  " + line)
        _say("scitagd marker status")
        st = subprocess.run(lab.a.netonly(sys.executable, "-m", "scitagd", "marker", "status",
                                          "--pin-path", lab.pin), capture_output=True, text=True)
        print(st.stdout + st.stderr, end="")
        d.send_signal(signal.SIGTERM)
        rc = d.wait(10)
        _say(f"SIGTERM: daemon exited with status {rc}; its log ({log_path}):")
        print(log_path.read_text(), end="")
        return 0 if rc == 0 else 1
    finally:
        lab.close()
