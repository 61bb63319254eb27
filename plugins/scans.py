"""The diagonal linear recurrence h_t = a_t ⊙ h_{t−1} + b_t (h_{−1} = 0), three ways, and the
model base class that chooses between them.

- ``scan``: a parallel associative scan in linear space (pairs of steps combine as
  (a, b)·(a', b') = (a a', a' b + b'), halving the length log₂ T times; O(T) work). It needs
  |a_t| ≤ 1 for stability only in the sense that products of such factors shrink, never overflow,
  so it is accurate in float32 at any length. Works for real and complex tensors.
- ``log-scan``: Heinsen's (2023) log-space scan for a_t, b_t > 0, log h_t = a*_t +
  logcumsumexp_{k≤t}(log b_k − a*_k) with a*_t = Σ_{k≤t} log a_k: two cumulative operations, but
  a* grows like t and the backward pass of ``logcumsumexp`` cancels (see docs/models.md for the
  float32 error this measures at T = 1000).
- ``loop``: one step at a time; the reference the other two are tested against, and the path
  through which the per-step states are kept for the gradient-flow measurement.
- ``kernel`` (not a mode: what ``auto`` runs on the CPU where it can): the whole loop in C
  (:func:`harness.plugins.kernels.scan_ops.diagonal_scan`), forward and backward.
- ``auto``: the C kernel on the CPU (the loop where the kernels are off or unavailable, with the
  kernels' one warning), the scan on other devices.
"""

from __future__ import annotations

import torch
from harness.plugins import kernels
from harness.plugins.kernels.scan_ops import diagonal_scan
from torch import nn

from harness.errors import HarnessError

MODES = ("auto", "scan", "loop")
#: What ``auto`` runs, by device type: on the CPU the C kernel, else the loop (which measured as fast
#: as the scan or faster there, docs/models.md); the scan elsewhere.
AUTO = {"cpu": "kernel"}


def check_mode(mode: str, modes: tuple[str, ...] = MODES) -> str:
    """``mode`` if it is one of ``modes``, else a one-line ValueError."""
    if mode not in modes:
        raise HarnessError(f"mode must be one of {', '.join(modes)}, got {mode!r}")
    return mode


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All h_t of h_t = a_t h_{t−1} + b_t along dim 1 (h_{−1} = 0), by recursive pairing."""
    length = a.shape[1]
    if length == 1:
        return b
    pairs = length // 2
    a_first, a_second = a[:, 0:2 * pairs:2], a[:, 1:2 * pairs:2]
    # one step of two: h_{2k+1} = (a_{2k+1} a_{2k}) h_{2k−1} + (a_{2k+1} b_{2k} + b_{2k+1})
    odd = linear_scan(a_second * a_first, a_second * b[:, 0:2 * pairs:2] + b[:, 1:2 * pairs:2])
    # the even steps from the odd ones before them: h_{2k} = a_{2k} h_{2k−1} + b_{2k}
    previous = torch.cat([torch.zeros_like(odd[:, :1]), odd[:, :length - pairs - 1]], 1)
    even = a[:, 0::2] * previous + b[:, 0::2]
    merged = torch.stack([even[:, :pairs], odd], 2).flatten(1, 2)
    return merged if length == 2 * pairs else torch.cat([merged, even[:, pairs:]], 1)


def log_scan(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """All h_t of h_t = a_t h_{t−1} + b_t along dim 1 (h_{−1} = 0) from log a_t and log b_t (Heinsen 2023)."""
    a_star = torch.cumsum(log_a, 1)
    return torch.exp(a_star + torch.logcumsumexp(log_b - a_star, 1))


class LinearRecurrence(nn.Module):
    """Base of the models whose state follows h_t = a_t ⊙ h_{t−1} + b_t.

    ``mode`` chooses the algorithm (not the function: every mode computes the same outputs).
    With ``keep_states`` set, the recurrence runs step by step and leaves in ``states`` each h_t
    as a real (batch, size) tensor from which h_{t+1} is computed, so ∂L/∂h_t is the gradient
    that flows through the state (the gradient-flow measurement reads it).
    """

    def __init__(self, mode: str, modes: tuple[str, ...] = MODES) -> None:
        super().__init__()
        self.mode = check_mode(mode, modes)
        self.keep_states = False
        self.states: list[torch.Tensor] | None = None

    @property
    def implementation(self) -> str:
        """The algorithm that runs for the parameters' device and dtype, recorded with each result."""
        parameter = next(self.parameters())
        return self.resolved(parameter.device, parameter.dtype)

    def resolved(self, device: torch.device, dtype: torch.dtype) -> str:
        """``mode``, with ``auto`` replaced by the algorithm it picks for ``device`` and ``dtype`` (real or
        complex): ``kernel`` only where the C kernels run for it (may build or load them, once)."""
        if self.mode != "auto":
            return self.mode
        choice = AUTO.get(device.type, "scan")
        if choice == "kernel" and kernels.unsupported(device, dtype.to_real()) is not None:
            return "loop"
        return choice

    def recur(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """h for all t, shape of ``b`` (batch, length, *state), by ``mode`` (``loop`` when keeping states)."""
        how = "loop" if self.keep_states else self.resolved(b.device, b.dtype)
        if how == "kernel" and not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            return diagonal_scan(a, b)
        if how == "scan":
            return linear_scan(a, b)
        return self._loop(a, b)

    def _loop(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        shape = b.shape[:1] + b.shape[2:]
        flat = _Flat(shape, b.is_complex())
        kept, outputs = [], []
        h = b.new_zeros(shape)
        for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
            h = a_t * h + b_t
            if self.keep_states:  # the output and the next step read h_t through its kept real view
                kept.append(flat.to_real(h))
                h = flat.from_real(kept[-1])
            outputs.append(h)
        if self.keep_states:
            self.states = kept
        return torch.stack(outputs, 1)


class _Flat:
    """A state of any shape, real or complex, as a real (batch, size) tensor and back (views)."""

    def __init__(self, shape: torch.Size, complex_valued: bool) -> None:
        self.shape = shape
        self.complex = complex_valued

    def to_real(self, h: torch.Tensor) -> torch.Tensor:
        return (torch.view_as_real(h) if self.complex else h).reshape(self.shape[0], -1)

    def from_real(self, flat: torch.Tensor) -> torch.Tensor:
        if self.complex:
            return torch.view_as_complex(flat.reshape(*self.shape, 2))
        return flat.reshape(self.shape)
