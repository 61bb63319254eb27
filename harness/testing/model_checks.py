"""The model contract checks (``harness.model_api``): one function per check, run by :func:`check_model`.

The checks of a model's shapes, gradients, determinism and devices are here; those that matter
most for whole-sequence models have modules of their own (``causality``, ``precision``,
``states``). Every check takes a :class:`ModelContext` (``_model_context``), which holds the
factory and the sizes and builds the models the checks share on first use. A check needs no
other check to have run: whatever it cannot do without (a model that builds, with a positive
integer ``output_size``) it gets from the context, which asserts exactly that, with the message
the "build" check would give.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import torch
from torch import nn

from harness.model_api import READOUTS, TaskModel
from harness.testing._common import (
    ATOL,
    CheckNotRun,
    CheckReport,
    as_names,
    fail,
    resolve,
    restoring_global_rng,
    run_checks,
    single_threaded,
    unknown_check,
)
from harness.testing._model_context import ModelContext
from harness.testing.causality import check_causality
from harness.testing.precision import check_float64, check_long_length
from harness.testing.states import check_hidden_states

__all__ = ["DEFAULT_DEVICE", "MODEL_CHECKS", "ModelContext", "check_model", "run_model_checks", "select_model_checks"]

# --------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------

def check_build(ctx: ModelContext) -> None:
    """build: the factory returns an ``nn.Module`` with a positive integer ``output_size`` (the
    head's input size) and trainable float32 parameters (the harness trains in float32)."""
    model = ctx.model
    if not [p for p in model.parameters() if p.requires_grad]:
        fail(ctx.label, "the model has no trainable parameters (register weights as nn.Parameter or submodules)")
    wrong_dtype = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if wrong_dtype:
        fail(ctx.label, f"parameters must be float32 (the model contract, see docs/plugins.md), "
                        f"found {', '.join(wrong_dtype)}")


def check_shapes(ctx: ModelContext) -> None:
    """shapes: ``(features, summary)`` have the contract's shapes, the inputs' dtype and device, and
    finite values, for several batch sizes and lengths (1 included: the edge cases of reshapes)."""
    for batch, steps in ((ctx.batch_size, ctx.length), (1, 1), (1, ctx.length), (ctx.batch_size, 1)):
        features, summary = ctx.forward(ctx.model, ctx.inputs(batch, steps), f"batch {batch}, length {steps}")
        if not (torch.isfinite(features).all() and torch.isfinite(summary).all()):
            fail(ctx.label, f"non-finite features or summary at initialisation (batch {batch}, length {steps})")


def check_batch_independence(ctx: ModelContext) -> None:
    """batch independence: a sequence gives the same outputs alone as in a batch, and eval-mode
    forward passes repeat. A time-major / batch_first mix-up has the right shapes; only this sees it."""
    core, label, batch_size = ctx.model, ctx.label, ctx.batch_size
    core.eval()
    try:
        with torch.no_grad():
            x = ctx.inputs(batch_size, ctx.length)
            features, summary = ctx.forward(core, x, "eval mode")
            again_f, again_s = ctx.forward(core, x, "eval mode, second call")
            if not (torch.equal(features, again_f) and torch.equal(summary, again_s)):
                fail(label, "two forward passes on the same inputs in eval mode differ: forward must be "
                            "deterministic (no randomness outside training mode)")
            for row in (0, batch_size - 1):
                alone_f, alone_s = ctx.forward(core, x[row:row + 1], f"sequence {row} alone")
                if not (torch.allclose(alone_f[0], features[row], atol=ATOL, rtol=0)
                        and torch.allclose(alone_s[0], summary[row], atol=ATOL, rtol=0)):
                    fail(label, f"sequence {row} gives different features alone than in a batch of "
                                f"{batch_size}: the sequences of a batch are mixed (is the time axis dim 1? "
                                f"torch.nn recurrent modules need batch_first=True)")
    finally:
        core.train()


def check_gradients(ctx: ModelContext) -> None:
    """gradients: through the harness's task head, for both readouts, the outputs depend on the
    time steps they must, and every parameter gets a finite, non-zero gradient (else it never trains)."""
    _ = ctx.model  # what every check needs, failing with the build check's messages
    for readout in READOUTS:
        core = ctx.build(ctx.seed)
        torch.manual_seed(ctx.seed + 101)  # the head's initialisation
        task_model = TaskModel(core, output_size=3, readout=readout)
        x = ctx.inputs(ctx.batch_size, ctx.length).requires_grad_(True)
        try:
            outputs = task_model(x)
        except Exception as exc:
            raise AssertionError(f"{ctx.label}: forward through the task head (readout '{readout}') raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        weights = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(2))
        (outputs * weights).sum().backward()
        _check_time_steps_reached(ctx, x, readout)
        _check_parameters_reached(ctx, task_model, readout)


def _check_time_steps_reached(ctx: ModelContext, x: torch.Tensor, readout: str) -> None:
    """The summary depends on the first and last step; the features depend on every step."""
    grad = x.grad
    if grad is None:
        fail(ctx.label, f"the outputs do not depend differentiably on the inputs (readout '{readout}')")
        return
    step_grads = grad.abs().sum(dim=(0, 2))
    if readout == "last":
        for step, where in ((0, "first"), (ctx.length - 1, "last")):
            if not step_grads[step] > 0:
                fail(ctx.label, f"the summary does not depend on the {where} time step: it must sum up the "
                                f"whole sequence (for a unidirectional model, the last position's features)")
    elif not (step_grads > 0).all():
        missing = [int(i) for i in torch.nonzero(step_grads == 0).flatten()]
        fail(ctx.label, f"the features do not depend on the inputs at time step(s) {missing}")


def _check_parameters_reached(ctx: ModelContext, task_model: nn.Module, readout: str) -> None:
    """Every trainable parameter has a finite, non-zero gradient."""
    for name, param in task_model.named_parameters():
        if not param.requires_grad:
            continue
        grad = param.grad
        if grad is None:
            fail(ctx.label, f"no gradient reaches parameter '{name}' (readout '{readout}'): it does not "
                            f"take part in the forward pass")
            return
        if not torch.isfinite(grad).all():
            fail(ctx.label, f"non-finite gradient for parameter '{name}' (readout '{readout}')")
        if not grad.abs().sum() > 0:
            fail(ctx.label, f"the gradient of parameter '{name}' is zero (readout '{readout}')")


def check_determinism(ctx: ModelContext) -> None:
    """determinism: the seed fixes the initialisation (so a trial can be rerun), a different seed
    changes it, and the ``state_dict`` holds everything that affects the outputs (so it is saved)."""
    _ = ctx.model  # what every check needs, failing with the build check's messages
    label, seed = ctx.label, ctx.seed
    first, second, other = ctx.build(seed), ctx.build(seed), ctx.build(seed + 1)
    sd_first, sd_second = first.state_dict(), second.state_dict()
    if sd_first.keys() != sd_second.keys():
        fail(label, "two builds under the same seed have different state_dict keys")
    differing = [k for k in sd_first if not torch.equal(sd_first[k], sd_second[k])]
    if differing:
        fail(label, f"two builds under the same seed differ in {', '.join(differing)}: initialisation "
                    f"must use only the global torch/numpy/random generators that the harness seeds")
    x = ctx.inputs(ctx.batch_size, ctx.length)
    for module in (first, second, other):
        module.eval()
    with torch.no_grad():
        out_first = ctx.forward(first, x, "first build")
        out_second = ctx.forward(second, x, "second build")
        if not all(torch.equal(a, b) for a, b in zip(out_first, out_second)):
            fail(label, "two builds under the same seed give different outputs on the same inputs")
        if all(torch.equal(sd_first[k], v) for k, v in other.state_dict().items()):
            fail(label, f"builds under seeds {seed} and {seed + 1} have identical parameters: "
                        f"the initialisation ignores the seed")
        try:
            other.load_state_dict(sd_first)
        except Exception as exc:
            raise AssertionError(f"{label}: load_state_dict of a same-sized model raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        out_loaded = ctx.forward(other, x, "after load_state_dict")
        if not all(torch.allclose(a, b, atol=ATOL, rtol=0) for a, b in zip(out_first, out_loaded)):
            fail(label, "a model given another model's state_dict computes different outputs: some "
                        "tensor that affects the output is neither a parameter nor a buffer (a plain "
                        "tensor attribute or a Python list of tensors?), so it is neither trained nor saved")


def check_hidden_size(ctx: ModelContext) -> None:
    """hidden_size: a larger ``hidden_size`` gives more parameters, or sweeps over it compare one model."""
    bigger = ctx.build(ctx.seed, ctx.hidden_size + 2)
    if sum(p.numel() for p in bigger.parameters()) == sum(p.numel() for p in ctx.model.parameters()):
        fail(ctx.label, f"hidden_size={ctx.hidden_size} and hidden_size={ctx.hidden_size + 2} give the same "
                        f"number of parameters: the factory ignores hidden_size")


def check_meta_device(ctx: ModelContext) -> None:
    """device:meta: after ``.to("meta")`` the forward pass does not mix devices. The meta device is
    a CPU-only stand-in for a GPU that catches tensors created on a fixed device."""
    module, _ = ctx.reference
    meta = copy.deepcopy(module).to("meta")
    x = ctx.inputs(ctx.batch_size, ctx.length)
    try:
        with torch.no_grad():
            meta_out = meta(x.to("meta"))
    except Exception as exc:
        if not isinstance(exc, NotImplementedError) and "device" in str(exc).lower():
            raise AssertionError(
                f"{ctx.label}: after .to(device) the forward pass mixes devices ({type(exc).__name__}: {exc}); "
                f"create new tensors on the inputs' device, e.g. inputs.new_zeros(...) or "
                f"torch.zeros(..., device=inputs.device)") from exc
        raise CheckNotRun(f"some operation of {ctx.label} has no meta kernel "
                          f"({type(exc).__name__}: {exc})") from exc
    if not (isinstance(meta_out, (tuple, list)) and len(meta_out) == 2
            and all(t.device.type == "meta" for t in meta_out)):
        fail(ctx.label, "after .to(device) the outputs are not on that device")


def check_device(ctx: ModelContext, target: str) -> None:
    """device:<dev>: on ``target`` (CUDA by default) the outputs match the CPU's within 1e-4.

    Skipped on the CPU (the reference is computed there) and where ``target`` is not available,
    unless it is the ``device`` passed to :func:`check_model`: a device asked for must work.
    """
    if torch.device(target).type == "cpu":
        raise CheckNotRun("the reference outputs are computed on the CPU")
    if target != ctx.device and not _available(target):
        raise CheckNotRun(f"device {target!r} is not available")
    module, reference = ctx.reference
    x = ctx.inputs(ctx.batch_size, ctx.length)
    on_device = copy.deepcopy(module).to(target)
    with torch.no_grad(), _full_float32():
        dev_out = ctx.forward(on_device, x.to(target), f"on {target}")
    if not all(torch.allclose(a, b.cpu(), atol=1e-4, rtol=0) for a, b in zip(reference, dev_out)):
        fail(ctx.label, f"outputs on {target} differ from the CPU outputs by more than 1e-4")


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """No TF32 in CUDA matmuls and cuDNN kernels for the duration.

    cuDNN uses TF32 by default on Ampere and later GPUs; it keeps 10 mantissa bits, so every
    torch.nn recurrent module differs from the CPU by more than the 1e-4 the device check allows.
    The check asks whether the model computes the same function there, not at which precision.
    """
    flags: tuple[Any, ...] = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = [flag.allow_tf32 for flag in flags]
    try:
        for flag in flags:
            flag.allow_tf32 = False
        yield
    finally:
        for flag, value in zip(flags, saved):
            flag.allow_tf32 = value


def _available(target: str) -> bool:
    """Whether torch can put a tensor on ``target``."""
    try:
        torch.empty(0, device=target)
    except Exception:  # noqa: BLE001 -- torch raises RuntimeError, AssertionError, ... for a missing device
        return False
    return True


# --------------------------------------------------------------------------------------------
# selecting and running
# --------------------------------------------------------------------------------------------

_FIXED: dict[str, Callable[[ModelContext], None]] = {
    "build": check_build,
    "shapes": check_shapes,
    "batch independence": check_batch_independence,
    "gradients": check_gradients,
    "causality": check_causality,
    "hidden states": check_hidden_states,
    "determinism": check_determinism,
    "hidden_size": check_hidden_size,
    "dtype:float64": check_float64,
    "long length": check_long_length,
    "device:meta": check_meta_device,
}
DEFAULT_DEVICE = "cuda"

MODEL_CHECKS: tuple[str, ...] = (*_FIXED, f"device:{DEFAULT_DEVICE}")
"""The model checks in the order they run. ``"device:cuda"`` stands for ``"device:<dev>"``: any
``"device:<dev>"`` with a torch device ``<dev>`` may be selected."""

DESCRIBED_MODEL_CHECKS: tuple[str, ...] = (*_FIXED, "device:<dev> (e.g. device:cuda)")
"""The model check names as error messages list them."""


def _device_target(name: str) -> str | None:
    """``<dev>`` for a check name ``"device:<dev>"`` naming a torch device other than meta, else None."""
    prefix, _, target = name.partition(":")
    if prefix != "device" or not target or target == "meta":
        return None
    try:
        torch.device(target)
    except (RuntimeError, ValueError, TypeError):
        return None
    return target


def _lookup(name: str) -> Callable[[ModelContext], None]:
    if name in _FIXED:
        return _FIXED[name]
    target = _device_target(name)
    assert target is not None, name
    return partial(check_device, target=target)


def select_model_checks(checks: str | Iterable[str] | None, device: str | None = None) -> list[str]:
    """The check names to run, in the canonical order, for a ``checks=`` argument (None: all).

    Raises ValueError for a name that is no model check.
    """
    if checks is None:
        return [*_FIXED, f"device:{device or DEFAULT_DEVICE}"]
    names = as_names(checks)
    for name in names:
        if not isinstance(name, str) or (name not in _FIXED and _device_target(name) is None):
            raise unknown_check("model", name, DESCRIBED_MODEL_CHECKS)
    devices = [n for n in dict.fromkeys(names) if n not in _FIXED]
    return [n for n in _FIXED if n in names] + devices


@restoring_global_rng
@single_threaded
def run_model_checks(model: Any, input_size: int = 3, hidden_size: int = 8, *,
                     options: dict[str, Any] | None = None, device: str | None = None,
                     batch_size: int = 4, length: int = 7, long_length: int = 1000, seed: int = 0,
                     checks: str | Iterable[str] | None = None) -> CheckReport:
    """:func:`check_model`, returning the checks that ran and the reasons the others did not."""
    names = select_model_checks(checks, device)
    factory, label, _ = resolve(model, "model")
    ctx = ModelContext(factory=factory, label=label, input_size=input_size, hidden_size=hidden_size,
                       options=dict(options or {}), device=device, batch_size=batch_size, length=length,
                       seed=seed, long_length=long_length)
    return run_checks(ctx, names, _lookup)


def check_model(model: Any, input_size: int = 3, hidden_size: int = 8, *,
                options: dict[str, Any] | None = None, device: str | None = None,
                batch_size: int = 4, length: int = 7, long_length: int = 1000, seed: int = 0,
                checks: str | Iterable[str] | None = None) -> list[str]:
    """Check that a model factory follows the model contract of ``harness.model_api``.

    ``model`` is a registered model name, a registry :class:`~harness.registry.Entry` or a
    factory called as ``factory(input_size=..., hidden_size=..., **options)``. The model is
    checked on the CPU; for causality (unless it declares ``bidirectional = True``); on the
    ``meta`` device (a CPU-only stand-in for a GPU that catches tensors created on a fixed
    device); in float64, at ``length`` and, against float32 with gradients, at ``long_length``;
    and on ``device`` when given, else on CUDA when it is available. ``checks`` selects checks
    by name (see :data:`MODEL_CHECKS`; None runs them all); a selected check runs alone, building
    only the model it needs. Raises AssertionError naming the model, what was expected and what
    was found; ValueError for an unknown check name. Returns the names of the checks that ran.
    """
    return run_model_checks(model, input_size, hidden_size, options=options, device=device, batch_size=batch_size,
                            length=length, long_length=long_length, seed=seed, checks=checks).ran
