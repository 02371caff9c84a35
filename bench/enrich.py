# SPDX-License-Identifier: Apache-2.0
"""Enrichment cost per period: 10 watched TCP flows while 1,000 and then 10,000 idle TCP
connections exist, with three ways of getting their tcp_info, in one run:

  scitagd   exact sock_diag lookups, all in one datagram (enrich/sockdiag.py `lookup`)
  bytecode  a sock_diag dump filtered in the kernel by inet_diag bytecode (sockdiag.py `query`)
  pyroute2  a full sock_diag dump with tcp_info (pyroute2.DiagSocket), filtered in Python
  ss        `ss -tinH` parsed, python flowd's way (its netlink/cache_ss.py)

The idle connections live in a helper process; every figure is the median of --repeat periods.

  python bench/enrich.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

# Two processes hold the idle connections (one the accepted ends, one the connecting ends), so
# that each stays under the open-file limit (20,000 here).
SERVER = r"""
import resource, socket, sys, threading
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
n = int(sys.argv[1])
ls = socket.socket(socket.AF_INET6); ls.bind(("::1", 0)); ls.listen(4096)
print(ls.getsockname()[1], flush=True)
keep = [ls.accept()[0] for _ in range(n)]
print("ok", flush=True)
sys.stdin.read()
"""
CLIENT = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
n, port = int(sys.argv[1]), int(sys.argv[2])
keep = [socket.create_connection(("::1", port)) for _ in range(n)]
print("ok", flush=True)
sys.stdin.read()
"""


def watched_pairs(n: int = 10) -> Tuple[List[socket.socket], List[Tuple[int, int]]]:
    ls = socket.socket(socket.AF_INET6)
    ls.bind(("::1", 0))
    ls.listen(64)
    port = ls.getsockname()[1]
    socks, pairs = [ls], []
    for _ in range(n):
        c = socket.create_connection(("::1", port))
        s, _ = ls.accept()
        c.sendall(b"x" * 100000)
        got = 0
        while got < 100000:
            got += len(s.recv(65536))
        socks += [c, s]
        pairs.append((c.getsockname()[1], port))
    return socks, pairs


def _scitagd(pairs: List[Tuple[int, int]], repeat: int, exact: bool) -> Tuple[float, int]:
    sys.path.insert(0, "src")
    from scitagd.enrich.sockdiag import SockDiag

    d = SockDiag()
    times, found = [], 0
    tuples = []
    for lp, rp in pairs:  # both orientations, as the enricher asks (it does not know which end is local)
        tuples += [("::1", lp, "::1", rp), ("::1", rp, "::1", lp)]
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = d.lookup(socket.AF_INET6, tuples) if exact else d.query(socket.AF_INET6, pairs)
        times.append(time.perf_counter() - t0)
        found = len([r for r in res if (r.local[1], r.remote[1]) in set(pairs)])
    d.close()
    return statistics.median(times) * 1000, found


def t_scitagd(pairs: List[Tuple[int, int]], repeat: int) -> Tuple[float, int]:
    return _scitagd(pairs, repeat, exact=True)


def t_filtered_dump(pairs: List[Tuple[int, int]], repeat: int) -> Tuple[float, int]:
    return _scitagd(pairs, repeat, exact=False)


def t_pyroute2(pairs: List[Tuple[int, int]], repeat: int) -> Tuple[float, int]:
    from pyroute2 import DiagSocket

    want = set(pairs)
    times, found = [], 0
    with DiagSocket() as ds:
        ds.bind()
        for _ in range(repeat):
            t0 = time.perf_counter()
            msgs = ds.get_sock_stats(family=socket.AF_INET6, states=0xFFF & ~(1 << 10), extensions=1 << 1)
            hits = [m for m in msgs if (m["idiag_sport"], m["idiag_dport"]) in want]
            for m in hits:
                m.get_attr("INET_DIAG_INFO")
            times.append(time.perf_counter() - t0)
            found = len(hits)
    return statistics.median(times) * 1000, found


SS_LINE = re.compile(r"\[([0-9a-f:]+)\]:(\d+)\s+\[([0-9a-f:]+)\]:(\d+)")


def t_ss(pairs: List[Tuple[int, int]], repeat: int) -> Tuple[float, int]:
    want = set(pairs)
    times, found = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = subprocess.run(["ss", "-tinH"], capture_output=True, text=True).stdout
        lines = out.splitlines()
        hits = 0
        for i, line in enumerate(lines):
            m = SS_LINE.search(line)
            if m and (int(m.group(2)), int(m.group(4))) in want:
                info = lines[i + 1] if i + 1 < len(lines) else ""
                dict(kv.split(":", 1) for kv in info.split() if ":" in kv)
                hits += 1
        times.append(time.perf_counter() - t0)
        found = hits
    return statistics.median(times) * 1000, found


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--idle", default="1000,10000")
    a = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks, pairs = watched_pairs()
    res: Dict[str, Dict[str, float]] = {}
    for n in [int(x) for x in a.idle.split(",")]:
        srv = subprocess.Popen([sys.executable, "-c", SERVER, str(n)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        assert srv.stdout is not None
        port = srv.stdout.readline().strip()
        cli = subprocess.Popen([sys.executable, "-c", CLIENT, str(n), port], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        assert cli.stdout is not None and cli.stdout.readline().strip() == "ok"
        assert srv.stdout.readline().strip() == "ok"
        row = {}
        for name, fn in (("scitagd", t_scitagd), ("bytecode dump", t_filtered_dump), ("pyroute2", t_pyroute2),
                         ("ss", t_ss)):
            ms, found = fn(pairs, a.repeat)
            assert found == len(pairs), (name, found)
            row[name] = ms
        res[str(n)] = row
        print(f"{n:6} idle: scitagd {row['scitagd']:7.3f} ms   bytecode dump {row['bytecode dump']:7.3f} ms   "
              f"pyroute2 {row['pyroute2']:8.2f} ms   ss {row['ss']:7.2f} ms   ss/scitagd "
              f"{row['ss'] / row['scitagd']:5.0f}x", flush=True)
        cli.communicate("")
        srv.communicate("")
    for s in socks:
        s.close()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
