"""The compact table printed at the end of a run: mean score per model × length, per task."""

from __future__ import annotations

from pathlib import Path


def summary_table(results_csv: Path) -> str:
    import pandas as pd

    frame = pd.read_csv(results_csv)
    if frame.empty:
        return "(no finished trials)"
    parts = []
    for task, rows in frame.groupby("task", sort=True):
        usable = rows[rows["status"] != "error"]
        table = usable.pivot_table(index="model", columns="length", values="score", aggfunc="mean")
        table = table.map(lambda v: f"{v:.2f}") if not table.empty else table
        chance = rows["chance_score"].dropna()
        header = f"task {task}: mean score over seeds"
        if not chance.empty:
            header += f" (chance {chance.iloc[0]:.3f})"
        problems = rows["status"].value_counts().drop("ok", errors="ignore")
        if not problems.empty:
            header += "; " + ", ".join(f"{n} {status}" for status, n in problems.items())
        parts.append(f"{header}\n{table.to_string() if not table.empty else '(no scored trials)'}")
    return "\n\n".join(parts)


def print_summary(out: Path) -> None:
    path = out / "results.csv"
    if path.exists():
        print(summary_table(path))
