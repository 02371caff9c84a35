# SPDX-License-Identifier: Apache-2.0
"""Router flow exports into a real `scitagd collector` process: the shared captures (Open vSwitch
IPFIX and sFlow, softflowd PSAMP, pmacctd sFlow) replayed over UDP, read back through
/api/v1/links, /api/v1/links/timeseries, /api/v1/flows (paths), /api/v1/exporters and /metrics;
restarts; strict parameters; hostile input against the running process."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import pytest

from ..conftest import free_port, http
from ..flowexport import build as b
from .linkutil import replay, v6_firefly
from .test_collector import CollectorProc, collector  # noqa: F401  (fixture)

A, B = "fd00:78::1", "fd00:78::2"  # the OVS captures' hosts
CMS_AI = [3, 14]
UDP = socket.SOCK_DGRAM


def links_collector(make: Callable[..., CollectorProc], extra: str = "", name: str = "c") -> CollectorProc:
    ipfix, sflow = free_port(UDP), free_port(UDP)
    c = make(f'  ipfix: {{bindAddresses: ["::"], port: {ipfix}}}\n'
             f'  sflow: {{bindAddresses: ["::"], port: {sflow}}}\n{extra}', name)
    c.ipfix, c.sflow = ipfix, sflow  # type: ignore[attr-defined]
    return c


def by_link(c: CollectorProc, query: str = "from=-1h") -> Dict[Tuple[Any, ...], Dict[str, Any]]:
    return {(x["exporter"], x["domain"], x["interface"], x["direction"]): x
            for x in c.api(f"/api/v1/links?{query}")["links"]}


def tag_bytes(link: Dict[str, Any]) -> Dict[Tuple[int, int], int]:
    return {(t["exp"], t["act"]): t["bytes"] for t in link["tags"]}


def replay_all(c: CollectorProc) -> None:
    replay("ovs-ipfix.pcap", c.ipfix)  # type: ignore[attr-defined]
    replay("ovs-sflow.pcap", c.sflow)  # type: ignore[attr-defined]  (agent 127.0.0.1)
    replay("pmacctd-sflow.pcap", c.sflow)  # type: ignore[attr-defined]  (agent ::1, sub-agent 7)
    replay("softflowd-psamp.pcap", c.ipfix, host="127.0.0.1")  # type: ignore[attr-defined]


OVS_IN = ("::1", 123, 8, "ingress")  # the tagged UDP flow enters the switch here
OVS_OUT = ("::1", 123, 10, "egress")
OVS_SFLOW = ("127.0.0.1", 0, 8, "unknown")
PMACCT = ("::1", 7, None, "unknown")
PSAMP = ("127.0.0.1", 0, None, "unknown")
# From the truth captures (tests/flowexport/test_captures.py): the UDP flow is 5 packets of 148
# IP bytes; pmacctd's first datagram (corrupt, rejected) carried one of them.
WANT_CMS = {OVS_IN: 740, OVS_OUT: 740, OVS_SFLOW: 740, PMACCT: 592, PSAMP: 740}


def test_replayed_exports_per_link_paths_and_metrics(collector: Callable[..., CollectorProc]) -> None:  # noqa: F811
    c = links_collector(collector)
    t0 = time.time()
    c.send(v6_firefly("start", A, 40011, B, 5001, start=t0 - 5))
    c.send(v6_firefly("start", A, 40012, B, 5001, exp=2, act=3, proto="tcp", start=t0 - 5))
    time.sleep(0.3)  # the collector has taken the fireflies: their flows are watched
    replay_all(c)
    c.wait(lambda: all(tag_bytes(by_link(c).get(k, {"tags": []})).get((3, 14)) == v for k, v in WANT_CMS.items()))
    links = by_link(c)
    for key, want in WANT_CMS.items():
        assert tag_bytes(links[key]) == {(3, 14): want}, (key, links[key])
        assert links[key]["tags"][0]["experiment"] == "cms" and links[key]["tags"][0]["activity"] == "Analysis Input"
    # one link exported two ways (IPFIX and sFlow from the same switch): the same bytes
    assert links[OVS_IN]["bytes"] == links[OVS_SFLOW]["bytes"] == 2812
    ovs = links[OVS_IN]
    assert ovs["tagged_share"] == pytest.approx(740 / 2812) and ovs["untagged_ipv6_bytes"] == 2812 - 740
    assert ovs["expected_false_positive_bytes"] == round((2812 - 740) * 114 / (32768 - 114))
    assert c.api("/api/v1/links?from=-1h")["false_positive_rate"] == pytest.approx(114 / 32768)

    ts = c.api("/api/v1/links/timeseries?from=-1h&exporter=::1&domain=123&interface=8&direction=ingress")
    series = {s["name"]: sum(v for _, v in s["points"]) for s in ts["series"]}
    assert series == {"cms": 740, "untagged": 2812 - 740} and ts["by"] == "experiment" and ts["step"] == 60
    by_act = c.api("/api/v1/links/timeseries?from=-1h&interface=8&direction=ingress&experiment=cms")
    assert {s["name"] for s in by_act["series"]} == {"Analysis Input", "untagged"}

    # the fireflies' flows get the path the exporters saw, with the tag on the wire
    c.send(v6_firefly("end", A, 40011, B, 5001, start=t0 - 5, t=time.time(), sent=740))
    c.send(v6_firefly("end", A, 40012, B, 5001, exp=2, act=3, proto="tcp", start=t0 - 5, t=time.time()))
    c.wait(lambda: len([f for f in c.api("/api/v1/flows?from=-1h")["flows"] if f["state"] == "ended"]) == 2)
    flows = {f["sport"]: f for f in c.api("/api/v1/flows?from=-1h")["flows"]}
    udp = {(p["exporter"], p["domain"], p["interface"], p["direction"]): p for p in flows[40011]["path"]}
    assert set(udp) == {OVS_IN, OVS_OUT, OVS_SFLOW}  # pmacctd and softflowd watched other hosts (fd00:77::)
    assert all(p["tag"] == {"exp": 3, "act": 14} and not p["reverse"] for p in udp.values())
    assert udp[OVS_IN]["bytes"] == 740 and udp[OVS_IN]["packets"] == 5
    tcp = flows[40012]["path"]
    # label 0x4abcd is no registry tag: the flow is seen untagged, both ways (B's ACKs: reverse)
    assert {p["tag"] is None for p in tcp} == {True}
    assert {(p["interface"], p["direction"], p["reverse"]) for p in tcp if p["exporter"] == "::1"} == {
        (8, "ingress", False), (10, "egress", False), (10, "ingress", True), (8, "egress", True)}

    ex = c.api("/api/v1/exporters")
    sec = {s["section"]: s for s in ex["sections"]}
    assert sec["sflow"]["rejected"] == [{"exporter": "::1", "reason": "bad_length", "count": 1}]
    assert "sample 0 length" in sec["sflow"]["last_rejected"][0]["detail"]
    assert sec["ipfix"]["rejected"] == [] and sec["ipfix"]["kernel_drops"] == 0
    assert sec["ipfix"]["time_replaced"]  # the captures are older than maxClockSkew: counted at arrival
    assert sec["ipfix"]["receive_buffer"] >= 1 << 20 and sec["ipfix"]["known_activities_only"] is True

    m = c.metrics()
    key = ('scitagd_collector_link_bytes_total{activity="Analysis Input",activity_id="14",direction="ingress",'
           'domain="123",experiment="cms",experiment_id="3",exporter="::1",interface="8"}')
    assert m[key] == 740
    assert m['scitagd_collector_flowexport_rejected_total{exporter="::1",protocol="sflow",reason="bad_length"}'] == 1
    assert m['scitagd_collector_flowexport_datagrams_total{protocol="ipfix"}'] == 32 + 361
    assert m['scitagd_collector_flowexport_kernel_drops_total{protocol="ipfix"}'] == 0
    share = m['scitagd_collector_link_tagged_share{direction="ingress",domain="123",exporter="::1",interface="8"}']
    assert share == pytest.approx(740 / 2812)
    assert "Traceback" not in c.log.read_text()


def test_restart_keeps_and_adds(collector: Callable[..., CollectorProc]) -> None:  # noqa: F811
    c = links_collector(collector)
    replay("ovs-ipfix.pcap", c.ipfix)  # type: ignore[attr-defined]
    c.wait(lambda: tag_bytes(by_link(c).get(OVS_IN, {"tags": []})) == {(3, 14): 740})
    replay("ovs-ipfix.pcap", c.ipfix)  # type: ignore[attr-defined]
    time.sleep(0.3)
    assert c.stop() == 0  # SIGTERM: what was received is written
    c.start()
    assert tag_bytes(by_link(c)[OVS_IN]) == {(3, 14): 1480}
    replay("ovs-ipfix.pcap", c.ipfix)  # type: ignore[attr-defined]  (templates again: a new process)
    c.wait(lambda: tag_bytes(by_link(c)[OVS_IN]) == {(3, 14): 2220})
    assert by_link(c, "from=-3d")[OVS_IN]["bytes"] == 3 * 2812  # the hourly roll-up agrees


def test_firefly_after_the_records_still_gets_its_path(collector: Callable[..., CollectorProc]) -> None:  # noqa: F811
    c = links_collector(collector)
    c.send(v6_firefly("start", "2001:db8::7", 1094, "2001:db8::8", 40000))  # fireflies come, for other flows
    c.wait(lambda: len(c.api("/api/v1/flows?from=-1h")["flows"]) == 1)
    replay("ovs-ipfix.pcap", c.ipfix)  # type: ignore[attr-defined]
    c.wait(lambda: tag_bytes(by_link(c).get(OVS_IN, {"tags": []})) == {(3, 14): 740})
    time.sleep(1.5)  # the records' link rows are written; their tagged places are held, not stored
    t = time.time()
    c.send(v6_firefly("end", A, 40011, B, 5001, start=t - 30, t=t))
    c.send(v6_firefly("end", A, 40012, B, 5001, proto="tcp", start=t - 30, t=t))  # untagged on the wire
    c.wait(lambda: len(c.api("/api/v1/flows?from=-1h")["flows"]) == 3)
    c.wait(lambda: "path" in {f["sport"]: f for f in c.api("/api/v1/flows?from=-1h")["flows"]}[40011])
    flows = {f["sport"]: f for f in c.api("/api/v1/flows?from=-1h")["flows"]}
    assert {(p["interface"], p["direction"], p["bytes"]) for p in flows[40011]["path"]} == {
        (8, "ingress", 740), (10, "egress", 740)}
    assert "path" not in flows[40012]  # untagged records are not held: only a watched flow's are kept


def test_sighup_rebinds_changed_sections_only(collector: Callable[..., CollectorProc]) -> None:  # noqa: F811
    ipfix = free_port(UDP)
    c = collector(f'  ipfix: {{bindAddresses: ["::"], port: {ipfix}}}')
    ipfix2, sflow = free_port(UDP), free_port(UDP)  # free while the collector holds its ports
    replay("ovs-ipfix.pcap", ipfix)
    c.wait(lambda: tag_bytes(by_link(c).get(OVS_IN, {"tags": []})) == {(3, 14): 740})
    text = c.conf.read_text()
    c.conf.write_text(text.replace(f"port: {ipfix}}}", f"port: {ipfix2}}}") +
                      f'  sflow: {{bindAddresses: ["::"], port: {sflow}}}\n')
    c.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    c.wait(lambda: "scitagd.collector reloaded" in c.log.read_text())
    assert "changed=ipfix,sflow" in c.log.read_text()
    sec = {s["section"]: s for s in c.api("/api/v1/exporters")["sections"]}
    assert sec["ipfix"]["ports"] == [ipfix2] and sec["sflow"]["ports"] == [sflow]
    with socket.socket(socket.AF_INET6, UDP) as s:  # the old port is closed
        s.bind(("::", ipfix))
    replay("ovs-ipfix.pcap", ipfix2)
    replay("ovs-sflow.pcap", sflow)
    c.wait(lambda: tag_bytes(by_link(c).get(OVS_IN, {"tags": []})) == {(3, 14): 1480}
           and OVS_SFLOW in by_link(c))
    # a broken section in the new file: nothing changes, the old config stays
    c.conf.write_text(c.conf.read_text() + "  netflow: {port: nope}\n")
    c.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    c.wait(lambda: "config not reloaded" in c.log.read_text())
    assert [s["section"] for s in c.api("/api/v1/exporters")["sections"]] == ["ipfix", "sflow"]
    assert "Traceback" not in c.log.read_text()


BAD_PARAMS = [
    ("links", "from=abc", "from"), ("links", "from=%D9%A1%D9%A2", "from"), ("links", "to=1e9", "to"),
    ("links", "from=-1h&to=-2h", "to"), ("links", "limit=0", "limit"), ("links", "limit=10001", "limit"),
    ("links", "limit=%D9%A3", "limit"), ("links", "exporter=not-an-ip", "exporter"),
    ("links", "exporter=::1%25lo", "exporter"), ("links", "exporter=1.2.3.4.5", "exporter"),
    ("links", "exporter=%3Cscript%3E", "exporter"), ("links", "exporter=" + "1" * 300, "exporter"),
    ("links", "interface=-1", "interface"), ("links", "interface=4294967296", "interface"),
    ("links", "interface=99999999999", "interface"), ("links", "interface=%D9%A3", "interface"),
    ("links", "interface=1.5", "interface"), ("links", "interface=OTHER", "interface"),
    ("links", "domain=x", "domain"), ("links", "direction=in", "direction"),
    ("links/timeseries", "step=59", "step"), ("links/timeseries", "step=abc", "step"),
    ("links/timeseries", "measure=flows", "measure"), ("links/timeseries", "experiment=nosuch", "experiment"),
    ("links/timeseries", "experiment=70000", "experiment"), ("links/timeseries", "direction=%00", "direction"),
]


def test_parameters_are_strict(collector: Callable[..., CollectorProc]) -> None:  # noqa: F811
    c = links_collector(collector)
    for path, query, param in BAD_PARAMS:
        status, body = http("GET", c.url(f"/api/v1/{path}?{query}"))
        assert status == 400 and body["param"] == param, (path, query, status, body)
    for query in ("interface=other", "interface=none", "exporter=::ffff:127.0.0.1", "domain=4294967295",
                  "direction=unknown", "exporter=other", "from=-30d", "from=0&to=4102444800"):
        status, body = http("GET", c.url(f"/api/v1/links?{query}"))
        assert status == 200, (query, body)
    rnd = random.Random(7)
    alphabet = "0123456789abcdefx:.-%ÿ٣ \t"
    for _ in range(300):
        path = rnd.choice(["links", "links/timeseries"])
        name = rnd.choice(["from", "to", "exporter", "domain", "interface", "direction", "limit", "step",
                           "measure", "experiment"])
        value = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 30)))
        status, body = http("GET", c.url(f"/api/v1/{path}?{name}={urllib.parse.quote(value)}"))
        assert status in (200, 400), (path, name, value, status, body)
    assert "Traceback" not in c.log.read_text()


# --- hostile input against the running collector -----------------------------------------------------

def sflow_from(agent: str, iface: int, label: int = 0x30038, n: int = 1) -> bytes:
    pkt = b.eth_ipv6("2001:db8::1", "2001:db8::2", label, payload=100)
    return b.sflow([b.flow_sample([b.raw_header(pkt, len(pkt) + 4)], inp=iface, source_index=iface)] * n, agent=agent)


def test_hostile_exports_floods_spoofed_agents_clocks_and_counters(collector: Callable[..., CollectorProc]  # noqa: F811
                                                                   ) -> None:
    c = links_collector(collector)
    rnd = random.Random(13)
    s4 = socket.socket(socket.AF_INET, UDP)
    # 1. garbage of every size, to both ports, around a valid replay that must still be exact
    for i in range(400):
        s4.sendto(os.urandom(rnd.choice([0, 1, 15, 16, 27, 28, 100, 1400, 9000, 65000])),
                  ("127.0.0.1", c.ipfix if i % 2 else c.sflow))  # type: ignore[attr-defined]
    replay("ovs-ipfix.pcap", c.ipfix)  # type: ignore[attr-defined]
    # 2. 3,000 sFlow agents (the agent address is in the payload: anyone can claim any)
    for i in range(3000):
        s4.sendto(sflow_from(f"10.{i // 250}.{i % 250}.1", 1 + i % 40), ("127.0.0.1", c.sflow))  # type: ignore[attr-defined]
        if i % 200 == 0:
            time.sleep(0.01)
    # 3. export times of 1970 and 2106, and octet counts of 2**64 - 1
    tmpl = b.ipfix([b.set_(2, b.template(300, b.FLOW6))], odid=9)
    data = [b.flow6(0, 5, 17, "2001:db8::1", "2001:db8::2", 0x30038, 1, 2, octets, 1) for octets in (1000, 2**64 - 1)]
    s4.sendto(tmpl, ("127.0.0.1", c.ipfix))  # type: ignore[attr-defined]
    for t, rec in ((0, data[0]), (0xFFFFFFFF, data[0]), (int(time.time()), data[1])):
        s4.sendto(b.ipfix([b.set_(300, rec)], odid=9, export_time=t), ("127.0.0.1", c.ipfix))  # type: ignore[attr-defined]
    s4.close()

    def settled() -> bool:
        links = by_link(c, "from=-1h&limit=10000")
        hostile = links.get(("127.0.0.1", 9, 5, "ingress"))
        return (tag_bytes(links.get(OVS_IN, {"tags": []})) == {(3, 14): 740} and hostile is not None
                and sum(x["packets"] for k, x in links.items() if k[0] not in ("::1", "127.0.0.1")) >= 3000)

    c.wait(settled, timeout=20)
    links = by_link(c, "from=-1h&limit=10000")
    assert links[OVS_IN]["bytes"] == 2812  # the valid exporter, untouched by the flood
    hostile = links[("127.0.0.1", 9, 5, "ingress")]
    assert hostile["tags"][0]["bytes"] == 2000  # both clocks counted now; 2**64 - 1 octets refused
    agents = {k[0] for k in links if k[0] not in ("::1", "127.0.0.1")}
    assert len(agents) <= 257 and "other" in agents  # 256 exporters, then one "other"
    assert sum(x["packets"] for k, x in links.items() if k[0] not in ("::1", "127.0.0.1")) == 3000
    ex = {s["section"]: s for s in c.api("/api/v1/exporters")["sections"]}
    assert sum(r["count"] for r in ex["sflow"]["rejected"]) + sum(r["count"] for r in ex["ipfix"]["rejected"]) >= 350
    assert ex["ipfix"]["time_replaced"].get("127.0.0.1", 0) >= 2
    assert {"exporter": "127.0.0.1", "reason": "implausible_counter", "count": 1} in ex["ipfix"]["rejected"]
    assert ex["sflow"]["labels_folded"]["exporter"] > 0
    m = c.metrics()
    series = [k for k in m if k.startswith("scitagd_collector_link_bytes_total")]
    assert len(series) < 1000
    assert sum(v for k, v in m.items() if k.startswith("scitagd_collector_flowexport_rejected_total")) >= 350
    assert "Traceback" not in c.log.read_text()
    assert http("GET", c.url("/healthz"))[0] == 200


def test_allowed_sources_and_oversized(collector: Callable[..., CollectorProc]) -> None:  # noqa: F811
    ipfix = free_port(UDP)
    c = collector(f'  ipfix: {{bindAddresses: ["::"], port: {ipfix}, allowedSources: ["192.0.2.0/24"]}}')
    n = replay("ovs-ipfix.pcap", ipfix)
    with socket.socket(socket.AF_INET6, UDP) as s:
        s.sendto(b"\x00\x0a" + b"\xff" * 65000, ("::1", ipfix))
    c.wait(lambda: c.api("/api/v1/exporters")["sections"][0]["not_allowed"] == n + 1)
    assert c.api("/api/v1/links?from=-1h")["links"] == []
    sec = c.api("/api/v1/exporters")["sections"][0]
    assert sec["rejected"] == [{"exporter": "::1", "reason": "not_allowed", "count": n + 1}]
    assert sec["allowed_sources"] == ["192.0.2.0/24"]


def test_flow_export_section_errors_stop_the_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    conf = tmp_path / "c.yaml"
    conf.write_text("collector:\n  ipfix: {port: 10514}\n")
    r = subprocess.run([sys.executable, "-m", "scitagd", "collector", "--config", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "ipfix.port 10514: already used by udp" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_port_in_use_is_one_clear_line(collector: Callable[..., CollectorProc], tmp_path: Path) -> None:  # noqa: F811
    import subprocess
    import sys

    busy = socket.socket(socket.AF_INET6, UDP)
    busy.bind(("::", 0))
    port = busy.getsockname()[1]
    try:
        conf = tmp_path / "busy.yaml"
        conf.write_text(f"collector:\n  udp: {{port: {free_port(UDP)}}}\n  http: {{port: {free_port()}}}\n"
                        f"  store: {{path: {tmp_path / 'b.sqlite'}}}\n  ipfix: {{port: {port}}}\n")
        r = subprocess.run([sys.executable, "-m", "scitagd", "collector", "--config", str(conf)],
                           capture_output=True, text=True, timeout=30)
    finally:
        busy.close()
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert str(port) in r.stderr, r.stderr
