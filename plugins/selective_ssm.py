"""A Mamba block around a selective state-space layer (S6; Gu & Dao 2023, "Mamba: linear-time
sequence modeling with selective state spaces").

The block: an input projection to two streams of width E = expand × hidden; on one, a causal
depthwise convolution (padded on the left only, so position t sees inputs ≤ t), SiLU, then S6:
per channel d and state n, h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t and y_t = C_t h_t + D ⊙ x_t,
with A = −exp(A_log) (S4D-real init A_{d,n} = −(n + 1)), Δ_t = softplus(W_Δ x_t + b_Δ) through a
rank-R projection, B_t = W_B x_t and C_t = W_C x_t shared over channels; then y ⊙ SiLU(other
stream) and an output projection to hidden. No residual or normalisation (one block; the
harness's head follows). Equations and options: docs/models.md.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from harness.plugins.kernels.scan_ops import selective_scan
from harness.plugins.scans import LinearRecurrence, linear_scan
from torch import nn

from harness.errors import HarnessError


class SelectiveSSM(LinearRecurrence):
    """One Mamba block, input_size → hidden_size, with ``state_size`` states per channel."""

    def __init__(self, input_size: int, hidden_size: int, state_size: int, expand: int, conv_size: int,
                 dt_rank: int, dt_min: float, dt_max: float, mode: str) -> None:
        super().__init__(mode)
        for name, value in (("state_size", state_size), ("expand", expand), ("conv_size", conv_size),
                            ("dt_rank", dt_rank)):
            if value < 1:
                raise HarnessError(f"selective SSM option {name} must be a positive integer, got {value}")
        if not 0 < dt_min <= dt_max:
            raise HarnessError(f"selective SSM needs 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        width = expand * hidden_size
        self.output_size = hidden_size
        self.state_size = state_size
        self.dt_rank = dt_rank
        self.in_proj = nn.Linear(input_size, 2 * width)
        self.conv = nn.Conv1d(width, width, conv_size, groups=width)
        self.x_proj = nn.Linear(width, dt_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(dt_rank, width)
        # Δ's bias: softplus⁻¹ of Δ₀ log-uniform in [dt_min, dt_max] (Mamba's initialisation)
        dt = torch.exp(torch.rand(width) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state_size + 1, dtype=torch.float32)).repeat(width, 1))
        self.D = nn.Parameter(torch.ones(width))
        self.out_proj = nn.Linear(width, hidden_size)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stream, gate = self.in_proj(inputs).chunk(2, dim=-1)  # (batch, length, width) each
        padded = F.pad(stream.transpose(1, 2), (self.conv.kernel_size[0] - 1, 0))  # left only: causal
        x = F.silu(self.conv(padded)).transpose(1, 2)
        delta_low, B, C = self.x_proj(x).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        delta = F.softplus(self.dt_proj(delta_low))  # (batch, length, width)
        A = -torch.exp(self.A_log)  # (width, state)
        how = "loop" if self.keep_states else self.resolved(x.device, x.dtype)
        if how == "kernel" and not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            y = selective_scan(delta, A, B, C, x)  # keeps a state every few steps, not (batch, length, width, state)
        elif how != "scan":
            y = self._steps(delta, x, B, C, A)
        else:
            decay = torch.exp(delta.unsqueeze(-1) * A)  # exp(Δ A): (batch, length, width, state)
            drive = (delta * x).unsqueeze(-1) * B.unsqueeze(2)  # Δ B x
            y = (linear_scan(decay, drive) * C.unsqueeze(2)).sum(-1)
        out = self.out_proj((y + self.D * x) * F.silu(gate))
        return out, out[:, -1]

    def _steps(self, delta: torch.Tensor, x: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               A: torch.Tensor) -> torch.Tensor:
        """C_t h_t for all t, one step at a time, each step's (batch, width, state) terms made in the step
        rather than all (batch, length, width, state) coefficients up front (a third of the time on the
        CPU, see docs/models.md). Keeps the states, flattened, with ``keep_states``."""
        batch = x.shape[0]
        h = x.new_zeros(batch, *A.shape)
        kept, outputs = [], []
        for delta_t, scaled_t, b_t, c_t in zip(delta.unbind(1), (delta * x).unbind(1), B.unbind(1), C.unbind(1)):
            h = torch.addcmul(torch.exp(delta_t.unsqueeze(-1) * A) * h, scaled_t.unsqueeze(-1), b_t.unsqueeze(1))
            if self.keep_states:  # the output and the next step read h_t through its kept flat view
                kept.append(h.reshape(batch, -1))
                h = kept[-1].view(batch, *A.shape)
            outputs.append(torch.bmm(h, c_t.unsqueeze(-1)).squeeze(-1))
        if self.keep_states:
            self.states = kept
        return torch.stack(outputs, 1)


def build_selective_ssm(input_size: int, hidden_size: int = 128, state_size: int = 16, expand: int = 2,
                        conv_size: int = 4, dt_rank: int | None = None, dt_min: float = 0.001, dt_max: float = 0.1,
                        mode: Literal["auto", "scan", "loop"] = "auto") -> SelectiveSSM:
    """A Mamba block with S6; ``dt_rank`` defaults to ceil(hidden_size / 16), as Mamba's."""
    return SelectiveSSM(input_size, hidden_size, state_size, expand, conv_size,
                        dt_rank or math.ceil(hidden_size / 16), dt_min, dt_max, mode)
