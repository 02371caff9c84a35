# SPDX-License-Identifier: Apache-2.0
"""Shared test helpers: the shared/ data, a daemon subprocess, UDP receivers, schema checks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from scitagd.lab.util import free_port  # noqa: F401  (re-exported to the test modules)

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SCITAGD_SHARED", REPO.parent / "shared"))
PRODUCERS = SHARED / "data" / "fireflies" / "producers.jsonl"
ARCHIVE = SHARED / "data" / "fireflies" / "unl-flowd-0.1.2-2022.log.gz"
SCHEMA = SHARED / "spec" / "firefly.schema.v1.0.0.json"

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.root  # skipped with a reason when not root (pytest_collection_modifyitems)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """`root` tests skip with a reason when not root; tests that start processes (a daemon, a
    collector, a namespace lab) are `slow`, so `pytest -m "not slow"` is the quick unit suite."""
    skip = pytest.mark.skip(reason="needs root (network namespaces, eBPF, raw sockets): run as root, as CI does")
    for item in items:
        if not IS_ROOT and item.get_closest_marker("root"):
            item.add_marker(skip)
        if _STARTS_PROCESSES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .figures import recorded

    rows = recorded()
    if not rows:
        return
    terminalreporter.section("figures")
    for row in rows:
        rest = " ".join(f"{k}={v}" for k, v in row.items() if k != "what")
        terminalreporter.write_line(f"{row['what']}: {rest}")


_STARTS_PROCESSES = {"run_daemon", "lab", "collector", "ns", "xrootd_dir", "env", "ch_server", "receivers"}


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} missing: tests need ../shared beside the repository (or SCITAGD_SHARED)")
    return path


def firefly_validator() -> Any:
    import jsonschema

    text = require_shared(SCHEMA).read_text()
    text = re.sub(r",(\s*[}\]])", r"\1", text)  # the official file has trailing commas
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def json_body(datagram: bytes) -> Any:
    return json.loads(datagram[datagram.index(b"{"):])


class UdpReceiver:
    """A real socket standing in for a transfer's peer or a collector."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, port))
        self.host = host
        self.port = self.sock.getsockname()[1]

    def recv(self, n: int, timeout: float = 5.0) -> List[bytes]:
        out: List[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                out.append(self.sock.recv(65535))
            except socket.timeout:
                break
        return out

    def quiet(self, wait: float = 0.3) -> List[bytes]:
        """Whatever arrives within `wait` seconds (to assert that nothing more comes)."""
        return self.recv(1000, wait)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp_receiver() -> Iterator[Any]:
    made: List[UdpReceiver] = []

    def make(host: str = "127.0.0.1", port: int = 0) -> UdpReceiver:
        r = UdpReceiver(host, port)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


class DaemonProc:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, conf_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.conf_path = conf_path

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in daemon log after {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> Tuple[int, float]:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, time.monotonic() - t0


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Any]:
    """Two namespaces joined by a veth pair (tests/lab.py), removed also when the test fails."""
    from .lab import Lab

    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def run_daemon(tmp_path: Path) -> Iterator[Any]:
    started: List[DaemonProc] = []

    def start(config: str, wait_for: Optional[str] = "scitagd.daemon started",
              args: Tuple[str, ...] = (), env: Optional[dict[str, str]] = None) -> DaemonProc:
        conf = tmp_path / f"scitagd-{len(started)}.yaml"
        conf.write_text(config)
        log_path = tmp_path / f"scitagd-{len(started)}.log"
        with open(log_path, "w") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scitagd", "run", "--config", str(conf), *args],
                stdout=logf, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, **(env or {})},
            )
        d = DaemonProc(proc, log_path, conf)
        started.append(d)
        if wait_for:
            d.wait_log(wait_for)
        return d

    yield start
    for d in started:
        d.stop()


def http(method: str, url: str, body: Any = None, raw: Optional[bytes] = None,
         timeout: float = 5.0) -> Tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        payload = e.read()
        status = e.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode("utf-8", "replace")


def metrics(port: int) -> dict[str, float]:
    """Parse /metrics into {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out
