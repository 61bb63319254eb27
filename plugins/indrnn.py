"""IndRNN (Li, Li, Cook, Zhu & Gao 2018, "Independently recurrent neural network (IndRNN): building a
longer and deeper RNN"): h_t = ReLU(W x_t + u ⊙ h_{t−1} + b), one recurrent weight per unit.

Over T steps a unit's gradient scales like u^T, so the paper bounds |u| ≤ MAG^{1/T} (MAG = 2 keeps
it within a factor 2 over the whole sequence) and, for the last layer, initialises u uniformly in
[MAG^{−1/T}, MAG^{1/T}]. Here the bound is applied in ``forward`` (u clamped), so it holds whatever
the optimiser does. T is ``t_max`` if given, else the trial's length; a model built without either
(as by the contract checks) is initialised for T = 1000 and bounded by each input's length.
Details: docs/models.md.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError

#: The T an IndRNN built without a length is initialised for (u within 2^(±1/1000) of 1 for MAG = 2).
UNKNOWN_LENGTH = 1000


class IndRNN(nn.Module):
    """One IndRNN layer; ``forward`` follows ``harness.model_api``."""

    def __init__(self, input_size: int, hidden_size: int, mag: float, t_max: int | None) -> None:
        super().__init__()
        if not mag > 1.0:
            raise HarnessError(f"IndRNN mag must be greater than 1, got {mag}")
        if t_max is not None and t_max < 1:
            raise HarnessError(f"IndRNN t_max must be a positive integer, got {t_max}")
        self.output_size = hidden_size
        self.mag = mag
        self.t_max = t_max
        self.input = nn.Linear(input_size, hidden_size)
        high = self.bound(UNKNOWN_LENGTH)
        self.recurrent_weight = nn.Parameter(torch.empty(hidden_size).uniform_(1.0 / high, high))
        nn.init.zeros_(self.input.bias)
        self.keep_states = False
        self.states: list[torch.Tensor] | None = None
        self.implementation = "loop"

    def bound(self, steps: int) -> float:
        """MAG^{1/T} with T = ``t_max`` if set, else ``steps``."""
        return self.mag ** (1.0 / (self.t_max or steps))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.bound(inputs.shape[1])
        u = self.recurrent_weight.clamp(-limit, limit)
        drive = self.input(inputs)
        h = drive.new_zeros(drive.shape[0], drive.shape[2])
        outputs = []
        for d_t in drive.unbind(1):
            h = torch.relu(torch.addcmul(d_t, u, h))
            outputs.append(h)
        if self.keep_states:
            self.states = outputs
        return torch.stack(outputs, 1), outputs[-1]


def build_indrnn(input_size: int, hidden_size: int = 128, mag: float = 2.0, t_max: int | None = None,
                 length: int | None = None) -> IndRNN:
    """IndRNN with |u| ≤ mag^(1/T), T = ``t_max``, else the trial's length, else each input's length."""
    return IndRNN(input_size, hidden_size, mag, t_max or length)
