# SPDX-License-Identifier: Apache-2.0
"""Message builders for handwritten cases: IPFIX, NetFlow v9, sFlow v5, sampled packets."""

from __future__ import annotations

import socket
import struct
from typing import List, Sequence, Tuple, Union

FieldSpec = Union[Tuple[int, int], Tuple[int, int, int]]  # (ie, length[, enterprise])


def ipfix(sets: Sequence[bytes], odid: int = 1, seq: int = 0, export_time: int = 1_700_000_000) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_time, seq, odid) + body


def set_(sid: int, body: bytes) -> bytes:
    return struct.pack("!HH", sid, 4 + len(body)) + body


def fields(spec: Sequence[FieldSpec]) -> bytes:
    out = b""
    for f in spec:
        if len(f) == 3:
            out += struct.pack("!HHI", f[0] | 0x8000, f[1], f[2])
        else:
            out += struct.pack("!HH", f[0], f[1])
    return out


def template(tid: int, spec: Sequence[FieldSpec]) -> bytes:
    return struct.pack("!HH", tid, len(spec)) + fields(spec)


def options_template(tid: int, scope: int, spec: Sequence[FieldSpec]) -> bytes:
    return struct.pack("!HHH", tid, len(spec), scope) + fields(spec)


def varlen(value: bytes) -> bytes:
    if len(value) < 255:
        return bytes([len(value)]) + value
    return b"\xff" + struct.pack("!H", len(value)) + value


def ip6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def ip4(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, a)


# A flow template like OVS's, shortened: direction, ingress, proto, src6, dst6, label, ports, counts
FLOW6 = [(61, 1), (10, 4), (4, 1), (27, 16), (28, 16), (31, 4), (7, 2), (11, 2), (1, 8), (2, 8)]


def flow6(direction: int, ingress: int, proto: int, src: str, dst: str, label: int, sport: int, dport: int,
          octets: int, packets: int) -> bytes:
    return struct.pack("!BIB16s16sIHHQQ", direction, ingress, proto, ip6(src), ip6(dst), label, sport, dport,
                       octets, packets)


def v9(flowsets: Sequence[bytes], source_id: int = 0, seq: int = 0, secs: int = 1_700_000_000,
       count: int = 0) -> bytes:
    return struct.pack("!HHIIII", 9, count, 1000, secs, seq, source_id) + b"".join(flowsets)


def v9_options_template(tid: int, scope: Sequence[Tuple[int, int]], opts: Sequence[Tuple[int, int]]) -> bytes:
    return (struct.pack("!HHH", tid, 4 * len(scope), 4 * len(opts)) + fields(list(scope)) + fields(list(opts)))


def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def sflow(samples: Sequence[bytes], agent: str = "192.0.2.1", sub_agent: int = 0, seq: int = 1) -> bytes:
    a = struct.pack("!I", 2) + ip6(agent) if ":" in agent else struct.pack("!I", 1) + ip4(agent)
    return struct.pack("!I", 5) + a + struct.pack("!IIII", sub_agent, seq, 1000, len(samples)) + b"".join(samples)


def raw_header(header: bytes, frame_len: int, proto: int = 1, stripped: int = 4) -> bytes:
    body = struct.pack("!IIII", proto, frame_len, stripped, len(header)) + pad4(header)
    return struct.pack("!II", 1, len(body)) + body


def flow_sample(records: List[bytes], rate: int = 1, source_index: int = 3, inp: int = 3, out: int = 4,
                expanded: bool = False) -> bytes:
    if expanded:
        body = struct.pack("!IIIIIIIIIII", 1, 0, source_index, rate, 100, 0, 0, inp, 0, out, len(records))
    else:
        body = struct.pack("!IIIIIIII", 1, source_index, rate, 100, 0, inp, out, len(records))
    body += b"".join(records)
    return struct.pack("!II", 3 if expanded else 1, len(body)) + body


def counter_sample() -> bytes:
    body = struct.pack("!III", 1, 3, 0)
    return struct.pack("!II", 2, len(body)) + body


def eth_ipv6(src: str, dst: str, label: int, proto: int = 17, sport: int = 40000, dport: int = 5001,
             payload: int = 100, ext: bytes = b"", first_nh: int | None = None, vlan: int | None = None) -> bytes:
    """Ethernet (+802.1Q) + IPv6 (+extension headers) + 8 bytes of TCP/UDP ports."""
    nh = proto if first_nh is None else first_nh
    l4 = struct.pack("!HHI", sport, dport, 0)
    plen = len(ext) + 8 + payload
    ip = struct.pack("!IHBB16s16s", 6 << 28 | label, plen, nh, 64, ip6(src), ip6(dst)) + ext + l4
    eth = b"\x02" * 6 + b"\x04" * 6
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, vlan)
    return eth + struct.pack("!H", 0x86DD) + ip


def eth_ipv4(src: str, dst: str, proto: int = 6, sport: int = 40000, dport: int = 443, payload: int = 100) -> bytes:
    total = 20 + 8 + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0, ip4(src), ip4(dst))
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", 0x0800) + ip + struct.pack("!HHI", sport, dport, 0)
