"""Tests of harness.analysis.report on hand-made results tables (no training, no torch, no matplotlib)."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.analysis.report import build_report, format_report, load_results, memory_horizon, normalised_auc


def trial(model: str, task: str, length: int, seed: int, score: float, *, solved: bool | None = None,
          status: str = "ok", best_score: float | None = None) -> dict:
    solved = score >= 0.99 if solved is None else solved
    return {
        "model": model, "task": task, "length": length, "seed": seed, "status": status,
        "score": score, "loss": 1.0 - score, "best_score": score if best_score is None else best_score,
        "chance_score": 0.125, "memoryless_loss": math.log(8), "solved": solved,
        "steps_to_solve": 100 if solved else None, "steps": 100 if solved else 1000,
        "max_steps": 1000, "train_seconds": 1.0, "seconds_per_step": 0.001,
        "error": "boom" if status == "error" else None,
    }


def write_run(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "results.csv", index=False)
    return path


def row_of(df: pd.DataFrame, model: str, task: str = "recall") -> pd.Series:
    match = df[(df["model"] == model) & (df["task"] == task)]
    assert len(match) == 1
    return match.iloc[0]


def test_memory_horizon_is_largest_length_solved_by_a_majority(tmp_path):
    rows = []
    solved_counts = {10: 3, 50: 2, 100: 1, 200: 0}
    for length, count in solved_counts.items():
        for seed in range(3):
            rows.append(trial("lstm", "recall", length, seed, 1.0 if seed < count else 0.3))
            rows.append(trial("rnn", "recall", length, seed, 0.2))
    df = build_report([write_run(tmp_path / "run", rows)])
    assert row_of(df, "lstm")["memory_horizon"] == 50
    assert row_of(df, "rnn")["memory_horizon"] == 0  # never solved: 0, not missing


def test_memory_horizon_takes_lengths_independently():
    # Unsolved at 50, solved by 2 of 3 at 100: the documented definition gives 100.
    lengths = [10] * 3 + [50] * 3 + [100] * 3
    solved = [True] * 3 + [False] * 3 + [True, True, False]
    assert memory_horizon(lengths, solved) == 100
    assert memory_horizon([10, 10], [True, False]) == 0  # a tie is no majority
    assert memory_horizon([], []) == 0


def test_normalised_auc_over_log_length():
    assert normalised_auc([10, 100, 1000], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert normalised_auc([10, 100], [1.0, 0.0]) == pytest.approx(0.5)
    assert normalised_auc([10, 100, 1000], [1.0, 1.0, 0.0]) == pytest.approx(0.75)
    # Unequal steps in log length: log 2 at score 1, then log 5 with mean score 0.5.
    expected = (math.log(2) * 1.0 + math.log(5) * 0.5) / math.log(10)
    assert normalised_auc([20, 10, 100], [1.0, 1.0, 0.0]) == pytest.approx(expected)
    assert normalised_auc([50], [0.4]) == pytest.approx(0.4)
    assert math.isnan(normalised_auc([], []))


def test_report_auc_and_mean_std_columns(tmp_path):
    rows = [trial("gru", "recall", 10, s, v) for s, v in enumerate((0.4, 0.5, 0.6))]
    rows += [trial("gru", "recall", 100, s, 0.5) for s in range(3)]
    rows += [trial("cifg", "recall", 10, 0, 0.7)]
    df = build_report([write_run(tmp_path / "run", rows)])
    gru, cifg = row_of(df, "gru"), row_of(df, "cifg")
    assert gru["T=10"] == "0.500 ± 0.100"
    assert gru["T=100"] == "0.500 ± 0.000"
    assert gru["auc"] == pytest.approx(0.5)
    assert cifg["T=10"] == "0.700"            # one seed: the mean alone
    assert pd.isna(cifg["T=100"])             # not tested for cifg
    assert cifg["auc"] == pytest.approx(0.7)  # one length: that score
    assert list(df["model"]) == ["gru", "cifg"]  # built-in order, not alphabetical


def test_error_rows_are_excluded_from_means_but_counted(tmp_path):
    rows = [trial("lstm", "copy", 10, 0, 0.8), trial("lstm", "copy", 10, 1, 0.6),
            trial("lstm", "copy", 10, 2, 0.0, status="error"),
            trial("lstm", "copy", 20, 0, 1.0), trial("lstm", "copy", 20, 1, 0.9, status="diverged"),
            trial("lstm", "copy", 50, 0, 0.0, status="error")]
    df = build_report([write_run(tmp_path / "run", rows)])
    lstm = row_of(df, "lstm", "copy")
    assert lstm["T=10"].startswith("0.700 ± ")    # (0.8 + 0.6) / 2, the error's 0.0 left out
    assert lstm["T=20"].startswith("0.950 ± ")    # the diverged trial counts
    assert lstm["T=50"] == "error"                # tested, but only errors
    assert lstm["n_errors"] == 2
    assert lstm["n_diverged"] == 1
    assert lstm["n_seeds"] == 3
    # AUC uses only lengths with a valid score: 0.7 at 10 and 0.95 at 20.
    assert lstm["auc"] == pytest.approx((0.7 + 0.95) / 2)


def test_threshold_rederives_solved_from_best_score(tmp_path):
    rows = [trial("lstm", "recall", 10, s, 0.6, best_score=0.8, solved=False) for s in range(3)]
    rows += [trial("lstm", "recall", 50, s, 0.4, best_score=0.4, solved=False) for s in range(3)]
    run = write_run(tmp_path / "run", rows)
    assert row_of(build_report([run]), "lstm")["memory_horizon"] == 0
    assert row_of(build_report([run], threshold=0.75), "lstm")["memory_horizon"] == 10
    assert row_of(build_report([run], threshold=0.3), "lstm")["memory_horizon"] == 50


def test_later_run_folder_wins(tmp_path):
    first = write_run(tmp_path / "a", [trial("lstm", "recall", 10, 0, 0.2),
                                       trial("lstm", "recall", 10, 1, 0.4)])
    second = write_run(tmp_path / "b", [trial("lstm", "recall", 10, 0, 1.0),
                                        trial("mine", "recall", 10, 0, 0.9)])
    results = load_results([first, second])
    assert len(results) == 3
    df = build_report([first, second])
    assert row_of(df, "lstm")["T=10"] == "0.700 ± 0.424"  # seeds 1.0 (from b) and 0.4
    assert row_of(df, "mine")["T=10"] == "0.900"
    assert row_of(build_report([second, first]), "lstm")["T=10"].startswith("0.300")


def test_formats_parse_back(tmp_path):
    rows = [trial(m, t, length, s, 1.0 if length == 10 else 0.5)
            for m in ("rnn", "lstm") for t in ("copy", "recall") for length in (10, 20) for s in range(2)]
    rows += [trial("lstm", "copy", 500, 0, 0.1)]  # a length only copy has
    df = build_report([write_run(tmp_path / "run", rows)])

    records = json.loads(format_report(df, "json"))
    assert len(records) == 4
    assert {r["model"] for r in records} == {"rnn", "lstm"}
    recall_lstm = next(r for r in records if (r["model"], r["task"]) == ("lstm", "recall"))
    assert recall_lstm["T=500"] is None
    assert recall_lstm["memory_horizon"] == 10
    assert recall_lstm["T=10"] == "1.000 ± 0.000"

    back = pd.read_csv(io.StringIO(format_report(df, "csv")))
    assert back.shape == df.shape
    assert list(back.columns) == list(df.columns)
    assert back["auc"].tolist() == pytest.approx(df["auc"].tolist())

    text = format_report(df, "markdown")
    lines = text.splitlines()
    assert any(line.startswith("## copy") for line in lines)
    assert any(line.startswith("## recall") for line in lines)
    recall_block = text.split("## recall")[1].split("##")[0]
    assert "T=500" not in recall_block      # a task's table lists only its own lengths
    assert "T=500" in text.split("## copy")[1].split("## recall")[0]
    table = [line for line in recall_block.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2            # header, rule, one row per model
    assert len({len(line) for line in table}) == 1  # aligned columns
    rule_cells = table[1].strip("|").split("|")  # a valid GitHub-markdown delimiter row
    assert all(re.fullmatch(r":?-{3,}:?", cell) for cell in rule_cells), table[1]

    with pytest.raises(HarnessError, match="markdown"):
        format_report(df, "xml")


def test_missing_results_file_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError, match="results.csv"):
        build_report([tmp_path])


def test_report_module_does_not_import_matplotlib():
    code = "import sys, harness.analysis.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
