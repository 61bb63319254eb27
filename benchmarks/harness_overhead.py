"""Goal 3: how much of a trial's wall time is not training steps.

Runs a small ``harness run`` (in-process, one worker) and reads ``results.csv``: for every trial
``trial_seconds`` (wall time of the trial: building the task, model and held-out set, training,
evaluations) over ``train_seconds`` (the training steps alone, evaluations excluded). Also the
whole command's wall time against the sum of trial times (start-up, plugin loading, writing
files, the summary).

    python benchmarks/harness_overhead.py
    python benchmarks/harness_overhead.py -- --models lstm,cifg --lengths 100 --steps 300
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_RUN = ["--models", "lstm,gru,peephole,cifg", "--task", "adding", "--lengths", "20,100",
               "--seeds", "1", "--steps", "300", "--workers", "1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--harness", default=f"{shlex.quote(sys.executable)} -m harness.cli",
                        help="command that runs the harness CLI (to compare another checkout)")
    parser.add_argument("run_args", nargs="*", help="arguments for 'harness run' (after --)")
    args = parser.parse_args()
    run_args = args.run_args or DEFAULT_RUN
    import pandas as pd

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        command = [*shlex.split(args.harness), "run", *run_args, "--out", str(out), "--no-plot", "--quiet"]
        print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
        results = pd.read_csv(out / "results.csv")
    results["ratio"] = results["trial_seconds"] / results["train_seconds"]
    print("harness run " + " ".join(run_args))
    print(results[["model", "task", "length", "steps", "train_seconds", "trial_seconds", "ratio"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    total_train, total_trial = results["train_seconds"].sum(), results["trial_seconds"].sum()
    print(f"\ntrial_seconds / train_seconds: median {results['ratio'].median():.3f}, "
          f"max {results['ratio'].max():.3f}, all trials together {total_trial / total_train:.3f}")
    print(f"command wall time {wall:.1f} s; sum of trial times {total_trial:.1f} s "
          f"(start-up, loading, writing files: {wall - total_trial:.1f} s); "
          f"wall / training steps {wall / total_train:.3f}")


if __name__ == "__main__":
    main()
