"""Correctness of the recurrent models (docs/models.md).

Every custom or wrapped model is checked against an independent float64 step-by-step reference
written here directly from the equations of docs/models.md, and the fused-module equivalences it states
(custom LSTM loop == torch.nn.LSTM, zero peepholes == no peepholes) are checked directly. A generic
contract test runs over every model registered at test time, third-party plugins included.
"""

from __future__ import annotations

import math

import pytest
import torch
from harness.plugins.gated_cell_models import build_cifg, build_peephole
from torch import nn

from harness.model_api import READOUTS, TaskModel
from harness.registry.loader import get_state

IN, H, B, T = 3, 5, 4, 7
ATOL32 = 1e-5
ATOL64 = 1e-10



def _build(name: str, **kwargs) -> nn.Module:
    return get_state().models.get(name).build(**kwargs)


def _inputs(seed: int = 0, batch: int = B, length: int = T, size: int = IN,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, size, generator=gen, dtype=dtype)


def _randomise_(module: nn.Module, seed: int, scale: float = 0.5) -> None:
    """Overwrite every parameter with fresh random values (so e.g. biases are not special)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * scale)


def _lstm_copy(cell) -> nn.LSTM:
    """A torch.nn.LSTM (batch_first) with the weights of a custom 4-gate cell."""
    lstm = nn.LSTM(cell.input_size, cell.hidden_size, batch_first=True)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(cell.weight_ih)
        lstm.weight_hh_l0.copy_(cell.weight_hh)
        lstm.bias_ih_l0.copy_(cell.bias_ih)
        lstm.bias_hh_l0.copy_(cell.bias_hh)
    return lstm


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64).clone()


# --------------------------------------------------------------------------------------------
# float64 step-by-step references, written from the equations of docs/models.md
# --------------------------------------------------------------------------------------------

def _split(t: torch.Tensor, n: int) -> list[torch.Tensor]:
    size = t.shape[0] // n
    return [t[k * size:(k + 1) * size] for k in range(n)]


def ref_rnn(x, w_ih, w_hh, b_ih, b_hh):
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    hs = []
    for t in range(x.shape[1]):
        h = torch.tanh(x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        hs.append(h)
    return torch.stack(hs, 1)


def ref_lstm(x, w_ih, w_hh, b_ih, b_hh, peep=None):
    """LSTM, gate order i, f, g, o; ``peep`` = (p_i, p_f, p_o): i, f see c_{t-1}, o sees c_t."""
    wi, wf, wg, wo = _split(w_ih, 4)
    ui, uf, ug, uo = _split(w_hh, 4)
    bi, bf, bg, bo = (a + b for a, b in zip(_split(b_ih, 4), _split(b_hh, 4)))
    n = w_hh.shape[1]
    h = x.new_zeros(x.shape[0], n)
    c = x.new_zeros(x.shape[0], n)
    zero = x.new_zeros(n)
    p_i, p_f, p_o = peep if peep is not None else (zero, zero, zero)
    hs, cs = [], []
    for t in range(x.shape[1]):
        xt = x[:, t]
        i = torch.sigmoid(xt @ wi.T + h @ ui.T + bi + p_i * c)
        f = torch.sigmoid(xt @ wf.T + h @ uf.T + bf + p_f * c)
        g = torch.tanh(xt @ wg.T + h @ ug.T + bg)
        c = f * c + i * g
        o = torch.sigmoid(xt @ wo.T + h @ uo.T + bo + p_o * c)  # the NEW cell state
        h = o * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs, 1), torch.stack(cs, 1)


def ref_cifg(x, w_ih, w_hh, b_ih, b_hh):
    """Coupled input-forget gate: gates i, g, o; f = 1 - i."""
    wi, wg, wo = _split(w_ih, 3)
    ui, ug, uo = _split(w_hh, 3)
    bi, bg, bo = (a + b for a, b in zip(_split(b_ih, 3), _split(b_hh, 3)))
    n = w_hh.shape[1]
    h = x.new_zeros(x.shape[0], n)
    c = x.new_zeros(x.shape[0], n)
    hs, cs = [], []
    for t in range(x.shape[1]):
        xt = x[:, t]
        i = torch.sigmoid(xt @ wi.T + h @ ui.T + bi)
        f = 1.0 - i
        g = torch.tanh(xt @ wg.T + h @ ug.T + bg)
        c = f * c + i * g
        o = torch.sigmoid(xt @ wo.T + h @ uo.T + bo)
        h = o * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs, 1), torch.stack(cs, 1)


def ref_gru(x, w_ih, w_hh, b_ih, b_hh):
    """GRU with the reset gate applied after the recurrent product (gate order r, z, n)."""
    wr, wz, wn = _split(w_ih, 3)
    ur, uz, un = _split(w_hh, 3)
    bir, biz, bin_ = _split(b_ih, 3)
    bhr, bhz, bhn = _split(b_hh, 3)
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        r = torch.sigmoid(xt @ wr.T + bir + h @ ur.T + bhr)
        z = torch.sigmoid(xt @ wz.T + biz + h @ uz.T + bhz)
        n = torch.tanh(xt @ wn.T + bin_ + r * (h @ un.T + bhn))
        h = (1 - z) * n + z * h
        hs.append(h)
    return torch.stack(hs, 1)


def _fused_params(rnn: nn.Module, suffix: str = "l0"):
    return tuple(_f64(getattr(rnn, f"{kind}_{suffix}"))
                 for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


def _cell_params(cell):
    return tuple(_f64(p) for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh))


# --------------------------------------------------------------------------------------------
# custom LSTM loop == torch.nn.LSTM
# --------------------------------------------------------------------------------------------

def _final_cell_state(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the CellLoop's cell step by step to read its final cell state c_T."""
    cell = model.cell
    state = cell.initial_state(x.shape[0], x)
    for t in range(x.shape[1]):
        gates = x[:, t] @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh + state[0] @ cell.weight_hh.T
        state = cell.step(gates, state)
    return state[1]


def test_custom_lstm_loop_equals_torch_lstm():
    torch.manual_seed(1)
    model = build_peephole(IN, H, peepholes=False)
    _randomise_(model, seed=2)  # nontrivial biases, including the forget gate
    lstm = _lstm_copy(model.cell)

    x = _inputs(3).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    features, summary = model(x)
    ref_features, (h_n, c_n) = lstm(x_ref)

    torch.testing.assert_close(features, ref_features, atol=ATOL32, rtol=0)
    torch.testing.assert_close(summary, h_n[0], atol=ATOL32, rtol=0)
    torch.testing.assert_close(_final_cell_state(model, x.detach()), c_n[0].detach(),
                               atol=ATOL32, rtol=0)

    weights = torch.randn(features.shape, generator=torch.Generator().manual_seed(4))
    (features * weights).sum().backward()
    (ref_features * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=ATOL32, rtol=0)
    # gradients w.r.t. the weights agree too
    torch.testing.assert_close(model.cell.weight_hh.grad, lstm.weight_hh_l0.grad, atol=ATOL32, rtol=0)
    torch.testing.assert_close(model.cell.bias_ih.grad, lstm.bias_ih_l0.grad, atol=ATOL32, rtol=0)


# Hidden sizes on both sides of a SIMD block: CPU kernels round strided and contiguous inputs
# differently for narrow rows, which once made zero peepholes differ from the plain path by 1 ulp.
_ZERO_PEEPHOLE_SIZES = [pytest.param(128, id="H128"), pytest.param(5, id="H5"), pytest.param(13, id="H13")]


@pytest.mark.parametrize("hidden", _ZERO_PEEPHOLE_SIZES)
def test_zero_peepholes_equal_no_peepholes_exactly(hidden):
    torch.manual_seed(5)
    plain = build_peephole(IN, hidden, peepholes=False)
    _randomise_(plain, seed=6)
    peep = build_peephole(IN, hidden, peepholes=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(peep.cell, name).copy_(getattr(plain.cell, name))
        assert peep.cell.peephole_weights.abs().sum() > 0  # it really had peepholes
        peep.cell.peephole_weights.zero_()

    x = _inputs(7)
    f_plain, s_plain = plain(x)
    f_peep, s_peep = peep(x)
    assert torch.equal(f_peep, f_plain)
    assert torch.equal(s_peep, s_plain)


@pytest.mark.parametrize("hidden", [5, 128])
def test_zero_peepholes_equal_torch_lstm(hidden):
    torch.manual_seed(5)
    peep = build_peephole(IN, hidden, peepholes=True)
    _randomise_(peep, seed=6)
    with torch.no_grad():
        peep.cell.peephole_weights.zero_()
    x = _inputs(7)
    features, summary = peep(x)
    ref, (h_n, _) = _lstm_copy(peep.cell)(x)
    torch.testing.assert_close(features, ref, atol=ATOL32, rtol=0)
    torch.testing.assert_close(summary, h_n[0], atol=ATOL32, rtol=0)


# --------------------------------------------------------------------------------------------
# custom cells against float64 references
# --------------------------------------------------------------------------------------------

def test_peephole_matches_float64_reference():
    torch.manual_seed(8)
    model = build_peephole(IN, H, peepholes=True)
    _randomise_(model, seed=9, scale=0.8)  # large peepholes, so their wiring matters
    model = model.double()
    x = _inputs(10, dtype=torch.float64)
    features, summary = model(x)
    cell = model.cell
    p_i, p_f, p_o = _f64(cell.peephole_weights)
    ref_h, ref_c = ref_lstm(x, *_cell_params(cell), peep=(p_i, p_f, p_o))
    torch.testing.assert_close(features, ref_h, atol=ATOL64, rtol=0)
    torch.testing.assert_close(summary, ref_h[:, -1], atol=ATOL64, rtol=0)
    torch.testing.assert_close(_final_cell_state(model, x), ref_c[:, -1], atol=ATOL64, rtol=0)


@pytest.mark.parametrize("variant", ["o_sees_old_c", "swap_i_f", "no_peephole_on_o"])
def test_peephole_reference_distinguishes_wrong_wirings(variant):
    """The reference comparison above is sensitive to each plausible wiring mistake."""
    torch.manual_seed(8)
    model = build_peephole(IN, H, peepholes=True)
    _randomise_(model, seed=9, scale=0.8)
    model = model.double()
    x = _inputs(10, dtype=torch.float64)
    features, _ = model(x)
    w_ih, w_hh, b_ih, b_hh = _cell_params(model.cell)
    p_i, p_f, p_o = _f64(model.cell.peephole_weights)
    if variant == "o_sees_old_c":
        # emulate o looking at c_{t-1}: run the reference by hand
        wi, wf, wg, wo = _split(w_ih, 4)
        ui, uf, ug, uo = _split(w_hh, 4)
        bi, bf, bg, bo = (a + b for a, b in zip(_split(b_ih, 4), _split(b_hh, 4)))
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        hs = []
        for t in range(T):
            xt = x[:, t]
            i = torch.sigmoid(xt @ wi.T + h @ ui.T + bi + p_i * c)
            f = torch.sigmoid(xt @ wf.T + h @ uf.T + bf + p_f * c)
            o = torch.sigmoid(xt @ wo.T + h @ uo.T + bo + p_o * c)
            c = f * c + i * torch.tanh(xt @ wg.T + h @ ug.T + bg)
            h = o * torch.tanh(c)
            hs.append(h)
        wrong = torch.stack(hs, 1)
    elif variant == "swap_i_f":
        wrong, _ = ref_lstm(x, w_ih, w_hh, b_ih, b_hh, peep=(p_f, p_i, p_o))
    else:
        wrong, _ = ref_lstm(x, w_ih, w_hh, b_ih, b_hh, peep=(p_i, p_f, torch.zeros_like(p_o)))
    assert (features - wrong).abs().max() > 1e-4


def test_cifg_matches_float64_reference():
    torch.manual_seed(11)
    model = build_cifg(IN, H)
    _randomise_(model, seed=12, scale=0.8)
    model = model.double()
    x = _inputs(13, dtype=torch.float64)
    features, summary = model(x)
    ref_h, ref_c = ref_cifg(x, *_cell_params(model.cell))
    torch.testing.assert_close(features, ref_h, atol=ATOL64, rtol=0)
    torch.testing.assert_close(summary, ref_h[:, -1], atol=ATOL64, rtol=0)
    torch.testing.assert_close(_final_cell_state(model, x), ref_c[:, -1], atol=ATOL64, rtol=0)


def test_cifg_forget_gate_is_one_minus_input_gate():
    model = build_cifg(IN, H).double()
    cell = model.cell
    gen = torch.Generator().manual_seed(14)
    gates = torch.randn(B, 3 * H, generator=gen, dtype=torch.float64) * 2
    h_prev = torch.randn(B, H, generator=gen, dtype=torch.float64)
    c_prev = torch.randn(B, H, generator=gen, dtype=torch.float64) * 3
    h, c = cell.step(gates, (h_prev, c_prev))
    gi, gg, go = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    i, g, o = torch.sigmoid(gi), torch.tanh(gg), torch.sigmoid(go)
    expected_c = (1 - i) * c_prev + i * g
    torch.testing.assert_close(c, expected_c, atol=1e-12, rtol=0)
    torch.testing.assert_close(h, o * torch.tanh(expected_c), atol=1e-12, rtol=0)
    # the cell state carried over is exactly the part 1 - i lets through: with g == 0 the update
    # is a pure forget, (1 - i) * c
    gates_no_g = gates.clone()
    gates_no_g[:, H:2 * H] = 0.0
    _, c_forget = cell.step(gates_no_g, (h_prev, c_prev))
    torch.testing.assert_close(c_forget / c_prev, 1 - i, atol=1e-12, rtol=0)


def test_cifg_has_three_gate_blocks_and_no_forget_parameters():
    model = build_cifg(IN, H)
    cell = model.cell
    assert cell.num_gates == 3
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "cell.weight_ih": (3 * H, IN),
        "cell.weight_hh": (3 * H, H),
        "cell.bias_ih": (3 * H,),
        "cell.bias_hh": (3 * H,),
    }
    assert not any("forget" in name or "peephole" in name for name, _ in model.named_parameters())
    # three quarters of an LSTM of the same size
    lstm = build_peephole(IN, H, peepholes=False)
    assert sum(p.numel() for p in model.parameters()) * 4 == sum(p.numel() for p in lstm.parameters()) * 3


# --------------------------------------------------------------------------------------------
# fused models against float64 references
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, reference", [("rnn", ref_rnn), ("lstm", ref_lstm), ("gru", ref_gru)])
def test_fused_model_matches_float64_reference(name, reference):
    torch.manual_seed(15)
    model = _build(name, input_size=IN, hidden_size=H)
    _randomise_(model, seed=16, scale=0.8)
    model = model.double()
    x = _inputs(17, dtype=torch.float64)
    features, summary = model(x)
    ref = reference(x, *_fused_params(model.rnn))
    ref_h = ref[0] if isinstance(ref, tuple) else ref
    assert features.shape == (B, T, H)
    torch.testing.assert_close(features, ref_h, atol=ATOL64, rtol=0)
    torch.testing.assert_close(summary, ref_h[:, -1], atol=ATOL64, rtol=0)


def test_gru_reference_rejects_reset_before_product():
    """The GRU reference is sensitive to where the reset gate is applied (ours: after W_hn h)."""
    torch.manual_seed(15)
    model = _build("gru", input_size=IN, hidden_size=H)
    _randomise_(model, seed=16, scale=0.8)
    model = model.double()
    x = _inputs(17, dtype=torch.float64)
    features, _ = model(x)
    w_ih, w_hh, b_ih, b_hh = _fused_params(model.rnn)
    wr, wz, wn = _split(w_ih, 3)
    ur, uz, un = _split(w_hh, 3)
    bir, biz, bin_ = _split(b_ih, 3)
    bhr, bhz, bhn = _split(b_hh, 3)
    h = x.new_zeros(B, H)
    for t in range(T):
        xt = x[:, t]
        r = torch.sigmoid(xt @ wr.T + bir + h @ ur.T + bhr)
        z = torch.sigmoid(xt @ wz.T + biz + h @ uz.T + bhz)
        n = torch.tanh(xt @ wn.T + bin_ + (r * h) @ un.T + bhn)  # Cho et al.'s original variant
        h = (1 - z) * n + z * h
    assert (features[:, -1] - h).abs().max() > 1e-4


# --------------------------------------------------------------------------------------------
# forget-gate bias initialisation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lstm", "bilstm"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_fused_lstm_total_forget_bias_is_one(name, num_layers):
    torch.manual_seed(18)
    model = _build(name, input_size=IN, hidden_size=H, num_layers=num_layers)
    rnn = model.rnn
    assert isinstance(rnn, nn.LSTM)
    suffixes = [f"l{layer}{rev}" for layer in range(num_layers)
                for rev in (("", "_reverse") if name == "bilstm" else ("",))]
    assert len(suffixes) == num_layers * (2 if name == "bilstm" else 1)
    forget = slice(H, 2 * H)
    for suffix in suffixes:
        b_ih = getattr(rnn, f"bias_ih_{suffix}")
        b_hh = getattr(rnn, f"bias_hh_{suffix}")
        total = (b_ih + b_hh).detach()
        torch.testing.assert_close(total[forget], torch.ones(H), atol=1e-6, rtol=0)
        # the other gates keep PyTorch's random init (a non-constant bias)
        assert total[:H].std() > 0 and total[2 * H:].std() > 0


def test_peephole_forget_bias_is_one():
    torch.manual_seed(19)
    cell = _build("peephole", input_size=IN, hidden_size=H).cell
    total = (cell.bias_ih + cell.bias_hh).detach()
    torch.testing.assert_close(total[H:2 * H], torch.ones(H), atol=1e-6, rtol=0)
    assert total[:H].std() > 0 and total[2 * H:].std() > 0


def test_cifg_input_gate_bias_is_minus_one_for_a_forget_bias_of_one():
    torch.manual_seed(20)
    cell = _build("cifg", input_size=IN, hidden_size=H).cell
    total = (cell.bias_ih + cell.bias_hh).detach()
    torch.testing.assert_close(total[:H], -torch.ones(H), atol=1e-6, rtol=0)
    assert total[H:].std() > 0
    # so the effective initial forget value 1 - sigma(-1) equals sigma(1), as the LSTM's
    torch.testing.assert_close(1 - torch.sigmoid(total[:H]), torch.sigmoid(torch.ones(H)))


# --------------------------------------------------------------------------------------------
# chrono initialisation (Tallec & Ollivier 2018)
# --------------------------------------------------------------------------------------------

def _gate_totals(ih: torch.Tensor, hh: torch.Tensor, blocks: int) -> list[torch.Tensor]:
    total = (ih + hh).detach()
    return list(total.chunk(blocks))


def _assert_log_uniform(values: torch.Tensor, t_max: int) -> None:
    """values = log(u), u ~ U[1, t_max - 1]: within bounds, and u's mean and spread those of the uniform."""
    u = values.exp()
    assert (u >= 1 - 1e-6).all() and (u <= t_max - 1 + 1e-4).all()
    width = t_max - 2
    assert abs(u.mean().item() - (1 + width / 2)) < 4 * width / math.sqrt(12 * len(u))
    assert abs(u.std().item() - width / math.sqrt(12)) < 0.15 * width / math.sqrt(12)


@pytest.mark.parametrize("name", ["lstm", "bilstm"])
def test_lstm_chrono_biases_follow_the_formula(name):
    torch.manual_seed(21)
    big = 2000
    model = _build(name, input_size=IN, hidden_size=big, init="chrono", length=200)
    for suffix in ("l0", "l0_reverse") if name == "bilstm" else ("l0",):
        ih, hh = getattr(model.rnn, f"bias_ih_{suffix}"), getattr(model.rnn, f"bias_hh_{suffix}")
        i, f, g, o = _gate_totals(ih, hh, 4)
        _assert_log_uniform(f, 200)
        torch.testing.assert_close(i, -f)               # input gate: minus the forget bias
        assert g.abs().max() == 0 and o.abs().max() == 0  # every other bias 0
        assert hh.abs().max() == 0                        # the value sits in bias_ih
    # T_max comes from the trial's length unless chrono_max says otherwise
    short = _build("lstm", input_size=IN, hidden_size=big, init="chrono", length=10)
    assert short.rnn.bias_ih_l0[big:2 * big].exp().max() <= 9 + 1e-4
    fixed = _build("lstm", input_size=IN, hidden_size=big, init="chrono", chrono_max=50, length=10)
    _assert_log_uniform(fixed.rnn.bias_ih_l0[big:2 * big].detach(), 50)


def test_gru_chrono_sets_the_update_gate():
    torch.manual_seed(22)
    model = _build("gru", input_size=IN, hidden_size=2000, init="chrono", length=100)
    r, z, n = _gate_totals(model.rnn.bias_ih_l0, model.rnn.bias_hh_l0, 3)
    _assert_log_uniform(z, 100)  # h_t = (1 - z) n + z h_{t-1}: z plays the forget role
    assert r.abs().max() == 0 and n.abs().max() == 0


def test_peephole_and_cifg_chrono_follow_the_formula():
    torch.manual_seed(23)
    big = 2000
    peephole = _build("peephole", input_size=IN, hidden_size=big, init="chrono", length=300).cell
    i, f, g, o = _gate_totals(peephole.bias_ih, peephole.bias_hh, 4)
    _assert_log_uniform(f, 300)
    torch.testing.assert_close(i, -f)
    assert g.abs().max() == 0 and o.abs().max() == 0 and peephole.bias_hh.abs().max() == 0
    cifg = _build("cifg", input_size=IN, hidden_size=big, init="chrono", length=300).cell
    i, g, o = _gate_totals(cifg.bias_ih, cifg.bias_hh, 3)
    _assert_log_uniform(-i, 300)  # f = 1 - i: the input gate carries -log u
    assert g.abs().max() == 0 and o.abs().max() == 0


def test_forget_bias_on_every_lstm_family_model():
    for name in ("lstm", "bilstm", "peephole", "cifg"):
        torch.manual_seed(24)
        model = _build(name, input_size=IN, hidden_size=H, forget_bias=3.0)
        if name == "cifg":
            total = (model.cell.bias_ih + model.cell.bias_hh).detach()[:H]
            torch.testing.assert_close(1 - torch.sigmoid(total), torch.sigmoid(torch.full((H,), 3.0)))
        else:
            cell = model.cell if name == "peephole" else None
            ih = cell.bias_ih if cell is not None else model.rnn.bias_ih_l0
            hh = cell.bias_hh if cell is not None else model.rnn.bias_hh_l0
            torch.testing.assert_close((ih + hh).detach()[H:2 * H], torch.full((H,), 3.0))


@pytest.mark.parametrize("name", ["lstm", "gru", "peephole", "cifg", "mingru", "minlstm", "slstm"])
def test_chrono_scale_sets_t_max_as_a_multiple_of_the_length(name):
    """The chrono paper's copy setting, T_max = 3T/2: ``chrono_scale=1.5`` at T = 100 gives u ~ U[1, 149]."""
    from harness.plugins.initialisation import chrono_t_max

    assert chrono_t_max(None, 1.5, 100) == 150 and chrono_t_max(60, 1.5, 100) == 60
    assert chrono_t_max(None, 1.5, None) is None
    with pytest.raises(ValueError, match="chrono_scale must be a positive number"):
        chrono_t_max(None, 0.0, 100)
    torch.manual_seed(25)
    model = _build(name, input_size=IN, hidden_size=2000, init="chrono", chrono_scale=1.5, length=100)
    biases = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "bias" in n])
    # the largest |bias| is log u for the largest u: beyond T = 100's bound log 99, within 3T/2's log 149
    assert math.log(99) < biases.abs().max().item() <= math.log(149) + 1e-4


def test_chrono_needs_a_length_and_rejects_unknown_inits():
    with pytest.raises(ValueError, match="T_max"):
        _build("lstm", input_size=IN, hidden_size=H, init="chrono")
    with pytest.raises(ValueError, match="init must be one of"):
        _build("lstm", input_size=IN, hidden_size=H, init="orthogonal")


def test_the_trial_passes_its_length_to_chrono():
    from harness.runs.spec import TrialSpec
    from harness.runs.training import build_model, build_task

    spec = TrialSpec.build("lstm", "recall", 30, 0, {"hidden_size": 500, "device": "cpu"}, {"init": "chrono"})
    model = build_model(spec, build_task(spec))
    assert model.core.rnn.bias_ih_l0[500:1000].exp().max() <= 29 + 1e-4


# --------------------------------------------------------------------------------------------
# bilstm summary
# --------------------------------------------------------------------------------------------

def _direction_copies(rnn: nn.LSTM) -> tuple[nn.LSTM, nn.LSTM]:
    fwd = nn.LSTM(rnn.input_size, rnn.hidden_size, batch_first=True)
    bwd = nn.LSTM(rnn.input_size, rnn.hidden_size, batch_first=True)
    with torch.no_grad():
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(fwd, f"{kind}_l0").copy_(getattr(rnn, f"{kind}_l0"))
            getattr(bwd, f"{kind}_l0").copy_(getattr(rnn, f"{kind}_l0_reverse"))
    return fwd, bwd


def _informative_start(seed: int, length: int = 12) -> torch.Tensor:
    x = torch.zeros(B, length, IN)
    x[:, 0] = torch.randn(B, IN, generator=torch.Generator().manual_seed(seed)) * 2
    return x


def test_bilstm_summary_is_forward_final_and_backward_final():
    torch.manual_seed(21)
    model = _build("bilstm", input_size=IN, hidden_size=H)
    assert model.output_size == 2 * H
    fwd, bwd = _direction_copies(model.rnn)
    x = _informative_start(22)
    features, summary = model(x)

    fwd_features, (fwd_h, _) = fwd(x)
    bwd_features, (bwd_h, _) = bwd(torch.flip(x, dims=[1]))
    expected_features = torch.cat([fwd_features, torch.flip(bwd_features, dims=[1])], dim=-1)
    torch.testing.assert_close(features, expected_features, atol=ATOL32, rtol=0)
    torch.testing.assert_close(summary, torch.cat([fwd_h[0], bwd_h[0]], dim=-1), atol=ATOL32, rtol=0)


def test_bilstm_summary_depends_on_first_input_in_both_halves():
    torch.manual_seed(21)
    model = _build("bilstm", input_size=IN, hidden_size=H)
    x = _informative_start(22)
    x_changed = x.clone()
    x_changed[:, 0] = -x[:, 0]  # only t = 0 changes
    _, summary = model(x)
    _, summary_changed = model(x_changed)
    diff = (summary - summary_changed).abs()
    # the forward final state remembers t = 0 through the recurrence (small, but not zero) ...
    assert diff[:, :H].max() > 1e-6
    # ... and the backward final state has just read t = 0, so it changes a lot
    assert diff[:, H:].max() > 1e-2
    # whereas the backward state at the last position has seen only zeros
    features, _ = model(x)
    features_changed, _ = model(x_changed)
    assert torch.equal(features[:, -1, H:], features_changed[:, -1, H:])


# --------------------------------------------------------------------------------------------
# the generic model contract, over every registered model (third-party plugins included)
# --------------------------------------------------------------------------------------------

MODEL_NAMES = get_state().models.names()


def test_builtin_models_are_registered():
    assert {"rnn", "lstm", "gru", "bilstm", "peephole", "cifg"} <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_contract_shapes(name):
    torch.manual_seed(23)
    model = _build(name, input_size=IN, hidden_size=H)
    out = int(model.output_size)
    for batch, length in ((B, T), (1, 1)):
        features, summary = model(_inputs(24, batch=batch, length=length))
        assert features.shape == (batch, length, out)
        assert summary.shape == (batch, out)
        assert features.dtype == summary.dtype == torch.float32
        assert torch.isfinite(features).all() and torch.isfinite(summary).all()
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_contract_gradients_reach_every_parameter(name, readout):
    torch.manual_seed(25)
    model = TaskModel(_build(name, input_size=IN, hidden_size=H), output_size=3, readout=readout)
    x = _inputs(26)
    outputs = model(x)
    assert outputs.shape == ((B, T, 3) if readout == "sequence" else (B, 3))
    weights = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(27))
    (outputs * weights).sum().backward()
    params = list(model.named_parameters())
    assert params
    for pname, param in params:
        assert param.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_contract_deterministic_under_fixed_seed(name):
    x = _inputs(28)
    runs = []
    for _ in range(2):
        torch.manual_seed(29)
        model = _build(name, input_size=IN, hidden_size=H)
        features, summary = model(x)
        runs.append((model.state_dict(), features, summary))
    (sd_a, f_a, s_a), (sd_b, f_b, s_b) = runs
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert torch.equal(f_a, f_b) and torch.equal(s_a, s_b)
    # and the seed is what fixes it: another seed gives another model
    torch.manual_seed(30)
    other = _build(name, input_size=IN, hidden_size=H)
    assert not torch.equal(other(x)[0], f_a)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_contract_hidden_size_is_respected(name):
    sizes = {}
    for hidden in (4, 6):
        torch.manual_seed(31)
        model = _build(name, input_size=IN, hidden_size=hidden)
        out = int(model.output_size)
        assert out % hidden == 0, f"{name}: output_size {out} is not a multiple of hidden_size {hidden}"
        sizes[hidden] = out // hidden
        features, _ = model(_inputs(32))
        assert features.shape[-1] == out
        # every recurrent weight matrix maps hidden_size inputs
        hh = [p for n, p in model.named_parameters() if "hh" in n and p.dim() == 2]
        assert all(p.shape[1] == hidden for p in hh)
    assert sizes[4] == sizes[6]  # directions per position do not depend on the size


@pytest.mark.parametrize("name, directions", [("rnn", 1), ("lstm", 1), ("gru", 1), ("peephole", 1),
                                              ("cifg", 1), ("bilstm", 2)])
def test_builtin_output_size(name, directions):
    model = _build(name, input_size=IN, hidden_size=H)
    assert model.output_size == directions * H
