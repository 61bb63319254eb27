"""The result files of a run folder: ``results.csv`` and ``curves.csv``, appended one trial at a time.

Recording a trial appends its curve rows and then its result row, each with one ``write`` and an
``fsync``: the cost is the same at trial 5,000 as at trial 5, and a sweep killed at any moment
keeps every trial whose result row was written. A trial that is run again (an earlier ``error``)
is appended too; the row written last wins, and :meth:`ResultStore.close` rewrites both files once,
sorted and without superseded rows, when a sweep ends.

Opening a folder checks both files: an incomplete last line (a write cut short) is dropped and
its trial runs again; anything else that does not parse is a one-line :class:`HarnessError`
saying how to recover. Curve rows of trials without a result row are dropped. Files written by an
older version (other columns) are rewritten once with today's columns.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.runs.schema import CURVE_COLUMNS, GRADIENT_COLUMNS, KEY_COLUMNS, RESULT_COLUMNS, STATUSES, TRIAL_KEY
from harness.runs.spec import Key

Row = dict[str, Any]


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file under this process's umask (``mkstemp`` gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file in the same folder, then rename it over ``path``."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX; Windows has no such modes
            os.fchmod(handle, _NEW_FILE_MODE)  # readable by others as any file the user writes, not 0600
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
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def csv_text(rows: Iterable[Row], columns: Sequence[str], header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in columns})
    return buffer.getvalue()


def _append(path: Path, text: str) -> None:
    """One write of whole lines, then fsync: a crash leaves at most an incomplete last line."""
    data = text.encode("utf-8")
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(handle, data)
        while written < len(data):  # a short write to a regular file is rare, but possible
            written += os.write(handle, data[written:])
        os.fsync(handle)
    finally:
        os.close(handle)


def append_rows(path: Path, rows: list[Row], columns: Sequence[str] = GRADIENT_COLUMNS) -> None:
    """Append rows to a CSV file (with a header if the file is new), in one synced write."""
    fresh = not path.exists() or path.stat().st_size == 0
    _append(path, csv_text(rows, columns, header=fresh))


class Table:
    """The rows of one CSV file, checked; what was dropped is in ``dropped``."""

    def __init__(self, path: Path, required: Sequence[str]) -> None:
        self.path = path
        self.header: list[str] = []
        self.rows: list[dict[str, str]] = []
        self.dropped: list[str] = []
        if path.exists():
            self._read(required)

    def _damaged(self, what: str) -> HarnessError:
        return HarnessError(
            f"{self.path} is damaged ({what}); move it aside (mv {self.path} {self.path}.damaged) and run the "
            f"command again to start these trials afresh, or restore the file from a copy")

    def _read(self, required: Sequence[str]) -> None:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise HarnessError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if b"\0" in raw:
            raise self._damaged("it contains NUL bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._damaged(f"not UTF-8 text at byte {exc.start}") from None
        if text and not text.endswith("\n"):
            cut = text.rfind("\n") + 1
            self.dropped.append(f"an incomplete last line ({text[cut:][:40]!r}...)")
            text = text[:cut]
        records = list(csv.reader(io.StringIO(text, newline="")))
        if not records:
            return
        self.header = records[0]
        missing = [c for c in required if c not in self.header]
        if missing:
            raise self._damaged(f"no column(s) {', '.join(missing)} in its header")
        for number, record in enumerate(records[1:], start=2):
            if len(record) != len(self.header):
                raise self._damaged(f"line {number} has {len(record)} fields, the header {len(self.header)}")
            self.rows.append(dict(zip(self.header, record)))


def _check_key(row: dict[str, str], table: Table, number: int) -> None:
    problems = [c for c in ("model", "task") if not row.get(c)]
    for column, least in (("length", 1), ("seed", 0)):
        try:
            if int(row.get(column, "")) < least:
                problems.append(column)
        except ValueError:
            problems.append(column)
    if "status" in row and row["status"] not in STATUSES:
        problems.append("status")
    if problems:
        raise table._damaged(f"row {number} has an unreadable {', '.join(problems)}")


def default_key(row: Row) -> Key:
    return (str(row["model"]), str(row["task"]), int(row["length"]), int(row["seed"]), str(row.get("config_id") or ""))


class ResultStore:
    """``results.csv`` and ``curves.csv`` of one run folder.

    ``key`` maps a result row to its trial identity; the planner passes one that also knows rows
    written before ``config_id`` existed.
    """

    def __init__(self, folder: Path, key: Callable[[Row], Key] = default_key) -> None:
        self.folder = folder
        self.key = key
        self.results_path = folder / "results.csv"
        self.curves_path = folder / "curves.csv"
        self.notes: list[str] = []
        results = Table(self.results_path, (*TRIAL_KEY, "status"))
        curves = Table(self.curves_path, (*TRIAL_KEY, "step"))
        self.rows: dict[Key, Row] = {}
        #: (trial, config_id written with the row) -> its recomputed identity's id (a model that gained an
        #: option since gives its old rows a new id); their curves, written under the old id, follow it
        self._renamed: dict[tuple, str] = {}
        upgraded = False  # some row's identity or recorded options were brought up to date by ``key``
        for number, row in enumerate(results.rows, start=2):
            _check_key(row, results, number)
            options = (row.get("model_options"), row.get("task_options"))
            identity = key(row)
            written = str(row.get("config_id") or "")
            if written and written != identity[4]:
                self._renamed[(*identity[:4], written)] = identity[4]
            upgraded |= written != identity[4] or options != (row.get("model_options"), row.get("task_options"))
            row["config_id"] = identity[4]
            self.rows[identity] = row
        kept_curves = self._link_curves(curves)
        self.notes += [f"{results.path.name}: dropped {d}; that trial will run again" for d in results.dropped]
        self.notes += [f"{curves.path.name}: dropped {d}" for d in curves.dropped]
        self._dirty = bool(upgraded or results.dropped or curves.dropped or len(self.rows) != len(results.rows)
                           or len(kept_curves) != len(curves.rows)
                           or (results.header and results.header != list(RESULT_COLUMNS))
                           or (curves.header and curves.header != list(CURVE_COLUMNS)))
        if self._dirty:
            self._rewrite(kept_curves)
        self._curve_count = len(kept_curves)

    def _link_curves(self, curves: Table) -> list[Row]:
        """Curve rows that belong to a recorded trial (older files: matched on the trial key)."""
        by_trial: dict[tuple, list[str]] = {}
        for identity in self.rows:
            by_trial.setdefault(identity[:4], []).append(identity[4])
        kept = []
        for row in curves.rows:
            try:
                trial = (row["model"], row["task"], int(row["length"]), int(row["seed"]))
                int(float(row["step"]))
            except (KeyError, ValueError):
                raise curves._damaged("a row with an unreadable trial key or step") from None
            ids = by_trial.get(trial, [])
            renamed = self._renamed.get((*trial, str(row.get("config_id") or "")))
            if renamed is not None:
                row["config_id"] = renamed
            if not row.get("config_id") and len(ids) == 1:
                row["config_id"] = ids[0]
            if row.get("config_id") in ids:
                kept.append(row)
        return kept

    def status(self, key: Key) -> str | None:
        row = self.rows.get(key)
        return None if row is None else str(row.get("status"))

    def add(self, row: Row, curve: list[Row]) -> None:
        """Record one finished trial: its curve rows, then its result row, each appended and synced."""
        identity = self.key(row)
        if identity in self.rows:
            self._dirty = True  # a retried trial: the new row wins; close() drops the old one
        self.rows[identity] = row
        if curve:
            self._append(self.curves_path, curve, CURVE_COLUMNS)
            self._curve_count += len(curve)
        self._append(self.results_path, [row], RESULT_COLUMNS)

    @staticmethod
    def _append(path: Path, rows: list[Row], columns: Sequence[str]) -> None:
        append_rows(path, rows, columns)

    def close(self) -> None:
        """Rewrite both files once: sorted, superseded rows dropped (cheap next to any sweep)."""
        curves = Table(self.curves_path, (*TRIAL_KEY, "step"))
        self._rewrite(self._link_curves(curves))

    def _rewrite(self, curves: list[Row]) -> None:
        ordered = [self.rows[identity] for identity in sorted(self.rows)]  # keyed by self.key(row) already
        latest = {}
        for row in curves:  # the last-written rows of a (trial, step) win
            latest[(row["model"], row["task"], int(row["length"]), int(row["seed"]), row.get("config_id", ""),
                    int(float(row["step"])))] = row
        kept = [latest[k] for k in sorted(latest, key=lambda k: (k[:2], k[2], k[3], k[4], k[5]))]
        # Curves first: a crash between the two writes leaves curves that the next load ignores.
        atomic_write_text(self.curves_path, csv_text(kept, CURVE_COLUMNS))
        atomic_write_text(self.results_path, csv_text(ordered, RESULT_COLUMNS))
        self._dirty = False


__all__ = [
    "KEY_COLUMNS",
    "ResultStore",
    "Table",
    "append_rows",
    "atomic_write_text",
    "csv_text",
    "default_key",
    "write_json",
]
