"""``harness plot`` / ``harness report`` on a real (tiny) run, and the process-pool executor."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.cli import main

TINY = ["--lengths", "3,6", "--seeds", "1", "--steps", "10", "--eval-every", "5", "--eval-size", "32",
        "--hidden-size", "8", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plotrun") / "run"
    assert main(["run", "--models", "lstm,rnn", "--task", "recall", *TINY, "--threads", "1",
                 "--workers", "1", "--out", str(out)]) == 0
    return out


def test_run_draws_figures_at_the_end(run_dir):
    assert (run_dir / "score_vs_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_command_writes_requested_formats(run_dir, tmp_path, capsys):
    capsys.readouterr()
    assert main(["plot", str(run_dir), "--out", str(tmp_path), "--format", "svg", "--format", "png"]) == 0
    printed = capsys.readouterr().out.split()
    assert {p.rsplit(".", 1)[1] for p in printed} == {"svg", "png"}
    assert (tmp_path / "score_vs_length.svg").exists() and (tmp_path / "cost.png").exists()


def test_plot_and_report_reject_a_folder_without_results(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("not a run folder" in line for line in err)


def test_report_formats(run_dir, capsys):
    capsys.readouterr()
    assert main(["report", str(run_dir), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["model"], r["length"]) for r in rows} == {(m, t) for m in ("lstm", "rnn") for t in (3, 6)}
    assert all({"score_mean", "score_std", "horizon", "criterion", "n_seeds"} <= set(r) for r in rows)
    assert main(["report", str(run_dir), "--format", "csv"]) == 0
    table = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert len(table) == 4 and set(table["criterion"]) == {"normalised:0.9"}
    assert main(["report", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "## recall" in text and "memory horizons" in text


def test_two_workers_give_the_same_numbers_as_one(run_dir, tmp_path):
    out = tmp_path / "pool"
    assert main(["run", "--models", "lstm,rnn", "--task", "recall", *TINY, "--threads", "1",
                 "--workers", "2", "--no-plot", "--out", str(out)]) == 0
    cols = ["model", "task", "length", "seed", "score", "loss"]
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "results.csv")[cols],
                                  pd.read_csv(out / "results.csv")[cols])
    assert json.loads((out / "run.json").read_text())["execution"]["workers"] == 2
