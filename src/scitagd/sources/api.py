"""`plugins.api`: a small REST API for storage systems and operators.

Config keys (flowd-go's, plus extensions):
  bindAddress   address to listen on (default 127.0.0.1)
  bindPort      port (default 7777)
  maxBodyBytes  request body limit (default 16384)
"""

from __future__ import annotations

import logging
from typing import Any, Dict

import msgspec
from aiohttp import web

from ..components import Host, Source
from ..errors import EventError, RegistryError
from ..events import END, START, FlowEvent, make_event
from ..firefly import MAX_APPLICATION, iso
from ..httpserver import HttpServer
from ..registry import Registry
from ..tags import encode_scitag
from .conf import ApiConfig

__all__ = ["ApiSource", "flow_json"]

log = logging.getLogger("scitagd.api")


_REQUIRED = ("state", "protocol", "src-ip", "src-port", "dst-ip", "dst-port", "experiment", "activity")
_KNOWN = {*_REQUIRED, "application"}


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


class ApiSource(Source):
    name = "api"

    def __init__(self, host: Host, conf: ApiConfig) -> None:
        super().__init__(host)
        self.conf = conf
        self._server = HttpServer(log)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.conf.max_body_bytes)
        app.router.add_post("/api/v1/flows", self.post_flow)
        app.router.add_get("/api/v1/flows", self.get_flows)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def start(self) -> None:
        await self._server.start(self.app(), self.conf.bind_address, self.conf.bind_port)

    async def stop(self) -> None:
        await self._server.stop()

    def _error(self, status: int, field: str | None, message: str, reason: str) -> web.Response:
        self.counters.reject(reason)
        log.warning("request rejected reason=%s field=%s error=%r", reason, field, message)
        return web.json_response({"error": message, "field": field}, status=status)

    async def post_flow(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, None, f"request body over {self.conf.max_body_bytes} bytes",
                               "too_large")
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError as e:
            return self._error(400, None, f"body is not JSON: {e}", "malformed_json")
        if not isinstance(body, dict):
            return self._error(400, None, "body must be a JSON object", "malformed_json")
        for key in _REQUIRED:
            if key not in body:
                return self._error(400, key, f"{key}: missing", "missing_field")
        unknown = sorted(set(body) - _KNOWN)
        if unknown:
            return self._error(400, unknown[0], f"{unknown[0]}: unknown field; expected only "
                               + ", ".join(sorted(_KNOWN)), "unknown_field")
        app = body.get("application") or ""
        if not isinstance(app, str) or len(app) > MAX_APPLICATION:
            return self._error(400, "application", "application: expected a string of at most "
                               f"{MAX_APPLICATION} characters", "bad_application")
        state = body["state"]
        if state not in (START, END):
            return self._error(400, "state", f"state: {state!r}: expected start or end", "bad_state")
        try:
            exp, act = self.host.registry.resolve(body["experiment"], body["activity"])
        except RegistryError as e:
            field = e.field or "experiment"
            return self._error(400, field, f"{field}: {e}", e.reason)
        try:
            ev = make_event(state, body["protocol"], body["src-ip"], body["src-port"],
                            body["dst-ip"], body["dst-port"], exp, act, app, self.name)
        except EventError as e:
            return self._error(400, e.field, str(e), e.reason)
        self.host.submit(ev)
        stored = self.host.flow(ev.key) if state == START else ev
        return web.json_response(flow_json(stored or ev, self.host.registry), status=202)

    async def get_flows(self, request: web.Request) -> web.Response:
        reg = self.host.registry
        flows = [flow_json(ev, reg) for ev in self.host.flows()]
        for f in flows:
            del f["state"]
        return web.json_response({"flows": flows, "count": len(flows)})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "active_flows": self.host.flow_count()})
