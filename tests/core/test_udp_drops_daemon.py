# SPDX-License-Identifier: Apache-2.0
"""The daemon's firefly listener says what the kernel dropped for it."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any, Callable

from ..conftest import DaemonProc, free_port, metrics


def test_firefly_listener_kernel_drops(run_daemon: Callable[..., DaemonProc], udp_receiver: Any) -> None:
    port, prom = free_port(socket.SOCK_DGRAM), free_port()
    d = run_daemon(f"""
plugins:
  firefly: {{bindAddress: 127.0.0.1, bindPort: {port}, receiveBuffer: 65536}}
backends:
  prometheus: {{port: {prom}}}
""")
    assert "udp receive buffer listener=127.0.0.1" in d.log()
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(2000):
                s.sendto(b"x" * 1000, ("127.0.0.1", port))
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    m = metrics(prom)
    drops = m['scitagd_firefly_udp_drops_total{address="127.0.0.1"}']
    assert drops > 0
    import time

    time.sleep(0.5)
    rejected = metrics(prom)['scitagd_rejected_total{reason="no_json",source="firefly"}']
    assert rejected + drops == 2000
