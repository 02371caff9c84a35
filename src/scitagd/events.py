# SPDX-License-Identifier: Apache-2.0
"""FlowEvent, the one thing that crosses component boundaries, and the flow table."""

from __future__ import annotations

import ipaddress
import logging
import time
from functools import lru_cache
from typing import Any, Dict, Iterator, Literal, Optional, Tuple

import msgspec

from .confbase import FlowTableConfig
from .errors import EventError, TagError
from .tags import check_activity, check_experiment

log = logging.getLogger("scitagd.flows")

__all__ = ["END", "ONGOING", "PROTOCOLS", "START", "STATES", "TCP", "UDP", "Family", "FlowEvent", "FlowKey",
           "FlowTable", "Proto", "State", "Usage", "make_event", "normalize_ip"]

State = Literal["start", "ongoing", "end"]
Proto = Literal["tcp", "udp"]
Family = Literal["ipv4", "ipv6"]

START: State = "start"
ONGOING: State = "ongoing"
END: State = "end"
STATES: Tuple[State, ...] = (START, ONGOING, END)
TCP: Proto = "tcp"
UDP: Proto = "udp"
PROTOCOLS: Tuple[Proto, ...] = (TCP, UDP)

FlowKey = Tuple[str, str, int, str, int]  # protocol, src ip, src port, dst ip, dst port


class Usage(msgspec.Struct, frozen=True, gc=False):
    received: int = 0
    sent: int = 0


class FlowEvent(msgspec.Struct, frozen=True, gc=False):
    """A flow starting, going on or ending. `src` is the supplier of the data."""

    state: State
    protocol: Proto
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    experiment: int
    activity: int
    application: str = ""
    source: str = ""
    start_time: float = 0.0
    end_time: Optional[float] = None
    usage: Optional[Usage] = None
    netlink: Optional[Dict[str, Any]] = None
    seen: float = 0.0  # time.monotonic() when it reached the daemon: expiry ignores clock jumps

    @property
    def key(self) -> FlowKey:
        return (self.protocol, self.src_ip, self.src_port, self.dst_ip, self.dst_port)

    @property
    def ipv6(self) -> bool:
        return ":" in self.src_ip

    def five_tuple(self) -> str:
        """For log lines: `tcp [2001:db8::1]:443 -> [2001:db8::2]:5000`."""
        return f"{self.protocol} {_hp(self.src_ip, self.src_port)} -> {_hp(self.dst_ip, self.dst_port)}"

    def log_fields(self) -> str:
        return (
            f"proto={self.protocol} src={_hp(self.src_ip, self.src_port)} "
            f"dst={_hp(self.dst_ip, self.dst_port)} exp={self.experiment} act={self.activity}"
        )


def _hp(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@lru_cache(maxsize=65536)
def normalize_ip(text: str) -> str:
    """Canonical text form so that '0:0::1' and '::1' are one flow. Cached: ~50 ns on a hit."""
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return addr.compressed


def make_event(
    state: str,
    protocol: str,
    src_ip: str,
    src_port: Any,
    dst_ip: str,
    dst_port: Any,
    experiment: Any,
    activity: Any,
    application: str = "",
    source: str = "",
    start_time: float | None = None,
    end_time: float | None = None,
    usage: Usage | None = None,
    netlink: dict[str, Any] | None = None,
    field_names: Tuple[str, ...] = (
        "state", "protocol", "src-ip", "src-port", "dst-ip", "dst-port", "experiment", "activity",
    ),
) -> FlowEvent:
    """Validate raw input into a FlowEvent, naming the input's own field on error. Values come
    from JSON or text: anything of the wrong type (a bool as an id or port too, since `True` is
    an int to Python) is an EventError, never another exception."""
    f_state, f_proto, f_sip, f_sport, f_dip, f_dport, f_exp, f_act = field_names
    if not isinstance(state, str) or state not in STATES:
        raise EventError(f_state, f"{_show(state)}: expected one of start, ongoing, end", "bad_state")
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise EventError(f_proto, f"{_show(protocol)}: expected tcp or udp", "bad_protocol")
    sip = _ip(f_sip, src_ip)
    dip = _ip(f_dip, dst_ip)
    if (":" in sip) != (":" in dip):
        raise EventError(f_dip, f"{_show(dst_ip)} is not the same address family as {f_sip} {_show(src_ip)}",
                         "bad_address")
    sport = _port(f_sport, src_port)
    dport = _port(f_dport, dst_port)
    if isinstance(experiment, bool):
        raise EventError(f_exp, f"{experiment!r}: expected an experiment id (integer)", "bad_experiment")
    if isinstance(activity, bool):
        raise EventError(f_act, f"{activity!r}: expected an activity id (integer)", "bad_activity")
    try:
        exp = check_experiment(experiment)
    except TagError as e:
        raise EventError(f_exp, str(e), "bad_experiment") from None
    try:
        act = check_activity(activity)
    except TagError as e:
        raise EventError(f_act, str(e), "bad_activity") from None
    if not isinstance(application, str):
        raise EventError("application", f"{_show(application)}: expected a string", "bad_application")
    now = time.time()
    return FlowEvent(
        state, protocol, sip, sport, dip, dport, exp, act, application, source,
        start_time if start_time is not None else now,
        end_time if end_time is not None or state != END else now,
        usage, netlink, time.monotonic(),
    )


def _ip(field: str, value: Any) -> str:
    # 45 characters is the longest IPv6 text form (with an embedded IPv4 address); longer is
    # refused before the parser and the cache see it
    if not isinstance(value, str) or len(value) > 45:
        raise EventError(field, f"{_show(value)}: expected an IPv4 or IPv6 address", "bad_address")
    try:
        return normalize_ip(value)
    except ValueError:
        raise EventError(field, f"{_show(value)}: expected an IPv4 or IPv6 address", "bad_address") from None


def _port(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise EventError(field, f"{_show(value)}: expected a port 1..65535", "bad_port")
    return value


def _show(value: Any, n: int = 60) -> str:
    """repr() cut to `n` characters: messages and logs stay bounded whatever came in."""
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


class _Quiet:
    """At most one log line per key per `period`; `allow` says how many were left out since."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._last: Dict[str, float] = {}
        self._left_out: Dict[str, int] = {}

    def allow(self, key: str) -> Optional[int]:
        now = time.monotonic()
        if now - self._last.get(key, -self.period) < self.period:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._left_out.pop(key, 0)


class FlowTable:
    """Every active flow once. A dict keeps insertion (= start) order, so expiry reads only the
    front. Measured: 845 B/flow with an OrderedDict of (event, time) tuples; this layout stores
    the event alone (the time is on it) and leaves out the producer's netlink sample."""

    def __init__(self, conf: FlowTableConfig | None = None) -> None:
        self.conf = conf or FlowTableConfig()
        self._flows: Dict[FlowKey, FlowEvent] = {}
        self.active_by_tag: Dict[Tuple[int, int], int] = {}
        self.duplicate_starts = 0
        self.unknown_ends = 0
        self.unknown_ongoing = 0
        self.expired = 0
        self.overflow = 0
        # anyone who can send events can send ends of flows that never were: a line a second
        self._quiet = _Quiet(1.0)

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[FlowEvent]:
        return iter(list(self._flows.values()))

    def get(self, key: FlowKey) -> FlowEvent | None:
        return self._flows.get(key)

    def apply(self, ev: FlowEvent) -> FlowEvent | None:
        """Record the event; return what sinks should see, or None if it changes nothing."""
        key = (ev.protocol, ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port)
        flows = self._flows
        if ev.state == START:
            if key in flows:
                self.duplicate_starts += 1
                return None
            if len(flows) >= self.conf.max_flows:
                self.overflow += 1
                n = self._quiet.allow("table_full")
                if n is not None:
                    log.warning("flow table full, start dropped max_flows=%d suppressed=%d %s",
                                self.conf.max_flows, n, ev.log_fields())
                return None
            kept = ev
            if ev.netlink is not None or not ev.seen:
                kept = msgspec.structs.replace(ev, netlink=None, seen=ev.seen or time.monotonic())
            flows[key] = kept
            tag = (ev.experiment, ev.activity)
            self.active_by_tag[tag] = self.active_by_tag.get(tag, 0) + 1
            return ev
        started = flows.get(key)
        if started is None:
            if ev.state == END:
                self.unknown_ends += 1
                n = self._quiet.allow("unknown_end")
                if n is not None:
                    log.warning("end for unknown flow source=%s suppressed=%d %s", ev.source, n, ev.log_fields())
            else:
                self.unknown_ongoing += 1
            return None
        if ev.state == END:
            del flows[key]
            self._dec(started)
        # Sinks see the tags and start time the flow was started with.
        return msgspec.structs.replace(
            ev,
            experiment=started.experiment,
            activity=started.activity,
            application=ev.application or started.application,
            start_time=started.start_time,
        )

    def restore(self, ev: FlowEvent) -> bool:
        """Insert a flow known from before a restart, without it counting as a new start."""
        key = ev.key
        if key in self._flows or len(self._flows) >= self.conf.max_flows:
            return False
        self._flows[key] = ev
        tag = (ev.experiment, ev.activity)
        self.active_by_tag[tag] = self.active_by_tag.get(tag, 0) + 1
        return True

    def _dec(self, ev: FlowEvent) -> None:
        tag = (ev.experiment, ev.activity)
        n = self.active_by_tag.get(tag, 0) - 1
        if n > 0:
            self.active_by_tag[tag] = n
        else:
            self.active_by_tag.pop(tag, None)

    def expire(self, now: float | None = None) -> list[FlowEvent]:
        """Drop flows older than expireAfter; return end events for them."""
        now = time.monotonic() if now is None else now
        limit = now - self.conf.expire_after
        old = []
        for key, ev in self._flows.items():  # oldest first: stop at the first young one
            if ev.seen > limit:
                break
            old.append(key)
        out = []
        wall = time.time()
        for key in old:
            ev = self._flows.pop(key)
            self._dec(ev)
            self.expired += 1
            out.append(msgspec.structs.replace(ev, state=END, end_time=wall, source="expiry"))
        return out
