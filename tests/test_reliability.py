"""Reliability under faults (issue #15): every reproduction from the issue, on tiny sweeps and fake models.

Each test names the fault it reproduces. docs/reliability.md summarises what survives what.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.runs.checkpoint import checkpoint_path

TINY = ["--lengths", "3,6", "--seeds", "1", "--steps", "10", "--eval-every", "5", "--eval-size", "32",
        "--hidden-size", "8", "--batch-size", "8", "--threads", "1", "--no-plot", "--quiet"]

FAULTY = '''
import ctypes, os, signal, time
import torch
from torch import nn
from harness import hookimpl
from harness.task_api import Task


class Base(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)
        self.output_size = hidden_size
    def forward(self, x):
        self.fault()
        y, _ = self.rnn(x)
        return y, y[:, -1]
    def fault(self):
        pass


class Exiter(Base):
    def fault(self):
        os._exit(1)


class Segfaulter(Base):
    def fault(self):
        ctypes.string_at(0)


class Sleeper(Base):
    def fault(self):
        time.sleep(float(os.environ.get("SLEEP", "0.2")))


class Drainer(Base):
    asked = False  # once per worker process: from its first training step, the trial asks for a drain
    def fault(self):
        if os.environ.get("DRAIN") and not Drainer.asked:
            Drainer.asked = True
            os.kill(os.getppid(), signal.SIGUSR1)
            time.sleep(0.5)  # the sweep's process has the signal long before this trial ends


class Broken(Task):  # misses every abstract member
    name = "broken"
    input_size = output_size = 2
    readout = "last"


class Raising(Task):
    name = "raising"
    input_size = output_size = 2
    readout = "last"
    def __init__(self, length):
        super().__init__(length)
        raise RuntimeError("this task cannot be built")


@hookimpl
def register_models(register):
    register("exiter", Exiter, description="calls os._exit(1)")
    register("segfaulter", Segfaulter, description="dereferences NULL")
    register("sleeper", Sleeper, description="sleeps in every forward")
    register("drainer", Drainer, description="sends its sweep SIGUSR1 from its first trial")


@hookimpl
def register_tasks(register):
    register("broken", Broken, description="abstract members missing")
    register("raising", Raising, description="constructor raises")
'''


@pytest.fixture
def faulty(tmp_path, monkeypatch) -> str:
    path = tmp_path / "faulty.py"
    path.write_text(FAULTY)
    monkeypatch.setenv("HARNESS_PLUGINS", "none")
    return str(path)


def harness(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          env={**os.environ, "HARNESS_PLUGINS": "none", **(env or {})}, **kwargs)


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HARNESS_PLUGINS": "none", **(env or {})})


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def workers_of(pid: int) -> list[int]:
    """The trial workers among a process's children (not multiprocessing's resource tracker)."""
    found = []
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command and b"resource_tracker" not in command:
            found.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


def rows(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv")


def recorded(out: Path) -> int:
    """Rows written so far (0 while results.csv is missing or created but not yet written: polling
    a running sweep can see the file between its creation and its first write)."""
    try:
        return len(rows(out))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


# -- 3. a trial that kills its own process --------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_trial_that_kills_its_process_is_contained(tmp_path, faulty, workers):
    out = tmp_path / "run"
    args = ["run", "--plugin", faulty, "--models", "lstm,exiter,segfaulter", "--task", "adding", *TINY,
            "--lengths", "3", "--workers", workers, "--out", str(out)]  # one length: each death costs a worker start
    for attempt in range(2 if workers == "2" else 1):  # and again: only the offending trials run, and fail the same way
        done = harness(*args)
        assert done.returncode == 1, done.stderr
        results = rows(out).set_index(["model", "length"])
        assert set(results.loc["lstm", "status"]) == {"ok"}
        assert results.loc["exiter", "error"].str.contains("exited with status 1").all()
        assert results.loc["segfaulter", "error"].str.contains("SIGSEGV").all()
        meta = json.loads((out / "run.json").read_text())
        assert meta["trials"]["ran"] == (3 if attempt == 0 else 2) and meta["trials"]["failed"] == 2


# -- 4. SIGTERM, the main process killed, a hung trial, one worker killed --------------------------------------

def test_sigterm_saves_finished_trials_and_stops_the_workers(tmp_path, faulty):
    out = tmp_path / "run"
    run = start("run", "--plugin", faulty, "--models", "sleeper", "--task", "adding", *TINY, "--lengths", "3,4,5,6",
                "--seeds", "2", "--workers", "2", "--out", str(out), env={"SLEEP": "0.15"})
    wait_for(lambda: recorded(out) >= 1)
    workers = workers_of(run.pid)
    assert workers
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err
    assert "stopped by SIGTERM" in err and f"--out {out}" in err
    assert len(rows(out)) >= 1 and json.loads((out / "run.json").read_text())["interrupted"] == "SIGTERM"
    wait_for(lambda: not any(alive(w) for w in workers), timeout=10)


def test_sigusr1_drains_the_sweep_keeping_the_trials_in_flight(tmp_path, faulty):
    """SIGUSR1 (sent here by the first trial of each of two workers, while it runs): no new trial
    starts, although the length search has more to submit, the running ones finish and are saved,
    exit 138; a resume trains only what was never started."""
    out = tmp_path / "run"
    args = ["horizon", "--plugin", faulty, "--models", "drainer", "--task", "adding", *TINY[2:], "--seeds", "2",
            "--min-length", "3", "--max-length", "6", "--growth", "1.2", "--criterion", "loss:1000",
            "--workers", "2", "--out", str(out)]  # 2 series of 4 lengths each (3, 4, 5, 6), all passing
    drained = harness(*args, env={"DRAIN": "1"})
    assert drained.returncode == 138, drained.stderr
    assert "finishing the running trials" in drained.stderr and "stopped by SIGUSR1" in drained.stderr
    first = rows(out)
    assert len(first) == 2 and set(first["status"]) == {"ok"}  # each worker's trial, finished
    assert json.loads((out / "run.json").read_text())["interrupted"] == "SIGUSR1"
    resumed = harness(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert len(rows(out)) == 8 and json.loads((out / "run.json").read_text())["trials"]["ran"] == 6


def test_workers_exit_when_the_main_process_is_killed(tmp_path, faulty):
    out = tmp_path / "run"
    run = start("run", "--plugin", faulty, "--models", "sleeper", "--task", "adding", *TINY, "--workers", "2",
                "--out", str(out), env={"SLEEP": "1"})
    wait_for(lambda: len(workers_of(run.pid)) >= 2)
    workers = workers_of(run.pid)
    run.kill()
    run.wait()
    wait_for(lambda: not any(alive(w) for w in workers), timeout=15)


def test_a_hung_trial_times_out_and_the_sweep_goes_on(tmp_path, faulty):
    out = tmp_path / "run"
    done = harness("run", "--plugin", faulty, "--models", "sleeper,lstm", "--task", "adding", *TINY, "--lengths", "3",
                   "--workers", "1", "--trial-timeout", "4", "--out", str(out), env={"SLEEP": "30"})
    assert done.returncode == 1
    results = rows(out)
    assert list(results.query("model == 'sleeper'")["error"]) == ["timed out after 4 s (--trial-timeout)"]
    assert list(results.query("model == 'lstm'")["status"]) == ["ok"]


def test_killing_one_worker_marks_only_its_trial(tmp_path, faulty):
    out = tmp_path / "run"
    run = start("run", "--plugin", faulty, "--models", "sleeper", "--task", "adding", *TINY, "--lengths", "3,4,5,6",
                "--workers", "2", "--out", str(out), env={"SLEEP": "0.15"})
    wait_for(lambda: len(workers_of(run.pid)) >= 2)
    wait_for(lambda: (out / "results.csv").exists())  # workers are up and running trials
    os.kill(workers_of(run.pid)[0], signal.SIGKILL)
    run.communicate(timeout=120)
    assert run.returncode == 1
    status = rows(out)["status"].value_counts().to_dict()
    assert status == {"ok": 3, "error": 1}
    assert rows(out).query("status == 'error'")["error"].str.contains("SIGKILL").all()


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_a_trial_stopped_mid_way_resumes_from_its_checkpoint_with_the_same_numbers(tmp_path, faulty, stop):
    """The main process killed outright (or stopped by SIGTERM) while a trial trains: the same
    command again continues that trial from its last checkpoint, and its row and curve are those of
    a run never stopped (timings aside); the checkpoint is gone once the row is written."""
    args = ["run", "--plugin", faulty, "--models", "sleeper", "--task", "adding", *TINY, "--lengths", "3",
            "--steps", "200", "--eval-every", "10", "--checkpoint-every", "0", "--workers", "1"]
    whole = tmp_path / "whole"
    assert harness(*args, "--out", str(whole), env={"SLEEP": "0"}).returncode == 0
    out = tmp_path / "run"
    run = start(*args, "--out", str(out), env={"SLEEP": "0.02"})  # a slow model, the same numbers
    wait_for(lambda: any((out / "checkpoints").glob("*.pt")))
    workers = workers_of(run.pid)
    run.send_signal(getattr(signal, stop))
    _, err = run.communicate(timeout=60)
    if stop == "SIGTERM":
        assert "1 stopped trial(s) will continue from their checkpoints" in err
    wait_for(lambda: not any(alive(w) for w in workers), timeout=15)
    assert recorded(out) == 0
    resumed = harness(*args, "--out", str(out), env={"SLEEP": "0"})
    assert resumed.returncode == 0, resumed.stderr
    timings = ["train_seconds", "seconds_per_step", "trial_seconds", "finished_at"]
    pd.testing.assert_frame_equal(rows(out).drop(columns=timings), rows(whole).drop(columns=timings))
    curves = [pd.read_csv(folder / "curves.csv").drop(columns="elapsed_seconds") for folder in (out, whole)]
    pd.testing.assert_frame_equal(*curves)
    continued = json.loads((out / "run.json").read_text())["invocations"][-1]["resumed_from_checkpoints"]
    assert len(continued) == 1 and 0 < continued[0]["from_step"] < 200
    assert not (out / "checkpoints").exists()
    stale = out / "checkpoints" / "sleeper-adding-T3-seed0-x.pt"  # as if the process died between row and delete
    stale.parent.mkdir()
    stale.write_bytes(b"")
    key = rows(out).iloc[0]
    finished = checkpoint_path(out, (key.model, key.task, key.length, key.seed, key.config_id))
    finished.write_bytes(b"")
    assert harness(*args, "--out", str(out)).returncode == 0  # trains nothing
    assert finished.exists() is False and stale.exists()  # only a finished trial's checkpoint is removed


def test_a_search_stopped_during_its_first_trial_says_how_to_resume_and_continues_it(tmp_path, faulty):
    """No trial finished yet: no summary, no horizons.csv, no "no results" error; exit 143 with the
    resume hint; the same command continues the trial from its checkpoint."""
    out = tmp_path / "run"
    args = ["horizon", "--plugin", faulty, "--models", "sleeper", "--task", "adding", *TINY[2:], "--steps", "200",
            "--eval-every", "10", "--min-length", "3", "--max-length", "3", "--checkpoint-every", "0",
            "--workers", "1", "--out", str(out)]
    run = start(*args, env={"SLEEP": "0.02"})
    wait_for(lambda: any((out / "checkpoints").glob("*.pt")))
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err
    assert "error" not in err and "1 stopped trial(s) will continue from their checkpoints" in err
    assert not (out / "horizons.csv").exists()
    resumed = harness(*args, env={"SLEEP": "0"})
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "run.json").read_text())["invocations"][-1]["resumed_from_checkpoints"]
    assert len(rows(out)) == 1 and (out / "horizons.csv").exists()


# -- 2. two runs on one folder -----------------------------------------------------------------------------------

def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, faulty):
    out = tmp_path / "run"
    first = start("run", "--plugin", faulty, "--models", "sleeper", "--task", "adding", *TINY, "--workers", "1",
                  "--out", str(out), env={"SLEEP": "0.3"})
    wait_for(lambda: (out / ".harness.lock").exists() and (out / ".harness.lock").read_text())
    second = harness("run", "--models", "rnn", "--task", "adding", *TINY, "--out", str(out))
    assert second.returncode == 2
    assert len(second.stderr.strip().splitlines()) == 1 and f"pid {first.pid}" in second.stderr
    first.kill()  # a crashed run leaves no stuck lock
    first.wait()
    assert harness("run", "--models", "rnn", "--task", "adding", *TINY, "--workers", "0",
                   "--out", str(out)).returncode == 0


# -- 5. damaged result files -----------------------------------------------------------------------------------

@pytest.fixture
def finished(tmp_path) -> Path:
    out = tmp_path / "run"
    assert main(["run", "--models", "lstm,rnn", "--task", "recall", *TINY, "--workers", "0", "--out", str(out)]) == 0
    return out


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_result_files_get_the_mode_of_any_new_file_not_private(finished):
    """They are written to a temporary file and renamed (atomic); the temporary file is created 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.csv", "curves.csv", "run.json"):
        assert (finished / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_an_incomplete_last_row_is_dropped_and_run_again(finished, capsys):
    text = (finished / "results.csv").read_text()
    (finished / "results.csv").write_text(text[: len(text) - 25])  # a write cut short in the last row
    capsys.readouterr()
    assert main(["run", "--models", "lstm,rnn", "--task", "recall", *TINY, "--workers", "0",
                 "--out", str(finished)]) == 0
    assert "incomplete last line" in capsys.readouterr().err
    assert len(rows(finished)) == 4 and json.loads((finished / "run.json").read_text())["trials"]["ran"] == 1


def test_a_cut_inside_the_key_columns_is_dropped_too(finished):
    lines = (finished / "results.csv").read_text().splitlines(keepends=True)
    (finished / "results.csv").write_text("".join(lines[:-1]) + lines[-1][:6])  # "rnn,re"
    assert main(["run", "--models", "lstm,rnn", "--task", "recall", *TINY, "--workers", "0",
                 "--out", str(finished)]) == 0
    assert len(rows(finished)) == 4


@pytest.mark.parametrize("damage, fragment", [
    (lambda t: t.replace("\n", "\n\x00\x01\x02", 1), "NUL bytes"),
    (lambda t: t.split("\n", 2)[0] + "\n" + "garbage,row\n" + t.split("\n", 2)[2], "fields"),
    (lambda t: "\xff\xfe not csv at all \x00", "NUL bytes"),
])
def test_an_unreadable_results_file_is_one_line_saying_how_to_recover(finished, capsys, damage, fragment):
    path = finished / "results.csv"
    path.write_bytes(damage(path.read_text()).encode("utf-8", "surrogatepass"))
    capsys.readouterr()
    assert main(["run", "--models", "lstm", "--task", "recall", *TINY, "--out", str(finished)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "move it aside" in err


def test_a_cut_curves_file_is_repaired(finished):
    text = (finished / "curves.csv").read_text()
    (finished / "curves.csv").write_text(text[:-7])
    assert main(["run", "--models", "lstm,rnn", "--task", "recall", *TINY, "--workers", "0",
                 "--out", str(finished)]) == 0
    curves = pd.read_csv(finished / "curves.csv")
    assert len(curves) == 7  # the cut evaluation row is gone; every other row parses


def test_a_garbage_run_json_says_how_to_recover_in_place(finished, capsys):
    (finished / "run.json").write_text("{not json")
    capsys.readouterr()
    assert main(["run", "--models", "lstm,rnn", "--task", "recall", *TINY, "--out", str(finished)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"rm {finished / 'run.json'}" in err
    (finished / "run.json").unlink()  # as it says: then the folder resumes, nothing lost
    assert main(["run", "--models", "lstm,rnn", "--task", "recall", *TINY, "--workers", "0",
                 "--out", str(finished)]) == 0
    assert json.loads((finished / "run.json").read_text())["trials"]["ran"] == 0


# -- 6. the writability probe ------------------------------------------------------------------------------------

def test_the_writability_probe_has_a_name_of_its_own(tmp_path):
    out = tmp_path / "run"
    (out / ".write-test").mkdir(parents=True)  # what a concurrent run's probe looked like to the old code
    assert main(["run", "--models", "rnn", "--task", "recall", *TINY, "--workers", "0", "--out", str(out)]) == 0


# -- 7, 8. bad options and numbers --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--task-opt", "adding:bogus=1"], "task 'adding' has no option 'bogus'"),
    (["--model-opt", "lstm:forgetbias=2"], "did you mean 'forget_bias'"),
    (["--model-opt", "indrn:x=1"], "unknown model 'indrn'"),
    (["--model-opt", "gru:x=1"], "model 'gru' is not in this sweep"),
    (["--model-opt", "nonsense=1"], "no model in this sweep takes option(s) nonsense"),
    (["--lr", "nan"], "lr: nan is not a finite number"),
    (["--clip", "nan"], "clip: nan is not a finite number"),
    (["--lr", "inf"], "lr: inf is not a finite number"),
    (["--threshold", "nan"], "is not a finite number"),
])
def test_bad_options_are_one_line_errors_before_training(tmp_path, capsys, args, fragment):
    assert main(["run", "--models", "lstm", "--task", "adding", *TINY, *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err
    assert not (tmp_path / "x").exists()


def test_options_resolve_aliases(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--models", "cifg", "--task", "adding", *TINY, "--model-opt", "coupled:forget_bias=2",
                 "--workers", "0", "--out", str(out)]) == 0
    assert all(json.loads(o)["forget_bias"] == 2 for o in rows(out)["model_options"])


@pytest.mark.parametrize("task", ["broken", "raising"])
def test_a_task_that_cannot_be_built_is_contained(tmp_path, faulty, capsys, task):
    out = tmp_path / "run"
    code = main(["run", "--plugin", faulty, "--models", "rnn", "--task", f"{task},adding", *TINY, "--workers", "0",
                 "--out", str(out)])
    assert code == 1
    results = rows(out).set_index("task")
    assert set(results.loc["adding", "status"]) == {"ok"}
    assert results.loc[task, "error"].str.contains(f"task '{task}' cannot be built").all()


# -- also expected: plugins that are not what they seem --------------------------------------------------------

def test_an_unmarked_hook_is_a_named_warning(tmp_path, monkeypatch, capsys):
    from harness.registry.loader import load_plugins

    path = tmp_path / "unmarked.py"
    path.write_text("def register_models(register):\n    register('never', 'x:y')\n")
    state = load_plugins(entry_points=False, extra=[str(path)])
    err = capsys.readouterr().err
    assert f"plugin '{path}' defines register_models but it is not marked with @hookimpl" in err
    assert next(p for p in state.plugins if p.name == str(path)).status == "failed"


def test_a_plugin_whose_registrations_were_all_rejected_is_not_loaded(tmp_path, capsys):
    from harness.registry.loader import load_plugins

    path = tmp_path / "clash.py"
    path.write_text("from harness import hookimpl\n@hookimpl\ndef register_models(register):\n"
                    "    register('lstm', 'x:y')\n    register('gru', 'x:y')\n")
    state = load_plugins(entry_points=False, extra=[str(path)])
    info = next(p for p in state.plugins if p.name == str(path))
    assert info.status == "failed" and "every registration" in info.error


# -- 9. which implementation ran is recorded, and a resume may not switch it ---------------------------------------

def test_the_kernel_path_is_recorded_and_a_switch_is_refused_on_resume(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--models", "peephole,lstm", "--task", "recall", *TINY, "--workers", "0", "--out", str(out)]
    assert harness(*args).returncode == 0
    results = rows(out).set_index("model")
    assert set(results.loc["peephole", "implementation"]) == {"fused-cpu"}
    assert json.loads((out / "run.json").read_text())["implementations"]["peephole"] == "fused-cpu"
    refused = harness(*args, env={"HARNESS_FUSED": "0"})  # the eager equations differ around the 8th digit
    assert refused.returncode == 2
    assert "peephole ran on fused-cpu, now eager" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    fresh = harness(*args[:-1], str(tmp_path / "eager"), env={"HARNESS_FUSED": "0"})
    assert fresh.returncode == 0 and set(rows(tmp_path / "eager").query("model == 'peephole'")["implementation"]) == {
        "eager: HARNESS_FUSED=0"}


def test_a_worker_sets_up_before_importing_torch():
    """A spawned worker imports the executors module first: it must not import torch, so that the
    worker dies with its parent and sets its thread variables before the slow import (on a loaded
    machine, seconds in which a killed sweep's workers lived on)."""
    code = "import sys, harness.runs.executors; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False"], done.stderr
