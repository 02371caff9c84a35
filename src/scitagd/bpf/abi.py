# SPDX-License-Identifier: Apache-2.0
"""The one Python mirror of the structs user space shares with the kernel programs
(scitags.bpf.h, marker.bpf.c, watcher.bpf.c). tests/marker/test_abi.py checks every layout
here, size and member offsets, against the BTF in the shipped objects, so the C and the Python
cannot drift apart unnoticed.

Layouts are native byte order without padding (`=`): the C structs are laid out to need none.
"""

from __future__ import annotations

import socket
import struct
from typing import Dict, List, Tuple

__all__ = [
    "CONFIG", "COUNT_KEY", "COUNT_VAL", "EVENT", "FLOW_KEY", "FLOW_TAG", "LAYOUTS", "NET_KEY", "PROTO",
    "PROTO_NAME", "RULE", "RULE_NET_KEY", "RULE_TAG", "U32", "U64", "WCFG", "Layout", "flow_key", "unpack_flow_key",
]


class Layout:
    """A C struct as (member, struct format) pairs; `.pack`/`.unpack` skip `x` padding."""

    def __init__(self, c_name: str, members: List[Tuple[str, str]]) -> None:
        self.c_name = c_name
        self.members = members
        self.struct = struct.Struct("=" + "".join(fmt for _, fmt in members))
        self.size = self.struct.size
        self.offsets: Dict[str, int] = {}
        off = 0
        for name, fmt in members:
            self.offsets[name] = off
            off += struct.calcsize("=" + fmt)
        self.pack = self.struct.pack
        self.unpack = self.struct.unpack
        self.unpack_from = self.struct.unpack_from


# scitags.bpf.h: the marker's flow map, which the watcher writes into too
FLOW_KEY = Layout("flow_key", [("saddr", "16s"), ("daddr", "16s"), ("sport", "H"), ("dport", "H"),
                               ("proto", "B"), ("pad", "3x")])
FLOW_TAG = Layout("flow_tag", [("label", "I"), ("exp", "H"), ("act", "B"), ("flags", "B")])
# marker.bpf.c
CONFIG = Layout("config", [("strategy", "I"), ("match_all", "I"), ("match_label", "I"), ("match_exp", "H"),
                           ("match_act", "B"), ("pad", "x")])
COUNT_KEY = Layout("count_key", [("ifindex", "I"), ("exp", "H"), ("act", "B"), ("pad", "x")])
COUNT_VAL = Layout("count_val", [("packets", "Q"), ("bytes", "Q")])
# watcher.bpf.c
RULE = Layout("rule", [("lport_lo", "H"), ("lport_hi", "H"), ("rport_lo", "H"), ("rport_hi", "H"), ("exp", "H"),
                       ("act", "B"), ("used", "B"), ("tags_first", "H"), ("tags_count", "H"), ("next", "I")])
RULE_TAG = Layout("rule_tag", [("exp", "H"), ("act", "B"), ("pad", "x")])
NET_KEY = Layout("net_key", [("prefixlen", "I"), ("addr", "16s")])
RULE_NET_KEY = Layout("rule_net_key", [("prefixlen", "I"), ("rule", "I"), ("addr", "16s")])
EVENT = Layout("event", [("type", "B"), ("family", "B"), ("matched", "B"), ("act", "B"), ("exp", "H"),
                         ("lport", "H"), ("rport", "H"), ("pad", "2x"), ("label", "I"), ("laddr", "16s"),
                         ("raddr", "16s"), ("bytes_acked", "Q"), ("bytes_received", "Q"), ("srtt_us", "I"),
                         ("total_retrans", "I"), ("snd_cwnd", "I"), ("mss", "I"), ("rtt_min", "I"),
                         ("pad2", "4x")])
WCFG = Layout("wcfg", [("period_ns", "Q"), ("sample", "I"), ("pad", "4x")])

LAYOUTS = [FLOW_KEY, FLOW_TAG, CONFIG, COUNT_KEY, COUNT_VAL, RULE, RULE_TAG, NET_KEY, RULE_NET_KEY, EVENT, WCFG]

U32 = struct.Struct("=I")  # array map keys, rule indexes
U64 = struct.Struct("=Q")  # per-CPU counters

PROTO = {"tcp": 6, "udp": 17}
PROTO_NAME = {6: "tcp", 17: "udp"}


def flow_key(protocol: str, src: str, sport: int, dst: str, dport: int) -> bytes:
    """struct flow_key: IPv6 addresses, or IPv4 in the first 4 bytes of each."""
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    return FLOW_KEY.pack(socket.inet_pton(fam, src), socket.inet_pton(fam, dst), sport, dport, PROTO[protocol])


def unpack_flow_key(raw: bytes, family: int = socket.AF_INET6) -> Tuple[str, str, int, str, int]:
    s, d, sp, dp, proto = FLOW_KEY.unpack(raw)
    n = 16 if family == socket.AF_INET6 else 4
    return (PROTO_NAME.get(proto, str(proto)), socket.inet_ntop(family, s[:n]), sp,
            socket.inet_ntop(family, d[:n]), dp)
