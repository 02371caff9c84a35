# SPDX-License-Identifier: Apache-2.0
"""Traffic with flow labels we choose, for the live exporter tests (standard library only).

  python traffic.py udp-dump PORT FILE             inside the exporter's namespace: datagrams to FILE
  python traffic.py sink ADDR PORT                 UDP sink and TCP server (one connection at a time)
  python traffic.py udp SRC DST PORT SPORT LABEL COUNT SIZE
  python traffic.py tcp SRC DST PORT SPORT LABEL NBYTES [CHUNK DELAY_MS]
The label is set with the kernel's flow label manager (IPV6_FLOWLABEL_MGR + IPV6_FLOWINFO_SEND),
as the shared captures were made. Prints one JSON line with what was sent.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import threading
import time

IPV6_FLOWLABEL_MGR, IPV6_FLOWINFO_SEND = 32, 33
IPV6_FL_A_GET, IPV6_FL_S_ANY, IPV6_FL_F_CREATE = 0, 255, 1


def labelled(family_type: int, src: str, dst: str, sport: int, label: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, family_type)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, sport))
    if label:
        req = socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!I", label) + struct.pack(
            "=BBHHHI", IPV6_FL_A_GET, IPV6_FL_S_ANY, IPV6_FL_F_CREATE, 0, 0, 0)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWLABEL_MGR, req)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWINFO_SEND, 1)
    return s


def udp(src: str, dst: str, port: int, sport: int, label: int, count: int, size: int) -> None:
    s = labelled(socket.SOCK_DGRAM, src, dst, sport, label)
    s.connect((dst, port, label, 0))
    for i in range(count):
        s.send(bytes([i % 256]) * size)
        time.sleep(0.002)
    print(json.dumps({"packets": count, "ip_bytes": count * (40 + 8 + size)}), flush=True)


def tcp(src: str, dst: str, port: int, sport: int, label: int, nbytes: int, chunk: int = 0,
        delay_ms: float = 0) -> None:
    s = labelled(socket.SOCK_STREAM, src, dst, sport, label)
    s.connect((dst, port, label, 0))
    if chunk:  # paced, for capture-based exporters that drop packets in bursts
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, nbytes, chunk):
            s.sendall(b"x" * min(chunk, nbytes - i))
            time.sleep(delay_ms / 1000)
    else:
        s.sendall(b"x" * nbytes)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
    print(json.dumps({"sent": nbytes}), flush=True)


def sink(addr: str, port: int) -> None:
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind((addr, port))
    t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, port))
    t.listen(8)

    def drain_udp() -> None:
        while True:
            u.recv(65536)

    threading.Thread(target=drain_udp, daemon=True).start()
    print("ready", flush=True)
    while True:
        c, _ = t.accept()
        while c.recv(65536):
            pass
        c.close()


def udp_dump(port: int, path: str) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("::", port))
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    s.settimeout(0.1)
    with open(path, "wb") as f:
        print("ready", flush=True)
        while not stop[0]:
            try:
                data, addr = s.recvfrom(65536)
            except (socket.timeout, InterruptedError):
                continue
            host = addr[0].encode()
            f.write(struct.pack("!dHH", time.time(), len(host), len(data)) + host + data)
            f.flush()


def read_dump(path: str) -> list:
    """[(source address, payload, time)] from a udp-dump file."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i + 12 <= len(data):
        ts, hl, dl = struct.unpack_from("!dHH", data, i)
        i += 12
        host = data[i:i + hl].decode()
        i += hl
        out.append((host[7:] if host.startswith("::ffff:") else host, data[i:i + dl], ts))
        i += dl
    return out


def main(argv: list) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "udp-dump":
        udp_dump(int(args[0]), args[1])
    elif cmd == "sink":
        sink(args[0], int(args[1]))
    elif cmd == "udp":
        udp(args[0], args[1], int(args[2]), int(args[3]), int(args[4], 0), int(args[5]), int(args[6]))
    elif cmd == "tcp":
        tcp(args[0], args[1], int(args[2]), int(args[3]), int(args[4], 0), int(args[5]),
            *(int(a) for a in args[6:8]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
