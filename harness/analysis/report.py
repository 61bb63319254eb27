"""Summary tables of one or more runs: per-length scores, memory horizon and area under the curve.

Reads ``results.csv`` (and, for the plots, ``curves.csv``) from run folders; column names are those
of :mod:`harness.runs.schema`. Uses pandas and numpy only, so the CLI can import it without matplotlib.

Definitions used throughout (``harness.analysis.plotting`` shares them):

* Trials with ``status == "error"`` have no meaningful score: they are left out of every mean,
  standard deviation, horizon and area, and counted in ``n_errors``. ``diverged`` trials keep their
  last finite numbers and are included.
* When several run folders hold the same trial ``(model, task, length, seed)``, the row from the
  folder given last wins (and within one ``results.csv``, the row written last).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.runs.schema import CURVE_COLUMNS, TRIAL_KEY

__all__ = ["build_report", "format_report", "load_results", "load_curves", "model_order",
           "valid_trials", "solved_flags", "memory_horizon", "normalised_auc", "length_column",
           "BUILTIN_MODELS", "REPORT_FORMATS"]

#: Built-in model names, in the order tables and legends list them; other models follow, sorted.
BUILTIN_MODELS = ("rnn", "lstm", "gru", "peephole", "cifg", "bilstm")

REPORT_FORMATS = ("markdown", "csv", "json")

_KEY = list(TRIAL_KEY)
_RUN = "_run"  # index of the run folder a row came from (later folders win)
_NUMERIC = ("score", "loss", "best_score", "chance_score", "memoryless_loss", "steps_to_solve", "steps",
            "max_steps", "train_seconds", "seconds_per_step")


# --------------------------------------------------------------------------------------------
# Loading


def _as_bool(values: pd.Series) -> pd.Series:
    """Parse a ``solved``-like column written as bools, 'True'/'False', 1/0 or empty."""
    if values.dtype == bool:
        return values
    text = values.astype(str).str.strip().str.lower()
    return text.isin(("true", "1", "1.0", "yes"))


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, pd.errors.ParserError) as exc:
        raise HarnessError(f"cannot read {path}: {exc}") from exc


def _check_columns(frame: pd.DataFrame, path: Path, needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise HarnessError(f"{path}: missing column(s) {', '.join(missing)}; is this a harness run?")


def load_results(run_dirs: list[Path]) -> pd.DataFrame:
    """Concatenate the ``results.csv`` of several run folders into one table, one row per trial.

    A trial present in several folders keeps the row from the folder listed last, so a new run
    (e.g. a third-party model) can be laid over a reference run. ``solved`` is parsed to bool,
    ``status`` is lower-cased, numeric columns are numeric. Raises ``HarnessError`` when a folder
    has no ``results.csv`` or when no folder has any row.
    """
    if not run_dirs:
        raise HarnessError("no run folder given")
    frames = []
    for index, run_dir in enumerate(run_dirs):
        path = Path(run_dir) / "results.csv"
        if not path.is_file():
            raise HarnessError(f"{run_dir}: no results.csv (expected a run folder)")
        frame = _read_csv(path)
        if frame.empty:
            continue
        _check_columns(frame, path, (*TRIAL_KEY, "status", "score"))
        frame[_RUN] = index
        frames.append(frame)
    if not frames:
        raise HarnessError(f"no results in {', '.join(str(d) for d in run_dirs)}")
    results = pd.concat(frames, ignore_index=True, sort=False)
    results = results.drop_duplicates(subset=_KEY, keep="last").reset_index(drop=True)
    results["model"] = results["model"].astype(str)
    results["task"] = results["task"].astype(str)
    results["length"] = pd.to_numeric(results["length"]).astype(int)
    results["status"] = results["status"].astype(str).str.strip().str.lower()
    for column in _NUMERIC:  # optional ones missing from an older or foreign file become NaN
        results[column] = (pd.to_numeric(results[column], errors="coerce")
                           if column in results.columns else np.nan)
    results["solved"] = (_as_bool(results["solved"]) if "solved" in results.columns
                         else pd.Series(False, index=results.index))
    return results


def load_curves(run_dirs: list[Path], results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Concatenate the ``curves.csv`` of several run folders (folders without one are skipped).

    For a trial present in several folders only the curve from the folder listed last is kept, as
    for the results. When ``results`` (from :func:`load_results`) is given, curves of trials whose
    status is ``error`` are dropped. Returns an empty table with the curve columns if no curve exists.
    """
    frames = []
    for index, run_dir in enumerate(run_dirs):
        path = Path(run_dir) / "curves.csv"
        if not path.is_file():
            continue
        frame = _read_csv(path)
        if frame.empty:
            continue
        _check_columns(frame, path, (*TRIAL_KEY, "step", "eval_score"))
        frame[_RUN] = index
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*CURVE_COLUMNS, _RUN])
    curves = pd.concat(frames, ignore_index=True, sort=False)
    curves["model"] = curves["model"].astype(str)
    curves["task"] = curves["task"].astype(str)
    curves["length"] = pd.to_numeric(curves["length"]).astype(int)
    for column in ("step", "train_loss", "eval_loss", "eval_score", "elapsed_seconds"):
        if column in curves.columns:
            curves[column] = pd.to_numeric(curves[column], errors="coerce")
    latest = curves.groupby(_KEY)[_RUN].transform("max")
    curves = curves[curves[_RUN] == latest]
    curves = curves.drop_duplicates(subset=[*_KEY, "step"], keep="last")
    if results is not None and not results.empty:
        errors = results.loc[results["status"] == "error", _KEY]
        if not errors.empty:
            marked = curves.merge(errors.assign(_error=True), on=_KEY, how="left")
            curves = curves[marked["_error"].isna().to_numpy()]
    return curves.sort_values([*_KEY, "step"]).reset_index(drop=True)


def model_order(models: Iterable[str]) -> list[str]:
    """Built-in models in their fixed order, then every other model name sorted."""
    names = set(models)
    return [m for m in BUILTIN_MODELS if m in names] + sorted(names.difference(BUILTIN_MODELS))


# --------------------------------------------------------------------------------------------
# Summary statistics


def valid_trials(results: pd.DataFrame) -> pd.DataFrame:
    """Trials that count in means: every status but ``error``, with a finite score."""
    return results[(results["status"] != "error") & np.isfinite(results["score"])]


def solved_flags(results: pd.DataFrame, threshold: float | None = None) -> pd.Series:
    """Whether each trial counts as solved.

    With ``threshold=None`` the recorded ``solved`` column is used (score reached the run's
    threshold at some evaluation). With a number, a trial is solved when its ``best_score`` (the
    best evaluation seen; its final ``score`` where ``best_score`` is missing) is ``>= threshold``.
    Error trials are never solved.
    """
    if threshold is None:
        solved = results["solved"].astype(bool)
    else:
        best = results["best_score"] if "best_score" in results.columns else results["score"]
        best = best.where(np.isfinite(best), results["score"])
        solved = best >= threshold
    return solved & (results["status"] != "error")


def memory_horizon(lengths: Iterable[int], solved: Iterable[bool]) -> int:
    """Largest tested length at which a strict majority of the (non-error) trials are solved.

    ``lengths`` and ``solved`` are parallel, one entry per trial. Returns 0 when no tested length
    qualifies. Lengths are taken independently: a model solved at 200 but not at 100 (a noisy
    middle point) still has horizon 200; the per-length columns show the gap.
    """
    frame = pd.DataFrame({"length": list(lengths), "solved": list(solved)})
    if frame.empty:
        return 0
    share = frame.groupby("length")["solved"].agg(lambda s: s.sum() * 2 > len(s))
    good = share[share].index
    return int(good.max()) if len(good) else 0


def normalised_auc(lengths: Iterable[float], scores: Iterable[float]) -> float:
    """Area under the score-vs-length curve over log length, divided by the log-length span.

    ``lengths`` and ``scores`` are parallel (one mean score per tested length). The trapezoid rule
    on ``(log T, score)`` from the shortest to the longest tested length, divided by
    ``log(T_max / T_min)``: a model scoring 1 everywhere gets 1, a model scoring s everywhere gets
    s, so the number is an average score in which each factor of length weighs the same. With one
    tested length it is that length's score; NaN with none. Only comparable between models tested
    on the same lengths.
    """
    frame = pd.DataFrame({"length": list(lengths), "score": list(scores)})
    frame = frame[np.isfinite(frame["score"]) & (frame["length"] > 0)]
    frame = frame.groupby("length", as_index=False)["score"].mean().sort_values("length")
    if frame.empty:
        return float("nan")
    if len(frame) == 1:
        return float(frame["score"].iloc[0])
    x = np.log(frame["length"].to_numpy(dtype=float))
    y = frame["score"].to_numpy(dtype=float)
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0])


def length_column(length: int) -> str:
    """Name of the per-length score column in the report."""
    return f"T={length}"


def _mean_std(scores: pd.Series) -> str:
    if scores.empty:
        return "error"
    mean = scores.mean()
    if len(scores) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {scores.std(ddof=1):.3f}"


def build_report(run_dirs: list[Path], threshold: float | None = None) -> pd.DataFrame:
    """Summarise run folders: one row per (model, task), sorted by task then model.

    Columns:

    * ``task``, ``model``, ``chance_score`` (the task's, for reference);
    * ``n_seeds``: distinct seeds run for this (model, task), error trials included;
      ``n_errors``: trials with status ``error`` (left out of every number below);
      ``n_diverged``: trials with status ``diverged`` (included, with their last finite score);
    * ``memory_horizon``: the largest tested length at which the model is solved in a strict
      majority of its non-error seeds; **0 when it is solved at no tested length** (see
      :func:`memory_horizon`). ``threshold=None`` uses the recorded ``solved`` flags, a number
      re-derives them as ``best_score >= threshold`` (see :func:`solved_flags`);
    * ``auc``: the normalised area under the mean-score-vs-length curve, trapezoids over log
      length divided by the log-length span, in [0, 1] (1 for a model scoring 1 everywhere; with a
      single tested length, that length's score; see :func:`normalised_auc`);
    * ``T=<length>`` for every tested length (union over tasks): ``"mean ± std"`` of the final
      score over non-error seeds (sample std; the mean alone for a single seed), ``"error"`` if
      every trial at that length errored, empty where the length was not tested for that row.
    """
    results = load_results(run_dirs)
    results = results.assign(_solved=solved_flags(results, threshold))
    lengths = sorted(results["length"].unique())
    rows = []
    for task in sorted(results["task"].unique()):
        task_rows = results[results["task"] == task]
        for model in model_order(task_rows["model"].unique()):
            trials = task_rows[task_rows["model"] == model]
            valid = valid_trials(trials)
            means = valid.groupby("length")["score"].mean()
            chance = trials["chance_score"].dropna() if "chance_score" in trials else pd.Series()
            row: dict[str, object] = {
                "task": task,
                "model": model,
                "chance_score": float(chance.median()) if len(chance) else float("nan"),
                "n_seeds": int(trials["seed"].nunique()),
                "n_errors": int((trials["status"] == "error").sum()),
                "n_diverged": int((trials["status"] == "diverged").sum()),
                "memory_horizon": memory_horizon(valid["length"], valid["_solved"]),
                "auc": normalised_auc(means.index, means.to_numpy()),
            }
            for length in lengths:
                at = trials[trials["length"] == length]
                row[length_column(length)] = (_mean_std(valid.loc[valid["length"] == length, "score"])
                                              if len(at) else None)
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Formatting


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _markdown_table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)]
    return [line(header), "|" + "|".join(rule) + "|", *(line(r) for r in rows)]


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no results)\n"
    score_columns = [c for c in df.columns if str(c).startswith("T=")]
    blocks = []
    for task, rows in df.groupby("task", sort=True):
        tested = [c for c in score_columns if rows[c].notna().any()]
        chance = rows["chance_score"].dropna() if "chance_score" in rows else pd.Series()
        heading = f"## {task}"
        if len(chance):
            heading += f" (chance score {chance.iloc[0]:.3f})"
        header = ["model", *tested, "horizon", "AUC", "seeds", "errors"]
        has_diverged = "n_diverged" in rows and rows["n_diverged"].sum() > 0
        if has_diverged:
            header.append("diverged")
        body = []
        for _, row in rows.iterrows():
            cells = [str(row["model"]), *(_cell(row[c]) for c in tested),
                     str(int(row["memory_horizon"])) if row["memory_horizon"] else "none",
                     _cell(row["auc"]), str(row["n_seeds"]), str(row["n_errors"])]
            if has_diverged:
                cells.append(str(row["n_diverged"]))
            body.append(cells)
        table = _markdown_table(header, body, right=set(range(1, len(header))))
        blocks.append("\n".join([heading, "", *table]))
    notes = ("score: final evaluation score, mean ± std over seeds (error trials excluded); "
             "horizon: largest T solved in a majority of seeds (none: no such T); "
             "AUC: area under score vs log T, normalised to [0, 1].")
    return "\n\n".join(blocks) + "\n\n" + notes + "\n"


def format_report(df: pd.DataFrame, fmt: str) -> str:
    """Render :func:`build_report`'s table as ``"markdown"`` (a heading and an aligned table per
    task, for the console or a README), ``"csv"`` or ``"json"`` (a list of row objects; missing
    values are ``null``) for scripts."""
    if fmt == "markdown":
        return _markdown(df)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = json.loads(df.to_json(orient="records"))
        return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    raise HarnessError(f"unknown report format '{fmt}'; choose one of {', '.join(REPORT_FORMATS)}")

