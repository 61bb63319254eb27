"""The contract every model follows, and the task head the harness puts on top of it.

A model is a ``torch.nn.Module`` with an integer attribute ``output_size`` (F) whose
``forward(x)`` takes ``x`` of shape ``(batch, length, input_size)`` and returns
``(features, summary)``: per-position features ``(batch, length, F)`` for tasks scored at every
position, and a sequence summary ``(batch, F)`` for tasks scored at the last step. For a
unidirectional model the summary is the last position's features; a bidirectional one combines
the forward direction's final state with the backward direction's final state.
"""

from __future__ import annotations

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
