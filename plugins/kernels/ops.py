"""The fused cell steps as torch operators ``harness::*``, and their differentiable entry points.

Operators (``torch.library``; CPU kernels call the C library of :mod:`.build` through ctypes, fake
kernels give shapes to ``torch.compile``/``FakeTensor``):

- ``harness::peephole_step(gates, c_prev, peepholes) -> (h, c, activations)``
- ``harness::peephole_step_backward(grad_h, grad_c, activations, c_prev, c, peepholes, peephole_grad)
  -> (grad_gates, grad_c_prev, grad_peepholes)``
- ``harness::cifg_step(gates, c_prev) -> (h, c, activations)``
- ``harness::cifg_step_backward(grad_h, grad_c, activations, c_prev) -> (grad_gates, grad_c_prev)``

Being operators, they appear by name in ``torch.profiler`` and ``torch.compile`` traces them
without a graph break. Gradients come from one ``torch.autograd.Function`` per step that calls
the forward operator and, in backward, the backward operator: measured against the alternatives
(``torch.library.custom_op``, ``register_autograd`` on the operator, a C++ extension) in
docs/performance.md, it is as fast as the plain ctypes call it replaced.

:func:`peephole_step` and :func:`cifg_step` are the entry points; they and every operator check
shapes, dtypes and devices first (``ValueError``), because the C kernels trust their inputs: a
wrong width must never read or write out of bounds. Non-contiguous inputs are made contiguous.
"""

from __future__ import annotations

import torch
from harness.plugins.kernels import build

_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_LIB = torch.library.Library("harness", "DEF")  # the operator namespace harness::
_LIB.define("peephole_step(Tensor gates, Tensor c_prev, Tensor peepholes) -> (Tensor, Tensor, Tensor)")
_LIB.define("peephole_step_backward(Tensor grad_h, Tensor grad_c, Tensor activations, Tensor c_prev, "
            "Tensor c, Tensor peepholes, bool peephole_grad) -> (Tensor, Tensor, Tensor)")
_LIB.define("cifg_step(Tensor gates, Tensor c_prev) -> (Tensor, Tensor, Tensor)")
_LIB.define("cifg_step_backward(Tensor grad_h, Tensor grad_c, Tensor activations, Tensor c_prev) "
            "-> (Tensor, Tensor)")


# --------------------------------------------------------------------------------------------
# checks (the C kernels index by B and H alone: every extent must be right before they run)
# --------------------------------------------------------------------------------------------

def _fine(c_prev: torch.Tensor, *tensors: tuple[torch.Tensor, int]) -> bool:
    """The fast path of :func:`_check` (a few microseconds less per call): True if all is right."""
    if not (isinstance(c_prev, torch.Tensor) and c_prev.dim() == 2 and c_prev.is_cpu and c_prev.dtype in _DTYPES):
        return False
    batch, hidden = c_prev.shape
    dtype = c_prev.dtype
    for tensor, width in tensors:
        if not (isinstance(tensor, torch.Tensor) and tensor.dtype == dtype and tensor.is_cpu and tensor.shape
                == ((3, -width * hidden) if width < 0 else (batch, width * hidden))):
            return False
    return True


def _check(op: str, c_prev: torch.Tensor, **tensors: tuple[torch.Tensor, int]) -> tuple[int, int]:
    """Check that ``c_prev`` is (B, H) and each named tensor is (B or 3, width * H) like it.

    ``tensors`` maps a name to ``(tensor, width)``; a negative width means ``(3, -width * H)``
    (the peephole weights). Returns (B, H). Raises ValueError naming the offending argument."""
    if _fine(c_prev, *tensors.values()):
        return c_prev.shape
    if not isinstance(c_prev, torch.Tensor) or c_prev.dim() != 2:
        raise ValueError(f"{op}: c_prev must be a (batch, hidden) tensor, got "
                         f"{tuple(c_prev.shape) if isinstance(c_prev, torch.Tensor) else type(c_prev).__name__}")
    batch, hidden = c_prev.shape
    if c_prev.dtype not in _DTYPES:
        raise ValueError(f"{op}: dtype {c_prev.dtype} is not supported (float32 or float64)")
    if c_prev.device.type != "cpu":
        raise ValueError(f"{op}: the fused kernels run on the CPU, c_prev is on {c_prev.device}")
    for name, (tensor, width) in tensors.items():
        rows, columns = (3, -width * hidden) if width < 0 else (batch, width * hidden)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (rows, columns):
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{op}: {name} must have shape ({rows}, {columns}) for c_prev of shape "
                             f"({batch}, {hidden}), got {got}")
        if tensor.dtype != c_prev.dtype:
            raise ValueError(f"{op}: {name} is {tensor.dtype} but c_prev is {c_prev.dtype} (all must be equal)")
        if tensor.device != c_prev.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but c_prev on {c_prev.device}")
    return batch, hidden


def _kernel(name: str, dtype: torch.dtype):
    return getattr(build.library(), f"{name}_{_DTYPES[dtype]}")


# --------------------------------------------------------------------------------------------
# peephole LSTM operators
# --------------------------------------------------------------------------------------------

def _peephole_step_cpu(gates: torch.Tensor, c_prev: torch.Tensor, peepholes: torch.Tensor):
    batch, hidden = _check("harness::peephole_step", c_prev, gates=(gates, 4), peepholes=(peepholes, -1))
    gates, c_prev, peepholes = gates.contiguous(), c_prev.contiguous(), peepholes.contiguous()
    h, c = torch.empty_like(c_prev), torch.empty_like(c_prev)
    activations = c_prev.new_empty(batch, 5 * hidden)
    _kernel("peephole_forward", c_prev.dtype)(batch, hidden, gates.data_ptr(), c_prev.data_ptr(),
                                              peepholes.data_ptr(), h.data_ptr(), c.data_ptr(),
                                              activations.data_ptr())
    return h, c, activations


def _peephole_step_fake(gates: torch.Tensor, c_prev: torch.Tensor, peepholes: torch.Tensor):
    batch, hidden = _check("harness::peephole_step", c_prev, gates=(gates, 4), peepholes=(peepholes, -1))
    return torch.empty_like(c_prev), torch.empty_like(c_prev), c_prev.new_empty(batch, 5 * hidden)


def _peephole_backward_cpu(grad_h: torch.Tensor, grad_c: torch.Tensor, activations: torch.Tensor,
                           c_prev: torch.Tensor, c: torch.Tensor, peepholes: torch.Tensor, peephole_grad: bool):
    batch, hidden = _check("harness::peephole_step_backward", c_prev, grad_h=(grad_h, 1), grad_c=(grad_c, 1),
                           activations=(activations, 5), c=(c, 1), peepholes=(peepholes, -1))
    grad_h, grad_c, activations = grad_h.contiguous(), grad_c.contiguous(), activations.contiguous()
    c_prev, c, peepholes = c_prev.contiguous(), c.contiguous(), peepholes.contiguous()
    grad_gates = c_prev.new_empty(batch, 4 * hidden)
    grad_c_prev = torch.empty_like(c_prev)
    grad_p = torch.zeros_like(peepholes)
    _kernel("peephole_backward", c_prev.dtype)(
        batch, hidden, grad_h.data_ptr(), grad_c.data_ptr(), activations.data_ptr(), c_prev.data_ptr(),
        c.data_ptr(), peepholes.data_ptr(), grad_gates.data_ptr(), grad_c_prev.data_ptr(),
        grad_p.data_ptr() if peephole_grad else None)
    return grad_gates, grad_c_prev, grad_p


def _peephole_backward_fake(grad_h: torch.Tensor, grad_c: torch.Tensor, activations: torch.Tensor,
                            c_prev: torch.Tensor, c: torch.Tensor, peepholes: torch.Tensor, peephole_grad: bool):
    batch, hidden = _check("harness::peephole_step_backward", c_prev, grad_h=(grad_h, 1), grad_c=(grad_c, 1),
                           activations=(activations, 5), c=(c, 1), peepholes=(peepholes, -1))
    return c_prev.new_empty(batch, 4 * hidden), torch.empty_like(c_prev), torch.empty_like(peepholes)


# --------------------------------------------------------------------------------------------
# CIFG operators
# --------------------------------------------------------------------------------------------

def _cifg_step_cpu(gates: torch.Tensor, c_prev: torch.Tensor):
    batch, hidden = _check("harness::cifg_step", c_prev, gates=(gates, 3))
    gates, c_prev = gates.contiguous(), c_prev.contiguous()
    h, c = torch.empty_like(c_prev), torch.empty_like(c_prev)
    activations = c_prev.new_empty(batch, 4 * hidden)
    _kernel("cifg_forward", c_prev.dtype)(batch, hidden, gates.data_ptr(), c_prev.data_ptr(), h.data_ptr(),
                                          c.data_ptr(), activations.data_ptr())
    return h, c, activations


def _cifg_step_fake(gates: torch.Tensor, c_prev: torch.Tensor):
    batch, hidden = _check("harness::cifg_step", c_prev, gates=(gates, 3))
    return torch.empty_like(c_prev), torch.empty_like(c_prev), c_prev.new_empty(batch, 4 * hidden)


def _cifg_backward_cpu(grad_h: torch.Tensor, grad_c: torch.Tensor, activations: torch.Tensor,
                       c_prev: torch.Tensor):
    batch, hidden = _check("harness::cifg_step_backward", c_prev, grad_h=(grad_h, 1), grad_c=(grad_c, 1),
                           activations=(activations, 4))
    grad_h, grad_c = grad_h.contiguous(), grad_c.contiguous()
    activations, c_prev = activations.contiguous(), c_prev.contiguous()
    grad_gates = c_prev.new_empty(batch, 3 * hidden)
    grad_c_prev = torch.empty_like(c_prev)
    _kernel("cifg_backward", c_prev.dtype)(batch, hidden, grad_h.data_ptr(), grad_c.data_ptr(),
                                           activations.data_ptr(), c_prev.data_ptr(), grad_gates.data_ptr(),
                                           grad_c_prev.data_ptr())
    return grad_gates, grad_c_prev


def _cifg_backward_fake(grad_h: torch.Tensor, grad_c: torch.Tensor, activations: torch.Tensor,
                        c_prev: torch.Tensor):
    batch, hidden = _check("harness::cifg_step_backward", c_prev, grad_h=(grad_h, 1), grad_c=(grad_c, 1),
                           activations=(activations, 4))
    return c_prev.new_empty(batch, 3 * hidden), torch.empty_like(c_prev)


for _name, _cpu, _fake in (("peephole_step", _peephole_step_cpu, _peephole_step_fake),
                           ("peephole_step_backward", _peephole_backward_cpu, _peephole_backward_fake),
                           ("cifg_step", _cifg_step_cpu, _cifg_step_fake),
                           ("cifg_step_backward", _cifg_backward_cpu, _cifg_backward_fake)):
    _LIB.impl(_name, _cpu, "CPU")
    torch.library.register_fake(f"harness::{_name}", _fake, lib=_LIB)

# resolved once: calling an OpOverload skips the overload lookup of torch.ops.harness.<name>
_PEEPHOLE = torch.ops.harness.peephole_step.default
_PEEPHOLE_BACKWARD = torch.ops.harness.peephole_step_backward.default
_CIFG = torch.ops.harness.cifg_step.default
_CIFG_BACKWARD = torch.ops.harness.cifg_step_backward.default


# --------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------

def _dense(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """An output's gradient (zeros where autograd passed None because the output was unused)."""
    return torch.zeros_like(like) if grad is None else grad


class _PeepholeStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, c_prev, peepholes, trainable):
        h, c, activations = _PEEPHOLE(gates, c_prev, peepholes)
        ctx.save_for_backward(activations, c_prev, c, peepholes)
        ctx.trainable = trainable
        ctx.set_materialize_grads(False)
        return h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c):
        activations, c_prev, c, peepholes = ctx.saved_tensors
        want_p = ctx.trainable and ctx.needs_input_grad[2]
        grad_gates, grad_c_prev, grad_p = _PEEPHOLE_BACKWARD(_dense(grad_h, c), _dense(grad_c, c), activations,
                                                             c_prev, c, peepholes, want_p)
        return grad_gates, grad_c_prev, grad_p if want_p else None, None


class _CIFGStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, c_prev):
        h, c, activations = _CIFG(gates, c_prev)
        ctx.save_for_backward(activations, c_prev)
        ctx.set_materialize_grads(False)
        return h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c):
        activations, c_prev = ctx.saved_tensors
        return _CIFG_BACKWARD(_dense(grad_h, c_prev), _dense(grad_c, c_prev), activations, c_prev)


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------

_ZEROS: dict[tuple[int, torch.dtype], torch.Tensor] = {}


def _zero_peepholes(hidden: int, dtype: torch.dtype) -> torch.Tensor:
    key = (hidden, dtype)
    if key not in _ZEROS:
        _ZEROS[key] = torch.zeros(3, hidden, dtype=dtype)
    return _ZEROS[key]


def _needs_grad(gates: torch.Tensor, c_prev: torch.Tensor, peepholes: torch.Tensor | None = None) -> bool:
    """Whether autograd must see this step (then the step runs as an autograd function).

    Raises TypeError for a non-tensor (the operators check everything else)."""
    if not (isinstance(gates, torch.Tensor) and isinstance(c_prev, torch.Tensor)
            and (peepholes is None or isinstance(peepholes, torch.Tensor))):
        raise TypeError("gates and c_prev must be tensors (and peepholes a tensor or None), got "
                        f"{type(gates).__name__}, {type(c_prev).__name__}, {type(peepholes).__name__}")
    return torch.is_grad_enabled() and (gates.requires_grad or c_prev.requires_grad
                                        or (peepholes is not None and peepholes.requires_grad))


def peephole_step(gates: torch.Tensor, c_prev: torch.Tensor,
                  peepholes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One peephole-LSTM step on the CPU: ``gates`` (B, 4H) [i, f, g, o] pre-activations,
    ``c_prev`` (B, H), ``peepholes`` (3, H) [p_i, p_f, p_o] or None; returns (h, c), differentiable.

    Without peepholes the same kernel runs with zero peephole weights, so zero peepholes and no
    peepholes give bit-identical results. Raises ValueError for wrong shapes, dtypes (float32 or
    float64, all equal) or devices (CPU), TypeError for non-tensors, and
    :class:`~.build.KernelsUnavailable` where the kernels cannot be loaded (:func:`~.build.status`
    says why)."""
    # the operator checks its inputs (so does its fake kernel under torch.compile), also when
    # called through the autograd function: checking here too would only cost time
    trainable = peepholes is not None
    needs_grad = _needs_grad(gates, c_prev, peepholes)
    if peepholes is None:
        _check("harness::peephole_step", c_prev, gates=(gates, 4))  # zero weights need (B, H) first
        peepholes = _zero_peepholes(c_prev.shape[1], c_prev.dtype)
    if needs_grad:
        return _PeepholeStep.apply(gates, c_prev, peepholes, trainable)
    h, c, _ = _PEEPHOLE(gates, c_prev, peepholes)
    return h, c


def cifg_step(gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFG step on the CPU: ``gates`` (B, 3H) [i, g, o] pre-activations, ``c_prev`` (B, H);
    f = 1 - i; returns (h, c), differentiable. Raises as :func:`peephole_step`."""
    if _needs_grad(gates, c_prev):  # the operator checks its inputs
        return _CIFGStep.apply(gates, c_prev)
    h, c, _ = _CIFG(gates, c_prev)
    return h, c


# --------------------------------------------------------------------------------------------
# which path a cell takes
# --------------------------------------------------------------------------------------------

def unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused kernels would not run for tensors of this device and dtype, or None if they would.

    May build or load the kernels (the first time)."""
    if build.disabled():
        return "HARNESS_FUSED=0"
    if torch.device(device).type != "cpu":
        return f"no fused kernel for {torch.device(device).type}"
    if dtype not in _DTYPES:
        return f"no fused kernel for {dtype}"
    state = build.status()
    return None if state == "ok" else f"kernels {state}"


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels can run a step on these tensors (else the caller uses eager equations).

    All on the CPU, all float32 or all float64, not under TorchScript, and the kernels load."""
    dtype = tensors[0].dtype
    if dtype not in _DTYPES:
        return False
    for tensor in tensors:  # a loop and is_cpu: this runs every step
        if not tensor.is_cpu or tensor.dtype != dtype:
            return False
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    return _kernels_loaded()


def _kernels_loaded() -> bool:
    """``build.status() == "ok"``; a constant to torch.compile, which calls it once while tracing
    (loading the kernels is file I/O that would otherwise break the graph)."""
    return build.status() == "ok"


# What torch.compiler.assume_constant_result(_kernels_loaded) does, without its import of
# torch._dynamo (over a second) in every process that uses the kernels. If torch ever changes the
# marker, tracing gets a graph break here: tests/test_cells.py checks that there is none.
_kernels_loaded._dynamo_marked_constant = True  # type: ignore[attr-defined]


def implementation(device: torch.device, dtype: torch.dtype) -> str:
    """``"fused-cpu"`` if a cell with parameters of this device and dtype runs the fused kernels,
    else ``"eager: <why>"``."""
    reason = unsupported(device, dtype)
    return "fused-cpu" if reason is None else f"eager: {reason}"
