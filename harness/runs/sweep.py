"""Plan and run a sweep: models × tasks × lengths × seeds, saved as each trial finishes.

Resuming is free: trials whose rows are already in the output folder are skipped (trials that
ended in ``error`` are retried). A folder made with different training hyperparameters is refused
rather than mixed; the grid itself may grow, so a new model can be added to an existing run.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.runs.config import SweepConfig, options_for
from harness.errors import HarnessError
from harness.registry.entries import Registry
from harness.runs.store import ResultStore, write_json
from harness.runs.training import TrialOutcome, TrialSpec

HYPERPARAMETERS = ("steps", "batch_size", "hidden_size", "lr", "eval_every", "eval_size", "threshold",
                   "clip", "device", "model_options", "task_options")


@dataclass
class SweepPlan:
    """The resolved trials of a sweep and the folder they go to."""

    config: SweepConfig
    device: str
    out: Path
    lengths: dict[str, list[int]]
    steps: dict[str, int]
    specs: list[TrialSpec]
    workers: int

    def hyperparameters(self) -> dict[str, Any]:
        values = self.config.as_dict()
        values.update(steps=self.steps, device=self.device)
        return {key: values[key] for key in HYPERPARAMETERS}


def default_out_dir() -> Path:
    return Path("results") / datetime.now().strftime("run-%Y%m%d-%H%M%S")


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Validate every name, length, option and the device, and list the trials; trains nothing."""
    from harness.runs.environment import resolve_device
    from harness.registry.loader import get_state

    state = get_state()
    models = [state.models.get(name).name for name in config.models]
    tasks = [state.tasks.get(name).name for name in config.tasks]
    device = resolve_device(config.device)
    per_task_lengths, per_task_steps = (_by_task_name(option, getattr(config, option), state.tasks)
                                        for option in ("lengths", "steps"))
    lengths: dict[str, list[int]] = {}
    steps: dict[str, int] = {}
    for task_name in tasks:
        entry = state.tasks.get(task_name)
        task_class = entry.load()
        task_class_defaults = getattr(task_class, "default_lengths", None)
        if isinstance(per_task_lengths, dict):
            chosen = per_task_lengths.get(task_name, task_class_defaults)
        else:
            chosen = per_task_lengths or task_class_defaults
        if not chosen:
            raise HarnessError(f"task '{task_name}' has no default lengths; pass --lengths")
        lengths[task_name] = sorted(set(int(n) for n in chosen))
        for length in lengths[task_name]:  # builds the task: bad lengths fail here, before training
            entry.build(length=length, **options_for(config.task_options, task_name))
        budget = per_task_steps.get(task_name) if isinstance(per_task_steps, dict) else per_task_steps
        steps[task_name] = int(budget or getattr(task_class, "default_steps", 1000))
    specs = [
        TrialSpec(model=model, task=task, length=length, seed=seed, steps=steps[task],
                  batch_size=config.batch_size, hidden_size=config.hidden_size, lr=float(config.lr),
                  eval_every=config.eval_every, eval_size=config.eval_size,
                  threshold=float(config.threshold), clip=float(config.clip), device=device,
                  model_options=options_for(config.model_options, model),
                  task_options=options_for(config.task_options, task))
        for task in tasks for length in lengths[task] for model in models for seed in config.seeds
    ]
    out = Path(config.out) if config.out else default_out_dir()
    return SweepPlan(config, device, out, lengths, steps, specs, resolve_workers(config.workers, device, len(specs)))


def _by_task_name(option: str, value: Any, registry: Registry) -> Any:
    """A per-task table keyed by canonical task names (aliases resolved). A name that is no
    registered task is an error; a known task outside this sweep is simply not used, so one
    config file can hold the budgets of every task and a command can sweep a subset."""
    if not isinstance(value, dict):
        return value
    resolved = {}
    for name, item in value.items():
        try:
            resolved[registry.get(name).name] = item
        except HarnessError as exc:
            raise HarnessError(f"{option}: {exc}") from None
    return resolved


def resolve_workers(workers: int | str, device: str, trials: int) -> int:
    """``auto``: one worker per core on CPU (small recurrent models scale better across processes
    than across threads), one on an accelerator; never more workers than trials."""
    from harness.runs.environment import available_cores

    if workers == "auto":
        workers = available_cores() if device == "cpu" else 1
    return max(1, min(int(workers), trials))


def prepare_out_dir(plan: SweepPlan) -> dict[str, Any] | None:
    """Create the folder (checking it is writable) and refuse one that holds another configuration.

    Returns the earlier run metadata when resuming, else ``None``.
    """
    import json

    try:
        plan.out.mkdir(parents=True, exist_ok=True)
        probe = plan.out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise HarnessError(f"output folder {plan.out} is not writable: {exc.strerror or exc}")
    meta_path = plan.out / "run.json"
    if not meta_path.exists():
        if (plan.out / "results.csv").exists():
            raise HarnessError(f"output folder {plan.out} has results.csv but no run.json; "
                               f"refusing to mix runs, choose another --out")
        return None
    try:
        previous = json.loads(meta_path.read_text(encoding="utf-8"))
        before = previous["hyperparameters"]
    except (ValueError, KeyError, TypeError):
        raise HarnessError(f"{meta_path} is unreadable; choose another --out")
    now = json.loads(json.dumps(plan.hyperparameters()))
    changed = [key for key in HYPERPARAMETERS if _differs(key, before.get(key), now.get(key))]
    if changed:
        details = "; ".join(f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in changed)
        raise HarnessError(f"output folder {plan.out} holds a run with different settings ({details}); "
                           f"use a new --out or the same settings to resume")
    return previous


def _differs(key: str, before: Any, now: Any) -> bool:
    """Settings must match exactly, except per-task budgets, which only need to agree on the
    tasks both runs share (so a task can be added to an existing folder)."""
    if key == "steps" and isinstance(before, dict) and isinstance(now, dict):
        return any(before[task] != now[task] for task in set(before) & set(now))
    return before != now


def run_metadata(plan: SweepPlan, previous: dict[str, Any] | None, started_at: str) -> dict[str, Any]:
    from harness.runs.allocator import malloc_tuned
    from harness.runs.environment import device_details, versions
    from harness.runs.executors import threads_per_worker
    from harness.registry.loader import get_state

    hyperparameters = plan.hyperparameters()
    if previous:  # keep the budgets of tasks this command does not sweep
        hyperparameters["steps"] = {**previous["hyperparameters"].get("steps", {}), **hyperparameters["steps"]}
    invocations = list(previous.get("invocations", [])) if previous else []
    invocations.append({"command": shlex.join(["harness", *sys.argv[1:]]), "started_at": started_at,
                        "cwd": str(Path.cwd())})
    return {
        "config": plan.config.as_dict(),
        "hyperparameters": hyperparameters,
        "grid": {"models": plan.config.models, "tasks": list(plan.lengths), "lengths": plan.lengths,
                 "seeds": plan.config.seeds},
        "command": invocations[-1]["command"],
        "invocations": invocations,
        "versions": versions(),
        "device": device_details(plan.device),
        "execution": {"workers": plan.workers,
                      "threads_per_worker": plan.config.threads or threads_per_worker(plan.workers),
                      "malloc_tuned": malloc_tuned()},
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
    interrupted: bool


def run_sweep(plan: SweepPlan, previous: dict[str, Any] | None, progress: bool = True) -> SweepOutcome:
    """Run the trials of ``plan`` not finished yet, saving each as it completes.

    ``previous`` is what :func:`prepare_out_dir` returned for the plan's folder.
    """
    from harness.runs.executors import make_executor

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store = ResultStore(plan.out)
    metadata = run_metadata(plan, previous, started_at)
    write_json(plan.out / "run.json", metadata)

    todo = [s for s in plan.specs if store.status(s.key) not in ("ok", "diverged")]
    skipped = len(plan.specs) - len(todo)
    executor = make_executor(min(plan.workers, max(1, len(todo))), plan.config.threads)
    bar = _progress_bar(len(todo), skipped, progress)
    failed: list[str] = []
    interrupted = False
    ran = 0
    started = time.perf_counter()
    try:
        for outcome in executor.run(todo, on_start=lambda spec: bar.set_postfix_str(spec.label)):
            store.add(outcome.row, outcome.curve)
            ran += 1
            _report_outcome(bar, outcome, failed)
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    metadata.update(finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    wall_seconds=round(time.perf_counter() - started, 2), interrupted=interrupted,
                    trials={"planned": len(plan.specs), "ran": ran, "skipped": skipped,
                            "failed": len(failed)})
    write_json(plan.out / "run.json", metadata)
    return SweepOutcome(store, ran, skipped, failed, interrupted)


def _report_outcome(bar: Any, outcome: TrialOutcome, failed: list[str]) -> None:
    row = outcome.row
    label = f"{row['model']} {row['task']} T={row['length']} seed={row['seed']}"
    if outcome.status == "error":
        failed.append(label)
        bar.write(f"harness: trial {label} failed: {row['error']}")
    elif outcome.status == "diverged":
        bar.write(f"harness: trial {label} diverged (non-finite loss) after {row['steps']} steps")


def _progress_bar(total: int, skipped: int, enabled: bool) -> Any:
    from tqdm import tqdm

    description = f"trials ({skipped} already done)" if skipped else "trials"
    return tqdm(total=total, desc=description, unit="trial", disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining} {postfix}")
