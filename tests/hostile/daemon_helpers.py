# SPDX-License-Identifier: Apache-2.0
"""Shared by the daemon-side hostile-input tests: a daemon subprocess (optionally with a small
RLIMIT_NOFILE), a responsiveness probe and attackers, each in a process of its own.

The probe measures the daemon's event loop from outside: every 20 ms it sends a firefly (start,
then end, of one flow) to the daemon's firefly listener and waits for the daemon's firefly to
reach it as a collector. A stall of S shows as a round trip of at least S - 20 ms. The machine is
shared (load averages of 15 on 2 cores were seen): a round trip also holds the time the daemon's
loop thread and the probe sat runnable on a run queue, which the kernel reports in
/proc/<pid>/schedstat (run_delay). `stall` is the longest round trip less that waiting, i.e.
the time the daemon's loop ran other work or blocked; `max_rtt` is the raw figure. The longest
gap between answers and the probe's own lateness are reported too.

Run as `python -m tests.hostile.daemon_helpers probe|slowloris|idle ...` (from the repository).
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from ..conftest import REPO, DaemonProc, UdpReceiver, free_port, json_body

PROBE_SRC_PORT = 7  # the probe's flow: no test flow uses this port
STALL_LIMIT = 0.100  # seconds: what "the loop keeps answering" means here (longest round trip)


def body_of(datagram: bytes) -> Dict[str, Any]:
    return json_body(datagram)  # type: ignore[no-any-return]


def firefly(state: str, src_port: int, dst_port: int = 40000, exp: int = 2, act: int = 3,
            src_ip: str = "127.0.0.1", dst_ip: str = "127.0.0.2", app: str = "hostile-test") -> bytes:
    """A valid firefly (syslog header and JSON) the daemon turns into a flow event."""
    t = "2026-11-25T16:34:07.373828+00:00"
    lc = {"state": state, "start-time": t, "current-time": t}
    if state == "end":
        lc["end-time"] = t
    doc = {"version": 1, "flow-lifecycle": lc,
           "flow-id": {"afi": "ipv6" if ":" in src_ip else "ipv4", "src-ip": src_ip, "dst-ip": dst_ip,
                       "protocol": "tcp", "src-port": src_port, "dst-port": dst_port},
           "context": {"experiment-id": exp, "activity-id": act, "application": app}}
    return b"<134>1 - host xrootd - firefly-json - " + json.dumps(doc).encode()


def start_daemon(tmp_path: Path, config: str, name: str = "d", nofile: Optional[int] = None,
                 wait_for: Optional[str] = "scitagd.daemon started") -> DaemonProc:
    """`scitagd run` in a subprocess; `nofile` sets its RLIMIT_NOFILE (soft and hard) first."""
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(config)
    log_path = tmp_path / f"{name}.log"

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log_path, "w") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "scitagd", "run", "--config", str(conf)],
                                stdout=logf, stderr=subprocess.STDOUT, cwd=tmp_path, preexec_fn=limit)
    d = DaemonProc(proc, log_path, conf)
    if wait_for:
        d.wait_log(wait_for, timeout=20)
    return d


def clean_log(text: str) -> None:
    """No traceback at any level, and nothing aiohttp or asyncio said on its own."""
    for needle in ("Traceback", "exception=", " error aiohttp", " error asyncio", "Task exception",
                   "Exception in callback", "--- Logging error ---"):
        assert needle not in text, f"{needle!r} in the daemon log:\n" + text[-4000:]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def recv_flows(rx: UdpReceiver, want: Sequence[Tuple[str, int]], timeout: float = 10.0) -> Dict[Tuple[str, int], int]:
    """Collect fireflies at `rx` until every (state, src-port) in `want` came (probe flows are
    skipped); returns how often each (state, src-port) arrived."""
    missing = set(want)
    seen: Dict[Tuple[str, int], int] = {}
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        for d in rx.recv(1, timeout=max(0.01, deadline - time.monotonic())):
            doc = body_of(d)
            k = (doc["flow-lifecycle"]["state"], doc["flow-id"]["src-port"])
            if k[1] == PROBE_SRC_PORT:
                continue
            seen[k] = seen.get(k, 0) + 1
            missing.discard(k)
    return seen


@dataclass
class Stack:
    """A daemon with the firefly source (and whatever `plugins` adds), its fireflies sent only to
    collectors on loopback: the probe and `rx` (never to a flow's peer: mutated fireflies may
    name any address)."""

    d: DaemonProc
    rx: UdpReceiver
    probe: Probe
    ff: int
    prom: int
    api: int

    def metrics(self) -> Dict[str, float]:
        from ..conftest import metrics

        return metrics(self.prom)

    def rejected(self, source: str) -> Dict[str, float]:
        m = self.metrics()
        out = {}
        for k, v in m.items():
            if k.startswith("scitagd_rejected_total{") and f'source="{source}"' in k:
                out[k.split('reason="')[1].split('"')[0]] = v
        return out


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    made: List[Any] = []

    def make(plugins: str = "", nofile: Optional[int] = None, extra: str = "") -> Stack:
        probe = Probe()
        made.append(probe)
        rx = UdpReceiver("127.0.0.1")
        made.append(rx)
        ff, prom, api = free_port(socket.SOCK_DGRAM), free_port(), free_port()
        conf = (f"plugins:\n  firefly: {{bindAddress: 127.0.0.1, bindPort: {ff}}}\n{plugins.format(api=api)}"
                f"backends:\n  firefly: {{sendToPeer: false, collectors: ['127.0.0.1:{probe.port}', "
                f"'127.0.0.1:{rx.port}']}}\n  prometheus: {{port: {prom}}}\n{extra}")
        d = start_daemon(tmp_path, conf, f"d{len(made)}", nofile=nofile)
        made.append(d)
        probe.begin(ff, d.proc.pid)
        return Stack(d, rx, probe, ff, prom, api)

    yield make
    for x in reversed(made):
        if isinstance(x, Probe):
            x.kill()
        elif isinstance(x, DaemonProc):
            x.stop()
        else:
            x.close()


# --- helper processes -----------------------------------------------------------------------


class Helper:
    """A helper process spoken to by lines: it prints 'ready ...', takes 'stop', prints JSON."""

    def __init__(self, args: List[str], nice: int = 0) -> None:
        def setup() -> None:
            if nice:
                try:
                    os.nice(nice)
                except OSError:
                    pass

        self.proc = subprocess.Popen([sys.executable, "-m", "tests.hostile.daemon_helpers", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True,
                                     preexec_fn=setup)
        self.ready = self._line(30).split()[1:]

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            self.kill()
            raise AssertionError(f"helper {self.proc.args} said nothing in {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"helper {self.proc.args} exited {self.proc.wait()}")
        return line

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 60) -> Dict[str, Any]:
        self.say("stop")
        out = json.loads(self._line(timeout))
        self.proc.wait(10)
        return out  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Probe(Helper):
    """The loop's responsiveness, seen from outside (module docstring). Bind first (its port is
    the daemon's collector), `begin()` when the daemon is up, `stop()` for the figures."""

    def __init__(self) -> None:
        super().__init__(["probe"], nice=-5)
        self.port = int(self.ready[0])
        self.ff_port = 0

    def begin(self, ff_port: int, pid: int) -> None:
        self.ff_port = ff_port
        self.say(f"begin {ff_port} {pid}")
        line = self._line(20)
        assert line.startswith("probing"), line

    def stop(self, timeout: float = 60) -> Dict[str, Any]:
        out = super().stop(timeout)
        assert out["answered"] > 0, out
        return out


def assert_responsive(stats: Dict[str, Any], what: str) -> None:
    from ..figures import record

    record(f"daemon {what}", stall_ms=round(stats["stall"] * 1000, 1), probes=stats["answered"], lost=stats["lost"])
    assert stats["lost"] == 0 and stats["stall"] < STALL_LIMIT, (
        f"{what}: the daemon's loop stalled: {stats}")


@dataclass
class Attack:
    """An attacker process (nice 10: on a real network it would not share our CPU)."""

    helper: Helper

    @classmethod
    def start(cls, mode: str, port: int, n: int, *extra: str) -> Attack:
        return cls(Helper([mode, str(port), str(n), *extra], nice=10))

    @property
    def opened(self) -> int:
        return int(self.helper.ready[0])

    def stop(self) -> Dict[str, Any]:
        return self.helper.stop()


# --- the processes' own code ----------------------------------------------------------------


def _probe_main() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # it also gets every test flow's firefly
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    print("ready", rx.getsockname()[1], flush=True)
    cmd = sys.stdin.readline().split()
    target = ("127.0.0.1", int(cmd[1]))
    waits = (f"/proc/{cmd[2]}/schedstat", "/proc/self/schedstat")
    # wait until the daemon answers at all
    deadline = time.monotonic() + 15
    answered = False
    while not answered and time.monotonic() < deadline:
        answered = _round_trip(tx, rx, target, "start", 0.5) is not None
        if answered:
            answered = _round_trip(tx, rx, target, "end", 0.5) is not None
    print("probing" if answered else "probing-failed", flush=True)
    interval = 0.02
    rtts: List[float] = []
    raw: List[float] = []
    lost = 0
    max_gap = 0.0
    max_late = 0.0
    last_answer = time.monotonic()
    state = "start"
    next_t = time.monotonic()
    while True:
        r, _, _ = select.select([sys.stdin], [], [], max(0.0, next_t - time.monotonic()))
        if r:
            break  # 'stop'
        max_late = max(max_late, time.monotonic() - next_t)
        next_t += interval
        w0 = _run_delay(waits)
        rtt = _round_trip(tx, rx, target, state, 2.0)
        now = time.monotonic()
        if rtt is None:
            lost += 1
            continue
        raw.append(rtt)
        rtts.append(max(0.0, rtt - (_run_delay(waits) - w0)))
        max_gap = max(max_gap, now - last_answer)
        last_answer = now
        state = "end" if state == "start" else "start"
        if next_t < now:
            next_t = now  # after a slow answer: no burst to catch up
    rtts.sort()
    raw.sort()
    out = {"answered": len(rtts), "lost": lost, "max_rtt": raw[-1] if raw else None,
           "p50_rtt": raw[len(raw) // 2] if raw else None, "max_gap": max_gap, "probe_late": max_late,
           "stall": rtts[-1] if rtts else 9.9}
    print(json.dumps(out), flush=True)


_MARK = b'"src-port":%d,' % PROBE_SRC_PORT


def _run_delay(paths: Tuple[str, ...]) -> float:
    """Seconds the given tasks have waited on a run queue so far (schedstat's second field)."""
    total = 0
    for p in paths:
        try:
            with open(p) as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def _round_trip(tx: socket.socket, rx: socket.socket, target: Tuple[str, int], state: str,
                timeout: float) -> Optional[float]:
    t0 = time.monotonic()
    tx.sendto(firefly(state, PROBE_SRC_PORT, 9, src_ip="127.0.0.1", dst_ip="127.0.0.1"), target)
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([rx], [], [], left)
        if not r:
            return None
        data = rx.recv(65535)
        if _MARK not in data:
            continue  # a test flow's firefly: skipped without parsing
        doc = body_of(data)
        if doc["flow-id"]["src-port"] == PROBE_SRC_PORT and doc["flow-lifecycle"]["state"] == state:
            return time.monotonic() - t0


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _connections(port: int, n: int, first: bytes) -> Iterator[socket.socket]:
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            if first:
                s.sendall(first)
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        yield s


def _hold_main(mode: str, port: int, n: int) -> None:
    """Open n connections, each with a half-sent request head (slowloris) or nothing (idle),
    keep them until 'stop', then say how many the server had closed."""
    _raise_nofile()
    first = b"POST /api/v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-a: " \
        if mode == "slowloris" else b""
    t0 = time.monotonic()
    socks = list(_connections(port, n, first))
    print("ready", len(socks), f"{time.monotonic() - t0:.3f}", flush=True)
    trickled = 0
    while True:
        r, _, _ = select.select([sys.stdin], [], [], 0.5)
        if r:
            break
        if mode == "slowloris":  # one more byte now and then: never a whole head
            for s in socks:
                try:
                    s.send(b"a")
                    trickled += 1
                except OSError:
                    pass
    closed = 0
    for s in socks:
        try:
            data = s.recv(65536)
            closed += data == b"" or b"HTTP/1.1 4" in data
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    print(json.dumps({"opened": len(socks), "closed_by_server": closed, "trickled": trickled}), flush=True)


def main(argv: List[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if argv[0] == "probe":
        _probe_main()
    elif argv[0] in ("slowloris", "idle"):
        _hold_main(argv[0], int(argv[1]), int(argv[2]))
    else:
        raise SystemExit(f"unknown helper {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

