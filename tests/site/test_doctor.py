# SPDX-License-Identifier: Apache-2.0
"""`scitagd doctor`: one line per check, the fix for each problem, a failing exit status when
something fails. Run in a network namespace with its own resolver files, so no name lookup
leaves the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from scitagd.lab.netlab import NetNS

pytestmark = pytest.mark.root


@pytest.fixture
def ns() -> Iterator[NetNS]:
    n = NetNS("doctor")
    try:
        n.write_etc("hosts", "127.0.0.1 localhost\n127.0.0.9 collector.site.test\n")
        n.write_etc("resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")  # no server: fails fast
        yield n
    finally:
        n.close()


def doctor(ns: NetNS, conf: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ns.cmd(sys.executable, "-m", "scitagd", "doctor", "--config", str(conf), *extra),
                          capture_output=True, text=True, timeout=60)


def test_doctor_passes_and_fails_with_fixes(ns: NetNS, tmp_path: Path) -> None:
    conf = tmp_path / "scitagd.yaml"
    conf.write_text(f"""
plugins:
  firefly: {{bindAddress: 127.0.0.1, bindPort: 10514, receiveBuffer: 67108864}}
  namedPipe: {{pipePath: {tmp_path}/run/flowd}}
backends:
  marker: {{targetInterfaces: [lo], markingStrategy: hopByHop}}
  firefly: {{collectors: ["collector.site.test:10514"]}}
""")
    r = doctor(ns, conf)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert all(x.split()[0] in ("PASS", "WARN", "FAIL") for x in lines[:-1]) and "failed" in lines[-1]
    text = r.stdout
    for what in ("kernel:", "BTF:", "bpffs:", "libbpf:", "capabilities for backends.marker", "interface lo:",
                 "net.ipv6.flowlabel_state_ranges", "registry:", "plugins.firefly listener",
                 "collector collector.site.test:10514: resolves to 127.0.0.9"):
        assert what in text, what
    assert "extension headers take 8 bytes" in text
    assert "WARN  net.core.rmem_max" in text and "sysctl -w net.core.rmem_max=67108864" in text
    # now break things: a name that does not resolve, a port in use, no capabilities
    conf.write_text(conf.read_text().replace("collector.site.test", "nowhere.site.test"))
    r = doctor(ns, conf, "--json")
    assert r.returncode == 1
    checks = json.loads(r.stdout)
    bad = [c for c in checks if c["status"] == "FAIL"]
    assert [c["what"] for c in bad] == ["collector nowhere.site.test:10514"] and bad[0]["fix"]
    public = Path("/tmp") / f"scitagd-doctor-{tmp_path.name}.yaml"  # readable by nobody
    public.write_text(conf.read_text())
    public.chmod(0o644)
    try:
        r = subprocess.run(ns.cmd("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                  "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "scitagd", "doctor",
                                  "--config", str(public)), capture_output=True, text=True, timeout=60)
    finally:
        public.unlink()
    assert r.returncode == 1
    assert "FAIL  capabilities for backends.marker: missing CAP_BPF, CAP_NET_ADMIN" in r.stdout
    assert "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON" in r.stdout


def test_doctor_for_a_collector(ns: NetNS, tmp_path: Path) -> None:
    rmem = int(Path("/proc/sys/net/core/rmem_max").read_text())
    store = tmp_path / "store"
    store.mkdir()
    conf = tmp_path / "collector.yaml"
    conf.write_text(f"""
collector:
  udp: {{bindAddresses: ["127.0.0.1"], port: 10514, receiveBuffer: {rmem + 4096}}}
  sflow: {{bindAddresses: ["127.0.0.1"], port: 6343, receiveBuffer: {max(65536, rmem // 2)}}}
  http: {{bindAddress: 127.0.0.1, port: 8088}}
  store: {{path: {store}/c.sqlite}}
""")
    holder = ns.popen([sys.executable, "-c", "import socket, sys, time; s = socket.socket(); "
                       "s.bind(('127.0.0.1', 8088)); s.listen(); print('bound', flush=True); time.sleep(60)"],
                      stdout=subprocess.PIPE)
    try:  # something else holds the dashboard's port
        assert holder.stdout is not None and holder.stdout.readline() == b"bound\n"
        r = doctor(ns, conf, "--collector", "--json")
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {(c["what"], c["status"]): c for c in json.loads(r.stdout)}
    warn = checks[("net.core.rmem_max", "WARN")]
    assert "collector.udp.receiveBuffer" in warn["detail"] and f"rmem_max={rmem + 4096}" in warn["fix"]
    assert "collector.sflow.receiveBuffer" in checks[("net.core.rmem_max", "PASS")]["detail"]
    assert ("collector.udp listener", "PASS") in checks and ("collector.sflow listener", "PASS") in checks
    assert "Address already in use" in checks[("collector.http listener", "WARN")]["detail"]
    assert "GiB free" in checks[("collector.store", "PASS")]["detail"]

    conf.write_text(conf.read_text().replace(str(store), str(tmp_path / "missing")))
    r = doctor(ns, conf, "--collector")
    assert r.returncode == 1 and "FAIL  collector.store:" in r.stdout and "StateDirectory=scitagd" in r.stdout
