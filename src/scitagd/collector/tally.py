# SPDX-License-Identifier: Apache-2.0
"""The collector's counters per experiment/activity, for /metrics: updated from what the store
accounted, with label sets bounded whatever senders send (a tag the registry does not know is
folded into one `other` series), and throughput over the last minute in O(1) per update."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

from .store import IngestResult

__all__ = ["OTHER", "Tally"]

Tag = Tuple[int, int]
OTHER: Tag = (-1, -1)
WINDOW = 60  # seconds of throughput


class Tally:
    """`known(exp, act)`: whether a tag gets its own series (the registry knows it)."""

    def __init__(self, known: Callable[[int, int], bool]) -> None:
        self.known = known
        self.started: Dict[Tag, int] = {}
        self.ended: Dict[Tag, int] = {}
        self.expired: Dict[Tag, int] = {}
        self.bytes: Dict[Tag, int] = {}
        self.active: Dict[Tag, int] = {}
        self.outcomes: Dict[str, int] = {}
        self.clamped = 0
        self.tag_conflicts = 0
        self.evicted = 0
        self._recent: Dict[Tag, Deque[List[int]]] = {}  # tag -> [second, bytes] per second, oldest first

    def fold(self, tag: Tag) -> Tag:
        return tag if self.known(*tag) else OTHER

    def set_active(self, by_tag: Dict[Tag, int]) -> None:
        self.active = {}
        for tag, n in by_tag.items():
            f = self.fold(tag)
            self.active[f] = self.active.get(f, 0) + n

    def apply(self, res: IngestResult, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        for name in ("started", "ended", "expired", "bytes", "active"):
            mine: Dict[Tag, int] = getattr(self, name)
            for tag, n in getattr(res, name).items():
                f = self.fold(tag)
                mine[f] = mine.get(f, 0) + n  # an active gauge stays at 0 rather than vanishing
        for k, n in res.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + n
        self.clamped += res.clamped
        self.tag_conflicts += res.tag_conflicts
        self.evicted += res.evicted
        sec = int(now)
        for tag, n in res.bytes.items():
            if n <= 0:
                continue
            q = self._recent.setdefault(self.fold(tag), deque())
            if q and q[-1][0] == sec:
                q[-1][1] += n
            else:
                q.append([sec, n])
            while q and q[0][0] <= sec - WINDOW:  # amortised O(1): each second is dropped once
                q.popleft()

    def throughput(self, now: Optional[float] = None) -> Dict[Tag, float]:
        """Bits per second attributed in the last minute, per (folded) tag."""
        cut = int(time.time() if now is None else now) - WINDOW
        out = {}
        for tag, q in list(self._recent.items()):
            while q and q[0][0] <= cut:
                q.popleft()
            if not q:
                del self._recent[tag]
                continue
            out[tag] = sum(n for _, n in q) * 8 / WINDOW
        return out
