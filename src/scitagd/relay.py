# SPDX-License-Identifier: Apache-2.0
"""Forwarding datagrams verbatim to further receivers (the daemon's `fireflyReceivers`, the
collector's `relay`), with loop protection: a datagram forwarded in the last `window` seconds
that comes back (A relays to B, B to A) is not forwarded again."""

from __future__ import annotations

import hashlib
import socket
import time
from typing import Callable, Dict, List, Tuple

__all__ = ["Relay"]


class Relay:
    """`sent(destination)` and `failed(destination, error)` count per target ("host:port")."""

    def __init__(self, targets: List[Tuple[str, int]], sent: Callable[[str], None],
                 failed: Callable[[str, str], None], window: float = 10.0, max_remembered: int = 200_000) -> None:
        self.targets = targets
        self.window = window
        self.max_remembered = max_remembered
        self._sent = sent
        self._failed = failed
        self.loops = 0
        self._recent: Dict[bytes, float] = {}
        self._socks: Dict[int, socket.socket] = {}

    def forward(self, data: bytes) -> bool:
        """Send `data` to every target; False (and nothing sent) when it is a loop."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        now = time.monotonic()
        recent = self._recent
        if recent.get(digest, 0.0) > now - self.window:
            self.loops += 1
            return False
        if len(recent) >= self.max_remembered:
            # bounded: forget what is out of the window, and if a flood filled it, everything
            self._recent = recent = {k: t for k, t in recent.items() if t > now - self.window}
            if len(recent) >= self.max_remembered:
                recent.clear()
        recent[digest] = now
        for host, port in self.targets:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = self._socks.get(fam)
            if sock is None:
                sock = self._socks[fam] = socket.socket(fam, socket.SOCK_DGRAM)
                sock.setblocking(False)
            label = f"{host}:{port}"
            try:
                sock.sendto(data, (host, port))
                self._sent(label)
            except OSError as e:
                # EAGAIN (buffer full), ENETUNREACH, EPERM from a firewall...: counted, never fatal
                self._failed(label, type(e).__name__)
        return True

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
