# SPDX-License-Identifier: Apache-2.0
"""Small helpers the demo, the tests and the benchmarks share: free ports on loopback, waiting
for an HTTP endpoint, posting JSON, draining a UDP socket."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["drain", "free_port", "post", "serve_json", "stop_process", "wait_for", "wait_http"]


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port free on `host` now (TCP by default; socket.SOCK_DGRAM for UDP)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_for(cond: Callable[[], bool], timeout: float, what: str = "condition", interval: float = 0.05,
             detail: Optional[Callable[[], str]] = None) -> None:
    """Poll `cond` until it holds (once more at the deadline); else AssertionError naming `what`,
    with `detail()` (a log, say) appended."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met in {timeout} s" + (f"; {detail()}" if detail else ""))
        time.sleep(interval)


def post(url: str, body: Dict[str, Any]) -> Tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def drain(sock: socket.socket, want: int, timeout: float = 3.0) -> List[bytes]:
    out: List[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(65535))
        except socket.timeout:
            break
    return out


def serve_json(body: bytes, path: str = "/api.json") -> Tuple[str, http.server.ThreadingHTTPServer]:
    """Serve one JSON document on loopback in a daemon thread (a registry for flowd or scitagd
    under test): (its URL, the server, to shut down)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}{path}", srv


def stop_process(p: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM a process this code started (never by name), SIGKILL it after `timeout` s, reap it."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
