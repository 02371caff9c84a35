# SPDX-License-Identifier: Apache-2.0
"""One home for running an aiohttp application (the API, /metrics, the collector's web side):
listen, guard, log, stop. Imported only by the components that serve HTTP, so that a daemon
without them never pays aiohttp's ~250 ms import.

Every server faces whatever reaches its port, so this module bounds what a client can hold:

- Connections: at most `max_connections`, and `max_per_source` per source address. A new
  connection over a cap closes the least recently active *idle* connection (no request being
  handled) of the same source, else of the source holding the most; only when every connection
  is busy is the new one refused. So 2,000 idle or half-sent connections never lock a valid
  client out: its connection displaces one of them, and the attacker only displaces itself.
- Time: a request head must be complete within `header_timeout` of the connection (or of the
  previous response); a handler, body read included, runs at most `request_timeout` (408);
  an idle keep-alive connection closes after `keepalive_timeout`. Expired connections are
  aborted (a client that reads nothing cannot hold one with a full send buffer).
- Descriptors: accepting is ours (not the loop's server), so EMFILE on accept closes idle
  connections of this server and pauses accepting briefly, with one rate-limited warning,
  instead of a traceback per accept (asyncio) or a listener silently closed (uvloop). At start
  the caps of all servers of the process are checked against RLIMIT_NOFILE (the soft limit is
  raised toward the hard one when they need it).
- Bad HTTP (malformed request line or headers, oversized lines): aiohttp answers 400; its
  "Error handling request" traceback becomes one rate-limited warning with the peer and reason.
  Compressed request bodies are not inflated (no zip bombs).

`on_reject(reason)` reports each of these to the owner's counters (reasons: bad_http,
header_timeout, idle_timeout, request_timeout, conn_limit, conn_refused, fd_exhausted).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import logging
import resource
import socket
import sys
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Collection, Dict, Optional, Set, Tuple

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .netutil import bind_error

__all__ = ["LOOPBACK_HOSTS", "HttpLimits", "HttpServer", "host_allowed", "host_of"]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_ACCEPT_BATCH = 16  # accepts per readiness callback: bounded work per loop iteration (~1 ms)
_FD_RESERVE = 128  # descriptors left for everything else (sockets of sinks, files, netlink)
_HAS_SHUTDOWN_TIMEOUT = "shutdown_timeout" in inspect.signature(web.BaseRunner.__init__).parameters


class HttpLimits:
    """Bounds of one server; defaults suit a loopback service with a handful of clients."""

    __slots__ = ("header_timeout", "keepalive_timeout", "max_connections", "max_field_size", "max_headers",
                 "max_line_size", "max_per_source", "request_timeout")

    def __init__(self, max_connections: int = 256, max_per_source: int = 64, header_timeout: float = 10.0,
                 keepalive_timeout: float = 15.0, request_timeout: float = 30.0, max_line_size: int = 8190,
                 max_field_size: int = 8190, max_headers: int = 32) -> None:
        self.max_connections = max_connections
        self.max_per_source = min(max_per_source, max_connections)
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.request_timeout = request_timeout
        self.max_line_size = max_line_size
        self.max_field_size = max_field_size
        self.max_headers = max_headers


def host_of(header: str) -> Optional[str]:
    """The host part of a Host header ('[::1]:7777', 'example.org.', 'localhost:80'), lowercased,
    without port or trailing dot; None when it is not a host at all."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end < 0 or (end + 1 < len(h) and not h[end + 1:].startswith(":")):
            return None
        host = h[1:end]
    elif h.count(":") == 1:
        host, _, port = h.partition(":")
        if port and not port.isdigit():
            return None
    elif ":" in h:
        host = h  # a bare IPv6 address, as some clients send it
    else:
        host = h
    host = host.rstrip(".")
    return host or None


def host_allowed(header: Optional[str], allowed: Collection[str]) -> bool:
    """Whether a request's Host header names this server (DNS rebinding: a page of another
    origin reaches a loopback server only under its own host name). No Host header: not a
    browser, allowed. `allowed` holds lowercased names or addresses; loopback ones are implied."""
    if header is None:
        return True
    host = host_of(header)
    if host is None:
        return False
    if host in LOOPBACK_HOSTS or host in allowed:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Conn(asyncio.Protocol):
    """One accepted connection: forwards to aiohttp's handler and keeps the guard's state."""

    def __init__(self, srv: HttpServer, peer: str) -> None:
        self.srv = srv
        self.peer = peer
        self.inner: Any = None
        self.transport: Optional[asyncio.Transport] = None
        self.busy = False
        self.requests = 0
        self.data_since_idle = False  # bytes of a next request seen while not busy
        self.timer: Optional[asyncio.TimerHandle] = None
        self.gone = False

    # asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr: Any = transport
        self.transport = tr
        if self.gone:  # evicted while the transport was being made
            tr.abort()
            return
        self.inner = self.srv.make_handler(self)
        self.inner.connection_made(tr)
        self.arm(self.srv.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.data_since_idle = True
        self.srv.touch(self)
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.cancel()
        self.srv.detach(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # guard -------------------------------------------------------------------------------

    def arm(self, after: float) -> None:
        self.cancel()
        self.timer = asyncio.get_running_loop().call_later(after, self.expire)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        self.timer = None
        if self.busy or self.gone:
            return  # a handler runs: request_timeout bounds it
        if self.data_since_idle:
            self.srv.reject("header_timeout", self.peer, "request head not complete in time")
        elif self.requests == 0:
            self.srv.reject("idle_timeout", self.peer, "connection sent no request")
        self.abort()

    def begin(self) -> None:
        self.busy = True
        self.requests += 1
        self.data_since_idle = False
        self.cancel()
        self.srv.touch(self)

    def end(self) -> None:
        self.busy = False
        self.data_since_idle = False
        if not self.gone:
            # the response is written after this; a client that never reads it is cut here too
            self.arm(self.srv.limits.keepalive_timeout)

    def abort(self) -> None:
        self.srv.detach(self)
        if self.transport is not None:
            self.transport.abort()


class _AiohttpLog:
    """Stands in for aiohttp's server logger: a client's bad HTTP is one rate-limited warning
    with the peer and reason, not an error with a traceback; real bugs still log in full."""

    def __init__(self, srv: HttpServer) -> None:
        self.srv = srv

    def isEnabledFor(self, level: int) -> bool:
        return self.srv.log.isEnabledFor(level)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        pass  # aiohttp's debug lines are per connection: premature disconnects and the like

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self.srv.log.info("aiohttp: " + msg, *args)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self.srv.log.warning("aiohttp: " + msg, *args)

    def error(self, msg: str, *args: Any, exc_info: Any = None, **kw: Any) -> None:
        self.exception(msg, *args, exc_info=exc_info)

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        peer = str(args[0]) if args and "from %s" in msg else "?"
        if isinstance(exc, HttpProcessingError):
            text = str(getattr(exc, "message", "") or exc).strip().splitlines()
            detail = f"{type(exc).__name__}: {text[0] if text else ''}"[:160]
            self.srv.reject("bad_http", peer, detail)
            return
        if isinstance(exc, (ConnectionError, asyncio.CancelledError)):
            return
        self.srv.log.error("request failed peer=%s error=%r", peer, f"{type(exc).__name__}: {exc}"[:300],
                           exc_info=exc if isinstance(exc, BaseException) else None)


class HttpServer:
    """Serves one aiohttp application on one address, within `limits` (module docstring)."""

    _claimed = 0  # connections promised by every started server of this process (fd budget)

    def __init__(self, log: logging.Logger, limits: Optional[HttpLimits] = None,
                 on_reject: Optional[Callable[[str], None]] = None) -> None:
        self.log = log
        self.limits = limits or HttpLimits()
        self.on_reject = on_reject
        self._runner: Optional[web.AppRunner] = None
        self._sock: Optional[socket.socket] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._conns: OrderedDict[_Conn, None] = OrderedDict()  # least recently active first
        self._per_source: Dict[str, int] = {}
        self._by_handler: Dict[Any, _Conn] = {}
        self._pending: Set[asyncio.Task[Any]] = set()
        self._paused: Optional[asyncio.TimerHandle] = None
        self._claim = 0
        self._last_log: Dict[str, Tuple[float, int]] = {}  # reason -> (last line, suppressed since)
        self.address: Tuple[str, int] = ("", 0)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self, app: web.Application, host: str, port: int, key: str = "bindPort") -> None:
        """Bind, listen and serve; `key` names the port's config key in a bind error."""
        lim = self.limits
        app.middlewares.insert(0, self._guard)
        kwargs: Dict[str, Any] = dict(
            access_log=None, handle_signals=False, keepalive_timeout=lim.keepalive_timeout + 1,
            max_line_size=lim.max_line_size, max_field_size=lim.max_field_size, max_headers=lim.max_headers,
            lingering_time=1.0, auto_decompress=False, logger=_AiohttpLog(self),
        )
        if _HAS_SHUTDOWN_TIMEOUT:
            kwargs["shutdown_timeout"] = 0.25
        runner = web.AppRunner(app, **kwargs)
        await runner.setup()
        try:
            self._sock = _listen(host, port, key)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        self.address = self._sock.getsockname()[:2]
        self._claim_fds()
        self._resume()
        self.log.info("listening address=%s port=%d max_connections=%d", host, self.address[1],
                      lim.max_connections)

    async def stop(self) -> None:
        if self._sock is not None:
            self._pause_accepting()
            if self._paused is not None:
                self._paused.cancel()
                self._paused = None
            self._sock.close()
            self._sock = None
        for conn in list(self._conns):
            conn.abort()
        for t in list(self._pending):
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        HttpServer._claimed -= self._claim
        self._claim = 0

    def connection_count(self) -> int:
        return len(self._conns)

    # --- accepting ----------------------------------------------------------------------

    def _resume(self) -> None:
        self._paused = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _pause_accepting(self, for_s: float = 0.0) -> None:
        if self._sock is None or self._loop is None:
            return
        self._loop.remove_reader(self._sock.fileno())
        if for_s > 0 and self._paused is None:
            self._paused = self._loop.call_later(for_s, self._resume)

    def _accept(self) -> None:
        lsock = self._sock
        if lsock is None:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._fds_short(e)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client gave up before we took it
                self.reject("accept_error", "?", f"{e.strerror or e}")
                self._pause_accepting(0.1)
                return
            self._admit(sock, str(addr[0]))

    def _admit(self, sock: socket.socket, peer: str) -> None:
        lim = self.limits
        full = True
        if self._per_source.get(peer, 0) >= lim.max_per_source:
            victim = self._oldest_idle(peer)
        elif len(self._conns) >= lim.max_connections:
            hog = max(self._per_source, key=self._per_source.__getitem__)
            victim = self._oldest_idle(hog) or self._oldest_idle(None)
        else:
            victim, full = None, False
        if full and victim is None:
            self.reject("conn_refused", peer, f"every connection busy (open={len(self._conns)})")
            sock.close()
            return
        if victim is not None:
            self.reject("conn_limit", victim.peer, f"idle connection closed for a new one from {peer} "
                        f"(open={len(self._conns)} max={lim.max_connections} per_source={lim.max_per_source})")
            victim.abort()
        conn = _Conn(self, peer)
        self._conns[conn] = None
        self._per_source[peer] = self._per_source.get(peer, 0) + 1
        assert self._loop is not None
        task = self._loop.create_task(self._connect(conn, sock))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: _Conn, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            sock.setblocking(False)
            await self._loop.connect_accepted_socket(lambda: conn, sock)
        except (OSError, RuntimeError) as e:  # the client reset before we got to it
            self.detach(conn)
            sock.close()
            self.log.debug("connection lost before start peer=%s error=%r", conn.peer, str(e))

    def _oldest_idle(self, peer: Optional[str]) -> Optional[_Conn]:
        # connections still being set up count as idle (they are the newest, so the last choice):
        # else a burst of accepts could fill a cap with connections no one may displace yet
        for c in self._conns:
            if not c.busy and (peer is None or c.peer == peer):
                return c
        return None

    def _fds_short(self, e: OSError) -> None:
        freed = 0
        for c in list(self._conns):
            if freed >= 16:
                break
            if not c.busy and c.transport is not None:
                c.abort()
                freed += 1
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.reject("fd_exhausted", "-", f"accept: {e.strerror}; RLIMIT_NOFILE={soft}, connections="
                    f"{len(self._conns)}, closed {freed} idle ones")
        self._pause_accepting(0.02 if freed else 0.5)

    def _claim_fds(self) -> None:
        """Keep every server's connection cap within the open-files limit (raising the soft limit
        toward the hard one if needed); say so when they cannot all fit."""
        self._claim = self.limits.max_connections
        HttpServer._claimed += self._claim
        need = HttpServer._claimed + _FD_RESERVE
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if need <= soft:
            return
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                self.log.info("open files limit raised soft=%d->%d for the connection caps", soft, target)
                soft = target
            except (OSError, ValueError):
                pass
        if need > soft:
            self.log.warning("connection caps exceed the open files limit max_connections=%d all_servers=%d "
                             "reserve=%d RLIMIT_NOFILE=%d: when descriptors run out, idle connections are "
                             "closed to accept new ones", self.limits.max_connections, HttpServer._claimed,
                             _FD_RESERVE, soft)

    # --- the connections' side ----------------------------------------------------------

    def make_handler(self, conn: _Conn) -> Any:
        assert self._runner is not None and self._runner.server is not None
        handler = self._runner.server()
        self._by_handler[handler] = conn
        return handler

    def touch(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.move_to_end(conn)

    def detach(self, conn: _Conn) -> None:
        if conn.gone:
            return
        conn.gone = True
        self._conns.pop(conn, None)
        if conn.inner is not None:
            self._by_handler.pop(conn.inner, None)
        n = self._per_source.get(conn.peer, 0) - 1
        if n > 0:
            self._per_source[conn.peer] = n
        else:
            self._per_source.pop(conn.peer, None)

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        conn = self._by_handler.get(request.protocol)
        if conn is not None:
            conn.begin()
        try:
            return await asyncio.wait_for(handler(request), self.limits.request_timeout)
        except asyncio.TimeoutError:
            self.reject("request_timeout", request.remote or "?",
                        f"{request.method} {request.path[:100]} not done in {self.limits.request_timeout:g}s")
            return web.json_response({"error": f"request not completed within {self.limits.request_timeout:g} s",
                                      "field": None}, status=408, headers={"Connection": "close"})
        finally:
            if conn is not None:
                conn.end()

    def reject(self, reason: str, peer: str, detail: str) -> None:
        """Count (owner's counters) and log, at most one line per reason per 10 s."""
        if self.on_reject is not None:
            self.on_reject(reason)
        now = time.monotonic()
        last, suppressed = self._last_log.get(reason, (-1e9, 0))
        if now - last < 10.0:
            self._last_log[reason] = (last, suppressed + 1)
            return
        self._last_log[reason] = (now, 0)
        self.log.warning("connection guard reason=%s peer=%s detail=%r suppressed=%d", reason, peer, detail,
                         suppressed)


def _listen(host: str, port: int, key: str) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        # TCP: lets a restart bind while old connections sit in TIME_WAIT; Linux still refuses a
        # second listener on the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            where = f"[{host}]:{port}" if fam == socket.AF_INET6 else f"{host}:{port}"
            raise bind_error(e, key, port, f"TCP {where}") from None
        sock.listen(511)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
