# SPDX-License-Identifier: Apache-2.0
"""A CPython 3.9 (EL9's python3) on a Debian 12 machine, from what is here or from Debian's packages.

In order: $SCITAGD_PYTHON39; a python3.9 already installed (PATH, pyenv's); Debian 11's
python3.9 packages, downloaded with apt-get through a private source list (the host's apt
configuration and package database are not touched) and unpacked into a cache directory. Debian
12 itself has no 3.9; PyPI carries no CPython builds (the "standalone Python" packages there and
on npm download them from GitHub at install time, which this network refuses).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

CACHE = Path(os.environ.get("SCITAGD_PY39_CACHE", "/var/cache/scitagd-test/python3.9-bullseye"))
DEBS = ["python3.9-minimal", "libpython3.9-minimal", "libpython3.9-stdlib", "libssl1.1", "libffi7", "libmpdec3"]


@dataclass
class Python39:
    argv: List[str]
    env: Dict[str, str]
    origin: str

    def run(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env}
        return subprocess.run([*self.argv, *args], capture_output=True, text=True, env=env,
                              **kw)  # type: ignore[call-overload]


def _is39(exe: str, env: Optional[Dict[str, str]] = None) -> bool:
    try:
        r = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"], capture_output=True,
                           text=True, timeout=30, env={**os.environ, **(env or {})})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.stdout.strip() == "True"


def installed() -> Optional[Python39]:
    env_exe = os.environ.get("SCITAGD_PYTHON39")
    candidates: List[Tuple[Optional[str], str]] = [(env_exe, "$SCITAGD_PYTHON39")] if env_exe else []
    candidates.append((shutil.which("python3.9"), "python3.9 on PATH"))
    candidates += [(p, "pyenv") for p in sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9"))]
    for exe, origin in candidates:
        if exe and _is39(exe):
            return Python39([exe], {}, f"{origin}: {exe}")
    return None


def _debian_root(root: Path) -> Optional[Python39]:
    exe = root / "usr" / "bin" / "python3.9"
    lib = f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"
    env = {"LD_LIBRARY_PATH": lib}
    if exe.exists() and _is39(str(exe), env):
        return Python39([str(exe)], env, f"Debian 11 packages ({', '.join(DEBS)}) unpacked in {root}")
    return None


def from_debian(cache: Path = CACHE) -> Python39:
    """Debian 11 (bullseye) python3.9, cached. Raises RuntimeError saying why it cannot."""
    found = _debian_root(cache / "root")
    if found:
        return found
    if os.uname().machine != "x86_64":
        raise RuntimeError("only set up for x86_64 hosts")
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("apt-get/dpkg-deb missing")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "lists" / "partial").mkdir(parents=True)
        (t / "cache" / "archives" / "partial").mkdir(parents=True)
        (t / "sources.list").write_text("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                                        "http://deb.debian.org/debian bullseye main\n")
        opts = ["-o", f"Dir::Etc::SourceList={t}/sources.list", "-o", "Dir::Etc::SourceParts=/dev/null",
                "-o", f"Dir::State::Lists={t}/lists", "-o", f"Dir::Cache={t}/cache",
                "-o", "Dir::State::status=/dev/null", "-o", "APT::Sandbox::User=root", "-qq"]
        for cmd in (["update"], ["download", *DEBS]):
            r = subprocess.run(["apt-get", *opts, *cmd], capture_output=True, text=True, cwd=t, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"apt-get {cmd[0]} failed: {(r.stderr or r.stdout).strip()[-500:]}")
        root = cache / "root.new"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for deb in sorted(t.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        shutil.rmtree(cache / "root", ignore_errors=True)
        root.rename(cache / "root")
    found = _debian_root(cache / "root")
    if not found:
        raise RuntimeError(f"unpacked Debian's python3.9 in {cache / 'root'} does not run")
    return found


def find() -> Python39:
    """Any CPython 3.9; RuntimeError with every reason when there is none."""
    p = installed()
    if p:
        return p
    return from_debian()
