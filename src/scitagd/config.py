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
      pidPath: flowd-go's name for pidFile.
      workDir: flowd-go key; accepted, not used (a warning at start says so).
      plugins: sources of flows.
      backends: what is done with each flow.
      enrichers: TCP statistics of active flows; on when present.
      registry: experiment and activity names.
      flowTable: the table of active flows.
      logging: log level and flow lines.
      collector: a collector's section, for a host running both from one file (see
        `scitagd collector`); the daemon ignores it.
      pidFile: a file with the daemon's process id, for tools that read one (systemd does not
        need it): written atomically at start, removed at exit; a live daemon named in it stops the
        start.
    """

    pid_path: Optional[str] = None  # flowd-go's name for pidFile
    work_dir: Optional[str] = None
    plugins: Plugins = msgspec.field(default_factory=Plugins)
    backends: Backends = msgspec.field(default_factory=Backends)
    enrichers: Optional[EnrichersConfig] = None
    registry: RegistryConfig = msgspec.field(default_factory=RegistryConfig)
    flow_table: FlowTableConfig = msgspec.field(default_factory=FlowTableConfig)
    logging: LogConfig = msgspec.field(default_factory=LogConfig)
    # The collector's section may share the file; the collector parses it (collector/conf.py).
    collector: Optional[Dict[str, Any]] = None
    pid_file: Optional[str] = None  # written atomically at start, removed at exit (pidfile.py)

    def __post_init__(self) -> None:
        for key, path in (("pidFile", self.pid_file), ("pidPath", self.pid_path)):
            if path is not None and not path.startswith("/"):
                raise ValueError(f"{key} {path!r}: expected an absolute path")
        if self.pid_file and self.pid_path and self.pid_file != self.pid_path:
            raise ValueError(f"pidFile {self.pid_file!r} and pidPath {self.pid_path!r}: the same setting (pidPath "
                             "is flowd-go's name), give one")

    @property
    def pid(self) -> Optional[str]:
        """The pid file in force: pidFile, else flowd-go's pidPath."""
        return self.pid_file or self.pid_path


# Sections whose keys enable a component by being present, even with no value.
_ENABLING = frozenset({"plugins", "backends", "enrichers"})


def load_text(text: str, origin: str = "<config>") -> Config:
    return from_mapping(parse_mapping(text, origin), origin)


def from_mapping(data: Dict[str, Any], origin: str) -> Config:
    if data.get("collector", {}) is None:
        data = {**data, "collector": {}}
    conf = convert(fill_empty(data, _ENABLING), Config, origin)
    m = conf.backends.marker
    marker_keys = (data.get("backends") or {}).get("marker") or {}
    if m is not None and m.discover_interfaces and "targetInterfaces" not in marker_keys:
        m.target_interfaces = []  # flowd-go: the discovered interfaces replace the default [lo]
    return conf


def load(path: str | Path) -> Config:
    return from_mapping(read_mapping(path), str(path))


def dump(conf: Config) -> str:
    """The effective config, defaults filled in, as YAML."""
    return _dump(conf)
