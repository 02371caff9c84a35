# SPDX-License-Identifier: Apache-2.0
"""Load generator and receiver for the firefly pipeline benchmark, each run in its own process.

The sender paces by the clock in small bursts (it sleeps between them, never busy-waits) so that
it does not steal the core the daemon under test runs on; the receiver only counts and stamps.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any, Dict, List, Tuple

SEQ = re.compile(rb'"state":\s*"(\w+)".*"src-port":\s*(\d+),\s*"dst-port":\s*(\d+)', re.S)


def seq_ports(seq: int) -> Tuple[int, int]:
    return 1 + seq % 65000, 1 + seq // 65000


def port_seq(sport: int, dport: int) -> int:
    return (dport - 1) * 65000 + (sport - 1)


def make_firefly(seq: int, state: str, src: str, dst: str) -> bytes:
    """An XRootD-shaped firefly (nil timestamp, syslog header): what both daemons must read."""
    sport, dport = seq_ports(seq)
    end = ',"end-time":"2026-11-25T16:34:07.449149+00:00"' if state == "end" else ""
    return (
        '<134>1 - bench.local xrootd - firefly-json - {"version":1,"flow-lifecycle":{"state":"'
        + state
        + '","current-time":"2026-11-25T16:34:07.373828+00:00","start-time":'
        '"2026-11-25T16:34:07.373828+00:00"' + end + '},"usage":{"received":186,"sent":56},'
        '"netlink":{"rtt":0.020},"context":{"experiment-id":2,"activity-id":3,"application":"xrdcp"},'
        f'"flow-id":{{"afi":"ipv4","src-ip":"{src}","dst-ip":"{dst}","protocol":"tcp",'
        f'"src-port":{sport},"dst-port":{dport}}}}}'
    ).encode()


def sender(target: Tuple[str, int], datagrams: List[bytes], rate: float, out: Any,
           cpu: int | None) -> None:
    if cpu is not None:
        import os

        os.sched_setaffinity(0, {cpu})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    stamps = [0] * len(datagrams)
    n = len(datagrams)
    i = 0
    mono = time.monotonic_ns
    t0 = mono()
    while i < n:
        due = min(n, int((mono() - t0) * rate / 1e9) + 1)
        while i < due:
            stamps[i] = mono()
            sock.sendto(datagrams[i], target)
            i += 1
        if i < n:
            time.sleep(0.0002)
    elapsed = (mono() - t0) / 1e9
    out.send((stamps, elapsed))
    out.close()


def receiver(bind: Tuple[str, int], ready: Any, out: Any, cpu: int | None, idle: float) -> None:
    if cpu is not None:
        import os

        os.sched_setaffinity(0, {cpu})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind(bind)
    ready.send(True)
    got: Dict[Tuple[int, bytes], int] = {}
    mono = time.monotonic_ns
    sock.settimeout(30.0)  # generous wait for the first datagram
    first = True
    while True:
        try:
            data = sock.recv(4096)
        except socket.timeout:
            break
        t = mono()
        if data == b"STOP":
            break
        m = SEQ.search(data)
        if m:
            got[(port_seq(int(m.group(2)), int(m.group(3))), m.group(1))] = t
        if first:
            sock.settimeout(idle)
            first = False
    out.send(got)
    out.close()
