"""The horizons figure: for each task, every model's memory horizon, one marker per seed.

Each seed's horizon estimate (see :mod:`harness.analysis.horizons`) is a marker; a horizontal bar
marks the median over seeds and a vertical line its bootstrap interval. A seed that never failed
up to the longest length tried is an upward triangle (its horizon is at least that); one that
failed at the shortest length a downward triangle. A model whose horizon is unbounded by
construction on the task (a bidirectional model on long-gap recall) is not drawn as a number:
its column says so.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.analysis import horizons as H
from harness.analysis.criteria import describe
from harness.analysis.results import model_order
from harness.analysis.style import PANEL_HEIGHT, RC, model_style, tasks_in


def horizons_figure(results: pd.DataFrame, criterion: str = "default") -> Figure:
    """One panel per task: models along x, horizon (log T) up; seeds as markers, median and interval."""
    with matplotlib.rc_context(RC):
        seeds = H.seed_horizons(results.assign(config_id="") if "config_id" in results else results, criterion)
        summary = H.summarise(seeds)
        tasks = tasks_in(results)
        models = model_order(results["model"])
        width = max(4.0, 0.75 * len(models) + 1.5)
        if width * len(tasks) <= 12:  # side by side while that stays readable, else one task per row
            fig = Figure(figsize=(width * len(tasks), PANEL_HEIGHT + 0.6), layout="constrained")
            axes = fig.subplots(1, len(tasks), squeeze=False)[0]
        else:
            fig = Figure(figsize=(width, (PANEL_HEIGHT + 0.9) * len(tasks)), layout="constrained")
            axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
        for ax, task in zip(axes, tasks):
            _panel(ax, seeds[seeds["task"] == task], summary[summary["task"] == task], models,
                   results.loc[results["task"] == task, "length"])
        lines = ["Memory horizon per model (markers: seeds; bar: median [95% bootstrap interval])",
                 f"criterion: {describe(criterion, list(results.get('task_criterion', [])))}"]
        fig.suptitle(wrap_to_width(lines, fig.get_figwidth(), TITLE_SIZE), fontsize=TITLE_SIZE)
    return fig


TITLE_SIZE = 10


def wrap_to_width(lines: list[str], width_inches: float, fontsize: float) -> str:
    """The lines, broken at spaces so that each fits the figure's width: a figure for one task and
    two models is 4 inches wide, too narrow for the title on one line (it was clipped)."""
    average_char = 0.6 * fontsize / 72  # inches: a little wider than DejaVu Sans' average glyph
    per_line = max(20, int(0.95 * width_inches / average_char))
    return "\n".join(textwrap.fill(line, per_line) for line in lines)


def _panel(ax, seeds: pd.DataFrame, summary: pd.DataFrame, models: list[str], lengths: pd.Series) -> None:
    ax.set_title(f"task: {seeds['task'].iloc[0]}" if not seeds.empty else "")
    low, high = float(lengths.min()), float(lengths.max())
    ax.set_yscale("log")
    ax.set_ylim(low / 1.6, high * 1.8)
    present = [m for m in models if m in set(seeds["model"])]
    for x, model in enumerate(present):
        style = model_style(model)
        rows = seeds[seeds["model"] == model]
        row = summary[summary["model"] == model].iloc[0]
        if row["unbounded_by_construction"]:
            ax.text(x, math.sqrt(low * high), "unbounded\nby\nconstruction", ha="center", va="center",
                    fontsize=8, color="0.35", gid=f"unbounded:{model}")
            continue
        jitter = np.linspace(-0.12, 0.12, len(rows)) if len(rows) > 1 else np.zeros(1)
        for dx, seed in zip(jitter, rows.itertuples()):
            marker = {"above": "^", "below": "v"}.get(seed.censored, style["marker"])
            ax.plot(x + dx, seed.estimate, linestyle="none", marker=marker, color=style["color"], markersize=6,
                    alpha=0.8, markerfacecolor="none" if seed.censored else style["color"], gid=f"seed:{model}")
        if math.isfinite(row["median"]):
            ax.plot([x - 0.25, x + 0.25], [row["median"]] * 2, color=style["color"], linewidth=2.4,
                    gid=f"median:{model}")
            ax.plot([x, x], [row["low"], row["high"]], color=style["color"], linewidth=1.2, gid=f"interval:{model}")
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels(present, rotation=30 if len(present) > 5 else 0)
    ax.set_xlim(-0.6, len(present) - 0.4)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("horizon: dependency length T remembered")
    ax.axhline(high, color="0.6", linestyle=":", linewidth=1.0, gid="longest")
    ax.text(len(present) - 0.45, high * 1.08, f"longest T tried: {high:g}", ha="right", va="bottom",
            fontsize=8, color="0.4")
