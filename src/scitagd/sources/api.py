# SPDX-License-Identifier: Apache-2.0
"""`plugins.api`: a small REST API for storage systems and operators.

Config keys (sources/conf.py): bindAddress, bindPort, maxBodyBytes; allowedHosts, token |
tokenFile, allowUnauthenticated; maxConnections, maxConnectionsPerSource, headerTimeout,
keepAliveTimeout, requestTimeout. flowd-go's routes (GET /, POST /flow, GET /dummy/start|end)
are served beside ours, under the same rules (flowdgo_api.py).

Who may call, and why:
- POST needs `Content-Type: application/json`: a web page can send a cross-site form POST
  without asking, but not that type without a CORS preflight, which this API never grants.
- Every request needs a Host header naming this server (loopback names and addresses, the
  bind address, `allowedHosts`): a page whose name is rebound to 127.0.0.1 (DNS rebinding) is
  same-origin with the API in the browser's eyes, but still sends its own name as Host.
- With a token, every request but /healthz needs `Authorization: Bearer <token>`. Off loopback
  a token is required unless `allowUnauthenticated: true` says otherwise (conf.py).
Every refusal answers JSON `{"error": ..., "field": ...}` (field: the body field, or the header
at fault, or null for the body as a whole) and counts in scitagd_rejected_total{source="api"}.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any, Awaitable, Callable, Dict, Optional, Set, Union

import msgspec
from aiohttp import web

from ..components import Host, Source
from ..errors import InputError
from ..events import END, START, FlowEvent, make_event
from ..firefly import MAX_APPLICATION, iso
from ..httpserver import HttpLimits, HttpServer, host_allowed
from ..logs import Throttle
from ..registry import Registry
from ..tags import encode_scitag
from .conf import ApiConfig

__all__ = ["ApiSource", "flow_from_body", "flow_json"]

log = logging.getLogger("scitagd.api")


_REQUIRED = ("state", "protocol", "src-ip", "src-port", "dst-ip", "dst-port", "experiment", "activity")
_KNOWN = {*_REQUIRED, "application"}
_decoder = msgspec.json.Decoder()


def flow_json(ev: FlowEvent, registry: Registry) -> Dict[str, Any]:
    return {
        "state": ev.state,
        "protocol": ev.protocol,
        "src-ip": ev.src_ip,
        "src-port": ev.src_port,
        "dst-ip": ev.dst_ip,
        "dst-port": ev.dst_port,
        "experiment-id": ev.experiment,
        "activity-id": ev.activity,
        "experiment": registry.experiment_name(ev.experiment),
        "activity": registry.activity_name(ev.experiment, ev.activity),
        "scitag": encode_scitag(ev.experiment, ev.activity),
        "application": ev.application or None,
        "start-time": iso(ev.start_time),
        "source": ev.source,
    }


def decode_body(raw: bytes) -> Dict[str, Any]:
    """The request body as a JSON object, or an InputError (field None: the body as a whole)."""
    try:
        body = _decoder.decode(raw)
    except msgspec.ValidationError as e:  # a number beyond what JSON decoding takes
        raise InputError(f"body: a number out of range: {e}", "bad_number") from None
    except msgspec.DecodeError as e:
        raise InputError(f"body is not JSON: {e}", "malformed_json") from None
    except UnicodeDecodeError as e:
        raise InputError(f"body is not UTF-8: an invalid byte (0x{e.object[e.start]:02x}) in a JSON string",
                         "bad_utf8") from None
    except RecursionError:
        raise InputError("body is nested too deeply", "too_deep") from None
    if not isinstance(body, dict):
        raise InputError(f"body must be a JSON object, not {_json_type(body)}", "malformed_json")
    return body


def flow_from_body(body: Dict[str, Any], registry: Registry, source: str = "api") -> FlowEvent:
    """Validate a decoded body into a start or end event; InputError names the field."""
    for key in _REQUIRED:
        if key not in body:
            raise InputError(f"{key}: missing", "missing_field", key)
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        name = unknown[0][:60]
        raise InputError(f"{name}: unknown field; expected only " + ", ".join(sorted(_KNOWN)), "unknown_field",
                         name)
    app = body.get("application")
    if app is None:
        app = ""
    elif not isinstance(app, str) or len(app) > MAX_APPLICATION:
        raise InputError(f"application: expected a string of at most {MAX_APPLICATION} characters, not "
                         f"{_json_type(app)}" + (f" of {len(app)}" if isinstance(app, str) else ""),
                         "bad_application", "application")
    state = body["state"]
    if not isinstance(state, str) or state not in (START, END):
        raise InputError(f"state: {_show(state)}: expected start or end", "bad_state", "state")
    for key in ("experiment", "activity"):
        v = body[key]
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise InputError(f"{key}: {_show(v)} ({_json_type(v)}): expected an id (integer) or a name "
                             "(string)", "bad_type", key)
    try:
        exp, act = registry.resolve(body["experiment"], body["activity"])
    except InputError as e:
        field = e.field or "experiment"
        raise InputError(f"{field}: {e}", e.reason, field) from None
    return make_event(state, body["protocol"], body["src-ip"], body["src-port"], body["dst-ip"],
                      body["dst-port"], exp, act, app, source)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _show(value: Any, n: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


class ApiSource(Source):
    name = "api"

    def __init__(self, host: Host, conf: ApiConfig) -> None:
        super().__init__(host)
        self.conf = conf
        limits = HttpLimits(max_connections=conf.max_connections,
                            max_per_source=conf.max_connections_per_source,
                            header_timeout=conf.header_timeout, keepalive_timeout=conf.keep_alive_timeout,
                            request_timeout=conf.request_timeout)
        self._server = HttpServer(log, limits, on_reject=self.counters.reject)
        self._throttle = Throttle(1.0)
        self._token: Optional[bytes] = None
        hosts: Set[str] = set(conf.allowed_hosts)
        bind = ipaddress.ip_address(conf.bind_address)
        if not bind.is_unspecified:
            hosts.add(bind.compressed)  # clients that call it by its address
        self._hosts = frozenset(hosts)

    def app(self) -> web.Application:
        from .flowdgo_api import add_routes

        app = web.Application(client_max_size=self.conf.max_body_bytes, middlewares=[self._access])
        app.router.add_post("/api/v1/flows", self.post_flow)
        app.router.add_get("/api/v1/flows", self.get_flows)
        app.router.add_get("/healthz", self.healthz)
        add_routes(app, self)  # flowd-go's: GET /, POST /flow, GET /dummy/start|end
        return app

    async def start(self) -> None:
        token = self.conf.read_token()
        self._token = token.encode() if token else None
        await self._server.start(self.app(), self.conf.bind_address, self.conf.bind_port)
        if self._token is None and not ipaddress.ip_address(self.conf.bind_address).is_loopback:
            log.warning("API reachable off loopback without a token (allowUnauthenticated: true) "
                        "address=%s port=%d", self.conf.bind_address, self.conf.bind_port)

    async def stop(self) -> None:
        await self._server.stop()

    def _error(self, status: int, field: Optional[str], message: str, reason: str,
               peer: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> web.Response:
        self.counters.reject(reason)
        if self._throttle.allow(reason):
            log.warning("request rejected reason=%s field=%s peer=%s error=%r", reason, field, peer or "?",
                        message[:300])
        return web.json_response({"error": message, "field": field}, status=status, headers=headers)

    @web.middleware
    async def _access(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not host_allowed(host, self._hosts):
            return self._error(403, "Host", f"Host {_show(host)} is not a name of this API: expected a "
                               "loopback name or address, or one listed in plugins.api.allowedHosts",
                               "bad_host", request.remote)
        if self._token is not None and request.path != "/healthz":
            auth = request.headers.get("Authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                                     self._token):
                return self._error(401, "Authorization", "expected 'Authorization: Bearer <token>' with "
                                   "the token of plugins.api", "unauthorized", request.remote,
                                   headers={"WWW-Authenticate": 'Bearer realm="scitagd"'})
        return await handler(request)

    async def json_body(self, request: web.Request) -> Union[Dict[str, Any], web.Response]:
        """A POST's body as a JSON object, or the refusal to send (415, 413, 400), counted."""
        peer = request.remote
        ctype = request.headers.get("Content-Type")
        charset = request.charset
        if request.content_type != "application/json" or ctype is None or (
                charset is not None and charset.lower() not in ("utf-8", "utf8")):
            return self._error(415, "Content-Type", f"Content-Type {_show(ctype)}: expected application/json "
                               "(UTF-8)", "bad_content_type", peer)
        limit = self.conf.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._error(413, None, f"request body over {limit} bytes", "too_large", peer,
                               headers={"Connection": "close"})
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, None, f"request body over {limit} bytes", "too_large", peer,
                               headers={"Connection": "close"})
        try:
            return decode_body(raw)
        except InputError as e:
            return self._error(400, e.field, str(e), e.reason, peer)

    async def post_flow(self, request: web.Request) -> web.Response:
        peer = request.remote
        body = await self.json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            ev = flow_from_body(body, self.host.registry, self.name)
        except InputError as e:
            return self._error(400, e.field, str(e), e.reason, peer)
        self.host.submit(ev)
        stored = self.host.flow(ev.key) if ev.state == START else ev
        return web.json_response(flow_json(stored or ev, self.host.registry), status=202)

    async def get_flows(self, request: web.Request) -> web.Response:
        reg = self.host.registry
        flows = [flow_json(ev, reg) for ev in self.host.flows()]
        for f in flows:
            del f["state"]
        return web.json_response({"flows": flows, "count": len(flows)})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "active_flows": self.host.flow_count()})
