"""Goal 1: what calling the fused cell kernels costs, per step, for each way of exposing them.

The same C kernels (``harness.plugins.kernels``, built and loaded as the cells do) behind:

  ctypes, no autograd          the kernels alone, forward then backward (the floor)
  before                       one torch.autograd.Function per step calling ctypes (the code
                               before the kernels became operators, commit 403c443)
  shipped                      harness::peephole_step / harness::cifg_step, torch.library operators
                               (Library.define + impl + register_fake) called from one
                               torch.autograd.Function per step: harness.plugins.kernels.ops
  custom_op                    torch.library.custom_op + register_autograd + register_fake
  Library + register_autograd  the operator made differentiable with torch.library.register_autograd
  C++ extension (--cpp)        TORCH_LIBRARY operator with a C++ autograd function
                               (benchmarks/kernel_dispatch_ext.cpp, torch.utils.cpp_extension;
                               its cold build time is reported too; needs ninja)

Each variant runs a chain of ``--length`` peephole steps (B x H, float32) forward, then one
backward through all of them, as a cell loop does; rounds are interleaved and the median per
step is reported. With ``--batch 1 --hidden 1`` the kernels cost nothing and what remains is the
per-call overhead.

    python benchmarks/kernel_dispatch.py                       # B = H = 128, 1 thread
    python benchmarks/kernel_dispatch.py --threads 2
    python benchmarks/kernel_dispatch.py --batch 1 --hidden 1   # overhead only
    python benchmarks/kernel_dispatch.py --cpp                 # also the C++ extension (slow build)
    python benchmarks/kernel_dispatch.py --clock cpu           # CPU time: steadier on a busy machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from harness.plugins import kernels
from harness.plugins.kernels import build
from torch import Tensor

Step = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
_LIBRARIES: list[torch.library.Library] = []


def _forward(gates: Tensor, c_prev: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    batch, hidden = c_prev.shape
    h, c, saved = torch.empty_like(c_prev), torch.empty_like(c_prev), c_prev.new_empty(batch, 5 * hidden)
    build.library().peephole_forward_f32(batch, hidden, gates.data_ptr(), c_prev.data_ptr(), p.data_ptr(),
                                         h.data_ptr(), c.data_ptr(), saved.data_ptr())
    return h, c, saved


def _backward(grad_h: Tensor, grad_c: Tensor, saved: Tensor, c_prev: Tensor, c: Tensor,
              p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    batch, hidden = c_prev.shape
    grad_gates, grad_c_prev, grad_p = c_prev.new_empty(batch, 4 * hidden), torch.empty_like(c_prev), torch.zeros_like(p)
    build.library().peephole_backward_f32(batch, hidden, grad_h.contiguous().data_ptr(),
                                          grad_c.contiguous().data_ptr(), saved.data_ptr(), c_prev.data_ptr(),
                                          c.data_ptr(), p.data_ptr(), grad_gates.data_ptr(),
                                          grad_c_prev.data_ptr(), grad_p.data_ptr())
    return grad_gates, grad_c_prev, grad_p


class _Before(torch.autograd.Function):
    """The glue before the operators: an autograd function calling ctypes directly."""

    @staticmethod
    def forward(ctx, gates, c_prev, p):
        h, c, saved = _forward(gates, c_prev, p)
        ctx.save_for_backward(saved, c_prev, c, p)
        ctx.set_materialize_grads(False)
        return h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c):
        saved, c_prev, c, p = ctx.saved_tensors
        grad_h = torch.zeros_like(c) if grad_h is None else grad_h
        grad_c = torch.zeros_like(c) if grad_c is None else grad_c
        return _backward(grad_h, grad_c, saved, c_prev, c, p)


def _setup_context(ctx, inputs, output) -> None:
    _, c_prev, p = inputs
    _, c, saved = output
    ctx.save_for_backward(saved, c_prev, c, p)
    ctx.set_materialize_grads(False)


def _registered_backward(backward_op):
    def backward(ctx, grad_h, grad_c, _grad_saved):
        saved, c_prev, c, p = ctx.saved_tensors
        grad_h = torch.zeros_like(c) if grad_h is None else grad_h
        grad_c = torch.zeros_like(c) if grad_c is None else grad_c
        return backward_op(grad_h, grad_c, saved, c_prev, c, p)
    return backward


def _fake_forward(gates, c_prev, p):
    return torch.empty_like(c_prev), torch.empty_like(c_prev), c_prev.new_empty(c_prev.shape[0], 5 * c_prev.shape[1])


def _fake_backward(grad_h, grad_c, saved, c_prev, c, p):
    return c_prev.new_empty(c_prev.shape[0], 4 * c_prev.shape[1]), torch.empty_like(c_prev), torch.empty_like(p)


def _custom_op_variant() -> Step:
    forward = torch.library.custom_op("harness_bench_co::forward", _forward, mutates_args=())
    backward = torch.library.custom_op("harness_bench_co::backward", _backward, mutates_args=())
    forward.register_fake(_fake_forward)
    backward.register_fake(_fake_backward)
    forward.register_autograd(_registered_backward(backward), setup_context=_setup_context)
    return lambda g, c, p: forward(g, c, p)[:2]


def _library_autograd_variant() -> Step:
    lib = torch.library.Library("harness_bench_la", "DEF")
    _LIBRARIES.append(lib)  # the operators live as long as their Library object
    lib.define("forward(Tensor gates, Tensor c_prev, Tensor p) -> (Tensor, Tensor, Tensor)")
    lib.define("backward(Tensor gh, Tensor gc, Tensor s, Tensor c_prev, Tensor c, Tensor p) "
               "-> (Tensor, Tensor, Tensor)")
    lib.impl("forward", _forward, "CPU")
    lib.impl("backward", _backward, "CPU")
    torch.library.register_fake("harness_bench_la::forward", _fake_forward, lib=lib)
    torch.library.register_fake("harness_bench_la::backward", _fake_backward, lib=lib)
    backward = torch.ops.harness_bench_la.backward.default
    torch.library.register_autograd("harness_bench_la::forward", _registered_backward(backward),
                                    setup_context=_setup_context, lib=lib)
    forward = torch.ops.harness_bench_la.forward.default
    return lambda g, c, p: forward(g, c, p)[:2]


def _cpp_variant() -> Step:
    """Build the C++ extension in a fresh folder (timed: what a new machine pays) and load it."""
    from torch.utils import cpp_extension

    here = Path(__file__).resolve().parent
    kernel_dir = Path(kernels.__file__).resolve().parent
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        cpp_extension.load("harness_bench_ext", [str(here / "kernel_dispatch_ext.cpp")],
                           extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"],
                           extra_include_paths=[str(kernel_dir)], build_directory=folder, is_python_module=False)
        print(f"C++ extension: cold build and load {time.perf_counter() - started:.1f} s")
    op = torch.ops.harness_bench_ext.peephole_step.default
    return lambda g, c, p: op(g, c, p)


def _variants(with_cpp: bool) -> dict[str, Step]:
    variants: dict[str, Step] = {
        "before (autograd.Function + ctypes)": _Before.apply,
        "shipped (harness::peephole_step)": kernels.peephole_step,
        "custom_op + register_autograd": _custom_op_variant(),
        "Library + register_autograd": _library_autograd_variant(),
    }
    if with_cpp:
        variants["C++ extension"] = _cpp_variant()
    return variants


def _time_chain(step: Step | None, inputs, length: int, clock: Callable[[], float]) -> float:
    """Seconds per step: ``length`` steps forward, then one backward through the chain."""
    gates, c0, p, grad_h, grad_c = inputs
    started = clock()
    if step is None:  # the kernels alone
        c, saved = c0.detach(), []
        for t in range(length):
            h, c_new, activations = _forward(gates[t].detach(), c, p.detach())
            saved.append((activations, c, c_new))
            c = c_new
        for activations, c_prev, c_new in reversed(saved):
            _backward(grad_h, grad_c, activations, c_prev, c_new, p.detach())
    else:
        c, outputs = c0, []
        for t in range(length):
            h, c = step(gates[t], c, p)
            outputs.append(h)
        torch.autograd.backward([*outputs, c], [grad_h] * length + [grad_c])
    return (clock() - started) / length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpp", action="store_true", help="also build and time the C++ extension")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this thread's CPU time, steadier on a busy machine (one thread only)")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    if kernels.status() != "ok":
        raise SystemExit(f"fused kernels not available: {kernels.status()}")
    gen = torch.Generator().manual_seed(0)
    batch, hidden = args.batch, args.hidden
    inputs = ([torch.randn(batch, 4 * hidden, generator=gen).requires_grad_() for _ in range(args.length)],
              torch.randn(batch, hidden, generator=gen).requires_grad_(),
              (torch.randn(3, hidden, generator=gen) * 0.1).requires_grad_(),
              torch.randn(batch, hidden, generator=gen), torch.randn(batch, hidden, generator=gen))
    variants: dict[str, Step | None] = {"ctypes, no autograd": None, **_variants(args.cpp)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds + 1):
        for name, step in variants.items():
            seconds = _time_chain(step, inputs, args.length, clock)
            if round_:  # the first round warms up
                times[name].append(seconds)
    reference = statistics.median(times["before (autograd.Function + ctypes)"])
    print(f"peephole step, B = {batch}, H = {hidden}, float32, {args.threads} thread(s), chain of {args.length} "
          f"steps, median of {args.rounds} rounds, {args.clock} clock; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'variant':40s} {'us/step':>8s} {'vs before':>10s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:40s} {median * 1e6:8.1f} {(median - reference) * 1e6:+9.1f}")


if __name__ == "__main__":
    main()
