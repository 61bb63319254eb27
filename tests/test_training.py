"""Training-loop facts: seed streams, the held-out set, early stopping, contained failures."""

from __future__ import annotations

import math

import pytest
import torch

from harness.registry.loader import get_state
from harness.runs.seeding import GRADIENT_DATA, INIT, TEST_DATA, TRAIN_DATA, VALIDATION_DATA, derive_seed
from harness.runs.spec import TrialSpec
from harness.runs.training import build_task, forward_in_row_chunks, held_out_set, make_generator, run_trial

TINY = dict(max_steps=20, eval_every=10, eval_size=64, hidden_size=8, batch_size=16, device="cpu")
STREAMS = (INIT, TRAIN_DATA, TEST_DATA, VALIDATION_DATA, GRADIENT_DATA)


def spec(model="lstm", task="recall", length=4, seed=3, options=None, **settings):
    return TrialSpec.build(model, task, length, seed, {**TINY, **settings}, task_options=options or {})


def test_seed_streams_never_collide():
    seeds = {stream: {derive_seed(s, stream) for s in range(2000)} for stream in STREAMS}
    assert all(len(v) == 2000 for v in seeds.values())
    for a in STREAMS:
        for b in STREAMS:
            assert a == b or not seeds[a] & seeds[b]


def _inputs(batches):
    return torch.cat([b.inputs for b in batches]).flatten(1)


@pytest.mark.parametrize("task", ["copy", "recall", "adding"])
def test_training_validation_and_test_streams_are_disjoint(task):
    trial = spec(task=task)
    built, cpu = build_task(trial), torch.device("cpu")
    validation = _inputs(held_out_set(built, trial, cpu, VALIDATION_DATA))
    test = _inputs(held_out_set(built, trial, cpu, TEST_DATA))
    generator = make_generator(cpu, derive_seed(3, TRAIN_DATA))
    train = _inputs([built.sample(64, generator) for _ in range(20)])
    # Discrete tasks at T = 4 have few distinct sequences, so single identical sequences occur by
    # chance (at most this share); the adding problem's real values never repeat.
    by_chance = {"copy": 0.01, "recall": 0.1, "adding": 0.0}[task]
    for name_a, a, name_b, b in (("validation", validation, "test", test), ("validation", validation, "train", train),
                                 ("test", test, "train", train)):
        assert not torch.equal(a[:8], b[:8]), f"{name_a} and {name_b} start alike: shared generator state"
        matches = (a[:, None, :] == b[None, :, :]).all(-1).any(1).float().mean().item()
        assert matches <= by_chance, f"{name_a} sequences found in {name_b}"


def test_held_out_sets_are_the_same_for_every_model():
    sets = []
    for model in ("lstm", "rnn"):
        trial = spec(model=model, task="copy", length=5, seed=7)
        built = build_task(trial)
        sets.append([held_out_set(built, trial, torch.device("cpu"), s) for s in (VALIDATION_DATA, TEST_DATA)])
    for one, other in zip(*sets):
        assert all(torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) for a, b in zip(one, other))
    assert sum(len(b) for b in sets[0][0]) == 64


def test_early_stop_on_validation_and_solved_on_test():
    trial = spec(length=2, seed=0, max_steps=2000, eval_every=25, eval_size=128, hidden_size=16, batch_size=32,
                 threshold=0.9, lr=1e-2)
    row = run_trial(trial).row
    assert row["status"] == "ok" and row["steps"] == row["steps_to_solve"] < 2000 and row["steps"] % 25 == 0
    assert row["val_score"] >= 0.9 and row["best_val_score"] == row["val_score"]
    assert row["solved"] == (row["score"] >= 0.9)


def test_error_in_task_options_is_recorded_not_raised():
    row = run_trial(spec(length=3, seed=0, options={"bogus": 1})).row
    assert row["status"] == "error" and "bogus" in row["error"]
    assert math.isnan(row["score"])


def test_clipping_runs_after_backward_and_before_the_step(monkeypatch):
    """Clip once per step, after backward() (on gradients that exist) and before the step, leaving
    their norm at most ``clip``."""
    real_clip = torch.nn.utils.clip_grad_norm_
    real_step = torch.optim.Adam.step
    events: list[tuple[str, float]] = []

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        assert all(p.grad is not None for p in parameters), "clipping before backward()"
        result = real_clip(parameters, max_norm, *args, **kwargs)
        norm = torch.norm(torch.stack([p.grad.norm() for p in parameters])).item()
        events.append(("clip", norm))
        return result

    def recording_step(self, *args, **kwargs):
        events.append(("step", 0.0))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    row = run_trial(spec(task="adding", length=5, seed=1, clip=0.01)).row
    assert row["status"] == "ok"
    assert [kind for kind, _ in events] == ["clip", "step"] * TINY["max_steps"]
    assert max(norm for kind, norm in events if kind == "clip") <= 0.01 * (1 + 1e-4)


@pytest.mark.parametrize("model", get_state().models.names())
def test_evaluation_in_row_chunks_gives_the_whole_batchs_numbers_bit_for_bit(model, monkeypatch):
    """Above T = 1024 evaluation runs a held-out batch in row chunks (memory); that must change no
    number, for a per-step readout (copy) and a last-step one (recall)."""
    from harness.runs import training

    for task_name in ("copy", "recall"):
        s = spec(model=model, task=task_name, length=12, eval_size=40, hidden_size=16)
        task = build_task(s)
        net = training.build_model(s, task)
        batches = held_out_set(task, s, torch.device("cpu"), VALIDATION_DATA)
        whole = training.evaluate(net, task, batches)
        monkeypatch.setattr(training, "EVAL_ROW_STEPS", 12 * 8)  # 8 rows per chunk: 5 chunks of one batch
        chunked = training.evaluate(net, task, batches)
        monkeypatch.undo()
        assert chunked == whole, (task_name, chunked, whole)


def test_row_chunks_are_powers_of_two_of_at_most_the_row_step_budget():
    from harness.runs.training import EVAL_ROW_STEPS

    calls = []

    def model(part):
        calls.append(len(part))
        return part.sum(-1)

    for length, rows in ((1000, [256]), (1024, [256]), (1280, [128, 128]), (10_000, [16] * 16)):
        calls.clear()
        out = forward_in_row_chunks(model, torch.ones(256, length, 1))
        assert calls == rows and out.shape == (256, length), (length, calls)
        assert max(calls) * length <= EVAL_ROW_STEPS
