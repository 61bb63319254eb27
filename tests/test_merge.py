"""``harness merge``: trials trained in other folders join a run folder as if trained there."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main

TINY = ["--models", "rnn", "--task", "recall", "--lengths", "3,5", "--steps", "10", "--eval-every", "5",
        "--eval-size", "32", "--hidden-size", "4", "--batch-size", "8", "--workers", "0", "--no-plot", "--quiet"]
KEY = ["model", "task", "length", "seed", "config_id"]
NUMBERS = [*KEY, "status", "score", "loss", "val_score", "steps"]


def run(out: Path, *extra: str) -> None:
    assert main(["run", *TINY, *extra, "--out", str(out)]) == 0


def table(folder: Path, name: str, columns: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(folder / name)[columns]
    return frame.sort_values(columns[:6] if name == "curves.csv" else KEY).reset_index(drop=True)


def test_a_sweep_split_across_folders_merges_into_the_whole(tmp_path, capsys):
    whole, part, rest = tmp_path / "whole", tmp_path / "part", tmp_path / "rest"
    run(whole, "--seeds", "0,1")
    run(part, "--seeds", "0,")
    run(rest, "--seeds", "1,")
    assert main(["merge", str(rest), "--into", str(part)]) == 0
    assert "merged 2 trial(s)" in capsys.readouterr().out
    pd.testing.assert_frame_equal(table(part, "results.csv", NUMBERS), table(whole, "results.csv", NUMBERS))
    curve = [*KEY, "step", "val_score", "test_loss"]
    pd.testing.assert_frame_equal(table(part, "curves.csv", curve), table(whole, "curves.csv", curve))
    record = json.loads((part / "run.json").read_text())
    merge = record["invocations"][-1]
    assert merge["trials_merged"] == 2 and merge["command"] == f"harness merge {rest} --into {part}"
    trained_by = json.loads((rest / "run.json").read_text())["invocations"]  # the commands that trained them
    assert merge["merged"] == [{"folder": str(rest), "trials": 2, "invocations": trained_by}]
    assert trained_by[0]["command"] == shlex.join(["harness", "run", *TINY, "--seeds", "1,", "--out", str(rest)])
    # the merged folder resumes as the whole sweep: nothing left to train, run.json kept
    before = (part / "run.json").read_bytes()
    run(part, "--seeds", "0,1")
    assert (part / "run.json").read_bytes() == before
    # merging again brings nothing: every trial is already there, and nothing is rewritten
    assert main(["merge", str(rest), "--into", str(part)]) == 0
    said = capsys.readouterr().out
    assert "merged 0 trial(s)" in said and "2 the destination already had" in said
    assert (part / "run.json").read_bytes() == before


def test_a_trial_run_ahead_of_a_search_is_used_by_it(tmp_path):
    """A length tried in a scratch folder, merged, is read (not trained) when the search reaches it."""
    search = ["horizon", "--models", "rnn", "--task", "recall", "--seeds", "1", "--min-length", "2", "--steps", "20",
              "--eval-every", "10", "--eval-size", "32", "--hidden-size", "4", "--batch-size", "8", "--lr", "1e-2",
              "--criterion", "loss:100", "--workers", "0", "--no-plot", "--quiet"]
    fresh, main_folder, ahead = tmp_path / "fresh", tmp_path / "search", tmp_path / "ahead"
    assert main([*search, "--max-length", "8", "--out", str(fresh)]) == 0
    assert main([*search, "--max-length", "4", "--out", str(main_folder)]) == 0
    assert main([*search, "--min-length", "8", "--max-length", "8", "--out", str(ahead)]) == 0
    assert main(["merge", str(ahead), "--into", str(main_folder)]) == 0
    tried = pd.read_csv(fresh / "results.csv")
    assert list(tried["length"]) == [2, 4, 8]  # a criterion every trial passes: the search reaches T = 8
    before = len(pd.read_csv(main_folder / "results.csv"))
    horizons = (main_folder / "horizons.csv").read_bytes()
    assert main([*search, "--max-length", "8", "--out", str(main_folder)]) == 0
    assert (main_folder / "horizons.csv").read_bytes() == horizons  # the merge wrote what the search writes
    ran = json.loads((main_folder / "run.json").read_text())["invocations"][-1].get("trials_ran", 0)
    assert ran == len(tried) - (before - 1) - 1  # T = 8 was read, not trained
    merged = table(main_folder, "results.csv", NUMBERS)
    assert set(merged["length"]) >= set(tried["length"])
    pd.testing.assert_frame_equal(merged[merged["length"].isin(tried["length"])].reset_index(drop=True),
                                  table(fresh, "results.csv", NUMBERS))
    columns = ["model", "seed", "criterion", "horizon", "first_fail"]  # trials: the one ahead counts where unused
    pd.testing.assert_frame_equal(pd.read_csv(main_folder / "horizons.csv")[columns],
                                  pd.read_csv(fresh / "horizons.csv")[columns])


@pytest.mark.parametrize("difference", ["threads", "implementation", "between sources"])
def test_a_trial_that_does_not_fit_is_refused_and_nothing_is_written(tmp_path, capsys, monkeypatch, difference):
    mine, other, third = tmp_path / "mine", tmp_path / "other", tmp_path / "third"
    model = ["--models", "mingru"]
    run(mine, "--models", "rnn" if difference == "between sources" else "mingru", "--seeds", "0,", "--threads", "1")
    if difference == "implementation":
        monkeypatch.setenv("HARNESS_FUSED", "0")  # the eager equations instead of the fused kernel
    run(other, *model, "--seeds", "1,", "--threads", "2" if difference == "threads" else "1")
    sources = [str(other)]
    if difference == "between sources":  # the destination has no mingru: the sources must agree
        run(third, *model, "--seeds", "2,", "--threads", "2")
        sources.append(str(third))
    files = {name: (mine / name).read_bytes() for name in ("results.csv", "curves.csv", "run.json")}
    capsys.readouterr()
    assert main(["merge", *sources, "--into", str(mine)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("harness: error: merge:") and "\n" not in error
    expected = {"threads": "--threads 2 (the trials it would join: 1)",
                "between sources": "--threads 2 (the trials it would join: 1)",
                "implementation": "it ran on loop (the trials it would join: kernel)"}[difference]
    assert expected in error
    assert {name: (mine / name).read_bytes() for name in files} == files


@pytest.mark.parametrize("problem", ["missing", "same"])
def test_bad_folders_get_one_line(tmp_path, capsys, problem):
    mine = tmp_path / "mine"
    run(mine, "--seeds", "0,")
    source = tmp_path / "nowhere" if problem == "missing" else mine
    capsys.readouterr()
    assert main(["merge", str(source), "--into", str(mine)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("harness: error:") and "\n" not in error
    assert ("not a run folder" if problem == "missing" else "named twice") in error
