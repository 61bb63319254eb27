"""Run a planned sweep into its folder, one trial at a time, so that nothing finished is ever lost.

The folder is locked for the whole run (:mod:`harness.runs.lock`); its rows are checked against
the plan (:func:`harness.runs.plan.check_resume`); trials already recorded as ``ok`` or
``diverged`` are skipped (``error`` ones run again). Each outcome is appended as it arrives.
Ctrl-C and SIGTERM stop the sweep the same way: finished trials stay, the command says how to
resume, and exits 130 or 143; the trials running continue on resume from their last checkpoint
(:mod:`harness.runs.checkpoint`), so at most ``--checkpoint-every`` seconds and one evaluation
interval of each are lost. SIGUSR1 drains it instead: no new trial starts, the running ones finish
and are saved, and the command exits 138.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.runs import checkpoint
from harness.runs.environment import command_line
from harness.runs.lock import FolderLock, check_writable
from harness.runs.plan import SweepPlan, check_resume, row_key
from harness.runs.schema import FINISHED
from harness.runs.spec import TrialSpec
from harness.runs.store import ResultStore, append_rows, default_key, write_json
from harness.runs.training import TrialOutcome, error_outcome

GRADIENT_FILE = "gradients.csv"


class Interrupted(BaseException):
    """The sweep was asked to stop (Ctrl-C or SIGTERM); ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


#: The signal that drains a sweep (None where the platform has no SIGUSR1).
DRAIN_SIGNAL = getattr(signal, "SIGUSR1", None)


@contextlib.contextmanager
def stop_signals(drain: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into :class:`Interrupted` while the sweep runs, and SIGUSR1 into a
    call of ``drain`` (start no new trial; the sweep ends when the running ones have finished)."""
    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    handlers: dict[int, Any] = {signal.SIGINT: handler, signal.SIGTERM: handler}
    if drain is not None and DRAIN_SIGNAL is not None:
        handlers[DRAIN_SIGNAL] = lambda _signum, _frame: drain()
    previous = {s: signal.getsignal(s) for s in handlers}
    for s, h in handlers.items():
        signal.signal(s, h)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunFolder:
    """A locked run folder: its results, and the run.json of earlier commands (or None)."""

    path: Path
    store: ResultStore
    previous: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def open_run_folder(plan: SweepPlan) -> Iterator[RunFolder]:
    """Lock the folder, load and check its results against the plan, and yield it."""
    from harness.registry.loader import get_state

    check_writable(plan.out)
    with FolderLock(plan.out, command_line()):
        state = get_state()
        store = ResultStore(plan.out, key=row_key(state.models, state.tasks))
        pending = any(store.status(s.key) not in FINISHED for s in plan.specs)
        check_resume(plan, list(store.rows.values()), trains=pending or _searches(plan))
        previous = read_run_record(plan.out)
        if previous is not None:
            close_lost_invocations(previous, list(store.rows.values()))
        yield RunFolder(plan.out, store, previous, store.notes)


LOST = "no end recorded: the process was killed (SIGKILL, or its machine went down)"


def close_lost_invocations(record: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Complete, from results.csv, the record of an earlier command that never recorded its end
    (killed outright: run.json still says ``finished_at: null``): the trials it finished and when its
    last one did, so run.json keeps saying where every trial came from."""
    invocations = record.get("invocations", [])
    if record.get("finished_at", "") is not None or not invocations or "finished_at" in invocations[-1]:
        return
    lost = invocations[-1]
    finished = sorted(str(row["finished_at"]) for row in rows
                      if row.get("finished_at") and str(row["finished_at"]) >= lost["started_at"])
    lost.update(finished_at=finished[-1] if finished else None, trials_ran=len(finished), interrupted=LOST)


def _searches(plan: SweepPlan) -> bool:
    """Whether the plan is an adaptive length search (``harness horizon``), which trains lengths it
    does not list in advance."""
    from harness.runs import settings as S

    return any(plan.config.get(s.name) is not None for s in S.by_role(S.SEARCH))


def read_run_record(folder: Path) -> dict[str, Any] | None:
    """The folder's run.json (None where it has none); a damaged one is an error that says what to do."""
    path = folder / "run.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return data
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise HarnessError(f"{path} is damaged ({exc}); remove it (rm {path}) and run the command again: "
                           f"every trial's settings are in results.csv, so nothing is lost") from None


def run_metadata(plan: SweepPlan, previous: dict[str, Any] | None, started_at: str,
                 executor: dict[str, Any]) -> dict[str, Any]:
    """What run.json records: settings, grid, commands, versions, device, plugins (no machine paths)."""
    from harness.registry.loader import get_state
    from harness.runs.allocator import malloc_tuned
    from harness.runs.environment import device_details, versions

    invocations = list(previous.get("invocations", [])) if previous else []
    invocations.append({"command": command_line(), "started_at": started_at})
    return {
        "settings": plan.settings_summary(),
        "axes": plan.axes,
        "grid": {"models": plan.models, "tasks": plan.tasks, "lengths": plan.lengths, "seeds": plan.config.seeds},
        "implementations": plan.implementations,
        "command": invocations[-1]["command"],
        "invocations": invocations,
        "versions": versions(),
        "device": device_details(plan.device),
        "execution": {**executor, "malloc_tuned": malloc_tuned()},
        "plugins": [p.as_dict() for p in get_state().plugins],
        "started_at": (previous or {}).get("started_at", started_at),
        "finished_at": None,
    }


@dataclass
class SweepOutcome:
    store: ResultStore
    ran: int
    skipped: int
    failed: list[str]
    interrupted: Interrupted | None


def longest_first(specs: list[TrialSpec]) -> list[TrialSpec]:
    """Longest trials first (length × budget as the cost), so no worker idles long at the end."""
    return sorted(specs, key=lambda s: s.length * s.budget, reverse=True)


class Recorder:
    """Writes each outcome as it arrives and keeps the progress bar and the list of failures."""

    def __init__(self, folder: RunFolder, total: int, skipped: int, progress: bool) -> None:
        self.folder, self.ran = folder, 0
        self.failed: list[str] = []
        self.resumed: list[dict[str, Any]] = []  # trials continued from a checkpoint, for run.json
        self.bar = _progress_bar(total, skipped, progress)

    def __call__(self, outcome: TrialOutcome, label: str) -> None:
        row = outcome.row
        if outcome.resumed_from:
            self.resumed.append({"trial": label, "from_step": outcome.resumed_from})
        if outcome.status == "error":  # an error's partial curves mean nothing; it runs again on resume
            self.folder.store.add(row, [])  # (from its checkpoint, if it saved one)
            self.failed.append(label)
            self.bar.write(f"harness: trial {label} failed: {row['error']}")
        else:
            if outcome.gradients:
                append_rows(self.folder.path / GRADIENT_FILE, outcome.gradients)
            self.folder.store.add(row, outcome.curve)
            checkpoint.remove(checkpoint.checkpoint_path(self.folder.path, default_key(row)))
            if outcome.status == "diverged":
                self.bar.write(f"harness: trial {label} diverged (non-finite loss) after {row['steps']} steps")
        self.ran += 1
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(1)

    def show_running(self, running: list[tuple[str, float]]) -> None:
        """Show each running trial and how long it has run, longest first (a hung one stands out)."""
        if running:
            shown = sorted(running, key=lambda item: -item[1])
            self.bar.set_postfix_str("running: " + "; ".join(f"{label} {_duration(s)}" for label, s in shown))

    def close(self) -> None:
        self.bar.close()


def run_sweep(plan: SweepPlan, folder: RunFolder, progress: bool = True,
              drive: Callable[[Any, Recorder, list[TrialSpec], SweepPlan], None] | None = None) -> SweepOutcome:
    """Run the trials of ``plan`` not finished yet, saving each as it completes.

    ``drive(executor, recorder)`` replaces the default (submit every trial, record every outcome):
    the adaptive length search submits trials as outcomes arrive.
    """
    from harness.runs.executors import make_executor

    started_at = now()
    for note in folder.notes:
        print(f"harness: note: {note}", file=sys.stderr)
    todo = [s for s in plan.specs if folder.store.status(s.key) not in FINISHED]
    checkpoint.remove_stale(folder.path, [key for key, row in folder.store.rows.items() if row["status"] in FINISHED])
    skipped = len(plan.specs) - len(todo)
    config = plan.config
    executor_info = execution_settings(plan)
    workers = plan.workers if drive is not None else min(plan.workers, len(todo))
    kind = config.executor if todo or drive is not None else "local"  # nothing to run: start no Ray
    # Before run.json: a Ray cluster that cannot be reached leaves the folder as it was.
    executor = make_executor(workers, executor_info["threads_per_worker"], config.trial_timeout, kind,
                             hang_after=config.get("hang_after"), address=config.ray_address,
                             gpus_per_trial=config.gpus_per_trial, device=plan.device)
    try:
        metadata = run_metadata(plan, folder.previous, started_at, executor_info)
        write_json(folder.path / "run.json", metadata)
    except BaseException:
        executor.close()
        raise
    recorder = Recorder(folder, len(todo), skipped, progress)
    if progress and hasattr(executor, "watch"):
        executor.watch = recorder.show_running
    if executor_info["checkpoint_every"] != "off":  # (not on a Ray cluster: its machines need not share the folder)
        executor = Checkpointing(executor, folder.path, float(executor_info["checkpoint_every"]))
    interrupted: Interrupted | None = None
    drained: list[int] = []

    def drain() -> None:
        drained.append(executor.drain())
        recorder.bar.write(f"harness: SIGUSR1: finishing the running trials, starting no new one "
                           f"({drained[-1]} queued trial(s) left for a resume)", file=sys.stderr)

    started = time.perf_counter()
    try:
        with stop_signals(drain):
            (drive or _drive_all)(executor, recorder, todo, plan)
        if drained and DRAIN_SIGNAL is not None:
            interrupted = Interrupted(DRAIN_SIGNAL)
    except KeyboardInterrupt:
        interrupted = Interrupted(signal.SIGINT)
    except Interrupted as stop:
        interrupted = stop
    finally:
        executor.close()
        recorder.close()
        folder.store.close()
    trials = {"planned": len(plan.specs), "ran": recorder.ran, "skipped": skipped, "failed": len(recorder.failed)}
    if recorder.ran == 0 and interrupted is None and folder.previous is not None:
        # a resume that trained nothing leaves the record of the commands that did (and a committed folder clean)
        write_json(folder.path / "run.json", folder.previous)
        return SweepOutcome(folder.store, 0, skipped, recorder.failed, None)
    wall_seconds = round(time.perf_counter() - started, 2)
    # each command's own record: a folder resumed on several machines says where each part ran and how long
    metadata["invocations"][-1].update(finished_at=now(), wall_seconds=wall_seconds, trials_ran=recorder.ran,
                                       device=metadata["device"], execution=metadata["execution"],
                                       interrupted=interrupted.args[0] if interrupted else None)
    if recorder.resumed:
        metadata["invocations"][-1]["resumed_from_checkpoints"] = recorder.resumed
    metadata.update(finished_at=now(), wall_seconds=wall_seconds,
                    interrupted=interrupted.args[0] if interrupted else None, trials=trials)
    write_json(folder.path / "run.json", metadata)
    return SweepOutcome(folder.store, recorder.ran, skipped, recorder.failed, interrupted)


class Checkpointing:
    """An executor whose trials are told, as they are submitted, where to save their checkpoints."""

    def __init__(self, executor: Any, folder: Path, every_seconds: float) -> None:
        self.executor, self.folder, self.every_seconds = executor, Path(folder).resolve(), every_seconds

    def submit(self, spec: TrialSpec) -> None:
        path = checkpoint.checkpoint_path(self.folder, spec.key)
        self.executor.submit(dataclasses.replace(spec, checkpoint=checkpoint.CheckpointPlan(str(path),
                                                                                           self.every_seconds)))

    def __getattr__(self, name: str) -> Any:  # drain, outcomes, close: the executor's own
        return getattr(self.executor, name)


def execution_settings(plan: SweepPlan) -> dict[str, Any]:
    """How the trials run, for run.json. Each trial runs with ``--threads`` threads (default 1), on
    any executor (on Ray it requests that many CPUs)."""
    config = plan.config
    threads = config.get("threads") or 1
    every = config.get("checkpoint_every", checkpoint.EVERY_S)
    if config.executor == "ray":
        return {"executor": "ray", "ray_address": config.ray_address or "local",
                "threads_per_worker": threads, "gpus_per_trial": config.gpus_per_trial,
                "trial_timeout": config.trial_timeout, "checkpoint_every": "off" if config.ray_address else every}
    return {"executor": config.executor, "workers": plan.workers,
            "threads_per_worker": threads, "trial_timeout": config.trial_timeout,
            "hang_after": config.get("hang_after"), "checkpoint_every": every}


def _drive_all(executor: Any, recorder: Recorder, todo: list[TrialSpec], plan: SweepPlan) -> None:
    labels = {}
    for spec in longest_first(todo):
        if spec.task in plan.broken_tasks:
            recorder(error_outcome(spec, plan.broken_tasks[spec.task]), spec.label)
            continue
        labels[spec.config_id, spec.model, spec.task, spec.length, spec.seed] = spec.label
        executor.submit(spec)
    for outcome in executor.outcomes():
        row = outcome.row
        recorder(outcome, labels.get((row["config_id"], row["model"], row["task"], row["length"], row["seed"]),
                                     f"{row['model']} {row['task']} T={row['length']} seed={row['seed']}"))


def _progress_bar(total: int, skipped: int, enabled: bool) -> Any:
    from tqdm import tqdm

    description = f"trials ({skipped} already done)" if skipped else "trials"
    return tqdm(total=total, desc=description, unit="trial", disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining} {postfix}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
