"""Driver overhead per trial: what recording one finished trial costs the sweep's main process.

No training: a fake executor yields synthetic outcomes (a full result row and a curve of
``--curve-points`` evaluations each, as ``harness.runs.training`` makes them) and the real driver
loop (``harness.runs.sweep._drive_all``) hands each to the real :class:`~harness.runs.sweep.Recorder`,
which appends it to the results store and advances the progress bar (drawn to /dev/null, so its
formatting is counted but no terminal is). ``run.json`` is not touched per trial. Each trial's
bookkeeping is timed alone; the one-off :meth:`ResultStore.close` (one sorted rewrite of both files)
is timed at the end.

It compares the append-only store (``harness/runs/store.py``) with the store it replaced, which
rewrote both files whole after every trial (``git show 403c443^:harness/results_io.py``, rebuilt
below as :class:`RewritingStore` with today's columns and keys). The old store's cost grows with
the trials already recorded, so above ``--full-old`` trials it is measured on its last
``--tail`` trials only, after the earlier ones are loaded in one go (running 5,000 trials through
it would take an estimated 25 minutes here).

    python benchmarks/driver_overhead.py
    python benchmarks/driver_overhead.py --sizes 10,1000,5000 --curve-points 10 --tail 100
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from harness.registry.loader import get_state
from harness.runs.plan import row_key
from harness.runs.schema import CURVE_COLUMNS, RESULT_COLUMNS
from harness.runs.spec import TrialSpec
from harness.runs.store import ResultStore, atomic_write_text, csv_text
from harness.runs.sweep import Recorder, RunFolder, _drive_all
from harness.runs.training import TrialOutcome, base_row


class RewritingStore:
    """The store before the append-only one: every ``add`` rewrites ``results.csv`` and ``curves.csv``
    whole, sorted, each through a temporary file, ``fsync`` and rename."""

    def __init__(self, folder: Path) -> None:
        self.results_path, self.curves_path = folder / "results.csv", folder / "curves.csv"
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.curves: list[dict[str, Any]] = []

    @staticmethod
    def trial_key(row: dict[str, Any]) -> tuple:
        return (str(row["model"]), str(row["task"]), int(row["length"]), int(row["seed"]), str(row["config_id"]))

    def add(self, row: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        key = self.trial_key(row)
        self.rows[key] = row
        self.curves = [r for r in self.curves if self.trial_key(r) != key] + list(curve)
        self.save()

    def save(self) -> None:
        curves = sorted(self.curves, key=lambda r: (*self.trial_key(r), int(r["step"])))
        atomic_write_text(self.curves_path, csv_text(curves, CURVE_COLUMNS))
        ordered = sorted(self.rows.values(), key=self.trial_key)
        atomic_write_text(self.results_path, csv_text(ordered, RESULT_COLUMNS))

    def close(self) -> None:
        """The old store had nothing left to do at the end."""


def synthetic_trials(count: int, curve_points: int) -> list[tuple[TrialSpec, TrialOutcome]]:
    """``count`` distinct lstm/recall trials (lengths and seeds vary) with realistic rows and curves."""
    trials = []
    for index in range(count):
        spec = TrialSpec.build("lstm", "recall", 5 + index // 100, index % 100, {"max_steps": 1000})
        row = base_row(spec)
        row.update(score=0.5, loss=1.25, val_score=0.5, val_loss=1.25, best_val_score=0.5, chance_score=0.125,
                   memoryless_loss=2.08, task_criterion="normalised:0.9", steps=1000, train_seconds=12.3456,
                   seconds_per_step=0.0123456, trial_seconds=13.2, params=67208, sequence_length=spec.length + 2,
                   implementation="cudnn-or-mkl", model_provider="recurrent-harness 0.1.0",
                   task_provider="recurrent-harness 0.1.0")
        curve = [{"model": spec.model, "task": spec.task, "length": spec.length, "seed": spec.seed,
                  "config_id": row["config_id"], "step": 100 * (k + 1), "train_loss": 1.5 - 0.01 * k,
                  "val_loss": 1.4, "val_score": 0.4, "test_loss": 1.41, "test_score": 0.41,
                  "elapsed_seconds": 1.2345 * (k + 1)} for k in range(curve_points)]
        trials.append((spec, TrialOutcome(row, curve)))
    return trials


class FakeExecutor:
    """Yields the prepared outcome of every submitted trial at once, as if each had just finished."""

    def __init__(self, outcomes: dict[tuple, TrialOutcome]) -> None:
        self.outcomes_by_key, self.submitted = outcomes, []

    def submit(self, spec: TrialSpec) -> None:
        self.submitted.append(spec)

    def outcomes(self) -> Iterator[TrialOutcome]:
        for spec in self.submitted:
            yield self.outcomes_by_key[spec.key]

    def close(self) -> None:
        pass


class TimedRecorder:
    """The sweep's recorder, with each call timed (nanoseconds)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder, self.times = recorder, []

    def __call__(self, outcome: TrialOutcome, label: str) -> None:
        started = time.perf_counter_ns()
        self.recorder(outcome, label)
        self.times.append(time.perf_counter_ns() - started)


@dataclass
class Measurement:
    store: str
    trials: int
    timed: int            # trials timed (the last ones when the earlier ones were loaded in one go)
    median_all_ms: float   # median over every timed trial
    median_last_ms: float  # median over the last --tail trials: the cost at this size
    close_ms: float
    total_s: float         # sum of the timed trials' bookkeeping, plus close()


def measure(kind: str, count: int, curve_points: int, tail: int, full_old: int, folder: Path) -> Measurement:
    trials = synthetic_trials(count, curve_points)
    if kind == "append-only":
        state = get_state()
        store: Any = ResultStore(folder, key=row_key(state.models, state.tasks))
    else:
        store = RewritingStore(folder)
    preloaded = 0
    if kind == "rewrite" and count > full_old:  # load all but the last `tail` trials in one go
        preloaded = count - tail
        for _, outcome in trials[:preloaded]:
            store.rows[store.trial_key(outcome.row)] = outcome.row
            store.curves += outcome.curve
        store.save()
    timed = trials[preloaded:]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        recorder = TimedRecorder(Recorder(RunFolder(folder, store, None), len(timed), preloaded, progress=True))
        executor = FakeExecutor({spec.key: outcome for spec, outcome in timed})
        _drive_all(executor, recorder, [spec for spec, _ in timed], SimpleNamespace(broken_tasks={}))
        started = time.perf_counter_ns()
        store.close()
        close_ns = time.perf_counter_ns() - started
        recorder.recorder.close()
    times = recorder.times
    return Measurement(kind, count, len(times), statistics.median(times) / 1e6, statistics.median(times[-tail:]) / 1e6,
                       close_ns / 1e6, (sum(times) + close_ns) / 1e9)


def print_table(rows: list[Measurement]) -> None:
    header = ("store", "trials", "timed", "per trial, median (ms)", "last trials, median (ms)", "close() (ms)",
              "timed total (s)")
    lines = [header] + [(m.store, f"{m.trials}", f"{m.timed}", f"{m.median_all_ms:.2f}", f"{m.median_last_ms:.2f}",
                         f"{m.close_ms:.1f}", f"{m.total_s:.2f}") for m in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for number, line in enumerate(lines):
        print("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                        enumerate(zip(line, widths))))
        if number == 0:
            print("  ".join("-" * width for width in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,1000,5000", help="numbers of trials (comma list)")
    parser.add_argument("--curve-points", type=int, default=10, help="evaluations per trial (curve rows)")
    parser.add_argument("--tail", type=int, default=100, help="'last trials': how many of the last trials")
    parser.add_argument("--full-old", type=int, default=1000,
                        help="largest size run whole through the rewriting store")
    parser.add_argument("--stores", default="append-only,rewrite")
    parser.add_argument("--no-fsync", action="store_true",
                        help="make os.fsync a no-op, to see the CPU part of the cost (a measurement only)")
    args = parser.parse_args()
    if args.no_fsync:
        os.fsync = lambda fd: None
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    rows = []
    for kind in args.stores.split(","):
        for count in sizes:
            with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as scratch:
                rows.append(measure(kind, count, args.curve_points, args.tail, args.full_old, Path(scratch)))
            print(f"  {kind} {count}: done", file=sys.stderr)
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    print(f"driver overhead per trial: store.add + progress bar, {args.curve_points} curve rows per trial; "
          f"'last trials': the last {args.tail}" + ("; fsync disabled" if args.no_fsync else ""))
    print_table(rows)
    new = {m.trials: m for m in rows if m.store == "append-only"}
    if len(new) > 1:
        small, large = new[min(new)], new[max(new)]
        ratio = large.median_last_ms / small.median_last_ms
        print(f"\nappend-only: per-trial bookkeeping at {large.trials} trials / at {small.trials} trials = "
              f"{ratio:.2f}x (acceptance: within 2x)")


if __name__ == "__main__":
    main()
