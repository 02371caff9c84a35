# SPDX-License-Identifier: Apache-2.0
"""Which flow labels count as SciTags tags, as one table lookup per record.

A label is tagged when `label & 0x3FEFC` (the 5 entropy bits ignored) decodes, through
`scitagd.tags.decode_flow_label`, to an experiment the registry knows (`anyExperiment`: to any
experiment 1..511). The table has one entry per masked value, so the decoders' hot loops do
`table[label & 0x3FEFC]` and get `(experiment, activity)` or `(None, None)`.

False positives are inherent: an unmarked host's random label hits a known experiment with
probability `false_positive_rate`: accepted tags / 2**15 semantic values, i.e. 14 experiments x 64
activities = 2.7% for the bundled registry, or 114 known pairs = 0.35% with `knownActivitiesOnly`.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

from ..registry import Registry
from ..tags import EXPERIMENT_MAX, EXPERIMENT_MIN, FLOW_LABEL_MASK, decode_flow_label

__all__ = ["UNTAGGED", "Tag", "TagMatcher"]

Tag = Tuple[Optional[int], Optional[int]]
UNTAGGED: Tag = (None, None)


class TagMatcher:
    def __init__(self, experiments: Iterable[int] | None = None, any_experiment: bool = False,
                 pairs: Iterable[Tuple[int, int]] | None = None) -> None:
        """`pairs` (with `experiments` None): accept only these (experiment, activity) pairs."""
        self.pairs = frozenset(pairs) if pairs is not None else None
        if self.pairs is not None and not any_experiment:
            experiments = {e for e, _ in self.pairs}
        if any_experiment or experiments is None:
            known = set(range(EXPERIMENT_MIN, EXPERIMENT_MAX + 1))
        else:
            known = {e for e in experiments if EXPERIMENT_MIN <= e <= EXPERIMENT_MAX}
        self.experiments = frozenset(known)
        self.any_experiment = any_experiment or experiments is None
        table: List[Tag] = [UNTAGGED] * (FLOW_LABEL_MASK + 1)
        for masked in range(0, FLOW_LABEL_MASK + 1, 4):
            if masked & ~FLOW_LABEL_MASK:
                continue
            exp, act = decode_flow_label(masked)
            if exp in known and (self.pairs is None or any_experiment or (exp, act) in self.pairs):
                table[masked] = (exp, act)
        self.accepted = sum(1 for t in table if t is not UNTAGGED)
        # for the generated template decoders: (experiment, activity, via) in one lookup
        untagged: Tuple[Optional[int], Optional[int], str] = (None, None, "")
        self.rows: List[Tuple[Optional[int], Optional[int], str]] = [
            untagged if t is UNTAGGED else (t[0], t[1], "label") for t in table]
        self.table = table

    @classmethod
    def from_registry(cls, registry: Registry, any_experiment: bool = False,
                      known_activities_only: bool = False) -> TagMatcher:
        if known_activities_only and not any_experiment:
            return cls(pairs=[(e.exp_id, a.activity_id) for e in registry.experiments for a in e.activities])
        return cls([e.exp_id for e in registry.experiments], any_experiment)

    def label(self, label: int) -> Tag:
        return self.table[label & FLOW_LABEL_MASK]

    def option(self, exp: int, act: int) -> Tag:
        """The extension-header option carries the tag itself (no entropy, no guessing)."""
        if exp in self.experiments and 0 <= act <= 63 and (
                self.pairs is None or self.any_experiment or (exp, act) in self.pairs):
            return (exp, act)
        return UNTAGGED

    @property
    def false_positive_rate(self) -> float:
        """Share of random (unmarked) labels that decode to a tag this matcher accepts."""
        return self.accepted / (1 << 15)
