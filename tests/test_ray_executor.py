"""``--executor ray``: the same numbers as local workers, contained crashes and timeouts, plugin files shipped
to the workers, and a one-line error without Ray.

Tests that start Ray need it installed (``pip install -e ".[test,ray]"``) and are skipped otherwise;
each runs the ``harness`` command in a fresh process, so Ray starts and stops as it does for a user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.errors import HarnessError
from tests import plugin_sources as src
from tests.test_threads import numbers

# The "must show" command (without figures and progress bar).
SWEEP = ["--models", "lstm,rnn", "--task", "recall", "--lengths", "5,10", "--seeds", "2", "--steps", "60",
         "--batch-size", "16", "--hidden-size", "16", "--no-plot", "--quiet"]


@pytest.fixture
def ray():
    return pytest.importorskip("ray")


def harness_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Longer than the harness's own wait for a Ray worker that is never set up (--trial-timeout + 300 s): on a
    # loaded machine the command must be able to end on its own, recording that trial as an error.
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, **(env or {})})


# One Ray sweep serves the tests below (starting Ray and its workers is most of their time): a trial that
# crashes its worker, one that never returns, one whose model exists only in the copy of the plugin file
# that Ray ships to the workers, and two built-in models whose numbers must match local workers'. Each
# worker's set-up is made slower (6 s) than the trial timeout (4 s).
SETUP_SECONDS, TIMEOUT = 6, 4
BUILT_IN = ["lstm", "rnn"]
RAY_SWEEP = ["--task", "recall", "--lengths", "5", "--seeds", "1", "--steps", "10", "--eval-every", "5",
             "--eval-size", "32", "--hidden-size", "4", "--batch-size", "8", "--no-plot", "--quiet",
             "--checkpoint-every", "0"]  # each trial saves a checkpoint at step 5, on Ray as locally


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory) -> tuple[subprocess.CompletedProcess, pd.DataFrame, str]:
    pytest.importorskip("ray")
    folder = tmp_path_factory.mktemp("ray")
    plugin = folder / "ray_models.py"
    plugin.write_text(src.RAY_MODELS.replace("__DRIVER_FILE__", str(plugin)))
    out = folder / "run"
    done = harness_command("run", "--executor", "ray", "--plugin", str(plugin), "--models",
                           ",".join(["crashing", "sleeping", "shipped", *BUILT_IN]), *RAY_SWEEP,
                           "--trial-timeout", str(TIMEOUT), "--out", str(out),
                           env={"HARNESS_TEST_WORKER_SETUP_SECONDS": str(SETUP_SECONDS)})
    assert (out / "results.csv").exists(), done.stderr
    return done, pd.read_csv(out / "results.csv").set_index("model"), str(plugin)


def test_ray_gives_the_numbers_of_local_workers(ray_sweep, tmp_path):
    """The same rows and learning curves, to the last bit, as the default local workers (no --threads
    on either run; issue #19)."""
    done, _, plugin = ray_sweep
    ray_out = Path(plugin).parent / "run"
    local_out = tmp_path / "local"
    assert main(["run", "--plugin", plugin, "--models", ",".join(BUILT_IN), *RAY_SWEEP, "--out", str(local_out)]) == 0
    local_rows, local_curves = numbers(local_out)
    ray_rows, ray_curves = numbers(ray_out, models=BUILT_IN)
    assert set(ray_rows["status"]) == {"ok"}, done.stderr
    assert len(local_rows) == 2 and set(local_rows["status"]) == {"ok"} and set(local_rows["threads"]) == {1}
    pd.testing.assert_frame_equal(ray_rows, local_rows)  # score and loss to the last bit, threads too
    pd.testing.assert_frame_equal(ray_curves, local_curves)
    record = json.loads((ray_out / "run.json").read_text())
    assert record["execution"]["checkpoint_every"] == 0  # on a local Ray instance trials checkpoint
    assert not list(ray_out.glob("checkpoints/lstm-*")) and not list(ray_out.glob("checkpoints/rnn-*"))


def test_a_crash_or_a_timeout_on_ray_is_an_error_row_and_the_rest_finish(ray_sweep):
    done, results, plugin = ray_sweep
    assert done.returncode == 1, done.stderr
    assert list(results["status"].sort_index().items()) == [
        ("crashing", "error"), ("lstm", "ok"), ("rnn", "ok"), ("shipped", "ok"), ("sleeping", "error")]
    assert "its Ray worker process died" in results.loc["crashing", "error"]
    assert "WorkerCrashedError" in results.loc["crashing", "error"]
    assert results.loc["sleeping", "error"] == f"timed out after {TIMEOUT} s (--trial-timeout)"
    assert "2 trial(s) failed: crashing recall T=5 seed=0; sleeping recall T=5 seed=0" in done.stderr


def test_plugin_files_reach_the_workers_and_rows_name_the_drivers_file(ray_sweep):
    done, results, plugin = ray_sweep
    assert results.loc["shipped", "status"] == "ok", done.stderr  # its model refuses to run from the driver's file
    assert results.loc["shipped", "model_provider"] == f"command line {plugin}"  # the driver's path, as locally


def test_a_slow_worker_set_up_does_not_count_against_the_trial_timeout(ray_sweep):
    """Loading the plugins in a fresh Ray worker took 8 s here (on a loaded machine, torch's import alone
    took over 30 s); the worker set-up is made slower than the trial timeout, and the trial still runs."""
    done, results, _ = ray_sweep
    assert SETUP_SECONDS > TIMEOUT
    assert results.loc["shipped", "status"] == "ok", done.stderr


def test_without_ray_the_command_is_one_line_naming_the_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "run"
    assert main(["run", "--executor", "ray", *SWEEP, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == ('harness: error: --executor ray needs Ray, which is not installed here: '
                   'pip install "recurrent-harness[ray]"\n')
    assert not out.exists()  # refused while planning, before the folder or any trial
    from harness.runs.executors import make_executor

    with pytest.raises(HarnessError, match=r"recurrent-harness\[ray\]"):
        make_executor(1, 1, kind="ray")


def test_help_and_listings_do_not_import_ray():
    code = ("import sys, contextlib, io\nfrom harness.cli import main\n"
            "for argv in (['--help'], ['run', '--help'], ['models'], ['plugins']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            "print('ray' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("device, gpus, expected", [
    ("cpu", None, {"num_cpus": 2, "num_gpus": 0.0}),
    ("cuda", None, {"num_cpus": 2, "num_gpus": 1.0}),
    ("cuda", 0.25, {"num_cpus": 2, "num_gpus": 0.25}),
])
def test_trial_resources(device, gpus, expected):
    from harness.runs.ray_executor import trial_resources

    assert trial_resources(2, device, gpus) == expected


def test_ray_device_rules():
    from harness.runs.ray_executor import ray_device, trial_resources

    assert ray_device("cuda") == "cuda"  # the driver itself may have no GPU
    assert ray_device("cpu") == "cpu"
    with pytest.raises(HarnessError, match="use --device cuda"):
        ray_device("cuda:1")
    with pytest.raises(HarnessError, match="--gpus-per-trial 0.5 needs --device cuda"):
        trial_resources(1, "cpu", 0.5)


def test_ray_errors_name_their_cause(ray):
    from ray import exceptions as E

    from harness.runs.ray_executor import describe_ray_error

    assert describe_ray_error(E.WorkerCrashedError()).startswith("its Ray worker process died")
    assert describe_ray_error(E.NodeDiedError("node 10.0.0.2 died")) == (
        "the Ray node running it died: NodeDiedError: node 10.0.0.2 died")
    assert describe_ray_error(E.OutOfMemoryError("Task was killed due to the node running low on memory.\nMore")) \
        .startswith("Ray's memory monitor killed its worker (the node ran low on memory): OutOfMemoryError: Task was")
    wrapped = E.RayTaskError("run_on_worker", "Traceback ...", ImportError("no module named mymodels"))
    assert describe_ray_error(wrapped).endswith("ImportError: no module named mymodels")


def test_plugin_files_are_copied_for_the_workers(tmp_path, monkeypatch):
    from harness.runs.ray_shipping import PluginShipment

    plugin = tmp_path / "my_models.py"
    plugin.write_text(src.TOY_MODEL)
    monkeypatch.setenv("HARNESS_STRICT_PLUGINS", "1")
    shipment = PluginShipment.stage([str(plugin), "some.installed.module"])
    try:
        assert shipment.specs == ["0/my_models.py", "some.installed.module"]
        assert (shipment.folder / "0" / "my_models.py").read_text() == src.TOY_MODEL
        runtime_env = shipment.runtime_env(threads=3)
        assert runtime_env["working_dir"] == str(shipment.folder)
        env = runtime_env["env_vars"]
        assert env["HARNESS_EXTRA_PLUGINS"].split(":") == ["0/my_models.py", "some.installed.module"]
        assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3" and env["HARNESS_STRICT_PLUGINS"] == "1"
        row = {"model_provider": "command line 0/my_models.py", "task_provider": "recurrent-harness 0.1.0"}
        shipment.restore(row)
        assert row == {"model_provider": f"command line {plugin}", "task_provider": "recurrent-harness 0.1.0"}
    finally:
        folder = shipment.folder
        shipment.cleanup()
    assert not folder.exists()
