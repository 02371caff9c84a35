"""A two-host lab for marker tests: namespaces A and B joined by veth (a0 <-> b0), IPv6 only.

A runs scitagd (and the senders); B receives and captures what arrives on b0. Everything is
removed when the test ends, whatever happened: processes by the pids we started, then the
namespaces, the pinned maps and the state file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .netns import NetNS, sh
from .nettools import Packet, read_capture

NETTOOLS = str(Path(__file__).with_name("nettools.py"))
A_ADDR, B_ADDR = "fd5c:17::1", "fd5c:17::2"


class Lab:
    def __init__(self, tmp: Path, mtu: int = 1500) -> None:
        self.tmp = tmp
        self.procs: List[subprocess.Popen[bytes]] = []
        self.a = NetNS("a")
        self.b = NetNS("b")
        self.pin = f"/sys/fs/bpf/scitagd-test-{os.getpid()}-{self.a.name.rsplit('-', 1)[1]}"
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
        r = subprocess.run(ns.cmd(sys.executable, NETTOOLS, *args), capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"nettools {args} failed: {r.stdout} {r.stderr}")
        return dict(json.loads(r.stdout.strip().splitlines()[-1]))

    def server(self, port: int) -> subprocess.Popen[bytes]:
        p = self.start(self.b, [sys.executable, NETTOOLS, "tcp-server", B_ADDR, str(port)])
        assert p.stdout is not None
        line = p.stdout.readline()
        assert b"listening" in line, line
        return p

    @staticmethod
    def result(p: subprocess.Popen[bytes], timeout: float = 60) -> Dict[str, Any]:
        out, _ = p.communicate(timeout=timeout)
        return dict(json.loads(out.decode().strip().splitlines()[-1]))

    # --- scitagd in A --------------------------------------------------------------------

    def daemon(self, marker: str, extra: str = "", interfaces: str = "[a0]") -> Daemon:
        d = Daemon(self, marker, extra, interfaces)
        return d

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


class Daemon:
    def __init__(self, lab: Lab, marker: str, extra: str, interfaces: str) -> None:
        self.lab = lab
        self.pipe = lab.tmp / f"np-{len(lab.procs)}"
        self.log = lab.tmp / f"scitagd-{len(lab.procs)}.log"
        self.conf = lab.tmp / f"scitagd-{len(lab.procs)}.yaml"
        self.conf.write_text(f"""
plugins:
  namedPipe: {{pipePath: {self.pipe}}}
backends:
  marker: {{targetInterfaces: {interfaces}, pinPath: {lab.pin}, checkInterval: 0.5, {marker}}}
  prometheus: {{bindAddress: 127.0.0.1, port: 9464}}
{extra}
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

    def metrics(self) -> Dict[str, float]:
        code = ("import urllib.request;print(urllib.request.urlopen("
                "'http://127.0.0.1:9464/metrics').read().decode())")
        r = self.lab.a.exec(sys.executable, "-c", code)
        out = {}
        for line in r.stdout.splitlines():
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


class Capture:
    def __init__(self, lab: Lab, iface: str) -> None:
        self.file = lab.tmp / f"cap-{iface}-{len(lab.procs)}.bin"
        self.proc = lab.start(lab.b, [sys.executable, NETTOOLS, "capture", iface, str(self.file)])
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
