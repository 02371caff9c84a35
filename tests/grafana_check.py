# SPDX-License-Identifier: Apache-2.0
"""Checks shared by the dashboard tests: structure (datasource variable and input, instance filter
on every query, stable unique panel ids) and the metric names used."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Set

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"


def load(name: str) -> Dict[str, Any]:
    doc: Dict[str, Any] = json.loads((GRAFANA / name).read_text())
    return doc


def check_structure(doc: Dict[str, Any]) -> None:
    assert doc["__inputs"][0]["name"] == "DS_PROMETHEUS" and doc["__inputs"][0]["pluginId"] == "prometheus"
    names = {v["name"]: v for v in doc["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    assert names["instance"]["multi"] and names["instance"]["includeAll"]
    ids = [p["id"] for p in doc["panels"]]
    assert ids == list(range(1, len(ids) + 1)), ids  # stable: positions, never regenerated
    for p in doc["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            assert '$instance' in t["expr"], (p["title"], t["expr"])
            assert t["datasource"]["uid"] == "${datasource}"


def metric_names(doc: Dict[str, Any]) -> Set[str]:
    used = set()
    for p in doc["panels"]:
        for t in p["targets"]:
            used |= set(re.findall(r"\b(scitagd_[a-z_]+)\{", t["expr"]))
    return used


def exported(metrics: Dict[str, float]) -> Set[str]:
    return {k.split("{")[0] for k in metrics}
