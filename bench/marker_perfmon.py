# SPDX-License-Identifier: Apache-2.0
"""What CAP_PERFMON buys the marker (root): the per-packet cost of the tc program as the verifier
leaves it when the loader has CAP_PERFMON (the unit's set) and when it has only CAP_BPF +
CAP_NET_ADMIN (then the verifier applies its Spectre v1/v4 mitigations: speculation barriers).

Two loader processes (setpriv: root, bounding set reduced) load marker.bpf.o with their own pin
directory and one flow in the map; this process runs each one's `scitagd_eth` on the same
IPv6/TCP packet of that flow with BPF_PROG_TEST_RUN (the full marking path: lookup, label
rewrite, counters), interleaved, --rounds times; the kernel reports the mean ns per run.

  python bench/marker_perfmon.py [--rounds 7] [--repeat 200000]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
from collections import Counter

from scitagd.bpf import libbpf as lb

SRC, DST, SPORT, DPORT = "2001:db8::1", "2001:db8::2", 40001, 5001

LOADER = """
import sys
from pathlib import Path
from scitagd.bpf.loader import KernelMarker, TAG, flow_key
from scitagd.bpf import libbpf as lb
k = KernelMarker(max_flows=1024, pin_dir=Path(sys.argv[1]))
k.load()
k.configure("label")
k.maps().put_flow(flow_key("tcp", sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])),
                  TAG.pack(0x1234, 3, 14, 1))
print(lb.prog_info(k.progs["scitagd_eth"]).id, flush=True)
sys.stdin.read()  # keep the program until the parent is done
"""


class TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int),
                ("duration", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


def packet(payload: int = 1000) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", SPORT, DPORT, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + b"x" * payload
    ip6 = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + socket.inet_pton(socket.AF_INET6, SRC) + \
        socket.inet_pton(socket.AF_INET6, DST)
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x86\xdd" + ip6 + tcp


def run(fd: int, pkt: bytes, repeat: int) -> float:
    L = lb.lib()
    L.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(TestRunOpts)]
    buf_in = ctypes.create_string_buffer(pkt, len(pkt))
    buf_out = ctypes.create_string_buffer(len(pkt) + 256)
    o = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.addressof(buf_in),
                    data_out=ctypes.addressof(buf_out), data_size_in=len(pkt), data_size_out=len(buf_out),
                    repeat=repeat)
    lb.check(L.bpf_prog_test_run_opts(fd, ctypes.byref(o)), "test run")
    label = struct.unpack("!I", buf_out.raw[14:18])[0] & 0xFFFFF
    assert label != 0, "the packet was not marked: the flow path did not run"
    return float(o.duration)


def barriers(fd: int) -> int:
    L = lb.lib()
    n = lb.prog_info(fd).xlated_prog_len
    buf = ctypes.create_string_buffer(n)
    info = lb.ProgInfo()
    info.xlated_prog_len, info.xlated_prog_insns = n, ctypes.addressof(buf)
    size = ctypes.c_uint32(ctypes.sizeof(info))
    lb.check(L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "prog info")
    return Counter(buf.raw[i] for i in range(0, n, 8))[0xC2]  # BPF_ST | BPF_NOSPEC


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=200000)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (eBPF)", file=sys.stderr)
        return 2
    sets: dict[str, list[float]] = {"bpf,net_admin,perfmon": [], "bpf,net_admin": []}
    procs: dict[str, subprocess.Popen[str]] = {}
    fds: dict[str, int] = {}
    pins: list[str] = []
    try:
        for caps in sets:
            pin = f"/sys/fs/bpf/scitagd-bench-perfmon-{os.getpid()}-{len(pins)}"
            pins.append(pin)
            capset = ",".join(f"+{c}" for c in caps.split(","))
            p = subprocess.Popen(["setpriv", f"--inh-caps=-all,{capset}", f"--ambient-caps=-all,{capset}",
                                  f"--bounding-set=-all,{capset}", "--", sys.executable, "-c", LOADER, pin,
                                  SRC, str(SPORT), DST, str(DPORT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            procs[caps] = p
            assert p.stdout is not None
            prog_id = int(p.stdout.readline())
            fds[caps] = lb.check(lb.lib().bpf_prog_get_fd_by_id(prog_id), "prog fd")
        pkt = packet()
        for _ in range(a.rounds):
            for caps in sets:
                sets[caps].append(run(fds[caps], pkt, a.repeat))
        base = statistics.median(sets["bpf,net_admin,perfmon"])
        print(f"scitagd_eth, one 1074-byte IPv6/TCP packet of a marked flow, BPF_PROG_TEST_RUN x{a.repeat}, "
              f"median of {a.rounds} interleaved rounds")
        for caps, runs in sets.items():
            med = statistics.median(runs)
            print(f"  loaded with {caps:24s} {barriers(fds[caps]):4d} speculation barriers  "
                  f"{med:6.1f} ns/packet  x{med / base:.2f}")
    finally:
        for p in procs.values():
            if p.stdin:
                p.stdin.close()
            p.wait(10)
        for fd in fds.values():
            os.close(fd)
        for pin in pins:
            shutil.rmtree(pin, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
