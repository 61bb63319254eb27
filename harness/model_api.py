"""The contract every model follows, and the task head the harness puts on top of it.

A model is a ``torch.nn.Module`` with an integer attribute ``output_size`` (F) whose
``forward(x)`` takes ``x`` of shape ``(batch, length, input_size)`` and returns
``(features, summary)``: per-position features ``(batch, length, F)`` for tasks scored at every
position, and a sequence summary ``(batch, F)`` for tasks scored at the last step. For a
unidirectional model the summary is the last position's features; a bidirectional one combines
the forward direction's final state with the backward direction's final state.
"""

from __future__ import annotations

import torch
from torch import nn

READOUTS = ("sequence", "last")


class TaskModel(nn.Module):
    """A recurrent model followed by a linear head to the task's output size."""

    def __init__(self, core: nn.Module, output_size: int, readout: str) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.core = core
        self.readout = readout
        self.head = nn.Linear(int(core.output_size), output_size)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features, summary = self.core(inputs)
        return self.head(features if self.readout == "sequence" else summary)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
