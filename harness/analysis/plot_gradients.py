"""The gradient-flow figure: ‖∂L/∂x_t‖ relative to its value at the scored position, against the
distance d, on a log scale: a straight line falling with slope = the decay rate per step.

One panel per requested point (columns: at initialisation, after N steps, at the end of training)
and per (task, T) (rows); one line per model and setting (the geometric mean over seeds) with the
seeds' range as a band. A model's settings share its colour and differ by line style.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.analysis.gradient_report import load_gradients, point_title
from harness.analysis.results import model_order
from harness.analysis.style import (
    LEGEND_WIDTH,
    PANEL_HEIGHT,
    PANEL_WIDTH,
    RC,
    figure_legend,
    model_style,
    set_variants,
)
from harness.errors import HarnessError


def gradients_figure(run_dirs: list[Path]) -> Figure:
    frame = load_gradients(run_dirs)
    frame = frame[np.isfinite(frame["rel_norm"]) & (frame["rel_norm"] > 0)]
    if frame.empty:
        raise HarnessError("no gradient measurements to plot")
    labels = model_order(frame["label"])
    set_variants(labels)
    with matplotlib.rc_context(RC):
        cases = sorted({(t, int(n)) for t, n in zip(frame["task"], frame["length"])})
        points = sorted(frame["at"].unique(), key=lambda a: (0, int(a)) if a.isdigit() else (1, 0))
        fig = Figure(figsize=(PANEL_WIDTH * len(points) + LEGEND_WIDTH + 0.6, PANEL_HEIGHT * len(cases)),
                     layout="constrained")
        grid = fig.subplots(len(cases), len(points), squeeze=False, sharey=True)
        for r, (task, length) in enumerate(cases):
            for c, at in enumerate(points):
                ax = grid[r][c]
                rows = frame[(frame["task"] == task) & (frame["length"] == length) & (frame["at"] == at)]
                _panel(ax, rows, labels)
                steps = rows["step"].astype(int)
                title = point_title(at, int(steps.min()), int(steps.max())) if len(rows) else at
                ax.set_title(f"{task}, T={length}: {title}", fontsize=9)
                if r == len(cases) - 1:
                    ax.set_xlabel("distance d from the scored position")
                if c == 0:
                    ax.set_ylabel("gradient norm at distance d / at d = 0")
        handles: list[Any] = []
        for label in labels:
            style: Any = model_style(label)
            handles.append(Line2D([], [], color=style["color"], linestyle=style.get("linestyle", "-"), linewidth=1.8,
                                  label=label))
        handles.append(matplotlib.patches.Patch(color="0.5", alpha=0.3, label="range over seeds"))
        figure_legend(grid[0][-1], handles)
        fig.suptitle("Gradient flow: how much the loss at the scored step depends on inputs d steps earlier")
    return fig


def _panel(ax: Any, rows: Any, labels: list[str]) -> None:
    ax.set_yscale("log")
    for label in labels:
        mine = rows[rows["label"] == label]
        if mine.empty:
            continue
        logs = mine.assign(log=np.log(mine["rel_norm"])).groupby("distance")["log"]
        distance = logs.mean().index.to_numpy(dtype=float)
        style: Any = model_style(label)
        ax.plot(distance, np.exp(logs.mean().to_numpy()), color=style["color"], linestyle=style.get("linestyle", "-"),
                linewidth=1.8, gid=f"mean:{label}")
        if mine["seed"].nunique() > 1:
            ax.fill_between(distance, np.exp(logs.min().to_numpy()), np.exp(logs.max().to_numpy()),
                            color=style["color"], alpha=0.15, linewidth=0, gid=f"band:{label}")
    ax.set_xlim(left=0)
