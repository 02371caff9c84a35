# SPDX-License-Identifier: Apache-2.0
"""The eBPF marker for real: namespaces joined by veth, real transfers, a raw capture in the
receiving namespace, and the bits on the wire checked packet by packet."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from scitagd.lab.tools import Packet
from scitagd.tags import decode_flow_label, gather_entropy

from ..figures import record
from ..lab import A_ADDR, B_ADDR, TOOLS, Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

MB = 1 << 20


def sent_by_a(pkts: List[Packet], proto: int, sport: int) -> List[Packet]:
    return [p for p in pkts if p.src == A_ADDR and p.proto == proto and p.sport == sport]


def test_flow_label_on_the_wire(lab: Lab) -> None:
    d = lab.daemon("markingStrategy: label")
    d.wait_log("attached interface=a0")
    cap = lab.capture()
    tags = {40001: (2, 16), 40002: (3, 14), 40003: (5, 10), 40004: (2, 3), 40005: (7, 1), 40006: (9, 2)}
    servers = {sp: lab.server(sp - 35000) for sp in [*tags, 40009]}
    d.send(*(f"start tcp {A_ADDR} {sp} {B_ADDR} {sp - 35000} {e} {a}" for sp, (e, a) in tags.items()))
    d.wait_log("flow start", count=len(tags))
    time.sleep(0.1)
    clients = {sp: lab.start(lab.a, [*TOOLS, "tcp-client", B_ADDR, str(sp - 35000),
                                     str(sp), str(3 * MB), "--tclass", str(0xB8), "--seed", str(sp)])
               for sp in [*tags, 40009]}
    for sp, c in clients.items():
        sent = lab.result(c)
        got = lab.result(servers[sp])
        assert got == sent, f"transfer {sp} corrupted"

    # UDP: marked until its end event, then the kernel's own label again.
    d.send(f"start udp {A_ADDR} 41000 {B_ADDR} 6000 4 2")
    d.wait_log("flow start source=namedPipe proto=udp")
    time.sleep(0.1)
    lab.tool(lab.a, "udp-send", B_ADDR, "6000", "41000", "50", "before")
    d.send(f"end udp {A_ADDR} 41000 {B_ADDR} 6000 4 2")
    d.wait_log("flow end source=namedPipe proto=udp")
    time.sleep(0.1)
    lab.tool(lab.a, "udp-send", B_ADDR, "6000", "41000", "50", "after")

    # iperf3 data stream from a fixed client port.
    iperf = shutil.which("iperf3")
    if iperf:
        srv = lab.start(lab.b, [iperf, "-s", "-1", "-B", B_ADDR, "-p", "5201"])
        time.sleep(0.3)
        d.send(f"start tcp {A_ADDR} 40100 {B_ADDR} 5201 6 9")
        d.wait_log("src=[fd5c:17::1]:40100")
        r = subprocess.run(lab.a.cmd(iperf, "-c", B_ADDR, "-p", "5201", "--cport", "40100", "-n",
                                     str(4 * MB)), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        srv.wait(10)
    pkts = cap.stop()

    entropies = []
    for sp, (exp, act) in tags.items():
        flow = sent_by_a(pkts, 6, sp)
        assert len(flow) >= 10, f"flow {sp}: only {len(flow)} packets captured"
        assert {decode_flow_label(p.label) for p in flow} == {(exp, act)}, sp
        ent = {gather_entropy(p.label) for p in flow}
        assert len(ent) == 1, f"entropy changed within flow {sp}: {ent}"
        entropies.append(ent.pop())
        assert {p.tclass >> 2 for p in flow} == {0xB8 >> 2}, "DSCP set by the sender was lost"
        assert not any(p.exts for p in flow)
    assert len(set(entropies)) > 1, f"entropy identical across 6 flows: {entropies}"

    untagged = sent_by_a(pkts, 6, 40009)
    assert len(untagged) >= 10
    labels = {p.label for p in untagged}
    assert len(labels) == 1 and labels != {0}, f"kernel's own label not kept: {labels}"

    udp = sent_by_a(pkts, 17, 41000)
    before = [p for p in udp if p.l4_payload.startswith(b"before:")]
    after = [p for p in udp if p.l4_payload.startswith(b"after:")]
    assert len(before) == 50 and len(after) == 50
    assert {decode_flow_label(p.label) for p in before} == {(4, 2)}
    after_labels = {p.label for p in after}
    assert len(after_labels) == 1
    assert after_labels.pop() & 0x3FEFC != before[0].label & 0x3FEFC, "marking did not stop at end"

    if iperf:
        data = sent_by_a(pkts, 6, 40100)
        assert len(data) >= 10
        assert {decode_flow_label(p.label) for p in data} == {(6, 9)}

    m = d.metrics()
    assert m['scitagd_marked_packets_total{activity="default",activity_id="1",experiment="ska",'
             'experiment_id="7",interface="a0"}'] >= 10
    assert m["scitagd_marker_map_entries"] == 2 * (len(tags) + (1 if iperf else 0))
    assert d.stop() == 0
    assert "detached interface=a0" in d.text()


EXT_TYPES = {"hopByHop": [0], "destination": [60], "hopByHopDestination": [0, 60]}


@pytest.mark.parametrize("gso", ["on", "off"])
@pytest.mark.parametrize("strategy", list(EXT_TYPES))
def test_extension_headers_on_the_wire(lab: Lab, strategy: str, gso: str) -> None:
    if gso == "off":
        lab.a.exec("ethtool", "-K", "a0", "gso", "off", "tso", "off")
    d = lab.daemon(f"markingStrategy: {strategy}")
    d.wait_log("attached interface=a0")
    cap = lab.capture()
    srv = lab.server(5001)
    d.send(f"start tcp {A_ADDR} 40001 {B_ADDR} 5001 3 14")
    d.wait_log("flow start")
    time.sleep(0.1)
    sent = lab.tool(lab.a, "tcp-client", B_ADDR, "5001", "40001", str(2 * MB), "--seed", "7")
    assert lab.result(srv) == sent, "content changed in flight"
    pkts = sent_by_a(cap.stop(), 6, 40001)
    n = len(EXT_TYPES[strategy])
    marked = [p for p in pkts if p.exts]
    unmarked = [p for p in pkts if not p.exts]
    for p in marked:
        assert [e[0] for e in p.exts] == EXT_TYPES[strategy]
        assert all(e[1] == 0 and e[2] == 0x1E and (e[3], e[4]) == (3, 14) for e in p.exts), p.exts
    # Only a packet that the header would push over the MTU may leave unmarked.
    for p in unmarked:
        assert p.payload_len + 40 + 8 * n > 1500, f"unmarked packet of {p.payload_len + 40} bytes"
    m = d.metrics()
    assert m['scitagd_unmarked_packets_total{reason="mtu"}'] >= len(unmarked)
    payload_marked = sum(len(p.l4_payload) for p in marked)
    payload_all = sum(len(p.l4_payload) for p in pkts)
    if gso == "on":
        assert payload_marked > 0.9 * payload_all, (payload_marked, payload_all)
    assert len(marked) >= 3  # at least the handshake and the small segments


def test_put_direction_marks_the_acks(lab: Lab) -> None:
    """A flow whose data comes in (B supplies it): the ACKs this host sends carry the tag."""
    d = lab.daemon("markingStrategy: label")
    d.wait_log("attached interface=a0")
    cap = lab.capture()
    # B is the supplier (src): B:5003 -> A:40003. Data flows B -> A; A only sends ACKs.
    d.send(f"start tcp {B_ADDR} 5003 {A_ADDR} 40003 2 15")
    d.wait_log("flow start")
    srv = lab.start(lab.a, [*TOOLS, "tcp-server", A_ADDR, "40003"])
    assert srv.stdout is not None and b"listening" in srv.stdout.readline()
    # tcp-server binds A's address; the client in B connects from its fixed port 5003.
    sent = lab.tool(lab.b, "tcp-client", A_ADDR, "40003", "5003", str(2 * MB))
    assert lab.result(srv) == sent
    acks = sent_by_a(cap.stop(), 6, 40003)
    assert len(acks) >= 10
    assert {decode_flow_label(p.label) for p in acks} == {(2, 15)}


def test_both_ends_reported_each_keeps_its_direction(lab: Lab) -> None:
    """Two local services report the two ends of one connection (A -> B and B -> A): the second
    report does not replace the first one's direction, and its end does not unmark it."""
    d = lab.daemon("markingStrategy: label")
    d.wait_log("attached interface=a0")
    d.send(f"start tcp {A_ADDR} 40007 {B_ADDR} 5007 2 15")
    d.wait_log("flow start", count=1)
    d.send(f"start tcp {B_ADDR} 5007 {A_ADDR} 40007 3 16")
    d.wait_log("flow start", count=2)
    d.send(f"end tcp {B_ADDR} 5007 {A_ADDR} 40007 3 16")
    d.wait_log("flow end", count=1)
    time.sleep(0.1)
    cap = lab.capture()
    srv = lab.server(5007)
    sent = lab.tool(lab.a, "tcp-client", B_ADDR, "5007", "40007", str(MB))
    assert lab.result(srv) == sent
    data = [p for p in sent_by_a(cap.stop(), 6, 40007) if p.l4_payload]
    assert len(data) >= 10
    assert {decode_flow_label(p.label) for p in data} == {(2, 15)}
    # the first report's end removes what is left, none of it counted as an LRU eviction
    d.send(f"end tcp {A_ADDR} 40007 {B_ADDR} 5007 2 15")
    d.wait_log("flow end", count=2)
    m = d.metrics()
    assert m["scitagd_marker_map_entries"] == 0 and m["scitagd_marker_evictions_total"] == 0, m


@pytest.mark.parametrize("txvlan", ["on", "off"])
@pytest.mark.parametrize("strategy", ["label", "destination", "hopByHopDestination"])
def test_vlan_tagged_frames(lab: Lab, strategy: str, txvlan: str) -> None:
    """802.1Q frames through the marker. This kernel is built without CONFIG_VLAN_8021Q, so no
    VLAN sub-interface can exist here: the test sends the tagged frames such an interface
    would emit (no offload: the tag in the frame) straight into a0's egress path, where tc
    runs, and captures them in B."""
    if txvlan == "off":
        lab.a.exec("ethtool", "-K", "a0", "txvlan", "off")  # the tag we push back goes in-band
    d = lab.daemon(f"markingStrategy: {strategy}")
    d.wait_log("attached interface=a0")
    cap = lab.capture("b0")
    d.send(f"start udp {A_ADDR} 42000 {B_ADDR} 7000 5 10")
    d.wait_log("flow start")
    time.sleep(0.1)
    n_ext = {"label": 0, "destination": 1, "hopByHopDestination": 2}[strategy]
    # Small datagrams, and full-size ones (1452 B payload: 1500 B IPv6 packets) that an
    # extension header would push over the MTU.
    sizes = [100, 600, 1200, 1452, 1452 - 8 * n_ext]
    lab.tool(lab.a, "inject-vlan", "a0", "100", A_ADDR, B_ADDR, "42000", "7000",
             ",".join(map(str, sizes)), "--tclass", str(0xB8))
    pkts = [p for p in cap.stop() if p.sport == 42000]
    assert len(pkts) == len(sizes)
    assert {p.vlan for p in pkts} == {100}, "the VLAN tag was lost"
    assert {p.tclass for p in pkts} == {0xB8}
    for p, size in zip(pkts, sizes):
        assert p.l4_payload.startswith(b"vlan:")
        if strategy == "label":
            assert decode_flow_label(p.label) == (5, 10)
        elif size + 8 + 40 + 8 * n_ext > 1500:
            assert p.exts == [], "a packet over the MTU must leave unmarked"
        else:
            types = [0, 60] if n_ext == 2 else [60]
            assert [e[0] for e in p.exts] == types and all(e[2:] == (0x1E, 5, 10) for e in p.exts)
            assert len(p.l4_payload) == size
    m = d.metrics()
    assert m['scitagd_unmarked_packets_total{reason="vlan"}'] == 0
    assert m['scitagd_unmarked_packets_total{reason="mtu"}'] == (0 if strategy == "label" else 1)


def _egress_filters(lab: Lab, dev: str = "a0") -> str:
    return lab.a.exec("tc", "filter", "show", "dev", dev, "egress").stdout


def _has_clsact(lab: Lab, dev: str = "a0") -> bool:
    return "clsact" in lab.a.exec("tc", "qdisc", "show", "dev", dev).stdout


def _udp_marked(lab: Lab, d_sport: int, tag: tuple[int, int]) -> List[Packet]:
    cap = lab.capture()
    lab.tool(lab.a, "udp-send", B_ADDR, "6000", str(d_sport), "20", "x")
    pkts = sent_by_a(cap.stop(), 17, d_sport)
    assert len(pkts) == 20
    return [p for p in pkts if decode_flow_label(p.label) == tag]


def test_kill_9_and_restart(lab: Lab) -> None:
    # Another tool's filter on a clsact it created: scitagd must leave both alone.
    lab.a.exec("tc", "qdisc", "add", "dev", "a0", "clsact")
    lab.a.exec("tc", "filter", "add", "dev", "a0", "egress", "prio", "10", "protocol", "ipv6", "u32",
               "match", "u32", "0", "0", "flowid", "1:1")
    d = lab.daemon("markingStrategy: label")
    d.wait_log("attached interface=a0")
    d.send(f"start udp {A_ADDR} 43000 {B_ADDR} 6000 2 16")
    d.wait_log("flow start")
    time.sleep(0.1)
    assert len(_udp_marked(lab, 43000, (2, 16))) == 20
    assert d.stop(9) == -9
    # The filter and the pinned map outlive the process: marking goes on meanwhile.
    assert "scitagd_eth" in _egress_filters(lab)
    assert len(_udp_marked(lab, 43000, (2, 16))) == 20

    d2 = lab.daemon("markingStrategy: label")
    text = d2.wait_log("attached interface=a0")
    assert "flows restored from the pinned map flows=1" in text
    assert "error" not in text.lower() and "Traceback" not in text
    assert len(_udp_marked(lab, 43000, (2, 16))) == 20
    # The restored flow ends normally: its end is known, and marking stops.
    d2.send(f"end udp {A_ADDR} 43000 {B_ADDR} 6000 2 16")
    d2.wait_log("flow end source=namedPipe")
    time.sleep(0.1)
    assert _udp_marked(lab, 43000, (2, 16)) == []
    assert "end for unknown flow" not in d2.text()
    # A new flow after the restart.
    d2.send(f"start udp {A_ADDR} 43001 {B_ADDR} 6000 3 4")
    d2.wait_log("src=[fd5c:17::1]:43001")
    time.sleep(0.1)
    assert len(_udp_marked(lab, 43001, (3, 4))) == 20
    assert d2.stop() == 0
    filters = _egress_filters(lab)
    assert "scitagd" not in filters and "u32" in filters, filters
    assert _has_clsact(lab)


def test_own_qdisc_removed_only_when_empty(lab: Lab) -> None:
    d = lab.daemon("markingStrategy: label")
    d.wait_log("attached interface=a0")
    assert "clsact qdisc created interface=a0" in d.text()
    assert d.stop() == 0
    assert not _has_clsact(lab), "the clsact qdisc scitagd created should go with it"
    # Again, but another tool adds a filter to scitagd's qdisc meanwhile: the qdisc stays.
    d = lab.daemon("markingStrategy: label")
    d.wait_log("attached interface=a0")
    lab.a.exec("tc", "filter", "add", "dev", "a0", "egress", "prio", "10", "protocol", "ipv6", "u32",
               "match", "u32", "0", "0", "flowid", "1:1")
    assert d.stop() == 0
    assert "clsact qdisc kept: other filters on it" in d.text()
    assert _has_clsact(lab) and "u32" in _egress_filters(lab)


def test_interfaces_that_appear_or_lose_the_filter(lab: Lab) -> None:
    d = lab.daemon("markingStrategy: label", interfaces="[a0, a1]")
    d.wait_log("attached interface=a0")
    t0 = time.monotonic()
    sh_args = ["ip", "link", "add", "a1", "netns", lab.a.name, "type", "veth", "peer", "name", "b1",
               "netns", lab.b.name]
    subprocess.run(sh_args, check=True)
    lab.a.exec("ip", "link", "set", "a1", "up")
    d.wait_log("attached interface=a1", timeout=5)
    assert time.monotonic() - t0 < 3
    # Someone deletes our filter: it is back within seconds.
    lab.a.exec("tc", "filter", "del", "dev", "a0", "egress", "pref", "1", "handle",
               str(0x5C1A), "bpf")
    assert "scitagd" not in _egress_filters(lab)
    t0 = time.monotonic()
    d.wait_log("re-attached interface=a0", timeout=5)
    assert time.monotonic() - t0 < 3
    assert "scitagd_eth" in _egress_filters(lab)


def test_match_all(lab: Lab) -> None:
    d = lab.daemon("markingStrategy: label, matchAll: true, matchExperiment: 1, matchActivity: 2")
    d.wait_log("attached interface=a0")
    cap = lab.capture()
    for sport in (44001, 44002, 44003, 44004, 44005, 44006):
        lab.tool(lab.a, "udp-send", B_ADDR, "6000", str(sport), "5", "m")
    pkts = [p for p in cap.stop() if p.src == A_ADDR and p.proto == 17]
    assert len(pkts) == 30
    assert {decode_flow_label(p.label) for p in pkts} == {(1, 2)}
    per_flow = {}
    for p in pkts:
        per_flow.setdefault(p.sport, set()).add(gather_entropy(p.label))
    assert all(len(v) == 1 for v in per_flow.values())
    assert len({next(iter(v)) for v in per_flow.values()}) > 1


def test_marker_cli_status_and_clean(lab: Lab) -> None:
    d = lab.daemon("markingStrategy: destination")
    d.wait_log("attached interface=a0")
    d.send(f"start udp {A_ADDR} 45000 {B_ADDR} 6000 2 16")
    d.wait_log("flow start")
    lab.tool(lab.a, "udp-send", B_ADDR, "6000", "45000", "10", "s")
    r = subprocess.run(lab.a.netonly(sys.executable, "-m", "scitagd", "marker", "status", "--pin-path",
                                     lab.pin, "--json"), capture_output=True, text=True, check=True)
    st = __import__("json").loads(r.stdout)
    assert st["strategy"] == "destination" and st["map_entries"] == 2
    assert [i["interface"] for i in st["interfaces"]] == ["a0"]
    assert st["interfaces"][0]["program"] == "scitagd_eth" and st["interfaces"][0]["prog_id"] > 0
    assert any(c["experiment_id"] == 2 and c["activity_id"] == 16 and c["packets"] >= 10
               for c in st["marked"])
    text = subprocess.run(lab.a.netonly(sys.executable, "-m", "scitagd", "marker", "status", "--pin-path",
                                        lab.pin), capture_output=True, text=True, check=True).stdout
    assert "a0" in text and "destination" in text
    d.stop(9)
    r = subprocess.run(lab.a.netonly(sys.executable, "-m", "scitagd", "marker", "clean", "--pin-path",
                                     lab.pin), capture_output=True, text=True, check=True)
    assert "a0" in r.stdout
    assert "scitagd" not in _egress_filters(lab)
    assert not Path(lab.pin).exists()
    assert not _has_clsact(lab)


@pytest.mark.skipif(not (shutil.which("xrootd") and shutil.which("xrdcp")),
                    reason="xrootd-server/xrootd-client not installed")
def test_xrootd_get_over_ipv6_is_marked_and_announced(lab: Lab) -> None:
    """The seed use case: XRootD in A tells scitagd about a GET by firefly; the data leaving A
    carries the tag; the client's host (B) receives scitagd's fireflies."""
    import json as _json

    from ..core.test_xrootd import start_xrootd

    base = Path(__import__("tempfile").mkdtemp(prefix="scitagd-xrd-"))
    base.chmod(0o755)
    try:
        xport, ff = 21094, 29514
        d = lab.daemon("markingStrategy: label",
                       backends="  firefly: {destinationPort: 10514}",
                       plugins=f"  firefly: {{bindAddress: 127.0.0.1, bindPort: {ff}}}")
        d.wait_log("attached interface=a0")
        rcv = lab.start(lab.b, [*TOOLS, "udp-recv", B_ADDR, "10514", "2", "--timeout", "20"])
        assert rcv.stdout is not None and b"listening" in rcv.stdout.readline()
        xrd = start_xrootd(base, xport, f"127.0.0.1:{ff}", prefix=lab.a.cmd(), host=A_ADDR)
        lab.procs.append(xrd)
        cap = lab.capture()
        out = base / "copy"
        r = subprocess.run(lab.b.cmd("xrdcp", "-f", "-s",
                                     f"root://[{A_ADDR}]:{xport}//data/file1?scitag.flow=206", str(out)),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert out.stat().st_size == 3 * MB
        pkts = [p for p in cap.stop() if p.src == A_ADDR and p.sport == xport]
        data = [p for p in pkts if len(p.l4_payload) > 0]
        assert sum(len(p.l4_payload) for p in data) >= 3 * MB
        first = next(i for i, p in enumerate(data) if decode_flow_label(p.label) == (3, 14))
        after = data[first:]
        assert all(decode_flow_label(p.label) == (3, 14) for p in after)
        marked_bytes = sum(len(p.l4_payload) for p in after)
        assert marked_bytes >= 3 * MB, f"only {marked_bytes} bytes of the file were marked"
        fireflies = lab.result(rcv, timeout=30)["datagrams"]
        assert len(fireflies) == 2, d.text()
        docs = [_json.loads(f[f.index("{"):]) for f in fireflies]
        assert all(" scitagd - firefly-json - " in f for f in fireflies)
        assert [x["flow-lifecycle"]["state"] for x in docs] == ["start", "end"]
        assert all((x["context"]["experiment-id"], x["context"]["activity-id"]) == (3, 14) for x in docs)
        assert all(x["flow-id"]["src-ip"] == A_ADDR and x["flow-id"]["dst-ip"] == B_ADDR for x in docs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("strategy", ["label", "destination"])
def test_l3_device_without_ethernet_header(lab: Lab, strategy: str) -> None:
    """A tun device: packets start with the IPv6 header (scitagd_l3), the header goes right
    after it. A tun0 that appears after the start gets the marker within seconds."""
    d = lab.daemon(f"markingStrategy: {strategy}", interfaces="[tun0]")
    reader = lab.start(lab.a, [*TOOLS, "tun-read", "tun0", "3"])
    assert reader.stdout is not None and b"ready" in reader.stdout.readline()
    lab.a.exec("ip", "link", "set", "tun0", "up")
    lab.a.exec("ip", "addr", "add", "fd5c:77::1/64", "dev", "tun0", "nodad")
    d.wait_log("attached interface=tun0 ifindex", timeout=5)
    assert "program=scitagd_l3" in d.text()
    d.send("start udp fd5c:77::1 46000 fd5c:77::2 7000 7 1")
    d.wait_log("flow start")
    time.sleep(0.1)
    # 100 B, a 1,400 B and a full-size (1452 B payload = 1500 B packet) datagram
    for size, tag in ((100, "a"), (1400, "b"), (1452, "c")):
        subprocess.run(lab.a.cmd(sys.executable, "-c", (
            "import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.bind(('::',46000));"
            f"s.sendto(b'{tag}'*{size},('fd5c:77::2',7000))")), check=True)
    from scitagd.lab.tools import parse_ipv6

    raw = lab.result(reader, timeout=20)["packets"]
    pkts = [parse_ipv6(bytes.fromhex(h)) for h in raw]
    assert len(pkts) == 3 and all(p is not None and p.sport == 46000 for p in pkts)
    for p, size in zip(pkts, (100, 1400, 1452)):
        assert p is not None and len(p.l4_payload) == size, "payload moved or cut"
        if strategy == "label":
            assert decode_flow_label(p.label) == (7, 1)
        elif size == 1452:
            assert p.exts == []  # 1,508 B would not fit the MTU: left unmarked, counted
        else:
            assert p.exts == [(60, 0, 0x1E, 7, 1)]


def test_discover_interfaces(lab: Lab) -> None:
    """discoverInterfaces: every interface with a global IPv6 address (a0 here, not lo)."""
    d = lab.daemon("markingStrategy: label, discoverInterfaces: true", interfaces="[]")
    d.wait_log("attached interface=a0")
    assert "attached interface=lo" not in d.text()


@pytest.mark.skipif(not shutil.which("iperf3"), reason="iperf3 not installed")
def test_no_packet_unmarked_across_reloads(lab: Lab) -> None:
    """SIGHUP twice during a transfer: once with the marker's section unchanged (it keeps
    running untouched), once changed (the new program REPLACEs the old one's filter)."""
    d = lab.daemon("markingStrategy: label")
    d.wait_log("attached interface=a0")
    cap = lab.capture()
    srv = lab.start(lab.b, ["iperf3", "-s", "-1", "-B", B_ADDR, "-p", "5201"])
    time.sleep(0.3)
    d.send(f"start tcp {A_ADDR} 40100 {B_ADDR} 5201 6 9")
    d.wait_log("src=[fd5c:17::1]:40100")
    cli = lab.start(lab.a, ["iperf3", "-c", B_ADDR, "-p", "5201", "--cport", "40100", "-t", "4", "-b", "200M"])
    time.sleep(1.0)
    original = d.conf.read_text()
    d.conf.write_text(original + "flowTable: {expireAfter: 7200}\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("scitagd.daemon reloaded")
    time.sleep(1.0)
    d.conf.write_text(original.replace("checkInterval: 0.5", "checkInterval: 0.7"))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("scitagd.daemon reloaded", count=2)
    assert cli.wait(30) == 0
    srv.wait(10)
    pkts = cap.stop()
    text = d.text()
    reloads = [x for x in text.splitlines() if "scitagd.daemon reloaded" in x]
    assert "kept=backends.marker" in reloads[0] and "rebuilt=backends.marker" in reloads[1], reloads
    data = [p for p in sent_by_a(pkts, 6, 40100) if p.payload_len > 0]
    assert len(data) > 1000
    unmarked = [p for p in data if decode_flow_label(p.label) != (6, 9)]
    record("marking across two SIGHUP reloads (marker kept, then replaced)", data_packets=len(data),
           unmarked=len(unmarked), entropy_values=len({gather_entropy(p.label) for p in data}))
    assert not unmarked, f"{len(unmarked)} of {len(data)} data packets left unmarked across the reloads"
    assert len({gather_entropy(p.label) for p in data}) == 1  # the flow kept its entropy too
    assert "Traceback" not in text and "detached interface" not in text


def test_grafana_daemon_dashboard_uses_exported_metrics(lab: Lab) -> None:
    from ..grafana_check import check_structure, exported, load, metric_names

    dash = load("scitagd-daemon.json")
    check_structure(dash)
    used = metric_names(dash)
    assert {"scitagd_marked_bytes_total", "scitagd_unmarked_packets_total", "scitagd_fireflies_sent_total"} <= used
    d = lab.daemon("markingStrategy: label", backends="  firefly: {destinationPort: 10514}")
    d.wait_log("attached interface=a0")
    srv = lab.server(5001)
    d.send(f"start tcp {A_ADDR} 40555 {B_ADDR} 5001 2 3", "garbage line")
    d.wait_log("flow start")
    lab.result(lab.start(lab.a, [*TOOLS, "tcp-client", B_ADDR, "5001", "40555", str(MB), "--tclass", "0",
                                 "--seed", "1"]))
    lab.result(srv)
    d.send(f"end tcp {A_ADDR} 40555 {B_ADDR} 5001 2 3")
    d.wait_log("flow end")
    text = d.metrics_text()
    have = exported(d.metrics()) | {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    have |= {n + "_total" for n in list(have)}
    assert used <= have, used - have
