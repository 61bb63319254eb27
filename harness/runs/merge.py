"""``harness merge``: bring the finished trials of other run folders into one, as if trained there.

For a sweep split across machines (part of it run where more cores or a GPU were lent), or a trial
run ahead of its length search in a scratch folder while the search's own trial decides whether it
is needed. Only finished trials (``ok``, ``diverged``) move, with their curves and gradient rows; a
trial the destination has already finished keeps its row. A row keeps everything that produced it
(settings, seed, versions, device, threads), and the destination's ``run.json`` gets one record per
merge that lists the commands which trained the merged trials, so it still says where each came from.

Trials that the destination's own commands could not have written are refused, so that a merged
folder never mixes numbers a resume would refuse to mix: another implementation of a model (fused
kernels or eager equations), another thread count, or another training budget for the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.runs import settings as S
from harness.runs.horizon import write_horizons
from harness.runs.lock import FolderLock
from harness.runs.schema import CURVE_COLUMNS, FINISHED, GRADIENT_COLUMNS, TRIAL_KEY
from harness.runs.spec import Key, values_from_row
from harness.runs.store import ResultStore, Row, Table, append_rows, default_key, write_json
from harness.runs.sweep import GRADIENT_FILE, now, read_run_record


@dataclass
class MergeOutcome:
    """What one merge did: trials brought in per source folder, and those the destination already had."""

    merged: dict[str, int] = field(default_factory=dict)
    already: int = 0
    unfinished: int = 0

    @property
    def total(self) -> int:
        return sum(self.merged.values())


def merge_folders(sources: list[Path], destination: Path, command: str = "harness merge") -> MergeOutcome:
    """Merge the finished trials of ``sources`` into ``destination`` (an existing run folder), holding
    every folder's lock; nothing is written unless every source passes the checks. ``command`` is
    recorded in the destination's run.json."""
    from contextlib import ExitStack

    from harness.registry.loader import get_state
    from harness.runs.plan import row_key

    folders = [destination, *sources]
    for folder in folders:
        if not (folder / "results.csv").is_file():
            raise HarnessError(f"{folder} is not a run folder (no results.csv)")
    if len({f.resolve() for f in folders}) != len(folders):
        raise HarnessError("merge: a folder is named twice (or a source is the destination)")
    state = get_state()
    key = row_key(state.models, state.tasks)
    with ExitStack() as locks:
        for folder in folders:
            locks.enter_context(FolderLock(folder, command))
        target = ResultStore(destination, key=key)
        record = read_run_record(destination) or {}
        plan: list[tuple[Path, list[Row], dict[Key, list[Row]], dict[str, Any]]] = []
        outcome = MergeOutcome()
        taken: dict[Key, Row] = {}  # accepted so far, from every source: later ones must fit them too
        for source in sources:
            store = ResultStore(source, key=key)
            source_record = read_run_record(source) or {}
            rows = []
            for identity, row in sorted(store.rows.items()):
                if row.get("status") not in FINISHED:
                    outcome.unfinished += 1
                elif target.status(identity) in FINISHED or identity in taken:
                    outcome.already += 1
                else:
                    _check_fits(row, [*target.rows.values(), *taken.values()], record, source_record, source)
                    rows.append(row)
                    taken[identity] = row
            wanted = {key(r) for r in rows}
            plan.append((source, rows, _rows_by_trial(source / "curves.csv", CURVE_COLUMNS, wanted), source_record))
        started_at = now()
        for source, rows, curves, _record in plan:
            gradients = _rows_by_trial(source / GRADIENT_FILE, GRADIENT_COLUMNS, {key(r) for r in rows})
            for row in rows:
                target.add(row, curves.get(key(row), []))
                if gradients.get(key(row)):
                    append_rows(destination / GRADIENT_FILE, gradients[key(row)], GRADIENT_COLUMNS)
            outcome.merged[str(source)] = len(rows)
        if outcome.total:
            target.close()
            merges = [{"folder": str(source), "trials": len(rows),
                       "invocations": source_record.get("invocations", [])}
                      for source, rows, _curves, source_record in plan if rows]
            record.setdefault("invocations", []).append(
                {"command": command, "started_at": started_at, "finished_at": now(),
                 "trials_merged": outcome.total, "merged": merges})
            write_json(destination / "run.json", record)
            write_horizons(destination, None)  # for every criterion it holds
    return outcome


def _check_fits(row: Row, rows: list[Row], record: dict[str, Any], source_record: dict[str, Any],
                source: Path) -> None:
    """Refuse a trial that no resume of the destination would sit beside its trials of the same setting."""
    label = f"{row['model']} on {row['task']} at T = {row['length']}, seed {row['seed']}"
    same = [r for r in rows if (r["model"], r["task"], r["config_id"]) == (row["model"], row["task"], row["config_id"])]
    problems = []
    implementations = {str(r.get("implementation") or "") for r in rows if r["model"] == row["model"]} - {""}
    if row.get("implementation") and implementations and row["implementation"] not in implementations:
        problems.append(f"it ran on {row['implementation']} (the trials it would join: "
                        f"{', '.join(sorted(implementations))})")
    for setting in S.matched_settings():
        theirs = {str(values_from_row(r)[setting.name]) for r in same if r.get(setting.column_name) not in (None, "")}
        if row.get(setting.column_name) not in (None, "") and theirs:
            mine = str(values_from_row(row)[setting.name])
            if mine not in theirs:
                problems.append(f"{setting.cli_flag} {mine} (the trials it would join: {', '.join(sorted(theirs))})")
    for name in ("steps_growth", "steps_from"):  # the budget rule is outside the identity: compare the runs'
        ours, theirs = record.get("settings", {}).get(name), source_record.get("settings", {}).get(name)
        if same and ours is not None and theirs is not None and ours != theirs:
            problems.append(f"--{name.replace('_', '-')} {theirs} (the destination's: {ours})")
    if problems:
        raise HarnessError(f"merge: {source} holds {label}, which does not fit beside the trials of its "
                           f"setting: {'; '.join(problems)}; nothing was merged")


def _rows_by_trial(path: Path, columns: tuple[str, ...], wanted: set[Key]) -> dict[Key, list[Row]]:
    """The rows of a per-trial CSV file (curves, gradients) that belong to the ``wanted`` trials."""
    found: dict[Key, list[Row]] = {}
    for row in Table(path, (*TRIAL_KEY, "config_id")).rows:
        trial = default_key(row)
        if trial in wanted:
            found.setdefault(trial, []).append({c: row.get(c, "") for c in columns})
    return found
