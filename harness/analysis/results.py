"""Loading run folders for reports and figures, the settings that vary in them, and honest selection.

Definitions used by every report and figure:

* Trials with ``status == "error"`` have no meaningful numbers: they are left out of every mean,
  horizon and selection, and counted. ``diverged`` trials keep their last finite numbers.
* When several folders hold the same trial (model, task, length, seed, config_id), the row from
  the folder given last wins (within one file, the row written last).
* A *setting* is everything that identifies a trial besides its grid point (``config_id``).
  The *axes* of a set of results are the settings and options that take more than one value
  within some (model, task).
* ``--select best`` keeps, per (model, task, T), the setting with the highest mean **validation**
  score over seeds (ties: the lower validation loss), and reports its **test** numbers, so the
  choice never sees the data it is judged on. An implementation option (a model's registration
  lists it in ``implementation_options``: a scan or a loop) is never selected: each of its values
  is reported as a model of its own (``"mymodel mode=scan"``).

Files written before harness 0.2 (no ``config_id``, one held-out set) load too: their rows get an
empty ``config_id`` and no validation numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.runs.schema import TRIAL_KEY
from harness.runs.settings import identity_settings

KEY = [*TRIAL_KEY, "config_id"]
_RUN = "_run"  # index of the run folder a row came from (later folders win)
NUMERIC = ("score", "loss", "val_score", "val_loss", "best_val_score", "best_score", "chance_score",
           "memoryless_loss", "steps_to_solve", "steps", "budget", "max_steps", "train_seconds", "seconds_per_step",
           "trial_seconds", "threshold", "params", "hidden_size")


def _as_bool(values: pd.Series) -> pd.Series:
    """Parse a ``solved``-like column written as bools, 'True'/'False', 1/0 or empty."""
    if values.dtype == bool:
        return values
    return values.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "yes"))


def read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise HarnessError(f"cannot read {path}: {exc}") from exc


def _check_columns(frame: pd.DataFrame, path: Path, needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise HarnessError(f"{path}: missing column(s) {', '.join(missing)}; is this a harness run?")


def _concat(run_dirs: list[Path], name: str, needed: Iterable[str]) -> pd.DataFrame | None:
    frames = []
    for index, run_dir in enumerate(run_dirs):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        frame = read_csv(path)
        if frame.empty:
            continue
        _check_columns(frame, path, needed)
        frame[_RUN] = index
        frames.append(frame)
    if not frames:
        return None
    frame = pd.concat(frames, ignore_index=True, sort=False)
    frame["model"] = frame["model"].astype(str)
    frame["task"] = frame["task"].astype(str)
    frame["length"] = pd.to_numeric(frame["length"]).astype(int)
    frame["seed"] = pd.to_numeric(frame["seed"]).astype(int)
    frame["config_id"] = frame["config_id"].fillna("").astype(str) if "config_id" in frame else ""
    return frame


def load_results(run_dirs: list[Path]) -> pd.DataFrame:
    """The ``results.csv`` of several run folders as one table, one row per trial (see module doc)."""
    if not run_dirs:
        raise HarnessError("no run folder given")
    for run_dir in run_dirs:
        if not (Path(run_dir) / "results.csv").is_file():
            raise HarnessError(f"{run_dir}: no results.csv (expected a run folder)")
    results = _concat([Path(d) for d in run_dirs], "results.csv", (*TRIAL_KEY, "status", "score"))
    if results is None:
        raise HarnessError(f"no results in {', '.join(str(d) for d in run_dirs)}")
    results = results.drop_duplicates(subset=KEY, keep="last").reset_index(drop=True)
    results["status"] = results["status"].astype(str).str.strip().str.lower()
    for column in NUMERIC:  # optional ones missing from an older or foreign file become NaN
        results[column] = pd.to_numeric(results[column], errors="coerce") if column in results else np.nan
    results["solved"] = _as_bool(results["solved"]) if "solved" in results else False
    for column in ("task_criterion", "model_options", "task_options"):
        results[column] = results[column].fillna("").astype(str) if column in results else ""
    return results


def load_curves(run_dirs: list[Path], results: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ``curves.csv`` of several run folders; curves of error trials are dropped when ``results``
    is given. Older files' single held-out score (``eval_score``) stands in for ``val_score``."""
    curves = _concat([Path(d) for d in run_dirs], "curves.csv", (*TRIAL_KEY, "step"))
    if curves is None:
        return pd.DataFrame(columns=[*KEY, "step", "train_loss", "val_loss", "val_score", _RUN])
    for new, old in (("val_score", "eval_score"), ("val_loss", "eval_loss")):
        if new not in curves and old in curves:
            curves[new] = curves[old]
    for column in ("step", "train_loss", "val_loss", "val_score", "test_loss", "test_score", "elapsed_seconds",
                   "grad_ratio", "grad_decay"):
        if column in curves:
            curves[column] = pd.to_numeric(curves[column], errors="coerce")
    latest = curves.groupby(KEY)[_RUN].transform("max")
    curves = curves[curves[_RUN] == latest].drop_duplicates(subset=[*KEY, "step"], keep="last")
    if results is not None and not results.empty:
        errors = results.loc[results["status"] == "error", KEY]
        if not errors.empty:
            marked = curves.merge(errors.assign(_error=True), on=KEY, how="left")
            curves = curves[marked["_error"].isna().to_numpy()]
    return curves.sort_values([*KEY, "step"]).reset_index(drop=True)


def model_order(models: Iterable[str]) -> list[str]:
    """Models in the order their plugins registered (``order=``), then every other name sorted; a
    model's settings (``"mycell lr=0.01"``) follow their model."""
    names = set(models)
    try:
        from harness.registry.loader import get_state

        ordered = [e.name for e in get_state().models.ordered() if e.order is not None]
    except Exception:  # reports never fail for want of a plugin
        ordered = []
    rank = {name: i for i, name in enumerate(ordered)}

    def key(name: str) -> tuple[int, str, str]:  # "mycell lr=0.01" sorts with mycell, then by its setting
        base, _, variant = name.partition(" ")
        return (rank.get(base, len(rank)), base if base not in rank else "", variant)

    return sorted(names, key=key)


def valid_trials(results: pd.DataFrame) -> pd.DataFrame:
    """Trials that count in means: every status but ``error``, with a finite score."""
    return results[(results["status"] != "error") & np.isfinite(results["score"])]


# --------------------------------------------------------------------------------------------
# Settings and axes


def setting_columns(results: pd.DataFrame) -> pd.DataFrame:
    """Each row's identifying settings as columns: the trial settings recorded in the file, and
    every model/task option as ``model:KEY`` / ``task:KEY``."""
    table = pd.DataFrame(index=results.index)
    for setting in identity_settings():
        column = setting.column_name
        if column in results:
            table[setting.name] = results[column]
    for kind in ("model", "task"):
        parsed = results[f"{kind}_options"].map(_options)
        keys = sorted({k for options in parsed for k in options})
        for key in keys:
            table[f"{kind}:{key}"] = parsed.map(lambda o, k=key: json.dumps(o.get(k)) if k in o else "")
    return table


def _options(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def axes(results: pd.DataFrame) -> list[str]:
    """Settings and options that take more than one value within some (model, task)."""
    table = setting_columns(results)
    if table.empty:
        return []
    grouped = table.astype(str).groupby([results["model"], results["task"]])
    return [c for c in table.columns if (grouped[c].nunique() > 1).any()]


def describe_settings(results: pd.DataFrame, names: list[str]) -> pd.Series:
    """Per row, ``lr=0.01 model:forget_bias=3`` for the given axes (empty when there are none)."""
    if not names:
        return pd.Series("", index=results.index)
    table = setting_columns(results)[names].astype(str)
    return table.apply(lambda r: " ".join(f"{_short(n)}={_plain(v)}" for n, v in r.items() if v not in ("", "nan")),
                       axis=1)


def _short(name: str) -> str:
    """``model:init`` reads as ``init`` in labels (the model is named beside it)."""
    return name.partition(":")[2] or name


def _plain(value: str) -> str:
    """Option values are stored as JSON: show ``chrono``, not ``"chrono"``."""
    try:
        loaded = json.loads(value)
    except ValueError:
        return value
    return loaded if isinstance(loaded, str) else value


def implementation_options(model: str) -> tuple[str, ...]:
    """The options a model's registration marks as choosing how it computes, not what
    (``implementation_options``, e.g. a parallel scan or a sequential loop); none for an unknown model."""
    try:
        from harness.registry.loader import get_state

        return tuple(get_state().models.get(model).implementation_options)
    except Exception:  # reports never fail for want of a plugin
        return ()


def separate_implementations(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of a model whose implementation options take several values within a (model, task) carry
    those values in their model label (``"mymodel mode=scan"``): each implementation is then reported
    as a model of its own, never a setting that ``--select best`` chooses between."""
    labels = results["model"].copy()
    for model, rows in results.groupby("model"):
        names = implementation_options(str(model))
        if not names:
            continue
        parsed = rows["model_options"].map(_options)
        values = parsed.map(lambda options, names=names: " ".join(
            f"{n}={_plain(json.dumps(options[n])) if n in options else 'default'}" for n in names))
        if (values.groupby(rows["task"]).nunique() > 1).any():
            labels.loc[rows.index] = f"{model} " + values
    return results.assign(model=labels)


def select_best(results: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, T), the rows of the setting with the best mean validation score (module doc);
    the values of an implementation option are kept apart as models of their own
    (:func:`separate_implementations`), never selected."""
    results = separate_implementations(results)
    cells = ["model", "task", "length"]
    if results.empty or results.groupby(cells)["config_id"].nunique().max() <= 1:
        return results
    valid = valid_trials(results)
    if valid["val_score"].isna().all() and not valid.empty \
            and valid.groupby(cells)["config_id"].nunique().max() > 1:
        raise HarnessError("--select best needs validation scores, which these results do not have (they "
                           "were made before harness 0.2); use --select all")
    means = valid.groupby(cells + ["config_id"]).agg(val_score=("val_score", "mean"),
                                                     val_loss=("val_loss", "mean"))
    means = means.reset_index().sort_values(["val_score", "val_loss"], ascending=[False, True], na_position="last")
    chosen = means.drop_duplicates(cells, keep="first")[cells + ["config_id"]]
    # a cell where every setting failed keeps one setting's rows, so that reports show its errors once
    failed = results[cells + ["config_id"]].drop_duplicates(cells)
    failed = failed.merge(chosen[cells], on=cells, how="left", indicator=True)
    chosen = pd.concat([chosen, failed[failed["_merge"] == "left_only"][cells + ["config_id"]]])
    return results.merge(chosen, on=["model", "task", "length", "config_id"], how="inner")
