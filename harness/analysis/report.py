"""``harness report``: per-length scores, memory horizons and chosen settings of one or more run folders.

Uses pandas and numpy only (no torch, no matplotlib). The definitions (error trials, later folders
winning, settings, axes, selection on validation) are those of :mod:`harness.analysis.results`;
horizons are those of :mod:`harness.analysis.horizons`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis import horizons as H
from harness.analysis.criteria import describe
from harness.analysis.results import (
    axes,
    describe_settings,
    implementation_options,
    load_results,
    model_order,
    select_best,
    setting_columns,
    valid_trials,
)
from harness.errors import HarnessError

REPORT_FORMATS = ("markdown", "csv", "json")


def normalised_auc(lengths: list[float], scores: list[float]) -> float:
    """Area under the score-vs-length curve over log length, divided by the log-length span: an
    average score in which each factor of length weighs the same (1 for a model scoring 1
    everywhere; with one tested length, that length's score; NaN with none). Only comparable
    between models tested on the same lengths."""
    frame = pd.DataFrame({"length": list(lengths), "score": list(scores)})
    frame = frame[np.isfinite(frame["score"]) & (frame["length"] > 0)]
    frame = frame.groupby("length", as_index=False)["score"].mean().sort_values("length")
    if frame.empty:
        return float("nan")
    if len(frame) == 1:
        return float(frame["score"].iloc[0])
    x = np.log(frame["length"].to_numpy(dtype=float))
    y = frame["score"].to_numpy(dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0)) / float(x[-1] - x[0])


def prepare(run_dirs: list[Path], select: str = "all",
            threshold: float | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Load the folders, apply ``--select`` and ``--threshold``; return the rows and the axes."""
    _check_select(select)
    results = load_results(run_dirs)
    if threshold is not None:
        results = results.assign(threshold=threshold, solved=results["score"] >= threshold)
    names = axes(results)
    results = results.assign(setting=describe_settings(results, names))
    return (select_best(results) if select == "best" else results), names


def _check_select(select: str) -> None:
    if select not in ("all", "best"):
        raise HarnessError(f"--select '{select}': choose all or best")


def score_table(results: pd.DataFrame, names: list[str], criterion: str, select: str = "all") -> pd.DataFrame:
    """One row per (task, model, setting, T): test score and loss over seeds, with the horizon of
    that (task, model, setting) repeated on each of its rows (with ``select="best"``, the horizon
    of the settings chosen per T)."""
    pooled = select == "best"
    basis = results.assign(config_id="") if pooled else results
    summary = H.summarise(H.seed_horizons(basis, criterion)) if not results.empty else pd.DataFrame()
    horizons = {(r.model, r.task, r.config_id): r for r in summary.itertuples()} if not summary.empty else {}
    columns = setting_columns(results)
    rows = []
    for (task, model, config, length), trials in results.groupby(["task", "model", "config_id", "length"]):
        valid = valid_trials(trials)
        first = trials.iloc[0]
        horizon = horizons.get((model, task, "" if pooled else config))
        row = {"task": task, "model": model, "length": int(length), "setting": first["setting"],
               **{n: columns.loc[first.name, n] for n in names if n in columns},
               "config_id": config, "n_seeds": int(trials["seed"].nunique()),
               "n_errors": int((trials["status"] == "error").sum()),
               "n_diverged": int((trials["status"] == "diverged").sum()),
               "score_mean": valid["score"].mean(), "score_std": valid["score"].std(ddof=1),
               "loss_mean": valid["loss"].mean(), "val_score_mean": valid["val_score"].mean(),
               "chance_score": trials["chance_score"].median(), "memoryless_loss": trials["memoryless_loss"].median()}
        if horizon is not None:
            row.update(horizon=horizon.median, horizon_low=horizon.low, horizon_high=horizon.high,
                       horizon_bound=horizon.bound, criterion=horizon.criterion,
                       unbounded_by_construction=horizon.unbounded_by_construction)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {m: i for i, m in enumerate(model_order(table["model"]))}
    return table.sort_values(["task", "model", "setting", "length"],
                             key=lambda c: c.map(order) if c.name == "model" else c).reset_index(drop=True)


SIGNIFICANT_DIGITS = 6


def rounded(table: pd.DataFrame, digits: int = SIGNIFICANT_DIGITS) -> pd.DataFrame:
    """Float columns to ``digits`` significant digits, so that files show 8, not 7.999999999999998
    (a horizon interpolated in log T): far more digits than any of these numbers is measured to."""
    def round_value(value: float) -> float:
        return float(f"{value:.{digits}g}") if isinstance(value, float) and math.isfinite(value) else value

    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].map(round_value)
    return out


def _cell(mean: float, std: float, n: int) -> str:
    if not math.isfinite(mean):
        return "error"
    return f"{mean:.3f}" if n < 2 or not math.isfinite(std) else f"{mean:.3f} ± {std:.3f}"


def _markdown_table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)]
    return [line(header), "|" + "|".join(rule) + "|", *(line(r) for r in rows)]


def _task_block(task: str, rows: pd.DataFrame, select: str) -> list[str]:
    lengths = sorted(rows["length"].unique())
    heading = f"## {task}"
    if rows["chance_score"].notna().any():
        heading += f" (chance score {rows['chance_score'].dropna().iloc[0]:.3f})"
    header = ["model", *(f"T={n}" for n in lengths), "horizon", "AUC", "seeds", "errors"]
    body = []
    group_keys = ["model"] if select == "best" else ["model", "setting"]
    for keys, trials in rows.groupby(group_keys, sort=False):
        label = keys if isinstance(keys, str) else " ".join(k for k in keys if k)
        by_length = trials.set_index("length")
        cells = [_cell(by_length.loc[n, "score_mean"], by_length.loc[n, "score_std"], by_length.loc[n, "n_seeds"])
                 if n in by_length.index else "" for n in lengths]
        horizon = "–"
        if "horizon" in trials and trials["horizon"].notna().any():
            horizon = H.format_horizon({"median": trials["horizon"].iloc[0], "low": trials["horizon_low"].iloc[0],
                                        "high": trials["horizon_high"].iloc[0],
                                        "bound": trials["horizon_bound"].iloc[0],
                                        "unbounded_by_construction": bool(trials["unbounded_by_construction"].iloc[0])})
        auc = normalised_auc(list(trials["length"]), list(trials["score_mean"]))
        body.append([str(label), *cells, horizon, f"{auc:.3f}" if math.isfinite(auc) else "–",
                     str(int(trials["n_seeds"].max())), str(int(trials["n_errors"].sum()))])
    return [heading, "", *_markdown_table(header, body, set(range(1, len(header))))]


def _chosen_block(rows: pd.DataFrame) -> list[str]:
    """With --select best: the setting chosen (on validation) per model and T."""
    lengths = sorted(rows["length"].unique())
    body = []
    for model, trials in rows.groupby("model", sort=False):
        by_length = trials.set_index("length")["setting"]
        body.append([model, *(by_length.get(n, "") or "–" for n in lengths)])
    return ["", "chosen on validation:", "", *_markdown_table(["model", *(f"T={n}" for n in lengths)], body, set())]


def _horizon_ranking(results: pd.DataFrame, criterion: str, select: str, always: bool = False) -> list[str]:
    summary = H.summarise(H.seed_horizons(results.assign(config_id="") if select == "best" else results,
                                          criterion))
    if summary.empty or (not always and results.groupby(["model", "task"])["length"].nunique().max() < 2):
        return []
    lines = [f"## memory horizons ({describe(criterion, list(results['task_criterion']))})", ""]
    names = axes(results) if select != "best" else []
    settings = results.drop_duplicates("config_id").set_index("config_id")["setting"] if names else None
    for task, rows in summary.groupby("task", sort=True):
        ranked = rows[~rows["unbounded_by_construction"]]
        best, worst = zip(*possible_ranks(ranked)) if len(ranked) else ((), ())
        ranked = ranked.assign(best=best, worst=worst).sort_values(["best", "worst", "median"],
                                                                   ascending=[True, True, False])
        body = []
        for row in ranked.itertuples():
            label = row.model + (f" {settings[row.config_id]}" if settings is not None else "")
            rank = str(row.best) if row.best == row.worst else f"{row.best}–{row.worst}"
            body.append([rank, label, H.format_horizon(row._asdict()), str(row.n_seeds)])
        for row in rows[rows["unbounded_by_construction"]].itertuples():
            body.append(["–", row.model, "not ranked: unbounded by construction", str(row.n_seeds)])
        lines += [f"### {task}", "", *_markdown_table(["rank", "model", "median horizon [95% CI]", "seeds"],
                                                        body, {0, 3}), ""]
    return lines


def possible_ranks(summary: pd.DataFrame) -> list[tuple[int, int]]:
    """The best and worst rank each summary row can hold, given that a censored median is only a
    bound: "≥ 1000" may lie above "4543" or below it, so neither outranks the other; equal medians
    share a rank (competition ranking: 1, 1, 3)."""
    spans = [_median_span(row) for row in summary.to_dict("records")]
    ranks = []
    for i, (low, high) in enumerate(spans):
        others = [span for j, span in enumerate(spans) if j != i]
        surely_above = sum(other_low > high for other_low, _ in others)
        maybe_above = sum(other_high > low for _, other_high in others)
        ranks.append((1 + surely_above, 1 + maybe_above))
    return ranks


def _median_span(row: dict) -> tuple[float, float]:
    """Where a row's median horizon can lie, as displayed (rounded): ≥ m is [m, ∞), < m is below m."""
    if not math.isfinite(row["median"]):
        return -math.inf, -math.inf  # no estimate: ranked last
    median = float(round(row["median"]))
    if row["bound"] == "above":
        return median, math.inf
    if row["bound"] == "below":
        return -math.inf, median - 0.5
    return median, median


NOTES = ("score: test score at the end of training, mean ± std over seeds (error trials excluded); "
         "horizon: median over seeds of the largest T remembered (interpolated in log T between the last "
         "length passed and the first failed) [95% bootstrap interval over seeds; with few seeds it spans "
         "their range]; ≥: not reached by the longest length tried; AUC: area under score vs log T, "
         "normalised to [0, 1].")


def full_report(run_dirs: list[Path], fmt: str = "markdown", select: str = "all", criterion: str = "default",
                threshold: float | None = None) -> str:
    """The report of ``harness report`` in ``markdown``, ``csv`` (one row per model, task, setting and T)
    or ``json`` (the same rows)."""
    if fmt not in REPORT_FORMATS:
        raise HarnessError(f"unknown report format '{fmt}'; choose one of {', '.join(REPORT_FORMATS)}")
    gradient_text = ""
    if any((Path(d) / "gradients.csv").is_file() for d in run_dirs):
        from harness.analysis.gradient_report import format_gradient_summary, gradient_summary

        gradient_text = format_gradient_summary(gradient_summary(run_dirs), fmt)
        if not any((Path(d) / "results.csv").is_file() for d in run_dirs):
            return gradient_text
    _check_select(select)
    every, names = prepare(run_dirs, "all", threshold)  # loaded once: a search's ranking uses every row
    results = select_best(every) if select == "best" else every
    table = score_table(results, names, criterion, select)
    if fmt == "csv":
        return (rounded(table.drop(columns=["setting"])).to_csv(index=False)
                + (f"\n{gradient_text}" if gradient_text else ""))
    if fmt == "json":
        return json.dumps(json.loads(rounded(table.drop(columns=["setting"])).to_json(orient="records")), indent=2,
                          ensure_ascii=False) + "\n"
    horizon_run = any((Path(d) / "horizons.csv").is_file() for d in run_dirs)
    blocks = []
    for task, rows in ([] if horizon_run else table.groupby("task", sort=True)):
        block = _task_block(task, rows, select)
        if select == "best" and names:
            block += _chosen_block(rows)
        blocks.append("\n".join(block))
    if horizon_run:  # each setting was searched over lengths of its own: rank settings, never pick per T
        ranking = _horizon_ranking(every, criterion, "all", always=True)
    else:
        ranking = _horizon_ranking(results, criterion, select)
    text = "\n\n".join(blocks) + "\n\n" + "\n".join(ranking)
    if horizon_run:
        text += "(an adaptive length search: per-length scores with --format csv; horizons per setting)\n"
    if names:
        chosen = select == "best" and not horizon_run
        kept = [n for n in names if n.startswith("model:")
                and any(n[len("model:"):] in implementation_options(m) for m in every["model"].unique())]
        listed = ", ".join(f"{n} (an implementation: never chosen)" if n in kept else n for n in names)
        text += f"\naxes: {listed}; " + ("settings chosen per (model, task, T) on the validation set, "
                                         "scores from the test set.\n" if chosen else
                                         "every setting shown (--select best picks on validation).\n")
    return text + "\n" + NOTES + "\n" + (f"\n{gradient_text}" if gradient_text else "")
