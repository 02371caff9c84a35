# SPDX-License-Identifier: Apache-2.0
"""The daemon's firefly listener against hostile datagrams, end to end: a real daemon, real UDP.

Every datagram is either a flow or a rejection counted with the reason the parser gives (the
same classification is computed here, datagram by datagram, and must match the daemon's
counters exactly); valid fireflies sent between the hostile ones all come out at a collector;
the log holds no traceback; the probe sees no loop stall.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scitagd.errors import InputError
from scitagd.firefly import parse, to_event

from ..conftest import PRODUCERS, require_shared
from ..figures import record
from .daemon_helpers import (
    Stack,
    assert_responsive,
    body_of,
    clean_log,
    firefly,
    recv_flows,
    stack,
    start_daemon,
)

__all__ = ["stack"]  # the fixture, imported for pytest

WIRES = [json.loads(line)["wire"].encode() for line in require_shared(PRODUCERS).read_text().splitlines()]


def classify(data: bytes) -> str:
    """What the daemon's firefly source must do with `data`: 'ok' or the rejection reason."""
    try:
        to_event(parse(data, header=False).firefly, "firefly")
    except InputError as e:
        return e.reason
    return "ok"


GARBAGE: List[Tuple[str, bytes]] = [
    ("empty", b""),
    ("binary", bytes(range(256)) * 4),
    ("open brace", b"{"),
    ("empty object", b"{}"),
    ("version only", b'{"version":1}'),
    ("array", b"[1,2,3]"),
    ("null", b"null"),
    ("deep arrays", b"[" * 60000),
    ("deep objects", b'{"a":' * 10000),
    ("invalid UTF-8", WIRES[0].replace(b"xrdcp", b"xr\xff\xfedcp")),
    ("deep unknown field", WIRES[0].replace(b'"version":1', b'"version":1,"x":' + b"[" * 5000 + b"]" * 5000)),
    ("oversized garbage", b"x" * 65000),
    ("oversized, truncated", WIRES[0][:-1] + b" " * 60000),
    ("huge number", WIRES[0].replace(b'"src-port":21094', b'"src-port":' + b"9" * 5000)),
    ("30-digit id", WIRES[0].replace(b'"experiment-id":1', b'"experiment-id":' + b"9" * 30)),
    ("bool port", WIRES[0].replace(b'"src-port":21094', b'"src-port":true')),
    ("float id", WIRES[0].replace(b'"activity-id":1', b'"activity-id":1.0')),
    ("year 9999", WIRES[0].replace(b"2026-11-25T16:34:07.373828", b"9999-12-31T23:59:59.999999")),
    ("NUL in JSON", WIRES[0].replace(b'"xrdcp"', b'"xr\x00dcp"')),
    ("header only", b"<134>1 - host xrootd - firefly-json - "),
]


def _send(s: socket.socket, port: int, data: bytes) -> None:
    s.sendto(data, ("127.0.0.1", port))


def test_garbage_classes_counted_and_valid_kept(stack: Callable[..., Stack]) -> None:
    st_ = stack(extra="logging: {level: debug}\n")  # no traceback at any level
    expected: Counter[str] = Counter()
    want = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i, (_, data) in enumerate(GARBAGE):
            _send(s, st_.ff, firefly("start", 30000 + i))  # a valid flow before and after each
            want.append(("start", 30000 + i))
            _send(s, st_.ff, data)
            expected[classify(data)] += 1
        _send(s, st_.ff, firefly("start", 30999))
        want.append(("start", 30999))
        # an oversized but valid firefly: accepted, its application cut to 128 characters
        big = firefly("start", 31000, app="a" * 60000)
        assert len(big) > 60000 and classify(big) == "ok"
        _send(s, st_.ff, big)
        want.append(("start", 31000))
    seen = recv_flows(st_.rx, want)
    assert sorted(seen) == sorted(want), f"valid fireflies lost: {set(want) - set(seen)}"
    stats = st_.probe.stop()
    assert expected["ok"] == 0, [name for name, d in GARBAGE if classify(d) == "ok"]
    for reason in ("no_json", "too_deep", "bad_utf8", "truncated", "schema"):
        assert expected[reason] > 0, (reason, expected)
    got = st_.rejected("firefly")
    assert got == dict(expected), (got, expected)
    log = st_.d.log()
    clean_log(log)
    assert "reason=too_deep" in log and "reason=bad_utf8" in log
    assert_responsive(stats, "garbage classes")
    record("daemon firefly garbage", detail=f"{sum(expected.values())} rejected {dict(expected)}, {len(want)} valid kept, "
          f"probe {stats}")


# --- hypothesis: real fireflies, mutated -------------------------------------------------------

_VALUE = re.compile(rb':\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null)')

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("value"), st.integers(0, 100), json_values),
    st.tuples(st.just("deep"), st.integers(0, 100), st.integers(100, 20000)),
)


def mutate(wire: bytes, ops: List[Tuple[Any, ...]]) -> bytes:
    data = wire
    for op in ops:
        kind = op[0]
        if kind == "flip" and data:
            i = op[1] % len(data)
            data = data[:i] + bytes([op[2]]) + data[i + 1:]
        elif kind == "cut":
            data = data[: op[1] % (len(data) + 1)]
        elif kind == "insert":
            i = op[1] % (len(data) + 1)
            data = data[:i] + op[2] + data[i:]
        elif kind in ("value", "deep"):
            spans = [m.span(1) for m in _VALUE.finditer(data)]
            if not spans:
                continue
            a, b = spans[op[1] % len(spans)]
            new = json.dumps(op[2]).encode() if kind == "value" else b"[" * op[2] + b"]" * op[2]
            data = data[:a] + new + data[b:]
    return data[:65507]  # what one UDP datagram holds


def test_mutated_real_fireflies(stack: Callable[..., Stack]) -> None:
    st_ = stack()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent: List[bytes] = []
    state: Dict[str, int] = {"n": 0}
    lost: List[int] = []

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(wire=st.sampled_from(WIRES), ops=st.lists(mutation, min_size=1, max_size=4))
    def one(wire: bytes, ops: List[Tuple[Any, ...]]) -> None:
        data = mutate(wire, ops)
        sent.append(data)
        _send(sock, st_.ff, data)
        port = 40000 + state["n"]
        state["n"] += 1
        _send(sock, st_.ff, firefly("start", port, src_ip="127.0.0.3"))
        if not recv_flows(st_.rx, [("start", port)], timeout=5):
            lost.append(port)

    try:
        one()
    finally:
        sock.close()
    stats = st_.probe.stop()
    assert not lost, f"valid fireflies lost among the mutated ones: {lost[:20]}"
    # classified here, outside Hypothesis: it raises the recursion limit while it runs, and where
    # msgspec gives up on nesting depends on that limit
    expected = Counter(classify(d) for d in sent)
    rejected = {k: v for k, v in expected.items() if k != "ok"}
    deadline = time.monotonic() + 5
    while (got := st_.rejected("firefly")) != rejected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert got == rejected, (got, rejected)
    clean_log(st_.d.log())
    assert_responsive(stats, "mutated fireflies")
    record("daemon mutated fireflies", detail=f"{sum(expected.values())} sent, {expected['ok']} still valid, rejected "
          f"{rejected}; {state['n']} valid kept; probe {stats}")


def test_flood_keeps_valid_and_loop(stack: Callable[..., Stack]) -> None:
    """20,000 hostile datagrams at ~5,000/s with a valid firefly every 100: none of those lost."""
    st_ = stack()
    kinds = [d for _, d in GARBAGE if len(d) < 2000] + [mutate(WIRES[1], [("flip", 40, 0xFF)])]
    want = []
    expected: Counter[str] = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.monotonic()
        for i in range(20000):
            d = kinds[i % len(kinds)]
            _send(s, st_.ff, d)
            expected[classify(d)] += 1
            if i % 100 == 0:
                port = 50000 + i // 100
                _send(s, st_.ff, firefly("start", port, src_ip="127.0.0.4"))
                want.append(("start", port))
            if i % 50 == 0:
                ahead = t0 + i / 5000 - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    seen = recv_flows(st_.rx, want, timeout=15)
    stats = st_.probe.stop()
    assert len(seen) == len(want), f"{len(want) - len(seen)} valid fireflies lost in the flood"
    rejected = {k: v for k, v in expected.items() if k != "ok"}
    assert st_.rejected("firefly") == rejected
    log = st_.d.log()
    clean_log(log)
    # one line per reason per second at most
    assert log.count("datagram rejected") <= len(rejected) * (int(time.monotonic() - t0) + 2), log[-3000:]
    assert_responsive(stats, "firefly flood")
    record("daemon firefly flood", detail=f"{sum(rejected.values())} rejected, {len(want)} valid kept, probe {stats}")


def test_port_in_use_is_a_clear_error_and_not_shared(tmp_path: Path, stack: Callable[..., Stack]) -> None:
    st_ = stack()
    # no SO_REUSEADDR on our socket: another socket cannot join it, with or without the option
    for addr in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, st_.ff))
            except OSError as e:
                assert e.errno == 98, e
            else:
                raise AssertionError(f"a second socket could bind {addr}:{st_.ff} beside the daemon's")
    second = start_daemon(tmp_path, f"plugins:\n  firefly: {{bindAddress: 127.0.0.1, bindPort: {st_.ff}}}\n",
                          "second", wait_for=None)
    assert second.proc.wait(20) == 2
    text = second.log()
    assert (f"plugins.firefly: cannot start: bindPort {st_.ff}: UDP 127.0.0.1:{st_.ff}: address in use"
            in text), text
    clean_log(text)
    # the first one still works
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _send(s, st_.ff, firefly("start", 31500))
    assert recv_flows(st_.rx, [("start", 31500)])
    assert_responsive(st_.probe.stop(), "second instance")


def test_oversized_valid_firefly_is_cut(stack: Callable[..., Stack]) -> None:
    st_ = stack()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _send(s, st_.ff, firefly("start", 31600, app="b" * 60000))
    got = []
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        got = [d for d in st_.rx.recv(1, 1) if body_of(d)["flow-id"]["src-port"] == 31600]
    assert got and len(got[0]) < 1400
    assert body_of(got[0])["context"]["application"] == "b" * 128
    st_.probe.stop()


