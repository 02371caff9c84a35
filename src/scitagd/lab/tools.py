# SPDX-License-Identifier: Apache-2.0
"""Small network tools for namespace labs (tests, demo, benchmarks): `python -m scitagd.lab.tools ...`
and the parser for what `capture` records. Standard library only.

  capture IFACE FILE            AF_PACKET capture of IPv6 frames (with VLAN auxdata) until SIGTERM
  tcp-server ADDR PORT          accept one connection, print received bytes and sha256 as JSON
  tcp-client ADDR PORT SPORT NBYTES [--tclass N] [--seed S]
  udp-send ADDR PORT SPORT COUNT PHASE [--tclass N]
  http-echo ADDR PORT           answer every GET with {"ip": the caller's address} until SIGTERM
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

__all__ = [
    "AUX",
    "ETH_P_ALL",
    "PACKET_AUXDATA",
    "SOL_PACKET",
    "TP_STATUS_VLAN_VALID",
    "Packet",
    "capture",
    "http_echo",
    "inject_vlan",
    "main",
    "parse_frame",
    "parse_ipv6",
    "read_capture",
    "tcp_client",
    "tcp_server",
    "tun_read",
    "udp_recv",
    "udp_send",
    "vlan_frame",
]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
AUX = struct.Struct("=IIIHHHH")


def capture(iface: str, path: str) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((iface, 0))
    stop = [False]

    def on_term(*_: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    s.settimeout(0.2)
    with open(path, "wb") as out:
        out.write(b"ready\n")
        out.flush()
        while not stop[0]:
            try:
                data, anc, _flags, addr = s.recvmsg(262144, socket.CMSG_SPACE(AUX.size))
            except socket.timeout:
                continue
            except InterruptedError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            tci = 0xFFFF
            for level, typ, cdata in anc:
                if level == SOL_PACKET and typ == PACKET_AUXDATA and len(cdata) >= AUX.size:
                    status, _l, _s, _m, _n, vtci, _tpid = AUX.unpack(cdata[:AUX.size])
                    if status & TP_STATUS_VLAN_VALID:
                        tci = vtci
            out.write(struct.pack("=IH", len(data), tci) + data)
        out.flush()


@dataclass
class Packet:
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    label: int
    tclass: int
    payload_len: int  # IPv6 payload length field
    vlan: Optional[int]  # VLAN id, from an in-band tag or the capture's auxdata
    exts: List[Tuple[int, int, int, int, int]] = field(default_factory=list)  # type, hlen, opt, exp, act
    l4_payload: bytes = b""


def read_capture(path: str) -> Iterator[Packet]:
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(b"ready\n"), "capture did not start"
    i = 6
    while i + 6 <= len(data):
        n, tci = struct.unpack_from("=IH", data, i)
        frame = data[i + 6:i + 6 + n]
        i += 6 + n
        p = parse_frame(frame, None if tci == 0xFFFF else tci & 0xFFF)
        if p is not None:
            yield p


def parse_frame(frame: bytes, vlan: Optional[int]) -> Optional[Packet]:
    if len(frame) < 14:
        return None
    off = 12
    etype = struct.unpack_from("!H", frame, off)[0]
    if etype in (0x8100, 0x88A8):
        vlan = struct.unpack_from("!H", frame, 14)[0] & 0xFFF
        etype = struct.unpack_from("!H", frame, 16)[0]
        off = 16
    if etype != 0x86DD:
        return None
    return parse_ipv6(frame, off + 2, vlan)


def parse_ipv6(frame: bytes, ip: int = 0, vlan: Optional[int] = None) -> Optional[Packet]:
    """An IPv6 packet starting at `ip` (0 for what an L3 device such as tun carries)."""
    if len(frame) < ip + 40:
        return None
    vtc, plen, nh = struct.unpack_from("!IHB", frame, ip)
    src = socket.inet_ntop(socket.AF_INET6, frame[ip + 8:ip + 24])
    dst = socket.inet_ntop(socket.AF_INET6, frame[ip + 24:ip + 40])
    pos = ip + 40
    exts = []
    while nh in (0, 60) and pos + 8 <= len(frame):
        nxt, hlen = frame[pos], frame[pos + 1]
        opt_type, opt_len = frame[pos + 2], frame[pos + 3]
        exp = act = -1
        if opt_type == 0x1E and opt_len == 3:
            exp = struct.unpack_from("!H", frame, pos + 4)[0]
            act = frame[pos + 6]
        exts.append((nh, hlen, opt_type, exp, act))
        pos += (hlen + 1) * 8
        nh = nxt
    sport = dport = 0
    payload = b""
    if nh in (6, 17) and pos + 4 <= len(frame):
        sport, dport = struct.unpack_from("!HH", frame, pos)
        if nh == 6 and pos + 13 <= len(frame):
            doff = (frame[pos + 12] >> 4) * 4
            payload = frame[pos + doff:]
        elif nh == 17:
            payload = frame[pos + 8:]
    return Packet(src, dst, nh, sport, dport, vtc & 0xFFFFF, (vtc >> 20) & 0xFF, plen, vlan, exts,
                  payload)


def _data(n: int, seed: int) -> Iterator[bytes]:
    rnd = random.Random(seed)
    while n > 0:
        chunk = min(n, 65536)
        yield rnd.randbytes(chunk)
        n -= chunk


def tcp_server(addr: str, port: int) -> None:
    ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    print(json.dumps({"listening": port}), flush=True)
    conn, _ = ls.accept()
    h = hashlib.sha256()
    total = 0
    while True:
        b = conn.recv(1 << 20)
        if not b:
            break
        h.update(b)
        total += len(b)
    conn.close()
    print(json.dumps({"bytes": total, "sha256": h.hexdigest()}), flush=True)


def tcp_client(addr: str, port: int, sport: int, nbytes: int, tclass: int, seed: int) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if tclass:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tclass)
    s.bind(("::", sport))
    s.connect((addr, port))
    h = hashlib.sha256()
    for chunk in _data(nbytes, seed):
        s.sendall(chunk)
        h.update(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    print(json.dumps({"bytes": nbytes, "sha256": h.hexdigest()}), flush=True)


def udp_send(addr: str, port: int, sport: int, count: int, phase: str, tclass: int) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    if tclass:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tclass)
    s.bind(("::", sport))
    for i in range(count):
        s.sendto(f"{phase}:{i}".encode().ljust(200, b"."), (addr, port))
    print(json.dumps({"sent": count}), flush=True)


def udp_recv(addr: str, port: int, count: int, timeout: float) -> None:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    print(json.dumps({"listening": port}), flush=True)
    s.settimeout(timeout)
    got: List[str] = []
    try:
        while len(got) < count:
            got.append(s.recv(65535).decode(errors="replace"))
    except socket.timeout:
        pass
    print(json.dumps({"datagrams": got}), flush=True)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def vlan_frame(vid: int, src: str, dst: str, sport: int, dport: int, payload: bytes,
               tclass: int = 0) -> bytes:
    """Ethernet + 802.1Q + IPv6 + UDP with a correct checksum, as a VLAN device without
    offload puts it on the wire."""
    s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    ulen = 8 + len(payload)
    pseudo = s6 + d6 + struct.pack("!I3xB", ulen, 17)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    c = _csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    ip6 = struct.pack("!IHBB", (6 << 28) | (tclass << 20), ulen, 17, 64) + s6 + d6
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    return eth + struct.pack("!HHH", 0x8100, vid, 0x86DD) + ip6 + udp


def inject_vlan(iface: str, vid: int, src: str, dst: str, sport: int, dport: int, sizes: List[int],
                tclass: int) -> None:
    """Send hand-built 802.1Q frames through iface's egress path (tc runs on them)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    for i, size in enumerate(sizes):
        payload = f"vlan:{i}:".encode().ljust(size, b"v")
        s.send(vlan_frame(vid, src, dst, sport, dport, payload, tclass))
    print(json.dumps({"sent": len(sizes)}), flush=True)


def http_echo(addr: str, port: int) -> None:
    """A "what is my IP" service as ipify's JSON form answers: {"ip": "<the caller's address>"}."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"ip": self.client_address[0]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    srv = Server((addr, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"listening": port}), flush=True)
    srv.serve_forever()


IFF_TUN, IFF_NO_PI, TUNSETIFF = 0x0001, 0x1000, 0x400454CA


def tun_read(name: str, count: int, timeout: float) -> None:
    """Create tun device `name`, print ready, then print the first `count` IPv6 packets the
    stack sends out of it (hex), as JSON."""
    import fcntl
    import select

    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    print(json.dumps({"ready": name}), flush=True)
    got: List[str] = []
    end = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            pkt = os.read(fd, 65535)
            if pkt and pkt[0] >> 4 == 6 and pkt[6] in (0, 6, 17, 60):
                got.append(pkt.hex())
    print(json.dumps({"packets": got}), flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("iface")
    c.add_argument("file")
    srv = sub.add_parser("tcp-server")
    srv.add_argument("addr")
    srv.add_argument("port", type=int)
    cl = sub.add_parser("tcp-client")
    cl.add_argument("addr")
    cl.add_argument("port", type=int)
    cl.add_argument("sport", type=int)
    cl.add_argument("nbytes", type=int)
    cl.add_argument("--tclass", type=int, default=0)
    cl.add_argument("--seed", type=int, default=1)
    u = sub.add_parser("udp-send")
    u.add_argument("addr")
    u.add_argument("port", type=int)
    u.add_argument("sport", type=int)
    u.add_argument("count", type=int)
    u.add_argument("phase")
    u.add_argument("--tclass", type=int, default=0)
    ur = sub.add_parser("udp-recv")
    ur.add_argument("addr")
    ur.add_argument("port", type=int)
    ur.add_argument("count", type=int)
    ur.add_argument("--timeout", type=float, default=10)
    iv = sub.add_parser("inject-vlan")
    iv.add_argument("iface")
    iv.add_argument("vid", type=int)
    iv.add_argument("src")
    iv.add_argument("dst")
    iv.add_argument("sport", type=int)
    iv.add_argument("dport", type=int)
    iv.add_argument("sizes", help="comma-separated UDP payload sizes")
    iv.add_argument("--tclass", type=int, default=0)
    he = sub.add_parser("http-echo")
    he.add_argument("addr")
    he.add_argument("port", type=int)
    tr = sub.add_parser("tun-read")
    tr.add_argument("name")
    tr.add_argument("count", type=int)
    tr.add_argument("--timeout", type=float, default=15)
    a = ap.parse_args(argv)
    if a.cmd == "capture":
        capture(a.iface, a.file)
    elif a.cmd == "tcp-server":
        tcp_server(a.addr, a.port)
    elif a.cmd == "tcp-client":
        tcp_client(a.addr, a.port, a.sport, a.nbytes, a.tclass, a.seed)
    elif a.cmd == "inject-vlan":
        inject_vlan(a.iface, a.vid, a.src, a.dst, a.sport, a.dport,
                    [int(x) for x in a.sizes.split(",")], a.tclass)
    elif a.cmd == "tun-read":
        tun_read(a.name, a.count, a.timeout)
    elif a.cmd == "http-echo":
        http_echo(a.addr, a.port)
    elif a.cmd == "udp-recv":
        udp_recv(a.addr, a.port, a.count, a.timeout)
    elif a.cmd == "udp-send":
        udp_send(a.addr, a.port, a.sport, a.count, a.phase, a.tclass)
    return 0


if __name__ == "__main__":
    sys.exit(main())
