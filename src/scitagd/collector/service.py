# SPDX-License-Identifier: Apache-2.0
"""The collector process: receivers (UDP, syslog over TCP), relay, batched accounting into the
store, and the HTTP side (dashboard, JSON API, /metrics).

Input path: datagram or TCP frame -> allowed source? -> relay -> parse -> Report (who reported
it, clock sanity) -> local-only filter -> pending batch -> every flushInterval the store accounts
the batch on its own thread. Everything a sender can grow is bounded: the pending batch
(maxPending, drops counted), TCP connections (total and per source, idle timeout), rejection
samples, metric label sets (tally.py). A store that cannot write (disk full) keeps the batch,
says why on /healthz, and catches up when it can.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, DefaultDict, Deque, Dict, List, Optional, Tuple, TypeVar

from ..errors import FireflyError, StartupError
from ..firefly import parse
from ..logs import Throttle
from ..netset import NetSet
from ..netutil import open_udp_endpoint, parse_hostport, udp_listener
from ..registry import RegistryHolder
from ..relay import Relay
from ..runtime import collect_rarely, run_async, until_signalled
from .conf import CollectorConfig, CollectorFile
from .framing import Framer
from .report import Report, make_report
from .storeapi import IngestResult, StoreError, StoreFull, StoreStats, open_store
from .tally import Tally

if TYPE_CHECKING:
    from .flowfeed import LinkFeed
    from .web import Web

__all__ = ["Collector", "run"]

log = logging.getLogger("scitagd.collector")
T = TypeVar("T")


class Collector:
    def __init__(self, conf: CollectorConfig, registry: RegistryHolder, config_path: Optional[str] = None,
                 role: str = "single") -> None:
        self.conf = conf
        self.config_path = config_path  # read again on SIGHUP
        self.registry = registry
        try:
            self.store = open_store(conf.store, conf.active_timeout, role)
        except (StoreError, ValueError) as e:  # unreadable passwordFile, a ClickHouse schema of another version
            raise StartupError(f"collector.store: {e}") from None
        self.tally = Tally(lambda e, a: self.registry.current.activity_name(e, a) is not None)
        try:
            self.tally.set_active(self.store.active_by_tag())
        except StoreError as e:  # a server not answering yet: the housekeeping reads it later
            log.warning("active flows not read from the store error=%r", str(e))
        self.datagrams: DefaultDict[str, int] = defaultdict(int)  # transport
        self.rejected: DefaultDict[str, int] = defaultdict(int)  # reason (a fixed set)
        self.samples: Deque[Dict[str, Any]] = deque(maxlen=conf.samples)
        self.local_only = 0
        self.store_rows = 0  # fireflies written
        self.store_errors = 0
        self.store_flushes = 0
        self.store_dropped = 0  # fireflies lost: pending batch full while the store could not write
        self.store_refused = 0  # fireflies the database refused (isolated, the rest written)
        self.flows_in_store = 0
        self.store_problem: Optional[str] = None  # why the store is behind, for /healthz
        self.pending: List[Report] = []
        self.writing = 0  # fireflies of the batch the store is writing now: not pending, not yet accounted
        self.tcp_connections: Dict[str, int] = {}
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self.tcp_refused: DefaultDict[str, int] = defaultdict(int)
        self.relay_sent: DefaultDict[str, int] = defaultdict(int)
        self.relay_failed: DefaultDict[str, int] = defaultdict(int)
        self._relay: Optional[Relay] = None
        if conf.relay:
            self._relay = Relay([parse_hostport("relay", r, 10514) for r in conf.relay],
                                self._relayed_one, self._relay_failed)
        self._udp_allowed = NetSet(conf.udp.allowed_sources) if conf.udp.allowed_sources is not None else None
        tcp = conf.syslog_tcp
        self._tcp_allowed = NetSet(tcp.allowed_sources) if tcp and tcp.allowed_sources is not None else None
        self._trusted = NetSet(conf.trusted_relays)
        self._local = NetSet(conf.local_networks)
        self._drop_local = conf.drop_local_only and bool(self._local)
        self._db = ThreadPoolExecutor(1, thread_name_prefix="store")
        # SQLite answers on its one thread; a ClickHouse server takes several queries at once
        self._reads = ThreadPoolExecutor(4, thread_name_prefix="query") if self.store.kind == "clickhouse" else self._db
        self._transports: List[asyncio.BaseTransport] = []
        self.udp_sockets: Dict[str, List[socket.socket]] = {}  # bind address -> sockets, for the kernel's drop counts
        self._servers: List[asyncio.AbstractServer] = []
        self._tasks: List[asyncio.Task[Any]] = []
        self._throttle = Throttle(1.0)
        self._flush_lock: Optional[asyncio.Lock] = None
        self._stopping: Optional[asyncio.Event] = None
        self._own_tasks: List[asyncio.Task[None]] = []
        self.web: Optional[Web] = None
        self.links: Optional[LinkFeed] = None  # router flow exports (collector.ipfix/netflow/sflow)
        if conf.flow_exports():
            from .flowfeed import LinkFeed

            self.links = LinkFeed(conf, registry)
        n = sum(self.tally.active.values())
        if n:
            log.info("active flows in the store flows=%d", n)

    # --- relay ----------------------------------------------------------------------------

    @property
    def relay_loops(self) -> int:
        return self._relay.loops if self._relay is not None else 0

    def _relayed_one(self, dest: str) -> None:
        self.relay_sent[dest] += 1

    def _relay_failed(self, dest: str, _error: str) -> None:
        self.relay_failed[dest] += 1

    # --- input --------------------------------------------------------------------------

    def receive(self, data: bytes, sender: str, transport: str) -> None:
        self.datagrams[transport] += 1
        allowed = self._udp_allowed if transport == "udp" else self._tcp_allowed
        if allowed is not None and sender not in allowed:
            self._reject("not_allowed", f"source {sender} not in allowedSources", sender, data)
            return
        if self._relay is not None:
            # a datagram that loops back (relayed here within 10 s) is not relayed again; being
            # the same firefly, the store counts it once anyway
            self._relay.forward(data)
        try:
            rec = parse(data)
            trusted = self._trusted
            report = make_report(rec, sender[7:] if sender.startswith("::ffff:") and "." in sender else sender,
                                 bool(trusted.nets) and sender in trusted, time.time(), self.conf.max_clock_skew)
        except FireflyError as e:
            self._reject(e.reason, str(e), sender, data)
            return
        if self._drop_local and report.src in self._local and report.dst in self._local:
            self.local_only += 1
            return
        if self.links is not None:
            self.links.note(report)  # its flow's records get a path, tagged or not
        if len(self.pending) >= self.conf.store.max_pending:
            self.store_dropped += 1
            if self._throttle.allow("store_behind"):
                log.warning("store behind: firefly dropped pending=%d max_pending=%d problem=%r",
                            len(self.pending), self.conf.store.max_pending, self.store_problem)
            return
        self.pending.append(report)

    def _reject(self, reason: str, message: str, sender: str, data: bytes) -> None:
        self.rejected[reason] += 1
        self.samples.append({"time": time.time(), "from": sender, "reason": reason, "error": message,
                             "data": data[:512].decode("utf-8", "replace")})
        if self._throttle.allow(reason):
            log.warning("datagram rejected reason=%s from=%s error=%r", reason, sender, message)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One rsyslog/syslog-ng connection: RFC 6587 framing (framing.py), bounded in count,
        per source and in idle time."""
        tcp = self.conf.syslog_tcp
        assert tcp is not None
        peer = writer.get_extra_info("peername")
        sender = _unmap(peer[0]) if peer else "?"
        total = sum(self.tcp_connections.values())
        mine = self.tcp_connections.get(sender, 0)
        if total >= tcp.max_connections or mine >= tcp.max_connections_per_source:
            why = "max_connections" if total >= tcp.max_connections else "max_per_source"
            self.tcp_refused[why] += 1
            if self._throttle.allow(f"tcp_{why}"):
                log.warning("syslog-tcp connection refused reason=%s from=%s connections=%d from_source=%d",
                            why, sender, total, mine)
            writer.close()
            return
        if self._tcp_allowed is not None and sender not in self._tcp_allowed:
            self.tcp_refused["not_allowed"] += 1
            self._reject("not_allowed", f"source {sender} not in allowedSources", sender, b"")
            writer.close()
            return
        self.tcp_connections[sender] = mine + 1
        self._tcp_writers.add(writer)
        framer = Framer(tcp.max_message)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), tcp.idle_timeout)
                except asyncio.TimeoutError:
                    self.tcp_refused["idle_timeout"] += 1
                    break
                if not chunk:
                    break
                for msg, err in framer.feed(chunk):
                    if err is not None:
                        self.datagrams["tcp"] += 1
                        self._reject(err[0], err[1], sender, chunk[:512])
                    elif msg is not None:
                        self.receive(msg, sender, "tcp")
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the peer went away, or the collector stops: either way this connection is done
        finally:
            self._tcp_writers.discard(writer)
            n = self.tcp_connections.get(sender, 1) - 1
            if n > 0:
                self.tcp_connections[sender] = n
            else:
                self.tcp_connections.pop(sender, None)
            writer.close()

    # --- store --------------------------------------------------------------------------

    async def flush(self) -> bool:
        """Hand the pending batch to the store; True when it is written (or there was none)."""
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        async with self._flush_lock:
            batch, self.pending = self.pending, []
            if not batch:
                return True
            loop = asyncio.get_running_loop()
            self.writing = len(batch)
            try:
                res = await loop.run_in_executor(self._db, self.store.ingest, batch)
            except StoreFull as e:
                self.store_errors += 1
                self._keep(batch)
                if self.store_problem != str(e) or self._throttle.allow("store_full"):
                    log.error("store cannot write, batch kept for the next flush pending=%d error=%r",
                              len(self.pending), str(e))
                self.store_problem = str(e)
                return False
            finally:
                self.writing = 0
            if self.store_problem is not None:
                log.info("store writes again, behind no more problem_was=%r", self.store_problem)
                self.store_problem = None
            self.store_flushes += 1
            self.store_rows += len(batch) - len(res.rejected)
            self._account(res)
            return True

    def _keep(self, batch: List[Report]) -> None:
        """A batch the store could not write goes back in front, within maxPending (oldest lost)."""
        keep = batch + self.pending
        over = len(keep) - self.conf.store.max_pending
        if over > 0:
            self.store_dropped += over
            keep = keep[over:]
        self.pending = keep

    def _account(self, res: IngestResult) -> None:
        self.tally.apply(res)
        for r, why in res.rejected:
            self.store_refused += 1
            self.rejected["store_refused"] += 1
            self.samples.append({"time": time.time(), "from": r.sender, "reason": "store_refused", "error": why,
                                 "data": repr(r)[:512]})
            if self._throttle.allow("store_refused"):
                log.error("firefly refused by the store, the rest of its batch written error=%r flow=%s:%d->%s:%d",
                          why, r.src, r.sport, r.dst, r.dport)

    async def _flusher(self) -> None:
        """Every flushInterval until stopped; never cancelled mid-flush (a batch the store wrote
        must reach the counters too)."""
        assert self._stopping is not None
        last_links = time.monotonic()
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.conf.store.flush_interval)
            except asyncio.TimeoutError:
                pass
            await self.flush()
            if self.links is not None and time.monotonic() - last_links >= max(1.0, self.conf.store.flush_interval):
                last_links = time.monotonic()
                await self.flush_links()

    async def flush_links(self) -> bool:
        """The flow exports' deltas since the last call into the store; True when written."""
        feed = self.links
        if feed is None:
            return True
        rows, paths = feed.take()
        if not rows and not paths:
            return True
        try:
            await asyncio.get_running_loop().run_in_executor(self._db, self.store.ingest_links, rows, paths)
        except StoreFull as e:
            feed.keep(rows, paths, str(e))
            if self._throttle.allow("links_store_full"):
                log.error("store cannot write link rows, kept for the next flush rows=%d paths=%d error=%r",
                          len(rows), len(paths), str(e))
            return False
        feed.written(rows, paths)
        return True

    async def _housekeeping(self) -> None:
        """Expiry, retention and the flow count every 30 s, until stopped (not cancelled mid-call:
        what the store changed must reach the counters)."""
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        last_retention = 0.0
        while not self._stopping.is_set():
            try:
                res = await loop.run_in_executor(self._db, self.store.expire, time.time(), self.conf.max_active_flows)
                self.tally.apply(res)
                n = sum(res.expired.values())
                if n:
                    log.info("flows closed without an end active_timeout=%gs flows=%d evicted=%d",
                             self.conf.active_timeout, n, res.evicted)
                if time.monotonic() - last_retention > 600:
                    last_retention = time.monotonic()
                    cut = time.time() - self.conf.store.retention_days * 86400
                    gone = await loop.run_in_executor(self._db, self.store.retention, cut)
                    if gone:
                        log.info("retention removed flows=%d", gone)
                self.flows_in_store = await loop.run_in_executor(self._reads, self.store.count)
                if self.store.kind == "clickhouse":  # its receivers each know a part: the database knows all
                    self.tally.set_active(await loop.run_in_executor(self._reads, self.store.active_by_tag))
            except (StoreFull, StoreError) as e:
                log.error("store housekeeping failed error=%r", str(e))
            try:
                await asyncio.wait_for(self._stopping.wait(), 30)
            except asyncio.TimeoutError:
                pass

    async def query(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, lambda: fn(*args, **kw))

    def health(self) -> Tuple[bool, Dict[str, Any]]:
        reasons = []
        if self.store_problem is not None:
            reasons.append(f"store cannot write: {self.store_problem}")
        if len(self.pending) > self.conf.store.max_pending // 2:
            reasons.append(f"store behind: {len(self.pending)} fireflies pending")
        if self.links is not None and self.links.problem is not None:
            reasons.append(f"store cannot write link rows: {self.links.problem}")
        reasons += self.store_stats().problems
        return not reasons, {"status": "ok" if not reasons else "degraded", "reasons": reasons,
                             "pending": self.pending_count(), "active_flows": sum(self.tally.active.values())}

    def pending_count(self) -> int:
        """Fireflies received and not yet accounted: waiting for the next flush or being written
        (with collector.workers: the workers' sum)."""
        return len(self.pending) + self.writing

    def store_stats(self) -> StoreStats:
        return self.store.stats()

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # The store's thread holds the GIL for up to the switch interval at a time while the loop
        # waits to answer a datagram or a request: 2 ms instead of CPython's 5 keeps the loop's
        # worst answer under load well inside 100 ms (tests/hostile/test_collector_e2e.py).
        sys.setswitchinterval(0.002)
        c = self.conf
        await self.store.start()
        await self._start_udp()
        await self._start_tcp()
        if self.links is not None:
            await self.links.start()
        from .web import Web

        self.web = Web(self)
        await self.web.start()
        self._stopping = asyncio.Event()
        self._own_tasks = [loop.create_task(self._flusher(), name="flusher"),
                           loop.create_task(self._housekeeping(), name="housekeeping")]
        self._tasks += [loop.create_task(self.registry.run_refresher())]
        log.info("started store=%s trusted_relays=%s gc_threshold=%s", _store_name(c),
                 ",".join(c.trusted_relays) or "none", ",".join(map(str, gc.get_threshold())))

    async def _start_udp(self) -> None:
        loop = asyncio.get_running_loop()
        u = self.conf.udp
        for addr in u.bind_addresses:
            sock = udp_listener(addr, u.port, u.receive_buffer, key="collector.udp.port",
                                buffer_key="collector.udp.receiveBuffer")
            tr, _ = await open_udp_endpoint(loop, lambda: _Udp(self), sock)
            self._transports.append(tr)
            self.udp_sockets[addr] = [sock]
            log.info("listening udp address=%s port=%d allowed_sources=%s", addr, u.port,
                     ",".join(u.allowed_sources) if u.allowed_sources is not None else "any")

    async def _start_tcp(self) -> None:
        t = self.conf.syslog_tcp
        if t is None:
            return
        srv = await asyncio.start_server(self._tcp_client, t.bind_address, t.port, reuse_address=True,
                                         limit=t.max_message)
        self._servers.append(srv)
        log.info("listening syslog-tcp address=%s port=%d", t.bind_address, t.port)

    async def stop(self) -> None:
        for tr in self._transports:
            tr.close()
        if self.links is not None:
            await self.links.stop()
        for srv in self._servers:
            srv.close()
        for w in list(self._tcp_writers):
            w.close()  # their readers see the end and the handlers return
        if self._relay is not None:
            self._relay.close()
        for t in self._tasks:
            t.cancel()
        if self._stopping is not None:
            self._stopping.set()
            for task in self._own_tasks:  # they finish what they started: the last flush takes what is pending
                await task
        written = await self.flush()
        if not await self.flush_links():
            log.error("stopped; link rows NOT written: %d rows error=%r", len(self.links.pending[0]) if self.links
                      else 0, self.links.problem if self.links else None)
        if self.web:
            await self.web.stop()
        await self.store.stop()
        await asyncio.get_running_loop().run_in_executor(self._db, self.store.close)
        self._db.shutdown(wait=True)
        if self._reads is not self._db:
            self._reads.shutdown(wait=True)
        tally = self.tally
        if written:
            log.info("stopped; store flushed and closed flows_started=%d flows_ended=%d rows_written=%d",
                     sum(tally.started.values()), sum(tally.ended.values()), self.store_rows)
        else:
            log.error("stopped; store NOT flushed: %d fireflies not written error=%r flows_started=%d",
                      len(self.pending), self.store_problem, sum(tally.started.values()))

    async def run_until_stopped(self) -> None:
        await until_signalled(self.start, self.stop, reload=self.reload, status=self.status)

    def status(self) -> str:
        h = self.health()[1]
        return f"{h['active_flows']} active flows; {self.store_rows} fireflies stored; {h['status']}"

    async def _reload_links(self, new: CollectorConfig) -> List[str]:
        """The flow-export sections (collector.ipfix/netflow/sflow) of a reloaded file."""
        if self.links is None:
            if not new.flow_exports():
                return []
            from .flowfeed import LinkFeed

            feed = LinkFeed(new, self.registry)
            try:
                await feed.start()
            except StartupError as e:
                log.error("reload: flow exports not listening error=%r", str(e))
                return []
            self.links = feed
            if self.web is not None:
                self.web.prom.register(feed)
            return [n for n, _ in new.flow_exports()]
        return await self.links.reconfigure(new)

    async def reload(self) -> bool:
        """SIGHUP: read the file again. Listeners whose settings changed are rebound, the relay
        list, trusted relays, local networks, retention and timeouts take effect; accounting and
        the store go on untouched (store.path cannot change without a restart). An invalid
        file changes nothing."""
        from .. import logs
        from ..errors import ConfigError

        if self.config_path is None:
            log.warning("reload: no config file to read (started without one)")
            return False
        try:
            f = await self._read_config()
        except ConfigError as e:
            log.error("config not reloaded, the running one stays error=%r", str(e))
            return False
        new, old = f.collector, self.conf
        fixed = self._restart_needed(old, new)
        if fixed:
            log.error("config not reloaded: %s changed; restart the collector for that", ", ".join(fixed))
            return False
        changed = [k for k in ("udp", "syslog_tcp", "http", "relay", "trusted_relays", "local_networks",
                               "drop_local_only", "active_timeout", "max_active_flows", "max_clock_skew", "samples",
                               "store") if getattr(new, k) != getattr(old, k)]
        self.conf = new
        self.store.active_timeout = new.active_timeout
        self.samples = deque(self.samples, maxlen=new.samples)
        self._trusted = NetSet(new.trusted_relays)
        self._local = NetSet(new.local_networks)
        self._drop_local = new.drop_local_only and bool(self._local)
        self._udp_allowed = NetSet(new.udp.allowed_sources) if new.udp.allowed_sources is not None else None
        tcp = new.syslog_tcp
        self._tcp_allowed = NetSet(tcp.allowed_sources) if tcp and tcp.allowed_sources is not None else None
        if "relay" in changed:
            if self._relay is not None:
                self._relay.close()
            self._relay = Relay([parse_hostport("relay", r, 10514) for r in new.relay],
                                self._relayed_one, self._relay_failed) if new.relay else None
        try:
            await self._rebind(changed)
        except OSError as e:
            log.error("reload: a listener could not be started error=%r", str(e))
        changed += await self._reload_links(new)
        if f.logging.level:
            logs.setup(f.logging.level, False)
        await self._reload_registry(f)
        log.info("reloaded config=%s changed=%s", self.config_path, ",".join(changed) or "nothing")
        return True

    async def _read_config(self) -> CollectorFile:
        from .conf import load

        path = self.config_path
        assert path is not None
        return await asyncio.get_running_loop().run_in_executor(None, load, path)

    def _restart_needed(self, old: CollectorConfig, new: CollectorConfig) -> List[str]:
        return _restart_needed(old, new)

    async def _rebind(self, changed: List[str]) -> None:
        """The listeners whose settings changed on a reload."""
        if "udp" in changed:
            for tr in self._transports:
                tr.close()
            self._transports = []
            self.udp_sockets = {}
            await self._start_udp()
        if "syslog_tcp" in changed:
            for srv in self._servers:
                srv.close()
            self._servers = []
            await self._start_tcp()
        if "http" in changed and self.web is not None:
            await self.web.stop()
            await self.web.start()

    async def _reload_registry(self, f: CollectorFile) -> None:
        self.registry.reconfigure(f.registry)
        await self.registry.refresh()


def _store_name(c: CollectorConfig) -> str:
    st = c.store
    return st.path if st.kind == "sqlite" else f"clickhouse:{st.url.rstrip('/')}/{st.database}"


_RELOADABLE_STORE_KEYS = frozenset({"retention_days", "flush_interval", "max_pending", "rebuild_interval"})


def _restart_needed(old: CollectorConfig, new: CollectorConfig) -> List[str]:
    """Keys a SIGHUP cannot change: the store's identity and writer, the number of workers."""
    out = [f"store.{k}" for k in old.store.__struct_fields__
           if k not in _RELOADABLE_STORE_KEYS and getattr(old.store, k) != getattr(new.store, k)]
    if old.workers != new.workers:
        out.append("workers")
    return out


def _unmap(addr: str) -> str:
    """A dual-stack socket's ::ffff:a.b.c.d is the IPv4 sender a.b.c.d."""
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, c: Collector) -> None:
        self.c = c

    def datagram_received(self, data: bytes, addr: Tuple[Any, ...]) -> None:
        self.c.receive(data, addr[0], "udp")

    def error_received(self, exc: Exception) -> None:
        log.warning("udp socket error error=%r", str(exc))


def run(conf: CollectorConfig, registry: RegistryHolder, config_path: Optional[str] = None) -> int:
    if conf.workers > 1:  # the parent of N receiving processes (workers.py); the file says how many
        from pathlib import Path

        from .conf import load_text
        from .workers import run as run_workers

        assert config_path is not None  # workers > 1 comes from a file
        text = Path(config_path).read_text()
        return run_workers(load_text(text, config_path), text, registry, config_path)
    collect_rarely()
    c = Collector(conf, registry, config_path)
    run_async(c.run_until_stopped())
    return 0

