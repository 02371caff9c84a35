# SPDX-License-Identifier: Apache-2.0
"""Address helpers shared by config sections and sockets."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import re
import socket
from typing import Callable, Dict, Iterable, Iterator, NamedTuple, Optional, Tuple, TypeVar, Union

__all__ = [
    "UdpSocket",
    "bind_error",
    "check_bind_address",
    "check_host",
    "check_networks",
    "check_port",
    "drops_of",
    "family_of",
    "open_udp_endpoint",
    "parse_hostport",
    "set_receive_buffer",
    "socket_drops",
    "udp_listener",
    "udp_table",
]

log = logging.getLogger("scitagd.net")

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
P = TypeVar("P", bound=asyncio.BaseProtocol)

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.?)+$")


def check_port(key: str, port: int, allow_zero: bool = False) -> None:
    lo = 0 if allow_zero else 1
    if not lo <= port <= 65535:
        raise ValueError(f"{key} {port}: expected a port {lo}..65535")


def check_bind_address(key: str, addr: str) -> None:
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{key} {addr!r}: expected an IPv4 or IPv6 address") from None


def check_networks(key: str, cidrs: Iterable[str]) -> None:
    for c in cidrs:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise ValueError(f"{key} {c!r}: expected a CIDR like 192.0.2.0/24") from None


def check_host(key: str, host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise ValueError(f"{key} {host!r}: expected a hostname or an IP address")


def parse_hostport(key: str, text: str, default_port: int | None = None) -> Tuple[str, int]:
    """'host:port', '[v6]:port', a bare IPv4/hostname or bracketed v6 with a default port."""
    m = re.match(r"^\[([^\]]+)\](?::(\d+))?$", text)
    if m:
        host, port_s = m.group(1), m.group(2)
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"{key} {text!r}: brackets are for IPv6 addresses") from None
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    elif text.count(":") > 1:
        raise ValueError(f"{key} {text!r}: put an IPv6 address in brackets, e.g. [2001:db8::1]:10514")
    else:
        host, port_s = text, None
    if port_s is None:
        if default_port is None:
            raise ValueError(f"{key} {text!r}: expected host:port")
        port = default_port
    else:
        if not port_s.isdigit():
            raise ValueError(f"{key} {text!r}: port {port_s!r} is not a number")
        port = int(port_s)
    check_port(key, port)
    check_host(key, host)
    return host, port


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def udp_listener(addr: str, port: int, receive_buffer: int, key: str = "bindPort",
                 reuse_port: bool = False, buffer_key: str = "receiveBuffer") -> socket.socket:
    """A non-blocking UDP socket bound to addr:port; "::" also takes IPv4 (dual stack).

    No SO_REUSEADDR: with it, another (unprivileged) process could bind the same port on a more
    specific address and take our datagrams, and a second instance would silently share the
    port. A port in use is an error naming `key`. SO_REUSEPORT only when the caller asks (several
    sockets of one service spreading the load); Linux then still refuses a socket of another
    user on that port.
    """
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6 and addr == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        set_receive_buffer(sock, receive_buffer, buffer_key, _where(addr, port))
        try:
            sock.bind((addr, port))
        except OSError as e:
            raise bind_error(e, key, port, f"UDP {_where(addr, port)}") from None
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def open_udp_endpoint(loop: asyncio.AbstractEventLoop, factory: Callable[[], P],
                            sock: socket.socket) -> Tuple[asyncio.DatagramTransport, P]:
    """`loop.create_datagram_endpoint` on a socket from `udp_listener`, keeping it exclusive:
    uvloop adopts the socket with libuv's uv_udp_open, which turns SO_REUSEADDR on (so another
    socket with the option could then bind the port beside ours); it is turned off again here.
    The option counts when another socket binds, so clearing it afterwards is enough."""
    tr, proto = await loop.create_datagram_endpoint(factory, sock=sock)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    except OSError:
        tr.close()
        raise
    return tr, proto


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def set_receive_buffer(sock: socket.socket, want: int, key: str = "receiveBuffer", where: str = "") -> int:
    """Ask for `want` bytes of receive buffer: past net.core.rmem_max where we may
    (SO_RCVBUFFORCE, with CAP_NET_ADMIN), else as much as the kernel allows. Logs what it got,
    and warns (with the sysctl to set) when the kernel capped it: bursts beyond the buffer are
    dropped by the kernel, and only the drop counters say so."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)
        forced = True
    except OSError:
        forced = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
        except OSError:
            pass
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # the kernel reports twice what it grants
    if got < want:
        rmem = _read_int("/proc/sys/net/core/rmem_max")
        log.warning("udp receive buffer capped by the kernel listener=%s key=%s asked=%d got=%d rmem_max=%s fix=%r",
                    where, key, want, got, rmem, f"sysctl -w net.core.rmem_max={want} (or give scitagd CAP_NET_ADMIN)")
    else:
        log.info("udp receive buffer listener=%s bytes=%d forced=%s", where, got, forced)
    return got


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class UdpSocket(NamedTuple):
    port: int  # local
    inode: int
    queued: int  # bytes in the receive queue
    drops: int  # datagrams the kernel dropped, receive buffer full


def udp_table() -> Iterator[UdpSocket]:
    """Each UDP socket in this network namespace, from /proc/net/udp and udp6; a file that
    cannot be read, or a line that cannot be parsed, is skipped."""
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 13:
                continue
            try:
                yield UdpSocket(int(cols[1].rsplit(":", 1)[1], 16), int(cols[9]),
                                int(cols[4].split(":")[1], 16), int(cols[-1]))
            except (ValueError, IndexError):
                continue


def socket_drops(inodes: Iterable[int]) -> Dict[int, int]:
    """inode -> datagrams the kernel dropped for that socket (receive buffer full)."""
    want = set(inodes)
    return {u.inode: u.drops for u in udp_table() if u.inode in want}


def drops_of(socks: Iterable[socket.socket]) -> int:
    """Kernel drops of these sockets since they were opened."""
    inodes = [os.fstat(s.fileno()).st_ino for s in socks if s.fileno() >= 0]
    return sum(socket_drops(inodes).values()) if inodes else 0


def _where(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def bind_error(e: OSError, key: str, port: int, what: str) -> OSError:
    """An OSError whose text names the config key and says what to do; `errno` is kept."""
    if e.errno == errno.EADDRINUSE:
        text = (f"{key} {port}: {what}: address in use (another process, or another scitagd, is bound "
                "to it; a dual-stack \"::\" also holds the port on IPv4)")
    elif e.errno == errno.EACCES:
        text = f"{key} {port}: {what}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    else:
        text = f"{key} {port}: {what}: cannot bind: {e.strerror or e}"
    err = OSError(text)
    err.errno = e.errno
    return err
