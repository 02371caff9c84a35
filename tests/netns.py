"""Network namespaces for tests: unique names, always removed (also when a test fails)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Sequence

_counter = itertools.count()


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class NetNS:
    """`ip netns add` with a name unique to this process; `close()` deletes it and its /etc/netns."""

    def __init__(self, tag: str = "t") -> None:
        self.name = f"sctd-{tag}-{os.getpid()}-{next(_counter)}"
        sh("ip", "netns", "add", self.name)
        self.etc = Path("/etc/netns") / self.name
        self.exec("ip", "link", "set", "lo", "up")

    def cmd(self, *cmd: str) -> List[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def netonly(self, *cmd: str) -> List[str]:
        """Enter only the network namespace: `ip netns exec` also remounts /sys, which hides
        the host's bpffs (and with it pinned maps) from the command."""
        return ["nsenter", f"--net=/run/netns/{self.name}", *cmd]

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.cmd(*cmd), check=check)

    def popen(self, cmd: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd(*cmd), **kw)  # type: ignore[call-overload, no-any-return]

    def write_etc(self, name: str, text: str) -> Path:
        """A file that `ip netns exec` bind-mounts over /etc/NAME inside the namespace."""
        self.etc.mkdir(parents=True, exist_ok=True)
        p = self.etc / name
        with open(p, "w") as f:  # in place: the bind mount follows the inode
            f.write(text)
        return p

    def close(self) -> None:
        # Processes still inside would keep the namespace alive; tests stop theirs by pid first.
        sh("ip", "netns", "del", self.name, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)
