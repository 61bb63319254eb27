"""A hung trial is stopped without ``--trial-timeout`` and the sweep finishes; a slow one that keeps
progressing is never stopped (issue #19, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from harness.runs.stall import StallWatch

NEVER = '''
import time
from torch import nn
from harness import hookimpl


class Never(nn.Module):
    """Never returns from its first forward pass (a deadlock, an endless loop)."""
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.linear = nn.Linear(input_size, hidden_size)
        self.output_size = hidden_size
    def forward(self, x):
        time.sleep(3600)


@hookimpl
def register_models(register):
    register("never", Never, description="hangs")
'''


def test_a_slow_but_progressing_trial_is_never_stopped():
    watch = StallWatch(floor=600.0, scale=10.0)
    watch.start(1, 0.0)
    now = 0.0
    for _ in range(200):  # one report every 500 s, for 100,000 s: always inside the limit
        now += 500.0
        assert not watch.hung(1, now - 1e-6)
        watch.beat(1, now)
    assert watch.limit() == 5000.0  # 10 × the slowest interval seen, above the floor


def test_a_silent_trial_is_hung_after_the_floor_or_the_slowest_interval_times_the_factor():
    watch = StallWatch(floor=600.0, scale=10.0)
    watch.start(1, 0.0)
    assert not watch.hung(1, 599.0) and watch.hung(1, 600.0)      # nothing seen yet: the floor
    watch.beat(1, 100.0)                                          # one interval of 100 s
    watch.start(2, 100.0)
    assert not watch.hung(2, 1099.0) and watch.hung(2, 1100.0)    # 10 × 100 s
    watch.finish(2)
    assert not watch.hung(2, 10 ** 9)                            # a finished trial is never hung
    assert not StallWatch(floor=0).hung(1, 10 ** 9)               # --hang-after 0: off


def test_a_never_returning_trial_is_an_error_row_and_the_rest_of_the_sweep_finishes(tmp_path):
    plugin = tmp_path / "never_plugin.py"
    plugin.write_text(NEVER)
    out = tmp_path / "run"
    env = {**os.environ, "HARNESS_HANG_FACTOR": "3"}
    command = [sys.executable, "-m", "harness", "run", "--plugin", str(plugin), "--models", "never,lstm",
               "--task", "adding", "--lengths", "3", "--seeds", "1", "--steps", "20", "--eval-every", "5",
               "--eval-size", "16", "--hidden-size", "4", "--batch-size", "4", "--workers", "2",
               "--hang-after", "2", "--no-plot", "--out", str(out)]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 1, done.stderr[-3000:]
    assert time.monotonic() - started < 240
    rows = pd.read_csv(out / "results.csv").set_index(["model", "length"])
    assert set(rows.loc["lstm", "status"]) == {"ok"} and len(rows.loc["lstm"]) == 1
    assert set(rows.loc["never", "status"]) == {"error"} and len(rows.loc["never"]) == 1
    assert rows.loc["never", "error"].str.startswith("stopped as hung: no progress for").all()
    assert "running: never adding T=" in done.stderr  # the progress display shows how long each has run


@pytest.mark.parametrize("value, fragment", [("-1", "hang_after: -1.0 is negative"),
                                             ("soon", "hang_after: 'soon' is not a number")])
def test_a_bad_hang_limit_is_one_line(value, fragment, tmp_path, capsys):
    from harness.cli import main

    assert main(["run", "--models", "lstm", "--task", "adding", "--hang-after", value,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
