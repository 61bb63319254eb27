"""Train and evaluate one trial: one (model, task, length, seed) for a budget of steps.

The loop follows SPEC §4: Adam, gradient-norm clipping after ``backward()`` and before the step,
fresh training data every step, a fixed held-out evaluation set, early stop once solved. A
non-finite loss ends the trial as ``diverged`` with its last finite numbers; any exception
raised by a model or task ends it as ``error``. Neither escapes to the caller.
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import torch

import harness
from harness.runs.config import SweepConfig
from harness.model_api import TaskModel, count_parameters
from harness.registry.loader import get_model, get_task
from harness.runs.seeding import EVAL_DATA, INIT, TRAIN_DATA, derive_seed
from harness.task_api import Batch, Task

EVAL_BATCH = 256
_DEFAULTS = SweepConfig()  # one source of truth for training defaults


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines a trial's numbers (with the device it runs on)."""

    model: str
    task: str
    length: int
    seed: int
    steps: int = 1000
    batch_size: int = _DEFAULTS.batch_size
    hidden_size: int = _DEFAULTS.hidden_size
    lr: float = _DEFAULTS.lr
    eval_every: int = _DEFAULTS.eval_every
    eval_size: int = _DEFAULTS.eval_size
    threshold: float = _DEFAULTS.threshold
    clip: float = _DEFAULTS.clip
    device: str = "cpu"
    model_options: dict[str, Any] = field(default_factory=dict, hash=False)
    task_options: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.model, self.task, self.length, self.seed)

    @property
    def label(self) -> str:
        return f"{self.model} {self.task} T={self.length} seed={self.seed}"


@dataclass
class TrialOutcome:
    """One ``results.csv`` row and the trial's ``curves.csv`` rows."""

    row: dict[str, Any]
    curve: list[dict[str, Any]]

    @property
    def status(self) -> str:
        return self.row["status"]


def build_task(spec: TrialSpec) -> Task:
    return get_task(spec.task).build(length=spec.length, **spec.task_options)


def build_model(spec: TrialSpec, task: Task) -> TaskModel:
    """Build the model under the trial's init seed (torch, numpy and random all seeded)."""
    init_seed = derive_seed(spec.seed, INIT)
    torch.manual_seed(init_seed)
    np.random.seed(init_seed % 2**32)
    random.seed(init_seed)
    core = get_model(spec.model).build(input_size=task.input_size, hidden_size=spec.hidden_size,
                                       **spec.model_options)
    return TaskModel(core, task.output_size, task.readout)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def evaluation_set(task: Task, spec: TrialSpec, device: torch.device) -> list[Batch]:
    """The fixed held-out set for (task, length, seed): identical for every model."""
    generator = make_generator(device, derive_seed(spec.seed, EVAL_DATA))
    sizes = [EVAL_BATCH] * (spec.eval_size // EVAL_BATCH)
    if spec.eval_size % EVAL_BATCH:
        sizes.append(spec.eval_size % EVAL_BATCH)
    return [task.sample(size, generator) for size in sizes]


@torch.no_grad()
def evaluate(model: TaskModel, task: Task, batches: list[Batch]) -> tuple[float, float]:
    """Mean loss and score over the evaluation batches, weighted by batch size."""
    model.eval()
    total = sum(len(b) for b in batches)
    loss = score = 0.0
    for batch in batches:
        outputs = model(batch.inputs)
        loss += task.loss(outputs, batch).item() * len(batch) / total
        score += task.score(outputs, batch).item() * len(batch) / total
    model.train()
    return loss, score


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def base_row(spec: TrialSpec) -> dict[str, Any]:
    """A result row for ``spec`` before training: hyperparameters and provenance, no numbers yet."""
    return {
        "model": spec.model, "task": spec.task, "length": spec.length, "seed": spec.seed,
        "status": "ok", "score": math.nan, "loss": math.nan, "best_score": math.nan,
        "chance_score": math.nan, "memoryless_loss": math.nan, "solved": False,
        "steps_to_solve": None, "steps": 0, "train_seconds": 0.0, "seconds_per_step": math.nan,
        "params": None, "hidden_size": spec.hidden_size, "batch_size": spec.batch_size,
        "lr": spec.lr, "max_steps": spec.steps, "eval_every": spec.eval_every,
        "eval_size": spec.eval_size, "threshold": spec.threshold, "clip": spec.clip,
        "model_options": json.dumps(spec.model_options, sort_keys=True),
        "task_options": json.dumps(spec.task_options, sort_keys=True),
        "sequence_length": None, "device": spec.device, "torch_version": torch.__version__,
        "harness_version": harness.__version__, "python_version": platform.python_version(),
        "error": "", "trial_seconds": 0.0, "finished_at": _now(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def error_outcome(spec: TrialSpec, message: str) -> TrialOutcome:
    """The outcome of a trial that could not run at all (e.g. its worker process died)."""
    row = base_row(spec)
    row.update(status="error", error=message.replace("\n", " "))
    return TrialOutcome(row, [])


def prepare_process() -> None:
    """Pay once per process, before the first trial, the costs no trial should carry.

    The first ``torch.optim`` optimizer of a process imports ``torch._dynamo`` (about 3 s of CPU
    here), plugins are loaded once, and the fused cell kernels are compiled (once per machine)
    or loaded; without this the first trial of every worker would be seconds slower than the rest.
    """
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    from harness.plugins import cell_kernels
    from harness.registry.loader import get_state

    get_state()
    cell_kernels.status()


def run_trial(spec: TrialSpec, on_eval: Callable[[int, float], None] | None = None) -> TrialOutcome:
    """Run one trial to completion; never raises for model, task or numerical failures."""
    started = time.perf_counter()
    row = base_row(spec)
    curve: list[dict[str, Any]] = []
    try:
        _train(spec, row, curve, on_eval)
    except Exception as exc:  # a plugin's failure is recorded, never propagated into the sweep
        row["status"] = "error"
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {frame.filename}:{frame.lineno})" if frame else ""
        row["error"] = f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")
    row["trial_seconds"] = round(time.perf_counter() - started, 4)
    row["finished_at"] = _now()
    return TrialOutcome(row, curve)


def _train(spec: TrialSpec, row: dict[str, Any], curve: list[dict[str, Any]],
           on_eval: Callable[[int, float], None] | None) -> None:
    device = torch.device(spec.device)
    task = build_task(spec)
    row.update(chance_score=task.chance_score, memoryless_loss=task.memoryless_loss,
               sequence_length=task.sequence_length)
    model = build_model(spec, task).to(device)
    row["params"] = count_parameters(model)
    eval_batches = evaluation_set(task, spec, device)
    train_generator = make_generator(device, derive_seed(spec.seed, TRAIN_DATA))
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    parameters = [p for p in model.parameters() if p.requires_grad]

    train_seconds, loss_sum, losses_since_eval, best = 0.0, None, 0, -math.inf
    _synchronize(device)
    tick = time.perf_counter()
    for step in range(1, spec.steps + 1):
        batch = task.sample(spec.batch_size, train_generator)
        loss = task.loss(model(batch.inputs), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, spec.clip)
        optimizer.step()
        detached = loss.detach()
        loss_sum = detached if loss_sum is None else loss_sum + detached  # no host sync per step
        losses_since_eval += 1
        if step % spec.eval_every and step != spec.steps:
            continue
        _synchronize(device)
        train_seconds += time.perf_counter() - tick
        row.update(steps=step, train_seconds=round(train_seconds, 4),
                   seconds_per_step=train_seconds / step)
        train_loss = loss_sum.item() / losses_since_eval
        if not math.isfinite(train_loss):
            row["status"] = "diverged"
            return
        eval_loss, eval_score = evaluate(model, task, eval_batches)
        if not (math.isfinite(eval_loss) and math.isfinite(eval_score)):
            row["status"] = "diverged"
            return
        best = max(best, eval_score)
        curve.append({"model": spec.model, "task": spec.task, "length": spec.length, "seed": spec.seed,
                      "step": step, "train_loss": train_loss, "eval_loss": eval_loss,
                      "eval_score": eval_score, "elapsed_seconds": round(train_seconds, 4)})
        row.update(score=eval_score, loss=eval_loss, best_score=best)
        if on_eval is not None:
            on_eval(step, eval_score)
        if eval_score >= spec.threshold:
            row.update(solved=True, steps_to_solve=step)
            return
        loss_sum, losses_since_eval = None, 0
        tick = time.perf_counter()


def spec_as_dict(spec: TrialSpec) -> dict[str, Any]:
    return asdict(spec)
