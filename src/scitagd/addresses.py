# SPDX-License-Identifier: Apache-2.0
"""This host's addresses, from one RTM_GETADDR netlink dump.

Hand-written (~0.2 ms) rather than pyroute2's IPRoute: importing pyroute2 alone costs ~240 ms of
the daemon's start-up (measured with -X importtime), and this is all it was used for there.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
from typing import List, Set, Tuple

__all__ = ["LocalAddresses", "dump_addresses", "interface_addresses"]

log = logging.getLogger("scitagd.daemon")

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
NLMSG = struct.Struct("=IHHII")
IFADDRMSG = struct.Struct("=BBBBI")
RTA = struct.Struct("=HH")


def dump_addresses() -> Set[str]:
    """Every address on every interface of this network namespace, canonical text form."""
    return {addr for _ifindex, addr in interface_addresses()}


def interface_addresses() -> List[Tuple[int, str]]:
    """(interface index, address) of every address of this network namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as s:
        body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        s.send(NLMSG.pack(NLMSG.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        out: List[Tuple[int, str]] = []
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + NLMSG.size <= len(data):
                length, mtype, _flags, _seq, _pid = NLMSG.unpack_from(data, off)
                if length < NLMSG.size:
                    return out
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + NLMSG.size)[0]
                    if err:
                        raise OSError(err, f"RTM_GETADDR: {os.strerror(err)}")
                elif mtype == RTM_NEWADDR:
                    fam = data[off + NLMSG.size]
                    ifindex = IFADDRMSG.unpack_from(data, off + NLMSG.size)[4]
                    pos = off + NLMSG.size + IFADDRMSG.size
                    end = off + length
                    attrs = {}
                    while pos + RTA.size <= end:
                        alen, atype = RTA.unpack_from(data, pos)
                        if alen < RTA.size:
                            break
                        attrs[atype] = data[pos + RTA.size:pos + alen]
                        pos += (alen + 3) & ~3
                    # IFA_LOCAL is this end where both are given (point-to-point: IFA_ADDRESS is the peer)
                    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS, b""))
                    if fam == socket.AF_INET and len(raw) == 4:
                        out.append((ifindex, socket.inet_ntop(socket.AF_INET, raw)))
                    elif fam == socket.AF_INET6 and len(raw) == 16:
                        out.append((ifindex, ipaddress.IPv6Address(raw).compressed))
                off += (length + 3) & ~3


class LocalAddresses:
    """This host's addresses, refreshed in the background (interfaces come and go)."""

    def __init__(self) -> None:
        self.addrs: Set[str] = {"127.0.0.1", "::1"}

    def refresh(self) -> None:
        try:
            found = dump_addresses()
        except OSError as e:  # netlink unavailable (some containers): keep what we had
            log.warning("local addresses not refreshed error=%r", str(e))
            return
        self.addrs = found | {"127.0.0.1", "::1"}

    def __contains__(self, ip: str) -> bool:
        return ip in self.addrs or ip.startswith("127.")
