"""Memory horizons from result rows: per seed, then the median over seeds with a bootstrap interval.

A seed's horizon is the largest tried length T whose trial passes the criterion with every shorter
tried length passing too; ``first_fail`` is the smallest failing length. The same definition
serves a fixed grid (``harness run``) and the adaptive search (``harness horizon``): both are
just the lengths a seed was tried at. Between the last pass and the first failure the horizon
is *estimated* by where the criterion's metric crosses its target, interpolated linearly in log T
(on a grid with a factor of 2 between lengths this is far better than reporting the last pass).
A seed that never fails is censored above (its horizon is at least the longest length tried);
one that fails at its shortest length is censored below.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.criteria import resolve

BOOTSTRAP_SAMPLES = 2000
SEED_COLUMNS = ("model", "task", "config_id", "seed", "criterion", "horizon", "first_fail", "estimate",
                "censored", "trials", "training_steps", "seconds", "unbounded_by_construction")


def _crossing(low: tuple[float, float], high: tuple[float, float], target: float) -> float:
    """Where the metric crosses ``target`` between (T, metric) points, linearly in log T."""
    (t1, m1), (t2, m2) = low, high
    if not (math.isfinite(m1) and math.isfinite(m2)) or m1 == m2:
        return math.sqrt(t1 * t2)
    fraction = min(1.0, max(0.0, (m1 - target) / (m1 - m2)))
    return math.exp(math.log(t1) + fraction * (math.log(t2) - math.log(t1)))


def one_seed(rows: pd.DataFrame, criterion: str) -> dict[str, Any]:
    """The horizon of one (model, task, setting, seed) from its non-error trials."""
    ordered = rows.sort_values("length")
    records = ordered.to_dict("records")
    checks = [resolve(criterion, r) for r in records]
    horizon, first_fail, last = 0, None, None
    estimate, censored = math.nan, ""
    for record, check in zip(records, checks):
        if check.passes(record):
            horizon, last = int(record["length"]), record
            continue
        first_fail = int(record["length"])
        if last is None:
            estimate, censored = float(first_fail), "below"
        else:
            estimate = _crossing((horizon, check.metric(last)), (first_fail, check.metric(record)),
                                 check.target(record))
        break
    if first_fail is None:
        estimate, censored = float(horizon), "above"
    steps = pd.to_numeric(ordered.get("steps"), errors="coerce") if "steps" in ordered else pd.Series(dtype=float)
    seconds = pd.to_numeric(ordered.get("trial_seconds"), errors="coerce") if "trial_seconds" in ordered else steps * 0
    flags = ordered.get("unbounded_by_construction", pd.Series(False, index=ordered.index))
    return {"criterion": str(checks[0]) if checks else "", "horizon": horizon, "first_fail": first_fail,
            "estimate": estimate, "censored": censored, "trials": len(records),
            "training_steps": int(np.nansum(steps)), "seconds": float(np.nansum(seconds)),
            "unbounded_by_construction": bool(_truthy(flags).any())}


def _truthy(values: pd.Series) -> pd.Series:
    if values.dtype == bool:
        return values
    return values.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def seed_horizons(results: pd.DataFrame, criterion: str = "default") -> pd.DataFrame:
    """One row per (model, task, config_id, seed): see :data:`SEED_COLUMNS`."""
    valid = results[results["status"] != "error"]
    if "config_id" not in valid:
        valid = valid.assign(config_id="")
    rows = []
    for (model, task, config, seed), group in valid.groupby(["model", "task", "config_id", "seed"], sort=True):
        rows.append({"model": model, "task": task, "config_id": config, "seed": int(seed),
                     **one_seed(group, criterion)})
    return pd.DataFrame(rows, columns=list(SEED_COLUMNS))


def median_horizon(estimates: list[float]) -> float:
    """Median in log T (the geometric mean of the middle two for an even count)."""
    values = [v for v in estimates if v > 0 and math.isfinite(v)]
    return float(math.exp(np.median(np.log(values)))) if values else math.nan


def bootstrap_interval(estimates: list[float], level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median over seeds (resampling seeds; fixed generator)."""
    values = np.log([v for v in estimates if v > 0 and math.isfinite(v)])
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) == 1:
        return float(math.exp(values[0])), float(math.exp(values[0]))
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(samples, len(values)), replace=True), axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(math.exp(low)), float(math.exp(high))


def median_bound(estimates: list[float], above: list[bool], below: list[bool], median: float) -> str:
    """``"above"`` when the median is only a lower bound, ``"below"`` when only an upper one, else ``""``.

    A censored seed's horizon is only known to lie beyond its estimate, so the median is exact only
    when moving every censored seed as far as it may go leaves it unchanged: (889, 662, 320+) has a
    median of at least 662, not 662, because the third seed may lie anywhere above 320.
    """
    def log_median(values: list[float]) -> float:  # as median_horizon, but keeping 0 and inf
        kept = np.array([v for v in values if not math.isnan(v)], dtype=float)
        with np.errstate(divide="ignore"):
            return float(np.median(np.log(kept))) if kept.size else math.nan

    centre = math.log(median)
    if log_median([math.inf if up else value for value, up in zip(estimates, above)]) > centre + 1e-9:
        return "above"
    if log_median([0.0 if down else value for value, down in zip(estimates, below)]) < centre - 1e-9:
        return "below"
    return ""


def summarise(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, config_id): median horizon over seeds, its interval, and how it is bounded."""
    rows = []
    for (model, task, config), group in seeds.groupby(["model", "task", "config_id"], sort=False):
        estimates = group["estimate"].astype(float).tolist()
        median = median_horizon(estimates)
        low, high = bootstrap_interval(estimates)
        above = group["censored"].eq("above")
        below = group["censored"].eq("below")
        bound = median_bound(estimates, above.tolist(), below.tolist(), median)
        rows.append({"model": model, "task": task, "config_id": config, "criterion": group["criterion"].iloc[0],
                     "median": median, "low": low, "high": high, "n_seeds": len(group), "bound": bound,
                     "seeds_censored_above": int(above.sum()), "seeds_censored_below": int(below.sum()),
                     "unbounded_by_construction": bool(group["unbounded_by_construction"].any())})
    return pd.DataFrame(rows)


def format_horizon(row: Any) -> str:
    """``42 [28–60]``, ``≥ 1000``, ``< 5``, or ``unbounded (by construction)``."""
    if row["unbounded_by_construction"]:
        return "unbounded (by construction)"
    median = row["median"]
    if not math.isfinite(median):
        return "–"
    if row["bound"] == "above":
        return f"≥ {median:.0f}"
    if row["bound"] == "below":
        return f"< {median:.0f}"
    low, high = row["low"], row["high"]
    if math.isfinite(low) and math.isfinite(high) and (round(low) != round(median) or round(high) != round(median)):
        return f"{median:.0f} [{low:.0f}–{high:.0f}]"
    return f"{median:.0f}"
