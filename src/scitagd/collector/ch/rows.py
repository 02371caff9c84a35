# SPDX-License-Identifier: Apache-2.0
"""Fireflies as rows of the `fireflies` table, encoded as RowBinary.

A row is a plain tuple (see FireflyRow), so generated data, archives and live datagrams go
through one encoder. Times are integer microseconds since the epoch: exact, and the same key in
every store. The event time is the end-time of an `end`, else the current-time, else the
start-time (pre-2024 dCache sends only that)."""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING, Dict, Iterable, NamedTuple, Optional

from ...firefly import Received, ts
from ..attribution import MAX_COUNTER

if TYPE_CHECKING:
    from ..report import Report

PROTO = {"tcp": 6, "udp": 17}
STATE = {"start": 1, "ongoing": 2, "end": 3}
MAX_TIME_US = (1 << 32) * 1_000_000  # DateTime is UInt32 seconds (to 2106)
MAX_ID = (1 << 32) - 1
MAX_TEXT = 256


class FireflyRow(NamedTuple):
    start_us: int
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    exp: int
    act: int
    state: str
    t_us: int
    sent: int
    received: int
    app: str
    reporter: str


class RowError(ValueError):
    """A firefly the store cannot hold; `reason` is a counter label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_addr_cache: Dict[str, bytes] = {}


def addr16(ip: str) -> bytes:
    """16 bytes; IPv4 as ::ffff:a.b.c.d (what IPv6NumToString gives back)."""
    b = _addr_cache.get(ip)
    if b is None:
        a = ipaddress.ip_address(ip)
        b = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a).packed
        if len(_addr_cache) > 100_000:
            _addr_cache.clear()
        _addr_cache[ip] = b
    return b


def addr_text(b: bytes) -> str:
    a = ipaddress.IPv6Address(b)
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else a.compressed


def _us(t: Optional[float]) -> Optional[int]:
    return None if t is None else round(t * 1_000_000)


def from_received(rec: Received, sender: str) -> FireflyRow:
    ff = rec.firefly
    lc, fid, ctx, usage = ff.flow_lifecycle, ff.flow_id, ff.context, ff.usage
    start = _us(ts(lc.start_time))
    assert start is not None  # start-time is required by the parser
    cur = _us(ts(lc.current_time))
    t = (_us(ts(lc.end_time)) or cur) if lc.state == "end" else cur
    return FireflyRow(start, fid.protocol, fid.src_ip, fid.src_port, fid.dst_ip, fid.dst_port,
                      ctx.experiment_id, ctx.activity_id, lc.state, t if t is not None else start,
                      (usage.sent or 0) if usage else 0, (usage.received or 0) if usage else 0,
                      ctx.application or "", rec.hostname or sender)


def check(r: FireflyRow) -> None:
    """Bounds the columns impose; the parser has checked the rest."""
    for name, v in (("start-time", r.start_us), ("event time", r.t_us)):
        if not 0 <= v < MAX_TIME_US:
            raise RowError(f"flow-lifecycle {name}: {v / 1e6:.0f} s: expected 1970..2106", "bad_time")
    for name, v in (("usage.sent", r.sent), ("usage.received", r.received)):
        if not 0 <= v <= MAX_COUNTER:
            raise RowError(f"{name}: {v}: expected 0..2^60", "bad_usage")
    if not (0 <= r.exp <= MAX_ID and 0 <= r.act <= MAX_ID):
        raise RowError(f"context: experiment-id {r.exp}, activity-id {r.act}: expected < 2^32", "bad_tag")


_HEAD = struct.Struct("<IIb16sH16sHIIbQQQ")


def _text(s: str) -> bytes:
    b = s[:MAX_TEXT].encode("utf-8", "replace")
    n = len(b)
    return (bytes([n]) if n < 128 else bytes([(n & 0x7F) | 0x80, n >> 7])) + b


def encode(r: FireflyRow) -> bytes:
    """One row, columns in schema order. Call check() first."""
    return _HEAD.pack(r.start_us // 1_000_000, r.start_us % 1_000_000, PROTO[r.proto], addr16(r.src), r.sport,
                      addr16(r.dst), r.dport, r.exp, r.act, STATE[r.state], r.t_us, r.sent,
                      r.received) + _text(r.app) + _text(r.reporter)


def encode_all(rows: Iterable[FireflyRow]) -> bytes:
    return b"".join(encode(r) for r in rows)


def encode_report(r: Report) -> bytes:
    """A live firefly (the collector's Report: times in epoch seconds, exact to the µs) as one
    row; RowError when a column cannot hold it (the parser's bounds make that rare)."""
    start_us, t_us = round(r.start * 1_000_000), round(r.t * 1_000_000)
    if not (0 <= start_us < MAX_TIME_US and 0 <= t_us < MAX_TIME_US):
        raise RowError(f"flow-lifecycle times {r.start:.0f}, {r.t:.0f}: expected 1970..2106", "bad_time")
    if not (0 <= r.sent <= MAX_COUNTER and 0 <= r.received <= MAX_COUNTER):
        raise RowError(f"usage {r.sent}, {r.received}: expected 0..2^60", "bad_usage")
    if not (0 <= r.exp <= MAX_ID and 0 <= r.act <= MAX_ID and 0 <= r.sport < 65536 and 0 <= r.dport < 65536):
        raise RowError(f"experiment {r.exp}, activity {r.act}, ports {r.sport}, {r.dport}: out of range", "bad_tag")
    proto = PROTO.get(r.proto)
    if proto is None:
        raise RowError(f"protocol {r.proto!r}: expected tcp or udp", "bad_protocol")
    try:
        src, dst = addr16(r.src), addr16(r.dst)
    except ValueError:
        raise RowError(f"addresses {r.src!r}, {r.dst!r}: expected IP addresses", "bad_address") from None
    return _HEAD.pack(start_us // 1_000_000, start_us % 1_000_000, proto, src, r.sport, dst, r.dport, r.exp, r.act,
                      STATE[r.state], t_us, r.sent, r.received) + _text(r.app or "") + _text(r.reporter)
