# SPDX-License-Identifier: Apache-2.0
"""What the kernel throws away is said: the effective receive buffer at start (a warning naming
net.core.rmem_max when the kernel capped it), and the socket's drop count as a metric."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

from ..conftest import IS_ROOT, free_port, http, metrics
from ..hostile.test_collector_units import firefly
from .test_collector import CollectorProc, collector  # noqa: F401  (fixture)


def test_kernel_drops_are_counted(collector: Callable[..., CollectorProc]) -> None:  # noqa: F811
    c = collector()
    c.stop()
    c.conf.write_text(c.conf.read_text().replace(f"port: {c.udp}}}", f"port: {c.udp}, receiveBuffer: 65536}}"))
    c.start()
    assert c.proc is not None
    os.kill(c.proc.pid, signal.SIGSTOP)  # the collector reads nothing: its buffer fills
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(3000):
                s.sendto(firefly("start", sport=1 + i), ("127.0.0.1", c.udp))
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)
    c.wait(lambda: c.metrics().get('scitagd_collector_udp_drops_total{address="::"}', 0) > 0)
    m = c.metrics()
    drops = m['scitagd_collector_udp_drops_total{address="::"}']
    got = m['scitagd_collector_datagrams_total{transport="udp"}']
    assert got + drops == 3000, (got, drops)  # every datagram sent is either received or counted as dropped
    text = c.log.read_text()
    assert "udp receive buffer listener=[::]" in text


@pytest.mark.skipif(not IS_ROOT, reason="needs root (to show the difference CAP_NET_ADMIN makes)")
def test_capped_buffer_is_said_and_forced_with_cap_net_admin() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="scitagd-udp-"))  # pytest's tmp is 0700: nobody must read here
    try:
        _capped(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _capped(tmp_path: Path) -> None:
    rmem = int(Path("/proc/sys/net/core/rmem_max").read_text())
    want = rmem * 4
    conf = tmp_path / "c.yaml"
    http_port, udp = free_port(), free_port(socket.SOCK_DGRAM)
    conf.write_text(f"collector:\n  udp: {{bindAddresses: [127.0.0.1], port: {udp}, receiveBuffer: {want}}}\n"
                    f"  store: {{path: {tmp_path}/s.sqlite}}\n  http: {{port: {http_port}}}\n")
    conf.chmod(0o644)
    tmp_path.chmod(0o777)
    for who in ("root", "nobody"):
        log = tmp_path / f"{who}.log"
        cmd = [sys.executable, "-m", "scitagd", "collector", "--config", str(conf)]
        if who == "nobody":
            cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                   "--bounding-set=-all", *cmd]
        with open(log, "wb") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    if http("GET", f"http://127.0.0.1:{http_port}/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            text = log.read_text()
            if who == "root":
                assert f"bytes={want} forced=True" in text, text
            else:
                assert "udp receive buffer capped by the kernel" in text and f"net.core.rmem_max={want}" in text, text
            assert metrics(http_port)['scitagd_collector_udp_drops_total{address="127.0.0.1"}'] == 0
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(15)
