# SPDX-License-Identifier: Apache-2.0
"""Running a service process: the event loop (uvloop where installed) and the life cycle
start -> wait for SIGTERM/SIGINT -> stop, shared by the daemon and the collector."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import resource
import signal
import sys
import time
from typing import Any, Awaitable, Callable, Coroutine, Dict, Iterable, Optional, TypeVar

from .sdnotify import Notifier

__all__ = ["GC_THRESHOLD", "cancel_and_wait", "collect_rarely", "run_async", "until_signalled"]

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


async def cancel_and_wait(tasks: Iterable[Optional[asyncio.Task[Any]]]) -> None:
    """Cancel background tasks and wait until each has finished unwinding (its `finally` blocks
    run before the caller closes what they use)."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    for t in live:
        try:
            await t
        except asyncio.CancelledError:
            pass


# A collector keeps ~6 GC-tracked containers per flow in memory (a flow, its reports' lists, the
# identities it has seen; up to store.cacheSize flows). CPython's default thresholds (700, 10, 10)
# scan them again and again: 508 young and 3 full collections per 64,000 fireflies, 11 us of a
# ~70 us firefly (bench/collector_cost.py's traffic, process CPU time). With these, 5
# collections and 1.8 us. Memory: a young generation of at most 50,000 objects between scans.
GC_THRESHOLD = (50_000, 20, 100)


def collect_rarely() -> None:
    """For processes whose memory is many small acyclic objects (flows): collect what start-up
    left, keep it out of every later scan (gc.freeze), and scan the young objects rarely.
    Reference cycles are still collected, only less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


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
                          stopping: asyncio.Event | None = None,
                          reload: Optional[Callable[[], Awaitable[Any]]] = None,
                          status: Optional[Callable[[], str]] = None) -> None:
    """start(), tell systemd READY=1, then run until SIGTERM/SIGINT (or `stopping` set by the
    service itself), then stop(). SIGHUP runs `reload` (one at a time; a SIGHUP during a
    reload runs one more after it). Signals are handled on the loop, so all of it is ordinary
    loop code; the watchdog keep-alives come from the loop too, so a stuck loop stops them."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(exception_handler)
    notifier = Notifier()
    background = [loop.create_task(watch_fds(), name="fd-watch")]
    event = stopping or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    reloading: Dict[str, Any] = {"task": None, "again": False}

    async def run_reloads() -> None:
        assert reload is not None
        while True:
            reloading["again"] = False
            notifier.reloading()
            try:
                await reload()
            finally:
                notifier.ready(status() if status else "")
            if not reloading["again"]:
                break

    def on_hup() -> None:
        if reload is None:
            log.warning("SIGHUP: nothing to reload here")
            return
        task = reloading["task"]
        if task is not None and not task.done():
            reloading["again"] = True
            return
        reloading["task"] = loop.create_task(run_reloads(), name="reload")

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await start()
        notifier.ready(status() if status else "")
        if notifier.watchdog_interval or (notifier.enabled and status):
            background.append(loop.create_task(_keepalive(notifier, status), name="sd-notify"))
        await event.wait()
    finally:
        for t in background:
            t.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    task = reloading["task"]
    if task is not None and not task.done():
        await task  # a reload half done is finished, not torn
    notifier.stopping()
    await stop()
    notifier.close()


async def _keepalive(notifier: Notifier, status: Optional[Callable[[], str]]) -> None:
    """WATCHDOG=1 at half of WatchdogSec, STATUS= every 10 s, both from the event loop."""
    interval = min(notifier.watchdog_interval or 10.0, 10.0)
    last_status = 0.0
    while True:
        if notifier.watchdog_interval:
            notifier.watchdog()
        if status is not None and time.monotonic() - last_status >= 10.0:
            last_status = time.monotonic()
            notifier.status(status())
        await asyncio.sleep(interval)


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
