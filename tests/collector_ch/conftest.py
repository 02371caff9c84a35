# SPDX-License-Identifier: Apache-2.0
"""A real clickhouse-server 18.16 per test session (temp dir, free ports, stopped by pid) and an
embedded chdb (a current ClickHouse): every store test runs on both."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import pytest

from scitagd.collector.ch.client import ChdbClient, HttpClient

from .chserver import ClickHouseServer, available

_names = itertools.count()


@pytest.fixture(scope="session")
def ch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    if not available():
        pytest.skip("clickhouse-server not installed (bash scripts/setup.sh --test installs Debian's 18.16)")
    srv = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def chdb_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        import chdb  # noqa: F401
    except ImportError:
        pytest.skip("chdb not installed (pip install -e '.[test]')")
    c = ChdbClient(str(tmp_path_factory.mktemp("chdb")))
    yield c
    c.close()


@pytest.fixture(params=["server-18.16", "chdb"])
def backend(request: pytest.FixtureRequest) -> Any:
    """(client, kind): the same SQL against both ClickHouse versions."""
    if request.param == "chdb":
        return request.getfixturevalue("chdb_client"), "chdb"
    srv = request.getfixturevalue("ch_server")
    return HttpClient(srv.url), "server"


@pytest.fixture
def dbname() -> str:
    return f"t{next(_names)}"


def shared_dir() -> Path:
    return Path(__file__).resolve().parent
