# SPDX-License-Identifier: Apache-2.0
"""The dashboard in a real browser (Debian chromium, headless), driven over the DevTools
protocol: it loads without console errors, its chart holds the imported archive, a filter
changes what it shows. The screenshot is kept in test-artifacts/."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, List

import pytest

from scitagd.lab.util import stop_process

from ..conftest import ARCHIVE, PRODUCERS, require_shared
from .test_collector import CollectorProc, collector  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="chromium not installed (Debian package chromium)")


class Cdp:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: List[Dict[str, Any]] = []
        self.pending: Dict[int, asyncio.Future[Any]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def call(self, method: str, **params: Any) -> Any:
        i = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        await self.ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        res = await asyncio.wait_for(fut, 20)
        if "error" in res:
            raise AssertionError(f"{method}: {res['error']}")
        return res.get("result", {})

    async def js(self, expr: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def until(self, expr: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = await self.js(expr)
            if v:
                return v
            await asyncio.sleep(0.1)
        raise AssertionError(f"never true: {expr}")

    def errors(self) -> List[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:300])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args"))[:300])
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        return out


@contextlib.asynccontextmanager
async def browser(url: str, profile: Path, size: str = "1400,1000") -> AsyncIterator[Cdp]:
    """Headless chromium on `url`, driven over the DevTools protocol (Runtime, Log and Page
    enabled); stopped on the way out, also on failure."""
    import aiohttp

    proc = subprocess.Popen([CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-quic", "--no-first-run", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", f"--window-size={size}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and proc.poll() is None, "chromium did not start"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                page = next(t for t in await r.json() if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 << 20) as ws:
                cdp = Cdp(ws)
                for domain in ("Runtime", "Log", "Page"):
                    await cdp.call(f"{domain}.enable")
                await cdp.call("Page.navigate", url=url)
                try:
                    yield cdp
                finally:
                    cdp.reader.cancel()
    finally:
        stop_process(proc, 10)


def assert_archive_dashboard(out: Dict[str, Any]) -> None:
    """What drive() saw of a collector holding the UNL archive and four live producers' fireflies,
    whichever store it runs on."""
    assert out["errors"] == [], out["errors"]
    assert "by experiment" in out["title_all"]
    # The archive's 2021-era ids (16, 23) and the live XRootD ones (1, 2).
    assert {"16", "23"} <= {t.strip() for t in out["legend_all"]}
    assert out["layers_all"] >= 2
    assert any(t.startswith("16 / 1") and "3399" in t for t in out["totals_all"])
    assert any(t.startswith("23 / 1") and "2600" in t for t in out["totals_all"])
    assert "by activity" in out["title_exp"]
    assert len(out["totals_exp"]) == 1 and out["totals_exp"][0].startswith("23 / 1")


async def drive(url: str, profile: Path) -> Dict[str, Any]:
    async with browser(url, profile) as cdp:
        out: Dict[str, Any] = {}
        await cdp.until("document.querySelectorAll('#chart path.layer').length > 0")
        out["title_all"] = await cdp.js("document.getElementById('chart-title').textContent")
        out["legend_all"] = await cdp.js("[...document.querySelectorAll('#legend button')].map(b => b.textContent)")
        out["totals_all"] = await cdp.js("[...document.querySelectorAll('#totals tbody tr')].map(r => r.textContent)")
        out["layers_all"] = await cdp.js("document.querySelectorAll('#chart path.layer').length")
        shot = await cdp.call("Page.captureScreenshot", format="png")
        out["png_all"] = base64.b64decode(shot["data"])
        # Filter: one experiment. The chart then stacks its activities.
        await cdp.js("(() => { const s = document.getElementById('experiment'); s.value = '23';"
                     " s.dispatchEvent(new Event('change')); return true; })()")
        await cdp.until("document.getElementById('chart-title').textContent.includes('by activity')")
        await cdp.until("document.querySelectorAll('#totals tbody tr').length === 1")
        out["title_exp"] = await cdp.js("document.getElementById('chart-title').textContent")
        out["totals_exp"] = await cdp.js("[...document.querySelectorAll('#totals tbody tr')].map(r => r.textContent)")
        out["activity_options"] = await cdp.js("document.getElementById('activity').options.length")
        shot = await cdp.call("Page.captureScreenshot", format="png")
        out["png_exp"] = base64.b64decode(shot["data"])
        out["errors"] = cdp.errors()
        return out


def test_dashboard_in_chromium(collector: Callable[..., CollectorProc], tmp_path: Path) -> None:  # noqa: F811
    c = collector()
    r = subprocess.run([sys.executable, "-m", "scitagd", "collector", "import", "--config", str(c.conf), "--quiet",
                        str(require_shared(ARCHIVE))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    c.stop()
    c.start()  # the running collector reads what the import wrote
    for line in require_shared(PRODUCERS).read_text().splitlines()[:4]:
        c.send(json.loads(line)["wire"].encode())
    out = asyncio.run(drive(c.url("/?range=all&measure=flows"), tmp_path / "profile"))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(out["png_all"])
    (ARTIFACTS / "dashboard-experiment-23.png").write_bytes(out["png_exp"])
    assert_archive_dashboard(out)
    assert out["png_all"][:8] == b"\x89PNG\r\n\x1a\n" and len(out["png_all"]) > 10_000
