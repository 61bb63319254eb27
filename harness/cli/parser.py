"""The argument parser of the ``harness`` command. Sweep options come from :mod:`harness.runs.settings`;
building the parser imports neither torch nor any plugin, so ``harness --help`` is instant."""

from __future__ import annotations

import argparse

from harness import __version__
from harness.runs import settings as S

EPILOG = """\
examples:
  harness run                                           the default sweep (models and task registered for it)
  harness run --models A,B --task recall --lengths 10,50,100 --seeds 3 --steps 500
  harness run --task adding --lr 1e-3,1e-2 --out results/lr    a learning-rate axis; report --select best
  harness horizon --task recall --max-length 1000       how far back each model remembers (adaptive search)
  harness gradients --task recall --length 100          gradient norm against distance, at init and after training
  harness run --config sweep.toml --out results/mine    settings from a file, resumable folder
  harness models                                        what can be swept (and from which plugin)
  harness report results/run-*                          tables: scores, horizons, chosen settings
  harness plot results/run-*                            figures from one or more run folders
  harness bench --lengths 200,1000                      ms/step of every model, ratio to the reference model
  harness merge elsewhere/run --into results/mine      trials trained in another folder (machine) join this one

environment:
  HARNESS_PLUGINS=none|a,b   load no / only these installed plugins (entry-point group 'harness')
  HARNESS_STRICT_PLUGINS=1   a broken plugin is an error instead of a warning
  HARNESS_MALLOC=default     keep glibc's allocator settings (see README, Performance)
  HARNESS_FUSED=0            run custom cells with their eager equations, not fused kernels
  HARNESS_HANG_FACTOR=10     a trial is hung after max(--hang-after, this × the slowest progress interval seen)
"""

SWEEP_EPILOG = ("Every option can also be set in a TOML file given with --config (same names, underscores "
                "instead of dashes; 'steps' for --steps; model_options/task_options as tables). A list of "
                "values for a training setting or a model/task option is an axis of the sweep. "
                "Exit status: 0 all trials ran, 1 some trials failed (listed), 2 bad input, "
                "130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 138 drained (SIGUSR1: no new trial was started "
                "and the running ones finished; kill -USR1 PID stops a long sweep without losing them).")


def _plugin_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="also load this plugin module (dotted name or path to a .py file); repeatable")
    parser.add_argument("--strict-plugins", action="store_true",
                        help="fail on any plugin problem instead of warning (same as HARNESS_STRICT_PLUGINS=1)")


def _sweep_options(parser: argparse.ArgumentParser, roles: tuple[str, ...], skip: tuple[str, ...] = ()) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of the options below")
    S.add_arguments(parser, roles, skip)
    parser.add_argument("--model-opt", action="append", default=[], metavar="[MODEL:]KEY=VALUE[,VALUE...]",
                        help="model option for every model that takes it, or for one (e.g. NAME:forget_bias=3); "
                             "several values make an axis; repeat the flag for each option "
                             "(--model-opt a=1 --model-opt b=2)")
    parser.add_argument("--task-opt", action="append", default=[], metavar="[TASK:]KEY=VALUE[,VALUE...]",
                        help="task option, for every task that takes it or for one; several values make an axis; "
                             "repeat the flag for each option (--task-opt a=1 --task-opt b=2)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the figures at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _plugin_options(parser)


def _analysis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--select", choices=("all", "best"), default=None,
                        help="all: every setting of the folder's axes; best: per (model, task, T) the setting "
                             "with the best validation score, reporting its test score (default: all for "
                             "report, best for plot when the folder has axes)")
    parser.add_argument("--criterion", metavar="NAME", default="default",
                        help="what counts as remembering, for horizons: default (each task's own), solved, "
                             "normalised[:LEVEL], loss[:FRACTION] (default: default)")
    _plugin_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Train recurrent models on long-dependency tasks across dependency lengths and "
                    "seeds, and measure how far back each model remembers.")
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, helptext in (("models", "list registered models (--json: with their options and defaults)"),
                           ("tasks", "list registered tasks (--json: with their options and defaults)"),
                           ("plugins", "list loaded plugins and the hooks they implement")):
        listing = sub.add_parser(name, help=helptext, description=helptext)
        listing.add_argument("--json", action="store_true", help="machine-readable output")
        _plugin_options(listing)

    run = sub.add_parser("run", help="train every model on every task, length, seed and setting",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SWEEP_EPILOG,
                         description="Sweep models × tasks × dependency lengths × seeds (× any axes). Results "
                                     "are written as each trial finishes; the same command with the same --out "
                                     "resumes.")
    _sweep_options(run, (S.GRID, S.TRIAL, S.RUN))

    horizon = sub.add_parser(
        "horizon", help="find how far back each model remembers, by an adaptive search over T",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SWEEP_EPILOG,
        description="For every (model, task, seed): grow T geometrically from --min-length until a trial "
                    "fails the criterion (or --max-length), then bisect in log T between the last pass and "
                    "the first failure down to --resolution. Every trial is an ordinary row of results.csv; "
                    "horizons.csv holds one row per (model, task, seed, criterion).")
    _sweep_options(horizon, (S.GRID, S.TRIAL, S.RUN, S.SEARCH), skip=("lengths",))

    gradients = sub.add_parser(
        "gradients", help="measure gradient flow: ‖∂L/∂x_t‖ against distance, at init and after training",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SWEEP_EPILOG,
        description="For each model, task, length and seed: the norm of the gradient of the loss at the "
                    "scored position(s) with respect to the input at every earlier position, against the "
                    "distance, averaged over a batch of the task's own sequences; at the training steps "
                    "given with --at (0: initialisation; end: the last step), with the training loop of "
                    "'harness run'. Writes gradients.csv, a figure, and a decay rate per model.")
    _sweep_options(gradients, (S.GRID, S.TRIAL, S.RUN), skip=("grad_at",))
    gradients.add_argument("--at", dest="grad_at", metavar="STEPS", default="0,end",
                           help="training steps to measure at, e.g. 0,200,1000 or 0,end (default: 0,end)")

    plot = sub.add_parser("plot", help="draw comparison figures from run folders")
    _analysis_options(plot)
    plot.add_argument("--out", metavar="DIR", help="where to write figures (default: the first RUN_DIR)")
    plot.add_argument("--format", action="append", dest="formats", choices=("png", "svg", "pdf"),
                      help="file format; repeatable (default: png)")
    plot.add_argument("--curves", metavar="MODEL:TASK", help="learning curves for this pair only (every "
                      "setting of the model with --select all)")
    plot.add_argument("--metric", choices=("score", "loss"), default="score",
                      help="learning curves of the validation score (mean over seeds), or of the loss (every "
                      "seed, log axis, the memoryless loss dashed) (default: score)")
    plot.add_argument("--facet", metavar="SETTING", help="one panel per value of this setting or option "
                      "(e.g. lr, or model:forget_bias) instead of the selected setting")

    report = sub.add_parser("report", help="tables: scores per length, memory horizons, chosen settings")
    _analysis_options(report)
    report.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    report.add_argument("--threshold", type=float, help="re-derive solved as test score >= this (default: "
                        "each run's own)")

    merge = sub.add_parser(
        "merge", help="bring the finished trials of other run folders into one (a sweep split across machines)",
        description="Copy the finished trials of each SOURCE folder (rows, curves, gradients) into --into, an "
                    "existing run folder, as if they had been trained there: a sweep run partly on another "
                    "machine, or a trial run ahead of its length search in a scratch folder. A trial the "
                    "destination has already finished keeps its row. Trials that a resume of the destination "
                    "would refuse to mix with its own (another implementation of a model, another --threads, "
                    "another budget rule for the same settings) are refused, and nothing is written. run.json "
                    "records the merge with the commands that trained the merged trials; horizons.csv, if the "
                    "destination has one, is recomputed.")
    merge.add_argument("sources", nargs="+", metavar="SOURCE", help="run folders to take trials from")
    merge.add_argument("--into", required=True, metavar="DIR", help="the run folder that receives them")
    _plugin_options(merge)

    _bench_parser(sub)
    return parser


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench", help="time one training step of every model (ms/step, ratio to its floor and to the reference, "
                      "peak memory)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time forward+backward+clip+Adam of every registered model on random inputs: warm-up "
                    "steps, then the median (and min-max) of repeated steps, the models interleaved "
                    "round-robin. Prints ms/step, the ratio to the model's floor (its own matrix products, "
                    "derived from its parameter shapes, timed as one large GEMM each in the same rounds), the "
                    "ratio to the reference model (registered as such; always timed) and the peak memory of a "
                    "training step. Runs on ONE torch thread per process unless --threads says otherwise.",
        epilog="Peak memory on CPU is the growth of the peak resident set size over warm-up+1 steps, "
               "measured in a fresh process per model and length; on CUDA torch.cuda.max_memory_allocated.\n"
               "Allocator tuning applies as in 'harness run' (HARNESS_MALLOC=default turns it off).\n"
               "example: harness bench --lengths 1000 --batch-size 32 --hidden-size 64 --input-size 17")
    bench.add_argument("--models", metavar="LIST", help="comma list of models (default: every registered model)")
    bench.add_argument("--lengths", metavar="LIST", default="50,200,1000",
                       help="sequence lengths T (default: 50,200,1000)")
    bench.add_argument("--batch-size", type=int, default=128, metavar="N", help="batch size (default: 128)")
    bench.add_argument("--hidden-size", type=int, default=128, metavar="N", help="hidden units H (default: 128)")
    bench.add_argument("--input-size", type=int, default=10, metavar="N", help="input features (default: 10)")
    bench.add_argument("--device", default="auto", metavar="DEV", help="auto|cpu|cuda[:N]|mps (default: auto)")
    bench.add_argument("--repeats", type=int, default=5, metavar="N",
                       help="timed steps per model and length (default: 5)")
    bench.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed steps first (default: 2)")
    bench.add_argument("--threads", type=int, default=1, metavar="N",
                       help="torch threads (default: 1, as each trial of 'harness run' unless --threads; "
                            "one thread is also far steadier on a shared machine)")
    bench.add_argument("--model-opt", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                       help="model option, as in 'harness run', for every model that takes it or for one "
                            "(e.g. NAME:forget_bias=3); one value per option; repeatable")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    _plugin_options(bench)
