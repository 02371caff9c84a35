# SPDX-License-Identifier: Apache-2.0
"""The Debian 12 packages, built here with dpkg-deb: control data, contents, lintian, and the
packaged scitagd run from the unpacked tree on Debian's own python3 and python3-* packages."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Dict

import pytest

from .unitsandbox import REPO

pytestmark = [pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb missing"), pytest.mark.slow]

VERSION = re.search(r'^version = "(.*)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]
ARCHES = {"amd64": 62, "arm64": 183}
PRIV = "usr/lib/scitagd/site-packages"
MAINTAINER = "Site Admin <admin@example.org>"
DEBIAN_DEPS = ["aiohttp", "yaml", "prometheus_client", "pyroute2", "uvloop"]


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    out = tmp_path_factory.mktemp("debs")
    r = subprocess.run(["bash", str(REPO / "packaging" / "build-deb.sh"), "--out", str(out)], capture_output=True,
                       text=True, env={**os.environ, "DEB_MAINTAINER": MAINTAINER}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    found = {a: out / f"scitagd_{VERSION}-1_{a}.deb" for a in ARCHES}
    assert all(p.exists() for p in found.values()), r.stdout
    return found


@pytest.fixture(scope="module")
def root(debs: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("deb-unpacked") / "root"
    subprocess.run(["dpkg-deb", "-x", str(debs["amd64"]), str(dest)], check=True)
    return dest


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("arch", list(ARCHES))
def test_control_and_contents(debs: Dict[str, Path], arch: str, tmp_path: Path) -> None:
    deb = debs[arch]
    assert (field(deb, "Package"), field(deb, "Architecture"), field(deb, "Version")) == ("scitagd", arch,
                                                                                          f"{VERSION}-1")
    assert field(deb, "Maintainer") == MAINTAINER
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    for d in ["python3 (>= 3.11)", "python3 (<< 3.12)", "python3-aiohttp (>= 3.8)", "python3-yaml (>= 5.4)",
              "python3-prometheus-client (>= 0.16)", "python3-pyroute2 (>= 0.7)", "python3-uvloop (>= 0.17)",
              "libbpf1 (>= 1:1.0)"]:
        assert d in depends, d
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for f in ["/usr/bin/scitagd", "/lib/systemd/system/scitagd.service", "/lib/systemd/system/scitagd-collector.service",
              "/usr/lib/sysusers.d/scitagd.conf", "/usr/lib/tmpfiles.d/scitagd.conf", "/etc/scitagd/scitagd.yaml",
              "/etc/scitagd/collector.yaml", "/usr/share/man/man8/scitagd.8.gz", "/usr/share/doc/scitagd/copyright",
              "/usr/share/scitagd/grafana/scitagd-collector.json", f"/{PRIV}/scitagd/bpf/marker.bpf.o",
              f"/{PRIV}/msgspec/__init__.py"]:
        assert f in files, f
    # Debian's packages provide the rest; no byte code shipped (postinst compiles it).
    assert not [f for f in files if f.startswith(f"/{PRIV}/") and f.split("/")[5] in ("aiohttp", "yaml", "uvloop")]
    assert not [f for f in files if f.endswith(".pyc")]
    assert not [f for f in files if f.startswith(f"/{PRIV}/bin") or f.startswith(f"/{PRIV}/share")], \
        "console scripts, or the wheel's data files twice (also in /usr/share)"
    ctl = tmp_path / "DEBIAN"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(ctl)], check=True)
    assert (ctl / "conffiles").read_text().split() == ["/etc/scitagd/scitagd.yaml", "/etc/scitagd/collector.yaml"]
    for script in ("postinst", "prerm", "postrm"):
        assert subprocess.run(["sh", "-n", str(ctl / script)]).returncode == 0, script
    ext = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(ext)], check=True)
    sos = list((ext / PRIV).rglob("*.so"))
    assert sos and all(int.from_bytes(so.read_bytes()[18:20], "little") == ARCHES[arch] for so in sos)
    assert "cpython-311" in sos[0].name


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian missing (apt-get install lintian)")
def test_lintian(debs: Dict[str, Path]) -> None:
    r = subprocess.run(["lintian", "--tag-display-limit", "0", str(debs["amd64"])], capture_output=True, text=True,
                       timeout=300)
    tags = [line for line in r.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert tags == [], "\n".join(tags)


def _python_deps_missing() -> str:
    r = subprocess.run(["/usr/bin/python3", "-c", "import " + ", ".join(DEBIAN_DEPS)], capture_output=True, text=True)
    return "" if r.returncode == 0 else r.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(bool(_python_deps_missing()), reason="Debian's python3-aiohttp, -yaml, -prometheus-client, "
                    "-pyroute2, -uvloop not installed (scripts/setup.sh --test installs them)")
def test_packaged_scitagd_on_debian_python(root: Path, tmp_path: Path) -> None:
    """As installed: /usr/bin/python3 -I, msgspec and scitagd from the package, everything else
    from Debian's own (older) packages: aiohttp 3.8, pyroute2 0.7, uvloop 0.17 on bookworm."""
    exe = ["/usr/bin/python3", "-I", str(root / "usr/bin/scitagd")]
    r = subprocess.run([*exe, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"scitagd {VERSION}", r.stderr
    r = subprocess.run([*exe, "tag", "encode", "atlas", "Data Brokering", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["scitag"] == 131, r.stderr
    for sample in ("etc/scitagd/scitagd.yaml", "etc/scitagd/collector.yaml"):
        assert subprocess.run([*exe, "conf", "--config", str(root / sample)], capture_output=True).returncode == 0
    where = subprocess.run(["/usr/bin/python3", "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "import msgspec, aiohttp, uvloop; print(msgspec.__file__, aiohttp.__file__, uvloop.__file__)",
                            str(root / PRIV)], capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(root / PRIV)) and all(w.startswith("/usr/lib/python3/dist-packages") for w in where[1:])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        api = s.getsockname()[1]
    conf = tmp_path / "scitagd.yaml"
    conf.write_text(f"plugins:\n  api: {{bindAddress: 127.0.0.1, bindPort: {api}}}\n"
                    f"  namedPipe: {{pipePath: {tmp_path / 'flowd'}}}\n"
                    f"registry: {{cacheFile: {tmp_path / 'registry.json'}}}\n")
    p = subprocess.Popen([*exe, "run", "--config", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    try:
        url = f"http://127.0.0.1:{api}"
        deadline = time.monotonic() + 30
        while True:
            assert p.poll() is None, p.stdout.read() if p.stdout else ""
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        body = json.dumps({"state": "start", "protocol": "tcp", "src-ip": "2001:db8::1", "src-port": 2811,
                           "dst-ip": "2001:db8::2", "dst-port": 40000, "experiment": "cms", "activity": 14}).encode()
        req = urllib.request.Request(url + "/api/v1/flows", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = p.stdout.read() if p.stdout else ""
    assert "flow start source=api" in out and "loop=uvloop" in out and "Traceback" not in out, out
