"""Scan against loop for the models with a ``mode`` option: time of a training step, and float32 accuracy.

For each model and mode, on the CPU with one thread: the time of a training step (forward and
backward of a fixed random projection of the features) at batch B, length T, hidden H, the modes
interleaved round by round, fastest and median of ``--repeats`` rounds after a warm-up; and,
from the same initialisation, the relative error of float32 against float64,
‖x₃₂ − x₆₄‖ / ‖x₆₄‖, for the features and for each parameter's gradient (the largest over the
parameters is printed).

    python benchmarks/modern_modes.py
    python benchmarks/modern_modes.py --models mingru --length 1000 --batch 32 --hidden 64 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from harness.registry import get_model

MODES = {"mingru": ("scan", "log-scan", "loop"), "minlstm": ("scan", "log-scan", "loop"),
         "lru": ("scan", "loop"), "mamba": ("scan", "loop")}


def step(model: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Features and parameter gradients of one forward and backward pass."""
    model.zero_grad(set_to_none=True)
    features, _ = model(x)
    (features * weights).sum().backward()
    return features.detach(), [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


Run = tuple[torch.nn.Module, torch.Tensor, torch.Tensor]


def setup(name: str, mode: str, args: argparse.Namespace) -> Run:
    """The model (the same initialisation in every mode), its inputs and the weights of the loss."""
    torch.manual_seed(0)
    model = get_model(name).build(input_size=args.input_size, hidden_size=args.hidden, mode=mode)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.length, args.input_size, generator=generator)
    weights = torch.randn(args.batch, args.length, args.hidden, generator=generator)
    return model, x, weights


def errors(model: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor) -> tuple[float, float]:
    """Relative error of float32 against float64: of the features, and the largest over parameter gradients."""
    features, grads = step(model, x, weights)
    f64, g64 = step(copy.deepcopy(model).double(), x.double(), weights.double())
    return relative(features, f64), max(relative(a, b) for a, b in zip(grads, g64))


def timings(runs: dict[str, Run], repeats: int) -> dict[str, list[float]]:
    """Seconds per training step, the modes interleaved round by round (a busy machine slows them alike)."""
    times: dict[str, list[float]] = {mode: [] for mode in runs}
    for repeat in range(repeats + 1):
        for mode, (model, x, weights) in runs.items():
            start = time.perf_counter()
            step(model, x, weights)
            if repeat:  # the first round is a warm-up
                times[mode].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODES))
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"T={args.length} B={args.batch} H={args.hidden} input={args.input_size} threads={args.threads} "
          f"torch {torch.__version__}")
    print(f"{'model':8} {'mode':9} {'ms/step min':>12} {'median':>8} {'rel.err features':>17} "
          f"{'rel.err grads (max)':>20}")
    for name in args.models.split(","):
        runs = {mode: setup(name, mode, args) for mode in MODES[name]}
        times = timings(runs, args.repeats)
        for mode, run in runs.items():
            feature_error, grad_error = errors(*run)
            print(f"{name:8} {mode:9} {min(times[mode]) * 1e3:12.1f} {statistics.median(times[mode]) * 1e3:8.1f} "
                  f"{feature_error:17.2e} {grad_error:20.2e}", flush=True)


if __name__ == "__main__":
    main()
