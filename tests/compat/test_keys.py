# SPDX-License-Identifier: Apache-2.0
"""No silent keys: every key of flowd-go's reference configuration (flowd-go.md section 1.4, read
from the reference itself so that none is skipped) is either implemented (its value lands where
it acts, and nothing is said) or named in a start-up warning that says what scitagd does instead
(the text is checked). The behaviour behind each "implemented" is tested elsewhere: the file is
named beside the key."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, Union

import pytest
import yaml

from scitagd.compat import Notice, notices
from scitagd.config import Config, from_mapping
from scitagd.errors import ConfigError

from ..conftest import SHARED, require_shared

REFERENCE = SHARED / "design" / "reference" / "flowd-go.md"


def reference_keys() -> List[str]:
    """The keys of section 1.4's table, expanded: `a.b` / `.c` -> a.b, a.c; `a.{x,y}Z` -> a.xZ,
    a.yZ; `…stun.k` -> backends.firefly.stun.k (relative to the last full key's parent)."""
    text = require_shared(REFERENCE).read_text()
    section = text.split("### 1.4", 1)[1].split("\n### ", 1)[0]
    keys: List[str] = []
    parent = ""
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        parts = re.findall(r"`([^`]+)`", line.split("|")[1])
        if parts[0].startswith("…"):
            base = parent + "." + parts[0].lstrip("…")
        else:
            base = parts[0]
            parent = base.rsplit(".", 1)[0] if "." in base else ""
        for i, p in enumerate(parts):
            if i == 0:
                p = base
            elif p.startswith(".") or p.startswith("{"):
                p = base.rsplit(".", 1)[0] + ("" if p.startswith(".") else ".") + p
            m = re.match(r"^(.*)\{([^}]*)\}(.*)$", p)
            keys += [m.group(1) + x + m.group(3) for x in m.group(2).split(",")] if m else [p]
    return keys


def nested(path: str, value: Any) -> Dict[str, Any]:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out  # type: ignore[no-any-return]


def merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


IPERF = {"plugins": {"iperf3": {"experimentIDs": [2, 3], "activityIDs": [1, 2], "cgroupPath": "/sys/fs/cgroup"}}}


def watcher(conf: Config) -> Any:
    from scitagd.wiring.sources import watcher_config

    skops = conf.enrichers is not None and conf.enrichers.skops is not None
    return watcher_config(conf, skops)


Check = Callable[[Config], Any]
Expect = Union[Tuple[str, Check, str], Tuple[str, str]]
# key -> (value, extra config, expectation): ("impl", check, where its behaviour is tested) or
# ("notice", text the warning must contain)
CASES: Dict[str, Tuple[Any, Dict[str, Any], Expect]] = {
    "pidPath": ("/run/x.pid", {}, ("impl", lambda c: c.pid == "/run/x.pid", "compat/test_cli.py")),
    "workDir": ("/var/cache/flowd-go", {}, ("notice", "not used (flowd-go does not use it either)")),
    "plugins.api.bindAddress": ("127.0.0.2", {}, ("impl", lambda c: c.plugins.api.bind_address == "127.0.0.2",
                                                  "hostile/test_daemon_api.py")),
    "plugins.api.bindPort": (7778, {}, ("impl", lambda c: c.plugins.api.bind_port == 7778, "core/test_daemon_e2e.py")),
    "plugins.namedPipe.maxReaders": (9, {}, ("notice", "not needed: one reader serves any number of writers")),
    "plugins.namedPipe.buffSize": (8192, {}, ("impl", lambda c: c.plugins.namedPipe.buff_size == 8192,
                                              "hostile/test_daemon_pipe.py")),
    "plugins.namedPipe.pipePath": ("/run/np", {}, ("impl", lambda c: c.plugins.namedPipe.pipe_path == "/run/np",
                                                   "core/test_daemon_e2e.py")),
    "plugins.firefly.bindAddress": ("127.0.0.3", {}, ("impl", lambda c: c.plugins.firefly.addresses() == ["127.0.0.3"],
                                                      "hostile/test_daemon_firefly.py")),
    "plugins.firefly.bindPort": (10600, {}, ("impl", lambda c: c.plugins.firefly.bind_port == 10600,
                                             "hostile/test_daemon_firefly.py")),
    "plugins.firefly.bufferSize": (2048, {}, ("impl", lambda c: c.plugins.firefly.buffer_size == 2048,
                                              "compat/test_keys.py::test_buffer_size")),
    "plugins.firefly.deadline": (5, {}, ("notice", "not needed: datagrams are read as they arrive")),
    "plugins.firefly.hasSyslogHeader": (True, {}, ("notice", "a syslog header is recognised in each datagram")),
    "plugins.perfsonar.experimentId": (3, {"plugins": {"perfsonar": {"mode": "ports"}}},
                                       ("impl", lambda c: c.plugins.perfsonar.experiment == 3, "enrich/test_enrich.py")),
    "plugins.perfsonar.activityId": (4, {"plugins": {"perfsonar": {"mode": "ports"}}},
                                     ("impl", lambda c: c.plugins.perfsonar.activity == 4, "enrich/test_enrich.py")),
    "plugins.iperf3.minSourcePort": (40000, IPERF, ("impl", lambda c: watcher(c).rules[-1].local_ports == "40000-65535",
                                                    "compat/test_iperf3.py")),
    "plugins.iperf3.maxSourcePort": (41000, IPERF, ("impl", lambda c: watcher(c).rules[-1].local_ports == "1-41000",
                                                    "compat/test_iperf3.py")),
    "plugins.iperf3.minDestinationPort": (5201, IPERF, ("impl", lambda c: watcher(c).rules[-1].remote_ports
                                                        == "5201-65535", "compat/test_iperf3.py")),
    "plugins.iperf3.maxDestinationPort": (5209, IPERF, ("impl", lambda c: watcher(c).rules[-1].remote_ports == "1-5209",
                                                        "compat/test_iperf3.py")),
    "plugins.iperf3.cgroupPath": ("", IPERF, ("impl", lambda c: watcher(c).cgroup_path.startswith("/sys/fs/cgroup"),
                                              "compat/test_keys.py::test_iperf3_own_cgroup")),
    "plugins.iperf3.programPath": ("/opt/w.bpf.o", IPERF, ("impl", lambda c: watcher(c).program_path == "/opt/w.bpf.o",
                                                           "compat/test_bpf_objects.py")),
    "plugins.iperf3.debugMode": (True, IPERF, ("impl", lambda c: watcher(c).debug_mode, "compat/test_bpf_objects.py")),
    "plugins.iperf3.randomIDs": (True, IPERF, ("impl", lambda c: watcher(c).rules[-1].random, "compat/test_iperf3.py")),
    "plugins.iperf3.activityIDs": ([5, 6], IPERF, ("impl", lambda c: watcher(c).rules[-1].tags == ((2, 5), (3, 6)),
                                                   "compat/test_iperf3.py")),
    "plugins.iperf3.experimentIDs": ([7, 8], IPERF, ("impl", lambda c: watcher(c).rules[-1].tags == ((7, 1), (8, 2)),
                                                     "compat/test_iperf3.py")),
    "backends.marker.targetInterfaces": (["eth9"], {}, ("impl", lambda c: c.backends.marker.target_interfaces
                                                        == ["eth9"], "marker/test_marker.py")),
    "backends.marker.discoverInterfaces": (True, {}, ("impl", lambda c: c.backends.marker.target_interfaces == [],
                                                      "marker/test_marker.py::test_discover_interfaces")),
    "backends.marker.removeQdisc": (False, {}, ("impl", lambda c: c.backends.marker.remove_qdisc is False,
                                                "marker/test_marker.py::test_own_qdisc_removed_only_when_empty")),
    "backends.marker.programPath": ("/opt/m.bpf.o", {}, ("impl", lambda c: c.backends.marker.program_path
                                                         == "/opt/m.bpf.o", "compat/test_bpf_objects.py")),
    "backends.marker.markingStrategy": ("hopbyhop", {}, ("impl", lambda c: c.backends.marker.marking_strategy
                                                         == "hopByHop", "marker/test_marker.py")),
    "backends.marker.debugMode": (True, {}, ("impl", lambda c: c.backends.marker.debug_mode,
                                             "compat/test_bpf_objects.py")),
    "backends.marker.matchAll": (True, {"backends": {"marker": {"matchExperiment": 2, "matchActivity": 1}}},
                                 ("impl", lambda c: c.backends.marker.match_all, "marker/test_marker.py")),
    "backends.firefly.destinationPort": (10600, {}, ("impl", lambda c: c.backends.firefly.destination_port == 10600,
                                                     "core/test_daemon_e2e.py")),
    "backends.firefly.prependSyslog": (False, {}, ("impl", lambda c: c.backends.firefly.prepend_syslog is False,
                                                   "compat/test_fireflies.py")),
    "backends.firefly.sendToCollector": (True, {}, ("impl", lambda c: c.backends.firefly.collector_list()
                                                    == [("127.0.0.1", 10514)], "core/test_daemon_e2e.py")),
    "backends.firefly.collectorAddress": ("192.0.2.7", {"backends": {"firefly": {"sendToCollector": True}}},
                                          ("impl", lambda c: c.backends.firefly.collector_list()[0][0] == "192.0.2.7",
                                           "core/test_daemon_e2e.py")),
    "backends.firefly.collectorPort": (10700, {"backends": {"firefly": {"sendToCollector": True}}},
                                       ("impl", lambda c: c.backends.firefly.collector_list()[0][1] == 10700,
                                        "core/test_daemon_e2e.py")),
    "backends.firefly.enrich": (True, {}, ("impl", lambda c: c.backends.firefly.enrich, "enrich/test_enrich.py")),
    "backends.firefly.enrichmentMode": ("", {}, ("impl", lambda c: c.backends.firefly.enrichment_mode == "full",
                                                 "enrich/test_enrich.py")),
    "backends.firefly.stun": ({}, {}, ("impl", lambda c: c.backends.firefly.stun is not None, "compat/test_stun.py")),
    "backends.firefly.stun.manualMapping": ({"10.0.0.1": "192.0.2.1"}, {},
                                            ("impl", lambda c: c.backends.firefly.stun.manual_mapping
                                             == {"10.0.0.1": "192.0.2.1"}, "compat/test_stun.py")),
    "backends.firefly.stun.stunServers": (["192.0.2.9:3478"], {}, ("impl", lambda c: c.backends.firefly.stun.stun_servers
                                                                   == ["192.0.2.9:3478"], "compat/test_stun.py")),
    "backends.prometheus.log": (False, {}, ("impl", lambda c: c.backends.prometheus.log is False,
                                            "compat/test_keys.py::test_prometheus_log_false")),
    "backends.prometheus.bindAddress": ("127.0.0.4", {}, ("impl", lambda c: c.backends.prometheus.bind_address
                                                          == "127.0.0.4", "core/test_daemon_e2e.py")),
    "backends.prometheus.netlinkPort": (9100, {}, ("impl", lambda c: c.backends.prometheus.listen_port == 9100,
                                                   "core/test_config.py")),
    "backends.prometheus.skopsPort": (9101, {}, ("notice", "not used: both enrichers' per-flow metrics are served on "
                                                           "one port (8080), told apart by their label flavour")),
    "enrichers.period": (500, {"enrichers": {"netlink": {}}}, ("impl", lambda c: c.enrichers.period == 500,
                                                               "enrich/test_enrich.py")),
    "enrichers.netlink.protocol": (6, {}, ("impl", lambda c: c.enrichers.netlink.protocol == 6,
                                           "compat/test_keys.py::test_netlink_protocol")),
    "enrichers.netlink.ext": (2, {}, ("impl", lambda c: c.enrichers.netlink.ext == 2,
                                      "compat/test_keys.py::test_netlink_ext_and_state")),
    "enrichers.netlink.state": (2, {}, ("impl", lambda c: c.enrichers.netlink.state == 2,
                                        "compat/test_keys.py::test_netlink_ext_and_state")),
    "enrichers.skops.cgroupPath": ("/sys/fs/cgroup/system.slice", {},
                                   ("impl", lambda c: watcher(c).cgroup_path == "/sys/fs/cgroup/system.slice",
                                    "enrich/test_enrich.py")),
    "enrichers.skops.programPath": ("/opt/s.bpf.o", {}, ("impl", lambda c: watcher(c).program_path == "/opt/s.bpf.o",
                                                         "compat/test_bpf_objects.py")),
    "enrichers.skops.debugMode": (True, {}, ("impl", lambda c: watcher(c).debug_mode, "compat/test_bpf_objects.py")),
    "enrichers.skops.strategy": ("transition", {}, ("notice", "transition is not implemented: sock_ops samples come "
                                                              "at most once per enrichers.period per socket")),
}


def test_the_reference_table_is_read_whole() -> None:
    keys = reference_keys()
    assert len(keys) == len(set(keys)) == 53, keys
    assert "plugins.iperf3.maxDestinationPort" in keys and "backends.firefly.stun.stunServers" in keys
    assert set(keys) == set(CASES), (sorted(set(keys) - set(CASES)), sorted(set(CASES) - set(keys)))


@pytest.mark.parametrize("key", sorted(CASES))
def test_every_flowd_go_key_is_implemented_or_warned(key: str) -> None:
    value, extra, expect = CASES[key]
    raw = merge(extra, nested(key, value))
    text = yaml.safe_dump(raw)
    data = yaml.safe_load(text)
    conf = from_mapping(data, "<test>")
    said = [n for n in notices(data, conf) if n.key == key]
    if expect[0] == "notice":
        assert len(said) == 1, f"{key}: expected one warning, got {said}"
        assert expect[1] in said[0].text, said[0].text
        assert str(said[0]).startswith(f"{key}: ")
    else:
        check, where = expect[1], expect[2]
        assert not said, f"{key}: implemented, yet warned: {said}"
        assert check(conf), f"{key}: {value!r} did not reach the config (behaviour tested in {where})"
        assert (Path(__file__).parents[1] / where.split("::")[0]).exists(), where


@pytest.mark.parametrize("text,needle", [
    ("enrichers: {netlink: {protocol: 17}}", "protocol 17: expected 6 (TCP)"),
    ("plugins: {iperf3: {activityIDs: [1, 2, 3]}}", "flowd-go's default [0, 1, 2], used when experimentIDs is not given, "
                                              "holds 0"),
    ("plugins: {iperf3: {experimentIDs: [2], activityIDs: [1, 2]}}", "same length"),
    ("plugins: {namedPipe: {pipePath: np}}", "pipePath 'np': expected an absolute path"),
    ("plugins: {perfsonar: {experimentId: 2, experimentID: 3}}", "the same setting spelt two ways"),
    ("plugins: {firefly: {bufferSize: 1024}}", "bufferSize 1024: expected 2048..65535"),
    ("backends: {firefly: {enrichmentMode: fancy}}", "enrichmentMode 'fancy'"),
    ("pidPath: relative.pid", "pidPath 'relative.pid': expected an absolute path"),
    ("pidPath: /run/a.pid\npidFile: /run/b.pid", "the same setting (pidPath is flowd-go's name)"),
])
def test_values_flowd_go_took_that_scitagd_refuses_aloud(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        from_mapping(yaml.safe_load(text), "<test>")


def test_iperf3_without_ids_is_refused_at_start() -> None:
    """`iperf3: {}` reads (scitagd conf shows it) but does not start: flowd-go's default ids hold 0."""
    from scitagd.errors import StartupError
    from scitagd.wiring.sources import watcher_config

    c = from_mapping({"plugins": {"iperf3": {}}}, "<t>")
    with pytest.raises(StartupError, match=r"plugins\.iperf3: experimentIDs and activityIDs not given: flowd-go's "
                                           r"default \[0, 1, 2\] holds experiment 0"):
        watcher_config(c, False)


def conf_of(text: str) -> Tuple[Config, List[Notice]]:
    data = yaml.safe_load(text)
    c = from_mapping(data, "<t>")
    return c, notices(data, c)


def test_notices_of_combinations() -> None:
    c, said = conf_of("plugins: {perfsonar: {experimentId: 2, activityId: 3}}\nbackends: {marker: {}}")
    assert [n.key for n in said] == ["plugins.perfsonar"]
    assert "backends.marker.matchAll turned on, as flowd-go does: every IPv6 TCP/UDP packet leaving lo is marked " \
           "experiment 2 activity 3" in said[0].text
    from scitagd.wiring.sinks import match_all

    assert match_all(c) == (2, 3)
    c, said = conf_of("plugins: {perfsonar: {experimentID: 2, activityID: 3, ports: '5201'}}")
    assert {n.key for n in said} == {"plugins.perfsonar", "plugins.perfsonar.experimentID",
                                     "plugins.perfsonar.activityID", "plugins.perfsonar.ports"}
    assert "flowd-go reads experimentId and ignores this spelling" in str(said)
    _, said = conf_of("backends: {marker: {discoverInterfaces: true, targetInterfaces: [lo]}}")
    assert [str(n) for n in said] == ["backends.marker.discoverInterfaces: flowd-go replaces targetInterfaces by the "
                                      "discovered interfaces; scitagd marks on both (lo and the discovered ones)"]
    _, said = conf_of("backends: {marker: {debugMode: true, programPath: /opt/m.o}}")
    assert "no effect with programPath" in str(said)
    _, said = conf_of("plugins: {namedPipe: {buffSize: 1000}}")
    assert "each read takes 4096 bytes" in str(said)
    _, said = conf_of("plugins: {watcher: {cgroupPath: /sys/fs/cgroup/a}}\nenrichers: {skops: {cgroupPath: /x}}")
    assert "the sock_ops program is the watcher's, attached to plugins.watcher.cgroupPath (/sys/fs/cgroup/a)" in str(said)
    _, said = conf_of("enrichers: {netlink: {ext: 8}}")
    assert "leaves out INET_DIAG_INFO (2)" in str(said)


def test_flowd_go_reference_file_runs_and_warns(run_daemon: Any, tmp_path: Path) -> None:
    """`scitagd run` on a flowd-go file (the keys that need no root): one warning line per key
    taken but not needed, each naming the key; `scitagd conf` says the same on stderr."""
    from ..conftest import free_port

    api, ff, prom = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    text = f"""
workDir: /var/cache/flowd-go
pidPath: {tmp_path}/flowd-go.pid
plugins:
  api: {{bindAddress: 127.0.0.1, bindPort: {api}}}
  namedPipe: {{maxReaders: 5, buffSize: 1000, pipePath: {tmp_path}/np}}
  firefly: {{bindAddress: 127.0.0.1, bindPort: {ff}, bufferSize: 4096, deadline: 0, hasSyslogHeader: false}}
backends:
  firefly: {{destinationPort: 10514, prependSyslog: true, sendToCollector: false, enrich: false, enrichmentMode: lean}}
  prometheus: {{log: true, bindAddress: 127.0.0.1, netlinkPort: {prom}, skopsPort: 8081}}
"""
    d = run_daemon(text)
    log = d.log()
    warned = re.findall(r"warning scitagd\.config config key=(\S+) ", log)
    assert warned == ["workDir", "plugins.namedPipe.buffSize", "plugins.namedPipe.maxReaders",
                      "plugins.firefly.deadline", "plugins.firefly.hasSyslogHeader", "backends.prometheus.skopsPort"]
    assert (tmp_path / "flowd-go.pid").read_text() == f"{d.proc.pid}\n"
    r = subprocess.run([sys.executable, "-m", "scitagd", "conf", "--conf", str(d.conf_path)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stderr.count("scitagd: warning: ") == 6 and "workDir: not used" in r.stderr
    assert yaml.safe_load(r.stdout)["plugins"]["firefly"]["bufferSize"] == 4096
    assert d.stop()[0] == 0
    assert not (tmp_path / "flowd-go.pid").exists()


def test_buffer_size(run_daemon: Any) -> None:
    """plugins.firefly.bufferSize: a datagram longer than it is refused (flowd-go cut it short,
    which spoilt its JSON), counted as too_large; a shorter one is taken."""
    from ..conftest import UdpReceiver, free_port, metrics
    from ..hostile.daemon_helpers import firefly

    ff, prom = free_port(socket.SOCK_DGRAM), free_port()
    rx = UdpReceiver()
    run_daemon(f"plugins:\n  firefly: {{bindAddress: 127.0.0.1, bindPort: {ff}, bufferSize: 2048}}\n"
                   f"backends:\n  firefly: {{sendToPeer: false, collectors: ['127.0.0.1:{rx.port}']}}\n"
                   f"  prometheus: {{port: {prom}}}\n")
    big = firefly("start", 3000, app="x" * 100).replace(b'"version": 1', b'"version": 1, "pad": "' + b"p" * 2100 + b'"')
    small = firefly("start", 3001)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(big, ("127.0.0.1", ff))
        s.sendto(small, ("127.0.0.1", ff))
    got = rx.recv(1)
    assert got and b'"src-port":3001' in got[0] and not rx.quiet()
    assert metrics(prom)['scitagd_rejected_total{reason="too_large",source="firefly"}'] == 1
    rx.close()


def test_prometheus_log_false(run_daemon: Any) -> None:
    from ..conftest import free_port

    prom = free_port()
    d = run_daemon(f"backends:\n  prometheus: {{port: {prom}, log: false}}\n")
    with socket.create_connection(("127.0.0.1", prom)) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        s.recv(100)
    d.stop()
    log = d.log()
    assert "log: false: the metrics server logs nothing from here on" in log
    assert "scitagd.prometheus" not in log.split("log: false", 1)[1]


def test_iperf3_own_cgroup() -> None:
    from scitagd.wiring.sources import own_parent_cgroup

    own = Path("/proc/self/cgroup").read_text().splitlines()
    line = next((x for x in own if x.startswith("0::")), None)
    if line is None:
        pytest.skip("no cgroup v2 here")
    import os

    parent = os.path.dirname(line[3:].rstrip("/")) or "/"
    assert own_parent_cgroup() == os.path.normpath("/sys/fs/cgroup" + parent)


def test_netlink_protocol() -> None:
    c, said = conf_of("enrichers: {netlink: {protocol: 6}}")
    assert c.enrichers.netlink.protocol == 6 and not said


def test_netlink_ext_and_state() -> None:
    """enrichers.netlink.ext and .state select what sock_diag asks for, on a real socket pair."""
    from scitagd.enrich.sockdiag import ALL_BUT_LISTEN, SockDiag

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    c = socket.create_connection(ls.getsockname())
    a, _ = ls.accept()
    four = (c.getsockname()[0], c.getsockname()[1], *ls.getsockname())
    d = SockDiag()
    try:
        full = d.lookup(socket.AF_INET, [four], 255, ALL_BUT_LISTEN)
        assert len(full) == 1 and full[0].info and full[0].cong
        assert {"memInfo", "skMemInfo", "tos", "shutdown"} <= set(full[0].extra), full[0].extra  # tclass: IPv6
        info_only = d.lookup(socket.AF_INET, [four], 2, ALL_BUT_LISTEN)
        assert info_only[0].info and info_only[0].cong is None
        assert not {"memInfo", "skMemInfo", "tos"} & set(info_only[0].extra)  # SHUTDOWN comes unasked
        cong_only = d.lookup(socket.AF_INET, [four], 8, ALL_BUT_LISTEN)
        assert not cong_only[0].info and cong_only[0].cong
        assert d.lookup(socket.AF_INET, [four], 255, 1 << 2) == []  # SYN_SENT only: not this socket
        assert len(d.lookup(socket.AF_INET, [four], 255, 1 << 1)) == 1  # ESTABLISHED
    finally:
        d.close()
        for s in (a, c, ls):
            s.close()
