"""Issue #20, item 3: the shared cell loop's two paths on the same cell, interleaved in one process.

``CellLoop`` projects the inputs up front and takes ``W_hh``'s gradient as one product at the end
(``_projected``, the default); ``_concatenated`` is the former loop (one product of
``[x_t, h_{t-1}]`` with ``[W_ih W_hh]`` per step), kept for ``torch.compile``. This script trains
two copies of each cell, one per path, round-robin, and prints per path the median (min-max) of a
training step (forward, backward, Adam; cross-entropy of a linear head on the last state) in wall
time and in CPU time of this process (steadier on a shared machine), the cell's floor (its matrix
products as large GEMMs, :mod:`harness.runs.floor`, timed in the same rounds) and the ratios to it,
and the per-round ratio of the two paths' CPU times.

    python benchmarks/cell_loop.py                               # mgu; T = 1000, batch 32, H 64, input 17
    python benchmarks/cell_loop.py --models mgu,cifg,peephole --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

PATHS = ("forward", "_projected", "_concatenated")


def _step(loop: torch.nn.Module, path: str, head: torch.nn.Linear, optimizer: torch.optim.Optimizer,
          inputs: torch.Tensor, targets: torch.Tensor) -> None:
    last = loop(inputs)[1] if path == "forward" else getattr(loop, path)(inputs)[-1]
    loss = torch.nn.functional.cross_entropy(head(last), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _timed(call: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    from harness.runs.allocator import tune_malloc

    tune_malloc()  # as harness bench and harness run do, before torch allocates
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mgu")
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=17)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="forward (CellLoop.forward: the graph loop where the cell has no implementation of its "
                             "own), _projected (the eager loop), _concatenated (the former loop)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from harness.registry.loader import get_model
    from harness.runs.floor import GemmTimer, find_products

    inputs = torch.randn(args.batch_size, args.length, args.input_size)
    targets = torch.randint(0, 8, (args.batch_size,))
    timer = GemmTimer(args.batch_size * args.length)
    subjects, floors, loops = {}, {}, {}
    for name in args.models.split(","):
        for path in args.paths.split(","):
            torch.manual_seed(0)
            loop = get_model(name).build(input_size=args.input_size, hidden_size=args.hidden_size)
            if path == "forward":
                loops[name] = loop
            head = torch.nn.Linear(args.hidden_size, 8)
            optimizer = torch.optim.Adam([*loop.parameters(), *head.parameters()])
            subjects[name, path] = (lambda loop=loop, path=path, head=head, optimizer=optimizer:
                                    _step(loop, path, head, optimizer, inputs, targets))
            subjects[name, path]()  # warm-up
            floors[name] = find_products(loop, args.hidden_size)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in subjects}
    for _ in range(args.rounds):
        for key, call in subjects.items():
            times[key].append(_timed(call))
        timer.time_round(shape for found in floors.values() for shape in found.shapes)
    print(f"T = {args.length}, batch {args.batch_size}, H {args.hidden_size}, input {args.input_size}, "
          f"{args.threads} thread(s), {args.rounds} rounds; ms per training step, median (min-max)")
    for (name, path), values in times.items():
        floor = statistics.median(s * 1e3 for s in timer.floor_seconds(floors[name]))
        floor_cpu = statistics.median(s * 1e3 for s in timer.floor_seconds(floors[name], cpu=True))
        wall, cpu = [v[0] for v in values], [v[1] for v in values]
        print(f"{name:9s} {path:14s} wall {_summary(wall)}  cpu {_summary(cpu)}  floor wall {floor:5.1f} "
              f"cpu {floor_cpu:5.1f}  x floor: wall {statistics.median(wall) / floor:4.2f} "
              f"cpu {statistics.median(cpu) / floor_cpu:4.2f}")
    for name in floors:
        if "forward" in args.paths.split(","):
            print(f"{name}: CellLoop.forward ran {getattr(loops[name], 'implementation', '?')}")
        paths = args.paths.split(",")
        for first, second in zip(paths, paths[1:]):
            ratios = [a[1] / b[1] for a, b in zip(times[name, first], times[name, second])]
            print(f"{name}: cpu time {first.strip('_')} / {second.strip('_')}, per round: median "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
