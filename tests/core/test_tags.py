# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scitagd import tags
from scitagd.tags import (
    TagError,
    decode_ext_option,
    decode_flow_label,
    decode_scitag,
    encode_ext_option,
    encode_flow_label,
    encode_scitag,
    gather_entropy,
    spread_entropy,
)

# SPEC.md section 2: (exp, act, scitag, label with entropy 0, label with entropy all ones)
VECTORS = [
    (1, 1, 65, 0x20004, 0xE0107),
    (2, 16, 144, 0x10040, 0xD0143),
    (3, 14, 206, 0x30038, 0xF013B),
    (5, 10, 330, 0x28028, 0xE812B),
    (511, 63, 32767, 0x3FEFC, 0xFFFFF),
]


@pytest.mark.parametrize("exp,act,scitag,label0,label1", VECTORS)
def test_spec_vectors(exp: int, act: int, scitag: int, label0: int, label1: int) -> None:
    assert encode_scitag(exp, act) == scitag
    assert decode_scitag(scitag) == (exp, act)
    assert encode_flow_label(exp, act, 0) == label0
    assert encode_flow_label(exp, act, 31) == label1
    assert decode_flow_label(label0) == (exp, act)
    assert decode_flow_label(label1) == (exp, act)
    assert label0 & tags.FLOW_LABEL_MASK == label0
    assert label1 & ~tags.FLOW_LABEL_MASK & 0xFFFFF == tags.ENTROPY_MASK


def test_entropy_positions_and_mask_partition_the_label() -> None:
    assert tags.ENTROPY_MASK == 0b11000000000100000011
    assert tags.ENTROPY_MASK | tags.FLOW_LABEL_MASK == 0xFFFFF
    assert tags.ENTROPY_MASK & tags.FLOW_LABEL_MASK == 0


def test_experiment_bits_are_reversed() -> None:
    # exp bit 0 lands in label position 3 (from the MSB, 1-based), i.e. integer bit 17.
    assert encode_flow_label(1, 0) == 1 << 17
    assert encode_flow_label(256, 0) == 1 << 9


def test_round_trip_all_pairs() -> None:
    seen = set()
    for exp in range(1, 512):
        for act in range(64):
            label = encode_flow_label(exp, act)
            assert decode_flow_label(label) == (exp, act)
            assert decode_scitag(encode_scitag(exp, act)) == (exp, act)
            seen.add(label)
    assert len(seen) == 511 * 64


@given(st.integers(1, 511), st.integers(0, 63), st.integers(0, 31))
def test_round_trip_random_entropy(exp: int, act: int, ent: int) -> None:
    label = encode_flow_label(exp, act, ent)
    assert decode_flow_label(label) == (exp, act)
    assert gather_entropy(label) == ent
    assert label & tags.FLOW_LABEL_MASK == encode_flow_label(exp, act, 0)


@given(st.integers(0, 31))
def test_entropy_spread_gather(ent: int) -> None:
    assert gather_entropy(spread_entropy(ent)) == ent
    assert spread_entropy(ent) & ~tags.ENTROPY_MASK == 0


@given(st.integers(1, 511), st.integers(0, 63), st.sampled_from([6, 17, 59, 60]))
def test_ext_option_round_trip(exp: int, act: int, nh: int) -> None:
    hdr = encode_ext_option(exp, act, nh)
    assert len(hdr) == 8
    assert hdr[1] == 0 and hdr[2] == 0x1E and hdr[3] == 3 and hdr[7] == 0
    assert decode_ext_option(hdr) == (nh, exp, act)


def test_ext_option_layout() -> None:
    assert encode_ext_option(2, 16, 6) == bytes([6, 0, 0x1E, 3, 0, 2, 16, 0])
    assert encode_ext_option(300, 5, 60) == bytes([60, 0, 0x1E, 3, 1, 44, 5, 0])
    with pytest.raises(TagError, match="not a scitags option"):
        decode_ext_option(bytes([6, 0, 0x1F, 3, 0, 2, 16, 0]))


@pytest.mark.parametrize("exp,act", [(0, 1), (512, 1), (1, 64), (1, -1)])
def test_out_of_range(exp: int, act: int) -> None:
    with pytest.raises(TagError, match="out of range"):
        encode_flow_label(exp, act)


def test_scitag_that_is_a_flow_label() -> None:
    with pytest.raises(TagError, match="looks like a flow label.*experiment 3, activity 14"):
        decode_scitag(0x30038)
    with pytest.raises(TagError, match="expected 64..65535"):
        decode_scitag(63)
    assert decode_scitag(64) == (1, 0)  # dCache's default


def scitagd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scitagd", *args], capture_output=True, text=True)


def test_cli_encode_names_folded() -> None:
    r = scitagd("tag", "encode", "ATLAS", "data_brokering", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {
        "experiment_id": 2, "activity_id": 3, "experiment": "atlas", "activity": "Data Brokering",
        "scitag": 131, "flow_label": encode_flow_label(2, 3), "flow_label_mask": 0x3FEFC,
    }


def test_cli_decode_forms() -> None:
    for args in (["--scitag", "206"], ["--scitag", "0xce"], ["--flow-label", "0x30038"],
                 ["--flow-label", "0xf013b"]):
        r = scitagd("tag", "decode", *args, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert (out["experiment_id"], out["activity_id"]) == (3, 14), args
        assert out["experiment"] == "cms"
        assert out["flow_label"] == 0x30038


def test_cli_unknown_ids_are_numbers() -> None:
    r = scitagd("tag", "decode", "--scitag", str(400 << 6 | 7), "--json")
    out = json.loads(r.stdout)
    assert out["experiment"] is None and out["activity"] is None and out["experiment_id"] == 400


@pytest.mark.parametrize("args,needle", [
    (["decode", "--scitag", "196664"], "looks like a flow label"),
    (["decode", "--scitag", "12x"], "not a number"),
    (["decode", "--flow-label", "0x100000"], "out of range"),
    (["encode", "atlas", "no such activity"], "unknown activity name"),
    (["encode", "nosuchexp", "1"], "unknown experiment name"),
    (["encode", "512", "1"], "out of range"),
])
def test_cli_errors(args: list[str], needle: str) -> None:
    r = scitagd("tag", *args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
