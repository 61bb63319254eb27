"""Model and task options (``--model-opt``/``--task-opt`` and the ``model_options``/``task_options``
tables of a config file): parsing, checking against each builder's signature, and axes.

A table holds shared options (``forget_bias = 3``: every swept model whose builder takes
``forget_bias``) and one sub-table per model or task (``[model_options.NAME]``). A list of values
is an axis of the sweep (``--model-opt NAME:forget_bias=1,3,5``, or ``forget_bias = [1, 3, 5]`` in
TOML); a bracketed list on the command line is one value (``--model-opt m:sizes=[64,64]``).
Names resolve aliases; a name that is not in the sweep, an option the builder does not take, or
a value its annotation or default does not allow (:mod:`harness.runs.option_types`) is a one-line
error before any training. ``KEY=VALUE`` inside a comma list is refused: the flag is repeated for
each option.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from harness.errors import HarnessError
from harness.registry.entries import Entry, Registry
from harness.runs.option_types import check_values

#: Builder parameters the harness itself supplies, per kind of entry. A model builder that declares
#: ``length`` receives the trial's dependency length T (for initialisations that depend on it).
SUPPLIED = {"model": ("input_size", "hidden_size", "length"), "task": ("length",)}
REQUIRED = "<required>"


def parse_items(items: Iterable[str], flag: str, table: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``[NAME:]KEY=VALUE`` texts into an option table shaped like a TOML one."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (table or {}).items()}
    for item in items:
        target, key, value = _parse_item(item, flag)
        if target is None:
            merged[key] = value
            continue
        section = merged.setdefault(target, {})
        if not isinstance(section, dict):
            raise HarnessError(f"{flag} '{item}': '{target}' is already a plain option")
        section[key] = value
    return merged


def _parse_item(text: str, flag: str) -> tuple[str | None, str, Any]:
    head = text.split("=", 1)[0]
    target, _, assignment = text.partition(":") if ":" in head else ("", "", text)
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip().isidentifier() or (":" in head and not target.strip()):
        raise HarnessError(f"{flag} '{text}': expected KEY=VALUE or NAME:KEY=VALUE")
    _refuse_second_option(text, raw, flag)
    return (target.strip() or None), key.strip(), _literal(raw.strip())


_OPTION_START = re.compile(r"\s*([A-Za-z_][\w.-]*:)?[A-Za-z_]\w*\s*=")


def _refuse_second_option(text: str, raw: str, flag: str) -> None:
    """``KEY=1,OTHER=2`` would silently make an axis of ``1`` and ``"OTHER=2"``: one line instead,
    with the repeated flags that were probably meant."""
    if "," not in raw:
        return
    try:
        ast.literal_eval(raw.strip())
        return  # a quoted or bracketed literal: its commas and '=' are the value's own
    except (ValueError, SyntaxError):
        pass
    parts = text.split(",")
    index = next((i for i in range(1, len(parts)) if _OPTION_START.match(parts[i])), None)
    if index is None:
        return
    first, extra = ",".join(parts[:index]), parts[index].strip()
    raise HarnessError(f"{flag} '{text}': '{extra}' is a second option inside one comma list (commas separate "
                       f"values of one option); repeat the flag instead: {flag} {first} {flag} {extra}")


def _literal(raw: str) -> Any:
    """A Python/TOML-like literal, else the text. A bare comma list is an axis (a list); a
    bracketed list is a single value (an axis of one list)."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if "," in raw:
            return [_literal(part.strip()) for part in raw.split(",") if part.strip()]
        return raw
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, list):
        return [value]
    return value


def alternatives(value: Any) -> list[Any]:
    """The values an option takes across the sweep: a list is an axis, anything else one value."""
    values = value if isinstance(value, list) else [value]
    unique: list[Any] = []
    for v in values:
        if v not in unique:
            unique.append(v)
    if not unique:
        raise HarnessError(f"empty list of option values: {value!r}")
    return unique


def builder_options(entry: Entry, static: bool = False) -> tuple[dict[str, Any], bool]:
    """The options a builder takes, with their defaults (``REQUIRED`` for none), and whether it
    accepts any keyword (``**kwargs``). Imports the builder's module, unless ``static`` is set and
    the options can be read from its source (so listings stay free of torch)."""
    if static:
        found = static_options(entry)
        if found is not None:
            return {**found[0], **entry.defaults}, found[1]
    factory = entry.load()
    key = (entry.kind, factory)
    if key not in _SIGNATURES:  # inspect once per builder: resume computes every stored row's identity
        _SIGNATURES[key] = _signature_options(entry.kind, factory)
    options, open_ended = _SIGNATURES[key]
    return {**options, **entry.defaults}, open_ended


_SIGNATURES: dict[tuple[str, Any], tuple[dict[str, Any], bool]] = {}


def _signature_options(kind: str, factory: Any) -> tuple[dict[str, Any], bool]:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}, True
    supplied = SUPPLIED[kind]
    options: dict[str, Any] = {}
    open_ended = False
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL or name in supplied:
            continue
        else:
            options[name] = REQUIRED if parameter.default is inspect.Parameter.empty else parameter.default
    return options, open_ended


def static_options(entry: Entry) -> tuple[dict[str, Any], bool] | None:
    """A ``"module:attr"`` builder's options read from its source without importing it: a function's
    parameters, or a class's ``__init__`` (a class with none that derives from ``Task`` takes no
    options). None when the source does not say (then the builder is imported)."""
    import importlib.util

    if not isinstance(entry.target, str) or "." in entry.target.partition(":")[2]:
        return None
    module, _, name = entry.target.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        tree = ast.parse(open(origin, encoding="utf-8").read()) if origin and origin.endswith(".py") else None
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    node = next((n for n in getattr(tree, "body", []) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                 and n.name == name), None)
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is None:
            bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
            return ({}, False) if bases == {"Task"} else None
        node = init
    if not isinstance(node, ast.FunctionDef):
        return None
    return _static_parameters(node.args, SUPPLIED[entry.kind])


def _static_parameters(args: ast.arguments, supplied: tuple[str, ...]) -> tuple[dict[str, Any], bool] | None:
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    options: dict[str, Any] = {}
    for arg, default in pairs:
        if arg.arg in ("self", *supplied):
            continue
        try:
            options[arg.arg] = REQUIRED if default is None else ast.literal_eval(default)
        except ValueError:
            return None  # a default that is not a literal: ask the imported builder
    return options, args.kwarg is not None


def resolve(table: dict[str, Any], registry: Registry, swept: list[str], flag: str) -> dict[str, list[dict[str, Any]]]:
    """For each swept name, the list of user option dicts it runs with (the product of its axes).

    Shared options apply to every swept entry whose builder takes them (one that no swept entry
    takes is an error); named tables must name a swept entry and options its builder takes.
    """
    kind = registry.kind
    shared = {k: alternatives(v) for k, v in table.items() if not isinstance(v, dict)}
    named: dict[str, dict[str, list[Any]]] = {}
    for name, section in table.items():
        if not isinstance(section, dict):
            continue
        entry = _lookup(registry, name, flag)
        if entry.name not in swept:
            raise HarnessError(f"{flag}: {kind} '{entry.name}' is not in this sweep ({kind}s: {', '.join(swept)})")
        named.setdefault(entry.name, {}).update({k: alternatives(v) for k, v in section.items()})
    used_shared: set[str] = set()
    result = {}
    for name in swept:
        options, open_ended = builder_options(registry.get(name))
        axes = {k: v for k, v in shared.items() if open_ended or k in options}
        used_shared.update(axes)
        for key in named.get(name, {}):
            if not open_ended and key not in options:
                raise HarnessError(_unknown_option(kind, name, key, options, flag))
        axes.update(named.get(name, {}))
        check_values(kind, name, registry.get(name).load(), axes, flag)
        missing = [k for k, v in options.items() if v == REQUIRED and k not in axes]
        if missing:
            raise HarnessError(f"{flag}: {kind} '{name}' needs option(s) {', '.join(missing)} "
                               f"(give them as {flag} {name}:{missing[0]}=VALUE)")
        keys = sorted(axes)
        result[name] = [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]
    unused = sorted(set(shared) - used_shared)
    if unused:
        raise HarnessError(f"{flag}: no {kind} in this sweep takes option(s) {', '.join(unused)}")
    return result


def narrowed(table: dict[str, Any], registry: Registry, names: Sequence[str],
             written_for: Sequence[str]) -> dict[str, Any]:
    """A config file's options, written for the entries ``written_for``, in a sweep the command line
    narrowed to ``names``: shared options that some of the file's entries take but none of
    ``names`` does, and the sections of the file's entries left out, are dropped. Everything else (a typo
    included) is left for :func:`resolve` to check."""
    def taken_by(selection: Sequence[str]) -> set[str] | None:
        keys: set[str] = set()
        for name in selection:
            options, open_ended = builder_options(registry.get(name))
            if open_ended:
                return None
            keys.update(options)
        return keys

    try:
        kept = {registry.get(name).name for name in names}
        left_out = {registry.get(name).name for name in written_for} - kept
        taken, meant = taken_by(names), taken_by(written_for)
    except HarnessError:
        return table  # an unknown name: the sweep's own check reports it
    if taken is None or meant is None:
        return table
    result: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            if key in registry and registry.get(key).name in left_out:
                continue
        elif key in meant and key not in taken:
            continue
        result[key] = value
    return result


def _lookup(registry: Registry, name: str, flag: str) -> Entry:
    try:
        return registry.get(name)
    except HarnessError as exc:
        raise HarnessError(f"{flag}: {exc}") from None


def _unknown_option(kind: str, name: str, key: str, options: dict[str, Any], flag: str) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    known = ", ".join(sorted(options)) or "none"
    return f"{flag}: {kind} '{name}' has no option '{key}'{hint}; its options: {known}"


def build_core(entry: Entry, input_size: int, hidden_size: int, length: int | None, options: dict[str, Any]) -> Any:
    """Build a model, passing ``length`` only to builders that declare it."""
    extra = {"length": length} if length is not None and _takes_length(entry.load()) else {}
    return entry.build(input_size=input_size, hidden_size=hidden_size, **extra, **options)


def _takes_length(factory: Any) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "length" in parameters


def effective(entry: Entry, user: dict[str, Any]) -> dict[str, Any]:
    """Every option a build receives: the builder's defaults, the registration's, then the user's."""
    defaults, _ = builder_options(entry)
    merged = {k: v for k, v in defaults.items() if v != REQUIRED}
    merged.update(user)
    return merged


def canonical(options: dict[str, Any]) -> str:
    """The JSON text recorded in ``results.csv`` (sorted keys, so equal options compare equal)."""
    return json.dumps(options, sort_keys=True, default=str)
