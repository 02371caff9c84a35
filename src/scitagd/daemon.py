# SPDX-License-Identifier: Apache-2.0
"""The daemon core: the flow table, one bounded queue per sink, housekeeping and the life cycle.
It implements `components.Host`; what runs is decided by `wiring` from the config."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Deque, Dict, Iterator, List, Optional, Set

from .addresses import LocalAddresses
from .components import Counters, Enricher, MetricsProvider, Sink, Source
from .config import Config
from .errors import StartupError
from .events import END, ONGOING, TCP, FlowEvent, FlowKey
from .logs import flow_log
from .registry import Registry, RegistryHolder
from .runtime import cancel_and_wait, run_async, until_signalled
from .stats import Stats

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .wiring import Spec
    from .wiring.enrichers import Enrichers
    from .wiring.sinks import Exporter

__all__ = ["Daemon", "StartupError", "run"]

log = logging.getLogger("scitagd.daemon")


@dataclass
class Running:
    spec: Spec
    component: Any
    providers: List[MetricsProvider]  # the metrics it registered, gone with it


class SinkRunner:
    """A bounded queue and one task per sink: a slow sink only ever delays (and drops) its own."""

    BATCH = 512

    def __init__(self, sink: Sink, stats: Stats) -> None:
        self.sink = sink
        self.stats = stats
        self.queue: Deque[FlowEvent] = deque()
        self.limit = sink.queue_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = 0.0
        self._drops_since_log = 0

    def put(self, ev: FlowEvent) -> None:
        q = self.queue
        if len(q) >= self.limit:
            self.stats.queue_dropped[self.sink.name] += 1
            self._drops_since_log += 1
            now = time.monotonic()
            if now - self._last_drop_log > 5:
                log.warning("sink queue full, events dropped sink=%s dropped=%d limit=%d",
                            self.sink.name, self._drops_since_log, self.limit)
                self._last_drop_log = now
                self._drops_since_log = 0
            return
        q.append(ev)
        if len(q) == 1:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sink-{self.sink.name}")

    async def _run(self) -> None:
        q, wake, name, stats = self.queue, self._wake, self.sink.name, self.stats
        while True:
            if not q:
                wake.clear()
                await wake.wait()
            n = min(len(q), self.BATCH)
            batch = [q.popleft() for _ in range(n)]
            try:
                await self.sink.consume(batch)
                stats.dispatched[name] += n
            except asyncio.CancelledError:
                raise
            except Exception:
                stats.sink_errors[name] += 1
                log.exception("sink failed on a batch sink=%s events=%d", name, n)
            # Let sources run between batches even when this sink is never idle.
            await asyncio.sleep(0)

    async def drain(self, timeout: float) -> None:
        """Give the sink a chance to send what is queued (end fireflies at shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue and time.monotonic() < deadline and self._task and not self._task.done():
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await cancel_and_wait([self._task])


class Daemon:
    """Sources -> flow table -> sinks, in one asyncio process. The `components.Host` of every
    component: they reach the core only through the methods in the Host section below."""

    def __init__(self, conf: Config, config_path: Optional[str] = None) -> None:
        from .events import FlowTable
        from .wiring import specs

        self.conf = conf
        self.config_path = config_path  # read again on SIGHUP
        self.stats = Stats()
        self.table = FlowTable(conf.flow_table)
        self.registry_holder = RegistryHolder(conf.registry)
        self.local = LocalAddresses()
        self._own_ports: Set[int] = set()
        self._providers: List[MetricsProvider] = [CoreMetrics(self)]
        self._runners: List[SinkRunner] = []
        self._tasks: List[asyncio.Task[Any]] = []
        self._pending: Set[asyncio.Future[FlowEvent]] = set()
        self._stopping: Optional[asyncio.Event] = None  # made on the loop (Python 3.9 binds at creation)
        self.reloads: Dict[str, int] = {"ok": 0, "failed": 0}
        self.sources: List[Source] = []
        self.sinks: List[Sink] = []
        self.enrichers: Optional[Enrichers] = None
        self.exporter: Optional[Exporter] = None
        self.running: Dict[str, Running] = {}
        built: Dict[str, Any] = {}
        for spec in specs(conf, self, self._providers):
            self._build(spec, built)
        if not self.sources:
            log.warning("no plugins configured: nothing will report flows")

    def _build(self, spec: Spec, built: Dict[str, Any]) -> Any:
        """Build one component; remember it and the metrics providers it registered."""
        before = len(self._providers)
        comp = spec.build(built)
        built[spec.name] = comp
        self.running[spec.name] = Running(spec, comp, self._providers[before:])
        if spec.kind == "source":
            self.sources.append(comp)
        elif spec.kind == "sink":
            self.sinks.append(comp)
        elif spec.kind == "enricher":
            self.enrichers = comp
        else:
            self.exporter = comp
        return comp

    @property
    def finisher(self) -> Optional[Enricher]:
        return self.enrichers.finisher if self.enrichers is not None else None

    # --- Host ---------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        return self.registry_holder.current

    def counters(self, component: str) -> Counters:
        return Counters(self.stats, component)

    def flow(self, key: FlowKey) -> Optional[FlowEvent]:
        return self.table.get(key)

    def flows(self) -> List[FlowEvent]:
        return list(self.table)

    def flow_count(self) -> int:
        return len(self.table)

    def restore(self, ev: FlowEvent) -> bool:
        return self.table.restore(ev)

    def is_local(self, ip: str) -> bool:
        return ip in self.local

    def add_own_port(self, port: int) -> None:
        self._own_ports.add(port)

    def is_own(self, ip: str, port: int) -> bool:
        return port in self._own_ports and ip in self.local

    def register_metrics(self, provider: MetricsProvider) -> None:
        self._providers.append(provider)

    # --- the hot path -------------------------------------------------------------------

    def submit(self, ev: FlowEvent) -> None:
        self.stats.events[(ev.source, ev.state)] += 1
        out = self.table.apply(ev)
        if out is None:
            return
        if out.state == END and self.finisher is not None and out.protocol == TCP:
            # The end waits for one last sample (~0.4 ms, off the loop) to carry the final usage.
            fut = self.finisher.end_of(out)
            self._pending.add(fut)
            fut.add_done_callback(functools.partial(self._finished, out))
            return
        self._dispatch(out)

    def _dispatch(self, out: FlowEvent) -> None:
        if flow_log.enabled and out.state != ONGOING:
            flow_log.add(f"flow {out.state} source={out.source} {out.log_fields()} "
                         f"app={out.application!r}")
        for r in self._runners:
            r.put(out)

    def _finished(self, ev: FlowEvent, fut: asyncio.Future[FlowEvent]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is None:
            self._dispatch(fut.result())
            return
        log.warning("end sent without a last sample error=%r %s",
                    "cancelled" if fut.cancelled() else str(fut.exception()), ev.log_fields())
        self._dispatch(ev)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.local.refresh)
        try:
            for sink in self.sinks:
                await self._start_sink(sink)
            if self.enrichers is not None:
                await self.enrichers.start()
            for src in self.sources:
                await self._start_source(src)
            if self.exporter is not None:
                await self._start_exporter(self.exporter)
        except StartupError:
            await self._teardown(drain=False)
            raise
        self._tasks.append(loop.create_task(self.registry_holder.run_refresher(), name="registry"))
        self._tasks.append(loop.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(loop.create_task(self._flush_flow_log(), name="flow-log"))
        log.info("started pid=%d loop=%s sources=%s sinks=%s registry=%s", os.getpid(),
                 type(loop).__module__.split(".")[0], ",".join(s.name for s in self.sources) or "none",
                 ",".join(self._sink_names()) or "none", self.registry.origin)

    def _sink_names(self) -> List[str]:
        return [s.name for s in self.sinks] + ([self.exporter.name] if self.exporter else [])

    async def _start_sink(self, sink: Sink) -> None:
        try:
            await sink.start()
        except (OSError, RuntimeError) as e:
            raise StartupError(f"backends.{sink.name}: cannot start: {e}") from None
        runner = SinkRunner(sink, self.stats)
        runner.start()
        self._runners.append(runner)

    async def _start_source(self, src: Source) -> None:
        try:
            await src.start()
        except (OSError, ValueError) as e:
            raise StartupError(f"plugins.{src.name}: cannot start: {e}") from None

    async def _start_exporter(self, exp: Exporter) -> None:
        try:
            await exp.start()
        except OSError as e:
            raise StartupError(f"backends.{exp.name}: cannot start: {e}") from None

    async def _stop_sink(self, sink: Sink, drain: bool = True, handover: bool = False) -> None:
        for r in [r for r in self._runners if r.sink is sink]:
            if drain:
                await r.drain(0.5)
            await r.stop()
            self._runners.remove(r)
        stop = getattr(sink, "handover", None) if handover else None
        await _bounded(stop() if stop is not None else sink.stop(), 0.5, f"backends.{sink.name}")

    async def _teardown(self, drain: bool) -> None:
        """Stop what runs, in order: sources, (queued events sent), tasks, enrichers, sinks.
        Also undoes a half-done start, so a failed start leaves no FIFO or socket behind."""
        for src in self.sources:
            await _bounded(src.stop(), 0.5, f"plugins.{src.name}")
        if drain:
            for t in list(self._pending):  # ends waiting for their last sample
                await _bounded(t, 0.5, "end-sample")
            for r in self._runners:
                await r.drain(0.5)
        for t in self._tasks:
            t.cancel()
        if self.enrichers is not None:
            await self.enrichers.stop()
        for r in self._runners:
            await r.stop()
        for sink in self.sinks:
            await _bounded(sink.stop(), 0.5, f"backends.{sink.name}")
        if self.exporter is not None:
            await _bounded(self.exporter.stop(), 0.5, f"backends.{self.exporter.name}")

    # --- reload (SIGHUP) ----------------------------------------------------------------------

    async def reload(self) -> bool:
        """Read the config again and apply it: a component whose section is unchanged keeps
        running untouched (its state, its sockets, the kernel's map); a changed one is rebuilt
        (the marker hands over: the new program REPLACEs the old one's filter, so no packet
        leaves unmarked); the flow table keeps every flow; the registry is read again. An
        invalid config changes nothing and says why."""
        from .compat import load_checked
        from .errors import ConfigError
        from .wiring import specs

        if self.config_path is None:
            log.warning("reload: no config file to read (started without one)")
            return False
        try:
            conf, said = load_checked(self.config_path)
            for n in said:
                log.warning("config key=%s %s", n.key, n.text)
            new_specs = {s.name: s for s in specs(conf, self, self._providers)}  # nothing built yet
        except (ConfigError, StartupError) as e:
            self.reloads["failed"] += 1
            log.error("config not reloaded, the running one stays error=%r", str(e))
            return False
        old = self.running
        changed = sorted(n for n in old if n not in new_specs or new_specs[n].key != old[n].spec.key)
        added = sorted(n for n in new_specs if n not in old)
        # take down what changes: sources first (nothing new comes in), then what they feed
        for name in changed:
            r = old[name]
            if r.spec.kind == "source":
                await _bounded(r.component.stop(), 0.5, name)
                self.sources.remove(r.component)
        for name in changed:
            r = old[name]
            if r.spec.kind == "enricher":
                await r.component.stop()
                self.enrichers = None
            elif r.spec.kind == "exporter":
                await _bounded(r.component.stop(), 0.5, name)
                self.exporter = None
            elif r.spec.kind == "sink" and not (name == "backends.marker" and name in new_specs):
                await self._stop_sink(r.component)
                self.sinks.remove(r.component)
        for name in changed:
            for p in old[name].providers:
                if p in self._providers:
                    self._providers.remove(p)
        kept = {n: r for n, r in old.items() if n not in changed}
        self.running = dict(kept)
        built: Dict[str, Any] = {n: r.component for n, r in kept.items()}
        # bring up what is new or changed, in build order (the watcher finds its enrichers)
        failed = []
        for spec in new_specs.values():
            if spec.name in kept:
                continue
            handover = old.get(spec.name) if spec.name == "backends.marker" else None
            if handover is not None:
                self.running.pop(spec.name, None)
            try:
                comp = self._build(spec, built)
                if spec.kind == "sink":
                    await self._start_sink(comp)
                    if handover is not None:  # the new program is attached: the old one may go
                        adopt = getattr(comp, "adopt", None)
                        if adopt is not None:
                            await adopt(handover.component)
                        await self._stop_sink(handover.component, handover=True)
                        self.sinks.remove(handover.component)
                        for p in handover.providers:
                            if p in self._providers:
                                self._providers.remove(p)
                elif spec.kind == "enricher":
                    await comp.start()
                elif spec.kind == "source":
                    await self._start_source(comp)
                else:
                    await self._start_exporter(comp)
            except (StartupError, OSError, ValueError) as e:
                failed.append(spec.name)
                log.error("reload: %s not started, running without it error=%r", spec.name, str(e))
                self.running.pop(spec.name, None)
        # what does not need a rebuild
        from . import logs

        if conf.logging != self.conf.logging:
            logs.setup(conf.logging.level, conf.logging.flow_events)
        self.table.conf = conf.flow_table
        if conf.registry != self.conf.registry:
            self.registry_holder.reconfigure(conf.registry)
        await self.registry_holder.refresh()
        self.conf = conf
        self.reloads["ok" if not failed else "failed"] += 1
        log.info("reloaded config=%s rebuilt=%s added=%s kept=%s failed=%s active_flows=%d", self.config_path,
                 ",".join(n for n in changed if n in new_specs) or "none", ",".join(added) or "none",
                 ",".join(sorted(kept)) or "none", ",".join(failed) or "none", len(self.table))
        return not failed

    def status(self) -> str:
        """One line for systemd's STATUS=."""
        return (f"{len(self.table)} active flows; sources {','.join(s.name for s in self.sources) or 'none'}; "
                f"sinks {','.join(self._sink_names()) or 'none'}")

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
        if self._stopping is not None:
            self._stopping.set()

    async def run_until_stopped(self) -> None:
        self._stopping = asyncio.Event()
        await until_signalled(self.start, self.stop, self._stopping, self.reload, self.status)

    async def stop(self) -> None:
        t0 = time.monotonic()
        log.info("stopping active_flows=%d", len(self.table))
        await self._teardown(drain=True)
        log.info("stopped in %.3fs", time.monotonic() - t0)
        flow_log.flush()

    # --- for the core's own metrics -------------------------------------------------------

    def queue_lengths(self) -> Iterator[tuple[str, int]]:
        return ((r.sink.name, len(r.queue)) for r in self._runners)

    def sink_names(self) -> List[str]:
        return [r.sink.name for r in self._runners]


class CoreMetrics:
    """The core's own counters, read at scrape time (see stats.py for why)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from .registry import TAG_LABELS

        d = self.d
        st = d.stats
        holder = d.registry_holder
        reg = holder.current
        m = CounterMetricFamily("scitagd_events", "Flow events received, by source and state",
                                labels=["source", "state"])
        for (src, state), n in list(st.events.items()):
            m.add_metric([src, state], n)
        yield m
        m = CounterMetricFamily("scitagd_rejected", "Inputs rejected, by source and reason",
                                labels=["source", "reason"])
        for (src, reason), n in list(st.rejected.items()):
            m.add_metric([src, reason], n)
        yield m
        m = CounterMetricFamily("scitagd_ignored", "Inputs ignored on purpose (our own fireflies)",
                                labels=["source", "why"])
        for (src, why), n in list(st.ignored.items()):
            m.add_metric([src, why], n)
        yield m
        g = GaugeMetricFamily("scitagd_active_flows", "Active flows by experiment and activity", labels=TAG_LABELS)
        for (e, a), n in list(d.table.active_by_tag.items()):
            g.add_metric(reg.tag_labels(e, a), n)
        yield g
        t = d.table
        m = CounterMetricFamily("scitagd_flow_table_events", "Flow table outcomes other than "
                                "a new or ended flow", labels=["kind"])
        for kind, n in (("duplicate_start", t.duplicate_starts), ("unknown_end", t.unknown_ends),
                        ("unknown_ongoing", t.unknown_ongoing), ("expired", t.expired),
                        ("table_full", t.overflow)):
            m.add_metric([kind], n)
        yield m
        m = CounterMetricFamily("scitagd_fireflies_sent", "Fireflies sent, by destination "
                                "('peer' for all transfer peers, host:port for collectors)",
                                labels=["destination"])
        for dest, n in list(st.sent.items()):
            m.add_metric([dest], n)
        yield m
        m = CounterMetricFamily("scitagd_fireflies_failed", "Fireflies not sent, by destination "
                                "and error", labels=["destination", "error"])
        for (dest, err), n in list(st.send_failed.items()):
            m.add_metric([dest, err], n)
        yield m
        m = CounterMetricFamily("scitagd_sink_queue_dropped", "Events dropped because a sink's "
                                "queue was full", labels=["sink"])
        for sink in d.sink_names():
            m.add_metric([sink], st.queue_dropped.get(sink, 0))
        yield m
        m = CounterMetricFamily("scitagd_sink_errors", "Batches a sink failed on", labels=["sink"])
        for sink in d.sink_names():
            m.add_metric([sink], st.sink_errors.get(sink, 0))
        yield m
        g = GaugeMetricFamily("scitagd_sink_queue_length", "Events waiting per sink",
                              labels=["sink"])
        for name, length in d.queue_lengths():
            g.add_metric([name], length)
        yield g
        now = time.time()
        yield GaugeMetricFamily("scitagd_registry_age_seconds", "Seconds since the registry in "
                                "use was fetched (for the bundled snapshot: since its 'modified')",
                                value=max(0.0, now - reg.loaded_at))
        m = CounterMetricFamily("scitagd_registry_refresh", "Registry refresh attempts",
                                labels=["result"])
        m.add_metric(["ok"], holder.refresh_ok)
        m.add_metric(["failed"], holder.refresh_failures)
        yield m


async def _bounded(aw: Awaitable[Any], timeout: float, what: str) -> None:
    try:
        await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        log.warning("component did not stop in time component=%s timeout=%gs", what, timeout)


def run(conf: Config, config_path: Optional[str] = None) -> int:
    """Run until SIGTERM/SIGINT. The pid file (pidFile / pidPath) is taken before anything else,
    so a second daemon with the same file stops before it binds a port."""
    pid = None
    if conf.pid:
        from .pidfile import PidFile

        pid = PidFile(conf.pid)
        pid.acquire()
    try:
        daemon = Daemon(conf, config_path)
        run_async(daemon.run_until_stopped())
    finally:
        if pid is not None:
            pid.release()
    return 0
