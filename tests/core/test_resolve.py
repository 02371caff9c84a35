# SPDX-License-Identifier: Apache-2.0
"""Collector names are re-resolved while the daemon runs (a real resolver, /etc/hosts in a netns)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from scitagd.lab.netlab import NetNS
from scitagd.lab.util import stop_process

from ..conftest import needs_root

RECEIVER = r"""
import json, socket, sys, time
port = int(sys.argv[1])
socks = {}
for ip in ("127.0.0.5", "127.0.0.6"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((ip, port)); s.setblocking(False)
    socks[ip] = s
print("ready", flush=True)
got = {ip: [] for ip in socks}
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for ip, s in socks.items():
        try:
            got[ip].append(json.loads(s.recv(4096).split(b" - ", 2)[-1].split(b"- ", 1)[-1])["flow-id"]["src-port"])
        except BlockingIOError:
            pass
    time.sleep(0.01)
print(json.dumps(got), flush=True)
"""


@pytest.fixture
def ns() -> Iterator[NetNS]:
    n = NetNS("res")
    try:
        yield n
    finally:
        n.close()


@needs_root
def test_collector_name_follows_dns_changes(ns: NetNS, tmp_path: Path) -> None:
    hosts = ns.write_etc("hosts", "127.0.0.1 localhost\n127.0.0.5 collector.test\n")
    port = 20514
    pipe = tmp_path / "np"
    conf = tmp_path / "c.yaml"
    conf.write_text(f"""
plugins:
  namedPipe: {{pipePath: {pipe}}}
backends:
  firefly: {{sendToPeer: false, collectors: ["collector.test:{port}"], resolveInterval: 1}}
""")
    recv = ns.popen([sys.executable, "-c", RECEIVER, str(port), "8"], stdout=subprocess.PIPE)
    log = open(tmp_path / "d.log", "w")
    daemon = ns.popen([sys.executable, "-m", "scitagd", "run", "--config", str(conf)],
                      stdout=log, stderr=subprocess.STDOUT)
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 10
        while not pipe.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        with open(pipe, "w") as f:
            f.write("start tcp 127.0.0.1 1001 127.0.0.9 40000 2 1\n")
        time.sleep(0.5)
        with open(hosts, "w") as f:
            f.write("127.0.0.1 localhost\n127.0.0.6 collector.test\n")
        time.sleep(2.5)  # more than resolveInterval
        with open(pipe, "w") as f:
            f.write("start tcp 127.0.0.1 1002 127.0.0.9 40000 2 1\n")
        out, _ = recv.communicate(timeout=20)
        got = json.loads(out.decode().strip().splitlines()[-1])
        assert got == {"127.0.0.5": [1001], "127.0.0.6": [1002]}, (tmp_path / "d.log").read_text()
    finally:
        for p in (daemon, recv):
            stop_process(p)
        log.close()
