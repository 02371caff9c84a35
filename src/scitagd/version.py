# SPDX-License-Identifier: Apache-2.0
"""`scitagd version`: what is running, for bug reports and for checking a deployment: the package
version, the source commit when known, the sha256 of each shipped eBPF object (and the compiler
that built them), the libbpf found, Python and the kernel.

The commit comes from `scitagd/COMMIT` when a package build wrote one (`git rev-parse HEAD >
src/scitagd/COMMIT` before building the wheel), else from git when running from a checkout.
flowd-go's `version` printed its commit and version (empty in its release builds).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

from . import __version__

__all__ = ["info", "main"]

PKG = Path(__file__).resolve().parent


def _commit() -> Dict[str, Any]:
    f = PKG / "COMMIT"
    if f.is_file():
        text = f.read_text().strip()[:64]
        return {"commit": text or None, "from": "COMMIT file"}
    repo = PKG.parent.parent
    if not (repo / ".git").exists():
        return {"commit": None, "from": None}
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "from": None}
    if head.returncode != 0:
        return {"commit": None, "from": None}
    return {"commit": head.stdout.strip(), "from": "git checkout", "modified": bool(dirty.stdout.strip())}


def _libbpf() -> Dict[str, Any]:
    try:
        import ctypes

        from .bpf import libbpf as lb

        L = lb.lib()
        L.libbpf_version_string.restype = ctypes.c_char_p
        return {"version": L.libbpf_version_string().decode().lstrip("v"), "error": None}
    except Exception as e:  # a missing or broken library is what this command is asked to show
        return {"version": None, "error": str(e)}


def info() -> Dict[str, Any]:
    objects = {}
    for obj in sorted((PKG / "bpf").glob("*.bpf.o")):
        objects[obj.name] = hashlib.sha256(obj.read_bytes()).hexdigest()
    built: Optional[str] = None
    bi = PKG / "bpf" / "BUILD-INFO"
    if bi.is_file():
        built = bi.read_text().strip()
    return {
        "version": __version__,
        **_commit(),
        "python": platform.python_version(),
        "libbpf": _libbpf(),
        "ebpf_objects": objects,
        "ebpf_built_by": built,
        "kernel": os.uname().release,
    }


def main(as_json: bool = False) -> int:
    d = info()
    if as_json:
        import json

        print(json.dumps(d))
        return 0
    print(f"scitagd {d['version']}")
    commit = d["commit"] or "unknown"
    if d.get("modified"):
        commit += " (with uncommitted changes)"
    print(f"commit   {commit}" + (f"  [{d['from']}]" if d["from"] else ""))
    print(f"python   {d['python']}")
    lb = d["libbpf"]
    print(f"libbpf   {lb['version']}" if lb["version"] else f"libbpf   not usable: {lb['error']}")
    print(f"kernel   {d['kernel']}")
    print(f"eBPF objects (built by {d['ebpf_built_by'] or 'unknown'}):")
    for name, digest in d["ebpf_objects"].items():
        print(f"  {name:<22} sha256 {digest}")
    return 0
