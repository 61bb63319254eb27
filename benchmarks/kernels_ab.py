"""Goal 1: the fused cells' training step with the kernels as they are now against an earlier commit's.

``harness bench`` compares models within one process; comparing two versions of the code means two
processes, and on a shared machine the load changes between them. This script puts both versions
in one process and interleaves them step by step, as ``harness bench`` does with models: the
earlier commit's ``plugins/cell_kernels.py`` (read with ``git show``; it builds its own library in
its own cache file) drives a second copy of each fused cell through a replaced ``step``, so a
change of load falls on both alike. ``lstm`` runs alongside for the usual ratios.

    python benchmarks/kernels_ab.py                          # against 403c443; 2 threads; T = 50, 200, 1000
    python benchmarks/kernels_ab.py --threads 1 --lengths 200 --rounds 31

Printed: ms per training step (forward, backward, clipping, Adam; batch 128, H 128, input 10) as
the median over rounds, the ratio to ``lstm``, and the median of the per-round ratios now / then.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _old_kernels(commit: str) -> types.ModuleType:
    """The commit's ``plugins/cell_kernels.py``, imported under another name."""
    source = subprocess.run(["git", "show", f"{commit}:plugins/cell_kernels.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "cell_kernels_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("cell_kernels_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.status() != "ok":
        raise SystemExit(f"the old kernels are not available: {module.status()}")
    return module


def _use_old_kernels(subject, old: types.ModuleType) -> None:
    """Make the subject's cell call the old kernels (same checks as its step made then)."""
    cell = subject.model.core.cell
    if hasattr(cell, "peephole_weights"):
        def step(self, gates, state):
            _, c = state
            if old.usable(gates, c, self.peephole_weights):
                return old.peephole_step(gates, c, self.peephole_weights)
            raise RuntimeError("old kernels not usable")
    else:
        def step(self, gates, state):
            _, c = state
            if old.usable(gates, c):
                return old.cifg_step(gates, c)
            raise RuntimeError("old kernels not usable")
    cell.step = types.MethodType(step, cell)


def _measure(length: int, rounds: int, old: types.ModuleType) -> dict[str, list[float]]:
    from harness.runs.bench import BenchConfig, _Subject

    config = BenchConfig(models=("lstm", "peephole", "cifg"), memory=False)
    subjects = {"lstm": _Subject("lstm", config, length)}
    for name in ("peephole", "cifg"):
        subjects[f"{name} now"] = _Subject(name, config, length)
        subjects[f"{name} then"] = _Subject(name, config, length)
        _use_old_kernels(subjects[f"{name} then"], old)
    for subject in subjects.values():
        for _ in range(2):
            subject.step()
    times: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(rounds):
        for name, subject in subjects.items():
            times[name].append(subject.timed_step())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="403c443", help="the earlier commit (default: %(default)s)")
    parser.add_argument("--lengths", default="50,200,1000")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from harness.runs.allocator import tune_malloc

    tune_malloc()  # as harness bench and harness run do, before torch allocates
    import torch

    torch.set_num_threads(args.threads)
    old = _old_kernels(args.against)
    started = time.perf_counter()
    print(f"kernels now vs {args.against}: {args.threads} thread(s), median of {args.rounds} interleaved rounds, "
          f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'T':>5}  {'model':14s} {'ms/step':>8s} {'x lstm':>7s} {'now/then':>9s}")
    for length in (int(x) for x in args.lengths.split(",")):
        times = _measure(length, args.rounds, old)
        lstm = statistics.median(times["lstm"])
        for name, values in times.items():
            median = statistics.median(values)
            ratio = ""
            if name.endswith(" now"):
                then = times[name.replace(" now", " then")]
                ratio = f"{statistics.median(a / b for a, b in zip(values, then)):.3f}"
            print(f"{length:5d}  {name:14s} {median * 1e3:8.1f} {median / lstm:7.2f} {ratio:>9s}")
        print()
    print(f"({time.perf_counter() - started:.0f} s, load average at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})", file=sys.stderr)


if __name__ == "__main__":
    main()
