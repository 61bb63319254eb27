"""Selective copy and MQAR (docs/tasks.md#selective_copy, docs/tasks.md#mqar): layouts, masks,
options, seeding, and the chance and memoryless baselines measured against their derivations.

Statistical checks use fixed seeds and bounds of five standard errors (or a loose chi-square), so
they pass for any correct implementation and fail for a wrong distribution.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.errors import HarnessError
from harness.registry.loader import get_state
from harness.testing import check_task

BIG = 20_000


def make(name: str, length: int, **options):
    return get_state().tasks.get(name).build(length=length, **options)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def symbols_of(inputs: torch.Tensor) -> torch.Tensor:
    """Symbol indices of one-hot inputs, checking that they are one-hot."""
    assert torch.equal(inputs.sum(-1), torch.ones(inputs.shape[:-1]))
    return inputs.argmax(-1)


def assert_uniform(values: torch.Tensor, cells: int) -> None:
    """Integers in 0..cells-1, every one present, frequencies uniform (chi-square 8 sd above its mean)."""
    counts = torch.bincount(values.flatten(), minlength=cells).double()
    assert counts.numel() == cells and (counts > 0).all()
    expected = counts.sum() / cells
    dof = cells - 1
    assert float(((counts - expected) ** 2 / expected).sum()) < dof + 8 * math.sqrt(2 * dof), counts.tolist()


# --------------------------------------------------------------------------------------------
# selective copy
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length, tokens, vocab", [(1, 4, 8), (6, 4, 8), (30, 3, 5), (2, 16, 16)])
def test_selective_copy_layout(length, tokens, vocab):
    task = make("selective_copy", length, tokens=tokens, vocab_size=vocab)
    region, seq = length + tokens, length + 2 * tokens
    assert (task.sequence_length, task.input_size, task.output_size) == (seq, vocab + 2, vocab)
    batch = task.sample(400, gen(1))
    symbols = symbols_of(batch.inputs)
    head, tail = symbols[:, :region], symbols[:, region:]
    data = head != 0
    assert (data.sum(1) == tokens).all()  # K tokens among T blanks
    assert ((head[data] >= 1) & (head[data] <= vocab)).all()
    assert (tail == vocab + 1).all()  # K markers
    in_order = head[data].reshape(400, tokens)  # boolean indexing keeps row-major (time) order
    assert torch.equal(batch.targets[:, region:], in_order - 1)
    assert (batch.targets[:, :region] == 0).all()
    expected_mask = torch.zeros(400, seq, dtype=torch.bool)
    expected_mask[:, region:] = True
    assert torch.equal(batch.mask, expected_mask)


def test_selective_copy_distances_span_k_to_t_plus_k():
    length, tokens = 12, 4
    task = make("selective_copy", length, tokens=tokens)
    symbols = symbols_of(task.sample(BIG, gen(2)).inputs)[:, :length + tokens]
    positions = (symbols != 0).nonzero()[:, 1].reshape(BIG, tokens)
    held = length + tokens + torch.arange(tokens) - positions  # answer position minus read position
    assert int(held.min()) == tokens and int(held.max()) == length + tokens
    # every position of the region holds a token with probability K / (T + K)
    frequency = (symbols != 0).double().mean(0)
    sd = math.sqrt(tokens / (length + tokens) * (1 - tokens / (length + tokens)) / BIG)
    assert (frequency - tokens / (length + tokens)).abs().max() < 5 * sd


def test_selective_copy_tokens_uniform():
    task = make("selective_copy", 5, vocab_size=6)
    targets = task.sample(BIG // 4, gen(3)).targets[:, -task.tokens:]
    assert_uniform(targets, 6)
    for j in range(task.tokens):
        assert_uniform(targets[:, j], 6)


def delay_line_score(task, batch) -> float:
    """Accuracy of the best delay line: at each answer position, the symbol read a fixed number of
    steps earlier, the lag chosen per answer position on this very batch (an optimistic bound for
    any predictor that finds its answer by position alone, such as a time-invariant convolution)."""
    symbols = symbols_of(batch.inputs)
    offset = 1 + (task.keys if task.name == "mqar" else 0)  # the symbol of answer class 0
    targets = batch.targets[:, -task.answers:]
    best = torch.zeros(task.answers)
    seq = task.sequence_length
    for lag in range(1, seq - task.answers + 1):
        earlier = symbols[:, seq - task.answers - lag:seq - lag]
        hits = (earlier - offset == targets).double().mean(0)
        best = torch.maximum(best, hits)
    return float(best.mean())


def test_selective_copy_no_delay_line_solves_it():
    """The point of the task: the spacing varies, so no fixed lag finds the tokens (unlike copy)."""
    task = make("selective_copy", 20)
    assert delay_line_score(task, task.sample(4000, gen(4))) < 0.5
    copy = get_state().tasks.get("copy").build(length=20)  # the test can fail: on copy a delay line is exact
    copy_batch = copy.sample(64, gen(4))
    assert torch.equal(symbols_of(copy_batch.inputs)[:, :10], copy_batch.targets[:, -10:])


# --------------------------------------------------------------------------------------------
# MQAR
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length, pairs, keys, values", [(1, 4, 8, 8), (5, 4, 8, 8), (17, 3, 3, 5), (2, 8, 16, 4)])
def test_mqar_layout(length, pairs, keys, values):
    task = make("mqar", length, pairs=pairs, keys=keys, values=values)
    seq = length + 3 * pairs - 1
    assert (task.sequence_length, task.input_size, task.output_size) == (seq, 1 + keys + values, values)
    batch = task.sample(400, gen(5))
    symbols = symbols_of(batch.inputs)
    pair_keys, pair_values = symbols[:, 0:2 * pairs:2], symbols[:, 1:2 * pairs:2]
    assert ((pair_keys >= 1) & (pair_keys <= keys)).all()
    assert ((pair_values > keys) & (pair_values <= keys + values)).all()
    assert (pair_keys.sort(1).values.diff(dim=1) > 0).all()  # distinct keys
    assert (symbols[:, 2 * pairs:seq - pairs] == 0).all() and seq - 3 * pairs == length - 1  # T - 1 blanks
    queries = symbols[:, -pairs:]
    assert torch.equal(queries.sort(1).values, pair_keys.sort(1).values)  # every key asked once
    asked = (queries[:, :, None] == pair_keys[:, None, :]).int().argmax(-1)  # which pair each query asks
    assert torch.equal(batch.targets[:, -pairs:], pair_values.gather(1, asked) - 1 - keys)
    assert (batch.targets[:, :-pairs] == 0).all()
    expected_mask = torch.zeros(400, seq, dtype=torch.bool)
    expected_mask[:, -pairs:] = True
    assert torch.equal(batch.mask, expected_mask)


def test_mqar_each_query_at_least_t_steps_after_its_pair():
    length, pairs = 10, 4
    task = make("mqar", length, pairs=pairs)
    symbols = symbols_of(task.sample(BIG // 4, gen(6)).inputs)
    pair_keys, queries = symbols[:, 0:2 * pairs:2], symbols[:, -pairs:]
    asked = (queries[:, :, None] == pair_keys[:, None, :]).int().argmax(-1)
    held = (task.sequence_length - pairs + torch.arange(pairs)) - (2 * asked + 1)  # query minus value position
    assert int(held.min()) == length and int(held.max()) == length + 3 * (pairs - 1)
    for r in range(pairs):  # the query order is uniform: query r asks each pair 1/D of the time
        assert_uniform(asked[:, r], pairs)
    assert_uniform(symbols[:, 1:2 * pairs:2] - 1 - task.keys, task.values)


def test_mqar_no_delay_line_solves_it():
    """The queries come in a random order, so the answer must be found by its key, not by position."""
    task = make("mqar", 20)
    assert delay_line_score(task, task.sample(4000, gen(7))) < 0.5


# --------------------------------------------------------------------------------------------
# both: baselines, scoring, seeding, options
# --------------------------------------------------------------------------------------------

CASES = [("selective_copy", {}), ("selective_copy", {"tokens": 2, "vocab_size": 5}),
         ("mqar", {}), ("mqar", {"pairs": 2, "keys": 4, "values": 6})]


@pytest.mark.parametrize("name, options", CASES)
def test_baselines_match_their_derivation(name, options):
    task = make(name, 9, **options)
    classes = task.output_size
    assert task.chance_score == 1 / classes and task.memoryless_loss == pytest.approx(math.log(classes))
    batch = task.sample(BIG, gen(8))
    outputs = task.memoryless_outputs(batch)
    assert float(task.loss(outputs, batch)) == pytest.approx(math.log(classes), rel=1e-6)
    # no input-free guess beats chance: every constant class scores 1/classes within five standard errors
    sd = math.sqrt((1 / classes) * (1 - 1 / classes) / (BIG * task.answers))
    for k in range(classes):
        constant = torch.zeros(BIG, task.sequence_length, classes)
        constant[..., k] = 1.0
        assert abs(float(task.score(constant, batch)) - 1 / classes) < 5 * sd


@pytest.mark.parametrize("name", ["selective_copy", "mqar"])
def test_only_answer_positions_count(name):
    task = make(name, 7)
    batch = task.sample(64, gen(9))
    right = torch.nn.functional.one_hot(batch.targets, task.output_size).float() * 30
    wrong_elsewhere = right.clone()
    wrong_elsewhere[:, :-task.answers] = torch.roll(wrong_elsewhere[:, :-task.answers], 1, dims=-1)
    for outputs in (right, wrong_elsewhere):
        assert float(task.score(outputs, batch)) == 1.0
        assert float(task.loss(outputs, batch)) < 1e-6
    one_wrong = right.clone()
    one_wrong[:, -1] = torch.roll(one_wrong[:, -1], 1, dims=-1)
    assert float(task.score(one_wrong, batch)) == pytest.approx(1 - 1 / task.answers)


@pytest.mark.parametrize("name", ["selective_copy", "mqar"])
def test_seeding(name):
    task = make(name, 6)
    a, b, c = (task.sample(32, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("name, options, fragment", [
    ("selective_copy", {"tokens": 0}, "tokens must be an integer >= 1"),
    ("selective_copy", {"vocab_size": 1}, "vocab_size must be an integer >= 2"),
    ("selective_copy", {"tokens": True}, "tokens must be an integer"),
    ("mqar", {"pairs": 2.5}, "pairs must be an integer >= 1"),
    ("mqar", {"pairs": 5, "keys": 4}, "keys must be at least pairs"),
    ("mqar", {"values": 1}, "values must be an integer >= 2"),
])
def test_bad_options_are_one_line_errors(name, options, fragment):
    with pytest.raises(HarnessError, match=fragment) as info:
        make(name, 5, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, options", CASES[1::2])
def test_contract_checks_pass_with_options(name, options):
    check_task(name, length=3, options=options, samples=2048)
