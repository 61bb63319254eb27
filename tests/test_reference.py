"""Re-run a slice of the reference sweep and compare it with the committed results (slow).

Run with ``python -m pytest -m slow``. On the machine and torch version that produced the
reference the scores are identical (same seed, same device); elsewhere floating-point differences
can change a trial's trajectory, so each mean must agree within seed noise: two standard errors
of the committed seeds, and never less than 0.1.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
SLICE = {"models": "rnn,lstm,gru", "task": "recall,adding", "lengths": "10,20"}


@pytest.mark.slow
def test_reference_slice_reproduces(tmp_path):
    committed = REFERENCE / "results.csv"
    if not committed.exists():
        pytest.fail("results/reference/results.csv is missing: run the reference sweep (README)")
    out = tmp_path / "slice"
    code = main(["run", "--config", str(REFERENCE / "config.toml"), "--models", SLICE["models"],
                 "--task", SLICE["task"], "--lengths", SLICE["lengths"], "--out", str(out),
                 "--no-plot", "--quiet"])
    assert code == 0
    keys = ["model", "task", "length"]
    reference = pd.read_csv(committed)
    reference = reference[reference.model.isin(SLICE["models"].split(","))
                          & reference.task.isin(SLICE["task"].split(","))
                          & reference.length.isin([int(n) for n in SLICE["lengths"].split(",")])]
    ref = reference.groupby(keys)["score"].agg(["mean", "std", "count"])
    new = pd.read_csv(out / "results.csv").groupby(keys)["score"].mean()
    assert len(ref) == len(new) == 12
    for key, row in ref.iterrows():
        noise = max(0.1, 2 * (row["std"] if math.isfinite(row["std"]) else 0) / math.sqrt(row["count"]))
        assert abs(new[key] - row["mean"]) <= noise, (key, new[key], row["mean"], noise)
