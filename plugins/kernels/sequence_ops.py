"""Whole-sequence kernels of the built-in cells as torch operators, and their differentiable entry point.

Why: at batch 32, hidden 64, a Python loop over time spends more on per-step dispatch than on
arithmetic. Here a C loop over time does each step's product of [x_t, h_{t-1}] with [W_ih W_hh]
(through torch's own BLAS) and the fused pointwise step, and backward runs a C loop the other way
(the pointwise backward and the recurrent product for dL/dh_{t-1}); the weight gradients are then one
large GEMM over all steps (docs/performance.md, "Whole-sequence kernels").

Operators (``torch.library``; ``cell`` is ``rnn``, ``gru``, ``peephole``, ``cifg``, ``slstm`` or
``slstm-exp`` (the sLSTM with an exponential forget gate); G gate blocks, F = I + H):

- ``harness::sequence_forward(cell, xh, weight, bias_x, b_hh, peepholes, keep=True) -> (c, saved)``: ``xh``
  (T + 1, B, F) holds [x_t, h_{t-1}] in row t; the caller fills the x parts and zeroes the h part of
  row 0 (the initial state is zero), the kernel writes every h_t into row t + 1 (``xh`` is mutated).
  ``weight`` (G*H, F) is [W_ih W_hh], ``bias_x`` its bias (``b_ih + b_hh``; the GRU: ``b_ih``), ``b_hh``
  (read by the GRU only), ``peepholes`` (3, H) or empty. Returns c (T, B, H; empty for rnn and GRU)
  and what backward needs (T, B, S*H). With ``keep=False`` (no gradient will be taken) only what the
  next step reads is kept: c has min(T, 2) rows and saved 1 (the sLSTM's, whose next step reads its
  n and m there, min(T, 2)), the same numbers in h either way.
- ``harness::sequence_backward(cell, grad_h, xh, c, saved, weight, peepholes, peephole_grad)
  -> (grad_gates, grad_recurrent, grad_peepholes)``: ``grad_h`` (T, B, H), any strides with unit
  stride last; the gradients of the pre-activations (T, B, G*H), of the GRU's recurrent-side
  pre-activations (its reset gate multiplies the recurrent part; empty for the others, where both
  are equal) and of the peephole weights (empty unless asked for).

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
    kernel: str  # the C functions' name: KERNEL_sequence_forward, KERNEL_sequence_backward
    saved_carried: bool = False  # whether the next step reads the saved values (the sLSTM's n and m)


CELLS = {"rnn": _Cell(1, False, 0, "rnn"), "gru": _Cell(3, False, 4, "gru"), "peephole": _Cell(4, True, 5, "peephole"),
         "cifg": _Cell(3, True, 4, "cifg"), "slstm": _Cell(4, True, 7, "slstm", True),
         "slstm-exp": _Cell(4, True, 7, "slstm", True)}

_LIB = torch.library.Library("harness", "FRAGMENT")
_LIB.define("sequence_forward(str cell, Tensor(a!) xh, Tensor weight, Tensor bias_x, Tensor b_hh, "
            "Tensor peepholes, bool keep=True) -> (Tensor, Tensor)")
_LIB.define("sequence_backward(str cell, Tensor grad_h, Tensor xh, Tensor c, Tensor saved, Tensor weight, "
            "Tensor peepholes, bool peephole_grad) -> (Tensor, Tensor, Tensor)")


# --------------------------------------------------------------------------------------------
# checks (the C loops index by T, B and H alone)
# --------------------------------------------------------------------------------------------

def _check(op: str, cell: str, xh: torch.Tensor, weight: torch.Tensor, **tensors: tuple[torch.Tensor, tuple]):
    """Check the cell name, ``weight`` (G*H, I + H), ``xh`` (T + 1, B, I + H), and that each named tensor
    has the shape given (in terms of T, B, H, G, S; ``()`` means empty). Returns (spec, T, B, H, I)."""
    if cell not in CELLS:
        raise ValueError(f"{op}: unknown cell {cell!r} (one of {', '.join(CELLS)})")
    spec = CELLS[cell]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] % spec.gates \
            or weight.shape[1] <= weight.shape[0] // spec.gates:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{op}: weight must have shape ({spec.gates} * hidden, inputs + hidden) for {cell}, got {got}")
    hidden = weight.shape[0] // spec.gates
    width = weight.shape[1]
    if not isinstance(xh, torch.Tensor) or xh.dim() != 3 or xh.shape[2] != width or xh.shape[0] < 2:
        got = tuple(xh.shape) if isinstance(xh, torch.Tensor) else type(xh).__name__
        raise ValueError(f"{op}: xh must have shape (length + 1 >= 2, batch, {width}), got {got}")
    length, batch = xh.shape[0] - 1, xh.shape[1]
    if xh.dtype not in ops._DTYPES:
        raise ValueError(f"{op}: dtype {xh.dtype} is not supported (float32 or float64)")
    if xh.device.type != "cpu":
        raise ValueError(f"{op}: the fused kernels run on the CPU, xh is on {xh.device}")
    sizes = {"T": length, "B": batch, "H": hidden, "G": spec.gates, "S": spec.saved}
    for name, (tensor, shape) in {"weight": (weight, tuple(weight.shape)), **tensors}.items():
        want = tuple(_extent(extent, sizes) for extent in shape) if shape else (0,)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != want:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{op}: {name} must have shape {want} for {cell} with xh of shape "
                             f"{tuple(xh.shape)}, got {got}")
        if tensor.dtype != xh.dtype or tensor.device != xh.device:
            raise ValueError(f"{op}: {name} is {tensor.dtype} on {tensor.device}, xh {xh.dtype} on "
                             f"{xh.device} (all must be equal)")
    return spec, length, batch, hidden, width - hidden


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


def _forward_fake(cell: str, xh: torch.Tensor, weight: torch.Tensor, bias_x: torch.Tensor, b_hh: torch.Tensor,
                  peepholes: torch.Tensor, keep: bool = True):
    spec, length, batch, hidden, _ = _check("harness::sequence_forward", cell, xh, weight, bias_x=(bias_x, ("G*H",)),
                                            b_hh=(b_hh, ("G*H",)), peepholes=(peepholes, _peephole_shape(cell)))
    c = _empty(xh, length if keep else min(length, 2), batch, hidden) if spec.cell_state else _empty(xh)
    saved_rows = length if keep else min(length, 2) if spec.saved_carried else 1
    saved = _empty(xh, saved_rows, batch, spec.saved * hidden) if spec.saved else _empty(xh)
    return c, saved


def _forward_cpu(cell: str, xh: torch.Tensor, weight: torch.Tensor, bias_x: torch.Tensor, b_hh: torch.Tensor,
                 peepholes: torch.Tensor, keep: bool = True):
    c, saved = _forward_fake(cell, xh, weight, bias_x, b_hh, peepholes, keep)
    if not xh.is_contiguous():
        raise ValueError("harness::sequence_forward: xh must be contiguous (the kernel writes h_t into it)")
    spec, length, batch, hidden, inputs = _check("harness::sequence_forward", cell, xh, weight)
    weight, bias_x, b_hh, peepholes = (t.contiguous() for t in (weight, bias_x, b_hh, peepholes))
    kernel = _kernel(f"{spec.kernel}_sequence_forward", xh.dtype)
    scratch = xh.new_empty(batch, 2 * spec.gates * hidden + hidden)  # alive until the kernel returns
    zero = xh.new_zeros(batch, (spec.saved if spec.saved_carried else 1) * hidden)  # the state before step 0
    sizes = (length, batch, hidden, inputs)
    operands = (xh.data_ptr(), weight.data_ptr(), bias_x.data_ptr())
    if cell == "rnn":  # keeps nothing but h
        kernel(*sizes, *operands, scratch.data_ptr())
    elif cell == "gru":
        kernel(*sizes, int(keep), *operands, b_hh.data_ptr(), saved.data_ptr(), scratch.data_ptr())
    elif spec.kernel == "slstm":
        kernel(*sizes, int(keep), int(cell == "slstm-exp"), *operands, c.data_ptr(), saved.data_ptr(),
               scratch.data_ptr(), zero.data_ptr())
    else:
        extra = (peepholes.data_ptr(),) if cell == "peephole" else ()
        kernel(*sizes, int(keep), *operands, *extra, c.data_ptr(), saved.data_ptr(), scratch.data_ptr(),
               zero.data_ptr())
    return c, saved


def _backward_fake(cell: str, grad_h: torch.Tensor, xh: torch.Tensor, c: torch.Tensor, saved: torch.Tensor,
                   weight: torch.Tensor, peepholes: torch.Tensor, peephole_grad: bool):
    spec, length, batch, hidden, _ = _check(
        "harness::sequence_backward", cell, xh, weight, grad_h=(grad_h, ("T", "B", "H")),
        c=(c, _state_shape(CELLS[cell].cell_state)), saved=(saved, ("T", "B", "S*H") if CELLS[cell].saved else ()),
        peepholes=(peepholes, _peephole_shape(cell)))
    grad_x = xh.new_empty(length, batch, spec.gates * hidden)
    grad_r = torch.empty_like(grad_x) if cell == "gru" else _empty(xh)
    grad_p = torch.zeros_like(peepholes) if cell == "peephole" and peephole_grad else _empty(xh)
    return grad_x, grad_r, grad_p


def _backward_cpu(cell: str, grad_h: torch.Tensor, xh: torch.Tensor, c: torch.Tensor, saved: torch.Tensor,
                  weight: torch.Tensor, peepholes: torch.Tensor, peephole_grad: bool):
    grad_x, grad_r, grad_p = _backward_fake(cell, grad_h, xh, c, saved, weight, peepholes, peephole_grad)
    _, length, batch, hidden, inputs = _check("harness::sequence_backward", cell, xh, weight)
    if grad_h.stride(2) != 1:  # any other strides are passed on (a batch-first gradient needs no copy)
        grad_h = grad_h.contiguous()
    xh, c, saved, weight, peepholes = (t.contiguous() for t in (xh, c, saved, weight, peepholes))
    kernel = _kernel(f"{CELLS[cell].kernel}_sequence_backward", xh.dtype)
    buffers = [xh.new_empty(batch, hidden) for _ in range(3)] + [xh.new_zeros(batch, hidden)]  # alive until return
    scratch = [buffer.data_ptr() for buffer in buffers]
    head = (length, batch, hidden, inputs, grad_h.stride(0), grad_h.stride(1), grad_h.data_ptr())
    if cell == "rnn":
        kernel(*head, xh.data_ptr(), weight.data_ptr(), grad_x.data_ptr(), scratch[0])
    elif cell == "gru":
        kernel(*head, xh.data_ptr(), saved.data_ptr(), weight.data_ptr(), grad_x.data_ptr(), grad_r.data_ptr(),
               *scratch[:2])
    else:
        extra = (peepholes.data_ptr(),) if cell == "peephole" else ()
        p_out = (grad_p.data_ptr() if grad_p.numel() else None,) if cell == "peephole" else ()
        kernel(*head, c.data_ptr(), saved.data_ptr(), weight.data_ptr(), *extra, grad_x.data_ptr(), *p_out,
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
        w = torch.randn(5, 7, generator=gen, dtype=dtype) * 0.3  # [W_ih W_hh], 2 inputs, 5 units
        x = torch.randn(3, 2, 2, generator=gen, dtype=dtype)
        want, h = [], torch.zeros(2, 5, dtype=dtype)
        for t in range(3):
            h = torch.tanh(torch.cat([x[t], h], 1) @ w.t())
            want.append(h)
        xh, bias = torch.zeros(4, 2, 7, dtype=dtype), torch.zeros(5, dtype=dtype)
        scratch = torch.empty(2, 15, dtype=dtype)
        xh[:3, :, :2] = x
        getattr(lib, f"rnn_sequence_forward_{ops._DTYPES[dtype]}")(3, 2, 5, 2, xh.data_ptr(), w.data_ptr(),
                                                                   bias.data_ptr(), scratch.data_ptr())
        if not torch.allclose(xh[1:, :, 2:], torch.stack(want), rtol=1e-4, atol=1e-5):
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
    def forward(ctx, cell, inputs, w_ih, b_ih, w_hh, b_hh, peepholes, keep):
        batch, length, size = inputs.shape
        hidden = w_hh.shape[1]
        xh = inputs.new_empty(length + 1, batch, size + hidden)
        xh[:length, :, :size] = inputs.transpose(0, 1)
        xh[length, :, :size] = 0
        xh[0, :, size:] = 0
        weight = torch.cat([w_ih, w_hh], 1)
        c, saved = _FORWARD(cell, xh, weight, b_ih if cell == "gru" else b_ih + b_hh, b_hh, peepholes, keep)
        if keep:
            ctx.save_for_backward(xh, weight, peepholes, c, saved)
        ctx.cell = cell
        ctx.set_materialize_grads(True)
        return xh[1:, :, size:].transpose(0, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        xh, weight, peepholes, c, saved = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x, grad_r, grad_p = _BACKWARD(ctx.cell, grad_h.transpose(0, 1), xh, c, saved, weight, peepholes,
                                           bool(need[6]))
        length, batch, width = xh.shape[0] - 1, xh.shape[1], xh.shape[2]
        size = width - weight.shape[0] // CELLS[ctx.cell].gates
        rows = grad_x.view(length * batch, -1)
        rows_r = rows if grad_r.numel() == 0 else grad_r.view(length * batch, -1)
        operands = xh[:length].view(length * batch, width)  # row t: [x_t, h_{t-1}]
        grads: list[torch.Tensor | None] = [None] * 8  # cell and keep take none
        if need[1]:
            grads[1] = torch.mm(rows, weight[:, :size]).view(length, batch, size).transpose(0, 1)
        if rows_r is rows and (need[2] or need[4]):  # one product for both weights
            grad_w = torch.mm(rows.t(), operands)
            grads[2], grads[4] = grad_w[:, :size], grad_w[:, size:]
        else:
            grads[2] = torch.mm(rows.t(), operands[:, :size]) if need[2] else None
            grads[4] = torch.mm(rows_r.t(), operands[:, size:]) if need[4] else None
        if need[3] or need[5]:
            bias_grad = rows.sum(0)
            grads[3] = bias_grad if need[3] else None
            if need[5]:  # the same sum except for the GRU (a copy: two parameters must not share one tensor)
                grads[5] = rows_r.sum(0) if rows_r is not rows else (bias_grad.clone() if need[3] else bias_grad)
        if need[6]:
            grads[6] = grad_p
        return tuple(grads)


def sequence(cell: str, inputs: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor, w_hh: torch.Tensor,
             b_hh: torch.Tensor, peepholes: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``cell`` (rnn, gru, peephole, cifg, slstm, slstm-exp) over ``inputs`` (B, T, I) from a zero state;
    returns every h_t as (B, T, H) (a strided view of the kernel's time-major buffer), differentiable in all
    arguments.

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
    gates = CELLS[cell].gates
    if w_hh.dim() != 2 or w_hh.shape[0] != w_ih.shape[0] or w_hh.shape[0] != gates * w_hh.shape[1]:
        raise ValueError(f"w_hh must have shape ({gates} * hidden, hidden) for {cell}, as many rows as w_ih "
                         f"{tuple(w_ih.shape)}, got {tuple(w_hh.shape)}")
    if peepholes is None:
        peepholes = w_hh.new_zeros(3, w_hh.shape[1]) if cell == "peephole" else w_hh.new_empty(0)
    tensors = {"inputs": inputs, "w_ih": w_ih, "b_ih": b_ih, "w_hh": w_hh, "b_hh": b_hh, "peepholes": peepholes}
    if len({t.dtype for t in tensors.values()}) > 1:
        raise ValueError("inputs and parameters must have one dtype, got "
                         + ", ".join(f"{name} {t.dtype}" for name, t in tensors.items()))
    # without a gradient to take (evaluation), the kernel keeps only the last step's c and saved values
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values())
    return _Sequence.apply(cell, inputs, w_ih, b_ih, w_hh, b_hh, peepholes, keep)
