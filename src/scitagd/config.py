"""The YAML config: flowd-go's layout, composed from the sections each component owns.

A component is enabled by its key being present (`api:` alone means "on, with defaults").
Unknown keys, wrong types and bad values fail with the key path and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, get_args

import msgspec
import yaml

from .collector.config import CollectorConfig
from .enrich.conf import EnrichersConfig
from .events import FlowTableConfig
from .logs import LogConfig
from .registry import RegistryConfig
from .sinks.firefly import FireflySinkConfig
from .sinks.marker_conf import MarkerConfig
from .sinks.prometheus import PrometheusConfig
from .sources.api import ApiConfig
from .sources.firefly import FireflySourceConfig
from .sources.namedpipe import NamedPipeConfig
from .sources.watcher import WatcherConfig


class PerfsonarConfig(msgspec.Struct, forbid_unknown_fields=True):
    """flowd-go's keys; `ports` (extension) is where perfSONAR's iperf3 tests listen. Without
    backends.marker.matchAll, the measurement connections are found by the watcher."""

    activityID: int = 0
    experimentID: int = 0
    ports: str = "5201-5210"


class Iperf3Config(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    min_source_port: int = 0
    max_source_port: int = 0
    min_destination_port: int = 0
    max_destination_port: int = 0
    cgroup_path: str = "/sys/fs/cgroup"
    program_path: str = ""
    debug_mode: bool = False
    random_i_ds: bool = msgspec.field(default=False, name="randomIDs")
    activity_i_ds: List[int] = msgspec.field(default_factory=list, name="activityIDs")
    experiment_i_ds: List[int] = msgspec.field(default_factory=list, name="experimentIDs")


class Plugins(msgspec.Struct, forbid_unknown_fields=True):
    api: Optional[ApiConfig] = None
    namedPipe: Optional[NamedPipeConfig] = None
    firefly: Optional[FireflySourceConfig] = None
    perfsonar: Optional[PerfsonarConfig] = None
    iperf3: Optional[Iperf3Config] = None
    watcher: Optional[WatcherConfig] = None


class Backends(msgspec.Struct, forbid_unknown_fields=True):
    marker: Optional[MarkerConfig] = None
    firefly: Optional[FireflySinkConfig] = None
    prometheus: Optional[PrometheusConfig] = None


class Config(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    pid_path: Optional[str] = None
    work_dir: Optional[str] = None
    plugins: Plugins = msgspec.field(default_factory=Plugins)
    backends: Backends = msgspec.field(default_factory=Backends)
    enrichers: Optional[EnrichersConfig] = None
    registry: RegistryConfig = msgspec.field(default_factory=RegistryConfig)
    flow_table: FlowTableConfig = msgspec.field(default_factory=FlowTableConfig)
    logging: LogConfig = msgspec.field(default_factory=LogConfig)
    collector: Optional[CollectorConfig] = None


class ConfigError(ValueError):
    pass


# Sections whose mere presence enables a component: `api:` with no value means {}.
_ENABLING = {"plugins": True, "backends": True, "enrichers": True, "collector": True}


def _fill_empty(data: Any, path: str = "") -> Any:
    if not isinstance(data, dict):
        return data
    out: Dict[Any, Any] = {}
    for k, v in data.items():
        here = f"{path}.{k}" if path else str(k)
        if v is None and (path in _ENABLING or here in _ENABLING or path == "enrichers"):
            v = {}
        out[k] = _fill_empty(v, here) if isinstance(v, dict) else v
    return out


def load_text(text: str, origin: str = "<config>") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{origin}: not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections at the top level, got "
                          f"{type(data).__name__}")
    data = _fill_empty(data)
    try:
        return msgspec.convert(data, Config, str_keys=True)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{origin}: {_pretty(str(e))}") from None


def _pretty(msg: str) -> str:
    # msgspec says "... - at `$.plugins.api.bindPort`"; lead with the key path, as people read it.
    path = ""
    if " - at `$." in msg:
        msg, path = msg.rsplit(" - at `$.", 1)
        path = path.rstrip("`")
    m = re.match(r"Object contains unknown field `(.+)`$", msg)
    if m:
        known = _keys_at(path)
        msg = f"unknown key {m.group(1)!r}" + (f"; expected one of {', '.join(known)}" if known else "")
    return f"{path}: {msg}" if path else msg


def _keys_at(path: str) -> List[str]:
    """The keys the struct at `path` accepts, for 'did you mean' style errors."""
    cls: Any = Config
    for part in [p for p in path.split(".") if p]:
        fields = {f.encode_name: f.type for f in msgspec.structs.fields(cls)}
        if part not in fields:
            return []
        cls = _struct_type(fields[part])
        if cls is None:
            return []
    return [f.encode_name for f in msgspec.structs.fields(cls)]


def _struct_type(tp: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    for arg in get_args(tp):
        found = _struct_type(arg)
        if found is not None:
            return found
    return None


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    return load_text(text, str(p))


def dump(conf: Config) -> str:
    """The effective config, defaults filled in, as YAML."""
    data = msgspec.to_builtins(conf)
    return yaml.safe_dump(_drop_none(data), sort_keys=False, default_flow_style=False)


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d
