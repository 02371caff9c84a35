"""The collector process: receivers (UDP, syslog over TCP), accounting, batched store writes,
relay, and the HTTP side (dashboard, JSON API, /metrics)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, DefaultDict, Deque, Dict, List, Optional, Tuple, TypeVar

from ..errors import FireflyError
from ..firefly import parse
from ..logs import Throttle
from ..netutil import parse_hostport, udp_listener
from ..registry import RegistryHolder
from ..relay import Relay
from ..runtime import run_async, until_signalled
from .account import Accountant
from .conf import CollectorConfig
from .store import SQLiteStore

if TYPE_CHECKING:
    from .web import Web

__all__ = ["Collector", "run"]

T = TypeVar("T")

log = logging.getLogger("scitagd.collector")


class Collector:
    def __init__(self, conf: CollectorConfig, registry: RegistryHolder) -> None:
        self.conf = conf
        self.registry = registry
        self.store = SQLiteStore(conf.store.path)
        self.acct = Accountant(conf.local_networks, conf.drop_local_only)
        self.datagrams: DefaultDict[str, int] = defaultdict(int)  # transport
        self.rejected: DefaultDict[str, int] = defaultdict(int)  # reason
        self.samples: Deque[Dict[str, Any]] = deque(maxlen=conf.samples)
        self.store_rows = 0
        self.store_errors = 0
        self.store_flushes = 0
        self.flows_in_store = 0
        self.relay_sent: DefaultDict[str, int] = defaultdict(int)
        self.relay_failed: DefaultDict[str, int] = defaultdict(int)
        self._relay: Optional[Relay] = None
        if conf.relay:
            self._relay = Relay([parse_hostport("relay", r, 10514) for r in conf.relay],
                                self._relayed_one, self._relay_failed)
        self._db = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._transports: List[asyncio.BaseTransport] = []
        self._servers: List[asyncio.AbstractServer] = []
        self._tasks: List[asyncio.Task[Any]] = []
        self._throttle = Throttle(1.0)
        self.web: Optional[Web] = None
        for row in self.store.flows(0, 1e12, state="active", limit=10_000_000):
            self.acct.restore(row)
        if self.acct.active:
            log.info("active flows restored from the store flows=%d", len(self.acct.active))

    # --- input --------------------------------------------------------------------------

    @property
    def relay_loops(self) -> int:
        return self._relay.loops if self._relay is not None else 0

    def _relayed_one(self, dest: str) -> None:
        self.relay_sent[dest] += 1

    def _relay_failed(self, dest: str, _error: str) -> None:
        self.relay_failed[dest] += 1

    def receive(self, data: bytes, sender: str, transport: str) -> None:
        self.datagrams[transport] += 1
        if self._relay is not None:
            # a datagram that loops back (relayed here within 10 s) is not relayed again, and,
            # being a duplicate, not counted again either
            self._relay.forward(data)
        try:
            rec = parse(data)
        except FireflyError as e:
            self._reject(e.reason, str(e), sender, data)
            return
        self.acct.ingest(rec, sender)

    def _reject(self, reason: str, message: str, sender: str, data: bytes) -> None:
        self.rejected[reason] += 1
        self.samples.append({"time": time.time(), "from": sender, "reason": reason, "error": message,
                             "data": data[:512].decode("utf-8", "replace")})
        if self._throttle.allow(reason):
            log.warning("datagram rejected reason=%s from=%s error=%r", reason, sender, message)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        c = self.conf
        for addr in c.udp.bind_addresses:
            sock = udp_listener(addr, c.udp.port, c.udp.receive_buffer)
            tr, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=sock)
            self._transports.append(tr)
            log.info("listening udp address=%s port=%d", addr, c.udp.port)
        if c.syslog_tcp is not None:
            srv = await asyncio.start_server(self._tcp_client, c.syslog_tcp.bind_address, c.syslog_tcp.port,
                                             reuse_address=True)
            self._servers.append(srv)
            log.info("listening syslog-tcp address=%s port=%d", c.syslog_tcp.bind_address,
                     c.syslog_tcp.port)
        from .web import Web

        self.web = Web(self)
        await self.web.start()
        self._tasks += [loop.create_task(self._flusher()), loop.create_task(self._housekeeping()),
                        loop.create_task(self.registry.run_refresher())]
        log.info("started store=%s", c.store.path)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 6587: octet counting ('LEN SP MSG') or newline-terminated messages."""
        peer = writer.get_extra_info("peername")
        sender = peer[0] if peer else "?"
        limit = self.conf.syslog_tcp.max_message if self.conf.syslog_tcp else 65536
        buf = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                while buf:
                    if buf[:1].isdigit():
                        sp = buf.find(b" ")
                        if sp < 0 or sp > 10:
                            if len(buf) > 10:
                                self._reject("bad_framing", "octet count not followed by a space", sender, buf)
                                buf = b""
                            break
                        n = int(buf[:sp])
                        if n > limit:
                            self._reject("too_large", f"message of {n} bytes over {limit}", sender, buf)
                            buf = b""
                            break
                        if len(buf) < sp + 1 + n:
                            break
                        msg, buf = buf[sp + 1:sp + 1 + n], buf[sp + 1 + n:]
                    else:
                        nl = buf.find(b"\n")
                        if nl < 0:
                            if len(buf) > limit:
                                self._reject("too_large", f"line over {limit} bytes", sender, buf)
                                buf = b""
                            break
                        msg, buf = buf[:nl], buf[nl + 1:]
                    if msg.strip():
                        self.receive(msg.rstrip(b"\r\n"), sender, "tcp")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def flush(self) -> None:
        rows, traffic, pairs = self.acct.take()
        if not (rows or traffic or pairs):
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._db, self.store.write, rows, traffic, pairs)
            self.store_rows += len(rows)
            self.store_flushes += 1
        except Exception as e:
            self.store_errors += 1
            log.error("store write failed, batch kept for the next flush rows=%d error=%r",
                      len(rows), str(e))
            self.acct.rows[:0] = rows
            for k, v in traffic.items():
                self.acct._traffic(k, v[0], v[1])
            for pk, pv in pairs.items():
                cur = self.acct.pairs.setdefault(pk, [0, 0])
                cur[0] += pv[0]
                cur[1] += pv[1]

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.conf.store.flush_interval)
            await self.flush()

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        last_retention = 0.0
        while True:
            n = self.acct.expire(self.conf.active_timeout)
            if n:
                log.info("flows closed without an end active_timeout=%gs flows=%d", self.conf.active_timeout, n)
            if time.monotonic() - last_retention > 600:
                last_retention = time.monotonic()
                cut = time.time() - self.conf.store.retention_days * 86400
                gone = await loop.run_in_executor(self._db, self.store.expire, cut)
                if gone:
                    log.info("retention removed flows=%d", gone)
            self.flows_in_store = await loop.run_in_executor(self._db, self.store.count)
            await asyncio.sleep(30)

    async def query(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, lambda: fn(*args, **kw))

    async def stop(self) -> None:
        for tr in self._transports:
            tr.close()
        for srv in self._servers:
            srv.close()
        if self._relay is not None:
            self._relay.close()
        for t in self._tasks:
            t.cancel()
        await self.flush()
        if self.web:
            await self.web.stop()
        await asyncio.get_running_loop().run_in_executor(self._db, self.store.close)
        self._db.shutdown(wait=True)
        log.info("stopped; store flushed and closed flows_started=%d flows_ended=%d rows_written=%d",
                 sum(self.acct.started.values()), sum(self.acct.ended.values()), self.store_rows)

    async def run_until_stopped(self) -> None:
        await until_signalled(self.start, self.stop)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, c: Collector) -> None:
        self.c = c

    def datagram_received(self, data: bytes, addr: Tuple[Any, ...]) -> None:
        self.c.receive(data, addr[0], "udp")

    def error_received(self, exc: Exception) -> None:
        log.warning("udp socket error error=%r", str(exc))


def run(conf: CollectorConfig, registry: RegistryHolder) -> int:
    c = Collector(conf, registry)
    run_async(c.run_until_stopped())
    return 0


