# SPDX-License-Identifier: Apache-2.0
"""`scitagd config migrate`: flowd's shipped configuration (data/flowd-1.1.7.cfg, checked against
the scitags 1.1.7 package when PyPI answers) and flowd-go's configurations become scitagd YAML
that `scitagd conf` loads, with the differences commented; python flowd's file is read, never run."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from scitagd.errors import CommandError
from scitagd.migrate import migrate, read_flowd

DATA = Path(__file__).parent / "data"
FLOWD_CFG = DATA / "flowd-1.1.7.cfg"
FLOWD_GO = Path(__file__).parents[1] / "data" / "flowd-go.yaml"


def run_migrate(kind: str, path: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "scitagd", "config", "migrate", "--from", kind, str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def loads(text: str, tmp: Path) -> Dict[str, Any]:
    """What `scitagd conf` prints for the migrated file (it must load)."""
    f = tmp / f"migrated-{abs(hash(text))}.yaml"
    f.write_text(text)
    r = subprocess.run([sys.executable, "-m", "scitagd", "conf", "--config", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + "\n" + text
    return dict(yaml.safe_load(r.stdout))


def test_our_copy_is_flowds_shipped_config(tmp_path: Path) -> None:
    """data/flowd-1.1.7.cfg is etc/flowd/flowd.cfg of the scitags 1.1.7 wheel, byte for byte."""
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "scitags==1.1.7", "-d",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    wheels = list(tmp_path.glob("scitags-1.1.7-*.whl"))
    if r.returncode != 0 or not wheels:
        pytest.skip(f"PyPI not reachable here: {r.stderr.strip()[-200:]}")
    assert zipfile.ZipFile(wheels[0]).read("etc/flowd/flowd.cfg") == FLOWD_CFG.read_bytes()


def test_flowds_shipped_config(tmp_path: Path) -> None:
    out = run_migrate("flowd", FLOWD_CFG)
    conf = loads(out, tmp_path)
    assert conf["backends"]["firefly"]["destinationPort"] == 10514
    assert "watcher" not in conf.get("plugins", {})  # NETSTAT_EXPERIMENT is commented out in the file
    assert "flowd refuses to start without NETSTAT_EXPERIMENT and NETSTAT_ACTIVITY" in out
    assert "FLOW_MAP_API '<url>' is not a URL: the bundled registry is used" in out
    # the same file with the commented lines switched on (values filled in)
    text = FLOWD_CFG.read_text().replace("# NETSTAT_EXPERIMENT='<exp>'", "NETSTAT_EXPERIMENT='cms'").replace(
        "# NETSTAT_ACTIVITY='<act>'", "NETSTAT_ACTIVITY=3").replace("# NETSTAT_INTERNAL", "NETSTAT_INTERNAL").replace(
        "# UDP_FIREFLY_DST='<host>'", "UDP_FIREFLY_DST='collector.example.org'").replace(
        "# IP_DISCOVERY_ENABLED = False", "IP_DISCOVERY_ENABLED = False").replace(
        "# UDP_FIREFLY_IP6_SRC=''", "UDP_FIREFLY_IP6_SRC='2001:db8::5'")
    f = tmp_path / "flowd.cfg"
    f.write_text(text)
    conf = loads(run_migrate("flowd", f), tmp_path)
    w = conf["plugins"]["watcher"]
    assert w["rules"][0]["experiment"] == "cms" and w["rules"][0]["activity"] == 3
    assert w["rules"][0]["remoteNetworks"] == ["0.0.0.0/0", "::/0"] and "192.168.0.0/16" in w["ignoreNetworks"]
    fb = conf["backends"]["firefly"]
    assert fb["collectors"] == ["collector.example.org:10514"]
    assert fb["stun"]["manualMapping"] == {"::": "2001:db8::5"} and fb["stun"]["stunServers"] == []


@pytest.mark.parametrize("plugin,check", [
    ("np_api", lambda c: c["plugins"]["namedPipe"]["pipePath"] == "/var/run/flowd"
     and c["plugins"]["namedPipe"]["mode"] == "0666"),
    ("firefly", lambda c: c["plugins"]["firefly"]["bindAddress"] == "0.0.0.0"),
    ("netlink", lambda c: c["plugins"]["watcher"]["rules"][0]["experiment"] == 2 and "netlink" in c["enrichers"]),
    ("iperf", lambda c: c["plugins"]["iperf3"]["randomIDs"] is True
     and c["plugins"]["iperf3"]["experimentIDs"] == [2, 2, 3, 3, 4, 4, 5, 5]),
    ("iperf_rr", lambda c: c["plugins"]["iperf3"]["randomIDs"] is False
     and c["plugins"]["iperf3"]["minSourcePort"] == 5201),
])
def test_every_flowd_plugin(tmp_path: Path, plugin: str, check: Any) -> None:
    f = tmp_path / "flowd.cfg"
    f.write_text(f"PLUGIN = '{plugin}'\nBACKEND = 'udp_firefly,ebpf,prometheus'\nNETLINK_EXPERIMENT = 2\n"
                 "NETLINK_ACTIVITY = 1\nPROMETHEUS_SRV_PORT = 9001\nNETWORK_INTERFACE = 'eth0,eth1'\n")
    conf = loads(run_migrate("flowd", f), tmp_path)
    assert check(conf), conf
    assert conf["backends"]["marker"]["targetInterfaces"] == ["eth0", "eth1"]
    assert conf["backends"]["prometheus"]["port"] == 9001 and "netlink" in conf["enrichers"]


def test_flowd_config_is_read_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    f = tmp_path / "flowd.cfg"
    f.write_text(f"import os\nos.system('touch {marker}')\nPLUGIN = 'np_api'\nBACKEND = 'udp_firefly'\n"
                 f"X = __import__('os').system('touch {marker}')\nY = [1, 2][0]\n")
    values, skipped = read_flowd(f.read_text(), str(f))
    assert values == {"PLUGIN": "np_api", "BACKEND": "udp_firefly"}
    assert [s.split(":")[0] for s in skipped] == ["line 1", "line 2", "line 5", "line 6"]
    out = run_migrate("flowd", f)
    assert not marker.exists()
    assert "line 2: \"os.system('touch" in out and "is not a literal assignment: not read" in out
    loads(out, tmp_path)
    f.write_text("PLUGIN = 'np_api\n")
    with pytest.raises(CommandError, match="not Python"):
        migrate("flowd", str(f))


def test_flowd_go_reference_configuration(tmp_path: Path) -> None:
    """tests/data/flowd-go.yaml: every key of flowd-go's rpm/conf.yaml switched on."""
    out = run_migrate("flowd-go", FLOWD_GO)
    conf = loads(out, tmp_path)
    assert conf["pidFile"] == "/tmp/scitagd-test.pid" and "workDir" not in conf
    assert "# workDir: /var/cache/flowd-go" in out and "# maxReaders: 5" in out and "# skopsPort: 8081" in out
    ps = conf["plugins"]["perfsonar"]
    assert (ps["experimentId"], ps["activityId"], ps["mode"]) == (1, 2, "all")
    assert "flowd-go ignored experimentID (its rpm/conf.yaml's spelling) and tagged with 0" in out
    assert "iperf3" not in conf["plugins"] and "holds 0, not an experiment id" in out
    assert conf["backends"]["marker"]["matchAll"] is True
    assert conf["enrichers"]["netlink"] == {"protocol": 6, "ext": 255, "state": 3071}


def test_flowd_go_defaults_written_out(tmp_path: Path) -> None:
    """What flowd-go did without the keys: its pid file, its pipe 'np' in its working directory,
    firefly on 127.0.0.1 only; its own eBPF objects and unknown keys commented out."""
    f = tmp_path / "conf.yaml"
    f.write_text("plugins:\n  namedPipe: {}\n  firefly:\n  iperf3: {experimentIDs: [2, 3], activityIDs: [1, 1], "
                 "programPath: /usr/lib/flowd-go/watcher.bpf.o}\nbackends:\n  marker:\n    programPath: /opt/m.o\n"
                 "    discoverInterfaces: true\n    targetInterfaces: [eth0]\n  firefly: {enrichmentMode: '', stun: {}}\n"
                 "  bogus: 1\nenrichers:\n  skops: {strategy: transition}\n")
    out = run_migrate("flowd-go", f)
    conf = loads(out, tmp_path)
    assert conf["pidFile"] == "/var/run/flowd-go.pid" and "flowd-go wrote /var/run/flowd-go.pid by default" in out
    assert conf["plugins"]["namedPipe"]["pipePath"] == "/np" and "relative to its working directory" in out
    assert conf["plugins"]["firefly"]["bindAddress"] == "127.0.0.1"
    assert conf["plugins"]["iperf3"]["experimentIDs"] == [2, 3] and conf["plugins"]["iperf3"]["programPath"] == ""
    m = conf["backends"]["marker"]
    assert m["programPath"] == "" and m["targetInterfaces"] == [] and m["discoverInterfaces"] is True
    assert "# bogus: 1" in out and "not a flowd-go key" in out
    assert conf["backends"]["firefly"]["enrichmentMode"] == "full"
    assert "api64.ipify.org" in out  # the public defaults are said
    assert "strategy" not in conf["enrichers"]["skops"] or conf["enrichers"]["skops"]["strategy"] == "poll"


def test_flowd_go_commented_file(tmp_path: Path) -> None:
    """flowd-go's rpm/conf.yaml ships every line commented: nothing on, nothing on here."""
    f = tmp_path / "conf.yaml"
    f.write_text("# plugins:\n#   api: {}\n")
    conf = loads(run_migrate("flowd-go", f), tmp_path)
    assert conf["pidFile"] == "/var/run/flowd-go.pid"
    assert not any(v for v in conf["plugins"].values())


def test_bad_input(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("[1, 2]\n")
    with pytest.raises(CommandError, match="expected a mapping of sections"):
        migrate("flowd-go", str(f))
    f.write_text("a: [\n")
    with pytest.raises(CommandError, match="not valid YAML"):
        migrate("flowd-go", str(f))
    with pytest.raises(CommandError, match="cannot read"):
        migrate("flowd", str(tmp_path / "missing.cfg"))
    r = subprocess.run([sys.executable, "-m", "scitagd", "config", "migrate", "--from", "flowd", str(tmp_path / "no")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("scitagd: error: ") and "Traceback" not in r.stderr
