"""sLSTM (Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter & Hochreiter 2024,
"xLSTM: extended long short-term memory") on the shared cell loop.

Gates z, i, f, o from [x_t, h_{t−1}] (one head: a full recurrent matrix R rather than the paper's
block-diagonal heads); an exponential input gate, a sigmoid or exponential forget gate, a
normaliser n and a stabiliser m so that no exponential overflows. Equations: docs/models.md.

On the CPU a whole sequence runs in the sLSTM's whole-sequence kernel (:mod:`harness.plugins.kernels`,
forward and backward in C, like the classic cells); elsewhere, with ``HARNESS_FUSED=0`` or where the
kernels cannot be loaded, :meth:`SLSTMCell.step` on the cell loop (the graph loop), which is the
reference.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from harness.plugins.initialisation import check_init, chrono_t_max, set_gate_biases
from harness.plugins.sequence_loop import SequenceLoop

from harness.cells import GatedCell, State
from harness.errors import HarnessError

FORGET_GATES = ("sigmoid", "exp")


class SLSTMCell(GatedCell):
    """Gate blocks z, i, f, o; state (h, c, n, m)."""

    num_gates = 4
    state_size = 4

    def __init__(self, input_size: int, hidden_size: int, forget_gate: str = "sigmoid", forget_bias: float = 1.0,
                 init: str = "default", t_max: int | None = None) -> None:
        if forget_gate not in FORGET_GATES:
            raise HarnessError(f"forget_gate must be one of {', '.join(FORGET_GATES)}, got {forget_gate!r}")
        check_init(init)
        if init == "chrono" and forget_gate == "exp":
            raise HarnessError("init='chrono' needs forget_gate='sigmoid' (an exp forget gate with bias log u > 0 "
                             "would grow the state)")
        self.forget_gate = forget_gate
        super().__init__(input_size, hidden_size)
        set_gate_biases(self.bias_ih, self.bias_hh, hidden_size, {"input": 1, "forget": 2}, init, forget_bias, t_max)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> State:
        zeros = like.new_zeros(batch_size, self.hidden_size)
        # m_0 = −∞: the first step sets m_1 = ĩ_1, so n_1 = 1 (the official code's first-step rule)
        return zeros, zeros, zeros, like.new_full((batch_size, self.hidden_size), -torch.inf)

    def step(self, gates: torch.Tensor, state: State) -> State:
        _, c, n, m = state
        z_pre, i_pre, f_pre, o_pre = gates.chunk(4, dim=1)
        log_f = F.logsigmoid(f_pre) if self.forget_gate == "sigmoid" else f_pre
        m_new = torch.maximum(log_f + m, i_pre)
        i_gate = torch.exp(i_pre - m_new)
        f_gate = torch.exp(log_f + m - m_new)
        c = f_gate * c + i_gate * torch.tanh(z_pre)
        n = f_gate * n + i_gate
        return torch.sigmoid(o_pre) * c / n, c, n, m_new


def build_slstm(input_size: int, hidden_size: int = 128, forget_gate: Literal["sigmoid", "exp"] = "sigmoid",
                forget_bias: float = 1.0, init: Literal["default", "chrono"] = "default",
                chrono_max: int | None = None, chrono_scale: float = 1.0,
                length: int | None = None) -> SequenceLoop:
    """sLSTM with one head; ``init="chrono"`` sets forget biases log u and input biases −log u, u ~ U[1, T_max − 1]."""
    t_max = chrono_t_max(chrono_max, chrono_scale, length)
    cell = SLSTMCell(input_size, hidden_size, forget_gate, forget_bias, init, t_max)
    return SequenceLoop(cell, "slstm" if forget_gate == "sigmoid" else "slstm-exp")
