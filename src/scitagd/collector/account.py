"""Accounting: join start/ongoing/end of a flow, derive duration, bytes and throughput, and
turn them into store rows and per-experiment/activity counters.

A flow is its 5-tuple plus its start time (ports are reused). Bytes are attributed to time as
they become known: an `ongoing` firefly's new bytes go to the minute it arrived in, the rest at
the end is spread over the time since. XRootD never sends `ongoing`, so nothing relies on it.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, defaultdict
from typing import Any, DefaultDict, Dict, List, Optional, Tuple

from ..events import END, ONGOING, START
from ..firefly import Received, ts
from .store import MINUTE, PAIR_BUCKET, FlowRow, spread

__all__ = ["Accountant", "Flow"]

FlowKey = Tuple[str, str, int, str, int, float]
Tag = Tuple[int, int]


class Flow:
    __slots__ = ("act", "app", "attributed", "attributed_until", "dport", "dst", "exp", "last_seen",
                 "proto", "received", "reporter", "sent", "sport", "src", "start")

    def __init__(self, key: FlowKey, exp: int, act: int, app: Optional[str], reporter: str) -> None:
        self.proto, self.src, self.sport, self.dst, self.dport, self.start = key
        self.exp, self.act, self.app, self.reporter = exp, act, app, reporter
        self.sent = self.received = 0
        self.attributed = 0
        self.attributed_until = self.start
        self.last_seen = time.monotonic()

    def row(self, end: Optional[float], state: str) -> FlowRow:
        return (self.proto, self.src, self.sport, self.dst, self.dport, self.start, end, self.exp,
                self.act, self.app, self.reporter, self.sent, self.received, state)


class Accountant:
    def __init__(self, local_networks: List[str], drop_local_only: bool, dedup_size: int = 200_000) -> None:
        self.nets = [ipaddress.ip_network(c, strict=False) for c in local_networks]
        self.drop_local_only = drop_local_only and bool(self.nets)
        self.active: Dict[FlowKey, Flow] = {}
        self.active_by_tag: DefaultDict[Tag, int] = defaultdict(int)
        self._seen: OrderedDict[Tuple[Any, ...], None] = OrderedDict()
        self._dedup_size = dedup_size
        self._local_cache: Dict[str, bool] = {}
        # pending store writes, swapped out by the flusher
        self.rows: List[FlowRow] = []
        self.traffic: Dict[Tuple[int, int, int], List[int]] = {}
        self.pairs: Dict[Tuple[int, str, str, int, int], List[int]] = {}
        # counters (exported as metrics)
        self.started: DefaultDict[Tag, int] = defaultdict(int)
        self.ended: DefaultDict[Tag, int] = defaultdict(int)
        self.bytes: DefaultDict[Tag, int] = defaultdict(int)
        self.states: DefaultDict[str, int] = defaultdict(int)
        self.duplicates = 0
        self.local_only = 0
        self.expired = 0
        self.recent: DefaultDict[Tag, List[Tuple[float, int]]] = defaultdict(list)

    # --- input --------------------------------------------------------------------------

    def _is_local(self, ip: str) -> bool:
        v = self._local_cache.get(ip)
        if v is None:
            addr = ipaddress.ip_address(ip)
            v = any(addr in n for n in self.nets)
            if len(self._local_cache) > 100_000:
                self._local_cache.clear()
            self._local_cache[ip] = v
        return v

    def ingest(self, rec: Received, sender: str) -> str:
        """Account one parsed firefly; returns what happened (for counters)."""
        ff = rec.firefly
        lc, fid, ctx = ff.flow_lifecycle, ff.flow_id, ff.context
        start = ts(lc.start_time) or 0.0
        key: FlowKey = (fid.protocol, fid.src_ip, fid.src_port, fid.dst_ip, fid.dst_port, round(start, 6))
        usage = ff.usage
        sent = (usage.sent or 0) if usage else 0
        received = (usage.received or 0) if usage else 0
        marker = ts(lc.end_time) if lc.state == END else ts(lc.current_time)
        dkey = (key, lc.state, marker, sent, received)
        if dkey in self._seen:
            self.duplicates += 1
            return "duplicate"
        self._seen[dkey] = None
        if len(self._seen) > self._dedup_size:
            self._seen.popitem(last=False)
        if self.drop_local_only and self._is_local(fid.src_ip) and self._is_local(fid.dst_ip):
            self.local_only += 1
            return "local_only"
        self.states[lc.state] += 1
        reporter = rec.hostname or sender
        flow = self.active.get(key)
        if flow is None:
            flow = Flow(key, ctx.experiment_id, ctx.activity_id, ctx.application, reporter)
            if lc.state != END:
                self.active[key] = flow
                self.active_by_tag[(flow.exp, flow.act)] += 1
            if lc.state == START:
                self.started[(flow.exp, flow.act)] += 1
            self._traffic((int(flow.start // MINUTE) * MINUTE, flow.exp, flow.act), 0, 1)
            new = True
        else:
            new = False
            flow.last_seen = time.monotonic()
        if sent > flow.sent:
            flow.sent = sent
        if received > flow.received:
            flow.received = received
        if lc.state == END:
            end = ts(lc.end_time) or ts(lc.current_time) or start
            self._finish(key, flow, end, "ended", was_active=not new)
            return END
        now = ts(lc.current_time) or time.time()
        if lc.state == ONGOING:
            self._attribute(flow, max(now, flow.start), point=True)
        self.rows.append(flow.row(None, "active"))
        return lc.state

    def _traffic(self, k: Tuple[int, int, int], nbytes: int, nflows: int) -> None:
        cur = self.traffic.get(k)
        if cur is None:
            self.traffic[k] = [nbytes, nflows]
        else:
            cur[0] += nbytes
            cur[1] += nflows

    def _attribute(self, flow: Flow, until: float, point: bool = False) -> None:
        """Give the flow's not yet attributed bytes to time: at `until` (ongoing) or spread."""
        total = flow.sent + flow.received
        delta = total - flow.attributed
        if delta <= 0:
            return
        if point:
            minutes = {int(until // MINUTE) * MINUTE: delta}
            hours = {int(until // PAIR_BUCKET) * PAIR_BUCKET: delta}
        else:
            minutes = spread(flow.attributed_until, until, delta, MINUTE)
            hours = spread(flow.attributed_until, until, delta, PAIR_BUCKET)
        for b, n in minutes.items():
            self._traffic((b, flow.exp, flow.act), n, 0)
        for b, n in hours.items():
            k = (b, flow.src, flow.dst, flow.exp, flow.act)
            cur = self.pairs.get(k)
            if cur is None:
                self.pairs[k] = [n, 0]
            else:
                cur[0] += n
        flow.attributed = total
        flow.attributed_until = until
        tag = (flow.exp, flow.act)
        self.bytes[tag] += delta
        self.recent[tag].append((time.time(), delta))

    def _finish(self, key: FlowKey, flow: Flow, end: float, state: str, was_active: bool) -> None:
        self._attribute(flow, max(end, flow.start))
        hk = (int(flow.start // PAIR_BUCKET) * PAIR_BUCKET, flow.src, flow.dst, flow.exp, flow.act)
        cur = self.pairs.get(hk)
        if cur is None:
            self.pairs[hk] = [0, 1]
        else:
            cur[1] += 1
        tag = (flow.exp, flow.act)
        self.ended[tag] += 1
        if was_active and self.active.pop(key, None) is not None:
            self.active_by_tag[tag] -= 1
            if self.active_by_tag[tag] <= 0:
                del self.active_by_tag[tag]
        self.rows.append(flow.row(end, state))

    def expire(self, timeout: float) -> int:
        """Close flows whose end never came."""
        limit = time.monotonic() - timeout
        old = [k for k, f in self.active.items() if f.last_seen < limit]
        for k in old:
            f = self.active[k]
            self._finish(k, f, max(f.attributed_until, f.start), "expired", was_active=True)
        self.expired += len(old)
        return len(old)

    def restore(self, row: Dict[str, Any]) -> None:
        """An active flow from the store, after a restart."""
        key: FlowKey = (row["proto"], row["src"], row["sport"], row["dst"], row["dport"], round(row["start"], 6))
        f = Flow(key, row["exp"], row["act"], row["app"], row["reporter"] or "")
        f.sent, f.received = row["sent"], row["received"]
        f.attributed = f.sent + f.received  # already attributed before the restart
        self.active[key] = f
        self.active_by_tag[(f.exp, f.act)] += 1

    def take(self) -> Tuple[List[FlowRow], Dict[Tuple[int, int, int], Tuple[int, int]],
                            Dict[Tuple[int, str, str, int, int], Tuple[int, int]]]:
        """Hand the pending writes to the flusher; later rows of one flow win."""
        rows = self.rows
        traffic = {k: (v[0], v[1]) for k, v in self.traffic.items()}
        pairs = {k: (v[0], v[1]) for k, v in self.pairs.items()}
        self.rows, self.traffic, self.pairs = [], {}, {}
        return rows, traffic, pairs

    def throughput(self, window: float = 60.0) -> Dict[Tag, float]:
        """Bits per second attributed in the last `window` seconds, per experiment/activity."""
        cut = time.time() - window
        out = {}
        for tag, items in list(self.recent.items()):
            while items and items[0][0] < cut:
                items.pop(0)
            if not items:
                del self.recent[tag]
                continue
            out[tag] = sum(n for _, n in items) * 8 / window
        return out
