# SPDX-License-Identifier: Apache-2.0
"""A sampled packet's header (sFlow raw header, PSAMP section): Ethernet, VLAN, IPv6, IPv4.

Sampled headers are cut (sFlow's default is 128 bytes), so the IP header is required and the
rest is best effort: ports are 0 when the cut falls before them. IPv6 extension headers are
walked (at most 8) and a Hop-by-Hop or Destination Options header's option 0x1E gives the
SciTags tag directly (SPEC.md section 3): `[0x1E][3][exp hi][exp lo][act]`.
"""

from __future__ import annotations

import struct
from typing import Optional, Tuple

import msgspec

from ..errors import InputError
from ..tags import EXT_OPTION_TYPE, NEXT_HEADER_DESTINATION, NEXT_HEADER_HOP_BY_HOP

__all__ = ["Packet", "PacketError", "parse_ethernet", "parse_ip"]

ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ, ETH_VLAN_OLD = 0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100
_EXT_HEADERS = frozenset({0, 43, 44, 51, 60, 135, 139, 140})  # walked to find TCP/UDP
_MAX_EXT_HEADERS = 8
_MAX_VLAN_TAGS = 2
_IP6 = struct.Struct("!IHBx16s16s")
_IP4 = struct.Struct("!BxHxxHxB2x4s4s")
_U16 = struct.Struct("!H")
_PORTS = struct.Struct("!HH")


class PacketError(InputError):
    """A sampled header that is not a parseable IP packet; `reason` is a stable key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, reason)


class Packet(msgspec.Struct, gc=False):
    family: int
    src: bytes
    dst: bytes
    protocol: int  # the transport protocol after extension headers
    sport: int
    dport: int
    flow_label: Optional[int]
    ext_tag: Optional[Tuple[int, int]]  # (experiment, activity) from option 0x1E
    ext_via: str  # "hbh" or "dst" when ext_tag is set
    ip_length: int  # IPv4 total length / IPv6 40 + payload length, from the header
    l2_length: int  # bytes before the IP header (0 for an IP section)


def parse_ethernet(data: bytes | memoryview) -> Optional[Packet]:
    """None for frames that do not carry IP (ARP, LLDP, ...); PacketError when cut or bad."""
    n = len(data)
    if n < 14:
        raise PacketError("truncated", f"Ethernet header is {n} bytes: expected >= 14")
    (etype,) = _U16.unpack_from(data, 12)
    off = 14
    tags = 0
    while etype in (ETH_VLAN, ETH_QINQ, ETH_VLAN_OLD):
        tags += 1
        if tags > _MAX_VLAN_TAGS:
            raise PacketError("bad_header", f"more than {_MAX_VLAN_TAGS} VLAN tags")
        if n < off + 4:
            raise PacketError("truncated", f"VLAN tag cut at byte {n}")
        (etype,) = _U16.unpack_from(data, off + 2)
        off += 4
    if etype == ETH_IPV6:
        return _parse_ipv6(data, off)
    if etype == ETH_IPV4:
        return _parse_ipv4(data, off)
    return None


def parse_ip(data: bytes | memoryview) -> Packet:
    """An IP header section (PSAMP ipHeaderPacketSection, sFlow header protocol 11/12)."""
    if not data:
        raise PacketError("truncated", "IP header section is empty")
    v = data[0] >> 4
    if v == 6:
        return _parse_ipv6(data, 0)
    if v == 4:
        return _parse_ipv4(data, 0)
    raise PacketError("bad_header", f"IP version {v}: expected 4 or 6")


def _ports(data: bytes | memoryview, off: int, proto: int) -> Tuple[int, int]:
    if proto in (6, 17, 132, 136) and len(data) >= off + 4:
        sport, dport = _PORTS.unpack_from(data, off)
        return sport, dport
    return 0, 0


def _parse_ipv6(data: bytes | memoryview, off: int) -> Packet:
    n = len(data)
    if n < off + 40:
        raise PacketError("truncated", f"IPv6 header cut at byte {n - off} of 40")
    vtcfl, plen, nh, src, dst = _IP6.unpack_from(data, off)
    if vtcfl >> 28 != 6:
        raise PacketError("bad_header", f"IPv6 header with version {vtcfl >> 28}")
    label = vtcfl & 0xFFFFF
    l2 = off
    off += 40
    ext_tag: Optional[Tuple[int, int]] = None
    via = ""
    fragment_tail = False
    for _ in range(_MAX_EXT_HEADERS if nh in _EXT_HEADERS else 0):
        if nh not in _EXT_HEADERS or n < off + 8:
            break
        if nh == 44:  # fragment header: 8 bytes; only the first fragment has ports
            fragment_tail = (data[off + 2] << 8 | data[off + 3]) & 0xFFF8 != 0
            hlen = 8
        elif nh == 51:  # AH: length in 4-byte units, minus 2
            hlen = (data[off + 1] + 2) * 4
        else:
            hlen = (data[off + 1] + 1) * 8
        if nh in (NEXT_HEADER_HOP_BY_HOP, NEXT_HEADER_DESTINATION) and ext_tag is None:
            ext_tag = _find_option(data, off + 2, min(off + hlen, n))
            if ext_tag is not None:
                via = "hbh" if nh == NEXT_HEADER_HOP_BY_HOP else "dst"
        nh = data[off]
        off += hlen
    sport, dport = (0, 0) if fragment_tail else _ports(data, off, nh)
    return Packet(6, src, dst, nh, sport, dport, label, ext_tag, via, 40 + plen, l2)


def _find_option(data: bytes | memoryview, off: int, end: int) -> Optional[Tuple[int, int]]:
    while off < end:
        otype = data[off]
        if otype == 0:  # Pad1
            off += 1
            continue
        if off + 1 >= end:
            return None
        olen = data[off + 1]
        if otype == EXT_OPTION_TYPE and olen == 3 and off + 5 <= end:
            return (data[off + 2] << 8 | data[off + 3], data[off + 4])
        off += 2 + olen
    return None


def _parse_ipv4(data: bytes | memoryview, off: int) -> Packet:
    n = len(data)
    if n < off + 20:
        raise PacketError("truncated", f"IPv4 header cut at byte {n - off} of 20")
    vihl, total, frag_off, proto, src, dst = _IP4.unpack_from(data, off)
    if vihl >> 4 != 4:
        raise PacketError("bad_header", f"IPv4 header with version {vihl >> 4}")
    ihl = (vihl & 0x0F) * 4
    if ihl < 20:
        raise PacketError("bad_header", f"IPv4 header length {ihl}: expected >= 20")
    frag_off &= 0x1FFF
    sport, dport = (0, 0) if frag_off else _ports(data, off + ihl, proto)
    return Packet(4, src, dst, proto, sport, dport, None, None, "", total, off)
