"""A sweep's configuration: the settings of :mod:`harness.runs.settings`, from defaults < a TOML file
< the command line, checked before any training. Every problem is one :class:`HarnessError` line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.runs import settings as S


def load_config_file(path: str | Path, roles: Sequence[str]) -> dict[str, Any]:
    """Read a TOML config keyed like the settings (``task`` is accepted for ``tasks``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read config file {path}: {exc}") from None
    if "task" in data and "tasks" not in data:
        data["tasks"] = data.pop("task")
    S.check_keys(data, roles, f"config file {path}")
    return data


class SweepConfig:
    """Parsed values of every setting of some roles, by name (``config.lr`` is a list: an axis)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = dict(values)

    @classmethod
    def from_raw(cls, raw: dict[str, Any], roles: Sequence[str] = (S.GRID, S.TRIAL, S.RUN)) -> SweepConfig:
        return cls(S.normalise(raw, roles))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting '{name}'") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def replace(self, **changes: Any) -> SweepConfig:
        return SweepConfig({**self._values, **changes})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)
