"""The diagonal and selective scans of the modern recurrent models as torch operators, and their
differentiable entry points :func:`diagonal_scan` and :func:`selective_scan`.

Why: on the CPU, a Python loop over time spends more on per-step dispatch than on arithmetic (minGRU,
minLSTM and the LRU do a few elementwise operations per step), and Mamba's S6 loop or parallel scan
also materialises (B, T, D, N) coefficients and states, gigabytes at T = 10,000. Here one C loop over
time does the whole recurrence, forward and backward; the selective scan keeps only a checkpoint of the
state every ``chunk`` steps and recomputes each chunk's states in backward (docs/performance.md,
"Scan kernels").

Operators (``torch.library``; every tensor batch-first, CPU, float32 or float64, all one dtype):

- ``harness::diagonal_scan(a, b, h0, pairs) -> h``: h_t = a_t ⊙ h_{t−1} + b_t for a, b (B, T, M), h0
  (B, M); with ``pairs`` the M reals are M/2 complex numbers as (re, im) pairs (``torch.view_as_real``).
- ``harness::diagonal_scan_backward(grad_h, a, h0, h, pairs) -> (grad_a, grad_b, grad_h0)``.
- ``harness::selective_scan(delta, A, B, C, x, chunk) -> (y, checkpoints)``: y_t[d] = Σ_n C_t[n] h_t[d, n],
  h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t−1}[d, n] + Δ_t[d] x_t[d] B_t[n], h_{−1} = 0; delta, x (B, T, D),
  A (D, N), B, C (B, T, N); checkpoints (B, ⌈T/chunk⌉, D, N) are the states before each chunk.
- ``harness::selective_scan_backward(grad_y, delta, A, B, C, x, checkpoints, chunk)
  -> (grad_delta, grad_A, grad_B, grad_C, grad_x)``.

The pure-torch loops and scans in :mod:`harness.plugins.scans` and the models remain the reference
(``tests/test_scan_kernels.py`` compares them).
"""

from __future__ import annotations

import torch
from harness.plugins.kernels import build, ops

#: Steps between two checkpoints of the selective scan's state: memory (B, T/chunk, D, N) for the
#: checkpoints plus (B, 2 chunk + 1, D, N) scratch in backward.
CHUNK = 64

_LIB = torch.library.Library("harness", "FRAGMENT")
_LIB.define("diagonal_scan(Tensor a, Tensor b, Tensor h0, bool pairs) -> Tensor")
_LIB.define("diagonal_scan_backward(Tensor grad_h, Tensor a, Tensor h0, Tensor h, bool pairs) "
            "-> (Tensor, Tensor, Tensor)")
_LIB.define("selective_scan(Tensor delta, Tensor A, Tensor B, Tensor C, Tensor x, int chunk) -> (Tensor, Tensor)")
_LIB.define("selective_scan_backward(Tensor grad_y, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor x, "
            "Tensor checkpoints, int chunk) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


# --------------------------------------------------------------------------------------------
# checks (the C loops index by the sizes alone)
# --------------------------------------------------------------------------------------------

def _check(op: str, shapes: dict[str, tuple[int, ...]], **tensors: torch.Tensor) -> None:
    """Each named tensor must be a CPU tensor of the shape in ``shapes`` and the first one's dtype
    (float32 or float64); a one-line ValueError says which is not."""
    first = next(iter(tensors.values()))
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a tensor, got {type(tensor).__name__}")
        if tuple(tensor.shape) != shapes[name]:
            raise ValueError(f"{op}: {name} must have shape {shapes[name]}, got {tuple(tensor.shape)}")
        if tensor.dtype not in ops._DTYPES:
            raise ValueError(f"{op}: dtype {tensor.dtype} of {name} is not supported (float32 or float64)")
        if tensor.dtype != first.dtype or tensor.device.type != "cpu":
            raise ValueError(f"{op}: {name} is {tensor.dtype} on {tensor.device}; all must be one dtype on the CPU")


def _diagonal_shapes(a: torch.Tensor, pairs: bool) -> dict[str, tuple[int, ...]]:
    if not isinstance(a, torch.Tensor) or a.dim() != 3 or (pairs and a.shape[2] % 2):
        got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise ValueError(f"harness::diagonal_scan: a must be (batch, length, {'2 * ' if pairs else ''}states), "
                         f"got {got}")
    full = tuple(a.shape)
    return {"a": full, "b": full, "h": full, "grad_h": full, "h0": (full[0], full[2])}


def _selective_shapes(delta: torch.Tensor, A: torch.Tensor, chunk: int) -> dict[str, tuple[int, ...]]:
    if not isinstance(delta, torch.Tensor) or delta.dim() != 3 or not isinstance(A, torch.Tensor) or A.dim() != 2:
        raise ValueError("harness::selective_scan: delta must be (batch, length, channels) and A (channels, states)")
    if chunk < 1:
        raise ValueError(f"harness::selective_scan: chunk must be positive, got {chunk}")
    batch, length, channels = delta.shape
    if length < 1:
        raise ValueError(f"harness::selective_scan: the sequence must have length >= 1, got delta {tuple(delta.shape)}")
    states = A.shape[1]
    return {"delta": (batch, length, channels), "x": (batch, length, channels), "grad_y": (batch, length, channels),
            "A": (channels, states), "B": (batch, length, states), "C": (batch, length, states),
            "checkpoints": (batch, -(-length // chunk), channels, states)}


def _kernel(name: str, dtype: torch.dtype):
    return getattr(build.library(), f"{name}_{ops._DTYPES[dtype]}")


# --------------------------------------------------------------------------------------------
# the operators' CPU and fake kernels
# --------------------------------------------------------------------------------------------

def _diagonal_fake(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, pairs: bool) -> torch.Tensor:
    _check("harness::diagonal_scan", _diagonal_shapes(a, pairs), a=a, b=b, h0=h0)
    return torch.empty_like(a, memory_format=torch.contiguous_format)


def _diagonal_cpu(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, pairs: bool) -> torch.Tensor:
    h = _diagonal_fake(a, b, h0, pairs)
    a, b, h0 = a.contiguous(), b.contiguous(), h0.contiguous()
    batch, length, width = a.shape
    _kernel("complex_scan_forward" if pairs else "diagonal_scan_forward", a.dtype)(
        length, batch, width // 2 if pairs else width, a.data_ptr(), b.data_ptr(), h0.data_ptr(), h.data_ptr())
    return h


def _diagonal_backward_fake(grad_h: torch.Tensor, a: torch.Tensor, h0: torch.Tensor, h: torch.Tensor, pairs: bool):
    _check("harness::diagonal_scan_backward", _diagonal_shapes(a, pairs), a=a, grad_h=grad_h, h0=h0, h=h)
    return torch.empty_like(a), torch.empty_like(a), torch.empty_like(h0)


def _diagonal_backward_cpu(grad_h: torch.Tensor, a: torch.Tensor, h0: torch.Tensor, h: torch.Tensor, pairs: bool):
    grad_a, grad_b, grad_h0 = (t.contiguous() for t in _diagonal_backward_fake(grad_h, a, h0, h, pairs))
    grad_h, a, h0, h = (t.contiguous() for t in (grad_h, a, h0, h))
    batch, length, width = a.shape
    _kernel("complex_scan_backward" if pairs else "diagonal_scan_backward", a.dtype)(
        length, batch, width // 2 if pairs else width, a.data_ptr(), h0.data_ptr(), h.data_ptr(), grad_h.data_ptr(),
        grad_a.data_ptr(), grad_b.data_ptr(), grad_h0.data_ptr())
    return grad_a, grad_b, grad_h0


def _selective_fake(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, x: torch.Tensor,
                    chunk: int):
    shapes = _selective_shapes(delta, A, chunk)
    _check("harness::selective_scan", shapes, delta=delta, A=A, B=B, C=C, x=x)
    return delta.new_empty(shapes["delta"]), delta.new_empty(shapes["checkpoints"])


def _selective_cpu(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, x: torch.Tensor,
                   chunk: int):
    y, checkpoints = _selective_fake(delta, A, B, C, x, chunk)
    delta, A, B, C, x = (t.contiguous() for t in (delta, A, B, C, x))
    (batch, length, channels), states = delta.shape, A.shape[1]
    scratch = delta.new_empty(batch, channels * states)
    chunk = min(chunk, length)  # as many checkpoints (one), and the kernel's scratch is sized by it
    _kernel("selective_scan_forward", delta.dtype)(length, batch, channels, states, chunk, delta.data_ptr(),
                                                   A.data_ptr(), B.data_ptr(), C.data_ptr(), x.data_ptr(),
                                                   y.data_ptr(), checkpoints.data_ptr(), scratch.data_ptr())
    return y, checkpoints


def _selective_backward_fake(grad_y: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                             C: torch.Tensor, x: torch.Tensor, checkpoints: torch.Tensor, chunk: int):
    shapes = _selective_shapes(delta, A, chunk)
    _check("harness::selective_scan_backward", shapes, delta=delta, A=A, B=B, C=C, x=x, grad_y=grad_y,
           checkpoints=checkpoints)
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (delta, A, B, C, x))


def _selective_backward_cpu(grad_y: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                            C: torch.Tensor, x: torch.Tensor, checkpoints: torch.Tensor, chunk: int):
    grad_delta, grad_A, grad_B, grad_C, grad_x = _selective_backward_fake(grad_y, delta, A, B, C, x, checkpoints,
                                                                          chunk)
    grad_y, delta, A, B, C, x, checkpoints = (t.contiguous() for t in (grad_y, delta, A, B, C, x, checkpoints))
    (batch, length, channels), states = delta.shape, A.shape[1]
    grad_A_rows = delta.new_empty(batch, channels, states)  # one per batch row (rows run in parallel)
    chunk = min(chunk, length)  # as in forward
    scratch = delta.new_empty(batch, (2 * chunk + 1) * channels * states + 2 * states)
    _kernel("selective_scan_backward", delta.dtype)(
        length, batch, channels, states, chunk, delta.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(),
        x.data_ptr(), checkpoints.data_ptr(), grad_y.data_ptr(), grad_delta.data_ptr(), grad_A_rows.data_ptr(),
        grad_B.data_ptr(), grad_C.data_ptr(), grad_x.data_ptr(), scratch.data_ptr())
    torch.sum(grad_A_rows, 0, out=grad_A)
    return grad_delta, grad_A, grad_B, grad_C, grad_x


_LIB.impl("diagonal_scan", _diagonal_cpu, "CPU")
_LIB.impl("diagonal_scan_backward", _diagonal_backward_cpu, "CPU")
_LIB.impl("selective_scan", _selective_cpu, "CPU")
_LIB.impl("selective_scan_backward", _selective_backward_cpu, "CPU")
torch.library.register_fake("harness::diagonal_scan", _diagonal_fake, lib=_LIB)
torch.library.register_fake("harness::diagonal_scan_backward", _diagonal_backward_fake, lib=_LIB)
torch.library.register_fake("harness::selective_scan", _selective_fake, lib=_LIB)
torch.library.register_fake("harness::selective_scan_backward", _selective_backward_fake, lib=_LIB)


# --------------------------------------------------------------------------------------------
# autograd and the entry points
# --------------------------------------------------------------------------------------------

class _DiagonalScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, pairs):
        h = torch.ops.harness.diagonal_scan(a, b, h0, pairs)
        ctx.save_for_backward(a, h0, h)
        ctx.pairs = pairs
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        a, h0, h = ctx.saved_tensors
        grad_a, grad_b, grad_h0 = torch.ops.harness.diagonal_scan_backward(grad_h, a, h0, h, ctx.pairs)
        return grad_a, grad_b, grad_h0, None


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta, A, B, C, x, chunk):
        y, checkpoints = torch.ops.harness.selective_scan(delta, A, B, C, x, chunk)
        ctx.save_for_backward(delta, A, B, C, x, checkpoints)
        ctx.chunk = chunk
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        *saved, checkpoints = ctx.saved_tensors
        return (*torch.ops.harness.selective_scan_backward(grad_y, *saved, checkpoints, ctx.chunk), None)


def diagonal_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All h_t of h_t = a_t ⊙ h_{t−1} + b_t along dim 1 for a, b (batch, length, *state), real or complex
    (float32/64, complex64/128), from ``h0`` (batch, *state; None: zero); differentiable in a, b and h0.

    ``a`` may be broadcast (e.g. one λ for all steps); it is materialised. Raises ValueError for wrong
    shapes or dtypes, :class:`~.build.KernelsUnavailable` where the kernels cannot be loaded."""
    if not isinstance(b, torch.Tensor) or b.dim() < 3:
        raise ValueError(f"diagonal_scan: b must be (batch, length, *state), got "
                         f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
    if not isinstance(a, torch.Tensor) or a.dtype != b.dtype:
        raise ValueError(f"diagonal_scan: a must be a tensor of b's dtype {b.dtype}, got "
                         f"{a.dtype if isinstance(a, torch.Tensor) else type(a).__name__}")
    try:
        a = a.expand_as(b)
    except RuntimeError:
        raise ValueError(f"diagonal_scan: a of shape {tuple(a.shape)} does not broadcast to b's "
                         f"{tuple(b.shape)}") from None
    if h0 is None:
        h0 = b.new_zeros(b.shape[:1] + b.shape[2:])
    elif tuple(h0.shape) != tuple(b.shape[:1] + b.shape[2:]) or h0.dtype != b.dtype:
        raise ValueError(f"diagonal_scan: h0 must be {tuple(b.shape[:1] + b.shape[2:])} of dtype {b.dtype}, "
                         f"got {tuple(h0.shape)} {h0.dtype}")
    pairs = b.is_complex()
    batch, length = b.shape[:2]

    def flat(t: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
        return (torch.view_as_real(t.contiguous()) if pairs else t).reshape(*rows, -1)

    h = _DiagonalScan.apply(flat(a, (batch, length)), flat(b, (batch, length)), flat(h0, (batch,)), pairs)
    if pairs:
        return torch.view_as_complex(h.view(*b.shape, 2))
    return h.view(b.shape)


def selective_scan(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, x: torch.Tensor,
                   chunk: int = CHUNK) -> torch.Tensor:
    """Mamba's S6 recurrence without its (batch, length, D, N) states: y (batch, length, D) with
    y_t[d] = Σ_n C_t[n] h_t[d, n], h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t−1}[d, n] + Δ_t[d] x_t[d] B_t[n], h_{−1} = 0.

    ``delta``, ``x`` (batch, length, D); ``A`` (D, N); ``B``, ``C`` (batch, length, N); differentiable in all
    five. Keeps the state every ``chunk`` steps and recomputes the rest in backward. Raises ValueError for
    wrong shapes or dtypes, :class:`~.build.KernelsUnavailable` where the kernels cannot be loaded."""
    return _SelectiveScan.apply(delta, A, B, C, x, int(chunk))
