"""Load plugins (built-in modules, entry points of group ``harness``, ad-hoc modules or files)
and collect what they register into the model and task registries.

Failures stay contained: a plugin that fails to import, implements an unknown (misspelled) hook,
raises inside a hook or registers a name that is already taken is reported as one warning line
naming it and is skipped; everything else keeps working. Strict mode turns each of these into an
error. Environment variables:

- ``HARNESS_PLUGINS``: unset loads every installed entry point; ``none`` (or empty) loads none;
  a comma list loads only the entry points (or distributions) named in it.
- ``HARNESS_STRICT_PLUGINS=1``: plugin problems are errors, not warnings.
- ``HARNESS_EXTRA_PLUGINS``: extra plugin modules or ``.py`` files (``os.pathsep``- or
  comma-separated), as the ``--plugin`` option of the CLI sets them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import PluginError
from harness.registry.entries import Entry, Registry, Target

ENTRY_POINT_GROUP = "harness"
DISTRIBUTION = "recurrent-harness"  # the distribution that provides the built-in plugins

#: Built-in plugins, registered through the same hooks as third-party ones.
BUILTIN_PLUGINS = (
    "harness.plugins.torch_rnns",
    "harness.plugins.gated_cells",
    "harness.plugins.modern_rnns",
    "harness.tasks.builtin",
)

HOOK_NAMES = ("register_models", "register_tasks")


@dataclass
class PluginInfo:
    """What ``harness plugins`` shows about one plugin."""

    name: str
    source: str  # "built-in" | "entry point" | "command line"
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    status: str = "loaded"  # "loaded" | "failed"
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PluginState:
    """The loaded plugins and the registries they filled."""

    plugins: list[PluginInfo]
    models: Registry
    tasks: Registry
    warnings: list[str]


def strict_from_env() -> bool:
    return os.environ.get("HARNESS_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def _entry_point_filter() -> set[str] | None:
    """Names allowed by ``HARNESS_PLUGINS``: ``None`` means all, an empty set means none."""
    raw = os.environ.get("HARNESS_PLUGINS")
    if raw is None:
        return None
    names = {part.strip() for part in raw.split(",") if part.strip()}
    return set() if names <= {"none", "0", "off"} else names


def extra_plugin_specs() -> list[str]:
    """The plugins named in ``HARNESS_EXTRA_PLUGINS`` (``--plugin``): modules or ``.py`` files."""
    raw = os.environ.get("HARNESS_EXTRA_PLUGINS", "")
    return [part.strip() for part in raw.replace(os.pathsep, ",").split(",") if part.strip()]


def is_plugin_file(spec: str) -> bool:
    """Whether an extra plugin is a path to a ``.py`` file (else it is a dotted module name)."""
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def import_plugin_module(spec: str) -> ModuleType:
    """Import a plugin given as a dotted module name or as a path to a ``.py`` file."""
    if is_plugin_file(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no such plugin file: {spec}")
        module_name = f"harness_local_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        assert module_spec and module_spec.loader
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


class _Loader:
    """Builds a :class:`PluginState`; one instance per load."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.manager = pluggy.PluginManager("harness")
        self.manager.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.warnings: list[str] = []
        self.models = Registry("model")
        self.tasks = Registry("task")
        self.accepted: dict[str, int] = {}
        self.refused: dict[str, int] = {}

    def rejected(self, plugin_name: str, message: str, exc: BaseException | None = None) -> None:
        """A registration was refused: warn (or raise), and count it against the plugin."""
        self.refused[plugin_name] = self.refused.get(plugin_name, 0) + 1
        self.problem(None, message, exc)

    def problem(self, info: PluginInfo | None, message: str, exc: BaseException | None = None) -> None:
        """Report a plugin problem: raise in strict mode, else warn once on stderr and carry on."""
        if info is not None:
            info.status, info.error = "failed", message
        if self.strict:
            raise PluginError(message) from exc
        line = f"harness: warning: {message} (set HARNESS_STRICT_PLUGINS=1 to make this an error)"
        self.warnings.append(line)
        print(line, file=sys.stderr)

    def register(self, module: object, info: PluginInfo) -> None:
        """Register one plugin module, rejecting it if it implements hooks that do not exist."""
        self.plugins.append(info)
        unmarked = [hook for hook in HOOK_NAMES if callable(getattr(module, hook, None))
                    and self.manager.parse_hookimpl_opts(module, hook) is None]
        for hook in unmarked:
            self.problem(None, f"plugin '{info.name}' defines {hook} but it is not marked with @hookimpl "
                               f"(from harness import hookimpl), so it is never called")
        unknown = [  # any @hookimpl-marked function that is not a hook, whatever its name
            attr for attr in dir(module)
            if attr not in HOOK_NAMES and self.manager.parse_hookimpl_opts(module, attr) is not None
        ]
        if unknown:
            hints = []
            for attr in unknown:
                close = difflib.get_close_matches(attr, HOOK_NAMES, n=1)
                hints.append(f"'{attr}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            self.problem(info, f"plugin '{info.name}' implements unknown hook {', '.join(hints)}; "
                               f"known hooks: {', '.join(HOOK_NAMES)}")
            return
        try:
            self.manager.register(module, name=info.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            self.problem(info, f"plugin '{info.name}' could not be registered: {exc}", exc)
            return
        info.hooks = sorted(
            hook for hook in HOOK_NAMES
            if any(impl.plugin_name == info.name for impl in getattr(self.manager.hook, hook).get_hookimpls())
        )

    def load_builtins(self) -> None:
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self.register(module, PluginInfo(name=module_name, source="built-in", module=module_name,
                                             distribution=DISTRIBUTION, version=_own_version()))

    def load_entry_points(self) -> None:
        allowed = _entry_point_filter()
        if allowed == set():
            return
        entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            if allowed is not None and ep.name not in allowed and dist_name not in allowed:
                continue
            info = PluginInfo(name=ep.name, source="entry point", module=ep.value,
                              distribution=dist_name, version=dist.version if dist is not None else None)
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 (a broken third-party plugin must not take down the CLI)
                self.plugins.append(info)
                self.problem(info, f"plugin '{ep.name}' ({dist_name or ep.value}) failed to import: "
                                   f"{type(exc).__name__}: {exc}", exc)
                continue
            self.register(module, info)

    def load_extra(self, specs: Iterable[str]) -> None:
        for spec in specs:
            info = PluginInfo(name=spec, source="command line", module=spec)
            try:
                module = import_plugin_module(spec)
            except Exception as exc:  # noqa: BLE001 (as for entry points)
                self.plugins.append(info)
                self.problem(info, f"plugin '{spec}' failed to import: {type(exc).__name__}: {exc}", exc)
                continue
            info.module = module.__name__
            self.register(module, info)

    def collect(self) -> None:
        """Call each plugin's hooks one plugin at a time, so one failure cannot hide the others."""
        infos = {info.name: info for info in self.plugins}
        for hook_name, registry in (("register_models", self.models), ("register_tasks", self.tasks)):
            # get_hookimpls() lists implementations in registration order: built-ins first, so a
            # third-party plugin can never take over a built-in name.
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                info = infos[impl.plugin_name]
                if info.status != "loaded":
                    continue
                register = _make_register(registry, registry.kind, impl.plugin_name, self)
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:  # noqa: BLE001 (a hook's failure is reported, not fatal)
                    self.problem(info, f"plugin '{impl.plugin_name}' raised in {hook_name}: "
                                       f"{type(exc).__name__}: {exc}", exc)
        for info in self.plugins:
            if info.status == "loaded" and self.refused.get(info.name) and not self.accepted.get(info.name):
                info.status = "failed"
                info.error = f"every registration of plugin '{info.name}' was rejected (see the warnings above)"
        for info in self.plugins:
            if info.status == "loaded" and not info.hooks and info.source != "built-in":
                info.status = "failed"
                info.error = f"plugin '{info.name}' implements no hook (are its functions marked with @hookimpl?)"


def _make_register(registry: Registry, kind: str, plugin_name: str, loader: _Loader):
    def register(name: str, target: Target, description: str = "", aliases: Iterable[str] = (),
                 defaults: dict[str, Any] | None = None, *, order: float | None = None,
                 style: dict[str, str] | None = None, default_sweep: bool = False,
                 reference: bool = False, implementation_options: Iterable[str] = ()) -> None:
        """Register a model or task under ``name`` (see ``harness.hookspecs``)."""
        problem = _registration_problem(target, defaults, order, style, implementation_options)
        if problem:
            loader.rejected(plugin_name, f"plugin '{plugin_name}' registered {kind} '{name}' with {problem}")
            return
        entry = Entry(kind=kind, name=name, target=target, description=" ".join(description.split()),
                      plugin=plugin_name, aliases=tuple(aliases), defaults=dict(defaults or {}),
                      order=None if order is None else float(order), style=dict(style or {}),
                      default_sweep=bool(default_sweep), reference=bool(reference),
                      implementation_options=tuple(implementation_options))
        try:
            registry.add(entry)
        except PluginError as exc:
            loader.rejected(plugin_name, str(exc), exc)
            return
        loader.accepted[plugin_name] = loader.accepted.get(plugin_name, 0) + 1
    register.__name__ = f"register_{kind}"
    return register


def _registration_problem(target: Any, defaults: Any, order: Any, style: Any,
                          implementation_options: Any = ()) -> str | None:
    """What is wrong with a registration's arguments, or None."""
    if not (callable(target) or (isinstance(target, str) and ":" in target)):
        return f"target {target!r}: expected a callable or a 'module:attr' string"
    if defaults is not None and not isinstance(defaults, dict):
        return f"defaults {defaults!r}: expected a dict of options"
    if order is not None and (isinstance(order, bool) or not isinstance(order, (int, float))):
        return f"order {order!r}: expected a number"
    if style is not None and not (isinstance(style, dict) and set(style) <= {"color", "marker"}
                                  and all(isinstance(v, str) for v in style.values())):
        return f"style {style!r}: expected a dict with 'color' and/or 'marker' strings"
    if isinstance(implementation_options, str) or not all(isinstance(o, str) for o in implementation_options):
        return f"implementation_options {implementation_options!r}: expected a tuple of option names"
    return None


def _own_version() -> str:
    from harness import __version__
    return __version__


def load_plugins(strict: bool | None = None, entry_points: bool = True,
                 extra: Iterable[str] | None = None) -> PluginState:
    """Load built-in, installed and extra plugins and return the filled registries."""
    loader = _Loader(strict_from_env() if strict is None else strict)
    loader.load_builtins()
    if entry_points:
        loader.load_entry_points()
    loader.load_extra(extra_plugin_specs() if extra is None else extra)
    loader.manager.check_pending()
    loader.collect()
    return PluginState(loader.plugins, loader.models, loader.tasks, loader.warnings)


_STATE: PluginState | None = None


def get_state() -> PluginState:
    """The process-wide plugin state, loaded once on first use."""
    global _STATE
    if _STATE is None:
        _STATE = load_plugins()
    return _STATE


def reset_state() -> None:
    """Forget the loaded plugins (tests, or after changing the plugin environment variables)."""
    global _STATE
    _STATE = None


def provider(entry: Entry) -> str:
    """Which distribution (and version) registered ``entry``, for result provenance."""
    info = next((p for p in get_state().plugins if p.name == entry.plugin), None)
    if info is None:
        return entry.plugin
    if info.distribution:
        return f"{info.distribution} {info.version or ''}".strip()
    return f"{info.source} {info.name}"


def get_model(name: str) -> Entry:
    return get_state().models.get(name)


def get_task(name: str) -> Entry:
    return get_state().tasks.get(name)
