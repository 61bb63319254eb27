"""The modern recurrent models (harness.plugins.modern_rnns) against step-by-step float64 references
written from the papers' equations, independently of the implementations (forward and parameter
gradients, at a short length and at T = 1000); their scan and loop modes against each other; the
contract checks; the initialisations' ranges; the states kept for the gradient-flow measurement."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.registry import get_model, get_task
from harness.runs.options import build_core
from harness.testing import check_model

INPUT, HIDDEN, BATCH = 3, 4, 2
SCAN_MODELS = ("mingru", "minlstm", "lru", "mamba")
ALL_MODELS = (*SCAN_MODELS, "slstm", "indrnn")
SMALL = {"mamba": {"state_size": 3, "expand": 1}}  # keeps the T = 1000 reference fast


def build(name: str, length: int | None = None, **options):
    """The model as the harness builds it for a trial of ``length`` (passed to builders that take it)."""
    torch.manual_seed(0)
    return build_core(get_model(name), INPUT, HIDDEN, length, {**SMALL.get(name, {}), **options})


# ---------------------------------------------------------------------------------------------
# references: one time step at a time, float64, from the papers' equations
# ---------------------------------------------------------------------------------------------

def g(a: torch.Tensor) -> torch.Tensor:
    """minGRU/minLSTM's positive candidate: a + ½ for a ≥ 0, σ(a) below."""
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def ref_mingru(m, x):
    w_z, w_h = m.proj.weight.chunk(2, 0)
    b_z, b_h = m.proj.bias.chunk(2, 0)
    h, out = x.new_zeros(x.shape[0], HIDDEN), []
    for x_t in x.unbind(1):
        z = torch.sigmoid(x_t @ w_z.T + b_z)
        h = (1 - z) * h + z * g(x_t @ w_h.T + b_h)
        out.append(h)
    return torch.stack(out, 1)


def ref_minlstm(m, x):
    w_f, w_i, w_h = m.proj.weight.chunk(3, 0)
    b_f, b_i, b_h = m.proj.bias.chunk(3, 0)
    h, out = x.new_zeros(x.shape[0], HIDDEN), []
    for x_t in x.unbind(1):
        f, i = torch.sigmoid(x_t @ w_f.T + b_f), torch.sigmoid(x_t @ w_i.T + b_i)
        h = f / (f + i) * h + i / (f + i) * g(x_t @ w_h.T + b_h)
        out.append(h)
    return torch.stack(out, 1)


def ref_lru(m, x):
    modulus, angle = torch.exp(-torch.exp(m.nu_log)), torch.exp(m.theta_log)
    lam = torch.polar(modulus, angle)
    gamma = torch.exp(m.gamma_log)
    B, C = torch.complex(m.B_re, m.B_im), torch.complex(m.C_re, m.C_im)
    state, out = torch.zeros(x.shape[0], m.nu_log.shape[0], dtype=lam.dtype), []
    for u in x.unbind(1):
        state = lam * state + gamma * (u.to(lam.dtype) @ B.T)
        out.append(F.gelu((state @ C.T).real + u @ m.D.T))
    return torch.stack(out, 1)


def ref_mamba(m, x):
    stream, gate = (x @ m.in_proj.weight.T + m.in_proj.bias).chunk(2, -1)
    kernel = m.conv.weight[:, 0]  # (width, K)
    size = kernel.shape[1]
    A = -torch.exp(m.A_log)
    h = x.new_zeros(x.shape[0], *A.shape)
    out = []
    for t in range(x.shape[1]):
        # causal depthwise convolution: position t sees stream[t − K + 1 .. t] only
        conv = m.conv.bias + sum(kernel[:, k] * stream[:, t - size + 1 + k]
                                 for k in range(size) if t - size + 1 + k >= 0)
        u = F.silu(conv)
        projected = u @ m.x_proj.weight.T
        low, B, C = projected[:, :m.dt_rank], projected[:, m.dt_rank:m.dt_rank + A.shape[1]], projected[:, -A.shape[1]:]
        delta = F.softplus(low @ m.dt_proj.weight.T + m.dt_proj.bias)
        h = torch.exp(delta[:, :, None] * A) * h + (delta * u)[:, :, None] * B[:, None, :]
        y = (h * C[:, None, :]).sum(-1) + m.D * u
        out.append((y * F.silu(gate[:, t])) @ m.out_proj.weight.T + m.out_proj.bias)
    return torch.stack(out, 1)


def ref_slstm(m, x):
    """Exponential gating without the stabiliser (float64 has the range): the stabiliser must not change h."""
    cell = m.cell
    h = c = n = x.new_zeros(x.shape[0], HIDDEN)
    out = []
    for x_t in x.unbind(1):
        pre = x_t @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
        z, i, f, o = pre.chunk(4, 1)
        f_gate = torch.sigmoid(f) if cell.forget_gate == "sigmoid" else torch.exp(f)
        c = f_gate * c + torch.exp(i) * torch.tanh(z)
        n = f_gate * n + torch.exp(i)
        h = torch.sigmoid(o) * c / n
        out.append(h)
    return torch.stack(out, 1)


def ref_indrnn(m, x):
    bound = 2.0 ** (1 / (m.t_max or x.shape[1]))  # MAG = 2, T the trial's (or else the input's) length
    u = m.recurrent_weight.clamp(-bound, bound)
    h, out = x.new_zeros(x.shape[0], HIDDEN), []
    for x_t in x.unbind(1):
        h = torch.relu(x_t @ m.input.weight.T + m.input.bias + u * h)
        out.append(h)
    return torch.stack(out, 1)


REFERENCES = {"mingru": ref_mingru, "minlstm": ref_minlstm, "lru": ref_lru, "mamba": ref_mamba,
              "slstm": ref_slstm, "indrnn": ref_indrnn}


def inputs(length: int, dtype=torch.float64) -> torch.Tensor:
    """The same inputs in either dtype."""
    x = torch.randn(BATCH, length, INPUT, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return x.to(dtype)


def features_and_grads(model, run, x):
    """The features of ``run(model, x)`` and the gradients of a fixed random projection of them."""
    features = run(model, x)
    weights = torch.randn(features.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    weights = weights.to(features.dtype)  # the same weights in float32 and float64
    params = [p for p in model.parameters() if p.requires_grad]
    return features.detach(), torch.autograd.grad((features * weights).sum(), params)


def own_forward(model, x):
    return model(x)[0]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def variants():
    """Each model in each of its modes (the modes' own algorithms, never the keep_states path)."""
    modes = {"mingru": ("scan", "log-scan", "loop"), "minlstm": ("scan", "log-scan", "loop"),
             "lru": ("scan", "loop"), "mamba": ("scan", "loop")}
    for name in ALL_MODELS:
        for mode in modes.get(name, (None,)):
            yield pytest.param(name, mode, id=f"{name}-{mode}" if mode else name)


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [7, 1000])
@pytest.mark.parametrize("name, mode", list(variants()))
def test_float64_matches_the_papers_equations(name, mode, length):
    options = {"mode": mode} if mode else {}
    if name == "slstm" and length == 7:
        options["forget_gate"] = "exp"  # the exponential forget gate too, where float64 has the range
    model = build(name, length, **options).double()
    x = inputs(length)
    features, grads = features_and_grads(model, own_forward, x)
    expected, expected_grads = features_and_grads(model, REFERENCES[name], x)
    # the log-space scan is exact in real numbers but rounds a* ~ t; float64 keeps it within 1e-9
    tolerance = 1e-9 if mode == "log-scan" else 1e-11
    assert relative_error(features, expected) < tolerance
    for grad, reference in zip(grads, expected_grads):
        assert relative_error(grad, reference) < tolerance * 10


@pytest.mark.parametrize("name", SCAN_MODELS)
def test_scan_and_loop_agree_at_length_1000_in_float32(name):
    x = inputs(1000, torch.float32)
    scan, loop = build(name, 1000, mode="scan"), build(name, 1000, mode="loop")
    scan_f, scan_g = features_and_grads(scan, own_forward, x)
    loop_f, loop_g = features_and_grads(loop, own_forward, x)
    assert relative_error(scan_f, loop_f) < 1e-5
    assert max(relative_error(a, b) for a, b in zip(scan_g, loop_g)) < 1e-4


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_mode_in_float32_is_accurate_at_length_1000(name):
    model = build(name, 1000)
    x = inputs(1000, torch.float32)
    features, grads = features_and_grads(model, own_forward, x)
    f64, g64 = features_and_grads(copy.deepcopy(model).double(), own_forward, x.double())
    assert relative_error(features, f64) < 1e-5
    assert max(relative_error(a, b) for a, b in zip(grads, g64)) < 1e-4


@pytest.mark.parametrize("name", SCAN_MODELS)
def test_contract_checks_pass_in_scan_mode(name):
    """(tests/test_contracts.py checks every registered model in its default mode.)"""
    check_model(name, options={**SMALL.get(name, {}), "mode": "scan"})


@pytest.mark.parametrize("name", ALL_MODELS)
def test_outputs_do_not_see_later_inputs(name):
    model = build(name, 20).double()
    x = inputs(20)
    changed = x.clone()
    changed[:, 10:] += 1.0
    with torch.no_grad():
        before, after = model(x)[0], model(changed)[0]
    assert torch.equal(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


@pytest.mark.parametrize("name", ALL_MODELS)
def test_kept_states_carry_the_gradient(name):
    model = build(name, 30).double()
    model.keep_states = True
    x = inputs(30)
    _, summary = model(x)
    states = model.states
    assert len(states) == 30 and all(s.dim() == 2 and s.shape[0] == BATCH for s in states)
    grads = torch.autograd.grad(summary.sum(), states)
    norms = torch.stack([gr.norm() for gr in grads])
    assert (norms > 0).all() and torch.isfinite(norms).all()


def test_mingru_state_gradient_is_the_product_of_forget_values():
    """∂⟨w, h_T⟩/∂h_t = w ⊙ Π_{s>t} (1 − z_s) for minGRU, computed from the gates directly."""
    model = build("mingru").double()
    model.keep_states = True
    x = inputs(25)
    _, summary = model(x)
    w = torch.randn(summary.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = torch.autograd.grad((summary * w).sum(), model.states)
    k = x @ model.proj.weight[:HIDDEN].T + model.proj.bias[:HIDDEN]
    keep = 1 - torch.sigmoid(k)  # (batch, T, hidden)
    for t in (0, 12, 24):
        expected = w * keep[:, t + 1:].prod(1)
        assert torch.allclose(grads[t], expected.detach(), rtol=1e-10, atol=1e-14)


def test_lru_ring_initialisation_lies_in_its_range():
    model = build("lru", state_size=2000, r_min=0.5, r_max=0.8, max_phase=1.0)
    lam = model.eigenvalues().detach()
    assert lam.abs().min() >= 0.5 - 1e-6 and lam.abs().max() <= 0.8 + 1e-6
    # uniform in area: half the states have |λ|² below the middle of [r_min², r_max²]
    below = float((lam.abs() ** 2 < (0.25 + 0.64) / 2).double().mean())
    assert 0.45 < below < 0.55
    phase = lam.angle()
    assert phase.min() >= 0 and phase.max() <= 1.0 + 1e-6
    gamma = torch.exp(model.gamma_log.detach())
    assert torch.allclose(gamma, torch.sqrt(1 - lam.abs() ** 2), rtol=1e-5)


def test_lru_rejects_an_empty_ring():
    with pytest.raises(HarnessError, match="r_min < r_max"):
        build("lru", r_min=0.9, r_max=0.5)


def test_indrnn_recurrent_weight_is_bounded_by_mag_to_the_one_over_t():
    model = build("indrnn", 100, mag=2.0)
    bound = 2.0 ** (1 / 100)
    u = model.recurrent_weight.detach()
    assert u.min() >= 1 / bound and u.max() <= bound
    with torch.no_grad():
        model.recurrent_weight.fill_(5.0)  # as an optimiser step past the bound would
    x = inputs(50, torch.float32)
    unbuilt = build("indrnn")  # without a length: initialised for T = 1000, bounded by each input's length
    assert (unbuilt.recurrent_weight - 1).abs().max() <= 2.0 ** (1 / 1000) - 1
    clamped = copy.deepcopy(model)
    with torch.no_grad():
        clamped.recurrent_weight.fill_(bound)
        assert torch.equal(model(x)[0], clamped(x)[0])


def test_chrono_spreads_the_memory_times_over_the_length():
    length = 200
    mingru = build("mingru", length, init="chrono")
    z = torch.sigmoid(mingru.proj.bias[:HIDDEN].detach())
    assert ((1 / z >= 2 - 1e-6) & (1 / z <= length + 1e-3)).all()
    minlstm = build("minlstm", length, init="chrono")
    f_bias, i_bias = minlstm.proj.bias[:HIDDEN].detach(), minlstm.proj.bias[HIDDEN:2 * HIDDEN].detach()
    assert torch.equal(f_bias, -i_bias) and (f_bias >= 0).all() and (f_bias <= math.log(length - 1) + 1e-6).all()


@pytest.mark.parametrize("name", SCAN_MODELS)
def test_implementation_says_which_algorithm_runs(name):
    from harness.plugins import kernels

    # auto on the CPU: the C scan kernel where it builds and loads, else the torch loop
    assert build(name).implementation == ("kernel" if kernels.status() == "ok" else "loop")
    assert build(name, mode="scan").implementation == "scan"


@pytest.mark.parametrize("name, options, message", [
    ("mingru", {"mode": "fast"}, "mode must be one of"),
    ("mamba", {"state_size": 0}, "state_size must be a positive integer"),
    ("slstm", {"forget_gate": "tanh"}, "forget_gate must be one of"),
    ("slstm", {"forget_gate": "exp", "init": "chrono", "length": 10}, "needs forget_gate='sigmoid'"),
    ("indrnn", {"mag": 0.5}, "mag must be greater than 1"),
])
def test_bad_options_get_one_line_errors(name, options, message):
    with pytest.raises(HarnessError, match=message) as info:
        build(name, **options)
    assert "\n" not in str(info.value)


def test_each_modern_model_has_its_own_colour_and_an_implementation_option():
    from harness.registry.loader import get_state

    entries = {entry.name: entry for entry in get_state().models}
    colours = [entry.style.get("color") for entry in entries.values()]
    for name in ALL_MODELS:
        assert colours.count(entries[name].style["color"]) == 1
        assert entries[name].order is not None and entries[name].order >= 70
    assert all(entries[name].implementation_options == ("mode",) for name in SCAN_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_the_gradient_flow_measurement_reads_nonzero_state_gradients(name):
    """What `harness gradients` computes: ‖∂L/∂h_t‖ at every position, none of them zero."""
    from harness.model_api import TaskModel
    from harness.runs.gradients import gradient_batch, input_gradients

    task = get_task("recall").build(length=10)
    torch.manual_seed(0)
    core = build_core(get_model(name), task.input_size, HIDDEN, 10, SMALL.get(name, {}))
    model = TaskModel(core, task.output_size, task.readout)
    _, state_norms = input_gradients(model, task, gradient_batch(task, 0, torch.device("cpu"), 8))
    assert state_norms is not None and len(state_norms) == task.sequence_length
    assert (state_norms > 0).all()
    assert core.states is None and not core.keep_states  # left as found
