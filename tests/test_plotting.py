"""Tests of harness.analysis.plotting on small synthetic runs (no training, no torch).

Figures are built by functions returning ``matplotlib.figure.Figure``; the tests read the drawn
data back through the artists' ``gid`` (``mean:<model>``, ``chance``, ...) and compare it with
the table.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mpl_image = pytest.importorskip("matplotlib.image")

from harness.analysis.plotting import (  # noqa: E402
    _save,  # noqa: E402  (the writer behind plot_runs)
    confidence_halfwidth,
    cost_figure,
    learning_curves_figure,
    loss_figure,
    model_style,
    plot_runs,
    score_figure,
    steps_figure,
)
from harness.analysis.results import load_curves, load_results  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.errors import HarnessError  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANCE = {"copy": 0.125, "recall": 0.2}
LENGTHS = {"copy": (10, 50, 100), "recall": (10, 100)}
MODELS = {"copy": {"rnn": 3, "lstm": 3, "my_model": 2}, "recall": {"rnn": 3, "lstm": 3}}


def memoryless(task: str, length: int) -> float:
    return 10 * math.log(8) / (length + 20) if task == "copy" else math.log(8)


def synthetic_rows() -> list[dict]:
    """Scores fall with length; lstm solves short lengths; one error trial with a decoy score."""
    rows = []
    for task, models in MODELS.items():
        for model, n_seeds in models.items():
            reach = {"rnn": 5, "lstm": 60, "my_model": 30}[model]
            for length in LENGTHS[task]:
                for seed in range(n_seeds):
                    p = 1 / (1 + (length / reach) ** 3)
                    score = round(CHANCE[task] + (1 - CHANCE[task]) * p - 0.01 * seed, 4)
                    solved = score >= 0.95
                    rows.append({
                        "model": model, "task": task, "length": length, "seed": seed, "status": "ok",
                        "score": score, "loss": memoryless(task, length) * (1 - p) + 1e-4,
                        "best_score": score, "chance_score": CHANCE[task],
                        "memoryless_loss": memoryless(task, length), "solved": solved,
                        "steps_to_solve": 10 * length + 50 * seed if solved else None,
                        "steps": 10 * length + 50 * seed if solved else 2000, "max_steps": 2000,
                        "train_seconds": 1.0, "seconds_per_step": 1e-4 * length * (1 + 0.1 * seed),
                        "device": "cpu",
                    })
    rows.append({**rows[0], "model": "lstm", "task": "copy", "length": 50, "seed": 3,
                 "status": "error", "score": 0.0, "loss": float("nan"), "solved": False,
                 "steps_to_solve": None, "seconds_per_step": 99.0})
    return rows


def synthetic_curves(rows: list[dict]) -> list[dict]:
    curves = []
    for row in rows:  # the error trial gets a curve too: it must not be drawn
        last = 300 if row["solved"] else 400
        for step in range(0, last + 1, 100):
            curves.append({"model": row["model"], "task": row["task"], "length": row["length"],
                           "seed": row["seed"], "step": step, "train_loss": 1.0, "eval_loss": 1.0,
                           "eval_score": row["score"] * step / last, "elapsed_seconds": step / 100})
    return curves


def write_run(path: Path, rows: list[dict], curves: list[dict] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "results.csv", index=False)
    if curves is not None:
        pd.DataFrame(curves).to_csv(path / "curves.csv", index=False)
    (path / "run.json").write_text("{}")
    return path


@pytest.fixture
def run(tmp_path) -> Path:
    rows = synthetic_rows()
    return write_run(tmp_path / "run", rows, synthetic_curves(rows))


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(synthetic_rows())


@pytest.fixture
def results(run) -> pd.DataFrame:
    """The synthetic table written as a run and loaded back as plot_runs does."""
    return load_results([run])


def panels(fig) -> dict[str, object]:
    """Visible axes by task name (titles read 'task: <name>')."""
    return {ax.get_title().removeprefix("task: "): ax for ax in fig.axes
            if ax.get_visible() and ax.get_title().startswith("task: ")}


def lines(ax, prefix: str) -> dict[str, object]:
    return {line.get_gid().split(":", 1)[1]: line for line in ax.get_lines()
            if (line.get_gid() or "").startswith(prefix)}


def expected_means(table: pd.DataFrame, task: str, model: str, column: str = "score") -> pd.Series:
    rows = table[(table["task"] == task) & (table["model"] == model) & (table["status"] != "error")]
    return rows.groupby("length")[column].mean().sort_index()


def test_plot_runs_writes_every_figure_as_valid_png(tmp_path):
    rows = [row for row in synthetic_rows() if row["task"] == "recall"]  # one panel: fast to draw
    run = write_run(tmp_path / "run", rows, synthetic_curves(rows))
    paths = plot_runs([run])
    names = sorted(p.name for p in paths)
    assert names == sorted(["score_vs_length.png", "loss_vs_length.png", "steps_to_solve.png",
                            "learning_curves.png", "cost.png", "horizons.png"])
    for path in paths:
        assert path.parent == run  # default output folder: the first run folder
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        pixels = mpl_image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 500
        assert pixels.std() > 0.01  # not blank


def test_vector_formats(results, tmp_path):
    # plot_runs hands ``formats`` to the same writer for every figure (file names: next test).
    fig = score_figure(results)  # two task panels
    out = tmp_path / "figures"
    out.mkdir()
    paths = _save(fig, out, "score_vs_length", ("svg", "pdf"))
    assert [p.name for p in paths] == ["score_vs_length.svg", "score_vs_length.pdf"]
    svg, pdf = (p.read_bytes() for p in paths)
    assert b"<svg" in svg[:2000] and b"chance" in svg
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")


def test_file_names_and_output_folder(run, tmp_path, monkeypatch):
    """File naming only: saving is replaced by a stub that records the paths."""
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kw: saved.append(Path(path)))
    second = write_run(tmp_path / "other", synthetic_rows()[:1])
    paths = plot_runs([run, second], curves_for=("my_model", "copy"), formats=("png", ".SVG"))
    assert paths == saved
    assert {p.parent for p in paths} == {run}  # default: the first run folder
    assert {p.name for p in paths} == {f"{stem}.{fmt}" for fmt in ("png", "svg") for stem in (
        "score_vs_length", "loss_vs_length", "steps_to_solve", "learning_curves_my_model_copy", "cost",
        "horizons")}
    with pytest.raises(HarnessError, match="my_model/recall"):
        plot_runs([run], curves_for=("my_model", "recall"))
    with pytest.raises(HarnessError, match="format"):
        plot_runs([run], formats=("bmpx",))
    with pytest.raises(HarnessError, match="results.csv"):
        plot_runs([tmp_path / "missing"])


def test_score_figure_draws_the_table(table, results):
    fig = score_figure(results)
    by_task = panels(fig)
    assert sorted(by_task) == ["copy", "recall"]
    for task, ax in by_task.items():
        means = lines(ax, "mean:")
        assert sorted(means) == sorted(MODELS[task])  # one line per model of that task
        for model, line in means.items():
            expected = expected_means(table, task, model)
            np.testing.assert_allclose(line.get_xdata(), expected.index)
            np.testing.assert_allclose(line.get_ydata(), expected.to_numpy())  # error row left out
            assert line.get_color() == model_style(model)["color"]
        chance = [line for line in ax.get_lines() if line.get_gid() == "chance"]
        assert len(chance) == 1 and chance[0].get_label() == "chance"
        np.testing.assert_allclose(chance[0].get_ydata(), CHANCE[task])
        assert ax.get_xscale() == "log"
        assert ax.get_ylim() == pytest.approx((0.0, 1.02))
        assert ax.get_xlabel() == "dependency length T"
    assert by_task["copy"].get_ylabel() == "score (accuracy)"
    assert fig.get_size_inches()[0] >= 2 * 3.5  # about 4 in per panel


def test_band_for_three_seeds_and_single_seeds_below(table, results):
    ax = panels(score_figure(results))["copy"]
    bands = {c.get_gid() for c in ax.collections}
    assert {"band:rnn", "band:lstm"} <= bands
    assert "band:my_model" not in bands           # two seeds: no band ...
    seeds = lines(ax, "seeds:")
    assert sorted(seeds) == ["my_model"]          # ... but the seeds themselves
    mine = table[(table["model"] == "my_model") & (table["task"] == "copy")]
    assert sorted(seeds["my_model"].get_ydata()) == sorted(mine["score"])


def test_confidence_halfwidth_is_student_t():
    assert confidence_halfwidth([1.0, 2.0, 3.0]) == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)
    values = np.arange(40.0)
    expected = 2.0227 * values.std(ddof=1) / math.sqrt(40)
    assert confidence_halfwidth(values) == pytest.approx(expected, rel=1e-3)
    assert math.isnan(confidence_halfwidth([0.5]))


def test_loss_figure_draws_memoryless_floor(table, results):
    by_task = panels(loss_figure(results))
    copy, recall = by_task["copy"], by_task["recall"]
    floor = next(line for line in copy.get_lines() if line.get_gid() == "memoryless")
    np.testing.assert_allclose(floor.get_xdata(), LENGTHS["copy"])
    np.testing.assert_allclose(floor.get_ydata(), [memoryless("copy", t) for t in LENGTHS["copy"]])
    flat = next(line for line in recall.get_lines() if line.get_gid() == "memoryless")
    np.testing.assert_allclose(flat.get_ydata(), math.log(8))
    assert copy.get_yscale() == "log"  # losses from 1e-4 to 1.7: a large span
    means = lines(copy, "mean:")
    np.testing.assert_allclose(means["lstm"].get_ydata(), expected_means(table, "copy", "lstm", "loss"))


def test_steps_figure_keeps_unsolved_trials(table, results):
    by_task = panels(steps_figure(results))
    valid = table[table["status"] != "error"]
    for task, ax in by_task.items():
        rows = valid[valid["task"] == task]
        solved, unsolved = rows[rows["solved"]], rows[~rows["solved"]]
        drawn_unsolved = lines(ax, "unsolved:")
        assert sum(len(line.get_xdata()) for line in drawn_unsolved.values()) == len(unsolved)
        assert set(drawn_unsolved) == set(unsolved["model"])
        assert all(line.get_marker() == "x" for line in drawn_unsolved.values())
        drawn_solved = lines(ax, "solved:")
        assert sum(len(line.get_xdata()) for line in drawn_solved.values()) == len(solved)
        for model, line in lines(ax, "median:").items():
            median = solved[solved["model"] == model].groupby("length")["steps_to_solve"].median()
            np.testing.assert_allclose(line.get_ydata(), median.to_numpy())
        budget = next(line for line in ax.get_lines() if line.get_gid() == "budget")
        np.testing.assert_allclose(budget.get_ydata(), 2000)
        assert any(t.get_text() == "not\nsolved" for t in ax.texts)


def test_learning_curves_mean_over_seeds_holds_early_stops(tmp_path):
    rows = [{"model": "gru", "task": "copy", "length": length, "seed": seed, "status": "ok",
             "score": 1.0, "solved": True} for length in (10, 20, 40) for seed in (0, 1)]
    curves = []
    for length in (10, 20, 40):
        curves += [{"model": "gru", "task": "copy", "length": length, "seed": 0, "step": s,
                    "eval_score": v} for s, v in ((0, 0.0), (100, 1.0))]         # stopped: solved
        curves += [{"model": "gru", "task": "copy", "length": length, "seed": 1, "step": s,
                    "eval_score": v} for s, v in ((0, 0.2), (100, 0.4), (200, 0.5))]
    run = write_run(tmp_path / "run", rows, curves)
    fig = learning_curves_figure(load_curves([run]), [("gru", "copy")], {"copy": 0.125})
    (ax,) = [a for a in fig.axes if a.get_title() == "gru on task: copy"]
    drawn = lines(ax, "curve:")
    assert sorted(drawn, key=int) == ["10", "20", "40"]
    np.testing.assert_allclose(drawn["10"].get_xdata(), [0, 100, 200])
    np.testing.assert_allclose(drawn["10"].get_ydata(), [0.1, 0.7, 0.75])  # seed 0 holds 1.0
    colours = [tuple(drawn[t].get_color()) for t in ("10", "20", "40")]
    assert len(set(colours)) == 3
    brightness = [sum(c[:3]) for c in colours]  # viridis: dark for short T, light for long T
    assert brightness == sorted(brightness)
    chance = next(line for line in ax.get_lines() if line.get_gid() == "chance")
    np.testing.assert_allclose(chance.get_ydata(), 0.125)


def test_loss_curves_draw_every_seed_and_the_memoryless_loss(tmp_path):
    curves = pd.DataFrame([{"model": "lstm", "task": "copy", "length": 500, "seed": seed, "step": step,
                            "val_loss": loss} for seed, losses in ((0, (0.05, 0.04, 0.001)), (1, (0.05, 0.04, 0.04)))
                           for step, loss in zip((100, 200, 300), losses)])
    fig = learning_curves_figure(curves, [("lstm", "copy")], metric="loss", memoryless={("copy", 500): 0.04})
    (ax,) = [a for a in fig.axes if a.get_title() == "lstm on task: copy"]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "validation loss"
    drawn = lines(ax, "curve:")
    assert sorted(drawn) == ["500:seed0", "500:seed1"]  # each seed, not their mean
    np.testing.assert_allclose(drawn["500:seed0"].get_ydata(), [0.05, 0.04, 0.001])
    np.testing.assert_allclose(drawn["500:seed1"].get_ydata(), [0.05, 0.04, 0.04])
    baseline = next(line for line in ax.get_lines() if line.get_gid() == "memoryless:500")
    np.testing.assert_allclose(baseline.get_ydata(), 0.04)


def test_plot_loss_curves_of_one_model_show_each_of_its_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--models", "lstm", "--task", "copy", "--lengths", "3", "--seeds", "1", "--steps", "4",
                 "--eval-every", "2", "--eval-size", "8", "--hidden-size", "4", "--batch-size", "4",
                 "--model-opt", "init=default,chrono", "--workers", "0", "--no-plot", "--quiet",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["plot", str(out), "--select", "all", "--curves", "lstm:copy", "--metric", "loss"]) == 0
    written = capsys.readouterr().out
    assert str(out / "learning_curves_lstm_copy_loss.png") in written
    assert (out / "learning_curves_lstm_copy_loss.png").stat().st_size > 0


def test_learning_curves_default_covers_every_pair_without_error_trials(run):
    results = load_results([run])
    curves = load_curves([run], results)
    assert not ((curves["model"] == "lstm") & (curves["seed"] == 3)).any()  # the error trial
    fig = learning_curves_figure(curves)
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible() and " on task: " in ax.get_title()}
    expected = {f"{m} on task: {t}" for t, models in MODELS.items() for m in models}
    assert titles == expected
    with pytest.raises(HarnessError, match="available"):
        learning_curves_figure(curves, [("gru", "adding")])


def test_cost_figure_is_log_log(table, results):
    by_task = panels(cost_figure(results))
    for task, ax in by_task.items():
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        means = lines(ax, "mean:")
        assert sorted(means) == sorted(MODELS[task])
        np.testing.assert_allclose(means["lstm"].get_ydata(),
                                   expected_means(table, task, "lstm", "seconds_per_step"))


def test_later_run_wins_in_figures(tmp_path, table):
    first = write_run(tmp_path / "a", synthetic_rows())
    override = {**synthetic_rows()[0]}
    assert (override["model"], override["task"], override["length"], override["seed"]) == \
        ("rnn", "copy", 10, 0)
    override["score"] = 0.9
    second = write_run(tmp_path / "b", [override])
    results = load_results([first, second])
    assert len(results) == len(table)
    ax = panels(score_figure(results))["copy"]
    rnn_at_10 = table[(table["model"] == "rnn") & (table["task"] == "copy") & (table["length"] == 10)]
    expected = (rnn_at_10["score"].sum() - rnn_at_10["score"].iloc[0] + 0.9) / len(rnn_at_10)
    assert lines(ax, "mean:")["rnn"].get_ydata()[0] == pytest.approx(expected)


def test_model_styles_are_fixed_and_stable(results):
    assert model_style("lstm") == {"color": "#1f77b4", "marker": "s"}
    builtin = [model_style(m)["color"] for m in ("rnn", "lstm", "gru", "peephole", "cifg", "bilstm")]
    assert len(set(builtin)) == 6
    assert model_style("my_model") == model_style("my_model")
    assert model_style("my_model")["color"] not in builtin
    code = "from harness.analysis.plotting import model_style; print(model_style('my_model'))"
    # A fresh process with another str-hash salt than this one: the same style.
    env = {**os.environ, "PYTHONHASHSEED": "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True)
    assert done.stdout.strip() == str(model_style("my_model"))
    score = lines(panels(score_figure(results))["copy"], "mean:")["my_model"]
    cost = lines(panels(cost_figure(results))["copy"], "mean:")["my_model"]
    assert score.get_color() == cost.get_color() == model_style("my_model")["color"]
    assert score.get_marker() == cost.get_marker() == model_style("my_model")["marker"]

