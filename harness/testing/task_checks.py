"""The task contract checks (``harness.task_api``): one function per check, run by :func:`check_task`.

Every check takes a :class:`TaskContext`, which holds the factory and the sizes and builds the
task and its first batch on first use. A check needs no other check to have run: it asserts
what it cannot do without (the task builds; every batch it samples is well formed) with the
messages the "batch" check would give.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.model_api import READOUTS
from harness.registry.entries import Entry
from harness.testing._batches import check_batch, perfect_outputs, same_batch
from harness.testing._common import (
    CHUNKS,
    CheckReport,
    as_names,
    fail,
    resolve,
    restoring_global_rng,
    run_checks,
    shape_of,
    unknown_check,
)


@dataclass
class TaskContext:
    """What the task checks share: the factory, its arguments, the task and its first batch.

    ``task`` (built at ``length``) and ``batch`` (``batch_size`` sequences from a generator
    seeded with ``seed``, validated) are made once, on first use.
    """

    factory: Callable[..., Any]
    label: str
    registered: str | None
    length: int
    options: dict[str, Any]
    device: torch.device
    batch_size: int
    samples: int
    seed: int

    def build(self, n: Any) -> Any:
        """``factory(length=n, **options)``, letting any exception through."""
        return self.factory(length=n, **self.options)

    @cached_property
    def task(self) -> Any:
        """The task at ``length``: what every check needs."""
        try:
            return self.build(self.length)
        except Exception as exc:
            raise AssertionError(f"{self.label}: building it raised {type(exc).__name__}: {exc}") from exc

    @cached_property
    def batch(self) -> Any:
        """The first batch of a generator seeded with ``seed``, validated."""
        return self.sample(self.batch_size, self.generator(self.seed))

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def out_shape(self, n: int) -> tuple[int, ...]:
        """The shape of a model's outputs for ``n`` sequences."""
        task = self.task
        return (n, task.sequence_length, task.output_size) if task.readout == "sequence" else (n, task.output_size)

    def sample(self, n: int, gen: torch.Generator) -> Any:
        """``task.sample(n, gen)``, failing unless the batch is well formed."""
        try:
            batch = self.task.sample(n, gen)
        except Exception as exc:
            raise AssertionError(f"{self.label}: sample({n}, generator) raised {type(exc).__name__}: {exc}") from exc
        check_batch(self.label, self.task, batch, n, self.device)
        return batch


# --------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------

def check_attributes(ctx: TaskContext) -> None:
    """attributes: bad lengths are user errors, and what the task declares (name, sizes, readout,
    default lengths and steps, chance score, memoryless loss) is well formed and agrees with
    ``describe()``: the harness plans, sizes and reports runs from these."""
    task, label = ctx.task, ctx.label
    _check_bad_lengths(ctx)
    name = getattr(task, "name", None)
    if not isinstance(name, str) or not name:
        fail(label, f"the task must have a non-empty string attribute name, got {name!r}")
    if ctx.registered is not None and name != ctx.registered:
        fail(label, f"task.name is {name!r} but the task is registered as {ctx.registered!r}")
    for attr in ("input_size", "output_size", "sequence_length"):
        value = getattr(task, attr, None)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            fail(label, f"{attr} must be a positive integer, got {value!r}")
    if getattr(task, "length", None) != ctx.length:
        fail(label, f"task.length must be the dependency length it was built with, {ctx.length}, "
                    f"got {getattr(task, 'length', None)!r}")
    if getattr(task, "readout", None) not in READOUTS:
        fail(label, f"readout must be one of {READOUTS}, got {getattr(task, 'readout', None)!r}")
    _check_defaults(ctx)
    _check_baselines(ctx)


def _check_bad_lengths(ctx: TaskContext) -> None:
    """Lengths 0, -1, 2.5 and True raise HarnessError (a one-line user error, not a traceback)."""
    for bad in (0, -1, 2.5, True):
        try:
            ctx.build(bad)
        except HarnessError:
            continue
        except Exception as exc:
            raise AssertionError(f"{ctx.label}: length={bad!r} must raise harness.errors.HarnessError (a one-line "
                                 f"user error), got {type(exc).__name__}: {exc}") from exc
        fail(ctx.label, f"length={bad!r} was accepted; it must raise harness.errors.HarnessError "
                        f"(subclass harness.task_api.Task and call super().__init__(length))")


def _check_defaults(ctx: TaskContext) -> None:
    """default_lengths are integers that build; default_steps, when set, is a positive integer."""
    defaults = getattr(ctx.task, "default_lengths", None)
    if not defaults or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in defaults):
        fail(ctx.label, f"default_lengths must be a non-empty sequence of integers, got {defaults!r}")
        return
    for n in defaults:
        try:
            ctx.build(n)
        except Exception as exc:
            raise AssertionError(f"{ctx.label}: default length {n} cannot be built: "
                                 f"{type(exc).__name__}: {exc}") from exc
    steps = getattr(ctx.task, "default_steps", None)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps <= 0):
        fail(ctx.label, f"default_steps, when set, must be a positive integer, got {steps!r}")


def _check_baselines(ctx: TaskContext) -> None:
    """chance_score in [0, 1], a finite memoryless_loss, and describe() reporting both."""
    task = ctx.task
    chance, memoryless = task.chance_score, task.memoryless_loss
    if not (isinstance(chance, numbers.Real) and 0.0 <= float(chance) <= 1.0):
        fail(ctx.label, f"chance_score must be a number in [0, 1], got {chance!r}")
    if not (isinstance(memoryless, numbers.Real) and math.isfinite(memoryless)):
        fail(ctx.label, f"memoryless_loss must be a finite number, got {memoryless!r}")
    described = task.describe()
    expected = {"task": task.name, "length": ctx.length, "sequence_length": task.sequence_length,
                "chance_score": chance, "memoryless_loss": memoryless}
    wrong = {k: described.get(k, "<missing>") for k, v in expected.items() if described.get(k, "<missing>") != v}
    if wrong:
        fail(ctx.label, f"describe() must report {expected}; these entries differ: {wrong}")


def check_batch_format(ctx: TaskContext) -> None:
    """batch: inputs, targets and mask have the contract's shapes, dtypes and device, for the
    check's batch size and for 1; class targets lie in [0, output_size) where scored."""
    _ = ctx.batch
    ctx.sample(1, ctx.generator(ctx.seed))


def check_seeding(ctx: TaskContext) -> None:
    """seeding: all randomness comes from the generator passed to ``sample()``, so a seed reproduces
    the data whatever else runs; different seeds and successive batches differ."""
    a = _check_no_global_rng(ctx)
    torch.manual_seed(4321)
    b = ctx.sample(ctx.batch_size, ctx.generator(ctx.seed + 1))
    if not same_batch(a, b):
        fail(ctx.label, "two batches from generators with the same seed differ")
    c = ctx.sample(ctx.batch_size, ctx.generator(ctx.seed + 2))
    if same_batch(a, c):
        fail(ctx.label, "generators with different seeds give identical batches: sample() ignores its generator")
    gen = ctx.generator(ctx.seed + 1)
    first, second = ctx.sample(ctx.batch_size, gen), ctx.sample(ctx.batch_size, gen)
    if not same_batch(first, a):
        fail(ctx.label, "the first batch of a fresh generator differs from an earlier one with the same seed")
    if same_batch(first, second):
        fail(ctx.label, "successive batches from one generator are identical: training would see one batch")


def _check_no_global_rng(ctx: TaskContext) -> Any:
    """Sampling, loss, score, memoryless outputs and describe() leave the global generators alone;
    returns the batch sampled with seed + 1."""
    task = ctx.task
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    before = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    a = ctx.sample(ctx.batch_size, ctx.generator(ctx.seed + 1))
    outputs = torch.randn(ctx.out_shape(ctx.batch_size), generator=torch.Generator().manual_seed(5)).to(ctx.device)
    task.loss(outputs, a)
    task.score(outputs, a)
    task.memoryless_outputs(a)
    task.describe()
    after = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    numpy_moved = any(not np.array_equal(x, y) for x, y in zip(before[1], after[1]))
    for name, moved in (("torch", not torch.equal(before[0], after[0])), ("numpy", numpy_moved),
                        ("Python", before[2] != after[2])):
        if moved:
            fail(ctx.label, f"the task used the global {name} random generator; draw every random number from "
                            f"the torch.Generator passed to sample() so that seeds reproduce data")
    return a


def check_loss_and_score(ctx: TaskContext) -> None:
    """loss and score: scalar tensors, finite on random outputs, the score in [0, 1], and the loss
    differentiable in the outputs (training needs its gradient)."""
    batch = ctx.batch
    outputs = torch.randn(ctx.out_shape(ctx.batch_size), generator=torch.Generator().manual_seed(6)).to(ctx.device)
    outputs.requires_grad_(True)
    loss = ctx.task.loss(outputs, batch)
    score = ctx.task.score(outputs, batch)
    for what, value in (("loss", loss), ("score", score)):
        if not (isinstance(value, torch.Tensor) and value.dim() == 0):
            fail(ctx.label, f"{what}(outputs, batch) must return a scalar tensor, got {shape_of(value)}")
        if not torch.isfinite(value):
            fail(ctx.label, f"{what}(outputs, batch) is not finite on random outputs: {float(value)}")
    if not 0.0 <= float(score) <= 1.0:
        fail(ctx.label, f"score must lie in [0, 1], got {float(score)}")
    if not loss.requires_grad:
        fail(ctx.label, "the loss does not depend differentiably on the outputs: training cannot use it")
    (grad,) = torch.autograd.grad(loss, outputs)
    if not (torch.isfinite(grad).all() and grad.abs().sum() > 0):
        fail(ctx.label, "the gradient of the loss with respect to the outputs is zero or not finite")


def check_perfect_predictions(ctx: TaskContext) -> None:
    """perfect predictions: outputs equal to the targets score 1 and beat the memoryless loss, so
    the task can be solved at all and the score's scale is right."""
    batch, task = ctx.batch, ctx.task
    perfect = perfect_outputs(batch, ctx.out_shape(ctx.batch_size))
    perfect_score = float(task.score(perfect, batch))
    perfect_loss = float(task.loss(perfect, batch))
    memoryless = task.memoryless_loss
    if perfect_score < 1.0 - 1e-6:
        fail(ctx.label, f"outputs equal to the targets (logits favouring the target class) score "
                        f"{perfect_score}, not 1")
    if memoryless > 0 and not perfect_loss < memoryless:
        fail(ctx.label, f"outputs equal to the targets have loss {perfect_loss}, not below the "
                        f"memoryless loss {memoryless}")


@dataclass
class _Statistics:
    """Per-chunk losses and scores of input-free predictors, for check_memoryless_and_chance."""

    chunk: int
    values: dict[str, list[float]]
    constants: list[int]
    input_independent: bool
    #: Whether the per-position plurality predictor was measured (class targets, at most 64 classes).
    plurality: bool = False

    def mean(self, key: str) -> float:
        return float(np.mean(self.values[key]))

    def err(self, key: str) -> float:
        v = self.values[key]
        return float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0

    def tol(self, key: str, value: float) -> float:
        """Five standard errors, plus a little for float32 rounding."""
        return 5 * self.err(key) + 1e-4 * max(1.0, abs(value)) + 1e-6


def _gather_statistics(ctx: TaskContext) -> _Statistics:
    """Loss and score of memoryless_outputs, random outputs and every constant class on ``samples``
    sequences, in CHUNKS chunks (their spread gives the standard error)."""
    task, label, dev = ctx.task, ctx.label, ctx.device
    chunk, out_size = max(1, ctx.samples // CHUNKS), task.output_size
    gen, rand_gen = ctx.generator(ctx.seed + 3), torch.Generator().manual_seed(ctx.seed + 4)
    classification = not ctx.batch.targets.is_floating_point()
    constants = list(range(out_size)) if classification and out_size <= 64 else []
    stats = _Statistics(chunk, {k: [] for k in ("memoryless_loss", "memoryless_score", "random_loss",
                                                "random_score", "plurality", *(f"class_{k}" for k in constants))},
                        constants, True, plurality=bool(constants))
    first_part, plurality = None, None
    with torch.no_grad():
        for index in range(CHUNKS):
            part = ctx.sample(chunk, gen)
            mem = task.memoryless_outputs(part)
            if not isinstance(mem, torch.Tensor) or tuple(mem.shape) != ctx.out_shape(chunk):
                fail(label, f"memoryless_outputs(batch) must have the output shape {ctx.out_shape(chunk)}, "
                            f"got {shape_of(mem)}")
            if mem.device != dev or not torch.isfinite(mem).all():
                fail(label, f"memoryless_outputs(batch) must be finite and on {dev}")
            if first_part is None:
                first_part = part
            elif index == 1:  # the same outputs for other inputs: the predictor ignores the inputs
                stats.input_independent = torch.equal(task.memoryless_outputs(first_part), mem)
            rand = torch.randn(ctx.out_shape(chunk), generator=rand_gen).to(dev)
            record = stats.values
            record["memoryless_loss"].append(float(task.loss(mem, part)))
            record["memoryless_score"].append(float(task.score(mem, part)))
            record["random_loss"].append(float(task.loss(rand, part)))
            record["random_score"].append(float(task.score(rand, part)))
            if plurality is not None:
                record["plurality"].append(float(task.score(plurality, part)))
            elif stats.plurality:  # fitted on the first chunk, scored on the others
                plurality = _plurality_outputs(part.targets, ctx.out_shape(chunk), out_size)
            for k in constants:
                const = torch.zeros(ctx.out_shape(chunk), device=dev)
                const[..., k] = 1.0
                record[f"class_{k}"].append(float(task.score(const, part)))
    return stats


def _plurality_outputs(targets: torch.Tensor, shape: tuple[int, ...], classes: int) -> torch.Tensor:
    """Outputs naming, at every position, the class most frequent there in ``targets``: an input-free
    predictor that beats every constant class when positions differ (e.g. blanks, then answers)."""
    per_position = targets.clamp(0, classes - 1).reshape(targets.shape[0], -1)  # (n, positions)
    positions = per_position.shape[1]
    index = per_position + classes * torch.arange(positions, device=targets.device)
    counts = torch.bincount(index.flatten(), minlength=positions * classes).reshape(positions, classes)
    logits = F.one_hot(counts.argmax(-1), classes).float()
    return logits.reshape(shape[1:]).expand(shape).contiguous()


def check_memoryless_and_chance(ctx: TaskContext) -> None:
    """memoryless and chance: on ``samples`` sequences, memoryless_outputs reach memoryless_loss,
    random outputs do no better, no input-free predictor scores above chance_score, and the best of
    them reaches it (chance_score is not above what a predictor without inputs measurably scores).
    Reports compare models with these two numbers, so both must be right."""
    stats, label = _gather_statistics(ctx), ctx.label
    chance, memoryless = ctx.task.chance_score, ctx.task.memoryless_loss
    mean, err = stats.mean, stats.err
    if abs(mean("memoryless_loss") - memoryless) > stats.tol("memoryless_loss", memoryless):
        fail(label, f"the loss of memoryless_outputs on {stats.chunk * CHUNKS} sequences is "
                    f"{mean('memoryless_loss'):.6g} ± {err('memoryless_loss'):.2g}, but memoryless_loss "
                    f"says {memoryless:.6g}: one of the two is wrong")
    if mean("random_loss") < memoryless - stats.tol("random_loss", memoryless):
        fail(label, f"random input-free outputs reach loss {mean('random_loss'):.6g}, below memoryless_loss "
                    f"{memoryless:.6g}: the memoryless loss is not the best a model without memory achieves")
    blind = [("random outputs", "random_score")]
    blind += [(f"always predicting class {k}", f"class_{k}") for k in stats.constants]
    if stats.input_independent:
        blind.append(("memoryless_outputs (which ignore the inputs)", "memoryless_score"))
    if stats.plurality:
        blind.append(("the most frequent class at each position (fitted on other sequences)", "plurality"))
    slack = 0.005
    for what, key in blind:
        if mean(key) > chance + stats.tol(key, chance) + slack:
            fail(label, f"{what} score {mean(key):.4f} ± {err(key):.2g}, above chance_score {chance:.4f}: "
                        f"chance_score must be the expected score of the best predictor that ignores the inputs")
    _check_chance_reached(stats, label, chance, blind)


def _check_chance_reached(stats: _Statistics, label: str, chance: float, blind: list[tuple[str, str]]) -> None:
    """A stated chance_score above the best input-free predictor measured is wrong too (it would make
    every model look worse than chance). For class targets scored by accuracy the best one is among
    the candidates (every constant class, the per-position plurality, memoryless_outputs when they
    ignore the inputs). For real-valued targets nothing is claimed: the memoryless outputs minimise
    the loss, and the constant that maximises a thresholded score may be another one (the mode, not
    the mean, of a skewed target)."""
    if not stats.constants:
        return
    candidates = [(what, key) for what, key in blind if key != "random_score"]
    what, key = max(candidates, key=lambda c: stats.mean(c[1]))
    best, slack = stats.mean(key), 0.005
    allowed = best + stats.tol(key, best) + slack
    if chance > allowed:
        fail(label, f"chance_score {chance:.4f} is above the best score measured for a predictor that ignores "
                    f"the inputs, {best:.4f} ± {stats.err(key):.2g} ({what}, on {stats.chunk * len(stats.values[key])} "
                    f"sequences; allowed up to {allowed:.4f}): chance_score must be the expected score of the best "
                    f"predictor that ignores the inputs")


# --------------------------------------------------------------------------------------------
# selecting and running
# --------------------------------------------------------------------------------------------

_CHECKS: dict[str, Callable[[TaskContext], None]] = {
    "attributes": check_attributes,
    "batch": check_batch_format,
    "seeding": check_seeding,
    "loss and score": check_loss_and_score,
    "perfect predictions": check_perfect_predictions,
    "memoryless and chance": check_memoryless_and_chance,
}

TASK_CHECKS: tuple[str, ...] = tuple(_CHECKS)
"""The task checks in the order they run."""


def select_task_checks(checks: str | Iterable[str] | None) -> list[str]:
    """The check names to run, in the canonical order, for a ``checks=`` argument (None: all).

    Raises ValueError for a name that is no task check.
    """
    if checks is None:
        return list(TASK_CHECKS)
    names = as_names(checks)
    for name in names:
        if not isinstance(name, str) or name not in _CHECKS:
            raise unknown_check("task", name, TASK_CHECKS)
    return [n for n in TASK_CHECKS if n in names]


def _default_length(task: Any) -> int:
    """``max(min_length, 5)`` of the task's class (a registered task's class is imported for it)."""
    if isinstance(task, (str, Entry)):
        from harness.registry.loader import get_state

        entry = task if isinstance(task, Entry) else get_state().tasks.get(task)
        task = entry.load()
    return max(int(getattr(task, "min_length", 1)), 5)


@restoring_global_rng
def run_task_checks(task: Any, length: int | None = None, *, options: dict[str, Any] | None = None,
                    device: str = "cpu", batch_size: int = 16, samples: int = 16384, seed: int = 0,
                    checks: str | Iterable[str] | None = None) -> CheckReport:
    """:func:`check_task`, returning the checks that ran and the reasons the others did not."""
    names = select_task_checks(checks)
    factory, label, registered = resolve(task, "task")
    if length is None:
        length = _default_length(task)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # tensors report "cuda:0", not "cuda"
        dev = torch.device("cuda", torch.cuda.current_device())
    ctx = TaskContext(factory=factory, label=f"{label} (T={length})", registered=registered, length=length,
                      options=dict(options or {}), device=dev, batch_size=batch_size, samples=samples, seed=seed)
    return run_checks(ctx, names, _CHECKS.__getitem__)


def check_task(task: Any, length: int | None = None, *, options: dict[str, Any] | None = None,
               device: str = "cpu", batch_size: int = 16, samples: int = 16384, seed: int = 0,
               checks: str | Iterable[str] | None = None) -> list[str]:
    """Check that a task follows the task contract of ``harness.task_api``.

    ``task`` is a registered task name, a registry :class:`~harness.registry.Entry` or a factory
    called as ``factory(length=T, **options)`` (usually the ``Task`` subclass itself).
    ``length`` defaults to ``max(min_length, 5)``. The statistical checks (memoryless loss,
    chance score) use ``samples`` sequences and allow five standard errors. ``checks`` selects
    checks by name (see :data:`TASK_CHECKS`; None runs them all); a selected check runs alone.
    Raises AssertionError naming the task, what was expected and what was found; ValueError for
    an unknown check name. Returns the names of the checks that ran.
    """
    return run_task_checks(task, length, options=options, device=device, batch_size=batch_size,
                           samples=samples, seed=seed, checks=checks).ran
