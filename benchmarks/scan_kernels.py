"""The scan kernels against the torch loops: time of a training step and peak memory of the modern models.

For mingru, minlstm, lru and mamba: ``loop`` (the pure-torch loop, ``mode=loop``; the CPU default
before the kernels) against ``kernel`` (``mode=auto``, which runs the C scan kernels on the CPU), and
the ``lstm`` as the yardstick. Time: one forward and backward pass (a fixed random projection of the
features) at batch B, length T, hidden H, one thread, the paths interleaved round by round after a
warm-up; median and min–max over ``--repeats`` rounds. Memory: each path in a fresh process at
``--memory-length``, the peak resident set of one training step, and its rise over the process before
the step (``VmHWM``: unlike ``ru_maxrss``, which a child inherits from the process that started it, it
starts afresh in the new program); a process that passes ``--memory-cap`` GiB is stopped and printed as
over it.

    python benchmarks/scan_kernels.py
    python benchmarks/scan_kernels.py --models mamba --length 1000 --memory-length 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from harness.registry import get_model

MODELS = ("mingru", "minlstm", "lru", "mamba")
PATHS = {"loop": "loop", "kernel": "auto"}  # path -> mode option


def setup(name: str, mode: str | None, args: argparse.Namespace, length: int):
    """The model (one initialisation for both paths), its inputs and the weights of the loss."""
    torch.manual_seed(0)
    options = {"mode": mode} if mode else {}
    model = get_model(name).build(input_size=args.input_size, hidden_size=args.hidden, **options)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, length, args.input_size, generator=generator)
    weights = torch.randn(args.batch, length, args.hidden, generator=generator)
    return model, x, weights


def step(model: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    features, _ = model(x)
    (features * weights).sum().backward()


def timings(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per training step, the paths interleaved round by round (a busy machine slows them alike)."""
    times: dict[str, list[float]] = {label: [] for label in runs}
    for repeat in range(repeats + 1):
        for label, run in runs.items():
            start = time.perf_counter()
            step(*run)
            if repeat:  # the first round is a warm-up
                times[label].append(time.perf_counter() - start)
    return times


def high_water_mib() -> float:
    """This process's peak resident set so far, in MiB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: one training step; prints the peak and the rise of the resident set in MiB."""
    name, mode = args.child.split(":")
    model, x, weights = setup(name, mode, args, args.memory_length)
    step(model, x[:, :2], weights[:, :2])  # loads the kernels, so that the rise is the step's
    before = high_water_mib()
    implementation = model.implementation
    step(model, x, weights)
    peak = high_water_mib()
    print(json.dumps({"implementation": implementation, "peak": peak, "rise": peak - before}))


def memory(name: str, mode: str, args: argparse.Namespace) -> str:
    """The child's report of one path, or that it passed the cap."""
    command = [sys.executable, __file__, "--child", f"{name}:{mode}", "--memory-length", str(args.memory_length),
               "--batch", str(args.batch), "--hidden", str(args.hidden), "--input-size", str(args.input_size)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    cap_kib = args.memory_cap * 1024 * 1024
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status", encoding="ascii") as status:
                rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            rss = 0
        if rss > cap_kib:
            child.kill()
            child.wait()
            return f"over {args.memory_cap:g} GiB (stopped)"
        time.sleep(0.05)
    report = json.loads(child.stdout.read() if child.stdout else "{}")
    return f"peak {report['peak']:8.0f} MiB, step adds {report['rise']:8.0f} MiB ({report['implementation']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--memory-length", type=int, default=10000, help="0: no memory measurement")
    parser.add_argument("--memory-cap", type=float, default=8.0, help="GiB; a process above it is stopped")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        memory_child(args)
        return
    print(f"T={args.length} B={args.batch} H={args.hidden} input={args.input_size} threads={args.threads} "
          f"repeats={args.repeats} torch {torch.__version__}")
    lstm = timings({"lstm": setup("lstm", None, args, args.length)}, args.repeats)["lstm"]
    print(f"{'lstm':8} {'':7} ms/step median {statistics.median(lstm) * 1e3:8.1f}  "
          f"min–max {min(lstm) * 1e3:8.1f} – {max(lstm) * 1e3:8.1f}", flush=True)
    for name in args.models.split(","):
        runs = {path: setup(name, mode, args, args.length) for path, mode in PATHS.items()}
        assert runs["kernel"][0].implementation == "kernel", runs["kernel"][0].implementation
        times = timings(runs, args.repeats)
        for path, mode in PATHS.items():
            line = (f"{name:8} {path:7} ms/step median {statistics.median(times[path]) * 1e3:8.1f}  "
                    f"min–max {min(times[path]) * 1e3:8.1f} – {max(times[path]) * 1e3:8.1f}")
            if args.memory_length:
                line += f"  | T={args.memory_length}: {memory(name, mode, args)}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
