"""`backends:` -> sinks (firefly, marker) and the Prometheus exporter."""

from __future__ import annotations

from typing import List, Optional, Protocol, Tuple

from ..components import Host, MetricsProvider, Sink
from ..config import Config
from ..errors import StartupError, TagError
from ..tags import check_activity, check_experiment

__all__ = ["Exporter", "build_exporter", "build_sinks", "match_all"]


class Exporter(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_sinks(conf: Config, host: Host) -> List[Sink]:
    b = conf.backends
    sinks: List[Sink] = []
    if b.firefly is not None:
        from ..sinks.firefly import FireflySink

        sinks.append(FireflySink(host, b.firefly))
    if b.marker is not None:
        from ..sinks.marker import MarkerSink

        sinks.append(MarkerSink(host, b.marker, match_all(conf)))
    return sinks


def build_exporter(conf: Config, providers: List[MetricsProvider]) -> Optional[Exporter]:
    if conf.backends.prometheus is None:
        return None
    from ..metrics import PrometheusExporter

    return PrometheusExporter(conf.backends.prometheus, providers)


def match_all(conf: Config) -> Optional[Tuple[int, int]]:
    """matchAll's tag: backends.marker.matchExperiment/Activity, else flowd-go's perfsonar ids."""
    m = conf.backends.marker
    if m is None or not m.match_all:
        return None
    exp, act = m.match_experiment, m.match_activity
    ps = conf.plugins.perfsonar
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
