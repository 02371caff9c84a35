# SPDX-License-Identifier: Apache-2.0
"""The real exporters' captures (shared/data/flowexport) decoded and checked against the truth
captures of the same traffic: labels, tags, byte and packet counts."""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Tuple

import pytest

from scitagd.flowexport.aggregate import Aggregator, Row
from scitagd.flowexport.ipfix import IpfixDecoder
from scitagd.flowexport.records import FlowRecord
from scitagd.flowexport.sflow import SflowDecoder
from scitagd.flowexport.tagging import TagMatcher
from scitagd.registry import Registry

from ..conftest import require_shared
from .pcaputil import DATA, truth, udp_payloads

FiveTuple = Tuple[str, str, int, int, int]
CMS, ANALYSIS_INPUT = 3, 14  # 0x30038


@pytest.fixture(scope="module")
def matcher() -> TagMatcher:
    return TagMatcher.from_registry(Registry.bundled())


def decode_all(decoder: IpfixDecoder | SflowDecoder, name: str) -> List[FlowRecord]:
    out: List[FlowRecord] = []
    for src, _port, payload, ts in udp_payloads(require_shared(DATA / name)):
        out += decoder.decode(payload, src, ts)
    return out


def truth_by_flow(name: str) -> Dict[FiveTuple, Tuple[int, int, set]]:
    """5-tuple -> (IP bytes, packets, labels) on the exporter's link (frame length less 14)."""
    acc: Dict[FiveTuple, List] = {}
    for p in truth(require_shared(DATA / name)):
        a = acc.setdefault((p.src, p.dst, p.proto, p.sport, p.dport), [0, 0, set()])
        a[0] += p.frame_len - 14
        a[1] += 1
        a[2].add(p.label)
    return {k: (v[0], v[1], v[2]) for k, v in acc.items()}


def by_flow(records: List[FlowRecord]) -> Dict[FiveTuple, Tuple[int, int, set, set]]:
    acc: Dict[FiveTuple, List] = {}
    for r in records:
        a = acc.setdefault((r.src_text, r.dst_text, r.protocol, r.sport, r.dport), [0, 0, set(), set()])
        a[0] += r.bytes
        a[1] += r.packets
        a[2].add(r.flow_label)
        a[3].add((r.experiment, r.activity))
    return {k: (v[0], v[1], v[2], v[3]) for k, v in acc.items()}


def check_against_truth(records: List[FlowRecord], truth_name: str, skip: FiveTuple | None = None) -> None:
    got = by_flow(records)
    want = truth_by_flow(truth_name)
    assert want, "truth capture has no TCP/UDP flows"
    for key, (nbytes, npackets, labels) in want.items():
        if key == skip:
            continue
        assert key in got, f"flow {key} not exported"
        gb, gp, glabels, gtags = got[key]
        assert (gb, gp) == (nbytes, npackets), f"{key}: bytes/packets {gb}/{gp}, truth {nbytes}/{npackets}"
        assert glabels == labels, f"{key}: labels {glabels}, truth {labels}"
        if labels == {0x30038}:
            assert gtags == {(CMS, ANALYSIS_INPUT)}
        else:
            assert gtags == {(None, None)}, f"{key}: {gtags} (the kernel's and 0x4abcd are not registry tags)"


def test_ovs_ipfix(matcher: TagMatcher) -> None:
    dec = IpfixDecoder(matcher)
    records = decode_all(dec, "ovs-ipfix.pcap")
    assert dec.rejects.counts == {}
    assert dec.counters.options_records == 1 and dec.counters.templates >= 89
    # OVS reports every flow twice: flowDirection 0 (ingress) and 1 (egress sampling)
    for direction in (0, 1):
        check_against_truth([r for r in records if r.direction == direction], "ovs-truth.pcap")
    tagged = [r for r in records if r.experiment is not None]
    assert {(r.sport, r.dport, r.via, r.family) for r in tagged} == {(40011, 5001, "label", 6)}
    egress = [r for r in records if r.direction == 1 and r.sport == 40011]
    assert egress[0].ingress == 8 and egress[0].egress == 10


def test_ovs_sflow(matcher: TagMatcher) -> None:
    dec = SflowDecoder(matcher)
    records = decode_all(dec, "ovs-sflow.pcap")
    assert dec.rejects.counts == {} and dec.skipped > 0  # counter samples and switch records skipped
    assert all(r.bytes and r.packets == 1 for r in records)  # sampling=1: one record per packet
    check_against_truth(records, "ovs-truth.pcap")


def test_pmacctd_sflow_first_datagram_rejected(matcher: TagMatcher) -> None:
    dec = SflowDecoder(matcher)
    payloads = list(udp_payloads(require_shared(DATA / "pmacctd-sflow.pcap")))
    assert dec.decode(payloads[0][2], payloads[0][0]) == []
    assert dec.rejects.counts == {("::1", "bad_length"): 1}
    assert "sample 0 length" in dec.rejects.last[-1].detail
    records = [r for src, _, p, ts in payloads[1:] for r in dec.decode(p, src, ts)]
    assert dec.rejects.total() == 1
    # the corrupt datagram carried the UDP flow's first packet: 4 of 5 remain, the rest is exact
    udp = ("fd00:77::1", "fd00:77::2", 17, 40001, 5001)
    check_against_truth(records, "pmacctd-truth.pcap", skip=udp)
    got = by_flow(records)[udp]
    assert got[1] == 4 and got[0] == 4 * 148 and got[3] == {(CMS, ANALYSIS_INPUT)}
    assert {r.exporter for r in records} == {"::1"} and {r.domain for r in records} == {7}


def test_softflowd_psamp(matcher: TagMatcher) -> None:
    dec = IpfixDecoder(matcher)
    records = decode_all(dec, "softflowd-psamp.pcap")
    assert dec.rejects.counts == {}
    assert dec.counters.templates == 1 and len(records) == 360
    filler = ("fd00:77::1", "fd00:77::2", 17, 40009, 5002)
    # softflowd itself dropped some of the 400 filler packets (360 reports in the capture)
    check_against_truth([r for r in records if r.protocol in (6, 17)], "softflowd-psamp-truth.pcap", skip=filler)
    got = by_flow(records)[filler]
    assert got[1] == 327 and got[0] == 327 * (1462 - 14)


def test_aggregated_tagged_share(matcher: TagMatcher) -> None:
    rows: List[Row] = []
    agg = Aggregator(rows.extend)
    dec = IpfixDecoder(matcher)
    ingress = [r for r in decode_all(dec, "ovs-ipfix.pcap") if r.direction == 0]
    agg.add(ingress)
    agg.flush(everything=True)
    per_tag: Counter = Counter()
    for r in rows:
        per_tag[(r.experiment, r.activity)] += r.bytes
    assert per_tag[(CMS, ANALYSIS_INPUT)] == 5 * 148
    neighbour_discovery = sum(r.bytes for r in ingress if r.protocol == 58)
    assert neighbour_discovery > 0
    assert per_tag[(None, None)] == (2212 - 14 * 14) + (706 - 8 * 14) + neighbour_discovery
    assert {r.family for r in rows} == {6} and {r.exporter for r in rows} == {"::1"}
    assert {(r.interface, r.direction) for r in rows} == {(8, 0), (10, 0)}
