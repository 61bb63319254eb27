"""Figures of one or more runs: score, loss, steps to solve and cost against dependency length, and
learning curves.

Each figure is built by a function returning a ``matplotlib.figure.Figure`` (so tests and notebooks
can inspect it) and written by :func:`plot_runs`. Figures are made with the object-oriented API on
bare ``Figure`` objects, never through ``pyplot``: no display is needed, no global backend is
switched and nothing is left open. This is the only module of the harness that imports matplotlib.

Every mean line carries ``gid="mean:<model>"`` (``"median:<model>"`` for steps to solve) and its
model name as label; reference lines have ``gid`` ``"chance"``, ``"memoryless"`` or ``"budget"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.analysis.results import axes as setting_axes
from harness.analysis.results import (
    describe_settings,
    load_curves,
    load_results,
    model_order,
    select_best,
    valid_trials,
)
from harness.analysis.style import (
    LEGEND_WIDTH,
    PANEL_HEIGHT,
    PANEL_WIDTH,
    RC,
    figure_legend,
    model_style,
    set_variants,
    tasks_in,
)
from harness.errors import HarnessError

__all__ = ["plot_runs", "model_style", "score_figure", "loss_figure", "steps_figure",
           "learning_curves_figure", "cost_figure", "confidence_halfwidth", "FIGURE_NAMES"]

#: Stem of each figure file, in the order :func:`plot_runs` writes them.
FIGURE_NAMES = ("score_vs_length", "loss_vs_length", "steps_to_solve", "learning_curves", "cost")

_REFERENCE_COLOUR = "0.3"

# Two-sided 95 % Student-t quantiles t_{0.975}(df) for df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)
#: Fewest seeds at a length for which a confidence band is drawn (fewer: the seeds themselves).
MIN_SEEDS_FOR_BAND = 3


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table to 30, then a
    Cornish-Fisher expansion accurate to 1e-4)."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def confidence_halfwidth(values: Iterable[float]) -> float:
    """Half-width of the 95 % t confidence interval of the mean: ``t_{0.975}(n-1) * s / sqrt(n)``
    (sample std ``s``); NaN for fewer than two values."""
    array = np.asarray(list(values), dtype=float)
    n = len(array)
    if n < 2:
        return float("nan")
    return t_quantile_975(n - 1) * float(np.std(array, ddof=1)) / math.sqrt(n)


# --------------------------------------------------------------------------------------------
# Shared pieces


def _summary(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per length: mean, count and 95 % CI half-width of ``column`` over finite values."""
    finite = frame[np.isfinite(frame[column])]
    grouped = finite.groupby("length")[column]
    stats = pd.DataFrame({"mean": grouped.mean(), "n": grouped.size(),
                          "half": grouped.agg(confidence_halfwidth)})
    return stats.sort_index()


def _task_panels(tasks: list[str], sharey: bool = True, legend: bool = True) -> tuple[Figure, list]:
    width = PANEL_WIDTH * len(tasks) + (LEGEND_WIDTH if legend else 0.4)
    fig = Figure(figsize=(width, PANEL_HEIGHT), layout="constrained")
    axes = fig.subplots(1, len(tasks), sharey=sharey, squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        ax.set_title(f"task: {task}")
    return fig, list(axes)


def _length_axis(ax, lengths: Iterable[int], label: bool = True) -> None:
    """Log-scaled dependency-length axis with plain-number ticks at the tested lengths."""
    lengths = sorted({int(x) for x in lengths})
    ax.set_xscale("log")
    if lengths:
        ax.set_xlim(lengths[0] / 1.3, lengths[-1] * 1.3)
        if len(lengths) <= 8:
            ax.set_xticks(lengths)
            ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if label:
        ax.set_xlabel("dependency length T")


def _plain_log_y(ax, below: float = 1.0) -> None:
    """Plain-number labels on a log y axis; 2 and 5 times a power of ten also labelled when the
    axis spans less than about 1.5 decades (else the minor ticks stay unlabelled). Ticks higher
    than the axes fraction ``below`` get no label."""

    def fraction(value: float) -> float:
        low, high = ax.get_ylim()
        return math.log(value / low) / math.log(high / low)

    def major(value: float, _pos: int) -> str:
        return f"{value:g}" if value > 0 and fraction(value) <= below else ""

    def minor(value: float, _pos: int) -> str:
        low, high = ax.get_ylim()
        if value <= 0 or low <= 0 or math.log10(high / low) > 1.5 or fraction(value) > below:
            return ""
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
        return f"{value:g}" if mantissa in (2.0, 5.0) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(major))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _reference(ax, frame: pd.DataFrame, column: str, label: str, gid: str) -> None:
    """Dashed reference line from a per-trial column: flat when it does not depend on length."""
    if column not in frame.columns:
        return
    values = frame.groupby("length")[column].median().dropna().sort_index()
    if values.empty:
        return
    style = dict(color=_REFERENCE_COLOUR, linestyle="--", linewidth=1.3, label=label, gid=gid,
                 zorder=1.5)
    if np.allclose(values.to_numpy(), values.iloc[0]):
        ax.axhline(float(values.iloc[0]), **style)
    else:
        ax.plot(values.index.to_numpy(dtype=float), values.to_numpy(), **style)


def _model_handles(models: list[str]) -> list[Any]:
    handles = []
    for m in models:
        style: Any = model_style(m)
        handles.append(Line2D([], [], linewidth=1.8, markersize=6, label=m, color=style["color"],
                              marker=style["marker"], linestyle=style.get("linestyle", "-")))
    return handles


def _mean_lines(ax, trials: pd.DataFrame, column: str, models: list[str],
                clip: tuple[float, float] | None = None) -> tuple[bool, bool]:
    """One mean line per model with a 95 % CI band where a length has >= 3 seeds, and the seeds
    themselves as faint hollow markers where it has fewer. Returns (any band, any seeds drawn)."""
    any_band = any_seeds = False
    for model in models:
        rows = trials[trials["model"] == model]
        stats = _summary(rows, column)
        if stats.empty:
            continue
        style = model_style(model)
        x = stats.index.to_numpy(dtype=float)
        mean = stats["mean"].to_numpy()
        ax.plot(x, mean, linewidth=1.8, markersize=5.5, label=model, gid=f"mean:{model}", zorder=3,
                **style)
        banded = (stats["n"] >= MIN_SEEDS_FOR_BAND).to_numpy()
        if banded.any():
            low = mean - stats["half"].to_numpy()
            high = mean + stats["half"].to_numpy()
            if clip is not None:
                low, high = np.clip(low, *clip), np.clip(high, *clip)
            low, high = np.where(banded, low, np.nan), np.where(banded, high, np.nan)
            ax.fill_between(x, low, high, color=style["color"], alpha=0.18, linewidth=0,
                            gid=f"band:{model}", zorder=2)
            any_band = True
        few = rows[rows["length"].isin(stats.index[~banded]) & np.isfinite(rows[column])]
        if not few.empty:
            ax.plot(few["length"].to_numpy(dtype=float), few[column].to_numpy(), linestyle="none",
                    marker=style["marker"], color=style["color"], markerfacecolor="none",
                    markersize=4.5, alpha=0.45, gid=f"seeds:{model}", zorder=2.5)
            any_seeds = True
    return any_band, any_seeds


def _statistic_handles(any_band: bool, any_seeds: bool) -> list[Any]:
    handles: list[Any] = []
    if any_band:
        handles.append(Patch(color="0.5", alpha=0.3, label="95% CI (t)"))
    if any_seeds:
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              color="0.4", alpha=0.6, label="single seeds\n(< 3 per point)"))
    return handles


# --------------------------------------------------------------------------------------------
# Figures


def score_figure(results: pd.DataFrame) -> Figure:
    """Final score against dependency length, one panel per task and one line per model.

    Lines are means over seeds (error trials excluded); a band shows the 95 % t confidence
    interval of the mean where a length has at least three seeds, otherwise the individual seeds
    are drawn as faint hollow markers. The task's chance score is a dashed line labelled 'chance'.
    """
    with matplotlib.rc_context(RC):
        tasks = tasks_in(results)
        fig, axes = _task_panels(tasks)
        any_band = any_seeds = False
        for ax, task in zip(axes, tasks):
            rows = results[results["task"] == task]
            trials = valid_trials(rows)
            band, seeds = _mean_lines(ax, trials, "score", model_order(trials["model"]), clip=(0, 1))
            any_band, any_seeds = any_band or band, any_seeds or seeds
            _reference(ax, rows, "chance_score", "chance", "chance")
            _length_axis(ax, rows["length"])
            ax.set_ylim(0, 1.02)
        axes[0].set_ylabel("score (accuracy)")
        handles = _model_handles(model_order(valid_trials(results)["model"]))
        handles.append(Line2D([], [], color=_REFERENCE_COLOUR, linestyle="--", label="chance"))
        figure_legend(axes[-1], handles + _statistic_handles(any_band, any_seeds))
        fig.suptitle("Final score vs dependency length (mean over seeds)")
    return fig


def loss_figure(results: pd.DataFrame) -> Figure:
    """Final test loss against dependency length with the memoryless loss as the floor.

    As :func:`score_figure` for lines and bands. The y axis is logarithmic when the positive
    values drawn span more than a factor of 30.
    """
    with matplotlib.rc_context(RC):
        tasks = tasks_in(results)
        fig, axes = _task_panels(tasks, sharey=False)
        any_band = any_seeds = False
        for ax, task in zip(axes, tasks):
            rows = results[results["task"] == task]
            trials = valid_trials(rows)
            trials = trials[np.isfinite(trials["loss"])] if "loss" in trials else trials.iloc[:0]
            values = np.concatenate([trials["loss"].to_numpy(dtype=float),
                                     rows.get("memoryless_loss", pd.Series(dtype=float))
                                     .dropna().to_numpy(dtype=float)])
            positive = values[values > 0]
            log_y = (len(positive) == len(values) and len(positive) > 0
                     and positive.max() / positive.min() > 30)
            clip = (positive.min() / 3, np.inf) if log_y else (0, np.inf)
            band, seeds = _mean_lines(ax, trials, "loss", model_order(trials["model"]), clip=clip)
            any_band, any_seeds = any_band or band, any_seeds or seeds
            _reference(ax, rows, "memoryless_loss", "memoryless", "memoryless")
            _length_axis(ax, rows["length"])
            if log_y:
                ax.set_yscale("log")
            elif len(values):
                ax.set_ylim(bottom=0)
        axes[0].set_ylabel("final test loss")
        handles = _model_handles(model_order(valid_trials(results)["model"]))
        handles.append(Line2D([], [], color=_REFERENCE_COLOUR, linestyle="--",
                              label="memoryless\n(floor to beat)"))
        figure_legend(axes[-1], handles + _statistic_handles(any_band, any_seeds))
        fig.suptitle("Final loss vs dependency length (mean over seeds)")
    return fig


_UNSOLVED_BASE, _UNSOLVED_STEP, _STRIP_BOTTOM = 0.905, 0.028, 0.86


def steps_figure(results: pd.DataFrame) -> Figure:
    """Steps to solve against dependency length, one panel per task.

    Each solved trial is a small marker and a line joins the per-length median over solved seeds.
    Unsolved (non-error) trials are not dropped: each is an 'x' in a shaded 'not solved' strip at
    the top of the panel (``gid="unsolved:<model>"``, stacked per seed, nudged sideways per
    model). A dotted line marks the step budget (``budget``; over T where it grows with T).
    """
    with matplotlib.rc_context(RC):
        tasks = tasks_in(results)
        fig, axes = _task_panels(tasks, sharey=False)
        any_unsolved = any_budget = False
        for ax, task in zip(axes, tasks):
            rows = results[results["task"] == task]
            trials = rows[rows["status"] != "error"]
            steps = (pd.to_numeric(trials["steps_to_solve"], errors="coerce")
                     if "steps_to_solve" in trials else pd.Series(np.nan, index=trials.index))
            solved_mask = trials["solved"].astype(bool) & np.isfinite(steps)
            solved = trials[solved_mask].assign(steps_to_solve=steps[solved_mask])
            unsolved = trials[~solved_mask]
            budget = np.nan
            for column in ("budget", "max_steps", "steps"):
                if column in rows and rows[column].notna().any():
                    budget = float(rows[column].max())
                    break
            ys = np.concatenate([solved["steps_to_solve"].to_numpy(dtype=float),
                                 [budget] if np.isfinite(budget) else []])
            ys = ys[ys > 0]
            low, high = (ys.min(), ys.max()) if len(ys) else (1.0, 10.0)
            log_y = high / low > 5
            # Keep the data below the strip: the top of the data at ~80 % of the axis height.
            if log_y:
                low = low / 1.5
                ax.set_yscale("log")
                ax.set_ylim(low, math.exp(math.log(low) + (math.log(high) - math.log(low)) / 0.8))
            else:
                ax.set_ylim(0, high / 0.8)
            per_length = (pd.to_numeric(rows["budget"], errors="coerce").groupby(rows["length"]).max().dropna()
                          if "budget" in rows else pd.Series(dtype=float))
            if per_length.nunique() > 1:  # a budget that grows with T (--steps-growth): a line over T
                ax.plot(per_length.index.to_numpy(dtype=float), per_length.to_numpy(), color=_REFERENCE_COLOUR,
                        linestyle=":", linewidth=1.3, drawstyle="steps-post", label="step budget", gid="budget")
                any_budget = True
            elif np.isfinite(budget):
                ax.axhline(budget, color=_REFERENCE_COLOUR, linestyle=":", linewidth=1.3,
                           label="step budget", gid="budget")
                any_budget = True
            models = model_order(trials["model"])
            for model in models:
                style = model_style(model)
                done = solved[solved["model"] == model]
                if not done.empty:
                    ax.plot(done["length"].to_numpy(dtype=float), done["steps_to_solve"].to_numpy(),
                            linestyle="none", marker=style["marker"], color=style["color"],
                            markersize=4, alpha=0.45, gid=f"solved:{model}", zorder=2.5)
                    median = done.groupby("length")["steps_to_solve"].median().sort_index()
                    ax.plot(median.index.to_numpy(dtype=float), median.to_numpy(), linewidth=1.8,
                            markersize=5.5, label=model, gid=f"median:{model}", zorder=3, **style)
            ax.add_patch(Rectangle((0, _STRIP_BOTTOM), 1, 1 - _STRIP_BOTTOM, transform=ax.transAxes,
                                   facecolor="0.93", edgecolor="none", zorder=0.5))
            ax.text(-0.025, (_STRIP_BOTTOM + 1) / 2, "not\nsolved", transform=ax.transAxes,
                    ha="right", va="center", color="0.3", linespacing=1.0, gid="not-solved-label")
            transform = ax.get_xaxis_transform()  # x in data, y in axes fraction
            lengths = np.log(sorted(rows["length"].unique()))
            gap = float(np.min(np.diff(lengths))) if len(lengths) > 1 else 1.0
            spacing = min(0.06, 0.5 * gap / max(len(models) - 1, 1))
            for index, model in enumerate(models):
                if model not in set(unsolved["model"]):
                    continue
                style = model_style(model)
                nudge = math.exp(spacing * (index - (len(models) - 1) / 2))
                xs, ys_ = [], []
                for length, group in unsolved[unsolved["model"] == model].groupby("length"):
                    step = min(_UNSOLVED_STEP, (0.99 - _UNSOLVED_BASE) / max(len(group) - 1, 1))
                    for k in range(len(group)):
                        xs.append(length * nudge)
                        ys_.append(_UNSOLVED_BASE + k * step)
                ax.plot(xs, ys_, linestyle="none", marker="x", color=style["color"], markersize=5,
                        markeredgewidth=1.3, transform=transform, clip_on=False,
                        gid=f"unsolved:{model}", zorder=3)
                any_unsolved = True
            _length_axis(ax, rows["length"])
            pad = 1.3 * math.exp(spacing * (len(models) - 1) / 2)
            ax.set_xlim(math.exp(lengths[0]) / pad, math.exp(lengths[-1]) * pad)
            if log_y:
                _plain_log_y(ax, below=_STRIP_BOTTOM - 0.06)
            else:
                ax.yaxis.set_major_formatter(FuncFormatter(
                    lambda v, _, ax=ax: f"{v:g}" if v <= ax.get_ylim()[1] * (_STRIP_BOTTOM - 0.06)
                    else ""))
        axes[0].set_ylabel("steps to solve")
        handles = _model_handles(model_order(results.loc[results["status"] != "error", "model"]))
        if any_unsolved:
            handles.append(Line2D([], [], linestyle="none", marker="x", color="0.3",
                                  markeredgewidth=1.4, label="not solved\n(top strip, one × per seed)"))
        if any_budget:
            handles.append(Line2D([], [], color=_REFERENCE_COLOUR, linestyle=":", label="step budget"))
        figure_legend(axes[-1], handles)
        fig.suptitle("Steps to solve (solved seeds; line: median)")
    return fig


def _mean_curve(rows: pd.DataFrame) -> pd.Series:
    """Mean validation score per step over seeds; a trial that stopped early (solved, or diverged) holds
    its last evaluated score until the last step of the longest trial."""
    table = rows.pivot_table(index="step", columns="seed", values="val_score", aggfunc="last")
    return table.sort_index().ffill().mean(axis=1, skipna=True)


def _length_colours(lengths: list[int]):
    """A sequential colormap (viridis without its palest end) over log length, and its norm."""
    cmap = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.88, 256)))
    low, high = min(lengths), max(lengths)
    norm = LogNorm(vmin=low, vmax=high if high > low else low * 10)
    return cmap, norm


def learning_curves_figure(curves: pd.DataFrame, pairs: list[tuple[str, str]] | None = None,
                           chance: dict[str, float] | None = None, metric: str = "score",
                           memoryless: dict[tuple[str, int], float] | None = None) -> Figure:
    """Evaluation score (or loss) against training step: one panel per (model, task) pair (rows:
    models, columns: tasks), one line per dependency length.

    Lines are coloured by length on a sequential log-scaled colormap shared by all panels, with a
    colour bar. ``metric="score"``: the mean validation score over seeds (see :func:`_mean_curve`),
    with dashed chance lines from ``chance`` (task → chance score). ``metric="loss"``: the
    validation loss of every seed on a log axis (a mean would hide a seed that never left the
    baseline), with the memoryless loss of each (task, length) in ``memoryless`` dashed: the level
    a model that remembers nothing reaches. ``pairs=None`` draws every pair present in ``curves``.
    """
    with matplotlib.rc_context(RC):
        present = set(zip(curves["model"], curves["task"]))
        if pairs is None:
            pairs = sorted(present, key=lambda p: (model_order(curves["model"]).index(p[0]), p[1]))
        missing = [p for p in pairs if p not in present]
        if missing or not pairs:
            available = ", ".join(f"{m}/{t}" for m, t in sorted(present)) or "none"
            wanted = ", ".join(f"{m}/{t}" for m, t in missing) or "any"
            raise HarnessError(f"no learning curves for {wanted}; available: {available}")
        models = [m for m in model_order(p[0] for p in pairs)]
        tasks = sorted({p[1] for p in pairs})
        fig = Figure(figsize=(PANEL_WIDTH * len(tasks) + 1.3, 0.3 + 3.0 * len(models)),
                     layout="constrained")
        grid = fig.subplots(len(models), len(tasks), squeeze=False, sharex="col", sharey=True)
        selected = curves[pd.MultiIndex.from_frame(curves[["model", "task"]]).isin(pairs)]
        cmap, norm = _length_colours(sorted(selected["length"].unique()))
        for r, model in enumerate(models):
            for c, task in enumerate(tasks):
                ax = grid[r][c]
                if (model, task) not in pairs:
                    ax.set_visible(False)
                    continue
                rows = selected[(selected["model"] == model) & (selected["task"] == task)]
                one_length = selected["length"].nunique() == 1
                for length, group in rows.groupby("length"):
                    if metric == "loss":
                        _seed_losses(ax, group, None if one_length else cmap(norm(length)), length)
                        level = (memoryless or {}).get((task, int(length)), math.nan)
                        if np.isfinite(level):
                            ax.axhline(level, color=_REFERENCE_COLOUR if one_length else cmap(norm(length)),
                                       linestyle="--", linewidth=1.2, label=f"memoryless, T={length}",
                                       gid=f"memoryless:{length}")
                        continue
                    mean = _mean_curve(group)
                    ax.plot(mean.index.to_numpy(dtype=float), mean.to_numpy(), linewidth=1.6,
                            color=cmap(norm(length)), label=f"T={length}", gid=f"curve:{length}")
                if metric == "loss":
                    ax.set_yscale("log")
                else:
                    if chance and task in chance and np.isfinite(chance[task]):
                        ax.axhline(chance[task], color=_REFERENCE_COLOUR, linestyle="--",
                                   linewidth=1.2, label="chance", gid="chance")
                    ax.set_ylim(0, 1.02)
                ax.set_xlim(left=0)
                ax.set_title(f"{model} on task: {task}")
                # Shared axes: labels on the outer panels and beside hidden ones only.
                outer_x = r == len(models) - 1 or (models[r + 1], task) not in pairs
                outer_y = c == 0 or (model, tasks[c - 1]) not in pairs
                ax.tick_params(labelbottom=outer_x, labelleft=outer_y)
                if outer_x:
                    ax.set_xlabel("training step")
                if outer_y:
                    ax.set_ylabel(f"validation {metric}")
        lengths = sorted(selected["length"].unique())
        if len(lengths) == 1:  # a colour bar for one value says little: name it in a legend
            next(ax for row in grid for ax in row if ax.get_visible()).legend(
                loc="upper right" if metric == "loss" else "lower right", frameon=False)
        else:
            bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=grid,
                               label="dependency length T", shrink=min(1.0, 1.6 / len(models)),
                               anchor=(0.0, 1.0), aspect=20)
            if len(lengths) <= 10:
                bar.set_ticks(lengths)
                bar.ax.yaxis.set_minor_formatter(NullFormatter())
            bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        if metric == "loss":
            fig.suptitle("Learning curves: every seed\n(dashed: the memoryless loss)")
        else:
            fig.suptitle("Learning curves (mean over seeds" + ("; dashed: chance)" if chance else ")"))
    return fig


def _seed_losses(ax, rows: pd.DataFrame, colour: Any, length: int) -> None:
    """One validation-loss line per seed. With one length in the figure (``colour`` None) each seed
    has its own colour; otherwise every line has its length's colour and the seed is its line style
    (never dashed: dashes mark the memoryless loss)."""
    styles = ("-", (0, (1, 1.5)), (0, (6, 1.5, 1, 1.5)), (0, (1, 3)))
    palette = [matplotlib.colormaps["tab10"](i) for i in range(10)]
    for index, (seed, one) in enumerate(rows.sort_values("step").groupby("seed")):
        ax.plot(one["step"].to_numpy(dtype=float), one["val_loss"].to_numpy(dtype=float), linewidth=1.4,
                color=palette[index % len(palette)] if colour is None else colour,
                linestyle="-" if colour is None else styles[index % len(styles)],
                label=f"T={length}, seed {seed}", gid=f"curve:{length}:seed{seed}")


def cost_figure(results: pd.DataFrame) -> Figure:
    """Training seconds per step against dependency length (log-log), one panel per task, one
    line per model (mean over non-error seeds, with the seeds themselves when fewer than three)."""
    with matplotlib.rc_context(RC):
        frame = results.copy()
        if "seconds_per_step" not in frame or frame["seconds_per_step"].isna().all():
            frame["seconds_per_step"] = (frame["train_seconds"] / frame["steps"]
                                         if {"train_seconds", "steps"} <= set(frame) else np.nan)
        tasks = tasks_in(frame)
        fig, axes = _task_panels(tasks, sharey=True)
        any_band = any_seeds = False
        for ax, task in zip(axes, tasks):
            rows = frame[frame["task"] == task]
            trials = rows[(rows["status"] != "error") & (rows["seconds_per_step"] > 0)]
            band, seeds = _mean_lines(ax, trials, "seconds_per_step", model_order(trials["model"]),
                                      clip=(1e-9, np.inf))
            any_band, any_seeds = any_band or band, any_seeds or seeds
            _length_axis(ax, rows["length"])
            ax.set_yscale("log")
            _plain_log_y(ax)
        axes[0].set_ylabel("seconds per training step")
        handles = _model_handles(model_order(frame.loc[frame["status"] != "error", "model"]))
        figure_legend(axes[-1], handles + _statistic_handles(any_band, any_seeds))
        title = "Training cost vs dependency length"
        if "device" in frame and frame["device"].notna().any():
            title += f" (device: {', '.join(sorted(frame['device'].dropna().astype(str).unique()))})"
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Writing


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "x"


def _save(fig: Figure, out_dir: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}
    with matplotlib.rc_context(RC):
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            fig.savefig(path, format=fmt, metadata=metadata.get(fmt))
            paths.append(path)
            # Positions are in inches, so one layout serves every format: freeze it after the first.
            fig.set_layout_engine("none")
    return paths


def plot_runs(run_dirs: list[Path], out_dir: Path | None = None, formats: tuple[str, ...] = ("png",),
              curves_for: tuple[str, str] | None = None, select: str | None = None, facet: str | None = None,
              criterion: str = "default", metric: str = "score") -> list[Path]:
    """Draw every figure of the given run folders and return the files written.

    Results of all folders are concatenated; a trial present twice keeps the later folder's row.
    When the results have axes (several settings per model), ``select="best"`` (the default then)
    draws each model at the setting chosen per length on validation, ``select="all"`` one line per
    (model, setting), and ``facet="lr"`` one set of score and loss figures per value of that setting.
    Writes into ``out_dir`` (default: the first run folder), for each format: ``score_vs_length``,
    ``loss_vs_length``, ``steps_to_solve``, ``learning_curves`` (``learning_curves_<model>_<task>``
    for ``curves_for``; ``_loss`` appended with ``metric="loss"``; skipped without ``curves.csv``),
    ``cost``, ``horizons`` (when a model was
    tried at several lengths, and always for a folder of ``harness horizon``) and ``gradients`` (when a
    folder has ``gradients.csv``).
    """
    run_dirs = [Path(d) for d in run_dirs]
    formats = _check_formats(formats)
    for run_dir in run_dirs:
        if not any((run_dir / name).is_file() for name in ("results.csv", "gradients.csv")):
            raise HarnessError(f"{run_dir}: no results.csv (expected a run folder)")
    out = Path(out_dir) if out_dir is not None else run_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if any((d / "gradients.csv").is_file() for d in run_dirs):
        from harness.analysis.plot_gradients import gradients_figure

        written += _save(gradients_figure(run_dirs), out, "gradients", formats)
    if not any((d / "results.csv").is_file() for d in run_dirs):
        return written
    results = load_results(run_dirs)
    names = setting_axes(results)
    if facet is not None:
        return written + _facets(results, names, facet, out, formats)
    chosen = select or ("best" if names else "all")
    # a horizon belongs to one setting tried at every length, so that figure never selects per length
    labels = (results["model"] + " " + describe_settings(results, names)).str.strip()  # strip: no setting, no space
    every = results.assign(model=labels) if names else results
    set_variants(every["model"])
    results = select_best(results) if chosen == "best" else every
    if chosen == "best":
        set_variants(results["model"])  # implementations kept apart are labelled "model mode=scan"
    written += _save(score_figure(results), out, "score_vs_length", formats)
    written += _save(loss_figure(results), out, "loss_vs_length", formats)
    written += _save(steps_figure(results), out, "steps_to_solve", formats)
    split = bool(results["model"].str.contains(" ").any())  # implementations kept apart by select_best
    written += _curves(run_dirs, results, curves_for, out, formats,
                       relabel=(chosen == "all" and bool(names)) or split, metric=metric)
    written += _save(cost_figure(results), out, "cost", formats)
    horizon_run = any((d / "horizons.csv").is_file() for d in run_dirs)  # the figure always comes with it
    if horizon_run or every.groupby(["model", "task"])["length"].nunique().max() > 1:
        from harness.analysis.plot_horizons import horizons_figure

        written += _save(horizons_figure(every, criterion), out, "horizons", formats)
    return written


def _check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    formats = tuple(f.lower().lstrip(".") for f in formats)
    supported = Figure().canvas.get_supported_filetypes()
    unknown = [f for f in formats if f not in supported]
    if unknown or not formats:
        raise HarnessError(f"unknown figure format(s) {', '.join(unknown) or '(none)'}; "
                           f"choose from {', '.join(sorted(supported))}")
    return formats


def _curves(run_dirs: list[Path], results: pd.DataFrame, curves_for: tuple[str, str] | None, out: Path,
            formats: tuple[str, ...], relabel: bool, metric: str = "score") -> list[Path]:
    """Learning curves of the trials in ``results`` (the selected ones, when selecting); with
    ``curves_for`` = (model, task), one panel for each setting of that model drawn."""
    if metric not in ("score", "loss"):
        raise HarnessError(f"unknown learning-curve metric '{metric}'; choose score or loss")
    curves = load_curves(run_dirs, results)
    if curves.empty:
        if curves_for is not None:
            raise HarnessError("no learning curves (no curves.csv)")
        return []
    keep = results[["task", "length", "seed", "config_id", "model"]].rename(columns={"model": "_label"})
    curves = curves.merge(keep, on=["task", "length", "seed", "config_id"], how="inner")
    curves = curves[curves["_label"].str.split(" ").str[0] == curves["model"]]
    if relabel:
        curves["model"] = curves["_label"]
    chance = results.groupby("task")["chance_score"].median().to_dict() if "chance_score" in results else None
    memoryless = (results.groupby(["task", "length"])["memoryless_loss"].median().to_dict()
                  if "memoryless_loss" in results else None)
    suffix = "_loss" if metric == "loss" else ""
    if curves_for is not None:
        model, task = curves_for
        labels = sorted({m for m, t in zip(curves["model"], curves["task"])
                         if t == task and (m == model or m.split(" ")[0] == model)})
        fig = learning_curves_figure(curves, [(label, task) for label in labels] or [(model, task)], chance,
                                     metric, memoryless)
        return _save(fig, out, f"learning_curves_{_safe(model)}_{_safe(task)}{suffix}", formats)
    if curves.empty:
        return []
    return _save(learning_curves_figure(curves, None, chance, metric, memoryless), out,
                 f"learning_curves{suffix}", formats)


def _facets(results: pd.DataFrame, names: list[str], facet: str, out: Path, formats: tuple[str, ...]) -> list[Path]:
    """Score and loss figures for each value of the setting ``facet`` (the other axes selected)."""
    from harness.analysis.results import setting_columns

    table = setting_columns(results)
    if facet not in table:
        raise HarnessError(f"--facet {facet}: not a setting of these results; settings that vary: "
                           f"{', '.join(names) or 'none'}")
    written = []
    for value in sorted(table[facet].astype(str).unique()):
        part = results[table[facet].astype(str) == value]
        others = [n for n in names if n != facet]
        if others:
            part = select_best(part)
        stem = _safe(f"{facet}={value}")
        written += _save(score_figure(part), out, f"score_vs_length_{stem}", formats)
        written += _save(loss_figure(part), out, f"loss_vs_length_{stem}", formats)
    return written
