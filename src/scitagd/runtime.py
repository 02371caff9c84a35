"""Running a service process: the event loop (uvloop where installed) and the life cycle
start -> wait for SIGTERM/SIGINT -> stop, shared by the daemon and the collector."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import signal
import sys
import time
from typing import Any, Awaitable, Callable, Coroutine, Dict, TypeVar

__all__ = ["run_async", "until_signalled"]

T = TypeVar("T")
log = logging.getLogger("scitagd.loop")
_last: Dict[str, float] = {}


def _open_fds() -> int:
    """Open file descriptors; at the limit, listing them needs one more than there is."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as e:
        if e.errno == errno.EMFILE:
            return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return -1


def exception_handler(loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
    """What the loop reports on its own (a failed accept, a callback that raised): one line,
    at most one per kind per 10 s, and no traceback for the resource errors a busy listener
    meets. File descriptors running short get the numbers an operator needs."""
    exc = context.get("exception")
    msg = str(context.get("message", "")).replace("\n", " ")
    key = type(exc).__name__ if exc is not None else msg[:40]
    now = time.monotonic()
    if now - _last.get(key, -10.0) < 10.0:
        return
    _last[key] = now
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning("file descriptors run short: %s; open=%d limit=%d (RLIMIT_NOFILE; LimitNOFILE= in the unit) "
                    "reason=%r", msg, _open_fds(), soft, exc.strerror)
        return
    if isinstance(exc, (ConnectionError, TimeoutError)):
        log.warning("connection problem seen by the event loop: %s error=%r", msg, str(exc))
        return
    # anything else is a bug of ours: say so, with the exception (on one line, see logs.py)
    log.error("unhandled in the event loop: %s", msg, exc_info=exc)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where installed (p99 at 32,000 fireflies/s: 2.0 -> 0.55 ms)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    uvloop.install()
    return asyncio.run(main)


async def until_signalled(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
                          stopping: asyncio.Event | None = None) -> None:
    """start(), then wait for SIGTERM/SIGINT (or `stopping` set by the service itself), then
    stop(). Signals are handled on the loop, so stop() runs as ordinary loop code."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(exception_handler)
    watch = loop.create_task(watch_fds(), name="fd-watch")
    event = stopping or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    try:
        await start()
        await event.wait()
    finally:
        watch.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    await stop()


async def watch_fds(period: float = 2.0, share: float = 0.9) -> None:
    """Say so when open file descriptors reach `share` of RLIMIT_NOFILE: uvloop (libuv) drops
    connections it cannot accept without telling anyone, so the process checks for itself."""
    warned = 0.0
    while True:
        await asyncio.sleep(period)
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        n = _open_fds()
        if soft > 0 and n >= share * soft and time.monotonic() - warned > 60:
            warned = time.monotonic()
            log.warning("file descriptors run short: open=%d limit=%d (RLIMIT_NOFILE; raise LimitNOFILE= in the "
                        "unit, or lower the connection caps)", n, soft)
