# SPDX-License-Identifier: Apache-2.0
"""A real XRootD (Debian xrootd-server) sends its fireflies to scitagd's firefly listener."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from scitagd.lab.util import stop_process

from ..conftest import DaemonProc, firefly_validator, free_port, json_body, metrics

XROOTD = shutil.which("xrootd")
XRDCP = shutil.which("xrdcp")
pytestmark = pytest.mark.skipif(not (XROOTD and XRDCP),
                                reason="xrootd-server/xrootd-client not installed (scripts/setup.sh "
                                       "--test installs them as root)")


@pytest.fixture
def xrootd_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is 0700 and xrootd runs as nobody.
    d = Path(tempfile.mkdtemp(prefix="scitagd-xrd-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start_xrootd(base: Path, port: int, ffdest: str, prefix: Sequence[str] = (),
                 host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """xrootd serving base/data/file1 (3 MiB); `prefix` runs it elsewhere (ip netns exec NS)."""
    data = base / "data"
    data.mkdir()
    (data / "file1").write_bytes(os.urandom(3 << 20))
    adm = base / "adm"
    adm.mkdir()
    for p in (data, adm, data / "file1"):
        os.chmod(p, 0o777 if p.is_dir() else 0o644)
    cfg = base / "xrootd.cfg"
    cfg.write_text(f"""
all.export /data
oss.localroot {base}
all.adminpath {adm}
all.pidpath {adm}
xrd.port {port}
xrootd.pmark use firefly scitag
xrootd.pmark domain any
xrootd.pmark ffdest {ffdest}
""")
    cmd = [XROOTD or "xrootd", "-c", str(cfg), "-l", str(adm / "xrootd.log"), "-n", "scitagd-test"]
    if os.geteuid() == 0:
        cmd[1:1] = ["-R", "nobody"]  # xrootd refuses to run as root
    with open(base / "xrootd.out", "wb") as out:
        proc = subprocess.Popen([*prefix, *cmd], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    probe = [*prefix, sys.executable, "-c",
             f"import socket; socket.create_connection(({host!r}, {port}), timeout=0.5).close()"]
    while time.monotonic() < deadline:
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    logs = "\n".join(p.read_text(errors="replace") for p in base.rglob("*log*") if p.is_file())
    raise AssertionError(f"xrootd did not start:\n{logs}")


def test_real_xrootd_fireflies_become_flows(run_daemon: Callable[..., DaemonProc], udp_receiver: Any,
                                            xrootd_dir: Path) -> None:
    peer = udp_receiver("127.0.0.1")
    peer6 = udp_receiver("::1", peer.port)
    ff, prom, xport = free_port(socket.SOCK_DGRAM), free_port(), free_port()
    d = run_daemon(f"""
plugins:
  firefly: {{bindPort: {ff}}}
backends:
  firefly: {{destinationPort: {peer.port}}}
  prometheus: {{port: {prom}}}
""")
    xrd = start_xrootd(xrootd_dir, xport, f"127.0.0.1:{ff}")
    try:
        cases = [("127.0.0.1", 65, (1, 1), peer), ("[::1]", 206, (3, 14), peer6)]
        for host, scitag, (exp, act), rcv in cases:
            out = xrootd_dir / f"out-{scitag}"
            r = subprocess.run([XRDCP or "xrdcp", "-f", "-s",
                                f"root://{host}:{xport}//data/file1?scitag.flow={scitag}", str(out)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert out.stat().st_size == 3 << 20
            got = rcv.recv(2, timeout=10)
            assert len(got) == 2, d.log()
            validator = firefly_validator()
            docs = [json_body(g) for g in got]
            for doc in docs:
                assert not list(validator.iter_errors(doc))
                assert (doc["context"]["experiment-id"], doc["context"]["activity-id"]) == (exp, act)
                assert doc["context"]["application"] == "xrdcp"
                assert doc["flow-id"]["src-port"] == xport  # the server supplies the data
            assert [doc["flow-lifecycle"]["state"] for doc in docs] == ["start", "end"]
            assert docs[1]["flow-lifecycle"]["start-time"] == docs[0]["flow-lifecycle"]["start-time"]
        m = metrics(prom)
        assert m['scitagd_events_total{source="firefly",state="start"}'] == 2
        assert m['scitagd_events_total{source="firefly",state="end"}'] == 2
        assert sum(v for k, v in m.items() if k.startswith("scitagd_rejected_total")) == 0
        d.wait_log("info scitagd.flows flow end source=firefly proto=tcp src=[::1]:")
    finally:
        stop_process(xrd, 10)
