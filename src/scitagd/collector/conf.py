"""`collector:` config section (`scitagd collector --config FILE`).

  udp:        {bindAddresses: ["::"], port: 10514, receiveBuffer: 16777216}   "::" takes IPv4 too
  syslogTcp:  {bindAddress: "::", port: 10514}       on when present: rsyslog forwarding (RFC 6587)
  store:      {path, retentionDays: 30, flushInterval: 0.2}
  http:       {bindAddress: 127.0.0.1, port: 8088}   dashboard, JSON API, /metrics
  localNetworks: [CIDR, ...]     with dropLocalOnly: true, flows inside them are not accounted
  relay:      ["host:port", ...] raw datagrams forwarded to further collectors
  activeTimeout: 86400           seconds before a flow without an end is closed as expired
  samples:    100                invalid datagrams kept for inspection (GET /api/v1/rejected)

The file may also hold the daemon's sections (one file for a host running both); the collector
reads only `collector:`, `registry:` and `logging:` and leaves the rest to the daemon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import msgspec

from ..confbase import LogConfig, RegistryConfig, convert, parse_mapping, read_mapping
from ..netutil import check_bind_address, check_networks, check_port, parse_hostport

__all__ = ["CollectorConfig", "CollectorFile", "HttpConfig", "StoreConfig", "TcpConfig", "UdpConfig", "load",
           "load_text"]


class UdpConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    bind_addresses: List[str] = msgspec.field(default_factory=lambda: ["::"])
    port: int = 10514
    receive_buffer: int = 16 << 20

    def __post_init__(self) -> None:
        for a in self.bind_addresses:
            check_bind_address("bindAddresses", a)
        check_port("port", self.port)


class TcpConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    bind_address: str = "::"
    port: int = 10514
    max_message: int = 65536

    def __post_init__(self) -> None:
        check_bind_address("bindAddress", self.bind_address)
        check_port("port", self.port)


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    path: str = "/var/lib/scitagd/collector.sqlite"
    retention_days: float = 30.0
    flush_interval: float = 0.2

    def __post_init__(self) -> None:
        if self.retention_days <= 0:
            raise ValueError(f"retentionDays {self.retention_days}: expected > 0")
        if not 0.01 <= self.flush_interval <= 10:
            raise ValueError(f"flushInterval {self.flush_interval}: expected 0.01..10 seconds")


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    bind_address: str = "127.0.0.1"
    port: int = 8088

    def __post_init__(self) -> None:
        check_bind_address("bindAddress", self.bind_address)
        check_port("port", self.port)


class CollectorConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    udp: UdpConfig = msgspec.field(default_factory=UdpConfig)
    syslog_tcp: Optional[TcpConfig] = None
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    local_networks: List[str] = msgspec.field(default_factory=list)
    drop_local_only: bool = False
    relay: List[str] = msgspec.field(default_factory=list)
    active_timeout: float = 86400.0
    samples: int = 100

    def __post_init__(self) -> None:
        check_networks("localNetworks", self.local_networks)
        for r in self.relay:
            parse_hostport("relay", r, 10514)
        if self.active_timeout <= 0:
            raise ValueError(f"activeTimeout {self.active_timeout}: expected > 0 seconds")
        if not 0 <= self.samples <= 10000:
            raise ValueError(f"samples {self.samples}: expected 0..10000")


# Top-level keys of the daemon: present in a shared file, not the collector's business.
_DAEMON_KEYS = ("pidPath", "workDir", "plugins", "backends", "enrichers", "flowTable")


class CollectorFile(msgspec.Struct, forbid_unknown_fields=True):
    collector: CollectorConfig = msgspec.field(default_factory=CollectorConfig)
    registry: RegistryConfig = msgspec.field(default_factory=RegistryConfig)
    logging: LogConfig = msgspec.field(default_factory=LogConfig)


def from_mapping(data: Dict[str, Any], origin: str) -> CollectorFile:
    mine = {k: ({} if v is None else v) for k, v in data.items() if k not in _DAEMON_KEYS}
    return convert(mine, CollectorFile, origin)


def load_text(text: str, origin: str = "<config>") -> CollectorFile:
    return from_mapping(parse_mapping(text, origin), origin)


def load(path: str | Path) -> CollectorFile:
    return from_mapping(read_mapping(path), str(path))
