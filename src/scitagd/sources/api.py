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

from ..components import Source
from ..events import EventError, FlowEvent, make_event
from ..firefly import iso
from ..netutil import check_bind_address, check_port
from ..registry import RegistryError

log = logging.getLogger("scitagd.api")


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    bind_address: str = "127.0.0.1"
    bind_port: int = 7777
    max_body_bytes: int = 16384

    def __post_init__(self) -> None:
        check_bind_address("bindAddress", self.bind_address)
        check_port("bindPort", self.bind_port)
        if not 256 <= self.max_body_bytes <= 1 << 20:
            raise ValueError(f"maxBodyBytes {self.max_body_bytes}: expected 256..1048576")


_REQUIRED = ("state", "protocol", "src-ip", "src-port", "dst-ip", "dst-port", "experiment", "activity")
_KNOWN = {*_REQUIRED, "application"}


def flow_json(ev: FlowEvent, registry: Any) -> Dict[str, Any]:
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
        "scitag": ev.experiment << 6 | ev.activity,
        "application": ev.application or None,
        "start-time": iso(ev.start_time),
        "source": ev.source,
    }


class ApiSource(Source):
    name = "api"

    def __init__(self, daemon: Any, conf: ApiConfig) -> None:
        super().__init__(daemon)
        self.conf = conf
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.conf.max_body_bytes)
        app.router.add_post("/api/v1/flows", self.post_flow)
        app.router.add_get("/api/v1/flows", self.get_flows)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.conf.bind_address, self.conf.bind_port,
                           reuse_address=True)
        await site.start()
        log.info("listening address=%s port=%d", self.conf.bind_address, self.conf.bind_port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def _error(self, status: int, field: str | None, message: str, reason: str) -> web.Response:
        self.daemon.stats.reject(self.name, reason)
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
        if not isinstance(app, str) or len(app) > 128:
            return self._error(400, "application", "application: expected a string of at most "
                               "128 characters", "bad_application")
        state = body["state"]
        if state not in ("start", "end"):
            return self._error(400, "state", f"state: {state!r}: expected start or end", "bad_state")
        try:
            exp, act = self.daemon.registry.current.resolve(body["experiment"], body["activity"])
        except RegistryError as e:
            field = "experiment" if "experiment name" in str(e) else "activity"
            return self._error(400, field, f"{field}: {e}", "unknown_name")
        try:
            ev = make_event(state, body["protocol"], body["src-ip"], body["src-port"],
                            body["dst-ip"], body["dst-port"], exp, act, app, self.name)
        except EventError as e:
            return self._error(400, e.field, str(e), e.reason)
        self.daemon.submit(ev)
        stored = self.daemon.table.get(ev.key) if state == "start" else ev
        return web.json_response(flow_json(stored or ev, self.daemon.registry.current), status=202)

    async def get_flows(self, request: web.Request) -> web.Response:
        reg = self.daemon.registry.current
        flows = [flow_json(ev, reg) for ev in self.daemon.table]
        for f in flows:
            del f["state"]
        return web.json_response({"flows": flows, "count": len(flows)})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "active_flows": len(self.daemon.table)})
