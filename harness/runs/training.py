"""Train and evaluate one trial: one (model, task, length, seed) and its settings, for a budget of steps.

Adam, gradient-norm clipping after ``backward()`` and before the step, fresh training data every
step. Three disjoint data streams: training batches, a validation set (early stopping: training
stops once the validation score reaches the threshold; model selection in reports) and a test
set (the reported score and loss). A non-finite loss ends the trial as ``diverged`` with its last
finite numbers; any exception raised by a model or task ends it as ``error``. Neither escapes.
"""

from __future__ import annotations

import math
import platform
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

import harness
from harness.model_api import TaskModel, count_parameters
from harness.runs import settings as S
from harness.runs.environment import synchronize
from harness.runs.options import canonical
from harness.runs.portable import portable_path, portable_text
from harness.runs.seeding import INIT, TEST_DATA, TRAIN_DATA, VALIDATION_DATA, derive_seed
from harness.runs.spec import TrialSpec
from harness.task_api import Batch, Task

EVAL_BATCH = 256
# The rows × steps one evaluation forward pass may hold: above T = 1024 a held-out batch goes through
# the model in row chunks (a power of two: 16 rows at T = 10,000), so that evaluation needs no more
# memory than training. Every built-in model computes each row on its own, so the outputs are the
# same bit for bit (tests/test_training.py); the chunks depend on T alone, never on the machine.
EVAL_ROW_STEPS = EVAL_BATCH * 1024
#: The row's columns that training fills in as it goes: what a trial resumed from a checkpoint restores.
RESUMED_COLUMNS = ("steps", "train_seconds", "seconds_per_step", "score", "loss", "val_score", "val_loss",
                   "best_val_score", "implementation")


@dataclass
class TrialOutcome:
    """One ``results.csv`` row, the trial's ``curves.csv`` rows and its ``gradients.csv`` rows."""

    row: dict[str, Any]
    curve: list[dict[str, Any]]
    gradients: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0  # the step of the checkpoint the trial continued from (0: it ran from the start)

    @property
    def status(self) -> str:
        return self.row["status"]


def build_task(spec: TrialSpec) -> Task:
    from harness.registry.loader import get_task

    return get_task(spec.task).build(length=spec.length, **spec.task_options)


def build_model(spec: TrialSpec, task: Task) -> TaskModel:
    """Build the model under the trial's init seed (torch, numpy and random all seeded)."""
    from harness.registry.loader import get_model
    from harness.runs.options import build_core

    init_seed = derive_seed(spec.seed, INIT)
    torch.manual_seed(init_seed)
    np.random.seed(init_seed % 2**32)
    random.seed(init_seed)
    core = build_core(get_model(spec.model), task.input_size, spec.hidden_size, spec.length, spec.model_options)
    return TaskModel(core, task.output_size, task.readout)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def held_out_set(task: Task, spec: TrialSpec, device: torch.device, stream: int) -> list[Batch]:
    """The fixed validation or test set for (task, length, seed): identical for every model."""
    generator = make_generator(device, derive_seed(spec.seed, stream))
    sizes = [EVAL_BATCH] * (spec.eval_size // EVAL_BATCH)
    if spec.eval_size % EVAL_BATCH:
        sizes.append(spec.eval_size % EVAL_BATCH)
    return [task.sample(size, generator) for size in sizes]


@torch.no_grad()
def evaluate(model: TaskModel, task: Task, batches: list[Batch]) -> tuple[float, float]:
    """Mean loss and score over the batches, weighted by batch size."""
    model.eval()
    total = sum(len(b) for b in batches)
    loss = score = 0.0
    for batch in batches:
        outputs = forward_in_row_chunks(model, batch.inputs)
        loss += task.loss(outputs, batch).item() * len(batch) / total
        score += task.score(outputs, batch).item() * len(batch) / total
    model.train()
    return loss, score


def forward_in_row_chunks(model: TaskModel, inputs: torch.Tensor) -> torch.Tensor:
    """``model(inputs)``, in chunks of rows of at most ``EVAL_ROW_STEPS`` rows × steps (see there)."""
    rows = 1 << (max(1, EVAL_ROW_STEPS // max(1, inputs.shape[1])).bit_length() - 1)
    if rows >= len(inputs):
        return model(inputs)
    return torch.cat([model(part) for part in inputs.split(rows)])


def base_row(spec: TrialSpec) -> dict[str, Any]:
    """A result row for ``spec`` before training: settings and provenance, no numbers yet."""
    row: dict[str, Any] = {
        "model": spec.model, "task": spec.task, "length": spec.length, "seed": spec.seed,
        "config_id": spec.config_id, "status": "ok", "score": math.nan, "loss": math.nan,
        "val_score": math.nan, "val_loss": math.nan, "best_val_score": math.nan, "solved": False,
        "steps": 0, "train_seconds": 0.0, "trial_seconds": 0.0,
        "model_options": canonical(spec.model_options), "task_options": canonical(spec.task_options),
        "torch_version": torch.__version__, "harness_version": harness.__version__,
        "python_version": platform.python_version(), "error": "", "finished_at": _now(),
    }
    for setting in S.trial_settings():
        row[setting.column_name] = spec.values[setting.name]
    return row


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def error_outcome(spec: TrialSpec, message: str) -> TrialOutcome:
    """The outcome of a trial that could not run at all (its worker died, it timed out, ...)."""
    row = base_row(spec)
    row.update(status="error", error=portable_text(message).replace("\n", " "))
    return TrialOutcome(row, [])


def _no_heartbeat() -> None:
    pass


_heartbeat: Callable[[], None] = _no_heartbeat


def set_heartbeat(callback: Callable[[], None] | None) -> None:
    """Call ``callback`` as a trial progresses (after every training step and evaluation), so that
    the process running trials can tell a slow trial from a hung one (:mod:`harness.runs.stall`)."""
    global _heartbeat
    _heartbeat = callback or _no_heartbeat


def prepare_process() -> None:
    """Pay once per process, before the first trial, the costs no trial should carry.

    The first ``torch.optim`` optimizer of a process imports ``torch._dynamo`` (about 3 s of CPU
    here) and plugins are loaded once; without this the first trial of every worker would be
    seconds slower than the rest. (Models that need compiled kernels load them on first use.)
    """
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    from harness.registry.loader import get_state

    get_state()


def run_trial(spec: TrialSpec) -> TrialOutcome:
    """Run one trial to completion; never raises for model, task or numerical failures."""
    started = time.perf_counter()
    if torch.get_num_threads() != spec.threads:  # the row records the count the trial really ran with
        torch.set_num_threads(spec.threads)
    row = base_row(spec)
    outcome = TrialOutcome(row, [])
    training = None
    try:
        training = Training(spec, row, started)
        training.run(outcome)
    except Exception as exc:  # a plugin's failure is recorded, never propagated into the sweep
        row["status"] = "error"
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {portable_path(frame.filename)}:{frame.lineno})" if frame else ""
        row["error"] = portable_text(f"{type(exc).__name__}: {exc}{where}").replace("\n", " ")
    earlier = training.prior_seconds if training is not None else 0.0  # before the checkpoint it resumed
    row["trial_seconds"] = round(earlier + time.perf_counter() - started, 4)
    row["finished_at"] = _now()
    return outcome


def make_optimizer(name: str, parameters: Any, lr: float) -> torch.optim.Optimizer:
    """The optimizer ``--optimizer`` names: Adam, or RMSprop with smoothing α = 0.9 (the chrono paper's)."""
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, alpha=0.9)
    return torch.optim.Adam(parameters, lr=lr)


class Training:
    """A trial's task, model, data streams and optimizer; :meth:`run` trains and evaluates it."""

    def __init__(self, spec: TrialSpec, row: dict[str, Any], started: float | None = None) -> None:
        from harness.registry.loader import get_model, get_task, provider

        self.spec, self.row = spec, row
        self.started = time.perf_counter() if started is None else started
        self.prior_seconds = 0.0  # trial time spent before the checkpoint this run resumed from
        self.device = torch.device(spec.device)
        self.task = build_task(spec)
        self.model = build_model(spec, self.task).to(self.device)
        core = self.model.core
        row.update(budget=spec.budget, chance_score=self.task.chance_score, memoryless_loss=self.task.memoryless_loss,
                   sequence_length=self.task.sequence_length, params=count_parameters(self.model),
                   task_criterion=str(getattr(self.task, "horizon_criterion", "")),
                   implementation=str(getattr(core, "implementation", "") or ""),
                   unbounded_by_construction=bool(getattr(core, "bidirectional", False)
                                                  and getattr(self.task, "bidirectional_shortcut", False)),
                   model_provider=provider(get_model(spec.model)), task_provider=provider(get_task(spec.task)))
        self.validation = held_out_set(self.task, spec, self.device, VALIDATION_DATA)
        self.test = held_out_set(self.task, spec, self.device, TEST_DATA)
        self.generator = make_generator(self.device, derive_seed(spec.seed, TRAIN_DATA))
        lr = spec.lr if spec.lr is not None else float(getattr(self.task, "default_lr", 1e-3))
        self.optimizer = make_optimizer(spec.optimizer, self.model.parameters(), lr)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]

    def step(self) -> torch.Tensor:
        """One training step on a fresh batch; returns the detached loss (no host sync)."""
        batch = self.task.sample(self.spec.batch_size, self.generator)
        loss = self.task.loss(self.model(batch.inputs), batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.spec.clip)
        self.optimizer.step()
        return loss.detach()

    def run(self, outcome: TrialOutcome) -> None:
        spec, row = self.spec, self.row
        progress = self.resume(outcome)
        gradients = _GradientProbe.maybe(self, outcome, progress)
        first, train_seconds, best = progress["step"] + 1, progress["train_seconds"], progress["best"]
        loss_sum, losses_since_eval = None, 0
        saved = time.perf_counter()
        synchronize(self.device)
        tick = time.perf_counter()
        for step in range(first, spec.budget + 1):
            detached = self.step()
            _heartbeat()
            if step == first:  # what the first step of this run ran (a cell loop decides at its first pass)
                row["implementation"] = str(getattr(self.model.core, "implementation", "") or "")
            loss_sum = detached if loss_sum is None else loss_sum + detached
            losses_since_eval += 1
            if gradients is not None and gradients.due(step):
                train_seconds += self._pause(tick)
                gradients.measure(step, str(step))
                tick = time.perf_counter()
            if step % spec.eval_every and step != spec.budget:
                continue
            train_seconds += self._pause(tick)
            row.update(steps=step, train_seconds=round(train_seconds, 4), seconds_per_step=train_seconds / step)
            train_loss = loss_sum.item() / losses_since_eval
            if not math.isfinite(train_loss):
                row["status"] = "diverged"
                break
            val_loss, val_score = evaluate(self.model, self.task, self.validation)
            _heartbeat()
            test_loss, test_score = evaluate(self.model, self.task, self.test)
            _heartbeat()
            if not all(math.isfinite(v) for v in (val_loss, val_score, test_loss, test_score)):
                row["status"] = "diverged"
                break
            best = max(best, val_score)
            point = {"model": spec.model, "task": spec.task, "length": spec.length, "seed": spec.seed,
                     "config_id": row["config_id"], "step": step, "train_loss": train_loss,
                     "val_loss": val_loss, "val_score": val_score, "test_loss": test_loss,
                     "test_score": test_score, "elapsed_seconds": round(train_seconds, 4)}
            if spec.grad_stats:
                from harness.runs.gradients import gradient_stats

                point.update(gradient_stats(self.model, self.task, spec, self.device))
            outcome.curve.append(point)
            row.update(score=test_score, loss=test_loss, val_score=val_score, val_loss=val_loss, best_val_score=best)
            if self.stops(val_score, val_loss):
                row["steps_to_solve"] = step
                break
            if step != spec.budget and self.checkpoint_due(saved):
                self.save_checkpoint(outcome, step, train_seconds, best, gradients)
                saved = time.perf_counter()
            loss_sum, losses_since_eval = None, 0
            tick = time.perf_counter()
        row["solved"] = bool(math.isfinite(row["score"]) and row["score"] >= spec.threshold)
        if gradients is not None:
            gradients.finish(row["steps"])

    # -- checkpoints (harness.runs.checkpoint) ---------------------------------------------------

    def checkpoint_due(self, last_saved: float) -> bool:
        plan = self.spec.checkpoint
        return plan is not None and time.perf_counter() - last_saved >= plan.every_seconds

    def checkpoint_identity(self) -> dict[str, Any]:
        """What a checkpoint must have been written for: this trial and budget, on the same torch version,
        device and thread count (another count may change the last digits)."""
        return {"key": list(self.spec.key), "budget": self.spec.budget, "torch": torch.__version__,
                "device": str(self.device), "threads": self.spec.threads}

    def save_checkpoint(self, outcome: TrialOutcome, step: int, train_seconds: float, best: float,
                        gradients: _GradientProbe | None) -> None:
        """Save everything the steps after ``step`` depend on, and the trial's progress so far."""
        from harness.runs import checkpoint

        tensors = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "data_rng": self.generator.get_state(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        kind, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)
        progress = {
            "step": step, "train_seconds": train_seconds, "best": best,
            "trial_seconds": self.prior_seconds + time.perf_counter() - self.started,
            "row": {k: self.row[k] for k in RESUMED_COLUMNS if k in self.row},
            "curve": outcome.curve, "gradients": outcome.gradients,
            "gradients_done": sorted(gradients.done) if gradients is not None else [],
            "numpy_rng": [kind, np.asarray(keys).tolist(), position, has_gauss, gauss],
            "python_rng": random.getstate(),
        }
        plan = self.spec.checkpoint
        assert plan is not None  # (checkpoint_due said so)
        checkpoint.save(plan, self.checkpoint_identity(), tensors, progress)

    def resume(self, outcome: TrialOutcome) -> dict[str, Any]:
        """Continue from the trial's checkpoint if it has one: restore it into the model, optimizer,
        random streams, row and outcome, and return the progress (``step`` 0: start from scratch)."""
        from harness.runs import checkpoint

        fresh = {"step": 0, "train_seconds": 0.0, "best": -math.inf, "gradients_done": []}
        saved = checkpoint.load(self.spec.checkpoint, self.checkpoint_identity()) if self.spec.checkpoint else None
        if saved is None:
            return fresh
        tensors, progress = saved
        self.model.load_state_dict(tensors["model"])
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.generator.set_state(tensors["data_rng"])
        torch.set_rng_state(tensors["torch_rng"])
        if "cuda_rng" in tensors:
            torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
        kind, keys, position, has_gauss, gauss = progress["numpy_rng"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
        version, state, python_gauss = progress["python_rng"]
        random.setstate((version, tuple(state), python_gauss))
        self.row.update(progress["row"])
        outcome.curve[:] = progress["curve"]
        outcome.gradients[:] = progress["gradients"]
        outcome.resumed_from = progress["step"]
        self.prior_seconds = progress["trial_seconds"]
        return progress

    def stops(self, val_score: float, val_loss: float) -> bool:
        """Whether the validation result meets the early-stopping rule (``--early-stop``)."""
        rule = self.spec.early_stop or "solved"
        if rule == "never":
            return False
        if rule == "solved":
            return val_score >= self.spec.threshold
        from harness.analysis.criteria import resolve

        view = {**self.row, "score": val_score, "loss": val_loss}
        return resolve(rule, view).passes(view)

    def _pause(self, tick: float) -> float:
        synchronize(self.device)
        return time.perf_counter() - tick


class _GradientProbe:
    """Gradient-flow measurements at chosen steps of a trial (``grad_at``), into the outcome."""

    def __init__(self, training: Training, outcome: TrialOutcome, steps: set[int], at_end: bool,
                 done: set[int]) -> None:
        self.training, self.outcome, self.steps, self.at_end = training, outcome, steps, at_end
        self.done = done  # measured already (by the run a checkpoint was saved in, when resumed)
        if 0 in steps and 0 not in done:
            self.measure(0, "0")

    @classmethod
    def maybe(cls, training: Training, outcome: TrialOutcome, progress: dict[str, Any]) -> _GradientProbe | None:
        at = getattr(training.spec, "grad_at", None)
        if not at:
            return None
        parts = {p.strip() for p in str(at).split(",") if p.strip()}
        return cls(training, outcome, {int(p) for p in parts if p != "end"}, "end" in parts,
                   set(progress["gradients_done"]))

    def due(self, step: int) -> bool:
        return step in self.steps

    def measure(self, step: int, at: str) -> None:
        """Measure now (training step ``step``), for the requested point ``at`` (``0``, ``200``, ``end``)."""
        from harness.runs.gradients import measure_gradients

        t = self.training
        rows = measure_gradients(t.model, t.task, t.spec, t.device, step)
        self.outcome.gradients += [{**row, "at": at} for row in rows]
        self.done.add(step)

    def finish(self, last_step: int) -> None:
        """Measure at the last step taken when asked for the end (``at=end``), or for requested steps
        training never reached (early stop: ``at`` is the largest of them)."""
        missing = sorted(s for s in self.steps if s > last_step)
        if self.at_end:
            self.measure(last_step, "end")
        elif missing and last_step not in self.done:
            self.measure(last_step, str(missing[-1]))
