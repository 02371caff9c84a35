# SPDX-License-Identifier: Apache-2.0
"""SIGHUP reloads the config: changed components rebuilt, the others untouched, flows kept, an
invalid config refused; systemd's notify protocol (READY, RELOADING, STATUS, WATCHDOG, STOPPING)."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, List

from ..conftest import DaemonProc, free_port, http, json_body


def flow(port: int, state: str = "start") -> dict[str, Any]:
    return {"state": state, "protocol": "tcp", "src-ip": "127.0.0.1", "src-port": port, "dst-ip": "127.0.0.1",
            "dst-port": 40000, "experiment": "atlas", "activity": "Data Brokering"}


def test_sighup_rebuilds_what_changed_and_keeps_flows(run_daemon: Callable[..., DaemonProc],
                                                       udp_receiver: Any) -> None:
    r1, r2 = udp_receiver(), udp_receiver()
    api = free_port()
    base = f"""
plugins:
  api: {{bindPort: {api}}}
backends:
  firefly: {{sendToPeer: false, collectors: ["127.0.0.1:{r1.port}"]}}
flowTable: {{expireAfter: 3600}}
"""
    d = run_daemon(base)
    for p in range(1000, 1010):
        assert http("POST", f"http://127.0.0.1:{api}/api/v1/flows", flow(p))[0] == 202
    assert len(r1.recv(10)) == 10
    d.conf_path.write_text(base.replace(f'collectors: ["127.0.0.1:{r1.port}"]',
                                        f'collectors: ["127.0.0.1:{r1.port}", "127.0.0.1:{r2.port}"]'))
    d.proc.send_signal(signal.SIGHUP)
    text = d.wait_log("scitagd.daemon reloaded")
    line = next(x for x in text.splitlines() if "reloaded" in x)
    assert "rebuilt=backends.firefly" in line and "kept=plugins.api" in line and "active_flows=10" in line
    status, body = http("GET", f"http://127.0.0.1:{api}/api/v1/flows")
    assert status == 200 and body["count"] == 10  # the flow table went through it
    assert http("POST", f"http://127.0.0.1:{api}/api/v1/flows", flow(1000, "end"))[0] == 202
    for r in (r1, r2):  # the new firefly sink sends the end to both collectors
        got = [json_body(x) for x in r.recv(1)]
        assert got and got[0]["flow-lifecycle"]["state"] == "end" and got[0]["flow-id"]["src-port"] == 1000

    # an invalid config changes nothing
    d.conf_path.write_text(base.replace("bindPort", "bindPrt"))
    d.proc.send_signal(signal.SIGHUP)
    text = d.wait_log("config not reloaded")
    assert "unknown key 'bindPrt'" in text
    assert http("GET", f"http://127.0.0.1:{api}/api/v1/flows")[1]["count"] == 9
    assert d.proc.poll() is None and "Traceback" not in d.log()


def test_systemd_notify_protocol(run_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    sock_path = tmp_path / "notify"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    srv.settimeout(10)
    api = free_port()
    got: List[str] = []

    def until(pred: Callable[[str], bool]) -> str:
        while True:
            msg = srv.recv(4096).decode()
            got.append(msg)
            if pred(msg):
                return msg

    d = run_daemon(f"plugins:\n  api: {{bindPort: {api}}}\n", wait_for=None,
                   env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    ready = until(lambda m: "READY=1" in m)
    # READY means bound: the API answers at once
    assert http("GET", f"http://127.0.0.1:{api}/healthz")[0] == 200
    assert f"MAINPID={d.proc.pid}" in ready and "active flows" in ready
    t0 = time.monotonic()
    pings = 0
    while time.monotonic() - t0 < 1.0:
        if "WATCHDOG=1" in until(lambda m: True):
            pings += 1
    assert pings >= 3  # every 0.2 s: half of WatchdogSec
    d.proc.send_signal(signal.SIGHUP)
    until(lambda m: "RELOADING=1" in m)
    until(lambda m: "READY=1" in m)
    d.proc.send_signal(signal.SIGTERM)
    until(lambda m: "STOPPING=1" in m)
    d.proc.wait(10)
    srv.close()
