"""The C kernels of the diagonal recurrences (harness.plugins.kernels.scan_ops) against the pure-torch
loops written here from the equations: forward and every input gradient in float64 and float32,
gradcheck, NaN propagation, bad input, the fallback to the loops; and each modern model's kernel path
against its own loop path."""

from __future__ import annotations

import pytest
import torch
from harness.plugins import kernels
from harness.plugins.kernels import build as kernel_build
from harness.plugins.kernels.scan_ops import diagonal_scan, selective_scan

from harness.registry import get_model
from harness.runs.options import build_core

pytestmark = pytest.mark.skipif(kernels.status() != "ok", reason=f"kernels not available here: {kernels.status()}")
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
WARNING = "harness: warning: fused cell kernels unavailable"


@pytest.fixture(autouse=True)
def _fresh_kernel_state(monkeypatch):
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    kernels.reset()
    yield
    kernels.reset()


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest error relative to the largest magnitude of ``want``."""
    return ((got - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()


# ---------------------------------------------------------------------------------------------
# references: one step at a time, from the equations
# ---------------------------------------------------------------------------------------------

def loop_diagonal(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t along dim 1 from h0."""
    h, out = h0, []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def loop_selective(delta, A, B, C, x):
    """y_t[d] = sum_n C_t[n] h_t[d, n], h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] x_t[d] B_t[n]."""
    h, out = x.new_zeros(x.shape[0], *A.shape), []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        out.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(out, 1)


def diagonal_inputs(dtype: torch.dtype, batch: int = 3, length: int = 40, states: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    real = dtype.to_real()
    modulus = 0.5 + 0.5 * torch.rand(batch, length, states, generator=gen, dtype=real)
    if dtype.is_complex:
        a = torch.polar(modulus, torch.rand(batch, length, states, generator=gen, dtype=real))
    else:
        a = modulus
    b = torch.randn(batch, length, states, generator=gen, dtype=dtype)
    h0 = torch.randn(batch, states, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (a, b, h0)]


def selective_inputs(dtype: torch.dtype, batch: int = 2, length: int = 37, channels: int = 6, states: int = 4,
                     seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    delta = 0.01 + 0.5 * torch.rand(batch, length, channels, generator=gen, dtype=dtype)
    A = -torch.exp(torch.randn(channels, states, generator=gen, dtype=dtype))
    B, C = (torch.randn(batch, length, states, generator=gen, dtype=dtype) for _ in range(2))
    x = torch.randn(batch, length, channels, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (delta, A, B, C, x)]


def compare(kernel, reference, inputs, tolerance: float) -> None:
    """Outputs and the gradients of every input of a random linear function of them agree."""
    got, want = kernel(*inputs), reference(*inputs)
    assert relative(got, want) <= tolerance
    weights = torch.randn(want.shape, dtype=want.dtype, generator=torch.Generator().manual_seed(1))
    grads_got = torch.autograd.grad((got * weights.conj()).real.sum(), inputs)
    grads_want = torch.autograd.grad((want * weights.conj()).real.sum(), inputs)
    for got_grad, want_grad in zip(grads_got, grads_want):
        assert relative(got_grad, want_grad) <= tolerance


# ---------------------------------------------------------------------------------------------
# the kernels against the loops
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128, torch.complex64])
def test_diagonal_scan_equals_the_loop(dtype):
    compare(diagonal_scan, loop_diagonal, diagonal_inputs(dtype), TOLERANCE[dtype.to_real()])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1, 5, 64])  # shorter than, not dividing, and longer than the sequence
def test_selective_scan_equals_the_loop(dtype, chunk):
    compare(lambda *args: selective_scan(*args, chunk=chunk), loop_selective, selective_inputs(dtype),
            TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_diagonal_scan_gradcheck(dtype):
    assert torch.autograd.gradcheck(diagonal_scan, diagonal_inputs(dtype, 2, 6, 3))


def test_selective_scan_gradcheck():
    inputs = selective_inputs(torch.float64, 2, 7, 3, 2)
    assert torch.autograd.gradcheck(lambda *args: selective_scan(*args, chunk=3), inputs)


def test_a_broadcast_coefficient_equals_its_copy():
    a, b, h0 = diagonal_inputs(torch.complex128)
    lam = a[:1, :1].detach()
    assert relative(diagonal_scan(lam, b), diagonal_scan(lam.expand_as(b).clone(), b)) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_nan_propagates_through_the_diagonal_scan(dtype):
    a, b, h0 = (t.detach() for t in diagonal_inputs(dtype))
    b[1, 10, 2] = float("nan")
    h = diagonal_scan(a, b, h0)
    assert torch.isnan(h[1, 10:, 2]).all() and not torch.isnan(h[1, :10]).any()
    assert not torch.isnan(h[0]).any() and not torch.isnan(h[1, :, 3]).any()


def test_nan_propagates_through_the_selective_scan():
    delta, A, B, C, x = (t.detach() for t in selective_inputs(torch.float32))
    x[1, 10, 2] = float("nan")
    y = selective_scan(delta, A, B, C, x, chunk=4)
    assert torch.isnan(y[1, 10:]).any(dim=1).all() and not torch.isnan(y[1, :10]).any()
    assert not torch.isnan(y[0]).any()


def test_bad_input_gets_a_one_line_error():
    a, b, h0 = (t.detach() for t in diagonal_inputs(torch.float64))
    with pytest.raises(ValueError, match="does not broadcast"):
        diagonal_scan(a[:, :, :2], b)
    with pytest.raises(ValueError, match="dtype"):
        diagonal_scan(a.float(), b)
    delta, A, B, C, x = (t.detach() for t in selective_inputs(torch.float64))
    with pytest.raises(ValueError, match=r"C must have shape \(2, 37, 4\)") as info:
        selective_scan(delta, A, B, C[:, :-1], x)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="float32 or float64"):
        selective_scan(delta.half(), A.half(), B.half(), C.half(), x.half())


# ---------------------------------------------------------------------------------------------
# the models
# ---------------------------------------------------------------------------------------------

MODELS = ("mingru", "minlstm", "lru", "mamba")


def build(name: str, **options):
    torch.manual_seed(0)
    return build_core(get_model(name), 3, 8, None, options).double()


@pytest.mark.parametrize("name", MODELS)
def test_each_model_kernel_path_equals_its_loop(name):
    kernel, loop = build(name), build(name, mode="loop")
    assert kernel.implementation == "kernel" and loop.implementation == "loop"
    inputs = torch.randn(2, 30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    outputs = [model(inputs)[0] for model in (kernel, loop)]
    assert relative(outputs[0], outputs[1]) <= 1e-10
    for output in outputs:
        output.square().sum().backward()
    for (key, got), want in zip(kernel.named_parameters(), loop.parameters()):
        assert relative(got.grad, want.grad) <= 1e-10, key


def test_with_the_kernels_disabled_the_models_loop(monkeypatch):
    monkeypatch.setenv("HARNESS_FUSED", "0")
    kernels.reset()
    assert {build(name).implementation for name in MODELS} == {"loop"}


def test_unavailable_kernels_fall_back_to_the_loop_with_one_warning(tmp_path, monkeypatch, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(blocker))
    monkeypatch.setattr(kernel_build, "cache_dir", lambda: blocker)
    kernels.reset()
    models = [build(name) for name in MODELS]
    for model in models:
        assert model.implementation == "loop"
        model(torch.randn(2, 5, 3, dtype=torch.float64))[0].sum().backward()
    err = capfd.readouterr().err
    assert err.count(WARNING) == 1, err
    assert not kernel_build.loaded()
