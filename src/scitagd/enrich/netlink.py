# SPDX-License-Identifier: Apache-2.0
"""`enrichers.netlink`: tcp_info of every active TCP flow, every `enrichers.period` ms.

One batch of exact sock_diag lookups per address family and period (sockdiag.py: the kernel
answers from its socket hash, so the cost does not grow with idle sockets), in a worker thread.
Each sample becomes an `ongoing` FlowEvent (usage and netlink fields) for the sinks; the last
one gives the `end` event its final usage.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import msgspec

from ..components import Host
from ..events import END, ONGOING, TCP, FlowEvent, FlowKey, Usage
from .conf import EnrichersConfig
from .sockdiag import Sample, SockDiag

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["FLOW_METRICS", "FlowMetrics", "LastSamples", "NetlinkEnricher", "netlink_fields", "sample_usage"]

log = logging.getLogger("scitagd.enrich.netlink")

# field -> (tcp_info name, scale): rtt-like values in ms as flowd-go reports them
LEAN = {"rtt": ("rtt", 1e-3), "rttvar": ("rttvar", 1e-3), "min_rtt": ("min_rtt", 1e-3),
        "cwnd": ("snd_cwnd", 1), "mss": ("snd_mss", 1), "pmtu": ("pmtu", 1),
        "retransmits": ("total_retrans", 1), "delivery_rate": ("delivery_rate", 1)}
FULL = {**LEAN, "ssthresh": ("snd_ssthresh", 1), "rcv_mss": ("rcv_mss", 1), "unacked": ("unacked", 1),
        "lost": ("lost", 1), "bytes_sent": ("bytes_sent", 1), "bytes_acked": ("bytes_acked", 1),
        "bytes_received": ("bytes_received", 1), "bytes_retrans": ("bytes_retrans", 1),
        "pacing_rate": ("pacing_rate", 1), "busy_time": ("busy_time", 1e-3),
        "rwnd_limited": ("rwnd_limited", 1e-3), "sndbuf_limited": ("sndbuf_limited", 1e-3),
        "segs_out": ("segs_out", 1), "segs_in": ("segs_in", 1), "snd_wnd": ("snd_wnd", 1)}
# python flowd's names (pyroute2's ss2 refinement), under "tcp_info"
COMPATIBLE = {"rtt": ("rtt", 1e-3), "rttvar": ("rttvar", 1e-3), "minrtt": ("min_rtt", 1e-3),
              "cwnd": ("snd_cwnd", 1), "ssthresh": ("snd_ssthresh", 1), "mss": ("snd_mss", 1),
              "pmtu": ("pmtu", 1), "retrans": ("total_retrans", 1), "bytes_acked": ("bytes_acked", 1),
              "bytes_received": ("bytes_received", 1), "delivery_rate": ("delivery_rate", 1),
              "pacing_rate": ("pacing_rate", 1)}


def netlink_fields(s: Sample, mode: str) -> Dict[str, Any]:
    table = {"lean": LEAN, "full": FULL, "compatible": COMPATIBLE}[mode]
    out: Dict[str, Any] = {}
    for name, (src, scale) in table.items():
        if src in s.info:
            v = s.info[src]
            out[name] = round(v * scale, 3) if scale != 1 else v
    if mode != "lean" and s.cong:
        out["cong_alg"] = s.cong
    if mode == "full":
        out.update(s.extra)  # the other extensions enrichers.netlink.ext asked for
    return {"tcp_info": out} if mode == "compatible" else out


def sample_usage(s: Sample) -> Usage:
    """From this host's point of view, as fireflies report it."""
    return Usage(received=int(s.info.get("bytes_received", 0)), sent=int(s.info.get("bytes_acked", 0)))


class LastSamples:
    """What both enrichers keep per flow, and how the last sample finishes a flow's end event."""

    flavour: str
    host: Host
    mode: str
    samples: int
    last: Dict[FlowKey, Tuple[Sample, bool]]
    ending: Set[FlowKey]

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def sample(self, flows: List[FlowEvent], forget: bool = True) -> List[Tuple[FlowEvent, Sample, bool]]:
        """Blocking: take samples of `flows` now (nothing where samples come on their own)."""
        return []

    def end_of(self, ev: FlowEvent) -> asyncio.Future[FlowEvent]:
        """Enricher.end_of: keep the flow's state until its last sample is in the end event."""
        self.ending.add(ev.key)
        return asyncio.ensure_future(self._finish(ev))

    async def _finish(self, ev: FlowEvent) -> FlowEvent:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.sample, [ev], False)
        except OSError as e:
            log.warning("final sample failed error=%r %s", str(e), ev.log_fields())
        return self.final(ev)

    def final(self, ev: FlowEvent) -> FlowEvent:
        """The end event with the last usage seen, unless the producer sent its own."""
        if ev.state != END:
            return ev
        self.ending.discard(ev.key)
        last = self.last.pop(ev.key, None)
        if last is None or ev.usage is not None:
            return ev
        s, _ = last
        return msgspec.structs.replace(ev, usage=sample_usage(s), netlink=netlink_fields(s, self.mode))


class NetlinkEnricher(LastSamples):
    flavour = "netlink"

    def __init__(self, host: Host, conf: EnrichersConfig, mode: str = "lean") -> None:
        self.host = host
        self.period = conf.period / 1000.0
        nl = conf.netlink
        # flowd-go's ext and state: what sock_diag is asked for, which sockets' samples count
        self.ext = nl.ext if nl is not None else 255
        self.states = nl.state if nl is not None else 0xBFF
        self.mode = mode
        self.diag: Optional[SockDiag] = None
        self.last: Dict[FlowKey, Tuple[Sample, bool]] = {}  # flow -> (last sample, local is src)
        self.samples = 0
        self.queries = 0
        self.query_seconds = 0.0
        self._task: Optional[asyncio.Task[None]] = None
        self.ending: Set[FlowKey] = set()  # flows whose end waits for a last sample: keep their state

    async def start(self) -> None:
        self.diag = SockDiag()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="enrich-netlink")
        log.info("sampling period_ms=%d mode=%s", int(self.period * 1000), self.mode)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self.diag:
            self.diag.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Fixed rate (not sleep(period) after each sample, which drifts by the sampling time) and
        # a thread of its own, so that other executor work cannot delay a period.
        pool = ThreadPoolExecutor(1, thread_name_prefix="netlink")
        due = loop.time()
        while True:
            due += self.period
            await asyncio.sleep(max(0.0, due - loop.time()))
            flows = [ev for ev in self.host.flows() if ev.protocol == TCP]
            try:
                found = await loop.run_in_executor(pool, self.sample, flows)
            except OSError as e:
                log.warning("sock_diag query failed error=%r", str(e))
                continue
            now = time.time()
            for ev, s, local_is_src in found:
                self.host.submit(self.ongoing(ev, s, local_is_src, now))

    def sample(self, flows: List[FlowEvent], forget: bool = True) -> List[Tuple[FlowEvent, Sample, bool]]:
        """Blocking: one filtered dump per family; returns matched (flow, sample, local is src).
        With `forget`, state of flows no longer in `flows` (ended, expired) is dropped."""
        assert self.diag is not None
        t0 = time.perf_counter()
        by_family: Dict[int, List[FlowEvent]] = {}
        for ev in flows:
            by_family.setdefault(socket.AF_INET6 if ":" in ev.src_ip else socket.AF_INET, []).append(ev)
        out = []
        live = set()
        for fam, evs in by_family.items():
            index = {}
            for ev in evs:  # either end may be this host's: ask for both, one answers
                index[(ev.src_ip, ev.src_port, ev.dst_ip, ev.dst_port)] = (ev, True)
                index[(ev.dst_ip, ev.dst_port, ev.src_ip, ev.src_port)] = (ev, False)
            for s in self.diag.lookup(fam, index, self.ext, self.states):
                hit = index.get((s.local[0], s.local[1], s.remote[0], s.remote[1]))
                if hit is None:
                    continue
                ev, local_is_src = hit
                out.append((ev, s, local_is_src))
                self.last[ev.key] = (s, local_is_src)
                live.add(ev.key)
            self.queries += 1
        if forget:  # nothing watched outlives its flow
            current = {ev.key for ev in flows} | self.ending
            for k in [k for k in self.last if k not in current]:
                del self.last[k]
        self.samples += len(out)
        self.query_seconds += time.perf_counter() - t0
        return out

    def ongoing(self, ev: FlowEvent, s: Sample, local_is_src: bool, now: float) -> FlowEvent:
        return msgspec.structs.replace(ev, state=ONGOING, usage=sample_usage(s), source="netlink",
                                       netlink=netlink_fields(s, self.mode), end_time=None)


# flowd-go's per-flow metric names (backends/prometheus there), so existing dashboards work:
# name -> (tcp_info field, help)
FLOW_METRICS = {
    "flow_tcp_rtt": ("rtt", "Round-trip time [us]"),
    "flow_tcp_rtt_var": ("rttvar", "Round-trip time variance [us]"),
    "flow_tcp_minrtt": ("min_rtt", "Minimum round-trip time [us]"),
    "flow_tcp_rto": ("rto", "Retransmit timeout [us]"),
    "flow_tcp_ato": ("ato", "Delayed ACK timeout [us]"), "flow_tcp_pmtu": ("pmtu", "Path MTU [B]"),
    "flow_tcp_mss": ("snd_mss", "Sender's MSS [B]"), "flow_tcp_rcvmss": ("rcv_mss", "Receiver's MSS [B]"),
    "flow_tcp_advmss": ("advmss", "Advertised MSS [B]"), "flow_tcp_cwnd": ("snd_cwnd", "Congestion window [segments]"),
    "flow_tcp_ssthresh": ("snd_ssthresh", "Slow start threshold [segments]"),
    "flow_tcp_retrans": ("total_retrans", "Retransmitted segments"),
    "flow_tcp_bytes_sent_total": ("bytes_sent", "Bytes sent"),
    "flow_tcp_bytes_acked_total": ("bytes_acked", "Bytes acked"),
    "flow_tcp_bytes_received_total": ("bytes_received", "Bytes received"),
    "flow_tcp_segs_out_total": ("segs_out", "Segments sent"),
    "flow_tcp_segs_in_total": ("segs_in", "Segments received"),
    "flow_tcp_data_segs_out_total": ("data_segs_out", "Data segments sent"),
    "flow_tcp_data_segs_in_total": ("data_segs_in", "Data segments received"),
    "flow_tcp_lastsnd": ("last_data_sent", "Now - last data sent [ms]"),
    "flow_tcp_lastrcv": ("last_data_recv", "Now - last data received [ms]"),
    "flow_tcp_lastack": ("last_ack_recv", "Now - last ACK received [ms]"),
    "flow_tcp_pacing_rate": ("pacing_rate", "Pacing rate [B/s]"),
    "flow_tcp_delivery_rate": ("delivery_rate", "Delivery rate [B/s]"),
    "flow_tcp_delivered": ("delivered", "Data segments delivered"), "flow_tcp_busy": ("busy_time", "Busy time [us]"),
    "flow_tcp_rwnd_limited": ("rwnd_limited", "Time limited by the receive window [us]"),
    "flow_tcp_rcv_space": ("rcv_space", "Receive queue space"),
    "flow_tcp_rcv_ssthresh": ("rcv_ssthresh", "Current window clamp"),
    "flow_tcp_rcv_snd_wnd": ("snd_wnd", "Peer's advertised receive window [B]"),
}


class FlowMetrics:
    """Per-flow gauges read from the last samples at scrape time: a flow's series are gone as
    soon as the flow is (no stale series to delete). One `flavour` per enricher, as flowd-go;
    one provider for all of them, since they share the metric names."""

    def __init__(self, host: Host, enrichers: Sequence[LastSamples]) -> None:
        self.host = host
        self.enrichers = enrichers

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["act", "exp", "src", "dst", "flow", "flavour"]
        rows = []
        for e in self.enrichers:
            for key, (s, _local) in list(e.last.items()):
                ev = self.host.flow(key)
                if ev is None:
                    continue
                rows.append(([str(ev.activity), str(ev.experiment), ev.src_ip, ev.dst_ip,
                              f"<{ev.src_port}:{ev.dst_port}>", e.flavour], s))
        for name, (field, doc) in FLOW_METRICS.items():
            g = GaugeMetricFamily(name, doc, labels=labels)
            for lv, s in rows:
                if field in s.info:
                    g.add_metric(lv, s.info[field])
            yield g
        ca = GaugeMetricFamily("flow_tcp_rcv_ca_info", "Congestion control algorithm", labels=[*labels, "alg"])
        for lv, s in rows:
            ca.add_metric([*lv, s.cong or ""], 1)
        yield ca
        w = GaugeMetricFamily("scitagd_enricher_watched_flows", "Flows with enrichment state",
                              labels=["flavour"])
        n = GaugeMetricFamily("scitagd_enricher_samples", "Samples taken", labels=["flavour"])
        for e in self.enrichers:
            w.add_metric([e.flavour], len(e.last))
            n.add_metric([e.flavour], e.samples)
        yield w
        yield n
