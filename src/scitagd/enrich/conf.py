# SPDX-License-Identifier: Apache-2.0
"""`enrichers` config (flowd-go's keys); each struct's `Keys:` block documents its keys."""

from __future__ import annotations

from typing import Optional

import msgspec

__all__ = ["EnrichersConfig", "NetlinkEnricherConfig", "SkopsEnricherConfig"]


class NetlinkEnricherConfig(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`enrichers.netlink`: tcp_info of every active TCP flow each period, through exact sock_diag
    lookups. flowd-go's request fields, honoured.

    Keys:
      protocol: the sockets' protocol; 6 (TCP) only: the samples are tcp_info, which no other
        protocol has.
      ext: the INET_DIAG extensions asked for, a bit mask (1 << (n - 1)): MEMINFO 1, INFO 2,
        VEGASINFO 4, CONG 8, TOS 16, TCLASS 32, SKMEMINFO 64, SHUTDOWN 128; without INFO no tcp_info
        comes back; what comes back shows in `full` enrichment.
      state: the TCP states sampled, a bit mask (1 << state); 3071 is every state but LISTEN.
    """

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
    """`enrichers.skops`: samples from the watcher's sock_ops program on RTT callbacks, rate-limited
    per socket in the kernel.

    Keys:
      cgroupPath: cgroup v2 directory the sock_ops program attaches to.
      programPath: a site's build of scitagd's watcher.bpf.c (the samples come from the watcher's
        program), checked before loading; flowd-go's skops objects are refused.
      debugMode: load the watcher's debug build: its decisions in the kernel's trace buffer.
      strategy: flowd-go's poll (samples on RTT callbacks, at most one per period and socket);
        transition is not implemented (a warning at start says so).
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
