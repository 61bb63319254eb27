"""A real, seconds-long training run that reproduces one qualitative finding of the literature
(Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): a tanh RNN fails within a few tens of steps.

Long-gap recall at T = 50: a gated memory (LSTM) learns to carry the key across the gap, the tanh
RNN does not, over several seeds. The LSTM here starts with a forget bias of 5 (sigma(5) = 0.993,
a memory time scale of ~150 steps): with the default bias of 1 (time scale ~4 steps) the key's
trace after 50 steps is ~0.73^50, too faint to learn from in a short budget (the reference
results in the README discuss this; Tallec & Ollivier 2018 make the same point). This test
fails if a model, the task, seeding or the training loop is broken.
"""

from __future__ import annotations

from harness.runs.spec import TrialSpec
from harness.runs.training import run_trial

SEEDS = (0, 1, 2, 3)
BUDGET = dict(max_steps=500, eval_every=50, eval_size=256, hidden_size=64, batch_size=32, lr=3e-3, device="cpu")



def test_lstm_remembers_across_a_gap_where_the_tanh_rnn_fails():
    lstm = [run_trial(TrialSpec.build("lstm", "recall", 50, s, BUDGET, {"forget_bias": 5.0})).row for s in SEEDS]
    rnn = [run_trial(TrialSpec.build("rnn", "recall", 50, s, BUDGET)).row for s in SEEDS]
    assert all(r["status"] == "ok" for r in lstm + rnn)
    # Majorities, not every seed: a tanh RNN does occasionally bridge 50 steps (seed 4 here did).
    assert sum(r["solved"] for r in lstm) >= 3, [r["score"] for r in lstm]
    assert sum(r["solved"] for r in rnn) <= 1, [r["score"] for r in rnn]
    mean = lambda rows: sum(r["score"] for r in rows) / len(rows)  # noqa: E731
    assert mean(lstm) - mean(rnn) > 0.5, (mean(lstm), mean(rnn))
