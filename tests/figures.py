# SPDX-License-Identifier: Apache-2.0
"""Figures tests measure (inputs tried, rejected, kept, the longest loop stall), printed at the end
of the run (`figures` section of pytest's summary) and written as JSON lines to
$SCITAGD_FIGURES when set: the numbers closing notes quote come from a run anyone can repeat."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

__all__ = ["record", "recorded"]

_FIGURES: List[Dict[str, Any]] = []


def record(what: str, **values: Any) -> None:
    """One line of figures; `what` names the input class or scenario."""
    row = {"what": what, **values}
    _FIGURES.append(row)
    path = os.environ.get("SCITAGD_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def recorded() -> List[Dict[str, Any]]:
    return list(_FIGURES)
