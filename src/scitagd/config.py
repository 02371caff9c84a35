# SPDX-License-Identifier: Apache-2.0
"""The daemon's YAML config: flowd-go's layout, composed from the sections each component owns
(sources/conf.py, sinks/conf.py, enrich/conf.py; shared sections in confbase.py).

A component is enabled by its key being present (`api:` alone means "on, with defaults").
Unknown keys, wrong types and bad values fail with the key path and what was expected. This
module imports no implementation: `scitagd conf` loads nothing it does not print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import msgspec

from .confbase import FlowTableConfig, LogConfig, RegistryConfig, convert, fill_empty, parse_mapping, read_mapping
from .confbase import dump as _dump
from .enrich.conf import EnrichersConfig
from .errors import ConfigError
from .sinks.conf import FireflySinkConfig, MarkerConfig, PrometheusConfig
from .sources.conf import (
    ApiConfig,
    FireflySourceConfig,
    Iperf3Config,
    NamedPipeConfig,
    PerfsonarConfig,
    WatcherConfig,
)

__all__ = ["Backends", "Config", "ConfigError", "Plugins", "dump", "load", "load_text"]


class Plugins(msgspec.Struct, forbid_unknown_fields=True):
    """`plugins`: the sources of flows; each is on when its key is present.

    Keys:
      api: REST API for storage systems.
      namedPipe: FIFO for StoRM and scripts.
      firefly: UDP listener for fireflies from XRootD and dCache on this host.
      perfsonar: perfSONAR's measurement connections.
      iperf3: flowd-go's iperf3 plugin.
      watcher: TCP connections found and tagged by rules, in the kernel.
    """

    api: Optional[ApiConfig] = None
    namedPipe: Optional[NamedPipeConfig] = None
    firefly: Optional[FireflySourceConfig] = None
    perfsonar: Optional[PerfsonarConfig] = None
    iperf3: Optional[Iperf3Config] = None
    watcher: Optional[WatcherConfig] = None


class Backends(msgspec.Struct, forbid_unknown_fields=True):
    """`backends`: what is done with each flow; each is on when its key is present.

    Keys:
      marker: eBPF packet marking.
      firefly: fireflies to peers and collectors.
      prometheus: metrics.
    """

    marker: Optional[MarkerConfig] = None
    firefly: Optional[FireflySinkConfig] = None
    prometheus: Optional[PrometheusConfig] = None


class Config(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """The daemon's config file (`scitagd run --config`), flowd-go's layout.

    Keys:
      pidPath: flowd-go key; accepted.
      workDir: flowd-go key; accepted.
      plugins: sources of flows.
      backends: what is done with each flow.
      enrichers: TCP statistics of active flows; on when present.
      registry: experiment and activity names.
      flowTable: the table of active flows.
      logging: log level and flow lines.
      collector: a collector's section, for a host running both from one file (see
        `scitagd collector`); the daemon ignores it.
    """

    pid_path: Optional[str] = None
    work_dir: Optional[str] = None
    plugins: Plugins = msgspec.field(default_factory=Plugins)
    backends: Backends = msgspec.field(default_factory=Backends)
    enrichers: Optional[EnrichersConfig] = None
    registry: RegistryConfig = msgspec.field(default_factory=RegistryConfig)
    flow_table: FlowTableConfig = msgspec.field(default_factory=FlowTableConfig)
    logging: LogConfig = msgspec.field(default_factory=LogConfig)
    # The collector's section may share the file; the collector parses it (collector/conf.py).
    collector: Optional[Dict[str, Any]] = None


# Sections whose keys enable a component by being present, even with no value.
_ENABLING = frozenset({"plugins", "backends", "enrichers"})


def load_text(text: str, origin: str = "<config>") -> Config:
    return from_mapping(parse_mapping(text, origin), origin)


def from_mapping(data: Dict[str, Any], origin: str) -> Config:
    if data.get("collector", {}) is None:
        data = {**data, "collector": {}}
    return convert(fill_empty(data, _ENABLING), Config, origin)


def load(path: str | Path) -> Config:
    return from_mapping(read_mapping(path), str(path))


def dump(conf: Config) -> str:
    """The effective config, defaults filled in, as YAML."""
    return _dump(conf)
