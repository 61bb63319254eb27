"""A number per model from ``gradients.csv``: how fast the gradient decays with distance.

* ``decay_rate``: the least-squares slope of ln ‖∂L/∂x_{τ−d}‖ against d (per step), fitted over
  d ≥ 1 where the norm is above float noise. −0.69 means the gradient halves with every step back;
  −0.01 that it takes about 70 steps to halve.
* ``distance_1e6``: the distance at which the norm has fallen to 10⁻⁶ of its value at d = 0:
  read off the curve when it gets there within the sequence, else extrapolated from the decay
  rate (``extrapolated``), and infinite when the norm does not decay.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis.decay import decay_rate
from harness.analysis.results import _concat, axes, describe_settings, load_results, model_order

FALL = 1e-6
NUMERIC = ("step", "distance", "grad_norm", "rel_norm", "state_grad_norm")


def load_gradients(run_dirs: list[Path]) -> pd.DataFrame:
    """gradients.csv of several folders, with ``at`` (the requested point) and ``label``: the model,
    and its setting when the folders' results have axes (``mycell init=chrono``)."""
    keys = ["model", "task", "length", "seed", "config_id"]
    frame = _concat([Path(d) for d in run_dirs], "gradients.csv", ("model", "task", "length", "seed", "step",
                                                                     "distance", "grad_norm"))
    if frame is None:
        return pd.DataFrame(columns=[*keys, "at", "label", *NUMERIC])
    for column in NUMERIC:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["at"] = frame["at"].astype(str) if "at" in frame else frame["step"].astype(int).astype(str)
    latest = frame.groupby(keys)["_run"].transform("max")
    frame = frame[frame["_run"] == latest].drop_duplicates([*keys, "at", "distance"], keep="last")
    return frame.assign(label=_labels(run_dirs, frame))


def _labels(run_dirs: list[Path], frame: pd.DataFrame) -> pd.Series:
    """The model name, followed by its setting where the results of these folders have axes."""
    folders = [d for d in run_dirs if (Path(d) / "results.csv").is_file()]
    if not folders:
        return frame["model"]
    results = load_results(folders)
    names = axes(results)
    if not names:
        return frame["model"]
    settings = dict(zip(results["config_id"], describe_settings(results, names)))
    return frame["model"] + frame["config_id"].map(lambda c: f" {settings[c]}" if settings.get(c) else "")


def fall_distance(distances: np.ndarray, rel: np.ndarray, slope: float) -> tuple[float, bool]:
    """Where the relative norm first reaches ``FALL`` (interpolated in log), else extrapolated."""
    order = np.argsort(distances)
    d, r = distances[order], rel[order]
    below = np.nonzero((r <= FALL) & (r > 0))[0]
    if len(below) and below[0] > 0:
        i = below[0]
        y0, y1 = math.log(r[i - 1]), math.log(r[i])
        return float(d[i - 1] + (math.log(FALL) - y0) / (y1 - y0) * (d[i] - d[i - 1])), False
    if len(below):
        return float(d[below[0]]), False
    if math.isfinite(slope) and slope < 0:
        return math.log(FALL) / slope, True
    return math.inf, True


def gradient_summary(run_dirs: list[Path]) -> pd.DataFrame:
    """Per (task, length, requested point, model and setting): the decay rate and the 10⁶-fall distance,
    mean and spread over seeds, and the training steps the measurements were taken at."""
    frame = load_gradients(run_dirs)
    rows = []
    for (label, task, length, seed, at), g in frame.groupby(["label", "task", "length", "seed", "at"]):
        distances, rel = g["distance"].to_numpy(float), g["rel_norm"].to_numpy(float)
        slope = decay_rate(list(distances), list(rel))
        fall, extrapolated = fall_distance(distances, rel, slope)
        rows.append({"model": label, "task": task, "length": int(length), "seed": int(seed), "at": at,
                     "step": int(g["step"].iloc[0]), "decay_rate": slope, "distance_1e6": fall,
                     "extrapolated": extrapolated})
    per_seed = pd.DataFrame(rows)
    if per_seed.empty:
        return per_seed
    summary = per_seed.groupby(["task", "length", "at", "model"], sort=False).agg(
        decay_rate=("decay_rate", "mean"), decay_rate_std=("decay_rate", "std"),
        distance_1e6=("distance_1e6", lambda v: float(np.exp(np.mean(np.log(v)))) if np.all(v > 0) else math.nan),
        extrapolated=("extrapolated", "any"), seeds=("seed", "nunique"),
        step_min=("step", "min"), step_max=("step", "max")).reset_index()
    order = {m: i for i, m in enumerate(model_order(summary["model"]))}
    points = {a: (0, int(a)) if a.isdigit() else (1, 0) for a in summary["at"]}
    return summary.sort_values(["task", "length", "at", "model"],
                               key=lambda c: c.map(order) if c.name == "model" else
                               c.map(points) if c.name == "at" else c).reset_index(drop=True)


def point_title(at: str, step_min: int, step_max: int) -> str:
    """``at initialisation``, ``after 200 steps`` or ``at the end of training (steps 650–1500)``."""
    if at == "0":
        return "at initialisation"
    if at == "end":
        steps = f"step {step_min}" if step_min == step_max else f"steps {step_min}–{step_max}"
        return f"at the end of training ({steps})"
    return f"after {at} steps" + (f" (or the last step, {step_min})" if step_min != int(at) else "")


def _distance_text(value: float, extrapolated: bool) -> str:
    if not math.isfinite(value):
        return "never (no decay)"
    return f"{value:.0f}" + (" (extrapolated)" if extrapolated else "")


def format_gradient_summary(summary: pd.DataFrame, fmt: str = "markdown") -> str:
    if fmt == "csv":
        return summary.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(summary.to_json(orient="records")), indent=2) + "\n"
    if summary.empty:
        return "(no gradient measurements)\n"
    lines = ["## gradient flow: ‖∂L/∂x_t‖ against distance d from the scored position", ""]
    for (task, length, at), rows in summary.groupby(["task", "length", "at"], sort=False):
        title = point_title(at, int(rows["step_min"].min()), int(rows["step_max"].max()))
        lines += [f"### {task}, T = {length}, {title}", "",
                  "| model | decay rate per step (ln) | distance where the norm fell 10⁶× | seeds |",
                  "|---|--:|--:|--:|"]
        for row in rows.itertuples():
            spread = f" ± {row.decay_rate_std:.4f}" if row.seeds > 1 and math.isfinite(row.decay_rate_std) else ""
            lines.append(f"| {row.model} | {row.decay_rate:.4f}{spread} | "
                         f"{_distance_text(row.distance_1e6, row.extrapolated)} | {row.seeds} |")
        lines.append("")
    lines.append("decay rate: slope of ln ‖∂L/∂x‖ against d (−0.69: halves every step); fitted over d ≥ 1 where "
                 "the norm is above float noise. A bidirectional model's curve includes its backward direction, "
                 "which reads early inputs at distance 0 (docs/gradients.md).")
    return "\n".join(lines) + "\n"
