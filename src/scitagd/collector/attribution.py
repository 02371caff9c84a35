# SPDX-License-Identifier: Apache-2.0
"""How a flow's bytes are given to time: one function of the flow's set of fireflies, so that
every store (SQLite in one process, ClickHouse fed by several receivers) gives the same answer
whatever the arrival order, the split across receivers and the duplicates.

Fireflies carry running totals (sent + received so far), not deltas. A flow's reports are its
fireflies' (event minute, total) pairs, the event time being the end-time of an `end` and the
current-time of the others (the start-time when a producer sends neither), never before the
flow's start minute. Only the largest total per minute matters, and the flow's running maximum
over minutes (a report below an earlier one adds nothing) is what is attributed:

- POINT (A): the increase of the running maximum lands in the minute of the report showing it.
- SPREAD (B): the increase between two consecutive report minutes (the start counts as a report
  of total 0 in the start minute) is shared equally by the minutes from the earlier to the later
  one, both included, at most the CAP_MINUTES up to the later one; the integer remainder goes to
  the later minute. Equal shares (not shares by overlap) keep the arithmetic in integers: no
  rounding difference between Python, SQLite and ClickHouse, and no overflow.

Both keep the flow's total exact: the sum over minutes is the largest total reported. The
ClickHouse rebuild (ch/rebuild.py) is `contributions` written in SQL; SQLite keeps each flow's
`FlowReports` and applies what a new report changes (`add`), which tests check equal to
`contributions` of the whole set, in any order.

Bounds: an interval touches at most CAP_MINUTES (1,440) minutes, and a flow keeps its last KEEP
report minutes in memory; a report older than all of them counts only the part of its total
above the flow's running maximum, at its own minute (running totals only grow, so in practice
nothing): with more than KEEP minutes of reports in flight out of order, exactness gives way to
bounded memory.
"""

from __future__ import annotations

import bisect
from typing import Dict, Iterable, List, Tuple

__all__ = ["CAP_MINUTES", "DAY", "HOUR", "KEEP", "MAX_COUNTER", "METHODS", "MINUTE", "POINT", "SPREAD",
           "FlowReports", "contributions", "report_minutes"]

POINT, SPREAD = "point", "spread"
METHODS = (POINT, SPREAD)
CAP_MINUTES = 1440  # an interval is spread over at most the last 24 h before its later report
MAX_COUNTER = 1 << 60  # sent, received and their sum above this are rejected on input: sums stay in 64 bits
MINUTE, HOUR, DAY = 60, 3600, 86400
KEEP = 256

Buckets = Dict[int, int]  # epoch minute -> bytes


def report_minutes(start_minute: int, reports: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """(minute, running maximum) per report minute, ascending; minutes are epoch // 60.

    `reports` are (minute, total) pairs, duplicates welcome."""
    best: Dict[int, int] = {}
    for m, total in reports:
        m = max(m, start_minute)
        if total > best.get(m, -1):
            best[m] = total
    out: List[Tuple[int, int]] = []
    run = 0
    for m in sorted(best):
        run = max(run, best[m])
        out.append((m, run))
    return out


def _interval(out: Buckets, prev_m: int, m: int, inc: int, method: str, cap: int, sign: int = 1) -> bool:
    """Add one interval's increment to `out`; True when it was longer than `cap` minutes."""
    if inc <= 0:
        return False
    if method == POINT:
        out[m] = out.get(m, 0) + sign * inc
        return False
    lo = max(prev_m, m - cap + 1)
    n = m - lo + 1
    share = inc // n
    if share:
        for b in range(lo, m + 1):
            out[b] = out.get(b, 0) + sign * share
    out[m] = out.get(m, 0) + sign * (inc - share * n)
    return m - prev_m + 1 > cap


def contributions(start_minute: int, reports: Iterable[Tuple[int, int]], method: str = SPREAD,
                  cap: int = CAP_MINUTES) -> Dict[int, int]:
    """Bytes per minute (epoch minute -> bytes) for one flow; zero minutes left out."""
    out: Dict[int, int] = {}
    prev_m, prev_c = start_minute, 0
    for m, c in report_minutes(start_minute, reports):
        _interval(out, prev_m, m, c - prev_c, method, cap)
        prev_m, prev_c = m, c
    return {k: v for k, v in out.items() if v}


class FlowReports:
    """A flow's report minutes (largest total per minute, running maximum) and the change of its
    attribution each new report makes: `add` returns the minute deltas the aggregate tables must
    add (negative where a late report splits an interval already spread)."""

    __slots__ = ("base_cum", "base_m", "best", "cap", "clamped", "cum", "method", "mins", "start_m")

    def __init__(self, start: float, reports: Iterable[Tuple[float, int]] = (), floor: int = 0,
                 floor_time: float | None = None, method: str = SPREAD, cap: int = CAP_MINUTES) -> None:
        self.start_m = int(start // MINUTE)
        self.method, self.cap = method, cap
        self.clamped = 0  # intervals longer than `cap`: spread over their last `cap` minutes only
        # What is accounted and not kept minute by minute: the running maximum `base_cum` reached
        # by minute `base_m` (folded minutes; or a flow's bytes from before its reports were kept).
        self.base_m = max(self.start_m, int(floor_time // MINUTE)) if floor_time is not None else self.start_m
        self.base_cum = floor
        self.mins: List[int] = []
        self.best: List[int] = []
        self.cum: List[int] = []
        if reports:  # a new flow has none: one per flow the collector sees, so kept short
            for t, total in reports:
                self._put(int(t // MINUTE), total)
            self._recompute(0)
            self._fold()

    @property
    def maximum(self) -> int:
        return self.cum[-1] if self.cum else self.base_cum

    @property
    def base_t(self) -> float:
        """Reports before this time fall into the folded part (none while nothing is folded)."""
        return float(self.base_m * MINUTE) if self.base_m > self.start_m else float("-inf")

    def _put(self, m: int, total: int) -> Tuple[int, bool]:
        """Merge a report into the minutes: (its index, whether anything changed)."""
        m = max(m, self.start_m, self.base_m)
        k = bisect.bisect_left(self.mins, m)
        if k < len(self.mins) and self.mins[k] == m:
            if total <= self.best[k]:
                return k, False
            self.best[k] = total
            return k, True
        self.mins.insert(k, m)
        self.best.insert(k, total)
        self.cum.insert(k, 0)
        return k, True

    def _recompute(self, k: int) -> None:
        prev = self.cum[k - 1] if k else self.base_cum
        for i in range(k, len(self.mins)):
            prev = max(prev, self.best[i])
            self.cum[i] = prev

    def _contrib(self, out: Buckets, k: int, sign: int) -> None:
        """What the intervals ending at minutes k.. attribute (into `out`, times `sign`)."""
        prev_m = self.mins[k - 1] if k else self.base_m
        prev_c = self.cum[k - 1] if k else self.base_cum
        for i in range(k, len(self.mins)):
            _interval(out, prev_m, self.mins[i], self.cum[i] - prev_c, self.method, self.cap, sign)
            prev_m, prev_c = self.mins[i], self.cum[i]

    def add(self, t: float, total: int) -> Buckets:
        m = max(int(t // MINUTE), self.start_m)  # a report before the start counts at the start
        if m < self.base_m:
            # inside what was folded away: only an excess over the running maximum counts
            excess = total - self.maximum
            if excess <= 0:
                return {}
            self.base_cum += excess
            self._recompute(0)
            out: Buckets = {}
            _interval(out, m, m, excess, POINT, self.cap)
            return out
        mins = self.mins
        if mins and m == mins[-1]:
            # a second report in the latest minute (a short flow's end): only that interval changes
            if total <= self.best[-1]:
                return {}
            self.best[-1] = total
            prev_m, prev_c = (mins[-2], self.cum[-2]) if len(mins) > 1 else (self.base_m, self.base_cum)
            old, new = self.cum[-1], total if total > prev_c else prev_c
            if new == old:
                return {}
            self.cum[-1] = new
            out = {}
            _interval(out, prev_m, m, old - prev_c, self.method, self.cap, -1)
            _interval(out, prev_m, m, new - prev_c, self.method, self.cap)
            return {b: v for b, v in out.items() if v}
        if not mins or m > mins[-1]:
            # the common case, a minute later than all others: one new interval at the end
            prev_m = mins[-1] if mins else self.base_m
            prev = self.cum[-1] if mins else self.base_cum
            cum = total if total > prev else prev
            mins.append(m)
            self.best.append(total)
            self.cum.append(cum)
            out = {}
            if _interval(out, prev_m, m, cum - prev, self.method, self.cap):
                self.clamped += 1
            if len(mins) > KEEP:
                self._fold()
            return out
        k = bisect.bisect_left(mins, m)
        k = k - 1 if k and (k == len(mins) or mins[k] != m) else k  # intervals from the one before change
        out = {}
        self._contrib(out, max(k, 0), -1)
        j, changed = self._put(m, total)
        if not changed:
            return {}
        self._recompute(j)
        self._contrib(out, max(k, 0), 1)
        self._fold()
        return {b: v for b, v in out.items() if v}

    def _fold(self) -> None:
        """Keep the last KEEP minutes; the older ones become the base (their effect stays)."""
        extra = len(self.mins) - KEEP
        if extra > 0:
            self.base_m = self.mins[extra - 1]
            self.base_cum = self.cum[extra - 1]
            del self.mins[:extra], self.best[:extra], self.cum[:extra]

    def attribution(self) -> Buckets:
        """Everything the kept minutes attribute (for tests)."""
        out: Buckets = {}
        self._contrib(out, 0, 1)
        return {b: v for b, v in out.items() if v}
