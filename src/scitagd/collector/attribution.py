"""How a flow's bytes are given to time: order-independent, bounded, incremental.

Fireflies carry running totals (sent + received so far), not deltas. A flow's reports, ordered by
their event time, with the flow's start as a report of 0 bytes, cut its life into intervals; the
increase of the running total's maximum over an interval is spread evenly over that interval.
XRootD sends only start and end: its bytes are spread over the transfer. The result depends on
the set of reports only, not on the order they arrive in, nor on duplicates.

Bounds (an end whose start is years ago must not freeze anything):
- an interval longer than a day is spread over hours, not minutes (at each hour's first minute),
  and one longer than MAX_SPAN (30 days) only over its last 30 days: at most 1,440 buckets;
- a flow keeps its last KEEP reports in memory (by event time); a report older than all of them
  counts only the part of its total above the flow's running maximum, at its own time (running
  totals only grow, so in practice nothing): with more than KEEP reports in flight out of order,
  exactness gives way to bounded memory.
"""

from __future__ import annotations

import bisect
from typing import Dict, Iterable, List, Optional, Tuple

__all__ = ["DAY", "HOUR", "KEEP", "MAX_SPAN", "MINUTE", "FlowReports", "spread"]

MINUTE, HOUR, DAY = 60, 3600, 86400
MAX_SPAN = 30 * DAY
KEEP = 256

Buckets = Dict[int, int]


def spread(t0: float, t1: float, nbytes: int, width: int = MINUTE) -> Tuple[Buckets, bool]:
    """`nbytes` over the buckets of [t0, t1] in proportion to the overlap; exact in total.
    Returns (bucket start -> bytes, whether the span was clamped to MAX_SPAN)."""
    if nbytes <= 0:
        return {}, False
    if int(t0 // width) == int(t1 // width) and t1 >= t0:  # within one bucket: most intervals
        return {int(t1 // width) * width: nbytes}, False
    clamped = False
    if t1 - t0 > MAX_SPAN:
        t0, clamped = t1 - MAX_SPAN, True
    if t1 <= t0:
        return {int(t1 // MINUTE) * MINUTE: nbytes}, clamped
    if width == MINUTE and t1 - t0 > DAY:
        width = HOUR
    out: Buckets = {}
    dur = t1 - t0
    b = int(t0 // width) * width
    given = 0
    last = b
    while b < t1:
        share = int(nbytes * (min(t1, b + width) - max(t0, b)) / dur)
        if share:
            out[b] = out.get(b, 0) + share
            given += share
        last = b
        b += width
    out[last] = out.get(last, 0) + nbytes - given  # rounding: the total is exact
    return out, clamped


def _add(into: Buckets, other: Buckets, sign: int) -> None:
    for k, v in other.items():
        n = into.get(k, 0) + sign * v
        if n:
            into[k] = n
        else:
            into.pop(k, None)


class FlowReports:
    """A flow's reports (event time, running total) and the increments they imply.

    `add` returns the change of the flow's attribution as bucket deltas, for minutes and (with
    `pair_width`) days: what the aggregate tables must add (deltas may be negative where a late
    report splits an interval that was already spread)."""

    __slots__ = ("base_cum", "base_t", "clamped", "cum", "start", "times", "totals")

    def __init__(self, start: float, reports: Iterable[Tuple[float, int]] = (), floor: int = 0,
                 floor_time: Optional[float] = None) -> None:
        self.start = start
        # What is already accounted and not kept report by report: the running maximum `base_cum`
        # reached by `base_t` (folded reports; or a flow's bytes from before its reports were kept).
        self.base_t = max(start, floor_time) if floor_time is not None else start
        self.base_cum = floor
        self.times: List[float] = []
        self.totals: List[int] = []
        self.cum: List[int] = []
        self.clamped = 0
        for t, total in sorted(reports):
            self._insert(len(self.times), max(t, self.base_t), total)
        self._recompute(0)
        self._fold()

    @property
    def maximum(self) -> int:
        return self.cum[-1] if self.cum else self.base_cum

    @property
    def last_time(self) -> float:
        return self.times[-1] if self.times else self.base_t

    def _insert(self, k: int, t: float, total: int) -> None:
        self.times.insert(k, t)
        self.totals.insert(k, total)
        self.cum.insert(k, 0)

    def _recompute(self, k: int) -> None:
        prev = self.cum[k - 1] if k else self.base_cum
        for i in range(k, len(self.times)):
            prev = max(prev, self.totals[i])
            self.cum[i] = prev

    def _intervals(self, k: int) -> List[Tuple[float, float, int]]:
        """Intervals ending at reports k.. (their increments), from the current state."""
        out = []
        t_prev = self.times[k - 1] if k else self.base_t
        c_prev = self.cum[k - 1] if k else self.base_cum
        for i in range(k, len(self.times)):
            out.append((t_prev, self.times[i], self.cum[i] - c_prev))
            t_prev, c_prev = self.times[i], self.cum[i]
        return out

    def _attribute(self, intervals: List[Tuple[float, float, int]], sign: int, minutes: Buckets,
                   days: Optional[Buckets]) -> None:
        for t0, t1, n in intervals:
            if n <= 0:
                continue
            m, clamped = spread(t0, t1, n)
            _add(minutes, m, sign)
            if clamped and sign > 0:
                self.clamped += 1
            if days is not None:
                _add(days, spread(t0, t1, n, DAY)[0], sign)

    def add(self, t: float, total: int, days: bool = False) -> Tuple[Buckets, Optional[Buckets]]:
        t = max(t, self.start)
        times = self.times
        if t >= self.base_t and (not times or t >= times[-1]):
            # the common case, a report later than all others: one new interval at the end
            prev_t = times[-1] if times else self.base_t
            prev = self.cum[-1] if times else self.base_cum
            cum = total if total > prev else prev
            times.append(t)
            self.totals.append(total)
            self.cum.append(cum)
            if len(times) > KEEP:
                self._fold()
            if cum == prev:
                return {}, {} if days else None
            m, clamped = spread(prev_t, t, cum - prev)
            if clamped:
                self.clamped += 1
            return m, spread(prev_t, t, cum - prev, DAY)[0] if days else None
        minutes: Buckets = {}
        day_buckets: Optional[Buckets] = {} if days else None
        if t < self.base_t:
            # inside what was folded away: only an excess over the running maximum counts
            excess = total - self.maximum
            if excess > 0:
                self._attribute([(t, t, excess)], 1, minutes, day_buckets)
                self.base_cum += excess
                self._recompute(0)
            return minutes, day_buckets
        k = bisect.bisect_right(self.times, t)
        before = self._intervals(k)
        self._insert(k, t, total)
        self._recompute(k)
        after = self._intervals(k)
        self._attribute(before, -1, minutes, day_buckets)
        self._attribute(after, 1, minutes, day_buckets)
        self._fold()
        return minutes, day_buckets

    def _fold(self) -> None:
        """Keep the last KEEP reports; the older ones become the base (their effect stays)."""
        extra = len(self.times) - KEEP
        if extra > 0:
            self.base_t = self.times[extra - 1]
            self.base_cum = self.cum[extra - 1]
            del self.times[:extra], self.totals[:extra], self.cum[:extra]

    def attribution(self, days: bool = False) -> Tuple[Buckets, Optional[Buckets]]:
        """Everything the kept reports attribute (for tests and for loading a flow)."""
        minutes: Buckets = {}
        day_buckets: Optional[Buckets] = {} if days else None
        self._attribute(self._intervals(0), 1, minutes, day_buckets)
        return minutes, day_buckets
