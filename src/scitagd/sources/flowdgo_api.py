# SPDX-License-Identifier: Apache-2.0
"""flowd-go's REST API beside scitagd's own (`plugins.api`), for scripts written against it:

  GET  /              {"ApiRoutes": [{"method", "path", "name"}, ...]}, indented four spaces
  POST /flow          flowd-go's FlowID: {"State": 2, "Protocol": 0, "Family": 10,
                      "Src": "[2001:db8::1]:2345", "Dst": "[2001:db8::2]:5777", "Experiment": 1,
                      "Activity": 2, "Application": "x"}; answers 200 with the FlowID as taken
  GET  /dummy/start   a fixed test flow, TCP [::1]:2345 -> [::1]:5777; /dummy/end ends it

The same rules as scitagd's API (api.py): Host check, bearer token, application/json, body size,
every refusal JSON {"error", "field"} and counted. What flowd-go took (Go's encoding/json into its
FlowID) is taken here, checked: field names in any case, State 2 (start) or 3 (end), Protocol 0
(tcp, also when left out, as Go's zero value) or 1 (udp), Family 2 or 10 (when left out, from the
addresses: flowd-go's marker then ignored the flow), Src/Dst "ip:port" with IPv6 in brackets,
StartTs/EndTs RFC 3339 (Go's zero time = not given), CurrentTs and Info accepted and ignored.
Unknown fields are refused, as scitagd's API does (Go ignored them).

The dummy flow's ids: flowd-go uses 65535 for both, outside the ids a flow may carry (experiment
1..511, activity 0..63); scitagd uses 511 and 63, which are the bits flowd-go's marker put in the
flow label for 65535 (it keeps the low 9 and 6 bits). A GET that changes state is refused when a
browser says the request comes from another site (Sec-Fetch-Site), so a web page cannot start one.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

import msgspec
from aiohttp import web

from .. import __version__
from ..errors import InputError
from ..events import END, START, FlowEvent, make_event
from ..firefly import MAX_APPLICATION, MAX_TIME, MIN_TIME

if TYPE_CHECKING:
    from .api import ApiSource

__all__ = ["FIELDS", "add_routes", "flow_from_flowid", "flowid_json", "parse_addrport"]

# flowd-go's types/types.go: one iota block for protocol, state and (separately) the AF_ values
STATES = {2: START, 3: END}
STATE_IDS = {START: 2, END: 3}
PROTOCOLS = {0: "tcp", 1: "udp"}
PROTOCOL_IDS = {"tcp": 0, "udp": 1}
FAMILIES = {2: "ipv4", 10: "ipv6"}
FIELDS = ("State", "Protocol", "Family", "Src", "Dst", "Experiment", "Activity", "StartTs", "EndTs", "CurrentTs",
          "Info", "Application")
_FOLDED = {f.lower(): f for f in FIELDS}
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
DUMMY = ("::1", 2345, "::1", 5777, 511, 63)
_ADDRPORT = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]{1,5})$")


def parse_addrport(field: str, value: Any) -> Tuple[str, int]:
    """Go's netip.ParseAddrPort, strictly: "192.0.2.1:80" or "[2001:db8::1]:80"."""
    if not isinstance(value, str) or len(value) > 64:
        old = (" (the {\"IP\", \"Port\"} object of flowd-go's old test data no longer binds in flowd-go either)"
               if isinstance(value, dict) else "")
        raise InputError(f"{field}: {_show(value)}: expected a string \"ip:port\" (\"[2001:db8::1]:2345\" for "
                         f"IPv6){old}", "bad_address", field)
    m = _ADDRPORT.match(value)
    if not m:
        hint = " (an IPv6 address goes in brackets)" if value.count(":") > 1 and not value.startswith("[") else ""
        raise InputError(f"{field}: {_show(value)}: expected \"ip:port\"{hint}", "bad_address", field)
    host = m.group(1) or m.group(2)
    if m.group(1) is not None and ":" not in host:
        raise InputError(f"{field}: {_show(value)}: brackets are for IPv6 addresses", "bad_address", field)
    return host, int(m.group(3))


def _show(value: Any, n: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def _int(field: str, value: Any, allowed: Mapping[int, str], what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise InputError(f"{field}: {_show(value)}: expected {what}", f"bad_{field.lower()}", field)
    return value


def _time(field: str, value: Any) -> Optional[float]:
    if value is None or value == GO_ZERO_TIME:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise InputError(f"{field}: {_show(value)}: expected an RFC 3339 time string", "bad_time", field)
    try:
        dt = msgspec.json.decode(msgspec.json.encode(value), type=datetime)
    except msgspec.ValidationError:
        raise InputError(f"{field}: {_show(value)}: expected an RFC 3339 time (2026-11-25T16:29:49.407015Z)",
                         "bad_time", field) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    t = dt.timestamp()
    if not MIN_TIME <= t < MAX_TIME:
        raise InputError(f"{field}: {_show(value)}: expected a time between 2000 and 2100", "bad_time", field)
    return t


def flow_from_flowid(body: Dict[str, Any], source: str = "api") -> FlowEvent:
    """flowd-go's FlowID JSON (as Go would bind it) into a start or end event; InputError names
    the field as flowd-go spells it."""
    got: Dict[str, Any] = {}
    for key, value in body.items():
        name = _FOLDED.get(key.lower()) if isinstance(key, str) else None
        if name is None:
            shown = str(key)[:60]
            raise InputError(f"{shown}: unknown field; expected only flowd-go's FlowID fields "
                             + ", ".join(FIELDS), "unknown_field", shown)
        if name in got:
            raise InputError(f"{name}: given twice (field names are matched in any case)", "duplicate_field", name)
        got[name] = value
    for name in ("State", "Src", "Dst", "Experiment", "Activity"):
        if name not in got:
            raise InputError(f"{name}: missing", "missing_field", name)
    state = STATES[_int("State", got["State"], STATES, "2 (start) or 3 (end)")]
    protocol = PROTOCOLS[_int("Protocol", got.get("Protocol", 0), PROTOCOLS, "0 (tcp) or 1 (udp)")]
    src, sport = parse_addrport("Src", got["Src"])
    dst, dport = parse_addrport("Dst", got["Dst"])
    if "Family" in got:
        fam = FAMILIES[_int("Family", got["Family"], FAMILIES, "2 (IPv4) or 10 (IPv6)")]
        for field, addr in (("Src", src), ("Dst", dst)):
            if ("ipv6" if ":" in addr else "ipv4") != fam:
                raise InputError(f"{field}: {addr} is not {fam} as Family {got['Family']} says", "bad_address", field)
    app = got.get("Application")
    if app is None:
        app = ""
    elif not isinstance(app, str) or len(app) > MAX_APPLICATION:
        raise InputError(f"Application: expected a string of at most {MAX_APPLICATION} characters",
                         "bad_application", "Application")
    info = got.get("Info")
    if info is not None and not isinstance(info, dict):
        raise InputError(f"Info: {_show(info)}: expected an object (it is not used)", "bad_info", "Info")
    start = _time("StartTs", got.get("StartTs"))
    end = _time("EndTs", got.get("EndTs"))
    _time("CurrentTs", got.get("CurrentTs"))
    return make_event(state, protocol, src, sport, dst, dport, got["Experiment"], got["Activity"], app, source,
                      start_time=start, end_time=end if state == END else None,
                      field_names=("State", "Protocol", "Src", "Src", "Dst", "Dst", "Experiment", "Activity"))


def _go_time(t: Optional[float]) -> str:
    """Go's time.Time JSON (RFC3339Nano, UTC as Z, trailing zeros trimmed)."""
    if t is None:
        return GO_ZERO_TIME
    dt = datetime.fromtimestamp(t, timezone.utc)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _addrport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def flowid_json(ev: FlowEvent) -> Dict[str, Any]:
    """A flow as flowd-go's API echoes its FlowID (Go field names and order)."""
    return {
        "State": STATE_IDS.get(ev.state, 4),
        "Protocol": PROTOCOL_IDS[ev.protocol],
        "Family": 10 if ":" in ev.src_ip else 2,
        "Src": _addrport(ev.src_ip, ev.src_port),
        "Dst": _addrport(ev.dst_ip, ev.dst_port),
        "Experiment": ev.experiment,
        "Activity": ev.activity,
        "StartTs": _go_time(ev.start_time),
        "EndTs": _go_time(ev.end_time),
        "CurrentTs": GO_ZERO_TIME,
        "Info": {"tcpInfo": None},
        "Application": ev.application,
    }


class FlowdGoApi:
    def __init__(self, api: ApiSource, routes: List[Tuple[str, str, str]]) -> None:
        self.api = api
        self.routes = routes

    async def root(self, request: web.Request) -> web.Response:
        body = {"ApiRoutes": [{"method": m, "path": p, "name": n} for m, p, n in self.routes]}
        return web.json_response(body, dumps=lambda d: msgspec.json.format(msgspec.json.encode(d), indent=4).decode())

    async def post_flow(self, request: web.Request) -> web.Response:
        body = await self.api.json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            ev = flow_from_flowid(body, self.api.name)
        except InputError as e:
            return self.api._error(400, e.field, str(e), e.reason, request.remote)
        return self._submit(ev)

    def _submit(self, ev: FlowEvent) -> web.Response:
        self.api.host.submit(ev)
        stored = self.api.host.flow(ev.key) if ev.state == START else ev
        return web.json_response(flowid_json(stored or ev))

    async def dummy(self, request: web.Request) -> web.Response:
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in ("none", "same-origin"):
            return self.api._error(403, "Sec-Fetch-Site", f"Sec-Fetch-Site {_show(site)}: a page of another site "
                                   "may not start or end flows", "cross_site", request.remote)
        state = START if request.path.endswith("/start") else END
        src, sport, dst, dport, exp, act = DUMMY
        ev = make_event(state, "tcp", src, sport, dst, dport, exp, act, f"scitagd-{__version__}", self.api.name)
        return self._submit(ev)


def add_routes(app: web.Application, api: ApiSource) -> None:
    routes = [("GET", "/", "root"), ("POST", "/flow", "post_flow"), ("GET", "/dummy/start", "dummy"),
              ("GET", "/dummy/end", "dummy")]
    listed = [(m, p, f"scitagd.flowdgo_api.{h}") for m, p, h in routes]
    listed += [("POST", "/api/v1/flows", "scitagd.api.post_flow"), ("GET", "/api/v1/flows", "scitagd.api.get_flows"),
               ("GET", "/healthz", "scitagd.api.healthz")]
    h = FlowdGoApi(api, listed)
    app.router.add_get("/", h.root)
    app.router.add_post("/flow", h.post_flow)
    app.router.add_get("/dummy/start", h.dummy)
    app.router.add_get("/dummy/end", h.dummy)
