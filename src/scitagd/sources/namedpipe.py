# SPDX-License-Identifier: Apache-2.0
"""`plugins.namedPipe`: the line protocol StoRM writes (SPEC.md section 5).

  <start|end> <tcp|udp> <src-ip> <src-port> <dst-ip> <dst-port> <exp-id> <act-id>

Keys (sources/conf.py): pipePath, mode, group, maxLineBytes (longer lines are discarded with
one warning), checkInterval; flowd-go's maxReaders and buffSize (the read size) are accepted.

The FIFO is created and checked through file descriptors, never by path once it exists: in a
directory others can write to, a path-based chmod/chown could be raced onto any file. At start,
pipePath is created with mkfifo (mode 0600) if missing, then opened with O_NOFOLLOW and fstat'ed:
it must be a FIFO owned by our user (a symlink, a regular file, a device or another user's FIFO
is refused, naming what was found); mode and group are then set with fchmod/fchown on that
descriptor. Every checkInterval the path is compared with the descriptor (st_dev, st_ino): if the
FIFO was removed (a writer would then create a regular file and its lines would be lost) or
replaced, whatever is there is renamed to `<pipePath>.stray` (its lines kept for the admin), the
FIFO is recreated the same way, and that is logged once.

Lines and writers. Several writers share the FIFO and the kernel keeps no boundaries between
them, so the rules are:
1. A line written whole in one write() of at most PIPE_BUF (4096) bytes is never interleaved
   with other writers' bytes (POSIX). That is what StoRM does, and it is always read intact.
2. A writer that writes one line in pieces while it holds the FIFO open gets it reassembled.
3. A fragment (bytes without their newline) left when every writer has closed the FIFO is
   discarded: one warning (rate-limited) and scitagd_rejected_total{reason="fragment"}; it can
   never be glued to the next writer's line. We know that every writer has gone because we hold
   our own write end only while no one else is known to write: when data arrives we drop it, so
   the last writer's close is seen as end-of-file; at end-of-file we take it again (otherwise the
   FIFO would read as end-of-file on every poll).
4. If writers overlap (a fragment, then another writer's whole line before the first one closed),
   the merged line cannot parse; its tail from the last `start|end tcp|udp ` is the whole line
   of the second writer (no other field can contain those words): that is taken, and the
   fragment counted as in 3.
A bad line is one warning (rate-limited per reason) and a counter; the next good line works.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import stat
from typing import Optional

from ..components import Host, Source
from ..errors import EventError
from ..events import FlowEvent, make_event
from ..logs import Throttle
from .conf import NamedPipeConfig

__all__ = ["NamedPipeSource", "parse_line"]

log = logging.getLogger("scitagd.namedpipe")

_FIELDS = ("state", "protocol", "src-ip", "src-port", "dst-ip", "dst-port", "exp-id", "act-id")
_LINE_START = re.compile(rb"(?:start|end) (?:tcp|udp) ")
_MAX_DIGITS = 9  # ports and ids: int() of thousands of digits raises instead


def parse_line(line: str, source: str = "namedPipe") -> FlowEvent:
    parts = line.split()
    if len(parts) != 8:
        raise EventError("line", f"{len(parts)} fields: expected 8 "
                         "(state protocol src-ip src-port dst-ip dst-port exp-id act-id)",
                         "bad_field_count")
    nums = []
    for name, text in zip(("src-port", "dst-port", "exp-id", "act-id"),
                          (parts[3], parts[5], parts[6], parts[7])):
        if not (text.isascii() and text.isdigit()) or len(text) > _MAX_DIGITS:
            raise EventError(name, f"{text[:20]!r}: expected a decimal number of at most {_MAX_DIGITS} "
                             "digits", "not_a_number")
        nums.append(int(text))
    return make_event(parts[0], parts[1], parts[2], nums[0], parts[4], nums[1], nums[2], nums[3],
                      "", source, field_names=_FIELDS)


def _what(st: os.stat_result) -> str:
    m = st.st_mode
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a regular file"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(m):
            return name
    return "not a FIFO"


class NamedPipeSource(Source):
    name = "namedPipe"

    def __init__(self, host: Host, conf: NamedPipeConfig) -> None:
        super().__init__(host)
        self.conf = conf
        self._rfd = -1
        self._wfd = -1  # our own write end, held only while no writer is known (rule 3)
        self._ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of our FIFO
        self._buf = b""
        self._discarding = False
        self._created = False
        self._checker: Optional[asyncio.Task[None]] = None
        self._throttle = Throttle(1.0)
        # at most 16 KiB (~270 StoRM lines, a few ms; 1,300 lines of junk) per wake-up: whatever
        # is written, the loop gets back to its other work quickly
        self._read_size = min(max(conf.buff_size, 4096), 16384)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        path = self.conf.pipe_path
        self._open(path)
        self._checker = asyncio.get_running_loop().create_task(self._check_loop(), name="namedpipe-check")
        log.info("listening path=%s mode=%s gid=%s", path, self.conf.mode, self.conf.gid())

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None
        self._close_fds()
        if self._created:
            try:
                st = os.lstat(self.conf.pipe_path)
                if (st.st_dev, st.st_ino) == self._ident:  # only our own FIFO, not what replaced it
                    os.unlink(self.conf.pipe_path)
            except OSError:
                pass

    def _open(self, path: str) -> None:
        """mkfifo if missing, open without following links, check, set mode and group by fd."""
        os.makedirs(os.path.dirname(path), exist_ok=True)  # also when a cleaner took the directory
        created = False
        try:
            os.mkfifo(path, 0o600)  # the final mode comes by fchmod, after the checks
            created = True
        except FileExistsError:
            pass
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise OSError(f"pipePath {path}: vanished while being opened") from None
        if not stat.S_ISFIFO(st.st_mode):
            # refuse before opening: opening a device can have effects of its own
            raise OSError(f"pipePath {path} exists and is {_what(st)}, not a FIFO: remove it, or point "
                          "pipePath elsewhere; scitagd creates the FIFO itself")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(f"pipePath {path} is a symbolic link: refused (it could point anywhere)") from None
            raise OSError(f"pipePath {path}: cannot open: {e.strerror}") from None
        try:
            fst = os.fstat(fd)
            if not stat.S_ISFIFO(fst.st_mode):
                raise OSError(f"pipePath {path} was replaced by {_what(fst)} while being opened: refused")
            if fst.st_uid != os.geteuid():
                raise OSError(f"pipePath {path} is a FIFO owned by uid {fst.st_uid}, not by scitagd's uid "
                              f"{os.geteuid()}: refused (its owner could read or redirect the flows); remove it "
                              "and scitagd creates its own")
            os.fchmod(fd, int(self.conf.mode, 8))
            gid = self.conf.gid()
            if gid is not None:
                try:
                    os.fchown(fd, -1, gid)
                except OSError as e:
                    raise OSError(f"group {self.conf.group!r}: cannot give the FIFO to gid {gid}: "
                                  f"{e.strerror}") from None
            wfd = self._reopen_write(fd, path)
        except BaseException:
            os.close(fd)
            if created:
                _unlink_if_same(path, (st.st_dev, st.st_ino))
            raise
        self._rfd, self._wfd = fd, wfd
        self._ident = (fst.st_dev, fst.st_ino)
        self._created = self._created or created
        asyncio.get_running_loop().add_reader(fd, self._readable)

    @staticmethod
    def _reopen_write(rfd: int, path: str) -> int:
        """A write end of the very FIFO `rfd` reads, whatever pipePath holds now."""
        flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            return os.open(f"/proc/self/fd/{rfd}", flags)
        except OSError:
            pass  # no /proc: by path, then make sure it is the same FIFO
        fd = os.open(path, flags | os.O_NOFOLLOW)
        a, b = os.fstat(fd), os.fstat(rfd)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            os.close(fd)
            raise OSError(f"pipePath {path} was replaced while being opened")
        return fd

    def _close_fds(self) -> None:
        if self._rfd >= 0:
            asyncio.get_running_loop().remove_reader(self._rfd)
            os.close(self._rfd)
            self._rfd = -1
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.conf.check_interval)
            try:
                self._check()
            except OSError as e:
                log.warning("named pipe check failed path=%s error=%r", self.conf.pipe_path, str(e))

    def _check(self) -> None:
        """Recreate the FIFO if pipePath no longer is ours."""
        path = self.conf.pipe_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            found = "missing"
        else:
            if (st.st_dev, st.st_ino) == self._ident and self._rfd >= 0:
                return
            if self._rfd < 0 and stat.S_ISFIFO(st.st_mode) and st.st_uid == os.geteuid():
                self._open(path)  # ours, after a failed reopen: just open it again
                log.warning("named pipe reopened path=%s", path)
                return
            found = _what(st) if not stat.S_ISFIFO(st.st_mode) else "another FIFO"
            stray = path + ".stray"
            os.replace(path, stray)  # renames the entry itself (a link is not followed)
            found += f", moved to {stray}"
        if self._rfd >= 0:
            self._drain()
        self._close_fds()
        self._open(path)
        self._created = True
        log.warning("named pipe recreated path=%s found=%s", path, found)

    # --- reading ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Read what the old FIFO still holds before it is closed."""
        for _ in range(64):
            try:
                chunk = os.read(self._rfd, self._read_size)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            self.feed(chunk)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._rfd, self._read_size)
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("named pipe read failed path=%s error=%r", self.conf.pipe_path, e.strerror)
            return
        if chunk:
            if self._wfd >= 0:
                # someone writes: let go of our write end, so that their last close reads as EOF
                os.close(self._wfd)
                self._wfd = -1
            self.feed(chunk)
            return
        # end of file: every writer has closed (rule 3)
        if self._buf:
            self._reject("fragment", "line without its newline discarded: every writer closed the FIFO",
                         self._buf[:60])
        self._buf = b""
        self._discarding = False
        try:
            self._wfd = self._reopen_write(self._rfd, self.conf.pipe_path)
        except OSError as e:
            # without it the reader would spin on end-of-file: close, the next check reopens
            log.warning("named pipe write end not reopened path=%s error=%r", self.conf.pipe_path, str(e))
            self._close_fds()

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
                self._reject("overlong", f"line longer than {limit} bytes discarded", self._buf[:60])
            self._discarding = True
            self._buf = b""

    def _line(self, raw: bytes, limit: int) -> None:
        if len(raw) > limit:
            self._reject("overlong", f"line longer than {limit} bytes discarded", raw[:60])
            return
        ev: Optional[FlowEvent] = None
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            ev = self._after_fragment(raw)
            if ev is None:
                self._reject("not_ascii", "line is not ASCII text", raw[:60])
                return
        else:
            if not text or text.startswith("#"):
                return
            try:
                ev = parse_line(text, self.name)
            except EventError as e:
                ev = self._after_fragment(raw)
                if ev is None:
                    self._reject(e.reason, str(e), raw[:120])
                    return
        self.host.submit(ev)

    def _after_fragment(self, raw: bytes) -> Optional[FlowEvent]:
        """Rule 4: another writer's fragment in front of a whole line. The line, or None."""
        last = None
        for m in _LINE_START.finditer(raw):
            last = m
        if last is None or last.start() == 0:
            return None
        try:
            ev = parse_line(raw[last.start():].decode("ascii"), self.name)
        except (UnicodeDecodeError, EventError):
            return None
        self._reject("fragment", "another writer's unfinished line in front of this one discarded",
                     raw[:last.start()][:60])
        return ev

    def _reject(self, reason: str, message: str, sample: bytes) -> None:
        self.counters.reject(reason)
        if self._throttle.allow(reason):
            log.warning("line rejected reason=%s error=%r line=%r", reason, message,
                        sample.decode("utf-8", "replace"))



def _unlink_if_same(path: str, ident: tuple[int, int]) -> None:
    """Remove the FIFO we made at `path` if it is still the one we made."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ident:
            os.unlink(path)
    except OSError:
        pass
