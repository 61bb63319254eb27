"""The precision checks: a model computes in float64 after ``.double()``, and in float32 it stays
close to float64 at a long length, outputs and parameter gradients alike.

A float32 recurrence accumulates rounding error with the length; for the classic cells it stays
near float32's resolution (measured below), but some parallel scans lose precision fast: a
log-space scan takes differences of cumulative sums that grow with the length, and its float32
gradients were 0.12 relative off float64 at T = 1000 (0.0015 at T = 200) in a plugin that passed
every check at length 7. The harness trains in float32, so such a model trains on wrong
gradients at exactly the lengths a memory benchmark is about.

``python -m harness.testing.float32_report MODEL ...`` prints the errors the long-length check measures.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from harness.testing._common import fail
from harness.testing._model_context import ModelContext

SHORT_ATOL = 1e-4  # float64 against float32 at the checks' short length
LONG_BATCH = 2
#: Bounds of the long-length check, relative: the largest output difference over the largest
#: output, and for the worst parameter ‖g32 − g64‖ / ‖g64‖. At T = 1000 the built-in cells measure
#: at most 2.3e-7 and 9e-7 at their default initialisations, and 6.5e-6 and 7.1e-6 (the GRU with
#: init=chrono) at most (docs/plugins.md gives the command and the numbers): margins of 15x and
#: 140x, while the gradient bound still rejects 0.0015, the log-space scan's error at T = 200.
OUTPUT_RTOL = 1e-4
GRADIENT_RTOL = 1e-3


@dataclass
class Float32Errors:
    """How far a model's float32 outputs and parameter gradients are from float64 on one input."""

    length: int
    batch: int
    output_error: float  # max |out32 − out64| / max |out64|, over features and summary
    gradient_error: float  # ‖g32 − g64‖ / ‖g64‖ of the worst parameter
    parameter: str  # that parameter's name


def float32_errors(module: nn.Module, input_size: int, length: int, batch: int = LONG_BATCH) -> Float32Errors:
    """Run float32 and float64 copies of ``module`` (eval mode) on the same random inputs and a loss
    weighting every feature and the summary at random, and compare outputs and parameter gradients."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(batch, length, input_size, generator=generator, dtype=torch.float64)
    runs: list[tuple[list[torch.Tensor], dict[str, torch.Tensor]]] = []
    for dtype in (torch.float32, torch.float64):
        copied = copy.deepcopy(module).to(dtype).eval()
        names, params = zip(*[(n, p) for n, p in copied.named_parameters() if p.requires_grad])
        with torch.enable_grad():
            features, summary = copied(x.to(dtype))
            if not runs:  # the same weights for both runs, drawn once the feature size is known
                weights = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in (features, summary)]
            loss = sum((t * w.to(dtype)).sum() for t, w in zip((features, summary), weights))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        runs.append(([features.detach().double(), summary.detach().double()],
                     {n: g.double() for n, g in zip(names, grads) if g is not None}))
    (out32, grad32), (out64, grad64) = runs
    scale = max(float(t.abs().max()) for t in out64) or 1.0
    output_error = max(float((a - b).abs().max()) for a, b in zip(out32, out64)) / scale
    relative = {n: float((grad32[n] - g).norm() / g.norm()) for n, g in grad64.items() if n in grad32 and g.norm() > 0}
    worst = max(relative, key=relative.__getitem__, default="")
    return Float32Errors(length, batch, output_error, relative.get(worst, 0.0), worst)


def check_float64(ctx: ModelContext) -> None:
    """dtype:float64: after ``.double()`` the model computes in float64 and agrees with float32 at
    the checks' length, which catches new tensors created with a fixed dtype."""
    module, reference = ctx.reference
    x = ctx.inputs(ctx.batch_size, ctx.length)
    moved = copy.deepcopy(module).double()
    with torch.no_grad():
        f64 = ctx.forward_float64(moved, x.double(), "after .double()")
    error = max(float((a.double() - b).abs().max()) for a, b in zip(reference, f64))
    if not error <= SHORT_ATOL:
        fail(ctx.label, f"after .double() the outputs differ from float32 by {error:.3g}, more than {SHORT_ATOL:g} "
                        f"(length T={ctx.length}, batch {ctx.batch_size}, input_size {ctx.input_size}, "
                        f"hidden_size {ctx.hidden_size}): does the model compute the same function in float64?")


def check_long_length(ctx: ModelContext) -> None:
    """long length: at ``long_length`` steps (1000 by default; batch 2) float32 outputs and parameter
    gradients agree with float64 within :data:`OUTPUT_RTOL` and :data:`GRADIENT_RTOL` (relative)."""
    module, _ = ctx.reference
    sizes = (f"length T={ctx.long_length}, batch {LONG_BATCH}, input_size {ctx.input_size}, "
             f"hidden_size {ctx.hidden_size}")
    try:
        errors = float32_errors(module, ctx.input_size, ctx.long_length)
    except Exception as exc:
        raise AssertionError(f"{ctx.label}: forward and backward at {sizes} raised "
                             f"{type(exc).__name__}: {exc}") from exc
    if not errors.output_error <= OUTPUT_RTOL:
        fail(ctx.label, f"at {sizes} the float32 outputs differ from float64 by {errors.output_error:.3g} relative "
                        f"(allowed {OUTPUT_RTOL:g}): float32 rounding error grows with the length")
    if not errors.gradient_error <= GRADIENT_RTOL:
        fail(ctx.label, f"at {sizes} the float32 gradient of parameter '{errors.parameter}' differs from float64 "
                        f"by {errors.gradient_error:.3g} relative (allowed {GRADIENT_RTOL:g}): float32 rounding "
                        f"error grows with the length, and training would follow wrong gradients (a log-space "
                        f"scan's cumulative sums lose precision: scan in chunks, or accumulate in float64)")
