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
ClickHouse rebuild (ch/rebuild.py) is the same function written in SQL; tests compare them.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

POINT, SPREAD = "point", "spread"
METHODS = (POINT, SPREAD)
CAP_MINUTES = 1440  # an interval is spread over at most the last 24 h before its later report
MAX_COUNTER = 1 << 60  # sent or received above this is rejected on input: sums stay in UInt64


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


def contributions(start_minute: int, reports: Iterable[Tuple[int, int]], method: str = SPREAD,
                  cap: int = CAP_MINUTES) -> Dict[int, int]:
    """Bytes per minute (epoch minute -> bytes) for one flow; zero minutes left out."""
    out: Dict[int, int] = {}
    prev_m, prev_c = start_minute, 0
    for m, c in report_minutes(start_minute, reports):
        inc = c - prev_c
        if inc > 0:
            if method == POINT:
                out[m] = out.get(m, 0) + inc
            else:
                lo = max(prev_m, m - cap + 1)
                n = m - lo + 1
                share = inc // n
                if share:
                    for b in range(lo, m + 1):
                        out[b] = out.get(b, 0) + share
                out[m] = out.get(m, 0) + inc - share * n
        prev_m, prev_c = m, c
    return out
