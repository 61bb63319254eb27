"""Peak memory of one evaluation forward pass (no gradient) of each model at a long length.

An evaluation batch holds 256 held-out sequences (``EVAL_BATCH``); at T = 10,000 that batch, not the
training batch of 32, set a trial's peak memory. Two columns: the whole batch in one forward pass,
and the batch in row chunks as ``harness.runs.training.evaluate`` runs it above T = 1024 (16 rows at
T = 10,000). Each measurement runs in a fresh process, so the peak resident set it reports
(``ru_maxrss``, less the process's before the forward pass) is that model's alone. The summary (the
last step's features) is kept, as for a task read out at the last step (recall, adding).

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
from harness.runs.training import forward_in_row_chunks
model, length, batch, hidden, inputs, chunked = sys.argv[1], *map(int, sys.argv[2:7])
torch.manual_seed(0)
torch.set_num_threads(1)
core = build_core(get_model(model), inputs, hidden, length, {})
x = torch.randn(batch, length, inputs)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    last = lambda part: core(part)[1].clone()  # what a last-step readout keeps (not a view of all steps)
    forward_in_row_chunks(last, x) if chunked else last(x)
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
    print(f"{'model':10} {'implementation':16} {'whole, MiB':>11} {'chunked, MiB':>13}")
    for model in args.models.split(","):
        sizes = [str(n) for n in (args.length, args.batch_size, args.hidden_size, args.input_size)]
        peaks, implementation = [], ""
        for chunked in ("0", "1"):
            done = subprocess.run([sys.executable, "-c", CHILD, model, *sizes, chunked], capture_output=True,
                                  text=True)
            if done.returncode:
                peaks.append("failed: " + done.stderr.strip().splitlines()[-1])
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            implementation = row["implementation"]
            peaks.append(f"{row['peak_mib']:.0f}")
        print(f"{model:10} {implementation:16} {peaks[0]:>11} {peaks[1]:>13}")


if __name__ == "__main__":
    main()
