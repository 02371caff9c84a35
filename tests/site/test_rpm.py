# SPDX-License-Identifier: Apache-2.0
"""The EL9 RPMs, built here with rpmbuild: contents, dependencies, scriptlets, and the bundled
scitagd run under a CPython 3.9 (EL9's python3) from the unpacked package."""

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
from email.parser import Parser
from pathlib import Path
from typing import Dict, List

import pytest

from . import python39
from .unitsandbox import REPO

TOOLS = ("rpmbuild", "rpm", "rpm2cpio", "cpio")
missing = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = [pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} missing (Debian: apt-get install "
                                                         "rpm rpm2cpio cpio; scripts/setup.sh --test does)"),
              pytest.mark.slow]

ARCHES = {"x86_64": 62, "aarch64": 183}  # ELF e_machine
VERSION = re.search(r'^version = "(.*)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]
PRIV = "usr/lib/scitagd/site-packages"
BUILD_BUDGET_S = 150  # a tripwire: ~35 s with a warm wheel cache, ~70 s cold on an idle machine


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    out = tmp_path_factory.mktemp("rpms")
    t0 = time.monotonic()
    # zstd level 3 instead of EL9's 19: the same contents, ~10 s less per package.
    r = subprocess.run(["bash", str(REPO / "packaging" / "build-rpm.sh"), "--out", str(out)],
                       capture_output=True, text=True, env={**os.environ, "SCITAGD_RPM_ZSTD_LEVEL": "3"},
                       timeout=600)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\nbuild-rpm.sh: {took:.1f}s\n" + "\n".join(line for line in r.stderr.splitlines()
                                                     if line.startswith("build-rpm:")))
    assert took < BUILD_BUDGET_S, f"RPM build took {took:.0f}s"
    found = {a: out / f"scitagd-{VERSION}-1.el9.{a}.rpm" for a in ARCHES}
    for p in found.values():
        assert p.exists(), r.stdout
    return found


def q(rpm: Path, *args: str) -> List[str]:
    r = subprocess.run(["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True, check=True)
    return r.stdout.splitlines()


def unpack(rpm: Path, dest: Path) -> Path:
    dest.mkdir()
    p1 = subprocess.Popen(["rpm2cpio", str(rpm)], stdout=subprocess.PIPE)
    r = subprocess.run(["cpio", "-idm", "--quiet"], stdin=p1.stdout, cwd=dest, capture_output=True)
    assert p1.wait() == 0 and r.returncode == 0, r.stderr
    return dest


@pytest.fixture(scope="module")
def root(rpms: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack(rpms["x86_64"], tmp_path_factory.mktemp("unpacked") / "root")


@pytest.fixture(scope="module")
def py39() -> python39.Python39:
    try:
        return python39.find()
    except RuntimeError as e:
        pytest.skip(f"no CPython 3.9: {e}")


@pytest.mark.parametrize("arch", list(ARCHES))
def test_contents_and_dependencies(rpms: Dict[str, Path], arch: str) -> None:
    rpm = rpms[arch]
    name, rarch, lic = q(rpm, "--qf", "%{NAME}\n%{ARCH}\n%{LICENSE}\n")
    assert (name, rarch) == ("scitagd", arch) and lic.startswith("Apache-2.0")
    files = set(q(rpm, "-l"))
    for f in ["/usr/bin/scitagd", "/usr/lib/systemd/system/scitagd.service",
              "/usr/lib/systemd/system/scitagd-collector.service", "/usr/lib/sysusers.d/scitagd.conf",
              "/usr/lib/tmpfiles.d/scitagd.conf", "/etc/scitagd/scitagd.yaml", "/etc/scitagd/collector.yaml",
              "/usr/share/man/man8/scitagd.8", "/usr/share/man/man5/scitagd.yaml.5",
              f"/usr/share/licenses/scitagd-{VERSION}/LICENSE", "/usr/share/scitagd/grafana/scitagd-collector.json",
              f"/{PRIV}/scitagd/cli.py", f"/{PRIV}/scitagd/bpf/marker.bpf.o", f"/{PRIV}/scitagd/bpf/watcher.bpf.o",
              f"/{PRIV}/scitagd-{VERSION}.dist-info/METADATA"]:
        assert f in files, f
    for mod in ("msgspec", "uvloop", "aiohttp", "yaml", "_yaml", "prometheus_client", "pyroute2", "async_timeout"):
        assert f"/{PRIV}/{mod}" in files, mod
    assert not [f for f in files if f.startswith(f"/{PRIV}/bin")], "console scripts of the build host's Python"
    assert not [f for f in files if f.startswith(f"/{PRIV}/share")], "the wheel's data files twice (also in /usr/share)"
    assert not [f for f in files if "cpython-" in f and "cpython-39" not in f], "files for another Python than 3.9"
    # Config files: %config(noreplace), readable by the service's group only.
    flags = dict(line.split(" ", 1) for line in q(rpm, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEMODES:perms}"
                                                               " %{FILEGROUPNAME}\n]"))
    for f in ("/etc/scitagd/scitagd.yaml", "/etc/scitagd/collector.yaml"):
        assert flags[f] == "cn -rw-r----- scitagd", (f, flags[f])

    requires = set(q(rpm, "-R"))
    bits = "(64bit)"
    for r in ["/usr/bin/python3.9", f"libbpf.so.1(){bits}", "shadow-utils", "systemd", f"libc.so.6(GLIBC_2.17){bits}"]:
        assert r in requires, r
    assert not [r for r in requires if "python3dist" in r or "python(abi)" in r], requires
    glibc = [tuple(map(int, v.split("."))) for v in re.findall(r"\(GLIBC_([\d.]+)\)", " ".join(requires))]
    assert glibc and max(glibc) <= (2, 34), max(glibc)  # EL9's glibc is 2.34
    provides = q(rpm, "--provides")
    assert not [p for p in provides if ".so" in p], "bundled libraries offered to the system"
    pins = re.findall(r"^([\w.-]+)==([\w.]+)", (REPO / "packaging/rpm/requirements-el9.txt").read_text(), re.M)
    for n, v in pins:
        assert f"bundled(python3dist({n.lower()})) = {v}" in provides, n


def test_scriptlets(rpms: Dict[str, Path]) -> None:
    s = "\n".join(q(rpms["x86_64"], "--scripts"))
    pre = s.split("preinstall scriptlet")[1].split("scriptlet")[0]
    assert "groupadd -r scitagd" in pre and "useradd -r -g scitagd" in pre and "/sbin/nologin" in pre
    assert "systemd-update-helper install-system-units scitagd.service scitagd-collector.service" in s
    assert "systemd-update-helper remove-system-units scitagd.service scitagd-collector.service" in s
    assert "systemd-update-helper mark-restart-system-units scitagd.service scitagd-collector.service" in s
    assert "systemd-tmpfiles --create /usr/lib/tmpfiles.d/scitagd.conf" in s


def test_unpacked_tree(rpms: Dict[str, Path], root: Path, tmp_path: Path) -> None:
    """What lands on disk: the repository's units and configs, ELF objects of the package's
    architecture only, and a dependency closure complete for Python 3.9's markers."""
    for rel, src in [("usr/lib/systemd/system/scitagd.service", "packaging/systemd/scitagd.service"),
                     ("usr/lib/systemd/system/scitagd-collector.service", "packaging/systemd/scitagd-collector.service"),
                     ("etc/scitagd/scitagd.yaml", "examples/scitagd.yaml"),
                     ("etc/scitagd/collector.yaml", "packaging/collector.yaml")]:
        assert (root / rel).read_bytes() == (REPO / src).read_bytes(), rel
    trees = {"x86_64": root, "aarch64": unpack(rpms["aarch64"], tmp_path / "aarch64")}
    for arch, tree in trees.items():
        sos = list((tree / PRIV).rglob("*.so"))
        assert len(sos) >= 10
        for so in sos:
            head = so.read_bytes()[:20]
            assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == ARCHES[arch], so
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    env = {"python_version": "3.9", "python_full_version": "3.9.18", "sys_platform": "linux",
           "platform_machine": "x86_64", "platform_python_implementation": "CPython", "implementation_name": "cpython",
           "os_name": "posix", "platform_system": "Linux", "extra": ""}
    dists = {}
    for d in (root / PRIV).glob("*.dist-info"):
        m = Parser().parsestr((d / "METADATA").read_text())
        dists[canonicalize_name(m["Name"])] = m
    for name, m in dists.items():
        for spec in m.get_all("Requires-Dist") or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = dists.get(canonicalize_name(req.name))
            assert dep is not None, f"{name} needs {req} on Python 3.9: not bundled"
            assert Version(dep["Version"]) in req.specifier, f"{name} needs {req}, bundled {dep['Version']}"


def run39(py39: python39.Python39, root: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return py39.run("-I", str(root / "usr/bin/scitagd"), *args, timeout=120, **kw)


def test_bundled_scitagd_under_python39(py39: python39.Python39, root: Path) -> None:
    print(f"\nPython 3.9: {py39.origin}")
    r = run39(py39, root, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"scitagd {VERSION}", r.stdout + r.stderr
    r = run39(py39, root, "tag", "encode", "atlas", "Data Brokering", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["scitag"] == 131
    for conf in ("etc/scitagd/scitagd.yaml", "etc/scitagd/collector.yaml"):
        r = run39(py39, root, "conf", "--config", str(root / conf))
        assert r.returncode == 0 and "registry:" in r.stdout, r.stderr
    # Every compiled dependency loads on 3.9, from the private tree and nowhere else.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import msgspec, uvloop, aiohttp, yaml, multidict, yarl,"
            " frozenlist, propcache, prometheus_client, pyroute2, scitagd.daemon, scitagd.collector.service;"
            " assert yaml.__with_libyaml__; print('\\n'.join(m.__file__ for m in"
            " (msgspec, uvloop, aiohttp, yaml, multidict, yarl)))")
    r = py39.run("-I", "-c", code, str(root / PRIV), timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(root / PRIV)) for line in r.stdout.split()), r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(p: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        if p.poll() is not None:
            raise AssertionError(p.stdout.read() if p.stdout else "exited")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.1)


def stop(p: subprocess.Popen[str]) -> str:
    time.sleep(0.5)  # long enough for the main task to be waiting on its stop event
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(15)
    finally:
        if p.poll() is None:
            p.kill()
    out = p.stdout.read() if p.stdout else ""
    assert rc == 0 and "Traceback" not in out, out
    return out


def start39(py39: python39.Python39, root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*py39.argv, "-I", str(root / "usr/bin/scitagd"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **py39.env})


def test_bundled_daemon_runs_under_python39(py39: python39.Python39, root: Path, tmp_path: Path) -> None:
    """aiohttp, uvloop and msgspec on 3.9 for real: a flow through the REST API, then SIGTERM."""
    api, prom = _free_port(), _free_port()
    conf = tmp_path / "scitagd.yaml"
    conf.write_text(f"""plugins:
  api: {{bindAddress: 127.0.0.1, bindPort: {api}}}
  namedPipe: {{pipePath: {tmp_path / 'flowd'}}}
backends:
  prometheus: {{bindAddress: 127.0.0.1, port: {prom}}}
registry: {{cacheFile: {tmp_path / 'registry.json'}}}
""")
    p = start39(py39, root, "run", "--config", str(conf))
    try:
        url = f"http://127.0.0.1:{api}"
        wait_http(p, url + "/healthz")
        body = json.dumps({"state": "start", "protocol": "tcp", "src-ip": "2001:db8::1", "src-port": 2811,
                           "dst-ip": "2001:db8::2", "dst-port": 40000, "experiment": "atlas",
                           "activity": "Data Brokering"}).encode()
        req = urllib.request.Request(url + "/api/v1/flows", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 202 and json.loads(r.read())["scitag"] == 131
        assert json.loads(urllib.request.urlopen(url + "/api/v1/flows", timeout=5).read())["count"] == 1
    finally:
        out = stop(p)
    assert "loop=uvloop" in out


def test_bundled_collector_runs_under_python39(py39: python39.Python39, root: Path, tmp_path: Path) -> None:
    udp, web = _free_port(), _free_port()
    conf = tmp_path / "collector.yaml"
    conf.write_text(f"""collector:
  udp: {{bindAddresses: [127.0.0.1], port: {udp}}}
  store: {{path: {tmp_path / 'c.sqlite'}, flushInterval: 0.05}}
  http: {{bindAddress: 127.0.0.1, port: {web}}}
""")
    p = start39(py39, root, "collector", "--config", str(conf))
    try:
        wait_http(p, f"http://127.0.0.1:{web}/healthz")
    finally:
        stop(p)


def test_python39_from_debian_packages(rpms: Dict[str, Path], root: Path) -> None:
    """The registry route to 3.9 works on a machine that has none: Debian 11's packages."""
    try:
        py = python39.from_debian()
    except RuntimeError as e:
        pytest.skip(f"Debian 11's python3.9 not reachable: {e}")
    r = run39(py, root, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"scitagd {VERSION}", r.stderr
    assert "3.9" in py.run("-c", "import sys; print(sys.version)").stdout


def test_wheel_tree_is_what_pip_would_install(root: Path) -> None:
    """scitagd's own files in the package are the wheel's: package data (eBPF objects, registry
    snapshot, dashboard) included."""
    rec = (root / PRIV / f"scitagd-{VERSION}.dist-info" / "RECORD").read_text().splitlines()
    listed = {line.split(",")[0] for line in rec if line.startswith("scitagd/")}
    for want in ("scitagd/bpf/marker.bpf.o", "scitagd/bpf/watcher.bpf.o", "scitagd/collector/static/index.html"):
        assert want in listed or not (REPO / "src" / want).exists(), want
    for f in listed:
        assert (root / PRIV / f).exists(), f
