# SPDX-License-Identifier: Apache-2.0
"""The marker tests' lab: scitagd's namespace lab plus a scitagd daemon running in A."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Dict

from scitagd.lab.netlab import A_ADDR, B_ADDR, TOOLS, Capture, NetNS
from scitagd.lab.netlab import Lab as BaseLab

__all__ = ["A_ADDR", "B_ADDR", "TOOLS", "Capture", "Lab", "NetNS"]


class Lab(BaseLab):
    def daemon(self, marker: str, backends: str = "", plugins: str = "",
               interfaces: str = "[a0]", top: str = "") -> Daemon:
        """scitagd in A with the named pipe, the marker and metrics; more sections as YAML lines
        indented under `backends:` / `plugins:`."""
        return Daemon(self, marker, backends, plugins, interfaces, top)


class Daemon:
    def __init__(self, lab: BaseLab, marker: str, backends: str, plugins: str, interfaces: str,
                 top: str = "") -> None:
        self.lab = lab
        self.pipe = lab.tmp / f"np-{len(lab.procs)}"
        self.log = lab.tmp / f"scitagd-{len(lab.procs)}.log"
        self.conf = lab.tmp / f"scitagd-{len(lab.procs)}.yaml"
        self.conf.write_text(f"""
plugins:
  namedPipe: {{pipePath: {self.pipe}}}
{plugins}
backends:
  marker: {{targetInterfaces: {interfaces}, pinPath: {lab.pin}, checkInterval: 0.5, {marker}}}
  prometheus: {{bindAddress: 127.0.0.1, port: 9464}}
{backends}
{top}
""")
        self.started = time.monotonic()
        self.proc = lab.start(lab.a, [sys.executable, "-m", "scitagd", "run", "--config",
                                      str(self.conf)], out=self.log, netonly=True)
        self.wait_log("scitagd.daemon started")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 15, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.text()
            if t.count(needle) >= count:
                return t
            if self.proc.poll() is not None:
                raise AssertionError(f"scitagd exited {self.proc.returncode}:\n{t}")
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in log:\n{self.text()}")

    def send(self, *lines: str) -> None:
        with open(self.pipe, "w") as f:
            for line in lines:
                f.write(line + "\n")

    def metrics_text(self) -> str:
        code = ("import urllib.request;print(urllib.request.urlopen("
                "'http://127.0.0.1:9464/metrics').read().decode())")
        return self.lab.a.exec(sys.executable, "-c", code).stdout

    def metrics(self) -> Dict[str, float]:
        out = {}
        for line in self.metrics_text().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
