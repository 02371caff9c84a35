# SPDX-License-Identifier: Apache-2.0
"""The compatibility suite: the same input as flowd-go and python flowd were given, the fireflies
scitagd sends for it, compared field by field with theirs.

flowd-go's fireflies are the ones flowd-go-observed.md records verbatim (read from the reference
itself); python flowd 1.1.7 is run here, as installed from PyPI, on the same named-pipe lines as
scitagd running on `scitagd config migrate --from flowd` of the same flowd.cfg.

Every field must be equal (times: each a valid time at the moment of sending) except the ones in
FLOWD_GO_DIFFERS / FLOWD_DIFFERS, each with its reason: a defect the reference records, or a
decision scitagd takes (docs/compat.md has the same table).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from scitagd.lab.util import serve_json

from ..conftest import REPO, SHARED, UdpReceiver, free_port, require_shared
from ..conftest import http as request

OBSERVED = SHARED / "design" / "reference" / "flowd-go-observed.md"

# field -> why scitagd's differs from flowd-go's (the header's fields are header.*)
FLOWD_GO_DIFFERS = {
    "header.timestamp": "flowd-go bug (flowd-go.md 7.1 #4): its TIMESTAMP is empty for start and end fireflies "
                        "(current-time is filled only for ongoing), which leaves two spaces after '<134>1'",
    "header.app": "the sender's name: flowd-go-v2.4.2 there, scitagd here",
    "header.hostname": "os.Hostname() there (the short name), this host's FQDN here (backends.firefly.hostname "
                       "sets it)",
    "flow-lifecycle.current-time": "flowd-go bug (same as the header's): current-time only in ongoing fireflies; "
                                   "scitagd sends it in every one (the schema allows it)",
    "flow-lifecycle.start-time@end": "flowd-go bug (7.1 #4): an end without an enricher carries start-time \"\" "
                                     "(not a time: schema-invalid); scitagd carries the flow's start",
    "flow-lifecycle.start-time@api": "flowd-go bug (7.1 #4, observed): a flow posted without StartTs gets "
                                     "start-time \"\"; scitagd stamps the time it took the flow",
    "context.application": "decision: flowd-go writes its own name (named pipe) or \"\" (API) when the producer "
                           "gave none; scitagd leaves the field out (it is optional) rather than name itself as "
                           "the application moving the data",
    "time-format": "flowd-go trims trailing zeros of the fraction (…49.90891+00:00); scitagd always writes six "
                   "digits (…49.908910+00:00): the same RFC 3339 instant",
}
FLOWD_DIFFERS = {
    "header.app": "the sender's name: flowd there, scitagd here",
    "header.hostname": "socket.gethostname() there (the short name), this host's FQDN here",
    "flow-lifecycle.start-time@end": "flowd bug (flowd.md 2.1, 6 #12): np_api keeps no state, so an end carries "
                                     "start-time null (schema-invalid); scitagd carries the flow's start",
    "context.application": "decision: flowd writes its own name ('flowd v1.1.7'); scitagd leaves the field out",
    "json-spacing": "flowd's json.dumps puts a space after ':' and ','; scitagd's JSON is compact: the same document",
}


def oracle() -> Dict[str, str]:
    """flowd-go's fireflies as flowd-go-observed.md records them, by what produced them."""
    text = require_shared(OBSERVED).read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith(("<134>1", '{"version"'))]
    out = {}
    for ln in lines:
        d = json.loads(ln[ln.index("{"):])
        fid, st, lc = d["flow-id"], d["flow-lifecycle"]["state"], d["flow-lifecycle"]
        if fid["src-port"] == 40001:
            out["api"] = ln
        elif fid["afi"] == "ipv6":
            out["np-start6"] = ln
        elif st == "ongoing":
            out["ongoing-" + ("compatible" if "state" in d["netlink"] else "lean")] = ln
        elif lc.get("start-time"):
            out[f"np-{st}4" if ln.startswith("<134>") else f"np-{st}4-enriched"] = ln
        else:
            out[f"np-{st}4"] = ln
    return out


def split(datagram: str) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """(syslog header fields, JSON document)."""
    i = datagram.index("{")
    head, body = datagram[:i], json.loads(datagram[i:])
    h: Dict[str, str] = {}
    if head:
        parts = head.split(" ")  # TIMESTAMP may be empty: split on single spaces
        h = dict(zip(("pri", "timestamp", "hostname", "app", "procid", "msgid", "sd"), parts))
    return h, body


def flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flat(v, key))
        else:
            out[key] = v
    return out


TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+00:00$")


def instant(text: str) -> float:
    return datetime.strptime(text.replace("+00:00", ""), "%Y-%m-%dT%H:%M:%S.%f" if "." in text else
                             "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def compare(ours: str, theirs: str, differs: Dict[str, str], sent_at: float) -> List[str]:
    """The fields that differ without a reason in `differs` (empty: the same firefly)."""
    oh, ob = split(ours)
    th, tb = split(theirs)
    bad = []
    state = tb["flow-lifecycle"]["state"]
    for k in sorted(set(oh) | set(th)):
        if oh.get(k) == th.get(k):
            continue
        if k == "timestamp" and oh.get(k) and th.get(k):  # both times, of their own moments
            assert TIME.match(oh[k]) and abs(instant(oh[k]) - sent_at) < 5, oh[k]
            continue
        if f"header.{k}" in differs:
            continue
        bad.append(f"header.{k}: {oh.get(k)!r} != {th.get(k)!r}")
    of, tf = flat(ob), flat(tb)
    for k in sorted(set(of) | set(tf)):
        o, t = of.get(k), tf.get(k)
        reason = differs.get(k) or differs.get(f"{k}@{state}")
        if k.startswith("flow-lifecycle.") and k != "flow-lifecycle.state":
            # a time: ours must be one, of this moment; theirs is of their run
            if t in ("", None) or k not in tf:
                if reason is None:
                    bad.append(f"{k}: ours {o!r}, theirs {t!r} (no reason given)")
                continue
            if o is None:
                bad.append(f"{k}: missing")
                continue
            assert TIME.match(o), (k, o)
            if k != "flow-lifecycle.start-time" or state == "start":
                assert abs(instant(o) - sent_at) < 5, (k, o, sent_at)
            continue
        if o != t and reason is None:
            bad.append(f"{k}: {o!r} != {t!r}")
    return bad


# --- flowd-go ---------------------------------------------------------------------------------

@pytest.fixture
def scitagd_like_flowd_go(run_daemon: Any, tmp_path: Path) -> Iterator[Tuple[Any, UdpReceiver, UdpReceiver, int]]:
    """scitagd on flowd-go's usual sections: named pipe, API, firefly backend with the syslog
    header (flowd-go's default), peers on loopback (the receivers)."""
    rx4, rx6 = UdpReceiver("127.0.0.1"), UdpReceiver("::1", 0)
    port = rx4.port
    rx6.close()
    rx6 = UdpReceiver("::1", port)
    api = free_port()
    d = run_daemon(f"plugins:\n  namedPipe: {{pipePath: {tmp_path}/np}}\n  api: {{bindPort: {api}}}\n"
                   f"backends:\n  firefly: {{destinationPort: {port}}}\n")
    yield d, rx4, rx6, api
    rx4.close()
    rx6.close()


def pipe(tmp: Path, *lines: str) -> float:
    t = time.time()
    with open(tmp / "np", "w") as f:
        f.write("".join(f"{ln}\n" for ln in lines))
    return t


def test_the_oracle_is_read() -> None:
    got = oracle()
    assert set(got) == {"np-start4", "np-end4", "np-start6", "ongoing-lean", "np-end4-enriched", "ongoing-compatible",
                        "api"}, sorted(got)


def test_named_pipe_lines_as_flowd_go(scitagd_like_flowd_go: Any, tmp_path: Path) -> None:
    """flowd-go-observed.md's named-pipe fireflies: start and end over IPv4, a start over IPv6."""
    _d, rx4, rx6, _api = scitagd_like_flowd_go
    o = oracle()
    t = pipe(tmp_path, "start tcp 127.0.0.1 2345 127.0.0.1 5777 1 2")
    start = rx4.recv(1)[0].decode()
    time.sleep(0.05)
    t_end = pipe(tmp_path, "end tcp 127.0.0.1 2345 127.0.0.1 5777 1 2")
    end = rx4.recv(1)[0].decode()
    t6 = pipe(tmp_path, "start tcp ::1 40000 ::1 5201 10 3")
    start6 = rx6.recv(1)[0].decode()
    for ours, key, at in ((start, "np-start4", t), (end, "np-end4", t_end), (start6, "np-start6", t6)):
        assert compare(ours, o[key], FLOWD_GO_DIFFERS, at) == [], (key, ours, o[key])
    # what differs, concretely (each a line of FLOWD_GO_DIFFERS)
    h, body = split(start)
    assert h["pri"] == "<134>1" and h["msgid"] == "firefly-json" and h["sd"] == "-" and h["procid"] == "-"
    assert h["timestamp"] and split(o["np-start4"])[0]["timestamp"] == ""
    assert h["hostname"] == socket.getfqdn() and h["app"] == "scitagd"
    assert "application" not in body["context"] and "current-time" in body["flow-lifecycle"]
    assert split(end)[1]["flow-lifecycle"]["start-time"] == body["flow-lifecycle"]["start-time"]
    assert split(o["np-end4"])[1]["flow-lifecycle"]["start-time"] == ""


def test_api_post_as_flowd_go(run_daemon: Any) -> None:
    """flowd-go-observed.md's `POST /flow` without timestamps (and without the syslog header)."""
    rx = UdpReceiver("127.0.0.1")
    api = free_port()
    run_daemon(f"plugins:\n  api: {{bindPort: {api}}}\nbackends:\n  firefly: {{destinationPort: {rx.port}, "
               "prependSyslog: false}\n")
    t = time.time()
    status, _ = request("POST", f"http://127.0.0.1:{api}/flow", {"State": 2, "Protocol": 0, "Family": 2,
                                                              "Src": "127.0.0.1:40001", "Dst": "127.0.0.1:5201",
                                                              "Experiment": 5, "Activity": 6})
    assert status == 200
    ours = rx.recv(1)[0].decode()
    theirs = oracle()["api"]
    differs = {**FLOWD_GO_DIFFERS, "flow-lifecycle.start-time@start": FLOWD_GO_DIFFERS["flow-lifecycle.start-time@api"]}
    assert compare(ours, theirs, differs, t) == [], (ours, theirs)
    assert split(theirs)[1]["flow-lifecycle"]["start-time"] == ""  # flowd-go stamped no start for the API
    assert TIME.match(split(ours)[1]["flow-lifecycle"]["start-time"])
    rx.close()


def test_every_difference_is_documented() -> None:
    doc = (REPO / "docs" / "compat.md").read_text()
    for key in (*FLOWD_GO_DIFFERS, *FLOWD_DIFFERS):
        assert f"`{key}`" in doc, f"{key} is not in docs/compat.md's table of firefly differences"


# --- python flowd ---------------------------------------------------------------------------

FLOWD_VENV = REPO / "bench" / ".flowd-venv"  # shared with bench/firefly_pipeline.py --setup


def flowd_python() -> Path:
    py = FLOWD_VENV / "bin" / "python"
    if not py.exists():
        r = subprocess.run([sys.executable, "-m", "venv", str(FLOWD_VENV)], capture_output=True, text=True)
        r2 = subprocess.run([str(py), "-m", "pip", "install", "-q", "scitags==1.1.7", "pyroute2"],
                            capture_output=True, text=True, timeout=300) if r.returncode == 0 else r
        if r2.returncode != 0:
            shutil.rmtree(FLOWD_VENV, ignore_errors=True)
            pytest.skip(f"python flowd 1.1.7 not installable here (PyPI): {r2.stderr.strip()[-200:]}")
    return py


def serve_registry() -> Tuple[str, http.server.ThreadingHTTPServer]:
    return serve_json((SHARED / "spec" / "registry-api.json").read_bytes())


PEER = "127.0.0.79"  # flowd sends to the flow's destination, port 10514: a loopback address of its own here
LINES = [f"start tcp 127.0.0.1 2345 {PEER} 5777 2 16", f"end tcp 127.0.0.1 2345 {PEER} 5777 2 16",
         f"start tcp 127.0.0.1 2346 {PEER} 5778 3 3"]  # ids only: flowd's np_api int()s them


def run_and_collect(cmd: List[str], pipe_path: Path, lines: List[str], wait: str, log: Path,
                    env: Optional[Dict[str, str]] = None) -> List[Tuple[str, float]]:
    """Start a daemon, wait for `wait` in its log, write the lines (one write each), collect what
    reaches PEER:10514; (datagram, time written) per line."""
    rx = UdpReceiver(PEER, 10514)
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             start_new_session=True)
    got: List[Tuple[str, float]] = []
    try:
        deadline = time.monotonic() + 30
        while not (wait in log.read_text() and pipe_path.exists()) and time.monotonic() < deadline:
            assert p.poll() is None, log.read_text()
            time.sleep(0.1)
        time.sleep(0.3)
        for line in lines:
            t = time.time()
            fd = -1
            while fd < 0:
                try:
                    fd = os.open(pipe_path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: its reader is not there yet (flowd opens it in its plugin process)
                    assert time.monotonic() < deadline + 10, "the FIFO never got a reader"
                    time.sleep(0.1)
            os.write(fd, (line + "\n").encode())
            os.close(fd)
            d = rx.recv(1, timeout=10)
            assert d, f"nothing for {line!r}:\n{log.read_text()[-2000:]}"
            got.append((d[0].decode(), t))
            time.sleep(0.6)  # flowd polls its FIFO and reads what is there: one line per read
    finally:
        os.killpg(p.pid, 15)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
        rx.close()
    return got


@pytest.mark.root
@pytest.mark.slow
def test_named_pipe_lines_as_python_flowd(tmp_path: Path) -> None:
    """python flowd 1.1.7 (np_api + udp_firefly) and scitagd on its migrated configuration, the
    same lines written to each one's FIFO: the same fireflies at the peer, field by field."""
    py = flowd_python()
    url, srv = serve_registry()
    try:
        cfg = tmp_path / "flowd.cfg"
        cfg.write_text(f"PLUGIN = 'np_api'\nBACKEND = 'udp_firefly'\nFLOW_MAP_API = '{url}'\n")
        site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                              text=True, check=True).stdout.strip()
        script = Path(site) / "usr" / "sbin" / "flowd"
        # flowd's FIFO is /var/run/flowd, fixed: give it a /run of its own (a private mount namespace)
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        cache = tmp_path / "cache"  # and its WORK_DIR (/var/cache/flowd), which it creates
        cache.mkdir()
        flowd_cmd = ["unshare", "-m", "sh", "-c", f"mount --bind {run_dir} /run && mount --bind {cache} /var/cache && "
                     f"exec {py} -u {script} -c {cfg}"]
        theirs = run_and_collect(flowd_cmd, run_dir / "flowd", LINES, "", tmp_path / "flowd.log")
        migrated = subprocess.run([sys.executable, "-m", "scitagd", "config", "migrate", "--from", "flowd", str(cfg)],
                                  capture_output=True, text=True, check=True).stdout
        conf = tmp_path / "scitagd.yaml"
        conf.write_text(migrated.replace("/var/run/flowd", str(tmp_path / "np")))
        ours = run_and_collect([sys.executable, "-m", "scitagd", "run", "--config", str(conf)], tmp_path / "np",
                               LINES, "scitagd.daemon started", tmp_path / "scitagd.log")
    finally:
        srv.shutdown()
    for (o, t), (th, _t) in zip(ours, theirs):
        assert compare(o, th, FLOWD_DIFFERS, t) == [], (o, th)
    assert split(theirs[2][0])[1]["context"]["experiment-id"] == split(ours[2][0])[1]["context"]["experiment-id"] == 3
    assert split(theirs[1][0])[1]["flow-lifecycle"]["start-time"] is None  # flowd's end
    assert split(theirs[0][0])[0]["app"] == "flowd" and "application" not in split(ours[0][0])[1]["context"]
