# SPDX-License-Identifier: Apache-2.0
"""Inside the unit sandbox, after setpriv: what systemd applies last before it executes
ExecStart=. Run by the system python3; then execs the command.

  --syscalls FILE   SystemCallFilter= as an allow list (one name a line), others fail with
                    SystemCallErrorNumber= (--errno)
  --families N,...  RestrictAddressFamilies= as an allow list: socket() of any other family
                    fails with EAFNOSUPPORT (systemd's way: one rule per refused family number)
  --mdwe            MemoryDenyWriteExecute=: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN),
                    inherited across execve
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import sys

AF_MAX = 46


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--syscalls")
    p.add_argument("--errno", default="EPERM")
    p.add_argument("--families")
    p.add_argument("--mdwe", action="store_true")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args()
    if a.syscalls or a.families:
        import seccomp

        if a.families:
            allowed = {int(x) for x in a.families.split(",")}
            f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
            for af in range(AF_MAX + 1):
                if af not in allowed:
                    f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, af))
            f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GT, AF_MAX))
            f.load()
        if a.syscalls:
            f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, a.errno)))
            for name in open(a.syscalls).read().split():
                try:
                    f.add_rule(seccomp.ALLOW, name)
                except (RuntimeError, ValueError):
                    pass  # not a system call of this architecture (systemd skips those too)
            f.load()
    if a.mdwe:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
    os.execvp(a.cmd[0], a.cmd)


if __name__ == "__main__":
    main()
