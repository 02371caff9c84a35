"""Wires sources -> flow table -> sinks in one asyncio process."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import sys
import time
from typing import Any, Coroutine, Iterator, List, Set, Tuple, TypeVar

from .components import Sink, SinkRunner, Source
from .config import Config
from .events import END, START, FlowEvent, FlowTable
from .logs import flow_log
from .registry import RegistryHolder
from .stats import Stats
from .tags import TagError, check_activity, check_experiment

log = logging.getLogger("scitagd.daemon")
T = TypeVar("T")


class StartupError(RuntimeError):
    pass


class LocalAddresses:
    """This host's addresses, refreshed in the background (interfaces come and go)."""

    def __init__(self) -> None:
        self.addrs: Set[str] = {"127.0.0.1", "::1"}

    def refresh(self) -> None:
        try:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                found = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()}
        except Exception as e:  # netlink unavailable (containers without it): keep what we had
            log.warning("local addresses not refreshed error=%r", str(e))
            return
        found.discard(None)
        self.addrs = {str(ipaddress.ip_address(a)) for a in found} | {"127.0.0.1", "::1"}

    def __contains__(self, ip: str) -> bool:
        return ip in self.addrs or ip.startswith("127.")


class Daemon:
    def __init__(self, conf: Config) -> None:
        self.conf = conf
        self.stats = Stats()
        self.table = FlowTable(conf.flow_table)
        self.registry = RegistryHolder(conf.registry)
        self.local = LocalAddresses()
        self.own_ports: Set[int] = set()
        self.sources: List[Source] = []
        self.sinks: List[Sink] = []
        self._runners: List[SinkRunner] = []
        self._stop = asyncio.Event()
        self._tasks: List[asyncio.Task[Any]] = []
        self.started_at = time.time()
        self._build()

    def _build(self) -> None:
        c = self.conf
        unsupported = []
        marker = c.backends.marker
        if c.plugins.iperf3 is not None:
            unsupported.append("plugins.iperf3")
        if unsupported:
            raise StartupError(", ".join(unsupported) + ": configured but not available in this "
                               "version of scitagd; remove the section(s) to run without them")
        self.enricher: Any = None
        self.skops: Any = None
        mode = c.backends.firefly.enrichment_mode if c.backends.firefly is not None else "lean"
        if c.enrichers is not None and c.enrichers.netlink is not None:
            from .enrich.netlink import NetlinkEnricher

            self.enricher = NetlinkEnricher(self, c.enrichers, mode)
        if c.enrichers is not None and c.enrichers.skops is not None:
            from .enrich.skops import SkopsEnricher

            self.skops = SkopsEnricher(self, c.enrichers.period, mode)
            self.enricher = self.enricher or self.skops
        # Imports here keep `scitagd tag ...` from paying for aiohttp.
        if c.plugins.api is not None:
            from .sources.api import ApiSource

            self.sources.append(ApiSource(self, c.plugins.api))
        if c.plugins.namedPipe is not None:
            from .sources.namedpipe import NamedPipeSource

            self.sources.append(NamedPipeSource(self, c.plugins.namedPipe))
        if c.plugins.firefly is not None:
            from .sources.firefly import FireflySource

            self.sources.append(FireflySource(self, c.plugins.firefly))
        watcher = c.plugins.watcher
        if self.skops is not None and watcher is None:
            from .sources.watcher import WatcherConfig

            watcher = WatcherConfig(cgroup_path=c.enrichers.skops.cgroup_path if c.enrichers and c.enrichers.skops
                                    else "/sys/fs/cgroup", mode="ebpf")  # the sampler is the watcher's program
        ps = c.plugins.perfsonar
        if ps is not None and not (marker is not None and marker.match_all):
            # perfSONAR through the watcher: its measurement connections, not everything
            from .sources.watcher import WatcherConfig, WatchRule

            try:
                extra = [WatchRule(experiment=ps.experimentID, activity=ps.activityID, local_ports=ps.ports),
                         WatchRule(experiment=ps.experimentID, activity=ps.activityID, remote_ports=ps.ports)]
            except ValueError as e:
                raise StartupError(f"plugins.perfsonar: {e}") from None
            base = watcher or WatcherConfig()
            watcher = WatcherConfig(cgroup_path=base.cgroup_path, rules=[*base.rules, *extra], mode=base.mode,
                                    poll_interval=base.poll_interval, ignore_networks=base.ignore_networks)
        if watcher is not None:
            from .sources.watcher import WatcherSource

            ws = WatcherSource(self, watcher)
            ws.skops = self.skops
            self.sources.append(ws)
        if c.backends.firefly is not None:
            from .sinks.firefly import FireflySink

            self.sinks.append(FireflySink(self, c.backends.firefly))

        if marker is not None:
            from .sinks.marker import MarkerSink

            self.sinks.append(MarkerSink(self, marker, self._match_all()))
        if c.backends.prometheus is not None:
            from .sinks.prometheus import PrometheusSink

            prom = PrometheusSink(self, c.backends.prometheus)
            flavours = [(e, f) for e, f in ((c.enrichers and c.enrichers.netlink and self.enricher, "netlink"),
                                            (self.skops, "skops")) if e]
            if flavours:
                from .enrich.netlink import FlowMetrics

                prom.add_collector(FlowMetrics(flavours))
            if marker is not None:
                from .sinks.marker import MarkerMetrics, MarkerSink

                for sink in self.sinks:
                    if isinstance(sink, MarkerSink):
                        prom.add_collector(MarkerMetrics(sink))
            self.sinks.append(prom)
        if not self.sources:
            log.warning("no plugins configured: nothing will report flows")

    def _match_all(self) -> Tuple[int, int] | None:
        """matchAll's tag: backends.marker.matchExperiment/Activity, else flowd-go's perfsonar ids."""
        m = self.conf.backends.marker
        if m is None or not m.match_all:
            return None
        exp, act = m.match_experiment, m.match_activity
        ps = self.conf.plugins.perfsonar
        if exp is None and ps is not None:
            exp = ps.experimentID
        if act is None and ps is not None:
            act = ps.activityID
        if exp is None or act is None:
            raise StartupError("backends.marker.matchAll: set matchExperiment and matchActivity (or "
                               "plugins.perfsonar experimentID/activityID)")
        try:
            check_experiment(exp)
            check_activity(act)
        except TagError as e:
            raise StartupError(f"backends.marker.matchAll: {e}") from None
        return exp, act

    # --- the hot path -------------------------------------------------------------------

    def submit(self, ev: FlowEvent) -> None:
        """Called by sources for every valid event."""
        self.stats.events[(ev.source, ev.state)] += 1
        out = self.table.apply(ev)
        if out is None:
            return
        if out.state == END and self.enricher is not None and out.protocol == "tcp":
            # The end waits for one last sample (~0.4 ms, off the loop) to carry the final usage.
            self.enricher.ending.add(out.key)
            asyncio.get_running_loop().create_task(self._end_with_usage(out))
            return
        self._dispatch(out)

    def _dispatch(self, out: FlowEvent) -> None:
        if flow_log.enabled and out.state != "ongoing":
            flow_log.add(f"flow {out.state} source={out.source} {out.log_fields()} "
                         f"app={out.application!r}")
        for r in self._runners:
            r.put(out)

    async def _end_with_usage(self, ev: FlowEvent) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.enricher.sample, [ev], False)
        except OSError as e:
            log.warning("final sample failed error=%r %s", str(e), ev.log_fields())
        self._dispatch(self.enricher.final(ev))

    # --- helpers for components ---------------------------------------------------------

    def is_local(self, ip: str) -> bool:
        return ip in self.local

    def sink_names(self) -> List[str]:
        return [r.sink.name for r in self._runners]

    def queue_lengths(self) -> Iterator[Tuple[str, int]]:
        return ((r.sink.name, len(r.queue)) for r in self._runners)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.local.refresh)
        for sink in self.sinks:
            try:
                await sink.start()
            except (OSError, RuntimeError) as e:
                await self._abort_start()
                raise StartupError(f"backends.{sink.name}: cannot start: {e}") from None
            if type(sink).consume is not Sink.consume or type(sink).handle is not Sink.handle:
                runner = SinkRunner(sink, self)
                runner.start()
                self._runners.append(runner)
        for enr in self._enrichers():
            await enr.start()
        for src in self.sources:
            try:
                await src.start()
            except (OSError, ValueError) as e:
                await self._abort_start()
                raise StartupError(f"plugins.{src.name}: cannot start: {e}") from None
        self._tasks.append(loop.create_task(self.registry.run_refresher(), name="registry"))
        self._tasks.append(loop.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(loop.create_task(self._flush_flow_log(), name="flow-log"))
        if self.conf.pid_path:
            with open(self.conf.pid_path, "w") as f:
                f.write(f"{os.getpid()}\n")
        log.info("started pid=%d loop=%s sources=%s sinks=%s registry=%s", os.getpid(),
                 type(loop).__module__.split(".")[0], ",".join(s.name for s in self.sources) or "none",
                 ",".join(s.name for s in self.sinks) or "none", self.registry.current.origin)

    def _enrichers(self) -> List[Any]:
        # one object may be both (skops alone is also the enricher that finishes ends)
        return list({id(e): e for e in (self.enricher, self.skops) if e is not None}.values())

    async def _abort_start(self) -> None:
        """Undo a half-done start so that a failed start leaves no FIFO or socket behind."""
        await self._teardown(drain=False)

    async def _teardown(self, drain: bool) -> None:
        """Stop what runs, in order: sources, (queued events sent), tasks, enrichers, sinks."""
        for src in self.sources:
            await _bounded(src.stop(), 0.5, f"plugins.{src.name}")
        if drain:
            for r in self._runners:
                await r.drain(0.5)
        for t in self._tasks:
            t.cancel()
        for enr in self._enrichers():
            await enr.stop()
        for r in self._runners:
            await r.stop()
        for sink in self.sinks:
            await _bounded(sink.stop(), 0.5, f"backends.{sink.name}")

    async def _housekeeping(self) -> None:
        period = min(5.0, max(0.05, self.conf.flow_table.expire_after / 10))
        last_addr = time.monotonic()
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            for ev in self.table.expire():
                log.warning("flow expired without an end expire_after=%gs %s",
                            self.conf.flow_table.expire_after, ev.log_fields())
                for r in self._runners:
                    r.put(ev)
            if time.monotonic() - last_addr > 30:
                last_addr = time.monotonic()
                await loop.run_in_executor(None, self.local.refresh)

    async def _flush_flow_log(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            flow_log.flush()

    def request_stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        await self._stop.wait()
        await self.stop()

    async def stop(self) -> None:
        t0 = time.monotonic()
        log.info("stopping active_flows=%d", len(self.table))
        await self._teardown(drain=True)
        if self.conf.pid_path:
            try:
                os.unlink(self.conf.pid_path)
            except OSError:
                pass
        log.info("stopped in %.3fs", time.monotonic() - t0)
        flow_log.flush()


async def _bounded(coro: Any, timeout: float, what: str) -> None:
    try:
        await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        log.warning("component did not stop in time component=%s timeout=%gs", what, timeout)


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


def run(conf: Config) -> int:
    daemon = Daemon(conf)
    run_async(daemon.run_until_stopped())
    return 0


__all__ = ["END", "START", "Daemon", "StartupError", "run"]
