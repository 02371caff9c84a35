# SPDX-License-Identifier: Apache-2.0
"""Network namespace labs: two hosts joined by veth, real processes in each, a raw capture.

Used by the tests, the demo and the benchmarks. Only namespaces this process creates, with
unique names, and only their addresses (a ULA prefix) are used; everything is removed on close,
whatever happened: processes by the pids started here, then the namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .tools import Packet, read_capture

__all__ = ["TOOLS", "Capture", "Lab", "NetNS", "sh"]

TOOLS = [sys.executable, "-m", "scitagd.lab.tools"]
A_ADDR, B_ADDR = "fd5c:17::1", "fd5c:17::2"

_counter = itertools.count()
_LOCK_PATH = "/run/lock/scitagd-netlab.lock"
_lock_fd = -1
_lock_users = 0


def _lab_lock() -> None:
    """Labs on one host share the root cgroup's sock_ops programs (a watcher detaches another
    scitagd's leftover there): one lab at a time per host, re-entrant within a process."""
    global _lock_fd, _lock_users
    import fcntl

    if _lock_users == 0:
        os.makedirs(os.path.dirname(_LOCK_PATH), exist_ok=True)
        _lock_fd = os.open(_LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(_lock_fd, fcntl.LOCK_EX)
    _lock_users += 1


def _lab_unlock() -> None:
    global _lock_fd, _lock_users
    _lock_users -= 1
    if _lock_users == 0 and _lock_fd >= 0:
        os.close(_lock_fd)  # releases the flock
        _lock_fd = -1


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
        p: subprocess.Popen[bytes] = subprocess.Popen(self.cmd(*cmd), **kw)  # type: ignore[call-overload]
        return p

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


class Lab:
    def __init__(self, tmp: Path, mtu: int = 1500) -> None:
        self.tmp = tmp
        self.procs: List[subprocess.Popen[bytes]] = []
        _lab_lock()
        try:
            self.a = NetNS("a")
            self.b = NetNS("b")
        except Exception:
            _lab_unlock()
            raise
        self._locked = True
        self.pin = f"/sys/fs/bpf/scitagd-lab-{os.getpid()}-{self.a.name.rsplit('-', 1)[1]}"
        try:
            sh("ip", "link", "add", "a0", "netns", self.a.name, "type", "veth", "peer", "name", "b0",
               "netns", self.b.name)
            for ns, dev, addr in ((self.a, "a0", A_ADDR), (self.b, "b0", B_ADDR)):
                ns.exec("ip", "link", "set", dev, "mtu", str(mtu), "up")
                ns.exec("ip", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
        except Exception:
            self.close()
            raise

    # --- processes -----------------------------------------------------------------------

    def start(self, ns: NetNS, args: List[str], out: Optional[Path] = None,
              netonly: bool = False) -> subprocess.Popen[bytes]:
        stdout: Any = open(out, "wb") if out else subprocess.PIPE
        cmd = ns.netonly(*args) if netonly else ns.cmd(*args)
        p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def tool(self, ns: NetNS, *args: str, timeout: float = 60) -> Dict[str, Any]:
        r = subprocess.run(ns.cmd(*TOOLS, *args), capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"labtools {args} failed: {r.stdout} {r.stderr}")
        return dict(json.loads(r.stdout.strip().splitlines()[-1]))

    def server(self, port: int) -> subprocess.Popen[bytes]:
        p = self.start(self.b, [*TOOLS, "tcp-server", B_ADDR, str(port)])
        assert p.stdout is not None
        line = p.stdout.readline()
        assert b"listening" in line, line
        return p

    @staticmethod
    def result(p: subprocess.Popen[bytes], timeout: float = 60) -> Dict[str, Any]:
        out, _ = p.communicate(timeout=timeout)
        return dict(json.loads(out.decode().strip().splitlines()[-1]))

    # --- capture in B ---------------------------------------------------------------------

    def capture(self, iface: str = "b0") -> Capture:
        return Capture(self, iface)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()
        self.a.close()
        self.b.close()
        shutil.rmtree(self.pin, ignore_errors=True)
        state = Path("/run/scitagd") / f"{Path(self.pin).name}-state.json"
        state.unlink(missing_ok=True)
        if self._locked:
            self._locked = False
            _lab_unlock()


class Capture:
    def __init__(self, lab: Lab, iface: str) -> None:
        self.file = lab.tmp / f"cap-{iface}-{len(lab.procs)}.bin"
        self.proc = lab.start(lab.b, [*TOOLS, "capture", iface, str(self.file)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.file.exists() and self.file.stat().st_size >= 6:
                return
            time.sleep(0.02)
        raise AssertionError("capture did not start")

    def stop(self) -> List[Packet]:
        time.sleep(0.2)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        return list(read_capture(str(self.file)))
