# SPDX-License-Identifier: Apache-2.0
"""Per-minute traffic by exporter, interface, direction and tag; a bounded index of tagged flows.

`Aggregator.add(records)` sums bytes, packets and records per
(minute, exporter, domain, interface, direction, family, experiment, activity); untagged IPv6
and IPv4 traffic is summed too (experiment None), so a link's tagged share is visible.
Records claiming more than `max_record_bytes` are skipped and counted (`implausible`).
With `max_skew`, a record whose time is further than that from the collector's clock (an
exporter with a wrong clock, or a replay) is counted at arrival instead (`time_replaced`).
`flush(now)` hands every bucket of minutes that ended more than `grace` seconds ago to the
callback as `Row`s. Rows are deltas: a record arriving after its minute was flushed comes out in
a later batch with the same key, and the store adds them up.

Label sets are bounded: exporters (`max_exporters`), (domain, interface) pairs per exporter
(`max_interfaces`) and tags (`max_tags`); what does not fit is folded into an "other" bucket
(exporter "other", domain/interface -1, experiment/activity -1) and counted in `overflow`.

False positives: a host that does not mark draws random labels, and one in
`matcher.false_positive_rate` of them decodes to an accepted tag. With `marking_prefixes`
(the marking sites' networks), a label tag counts only when the source or destination is in
one of them; the others are counted as untagged and their bytes in `unconfirmed`. Without it,
`expected_false_positive_bytes(untagged_ipv6_bytes)` estimates the share to discount.

`PathIndex` remembers, for recently seen tagged 5-tuples, where they were observed (exporter,
domain, interface, direction), so a flow a firefly reports can be given its path.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import msgspec

from .records import FlowRecord

__all__ = ["MAX_RECORD_BYTES", "OTHER", "Aggregator", "Observation", "PathIndex", "Row"]

OTHER = -1
# No flow record counts 2**44 bytes (17.6 TB: a 400 Gb/s flow for 6 minutes, sampling included);
# bigger counts come from broken or hostile exporters and would swamp every sum they enter.
MAX_RECORD_BYTES = 1 << 44
Key = Tuple[int, str, int, Optional[int], Optional[int], int, Optional[int], Optional[int]]


class Row(msgspec.Struct, gc=False):
    minute: int  # unix seconds at the start of the minute
    exporter: str
    domain: int
    interface: Optional[int]
    direction: Optional[int]
    family: int
    experiment: Optional[int]  # None: untagged; -1: other (over max_tags)
    activity: Optional[int]
    bytes: int
    packets: int
    records: int


class Aggregator:
    def __init__(self, emit: Callable[[List[Row]], None], interval: int = 60, grace: float = 90.0,
                 max_exporters: int = 256, max_interfaces: int = 512, max_tags: int = 1024,
                 marking_prefixes: Sequence[str] = (), false_positive_rate: float = 0.0,
                 max_skew: Optional[float] = None, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self.emit = emit
        self.max_skew = max_skew  # a record time further than this from now is replaced by now
        self.time_replaced: Dict[str, int] = {}  # per exporter (as counted: folded past the limits)
        self.max_record_bytes = max_record_bytes
        self.implausible: Dict[str, int] = {}  # records over max_record_bytes, skipped, per exporter
        self.interval = interval
        self.grace = grace
        self.max_exporters = max_exporters
        self.max_interfaces = max_interfaces
        self.max_tags = max_tags
        self.false_positive_rate = false_positive_rate
        self.buckets: Dict[Key, List[int]] = {}
        self.exporters: Dict[str, Dict[Tuple[int, Optional[int]], None]] = {}
        self.tags: Dict[Tuple[Optional[int], Optional[int]], None] = {}
        self.overflow = {"exporter": 0, "interface": 0, "tag": 0}
        self.unconfirmed: Dict[str, int] = {}  # label-tagged bytes outside marking_prefixes
        self._prefixes = _Prefixes(marking_prefixes)
        self.rows_emitted = 0
        self._places: Dict[Tuple[str, int, Optional[int]], Tuple[str, int, Optional[int]]] = {}

    def add(self, records: Iterable[FlowRecord]) -> None:
        buckets = self.buckets
        get = buckets.get
        places = self._places
        tags = self.tags
        interval = self.interval
        check = self._prefixes if self._prefixes else None
        last_t = None
        minute = 0
        skewed = False
        lo = hi = now = 0.0
        if self.max_skew is not None:
            now = time.time()
            lo, hi = now - self.max_skew, now + self.max_skew
        for r in records:
            t = r.time
            if t != last_t:  # records of one message share their time
                last_t = t
                skewed = lo != hi and not lo <= t <= hi
                minute = int(now if skewed else t) // interval * interval
            d = r.direction
            iface = r.egress if d == 1 and r.egress is not None else r.ingress
            place = places.get((r.exporter, r.domain, iface))
            if place is None:
                place = self._place(r.exporter, r.domain, iface)
            if r.bytes > self.max_record_bytes:  # 2**64 - 1 octets and the like: a broken or hostile exporter
                self.implausible[place[0]] = self.implausible.get(place[0], 0) + 1
                continue
            if skewed:  # an exporter's clock off by more than max_skew: counted at arrival
                r.time = now
                self.time_replaced[place[0]] = self.time_replaced.get(place[0], 0) + 1
            exp = r.experiment
            act = r.activity
            if exp is not None:
                if check is not None and r.via == "label" and not check.either(r.src, r.dst):
                    self.unconfirmed[place[0]] = self.unconfirmed.get(place[0], 0) + r.bytes
                    exp = act = None
                elif (exp, act) not in tags:
                    if len(tags) >= self.max_tags:
                        self.overflow["tag"] += 1
                        exp = act = OTHER
                    else:
                        tags[(exp, act)] = None
            key = (minute, place[0], place[1], place[2], d, r.family, exp, act)
            b = get(key)
            if b is None:
                buckets[key] = [r.bytes, r.packets, 1]
            else:
                b[0] += r.bytes
                b[1] += r.packets
                b[2] += 1

    def _place(self, exporter: str, domain: int, iface: Optional[int]) -> Tuple[str, int, Optional[int]]:
        """(exporter, domain, interface) as counted: folded into "other" past the limits. Cached
        while the cache is within the limits' product, so its size is bounded too."""
        ex = exporter
        ifaces = self.exporters.get(ex)
        if ifaces is None:
            if len(self.exporters) >= self.max_exporters:
                self.overflow["exporter"] += 1
                ex = "other"
                ifaces = self.exporters.setdefault(ex, {})
            else:
                ifaces = self.exporters[ex] = {}
        dom: int = domain
        ifc = iface
        if (dom, ifc) not in ifaces:
            if len(ifaces) >= self.max_interfaces:
                self.overflow["interface"] += 1
                dom = ifc = OTHER
            ifaces[(dom, ifc)] = None
        place = (ex, dom, ifc)
        bound = (self.max_exporters + 1) * (self.max_interfaces + 1)
        if ex == exporter and dom == domain and len(self._places) < bound:
            self._places[(exporter, domain, iface)] = place  # only places that were not folded
        return place

    def flush(self, now: float | None = None, everything: bool = False) -> List[Row]:
        """Emit (and forget) the buckets of minutes ended more than `grace` s ago."""
        now = time.time() if now is None else now
        limit = now - self.grace - self.interval
        done = [k for k in self.buckets if everything or k[0] <= limit]
        rows = [Row(*k, *self.buckets.pop(k)) for k in done]
        if rows:
            rows.sort(key=lambda r: (r.minute, r.exporter))
            self.rows_emitted += len(rows)
            self.emit(rows)
        return rows

    def expected_false_positive_bytes(self, untagged_ipv6_bytes: int) -> float:
        """Of the unmarked IPv6 bytes, the share whose random labels look tagged, given the
        untagged remainder we saw: u * p / (1 - p)."""
        p = self.false_positive_rate
        return untagged_ipv6_bytes * p / (1 - p) if p < 1 else 0.0


class _Prefixes:
    def __init__(self, cidrs: Sequence[str]) -> None:
        self.nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self.v6 = [(int(n.network_address), int(n.netmask)) for n in self.nets if n.version == 6]
        self.v4 = [(int(n.network_address), int(n.netmask)) for n in self.nets if n.version == 4]

    def __bool__(self) -> bool:
        return bool(self.nets)

    def contains(self, addr: bytes) -> bool:
        a = int.from_bytes(addr, "big")
        nets = self.v6 if len(addr) == 16 else self.v4
        return any(a & mask == net for net, mask in nets)

    def either(self, src: bytes, dst: bytes) -> bool:
        return self.contains(src) or self.contains(dst)


class Observation(msgspec.Struct, frozen=True, gc=False):
    exporter: str
    domain: int
    interface: Optional[int]
    direction: Optional[int]
    experiment: Optional[int]
    activity: Optional[int]
    seen: float


FlowKey = Tuple[bytes, bytes, int, int, int]


class PathIndex:
    """Recent tagged 5-tuples -> where they were seen (at most `per_flow` places each), LRU."""

    def __init__(self, max_flows: int = 100_000, per_flow: int = 8) -> None:
        self.max_flows = max_flows
        self.per_flow = per_flow
        self.flows: OrderedDict[FlowKey, Dict[Tuple[str, int, Optional[int], Optional[int]], Observation]] = \
            OrderedDict()
        self.evicted = 0

    def add(self, records: Iterable[FlowRecord]) -> None:
        flows = self.flows
        for r in records:
            if r.experiment is None:
                continue
            key = (r.src, r.dst, r.protocol, r.sport, r.dport)
            places = flows.get(key)
            if places is None:
                places = flows[key] = {}
                if len(flows) > self.max_flows:
                    flows.popitem(last=False)
                    self.evicted += 1
            else:
                flows.move_to_end(key)
            d = r.direction
            iface = r.egress if d == 1 and r.egress is not None else r.ingress
            where = (r.exporter, r.domain, iface, d)
            if where in places or len(places) < self.per_flow:
                places[where] = Observation(r.exporter, r.domain, iface, d, r.experiment, r.activity, r.time)

    def lookup(self, src: str, dst: str, protocol: int, sport: int, dport: int) -> List[Tuple[bool, Observation]]:
        """Where the flow was seen, both directions: (reverse, observation) pairs."""
        s = ipaddress.ip_address(src).packed
        t = ipaddress.ip_address(dst).packed
        out: List[Tuple[bool, Observation]] = []
        for rev, key in ((False, (s, t, protocol, sport, dport)), (True, (t, s, protocol, dport, sport))):
            for o in self.flows.get(key, {}).values():
                out.append((rev, o))
        return out
