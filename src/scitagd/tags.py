# SPDX-License-Identifier: Apache-2.0
"""Experiment/activity tags and their three wire forms (SPEC.md sections 1-3).

The scitag integer travels in URLs and HTTP headers, the flow label in every IPv6 packet
header, the extension-header option in an IPv6 Hop-by-Hop or Destination Options header.
"""

from __future__ import annotations

import random
import struct

from .errors import TagError

__all__ = [
    "ENTROPY_MASK", "ENTROPY_POSITIONS", "EXT_OPTION_LEN", "EXT_OPTION_TYPE", "FLOW_LABEL_MASK", "FLOW_LABEL_MAX",
    "NEXT_HEADER_DESTINATION", "NEXT_HEADER_HOP_BY_HOP", "check_activity", "check_experiment",
    "decode_ext_option", "decode_flow_label", "decode_scitag", "encode_ext_option", "encode_flow_label",
    "encode_scitag", "gather_entropy", "parse_int", "random_entropy", "spread_entropy",
]

EXPERIMENT_MIN, EXPERIMENT_MAX = 1, 511  # 9 bits in the flow label
ACTIVITY_MIN, ACTIVITY_MAX = 0, 63  # 6 bits
SCITAG_MIN, SCITAG_MAX = 64, 65535  # 65 is the first "real" tag; dCache also sends 64
FLOW_LABEL_MAX = 0xFFFFF
FLOW_LABEL_MASK = 0x3FEFC  # bits that carry experiment and activity
ENTROPY_POSITIONS = (0, 1, 8, 18, 19)  # integer bit positions of the 5 entropy bits
ENTROPY_MASK = sum(1 << p for p in ENTROPY_POSITIONS)

EXT_OPTION_TYPE = 0x1E  # RFC 4727 experimental: skip if unknown, not changed en route
EXT_OPTION_LEN = 3
NEXT_HEADER_HOP_BY_HOP = 0
NEXT_HEADER_DESTINATION = 60


def _reverse9(v: int) -> int:
    return int(f"{v:09b}"[::-1], 2)


# 512 entries: a table lookup is ~4x faster than reversing bits on every call.
_REV9 = tuple(_reverse9(v) for v in range(512))


def check_experiment(exp: int) -> int:
    if not isinstance(exp, int) or not EXPERIMENT_MIN <= exp <= EXPERIMENT_MAX:
        raise TagError(f"experiment id {exp!r} out of range: expected {EXPERIMENT_MIN}..{EXPERIMENT_MAX}")
    return exp


def check_activity(act: int) -> int:
    if not isinstance(act, int) or not ACTIVITY_MIN <= act <= ACTIVITY_MAX:
        raise TagError(f"activity id {act!r} out of range: expected {ACTIVITY_MIN}..{ACTIVITY_MAX}")
    return act


def encode_scitag(exp: int, act: int) -> int:
    check_activity(act)
    if not isinstance(exp, int) or not 1 <= exp <= SCITAG_MAX >> 6:
        raise TagError(f"experiment id {exp!r} out of range: expected 1..{SCITAG_MAX >> 6}")
    return exp << 6 | act


def decode_scitag(scitag: int) -> tuple[int, int]:
    """Return (experiment, activity); a flow label pasted by mistake gets a pointed error."""
    if scitag > SCITAG_MAX:
        hint = ""
        if scitag <= FLOW_LABEL_MAX:
            e, a = decode_flow_label(scitag)
            hint = f"; it looks like a flow label, which decodes to experiment {e}, activity {a}"
        raise TagError(f"scitag {scitag} out of range: expected {SCITAG_MIN}..{SCITAG_MAX}{hint}")
    if scitag < SCITAG_MIN:
        raise TagError(f"scitag {scitag} out of range: expected {SCITAG_MIN}..{SCITAG_MAX}")
    return scitag >> 6, scitag & 0x3F


def spread_entropy(entropy: int) -> int:
    """Place a 5-bit value on the label's entropy bit positions."""
    if not 0 <= entropy <= 31:
        raise TagError(f"entropy {entropy!r} out of range: expected 0..31")
    out = 0
    for i, pos in enumerate(ENTROPY_POSITIONS):
        if entropy >> i & 1:
            out |= 1 << pos
    return out


def gather_entropy(label: int) -> int:
    return sum(((label >> pos) & 1) << i for i, pos in enumerate(ENTROPY_POSITIONS))


def encode_flow_label(exp: int, act: int, entropy: int = 0) -> int:
    """draft-cc-v6ops-wlcg-flow-label-marking-03 layout; `entropy` is the 5-bit value."""
    check_experiment(exp)
    check_activity(act)
    return _REV9[exp] << 9 | act << 2 | spread_entropy(entropy)


def random_entropy() -> int:
    return random.getrandbits(5)


def decode_flow_label(label: int) -> tuple[int, int]:
    if not 0 <= label <= FLOW_LABEL_MAX:
        raise TagError(f"flow label {label!r} out of range: expected 0..{FLOW_LABEL_MAX:#x}")
    return _REV9[(label >> 9) & 0x1FF], (label >> 2) & 0x3F


def encode_ext_option(exp: int, act: int, next_header: int) -> bytes:
    """One 8-byte Hop-by-Hop/Destination Options header carrying option 0x1E."""
    check_experiment(exp)
    check_activity(act)
    if not 0 <= next_header <= 255:
        raise TagError(f"next header {next_header!r} out of range: expected 0..255")
    return struct.pack("!BBBBHBB", next_header, 0, EXT_OPTION_TYPE, EXT_OPTION_LEN, exp, act, 0)


def decode_ext_option(hdr: bytes) -> tuple[int, int, int]:
    """Return (next_header, experiment, activity) of an 8-byte scitags options header."""
    if len(hdr) < 8:
        raise TagError(f"extension header is {len(hdr)} bytes: expected 8")
    nh, hlen, otype, olen, exp, act, pad = struct.unpack("!BBBBHBB", hdr[:8])
    if hlen != 0 or otype != EXT_OPTION_TYPE or olen != EXT_OPTION_LEN or pad != 0:
        raise TagError(
            f"not a scitags option header: len={hlen} type={otype:#x} optlen={olen} pad={pad}"
        )
    return nh, exp, act


def parse_int(text: str) -> int:
    """Decimal or 0x-hex, as the CLI and config accept them."""
    t = text.strip().lower()
    try:
        return int(t, 16) if t.startswith("0x") else int(t, 10)
    except ValueError:
        raise TagError(f"{text!r} is not a number: expected decimal or 0x-hex") from None
