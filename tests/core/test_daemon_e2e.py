# SPDX-License-Identifier: Apache-2.0
"""`scitagd run` as a subprocess, driven over real sockets: HTTP, a FIFO, UDP."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from scitagd.tags import encode_scitag

from ..conftest import (
    PRODUCERS,
    DaemonProc,
    firefly_validator,
    free_port,
    http,
    json_body,
    metrics,
    needs_root,
)

VALIDATOR = firefly_validator()
PEER = "127.0.0.2"  # loopback: the firefly sink really sends to a flow's peer


def assert_valid(datagram: bytes) -> dict[str, Any]:
    doc = json_body(datagram)
    errors = [e.message for e in VALIDATOR.iter_errors(doc)]
    assert not errors, errors
    return doc


@pytest.fixture
def env(tmp_path: Path, run_daemon: Callable[..., DaemonProc], udp_receiver: Any) -> dict[str, Any]:
    peer = udp_receiver(PEER)
    peer6 = udp_receiver("::1", peer.port) if _port_free6(peer.port) else None
    coll = udp_receiver("127.0.0.1")
    api, prom = free_port(), free_port()
    ff = free_port(socket.SOCK_DGRAM)
    pipe = tmp_path / "run" / "np"
    d = run_daemon(f"""
plugins:
  api: {{bindPort: {api}, maxBodyBytes: 1024}}
  namedPipe: {{pipePath: {pipe}}}
  firefly: {{bindPort: {ff}}}
backends:
  firefly:
    destinationPort: {peer.port}
    collectors: ["127.0.0.1:{coll.port}"]
  prometheus: {{port: {prom}}}
""")
    return {"d": d, "peer": peer, "peer6": peer6, "coll": coll, "api": f"http://127.0.0.1:{api}",
            "prom": prom, "ff": ff, "pipe": pipe}


def _port_free6(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", port))
        return True
    except OSError:
        return False


def flow(**kw: Any) -> dict[str, Any]:
    base = {"state": "start", "protocol": "tcp", "src-ip": "127.0.0.1", "src-port": 1094,
            "dst-ip": PEER, "dst-port": 45000, "experiment": "atlas", "activity": "Data Brokering"}
    base.update(kw)
    return base


def test_api_flow_lifecycle_reaches_peer_and_collector(env: dict[str, Any]) -> None:
    status, body = http("POST", env["api"] + "/api/v1/flows", flow(application="xrootd/5.5"))
    assert status == 202, body
    assert body["scitag"] == encode_scitag(2, 3) and body["experiment"] == "atlas"
    assert body["activity"] == "Data Brokering" and body["source"] == "api"
    [start] = env["peer"].recv(1)
    doc = assert_valid(start)
    assert start.startswith(b"<134>1 ") and b" scitagd - firefly-json - " in start
    assert doc["flow-lifecycle"]["state"] == "start"
    assert doc["flow-id"] == {"afi": "ipv4", "src-ip": "127.0.0.1", "dst-ip": PEER, "protocol": "tcp",
                              "src-port": 1094, "dst-port": 45000}
    assert doc["context"] == {"experiment-id": 2, "activity-id": 3, "application": "xrootd/5.5"}
    assert env["coll"].recv(1) == [start]
    m = metrics(env["prom"])
    assert m['scitagd_active_flows{activity="Data Brokering",activity_id="3",experiment="atlas",'
             'experiment_id="2"}'] == 1

    status, body = http("GET", env["api"] + "/api/v1/flows")
    assert status == 200 and body["count"] == 1
    f = body["flows"][0]
    assert (f["src-ip"], f["src-port"], f["dst-ip"], f["dst-port"]) == ("127.0.0.1", 1094, PEER, 45000)
    assert (f["experiment-id"], f["activity-id"], f["application"]) == (2, 3, "xrootd/5.5")
    assert f["source"] == "api" and f["start-time"] == doc["flow-lifecycle"]["start-time"]

    # A repeated start is not a new flow: no second firefly.
    assert http("POST", env["api"] + "/api/v1/flows", flow())[0] == 202
    assert env["peer"].quiet() == []

    assert http("POST", env["api"] + "/api/v1/flows", flow(state="end"))[0] == 202
    [end] = env["peer"].recv(1)
    edoc = assert_valid(end)
    assert edoc["flow-lifecycle"]["state"] == "end"
    assert edoc["flow-lifecycle"]["start-time"] == doc["flow-lifecycle"]["start-time"]
    assert edoc["flow-lifecycle"]["end-time"] >= edoc["flow-lifecycle"]["start-time"]
    assert http("GET", env["api"] + "/api/v1/flows")[1]["count"] == 0

    # An end for a flow never started: counted and logged, nothing sent.
    assert http("POST", env["api"] + "/api/v1/flows", flow(state="end", **{"src-port": 7}))[0] == 202
    assert env["peer"].quiet() == []
    env["d"].wait_log("end for unknown flow")
    m = metrics(env["prom"])
    assert m['scitagd_events_total{source="api",state="start"}'] == 2
    assert m['scitagd_events_total{source="api",state="end"}'] == 2
    assert m['scitagd_flow_table_events_total{kind="duplicate_start"}'] == 1
    assert m['scitagd_flow_table_events_total{kind="unknown_end"}'] == 1
    assert m['scitagd_fireflies_sent_total{destination="peer"}'] == 2
    assert m[f'scitagd_fireflies_sent_total{{destination="127.0.0.1:{env["coll"].port}"}}'] == 2
    assert 'scitagd_sink_queue_dropped_total{sink="firefly"}' in m
    assert m["scitagd_registry_age_seconds"] > 0


def test_api_ipv6_flow(env: dict[str, Any]) -> None:
    if env["peer6"] is None:
        pytest.skip("::1 port taken")
    status, body = http("POST", env["api"] + "/api/v1/flows",
                        flow(**{"src-ip": "::1", "dst-ip": "0:0::1", "experiment": 3, "activity": 14}))
    assert status == 202 and body["dst-ip"] == "::1" and body["scitag"] == 206
    [d] = env["peer6"].recv(1)
    assert assert_valid(d)["flow-id"]["afi"] == "ipv6"


@pytest.mark.parametrize("body,field,needle", [
    (flow(**{"src-port": "x"}), "src-port", "expected a port"),
    (flow(**{"src-port": 70000}), "src-port", "expected a port"),
    (flow(**{"dst-ip": "300.1.1.1"}), "dst-ip", "expected an IPv4 or IPv6"),
    (flow(**{"dst-ip": "::1"}), "dst-ip", "same address family"),
    (flow(state="ongoing"), "state", "expected start or end"),
    (flow(protocol="sctp"), "protocol", "expected tcp or udp"),
    (flow(experiment="nosuch"), "experiment", "unknown experiment name"),
    (flow(activity="nosuch"), "activity", "unknown activity name"),
    (flow(experiment=600, activity=1), "experiment", "out of range"),
    (flow(activity=64), "activity", "out of range"),
    (flow(colour="red"), "colour", "unknown field"),
    (flow(application=["x"]), "application", "expected a string"),
    ({k: v for k, v in flow().items() if k != "dst-port"}, "dst-port", "missing"),
])
def test_api_rejects_with_field(env: dict[str, Any], body: dict[str, Any], field: str, needle: str) -> None:
    status, out = http("POST", env["api"] + "/api/v1/flows", body)
    assert status == 400
    assert out["field"] == field and needle in out["error"], out
    m = metrics(env["prom"])
    assert sum(v for k, v in m.items() if k.startswith('scitagd_rejected_total{') and 'source="api"' in k) == 1


def test_api_body_limits(env: dict[str, Any]) -> None:
    status, out = http("POST", env["api"] + "/api/v1/flows", raw=b"{" + b" " * 5000 + b"}")
    assert status == 413 and "over 1024 bytes" in out["error"]
    status, out = http("POST", env["api"] + "/api/v1/flows", raw=b"{not json")
    assert status == 400 and "not JSON" in out["error"]
    status, out = http("POST", env["api"] + "/api/v1/flows", raw=b"[1,2]")
    assert status == 400 and "JSON object" in out["error"]
    status, out = http("GET", env["api"] + "/healthz")
    assert status == 200 and out["status"] == "ok"
    assert "Traceback" not in env["d"].log()


def test_named_pipe_protocol(env: dict[str, Any]) -> None:
    pipe: Path = env["pipe"]
    st = os.stat(pipe)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    # A line split across two writes (the writer keeps the pipe open in between).
    fd = os.open(pipe, os.O_WRONLY)
    os.write(fd, b"start tcp 127.0.0.1 2001 ")
    time.sleep(0.2)
    os.write(fd, f"{PEER} 46001 3 14\n".encode())
    os.close(fd)
    [d] = env["peer"].recv(1)
    doc = assert_valid(d)
    assert doc["flow-id"]["src-port"] == 2001 and doc["context"]["activity-id"] == 14

    # Garbage, an overlong line, bad values: one warning each, and the next good line works.
    with open(pipe, "wb") as f:
        f.write(b"hello world\n")
        f.write(b"start tcp 127.0.0.1 " + b"9" * 5000 + b"\n")
        f.write(f"start tcp 127.0.0.1 2002 {PEER} 46002 3 99\n".encode())
        f.write(f"start tcp 127.0.0.1 x {PEER} 46002 3 1\n".encode())
        f.write(b"\xff\xfe\n")
        f.write(f"start tcp 127.0.0.1 2003 {PEER} 46003 3 1\n".encode())
    [d] = env["peer"].recv(1)
    assert assert_valid(d)["flow-id"]["src-port"] == 2003
    log = env["d"].wait_log("reason=not_ascii")
    for reason in ("bad_field_count", "overlong", "bad_activity", "not_a_number"):
        assert f"reason={reason}" in log
    m = metrics(env["prom"])
    assert m['scitagd_rejected_total{reason="overlong",source="namedPipe"}'] == 1
    assert m['scitagd_rejected_total{reason="bad_activity",source="namedPipe"}'] == 1


@needs_root
def test_named_pipe_group(run_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    import grp

    group = grp.getgrnam("nogroup" if _has_group("nogroup") else "nobody")
    pipe = tmp_path / "np"
    run_daemon(f"plugins:\n  namedPipe: {{pipePath: {pipe}, group: {group.gr_name}, mode: '0620'}}\n")
    st = os.stat(pipe)
    assert st.st_gid == group.gr_gid and stat.S_IMODE(st.st_mode) == 0o620


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_named_pipe_unknown_group_is_a_clean_error(run_daemon: Callable[..., DaemonProc],
                                                   tmp_path: Path) -> None:
    d = run_daemon(f"plugins:\n  namedPipe: {{pipePath: {tmp_path}/np, group: no-such-group-x}}\n",
                   wait_for=None)
    assert d.proc.wait(10) == 2
    assert "group 'no-such-group-x': no such group" in d.log() and "Traceback" not in d.log()


def test_named_pipe_many_writers(env: dict[str, Any]) -> None:
    pipe: Path = env["pipe"]
    writers, per_writer = 8, 50

    def writer(w: int) -> None:
        for i in range(per_writer):
            # StoRM's way: open, write one line, close.
            with open(pipe, "w") as f:
                f.write(f"start tcp 127.0.0.1 {10000 + w * 100 + i} {PEER} 47000 2 1\n")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = env["peer"].recv(writers * per_writer, timeout=10)
    ports = sorted(json_body(d)["flow-id"]["src-port"] for d in got)
    assert ports == sorted(10000 + w * 100 + i for w in range(writers) for i in range(per_writer))


def _producer_wires() -> list[bytes]:
    return [json.loads(line)["wire"].encode() for line in PRODUCERS.read_text().splitlines()]


def test_firefly_source_ipv4_and_ipv6(env: dict[str, Any]) -> None:
    wires = _producer_wires()
    # Real XRootD fireflies, re-addressed to our loopback peer so the sink's output stays local.
    xrd_start = wires[0].replace(b'"dst-ip":"127.0.0.1"', f'"dst-ip":"{PEER}"'.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(xrd_start, ("127.0.0.1", env["ff"]))
    [d] = env["peer"].recv(1)
    doc = assert_valid(d)
    assert doc["context"] == {"experiment-id": 1, "activity-id": 1, "application": "xrdcp"}
    assert doc["flow-lifecycle"]["start-time"].startswith("2026-11-25T16:34:07.373828")

    if env["peer6"] is not None:
        xrd6 = [w for w in wires if b'"src-ip":"::1"' in w][0]  # the published XRootD GET over ::1
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.sendto(xrd6, ("::1", env["ff"]))
        [d6] = env["peer6"].recv(1)
        doc6 = assert_valid(d6)
        assert doc6["flow-id"]["afi"] == "ipv6" and doc6["context"]["activity-id"] == 16

    # Garbage and unmarkable fireflies are counted, the listener keeps going.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\x01garbage", ("127.0.0.1", env["ff"]))
        s.sendto(wires[5], ("127.0.0.1", env["ff"]))  # flowd-go test data: dst-port 0
        s.sendto(wires[0][:80], ("127.0.0.1", env["ff"]))
        again = xrd_start.replace(b'"dst-port":39042', b'"dst-port":39043')
        s.sendto(again, ("127.0.0.1", env["ff"]))
    [d] = env["peer"].recv(1)
    assert json_body(d)["flow-id"]["dst-port"] == 39043
    m = metrics(env["prom"])
    assert m['scitagd_rejected_total{reason="no_json",source="firefly"}'] == 1
    assert m['scitagd_rejected_total{reason="bad_port",source="firefly"}'] == 1
    assert m['scitagd_rejected_total{reason="truncated",source="firefly"}'] == 1
    assert m['scitagd_events_total{source="firefly",state="start"}'] >= 2


def test_sigterm_and_sigint_stop_within_2s(run_daemon: Callable[..., DaemonProc]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        d = run_daemon(f"plugins:\n  api: {{bindPort: {free_port()}}}\n  firefly: "
                       f"{{bindPort: {free_port(socket.SOCK_DGRAM)}}}\n")
        rc, took = d.stop(sig)
        assert rc == 0 and took < 2.0, (sig, rc, took, d.log())
        assert "stopped in" in d.log() and "Traceback" not in d.log()


def test_own_fireflies_are_not_read_back(run_daemon: Callable[..., DaemonProc]) -> None:
    """A flow whose peer is this host's own listener: the sink's datagram must not loop."""
    ff, api, prom = free_port(socket.SOCK_DGRAM), free_port(), free_port()
    d = run_daemon(f"""
plugins:
  api: {{bindPort: {api}}}
  firefly: {{bindAddress: 127.0.0.1, bindPort: {ff}}}
backends:
  firefly: {{destinationPort: {ff}}}
  prometheus: {{port: {prom}}}
""")
    base = f"http://127.0.0.1:{api}/api/v1/flows"
    assert http("POST", base, flow(**{"dst-ip": "127.0.0.1"}))[0] == 202
    assert http("POST", base, flow(**{"dst-ip": "127.0.0.1", "state": "end"}))[0] == 202
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        m = metrics(prom)
        if m.get('scitagd_ignored_total{source="firefly",why="own_firefly"}') == 2:
            break
        time.sleep(0.05)
    assert m['scitagd_ignored_total{source="firefly",why="own_firefly"}'] == 2
    assert m['scitagd_flow_table_events_total{kind="unknown_end"}'] == 0
    assert "end for unknown flow" not in d.log()


def test_allowed_sources_and_forwarding(run_daemon: Callable[..., DaemonProc], udp_receiver: Any) -> None:
    fwd = udp_receiver("127.0.0.1")
    peer = udp_receiver(PEER)
    ff, prom = free_port(socket.SOCK_DGRAM), free_port()
    run_daemon(f"""
plugins:
  firefly:
    bindAddress: 127.0.0.1
    bindPort: {ff}
    allowedSources: ["127.0.0.3/32"]
    fireflyReceivers: [{{address: 127.0.0.1, port: {fwd.port}}}]
backends:
  firefly: {{destinationPort: {peer.port}}}
  prometheus: {{port: {prom}}}
""")
    wire = _producer_wires()[0].replace(b'"dst-ip":"127.0.0.1"', f'"dst-ip":"{PEER}"'.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(wire, ("127.0.0.1", ff))  # not allowed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.3", 0))
        s.sendto(wire, ("127.0.0.1", ff))  # allowed
    assert fwd.recv(1) == [wire]  # forwarded verbatim
    assert len(peer.recv(1)) == 1
    assert fwd.quiet() == [] and peer.quiet() == []
    assert metrics(prom)['scitagd_rejected_total{reason="not_allowed",source="firefly"}'] == 1


def test_unreachable_registry_url_does_not_stop_daemon(run_daemon: Callable[..., DaemonProc],
                                                       tmp_path: Path) -> None:
    api = free_port()
    dead = free_port()  # nothing listens there
    d = run_daemon(f"""
plugins:
  api: {{bindPort: {api}}}
registry:
  url: http://127.0.0.1:{dead}/api.json
  cacheFile: {tmp_path}/reg.json
  timeout: 1
""")
    d.wait_log("registry refresh failed, keeping bundled")
    status, body = http("POST", f"http://127.0.0.1:{api}/api/v1/flows", flow(experiment="cms",
                        activity="Data Challenge", **{"dst-ip": "127.0.0.9"}))
    assert status == 202 and body["experiment-id"] == 3


def test_bad_config_and_busy_port_are_clean_errors(run_daemon: Callable[..., DaemonProc]) -> None:
    d = run_daemon("plugins:\n  api:\n    bindPort: 0\n", wait_for=None)
    assert d.proc.wait(10) == 2
    assert d.log().strip() == (f"scitagd: error: {d.conf_path}: plugins.api: bindPort 0: expected a "
                               "port 1..65535")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        d = run_daemon(f"plugins:\n  firefly: {{bindAddress: 127.0.0.1, bindPort: {port}}}\n",
                       wait_for=None)
        assert d.proc.wait(10) == 2
    assert "plugins.firefly: cannot start" in d.log() and "Traceback" not in d.log()
    d = run_daemon("plugins:\n  iperf3:\n", wait_for=None)
    assert d.proc.wait(10) == 2 and "plugins.iperf3: experimentIDs and activityIDs not given" in d.log()
    assert "Traceback" not in d.log()


def test_expiry_sends_end(run_daemon: Callable[..., DaemonProc], udp_receiver: Any) -> None:
    peer = udp_receiver(PEER)
    api = free_port()
    run_daemon(f"""
plugins:
  api: {{bindPort: {api}}}
backends:
  firefly: {{destinationPort: {peer.port}, prependSyslog: false}}
flowTable: {{expireAfter: 1}}
""")
    assert http("POST", f"http://127.0.0.1:{api}/api/v1/flows", flow())[0] == 202
    start, end = peer.recv(2, timeout=5)
    assert start.startswith(b"{")  # prependSyslog: false
    assert json.loads(end)["flow-lifecycle"]["state"] == "end"
    assert http("GET", f"http://127.0.0.1:{api}/api/v1/flows")[1]["count"] == 0


def test_collector_hostname_resolution(run_daemon: Callable[..., DaemonProc], udp_receiver: Any) -> None:
    coll = udp_receiver("127.0.0.1")
    api = free_port()
    run_daemon(f"""
plugins:
  api: {{bindPort: {api}}}
backends:
  firefly: {{sendToPeer: false, collectors: ["localhost:{coll.port}"]}}
""")
    assert http("POST", f"http://127.0.0.1:{api}/api/v1/flows", flow())[0] == 202
    assert len(coll.recv(1)) == 1
    assert coll.quiet() == []  # one copy per collector even when the name has A and AAAA


def test_unresolvable_collector_is_counted_not_fatal(run_daemon: Callable[..., DaemonProc]) -> None:
    api, prom = free_port(), free_port()
    run_daemon(f"""
plugins:
  api: {{bindPort: {api}}}
backends:
  firefly: {{sendToPeer: false, collectors: ["no-such-host.invalid:10514"]}}
  prometheus: {{port: {prom}}}
""")
    assert http("POST", f"http://127.0.0.1:{api}/api/v1/flows", flow())[0] == 202
    assert metrics(prom)['scitagd_fireflies_failed_total{destination="no-such-host.invalid:10514",'
                         'error="resolve"}'] >= 1


