# SPDX-License-Identifier: Apache-2.0
"""Unit checks behind the end-to-end hostile tests: input types at make_event and
registry.resolve, the Host header rule, the named pipe's line parser, UDP socket options."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scitagd.errors import EventError, InputError, RegistryError
from scitagd.events import make_event
from scitagd.httpserver import host_allowed, host_of
from scitagd.netutil import udp_listener
from scitagd.registry import Registry
from scitagd.sources.namedpipe import parse_line

REG = Registry.bundled()
ARGS = ("start", "tcp", "127.0.0.1", 1094, "127.0.0.2", 45000, 2, 3)


@pytest.mark.parametrize("index,value,field,reason", [
    (3, True, "src-port", "bad_port"),
    (5, False, "dst-port", "bad_port"),
    (6, True, "experiment", "bad_experiment"),
    (7, True, "activity", "bad_activity"),
    (7, False, "activity", "bad_activity"),
    (6, 2.0, "experiment", "bad_experiment"),
    (0, ["start"], "state", "bad_state"),
    (1, {}, "protocol", "bad_protocol"),
    (2, "1" * 100, "src-ip", "bad_address"),
    (4, None, "dst-ip", "bad_address"),
])
def test_make_event_refuses_wrong_types(index: int, value: Any, field: str, reason: str) -> None:
    args = list(ARGS)
    args[index] = value
    with pytest.raises(EventError) as e:
        make_event(*args)
    assert (e.value.field, e.value.reason) == (field, reason)
    assert len(str(e.value)) < 200


def test_make_event_application_type() -> None:
    with pytest.raises(EventError, match="application: 0: expected a string"):
        make_event(*ARGS, application=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("exp,act,field,reason", [
    (True, 1, "experiment", "bad_type"),
    (2, False, "activity", "bad_type"),
    ([], 1, "experiment", "bad_type"),
    ({}, 1, "experiment", "bad_type"),
    (1.0, 1, "experiment", "bad_type"),
    (None, 1, "experiment", "bad_type"),
    ("9" * 5000, 1, "experiment", "bad_experiment"),
    (2, "9" * 30, "activity", "bad_activity"),
    ("\u0663", 1, "experiment", "unknown_name"),  # an Arabic-Indic digit is no id
    ("x" * 10000, 1, "experiment", "unknown_name"),
])
def test_resolve_refuses_wrong_types(exp: Any, act: Any, field: str, reason: str) -> None:
    with pytest.raises(RegistryError) as e:
        REG.resolve(exp, act)
    assert (e.value.field, e.value.reason) == (field, reason)
    assert len(str(e.value)) < 400


@given(st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=50), st.integers(),
                 st.lists(st.integers(), max_size=3), st.binary(max_size=5)))
def test_resolve_raises_only_input_errors(value: Any) -> None:
    for exp, act in ((value, 1), ("atlas", value)):
        try:
            REG.resolve(exp, act)
        except InputError:
            pass


@pytest.mark.parametrize("header,host", [
    ("127.0.0.1:7777", "127.0.0.1"), ("[::1]:7777", "::1"), ("LocalHost.", "localhost"),
    ("example.org", "example.org"), ("::1", "::1"), ("[::1", None), ("a:b", None), ("", None),
])
def test_host_of(header: str, host: Any) -> None:
    assert host_of(header) == host


def test_host_allowed() -> None:
    allowed = frozenset({"scitagd.example"})
    for ok in ("localhost", "127.0.0.1:80", "[::1]", "127.3.4.5", "scitagd.example:7777", None):
        assert host_allowed(ok, allowed), ok
    for bad in ("evil.example", "localhost.evil", "scitagd.example.evil", "10.0.0.1", "[::1", "0.0.0.0"):
        assert not host_allowed(bad, allowed), bad


@pytest.mark.parametrize("text,reason", [
    ("start tcp 127.0.0.1 " + "9" * 5000 + " 127.0.0.2 1 2 3", "not_a_number"),
    ("start tcp 127.0.0.1 \u0663 127.0.0.2 1 2 3", "not_a_number"),
    ("start tcp 127.0.0.1 1 127.0.0.2 2 true 1", "not_a_number"),
    ("start tcp 127.0.0.1 1 127.0.0.2 2 600 1", "bad_experiment"),
])
def test_pipe_line_numbers(text: str, reason: str) -> None:
    with pytest.raises(EventError) as e:
        parse_line(text)
    assert e.value.reason == reason


def test_udp_listener_exclusive_unless_asked() -> None:
    a = udp_listener("127.0.0.1", 0, 1 << 16)
    try:
        port = a.getsockname()[1]
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        with pytest.raises(OSError, match=f"bindPort {port}: UDP 127.0.0.1:{port}: address in use") as e:
            udp_listener("127.0.0.1", port, 1 << 16)
        assert e.value.errno == 98
    finally:
        a.close()
    b = udp_listener("127.0.0.1", 0, 1 << 16, reuse_port=True)
    try:
        c = udp_listener("127.0.0.1", b.getsockname()[1], 1 << 16, key="udp.port", reuse_port=True)
        c.close()
    finally:
        b.close()
