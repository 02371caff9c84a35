# SPDX-License-Identifier: Apache-2.0
"""The collector's memory and SQLite settings that its ingest figures depend on
(bench/README.md, "Collector"): set where they are meant to be, and by the process users run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scitagd.collector.store import PAGE_CACHE_KIB, WAL_PAGES, SQLiteStore
from scitagd.runtime import GC_THRESHOLD


def test_store_page_cache_and_wal_size(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "s.sqlite"))
    try:
        assert store.db.execute("PRAGMA cache_size").fetchone()[0] == -PAGE_CACHE_KIB
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_PAGES
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_collect_rarely_freezes_start_up_and_raises_thresholds() -> None:
    code = ("import gc, json; from scitagd.runtime import collect_rarely; before = gc.get_threshold(); "
            "collect_rarely(); print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, frozen = json.loads(out)
    assert tuple(before) != GC_THRESHOLD, "the default thresholds already equal ours: the test shows nothing"
    assert tuple(after) == GC_THRESHOLD
    assert frozen > 1000, f"start-up objects not frozen out of the scans: {frozen}"
