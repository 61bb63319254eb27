"""Small whole-sequence models for the tests of the checks and of ``harness gradients``: a minGRU with
a log-space parallel scan and an LRU-like FFT convolution, each done right and done wrong in the
ways a plugin author got them wrong (a circular convolution, a sequence read backwards, kept
states that later steps are not computed from, a scan that loses float32 precision).

minGRU (Feng et al. 2024, "Were RNNs all we needed?"): z_t = σ(W_z x_t + b_z), h̃_t = g(W_h x_t + b_h)
with g(a) = a + ½ for a ≥ 0 and σ(a) otherwise, h_t = (1 − z_t) h_{t−1} + z_t h̃_t, h_{−1} = 0. The
parallel form is Heinsen's (2023) log-space scan: with a*_t = Σ_{k≤t} log(1 − z_k),
log h_t = a*_t + logcumsumexp_{k≤t}(log z_k + log h̃_k − a*_k).

LRU-like (Orvieto et al. 2023): a complex diagonal recurrence s_t = λ ⊙ s_{t−1} + γ ⊙ (B x_t) with
λ = exp(−exp(ν) + i exp(θ)) and γ = sqrt(1 − |λ|²), output Re(C s_t), computed as a convolution of
B x with the kernel λ^k by FFT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LogScanMinGRU(nn.Module):
    """A minGRU trained with the log-space scan; with ``keep_states`` set it runs its sequential mode
    and keeps h_0 .. h_{T−1}, the states the later steps are computed from (the protocol)."""

    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__()
        self.gate = nn.Linear(input_size, hidden_size)
        self.candidate = nn.Linear(input_size, hidden_size)
        self.output_size = hidden_size
        self.keep_states = False
        self.states: list[torch.Tensor] | None = None

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log z_t, log(1 − z_t) and log h̃_t, each (batch, length, hidden)."""
        k, a = self.gate(x), self.candidate(x)
        log_candidate = torch.where(a >= 0, (F.relu(a) + 0.5).log(), -F.softplus(-a))
        return -F.softplus(-k), -F.softplus(k), log_candidate

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        log_z, log_keep, log_candidate = self.parts(x)
        a_star = log_keep.cumsum(1)
        return (a_star + torch.logcumsumexp(log_z + log_candidate - a_star, 1)).exp()

    def loop(self, x: torch.Tensor) -> list[torch.Tensor]:
        log_z, log_keep, log_candidate = self.parts(x)
        z, keep, candidate = log_z.exp(), log_keep.exp(), log_candidate.exp()
        h = x.new_zeros(x.shape[0], self.output_size)
        states = []
        for t in range(x.shape[1]):
            h = keep[:, t] * h + z[:, t] * candidate[:, t]
            states.append(h)
        return states

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keep_states:
            self.states = self.loop(x)
            h = torch.stack(self.states, 1)
        else:
            h = self.scan(x)
        return h, h[:, -1]


class CopiedStates(LogScanMinGRU):
    """Keeps copies of the scan's outputs as its states: no later step is computed from them."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.scan(x)
        if self.keep_states:
            self.states = list(h.unbind(1))
        return h, h[:, -1]


class StackedStates(LogScanMinGRU):
    """Builds its outputs from the scan's per-step outputs, but the steps are not computed from each other."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = list(self.scan(x).unbind(1))
        if self.keep_states:
            self.states = states
        h = torch.stack(states, 1)
        return h, states[-1]


class ReadsBackwards(LogScanMinGRU):
    """Runs the recurrence over the reversed sequence and summarises at h[:, 0]: it sees the future."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.scan(x.flip(1)).flip(1)
        return h, h[:, 0]


class FFTLRU(nn.Module):
    """The LRU-like recurrence as an FFT convolution, zero-padded to twice the length (causal)."""

    padding: int | None = None  # zeros appended to the length before the FFT; None: the length again

    def __init__(self, input_size: int, hidden_size: int = 8, r_min: float = 0.5, r_max: float = 0.95) -> None:
        super().__init__()
        radius = torch.sqrt(torch.rand(hidden_size) * (r_max**2 - r_min**2) + r_min**2)  # uniform on the ring
        self.nu_log = nn.Parameter(torch.log(-torch.log(radius)))
        self.theta_log = nn.Parameter(torch.log(torch.rand(hidden_size) * math.pi / 5 + 1e-3))
        bound = 1 / math.sqrt(input_size)
        self.b = nn.Parameter(torch.empty(2, hidden_size, input_size).uniform_(-bound, bound))
        self.c = nn.Parameter(torch.empty(2, hidden_size, hidden_size).uniform_(-1 / math.sqrt(hidden_size),
                                                                               1 / math.sqrt(hidden_size)))
        self.output_size = hidden_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps = x.shape[1]
        log_lambda = torch.complex(-self.nu_log.exp(), self.theta_log.exp())  # (hidden,)
        gamma = torch.sqrt(1 - (2 * log_lambda.real).exp())
        k = torch.arange(steps, device=x.device, dtype=x.dtype).unsqueeze(1)
        kernel = (k * log_lambda).exp()  # λ^k, (length, hidden)
        driven = torch.complex(x @ self.b[0].t(), x @ self.b[1].t()) * gamma  # γ ⊙ B x_t
        n = steps + self.padding if self.padding is not None else 2 * steps
        states = torch.fft.ifft(torch.fft.fft(driven, n, dim=1) * torch.fft.fft(kernel, n, dim=0), n, dim=1)[:, :steps]
        features = states.real @ self.c[0].t() - states.imag @ self.c[1].t()  # Re(C s)
        return features, features[:, -1]


class CircularFFTLRU(FFTLRU):
    """The classic bug: an FFT convolution without zero padding is circular, so outputs see later inputs."""

    padding = 0


class ShortPaddedFFTLRU(FFTLRU):
    """Pads by a fixed 8 steps: causal up to 9 steps, circular beyond (the kernel is as long as the input)."""

    padding = 8


class LossyGradients(nn.Module):
    """A GRU behind an input projection whose float32 backward pass scales the projection's gradients
    by 1 + ``error``: a stand-in for a scan whose float32 gradients are that far off float64."""

    error = 0.12

    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__()
        self.projection = nn.Linear(input_size, hidden_size)
        self.rnn = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.output_size = hidden_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projected = self.projection(x)
        if x.dtype == torch.float32:
            projected = _ScaleGradient.apply(projected, 1.0 + self.error)
        features, _ = self.rnn(projected)
        return features, features[:, -1]


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, factor):  # noqa: ANN001, ANN205 -- autograd's signature
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad * ctx.factor, None
