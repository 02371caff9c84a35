# SPDX-License-Identifier: Apache-2.0
"""A real clickhouse-server (Debian's 18.16) in a directory of its own, on free ports, in the
foreground, stopped by its pid. Used by the tests and bench/clickhouse.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

BINARY = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"

CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/err.log</errorlog></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <remote_servers><one_shard><shard><replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard></one_shard></remote_servers>
</yandex>
"""
USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage><max_threads>2</max_threads></default></profiles>
  <users><default><password></password><networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return os.path.exists(BINARY)


class ClickHouseServer:
    """`with ClickHouseServer(dir) as s: s.url`. It listens on 127.0.0.1 and ::1 whatever
    listen_host says, so both ports are chosen free. Data survive stop/start in `root`."""

    def __init__(self, root: Path, http_port: Optional[int] = None) -> None:
        self.root = Path(root)
        self.http = http_port or _free_port()
        self.tcp = _free_port()
        self.proc: Optional[subprocess.Popen] = None
        for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "config.xml").write_text(CONFIG.format(d=self.root, http=self.http, tcp=self.tcp))
        (self.root / "users.xml").write_text(USERS)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}/"

    def start(self, timeout: float = 30.0) -> None:
        out = open(self.root / "log" / "stdout.log", "ab")
        self.proc = subprocess.Popen([BINARY, f"--config-file={self.root / 'config.xml'}"], stdout=out,
                                     stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited {self.proc.returncode}: "
                                   f"{(self.root / 'log' / 'err.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "ping", timeout=1) as r:
                    if r.read().strip() == b"Ok.":
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"clickhouse-server not ready on {self.url} after {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def __enter__(self) -> ClickHouseServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
