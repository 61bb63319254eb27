"""Name → factory registries for models and tasks, with lazy ``"module:attr"`` targets.

The registry owns naming: it rejects duplicates (naming both plugins), resolves aliases, and
answers an unknown name with the closest known names and the full list, on one line.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError, PluginError

Target = str | Callable[..., Any]


@dataclass(frozen=True)
class Entry:
    """One registered model or task: where it comes from and how to build it."""

    kind: str
    name: str
    target: Target
    description: str
    plugin: str
    aliases: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Position in tables and legends (lower first); entries without one follow, sorted by name.
    order: float | None = None
    #: Colour and marker in every figure, e.g. ``{"color": "#1f77b4", "marker": "s"}``.
    style: dict[str, str] = field(default_factory=dict)
    #: Part of the sweep ``harness run`` makes when no ``--models``/``--tasks`` are given.
    default_sweep: bool = False
    #: (models) the model ``harness bench`` takes its speed ratios to.
    reference: bool = False
    #: Options that choose how the model computes, not what (e.g. a parallel scan or a sequential
    #: loop): recorded like any option, but never a hyperparameter to select between.
    implementation_options: tuple[str, ...] = ()

    def load(self) -> Callable[..., Any]:
        """Return the factory, importing its module now if the target is a ``"module:attr"`` string."""
        if callable(self.target):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"{self.kind} '{self.name}' from plugin '{self.plugin}': cannot import target "
                f"'{self.target}': {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(obj):
            raise PluginError(f"{self.kind} '{self.name}': target '{self.target}' is not callable")
        return obj

    def build(self, **kwargs: Any) -> Any:
        """Call the factory with the entry's defaults overridden by ``kwargs``."""
        return self.load()(**{**self.defaults, **kwargs})

    @property
    def target_name(self) -> str:
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{getattr(self.target, '__qualname__', repr(self.target))}"


def display_key(entry: Entry) -> tuple[int, float, str]:
    return (0, entry.order, entry.name) if entry.order is not None else (1, 0.0, entry.name)


class Registry:
    """A sorted, duplicate-free mapping of names (and aliases) to entries of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def add(self, entry: Entry) -> None:
        """Add ``entry``; a name or alias that is already taken raises :class:`PluginError`."""
        for name in (entry.name, *entry.aliases):
            if not isinstance(name, str) or not name or name != name.strip() or "," in name:
                raise PluginError(
                    f"plugin '{entry.plugin}' registered an invalid {self.kind} name {name!r}"
                )
            owner = self._owner(name)
            if owner is not None:
                raise PluginError(
                    f"duplicate {self.kind} name '{name}': registered by plugin '{owner.plugin}' "
                    f"and by plugin '{entry.plugin}'"
                )
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def _owner(self, name: str) -> Entry | None:
        if name in self._entries:
            return self._entries[name]
        if name in self._aliases:
            return self._entries[self._aliases[name]]
        return None

    def get(self, name: str) -> Entry:
        """Return the entry for ``name`` or an alias; unknown names raise a one-line :class:`HarnessError`."""
        entry = self._owner(name)
        if entry is None:
            raise HarnessError(self.unknown_message(name))
        return entry

    def unknown_message(self, name: str) -> str:
        known = sorted([*self._entries, *self._aliases])
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'{hint} known {self.kind}s: {', '.join(sorted(self._entries))}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def ordered(self) -> list[Entry]:
        """Entries in display order: those registered with an ``order`` first, then by name."""
        return sorted(self._entries.values(), key=display_key)

    def default_sweep(self) -> list[str]:
        """Names registered for the default sweep, in display order."""
        return [e.name for e in self.ordered() if e.default_sweep]

    def reference(self) -> Entry | None:
        """The entry registered as the reference (the first in display order), if any."""
        return next((e for e in self.ordered() if e.reference), None)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[name] for name in self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._owner(name) is not None

    def __len__(self) -> int:
        return len(self._entries)
