"""One function per ``harness`` subcommand; each returns the exit status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.runs import settings as S

# --------------------------------------------------------------------------------------------
# Listings


def listing(args: argparse.Namespace) -> int:
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
        print_table(("plugin", "source", "distribution", "hooks", "status"), rows)
        return 0
    registry = state.models if args.command == "models" else state.tasks
    infos = {p.name: p for p in state.plugins}
    records = [{"name": e.name, "aliases": list(e.aliases), "plugin": e.plugin,
                "distribution": infos[e.plugin].distribution, "version": infos[e.plugin].version,
                "target": e.target_name, "description": e.description, "defaults": e.defaults,
                "default_sweep": e.default_sweep} for e in registry.ordered()]
    if args.json:
        for record, entry in zip(records, registry.ordered()):
            record["options"], record["accepts_any_option"], record["error"] = _options(entry)
        print(json.dumps(records, indent=2, default=repr))
        return 0
    table = [(r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else ""), r["plugin"],
             f"{r['distribution'] or '-'} {r['version'] or ''}".strip(), r["description"]) for r in records]
    print_table((registry.kind, "plugin", "distribution", "description"), table)
    return 0


def _options(entry: Any) -> tuple[dict[str, Any] | None, bool, str | None]:
    from harness.runs.options import builder_options

    try:
        options, open_ended = builder_options(entry, static=True)
        return options, open_ended, None
    except Exception as exc:  # noqa: BLE001 (a broken lazy target: listed, with the reason)
        return None, False, f"{type(exc).__name__}: {exc}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for i, row in enumerate([header, *rows]):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in widths))


# --------------------------------------------------------------------------------------------
# Sweeps: run, horizon, gradients


def sweep_config(args: argparse.Namespace, roles: tuple[str, ...], search: bool = False) -> Any:
    """Settings from defaults < --config FILE < the command line, checked. In the length search
    (``search``) a trial stops, unless told otherwise, once its validation result passes the
    search's criterion: it has shown that it remembers at that length."""
    from harness.runs.config import SweepConfig, load_config_file
    from harness.runs.options import parse_items

    raw: dict[str, Any] = load_config_file(args.config, roles) if args.config else {}
    given = S.values_from_args(args, roles)
    _narrow_file_options(raw, given)
    raw.update(given)
    raw["model_options"] = parse_items(args.model_opt, "--model-opt", raw.get("model_options"))
    raw["task_options"] = parse_items(args.task_opt, "--task-opt", raw.get("task_options"))
    if search and raw.get("early_stop") is None:
        raw["early_stop"] = raw.get("criterion", "default")
    return SweepConfig.from_raw(raw, roles)


def _narrow_file_options(raw: dict[str, Any], given: dict[str, Any]) -> None:
    """Where the command line narrows a config file's models or tasks (``--models A`` with a file
    written for six models), drop the file's options that only the left-out entries take, so that
    one part of a file's sweep can be run on its own."""
    from harness.registry.loader import get_state
    from harness.runs.options import narrowed

    for names_key, table_key, kind in (("models", "model_options", "models"), ("tasks", "task_options", "tasks")):
        if names_key not in given or not raw.get(table_key):
            continue
        registry = getattr(get_state(), kind)
        written_for = S.name_list(raw[names_key], names_key) if names_key in raw else registry.default_sweep()
        raw[table_key] = narrowed(raw[table_key], registry, S.name_list(given[names_key], names_key), written_for)


def _announce(plan: Any, what: str, grid: bool = True) -> None:
    axes = f" × axes {', '.join(plan.axes)}" if plan.axes else ""
    if plan.config.get("executor") == "ray":
        where = f"Ray ({plan.config.ray_address or 'a local instance'})"
    else:
        where = "in this process" if plan.workers == 0 else f"{plan.workers} worker(s)"
    pairs = sum(len(v) for v in plan.lengths.values())
    if not grid:
        lengths = f" × {len(plan.tasks)} task(s)"
    elif len(plan.lengths) > 1:  # lengths may differ per task: count (task, length) pairs
        lengths = f" × {pairs} (task, length) pairs"
    else:
        lengths = f" × {pairs} length(s)"
    print(f"harness: {what} ({len(plan.models)} model(s){lengths} × {len(plan.config.seeds)} seeds{axes}) on "
          f"{plan.device}, {where} → {plan.out}", file=sys.stderr)


def _finish(outcome: Any, out: Path) -> int:
    if outcome.interrupted is not None:
        from harness.runs import checkpoint

        name = outcome.interrupted.args[0]
        saved = len(list((out / checkpoint.FOLDER).glob("*.pt")))
        continued = f"; {saved} stopped trial(s) will continue from their checkpoints" if saved else ""
        print(f"harness: stopped by {name}; {len(outcome.store.rows)} finished trials are saved in {out}"
              f"{continued}. Run the same command with --out {out} to resume.", file=sys.stderr)
        return outcome.interrupted.exit_code
    if outcome.failed:
        print(f"harness: {len(outcome.failed)} trial(s) failed: {'; '.join(outcome.failed)} "
              f"(details in {out / 'results.csv'}, column 'error')", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    from harness.runs.allocator import tune_malloc

    tune_malloc()  # before torch allocates anything
    from harness.analysis.summary import print_summary
    from harness.runs.plan import plan_sweep
    from harness.runs.sweep import open_run_folder, run_sweep

    plan = plan_sweep(sweep_config(args, (S.GRID, S.TRIAL, S.RUN)))
    with open_run_folder(plan) as folder:
        _announce(plan, f"{len(plan.specs)} trials")
        outcome = run_sweep(plan, folder, progress=not args.quiet)
    if outcome.store.rows:  # (none when stopped during the first trials)
        print_summary(plan.out)
    if not args.no_plot and outcome.ran:
        draw_figures(plan.out)
    return _finish(outcome, plan.out)


def horizon(args: argparse.Namespace) -> int:
    from harness.runs.allocator import tune_malloc

    tune_malloc()
    from harness.runs.horizon import run_horizon

    config = sweep_config(args, (S.GRID, S.TRIAL, S.RUN, S.SEARCH), search=True)
    outcome, out = run_horizon(config, progress=not args.quiet,
                               announce=lambda plan, what: _announce(plan, what, grid=False))
    if not args.no_plot and outcome.ran:
        draw_figures(out)
    return _finish(outcome, out)


def merge(args: argparse.Namespace) -> int:
    from harness.runs.environment import command_line
    from harness.runs.merge import merge_folders

    destination = Path(args.into)
    outcome = merge_folders([Path(s) for s in args.sources], destination, command_line())
    for source, count in outcome.merged.items():
        print(f"harness: {count} trial(s) from {source}")
    skipped = [f"{outcome.already} the destination already had"] if outcome.already else []
    skipped += [f"{outcome.unfinished} unfinished (error)"] if outcome.unfinished else []
    print(f"harness: merged {outcome.total} trial(s) into {destination}"
          + (f"; left out: {', '.join(skipped)}" if skipped else ""))
    return 0


def gradients(args: argparse.Namespace) -> int:
    from harness.runs.allocator import tune_malloc

    tune_malloc()
    from harness.analysis.gradient_report import format_gradient_summary, gradient_summary
    from harness.runs.plan import plan_sweep
    from harness.runs.sweep import GRADIENT_FILE, open_run_folder, run_sweep

    plan = plan_sweep(sweep_config(args, (S.GRID, S.TRIAL, S.RUN)))
    with open_run_folder(plan) as folder:
        _announce(plan, f"{len(plan.specs)} trials, gradients at steps {args.grad_at}")
        outcome = run_sweep(plan, folder, progress=not args.quiet)
    if (plan.out / GRADIENT_FILE).exists():
        print(format_gradient_summary(gradient_summary([plan.out]), "markdown"))
    if not args.no_plot and outcome.ran:
        draw_figures(plan.out)
    return _finish(outcome, plan.out)


def draw_figures(out: Path) -> None:
    """Draw the run's figures; a plotting failure is only a warning (it must never cost results)."""
    try:
        from harness.analysis.plotting import plot_runs

        paths = plot_runs([out], formats=("png",))
    except Exception as exc:  # noqa: BLE001 (a figure must never cost results)
        print(f"harness: warning: could not draw the figures: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    for path in paths:
        print(f"figure: {path}")


# --------------------------------------------------------------------------------------------
# Analysis: plot, report


def _existing_run_dir(text: str) -> Path:
    path = Path(text)
    if not any((path / name).is_file() for name in ("results.csv", "gradients.csv")):
        raise HarnessError(f"{path} is not a run folder (no results.csv)")
    return path


def plot(args: argparse.Namespace) -> int:
    from harness.analysis.plotting import plot_runs

    curves_for = None
    if args.curves:
        model, sep, task = args.curves.partition(":")
        if not sep or not model or not task:
            raise HarnessError(f"--curves '{args.curves}': expected MODEL:TASK")
        curves_for = (model, task)
    dirs = [_existing_run_dir(d) for d in args.run_dirs]
    paths = plot_runs(dirs, out_dir=Path(args.out) if args.out else None, formats=tuple(args.formats or ("png",)),
                      curves_for=curves_for, select=args.select, facet=args.facet, criterion=args.criterion,
                      metric=args.metric)
    for path in paths:
        print(path)
    return 0


def report(args: argparse.Namespace) -> int:
    from harness.analysis.report import full_report

    dirs = [_existing_run_dir(d) for d in args.run_dirs]
    print(full_report(dirs, fmt=args.format, select=args.select or "all", criterion=args.criterion,
                      threshold=args.threshold))
    return 0


# --------------------------------------------------------------------------------------------
# bench


def bench(args: argparse.Namespace) -> int:
    from harness.runs.allocator import tune_malloc

    tune_malloc()  # before torch allocates anything, as 'harness run' does
    from harness.registry.loader import get_state
    from harness.runs import options as O
    from harness.runs.bench import BenchConfig, format_report, run_bench
    from harness.runs.environment import resolve_device

    registry = get_state().models
    if args.models:
        names = [registry.get(n.strip()).name for n in args.models.split(",") if n.strip()]
        if not names:
            raise HarnessError("--models: empty list")
    else:
        names = [e.name for e in registry.ordered()]
    reference = registry.reference()
    if reference is not None and reference.name not in names:
        names.insert(0, reference.name)  # the model the ratios are taken to
    names = list(dict.fromkeys(names))
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--hidden-size", args.hidden_size, 1),
                               ("--input-size", args.input_size, 1), ("--repeats", args.repeats, 1),
                               ("--warmup", args.warmup, 0), ("--threads", args.threads, 1)):
        if value < least:
            raise HarnessError(f"{flag}: {value} is less than {least}")
    resolved = O.resolve(O.parse_items(args.model_opt, "--model-opt"), registry, names, "--model-opt")
    for name, choices in resolved.items():
        if len(choices) > 1:
            raise HarnessError(f"--model-opt: bench takes one value per option; '{name}' was given "
                               f"{len(choices)} combinations (sweep them with 'harness run')")
    config = BenchConfig(models=tuple(names), lengths=tuple(S.length_list(args.lengths, "--lengths")),
                         batch_size=args.batch_size, hidden_size=args.hidden_size, input_size=args.input_size,
                         device=resolve_device(args.device), repeats=args.repeats, warmup=args.warmup,
                         threads=args.threads, memory=not args.no_memory,
                         model_options={name: choices[0] for name, choices in resolved.items() if choices[0]},
                         reference=reference.name if reference else None)
    progress = None if args.quiet or args.json else (lambda line: print(f"bench: {line}", file=sys.stderr))
    result = run_bench(config, progress)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 1 if any(row["error"] for row in result["results"]) else 0
