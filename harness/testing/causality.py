"""The causality check: a unidirectional model's features up to position t do not change when only
the inputs after t do, and its summary is its last position's features.

A model that sees the future "remembers" at every length, the worst possible bug for a memory
benchmark, and nothing else catches it: an FFT convolution without zero padding (circular) or a
recurrence run over the reversed sequence has the right shapes and trains well. The check
compares two float64 forward passes on inputs that differ only after t, for several t, so that
any difference above rounding noise is a dependence on the future.
"""

from __future__ import annotations

import copy

import torch

from harness.testing._common import CheckNotRun, fail
from harness.testing._model_context import ModelContext

#: Rounding noise allowed between two float64 passes, relative to the largest feature: far above
#: float64's 1e-16 (an FFT mixes every position's rounding into every output), far below any leak.
CAUSAL_RTOL = 1e-9
MIN_STEPS = 5  # enough positions for a start, a middle and an end
#: A second, longer length: some leaks appear only there (an FFT padded by a fixed amount, not to
#: twice the length, is causal at 7 steps and circular beyond).
LONG_STEPS = 64


def declares_bidirectional(model: torch.nn.Module) -> bool:
    """Whether the model declares that it reads the sequence in both directions (``bidirectional = True``)."""
    return bool(getattr(model, "bidirectional", False))


def check_causality(ctx: ModelContext) -> None:
    """causality: for a unidirectional model, in float64 and eval mode, at the checks' length and at
    :data:`LONG_STEPS`, the features at positions ≤ t are unchanged when only the inputs after t
    change (t at the start, middle and end), and the summary equals the last position's features.
    Skipped for a model that declares ``bidirectional = True``."""
    if declares_bidirectional(ctx.model):
        raise CheckNotRun("the model declares bidirectional = True: its features may depend on later inputs")
    module = copy.deepcopy(ctx.reference[0]).double().eval()
    generator = torch.Generator().manual_seed(3)
    for steps in sorted({max(ctx.length, MIN_STEPS), LONG_STEPS}):
        x = torch.randn(ctx.batch_size, steps, ctx.input_size, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            features, summary = ctx.forward_float64(module, x, f"causality, length {steps}, float64")
            tolerance = CAUSAL_RTOL * max(1.0, float(features.abs().max()))
            for t in sorted({0, steps // 2, steps - 2}):
                _check_prefix(ctx, module, x, features, t, tolerance, generator)
        gap = float((summary - features[:, -1]).abs().max())
        if not gap <= tolerance:
            fail(ctx.label, f"causality: the summary differs from the last position's features by {gap:.3g} "
                            f"(length {steps}, float64); a unidirectional model's summary must be its features at "
                            f"the last position, which have seen the whole sequence and nothing beyond it. A "
                            f"bidirectional model must declare bidirectional = True")


def _check_prefix(ctx: ModelContext, module: torch.nn.Module, x: torch.Tensor, features: torch.Tensor, t: int,
                  tolerance: float, generator: torch.Generator) -> None:
    """The features at positions 0..t do not move when the inputs after t are drawn again."""
    changed = x.clone()
    changed[:, t + 1:] = torch.randn(changed[:, t + 1:].shape, generator=generator, dtype=torch.float64)
    later, _ = ctx.forward_float64(module, changed, f"causality, inputs changed after position {t}")
    moved = float((later[:, :t + 1] - features[:, :t + 1]).abs().max())
    if not moved <= tolerance:
        fail(ctx.label, f"causality: the features at positions 0..{t} changed by {moved:.3g} (allowed "
                        f"{tolerance:.3g}) when only the inputs after position {t} changed (length "
                        f"{x.shape[1]}, batch {x.shape[0]}, float64): the model sees the future. A "
                        f"unidirectional model's features up to t may depend only on the inputs up to t "
                        f"(an FFT convolution needs zero padding to twice the length, else it is "
                        f"circular; a recurrence must run forwards). A bidirectional model must declare "
                        f"bidirectional = True")
