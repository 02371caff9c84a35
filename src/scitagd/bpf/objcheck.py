# SPDX-License-Identifier: Apache-2.0
"""Which eBPF object to load, and whether a site-provided one (`programPath`) is one scitagd can
drive: its programs and maps by name, and the structs user space shares with them (bpf/abi.py)
laid out as scitagd packs them, read from the object's BTF before anything is loaded.

A site may rebuild scitagd's own C (another compiler, a patch of its own); an object built from
other source, flowd-go's included (programs `marker`/`watcher`, maps `flowLabels`/`flowNots`),
is refused with what it lacks, never loaded half-working.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import BpfError
from . import abi
from . import libbpf as lb

__all__ = ["NEEDS", "Need", "check_object", "contents", "object_for"]


@dataclass(frozen=True)
class Need:
    programs: Tuple[str, ...]
    maps: Tuple[str, ...]
    structs: Tuple[abi.Layout, ...]


NEEDS = {
    "marker": Need(("scitagd_eth", "scitagd_l3"), ("flows", "config", "marked", "unmarked"),
                   (abi.FLOW_KEY, abi.FLOW_TAG, abi.CONFIG, abi.COUNT_KEY, abi.COUNT_VAL)),
    "watcher": Need(("scitagd_watch",), ("flows", "rules", "rule_tags", "rule_nets", "ignore_nets", "watched",
                                         "events", "sock_state"),
                    (abi.FLOW_KEY, abi.FLOW_TAG, abi.RULE, abi.RULE_TAG, abi.NET_KEY, abi.RULE_NET_KEY, abi.EVENT,
                     abi.WCFG)),
}


def shipped(kind: str, debug: bool = False) -> Path:
    name = f"{kind}-debug.bpf.o" if debug else f"{kind}.bpf.o"
    return Path(str(resources.files("scitagd.bpf").joinpath(name)))


def object_for(kind: str, program_path: str = "", debug: bool = False, key: str = "programPath") -> Path:
    """The object to load: `program_path` when given (checked first), else the shipped build,
    the debug one with `debug`."""
    if not program_path:
        return shipped(kind, debug)
    check_object(program_path, kind, key)
    return Path(program_path)


def contents(path: str) -> Tuple[List[str], List[str]]:
    """(program names, map names) of an object file, opened but not loaded."""
    L = lb.lib()
    for fname, res, args in (("bpf_object__next_program", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
                             ("bpf_object__next_map", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
                             ("bpf_program__name", ctypes.c_char_p, [ctypes.c_void_p]),
                             ("bpf_map__name", ctypes.c_char_p, [ctypes.c_void_p])):
        f = getattr(L, fname)
        f.restype = res
        f.argtypes = args
    obj = lb.check_ptr(L.bpf_object__open_file(path.encode(), None), f"open {path}")
    try:
        progs: List[str] = []
        p: Optional[int] = L.bpf_object__next_program(obj, None)
        while p:
            progs.append(L.bpf_program__name(p).decode(errors="replace"))
            p = L.bpf_object__next_program(obj, p)
        maps: List[str] = []
        m: Optional[int] = L.bpf_object__next_map(obj, None)
        while m:
            maps.append(L.bpf_map__name(m).decode(errors="replace"))
            m = L.bpf_object__next_map(obj, m)
        return progs, maps
    finally:
        L.bpf_object__close(obj)


def check_object(path: str, kind: str, key: str = "programPath") -> None:
    """BpfError (EINVAL, or the errno of a file that cannot be read) naming everything the
    object lacks or lays out differently from what scitagd packs."""
    need = NEEDS[kind]
    if not os.path.isabs(path):
        raise BpfError(errno.EINVAL, f"{key} {path!r}: expected an absolute path to a {kind} object")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise BpfError(e.errno or errno.EIO, f"{key} {path!r}: cannot read: {e.strerror or e}") from None
    if magic != b"\x7fELF":
        raise BpfError(errno.EINVAL, f"{key} {path!r}: not an ELF object file")
    progs, maps = contents(path)
    problems: List[str] = []
    missing = [p for p in need.programs if p not in progs]
    if missing:
        problems.append(f"program{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing (it has: "
                        f"{', '.join(progs) or 'none'})")
    missing = [m for m in need.maps if m not in maps]
    if missing:
        problems.append(f"map{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing (it has: "
                        f"{', '.join(x for x in maps if not x.startswith('.')) or 'none'})")
    if len(problems) < 2:  # a foreign object altogether: its programs and maps say enough
        for layout in need.structs:
            got = lb.btf_struct(path, layout.c_name)
            if got is None:
                problems.append(f"struct {layout.c_name} not described in its BTF (build with clang -g)")
                continue
            size, offsets = got
            if size != layout.size or offsets != layout.offsets:
                problems.append(f"struct {layout.c_name} is {size} bytes with members {_show(offsets)}; scitagd "
                                f"packs {layout.size} bytes as {_show(layout.offsets)}")
    if problems:
        raise BpfError(errno.EINVAL, f"{key} {path!r}: not an object scitagd can drive as its {kind}: "
                       + "; ".join(problems) + f". Build it from scitagd's {kind}.bpf.c (python -m "
                       "scitagd.bpf.build); flowd-go's objects have other programs, maps and structs")


def _show(offsets: dict[str, int]) -> str:
    return "{" + ", ".join(f"{k}@{v}" for k, v in offsets.items()) + "}"
