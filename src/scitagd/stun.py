# SPDX-License-Identifier: Apache-2.0
"""This host's public address as others see it, for hosts behind NAT: a STUN Binding Request
(RFC 5389: XOR-MAPPED-ADDRESS, IPv4 and IPv6) or an HTTP "what is my IP" echo, each sent from
one chosen local address. Used by `backends.firefly.stun` (sinks/publicaddr.py) and by
`scitagd stun sample`.

Answers come from the network: every length, type, family and transaction id is checked and a
bad answer is an InputError saying what was wrong, never a traceback or a wrong address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import struct
import zlib
from typing import Any, Optional, Tuple
from urllib.parse import urlsplit

from .errors import InputError

__all__ = [
    "MAGIC_COOKIE",
    "binding_request",
    "hostport",
    "http_echo",
    "other_family",
    "parse_binding_response",
    "parse_echo",
    "stun_query",
]

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST, BINDING_SUCCESS, BINDING_ERROR = 0x0001, 0x0101, 0x0111
ATTR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_OLD = 0x0001, 0x0020, 0x8020
ATTR_ERROR_CODE, ATTR_SOFTWARE, ATTR_FINGERPRINT = 0x0009, 0x8022, 0x8028
HEADER = struct.Struct("!HHI12s")
MAX_MESSAGE = 2048  # what we read of an answer: a Binding response is well under 200 bytes
MAX_ECHO = 4096  # bytes of an HTTP echo's body read
SOFTWARE = b"scitagd"
FINGERPRINT_XOR = 0x5354554E


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def other_family(server: str, local: str) -> bool:
    """Whether `server` (a host, or a URL) is an address literal of the other family than `local`:
    not worth asking from that address. Names are asked (they may have both kinds of records)."""
    host = urlsplit(server).hostname if "//" in server else server
    try:
        return ipaddress.ip_address((host or "").strip("[]")).version != ipaddress.ip_address(local).version
    except ValueError:
        return False


def binding_request(txid: Optional[bytes] = None) -> Tuple[bytes, bytes]:
    """(message, transaction id): a Binding Request with SOFTWARE and FINGERPRINT (RFC 5389 15.5)."""
    txid = txid or os.urandom(12)
    sw = SOFTWARE + b"\0" * (-len(SOFTWARE) % 4)
    attrs = struct.pack("!HH", ATTR_SOFTWARE, len(SOFTWARE)) + sw
    # the length covers the FINGERPRINT attribute (8 bytes) when its CRC is computed
    head = HEADER.pack(BINDING_REQUEST, len(attrs) + 8, MAGIC_COOKIE, txid)
    crc = (zlib.crc32(head + attrs) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + attrs + struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc), txid


def parse_binding_response(data: bytes, txid: bytes) -> Tuple[str, int]:
    """The (address, port) a Binding Success Response reports: XOR-MAPPED-ADDRESS, else the old
    0x8020 form, else MAPPED-ADDRESS (RFC 3489 servers)."""
    if len(data) < HEADER.size:
        raise InputError(f"STUN answer of {len(data)} bytes: shorter than the 20-byte header", "short")
    mtype, length, cookie, tid = HEADER.unpack_from(data)
    if mtype & 0xC000:
        raise InputError(f"not a STUN message: first two bits {mtype >> 14:02b}, expected 00", "not_stun")
    if tid != txid or cookie != MAGIC_COOKIE:
        raise InputError("STUN answer to another request (transaction id or magic cookie differ)", "wrong_txid")
    if length % 4 or HEADER.size + length > len(data):
        raise InputError(f"STUN message length {length}: expected a multiple of 4 within the "
                         f"{len(data) - HEADER.size} bytes received", "bad_length")
    attrs = _attributes(data[HEADER.size:HEADER.size + length])
    if mtype == BINDING_ERROR:
        err = attrs.get(ATTR_ERROR_CODE, b"")
        code = (err[2] & 7) * 100 + err[3] if len(err) >= 4 else 0
        reason = err[4:].decode("utf-8", "replace")[:100] if len(err) > 4 else ""
        raise InputError(f"STUN server answered error {code} {reason!r}".rstrip(), "stun_error")
    if mtype != BINDING_SUCCESS:
        raise InputError(f"STUN message type 0x{mtype:04x}: expected a Binding Success Response (0x0101)",
                         "bad_type")
    for kind in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_OLD, ATTR_MAPPED_ADDRESS):
        value = attrs.get(kind)
        if value is not None:
            return _address(value, txid, xor=kind != ATTR_MAPPED_ADDRESS)
    raise InputError("STUN answer without a (XOR-)MAPPED-ADDRESS", "no_address")


def _attributes(body: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(body):
        atype, alen = struct.unpack_from("!HH", body, pos)
        if pos + 4 + alen > len(body):
            raise InputError(f"STUN attribute 0x{atype:04x} of {alen} bytes runs past the message", "bad_length")
        out.setdefault(atype, body[pos + 4:pos + 4 + alen])  # the first of a kind counts (RFC 5389 15)
        pos += 4 + alen + (-alen % 4)
    return out


def _address(value: bytes, txid: bytes, xor: bool) -> Tuple[str, int]:
    if len(value) < 4:
        raise InputError(f"STUN address attribute of {len(value)} bytes: too short", "bad_address")
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0]
    size = {1: 4, 2: 16}.get(family)
    if size is None or len(value) != 4 + size:
        raise InputError(f"STUN address attribute: family {family} in {len(value)} bytes, expected 1 (IPv4, 8 "
                         "bytes) or 2 (IPv6, 20 bytes)", "bad_address")
    raw = value[4:]
    if xor:
        port ^= MAGIC_COOKIE >> 16
        mask = struct.pack("!I", MAGIC_COOKIE) + txid
        raw = bytes(a ^ b for a, b in zip(raw, mask))
    return str(ipaddress.ip_address(raw)), port


class _Stun(asyncio.DatagramProtocol):
    def __init__(self, txid: bytes) -> None:
        self.txid = txid
        self.done: asyncio.Future[Tuple[str, int]] = asyncio.get_running_loop().create_future()
        self.last_error: Optional[str] = None

    def datagram_received(self, data: bytes, addr: Tuple[Any, ...]) -> None:
        if self.done.done():
            return
        try:
            self.done.set_result(parse_binding_response(data[:MAX_MESSAGE], self.txid))
        except InputError as e:
            if e.reason == "stun_error":
                self.done.set_exception(e)
            else:
                self.last_error = str(e)  # a stray datagram: keep waiting for the real answer

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def stun_query(server: Tuple[str, int], local: str, timeout: float = 5.0) -> Tuple[str, int]:
    """Ask `server` (host, port) from `local` (an address of this host, port chosen by the
    kernel); retransmitted after 0.5, 1.5, 3.5 s (RFC 5389 7.2.1) within `timeout`."""
    loop = asyncio.get_running_loop()
    fam = socket.AF_INET6 if ":" in local else socket.AF_INET
    infos = await loop.getaddrinfo(server[0], server[1], family=fam, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{server[0]}: no {'IPv6' if fam == socket.AF_INET6 else 'IPv4'} address")
    dest = infos[0][4]
    msg, txid = binding_request()
    transport, proto = await loop.create_datagram_endpoint(lambda: _Stun(txid), local_addr=(local, 0), family=fam)
    try:
        deadline = loop.time() + timeout
        wait = 0.5
        while True:
            transport.sendto(msg, dest)
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                return await asyncio.wait_for(asyncio.shield(proto.done), min(wait, left))
            except asyncio.TimeoutError:
                wait *= 2
        detail = f" (last: {proto.last_error})" if proto.last_error else ""
        raise TimeoutError(f"no answer from {server[0]}:{server[1]} within {timeout:g}s{detail}")
    finally:
        transport.close()


def parse_echo(body: bytes) -> str:
    """An echo service's answer: JSON with `ip` (ipify, ipconfig.io) or the bare address."""
    text = body[:MAX_ECHO].decode("utf-8", "replace").strip()
    candidate = text
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise InputError(f"echo answer is not JSON: {text[:60]!r}", "bad_echo") from None
        ip = doc.get("ip") if isinstance(doc, dict) else None
        if not isinstance(ip, str):
            raise InputError(f"echo answer has no \"ip\" string: {text[:60]!r}", "bad_echo")
        candidate = ip
    try:
        return str(ipaddress.ip_address(candidate.strip()))
    except ValueError:
        raise InputError(f"echo answer is not an IP address: {candidate[:60]!r}", "bad_echo") from None


def http_echo(url: str, local: str, timeout: float = 5.0) -> str:
    """Blocking (run it in an executor): GET `url` from the local address `local`."""
    import http.client
    import ssl

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r}: expected an http:// or https:// URL")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, source_address=(local, 0),
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout, source_address=(local, 0))
    try:
        conn.request("GET", path, headers={"Accept": "application/json, text/plain", "User-Agent": "scitagd"})
        r = conn.getresponse()
        body = r.read(MAX_ECHO)
        if r.status != 200:
            raise InputError(f"echo answered HTTP {r.status}", "bad_echo")
        return parse_echo(body)
    finally:
        conn.close()
