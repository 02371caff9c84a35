# SPDX-License-Identifier: Apache-2.0
"""Fireflies: build strictly (always schema-valid), parse tolerantly (every producer's dialect).

SPEC.md section 4 lists what receivers must accept: nil or 'Z' timestamps, an IP address as
syslog HOSTNAME, no header at all, syslog-daemon archive lines, any key order, extra keys, empty
usage. Anything we can still read as a flow is accepted; the rest gets an error naming the field.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Dict, Optional, cast

import msgspec

from .errors import FireflyError
from .events import END, PROTOCOLS, STATES, FlowEvent, Proto, State, Usage, normalize_ip
from .tags import ACTIVITY_MAX, ACTIVITY_MIN, EXPERIMENT_MAX, EXPERIMENT_MIN

__all__ = [
    "APP_NAME",
    "DEFAULT_PORT",
    "MAX_APPLICATION",
    "MAX_DATAGRAM",
    "MSGID",
    "SYSLOG_PRI",
    "Context",
    "Firefly",
    "FireflyUsage",
    "FlowId",
    "Lifecycle",
    "Received",
    "build",
    "build_json",
    "iso",
    "parse",
    "syslog_header",
    "to_event",
    "ts",
]

SYSLOG_PRI = 134  # local0.info
MSGID = "firefly-json"
APP_NAME = "scitagd"
DEFAULT_PORT = 10514
MAX_DATAGRAM = 1400  # keep one firefly in one unfragmented datagram on any sane path
MAX_APPLICATION = 128  # longer application names are cut to this, by every reader and writer
MAX_ID = 0xFFFF  # experiment and activity ids: 16 bits (the scitag integer's range)
MAX_BYTES = 1 << 60  # usage counters: far beyond any transfer (1 EiB); sums of many stay in 64 bits
MIN_TIME, MAX_TIME = 946684800.0, 4102444800.0  # 2000-01-01 .. 2100-01-01 UTC
MAX_HOSTNAME = 255  # RFC 5424 HOSTNAME

_MONTHS = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}


class Lifecycle(msgspec.Struct, rename="kebab", gc=False):
    state: str
    start_time: datetime
    end_time: Optional[datetime] = None
    current_time: Optional[datetime] = None


class FlowId(msgspec.Struct, rename="kebab", gc=False):
    afi: str
    src_ip: str
    dst_ip: str
    protocol: str
    src_port: int
    dst_port: int


class Context(msgspec.Struct, rename="kebab", gc=False):
    experiment_id: int
    activity_id: int
    application: Optional[str] = None


class FireflyUsage(msgspec.Struct, gc=False):
    received: Optional[int] = None
    sent: Optional[int] = None


class Firefly(msgspec.Struct, rename="kebab", gc=False):
    """The JSON document. Unknown top-level keys (dCache's storage-stats) are ignored."""

    version: int
    flow_lifecycle: Lifecycle
    flow_id: FlowId
    context: Context
    usage: Optional[FireflyUsage] = None
    netlink: Optional[Dict[str, Any]] = None


class Received(msgspec.Struct, gc=False):
    """A parsed datagram: the document plus what the syslog header said about its sender, and
    the lifecycle's times as epoch seconds (converted once, while checking them)."""

    firefly: Firefly
    hostname: Optional[str] = None
    app_name: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    current: Optional[float] = None


_decoder = msgspec.json.Decoder(Firefly)


def parse(data: bytes, header: bool = True) -> Received:
    """Parse one datagram or archive line; `header=False` skips reading the syslog header."""
    i = data.find(b"{")
    if i < 0:
        raise FireflyError(f"not a firefly: no JSON object in {_preview(data)}", "no_json")
    hostname = app = None
    if i and header:
        hostname, app = _parse_header(data[:i])
    body = data[i:].rstrip()
    try:
        ff = _decoder.decode(body)
    except msgspec.ValidationError as e:
        raise FireflyError(f"invalid firefly: {e}", "schema") from None
    except msgspec.DecodeError as e:
        msg = str(e)
        if "truncated" in msg:
            raise FireflyError(f"truncated JSON after {len(body)} bytes: {msg}", "truncated") from None
        raise FireflyError(f"malformed JSON: {msg}", "malformed_json") from None
    except UnicodeDecodeError as e:
        raise FireflyError(f"invalid UTF-8 in a JSON string at byte {i + e.start}", "bad_utf8") from None
    except RecursionError:
        raise FireflyError("JSON nested too deeply", "too_deep") from None
    start, end, current = _check(ff)
    return Received(ff, hostname, app, start, end, current)


def _preview(data: bytes, n: int = 60) -> str:
    text = data[:n].decode("utf-8", "replace")
    return repr(text + ("..." if len(data) > n else ""))


_MONTHS_B = {m.encode() for m in _MONTHS}
_afi_of: Dict[str, str] = {}  # address text seen valid -> its family: one lookup instead of parsing


def _parse_header(raw: bytes) -> tuple[str | None, str | None]:
    # On bytes, decoding only the two tokens kept: a header is read for every datagram.
    tokens = raw.split()
    if not tokens:
        return None, None
    if tokens[0] in _MONTHS_B and len(tokens) >= 5:
        tokens = tokens[4:]  # 'Feb  1 18:54:27 relayhost' written by the syslog daemon
    if tokens and (tokens[0][:1] == b"<" or tokens[0].isdigit()):
        rest = tokens[1:]  # '<134>1' or a bare version '1'
    else:
        return None, None  # a header we cannot read does not spoil a readable document
    # printable ASCII of bounded length (RFC 5424), or nothing: a header never carries junk on
    hostname = _token(rest[1], MAX_HOSTNAME) if len(rest) > 1 and rest[1] != b"-" else None
    app = _token(rest[2], 48) if len(rest) > 2 and rest[2] != b"-" else None
    return hostname, app


def _token(raw: bytes, limit: int) -> str | None:
    if len(raw) > limit or not raw.isascii():
        return None
    text = raw.decode("ascii")
    return text if text.isprintable() else None


def _check(ff: Firefly) -> tuple[float | None, float | None, float | None]:
    """Every bound in one pass; the times as epoch seconds (start, end, current). The common,
    valid case takes one comparison chain per group; the messages are built only on failure."""
    if ff.version != 1:
        raise FireflyError(f"version: {ff.version!r}: expected 1", "bad_version")
    lc, fid, ctx = ff.flow_lifecycle, ff.flow_id, ff.context
    if lc.state not in STATES:
        raise FireflyError(
            f"flow-lifecycle.state: {lc.state!r}: expected start, ongoing or end", "bad_state"
        )
    if fid.protocol not in PROTOCOLS:
        raise FireflyError(f"flow-id.protocol: {fid.protocol!r}: expected tcp or udp", "bad_protocol")
    afi = fid.afi
    if afi != "ipv4" and afi != "ipv6":
        raise FireflyError(f"flow-id.afi: {afi!r}: expected ipv4 or ipv6", "bad_afi")
    if _afi_of.get(fid.src_ip) != afi or _afi_of.get(fid.dst_ip) != afi:
        for name, text in (("src-ip", fid.src_ip), ("dst-ip", fid.dst_ip)):
            try:
                normalize_ip(text)  # cached: ipaddress.ip_address() costs 2 us a call
            except ValueError:
                raise FireflyError(f"flow-id.{name}: {text!r}: expected an IP address",
                                   "bad_address") from None
            family = "ipv6" if ":" in text else "ipv4"
            if family != afi:
                raise FireflyError(f"flow-id.{name}: {text!r} is not {afi} as flow-id.afi says",
                                   "bad_address")
            if len(_afi_of) >= 65536:
                _afi_of.clear()  # bounded: a scan of many addresses only costs re-validation
            _afi_of[text] = family
    if not (0 <= fid.src_port <= 65535 and 0 <= fid.dst_port <= 65535):
        for name, port in (("src-port", fid.src_port), ("dst-port", fid.dst_port)):
            # Port 0 is accepted: flowd's own test data carries it; marking rejects it later.
            if not 0 <= port <= 65535:
                raise FireflyError(f"flow-id.{name}: {port}: expected 0..65535", "bad_port", f"flow-id.{name}")
    if not (0 <= ctx.experiment_id <= MAX_ID and 0 <= ctx.activity_id <= MAX_ID):
        for name, v in (("experiment-id", ctx.experiment_id), ("activity-id", ctx.activity_id)):
            if not 0 <= v <= MAX_ID:
                raise FireflyError(f"context.{name}: {v}: expected 0..{MAX_ID}", "bad_tag", f"context.{name}")
    if ctx.application is not None and len(ctx.application) > MAX_APPLICATION:
        ctx.application = ctx.application[:MAX_APPLICATION]
    usage = ff.usage
    if usage is not None:
        received, sent = usage.received or 0, usage.sent or 0
        if not (0 <= received <= MAX_BYTES and 0 <= sent <= MAX_BYTES):
            for name, n in (("received", usage.received), ("sent", usage.sent)):
                if n is not None and not 0 <= n <= MAX_BYTES:
                    raise FireflyError(f"usage.{name}: {n}: expected 0..2**60 bytes", "bad_usage", f"usage.{name}")
        if received + sent > MAX_BYTES:
            raise FireflyError(f"usage: sent + received = {received + sent}: "
                               "expected at most 2**60 bytes", "bad_usage", "usage")
    st, et, ct = lc.start_time, lc.end_time, lc.current_time
    try:  # what ts() does, without a call per time: producers' times carry a zone
        start = st.timestamp() if st.tzinfo is not None else ts(st)
        end = (et.timestamp() if et.tzinfo is not None else ts(et)) if et is not None else None
        current = (ct.timestamp() if ct.tzinfo is not None else ts(ct)) if ct is not None else None
    except (OverflowError, ValueError):
        start, end, current = ts(st), ts(et), ts(ct)
    if not (start is not None and MIN_TIME <= start < MAX_TIME and (end is None or MIN_TIME <= end < MAX_TIME)
            and (current is None or MIN_TIME <= current < MAX_TIME)):
        for name, t, dt in (("start-time", start, st), ("end-time", end, et), ("current-time", current, ct)):
            if t is not None and not MIN_TIME <= t < MAX_TIME:
                raise FireflyError(f"flow-lifecycle.{name}: {dt.isoformat() if dt else dt}: expected a time "
                                   "between 2000 and 2100", "bad_time", f"flow-lifecycle.{name}")
    return start, end, current


def ts(dt: datetime | None) -> float | None:
    """Epoch seconds; a naive time is taken as UTC (what every producer means). Exactly the
    microsecond count over 10**6 (one correctly rounded division), so round(ts(dt), 6) == ts(dt)."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        return dt.timestamp()
    except (OverflowError, ValueError):  # year 1 with a positive offset, year 9999 with a negative one
        return float("-inf") if dt.year < 2000 else float("inf")


_apps: Dict[str, str] = {}


def _intern_app(app: str | None) -> str:
    # Thousands of flows share a handful of application names: keep one copy (54 B a flow).
    if not app:
        return ""
    got = _apps.get(app)
    if got is None:
        if len(_apps) > 4096:
            _apps.clear()
        got = _apps[app] = app
    return got


def to_event(ff: Firefly, source: str, keep_netlink: bool = False) -> FlowEvent:
    """A FlowEvent the daemon can mark and re-announce. `parse` checked the document; what is
    added here is what marking needs beyond accounting: real ports, ids that fit the wire.

    The producer's `netlink` sample is dropped unless asked for: re-sent under our name it would
    look like our own measurement, and kept per flow it costs ~250 B."""
    lc, fid, ctx = ff.flow_lifecycle, ff.flow_id, ff.context
    for name, port in (("src-port", fid.src_port), ("dst-port", fid.dst_port)):
        if port == 0:
            raise FireflyError(f"flow-id.{name}: 0: expected a port 1..65535", "bad_port", f"flow-id.{name}")
    exp, act = ctx.experiment_id, ctx.activity_id
    if not EXPERIMENT_MIN <= exp <= EXPERIMENT_MAX:
        raise FireflyError(f"context.experiment-id: {exp}: expected {EXPERIMENT_MIN}..{EXPERIMENT_MAX}",
                           "bad_experiment", "context.experiment-id")
    if not ACTIVITY_MIN <= act <= ACTIVITY_MAX:
        raise FireflyError(f"context.activity-id: {act}: expected {ACTIVITY_MIN}..{ACTIVITY_MAX}",
                           "bad_activity", "context.activity-id")
    usage = None
    if ff.usage is not None and (ff.usage.received is not None or ff.usage.sent is not None):
        usage = Usage(ff.usage.received or 0, ff.usage.sent or 0)
    now = time.time()
    start = ts(lc.start_time)
    end = ts(lc.end_time) if lc.state == END else None
    if lc.state == END and end is None:
        end = now
    return FlowEvent(cast(State, lc.state), cast(Proto, fid.protocol), normalize_ip(fid.src_ip), fid.src_port,
                     normalize_ip(fid.dst_ip), fid.dst_port, exp, act, _intern_app(ctx.application), source,
                     start if start is not None else now, end, usage,
                     ff.netlink if keep_netlink else None, time.monotonic())


# --- building -----------------------------------------------------------------------------
# Hand-written formatting: datetime.isoformat() costs ~1.5 us and a dict through msgspec ~1 us;
# with three timestamps per firefly that was 7.1 us of a ~25 us budget per event. The template
# below measures 1.9 us. Every value placed raw is validated upstream (addresses normalised,
# ports and ids ints, state/protocol from fixed sets); free text goes through the JSON encoder.

_sec_cache: Dict[int, str] = {}


def iso(t: float) -> str:
    """RFC 3339 UTC with microseconds, as datetime.isoformat(timespec='microseconds') gives."""
    sec = int(t // 1)
    us = round((t - sec) * 1e6)
    if us >= 1_000_000:
        sec += 1
        us -= 1_000_000
    prefix = _sec_cache.get(sec)
    if prefix is None:
        if len(_sec_cache) > 4096:
            _sec_cache.clear()
        prefix = _sec_cache[sec] = datetime.fromtimestamp(sec, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S")
    return f"{prefix}.{us:06d}+00:00"


_encoder = msgspec.json.Encoder()
_app_cache: Dict[str, str] = {}


def _app_json(app: str) -> str:
    out = _app_cache.get(app)
    if out is None:
        if len(_app_cache) > 1024:
            _app_cache.clear()
        # Bounded so that a firefly always fits one datagram (MAX_DATAGRAM).
        out = _app_cache[app] = ',"application":' + _encoder.encode(app[:MAX_APPLICATION]).decode()
    return out


def build_json(ev: FlowEvent, now: float, state: str | None = None, now_iso: str | None = None) -> str:
    """The JSON document; `now_iso` lets a batch format the current time once."""
    state = state or ev.state
    end = ""
    if state == END:
        end = f',"end-time":"{iso(ev.end_time if ev.end_time is not None else now)}"'
    extra = ""
    if ev.usage is not None:
        extra = f',"usage":{{"received":{ev.usage.received:d},"sent":{ev.usage.sent:d}}}'
    if ev.netlink:
        extra += ',"netlink":' + _encoder.encode(ev.netlink).decode()
    return (
        f'{{"version":1,"flow-lifecycle":{{"state":"{state}","start-time":"{iso(ev.start_time)}",'
        f'"current-time":"{now_iso or iso(now)}"{end}}},'
        f'"flow-id":{{"afi":"{"ipv6" if ":" in ev.src_ip else "ipv4"}",'
        f'"src-ip":"{ev.src_ip}","dst-ip":"{ev.dst_ip}","protocol":"{ev.protocol}",'
        f'"src-port":{ev.src_port:d},"dst-port":{ev.dst_port:d}}},"context":{{"experiment-id":'
        f'{ev.experiment:d},"activity-id":{ev.activity:d}'
        f'{_app_json(ev.application) if ev.application else ""}}}{extra}}}'
    )


def syslog_header(now_iso: str, hostname: str, app: str = APP_NAME) -> str:
    return f"<{SYSLOG_PRI}>1 {now_iso} {hostname} {app} - {MSGID} - "


def build(ev: FlowEvent, now: float, hostname: str | None = None, state: str | None = None) -> bytes:
    """One datagram; with `hostname` it carries the RFC 5424 header."""
    now_iso = iso(now)
    body = build_json(ev, now, state, now_iso)
    if hostname is None:
        return body.encode()
    return (syslog_header(now_iso, hostname) + body).encode()
