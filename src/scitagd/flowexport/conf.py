# SPDX-License-Identifier: Apache-2.0
"""`collector.ipfix`, `collector.netflow` (v9) and `collector.sflow` config sections.

  ipfix:   {bindAddresses: ["::"], port: 4739, allowedSources: [CIDR...], receiveBuffer: 33554432,
            templateTimeout: 1800, holdTime: 2, maxExporters: 1024, maxDomains: 64,
            maxTemplates: 512, anyExperiment: false, knownActivitiesOnly: true,
            markingPrefixes: [CIDR...]}
  netflow: the same keys, port 2055
  sflow:   bindAddresses, port 6343, allowedSources, receiveBuffer, maxExporters,
           anyExperiment, knownActivitiesOnly, markingPrefixes

allowedSources: exporters' addresses; datagrams from elsewhere are counted and dropped. Empty
(the default) takes any source: flow exports carry no authentication, so set it in production.
knownActivitiesOnly (default true unless anyExperiment): only the registry's (experiment,
activity) pairs count as tagged; a random label of an unmarked host then looks tagged with
probability 114/32768 = 0.35% (bundled registry), against 2.7% with `false` (any activity of a
known experiment). anyExperiment: a label decoding to any experiment 1..511 counts (99.8%:
for networks where only marking hosts send IPv6, e.g. a test bed).
markingPrefixes: networks of the marking sites; a label tag counts only when one end is in them.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, List, Optional

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
    bind_addresses: List[str] = msgspec.field(default_factory=lambda: ["::"])
    port: int = 0
    allowed_sources: List[str] = msgspec.field(default_factory=list)
    receive_buffer: int = 32 << 20
    max_exporters: int = 1024
    any_experiment: bool = False
    known_activities_only: Optional[bool] = None  # None: true unless anyExperiment
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
        if self.any_experiment and self.known_activities_only:
            raise ValueError("anyExperiment and knownActivitiesOnly: expected at most one of them true")

    @property
    def known_only(self) -> bool:
        """Whether only the registry's (experiment, activity) pairs count as tags."""
        if self.known_activities_only is None:
            return not self.any_experiment
        return self.known_activities_only


class TemplateProtocolConfig(_Base):
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
    port: int = 4739


class NetflowConfig(TemplateProtocolConfig):
    port: int = 2055


class SflowConfig(_Base):
    port: int = 6343
