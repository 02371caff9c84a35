# SPDX-License-Identifier: Apache-2.0
"""Compile the eBPF programs: `python -m scitagd.bpf.build [--check]`.

The objects are shipped as package data so that hosts need no compiler. The build is
reproducible (relative source paths, DWARF stripped, BTF kept): --check rebuilds into a
temporary directory and compares bytes with the shipped objects.

Each program is built twice: `NAME.bpf.o`, and `NAME-debug.bpf.o` with -DSCITAGD_DEBUG, which
reports its decisions in the kernel's trace buffer (debugMode: true). The watcher is built for
BPF ISA v3 (kernel >= 5.12: atomic fetch-and-add, for tag lists handed out in turn).
"""

from __future__ import annotations

import argparse
import filecmp
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["HERE", "OBJECTS", "SOURCES", "build", "clang_version", "main"]

HERE = Path(__file__).resolve().parent
SOURCES = ["marker.bpf.c", "watcher.bpf.c"]
_CPU = {"marker.bpf.c": [], "watcher.bpf.c": ["-mcpu=v3"]}
# object name -> (source, extra clang flags)
OBJECTS = {src.replace(".bpf.c", suffix + ".bpf.o"): (src, _CPU[src] + flags)
           for src in SOURCES for suffix, flags in (("", []), ("-debug", ["-DSCITAGD_DEBUG"]))}


def clang_version() -> str:
    out = subprocess.run(["clang", "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].strip()


def _arch_include() -> str:
    machine = {"x86_64": "x86_64", "aarch64": "aarch64", "ppc64le": "powerpc64le"}.get(
        platform.machine(), platform.machine())
    return f"/usr/include/{machine}-linux-gnu"


def build(out_dir: Path) -> list[Path]:
    strip = shutil.which("llvm-strip") or shutil.which("llvm-strip-14")
    if not shutil.which("clang") or not strip:
        raise SystemExit("clang and llvm-strip are needed to build (Debian: apt-get install clang llvm "
                         "libbpf-dev)")
    built = []
    for name, (src, flags) in OBJECTS.items():
        obj = out_dir / name
        # Run in the source directory with a relative name: the path lands in BTF line info.
        # Paths of the checkout must not land in the object (BTF line info keeps file names).
        subprocess.run(["clang", "-O2", "-g", "-target", "bpf", *flags, "-Wall", "-Werror",
                        f"-fdebug-prefix-map={HERE}=.", "-fdebug-compilation-dir=.",
                        f"-I{_arch_include()}", "-c", src, "-o", str(obj)], cwd=HERE, check=True)
        subprocess.run([strip, "-g", str(obj)], check=True)
        built.append(obj)
    return built


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="rebuild and compare with shipped objects")
    a = ap.parse_args()
    if not a.check:
        for obj in build(HERE):
            print(obj)
        (HERE / "BUILD-INFO").write_text(clang_version() + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        bad = [o.name for o in build(Path(tmp)) if not filecmp.cmp(o, HERE / o.name, shallow=False)]
    if bad:
        print("shipped objects differ from a rebuild of the source: " + ", ".join(bad)
              + f" (shipped by {(HERE / 'BUILD-INFO').read_text().strip()}, rebuilt with "
              + clang_version() + "); run python -m scitagd.bpf.build", file=sys.stderr)
        return 1
    print("shipped objects match the source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
