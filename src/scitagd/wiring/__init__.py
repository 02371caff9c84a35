"""From a Config to the components that run, split by kind as flowd-go's cmd/plugins.go,
cmd/backends.go and cmd/enrichment.go are: sources.py, sinks.py, enrichers.py. A component's
module is imported only when its section is configured (start-up time: aiohttp alone is
~250 ms), and cross-component settings are handed over here, in the open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..components import Enricher, Host, MetricsProvider, Sink, Source
from ..config import Config
from .enrichers import build_enrichers
from .sinks import Exporter, build_exporter, build_sinks
from .sources import build_sources

__all__ = ["Parts", "build"]


@dataclass
class Parts:
    sources: List[Source] = field(default_factory=list)
    sinks: List[Sink] = field(default_factory=list)
    enrichers: List[Enricher] = field(default_factory=list)
    finisher: Optional[Enricher] = None  # the enricher that gives an end its final usage
    exporter: Optional[Exporter] = None


def build(conf: Config, host: Host, providers: List[MetricsProvider]) -> Parts:
    enrichers, finisher, skops = build_enrichers(conf, host)
    sinks = build_sinks(conf, host)
    sources = build_sources(conf, host, skops)
    return Parts(sources, sinks, enrichers, finisher, build_exporter(conf, providers))
