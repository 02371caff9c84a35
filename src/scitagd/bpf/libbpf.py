# SPDX-License-Identifier: Apache-2.0
"""The few libbpf calls scitagd needs, through ctypes over the system libbpf.so.1 (>= 1.0).

libbpf 1.x returns -errno from int functions and NULL with errno set from pointer functions;
both become BpfError with the errno name, so callers can say what failed and why.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import logging
import os
import platform
from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import BpfError, LibbpfMissing

__all__ = [
    "BPF_TC_F_REPLACE", "BTF_KIND_STRUCT", "MIN_VERSION", "ProgInfo", "TcHook", "TcOpts", "btf_struct", "check",
    "check_ptr", "find_map", "lib", "load_object", "map_fd", "prog_fd", "prog_info", "ring_buffer_new", "tc_hook",
    "tc_opts",
]

log = logging.getLogger("scitagd.libbpf")

MIN_VERSION = (1, 0)
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TC_F_REPLACE = 1
BPF_ANY, BPF_NOEXIST = 0, 1


class TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int),
                ("parent", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32),
                ("priority", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class ProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to run_cnt (include/uapi/linux/bpf.h)."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32), ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64), ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32), ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32), ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64), ("run_cnt", ctypes.c_uint64),
    ]


_lib: Optional[ctypes.CDLL] = None
_print_cb = None
# libbpf's recent messages: a failed load quotes them (the verifier's reasons are in there).
recent: collections.deque[str] = collections.deque(maxlen=40)


def lib() -> ctypes.CDLL:
    """Load libbpf once; a missing or too old library is a clear error naming the package."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        L = ctypes.CDLL(name, use_errno=True)
    except OSError:
        try:
            L = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as e:
            raise LibbpfMissing(
                "libbpf.so.1 not found: install libbpf >= 1.0 (Debian/Ubuntu: apt-get install libbpf1; "
                f"RHEL/AlmaLinux: dnf install libbpf) ({e})") from None
    try:
        major, minor = L.libbpf_major_version(), L.libbpf_minor_version()
    except AttributeError:
        raise LibbpfMissing("libbpf is older than 1.0: install libbpf >= 1.0") from None
    if (major, minor) < MIN_VERSION:
        raise LibbpfMissing(f"libbpf {major}.{minor} is too old: install libbpf >= 1.0")
    P, INT, U32, U64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64
    for fname, res, args in [
        ("bpf_object__open_file", P, [ctypes.c_char_p, P]),
        ("bpf_object__find_map_by_name", P, [P, ctypes.c_char_p]),
        ("bpf_object__find_program_by_name", P, [P, ctypes.c_char_p]),
        ("bpf_object__load", INT, [P]),
        ("bpf_object__close", None, [P]),
        ("bpf_map__set_max_entries", INT, [P, U32]),
        ("bpf_map__set_pin_path", INT, [P, ctypes.c_char_p]),
        ("bpf_map__fd", INT, [P]),
        ("bpf_program__fd", INT, [P]),
        ("bpf_map_update_elem", INT, [INT, P, P, U64]),
        ("bpf_map_lookup_elem", INT, [INT, P, P]),
        ("bpf_map_delete_elem", INT, [INT, P]),
        ("bpf_map_get_next_key", INT, [INT, P, P]),
        ("bpf_obj_get", INT, [ctypes.c_char_p]),
        ("bpf_obj_get_info_by_fd", INT, [INT, P, ctypes.POINTER(U32)]),
        ("bpf_prog_get_fd_by_id", INT, [U32]),
        ("bpf_tc_hook_create", INT, [ctypes.POINTER(TcHook)]),
        ("bpf_tc_hook_destroy", INT, [ctypes.POINTER(TcHook)]),
        ("bpf_tc_attach", INT, [ctypes.POINTER(TcHook), ctypes.POINTER(TcOpts)]),
        ("bpf_tc_detach", INT, [ctypes.POINTER(TcHook), ctypes.POINTER(TcOpts)]),
        ("bpf_tc_query", INT, [ctypes.POINTER(TcHook), ctypes.POINTER(TcOpts)]),
        ("libbpf_num_possible_cpus", INT, []),
        ("bpf_map__reuse_fd", INT, [P, INT]),
        ("bpf_prog_attach", INT, [INT, INT, INT, ctypes.c_uint]),
        ("bpf_prog_detach2", INT, [INT, INT, INT]),
        ("bpf_prog_query", INT, [INT, INT, U32, ctypes.POINTER(U32), ctypes.POINTER(U32),
                                 ctypes.POINTER(U32)]),
        ("ring_buffer__poll", INT, [P, INT]),
        ("bpf_program__attach_cgroup", P, [P, INT]),
        ("bpf_link__destroy", INT, [P]),
        ("ring_buffer__free", None, [P]),
    ]:
        f = getattr(L, fname)
        f.restype = res
        f.argtypes = args
    _route_prints(L)
    _lib = L
    return L


def _route_prints(L: ctypes.CDLL) -> None:
    """libbpf's own messages (verifier log included) go to our log, one line each."""
    global _print_cb
    if platform.machine() != "x86_64":
        return  # va_list is passed as a pointer only on x86_64's ABI; elsewhere libbpf prints itself
    libc = ctypes.CDLL(None)
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

    def cb(level: int, fmt: bytes, ap: int) -> int:
        buf = ctypes.create_string_buffer(4096)
        libc.vsnprintf(buf, 4096, fmt, ap)
        text = buf.value.decode(errors="replace").rstrip()
        if text:
            recent.append(text)
            log.debug("libbpf: %s", text.replace("\n", " | "))
        return 0

    _print_cb = CB(cb)
    L.libbpf_set_print.restype = ctypes.c_void_p
    L.libbpf_set_print.argtypes = [CB]
    L.libbpf_set_print(_print_cb)


RingCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def ring_buffer_new(map_fd: int, cb: Any) -> int:
    L = lib()
    L.ring_buffer__new.restype = ctypes.c_void_p
    L.ring_buffer__new.argtypes = [ctypes.c_int, RingCallback, ctypes.c_void_p, ctypes.c_void_p]
    return check_ptr(L.ring_buffer__new(map_fd, cb, None, None), "ring buffer")


def check(rc: int, what: str) -> int:
    if rc < 0:
        code = -rc
        raise BpfError(code, f"{what}: {errno.errorcode.get(code, code)} ({os.strerror(code)})")
    return rc


def check_ptr(ptr: Optional[int], what: str) -> int:
    if not ptr:
        code = ctypes.get_errno() or errno.EINVAL
        raise BpfError(code, f"{what}: {errno.errorcode.get(code, code)} ({os.strerror(code)})")
    return ptr


def tc_hook(ifindex: int, point: int = BPF_TC_EGRESS) -> TcHook:
    return TcHook(sz=ctypes.sizeof(TcHook), ifindex=ifindex, attach_point=point, parent=0)


def tc_opts(handle: int, priority: int, prog_fd: int = 0, flags: int = 0) -> TcOpts:
    return TcOpts(sz=ctypes.sizeof(TcOpts), prog_fd=prog_fd, flags=flags, prog_id=0,
                  handle=handle, priority=priority)


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "prog info")
    return info


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


BTF_KIND_STRUCT = 4


def btf_struct(path: str, name: str) -> Optional[Tuple[int, Dict[str, int]]]:
    """(size, {member: byte offset}) of `struct name` in the BTF of an object file, or None
    if the object does not describe it."""
    L = lib()
    L.btf__parse.restype = ctypes.c_void_p
    L.btf__parse.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    L.btf__find_by_name_kind.restype = ctypes.c_int
    L.btf__find_by_name_kind.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
    L.btf__type_by_id.restype = ctypes.c_void_p
    L.btf__type_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    L.btf__name_by_offset.restype = ctypes.c_char_p
    L.btf__name_by_offset.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    L.btf__free.restype = None
    L.btf__free.argtypes = [ctypes.c_void_p]
    btf = check_ptr(L.btf__parse(path.encode(), None), f"BTF of {path}")
    try:
        tid = L.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
        if tid < 0:
            return None
        addr = L.btf__type_by_id(btf, tid)
        t = _BtfType.from_address(addr)
        vlen, kflag = t.info & 0xFFFF, t.info >> 31
        members = (_BtfMember * vlen).from_address(addr + ctypes.sizeof(_BtfType))
        out = {}
        for m in members:
            bits = m.offset & 0xFFFFFF if kflag else m.offset
            out[L.btf__name_by_offset(btf, m.name_off).decode()] = bits // 8
        return int(t.size), out
    finally:
        L.btf__free(btf)


def load_object(path: str, prepare: Callable[[int], None], what: str) -> int:
    """Open an object file, let `prepare(obj)` set it up (pin paths, map sizes, reused maps),
    load it. If any step fails the object is closed; a failed load quotes libbpf's last
    messages, where the verifier's reasons are."""
    L = lib()
    obj = check_ptr(L.bpf_object__open_file(path.encode(), None), f"open {path}")
    try:
        prepare(obj)
        recent.clear()
        rc = L.bpf_object__load(obj)
        if rc < 0:
            detail = " | ".join(line for line in recent if line.strip())[-2000:]
            check(rc, f"load {what} ({detail})" if detail else f"load {what}")
    except BaseException:
        L.bpf_object__close(obj)
        raise
    return obj


def find_map(obj: int, name: str) -> int:
    return check_ptr(lib().bpf_object__find_map_by_name(obj, name.encode()), f"map {name}")


def map_fd(obj: int, name: str) -> int:
    return check(lib().bpf_map__fd(find_map(obj, name)), f"fd of map {name}")


def find_prog(obj: int, name: str) -> int:
    return check_ptr(lib().bpf_object__find_program_by_name(obj, name.encode()), f"program {name}")


def prog_fd(obj: int, name: str) -> int:
    prog = check_ptr(lib().bpf_object__find_program_by_name(obj, name.encode()), f"program {name}")
    return check(lib().bpf_program__fd(prog), f"fd of program {name}")


def set_rodata(obj: int, data: bytes) -> None:
    """The initial value of the object's `.rodata` (its `const volatile` globals), before load.
    `data` must be the whole section: a size mismatch means the object and the caller disagree."""
    L = lib()
    L.bpf_map__initial_value.restype = ctypes.c_void_p
    L.bpf_map__initial_value.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    L.bpf_map__set_initial_value.restype = ctypes.c_int
    L.bpf_map__set_initial_value.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    m = find_map(obj, ".rodata")
    size = ctypes.c_size_t(0)
    L.bpf_map__initial_value(m, ctypes.byref(size))
    if size.value != len(data):
        raise BpfError(22, f".rodata is {size.value} bytes in the object, {len(data)} given: object and "
                       "loader do not match")
    check(L.bpf_map__set_initial_value(m, data, len(data)), "set .rodata")
