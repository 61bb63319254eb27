"""The fused CPU kernels of the built-in cells against their eager equations, and the fallbacks.

``tests/test_models.py`` checks the cells against float64 references of the equations (docs/models.md) with
whatever path is active (the fused kernels where a C compiler is available); here the fused and
eager paths are compared directly, forward and backward, and the switches are exercised.
"""

from __future__ import annotations

import os
import re
import sys

import pytest
import torch
from harness.plugins import kernels
from harness.plugins.gated_cell_models import build_cifg, build_peephole
from harness.plugins.kernels import build

B, H, IN, T = 5, 13, 3, 9

needs_kernels = pytest.mark.skipif(kernels.status() != "ok",
                                   reason=f"fused kernels not available here: {kernels.status()}")


@pytest.fixture(autouse=True)
def _single_thread_and_fresh_kernel_state():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    kernels.reset()


def _eager(monkeypatch):
    monkeypatch.setenv("HARNESS_FUSED", "0")
    kernels.reset()


def _fused(monkeypatch):
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    kernels.reset()


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
    assert kernels.usable(gates, c)
    fused = _run_step(cell, gates, c, weights)
    _eager(monkeypatch)
    assert not kernels.usable(gates, c)
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
        assert torch.autograd.gradcheck(kernels.peephole_step, (gates, c, p))
    else:
        assert torch.autograd.gradcheck(lambda g, c: kernels.peephole_step(g, c, None), (gates, c))
    # only one of the outputs used (autograd passes no gradient for the other)
    assert torch.autograd.gradcheck(lambda g, c: kernels.peephole_step(g, c, None)[0], (gates, c))
    assert torch.autograd.gradcheck(lambda g, c: kernels.peephole_step(g, c, None)[1], (gates, c))


@needs_kernels
def test_fused_cifg_gradcheck():
    gen = torch.Generator().manual_seed(3)
    gates = torch.randn(3, 3 * 4, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.cifg_step, (gates, c))
    assert torch.autograd.gradcheck(lambda g, c: kernels.cifg_step(g, c)[0], (gates, c))


@needs_kernels
@pytest.mark.parametrize("name", ["peephole", "cifg"])
def test_whole_model_gradients_fused_equal_eager(monkeypatch, name):
    make = build_peephole if name == "peephole" else build_cifg
    x = torch.randn(B, T, IN, generator=torch.Generator().manual_seed(4))
    results = []
    for switch in (_fused, _eager):
        switch(monkeypatch)
        torch.manual_seed(5)
        model = make(IN, H)
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
    assert kernels.status() == "disabled by HARNESS_FUSED"
    model = build_cifg(IN, H)
    features, _ = model(torch.randn(B, T, IN))
    assert features.shape == (B, T, H)


def test_without_compiler_falls_back_to_eager(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))  # nothing cached there
    monkeypatch.setattr(build, "_compiler", lambda: None)
    kernels.reset()
    assert kernels.status().startswith("unavailable")
    gates, c = torch.zeros(2, 4 * H), torch.zeros(2, H)
    assert not kernels.usable(gates, c)
    model = build_peephole(IN, H)
    features, _ = model(torch.randn(B, T, IN))
    assert torch.isfinite(features).all()
    with pytest.raises(RuntimeError, match="unavailable"):
        kernels.cifg_step(torch.zeros(2, 3 * H), c)


@needs_kernels
def test_build_goes_to_the_cache_dir_and_is_reused(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    kernels.reset()
    assert kernels.status() == "ok"
    libraries = list(tmp_path.glob("cell_kernels-*.so"))
    assert len(libraries) == 1
    stamp = libraries[0].stat().st_mtime_ns
    kernels.reset()
    assert kernels.status() == "ok"
    assert libraries[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    # the library and its checksum, no scratch left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [libraries[0].name, libraries[0].name + ".sha256"]


def test_other_dtypes_and_tracing_use_eager():
    c = torch.zeros(2, H, dtype=torch.float16)
    assert not kernels.usable(torch.zeros(2, 3 * H, dtype=torch.float16), c)
    assert not kernels.usable(torch.zeros(2, 3 * H), torch.zeros(2, H, dtype=torch.float64))


@needs_kernels
def test_unusable_cache_dir_falls_back_to_a_private_temporary_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    monkeypatch.delenv("HARNESS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # ~/.cache/harness would be inside a file
    monkeypatch.setattr(build.tempfile, "tempdir", str(tmp_path))
    kernels.reset()
    assert kernels.status() == "ok"
    assert list(tmp_path.glob("harness-*/cell_kernels-*"))
    # an explicit HARNESS_CACHE_DIR that cannot be used is not silently replaced: eager instead
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(blocker / "cache"))
    kernels.reset()
    assert kernels.status().startswith("unavailable")


# --------------------------------------------------------------------------------------------
# the operators: input checks, profiler names, torch.compile
# --------------------------------------------------------------------------------------------

def _step_inputs(num_gates, dtype=torch.float32, batch=B, hidden=H, requires_grad=False):
    gen = torch.Generator().manual_seed(7)
    gates = torch.randn(batch, num_gates * hidden, generator=gen, dtype=dtype).requires_grad_(requires_grad)
    c = torch.randn(batch, hidden, generator=gen, dtype=dtype).requires_grad_(requires_grad)
    return gates, c, torch.randn(3, hidden, generator=gen, dtype=dtype)


_BAD_INPUTS = {
    # name: (function, arguments, part of the message)
    "peephole gates 3H wide": (lambda g, c, p: kernels.peephole_step(g[:, :3 * H], c, p), "gates must have shape"),
    "peephole gates 5H wide": (lambda g, c, p: kernels.peephole_step(torch.cat([g, c], 1), c, p),
                               "gates must have shape"),
    "peephole gates 3H wide, no peepholes": (lambda g, c, p: kernels.peephole_step(g[:, :3 * H], c, None),
                                             "gates must have shape"),
    "cifg gates 4H wide": (lambda g, c, p: kernels.cifg_step(g, c), "gates must have shape"),
    "cifg gates 2H wide": (lambda g, c, p: kernels.cifg_step(g[:, :2 * H], c), "gates must have shape"),
    "batch mismatch": (lambda g, c, p: kernels.peephole_step(g[:-1], c, p), "gates must have shape"),
    "c_prev 1-D": (lambda g, c, p: kernels.cifg_step(g[:, :3 * H], c[0]), "c_prev must be a (batch, hidden)"),
    "c_prev 3-D": (lambda g, c, p: kernels.cifg_step(g[:, :3 * H], c[None]), "c_prev must be a (batch, hidden)"),
    "peepholes 2 rows": (lambda g, c, p: kernels.peephole_step(g, c, p[:2]), "peepholes must have shape"),
    "peepholes too narrow": (lambda g, c, p: kernels.peephole_step(g, c, p[:, :-1]), "peepholes must have shape"),
    "gates float64": (lambda g, c, p: kernels.peephole_step(g.double(), c, p), "gates is torch.float64"),
    "peepholes float64": (lambda g, c, p: kernels.peephole_step(g, c, p.double()), "peepholes is torch.float64"),
    "float16": (lambda g, c, p: kernels.cifg_step(g[:, :3 * H].half(), c.half()), "not supported"),
    "int64": (lambda g, c, p: kernels.cifg_step(g[:, :3 * H].long(), c.long()), "not supported"),
    "meta device": (lambda g, c, p: kernels.cifg_step(g[:, :3 * H].to("meta"), c.to("meta")), "run on the CPU"),
}


@needs_kernels
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("case", list(_BAD_INPUTS))
def test_wrong_inputs_are_rejected_with_a_clear_error(case, requires_grad):
    call, message = _BAD_INPUTS[case]
    gates, c, p = _step_inputs(4, requires_grad=requires_grad)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(gates, c, p)


@pytest.mark.parametrize("call", [lambda g, c, p: kernels.cifg_step(g[:, :3 * H].tolist(), c),
                                  lambda g, c, p: kernels.peephole_step(g, "c", p),
                                  lambda g, c, p: kernels.peephole_step(g, c, p.tolist())])
def test_non_tensors_are_rejected(call):
    with pytest.raises(TypeError, match="must be tensors"):
        call(*_step_inputs(4))


@needs_kernels
@pytest.mark.parametrize("op, args", [
    ("peephole_step_backward", lambda c, a: (c, c, a[:, :4 * H], c, c, torch.zeros(3, H), True)),
    ("peephole_step_backward", lambda c, a: (c[:, :-1], c, a, c, c, torch.zeros(3, H), True)),
    ("cifg_step_backward", lambda c, a: (c, c, a, c)),  # activations 5H wide instead of 4H
    ("cifg_step_backward", lambda c, a: (c, c.double(), a[:, :4 * H], c)),
])
def test_backward_operators_check_their_inputs(op, args):
    c, activations = torch.zeros(B, H), torch.zeros(B, 5 * H)
    with pytest.raises(ValueError, match=f"harness::{op}"):
        getattr(torch.ops.harness, op)(*args(c, activations))


@needs_kernels
@pytest.mark.parametrize("name", ["peephole", "cifg"])
def test_non_contiguous_inputs_give_the_contiguous_results(name):
    gates, c, p = _step_inputs(4 if name == "peephole" else 3, torch.float64)
    wide_gates = torch.cat([gates, gates], 1)[:, ::2]  # same values, stride 2
    wide_c = torch.stack([c, c], 2)[:, :, 0]
    step = (lambda g, c: kernels.peephole_step(g, c, p.t().contiguous().t())) if name == "peephole" \
        else kernels.cifg_step
    assert not wide_gates.is_contiguous() and not wide_c.is_contiguous()
    wide_gates[:] = gates
    for got, want in zip(step(wide_gates, wide_c), step(gates, c)):
        assert torch.equal(got, want)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operators_pass_opcheck(dtype):
    """Schemas, fake (meta) kernels and tracing agree with the CPU kernels (``torch.library.opcheck``)."""
    gates, c, p = _step_inputs(4, dtype)
    h, c_new, activations = torch.ops.harness.peephole_step(gates, c, p)
    checks = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.harness.peephole_step.default, (gates, c, p), test_utils=checks)
    torch.library.opcheck(torch.ops.harness.peephole_step_backward.default,
                          (h, c_new, activations, c, c_new, p, True), test_utils=checks)
    h, c_new, activations = torch.ops.harness.cifg_step(gates[:, :3 * H], c)
    torch.library.opcheck(torch.ops.harness.cifg_step.default, (gates[:, :3 * H], c), test_utils=checks)
    torch.library.opcheck(torch.ops.harness.cifg_step_backward.default, (h, c_new, activations, c),
                          test_utils=checks)


@needs_kernels
def test_profiler_shows_the_operators_by_name():
    """The per-step loop (kept states, as the gradient measurement asks) runs the step operators, a
    plain forward pass the whole-sequence operators."""
    x = torch.randn(B, T, IN)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for make in (build_peephole, build_cifg):
            for keep_states in (True, False):
                model = make(IN, H)
                model.keep_states = keep_states
                features, _ = model(x)
                features.sum().backward()
    names = {event.name for event in profile.events()}
    for op in ("peephole_step", "peephole_step_backward", "cifg_step", "cifg_step_backward", "sequence_forward",
               "sequence_backward"):
        assert f"harness::{op}" in names


def _compiled_matches_eager(monkeypatch, make, backend, load_first=True):
    """A torch.compile'd model of the cell on its per-step loop (``keep_states``) gives the eager model's
    outputs and gradients, and runs the fused step operators (seen by the profiler) without graph
    breaks, whether the kernels were loaded before (``model.implementation`` loads them) or are loaded
    while tracing."""
    from torch._dynamo.utils import counters

    x = torch.randn(B, T, IN, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    results = []
    for compiled in (False, True):
        torch.manual_seed(9)
        model = make(IN, H).double()
        model.keep_states = True
        if compiled:
            _fused(monkeypatch)
            if load_first:
                assert model.implementation == "fused-cpu"
            torch._dynamo.reset()
            counters.clear()
            run = torch.compile(model, backend=backend, fullgraph=False)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                features, summary = run(x)
                (features.square().sum() + summary.sum()).backward()
            names = {event.name for event in profile.events()}
            assert any(name.startswith("harness::") and name.endswith("_step") for name in names), names
            assert any(name.endswith("_step_backward") for name in names), names
            assert not counters["graph_break"], dict(counters["graph_break"])
        else:
            _eager(monkeypatch)  # the reference equations
            features, summary = model(x)
            (features.square().sum() + summary.sum()).backward()
        results.append((features.detach(), [p.grad for p in model.parameters()]))
    (f_compiled, g_compiled), (f_eager, g_eager) = results[1], results[0]
    torch.testing.assert_close(f_compiled, f_eager, atol=1e-12, rtol=0)
    for got, want in zip(g_compiled, g_eager):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@needs_kernels
@pytest.mark.parametrize("make, load_first", [(build_peephole, True), (build_cifg, True), (build_cifg, False)],
                         ids=["peephole", "cifg", "cifg-loaded-while-tracing"])
def test_torch_compile_traces_the_operators(monkeypatch, make, load_first):
    """torch.compile (AOTAutograd with the fake kernels, no code generation: ~1 s)."""
    _compiled_matches_eager(monkeypatch, make, "aot_eager", load_first)


@pytest.mark.slow
@needs_kernels
@pytest.mark.parametrize("make", [build_peephole, build_cifg], ids=["peephole", "cifg"])
def test_torch_compile_inductor_runs_the_operators(monkeypatch, make):
    """The default torch.compile backend (inductor generates and compiles C++: 15-30 s cold)."""
    _compiled_matches_eager(monkeypatch, make, "inductor")


# --------------------------------------------------------------------------------------------
# which implementation a model uses, and the OpenMP runtime
# --------------------------------------------------------------------------------------------

@needs_kernels
def test_implementation_says_which_path_runs(monkeypatch):
    _fused(monkeypatch)
    for make in (build_peephole, build_cifg):
        model = make(IN, H)
        assert model.implementation == model.cell.implementation == "fused-cpu"
        assert model.double().implementation == "fused-cpu"
        assert model.half().implementation == "eager: no fused kernel for torch.float16"
        assert model.to("meta").implementation == "eager: no fused kernel for meta"
    _eager(monkeypatch)
    assert build_cifg(IN, H).implementation == "eager: HARNESS_FUSED=0"


def test_implementation_when_the_kernels_cannot_be_built(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_compiler", lambda: None)
    kernels.reset()
    assert build_peephole(IN, H).implementation == ("eager: kernels unavailable: KernelsUnavailable: "
                                                    "no C compiler found (set CC)")


def test_cells_without_an_implementation_attribute_say_which_loop_runs_them(monkeypatch):
    from harness.cells import CellLoop, GatedCell

    class Plain(GatedCell):
        def step(self, gates, state):
            return (torch.tanh(gates),)

    class Branching(Plain):
        def step(self, gates, state):  # data-dependent control flow: cannot be traced
            return (torch.tanh(gates) if bool(gates.sum() > 0) else torch.sigmoid(gates),)

    loop = CellLoop(Plain(IN, H))
    assert loop.implementation == "graph-loop"  # before any forward pass: what the first one tries
    loop(torch.randn(2, 3, IN))
    assert loop.implementation == "graph-loop"
    branching = CellLoop(Branching(IN, H))
    with pytest.warns(RuntimeWarning, match="eagerly"):
        branching(torch.randn(2, 3, IN))
    assert branching.implementation.startswith("eager: step not traceable")
    monkeypatch.setenv("HARNESS_GRAPH_LOOP", "0")
    assert CellLoop(Plain(IN, H)).implementation == "eager"


def test_implementation_query_loads_the_kernels_lazily(monkeypatch):
    _fused(monkeypatch)
    model = build_cifg(IN, H)
    assert not build.loaded()  # building a model loads nothing
    if model.implementation == "fused-cpu":
        assert build.loaded()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@needs_kernels
def test_one_openmp_runtime_after_loading_the_kernels():
    """The kernels use torch's OpenMP runtime; loading them must not map a second one."""
    assert kernels.status() == "ok"
    build_cifg(IN, H)(torch.randn(B, T, IN))  # the kernels have run
    with open("/proc/self/maps", encoding="utf-8") as stream:
        mapped = {line.split()[-1] for line in stream if "/" in line}
    runtimes = {path for path in mapped
                if re.fullmatch(r"lib(gomp|iomp5|omp)(-[0-9a-f]+)?\.(so(\.[0-9]+)*|dylib)", os.path.basename(path))}
    assert len(runtimes) == 1, runtimes
    assert any(os.path.basename(path).startswith("cell_kernels-") for path in mapped)
    assert kernels.openmp_runtimes() == sorted(runtimes)
    # -fopenmp exactly when torch's runtime is a libgomp.so.1 the loader would share; a renamed copy
    # (torch 2.4's pip wheels: libgomp-a34b3233.so.1) or another runtime means no OpenMP in the kernels
    shared = re.fullmatch(r"libgomp\.so\.1(\.[0-9]+)*", os.path.basename(next(iter(runtimes))))
    if getattr(torch._C, "has_openmp", False):
        assert build._openmp_flags() == (["-fopenmp"] if shared else [])
