# SPDX-License-Identifier: Apache-2.0
"""`collector.ipfix`, `collector.netflow` (v9) and `collector.sflow` config sections; each
struct's `Keys:` block documents its keys."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, List

import msgspec

from ..netutil import check_bind_address, check_port

if TYPE_CHECKING:
    from .session import Limits

__all__ = ["IpfixConfig", "NetflowConfig", "SflowConfig", "TemplateProtocolConfig"]


def _check_cidrs(key: str, cidrs: List[str]) -> None:
    for c in cidrs:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise ValueError(f"{key} {c!r}: expected a CIDR like 192.0.2.0/24 or 2001:db8::/32") from None


def _check_range(key: str, value: float, lo: float, hi: float, unit: str = "") -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{key} {value}: expected {lo:g}..{hi:g}{unit}")


class _Base(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """What every flow-export listener shares.

    Keys:
      bindAddresses: addresses to listen on; "::" takes IPv4 too.
      port: UDP port.
      allowedSources: exporters' addresses (CIDRs); datagrams from elsewhere are counted and
        dropped. Empty takes any source: flow exports carry no authentication, so set it in
        production.
      receiveBuffer: socket receive buffer in bytes, 65536..1073741824.
      maxExporters: exporters tracked at most (per-exporter state is bounded by it).
      anyExperiment: a flow label decoding to any experiment 1..511 counts as tagged, not only the
        registry's (then 99.8% of an unmarked host's random labels look tagged: test beds only).
      knownActivitiesOnly: only the registry's (experiment, activity) pairs count as tagged
        (anyExperiment overrides it). A random label of an unmarked host then looks tagged with
        probability 114/32768 = 0.35% (bundled registry), against 2.7% with false.
      markingPrefixes: networks of the marking sites (CIDRs); a label counts only when one end is in
        them.
    """

    bind_addresses: List[str] = msgspec.field(default_factory=lambda: ["::"])
    port: int = 0
    allowed_sources: List[str] = msgspec.field(default_factory=list)
    receive_buffer: int = 32 << 20
    max_exporters: int = 1024
    any_experiment: bool = False
    known_activities_only: bool = True
    marking_prefixes: List[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.bind_addresses:
            raise ValueError("bindAddresses []: expected at least one address")
        for a in self.bind_addresses:
            check_bind_address("bindAddresses", a)
        check_port("port", self.port)
        _check_cidrs("allowedSources", self.allowed_sources)
        _check_cidrs("markingPrefixes", self.marking_prefixes)
        _check_range("receiveBuffer", self.receive_buffer, 65536, 1 << 30, " bytes")
        _check_range("maxExporters", self.max_exporters, 1, 1 << 20)

    @property
    def known_only(self) -> bool:
        """Whether only the registry's (experiment, activity) pairs count as tags."""
        return self.known_activities_only and not self.any_experiment


class TemplateProtocolConfig(_Base):
    """What IPFIX and NetFlow v9 listeners share: templates.

    Keys:
      templateTimeout: seconds a template is kept without being refreshed, 10..86400.
      holdTime: seconds data records that arrive before their template are held, 0..60.
      maxDomains: observation domains per exporter at most.
      maxTemplates: templates per observation domain at most.
    """

    template_timeout: float = 1800.0
    hold_time: float = 2.0
    max_domains: int = 64
    max_templates: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("templateTimeout", self.template_timeout, 10, 86400, " seconds")
        _check_range("holdTime", self.hold_time, 0, 60, " seconds")
        _check_range("maxDomains", self.max_domains, 1, 65536)
        _check_range("maxTemplates", self.max_templates, 1, 65280)

    def limits(self) -> Limits:
        from .session import Limits  # the decoders' module: not loaded to read a config

        return Limits(max_exporters=self.max_exporters, max_domains=self.max_domains,
                      max_templates=self.max_templates, template_timeout=self.template_timeout,
                      hold_time=self.hold_time)


class IpfixConfig(TemplateProtocolConfig):
    """`collector.ipfix`: IPFIX (RFC 7011) from routers and switches; on when present.

    Keys:
      port: UDP port (4739, IANA's).
    """

    port: int = 4739


class NetflowConfig(TemplateProtocolConfig):
    """`collector.netflow`: NetFlow v9 (RFC 3954); on when present.

    Keys:
      port: UDP port (2055, the usual one).
    """

    port: int = 2055


class SflowConfig(_Base):
    """`collector.sflow`: sFlow v5 sampled packet headers; on when present.

    Keys:
      port: UDP port (6343, IANA's).
    """

    port: int = 6343
