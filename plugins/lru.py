"""The Linear Recurrent Unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De 2023,
"Resurrecting recurrent neural networks for long sequences").

A complex diagonal recurrence x_t = λ ⊙ x_{t−1} + γ ⊙ (B u_t), λ_j = exp(−exp(ν_j) + i exp(θ_j)),
read out as y_t = Re(C x_t) + D u_t, then a GELU. Every parameter is stored as real float32
tensors (real and imaginary parts apart), so ``.double()`` and the float32 contract apply; the
complex numbers exist only inside ``forward``. Equations, initialisation and options: docs/models.md.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from harness.plugins.scans import LinearRecurrence
from torch import nn

from harness.errors import HarnessError


def ring_init(size: int, r_min: float, r_max: float, max_phase: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ν_log, θ_log) with |λ| uniform in area on the ring r_min ≤ |λ| ≤ r_max and phase uniform in [0, max_phase]."""
    if not 0.0 <= r_min < r_max <= 1.0:
        raise HarnessError(f"LRU ring needs 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    if not max_phase > 0:
        raise HarnessError(f"LRU max_phase must be positive, got {max_phase}")
    u1, u2 = torch.rand(size), torch.rand(size)
    # |λ|² uniform in [r_min², r_max²]; ν = −log|λ| = −½ log|λ|²; kept away from |λ| = 1 exactly
    radius_squared = (u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2).clamp(max=1.0 - 1e-7)
    nu_log = torch.log(-0.5 * torch.log(radius_squared))
    theta_log = torch.log(max_phase * u2.clamp(min=1e-7))
    return nu_log, theta_log


class LRU(LinearRecurrence):
    """An input-size → hidden-size LRU layer with ``state_size`` complex states."""

    def __init__(self, input_size: int, hidden_size: int, state_size: int, r_min: float, r_max: float,
                 max_phase: float, mode: str) -> None:
        super().__init__(mode)
        self.output_size = hidden_size
        nu_log, theta_log = ring_init(state_size, r_min, r_max, max_phase)
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(theta_log)
        modulus = torch.exp(-torch.exp(nu_log))
        self.gamma_log = nn.Parameter(0.5 * torch.log(1.0 - modulus ** 2))  # γ = sqrt(1 − |λ|²), then trained
        self.B_re = nn.Parameter(torch.randn(state_size, input_size) / math.sqrt(2 * input_size))
        self.B_im = nn.Parameter(torch.randn(state_size, input_size) / math.sqrt(2 * input_size))
        self.C_re = nn.Parameter(torch.randn(hidden_size, state_size) / math.sqrt(state_size))
        self.C_im = nn.Parameter(torch.randn(hidden_size, state_size) / math.sqrt(state_size))
        self.D = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(input_size))

    def eigenvalues(self) -> torch.Tensor:
        """λ, complex, one per state."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gamma = torch.exp(self.gamma_log)
        drive = torch.complex(F.linear(inputs, self.B_re * gamma[:, None]),
                              F.linear(inputs, self.B_im * gamma[:, None]))  # γ ⊙ (B u_t)
        lam = self.eigenvalues().expand_as(drive)
        x = self.recur(lam, drive)
        y = F.gelu(F.linear(x.real, self.C_re) - F.linear(x.imag, self.C_im) + F.linear(inputs, self.D))
        return y, y[:, -1]


def build_lru(input_size: int, hidden_size: int = 128, state_size: int | None = None, r_min: float = 0.9,
              r_max: float = 0.999, max_phase: float = math.pi / 10,
              mode: Literal["auto", "scan", "loop"] = "auto") -> LRU:
    """LRU with ``state_size`` complex states (default: hidden_size); ring initialisation in [r_min, r_max]."""
    return LRU(input_size, hidden_size, state_size or hidden_size, r_min, r_max, max_phase, mode)
