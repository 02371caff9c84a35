# SPDX-License-Identifier: Apache-2.0
"""The named pipe against hostile paths, writers and lines, with real writer processes.

What may sit at pipePath (a symlink, a regular file, another user's FIFO) is refused without
being touched; a FIFO removed or replaced while the daemon runs is recreated; fragments of one
writer never spoil another writer's line (the rules in sources/namedpipe.py); bad lines are
counted; every valid line written around them arrives; the loop keeps answering.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

from ..conftest import IS_ROOT
from ..figures import record
from .daemon_helpers import Stack, assert_responsive, clean_log, recv_flows, stack, start_daemon

__all__ = ["stack"]

PEER = "127.0.0.2"


def line(port: int, state: str = "start") -> bytes:
    return f"{state} tcp 127.0.0.1 {port} {PEER} 46000 2 3\n".encode()


def pipe_stack(stack: Callable[..., Stack], tmp_path: Path, more: str = "") -> Tuple[Stack, Path]:
    pipe = tmp_path / "run" / "np"
    return stack(f"  namedPipe: {{{{pipePath: {pipe}, checkInterval: 0.2{more}}}}}\n"), pipe


WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
for part in sys.argv[2:]:
    if part.startswith("sleep:"):
        time.sleep(float(part[6:]))
    elif part == "wait":
        print("waiting", flush=True)
        sys.stdin.readline()
    else:
        os.write(fd, part.encode().decode("unicode_escape").encode("latin-1"))
os.close(fd)
"""


def writer(pipe: Path, *parts: str) -> subprocess.Popen[str]:
    """A writer in a process of its own: writes each part with one write(), 'sleep:S' pauses,
    'wait' waits for a line on stdin; then closes."""
    return subprocess.Popen([sys.executable, "-c", WRITER, str(pipe), *parts], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen[str]) -> None:
    assert proc.wait(20) == 0


def test_refuses_what_is_not_its_own_fifo(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    target.chmod(0o600)
    cases: List[Tuple[str, Callable[[Path], None], str]] = [
        ("symlink", lambda p: p.symlink_to(target), "is a symbolic link, not a FIFO"),
        ("dangling symlink", lambda p: p.symlink_to(tmp_path / "nowhere"), "is a symbolic link, not a FIFO"),
        ("regular file", lambda p: p.write_text("x"), "is a regular file, not a FIFO"),
        ("directory", lambda p: p.mkdir(), "is a directory, not a FIFO"),
    ]
    if IS_ROOT:
        def foreign(p: Path) -> None:
            os.mkfifo(p, 0o666)
            os.chown(p, 65534, 65534)
        cases.append(("another user's FIFO", foreign, "is a FIFO owned by uid 65534"))
    for i, (name, make, needle) in enumerate(cases):
        path = tmp_path / f"np{i}"
        make(path)
        before = os.lstat(path)
        d = start_daemon(tmp_path, f"plugins:\n  namedPipe: {{pipePath: {path}, mode: '0666'}}\n", f"r{i}",
                         wait_for=None)
        assert d.proc.wait(20) == 2, name
        text = d.log()
        assert f"plugins.namedPipe: cannot start: pipePath {path}" in text and needle in text, (name, text)
        clean_log(text)
        after = os.lstat(path)
        assert (after.st_mode, after.st_uid, after.st_ino) == (before.st_mode, before.st_uid, before.st_ino), name
    assert target.read_text() == "keep me\n" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_mode_set_on_the_fifo_itself(tmp_path: Path, stack: Callable[..., Stack]) -> None:
    st_, pipe = pipe_stack(stack, tmp_path, ", mode: '0620'")
    s = os.lstat(pipe)
    assert stat.S_ISFIFO(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o620 and s.st_uid == os.geteuid()
    st_.probe.stop()


def test_removed_or_replaced_fifo_is_recreated(tmp_path: Path, stack: Callable[..., Stack]) -> None:
    st_, pipe = pipe_stack(stack, tmp_path)
    want = []

    os.unlink(pipe)
    _wait_recreated(st_, pipe, 1)
    st_.d.wait_log("named pipe recreated path=" + str(pipe) + " found=missing")
    wait_for(writer(pipe, line(28000).decode()))
    want.append(("start", 28000))

    # a writer that came while it was gone made a regular file: moved aside, lines kept there
    os.unlink(pipe)
    pipe.write_bytes(line(28001))
    _wait_recreated(st_, pipe, 2)
    stray = Path(str(pipe) + ".stray")
    assert stray.read_bytes() == line(28001)
    st_.d.wait_log(f"found=a regular file, moved to {stray}")
    wait_for(writer(pipe, line(28002).decode()))
    want.append(("start", 28002))

    # a symlink planted in its place: moved aside, its target untouched
    target = tmp_path / "target"
    target.write_text("t")
    target.chmod(0o600)
    os.unlink(pipe)
    pipe.symlink_to(target)
    _wait_recreated(st_, pipe, 3)
    assert stray.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o600
    wait_for(writer(pipe, line(28003).decode()))
    want.append(("start", 28003))

    assert recv_flows(st_.rx, want).keys() == set(want)
    stats = st_.probe.stop()
    log = st_.d.log()
    clean_log(log)
    assert log.count("named pipe recreated") == 3
    assert_responsive(stats, "pipe recreated")


def _wait_recreated(st_: Stack, pipe: Path, times: int, timeout: float = 5.0) -> None:
    """Until the daemon said it recreated the FIFO `times` times, and a FIFO is there (inode
    numbers are no sign: a freed one is reused at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if st_.d.log().count("named pipe recreated") >= times and stat.S_ISFIFO(os.lstat(pipe).st_mode):
            return
        time.sleep(0.02)
    raise AssertionError(f"{pipe} not recreated in {timeout}s:\n{st_.d.log()[-2000:]}")


def test_fragments_never_spoil_another_writers_line(tmp_path: Path, stack: Callable[..., Stack]) -> None:
    st_, pipe = pipe_stack(stack, tmp_path)
    want = []
    # 1. a writer leaves a fragment and closes; the next writer's line is whole
    wait_for(writer(pipe, "start tcp 127.0.0.1 29"))
    time.sleep(0.3)
    wait_for(writer(pipe, line(29000).decode()))
    want.append(("start", 29000))
    # 2. overlapping writers: a fragment, then another writer's whole line before the first closes
    w1 = writer(pipe, "start tcp 127.0.0.1 3", "wait")
    assert w1.stdout is not None and w1.stdout.readline().strip() == "waiting"
    wait_for(writer(pipe, line(29001).decode()))
    w1.communicate("go\n", timeout=20)
    want.append(("start", 29001))
    # 3. a slow writer that writes one line in pieces while holding the FIFO open: reassembled
    wait_for(writer(pipe, "start tcp 127.0", "sleep:0.5", ".0.1 29002 ", "sleep:0.3", f"{PEER} 46000 2 3\\n"))
    want.append(("start", 29002))
    # 4. a fragment that is garbage, then a whole line from another writer
    wait_for(writer(pipe, "\\xff\\xfe garbage"))
    time.sleep(0.3)
    wait_for(writer(pipe, line(29003).decode()))
    want.append(("start", 29003))
    seen = recv_flows(st_.rx, want)
    assert seen.keys() == set(want), set(want) - set(seen)
    stats = st_.probe.stop()
    rej = st_.rejected("namedPipe")
    assert rej == {"fragment": 3}, rej
    log = st_.d.log()
    clean_log(log)
    assert "reason=fragment" in log
    assert_responsive(stats, "fragments")


def test_many_writers_with_fragments_and_garbage(tmp_path: Path, stack: Callable[..., Stack]) -> None:
    """8 writers of 250 whole lines each, 4 writers of garbage lines, all at once. Every line is
    one write() of at most PIPE_BUF: only those are atomic (rule 1)."""
    st_, pipe = pipe_stack(stack, tmp_path)
    code = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
w, n, kind = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for i in range(n):
    if kind == "good":
        os.write(fd, f"start tcp 127.0.0.1 {30000 + w * 1000 + i} 127.0.0.2 46000 2 3\n".encode())
    else:
        bad = [b"\x00\xff\x02\n", b"start tcp 127.0.0.1 " + b"9" * 4000 + b" 127.0.0.2 1 2 3\n",
               b"end udp ::1 1 127.0.0.1 2 3 4\n", b"start tcp 127.0.0.1 1 127.0.0.2 2 true 1\n",
               b"x" * 4000 + b"\n", b"start tcp 127.0.0.1 1 127.0.0.2 2 600 1\n"][i % 6]
        os.write(fd, bad)
os.close(fd)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(pipe), str(w), "250", "good"]) for w in range(8)]
    procs += [subprocess.Popen([sys.executable, "-c", code, str(pipe), str(w), "60", "bad"]) for w in range(4)]
    for p in procs:
        assert p.wait(60) == 0
    want = [("start", 30000 + w * 1000 + i) for w in range(8) for i in range(250)]
    seen = recv_flows(st_.rx, want, timeout=20)
    assert len(seen) == len(want), f"{len(want) - len(seen)} whole lines lost"
    stats = st_.probe.stop()
    rej = st_.rejected("namedPipe")
    assert rej == {"not_ascii": 40, "overlong": 80, "bad_address": 40, "not_a_number": 40,
                   "bad_experiment": 40}, rej
    log = st_.d.log()
    clean_log(log)
    assert log.count("line rejected") <= 5 * 12, "rejections are rate-limited per reason"
    assert_responsive(stats, "many writers")
    record("daemon pipe", detail=f"{len(want)} whole lines kept, rejected {rej}; probe {stats}")


def test_huge_numbers_and_long_lines(tmp_path: Path, stack: Callable[..., Stack]) -> None:
    """With maxLineBytes at its maximum: a 5,000-digit number is an error, not int()'s ValueError."""
    st_, pipe = pipe_stack(stack, tmp_path, ", maxLineBytes: 65536")
    with open(pipe, "wb") as f:
        f.write(line(29500))
        f.write(b"start tcp 127.0.0.1 " + b"9" * 5000 + b" 127.0.0.2 1 2 3\n")
        f.write(b"start tcp 127.0.0.1 1 127.0.0.2 2 " + b"9" * 60000 + b" 1\n")
        f.write(b"start tcp 127.0.0.1 1 127.0.0.2 2 \xd9\xa3 1\n")  # an Arabic-Indic digit
        f.write(b"y" * 200000 + b"\n")
        f.write(line(29501))
    want = [("start", 29500), ("start", 29501)]
    assert recv_flows(st_.rx, want).keys() == set(want)
    stats = st_.probe.stop()
    assert st_.rejected("namedPipe") == {"not_a_number": 2, "not_ascii": 1, "overlong": 1}
    clean_log(st_.d.log())
    assert_responsive(stats, "huge numbers")


@pytest.mark.parametrize("n", [20000])
def test_line_flood(tmp_path: Path, stack: Callable[..., Stack], n: int) -> None:
    st_, pipe = pipe_stack(stack, tmp_path)
    want = []
    fd = os.open(pipe, os.O_WRONLY)
    try:
        buf = b""
        for i in range(n):
            buf += b"hello world\n" if i % 10 else line(40000 + i // 10)
            if i % 10 == 0:
                want.append(("start", 40000 + i // 10))
            if len(buf) > 3500:
                os.write(fd, buf[:buf.rindex(b"\n") + 1])
                buf = buf[buf.rindex(b"\n") + 1:]
        os.write(fd, buf)
    finally:
        os.close(fd)
    seen = recv_flows(st_.rx, want, timeout=20)
    assert len(seen) == len(want)
    stats = st_.probe.stop()
    assert st_.rejected("namedPipe") == {"bad_field_count": n - len(want)}
    clean_log(st_.d.log())
    assert_responsive(stats, "line flood")
    record("daemon pipe flood", detail=f"{n - len(want)} rejected, {len(want)} kept; probe {stats}")
