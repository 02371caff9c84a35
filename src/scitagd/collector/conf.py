# SPDX-License-Identifier: Apache-2.0
"""`collector:` config section (`scitagd collector --config FILE`).

The file may also hold the daemon's sections (one file for a host running both); the collector
reads only `collector:`, `registry:` and `logging:` and leaves the rest to the daemon. Each
struct's `Keys:` block documents its keys.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import msgspec

from ..confbase import LogConfig, RegistryConfig, convert, fill_empty, parse_mapping, read_mapping
from ..flowexport.conf import IpfixConfig, NetflowConfig, SflowConfig
from ..netutil import check_bind_address, check_networks, check_port, parse_hostport

__all__ = ["CollectorConfig", "CollectorFile", "HttpConfig", "StoreConfig", "TcpConfig", "UdpConfig", "load",
           "load_text"]


class UdpConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`collector.udp`: fireflies over UDP, with or without a syslog header.

    Keys:
      bindAddresses: addresses to listen on; "::" takes IPv4 too.
      port: UDP port.
      receiveBuffer: socket receive buffer in bytes; the log says when net.core.rmem_max capped it.
      allowedSources: CIDRs whose datagrams are taken; others are dropped and counted. Unset: any.
    """

    bind_addresses: List[str] = msgspec.field(default_factory=lambda: ["::"])
    port: int = 10514
    receive_buffer: int = 16 << 20
    allowed_sources: Optional[List[str]] = None

    def __post_init__(self) -> None:
        for a in self.bind_addresses:
            check_bind_address("bindAddresses", a)
        check_port("port", self.port)
        check_networks("allowedSources", self.allowed_sources or [])


class TcpConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`collector.syslogTcp`: fireflies over syslog/TCP (RFC 6587 octet counting or newline framing),
    as rsyslog and syslog-ng forward them; on when present.

    Keys:
      bindAddress: address to listen on.
      port: TCP port.
      maxMessage: longest message accepted, 512..1048576 bytes.
      allowedSources: CIDRs whose connections are taken. Unset: any.
      idleTimeout: seconds a silent connection is kept.
      maxConnections: open connections at most.
      maxConnectionsPerSource: open connections at most per sender address.
    """

    bind_address: str = "::"
    port: int = 10514
    max_message: int = 65536
    allowed_sources: Optional[List[str]] = None
    idle_timeout: float = 300.0
    max_connections: int = 256
    max_connections_per_source: int = 16

    def __post_init__(self) -> None:
        check_bind_address("bindAddress", self.bind_address)
        check_port("port", self.port)
        check_networks("allowedSources", self.allowed_sources or [])
        if not 512 <= self.max_message <= 1 << 20:
            raise ValueError(f"maxMessage {self.max_message}: expected 512..1048576 bytes")
        if not 1 <= self.idle_timeout <= 86400:
            raise ValueError(f"idleTimeout {self.idle_timeout}: expected 1..86400 seconds")
        if not 1 <= self.max_connections_per_source <= self.max_connections <= 65536:
            raise ValueError(f"maxConnections {self.max_connections}, maxConnectionsPerSource "
                             f"{self.max_connections_per_source}: expected 1 <= per source <= total <= 65536")


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`collector.store`: where fireflies are accounted: an SQLite file (the default: embedded,
    one writer, one process) or a ClickHouse database (a server: several receivers, collectors
    and hosts may write to it, months of flows stay quick to query).

    Keys:
      kind: sqlite or clickhouse. collector.workers above 1 needs clickhouse.
      path: sqlite: the database file (its directory must be writable: SQLite keeps a journal
        beside it).
      retentionDays: days of fireflies and per-minute traffic kept; older is deleted every 10
        minutes (ranges imported with --keep excepted). clickhouse drops whole days of flows by
        their start day (daily partitions).
      flushInterval: seconds between hand-overs of what arrived to the store, 0.01..10. sqlite:
        one commit each; longer costs less CPU below capacity (1 instead of 0.2: a quarter off the
        SQL) and shows fireflies that much later on the dashboard; under load batches grow anyway.
      maxPending: fireflies held in memory while the store is behind or the disk is full; beyond
        it new ones are dropped and counted.
      cacheFlows: flows kept in memory between their fireflies (clickhouse: remembered only for the
        counters in /metrics).
      url: clickhouse: the server's HTTP interface, http(s)://host:port/ (8123 is ClickHouse's).
      database: clickhouse: database name (letters, digits, _). The collector creates the
        single-node schema when the database has none and refuses a schema of another version.
      user: clickhouse: user name.
      password: clickhouse: the user's password; passwordFile keeps it out of this file.
      passwordFile: clickhouse: absolute path of a file whose first line is the password, read
        at start.
      batchRows: clickhouse: fireflies per INSERT at most, 100..1000000.
      batchInterval: clickhouse: seconds a firefly waits at most for its INSERT, 0.05..60.
      maxBufferRows: clickhouse: fireflies held while ClickHouse is down or slow, 1000..100000000;
        beyond it new ones are dropped and counted (scitagd_collector_store_dropped_total).
      spoolDir: clickhouse: directory where fireflies still unwritten at stop are kept (fsynced)
        and written at the next start. Unset: they are lost when ClickHouse is down at stop.
      timeout: clickhouse: seconds an INSERT or a query may take, 1..3600.
      rebuild: clickhouse: this collector rebuilds the per-minute traffic from the fireflies (one
        collector per database must; more are harmless, only wasteful).
      rebuildInterval: clickhouse: seconds between rebuilds of the days that got fireflies,
        5..3600; the dashboard's traffic series lag by about this.
      cluster: clickhouse: the cluster whose layout `scitagd collector schema --cluster NAME` made
        on every node. Set: the collector checks the schema (never creates it), writes and reads
        through the Distributed tables, and rebuilds and retains the `_local` tables of the node
        at url (give one collector per shard rebuild: true). Unset: a single node.
    """

    kind: str = "sqlite"
    path: str = "/var/lib/scitagd/collector.sqlite"
    retention_days: float = 30.0
    flush_interval: float = 0.2
    max_pending: int = 200_000
    cache_flows: int = 200_000
    url: str = "http://127.0.0.1:8123/"
    database: str = "scitagd"
    user: str = "default"
    password: Optional[str] = None
    password_file: Optional[str] = None
    batch_rows: int = 20_000
    batch_interval: float = 1.0
    max_buffer_rows: int = 2_000_000
    spool_dir: Optional[str] = None
    timeout: float = 30.0
    rebuild: bool = True
    rebuild_interval: float = 60.0
    cluster: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in ("sqlite", "clickhouse"):
            raise ValueError(f"kind {self.kind!r}: expected sqlite or clickhouse")
        if self.retention_days <= 0:
            raise ValueError(f"retentionDays {self.retention_days}: expected > 0")
        if not 0.01 <= self.flush_interval <= 10:
            raise ValueError(f"flushInterval {self.flush_interval}: expected 0.01..10 seconds")
        if not 1000 <= self.max_pending <= 10_000_000:
            raise ValueError(f"maxPending {self.max_pending}: expected 1000..10000000 fireflies")
        if not 100 <= self.cache_flows <= 10_000_000:
            raise ValueError(f"cacheFlows {self.cache_flows}: expected 100..10000000")
        if self.kind == "sqlite":
            # a ClickHouse key under an SQLite store is a mistake worth saying (kind forgotten)
            defaults = StoreConfig.__struct_defaults__
            for name, key in _CLICKHOUSE_KEYS:
                if getattr(self, name) != defaults[StoreConfig.__struct_fields__.index(name)]:
                    raise ValueError(f"{key}: a clickhouse key, and kind is sqlite (set kind: clickhouse)")
            return
        if self.path != StoreConfig.__struct_defaults__[StoreConfig.__struct_fields__.index("path")]:
            raise ValueError("path: an sqlite key, and kind is clickhouse (the database is url + database)")
        u = urllib.parse.urlsplit(self.url)
        if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment or "@" in u.netloc:
            raise ValueError(f"url {self.url!r}: expected http(s)://host:port/ (user and password have keys "
                             "of their own)")
        try:
            _ = u.port
        except ValueError:
            raise ValueError(f"url {self.url!r}: bad port") from None
        if not self.database or not (self.database[0].isalpha() or self.database[0] == "_") or \
                not all(c.isascii() and (c.isalnum() or c == "_") for c in self.database) or len(self.database) > 64:
            raise ValueError(f"database {self.database!r}: expected letters, digits and _ (a ClickHouse "
                             "identifier, at most 64)")
        if not self.user or len(self.user) > 64 or not self.user.isprintable():
            raise ValueError(f"user {self.user[:70]!r}: expected a user name")
        if self.password is not None and self.password_file is not None:
            raise ValueError("password and passwordFile: expected one of them, not both")
        if self.password_file is not None and not os.path.isabs(self.password_file):
            raise ValueError(f"passwordFile {self.password_file!r}: expected an absolute path")
        if self.spool_dir is not None and not os.path.isabs(self.spool_dir):
            raise ValueError(f"spoolDir {self.spool_dir!r}: expected an absolute path")
        for key, v, lo, hi in (("batchRows", self.batch_rows, 100, 1_000_000),
                               ("batchInterval", self.batch_interval, 0.05, 60),
                               ("maxBufferRows", self.max_buffer_rows, 1000, 100_000_000),
                               ("timeout", self.timeout, 1, 3600),
                               ("rebuildInterval", self.rebuild_interval, 5, 3600)):
            if not lo <= v <= hi:
                raise ValueError(f"{key} {v}: expected {lo}..{hi}")
        if self.cluster is not None and (not self.cluster or not (self.cluster[0].isalpha() or self.cluster[0] == "_")
                                         or not all(c.isascii() and (c.isalnum() or c == "_") for c in self.cluster)
                                         or len(self.cluster) > 64):
            raise ValueError(f"cluster {self.cluster[:70]!r}: expected a cluster name of remote_servers "
                             "(letters, digits and _, at most 64)")
        if self.max_buffer_rows < self.batch_rows:
            raise ValueError(f"maxBufferRows {self.max_buffer_rows}: expected at least batchRows ({self.batch_rows})")

    def read_password(self) -> str:
        """The password in force: `password`, or the first line of `passwordFile` (read at start)."""
        if self.password_file is None:
            return self.password or ""
        try:
            with open(self.password_file, "rb") as f:
                raw = f.read(4097)
        except OSError as e:
            raise ValueError(f"collector.store.passwordFile {self.password_file!r}: cannot read: "
                             f"{e.strerror or e}") from None
        lines = raw.decode("utf-8", "replace").splitlines()
        return lines[0].rstrip("\r") if lines else ""


_CLICKHOUSE_KEYS = (("url", "url"), ("database", "database"), ("user", "user"), ("password", "password"),
                    ("password_file", "passwordFile"), ("batch_rows", "batchRows"),
                    ("batch_interval", "batchInterval"), ("max_buffer_rows", "maxBufferRows"),
                    ("spool_dir", "spoolDir"), ("timeout", "timeout"), ("rebuild", "rebuild"),
                    ("rebuild_interval", "rebuildInterval"), ("cluster", "cluster"))


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`collector.http`: the dashboard, the JSON API (/api/v1/...), /metrics and /healthz.

    Keys:
      bindAddress: address to listen on; the pages and API have no authentication, keep it on
        loopback or behind a proxy that adds it.
      port: TCP port.
    """

    bind_address: str = "127.0.0.1"
    port: int = 8088

    def __post_init__(self) -> None:
        check_bind_address("bindAddress", self.bind_address)
        check_port("port", self.port)


class CollectorConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`collector`: what `scitagd collector` runs.

    Keys:
      udp: the UDP listener.
      syslogTcp: the syslog/TCP listener; on when present.
      store: where fireflies are accounted.
      http: the dashboard, API and metrics.
      trustedRelays: CIDRs of relays you run, whose syslog HOSTNAME is taken as the reporter; from
        anyone else the reporter is the sender's address.
      localNetworks: CIDRs of this site, for dropLocalOnly.
      dropLocalOnly: do not account flows with both ends in localNetworks.
      relay: further collectors, "host:port"; every datagram received is forwarded unchanged.
      activeTimeout: seconds of silence, by the flow's own event times, before a flow without an
        end is closed as expired.
      maxActiveFlows: active flows at most; beyond it the longest-silent ones are closed (counted).
      maxClockSkew: seconds an event time may be ahead of the collector's clock.
      samples: invalid datagrams kept for inspection (GET /api/v1/rejected), 0..10000.
      ipfix: IPFIX and PSAMP from routers and switches, accounted per link and tag; on when present.
      netflow: NetFlow v9 from routers, accounted per link and tag; on when present.
      sflow: sFlow v5 from switches and routers, accounted per link and tag; on when present.
      workers: receiving processes, 1..64. Above 1 the collector starts that many workers sharing
        the UDP port (SO_REUSEPORT; the kernel spreads senders over them), each writing to
        ClickHouse, and serves the dashboard, API and summed metrics itself; restarts a worker
        that dies. Needs store.kind clickhouse (SQLite has one writer); syslogTcp is served by
        the first worker; flow-export sections need workers 1.
    """

    udp: UdpConfig = msgspec.field(default_factory=UdpConfig)
    syslog_tcp: Optional[TcpConfig] = None
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    trusted_relays: List[str] = msgspec.field(default_factory=list)
    local_networks: List[str] = msgspec.field(default_factory=list)
    drop_local_only: bool = False
    relay: List[str] = msgspec.field(default_factory=list)
    active_timeout: float = 86400.0
    max_active_flows: int = 500_000
    max_clock_skew: float = 3600.0
    samples: int = 100
    ipfix: Optional[IpfixConfig] = None
    netflow: Optional[NetflowConfig] = None
    sflow: Optional[SflowConfig] = None
    workers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers {self.workers}: expected 1..64")
        if self.workers > 1 and self.store.kind != "clickhouse":
            raise ValueError(f"workers {self.workers}: the SQLite store has one writer, so the collector runs one "
                             "process with it; several workers need store.kind: clickhouse")
        if self.workers > 1 and self.flow_exports():
            raise ValueError(f"workers {self.workers} with {', '.join(n for n, _ in self.flow_exports())}: flow "
                             "exports run in one process, whose flow paths need every firefly; use workers: 1, "
                             "or a second collector for the exports writing to the same ClickHouse database")
        check_networks("localNetworks", self.local_networks)
        check_networks("trustedRelays", self.trusted_relays)
        if not 1 <= self.max_active_flows <= 50_000_000:
            raise ValueError(f"maxActiveFlows {self.max_active_flows}: expected 1..50000000")
        if not 0 <= self.max_clock_skew <= 7 * 86400:
            raise ValueError(f"maxClockSkew {self.max_clock_skew}: expected 0..604800 seconds")
        for r in self.relay:
            parse_hostport("relay", r, 10514)
        if self.active_timeout <= 0:
            raise ValueError(f"activeTimeout {self.active_timeout}: expected > 0 seconds")
        if not 0 <= self.samples <= 10000:
            raise ValueError(f"samples {self.samples}: expected 0..10000")
        taken: Dict[Tuple[str, int], str] = {("udp", self.udp.port): "udp"}
        if self.syslog_tcp is not None:
            taken[("tcp", self.syslog_tcp.port)] = "syslogTcp"
        for name, sec in self.flow_exports():
            other = taken.get(("udp", sec.port))
            if other is not None:
                raise ValueError(f"{name}.port {sec.port}: already used by {other}")
            taken[("udp", sec.port)] = name

    def flow_exports(self) -> List[Tuple[str, Any]]:
        """The flow-export sections present, by key: [("ipfix", IpfixConfig), ...]."""
        return [(k, v) for k, v in (("ipfix", self.ipfix), ("netflow", self.netflow), ("sflow", self.sflow))
                if v is not None]


# Top-level keys of the daemon: present in a shared file, not the collector's business.
_DAEMON_KEYS = ("pidPath", "workDir", "plugins", "backends", "enrichers", "flowTable")
_ENABLING = frozenset({"collector"})


class CollectorFile(msgspec.Struct, forbid_unknown_fields=True):
    """A collector's config file: the `collector:` section and the shared `registry:` and `logging:`.
    The daemon's sections may be in the same file; the collector leaves them to the daemon.

    Keys:
      collector: the collector.
      registry: experiment and activity names.
      logging: log level and flow lines.
    """

    collector: CollectorConfig = msgspec.field(default_factory=CollectorConfig)
    registry: RegistryConfig = msgspec.field(default_factory=RegistryConfig)
    logging: LogConfig = msgspec.field(default_factory=LogConfig)


def from_mapping(data: Dict[str, Any], origin: str) -> CollectorFile:
    mine = {k: ({} if v is None else v) for k, v in data.items() if k not in _DAEMON_KEYS}
    # `ipfix:` alone means on with defaults, as every section that is on when present
    return convert(fill_empty(mine, _ENABLING), CollectorFile, origin)


def load_text(text: str, origin: str = "<config>") -> CollectorFile:
    return from_mapping(parse_mapping(text, origin), origin)


def load(path: str | Path) -> CollectorFile:
    return from_mapping(read_mapping(path), str(path))
