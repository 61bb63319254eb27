"""The contract every model follows, and the task head the harness puts on top of it.

A model is a ``torch.nn.Module`` with an integer attribute ``output_size`` (F) whose
``forward(x)`` takes ``x`` of shape ``(batch, length, input_size)`` and returns
``(features, summary)``: per-position features ``(batch, length, F)`` for tasks scored at every
position, and a sequence summary ``(batch, F)`` for tasks scored at the last step. For a
unidirectional model the summary is the last position's features; a bidirectional one combines
the forward direction's final state with the backward direction's final state.

A model is unidirectional (causal) unless it declares ``bidirectional = True``: its features at
positions up to t depend only on the inputs up to t. ``harness.testing.check_model`` verifies it.

Optional attributes, read when present (docs/plugins.md, "Whole-sequence models"):

- ``bidirectional`` (bool): the model reads the sequence in both directions; the causality check
  is skipped for it and reports flag its horizon on tasks it solves by reading backwards.
- ``implementation`` (str): how the model computes (e.g. ``"fused-cpu"``, ``"scan"``), recorded
  per trial.
- ``keep_states`` (bool) and ``states``: the hidden-state protocol of ``harness gradients``. The
  harness sets ``keep_states = True`` on a float64 copy; the next forward pass must leave in
  ``states`` one tensor of leading dimension ``batch`` per time step, h_0 .. h_{T-1}, the very
  tensors from which the later steps are computed (a scan model runs its sequential mode then),
  and compute the same outputs. :func:`kept_states_problem` and :func:`state_gradient_problem`
  say why a model's states break this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harness.errors import PluginError

READOUTS = ("sequence", "last")


class TaskModel(nn.Module):
    """A recurrent model followed by a linear head to the task's output size."""

    def __init__(self, core: nn.Module, output_size: int, readout: str) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.core = core
        self.readout = readout
        size: Any = core.output_size  # a plain int attribute, by the model contract
        self.head = nn.Linear(int(size), output_size)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        result = self.core(inputs)
        size = self.head.in_features
        batch, length = inputs.shape[:2]
        if not (isinstance(result, (tuple, list)) and len(result) == 2
                and tuple(getattr(result[0], "shape", ())) == (batch, length, size)
                and tuple(getattr(result[1], "shape", ())) == (batch, size)):
            raise PluginError(_contract_message(type(self.core).__name__, tuple(inputs.shape), size, result))
        features, summary = result
        return self.head(features if self.readout == "sequence" else summary)


def _contract_message(name: str, shape: tuple[int, ...], size: int, result: object) -> str:
    """One line saying what the model contract expects and what the model returned instead."""
    if isinstance(result, (tuple, list)) and len(result) == 2:
        got = " and ".join(f"{what} {tuple(getattr(t, 'shape', ())) or type(t).__name__}"
                           for what, t in zip(("features", "summary"), result))
    else:
        got = f"{type(result).__name__} {tuple(getattr(result, 'shape', ()))}"
    return (f"model {name} broke the model contract: for inputs of shape {shape} forward() must return "
            f"(features, summary) of shapes {(*shape[:2], size)} and {(shape[0], size)} "
            f"(output_size={size}); got {got}. harness.testing.check_model says more.")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


#: A kept state counts as off the path when its gradient is exactly zero where the input gradient at
#: the same step is above this fraction of the largest input gradient (float64 noise is far below it).
STATE_PATH_FLOOR = 1e-200


def kept_states_problem(states: Any, batch: int, length: int) -> str | None:
    """Why ``states``, as left by a forward pass with ``keep_states`` set on inputs that require
    grad, is not one tensor of leading dimension ``batch`` per time step of a ``length``-step
    sequence, each on the computation graph; None when it is."""
    if not isinstance(states, (list, tuple)) or not all(isinstance(s, torch.Tensor) for s in states):
        return (f"with keep_states = True a forward pass must leave a list of tensors in states, "
                f"got {type(states).__name__}")
    if not all(s.requires_grad for s in states):
        return ("the kept states do not require grad, so they are not on the computation graph of the outputs "
                "(computed under torch.no_grad() or detached?)")
    if len(states) != length:
        return (f"with keep_states = True a forward pass must leave one state per step in states: {length} steps, "
                f"got {len(states)} states")
    shapes = {tuple(s.shape[:1]) for s in states}
    if shapes != {(batch,)}:
        return (f"every kept state must have the batch size {batch} as its first dimension, got first "
                f"dimensions {sorted(shapes)}")
    return None


def state_gradient_problem(input_norms: torch.Tensor, state_norms: Sequence[torch.Tensor | None],
                           last: int) -> str | None:
    """Why the kept states are not the states through which the steps up to ``last`` are computed,
    judged from one backward pass of a loss read at ``last`` and later; None when they are.

    ``input_norms[t]`` is ‖∂L/∂x_t‖ and ``state_norms[t]`` ‖∂L/∂h_t‖, None where autograd found no
    path from h_t to the loss. If later steps are computed from h_t, any input x_t that reaches the
    loss reaches it through h_t, so ‖∂L/∂h_t‖ is not zero where ‖∂L/∂x_t‖ is not. A scan whose
    states are a copy of its outputs fails: h_t reaches the loss only where it is read, if at all.
    """
    missing = [t for t in range(last + 1) if state_norms[t] is None]
    if missing:
        return (f"no gradient of the loss reaches {len(missing)} of the {last + 1} kept states up to step "
                f"{last} (e.g. h_{missing[0]}), so the later steps are not computed from them: with "
                f"keep_states set, keep the tensors the next steps are computed from (a scan model: run its "
                f"sequential mode)")
    floor = STATE_PATH_FLOOR * float(input_norms[: last + 1].max())
    cut = [t for t in range(last + 1) if float(input_norms[t]) > floor and not float(state_norms[t]) > 0]  # type: ignore[arg-type]
    if cut:
        return (f"‖∂L/∂h_t‖ is 0 at {len(cut)} of the {last + 1} kept states up to step {last} (e.g. "
                f"t = {cut[0]}) although the input at t reaches the loss, so the later steps are not computed "
                f"from them: with keep_states set, keep the tensors the next steps are computed from (a scan "
                f"model: run its sequential mode)")
    return None
