"""The shared cell loop (harness.cells.CellLoop) against the per-step equations, forward and backward.

The loop projects the inputs up front and takes ``W_hh``'s gradient as one product at the end; these
tests hold it to a plain per-step reference written here, with a cell that also uses ``W_hh`` and an
extra parameter inside its step (as the MGU example and the peephole cell do).
"""

from __future__ import annotations

import pytest
import torch

from harness.cells import CellLoop, GatedCell, State

B, T, IN, H = 3, 7, 4, 5


class _TwoGateCell(GatedCell):
    """h_t = (1 - f) h + f tanh(c + U_c (f h) - U_c h + s ⊙ h), f = σ(g_f): uses W_hh and ``scale`` inside."""

    num_gates = 2

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.scale = torch.nn.Parameter(torch.randn(hidden_size))

    def step(self, gates: torch.Tensor, state: State) -> State:
        (h,) = state
        gf, gc = gates.chunk(2, dim=1)
        f = torch.sigmoid(gf)
        u_c = self.weight_hh[self.gate_slice(1)]
        candidate = torch.tanh(torch.addmm(gc, (1.0 - f) * h, u_c.t(), alpha=-1.0) + self.scale * h)
        return (torch.lerp(h, candidate, f),)


class _LSTMLike(GatedCell):
    """Two state tensors (h, c), as the peephole and CIFG cells."""

    num_gates = 4
    state_size = 2

    def step(self, gates: torch.Tensor, state: State) -> State:
        _, c = state
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def _reference(cell: GatedCell, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The equations step by step: gates_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh, state_t = step(...)."""
    state = cell.initial_state(inputs.shape[0], inputs)
    outputs = []
    for t in range(inputs.shape[1]):
        gates = (inputs[:, t] @ cell.weight_ih.t() + cell.bias_ih + state[0] @ cell.weight_hh.t() + cell.bias_hh)
        state = cell.step(gates, state)
        outputs.append(state[0])
    return torch.stack(outputs, 1), outputs[-1]


def _results(run, cell: GatedCell, inputs: torch.Tensor, weights: torch.Tensor):
    """Features, and the gradients of a weighted sum of features and summary w.r.t. inputs and parameters."""
    inputs = inputs.detach().clone().requires_grad_(True)
    features, summary = run(inputs)
    loss = (features * weights).sum() + summary.square().sum()
    params = [p for p in cell.parameters() if p.requires_grad]
    return [features.detach(), *torch.autograd.grad(loss, [inputs, *params])]


@pytest.mark.parametrize("make", [_TwoGateCell, _LSTMLike], ids=["uses-W_hh-in-step", "two-states"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_loop_equals_the_per_step_equations(make, dtype, tolerance):
    torch.manual_seed(0)
    cell = make(IN, H).to(dtype)
    inputs = torch.randn(B, T, IN, dtype=dtype)
    weights = torch.randn(B, T, H, dtype=dtype)
    got = _results(CellLoop(cell), cell, inputs, weights)
    want = _results(lambda x: _reference(cell, x), cell, inputs, weights)
    assert len(got) == len(want) == 2 + len(list(cell.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


def test_projected_and_concatenated_paths_agree():
    """The path torch.compile takes (per-step product over [x_t, h_{t-1}]) gives the same results."""
    torch.manual_seed(1)
    cell = _TwoGateCell(IN, H).double()
    loop = CellLoop(cell)
    inputs, weights = torch.randn(B, T, IN, dtype=torch.float64), torch.randn(B, T, H, dtype=torch.float64)

    def concatenated(x):
        outputs = loop._concatenated(x)
        return torch.stack(outputs, 1), outputs[-1]

    for a, b in zip(_results(loop, cell, inputs, weights), _results(concatenated, cell, inputs, weights)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    torch.manual_seed(2)
    cell = _TwoGateCell(2, 3).double()
    loop = CellLoop(cell)
    inputs = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    names = [f"cell.{name}" for name, _ in cell.named_parameters()]

    def run(x, *values):
        return torch.func.functional_call(loop, dict(zip(names, values)), (x,))[0]

    values = tuple(p.detach().clone().requires_grad_(True) for p in cell.parameters())
    assert torch.autograd.gradcheck(run, (inputs, *values))


def test_kept_states_carry_the_full_gradient():
    """∂L/∂h_t through the recurrence (not only the direct path to the output), as the gradient measurement reads it."""
    torch.manual_seed(3)
    cell = _LSTMLike(IN, H).double()
    loop = CellLoop(cell)
    loop.keep_states = True
    inputs = torch.randn(B, T, IN, dtype=torch.float64)
    features, summary = loop(inputs)
    assert loop.states is not None and len(loop.states) == T
    grads = torch.autograd.grad(summary.sum(), loop.states)
    # reference: the same gradients through the plain per-step graph
    state = cell.initial_state(B, inputs)
    states = []
    for t in range(T):
        gates = inputs[:, t] @ cell.weight_ih.t() + cell.bias_ih + state[0] @ cell.weight_hh.t() + cell.bias_hh
        state = cell.step(gates, state)
        states.append(state[0])
    want = torch.autograd.grad(state[0].sum(), states)
    for got, expected in zip(grads, want):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert grads[0].abs().sum() > 0  # the first state reaches the last through the recurrence


def test_frozen_recurrent_weight():
    torch.manual_seed(4)
    cell = _LSTMLike(IN, H)
    cell.weight_hh.requires_grad_(False)
    features, _ = CellLoop(cell)(torch.randn(B, T, IN))
    features.sum().backward()
    assert cell.weight_hh.grad is None and cell.weight_ih.grad is not None


@pytest.mark.parametrize("shape", [(B, 0, IN), (T, IN)])
def test_bad_input_shapes_are_one_line_errors(shape):
    with pytest.raises(ValueError, match=r"CellLoop expects inputs \(batch, length >= 1, features\)"):
        CellLoop(_LSTMLike(IN, H))(torch.randn(*shape))
