"""The MGU against a float64 step-by-step reference written from the paper's equations, and the
harness model contract (``harness.testing``: one test item per check)."""

from __future__ import annotations

import torch
from harness_mgu.mgu import MGUCell, build_mgu

from harness.testing import Subject, parametrize_with_checks

IN, H, B, T = 3, 5, 4, 9


def reference_mgu(x, w_ih, w_hh, b_ih, b_hh):
    """Zhou et al. 2016, eq. (5)-(7), step by step in float64."""
    w_f, w_h = w_ih[:H], w_ih[H:]
    u_f, u_h = w_hh[:H], w_hh[H:]
    b_f, b_h = b_ih[:H] + b_hh[:H], b_ih[H:] + b_hh[H:]
    h = x.new_zeros(x.shape[0], H)
    hs = []
    for t in range(x.shape[1]):
        f = torch.sigmoid(x[:, t] @ w_f.T + h @ u_f.T + b_f)
        candidate = torch.tanh(x[:, t] @ w_h.T + (f * h) @ u_h.T + b_h)
        h = (1 - f) * h + f * candidate
        hs.append(h)
    return torch.stack(hs, 1)


def _randomised_model(seed: int):
    torch.manual_seed(seed)
    model = build_mgu(IN, H)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():  # large random weights, so every term matters
            param.copy_(torch.randn(param.shape, generator=gen) * 0.8)
    return model.double()


def _params(model):
    cell = model.cell
    return [p.detach().clone() for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]


def test_matches_float64_reference():
    model = _randomised_model(0)
    x = torch.randn(B, T, IN, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    features, summary = model(x)
    expected = reference_mgu(x, *_params(model))
    torch.testing.assert_close(features, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(summary, expected[:, -1], atol=1e-10, rtol=0)


def test_reference_comparison_rejects_reset_after_the_product():
    """The test above is sensitive to where f enters the candidate: f ⊙ (U_h h) is another cell."""
    model = _randomised_model(0)
    x = torch.randn(B, T, IN, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    features, _ = model(x)
    w_ih, w_hh, b_ih, b_hh = _params(model)
    h = x.new_zeros(B, H)
    for t in range(T):
        f = torch.sigmoid(x[:, t] @ w_ih[:H].T + h @ w_hh[:H].T + b_ih[:H] + b_hh[:H])
        candidate = torch.tanh(x[:, t] @ w_ih[H:].T + f * (h @ w_hh[H:].T) + b_ih[H:] + b_hh[H:])
        h = (1 - f) * h + f * candidate
    assert (features[:, -1] - h).abs().max() > 1e-3


def test_step_is_one_gate_update():
    """h = (1 − f) ⊙ h + f ⊙ h̃ with f from the first gate block (checked on one step directly)."""
    cell = MGUCell(IN, H).double()
    gen = torch.Generator().manual_seed(3)
    h_prev = torch.randn(B, H, generator=gen, dtype=torch.float64)
    gates = torch.randn(B, 2 * H, generator=gen, dtype=torch.float64)
    (h,) = cell.step(gates, (h_prev,))
    f = torch.sigmoid(gates[:, :H])
    u_h = cell.weight_hh[H:].detach()
    # the loop's block 1 holds U_h h; the step must turn it into U_h (f ⊙ h)
    candidate = torch.tanh(gates[:, H:] - h_prev @ u_h.T + (f * h_prev) @ u_h.T)
    torch.testing.assert_close(h, (1 - f) * h_prev + f * candidate, atol=1e-12, rtol=0)
    # a closed gate keeps the state exactly
    closed = gates.clone()
    closed[:, :H] = -1e4
    (kept,) = cell.step(closed, (h_prev,))
    torch.testing.assert_close(kept, h_prev, atol=1e-12, rtol=0)


def test_gate_bias_and_parameter_count():
    torch.manual_seed(4)
    cell = build_mgu(IN, H).cell
    total = (cell.bias_ih + cell.bias_hh).detach()
    torch.testing.assert_close(total[:H], torch.full((H,), -1.0))
    assert total[H:].std() > 0  # the candidate bias keeps the random init
    shapes = {name: tuple(p.shape) for name, p in cell.named_parameters()}
    assert shapes == {"weight_ih": (2 * H, IN), "weight_hh": (2 * H, H), "bias_ih": (2 * H,), "bias_hh": (2 * H,)}
    gru = torch.nn.GRU(IN, H)
    assert sum(p.numel() for p in cell.parameters()) * 3 == sum(p.numel() for p in gru.parameters()) * 2
    torch.testing.assert_close((build_mgu(IN, H, gate_bias=2.0).cell.bias_ih[:H]).detach(), torch.full((H,), 2.0))


@parametrize_with_checks(models=[Subject(build_mgu, id=f"mgu-h{hidden}", input_size=IN, hidden_size=hidden)
                                 for hidden in (1, 8)])
def test_model_contract(subject, check):
    check(subject)
