"""Whole-sequence kernels of the built-in cells as torch operators, and their differentiable entry point.

Why: at batch 32, hidden 64, a Python loop over time spends more on per-step dispatch than on
arithmetic. Here one large GEMM makes every step's input-side pre-activations, a C loop over time
does each step's small recurrent product (through torch's own BLAS) and the fused pointwise step,
and backward runs a C loop over time the other way; the weight and input gradients are then large
GEMMs over all steps (docs/performance.md, "Whole-sequence kernels").

Operators (``torch.library``; ``cell`` is ``rnn``, ``gru``, ``peephole`` or ``cifg``):

- ``harness::sequence_forward(cell, gates_x, w_hh, b_hh, peepholes) -> (h, c, saved)``: ``gates_x``
  (T, B, G*H) time-major input-side pre-activations (``W_ih x_t + b_ih``, plus ``b_hh`` except for the
  GRU), overwritten as scratch; returns the states h (T, B, H), c (T, B, H; empty for rnn and GRU) and
  what backward needs. The initial state is zero.
- ``harness::sequence_backward(cell, grad_h, h, c, saved, w_hh, peepholes, peephole_grad)
  -> (grad_gates_x, grad_gates_h, grad_peepholes)``: the gradients of the input-side and recurrent-side
  pre-activations (the latter only for the GRU, whose reset gate multiplies the recurrent part; empty
  otherwise, where both are equal) and of the peephole weights (empty unless asked for).

Equations: docs/models.md; the eager equations of the cells remain the reference (tests compare).
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import NamedTuple

import torch
from harness.plugins.kernels import build, ops


class _Cell(NamedTuple):
    gates: int  # gate blocks G
    cell_state: bool  # whether the state has a c besides h
    saved: int  # width of the per-step values kept for backward, in units of H


CELLS = {"rnn": _Cell(1, False, 0), "gru": _Cell(3, False, 4), "peephole": _Cell(4, True, 5),
         "cifg": _Cell(3, True, 4)}

_LIB = torch.library.Library("harness", "FRAGMENT")
_LIB.define("sequence_forward(str cell, Tensor(a!) gates_x, Tensor w_hh, Tensor b_hh, Tensor peepholes) "
            "-> (Tensor, Tensor, Tensor)")
_LIB.define("sequence_backward(str cell, Tensor grad_h, Tensor h, Tensor c, Tensor saved, Tensor w_hh, "
            "Tensor peepholes, bool peephole_grad) -> (Tensor, Tensor, Tensor)")


# --------------------------------------------------------------------------------------------
# checks (the C loops index by T, B and H alone)
# --------------------------------------------------------------------------------------------

def _check(op: str, cell: str, gates_x: torch.Tensor, w_hh: torch.Tensor, **tensors: tuple[torch.Tensor, tuple]):
    """Check the cell name, ``gates_x`` (T, B, G*H) and ``w_hh`` (G*H, H), and that each named tensor has
    the shape given (in terms of T, B, H; ``()`` means empty). Returns (cell spec, T, B, H)."""
    if cell not in CELLS:
        raise ValueError(f"{op}: unknown cell {cell!r} (one of {', '.join(CELLS)})")
    spec = CELLS[cell]
    if not isinstance(w_hh, torch.Tensor) or w_hh.dim() != 2 or w_hh.shape[0] != spec.gates * w_hh.shape[1]:
        got = tuple(w_hh.shape) if isinstance(w_hh, torch.Tensor) else type(w_hh).__name__
        raise ValueError(f"{op}: w_hh must have shape ({spec.gates} * hidden, hidden) for {cell}, got {got}")
    hidden = w_hh.shape[1]
    if not isinstance(gates_x, torch.Tensor) or gates_x.dim() != 3 or gates_x.shape[2] != spec.gates * hidden \
            or gates_x.shape[0] < 1:
        got = tuple(gates_x.shape) if isinstance(gates_x, torch.Tensor) else type(gates_x).__name__
        raise ValueError(f"{op}: gates_x must have shape (length >= 1, batch, {spec.gates * hidden}), got {got}")
    length, batch, _ = gates_x.shape
    if gates_x.dtype not in ops._DTYPES:
        raise ValueError(f"{op}: dtype {gates_x.dtype} is not supported (float32 or float64)")
    if gates_x.device.type != "cpu":
        raise ValueError(f"{op}: the fused kernels run on the CPU, gates_x is on {gates_x.device}")
    sizes = {"T": length, "B": batch, "H": hidden, "G": spec.gates, "S": spec.saved}
    for name, (tensor, shape) in {"w_hh": (w_hh, tuple(w_hh.shape)), **tensors}.items():
        want = tuple(_extent(extent, sizes) for extent in shape) if shape else (0,)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != want:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{op}: {name} must have shape {want} for {cell} with gates_x of shape "
                             f"{tuple(gates_x.shape)}, got {got}")
        if tensor.dtype != gates_x.dtype or tensor.device != gates_x.device:
            raise ValueError(f"{op}: {name} is {tensor.dtype} on {tensor.device}, gates_x {gates_x.dtype} on "
                             f"{gates_x.device} (all must be equal)")
    return spec, length, batch, hidden


def _extent(extent: str | int, sizes: dict[str, int]) -> int:
    """An extent written as an int or as a product of size letters, e.g. ``"G*H"`` -> G times H."""
    if isinstance(extent, int):
        return extent
    value = 1
    for letter in extent.split("*"):
        value *= sizes[letter] if letter in sizes else int(letter)
    return value


def _state_shape(present: bool) -> tuple:
    return ("T", "B", "H") if present else ()


def _peephole_shape(cell: str) -> tuple:
    return (3, "H") if cell == "peephole" else ()


# --------------------------------------------------------------------------------------------
# the operators' CPU and fake kernels
# --------------------------------------------------------------------------------------------

def _empty(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return like.new_empty(shape) if shape else like.new_empty(0)


def _forward_fake(cell: str, gates_x: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, peepholes: torch.Tensor):
    spec, length, batch, hidden = _check("harness::sequence_forward", cell, gates_x, w_hh, b_hh=(b_hh, ("G*H",)),
                                         peepholes=(peepholes, _peephole_shape(cell)))
    c = _empty(gates_x, length, batch, hidden) if spec.cell_state else _empty(gates_x)
    saved = _empty(gates_x, length, batch, spec.saved * hidden) if spec.saved else _empty(gates_x)
    return _empty(gates_x, length, batch, hidden), c, saved


def _forward_cpu(cell: str, gates_x: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, peepholes: torch.Tensor):
    h, c, saved = _forward_fake(cell, gates_x, w_hh, b_hh, peepholes)
    if not gates_x.is_contiguous():
        raise ValueError("harness::sequence_forward: gates_x must be contiguous (it is overwritten in place)")
    length, batch, hidden = h.shape
    w_hh, b_hh, peepholes = w_hh.contiguous(), b_hh.contiguous(), peepholes.contiguous()
    kernel = _kernel(f"{cell}_sequence_forward", gates_x.dtype)
    sizes, x, w = (length, batch, hidden), gates_x.data_ptr(), w_hh.data_ptr()
    if cell == "rnn":
        kernel(*sizes, x, w, h.data_ptr())
    elif cell == "gru":
        recurrent = _empty(h, batch, 3 * hidden)  # kept alive while the kernel writes it
        kernel(*sizes, x, w, b_hh.data_ptr(), h.data_ptr(), saved.data_ptr(), recurrent.data_ptr())
    else:
        zero = h.new_zeros(batch, hidden)
        extra = (peepholes.data_ptr(),) if cell == "peephole" else ()
        kernel(*sizes, x, w, *extra, h.data_ptr(), c.data_ptr(), saved.data_ptr(), zero.data_ptr())
    return h, c, saved


def _backward_fake(cell: str, grad_h: torch.Tensor, h: torch.Tensor, c: torch.Tensor, saved: torch.Tensor,
                   w_hh: torch.Tensor, peepholes: torch.Tensor, peephole_grad: bool):
    if not isinstance(h, torch.Tensor) or h.dim() != 3:
        raise ValueError(f"harness::sequence_backward: h must be a (length, batch, hidden) tensor, got "
                         f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
    gates = CELLS[cell].gates if cell in CELLS else 1
    grad_x = h.new_empty(h.shape[0], h.shape[1], gates * h.shape[2])
    spec, length, batch, hidden = _check(
        "harness::sequence_backward", cell, grad_x, w_hh, grad_h=(grad_h, ("T", "B", "H")), h=(h, ("T", "B", "H")),
        c=(c, _state_shape(CELLS[cell].cell_state)), saved=(saved, ("T", "B", "S*H") if CELLS[cell].saved else ()),
        peepholes=(peepholes, _peephole_shape(cell)))
    grad_r = torch.empty_like(grad_x) if cell == "gru" else _empty(h)
    grad_p = torch.zeros_like(peepholes) if cell == "peephole" and peephole_grad else _empty(h)
    return grad_x, grad_r, grad_p


def _backward_cpu(cell: str, grad_h: torch.Tensor, h: torch.Tensor, c: torch.Tensor, saved: torch.Tensor,
                  w_hh: torch.Tensor, peepholes: torch.Tensor, peephole_grad: bool):
    grad_x, grad_r, grad_p = _backward_fake(cell, grad_h, h, c, saved, w_hh, peepholes, peephole_grad)
    length, batch, hidden = h.shape
    grad_h, h, c, saved = grad_h.contiguous(), h.contiguous(), c.contiguous(), saved.contiguous()
    w_hh, peepholes = w_hh.contiguous(), peepholes.contiguous()
    kernel = _kernel(f"{cell}_sequence_backward", h.dtype)
    sizes, w = (length, batch, hidden), w_hh.data_ptr()
    buffers = [h.new_empty(batch, hidden) for _ in range(3)] + [h.new_zeros(batch, hidden)]  # alive until return
    scratch = [buffer.data_ptr() for buffer in buffers]
    if cell == "rnn":
        kernel(*sizes, grad_h.data_ptr(), h.data_ptr(), w, grad_x.data_ptr(), scratch[0])
    elif cell == "gru":
        kernel(*sizes, grad_h.data_ptr(), h.data_ptr(), saved.data_ptr(), w, grad_x.data_ptr(), grad_r.data_ptr(),
               *scratch[:2])
    else:
        extra = (peepholes.data_ptr(),) if cell == "peephole" else ()
        p_out = (grad_p.data_ptr() if grad_p.numel() else None,) if cell == "peephole" else ()
        kernel(*sizes, grad_h.data_ptr(), c.data_ptr(), saved.data_ptr(), w, *extra, grad_x.data_ptr(), *p_out,
               *scratch)
    return grad_x, grad_r, grad_p


_LIB.impl("sequence_forward", _forward_cpu, "CPU")
_LIB.impl("sequence_backward", _backward_cpu, "CPU")
torch.library.register_fake("harness::sequence_forward", _forward_fake, lib=_LIB)
torch.library.register_fake("harness::sequence_backward", _backward_fake, lib=_LIB)
_FORWARD = torch.ops.harness.sequence_forward.default
_BACKWARD = torch.ops.harness.sequence_backward.default


# --------------------------------------------------------------------------------------------
# the BLAS handed to the C library
# --------------------------------------------------------------------------------------------

_BLAS_LOCK = threading.Lock()
_blas_for: ctypes.CDLL | None = None  # the library that has been given its gemm functions
_blas_name = "none"


def _torch_gemm() -> tuple[int | None, int | None]:
    """Addresses of the Fortran ``sgemm_``/``dgemm_`` exported by torch's CPU library (MKL), or Nones."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        torch_cpu = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        return (ctypes.cast(torch_cpu.sgemm_, ctypes.c_void_p).value,
                ctypes.cast(torch_cpu.dgemm_, ctypes.c_void_p).value)
    except (OSError, AttributeError):
        return None, None


def _blas_agrees(lib: ctypes.CDLL) -> bool:
    """A tiny rnn sequence through the BLAS gemm equals the same computed by torch (a wrong calling
    convention, e.g. 64-bit integer sizes, would not)."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        w = torch.randn(5, 5, generator=gen, dtype=dtype) * 0.3
        gates_x = torch.randn(3, 2, 5, generator=gen, dtype=dtype)
        want, h = [], torch.zeros(2, 5, dtype=dtype)
        for t in range(3):
            h = torch.tanh(gates_x[t] + h @ w.t())
            want.append(h)
        got, scratch = torch.empty(3, 2, 5, dtype=dtype), gates_x.clone()
        getattr(lib, f"rnn_sequence_forward_{ops._DTYPES[dtype]}")(3, 2, 5, scratch.data_ptr(), w.data_ptr(),
                                                                   got.data_ptr())
        if not torch.allclose(got, torch.stack(want), rtol=1e-4, atol=1e-5):
            return False
    return True


def _kernel(name: str, dtype: torch.dtype):
    """The C function ``name`` for ``dtype``, after handing the library its BLAS once per load."""
    global _blas_for, _blas_name
    lib = build.library()
    if _blas_for is not lib:
        with _BLAS_LOCK:
            if _blas_for is not lib:
                lib.harness_set_blas.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
                lib.harness_set_blas.restype = None
                sgemm, dgemm = _torch_gemm()
                name_found = "torch (MKL) sgemm_/dgemm_"
                if sgemm is None or dgemm is None:
                    sgemm, dgemm, name_found = None, None, "none"
                lib.harness_set_blas(sgemm, dgemm)
                if sgemm is not None and not _blas_agrees(lib):
                    lib.harness_set_blas(None, None)
                    name_found = "none (torch's gemm gave wrong results through the Fortran interface)"
                _blas_for, _blas_name = lib, name_found
    return getattr(lib, f"{name}_{ops._DTYPES[dtype]}")


def blas() -> str:
    """Which gemm the sequence kernels' small products use (``"none"``: the plain C loops); loads them."""
    _kernel("rnn_sequence_forward", torch.float32)
    return _blas_name


# --------------------------------------------------------------------------------------------
# autograd and the entry point
# --------------------------------------------------------------------------------------------

class _Sequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, inputs, w_ih, b_ih, w_hh, b_hh, peepholes):
        length, batch, size = inputs.shape
        bias = b_ih if cell == "gru" else b_ih + b_hh
        gates_x = torch.addmm(bias, inputs.reshape(length * batch, size), w_ih.t()).view(length, batch, -1)
        h, c, saved = _FORWARD(cell, gates_x, w_hh, b_hh, peepholes)
        ctx.save_for_backward(inputs, w_ih, w_hh, peepholes, h, c, saved)
        ctx.cell = cell
        ctx.set_materialize_grads(True)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        inputs, w_ih, w_hh, peepholes, h, c, saved = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x, grad_r, grad_p = _BACKWARD(ctx.cell, grad_h, h, c, saved, w_hh, peepholes, bool(need[6]))
        length, batch, size = inputs.shape
        rows = grad_x.view(length * batch, -1)
        rows_r = rows if grad_r.numel() == 0 else grad_r.view(length * batch, -1)
        hidden = h.shape[2]
        grads: list[torch.Tensor | None] = [None] * 7
        if need[1]:
            grads[1] = torch.mm(rows, w_ih).view(length, batch, size)
        if need[2]:
            grads[2] = torch.mm(rows.t(), inputs.reshape(length * batch, size))
        if need[3]:
            grads[3] = rows.sum(0)
        if need[4]:
            grads[4] = torch.mm(rows_r[batch:].t(), h[:-1].reshape(-1, hidden))  # sum of dR_t h_{t-1}^T
        if need[5]:
            grads[5] = rows_r.sum(0)
        if need[6]:
            grads[6] = grad_p
        return tuple(grads)


def sequence(cell: str, inputs: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor, w_hh: torch.Tensor,
             b_hh: torch.Tensor, peepholes: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``cell`` (rnn, gru, peephole, cifg) over ``inputs`` (B, T, I) from a zero state; returns every
    h_t as (B, T, H) (a transposed view of a time-major tensor), differentiable in all arguments.

    Parameters in ``torch.nn`` layout: ``w_ih`` (G*H, I), ``w_hh`` (G*H, H), biases (G*H,); ``peepholes``
    (3, H) [p_i, p_f, p_o] for the peephole cell (None: zero). Raises ValueError for wrong shapes,
    dtypes (float32/float64, all equal) or devices (CPU), :class:`~.build.KernelsUnavailable` where the
    kernels cannot be loaded."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r} (one of {', '.join(CELLS)})")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3:
        raise ValueError(f"inputs must be a (batch, length, features) tensor, got "
                         f"{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__}")
    if inputs.shape[1] < 1:
        raise ValueError(f"inputs must have length >= 1, got shape {tuple(inputs.shape)}")
    if w_ih.dim() != 2 or w_ih.shape[1] != inputs.shape[2] or b_ih.shape != (w_ih.shape[0],) \
            or b_hh.shape != (w_ih.shape[0],):
        raise ValueError(f"w_ih must be (gates * hidden, {inputs.shape[2]}) and the biases (gates * hidden,), got "
                         f"{tuple(w_ih.shape)}, {tuple(b_ih.shape)}, {tuple(b_hh.shape)}")
    if peepholes is None:
        peepholes = w_hh.new_zeros(3, w_hh.shape[1]) if cell == "peephole" else w_hh.new_empty(0)
    time_major = inputs.transpose(0, 1).contiguous()
    return _Sequence.apply(cell, time_major, w_ih, b_ih, w_hh, b_hh, peepholes).transpose(0, 1)
