# SPDX-License-Identifier: Apache-2.0
"""CLI parity with flowd-go: `scitagd version`, `pidFile` (flowd-go's `pidPath`), `--conf`, and
running on flowd-go's /etc/flowd-go/conf.yaml when scitagd has no file of its own."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import scitagd
from scitagd.errors import CommandError, StartupError
from scitagd.pidfile import PidFile

PKG = Path(scitagd.__file__).parent


def test_version_text_and_json() -> None:
    r = subprocess.run([sys.executable, "-m", "scitagd", "version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"scitagd {scitagd.__version__}\n")
    j = json.loads(subprocess.run([sys.executable, "-m", "scitagd", "version", "--json"], capture_output=True,
                                  text=True, check=True).stdout)
    assert j["version"] == scitagd.__version__
    shipped = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (PKG / "bpf").glob("*.bpf.o")}
    assert j["ebpf_objects"] == shipped and len(shipped) == 4
    for name, digest in shipped.items():
        assert f"{name:<22} sha256 {digest}" in r.stdout
    assert j["ebpf_built_by"] == (PKG / "bpf" / "BUILD-INFO").read_text().strip()
    assert j["libbpf"]["version"] is None or j["libbpf"]["version"][0].isdigit()
    assert j["kernel"] == os.uname().release
    head = subprocess.run(["git", "-C", str(PKG), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and (PKG / "COMMIT").exists() is False:
        assert j["commit"] == head.stdout.strip() and j["from"] == "git checkout"


def test_pid_file_written_atomically_and_removed(tmp_path: Path) -> None:
    p = PidFile(str(tmp_path / "d.pid"))
    p.acquire()
    f = tmp_path / "d.pid"
    assert f.read_text() == f"{os.getpid()}\n" and stat.S_IMODE(f.stat().st_mode) == 0o644
    assert [x.name for x in tmp_path.iterdir()] == ["d.pid"]  # no temporary left
    p.acquire()  # our own id: fine
    p.release()
    assert not f.exists()


def test_pid_file_refuses_a_live_daemon_and_replaces_stale_ones(tmp_path: Path) -> None:
    f = tmp_path / "d.pid"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "scitagd-imitation"])
    try:
        f.write_text(f"{other.pid}\n")
        with pytest.raises(StartupError, match=rf"pidFile {f}: process {other.pid} is running .*scitagd-imitation"):
            PidFile(str(f)).acquire()
        assert f.read_text() == f"{other.pid}\n"
    finally:
        other.kill()
        other.wait()
    # dead now: replaced
    p = PidFile(str(f))
    p.acquire()
    assert f.read_text() == f"{os.getpid()}\n"
    p.release()
    # a live process that is not a daemon of ours (the id reused): replaced, with a warning
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        f.write_text(f"{sleeper.pid}\n")
        p = PidFile(str(f))
        p.acquire()
        assert f.read_text() == f"{os.getpid()}\n"
        p.release()
    finally:
        sleeper.kill()
        sleeper.wait()
    f.write_text("garbage")
    PidFile(str(f)).acquire()
    with pytest.raises(StartupError, match="cannot write in"):
        PidFile(str(tmp_path / "missing-dir" / "d.pid")).acquire()


def test_second_daemon_with_the_same_pid_file_stops_before_binding(run_daemon: Any, tmp_path: Path) -> None:
    from ..conftest import free_port

    api = free_port()
    conf = f"pidFile: {tmp_path}/s.pid\nplugins:\n  api: {{bindPort: {api}}}\n"
    d1 = run_daemon(conf)
    assert (tmp_path / "s.pid").read_text() == f"{d1.proc.pid}\n"
    d2 = run_daemon(conf, wait_for=None)
    assert d2.proc.wait(20) == 2
    assert f"scitagd: error: pidFile {tmp_path}/s.pid: process {d1.proc.pid} is running" in d2.log()
    assert "address already in use" not in d2.log().lower()
    assert d1.stop()[0] == 0 and not (tmp_path / "s.pid").exists()


def test_kill_9_leaves_a_stale_file_the_next_start_replaces(run_daemon: Any, tmp_path: Path) -> None:
    conf = f"pidPath: {tmp_path}/s.pid\nplugins:\n  namedPipe: {{pipePath: {tmp_path}/np}}\n"
    d1 = run_daemon(conf)
    d1.proc.send_signal(signal.SIGKILL)
    d1.proc.wait()
    d2 = run_daemon(conf)
    assert (tmp_path / "s.pid").read_text() == f"{d2.proc.pid}\n"
    assert f"stale pid file replaced path={tmp_path}/s.pid pid={d1.proc.pid}" in d2.log()


def test_config_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scitagd import cli, compat

    mine, theirs = tmp_path / "scitagd.yaml", tmp_path / "conf.yaml"
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", str(mine))
    monkeypatch.setattr(compat, "FLOWD_GO_CONFIG", str(theirs))
    with pytest.raises(CommandError, match=f"neither {mine} nor flowd-go's {theirs} exists"):
        cli._config_path(None)
    theirs.write_text("plugins: {}\n")
    assert cli._config_path(None) == (str(theirs), True)
    mine.write_text("plugins: {}\n")
    assert cli._config_path(None) == (str(mine), False)
    assert cli._config_path("/x.yaml") == ("/x.yaml", False)


def test_run_on_flowd_gos_file_says_so(tmp_path: Path) -> None:
    """No /etc/scitagd/scitagd.yaml, a flowd-go file in flowd-go's place: `run` takes it, says so
    and applies flowd-go's defaults where scitagd's differ (its pid file)."""
    theirs = tmp_path / "conf.yaml"
    theirs.write_text(f"workDir: /var/cache/flowd-go\nplugins:\n  namedPipe: {{pipePath: {tmp_path}/np}}\n")
    pid = tmp_path / "flowd-go.pid"
    code = ("import sys\nfrom scitagd import cli, compat\n"
            f"cli.DEFAULT_CONFIG = {str(tmp_path / 'absent.yaml')!r}\ncompat.FLOWD_GO_CONFIG = {str(theirs)!r}\n"
            f"compat.FLOWD_GO_PID = {str(pid)!r}\nsys.exit(cli.main(['run']))\n")
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while "scitagd.daemon started" not in log.read_text() and time.monotonic() < deadline:
            assert p.poll() is None, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        assert f"running on flowd-go's configuration path={theirs}" in text
        assert f"scitagd config migrate --from flowd-go {theirs}" in text
        assert "config key=workDir not used" in text
        assert f"config key=pidPath not given: {pid} is written" in text
        assert pid.read_text() == f"{p.pid}\n"
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    assert not pid.exists()


def test_conf_alias() -> None:
    r = subprocess.run([sys.executable, "-m", "scitagd", "conf", "--conf", "/dev/null"], capture_output=True, text=True)
    assert r.returncode == 0 and "plugins" in r.stdout


@pytest.mark.root
@pytest.mark.slow
def test_marker_clean_target_interface(tmp_path: Path) -> None:
    """flowd-go's `marker clean --target-interface IF [--remove-qdisc=true]`: only that interface;
    the pinned maps stay for the others."""
    from ..lab import Lab

    lab = Lab(tmp_path)
    try:
        d = lab.daemon("markingStrategy: label", interfaces="[a0, lo]")
        d.wait_log("attached interface=lo")
        d.wait_log("attached interface=a0")
        d.stop(signal.SIGKILL)

        def ours() -> set[str]:
            code = ("import json, socket\nfrom scitagd.bpf import loader\nprint(json.dumps([n for i, n in "
                    "socket.if_nameindex() if loader.query(i) is not None]))")
            r = subprocess.run(lab.a.netonly(sys.executable, "-c", code), capture_output=True, text=True, check=True)
            return set(json.loads(r.stdout))

        assert ours() == {"a0", "lo"}
        cli = [sys.executable, "-m", "scitagd", "marker", "clean", "--pin-path", lab.pin]
        r = subprocess.run(lab.a.netonly(*cli, "--target-interface", "a0", "--remove-qdisc=true"), capture_output=True,
                           text=True)
        assert r.returncode == 0 and "detached a0" in r.stdout, r.stdout + r.stderr
        assert ours() == {"lo"} and Path(lab.pin).is_dir()
        r = subprocess.run(lab.a.netonly(*cli), capture_output=True, text=True)
        assert r.returncode == 0 and "detached lo" in r.stdout and ours() == set() and not Path(lab.pin).exists()
    finally:
        lab.close()
