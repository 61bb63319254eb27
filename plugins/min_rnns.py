"""minGRU and minLSTM (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were RNNs all we needed?").

Their gates read only x_t, never h_{t−1}, so h_t = a_t ⊙ h_{t−1} + b_t is a linear recurrence with
a_t ∈ (0, 1), b_t > 0 (the candidate h̃_t = g(W_h x_t + b_h) > 0, the paper's log-space form), and
trains with a parallel scan. Every mode computes the same function; the gates are computed from
their logarithms (log σ(k) = −softplus(−k)), as in the paper's log-space code, in every mode.
Equations and options: docs/models.md.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from harness.plugins.initialisation import check_init, chrono_log_u, chrono_t_max
from harness.plugins.scans import LinearRecurrence, log_scan
from torch import nn

MIN_MODES = ("auto", "scan", "log-scan", "loop")


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x) with g(x) = x + ½ for x ≥ 0, σ(x) otherwise (positive and continuous)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


class _MinRNN(LinearRecurrence):
    """One layer: an input projection to ``blocks`` × hidden pre-activations, then the recurrence."""

    blocks = 2

    def __init__(self, input_size: int, hidden_size: int, mode: str, init: str, t_max: int | None) -> None:
        super().__init__(mode, MIN_MODES)
        check_init(init)
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.proj = nn.Linear(input_size, self.blocks * hidden_size)
        if init == "chrono":
            self._chrono(chrono_log_u(hidden_size, t_max, self.proj.bias))

    def _chrono(self, log_u: torch.Tensor) -> None:
        raise NotImplementedError

    def log_coefficients(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log a_t and log b_t from the pre-activations (batch, length, blocks × hidden)."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_a, log_b = self.log_coefficients(self.proj(inputs))
        if self.mode == "log-scan" and not self.keep_states:
            h = log_scan(log_a, log_b)
        else:
            h = self.recur(torch.exp(log_a), torch.exp(log_b))
        return h, h[:, -1]


class MinGRU(_MinRNN):
    """z_t = σ(W_z x_t + b_z), h̃_t = g(W_h x_t + b_h), h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t."""

    def _chrono(self, log_u: torch.Tensor) -> None:
        # z = σ(−log u) = 1 / (1 + u): unit j keeps its state for about 1 + u_j steps
        with torch.no_grad():
            self.proj.bias[:self.hidden_size] = -log_u

    def log_coefficients(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, candidate = pre.chunk(2, dim=-1)
        return -F.softplus(k), -F.softplus(-k) + log_g(candidate)


class MinLSTM(_MinRNN):
    """f_t, i_t = σ(·), normalised f′ = f / (f + i), i′ = i / (f + i); h_t = f′ ⊙ h_{t−1} + i′ ⊙ h̃_t."""

    blocks = 3

    def _chrono(self, log_u: torch.Tensor) -> None:
        # forget bias log u, input bias −log u: f′ / i′ = u at x = 0, so i′ = 1 / (1 + u)
        hidden = self.hidden_size
        with torch.no_grad():
            self.proj.bias[:hidden] = log_u
            self.proj.bias[hidden:2 * hidden] = -log_u

    def log_coefficients(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_f, k_i, candidate = pre.chunk(3, dim=-1)
        # log f′ = −softplus(log i − log f), with log σ(k) = −softplus(−k)
        difference = F.softplus(-k_f) - F.softplus(-k_i)
        return -F.softplus(difference), -F.softplus(-difference) + log_g(candidate)


def build_mingru(input_size: int, hidden_size: int = 128, mode: Literal["auto", "scan", "log-scan", "loop"] = "auto",
                 init: Literal["default", "chrono"] = "default", chrono_max: int | None = None,
                 chrono_scale: float = 1.0, length: int | None = None) -> MinGRU:
    """minGRU; ``init="chrono"`` spreads the update gate's memory times over [2, T_max] (T_max: ``chrono_max``,
    else the trial's length)."""
    t_max = chrono_t_max(chrono_max, chrono_scale, length)
    return MinGRU(input_size, hidden_size, mode, init, t_max)


def build_minlstm(input_size: int, hidden_size: int = 128, mode: Literal["auto", "scan", "log-scan", "loop"] = "auto",
                  init: Literal["default", "chrono"] = "default", chrono_max: int | None = None,
                  chrono_scale: float = 1.0, length: int | None = None) -> MinLSTM:
    """minLSTM; ``init="chrono"`` as for minGRU, through the forget and input gate biases."""
    t_max = chrono_t_max(chrono_max, chrono_scale, length)
    return MinLSTM(input_size, hidden_size, mode, init, t_max)
