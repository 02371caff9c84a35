# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scitagd.config import ConfigError, dump, load, load_text
from scitagd.migrate import migrate

DATA = Path(__file__).parents[1] / "data"
REPO = Path(__file__).parents[2]


def test_flowd_go_config_is_refused_aloud_or_migrates() -> None:
    # flowd-go's iperf3 ids [0, 1, 2] hold experiment 0, which no flow may carry: refused naming the
    # key; `scitagd config migrate` turns the same file into one that loads with everything else kept
    with pytest.raises(ConfigError, match=r"plugins\.iperf3: experimentIDs \[0, 1, 2\]: it holds 0"):
        load(DATA / "flowd-go.yaml")
    c = load_text(migrate("flowd-go", str(DATA / "flowd-go.yaml")))
    assert c.plugins.iperf3 is None
    assert c.plugins.api is not None and c.plugins.api.bind_port == 7777
    assert c.plugins.namedPipe is not None and c.plugins.namedPipe.pipe_path == "/var/run/flowd-go/np"
    assert c.plugins.firefly is not None
    assert c.plugins.firefly.addresses() == ["127.0.0.1"]
    assert [(r.address, r.port) for r in c.plugins.firefly.firefly_receivers] == [("127.0.0.1", 10515)]
    assert c.plugins.perfsonar is not None and c.plugins.perfsonar.experiment == 1
    fb = c.backends.firefly
    assert fb is not None and fb.prepend_syslog is False
    assert fb.collector_list() == [("127.0.0.1", 10516)]
    assert c.backends.prometheus is not None and c.backends.prometheus.listen_port == 8080
    assert c.backends.marker is not None and c.backends.marker.match_all is True
    assert c.enrichers is not None and c.enrichers.netlink is not None
    assert c.enrichers.netlink.state == 3071


def test_example_config_is_valid() -> None:
    c = load(REPO / "examples" / "scitagd.yaml")
    assert c.backends.firefly is not None and c.plugins.api is not None


def test_presence_enables_with_defaults() -> None:
    c = load_text("plugins:\n  api:\n  firefly:\nbackends:\n  prometheus:\n")
    assert c.plugins.api is not None and c.plugins.api.bind_address == "127.0.0.1"
    assert c.plugins.firefly is not None and c.plugins.firefly.addresses() == ["127.0.0.1", "::1"]
    assert c.plugins.firefly.bind_port == 10514
    assert c.plugins.namedPipe is None
    assert c.backends.prometheus is not None and c.backends.prometheus.listen_port == 8080
    assert c.backends.firefly is None
    empty = load_text("")
    assert empty.plugins.api is None and empty.backends.firefly is None


def test_collectors_list_and_legacy_keys_together() -> None:
    c = load_text("""
backends:
  firefly:
    collectors: ["collector.example.org:10514", "[2001:db8::53]:9000", "192.0.2.1"]
    sendToCollector: true
    collectorAddress: 127.0.0.1
    collectorPort: 10600
""")
    assert c.backends.firefly is not None
    assert c.backends.firefly.collector_list() == [
        ("collector.example.org", 10514), ("2001:db8::53", 9000), ("192.0.2.1", 10514),
        ("127.0.0.1", 10600)]


def test_prometheus_port_alias() -> None:
    c = load_text("backends:\n  prometheus:\n    port: 9100\n")
    assert c.backends.prometheus is not None and c.backends.prometheus.listen_port == 9100
    with pytest.raises(ConfigError, match="port 9100 and netlinkPort 9200"):
        load_text("backends:\n  prometheus:\n    port: 9100\n    netlinkPort: 9200\n")


@pytest.mark.parametrize("text,needle", [
    ("plugins:\n  api:\n    bindPort: 70000\n", "plugins.api: bindPort 70000: expected a port 1..65535"),
    ("plugins:\n  api:\n    bindPort: seven\n", "plugins.api.bindPort: Expected `int`, got `str`"),
    ("plugins:\n  api:\n    bindAdress: 127.0.0.1\n", "plugins.api: unknown key 'bindAdress'; expected one of bindAddress, bindPort, maxBodyBytes"),
    ("plugins:\n  bogus: {}\n", "plugins: unknown key 'bogus'; expected one of api, namedPipe, firefly"),
    ("bogus: 1\n", ": unknown key 'bogus'; expected one of pidPath, workDir, plugins"),
    ("plugins:\n  api:\n    bindAddress: localhost\n", "bindAddress 'localhost': expected an IPv4 or IPv6"),
    ("backends:\n  firefly:\n    collectors: ['2001:db8::1:10514']\n", "put an IPv6 address in brackets"),
    ("backends:\n  firefly:\n    collectors: ['host:99999']\n", "expected a port 1..65535"),
    ("backends:\n  marker:\n    markingStrategy: flowlabel\n", "markingStrategy 'flowlabel': expected one of"),
    ("plugins:\n  firefly:\n    allowedSources: ['10.0.0.0/33']\n", "allowedSources '10.0.0.0/33'"),
    ("plugins:\n  namedPipe:\n    mode: rw\n", "mode 'rw': expected an octal string"),
    ("plugins:\n  namedPipe:\n    pipePath: relative/np\n", "pipePath 'relative/np': expected an absolute path"),
    ("flowTable:\n  expireAfter: 0\n", "expireAfter 0"),
    ("- a list\n", "expected a mapping of sections"),
    ("plugins: [\n", "not valid YAML at line"),
])
def test_errors_name_key_and_expectation(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_text(text, "t.yaml")
    assert needle in str(ei.value), str(ei.value)
    assert str(ei.value).startswith("t.yaml: ")


def test_conf_command_prints_effective_config(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("plugins:\n  api:\nbackends:\n  firefly:\n    sendToCollector: true\n")
    r = subprocess.run([sys.executable, "-m", "scitagd", "conf", "--config", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    again = load_text(r.stdout)  # what it prints is itself a valid config with the same meaning
    assert again == load(f)
    assert "bindPort: 7777" in r.stdout and "destinationPort: 10514" in r.stdout


def test_conf_command_error_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("plugins:\n  api:\n    bindPort: -1\n")
    r = subprocess.run([sys.executable, "-m", "scitagd", "conf", "--config", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"scitagd: error: {f}: plugins.api: bindPort -1: "
                                              "expected a port 1..65535"]
    r = subprocess.run([sys.executable, "-m", "scitagd", "conf", "--config", str(tmp_path / "no")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_dump_round_trip() -> None:
    c = load_text(migrate("flowd-go", str(DATA / "flowd-go.yaml")))
    assert load_text(dump(c)) == c
