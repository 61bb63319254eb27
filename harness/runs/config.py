"""The sweep configuration: defaults, TOML file, command-line overrides, and validation.

Precedence: built-in defaults < ``--config FILE`` < command-line options. Every problem is
reported as one :class:`HarnessError` line before any training starts.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

DEFAULT_MODELS = ("rnn", "lstm", "gru")
DEFAULT_TASKS = ("adding",)


@dataclass
class SweepConfig:
    """What ``harness run`` sweeps over and how each trial trains."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    lengths: list[int] | dict[str, list[int]] | None = None  # None: each task's default sweep
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    steps: int | dict[str, int] | None = None  # None: each task's default budget; a table: per task
    batch_size: int = 64
    hidden_size: int = 128
    lr: float = 1e-3
    eval_every: int = 100
    eval_size: int = 512
    threshold: float = 0.99
    clip: float = 1.0
    device: str = "auto"
    workers: int | str = "auto"  # "auto": one single-threaded worker per core on CPU, 1 on a GPU
    threads: int | None = None  # per worker; None: cores // workers
    out: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)  # scalars: every model; tables: one model
    task_options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELD_NAMES = {f.name for f in fields(SweepConfig)}


def parse_int_list(text: str, what: str) -> list[int]:
    """Parse ``"10,20,50"`` into positive integers, or fail with one line naming ``what``."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise HarnessError(f"{what}: '{part}' is not an integer (expected a comma list like 10,20,50)")
        if value <= 0:
            raise HarnessError(f"{what}: {value} is not a positive integer")
        values.append(value)
    if not values:
        raise HarnessError(f"{what}: empty list")
    return values


def parse_seeds(value: Any) -> list[int]:
    """A single integer N means seeds 0..N-1; a list (or comma text with a comma) lists the seeds."""
    if isinstance(value, bool):
        raise HarnessError(f"seeds: expected a count or a list of integers, got {value!r}")
    if isinstance(value, int):
        count = value
    elif isinstance(value, str) and "," not in value:
        try:
            count = int(value)
        except ValueError:
            raise HarnessError(f"seeds: '{value}' is not a count or a comma list of integers")
    else:
        items = value.split(",") if isinstance(value, str) else list(value)
        seeds = []
        for item in items:
            if isinstance(item, str) and not item.strip():
                continue
            try:
                seed = int(item)
            except (TypeError, ValueError):
                raise HarnessError(f"seeds: '{item}' is not an integer")
            if seed < 0 or isinstance(item, bool):
                raise HarnessError(f"seeds: {item!r} is not a non-negative integer")
            seeds.append(seed)
        if not seeds or len(set(seeds)) != len(seeds):
            raise HarnessError(f"seeds: expected distinct integers, got {value!r}")
        return seeds
    if count <= 0:
        raise HarnessError(f"seeds: the count must be positive, got {count}")
    return list(range(count))


def parse_steps(value: Any) -> int | dict[str, int]:
    """A training budget: one count for every task (``2000``), or one per task, as a table or as
    ``"recall=1000,adding=3000"`` (tasks left out keep their own default budget)."""
    if isinstance(value, str) and "=" in value:
        table: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            task, sep, count = part.partition("=")
            if not sep or not task.strip():
                raise HarnessError(f"steps: '{part}' is not TASK=N (expected N or a list like recall=1000,adding=3000)")
            table[task.strip()] = count.strip()
        value = table
    if isinstance(value, dict):
        if not value:
            raise HarnessError("steps: empty table")
        return {task: _positive_int(count, f"steps.{task}") for task, count in value.items()}
    return _positive_int(value, "steps")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise HarnessError(f"{what} must be a positive integer, got {value!r}")
    _check_number(value, what, int)
    return int(value)


def parse_option(text: str, flag: str) -> tuple[str | None, str, Any]:
    """Parse ``[NAME:]KEY=VALUE``; VALUE is a Python/TOML-like literal, else a string."""
    target, _, assignment = text.rpartition(":") if ":" in text.split("=", 1)[0] else (None, "", text)
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip().isidentifier():
        raise HarnessError(f"{flag} '{text}': expected KEY=VALUE or NAME:KEY=VALUE")
    lowered = raw.strip().lower()
    if lowered in {"true", "false"}:
        value: Any = lowered == "true"
    else:
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
    return (target or None), key.strip(), value


def merge_options(options: dict[str, Any], items: list[str], flag: str) -> dict[str, Any]:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in options.items()}
    for item in items:
        target, key, value = parse_option(item, flag)
        if target is None:
            merged[key] = value
        else:
            merged.setdefault(target, {})
            if not isinstance(merged[target], dict):
                raise HarnessError(f"{flag} '{item}': '{target}' is already a plain option")
            merged[target][key] = value
    return merged


def options_for(options: dict[str, Any], name: str) -> dict[str, Any]:
    """The options that apply to model or task ``name``: the shared scalars, then its own table."""
    shared = {k: v for k, v in options.items() if not isinstance(v, dict)}
    return {**shared, **options.get(name, {})}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; unknown keys and syntax errors are one-line errors."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"config file not found: {path}")
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"config file {path} is not valid TOML: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read config file {path}: {exc}")
    if "task" in data and "tasks" not in data:
        data["tasks"] = data.pop("task")
    unknown = sorted(set(data) - FIELD_NAMES)
    if unknown:
        raise HarnessError(f"config file {path}: unknown key(s) {', '.join(unknown)}; "
                           f"known keys: {', '.join(sorted(FIELD_NAMES))}")
    return data


def normalise(raw: dict[str, Any]) -> SweepConfig:
    """Build a validated :class:`SweepConfig` from loosely typed values (file or command line)."""
    values = dict(raw)
    for key in ("models", "tasks"):
        if key in values and isinstance(values[key], str):
            values[key] = [v.strip() for v in values[key].split(",") if v.strip()]
        if key in values and (not isinstance(values[key], list) or not values[key]
                              or not all(isinstance(v, str) for v in values[key])):
            raise HarnessError(f"{key}: expected a non-empty list of names, got {values[key]!r}")
    if values.get("lengths") is not None:
        lengths = values["lengths"]
        if isinstance(lengths, dict):
            values["lengths"] = {task: _lengths(v, f"lengths.{task}") for task, v in lengths.items()}
        else:
            values["lengths"] = _lengths(lengths, "lengths")
    if "seeds" in values:
        values["seeds"] = parse_seeds(values["seeds"])
    if values.get("steps") is not None:
        values["steps"] = parse_steps(values["steps"])
    config = SweepConfig(**values)
    _check_number(config.threads, "threads", int, allow_none=True)
    if config.workers != "auto":
        try:
            config.workers = int(config.workers)
        except (TypeError, ValueError):
            raise HarnessError(f"workers must be a positive integer or 'auto', got {config.workers!r}")
    for name in ("batch_size", "hidden_size", "eval_every", "eval_size") + (
            ("workers",) if config.workers != "auto" else ()):
        _check_number(getattr(config, name), name, int)
    for name in ("lr", "clip"):
        _check_number(getattr(config, name), name, float)
    if not 0.0 < float(config.threshold) <= 1.0:
        raise HarnessError(f"threshold must be in (0, 1], got {config.threshold!r}")
    for name in ("model_options", "task_options"):
        if not isinstance(getattr(config, name), dict):
            raise HarnessError(f"{name}: expected a table of options")
    return config


def _lengths(value: Any, what: str) -> list[int]:
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise HarnessError(f"{what}: expected positive integers, got {list(value)!r}")
        value = ",".join(str(v) for v in value)
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif not isinstance(value, str):
        raise HarnessError(f"{what}: expected a list of positive integers, got {value!r}")
    return parse_int_list(value, what)


def _check_number(value: Any, name: str, kind: type, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or value <= 0:
        raise HarnessError(f"{name} must be a positive {'integer' if kind is int else 'number'}, got {value!r}")
