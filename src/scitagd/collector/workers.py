# SPDX-License-Identifier: Apache-2.0
"""`collector.workers: N`: N receiving processes on one UDP port, supervised by the parent.

Sockets: the parent binds them all, then hands them to the workers (inherited descriptors).
For each bind address it first binds the port plainly (no SO_REUSEPORT): that fails, naming
the key, when any other socket holds it, so a second collector cannot start beside this one;
then it binds N sockets with SO_REUSEPORT into one group (the kernel hashes each sender's
address and port to one of them) and gives socket i to worker i. Why the parent and not each
worker: a port in use or a forbidden port is one error at start, before any worker runs; and
the group never changes while the collector runs: a worker that dies leaves its socket open in
the parent, datagrams hashed to it wait in its receive buffer, and the restarted worker reads
them (sockets bound by the workers would close with them, their queued datagrams lost and the
group's hashing reshuffled). Exclusivity: no SO_REUSEADDR (open_udp_endpoint clears uvloop's);
Linux refuses SO_REUSEPORT binds by other users, and a socket of the same user that joins the
group anyway is noticed (scitagd_collector_udp_foreign_sockets, a warning). syslogTcp: one
listening socket, served by worker 0 (its connection limits stay as configured).

The parent: creates or checks the ClickHouse schema, serves the dashboard, API, /metrics and
/healthz, rebuilds traffic and applies retention; restarts a worker that dies (backoff 1 s
doubling to 60 s while they die within 30 s), stops them all on SIGTERM (each writes or spools
what it holds) and passes a reload on to them with the config text it validated. Workers
parse, account and write; every second each sends the parent what its counters grew by (JSON
lines over a socketpair), so /metrics sums them and a worker's restart never makes a counter go
back. A worker whose parent is gone stops (the control socket closes; PR_SET_PDEATHSIG too).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

from ..errors import ConfigError, StartupError
from ..netutil import bind_error, open_udp_endpoint, udp_listener, udp_table
from ..registry import RegistryHolder
from .conf import CollectorConfig, CollectorFile, load_text
from .service import Collector, _restart_needed
from .storeapi import IngestResult, StoreStats
from .tally import OTHER, Tally

__all__ = ["Supervisor", "WorkerCollector", "bind_shared_udp", "foreign_sockets", "main"]

log = logging.getLogger("scitagd.collector.workers")

REPORT_INTERVAL = 1.0  # seconds between a worker's reports to the parent
MAX_TAGS = 1000  # tags per report; beyond, folded into "other" (a flood of invented tags stays small)
MAX_LINE = 16 << 20
_COUNTERS = ("local_only", "store_rows", "store_errors", "store_flushes", "store_dropped", "store_refused",
             "relay_loops")
_COUNTER_DICTS = ("datagrams", "rejected", "tcp_refused", "relay_sent", "relay_failed")
_TALLY_DICTS = ("started", "ended", "expired", "active", "bytes")
_MAX_GAUGES = frozenset({"oldest_seconds"})  # the worst worker's, not the sum
_CHILD_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


# --- sockets -------------------------------------------------------------------------------

def bind_shared_udp(addr: str, port: int, n: int, receive_buffer: int) -> List[socket.socket]:
    """N sockets in one SO_REUSEPORT group on addr:port, after making sure nobody holds the port."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as probe:
        if fam == socket.AF_INET6 and addr == "::":
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            probe.bind((addr, port))
        except OSError as e:
            where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
            raise bind_error(e, "collector.udp.port", port, f"UDP {where}") from None
    out: List[socket.socket] = []
    try:
        for _ in range(n):
            out.append(udp_listener(addr, port, receive_buffer, key="collector.udp.port", reuse_port=True,
                                    buffer_key="collector.udp.receiveBuffer"))
    except OSError:
        for s in out:
            s.close()
        raise
    return out


def foreign_sockets(port: int, ours: List[socket.socket]) -> int:
    """UDP sockets on `port` in this network namespace that are not ours (/proc/net/udp, udp6):
    a process of the same user may join a SO_REUSEPORT group and take a share of the datagrams."""
    inodes = {os.fstat(s.fileno()).st_ino for s in ours if s.fileno() >= 0}
    return sum(1 for u in udp_table() if u.port == port and u.inode not in inodes)


def _bind_tcp(addr: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TCP: only TIME_WAIT leftovers
        if fam == socket.AF_INET6 and addr == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((addr, port))
        except OSError as e:
            raise bind_error(e, "collector.syslogTcp.port", port, f"TCP {addr}:{port}") from None
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _shared_restart_needed(old: CollectorConfig, new: CollectorConfig) -> List[str]:
    """With workers the parent owns the sockets: their addresses and ports need a restart."""
    out = _restart_needed(old, new)
    if (old.udp.bind_addresses, old.udp.port, old.udp.receive_buffer) != \
            (new.udp.bind_addresses, new.udp.port, new.udp.receive_buffer):
        out.append("udp.bindAddresses/port/receiveBuffer")
    ot, nt = old.syslog_tcp, new.syslog_tcp
    if (ot is None) != (nt is None) or (ot and nt and (ot.bind_address, ot.port) != (nt.bind_address, nt.port)):
        out.append("syslogTcp.bindAddress/port")
    return out


# --- the worker ------------------------------------------------------------------------------

class _CountingDeque(Deque[Dict[str, Any]]):
    """A deque that counts what was ever appended, so a reporter knows what is new."""

    appended = 0

    def append(self, x: Dict[str, Any]) -> None:
        self.appended += 1
        super().append(x)


class _RecordingTally(Tally):
    """The worker's tally only collects what to tell the parent (which folds and keeps it)."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally.known)
        self.unsent = IngestResult()

    def apply(self, res: IngestResult, now: Optional[float] = None) -> None:
        super().apply(res, now)  # its own counts too: the worker's stop line says what it did
        self.unsent.merge_counts(res)  # rejected reports reach the parent as the store_refused counter

    def set_active(self, by_tag: Dict[Tuple[int, int], int]) -> None:
        pass  # the parent reads the active flows from the database

    def take(self) -> Dict[str, Any]:
        u, self.unsent = self.unsent, IngestResult()
        out: Dict[str, Any] = {"outcomes": u.outcomes, "clamped": u.clamped, "tag_conflicts": u.tag_conflicts,
                               "evicted": u.evicted}
        for name in _TALLY_DICTS:
            d: Dict[Tuple[int, int], int] = getattr(u, name)
            if len(d) > MAX_TAGS:
                folded: Dict[Tuple[int, int], int] = {}
                for i, (k, v) in enumerate(sorted(d.items(), key=lambda kv: -abs(kv[1]))):
                    k = k if i < MAX_TAGS else OTHER
                    folded[k] = folded.get(k, 0) + v
                d = folded
            out[name] = [[e, a, n] for (e, a), n in d.items() if n]
        return out


class WorkerCollector(Collector):
    """One receiving process: the sockets it was handed, accounting, writes to ClickHouse; no
    HTTP (the parent serves it), no retention or rebuild (the parent does them)."""

    def __init__(self, f: CollectorFile, config_text: str, config_path: str, index: int,
                 udp: Dict[str, socket.socket], tcp: Optional[socket.socket],
                 control: Tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        super().__init__(f.collector, RegistryHolder(None), config_path, role="worker")
        self.index = index
        self._config_text = config_text
        self._udp_given = udp
        self._tcp_given = tcp
        self._reader, self._writer = control
        self.tally = _RecordingTally(self.tally)
        self.samples = self._counted = _CountingDeque(maxlen=self.conf.samples)
        self._samples_sent = 0
        self._last: Dict[str, Any] = {}
        self._last_store: Dict[str, float] = {}
        self.parent_gone = asyncio.Event()

    async def _start_udp(self) -> None:
        loop = asyncio.get_running_loop()
        from .service import _Udp

        for addr, sock in self._udp_given.items():
            tr, _ = await open_udp_endpoint(loop, lambda: _Udp(self), sock)
            self._transports.append(tr)
            self.udp_sockets[addr] = [sock]

    async def _start_tcp(self) -> None:
        t = self.conf.syslog_tcp
        if t is None or self._tcp_given is None:
            return
        self._servers.append(await asyncio.start_server(self._tcp_client, sock=self._tcp_given,
                                                        limit=t.max_message))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sys.setswitchinterval(0.002)
        await self.store.start()
        await self._start_udp()
        await self._start_tcp()
        self._stopping = asyncio.Event()
        self._own_tasks = [loop.create_task(self._flusher(), name="flusher"),
                           loop.create_task(self._housekeeping(), name="housekeeping")]
        self._tasks += [loop.create_task(self._reports(), name="reports"),
                        loop.create_task(self._control(), name="control")]
        log.info("worker started index=%d pid=%d udp=%s tcp=%s", self.index, os.getpid(),
                 ",".join(self._udp_given), "yes" if self._tcp_given is not None else "no")

    async def stop(self) -> None:
        await super().stop()
        try:
            self._send(self._report(final=True))
            await asyncio.wait_for(self._writer.drain(), 5)
        except (OSError, asyncio.TimeoutError, RuntimeError):
            pass  # the parent is gone: nothing to tell

    # --- to and from the parent ---------------------------------------------------------

    def _send(self, msg: Dict[str, Any]) -> None:
        self._writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    async def _reports(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            try:
                self._send(self._report())
                await asyncio.wait_for(self._writer.drain(), 10)
            except (OSError, asyncio.TimeoutError):
                self.parent_gone.set()
                return

    async def _control(self) -> None:
        while True:
            try:
                line = await self._reader.readline()
            except (OSError, ValueError):
                line = b""
            if not line:
                log.warning("worker: the parent is gone, stopping index=%d", self.index)
                self.parent_gone.set()
                return
            msg = json.loads(line)
            if "reload" in msg:
                self._config_text = msg["reload"]
                await self.reload()

    def _report(self, final: bool = False) -> Dict[str, Any]:
        snap: Dict[str, Any] = {k: getattr(self, k) for k in _COUNTERS}
        for k in _COUNTER_DICTS:
            snap[k] = dict(getattr(self, k))
        delta: Dict[str, Any] = {}
        for k in _COUNTERS:
            delta[k] = snap[k] - self._last.get(k, 0)
        for k in _COUNTER_DICTS:
            last = self._last.get(k, {})
            delta[k] = {name: n - last.get(name, 0) for name, n in snap[k].items() if n != last.get(name, 0)}
        self._last = snap
        st = self.store.stats()
        store_delta = {k: v - self._last_store.get(k, 0) for k, v in st.counters.items()}
        self._last_store = dict(st.counters)
        if self.samples is not self._counted:  # a reload made a new deque: count from it
            self.samples = self._counted = _CountingDeque(self.samples, maxlen=self.samples.maxlen)
            self._samples_sent = self._counted.appended
        new = min(len(self.samples), self._counted.appended - self._samples_sent)
        self._samples_sent = self._counted.appended
        problems = list(st.problems)
        if self.store_problem is not None:
            problems.append(f"store cannot write: {self.store_problem}")
        assert isinstance(self.tally, _RecordingTally)
        return {"index": self.index, "pid": os.getpid(), "final": final, "counters": delta,
                "tally": self.tally.take(),
                "gauges": {"pending": self.pending_count(), "tcp_connections": sum(self.tcp_connections.values())},
                "store": {"counters": store_delta, "gauges": st.gauges, "problems": problems},
                "samples": list(self.samples)[len(self.samples) - new:] if new else []}

    # --- reload: the parent's text; no sockets of its own to rebind --------------------------

    async def _read_config(self) -> CollectorFile:
        return load_text(self._config_text, self.config_path or "<parent>")

    def _restart_needed(self, old: CollectorConfig, new: CollectorConfig) -> List[str]:
        return _shared_restart_needed(old, new)

    async def _rebind(self, changed: List[str]) -> None:
        pass

    async def _reload_registry(self, f: CollectorFile) -> None:
        pass


async def _worker_main(a: argparse.Namespace) -> int:
    from .. import logs
    from ..runtime import until_signalled

    control = socket.socket(fileno=a.control)
    reader, writer = await asyncio.open_unix_connection(sock=control, limit=MAX_LINE)
    first = json.loads(await reader.readline() or b"{}")
    text, path = first.get("config", ""), first.get("path") or "<parent>"
    f = load_text(text, path)
    logs.setup(f.logging.level, False)
    udp = {addr: socket.socket(fileno=fd) for addr, fd in first["udp"].items()}
    tcp = socket.socket(fileno=first["tcp"]) if first.get("tcp") is not None else None
    c = WorkerCollector(f, text, path, a.index, udp, tcp, (reader, writer))
    await until_signalled(c.start, c.stop, stopping=c.parent_gone, reload=c.reload)
    return 0


def _tag_logs(index: int) -> None:
    """worker=N at the end of every line a worker logs (a record factory: it outlives the
    handlers logs.setup() replaces on a reload)."""
    make = logging.getLogRecordFactory()
    tag = f" worker={index}"

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.msg = f"{record.msg}{tag}"
        return record

    logging.setLogRecordFactory(factory)


def _die_with_parent() -> None:
    """SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG), even by kill -9."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m scitagd.collector.workers --index I --control FD`: started by the parent only."""
    p = argparse.ArgumentParser(prog="scitagd-collector-worker")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--control", type=int, required=True)
    a = p.parse_args(argv)
    _die_with_parent()
    _tag_logs(a.index)
    from ..runtime import collect_rarely, run_async

    collect_rarely()
    try:
        return run_async(_worker_main(a))
    except (ConfigError, StartupError) as e:
        print(f"scitagd collector worker {a.index}: error: {e}", file=sys.stderr)
        return 2


# --- the parent --------------------------------------------------------------------------------

class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.started = 0.0
        self.last_report = 0.0
        self.restarts = 0
        self.datagrams = 0  # received by this slot's workers, all incarnations
        self.gauges: Dict[str, float] = {}
        self.store_gauges: Dict[str, float] = {}
        self.problems: List[str] = []
        self.task: Optional[asyncio.Task[None]] = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor(Collector):
    """The parent of collector.workers: sockets, supervision, HTTP, summed counters,
    housekeeping (retention, traffic rebuild, the active flows from the database)."""

    def __init__(self, f: CollectorFile, config_text: str, registry: RegistryHolder,
                 config_path: Optional[str]) -> None:
        super().__init__(f.collector, registry, config_path, role="reader")
        self._config_text = config_text
        self.slots = [_Slot(i) for i in range(f.collector.workers)]
        self.shared: Dict[str, List[socket.socket]] = {}
        self.tcp_sock: Optional[socket.socket] = None
        self.worker_store = StoreStats()  # what the workers' stores did, summed
        self._relay_loops = 0
        self._halting = False
        self._wake: Optional[asyncio.Event] = None
        self._pending_text = config_text
        self.foreign = 0

    # --- sockets --------------------------------------------------------------------------

    async def _start_udp(self) -> None:
        u = self.conf.udp
        n = len(self.slots)
        for addr in u.bind_addresses:
            self.shared[addr] = bind_shared_udp(addr, u.port, n, u.receive_buffer)
            log.info("listening udp address=%s port=%d workers=%d (SO_REUSEPORT) allowed_sources=%s", addr, u.port,
                     n, ",".join(u.allowed_sources) if u.allowed_sources is not None else "any")
        self.udp_sockets = self.shared

    async def _start_tcp(self) -> None:
        t = self.conf.syslog_tcp
        if t is not None:
            self.tcp_sock = _bind_tcp(t.bind_address, t.port)
            log.info("listening syslog-tcp address=%s port=%d (served by worker 0)", t.bind_address, t.port)

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        await super().start()
        assert self.web is not None
        self.web.prom.register(_WorkerMetrics(self))
        loop = asyncio.get_running_loop()
        for slot in self.slots:
            slot.task = loop.create_task(self._run_slot(slot), name=f"worker-{slot.index}")
        self._tasks.append(loop.create_task(self._watch_foreign(), name="foreign-sockets"))

    async def stop(self) -> None:
        self._halting = True
        if self._wake is not None:
            self._wake.set()
        for slot in self.slots:
            if slot.alive:
                assert slot.proc is not None
                slot.proc.send_signal(signal.SIGTERM)
        limit = time.monotonic() + self.conf.store.timeout + 15  # a worker writes or spools what it holds
        for slot in self.slots:
            if slot.task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(slot.task), max(0.1, limit - time.monotonic()))
                except asyncio.TimeoutError:
                    if slot.proc is not None and slot.proc.poll() is None:
                        log.error("worker did not stop, killed index=%d pid=%d", slot.index, slot.proc.pid)
                        slot.proc.kill()
                    slot.task.cancel()
        await super().stop()
        for socks in self.shared.values():
            for s in socks:
                s.close()
        if self.tcp_sock is not None:
            self.tcp_sock.close()

    async def _run_slot(self, slot: _Slot) -> None:
        delay = 1.0
        while not self._halting:
            started = time.monotonic()
            try:
                reader = await self._spawn(slot)
            except OSError as e:
                log.error("worker could not be started index=%d error=%r", slot.index, str(e))
            else:
                await self._listen(slot, reader)
                code = await self._reap(slot)
                if self._halting:
                    log.info("worker stopped index=%d status=%s", slot.index, code)
                    return
                log.error("worker exited, restarting index=%d pid=%d status=%s in=%gs", slot.index,
                          slot.proc.pid if slot.proc else -1, code, delay)
            slot.restarts += 1
            assert self._wake is not None
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = 1.0 if time.monotonic() - started > 30 else min(60.0, delay * 2)

    async def _spawn(self, slot: _Slot) -> asyncio.StreamReader:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        udp = {addr: socks[slot.index].fileno() for addr, socks in self.shared.items()}
        tcp = self.tcp_sock.fileno() if self.tcp_sock is not None and slot.index == 0 else None
        fds = [child_end.fileno(), *udp.values(), *([tcp] if tcp is not None else [])]
        env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
        try:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "scitagd.collector.workers", "--index", str(slot.index),
                 "--control", str(child_end.fileno())], pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
        slot.started = slot.last_report = time.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=parent_end, limit=MAX_LINE)
        slot.writer = writer
        writer.write(json.dumps({"config": self._config_text, "path": self.config_path, "udp": udp,
                                 "tcp": tcp}).encode() + b"\n")
        log.info("worker started index=%d pid=%d", slot.index, slot.proc.pid)
        return reader

    async def _listen(self, slot: _Slot, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (OSError, ValueError) as e:  # ValueError: a line over MAX_LINE
                log.error("worker report unreadable index=%d error=%r", slot.index, str(e))
                break
            if not line:
                break
            try:
                self._apply(slot, json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                log.error("worker report not understood index=%d error=%r", slot.index, str(e))
        if slot.writer is not None:
            slot.writer.close()
            slot.writer = None
        slot.gauges, slot.store_gauges = {}, {}

    async def _reap(self, slot: _Slot) -> Optional[int]:
        proc = slot.proc
        if proc is None:
            return None
        for _ in range(100):  # its control socket closed: it is exiting
            code = proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.1)
        log.error("worker closed its control socket but runs on, killed index=%d pid=%d", slot.index, proc.pid)
        proc.kill()
        return await asyncio.get_running_loop().run_in_executor(None, proc.wait)

    def _apply(self, slot: _Slot, msg: Dict[str, Any]) -> None:
        """A worker's report: its counters' growth added to the parent's, gauges replaced."""
        slot.last_report = time.monotonic()
        c = msg["counters"]
        for k in _COUNTERS:
            if k == "relay_loops":
                self._relay_loops += int(c.get(k, 0))
            else:
                setattr(self, k, getattr(self, k) + int(c.get(k, 0)))
        for k in _COUNTER_DICTS:
            mine = getattr(self, k)
            for name, n in c.get(k, {}).items():
                mine[str(name)] += int(n)
        slot.datagrams += sum(int(n) for n in c.get("datagrams", {}).values())
        t = msg["tally"]
        res = IngestResult(outcomes={str(k): int(v) for k, v in t["outcomes"].items()},
                           clamped=int(t["clamped"]), tag_conflicts=int(t["tag_conflicts"]), evicted=int(t["evicted"]))
        for name in _TALLY_DICTS:
            setattr(res, name, {(int(e), int(a)): int(n) for e, a, n in t[name]})
        res.active = {}  # the active gauge comes from the database (housekeeping)
        self.tally.apply(res)
        slot.gauges = {k: float(v) for k, v in msg["gauges"].items()}
        st = msg["store"]
        for k, v in st["counters"].items():
            self.worker_store.counters[k] = self.worker_store.counters.get(k, 0) + v
        slot.store_gauges = {k: float(v) for k, v in st["gauges"].items()}
        slot.problems = [str(p) for p in st["problems"]][:10]
        for s in msg.get("samples", [])[-self.conf.samples:]:
            self.samples.append(s)

    async def _watch_foreign(self) -> None:
        while True:
            n = foreign_sockets(self.conf.udp.port, [s for socks in self.shared.values() for s in socks]) \
                if self.shared else 0
            if n > self.foreign:
                log.warning("another socket joined the collector's UDP port: it takes a share of the fireflies "
                            "port=%d foreign_sockets=%d (a process of this user with SO_REUSEPORT)",
                            self.conf.udp.port, n)
            self.foreign = n
            await asyncio.sleep(30)

    # --- what the HTTP side reads -------------------------------------------------------------

    @property
    def relay_loops(self) -> int:
        return self._relay_loops

    def pending_count(self) -> int:
        return int(sum(s.gauges.get("pending", 0) for s in self.slots))

    def store_stats(self) -> StoreStats:
        own = self.store.stats()
        st = StoreStats(counters=dict(own.counters), gauges=dict(own.gauges), problems=list(own.problems))
        for k, v in self.worker_store.counters.items():
            st.counters[k] = st.counters.get(k, 0) + v
        for slot in self.slots:
            for k, v in slot.store_gauges.items():
                st.gauges[k] = max(st.gauges.get(k, 0), v) if k in _MAX_GAUGES else st.gauges.get(k, 0) + v
        now = time.monotonic()
        for slot in self.slots:
            if self._halting:
                break
            if not slot.alive:
                st.problems.append(f"worker {slot.index} not running (restarts: {slot.restarts})")
            elif now - slot.last_report > 10 * REPORT_INTERVAL + 5:
                st.problems.append(f"worker {slot.index} silent for {now - slot.last_report:.0f} s")
            st.problems += [f"worker {slot.index}: {p}" for p in slot.problems]
        self.tcp_connections = {"all": int(sum(s.gauges.get("tcp_connections", 0) for s in self.slots))}
        return st

    def health(self) -> Tuple[bool, Dict[str, Any]]:
        ok, body = super().health()
        body["workers"] = [{"index": s.index, "pid": s.proc.pid if s.proc else None, "alive": s.alive,
                            "restarts": s.restarts, "datagrams": s.datagrams,
                            "pending": int(s.gauges.get("pending", 0)),
                            "buffered": int(s.store_gauges.get("buffered", 0))} for s in self.slots]
        return ok, body

    # --- reload: validated here, the same text passed on ----------------------------------------

    async def _read_config(self) -> CollectorFile:
        path = self.config_path
        assert path is not None
        text = await asyncio.get_running_loop().run_in_executor(None, _read_text, path)
        f = load_text(text, path)
        self._pending_text = text
        return f

    def _restart_needed(self, old: CollectorConfig, new: CollectorConfig) -> List[str]:
        return _shared_restart_needed(old, new)

    async def _rebind(self, changed: List[str]) -> None:
        if "http" in changed and self.web is not None:
            await self.web.stop()
            await self.web.start()

    async def reload(self) -> bool:
        ok = await super().reload()
        if ok:
            self._config_text = self._pending_text
            for slot in self.slots:
                if slot.writer is not None:
                    slot.writer.write(json.dumps({"reload": self._config_text}).encode() + b"\n")
        return ok


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None


class _WorkerMetrics:
    def __init__(self, s: Supervisor) -> None:
        self.s = s

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("scitagd_collector_worker_up", "1 while the worker process runs", labels=["worker"])
        restarts = CounterMetricFamily("scitagd_collector_worker_restarts", "Worker processes started again after "
                                       "one exited", labels=["worker"])
        pending = GaugeMetricFamily("scitagd_collector_worker_pending_rows", "Fireflies a worker holds before its "
                                    "next hand-over to the store", labels=["worker"])
        grams = CounterMetricFamily("scitagd_collector_worker_datagrams", "Messages a worker received (the "
                                    "kernel's share of the senders)", labels=["worker"])
        for slot in self.s.slots:
            up.add_metric([str(slot.index)], 1 if slot.alive else 0)
            grams.add_metric([str(slot.index)], slot.datagrams)
            restarts.add_metric([str(slot.index)], slot.restarts)
            pending.add_metric([str(slot.index)], slot.gauges.get("pending", 0))
        yield up
        yield restarts
        yield pending
        yield grams
        yield GaugeMetricFamily("scitagd_collector_udp_foreign_sockets", "Sockets of other processes on the "
                                "collector's UDP port (they take a share of the fireflies)", value=self.s.foreign)


def run(f: CollectorFile, config_text: str, registry: RegistryHolder, config_path: Optional[str]) -> int:
    from ..runtime import run_async

    s = Supervisor(f, config_text, registry, config_path)
    run_async(s.run_until_stopped())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
