# SPDX-License-Identifier: Apache-2.0
"""`enrichers` config (flowd-go's keys).

  period    milliseconds between samples (default 1000)
  netlink   {protocol, ext, state}: sock_diag enrichment (what it asks the kernel for)
  skops     {cgroupPath, programPath, debugMode, strategy}: eBPF sock_ops enrichment
"""

from __future__ import annotations

from typing import Optional

import msgspec

__all__ = ["EnrichersConfig", "NetlinkEnricherConfig", "SkopsEnricherConfig"]


class NetlinkEnricherConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """flowd-go's sock_diag request fields, as it sent them: `protocol` the sockets' protocol
    (6, TCP: the samples are tcp_info), `ext` the INET_DIAG extensions asked for (bits 1<<(n-1):
    MEMINFO 1, INFO 2, VEGASINFO 4, CONG 8, TOS 16, TCLASS 32, SKMEMINFO 64, SHUTDOWN 128; what
    comes back shows in `full` enrichment), `state` the TCP states sampled (bit 1<<state; 3071 =
    every state but LISTEN)."""

    protocol: int = 6
    ext: int = 255
    state: int = 3071

    def __post_init__(self) -> None:
        if self.protocol != 6:
            raise ValueError(f"protocol {self.protocol}: expected 6 (TCP): the samples are TCP's tcp_info, which "
                             "no other protocol has")
        if not 0 <= self.ext <= 255:
            raise ValueError(f"ext {self.ext}: expected a bit mask 0..255 of INET_DIAG extensions")
        if not 0 < self.state <= 0xFFF:
            raise ValueError(f"state {self.state}: expected a bit mask 1..4095 of TCP states (1 << state)")


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
