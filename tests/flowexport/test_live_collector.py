# SPDX-License-Identifier: Apache-2.0
"""End to end: scitagd's eBPF marker tags A's flows, a live Open vSwitch between A and B exports
IPFIX and sFlow to a real `scitagd collector` running in B, and the daemon's fireflies reach the
same collector (B is the flows' peer). Checked through the collector's own API: per link, the
bytes per experiment equal what crossed the wire (a raw capture at B; sampling 1, so exactly),
within one export interval of the transfers' end; and each reported flow carries the path the
switch saw it on, with the tag it had there.

    A (marker, fireflies) --a0|pa-- switch (OVS netdev bridge) --pb|b1-- B (collector, capture)
                                       |  m0 -------- m1  (192.0.2.0/30: exports to B)

Every process is stopped by its pid and every namespace deleted, also on failure. ~20 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from scitagd.lab.netlab import NetNS
from scitagd.lab.util import wait_for

from ..conftest import IS_ROOT
from .test_live import Procs, marked_transfers, need, start_ovs, switch_between

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not IS_ROOT, reason="needs root (network namespaces, eBPF, Open vSwitch)")]

CMS_AI, ATLAS_DB = (3, 14), (2, 3)
EXPORT_INTERVAL = 5  # OVS cache_active_timeout (start_ovs)
SW_ADDR, B_MGMT = "192.0.2.1", "192.0.2.2"


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="scitagd-links-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class InB:
    """The collector's HTTP API, asked from inside B (it listens on B's loopback)."""

    def __init__(self, ns: NetNS, port: int) -> None:
        self.ns = ns
        self.port = port

    def get(self, path: str) -> Any:
        code = (f"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
                f"'http://127.0.0.1:{self.port}{path}', timeout=5).read().decode())")
        r = subprocess.run(self.ns.cmd(sys.executable, "-c", code), capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


def link_tags(links: List[Dict[str, Any]], exporter: str) -> Dict[Tuple[Any, ...], Dict[Tuple[int, int], int]]:
    return {(x["domain"], x["interface"], x["direction"]): {(t["exp"], t["act"]): t["bytes"] for t in x["tags"]}
            for x in links if x["exporter"] == exporter}


def test_marker_ovs_collector_links_and_paths(tmp: Path) -> None:
    need("ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ovs-vsctl", "ethtool")
    from ..lab import A_ADDR, B_ADDR
    from ..lab import Lab as MarkerLab

    lab = MarkerLab(tmp)  # takes the lab lock: the marker shares the host with other labs
    procs = Procs(tmp)
    sw: Optional[NetNS] = None
    try:
        sw = switch_between(lab, "ls", mgmt=(SW_ADDR, B_MGMT))

        # the collector in B: fireflies on 10514 (A's daemon sends them to the peer), exports on 4739/6343
        conf = tmp / "collector.yaml"
        conf.write_text(f"""
collector:
  udp: {{bindAddresses: ["::"], port: 10514}}
  store: {{path: {tmp / "c.sqlite"}, flushInterval: 0.1}}
  http: {{port: 8088}}
  ipfix: {{bindAddresses: ["{B_MGMT}"], port: 4739, allowedSources: ["{SW_ADDR}/32"]}}
  sflow: {{bindAddresses: ["{B_MGMT}"], port: 6343, allowedSources: ["{SW_ADDR}/32"]}}
""")
        clog = tmp / "collector.log"
        collector = lab.start(lab.b, [sys.executable, "-m", "scitagd", "collector", "--config", str(conf)], out=clog)
        wait_for(lambda: "scitagd.collector started" in clog.read_text() or collector.poll() is not None, 20,
                 "collector start")
        assert collector.poll() is None, clog.read_text()
        api = InB(lab.b, 8088)
        start_ovs(procs, sw, tmp, targets=(f"{B_MGMT}:4739", f"{B_MGMT}:6343"))

        d = lab.daemon("markingStrategy: label", backends="  firefly: {prependSyslog: true}")
        d.wait_log("attached interface=a0")
        pkts, ended = marked_transfers(lab, procs, d, (40041, 5041, CMS_AI, 600_000), (41041, 6041, ATLAS_DB, 50, 400))
        truth: Dict[Tuple[str, str, int, int, int], int] = defaultdict(int)
        for p in pkts:
            if p.proto in (6, 17) and {p.sport, p.dport} & {5041, 6041}:
                truth[(p.src, p.dst, p.proto, p.sport, p.dport)] += 40 + p.payload_len
        a_tcp, a_udp = (A_ADDR, B_ADDR, 6, 40041, 5041), (A_ADDR, B_ADDR, 17, 41041, 6041)
        assert truth[a_udp] == 50 * 448 and truth[a_tcp] > 600_000
        want = {CMS_AI: truth[a_tcp], ATLAS_DB: truth[a_udp]}

        # per link and experiment, from the collector's API, as soon as the switch has exported
        def tagged_links(exporter: str) -> Dict[Tuple[Any, ...], Dict[Tuple[int, int], int]]:
            return {k: v for k, v in link_tags(api.get("/api/v1/links?from=-1h")["links"], exporter).items() if v}

        seen_at = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ipfix = tagged_links(SW_ADDR)
            if len(ipfix) == 1 and next(iter(ipfix.values())) == want:
                seen_at = time.monotonic() - ended
                break
            time.sleep(0.25)
        assert seen_at is not None, f"IPFIX links {tagged_links(SW_ADDR)}, wire {want}\n{clog.read_text()[-3000:]}"
        (place, tags), = tagged_links(SW_ADDR).items()
        assert place[0] == 77 and place[2] == "ingress" and tags == want  # exact at sampling 1
        # within one export interval of the end (plus the collector's 1 s link flush and polling)
        assert seen_at <= EXPORT_INTERVAL + 3, f"{seen_at:.1f} s after the transfers ended"
        print(f"links visible in the API {seen_at:.1f} s after the transfers ended")
        # the same switch's sFlow (agent: its loopback) gives the same per-experiment bytes
        wait_for(lambda: list(tagged_links("127.0.0.1").values()) == [want], 10, "sFlow links")

        # fireflies (from A's daemon, to the peer B) get the path the switch saw their flows on
        def paths() -> Dict[int, List[Dict[str, Any]]]:
            return {f["sport"]: f.get("path", []) for f in api.get("/api/v1/flows?from=-1h")["flows"]}

        wait_for(lambda: all(any(p["exporter"] == SW_ADDR for p in v) for v in paths().values())
                 and len(paths()) == 2, 15, "paths on the reported flows")
        got = paths()
        tcp_ipfix = [p for p in got[40041] if p["exporter"] == SW_ADDR]
        assert {(p["domain"], p["interface"], p["direction"], p["reverse"]) for p in tcp_ipfix} >= {
            (77, place[1], "ingress", False)}
        fwd = [p for p in tcp_ipfix if not p["reverse"]]
        assert {p["tag"]["exp"] for p in fwd} == {3} and sum(p["bytes"] for p in fwd) == truth[a_tcp]
        back = [p for p in tcp_ipfix if p["reverse"]]
        assert back and all(p["tag"] is None for p in back)  # B's ACKs: B does not mark
        udp_path = [p for p in got[41041] if p["exporter"] == SW_ADDR]
        assert [(p["tag"], p["bytes"]) for p in udp_path] == [({"exp": 2, "act": 3}, truth[a_udp])]
        assert any(p["exporter"] == "127.0.0.1" for p in got[40041])  # and the sFlow view of it
        ex = {s["section"]: s for s in api.get("/api/v1/exporters")["sections"]}
        assert ex["ipfix"]["rejected"] == [] and ex["sflow"]["rejected"] == []
        assert ex["ipfix"]["kernel_drops"] == 0 and ex["ipfix"]["datagrams"] > 0
        assert "Traceback" not in clog.read_text()
        d.stop()
    finally:
        procs.close()
        lab.close()
        if sw is not None:
            sw.close()
