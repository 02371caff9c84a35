"""`plugins.namedPipe`: the line protocol StoRM writes (SPEC.md section 5).

  <start|end> <tcp|udp> <src-ip> <src-port> <dst-ip> <dst-port> <exp-id> <act-id>

Keys (sources/conf.py): pipePath (created as a FIFO if missing, must be one if present), mode,
group, maxLineBytes (longer lines are discarded with one warning); flowd-go's maxReaders and
buffSize (the read size, at least 4096) are accepted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat

from ..components import Host, Source
from ..errors import EventError
from ..events import FlowEvent, make_event
from .conf import NamedPipeConfig

__all__ = ["NamedPipeSource", "parse_line"]

log = logging.getLogger("scitagd.namedpipe")

_FIELDS = ("state", "protocol", "src-ip", "src-port", "dst-ip", "dst-port", "exp-id", "act-id")


def parse_line(line: str, source: str = "namedPipe") -> FlowEvent:
    parts = line.split()
    if len(parts) != 8:
        raise EventError("line", f"{len(parts)} fields: expected 8 "
                         "(state protocol src-ip src-port dst-ip dst-port exp-id act-id)",
                         "bad_field_count")
    nums = []
    for name, text in zip(("src-port", "dst-port", "exp-id", "act-id"),
                          (parts[3], parts[5], parts[6], parts[7])):
        if not text.isdigit():
            raise EventError(name, f"{text!r}: expected a decimal number", "not_a_number")
        nums.append(int(text))
    return make_event(parts[0], parts[1], parts[2], nums[0], parts[4], nums[1], nums[2], nums[3],
                      "", source, field_names=_FIELDS)


class NamedPipeSource(Source):
    name = "namedPipe"

    def __init__(self, host: Host, conf: NamedPipeConfig) -> None:
        super().__init__(host)
        self.conf = conf
        self._rfd = -1
        self._wfd = -1
        self._buf = b""
        self._discarding = False
        self._created = False

    async def start(self) -> None:
        path = self.conf.pipe_path
        try:
            st = os.stat(path)
            if not stat.S_ISFIFO(st.st_mode):
                raise OSError(f"{path} exists and is not a FIFO")
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkfifo(path)
            self._created = True
        os.chmod(path, int(self.conf.mode, 8))
        gid = self.conf.gid()
        if gid is not None:
            os.chown(path, -1, gid)
        self._rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        # Holding a write end open means we never see EOF when the last writer closes, so
        # writers can come and go without us reopening (and without a busy loop on EOF).
        self._wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self._rfd, self._readable)
        log.info("listening path=%s mode=%s gid=%s", path, self.conf.mode, gid)

    async def stop(self) -> None:
        if self._rfd >= 0:
            asyncio.get_running_loop().remove_reader(self._rfd)
            os.close(self._rfd)
            os.close(self._wfd)
            self._rfd = self._wfd = -1
        if self._created:
            try:
                os.unlink(self.conf.pipe_path)
            except OSError:
                pass

    def _readable(self) -> None:
        try:
            chunk = os.read(self._rfd, max(self.conf.buff_size, 4096))
        except BlockingIOError:
            return
        if chunk:
            self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        """Split into lines; a partial line waits for the rest of it."""
        data = self._buf + chunk
        lines = data.split(b"\n")
        self._buf = lines.pop()
        limit = self.conf.max_line_bytes
        for raw in lines:
            if self._discarding:
                self._discarding = False  # this is the tail of an overlong line
                continue
            self._line(raw, limit)
        if len(self._buf) > limit:
            if not self._discarding:
                self._reject("overlong", f"line longer than {limit} bytes discarded",
                             self._buf[:60])
            self._discarding = True
            self._buf = b""

    def _line(self, raw: bytes, limit: int) -> None:
        if len(raw) > limit:
            self._reject("overlong", f"line longer than {limit} bytes discarded", raw[:60])
            return
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            self._reject("not_ascii", "line is not ASCII text", raw[:60])
            return
        if not text or text.startswith("#"):
            return
        try:
            ev = parse_line(text, self.name)
        except EventError as e:
            self._reject(e.reason, str(e), raw[:120])
            return
        self.host.submit(ev)

    def _reject(self, reason: str, message: str, sample: bytes) -> None:
        self.counters.reject(reason)
        log.warning("line rejected reason=%s error=%r line=%r", reason, message,
                    sample.decode("utf-8", "replace"))
