"""Fireflies: build strictly (always schema-valid), parse tolerantly (every producer's dialect).

SPEC.md section 4 lists what receivers must accept: nil or 'Z' timestamps, an IP address as
syslog HOSTNAME, no header at all, syslog-daemon archive lines, any key order, extra keys, empty
usage. Anything we can still read as a flow is accepted; the rest gets an error naming the field.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone
from typing import Any, Dict, Optional

import msgspec

from .events import END, STATES, EventError, FlowEvent, Usage, make_event

SYSLOG_PRI = 134  # local0.info
MSGID = "firefly-json"
APP_NAME = "scitagd"
DEFAULT_PORT = 10514
MAX_DATAGRAM = 1400  # keep one firefly in one unfragmented datagram on any sane path
MAX_APPLICATION = 128

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
    """A parsed datagram: the document plus what the syslog header said about its sender."""

    firefly: Firefly
    hostname: Optional[str] = None
    app_name: Optional[str] = None


class FireflyError(ValueError):
    """A datagram that is not a usable firefly. `reason` is a short counter label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_decoder = msgspec.json.Decoder(Firefly)


def parse(data: bytes) -> Received:
    """Parse one datagram or archive line."""
    i = data.find(b"{")
    if i < 0:
        raise FireflyError(f"not a firefly: no JSON object in {_preview(data)}", "no_json")
    hostname = app = None
    if i:
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
    _check(ff)
    return Received(ff, hostname, app)


def _preview(data: bytes, n: int = 60) -> str:
    text = data[:n].decode("utf-8", "replace")
    return repr(text + ("..." if len(data) > n else ""))


def _parse_header(raw: bytes) -> tuple[str | None, str | None]:
    tokens = raw.decode("utf-8", "replace").split()
    if not tokens:
        return None, None
    if tokens[0] in _MONTHS and len(tokens) >= 5:
        tokens = tokens[4:]  # 'Feb  1 18:54:27 relayhost' written by the syslog daemon
    if tokens and (tokens[0].startswith("<") or tokens[0].isdigit()):
        rest = tokens[1:]  # '<134>1' or a bare version '1'
    else:
        return None, None  # a header we cannot read does not spoil a readable document
    hostname = rest[1] if len(rest) > 1 and rest[1] != "-" else None
    app = rest[2] if len(rest) > 2 and rest[2] != "-" else None
    return hostname, app


def _check(ff: Firefly) -> None:
    if ff.version != 1:
        raise FireflyError(f"version: {ff.version!r}: expected 1", "bad_version")
    lc, fid, ctx = ff.flow_lifecycle, ff.flow_id, ff.context
    if lc.state not in STATES:
        raise FireflyError(
            f"flow-lifecycle.state: {lc.state!r}: expected start, ongoing or end", "bad_state"
        )
    if fid.protocol not in ("tcp", "udp"):
        raise FireflyError(f"flow-id.protocol: {fid.protocol!r}: expected tcp or udp", "bad_protocol")
    if fid.afi not in ("ipv4", "ipv6"):
        raise FireflyError(f"flow-id.afi: {fid.afi!r}: expected ipv4 or ipv6", "bad_afi")
    for name in ("src-ip", "dst-ip"):
        text = fid.src_ip if name == "src-ip" else fid.dst_ip
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise FireflyError(f"flow-id.{name}: {text!r}: expected an IP address",
                               "bad_address") from None
        if f"ipv{addr.version}" != fid.afi:
            raise FireflyError(f"flow-id.{name}: {text!r} is not {fid.afi} as flow-id.afi says",
                               "bad_address")
    for name, port in (("src-port", fid.src_port), ("dst-port", fid.dst_port)):
        # Port 0 is accepted: flowd's own test data carries it; marking rejects it later.
        if not 0 <= port <= 65535:
            raise FireflyError(f"flow-id.{name}: {port}: expected 0..65535", "bad_port")
    if ctx.experiment_id < 0 or ctx.activity_id < 0:
        raise FireflyError(
            f"context: experiment-id {ctx.experiment_id}, activity-id {ctx.activity_id}: "
            "expected non-negative ids", "bad_tag")


def ts(dt: datetime | None) -> float | None:
    """Epoch seconds; a naive time is taken as UTC (what every producer means)."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


_FIELDS = ("flow-lifecycle.state", "flow-id.protocol", "flow-id.src-ip", "flow-id.src-port",
           "flow-id.dst-ip", "flow-id.dst-port", "context.experiment-id", "context.activity-id")


def to_event(ff: Firefly, source: str) -> FlowEvent:
    """A FlowEvent the daemon can mark and re-announce: ids must fit the wire, ports be real."""
    lc, fid, ctx = ff.flow_lifecycle, ff.flow_id, ff.context
    usage = None
    if ff.usage is not None and (ff.usage.received is not None or ff.usage.sent is not None):
        usage = Usage(ff.usage.received or 0, ff.usage.sent or 0)
    try:
        return make_event(
            lc.state, fid.protocol, fid.src_ip, fid.src_port, fid.dst_ip, fid.dst_port,
            ctx.experiment_id, ctx.activity_id, ctx.application or "", source,
            ts(lc.start_time), ts(lc.end_time) if lc.state == END else None, usage, ff.netlink,
            field_names=_FIELDS,
        )
    except EventError as e:
        raise FireflyError(str(e), e.reason) from None


# --- building -----------------------------------------------------------------------------

def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds")


_encoder = msgspec.json.Encoder()


def build_document(ev: FlowEvent, now: float, state: str | None = None) -> Dict[str, Any]:
    state = state or ev.state
    lc: Dict[str, Any] = {"state": state, "start-time": iso(ev.start_time), "current-time": iso(now)}
    if state == END:
        lc["end-time"] = iso(ev.end_time if ev.end_time is not None else now)
    doc: Dict[str, Any] = {
        "version": 1,
        "flow-lifecycle": lc,
        "flow-id": {
            "afi": "ipv6" if ":" in ev.src_ip else "ipv4",
            "src-ip": ev.src_ip,
            "dst-ip": ev.dst_ip,
            "protocol": ev.protocol,
            "src-port": ev.src_port,
            "dst-port": ev.dst_port,
        },
        "context": {"experiment-id": ev.experiment, "activity-id": ev.activity},
    }
    if ev.application:
        # Bounded so that a firefly always fits one datagram (MAX_DATAGRAM).
        doc["context"]["application"] = ev.application[:MAX_APPLICATION]
    if ev.usage is not None:
        doc["usage"] = {"received": ev.usage.received, "sent": ev.usage.sent}
    if ev.netlink:
        doc["netlink"] = ev.netlink
    return doc


def syslog_header(now: float, hostname: str, app: str = APP_NAME) -> bytes:
    return f"<{SYSLOG_PRI}>1 {iso(now)} {hostname} {app} - {MSGID} - ".encode()


def build(ev: FlowEvent, now: float, hostname: str | None = None, state: str | None = None) -> bytes:
    """One datagram; with `hostname` it carries the RFC 5424 header."""
    body = _encoder.encode(build_document(ev, now, state))
    if hostname is None:
        return body
    return syslog_header(now, hostname) + body
