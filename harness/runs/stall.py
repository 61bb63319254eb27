"""When a running trial counts as hung: no progress for far longer than any progress took so far.

A trial's worker reports progress (a heartbeat) as training steps and evaluations complete. A
trial is hung when it has been silent for longer than ``max(floor, factor × slowest)``, where
``slowest`` is the longest gap between two reports (or between a trial's start and its first
report) seen in the sweep so far. A slow trial that keeps progressing is never cut however long it
runs, since only silence counts; a trial slower per step than any before it raises ``slowest`` as
soon as it reports, and until its first report the floor alone applies (600 s by default:
``--hang-after``). The bound only grows, so one slow trial protects the slower ones after it.
"""

from __future__ import annotations

import os

#: Default floor in seconds (``--hang-after``) and factor over the slowest progress interval seen.
FLOOR_S = 600.0
FACTOR = 10.0


def factor() -> float:
    """``HARNESS_HANG_FACTOR`` if set (a positive number), else :data:`FACTOR`."""
    try:
        value = float(os.environ.get("HARNESS_HANG_FACTOR", FACTOR))
    except ValueError:
        return FACTOR
    return value if value > 0 else FACTOR


class StallWatch:
    """Tracks the last report of each running trial and the slowest interval of the sweep."""

    def __init__(self, floor: float | None = FLOOR_S, scale: float | None = None) -> None:
        self.floor = floor  # None or 0: hang detection off
        self.scale = factor() if scale is None else scale
        self.slowest = 0.0
        self.last: dict[int, float] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.floor)

    def start(self, trial: int, now: float) -> None:
        """A trial began (its clock starts when its worker is ready)."""
        self.last[trial] = now

    def beat(self, trial: int, now: float) -> None:
        """The trial reported progress."""
        before = self.last.get(trial)
        if before is not None:
            self.slowest = max(self.slowest, now - before)
        self.last[trial] = now

    def finish(self, trial: int) -> None:
        self.last.pop(trial, None)

    def limit(self) -> float:
        """Seconds of silence after which a trial counts as hung now."""
        return max(float(self.floor or 0.0), self.scale * self.slowest)

    def deadline(self, trial: int) -> float | None:
        """The monotonic time at which the trial counts as hung if it stays silent (None: off)."""
        if not self.enabled or trial not in self.last:
            return None
        return self.last[trial] + self.limit()

    def hung(self, trial: int, now: float) -> bool:
        deadline = self.deadline(trial)
        return deadline is not None and now >= deadline

    def describe(self) -> str:
        return (f"no progress for {self.limit():.0f} s (the limit: the larger of --hang-after {self.floor:g} s and "
                f"{self.scale:g} × the slowest progress interval seen, {self.slowest:.1f} s)")
