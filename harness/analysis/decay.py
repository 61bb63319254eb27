"""The decay rate of a gradient with distance: the one number ``harness gradients`` gives per
model, shared by the measurement (``--grad-stats``) and the reports (plain Python: no torch)."""

from __future__ import annotations

import math

NOISE_FLOOR = 1e-200  # relative norms below this are not fitted (float64 underflows at 1e-308)


def decay_rate(distances: list[float], rel_norms: list[float]) -> float:
    """Least-squares slope of log(relative norm) against distance, over d ≥ 1 above the noise floor."""
    points = [(d, math.log(r)) for d, r in zip(distances, rel_norms)
              if d >= 1 and math.isfinite(r) and r > NOISE_FLOOR]
    if len(points) < 2:
        return math.nan
    n = len(points)
    mean_d = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    spread = sum((p[0] - mean_d) ** 2 for p in points)
    return sum((p[0] - mean_d) * (p[1] - mean_y) for p in points) / spread if spread else math.nan
