# SPDX-License-Identifier: Apache-2.0
"""Collector processes for the end-to-end tests: `scitagd collector` with an SQLite or a
ClickHouse store (one process, or collector.workers), fireflies sent over UDP from many source
ports (so SO_REUSEPORT spreads them over the workers), and the API read back."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from scitagd.lab.util import stop_process, wait_for
from tests.conftest import free_port, http, metrics

from .data import FireflyRow


def iso(us: int) -> str:
    return datetime.fromtimestamp(us // 1_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{us % 1_000_000:06d}+00:00"


def wire(r: FireflyRow) -> bytes:
    """The firefly a producer would send for this row (its reporter as the syslog HOSTNAME)."""
    lc: Dict[str, Any] = {"state": r.state, "start-time": iso(r.start_us)}
    lc["end-time" if r.state == "end" else "current-time"] = iso(r.t_us)
    ctx: Dict[str, Any] = {"experiment-id": r.exp, "activity-id": r.act}
    if r.app:
        ctx["application"] = r.app
    body = {"version": 1, "flow-lifecycle": lc, "usage": {"sent": r.sent, "received": r.received}, "context": ctx,
            "flow-id": {"afi": "ipv6" if ":" in r.src else "ipv4", "src-ip": r.src, "dst-ip": r.dst,
                        "protocol": r.proto, "src-port": r.sport, "dst-port": r.dport}}
    return f"<134>1 - {r.reporter} xrootd - firefly-json - {json.dumps(body)}".encode()


class Receiver:
    """A `scitagd collector` process. `store` is the YAML of collector.store."""

    def __init__(self, tmp: Path, name: str, store: str, workers: int = 1, extra: str = "") -> None:
        self.name = name
        self.udp = free_port(socket.SOCK_DGRAM)
        self.http = free_port()
        self.conf = tmp / f"{name}.yaml"
        self.conf.write_text(f"""
collector:
  udp: {{bindAddresses: ["127.0.0.1"], port: {self.udp}}}
  store: {store}
  http: {{port: {self.http}}}
  trustedRelays: ["127.0.0.0/8"]  # the tests' senders: their syslog HOSTNAME is the reporter
  activeTimeout: 315360000  # nothing expires: both stores say "active" for flows without an end
  workers: {workers}
{extra}
""")
        self.log = tmp / f"{name}.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "scitagd", "collector", "--config", str(self.conf)],
                                         stdout=out, stderr=subprocess.STDOUT)
        self.wait(lambda: self.healthy(), timeout, "not healthy")

    def healthy(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            status, body = http("GET", self.url("/healthz"))
        except OSError:
            return False
        if status != 200:
            return False
        return all(w["alive"] for w in body.get("workers", []))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def api(self, path: str) -> Any:
        status, body = http("GET", self.url(path))
        assert status == 200, body
        return body

    def api_status(self, path: str) -> Tuple[int, Any]:
        return http("GET", self.url(path))

    def metrics(self) -> Dict[str, float]:
        return metrics(self.http)

    def wait(self, cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        wait_for(cond, timeout, f"{self.name}: {what}", 0.1, lambda: f"log:\n{self.log.read_text()[-5000:]}")

    def stop(self) -> int:
        assert self.proc is not None
        stop_process(self.proc, 60)
        return int(self.proc.returncode)


def send(port: int, datagrams: List[bytes], sources: int = 1, pace: int = 200) -> None:
    """From `sources` sockets (distinct source ports: the kernel hashes each to a worker), in
    order, round robin, pausing every `pace` datagrams so loopback buffers never overflow."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sources)]
    try:
        for i, d in enumerate(datagrams):
            socks[i % sources].sendto(d, ("127.0.0.1", port))
            if i % pace == pace - 1:
                time.sleep(0.01)
    finally:
        for s in socks:
            s.close()


def received(c: Receiver) -> int:
    return int(c.metrics().get('scitagd_collector_datagrams_total{transport="udp"}', 0))


def settled(c: Receiver) -> bool:
    """Everything received is handed to the store and written."""
    m = c.metrics()
    return m.get("scitagd_collector_pending_rows", 0) == 0 and m.get("scitagd_collector_clickhouse_buffered", 0) == 0
