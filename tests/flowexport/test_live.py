# SPDX-License-Identifier: Apache-2.0
"""Live exporters: Open vSwitch (IPFIX and sFlow; also with scitagd's eBPF marker tagging the
sender), softflowd (PSAMP and NetFlow v9), pmacctd (sFlow via sfprobe).

Traffic with flow labels we set (the kernel's flow label manager) crosses a real exporter in
network namespaces made here; the exporter's datagrams are captured by a UDP dump inside its
namespace, decoded with scitagd.flowexport and compared per flow with what was sent (UDP: the
sender's own count; TCP: a raw capture on the receiving host). Every process is stopped by its
pid and every namespace deleted, also on failure. 7-12 s per test, ~60 s in all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from scitagd.flowexport.aggregate import Aggregator, Row
from scitagd.flowexport.ipfix import IpfixDecoder
from scitagd.flowexport.netflow9 import NetflowV9Decoder
from scitagd.flowexport.records import FlowRecord
from scitagd.flowexport.sflow import SflowDecoder
from scitagd.flowexport.tagging import TagMatcher
from scitagd.lab.netlab import TOOLS as LABTOOLS
from scitagd.lab.netlab import NetNS, sh
from scitagd.lab.tools import read_capture
from scitagd.lab.util import wait_for
from scitagd.registry import Registry
from scitagd.tags import encode_flow_label

from ..conftest import IS_ROOT
from .traffic import read_dump

TRAFFIC = [sys.executable, str(Path(__file__).with_name("traffic.py"))]
A, B = "fd00:79::1", "fd00:79::2"
CMS_AI = encode_flow_label(3, 14, 0b11011)
ATLAS = encode_flow_label(2, 3, 0b00101)  # atlas / Data Brokering
UNREGISTERED = 0x4ABCD
FILLER_PORT = "40029"


def not_filler(r: FlowRecord) -> bool:
    return r.sport != int(FILLER_PORT)

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not IS_ROOT, reason="needs root (network namespaces, exporters)")]


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (bash scripts/setup.sh --test installs it)")


FlowKey = Tuple[str, str, int, int, int]


class Procs:
    """Processes started in namespaces, each stopped by its pid on close()."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: List[subprocess.Popen[bytes]] = []

    def start(self, ns: NetNS, cmd: List[str], log: str, env: Optional[Dict[str, str]] = None,
              ready: Optional[bytes] = None) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "wb")
        p = subprocess.Popen(ns.cmd(*cmd), stdout=out, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {})})
        out.close()
        self.procs.append(p)
        if ready is not None:
            wait_for(lambda: ready in (self.tmp / log).read_bytes(), 10, f"{cmd[0]} did not start: {log}")
        return p

    def dump(self, ns: NetNS, port: int, name: str) -> Path:
        path = self.tmp / f"{name}.bin"
        self.start(ns, [*TRAFFIC, "udp-dump", str(port), str(path)], f"{name}.log", ready=b"ready")
        return path

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


class Net(Procs):
    """Hosts A and B (and optionally a switch namespace between them), processes by pid."""

    def __init__(self, tmp: Path, switch: bool) -> None:
        super().__init__(tmp)
        self.spaces: List[NetNS] = []
        self._sink = False
        try:
            self.a = self._ns("fa")
            self.b = self._ns("fb")
            if switch:
                self.sw: Optional[NetNS] = self._ns("fs")
                sh("ip", "link", "add", "a0", "netns", self.a.name, "type", "veth", "peer", "name", "pa",
                   "netns", self.sw.name)
                sh("ip", "link", "add", "b0", "netns", self.b.name, "type", "veth", "peer", "name", "pb",
                   "netns", self.sw.name)
                for dev in ("pa", "pb"):
                    self.sw.exec("ip", "link", "set", dev, "up")
            else:
                self.sw = None
                sh("ip", "link", "add", "a0", "netns", self.a.name, "type", "veth", "peer", "name", "b0",
                   "netns", self.b.name)
            for ns, dev, addr in ((self.a, "a0", A), (self.b, "b0", B)):
                ns.exec("ip", "link", "set", dev, "up")
                ns.exec("ip", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
                # veth leaves checksums to the receiver's offload; a userspace switch forwards
                # them unfinished, so the sender finishes them
                ns.exec("ethtool", "-K", dev, "tx", "off")
            self.b.exec("sysctl", "-qw", "net.ipv6.auto_flowlabels=0")  # replies: label 0, untagged
        except Exception:
            self.close()
            raise

    def _ns(self, tag: str) -> NetNS:
        ns = NetNS(tag)
        self.spaces.append(ns)
        return ns

    def sink(self) -> None:
        if not self._sink:
            self._sink = True
            self.start(self.b, [*TRAFFIC, "sink", B, "5001"], "sink.log", ready=b"ready")

    def run(self, ns: NetNS, *args: str, timeout: float = 60) -> Dict[str, Any]:
        r = subprocess.run(ns.cmd(*TRAFFIC, *args), capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"traffic {args}: {r.stderr}"
        return dict(json.loads(r.stdout.strip().splitlines()[-1]))

    def close(self) -> None:
        super().close()
        for ns in self.spaces:
            ns.close()


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="scitagd-flowexport-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def matcher() -> TagMatcher:
    return TagMatcher.from_registry(Registry.bundled())


def send_flows(net: Net, capture: Path, filler: bool = False) -> Dict[FlowKey, Tuple[int, int]]:
    """A tagged UDP flow, a tagged TCP flow and an unregistered-label TCP flow; returns the truth
    per 5-tuple (IP bytes, packets) from the senders (UDP) and a capture at B (TCP)."""
    cap = net.start(net.b, [*LABTOOLS, "capture", "b0", str(capture)], "capture.log")
    wait_for(lambda: capture.exists() and capture.stat().st_size >= 6, 10, "capture did not start")
    net.sink()
    udp = net.run(net.a, "udp", A, B, "5001", "40021", hex(CMS_AI), "60", "200")
    net.run(net.a, "tcp", A, B, "5001", "40022", hex(ATLAS), "300000")
    net.run(net.a, "tcp", A, B, "5001", "40023", hex(UNREGISTERED), "50000")
    time.sleep(0.3)
    if filler:
        # capture-based exporters read through libpcap's memory-mapped blocks: the last packets
        # wait in a block until more traffic fills it (the shared captures have a filler flow)
        net.run(net.a, "udp", A, B, "5001", FILLER_PORT, "0", "1500", "1000")
    cap.send_signal(signal.SIGTERM)
    cap.wait(10)
    truth: Dict[FlowKey, List[int]] = defaultdict(lambda: [0, 0])
    for p in read_capture(str(capture)):
        if p.proto == 6:
            t = truth[(p.src, p.dst, 6, p.sport, p.dport)]
            t[0] += 40 + p.payload_len
            t[1] += 1
    truth[(A, B, 17, 40021, 5001)] = [udp["ip_bytes"], udp["packets"]]
    assert truth[(A, B, 6, 40022, 5001)][0] > 300000
    return {k: (v[0], v[1]) for k, v in truth.items()}


def per_flow(records: List[FlowRecord]) -> Dict[FlowKey, Tuple[int, int, set]]:
    acc: Dict[FlowKey, List[Any]] = defaultdict(lambda: [0, 0, set()])
    for r in records:
        a = acc[(r.src_text, r.dst_text, r.protocol, r.sport, r.dport)]
        a[0] += r.bytes
        a[1] += r.packets
        a[2].add((r.experiment, r.activity))
    return {k: (v[0], v[1], v[2]) for k, v in acc.items()}


def collect(path: Path, make: Callable[[], Any], keep: Callable[[FlowRecord], bool],
            truth: Dict[FlowKey, Tuple[int, int]], timeout: float) -> Tuple[Any, List[FlowRecord]]:
    """Decode the dump until every truth flow is complete (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        dec = make()
        recs = [r for h, p, t in read_dump(str(path)) for r in dec.decode(p, h, t) if keep(r)]
        got = per_flow(recs)
        if all(got.get(k, (0, 0))[:2] == v for k, v in truth.items()) or time.monotonic() > deadline:
            return dec, recs
        time.sleep(0.5)


def check(recs: List[FlowRecord], truth: Dict[FlowKey, Tuple[int, int]]) -> None:
    got = per_flow(recs)
    for key, want in truth.items():
        assert key in got, f"{key} not exported; got {sorted(got)}"
        assert got[key][:2] == want, f"{key}: exported bytes/packets {got[key][:2]}, sent {want}; all: {got}"
    assert got[(A, B, 17, 40021, 5001)][2] == {(3, 14)}
    assert got[(A, B, 6, 40022, 5001)][2] == {(2, 3)}
    assert got[(A, B, 6, 40023, 5001)][2] == {(None, None)}
    assert got[(B, A, 6, 5001, 40022)][2] == {(None, None)}
    # the link's per-experiment bytes, through the aggregator
    rows: List[Row] = []
    agg = Aggregator(rows.extend)
    agg.add(r for r in recs if (r.src_text, r.dst_text) in ((A, B), (B, A)))
    agg.flush(everything=True)
    per_exp: Dict[Optional[int], int] = defaultdict(int)
    for row in rows:
        per_exp[row.experiment] += row.bytes
    assert per_exp[3] == truth[(A, B, 17, 40021, 5001)][0]
    assert per_exp[2] == truth[(A, B, 6, 40022, 5001)][0]


def start_ovs(procs: Procs, sw: NetNS, tmp: Path, targets: Optional[Tuple[str, str]] = None) -> Tuple[Path, Path]:
    """ovsdb-server and ovs-vswitchd in the switch namespace with a private db/run dir, a
    userspace (netdev) bridge of pa and pb exporting IPFIX and sFlow at sampling 1 to dumps
    (or to `targets`: IPFIX and sFlow "host:port", listening already)."""
    env = {k: str(tmp) for k in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR")}
    env["OVS_PKGDATADIR"] = "/usr/share/openvswitch"
    db = f"unix:{tmp}/db.sock"
    sh("ovsdb-tool", "create", f"{tmp}/conf.db", "/usr/share/openvswitch/vswitch.ovsschema")
    procs.start(sw, ["ovsdb-server", f"{tmp}/conf.db", f"--remote=punix:{tmp}/db.sock",
                     f"--unixctl={tmp}/ovsdb.ctl", f"--log-file={tmp}/ovsdb.log"], "ovsdb.out", env)
    wait_for(lambda: (tmp / "db.sock").exists(), 10, "ovsdb-server socket")

    def vsctl(*args: str) -> None:
        r = subprocess.run(["ovs-vsctl", f"--db={db}", "--timeout=10", *args], capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=20)
        assert r.returncode == 0, f"ovs-vsctl {args}: {r.stderr}"

    vsctl("--no-wait", "init")
    procs.start(sw, ["ovs-vswitchd", db, f"--unixctl={tmp}/vswitchd.ctl", f"--log-file={tmp}/vswitchd.log"],
                "vswitchd.out", env)
    # OVS sends from connected UDP sockets: the dumps must listen before export starts
    ipfix, sflow = tmp / "no-ipfix-dump", tmp / "no-sflow-dump"
    if targets is None:
        ipfix = procs.dump(sw, 4739, "ipfix")
        sflow = procs.dump(sw, 6343, "sflow")
    ipfix_to, sflow_to = targets or ("127.0.0.1:4739", "127.0.0.1:6343")
    vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
          "--", "add-port", "br0", "pa", "--", "add-port", "br0", "pb")
    # cache_max_flows: one record per flow (else one per packet); enable-output-sampling=true
    # turns OVS 3.1's egress copy off (it reads the key backwards)
    vsctl("--", "set", "Bridge", "br0", "ipfix=@i", "--", "--id=@i", "create", "IPFIX",
          f'targets="{ipfix_to}"', "sampling=1", "obs_domain_id=77", "cache_active_timeout=5",
          "cache_max_flows=4096", "other_config:enable-output-sampling=true")
    vsctl("--", "--id=@s", "create", "sFlow", "agent=lo", f'target="{sflow_to}"', "header=128",
          "sampling=1", "polling=0", "--", "set", "bridge", "br0", "sflow=@s")
    time.sleep(1)
    return ipfix, sflow


def test_open_vswitch_ipfix_and_sflow(tmp: Path, matcher: TagMatcher) -> None:
    need("ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ovs-vsctl", "ethtool")
    net = Net(tmp, switch=True)
    try:
        assert net.sw is not None
        ipfix, sflow = start_ovs(net, net.sw, tmp)
        truth = send_flows(net, tmp / "truth.cap")

        dec, recs = collect(ipfix, lambda: IpfixDecoder(matcher), lambda r: r.direction == 0, truth, 30)
        assert dec.rejects.counts == {}
        assert {r.domain for r in recs} == {77}
        check(recs, truth)
        dec, recs = collect(sflow, lambda: SflowDecoder(matcher), lambda r: True, truth, 10)
        assert dec.rejects.counts == {}
        check(recs, truth)
    finally:
        net.close()


def test_softflowd_psamp(tmp: Path, matcher: TagMatcher) -> None:
    need("softflowd", "ethtool")
    net = Net(tmp, switch=False)
    try:
        dump = net.dump(net.b, 4739, "psamp")
        sf = net.start(net.b, ["softflowd", "-d", "-i", "b0", "-v", "psamp", "-n", "127.0.0.1:4739",
                               "-p", f"{tmp}/softflowd.pid", "-c", f"{tmp}/softflowd.ctl"], "softflowd.out")
        time.sleep(1.5)
        assert sf.poll() is None, (tmp / "softflowd.out").read_text()
        truth = send_flows(net, tmp / "truth.cap", filler=True)
        dec, recs = collect(dump, lambda: IpfixDecoder(matcher), not_filler, truth, 15)
        assert dec.rejects.counts == {}
        check(recs, truth)
    finally:
        net.close()


def test_pmacctd_sfprobe(tmp: Path, matcher: TagMatcher) -> None:
    need("pmacctd", "ethtool")
    net = Net(tmp, switch=False)
    try:
        dump = net.dump(net.b, 6343, "pmacct")
        conf = tmp / "pmacctd.conf"
        conf.write_text("daemonize: false\npcap_interface: b0\nplugins: sfprobe\n"
                        "sfprobe_receiver: [::1]:6343\nsfprobe_agentip: ::1\nsfprobe_agentsubid: 7\n"
                        "sampling_rate: 1\nplugin_buffer_size: 10240\nplugin_pipe_size: 1024000\n")
        net.start(net.b, ["pmacctd", "-f", str(conf)], "pmacctd.out")
        time.sleep(2)
        # pmacct's first datagram to an IPv6 receiver is corrupt: let a warm-up packet take it
        net.sink()
        net.run(net.a, "udp", A, B, "5001", "40020", "0", "3", "50")
        time.sleep(1.5)
        truth = send_flows(net, tmp / "truth.cap", filler=True)
        dec, recs = collect(dump, lambda: SflowDecoder(matcher), lambda r: r.sport != 40020 and not_filler(r),
                            truth, 15)
        assert set(dec.rejects.counts) <= {("::1", "bad_length")} and dec.rejects.total() <= 1
        check(recs, truth)
    finally:
        net.close()


def switch_between(lab: Any, name: str, mgmt: Optional[Tuple[str, str]] = None) -> NetNS:
    """A switch namespace between the marker lab's A and B: A's veth peer (b0) becomes its port pa,
    B gets b1 on port pb; with mgmt = (switch address, B's address), a management link m0/m1 (/30).
    Checksum offload off on both ends (the capture reads what was sent); B's replies unlabelled."""
    from ..lab import B_ADDR

    sw = NetNS(name)
    try:
        lab.b.exec("ip", "link", "set", "b0", "netns", sw.name)
        sw.exec("ip", "link", "set", "b0", "name", "pa")
        sh("ip", "link", "add", "b1", "netns", lab.b.name, "type", "veth", "peer", "name", "pb", "netns", sw.name)
        ports = ["pa", "pb"]
        if mgmt is not None:
            sh("ip", "link", "add", "m1", "netns", lab.b.name, "type", "veth", "peer", "name", "m0", "netns", sw.name)
            ports.append("m0")
        for dev in ports:
            sw.exec("ip", "link", "set", dev, "up")
        lab.b.exec("ip", "link", "set", "b1", "up")
        lab.b.exec("ip", "addr", "add", f"{B_ADDR}/64", "dev", "b1", "nodad")
        if mgmt is not None:
            sw.exec("ip", "addr", "add", f"{mgmt[0]}/30", "dev", "m0")
            lab.b.exec("ip", "link", "set", "m1", "up")
            lab.b.exec("ip", "addr", "add", f"{mgmt[1]}/30", "dev", "m1")
        lab.a.exec("ethtool", "-K", "a0", "tx", "off")
        lab.b.exec("ethtool", "-K", "b1", "tx", "off")
        lab.b.exec("sysctl", "-qw", "net.ipv6.auto_flowlabels=0")  # B's replies: label 0, untagged
    except BaseException:
        sw.close()
        raise
    return sw


def marked_transfers(lab: Any, procs: Procs, d: Any, tcp: Tuple[int, int, Tuple[int, int], int],
                     udp: Tuple[int, int, Tuple[int, int], int, int]) -> Tuple[List[Any], float]:
    """A TCP transfer (sport, dport, tag, bytes) and UDP datagrams (sport, dport, tag, count, size)
    from A to B, both flows started in A's daemon before and ended after, captured on B's b1:
    (the packets, when the transfers ended)."""
    from ..lab import A_ADDR, B_ADDR, TOOLS

    (tsport, tdport, ttag, nbytes), (usport, udport, utag, count, size) = tcp, udp
    lines = [f"tcp {A_ADDR} {tsport} {B_ADDR} {tdport} {ttag[0]} {ttag[1]}",
             f"udp {A_ADDR} {usport} {B_ADDR} {udport} {utag[0]} {utag[1]}"]
    d.send(*(f"start {x}" for x in lines))
    d.wait_log("flow start", count=2)
    time.sleep(0.2)
    cap = lab.capture("b1")
    server = lab.server(tdport)
    procs.start(lab.b, [*TRAFFIC, "sink", B_ADDR, str(udport)], "sink.log", ready=b"ready")
    client = lab.start(lab.a, [*TOOLS, "tcp-client", B_ADDR, str(tdport), str(tsport), str(nbytes)])
    assert lab.result(client) == lab.result(server)
    r = subprocess.run(lab.a.cmd(*TRAFFIC, "udp", A_ADDR, B_ADDR, str(udport), str(usport), "0", str(count),
                                 str(size)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ended = time.monotonic()
    d.send(*(f"end {x}" for x in lines))
    return cap.stop(), ended


def test_open_vswitch_with_scitagd_marker(tmp: Path, matcher: TagMatcher) -> None:
    """scitagd's own eBPF marker tags A's flows (label strategy); OVS between A and B exports
    them: the collector side's per-experiment bytes for the link equal what A sent."""
    need("ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ovs-vsctl", "ethtool")
    from ..lab import A_ADDR, B_ADDR
    from ..lab import Lab as MarkerLab

    lab = MarkerLab(tmp)  # takes the lab lock: the marker shares the host with other labs
    procs = Procs(tmp)
    sw = None
    try:
        sw = switch_between(lab, "fs")
        ipfix, _sflow = start_ovs(procs, sw, tmp)

        d = lab.daemon("markingStrategy: label")
        d.wait_log("attached interface=a0")
        tcp_tag, udp_tag = (3, 14), (2, 3)
        pkts, _ended = marked_transfers(lab, procs, d, (40031, 5031, tcp_tag, 400_000), (41031, 6031, udp_tag, 40, 300))
        truth: Dict[FlowKey, List[int]] = defaultdict(lambda: [0, 0])
        for p in pkts:
            if p.proto in (6, 17) and {p.sport, p.dport} & {5031, 6031}:
                t = truth[(p.src, p.dst, p.proto, p.sport, p.dport)]
                t[0] += 40 + p.payload_len
                t[1] += 1
        a_tcp, a_udp = (A_ADDR, B_ADDR, 6, 40031, 5031), (A_ADDR, B_ADDR, 17, 41031, 6031)
        assert truth[a_udp] == [40 * 348, 40] and truth[a_tcp][0] > 400_000
        want = {k: (v[0], v[1]) for k, v in truth.items()}
        dec, recs = collect(ipfix, lambda: IpfixDecoder(matcher), lambda r: r.direction == 0, want, 30)
        got = per_flow(recs)
        for key, v in want.items():
            assert got.get(key, (0, 0))[:2] == v, f"{key}: exported {got.get(key)}, on the wire {v}"
        assert got[a_tcp][2] == {tcp_tag} and got[a_udp][2] == {udp_tag}
        assert got[(B_ADDR, A_ADDR, 6, 5031, 40031)][2] == {(None, None)}  # B does not mark
        rows: List[Row] = []
        agg = Aggregator(rows.extend)
        agg.add(recs)
        agg.flush(everything=True)
        per_tag: Dict[Tuple[Optional[int], Optional[int]], int] = defaultdict(int)
        for row in rows:
            per_tag[(row.experiment, row.activity)] += row.bytes
        assert per_tag[tcp_tag] == truth[a_tcp][0] and per_tag[udp_tag] == truth[a_udp][0]
        assert dec.rejects.counts == {}
        d.stop()
    finally:
        procs.close()
        lab.close()
        if sw is not None:
            sw.close()


def test_softflowd_netflow9(tmp: Path, matcher: TagMatcher) -> None:
    """NetFlow v9 from softflowd: its records carry no flow label (checked in the shared data's
    README), so this checks the v9 path's bytes and packets per flow, and that nothing is tagged."""
    need("softflowd", "ethtool")
    net = Net(tmp, switch=False)
    try:
        dump = net.dump(net.b, 2055, "nf9")
        sf = net.start(net.b, ["softflowd", "-d", "-i", "b0", "-v", "9", "-6", "-n", "127.0.0.1:2055",
                               "-t", "maxlife=5", "-t", "expint=1", "-p", f"{tmp}/softflowd.pid",
                               "-c", f"{tmp}/softflowd.ctl"], "softflowd.out")
        time.sleep(1.5)
        assert sf.poll() is None, (tmp / "softflowd.out").read_text()
        truth = send_flows(net, tmp / "truth.cap", filler=True)
        dec, recs = collect(dump, lambda: NetflowV9Decoder(matcher), not_filler, truth, 20)
        assert dec.rejects.counts == {}
        got = per_flow(recs)
        for key, want in truth.items():
            assert got.get(key, (0, 0))[:2] == want, f"{key}: exported {got.get(key)}, sent {want}"
        assert {r.experiment for r in recs} == {None}
    finally:
        net.close()
