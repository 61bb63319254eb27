"""End-to-end tests of ``harness run`` on tiny budgets: files, resume, determinism, containment, bad input."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pandas as pd
import pytest

from harness.cli import main
from harness.runs.schema import CURVE_COLUMNS, RESULT_COLUMNS
from tests import plugin_sources as src

TINY = ["--lengths", "3,6", "--seeds", "2", "--steps", "20", "--eval-every", "10", "--eval-size", "64",
        "--hidden-size", "8", "--batch-size", "16", "--threads", "1", "--workers", "0", "--no-plot", "--quiet"]


def run_cli(*args: str) -> int:
    return main(["run", *args])


@pytest.fixture
def failing_plugin(tmp_path, monkeypatch):
    path = tmp_path / "failing_models.py"
    path.write_text(src.FAILING_MODELS)
    return str(path)


def test_sweep_writes_tidy_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--models", "lstm,rnn", "--task", "recall,adding", *TINY, "--out", str(out)) == 0
    results = pd.read_csv(out / "results.csv")
    curves = pd.read_csv(out / "curves.csv")
    assert list(results.columns) == list(RESULT_COLUMNS)
    assert list(curves.columns) == list(CURVE_COLUMNS)
    assert len(results) == 2 * 2 * 2 * 2
    assert set(results["status"]) == {"ok"}
    assert results["score"].between(0, 1).all() and results["params"].gt(0).all()
    assert (results.loc[results.task == "recall", "chance_score"] == 1 / 8).all()
    assert len(curves) == len(results) * 2  # evaluations at steps 10 and 20
    meta = json.loads((out / "run.json").read_text())
    assert meta["settings"]["max_steps"] == [20]
    assert meta["settings"]["lr"] == {"recall": [0.001], "adding": [0.01]}  # each task's own rate
    assert {"harness", "torch", "python"} <= set(meta["versions"])
    assert meta["finished_at"] and meta["trials"]["ran"] == 16
    # the command as given to main(), not the interpreter's own arguments
    assert meta["command"] == shlex.join(["harness", "run", "--models", "lstm,rnn", "--task", "recall,adding",
                                          *TINY, "--out", str(out)])
    assert any(p["name"] == "harness.plugins.torch_rnns" for p in meta["plugins"])
    summary = capsys.readouterr().out
    assert "## recall" in summary and "## adding" in summary


def test_resume_runs_nothing_new_and_fills_gaps(tmp_path):
    out = tmp_path / "run"
    args = ["--models", "lstm", "--task", "recall", *TINY, "--out", str(out)]
    assert run_cli(*args) == 0
    first = pd.read_csv(out / "results.csv")
    record = (out / "run.json").read_bytes()
    assert run_cli(*args) == 0
    pd.testing.assert_frame_equal(first, pd.read_csv(out / "results.csv"))
    # nothing trained: run.json still records the command that trained the trials, byte for byte
    assert (out / "run.json").read_bytes() == record
    assert json.loads(record)["trials"] == {"planned": 4, "ran": 4, "skipped": 0, "failed": 0}
    # an interrupted sweep: drop one finished row, rerun, and only that trial runs again
    first.iloc[1:].to_csv(out / "results.csv", index=False)
    assert run_cli(*args) == 0
    again = pd.read_csv(out / "results.csv")
    assert json.loads((out / "run.json").read_text())["trials"]["ran"] == 1
    cols = ["model", "task", "length", "seed", "score", "loss"]
    pd.testing.assert_frame_equal(first[cols], again[cols])


def test_growing_the_grid_in_the_same_folder_runs_only_new_trials(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--models", "lstm", "--task", "recall", *TINY, "--out", str(out)) == 0
    assert run_cli("--models", "lstm,gru", "--task", "recall", *TINY, "--out", str(out)) == 0
    results = pd.read_csv(out / "results.csv")
    assert sorted(results.model.unique()) == ["gru", "lstm"]
    assert json.loads((out / "run.json").read_text())["trials"]["ran"] == 4
    assert run_cli("--models", "lstm", "--task", "adding", *TINY, "--out", str(out)) == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["trials"]["ran"] == 4 and meta["settings"]["max_steps"] == [20]
    assert len(meta["invocations"]) == 3
    # each command's own record: where it ran, how, how long, how many trials it trained
    assert [i["trials_ran"] for i in meta["invocations"]] == [4, 4, 4]
    for one in meta["invocations"]:
        assert one["execution"]["executor"] == "local" and one["device"]["cores"] >= 1
        assert one["wall_seconds"] > 0 and one["finished_at"] >= one["started_at"]
    assert run_cli("--models", "lstm", "--task", "adding", *TINY, "--steps", "30", "--out", str(out)) == 2


def test_a_command_killed_outright_is_recorded_from_its_trials_on_resume(tmp_path):
    """SIGKILL (or a lost machine) leaves run.json without the command's end; the next command
    completes that record from results.csv: the trials it finished and when the last one did."""
    from harness.runs.sweep import LOST

    out = tmp_path / "run"
    args = ["--models", "lstm", "--task", "recall", *TINY, "--out", str(out)]
    assert run_cli(*args) == 0
    meta = json.loads((out / "run.json").read_text())
    killed = {"command": "harness run (killed)", "started_at": meta["invocations"][0]["started_at"]}
    # as if that command had been killed after its trials finished: run.json as it wrote it at its start
    meta.update(invocations=[killed], finished_at=None)
    del meta["trials"]
    (out / "run.json").write_text(json.dumps(meta))
    results = pd.read_csv(out / "results.csv")
    results.iloc[1:].to_csv(out / "results.csv", index=False)  # and one trial had not finished
    assert run_cli(*args) == 0
    first, second = json.loads((out / "run.json").read_text())["invocations"]
    assert first["interrupted"] == LOST and first["trials_ran"] == 3
    assert first["finished_at"] == max(results["finished_at"].iloc[1:])
    assert second["trials_ran"] == 1 and second["interrupted"] is None


def test_changed_settings_in_existing_folder_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--models", "lstm", "--task", "recall", *TINY, "--out", str(out)) == 0
    changed = [a if a != "20" else "30" for a in TINY]
    capsys.readouterr()
    assert run_cli("--models", "lstm", "--task", "recall", *changed, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different settings" in err and "steps" in err


def test_same_command_twice_gives_identical_scores(tmp_path):
    for name in ("a", "b"):
        assert run_cli("--models", "lstm,cifg", "--task", "adding", *TINY, "--out", str(tmp_path / name)) == 0
    cols = ["model", "task", "length", "seed", "score", "loss", "val_score", "val_loss"]
    a = pd.read_csv(tmp_path / "a" / "results.csv")[cols]
    b = pd.read_csv(tmp_path / "b" / "results.csv")[cols]
    pd.testing.assert_frame_equal(a, b)
    curves_a = pd.read_csv(tmp_path / "a" / "curves.csv").drop(columns="elapsed_seconds")
    curves_b = pd.read_csv(tmp_path / "b" / "curves.csv").drop(columns="elapsed_seconds")
    pd.testing.assert_frame_equal(curves_a, curves_b)


def test_plugin_errors_and_divergence_are_contained(tmp_path, failing_plugin, capsys):
    out = tmp_path / "run"
    code = run_cli("--plugin", failing_plugin, "--models", "exploding,lstm,diverging", "--task", "recall",
                   *TINY, "--out", str(out))
    assert code == 1
    results = pd.read_csv(out / "results.csv").set_index(["model", "length", "seed"])
    assert set(results.loc["lstm", "status"]) == {"ok"}
    assert set(results.loc["diverged" if False else "diverging", "status"]) == {"diverged"}
    exploding = results.loc["exploding"]
    assert set(exploding["status"]) == {"error"}
    assert exploding["error"].str.contains("RuntimeError: boom from a buggy model").all()
    err = capsys.readouterr().err
    assert "4 trial(s) failed" in err and "exploding recall T=3 seed=0" in err


@pytest.mark.parametrize("args, fragment", [
    (["--models", "lstn", "--task", "adding"], "unknown model 'lstn'; did you mean 'lstm'"),
    (["--models", "lstm", "--task", "adds"], "unknown task 'adds'"),
    (["--models", "lstm", "--task", "adding", "--lengths", "10,-5"], "-5 is not a positive integer"),
    (["--models", "lstm", "--task", "adding", "--lengths", "10,abc"], "'abc' is not an integer"),
    (["--models", "lstm", "--task", "adding", "--lengths", "1"], "must be an integer >= 2"),
    (["--models", "lstm", "--task", "adding", "--seeds", "0"], "0 is not a positive integer"),
    (["--models", "lstm", "--task", "adding", "--steps", "0"], "steps: 0 is not a positive integer"),
    (["--models", "lstm", "--task", "adding", "--steps", "adding=ten"], "steps.adding: 'ten' is not an integer"),
    (["--models", "lstm", "--task", "adding", "--steps", "adds=10"],
     "steps: unknown task 'adds'; did you mean 'adding'"),
    (["--models", "lstm", "--task", "adding", "--steps", "=10"], "steps: '=10' is not TASK=VALUE"),
    (["--models", "lstm", "--task", "adding", "--threshold", "1.5"], "threshold: 1.5 is not in (0, 1]"),
    (["--models", "lstm", "--task", "adding", "--device", "tpu"], "unknown device 'tpu'"),
    (["--models", "lstm", "--task", "adding", "--model-opt", "oops"], "expected KEY=VALUE"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, fragment):
    assert run_cli(*args, "--out", str(tmp_path / "never")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("harness: error:") and fragment in err
    assert not (tmp_path / "never").exists()  # nothing started


def test_unavailable_device_and_unwritable_folder(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        assert run_cli("--models", "lstm", "--task", "adding", "--device", "cuda") == 2
        assert "CUDA is not available" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run_cli("--models", "lstm", "--task", "adding", *TINY, "--out", str(blocker / "sub")) == 2
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("content, fragment", [
    ("steps = [", "is not valid TOML"),
    ("stepz = 5", "unknown key(s) stepz"),
    ("lengths = ['a']", "lengths: 'a' is not an integer"),
    ("[steps]\nadding = -3", "steps.adding: -3 is not a positive integer"),
])
def test_malformed_config_file(tmp_path, capsys, content, fragment):
    config = tmp_path / "sweep.toml"
    config.write_text(content)
    assert run_cli("--config", str(config)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err


def test_config_file_with_options_and_command_line_override(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(f"""
models = ["lstm", "cifg"]
task = "recall"
lengths = [3]
seeds = [4]
steps = 999
eval_every = 10
eval_size = 64
hidden_size = 8
batch_size = 16
workers = 0
out = "{(tmp_path / 'run').as_posix()}"
[model_options.lstm]
forget_bias = 0.0
""")
    assert run_cli("--config", str(config), "--steps", "10", "--no-plot", "--quiet") == 0
    results = pd.read_csv(tmp_path / "run" / "results.csv").set_index("model")
    assert set(results["steps"]) == {10} and set(results["seed"]) == {4}
    assert json.loads(results.loc["lstm", "model_options"])["forget_bias"] == 0.0  # every option is recorded
    assert json.loads(results.loc["cifg", "model_options"])["forget_bias"] == 1.0  # lstm's option stays with lstm


def test_command_line_narrows_a_config_files_models_and_their_options(tmp_path, capsys):
    """A file written for several models runs one of them on its own: options only the others take
    (shared ``init``, lstm's section) are dropped, not refused; a typo is still refused."""
    config = tmp_path / "sweep.toml"
    config.write_text(f"""
models = ["lstm", "lru"]
task = "recall"
lengths = [3]
seeds = 1
steps = 10
eval_every = 10
eval_size = 64
hidden_size = 8
batch_size = 16
workers = 0
out = "{(tmp_path / 'run').as_posix()}"
[model_options]
init = ["default", "chrono"]
[model_options.lstm]
forget_bias = 0.0
""")
    assert run_cli("--config", str(config), "--models", "lru", "--no-plot", "--quiet") == 0
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(results["model"]) == ["lru"]
    assert run_cli("--config", str(config), "--models", "lstm", "--no-plot", "--quiet") == 0  # the same folder
    lstm = pd.read_csv(tmp_path / "run" / "results.csv").query("model == 'lstm'")
    assert sorted(json.loads(o)["init"] for o in lstm["model_options"]) == ["chrono", "default"]
    capsys.readouterr()
    config.write_text(config.read_text().replace("init =", "inti ="))
    assert run_cli("--config", str(config), "--models", "lru", "--no-plot", "--quiet") == 2
    assert "no model in this sweep takes option(s) inti" in capsys.readouterr().err
    # On the command line, an option the named models do not take is still an error.
    assert run_cli("--models", "lru", "--task", "recall", *TINY, "--model-opt", "init=chrono",
                   "--out", str(tmp_path / "other")) == 2
    assert "no model in this sweep takes option(s) init" in capsys.readouterr().err


def test_per_task_budgets_from_file_and_command_line(tmp_path):
    from harness.registry.loader import get_state

    config = tmp_path / "sweep.toml"
    config.write_text("[steps]\nrecall = 10\n")  # adding keeps its own default budget
    out = tmp_path / "run"
    tiny = [a for a in TINY if a not in ("--steps", "20")]
    grid = ["--models", "rnn", "--task", "recall,adding", *tiny, "--lengths", "3", "--seeds", "1", "--out", str(out)]
    assert run_cli("--config", str(config), *grid) == 0
    budgets = pd.read_csv(out / "results.csv").groupby("task")["max_steps"].first().to_dict()
    adding_default = get_state().tasks.get("adding").load().default_steps
    assert budgets == {"recall": 10, "adding": adding_default}
    assert json.loads((out / "run.json").read_text())["settings"]["max_steps"] == {
        "recall": [10], "adding": [adding_default]}
    # The command line overrides the file; a different budget for the same folder is refused.
    assert run_cli("--config", str(config), *grid, "--steps", "recall=30") == 2
    assert run_cli("--config", str(config), *grid, "--steps", f"recall=10,adding={adding_default}") == 0
    # A budget for a known task outside the sweep is not used (one file can serve every task).
    assert run_cli(*grid, "--task", "recall", "--steps", "recall=10,copy=5") == 0


def test_help_and_listings_do_not_import_torch():
    code = ("import sys, io, contextlib; from harness.cli import main\n"
            "for argv in (['--help'], ['models'], ['tasks'], ['plugins'], ['models', '--json']):\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        try: main(argv)\n"
            "        except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["models", "tasks", "plugins"])
def test_listings_json(command, capsys):
    assert main([command, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in records]
    assert names and all(isinstance(n, str) for n in names)
    if command == "models":
        assert {"rnn", "lstm", "peephole", "cifg", "gru", "bilstm"} <= set(names)
        assert all(r["plugin"] and r["description"] for r in records)
    if command == "plugins":
        assert all({"source", "distribution", "version", "hooks"} <= set(r) for r in records)


def test_listing_table_shows_plugin_and_description(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "cifg (coupled)" in out and "harness.plugins.gated_cells" in out and "peephole" in out


def test_rows_from_before_a_model_gained_an_option_are_brought_up_to_date(tmp_path, capsys):
    """A folder written before the LSTM had ``chrono_scale``: on resume its rows get the option at its
    default (what they ran) and the identity that goes with it, keep their curves, and report as one
    setting with the trials written since (not as a ``chrono_scale`` axis)."""
    out = tmp_path / "run"
    args = ["--models", "lstm", "--task", "recall", *TINY, "--model-opt", "lstm:init=chrono", "--out", str(out)]
    assert run_cli(*args) == 0
    now = pd.read_csv(out / "results.csv")
    curves = pd.read_csv(out / "curves.csv")
    assert all("chrono_scale" in json.loads(o) for o in now["model_options"])

    def older(options: str) -> str:
        return json.dumps({k: v for k, v in json.loads(options).items() if k != "chrono_scale"}, sort_keys=True)

    now.assign(model_options=now["model_options"].map(older), config_id="0123456789ab").iloc[:-1].to_csv(
        out / "results.csv", index=False)  # as an older harness wrote them; the last trial still to run
    curves.assign(config_id="0123456789ab").to_csv(out / "curves.csv", index=False)
    assert run_cli(*args) == 0
    assert json.loads((out / "run.json").read_text())["trials"]["ran"] == 1
    again = pd.read_csv(out / "results.csv")
    pd.testing.assert_series_equal(again["model_options"], now["model_options"])
    pd.testing.assert_series_equal(again["config_id"], now["config_id"])
    assert len(pd.read_csv(out / "curves.csv")) == len(curves)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "chrono_scale" not in capsys.readouterr().out
