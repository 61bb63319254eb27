"""Scan against loop for the models with a ``mode`` option: time of a training step, and float32 accuracy.

For each model and mode, on the CPU with one thread: the median time of a training step (forward
and backward of a fixed random projection of the features) at batch B, length T, hidden H; and,
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


def measure(name: str, mode: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """(median seconds per training step, features' relative error, largest gradient relative error)."""
    torch.manual_seed(0)
    model = get_model(name).build(input_size=args.input_size, hidden_size=args.hidden, mode=mode)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.length, args.input_size, generator=generator)
    weights = torch.randn(args.batch, args.length, args.hidden, generator=generator)
    times = []
    for repeat in range(args.repeats + 1):
        start = time.perf_counter()
        features, grads = step(model, x, weights)
        if repeat:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    f64, g64 = step(copy.deepcopy(model).double(), x.double(), weights.double())
    return statistics.median(times), relative(features, f64), max(relative(a, b) for a, b in zip(grads, g64))


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
    print(f"{'model':8} {'mode':9} {'ms/step':>9} {'rel.err features':>17} {'rel.err grads (max)':>20}")
    for name in args.models.split(","):
        for mode in MODES[name]:
            seconds, feature_error, grad_error = measure(name, mode, args)
            print(f"{name:8} {mode:9} {seconds * 1e3:9.1f} {feature_error:17.2e} {grad_error:20.2e}", flush=True)


if __name__ == "__main__":
    main()
