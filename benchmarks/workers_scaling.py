"""Goal 4: trials per hour of ``harness run --workers 1`` against ``--workers 2``.

Runs the same sweep of many small trials twice (fresh output folders), once with one worker
(in-process, every core's threads) and once with two workers (spawned processes, one thread
each), and reports trials/hour from the command's wall time. The two commands alternate
``--repeats`` times; the medians are reported. On a shared machine, note the load average.

    python benchmarks/workers_scaling.py
    python benchmarks/workers_scaling.py --repeats 3 -- --models rnn,lstm --lengths 5,10 --seeds 4
    python benchmarks/workers_scaling.py -- --models rnn,lstm,gru,cifg --task adding \
        --lengths 5,10,20,40 --seeds 3 --steps 100         # the default sizes (H 128, batch 64)
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Many small trials: the sizes of the reference sweep (results/reference/config.toml), fewer steps.
DEFAULT_SWEEP = ["--models", "rnn,lstm,gru,cifg", "--task", "adding", "--lengths", "5,10,20,40",
                 "--seeds", "3", "--steps", "200", "--hidden-size", "64", "--batch-size", "32"]


def run(harness: list[str], sweep: list[str], workers: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        command = [*harness, "run", *sweep, "--workers", str(workers),
                   "--out", str(out), "--no-plot", "--quiet"]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        trials = sum(1 for _ in open(out / "results.csv", encoding="utf-8")) - 1
    return wall, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--harness", default=f"{shlex.quote(sys.executable)} -m harness.cli",
                        help="command that runs the harness CLI (to compare another checkout)")
    parser.add_argument("sweep", nargs="*", help="arguments for 'harness run' (after --)")
    args = parser.parse_args()
    sweep = args.sweep or DEFAULT_SWEEP
    walls: dict[int, list[float]] = {1: [], 2: []}
    trials = 0
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    for repeat in range(args.repeats):
        for workers in ((1, 2) if repeat % 2 == 0 else (2, 1)):
            wall, trials = run(shlex.split(args.harness), sweep, workers)
            walls[workers].append(wall)
            print(f"  --workers {workers}: {trials} trials in {wall:.1f} s", file=sys.stderr)
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    print("harness run " + " ".join(sweep))
    rates = {}
    for workers, values in walls.items():
        wall = statistics.median(values)
        rates[workers] = trials / wall * 3600
        print(f"--workers {workers}: {trials} trials, median wall {wall:.1f} s "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)}), {rates[workers]:.0f} trials/hour")
    print(f"--workers 2 / --workers 1: {rates[2] / rates[1]:.2f}x trials/hour")


if __name__ == "__main__":
    main()
