"""The eBPF marker for real: namespaces joined by veth, real transfers, a raw capture in the
receiving namespace, and the bits on the wire checked packet by packet."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from scitagd.tags import decode_flow_label, gather_entropy

from .conftest import IS_ROOT
from .lab import A_ADDR, B_ADDR, NETTOOLS, Lab
from .nettools import Packet

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root (network namespaces, eBPF, raw sockets)")

MB = 1 << 20


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


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
    clients = {sp: lab.start(lab.a, [sys.executable, NETTOOLS, "tcp-client", B_ADDR, str(sp - 35000),
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
