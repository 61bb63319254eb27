"""Tests of ``harness report`` on hand-made results tables (no training, no torch, no matplotlib):
score tables, horizons with their criterion, settings axes and selection on validation."""

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

from harness.analysis.report import full_report, normalised_auc, prepare, score_table
from harness.analysis.results import axes, load_results, select_best
from harness.errors import HarnessError


def trial(model: str, task: str, length: int, seed: int, score: float, *, status: str = "ok",
          val_score: float | None = None, lr: float = 1e-3, config: str = "c1", criterion: str = "normalised:0.9",
          loss: float | None = None) -> dict:
    return {
        "model": model, "task": task, "length": length, "seed": seed, "config_id": config, "status": status,
        "score": score, "loss": 1.0 - score if loss is None else loss,
        "val_score": score if val_score is None else val_score, "val_loss": 1.0 - (score if val_score is None
                                                                                   else val_score),
        "chance_score": 0.125, "memoryless_loss": math.log(8), "task_criterion": criterion,
        "solved": score >= 0.99, "steps": 100, "max_steps": 1000, "lr": lr, "threshold": 0.99,
        "train_seconds": 1.0, "seconds_per_step": 0.001, "trial_seconds": 1.1,
        "model_options": "{}", "task_options": "{}", "error": "boom" if status == "error" else None,
    }


def write_run(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "results.csv", index=False)
    return path


def table_of(run: Path, **kwargs) -> pd.DataFrame:
    results, names = prepare([run], kwargs.pop("select", "all"))
    return score_table(results, names, kwargs.pop("criterion", "default"))


def test_normalised_auc_over_log_length():
    assert normalised_auc([10, 100, 1000], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert normalised_auc([10, 100], [1.0, 0.0]) == pytest.approx(0.5)
    assert normalised_auc([10, 100, 1000], [1.0, 1.0, 0.0]) == pytest.approx(0.75)
    expected = (math.log(2) * 1.0 + math.log(5) * 0.5) / math.log(10)  # unequal steps in log T
    assert normalised_auc([20, 10, 100], [1.0, 1.0, 0.0]) == pytest.approx(expected)
    assert normalised_auc([50], [0.4]) == pytest.approx(0.4)
    assert math.isnan(normalised_auc([], []))


def test_score_table_means_spreads_and_errors(tmp_path):
    rows = [trial("lstm", "copy", 10, 0, 0.8), trial("lstm", "copy", 10, 1, 0.6),
            trial("lstm", "copy", 10, 2, 0.0, status="error"),
            trial("lstm", "copy", 20, 0, 1.0), trial("lstm", "copy", 20, 1, 0.9, status="diverged")]
    table = table_of(write_run(tmp_path / "run", rows)).set_index("length")
    assert table.loc[10, "score_mean"] == pytest.approx(0.7)        # the error's 0.0 left out
    assert table.loc[10, "score_std"] == pytest.approx(0.1414, abs=1e-4)
    assert table.loc[10, "n_errors"] == 1 and table.loc[10, "n_seeds"] == 3
    assert table.loc[20, "score_mean"] == pytest.approx(0.95)       # diverged trials count
    assert table.loc[20, "n_diverged"] == 1


def test_horizon_uses_the_task_criterion_and_interpolates(tmp_path):
    # normalised score (s - 1/8) / (7/8) >= 0.9 means s >= 0.9125: passes at 10 and 20, fails at 40
    rows = [trial("lstm", "recall", n, s, score) for s in range(3)
            for n, score in ((10, 1.0), (20, 0.96), (40, 0.3))]
    table = table_of(write_run(tmp_path / "run", rows))
    horizon = table["horizon"].iloc[0]
    assert 20 < horizon < 40 and table["criterion"].iloc[0] == "normalised:0.9"
    # where the normalised score crosses 0.9, linearly in log T between (20, 0.954) and (40, 0.2)
    m20, m40 = (0.96 - 0.125) / 0.875, (0.3 - 0.125) / 0.875
    expected = math.exp(math.log(20) + (m20 - 0.9) / (m20 - m40) * math.log(2))
    assert horizon == pytest.approx(expected)
    strict = table_of(write_run(tmp_path / "strict", rows), criterion="solved")
    assert strict["horizon"].iloc[0] < 20  # 0.96 is not solved at the 0.99 threshold


def test_loss_criterion_for_regression(tmp_path):
    # loss:0.1 of a memoryless loss of 1/6: passes below 0.01667 (remembering one value, 1/12, fails)
    rows = [trial("gru", "adding", n, 0, 0.2, loss=loss, criterion="loss:0.1")
            for n, loss in ((10, 0.001), (20, 0.01), (40, 1 / 12))]
    for row in rows:
        row["memoryless_loss"] = 1 / 6
    table = table_of(write_run(tmp_path / "run", rows))
    assert 20 < table["horizon"].iloc[0] < 40 and table["criterion"].iloc[0] == "loss:0.1"


def test_markdown_report_shows_scores_horizons_and_censoring(tmp_path):
    rows = [trial("lstm", "recall", n, s, 1.0) for n in (10, 100) for s in range(3)]
    rows += [trial("rnn", "recall", n, s, 0.2) for n in (10, 100) for s in range(3)]
    text = full_report([write_run(tmp_path / "run", rows)])
    block = text.split("## recall")[1].split("##")[0]
    table = [line for line in block.splitlines() if line.startswith("|")]
    assert len(table) == 4 and len({len(line) for line in table}) == 1  # aligned
    assert all(re.fullmatch(r":?-{3,}:?", cell) for cell in table[1].strip("|").split("|"))
    lstm = next(line for line in table if line.startswith("| lstm"))
    assert "1.000 ± 0.000" in lstm and "≥ 100" in lstm    # never failed: censored above
    rnn = next(line for line in table if line.startswith("| rnn"))
    assert "< 10" in rnn                                   # failed at the shortest length
    assert "memory horizons (each task's own criterion (normalised:0.9))" in text
    ranking = text.split("### recall")[1]
    assert ranking.index("lstm") < ranking.index("rnn")


def test_unbounded_by_construction_is_flagged_not_ranked(tmp_path):
    rows = [trial("bilstm", "recall", n, s, 1.0) | {"unbounded_by_construction": True} for n in (10, 100)
            for s in range(2)]
    rows += [trial("lstm", "recall", n, s, 1.0 if n == 10 else 0.2) for n in (10, 100) for s in range(2)]
    text = full_report([write_run(tmp_path / "run", rows)])
    assert "not ranked: unbounded by construction" in text
    ranking = text.split("### recall")[1]
    assert re.search(r"\|\s+1 \| lstm", ranking) and not re.search(r"\|\s+\d \| bilstm", ranking)


def test_a_censored_median_is_not_outranked_by_a_longer_finite_one(tmp_path):
    """"≥ 100" (never failed) may lie above or below a horizon of about 450, and two "≥ 100" may lie in
    either order: all three can hold any rank from 1 to 3, while each surely outranks a horizon of 20."""
    tried = {"gru": (20, 25, 100), "cifg": (20, 25, 100), "lstm": (20, 25, 100, 400, 500), "rnn": (20, 25)}
    longest_passed = {"gru": 100, "cifg": 100, "lstm": 400, "rnn": 20}
    rows = [trial(model, "recall", n, s, 1.0 if n <= longest_passed[model] else 0.2)
            for model, lengths in tried.items() for n in lengths for s in range(3)]
    ranking = full_report([write_run(tmp_path / "run", rows)]).split("### recall")[1]
    ranks = dict((m, r) for r, m in re.findall(r"\|\s+([\d–]+) \| (\w+)\s+\|", ranking))
    assert ranks == {"lstm": "1–3", "gru": "1–3", "cifg": "1–3", "rnn": "4"}, ranking
    assert re.search(r"\| lstm\s+\| 4\d\d", ranking) and "≥ 100" in ranking


def test_axes_and_selection_on_validation_not_test(tmp_path):
    """Validation prefers lr 1e-2 at T=10 while test prefers 1e-3: selection follows validation."""
    rows = []
    for seed in range(2):
        rows.append(trial("lstm", "recall", 10, seed, 0.50, val_score=0.90, lr=1e-2, config="fast"))
        rows.append(trial("lstm", "recall", 10, seed, 0.95, val_score=0.40, lr=1e-3, config="slow"))
        rows.append(trial("lstm", "recall", 20, seed, 0.30, val_score=0.20, lr=1e-2, config="fast"))
        rows.append(trial("lstm", "recall", 20, seed, 0.60, val_score=0.70, lr=1e-3, config="slow"))
    run = write_run(tmp_path / "run", rows)
    results = load_results([run])
    assert axes(results) == ["lr"]
    chosen = select_best(results).groupby("length")["lr"].first().to_dict()
    assert chosen == {10: 1e-2, 20: 1e-3}
    best = table_of(run, select="best").set_index("length")
    assert best.loc[10, "score_mean"] == pytest.approx(0.50)  # the test score of the validation choice
    assert best.loc[10, "lr"] == 0.01 and best.loc[20, "lr"] == 0.001
    every = table_of(run)
    assert len(every) == 4 and set(every["lr"]) == {0.01, 0.001}
    text = full_report([run], select="best")
    assert "chosen on validation" in text and "lr=0.01" in text


def test_selection_with_a_setting_that_only_failed(tmp_path):
    """A setting whose every trial is an error is never chosen beside one with results, and a cell where
    every setting failed keeps one setting's rows: reports show one line per model (they used to fail)."""
    rows = []
    for seed in range(2):
        rows.append(trial("lstm", "recall", 10, seed, 0.6, lr=1e-3, config="works"))
        rows.append(trial("lstm", "recall", 10, seed, math.nan, lr=1e-2, config="fails", status="error"))
        rows.append(trial("lstm", "recall", 20, seed, math.nan, lr=1e-3, config="works", status="error"))
        rows.append(trial("lstm", "recall", 20, seed, math.nan, lr=1e-2, config="fails", status="error"))
    run = write_run(tmp_path / "run", rows)
    chosen = select_best(load_results([run]))
    assert chosen.groupby("length")["config_id"].nunique().to_dict() == {10: 1, 20: 1}
    assert set(chosen[chosen["length"] == 10]["config_id"]) == {"works"}
    text = full_report([run], select="best")
    assert re.search(r"\| lstm +\| 0\.600 ± 0\.000 +\| +error \|", text), text


def test_selection_without_validation_scores_is_refused(tmp_path):
    rows = [trial("lstm", "recall", 10, 0, 0.5, lr=lr, config=c) for lr, c in ((1e-2, "a"), (1e-3, "b"))]
    for row in rows:
        row["val_score"] = None
    with pytest.raises(HarnessError, match="validation scores"):
        select_best(load_results([write_run(tmp_path / "run", rows)]))


def test_later_run_folder_wins(tmp_path):
    first = write_run(tmp_path / "a", [trial("lstm", "recall", 10, 0, 0.2), trial("lstm", "recall", 10, 1, 0.4)])
    second = write_run(tmp_path / "b", [trial("lstm", "recall", 10, 0, 1.0), trial("mine", "recall", 10, 0, 0.9)])
    assert len(load_results([first, second])) == 3
    results, names = prepare([first, second])
    table = score_table(results, names, "default").set_index("model")
    assert table.loc["lstm", "score_mean"] == pytest.approx(0.7)  # seeds 1.0 (from b) and 0.4


def test_files_from_harness_0_1_still_load(tmp_path):
    """No config_id, no validation columns, one held-out score: reports still work."""
    row = trial("lstm", "recall", 10, 0, 0.9)
    for column in ("config_id", "val_score", "val_loss", "task_criterion"):
        row.pop(column)
    text = full_report([write_run(tmp_path / "old", [row, {**row, "length": 20, "score": 0.1}])])
    assert "## recall" in text and "normalised:0.9" in text


def test_csv_and_json_formats_parse_back(tmp_path):
    rows = [trial(m, t, n, s, 1.0 if n == 10 else 0.5) for m in ("rnn", "lstm") for t in ("copy", "recall")
            for n in (10, 20) for s in range(2)]
    run = write_run(tmp_path / "run", rows)
    back = pd.read_csv(io.StringIO(full_report([run], "csv")))
    assert len(back) == 8 and {"task", "model", "length", "score_mean", "horizon", "criterion"} <= set(back)
    records = json.loads(full_report([run], "json"))
    assert len(records) == 8 and all(r["n_seeds"] == 2 for r in records)
    with pytest.raises(HarnessError, match="markdown"):
        full_report([run], "xml")


def test_missing_results_file_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError, match="results.csv"):
        full_report([tmp_path])


def test_report_module_does_not_import_matplotlib_or_torch():
    code = ("import sys, harness.analysis.report, harness.analysis.gradient_report; "
            "print('matplotlib' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_csv_and_json_round_to_significant_digits(tmp_path):
    """A horizon never failed up to T = 8 is exp(log 8) = 7.999999999999998 in floating point."""
    rows = [trial("lstm", "recall", n, s, 1.0) for n in (4, 8) for s in range(3)]
    run = write_run(tmp_path / "run", rows)
    assert table_of(run)["horizon"].iloc[0] != 8.0  # what the files must not show
    text = full_report([run], "csv")
    assert "7.99999" not in text and "0.9999999" not in text
    assert set(pd.read_csv(io.StringIO(text))["horizon"]) == {8.0}
    assert {r["horizon"] for r in json.loads(full_report([run], "json"))} == {8.0}


def test_select_best_never_chooses_between_implementations(tmp_path, monkeypatch):
    """An implementation option (a scan or a loop) is reported per value, never selected on validation;
    a real hyperparameter beside it still is."""
    import harness.analysis.results as R

    def declared(model):
        return ("mode",) if model == "scanner" else ()

    monkeypatch.setattr(R, "implementation_options", declared)
    monkeypatch.setattr("harness.analysis.report.implementation_options", declared)
    rows = []
    for seed in range(2):
        for length, loop_better in ((10, True), (20, False)):
            for mode, lr in (("scan", 1e-3), ("scan", 1e-2), ("loop", 1e-3), ("loop", 1e-2)):
                val = 0.4 + 0.3 * ((mode == "loop") == loop_better) + (0.1 if lr == 1e-2 else 0.0)
                rows.append(trial("scanner", "recall", length, seed, 0.5, val_score=val, lr=lr,
                                  config=f"{mode}-{lr}") | {"model_options": json.dumps({"mode": mode})})
    run = write_run(tmp_path / "run", rows)
    chosen = select_best(load_results([run]))
    assert set(chosen["model"]) == {"scanner mode=scan", "scanner mode=loop"}
    assert set(zip(chosen["model"], chosen["length"])) == {(f"scanner mode={m}", n) for m in ("scan", "loop")
                                                          for n in (10, 20)}
    assert set(chosen["lr"]) == {1e-2}  # the learning rate is still chosen, per implementation
    text = full_report([run], select="best")
    assert "| scanner mode=scan" in text and "| scanner mode=loop" in text
    assert "axes: lr, model:mode (an implementation: never chosen);" in text
    monkeypatch.setattr(R, "implementation_options", lambda model: ())  # an ordinary option is selected
    assert set(select_best(load_results([run]))["model"]) == {"scanner"}
