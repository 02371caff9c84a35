# SPDX-License-Identifier: Apache-2.0
"""Router flow exports into the collector: receivers -> aggregators -> the store's link tables.

One receiver per configured section (`collector.ipfix`, `.netflow`, `.sflow`), each with its own
tag matcher (rebuilt when the registry changes) and aggregator (its `markingPrefixes`), all on
the collector's event loop. The service calls `take()` every second and writes what it returns
on the store's thread (`Store.ingest_links`): rows are deltas, so the current minute is written
as it grows and /api/v1/links lags an export by about a second.

Paths: the records of flows fireflies reported (`watch`), tagged or not, are kept per minute and
place (`link_paths`), so /api/v1/flows shows where a reported flow was seen on the wire and with
which tag. Tagged records of flows not (yet) reported are held in memory for 10 minutes: a
firefly that comes later still gets them. None of this runs while no firefly came for 10 minutes.

Bounds: aggregator label sets (flowexport.aggregate), path rows per flush and per minute,
pending rows while the store cannot write, watched 5-tuples, metric series; each overflow is
counted. Times: a record more than maxClockSkew from the collector's clock is counted at arrival.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..errors import StartupError
from ..flowexport.aggregate import MAX_RECORD_BYTES, OTHER, Aggregator, Row
from ..flowexport.receiver import IpfixReceiver, NetflowReceiver, Receiver, SflowReceiver, matcher_for
from ..flowexport.records import FlowRecord
from ..logs import Throttle
from ..registry import TAG_LABELS, Registry, RegistryHolder
from ..runtime import cancel_and_wait
from .attribution import MINUTE
from .conf import CollectorConfig
from .links import DIRECTIONS, PathRow, clamp

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .report import Report

__all__ = ["LinkFeed", "PathRecorder", "Section", "Watch"]

log = logging.getLogger("scitagd.collector.links")

MAX_SERIES = 20_000  # (link, tag) metric series; past it: exporter "other"
SHARE_WINDOW = 5  # minutes of the tagged-share gauge
MAX_PENDING_ROWS = 500_000  # link rows kept while the store cannot write
UNTAGGED = (-2, -2)
OTHER_TAG = (OTHER, OTHER)

FlowKey = Tuple[bytes, bytes, int, int, int]
PathKey = Tuple[int, bytes, bytes, int, int, int, str, int, Optional[int], Optional[int], Optional[int],
                Optional[int]]


class Watch:
    """5-tuples (both ways) that fireflies reported, so that their untagged records get a path
    too: until `linger` s after their end, or activeTimeout after their last report; at most
    `max_flows`, least recently reported out first."""

    def __init__(self, active_timeout: float, max_flows: int = 200_000, linger: float = 600.0) -> None:
        self.active_timeout = active_timeout
        self.max_flows = max_flows
        self.linger = linger
        self.flows: Dict[FlowKey, float] = {}  # oldest report first
        self.sources: Dict[bytes, int] = {}  # source address -> watched keys from it: a cheap first test
        self.evicted = 0

    def __bool__(self) -> bool:
        return bool(self.flows)

    def __contains__(self, key: FlowKey) -> bool:
        return key in self.flows

    def add(self, r: Report, now: Optional[float] = None) -> Tuple[FlowKey, ...]:
        """Watch the report's flow (both ways); returns its two keys."""
        proto = 6 if r.proto == "tcp" else 17
        try:  # canonical text already (make_report): inet_pton is 10x cheaper than ipaddress
            s, d = _pton(r.src), _pton(r.dst)
        except OSError:
            return ()
        now = time.time() if now is None else now
        until = now + (self.linger if r.state == "end" else self.active_timeout)
        keys = ((s, d, proto, r.sport, r.dport), (d, s, proto, r.dport, r.sport))
        flows = self.flows
        for key in keys:
            if flows.pop(key, None) is None:  # a plain dict keeps insertion order: re-inserted = newest
                self.sources[key[0]] = self.sources.get(key[0], 0) + 1
            flows[key] = until
        while len(flows) > self.max_flows:
            oldest = next(iter(flows))
            del flows[oldest]
            self._forget(oldest)
            self.evicted += 1
        return keys

    def _forget(self, key: FlowKey) -> None:
        n = self.sources.get(key[0], 1) - 1
        if n > 0:
            self.sources[key[0]] = n
        else:
            self.sources.pop(key[0], None)

    def expire(self, now: float) -> int:
        gone = [k for k, until in self.flows.items() if until < now]
        for k in gone:
            del self.flows[k]
            self._forget(k)
        return len(gone)


class PathRecorder:
    """Per minute and place, the bytes of tagged and watched 5-tuples. `take()` hands out those of
    flows a firefly reported (watched) and holds the others for `hold` seconds, so that a
    firefly arriving after its flow's records still finds them (`release`): only reported flows
    reach the store, the link_paths table grows with the fireflies, not with the network.
    Bounds: `max_pending` keys between takes, `max_held` flows held, `max_per_minute` rows
    handed out per minute; what does not fit is counted in `dropped`."""

    def __init__(self, max_pending: int = 200_000, max_per_minute: int = 200_000, max_held: int = 100_000,
                 hold: float = 600.0) -> None:
        self.max_pending = max_pending
        self.max_per_minute = max_per_minute
        self.max_held = max_held
        self.hold = hold
        self.buckets: Dict[PathKey, List[int]] = {}
        self.held: OrderedDict[FlowKey, Tuple[float, Dict[PathKey, List[int]]]] = OrderedDict()
        self.held_keys = 0  # place keys over all held flows (bounded by max_pending too)
        self.written: Dict[int, int] = {}  # minute -> rows handed out
        self.dropped = 0

    def add(self, records: Iterable[FlowRecord], watch: Optional[Watch]) -> None:
        buckets = self.buckets
        watched = watch.flows if watch else None
        sources = watch.sources if watch else {}
        last_t = None
        minute = 0
        for r in records:
            exp = r.experiment
            if exp is None and (r.src not in sources or watched is None
                                or (r.src, r.dst, r.protocol, r.sport, r.dport) not in watched):
                continue
            nbytes = r.bytes
            if nbytes > MAX_RECORD_BYTES:
                continue
            t = r.time
            if t != last_t:  # records of one message share their time
                last_t = t
                minute = int(t) // MINUTE * MINUTE
            d = r.direction
            key = (minute, r.src, r.dst, r.protocol, r.sport, r.dport, r.exporter, r.domain,
                   r.egress if d == 1 and r.egress is not None else r.ingress, d, exp, r.activity)
            b = buckets.get(key)
            if b is not None:
                b[0] += nbytes
                b[1] += r.packets
            elif len(buckets) < self.max_pending:
                buckets[key] = [nbytes, r.packets]
            else:
                self.dropped += 1

    def release(self, keys: Iterable[FlowKey]) -> None:
        """A firefly reported these flows: their held places go out with the next take."""
        for fk in keys:
            entry = self.held.pop(fk, None)
            if entry is None:
                continue
            self.held_keys -= len(entry[1])
            for k, v in entry[1].items():
                b = self.buckets.get(k)
                if b is not None:
                    b[0] += v[0]
                    b[1] += v[1]
                elif len(self.buckets) < self.max_pending:
                    self.buckets[k] = v
                else:
                    self.dropped += 1

    def take(self, watch: Optional[Watch] = None, now: Optional[float] = None) -> List[PathRow]:
        now = time.time() if now is None else now
        out: List[PathRow] = []
        written = self.written
        watched = watch.flows if watch else {}
        held = self.held
        for key, v in self.buckets.items():
            minute, src, dst, proto, sport, dport, ex, dom, ifc, d, e, a = key
            fk = (src, dst, proto, sport, dport)
            if fk not in watched:
                entry = held.get(fk)
                if entry is None:
                    if len(held) >= self.max_held or self.held_keys >= self.max_pending:
                        self.dropped += 1
                        continue
                    entry = held[fk] = (now, {})
                cur = entry[1].get(key)
                if cur is None:
                    entry[1][key] = v
                    self.held_keys += 1
                else:
                    cur[0] += v[0]
                    cur[1] += v[1]
                continue
            nb, npk = v
            n = written.get(minute, 0)
            if n >= self.max_per_minute:
                self.dropped += 1
                continue
            written[minute] = n + 1
            nb, npk, _ = clamp(nb, npk)
            out.append(PathRow(minute, proto, _ntop(src), _ntop(dst), sport, dport, ex, dom, ifc, d, e, a, nb, npk))
        self.buckets = {}
        while held:
            fk, (since, places) = next(iter(held.items()))
            if since > now - self.hold:
                break
            del held[fk]
            self.held_keys -= len(places)
        if len(written) > 8:  # only recent minutes matter; late records of old ones are rare
            for m in sorted(written)[:-8]:
                del written[m]
        return out


def _pton(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)


def _ntop(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(b) == 16 else socket.AF_INET, b)


class Section:
    """One configured flow-export listener and what is counted about it."""

    def __init__(self, name: str, conf: Any, registry: Registry, callback: Any, max_skew: float) -> None:
        self.name = name
        self.conf = conf
        self.matcher = matcher_for(conf, registry)
        self.rows: List[Row] = []
        self.agg = Aggregator(self.rows.extend, marking_prefixes=conf.marking_prefixes,
                              false_positive_rate=self.matcher.false_positive_rate, max_skew=max_skew)
        cls = {"ipfix": IpfixReceiver, "netflow": NetflowReceiver, "sflow": SflowReceiver}[name]
        self.receiver: Receiver = cls(conf, self.matcher, lambda recs: callback(self, recs))
        self.records = 0
        self.kernel_drops = 0
        self.receive_buffer = 0

    @property
    def protocol(self) -> str:
        return self.receiver.protocol


class LinkFeed:
    def __init__(self, conf: CollectorConfig, registry: RegistryHolder) -> None:
        self.conf = conf
        self.registry = registry
        self._reg = registry.current
        self.watch = Watch(conf.active_timeout)
        self.paths = PathRecorder()
        self.sections = [Section(name, sec, self._reg, self._records, conf.max_clock_skew)
                         for name, sec in conf.flow_exports()]
        self.pending: Tuple[List[Row], List[PathRow]] = ([], [])
        self.series: Dict[Tuple[str, str, str, str, Tuple[int, int]], List[int]] = {}
        self.series_folded = 0
        self.share: Dict[Tuple[str, str, str, str], Dict[int, List[int]]] = {}
        self.clamped: Dict[str, int] = {}
        self.rows_written = 0
        self.paths_written = 0
        self.rows_dropped = 0
        self.write_errors = 0
        self.problem: Optional[str] = None
        self._throttle = Throttle(60.0)
        self._tasks: List[asyncio.Task[None]] = []
        self._last_note = -1e9  # when the last firefly came (monotonic)

    # --- input ------------------------------------------------------------------------------

    def _records(self, s: Section, records: List[FlowRecord]) -> None:
        s.records += len(records)
        s.agg.add(records)
        # paths only while fireflies come (~0.8 us per tagged record): a collector fed by
        # exporters alone does not pay for them
        if self._last_note > time.monotonic() - self.paths.hold:
            self.paths.add(records, self.watch)

    def note(self, r: Report) -> None:
        """A firefly the collector accepted: its flow's records get a path (untagged ones too,
        and tagged ones held from before it came)."""
        self._last_note = time.monotonic()
        self.paths.release(self.watch.add(r))

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        started: List[Section] = []
        try:
            for s in self.sections:
                await self._start_section(s)
                started.append(s)
        except StartupError:
            for s in started:
                await s.receiver.stop()
            raise
        self._tasks = [asyncio.get_running_loop().create_task(self._tick(), name="links-tick")]

    async def _start_section(self, s: Section) -> None:
        try:
            await s.receiver.start()
        except OSError as e:
            msg = str(e)  # udp_listener's text names "port N" and what to do
            raise StartupError(f"collector.{s.name}.{msg}" if msg.startswith("port ")
                               else f"collector.{s.name}: {msg}") from None
        # the kernel reports twice what it grants; set_receive_buffer logged it (and any cap)
        s.receive_buffer = min((so.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
                                for so in s.receiver.sockets), default=0)
        c = s.conf
        log.info("flow exports %s on ports=%s allowed_sources=%s known_activities_only=%s "
                 "marking_prefixes=%s false_positive_rate=%.4f", s.name, ",".join(map(str, s.receiver.ports)),
                 ",".join(c.allowed_sources) or "any", str(c.known_only).lower(),
                 ",".join(c.marking_prefixes) or "none", s.matcher.false_positive_rate)

    async def reconfigure(self, conf: CollectorConfig) -> List[str]:
        """SIGHUP: sections whose settings changed are rebound (their counters start again; what
        they aggregated is written with the next take), new ones started, removed ones stopped;
        unchanged ones go on. A section that cannot bind is logged and left out. Returns the
        names of the sections touched."""
        old = {s.name: s for s in self.sections}
        keep: List[Section] = []
        touched: List[str] = []
        self.conf = conf
        self.watch.active_timeout = conf.active_timeout
        for name, sec in conf.flow_exports():
            cur = old.pop(name, None)
            if cur is not None and cur.conf == sec and cur.agg.max_skew == conf.max_clock_skew:
                keep.append(cur)
                continue
            if cur is not None:
                await self._retire(cur)
            new = Section(name, sec, self._reg, self._records, conf.max_clock_skew)
            try:
                await self._start_section(new)
            except StartupError as e:
                log.error("reload: %s not listening error=%r", name, str(e))
                continue
            keep.append(new)
            touched.append(name)
        for cur in old.values():
            await self._retire(cur)
            touched.append(cur.name)
        self.sections = keep
        return touched

    async def _retire(self, s: Section) -> None:
        await s.receiver.stop()
        s.agg.flush(everything=True)
        self.pending[0].extend(s.rows)  # written with the next take
        s.rows.clear()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        for s in self.sections:
            await s.receiver.stop()

    async def _tick(self) -> None:
        """Every 5 s: kernel drops, expired watches, a registry that changed."""
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            await asyncio.sleep(5)
            n += 1
            for s in self.sections:
                before = s.kernel_drops
                s.kernel_drops = await loop.run_in_executor(None, s.receiver.drops)
                if s.kernel_drops > before and self._throttle.allow(f"drops_{s.name}"):
                    log.warning("%s datagrams dropped by the kernel (receive buffer full) drops=%d total=%d "
                                "receive_buffer=%d", s.name, s.kernel_drops - before, s.kernel_drops,
                                s.receive_buffer)
            if n % 12 == 0:
                self.watch.expire(time.time())
            if self.registry.current is not self._reg:
                reg = self._reg = self.registry.current
                for s in self.sections:
                    m = await loop.run_in_executor(None, matcher_for, s.conf, reg)  # ~30 ms each
                    s.matcher = s.receiver.decoder.matcher = m
                    s.agg.false_positive_rate = m.false_positive_rate
                log.info("flow-export tag matchers rebuilt for the new registry experiments=%d",
                         len(reg.experiments))

    # --- output ------------------------------------------------------------------------------

    def take(self, now: Optional[float] = None) -> Tuple[List[Row], List[PathRow]]:
        """Everything aggregated since the last take (and what the store could not write
        before), as deltas; counted into the metrics."""
        now = time.time() if now is None else now
        rows: List[Row] = []
        for s in self.sections:
            s.agg.flush(now, everything=True)
            rows += s.rows
            s.rows.clear()
        for r in rows:
            nb, npk, clamped = clamp(r.bytes, r.packets)
            if clamped:
                r.bytes, r.packets = nb, npk
                self.clamped[r.exporter] = self.clamped.get(r.exporter, 0) + 1
                if self._throttle.allow("clamped"):
                    log.warning("implausible counters clamped exporter=%s bytes=%d packets=%d", r.exporter,
                                nb, npk)
        self._count(rows, now)
        paths = self.paths.take(self.watch, now)
        old_rows, old_paths = self.pending
        self.pending = ([], [])
        return old_rows + rows, old_paths + paths

    def keep(self, rows: List[Row], paths: List[PathRow], error: str) -> None:
        """A batch the store could not write: kept (deltas add up) for the next take, within
        MAX_PENDING_ROWS (the oldest go first, counted)."""
        self.write_errors += 1
        self.problem = error
        rows, paths = rows + self.pending[0], paths + self.pending[1]
        over = len(rows) + len(paths) - MAX_PENDING_ROWS
        if over > 0:
            self.rows_dropped += over
            cut = min(over, len(paths))
            paths = paths[cut:]
            rows = rows[over - cut:]
        self.pending = (rows, paths)

    def written(self, rows: Sequence[Row], paths: Sequence[PathRow]) -> None:
        self.rows_written += len(rows)
        self.paths_written += len(paths)
        if self.problem is not None:
            log.info("link rows written again problem_was=%r", self.problem)
            self.problem = None

    def _count(self, rows: List[Row], now: float) -> None:
        series = self.series
        slot = int(now // 60)
        known = self.registry.current.activity_name
        for r in rows:
            link = (r.exporter, _dom(r.domain), _ifc(r.interface), DIRECTIONS.get(_d(r.direction), "unknown"))
            if r.experiment is None:
                tag = UNTAGGED
            else:
                tag = (r.experiment, r.activity if r.activity is not None else 0)
                if known(*tag) is None:  # one "other" series for every tag the registry does not know
                    tag = OTHER_TAG
            key = (*link, tag)
            cur = series.get(key)
            if cur is None:
                if len(series) >= MAX_SERIES:
                    self.series_folded += 1
                    link = ("other", "other", "other", "other")
                    key = (*link, tag)
                    cur = series.setdefault(key, [0, 0])
                else:
                    cur = series[key] = [0, 0]
            cur[0] += r.bytes
            cur[1] += r.packets
            win = self.share.setdefault(link, {})
            w = win.get(slot)
            if w is None:
                w = win[slot] = [0, 0]
                for old in [k for k in win if k <= slot - SHARE_WINDOW]:
                    del win[old]
            if r.experiment is not None:
                w[0] += r.bytes
            w[1] += r.bytes

    # --- what it exposes --------------------------------------------------------------------------

    def false_positive_rate(self) -> float:
        """The largest of the sections' (one exporter may use several protocols)."""
        return max((s.matcher.false_positive_rate for s in self.sections), default=0.0)

    def status(self) -> Dict[str, Any]:
        out = []
        for s in self.sections:
            dec = s.receiver.decoder
            counts = {**dec.rejects.counts, **{(ex, "implausible_counter"): n for ex, n in s.agg.implausible.items()}}
            rejects = sorted(counts.items(), key=lambda kv: -kv[1])[:1000]
            c = s.conf
            out.append({
                "section": s.name, "protocol": s.protocol, "ports": s.receiver.ports,
                "receive_buffer": s.receive_buffer, "datagrams": s.receiver.datagrams, "records": s.records,
                "kernel_drops": s.kernel_drops, "not_allowed": s.receiver.not_allowed,
                "allowed_sources": c.allowed_sources, "known_activities_only": c.known_only,
                "any_experiment": c.any_experiment, "marking_prefixes": c.marking_prefixes,
                "false_positive_rate": s.matcher.false_positive_rate,
                "rejected": [{"exporter": ex, "reason": why, "count": n} for (ex, why), n in rejects],
                "last_rejected": [{"exporter": r.exporter, "reason": r.reason, "detail": r.detail}
                                  for r in list(dec.rejects.last)[-20:]],
                "time_replaced": dict(s.agg.time_replaced), "unconfirmed_bytes": dict(s.agg.unconfirmed),
                "labels_folded": dict(s.agg.overflow)})
        return {"sections": out, "paths_dropped": self.paths.dropped, "watched_flows": len(self.watch.flows),
                "held_flows": len(self.paths.held),
                "rows_written": self.rows_written, "paths_written": self.paths_written,
                "rows_dropped": self.rows_dropped, "clamped": dict(self.clamped), "problem": self.problem}

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        reg = self.registry.current
        link_labels = ["exporter", "domain", "interface", "direction"]
        labels = link_labels + TAG_LABELS
        b = CounterMetricFamily("scitagd_collector_link_bytes", "Bytes (IP) on a link by tag, from router flow "
                                "exports (sampled exports scaled by their rate)", labels=labels)
        p = CounterMetricFamily("scitagd_collector_link_packets", "Packets on a link by tag, from router flow "
                                "exports", labels=labels)
        for (ex, dom, ifc, d, tag), (nb, npk) in list(self.series.items()):
            lv = [ex, dom, ifc, d, *_tag_labels(reg, tag)]
            b.add_metric(lv, nb)
            p.add_metric(lv, npk)
        yield b
        yield p
        g = GaugeMetricFamily("scitagd_collector_link_tagged_share", f"Tagged share of a link's bytes over the "
                              f"last {SHARE_WINDOW} minutes", labels=link_labels)
        cut = int(time.time() // 60) - SHARE_WINDOW
        for link, win in list(self.share.items()):
            tagged = sum(v[0] for k, v in list(win.items()) if k > cut)
            total = sum(v[1] for k, v in list(win.items()) if k > cut)
            if total:
                g.add_metric(list(link), tagged / total)
        yield g
        m = CounterMetricFamily("scitagd_collector_flowexport_datagrams", "Flow-export datagrams received",
                                labels=["protocol"])
        r = CounterMetricFamily("scitagd_collector_flowexport_records", "Flow records decoded", labels=["protocol"])
        k = CounterMetricFamily("scitagd_collector_flowexport_kernel_drops", "Datagrams the kernel dropped (receive "
                                "buffer full), from /proc/net/udp every 5 s", labels=["protocol"])
        rej = CounterMetricFamily("scitagd_collector_flowexport_rejected", "Flow-export input rejected, per exporter "
                                  "and reason (exporters past maxExporters as \"other\")",
                                  labels=["protocol", "exporter", "reason"])
        t = CounterMetricFamily("scitagd_collector_flowexport_time_replaced", "Records whose export time was more "
                                "than maxClockSkew off, counted at arrival", labels=["protocol", "exporter"])
        u = CounterMetricFamily("scitagd_collector_flowexport_unconfirmed_bytes", "Label-tagged bytes outside "
                                "markingPrefixes, counted as untagged", labels=["protocol", "exporter"])
        f = GaugeMetricFamily("scitagd_collector_flowexport_false_positive_rate", "Share of unmarked flows whose "
                              "random label looks tagged under the section's rules", labels=["protocol"])
        buf = GaugeMetricFamily("scitagd_collector_flowexport_receive_buffer_bytes", "Effective receive buffer",
                                labels=["protocol"])
        fold = CounterMetricFamily("scitagd_collector_link_labels_folded", "Records counted under \"other\" past "
                                   "the aggregator's bounds", labels=["protocol", "what"])
        for s in self.sections:
            pr = s.protocol
            m.add_metric([pr], s.receiver.datagrams)
            r.add_metric([pr], s.records)
            k.add_metric([pr], s.kernel_drops)
            for (ex, why), n in list(s.receiver.decoder.rejects.counts.items()):
                rej.add_metric([pr, ex, why], n)
            for ex, n in list(s.agg.implausible.items()):
                rej.add_metric([pr, ex, "implausible_counter"], n)
            for ex, n in list(s.agg.time_replaced.items()):
                t.add_metric([pr, ex], n)
            for ex, n in list(s.agg.unconfirmed.items()):
                u.add_metric([pr, ex], n)
            f.add_metric([pr], s.matcher.false_positive_rate)
            buf.add_metric([pr], s.receive_buffer)
            for what, n in s.agg.overflow.items():
                fold.add_metric([pr, what], n)
        yield from (m, r, k, rej, t, u, f, buf, fold)
        yield CounterMetricFamily("scitagd_collector_link_rows_written", "Link rows written to the store",
                                  value=self.rows_written)
        yield CounterMetricFamily("scitagd_collector_link_rows_dropped", "Link rows lost: the store could not write "
                                  "and the pending bound was reached", value=self.rows_dropped)
        yield CounterMetricFamily("scitagd_collector_link_paths_dropped", "Path rows not kept (bounds per flush "
                                  "and per minute)", value=self.paths.dropped)
        yield CounterMetricFamily("scitagd_collector_link_series_folded", "Link metric updates folded into "
                                  "exporter \"other\" (series bound)", value=self.series_folded)


def _tag_labels(reg: Registry, tag: Tuple[int, int]) -> List[str]:
    if tag == UNTAGGED:
        return ["untagged", "untagged", "", ""]
    if tag == OTHER_TAG or reg.activity_name(*tag) is None:  # (a registry refresh may drop a pair)
        return ["other"] * 4
    return reg.tag_labels(*tag)


def _dom(d: int) -> str:
    return "other" if d == OTHER else str(d)


def _ifc(i: Optional[int]) -> str:
    return "" if i is None else "other" if i == OTHER else str(i)


def _d(d: Optional[int]) -> int:
    return -1 if d is None else d
