# SPDX-License-Identifier: Apache-2.0
"""What every config file shares: YAML in, typed sections out, errors that lead with the key
path; and the sections both the daemon and the collector read (`registry:`, `logging:`) plus
the flow table's.

Only msgspec and PyYAML are imported here: reading a config never loads a component.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Type, TypeVar, get_args

import msgspec
import yaml

from .errors import ConfigError

__all__ = ["FlowTableConfig", "LogConfig", "RegistryConfig", "convert", "dump", "read_mapping"]

S = TypeVar("S", bound=msgspec.Struct)
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")  # flowd-go's warn and trace too


class RegistryConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`registry`: the experiments and activities names resolve against. Without url the snapshot
    bundled with scitagd is used.

    Keys:
      url: http(s):// or file:// URL of the registry JSON (e.g. https://www.scitags.org/api.json).
      cacheFile: where the last fetched registry is kept, so a start without network has it.
      refreshInterval: seconds between fetches, >= 10.
      timeout: seconds a fetch may take.
    """

    url: Optional[str] = None
    cache_file: str = "/var/cache/scitagd/registry.json"
    refresh_interval: float = 3600.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.url is not None and not re.match(r"^(https?|file)://", self.url):
            raise ValueError(f"url {self.url!r}: expected an http://, https:// or file:// URL")
        if self.refresh_interval < 10:
            raise ValueError(f"refreshInterval {self.refresh_interval}: expected >= 10 seconds")
        if self.timeout <= 0:
            raise ValueError(f"timeout {self.timeout}: expected > 0 seconds")


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`logging`: one line per event, key=value fields (journald priorities under systemd).

    Keys:
      level: trace, debug, info, warn (or warning) or error; --log-level overrides it.
      flowEvents: one info line per flow start and end, with its 5-tuple and tags.
    """

    level: str = "info"
    flow_events: bool = True  # one INFO line per flow start/end

    def __post_init__(self) -> None:
        if self.level.lower() not in LOG_LEVELS:
            raise ValueError(f"level {self.level!r}: expected one of {', '.join(LOG_LEVELS)}")


class FlowTableConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`flowTable`: the daemon's table of active flows.

    Keys:
      expireAfter: seconds without an end before a flow is closed with an end firefly.
      maxFlows: active flows at most; further starts are refused and counted.
    """

    expire_after: float = 86400.0  # seconds without an end before a flow is dropped
    max_flows: int = 1_000_000

    def __post_init__(self) -> None:
        if self.expire_after <= 0:
            raise ValueError(f"expireAfter {self.expire_after}: expected > 0 seconds")
        if self.max_flows < 1:
            raise ValueError(f"maxFlows {self.max_flows}: expected >= 1")


def read_mapping(path: str | Path) -> Dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    return parse_mapping(text, str(p))


def parse_mapping(text: str, origin: str) -> Dict[str, Any]:
    """The YAML document as a mapping of sections (empty file: no sections)."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{origin}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections at the top level, got "
                          f"{type(data).__name__}")
    return data


# The C loader when PyYAML has it (safe either way): config reading is on the start-up path.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def fill_empty(data: Any, enabling: frozenset[str], path: str = "") -> Any:
    """`api:` with no value means `api: {}` (present = on) inside the `enabling` sections."""
    if not isinstance(data, dict):
        return data
    out: Dict[Any, Any] = {}
    for k, v in data.items():
        here = f"{path}.{k}" if path else str(k)
        if v is None and (path in enabling or here in enabling):
            v = {}
        out[k] = fill_empty(v, enabling, here) if isinstance(v, dict) else v
    return out


def convert(data: Dict[str, Any], cls: Type[S], origin: str) -> S:
    try:
        return msgspec.convert(data, cls, str_keys=True)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{origin}: {_pretty(str(e), cls)}") from None


def _pretty(msg: str, root: Any) -> str:
    # msgspec says "... - at `$.plugins.api.bindPort`"; lead with the key path, as people read it.
    path = ""
    if " - at `$." in msg:
        msg, path = msg.rsplit(" - at `$.", 1)
        path = path.rstrip("`")
    m = re.match(r"Object contains unknown field `(.+)`$", msg)
    if m:
        known = _keys_at(root, path)
        msg = f"unknown key {m.group(1)!r}" + (f"; expected one of {', '.join(known)}" if known else "")
    return f"{path}: {msg}" if path else msg


def _keys_at(root: Any, path: str) -> List[str]:
    """The keys the struct at `path` accepts, for 'did you mean' style errors."""
    cls: Any = root
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


SECRET_KEYS = frozenset({"token"})


def dump(conf: msgspec.Struct) -> str:
    """The effective config, defaults filled in, as YAML; secrets replaced by a note (the output
    ends up in tickets and chat)."""
    data = msgspec.to_builtins(conf)
    return yaml.safe_dump(_drop_none(data), sort_keys=False, default_flow_style=False)


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: ("(hidden)" if k in SECRET_KEYS else _drop_none(v)) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [_drop_none(v) for v in d]
    return d
