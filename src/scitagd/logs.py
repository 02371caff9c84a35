# SPDX-License-Identifier: Apache-2.0
"""One line per event, `key=value` after the message, so that grep and log shippers both work."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Dict, List, TextIO, Union

__all__ = ["LEVELS", "FlowLog", "Throttle", "flow_log", "journal_stream", "setup", "stamp"]

_sec_prefix: List[Union[int, str]] = [-1, ""]


def stamp(t: float) -> str:
    sec = int(t)
    if sec != _sec_prefix[0]:
        _sec_prefix[0] = sec
        _sec_prefix[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_sec_prefix[1]}.{int((t - sec) * 1000):03d}Z"


# syslog priorities for the journal's `<N>` line prefix (sd-daemon(3))
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_journal = False  # stderr is the journal: it stamps lines itself and reads `<N>` as the priority


def journal_stream() -> bool:
    """Whether stderr is connected to the journal ($JOURNAL_STREAM names its device:inode)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in want:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def _lead(created: float, levelno: int, levelname: str) -> str:
    if _journal:
        return f"<{_PRIORITY.get(levelno, 6)}>{levelname}"
    return f"{stamp(created)} {levelname}"


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace("\n", "\\n")
        line = f"{_lead(record.created, record.levelno, record.levelname.lower())} {record.name} {msg}"
        if record.exc_info:
            # Only for bugs in scitagd itself, never for user input; kept on one line.
            line += " exception=" + repr(self.formatException(record.exc_info))
        return line


class Throttle:
    """At most one log line per key per `period` seconds: a flood of bad input must not become
    a flood of log lines (the counters still count every one). Keys are bounded by the caller
    (reasons are a fixed set)."""

    def __init__(self, period: float = 1.0) -> None:
        self.period = period
        self._last: Dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.period) >= self.period:
            if len(self._last) > 4096:
                self._last.clear()
            self._last[key] = now
            return True
        return False


class FlowLog:
    """Flow start/end lines, one per event, in the same format as every other line.

    Through stdlib logging a line costs 9.1 us (LogRecord, handler lock, a write each); at
    32,000 events/s that alone is 30% of a core. Here a line is formatted (~1 us) and buffered;
    the buffer is written by the daemon every 50 ms and before any other log line, so the
    order in the log stays the order of events.
    """

    def __init__(self) -> None:
        self.lines: List[str] = []
        self.enabled = False
        self.stream: TextIO = sys.stderr

    def add(self, message: str) -> None:
        self.lines.append(f"{_lead(time.time(), logging.INFO, 'info')} scitagd.flows {message}\n")

    def flush(self) -> None:
        if self.lines:
            data = "".join(self.lines)
            self.lines.clear()
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):
                pass


flow_log = FlowLog()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    def emit(self, record: logging.LogRecord) -> None:
        flow_log.flush()
        super().emit(record)


LEVELS = {"trace": "DEBUG", "debug": "DEBUG", "info": "INFO", "warn": "WARNING", "warning": "WARNING",
          "error": "ERROR"}


def setup(level: str = "info", flow_events: bool = True) -> None:
    """flowd-go's `warn` and `trace` are understood (trace is debug). Under systemd with stderr
    to the journal, lines carry their priority as `<N>` and no timestamp (the journal adds it)."""
    global _journal
    _journal = journal_stream()
    level = LEVELS.get(level.lower(), level.upper())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    h = _Handler(sys.stderr)
    flow_log.stream = sys.stderr
    flow_log.enabled = flow_events and logging.getLevelName(level) <= logging.INFO
    h.setFormatter(_Formatter())
    root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
