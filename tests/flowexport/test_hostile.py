# SPDX-License-Identifier: Apache-2.0
"""Hostile input: truncated, malformed and mutated messages, absurd templates, floods.

Every case must end in records or a counted reject with a reason, never an exception, and the
per-exporter state must stay within its limits.
"""

from __future__ import annotations

import struct
import time
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scitagd.flowexport import templates as tpl
from scitagd.flowexport.ipfix import IpfixDecoder
from scitagd.flowexport.netflow9 import NetflowV9Decoder
from scitagd.flowexport.session import Limits
from scitagd.flowexport.sflow import SflowDecoder
from scitagd.flowexport.tagging import TagMatcher
from scitagd.registry import Registry

from ..conftest import require_shared
from . import build as b
from .pcaputil import DATA, udp_payloads

MATCHER = TagMatcher.from_registry(Registry.bundled())
EX = "198.51.100.9"
A, B = "2001:db8::1", "2001:db8::2"


def real(name: str) -> List[bytes]:
    return [p for _, _, p, _ in udp_payloads(require_shared(DATA / name))]


OVS_IPFIX = real("ovs-ipfix.pcap")
OVS_SFLOW = real("ovs-sflow.pcap")
PSAMP = real("softflowd-psamp.pcap")[:20]


def assert_bounded(dec: IpfixDecoder | NetflowV9Decoder) -> None:
    lim = dec.limits
    assert len(dec.exporters) <= lim.max_exporters
    assert dec.total_templates == dec.template_count() <= lim.max_total_templates
    assert dec.total_held_bytes == sum(ex.held_bytes for ex in dec.exporters.values()) <= lim.max_total_held_bytes
    for ex in dec.exporters.values():
        assert len(ex.domains) <= lim.max_domains
        assert ex.held_sets <= lim.max_held_sets and ex.held_bytes <= lim.max_held_bytes
        assert ex.held_sets == sum(len(d.held) for d in ex.domains.values())
        for d in ex.domains.values():
            assert len(d.templates) <= lim.max_templates
            assert len(d.selector_rates) <= 64


def test_every_truncation_of_real_messages() -> None:
    ipfix = IpfixDecoder(MATCHER)
    for msg in OVS_IPFIX[:20]:  # templates first, so data cuts reach the data path
        ipfix.decode(msg, EX)
    for msg in OVS_IPFIX[18:24] + PSAMP[:2]:
        for cut in range(len(msg)):
            before = ipfix.rejects.total()
            assert ipfix.decode(msg[:cut], EX) == []
            assert ipfix.rejects.total() == before + 1  # header length no longer matches
    sflow = SflowDecoder(MATCHER)
    for msg in OVS_SFLOW[:5]:
        for cut in range(len(msg)):
            before = sflow.rejects.total()
            assert sflow.decode(msg[:cut], EX) == []
            assert sflow.rejects.total() == before + 1
    reasons = {r for (_, r) in sflow.rejects.counts}
    assert reasons <= {"truncated", "bad_count", "bad_length"}


@pytest.mark.parametrize("body, reason", [
    (struct.pack("!HH", 300, 65535) + b"\0" * 16, "bad_template"),  # count far beyond the set
    (struct.pack("!HH", 300, 400) + b"\0\x01\0\x04" * 10, "template_overrun"),
    (struct.pack("!HH", 300, 2) + struct.pack("!HHHH", 1, 40000, 2, 40000), "bad_template"),  # > 65515 bytes
    (struct.pack("!HH", 300, 1) + struct.pack("!HH", 1, 0), "bad_template"),  # length 0
    (struct.pack("!HH", 7, 1) + struct.pack("!HH", 1, 4), "bad_template_id"),
    (struct.pack("!HH", 300, 1) + struct.pack("!HH", 0x8001, 4) + b"\0\0", "template_overrun"),  # PEN cut
])
def test_absurd_templates(body: bytes, reason: str) -> None:
    dec = IpfixDecoder(MATCHER)
    assert dec.decode(b.ipfix([b.set_(2, body)]), EX) == []
    assert dec.rejects.counts == {(EX, reason): 1}
    assert dec.template_count() == 0


def test_absurd_options_template() -> None:
    dec = IpfixDecoder(MATCHER)
    dec.decode(b.ipfix([b.set_(3, b.options_template(400, 0, [(34, 4)]))]), EX)
    dec.decode(b.ipfix([b.set_(3, b.options_template(400, 3, [(34, 4)]))]), EX)
    assert dec.rejects.counts == {(EX, "bad_template"): 2}


def test_bad_set_lengths_reject_the_whole_message_before_any_state_changes() -> None:
    dec = IpfixDecoder(MATCHER)
    good = b.set_(2, b.template(300, b.FLOW6))
    bad = struct.pack("!HH", 300, 2000) + b"\0" * 10
    dec.decode(b.ipfix([good, bad]), EX)
    assert dec.template_count() == 0 and dec.rejects.counts == {(EX, "bad_set_length"): 1}
    dec.decode(b.ipfix([good, struct.pack("!HH", 300, 2)]), EX)  # set length < 4
    dec.decode(b.ipfix([good])[:-3], EX)
    dec.decode(b.ipfix([good]) + b"junk", EX)
    assert dec.template_count() == 0
    assert {r for _, r in dec.rejects.counts} == {"bad_set_length", "bad_length"}


def test_variable_length_field_overruns_set() -> None:
    dec = IpfixDecoder(MATCHER)
    spec = [(27, 16), (28, 16), (82, 0xFFFF), (1, 8)]
    dec.decode(b.ipfix([b.set_(2, b.template(300, spec))]), EX)
    good = b.ip6(A) + b.ip6(B) + b.varlen(b"eth0") + struct.pack("!Q", 5)
    over = b.ip6(A) + b.ip6(B) + b"\xff\x10\x00" + b"x" * 20  # says 4096 bytes follow
    recs = dec.decode(b.ipfix([b.set_(300, good + over), b.set_(300, good)]), EX)
    assert len(recs) == 1  # the second (good) set; the first set's good record went with its set
    assert dec.rejects.counts == {(EX, "field_overrun"): 1}
    # the same through the generic walker (PSAMP template)
    dec.decode(b.ipfix([b.set_(2, b.template(301, [(315, 0xFFFF)]))]), EX)
    dec.decode(b.ipfix([b.set_(301, b"\xff\xff\xff" + b"\0" * 10)]), EX)
    assert dec.rejects.counts[(EX, "field_overrun")] == 2


def test_template_flood_is_bounded_and_cheap() -> None:
    lim = Limits(max_templates=16, generate_rate=5)
    dec = IpfixDecoder(MATCHER, lim)
    t0 = time.perf_counter()
    before = tpl.generated
    for i in range(3000):
        tid = 256 + i % 64
        spec = [*b.FLOW6, (1000 + i % 500, 4)]
        msg = b.ipfix([b.set_(2, b.template(tid, spec)),
                       b.set_(tid, b.flow6(0, 1, 6, A, B, 0, 1, 2, 3, 4) + b"\0\0\0\0"),
                       b.set_(2, struct.pack("!HH", tid + 1, 0))], seq=i * 7919)  # withdrawal, garbage seq
        assert len(dec.decode(msg, EX, 1000.0 + i * 0.001)) <= 1
    elapsed = time.perf_counter() - t0
    assert_bounded(dec)
    assert dec.counters.withdrawals == 3000
    assert tpl.generated - before <= 5 * 10 + 5 * 3 + 1  # the generation budget held
    assert dec.counters.generic_sets > 500  # the rest decoded the slow, correct way
    assert dec.rejects.counts.get((EX, "template_limit"), 0) > 0
    assert elapsed < 10, elapsed


def test_held_data_bounded_over_all_exporters() -> None:
    dec = IpfixDecoder(MATCHER, Limits(max_total_held_bytes=10_000))
    for i in range(50):
        dec.decode(b.ipfix([b.set_(300, b"\0" * 1000)]), f"192.0.2.{i}", 100.0)
    assert_bounded(dec)
    assert dec.total_held_bytes == 10_000 and dec.counters.undecodable_sets == 40
    dec.sweep(103.0)  # held past holdTime: counted undecodable, memory back
    assert dec.total_held_bytes == 0 and dec.counters.undecodable_sets == 50


def test_total_template_limit() -> None:
    dec = IpfixDecoder(MATCHER, Limits(max_total_templates=20))
    for i in range(10):
        dec.decode(b.ipfix([b.set_(2, b.template(300, b.FLOW6) + b.template(301, b.FLOW6) + b.template(302, b.FLOW6))]),
                   f"192.0.2.{i}", 100.0)
    # the 21st template and every later one (a set stops at its first refused template)
    assert dec.template_count() == 20 and dec.rejects.total("template_limit") == 4
    dec.decode(b.ipfix([b.set_(2, struct.pack("!HH", 2, 0))]), "192.0.2.0", 101.0)  # withdraw all
    assert_bounded(dec)
    assert dec.template_count() == 17
    dec.sweep(100.0 + 1801)
    assert dec.template_count() == dec.total_templates == 0


def test_exporter_and_domain_limits() -> None:
    dec = IpfixDecoder(MATCHER, Limits(max_exporters=8, max_domains=1))
    for i in range(20):
        dec.decode(b.ipfix([b.set_(2, b.template(300, b.FLOW6))], odid=i), f"192.0.2.{i % 10}")
    assert_bounded(dec)
    reasons = {r for _, r in dec.rejects.counts}
    assert reasons == {"exporter_limit", "domain_limit"}
    assert len(dec.rejects._exporters) <= 1024
    # idle exporters expire, then new ones fit again
    dec.sweep(time.time() + 4000)
    assert dec.exporters == {}


def test_sflow_malformed() -> None:
    dec = SflowDecoder(MATCHER)
    frame = b.eth_ipv6(A, B, 0)
    good = b.flow_sample([b.raw_header(frame, 200)])
    cases = [
        (b.sflow([good])[:-4], "bad_length"),
        (b"\0\0\0\x04" + b.sflow([good])[4:], "bad_version"),
        (b.sflow([good])[:4] + b"\0\0\0\x07" + b.sflow([good])[8:], "bad_header"),
        (b.sflow([b.flow_sample([b.raw_header(frame, 200)], rate=0)]), "bad_rate"),
        (b.sflow([good])[:24] + struct.pack("!I", 100000) + b.sflow([good])[28:], "bad_count"),
    ]
    for msg, reason in cases:
        dec.rejects.counts.clear()
        assert dec.decode(msg, EX) == []
        assert dec.rejects.counts == {(EX, reason): 1}, (reason, dec.rejects.last[-1])
    # a header length that overruns its record
    raw = bytearray(b.raw_header(frame, 200))
    struct.pack_into("!I", raw, 20, 4000)
    assert dec.decode(b.sflow([b.flow_sample([bytes(raw)])]), EX) == []


def mutate(msg: bytes, ops: List[Tuple[int, int, int]]) -> bytes:
    m = bytearray(msg)
    for kind, pos, val in ops:
        if not m:
            break
        pos %= len(m)
        if kind == 0:
            m[pos] = val
        elif kind == 1:
            del m[pos:pos + val % 16 + 1]
        else:
            m[pos:pos] = bytes([val]) * (val % 8 + 1)
    return bytes(m)


OPS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    for dec in (IpfixDecoder(MATCHER), NetflowV9Decoder(MATCHER), SflowDecoder(MATCHER)):
        dec.decode(data, EX)
        for prefix in (b"\0\x0a", b"\0\x09", b"\0\0\0\x05"):
            dec.decode(prefix + data, EX)


_WARM = IpfixDecoder(MATCHER)
for _m in OVS_IPFIX[:20] + PSAMP[:1]:
    _WARM.decode(_m, EX)


@SETTINGS
@given(idx=st.integers(0, len(OVS_IPFIX) - 1), ops=OPS)
def test_mutated_ipfix(idx: int, ops: List[Tuple[int, int, int]]) -> None:
    msg = mutate(OVS_IPFIX[idx], ops)
    recs = _WARM.decode(msg, EX)
    _WARM.decode(mutate(PSAMP[1], ops), EX)
    for r in recs:
        assert r.bytes >= 0 and r.packets >= 0 and r.family in (0, 4, 6)
    assert_bounded(_WARM)


@SETTINGS
@given(idx=st.integers(0, len(OVS_SFLOW) - 1), ops=OPS)
def test_mutated_sflow(idx: int, ops: List[Tuple[int, int, int]]) -> None:
    dec = SflowDecoder(MATCHER)
    for r in dec.decode(mutate(OVS_SFLOW[idx], ops), EX):
        assert r.packets >= 1 and r.family in (4, 6)


@SETTINGS
@given(ops=OPS, seq=st.integers(0, 0xFFFFFFFF))
def test_mutated_netflow9(ops: List[Tuple[int, int, int]], seq: int) -> None:
    dec = NetflowV9Decoder(MATCHER, Limits(max_templates=4))
    tmpl = b.set_(0, b.template(256, [(27, 16), (28, 16), (31, 3), (1, 4), (2, 4)]))
    data = b.set_(256, (b.ip6(A) + b.ip6(B) + b"\x03\x00\x38" + struct.pack("!II", 10, 1)) * 3)
    msg = b.v9([tmpl, data], seq=seq)
    assert len(dec.decode(msg, EX)) == 3
    dec.decode(mutate(msg, ops), EX)
    assert_bounded(dec)
