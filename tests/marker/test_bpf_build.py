# SPDX-License-Identifier: Apache-2.0
"""The shipped eBPF objects are what the C source compiles to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import scitagd.bpf

BPF = Path(scitagd.bpf.__file__).parent


def test_objects_are_shipped_as_package_data() -> None:
    obj = BPF / "marker.bpf.o"
    assert obj.exists() and obj.read_bytes()[:4] == b"\x7fELF"
    assert (BPF / "BUILD-INFO").read_text().startswith(("Debian clang", "clang", "Ubuntu clang"))


@pytest.mark.skipif(not shutil.which("clang"), reason="clang not installed (scripts/setup.sh --test "
                    "installs it as root)")
def test_shipped_objects_match_source() -> None:
    shipped_by = (BPF / "BUILD-INFO").read_text().strip()
    here = subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    if here.split(" version ")[-1].split(".")[0] != shipped_by.split(" version ")[-1].split(".")[0]:
        pytest.skip(f"objects were built with {shipped_by}; this host has {here}: bytes differ "
                    "across clang major versions")
    r = subprocess.run([sys.executable, "-m", "scitagd.bpf.build", "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not shutil.which("clang-format"), reason="clang-format not installed (scripts/setup.sh "
                    "--test installs it as root)")
def test_sources_follow_clang_format() -> None:
    repo = BPF.parents[2]
    for src in sorted(BPF.glob("*.[ch]")):
        r = subprocess.run(["clang-format", f"--style=file:{repo / '.clang-format'}", str(src)],
                           capture_output=True, text=True, check=True)
        assert r.stdout == src.read_text(), f"{src.name}: run clang-format -i (see .clang-format)"
