"""Training steps of the adaptive length search (``harness horizon``) against the fixed grid that
gives the same answer, at the same resolution over [5, 1000].

The grid is every length 5 · 1.25^k up to 1000 (and 1000): a seed's horizon is then bracketed
within a factor of 1.25, the resolution the search bisects down to. Both run the same trials
(models, task, seeds, budget, and a trial stops once its validation result passes the criterion),
so the horizons should agree, and the cost is the sum of the training steps taken (from
results.csv, independent of the machine's speed).

    python benchmarks/horizon_vs_grid.py [--out results/bench-horizon] [--models rnn,lstm] [--seeds 3]

Prints per-seed horizons from both and the step totals; resumable (rerun to continue).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

COMMON = ["--task", "recall", "--steps", "600", "--hidden-size", "32", "--batch-size", "32", "--lr", "3e-3",
          "--eval-every", "50", "--eval-size", "256", "--quiet", "--no-plot"]


def grid(low: int = 5, high: int = 1000, ratio: float = 1.25) -> list[int]:
    lengths, k = [], 0
    while low * ratio ** k < high:
        lengths.append(round(low * ratio ** k))
        k += 1
    return sorted(set(lengths + [high]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/bench-horizon")
    parser.add_argument("--models", default="rnn,lstm")
    parser.add_argument("--seeds", default="3")
    args = parser.parse_args()
    out = Path(args.out)
    base = ["--models", args.models, "--seeds", args.seeds, *COMMON]
    lengths = ",".join(map(str, grid()))
    commands = {
        "grid": ["harness", "run", *base, "--lengths", lengths, "--early-stop", "default", "--out", str(out / "grid")],
        "adaptive": ["harness", "horizon", *base, "--min-length", "5", "--max-length", "1000", "--resolution", "1.25",
                     "--out", str(out / "adaptive")],
    }
    for command in commands.values():
        print("$", " ".join(command), file=sys.stderr)
        subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
    return summarise(out)


def summarise(out: Path) -> int:
    from harness.analysis.horizons import seed_horizons
    from harness.analysis.results import load_results

    rows = []
    for name in ("grid", "adaptive"):
        results = load_results([out / name])
        horizons = seed_horizons(results, "default").assign(run=name)
        rows.append(horizons)
        print(f"{name}: {len(results)} trials, {int(results['steps'].sum())} training steps, "
              f"{results['trial_seconds'].sum():.0f} s of trials")
    table = pd.concat(rows).pivot_table(index=["model", "seed"], columns="run",
                                        values=["horizon", "first_fail", "training_steps"], aggfunc="first")
    print(table.to_string())
    steps = {name: table[("training_steps", name)].sum() for name in ("grid", "adaptive")}
    print(f"training steps: grid {steps['grid']:.0f}, adaptive {steps['adaptive']:.0f}, "
          f"ratio {steps['grid'] / steps['adaptive']:.2f}")
    agree = []
    for _, row in table.iterrows():
        brackets = [(row[("horizon", n)], row[("first_fail", n)]) for n in ("grid", "adaptive")]
        agree.append(_overlap(*brackets))
    print(f"horizon brackets overlap in {sum(agree)} of {len(agree)} series")
    return 0


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (last pass, first fail) brackets overlap (a missing first fail is +inf)."""
    def bounds(bracket: tuple[float, float]) -> tuple[float, float]:
        low, high = bracket
        return (low or 0.0), (high if high == high and high is not None else math.inf)

    (a_low, a_high), (b_low, b_high) = bounds(a), bounds(b)
    return a_low < b_high and b_low < a_high


if __name__ == "__main__":
    sys.exit(main())
