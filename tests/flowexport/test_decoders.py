# SPDX-License-Identifier: Apache-2.0
"""Handwritten IPFIX, NetFlow v9, sFlow and sampled-header cases: every feature and its limits."""

from __future__ import annotations

import struct

import pytest

from scitagd.flowexport import templates as tpl
from scitagd.flowexport.ipfix import IpfixDecoder
from scitagd.flowexport.netflow9 import NetflowV9Decoder
from scitagd.flowexport.packet import PacketError, parse_ethernet, parse_ip
from scitagd.flowexport.session import Limits
from scitagd.flowexport.sflow import SflowDecoder
from scitagd.flowexport.tagging import TagMatcher
from scitagd.registry import Registry
from scitagd.tags import encode_ext_option, encode_flow_label

from . import build as b

A, B = "2001:db8::1", "2001:db8::2"
CMS_AI = encode_flow_label(3, 14, 0b10101)  # entropy bits set: must be ignored
EXPORTER = "192.0.2.7"


@pytest.fixture
def matcher() -> TagMatcher:
    return TagMatcher.from_registry(Registry.bundled())


def tmpl_msg(tid: int = 300, spec=b.FLOW6, **kw) -> bytes:  # type: ignore[no-untyped-def]
    return b.ipfix([b.set_(2, b.template(tid, spec))], **kw)


def data_msg(records: list, tid: int = 300, **kw) -> bytes:  # type: ignore[no-untyped-def]
    return b.ipfix([b.set_(tid, b"".join(records))], **kw)


# --- tags --------------------------------------------------------------------------------------

def test_matcher_tables(matcher: TagMatcher) -> None:
    assert matcher.label(0x30038) == (3, 14) and matcher.label(0xF013B) == (3, 14)
    assert matcher.label(0) == (None, None)
    assert matcher.label(encode_flow_label(500, 1)) == (None, None)  # not in the registry
    assert TagMatcher(any_experiment=True).label(encode_flow_label(500, 1)) == (500, 1)
    strict = TagMatcher.from_registry(Registry.bundled(), known_activities_only=True)
    assert strict.label(0x30038) == (3, 14) and strict.label(encode_flow_label(3, 63)) == (None, None)
    assert matcher.false_positive_rate == pytest.approx(14 * 64 / 32768)
    assert strict.false_positive_rate == pytest.approx(114 / 32768)


# --- IPFIX -------------------------------------------------------------------------------------

def test_ipfix_flow_records(matcher: TagMatcher) -> None:
    dec = IpfixDecoder(matcher)
    assert dec.decode(tmpl_msg(), EXPORTER, 100.0) == []
    recs = dec.decode(data_msg([
        b.flow6(0, 5, 6, A, B, CMS_AI, 40000, 443, 1000, 10),
        b.flow6(1, 5, 17, B, A, 0x12345, 443, 40000, 500, 5),
    ], export_time=1_700_000_042), EXPORTER, 101.0)
    assert len(recs) == 2
    r = recs[0]
    assert (r.exporter, r.domain, r.ingress, r.egress, r.direction) == (EXPORTER, 1, 5, None, 0)
    assert (r.src_text, r.dst_text, r.protocol, r.sport, r.dport, r.family) == (A, B, 6, 40000, 443, 6)
    assert (r.flow_label, r.experiment, r.activity, r.via) == (CMS_AI, 3, 14, "label")
    assert (r.bytes, r.packets, r.time) == (1000, 10, 1_700_000_042.0)
    assert (recs[1].experiment, recs[1].via, recs[1].direction) == (None, "", 1)
    assert dec.counters.sequence_gaps == 0


def test_ipfix_label_changes_inside_one_flow_stay_separate(matcher: TagMatcher) -> None:
    """OVS splits a 5-tuple whose label changes into several records: each is accounted."""
    dec = IpfixDecoder(matcher)
    dec.decode(tmpl_msg(), EXPORTER)
    recs = dec.decode(data_msg([b.flow6(0, 1, 6, A, B, 0x11111, 1, 2, 100, 1),
                                b.flow6(0, 1, 6, A, B, CMS_AI, 1, 2, 900, 9)]), EXPORTER)
    assert [(r.experiment, r.bytes) for r in recs] == [(None, 100), (3, 900)]


def test_ipfix_variable_length_and_enterprise_fields(matcher: TagMatcher) -> None:
    spec = [(82, 0xFFFF), (31, 4), (9999, 6, 6876), (27, 16), (28, 16), (83, 0xFFFF), (1, 4), (2, 4),
            (12345, 0xFFFF, 29305)]
    rec = (b.varlen(b"eth0") + struct.pack("!I", CMS_AI) + b"ENTERP" + b.ip6(A) + b.ip6(B)
           + b.varlen(b"x" * 300) + struct.pack("!II", 77, 1) + b.varlen(b""))
    dec = IpfixDecoder(matcher)
    dec.decode(tmpl_msg(400, spec), EXPORTER)
    recs = dec.decode(data_msg([rec, rec, b"\0\0"], tid=400), EXPORTER)  # 2 records + padding
    assert [(r.experiment, r.bytes, r.packets, r.src_text) for r in recs] == [(3, 77, 1, A)] * 2
    assert dec.rejects.counts == {}


def test_ipfix_reduced_size_and_v4(matcher: TagMatcher) -> None:
    spec = [(8, 4), (12, 4), (4, 1), (1, 3), (2, 5), (10, 2)]
    rec = b.ip4("192.0.2.1") + b.ip4("198.51.100.2") + bytes([6]) + (1500).to_bytes(3, "big") + \
        (3).to_bytes(5, "big") + struct.pack("!H", 9)
    dec = IpfixDecoder(matcher)
    dec.decode(tmpl_msg(301, spec), EXPORTER)
    (r,) = dec.decode(data_msg([rec], tid=301), EXPORTER)
    assert (r.family, r.src_text, r.dst_text, r.bytes, r.packets, r.ingress, r.flow_label) == \
        (4, "192.0.2.1", "198.51.100.2", 1500, 3, 9, None)


def test_ipfix_data_before_template_is_held(matcher: TagMatcher) -> None:
    dec = IpfixDecoder(matcher, Limits(hold_time=2.0))
    data = data_msg([b.flow6(0, 1, 17, A, B, CMS_AI, 1, 2, 10, 1)])
    assert dec.decode(data, EXPORTER, 100.0) == []
    recs = dec.decode(tmpl_msg(), EXPORTER, 101.0)  # the template decodes what waited
    assert [r.experiment for r in recs] == [3] and dec.counters.held_decoded == 1
    # too late: counted as undecodable, not decoded
    dec2 = IpfixDecoder(matcher, Limits(hold_time=2.0))
    dec2.decode(data, EXPORTER, 100.0)
    assert dec2.decode(tmpl_msg(), EXPORTER, 103.5) == []
    assert dec2.counters.undecodable_sets == 1 and dec2.rejects.counts == {(EXPORTER, "no_template"): 1}


def test_ipfix_hold_is_bounded(matcher: TagMatcher) -> None:
    dec = IpfixDecoder(matcher, Limits(max_held_sets=4))
    for i in range(10):
        dec.decode(data_msg([b.flow6(0, 1, 17, A, B, 0, 1, 2, 10, 1)], tid=300 + i), EXPORTER, 100.0)
    assert dec.exporters[EXPORTER].held_sets == 4 and dec.counters.undecodable_sets == 6


def test_ipfix_withdrawal_and_expiry(matcher: TagMatcher) -> None:
    dec = IpfixDecoder(matcher, Limits(template_timeout=60))
    rec = data_msg([b.flow6(0, 1, 17, A, B, 0, 1, 2, 10, 1)])
    dec.decode(tmpl_msg(), EXPORTER, 100.0)
    assert len(dec.decode(rec, EXPORTER, 101.0)) == 1
    dec.decode(b.ipfix([b.set_(2, struct.pack("!HH", 300, 0))]), EXPORTER, 102.0)  # withdraw 300
    assert dec.decode(rec, EXPORTER, 103.0) == [] and dec.counters.withdrawals == 1
    dec.decode(tmpl_msg(), EXPORTER, 104.0)
    dec.decode(tmpl_msg(301), EXPORTER, 104.0)
    dec.decode(b.ipfix([b.set_(2, struct.pack("!HH", 2, 0))]), EXPORTER, 105.0)  # withdraw all
    assert dec.template_count() == 0
    dec.decode(tmpl_msg(), EXPORTER, 200.0)
    assert dec.decode(rec, EXPORTER, 261.0) == [] and dec.counters.expired_templates == 1


def test_ipfix_template_per_domain_and_exporter(matcher: TagMatcher) -> None:
    dec = IpfixDecoder(matcher)
    dec.decode(tmpl_msg(odid=1), EXPORTER)
    rec = [b.flow6(0, 1, 17, A, B, 0, 1, 2, 10, 1)]
    assert dec.decode(data_msg(rec, odid=2), EXPORTER) == []  # other domain: held
    assert dec.decode(data_msg(rec, odid=1), "192.0.2.8") == []  # other exporter: held
    assert len(dec.decode(data_msg(rec, odid=1), EXPORTER)) == 1


def test_ipfix_options_sampling_rate(matcher: TagMatcher) -> None:
    dec = IpfixDecoder(matcher)
    opts = b.set_(3, b.options_template(500, 1, [(149, 4), (305, 4), (306, 4)]))
    dec.decode(b.ipfix([opts, b.set_(500, struct.pack("!III", 1, 1, 99))]), EXPORTER)  # 1 in 100
    dec.decode(tmpl_msg(), EXPORTER)
    (r,) = dec.decode(data_msg([b.flow6(0, 1, 17, A, B, 0, 1, 2, 10, 1)]), EXPORTER)
    assert (r.bytes, r.packets) == (1000, 100)
    # a selector id in the record picks its own rate
    opts2 = b.set_(3, b.options_template(501, 1, [(302, 4), (34, 4)]))
    dec.decode(b.ipfix([opts2, b.set_(501, struct.pack("!II", 7, 10))]), EXPORTER)
    dec.decode(tmpl_msg(302, [*b.FLOW6, (302, 4)]), EXPORTER)
    (r,) = dec.decode(data_msg([b.flow6(0, 1, 17, A, B, 0, 1, 2, 10, 1) + struct.pack("!I", 7)], tid=302), EXPORTER)
    assert r.packets == 10
    dec.decode(tmpl_msg(303, [*b.FLOW6, (34, 4)]), EXPORTER)
    (r,) = dec.decode(data_msg([b.flow6(0, 1, 17, A, B, 0, 1, 2, 10, 1) + struct.pack("!I", 4)], tid=303), EXPORTER)
    assert r.packets == 4


def test_psamp_sections_with_options_header(matcher: TagMatcher) -> None:
    spec = [(301, 8), (315, 0xFFFF), (10, 4)]
    frame = b.eth_ipv6(A, B, 0, ext=encode_ext_option(3, 14, 17), first_nh=60, vlan=5)
    rec = struct.pack("!Q", 1) + b.varlen(frame[:90]) + struct.pack("!I", 3)
    dec = IpfixDecoder(matcher)
    dec.decode(tmpl_msg(3072, spec), EXPORTER)
    (r,) = dec.decode(data_msg([rec], tid=3072), EXPORTER)
    assert (r.experiment, r.activity, r.via, r.sport, r.dport, r.ingress) == (3, 14, "dst", 40000, 5001, 3)
    assert (r.bytes, r.packets) == (40 + 8 + 8 + 100, 1)  # the IP header's length, section was cut
    ip_only = struct.pack("!Q", 2) + b.varlen(frame[18:18 + 60]) + struct.pack("!I", 3)
    dec.decode(tmpl_msg(3073, [(301, 8), (313, 0xFFFF), (10, 4)]), EXPORTER)
    (r,) = dec.decode(data_msg([ip_only], tid=3073), EXPORTER)
    assert (r.experiment, r.via, r.bytes) == (3, "dst", 156)


# --- NetFlow v9 ----------------------------------------------------------------------------------

V9 = [(27, 16), (28, 16), (31, 3), (4, 1), (7, 2), (11, 2), (1, 4), (2, 4), (10, 2), (14, 2), (61, 1)]


def v9_rec(label: int, octets: int, packets: int) -> bytes:
    return b.ip6(A) + b.ip6(B) + label.to_bytes(3, "big") + bytes([6]) + struct.pack("!HHIIHHB", 1, 2, octets,
                                                                                       packets, 7, 8, 1)


def test_netflow9(matcher: TagMatcher) -> None:
    dec = NetflowV9Decoder(matcher)
    tmpl = b.set_(0, b.template(256, V9))
    opts = b.set_(1, b.v9_options_template(257, [(1, 4)], [(34, 4)]) + b"\0\0")  # padded
    # count 1 although the datagram has two templates, an options record and two data records
    msg = b.v9([tmpl, opts, b.set_(257, struct.pack("!II", 0, 10)),
                b.set_(256, v9_rec(CMS_AI, 1000, 3) + v9_rec(0, 10, 1) + b"\0\0")], source_id=9, count=1)
    recs = dec.decode(msg, EXPORTER)
    assert dec.rejects.counts == {}
    assert [(r.experiment, r.bytes, r.packets) for r in recs] == [(3, 10000, 30), (None, 100, 10)]
    r = recs[0]
    assert (r.domain, r.ingress, r.egress, r.direction, r.flow_label, r.time) == (9, 7, 8, 1, CMS_AI, 1_700_000_000.0)
    dec.decode(b.v9([b.set_(256, v9_rec(0, 1, 1))], source_id=9, seq=5), EXPORTER)
    assert dec.counters.sequence_gaps == 1 and dec.exporters[EXPORTER].lost == 4


def test_netflow9_rejects(matcher: TagMatcher) -> None:
    dec = NetflowV9Decoder(matcher)
    dec.decode(b.v9([b.set_(0, b.template(256, [(1, 0xFFFF)]))]), EXPORTER)
    dec.decode(b.v9([b.set_(0, b.template(10, [(1, 4)]))]), EXPORTER)
    dec.decode(b.v9([b.set_(1, struct.pack("!HHH", 300, 3, 4) + b"\0" * 8)]), EXPORTER)
    dec.decode(b"\x00\x05" + b"\0" * 30, EXPORTER)
    reasons = {r for (_, r) in dec.rejects.counts}
    assert reasons == {"bad_template", "bad_template_id", "bad_version"}


# --- sFlow ---------------------------------------------------------------------------------------

def test_sflow_samples(matcher: TagMatcher) -> None:
    frame = b.eth_ipv6(A, B, CMS_AI, proto=6)
    frame4 = b.eth_ipv4("192.0.2.1", "192.0.2.2")
    dg = b.sflow([
        b.flow_sample([b.raw_header(frame, 14 + 156 + 4)], rate=512, source_index=3, inp=3, out=4),
        b.counter_sample(),
        b.flow_sample([b.raw_header(frame4, 14 + 128 + 4)], rate=10, source_index=4, inp=3, out=4,
                      expanded=True),
        b.flow_sample([b.raw_header(frame[14:], 156, proto=12, stripped=0)], rate=1),
    ], agent="2001:db8::99", sub_agent=2)
    dec = SflowDecoder(matcher)
    recs = dec.decode(dg, "192.0.2.200", 5.0)
    assert dec.rejects.counts == {} and dec.skipped == 1
    r, r4, r_ip = recs
    assert (r.exporter, r.domain, r.experiment, r.activity, r.direction) == ("2001:db8::99", 2, 3, 14, 0)
    assert (r.bytes, r.packets, r.ingress, r.egress) == (156 * 512, 512, 3, 4)
    assert (r4.family, r4.experiment, r4.direction, r4.bytes, r4.packets) == (4, None, 1, 128 * 10, 10)
    assert (r_ip.bytes, r_ip.experiment) == (156, 3)


# --- sampled headers -----------------------------------------------------------------------------

def test_packet_parsing() -> None:
    p = parse_ethernet(b.eth_ipv6(A, B, 0x12345, proto=6, sport=1, dport=2, vlan=100))
    assert p is not None and (p.flow_label, p.protocol, p.sport, p.dport, p.l2_length) == (0x12345, 6, 1, 2, 18)
    hbh = encode_ext_option(5, 10, 60) + encode_ext_option(3, 14, 17)  # both: hop-by-hop first
    p = parse_ethernet(b.eth_ipv6(A, B, 0, ext=hbh, first_nh=0))
    assert p is not None and (p.ext_tag, p.ext_via, p.protocol, p.dport) == ((5, 10), "hbh", 17, 5001)
    assert parse_ethernet(b"\0" * 12 + b"\x08\x06" + b"\0" * 28) is None  # ARP
    with pytest.raises(PacketError):
        parse_ethernet(b.eth_ipv6(A, B, 0)[:30])
    with pytest.raises(PacketError):
        parse_ip(b"\x50" + b"\0" * 40)
    cut = parse_ethernet(b.eth_ipv6(A, B, 0)[:54])  # IPv6 header only: ports unknown
    assert cut is not None and (cut.sport, cut.dport) == (0, 0)


def test_generated_source_has_only_integers() -> None:
    c = tpl.compiled(tuple(tpl.Field(f[0], 0, f[1]) if len(f) == 2 else tpl.Field(f[0], f[2], f[1])
                           for f in [*b.FLOW6, (82, 0xFFFF), (1234, 8, 99)]), False)
    fn = c.generate()
    assert fn.__doc__ and "_S0.unpack_from" in fn.__doc__ and "99" not in fn.__doc__
