"""The table printed at the end of a run: the report of the run folder (scores per model and length,
horizons), with the best setting per length when the folder has axes."""

from __future__ import annotations

from pathlib import Path


def summary_text(out: Path) -> str:
    from harness.analysis.report import full_report
    from harness.analysis.results import axes, load_results

    select = "best" if axes(load_results([out])) else "all"
    return full_report([out], "markdown", select=select)


def print_summary(out: Path) -> None:
    if (out / "results.csv").exists():
        print(summary_text(out))
