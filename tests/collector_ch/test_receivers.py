# SPDX-License-Identifier: Apache-2.0
"""The hidden-order test end to end, through real `scitagd collector` processes and UDP: the same
fireflies (starts, ongoing reports, ends, retries, relay copies under another reporter, flows
missing their start or end, totals that go down, reports stamped before the start) delivered
shuffled with duplicates give exactly the flows, bytes and per-minute traffic that one receiver
given them in order gives:

- ClickHouse: split at random over 3 worker processes of one collector (collector.workers: 3,
  fireflies from 24 source ports, which the kernel spreads over the workers' SO_REUSEPORT
  sockets), and over 3 separate collectors writing one database;
- SQLite: one collector (one writer, by design) given them shuffled;

and both stores give the same answers to the same fireflies (flows, series, totals, host pairs),
which are those of the reference accountant (attribution.contributions)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from scitagd.collector.attribution import SPREAD
from tests.conftest import PRODUCERS, require_shared

from .chserver import available
from .data import FireflyRow, expected, generated, producers
from .receivers import Receiver, received, send, settled, wire

pytestmark = pytest.mark.skipif(not available(), reason="clickhouse-server not installed (scripts/setup.sh --test)")

TO = 4102444800
HOSTS = ("10.1.0.1", "2001:db8::2", "127.0.0.1")


def fireflies() -> Tuple[List[FireflyRow], List[bytes]]:
    """Generated rows (one address family per flow: the parser checks afi) and the real
    producers' datagrams as they were captured."""
    rows = [r for r in generated(seed=21, flows=220) if (":" in r.src) == (":" in r.dst)]
    real = [json.loads(line)["wire"].encode() for line in require_shared(PRODUCERS).read_text().splitlines()]
    return rows, real


def in_order(rows: List[FireflyRow], real: List[bytes]) -> List[bytes]:
    return [wire(r) for r in sorted(rows, key=lambda r: (r.t_us, r.state))] + real


def scrambled(rows: List[FireflyRow], real: List[bytes], rnd: random.Random) -> List[bytes]:
    out = [wire(r) for r in rows] + real
    out += rnd.sample(out, len(out) // 10)  # retries and second paths: the same datagram again
    rnd.shuffle(out)
    return out


def snapshot(c: Receiver) -> Dict[str, Any]:
    """What the API says, normalised (times to the microsecond, lists sorted)."""
    def flows(q: str = "") -> List[Dict[str, Any]]:
        out = []
        for f in c.api(f"/api/v1/flows?from=0&to={TO}&limit=10000{q}")["flows"]:
            f = {k: v for k, v in f.items() if k not in ("duration", "throughput_bps")}
            f["start"] = round(f["start"] * 1e6)
            f["end"] = round(f["end"] * 1e6) if f["end"] is not None else None
            out.append(f)
        return sorted(out, key=lambda f: (f["start"], f["src"], f["sport"], f["exp"], f["act"]))

    def series(q: str = "") -> Dict[Tuple[int, int], int]:
        out = {}
        for s in c.api(f"/api/v1/timeseries?from=0&to={TO}&step=60{q}")["series"]:
            for b, n in s["points"]:
                out[(s["id"], b)] = n
        return out

    def rows(path: str, key: str) -> List[Any]:
        return sorted(c.api(path)[key], key=lambda d: json.dumps(d, sort_keys=True))

    return {
        "flows": flows(),
        "series": series(),
        "series_flows": series("&measure=flows"),
        "series_atlas": series("&experiment=2"),
        "totals": rows(f"/api/v1/totals?from=0&to={TO}&by=activity&limit=1000", "totals"),
        "pairs": rows(f"/api/v1/top?from=0&to={TO}&n=1000", "top"),
        "hosts": {h: flows(f"&host={h}") for h in HOSTS},
        "host_series": {h: series(f"&host={h}&step=3600") for h in HOSTS},
        "active": c.api("/api/v1/active?limit=10000")["count"],
    }


def reference_series(rows: List[FireflyRow]) -> Dict[Tuple[int, int], int]:
    ref: Dict[Tuple[int, int], int] = {}
    for (b, e, _a), (nb, _nf) in expected(rows, SPREAD)["minute"].items():
        if nb:
            ref[(e, b)] = ref.get((e, b), 0) + nb
    return ref


def deliver(c: Receiver, datagrams: List[bytes], sources: int) -> None:
    before = received(c)
    send(c.udp, datagrams, sources)
    c.wait(lambda: received(c) - before == len(datagrams), 60, f"{len(datagrams)} datagrams received")
    c.wait(lambda: settled(c), 60, "everything written")


def stable(c: Receiver, want: Dict[str, Any], timeout: float = 120.0) -> Dict[str, Any]:
    """The API once traffic is rebuilt (ClickHouse rebuilds every rebuildInterval): equal to
    `want` (another receiver's answers), or the last answer after `timeout`."""
    got: Dict[str, Any] = {}

    def same() -> bool:
        got.update(snapshot(c))
        return got == want

    try:
        c.wait(same, timeout, "answers equal to the in-order receiver's")
    except AssertionError:
        pass
    return got


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[List[Receiver]]:
    made: List[Receiver] = []
    yield made
    for c in made:
        c.stop()


def ch_store(url: str, db: str) -> str:
    return (f"{{kind: clickhouse, url: '{url}', database: {db}, batchInterval: 0.1, rebuildInterval: 5, "
            f"retentionDays: 36500}}")


def test_clickhouse_three_workers_and_three_collectors_account_as_one_in_order(
        ch_server: Any, tmp_path: Path, receivers: List[Receiver]) -> None:
    rows, real = fireflies()
    rnd = random.Random(5)
    one = Receiver(tmp_path, "inorder", ch_store(ch_server.url, "ho_one"))
    receivers.append(one)
    deliver(one, in_order(rows, real), 1)
    three = Receiver(tmp_path, "workers", ch_store(ch_server.url, "ho_workers"), workers=3)
    receivers.append(three)
    deliver(three, scrambled(rows, real, rnd), 24)
    per_worker = [w["datagrams"] for w in three.api("/healthz")["workers"]]
    assert len(per_worker) == 3 and all(n > 0 for n in per_worker), per_worker
    split = [Receiver(tmp_path, f"split{i}", ch_store(ch_server.url, "ho_split")) for i in range(3)]
    receivers.extend(split)
    parts: List[List[bytes]] = [[], [], []]
    for d in scrambled(rows, real, rnd):
        parts[rnd.randrange(3)].append(d)
    for c, part in zip(split, parts):
        deliver(c, part, 3)

    ref = reference_series(rows + producers())
    one.wait(lambda: snapshot(one)["series"] == ref, 120, "the reference per-minute traffic (rebuilt)")
    want = snapshot(one)
    assert len(want["flows"]) == len({(r.proto, r.src, r.sport, r.start_us, r.exp, r.act) for r in rows + producers()})
    assert stable(three, want) == want
    assert stable(split[0], want) == want
    for c in split[1:]:  # the same database, asked through another collector
        assert snapshot(c) == want


def test_sqlite_shuffled_with_duplicates_accounts_as_in_order_and_as_clickhouse(
        ch_server: Any, tmp_path: Path, receivers: List[Receiver]) -> None:
    rows, real = fireflies()
    rnd = random.Random(6)
    one = Receiver(tmp_path, "sq-inorder", f"{{path: {tmp_path / 'one.sqlite'}, flushInterval: 0.05}}")
    shuffled = Receiver(tmp_path, "sq-shuffled", f"{{path: {tmp_path / 'two.sqlite'}, flushInterval: 0.05}}")
    ch = Receiver(tmp_path, "ch", ch_store(ch_server.url, "ho_sq"))
    receivers += [one, shuffled, ch]
    deliver(one, in_order(rows, real), 1)
    for _ in range(2):
        deliver(shuffled, scrambled(rows, real, rnd), 8)
    deliver(ch, scrambled(rows, real, rnd), 8)
    want = snapshot(one)
    assert want["series"] == reference_series(rows + producers())
    assert snapshot(shuffled) == want
    got = stable(ch, want)
    assert got == want, {k: (len(v), len(got[k])) for k, v in want.items() if got.get(k) != v}
