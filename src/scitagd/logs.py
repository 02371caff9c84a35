"""One line per event, `key=value` after the message, so that grep and log shippers both work."""

from __future__ import annotations

import logging
import sys
import time

import msgspec


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`logging:` section."""

    level: str = "info"
    flow_events: bool = True  # one INFO line per flow start/end

    def __post_init__(self) -> None:
        if self.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"level {self.level!r}: expected debug, info, warning or error")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\n", "\\n")
        line = f"{t}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.name} {msg}"
        if record.exc_info:
            # Only for bugs in scitagd itself, never for user input; kept on one line.
            line += " exception=" + repr(self.formatException(record.exc_info))
        return line


def setup(level: str = "info") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_Formatter())
    root.addHandler(h)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
