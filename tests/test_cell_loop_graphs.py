"""The graph loop (harness.step_graphs): a third-party cell's step traced once and run as TorchScript loops.

Each test compares :meth:`CellLoop.forward` on the graph loop with the eager loop (``_projected``, the
path every cell took before) on the same cell, or checks a property that a wrong partition of the
step's graph would break (causality, gradients, fallback).
"""

from __future__ import annotations

import copy

import pytest
import torch
from harness_mgu.mgu import MGUCell

from harness.cells import CellLoop, GatedCell, State


class _ThreeStateCell(GatedCell):
    """A cell with three state tensors, an extra parameter, a buffer, W_hh read inside the step, and
    operations the MGU does not use (exp, maximum, division, a sum over the batch in a parameter's gradient)."""

    num_gates = 3
    state_size = 3

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.scale = torch.nn.Parameter(torch.rand(hidden_size) + 0.5)
        self.register_buffer("offset", torch.full((hidden_size,), 0.25))

    def step(self, gates: torch.Tensor, state: State) -> State:
        h, c, m = state
        gi, gf, gz = gates.chunk(3, dim=1)
        m_new = torch.maximum(torch.nn.functional.logsigmoid(gf) + m, gi)
        i = torch.exp(gi - m_new)
        f = torch.exp(torch.nn.functional.logsigmoid(gf) + m - m_new)
        u = self.weight_hh[self.gate_slice(2)]
        c = f * c + i * torch.tanh(gz - 0.5 * (h @ u.t()) + self.scale * h)
        return torch.tanh(c) / (1.0 + self.offset + i), c, m_new


class _BranchingCell(GatedCell):
    """A step whose control flow depends on the values of its inputs: it cannot be traced."""

    def step(self, gates: torch.Tensor, state: State) -> State:
        (h,) = state
        if gates.sum() > 0:
            return (torch.tanh(gates) * 0.5 + 0.5 * h,)
        return (torch.tanh(gates),)


def _results(loop: CellLoop, inputs: torch.Tensor, weights: torch.Tensor, graph: bool) -> list[torch.Tensor]:
    """Features, last state, and the gradients of a weighted sum of both w.r.t. inputs and parameters."""
    loop.graph_loop = graph
    inputs = inputs.detach().clone().requires_grad_(True)
    if graph:
        features, last = loop(inputs)
    else:
        outputs = loop._projected(inputs)
        features, last = torch.stack(outputs, 1), outputs[-1]
    loss = (features * weights).sum() + (last * weights[:, -1]).square().sum()
    params = list(loop.parameters())
    grads = torch.autograd.grad(loss, [inputs, *params])
    return [features.detach(), last.detach(), *grads]


def _make(kind: str, dtype: torch.dtype, inputs: int = 4, hidden: int = 5) -> CellLoop:
    torch.manual_seed(0)
    cell = MGUCell(inputs, hidden) if kind == "mgu" else _ThreeStateCell(inputs, hidden)
    return CellLoop(cell.to(dtype))


@pytest.mark.parametrize("kind", ["mgu", "three-states"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("length", [1, 9])
def test_graph_loop_equals_the_eager_loop(kind, dtype, tolerance, length):
    loop = _make(kind, dtype)
    inputs = torch.randn(3, length, 4, dtype=dtype)
    weights = torch.randn(3, length, 5, dtype=dtype)
    got = _results(loop, inputs, weights, graph=True)
    assert loop.implementation == "graph-loop"
    want = _results(loop, inputs, weights, graph=False)
    assert len(got) == len(want) == 3 + len(list(loop.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("kind", ["mgu", "three-states"])
def test_graph_loop_equals_the_eager_loop_over_a_long_sequence(kind):
    loop = _make(kind, torch.float64, hidden=3)
    inputs = torch.randn(2, 2000, 4, dtype=torch.float64)
    weights = torch.randn(2, 2000, 3, dtype=torch.float64)
    got = _results(loop, inputs, weights, graph=True)
    want = _results(loop, inputs, weights, graph=False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("kind", ["mgu", "three-states"])
def test_gradcheck(kind):
    loop = _make(kind, torch.float64, inputs=2, hidden=3)
    names = [name for name, _ in loop.named_parameters()]

    def run(inputs: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.func.functional_call(loop, dict(zip(names, params)), (inputs,))

    inputs = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in loop.parameters()]
    assert torch.autograd.gradcheck(run, (inputs, *params))
    assert loop.implementation == "graph-loop"
    # a graph of the gradients (double backward) is recomputed eagerly
    assert torch.autograd.gradgradcheck(run, (inputs, *params))


def test_causality():
    loop = _make("mgu", torch.float64)
    inputs = torch.randn(3, 12, 4, dtype=torch.float64)
    moved = inputs.clone()
    moved[:, 6] += 1.0
    with torch.no_grad():
        before, after = loop(inputs)[0], loop(moved)[0]
    assert loop.implementation == "graph-loop"
    assert torch.equal(before[:, :6], after[:, :6])
    assert (before[:, 6:] - after[:, 6:]).abs().amax(dim=(0, 2)).min() > 0
    x = inputs.clone().requires_grad_()
    loop(x)[0][:, 6].sum().backward()
    assert x.grad is not None and torch.equal(x.grad[:, 7:], torch.zeros_like(x.grad[:, 7:]))
    assert x.grad[:, :7].abs().amax(dim=(0, 2)).min() > 0


def test_untraceable_step_falls_back_to_the_eager_loop_and_trains():
    torch.manual_seed(0)
    loop = CellLoop(_BranchingCell(3, 4))
    assert loop.implementation == "graph-loop"  # no forward pass yet: what the first one will try
    inputs, target = torch.randn(5, 6, 3), torch.randn(5, 4)
    optimizer = torch.optim.SGD(loop.parameters(), lr=0.1)
    losses = []
    with pytest.warns(RuntimeWarning, match="cannot run this cell"):
        for _ in range(20):
            loss = (loop(inputs)[1] - target).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert loop.implementation.startswith("eager: step not traceable")
    assert losses[-1] < losses[0]
    with torch.no_grad():
        torch.testing.assert_close(loop(inputs)[0], torch.stack(loop._projected(inputs), 1))


def test_switches_and_paths_that_keep_the_eager_loop(monkeypatch):
    loop = _make("mgu", torch.float32)
    inputs = torch.randn(2, 5, 4)
    loop.keep_states = True  # the gradient measurement reads per-step states from the graph
    features, _ = loop(inputs)
    assert loop.states is not None and len(loop.states) == 5 and loop.states[2].grad_fn is not None
    loop.keep_states = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loop._program(inputs) is None  # autocast would change the traced dtypes
    monkeypatch.setenv("HARNESS_GRAPH_LOOP", "0")
    torch.testing.assert_close(loop(inputs)[0], features)
    assert loop.implementation == "eager"
    monkeypatch.delenv("HARNESS_GRAPH_LOOP")
    torch.testing.assert_close(loop(inputs)[0], features)
    assert loop.implementation == "graph-loop"


def test_copies_batch_sizes_and_no_grad():
    loop = _make("mgu", torch.float32)
    copied = copy.deepcopy(loop)
    generator = torch.get_rng_state()
    loop(torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(1)))  # traces, compiles, checks
    assert torch.equal(torch.get_rng_state(), generator)  # and leaves the global generator alone
    for batch in (2, 3):
        inputs = torch.randn(batch, 4, 4)
        with torch.no_grad():
            torch.testing.assert_close(loop(inputs)[0], torch.stack(loop._projected(inputs), 1))
        torch.testing.assert_close(copied(inputs)[0], loop(inputs)[0])
    assert copied.implementation == loop.implementation == "graph-loop"


def test_cells_with_their_own_implementation_keep_it():
    from harness.registry.loader import get_model

    for name in ("peephole", "cifg"):
        loop = get_model(name).build(input_size=3, hidden_size=4)
        assert loop.implementation == loop.cell.implementation
        loop(torch.randn(2, 3, 3))
        assert loop.implementation == loop.cell.implementation


def test_a_step_that_reads_its_state_only_through_the_gates_runs_on_the_graph_loop():
    """A plain tanh cell (h_t = tanh(gates)): its backward loop returns one tensor, which must still be a tuple."""

    class TanhCell(GatedCell):
        def step(self, gates, state):
            return (torch.tanh(gates),)

    torch.manual_seed(0)
    loop = CellLoop(TanhCell(3, 4)).double()
    x = torch.randn(2, 40, 3, dtype=torch.float64, requires_grad=True)
    out = loop(x)[0]
    assert loop.implementation == "graph-loop"
    reference = torch.stack(loop._projected(x), 1)
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=0)
    for got, want in zip(torch.autograd.grad(out.square().sum(), [x, *loop.parameters()]),
                         torch.autograd.grad(reference.square().sum(), [x, *loop.parameters()])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
