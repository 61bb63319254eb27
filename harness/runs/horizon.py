"""``harness horizon``: an adaptive search over the dependency length T, per (model, task, seed, setting).

A series starts at ``min_length`` and multiplies T by ``growth`` (rounding up) while its trials
pass the criterion, up to ``max_length``. After the first failure it bisects in log T between the
last length passed and the first failed, until their ratio is at most ``resolution`` (or no
integer length lies between them). Each trial is an ordinary trial of ``harness run``: the same
rows in ``results.csv``/``curves.csv``, the same resume (a trial already in the folder is read,
not trained), the same executors, so series run in parallel under ``--workers``. At the end,
``horizons.csv`` gets one row per (model, task, seed, setting, criterion).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.criteria import resolve
from harness.errors import HarnessError
from harness.runs.config import SweepConfig
from harness.runs.plan import SweepPlan, plan_sweep
from harness.runs.schema import FINISHED
from harness.runs.spec import TrialSpec
from harness.runs.store import atomic_write_text
from harness.runs.sweep import Recorder, SweepOutcome, open_run_folder, run_sweep
from harness.runs.training import error_outcome

HORIZON_FILE = "horizons.csv"
HORIZON_COLUMNS = ("model", "task", "seed", "config_id", "criterion", "horizon", "first_fail", "estimate",
                   "censored", "trials", "training_steps", "seconds", "unbounded_by_construction")


@dataclass
class Series:
    """The search state of one (model, task, seed, setting)."""

    spec: TrialSpec          # at the first length
    growth: float
    resolution: float
    max_length: int
    criterion: str
    passed: int | None = None   # the longest length passed with every shorter one passed
    failed: int | None = None   # the shortest length failed
    done: bool = False
    tried: list[int] = field(default_factory=list)

    def next_length(self) -> int | None:
        """The length to try next, or None when the search is over."""
        if self.done:
            return None
        if not self.tried:
            return self.spec.length
        if self.failed is None:  # growing
            assert self.passed is not None
            if self.passed >= self.max_length:
                return None
            return min(self.max_length, max(self.passed + 1, math.ceil(self.passed * self.growth)))
        if self.passed is None or self.failed / self.passed <= self.resolution:
            return None
        middle = round(math.sqrt(self.passed * self.failed))
        return middle if self.passed < middle < self.failed else None

    def record(self, length: int, row: dict[str, Any]) -> None:
        self.tried.append(length)
        if row.get("status") == "error":  # nothing can be said beyond this length: stop here
            self.failed = length if self.failed is None else min(self.failed, length)
            self.done = True
        elif resolve(self.criterion, row).passes(row):
            self.passed = length if self.passed is None else max(self.passed, length)
        else:
            self.failed = length if self.failed is None else min(self.failed, length)
        self.done = self.done or self.next_length() is None


def _check_search(config: SweepConfig) -> None:
    if config.max_length < config.min_length:
        raise HarnessError(f"--max-length {config.max_length} is shorter than --min-length {config.min_length}")
    resolve(config.criterion, {"task_criterion": ""})  # an unknown criterion is an error now, not later


def plan_search(config: SweepConfig) -> SweepPlan:
    """The plan of the first trial of every series (lengths checked up to ``max_length``)."""
    _check_search(config)
    plan = plan_sweep(config.replace(lengths=[config.min_length]))
    longest = plan_sweep(config.replace(lengths=[config.max_length], seeds=config.seeds[:1]))
    plan.broken_tasks.update(longest.broken_tasks)
    plan.lengths = {task: [config.min_length, config.max_length] for task in plan.tasks}
    return plan


def run_horizon(config: SweepConfig, progress: bool,
                announce: Callable[[SweepPlan, str], None]) -> tuple[SweepOutcome, Path]:
    plan = plan_search(config)
    series = [Series(spec, config.growth, config.resolution, config.max_length, config.criterion)
              for spec in plan.specs]
    with open_run_folder(plan) as folder:
        announce(plan, f"{len(series)} series, T from {config.min_length} to {config.max_length}, "
                       f"growth ×{config.growth:g}, resolution {config.resolution:g}")
        rows = folder.store.rows

        def drive(executor: Any, recorder: Recorder, _todo: list[TrialSpec], _plan: SweepPlan) -> None:
            _search(series, executor, recorder, rows, plan)

        outcome = run_sweep(plan, folder, progress, drive=drive)
        # Also when interrupted: horizons.csv then says what the finished trials show (a series still
        # searching reads as "at least its longest pass"), not what an earlier command left there.
        if outcome.store.rows:  # (none when stopped during the first trials)
            write_horizons(plan.out, config.criterion)
    if outcome.store.rows:
        _print_horizons(plan.out, config.criterion)
    return outcome, plan.out


def _search(series: list[Series], executor: Any, recorder: Recorder, rows: dict, plan: SweepPlan) -> None:
    """Advance every series through the trials already in the folder, then train what is missing."""
    waiting: dict[tuple, Series] = {}
    recorder.bar.total = 0

    def advance(one: Series) -> None:
        while (length := one.next_length()) is not None:
            spec = one.spec.replace(length=length)
            row = rows.get(spec.key)
            if row is not None and row.get("status") in FINISHED:
                one.record(length, row)  # resumed: read, not trained
                continue
            recorder.bar.total += 1
            if spec.task in plan.broken_tasks:
                outcome = error_outcome(spec, plan.broken_tasks[spec.task])
                recorder(outcome, spec.label)
                one.record(length, outcome.row)
                continue
            waiting[spec.key] = one
            executor.submit(spec)
            return

    for one in series:
        advance(one)
    recorder.bar.refresh()
    for outcome in executor.outcomes():
        row = outcome.row
        key = (row["model"], row["task"], int(row["length"]), int(row["seed"]), row["config_id"])
        one = waiting.pop(key)
        recorder(outcome, one.spec.replace(length=int(row["length"])).label)
        one.record(int(row["length"]), row)
        advance(one)


def write_horizons(folder: Path, criterion: str | None) -> pd.DataFrame:
    """(Re)write ``horizons.csv`` from the folder's results: for ``criterion``, keeping other criteria's
    rows; with None, for every (task, criterion) the file already holds (after ``harness merge``)."""
    from harness.analysis.horizons import seed_horizons
    from harness.analysis.results import load_results

    path = folder / HORIZON_FILE
    try:
        kept = pd.read_csv(path) if path.exists() else None
        held = kept[["task", "criterion"]].dropna().drop_duplicates() if kept is not None else None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError):
        kept = held = None  # a damaged horizons.csv is derived data: write it anew
    results = load_results([folder])
    if criterion is not None:
        table = seed_horizons(results, criterion)
        written = set(table["criterion"]) if len(table) else {criterion}  # "default": one per task
        if kept is not None:
            kept = kept[~kept["criterion"].isin(written)]
    else:
        if held is None:
            return pd.DataFrame(columns=list(HORIZON_COLUMNS))
        parts = [seed_horizons(results[results["task"] == task], str(held_criterion))
                 for task, held_criterion in held.itertuples(index=False)]
        parts = [part for part in parts if len(part)]
        if not parts:
            return pd.DataFrame(columns=list(HORIZON_COLUMNS))
        table = pd.concat(parts, ignore_index=True).sort_values(["model", "task", "config_id", "seed", "criterion"],
                                                                kind="stable")
        kept = kept.iloc[:0] if kept is not None else None  # (joined empty: the columns keep the file's types)
    table["first_fail"] = table["first_fail"].astype("Int64")
    if kept is not None:
        table = pd.concat([kept, table], ignore_index=True)
    atomic_write_text(path, table[list(HORIZON_COLUMNS)].to_csv(index=False))
    return table


def _print_horizons(folder: Path, criterion: str) -> None:
    from harness.analysis.report import full_report

    if (folder / "results.csv").exists():
        print(full_report([folder], "markdown", criterion=criterion).rstrip())
        print(f"horizons: {folder / HORIZON_FILE}", file=sys.stderr)
