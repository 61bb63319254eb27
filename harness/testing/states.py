"""The hidden-states check: a model with a ``keep_states`` attribute follows the protocol that
``harness gradients`` measures ‖∂L/∂h_t‖ with (``harness.model_api``).

With ``keep_states = True`` a forward pass must compute the same outputs and leave in ``states``
one tensor per time step, the very tensors from which the later steps are computed. A scan model
that copies its outputs into ``states`` would have its hidden-state gradients recorded as zeros at
every distance; this check rejects it before any run, with the reason the measurement would give.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from harness.model_api import kept_states_problem, state_gradient_problem
from harness.testing._common import fail
from harness.testing._model_context import ModelContext

SAME_OUTPUTS_RTOL = 1e-9  # float64: the sequential mode computes the scan's function


def check_hidden_states(ctx: ModelContext) -> None:
    """hidden states: for a model with ``keep_states``, in float64, the outputs do not change with
    ``keep_states = True``, ``states`` holds one state per step, and a loss on the summary reaches
    every state on the path the later steps are computed through. A model without ``keep_states``
    passes: it promises nothing, and ``harness gradients`` records no hidden-state gradients for it."""
    if not hasattr(ctx.model, "keep_states"):
        return
    module: Any = copy.deepcopy(ctx.reference[0]).double().eval()
    steps = ctx.length
    x = ctx.inputs(ctx.batch_size, steps).double().requires_grad_(True)
    with torch.no_grad():
        plain = ctx.forward_float64(module, x, "float64, keep_states = False")
    module.keep_states = True
    try:
        features, summary = ctx.forward_float64(module, x, "float64, keep_states = True")
        states: Any = getattr(module, "states", None)
    finally:
        module.keep_states = False
    problem = kept_states_problem(states, ctx.batch_size, steps)
    if problem:
        fail(ctx.label, f"hidden states: {problem}")
    scale = max(1.0, float(plain[0].abs().max()))
    gap = max(float((a - b).abs().max()) for a, b in zip(plain, (features.detach(), summary.detach())))
    if not gap <= SAME_OUTPUTS_RTOL * scale:
        fail(ctx.label, f"hidden states: with keep_states = True the outputs differ by {gap:.3g} from those without "
                        f"(float64): keeping the states must not change what the model computes")
    weights = torch.randn(summary.shape, generator=torch.Generator().manual_seed(5), dtype=summary.dtype)
    grads = torch.autograd.grad((summary * weights).sum(), [x, *states], allow_unused=True)
    input_norms = grads[0].norm(dim=-1).mean(0) if grads[0] is not None else torch.zeros(steps, dtype=x.dtype)
    state_norms = [g.norm() if g is not None else None for g in grads[1:]]
    problem = state_gradient_problem(input_norms, state_norms, steps - 1)
    if problem:
        fail(ctx.label, f"hidden states: {problem}")
