# SPDX-License-Identifier: Apache-2.0
"""Config sections of the sinks (`backends:`), flowd-go's keys plus extensions.

Importing this module imports no sink implementation (see sources/conf.py for why). Each
struct's `Keys:` block documents its keys.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import msgspec

from ..netutil import check_bind_address, check_host, check_port, parse_hostport

__all__ = ["FIREFLY_PORT", "STRATEGIES", "FireflySinkConfig", "MarkerConfig", "PrometheusConfig", "StunConfig"]

FIREFLY_PORT = 10514
STRATEGIES = ("label", "hopByHop", "destination", "hopByHopDestination")
ENRICHMENT_MODES = ("lean", "full", "compatible")
# flowd-go's defaults (internal/stun): public servers, used only when `stun:` leaves them out
STUN_SERVERS = ["stun.l.google.com:3478", "stun1.l.google.com:3478", "stun2.l.google.com:3478",
                "stun3.l.google.com:3478", "stun4.l.google.com:3478"]
ECHO_SERVERS = ["https://api64.ipify.org?format=json", "https://ipconfig.io/json"]


class StunConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`backends.firefly.stun`: for hosts behind NAT, the fireflies this host sends carry its
    public address in place of its private ones (the address fields only: what the marker
    matches is the packets' own addresses). flowd-go's keys, discovery from every address the
    marker's interfaces and the default routes use, refreshed, never holding up the start.

    Keys:
      manualMapping: {private address: public address}, used as given, never asked about;
        "0.0.0.0" / "::" as the private side stand for every address of this host of that family
      stunServers: "host:port" STUN servers (RFC 5389 Binding, IPv4 and IPv6), asked in turn after
        the HTTP echoes; default flowd-go's (stun.l.google.com and stun1..4, port 3478); [] for none
      httpServers: http(s) URLs that answer with the caller's address ({"ip": ...} or the bare
        address), asked first; default flowd-go's (api64.ipify.org, ipconfig.io); [] for none
      interfaces: more interfaces whose private addresses are mapped, beside the marker's
        (backends.marker) and those of the default IPv4 and IPv6 routes
      refreshInterval: seconds between discoveries of every address (default 300; flowd-go: once)
      checkInterval: seconds between looks at this host's addresses; a new one is discovered at
        once (default 5)
      timeout: seconds per server and address (default 5)
    """

    manual_mapping: Dict[str, str] = msgspec.field(default_factory=dict)
    stun_servers: List[str] = msgspec.field(default_factory=lambda: list(STUN_SERVERS))
    http_servers: List[str] = msgspec.field(default_factory=lambda: list(ECHO_SERVERS))
    interfaces: List[str] = msgspec.field(default_factory=list)
    refresh_interval: float = 300.0
    check_interval: float = 5.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        import ipaddress

        if len(self.manual_mapping) > 4096:
            raise ValueError(f"manualMapping: {len(self.manual_mapping)} entries; expected at most 4096")
        fixed = {}
        for priv, pub in self.manual_mapping.items():
            try:
                a, b = ipaddress.ip_address(str(priv)), ipaddress.ip_address(str(pub))
            except ValueError:
                raise ValueError(f"manualMapping {priv!r}: {pub!r}: expected an IP address on each side") from None
            if a.version != b.version:
                raise ValueError(f"manualMapping {priv!r}: {pub!r}: expected addresses of the same family")
            fixed[a.compressed] = b.compressed
        self.manual_mapping = fixed
        for srv in self.stun_servers:
            parse_hostport("stunServers", srv, 3478)
        for url in self.http_servers:
            if not url.startswith(("http://", "https://")) or len(url) > 2048:
                raise ValueError(f"httpServers {url[:80]!r}: expected an http:// or https:// URL")
        for name in self.interfaces:
            if not name or len(name) > 15 or "/" in name or " " in name:
                raise ValueError(f"interfaces {name!r}: expected an interface name")
        if not 10 <= self.refresh_interval <= 86400:
            raise ValueError(f"refreshInterval {self.refresh_interval}: expected 10..86400 seconds")
        if not 0.1 <= self.check_interval <= 3600:
            raise ValueError(f"checkInterval {self.check_interval}: expected 0.1..3600 seconds")
        if not 0.1 <= self.timeout <= 60:
            raise ValueError(f"timeout {self.timeout}: expected 0.1..60 seconds")


class FireflySinkConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`backends.firefly`: sends a firefly (UDP, JSON after an RFC 5424 syslog header) for every flow
    start, end and, with enrich, ongoing sample, to the transfer's peer and to collectors.

    Keys:
      destinationPort: UDP port fireflies are sent to on the peer.
      prependSyslog: put the RFC 5424 syslog header in front of the JSON (what collectors expect).
      sendToCollector: also send to collectorAddress:collectorPort (flowd-go's single collector).
      collectorAddress: flowd-go's collector host.
      collectorPort: flowd-go's collector port.
      collectors: more collectors, "host:port" or "[v6]:port" (extension); names are re-resolved
        every resolveInterval.
      resolveInterval: seconds between re-resolving collector names (extension), >= 1.
      sendToPeer: false sends to the collectors only (extension).
      hostname: syslog HOSTNAME field (extension); unset: this host's FQDN.
      enrich: send `ongoing` fireflies with TCP statistics from the enrichers.
      enrichmentMode: which tcp_info fields ongoing fireflies carry: lean, full or compatible
        (flowd-go's field set).
      stun: for a host behind NAT, its public addresses in the fireflies in place of its private
        ones (flowd-go's section, discovery by STUN and HTTP echoes; see its keys).
    """

    destination_port: int = FIREFLY_PORT
    prepend_syslog: bool = True
    send_to_collector: bool = False
    collector_address: str = "127.0.0.1"
    collector_port: int = FIREFLY_PORT
    collectors: List[str] = []
    resolve_interval: float = 300.0
    send_to_peer: bool = True
    hostname: Optional[str] = None
    enrich: bool = False
    enrichment_mode: str = "lean"
    stun: Optional[StunConfig] = None

    def __post_init__(self) -> None:
        if self.enrichment_mode == "":
            self.enrichment_mode = "full"  # flowd-go: "" (and anything unknown to it) is full
        check_port("destinationPort", self.destination_port)
        check_port("collectorPort", self.collector_port)
        check_host("collectorAddress", self.collector_address)
        for c in self.collectors:
            parse_hostport("collectors", c, FIREFLY_PORT)
        if self.resolve_interval < 1:
            raise ValueError(f"resolveInterval {self.resolve_interval}: expected >= 1 second")
        if self.enrichment_mode not in ENRICHMENT_MODES:
            raise ValueError(f"enrichmentMode {self.enrichment_mode!r}: expected lean, full or "
                             "compatible")

    def collector_list(self) -> List[Tuple[str, int]]:
        out = [parse_hostport("collectors", c, FIREFLY_PORT) for c in self.collectors]
        if self.send_to_collector:
            out.append((self.collector_address, self.collector_port))
        return out


class MarkerConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`backends.marker`: the eBPF program on tc egress that writes each flow's tag into its packets
    (IPv6 flow label, or IPv6 hop-by-hop/destination options).

    Keys:
      targetInterfaces: interfaces to attach to.
      discoverInterfaces: also attach to every interface with a global IPv6 address, as they
        appear; without targetInterfaces in the file, only to those (flowd-go's: the discovered
        interfaces replace the default lo).
      removeQdisc: remove the clsact qdisc at exit if scitagd created it.
      programPath: a site's build of scitagd's marker.bpf.c to load instead of the shipped one,
        checked for the programs, maps and struct layouts scitagd drives (flowd-go's objects are
        refused).
      markingStrategy: label (the flow label), hopByHop, destination or hopByHopDestination
        (extension headers).
      matchAll: mark every IPv6 flow with matchExperiment/matchActivity, reported or not (as
        flowd-go's perfSONAR mode).
      matchExperiment: the experiment matchAll marks with (extension); unset: plugins.perfsonar's.
      matchActivity: the activity matchAll marks with (extension); unset: plugins.perfsonar's.
      debugMode: load the debug build (marker-debug.bpf.o): each marking decision in the kernel's
        trace buffer (cat /sys/kernel/tracing/trace_pipe); costs time per packet.
      mapSize: flow map capacity (an LRU; each flow takes two entries), 1024..16777216.
      checkInterval: seconds between checks that every interface still has our filter (extension).
      pinPath: bpffs directory where the maps are pinned so a restart or reload keeps marking.
      tcPriority: priority of our clsact egress filter; 1 runs it before others, and it passes
        every packet on to the filters after it.
    """

    target_interfaces: List[str] = msgspec.field(default_factory=lambda: ["lo"])
    discover_interfaces: bool = False
    remove_qdisc: bool = True
    program_path: str = ""
    marking_strategy: str = "label"
    match_all: bool = False
    match_experiment: Optional[int] = None
    match_activity: Optional[int] = None
    debug_mode: bool = False
    map_size: int = 262144
    check_interval: float = 2.0
    pin_path: str = "/sys/fs/bpf/scitagd"
    tc_priority: int = 1

    def __post_init__(self) -> None:
        folded = {s.lower(): s for s in STRATEGIES}
        s = folded.get(self.marking_strategy.lower())
        if s is None:
            raise ValueError(f"markingStrategy {self.marking_strategy!r}: expected one of "
                             + ", ".join(STRATEGIES))
        self.marking_strategy = s
        if not 1024 <= self.map_size <= 1 << 24:
            raise ValueError(f"mapSize {self.map_size}: expected 1024..16777216")
        if not 0.1 <= self.check_interval <= 300:
            raise ValueError(f"checkInterval {self.check_interval}: expected 0.1..300 seconds")
        if not 1 <= self.tc_priority <= 0xFFFF:
            raise ValueError(f"tcPriority {self.tc_priority}: expected 1..65535")
        if not self.pin_path.startswith("/sys/fs/bpf/") or ".." in self.pin_path:
            raise ValueError(f"pinPath {self.pin_path!r}: expected a directory under /sys/fs/bpf/")
        for name in self.target_interfaces:
            if not name or len(name) > 15 or "/" in name or " " in name:
                raise ValueError(f"targetInterfaces {name!r}: expected an interface name "
                                 "(1-15 characters, no '/' or spaces)")


class PrometheusConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`backends.prometheus`: metrics at http://bindAddress:port/metrics.

    Keys:
      bindAddress: address to listen on.
      port: TCP port (extension; default 8080).
      netlinkPort: flowd-go's name for port; give one of them.
      skopsPort: flowd-go key for its second exporter; accepted, not used: every metric is on port,
        the enrichers' told apart by the label flavour (a warning at start says so).
      log: false silences the metrics server's log (flowd-go's discard logger).
    """

    bind_address: str = "127.0.0.1"
    port: Optional[int] = None
    netlink_port: Optional[int] = None
    skops_port: Optional[int] = None
    log: bool = True

    def __post_init__(self) -> None:
        check_bind_address("bindAddress", self.bind_address)
        if self.port is not None and self.netlink_port is not None and self.port != self.netlink_port:
            raise ValueError(f"port {self.port} and netlinkPort {self.netlink_port}: they name the "
                             "same setting, give one")
        check_port("port", self.listen_port)

    @property
    def listen_port(self) -> int:
        return self.port if self.port is not None else (self.netlink_port or 8080)
