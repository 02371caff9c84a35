# SPDX-License-Identifier: Apache-2.0
"""`enrichers` config (flowd-go's keys).

  period    milliseconds between samples (default 1000)
  netlink   {protocol, ext, state}: sock_diag enrichment
  skops     {cgroupPath, programPath, debugMode, strategy}: eBPF sock_ops enrichment
"""

from __future__ import annotations

from typing import Optional

import msgspec

__all__ = ["EnrichersConfig", "NetlinkEnricherConfig", "SkopsEnricherConfig"]


class NetlinkEnricherConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    protocol: int = 6
    ext: int = 255
    state: int = 3071


class SkopsEnricherConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    cgroup_path: str = "/sys/fs/cgroup"
    program_path: str = ""
    debug_mode: bool = False
    strategy: str = "poll"


class EnrichersConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    period: int = 1000
    netlink: Optional[NetlinkEnricherConfig] = None
    skops: Optional[SkopsEnricherConfig] = None

    def __post_init__(self) -> None:
        if not 10 <= self.period <= 3_600_000:
            raise ValueError(f"period {self.period}: expected 10..3600000 milliseconds")
