# SPDX-License-Identifier: Apache-2.0
"""From a Config to the components that run, split by kind as flowd-go's cmd/plugins.go,
cmd/backends.go and cmd/enrichment.go are: sources.py, sinks.py, enrichers.py.

Each component is a `Spec`: its config section's name, the value it is built from (`key`), and
how to build it. A component's module is imported only when its section is configured (start-up
time: aiohttp alone is ~250 ms). On a reload (SIGHUP) a component whose key is unchanged keeps
running untouched; the others are rebuilt. Cross-component needs are keys too: the watcher's key
holds the enrichers' and the marker's pin path, so it follows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List

from ..components import Host, MetricsProvider
from ..config import Config
from .enrichers import enricher_specs
from .sinks import exporter_specs, sink_specs
from .sources import source_specs

__all__ = ["KINDS", "Spec", "specs"]

KINDS = ("enricher", "sink", "source", "exporter")  # build order; start order: sink, enricher, source, exporter


@dataclass
class Spec:
    kind: str  # one of KINDS
    name: str  # its config section, e.g. "plugins.api"
    key: Any  # what it is built from: equal keys on reload keep the running one
    build: Callable[[Dict[str, Any]], Any]  # given the components built so far, by name


def specs(conf: Config, host: Host, providers: List[MetricsProvider]) -> List[Spec]:
    out = [Spec(*s) for s in enricher_specs(conf, host)]
    out += [Spec(*s) for s in sink_specs(conf, host)]
    out += [Spec(*s) for s in source_specs(conf, host)]
    out += [Spec(*s) for s in exporter_specs(conf, providers)]
    return out
