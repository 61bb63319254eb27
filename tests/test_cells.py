"""The fused CPU kernels of the built-in cells against their eager equations, and the fallbacks.

``tests/test_models.py`` checks the cells against float64 references of the SPEC equations with
whatever path is active (the fused kernels where a C compiler is available); here the fused and
eager paths are compared directly, forward and backward, and the switches are exercised.
"""

from __future__ import annotations

import pytest
import torch

from harness.plugins import cell_kernels
from harness.plugins.gated_cell_models import build_cifg, build_peephole

B, H, IN, T = 5, 13, 3, 9

needs_kernels = pytest.mark.skipif(cell_kernels.status() != "ok",
                                   reason=f"fused kernels not available here: {cell_kernels.status()}")


@pytest.fixture(autouse=True)
def _single_thread_and_fresh_kernel_state():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    cell_kernels.reset()


def _eager(monkeypatch):
    monkeypatch.setenv("HARNESS_FUSED", "0")
    cell_kernels.reset()


def _fused(monkeypatch):
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    cell_kernels.reset()


def _run_step(cell, gates, c, weights):
    """h, c and the gradients of a weighted sum of both w.r.t. gates, c and the parameters."""
    gates = gates.detach().clone().requires_grad_(True)
    c = c.detach().clone().requires_grad_(True)
    h_new, c_new = cell.step(gates, (None, c))
    params = [p for p in cell.parameters() if p.requires_grad]
    loss = (h_new * weights[0]).sum() + (c_new * weights[1]).sum()
    grads = torch.autograd.grad(loss, [gates, c, *params], allow_unused=True)
    return h_new.detach(), c_new.detach(), grads


def _cells(dtype):
    torch.manual_seed(0)
    cells = {"peephole": build_peephole(IN, H).cell, "plain": build_peephole(IN, H, peepholes=False).cell,
             "cifg": build_cifg(IN, H).cell}
    with torch.no_grad():
        for cell in cells.values():
            for p in cell.parameters():
                p.copy_(torch.randn_like(p))
    return {name: cell.to(dtype) for name, cell in cells.items()}


@needs_kernels
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("scale", [0.5, 4.0, 40.0])
@pytest.mark.parametrize("name", ["peephole", "plain", "cifg"])
def test_fused_step_matches_eager_step(monkeypatch, name, dtype, atol, scale):
    cell = _cells(dtype)[name]
    gen = torch.Generator().manual_seed(1)
    gates = torch.randn(B, cell.num_gates * H, generator=gen, dtype=dtype) * scale
    c = torch.randn(B, H, generator=gen, dtype=dtype) * scale
    weights = (torch.randn(B, H, generator=gen, dtype=dtype), torch.randn(B, H, generator=gen, dtype=dtype))
    _fused(monkeypatch)
    assert cell_kernels.usable(gates, c)
    fused = _run_step(cell, gates, c, weights)
    _eager(monkeypatch)
    assert not cell_kernels.usable(gates, c)
    eager = _run_step(cell, gates, c, weights)
    torch.testing.assert_close(fused[0], eager[0], atol=atol, rtol=0)
    torch.testing.assert_close(fused[1], eager[1], atol=atol * scale, rtol=0)
    for got, want in zip(fused[2], eager[2]):
        torch.testing.assert_close(got, want, atol=atol * scale * scale, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("peepholes", [True, False])
def test_fused_peephole_gradcheck(peepholes):
    gen = torch.Generator().manual_seed(2)
    gates = torch.randn(3, 4 * 4, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    if peepholes:
        p = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(cell_kernels.peephole_step, (gates, c, p))
    else:
        assert torch.autograd.gradcheck(lambda g, c: cell_kernels.peephole_step(g, c, None), (gates, c))
    # only one of the outputs used (autograd passes no gradient for the other)
    assert torch.autograd.gradcheck(lambda g, c: cell_kernels.peephole_step(g, c, None)[0], (gates, c))
    assert torch.autograd.gradcheck(lambda g, c: cell_kernels.peephole_step(g, c, None)[1], (gates, c))


@needs_kernels
def test_fused_cifg_gradcheck():
    gen = torch.Generator().manual_seed(3)
    gates = torch.randn(3, 3 * 4, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cell_kernels.cifg_step, (gates, c))
    assert torch.autograd.gradcheck(lambda g, c: cell_kernels.cifg_step(g, c)[0], (gates, c))


@needs_kernels
@pytest.mark.parametrize("name", ["peephole", "cifg"])
def test_whole_model_gradients_fused_equal_eager(monkeypatch, name):
    build = build_peephole if name == "peephole" else build_cifg
    x = torch.randn(B, T, IN, generator=torch.Generator().manual_seed(4))
    results = []
    for switch in (_fused, _eager):
        switch(monkeypatch)
        torch.manual_seed(5)
        model = build(IN, H)
        features, summary = model(x)
        (features.square().sum() + summary.sum()).backward()
        results.append((features.detach(), [p.grad for p in model.parameters()]))
    (f_fused, g_fused), (f_eager, g_eager) = results
    torch.testing.assert_close(f_fused, f_eager, atol=2e-6, rtol=0)
    for got, want in zip(g_fused, g_eager):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_no_grad_path_equals_grad_path():
    torch.manual_seed(6)
    for model in (build_peephole(IN, H), build_cifg(IN, H)):
        x = torch.randn(B, T, IN)
        features, _ = model(x)
        with torch.no_grad():
            features_eval, _ = model(x)
        assert torch.equal(features.detach(), features_eval)


@needs_kernels
@pytest.mark.parametrize("name", ["peephole", "plain", "cifg"])
def test_nan_and_inf_propagate(name):
    """A diverging model must still produce NaN (the training loop detects divergence by it)."""
    cell = _cells(torch.float32)[name]
    gates = torch.zeros(2, cell.num_gates * H)
    gates[0, 0] = float("nan")
    c = torch.zeros(2, H)
    c[1, 1] = float("inf")
    h_new, c_new = cell.step(gates, (None, c))
    assert torch.isnan(h_new[0, 0]) and torch.isnan(c_new[0, 0])
    assert not torch.isfinite(c_new[1, 1]) or torch.isnan(h_new[1, 1])
    assert torch.isfinite(h_new[0, 1:]).all()
    # saturated gates give exact limits, as the eager functions do
    gates = torch.full((1, cell.num_gates * H), 200.0)
    h_sat, c_sat = cell.step(gates, (None, torch.zeros(1, H)))
    assert torch.isfinite(h_sat).all() and torch.isfinite(c_sat).all()


def test_disabled_by_environment_uses_eager(monkeypatch):
    _eager(monkeypatch)
    assert cell_kernels.status() == "disabled by HARNESS_FUSED"
    model = build_cifg(IN, H)
    features, _ = model(torch.randn(B, T, IN))
    assert features.shape == (B, T, H)


def test_without_compiler_falls_back_to_eager(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))  # nothing cached there
    monkeypatch.setattr(cell_kernels, "_compiler", lambda: None)
    cell_kernels.reset()
    assert cell_kernels.status().startswith("unavailable")
    gates, c = torch.zeros(2, 4 * H), torch.zeros(2, H)
    assert not cell_kernels.usable(gates, c)
    model = build_peephole(IN, H)
    features, summary = model(torch.randn(B, T, IN))
    assert torch.isfinite(features).all()
    with pytest.raises(RuntimeError, match="unavailable"):
        cell_kernels.cifg_step(torch.zeros(2, 3 * H), c)


@needs_kernels
def test_build_goes_to_the_cache_dir_and_is_reused(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    cell_kernels.reset()
    assert cell_kernels.status() == "ok"
    libraries = list(tmp_path.glob("cell_kernels-*"))
    assert len(libraries) == 1
    stamp = libraries[0].stat().st_mtime_ns
    cell_kernels.reset()
    assert cell_kernels.status() == "ok"
    assert libraries[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [libraries[0].name]  # no scratch left behind


def test_other_dtypes_and_tracing_use_eager():
    c = torch.zeros(2, H, dtype=torch.float16)
    assert not cell_kernels.usable(torch.zeros(2, 3 * H, dtype=torch.float16), c)
    assert not cell_kernels.usable(torch.zeros(2, 3 * H), torch.zeros(2, H, dtype=torch.float64))


@needs_kernels
def test_unusable_cache_dir_falls_back_to_a_private_temporary_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    monkeypatch.delenv("HARNESS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # ~/.cache/harness would be inside a file
    monkeypatch.setattr(cell_kernels.tempfile, "tempdir", str(tmp_path))
    cell_kernels.reset()
    assert cell_kernels.status() == "ok"
    assert list(tmp_path.glob("harness-*/cell_kernels-*"))
    # an explicit HARNESS_CACHE_DIR that cannot be used is not silently replaced: eager instead
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(blocker / "cache"))
    cell_kernels.reset()
    assert cell_kernels.status().startswith("unavailable")
