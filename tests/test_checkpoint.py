"""Trial checkpoints: a trial stopped mid-way and resumed gives the row and curve of an uninterrupted run.

Every built-in model is stopped (an exception from the training loop's heartbeat, which ends the
trial as an error the way a killed worker does) after its first checkpoints, then run again from
its checkpoint; every number it records must equal the uninterrupted trial's, bit for bit. The
whole path through the command line (SIGKILL, then the same command again) is in
tests/test_reliability.py.
"""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest

from harness.registry.loader import get_state
from harness.runs import checkpoint
from harness.runs.checkpoint import CheckpointPlan
from harness.runs.spec import TrialSpec
from harness.runs.training import run_trial, set_heartbeat

TINY = dict(max_steps=30, eval_every=5, eval_size=32, hidden_size=8, batch_size=8, device="cpu",
            early_stop="never")
#: What differs between any two runs of a trial: wall-clock times.
TIMINGS = {"train_seconds", "seconds_per_step", "trial_seconds", "finished_at", "elapsed_seconds"}


class Stop(Exception):
    """Ends a trial from inside its training loop, as if its process had been killed there."""


def stop_after(beats: int) -> None:
    """Make the running trial raise :class:`Stop` at its ``beats``-th heartbeat (steps and evaluations beat)."""
    count = [0]

    def beat() -> None:
        count[0] += 1
        if count[0] == beats:
            raise Stop(f"stopped at heartbeat {beats}")
    set_heartbeat(beat)


@pytest.fixture(autouse=True)
def no_heartbeat():
    yield
    set_heartbeat(None)


def trial(tmp_path, model="lstm", task="recall", length=6, seed=1, options=None, **settings) -> TrialSpec:
    spec = TrialSpec.build(model, task, length, seed, {**TINY, **settings}, model_options=options or {})
    plan = CheckpointPlan(str(checkpoint.checkpoint_path(tmp_path, spec.key)), 0.0)  # at every evaluation
    return dataclasses.replace(spec, checkpoint=plan)


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def assert_identical(resumed, whole) -> None:
    assert {k: v for k, v in resumed.row.items() if k not in TIMINGS and not same(v, whole.row[k])} == {}
    assert len(resumed.curve) == len(whole.curve)
    for got, want in zip(resumed.curve, whole.curve):
        assert {k: v for k, v in got.items() if k not in TIMINGS and not same(v, want[k])} == {}, got["step"]
    assert resumed.gradients == whole.gradients


def interrupted_then_resumed(spec: TrialSpec, beats: int):
    stop_after(beats)
    stopped = run_trial(spec)
    set_heartbeat(None)
    assert stopped.status == "error" and "Stop" in stopped.row["error"]
    return run_trial(spec)


@pytest.mark.parametrize("model", get_state().models.names())
def test_a_resumed_trial_gives_the_uninterrupted_numbers(tmp_path, model):
    spec = trial(tmp_path, model)
    whole = run_trial(dataclasses.replace(spec, checkpoint=None))
    assert whole.status == "ok" and whole.row["steps"] == 30
    resumed = interrupted_then_resumed(spec, beats=22)  # at step 16: 15 steps and 3 evaluations (2 beats each) done
    assert resumed.resumed_from == 15
    assert_identical(resumed, whole)
    assert resumed.row["trial_seconds"] > 0


def test_gradient_rows_and_statistics_survive_a_resume(tmp_path):
    spec = trial(tmp_path, "gru", grad_at="0,10,end", grad_stats=True)
    whole = run_trial(dataclasses.replace(spec, checkpoint=None))
    resumed = interrupted_then_resumed(spec, beats=24)
    assert resumed.resumed_from == 15 and {g["at"] for g in resumed.gradients} == {"0", "10", "end"}
    assert_identical(resumed, whole)


def test_chrono_options_and_rmsprop_survive_a_resume(tmp_path):
    spec = trial(tmp_path, "lstm", task="copy", length=5, options={"init": "chrono"}, optimizer="rmsprop")
    whole = run_trial(dataclasses.replace(spec, checkpoint=None))
    assert_identical(interrupted_then_resumed(spec, beats=30), whole)


def test_a_trial_stopped_twice_resumes_from_its_latest_checkpoint(tmp_path):
    spec = trial(tmp_path, "rnn")
    whole = run_trial(dataclasses.replace(spec, checkpoint=None))
    stop_after(8)  # after step 5's evaluation: checkpoint at 5
    assert run_trial(spec).status == "error"
    stop_after(14)  # the resumed run: steps 6..10, evaluation 10 (checkpoint), then stopped
    assert run_trial(spec).status == "error"
    set_heartbeat(None)
    resumed = run_trial(spec)
    assert resumed.resumed_from == 10
    assert_identical(resumed, whole)


def test_a_checkpoint_of_another_trial_thread_count_or_a_damaged_one_is_not_used(tmp_path):
    spec = trial(tmp_path, "lstm", seed=1)
    other = trial(tmp_path, "lstm", seed=2)
    stop_after(21)
    run_trial(other)
    set_heartbeat(None)
    shutil.copy(other.checkpoint.path, spec.checkpoint.path.replace(".pt", ".bak"))
    shutil.copy(other.checkpoint.path, spec.checkpoint.path)  # seed 2's state under seed 1's name
    whole = run_trial(dataclasses.replace(spec, checkpoint=None))
    fresh = run_trial(spec)
    assert fresh.resumed_from == 0
    assert_identical(fresh, whole)
    stop_after(21)
    run_trial(spec)
    set_heartbeat(None)
    assert run_trial(dataclasses.replace(spec.replace(threads=2), checkpoint=spec.checkpoint)).resumed_from == 0
    with open(spec.checkpoint.path, "wb") as damaged:
        damaged.write(b"not a checkpoint")
    fresh = run_trial(spec)
    assert fresh.resumed_from == 0
    assert_identical(fresh, whole)


def test_without_a_plan_nothing_is_written_and_a_slow_cadence_skips_evaluations(tmp_path):
    spec = trial(tmp_path, "lstm")
    run_trial(dataclasses.replace(spec, checkpoint=None))
    assert not (tmp_path / checkpoint.FOLDER).exists()
    hourly = dataclasses.replace(spec, checkpoint=CheckpointPlan(spec.checkpoint.path, 3600.0))
    stop_after(21)
    run_trial(hourly)
    assert not (tmp_path / checkpoint.FOLDER).exists()  # no evaluation came an hour after the start


def test_the_sweep_tells_each_submitted_trial_where_its_checkpoint_goes(tmp_path, monkeypatch):
    from harness.runs.sweep import Checkpointing

    class Collect:
        def __init__(self):
            self.specs = []

        def submit(self, spec):
            self.specs.append(spec)

        def drain(self):
            return 7

    monkeypatch.chdir(tmp_path)
    inner = Collect()
    wrapped = Checkpointing(inner, tmp_path.relative_to(tmp_path), 30.0)  # a relative folder: made absolute
    spec = TrialSpec.build("lstm", "copy", 12, 4, TINY)
    wrapped.submit(spec)
    (sent,) = inner.specs
    assert sent.key == spec.key and sent.checkpoint.every_seconds == 30.0
    assert sent.checkpoint.path == str(tmp_path / "checkpoints" / f"lstm-copy-T12-seed4-{spec.config_id}.pt")
    assert wrapped.drain() == 7  # everything else is the executor's own
