# SPDX-License-Identifier: Apache-2.0
"""flowd-go's `programPath` and `debugMode` for the marker and the watcher (plugins.iperf3,
enrichers.skops): a site's own build of scitagd's programs is checked and loaded; anything else
(flowd-go's objects, a struct laid out differently) is refused before loading, with what it lacks;
the debug builds report their decisions in the kernel's trace buffer."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import scitagd.bpf
from scitagd.bpf import objcheck
from scitagd.bpf.build import _arch_include
from scitagd.errors import BpfError, LibbpfMissing
from scitagd.tags import decode_flow_label

from ..lab import A_ADDR, B_ADDR, Lab

BPF = Path(scitagd.bpf.__file__).parent
needs_clang = pytest.mark.skipif(not shutil.which("clang"), reason="clang not installed (scripts/setup.sh --test)")


@pytest.fixture(autouse=True)
def _libbpf() -> None:
    try:
        from scitagd.bpf import libbpf

        libbpf.lib()
    except LibbpfMissing as e:
        pytest.skip(str(e))


def build(tmp: Path, source: str, name: str, *defines: str, cpu: str = "") -> Path:
    """Compile `source` (text) as a site would: clang -g -O2 -target bpf."""
    for h in ("scitags.bpf.h",):
        (tmp / h).write_text((BPF / h).read_text())
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / f"{name}.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", *([cpu] if cpu else []), *defines,
                    f"-I{_arch_include()}", "-c", str(src), "-o", str(out)], check=True, cwd=tmp)
    return out


FLOWD_GO_LIKE = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct fourTuple { __u64 ip6Hi; __u64 ip6Lo; __u32 dPort; __u32 sPort; };
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 100000);
         __type(key, struct fourTuple); __type(value, __u32); } flowLabels SEC(".maps");
SEC("tc") int marker(struct __sk_buff *skb) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_shipped_objects_pass_the_check() -> None:
    for kind in ("marker", "watcher"):
        for debug in (False, True):
            objcheck.check_object(str(objcheck.shipped(kind, debug)), kind)


@needs_clang
def test_flowd_go_object_is_refused_with_what_it_lacks(tmp_path: Path) -> None:
    obj = build(tmp_path, FLOWD_GO_LIKE, "marker-label.bpf")
    with pytest.raises(BpfError) as e:
        objcheck.check_object(str(obj), "marker", "backends.marker.programPath")
    msg = str(e.value)
    assert "backends.marker.programPath" in msg and str(obj) in msg
    assert "programs scitagd_eth, scitagd_l3 missing (it has: marker)" in msg
    assert "maps flows, config, marked, unmarked missing (it has: flowLabels)" in msg
    assert "flowd-go's objects have other programs, maps and structs" in msg


@needs_clang
def test_struct_laid_out_differently_is_refused(tmp_path: Path) -> None:
    src = (BPF / "marker.bpf.c").read_text()
    build_dir = tmp_path / "b"
    build_dir.mkdir()
    header = (BPF / "scitags.bpf.h").read_text().replace("__u16 sport; /* host byte order */",
                                                         "__u32 sport; /* widened by a site */")
    obj = build(build_dir, src, "marker.bpf")
    (build_dir / "scitags.bpf.h").write_text(header)
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I{_arch_include()}", "-c", "marker.bpf.c", "-o",
                    str(obj)], check=True, cwd=build_dir)
    with pytest.raises(BpfError, match=r"struct flow_key is 44 bytes with members \{saddr@0, daddr@16, "
                                       r"sport@32, dport@36, proto@38, pad@39\}; scitagd packs 40 bytes"):
        objcheck.check_object(str(obj), "marker")


def test_unreadable_or_relative_or_not_elf(tmp_path: Path) -> None:
    with pytest.raises(BpfError, match="cannot read"):
        objcheck.check_object(str(tmp_path / "nope.o"), "watcher")
    with pytest.raises(BpfError, match="expected an absolute path"):
        objcheck.check_object("watcher.o", "watcher")
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(BpfError, match="not an ELF object file"):
        objcheck.check_object(str(junk), "watcher")


@pytest.mark.parametrize("section", ["backends:\n  marker: {programPath: OBJ}\n",
                                     "plugins:\n  iperf3: {programPath: OBJ, experimentIDs: [2], activityIDs: [1]}\n"],
                         ids=["marker", "iperf3"])
def test_daemon_refuses_a_foreign_object_at_start(run_daemon: Any, tmp_path: Path, section: str) -> None:
    """The check comes before anything is loaded: the start stops with one line naming the key."""
    junk = tmp_path / "flowd-go.bpf.o"
    junk.write_bytes(b"#!junk")
    d = run_daemon(section.replace("OBJ", str(junk)), wait_for=None)
    assert d.proc.wait(20) == 2
    log = d.log()
    assert f"programPath '{junk}': not an ELF object file" in log, log
    assert "Traceback" not in log


# --- loaded for real -----------------------------------------------------------------------


def read_trace() -> str:
    """The kernel's trace buffer, without consuming it, through a tracefs mounted in a private
    mount namespace (the host's mounts stay as they are)."""
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tracefs nodev /sys/kernel/tracing && "
                        "cat /sys/kernel/tracing/trace"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.root
@pytest.mark.slow
@needs_clang
def test_site_built_marker_is_loaded_and_marks(lab: Lab, tmp_path: Path) -> None:
    """A site's own build of marker.bpf.c (here: another optimisation level and a define of its
    own) passes the check, loads and marks as the shipped one does."""
    obj = build(tmp_path, (BPF / "marker.bpf.c").read_text(), "site-marker.bpf", "-DSITE_PATCH=1")
    obj.rename(tmp_path / "site-marker.bpf.o")
    obj = tmp_path / "site-marker.bpf.o"
    d = lab.daemon(f"markingStrategy: label, programPath: {obj}")
    text = d.wait_log("attached interface=a0")
    assert f"object={obj}" in text
    cap = lab.capture()
    srv = lab.server(5001)
    d.send(f"start tcp {A_ADDR} 40001 {B_ADDR} 5001 3 14")
    d.wait_log("flow start")
    time.sleep(0.1)
    lab.tool(lab.a, "tcp-client", B_ADDR, "5001", "40001", str(1 << 20))
    lab.result(srv)
    pkts = [p for p in cap.stop() if p.src == A_ADDR and p.sport == 40001]
    assert pkts and {decode_flow_label(p.label) for p in pkts} == {(3, 14)}
    assert d.stop() == 0


@pytest.mark.root
@pytest.mark.slow
def test_marker_and_watcher_debug_builds_report_decisions(lab: Lab) -> None:
    if not shutil.which("iperf3"):
        pytest.skip("iperf3 not installed")
    plugin = ("  iperf3: {minDestinationPort: 5201, maxDestinationPort: 5201, cgroupPath: /sys/fs/cgroup, "
              "experimentIDs: [5], activityIDs: [10], debugMode: true}")
    d = lab.daemon("markingStrategy: label, debugMode: true", plugins=plugin)
    text = d.wait_log("sock_ops attached")
    assert "object=marker-debug.bpf.o" in text and "object=watcher-debug.bpf.o" in text
    assert "cat /sys/kernel/tracing/trace_pipe" in text
    srv = lab.start(lab.b, ["iperf3", "-s", "-1", "-B", B_ADDR, "-p", "5201"])
    time.sleep(0.3)
    # little data: the kernel's trace buffer is small and the marker's build writes a line a packet
    r = subprocess.run(lab.a.cmd("iperf3", "-c", B_ADDR, "-p", "5201", "--cport", "40777", "-n", "8K"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    srv.wait(10)
    trace = read_trace()  # read at once: the host's other connections write here too (the root cgroup)
    assert re.search(r"scitagd watcher: tagged lport=40777 rport=5201 rule=0", trace), trace[-3000:]
    assert re.search(r"scitagd watcher: tag exp=5 act=10 label=0x", trace)
    assert re.search(r"scitagd watcher: closed lport=40777 rport=5201", trace)
    d.send(f"start tcp {A_ADDR} 40778 {B_ADDR} 5002 3 14")
    d.wait_log("flow start source=namedPipe")
    srv2 = lab.server(5002)
    lab.tool(lab.a, "tcp-client", B_ADDR, "5002", "40778", "3000")
    lab.result(srv2)
    trace = read_trace()
    assert d.stop() == 0
    assert re.search(r"scitagd marker: tagged sport=40778 dport=5002", trace), trace[-3000:]
    label = re.search(r"scitagd marker: label=0x([0-9a-f]+) exp=3 act=14", trace)
    assert label and decode_flow_label(int(label.group(1), 16)) == (3, 14)
