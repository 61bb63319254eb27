"""One trial's full description, and the identity that resume and the result files key on.

A :class:`TrialSpec` is a (model, task, length, seed) plus the value of every trial setting of
:mod:`harness.runs.settings` (by name, so a new setting needs no edit here) and the effective model
and task options. Two trials with the same identity give the same numbers on the same device;
a run folder keys its rows on it, so a sweep can hold several learning rates or forget biases.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.runs import settings as S
from harness.runs.checkpoint import CheckpointPlan

Key = tuple[str, str, int, int, str]  # model, task, length, seed, config_id


def config_id(values: Mapping[str, Any], model_options: Mapping[str, Any], task_options: Mapping[str, Any]) -> str:
    """A short hash of everything that determines a trial's numbers besides its grid point."""
    identity = {s.name: values.get(s.name) for s in S.identity_settings()
                if not (s.added_later and values.get(s.name, s.default) == s.default)}
    text = json.dumps({"settings": identity, "model_options": dict(model_options),
                       "task_options": dict(task_options)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def training_budget(max_steps: int, length: int, eval_every: int, growth: float, start: int) -> int:
    """``max_steps`` at T <= ``start``; above it, ``max_steps`` × (1 + ``growth`` × log2(T / ``start``)),
    rounded up to whole evaluation intervals. Steps to solve a memory task grow with T (about
    logarithmically in the long-horizon reference), so a fixed budget would end a length search at
    the budget rather than at the model's memory; trials at T <= ``start`` keep their budget and
    identity, so a search extended beyond a finished one reuses its trials."""
    if growth <= 0 or length <= start:
        return max_steps
    grown = max_steps * (1.0 + growth * math.log2(length / start))
    return max(max_steps, math.ceil(grown / eval_every - 1e-9) * eval_every)


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines a trial's numbers (with the device it runs on)."""

    model: str
    task: str
    length: int
    seed: int
    settings: tuple[tuple[str, Any], ...]
    model_options: dict[str, Any] = field(default_factory=dict, compare=False)
    task_options: dict[str, Any] = field(default_factory=dict, compare=False)
    axes: tuple[str, ...] = field(default=(), compare=False)  # what varies in the sweep, for labels
    # where and how often the trial saves a checkpoint (set by the sweep; harness.runs.checkpoint)
    checkpoint: CheckpointPlan | None = field(default=None, compare=False)

    @classmethod
    def build(cls, model: str, task: str, length: int, seed: int, values: Mapping[str, Any],
              model_options: Mapping[str, Any] | None = None, task_options: Mapping[str, Any] | None = None,
              axes: tuple[str, ...] = ()) -> TrialSpec:
        """A spec from a mapping of trial-setting values; settings left out take their defaults."""
        complete = {s.name: values.get(s.name, s.default) for s in S.trial_settings()}
        unknown = set(values) - set(complete)
        if unknown:
            raise KeyError(f"not trial settings: {', '.join(sorted(unknown))}")
        return cls(model, task, int(length), int(seed), tuple(complete.items()), dict(model_options or {}),
                   dict(task_options or {}), axes)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for key, value in object.__getattribute__(self, "settings"):
            if key == name:
                return value
        raise AttributeError(f"TrialSpec has no setting '{name}'")

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.settings)

    def replace(self, **changes: Any) -> TrialSpec:
        """A copy with some settings (or length/seed) changed."""
        grid = {k: changes.pop(k) for k in ("model", "task", "length", "seed") if k in changes}
        values = {**self.values, **changes}
        return TrialSpec.build(grid.get("model", self.model), grid.get("task", self.task),
                               grid.get("length", self.length), grid.get("seed", self.seed), values,
                               self.model_options, self.task_options, self.axes)

    @property
    def budget(self) -> int:
        """The trial's training budget in steps: ``max_steps``, grown for T above ``steps_from``."""
        return training_budget(self.max_steps, self.length, self.eval_every, self.steps_growth, self.steps_from)

    @property
    def config_id(self) -> str:
        return config_id(self.values, self.model_options, self.task_options)

    @property
    def key(self) -> Key:
        return (self.model, self.task, self.length, self.seed, self.config_id)

    @property
    def label(self) -> str:
        """``mymodel recall T=10 seed=0``, with the values of the sweep's axes when it has any."""
        extras = []
        for name in self.axes:
            if name.startswith("model:"):
                option = name.split(":", 1)[1]
                if option in self.model_options:
                    extras.append(f"{option}={self.model_options[option]}")
            elif name.startswith("task:"):
                option = name.split(":", 1)[1]
                if option in self.task_options:
                    extras.append(f"{option}={self.task_options[option]}")
            else:
                extras.append(f"{name}={getattr(self, name)}")
        return " ".join([f"{self.model} {self.task} T={self.length} seed={self.seed}", *extras])


def values_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The trial-setting values recorded in a result row (text from a CSV file, or Python values).

    Columns an older file lacks take the setting's default, so a folder written before a setting
    existed keeps its trials' identities.
    """
    values = {}
    for setting in S.trial_settings():
        raw = row.get(setting.column_name)
        if raw is None or (isinstance(raw, str) and raw.strip() == "") or raw != raw:  # missing or NaN
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = setting.parse(raw, setting.column_name)
        except Exception:
            values[setting.name] = raw
    return values


def options_from_row(row: Mapping[str, Any], column: str) -> dict[str, Any]:
    raw = row.get(column)
    if isinstance(raw, dict):
        return dict(raw)
    if not raw or raw != raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
