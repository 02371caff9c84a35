# SPDX-License-Identifier: Apache-2.0
"""systemd's notify protocol (sd_notify(3)): a datagram to $NOTIFY_SOCKET, a few lines, no
dependency. Under `Type=notify` the service is started once READY=1 is sent (every listener
bound, the marker attached); STATUS= is what `systemctl status` shows; with `WatchdogSec=`,
WATCHDOG=1 keep-alives from the event loop itself let systemd restart a loop that is stuck.
Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional

__all__ = ["Notifier"]

log = logging.getLogger("scitagd.systemd")


class Notifier:
    def __init__(self, environ: Optional[dict[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: Optional[str] = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]  # abstract namespace
        elif path.startswith("/"):
            self.address = path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # the watchdog is ours when no WATCHDOG_PID is given, or it names this process
        self.watchdog_interval: Optional[float] = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2  # keep-alives at half the timeout, as systemd advises
        self._sock: Optional[socket.socket] = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as e:
            log.warning("cannot notify systemd socket=%r error=%r", self.address.replace("\0", "@"), str(e))
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
