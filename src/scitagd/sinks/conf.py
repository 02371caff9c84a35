# SPDX-License-Identifier: Apache-2.0
"""Config sections of the sinks (`backends:`), flowd-go's keys plus extensions.

Importing this module imports no sink implementation (see sources/conf.py for why). Each
struct's `Keys:` block documents its keys.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import msgspec

from ..netutil import check_bind_address, check_host, check_port, parse_hostport

__all__ = ["FIREFLY_PORT", "STRATEGIES", "FireflySinkConfig", "MarkerConfig", "PrometheusConfig"]

FIREFLY_PORT = 10514
STRATEGIES = ("label", "hopByHop", "destination", "hopByHopDestination")
ENRICHMENT_MODES = ("lean", "full", "compatible")


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
      stun: flowd-go's public-address discovery section; accepted.
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
    stun: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
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
        appear.
      removeQdisc: remove the clsact qdisc at exit if scitagd created it.
      programPath: a compiled eBPF object to load instead of the shipped one (flowd-go key).
      markingStrategy: label (the flow label), hopByHop, destination or hopByHopDestination
        (extension headers).
      matchAll: mark every IPv6 flow with matchExperiment/matchActivity, reported or not (as
        flowd-go's perfSONAR mode).
      matchExperiment: the experiment matchAll marks with (extension); unset: plugins.perfsonar's.
      matchActivity: the activity matchAll marks with (extension); unset: plugins.perfsonar's.
      debugMode: flowd-go key; accepted.
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
      skopsPort: flowd-go key for its second exporter; accepted: every metric is on port.
      log: flowd-go key; accepted.
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
