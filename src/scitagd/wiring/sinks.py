# SPDX-License-Identifier: Apache-2.0
"""`backends:` -> sinks (firefly, marker) and the Prometheus exporter."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Tuple

from ..components import Host, MetricsProvider, Sink
from ..config import Config
from ..errors import StartupError, TagError
from ..tags import check_activity, check_experiment

__all__ = ["Exporter", "exporter_specs", "match_all", "sink_specs"]


class Exporter(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def sink_specs(conf: Config, host: Host) -> List[Tuple[str, str, Any, Any]]:
    b = conf.backends
    out: List[Tuple[str, str, Any, Any]] = []
    if b.firefly is not None:
        fconf = b.firefly
        mconf = b.marker

        def interfaces() -> List[str]:
            """The marker's interfaces, whose addresses backends.firefly.stun maps."""
            if mconf is None:
                return []
            from ..sinks.marker import global_ipv6_interfaces

            return [*mconf.target_interfaces, *(global_ipv6_interfaces() if mconf.discover_interfaces else [])]

        def firefly(_built: Dict[str, Any]) -> Sink:
            from ..sinks.firefly import FireflySink

            return FireflySink(host, fconf, interfaces)

        # which interfaces stun looks at is part of what the sink is
        key = (fconf, (mconf.target_interfaces, mconf.discover_interfaces) if mconf and fconf.stun else None)
        out.append(("sink", "backends.firefly", key, firefly))
    if b.marker is not None:
        mconf, match = b.marker, match_all(conf)

        def marker(_built: Dict[str, Any]) -> Sink:
            from ..sinks.marker import MarkerSink

            return MarkerSink(host, mconf, match)

        out.append(("sink", "backends.marker", (mconf, match), marker))
    return out


def exporter_specs(conf: Config, providers: List[MetricsProvider]) -> List[Tuple[str, str, Any, Any]]:
    pconf = conf.backends.prometheus
    if pconf is None:
        return []

    def build(_built: Dict[str, Any]) -> Exporter:
        from ..metrics import PrometheusExporter

        return PrometheusExporter(pconf, providers)

    return [("exporter", "backends.prometheus", pconf, build)]


def match_all(conf: Config) -> Optional[Tuple[int, int]]:
    """matchAll's tag: backends.marker.matchExperiment/Activity, else flowd-go's perfsonar ids.
    plugins.perfsonar with `mode: all` (its default) turns matchAll on, as flowd-go does (the
    start-up warnings say so: compat.py)."""
    m = conf.backends.marker
    ps = conf.plugins.perfsonar
    if m is None or not (m.match_all or (ps is not None and ps.mode == "all")):
        return None
    exp, act = m.match_experiment, m.match_activity
    if exp is None and ps is not None:
        exp = ps.experiment
    if act is None and ps is not None:
        act = ps.activity
    if exp is None or act is None:
        raise StartupError("backends.marker.matchAll: set matchExperiment and matchActivity (or "
                           "plugins.perfsonar experimentId/activityId)")
    try:
        check_experiment(exp)
        check_activity(act)
    except TagError as e:
        raise StartupError(f"backends.marker.matchAll: {e}") from None
    return exp, act
