# SPDX-License-Identifier: Apache-2.0
"""The links view in a real browser (Debian chromium, headless, over the DevTools protocol),
fed by the shared captures replayed over UDP into a running collector: it loads without console
errors, lists every link with its tagged share, charts the top links stacked by experiment, and
the exporter filter narrows it. Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from .linkutil import v6_firefly
from .test_collector import CollectorProc, collector  # noqa: F401  (fixture)
from .test_dashboard import ARTIFACTS, CHROMIUM, browser
from .test_links import OVS_IN, WANT_CMS, by_link, links_collector, replay_all, tag_bytes

pytestmark = pytest.mark.skipif(not CHROMIUM, reason="chromium not installed (Debian package chromium)")


async def drive(url: str, profile: Path) -> Dict[str, Any]:
    async with browser(url, profile, "1400,1400") as cdp:
        out: Dict[str, Any] = {}
        await cdp.until("document.querySelectorAll('.card.link path.layer').length > 0")
        out["rows"] = await cdp.js("[...document.querySelectorAll('#links tbody tr')].map(r => "
                                   "[...r.cells].map(c => c.textContent))")
        out["cards"] = await cdp.js("[...document.querySelectorAll('.card.link')].map(c => ({title: "
                                    "c.querySelector('h2').textContent, share: c.querySelector('.linkshare')"
                                    ".textContent, layers: [...c.querySelectorAll('path.layer')].map(p => "
                                    "p.textContent), legend: c.querySelector('.legend').textContent}))")
        out["exporters"] = await cdp.js("[...document.querySelectorAll('#exporters tbody tr')].map(r => "
                                        "r.textContent)")
        shot = await cdp.call("Page.captureScreenshot", format="png")
        out["png"] = base64.b64decode(shot["data"])
        # the exporter filter: only the sFlow agent's links remain
        await cdp.js("(() => { const s = document.getElementById('exporter'); s.value = '127.0.0.1';"
                     " s.dispatchEvent(new Event('change')); return true; })()")
        await cdp.until("[...document.querySelectorAll('#links tbody tr')].every(r => "
                        "r.cells[0].textContent === '127.0.0.1')")
        out["filtered"] = await cdp.js("document.querySelectorAll('#links tbody tr').length")
        # untagged hidden: only tagged layers remain in the charts
        await cdp.js("(() => { const c = document.getElementById('untagged'); c.checked = false;"
                     " c.dispatchEvent(new Event('change')); return true; })()")
        await cdp.until("document.querySelectorAll('.card.link path.untagged').length === 0")
        out["tagged_layers"] = await cdp.js("document.querySelectorAll('.card.link path.layer').length")
        # the fireflies view links here
        await cdp.call("Page.navigate", url=url.split("/links")[0] + "/")
        await cdp.until("document.querySelector('nav a[href=\"/links\"]') !== null")
        out["errors"] = cdp.errors()
        return out


def test_links_view_in_chromium(collector: Callable[..., CollectorProc], tmp_path: Path) -> None:  # noqa: F811
    c = links_collector(collector)
    c.send(v6_firefly("start", "fd00:78::1", 40011, "fd00:78::2", 5001))
    replay_all(c)
    c.wait(lambda: all(tag_bytes(by_link(c).get(k, {"tags": []})).get((3, 14)) == v for k, v in WANT_CMS.items()))
    out = asyncio.run(drive(c.url("/links?range=3600&charts=8"), tmp_path / "profile"))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "links.png").write_bytes(out["png"])
    assert out["errors"] == [], out["errors"]
    n_links = len(by_link(c))
    assert len(out["rows"]) == n_links >= 5
    ovs = next(r for r in out["rows"] if r[:4] == ["::1", "123", "8", "ingress"])
    assert "26.3%" in ovs[5] and "cms/Analysis Input 740 B" in ovs[7], ovs
    assert len(out["cards"]) == min(8, n_links)
    card = next(x for x in out["cards"] if x["title"] == "::1 · domain 123 · if 8 · ingress")
    assert "cms" in card["layers"] and "untagged" in card["layers"] and "26.3%" in card["share"]
    assert "cms 740 B" in card["legend"] and "untagged 2.07 kB" in card["legend"]
    assert out["filtered"] == 3 and out["tagged_layers"] >= 1
    assert out["png"][:8] == b"\x89PNG\r\n\x1a\n" and len(out["png"]) > 10_000
    assert OVS_IN in by_link(c)
