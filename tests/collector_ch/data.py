# SPDX-License-Identifier: Apache-2.0
"""Fireflies for the hidden-order tests, and what one careful accountant makes of them.

Realistic flows (XRootD: start and end; scitagd: start, ongoing every few minutes, end) plus
what breaks naive accounting: relay copies (same firefly, other reporter), retries (same
firefly twice), flows whose start or end never came, totals that go down (a confused
producer), reports stamped before the flow's start (clock skew), flows crossing midnight and
lasting more than the 24 h spread cap, and the real producers' datagrams in shared/."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any, Dict, List, Set, Tuple

from scitagd.collector.attribution import contributions
from scitagd.collector.ch.rows import FireflyRow, from_received
from scitagd.firefly import parse
from tests.conftest import PRODUCERS, require_shared

DAY_US = 86_400_000_000
MIN_US = 60_000_000


def producers() -> List[FireflyRow]:
    rows = []
    for line in require_shared(PRODUCERS).read_text().splitlines():
        rows.append(from_received(parse(json.loads(line)["wire"].encode()), "192.0.2.1"))
    return rows


def generated(seed: int = 1, flows: int = 300, base_us: int = 1_767_000_000 * 1_000_000) -> List[FireflyRow]:
    rnd = random.Random(seed)
    hosts = ["10.1.0.1", "10.1.0.2", "192.0.2.7", "2001:db8::1", "2001:db8::2", "2001:db8:1::99"]
    out: List[FireflyRow] = []
    for i in range(flows):
        start = base_us + rnd.randrange(2 * DAY_US)  # two days: flows cross midnight
        kind = rnd.random()
        dur = int(rnd.lognormvariate(4.5, 1.8) * 1e6)
        if kind < 0.03:
            dur = rnd.randrange(DAY_US + 1, 2 * DAY_US)  # longer than the spread cap
        total = int(rnd.lognormvariate(18, 2))
        src, dst = rnd.sample(hosts, 2)
        exp, act = rnd.choice([(2, 1), (2, 2), (3, 1), (5, 4)])
        rep = f"site{hosts.index(src)}.example.org"
        app = rnd.choice(["xrootd", "scitagd", ""])

        proto = "tcp" if i % 5 else "udp"

        def ff(state: str, t: int, tot: int, start: int = start, proto: str = proto, src: str = src,
               dst: str = dst, sport: int = 1024 + i, exp: int = exp, act: int = act, app: str = app,
               r: str = rep) -> FireflyRow:
            return FireflyRow(start, proto, src, sport, dst, 1094, exp, act, state, t,
                              tot * 3 // 4, tot - tot * 3 // 4, app, r)

        fl = [ff("start", start, rnd.randrange(0, 500))]
        if kind > 0.5:  # scitagd-like: ongoing reports
            step = rnd.choice([60, 120, 300]) * 1_000_000
            t = start + step
            while t < start + dur:
                fl.append(ff("ongoing", t + rnd.randrange(-500_000, 500_000), total * (t - start) // dur))
                t += step
        if rnd.random() > 0.05:
            fl.append(ff("end", start + dur, total))
        if rnd.random() < 0.05:
            fl.pop(0)  # start lost
        if rnd.random() < 0.05 and len(fl) > 2:  # a total that goes down
            j = rnd.randrange(1, len(fl) - 1)
            fl[j] = fl[j]._replace(sent=fl[j].sent // 3, received=0)
        if rnd.random() < 0.03:  # a report stamped before the start
            fl.append(ff("ongoing", start - 90_000_000, total // 10))
        if rnd.random() < 0.1 and fl:  # relay copy, its header lost: the relay's address reports
            fl.append(rnd.choice(fl)._replace(reporter="192.0.2.250"))
        out += fl
    return out


def expected(rows: List[FireflyRow], method: str) -> Dict[str, Any]:
    """What every store must report: per-minute and per-day-pair traffic, flows, totals."""
    by_flow: Dict[Tuple[Any, ...], Set[Tuple[int, int]]] = defaultdict(set)
    info: Dict[Tuple[Any, ...], Dict[str, Any]] = {}
    for r in rows:
        k = (r.proto, r.src, r.sport, r.dst, r.dport, r.start_us, r.exp, r.act)
        by_flow[k].add((r.t_us // MIN_US, r.sent + r.received))
        f = info.setdefault(k, {"sent": 0, "received": 0, "end": 0, "last": 0})
        f["sent"], f["received"] = max(f["sent"], r.sent), max(f["received"], r.received)
        f["last"] = max(f["last"], r.t_us)
        if r.state == "end":
            f["end"] = max(f["end"], r.t_us)
    minute: Dict[Tuple[int, int, int], List[int]] = defaultdict(lambda: [0, 0])
    pairs: Dict[Tuple[int, str, str, int, int], List[int]] = defaultdict(lambda: [0, 0])
    for k, reps in by_flow.items():
        _, src, _, dst, _, start_us, exp, act = k
        m0 = start_us // MIN_US
        minute[(m0 * 60, exp, act)][1] += 1
        pairs[(m0 * 60 // 86400 * 86400, src, dst, exp, act)][1] += 1
        for m, b in contributions(m0, reps, method).items():
            minute[(m * 60, exp, act)][0] += b
            pairs[(m * 60 // 86400 * 86400, src, dst, exp, act)][0] += b
    return {"minute": {k: tuple(v) for k, v in minute.items()}, "pairs": {k: tuple(v) for k, v in pairs.items()},
            "flows": info}
