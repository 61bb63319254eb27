"""Issues #20 and #22: the built-in models' training step with the whole-sequence kernels, against its floor.

The floor of a model's training step is the time of its matrix products done as large GEMMs: per
layer, the forward product of [x_t, h_{t-1}] (T*B rows, I + H columns) with the G*H gate rows, and the
two backward products (the weight gradient and the input gradient), 6*T*B*(I+H)*G*H flops in all,
timed here as one torch.mm each in the same process (their median over the rounds). Each model's
step (forward, backward, gradient clipping, Adam; a TaskModel head, as ``harness bench``) is timed
in rounds, all models interleaved, so a change of the machine's load falls on all alike.

    python benchmarks/sequence_kernels.py                           # T 1000, B 32, H 64, I 17, 1 thread
    python benchmarks/sequence_kernels.py --lengths 200 --batch-size 128 --hidden-size 128
    python benchmarks/sequence_kernels.py --before                  # also each model without the kernel
    python benchmarks/sequence_kernels.py --plain-gemm              # the C loops instead of torch's BLAS
    python benchmarks/sequence_kernels.py --peak --lengths 10000     # one step per fresh process: s, peak RSS

``--before``: rnn and gru also run their torch.nn module, peephole and cifg the per-step cell loop
(with its fused step kernels), slstm the graph loop, as they did before their whole-sequence kernels.
Printed: ms per step, median [min-max] over the rounds, and the ratio of the median to the floor.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Subject:
    step: Callable[[], None]  # one training step
    implementation: str
    shapes: list[tuple[int, int]]  # (I + H, G*H) of each recurrent layer


def _subject(name: str, before: bool, args: argparse.Namespace, length: int) -> _Subject:
    """One training step of model ``name`` on a fixed random batch, with what it runs on."""
    import torch

    from harness.model_api import TaskModel
    from harness.registry.loader import get_model

    torch.manual_seed(0)
    core = get_model(name).build(input_size=args.input_size, hidden_size=args.hidden_size)
    if before and hasattr(core, "kernel"):
        core.kernel = None  # rnn, gru: the torch.nn module
    elif before:
        core.sequence_kernel = False  # peephole, cifg: the per-step cell loop; slstm: the graph loop
    model = TaskModel(core, 10, "last")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(args.batch_size, length, args.input_size, generator=generator)
    targets = torch.randint(0, 10, (args.batch_size,), generator=generator)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return _Subject(step, getattr(core, "implementation", "") or "torch.nn", _gemm_shapes(core))


def _gemm_shapes(core) -> list[tuple[int, int]]:
    """(I + H, G*H) of every recurrent layer, from the parameter shapes (weight_ih*, weight_hh*)."""
    shapes = []
    for name, weight in core.named_parameters():
        if "weight_ih" in name:
            recurrent = dict(core.named_parameters())[name.replace("weight_ih", "weight_hh")]
            shapes.append((weight.shape[1] + recurrent.shape[1], weight.shape[0]))
    return shapes


def _floor_gemms(rows: int, shapes: list[tuple[int, int]]) -> Callable[[], None]:
    """The three large products of a training step for layers of these shapes."""
    import torch

    mats = [(torch.randn(rows, k), torch.randn(k, n), torch.randn(rows, n)) for k, n in shapes]

    def gemms() -> None:
        for a, w, g in mats:
            torch.mm(a, w)  # forward: [X H] W^T
            torch.mm(g.t(), a)  # weight gradient
            torch.mm(g, w.t())  # input/state gradient
    return gemms


def _peak(name: str, before: bool, args: argparse.Namespace, length: int) -> str:
    """One forward + backward of a fresh model in this (fresh) process: its seconds and peak RSS growth."""
    import torch

    subject = _subject(name, before, args, length)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = _timed(subject.step) / 1e3
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    label = f"{name} ({'before' if before else subject.implementation})"
    return (f"{label:36} T={length} B={args.batch_size} H={args.hidden_size}: {seconds:.2f} s, "
            f"peak RSS growth {grown:.0f} MiB (torch {torch.get_num_threads()} thread)")


def _timed(function: Callable[[], None]) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rnn,gru,peephole,cifg,lstm,slstm")
    parser.add_argument("--lengths", default="1000")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=17)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--before", action="store_true", help="also each model without its sequence kernel")
    parser.add_argument("--plain-gemm", action="store_true",
                        help="the kernels' small products in plain C loops instead of torch's BLAS")
    parser.add_argument("--peak", action="store_true",
                        help="instead: one training step per model in a fresh process, its time and peak memory")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # NAME or NAME:before, for --peak
    args = parser.parse_args()
    if args.plain_gemm:
        from harness.plugins.kernels import sequence_ops

        sequence_ops._torch_gemm = lambda: (None, None)

    import torch

    from harness.runs.training import prepare_process

    prepare_process()
    torch.set_num_threads(args.threads)
    names = args.models.split(",")
    if args.child:
        name, _, before = args.child.partition(":")
        print(_peak(name, bool(before), args, int(args.lengths)))
        return
    if args.peak:
        options = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k in ("batch_size", "hidden_size", "input_size", "threads", "lengths")]
        for name in names:
            for child in (name, f"{name}:before") if args.before else (name,):
                print(subprocess.run([sys.executable, __file__, *options, f"--child={child}"], check=True,
                                     capture_output=True, text=True).stdout.strip())
        return
    for length in (int(v) for v in args.lengths.split(",")):
        subjects = {}
        for name in names:
            for before in (False, True) if args.before else (False,):
                subject = _subject(name, before, args, length)
                subjects[f"{name} ({'before' if before else subject.implementation})"] = subject
        floors = {label: _floor_gemms(length * args.batch_size, s.shapes) for label, s in subjects.items()}
        for function in [*(subject.step for subject in subjects.values()), *floors.values()]:
            function()  # warm-up
        times: dict[str, list[float]] = {label: [] for label in subjects}
        floor_times: dict[str, list[float]] = {label: [] for label in subjects}
        for _ in range(args.rounds):
            for label in subjects:
                times[label].append(_timed(subjects[label].step))
                floor_times[label].append(_timed(floors[label]))
        from harness.plugins import kernels

        print(f"gemm: {kernels.blas()}")
        print(f"T={length} B={args.batch_size} H={args.hidden_size} I={args.input_size} threads={args.threads} "
              f"rounds={args.rounds}; ms per training step, median [min-max]")
        print(f"{'model':36} {'ms/step':>22} {'floor ms':>9} {'GFLOP/s':>8} {'x floor':>8}")
        for label, values in times.items():
            floor = statistics.median(floor_times[label])
            flops = sum(6 * length * args.batch_size * k * n for k, n in subjects[label].shapes)
            median = statistics.median(values)
            spread = f"{median:.1f} [{min(values):.1f}-{max(values):.1f}]"
            print(f"{label:36} {spread:>22} {floor:9.1f} {flops / floor / 1e6:8.1f} {median / floor:8.2f}")


if __name__ == "__main__":
    main()
