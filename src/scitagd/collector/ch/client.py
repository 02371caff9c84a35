# SPDX-License-Identifier: Apache-2.0
"""The two ways the store talks to ClickHouse: HTTP (a server; stdlib for queries, aiohttp for
the writer) and chdb (embedded, for tests). Both speak SQL text in, JSONCompact out, and take
inserts as RowBinary: no client library, no new dependency."""

from __future__ import annotations

import base64
import json
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol

from ..storeapi import StoreError


class ClickHouseError(StoreError):
    """A statement ClickHouse refused, or a server that could not be reached."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Client(Protocol):
    def execute(self, sql: str) -> str: ...
    def insert(self, table: str, rowbinary: bytes) -> None: ...
    def insert_text(self, table: str, fmt: str, data: bytes) -> None: ...


def _convert(meta: List[Dict[str, Any]], rows: List[List[Any]]) -> List[List[Any]]:
    # 18.16 quotes 64-bit integers in JSON; newer servers do not: make both ints.
    big = [i for i, m in enumerate(meta) if "Int64" in m["type"] and not m["type"].startswith(("Array", "Tuple"))]
    if big:
        for r in rows:
            for i in big:
                if r[i] is not None:
                    r[i] = int(r[i])
    return rows


def query(client: Client, sql: str) -> List[List[Any]]:
    """Rows of a SELECT, in order, ints as ints."""
    doc = json.loads(client.execute(sql + " FORMAT JSONCompact") or '{"meta": [], "data": []}')
    return _convert(doc["meta"], doc["data"])


class HttpClient:
    """Synchronous HTTP client (run in the store's executor thread)."""

    def __init__(self, url: str, user: str = "default", password: str = "", timeout: float = 60.0,
                 settings: Optional[Dict[str, str]] = None) -> None:
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self.settings = dict(settings or {})
        self.headers = {"Content-Type": "application/octet-stream"}
        if user != "default" or password:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def _post(self, body: bytes, params: Optional[Dict[str, str]] = None) -> str:
        params = {**self.settings, **(params or {})}
        url = self.url + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return str(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace").strip()
            raise ClickHouseError(f"clickhouse HTTP {e.code}: {text[:500]}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ClickHouseError(f"clickhouse at {self.url} unreachable: {e}", unreachable=True) from None

    def execute(self, sql: str) -> str:
        return self._post(sql.encode())

    def insert(self, table: str, rowbinary: bytes) -> None:
        self._post(rowbinary, {"query": f"INSERT INTO {table} FORMAT RowBinary"})

    def insert_text(self, table: str, fmt: str, data: bytes) -> None:
        self._post(data, {"query": f"INSERT INTO {table} FORMAT {fmt}"})


class ChdbClient:
    """Embedded ClickHouse (chdb) with its data under `path`: the same SQL, a current release."""

    def __init__(self, path: str) -> None:
        import chdb.session  # test-only dependency

        mod: Any = chdb.session  # untyped library: reached through Any
        self.sess: Any = mod.Session(path)
        self.tmp = Path(tempfile.mkdtemp(prefix="chdb-insert-"))
        self._n = 0

    def execute(self, sql: str) -> str:
        try:
            return str(self.sess.query(sql))
        except Exception as e:
            raise ClickHouseError(f"chdb: {e}") from None

    def insert(self, table: str, rowbinary: bytes) -> None:
        self.insert_text(table, "RowBinary", rowbinary)

    def insert_text(self, table: str, fmt: str, data: bytes) -> None:
        from .schema import _COLUMNS

        name = table.rsplit(".", 1)[-1]
        self._n += 1
        f = self.tmp / f"{self._n}.bin"
        f.write_bytes(data)
        structure = " ".join(_COLUMNS[name].split()).replace("'", "\\'")
        try:
            self.execute(f"INSERT INTO {table} SELECT * FROM file('{f}', '{fmt}', '{structure}')")
        finally:
            f.unlink()

    def close(self) -> None:
        self.sess.close()
