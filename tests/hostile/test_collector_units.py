# SPDX-License-Identifier: Apache-2.0
"""Hostile input against the collector's parts, in process: the store cannot be poisoned or
frozen, accounting is idempotent and order-independent, framing resynchronises, label sets and
per-event structures stay bounded."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scitagd.collector.attribution import KEEP, FlowReports
from scitagd.collector.framing import Framer
from scitagd.collector.report import Report, make_report
from scitagd.collector.store import SQLiteStore
from scitagd.collector.tally import OTHER, Tally
from scitagd.errors import FireflyError
from scitagd.firefly import parse

NOW = time.time()


def firefly(state: str = "start", sport: int = 1094, start: float = NOW - 60, t: float | None = None,
            sent: int = 0, received: int = 0, exp: int = 2, act: int = 3, app: str | None = None,
            host: str = "site.example") -> bytes:
    def iso(x: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(x)) + f".{int(x % 1 * 1e6):06d}Z"

    lc = f'"state":"{state}","start-time":"{iso(start)}"'
    if t is not None:
        lc += f',"{"end-time" if state == "end" else "current-time"}":"{iso(t)}"'
    ctx = f'"experiment-id":{exp},"activity-id":{act}' + (f',"application":"{app}"' if app else "")
    return (f'<134>1 - {host} xrootd - firefly-json - {{"version":1,"flow-lifecycle":{{{lc}}},'
            f'"flow-id":{{"afi":"ipv4","src-ip":"192.0.2.1","dst-ip":"192.0.2.2","protocol":"tcp",'
            f'"src-port":{sport},"dst-port":40000}},"context":{{{ctx}}},'
            f'"usage":{{"sent":{sent},"received":{received}}}}}').encode()


def report(data: bytes, sender: str = "192.0.2.9", trusted: bool = False) -> Report:
    return make_report(parse(data), sender, trusted, NOW, 3600)


def rows(db: Path, sql: str) -> List[Tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


# --- 1. values too big for SQLite -------------------------------------------------------------

@pytest.mark.parametrize("bad,reason", [
    (firefly(sent=2**64 - 1), "bad_usage"),
    (firefly(exp=2**63), "bad_tag"),
    (firefly(act=70000), "bad_tag"),
    (firefly(sent=2**60, received=2**60), "bad_usage"),  # each within bounds, not their sum
    (firefly(sent=2**59, received=2**59), None),  # at the limit: written
])
def test_parser_bounds_keep_the_store_writable(tmp_path: Path, bad: bytes, reason: str | None) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite"))
    good = [report(firefly(sport=p, state="end", t=NOW - 1, sent=1000)) for p in range(2000, 2010)]
    batch = list(good)
    if reason is None:
        batch.insert(5, report(bad))
    else:
        with pytest.raises(FireflyError) as e:
            report(bad)
        assert e.value.reason == reason and e.value.field
    res = store.ingest(batch)
    assert not res.rejected
    assert rows(tmp_path / "s.sqlite", "SELECT COUNT(*) FROM flows")[0][0] == len(batch)
    store.close()


def test_a_report_the_database_refuses_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """Validation makes this impossible from the wire; the store still isolates such a row."""
    store = SQLiteStore(str(tmp_path / "s.sqlite"))
    good = [report(firefly(sport=p, sent=10)) for p in range(3000, 3100)]
    import msgspec

    poison = msgspec.structs.replace(good[0], sport=4000, sent=2**70)  # no int64 holds it
    res = store.ingest([*good[:50], poison, *good[50:]])
    assert [r.sport for r, _ in res.rejected] == [4000] and "Overflow" in res.rejected[0][1]
    assert res.outcomes["start"] == 100
    assert rows(tmp_path / "s.sqlite", "SELECT COUNT(*) FROM flows")[0][0] == 100
    store.close()


# --- 2. spans of years, times out of range ----------------------------------------------------

def test_an_end_years_after_its_start_is_bounded_work(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite"))
    t0 = time.perf_counter()
    res = store.ingest([report(firefly("end", start=NOW - 2 * 365 * 86400, t=NOW - 1, sent=10**12))])
    took = time.perf_counter() - t0
    assert res.clamped == 1 and took < 0.5, took
    n, total = rows(tmp_path / "s.sqlite", "SELECT COUNT(*), SUM(bytes) FROM traffic")[0]
    assert n <= 1441 and total == 10**12  # the last 24 h, minute by minute (+ the start minute row), every byte
    store.close()


@pytest.mark.parametrize("start,t,reason", [
    (0.0, None, "bad_time"),  # 1970
    (NOW - 60, 4200000000.0, "bad_time"),  # 2103
    (NOW - 60, NOW + 7200, "future_time"),  # two hours ahead of the collector's clock
    (NOW + 7200, None, "future_time"),
])
def test_times_out_of_range_are_rejected(start: float, t: float | None, reason: str) -> None:
    with pytest.raises(FireflyError) as e:
        report(firefly("ongoing", start=start, t=t))
    assert e.value.reason == reason


# --- 6. accounting: idempotent, order-independent ----------------------------------------------

def test_500_start_end_pairs_of_one_flow_are_one_flow(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    store = SQLiteStore(str(db))
    start = NOW - 3600
    batch = []
    for i in range(500):
        batch.append(report(firefly("start", start=start, t=start)))
        batch.append(report(firefly("end", start=start, t=start + 100 + i % 7, sent=5000)))
    res = store.ingest(batch)
    assert sum(res.started.values()) == 1 and sum(res.ended.values()) == 1
    assert rows(db, "SELECT COUNT(*), SUM(sent) FROM flows") == [(1, 5000)]
    assert rows(db, "SELECT SUM(bytes), SUM(flows) FROM traffic") == [(5000, 1)]
    store.close()


def test_an_end_before_its_start_does_not_reopen_the_flow(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    store = SQLiteStore(str(db))
    start = NOW - 600
    store.ingest([report(firefly("end", start=start, t=start + 30, sent=100))])
    store.ingest([report(firefly("start", start=start, t=start))])
    assert rows(db, "SELECT state, end FROM flows") == [("ended", pytest.approx(start + 30))]
    assert store.active(10)[1] == 0
    store.close()


def test_the_same_fireflies_after_a_restart_count_once(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    batch = [report(firefly("start", sport=p)) for p in range(100)]
    batch += [report(firefly("end", sport=p, t=NOW - 10, sent=p * 1000)) for p in range(100)]
    store = SQLiteStore(str(db))
    store.ingest(batch)
    before = rows(db, "SELECT SUM(bytes), SUM(flows) FROM traffic") + rows(db, "SELECT SUM(sent) FROM flows")
    store.close()
    store = SQLiteStore(str(db))  # a new process: nothing in memory
    res = store.ingest(list(reversed(batch)))
    assert res.outcomes == {"duplicate": 200}
    assert rows(db, "SELECT SUM(bytes), SUM(flows) FROM traffic") + rows(db, "SELECT SUM(sent) FROM flows") == before
    store.close()


def _aggregates(db: Path) -> Tuple[List[Tuple], List[Tuple], List[Tuple]]:
    return (rows(db, "SELECT proto, src, sport, dst, dport, start, end, exp, act, sent, received, state, reporter "
                     "FROM flows ORDER BY sport, start"),
            rows(db, "SELECT bucket, exp, act, bytes, flows FROM traffic WHERE bytes != 0 OR flows != 0 ORDER BY 1, 2, 3"),
            rows(db, "SELECT bucket, src, dst, exp, act, bytes, flows FROM pairs WHERE bytes != 0 OR flows != 0 "
                     "ORDER BY 1, 2, 3"))


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_any_order_any_batching_any_duplicates_same_result(tmp_path_factory: pytest.TempPathFactory,
                                                           rnd: random.Random) -> None:
    fireflies = []
    for p in range(6):
        duration = rnd.choice([0.05, 30, 700, 3 * 86400])
        start = NOW - duration - rnd.uniform(60, 86400)
        end = start + duration
        fireflies.append(firefly("start", sport=5000 + p, start=start, t=start))
        total = 0
        for k in range(rnd.randint(0, 5)):
            total += rnd.randint(0, 10**9)
            fireflies.append(firefly("ongoing", sport=5000 + p, start=start, t=start + (end - start) * (k + 1) / 7,
                                     sent=total))
        if rnd.random() < 0.8:
            fireflies.append(firefly("end", sport=5000 + p, start=start, t=end, sent=total + rnd.randint(0, 999)))
    one = tmp_path_factory.mktemp("one") / "s.sqlite"
    s1 = SQLiteStore(str(one))
    s1.ingest([report(f) for f in fireflies])
    s1.close()
    shuffled = fireflies + rnd.sample(fireflies, len(fireflies) // 3)  # relay copies
    rnd.shuffle(shuffled)
    many = tmp_path_factory.mktemp("many") / "s.sqlite"
    s2 = SQLiteStore(str(many), cache_size=2)  # flows read back from the file between batches
    i = 0
    while i < len(shuffled):
        n = rnd.randint(1, 7)
        s2.ingest([report(f) for f in shuffled[i:i + n]])
        i += n
    s2.close()
    assert _aggregates(one) == _aggregates(many)


def test_attribution_is_exact_and_order_independent_with_many_reports() -> None:
    from scitagd.collector.attribution import contributions

    rnd = random.Random(7)
    start = NOW - 86400
    reps = [(start + i * 10 + rnd.random(), i * 1000) for i in range(1, 200)]
    ref = contributions(int(start // 60), [(int(t // 60), n) for t, n in reps])
    assert FlowReports(start, reps).attribution() == ref  # the store's incremental form, the shared function
    shuffled = reps[:]
    rnd.shuffle(shuffled)
    f = FlowReports(start)
    acc: Dict[int, int] = {}
    for t, n in shuffled:
        for b, v in f.add(t, n).items():
            acc[b] = acc.get(b, 0) + v
    assert {k: v for k, v in acc.items() if v} == ref and sum(ref.values()) == 199 * 1000
    # beyond KEEP minutes in memory, a report older than all kept adds only what exceeds the maximum
    g = FlowReports(start)
    for i in range(1, KEEP + 50):
        g.add(start + i * 60, i)
    assert g.add(start + 30, 1) == {} and len(g.mins) == KEEP


# --- 3. bounded label sets and windows ----------------------------------------------------------

def test_tally_folds_unknown_tags_and_keeps_a_bounded_window(tmp_path: Path) -> None:
    from scitagd.collector.store import IngestResult

    tally = Tally(lambda e, a: e < 10)
    wide = IngestResult()
    for e in range(50_000):  # 50,000 distinct experiment ids from a sender
        wide.add(wide.started, (e, 1))
        wide.add(wide.bytes, (e, 1), 10)
    tally.apply(wide, now=NOW)
    assert set(tally.started) == {(e, 1) for e in range(10)} | {OTHER}
    assert tally.started[OTHER] == 50_000 - 10
    narrow = IngestResult()
    narrow.add(narrow.bytes, (1, 1), 100)
    narrow.add(narrow.bytes, (99, 1), 100)
    for tick in range(3000):  # 10 minutes, 5 updates a second: each deque keeps at most 60 seconds
        tally.apply(narrow, now=NOW + tick / 5)
    assert all(len(q) <= 60 for q in tally._recent.values())
    assert tally.throughput(now=NOW + 599.8)[OTHER] == pytest.approx(100 * 5 * 60 * 8 / 60, rel=0.05)  # whole seconds


def test_active_flows_are_capped_and_evictions_counted(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite"))
    store.ingest([report(firefly("start", sport=p, start=NOW - 1000 + p, t=NOW - 1000 + p)) for p in range(1, 301)])
    res = store.expire(NOW, max_active=100)
    assert res.evicted == 200 and sum(res.expired.values()) == 200 and store.active(1)[1] == 100
    # the longest-silent went first
    kept = sorted(r["sport"] for r in store.active(1000)[0])
    assert kept == list(range(201, 301))
    store.close()


def test_expiry_counts_from_the_flows_own_times(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    store = SQLiteStore(str(db), active_timeout=3600)
    store.ingest([report(firefly("start", sport=1, start=NOW - 7200, t=NOW - 7200)),  # silent for 2 h
                  report(firefly("start", sport=2, start=NOW - 600, t=NOW - 600))])
    assert rows(db, "SELECT sport, state FROM flows ORDER BY sport") == [(1, "expired"), (2, "active")]
    store.close()
    store = SQLiteStore(str(db), active_timeout=3600)  # restart: the clock does not start again
    res = store.expire(NOW + 3300, 10**6)
    assert sum(res.expired.values()) == 1 and store.active(10)[1] == 0
    store.close()


def test_retention_removes_flows_without_an_end_and_respects_pins(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    store = SQLiteStore(str(db))
    old = NOW - 40 * 86400
    store.ingest([report(firefly("start", sport=1, start=old, t=old)),
                  report(firefly("end", sport=2, start=old, t=old + 5, sent=9)),
                  report(firefly("start", sport=3, start=NOW - 60, t=NOW - 60))])
    assert store.retention(NOW - 30 * 86400) == 2
    assert rows(db, "SELECT sport FROM flows") == [(3,)]
    assert rows(db, "SELECT COUNT(*) FROM fireflies") == [(1,)]
    store.ingest([report(firefly("end", sport=4, start=old, t=old + 5, sent=9))])
    store.pin(old - 1, old + 10, "test")
    assert store.retention(NOW - 30 * 86400) == 0 and len(rows(db, "SELECT * FROM flows")) == 2
    store.close()


# --- 5. framing -------------------------------------------------------------------------------

def _frame(msg: bytes, octet: bool) -> bytes:
    return str(len(msg)).encode() + b" " + msg if octet else msg + b"\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["good", "big_count", "digits20", "small_count", "long_line",
                                           "garbage"]), st.booleans()), min_size=1, max_size=12),
       st.integers(1, 300))
def test_framer_keeps_every_valid_frame_around_bad_ones(items: List[Tuple[str, bool]], chunk: int) -> None:
    good = firefly()
    stream = b""
    want = 0
    bad = 0
    for kind, octet in items:
        if kind == "good":
            stream += _frame(good, octet)
            want += 1
        elif kind == "big_count":
            stream += b"9999999 " + good[:40] + b"\n"
            bad += 1
        elif kind == "digits20":
            stream += b"12345678901234567890 " + good + b"\n"
            bad += 1
        elif kind == "small_count":
            stream += b"20 " + good + b"\n"  # 20 bytes of it are a frame: one rejection when parsed
            bad += 1
        elif kind == "long_line":
            stream += b"x" * 5000 + b"\n"
            bad += 1
        else:
            stream += b"\x00\xff garbage\n"
            bad += 1
    f = Framer(2048)
    out = []
    for i in range(0, len(stream), chunk):
        out += f.feed(stream[i:i + chunk])
    msgs = [m for m, _ in out if m is not None]
    assert msgs.count(good) == want
    errors = [e for _, e in out if e is not None] + [m for m in msgs if m != good]
    assert len(errors) <= bad  # at most one rejection per bad frame


def test_framer_line_of_10_mb_is_one_rejection() -> None:
    f = Framer(65536)
    out = []
    for _ in range(160):
        out += f.feed(b"y" * 65536)
    out += f.feed(b"\n" + _frame(firefly(), False))
    assert [e[0] for _, e in out if e] == ["too_large"] and [m for m, _ in out if m] == [firefly()]
