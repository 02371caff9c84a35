# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import asyncio
import http.server
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from scitagd.registry import Registry, RegistryConfig, RegistryError, RegistryHolder, fold

from ..conftest import SHARED


class _Server:
    """A real HTTP server on loopback whose answer the test changes."""

    def __init__(self) -> None:
        self.body: bytes = b""
        self.status = 200
        self.hits = 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_fold() -> None:
    assert fold("Data Challenge") == fold("data_challenge") == fold("DataChallenge") == fold("data-challenge")


def test_bundled_matches_shared_snapshot() -> None:
    reg = Registry.bundled()
    shared = json.loads((SHARED / "spec" / "registry-api.json").read_text())
    assert [(e.exp_name, e.exp_id) for e in reg.experiments] == [
        (e["expName"], e["expId"]) for e in shared["experiments"]]
    assert reg.doc.modified == shared["modified"]


def test_lookups() -> None:
    reg = Registry.bundled()
    assert reg.resolve("atlas", "Data Brokering") == (2, 3)
    assert reg.resolve("ATLAS", "data_brokering") == (2, 3)
    assert reg.resolve("cms", "datachallenge") == (3, reg.resolve(3, "Data Challenge")[1])
    assert reg.resolve("2", "3") == (2, 3)
    assert reg.resolve(300, 7) == (300, 7)  # unknown ids are valid
    assert reg.experiment_name(300) is None and reg.activity_name(2, 63) is None
    with pytest.raises(RegistryError, match="unknown experiment name 'nope'"):
        reg.resolve("nope", 1)
    with pytest.raises(RegistryError, match="unknown activity name 'nope' for experiment 2"):
        reg.resolve("atlas", "nope")


def test_refresh_good_then_bad_keeps_last_good(server: _Server, tmp_path: Path) -> None:
    doc = json.loads((SHARED / "spec" / "registry-api.json").read_text())
    doc["experiments"].append({"expName": "newexp", "expId": 99,
                               "activities": [{"activityName": "Fresh Data", "activityId": 5}]})
    server.body = json.dumps(doc).encode()
    cache = tmp_path / "sub" / "registry.json"
    holder = RegistryHolder(RegistryConfig(url=server.url, cache_file=str(cache)))
    assert holder.current.origin == "bundled"
    assert asyncio.run(holder.refresh()) is True
    assert holder.current.resolve("newexp", "fresh data") == (99, 5)
    assert json.loads(cache.read_bytes())["experiments"][-1]["expId"] == 99

    server.body = b'{"experiments": [{"expName": "x"'  # corrupt (truncated) download
    assert asyncio.run(holder.refresh()) is False
    assert holder.current.experiment_name(99) == "newexp"
    server.status, server.body = 500, b"oops"
    assert asyncio.run(holder.refresh()) is False
    assert holder.refresh_failures == 2 and holder.refresh_ok == 1
    assert holder.current.experiment_name(99) == "newexp"

    # A restart with the URL unreachable starts from the cache, not the bundled snapshot.
    server.httpd.shutdown()
    server.httpd.server_close()
    again = RegistryHolder(RegistryConfig(url=server.url, cache_file=str(cache), timeout=2))
    assert again.current.experiment_name(99) == "newexp"
    assert asyncio.run(again.refresh()) is False
    assert again.current.experiment_name(99) == "newexp"


def test_corrupt_cache_falls_back_to_bundled(tmp_path: Path, caplog: Any) -> None:
    cache = tmp_path / "registry.json"
    cache.write_text("not json")
    holder = RegistryHolder(RegistryConfig(url="http://127.0.0.1:9/x", cache_file=str(cache)))
    assert holder.current.origin == "bundled"
    assert "registry cache ignored" in caplog.text


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="expected an http"):
        RegistryConfig(url="ftp://x")
    with pytest.raises(ValueError, match="refreshInterval"):
        RegistryConfig(refresh_interval=1)


def test_cli_registry(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "scitagd", "registry", "show", "cms", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out["id"] == 3 and {"id": 1, "name": "default"} in out["activities"]
    r = subprocess.run([sys.executable, "-m", "scitagd", "registry", "show", "300"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not in the registry" in r.stderr
    r = subprocess.run([sys.executable, "-m", "scitagd", "registry", "list"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "atlas" in r.stdout and "xenon" in r.stdout


def test_cli_registry_refresh_from_config(server: _Server, tmp_path: Path) -> None:
    import subprocess
    import sys

    doc = json.loads((SHARED / "spec" / "registry-api.json").read_text())
    doc["experiments"].append({"expName": "fresh", "expId": 77, "activities": []})
    server.body = json.dumps(doc).encode()
    conf = tmp_path / "c.yaml"
    conf.write_text(f"registry:\n  url: {server.url}\n  cacheFile: {tmp_path}/cache.json\n")
    r = subprocess.run([sys.executable, "-m", "scitagd", "registry", "show", "fresh", "--config",
                        str(conf), "--refresh"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fresh (experiment 77)" in r.stdout
    # Without --refresh the cache written above is what a daemon would start from.
    server.status = 500
    r = subprocess.run([sys.executable, "-m", "scitagd", "registry", "show", "77", "--config", str(conf)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "fresh" in r.stdout
    r = subprocess.run([sys.executable, "-m", "scitagd", "registry", "list", "--config", str(conf),
                        "--refresh"], capture_output=True, text=True)
    assert r.returncode == 2 and "could not refresh" in r.stderr
