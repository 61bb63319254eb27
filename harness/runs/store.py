"""Crash-safe result files: every write replaces the whole file atomically.

Rows are kept as they were read (strings) or produced (Python values) and written with the
``csv`` module, so a run folder is always loadable with ``pandas.read_csv`` and an interrupted
sweep never leaves a half-written row behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.runs.schema import CURVE_COLUMNS, RESULT_COLUMNS, TRIAL_KEY


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file in the same folder, then rename it over ``path``."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def csv_text(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in columns})
    return buffer.getvalue()


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def trial_key(row: dict[str, Any]) -> tuple[str, str, int, int]:
    return (str(row["model"]), str(row["task"]), int(row["length"]), int(row["seed"]))


class ResultStore:
    """``results.csv`` and ``curves.csv`` of one run folder, rewritten after every finished trial."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.results_path = folder / "results.csv"
        self.curves_path = folder / "curves.csv"
        self.rows = {trial_key(r): r for r in read_rows(self.results_path)}
        finished = set(self.rows)
        # Curves of a trial whose result row never got written belong to no finished trial: drop them.
        self.curves = [r for r in read_rows(self.curves_path) if trial_key(r) in finished]

    def status(self, key: tuple[str, str, int, int]) -> str | None:
        row = self.rows.get(key)
        return None if row is None else str(row.get("status"))

    def add(self, row: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        """Record one finished trial (replacing an earlier row of the same trial) and save."""
        key = trial_key(row)
        self.rows[key] = row
        self.curves = [r for r in self.curves if trial_key(r) != key] + list(curve)
        self.save()

    def save(self) -> None:
        # Curves first: a crash between the two writes leaves curves that the next load ignores.
        curves = sorted(self.curves, key=lambda r: (*trial_key(r), int(r["step"])))
        atomic_write_text(self.curves_path, csv_text(curves, CURVE_COLUMNS))
        ordered = sorted(self.rows.values(), key=trial_key)
        atomic_write_text(self.results_path, csv_text(ordered, RESULT_COLUMNS))


__all__ = ["ResultStore", "atomic_write_text", "write_json", "read_rows", "trial_key", "TRIAL_KEY"]
