# SPDX-License-Identifier: Apache-2.0
"""The systemd units, sysusers.d and tmpfiles.d files, checked by systemd's own tools (which run
without systemd as PID 1)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import pytest

from .unitsandbox import REPO, parse_unit

PKG = REPO / "packaging"
UNITS = ["scitagd.service", "scitagd-collector.service"]
need = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                          reason="systemd-analyze missing (Debian: apt-get install systemd)")


def staged(tmp: Path) -> Dict[str, str]:
    """Copies of the units whose ExecStart= binary exists (verify checks it), and MANPATH with
    the manual pages their Documentation= names."""
    fake = tmp / "bin" / "scitagd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    for u in UNITS:
        (tmp / u).write_text((PKG / "systemd" / u).read_text().replace("/usr/bin/scitagd", str(fake)))
    for page in (PKG / "man").iterdir():
        d = tmp / "man" / f"man{page.suffix[1:]}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, d)
    return {**os.environ, "MANPATH": str(tmp / "man"), "SYSTEMD_LOG_COLOR": "0"}


@need
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    env = staged(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", *UNITS], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    # The check can fail: verify only warns (exit 0) on a typo, hence the empty stderr above.
    bad = tmp_path / "scitagd-bad.service"
    bad.write_text((tmp_path / UNITS[0]).read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    r = subprocess.run(["systemd-analyze", "verify", bad.name], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "Unknown key 'ProtectSytem' in section [Service]" in r.stderr


@need
@pytest.mark.parametrize("unit,limit", [("scitagd.service", 2.2), ("scitagd-collector.service", 1.8)])
def test_exposure(tmp_path: Path, unit: str, limit: float) -> None:
    """systemd's own score of the sandbox (0 best, 10 worst); the daemon's capabilities, netlink
    and host network are what keep it above the collector's."""
    env = staged(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= limit, r.stdout


def test_unit_settings() -> None:
    """What the issue asks of each unit, as the files say it (the sandbox test runs them)."""
    d = parse_unit(PKG / "systemd" / "scitagd.service")
    c = parse_unit(PKG / "systemd" / "scitagd-collector.service")
    for u in (d, c):
        for key, value in [("Type", "notify"), ("User", "scitagd"), ("NoNewPrivileges", "yes"),
                           ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                           ("LockPersonality", "yes"), ("MemoryDenyWriteExecute", "yes"),
                           ("ExecReload", "/bin/kill -HUP $MAINPID"), ("StateDirectory", "scitagd"),
                           ("CacheDirectory", "scitagd")]:
            assert u[f"Service.{key}"] == [value], key
        assert u["Service.WatchdogSec"]
    assert d["Service.AmbientCapabilities"] == d["Service.CapabilityBoundingSet"] == ["CAP_BPF CAP_NET_ADMIN CAP_PERFMON"]
    assert c["Service.CapabilityBoundingSet"] == [] and c.get("Service.AmbientCapabilities", []) == []
    assert d["Service.RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_NETLINK AF_UNIX"]
    assert d["Service.SystemCallFilter"] == ["@system-service bpf"]
    assert d["Service.RuntimeDirectory"] == ["scitagd"] and "/sys/fs/bpf/scitagd" in d["Service.ReadWritePaths"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers(tmp_path: Path) -> None:
    """The sysusers.d file creates the user and its group in an empty root."""
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(PKG / "sysusers.d" / "scitagd.conf")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    user = [line for line in (tmp_path / "etc" / "passwd").read_text().splitlines() if line.startswith("scitagd:")]
    assert len(user) == 1
    _, _, uid, gid, gecos, home, shell = user[0].split(":")
    assert int(uid) < 1000 and home == "/var/lib/scitagd" and shell.endswith("nologin") and gecos == "SciTags daemon"
    assert f"scitagd:x:{gid}:" in (tmp_path / "etc" / "group").read_text()


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="systemd-tmpfiles missing")
def test_tmpfiles(tmp_path: Path) -> None:
    """/run/flowd (flowd-go's and StoRM's default pipe) points at the unit's pipe; an existing
    /run/flowd is left alone."""
    conf = str(PKG / "tmpfiles.d" / "scitagd.conf")
    r = subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}", conf], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.readlink(tmp_path / "run" / "flowd") == "/run/scitagd/flowd"
    other = tmp_path / "other"
    (other / "run").mkdir(parents=True)
    os.mkfifo(other / "run" / "flowd")
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={other}", conf], capture_output=True, text=True)
    assert not (other / "run" / "flowd").is_symlink()
