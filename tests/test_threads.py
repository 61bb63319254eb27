"""The same numbers for any ``--workers`` without ``--threads`` (and on Ray: ``tests/test_ray_executor.py``,
whose one Ray sweep serves all its tests); the thread count recorded on every row and compared on resume
(issue #19, item 2)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main

# The sweep, on a smaller budget and one seed (no --threads anywhere)
SWEEP = ["--models", "lstm,rnn", "--task", "adding", "--lengths", "10,20", "--seeds", "1", "--steps", "30",
         "--eval-every", "15", "--batch-size", "16", "--hidden-size", "16", "--no-plot", "--quiet"]
NUMBERS = ["model", "task", "length", "seed", "config_id", "status", "score", "loss", "val_score", "val_loss",
           "steps", "threads"]
TINY = ["--models", "rnn", "--task", "adding", "--lengths", "3", "--steps", "4", "--eval-every", "2",
        "--eval-size", "16", "--hidden-size", "4", "--batch-size", "4", "--workers", "0", "--no-plot", "--quiet"]


def numbers(folder: Path, models: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows' numbers and the learning curves (without wall-clock times), in a fixed order; only
    ``models``' where given."""
    rows = pd.read_csv(folder / "results.csv")[NUMBERS]
    curves = pd.read_csv(folder / "curves.csv").drop(columns="elapsed_seconds")
    if models is not None:
        rows, curves = rows[rows["model"].isin(models)], curves[curves["model"].isin(models)]
    rows = rows.sort_values(["model", "length", "seed"])
    curves = curves.sort_values(["model", "length", "seed", "step"])
    return rows.reset_index(drop=True), curves.reset_index(drop=True)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = tmp_path_factory.mktemp("default") / "run"
    assert main(["run", *SWEEP, "--out", str(out)]) == 0
    return numbers(out)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_default_and_explicit_worker_counts_give_identical_numbers(workers, default_run, tmp_path):
    rows, curves = default_run
    assert len(rows) == 4 and set(rows["status"]) == {"ok"} and set(rows["threads"]) == {1}
    out = tmp_path / "run"
    assert main(["run", "--workers", workers, *SWEEP, "--out", str(out)]) == 0
    other_rows, other_curves = numbers(out)
    pd.testing.assert_frame_equal(other_rows, rows)  # score and loss to the last bit, threads too
    pd.testing.assert_frame_equal(other_curves, curves)


def test_a_resume_that_would_train_with_another_thread_count_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--seeds", "1", "--threads", "2", "--out", str(out)]) == 0
    assert set(pd.read_csv(out / "results.csv")["threads"]) == {2}
    # nothing to train: the folder reads back whatever the thread count (nothing would be mixed)
    assert main(["run", *TINY, "--seeds", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    # a new seed would mix 1-thread numbers into a 2-thread folder: refused, naming the setting
    assert main(["run", *TINY, "--seeds", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads 2 -> 1" in err[0], err
    assert main(["run", *TINY, "--seeds", "2", "--threads", "2", "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 2


def test_rows_written_before_the_thread_count_was_recorded_resume_and_grow(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--seeds", "1", "--out", str(out)]) == 0
    rows = pd.read_csv(out / "results.csv")
    rows.drop(columns="threads").to_csv(out / "results.csv", index=False)  # as harness wrote them before
    assert main(["run", *TINY, "--seeds", "2", "--threads", "2", "--out", str(out)]) == 0
    grown = pd.read_csv(out / "results.csv").sort_values("seed")
    assert len(grown) == 2 and grown["threads"].isna().tolist() == [True, False]
