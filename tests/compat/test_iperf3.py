# SPDX-License-Identifier: Apache-2.0
"""flowd-go's `plugins.iperf3` on scitagd's watcher, with real iperf3 in two namespaces: every TCP
connection within the port bounds gets the next (experiment, activity) pair of the lists, on the
wire from its first packet (raw capture in B) and in its start and end fireflies."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Dict, List, Tuple

import pytest

from scitagd.tags import decode_flow_label

from ..lab import A_ADDR, B_ADDR, TOOLS, Lab

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("iperf3"), reason="iperf3 not installed")]


def iperf3_runs(lab: Lab, n: int, port: int = 5201) -> None:
    for _ in range(n):
        srv = lab.start(lab.b, ["iperf3", "-s", "-1", "-B", B_ADDR, "-p", str(port)])
        time.sleep(0.3)
        r = subprocess.run(lab.a.cmd("iperf3", "-c", B_ADDR, "-p", str(port), "-n", "2M", "-J"),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        srv.wait(10)


def connections(pkts: List, port: int = 5201) -> Dict[int, List]:
    """Client source port -> its packets sent by A, in the order the connections began."""
    out: Dict[int, List] = {}
    for p in pkts:
        if p.src == A_ADDR and p.proto == 6 and p.dport == port:
            out.setdefault(p.sport, []).append(p)
    return out


def fireflies(raw: List[str]) -> List[dict]:
    return [json.loads(g[g.index("{"):]) for g in raw]


def run_case(lab: Lab, plugin: str, runs: int) -> Tuple[Dict[int, List], List[dict]]:
    d = lab.daemon("markingStrategy: label", plugins=plugin,
                   backends="  firefly: {destinationPort: 10514, prependSyslog: false}")
    d.wait_log("sock_ops attached")
    rcv = lab.start(lab.b, [*TOOLS, "udp-recv", B_ADDR, "10514", str(4 * runs), "--timeout", "8"])
    assert rcv.stdout is not None and b"listening" in rcv.stdout.readline()
    cap = lab.capture()
    iperf3_runs(lab, runs)
    time.sleep(0.3)
    conns = connections(cap.stop())
    ffs = fireflies(lab.result(rcv, timeout=20)["datagrams"])
    assert d.stop() == 0
    return conns, ffs


def test_iperf3_pairs_in_turn_on_the_wire_and_in_fireflies(lab: Lab) -> None:
    pairs = [(2, 16), (3, 14), (5, 10)]
    plugin = ("  iperf3: {minDestinationPort: 5201, maxDestinationPort: 5201, cgroupPath: /sys/fs/cgroup, "
              f"experimentIDs: {[e for e, _ in pairs]}, activityIDs: {[a for _, a in pairs]}}}")
    conns, ffs = run_case(lab, plugin, 2)
    assert len(conns) == 4, f"expected 4 connections (2 runs of control + data), saw {sorted(conns)}"
    got = []
    for sport, pkts in conns.items():
        data = [p for p in pkts if p.l4_payload]  # the SYN leaves before the connection is established
        labels = {decode_flow_label(p.label) for p in data}
        assert len(labels) == 1, f"connection {sport} carried several tags {labels}"
        assert decode_flow_label(data[0].label) in pairs, "its first data packet is not marked"
        got.append(labels.pop())
    # in turn, in the order the connections were established: 0, 1, 2, 0
    assert got == [pairs[i % 3] for i in range(4)], got
    starts = {f["flow-id"]["src-port"]: f for f in ffs if f["flow-lifecycle"]["state"] == "start"}
    ends = {f["flow-id"]["src-port"]: f for f in ffs if f["flow-lifecycle"]["state"] == "end"}
    # scitagd reports this host (the iperf3 client here) as src, the peer B as dst
    for sport, pair in zip(conns, got):
        for doc in (starts[sport], ends[sport]):
            assert (doc["context"]["experiment-id"], doc["context"]["activity-id"]) == pair
            assert doc["flow-id"]["dst-port"] == 5201 and doc["flow-id"]["src-ip"] == A_ADDR
    # flowd-go's bug (reference 7.1 #9): its end carries the pair in turn now, not the start's
    assert ends[list(conns)[0]]["context"]["experiment-id"] == 2


def test_iperf3_random_pairs_stay_in_the_lists(lab: Lab) -> None:
    pairs = [(2, 16), (3, 14), (5, 10)]
    plugin = ("  iperf3: {minDestinationPort: 5201, maxDestinationPort: 5201, randomIDs: true, "
              f"cgroupPath: /sys/fs/cgroup, experimentIDs: {[e for e, _ in pairs]}, "
              f"activityIDs: {[a for _, a in pairs]}}}")
    conns, ffs = run_case(lab, plugin, 4)
    assert len(conns) == 8
    got = [decode_flow_label([p for p in ps if p.l4_payload][0].label) for ps in conns.values()]
    assert set(got) <= set(pairs) and len(set(got)) > 1, got
    starts = {f["flow-id"]["src-port"]: (f["context"]["experiment-id"], f["context"]["activity-id"])
              for f in ffs if f["flow-lifecycle"]["state"] == "start"}
    assert [starts[sp] for sp in conns] == got


def test_iperf3_port_bounds_leave_other_connections_alone(lab: Lab) -> None:
    plugin = ("  iperf3: {minDestinationPort: 5300, maxDestinationPort: 5400, cgroupPath: /sys/fs/cgroup, "
              "experimentIDs: [2], activityIDs: [16]}")
    conns, ffs = run_case(lab, plugin, 1)
    assert conns and all(decode_flow_label(p.label) != (2, 16) for ps in conns.values() for p in ps)
    assert not [f for f in ffs if f["flow-id"]["dst-port"] == 5201]
