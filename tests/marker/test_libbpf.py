# SPDX-License-Identifier: Apache-2.0
"""libbpf through ctypes: a clear error when it is missing or too old; struct layouts."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from scitagd.bpf import libbpf as lb


def test_missing_library_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lb, "_lib", None)
    monkeypatch.setattr(lb.ctypes.util, "find_library", lambda name: None)

    def no_lib(*a: Any, **kw: Any) -> Any:
        raise OSError("libbpf.so.1: cannot open shared object file")

    monkeypatch.setattr(lb.ctypes, "CDLL", no_lib)
    with pytest.raises(lb.LibbpfMissing, match="install libbpf >= 1.0 .*apt-get install libbpf1"):
        lb.lib()


def test_too_old_library(monkeypatch: pytest.MonkeyPatch) -> None:
    class Old:
        def libbpf_major_version(self) -> int:
            return 0

        def libbpf_minor_version(self) -> int:
            return 8

    monkeypatch.setattr(lb, "_lib", None)
    monkeypatch.setattr(lb.ctypes, "CDLL", lambda *a, **kw: Old())
    with pytest.raises(lb.LibbpfMissing, match="libbpf 0.8 is too old"):
        lb.lib()


def test_struct_layouts_match_libbpf() -> None:
    # struct bpf_tc_hook and bpf_tc_opts end in `size_t :0`, padding them to 8 bytes.
    assert ctypes.sizeof(lb.TcHook) == 24
    assert ctypes.sizeof(lb.TcOpts) == 32
    # run_time_ns/run_cnt of struct bpf_prog_info (uapi): offsets 192 and 200
    assert lb.ProgInfo.run_time_ns.offset == 192 and lb.ProgInfo.run_cnt.offset == 200


def test_system_libbpf_loads() -> None:
    try:
        L = lb.lib()
    except lb.LibbpfMissing as e:
        pytest.skip(str(e))
    assert L.libbpf_major_version() >= 1
    assert L.libbpf_num_possible_cpus() >= 1


def test_errors_carry_errno_names() -> None:
    with pytest.raises(lb.BpfError, match="attach: ENOENT"):
        lb.check(-2, "attach")
    assert lb.check(3, "x") == 3
