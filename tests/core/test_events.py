# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import asyncio
from typing import Any, List

import pytest

from scitagd.components import Sink
from scitagd.config import load_text
from scitagd.daemon import Daemon
from scitagd.events import EventError, FlowEvent, FlowTable, FlowTableConfig, make_event


def ev(state: str = "start", sport: int = 1094, exp: int = 2, act: int = 3, **kw: Any) -> FlowEvent:
    return make_event(state, "tcp", "2001:db8::1", sport, "2001:db8::2", 40000, exp, act, "", "t",
                      **kw)


def test_make_event_normalises_addresses() -> None:
    a = make_event("start", "tcp", "2001:DB8:0:0::1", 1, "2001:db8::0:2", 2, 1, 1)
    assert (a.src_ip, a.dst_ip) == ("2001:db8::1", "2001:db8::2")
    b = make_event("start", "udp", "::ffff:127.0.0.2", 1, "127.0.0.1", 2, 1, 1)
    assert b.src_ip == "127.0.0.2" and not b.ipv6


@pytest.mark.parametrize("args,field,reason", [
    (("begin", "tcp", "::1", 1, "::1", 2, 1, 1), "state", "bad_state"),
    (("start", "sctp", "::1", 1, "::1", 2, 1, 1), "protocol", "bad_protocol"),
    (("start", "tcp", "::1", 1, "127.0.0.1", 2, 1, 1), "dst-ip", "bad_address"),
    (("start", "tcp", "::g", 1, "::1", 2, 1, 1), "src-ip", "bad_address"),
    (("start", "tcp", "::1", 0, "::1", 2, 1, 1), "src-port", "bad_port"),
    (("start", "tcp", "::1", 1, "::1", True, 1, 1), "dst-port", "bad_port"),
    (("start", "tcp", "::1", 1, "::1", 2, 0, 1), "experiment", "bad_experiment"),
    (("start", "tcp", "::1", 1, "::1", 2, 1, 64), "activity", "bad_activity"),
])
def test_make_event_errors(args: tuple[Any, ...], field: str, reason: str) -> None:
    with pytest.raises(EventError) as ei:
        make_event(*args)
    assert ei.value.field == field and ei.value.reason == reason
    assert str(ei.value).startswith(field + ":")


def test_table_dedups_and_counts() -> None:
    t = FlowTable()
    first = ev()
    assert t.apply(first) is first
    assert t.apply(ev(exp=5)) is None  # a repeated start is not a new flow
    assert t.duplicate_starts == 1 and len(t) == 1
    assert t.active_by_tag == {(2, 3): 1}
    assert t.apply(ev("end", sport=9)) is None
    assert t.unknown_ends == 1
    end = t.apply(ev("end"))
    assert end is not None and end.state == "end"
    assert end.start_time == first.start_time and end.experiment == 2
    assert len(t) == 0 and t.active_by_tag == {}
    assert t.apply(ev("end")) is None and t.unknown_ends == 2


def test_end_carries_start_tags_and_application() -> None:
    t = FlowTable()
    t.apply(make_event("start", "tcp", "::1", 5, "::1", 6, 2, 3, "xrootd", "s"))
    out = t.apply(make_event("end", "tcp", "::1", 5, "::1", 6, 9, 9, "", "s"))
    assert out is not None and (out.experiment, out.activity, out.application) == (2, 3, "xrootd")


def test_expiry_drops_only_old_flows(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("scitagd.events.time.monotonic", lambda: clock[0])
    t = FlowTable(FlowTableConfig(expire_after=10))
    t.apply(ev(sport=1))
    clock[0] = 105.0
    t.apply(ev(sport=2))
    assert t.expire(now=109.9) == []
    gone = t.expire(now=110.5)
    assert [g.src_port for g in gone] == [1]
    assert gone[0].state == "end" and gone[0].source == "expiry" and gone[0].end_time is not None
    assert len(t) == 1 and t.expired == 1 and t.active_by_tag == {(2, 3): 1}


def test_max_flows() -> None:
    t = FlowTable(FlowTableConfig(max_flows=2))
    assert t.apply(ev(sport=1)) and t.apply(ev(sport=2))
    assert t.apply(ev(sport=3)) is None and t.overflow == 1


class Recorder(Sink):
    def __init__(self, daemon: Any, name: str, delay: float = 0.0, fail_on: int = -1,
                 size: int = 65536) -> None:
        super().__init__(daemon)
        self.name = name
        self.delay = delay
        self.fail_on = fail_on
        self.queue_size = size
        self.got: List[FlowEvent] = []

    async def consume(self, batch: List[FlowEvent]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        for e in batch:
            if e.src_port == self.fail_on:
                raise RuntimeError("sink broke")
            self.got.append(e)


def test_slow_and_failing_sinks_do_not_hold_back_others() -> None:
    async def scenario() -> tuple[Daemon, Recorder, Recorder, Recorder]:
        d = Daemon(load_text(""))
        fast = Recorder(d, "fast")
        slow = Recorder(d, "slow", delay=0.5, size=100)
        broken = Recorder(d, "broken", fail_on=1500)
        d.sinks += [fast, slow, broken]
        await d.start()
        t0 = asyncio.get_running_loop().time()
        for port in range(1000, 3000):
            d.submit(ev(sport=port))
            if port % 100 == 0:
                await asyncio.sleep(0)
        submit_time = asyncio.get_running_loop().time() - t0
        for _ in range(100):
            if len(fast.got) == 2000:
                break
            await asyncio.sleep(0.01)
        assert submit_time < 0.4, "a slow sink held back the sources"
        await d.stop()
        return d, fast, slow, broken

    d, fast, slow, broken = asyncio.run(scenario())
    assert [e.src_port for e in fast.got] == list(range(1000, 3000))  # complete and in order
    dropped = d.stats.queue_dropped["slow"]
    assert dropped > 0 and len(slow.got) + dropped <= 2000
    assert d.stats.sink_errors["broken"] == 1
    # The batch with the bad event is lost for that sink only; it went on afterwards.
    assert broken.got and broken.got[-1].src_port == 2999

