"""The whole-sequence kernels (rnn, gru, peephole, cifg, slstm) against the eager equations, and their fallbacks.

A damaged cached library is rebuilt before any kernel runs: tests/test_kernel_cache.py (its models
train through these kernels).

The reference for rnn and gru is their ``torch.nn`` module, for peephole, cifg and slstm the eager
equations of the cells' ``step`` on the per-step loop (``HARNESS_FUSED=0``, and for the sLSTM
``HARNESS_GRAPH_LOOP=0``); both are independent of the C code. The sLSTM is also checked against a
float64 reference without the stabiliser, at T = 1000 too, in tests/test_modern_models.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from harness.plugins import kernels
from harness.plugins.gated_cell_models import build_cifg, build_peephole
from harness.plugins.kernels import build, sequence_ops
from harness.plugins.slstm import build_slstm
from harness.plugins.torch_rnn_models import build_bilstm, build_gru, build_lstm, build_rnn

B, IN, H = 3, 5, 7
WARNING = "harness: warning: fused cell kernels unavailable"

needs_kernels = pytest.mark.skipif(kernels.status() != "ok",
                                   reason=f"fused kernels not available here: {kernels.status()}")

BUILDERS = {"rnn": build_rnn, "gru": build_gru, "lstm": build_lstm, "bilstm": build_bilstm, "peephole": build_peephole,
            "plain": lambda i, h: build_peephole(i, h, peepholes=False), "cifg": build_cifg,
            "rnn-2-layers": lambda i, h: build_rnn(i, h, num_layers=2),
            "gru-2-layers": lambda i, h: build_gru(i, h, num_layers=2),
            "bilstm-2-layers": lambda i, h: build_bilstm(i, h, num_layers=2),
            "slstm": build_slstm, "slstm-exp": lambda i, h: build_slstm(i, h, forget_gate="exp"),
            "slstm-chrono": lambda i, h: build_slstm(i, h, init="chrono", length=400)}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}  # relative to the largest magnitude


@pytest.fixture(autouse=True)
def _single_thread_and_fresh_kernel_state(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    kernels.reset()
    yield
    torch.set_num_threads(threads)
    kernels.reset()


def _model(name: str, dtype: torch.dtype, scale: float = 1.0):
    torch.manual_seed(0)
    model = BUILDERS[name](IN, H).to(dtype)
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    return model


def _run(model, x: torch.Tensor, weights: torch.Tensor, reference: bool):
    """Features and the gradients of a weighted loss w.r.t. the input and every parameter; ``reference``
    runs the eager equations (torch.nn module or the per-step loop with eager steps)."""
    import os

    settings = {"HARNESS_FUSED": "0" if reference else "1", "HARNESS_GRAPH_LOOP": "0" if reference else "1"}
    old = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    kernels.reset()
    try:
        x = x.detach().clone().requires_grad_(True)
        features, summary = model(x)
        loss = (features * weights).sum() + summary.square().sum()
        grads = torch.autograd.grad(loss, [x, *model.parameters()])
        implementation = model.implementation
    finally:
        for name, value in old.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
        kernels.reset()
    return features.detach(), grads, implementation


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("length, scale", [(1, 1.0), (37, 1.0), (200, 1.0), (37, 20.0)],
                         ids=["T1", "T37", "T200", "T37-saturated"])
def test_sequence_kernel_equals_the_eager_equations(name, dtype, length, scale):
    model = _model(name, dtype)  # saturated: large inputs (large weights too would scale float32 rounding up)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, length, IN, generator=gen, dtype=dtype) * scale
    weights = torch.randn(B, length, model.output_size, generator=gen, dtype=dtype)
    fused, fused_grads, implementation = _run(model, x, weights, reference=False)
    eager, eager_grads, eager_implementation = _run(model, x, weights, reference=True)
    assert implementation == "fused-cpu" and eager_implementation != "fused-cpu"
    assert _relative(fused, eager) <= TOLERANCE[dtype]
    for got, want in zip(fused_grads, eager_grads, strict=True):
        assert _relative(got, want) <= TOLERANCE[dtype] * (10 if dtype == torch.float32 else 1)


@needs_kernels
def test_sequence_kernel_runs_in_a_plain_forward_pass_and_not_with_kept_states():
    x = torch.randn(B, 6, IN)
    for name in ("rnn", "gru", "peephole", "cifg", "slstm"):
        model = _model(name, torch.float32)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            model(x)[0].sum().backward()
        assert "harness::sequence_backward" in {event.name for event in profile.events()}, name
    for name in ("peephole", "cifg", "slstm"):  # the gradient measurement: per-step states on the graph
        model = _model(name, torch.float32)
        model.keep_states = True
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            features, _ = model(x)
        assert "harness::sequence_forward" not in {event.name for event in profile.events()}
        assert len(model.states) == 6 and torch.equal(torch.stack(model.states, 1), features)
    for name, without in (("peephole", "fused-cpu"), ("slstm", "graph-loop")):  # the benchmarks' "before"
        model = _model(name, torch.float32)
        assert model.implementation == "fused-cpu"
        model.sequence_kernel = False
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            model(x)[0].sum().backward()
        assert "harness::sequence_forward" not in {event.name for event in profile.events()}
        assert model.implementation == without  # the peephole cell's fused step; the sLSTM's graph loop


@needs_kernels
@pytest.mark.parametrize("name", ["rnn", "gru", "lstm", "bilstm", "peephole", "cifg", "slstm"])
def test_a_no_grad_forward_keeps_only_the_last_steps_and_gives_the_same_numbers(name):
    """Evaluation (no gradient) must not hold the (T, B, k*H) buffers backward needs: at T = 10,000 and
    256 sequences they took gigabytes. Its outputs are bit for bit those of a training forward."""
    model = _model(name, torch.float32)
    x = torch.randn(B, 300, IN, generator=torch.Generator().manual_seed(3))
    kept = {}
    real = sequence_ops._FORWARD

    def spy(cell, xh, *rest):
        c, saved = real(cell, xh, *rest)
        kept[torch.is_grad_enabled()] = (c.shape[0] if c.numel() else 0, saved.shape[0] if saved.numel() else 0)
        return c, saved

    sequence_ops._FORWARD = spy
    try:
        trained, _ = model(x)
        trained_kept = kept.pop(False)  # the operator runs inside the autograd.Function, grad mode off
        with torch.no_grad():
            evaluated, _ = model(x)
    finally:
        sequence_ops._FORWARD = real
    assert torch.equal(trained.detach(), evaluated)
    state = {"rnn": 0, "gru": 0, "lstm": 300, "bilstm": 300, "peephole": 300, "cifg": 300, "slstm": 300}[name]
    saved = 0 if name == "rnn" else 300
    assert trained_kept == (state, saved)
    # the sLSTM's next step reads n and m from the saved values, so two rows of them stay, like c
    assert kept[False] == (min(state, 2), min(saved, 2 if name == "slstm" else 1))


@needs_kernels
@pytest.mark.parametrize("cell", list(sequence_ops.CELLS) + ["plain"])
def test_sequence_gradcheck(cell):
    gen = torch.Generator().manual_seed(2)
    gates = sequence_ops.CELLS["peephole" if cell == "plain" else cell].gates

    def arg(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.7).requires_grad_(True)

    x, w_ih, b_ih, w_hh, b_hh = arg(2, 4, 3), arg(gates * 3, 3), arg(gates * 3), arg(gates * 3, 3), arg(gates * 3)
    if cell == "peephole":
        p = arg(3, 3)
        assert torch.autograd.gradcheck(lambda *a: kernels.sequence(cell, *a), (x, w_ih, b_ih, w_hh, b_hh, p))
    else:
        name = "peephole" if cell == "plain" else cell
        assert torch.autograd.gradcheck(lambda *a: kernels.sequence(name, *a), (x, w_ih, b_ih, w_hh, b_hh))


@needs_kernels
@pytest.mark.parametrize("name", ["rnn", "gru", "peephole", "cifg", "slstm"])
def test_nan_and_inf_propagate_as_in_the_eager_equations(name):
    """A diverging trial must still give NaN (the training loop detects divergence by it), in the rows
    and steps where the eager equations give it, and nowhere else."""
    model = _model(name, torch.float32)
    x = torch.randn(B, 9, IN, generator=torch.Generator().manual_seed(3))
    x[0, 4, 1] = float("nan")
    x[1, 2, 0] = float("inf")
    weights = torch.ones(B, 9, H)
    fused, _, _ = _run(model, x, weights, reference=False)
    eager, _, _ = _run(model, x, weights, reference=True)
    assert torch.equal(torch.isnan(fused), torch.isnan(eager))
    assert torch.isnan(fused[0, 4:]).all() and torch.isfinite(fused[2]).all()
    finite = torch.isfinite(eager)
    assert _relative(fused[finite], eager[finite]) <= 1e-5


@needs_kernels
@pytest.mark.parametrize("name", ["rnn", "gru", "peephole", "cifg", "slstm"])
def test_plain_c_gemm_gives_the_same_results(monkeypatch, name):
    """Without torch's BLAS (not found, or failing its check) the C loops compute the same products."""
    monkeypatch.setattr(sequence_ops, "_torch_gemm", lambda: (None, None))
    monkeypatch.setattr(sequence_ops, "_blas_for", None)
    assert kernels.blas() == "none"
    model = _model(name, torch.float64)
    x = torch.randn(B, 20, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    weights = torch.randn(B, 20, H, dtype=torch.float64)
    fused, fused_grads, _ = _run(model, x, weights, reference=False)
    eager, eager_grads, _ = _run(model, x, weights, reference=True)
    assert _relative(fused, eager) <= 1e-10
    for got, want in zip(fused_grads, eager_grads, strict=True):
        assert _relative(got, want) <= 1e-10
    monkeypatch.setattr(sequence_ops, "_blas_for", None)  # the next test hands the library its BLAS again


@needs_kernels
def test_a_gemm_that_disagrees_is_not_used(monkeypatch):
    """A gemm that computes something else (here: one that does nothing) is caught before first use."""
    import ctypes

    do_nothing = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)(lambda *args: None)
    address = ctypes.cast(do_nothing, ctypes.c_void_p).value
    monkeypatch.setattr(sequence_ops, "_blas_for", None)
    monkeypatch.setattr(sequence_ops, "_torch_gemm", lambda: (address, address))
    assert kernels.blas().startswith("none (")
    model = _model("gru", torch.float64)
    x = torch.randn(B, 8, IN, dtype=torch.float64)
    fused, _, _ = _run(model, x, torch.ones(B, 8, H, dtype=torch.float64), reference=False)
    monkeypatch.setattr(sequence_ops, "_blas_for", None)
    eager, _, _ = _run(model, x, torch.ones(B, 8, H, dtype=torch.float64), reference=True)
    assert _relative(fused, eager) <= 1e-10


def test_without_the_kernels_every_model_falls_back_with_one_warning(monkeypatch, tmp_path, capfd):
    """No compiler and nothing cached (an absent build): the torch.nn modules and the eager cells run,
    ``implementation`` says so, and one warning is printed for the whole process."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_compiler", lambda: None)
    kernels.reset()
    x = torch.randn(B, 6, IN)
    for name in ("rnn", "gru", "peephole", "cifg"):
        model = _model(name, torch.float32)
        features, summary = model(x)
        (features.sum() + summary.sum()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        assert re.fullmatch(r"(torch\.nn|eager): kernels unavailable: .*no C compiler.*", model.implementation)
    slstm = _model("slstm", torch.float32)  # a cell without fused steps of its own: the graph loop
    slstm(x)[0].sum().backward()
    assert slstm.implementation == "graph-loop"
    assert capfd.readouterr().err.count(WARNING) == 1
    with pytest.raises(RuntimeError, match="unavailable"):
        kernels.sequence("rnn", x, *(torch.zeros(H, s) for s in (IN,)), torch.zeros(H), torch.zeros(H, H),
                         torch.zeros(H))


def test_other_devices_and_dtypes_use_torch_nn_or_the_eager_cells():
    for name in ("rnn", "gru", "peephole", "cifg"):
        model = _model(name, torch.float16)
        assert model.implementation.endswith("no fused kernel for torch.float16")
    assert _model("rnn", torch.float32).to("meta").implementation == "torch.nn: no fused kernel for meta"
    assert _model("slstm", torch.float16).implementation == "graph-loop"  # its step on the graph loop
    assert _model("slstm", torch.float32).to("meta").implementation == "graph-loop"
    assert build_rnn(IN, H).implementation in ("fused-cpu", f"torch.nn: kernels {kernels.status()}")


def _args(cell: str, **changes) -> dict:
    """Valid arguments of :func:`kernels.sequence` for ``cell``, with some replaced."""
    gates = sequence_ops.CELLS[cell].gates
    args = {"inputs": torch.randn(B, 4, IN), "w_ih": torch.randn(gates * H, IN), "b_ih": torch.randn(gates * H),
            "w_hh": torch.randn(gates * H, H), "b_hh": torch.randn(gates * H),
            "peepholes": torch.randn(3, H) if cell == "peephole" else None}
    return {**args, **changes}


_BAD = {  # case: (cell, changed arguments, part of the message)
    "unknown cell": ("lstm", {}, "unknown cell 'lstm'"),
    "2-D inputs": ("rnn", {"inputs": torch.randn(4, IN)}, "inputs must be a (batch, length, features)"),
    "input width": ("rnn", {"inputs": torch.randn(B, 4, IN + 1)}, "w_ih must be (gates * hidden, 6)"),
    "bias length": ("gru", {"b_hh": torch.randn(H)}, "the biases (gates * hidden,)"),
    "w_hh not square": ("rnn", {"w_hh": torch.randn(H, H + 1)}, "w_hh must have shape (1 * hidden, hidden)"),
    "gru with rnn weights": ("gru", {"w_hh": torch.randn(H, H)}, "w_hh must have shape (3 * hidden, hidden)"),
    "w_hh of another width": ("cifg", {"w_hh": torch.randn(6, 2)}, "as many rows as w_ih (21, 5), got (6, 2)"),
    "peepholes": ("peephole", {"peepholes": torch.randn(2, H)}, "peepholes must have shape (3, 7)"),
    "float64 w_hh": ("rnn", {"w_hh": torch.randn(H, H, dtype=torch.float64)}, "w_hh torch.float64"),
    "empty sequence": ("rnn", {"inputs": torch.randn(B, 0, IN)}, "length >= 1"),
}


@needs_kernels
@pytest.mark.parametrize("case", list(_BAD))
def test_wrong_inputs_are_rejected_with_a_clear_error(case):
    cell, changes, message = _BAD[case]
    args = _args("rnn" if cell == "lstm" else cell, **changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        kernels.sequence(cell, **args)


@needs_kernels
@pytest.mark.parametrize("cell", list(sequence_ops.CELLS))
def test_operators_pass_opcheck(cell):
    spec = sequence_ops.CELLS[cell]
    gen = torch.Generator().manual_seed(5)
    xh = torch.randn(5, 2, 2 + 3, generator=gen)
    xh[0, :, 2:] = 0
    weight, bias = torch.randn(spec.gates * 3, 5, generator=gen), torch.randn(spec.gates * 3, generator=gen)
    p = torch.randn(3, 3, generator=gen) if cell == "peephole" else torch.empty(0)
    checks = ("test_schema", "test_faketensor")
    for keep in (True, False):  # False: a forward pass without a gradient to take keeps only the last step
        torch.library.opcheck(torch.ops.harness.sequence_forward.default,
                              (cell, xh.clone(), weight, bias, bias, p, keep), test_utils=checks)
    forward_only = xh.clone()
    c, saved = torch.ops.harness.sequence_forward(cell, xh, weight, bias, bias, p)
    torch.ops.harness.sequence_forward(cell, forward_only, weight, bias, bias, p, False)
    assert torch.equal(forward_only, xh)  # every h_t, written into xh, the same
    torch.library.opcheck(torch.ops.harness.sequence_backward.default,
                          (cell, torch.randn(4, 2, 3, generator=gen), xh, c, saved, weight, p, cell == "peephole"),
                          test_utils=checks)
