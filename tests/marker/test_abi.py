# SPDX-License-Identifier: Apache-2.0
"""The Python mirror of the kernel structs (bpf/abi.py) against the BTF in the shipped objects:
a field added, moved or resized on one side only fails here, not on the wire."""

from __future__ import annotations

from pathlib import Path

import pytest

import scitagd.bpf
from scitagd.bpf import abi
from scitagd.bpf import libbpf as lb

BPF = Path(scitagd.bpf.__file__).parent
OBJECTS = ["marker.bpf.o", "watcher.bpf.o", "marker-debug.bpf.o", "watcher-debug.bpf.o"]


def _lib_or_skip() -> None:
    try:
        lb.lib()
    except lb.LibbpfMissing as e:
        pytest.skip(f"libbpf.so.1 not installed: {e}")


@pytest.mark.parametrize("layout", abi.LAYOUTS, ids=lambda lo: lo.c_name)
def test_layout_matches_btf(layout: abi.Layout) -> None:
    _lib_or_skip()
    found = [(obj, lb.btf_struct(str(BPF / obj), layout.c_name)) for obj in OBJECTS]
    described = [(obj, f) for obj, f in found if f is not None]
    assert described, f"struct {layout.c_name} is in no shipped object's BTF"
    for obj, (size, offsets) in described:
        assert size == layout.size, f"{obj}: struct {layout.c_name} is {size} bytes, the mirror {layout.size}"
        assert offsets == layout.offsets, f"{obj}: struct {layout.c_name} members differ"


def test_btf_reader_sees_a_mismatch() -> None:
    """The check can fail: a struct laid out differently from the kernel's is caught."""
    _lib_or_skip()
    wrong = abi.Layout("flow_key", [("saddr", "16s"), ("daddr", "16s"), ("dport", "H"), ("sport", "H"),
                                    ("proto", "B"), ("pad", "3x")])
    got = lb.btf_struct(str(BPF / "marker.bpf.o"), "flow_key")
    assert got is not None and got[1] != wrong.offsets


def test_flow_key_packing() -> None:
    k6 = abi.flow_key("tcp", "2001:db8::1", 1094, "2001:db8::2", 40000)
    assert len(k6) == abi.FLOW_KEY.size
    assert abi.unpack_flow_key(k6) == ("tcp", "2001:db8::1", 1094, "2001:db8::2", 40000)
    k4 = abi.flow_key("udp", "192.0.2.1", 53, "192.0.2.2", 5353)
    assert k4[:4] == bytes([192, 0, 2, 1]) and k4[4:16] == bytes(12)
    import socket

    assert abi.unpack_flow_key(k4, socket.AF_INET) == ("udp", "192.0.2.1", 53, "192.0.2.2", 5353)
