"""One cell-loop pattern for every custom recurrent cell.

A :class:`GatedCell` owns an input projection ``W_ih`` and a recurrent projection ``W_hh`` with
``num_gates`` blocks of ``hidden_size`` rows (the layout and initialisation of ``torch.nn.LSTM``)
and defines only ``step``: the nonlinearity that turns the pre-activations of one time step into
the next state. :class:`CellLoop` does the rest the same way for every cell: at each time step one
matrix product of ``[x_t, h_{t-1}]`` with ``[W_ih W_hh]`` (concatenated once per forward pass)
gives the pre-activations, then ``step`` gives the next state.

One product per step over the concatenation, rather than one product projecting the whole input
sequence up front plus a recurrent product per step, was measured to be faster on the CPU: the
up-front projection is a ``(batch, length, gates * hidden)`` tensor written once, unbound, and
its gradient stacked and reduced again, which costs more memory traffic than the per-step
concatenation of a few inputs (see docs/performance.md). The inputs are unbound once; indexing
``x[:, t]`` inside the loop would make the backward pass quadratic in the length.

A cell may run its step some other way than its eager equations (the built-in gated cells
cells use fused CPU kernels from their plugin); it says so in an ``implementation`` attribute,
which :attr:`CellLoop.implementation` reports for result provenance. This module knows nothing
about any such kernels.
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
        #: With ``keep_states`` set, a forward pass leaves its hidden states h_0..h_{T-1} in ``states``
        #: (the gradient-flow measurement reads ‖∂L/∂h_t‖ from them).
        self.keep_states = False
        self.states: list[torch.Tensor] | None = None

    @property
    def implementation(self) -> str:
        """How the cell computes its step: the cell's own ``implementation`` (e.g. ``"fused-cpu"``,
        ``"eager: HARNESS_FUSED=0"``), or ``"eager"`` for a cell that does not say."""
        return getattr(self.cell, "implementation", "eager")

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cell = self.cell
        weight = torch.cat([cell.weight_ih, cell.weight_hh], 1).t()  # (input + hidden, gates * hidden)
        bias = cell.bias_ih + cell.bias_hh
        state = cell.initial_state(inputs.shape[0], inputs)
        outputs = []
        for x_t in inputs.unbind(1):
            gates = torch.addmm(bias, torch.cat([x_t, state[0]], 1), weight)
            state = cell.step(gates, state)
            outputs.append(state[0])
        if self.keep_states:
            self.states = outputs
        return torch.stack(outputs, 1), outputs[-1]
