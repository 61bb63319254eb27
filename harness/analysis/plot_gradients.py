"""The gradient-flow figure: ‖∂L/∂x_t‖ relative to its value at the scored position, against the
distance d, on a log scale: a straight line falling with slope = the decay rate per step.

One panel per training step measured (columns) and per (task, T) (rows); one line per model (the
geometric mean over seeds) with the seeds' range as a band.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.analysis.gradient_report import load_gradients
from harness.analysis.plotting import _LEGEND_WIDTH, _PANEL_HEIGHT, _PANEL_WIDTH, _RC, _legend, model_style
from harness.analysis.results import model_order
from harness.errors import HarnessError


def gradients_figure(run_dirs: list[Path]) -> Figure:
    frame = load_gradients(run_dirs)
    frame = frame[np.isfinite(frame["rel_norm"]) & (frame["rel_norm"] > 0)]
    if frame.empty:
        raise HarnessError("no gradient measurements to plot")
    with matplotlib.rc_context(_RC):
        cases = sorted({(t, int(n)) for t, n in zip(frame["task"], frame["length"])})
        steps = sorted(frame["step"].astype(int).unique())
        fig = Figure(figsize=(_PANEL_WIDTH * len(steps) + _LEGEND_WIDTH, _PANEL_HEIGHT * len(cases)),
                     layout="constrained")
        grid = fig.subplots(len(cases), len(steps), squeeze=False, sharey=True)
        models = model_order(frame["model"])
        for r, (task, length) in enumerate(cases):
            for c, step in enumerate(steps):
                ax = grid[r][c]
                rows = frame[(frame["task"] == task) & (frame["length"] == length) & (frame["step"] == step)]
                _panel(ax, rows, models)
                ax.set_title(f"{task}, T={length}: " + ("at initialisation" if step == 0 else f"step {step}"))
                if r == len(cases) - 1:
                    ax.set_xlabel("distance d from the scored position")
                if c == 0:
                    ax.set_ylabel("‖∂L/∂x_{τ−d}‖ / ‖∂L/∂x_τ‖")
        handles: list[Any] = [Line2D([], [], color=model_style(m)["color"], linewidth=1.8, label=m) for m in models]
        handles.append(matplotlib.patches.Patch(color="0.5", alpha=0.3, label="range over seeds"))
        _legend(grid[0][-1], handles)
        fig.suptitle("Gradient flow: how much the loss at the scored step depends on inputs d steps earlier")
    return fig


def _panel(ax, rows, models: list[str]) -> None:
    ax.set_yscale("log")
    for model in models:
        mine = rows[rows["model"] == model]
        if mine.empty:
            continue
        logs = mine.assign(log=np.log(mine["rel_norm"])).groupby("distance")["log"]
        distance = logs.mean().index.to_numpy(dtype=float)
        colour = model_style(model)["color"]
        ax.plot(distance, np.exp(logs.mean().to_numpy()), color=colour, linewidth=1.8, gid=f"mean:{model}")
        if mine["seed"].nunique() > 1:
            ax.fill_between(distance, np.exp(logs.min().to_numpy()), np.exp(logs.max().to_numpy()), color=colour,
                            alpha=0.18, linewidth=0, gid=f"band:{model}")
    ax.set_xlim(left=0)
