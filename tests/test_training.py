"""Training-loop facts: seed streams, the held-out set, early stopping, contained failures."""

from __future__ import annotations

import math

import pytest
import torch

from harness.runs.seeding import EVAL_DATA, INIT, TRAIN_DATA, derive_seed
from harness.runs.training import TrialSpec, evaluation_set, make_generator, run_trial

TINY = dict(steps=20, eval_every=10, eval_size=64, hidden_size=8, batch_size=16)



def test_seed_streams_never_collide():
    seeds = {stream: {derive_seed(s, stream) for s in range(2000)} for stream in (INIT, TRAIN_DATA, EVAL_DATA)}
    assert all(len(v) == 2000 for v in seeds.values())
    assert not seeds[TRAIN_DATA] & seeds[EVAL_DATA]
    assert not seeds[INIT] & (seeds[TRAIN_DATA] | seeds[EVAL_DATA])


@pytest.mark.parametrize("task", ["copy", "recall", "adding"])
def test_evaluation_data_never_appears_in_training_data(task):
    spec = TrialSpec(model="lstm", task=task, length=4, seed=3, **TINY)
    from harness.runs.training import build_task

    built = build_task(spec)
    eval_inputs = torch.cat([b.inputs for b in evaluation_set(built, spec, torch.device("cpu"))])
    generator = make_generator(torch.device("cpu"), derive_seed(3, TRAIN_DATA))
    train_inputs = torch.cat([built.sample(64, generator).inputs for _ in range(20)])
    # recall at T=4 has 8*8^4 possible sequences, so identical sequences do occur by chance; the
    # streams are independent, so no *run* of consecutive eval sequences may match training data.
    eval_flat, train_flat = eval_inputs.flatten(1), train_inputs.flatten(1)
    assert not torch.equal(eval_flat[:8], train_flat[:8])
    matches = (eval_flat[:, None, :] == train_flat[None, :, :]).all(-1).any(1).float().mean().item()
    expected_by_chance = {"copy": 0.01, "recall": 0.1, "adding": 0.0}[task]
    assert matches <= expected_by_chance


def test_evaluation_set_is_the_same_for_every_model():
    sets = []
    for model in ("lstm", "rnn"):
        spec = TrialSpec(model=model, task="copy", length=5, seed=7, **TINY)
        from harness.runs.training import build_task

        sets.append(evaluation_set(build_task(spec), spec, torch.device("cpu")))
    assert all(torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) for a, b in zip(*sets))
    assert sum(len(b) for b in sets[0]) == 64


def test_early_stop_once_solved():
    spec = TrialSpec(model="lstm", task="recall", length=2, seed=0, steps=2000, eval_every=25,
                     eval_size=128, hidden_size=16, batch_size=32, threshold=0.9, lr=1e-2)
    row = run_trial(spec).row
    assert row["status"] == "ok" and row["solved"]
    assert row["steps"] == row["steps_to_solve"] < 2000 and row["steps"] % 25 == 0
    assert row["score"] >= 0.9 and row["best_score"] == row["score"]


def test_error_in_task_options_is_recorded_not_raised():
    spec = TrialSpec(model="lstm", task="recall", length=3, seed=0, task_options={"bogus": 1}, **TINY)
    row = run_trial(spec).row
    assert row["status"] == "error" and "bogus" in row["error"]
    assert math.isnan(row["score"])


def test_clipping_runs_after_backward_and_before_the_step(monkeypatch):
    """SPEC §4: clip once per step, on gradients that exist, leaving their norm at most ``clip``."""
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
    row = run_trial(TrialSpec(model="lstm", task="adding", length=5, seed=1, clip=0.01, **TINY)).row
    assert row["status"] == "ok"
    assert [kind for kind, _ in events] == ["clip", "step"] * TINY["steps"]
    assert max(norm for kind, norm in events if kind == "clip") <= 0.01 * (1 + 1e-4)
