# SPDX-License-Identifier: Apache-2.0
"""A received firefly as the collector accounts it: one `Report`, with an identity.

A firefly's identity is what makes it itself: its flow (5-tuple and start time), state, event
time and byte counts (`ident` within its flow). The same firefly received twice, by any path
(the peer and a relay, a live receiver and an archive import), has the same identity and counts
once; the store enforces that across restarts.

Who reported it: the sender's address, unless the sender is a trusted relay (then the syslog
HOSTNAME it forwarded): a HOSTNAME is a claim anyone can make.
"""

from __future__ import annotations

from typing import Optional

import msgspec

from ..errors import FireflyError
from ..events import END, State, normalize_ip
from ..firefly import Received, ts

__all__ = ["Report", "make_report"]


class Report(msgspec.Struct, frozen=True, gc=False):
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    start: float  # flow start, epoch seconds to the microsecond
    state: State
    t: float  # event time: end-time for an end, else current-time (else the start)
    sent: int
    received: int
    exp: int
    act: int
    app: Optional[str]
    reporter: str
    hostname: Optional[str]  # what the syslog header claimed, kept for inspection
    sender: str
    at: float  # when it was received (wall clock)

    @property
    def key(self) -> tuple[str, str, int, str, int, float]:
        return (self.proto, self.src, self.sport, self.dst, self.dport, self.start)

    @property
    def total(self) -> int:
        return self.sent + self.received

    @property
    def ident(self) -> tuple[str, float, int, int]:
        """Which report of its flow this is: with the flow's key, the firefly's identity."""
        return (self.state, self.t, self.sent, self.received)


def make_report(rec: Received, sender: str, trusted: bool, at: float, max_future: Optional[float] = None) -> Report:
    """`max_future`: seconds an event time may be ahead of `at` (clock skew), None for archives.

    Times are parse()'s epoch seconds: exact microseconds (ts()), so no rounding is needed for a
    flow's start to be the same key however often and by whom it is reported."""
    ff = rec.firefly
    lc, fid, ctx = ff.flow_lifecycle, ff.flow_id, ff.context
    start, end, current = rec.start, rec.end, rec.current
    if start is None:  # a Received not made by parse()
        start, end, current = ts(lc.start_time) or 0.0, ts(lc.end_time), ts(lc.current_time)
    state = lc.state
    t = (end if state == END else None) or current or start
    if max_future is not None and (start > at + max_future or t > at + max_future):
        for name, value in (("start-time", start), ("end-time" if state == END else "current-time", t)):
            if value > at + max_future:
                raise FireflyError(f"flow-lifecycle.{name}: {value - at:.0f} s in the future: expected at most "
                                   f"{max_future:.0f} s of clock skew", "future_time", f"flow-lifecycle.{name}")
    usage = ff.usage
    if usage is None:
        sent = received = 0
    else:
        sent, received = usage.sent or 0, usage.received or 0
    hostname = rec.hostname
    return Report(fid.protocol, normalize_ip(fid.src_ip),  # one flow, however it is spelled
                  fid.src_port, normalize_ip(fid.dst_ip), fid.dst_port, start, state, t,  # type: ignore[arg-type]
                  sent, received, ctx.experiment_id, ctx.activity_id, ctx.application,
                  hostname if trusted and hostname else sender, hostname, sender, at)
