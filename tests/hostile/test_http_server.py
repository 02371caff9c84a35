# SPDX-License-Identifier: Apache-2.0
"""httpserver.py (the API, /metrics, the collector's web side) against hostile connections, on a
real daemon: malformed HTTP, 1,100 half-sent request heads, 2,000 idle connections under
RLIMIT_NOFILE 1024 (below and above the connection cap), slow bodies. Valid requests made while
the attack holds its connections must succeed; the probe must see no loop stall.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Callable, List, Optional, Tuple

from ..figures import record
from .daemon_helpers import Attack, Stack, assert_responsive, clean_log, fd_count, recv_flows, stack
from .test_daemon_api import flow, post, request

__all__ = ["stack"]

FAST = "  api: {{bindPort: {api}, headerTimeout: 2, keepAliveTimeout: 2, requestTimeout: 2{more}}}\n"


def api(more: str = "") -> str:
    return FAST.replace("{more}", more)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> Tuple[Optional[int], bytes]:
    """Send `data` on a new connection, read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                break
    status = None
    if got.startswith(b"HTTP/1."):
        status = int(got.split(b" ", 2)[1])
    return status, got


def valid_posts(st_: Stack, first_port: int, n: int) -> Tuple[List[Tuple[str, int]], float]:
    """n valid flows, each on a new connection; all must be accepted. Returns them and the
    slowest request's time."""
    want, slowest = [], 0.0
    for i in range(n):
        t0 = time.monotonic()
        status, out = post(st_.api, flow(**{"src-port": first_port + i}))
        slowest = max(slowest, time.monotonic() - t0)
        assert status == 202, (status, out)
        want.append(("start", first_port + i))
    return want, slowest


MALFORMED: List[Tuple[str, bytes]] = [
    ("bad header token", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
    ("NUL in path", b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("request line 10 KB", b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("header 10 KB", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 10000 + b"\r\n\r\n"),
    ("200 headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
     + b"\r\n"),
    ("NUL in method", b"GE\x00T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("TLS hello", bytes.fromhex("16030100a5010000a10303") + bytes(160)),
    ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
    ("bad chunk size", b"POST /api/v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
    ("CL and TE", b"POST /api/v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("negative length", b"POST /api/v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n"),
    ("two lengths", b"POST /api/v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
     b"Content-Length: 3\r\n\r\n{}"),
    ("binary", bytes(range(256)) * 8),
    ("bare LF garbage", b"\n" * 5000),
    ("obs-fold", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
    ("huge Content-Length", b"POST /api/v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
     b"\r\nContent-Length: 99999999999\r\n\r\n{}"),
]


def test_malformed_http(stack: Callable[..., Stack]) -> None:
    st_ = stack(api(), extra="logging: {level: debug}\n")  # no traceback at any level
    want: List[Tuple[str, int]] = []
    answers = []
    for i, (name, data) in enumerate(MALFORMED):
        w, _ = valid_posts(st_, 23000 + 2 * i, 1)
        want += w
        status, got = raw_exchange(st_.api, data)
        answers.append((name, status))
        assert status is None or 400 <= status < 500, (name, status, got[:200])
    w, _ = valid_posts(st_, 23999, 1)
    want += w
    assert recv_flows(st_.rx, want).keys() == set(want)
    stats = st_.probe.stop()
    rej = st_.rejected("api")
    log = st_.d.log()
    clean_log(log)
    assert rej.get("bad_http", 0) >= 10, (rej, answers)
    # one line per reason per 10 s, whatever the rate
    assert log.count("connection guard reason=bad_http") == 1, log[-3000:]
    assert_responsive(stats, "malformed HTTP")
    record("daemon malformed HTTP", detail=f"{answers}; counted {rej}; {len(want)} valid kept; probe {stats}")


def test_slowloris_1100(stack: Callable[..., Stack]) -> None:
    """1,100 connections each holding a half-sent request head (a byte more every 0.5 s)."""
    st_ = stack(api())
    pid = st_.d.proc.pid
    base_fds = fd_count(pid)
    attack = Attack.start("slowloris", st_.api, 1100)
    try:
        assert attack.opened == 1100, attack.helper.ready
        held_fds = _settled_fds(pid, base_fds + 64 + 4)
        want, slowest = valid_posts(st_, 24000, 20)  # while every attacking connection is held
        assert request(st_.api, "GET", "/healthz")[0] == 200
        time.sleep(3.0)  # past headerTimeout: what was left of the attack is cut
        after = fd_count(pid)
    finally:
        out = attack.stop()
    assert recv_flows(st_.rx, want).keys() == set(want)
    stats = st_.probe.stop()
    rej = st_.rejected("api")
    assert out["closed_by_server"] == out["opened"], out
    assert rej.get("conn_limit", 0) + rej.get("header_timeout", 0) + rej.get("idle_timeout", 0) == 1100, rej
    assert rej.get("header_timeout", 0) >= 1, rej
    assert held_fds <= base_fds + 64 + 4, (base_fds, held_fds)  # the per-source cap, once accepting caught up
    assert after <= base_fds + 2, (base_fds, after)
    log = st_.d.log()
    clean_log(log)
    assert log.count("connection guard reason=conn_limit") <= 2
    assert_responsive(stats, "slowloris")
    record("daemon slowloris 1100", detail=f"attacker {out}; counted {rej}; fds {base_fds} -> {held_fds} -> {after}; "
          f"slowest valid request {slowest * 1000:.1f} ms; probe {stats}")


def _settled_fds(pid: int, bound: int, within: float = 5.0) -> int:
    """The daemon's descriptor count once it is at or below `bound` (it may still be accepting
    what the attacker's connects left in the backlog), else the lowest seen."""
    low = fd_count(pid)
    deadline = time.monotonic() + within
    while low > bound and time.monotonic() < deadline:
        time.sleep(0.05)
        low = min(low, fd_count(pid))
    return low


def test_2000_idle_connections_under_1024_fds(stack: Callable[..., Stack]) -> None:
    """RLIMIT_NOFILE 1024 and the default caps (256, 64 a source): 2,000 idle connections on the
    API and 2,000 on /metrics leave the daemon below its limit, and both still answer."""
    st_ = stack(api(), nofile=1024)
    pid = st_.d.proc.pid
    a1 = Attack.start("idle", st_.api, 2000)
    a2 = Attack.start("idle", st_.prom, 2000)
    try:
        assert a1.opened == 2000 and a2.opened == 2000, (a1.helper.ready, a2.helper.ready)
        held = fd_count(pid)
        want, slowest = valid_posts(st_, 25000, 20)
        m = st_.metrics()  # /metrics, while its own 2,000 are open
    finally:
        o1, o2 = a1.stop(), a2.stop()
    assert recv_flows(st_.rx, want).keys() == set(want)
    stats = st_.probe.stop()
    assert held < 1024 - 128, held
    assert m['scitagd_rejected_total{reason="conn_limit",source="api"}'] >= 2000 - 64
    log = st_.d.log()
    clean_log(log)
    assert "fd_exhausted" not in log
    assert_responsive(stats, "2,000 idle")
    record("daemon 2000 idle (caps below the fd limit)", detail=f"api attacker {o1}, metrics attacker {o2}; daemon fds {held}; "
          f"slowest valid request {slowest * 1000:.1f} ms; probe {stats}")


def test_fd_exhaustion_with_caps_above_the_limit(stack: Callable[..., Stack]) -> None:
    """Caps set above RLIMIT_NOFILE: accept meets EMFILE; idle connections are closed to make
    room, one warning says so, valid requests still succeed."""
    st_ = stack(api(", maxConnections: 5000, maxConnectionsPerSource: 5000"), nofile=1024)
    assert "connection caps exceed the open files limit" in st_.d.log()
    attack = Attack.start("idle", st_.api, 2000)
    try:
        assert attack.opened >= 1900, attack.helper.ready
        want, slowest = valid_posts(st_, 26000, 20)
    finally:
        out = attack.stop()
    assert recv_flows(st_.rx, want).keys() == set(want)
    stats = st_.probe.stop()
    rej = st_.rejected("api")
    log = st_.d.log()
    clean_log(log)
    assert rej.get("fd_exhausted", 0) >= 1, rej
    assert 1 <= log.count("connection guard reason=fd_exhausted") <= 3, log[-3000:]
    assert_responsive(stats, "fd exhaustion")
    record("daemon EMFILE", detail=f"attacker {out}; counted {rej}; slowest valid request {slowest * 1000:.1f} ms; probe {stats}")


def test_slow_body_and_idle_keepalive(stack: Callable[..., Stack]) -> None:
    st_ = stack(api())
    body = json.dumps(flow(**{"src-port": 27000})).encode()
    head = (b"POST /api/v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    t0 = time.monotonic()
    status, got = raw_exchange(st_.api, head + body[:10], timeout=6)
    took = time.monotonic() - t0
    assert status == 408 and b"request not completed within 2 s" in got, got
    assert 1.5 < took < 5, took
    # a keep-alive connection left idle after a request is closed, not counted
    with socket.create_connection(("127.0.0.1", st_.api), timeout=6) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        t0 = time.monotonic()
        assert s.recv(65536) == b""
        assert 1.5 < time.monotonic() - t0 < 5
    stats = st_.probe.stop()
    rej = st_.rejected("api")
    assert rej == {"request_timeout": 1}, rej
    clean_log(st_.d.log())
    assert_responsive(stats, "slow body")
