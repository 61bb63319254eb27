"""What counts as "remembering" at a length: the horizon criteria.

A trial at length T *passes* when its final held-out (test) result meets the criterion:

* ``solved``: score ≥ the run's threshold (0.99 by default): the strictest reading;
* ``normalised[:LEVEL]``: (score − chance) / (1 − chance) ≥ LEVEL (0.9): the score has covered
  90 % of the way from guessing to perfect. It means the same for 2 or 100 classes, so it is the
  default for tasks that declare nothing (``Task.horizon_criterion``);
* ``loss[:FRACTION]``: loss ≤ FRACTION × the memoryless loss (0.1): for regression tasks whose
  thresholded score stays low long after the model has learned most of the task (the adding
  problem). A tenth of the memoryless loss is well below what remembering only one of two
  needed values gives (half of it, on the adding problem).

``default`` uses each task's own criterion, recorded in every result row (``task_criterion``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError

KINDS = ("solved", "normalised", "loss")
LEVELS = {"normalised": 0.9, "loss": 0.1}
FALLBACK = "normalised:0.9"  # a task that declares nothing (and rows written before tasks declared one)


@dataclass(frozen=True)
class Criterion:
    kind: str
    level: float | None = None

    @classmethod
    def parse(cls, text: str) -> Criterion:
        kind, _, level = str(text).strip().lower().partition(":")
        if kind not in KINDS:
            raise HarnessError(f"unknown criterion '{text}'; choose default, solved, normalised[:LEVEL] or "
                               f"loss[:FRACTION]")
        if kind == "solved":
            if level:
                raise HarnessError("criterion 'solved' takes no level: it uses the run's --threshold")
            return cls("solved")
        try:
            value = float(level) if level else LEVELS[kind]
        except ValueError:
            raise HarnessError(f"criterion '{text}': '{level}' is not a number") from None
        if not (math.isfinite(value) and value > 0) or (kind == "normalised" and value > 1):
            raise HarnessError(f"criterion '{text}': level must be in (0, 1]")
        return cls(kind, value)

    def __str__(self) -> str:
        return self.kind if self.level is None else f"{self.kind}:{self.level:g}"

    def metric(self, row: Mapping[str, Any]) -> float:
        """The continuous quantity the criterion thresholds (higher is better for every kind)."""
        score, loss = _float(row.get("score")), _float(row.get("loss"))
        if self.kind == "solved":
            return score
        if self.kind == "normalised":
            chance = _float(row.get("chance_score"))
            return (score - chance) / (1.0 - chance) if chance < 1 else math.nan
        memoryless = _float(row.get("memoryless_loss"))
        return -loss / memoryless if memoryless > 0 else math.nan  # negated: higher is better

    def target(self, row: Mapping[str, Any]) -> float:
        """The value :meth:`metric` must reach."""
        if self.kind == "solved":
            threshold = _float(row.get("threshold"))
            return threshold if math.isfinite(threshold) else 0.99
        assert self.level is not None
        return -self.level if self.kind == "loss" else self.level

    def passes(self, row: Mapping[str, Any]) -> bool:
        metric = self.metric(row)
        return bool(math.isfinite(metric) and metric >= self.target(row) - 1e-12)


def resolve(name: str, row: Mapping[str, Any]) -> Criterion:
    """``default`` resolves to the row's task criterion; anything else is parsed as given."""
    if str(name).strip().lower() in ("default", "task", ""):
        declared = row.get("task_criterion")
        return Criterion.parse(declared if isinstance(declared, str) and declared.strip() else FALLBACK)
    return Criterion.parse(name)


def describe(name: str, declared: list[str]) -> str:
    """A line saying which criterion a report used."""
    if str(name).strip().lower() in ("default", "task", ""):
        chosen = sorted({d for d in declared if isinstance(d, str) and d.strip()}) or [FALLBACK]
        return f"each task's own criterion ({', '.join(chosen)})"
    return str(Criterion.parse(name))


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
