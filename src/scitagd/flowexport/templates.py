# SPDX-License-Identifier: Apache-2.0
"""Templates compiled to code: one struct format per run of fixed-length fields, unpacked in bulk.

IPFIX and NetFlow v9 data records are laid out by templates the exporter sends. Interpreting
field lists per record costs ~50 us in Python; instead each distinct template is compiled once
into a small function (generated source, `compile`d, cached by field list) that unpacks all
records of a set with `struct.iter_unpack` (or `unpack_from` per run between variable-length
fields) and builds FlowRecords directly. Only integers (indices, lengths) from the template go
into the generated source, never exporter bytes, so a hostile template cannot inject code.

Templates with PSAMP packet sections (IE 313/315) and options templates take the generic walker
(`walk`): they are rare (one record per sampled packet, or per sampler).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from .records import DecodeError

__all__ = ["SCOPE", "VARLEN", "Compiled", "Field", "as_int", "check_fields", "compiled", "values", "walk"]

VARLEN = 0xFFFF
SCOPE = -1  # NetFlow v9 options scope fields: their type numbers are not IEs

# Information elements (RFC 7012 / IANA; NetFlow v9 field types share the numbers below 128).
IE_OCTETS, IE_PACKETS, IE_PROTO, IE_SPORT, IE_SRC4, IE_INGRESS = 1, 2, 4, 7, 8, 10
IE_DPORT, IE_DST4, IE_EGRESS, IE_POST_OCTETS, IE_POST_PACKETS = 11, 12, 14, 23, 24
IE_SRC6, IE_DST6, IE_LABEL, IE_SAMPLING_INTERVAL, IE_SAMPLER_ID = 27, 28, 31, 34, 48
IE_SAMPLER_RANDOM_INTERVAL, IE_IP_VERSION, IE_DIRECTION, IE_IP_TOTAL_LENGTH = 50, 60, 61, 224
IE_SELECTOR_ID, IE_SAMPLING_PACKET_INTERVAL, IE_SAMPLING_PACKET_SPACE = 302, 305, 306
IE_SAMPLING_SIZE, IE_SAMPLING_POPULATION = 309, 310
IE_DATALINK_FRAME_SIZE, IE_IP_HEADER_SECTION, IE_DATALINK_SECTION = 312, 313, 315
IE_SECTION_EXPORTED_OCTETS, IE_L2_OCTETS = 410, 352

INT_ROLES = {
    "octets": (IE_OCTETS, IE_POST_OCTETS, IE_L2_OCTETS),
    "packets": (IE_PACKETS, IE_POST_PACKETS),
    "proto": (IE_PROTO,),
    "sport": (IE_SPORT,),
    "dport": (IE_DPORT,),
    "label": (IE_LABEL,),
    "ingress": (IE_INGRESS,),
    "egress": (IE_EGRESS,),
    "direction": (IE_DIRECTION,),
    "ipver": (IE_IP_VERSION,),
    "interval": (IE_SAMPLING_INTERVAL, IE_SAMPLER_RANDOM_INTERVAL),
    "pinterval": (IE_SAMPLING_PACKET_INTERVAL,),
    "pspace": (IE_SAMPLING_PACKET_SPACE,),
    "selector": (IE_SELECTOR_ID, IE_SAMPLER_ID),
}
ADDR_ROLES = {"src4": (IE_SRC4, 4), "dst4": (IE_DST4, 4), "src6": (IE_SRC6, 16), "dst6": (IE_DST6, 16)}
_INT_FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}
MAX_FIELDS = 512
MAX_RECORD = 65535 - 16 - 4  # the largest record one IPFIX message can carry


class Field(NamedTuple):
    ie: int
    enterprise: int  # 0: IANA; SCOPE: a NetFlow v9 options scope field
    length: int


class Compiled:
    """One template's layout and, for flow templates, its generated decoder."""

    def __init__(self, fields: Tuple[Field, ...], options: bool, scope_count: int = 0) -> None:
        self.fields = fields
        self.options = options
        self.scope_count = scope_count
        self.variable = any(f.length == VARLEN for f in fields)
        self.min_length = sum(1 if f.length == VARLEN else f.length for f in fields)
        ies = {f.ie for f in fields if f.enterprise == 0}
        self.psamp = bool(ies & {IE_IP_HEADER_SECTION, IE_DATALINK_SECTION})
        self.has_ip = bool(ies & {IE_SRC4, IE_DST4, IE_SRC6, IE_DST6})
        self.kind = "options" if options else "psamp" if self.psamp else "flow" if self.has_ip else "other"
        # generated on first use of a flow template (~1 ms for OVS's 45 fields): a flood of
        # templates that never carry data costs nothing, and the decoder budgets generation
        self.decode: Optional[Callable[..., int]] = None

    def generate(self) -> Callable[..., int]:
        global generated
        if self.decode is None:
            generated += 1
            self.decode = _generate(self.fields)
        return self.decode


def check_fields(fields: List[Field], tid: int) -> None:
    """Reject what no real exporter sends; the reason names the template and the field."""
    if len(fields) > MAX_FIELDS:
        raise DecodeError("bad_template", f"template {tid}: {len(fields)} fields, expected <= {MAX_FIELDS}")
    total = 0
    for i, f in enumerate(fields):
        if f.length == 0:
            raise DecodeError("bad_template", f"template {tid} field {i} (IE {f.ie}): length 0, expected >= 1")
        total += 1 if f.length == VARLEN else f.length
    if total > MAX_RECORD:
        raise DecodeError("bad_template", f"template {tid}: record length {total} > {MAX_RECORD}, cannot fit a message")


_cache: OrderedDict[Tuple[Any, ...], Compiled] = OrderedDict()
CACHE_SIZE = 2048
generated = 0  # decoders generated, for tests and metrics


def compiled(fields: Tuple[Field, ...], options: bool, scope_count: int = 0) -> Compiled:
    """Shared across exporters (many send the same templates); LRU-bounded."""
    key = (fields, options, scope_count)
    c = _cache.get(key)
    if c is not None:
        _cache.move_to_end(key)
        return c
    c = Compiled(fields, options, scope_count)
    _cache[key] = c
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return c


class _Overrun(Exception):
    pass


def _generate(fields: Tuple[Field, ...]) -> Callable[..., int]:
    runs: List[List[Field]] = [[]]
    for f in fields:
        if f.length == VARLEN:
            runs.append([])
        else:
            runs[-1].append(f)
    # assign roles in priority order: for each role, the first IE of its list that is present
    chosen: Dict[str, Tuple[int, int]] = {}  # role -> (run, position in run)
    for role, (ie, length) in ADDR_ROLES.items():
        for r, run in enumerate(runs):
            for p, f in enumerate(run):
                if role not in chosen and f.enterprise == 0 and f.ie == ie and f.length == length:
                    chosen[role] = (r, p)
    for role, ies in INT_ROLES.items():
        for ie in ies:
            for r, run in enumerate(runs):
                for p, f in enumerate(run):
                    if role not in chosen and f.enterprise == 0 and f.ie == ie and f.length <= 8:
                        chosen[role] = (r, p)
    by_pos = {pos: role for role, pos in chosen.items()}
    ns: Dict[str, Any] = {"_ib": int.from_bytes, "_Overrun": _Overrun, "Z16": bytes(16)}
    expr: Dict[str, str] = {}
    run_lengths = []
    for r, run in enumerate(runs):
        fmt = "!"
        idx = 0
        for p, f in enumerate(run):
            role_ = by_pos.get((r, p))
            if role_ is None:
                fmt += f"{f.length}x"
                continue
            role = role_
            if role in ADDR_ROLES:
                fmt += f"{f.length}s"
                expr[role] = f"v{r}[{idx}]"
            elif f.length in _INT_FMT:
                fmt += _INT_FMT[f.length]
                expr[role] = f"v{r}[{idx}]"
            else:
                fmt += f"{f.length}s"
                expr[role] = f"_ib(v{r}[{idx}], 'big')"
            idx += 1
        ns[f"_S{r}"] = struct.Struct(fmt)
        run_lengths.append(struct.calcsize(fmt))

    def e(role: str, default: str) -> str:
        return expr.get(role, default)

    body: List[str] = []
    v6 = "src6" in expr and "dst6" in expr
    v4 = "src4" in expr and "dst4" in expr
    if v6 and v4:
        if "ipver" in expr:
            body.append(f"fam = 4 if {expr['ipver']} == 4 else 6")
        else:
            body.append(f"fam = 4 if {expr['src6']} == Z16 else 6")
        src = f"({expr['src6']} if fam == 6 else {expr['src4']})"
        dst = f"({expr['dst6']} if fam == 6 else {expr['dst4']})"
        fam = "fam"
    elif v6:
        src, dst, fam = expr["src6"], expr["dst6"], "6"
    elif v4:
        src, dst, fam = expr["src4"], expr["dst4"], "4"
    else:  # one address only: still IP traffic, keep what there is
        fam = "6" if ("src6" in expr or "dst6" in expr) else "4"
        z = "Z16" if fam == "6" else "b'\\0\\0\\0\\0'"
        src = e("src6", e("src4", z))
        dst = e("dst6", e("dst4", z))
    if "label" in expr:
        body.append(f"lab = {expr['label']} & 0xFFFFF")
        body.append("tg = T[lab & 0x3FEFC]")
        label, exp, act, via = "lab", "tg[0]", "tg[1]", "tg[2]"
    else:
        label, exp, act, via = "None", "None", "None", "''"
    if "interval" in expr:
        body.append(f"r = {expr['interval']} or R")
    elif "pinterval" in expr and "pspace" in expr:
        body.append(f"pi = {expr['pinterval']}")
        body.append(f"r = max(1, round((pi + {expr['pspace']}) / pi)) if pi else R")
    elif "selector" in expr:
        body.append(f"r = SR.get({expr['selector']}, R)")
    else:
        body.append("r = R")
    rec = (f"Rec(ex, dom, {e('ingress', 'None')}, {e('egress', 'None')}, {e('direction', 'None')}, "
           f"{e('proto', '0')}, {fam}, {src}, {dst}, {e('sport', '0')}, {e('dport', '0')}, {label}, {exp}, {act}, "
           f"{e('octets', '0')} * r, {e('packets', '0')} * r, tm, {via})")
    lines = ["def _decode(buf, pos, end, ex, dom, tm, R, SR, T, Rec, out):", "    ap = out.append"]
    if len(runs) == 1:
        length = run_lengths[0]
        lines += [f"    n = (end - pos) // {length}",
                  f"    for v0 in _S0.iter_unpack(buf[pos:pos + n * {length}]):"]
        lines += [f"        {b}" for b in body]
        lines += [f"        ap({rec})", "    return n"]
    else:
        min_len = sum(run_lengths) + len(runs) - 1
        lines += ["    n = 0", f"    while end - pos >= {min_len}:"]
        for r in range(len(runs)):
            if r > 0:
                lines += ["        k = buf[pos]", "        pos += 1", "        if k == 255:",
                          "            k = buf[pos] << 8 | buf[pos + 1]", "            pos += 2",
                          "        pos += k"]
            if run_lengths[r]:
                lines += [f"        v{r} = _S{r}.unpack_from(buf, pos)", f"        pos += {run_lengths[r]}"]
        lines += ["        if pos > end:", "            raise _Overrun(pos - end)"]
        lines += [f"        {b}" for b in body]
        lines += [f"        ap({rec})", "        n += 1", "    return n"]
    src_text = "\n".join(lines) + "\n"
    exec(compile(src_text, "<ipfix-template>", "exec"), ns)  # integers only, see module docstring
    fn: Callable[..., int] = ns["_decode"]
    fn.__doc__ = src_text
    return fn


def walk(buf: memoryview, pos: int, end: int, fields: Tuple[Field, ...]) -> Tuple[List[memoryview], int]:
    """One record's field values (generic path); DecodeError when a field overruns the set."""
    vals: List[memoryview] = []
    for f in fields:
        n = f.length
        if n == VARLEN:
            if pos >= end:
                raise DecodeError("field_overrun", f"variable-length field IE {f.ie} at byte {pos} past set end {end}")
            n = buf[pos]
            pos += 1
            if n == 255:
                if pos + 2 > end:
                    raise DecodeError("field_overrun", f"variable-length field IE {f.ie} length cut at set end")
                n = buf[pos] << 8 | buf[pos + 1]
                pos += 2
        if pos + n > end:
            raise DecodeError("field_overrun",
                              f"field IE {f.ie} length {n} at byte {pos} overruns the set ending at {end}")
        vals.append(buf[pos:pos + n])
        pos += n
    return vals, pos


def as_int(v: memoryview) -> int:
    return int.from_bytes(v, "big")


def values(fields: Tuple[Field, ...], vals: List[memoryview]) -> Dict[int, memoryview]:
    """IANA fields of one record by IE number (first occurrence wins)."""
    out: Dict[int, memoryview] = {}
    for f, v in zip(fields, vals):
        if f.enterprise == 0 and f.ie not in out:
            out[f.ie] = v
    return out


