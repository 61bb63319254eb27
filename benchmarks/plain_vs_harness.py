"""Goal 2: a harness trial against the straightforward PyTorch training loop, same nn.LSTM.

Four configurations, each in its own fresh process (``mallopt`` must run before torch allocates
anything, so the allocator setting cannot change inside one process):

  plain/default    a plain loop: nn.LSTM + nn.Linear, Adam, clipping, a fresh adding-problem batch
                   every step, glibc's default allocator (what a user's own script does)
  plain/tuned      the same loop after harness.allocator.tune_malloc()
  harness/tuned    harness.runs.training.run_trial (lstm, adding), as `harness run` runs it
  harness/default  the same trial with HARNESS_MALLOC=default

Both loops time every step from the first (the harness's own train_seconds; the plain loop
with perf_counter around its loop), so one-time costs count alike. The configurations run
interleaved, ``--repeats`` times each; the medians are reported, with the peak RSS of each
process (ru_maxrss) and its growth over the RSS just before training: the memory cost of
keeping freed memory instead of returning it.

    python benchmarks/plain_vs_harness.py                      # T = 200 and 1000, batch 128
    python benchmarks/plain_vs_harness.py --lengths 200 --steps 40 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = ("plain/default", "plain/tuned", "harness/tuned", "harness/default")


def child(config: str, length: int, steps: int, batch: int, hidden: int, threads: int) -> dict:
    loop, malloc = config.split("/")
    if malloc == "tuned":
        from harness.runs.allocator import tune_malloc

        assert tune_malloc(), "mallopt failed"
    import resource

    import torch

    torch.set_num_threads(threads)
    before_mib = _rss_mib()
    if loop == "plain":
        seconds = plain_loop(length, steps, batch, hidden)
    else:
        from harness.runs.training import TrialSpec, run_trial

        spec = TrialSpec(model="lstm", task="adding", length=length, seed=0, steps=steps,
                         batch_size=batch, hidden_size=hidden, eval_every=steps, eval_size=256,
                         threshold=2.0)  # never "solved": every step runs
        started = time.perf_counter()
        row = run_trial(spec).row
        assert row["status"] == "ok", row["error"]
        seconds = row["train_seconds"]
        trial = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"config": config, "length": length, "steps": steps, "seconds": seconds,
              "steps_per_second": steps / seconds, "peak_rss_mib": peak_mib,
              "rss_growth_mib": peak_mib - before_mib}
    if loop == "harness":
        result["trial_seconds"] = trial
    return result


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def plain_loop(length: int, steps: int, batch: int, hidden: int) -> float:
    """The loop a user would write: nothing from the harness."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    lstm = nn.LSTM(2, hidden, batch_first=True)
    head = nn.Linear(hidden, 1)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    rows = torch.arange(batch)
    started = time.perf_counter()
    for _ in range(steps):
        values = torch.rand(batch, length, generator=generator)
        first = torch.randint(0, (length + 1) // 2, (batch,), generator=generator)
        second = torch.randint((length + 1) // 2, length, (batch,), generator=generator)
        markers = torch.zeros_like(values)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        targets = values[rows, first] + values[rows, second]
        features, _ = lstm(torch.stack([values, markers], dim=-1))
        loss = nn.functional.mse_loss(head(features[:, -1]).squeeze(-1), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    loss.item()
    return time.perf_counter() - started


def run_child(config: str, length: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env.pop("HARNESS_MALLOC", None)  # the child tunes exactly when its configuration says "tuned"
    command = [sys.executable, __file__, "--child", config, str(length), str(args.steps_for[length]),
               str(args.batch_size), str(args.hidden_size), str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{config} T={length} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="200,1000")
    parser.add_argument("--steps", type=int, help="steps per run (default: 40 at T<=200, 12 above)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config, length, steps, batch, hidden, threads = args.child
        print(json.dumps(child(config, int(length), int(steps), int(batch), int(hidden), int(threads))))
        return
    lengths = [int(t) for t in args.lengths.split(",")]
    args.steps_for = {t: args.steps or (40 if t <= 200 else 12) for t in lengths}
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    results: dict[tuple[str, int], list[dict]] = {}
    for length in lengths:
        for repeat in range(args.repeats):
            order = CONFIGS if repeat % 2 == 0 else tuple(reversed(CONFIGS))
            for config in order:
                result = run_child(config, length, args)
                results.setdefault((config, length), []).append(result)
                print(f"  T={length} {config:16s} {result['steps_per_second']:6.2f} steps/s "
                      f"peak {result['peak_rss_mib']:6.0f} MiB (+{result['rss_growth_mib']:.0f})", file=sys.stderr)
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    summary = []
    for length in lengths:
        base = statistics.median(r["steps_per_second"] for r in results[("plain/default", length)])
        for config in CONFIGS:
            runs = results[(config, length)]
            rate = statistics.median(r["steps_per_second"] for r in runs)
            summary.append({"length": length, "config": config, "steps": args.steps_for[length],
                            "steps_per_second": rate, "ms_per_step": 1e3 / rate, "vs_plain_default": rate / base,
                            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                            "rss_growth_mib": statistics.median(r["rss_growth_mib"] for r in runs),
                            "runs": [round(r["steps_per_second"], 3) for r in runs]})
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"nn.LSTM, batch {args.batch_size}, hidden {args.hidden_size}, adding problem, {args.threads} threads, "
          f"median of {args.repeats} processes per row")
    print("(peak RSS: the whole process, torch included; growth: peak minus RSS before training)")
    print(f"{'T':>5}  {'configuration':16s} {'steps/s':>8} {'ms/step':>8} {'x plain/default':>16} "
          f"{'peak RSS MiB':>13} {'growth MiB':>11}")
    for row in summary:
        print(f"{row['length']:5d}  {row['config']:16s} {row['steps_per_second']:8.2f} {row['ms_per_step']:8.1f} "
              f"{row['vs_plain_default']:16.2f} {row['peak_rss_mib']:13.0f} {row['rss_growth_mib']:11.0f}")


if __name__ == "__main__":
    main()
