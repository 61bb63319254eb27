"""The temporal-order task: its layout, its distributions, and the harness task contract
(``harness.testing``: one test item per check)."""

from __future__ import annotations

import math

import pytest
import torch
from harness_mgu.temporal_order import START, TRIGGER, TemporalOrder, X, Y

from harness.registry.loader import load_plugins
from harness.testing import Subject, parametrize_with_checks

BIG = 8000


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def symbols_of(batch) -> torch.Tensor:
    assert torch.equal(batch.inputs.sum(-1), torch.ones(batch.inputs.shape[:2]))  # one-hot
    return batch.inputs.argmax(-1)


@pytest.mark.parametrize("length", [2, 3, 10, 37, 100])
def test_layout(length):
    task = TemporalOrder(length)
    assert task.sequence_length == length + 2
    batch = task.sample(2000, gen(length))
    symbols = symbols_of(batch)
    assert symbols.shape == (2000, length + 2)
    assert (symbols[:, 0] == START).all() and (symbols[:, -1] == TRIGGER).all()
    body = symbols[:, 1:-1]
    relevant = (body == X) | (body == Y)
    assert (relevant.sum(1) == 2).all()  # exactly two relevant symbols ...
    assert ((body < 4) | relevant).all()  # ... and distractors a-d everywhere else
    positions = torch.nonzero(relevant)[:, 1].reshape(2000, 2) + 1  # sequence positions
    (lo1, hi1), (lo2, hi2) = task.first_window, task.second_window
    assert (lo1, hi1) == (1 + length // 10, 1 + length // 5)
    assert (lo2, hi2) == (1 + length // 2, 1 + 3 * length // 5)
    assert hi1 < lo2  # disjoint windows: the order is well defined
    first, second = positions[:, 0], positions[:, 1]
    assert int(first.min()) == lo1 and int(first.max()) == hi1
    assert int(second.min()) == lo2 and int(second.max()) == hi2
    # the target is the order class XX 0, XY 1, YX 2, YY 3
    rows = torch.arange(2000)
    expected = 2 * (symbols[rows, first] == Y).long() + (symbols[rows, second] == Y).long()
    assert torch.equal(batch.targets, expected)


def test_paper_layout_at_T_100():
    """Hochreiter & Schmidhuber 1997, exp. 6a: t1 in 10-20, t2 in 50-60 (fixed length 102 here)."""
    task = TemporalOrder(100)
    assert task.first_window == (11, 21) and task.second_window == (51, 61)
    # the first relevant symbol lies 80-90 steps before the trigger at position 101
    assert (101 - task.first_window[1], 101 - task.first_window[0]) == (80, 90)


def test_distributions():
    task = TemporalOrder(20)
    batch = task.sample(BIG, gen(1))
    counts = torch.bincount(batch.targets, minlength=4).double()
    sd = math.sqrt(BIG * 0.25 * 0.75)
    assert (counts - BIG / 4).abs().max() < 5 * sd  # classes uniform
    body = symbols_of(batch)[:, 1:-1]
    distractors = body[body < 4]
    assert ((torch.bincount(distractors, minlength=4).double() / distractors.numel() - 0.25).abs() < 0.01).all()
    positions = torch.nonzero((body == X) | (body == Y))[:, 1].reshape(BIG, 2)
    window = torch.bincount(positions[:, 0] - 20 // 10, minlength=3).double()  # body indices 2, 3, 4
    assert window.numel() == 3 and (window / BIG - 1 / 3).abs().max() < 0.03


def test_chance_and_memoryless_numbers():
    task = TemporalOrder(10)
    assert task.chance_score == 0.25
    assert task.memoryless_loss == pytest.approx(math.log(4))
    batch = task.sample(256, gen(2))
    assert float(task.loss(task.memoryless_outputs(batch), batch)) == pytest.approx(math.log(4), rel=1e-6)
    perfect = torch.nn.functional.one_hot(batch.targets, 4).float() * 20
    assert float(task.score(perfect, batch)) == 1.0


@parametrize_with_checks(tasks=[Subject(TemporalOrder, id=f"temporal_order-T{length}", length=length, samples=4096)
                                for length in (2, 10, 100)])
def test_task_contract(subject, check):
    check(subject)


def test_plugin_registers_lazily():
    state = load_plugins(entry_points=False, extra=["harness_mgu.plugin"])
    assert state.models.get("mgu").target == "harness_mgu.mgu:build_mgu"
    assert state.tasks.get("temporal_order").load() is TemporalOrder
    info = next(p for p in state.plugins if p.name == "harness_mgu.plugin")
    assert info.hooks == ["register_models", "register_tasks"] and info.status == "loaded"
