# SPDX-License-Identifier: Apache-2.0
"""`pidFile` (flowd-go's `pidPath`): this process's id, "%d\\n", mode 0644, for sites whose tools
read one (systemd does not need it).

Written atomically (a temporary file linked into place, so a reader never sees half a number and
two daemons starting together cannot both win), removed at exit if it still holds our id. A file
naming a live process that looks like scitagd or flowd stops the start: two daemons would fight
over the same ports and maps. A file naming a dead process, or one the kernel has since given to
an unrelated program (pid reuse after a reboot), is replaced with a line saying so.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Optional

from .errors import StartupError

__all__ = ["PidFile"]

log = logging.getLogger("scitagd.daemon")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def _cmdline(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(4096).replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return None


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.written = False

    def _read(self) -> Optional[int]:
        try:
            with open(self.path, "rb") as f:
                text = f.read(64).decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StartupError(f"pidFile {self.path}: cannot read: {e.strerror or e}") from None
        return int(text) if text.isdigit() else None

    def acquire(self) -> None:
        me = os.getpid()
        d = os.path.dirname(self.path) or "."
        tmp = os.path.join(d, f".{os.path.basename(self.path)}.{me}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, f"{me}\n".encode())
                os.fchmod(fd, 0o644)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StartupError(f"pidFile {self.path}: cannot write in {d}: {e.strerror or e}") from None
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # fails if the file exists: never two winners
                    self.written = True
                    return
                except FileExistsError:
                    pass
                old = self._read()
                if old == me:
                    self.written = True
                    return
                if old is not None and _alive(old):
                    cmd = _cmdline(old)
                    if cmd is None or "scitagd" in cmd or "flowd" in cmd:
                        what = cmd or "its command line cannot be read"
                        raise StartupError(f"pidFile {self.path}: process {old} is running ({what}): another daemon "
                                           "with this pid file; stop it first, or give this one another pidFile")
                    log.warning("pid file names a process that is not a daemon of ours (its id was reused), "
                                "replaced path=%s pid=%d command=%r", self.path, old, cmd[:200])
                elif old is not None:
                    log.info("stale pid file replaced path=%s pid=%d (not running)", self.path, old)
                else:
                    log.warning("pid file without a process id replaced path=%s", self.path)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            raise StartupError(f"pidFile {self.path}: another process keeps writing it")
        except OSError as e:
            raise StartupError(f"pidFile {self.path}: {e.strerror or e}") from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the file if it still holds our id (a successor may have taken it over)."""
        if not self.written:
            return
        try:
            if self._read() == os.getpid():
                os.unlink(self.path)
        except (OSError, StartupError) as e:
            if getattr(e, "errno", None) != errno.ENOENT:
                log.warning("pid file not removed path=%s error=%r", self.path, str(e))
        self.written = False
