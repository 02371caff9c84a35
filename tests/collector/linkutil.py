# SPDX-License-Identifier: Apache-2.0
"""Helpers for the link tests: fireflies for IPv6 flows, the shared captures replayed over UDP."""

from __future__ import annotations

import socket
import time
from typing import Optional

from ..conftest import require_shared
from ..flowexport.pcaputil import DATA, udp_payloads

__all__ = ["replay", "v6_firefly"]


def v6_firefly(state: str, src: str, sport: int, dst: str, dport: int, exp: int = 3, act: int = 14,
               proto: str = "udp", start: Optional[float] = None, t: Optional[float] = None, sent: int = 0,
               received: int = 0, host: str = "site.example") -> bytes:
    """A firefly as XRootD sends it (syslog header, RFC 5424), for an IPv6 flow."""
    def iso(x: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(x)) + f".{int(x % 1 * 1e6):06d}Z"

    start = time.time() - 5 if start is None else start
    lc = f'"state":"{state}","start-time":"{iso(start)}"'
    if t is not None:
        lc += f',"{"end-time" if state == "end" else "current-time"}":"{iso(t)}"'
    return (f'<134>1 - {host} xrootd - firefly-json - {{"version":1,"flow-lifecycle":{{{lc}}},'
            f'"flow-id":{{"afi":"ipv6","src-ip":"{src}","dst-ip":"{dst}","protocol":"{proto}",'
            f'"src-port":{sport},"dst-port":{dport}}},"context":{{"experiment-id":{exp},"activity-id":{act}}},'
            f'"usage":{{"sent":{sent},"received":{received}}}}}').encode()


def replay(name: str, port: int, host: str = "::1", gap: float = 0.002) -> int:
    """The capture's exporter datagrams to host:port, in order (a small gap: the receive buffer
    of a loaded test machine); returns how many were sent."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    n = 0
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        for _src, _dport, payload, _ts in udp_payloads(require_shared(DATA / name)):
            s.sendto(payload, (host, port))
            n += 1
            time.sleep(gap)
    return n
