"""Peak memory of one evaluation forward pass (no gradient) of each model at a long length.

An evaluation runs 256 held-out sequences at once (``EVAL_BATCH``); at T = 10,000 that batch, not the
training batch of 32, set a trial's peak memory when the whole-sequence kernels kept every step's
saved values without a gradient to take. Each model runs in a fresh process, so the peak resident
set it reports (``ru_maxrss``, less the process's before the forward pass) is that model's alone.

    python benchmarks/eval_memory.py                                     # T = 10,000, B = 256, H = 64
    python benchmarks/eval_memory.py --models lstm,peephole --length 5120
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, torch
from harness.registry.loader import get_model
from harness.runs.options import build_core
model, length, batch, hidden, inputs = sys.argv[1], *map(int, sys.argv[2:6])
torch.manual_seed(0)
torch.set_num_threads(1)
core = build_core(get_model(model), inputs, hidden, length, {})
x = torch.randn(batch, length, inputs)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    core(x)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"model": model, "implementation": getattr(core, "implementation", ""), "peak_mib": grown / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rnn,lstm,gru,peephole,cifg,bilstm")
    parser.add_argument("--length", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=17)
    args = parser.parse_args()
    inputs = args.length * args.batch_size * args.input_size * 4 / 2**20
    print(f"one no-grad forward pass: T = {args.length}, B = {args.batch_size}, H = {args.hidden_size}, "
          f"inputs {args.input_size} (the input tensor itself, {inputs:.0f} MiB, is not counted)")
    print(f"{'model':10} {'implementation':16} {'peak MiB':>9}")
    for model in args.models.split(","):
        sizes = [str(n) for n in (args.length, args.batch_size, args.hidden_size, args.input_size)]
        done = subprocess.run([sys.executable, "-c", CHILD, model, *sizes], capture_output=True, text=True)
        if done.returncode:
            print(f"{model:10} failed: {done.stderr.strip().splitlines()[-1]}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{row['model']:10} {row['implementation']:16} {row['peak_mib']:9.0f}")


if __name__ == "__main__":
    main()
