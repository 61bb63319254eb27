"""Contract checks for plugin authors: one call validates a model, one call validates a task.

Use them in a plugin's own tests::

    from harness.testing import check_model, check_task

    def test_my_model():
        check_model(build_my_model)           # a factory, or a registered name such as "mgu"

    def test_my_task():
        check_task(MyTask, length=10)         # a Task class / factory, or a registered name

Each function raises :class:`AssertionError` with a message that names the model or task, what
was expected and what it got, and returns the names of the checks that ran. Both seed the global
torch, numpy and ``random`` generators as the harness does, and restore their states on return.
The harness runs both over every registered model and task (``tests/test_contracts.py``),
built-ins included.
What is checked, and why, is listed in ``docs/plugins.md`` (section "Contract checks").
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError
from harness.model_api import READOUTS, TaskModel
from harness.registry.entries import Entry

__all__ = ["check_model", "check_task"]

ATOL = 1e-5  # float32 agreement between two evaluations of the same computation
CHUNKS = 32  # the statistical checks estimate their standard error from this many chunks


def _fail(prefix: str, message: str) -> None:
    raise AssertionError(f"{prefix}: {message}")


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _resolve(target: Any, kind: str) -> tuple[Callable[..., Any], str, str | None]:
    """(factory, label for messages, registered name or None) for a name, an Entry or a callable."""
    if isinstance(target, str):
        from harness.registry.loader import get_state

        state = get_state()
        entry = (state.models if kind == "model" else state.tasks).get(target)
        return entry.build, f"{kind} '{entry.name}'", entry.name
    if isinstance(target, Entry):
        return target.build, f"{kind} '{target.name}'", target.name
    if callable(target):
        return target, f"{kind} {getattr(target, '__qualname__', repr(target))}", None
    raise TypeError(f"expected a registered {kind} name, a registry Entry or a factory, got {target!r}")


def _restoring_global_rng(func: Callable[..., Any]) -> Callable[..., Any]:
    """The checks seed the global generators as the harness does; afterwards, restore the caller's."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            return func(*args, **kwargs)
        finally:
            torch.random.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])
    return wrapper


def _seed_everything(seed: int) -> None:
    """Seed the global generators the way ``harness.training.build_model`` does."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ============================================================================================
# models
# ============================================================================================

@_restoring_global_rng
def check_model(model: Any, input_size: int = 3, hidden_size: int = 8, *,
                options: dict[str, Any] | None = None, device: str | None = None,
                batch_size: int = 4, length: int = 7, seed: int = 0) -> list[str]:
    """Check that a model factory follows the model contract of ``harness.model_api``.

    ``model`` is a registered model name, a registry :class:`~harness.registry.Entry` or a
    factory called as ``factory(input_size=..., hidden_size=..., **options)``. The model is
    checked on the CPU; on the ``meta`` device (a CPU-only stand-in for a GPU that catches
    tensors created on a fixed device); in float64; and on ``device`` when given, else on CUDA
    when it is available. Returns the names of the checks that ran.
    """
    factory, label, _ = _resolve(model, "model")
    options = dict(options or {})
    done: list[str] = []

    def build(build_seed: int, hidden: int = hidden_size) -> nn.Module:
        _seed_everything(build_seed)
        try:
            built = factory(input_size=input_size, hidden_size=hidden, **options)
        except Exception as exc:
            arguments = ", ".join(f"{k}={v!r}" for k, v in
                                  {"input_size": input_size, "hidden_size": hidden, **options}.items())
            raise AssertionError(f"{label}: building it with {arguments} raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(built, nn.Module):
            _fail(label, f"the factory must return a torch.nn.Module, got {type(built).__name__}")
        return built

    def inputs(batch: int, steps: int) -> torch.Tensor:
        """The same float32 CPU inputs for every call with the same shape."""
        return torch.randn(batch, steps, input_size, generator=torch.Generator().manual_seed(1))

    core = build(seed)
    out = getattr(core, "output_size", None)
    if isinstance(out, bool) or not isinstance(out, numbers.Integral) or out <= 0:
        _fail(label, f"the model must have a positive integer attribute output_size (the feature size F), "
                     f"got {out!r}")
    out = int(out)
    params = [p for p in core.parameters() if p.requires_grad]
    if not params:
        _fail(label, "the model has no trainable parameters (register weights as nn.Parameter or submodules)")
    wrong_dtype = sorted({str(p.dtype) for p in core.parameters() if p.dtype != torch.float32})
    if wrong_dtype:
        _fail(label, f"parameters must be float32 (SPEC §3), found {', '.join(wrong_dtype)}")
    done.append("build")

    # -- shapes, dtypes, finiteness: (features, summary) for several batch sizes and lengths --------
    def forward(module: nn.Module, x: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            result = module(x)
        except Exception as exc:
            raise AssertionError(f"{label}: forward on inputs of shape {_shape(x)} ({where}) raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        if not (isinstance(result, (tuple, list)) and len(result) == 2
                and all(isinstance(t, torch.Tensor) for t in result)):
            got = (f"a {type(result).__name__} of {len(result)} items" if isinstance(result, (tuple, list))
                   else f"{type(result).__name__} {_shape(result)}")
            _fail(label, f"forward(x) must return a pair (features, summary) of tensors, got {got}")
        features, summary = result
        batch, steps = x.shape[:2]
        if tuple(features.shape) != (batch, steps, out) or tuple(summary.shape) != (batch, out):
            _fail(label, f"forward(x) with x of shape {_shape(x)} (batch, length, input_size) must return "
                         f"features of shape (batch, length, output_size) = {(batch, steps, out)} and "
                         f"summary of shape (batch, output_size) = {(batch, out)}; got features "
                         f"{_shape(features)} and summary {_shape(summary)} ({where})")
        for name, t in (("features", features), ("summary", summary)):
            if t.dtype != x.dtype:
                _fail(label, f"{name} must have the dtype of the inputs, {x.dtype}, got {t.dtype} ({where})")
            if t.device != x.device:
                _fail(label, f"{name} must be on the inputs' device {x.device}, got {t.device} ({where})")
        return features, summary

    for batch, steps in ((batch_size, length), (1, 1), (1, length), (batch_size, 1)):
        features, summary = forward(core, inputs(batch, steps), f"batch {batch}, length {steps}")
        if not (torch.isfinite(features).all() and torch.isfinite(summary).all()):
            _fail(label, f"non-finite features or summary at initialisation (batch {batch}, length {steps})")
    done.append("shapes")

    # -- sequences in a batch are independent (catches a time-major / batch_first mix-up) -------------
    core.eval()
    with torch.no_grad():
        x = inputs(batch_size, length)
        features, summary = forward(core, x, "eval mode")
        again_f, again_s = forward(core, x, "eval mode, second call")
        if not (torch.equal(features, again_f) and torch.equal(summary, again_s)):
            _fail(label, "two forward passes on the same inputs in eval mode differ: forward must be "
                         "deterministic (no randomness outside training mode)")
        for row in (0, batch_size - 1):
            alone_f, alone_s = forward(core, x[row:row + 1], f"sequence {row} alone")
            if not (torch.allclose(alone_f[0], features[row], atol=ATOL, rtol=0)
                    and torch.allclose(alone_s[0], summary[row], atol=ATOL, rtol=0)):
                _fail(label, f"sequence {row} gives different features alone than in a batch of "
                             f"{batch_size}: the sequences of a batch are mixed (is the time axis dim 1? "
                             f"torch.nn recurrent modules need batch_first=True)")
    core.train()
    done.append("batch independence")

    # -- gradients through the task head, for both readouts ----------------------------------------
    for readout in READOUTS:
        core = build(seed)
        torch.manual_seed(seed + 101)  # the head's initialisation
        task_model = TaskModel(core, output_size=3, readout=readout)
        x = inputs(batch_size, length).requires_grad_(True)
        try:
            outputs = task_model(x)
        except Exception as exc:
            raise AssertionError(f"{label}: forward through the task head (readout '{readout}') raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        weights = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(2))
        (outputs * weights).sum().backward()
        if x.grad is None:
            _fail(label, f"the outputs do not depend differentiably on the inputs (readout '{readout}')")
        step_grads = x.grad.abs().sum(dim=(0, 2))
        if readout == "last":
            for step, where in ((0, "first"), (length - 1, "last")):
                if not step_grads[step] > 0:
                    _fail(label, f"the summary does not depend on the {where} time step: it must sum up the "
                                 f"whole sequence (for a unidirectional model, the last position's features)")
        elif not (step_grads > 0).all():
            missing = [int(i) for i in torch.nonzero(step_grads == 0).flatten()]
            _fail(label, f"the features do not depend on the inputs at time step(s) {missing}")
        for name, param in task_model.named_parameters():
            if not param.requires_grad:
                continue
            if param.grad is None:
                _fail(label, f"no gradient reaches parameter '{name}' (readout '{readout}'): it does not "
                             f"take part in the forward pass")
            if not torch.isfinite(param.grad).all():
                _fail(label, f"non-finite gradient for parameter '{name}' (readout '{readout}')")
            if not param.grad.abs().sum() > 0:
                _fail(label, f"the gradient of parameter '{name}' is zero (readout '{readout}')")
    done.append("gradients")

    # -- determinism: the seed fixes the initialisation; the state_dict holds all of it ------------
    first, second, other = build(seed), build(seed), build(seed + 1)
    sd_first, sd_second = first.state_dict(), second.state_dict()
    if sd_first.keys() != sd_second.keys():
        _fail(label, "two builds under the same seed have different state_dict keys")
    differing = [k for k in sd_first if not torch.equal(sd_first[k], sd_second[k])]
    if differing:
        _fail(label, f"two builds under the same seed differ in {', '.join(differing)}: initialisation "
                     f"must use only the global torch/numpy/random generators that the harness seeds")
    x = inputs(batch_size, length)
    for module in (first, second, other):
        module.eval()
    with torch.no_grad():
        out_first = forward(first, x, "first build")
        out_second = forward(second, x, "second build")
        if not all(torch.equal(a, b) for a, b in zip(out_first, out_second)):
            _fail(label, "two builds under the same seed give different outputs on the same inputs")
        if all(torch.equal(sd_first[k], v) for k, v in other.state_dict().items()):
            _fail(label, f"builds under seeds {seed} and {seed + 1} have identical parameters: "
                         f"the initialisation ignores the seed")
        try:
            other.load_state_dict(sd_first)
        except Exception as exc:
            raise AssertionError(f"{label}: load_state_dict of a same-sized model raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        out_loaded = forward(other, x, "after load_state_dict")
        if not all(torch.allclose(a, b, atol=ATOL, rtol=0) for a, b in zip(out_first, out_loaded)):
            _fail(label, "a model given another model's state_dict computes different outputs: some "
                         "tensor that affects the output is neither a parameter nor a buffer (a plain "
                         "tensor attribute or a Python list of tensors?), so it is neither trained nor saved")
    done.append("determinism")

    # -- hidden_size is honoured ------------------------------------------------------------------
    bigger = build(seed, hidden_size + 2)
    if sum(p.numel() for p in bigger.parameters()) == sum(p.numel() for p in first.parameters()):
        _fail(label, f"hidden_size={hidden_size} and hidden_size={hidden_size + 2} give the same number of "
                     f"parameters: the factory ignores hidden_size")
    done.append("hidden_size")

    # -- device and dtype moves ------------------------------------------------------------------------
    reference = out_first
    x = inputs(batch_size, length)
    moved = copy.deepcopy(first).double()
    try:
        with torch.no_grad():
            f64 = forward(moved, x.double(), "after .double()")
    except AssertionError as exc:
        raise AssertionError(f"{exc}. After .double() the model must compute in float64: create new tensors "
                             f"with the inputs' dtype and device, e.g. inputs.new_zeros(...)") from exc
    if not all(torch.allclose(a.double(), b, atol=1e-4, rtol=0) for a, b in zip(reference, f64)):
        _fail(label, "after .double() the outputs differ from float32 by more than 1e-4")
    done.append("dtype:float64")

    meta = copy.deepcopy(first).to("meta")
    try:
        with torch.no_grad():
            meta_out = meta(x.to("meta"))
    except Exception as exc:
        if not isinstance(exc, NotImplementedError) and "device" in str(exc).lower():
            raise AssertionError(
                f"{label}: after .to(device) the forward pass mixes devices ({type(exc).__name__}: {exc}); "
                f"create new tensors on the inputs' device, e.g. inputs.new_zeros(...) or "
                f"torch.zeros(..., device=inputs.device)") from exc
        meta_out = None  # some operation has no meta kernel: this stand-in check cannot run
    if meta_out is not None:
        if not (isinstance(meta_out, (tuple, list)) and len(meta_out) == 2
                and all(t.device.type == "meta" for t in meta_out)):
            _fail(label, "after .to(device) the outputs are not on that device")
        done.append("device:meta")

    targets = [device] if device else (["cuda"] if torch.cuda.is_available() else [])
    for target in targets:
        if target == "cpu":
            continue
        on_device = copy.deepcopy(first).to(target)
        with torch.no_grad():
            dev_out = forward(on_device, x.to(target), f"on {target}")
        if not all(torch.allclose(a, b.cpu(), atol=1e-4, rtol=0) for a, b in zip(reference, dev_out)):
            _fail(label, f"outputs on {target} differ from the CPU outputs by more than 1e-4")
        done.append(f"device:{target}")
    return done


# ============================================================================================
# tasks
# ============================================================================================

@_restoring_global_rng
def check_task(task: Any, length: int | None = None, *, options: dict[str, Any] | None = None,
               device: str = "cpu", batch_size: int = 16, samples: int = 16384,
               seed: int = 0) -> list[str]:
    """Check that a task follows the task contract of ``harness.task_api``.

    ``task`` is a registered task name, a registry :class:`~harness.registry.Entry` or a factory
    called as ``factory(length=T, **options)`` (usually the ``Task`` subclass itself).
    ``length`` defaults to ``max(min_length, 5)``. The statistical checks (memoryless loss,
    chance score) use ``samples`` sequences and allow five standard errors. Returns the names of
    the checks that ran.
    """
    factory, label, registered = _resolve(task, "task")
    options = dict(options or {})
    done: list[str] = []
    if length is None:
        source = _resolve_class(task) if isinstance(task, (str, Entry)) else task
        length = max(int(getattr(source, "min_length", 1)), 5)
    label = f"{label} (T={length})"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # tensors report "cuda:0", not "cuda"
        dev = torch.device("cuda", torch.cuda.current_device())

    def build(n: Any):
        return factory(length=n, **options)

    try:
        built = build(length)
    except Exception as exc:
        raise AssertionError(f"{label}: building it raised {type(exc).__name__}: {exc}") from exc

    # -- construction and declared attributes ------------------------------------------------------
    for bad in (0, -1, 2.5, True):
        try:
            build(bad)
        except HarnessError:
            continue
        except Exception as exc:
            _fail(label, f"length={bad!r} must raise harness.errors.HarnessError (a one-line user error), "
                         f"got {type(exc).__name__}: {exc}")
        _fail(label, f"length={bad!r} was accepted; it must raise harness.errors.HarnessError "
                     f"(subclass harness.task_api.Task and call super().__init__(length))")
    name = getattr(built, "name", None)
    if not isinstance(name, str) or not name:
        _fail(label, f"the task must have a non-empty string attribute name, got {name!r}")
    if registered is not None and name != registered:
        _fail(label, f"task.name is {name!r} but the task is registered as {registered!r}")
    for attr in ("input_size", "output_size", "sequence_length"):
        value = getattr(built, attr, None)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            _fail(label, f"{attr} must be a positive integer, got {value!r}")
    if getattr(built, "length", None) != length:
        _fail(label, f"task.length must be the dependency length it was built with, {length}, "
                     f"got {getattr(built, 'length', None)!r}")
    if getattr(built, "readout", None) not in READOUTS:
        _fail(label, f"readout must be one of {READOUTS}, got {getattr(built, 'readout', None)!r}")
    defaults = getattr(built, "default_lengths", None)
    if not defaults or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in defaults):
        _fail(label, f"default_lengths must be a non-empty sequence of integers, got {defaults!r}")
    for n in defaults:
        try:
            build(n)
        except Exception as exc:
            raise AssertionError(f"{label}: default length {n} cannot be built: {type(exc).__name__}: {exc}") from exc
    steps = getattr(built, "default_steps", None)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps <= 0):
        _fail(label, f"default_steps, when set, must be a positive integer, got {steps!r}")
    chance, memoryless = built.chance_score, built.memoryless_loss
    if not (isinstance(chance, numbers.Real) and 0.0 <= chance <= 1.0):
        _fail(label, f"chance_score must be a number in [0, 1], got {chance!r}")
    if not (isinstance(memoryless, numbers.Real) and math.isfinite(memoryless)):
        _fail(label, f"memoryless_loss must be a finite number, got {memoryless!r}")
    described = built.describe()
    expected = {"task": name, "length": length, "sequence_length": built.sequence_length,
                "chance_score": chance, "memoryless_loss": memoryless}
    wrong = {k: described.get(k, "<missing>") for k, v in expected.items() if described.get(k, "<missing>") != v}
    if wrong:
        _fail(label, f"describe() must report {expected}; these entries differ: {wrong}")
    done.append("attributes")

    seq_len, out_size = built.sequence_length, built.output_size

    def generator(s: int) -> torch.Generator:
        return torch.Generator(device=dev).manual_seed(s)

    def out_shape(n: int) -> tuple[int, ...]:
        return (n, seq_len, out_size) if built.readout == "sequence" else (n, out_size)

    def sample(n: int, gen: torch.Generator):
        try:
            batch = built.sample(n, gen)
        except Exception as exc:
            raise AssertionError(f"{label}: sample({n}, generator) raised {type(exc).__name__}: {exc}") from exc
        _check_batch(label, built, batch, n, seq_len, out_size, dev)
        return batch

    # -- batches: shapes, dtypes, mask, device --------------------------------------------------------
    batch = sample(batch_size, generator(seed))
    sample(1, generator(seed))
    done.append("batch")

    # -- randomness comes from the generator only ------------------------------------------------------
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    before = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    a = sample(batch_size, generator(seed + 1))
    outputs = torch.randn(out_shape(batch_size), generator=torch.Generator().manual_seed(5)).to(dev)
    built.loss(outputs, a)
    built.score(outputs, a)
    built.memoryless_outputs(a)
    built.describe()
    after = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    numpy_moved = any(not np.array_equal(x, y) for x, y in zip(before[1], after[1]))
    for name_, moved in (("torch", not torch.equal(before[0], after[0])), ("numpy", numpy_moved),
                         ("Python", before[2] != after[2])):
        if moved:
            _fail(label, f"the task used the global {name_} random generator; draw every random number from "
                         f"the torch.Generator passed to sample() so that seeds reproduce data")
    torch.manual_seed(4321)
    b = sample(batch_size, generator(seed + 1))
    if not _same_batch(a, b):
        _fail(label, "two batches from generators with the same seed differ")
    c = sample(batch_size, generator(seed + 2))
    if _same_batch(a, c):
        _fail(label, "generators with different seeds give identical batches: sample() ignores its generator")
    gen = generator(seed + 1)
    first, second = sample(batch_size, gen), sample(batch_size, gen)
    if not _same_batch(first, a):
        _fail(label, "the first batch of a fresh generator differs from an earlier one with the same seed")
    if _same_batch(first, second):
        _fail(label, "successive batches from one generator are identical: training would see one batch")
    done.append("seeding")

    # -- loss and score on arbitrary outputs --------------------------------------------------------
    outputs = torch.randn(out_shape(batch_size), generator=torch.Generator().manual_seed(6)).to(dev)
    outputs.requires_grad_(True)
    loss = built.loss(outputs, batch)
    score = built.score(outputs, batch)
    for what, value in (("loss", loss), ("score", score)):
        if not (isinstance(value, torch.Tensor) and value.dim() == 0):
            _fail(label, f"{what}(outputs, batch) must return a scalar tensor, got {_shape(value)}")
        if not torch.isfinite(value):
            _fail(label, f"{what}(outputs, batch) is not finite on random outputs: {float(value)}")
    if not 0.0 <= float(score) <= 1.0:
        _fail(label, f"score must lie in [0, 1], got {float(score)}")
    if not loss.requires_grad:
        _fail(label, "the loss does not depend differentiably on the outputs: training cannot use it")
    (grad,) = torch.autograd.grad(loss, outputs)
    if not (torch.isfinite(grad).all() and grad.abs().sum() > 0):
        _fail(label, "the gradient of the loss with respect to the outputs is zero or not finite")
    done.append("loss and score")

    # -- perfect predictions score 1 and beat the memoryless loss --------------------------------
    perfect = _perfect_outputs(batch, out_shape(batch_size))
    perfect_score = float(built.score(perfect, batch))
    perfect_loss = float(built.loss(perfect, batch))
    if perfect_score < 1.0 - 1e-6:
        _fail(label, f"outputs equal to the targets (logits favouring the target class) score "
                     f"{perfect_score}, not 1")
    if memoryless > 0 and not perfect_loss < memoryless:
        _fail(label, f"outputs equal to the targets have loss {perfect_loss}, not below the "
                     f"memoryless loss {memoryless}")
    done.append("perfect predictions")

    # -- memoryless loss, chance score: consistent on a large sample ------------------------------
    chunk = max(1, samples // CHUNKS)
    gen = generator(seed + 3)
    rand_gen = torch.Generator().manual_seed(seed + 4)
    classification = not batch.targets.is_floating_point()
    constants = list(range(out_size)) if classification and out_size <= 64 else []
    stats: dict[str, list[float]] = {"memoryless_loss": [], "memoryless_score": [], "random_loss": [],
                                     "random_score": []}
    stats.update({f"class_{k}": [] for k in constants})
    input_independent, first_part = True, None
    with torch.no_grad():
        for index in range(CHUNKS):
            part = sample(chunk, gen)
            mem = built.memoryless_outputs(part)
            if not isinstance(mem, torch.Tensor) or tuple(mem.shape) != out_shape(chunk):
                _fail(label, f"memoryless_outputs(batch) must have the output shape {out_shape(chunk)}, "
                             f"got {_shape(mem)}")
            if mem.device != dev or not torch.isfinite(mem).all():
                _fail(label, f"memoryless_outputs(batch) must be finite and on {dev}")
            if first_part is None:
                first_part = part
            elif index == 1:  # the same outputs for other inputs: the predictor ignores the inputs
                input_independent = torch.equal(built.memoryless_outputs(first_part), mem)
            stats["memoryless_loss"].append(float(built.loss(mem, part)))
            stats["memoryless_score"].append(float(built.score(mem, part)))
            rand = torch.randn(out_shape(chunk), generator=rand_gen).to(dev)
            stats["random_loss"].append(float(built.loss(rand, part)))
            stats["random_score"].append(float(built.score(rand, part)))
            for k in constants:
                const = torch.zeros(out_shape(chunk), device=dev)
                const[..., k] = 1.0
                stats[f"class_{k}"].append(float(built.score(const, part)))
    mean = {k: float(np.mean(v)) for k, v in stats.items()}
    err = {k: float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0 for k, v in stats.items()}

    def tol(key: str, value: float) -> float:
        return 5 * err[key] + 1e-4 * max(1.0, abs(value)) + 1e-6

    if abs(mean["memoryless_loss"] - memoryless) > tol("memoryless_loss", memoryless):
        _fail(label, f"the loss of memoryless_outputs on {chunk * CHUNKS} sequences is "
                     f"{mean['memoryless_loss']:.6g} ± {err['memoryless_loss']:.2g}, but memoryless_loss "
                     f"says {memoryless:.6g}: one of the two is wrong")
    if mean["random_loss"] < memoryless - tol("random_loss", memoryless):
        _fail(label, f"random input-free outputs reach loss {mean['random_loss']:.6g}, below memoryless_loss "
                     f"{memoryless:.6g}: the memoryless loss is not the best a model without memory achieves")
    blind = [("random outputs", "random_score")] + [(f"always predicting class {k}", f"class_{k}") for k in constants]
    if input_independent:
        blind.append(("memoryless_outputs (which ignore the inputs)", "memoryless_score"))
    slack = 0.005
    for what, key in blind:
        if mean[key] > chance + tol(key, chance) + slack:
            _fail(label, f"{what} score {mean[key]:.4f} ± {err[key]:.2g}, above chance_score {chance:.4f}: "
                         f"chance_score must be the expected score of the best predictor that ignores the inputs")
    done.append("memoryless and chance")
    return done


def _resolve_class(task: Any) -> Any:
    """The object a registered task's lazy target points at (usually the Task subclass)."""
    from harness.registry.loader import get_state

    entry = task if isinstance(task, Entry) else get_state().tasks.get(task)
    return entry.load()


def _same_batch(a: Any, b: Any) -> bool:
    pairs = [(a.inputs, b.inputs), (a.targets, b.targets)]
    if a.mask is not None or b.mask is not None:
        if a.mask is None or b.mask is None:
            return False
        pairs.append((a.mask, b.mask))
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in pairs)


def _check_batch(label: str, task: Any, batch: Any, n: int, seq_len: int, out_size: int,
                 device: torch.device) -> None:
    for attr in ("inputs", "targets", "mask"):
        if not hasattr(batch, attr):
            _fail(label, f"sample() must return a harness.task_api.Batch (inputs, targets, mask), "
                         f"got {type(batch).__name__} without '{attr}'")
    inputs, targets, mask = batch.inputs, batch.targets, batch.mask
    expected = (n, seq_len, task.input_size)
    if not isinstance(inputs, torch.Tensor) or tuple(inputs.shape) != expected:
        _fail(label, f"sample({n}, generator) returned inputs of shape {_shape(inputs)}; expected "
                     f"(batch, sequence_length, input_size) = {expected}")
    if inputs.dtype != torch.float32:
        _fail(label, f"inputs must be float32, got {inputs.dtype}")
    if not torch.isfinite(inputs).all():
        _fail(label, "inputs contain non-finite values")
    sequence = task.readout == "sequence"
    position_shape = (n, seq_len) if sequence else (n,)
    if not isinstance(targets, torch.Tensor):
        _fail(label, f"targets must be a tensor, got {type(targets).__name__}")
    if targets.is_floating_point():
        allowed = [position_shape + (out_size,)] + ([position_shape] if out_size == 1 else [])
        if tuple(targets.shape) not in allowed:
            _fail(label, f"real-valued targets must have shape {' or '.join(map(str, allowed))}, "
                         f"got {_shape(targets)}")
        if targets.dtype != torch.float32 or not torch.isfinite(targets).all():
            _fail(label, f"real-valued targets must be finite float32, got {targets.dtype}")
    else:
        if targets.dtype != torch.long or tuple(targets.shape) != position_shape:
            _fail(label, f"class targets must be int64 of shape {position_shape} (one class index per "
                         f"{'position' if sequence else 'sequence'}), got {targets.dtype} {_shape(targets)}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != position_shape:
            _fail(label, f"mask must be None or a bool tensor of shape {position_shape}, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {_shape(mask)}")
        if not mask.any():
            _fail(label, "the mask marks no position as scored")
    if not targets.is_floating_point():
        scored = targets[mask] if mask is not None else targets
        if scored.numel() and (scored.min() < 0 or scored.max() >= out_size):
            _fail(label, f"class targets at scored positions must lie in [0, output_size) = [0, {out_size}), "
                         f"found {int(scored.min())}..{int(scored.max())}")
    for name, t in (("inputs", inputs), ("targets", targets), ("mask", mask)):
        if t is not None and t.device != device:
            _fail(label, f"{name} are on {t.device}, not on the generator's device {device}")


def _perfect_outputs(batch: Any, shape: Sequence[int]) -> torch.Tensor:
    """Outputs that predict the targets exactly (large logits on the target class for class targets)."""
    targets = batch.targets
    if targets.is_floating_point():
        return targets.reshape(shape).clone()
    logits = torch.nn.functional.one_hot(targets.clamp(min=0), shape[-1]).float() * 30.0
    return logits.reshape(shape)
