"""Gradient flow: how strongly the loss at the scored position depends on inputs d steps earlier.

For a batch of the task's own sequences (a seed stream of its own), we compute the loss at the
scored position(s), backpropagate it, and record ‖∂L/∂x_t‖ (the norm over input features, for the
loss of one sequence, averaged over the batch) against the distance d = τ − t from the scored
position τ (the last step for tasks read at the end; for tasks scored at several positions, the
first of them, so that every earlier input reaches every scored output through at least d steps).
For a linear recurrence h_t = a h_{t−1} + x_t this is |a|^d times its value
at d = 0, so the slope of log-norm against d, the *decay rate*, is log|a| per step.

The measurement runs on a float64 copy of the model, so that norms far below float32's range
(1e-38) are still exact; the model being trained is not touched. A model with a ``keep_states``
attribute (:class:`harness.cells.CellLoop`, or a scan model running its sequential mode) exposes
its hidden states, so ‖∂L/∂h_t‖ is recorded too, after checking that they are the states later
steps are computed from (``harness.model_api``); a model whose states are not is refused with one
line saying why, never recorded as zeros. A model without ``keep_states`` gets no state column.
For a bidirectional model the input gradient sums both directions: the backward direction reads
early inputs at distance 0 from its final state, so its curve does not fall with d (docs/gradients.md).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from harness.analysis.decay import decay_rate
from harness.errors import HarnessError
from harness.model_api import TaskModel, kept_states_problem, state_gradient_problem
from harness.runs.seeding import GRADIENT_DATA, derive_seed
from harness.task_api import Batch, Task

GRADIENT_BATCH = 256
STATS_BATCH = 64


def gradient_batch(task: Task, seed: int, device: torch.device, size: int) -> Batch:
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, GRADIENT_DATA))
    return task.sample(size, generator)


def scored_position(task: Task, batch: Batch) -> int:
    """τ: the last step for tasks read at the end, else the first position any sequence is scored at."""
    if task.readout == "last" or batch.mask is None:
        return batch.inputs.shape[1] - 1
    return int(torch.nonzero(batch.mask.any(0)).min())


def input_gradients(model: TaskModel, task: Task, batch: Batch,
                    with_states: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per position, the batch mean of ‖∂L_b/∂x_t‖ (and of ‖∂L_b/∂h_t‖ when ``with_states`` and the
    model keeps its states), in float64, with L_b the loss of one sequence at its scored positions.

    Raises HarnessError when the model keeps states that are not the ones its later steps are
    computed from (their gradients would be recorded as zeros)."""
    measured = copy.deepcopy(model).double().eval()
    core: Any = measured.core  # any model; CellLoop-like ones expose keep_states/states
    keeps = with_states and hasattr(core, "keep_states")
    if keeps:
        core.keep_states = True
    targets = batch.targets.double() if batch.targets.is_floating_point() else batch.targets
    double_batch = Batch(batch.inputs.double().requires_grad_(True), targets, batch.mask)
    # cuDNN's recurrent kernels have no backward in eval mode; the native ones do (same equations)
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        outputs = measured(double_batch.inputs)
        states: Any = getattr(core, "states", None) if keeps else []
        if keeps:
            core.keep_states, core.states = False, None
            problem = kept_states_problem(states, len(batch), batch.inputs.shape[1])
            if problem:
                raise HarnessError(problem)
        loss = task.loss(outputs, double_batch) * len(batch)  # per-sequence losses, summed
        (grad_outputs,) = torch.autograd.grad(loss, outputs, retain_graph=True)
        if batch.mask is not None and task.readout == "sequence":
            grad_outputs = grad_outputs * batch.mask.unsqueeze(-1).to(grad_outputs.dtype)
        wrt = [double_batch.inputs, *states]
        grads = torch.autograd.grad(outputs, wrt, grad_outputs=grad_outputs, allow_unused=True)
    input_norms = grads[0].norm(dim=-1).mean(0).detach()
    if not keeps:
        return input_norms, None
    # a state may have more than one axis per sequence (e.g. channels by state size): its norm is over all of them
    state_norms = [g.flatten(1).norm(dim=1).mean().detach() if g is not None else None for g in grads[1:]]
    problem = state_gradient_problem(input_norms, state_norms, scored_position(task, batch))
    if problem:
        raise HarnessError(problem)
    return input_norms, torch.stack([g if g is not None else input_norms.new_zeros(()) for g in state_norms])


def measure_gradients(model: TaskModel, task: Task, spec: Any, device: torch.device, step: int) -> list[dict[str, Any]]:
    """``gradients.csv`` rows of one trial at one training step: one per distance 0..τ."""
    batch = gradient_batch(task, spec.seed, device, GRADIENT_BATCH)
    tau = scored_position(task, batch)
    try:
        norms, states = input_gradients(model, task, batch)
    except HarnessError as exc:
        raise HarnessError(f"cannot measure ‖∂L/∂h_t‖ for model '{spec.model}': {exc}") from None
    reference = float(norms[tau])
    rows = []
    for distance in range(tau + 1):
        t = tau - distance
        value = float(norms[t])
        rows.append({"model": spec.model, "task": spec.task, "length": spec.length, "seed": spec.seed,
                     "config_id": spec.config_id, "step": step, "distance": distance, "grad_norm": value,
                     "rel_norm": value / reference if reference > 0 else math.nan,
                     "state_grad_norm": float(states[t]) if states is not None else None,
                     "direction": "both" if getattr(model.core, "bidirectional", False) else "forward"})
    return rows


def gradient_stats(model: TaskModel, task: Task, spec: Any, device: torch.device) -> dict[str, float]:
    """The ``curves.csv`` columns of ``--grad-stats``: the norm at the largest distance over the
    norm at distance 1, and the decay rate (on a smaller batch than ``harness gradients``)."""
    batch = gradient_batch(task, spec.seed, device, STATS_BATCH)
    tau = scored_position(task, batch)
    norms, _ = input_gradients(model, task, batch, with_states=False)
    by_distance = [float(norms[tau - d]) for d in range(tau + 1)]
    reference = by_distance[0] if by_distance[0] > 0 else math.nan
    rel = [v / reference for v in by_distance]
    ratio = by_distance[-1] / by_distance[1] if len(by_distance) > 1 and by_distance[1] > 0 else math.nan
    return {"grad_ratio": ratio, "grad_decay": decay_rate(list(range(len(rel))), rel)}
