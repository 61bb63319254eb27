"""Peephole LSTM and CIFG cells (equations in docs/models.md), both on :class:`harness.cells.CellLoop`.

On the CPU, a whole forward pass runs the whole-sequence kernel of :mod:`harness.plugins.kernels`
(:class:`~harness.plugins.sequence_loop.SequenceLoop`: the loop over time in C, forward and
backward), except when the loop must keep its per-step states on the graph (``keep_states``, the
gradient measurement); then, and for any other caller of the cell, ``step`` runs the fused kernels
of :mod:`harness.plugins.kernels` (the operators ``harness::peephole_step`` and
``harness::cifg_step``: same equations, one pass forward and one backward); elsewhere, with
``HARNESS_FUSED=0``, or where the kernels cannot be built or loaded, the eager equations below,
which are the reference. ``cell.implementation`` says which one a cell uses.
"""

from __future__ import annotations

import math

import torch
from harness.plugins import kernels
from harness.plugins.initialisation import check_init, chrono_t_max, set_gate_biases
from harness.plugins.sequence_loop import SequenceLoop
from torch import nn

from harness.cells import GatedCell, State


class _FusedCell(GatedCell):
    """A cell whose ``step`` runs the fused CPU kernels where it can."""

    @property
    def implementation(self) -> str:
        """``"fused-cpu"`` if ``step`` runs the fused kernels for this cell's parameters (CPU,
        float32/float64, kernels loaded), else ``"eager: <why>"``; may build or load the kernels."""
        return kernels.implementation(self.weight_ih.device, self.weight_ih.dtype)


class PeepholeLSTMCell(_FusedCell):
    """LSTM cell, gates i, f, g, o; with ``peepholes`` the gates also see the cell state:
    i and f see c_{t-1}, o sees the new c_t. Without peepholes it is exactly ``torch.nn.LSTM``."""

    num_gates = 4
    state_size = 2

    def __init__(self, input_size: int, hidden_size: int, peepholes: bool = True, forget_bias: float = 1.0,
                 init: str = "default", t_max: int | None = None) -> None:
        self.peepholes = peepholes
        check_init(init)
        super().__init__(input_size, hidden_size)
        if peepholes:
            bound = 1.0 / math.sqrt(hidden_size)
            self.peephole_weights = nn.Parameter(torch.empty(3, hidden_size).uniform_(-bound, bound))
        set_gate_biases(self.bias_ih, self.bias_hh, hidden_size, {"input": 0, "forget": 1}, init, forget_bias, t_max)

    def step(self, gates: torch.Tensor, state: State) -> State:
        _, c = state
        peepholes = self.peephole_weights if self.peepholes else None
        if kernels.usable(gates, c, *(() if peepholes is None else (peepholes,))):
            return kernels.peephole_step(gates, c, peepholes)
        # the equations in plain torch operations (the reference for the fused kernel)
        gi, gf, gg, go = gates.chunk(4, dim=1)
        if self.peepholes:
            p_i, p_f, p_o = self.peephole_weights
            gi = torch.addcmul(gi, p_i, c)
            gf = torch.addcmul(gf, p_f, c)
        else:
            # Same memory layout as the peephole path (addcmul returns contiguous tensors), because
            # CPU kernels round strided and contiguous inputs differently: zero peepholes must
            # reproduce this path bit for bit.
            gi, gf, go = gi.contiguous(), gf.contiguous(), go.contiguous()
        c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
        if self.peepholes:
            go = torch.addcmul(go, p_o, c)
        return torch.sigmoid(go) * torch.tanh(c), c


class CIFGCell(_FusedCell):
    """Coupled input-forget gate LSTM cell: gates i, g, o and f = 1 - i."""

    num_gates = 3
    state_size = 2

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0, init: str = "default",
                 t_max: int | None = None) -> None:
        check_init(init)
        super().__init__(input_size, hidden_size)
        # f = 1 - i, so a forget bias b is an input-gate bias -b (1 - σ(-b) = σ(b))
        set_gate_biases(self.bias_ih, self.bias_hh, hidden_size, {"coupled": 0}, init, forget_bias, t_max)

    def step(self, gates: torch.Tensor, state: State) -> State:
        _, c = state
        if kernels.usable(gates, c):
            return kernels.cifg_step(gates, c)
        # the equations in plain torch operations (the reference for the fused kernel)
        gi, gg, go = gates.chunk(3, dim=1)
        i = torch.sigmoid(gi)
        c = torch.lerp(c, torch.tanh(gg), i)  # (1 - i) * c + i * g
        return torch.sigmoid(go) * torch.tanh(c), c


def build_peephole(input_size: int, hidden_size: int = 128, peepholes: bool = True, forget_bias: float = 1.0,
                   init: str = "default", chrono_max: int | None = None, chrono_scale: float = 1.0,
                   length: int | None = None) -> SequenceLoop:
    """``init="chrono"`` sets the gate biases for dependencies up to ``chrono_max`` (default: the
    trial's length T) and ignores ``forget_bias``."""
    t_max = chrono_t_max(chrono_max, chrono_scale, length)
    return SequenceLoop(PeepholeLSTMCell(input_size, hidden_size, peepholes, forget_bias, init, t_max),
                        "peephole")


def build_cifg(input_size: int, hidden_size: int = 128, forget_bias: float = 1.0, init: str = "default",
               chrono_max: int | None = None, chrono_scale: float = 1.0,
               length: int | None = None) -> SequenceLoop:
    """``forget_bias`` is the bias of the effective forget value 1 − i: the input gate gets −forget_bias
    (1 gives σ(1), as the LSTM); ``init="chrono"``: input-gate biases −log u, u ~ U[1, T_max − 1]."""
    t_max = chrono_t_max(chrono_max, chrono_scale, length)
    return SequenceLoop(CIFGCell(input_size, hidden_size, forget_bias, init, t_max), "cifg")
