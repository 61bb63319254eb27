"""``harness horizon``: the adaptive length search, its resume, and the files it writes.

The search logic runs against a scripted executor whose trials pass exactly up to a chosen length,
so growth, bisection, series that never pass or never fail, errors and resume are checked in
milliseconds; one end-to-end command trains real (tiny) models.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.runs.horizon import Series, _search
from harness.runs.spec import TrialSpec, training_budget
from harness.runs.training import TrialOutcome, base_row


def spec(length: int = 5) -> TrialSpec:
    return TrialSpec.build("lstm", "recall", length, 0, {"max_steps": 10, "device": "cpu"})


def series(min_length: int = 5, max_length: int = 1000, growth: float = 2.0, resolution: float = 1.25) -> Series:
    return Series(spec(min_length), growth, resolution, max_length, "default")


def row(s: TrialSpec, passes: bool, status: str = "ok") -> dict:
    r = base_row(s)
    r.update(status=status, score=1.0 if passes else 0.125, loss=0.0 if passes else math.log(8), chance_score=0.125,
             memoryless_loss=math.log(8), task_criterion="normalised:0.9")
    return r


class ScriptedExecutor:
    """Trials pass up to ``horizon`` (and error at ``error_at``), without training."""

    def __init__(self, horizon: float, error_at: int | None = None) -> None:
        self.horizon, self.error_at = horizon, error_at
        self.queue: list[TrialSpec] = []
        self.lengths: list[int] = []

    def submit(self, s: TrialSpec) -> None:
        self.queue.append(s)
        self.lengths.append(s.length)

    def outcomes(self):
        while self.queue:
            s = self.queue.pop(0)
            status = "error" if s.length == self.error_at else "ok"
            yield TrialOutcome(row(s, s.length <= self.horizon, status), [])


class Bar:
    total = 0

    def refresh(self) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.bar, self.recorded = Bar(), []

    def __call__(self, outcome, label) -> None:
        self.recorded.append(outcome.row["length"])


class Plan:
    broken_tasks: dict = {}


def search(one: Series, horizon: float, rows: dict | None = None, error_at: int | None = None) -> list[int]:
    executor = ScriptedExecutor(horizon, error_at)
    _search([one], executor, Recorder(), rows or {}, Plan())
    return executor.lengths


def test_grows_geometrically_then_bisects_in_log_length():
    one = series()
    tried = search(one, horizon=50)
    # 40 passes, 80 fails; then the geometric middles: √(40·80) ≈ 57 fails, √(40·57) ≈ 48 passes
    assert tried == [5, 10, 20, 40, 80, 57, 48]
    assert one.passed == 48 and one.failed == 57 and one.done
    assert one.failed / one.passed <= 1.25  # stops at the resolution


def test_resolution_sets_the_bisection_depth():
    coarse, fine = series(resolution=1.5), series(resolution=1.05)
    assert search(coarse, horizon=50) == [5, 10, 20, 40, 80, 57]  # 57 / 40 < 1.5: done
    fine_tried = search(fine, horizon=50)
    assert fine.failed / fine.passed <= 1.05 and len(fine_tried) > 8


def test_a_series_that_never_fails_stops_at_the_maximum():
    one = series(max_length=1000)
    assert search(one, horizon=10**9) == [5, 10, 20, 40, 80, 160, 320, 640, 1000]
    assert one.passed == 1000 and one.failed is None


def test_a_series_that_never_passes_stops_at_once():
    one = series()
    assert search(one, horizon=1) == [5]
    assert one.passed is None and one.failed == 5


def test_an_error_ends_the_series():
    one = series()
    assert search(one, horizon=10**9, error_at=40) == [5, 10, 20, 40]
    assert one.failed == 40 and one.done


def test_integer_lengths_end_the_bisection():
    one = series(min_length=2, resolution=1.01)
    tried = search(one, horizon=4)
    assert tried == [2, 4, 8, 6, 5] and (one.passed, one.failed) == (4, 5)


def test_resume_reads_finished_trials_instead_of_training():
    first = series()
    search(first, horizon=50)
    finished = {spec(n).key: row(spec(n), n <= 50) for n in (5, 10, 20, 40, 80, 57)}  # interrupted there
    resumed = series()
    assert search(resumed, horizon=50, rows=finished) == [48]  # only what is missing trains
    assert (resumed.passed, resumed.failed) == (first.passed, first.failed)


def test_horizon_command_writes_horizons_and_resumes(tmp_path, capsys):
    out = tmp_path / "h"
    args = ["horizon", "--models", "rnn,lstm", "--task", "recall", "--seeds", "1", "--min-length", "2",
            "--max-length", "8", "--steps", "60", "--eval-every", "20", "--eval-size", "64", "--hidden-size", "8",
            "--batch-size", "16", "--lr", "1e-2", "--criterion", "normalised:0.5", "--workers", "1", "--threads",
            "1", "--no-plot", "--quiet", "--out", str(out)]
    assert main(args) == 0
    horizons = pd.read_csv(out / "horizons.csv")
    assert {"model", "task", "seed", "criterion", "horizon", "first_fail", "trials", "training_steps",
            "seconds"} <= set(horizons.columns)
    assert sorted(horizons["model"]) == ["lstm", "rnn"] and set(horizons["criterion"]) == {"normalised:0.5"}
    results = pd.read_csv(out / "results.csv")
    assert set(results["early_stop"]) == {"normalised:0.5"}  # trials stop once they pass it, on validation
    for one in horizons.itertuples():
        mine = results[results["model"] == one.model]
        assert one.trials == len(mine) and one.training_steps == mine["steps"].sum()
    text = capsys.readouterr().out
    assert "memory horizons" in text
    record = (out / "run.json").read_bytes()
    assert json.loads(record)["trials"]["ran"] == len(results)
    assert main(args) == 0  # again: every trial is read back, none trains, and run.json keeps the record
    assert (out / "run.json").read_bytes() == record
    assert main(["report", str(out), "--criterion", "normalised:0.5"]) == 0
    assert "memory horizons (normalised:0.5)" in capsys.readouterr().out


def tiny_search(out: Path, tasks: str = "recall", max_length: int = 4) -> list[str]:
    """A one-seed search of the tanh RNN that takes a second or two: for what the command writes."""
    return ["horizon", "--models", "rnn", "--task", tasks, "--seeds", "1", "--min-length", "2",
            "--max-length", str(max_length), "--steps", "20", "--eval-every", "10", "--eval-size", "32",
            "--hidden-size", "4", "--batch-size", "8", "--workers", "0", "--no-plot", "--quiet", "--out", str(out)]


def test_an_interrupted_search_writes_the_horizons_its_finished_trials_show(tmp_path, monkeypatch):
    import dataclasses
    import signal

    from harness.runs import horizon as H
    from harness.runs.sweep import Interrupted

    out = tmp_path / "h"

    assert main(tiny_search(out, max_length=4)) == 0
    (out / "horizons.csv").write_text("left by an earlier command\n")
    real = H.run_sweep
    monkeypatch.setattr(H, "run_sweep", lambda *a, **k: dataclasses.replace(real(*a, **k),
                                                                           interrupted=Interrupted(signal.SIGTERM)))
    main(tiny_search(out, max_length=8))  # a longer search, stopped (as by SIGTERM) after its trials
    horizons = pd.read_csv(out / "horizons.csv")
    results = pd.read_csv(out / "results.csv")
    assert list(horizons["trials"]) == [len(results)] and list(horizons["training_steps"]) == [results["steps"].sum()]


def test_each_tasks_own_criterion_replaces_its_rows_when_the_search_is_run_again(tmp_path):
    """Under the default criterion recall and adding are judged by different criteria; a second run
    writes each series once (it used to keep the second task's earlier rows beside the new ones)."""
    out = tmp_path / "h"
    args = tiny_search(out, tasks="recall,adding", max_length=4)
    for _ in range(2):
        assert main(args) == 0
        horizons = pd.read_csv(out / "horizons.csv")
        assert sorted(horizons["task"]) == ["adding", "recall"], horizons
        assert set(horizons["criterion"]) == {"loss:0.1", "normalised:0.9"}


def test_bad_search_settings_are_one_line_errors(tmp_path, capsys):
    base = ["horizon", "--models", "rnn", "--task", "recall", "--out", str(tmp_path / "x")]
    for extra, fragment in ((["--min-length", "10", "--max-length", "5"], "shorter than --min-length"),
                            (["--resolution", "1"], "must be greater than 1"),
                            (["--criterion", "loudness"], "unknown criterion")):
        assert main([*base, *extra]) == 2
        assert fragment in capsys.readouterr().err


def test_the_horizons_figure_keeps_each_setting_apart(tmp_path):
    """A horizon is a property of one setting tried at every length: with an option axis the figure
    has one column per setting, whatever ``--select`` picks per length for the other figures."""
    from harness.analysis.plotting import plot_runs
    from harness.analysis.results import load_results
    from harness.runs.schema import RESULT_COLUMNS

    rows = []
    for init, reach in (("default", 10), ("chrono", 80)):
        for seed in range(3):
            for length in (5, 10, 20, 40, 80):
                s = TrialSpec.build("lstm", "recall", length, seed, {"max_steps": 10, "device": "cpu"},
                                    model_options={"init": init}, axes=("model:init",))
                r = row(s, length <= reach)
                rows.append({**r, "val_score": r["score"], "best_val_score": r["score"]})
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(rows).reindex(columns=RESULT_COLUMNS).to_csv(run / "results.csv", index=False)
    assert len(load_results([run])) == 30
    captured = {}
    import harness.analysis.plot_horizons as plot_horizons

    original = plot_horizons.horizons_figure

    def spy(results, criterion="default"):
        captured["figure"] = original(results, criterion)
        return captured["figure"]

    plot_horizons.horizons_figure = spy
    try:
        plot_runs([run], tmp_path / "figures", select="best")
    finally:
        plot_horizons.horizons_figure = original
    (ax,) = captured["figure"].axes
    medians = {line.get_gid().split(":", 1)[1]: line.get_ydata()[0] for line in ax.get_lines()
               if (line.get_gid() or "").startswith("median:")}
    assert set(medians) == {"lstm init=default", "lstm init=chrono"}
    assert 10 <= medians["lstm init=default"] < 20 and medians["lstm init=chrono"] == pytest.approx(80)
    # the report of a search (a folder with horizons.csv) ranks settings too, with --select best
    from harness.analysis.report import full_report

    (run / "horizons.csv").write_text("model,task,seed,config_id,criterion,horizon\n")
    text = full_report([run], select="best")
    assert re.search(r"\| lstm init=chrono +\| ≥ 80 ", text) and re.search(r"\| lstm init=default +\| 11 ", text), text


def _failed_at_the_shortest(tmp_path):
    """A ``harness horizon`` folder in which both models failed at the shortest length, so each was
    tried at one length only."""
    from harness.runs.horizon import write_horizons
    from harness.runs.schema import RESULT_COLUMNS

    rows = []
    for model in ("rnn", "lstm"):
        for seed in range(2):
            r = row(TrialSpec.build(model, "recall", 4, seed, {"max_steps": 10, "device": "cpu"}), False)
            rows.append({**r, "val_score": r["score"], "best_val_score": r["score"]})
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(rows).reindex(columns=RESULT_COLUMNS).to_csv(run / "results.csv", index=False)
    write_horizons(run, "default")
    return run


def test_a_horizon_folder_always_gets_its_figure(tmp_path):
    """docs/horizons.md: the search writes horizons.png, even when every model fails at once."""
    from harness.analysis.plotting import plot_runs

    written = plot_runs([_failed_at_the_shortest(tmp_path)], tmp_path / "figures")
    assert tmp_path / "figures" / "horizons.png" in written


def test_models_tied_below_the_shortest_length_share_a_rank(tmp_path):
    from harness.analysis.report import full_report

    ranking = full_report([_failed_at_the_shortest(tmp_path)]).split("### recall")[1]
    ranks = {m: r for r, m in re.findall(r"\|\s+([\d–]+) \| (\w+)\s+\| < 4", ranking)}
    assert ranks == {"lstm": "1–2", "rnn": "1–2"}  # both below 4: neither surely outranks the other


def test_the_horizons_title_fits_in_the_figure(tmp_path):
    """The narrowest figure (one task, two models) used to clip its two-line title at both sides."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from harness.analysis.plot_horizons import horizons_figure
    from harness.analysis.results import load_results

    fig = horizons_figure(load_results([_failed_at_the_shortest(tmp_path)]))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    suptitle = fig._suptitle  # Figure.get_suptitle() is matplotlib >= 3.8; the declared floor is 3.7
    assert suptitle is not None
    title = suptitle.get_text()
    assert "Memory horizon per model" in title and "criterion:" in title
    extent = suptitle.get_window_extent(canvas.get_renderer())
    assert extent.x0 >= 0 and extent.x1 <= fig.bbox.x1 and extent.y1 <= fig.bbox.y1


def test_the_budget_grows_by_its_fraction_per_doubling_above_its_start():
    assert training_budget(1500, 1000, 50, 0.5, 1000) == 1500
    assert training_budget(1500, 2000, 50, 0.5, 1000) == 2250
    assert training_budget(1500, 4000, 50, 0.5, 1000) == 3000
    assert training_budget(1500, 10000, 50, 0.5, 1000) == 4000  # 1500 × (1 + 0.5 log2 10) = 3991, up to 4000
    assert training_budget(1500, 10000, 50, 0.0, 1000) == 1500
    grown = TrialSpec.build("lstm", "recall", 8000, 0, {"max_steps": 100, "eval_every": 10, "steps_growth": 1.0,
                                                         "steps_from": 1000, "device": "cpu"})
    assert grown.budget == 400 and grown.config_id == grown.replace(steps_growth=0.0).config_id


def test_a_grown_budget_trains_longer_and_a_resume_under_another_budget_is_refused(tmp_path, capsys):
    out = tmp_path / "b"
    base = ["run", "--models", "rnn", "--task", "recall", "--lengths", "2,8", "--seeds", "1", "--steps", "4",
            "--eval-every", "2", "--eval-size", "16", "--hidden-size", "4", "--batch-size", "4",
            "--early-stop", "never", "--workers", "0", "--no-plot", "--quiet", "--out", str(out)]
    assert main([*base, "--steps-growth", "1", "--steps-from", "2"]) == 0
    rows = pd.read_csv(out / "results.csv").set_index("length")
    assert rows.loc[2, "steps"] == rows.loc[2, "budget"] == 4
    assert rows.loc[8, "steps"] == rows.loc[8, "budget"] == 12  # 4 × (1 + log2 4)
    assert main([*base, "--steps-growth", "1", "--steps-from", "2", "--seeds", "2"]) == 0  # same rule: resumes
    capsys.readouterr()
    assert main([*base, "--seeds", "3"]) == 2  # without the rule, T = 8 would have had 4 steps
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "T=8 was trained for 12 steps" in err and "budget there is 4" in err


@pytest.mark.parametrize("estimates, above, below, shown", [
    ([889, 662, 320], [False, False, True], [False] * 3, "≥ 662"),  # the third seed may lie above 889
    ([100, 200, 300], [False, False, True], [False] * 3, "200"),  # a censored seed beyond the median: exact
    ([100, 200, 300], [True, False, False], [False] * 3, "≥ 200"),
    ([781, 640, 320], [False, True, True], [False] * 3, "≥ 640"),
    ([5, 8, 12], [False] * 3, [True, False, False], "8"),
    ([5, 5, 12], [False] * 3, [True, True, False], "< 5"),
])
def test_the_median_is_a_bound_whenever_a_censored_seed_could_move_it(estimates, above, below, shown):
    from harness.analysis.horizons import format_horizon, median_bound, median_horizon

    median = median_horizon(estimates)
    row = {"median": median, "low": median, "high": median, "unbounded_by_construction": False,
           "bound": median_bound(estimates, above, below, median)}
    assert format_horizon(row) == shown
