"""One cell-loop pattern for every custom recurrent cell.

A :class:`GatedCell` owns an input projection ``W_ih`` and a recurrent projection ``W_hh`` with
``num_gates`` blocks of ``hidden_size`` rows (the layout and initialisation of ``torch.nn.LSTM``)
and defines only ``step``: the nonlinearity that turns the pre-activations of one time step into
the next state. :class:`CellLoop` does the rest the same way for every cell: it projects the whole
input sequence in one matrix product, unbinds it once (indexing ``xw[t]`` in the loop would make
the backward pass quadratic in the length), and adds the recurrent product step by step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

State = tuple[torch.Tensor, ...]


class GatedCell(nn.Module):
    """Base class for custom cells; subclasses set ``num_gates`` and implement :meth:`step`."""

    num_gates: int = 1
    state_size: int = 1  # number of (batch, hidden) tensors in the state; h is always the first

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        rows = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(rows))
        self.bias_hh = nn.Parameter(torch.empty(rows))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ±1/sqrt(hidden_size), as ``torch.nn.LSTM``; subclasses then set gate biases."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def gate_slice(self, index: int) -> slice:
        """Rows of the gate block ``index`` in ``weight_ih``/``weight_hh``/biases."""
        return slice(index * self.hidden_size, (index + 1) * self.hidden_size)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> State:
        zeros = like.new_zeros(batch_size, self.hidden_size)
        return tuple(zeros for _ in range(self.state_size))

    def step(self, gates: torch.Tensor, state: State) -> State:
        """Return the next state from this step's pre-activations ``W_ih x_t + b + W_hh h_{t-1}``."""
        raise NotImplementedError


class CellLoop(nn.Module):
    """Runs a :class:`GatedCell` over a sequence; follows the model contract of ``harness.model_api``."""

    def __init__(self, cell: GatedCell) -> None:
        super().__init__()
        self.cell = cell
        self.output_size = cell.hidden_size

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cell = self.cell
        projected = torch.nn.functional.linear(inputs, cell.weight_ih, cell.bias_ih + cell.bias_hh)
        weight_hh_t = cell.weight_hh.t()
        state = cell.initial_state(inputs.shape[0], inputs)
        outputs = []
        for gates_x in projected.unbind(1):
            state = cell.step(torch.addmm(gates_x, state[0], weight_hh_t), state)
            outputs.append(state[0])
        return torch.stack(outputs, 1), outputs[-1]
