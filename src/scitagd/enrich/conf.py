# SPDX-License-Identifier: Apache-2.0
"""`enrichers` config (flowd-go's keys); each struct's `Keys:` block documents its keys."""

from __future__ import annotations

from typing import Optional

import msgspec

__all__ = ["EnrichersConfig", "NetlinkEnricherConfig", "SkopsEnricherConfig"]


class NetlinkEnricherConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`enrichers.netlink`: tcp_info of every active TCP flow each period, through exact sock_diag
    lookups.

    Keys:
      protocol: flowd-go key (IPPROTO_TCP); accepted.
      ext: flowd-go key (sock_diag extensions bitmask); accepted.
      state: flowd-go key (TCP states bitmask); accepted.
    """

    protocol: int = 6
    ext: int = 255
    state: int = 3071


class SkopsEnricherConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`enrichers.skops`: samples from the watcher's sock_ops program on RTT callbacks, rate-limited
    per socket in the kernel.

    Keys:
      cgroupPath: cgroup v2 directory the sock_ops program attaches to.
      programPath: flowd-go key; accepted.
      debugMode: flowd-go key; accepted.
      strategy: flowd-go key; accepted.
    """

    cgroup_path: str = "/sys/fs/cgroup"
    program_path: str = ""
    debug_mode: bool = False
    strategy: str = "poll"


class EnrichersConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`enrichers`: TCP statistics for active flows, for ongoing fireflies and per-flow metrics.

    Keys:
      period: milliseconds between samples, 10..3600000.
      netlink: sock_diag enrichment; on when present.
      skops: eBPF sock_ops enrichment; on when present.
    """

    period: int = 1000
    netlink: Optional[NetlinkEnricherConfig] = None
    skops: Optional[SkopsEnricherConfig] = None

    def __post_init__(self) -> None:
        if not 10 <= self.period <= 3_600_000:
            raise ValueError(f"period {self.period}: expected 10..3600000 milliseconds")
