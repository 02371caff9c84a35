# SPDX-License-Identifier: Apache-2.0
"""A small pcap reader for the tests (classic pcap, Ethernet link type): no new dependency.

The truth side is parsed here independently of scitagd.flowexport.packet, so a decoder bug
cannot cancel itself out.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Iterator, List, NamedTuple, Tuple

from ..conftest import SHARED

DATA = SHARED / "data" / "flowexport"


def frames(path: str | Path) -> Iterator[Tuple[float, bytes]]:
    data = Path(path).read_bytes()
    magic = data[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        e, scale = "<", 1e-6
    elif magic == b"\xa1\xb2\xc3\xd4":
        e, scale = ">", 1e-6
    elif magic == b"\x4d\x3c\xb2\xa1":
        e, scale = "<", 1e-9
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    linktype = struct.unpack_from(e + "I", data, 20)[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet (1)")
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(e + "IIII", data, off)
        off += 16
        yield sec + frac * scale, data[off:off + incl]
        off += incl


def udp_payloads(path: str | Path) -> Iterator[Tuple[str, int, bytes, float]]:
    """(source address, destination port, payload, time) of each UDP datagram in the capture."""
    for ts, f in frames(path):
        etype = struct.unpack_from("!H", f, 12)[0]
        if etype == 0x86DD:
            if f[20] != 17:
                continue
            src = socket.inet_ntop(socket.AF_INET6, f[22:38])
            off = 54
        elif etype == 0x0800:
            ihl = (f[14] & 15) * 4
            if f[23] != 17:
                continue
            src = socket.inet_ntop(socket.AF_INET, f[26:30])
            off = 14 + ihl
        else:
            continue
        dport, ulen = struct.unpack_from("!HH", f, off + 2)
        yield src, dport, f[off + 8:off + ulen], ts


class TruthPacket(NamedTuple):
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    label: int
    frame_len: int


def truth(path: str | Path) -> List[TruthPacket]:
    """Every IPv6 TCP/UDP packet on the exporter's link (no extension headers in these captures)."""
    out = []
    for _, f in frames(path):
        if struct.unpack_from("!H", f, 12)[0] != 0x86DD:
            continue
        label = struct.unpack_from("!I", f, 14)[0] & 0xFFFFF
        nh = f[20]
        if nh not in (6, 17):
            continue
        sport, dport = struct.unpack_from("!HH", f, 54)
        out.append(TruthPacket(socket.inet_ntop(socket.AF_INET6, f[22:38]),
                               socket.inet_ntop(socket.AF_INET6, f[38:54]), nh, sport, dport, label, len(f)))
    return out
