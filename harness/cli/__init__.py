"""The ``harness`` command line. Imports nothing heavy at start-up: listings never load torch."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

from harness import __version__
from harness.errors import HarnessError

EPILOG = """\
examples:
  harness run --models lstm,gru --task adding          the default sweep for two models
  harness run --models rnn,lstm --task recall --lengths 10,50,100 --seeds 3 --steps 500
  harness run --config sweep.toml --out results/mine    settings from a file, resumable folder
  harness models                                        what can be swept (and from which plugin)
  harness plot results/run-*                            figures from one or more run folders
  harness bench --lengths 200,1000                      ms/step of every model, ratio to lstm, memory

environment:
  HARNESS_PLUGINS=none|a,b   load no / only these installed plugins (entry-point group 'harness')
  HARNESS_STRICT_PLUGINS=1   a broken plugin is an error instead of a warning
  HARNESS_MALLOC=default     keep glibc's allocator settings (see README, Performance)
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="also load this plugin module (dotted name or path to a .py file); repeatable")
    parser.add_argument("--strict-plugins", action="store_true",
                        help="fail on any plugin problem instead of warning (same as HARNESS_STRICT_PLUGINS=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Train recurrent models on long-dependency tasks across dependency lengths and "
                    "seeds, and measure how far back each model remembers.")
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, helptext in (("models", "list registered models"), ("tasks", "list registered tasks"),
                           ("plugins", "list loaded plugins and the hooks they implement")):
        listing = sub.add_parser(name, help=helptext, description=helptext)
        listing.add_argument("--json", action="store_true", help="machine-readable output")
        _common(listing)

    run = sub.add_parser(
        "run", help="train every model on every task, length and seed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sweep models × tasks × dependency lengths × seeds. Results are written as each "
                    "trial finishes; running the same command with the same --out resumes.",
        epilog="Every option can also be set in a TOML file given with --config (same names, "
               "underscores instead of dashes; model_options/task_options as tables).\n"
               "Exit status: 0 all trials ran, 1 some trials failed (listed), 2 bad input, 130 interrupted.")
    run.add_argument("--config", metavar="FILE", help="TOML file with any of the options below")
    run.add_argument("--models", metavar="LIST", help="comma list of models (default: rnn,lstm,gru)")
    run.add_argument("--task", "--tasks", dest="tasks", metavar="LIST", help="comma list of tasks (default: adding)")
    run.add_argument("--lengths", metavar="LIST", help="comma list of dependency lengths T (default: each task's own sweep)")
    run.add_argument("--seeds", metavar="N|LIST", help="a count N (seeds 0..N-1) or a comma list (default: 2)")
    run.add_argument("--steps", metavar="N|TASK=N,...", help="training budget per trial, for every task or per task, "
                     "e.g. recall=1000,adding=3000 (default: each task's own)")
    run.add_argument("--batch-size", type=int, metavar="N", help="training batch size (default: 64)")
    run.add_argument("--hidden-size", type=int, metavar="N", help="hidden units H (default: 128)")
    run.add_argument("--lr", type=float, metavar="X", help="Adam learning rate (default: 1e-3)")
    run.add_argument("--clip", type=float, metavar="X", help="gradient-norm clipping (default: 1.0)")
    run.add_argument("--eval-every", type=int, metavar="N", help="evaluate every N steps (default: 100)")
    run.add_argument("--eval-size", type=int, metavar="N", help="held-out sequences per evaluation (default: 512)")
    run.add_argument("--threshold", type=float, metavar="X", help="score that counts as solved; training stops there (default: 0.99)")
    run.add_argument("--device", metavar="DEV", help="auto|cpu|cuda[:N]|mps (default: auto)")
    run.add_argument("--workers", metavar="N|auto", help="parallel trial processes, cores divided between them "
                     "(default: auto = one single-threaded worker per core on CPU, 1 on a GPU)")
    run.add_argument("--threads", type=int, metavar="N", help="torch threads per worker (default: cores // workers, whatever OMP_NUM_THREADS says)")
    run.add_argument("--out", metavar="DIR", help="output folder (default: results/run-DATE-TIME); reuse it to resume")
    run.add_argument("--model-opt", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                     help="model option, for every model or one (e.g. lstm:forget_bias=0); repeatable")
    run.add_argument("--task-opt", action="append", default=[], metavar="[TASK:]KEY=VALUE",
                     help="task option, for every task or one; repeatable")
    run.add_argument("--no-plot", action="store_true", help="do not draw the figures (score vs length, ...) at the end")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(run)

    plot = sub.add_parser("plot", help="draw comparison figures from run folders")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", metavar="DIR", help="where to write figures (default: the first RUN_DIR)")
    plot.add_argument("--format", action="append", dest="formats", choices=("png", "svg", "pdf"),
                      help="file format; repeatable (default: png)")
    plot.add_argument("--curves", metavar="MODEL:TASK", help="learning curves for this pair only")
    _common(plot)

    report = sub.add_parser("report", help="score table, memory horizon and area under the curve")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    report.add_argument("--threshold", type=float, help="solved threshold (default: each run's own)")
    _common(report)

    bench = sub.add_parser(
        "bench", help="time one training step of every model (ms/step, ratio to lstm, peak memory)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time forward+backward+clip+Adam of every registered model on random inputs: warm-up "
                    "steps, then the median of repeated steps, the models interleaved round-robin. "
                    "Prints ms/step, the ratio to lstm (fused torch.nn.LSTM, always timed as the "
                    "reference) and the peak memory of a training step.",
        epilog="Peak memory on CPU is the growth of the peak resident set size over warm-up+1 steps, "
               "measured in a fresh process per model and length; on CUDA torch.cuda.max_memory_allocated.\n"
               "Allocator tuning applies as in 'harness run' (HARNESS_MALLOC=default turns it off).")
    bench.add_argument("--models", metavar="LIST", help="comma list of models (default: every registered model)")
    bench.add_argument("--lengths", metavar="LIST", default="50,200,1000", help="sequence lengths T (default: 50,200,1000)")
    bench.add_argument("--batch-size", type=int, default=128, metavar="N", help="batch size (default: 128)")
    bench.add_argument("--hidden-size", type=int, default=128, metavar="N", help="hidden units H (default: 128)")
    bench.add_argument("--input-size", type=int, default=10, metavar="N", help="input features (default: 10)")
    bench.add_argument("--device", default="auto", metavar="DEV", help="auto|cpu|cuda[:N]|mps (default: auto)")
    bench.add_argument("--repeats", type=int, default=5, metavar="N", help="timed steps per model and length (default: 5)")
    bench.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed steps first (default: 2)")
    bench.add_argument("--threads", type=int, metavar="N",
                       help="torch threads (default: every core; 'harness run' gives each worker cores // workers)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    _common(bench)
    return parser


def _apply_plugin_options(args: argparse.Namespace) -> None:
    if getattr(args, "plugin", None):
        existing = [p for p in os.environ.get("HARNESS_EXTRA_PLUGINS", "").split(os.pathsep) if p]
        os.environ["HARNESS_EXTRA_PLUGINS"] = os.pathsep.join(existing + list(args.plugin))
    if getattr(args, "strict_plugins", False):
        os.environ["HARNESS_STRICT_PLUGINS"] = "1"


def cmd_listing(args: argparse.Namespace) -> int:
    from harness.registry.loader import get_state

    state = get_state()
    if args.command == "plugins":
        records = [p.as_dict() for p in state.plugins]
        if args.json:
            print(json.dumps(records, indent=2))
            return 0
        rows = [(p["name"], p["source"], f"{p['distribution'] or '-'} {p['version'] or ''}".strip(),
                 ", ".join(p["hooks"]) or "-", p["status"] if not p["error"] else f"failed: {p['error']}")
                for p in records]
        _print_table(("plugin", "source", "distribution", "hooks", "status"), rows)
        return 0
    registry = state.models if args.command == "models" else state.tasks
    infos = {p.name: p for p in state.plugins}
    records = [{"name": e.name, "aliases": list(e.aliases), "plugin": e.plugin,
                "distribution": infos[e.plugin].distribution, "version": infos[e.plugin].version,
                "target": e.target_name, "description": e.description, "defaults": e.defaults}
               for e in registry]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    rows = [(r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else ""), r["plugin"],
             f"{r['distribution'] or '-'} {r['version'] or ''}".strip(), r["description"]) for r in records]
    _print_table((registry.kind, "plugin", "distribution", "description"), rows)
    return 0


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for i, row in enumerate([header, *rows]):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in widths))


def config_from_args(args: argparse.Namespace):
    from harness.runs.config import load_config_file, merge_options, normalise

    raw: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for key in ("models", "tasks", "lengths", "seeds", "steps", "batch_size", "hidden_size", "lr", "clip",
                "eval_every", "eval_size", "threshold", "device", "workers", "threads", "out"):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    raw["model_options"] = merge_options(raw.get("model_options", {}), args.model_opt, "--model-opt")
    raw["task_options"] = merge_options(raw.get("task_options", {}), args.task_opt, "--task-opt")
    return normalise(raw)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.runs.allocator import tune_malloc

    tune_malloc()  # before torch allocates anything
    from harness.analysis.summary import print_summary
    from harness.runs.sweep import plan_sweep, prepare_out_dir, run_sweep

    plan = plan_sweep(config_from_args(args))
    previous = prepare_out_dir(plan)
    print(f"harness: {len(plan.specs)} trials ({len(plan.config.models)} model(s) × "
          f"{sum(len(v) for v in plan.lengths.values())} task lengths × {len(plan.config.seeds)} seeds) "
          f"on {plan.device}, {plan.workers} worker(s) → {plan.out}", file=sys.stderr)
    outcome = run_sweep(plan, previous, progress=not args.quiet)
    print_summary(plan.out)
    if not args.no_plot and outcome.ran:
        _draw_figures(plan.out)
    if outcome.interrupted:
        print(f"harness: interrupted; {len(outcome.store.rows)} finished trials are saved in {plan.out}. "
              f"Run the same command with --out {plan.out} to resume.", file=sys.stderr)
        return 130
    if outcome.failed:
        print(f"harness: {len(outcome.failed)} trial(s) failed: {'; '.join(outcome.failed)} "
              f"(details in {plan.out / 'results.csv'}, column 'error')", file=sys.stderr)
        return 1
    return 0


def _draw_figures(out) -> None:
    """Draw the run's figures (score vs length first); a plotting failure is only a warning."""
    try:
        from harness.analysis.plotting import plot_runs

        paths = plot_runs([out], formats=("png",))
    except Exception as exc:  # a figure must never cost the user their results
        print(f"harness: warning: could not draw the figure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    for path in paths:
        print(f"figure: {path}")


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.analysis.plotting import plot_runs

    curves_for = None
    if args.curves:
        model, sep, task = args.curves.partition(":")
        if not sep or not model or not task:
            raise HarnessError(f"--curves '{args.curves}': expected MODEL:TASK")
        curves_for = (model, task)
    dirs = [_existing_run_dir(d) for d in args.run_dirs]
    paths = plot_runs(dirs, out_dir=Path(args.out) if args.out else None,
                      formats=tuple(args.formats or ("png",)), curves_for=curves_for)
    for path in paths:
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.analysis.report import build_report, format_report

    dirs = [_existing_run_dir(d) for d in args.run_dirs]
    print(format_report(build_report(dirs, threshold=args.threshold), args.format))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.runs.allocator import tune_malloc

    tune_malloc()  # before torch allocates anything, as 'harness run' does
    from harness.runs.bench import BenchConfig, format_report, run_bench
    from harness.runs.config import parse_int_list
    from harness.runs.environment import available_cores, resolve_device
    from harness.registry.loader import get_state

    registry = get_state().models
    if args.models:
        names = [registry.get(n.strip()).name for n in args.models.split(",") if n.strip()]
        if not names:
            raise HarnessError("--models: empty list")
    else:
        names = registry.names()
    from harness.runs.bench import REFERENCE

    if REFERENCE in registry and REFERENCE not in names:
        names.insert(0, REFERENCE)  # the reference the ratios are taken to
    names = list(dict.fromkeys(names))
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--hidden-size", args.hidden_size, 1),
                               ("--input-size", args.input_size, 1), ("--repeats", args.repeats, 1),
                               ("--warmup", args.warmup, 0), ("--threads", args.threads or 1, 1)):
        if value < least:
            raise HarnessError(f"{flag}: {value} is less than {least}")
    config = BenchConfig(models=tuple(names), lengths=tuple(parse_int_list(args.lengths, "--lengths")),
                         batch_size=args.batch_size, hidden_size=args.hidden_size, input_size=args.input_size,
                         device=resolve_device(args.device), repeats=args.repeats, warmup=args.warmup,
                         threads=args.threads or available_cores(), memory=not args.no_memory)
    progress = None if args.quiet or args.json else (lambda line: print(f"bench: {line}", file=sys.stderr))
    report = run_bench(config, progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if any(row["error"] for row in report["results"]) else 0


def _existing_run_dir(text: str):
    from pathlib import Path

    path = Path(text)
    if not (path / "results.csv").is_file():
        raise HarnessError(f"{path} is not a run folder (no results.csv)")
    return path


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "models": cmd_listing, "tasks": cmd_listing, "plugins": cmd_listing,
    "run": cmd_run, "plot": cmd_plot, "report": cmd_report, "bench": cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    _apply_plugin_options(args)
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
