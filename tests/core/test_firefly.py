# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scitagd import firefly
from scitagd.events import FlowEvent, Usage
from scitagd.firefly import FireflyError, build, parse, to_event

from ..conftest import ARCHIVE, PRODUCERS, firefly_validator, require_shared


def producer_samples() -> list[dict[str, Any]]:
    return [json.loads(line) for line in require_shared(PRODUCERS).read_text().splitlines() if line]


@pytest.mark.parametrize("sample", producer_samples(), ids=lambda s: s["producer"][:20])
def test_every_producer_sample_parses(sample: dict[str, Any]) -> None:
    wire = sample["wire"].encode()
    expected = json.loads(wire[wire.index(b"{"):])  # the stdlib's independent reading
    r = parse(wire)
    ff = r.firefly
    fid = expected["flow-id"]
    assert ff.context.experiment_id == expected["context"]["experiment-id"]
    assert ff.context.activity_id == expected["context"]["activity-id"]
    assert (ff.flow_id.protocol, ff.flow_id.src_ip, ff.flow_id.src_port, ff.flow_id.dst_ip,
            ff.flow_id.dst_port) == (fid["protocol"], fid["src-ip"], fid["src-port"], fid["dst-ip"],
                                     fid["dst-port"])
    assert ff.flow_lifecycle.state == expected["flow-lifecycle"]["state"]
    header = wire[: wire.index(b"{")].decode().split()
    if header:
        assert r.hostname == header[2]
        assert r.app_name == header[3]
    else:
        assert r.hostname is None


def test_producer_tolerances() -> None:
    samples = {s["how"]: parse(s["wire"].encode()) for s in producer_samples()}
    dcache = next(v for k, v in samples.items() if "ISO_INSTANT" in k)
    assert dcache.hostname == "2001:db8::10"  # an IP address as HOSTNAME
    assert dcache.firefly.usage is not None and dcache.firefly.usage.sent is None  # empty usage
    assert firefly.ts(dcache.firefly.flow_lifecycle.start_time) == 1773309600.0  # 'Z' offset
    storage = next(v for k, v in samples.items() if "storage-stats" in k)
    assert storage.firefly.usage is not None and storage.firefly.usage.received == 0


def test_unl_archive() -> None:
    lines = gzip.open(require_shared(ARCHIVE)).read().splitlines()
    assert len(lines) == 10_000
    ok: Counter[tuple[int, int, str]] = Counter()
    rejected = []
    for line in lines:
        try:
            r = parse(line)
        except FireflyError as e:
            rejected.append((line, e))
            continue
        ff = r.firefly
        ok[(ff.context.experiment_id, ff.context.activity_id, ff.flow_lifecycle.state)] += 1
        assert r.app_name == "flowd" and r.hostname
    assert sum(ok.values()) == 9_999
    assert len(rejected) == 1
    line, err = rejected[0]
    assert err.reason == "no_json" and "syslog-ng" in str(err)
    # An independent count with regular expressions over the raw text.
    indep: Counter[tuple[int, int, str]] = Counter()
    for raw in lines:
        text = raw.decode()
        m_e = re.search(r'"experiment-id": (\d+)', text)
        m_a = re.search(r'"activity-id": (\d+)', text)
        m_s = re.search(r'"state": "(\w+)"', text)
        if m_e and m_a and m_s:
            indep[(int(m_e.group(1)), int(m_a.group(1)), m_s.group(1))] += 1
    assert ok == indep
    assert {e for e, _, _ in ok} <= {16, 23, 1, 2, 3}  # 2021-era ids are kept as they are


@pytest.mark.parametrize("wire,reason,needle", [
    (b"", "no_json", "no JSON object"),
    (b'<134>1 - h a - firefly-json - {"version":1,', "truncated", "truncated"),
    (b'{"version":1,,}', "malformed_json", "malformed"),
    (b'{"version":2,"flow-lifecycle":{"state":"start","start-time":"2024-01-01T00:00:00Z"},'
     b'"flow-id":{"afi":"ipv4","src-ip":"127.0.0.1","dst-ip":"127.0.0.1","protocol":"tcp",'
     b'"src-port":1,"dst-port":2},"context":{"experiment-id":2,"activity-id":1}}',
     "bad_version", "version: 2"),
    (b'{"version":1,"flow-lifecycle":{"state":"begin","start-time":"2024-01-01T00:00:00Z"},'
     b'"flow-id":{"afi":"ipv4","src-ip":"127.0.0.1","dst-ip":"127.0.0.1","protocol":"tcp",'
     b'"src-port":1,"dst-port":2},"context":{"experiment-id":2,"activity-id":1}}',
     "bad_state", "flow-lifecycle.state: 'begin'"),
    (b'{"version":1,"flow-lifecycle":{"state":"start","start-time":"2024-01-01T00:00:00Z"},'
     b'"flow-id":{"afi":"ipv6","src-ip":"127.0.0.1","dst-ip":"127.0.0.1","protocol":"tcp",'
     b'"src-port":1,"dst-port":2},"context":{"experiment-id":2,"activity-id":1}}',
     "bad_address", "flow-id.src-ip: '127.0.0.1' is not ipv6"),
    (b'{"version":1,"flow-lifecycle":{"state":"start","start-time":"2024-01-01T00:00:00Z"},'
     b'"flow-id":{"afi":"ipv4","src-ip":"127.0.0.1","dst-ip":"127.0.0.1","protocol":"tcp",'
     b'"src-port":"1","dst-port":2},"context":{"experiment-id":2,"activity-id":1}}',
     "schema", "$.flow-id.src-port"),
    (b'{"version":1,"flow-lifecycle":{"state":"start","start-time":"yesterday"},'
     b'"flow-id":{"afi":"ipv4","src-ip":"127.0.0.1","dst-ip":"127.0.0.1","protocol":"tcp",'
     b'"src-port":1,"dst-port":2},"context":{"experiment-id":2,"activity-id":1}}',
     "schema", "$.flow-lifecycle.start-time"),
])
def test_rejections_name_the_field(wire: bytes, reason: str, needle: str) -> None:
    with pytest.raises(FireflyError) as ei:
        parse(wire)
    assert ei.value.reason == reason
    assert needle in str(ei.value)


def test_to_event_rejects_what_cannot_be_marked() -> None:
    flowd_go = [s for s in producer_samples() if "start.firefly" in s["how"]][0]
    ff = parse(flowd_go["wire"].encode()).firefly  # experiment 3333, dst-port 0: parse is tolerant
    with pytest.raises(FireflyError, match="flow-id.dst-port: 0: expected a port 1..65535"):
        to_event(ff, "firefly")


def test_to_event_keeps_times_and_usage() -> None:
    xrd_end = [s for s in producer_samples() if s["producer"] == "xrootd"][1]
    ev = to_event(parse(xrd_end["wire"].encode()).firefly, "firefly")
    assert ev.state == "end" and ev.experiment == 2 and ev.activity == 16
    assert ev.usage == Usage(received=2278, sent=524801863)
    assert ev.end_time is not None and ev.end_time - ev.start_time == pytest.approx(0.605415)
    assert ev.src_ip == "::1" and ev.dst_port == 1094


ips4 = st.ip_addresses(v=4).map(str)
# v4-mapped addresses never reach a sink: make_event turns them into IPv4 (see test_events).
ips6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)


@st.composite
def events(draw: Any) -> FlowEvent:
    v6 = draw(st.booleans())
    ip = ips6 if v6 else ips4
    state = draw(st.sampled_from(["start", "ongoing", "end"]))
    start = draw(st.floats(946684800, 4.0e9))  # 2000..2096: the parser refuses times outside 2000..2100
    return FlowEvent(
        state, draw(st.sampled_from(["tcp", "udp"])), draw(ip), draw(st.integers(1, 65535)),
        draw(ip), draw(st.integers(1, 65535)), draw(st.integers(1, 511)), draw(st.integers(0, 63)),
        draw(st.text(max_size=300)), "test", start,
        start + draw(st.floats(0, 1e6)) if state == "end" else None,
        draw(st.none() | st.builds(Usage, st.integers(0, 2**59), st.integers(0, 2**59))),  # sum <= 2**60
    )


VALIDATOR = firefly_validator()


@settings(max_examples=300, deadline=None)
@given(events(), st.booleans())
def test_every_built_firefly_is_schema_valid_and_parses_back(ev: FlowEvent, syslog: bool) -> None:
    data = build(ev, now=ev.start_time + 1, hostname="host.example" if syslog else None)
    assert len(data) <= firefly.MAX_DATAGRAM
    doc = json.loads(data[data.index(b"{"):])
    errors = [e.message for e in VALIDATOR.iter_errors(doc)]
    assert not errors, errors
    assert data.startswith(b"<134>1 ") == syslog
    back = to_event(parse(data).firefly, "x")
    assert (back.state, back.key, back.experiment, back.activity) == (
        ev.state, ev.key, ev.experiment, ev.activity)
    assert back.application == ev.application[: firefly.MAX_APPLICATION]
    if ev.state == "end":
        assert back.end_time == pytest.approx(ev.end_time, abs=1e-6)
    assert back.start_time == pytest.approx(ev.start_time, abs=1e-6)


def test_validator_really_checks() -> None:
    # The schema check above must be able to fail: a broken document is caught.
    assert list(VALIDATOR.iter_errors({"version": 1}))
    bad = {"version": 1, "flow-lifecycle": {"state": "end", "start-time": "2024-01-01T00:00:00Z"},
           "flow-id": {"afi": "ipv4", "src-ip": "::1", "dst-ip": "127.0.0.1", "protocol": "tcp",
                       "src-port": 1, "dst-port": 2},
           "context": {"experiment-id": 2, "activity-id": 1}}
    msgs = " ".join(e.message for e in VALIDATOR.iter_errors(bad))
    assert "end-time" in msgs


def test_syslog_header_shape() -> None:
    ev = FlowEvent("start", "tcp", "::1", 1094, "::1", 40000, 2, 3, "", "t", 1_700_000_000.0)
    data = build(ev, now=1_700_000_001.5, hostname="storage.example.org")
    assert data.startswith(b"<134>1 2023-11-14T22:13:21.500000+00:00 storage.example.org scitagd - "
                           b"firefly-json - {")
