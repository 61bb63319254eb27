"""Correctness of the built-in tasks (docs/tasks.md): the data they generate, their randomness, and
the loss / score / chance / memoryless numbers they report.

Statistical checks use fixed seeds (deterministic) and bounds of several standard deviations, so
they pass for any correct implementation and fail for a wrong distribution.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.registry.loader import get_state

TASKS = ("copy", "adding", "recall")
BIG = 20_000  # samples for statistical checks



def make(name: str, length: int):
    return get_state().tasks.get(name).build(length=length)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi_square(counts: torch.Tensor) -> float:
    """Pearson's statistic of ``counts`` against the uniform distribution over its cells."""
    counts = counts.double()
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


def assert_uniform(values: torch.Tensor, low: int, high: int) -> None:
    """Integers ``values`` cover exactly ``low..high-1`` with uniform frequencies (loose chi-square)."""
    values = values.flatten()
    assert int(values.min()) == low and int(values.max()) == high - 1
    counts = torch.bincount(values - low, minlength=high - low)
    assert counts.numel() == high - low
    dof = high - low - 1
    # mean dof, sd sqrt(2 dof): a bound 8 sd above the mean is far beyond the 1e-6 quantile
    assert chi_square(counts) < dof + 8 * math.sqrt(2 * dof), counts.tolist()


def symbols_of(inputs: torch.Tensor) -> torch.Tensor:
    """Symbol indices of one-hot inputs, checking that they are one-hot."""
    assert torch.equal(inputs.sum(-1), torch.ones(inputs.shape[:-1]))
    assert ((inputs == 0) | (inputs == 1)).all()
    return inputs.argmax(-1)


# --------------------------------------------------------------------------------------------
# shapes, dtypes, sequence length
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [2, 7, 30])
@pytest.mark.parametrize("name, seq_len, in_size, out_size, readout, target_dtype", [
    ("copy", lambda t: t + 20, 10, 9, "sequence", torch.long),
    ("adding", lambda t: t, 2, 1, "last", torch.float32),
    ("recall", lambda t: t + 2, 17, 8, "last", torch.long),
])
def test_shapes_and_dtypes(name, seq_len, in_size, out_size, readout, target_dtype, length):
    task = make(name, length)
    assert task.length == length
    assert task.sequence_length == seq_len(length)
    assert (task.input_size, task.output_size, task.readout) == (in_size, out_size, readout)
    batch = task.sample(6, gen(0))
    assert len(batch) == 6
    assert batch.inputs.shape == (6, seq_len(length), in_size)
    assert batch.inputs.dtype == torch.float32
    assert batch.targets.dtype == target_dtype
    if readout == "sequence":
        assert batch.targets.shape == (6, seq_len(length))
        assert batch.mask is not None and batch.mask.dtype == torch.bool
        assert batch.mask.shape == (6, seq_len(length))
    else:
        assert batch.targets.shape == (6,)
        assert batch.mask is None
    # outputs of the declared shape are accepted by loss and score
    out_shape = (6, seq_len(length), out_size) if readout == "sequence" else (6, out_size)
    outputs = torch.randn(out_shape, generator=gen(1))
    loss, score = task.loss(outputs, batch), task.score(outputs, batch)
    assert loss.shape == () and torch.isfinite(loss) and loss > 0
    assert score.shape == () and 0 <= float(score) <= 1
    described = task.describe()
    assert described["task"] == name and described["sequence_length"] == seq_len(length)


# --------------------------------------------------------------------------------------------
# copy
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 5, 40])
def test_copy_layout(length):
    task = make("copy", length)
    batch = task.sample(500, gen(2))
    symbols = symbols_of(batch.inputs)
    seq = length + 20
    data = symbols[:, :10]
    assert ((data >= 1) & (data <= 8)).all()
    assert (symbols[:, 10:length + 9] == 0).all()  # T - 1 blanks
    assert symbols[:, 10:length + 9].shape[1] == length - 1
    assert (symbols[:, length + 9] == 9).all()  # the delimiter, at index T + 9
    assert (symbols[:, length + 10:] == 0).all() and symbols[:, length + 10:].shape[1] == 10
    assert (symbols == 9).sum() == 500  # exactly one delimiter per sequence
    # targets: T + 10 blanks, then the data in order
    assert (batch.targets[:, :length + 10] == 0).all()
    assert torch.equal(batch.targets[:, length + 10:], data)
    expected_mask = torch.zeros(500, seq, dtype=torch.bool)
    expected_mask[:, -10:] = True
    assert torch.equal(batch.mask, expected_mask)


def test_copy_symbols_uniform():
    batch = make("copy", 3).sample(BIG // 10 * 2, gen(3))
    data = symbols_of(batch.inputs)[:, :10]
    assert_uniform(data, 1, 9)
    for position in range(10):  # every position on its own, too
        assert_uniform(data[:, position], 1, 9)
    # positions are drawn independently: consecutive symbols agree 1/8 of the time
    same = (data[:, 1:] == data[:, :-1]).double().mean()
    assert abs(float(same) - 1 / 8) < 0.01


@pytest.mark.parametrize("length, spec_value", [(100, 0.1733), (500, 0.0400), (1000, 0.0204)])
def test_copy_memoryless_loss_formula(length, spec_value):
    task = make("copy", length)
    assert task.memoryless_loss == pytest.approx(10 * math.log(8) / (length + 20), rel=1e-12)
    assert task.memoryless_loss == pytest.approx(spec_value, abs=6e-5)


@pytest.mark.parametrize("length", [1, 10, 100])
def test_copy_memoryless_outputs_achieve_memoryless_loss(length):
    task = make("copy", length)
    batch = task.sample(256, gen(4))
    outputs = task.memoryless_outputs(batch)
    assert outputs.shape == (256, length + 20, 9)
    # memoryless: identical for every sequence, whatever it contains
    assert torch.equal(outputs, outputs[:1].expand_as(outputs))
    loss = float(task.loss(outputs, batch))
    assert loss == pytest.approx(task.memoryless_loss, rel=1e-5)
    assert loss == pytest.approx(10 * math.log(8) / (length + 20), rel=1e-5)


def test_copy_chance_score():
    task = make("copy", 20)
    batch = task.sample(BIG, gen(5))
    sd = math.sqrt(1 / 8 * 7 / 8 / (BIG * 10))
    assert task.chance_score == pytest.approx(1 / 8)
    memoryless = float(task.score(task.memoryless_outputs(batch), batch))
    assert abs(memoryless - task.chance_score) < 5 * sd
    guesses = torch.randint(1, 9, (BIG, 10), generator=gen(6))
    outputs = torch.zeros(BIG, task.sequence_length, 9)
    outputs[:, -10:] = F.one_hot(guesses, 9).float()
    assert abs(float(task.score(outputs, batch)) - task.chance_score) < 5 * sd


def _copy_outputs(targets: torch.Tensor, wrong_answers: bool, wrong_blanks: bool) -> torch.Tensor:
    labels = targets.clone()
    if wrong_answers:
        labels[:, -10:] = labels[:, -10:] % 8 + 1  # another data symbol, always different
    if wrong_blanks:
        labels[:, :-10] = 3
    return F.one_hot(labels, 9).float() * 10


@pytest.mark.parametrize("wrong_answers, wrong_blanks, expected", [
    (False, False, 1.0),
    (True, False, 0.0),  # right on every blank, wrong on every answer: scores 0
    (False, True, 1.0),  # wrong on every blank, right on every answer: scores 1
    (True, True, 0.0),
])
def test_copy_score_counts_only_answer_positions(wrong_answers, wrong_blanks, expected):
    task = make("copy", 30)
    batch = task.sample(64, gen(7))
    outputs = _copy_outputs(batch.targets, wrong_answers, wrong_blanks)
    assert float(task.score(outputs, batch)) == expected
    # the loss, by contrast, is taken over all T + 20 positions
    errors = (outputs.argmax(-1) != batch.targets).float().mean()
    assert (float(task.loss(outputs, batch)) > 0.1) == bool(errors > 0)


def test_copy_score_partial_answers():
    task = make("copy", 10)
    batch = task.sample(64, gen(8))
    outputs = _copy_outputs(batch.targets, wrong_answers=False, wrong_blanks=False)
    outputs[:, -3:] = _copy_outputs(batch.targets, wrong_answers=True, wrong_blanks=False)[:, -3:]
    assert float(task.score(outputs, batch)) == pytest.approx(0.7)


# --------------------------------------------------------------------------------------------
# adding
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [2, 3, 9, 20])
def test_adding_layout(length):
    task = make("adding", length)
    batch = task.sample(2000, gen(9))
    values, markers = batch.inputs[..., 0], batch.inputs[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert ((markers == 0) | (markers == 1)).all()
    assert torch.equal(markers.sum(1), torch.full((2000,), 2.0))
    half = math.ceil(length / 2)
    assert torch.equal(markers[:, :half].sum(1), torch.ones(2000))
    assert torch.equal(markers[:, half:].sum(1), torch.ones(2000))
    torch.testing.assert_close(batch.targets, (values * markers).sum(1), atol=1e-6, rtol=0)


def test_adding_distributions():
    length = 20
    batch = make("adding", length).sample(BIG, gen(10))
    values, markers = batch.inputs[..., 0], batch.inputs[..., 1]
    first = markers[:, :math.ceil(length / 2)].argmax(1)
    second = markers[:, math.ceil(length / 2):].argmax(1) + math.ceil(length / 2)
    assert_uniform(first, 0, math.ceil(length / 2))
    assert_uniform(second, math.ceil(length / 2), length)
    # values uniform on [0, 1]: mean, variance and a 20-bin histogram
    n = values.numel()
    assert abs(float(values.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(float(values.var()) - 1 / 12) < 0.002
    bins = torch.clamp((values * 20).long(), max=19)
    assert_uniform(bins, 0, 20)


def _later_value(batch, length: int) -> torch.Tensor:
    values, markers = batch.inputs[..., 0], batch.inputs[..., 1]
    return (values * markers)[:, math.ceil(length / 2):].sum(1)


def test_adding_memoryless_loss():
    length = 10
    task = make("adding", length)
    batch = task.sample(BIG, gen(11))
    outputs = task.memoryless_outputs(batch)
    assert outputs.shape == (BIG, 1)
    assert torch.equal(outputs, torch.ones(BIG, 1))
    # MSE of the constant 1: var(U1 + U2) = 1/6; sd of (S - 1)^2 is sqrt(7/180)
    tol = 5 * math.sqrt(7 / 180 / BIG)
    assert task.memoryless_loss == pytest.approx(1 / 6)
    assert abs(float(task.loss(outputs, batch)) - 1 / 6) < tol
    assert abs(float(task.loss(outputs, batch)) - task.memoryless_loss) < tol
    # remembering only the later (nearer) value: predict it + 1/2, MSE var(U) = 1/12
    nearer = (_later_value(batch, length) + 0.5)[:, None]
    assert task.nearer_value_loss == pytest.approx(1 / 12)
    loss = float(task.loss(nearer, batch))
    assert abs(loss - 1 / 12) < 5 * math.sqrt((1 / 80 - 1 / 144) / BIG)
    assert abs(loss - task.nearer_value_loss) < 0.003


def test_adding_chance_score():
    task = make("adding", 10)
    batch = task.sample(BIG, gen(12))
    assert task.chance_score == pytest.approx(0.0784, abs=1e-4)
    sd = math.sqrt(0.0784 * (1 - 0.0784) / BIG)
    empirical = float(task.score(task.memoryless_outputs(batch), batch))
    assert abs(empirical - task.chance_score) < 5 * sd
    # the constant 1 is the best blind guess: other constants score lower
    for guess in (0.8, 1.2):
        worse = float(task.score(torch.full((BIG, 1), guess), batch))
        assert worse < empirical - 5 * sd


@pytest.mark.parametrize("offset, expected", [(0.0, 1.0), (0.03, 1.0), (-0.035, 1.0), (0.05, 0.0),
                                              (-0.06, 0.0)])
def test_adding_score_tolerance(offset, expected):
    task = make("adding", 10)
    batch = task.sample(100, gen(13))
    outputs = (batch.targets + offset)[:, None]
    assert float(task.score(outputs, batch)) == expected
    assert float(task.loss(outputs, batch)) == pytest.approx(offset ** 2, abs=1e-6)


# --------------------------------------------------------------------------------------------
# recall
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 4, 25])
def test_recall_layout(length):
    task = make("recall", length)
    batch = task.sample(1000, gen(14))
    symbols = symbols_of(batch.inputs)
    assert symbols.shape == (1000, length + 2)
    assert ((symbols[:, 0] >= 0) & (symbols[:, 0] <= 7)).all()
    distractors = symbols[:, 1:-1]
    assert distractors.shape[1] == length
    assert ((distractors >= 8) & (distractors <= 15)).all()
    assert (symbols[:, -1] == 16).all()
    assert (symbols == 16).sum() == 1000  # the query only at the end
    assert torch.equal(batch.targets, symbols[:, 0])


def test_recall_distributions():
    batch = make("recall", 10).sample(BIG, gen(15))
    symbols = symbols_of(batch.inputs)
    assert_uniform(batch.targets, 0, 8)
    assert_uniform(symbols[:, 1:-1], 8, 16)
    for position in (1, 5, 10):
        assert_uniform(symbols[:, position], 8, 16)


def test_recall_memoryless_loss_and_chance_score():
    task = make("recall", 10)
    batch = task.sample(BIG, gen(16))
    outputs = task.memoryless_outputs(batch)
    assert outputs.shape == (BIG, 8)
    assert task.memoryless_loss == pytest.approx(math.log(8))
    assert float(task.loss(outputs, batch)) == pytest.approx(math.log(8), rel=1e-6)
    assert task.chance_score == pytest.approx(1 / 8)
    sd = math.sqrt(1 / 8 * 7 / 8 / BIG)
    assert abs(float(task.score(outputs, batch)) - 1 / 8) < 5 * sd
    guesses = F.one_hot(torch.randint(0, 8, (BIG,), generator=gen(17)), 8).float()
    assert abs(float(task.score(guesses, batch)) - 1 / 8) < 5 * sd
    # a model that remembers scores 1, with a loss far below ln 8
    perfect = F.one_hot(batch.targets, 8).float() * 20
    assert float(task.score(perfect, batch)) == 1.0
    assert float(task.loss(perfect, batch)) < 1e-6


@pytest.mark.parametrize("length", [1, 4, 25])
def test_recall_middle_key_layout(length):
    """key_position=middle: T distractors, the key, T distractors, the query (length 2T + 2)."""
    from harness.tasks.recall import LongGapRecall

    task = LongGapRecall(length, key_position="middle")
    assert task.sequence_length == 2 * length + 2 and not task.bidirectional_shortcut
    batch = task.sample(1000, gen(30))
    symbols = symbols_of(batch.inputs)
    assert symbols.shape == (1000, 2 * length + 2)
    key = symbols[:, length]
    assert ((key >= 0) & (key <= 7)).all() and torch.equal(batch.targets, key)
    distractors = torch.cat([symbols[:, :length], symbols[:, length + 1:-1]], 1)
    assert distractors.shape[1] == 2 * length and ((distractors >= 8) & (distractors <= 15)).all()
    assert (symbols[:, -1] == 16).all() and (symbols == 16).sum() == 1000
    # forwards the key is T + 1 steps before the query, backwards T steps after the first position
    assert (2 * length + 1) - length == length + 1


def test_recall_middle_key_baselines_and_the_shortcut_flag():
    from harness.tasks.recall import LongGapRecall

    task = LongGapRecall(10, key_position="middle")
    batch = task.sample(BIG, gen(31))
    assert_uniform(batch.targets, 0, 8)
    assert task.chance_score == pytest.approx(1 / 8) and task.memoryless_loss == pytest.approx(math.log(8))
    assert float(task.loss(task.memoryless_outputs(batch), batch)) == pytest.approx(math.log(8), rel=1e-6)
    assert LongGapRecall(10).bidirectional_shortcut  # the key at the start is at distance 0 backwards
    with pytest.raises(HarnessError, match="key_position"):
        LongGapRecall(10, key_position="end")


def test_task_horizon_criteria():
    assert make("adding", 10).horizon_criterion == "loss:0.1"
    assert make("recall", 10).horizon_criterion == "normalised:0.9"
    assert make("copy", 10).horizon_criterion == "normalised:0.9"


# --------------------------------------------------------------------------------------------
# randomness: explicit generators only
# --------------------------------------------------------------------------------------------

def _batch_tensors(batch):
    return [batch.inputs, batch.targets] + ([batch.mask] if batch.mask is not None else [])


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_batch_different_seed_different_batch(name):
    task = make(name, 12)
    a = task.sample(32, gen(100))
    torch.manual_seed(12345)  # the global seed must not matter
    b = task.sample(32, gen(100))
    c = task.sample(32, gen(101))
    assert all(torch.equal(x, y) for x, y in zip(_batch_tensors(a), _batch_tensors(b)))
    assert not torch.equal(a.inputs, c.inputs)
    assert not torch.equal(a.targets, c.targets)
    # successive batches from one generator differ too (fresh data every step)
    g = gen(100)
    first, second = task.sample(32, g), task.sample(32, g)
    assert torch.equal(first.inputs, a.inputs)
    assert not torch.equal(first.inputs, second.inputs)


@pytest.mark.parametrize("name", TASKS)
def test_tasks_never_touch_global_rng(name):
    task = make(name, 12)
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    batch = task.sample(64, gen(18))
    outputs = task.memoryless_outputs(batch)
    task.loss(outputs, batch)
    task.score(outputs, batch)
    task.describe()
    assert torch.equal(torch.random.get_rng_state(), before)


# --------------------------------------------------------------------------------------------
# invalid lengths
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, -1, 1.5, True, False, "10", None])
@pytest.mark.parametrize("name", TASKS)
def test_invalid_lengths_raise(name, length):
    with pytest.raises(HarnessError):
        make(name, length)


def test_adding_needs_two_steps():
    with pytest.raises(HarnessError):
        make("adding", 1)
    assert make("adding", 2).sequence_length == 2


@pytest.mark.parametrize("name", ["copy", "recall"])
def test_length_one_is_valid(name):
    assert make(name, 1).length == 1


# --------------------------------------------------------------------------------------------
# the chance check rejects a stated chance on either side of the measured one
# --------------------------------------------------------------------------------------------

def _with_chance(name: str, value: float):
    base = type(make(name, 3))

    class StatedChance(base):  # type: ignore[misc, valid-type]
        @property
        def chance_score(self):
            return value

    return StatedChance


@pytest.mark.parametrize("name, stated", [("recall", 0.5), ("recall", 0.2), ("copy", 0.5), ("selective_copy", 0.3)])
def test_a_stated_chance_above_the_measured_one_is_rejected(name, stated):
    from harness.testing import check_task

    with pytest.raises(AssertionError, match=rf"chance_score {stated:.4f} is above the best score measured for a "
                                             rf"predictor that ignores the inputs, 0\.1[23]\d+ ± [0-9.e-]+ \(") as info:
        check_task(_with_chance(name, stated), length=4, samples=4096, checks=["memoryless and chance"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["recall", "copy", "selective_copy", "mqar", "adding"])
def test_the_true_chance_passes_the_chance_check(name):
    from harness.testing import check_task

    assert check_task(name, length=4, samples=4096, checks=["memoryless and chance"]) == ["memoryless and chance"]
