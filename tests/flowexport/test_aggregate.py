# SPDX-License-Identifier: Apache-2.0
"""Aggregator, path index, config sections and the asyncio receivers on real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from typing import List

import msgspec
import pytest

from scitagd.flowexport import templates as tpl
from scitagd.flowexport.aggregate import Aggregator, PathIndex, Row
from scitagd.flowexport.conf import IpfixConfig, NetflowConfig, SflowConfig
from scitagd.flowexport.ipfix import IpfixDecoder
from scitagd.flowexport.receiver import IpfixReceiver, SflowReceiver, matcher_for, source_host
from scitagd.flowexport.records import FlowRecord
from scitagd.flowexport.session import Limits
from scitagd.flowexport.tagging import TagMatcher
from scitagd.registry import Registry

from ..conftest import free_port, require_shared
from . import build as b
from .pcaputil import DATA, udp_payloads

A, B = b.ip6("2001:db8::1"), b.ip6("2001:db8::2")


def rec(exporter: str = "e1", iface: int = 1, exp: int | None = 3, act: int | None = 14, nbytes: int = 100,
        t: float = 120.0, src: bytes = A, family: int = 6, via: str = "label", direction: int = 0) -> FlowRecord:
    return FlowRecord(exporter, 0, iface, None, direction, 6, family, src, B, 1, 2, 0, exp, act, nbytes, 1, t,
                      via if exp is not None else "")


def test_minutes_and_untagged_share() -> None:
    rows: List[Row] = []
    agg = Aggregator(rows.extend)
    agg.add([rec(t=120), rec(t=179), rec(t=180), rec(exp=None, act=None, nbytes=900, t=130),
             rec(exp=None, act=None, family=4, src=b"\1\2\3\4", nbytes=50, t=130)])
    assert agg.flush(now=200) == []  # minute 120 ended at 180, grace 90 s
    agg.flush(now=271)
    assert [(r.minute, r.experiment, r.family, r.bytes, r.records) for r in rows] == [
        (120, 3, 6, 200, 2), (120, None, 6, 900, 1), (120, None, 4, 50, 1)]
    agg.flush(everything=True)
    assert rows[-1].minute == 180 and agg.buckets == {}


def test_bounded_label_sets() -> None:
    rows: List[Row] = []
    agg = Aggregator(rows.extend, max_exporters=2, max_interfaces=3, max_tags=2)
    agg.add(rec(exporter=f"e{i}") for i in range(5))
    agg.add(rec(iface=i) for i in range(10))
    agg.add(rec(exp=e, act=1) for e in range(1, 6))
    agg.flush(everything=True)
    assert agg.overflow == {"exporter": 3, "interface": 7, "tag": 4}  # (3, 14) came first
    assert {r.exporter for r in rows} == {"e0", "e1", "other"}
    assert {r.interface for r in rows} == {0, 1, 2, -1} or -1 in {r.interface for r in rows}
    assert (-1, -1) in {(r.experiment, r.activity) for r in rows}
    assert sum(r.bytes for r in rows) == 20 * 100  # nothing lost by folding


def test_marking_prefixes_confirm_label_tags() -> None:
    rows: List[Row] = []
    agg = Aggregator(rows.extend, marking_prefixes=["2001:db8:1::/48"], false_positive_rate=0.0035)
    inside = b.ip6("2001:db8:1::5")
    agg.add([rec(src=inside), rec(), rec(via="dst")])
    agg.flush(everything=True)
    tagged = sum(r.bytes for r in rows if r.experiment is not None)
    assert tagged == 200 and agg.unconfirmed == {"e1": 100}  # the option header needs no confirmation
    assert agg.expected_false_positive_bytes(1_000_000) == pytest.approx(3512.3, rel=1e-3)


def test_path_index() -> None:
    idx = PathIndex(max_flows=2)
    idx.add([rec(exporter="r1", iface=5), rec(exporter="r2", iface=7, direction=1), rec(exp=None)])
    found = idx.lookup("2001:db8::2", "2001:db8::1", 6, 2, 1)  # the reverse of the recorded flow
    assert sorted((rev, o.exporter) for rev, o in found) == [(True, "r1"), (True, "r2")]
    idx.add([rec(src=b.ip6(f"2001:db8::{i + 10}")) for i in range(3)])
    assert len(idx.flows) == 2 and idx.evicted == 2


def test_generic_and_generated_decoders_agree() -> None:
    m = TagMatcher.from_registry(Registry.bundled())
    tpl._cache.clear()  # compiled templates are shared: start without generated decoders
    fast, slow = IpfixDecoder(m), IpfixDecoder(m, Limits(generate_rate=0))
    a, b_ = [], []
    for src, _, p, ts in udp_payloads(require_shared(DATA / "ovs-ipfix.pcap")):
        b_ += slow.decode(p, src, ts)
        a += fast.decode(p, src, ts)
    assert slow.counters.generic_sets > 0 and a == b_ and len(a) == 12


def test_config_errors_name_the_key() -> None:
    assert msgspec.convert({}, IpfixConfig).port == 4739
    assert msgspec.convert({}, NetflowConfig).port == 2055
    assert msgspec.convert({}, SflowConfig).port == 6343
    for cls, doc, text in [
        (IpfixConfig, {"templateTimeout": 5}, "templateTimeout 5"),
        (IpfixConfig, {"allowedSources": ["nope"]}, "allowedSources 'nope'"),
        (SflowConfig, {"port": 0}, "port 0"),
        (SflowConfig, {"templateTimeout": 60}, "templateTimeout"),  # not an sFlow key
        (IpfixConfig, {"receiveBuffer": 10}, "receiveBuffer 10"),
    ]:
        with pytest.raises(msgspec.ValidationError, match=text):
            msgspec.convert(doc, cls)


def test_source_host() -> None:
    assert source_host(("::ffff:192.0.2.1", 1, 0, 0)) == "192.0.2.1"
    assert source_host(("fe80::1%eth0", 1, 0, 0)) == "fe80::1"


def test_receivers_on_loopback() -> None:
    """Real sockets: the OVS capture replayed to an IPFIX receiver, an sFlow receiver that only
    allows 127.0.0.2, kernel drop counters readable."""

    async def main() -> None:
        got: List[FlowRecord] = []
        conf = msgspec.convert({"bindAddresses": ["::1"], "port": free_port(socket.SOCK_DGRAM, "::1")}, IpfixConfig)
        rx = IpfixReceiver(conf, matcher_for(conf), got.extend)
        sconf = msgspec.convert({"bindAddresses": ["127.0.0.1"], "port": free_port(socket.SOCK_DGRAM), "allowedSources": ["127.0.0.2/32"]},
                                SflowConfig)
        srx = SflowReceiver(sconf, matcher_for(sconf), got.extend)
        await rx.start()
        await srx.start()
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                for _, _, p, _ in udp_payloads(require_shared(DATA / "ovs-ipfix.pcap")):
                    s.sendto(p, ("::1", rx.ports[0]))
            sflow = [p for _, _, p, _ in udp_payloads(require_shared(DATA / "ovs-sflow.pcap"))]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(sflow[0], ("127.0.0.1", srx.ports[0]))
            for _ in range(200):
                if len(got) >= 12 and srx.datagrams:
                    break
                await asyncio.sleep(0.01)
            assert len(got) == 12 and rx.datagrams == 32
            assert srx.not_allowed == 1 and srx.decoder.rejects.counts == {("127.0.0.1", "not_allowed"): 1}
            assert rx.drops() == 0
        finally:
            await rx.stop()
            await srx.stop()

    asyncio.run(main())
